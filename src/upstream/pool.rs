//! Idle provider connections, kept for the next request to the same peer.
//!
//! Pingora's connector pools idle connections too, but on every release it
//! spawns a task that watches the idle connection, and on every reuse it
//! waits for that task to hand the connection back and asks the kernel who
//! the socket's peer is (`getpeername`, against a reused descriptor). On
//! this machine that was about 5 µs of a ~50 µs proxied request. Here a
//! pool owns its idle connections outright (a descriptor cannot be reused
//! while it is open), so none of that is needed:
//! - a connection is taken newest first, after its idle deadline and a
//!   non-blocking read (no system call when nothing arrived: tokio knows
//!   the socket's readiness) show it was not closed or written to;
//! - one task per pool sweeps, every second, connections that expired or
//!   that their provider closed, so none is left half-closed for long.
//!
//! Connections still come from Pingora's `TransportConnector` (TCP, TLS).

use parking_lot::Mutex;
use pingora_core::protocols::Stream;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

/// How often a pool drops expired and closed connections.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Idle connections by peer (`Peer::reuse_hash`).
pub struct Pool {
    idle: Mutex<Idles>,
    /// At most this many idle connections, to all peers together.
    cap: usize,
    /// The sweeper is running.
    sweeping: AtomicBool,
}

#[derive(Default)]
struct Idles {
    /// Oldest first.
    by_peer: HashMap<u64, VecDeque<Idle>>,
}

impl Idles {
    /// Idle connections to all peers (a handful of peers: counted, not kept).
    fn total(&self) -> usize {
        self.by_peer.values().map(VecDeque::len).sum()
    }

    /// Make room for one: the oldest to `prefer` goes, else the oldest to
    /// any peer (Pingora's pool was one LRU for all peers too).
    fn evict(&mut self, prefer: Option<u64>) -> Option<Idle> {
        let from = match prefer.and_then(|p| self.by_peer.get(&p)) {
            Some(q) if !q.is_empty() => prefer?,
            _ => *self.by_peer.iter().find(|(_, q)| !q.is_empty())?.0,
        };
        self.by_peer.get_mut(&from)?.pop_front()
    }
}

struct Idle {
    stream: Stream,
    /// Closed after this (the peer's `idle_timeout`), if set.
    until: Option<Instant>,
}

impl Idle {
    fn expired(&self, now: Instant) -> bool {
        self.until.is_some_and(|u| now >= u)
    }
}

/// Whether an idle connection can carry a request: nothing to read on it
/// (a provider never speaks first; a read that is ready means it closed,
/// broke, or sent bytes nobody asked for).
fn usable(stream: &mut Stream) -> bool {
    use std::future::Future;
    let mut byte = [0u8; 1];
    // `unconstrained`: tokio's co-operative budget must not turn a ready
    // read into a pending one here.
    let read = std::pin::pin!(tokio::task::unconstrained(stream.read(&mut byte)));
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    read.poll(&mut cx).is_pending()
}

impl Pool {
    pub fn new(cap: usize) -> Arc<Self> {
        Arc::new(Pool {
            idle: Mutex::new(Idles::default()),
            cap,
            sweeping: AtomicBool::new(false),
        })
    }

    /// The newest usable idle connection to `peer`, if any. Those found
    /// expired or closed on the way are closed.
    pub fn take(&self, peer: u64) -> Option<Stream> {
        let now = Instant::now();
        loop {
            // Closed (dropped) outside the lock.
            let mut idle = self.idle.lock().by_peer.get_mut(&peer)?.pop_back()?;
            if !idle.expired(now) && usable(&mut idle.stream) {
                return Some(idle.stream);
            }
        }
    }

    /// Keep a connection whose last answer was read whole, for at most
    /// `idle_timeout`. The pool's sweeper starts with its first connection.
    pub fn put(self: &Arc<Self>, peer: u64, mut stream: Stream, idle_timeout: Option<Duration>) {
        if self.cap == 0 || !usable(&mut stream) {
            return;
        }
        let idle = Idle {
            stream,
            until: idle_timeout.map(|t| Instant::now() + t),
        };
        let evicted = {
            let mut idles = self.idle.lock();
            let evicted = if idles.total() >= self.cap {
                idles.evict(Some(peer))
            } else {
                None
            };
            idles.by_peer.entry(peer).or_default().push_back(idle);
            evicted
        };
        drop(evicted);
        if !self.sweeping.load(Ordering::Relaxed) && !self.sweeping.swap(true, Ordering::Relaxed) {
            tokio::spawn(sweeper(Arc::downgrade(self)));
        }
    }

    /// Close the connections that expired or that their provider closed.
    /// They are tested outside the lock (a request meanwhile finds none
    /// idle and connects anew), then the survivors go back, older than
    /// anything put meanwhile.
    fn sweep(&self) {
        let now = Instant::now();
        let mut all = std::mem::take(&mut *self.idle.lock());
        for q in all.by_peer.values_mut() {
            q.retain_mut(|idle| !idle.expired(now) && usable(&mut idle.stream));
        }
        let mut evicted = Vec::new();
        {
            let mut idles = self.idle.lock();
            for (peer, mut older) in all.by_peer.drain() {
                let q = idles.by_peer.entry(peer).or_default();
                older.append(q);
                *q = older;
            }
            let over = idles.total().saturating_sub(self.cap);
            evicted.extend((0..over).map_while(|_| idles.evict(None)));
            idles.by_peer.retain(|_, q| !q.is_empty());
        }
        drop(evicted);
    }

