//! `weir serve`: a Pingora server with the proxy service on `server.listen`
//! and the admin API on `admin.listen`.

use crate::admin::Admin;
use crate::proxy::{ConnectionCap, HeaderDeadline, WeirProxy};
use crate::runtime::Gateway;
use pingora_core::apps::http_app::HttpServer;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::Server;
use pingora_core::services::listening::Service;
use pingora_core::services::ServiceWithDependents;
use std::path::Path;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

/// Start the gateway for `config` and run until stopped; extra services (the
/// demo's mock providers) run in the same server.
pub fn run(config: &Path, upgrade: bool, extra: Vec<Box<dyn ServiceWithDependents>>) -> Result<(), String> {
    let gateway = Gateway::start(config).map_err(|e| e.to_string())?;
    let rt = gateway.current();
    let server_conf = &rt.config.server;
    // Socket and pid paths are per listen address, so several weirs can share a host.
    let tag: String = server_conf.listen[0]
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let conf = ServerConf {
        threads: server_conf.threads,
        pid_file: format!("/tmp/weir_{tag}.pid"),
        upgrade_sock: format!("/tmp/weir_upgrade_{tag}.sock"),
        // SIGTERM: listeners close, in-flight requests get the grace period
        // (the `Drain` service exits sooner once none is left), then the
        // runtimes get a second to stop.
        grace_period_seconds: Some(server_conf.shutdown_grace.0.as_secs_f64().ceil() as u64),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let weir_proxy = WeirProxy::new(gateway.clone());
    let connections = Arc::new(AtomicUsize::new(0));
    let drain = weir_proxy.drain(server_conf.shutdown_grace.0, connections.clone());
    let mut app = pingora_proxy::HttpProxy::new(weir_proxy, server.configuration.clone());
    app.handle_init_modules();
    let app = ConnectionCap::new(HeaderDeadline::new(app, gateway.clone()), gateway.clone(), connections);
    let mut proxy = Service::new("weir proxy".to_string(), app);
    for l in &server_conf.listen {
        proxy.add_tcp(l);
    }
    server.add_service(proxy);

    if let Some(admin_conf) = &rt.config.admin {
        let mut admin = Service::new(
            "weir admin".to_string(),
            HttpServer::new_app(Admin {
                gateway: gateway.clone(),
            }),
        );
        admin.add_tcp(&admin_conf.listen);
        admin.threads = Some(1);
        server.add_service(admin);
    }
    server.add_service(pingora_core::services::background::background_service(
        "weir health checks",
        crate::health::HealthChecks {
            gateway: gateway.clone(),
        },
    ));
    server.add_service(pingora_core::services::background::background_service(
        "weir drain",
        drain,
    ));
    server.add_service(pingora_core::services::background::background_service(
        "weir reload",
        crate::reload::Reloader {
            gateway: gateway.clone(),
        },
    ));
    for s in extra {
        server.add_boxed_service(s);
    }
    log::info!(
        "weir serving {} (generation {}), listening on {}",
        config.display(),
        rt.generation,
        server_conf.listen.join(", ")
    );
    drop(rt);
    let _keep: Arc<Gateway> = gateway;
    server.run_forever()
}
