//! Listen addresses checked before Pingora binds them.
//!
//! Pingora binds inside a service's runtime: a port in use is tried again
//! every second for 30 s, then that service's thread panics and the process
//! stays up with nothing listening there. So `weir serve`, `weir demo` and
//! `weir mock` check each address first and stop at once, naming it.
//!
//! The check binds without listening. A listening probe would accept a
//! connection from whoever is already waiting for the port (a script, a
//! test), then close it: they would take the port for up before Pingora has
//! bound it.

use std::net::{SocketAddr, ToSocketAddrs};
use tokio::net::TcpSocket;

/// The first socket address `listen` (`host:port`) resolves to.
pub fn resolve(listen: &str) -> Result<SocketAddr, String> {
    listen
        .to_socket_addrs()
        .map_err(|e| format!("invalid listen address `{listen}`: {e}"))?
        .next()
        .ok_or_else(|| format!("listen address `{listen}` resolves to nothing"))
}

/// Check that `listen` can be bound now; the address it resolved to.
pub fn check(listen: &str) -> Result<SocketAddr, String> {
    let addr = resolve(listen)?;
    drop(bind_unlistening(addr).map_err(|e| format!("cannot listen on {listen}: {e}"))?);
    Ok(addr)
}

/// A socket bound to `addr` that does not listen: connecting to it is refused.
fn bind_unlistening(addr: SocketAddr) -> std::io::Result<TcpSocket> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }?;
    // As a listener binds (std's and Pingora's): connections of an earlier
    // process still in TIME_WAIT do not hold the port, a listener does.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};
    use std::time::Duration;

    #[test]
    fn the_check_accepts_no_connection_and_sees_a_listener() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let taken = listener.local_addr().unwrap();
        let error = check(&taken.to_string()).expect_err("a listener holds the port");
        assert!(error.starts_with(&format!("cannot listen on {taken}: ")), "{error}");
        drop(listener);
        let probe = bind_unlistening(taken).expect("free again");
        let refused = TcpStream::connect_timeout(&taken, Duration::from_secs(2)).expect_err("nothing listens");
        assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
        drop(probe);
        assert_eq!(check(&taken.to_string()), Ok(taken));
    }

    #[test]
    fn an_address_that_does_not_resolve_is_named() {
        let error = check("127.0.0.1").expect_err("no port");
        assert!(error.starts_with("invalid listen address `127.0.0.1`: "), "{error}");
    }
}
