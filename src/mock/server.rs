//! The mock as a Pingora service, for a server of its own (`weir mock`) or
//! someone else's (`weir demo`).

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::Duration;

use pingora_core::server::configuration::ServerConf;
use pingora_core::server::{RunArgs, Server};
use pingora_core::services::listening::Service;

use super::app::MockApp;
use super::options::{validate_options, MockOptions};
use super::tls::check_tls_files;

/// Build a Pingora listening service serving the mock, so that another
/// [`Server`] (e.g. the one of `weir demo`) can host it.
///
/// The service keeps its own thread count (`opts.threads`). With
/// `tls_cert`/`tls_key` it listens with TLS (rustls, HTTP/1.1); the files are
/// checked here because Pingora would only panic once the server starts.
pub fn mock_service(opts: MockOptions) -> Result<Service<MockApp>, String> {
    validate_options(&opts)?;
    let app = MockApp::new(&opts)?;
    let mut service = Service::new("weir-mock".to_string(), app);
    service.threads = Some(opts.threads);
    match (&opts.tls_cert, &opts.tls_key) {
        (Some(cert), Some(key)) => {
            check_tls_files(cert, key)?;
            service
                .add_tls(&opts.listen, cert, key)
                .map_err(|e| format!("cannot serve TLS on {}: {e}", opts.listen))?;
        }
        (None, None) => service.add_tcp(&opts.listen),
        _ => return Err("--tls-cert and --tls-key must be given together".to_string()),
    }
    Ok(service)
}

/// Run a mock until the process is killed (SIGINT/SIGTERM).
///
/// Uses its own Pingora [`Server`] (no daemon, `opts.threads` threads, no
/// grace period). Once the listener accepts connections it prints
/// `weir mock listening on ADDR` on stdout and flushes, so scripts and tests
/// can wait for that line.
pub fn run(opts: MockOptions) -> Result<(), String> {
    let listen = opts.listen.clone();
    let threads = opts.threads;
    let service = mock_service(opts)?;
    // Pingora cannot bind a port in use: it tries for 30 s, then panics
    // inside its runtime; check first to give a readable error at once (the
    // tiny race with another process is acceptable).
    let probe = check_bindable(&listen)?;

    let conf = ServerConf {
        threads,
        daemon: false,
        // A killed mock should go away at once, not linger for Pingora's
        // default 5 minute grace period.
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(0),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    server.add_service(service);
    announce_when_listening(listen, probe);
    server.run(RunArgs::default());
    Ok(())
}

/// Check the address can be bound ([`crate::listen::check`]); return where
/// to connect to probe it.
fn check_bindable(listen: &str) -> Result<SocketAddr, String> {
    let addr = crate::listen::check(listen)?;
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    Ok(SocketAddr::new(ip, addr.port()))
}

/// Pingora binds inside its runtime and has no "listening" hook, so a
/// side thread polls the port and announces readiness once it accepts.
fn announce_when_listening(listen: String, probe: SocketAddr) {
    std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            if TcpStream::connect_timeout(&probe, Duration::from_millis(200)).is_ok() {
                let mut out = std::io::stdout().lock();
                // Nothing sensible to do if stdout is closed.
                let _ = writeln!(out, "weir mock listening on {listen}");
                let _ = out.flush();
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        eprintln!("weir mock: {listen} did not start listening within 30s");
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_validated() {
        // `weir demo` hosts the mock in its own server as a boxed service.
        let service = mock_service(MockOptions::default()).expect("valid defaults");
        let _boxed: Box<dyn pingora_core::services::ServiceWithDependents> = Box::new(service);
        let bad_rate = MockOptions {
            fail_rate: 1.5,
            ..MockOptions::default()
        };
        assert!(mock_service(bad_rate).is_err());
        let missing_tls = MockOptions {
            tls_cert: Some("/nonexistent/cert.pem".to_string()),
            tls_key: Some("/nonexistent/key.pem".to_string()),
            ..MockOptions::default()
        };
        let error = mock_service(missing_tls).err().expect("must fail");
        assert!(error.contains("does not exist"), "{error}");
    }
}
