//! `conformance`: a header-driven filter for weir's Proxy-Wasm conformance
//! tests (`tests/wasm_conformance.rs`). Each request names a case in
//! `x-conf`; the filter does what that case needs and reports what it saw in
//! response headers (`x-seen-*`), so a test can compare weir with what
//! Envoy documents.
//!
//! Configuration is read as given (`get_plugin_configuration`): a JSON
//! object `{"tick_ms": 50, "tick_upstream": "m1", "queue": "q"}` turns on the
//! tick-driven root context (it calls `tick_upstream` and keeps the answer's
//! status in shared data `tick-status`; it resumes paused requests) and
//! registers a shared queue; any other bytes are kept as text only.

use log::warn;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::*;
use proxy_wasm::types::*;
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

#[link(wasm_import_module = "env")]
extern "C" {
    // Called directly so the status comes back instead of the SDK's panic.
    fn proxy_add_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
}

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

#[derive(Default)]
struct Shared {
    plugin_config: Vec<u8>,
    vm_config: Vec<u8>,
    /// HTTP contexts paused until the next tick resumes them (and whether
    /// in the response).
    paused: Vec<(u32, bool)>,
}

#[derive(Default)]
struct Root {
    shared: Rc<RefCell<Shared>>,
    tick_upstream: Option<String>,
    ticks: u64,
}

impl Context for Root {
    fn on_http_call_response(&mut self, _token: u32, _headers: usize, _body: usize, _trailers: usize) {
        let status = self
            .get_http_call_response_header(":status")
            .unwrap_or_else(|| "failed".into());
        warn!("conformance: tick call answered {status}");
        let _ = self.set_shared_data("tick-status", Some(status.as_bytes()), None);
    }
}

impl RootContext for Root {
    fn on_vm_start(&mut self, _size: usize) -> bool {
        self.shared.borrow_mut().vm_config = self.get_vm_configuration().unwrap_or_default();
        true
    }

    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        if let Ok(serde_json::Value::Object(m)) = serde_json::from_slice::<serde_json::Value>(&bytes) {
            if let Some(ms) = m.get("tick_ms").and_then(|v| v.as_u64()) {
                self.set_tick_period(Duration::from_millis(ms));
            }
            self.tick_upstream = m.get("tick_upstream").and_then(|v| v.as_str()).map(String::from);
            if let Some(q) = m.get("queue").and_then(|v| v.as_str()) {
                let _ = self.register_shared_queue(q);
            }
        }
        self.shared.borrow_mut().plugin_config = bytes;
        true
    }

    fn on_tick(&mut self) {
        self.ticks += 1;
        if let Some(up) = self.tick_upstream.clone() {
            // A token refresher: one call at a time is enough for the tests.
            if self.ticks % 5 == 1 {
                let r = self.dispatch_http_call(
                    &up,
                    vec![(":method", "GET"), (":path", "/v1/models"), (":authority", "tick")],
                    None,
                    vec![],
                    Duration::from_secs(2),
                );
                if let Err(e) = r {
                    warn!("conformance: tick call to {up} refused: {e:?}");
                }
            }
        }
        let paused: Vec<(u32, bool)> = std::mem::take(&mut self.shared.borrow_mut().paused);
        for (id, response) in paused {
            if hostcalls::set_effective_context(id).is_ok() {
                let _ = match response {
                    true => hostcalls::resume_http_response(),
                    false => hostcalls::resume_http_request(),
                };
            }
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream {
            id: context_id,
            shared: self.shared.clone(),
            case: String::new(),
            seen: Vec::new(),
        }))
    }
}

struct Stream {
    id: u32,
    shared: Rc<RefCell<Shared>>,
    case: String,
    /// Response headers to add: what this context saw.
    seen: Vec<(String, String)>,
}

