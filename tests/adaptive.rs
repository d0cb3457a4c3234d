//! End-to-end: a provider's adaptive concurrency limit follows a real
//! `weir mock --capacity` down when its capacity drops and up when it returns.

mod support;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::*;

fn config(mock: &Mock) -> String {
    format!(
        r#"
server: {{ listen: ["127.0.0.1:{{PORT}}"], threads: 2 }}
admin: {{ listen: "127.0.0.1:{{ADMIN}}" }}
providers:
  slow:
    url: {url}
    models: [m]
    bulkhead: {{ max_concurrent: 24, queue: 200, queue_timeout: 20s }}
    adaptive: {{ floor: 2 }}
routes:
  - name: chat
    providers: [slow]
"#,
        url = mock.url()
    )
}

fn limit(weir: &Weir) -> f64 {
    metric(&weir.metrics(), "weir_concurrency_limit", &[("provider", "slow")]).expect("the limit gauge")
}

/// Poll the limit until `ok` holds (bounded); the last value seen.
fn limit_until(weir: &Weir, secs: u64, ok: impl Fn(f64) -> bool) -> f64 {
    let mut last = 0.0;
    eventually(Duration::from_secs(secs), || {
        last = limit(weir);
        ok(last)
    });
    last
}

/// Clients sending streamed chats back to back until `stop`; counts answers by status.
fn clients(weir: &Weir, n: usize, stop: &Arc<AtomicBool>) -> (Vec<std::thread::JoinHandle<()>>, Arc<[AtomicU64; 2]>) {
    let counts: Arc<[AtomicU64; 2]> = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let url = weir.url("/v1/chat/completions");
    let handles = (0..n)
        .map(|_| {
            let (url, stop, counts) = (url.clone(), stop.clone(), counts.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let r = post(&url, &chat("m", true), &[]);
                    counts[usize::from(r.status != 200)].fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    (handles, counts)
}

#[test]
fn limit_follows_mock_capacity_down_and_back_up() {
    let mock = spawn_capacity_mock(20);
    let weir = spawn_weir(&config(&mock), &[]);
    assert_eq!(limit(&weir), 24.0, "starts at the ceiling");
    let status = get(&weir.admin("/status"), &[]).json();
    assert_eq!(status["providers"]["slow"]["adaptive"], true, "{status}");

    let stop = Arc::new(AtomicBool::new(false));
    let (handles, counts) = clients(&weir, 40, &stop);
    // The limit every 250 ms, printed at the end (`--nocapture`) as the curve.
    let trace = {
        let (url, stop) = (weir.admin("/metrics"), stop.clone());
        std::thread::spawn(move || {
            let mut curve = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                curve.push(metric(
                    &get(&url, &[]).body,
                    "weir_concurrency_limit",
                    &[("provider", "slow")],
                ));
                std::thread::sleep(Duration::from_millis(250));
            }
            curve
        })
    };
    std::thread::sleep(Duration::from_secs(3));

    // Capacity drops: the limit follows it down.
    mock_config(&mock, r#"{"capacity": 8}"#);
    let down = limit_until(&weir, 15, |l| l <= 12.0);
    assert!(down <= 12.0, "limit did not fall toward 8: {down}");
    // Settled: weir no longer keeps a queue at the provider.
    std::thread::sleep(Duration::from_secs(2));
    let before = mock.stats();
    let queued: Vec<u64> = (0..20)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(100));
            mock.stats()["queued"].as_u64().unwrap()
        })
        .collect();
    let mean = queued.iter().sum::<u64>() as f64 / queued.len() as f64;
    assert!(mean <= 3.0, "weir keeps overrunning the provider: queued {queued:?}");
    let after = mock.stats();
    assert_eq!(
        before["rejected_429"], after["rejected_429"],
        "no 429s once the limit settled"
    );
    let status = get(&weir.admin("/status"), &[]).json();
    let live = status["providers"]["slow"]["limit"].as_u64().unwrap();
    assert!(live <= 12, "/status shows the live limit: {status}");

    // Capacity returns: the limit rises again.
    mock_config(&mock, r#"{"capacity": 20}"#);
    let up = limit_until(&weir, 20, |l| l >= 14.0);
    assert!(up >= 14.0, "limit did not recover: {up}");

    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().unwrap();
    }
    let curve: Vec<String> = trace
        .join()
        .unwrap()
        .iter()
        .map(|v| format!("{}", v.unwrap_or(-1.0)))
        .collect();
    eprintln!("limit every 250 ms: {}", curve.join(" "));
    let (ok, failed) = (counts[0].load(Ordering::Relaxed), counts[1].load(Ordering::Relaxed));
    assert!(ok > 100, "served {ok}");
    assert_eq!(failed, 0, "every client request was answered 200 ({ok} were)");
    let m = weir.metrics();
    let decreases: f64 = ["latency", "remaining", "rate_limited", "error"]
        .iter()
        .filter_map(|r| {
            metric(
                &m,
                "weir_concurrency_decisions_total",
                &[("provider", "slow"), ("reason", r)],
            )
        })
        .sum();
    assert!(decreases >= 1.0, "decisions counted: {m}");
    assert!(
        metric(
            &m,
            "weir_concurrency_decisions_total",
            &[("provider", "slow"), ("reason", "increase")]
        )
        .unwrap_or(0.0)
            >= 1.0
    );
    assert!(
        metric(
            &m,
            "weir_concurrency_latency_seconds",
            &[("provider", "slow"), ("signal", "ttft"), ("kind", "long")]
        )
        .unwrap_or(0.0)
            > 0.0
    );
}
