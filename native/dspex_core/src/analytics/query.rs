//! Reading metrics: ranges, aggregations, time series and per-series summaries.
//!
//! A range is answered from the finest ring that still holds the slot containing its start:
//! the second slots within the last 60 s, the minute slots within the last 60 min. A range
//! starting further back is refused with [`Error::BeyondRetention`] rather than answered from
//! partial data; [`Range::All`] uses the all-time totals.

use super::histogram::Histogram;
use super::window::{Cell, Ring, SeriesData, Stats, MINUTE_MS, SECOND_MS, SLOTS};
use super::{Analytics, Error, Kind, Labels, Result, Snapshot};

/// The most points a time series returns.
pub const MAX_POINTS: usize = 3_600;

/// Where series data comes from: a live engine or a snapshot.
pub trait Source {
    /// Calls `f` with every series of `metric` (every series when `None`).
    fn visit(&self, metric: Option<&str>, f: &mut dyn FnMut(&str, &Labels, &SeriesData));
}

impl Source for Analytics {
    fn visit(&self, metric: Option<&str>, f: &mut dyn FnMut(&str, &Labels, &SeriesData)) {
        let catalog = self.catalog.read();
        let wanted = match metric {
            Some(name) => match catalog.by_name.get(name) {
                Some(&m) => Some(m),
                None => return,
            },
            None => None,
        };
        for shard in self.shards.iter() {
            let shard = shard.lock();
            for (id, data) in &shard.series {
                if wanted.is_none_or(|m| m == id.metric) {
                    let m = &catalog.metrics[id.metric as usize];
                    f(&m.name, &m.labels[id.series as usize], data);
                }
            }
        }
    }
}

impl Source for Snapshot {
    fn visit(&self, metric: Option<&str>, f: &mut dyn FnMut(&str, &Labels, &SeriesData)) {
        for s in &self.series {
            if metric.is_none_or(|m| m == s.metric) {
                f(&s.metric, &s.labels, &s.data);
            }
        }
    }
}

/// A time range to aggregate over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Range {
    /// The last `n` second slots (1..=60), or minute slots when `n` is 61..=3600 (rounded up
    /// to whole minutes), ending now.
    LastSeconds(u64),
    /// Wall-clock milliseconds, both ends included.
    Between {
        /// First millisecond.
        start_ms: u64,
        /// Last millisecond.
        end_ms: u64,
    },
    /// Every record since the series appeared.
    All,
}

/// How to reduce the records of a range to one number.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Aggregation {
    /// Mean of the values.
    Avg,
    /// Sum of the values (a counter's increase).
    Sum,
    /// Smallest value.
    Min,
    /// Largest value.
    Max,
    /// Number of records.
    Count,
    /// A quantile in `[0, 1]` (histograms only).
    Quantile(f64),
    /// Per second: a counter's increase, or the number of records of other kinds.
    Rate,
    /// The latest value (a gauge's current value).
    Last,
}

/// Every figure a summary reports, by name, in the order the exporters print them.
pub const FIGURES: [(&str, Aggregation); 10] = [
    ("count", Aggregation::Count),
    ("sum", Aggregation::Sum),
    ("min", Aggregation::Min),
    ("max", Aggregation::Max),
    ("avg", Aggregation::Avg),
    ("last", Aggregation::Last),
    ("p50", Aggregation::Quantile(0.5)),
    ("p95", Aggregation::Quantile(0.95)),
    ("p99", Aggregation::Quantile(0.99)),
    ("rate", Aggregation::Rate),
];

/// The aggregation named `name` (one of [`FIGURES`]).
pub fn aggregation_named(name: &str) -> Option<Aggregation> {
    FIGURES.iter().find(|(n, _)| *n == name).map(|(_, a)| *a)
}

/// The records of a range, merged over series.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// The metric's kind (`None` when no series matched).
    pub kind: Option<Kind>,
    /// Count, sum, extremes, latest.
    pub stats: Stats,
    /// The distribution (histograms).
    pub hist: Histogram,
    /// Milliseconds the range covers (for rates); `None` for [`Range::All`].
    pub duration_ms: Option<u64>,
}

