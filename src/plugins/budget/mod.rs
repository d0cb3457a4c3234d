//! `budget`: token and money budgets per API key, per key group and for
//! everyone, over rolling windows (`ledger.rs`). A request reserves the
//! most it can cost when it is admitted — its prompt plus `n × max_tokens`,
//! at the highest price among the providers that may serve it — on every
//! limit it falls under at once, or is refused; when it ends, the
//! reservation is swapped for what the providers did (`Spent`). Reserved
//! plus settled never passes a limit, so concurrent requests cannot
//! overshoot it.

pub mod ledger;
pub mod store;

use crate::config::{Checker, Dur};
use crate::error::{ErrorKind, WeirError};
use crate::llm::tokens;
use crate::metrics;
use crate::pipeline::{Capabilities, Flow, Phase, Phases, Plugin, RequestCtx, Typed};
use crate::provider::Cost;
use async_trait::async_trait;
use ledger::{Amount, Dim, Limit, Standing, Wait, Window};
use parking_lot::Mutex;
use pingora_http::{RequestHeader, ResponseHeader};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use store::{Decision, Entry, MemoryStore, RedisStore, StoreError};

/// Plugin settings.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BudgetConf {
    /// `memory` or `redis://host:port/db`.
    #[serde(default = "d_store")]
    pub store: String,
    #[serde(default)]
    pub on_store_error: OnStoreError,
    /// The longest a decision waits for a Redis store before
    /// `on_store_error` applies.
    #[serde(default = "d_store_timeout")]
    pub store_timeout: Dur,
    /// Completion tokens reserved per choice when a request sets no `max_tokens`.
    #[serde(default = "d_default_max_tokens")]
    pub default_max_tokens: u64,
    /// Most ledgers (limit × key) the memory store holds.
    #[serde(default = "d_max_keys")]
    pub max_keys: u64,
    pub limits: Vec<LimitConf>,
}

/// One budget.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LimitConf {
    /// Shown in `x-weir-budget`, refusals and `/status`.
    pub name: String,
    pub per: Per,
    /// The rolling window: `1m`, `1d`, `30d`, …
    pub window: Dur,
    /// Most tokens (prompt + completion) in any window.
    #[serde(default)]
    pub tokens: Option<u64>,
    /// Most money in any window, in the currency of the providers' prices.
    #[serde(default)]
    pub cost: Option<f64>,
}

/// Whose spend a budget counts.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Per {
    /// Each API key alone (requests without one share the key named "").
    Key,
    /// Each group of keys (`group:` in the keys file); keys without one are
    /// under no group budget.
    Group,
    /// Every request together.
    Global,
}

impl Per {
    fn name(self) -> &'static str {
        match self {
            Per::Key => "key",
            Per::Group => "group",
            Per::Global => "global",
        }
    }
}

/// What happens when the store cannot decide.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnStoreError {
    /// Admit the request without counting it.
    #[default]
    FailOpen,
    /// Refuse with 503 `store_unavailable`.
    FailClosed,
}

/// The `budget` plugin type.
pub static TYPE: Typed<BudgetConf> = Typed {
    name: "budget",
    check,
    files: crate::pipeline::no_files,
    build: |c, b| Ok(Arc::new(Budget::new(&b.name, c).map_err(|e| ("store", e))?)),
};

fn d_store_timeout() -> Dur {
    Dur(store::DEFAULT_TIMEOUT)
}

fn d_store() -> String {
    "memory".into()
}
fn d_default_max_tokens() -> u64 {
    4096
}
fn d_max_keys() -> u64 {
    100_000
}

/// The shortest window: 60 sub-buckets of at least 16 ms.
const MIN_WINDOW: std::time::Duration = std::time::Duration::from_secs(1);

/// The largest token limit: sums of a few stay within a signed 64-bit
/// integer in Redis.
const MAX_TOKENS: u64 = 1 << 62;

