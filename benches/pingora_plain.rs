//! A bare Pingora reverse proxy (no weir logic) for the load benchmark: it
//! shows what Pingora itself costs on this machine, so weir's own overhead can
//! be read as the difference. Usage: pingora_plain LISTEN UPSTREAM THREADS [answer]
//!
//! With `answer` it proxies nothing: it reads the request body and answers a
//! fixed chat completion itself, from `request_filter`. That is the floor any
//! Pingora server pays for a request it answers without an upstream, which is
//! what weir's cache hit and refusal are.
use async_trait::async_trait;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::Server;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_proxy::{ProxyHttp, Session};

struct Plain(std::net::SocketAddr, bool);

/// The answer of `answer` mode: the benchmark upstream's (benches/common.sh).
const ANSWER: &[u8] = br#"{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"bench-model","choices":[{"index":0,"message":{"role":"assistant","content":"hello hello hello hello hello hello hello hello"},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":16,"total_tokens":25}}"#;

#[async_trait]
impl ProxyHttp for Plain {
    type CTX = ();
    fn new_ctx(&self) {}
    async fn request_filter(&self, s: &mut Session, _c: &mut ()) -> pingora_core::Result<bool> {
        if !self.1 {
            return Ok(false);
        }
        while s.read_request_body().await?.is_some() {}
        let mut head = pingora_http::ResponseHeader::build(200, Some(2))?;
        head.insert_header("content-type", "application/json")?;
        head.insert_header("content-length", ANSWER.len())?;
        s.write_response_header(Box::new(head), false).await?;
        s.write_response_body(Some(bytes::Bytes::from_static(ANSWER)), true)
            .await?;
        Ok(true)
    }
    async fn upstream_peer(&self, _s: &mut Session, _c: &mut ()) -> pingora_core::Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.0, false, String::new())))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (listen, upstream) = (&args[1], args[2].parse().expect("upstream address"));
    let threads = args.get(3).and_then(|t| t.parse().ok()).unwrap_or(2);
    let answer = args.get(4).is_some_and(|a| a == "answer");
    // PINGORA_NO_STEAL=1: one single-threaded runtime per thread (what
    // issue 17 asked to look into), else Pingora's default work stealing.
    let conf = ServerConf {
        threads,
        work_stealing: std::env::var("PINGORA_NO_STEAL").map_or(true, |v| v != "1"),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();
    let mut proxy = pingora_proxy::http_proxy_service(&server.configuration, Plain(upstream, answer));
    proxy.add_tcp(listen);
    server.add_service(proxy);
    server.run_forever();
}
