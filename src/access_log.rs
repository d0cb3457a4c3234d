//! The access log (`access_log:`): one JSON line per request, built from its
//! context when it ends and written by a thread of its own, so a slow disk
//! never stalls a request. Lines queue up to [`QUEUE`]; past that they are
//! dropped and counted (`weir_access_log_dropped_total`), never waited for.
//!
//! Fields (absent when unknown): `time`, `request_id`, `method`, `path`,
//! `client_format`, `route`, `key` (the key's name from the keys file, never
//! the key), `model`, `served_model`, `providers` (every provider the request
//! was sent to, in order), `provider` (the one that answered), `status`,
//! `error` (weir's error type), `queue_waits_ms` (bulkhead → time queued),
//! `ttfb_ms`, `duration_ms`, `tokens` (`prompt`, `completion`, `cached`),
//! `cost`, `cache` (`hit`, `miss`, `bypass`), and `request_body` only with
//! `prompts: true`.

use crate::config::AccessLogConf;
use crate::metrics;
use crate::pipeline::{RequestCtx, Wire};
use serde_json::{json, Map, Value};
use std::io::Write;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::time::SystemTime;

/// Lines waiting for the writer at most.
const QUEUE: usize = 16_384;
/// Most of a request body a line carries (`prompts: true`).
const MAX_BODY: usize = 64 << 10;

/// An open access log. Its writer thread ends when the last handle goes
/// (a reload to another destination).
pub struct AccessLog {
    conf: AccessLogConf,
    tx: SyncSender<Vec<u8>>,
}

impl AccessLog {
    /// Open `conf.to` (a file is appended to) and start its writer.
    pub fn open(conf: &AccessLogConf) -> Result<AccessLog, String> {
        let out: Box<dyn Write + Send> = match conf.to.as_str() {
            "stdout" => Box::new(std::io::stdout()),
            path => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| format!("cannot open '{path}': {e}"))?,
            ),
        };
        let (tx, rx) = sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("weir-access-log".into())
            .spawn(move || write_lines(rx, out))
            .map_err(|e| format!("cannot start the access log writer: {e}"))?;
        Ok(AccessLog { conf: conf.clone(), tx })
    }

    /// Whether this log was opened for `conf` (a reload keeps it then).
    pub fn is_for(&self, conf: &AccessLogConf) -> bool {
        self.conf == *conf
    }

    /// Queue the line of a finished request.
    pub fn record(&self, ctx: &RequestCtx, method: &str, path: &str) {
        let mut line = serde_json::to_vec(&self.line(ctx, method, path)).unwrap_or_default();
        line.push(b'\n');
        match self.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => metrics::ACCESS_LOG_DROPPED.inc(),
        }
    }

    fn line(&self, ctx: &RequestCtx, method: &str, path: &str) -> Value {
        let ms = |d: std::time::Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
        let mut m = Map::new();
        let mut put = |k: &str, v: Value| {
            if !v.is_null() {
                m.insert(k.to_string(), v);
            }
        };
        put(
            "time",
            json!(humantime::format_rfc3339_millis(SystemTime::now()).to_string()),
        );
        put("request_id", json!(ctx.request_id));
        put("method", json!(method));
        // An Anthropic client's `…/messages`, which weir serves as `…/chat/completions`.
        let path = match (ctx.wire, path.strip_suffix("/chat/completions")) {
            (Wire::Anthropic, Some(prefix)) => format!("{prefix}/messages"),
            _ => path.to_string(),
        };
        put("path", json!(path));
        put(
            "client_format",
            json!(match ctx.wire {
                Wire::Openai => "openai",
                Wire::Anthropic => "anthropic",
            }),
        );
        put("route", json!(ctx.route.as_ref().map(|r| r.name.as_str())));
        put("key", json!(ctx.identity.as_ref().map(|i| &*i.name)));
        put("model", json!(ctx.model()));
        put("served_model", json!(ctx.served_model.as_deref()));
        if !ctx.tried.is_empty() {
            put(
                "providers",
                json!(ctx.tried.iter().map(|p| p.name.as_str()).collect::<Vec<_>>()),
            );
        }
        put("provider", json!(ctx.provider.as_ref().map(|p| p.name.as_str())));
        put("status", json!(ctx.status));
        put("error", json!(ctx.error.as_ref().map(|e| e.kind.type_name())));
        if !ctx.waits.is_empty() {
            let waits: Map<String, Value> = ctx
                .waits
                .iter()
                .map(|(b, d)| (b.name().to_string(), json!(ms(*d))))
                .collect();
            put("queue_waits_ms", Value::Object(waits));
        }
        put("ttfb_ms", json!(ctx.upstream_ttfb.map(ms)));
        put("duration_ms", json!(ms(ctx.started.elapsed())));
        let u = ctx.spent.usage;
        if u.total() > 0 {
            put(
                "tokens",
                json!({"prompt": u.prompt_tokens, "completion": u.completion_tokens, "cached": u.cached_tokens}),
            );
            let cost = match (&ctx.provider, ctx.served_model()) {
                (Some(p), Some(model)) => p.cost(model, u).map(|c| c.0 as f64 / crate::provider::Cost::SCALE),
                _ => None,
            };
            put("cost", json!(cost));
        }
        put("cache", json!(ctx.cache));
        if self.conf.prompts {
            let body = ctx.client_body.as_ref().map_or(&ctx.body, |(b, _)| b);
            let cut = &body[..body.len().min(MAX_BODY)];
            put("request_body", json!(String::from_utf8_lossy(cut)));
        }
        Value::Object(m)
    }
}

/// How long the writer gathers lines after the first before writing them.
const LINGER: std::time::Duration = std::time::Duration::from_millis(5);

/// The writer: idle, it waits for a line; then it gathers what arrives for
/// [`LINGER`] and writes it all at once, so that under load one write (and
/// one wake-up of this thread) carries many lines rather than one each.
fn write_lines(rx: Receiver<Vec<u8>>, out: Box<dyn Write + Send>) {
    let mut out = std::io::BufWriter::with_capacity(64 << 10, out);
    let mut failed = false;
    while let Ok(line) = rx.recv() {
        let mut r = out.write_all(&line);
        std::thread::sleep(LINGER);
        while let Ok(more) = rx.try_recv() {
            r = r.and_then(|()| out.write_all(&more));
        }
        r = r.and_then(|()| out.flush());
        match r {
            Err(e) if !failed => {
                log::error!("access log: cannot write: {e}");
                failed = true;
            }
            Ok(()) if failed => {
                log::warn!("access log: writing again");
                failed = false;
            }
            _ => {}
        }
    }
}