impl Summary {
    fn empty(duration_ms: Option<u64>) -> Self {
        Summary {
            kind: None,
            stats: Stats::default(),
            hist: Histogram::new(),
            duration_ms,
        }
    }

    fn add(&mut self, kind: Kind, cell: &Cell) {
        self.kind = Some(kind);
        self.stats.merge(&cell.stats);
        self.hist.merge(&cell.hist);
    }

    /// The aggregation's value; `None` when it has none (no records, a quantile of a counter,
    /// a rate over all time).
    pub fn value(&self, aggregation: Aggregation) -> Option<f64> {
        let s = &self.stats;
        let any = s.count > 0;
        match aggregation {
            Aggregation::Count => Some(s.count as f64),
            Aggregation::Sum => Some(s.sum),
            Aggregation::Avg => any.then(|| s.sum / s.count as f64),
            Aggregation::Min => any.then_some(s.min),
            Aggregation::Max => any.then_some(s.max),
            Aggregation::Last => any.then_some(s.last),
            Aggregation::Quantile(q) => match self.kind {
                Some(Kind::Histogram) => self.hist.quantile(q, s.min, s.max),
                _ => None,
            },
            Aggregation::Rate => {
                let secs = self.duration_ms? as f64 / 1_000.0;
                let amount = match self.kind {
                    Some(Kind::Counter) => s.sum,
                    _ => s.count as f64,
                };
                Some(if secs > 0.0 { amount / secs } else { 0.0 })
            }
        }
    }
}

/// Which ring a range reads, and the part of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolved {
    /// Slots of the ring with this width overlapping `[start_ms, end_ms]`.
    Window {
        /// Slot width (1,000 or 60,000 ms).
        width_ms: u64,
        /// First millisecond.
        start_ms: u64,
        /// Last millisecond.
        end_ms: u64,
        /// Milliseconds the selected slots cover up to now.
        duration_ms: u64,
    },
    /// The totals.
    All,
}

/// Decides which ring answers `range` at `now_ms`.
///
/// # Errors
/// [`Error::InvertedRange`], [`Error::BeyondRetention`].
pub fn resolve(range: Range, now_ms: u64) -> Result<Resolved> {
    let (start_ms, end_ms) = match range {
        Range::All => return Ok(Resolved::All),
        Range::LastSeconds(n) => {
            let n = n.max(1);
            let (width, slots) = if n <= SLOTS as u64 {
                (SECOND_MS, n)
            } else {
                (MINUTE_MS, n.div_ceil(60))
            };
            let first = (now_ms / width).saturating_sub(slots - 1) * width;
            (first, now_ms)
        }
        Range::Between { start_ms, end_ms } => (start_ms, end_ms),
    };
    if end_ms < start_ms {
        return Err(Error::InvertedRange);
    }
    for width in [SECOND_MS, MINUTE_MS] {
        let oldest = (now_ms / width).saturating_sub(SLOTS as u64 - 1) * width;
        if start_ms >= oldest {
            let first = start_ms / width * width;
            let covered_end = (end_ms / width * width + width).min(now_ms + 1);
            return Ok(Resolved::Window {
                width_ms: width,
                start_ms,
                end_ms,
                duration_ms: covered_end.saturating_sub(first).max(1),
            });
        }
    }
    Err(Error::BeyondRetention {
        oldest_ms: (now_ms / MINUTE_MS).saturating_sub(SLOTS as u64 - 1) * MINUTE_MS,
    })
}

fn ring(data: &SeriesData, width_ms: u64) -> &Ring {
    if width_ms == SECOND_MS {
        &data.seconds
    } else {
        &data.minutes
    }
}

fn matches(labels: &Labels, filter: &[(&str, &str)]) -> bool {
    filter
        .iter()
        .all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v))
}

