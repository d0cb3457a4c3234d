//! A bare Pingora reverse proxy (no weir logic) for the load benchmark: it
//! shows what Pingora itself costs on this machine, so weir's own overhead can
//! be read as the difference. Usage: pingora_plain LISTEN UPSTREAM THREADS
use async_trait::async_trait;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::Server;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_proxy::{ProxyHttp, Session};

struct Plain(std::net::SocketAddr);

#[async_trait]
impl ProxyHttp for Plain {
    type CTX = ();
    fn new_ctx(&self) {}
    async fn upstream_peer(&self, _s: &mut Session, _c: &mut ()) -> pingora_core::Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.0, false, String::new())))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (listen, upstream) = (&args[1], args[2].parse().expect("upstream address"));
    let threads = args.get(3).and_then(|t| t.parse().ok()).unwrap_or(2);
    // PINGORA_NO_STEAL=1: one single-threaded runtime per thread (what
    // issue 17 asked to look into), else Pingora's default work stealing.
    let conf = ServerConf {
        threads,
        work_stealing: std::env::var("PINGORA_NO_STEAL").map_or(true, |v| v != "1"),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();
    let mut proxy = pingora_proxy::http_proxy_service(&server.configuration, Plain(upstream));
    proxy.add_tcp(listen);
    server.add_service(proxy);
    server.run_forever();
}
