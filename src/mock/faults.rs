//! Fault specs: the grammar of `--fault` and of the fault header, which spec
//! a request carries, and the per-spec counters that decide whether the
//! fault acts on it (`first=N`, `flap:down=T`).
//!
//! ```text
//! --fault ARG     ARG  = SPEC | MODEL "=" SPEC
//!                 (MODEL=SPEC when ARG has a "=" and no ":" before its first "=")
//! header          SPEC
//! SPEC            NAME | NAME ":" KEY "=" VALUE ("," KEY "=" VALUE)*
//! ```
//!
//! The answers themselves are shaped in `app`; this module only decides.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use serde_json::{Map, Value};

use super::behaviour::MAX_DELAY;
use super::options::parse_duration;

/// Longest spec accepted, so the counters' memory stays bounded.
pub(super) const MAX_SPEC_LEN: usize = 256;

/// Distinct spec strings counted at once; a new one past this gets a 400
/// until `POST /mock/stats/reset`.
pub(super) const MAX_SPECS: usize = 1024;

/// What a fault does to a request it acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fault {
    /// `none`: answer normally (a header that overrides `--fault`).
    Off,
    /// `status`: an error answer with this status.
    Status { code: u16, retry_after: Option<RetryAfter> },
    /// `reset`: close the connection without a response byte.
    Reset,
    /// `hang`: never answer.
    Hang,
    /// `slow_first_token`: wait this long (instead of `--ttft`) before the first token.
    SlowFirstToken { delay: Duration },
    /// `cut`: drop the connection after this many content tokens.
    Cut { after: u32 },
    /// `stall`: stop writing after this many content tokens, connection kept open.
    Stall { after: u32 },
    /// `no_done`: end the body cleanly after this many tokens (`None`: all),
    /// without the finish chunk and `[DONE]`.
    NoDone { after: Option<u32> },
    /// `malformed`: one unparsable event after this many tokens, then a clean end.
    Malformed { after: u32 },
    /// `context_length`: OpenAI's 400 `context_length_exceeded`.
    ContextLength,
    /// `content_filter`: Azure OpenAI's 400 `content_filter`.
    ContentFilter,
    /// `reject_prefill`: 400 for a chat request ending with an assistant message.
    RejectPrefill,
    /// `flap`: 503 for this long after the spec was first seen.
    Flap { down: Duration },
}

/// The `Retry-After` of a `status` fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RetryAfter {
    /// `retry_after=S`: delay-seconds, sent as given.
    Seconds(u64),
    /// `retry_after_date=S`: an IMF-fixdate S seconds after the answer.
    DateIn(u64),
}

impl RetryAfter {
    /// The header value for an answer sent at `now`.
    pub(super) fn value(self, now: SystemTime) -> String {
        match self {
            RetryAfter::Seconds(secs) => secs.to_string(),
            RetryAfter::DateIn(secs) => httpdate::fmt_http_date(now + Duration::from_secs(secs).min(MAX_DELAY)),
        }
    }
}

/// How a fault ends a stream before its finish chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StreamBreak {
    /// Drop the connection.
    Cut,
    /// Stop writing, keep the connection open.
    Stall,
    /// End the body cleanly.
    NoDone,
    /// Send one unparsable event, then end the body cleanly.
    Malformed,
}

impl Fault {
    /// Where a stream breaks: after how many content tokens, and how.
    pub(super) fn stream_break(self) -> Option<(u32, StreamBreak)> {
        match self {
            Fault::Cut { after } => Some((after, StreamBreak::Cut)),
            Fault::Stall { after } => Some((after, StreamBreak::Stall)),
            Fault::NoDone { after } => Some((after.unwrap_or(u32::MAX), StreamBreak::NoDone)),
            Fault::Malformed { after } => Some((after, StreamBreak::Malformed)),
            _ => None,
        }
    }

    /// The wait before the first token, when the fault replaces `--ttft`.
    pub(super) fn first_token_delay(self) -> Option<Duration> {
        match self {
            Fault::SlowFirstToken { delay } => Some(delay),
            _ => None,
        }
    }
}

