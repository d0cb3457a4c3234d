//! [`RequestCtx`]: the one place a request's state lives, from the first
//! phase to the log phase. Plugins see this and nothing of Pingora or of the
//! runtime: what they need of the route is here.

use super::chain::Route;
use crate::bulkhead::Ticket;
use crate::config::Priority;
use crate::error::{ErrorKind, WeirError};
use crate::llm::{self, RequestHead, Usage};
use crate::provider::{Provider, Providers};
use bytes::Bytes;
use smallvec::SmallVec;
use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Who the client is, once an auth plugin has said so.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The key's name from the keys file (never the key itself).
    pub name: Arc<str>,
    /// Models this key may use; `None` = any.
    pub models: Option<Arc<[String]>>,
    /// The key's group (a team) from the keys file, which budgets may be per.
    pub group: Option<Arc<str>>,
    /// The key's priority class in bulkhead queues.
    pub priority: Priority,
    /// The key's weight for fair shares of a bulkhead's slots and queue.
    pub weight: u32,
}

/// What providers did for one request, as far as weir knows: what token and
/// money budgets settle on. Attempts add up (a stream cut and continued
/// elsewhere was produced, and billed, by both).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spent {
    /// Tokens known to be used: reported by providers, or counted by weir.
    pub usage: Usage,
    /// Part of `usage` is weir's count (the prompt and the text a stream
    /// sent before it ended early), not a provider's report.
    pub counted: bool,
    /// A provider may have done work weir could not see (an answer cut or
    /// timed out after the request reached it, or one without usage):
    /// settle at least what was reserved.
    pub unknown: bool,
}

impl Spent {
    /// A provider's own report.
    pub fn reported(&mut self, u: Usage) {
        self.usage = self.usage.plus(u);
    }

    /// weir's count where the provider could not report.
    pub fn counted(&mut self, u: Usage) {
        self.usage = self.usage.plus(u);
        self.counted = true;
    }

    /// Work weir could not see.
    pub fn unknown(&mut self) {
        self.unknown = true;
    }

    /// Tokens to charge against a reservation of `reserved`.
    pub fn charge(&self, reserved: u64) -> u64 {
        if self.unknown {
            self.usage.total().max(reserved)
        } else {
            self.usage.total()
        }
    }
}

