//! Attempts at providers. Whatever an attempt takes is held by a guard and
//! given back in `Drop` on every path (an early return, a client that
//! leaves, a dropped future): the provider's bulkhead slot, its in-flight
//! count, and each plugin's stake (a breaker's half-open probe).
//!
//! The failover loop of a request and a wasm filter's `http_call` to a
//! provider both go through [`AttemptGuard`] and the one upstream exchange
//! in `upstream`, so a provider's bulkhead and breaker apply to both.

use super::chain::PluginInstance;
use super::plugin::{Admission, Attempt, AttemptHold};
use crate::bulkhead::{Bulkhead, Permit, Reason, Refusal, Ticket};
use crate::error::{ErrorKind, WeirError};
use crate::provider::{AdaptiveLimit, InFlight, Provider};
use crate::traffic::adaptive::Outcome;
use crate::upstream::{Target, Upstream};
use bytes::Bytes;
use pingora_http::{RequestHeader, ResponseHeader};
use smallvec::SmallVec;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// A refusal by a bulkhead as weir's error, naming the queue and the
/// request's priority class (`x-weir-queue`, `x-weir-class`).
pub fn refusal_error(r: Refusal, b: &Bulkhead) -> WeirError {
    let (q, class, secs) = (b.name(), r.class, r.retry_after);
    let ms = |d: Duration| d.as_millis();
    let (kind, message) = match r.reason {
        Reason::Full => (
            ErrorKind::QueueFull,
            format!("queue '{q}' is full ({} waiting, class {class}); retry in {secs}s", r.waiting),
        ),
        Reason::Timeout => (
            ErrorKind::QueueTimeout,
            format!(
                "waited {}ms in queue '{q}' (class {class}) without a free slot; retry in {secs}s",
                ms(r.waited)
            ),
        ),
        Reason::Evicted { by } => (
            ErrorKind::QueueFull,
            format!(
                "queue '{q}' is full: this {class} request lost its place to a {by} request after waiting {}ms; retry in {secs}s",
                ms(r.waited)
            ),
        ),
        Reason::FairShare => (
            ErrorKind::QueueFull,
            format!(
                "queue '{q}' is full and this key held more than its share of it (class {class}); retry in {secs}s"
            ),
        ),
        Reason::MaxAge { oldest, max } => (
            ErrorKind::QueueFull,
            format!(
                "queue '{q}' is too slow for class {class}: its oldest waiter has waited {}ms (max_queue_age {}ms); retry in {secs}s",
                ms(oldest),
                ms(max)
            ),
        ),
        Reason::Shed { oldest, target } => (
            ErrorKind::QueueFull,
            format!(
                "queue '{q}' is shedding class {class}: its oldest waiter has waited {}ms, over the {}ms target; retry in {secs}s",
                ms(oldest),
                ms(target)
            ),
        ),
    };
    let mut e = WeirError::new(kind, message).with_queue(q, secs);
    e.headers.push(("x-weir-class", class.to_string()));
    e
}

/// A slot in `b` for `ticket`, waiting in its queue if need be.
pub async fn acquire(b: &Arc<Bulkhead>, ticket: &Ticket) -> Result<Permit, WeirError> {
    b.acquire(ticket).await.map_err(|r| refusal_error(r, b))
}

/// The error when every plugin-admitted path to a provider is closed.
pub(super) fn skipped_error(p: &Provider) -> WeirError {
    WeirError::new(
        ErrorKind::CircuitOpen,
        format!("provider '{}' is not taking requests", p.name),
    )
    .with_queue("circuit_breaker", 1)
}

/// One attempt at a provider, from its bulkhead slot to the end of its
/// response. [`AttemptGuard::end`] records the outcome; a guard dropped
/// without one tells every hold [`Attempt::Aborted`].
pub struct AttemptGuard {
    holds: Holds,
    /// The attempt's span, when the request is traced: it ends as the
    /// guard drops, when the attempt gives back what it held.
    /// (Boxed, like `feedback`: a guard is moved along a request's path.)
    pub(super) span: Option<Box<crate::trace::Span>>,
    /// What the provider's adaptive limit learns from this attempt, if it has one.
    feedback: Option<Box<Feedback>>,
    _in_flight: InFlight,
    _permit: Permit,
}

/// An attempt as its provider's adaptive limit sees it, sampled when the
/// guard drops (while it still holds its slot).
struct Feedback {
    adaptive: Arc<AdaptiveLimit>,
    admitted: Instant,
    /// Status, time to the response head, remaining requests and
    /// `Retry-After` the provider sent.
    head: Option<(u16, Duration, Option<u64>, Option<Duration>)>,
    /// Time from sending to a stream's first content, and when it came.
    first_token: Option<(Duration, Instant)>,
    /// When the answer ended (an `Answered` outcome).
    ended: Option<Instant>,
    output_tokens: Option<u64>,
    failed: bool,
}

impl Feedback {
    /// The sample: none for an attempt aborted before an answer or
    /// answered with a 4xx other than 429 (which says nothing of load).
    fn outcome(&self) -> Option<Outcome> {
        if self.failed {
            return Some(Outcome::Error { retry_after: None });
        }
        let (status, ttfb, remaining, retry_after) = self.head?;
        match status {
            429 => Some(Outcome::RateLimited { retry_after }),
            500.. => Some(Outcome::Error { retry_after }),
            200..=299 => {
                // Time per token after the first: the length of the answer
                // does not inflate it, as it does the whole duration.
                let per_token = match (self.first_token, self.ended, self.output_tokens) {
                    (Some((_, at)), Some(end), Some(n)) if n >= 2 => {
                        Some(end.saturating_duration_since(at) / (n - 1).min(u32::MAX as u64) as u32)
                    }
                    _ => None,
                };
                Some(Outcome::Ok {
                    ttft: self.first_token.map_or(ttfb, |(t, _)| t),
                    per_token,
                    remaining,
                    retry_after,
                })
            }
            _ => None,
        }
    }
}