    /// Idle connections to `peer` right now.
    #[cfg(test)]
    fn idle(&self, peer: u64) -> usize {
        self.idle.lock().by_peer.get(&peer).map_or(0, VecDeque::len)
    }
}

/// Sweep every `SWEEP_EVERY` for as long as the pool exists. Should the
/// task end otherwise (its runtime shut down), the next `put` starts
/// another.
async fn sweeper(pool: Weak<Pool>) {
    struct Running(Weak<Pool>);
    impl Drop for Running {
        fn drop(&mut self) {
            if let Some(p) = self.0.upgrade() {
                p.sweeping.store(false, Ordering::Relaxed);
            }
        }
    }
    let _running = Running(pool.clone());
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match pool.upgrade() {
            Some(p) => p.sweep(),
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora_core::protocols::l4::stream::Stream as L4;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    /// A connection to a local listener: our end (as a Pingora `Stream`)
    /// and the provider's end.
    async fn pair(l: &TcpListener) -> (Stream, TcpStream) {
        let ours = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (theirs, _) = l.accept().await.unwrap();
        (Box::new(L4::from(ours)), theirs)
    }

    /// Which connection a pool handed out (its descriptor: all stay open).
    fn fd(s: &Stream) -> i32 {
        s.id()
    }

    /// Let the kernel deliver, and tokio see, what the other end did.
    async fn settle() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    #[tokio::test]
    async fn newest_first_and_only_to_the_same_peer() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = Pool::new(8);
        let (a, _pa) = pair(&l).await;
        let (b, _pb) = pair(&l).await;
        let (fa, fb) = (fd(&a), fd(&b));
        pool.put(1, a, None);
        pool.put(1, b, None);
        assert!(pool.take(2).is_none());
        assert_eq!(fd(&pool.take(1).unwrap()), fb);
        assert_eq!(fd(&pool.take(1).unwrap()), fa);
        assert!(pool.take(1).is_none());
    }

    #[tokio::test]
    async fn a_connection_its_provider_closed_or_wrote_on_is_not_handed_out() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = Pool::new(8);
        let (closed, theirs) = pair(&l).await;
        let (spoken, mut chatty) = pair(&l).await;
        let (good, _kept) = pair(&l).await;
        let good_fd = fd(&good);
        pool.put(1, good, None);
        pool.put(1, closed, None);
        pool.put(1, spoken, None);
        drop(theirs);
        chatty.write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap();
        settle().await;
        // The two newer ones are dropped on the way to the good one.
        assert_eq!(fd(&pool.take(1).unwrap()), good_fd);
        assert_eq!(pool.idle(1), 0);
        // Nor is one that was closed before it came back.
        let (closed, theirs) = pair(&l).await;
        drop(theirs);
        settle().await;
        pool.put(1, closed, None);
        assert_eq!(pool.idle(1), 0);
    }

    #[tokio::test]
    async fn an_expired_connection_is_not_handed_out() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = Pool::new(8);
        let (s, _theirs) = pair(&l).await;
        pool.put(1, s, Some(Duration::from_millis(20)));
        settle().await;
        assert!(pool.take(1).is_none());
    }

    #[tokio::test]
    async fn at_most_cap_idle_connections_to_all_peers_the_oldest_go() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = Pool::new(2);
        let mut fds = Vec::new();
        let mut theirs = Vec::new();
        for peer in [1, 1, 1, 2] {
            let (s, t) = pair(&l).await;
            fds.push(fd(&s));
            theirs.push(t);
            pool.put(peer, s, None);
        }
        // The third to peer 1 pushed out peer 1's oldest; the one to peer 2
        // (none idle yet) pushed out the oldest of another peer.
        assert_eq!((pool.idle(1), pool.idle(2)), (1, 1));
        assert_eq!(fd(&pool.take(1).unwrap()), fds[2]);
        assert_eq!(fd(&pool.take(2).unwrap()), fds[3]);
        // Those pushed out were closed: their provider reads the end.
        let mut byte = [0u8; 1];
        for t in &mut theirs[..2] {
            assert_eq!(t.read(&mut byte).await.unwrap(), 0);
        }
        // None are kept with a cap of 0.
        let none = Pool::new(0);
        let (s, _t) = pair(&l).await;
        none.put(1, s, None);
        assert_eq!(none.idle(1), 0);
    }

    #[tokio::test]
    async fn the_sweeper_closes_what_expired_or_was_closed_without_waiting_for_a_request() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = Pool::new(8);
        let (closed, theirs) = pair(&l).await;
        let (expiring, mut expiring_theirs) = pair(&l).await;
        let (kept, _kept_theirs) = pair(&l).await;
        pool.put(1, closed, None);
        pool.put(2, expiring, Some(Duration::from_millis(100)));
        pool.put(3, kept, None);
        drop(theirs);
        // The sweeper (started by the first put) runs within SWEEP_EVERY.
        tokio::time::sleep(SWEEP_EVERY + Duration::from_millis(300)).await;
        assert_eq!((pool.idle(1), pool.idle(2), pool.idle(3)), (0, 0, 1));
        let mut byte = [0u8; 1];
        assert_eq!(expiring_theirs.read(&mut byte).await.unwrap(), 0, "closed by the sweep");
    }
}
