//! End-to-end: the budget plugin and costs, with real weir, `weir mock`
//! providers and a real redis-server.
//!
//! Arithmetic the tests rely on: the chat body of `support::chat` ("hello
//! there", one message) is 9 prompt tokens to weir's reservation (2 BPE
//! tokens + 4 per message + 3) and 5 to the mock's usage (2 words + 3 per
//! message); the mock generates 16 tokens, or `max_tokens` if fewer. So a
//! request with `max_tokens: 16` reserves 25 tokens and uses 21.

mod support;
use std::time::Duration;
use support::*;
use weir::plugins::api_key::digest_hex;

const RESERVED: u64 = 25;
const USED: u64 = 21;

fn keys_file() -> String {
    format!(
        "keys:\n  - {{ name: alice, sha256: {}, group: team }}\n  - {{ name: bob, sha256: {}, group: team }}\n  - {{ name: carol, sha256: {} }}\n",
        digest_hex("sk-alice"),
        digest_hex("sk-bob"),
        digest_hex("sk-carol"),
    )
}

/// A gateway with keys and a budget plugin (`budget` settings) in front of
/// one mock provider `p` serving `m`, with `prices` (a flow map or "").
fn gateway(mock: &Mock, prices: &str, budget: &str) -> String {
    let prices = if prices.is_empty() {
        String::new()
    } else {
        format!(", prices: {prices}")
    };
    format!(
        r#"
server: {{ listen: ["127.0.0.1:{{PORT}}"], threads: 2 }}
admin: {{ listen: "127.0.0.1:{{ADMIN}}" }}
providers:
  p: {{ url: "{url}", models: [m]{prices} }}
plugins:
  keys: {{ type: api_key, keys_file: keys.yaml }}
  budget: {budget}
routes:
  - {{ name: chat, plugins: [keys, budget], providers: [p], retry: {{ attempts: 1 }} }}
"#,
        url = mock.url()
    )
}

fn body(max_tokens: u64, stream: bool) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "model": "m", "stream": stream, "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": "hello there"}]
    }))
    .unwrap()
}

fn ask(weir: &Weir, key: &str, max_tokens: u64) -> Resp {
    post(
        &weir.url("/v1/chat/completions"),
        &body(max_tokens, false),
        &[("authorization", &format!("Bearer {key}"))],
    )
}

/// A budget's entry for `key` in `/status` (spent and reserved).
fn balance(weir: &Weir, budget: &str, key: &str) -> Option<serde_json::Value> {
    let s = get(&weir.admin("/status"), &[]).json();
    let budgets = s["plugins"]["budget"]["state"]["budgets"].as_array()?.clone();
    let b = budgets.iter().find(|b| b["name"] == budget)?;
    b["keys"].as_array()?.iter().find(|k| k["key"] == key).cloned()
}

/// Wait until `key`'s ledger in `budget` has settled: nothing reserved and
/// `tokens` spent. Returns the balance last seen.
fn settled(weir: &Weir, budget: &str, key: &str, tokens: u64) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    eventually(Duration::from_secs(5), || {
        last = balance(weir, budget, key).unwrap_or_default();
        last["reserved"]["tokens"] == 0 && last["spent"]["tokens"] == tokens
    });
    assert_eq!(last["reserved"]["tokens"], 0, "{last}");
    assert_eq!(last["spent"]["tokens"], tokens, "{last}");
    last
}

fn header_u64(r: &Resp, name: &str) -> u64 {
    r.header(name)
        .unwrap_or_else(|| panic!("no {name}: {:?}", r.headers))
        .parse()
        .unwrap()
}

