//! Cost of loading, checking and compiling a config (what a reload pays).

use criterion::{criterion_group, criterion_main, Criterion};
use std::path::Path;

fn bench(c: &mut Criterion) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/demo.yaml");
    c.bench_function("config load+check (conf/demo.yaml)", |b| {
        b.iter(|| weir::config::load(&path).unwrap())
    });
    c.bench_function("config load+check+compile (conf/demo.yaml)", |b| {
        b.iter(|| {
            let (cfg, index) = weir::config::load(&path).unwrap();
            weir::runtime::Runtime::build(cfg, &index, 1, None).unwrap()
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
