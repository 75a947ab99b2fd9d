//! Analytics recording in the core, without the NIF: the cost each NIF call adds on top of
//! the Erlang call itself. A counter, a histogram fed one value, and a histogram fed values
//! spread over 14 octaves (the shape of the "equal work" run in benches/analytics.exs).
use criterion::{criterion_group, criterion_main, Criterion};
use dspex_core::analytics::{Analytics, Config, Kind};
use std::hint::black_box;

fn record(c: &mut Criterion) {
    let engine = Analytics::new(Config::default());
    let now = 1_800_000_000_000u64;
    let mut group = c.benchmark_group("analytics_record");
    group.bench_function("counter", |b| {
        b.iter(|| engine.record(black_box("requests"), Kind::Counter, &[], 1.0, now))
    });
    group.bench_function("histogram_one_value", |b| {
        b.iter(|| engine.record(black_box("latency"), Kind::Histogram, &[], 12.5, now))
    });
    let values: Vec<f64> = (1..=10_000u32)
        .map(|i| f64::from((i * 7919) % 10_000) / 10.0)
        .collect();
    let mut i = 0;
    group.bench_function("histogram_spread_values", |b| {
        b.iter(|| {
            i = (i + 1) % values.len();
            engine.record(black_box("spread"), Kind::Histogram, &[], values[i], now)
        })
    });
    group.finish();
}

criterion_group!(benches, record);
criterion_main!(benches);