#[test]
fn tokens_budget_settles_on_usage_then_refuses_with_insufficient_quota() {
    let mock = spawn_mock(&[]);
    let budget = "{ type: budget, limits: [{ name: key-hourly, per: key, window: 1h, tokens: 100 }] }";
    let weir = spawn_weir(&gateway(&mock, "", budget), &[("keys.yaml", &keys_file())]);

    let r = ask(&weir, "sk-alice", 16);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["usage"]["total_tokens"], USED);
    assert_eq!(header_u64(&r, "x-weir-budget-remaining-tokens"), 100 - RESERVED);
    assert!(r.header("x-weir-budget-remaining-cost").is_none(), "no cost limit");
    settled(&weir, "key-hourly", "alice", USED);

    // Remaining = limit - real usage - this request's reservation.
    let r = ask(&weir, "sk-alice", 16);
    assert_eq!(header_u64(&r, "x-weir-budget-remaining-tokens"), 100 - USED - RESERVED);
    settled(&weir, "key-hourly", "alice", 2 * USED);
    for n in 3..=4 {
        assert_eq!(ask(&weir, "sk-alice", 16).status, 200);
        settled(&weir, "key-hourly", "alice", n * USED);
    }

    // 84 spent: 25 more does not fit.
    let requests = mock.requests();
    let r = ask(&weir, "sk-alice", 16);
    assert_eq!(r.status, 429, "{}", r.body);
    let e = r.json()["error"].clone();
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("insufficient_quota"), Some("insufficient_quota"))
    );
    assert!(e["message"].as_str().unwrap().contains("key-hourly"), "{e}");
    assert_eq!(r.header("x-weir-budget"), Some("key-hourly"));
    assert_eq!(header_u64(&r, "x-weir-budget-remaining-tokens"), 100 - 4 * USED);
    // The spend leaves the window 59 to 60 minutes after it was settled.
    let retry_after = header_u64(&r, "retry-after");
    assert!((3500..=3600).contains(&retry_after), "retry-after {retry_after}");
    assert_eq!(mock.requests(), requests, "a refusal never reaches the provider");

    // A smaller request still fits (9 + 5 <= 16), and a key of its own is untouched.
    assert_eq!(ask(&weir, "sk-alice", 5).status, 200);
    let r = ask(&weir, "sk-bob", 16);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(header_u64(&r, "x-weir-budget-remaining-tokens"), 100 - RESERVED);

    // A request over the whole budget never fits: said so, with the param to change.
    let r = ask(&weir, "sk-carol", 1000);
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"]["param"], "max_tokens");
    assert!(r.body.contains("more than budget 'key-hourly'"), "{}", r.body);
    let refused = metric(
        &weir.metrics(),
        "weir_budget_refused_total",
        &[("plugin", "budget"), ("budget", "key-hourly")],
    );
    assert_eq!(refused, Some(2.0));
}

#[test]
fn cost_budget_prices_usage_and_counts_cost_metrics() {
    let mock = spawn_mock(&[]);
    // 0.001 per prompt token, 0.002 per completion token: a request
    // reserves 9 × 0.001 + 16 × 0.002 (+ 2 billionths for rounding) and
    // costs 5 × 0.001 + 16 × 0.002 = 0.037.
    let prices = "{ m: { input: 1000, output: 2000 } }";
    let budget = "{ type: budget, limits: [{ name: team-money, per: group, window: 30d, cost: 0.1 }] }";
    let weir = spawn_weir(&gateway(&mock, prices, budget), &[("keys.yaml", &keys_file())]);

    let r = ask(&weir, "sk-alice", 16);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-weir-budget-remaining-cost"), Some("0.058999998"));
    assert!(r.header("x-weir-budget-remaining-tokens").is_none(), "no token limit");
    let b = settled(&weir, "team-money", "team", USED);
    assert_eq!(b["spent"]["cost"], 0.037);

    // Shared by the group: bob sees alice's spend.
    let r = ask(&weir, "sk-bob", 16);
    assert_eq!(r.header("x-weir-budget-remaining-cost"), Some("0.021999998"));
    settled(&weir, "team-money", "team", 2 * USED);
    let r = ask(&weir, "sk-alice", 16);
    assert_eq!(r.status, 429, "0.074 + 0.041 > 0.1: {}", r.body);
    assert_eq!(r.error_type(), "insufficient_quota");
    assert_eq!(r.header("x-weir-budget"), Some("team-money"));
    assert_eq!(r.header("x-weir-budget-remaining-cost"), Some("0.026"));
    assert!(r.body.contains("group 'team'"), "{}", r.body);
    let retry_after = header_u64(&r, "retry-after");
    assert!(retry_after > 29 * 86_400, "retry-after {retry_after}");
    // carol has no group: no group budget applies to her.
    let r = ask(&weir, "sk-carol", 16);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.header("x-weir-budget-remaining-cost").is_none());

    let labels = |who| [("key", who), ("model", "m"), ("provider", "p")];
    assert_eq!(
        metric_settles(&weir, "weir_cost_total", &labels("alice"), 0.037),
        Some(0.037)
    );
    assert_eq!(
        metric_settles(&weir, "weir_cost_total", &labels("bob"), 0.037),
        Some(0.037)
    );
    let m = weir.metrics();
    let tokens = |who, kind| {
        metric(
            &m,
            "weir_tokens_total",
            &[("key", who), ("model", "m"), ("provider", "p"), ("kind", kind)],
        )
    };
    assert_eq!(tokens("alice", "prompt"), Some(5.0));
    assert_eq!(tokens("alice", "completion"), Some(16.0));
    assert_eq!(tokens("carol", "completion"), Some(16.0));
    assert_eq!(tokens("alice", "cached"), None, "no prompt cache reported");
}

