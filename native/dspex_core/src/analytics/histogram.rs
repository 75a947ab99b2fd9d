//! Log-linear histogram buckets with a 1 % relative-error guarantee.
//!
//! A value's bucket comes straight from its IEEE-754 bits: the binary exponent picks the
//! octave and the top six mantissa bits pick one of 64 equal sub-buckets inside it. A bucket
//! `[lo, lo·(1 + 1/64))` is reported by its midpoint, so any value in it is within
//! `1/128 ≈ 0.78 %` of the reported one. Values from 2⁻³⁰ (≈ 9.3e-10) to 2⁵⁰ (≈ 1.1e15) get
//! their own buckets; smaller values share the zero bucket and larger ones the top bucket,
//! and reported quantiles are clamped to the exact minimum and maximum seen.
//!
//! Storage is sparse for a few spread-out buckets and dense (O(1) recording) once the buckets
//! in use fill at least half their span; see [`Histogram`].

use serde::{Deserialize, Serialize};

const SUB_BITS: u32 = 6;
const SUB_BUCKETS: i32 = 1 << SUB_BITS;
const MIN_EXP: i32 = -30;
const MAX_EXP: i32 = 50;

/// The bucket holding zero and every value below 2⁻³⁰.
pub const ZERO_BUCKET: u16 = 0;
/// The bucket holding every value at or above 2⁵⁰.
pub const TOP_BUCKET: u16 = ((MAX_EXP - MIN_EXP) * SUB_BUCKETS + 1) as u16;

/// The worst relative error of a reported bucket value for values inside the bucket range.
pub const RELATIVE_ERROR: f64 = 1.0 / 128.0;

/// The bucket of a finite, non-negative value.
pub fn bucket_of(value: f64) -> u16 {
    let bits = value.to_bits();
    let exp = ((bits >> 52) & 0x7ff) as i32 - 1023;
    if value <= 0.0 || exp < MIN_EXP {
        return ZERO_BUCKET;
    }
    if exp >= MAX_EXP {
        return TOP_BUCKET;
    }
    let sub = ((bits >> (52 - SUB_BITS)) & (SUB_BUCKETS as u64 - 1)) as i32;
    ((exp - MIN_EXP) * SUB_BUCKETS + sub + 1) as u16
}

/// The lower and upper bound of a bucket.
pub fn bucket_bounds(bucket: u16) -> (f64, f64) {
    match bucket {
        ZERO_BUCKET => (0.0, (MIN_EXP as f64).exp2()),
        TOP_BUCKET => ((MAX_EXP as f64).exp2(), f64::INFINITY),
        _ => {
            let i = i32::from(bucket) - 1;
            let octave = ((i / SUB_BUCKETS) + MIN_EXP) as f64;
            let sub = f64::from(i % SUB_BUCKETS);
            let base = octave.exp2();
            let width = base / f64::from(SUB_BUCKETS);
            (base + sub * width, base + (sub + 1.0) * width)
        }
    }
}

/// The value a bucket is reported as: its midpoint (its lower bound for the open top bucket).
pub fn bucket_value(bucket: u16) -> f64 {
    let (lo, hi) = bucket_bounds(bucket);
    if hi.is_finite() {
        (lo + hi) / 2.0
    } else {
        lo
    }
}

/// Below this many buckets in use a histogram stays sparse whatever its spread.
const DENSE_MIN_BUCKETS: usize = 32;

/// A histogram, stored sparse or dense, whichever is smaller.
///
/// Sparse: (bucket, count) pairs sorted by bucket, 16 bytes per bucket in use, a binary search
/// per record. Dense: one 8-byte count per bucket between the first and the last in use, an
/// index and an add per record. A histogram turns dense once it has 32 buckets in use and its
/// span is at most twice that (then dense is no larger), and back to sparse when a far value
/// would make the span outgrow both that and the dense allocation it already has. Memory is
/// thus at most 32 bytes per bucket in use at the histogram's fullest (the dense vector grows
/// by doubling). Clearing keeps the allocation and the storage kind, so a recycled window slot
/// records without allocating.
/// Serialized as sparse pairs whatever the storage.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(from = "Sparse", into = "Sparse")]
pub struct Histogram {
    // One word-triple either way: counters and gauges carry an empty histogram in each of
    // their 121 cells, so its size is part of every series' memory bound.
    store: Store,
}

