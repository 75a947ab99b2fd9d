//! Property tests of the analytics engine against plain recounts: shard merging loses
//! nothing, quantiles stay within the bucket error of the exact order statistic, windows keep
//! exactly the records that have not aged out, snapshots merge by addition, and alert rules
//! follow a separately written state machine.

use std::collections::BTreeMap;
use std::sync::Arc;

use dspex_core::analytics::alerts::{Alerts, Comparison, Effect, Expr, Rule};
use dspex_core::analytics::histogram::{bucket_of, Histogram, RELATIVE_ERROR};
use dspex_core::analytics::query::{summarize, Aggregation, Range};
use dspex_core::analytics::{Analytics, Config, Kind};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum HistOp {
    Near(Vec<f64>),
    Far(f64),
    Merge(Vec<f64>),
    Clear,
}

const T0: u64 = 1_800_000_000_000;

fn engine() -> Analytics {
    Analytics::new(Config {
        shards: 4,
        max_metrics: 16,
        max_series_per_metric: 8,
        key_cache_per_shard: 64,
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Records from four threads (four shards) into random series: every series' merged
    /// count and sum equal the recount, overflow included.
    #[test]
    fn merged_shards_equal_the_sum_of_records(
        records in prop::collection::vec((0usize..12, 0u32..1_000), 1..400)
    ) {
        let a = Arc::new(engine());
        let chunks: Vec<Vec<(usize, u32)>> = records.chunks(records.len().div_ceil(4)).map(|c| c.to_vec()).collect();
        let handles: Vec<_> = chunks.into_iter().map(|chunk| {
            let a = Arc::clone(&a);
            std::thread::spawn(move || {
                for (series, v) in chunk {
                    let id = series.to_string();
                    a.record("c", Kind::Counter, &[("id", &id)], f64::from(v), T0).unwrap();
                }
            })
        }).collect();
        for h in handles {
            h.join().unwrap();
        }
        let snap = a.snapshot(T0);
        let total_count: u64 = snap.series.iter().map(|s| s.data.total.stats.count).sum();
        let total_sum: f64 = snap.series.iter().map(|s| s.data.total.stats.sum).sum();
        prop_assert_eq!(total_count, records.len() as u64);
        prop_assert_eq!(total_sum, records.iter().map(|&(_, v)| f64::from(v)).sum::<f64>());
        for s in &snap.series {
            if s.labels[0].0 == "id" {
                let id: usize = s.labels[0].1.parse().unwrap();
                let expect: Vec<u32> = records.iter().filter(|r| r.0 == id).map(|r| r.1).collect();
                prop_assert_eq!(s.data.total.stats.count, expect.len() as u64);
            }
        }
        prop_assert!(snap.series.len() <= 9, "8 series plus the overflow series");
        let whole = summarize(&*a, "c", &[], Range::All, T0).unwrap();
        prop_assert_eq!(whole.stats.count, records.len() as u64);
    }

    /// Any quantile of random positive data is within the bucket error of the exact value of
    /// rank ⌈q·n⌉.
    #[test]
    fn quantiles_are_within_the_error_bound(
        exps in prop::collection::vec(-6.0f64..9.0, 1..500),
        q in 0.0f64..=1.0,
    ) {
        let values: Vec<f64> = exps.iter().map(|e| 10f64.powf(*e)).collect();
        let mut h = Histogram::new();
        for v in &values {
            h.record(*v);
        }
        let mut sorted = values.clone();
        sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let rank = ((q * sorted.len() as f64).ceil() as usize).max(1);
        let exact = sorted[rank - 1];
        let est = h.quantile(q, sorted[0], *sorted.last().unwrap()).unwrap();
        prop_assert!((est - exact).abs() <= RELATIVE_ERROR * exact * (1.0 + 1e-12),
            "q={} exact={} est={}", q, exact, est);
    }

    /// Histogram storage switches between sparse and dense with the spread of the values;
    /// whatever the sequence of records, merges and clears, the buckets and counts equal a
    /// plain map of bucket to count.
    #[test]
    fn histogram_storage_keeps_exact_bucket_counts(
        ops in prop::collection::vec(prop_oneof![
            // Batches of close values, so the storage turns dense between clears.
            8 => prop::collection::vec(1.0f64..4.0, 1..50).prop_map(HistOp::Near),
            // Zero, and values from the zero bucket to the top bucket.
            1 => prop_oneof![Just(0.0), (-11.0f64..16.0).prop_map(|e| 10f64.powf(e))]
                .prop_map(HistOp::Far),
            // Few distinct values, so merged buckets carry counts above one.
            1 => prop::collection::vec((0u32..40).prop_map(|i| 0.5 + f64::from(i) * 0.2), 0..80)
                .prop_map(HistOp::Merge),
            1 => Just(HistOp::Clear),
        ], 1..200),
    ) {
        let mut h = Histogram::new();
        let mut model: BTreeMap<u16, u64> = BTreeMap::new();
        for op in &ops {
            match op {
                HistOp::Near(values) => {
                    for v in values {
                        h.record(*v);
                        *model.entry(bucket_of(*v)).or_default() += 1;
                    }
                }
                HistOp::Far(v) => {
                    h.record(*v);
                    *model.entry(bucket_of(*v)).or_default() += 1;
                }
                HistOp::Merge(values) => {
                    let mut other = Histogram::new();
                    for v in values {
                        other.record(*v);
                        *model.entry(bucket_of(*v)).or_default() += 1;
                    }
                    h.merge(&other);
                }
                HistOp::Clear => {
                    h.clear();
                    model.clear();
                }
            }
            let got: Vec<(u16, u64)> = h.buckets().collect();
            let want: Vec<(u16, u64)> = model.iter().map(|(&b, &n)| (b, n)).collect();
            prop_assert_eq!(got, want);
        }
    }

    /// After random records at random times, each window counts exactly the records whose
    /// second (or minute) is among the last 60 at the query time.
    #[test]
    fn windows_drop_exactly_what_aged_out(
        steps in prop::collection::vec((prop_oneof![0u64..3_000, 0u64..60_000], 1u32..100), 1..200),
        n in prop_oneof![Just(60u64), 1u64..=60],
        minutes in prop_oneof![Just(3_600u64), 61u64..=3_600],
    ) {
        let a = engine();
        let mut now = T0;
        let mut model: Vec<(u64, f64)> = Vec::new();
        for (dt, v) in &steps {
            now += dt;
            a.record("h", Kind::Histogram, &[], f64::from(*v), now).unwrap();
            model.push((now, f64::from(*v)));
        }
        let now_s = now / 1_000;
        let expect_s: Vec<f64> = model.iter().filter(|(t, _)| t / 1_000 + n > now_s).map(|m| m.1).collect();
        let got = summarize(&a, "h", &[], Range::LastSeconds(n), now).unwrap();
        prop_assert_eq!(got.stats.count, expect_s.len() as u64);
        prop_assert_eq!(got.stats.sum, expect_s.iter().sum::<f64>());

        let slots = minutes.div_ceil(60);
        let now_m = now / 60_000;
        let expect_m = model.iter().filter(|(t, _)| t / 60_000 + slots > now_m).count();
        let got = summarize(&a, "h", &[], Range::LastSeconds(minutes), now).unwrap();
        prop_assert_eq!(got.stats.count, expect_m as u64);

        let all = summarize(&a, "h", &[], Range::All, now).unwrap();
        prop_assert_eq!(all.stats.count, model.len() as u64);
        let max = model.iter().map(|m| m.1).fold(f64::MIN, f64::max);
        prop_assert_eq!(all.value(Aggregation::Max), Some(max));
    }

    /// Merging two engines' snapshots gives the same totals and windows as recording
    /// everything into one engine.
    #[test]
    fn snapshot_merge_is_addition(
        left in prop::collection::vec((0usize..3, 1u32..50, 0u64..5_000), 0..100),
        right in prop::collection::vec((0usize..3, 1u32..50, 0u64..5_000), 0..100),
    ) {
        let (a, b, both) = (engine(), engine(), engine());
        for (engine_, recs) in [(&a, &left), (&b, &right)] {
            for (s, v, t) in recs {
                let id = s.to_string();
                engine_.record("h", Kind::Histogram, &[("s", &id)], f64::from(*v), T0 + t).unwrap();
                both.record("h", Kind::Histogram, &[("s", &id)], f64::from(*v), T0 + t).unwrap();
            }
        }
        let now = T0 + 5_000;
        let mut merged = a.snapshot(now);
        merged.merge(&b.snapshot(now)).unwrap();
        let expect = both.snapshot(now);
        prop_assert_eq!(merged.series.len(), expect.series.len());
        for range in [Range::All, Range::LastSeconds(60), Range::LastSeconds(600)] {
            let m = summarize(&merged, "h", &[], range, now).unwrap();
            let e = summarize(&expect, "h", &[], range, now).unwrap();
            prop_assert_eq!(m.stats.count, e.stats.count);
            prop_assert_eq!(m.stats.sum, e.stats.sum);
            prop_assert_eq!(m.hist, e.hist);
        }
    }
}

/// The alert state machine as written from its description: inactive, pending since t,
/// firing since t.
#[derive(Debug, Clone, Copy, PartialEq)]
enum ModelState {
    Inactive,
    Pending(u64),
    Firing(u64),
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn alert_rules_follow_the_model(
        for_ms in prop_oneof![Just(0u64), 1u64..5_000],
        steps in prop::collection::vec((0u64..3_000, prop::option::of(0u32..10)), 1..60),
    ) {
        let mut alerts = Alerts::new();
        alerts.put(Rule {
            name: "r".into(),
            expr: Expr::Const(0.0),
            comparison: Comparison::Above,
            threshold: 5.0,
            window_s: 60,
            for_ms,
            severity: "warning".into(),
        }).unwrap();
        let mut model = ModelState::Inactive;
        let mut now = 0u64;
        for (dt, value) in steps {
            now += dt;
            let v = value.map(f64::from);
            let effects = alerts.step(now, |_| v);
            let bad = v.is_some_and(|v| v > 5.0);
            let (next, expect_fired, expect_resolved) = match (model, bad) {
                (ModelState::Inactive, false) | (ModelState::Pending(_), false) => (ModelState::Inactive, false, false),
                (ModelState::Inactive, true) if for_ms == 0 => (ModelState::Firing(now), true, false),
                (ModelState::Inactive, true) => (ModelState::Pending(now), false, false),
                (ModelState::Pending(t), true) if now - t >= for_ms => (ModelState::Firing(now), true, false),
                (ModelState::Pending(t), true) => (ModelState::Pending(t), false, false),
                (ModelState::Firing(t), true) => (ModelState::Firing(t), false, false),
                (ModelState::Firing(_), false) => (ModelState::Inactive, false, true),
            };
            let fired = effects.iter().any(|e| matches!(e, Effect::Fired { .. }));
            let resolved = effects.iter().any(|e| matches!(e, Effect::Resolved { .. }));
            prop_assert_eq!(fired, expect_fired, "at {} value {:?}", now, v);
            prop_assert_eq!(resolved, expect_resolved, "at {} value {:?}", now, v);
            prop_assert!(effects.len() <= 1);
            if let Some(Effect::Resolved { fired_for_ms, .. }) = effects.first() {
                let ModelState::Firing(t) = model else { unreachable!() };
                prop_assert_eq!(*fired_for_ms, now - t);
            }
            model = next;
        }
    }
}
