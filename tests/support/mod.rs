//! Shared helpers for end-to-end tests: spawn the real `weir` binary (as a
//! gateway or as `weir mock`), pick free loopback ports, wait for readiness,
//! and speak HTTP to them.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const WEIR: &str = env!("CARGO_BIN_EXE_weir");

/// A free TCP port on 127.0.0.1, for a process a test is about to start.
///
/// Not the kernel's pick (`bind(0)`): that comes from the ephemeral range,
/// where every outgoing connection and every other test binary's pick lands
/// too, so a port could be taken between this check and the child's bind —
/// and a readiness probe would then find the wrong process. A random port
/// below the ephemeral range (32768 and up on Linux), never handed out
/// twice by this process and claimed machine-wide ([`claim_port`]) so no
/// other test process hands it out either.
pub fn free_port() -> u16 {
    use std::collections::HashSet;
    use std::sync::Mutex;
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    loop {
        let port = 10_000 + rand::random::<u16>() % 22_000;
        let mut given = GIVEN.lock().unwrap();
        let given = given.get_or_insert_with(HashSet::new);
        if given.contains(&port) || !claim_port(port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.insert(port);
            return port;
        }
    }
}

/// Claims `port` for this process across every test process on the machine
/// (two test binaries run at once, e.g. by two checkouts, must not both
/// start a child on it): a file per port under the temp dir names its
/// owner's pid; a claim by a process that has exited is taken over.
fn claim_port(port: u16) -> bool {
    use std::io::Write as _;
    let dir = std::env::temp_dir().join("weir-test-ports");
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(port.to_string());
    let me = std::process::id();
    let open = || std::fs::OpenOptions::new().write(true).create_new(true).open(&path);
    let file = match open() {
        Ok(f) => f,
        Err(_) => {
            let owner: Option<i32> = std::fs::read_to_string(&path).ok().and_then(|s| s.trim().parse().ok());
            // No pid yet: its owner is writing it.
            let alive = owner.is_none_or(|pid| pid as u32 == me || unsafe { libc::kill(pid, 0) } == 0);
            if alive {
                return false;
            }
            let _ = std::fs::remove_file(&path);
            match open() {
                Ok(f) => f,
                Err(_) => return false,
            }
        }
    };
    let mut file = file;
    file.write_all(me.to_string().as_bytes()).is_ok()
}

/// A child process killed when dropped.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Wait until something accepts connections on `port`.
pub fn wait_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("{what} did not listen on port {port} within 20s");
}

/// Run `cmd` (stdout discarded) until it exits, `limit` at most: its exit
/// code and stderr. Panics, naming `what`, if it is still running then.
pub fn run_until_exit(cmd: &mut Command, limit: Duration, what: &str) -> (Option<i32>, String) {
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let mut stderr = String::new();
            let _ = child.stderr.take().unwrap().read_to_string(&mut stderr);
            panic!("{what}: still running after {limit:?}; stderr:\n{stderr}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    (status.code(), stderr)
}

/// A running `weir mock`.
pub struct Mock {
    pub port: u16,
    pub proc: Proc,
}

impl Mock {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }

    /// `GET /mock/stats` as JSON.
    pub fn stats(&self) -> serde_json::Value {
        let r = get(&format!("http://127.0.0.1:{}/mock/stats", self.port), &[]);
        serde_json::from_str(&r.body).unwrap()
    }

    /// Requests the mock has received.
    pub fn requests(&self) -> u64 {
        self.stats()["requests"].as_u64().unwrap()
    }
}

/// Start `weir mock` with extra arguments.
pub fn spawn_mock(args: &[&str]) -> Mock {
    spawn_mock_on(free_port(), args)
}

/// A `weir mock` with `capacity` slots (and its default queue) whose
/// answers take ~0.25 s: 50 ms to the first token, then 20 tokens at 100/s.
pub fn spawn_capacity_mock(capacity: u32) -> Mock {
    let capacity = capacity.to_string();
    spawn_mock(&[
        "--capacity",
        &capacity,
        "--ttft",
        "50ms",
        "--tokens-per-sec",
        "100",
        "--completion-tokens",
        "20",
    ])
}

/// Start `weir mock` on a given port (e.g. to bring a provider back).
pub fn spawn_mock_on(port: u16, args: &[&str]) -> Mock {
    let listen = format!("127.0.0.1:{port}");
    let child = Command::new(WEIR)
        .args(["mock", "--listen", &listen])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn weir mock");
    let proc = Proc {
        child,
        name: format!("mock {listen}"),
    };
    wait_port(port, "weir mock");
    Mock { port, proc }
}