#[derive(Debug, Clone)]
enum Store {
    Sparse(Vec<(u16, u64)>),
    Dense(Box<Dense>),
}

/// `counts[i]` is the count of bucket `first + i`; `in_use` counts its non-zero entries. The
/// zero bucket is kept apart: zeros are common (a cache hit's latency) and far below every
/// other bucket, so they would make any span sparse.
#[derive(Debug, Clone)]
struct Dense {
    zeros: u64,
    first: u16,
    in_use: usize,
    counts: Vec<u64>,
}

impl Dense {
    /// Counts a bucket the span does not use yet, growing the span if needed.
    fn insert(&mut self, bucket: u16, n: u64) {
        if self.in_use == 0 {
            self.counts.clear();
            self.first = bucket;
            self.counts.push(n);
        } else if bucket < self.first {
            let gap = usize::from(self.first - bucket);
            self.counts.splice(0..0, std::iter::repeat_n(0, gap));
            self.counts[0] = n;
            self.first = bucket;
        } else {
            let i = usize::from(bucket - self.first);
            if i >= self.counts.len() {
                self.counts.resize(i + 1, 0);
            }
            self.counts[i] = n;
        }
        self.in_use += 1;
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            store: Store::Sparse(Vec::new()),
        }
    }
}

impl PartialEq for Histogram {
    fn eq(&self, other: &Self) -> bool {
        self.buckets().eq(other.buckets())
    }
}

impl Eq for Histogram {}

/// The wire form of a histogram: (bucket, count) pairs sorted by bucket.
#[derive(Serialize, Deserialize)]
struct Sparse(Vec<(u16, u64)>);

impl From<Histogram> for Sparse {
    fn from(h: Histogram) -> Self {
        Sparse(h.buckets().collect())
    }
}

impl From<Sparse> for Histogram {
    fn from(s: Sparse) -> Self {
        let mut h = Histogram::new();
        for (b, n) in s.0 {
            if n > 0 && b <= TOP_BUCKET {
                h.add_to_bucket(b, n);
            }
        }
        h
    }
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one finite, non-negative value.
    #[inline]
    pub fn record(&mut self, value: f64) {
        self.add_to_bucket(bucket_of(value), 1);
    }

    #[inline]
    fn add_to_bucket(&mut self, bucket: u16, n: u64) {
        match &mut self.store {
            Store::Dense(d) if bucket == ZERO_BUCKET => d.zeros += n,
            Store::Dense(d) => {
                let i = usize::from(bucket).wrapping_sub(usize::from(d.first));
                match d.counts.get_mut(i) {
                    Some(c) if *c > 0 => *c += n,
                    _ => self.add_new_bucket(bucket, n),
                }
            }
            Store::Sparse(pairs) => match pairs.binary_search_by_key(&bucket, |&(b, _)| b) {
                Ok(i) => pairs[i].1 += n,
                Err(i) if bucket == ZERO_BUCKET => pairs.insert(i, (bucket, n)),
                Err(_) => self.add_new_bucket(bucket, n),
            },
        }
    }

    /// Adds a bucket (not the zero bucket) not yet in use, switching storage when the other
    /// would be smaller.
    #[cold]
    fn add_new_bucket(&mut self, bucket: u16, n: u64) {
        let mut in_use = 1;
        let (mut lo, mut hi) = (bucket, bucket);
        for (b, _) in self.store_buckets().filter(|&(b, _)| b != ZERO_BUCKET) {
            in_use += 1;
            lo = lo.min(b);
            hi = hi.max(b);
        }
        let span = usize::from(hi - lo) + 1;
        let dense = match &self.store {
            // Reusing an allocation already made costs no memory: a recycled slot stays dense.
            Store::Dense(d) if span <= d.counts.capacity() => true,
            _ => in_use >= DENSE_MIN_BUCKETS && span <= 2 * in_use,
        };
        match (&mut self.store, dense) {
            (Store::Sparse(pairs), false) => {
                let i = pairs.partition_point(|&(b, _)| b < bucket);
                pairs.insert(i, (bucket, n));
            }
            (Store::Dense(d), true) => d.insert(bucket, n),
            (_, to_dense) => {
                let mut pairs: Vec<(u16, u64)> = self.store_buckets().collect();
                let i = pairs.partition_point(|&(b, _)| b < bucket);
                pairs.insert(i, (bucket, n));
                self.store = if to_dense {
                    let mut d = Dense {
                        zeros: 0,
                        first: lo,
                        in_use,
                        counts: vec![0; span],
                    };
                    for (b, c) in pairs {
                        if b == ZERO_BUCKET {
                            d.zeros = c;
                        } else {
                            d.counts[usize::from(b - lo)] = c;
                        }
                    }
                    Store::Dense(Box::new(d))
                } else {
                    Store::Sparse(pairs)
                };
            }
        }
    }

