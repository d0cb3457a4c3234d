//! Cost of a bulkhead decision: uncontended acquire+release (key-less and
//! keyed), refusing when the queue is full, and a full queue's push-out
//! (the overload paths must stay cheap).

use criterion::{criterion_group, criterion_main, Criterion};
use std::sync::Arc;
use std::time::Duration;
use weir::bulkhead::{Bulkhead, Limits, Ticket};
use weir::config::Priority;

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let plain = Ticket::default();
    let keyed = Ticket {
        class: Priority::CRITICAL,
        tenant: Some(Arc::from("team-a")),
        weight: 2,
    };
    let b = Bulkhead::new("bench:free", Limits::new(1024, 1024, Duration::from_secs(1)));
    c.bench_function("bulkhead acquire+release (free slot)", |bn| {
        bn.iter(|| rt.block_on(async { drop(b.acquire(&plain).await.unwrap()) }))
    });
    c.bench_function("bulkhead acquire+release (free slot, keyed critical)", |bn| {
        bn.iter(|| rt.block_on(async { drop(b.acquire(&keyed).await.unwrap()) }))
    });

    let full = Bulkhead::new("bench:full", Limits::new(1, 0, Duration::from_secs(1)));
    let _held = rt.block_on(full.acquire(&plain)).unwrap();
    c.bench_function("bulkhead refuse (queue full)", |bn| {
        bn.iter(|| rt.block_on(async { assert!(full.acquire(&plain).await.is_err()) }))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