/// A parsed spec: its text (the key of its counters), the fault, and how
/// many requests it acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct FaultSpec {
    pub(super) text: String,
    pub(super) fault: Fault,
    /// `first=N`: only the first N requests carrying this spec.
    pub(super) first: Option<u64>,
}

/// Every name, for error messages.
const NAMES: &str = "none, status, reset, hang, slow_first_token, cut, stall, no_done, malformed, \
                     context_length, content_filter, reject_prefill, flap";

/// The keys each name accepts.
fn keys_of(name: &str) -> Option<&'static [&'static str]> {
    Some(match name {
        "none" => &["id"],
        "status" => &["code", "first", "retry_after", "retry_after_date", "id"],
        "reset" | "hang" | "context_length" | "content_filter" | "reject_prefill" => &["first", "id"],
        "slow_first_token" => &["delay", "first", "id"],
        "cut" | "stall" | "no_done" | "malformed" => &["after", "first", "id"],
        "flap" => &["down", "id"],
        _ => return None,
    })
}

/// The `key=value` pairs of a spec, checked against the keys its name takes.
struct Params<'a> {
    name: &'a str,
    pairs: Vec<(&'a str, &'a str)>,
}

impl<'a> Params<'a> {
    fn parse(name: &'a str, allowed: &[&str], text: Option<&'a str>) -> Result<Self, String> {
        let mut pairs: Vec<(&str, &str)> = Vec::new();
        if let Some(text) = text {
            if text.is_empty() {
                return Err(format!("`{name}:` needs at least one key=value after the colon"));
            }
            for pair in text.split(',') {
                let (key, value) = pair
                    .split_once('=')
                    .ok_or_else(|| format!("`{pair}` is not key=value"))?;
                if !allowed.contains(&key) {
                    return Err(format!("`{name}` takes no key `{key}` (keys: {})", allowed.join(", ")));
                }
                if pairs.iter().any(|(k, _)| *k == key) {
                    return Err(format!("key `{key}` given twice"));
                }
                if value.is_empty() {
                    return Err(format!("key `{key}` has no value"));
                }
                pairs.push((key, value));
            }
        }
        Ok(Params { name, pairs })
    }

    fn get(&self, key: &str) -> Option<&'a str> {
        self.pairs.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }

    fn integer<T: std::str::FromStr>(&self, key: &str, what: &str) -> Result<Option<T>, String> {
        self.get(key)
            .map(|v| {
                // `FromStr` of integers accepts a leading `+`: digits only.
                v.bytes()
                    .all(|b| b.is_ascii_digit())
                    .then(|| v.parse().ok())
                    .flatten()
                    .ok_or_else(|| format!("`{key}` must be {what}, got `{v}`"))
            })
            .transpose()
    }

    fn duration(&self, key: &str) -> Result<Option<Duration>, String> {
        self.get(key)
            .map(|v| {
                let d = parse_duration(v)?;
                if d > MAX_DELAY {
                    return Err(format!("`{key}` must be at most 1h, got `{v}`"));
                }
                Ok(d)
            })
            .transpose()
    }

    fn required_duration(&self, key: &str) -> Result<Duration, String> {
        self.duration(key)?
            .ok_or_else(|| format!("`{}` needs `{key}` (e.g. `{}:{key}=2s`)", self.name, self.name))
    }

    fn status_code(&self) -> Result<u16, String> {
        let code = self
            .integer::<u16>("code", "an HTTP status within 400..=599")?
            .unwrap_or(500);
        if (400..=599).contains(&code) {
            Ok(code)
        } else {
            Err(format!("`code` must be an HTTP status within 400..=599, got `{code}`"))
        }
    }

    fn retry_after(&self) -> Result<Option<RetryAfter>, String> {
        let seconds = self.integer::<u64>("retry_after", "whole seconds")?;
        let date = self.integer::<u64>("retry_after_date", "whole seconds")?;
        match (seconds, date) {
            (Some(_), Some(_)) => Err("give `retry_after` or `retry_after_date`, not both".to_string()),
            (Some(s), None) => Ok(Some(RetryAfter::Seconds(s))),
            (None, Some(s)) => Ok(Some(RetryAfter::DateIn(s))),
            (None, None) => Ok(None),
        }
    }

    fn after(&self) -> Result<Option<u32>, String> {
        self.integer::<u32>("after", "a token count")
    }

    fn first(&self) -> Result<Option<u64>, String> {
        match self.integer::<u64>("first", "a request count >= 1")? {
            Some(0) => Err("`first` must be a request count >= 1, got `0`".to_string()),
            n => Ok(n),
        }
    }
}