    /// Adds every count of `other`.
    pub fn merge(&mut self, other: &Histogram) {
        if self.is_empty() {
            self.clone_from(other);
            return;
        }
        for (b, n) in other.buckets() {
            self.add_to_bucket(b, n);
        }
    }

    fn is_empty(&self) -> bool {
        match &self.store {
            Store::Sparse(pairs) => pairs.is_empty(),
            Store::Dense(d) => d.zeros == 0 && d.in_use == 0,
        }
    }

    /// Forgets every count, keeping the allocation (and the storage kind, as a recycled slot
    /// most likely sees the same distribution again).
    pub fn clear(&mut self) {
        match &mut self.store {
            Store::Sparse(pairs) => pairs.clear(),
            Store::Dense(d) => {
                d.zeros = 0;
                d.in_use = 0;
                d.counts.clear();
            }
        }
    }

    /// Heap bytes held (the allocations' capacities).
    pub fn heap_bytes(&self) -> usize {
        match &self.store {
            Store::Sparse(pairs) => pairs.capacity() * std::mem::size_of::<(u16, u64)>(),
            Store::Dense(d) => std::mem::size_of::<Dense>() + d.counts.capacity() * 8,
        }
    }

    /// The number of values counted.
    pub fn count(&self) -> u64 {
        self.buckets().map(|(_, n)| n).sum()
    }

    /// The buckets in use, as (bucket, count) in bucket order.
    pub fn buckets(&self) -> Buckets<'_> {
        self.store_buckets()
    }

    fn store_buckets(&self) -> Buckets<'_> {
        match &self.store {
            Store::Sparse(pairs) => Buckets(BucketsInner::Sparse(pairs.iter())),
            Store::Dense(d) => Buckets(BucketsInner::Dense {
                zeros: d.zeros,
                first: d.first,
                counts: d.counts.iter().enumerate(),
            }),
        }
    }

    /// The `q`-quantile (0 ≤ q ≤ 1): the reported value of the bucket holding the value of rank
    /// `⌈q·n⌉` (rank 1 for q = 0), clamped to `[min, max]`. `None` when empty.
    pub fn quantile(&self, q: f64, min: f64, max: f64) -> Option<f64> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * n as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (b, c) in self.buckets() {
            seen += c;
            if seen >= rank {
                return Some(bucket_value(b).clamp(min, max));
            }
        }
        Some(max)
    }
}

/// The buckets in use of a [`Histogram`], as (bucket, count) in bucket order.
pub struct Buckets<'a>(BucketsInner<'a>);

enum BucketsInner<'a> {
    Sparse(std::slice::Iter<'a, (u16, u64)>),
    Dense {
        zeros: u64,
        first: u16,
        counts: std::iter::Enumerate<std::slice::Iter<'a, u64>>,
    },
}

