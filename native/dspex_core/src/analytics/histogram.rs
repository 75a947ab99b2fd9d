//! Log-linear histogram buckets with a 1 % relative-error guarantee.
//!
//! A value's bucket comes straight from its IEEE-754 bits: the binary exponent picks the
//! octave and the top six mantissa bits pick one of 64 equal sub-buckets inside it. A bucket
//! `[lo, lo·(1 + 1/64))` is reported by its midpoint, so any value in it is within
//! `1/128 ≈ 0.78 %` of the reported one. Values from 2⁻³⁰ (≈ 9.3e-10) to 2⁵⁰ (≈ 1.1e15) get
//! their own buckets; smaller values share the zero bucket and larger ones the top bucket,
//! and reported quantiles are clamped to the exact minimum and maximum seen.
//!
//! Storage is sparse (only the buckets in use), sorted by bucket index. Clearing keeps the
//! capacity, so a recycled window slot records without allocating.

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

/// A sparse histogram: (bucket, count) pairs sorted by bucket.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Histogram {
    buckets: Vec<(u16, u64)>,
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one finite, non-negative value.
    pub fn record(&mut self, value: f64) {
        self.add_to_bucket(bucket_of(value), 1);
    }

    fn add_to_bucket(&mut self, bucket: u16, n: u64) {
        match self.buckets.binary_search_by_key(&bucket, |&(b, _)| b) {
            Ok(i) => self.buckets[i].1 += n,
            Err(i) => self.buckets.insert(i, (bucket, n)),
        }
    }

    /// Adds every count of `other`.
    pub fn merge(&mut self, other: &Histogram) {
        if self.buckets.is_empty() {
            self.buckets.extend_from_slice(&other.buckets);
            return;
        }
        for &(b, n) in &other.buckets {
            self.add_to_bucket(b, n);
        }
    }

    /// Forgets every count, keeping the allocation.
    pub fn clear(&mut self) {
        self.buckets.clear();
    }

    /// The number of values counted.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|&(_, n)| n).sum()
    }

    /// The buckets in use, as (bucket, count) sorted by bucket.
    pub fn buckets(&self) -> &[(u16, u64)] {
        &self.buckets
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
        for &(b, c) in &self.buckets {
            seen += c;
            if seen >= rank {
                return Some(bucket_value(b).clamp(min, max));
            }
        }
        Some(max)
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
        assert_eq!(a.buckets().len(), 2);
    }
}