/// Per-request state: one value per request, owned by Pingora's session.
pub struct RequestCtx {
    pub started: Instant,
    /// The config generation this request started on and finishes on.
    pub generation: u64,
    /// That generation's providers by name (a filter's `http_call` target).
    pub providers: Option<Arc<Providers>>,
    /// That generation's `server.max_request_body`.
    pub max_request_body: usize,
    /// That generation's `server.timeouts.request_body`.
    pub request_body_timeout: Duration,
    /// The matched route.
    pub route: Option<Arc<Route>>,
    pub request_id: String,
    /// The client's address.
    pub client_addr: Option<std::net::SocketAddr>,
    /// The local (listener) address the client connected to.
    pub server_addr: Option<std::net::SocketAddr>,
    /// The connection is TLS; `mtls`: the client showed a certificate.
    pub tls: bool,
    pub mtls: bool,
    pub identity: Option<Identity>,
    /// The request's priority class and key, as bulkheads see it (standard
    /// and key-less until an auth plugin says otherwise).
    pub ticket: Ticket,
    /// Parsed head of a JSON body (LLM endpoints).
    pub head: Option<RequestHead>,
    /// The request body as it will be sent (after plugins, before the model
    /// rewrite). Plugins change it with [`RequestCtx::set_body`].
    pub body: Bytes,
    /// The prompt tokens counted for `body` (held, so a body replaced since
    /// is told apart by its address: see [`RequestCtx::prompt_tokens`]).
    prompt_count: Option<(Bytes, u64)>,
    /// The wire format the client speaks.
    pub wire: Wire,
    /// An Anthropic client's request as it sent it, while `body` is still
    /// its OpenAI translation (no plugin changed it): what an Anthropic
    /// provider gets, byte for byte but for the model.
    pub client_body: Option<(Bytes, RequestHead)>,
    /// Fields of the client's request the provider that answered could
    /// not be sent (`x-weir-dropped`).
    pub dropped: Vec<String>,
    /// Fields of an Anthropic client's request that its OpenAI translation
    /// could not carry (dropped unless an Anthropic provider answers).
    pub wire_dropped: Vec<String>,
    /// The providers sent this request, in order (the access log's `providers`).
    pub tried: SmallVec<[Arc<Provider>; 2]>,
    /// Bulkheads this request queued in, and how long (only waits, not free slots).
    pub waits: SmallVec<[(Arc<crate::bulkhead::Bulkhead>, Duration); 2]>,
    /// What a cache plugin made of the request: `hit`, `miss` or `bypass`.
    pub cache: Option<&'static str>,
    /// Providers that may serve this request, in the order they will be tried.
    pub candidates: Vec<Arc<Provider>>,
    /// The provider that answered (or was last tried).
    pub provider: Option<Arc<Provider>>,
    /// The public model that answered, when not the one asked for (a
    /// `context_length_exceeded` answer sent the request to a larger one).
    pub served_model: Option<String>,
    /// Status sent to the client (0 until a header is written).
    pub status: u16,
    /// What went wrong, if weir answered with an error.
    pub error: Option<WeirError>,
    /// Token usage the provider reported (for metrics; a cache hit sets it too).
    pub usage: Option<Usage>,
    /// What the providers did for this request: what budgets settle on.
    pub spent: Spent,
    /// Time the provider took to send its response header.
    pub upstream_ttfb: Option<Duration>,
    /// This request's trace, when tracing is on and it was sampled.
    pub trace: Option<Box<crate::trace::RequestTrace>>,
    /// Per-plugin state, indexed like the route's plugin list.
    plugin_state: Vec<Option<Box<dyn Any + Send + Sync>>>,
    /// Which plugin's hook runs now (index into the route's plugins).
    plugin_index: usize,
    /// How many of the route's plugins have had a request phase run: the
    /// response phases run over these, in reverse.
    pub(super) entered: usize,
    /// A response phase failed and its plugin's policy is fail-closed: the
    /// response must not reach the client as it is.
    pub(super) failed: Option<WeirError>,
    /// A change to the request header made in a body phase, applied by the
    /// pipeline as that phase returns (the header is not sent before).
    header_edit: Option<HeaderEdit>,
}

/// The API a client speaks. Inside weir a request is OpenAI's chat
/// completions whatever the client sent: an Anthropic Messages request is
/// translated on arrival and its answer translated back on the way out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Wire {
    #[default]
    Openai,
    /// `POST /v1/messages` (and `/v1/messages/count_tokens`).
    Anthropic,
}

/// A change to the request header (see [`RequestCtx::edit_request_header`]).
pub type HeaderEdit = Box<dyn FnOnce(&mut pingora_http::RequestHeader) + Send + Sync>;

impl Default for RequestCtx {
    fn default() -> Self {
        RequestCtx {
            started: Instant::now(),
            generation: 0,
            providers: None,
            max_request_body: 0,
            request_body_timeout: Duration::from_secs(60),
            route: None,
            request_id: String::new(),
            client_addr: None,
            server_addr: None,
            tls: false,
            mtls: false,
            identity: None,
            ticket: Ticket::default(),
            head: None,
            body: Bytes::new(),
            prompt_count: None,
            wire: Wire::Openai,
            client_body: None,
            dropped: Vec::new(),
            wire_dropped: Vec::new(),
            tried: SmallVec::new(),
            waits: SmallVec::new(),
            cache: None,
            candidates: Vec::new(),
            provider: None,
            served_model: None,
            status: 0,
            error: None,
            usage: None,
            spent: Spent::default(),
            trace: None,
            upstream_ttfb: None,
            plugin_state: Vec::new(),
            plugin_index: 0,
            entered: 0,
            failed: None,
            header_edit: None,
        }
    }
}

