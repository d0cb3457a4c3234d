//! `weir mock --capacity`: slots, a bounded queue, 429 past both, latency
//! past a knee, limits changed live — the real binary over loopback.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

const CHAT: &str = "/v1/chat/completions";

/// A field of `GET /mock/stats` as a number.
fn stat(mock: &Mock, name: &str) -> u64 {
    mock.stats()[name]
        .as_u64()
        .unwrap_or_else(|| panic!("no `{name}` in stats"))
}

/// Poll the stats until `name` is `want`; panic with the stats otherwise.
fn stat_becomes(mock: &Mock, name: &str, want: u64) {
    let reached = eventually(Duration::from_secs(5), || stat(mock, name) == want);
    assert!(reached, "`{name}` never became {want}: {}", mock.stats());
}

fn chat_url(mock: &Mock) -> String {
    format!("{}/chat/completions", mock.url())
}

/// Send a chat request on a raw connection (to hang up on it at will).
fn open(port: u16, stream: bool, headers: &[(&str, &str)]) -> TcpStream {
    let body = chat("m", stream);
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut head = format!(
        "POST {CHAT} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&body).unwrap();
    s
}

/// Read until the first SSE event has arrived.
fn read_first_event(s: &mut TcpStream) {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !seen.windows(5).any(|w| w == b"data:") {
        let n = s.read(&mut buf).expect("the stream starts");
        assert!(n > 0, "closed before the first event: {seen:?}");
        seen.extend_from_slice(&buf[..n]);
    }
}

#[test]
fn capacity_four_serves_four_at_a_time_and_queues_the_rest() {
    let mock = spawn_mock(&["--capacity", "4", "--ttft", "1s"]);
    let url = chat_url(&mock);
    let requests = std::thread::spawn(move || concurrent(12, move |_| post(&url, &chat("m", false), &[])));
    // While the first four are served, the other eight wait in the queue (default 16).
    stat_becomes(&mock, "queued", 8);
    assert_eq!(stat(&mock, "in_service"), 4, "{}", mock.stats());
    let answers = requests.join().unwrap();
    for r in &answers {
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.header("x-ratelimit-limit-requests"), Some("4"));
        let remaining: u64 = r.header("x-ratelimit-remaining-requests").unwrap().parse().unwrap();
        assert!(remaining < 4, "this request holds a slot: {remaining}");
    }
    let stats = mock.stats();
    assert_eq!(stats["max_in_service"], 4, "{stats}");
    assert_eq!(
        (
            &stats["in_service"],
            &stats["queued"],
            &stats["rejected_429"],
            &stats["capacity"]
        ),
        (&Value::from(0), &Value::from(0), &Value::from(0), &Value::from(4)),
        "{stats}"
    );
    assert_eq!(stats["completions"], 12);
}

#[test]
fn past_slots_and_queue_the_mock_answers_429_with_retry_after() {
    let mock = spawn_mock(&["--capacity", "2", "--queue", "2", "--ttft", "2s"]);
    let url = chat_url(&mock);
    let answers = concurrent(8, move |_| post(&url, &chat("m", false), &[]));
    let refused: Vec<_> = answers.iter().filter(|r| r.status == 429).collect();
    let served = answers.iter().filter(|r| r.status == 200).count();
    assert_eq!(
        (served, refused.len()),
        (4, 4),
        "2 in service + 2 queued, the rest refused"
    );
    for r in &refused {
        let error = &r.json()["error"];
        assert_eq!(error["code"], "rate_limit_exceeded", "{}", r.body);
        assert_eq!(error["type"], "requests", "{}", r.body);
        // Nothing was measured when they came: 1 s.
        assert_eq!(r.header("retry-after"), Some("1"));
        assert_eq!(r.header("x-ratelimit-limit-requests"), Some("2"));
        assert_eq!(r.header("x-ratelimit-remaining-requests"), Some("0"));
    }
    assert_eq!(stat(&mock, "rejected_429"), 4);
    assert_eq!(stat(&mock, "max_in_service"), 2);

    // Now each slot has been held about 2 s: with 2 waiting, a refused
    // request's turn would come after (2 + 1) × 2 s / 2 slots = 3 s.
    let url = chat_url(&mock);
    let answers = concurrent(6, move |_| post(&url, &chat("m", false), &[]));
    let waits: Vec<u64> = answers
        .iter()
        .filter(|r| r.status == 429)
        .map(|r| r.header("retry-after").unwrap().parse().unwrap())
        .collect();
    assert_eq!(waits.len(), 2, "{answers:?}");
    for wait in waits {
        assert!((3..=30).contains(&wait), "Retry-After from the service time: {wait}");
    }
    post(&format!("http://127.0.0.1:{}/mock/stats/reset", mock.port), b"", &[]);
    assert_eq!((stat(&mock, "rejected_429"), stat(&mock, "max_in_service")), (0, 0));
}