#[test]
fn a_stream_settles_its_usage_and_the_client_sees_no_usage_chunk() {
    let mock = spawn_mock(&[]);
    let budget = "{ type: budget, limits: [{ name: everyone, per: global, window: 1m, tokens: 1000 }] }";
    let weir = spawn_weir(&gateway(&mock, "", budget), &[("keys.yaml", &keys_file())]);
    let r = post(
        &weir.url("/v1/chat/completions"),
        &body(16, true),
        &[("authorization", "Bearer sk-alice")],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("[DONE]"), "{}", r.body);
    assert!(!r.body.contains("\"usage\":{"), "usage chunk stripped: {}", r.body);
    assert_eq!(header_u64(&r, "x-weir-budget-remaining-tokens"), 1000 - RESERVED);
    settled(&weir, "everyone", "", USED);
}

#[test]
fn a_request_the_provider_refuses_releases_its_reservation() {
    let mock = spawn_mock(&["--fault", "status:code=500"]);
    let budget = "{ type: budget, limits: [{ name: key-hourly, per: key, window: 1h, tokens: 100 }] }";
    let weir = spawn_weir(&gateway(&mock, "", budget), &[("keys.yaml", &keys_file())]);
    for _ in 0..10 {
        let r = ask(&weir, "sk-alice", 16);
        assert_eq!(r.status, 500, "{}", r.body);
        // Ten requests of 25 against 100: each gave its reservation back.
        settled(&weir, "key-hourly", "alice", 0);
    }
    assert_eq!(mock.requests(), 10);
}

#[test]
fn per_group_limit_is_shared_by_its_keys() {
    let mock = spawn_mock(&[]);
    let budget = "{ type: budget, limits: [{ name: per-key, per: key, window: 1h, tokens: 1000 }, \
                  { name: team, per: group, window: 1h, tokens: 60 }] }";
    let weir = spawn_weir(&gateway(&mock, "", budget), &[("keys.yaml", &keys_file())]);
    let r = ask(&weir, "sk-alice", 16);
    assert_eq!(
        header_u64(&r, "x-weir-budget-remaining-tokens"),
        60 - RESERVED,
        "the tightest"
    );
    settled(&weir, "team", "team", USED);
    assert_eq!(ask(&weir, "sk-bob", 16).status, 200);
    settled(&weir, "team", "team", 2 * USED);
    // 42 spent by the team: 25 more is over 60, for either key.
    for key in ["sk-alice", "sk-bob"] {
        let r = ask(&weir, key, 16);
        assert_eq!(r.status, 429, "{}", r.body);
        assert_eq!(r.header("x-weir-budget"), Some("team"));
    }
    // Refused on the group budget, the key budgets took nothing either.
    settled(&weir, "per-key", "alice", USED);
    settled(&weir, "per-key", "bob", USED);
    let r = ask(&weir, "sk-carol", 16);
    assert_eq!(r.status, 200, "no group, no group budget: {}", r.body);
    assert_eq!(header_u64(&r, "x-weir-budget-remaining-tokens"), 1000 - RESERVED);
}