impl Context for Stream {
    fn on_http_call_response(&mut self, _token: u32, _headers: usize, _body: usize, _trailers: usize) {
        let status = self
            .get_http_call_response_header(":status")
            .unwrap_or_else(|| "failed".into());
        if self.case == "response-pause-local" {
            self.send_http_response(451, vec![("x-decided", &status)], Some(b"decided locally\n"));
            return;
        }
        self.set_http_response_header("x-decided", Some(&status));
        self.resume_http_response();
    }
}

fn text(b: Option<Vec<u8>>) -> String {
    b.map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_else(|| "<none>".into())
}

fn int(b: Option<Vec<u8>>) -> String {
    match b {
        Some(b) if b.len() == 8 => i64::from_le_bytes(b.try_into().unwrap()).to_string(),
        Some(b) => format!("<{} bytes>", b.len()),
        None => "<none>".into(),
    }
}

impl Stream {
    fn prop(&self, path: &str) -> Option<Vec<u8>> {
        self.get_property(path.split('.').collect())
    }

    fn note(&mut self, k: &str, v: impl Into<String>) {
        self.seen.push((k.to_string(), v.into()));
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _n: usize, end_of_stream: bool) -> Action {
        self.case = self.get_http_request_header("x-conf").unwrap_or_default();
        let rid = self
            .get_http_request_header("x-request-id")
            .unwrap_or_else(|| "<none>".into());
        let proto = self
            .get_http_request_header("x-forwarded-proto")
            .unwrap_or_else(|| "<none>".into());
        self.note("x-seen-request-id", rid);
        self.note("x-seen-proto", proto);
        match self.case.as_str() {
            "config" => {
                let s = self.shared.borrow();
                let pc = String::from_utf8_lossy(&s.plugin_config).into_owned();
                let vc = String::from_utf8_lossy(&s.vm_config).into_owned();
                drop(s);
                self.send_http_response(
                    200,
                    vec![("x-plugin-config", &pc), ("x-vm-config", &vc)],
                    Some(b"config\n"),
                );
                Action::Pause
            }
            "shared-set" => {
                let key = self.get_http_request_header("x-key").unwrap_or_default();
                let value = self.get_http_request_header("x-value").unwrap_or_default();
                let r = self.set_shared_data(&key, Some(value.as_bytes()), None);
                self.send_http_response(200, vec![("x-set", &format!("{r:?}"))], Some(b"set\n"));
                Action::Pause
            }
            "shared-get" => {
                let key = self.get_http_request_header("x-key").unwrap_or_default();
                let value = match self.get_shared_data(&key) {
                    (Some(v), _) => String::from_utf8_lossy(&v).into_owned(),
                    (None, _) => "<none>".into(),
                };
                self.send_http_response(200, vec![("x-value", &value)], Some(b"get\n"));
                Action::Pause
            }
            "queue" => {
                let vm_id = self.get_http_request_header("x-vm-id").unwrap_or_default();
                let name = self.get_http_request_header("x-queue").unwrap_or_default();
                let found = match self.resolve_shared_queue(&vm_id, &name) {
                    Some(id) => {
                        let _ = self.enqueue_shared_queue(id, Some(b"item"));
                        "found"
                    }
                    None => "missing",
                };
                self.send_http_response(200, vec![("x-queue", found)], Some(b"queue\n"));
                Action::Pause
            }
            "local" => {
                self.send_http_response(
                    201,
                    vec![("x-local", "1"), ("content-type", "text/plain")],
                    Some(b"local body\n"),
                );
                Action::Pause
            }
            "local-twice" => {
                self.send_http_response(401, vec![("x-which", "first")], Some(b"first\n"));
                self.send_http_response(402, vec![("x-which", "second")], Some(b"second\n"));
                Action::Pause
            }
            "early-response-header" => {
                let (k, v) = ("x-early", "1");
                // SAFETY: pointers and lengths of live byte slices.
                let status = unsafe { proxy_add_header_map_value(2, k.as_ptr(), k.len(), v.as_ptr(), v.len()) };
                self.note("x-early-status", status.to_string());
                Action::Continue
            }
            "grpc" => {
                let r = self.dispatch_grpc_call("nowhere", "svc", "Method", vec![], None, Duration::from_secs(1));
                self.note("x-grpc", format!("{r:?}"));
                Action::Continue
            }
            "body-header" | "pause-resume" if !end_of_stream => Action::Pause,
            _ => Action::Continue,
        }
    }