/// Checks of the values.
fn check(c: &BudgetConf, at: &str, ck: &mut Checker) {
    if c.limits.is_empty() {
        ck.error(format!("{at}.limits"), "at least one limit is required");
    }
    let mut names = HashMap::new();
    for (i, l) in c.limits.iter().enumerate() {
        let at = format!("{at}.limits[{i}]");
        let name_ok = !l.name.is_empty()
            && l.name.len() <= 64
            && l.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !name_ok {
            ck.error(
                format!("{at}.name"),
                format!("'{}': 1 to 64 letters, digits, '-', '_' or '.'", l.name),
            );
        } else if let Some(first) = names.insert(l.name.as_str(), i) {
            ck.error(
                format!("{at}.name"),
                format!("duplicate name '{}' (also limits[{first}])", l.name),
            );
        }
        if l.window.0 < MIN_WINDOW {
            ck.error(
                format!("{at}.window"),
                format!("'{}': a budget's window is at least 1s", l.window),
            );
        }
        if l.tokens.is_none() && l.cost.is_none() {
            ck.error(at.clone(), "set `tokens`, `cost` or both");
        }
        if let Some(t) = l.tokens.filter(|t| !(1..=MAX_TOKENS).contains(t)) {
            ck.error(format!("{at}.tokens"), format!("{t}: must be 1 to {MAX_TOKENS}"));
        }
        if let Some(c) = l
            .cost
            .filter(|c| !(c.is_finite() && *c > 0.0 && *c <= Cost::MAX as f64 / Cost::SCALE))
        {
            ck.error(
                format!("{at}.cost"),
                format!("{c}: must be above 0 and at most {}", Cost::MAX / 1_000_000_000),
            );
        }
    }
    if c.default_max_tokens < 1 {
        ck.error(format!("{at}.default_max_tokens"), "must be at least 1");
    }
    if c.max_keys < 1 {
        ck.error(format!("{at}.max_keys"), "must be at least 1");
    }
    if c.store_timeout.0.is_zero() {
        ck.error(format!("{at}.store_timeout"), "must be above zero");
    }
    crate::plugins::redis::check_store(&c.store, at, ck);
}

/// A budget as the plugin runs it.
struct Line {
    name: String,
    per: Per,
    window: Window,
    /// As config wrote it, for `/status`.
    window_text: String,
    limit: Limit,
    /// Its ledgers' keys start with this: the window is part of it, so a
    /// changed window starts a new ledger instead of misreading the old.
    prefix: String,
}

impl Line {
    fn entry(&self, subject: &str) -> Entry {
        Entry {
            key: format!("{}{subject}", self.prefix),
            window: self.window,
            limit: self.limit,
        }
    }
}

enum Store {
    Memory(Arc<MemoryStore>),
    Redis(Arc<RedisStore>),
}

/// Store failures: counted, and logged once per outage.
struct Health {
    plugin: String,
    down: AtomicBool,
    errors: prometheus::IntCounter,
}

impl Health {
    fn failed(&self, e: &StoreError, what: &str) {
        self.errors.inc();
        if !self.down.swap(true, Ordering::Relaxed) {
            log::error!("budget '{}': store failed ({}); {what}", self.plugin, e.0);
        }
    }

    fn ok(&self) {
        if self.down.load(Ordering::Relaxed) && self.down.swap(false, Ordering::Relaxed) {
            log::warn!("budget '{}': store is back", self.plugin);
        }
    }
}

/// Subjects of one budget this instance decided on lately, most recent
/// kept: what `/status` shows of a Redis store.
#[derive(Default)]
struct Seen {
    at: HashMap<String, u64>,
    clock: u64,
}

/// Subjects per budget `/status` lists.
const STATUS_MAX: usize = 100;

impl Seen {
    fn mark(&mut self, subject: &str) {
        self.clock += 1;
        if let Some(t) = self.at.get_mut(subject) {
            *t = self.clock;
            return;
        }
        if self.at.len() >= STATUS_MAX {
            if let Some(oldest) = self.at.iter().min_by_key(|(_, t)| **t).map(|(k, _)| k.clone()) {
                self.at.remove(&oldest);
            }
        }
        self.at.insert(subject.to_string(), self.clock);
    }
}

