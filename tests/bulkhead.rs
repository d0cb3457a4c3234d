//! End-to-end: a provider's bulkhead admits, queues and refuses as SPEC says.

mod support;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};
use support::*;

fn config(mock: &Mock, bulkhead: &str) -> String {
    format!(
        r#"
server: {{ listen: ["127.0.0.1:{{PORT}}"], threads: 2 }}
admin: {{ listen: "127.0.0.1:{{ADMIN}}" }}
providers:
  slow:
    url: {url}
    models: [m]
    bulkhead: {bulkhead}
routes:
  - name: chat
    providers: [slow]
"#,
        url = mock.url()
    )
}

#[test]
fn full_queue_refuses_at_once_with_retry_after_and_queue_name() {
    let mock = spawn_mock(&["--ttft", "500ms"]);
    let weir = spawn_weir(
        &config(&mock, "{ max_concurrent: 2, queue: 2, queue_timeout: 5s }"),
        &[],
    );
    let barrier = Arc::new(Barrier::new(10));
    let url = weir.url("/v1/chat/completions");
    let handles: Vec<_> = (0..10)
        .map(|_| {
            let (barrier, url) = (barrier.clone(), url.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let started = Instant::now();
                let r = post(&url, &chat("m", false), &[]);
                (r, started.elapsed())
            })
        })
        .collect();
    let results: Vec<(Resp, Duration)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let ok = results.iter().filter(|(r, _)| r.status == 200).count();
    let refused: Vec<&(Resp, Duration)> = results.iter().filter(|(r, _)| r.status == 503).collect();
    assert_eq!(ok, 4, "2 in progress + 2 queued succeed");
    assert_eq!(refused.len(), 6);
    for (r, took) in refused {
        assert_eq!(r.error_type(), "queue_full");
        assert_eq!(r.header("x-weir-queue"), Some("provider:slow"));
        assert!(r.header("retry-after").unwrap().parse::<u64>().unwrap() >= 1);
        assert!(r.json()["error"]["message"].as_str().unwrap().contains("provider:slow"));
        // Refused before even the first admitted request could finish.
        assert!(*took < Duration::from_millis(500), "refusal took {took:?}");
    }
    let m = weir.metrics();
    assert_eq!(
        metric(
            &m,
            "weir_queue_rejected_total",
            &[("queue", "provider:slow"), ("reason", "full")]
        ),
        Some(6.0)
    );
    assert_eq!(
        metric(&m, "weir_queue_capacity", &[("queue", "provider:slow")]),
        Some(2.0)
    );
}

#[test]
fn waiter_past_queue_timeout_gets_queue_timeout() {
    let mock = spawn_mock(&["--ttft", "1500ms"]);
    let weir = spawn_weir(
        &config(&mock, "{ max_concurrent: 1, queue: 1, queue_timeout: 200ms }"),
        &[],
    );
    let url = weir.url("/v1/chat/completions");
    let u = url.clone();
    let first = std::thread::spawn(move || post(&u, &chat("m", false), &[]));
    assert!(eventually(Duration::from_secs(5), || mock.stats()["in_flight"] == 1));
    let started = Instant::now();
    let r = post(&url, &chat("m", false), &[]);
    assert_eq!((r.status, r.error_type().as_str()), (503, "queue_timeout"));
    assert_eq!(r.header("x-weir-queue"), Some("provider:slow"));
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(first.join().unwrap().status, 200);
    let m = weir.metrics();
    assert_eq!(
        metric(
            &m,
            "weir_queue_rejected_total",
            &[("queue", "provider:slow"), ("reason", "timeout")]
        ),
        Some(1.0)
    );
}

#[test]
fn client_that_disconnects_while_queued_frees_its_place() {
    let mock = spawn_mock(&["--ttft", "2s"]);
    let weir = spawn_weir(
        &config(&mock, "{ max_concurrent: 1, queue: 1, queue_timeout: 10s }"),
        &[],
    );
    let url = weir.url("/v1/chat/completions");
    let u = url.clone();
    let first = std::thread::spawn(move || post(&u, &chat("m", false), &[]));
    assert!(eventually(Duration::from_secs(5), || mock.stats()["in_flight"] == 1));

    let depth = || metric(&weir.metrics(), "weir_queue_depth", &[("queue", "provider:slow")]).unwrap_or(-1.0);
    let queued = raw_request(weir.port, "POST", "/v1/chat/completions", &chat("m", false));
    assert!(
        eventually(Duration::from_secs(5), || depth() == 1.0),
        "the raw request is queued"
    );
    drop(queued);
    let left = Instant::now();
    assert!(
        eventually(Duration::from_secs(2), || depth() == 0.0),
        "depth drops when the client leaves"
    );
    assert!(left.elapsed() < Duration::from_secs(1), "at once, not after a timeout");

    // Its place is free: another request queues (not queue_full) and is served.
    let r = post(&url, &chat("m", false), &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(first.join().unwrap().status, 200);
    assert_eq!(
        metric(
            &weir.metrics(),
            "weir_queue_rejected_total",
            &[("queue", "provider:slow"), ("reason", "full")]
        ),
        Some(0.0)
    );
}
