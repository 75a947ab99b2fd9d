//! Snapshot framing throughput, with a plain `memcpy` of the same bytes as the in-process
//! baseline: the ratio shows what the checksum costs over copying the payload.
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use dspex_core::snapshot::{decode_frame, encode_frame, FrameKind};
use std::hint::black_box;

fn framing(c: &mut Criterion) {
    let mut group = c.benchmark_group("snapshot_frame");
    for size in [4 * 1024usize, 1024 * 1024] {
        let payload: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
        let frame = encode_frame(FrameKind::Session, &payload);
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("copy_baseline", size), &payload, |b, p| {
            b.iter(|| black_box(p.to_vec()))
        });
        group.bench_with_input(BenchmarkId::new("encode", size), &payload, |b, p| {
            b.iter(|| black_box(encode_frame(FrameKind::Session, p)))
        });
        group.bench_with_input(BenchmarkId::new("decode", size), &frame, |b, f| {
            b.iter(|| black_box(decode_frame(f).unwrap().payload.len()))
        });
    }
    group.finish();
}

criterion_group!(benches, framing);
criterion_main!(benches);