impl Iterator for Buckets<'_> {
    type Item = (u16, u64);

    fn next(&mut self) -> Option<(u16, u64)> {
        match &mut self.0 {
            BucketsInner::Sparse(it) => it.next().copied(),
            BucketsInner::Dense {
                zeros,
                first,
                counts,
            } => {
                if *zeros > 0 {
                    return Some((ZERO_BUCKET, std::mem::take(zeros)));
                }
                counts
                    .find(|&(_, &n)| n > 0)
                    .map(|(i, &n)| (*first + i as u16, n))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_is_inside_its_bucket_and_near_its_reported_value() {
        let mut v = 1e-9;
        while v < 1e15 {
            let b = bucket_of(v);
            let (lo, hi) = bucket_bounds(b);
            assert!(lo <= v && v < hi, "{v} outside [{lo}, {hi}) of bucket {b}");
            let err = (bucket_value(b) - v).abs() / v;
            assert!(err <= RELATIVE_ERROR, "{v}: relative error {err}");
            v *= 1.003;
        }
    }

    #[test]
    fn buckets_are_ordered_like_values() {
        let mut last = 0;
        let mut v = 1e-9;
        while v < 1e15 {
            let b = bucket_of(v);
            assert!(b >= last);
            last = b;
            v *= 1.01;
        }
        assert_eq!(bucket_of(0.0), ZERO_BUCKET);
        assert_eq!(bucket_of(1e-12), ZERO_BUCKET);
        assert_eq!(bucket_of(1e300), TOP_BUCKET);
    }

    #[test]
    fn quantiles_of_a_known_sequence() {
        let mut h = Histogram::new();
        for i in 1..=1000 {
            h.record(f64::from(i));
        }
        let p50 = h.quantile(0.5, 1.0, 1000.0).unwrap();
        let p99 = h.quantile(0.99, 1.0, 1000.0).unwrap();
        assert!((p50 - 500.0).abs() / 500.0 <= RELATIVE_ERROR, "{p50}");
        assert!((p99 - 990.0).abs() / 990.0 <= RELATIVE_ERROR, "{p99}");
        assert_eq!(h.quantile(1.0, 1.0, 1000.0), Some(1000.0));
        assert_eq!(Histogram::new().quantile(0.5, 0.0, 0.0), None);
    }

    #[test]
    fn merge_adds_counts() {
        let mut a = Histogram::new();
        let mut b = Histogram::new();
        a.record(1.0);
        b.record(1.0);
        b.record(7.0);
        a.merge(&b);
        assert_eq!(a.count(), 3);
        assert_eq!(a.buckets().count(), 2);
    }

    #[test]
    fn the_range_grows_both_ways_and_order_does_not_matter() {
        let values = [5.0, 0.001, 1e9, 5.0, 0.0, 3e15, 42.0];
        let mut forward = Histogram::new();
        let mut backward = Histogram::new();
        for &v in &values {
            forward.record(v);
        }
        for &v in values.iter().rev() {
            backward.record(v);
        }
        assert_eq!(forward, backward);
        assert_eq!(forward.count(), 7);
        let in_use: Vec<u16> = forward.buckets().map(|(b, _)| b).collect();
        let mut expected: Vec<u16> = values.iter().map(|&v| bucket_of(v)).collect();
        expected.sort_unstable();
        expected.dedup();
        assert_eq!(in_use, expected);
        forward.clear();
        assert_eq!(forward, Histogram::new());
    }

    #[test]
    fn the_wire_form_is_sparse_and_round_trips() {
        let mut h = Histogram::new();
        h.record(1e-6);
        h.record(1e12);
        let bytes = postcard::to_allocvec(&h).unwrap();
        assert!(bytes.len() < 16, "{} bytes for two buckets", bytes.len());
        let back: Histogram = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, h);
    }

    #[test]
    fn storage_follows_the_spread_and_a_cleared_dense_histogram_stays_dense() {
        let mut h = Histogram::new();
        let close: Vec<f64> = (0..200).map(|i| 1.0 + f64::from(i) / 64.0).collect();
        for &v in &close {
            h.record(v);
        }
        assert!(
            matches!(h.store, Store::Dense { .. }),
            "packed values go dense"
        );
        h.record(1e12);
        assert!(
            matches!(h.store, Store::Sparse(_)),
            "one far value goes back to sparse"
        );
        assert_eq!(h.count(), 201);

        let mut packed = Histogram::new();
        for &v in &close {
            packed.record(v);
        }
        let capacity = match &packed.store {
            Store::Dense(d) => d.counts.capacity(),
            Store::Sparse(_) => unreachable!(),
        };
        packed.clear();
        packed.record(3.0);
        packed.record(2.0);
        match &packed.store {
            Store::Dense(d) => {
                assert_eq!(d.in_use, 2);
                assert_eq!(d.counts.capacity(), capacity, "no new allocation");
            }
            Store::Sparse(_) => panic!("a recycled dense slot went sparse"),
        }

        let mut sparse = Histogram::new();
        for v in [1e-6, 1.0, 1e6] {
            sparse.record(v);
        }
        assert!(matches!(sparse.store, Store::Sparse(_)));
        assert_eq!(sparse.buckets().count(), 3);
        assert_eq!(
            std::mem::size_of::<Histogram>(),
            std::mem::size_of::<Vec<u64>>(),
            "an empty histogram costs what an empty vector does"
        );
    }
}