/// Parse one SPEC (`NAME` or `NAME:key=value,…`).
pub(super) fn parse_spec(text: &str) -> Result<FaultSpec, String> {
    if text.is_empty() {
        return Err("empty fault spec".to_string());
    }
    if text.len() > MAX_SPEC_LEN {
        return Err(format!("fault spec longer than {MAX_SPEC_LEN} bytes"));
    }
    let (name, params) = match text.split_once(':') {
        Some((name, params)) => (name, Some(params)),
        None => (text, None),
    };
    let allowed = keys_of(name).ok_or_else(|| format!("unknown fault `{name}` (known: {NAMES})"))?;
    let p = Params::parse(name, allowed, params)?;
    let fault = match name {
        "none" => Fault::Off,
        "status" => Fault::Status {
            code: p.status_code()?,
            retry_after: p.retry_after()?,
        },
        "reset" => Fault::Reset,
        "hang" => Fault::Hang,
        "slow_first_token" => Fault::SlowFirstToken {
            delay: p.required_duration("delay")?,
        },
        "cut" => Fault::Cut {
            after: p.after()?.unwrap_or(0),
        },
        "stall" => Fault::Stall {
            after: p.after()?.unwrap_or(0),
        },
        "no_done" => Fault::NoDone { after: p.after()? },
        "malformed" => Fault::Malformed {
            after: p.after()?.unwrap_or(0),
        },
        "context_length" => Fault::ContextLength,
        "content_filter" => Fault::ContentFilter,
        "reject_prefill" => Fault::RejectPrefill,
        "flap" => Fault::Flap {
            down: p.required_duration("down")?,
        },
        _ => unreachable!("keys_of knows every name"),
    };
    Ok(FaultSpec {
        text: text.to_string(),
        fault,
        first: p.first()?,
    })
}

/// Split a `--fault` argument into its model (if any) and its spec.
///
/// A spec's first `=` always follows a `:` (`status:code=429`), so an
/// argument whose text before the first `=` has no `:` is `MODEL=SPEC`.
/// A model whose name contains `:` cannot be targeted this way.
pub(super) fn parse_fault_arg(arg: &str) -> Result<(Option<String>, FaultSpec), String> {
    let scoped = arg.split_once('=').filter(|(before, _)| !before.contains(':'));
    let parsed = match scoped {
        Some(("", _)) => Err("empty model before `=`".to_string()),
        Some((model, spec)) => parse_spec(spec).map(|spec| (Some(model.to_string()), spec)),
        None => parse_spec(arg).map(|spec| (None, spec)),
    };
    parsed.map_err(|e| format!("invalid --fault `{arg}`: {e}"))
}

/// The specs of the command line: one for every request, one per model.
#[derive(Debug, Clone, Default)]
pub(super) struct CliFaults {
    global: Option<FaultSpec>,
    by_model: Vec<(String, FaultSpec)>,
}

impl CliFaults {
    /// Parse every `--fault`; at most one per model and one without.
    pub(super) fn parse(args: &[String]) -> Result<Self, String> {
        let mut faults = CliFaults::default();
        for arg in args {
            match parse_fault_arg(arg)? {
                (None, spec) => {
                    if let Some(other) = &faults.global {
                        return Err(format!(
                            "two --fault specs for every model: `{}` and `{}`",
                            other.text, spec.text
                        ));
                    }
                    faults.global = Some(spec);
                }
                (Some(model), spec) => {
                    if faults.by_model.iter().any(|(m, _)| *m == model) {
                        return Err(format!("two --fault specs for model `{model}`"));
                    }
                    faults.by_model.push((model, spec));
                }
            }
        }
        Ok(faults)
    }