#[test]
fn a_reload_that_changes_a_limit_keeps_what_was_spent() {
    let mock = spawn_mock(&[]);
    let budget =
        |limit| format!("{{ type: budget, limits: [{{ name: daily, per: key, window: 1d, tokens: {limit} }}] }}");
    let weir = spawn_weir(&gateway(&mock, "", &budget(100)), &[("keys.yaml", &keys_file())]);
    assert_eq!(ask(&weir, "sk-alice", 16).status, 200);
    settled(&weir, "daily", "alice", USED);
    let text = std::fs::read_to_string(&weir.config).unwrap();
    std::fs::write(&weir.config, text.replace("tokens: 100 }", "tokens: 200 }")).unwrap();
    let r = post(&weir.admin("/reload"), b"", &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    settled(&weir, "daily", "alice", USED);
    let r = ask(&weir, "sk-alice", 16);
    assert_eq!(header_u64(&r, "x-weir-budget-remaining-tokens"), 200 - USED - RESERVED);
}

fn redis_budget(redis: &Redis, limit: u64, policy: &str) -> String {
    format!(
        "{{ type: budget, store: \"{}\", on_store_error: {policy}, \
         limits: [{{ name: shared, per: global, window: 1h, tokens: {limit} }}] }}",
        redis.url()
    )
}

#[test]
fn two_instances_sharing_redis_never_exceed_the_limit_together() {
    let redis = spawn_redis();
    let mock = spawn_mock(&["--ttft", "100ms"]);
    let cfg = gateway(&mock, "", &redis_budget(&redis, 500, "fail_closed"));
    let files = [("keys.yaml", keys_file())];
    let files: Vec<(&str, &str)> = files.iter().map(|(a, b)| (*a, b.as_str())).collect();
    let (a, b) = (spawn_weir(&cfg, &files), spawn_weir(&cfg, &files));
    let urls = [a.url("/v1/chat/completions"), b.url("/v1/chat/completions")];
    let mut ok = 0u64;
    for _wave in 0..3 {
        let urls = urls.clone();
        let rs = concurrent(60, move |i| {
            post(&urls[i % 2], &body(16, false), &[("authorization", "Bearer sk-alice")])
        });
        for r in &rs {
            match r.status {
                200 => ok += 1,
                429 => assert_eq!(r.error_type(), "insufficient_quota", "{}", r.body),
                s => panic!("unexpected {s}: {}", r.body),
            }
        }
        // Every settlement of the wave is in before the next starts.
        let spent = ok * USED;
        for w in [&a, &b] {
            settled(w, "shared", "", spent);
        }
    }
    let spent = ok * USED;
    assert!(spent <= 500, "{ok} answers spent {spent} of 500");
    // 500 / 25 in flight at once, then what the settled room lets in.
    assert!(ok >= 20, "only {ok} admitted");
    assert_eq!(
        mock.requests(),
        ok,
        "every admitted request reached the provider, no other"
    );
}

#[test]
fn redis_down_fail_open_admits_uncounted_and_fail_closed_refuses() {
    let redis = spawn_redis();
    let mock = spawn_mock(&[]);
    let keys = keys_file();
    let files = [("keys.yaml", keys.as_str())];
    let open = spawn_weir(&gateway(&mock, "", &redis_budget(&redis, 1000, "fail_open")), &files);
    let closed = spawn_weir(&gateway(&mock, "", &redis_budget(&redis, 1000, "fail_closed")), &files);
    for w in [&open, &closed] {
        let r = ask(w, "sk-alice", 16);
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(r.header("x-weir-budget-remaining-tokens").is_some());
    }
    drop(redis);
    let r = ask(&open, "sk-alice", 16);
    assert_eq!(r.status, 200, "fail_open admits: {}", r.body);
    assert!(
        r.header("x-weir-budget-remaining-tokens").is_none(),
        "nothing counted, nothing to show"
    );
    let r = ask(&closed, "sk-alice", 16);
    assert_eq!(r.status, 503, "fail_closed refuses: {}", r.body);
    assert_eq!(r.json()["error"]["code"], "store_unavailable");
    assert!(r.header("retry-after").is_some());
    for w in [&open, &closed] {
        let errors = metric(&w.metrics(), "weir_budget_store_errors_total", &[("plugin", "budget")]);
        assert!(errors >= Some(1.0), "{errors:?}");
    }
    let s = get(&open.admin("/status"), &[]).json();
    assert!(
        s["plugins"]["budget"]["state"]["budgets"][0]["error"].is_string(),
        "{s}"
    );
}

#[test]
fn config_errors_are_located() {
    let check = |cfg: &str| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("keys.yaml"), "keys: []\n").unwrap();
        let path = dir.path().join("weir.yaml");
        std::fs::write(&path, cfg).unwrap();
        let out = std::process::Command::new(WEIR)
            .args(["check", "-c"])
            .arg(&path)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
        (
            out.status.code(),
            text.replace(&dir.path().display().to_string(), "DIR"),
        )
    };
    let cfg = |prices: &str, limit: &str| {
        format!(
            "server: {{ listen: [\"127.0.0.1:8080\"] }}\nproviders:\n  p:\n    url: http://127.0.0.1:9/v1\n    models: [m]\n    prices:\n{prices}\nplugins:\n  budget:\n    type: budget\n    limits:\n{limit}\nroutes:\n  - {{ name: chat, plugins: [budget], providers: [p] }}\n"
        )
    };
    let good_price = "      m: { input: 2.5, output: 10, cached_input: 1.25 }";
    let good_limit = "      - { name: daily, per: key, window: 1d, tokens: 1000, cost: 20 }";
    assert_eq!(
        check(&cfg(good_price, good_limit)).0,
        Some(0),
        "{}",
        check(&cfg(good_price, good_limit)).1
    );
    let cases = [
        (
            cfg("      nope: { input: 1, output: 1 }", good_limit),
            "DIR/weir.yaml:7: providers.p.prices.nope: the provider does not serve 'nope'",
        ),
        (
            cfg("      m: { input: 1, output: -1 }", good_limit),
            "DIR/weir.yaml:7: providers.p.prices.m.output: -1: a price must be a number >= 0",
        ),
        (
            cfg(good_price, "      - { name: daily, per: key, window: 0s, tokens: 10 }"),
            "DIR/weir.yaml:12: plugins.budget.limits[0].window: '0s': a budget's window is at least 1s",
        ),
        (
            cfg(good_price, "      - { name: daily, per: key, window: fortnight, tokens: 10 }"),
            "DIR/weir.yaml:12: plugins.budget.limits[0].window: invalid duration 'fortnight'",
        ),
        (
            cfg(good_price, "      - { name: daily, per: team, window: 1d, tokens: 10 }"),
            "DIR/weir.yaml:12: plugins.budget.limits[0].per: unknown variant `team`",
        ),
        (
            cfg(good_price, "      - { name: daily, per: key, window: 1d }"),
            "DIR/weir.yaml:12: plugins.budget.limits[0]: set `tokens`, `cost` or both",
        ),
        (
            cfg(
                good_price,
                "      - { name: a, per: key, window: 1d, tokens: 1 }\n      - { name: a, per: global, window: 1m, cost: 1 }",
            ),
            "DIR/weir.yaml:13: plugins.budget.limits[1].name: duplicate name 'a' (also limits[0])",
        ),
    ];
    for (cfg, want) in cases {
        let (code, out) = check(&cfg);
        assert_eq!(code, Some(1), "{cfg}\n{out}");
        assert!(out.contains(want), "want {want}\ngot {out}");
    }
}