    fn on_http_request_body(&mut self, _size: usize, end_of_stream: bool) -> Action {
        if !end_of_stream {
            return Action::Pause;
        }
        match self.case.as_str() {
            "body-header" => {
                // Decided once the body is in: the mock answers this with a 418.
                self.set_http_request_header("x-mock-fault", Some("status:code=418"));
                Action::Continue
            }
            "pause-resume" => {
                self.shared.borrow_mut().paused.push((self.id, false));
                Action::Pause
            }
            _ => Action::Continue,
        }
    }

    fn on_http_response_headers(&mut self, _n: usize, _end: bool) -> Action {
        let status = self.get_http_response_header(":status").unwrap_or_default();
        self.note("x-seen-status", status);
        if self.case == "props" {
            for p in [
                "route_name",
                "cluster_name",
                "plugin_name",
                "plugin_root_id",
                "plugin_vm_id",
                "node.id",
                "upstream.address",
                "connection.requested_server_name",
                "destination.address",
                "request.useragent",
                "request.referer",
                "request.id",
            ] {
                let v = text(self.prop(p));
                self.note(&format!("x-prop-{}", p.replace('.', "-")), v);
            }
            for p in [
                "upstream.port",
                "destination.port",
                "source.port",
                "request.time",
                "request.size",
                "request.total_size",
                "response.code",
            ] {
                let v = int(self.prop(p));
                self.note(&format!("x-prop-{}", p.replace('.', "-")), v);
            }
            let mtls = self
                .prop("connection.mtls")
                .map(|b| format!("{b:?}"))
                .unwrap_or_default();
            self.note("x-prop-connection-mtls", mtls);
            let id = self
                .prop("connection.id")
                .map(|b| b.len().to_string())
                .unwrap_or_default();
            self.note("x-prop-connection-id-len", id);
            let meta = self
                .prop("node.metadata")
                .map(|b| b.len().to_string())
                .unwrap_or_default();
            self.note("x-prop-node-metadata-len", meta);
        }
        for (k, v) in std::mem::take(&mut self.seen) {
            self.add_http_response_header(&k, &v);
        }
        match self.case.as_str() {
            "response-pause" | "response-pause-local" => {
                // Decide on a response header only after asking another service.
                let up = self.get_http_request_header("x-upstream").unwrap_or_default();
                let r = self.dispatch_http_call(
                    &up,
                    vec![(":method", "GET"), (":path", "/v1/models"), (":authority", "auth")],
                    None,
                    vec![],
                    Duration::from_secs(2),
                );
                if r.is_ok() {
                    return Action::Pause;
                }
            }
            "response-pause-tick" => {
                self.shared.borrow_mut().paused.push((self.id, true));
                return Action::Pause;
            }
            _ => {}
        }
        if self.case == "local-twice" {
            // A third try, in the response phase: still the first one stands.
            self.send_http_response(403, vec![], Some(b"third\n"));
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        if self.case != "local" && self.case != "redact" {
            return Action::Continue;
        }
        if !end_of_stream {
            // Buffer: the whole body is presented at the end.
            return Action::Pause;
        }
        let body = self.get_http_response_body(0, size).unwrap_or_default();
        let out = match self.case.as_str() {
            "local" => body.to_ascii_uppercase(),
            _ => String::from_utf8_lossy(&body).replace("secret", "******").into_bytes(),
        };
        self.set_http_response_body(0, size, &out);
        Action::Continue
    }

    fn on_log(&mut self) {
        if self.case == "sizes" {
            let req = int(self.prop("request.total_size"));
            let size = int(self.prop("response.size"));
            let total = int(self.prop("response.total_size"));
            warn!("conformance-log request.total_size={req} response.size={size} response.total_size={total}");
        }
    }
}