    /// The spec for a request naming `model` (none for `GET /models`):
    /// the model's own, else the global one. No work when there are none.
    pub(super) fn select(&self, model: Option<&str>) -> Option<&FaultSpec> {
        if let Some(model) = model {
            if let Some((_, spec)) = self.by_model.iter().find(|(m, _)| m == model) {
                return Some(spec);
            }
        }
        self.global.as_ref()
    }

    fn specs(&self) -> impl Iterator<Item = &FaultSpec> {
        self.global.iter().chain(self.by_model.iter().map(|(_, spec)| spec))
    }
}

/// A spec's counters.
#[derive(Debug, Clone, Copy)]
struct Seen {
    /// Requests that carried the spec.
    requests: u64,
    /// When it was first seen (command-line specs: when the mock started or
    /// the stats were reset).
    since: Instant,
}

/// The counters of every spec seen, bounded by [`MAX_SPECS`].
#[derive(Debug)]
pub(super) struct FaultBook {
    cli: Vec<String>,
    seen: Mutex<HashMap<String, Seen>>,
}

impl FaultBook {
    /// A book that knows the command-line specs from now on.
    pub(super) fn new(cli: &CliFaults, now: Instant) -> Self {
        let book = FaultBook {
            cli: cli.specs().map(|spec| spec.text.clone()).collect(),
            seen: Mutex::new(HashMap::new()),
        };
        book.reset(now);
        book
    }

    /// Count a request carrying `spec` at `now`; whether the fault acts on it.
    /// `Err` when the book is full and `spec` is new.
    pub(super) fn record(&self, spec: &FaultSpec, now: Instant) -> Result<bool, String> {
        let mut seen = self.seen.lock();
        if seen.len() >= MAX_SPECS && !seen.contains_key(spec.text.as_str()) {
            return Err(format!(
                "weir mock counts at most {MAX_SPECS} distinct fault specs; POST /mock/stats/reset forgets them"
            ));
        }
        let entry = seen.entry(spec.text.clone()).or_insert(Seen {
            requests: 0,
            since: now,
        });
        entry.requests += 1;
        Ok(match spec.fault {
            Fault::Flap { down } => now.saturating_duration_since(entry.since) < down,
            _ => spec.first.is_none_or(|n| entry.requests <= n),
        })
    }

    /// `{SPEC: requests}` for `GET /mock/stats`.
    pub(super) fn to_json(&self) -> Value {
        let seen = self.seen.lock();
        let counts: Map<String, Value> = seen
            .iter()
            .map(|(text, s)| (text.clone(), Value::from(s.requests)))
            .collect();
        Value::Object(counts)
    }

