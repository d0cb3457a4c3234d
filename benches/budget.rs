//! Cost of one budget decision: reserve then settle, over the three ledgers
//! a request typically falls under (its key, its group, everyone). The
//! memory store, and the Redis store (a round trip each) against a
//! redis-server this bench starts on a free loopback port (`./dev`
//! installs it; without one the bench fails rather than skip it).
//!
//! `cargo bench --bench budget`

#[path = "../tests/support/mod.rs"]
mod support;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use std::time::Duration;
use weir::plugins::budget::ledger::{Amount, Limit, Window};
use weir::plugins::budget::store::{Decision, Entry, MemoryStore, RedisStore};

fn entries(keys: usize) -> Vec<Entry> {
    let window = Window::of(Duration::from_secs(86_400));
    // Limits nothing reaches: every decision admits and settles.
    let limit = Limit {
        tokens: Some(u64::MAX / 4),
        cost: Some(1 << 52),
    };
    ["key-daily:86400000:alice", "team:86400000:team", "global:86400000:"]
        .iter()
        .take(keys)
        .map(|k| Entry {
            key: k.to_string(),
            window,
            limit,
        })
        .collect()
}

const NEED: Amount = Amount {
    tokens: 4105,
    cost: 41_050_000,
};
const SPENT: Amount = Amount {
    tokens: 321,
    cost: 3_210_000,
};

fn bench(c: &mut Criterion) {
    let store = MemoryStore::new(100_000);
    for keys in [1, 3] {
        let e = entries(keys);
        c.bench_function(&format!("budget reserve+settle, memory, {keys} ledgers"), |b| {
            b.iter(|| {
                let Ok(Decision::Admitted { at, .. }) = store.reserve(black_box(&e), NEED) else {
                    panic!("the bench's limits are never reached")
                };
                store.settle(&e, at, NEED, SPENT).unwrap();
            })
        });
    }

    let redis = support::spawn_redis();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let remote = RedisStore::new(&redis.url(), "bench:", weir::plugins::budget::store::DEFAULT_TIMEOUT).unwrap();
    for keys in [1, 3] {
        let e = entries(keys);
        c.bench_function(&format!("budget reserve+settle, redis, {keys} ledgers"), |b| {
            b.iter(|| {
                rt.block_on(async {
                    let Ok(Decision::Admitted { at, .. }) = remote.reserve(&e, NEED).await else {
                        panic!("the bench's limits are never reached")
                    };
                    remote.settle(&e, at, NEED, SPENT).await.unwrap();
                })
            })
        });
        c.bench_function(
            &format!("budget reserve only (the request path), redis, {keys} ledgers"),
            |b| b.iter(|| rt.block_on(async { black_box(remote.reserve(&e, Amount::default()).await.unwrap()) })),
        );
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
