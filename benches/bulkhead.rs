//! Cost of a bulkhead decision: uncontended acquire+release, and refusing
//! when the queue is full (the overload path must stay cheap).

use criterion::{criterion_group, criterion_main, Criterion};
use std::time::Duration;
use weir::bulkhead::{Bulkhead, Limits};

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let b = Bulkhead::new(
        "bench:free",
        Limits {
            max_concurrent: 1024,
            queue: 1024,
            queue_timeout: Duration::from_secs(1),
        },
    );
    c.bench_function("bulkhead acquire+release (free slot)", |bn| {
        bn.iter(|| rt.block_on(async { drop(b.acquire().await.unwrap()) }))
    });

    let full = Bulkhead::new(
        "bench:full",
        Limits {
            max_concurrent: 1,
            queue: 0,
            queue_timeout: Duration::from_secs(1),
        },
    );
    let _held = rt.block_on(full.acquire()).unwrap();
    c.bench_function("bulkhead refuse (queue full)", |bn| {
        bn.iter(|| rt.block_on(async { assert!(full.acquire().await.is_err()) }))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