fn add_range(summary: &mut Summary, data: &SeriesData, resolved: Resolved, now_ms: u64) {
    match resolved {
        Resolved::All => summary.add(data.kind, &data.total),
        Resolved::Window {
            width_ms,
            start_ms,
            end_ms,
            ..
        } => {
            for slot in ring(data, width_ms).cells_in(start_ms, end_ms, now_ms) {
                summary.add(data.kind, &slot.cell);
            }
        }
    }
}

fn duration(resolved: Resolved) -> Option<u64> {
    match resolved {
        Resolved::Window { duration_ms, .. } => Some(duration_ms),
        Resolved::All => None,
    }
}

/// Merges every series of `metric` whose labels include `filter` over `range`.
///
/// # Errors
/// As [`resolve`].
pub fn summarize(
    source: &impl Source,
    metric: &str,
    filter: &[(&str, &str)],
    range: Range,
    now_ms: u64,
) -> Result<Summary> {
    summarize_many(source, &[metric], filter, range, now_ms)
}

/// Merges every series of several metrics (say, read and write latencies) over `range`.
/// Merging a counter with a histogram keeps the last kind seen; merge metrics of one kind.
///
/// # Errors
/// As [`resolve`].
pub fn summarize_many(
    source: &impl Source,
    metrics: &[&str],
    filter: &[(&str, &str)],
    range: Range,
    now_ms: u64,
) -> Result<Summary> {
    let resolved = resolve(range, now_ms)?;
    let mut summary = Summary::empty(duration(resolved));
    for metric in metrics {
        source.visit(Some(metric), &mut |_, labels, data| {
            if matches(labels, filter) {
                add_range(&mut summary, data, resolved, now_ms);
            }
        });
    }
    Ok(summary)
}

/// `metric` over `[start_ms, end_ms]` in steps of `step_ms`: one `(step start, summary)` per
/// step, empty steps included.
///
/// # Errors
/// As [`resolve`]; [`Error::InvalidStep`] unless `step_ms` is a positive multiple of the
/// resolution (1 s within the last minute, 1 min within the last hour);
/// [`Error::TooManyPoints`] past [`MAX_POINTS`].
pub fn time_series(
    source: &impl Source,
    metric: &str,
    filter: &[(&str, &str)],
    start_ms: u64,
    end_ms: u64,
    step_ms: u64,
    now_ms: u64,
) -> Result<Vec<(u64, Summary)>> {
    let resolved = resolve(Range::Between { start_ms, end_ms }, now_ms)?;
    let Resolved::Window { width_ms, .. } = resolved else {
        unreachable!("a Between range never resolves to the totals")
    };
    if step_ms == 0 || !step_ms.is_multiple_of(width_ms) {
        return Err(Error::InvalidStep {
            step_ms,
            resolution_ms: width_ms,
        });
    }
    let first = start_ms / width_ms * width_ms;
    let points = ((end_ms - first) / step_ms + 1) as usize;
    if points > MAX_POINTS {
        return Err(Error::TooManyPoints(MAX_POINTS));
    }
    let mut out: Vec<(u64, Summary)> = (0..points as u64)
        .map(|i| (first + i * step_ms, Summary::empty(Some(step_ms))))
        .collect();
    source.visit(Some(metric), &mut |_, labels, data| {
        if !matches(labels, filter) {
            return;
        }
        for slot in ring(data, width_ms).cells_in(start_ms, end_ms, now_ms) {
            let at = slot.stamp * width_ms;
            let i = (at.saturating_sub(first) / step_ms) as usize;
            if let Some((_, summary)) = out.get_mut(i) {
                summary.add(data.kind, &slot.cell);
            }
        }
    });
    Ok(out)
}

/// One series over a range, with its all-time totals (for exporters).
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesSummary {
    /// Metric name.
    pub metric: String,
    /// Metric kind.
    pub kind: Kind,
    /// Labels, sorted by name.
    pub labels: Labels,
    /// The range's records.
    pub window: Summary,
    /// Every record since the series appeared.
    pub total: Stats,
}