/// The Redis script and the memory store are one algorithm: the same
/// sequence of decisions gets the same answers and leaves the same balances.
#[test]
fn redis_script_and_memory_store_agree() {
    use weir::plugins::budget::ledger::{Amount, Limit, Window};
    use weir::plugins::budget::store::{Decision, Entry, MemoryStore, RedisStore};
    let redis = spawn_redis();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let remote = RedisStore::new(&redis.url(), "t:", weir::plugins::budget::store::DEFAULT_TIMEOUT).unwrap();
    let local = MemoryStore::new(100);
    let window = Window::of(Duration::from_secs(3600));
    let entry = |k: &str, tokens, cost| Entry {
        key: k.to_string(),
        window,
        limit: Limit { tokens, cost },
    };
    let lines = [
        vec![entry("a", Some(300), None), entry("g", Some(1000), Some(5_000))],
        vec![entry("b", None, Some(900)), entry("g", Some(1000), Some(5_000))],
    ];
    let mut held = Vec::new();
    // A fixed pseudo-random walk: reserve or settle, on either line.
    let mut x: u64 = 7;
    for step in 0..300 {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let line = &lines[(x >> 33) as usize % 2];
        if (x >> 40).is_multiple_of(3) && !held.is_empty() {
            let (l, at_local, at_remote, need): (usize, u64, u64, Amount) =
                held.remove((x >> 20) as usize % held.len());
            let used = Amount {
                tokens: need.tokens * ((x >> 50) % 101) / 100,
                cost: need.cost * ((x >> 45) % 101) / 100,
            };
            local.settle(&lines[l], at_local, need, used).unwrap();
            rt.block_on(remote.settle(&lines[l], at_remote, need, used)).unwrap();
            continue;
        }
        let need = Amount {
            tokens: 1 + (x >> 24) % 60,
            cost: (x >> 30) % 400,
        };
        let a = local.reserve(line, need).unwrap();
        let b = rt.block_on(remote.reserve(line, need)).unwrap();
        match (a, b) {
            (Decision::Admitted { at: la, standing: sa }, Decision::Admitted { at: ra, standing: sb }) => {
                assert_eq!(sa, sb, "step {step}");
                held.push(((x >> 33) as usize % 2, la, ra, need));
            }
            // Which limit binds longest may differ: the two clocks cut
            // sub-buckets at different instants.
            (Decision::Refused(sa), Decision::Refused(sb)) => assert_eq!(sa.room, sb.room, "step {step}"),
            other => panic!("step {step}: memory and redis disagree: {other:?}"),
        }
    }
    let all: Vec<Entry> = ["a", "b", "g"].iter().map(|k| entry(k, None, None)).collect();
    let remote_balances = rt.block_on(remote.balances(&all)).unwrap();
    for b in remote_balances {
        let (local_balances, _) = local.balances(&b.key, 1);
        let l = local_balances.iter().find(|l| l.key.is_empty()).unwrap();
        assert_eq!((l.spent, l.reserved), (b.spent, b.reserved), "ledger {}", b.key);
    }
}