/// A running gateway.
pub struct Weir {
    pub port: u16,
    pub admin_port: u16,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub proc: Proc,
}

impl Weir {
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
    pub fn admin(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin_port)
    }
    pub fn metrics(&self) -> String {
        get(&self.admin("/metrics"), &[]).body
    }
}

/// Write `config` (with `{PORT}` and `{ADMIN}` replaced) to a temp dir, plus
/// any `files` beside it, and start `weir serve` on it.
pub fn spawn_weir(config: &str, files: &[(&str, &str)]) -> Weir {
    start_weir(config, files, None)
}

/// Like [`spawn_weir`], with weir's log written to the returned file (for
/// tests that assert on it, e.g. that nothing panicked).
pub fn spawn_weir_logged(config: &str, files: &[(&str, &str)]) -> (Weir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("weir.log");
    let weir = start_weir(config, files, Some((dir, log.clone())));
    (weir, log)
}

fn start_weir(config: &str, files: &[(&str, &str)], log: Option<(tempfile::TempDir, PathBuf)>) -> Weir {
    let (dir, stderr) = match log {
        Some((dir, path)) => (dir, Stdio::from(std::fs::File::create(path).unwrap())),
        None => (tempfile::tempdir().unwrap(), Stdio::inherit()),
    };
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let (port, admin_port) = (free_port(), free_port());
    let text = config
        .replace("{PORT}", &port.to_string())
        .replace("{ADMIN}", &admin_port.to_string());
    let path = dir.path().join("weir.yaml");
    std::fs::write(&path, text).unwrap();
    let child = Command::new(WEIR)
        .args(["serve", "-c"])
        .arg(&path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawn weir serve");
    let proc = Proc {
        child,
        name: "weir".into(),
    };
    wait_port(port, "weir");
    wait_port(admin_port, "weir admin");
    Weir {
        port,
        admin_port,
        dir,
        config: path,
        proc,
    }
}

/// A client connection with a tiny receive buffer (set before connecting,
/// so the window it advertises stays small): a client that reads slowly.
pub fn tiny_window_client(port: u16) -> TcpStream {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket calls on a descriptor this function owns until it
    // is handed to TcpStream.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0, "socket");
        let size: libc::c_int = 4096;
        let r = libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            &size as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        assert_eq!(r, 0, "SO_RCVBUF");
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes([127, 0, 0, 1]),
            },
            sin_zero: [0; 8],
        };
        let r = libc::connect(
            fd,
            &addr as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        assert_eq!(r, 0, "connect");
        TcpStream::from_raw_fd(fd)
    }
}

/// A response, whatever its status.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
    /// The OpenAI error envelope's `type`.
    pub fn error_type(&self) -> String {
        self.json()["error"]["type"].as_str().unwrap_or_default().to_string()
    }
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new().timeout(Duration::from_secs(30)).build()
}

fn into_resp(r: Result<ureq::Response, ureq::Error>) -> Resp {
    let r = match r {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("request failed: {e}"),
    };
    let status = r.status();
    let headers = r
        .headers_names()
        .iter()
        .map(|n| (n.clone(), r.header(n).unwrap_or("").to_string()))
        .collect();
    let mut body = String::new();
    r.into_reader().read_to_string(&mut body).unwrap();
    Resp { status, headers, body }
}

pub fn get(url: &str, headers: &[(&str, &str)]) -> Resp {
    let mut req = agent().get(url);
    for (k, v) in headers {
        req = req.set(k, v);
    }
    into_resp(req.call())
}

pub fn post(url: &str, body: &[u8], headers: &[(&str, &str)]) -> Resp {
    let mut req = agent().post(url).set("content-type", "application/json");
    for (k, v) in headers {
        req = req.set(k, v);
    }
    into_resp(req.send_bytes(body))
}

/// A chat request body for `model`.
pub fn chat(model: &str, stream: bool) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "model": model,
        "stream": stream,
        "messages": [{"role": "user", "content": "hello there"}]
    }))
    .unwrap()
}

/// Send a raw HTTP/1.1 request and return the connection (for tests that
/// read slowly or disconnect).
pub fn raw_request(port: u16, method: &str, path: &str, body: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    s
}