/// The plugins' stakes not yet told an outcome; dropped ones hear `Aborted`.
/// Inline: a route rarely has more than one plugin with a stake.
struct Holds(SmallVec<[Box<dyn AttemptHold>; 2]>);

impl Holds {
    /// Tell each hold how the attempt went, once: ended holds are gone.
    fn end(&mut self, attempt: &Attempt) {
        for mut h in self.0.drain(..) {
            h.end(attempt);
        }
    }
}

impl Drop for Holds {
    fn drop(&mut self) {
        self.end(&Attempt::Aborted);
    }
}

impl AttemptGuard {
    /// Ask each plugin of the chain, in order, to admit an attempt at
    /// `provider` (whose slot `permit` is). `None`: a plugin skipped it;
    /// what earlier plugins took is given back.
    pub fn admit(plugins: &[Arc<PluginInstance>], provider: &Arc<Provider>, permit: Permit) -> Option<AttemptGuard> {
        let mut holds = Holds(SmallVec::new());
        for p in plugins {
            match p.plugin.attempt_start(provider) {
                Admission::Go(Some(h)) => holds.0.push(h),
                Admission::Go(None) => {}
                Admission::Skip => return None,
            }
        }
        let feedback = provider.adaptive.as_ref().map(|a| {
            Box::new(Feedback {
                adaptive: a.clone(),
                admitted: Instant::now(),
                head: None,
                first_token: None,
                ended: None,
                output_tokens: None,
                failed: false,
            })
        });
        Some(AttemptGuard {
            holds,
            span: None,
            feedback,
            _in_flight: provider.in_flight(),
            _permit: permit,
        })
    }

    /// How the attempt went (once; later calls are ignored).
    pub fn end(&mut self, attempt: &Attempt) {
        if let (Some(s), Attempt::Failed(kind)) = (self.span.as_mut(), attempt) {
            crate::trace::fail(s, kind.code());
        }
        if let Some(f) = self.feedback.as_mut().filter(|f| f.ended.is_none() && !f.failed) {
            match attempt {
                Attempt::Answered { .. } => f.ended = Some(Instant::now()),
                Attempt::Failed(_) => f.failed = true,
                Attempt::Aborted => {}
            }
        }
        self.holds.end(attempt);
    }

    /// The provider's response head arrived `ttfb` after sending: its
    /// status and its `x-ratelimit-remaining-requests` and `Retry-After`.
    pub fn head(&mut self, head: &ResponseHeader, ttfb: Duration) {
        if let Some(s) = self.span.as_mut() {
            crate::trace::answered(s, head.status.as_u16());
        }
        let Some(f) = self.feedback.as_mut() else { return };
        let text = |name: &str| head.headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
        let remaining = text("x-ratelimit-remaining-requests").and_then(|v| v.parse().ok());
        let retry_after = head
            .headers
            .get("retry-after")
            .and_then(|v| super::retry::retry_after(v.as_bytes(), SystemTime::now()));
        f.head = Some((head.status.as_u16(), ttfb, remaining, retry_after));
    }

    /// A stream's first content arrived `ttft` after sending.
    pub fn first_token(&mut self, ttft: Duration) {
        if let Some(f) = self.feedback.as_mut() {
            f.first_token = Some((ttft, Instant::now()));
        }
    }

    /// The answer's output tokens, once known.
    pub fn output_tokens(&mut self, n: Option<u64>) {
        if let Some(f) = self.feedback.as_mut() {
            f.output_tokens = n.or(f.output_tokens);
        }
    }
}

impl Drop for AttemptGuard {
    fn drop(&mut self) {
        if let Some(f) = &self.feedback {
            if let Some(outcome) = f.outcome() {
                f.adaptive.record(f.admitted, outcome);
            }
        }
    }
}

/// A whole exchange with a provider outside a request's own failover (a
/// wasm filter's `http_call`): the provider's bulkhead, the chain's
/// admission, the in-flight count and the answer read to its end (at most
/// `max_body` bytes).
pub async fn call_provider(
    upstream: &Upstream,
    plugins: &[Arc<PluginInstance>],
    provider: &Arc<Provider>,
    req: &RequestHeader,
    body: &Bytes,
    max_body: usize,
) -> Result<(ResponseHeader, Bytes), WeirError> {
    // Outside a request (a root context's call) or on its behalf: standard class.
    let permit = acquire(&provider.bulkhead, &Ticket::default()).await?;
    let mut attempt = AttemptGuard::admit(plugins, provider, permit).ok_or_else(|| skipped_error(provider))?;
    let ex = match upstream.send(&Target::provider(provider), req, body).await {
        Ok(ex) => {
            attempt.head(ex.header(), ex.ttfb);
            ex
        }
        Err(e) => {
            attempt.end(&Attempt::Failed(e.error.kind));
            return Err(e.error);
        }
    };
    let header = ex.header().clone();
    attempt.end(&Attempt::Answered {
        status: header.status.as_u16(),
        ttfb: ex.ttfb,
    });
    let data = upstream
        .read_whole(ex, &provider.name, max_body)
        .await
        .map_err(WeirError::from)?;
    Ok((header, data))
}