#[test]
fn capacity_changes_live() {
    let mock = spawn_mock(&["--capacity", "4", "--ttft", "1500ms"]);
    // Four in service (held until the client leaves), then the capacity drops to 1.
    let held: Vec<_> = (0..4)
        .map(|_| open(mock.port, false, &[("x-mock-fault", "hang")]))
        .collect();
    stat_becomes(&mock, "in_service", 4);
    mock_config(&mock, r#"{"capacity": 1}"#);
    let config = get(&format!("http://127.0.0.1:{}/mock/config", mock.port), &[]).json();
    assert_eq!(
        (&config["capacity"], &config["queue"]),
        (&Value::from(1), &Value::from(4))
    );
    // Those in service stay; a newcomer waits until fewer than 1 are.
    let late = open(mock.port, false, &[]);
    stat_becomes(&mock, "queued", 1);
    drop(held);
    stat_becomes(&mock, "queued", 0);
    assert_eq!(stat(&mock, "in_service"), 1, "{}", mock.stats());
    drop(late);
    stat_becomes(&mock, "in_service", 0);

    // At capacity 1, five requests at once go one by one.
    post(&format!("http://127.0.0.1:{}/mock/stats/reset", mock.port), b"", &[]);
    mock_config(&mock, r#"{"ttft_ms": 300}"#);
    let url = chat_url(&mock);
    let answers = concurrent(5, move |_| post(&url, &chat("m", false), &[]));
    assert!(answers.iter().all(|r| r.status == 200), "{answers:?}");
    assert_eq!(stat(&mock, "max_in_service"), 1);

    // Unlimited again: all at once.
    mock_config(&mock, r#"{"capacity": 0}"#);
    post(&format!("http://127.0.0.1:{}/mock/stats/reset", mock.port), b"", &[]);
    let url = chat_url(&mock);
    let answers = concurrent(5, move |_| post(&url, &chat("m", false), &[]));
    assert!(answers.iter().all(|r| r.status == 200), "{answers:?}");
    assert!(answers.iter().all(|r| r.header("x-ratelimit-limit-requests").is_none()));
    assert_eq!(stat(&mock, "max_in_service"), 5);

    // A bad value is refused and changes nothing.
    let r = post(
        &format!("http://127.0.0.1:{}/mock/config", mock.port),
        br#"{"capacity": -3}"#,
        &[],
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(stat(&mock, "capacity"), 0);
}

#[test]
fn clients_that_leave_free_their_slots() {
    let mock = spawn_mock(&[
        "--capacity",
        "2",
        "--queue",
        "1",
        "--tokens-per-sec",
        "20",
        "--completion-tokens",
        "400",
    ]);
    // Mid-stream: two slow streams (20 s each), left after their first event.
    let mut streams: Vec<_> = (0..2).map(|_| open(mock.port, true, &[])).collect();
    for s in &mut streams {
        read_first_event(s);
    }
    assert_eq!(stat(&mock, "in_service"), 2);
    // While queued.
    let queued = open(mock.port, true, &[]);
    stat_becomes(&mock, "queued", 1);
    drop(queued);
    stat_becomes(&mock, "queued", 0);
    drop(streams);
    stat_becomes(&mock, "in_service", 0);

    // Before the first token, and held by a fault.
    mock_config(&mock, r#"{"ttft_ms": 20000}"#);
    let waiting = open(mock.port, true, &[]);
    let hung = open(mock.port, false, &[("x-mock-fault", "hang")]);
    stat_becomes(&mock, "in_service", 2);
    drop((waiting, hung));
    stat_becomes(&mock, "in_service", 0);

    // Every slot came back: two more are served at once.
    mock_config(&mock, r#"{"ttft_ms": 0, "tokens_per_sec": 0}"#);
    let url = chat_url(&mock);
    let answers = concurrent(2, move |_| post(&url, &chat("m", true), &[]));
    assert!(answers.iter().all(|r| r.status == 200), "{answers:?}");
    assert_eq!(stat(&mock, "rejected_429"), 0);
    assert_eq!(stat(&mock, "in_service"), 0);
}

#[test]
fn latency_grows_past_the_knee() {
    // Knee 2, slope 1: with L in service, 1 + (L − 2) / 2 times slower.
    let mock = spawn_mock(&["--capacity", "16", "--knee", "2", "--ttft", "300ms"]);
    let time = || {
        let start = Instant::now();
        let r = post(&chat_url(&mock), &chat("m", false), &[]);
        assert_eq!(r.status, 200, "{}", r.body);
        start.elapsed().as_secs_f64()
    };
    let alone = time();
    // Five held in service: the sixth runs at 1 + (6 − 2) / 2 = 3 times the ttft.
    let held: Vec<_> = (0..5)
        .map(|_| open(mock.port, false, &[("x-mock-fault", "hang")]))
        .collect();
    stat_becomes(&mock, "in_service", 5);
    let loaded = time();
    let ratio = loaded / alone;
    assert!(
        (2.0..=6.0).contains(&ratio),
        "expected about 3×: {loaded:.3}s vs {alone:.3}s"
    );
    drop(held);
    stat_becomes(&mock, "in_service", 0);
    // At the knee, no slower.
    let held = open(mock.port, false, &[("x-mock-fault", "hang")]);
    stat_becomes(&mock, "in_service", 1);
    let at_knee = time();
    assert!(at_knee / alone < 1.8, "{at_knee:.3}s vs {alone:.3}s");
    drop(held);
}