impl RequestCtx {
    /// Change the request header from `request_body` (a wasm filter's
    /// header changes in its body callback); applied when the phase returns.
    pub fn edit_request_header(&mut self, f: HeaderEdit) {
        self.header_edit = Some(match self.header_edit.take() {
            Some(first) => Box::new(move |h| {
                first(h);
                f(h)
            }),
            None => f,
        });
    }

    pub(super) fn take_header_edit(&mut self) -> Option<HeaderEdit> {
        self.header_edit.take()
    }

    /// The matched route's name ("" before a route matched).
    pub fn route_name(&self) -> &str {
        self.route.as_ref().map_or("", |r| r.name.as_str())
    }

    /// Note a bulkhead slot the request took: its queue wait, if it waited.
    pub fn note_slot(&mut self, permit: &crate::bulkhead::Permit) {
        if !permit.waited().is_zero() {
            self.waits.push((permit.bulkhead().clone(), permit.waited()));
        }
    }

    /// Whether an answer from `p` reaches this client untranslated: an
    /// Anthropic provider's answer to an Anthropic client, in Anthropic's
    /// format where every other answer inside weir is OpenAI's.
    pub fn native_from(&self, p: &Provider) -> bool {
        self.wire == Wire::Anthropic && p.conf.kind == crate::config::ProviderKind::Anthropic
    }

    /// The answer under way is native (see [`RequestCtx::native_from`]).
    pub fn native_answer(&self) -> bool {
        self.provider.as_ref().is_some_and(|p| self.native_from(p))
    }

    /// The public model the client asked for, if the body named one.
    pub fn model(&self) -> Option<&str> {
        self.head.as_ref().map(|h| h.model.as_str())
    }

    /// The public model that answered (or is being tried): the one asked
    /// for, unless a context-length fallback changed it.
    pub fn served_model(&self) -> Option<&str> {
        self.served_model.as_deref().or_else(|| self.model())
    }

    /// The running plugin's own per-request state.
    pub fn state<T: Any + Send + Sync>(&mut self) -> Option<&mut T> {
        self.plugin_state.get_mut(self.plugin_index)?.as_mut()?.downcast_mut()
    }

    /// Set the running plugin's per-request state.
    pub fn set_state<T: Any + Send + Sync>(&mut self, v: T) {
        self.put_state(Box::new(v));
    }

    /// Take the running plugin's state out (to use it beside `&mut self`);
    /// give it back with [`RequestCtx::put_state`].
    pub fn take_state<T: Any + Send + Sync>(&mut self) -> Option<Box<T>> {
        let slot = self.plugin_state.get_mut(self.plugin_index)?;
        match slot.take()?.downcast::<T>() {
            Ok(s) => Some(s),
            Err(other) => {
                *slot = Some(other);
                None
            }
        }
    }

    /// Give back state taken with [`RequestCtx::take_state`].
    pub fn put_state<T: Any + Send + Sync>(&mut self, v: Box<T>) {
        let i = self.plugin_index;
        if self.plugin_state.len() <= i {
            self.plugin_state.resize_with(i + 1, || None);
        }
        self.plugin_state[i] = Some(v);
    }

    /// From a response phase: this response must not reach the client (a
    /// fail-closed filter failed on it). Before the header is sent the
    /// client gets `e` instead; after, the connection is cut, so a response
    /// a filter could not vet is never presented as complete.
    pub fn fail_response(&mut self, e: WeirError) {
        self.failed.get_or_insert(e);
    }

    /// Make plugin `i` the running one.
    pub(super) fn enter(&mut self, i: usize) {
        self.plugin_index = i;
    }

    /// The prompt tokens to reserve for the request body
    /// ([`llm::tokens::reserve_prompt_tokens`]), counted once per body: the
    /// plugins that reserve tokens (a rate limit, a budget) and a stream's
    /// settlement share one count. A body replaced since (a plugin's
    /// [`RequestCtx::set_body`]) is counted anew: the counted body is held,
    /// so a different body never has its address.
    pub async fn prompt_tokens(&mut self) -> u64 {
        if let Some(n) = self.kept_count() {
            return n;
        }
        let n = llm::tokens::reserve_prompt_tokens(&self.body, self.head.as_ref()).await;
        self.prompt_count = Some((self.body.clone(), n));
        n
    }