/// What a request reserved, to settle in the log phase.
struct Reservation {
    entries: Vec<Entry>,
    at: u64,
    amount: Amount,
}

/// Per-request state.
#[derive(Default)]
struct Held {
    /// An embeddings request: nothing is generated.
    embeddings: bool,
    /// Room left after the reservation, for the response headers.
    room: Option<[Option<u64>; 2]>,
    reservation: Option<Reservation>,
}

/// See the module doc.
pub struct Budget {
    name: String,
    lines: Vec<Line>,
    default_max_tokens: u64,
    on_store_error: OnStoreError,
    store: Store,
    health: Arc<Health>,
    /// Per line (Redis store only).
    seen: Mutex<Vec<Seen>>,
}

impl Budget {
    pub fn new(name: &str, conf: &BudgetConf) -> Result<Budget, String> {
        // Refusals per budget from 0, so the first one is a visible increase.
        for l in &conf.limits {
            metrics::BUDGET_REFUSED.with_label_values(&[name, l.name.as_str()]);
        }
        let store = match conf.store.as_str() {
            "memory" => Store::Memory(MemoryStore::shared(name, conf.max_keys)),
            url => Store::Redis(Arc::new(RedisStore::new(
                url,
                &format!("weir:budget:{name}:"),
                conf.store_timeout.0,
            )?)),
        };
        let lines = conf
            .limits
            .iter()
            .map(|l| {
                let window = Window::of(l.window.0);
                Line {
                    name: l.name.clone(),
                    per: l.per,
                    window,
                    window_text: l.window.to_string(),
                    limit: Limit {
                        tokens: l.tokens,
                        cost: l.cost.map(|c| Cost::from_units(c).0),
                    },
                    prefix: format!("{}:{}:", l.name, window.span_ms()),
                }
            })
            .collect::<Vec<_>>();
        tokens::warm_up();
        Ok(Budget {
            name: name.to_string(),
            seen: Mutex::new(lines.iter().map(|_| Seen::default()).collect()),
            lines,
            default_max_tokens: conf.default_max_tokens,
            on_store_error: conf.on_store_error,
            store,
            health: Arc::new(Health {
                plugin: name.to_string(),
                down: AtomicBool::new(false),
                errors: metrics::BUDGET_STORE_ERRORS.with_label_values(&[name]),
            }),
        })
    }

    /// The ledgers this request falls under: (line, subject).
    fn subjects(&self, ctx: &RequestCtx) -> Vec<(usize, String)> {
        let id = ctx.identity.as_ref();
        self.lines
            .iter()
            .enumerate()
            .filter_map(|(i, l)| {
                let subject = match l.per {
                    Per::Key => id.map_or("", |id| &id.name).to_string(),
                    Per::Group => id?.group.as_deref()?.to_string(),
                    Per::Global => String::new(),
                };
                Some((i, subject))
            })
            .collect()
    }

    /// The most the request can cost: its prompt at the highest input
    /// price and its completion at the highest output price among the
    /// providers that may serve it (those of its context fallback model
    /// too), plus two billionths for the rounding of the settled cost's
    /// three parts. Zero when none of them has a price for the model.
    fn reserve_cost(ctx: &RequestCtx, prompt: u64, completion: u64) -> Cost {
        let Some(model) = ctx.model() else {
            return Cost(0);
        };
        let fallback = ctx
            .route
            .as_ref()
            .and_then(|r| r.context_fallbacks.get(model).map(|f| (f.as_str(), r.candidates(f))));
        let priced = ctx.candidates.iter().filter_map(|p| p.prices(model)).chain(
            fallback
                .iter()
                .flat_map(|(f, candidates)| candidates.iter().filter_map(|p| p.prices(f))),
        );
        let mut top: Option<(f64, f64)> = None;
        for p in priced {
            let input = p.input.max(p.cached_input.unwrap_or(0.0));
            top = Some(top.map_or((input, p.output), |(i, o)| (i.max(input), o.max(p.output))));
        }
        match top {
            Some((input, output)) => Cost::tokens(prompt, input)
                .plus(Cost::tokens(completion, output))
                .plus(Cost(2)),
            None => Cost(0),
        }
    }

