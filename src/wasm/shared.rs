//! State filters share: key-value data with compare-and-swap and shared
//! queues, scoped by `vm_id` as in Envoy (every filter with the same
//! `vm_id`, default empty, sees the same data and queues), and the metrics
//! a plugin defines, scoped by plugin. Both are kept across config reloads
//! (a rebuilt plugin finds its predecessor's data), like weir's other state
//! whose identity is unchanged.

use super::abi::{status, Status};
use super::vm::Event;
use crate::metrics;
use once_cell::sync::Lazy;
use parking_lot::Mutex;
use prometheus::{Histogram, IntGauge};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Weak};
use tokio::sync::mpsc::UnboundedSender;

/// Bounds that keep a misbehaving filter from growing weir without limit.
const MAX_SHARED_DATA_BYTES: usize = 64 << 20;
const MAX_QUEUES: usize = 4096;
const MAX_QUEUE_ITEMS: usize = 10_000;
const MAX_METRICS: usize = 1024;

/// Who is told when an item arrives on a queue: the root context of one VM.
#[derive(Clone)]
pub(crate) struct QueueOwner {
    pub events: UnboundedSender<Event>,
    pub vm: usize,
}

struct Queue {
    items: VecDeque<Vec<u8>>,
    owner: Option<QueueOwner>,
}

/// Every queue of the process: ids are global, names are per `vm_id`, so
/// a queue resolved in another `vm_id` is reached by its id alone.
#[derive(Default)]
struct Queues {
    by_name: HashMap<(String, Vec<u8>), u32>,
    list: Vec<Queue>,
}

static QUEUES: Lazy<Mutex<Queues>> = Lazy::new(Default::default);

enum Metric {
    /// Counters and gauges: both exported as a gauge (a counter only grows).
    Gauge(IntGauge),
    Histogram(Histogram),
}

#[derive(Default)]
struct Metrics {
    by_name: HashMap<Vec<u8>, u32>,
    list: Vec<Metric>,
}

#[derive(Default)]
struct Data {
    map: HashMap<Vec<u8>, (Vec<u8>, u32)>,
    bytes: usize,
}

/// Shared state of one scope: a `vm_id` (data) or a plugin (metrics).
#[derive(Default)]
pub(crate) struct SharedState {
    data: Mutex<Data>,
    metrics: Mutex<Metrics>,
}

static BY_SCOPE: Lazy<Mutex<HashMap<String, Weak<SharedState>>>> = Lazy::new(Default::default);

impl SharedState {
    fn scoped(key: String) -> Arc<SharedState> {
        let mut all = BY_SCOPE.lock();
        all.retain(|_, w| w.strong_count() > 0);
        if let Some(s) = all.get(&key).and_then(Weak::upgrade) {
            return s;
        }
        let s = Arc::new(SharedState::default());
        all.insert(key, Arc::downgrade(&s));
        s
    }

    /// The metrics of plugin `name`: its predecessor's if that is still alive.
    pub fn for_plugin(name: &str) -> Arc<SharedState> {
        Self::scoped(format!("plugin\0{name}"))
    }

    /// The shared data of `vm_id`: every live plugin with that `vm_id` holds it.
    pub fn for_vm(vm_id: &str) -> Arc<SharedState> {
        Self::scoped(format!("vm\0{vm_id}"))
    }

    /// `(value, cas)` of a key.
    pub fn get(&self, key: &[u8]) -> Option<(Vec<u8>, u32)> {
        self.data.lock().map.get(key).cloned()
    }

    /// Set a key. A non-zero `cas` must match the entry's current one.
    pub fn set(&self, key: &[u8], value: &[u8], cas: u32) -> Status {
        let mut d = self.data.lock();
        let (old_len, next_cas) = match d.map.get(key) {
            Some((_, c)) if cas != 0 && cas != *c => return status::CAS_MISMATCH,
            Some((v, c)) => (key.len() + v.len(), c.wrapping_add(1).max(1)),
            None => (0, 1),
        };
        let bytes = d.bytes - old_len + key.len() + value.len();
        if bytes > MAX_SHARED_DATA_BYTES {
            return status::INTERNAL_FAILURE;
        }
        d.bytes = bytes;
        d.map.insert(key.to_vec(), (value.to_vec(), next_cas));
        status::OK
    }

    /// Define a metric (the same name gives the same id).
    pub fn define_metric(&self, plugin: &str, kind: u32, name: &[u8]) -> Result<u32, Status> {
        let mut m = self.metrics.lock();
        if let Some(&id) = m.by_name.get(name) {
            return Ok(id);
        }
        if m.list.len() >= MAX_METRICS {
            return Err(status::INTERNAL_FAILURE);
        }
        let label = String::from_utf8_lossy(name);
        let metric = match kind {
            0 | 1 => Metric::Gauge(metrics::WASM_METRIC.with_label_values(&[plugin, &label])),
            2 => Metric::Histogram(metrics::WASM_HISTOGRAM.with_label_values(&[plugin, &label])),
            _ => return Err(status::BAD_ARGUMENT),
        };
        let id = m.list.len() as u32;
        m.list.push(metric);
        m.by_name.insert(name.to_vec(), id);
        Ok(id)
    }

