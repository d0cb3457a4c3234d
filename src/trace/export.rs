//! The OTLP/HTTP exporter: the SDK's batch processor (a thread of its own,
//! a bounded queue: spans past it are dropped, never waited for) sending
//! protobuf through a blocking ureq client on that thread.

use super::Tracing;
use crate::config::TracingConf;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use std::collections::HashMap;
use std::time::Duration;

/// Head sampling: a client's sampled `traceparent` is followed; a new trace
/// is kept with probability `ratio` (by its trace id, so every service that
/// samples by ratio keeps the same traces).
pub(super) fn sampler(ratio: f64) -> Sampler {
    Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio)))
}

/// The traces endpoint: `/v1/traces` on the collector's base URL.
fn traces_url(endpoint: &str) -> String {
    let base = endpoint.trim_end_matches('/');
    if base.ends_with("/v1/traces") {
        base.to_string()
    } else {
        format!("{base}/v1/traces")
    }
}

/// Start exporting as `conf` says. Nothing is sent until a span ends.
pub fn start(conf: &TracingConf) -> Result<Tracing, String> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(Ureq::new(conf.timeout.0))
        .with_endpoint(traces_url(&conf.endpoint))
        .with_timeout(conf.timeout.0)
        .with_headers(
            conf.headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<HashMap<_, _>>(),
        )
        .build()
        .map_err(|e| format!("tracing: {e}"))?;
    let batch = BatchConfigBuilder::default()
        .with_max_queue_size(conf.queue)
        .with_max_export_batch_size(conf.queue.min(512))
        .with_scheduled_delay(conf.interval.0)
        .build();
    let processor = BatchSpanProcessor::builder(exporter).with_batch_config(batch).build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(sampler(conf.sample))
        .with_resource(
            Resource::builder_empty()
                .with_service_name(conf.service_name.clone())
                .with_attribute(opentelemetry::KeyValue::new(
                    "service.version",
                    env!("CARGO_PKG_VERSION"),
                ))
                .build(),
        )
        .build();
    let tracer = provider.tracer("weir");
    Ok(Tracing {
        conf: conf.clone(),
        provider,
        tracer,
    })
}

/// OTLP over a blocking HTTP client: the batch processor calls it on its
/// own thread, never on the proxy's async workers.
#[derive(Debug)]
struct Ureq(ureq::Agent);

impl Ureq {
    fn new(timeout: Duration) -> Self {
        Ureq(ureq::AgentBuilder::new().timeout(timeout).redirects(0).build())
    }
}

#[async_trait::async_trait]
impl HttpClient for Ureq {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let (parts, body) = request.into_parts();
        let mut req = self.0.request(parts.method.as_str(), &parts.uri.to_string());
        for (name, value) in &parts.headers {
            if let Ok(v) = value.to_str() {
                req = req.set(name.as_str(), v);
            }
        }
        let resp = match req.send_bytes(&body) {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => return Err(Box::new(e)),
        };
        let status = resp.status();
        let mut data = Vec::new();
        use std::io::Read;
        resp.into_reader().take(1 << 20).read_to_end(&mut data)?;
        Ok(Response::builder().status(status).body(Bytes::from(data))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_traces_path_is_added_once() {
        assert_eq!(traces_url("http://c:4318"), "http://c:4318/v1/traces");
        assert_eq!(traces_url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(traces_url("http://c:4318/v1/traces"), "http://c:4318/v1/traces");
        assert_eq!(traces_url("http://c/otlp"), "http://c/otlp/v1/traces");
    }
}
