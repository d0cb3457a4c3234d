//! An OTLP/HTTP trace receiver for benchmarks: decodes every export with the
//! published protobuf types and counts spans and exports. `GET /count`
//! answers `<spans> <exports> <bytes>`.
//!
//! Usage: otlp_sink 127.0.0.1:4318

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

fn main() {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:4318".into());
    let server = Arc::new(tiny_http::Server::http(&addr).expect("bind"));
    let counts = Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let (server, counts) = (server.clone(), counts.clone());
            std::thread::spawn(move || {
                for mut req in server.incoming_requests() {
                    if req.url() == "/count" {
                        let c: Vec<u64> = counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
                        let _ = req.respond(tiny_http::Response::from_string(format!("{} {} {}", c[0], c[1], c[2])));
                        continue;
                    }
                    let mut body = Vec::new();
                    let _ = req.as_reader().read_to_end(&mut body);
                    match ExportTraceServiceRequest::decode(&body[..]) {
                        Ok(e) => {
                            let n: usize = e
                                .resource_spans
                                .iter()
                                .flat_map(|r| &r.scope_spans)
                                .map(|s| s.spans.len())
                                .sum();
                            counts[0].fetch_add(n as u64, Ordering::Relaxed);
                            counts[1].fetch_add(1, Ordering::Relaxed);
                            counts[2].fetch_add(body.len() as u64, Ordering::Relaxed);
                            let _ = req.respond(tiny_http::Response::from_data(Vec::new()));
                        }
                        Err(_) => {
                            let _ = req.respond(tiny_http::Response::empty(400));
                        }
                    }
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
}