/// Every series over `range`, sorted by metric and labels.
///
/// # Errors
/// As [`resolve`].
pub fn series_summaries(
    source: &impl Source,
    range: Range,
    now_ms: u64,
) -> Result<Vec<SeriesSummary>> {
    let resolved = resolve(range, now_ms)?;
    let mut out: Vec<SeriesSummary> = Vec::new();
    let mut index: ahash::AHashMap<(String, Labels), usize> = ahash::AHashMap::new();
    source.visit(None, &mut |metric, labels, data| {
        let key = (metric.to_owned(), labels.clone());
        let i = *index.entry(key).or_insert_with(|| {
            out.push(SeriesSummary {
                metric: metric.to_owned(),
                kind: data.kind,
                labels: labels.clone(),
                window: Summary {
                    kind: Some(data.kind),
                    ..Summary::empty(duration(resolved))
                },
                total: Stats::default(),
            });
            out.len() - 1
        });
        add_range(&mut out[i].window, data, resolved, now_ms);
        out[i].total.merge(&data.total.stats);
    });
    out.sort_by(|a, b| (&a.metric, &a.labels).cmp(&(&b.metric, &b.labels)));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analytics::Config;

    const T0: u64 = 1_700_000_000_000;

    #[test]
    fn ranges_pick_the_finest_ring_that_holds_them() {
        assert!(matches!(
            resolve(Range::LastSeconds(60), T0).unwrap(),
            Resolved::Window {
                width_ms: SECOND_MS,
                ..
            }
        ));
        assert!(matches!(
            resolve(Range::LastSeconds(3_600), T0).unwrap(),
            Resolved::Window {
                width_ms: MINUTE_MS,
                ..
            }
        ));
        assert_eq!(
            resolve(
                Range::Between {
                    start_ms: T0,
                    end_ms: T0 - 1
                },
                T0
            ),
            Err(Error::InvertedRange)
        );
        assert!(matches!(
            resolve(
                Range::Between {
                    start_ms: T0 - 7_200_000,
                    end_ms: T0
                },
                T0
            ),
            Err(Error::BeyondRetention { .. })
        ));
    }

    #[test]
    fn aggregations_over_a_window() {
        let a = Analytics::new(Config::default());
        for (i, v) in [10.0, 20.0, 30.0, 40.0].into_iter().enumerate() {
            a.record(
                "lat",
                Kind::Histogram,
                &[("op", "read")],
                v,
                T0 - i as u64 * 1_000,
            )
            .unwrap();
        }
        a.record("lat", Kind::Histogram, &[("op", "write")], 500.0, T0)
            .unwrap();
        let s = summarize(&a, "lat", &[("op", "read")], Range::LastSeconds(60), T0).unwrap();
        assert_eq!(s.value(Aggregation::Count), Some(4.0));
        assert_eq!(s.value(Aggregation::Avg), Some(25.0));
        assert_eq!(s.value(Aggregation::Min), Some(10.0));
        assert_eq!(s.value(Aggregation::Max), Some(40.0));
        let two = summarize(&a, "lat", &[("op", "read")], Range::LastSeconds(2), T0).unwrap();
        assert_eq!(two.value(Aggregation::Count), Some(2.0));
        let all = summarize(&a, "lat", &[], Range::All, T0).unwrap();
        assert_eq!(all.value(Aggregation::Sum), Some(600.0));
        assert_eq!(all.value(Aggregation::Rate), None);
        let none = summarize(&a, "nope", &[], Range::All, T0).unwrap();
        assert_eq!(none.value(Aggregation::Avg), None);
    }

    #[test]
    fn a_time_series_has_one_point_per_step() {
        let a = Analytics::new(Config::default());
        for i in 0..10u64 {
            a.record("c", Kind::Counter, &[], 1.0, T0 - i * 1_000)
                .unwrap();
        }
        let start = T0 - 9_999;
        let pts = time_series(&a, "c", &[], start, T0, 2_000, T0).unwrap();
        let total: u64 = pts.iter().map(|(_, s)| s.stats.count).sum();
        assert_eq!(total, 10);
        assert!(matches!(
            time_series(&a, "c", &[], start, T0, 1_500, T0),
            Err(Error::InvalidStep { .. })
        ));
    }
}
