//! The provider's response on its way to the client: header and chunks
//! through the response phases (reverse route order), usage read from JSON
//! or SSE as it passes, never buffered beyond what a plugin keeps itself.

use super::chain::Route;
use super::context::RequestCtx;
use super::downstream::Downstream;
use super::run::{Failure, Pipeline};
use crate::llm::{self, SseUsageScanner};
use crate::provider::Provider;
use crate::upstream::Exchange;
use bytes::{Bytes, BytesMut};
use pingora_http::ResponseHeader;
use std::sync::Arc;

/// Largest non-stream answer read for its `usage`.
const MAX_USAGE_JSON: usize = 1 << 20;

impl Pipeline {
    /// Stream the provider's response to the client, chunk by chunk.
    /// `strip_usage`: weir asked for a usage chunk the client did not; take it out again.
    pub(super) async fn relay<D: Downstream>(
        &self,
        d: &mut D,
        ctx: &mut RequestCtx,
        route: &Arc<Route>,
        p: &Arc<Provider>,
        mut ex: Exchange,
        strip_usage: bool,
    ) -> Result<(), Failure> {
        let up = ex.header();
        let mut resp = ResponseHeader::build(up.status, Some(up.headers.len() + 3)).expect("valid status");
        for (name, value) in up.headers.iter() {
            if matches!(name.as_str(), "connection" | "keep-alive") {
                continue;
            }
            let _ = resp.append_header(name.clone(), value.clone());
        }
        let _ = resp.insert_header("x-weir-provider", p.name.as_str());
        let _ = resp.insert_header("x-request-id", ctx.request_id.as_str());
        let is_sse = resp
            .headers
            .get("content-type")
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        let collect_json = !is_sse && resp.status.as_u16() == 200 && ctx.head.is_some();
        let entered = ctx.entered;
        for i in (0..entered).rev() {
            ctx.enter(i);
            route.plugins[i].plugin.response_headers(&mut resp, ctx);
        }
        if let Some(e) = ctx.failed.take() {
            ex.abort().await;
            return Err(Failure::Refuse(e, None));
        }
        ctx.status = resp.status.as_u16();
        if d.write_header(resp, false).await.is_err() {
            ex.abort().await;
            return Err(Failure::ClientGone);
        }
        let mut scanner = SseUsageScanner::default();
        let mut strip = (is_sse && strip_usage).then(llm::UsageChunkStripper::default);
        let mut json = Vec::new();
        let body_phase = |chunk: &mut Bytes, end: bool, ctx: &mut RequestCtx| {
            for i in (0..entered).rev() {
                ctx.enter(i);
                route.plugins[i].plugin.response_body(chunk, end, ctx);
            }
        };
        loop {
            let chunk = match ex.chunk(&p.name).await {
                Ok(c) => c,
                Err(e) => {
                    ex.abort().await;
                    return Err(Failure::Aborted(e));
                }
            };
            let end = chunk.is_none() || ex.done();
            let Some(mut chunk) = chunk else {
                // End of body: send the terminating chunk.
                let mut last = strip.as_mut().map_or_else(Bytes::new, |s| s.finish());
                body_phase(&mut last, true, ctx);
                if let Some(e) = ctx.failed.take() {
                    return Err(Failure::Aborted(e));
                }
                if d.write_body(last, true).await.is_err() {
                    return Err(Failure::ClientGone);
                }
                break;
            };
            if is_sse {
                scanner.feed(&chunk);
                if let Some(s) = strip.as_mut() {
                    chunk = s.filter(&chunk);
                    if end {
                        let rest = s.finish();
                        if !rest.is_empty() {
                            let mut joined = BytesMut::from(&chunk[..]);
                            joined.extend_from_slice(&rest);
                            chunk = joined.freeze();
                        }
                    }
                }
            } else if collect_json && json.len() + chunk.len() <= MAX_USAGE_JSON {
                json.extend_from_slice(&chunk);
            }
            body_phase(&mut chunk, end, ctx);
            if let Some(e) = ctx.failed.take() {
                ex.abort().await;
                return Err(Failure::Aborted(e));
            }
            if chunk.is_empty() && !end {
                continue;
            }
            if d.write_body(chunk, end).await.is_err() {
                ex.abort().await;
                return Err(Failure::ClientGone);
            }
            if end {
                break;
            }
        }
        ctx.usage = if is_sse {
            scanner.usage
        } else {
            llm::usage_of_json(&json)
        };
        self.upstream.finish(ex, &p.peer).await;
        Ok(())
    }
}