    /// Whether [`RequestCtx::prompt_tokens`] may wait: the body is not
    /// counted yet and is too long to count inline (it is counted on the
    /// blocking pool). What a plugin that reserves tokens answers in
    /// [`super::Plugin::request_body_waits`].
    pub fn prompt_count_waits(&self) -> bool {
        self.kept_count().is_none() && !llm::tokens::counted_inline(&self.body)
    }

    /// The count kept for the body as it is now, if it was counted.
    fn kept_count(&self) -> Option<u64> {
        let (counted, n) = self.prompt_count.as_ref()?;
        (counted.as_ptr() == self.body.as_ptr() && counted.len() == self.body.len()).then_some(*n)
    }

    /// Replace the request body. For an LLM request the head is read again,
    /// and if the model changed the candidates follow it; a body that is no
    /// longer a valid request, or names a model the route does not serve,
    /// is the `who`'s error.
    pub fn set_body(&mut self, body: Bytes, who: &str) -> Result<(), WeirError> {
        self.body = body;
        // The client's own bytes no longer say what is to be sent.
        self.client_body = None;
        if self.head.is_none() {
            return Ok(());
        }
        let head = llm::parse_head(&self.body).map_err(|e| {
            WeirError::new(
                ErrorKind::Plugin,
                format!("plugin '{who}' produced an invalid request body: {e}"),
            )
        })?;
        let model_changed = self.head.as_ref().is_some_and(|h| h.model != head.model);
        self.head = Some(head);
        if model_changed {
            if let Some(route) = self.route.clone() {
                let model = self.model().unwrap_or_default().to_string();
                let candidates = route.candidates(&model);
                if candidates.is_empty() {
                    return Err(route.model_not_found(&model));
                }
                self.candidates = candidates;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(text: &str) -> (Bytes, RequestHead) {
        let body = Bytes::from(format!(
            r#"{{"model":"m","messages":[{{"role":"user","content":"{text}"}}],"other":[{{"content":"a b c d e f g"}}]}}"#
        ));
        let head = llm::parse_head(&body).unwrap();
        (body, head)
    }

    #[tokio::test]
    async fn the_prompt_is_counted_once_per_body() {
        let mut ctx = RequestCtx::default();
        let (body, head) = chat("hello world, a short prompt");
        let want = llm::tokens::reserve_prompt_tokens(&body, Some(&head)).await;
        (ctx.body, ctx.head) = (body, Some(head));
        assert_eq!(ctx.prompt_tokens().await, want);
        // The same body again: the count is not redone (a head pointed at
        // another list of messages in it, which would count otherwise, is
        // not read).
        let body = ctx.body.clone();
        let other = body.windows(7).position(|w| w == b"\"other\"").unwrap() + 8;
        ctx.head.as_mut().unwrap().messages_span = Some(other..body.len() - 1);
        assert_ne!(llm::tokens::reserve_prompt_tokens(&body, ctx.head.as_ref()).await, want);
        assert_eq!(ctx.prompt_tokens().await, want);
        // A body replaced, even by one of the same length: counted anew.
        let (other, head) = chat("x x x x x x x x x x x x x x");
        assert_eq!(other.len(), ctx.body.len());
        let other_count = llm::tokens::reserve_prompt_tokens(&other, Some(&head)).await;
        assert_ne!(other_count, want);
        ctx.set_body(other, "test").unwrap();
        assert_eq!(ctx.prompt_tokens().await, other_count);
    }

    #[tokio::test]
    async fn only_a_large_prompt_not_yet_counted_makes_the_count_wait() {
        let [small, large] = llm::tokens::inline_and_pooled_bodies();
        let mut ctx = RequestCtx::default();
        ctx.body = small;
        assert!(!ctx.prompt_count_waits(), "counted inline");
        ctx.body = large;
        assert!(ctx.prompt_count_waits(), "counted on the blocking pool");
        ctx.prompt_tokens().await;
        assert!(
            !ctx.prompt_count_waits(),
            "counted already: a second plugin does not wait"
        );
    }
}