/// Money is kept in billionths: a large budget's amounts pass 2^53, where
/// Lua's doubles stop being exact. Redis keeps them exact anyway.
#[test]
fn redis_amounts_stay_exact_past_two_to_the_53() {
    use weir::plugins::budget::ledger::{Amount, Limit, Window};
    use weir::plugins::budget::store::{Decision, Entry, RedisStore};
    let redis = spawn_redis();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = RedisStore::new(&redis.url(), "x:", weir::plugins::budget::store::DEFAULT_TIMEOUT).unwrap();
    let e = [Entry {
        key: "big".into(),
        window: Window::of(Duration::from_secs(86_400)),
        limit: Limit {
            tokens: None,
            cost: Some(4_000_000_000_000_000_000),
        },
    }];
    let need = Amount {
        tokens: 3,
        cost: (1 << 60) + 1,
    };
    let spent = Amount {
        tokens: 1,
        cost: (1 << 55) + 3,
    };
    let Decision::Admitted { at, .. } = rt.block_on(store.reserve(&e, need)).unwrap() else {
        panic!("fits")
    };
    let Decision::Admitted { at: at2, .. } = rt.block_on(store.reserve(&e, need)).unwrap() else {
        panic!("fits")
    };
    rt.block_on(store.settle(&e, at, need, spent)).unwrap();
    let b = &rt.block_on(store.balances(&e)).unwrap()[0];
    assert_eq!((b.spent, b.reserved), (spent, need), "one settled, one still reserved");
    rt.block_on(store.settle(&e, at2, need, Amount::default())).unwrap();
    let b = &rt.block_on(store.balances(&e)).unwrap()[0];
    assert_eq!((b.spent, b.reserved), (spent, Amount::default()));
}
