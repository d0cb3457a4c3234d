//! Overload control, measured in one run against the real (release) `weir`
//! and real `weir mock` providers on loopback:
//!
//! - `adaptive`: mock capacity 20 → 8 → 20 concurrent; weir's live limit,
//!   what the mock has in service and goodput, sampled every 250 ms
//!   (`target/bench/overload/limit.csv`; `benches/overload.sh` plots it).
//! - `priority`: a batch flood (10× the slots) plus a critical trickle:
//!   goodput, p50/p99 latency and refusals per class.
//! - `fair`: one key flooding at 10×, another at 20% of capacity.
//! - `retry`: 100 clients refused under overload retry once after their
//!   `Retry-After`; how many are admitted.
//!
//! `cargo bench --bench overload` runs it whole (about 70 s); under
//! `cargo test --benches` it runs each scenario for a moment, as a smoke test.

#[path = "../tests/support/mod.rs"]
mod support;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;

/// Seconds per phase, scaled down for the smoke run.
struct Scale {
    full: bool,
}

impl Scale {
    fn secs(&self, s: f64) -> Duration {
        Duration::from_secs_f64(if self.full { s } else { s / 10.0 })
    }
}

fn keys(list: &[(&str, &str)]) -> String {
    let list: Vec<(&str, &str, u32, bool)> = list.iter().map(|(n, p)| (*n, *p, 1, false)).collect();
    keys_file(&list)
}

fn gateway(mock: &Mock, provider: &str, keys: &str) -> Weir {
    keyed_gateway(mock, provider, keys)
}

fn ask(weir: &Weir, key: &str, stream: bool) -> Resp {
    ask_as(weir, key, stream, &[])
}

/// p-th percentile of `v` (sorted in place), in ms.
fn pct(v: &mut [Duration], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort();
    let i = ((v.len() as f64 * p / 100.0).ceil() as usize).clamp(1, v.len()) - 1;
    v[i].as_secs_f64() * 1000.0
}

/// What one class or key saw.
#[derive(Default)]
struct Tally {
    served: Vec<Duration>,
    refused: u64,
    other: u64,
}

impl Tally {
    fn add(&mut self, r: &Resp, took: Duration) {
        match r.status {
            200 => self.served.push(took),
            503 | 429 => self.refused += 1,
            _ => self.other += 1,
        }
    }

    fn row(&mut self, name: &str, secs: f64) -> String {
        let n = self.served.len();
        format!(
            "| {name} | {} | {n} | {:.1}/s | {} | {:.0} ms | {:.0} ms |",
            n as u64 + self.refused + self.other,
            n as f64 / secs,
            self.refused,
            pct(&mut self.served, 50.0),
            pct(&mut self.served, 99.0)
        )
    }
}

/// `n` closed-loop clients as `key` until `stop`, pausing `pause` after a refusal.
fn closed_loop(
    weir: &Arc<Weir>,
    key: &'static str,
    n: usize,
    pause: Duration,
    stop: &Arc<AtomicBool>,
    tally: &Arc<Mutex<Tally>>,
) -> Vec<std::thread::JoinHandle<()>> {
    (0..n)
        .map(|_| {
            let (weir, stop, tally) = (weir.clone(), stop.clone(), tally.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let r = ask(&weir, key, false);
                    tally.lock().unwrap().add(&r, t.elapsed());
                    if r.status != 200 {
                        std::thread::sleep(pause);
                    }
                }
            })
        })
        .collect()
}