    /// What the request spent, against its reservation: tokens by
    /// [`crate::pipeline::Spent::charge`]; money at the answering provider's
    /// price for the model it served, or the reservation when a provider
    /// may have worked unseen.
    fn spent(ctx: &RequestCtx, reserved: Amount) -> Amount {
        let spent = ctx.spent;
        let cost = match (&ctx.provider, ctx.served_model()) {
            (Some(p), Some(m)) => p.cost(m, spent.usage).unwrap_or_default(),
            _ => Cost(0),
        };
        let cost = if spent.unknown {
            cost.max(Cost(reserved.cost))
        } else {
            cost
        };
        Amount {
            tokens: spent.charge(reserved.tokens),
            cost: cost.0,
        }
    }

    async fn reserve(&self, entries: &[Entry], need: Amount) -> Result<Decision, StoreError> {
        let d = match &self.store {
            Store::Memory(m) => m.reserve(entries, need),
            // Boxed, so the memory store's requests carry no round trip's large future.
            Store::Redis(r) => Box::pin(r.reserve(entries, need)).await,
        };
        if d.is_ok() {
            self.health.ok();
        }
        d
    }

    fn mark_seen(&self, subjects: &[(usize, String)]) {
        if let Store::Redis(_) = self.store {
            let mut seen = self.seen.lock();
            for (i, s) in subjects {
                seen[*i].mark(s);
            }
        }
    }

    /// The store could not decide: the outage policy.
    fn store_failed(&self, e: StoreError) -> Result<Flow, WeirError> {
        let policy = match self.on_store_error {
            OnStoreError::FailOpen => "admitting requests uncounted",
            OnStoreError::FailClosed => "refusing requests",
        };
        self.health.failed(&e, policy);
        match self.on_store_error {
            OnStoreError::FailOpen => Ok(Flow::Continue),
            OnStoreError::FailClosed => {
                let mut e = WeirError::new(
                    ErrorKind::StoreUnavailable,
                    format!("the budget store of '{}' is unavailable; retry shortly", self.name),
                );
                e.retry_after = Some(1);
                Err(e)
            }
        }
    }

    /// The 429 for a request that does not fit.
    fn refuse(&self, standing: Standing, need: Amount, subjects: &[(usize, String)]) -> WeirError {
        let Some((i, dim, wait)) = standing.short else {
            return WeirError::new(ErrorKind::Plugin, "budget refused without a reason");
        };
        let (line_index, subject) = &subjects[i];
        let line = &self.lines[*line_index];
        metrics::BUDGET_REFUSED
            .with_label_values(&[&self.name, &line.name])
            .inc();
        let whose = match line.per {
            Per::Key => format!(" of key '{subject}'"),
            Per::Group => format!(" of group '{subject}'"),
            Per::Global => String::new(),
        };
        let di = Dim::BOTH.iter().position(|d| *d == dim).unwrap_or(0);
        let show = |v: u64| match dim {
            Dim::Tokens => format!("{v} tokens"),
            Dim::Cost => money(v),
        };
        let (need_s, limit_s) = (show(need.get(dim)), show(line.limit.get(dim).unwrap_or(0)));
        let room_s = show(standing.room[di].unwrap_or(0));
        let (secs, message) = match wait {
            Wait::After(ms) => {
                let secs = ms.div_ceil(1000).max(1);
                (
                    secs,
                    format!(
                        "budget '{}'{whose} is spent: this request may use up to {need_s}, and {room_s} of \
                         {limit_s} remain in its {} window; retry in {secs}s",
                        line.name, line.window_text
                    ),
                )
            }
            Wait::InFlight => (
                1,
                format!(
                    "budget '{}'{whose} is held by requests in flight: this request may use up to {need_s}, \
                     and {room_s} of {limit_s} remain; retry shortly",
                    line.name
                ),
            ),
            Wait::Never => (
                line.window.span_ms().div_ceil(1000).max(1),
                format!(
                    "this request may use up to {need_s}, more than budget '{}'{whose} allows in its whole \
                     {} window ({limit_s}); ask for fewer max_tokens",
                    line.name, line.window_text
                ),
            ),
        };
        let mut e = WeirError::new(ErrorKind::InsufficientQuota, message);
        if wait == Wait::Never && dim == Dim::Tokens {
            e = e.with_param("max_tokens");
        }
        e.retry_after = Some(secs);
        e.headers.push(("x-weir-budget", line.name.clone()));
        room_headers(standing.room, |k, v| e.headers.push((k, v)));
        e
    }

