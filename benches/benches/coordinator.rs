//! The lock table on its own: one uncontended acquire and release per iteration, with ids
//! that cost nothing to copy (`&'static str`), then with a mutex around each call and a
//! clock read per call as the NIF adds them. The floor under the NIF path.
use criterion::{criterion_group, criterion_main, Criterion};
use dspex_core::coordinator::{Conflict, LockTable};
use std::hint::black_box;
use std::sync::Mutex;
use std::time::Instant;

fn acquire_release(c: &mut Criterion) {
    let key = ("global", "lr");
    let who = "opt";
    let lease = 300_000_000_000;
    let mut group = c.benchmark_group("lock_table_uncontended");
    group.bench_function("acquire_release", |b| {
        let mut table: LockTable<(&str, &str), &str> = LockTable::new();
        let mut now = 0u64;
        b.iter(|| {
            now += 10;
            let got = table.acquire(key, who, 0, Conflict::Abort, lease, now);
            black_box(got.value);
            black_box(table.release(&key, &who, now).value).unwrap();
        })
    });
    group.bench_function("acquire_release_mutex_clock", |b| {
        let table: Mutex<LockTable<(&str, &str), &str>> = Mutex::new(LockTable::new());
        let zero = Instant::now();
        let now = || zero.elapsed().as_nanos() as u64;
        b.iter(|| {
            let got = table
                .lock()
                .unwrap()
                .acquire(key, who, 0, Conflict::Abort, lease, now());
            black_box(got.value);
            let released = table.lock().unwrap().release(&key, &who, now());
            black_box(released.value).unwrap();
        })
    });
    group.finish();
}

criterion_group!(benches, acquire_release);
criterion_main!(benches);