/// The value of a metric sample, e.g. `metric(&m, "weir_queue_depth", &[("queue", "provider:a")])`.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        let (n, rest) = series.split_once('{').unwrap_or((series, ""));
        if n != name {
            return None;
        }
        if labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))) {
            value.parse().ok()
        } else {
            None
        }
    })
}

/// Poll `f` until it holds or `timeout` passes.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

/// The repository root (for conf/ files).
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A running `redis-server` on a free loopback port, no persistence.
pub struct Redis {
    pub port: u16,
    pub proc: Proc,
}

impl Redis {
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

pub fn spawn_redis() -> Redis {
    let port = free_port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server must be installed (./dev test installs it)");
    let proc = Proc {
        child,
        name: "redis".into(),
    };
    wait_port(port, "redis-server");
    Redis { port, proc }
}

/// Change a running mock's behaviour (`POST /mock/config`).
pub fn mock_config(mock: &Mock, json: &str) {
    let r = post(
        &format!("http://127.0.0.1:{}/mock/config", mock.port),
        json.as_bytes(),
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.body);
}

/// Run `n` requests at once (released together) and collect the responses.
pub fn concurrent(n: usize, f: impl Fn(usize) -> Resp + Send + Sync + 'static) -> Vec<Resp> {
    let f = std::sync::Arc::new(f);
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let (f, barrier) = (f.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                f(i)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

/// A metric's value once it reaches `expected` (metrics recorded in the log
/// phase land just after the response), or the last value seen.
pub fn metric_settles(weir: &Weir, name: &str, labels: &[(&str, &str)], expected: f64) -> Option<f64> {
    let mut last = None;
    eventually(Duration::from_secs(3), || {
        last = metric(&weir.metrics(), name, labels);
        last == Some(expected)
    });
    last
}

/// Path of a wasm filter built from `plugins/` (`./dev test` builds them).
pub fn wasm_module(name: &str) -> String {
    let p = repo().join(format!("plugins/{name}/{name}.wasm"));
    assert!(
        p.exists(),
        "{} is missing: run `bash plugins/build.sh` (./dev test does)",
        p.display()
    );
    p.display().to_string()
}

/// A keys file for the api_key plugin: (name, priority, weight, may pick
/// its class by header); each key is `sk-<name>`.
pub fn keys_file(list: &[(&str, &str, u32, bool)]) -> String {
    let mut s = String::from("keys:\n");
    for (name, priority, weight, header) in list {
        s += &format!(
            "  - name: {name}\n    sha256: {}\n    priority: {priority}\n    weight: {weight}\n    priority_header: {header}\n",
            weir::plugins::api_key::digest_hex(&format!("sk-{name}"))
        );
    }
    s
}

/// A gateway with one provider `llm` (model `m`) at `mock`, `provider`
/// (YAML lines, indented 4) added to its entry, behind an api_key plugin
/// with `keys` as its keys file.
pub fn keyed_gateway(mock: &Mock, provider: &str, keys: &str) -> Weir {
    let config = format!(
        r#"
server: {{ listen: ["127.0.0.1:{{PORT}}"], threads: 2 }}
admin: {{ listen: "127.0.0.1:{{ADMIN}}" }}
providers:
  llm:
    url: {url}
    models: [m]
{provider}
plugins:
  auth: {{ type: api_key, keys_file: keys.yaml }}
routes:
  - name: chat
    plugins: [auth]
    providers: [llm]
"#,
        url = mock.url()
    );
    spawn_weir(&config, &[("keys.yaml", keys)])
}

/// A chat request (`model: m`) with `sk-<key>` as its API key.
pub fn ask_as(weir: &Weir, key: &str, stream: bool, extra: &[(&str, &str)]) -> Resp {
    let auth = format!("Bearer sk-{key}");
    let mut headers = vec![("authorization", auth.as_str())];
    headers.extend_from_slice(extra);
    post(&weir.url("/v1/chat/completions"), &chat("m", stream), &headers)
}

/// Run `tests/sdk/<script>` with `args` on the test venv's python (the
/// official SDKs, selenium); what it printed, as JSON. Fails loudly when the
/// venv is missing (`./dev test` makes it) or the script fails.
pub fn run_py(script: &str, args: &[String]) -> serde_json::Value {
    let python = repo().join("target/py/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run ./dev test, which installs the test SDKs (tests/sdk/requirements.txt)",
        python.display()
    );
    let out = Command::new(python)
        .arg(repo().join("tests/sdk").join(script))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {script}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{script} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{script} printed no JSON ({e}): {stdout}"))
}