    fn settle(&self, r: Reservation, spent: Amount) {
        match &self.store {
            Store::Memory(m) => {
                if let Err(e) = m.settle(&r.entries, r.at, r.amount, spent) {
                    self.health.failed(&e, "a settlement was lost");
                }
            }
            // A round trip: off the request path. Should it fail, the
            // reservation stays until its lease ends (never an overshoot).
            Store::Redis(store) => {
                let (store, health) = (store.clone(), self.health.clone());
                tokio::spawn(async move {
                    match store.settle(&r.entries, r.at, r.amount, spent).await {
                        Ok(()) => health.ok(),
                        Err(e) => health.failed(&e, "reservations stay held until their lease ends"),
                    }
                });
            }
        }
    }
}

/// The most completion tokens a request can be billed: `n` choices of
/// `max_tokens` (or the default); none for embeddings. Saturating: the head
/// bounds both, but a product must never wrap to a small reservation.
fn completion_tokens(max_tokens: Option<u64>, n: u64, default: u64, embeddings: bool) -> u64 {
    if embeddings {
        0
    } else {
        max_tokens.unwrap_or(default).saturating_mul(n)
    }
}

/// Billionths as a decimal number of the currency: `19.99875`, `0`.
fn money(v: u64) -> String {
    let (units, frac) = (v / 1_000_000_000, v % 1_000_000_000);
    if frac == 0 {
        return units.to_string();
    }
    let f = format!("{frac:09}");
    format!("{units}.{}", f.trim_end_matches('0'))
}