    pub fn increment_metric(&self, id: u32, by: i64) -> Status {
        match self.metrics.lock().list.get(id as usize) {
            Some(Metric::Gauge(g)) => {
                g.add(by);
                status::OK
            }
            Some(Metric::Histogram(_)) => status::BAD_ARGUMENT,
            None => status::NOT_FOUND,
        }
    }

    pub fn record_metric(&self, id: u32, value: u64) -> Status {
        match self.metrics.lock().list.get(id as usize) {
            Some(Metric::Gauge(g)) => {
                g.set(value.min(i64::MAX as u64) as i64);
                status::OK
            }
            Some(Metric::Histogram(h)) => {
                h.observe(value as f64);
                status::OK
            }
            None => status::NOT_FOUND,
        }
    }

    pub fn get_metric(&self, id: u32) -> Result<u64, Status> {
        match self.metrics.lock().list.get(id as usize) {
            Some(Metric::Gauge(g)) => Ok(g.get().max(0) as u64),
            Some(Metric::Histogram(_)) => Err(status::BAD_ARGUMENT),
            None => Err(status::NOT_FOUND),
        }
    }
}

/// Register (or take over) queue `name` of `vm_id`; its owner is told of new items.
pub(crate) fn register_queue(vm_id: &str, name: &[u8], owner: QueueOwner) -> Option<u32> {
    let mut q = QUEUES.lock();
    let key = (vm_id.to_string(), name.to_vec());
    if let Some(&id) = q.by_name.get(&key) {
        q.list[id as usize].owner = Some(owner);
        return Some(id);
    }
    if q.list.len() >= MAX_QUEUES {
        return None;
    }
    let id = q.list.len() as u32;
    q.list.push(Queue {
        items: VecDeque::new(),
        owner: Some(owner),
    });
    q.by_name.insert(key, id);
    Some(id)
}

pub(crate) fn resolve_queue(vm_id: &str, name: &[u8]) -> Option<u32> {
    QUEUES.lock().by_name.get(&(vm_id.to_string(), name.to_vec())).copied()
}

/// Take the oldest item: `Err(NOT_FOUND)` for an unknown queue, `Ok(None)` if empty.
pub(crate) fn dequeue(id: u32) -> Result<Option<Vec<u8>>, Status> {
    let mut q = QUEUES.lock();
    let queue = q.list.get_mut(id as usize).ok_or(status::NOT_FOUND)?;
    Ok(queue.items.pop_front())
}

/// Add an item (dropping the oldest when full) and tell the owner.
pub(crate) fn enqueue(id: u32, value: &[u8]) -> Status {
    let owner = {
        let mut q = QUEUES.lock();
        let Some(queue) = q.list.get_mut(id as usize) else {
            return status::NOT_FOUND;
        };
        if queue.items.len() >= MAX_QUEUE_ITEMS {
            queue.items.pop_front();
        }
        queue.items.push_back(value.to_vec());
        queue.owner.clone()
    };
    if let Some(o) = owner {
        let _ = o.events.send(Event::QueueReady { vm: o.vm, queue: id });
    }
    status::OK
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_data_cas() {
        let s = SharedState::default();
        assert!(s.get(b"k").is_none());
        assert_eq!(s.set(b"k", b"1", 0), status::OK);
        let (v, cas) = s.get(b"k").unwrap();
        assert_eq!(v, b"1");
        assert_eq!(s.set(b"k", b"2", cas + 7), status::CAS_MISMATCH);
        assert_eq!(s.set(b"k", b"2", cas), status::OK);
        let (v, cas2) = s.get(b"k").unwrap();
        assert_eq!(v, b"2");
        assert_ne!(cas, cas2);
        assert_eq!(s.set(b"k", b"3", cas), status::CAS_MISMATCH);
    }

    #[test]
    fn queues_are_named_per_vm_id() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let id = register_queue("unit-a", b"q", QueueOwner { events: tx, vm: 1 }).unwrap();
        assert_eq!(resolve_queue("unit-a", b"q"), Some(id));
        assert_eq!(resolve_queue("unit-b", b"q"), None, "another vm_id");
        assert_eq!(resolve_queue("unit-a", b"nope"), None);
        assert_eq!(dequeue(id), Ok(None));
        assert_eq!(enqueue(id, b"a"), status::OK);
        assert!(matches!(rx.try_recv(), Ok(Event::QueueReady { vm: 1, queue }) if queue == id));
        assert_eq!(dequeue(id), Ok(Some(b"a".to_vec())));
        assert_eq!(enqueue(u32::MAX, b"a"), status::NOT_FOUND);
        assert_eq!(dequeue(u32::MAX), Err(status::NOT_FOUND));
    }

    #[test]
    fn data_is_shared_by_vm_id() {
        let a = SharedState::for_vm("unit-shared");
        let b = SharedState::for_vm("unit-shared");
        let c = SharedState::for_vm("unit-other");
        assert_eq!(a.set(b"k", b"v", 0), status::OK);
        assert_eq!(b.get(b"k").unwrap().0, b"v");
        assert!(c.get(b"k").is_none());
        assert!(SharedState::for_plugin("unit-shared").get(b"k").is_none());
    }
}