    /// Forget every spec; the command-line ones start again at `now`.
    pub(super) fn reset(&self, now: Instant) {
        let mut seen = self.seen.lock();
        seen.clear();
        for text in &self.cli {
            seen.insert(
                text.clone(),
                Seen {
                    requests: 0,
                    since: now,
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fault(text: &str) -> Fault {
        parse_spec(text).unwrap_or_else(|e| panic!("{text}: {e}")).fault
    }

    fn error(text: &str) -> String {
        parse_spec(text)
            .err()
            .unwrap_or_else(|| panic!("{text} must not parse"))
    }

    #[test]
    fn every_name_parses() {
        assert_eq!(fault("none"), Fault::Off);
        assert_eq!(
            fault("status"),
            Fault::Status {
                code: 500,
                retry_after: None
            }
        );
        assert_eq!(
            fault("status:code=429,retry_after=1"),
            Fault::Status {
                code: 429,
                retry_after: Some(RetryAfter::Seconds(1))
            }
        );
        assert_eq!(
            fault("status:retry_after_date=30,code=503"),
            Fault::Status {
                code: 503,
                retry_after: Some(RetryAfter::DateIn(30))
            }
        );
        assert_eq!(fault("reset"), Fault::Reset);
        assert_eq!(fault("hang"), Fault::Hang);
        assert_eq!(
            fault("slow_first_token:delay=500ms"),
            Fault::SlowFirstToken {
                delay: Duration::from_millis(500)
            }
        );
        assert_eq!(fault("cut:after=3"), Fault::Cut { after: 3 });
        assert_eq!(fault("cut"), Fault::Cut { after: 0 });
        assert_eq!(fault("stall:after=2"), Fault::Stall { after: 2 });
        assert_eq!(fault("no_done"), Fault::NoDone { after: None });
        assert_eq!(fault("no_done:after=4"), Fault::NoDone { after: Some(4) });
        assert_eq!(fault("malformed:after=1"), Fault::Malformed { after: 1 });
        assert_eq!(fault("context_length"), Fault::ContextLength);
        assert_eq!(fault("content_filter"), Fault::ContentFilter);
        assert_eq!(fault("reject_prefill"), Fault::RejectPrefill);
        assert_eq!(
            fault("flap:down=2s"),
            Fault::Flap {
                down: Duration::from_secs(2)
            }
        );
        let spec = parse_spec("reset:first=2,id=run-7").expect("valid");
        assert_eq!((spec.first, spec.text.as_str()), (Some(2), "reset:first=2,id=run-7"));
    }

    #[test]
    fn bad_specs_say_why() {
        assert!(error("").contains("empty"));
        assert!(error("explode").contains("unknown fault `explode`"));
        assert!(error("Reset").contains("unknown fault"));
        assert!(error("status:").contains("at least one key=value"));
        assert!(error("status:code").contains("not key=value"));
        assert!(error("status:code=").contains("no value"));
        assert!(error("status:colour=red").contains("takes no key `colour`"));
        assert!(error("reset:after=1").contains("takes no key `after`"));
        assert!(error("flap:down=1s,first=1").contains("takes no key `first`"));
        assert!(error("status:code=500,code=502").contains("twice"));
        assert!(error("status:code=200").contains("400..=599"));
        assert!(error("status:code=600").contains("400..=599"));
        assert!(error("status:code=+500").contains("400..=599"));
        assert!(error("status:code=99999").contains("400..=599"));
        assert!(error("status:retry_after=1.5").contains("whole seconds"));
        assert!(error("status:retry_after=1,retry_after_date=1").contains("not both"));
        assert!(error("cut:after=-1").contains("token count"));
        assert!(error("cut:after=99999999999").contains("token count"));
        assert!(error("reset:first=0").contains(">= 1"));
        assert!(error("slow_first_token").contains("needs `delay`"));
        assert!(error("slow_first_token:delay=soon").contains("invalid duration"));
        assert!(error("slow_first_token:delay=2h").contains("at most 1h"));
        assert!(error("flap").contains("needs `down`"));
        assert!(error("cut:after=1,").contains("not key=value"));
        assert!(error(&format!("reset:id={}", "x".repeat(MAX_SPEC_LEN))).contains("longer"));
    }

    #[test]
    fn model_scope_needs_no_colon_before_the_first_equals() {
        let (model, spec) = parse_fault_arg("gpt-4o=status:code=429").expect("scoped");
        assert_eq!(model.as_deref(), Some("gpt-4o"));
        assert_eq!(spec.text, "status:code=429");
        let (model, spec) = parse_fault_arg("status:code=429").expect("global");
        assert_eq!((model, spec.text.as_str()), (None, "status:code=429"));
        let (model, spec) = parse_fault_arg("reset").expect("global");
        assert_eq!((model, spec.fault), (None, Fault::Reset));
        let (model, spec) = parse_fault_arg("m=reset").expect("scoped");
        assert_eq!((model.as_deref(), spec.fault), (Some("m"), Fault::Reset));
        // A model with a colon reads as a spec name: an error, not a silent global spec.
        assert!(parse_fault_arg("llama3:8b=reset").is_err());
        let e = parse_fault_arg("=reset").expect_err("empty model");
        assert!(
            e.contains("invalid --fault `=reset`") && e.contains("empty model"),
            "{e}"
        );
        assert!(parse_fault_arg("m=").is_err());
        assert!(parse_fault_arg("m=bogus")
            .expect_err("bad spec")
            .contains("unknown fault"));
    }

    #[test]
    fn per_model_spec_wins_over_the_global_one() {
        let cli = CliFaults::parse(&["reset".to_string(), "a=hang".to_string()]).expect("valid");
        assert_eq!(cli.select(Some("a")).map(|s| s.fault), Some(Fault::Hang));
        assert_eq!(cli.select(Some("b")).map(|s| s.fault), Some(Fault::Reset));
        assert_eq!(cli.select(None).map(|s| s.fault), Some(Fault::Reset));
        let scoped = CliFaults::parse(&["a=hang".to_string()]).expect("valid");
        assert_eq!(scoped.select(Some("b")), None);
        assert_eq!(scoped.select(None), None);
        assert!(CliFaults::parse(&["reset".to_string(), "hang".to_string()]).is_err());
        assert!(CliFaults::parse(&["a=reset".to_string(), "a=hang".to_string()]).is_err());
        assert!(CliFaults::parse(&["cut:after=x".to_string()])
            .expect_err("bad")
            .contains("cut:after=x"));
    }

    #[test]
    fn first_n_counts_per_spec_string() {
        let now = Instant::now();
        let book = FaultBook::new(&CliFaults::default(), now);
        let once = parse_spec("status:code=503,first=2").expect("valid");
        let reordered = parse_spec("status:first=2,code=503").expect("valid");
        let always = parse_spec("reset").expect("valid");
        assert_eq!(book.record(&once, now), Ok(true));
        assert_eq!(book.record(&once, now), Ok(true));
        assert_eq!(book.record(&once, now), Ok(false));
        // Another string is another counter, even for the same fault.
        assert_eq!(book.record(&reordered, now), Ok(true));
        for _ in 0..3 {
            assert_eq!(book.record(&always, now), Ok(true));
        }
        let counts = book.to_json();
        assert_eq!(counts["status:code=503,first=2"], 3);
        assert_eq!(counts["status:first=2,code=503"], 1);
        assert_eq!(counts["reset"], 3);
        book.reset(now);
        assert_eq!(book.to_json(), serde_json::json!({}));
        assert_eq!(book.record(&once, now), Ok(true));
    }

    #[test]
    fn flap_is_down_for_a_while_after_first_seen() {
        let start = Instant::now();
        let cli = CliFaults::parse(&["flap:down=10s".to_string()]).expect("valid");
        let book = FaultBook::new(&cli, start);
        let cli_flap = cli.select(None).expect("global").clone();
        let at = |secs| start + Duration::from_secs(secs);
        // The command-line spec counts from the start, not from its first request.
        assert_eq!(book.record(&cli_flap, at(9)), Ok(true));
        assert_eq!(book.record(&cli_flap, at(10)), Ok(false));
        let header_flap = parse_spec("flap:down=10s,id=h").expect("valid");
        assert_eq!(book.record(&header_flap, at(20)), Ok(true));
        assert_eq!(book.record(&header_flap, at(29)), Ok(true));
        assert_eq!(book.record(&header_flap, at(30)), Ok(false));
        assert_eq!(book.to_json()["flap:down=10s"], 2);
        // A reset restarts the command-line spec's window.
        book.reset(at(100));
        assert_eq!(book.to_json(), serde_json::json!({"flap:down=10s": 0}));
        assert_eq!(book.record(&cli_flap, at(105)), Ok(true));
    }

    #[test]
    fn the_book_is_bounded() {
        let now = Instant::now();
        let book = FaultBook::new(&CliFaults::default(), now);
        for i in 0..MAX_SPECS {
            let spec = parse_spec(&format!("reset:id={i}")).expect("valid");
            assert_eq!(book.record(&spec, now), Ok(true));
        }
        let known = parse_spec("reset:id=0").expect("valid");
        assert_eq!(book.record(&known, now), Ok(true));
        let new = parse_spec("reset:id=new").expect("valid");
        assert!(book.record(&new, now).expect_err("full").contains("at most"));
        book.reset(now);
        assert_eq!(book.record(&new, now), Ok(true));
    }

    #[test]
    fn retry_after_values() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(RetryAfter::Seconds(7).value(now), "7");
        assert_eq!(RetryAfter::DateIn(0).value(now), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(RetryAfter::DateIn(60).value(now), "Sun, 06 Nov 1994 08:50:37 GMT");
    }
}
