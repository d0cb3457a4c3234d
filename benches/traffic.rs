//! Decision cost of the traffic-control types: token bucket, breaker, picker.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use std::time::{Duration, Instant};
use weir::traffic::breaker::{Breaker, BreakerConf};
use weir::traffic::least_conn::{order, Load};
use weir::traffic::token_bucket::TokenBucket;

fn bench(c: &mut Criterion) {
    let now = Instant::now();
    let mut bucket = TokenBucket::new(1e12, 1e12, now);
    c.bench_function("token bucket take", |b| {
        b.iter(|| black_box(bucket.try_take(1.0, Instant::now())))
    });

    let conf = BreakerConf {
        failure_rate: 0.5,
        min_requests: 10,
        window: Duration::from_secs(30),
        consecutive_failures: 5,
        open_for: Duration::from_secs(30),
        max_open_for: Duration::from_secs(60),
        half_open_probes: 2,
    };
    let mut breaker = Breaker::new(conf, now);
    c.bench_function("breaker admit+record", |b| {
        b.iter(|| {
            let t = Instant::now();
            black_box(breaker.admit(t));
            black_box(breaker.record(true, false, t));
        })
    });

    let loads: Vec<Load> = (0..4)
        .map(|i| Load {
            in_flight: i * 3 % 5,
            weight: 1,
            available: i != 2,
        })
        .collect();
    let mut rot = 0usize;
    c.bench_function("least-connection order (4 providers)", |b| {
        b.iter(|| {
            rot += 1;
            black_box(order(&loads, rot))
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
