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
    if !upgrade {
        // An upgrade takes its listeners from the old process instead.
        check_listeners(&rt.config)?;
    }
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

/// Every address weir is about to listen on can be bound now; otherwise
/// each that cannot, located in the config file like any config error
/// (Pingora would try it for 30 s and then panic in its thread, leaving
/// weir up but deaf).
fn check_listeners(config: &crate::config::Config) -> Result<(), String> {
    let listens = config.server.listen.iter().enumerate();
    let fields = listens.map(|(i, l)| (format!("server.listen[{i}]"), l));
    let admin = config.admin.iter().map(|a| ("admin.listen".to_string(), &a.listen));
    let failed: Vec<_> = fields
        .chain(admin)
        .filter_map(|(field, listen)| crate::listen::check(listen).err().map(|e| (field, e)))
        .collect();
    if failed.is_empty() {
        return Ok(());
    }
    // Only now is the file read again, for the lines.
    let text = std::fs::read_to_string(&config.source).unwrap_or_default();
    let index = crate::config::locate::LineIndex::build(&text);
    let mut ck = crate::config::Checker::new(&config.source, &index);
    for (field, message) in failed {
        ck.error(field, message);
    }
    Err(crate::config::ConfigErrors(ck.errors).to_string())
}