/// `rate` requests per second as `key` for `secs` (each in its own thread).
fn open_loop(weir: &Arc<Weir>, key: &'static str, rate: f64, secs: Duration, tally: &Arc<Mutex<Tally>>) {
    let start = Instant::now();
    let mut handles = Vec::new();
    let mut i = 0u32;
    while start.elapsed() < secs {
        let (weir, tally) = (weir.clone(), tally.clone());
        handles.push(std::thread::spawn(move || {
            let t = Instant::now();
            let r = ask(&weir, key, false);
            tally.lock().unwrap().add(&r, t.elapsed());
        }));
        i += 1;
        let next = start + Duration::from_secs_f64(i as f64 / rate);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    for h in handles {
        h.join().unwrap();
    }
}

fn adaptive(scale: &Scale, out: &std::path::Path) {
    // 20 slots of ~0.25 s a request: 80 requests/s.
    let mock = spawn_capacity_mock(20);
    let weir = Arc::new(gateway(
        &mock,
        "    bulkhead: { max_concurrent: 40, queue: 400, queue_timeout: 30s }\n    adaptive: { floor: 2 }",
        &keys(&[("app", "standard")]),
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..60)
        .map(|_| {
            let (weir, stop, served, refused) = (weir.clone(), stop.clone(), served.clone(), refused.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let r = ask(&weir, "app", true);
                    if r.status == 200 { &served } else { &refused }.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let mut csv = String::from("t_s,capacity,limit,mock_in_service,mock_queued,served_per_s\n");
    let start = Instant::now();
    let mut phases = Vec::new();
    for capacity in [20u32, 8, 20] {
        mock_config(&mock, &format!(r#"{{"capacity": {capacity}}}"#));
        let phase_start = Instant::now();
        let served_at_start = served.load(Ordering::Relaxed);
        let (mut max_in_service, mut settled_served, mut settled_from) = (0u64, None, None);
        // What the mock was offered (in service + queued at it) once settled.
        let mut offered = Vec::new();
        while phase_start.elapsed() < scale.secs(10.0) {
            let before = served.load(Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(250));
            let after = served.load(Ordering::Relaxed);
            let limit = metric(&weir.metrics(), "weir_concurrency_limit", &[("provider", "llm")]).unwrap_or(-1.0);
            let stats = mock.stats();
            let in_service = stats["in_service"].as_u64().unwrap_or(0);
            let queued = stats["queued"].as_u64().unwrap_or(0);
            max_in_service = max_in_service.max(in_service);
            if settled_from.is_some() {
                offered.push(in_service + queued);
            }
            let _ = writeln!(
                csv,
                "{:.2},{capacity},{limit},{in_service},{queued},{:.1}",
                start.elapsed().as_secs_f64(),
                (after - before) as f64 * 4.0
            );
            // Goodput once the limit had 3 s to follow the change.
            if phase_start.elapsed() >= scale.secs(3.0) && settled_from.is_none() {
                settled_from = Some((Instant::now(), after));
            }
            if let Some((_, n0)) = settled_from {
                settled_served = Some(after - n0);
            }
        }
        let whole = (served.load(Ordering::Relaxed) - served_at_start) as f64 / phase_start.elapsed().as_secs_f64();
        let settled = settled_from.map(|(t, _)| settled_served.unwrap_or(0) as f64 / t.elapsed().as_secs_f64());
        let offered_max = offered.iter().max().copied().unwrap_or(0);
        let offered_mean = offered.iter().sum::<u64>() as f64 / offered.len().max(1) as f64;
        phases.push((capacity, max_in_service, offered_max, offered_mean, whole, settled));
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    std::fs::write(out.join("limit.csv"), &csv).unwrap();
    let stats = mock.stats();
    println!("\n## adaptive: mock capacity 20 → 8 → 20, 60 closed-loop stream clients\n");
    println!("| capacity | capacity req/s (nominal 0.25 s each) | max in service at the mock | offered to the mock after 3 s (in service + queued there): mean / max | goodput whole phase | goodput after 3 s |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for (capacity, max_in, offered_max, offered_mean, whole, settled) in phases {
        let nominal = capacity as f64 / 0.25;
        println!(
            "| {capacity} | {nominal:.0} | {max_in} | {offered_mean:.1} / {offered_max} | {whole:.1}/s ({:.0}%) | {} |",
            100.0 * whole / nominal,
            settled.map_or("-".into(), |s| format!("{s:.1}/s ({:.0}%)", 100.0 * s / nominal))
        );
    }
    println!(
        "\nrefused by weir: {}; mock 429s: {}; curve: {}",
        refused.load(Ordering::Relaxed),
        stats["rejected_429"],
        out.join("limit.csv").display()
    );
}

fn priority(scale: &Scale) {
    // 8 slots of 300 ms (~27/s); critical keeps 25% reserved.
    let mock = spawn_mock(&["--ttft", "300ms"]);
    let weir = Arc::new(gateway(
        &mock,
        "    bulkhead: { max_concurrent: 8, queue: 16, queue_timeout: 5s, classes: { critical: { reserved: 25% } } }",
        &keys(&[("bulk", "batch"), ("crit", "critical")]),
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let (batch, crit) = (
        Arc::new(Mutex::new(Tally::default())),
        Arc::new(Mutex::new(Tally::default())),
    );
    let flood_started = Instant::now();
    let flood = closed_loop(&weir, "bulk", 80, Duration::from_millis(100), &stop, &batch);
    std::thread::sleep(scale.secs(2.0));
    let secs = scale.secs(15.0);
    open_loop(&weir, "crit", 5.0, secs, &crit);
    stop.store(true, Ordering::Relaxed);
    for h in flood {
        h.join().unwrap();
    }
    let flood_secs = flood_started.elapsed().as_secs_f64();
    let m = weir.metrics();
    let wait_p99 = |class: &str| -> String {
        let labels = |le: &'static str| [("queue", "provider:llm"), ("class", class), ("le", le)];
        let count = metric(
            &m,
            "weir_queue_class_wait_seconds_count",
            &[("queue", "provider:llm"), ("class", class)],
        )
        .unwrap_or(0.0);
        for le in [
            "0.001", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "30",
        ] {
            if metric(&m, "weir_queue_class_wait_seconds_bucket", &labels(le)).unwrap_or(0.0) >= 0.99 * count {
                return format!("≤ {le} s (of {count} that queued)");
            }
        }
        "> 30 s".into()
    };
    let s = secs.as_secs_f64();
    println!("\n## priority: batch flood (80 closed-loop clients, 10× the 8 slots of 300 ms, {flood_secs:.0} s) + critical 5/s open-loop ({s:.0} s)\n");
    println!("| class | sent | served | goodput | refused | p50 | p99 |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    println!("{}", crit.lock().unwrap().row("critical", s));
    println!("{}", batch.lock().unwrap().row("batch", flood_secs));
    println!(
        "\nqueue wait p99 (weir's histogram): critical {}, batch {}",
        wait_p99("critical"),
        wait_p99("batch")
    );
}

fn fair(scale: &Scale) {
    // 4 slots of 200 ms = 20/s; heavy floods at 10×, light sends 4/s (20%).
    let mock = spawn_mock(&["--ttft", "200ms"]);
    let weir = Arc::new(gateway(
        &mock,
        "    bulkhead: { max_concurrent: 4, queue: 8, queue_timeout: 5s }",
        &keys(&[("heavy", "standard"), ("light", "standard")]),
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let (heavy, light) = (
        Arc::new(Mutex::new(Tally::default())),
        Arc::new(Mutex::new(Tally::default())),
    );
    let flood_started = Instant::now();
    let flood = closed_loop(&weir, "heavy", 40, Duration::from_millis(50), &stop, &heavy);
    std::thread::sleep(scale.secs(2.0));
    let secs = scale.secs(15.0);
    open_loop(&weir, "light", 4.0, secs, &light);
    stop.store(true, Ordering::Relaxed);
    for h in flood {
        h.join().unwrap();
    }
    let flood_secs = flood_started.elapsed().as_secs_f64();
    let s = secs.as_secs_f64();
    println!("\n## fair: two keys of weight 1, 4 slots of 200 ms — heavy at 10× (40 closed-loop, {flood_secs:.0} s), light at 4/s, 20% of capacity ({s:.0} s)\n");
    println!("| key | sent | served | goodput | refused | p50 | p99 |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    println!("{}", light.lock().unwrap().row("light", s));
    println!("{}", heavy.lock().unwrap().row("heavy", flood_secs));
}

fn retry(scale: &Scale) {
    // 4 slots of 500 ms = 8/s; 100 clients over 2.5 s (5× that).
    let mock = spawn_mock(&["--ttft", "500ms"]);
    let weir = Arc::new(gateway(
        &mock,
        "    bulkhead: { max_concurrent: 4, queue: 16, queue_timeout: 10s }",
        &keys(&[("app", "standard")]),
    ));
    let n = if scale.full { 100 } else { 30 };
    let clients: Vec<_> = (0..n)
        .map(|_| {
            let weir = weir.clone();
            let h = std::thread::spawn(move || {
                let r = ask(&weir, "app", false);
                if r.status != 503 {
                    return None;
                }
                let after: u64 = r.header("retry-after").and_then(|v| v.parse().ok()).unwrap_or(1);
                std::thread::sleep(Duration::from_secs(after));
                Some((after, ask(&weir, "app", false).status == 200))
            });
            std::thread::sleep(Duration::from_millis(25));
            h
        })
        .collect();
    let outcomes: Vec<(u64, bool)> = clients.into_iter().filter_map(|h| h.join().unwrap()).collect();
    let admitted = outcomes.iter().filter(|o| o.1).count();
    let max_after = outcomes.iter().map(|o| o.0).max().unwrap_or(0);
    println!("\n## retry: {n} clients at 40/s against 8/s; each refused one retries once after its Retry-After\n");
    println!(
        "refused {}, admitted on the retry {admitted} ({:.0}%), Retry-After from 1 to {max_after} s",
        outcomes.len(),
        100.0 * admitted as f64 / outcomes.len().max(1) as f64
    );
}

fn main() {
    let scale = Scale {
        full: std::env::args().any(|a| a == "--bench"),
    };
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench/overload");
    std::fs::create_dir_all(&out).unwrap();
    let only = std::env::var("OVERLOAD_ONLY").unwrap_or_default();
    let run = |name: &str| only.is_empty() || only.split(',').any(|o| o == name);
    if run("adaptive") {
        adaptive(&scale, &out);
    }
    if run("priority") {
        priority(&scale);
    }
    if run("fair") {
        fair(&scale);
    }
    if run("retry") {
        retry(&scale);
    }
}
