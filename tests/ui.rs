//! The status page (`GET /ui` on the admin listener), in a real headless
//! Chromium (selenium, `tests/sdk/ui_check.py`): while a provider's bulkhead
//! is saturated the page shows that queue FULL with a non-zero oldest wait,
//! and the browser logs no error. The page needs the admin token like the
//! API: a browser is asked for it (Basic), an API client sends it as Bearer.

mod support;

use std::io::Read;
use std::time::Duration;
use support::*;

fn config(mock: &Mock, token: &str) -> String {
    format!(
        r#"
server: {{ listen: ["127.0.0.1:{{PORT}}"], threads: 2 }}
admin: {{ listen: "127.0.0.1:{{ADMIN}}"{token} }}
providers:
  slow: {{ url: "{}", models: [m], bulkhead: {{ max_concurrent: 2, queue: 3, queue_timeout: 30s }} }}
plugins:
  breaker: {{ type: circuit_breaker }}
routes:
  - {{ name: chat, plugins: [breaker], providers: [slow] }}
"#,
        mock.url()
    )
}

#[test]
fn the_status_page_shows_a_saturated_queue_as_full_in_a_real_browser() {
    assert!(
        std::path::Path::new("/usr/bin/chromedriver").exists(),
        "chromium-driver is missing: run ./dev test, which installs chromium and chromium-driver"
    );
    // Answers take 4 s: two in service, three queued, the rest refused.
    let mock = spawn_mock(&["--ttft", "4s"]);
    let w = spawn_weir(&config(&mock, ""), &[]);
    let load: Vec<_> = (0..6)
        .map(|_| {
            let url = w.url("/v1/chat/completions");
            std::thread::spawn(move || post(&url, &chat("m", false), &[]).status)
        })
        .collect();
    assert!(
        eventually(Duration::from_secs(5), || {
            let s = get(&w.admin("/status"), &[]).json();
            s["providers"]["slow"]["bulkhead"]["waiting"] == 3 || s.to_string().contains("\"queued\":3")
        }),
        "the queue filled: {}",
        get(&w.admin("/status"), &[]).body
    );
    let page = run_py("ui_check.py", &[w.admin("/ui"), "provider:slow".into()]);
    println!("{page:#}");
    assert_eq!(page["full"], true, "{page}");
    assert!(page["oldest_ms"].as_f64().is_some_and(|ms| ms > 0.0), "{page}");
    assert!(
        page["full_since"].as_str().is_some_and(|t| t.starts_with("full since")),
        "{page}"
    );
    assert_eq!(page["console_errors"], serde_json::json!([]), "{page}");
    assert_eq!(page["banner"], "", "{page}");
    let statuses: Vec<u16> = load.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 5, "{statuses:?}");
}

#[test]
fn the_status_page_needs_the_admin_token_like_the_api() {
    let mock = spawn_mock(&[]);
    let w = spawn_weir(&config(&mock, ", token: s3cret"), &[]);
    // Unauthenticated: a Bearer and a Basic challenge, as two headers.
    let mut s = raw_request(w.admin_port, "GET", "/ui", b"");
    let mut head = String::new();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.read_to_string(&mut head);
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    let challenges: Vec<&str> = head
        .lines()
        .filter(|l| l.to_ascii_lowercase().starts_with("www-authenticate:"))
        .collect();
    assert_eq!(challenges.len(), 2, "{head}");
    assert!(
        challenges.iter().any(|c| c.contains("Basic realm=\"weir admin\"")),
        "{head}"
    );
    // A browser's Basic credentials (the token as password), or Bearer.
    for auth in ["Basic YWRtaW46czNjcmV0", "Bearer s3cret"] {
        let r = get(&w.admin("/ui"), &[("authorization", auth)]);
        assert_eq!(r.status, 200, "{auth}");
        assert!(r.header("content-type").unwrap().starts_with("text/html"));
        // Self-contained: nothing is loaded from elsewhere.
        assert!(r.body.contains("/status"));
        let body = r.body.replace('\'', "\"").replace(' ', "");
        for external in [
            "src=\"http",
            "src=\"//",
            "href=\"http",
            "href=\"//",
            "url(http",
            "url(\"http",
            "@import",
        ] {
            assert!(
                !body.contains(external),
                "the page loads something from elsewhere: {external}"
            );
        }
        assert_eq!(get(&w.admin("/status"), &[("authorization", auth)]).status, 200);
    }
    assert_eq!(
        get(&w.admin("/ui"), &[("authorization", "Basic YWRtaW46d3Jvbmc=")]).status,
        401
    );
}