/// `x-weir-budget-remaining-tokens` and `-cost`: the tightest room among
/// the request's budgets, in each dimension some budget limits.
fn room_headers(room: [Option<u64>; 2], mut put: impl FnMut(&'static str, String)) {
    if let Some(t) = room[0] {
        put("x-weir-budget-remaining-tokens", t.to_string());
    }
    if let Some(c) = room[1] {
        put("x-weir-budget-remaining-cost", money(c));
    }
}

fn with_held(ctx: &mut RequestCtx) -> &mut Held {
    if ctx.state::<Held>().is_none() {
        ctx.set_state(Held::default());
    }
    ctx.state::<Held>().expect("set above")
}

fn amount_json(a: Amount) -> Value {
    json!({"tokens": a.tokens, "cost": a.cost as f64 / Cost::SCALE})
}

#[async_trait]
impl Plugin for Budget {
    /// Settlement needs the provider's usage on streams too.
    fn capabilities(&self) -> Capabilities {
        Capabilities { stream_usage: true }
    }

    /// The header phase notes the endpoint: it never waits. The body phase
    /// does (a store's round trip, a large prompt counted off the workers).
    fn phases(&self) -> Phases {
        Phases {
            request_headers: Phase::Run,
            response_headers: Phase::Run,
            ..Phases::ALL
        }
    }

    /// A memory store decides at once: only Redis, or a prompt too large to
    /// count inline and not yet counted, makes a request wait (and take a slot).
    fn request_body_waits(&self, ctx: &RequestCtx) -> bool {
        matches!(self.store, Store::Redis(_)) || ctx.prompt_count_waits()
    }

    async fn request_headers(&self, req: &mut RequestHeader, ctx: &mut RequestCtx) -> Result<Flow, WeirError> {
        with_held(ctx).embeddings = req.uri.path().ends_with("/embeddings");
        Ok(Flow::Continue)
    }

    async fn request_body(&self, ctx: &mut RequestCtx) -> Result<Flow, WeirError> {
        // Only LLM requests cost anything weir can count.
        let Some((max_tokens, n)) = ctx.head.as_ref().map(|h| (h.max_tokens, h.n)) else {
            return Ok(Flow::Continue);
        };
        let subjects = self.subjects(ctx);
        if subjects.is_empty() {
            return Ok(Flow::Continue);
        }
        let embeddings = with_held(ctx).embeddings;
        let completion = completion_tokens(max_tokens, n, self.default_max_tokens, embeddings);
        let prompt = ctx.prompt_tokens().await;
        let need = Amount {
            tokens: prompt.saturating_add(completion),
            cost: Self::reserve_cost(ctx, prompt, completion).0,
        };
        let entries: Vec<Entry> = subjects.iter().map(|(i, s)| self.lines[*i].entry(s)).collect();
        let decision = match self.reserve(&entries, need).await {
            Ok(d) => d,
            Err(e) => return self.store_failed(e),
        };
        self.mark_seen(&subjects);
        match decision {
            Decision::Admitted { at, standing } => {
                let held = with_held(ctx);
                held.room = Some(standing.after(need).room);
                held.reservation = Some(Reservation {
                    entries,
                    at,
                    amount: need,
                });
                Ok(Flow::Continue)
            }
            Decision::Refused(standing) => Err(self.refuse(standing, need, &subjects)),
        }
    }

    fn response_headers(&self, resp: &mut ResponseHeader, ctx: &mut RequestCtx) {
        if let Some(room) = ctx.state::<Held>().and_then(|h| h.room) {
            room_headers(room, |k, v| {
                let _ = resp.insert_header(k, v);
            });
        }
    }

    fn log(&self, ctx: &mut RequestCtx) {
        let Some(r) = ctx.state::<Held>().and_then(|h| h.reservation.take()) else {
            return;
        };
        let spent = Self::spent(ctx, r.amount);
        self.settle(r, spent);
    }

    async fn status(&self) -> Option<Value> {
        let mut budgets = Vec::with_capacity(self.lines.len());
        for (i, line) in self.lines.iter().enumerate() {
            let (balances, total, error) = match &self.store {
                Store::Memory(m) => {
                    let (b, total) = m.balances(&line.prefix, STATUS_MAX);
                    (b, total, None)
                }
                Store::Redis(r) => {
                    let subjects: Vec<String> = self.seen.lock()[i].at.keys().cloned().collect();
                    let entries: Vec<Entry> = subjects.iter().map(|s| line.entry(s)).collect();
                    match r.balances(&entries).await {
                        Ok(mut b) => {
                            for (b, s) in b.iter_mut().zip(&subjects) {
                                b.key = s.clone();
                            }
                            b.sort_by(|x, y| {
                                (y.spent.cost, y.spent.tokens, &x.key).cmp(&(x.spent.cost, x.spent.tokens, &y.key))
                            });
                            (b, subjects.len(), None)
                        }
                        Err(e) => (Vec::new(), subjects.len(), Some(e.0)),
                    }
                }
            };
            let limit = json!({
                "tokens": line.limit.tokens,
                "cost": line.limit.cost.map(|c| c as f64 / Cost::SCALE),
            });
            let keys: Vec<Value> = balances
                .iter()
                .map(|b| json!({"key": b.key, "spent": amount_json(b.spent), "reserved": amount_json(b.reserved)}))
                .collect();
            let mut v = json!({
                "name": line.name,
                "per": line.per.name(),
                "window": line.window_text,
                "limit": limit,
                "keys_total": total,
                "keys": keys,
            });
            if let Some(e) = error {
                v["error"] = Value::String(e);
            }
            budgets.push(v);
        }
        let store = match self.store {
            Store::Memory(_) => "memory",
            Store::Redis(_) => "redis",
        };
        Some(json!({"store": store, "budgets": budgets}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::llm::Usage;
    use crate::pipeline::body_waits;
    use crate::provider::Provider;
    use bytes::Bytes;

    fn provider(name: &str, yaml: &str) -> Arc<Provider> {
        let conf = serde_yaml_ng::from_str(&format!("url: http://127.0.0.1:9/v1\n{yaml}")).unwrap();
        Arc::new(Provider::build(name, &conf, None, None).unwrap())
    }

    #[test]
    fn completion_reservation() {
        assert_eq!(completion_tokens(Some(100), 4, 4096, false), 400);
        assert_eq!(completion_tokens(None, 2, 4096, false), 8192);
        assert_eq!(completion_tokens(Some(100), 4, 4096, true), 0);
        assert_eq!(completion_tokens(Some(u64::MAX), 128, 1, false), u64::MAX);
    }

    #[test]
    fn reserved_cost_is_the_highest_candidate_price() {
        let cheap = provider("cheap", "models: [m]\nprices: { m: { input: 1, output: 4 } }");
        // Its cached price is above its input price: the reservation's input bound.
        let odd = provider(
            "odd",
            "models: [m]\nprices: { m: { input: 0.5, output: 2, cached_input: 3 } }",
        );
        let unpriced = provider("unpriced", "models: [m]");
        let mut ctx = RequestCtx::default();
        ctx.head = Some(crate::llm::parse_head(br#"{"model":"m"}"#).unwrap());
        ctx.candidates = vec![cheap.clone(), odd, unpriced.clone()];
        // 1000 prompt tokens at 3 per million, 100 completion at 4, plus 2 billionths.
        assert_eq!(Budget::reserve_cost(&ctx, 1000, 100), Cost(3_000_000 + 400_000 + 2));
        ctx.candidates = vec![unpriced];
        assert_eq!(Budget::reserve_cost(&ctx, 1000, 100), Cost(0), "tokens only");

        // Settled at the answering provider's price; unknown work keeps the reservation.
        let reserved = Amount {
            tokens: 1100,
            cost: 3_400_002,
        };
        ctx.provider = Some(cheap);
        ctx.spent.reported(Usage {
            prompt_tokens: 900,
            completion_tokens: 50,
            ..Usage::default()
        });
        let spent = Budget::spent(&ctx, reserved);
        assert_eq!(
            spent,
            Amount {
                tokens: 950,
                cost: 900_000 + 200_000
            }
        );
        ctx.spent.unknown();
        assert_eq!(Budget::spent(&ctx, reserved), reserved);
        // No provider worked: nothing.
        let ctx = RequestCtx::default();
        assert_eq!(Budget::spent(&ctx, reserved), Amount::default());
    }

    #[test]
    fn only_redis_or_a_large_prompt_makes_the_body_phase_wait() {
        let conf: BudgetConf =
            serde_yaml_ng::from_str("limits: [{ name: hourly, per: key, window: 1h, tokens: 100 }]\n").unwrap();
        let b = Budget::new("t", &conf).unwrap();
        assert_eq!(b.phases().request_body, Phase::Wait, "declared: it may wait");
        let [small, large] = tokens::inline_and_pooled_bodies();
        assert!(!body_waits(&b, small), "memory, a small prompt: decided at once");
        assert!(body_waits(&b, large), "a large prompt is counted off the workers");
        let conf: BudgetConf = serde_yaml_ng::from_str(
            "store: redis://127.0.0.1:9/0\nlimits: [{ name: hourly, per: key, window: 1h, tokens: 100 }]\n",
        )
        .unwrap();
        let b = Budget::new("t", &conf).unwrap();
        assert!(body_waits(&b, Bytes::from_static(b"{}")), "redis: a round trip");
    }

    #[test]
    fn money_is_exact_decimal() {
        assert_eq!(money(0), "0");
        assert_eq!(money(20_000_000_000), "20");
        assert_eq!(money(19_998_750_000), "19.99875");
        assert_eq!(money(1), "0.000000001");
    }

    #[test]
    fn seen_keeps_the_most_recent() {
        let mut s = Seen::default();
        for i in 0..STATUS_MAX + 10 {
            s.mark(&format!("k{i}"));
            s.mark("hot");
        }
        assert_eq!(s.at.len(), STATUS_MAX);
        assert!(s.at.contains_key("hot"));
        assert!(!s.at.contains_key("k0"));
        assert!(s.at.contains_key(&format!("k{}", STATUS_MAX + 9)));
    }
}
