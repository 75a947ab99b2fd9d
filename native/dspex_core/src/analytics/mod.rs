//! Metrics: counters, gauges and histograms with labels, kept per thread and merged on read.
//!
//! Recording goes to the calling thread's shard (one uncontended mutex per shard, never a
//! global lock); a series is found by an opaque key (the caller's canonical bytes for a
//! metric name plus labels) in that shard's table, so the steady-state path hashes a few
//! bytes, updates totals and two window slots, and allocates nothing. Only the first record
//! of a series in a shard, or a histogram bucket a slot has never held, allocates.
//!
//! Each metric has a cardinality limit: once it has `max_series_per_metric` label sets, new
//! label sets are counted in one overflow series labelled `overflow="true"`, so memory stays
//! bounded whatever the callers send. See [`Config`] for the bound.
//!
//! Reads merge the shards: [`query`] aggregates a range (`avg`, `sum`, `min`, `max`, `count`,
//! quantiles, `rate`), builds time series and per-series summaries for the [`export`]ers;
//! [`Snapshot`]s are plain data, serializable and mergeable (a cluster view is the merge of
//! every node's snapshot); [`alerts`] evaluates threshold rules with a `for` duration.
//!
//! ```
//! use dspex_core::analytics::{Analytics, Config, Kind};
//! use dspex_core::analytics::query::{summarize, Aggregation, Range};
//!
//! let metrics = Analytics::new(Config::default());
//! let now = 1_700_000_000_000; // wall-clock milliseconds
//! for latency in [120.0, 80.0, 100.0] {
//!     metrics.record("read_latency_us", Kind::Histogram, &[("session", "s1")], latency, now).unwrap();
//! }
//! let summary = summarize(&metrics, "read_latency_us", &[], Range::LastSeconds(60), now).unwrap();
//! assert_eq!(summary.value(Aggregation::Count), Some(3.0));
//! assert_eq!(summary.value(Aggregation::Max), Some(120.0));
//! ```

pub mod alerts;
pub mod export;
pub mod histogram;
pub mod query;
pub mod window;

use std::cell::Cell as StdCell;
use std::sync::atomic::{AtomicUsize, Ordering};

use ahash::AHashMap;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

pub use window::SeriesData;

/// What a metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Kind {
    /// A monotonically growing total; each record adds a non-negative amount.
    Counter,
    /// A value that goes up and down; the latest record is its value.
    Gauge,
    /// A distribution of non-negative values (latencies, sizes) with quantiles.
    Histogram,
}

impl Kind {
    /// The kind's name (`counter`, `gauge`, `histogram`).
    pub fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// Errors of the analytics engine.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// NaN or an infinity.
    #[error("value {0} is not a finite number")]
    NotFinite(f64),
    /// A negative amount for a counter or a negative histogram value.
    #[error("{kind} values must not be negative (got {value})")]
    Negative {
        /// The metric kind.
        kind: &'static str,
        /// The value given.
        value: f64,
    },
    /// A metric used as another kind than the one it was created as.
    #[error("metric {name} is a {existing}, not a {requested}")]
    KindMismatch {
        /// The metric.
        name: String,
        /// Its kind.
        existing: &'static str,
        /// The kind asked for.
        requested: &'static str,
    },
    /// A metric or label name that is not `[a-zA-Z_][a-zA-Z0-9_]*` (≤ 128 bytes), or a label
    /// name starting with `__`.
    #[error("invalid name {0:?}: use [a-zA-Z_][a-zA-Z0-9_]*, at most 128 bytes")]
    InvalidName(String),
    /// A label value longer than 1,024 bytes, more than 16 labels, or a label given twice.
    #[error("invalid labels: {0}")]
    InvalidLabels(String),
    /// The engine already holds `max_metrics` metrics.
    #[error("too many metrics (limit {0})")]
    TooManyMetrics(usize),
    /// A query range that ends before it starts.
    #[error("time range ends before it starts")]
    InvertedRange,
    /// A query range reaching further back than the windows keep.
    #[error("range starts before the oldest retained data ({oldest_ms} ms)")]
    BeyondRetention {
        /// The oldest time a window still covers.
        oldest_ms: u64,
    },
    /// A time-series step that is not a positive multiple of the window resolution.
    #[error("step {step_ms} ms is not a positive multiple of the {resolution_ms} ms resolution")]
    InvalidStep {
        /// The step asked for.
        step_ms: u64,
        /// The resolution of the range's windows.
        resolution_ms: u64,
    },
    /// Too many points asked of a time series.
    #[error("a time series is limited to {0} points")]
    TooManyPoints(usize),
    /// A snapshot frame that cannot be read.
    #[error("unreadable analytics snapshot: {0}")]
    BadSnapshot(String),
    /// An alert rule that cannot be evaluated.
    #[error("invalid alert rule: {0}")]
    InvalidAlert(String),
}

impl Error {
    /// A stable snake_case name for the error, used as the Erlang atom.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::NotFinite(_) => "not_finite",
            Error::Negative { .. } => "negative_value",
            Error::KindMismatch { .. } => "kind_mismatch",
            Error::InvalidName(_) => "invalid_name",
            Error::InvalidLabels(_) => "invalid_labels",
            Error::TooManyMetrics(_) => "too_many_metrics",
            Error::InvertedRange => "inverted_range",
            Error::BeyondRetention { .. } => "beyond_retention",
            Error::InvalidStep { .. } => "invalid_step",
            Error::TooManyPoints(_) => "too_many_points",
            Error::InvalidAlert(_) => "invalid_alert",
            Error::BadSnapshot(_) => "bad_snapshot",
        }
    }
}

/// Result alias for analytics operations.
pub type Result<T> = std::result::Result<T, Error>;

/// Label pairs sorted by name.
pub type Labels = Vec<(String, String)>;

/// The label set of the overflow series.
pub const OVERFLOW_LABEL: (&str, &str) = ("overflow", "true");

const MAX_NAME: usize = 128;
const MAX_LABEL_VALUE: usize = 1_024;
const MAX_LABELS: usize = 16;

/// Limits of an engine.
///
/// Memory is bounded by `shards × max_metrics × (max_series_per_metric + 1) × S`, where `S`
/// is one series: about 10 KiB of slots (121 cells of count, sum, min, max, latest) plus, for
/// histograms, at most 32 bytes per distinct bucket per cell (see [`histogram::Histogram`];
/// at most 5,122 buckets, in practice a few
/// hundred for a latency distribution), plus at most `key_cache_per_shard` cached keys per shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Shards (one per scheduler thread is right); rounded up to a power of two (so a thread
    /// finds its shard with a mask, not a division), at least 1.
    pub shards: usize,
    /// Distinct metric names.
    pub max_metrics: usize,
    /// Label sets per metric before new ones go to the overflow series.
    pub max_series_per_metric: usize,
    /// Series keys each shard remembers; past it a shard resolves keys through the catalog.
    pub key_cache_per_shard: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            shards: std::thread::available_parallelism().map_or(4, usize::from),
            max_metrics: 1_000,
            max_series_per_metric: 1_000,
            key_cache_per_shard: 65_536,
        }
    }
}

/// A series: its metric and its label set, as numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SeriesId {
    metric: u32,
    series: u32,
}

/// What a caller describes when a key is seen for the first time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesSpec {
    /// The metric name.
    pub name: String,
    /// Label pairs, in any order.
    pub labels: Labels,
}

struct Metric {
    name: String,
    kind: Kind,
    by_labels: AHashMap<Labels, u32>,
    labels: Vec<Labels>,
    overflow: Option<u32>,
}

#[derive(Default)]
struct Catalog {
    metrics: Vec<Metric>,
    by_name: AHashMap<String, u32>,
}

impl Catalog {
    fn resolve(
        &mut self,
        spec: SeriesSpec,
        kind: Kind,
        config: &Config,
    ) -> Result<(SeriesId, bool)> {
        let metric = match self.by_name.get(&spec.name) {
            Some(&m) => m,
            None => {
                if self.metrics.len() >= config.max_metrics {
                    return Err(Error::TooManyMetrics(config.max_metrics));
                }
                let m = self.metrics.len() as u32;
                self.by_name.insert(spec.name.clone(), m);
                self.metrics.push(Metric {
                    name: spec.name,
                    kind,
                    by_labels: AHashMap::new(),
                    labels: Vec::new(),
                    overflow: None,
                });
                m
            }
        };
        let entry = &mut self.metrics[metric as usize];
        if entry.kind != kind {
            return Err(Error::KindMismatch {
                name: entry.name.clone(),
                existing: entry.kind.name(),
                requested: kind.name(),
            });
        }
        if let Some(&series) = entry.by_labels.get(&spec.labels) {
            return Ok((SeriesId { metric, series }, true));
        }
        if entry.by_labels.len() < config.max_series_per_metric {
            let series = entry.labels.len() as u32;
            entry.labels.push(spec.labels.clone());
            entry.by_labels.insert(spec.labels, series);
            return Ok((SeriesId { metric, series }, true));
        }
        let series = match entry.overflow {
            Some(s) => s,
            None => {
                let s = entry.labels.len() as u32;
                let (k, v) = OVERFLOW_LABEL;
                entry.labels.push(vec![(k.to_owned(), v.to_owned())]);
                entry.overflow = Some(s);
                s
            }
        };
        Ok((SeriesId { metric, series }, false))
    }
}

#[derive(Default)]
struct Shard {
    keys: AHashMap<Box<[u8]>, usize>,
    by_id: AHashMap<SeriesId, usize>,
    series: Vec<(SeriesId, SeriesData)>,
    /// Direct-mapped: a caller's 64-bit key id (plus one; 0 = empty) and its series index.
    /// See [`Analytics::record_with_id`].
    fast: Vec<(u64, usize)>,
}

/// Entries of a shard's direct-mapped id cache.
const FAST_SLOTS: usize = 256;

fn fast_slot(id: u64) -> usize {
    // Fibonacci hashing: the top bits of the product spread consecutive ids apart.
    (id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as usize
}

/// Heap bytes of a hash map's table: each bucket holds an entry and a control byte.
fn table_bytes<K, V>(map: &AHashMap<K, V>) -> usize {
    map.capacity() * (std::mem::size_of::<(K, V)>() + 1)
}

fn labels_bytes(labels: &Labels) -> usize {
    labels.capacity() * std::mem::size_of::<(String, String)>()
        + labels
            .iter()
            .map(|(k, v)| k.capacity() + v.capacity())
            .sum::<usize>()
}

impl Catalog {
    fn heap_bytes(&self) -> usize {
        let metric = |m: &Metric| {
            m.name.capacity()
                + table_bytes(&m.by_labels)
                + m.labels.capacity() * std::mem::size_of::<Labels>()
                // Each label set is held twice: as a map key and in the list.
                + 2 * m.labels.iter().map(labels_bytes).sum::<usize>()
        };
        self.metrics.capacity() * std::mem::size_of::<Metric>()
            + self.metrics.iter().map(metric).sum::<usize>()
            + table_bytes(&self.by_name)
            + self.by_name.keys().map(String::capacity).sum::<usize>()
    }
}

impl Shard {
    fn heap_bytes(&self) -> usize {
        table_bytes(&self.keys)
            + self.keys.keys().map(|k| k.len()).sum::<usize>()
            + table_bytes(&self.by_id)
            + self.series.capacity() * std::mem::size_of::<(SeriesId, SeriesData)>()
            + self
                .series
                .iter()
                .map(|(_, d)| d.heap_bytes())
                .sum::<usize>()
    }

    fn slot_for(&mut self, id: SeriesId, kind: Kind) -> usize {
        *self.by_id.entry(id).or_insert_with(|| {
            self.series.push((id, SeriesData::new(kind)));
            self.series.len() - 1
        })
    }
}

static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static THREAD_SHARD: StdCell<usize> = const { StdCell::new(usize::MAX) };
}

/// The shard number of the calling thread (stable for the thread's life).
fn thread_shard() -> usize {
    THREAD_SHARD.with(|s| {
        let mut n = s.get();
        if n == usize::MAX {
            n = NEXT_SHARD.fetch_add(1, Ordering::Relaxed);
            s.set(n);
        }
        n
    })
}

/// The analytics engine: a catalog of metrics and series, and per-thread shards of data.
pub struct Analytics {
    config: Config,
    catalog: RwLock<Catalog>,
    shards: Box<[Mutex<Shard>]>,
}

impl std::fmt::Debug for Analytics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Analytics")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Checks a value against what `kind` accepts.
pub fn check_value(kind: Kind, value: f64) -> Result<()> {
    if !value.is_finite() {
        return Err(Error::NotFinite(value));
    }
    if value < 0.0 && kind != Kind::Gauge {
        return Err(Error::Negative {
            kind: kind.name(),
            value,
        });
    }
    Ok(())
}

/// Checks a metric or label name.
pub fn check_name(name: &str) -> Result<()> {
    let mut bytes = name.bytes();
    let first_ok = matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_');
    if first_ok && name.len() <= MAX_NAME && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        Ok(())
    } else {
        Err(Error::InvalidName(name.to_owned()))
    }
}

/// Checks and sorts a label set.
pub fn normalize_labels(mut labels: Labels) -> Result<Labels> {
    if labels.len() > MAX_LABELS {
        return Err(Error::InvalidLabels(format!(
            "{} labels, at most {MAX_LABELS}",
            labels.len()
        )));
    }
    for (k, v) in &labels {
        check_name(k)?;
        if k.starts_with("__") {
            return Err(Error::InvalidName(k.clone()));
        }
        if v.len() > MAX_LABEL_VALUE {
            return Err(Error::InvalidLabels(format!(
                "value of {k} is {} bytes, at most {MAX_LABEL_VALUE}",
                v.len()
            )));
        }
    }
    labels.sort();
    if labels.windows(2).any(|w| w[0].0 == w[1].0) {
        return Err(Error::InvalidLabels("a label name appears twice".into()));
    }
    Ok(labels)
}

impl Analytics {
    /// An empty engine.
    pub fn new(config: Config) -> Self {
        let config = Config {
            shards: config.shards.max(1).next_power_of_two(),
            ..config
        };
        let shards = (0..config.shards)
            .map(|_| Mutex::new(Shard::default()))
            .collect();
        Analytics {
            config,
            catalog: RwLock::new(Catalog::default()),
            shards,
        }
    }

    /// The limits this engine was built with.
    pub fn config(&self) -> Config {
        self.config
    }

    /// Records `value` for the series `key` at `now_ms` (wall-clock milliseconds).
    ///
    /// `key` is any byte string that identifies one metric name plus label set for this
    /// caller (two keys may name the same series; one key must never name two). `describe`
    /// is called only the first time a shard sees `key`, to learn the name and labels. The
    /// value is checked before anything is recorded.
    ///
    /// # Errors
    /// [`Error::NotFinite`], [`Error::Negative`], [`Error::KindMismatch`], and whatever
    /// `describe` or name checks return; nothing is recorded then.
    pub fn record_keyed(
        &self,
        key: &[u8],
        kind: Kind,
        value: f64,
        now_ms: u64,
        describe: impl FnOnce() -> Result<SeriesSpec>,
    ) -> Result<()> {
        check_value(kind, value)?;
        let shard = self.thread_shard();
        {
            let mut guard = shard.lock();
            let shard = &mut *guard;
            if let Some(&i) = shard.keys.get(key) {
                let (id, data) = &mut shard.series[i];
                if data.kind == kind {
                    data.record(value, now_ms);
                    return Ok(());
                }
                let id = *id;
                let existing = data.kind;
                drop(guard);
                return Err(self.mismatch(id, existing, kind));
            }
        }
        let mut spec = describe()?;
        check_name(&spec.name)?;
        spec.labels = normalize_labels(std::mem::take(&mut spec.labels))?;
        let (id, admitted) = self.catalog.write().resolve(spec, kind, &self.config)?;
        let mut guard = shard.lock();
        let i = guard.slot_for(id, kind);
        if admitted && guard.keys.len() < self.config.key_cache_per_shard {
            guard.keys.insert(key.into(), i);
        }
        guard.series[i].1.record(value, now_ms);
        Ok(())
    }

    /// [`record_keyed`](Self::record_keyed) for a caller that can name `key` by a 64-bit `id`
    /// of its own (the NIF uses the atom of a label-less metric name: the same atom is the
    /// same word for the life of the VM). A hit in the shard's small direct-mapped cache skips
    /// hashing and comparing the key bytes; a miss takes the keyed path and fills the cache.
    /// `id` must always stand for the same `key`.
    ///
    /// # Errors
    /// As [`record_keyed`](Self::record_keyed).
    pub fn record_with_id(
        &self,
        id: u64,
        key: &[u8],
        kind: Kind,
        value: f64,
        now_ms: u64,
        describe: impl FnOnce() -> Result<SeriesSpec>,
    ) -> Result<()> {
        check_value(kind, value)?;
        let shard = self.thread_shard();
        let slot = fast_slot(id);
        {
            let mut guard = shard.lock();
            let shard = &mut *guard;
            if let Some(&(tag, i)) = shard.fast.get(slot) {
                if tag == id.wrapping_add(1) {
                    let data = &mut shard.series[i].1;
                    if data.kind == kind {
                        data.record(value, now_ms);
                        return Ok(());
                    }
                }
            }
        }
        self.record_keyed(key, kind, value, now_ms, describe)?;
        let mut guard = shard.lock();
        let shard = &mut *guard;
        if let Some(&i) = shard.keys.get(key) {
            if shard.fast.is_empty() {
                shard.fast = vec![(0, 0); FAST_SLOTS];
            }
            shard.fast[slot] = (id.wrapping_add(1), i);
        }
        Ok(())
    }

    /// The calling thread's shard (the count is a power of two: a mask, not a division).
    fn thread_shard(&self) -> &Mutex<Shard> {
        &self.shards[thread_shard() & (self.shards.len() - 1)]
    }

    fn mismatch(&self, id: SeriesId, existing: Kind, requested: Kind) -> Error {
        Error::KindMismatch {
            name: self.catalog.read().metrics[id.metric as usize].name.clone(),
            existing: existing.name(),
            requested: requested.name(),
        }
    }

    /// Records `value` for `name` with `labels` (any order) at `now_ms`.
    ///
    /// # Errors
    /// As [`Analytics::record_keyed`].
    pub fn record(
        &self,
        name: &str,
        kind: Kind,
        labels: &[(&str, &str)],
        value: f64,
        now_ms: u64,
    ) -> Result<()> {
        let mut sorted: Vec<_> = labels.to_vec();
        sorted.sort();
        let mut key = Vec::with_capacity(64);
        key.extend_from_slice(name.as_bytes());
        for (k, v) in &sorted {
            key.push(0);
            key.extend_from_slice(k.as_bytes());
            key.push(0);
            key.extend_from_slice(v.as_bytes());
        }
        self.record_keyed(&key, kind, value, now_ms, || {
            Ok(SeriesSpec {
                name: name.to_owned(),
                labels: sorted
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            })
        })
    }

    /// Heap bytes the engine holds, counted from its structures' capacities (the allocator's
    /// own bookkeeping excluded). Takes each shard's lock in turn: a monitoring call, not a
    /// hot one.
    pub fn heap_bytes(&self) -> usize {
        self.catalog.read().heap_bytes()
            + self
                .shards
                .iter()
                .map(|s| s.lock().heap_bytes())
                .sum::<usize>()
    }

    /// The kind of a metric, if it exists.
    pub fn kind_of(&self, name: &str) -> Option<Kind> {
        let catalog = self.catalog.read();
        let &m = catalog.by_name.get(name)?;
        Some(catalog.metrics[m as usize].kind)
    }

    /// Every metric name with its kind and number of series (overflow included).
    pub fn metrics(&self) -> Vec<(String, Kind, usize)> {
        let catalog = self.catalog.read();
        catalog
            .metrics
            .iter()
            .map(|m| (m.name.clone(), m.kind, m.labels.len()))
            .collect()
    }

    /// A merged copy of every series, for export, cluster merging or offline queries.
    pub fn snapshot(&self, now_ms: u64) -> Snapshot {
        let mut merged: AHashMap<SeriesId, SeriesData> = AHashMap::new();
        for shard in self.shards.iter() {
            let shard = shard.lock();
            for (id, data) in &shard.series {
                match merged.get_mut(id) {
                    Some(m) => m.merge(data),
                    None => {
                        merged.insert(*id, data.clone());
                    }
                }
            }
        }
        let catalog = self.catalog.read();
        let mut series: Vec<SeriesSnapshot> = merged
            .into_iter()
            .map(|(id, data)| {
                let metric = &catalog.metrics[id.metric as usize];
                SeriesSnapshot {
                    metric: metric.name.clone(),
                    labels: metric.labels[id.series as usize].clone(),
                    data,
                }
            })
            .collect();
        series.sort_by(|a, b| (&a.metric, &a.labels).cmp(&(&b.metric, &b.labels)));
        Snapshot {
            taken_at_ms: now_ms,
            series,
        }
    }

    /// Forgets every metric and series.
    pub fn clear(&self) {
        let mut catalog = self.catalog.write();
        for shard in self.shards.iter() {
            *shard.lock() = Shard::default();
        }
        *catalog = Catalog::default();
    }
}

/// One series in a [`Snapshot`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeriesSnapshot {
    /// Metric name.
    pub metric: String,
    /// Labels, sorted by name.
    pub labels: Labels,
    /// Totals and windows.
    pub data: SeriesData,
}

/// A merged, self-contained copy of an engine's data.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// When it was taken (wall-clock ms).
    pub taken_at_ms: u64,
    /// Every series, sorted by metric and labels.
    pub series: Vec<SeriesSnapshot>,
}

impl Snapshot {
    /// Every metric name with its kind and number of series, as [`Analytics::metrics`].
    pub fn metrics(&self) -> Vec<(String, Kind, usize)> {
        let mut out: Vec<(String, Kind, usize)> = Vec::new();
        for series in &self.series {
            match out.last_mut() {
                Some(last) if last.0 == series.metric => last.2 += 1,
                _ => out.push((series.metric.clone(), series.data.kind, 1)),
            }
        }
        out
    }

    /// The snapshot as a checked frame (magic, version, length, CRC-32) for another node.
    pub fn to_frame(&self) -> Vec<u8> {
        let payload = postcard::to_stdvec(self).expect("a snapshot always serializes");
        crate::snapshot::encode_frame(crate::snapshot::FrameKind::Analytics, &payload)
    }

    /// Reads a frame written by [`Snapshot::to_frame`].
    ///
    /// # Errors
    /// [`Error::BadSnapshot`] for a damaged frame, another kind of frame, or a payload that
    /// does not decode.
    pub fn from_frame(bytes: &[u8]) -> Result<Snapshot> {
        let frame =
            crate::snapshot::decode_frame(bytes).map_err(|e| Error::BadSnapshot(e.to_string()))?;
        if frame.kind != crate::snapshot::FrameKind::Analytics {
            return Err(Error::BadSnapshot("not an analytics frame".into()));
        }
        postcard::from_bytes(frame.payload).map_err(|e| Error::BadSnapshot(e.to_string()))
    }

    /// Adds every series of `other` (a cluster view is the merge of every node's snapshot).
    ///
    /// # Errors
    /// [`Error::KindMismatch`] when a metric has different kinds in the two; `self` is
    /// unchanged then.
    pub fn merge(&mut self, other: &Snapshot) -> Result<()> {
        let mut index: AHashMap<(&str, &Labels), usize> = AHashMap::new();
        for (i, s) in self.series.iter().enumerate() {
            index.insert((s.metric.as_str(), &s.labels), i);
        }
        let mut plan = Vec::with_capacity(other.series.len());
        for theirs in &other.series {
            let target = index
                .get(&(theirs.metric.as_str(), &theirs.labels))
                .copied();
            if let Some(i) = target {
                let mine = &self.series[i];
                if mine.data.kind != theirs.data.kind {
                    return Err(Error::KindMismatch {
                        name: theirs.metric.clone(),
                        existing: mine.data.kind.name(),
                        requested: theirs.data.kind.name(),
                    });
                }
            }
            plan.push(target);
        }
        drop(index);
        for (theirs, target) in other.series.iter().zip(plan) {
            match target {
                Some(i) => self.series[i].data.merge(&theirs.data),
                None => self.series.push(theirs.clone()),
            }
        }
        self.series
            .sort_by(|a, b| (&a.metric, &a.labels).cmp(&(&b.metric, &b.labels)));
        self.taken_at_ms = self.taken_at_ms.max(other.taken_at_ms);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine(max_series: usize) -> Analytics {
        Analytics::new(Config {
            shards: 2,
            max_metrics: 10,
            max_series_per_metric: max_series,
            key_cache_per_shard: 100,
        })
    }

    #[test]
    fn a_metric_keeps_its_kind() {
        let a = engine(10);
        a.record("x", Kind::Counter, &[], 1.0, 0).unwrap();
        let err = a.record("x", Kind::Gauge, &[], 1.0, 0).unwrap_err();
        assert_eq!(err.reason(), "kind_mismatch");
    }

    #[test]
    fn bad_values_and_names_record_nothing() {
        let a = engine(10);
        assert_eq!(
            a.record("x", Kind::Counter, &[], f64::NAN, 0)
                .unwrap_err()
                .reason(),
            "not_finite"
        );
        assert_eq!(
            a.record("x", Kind::Counter, &[], -1.0, 0)
                .unwrap_err()
                .reason(),
            "negative_value"
        );
        assert_eq!(
            a.record("1x", Kind::Counter, &[], 1.0, 0)
                .unwrap_err()
                .reason(),
            "invalid_name"
        );
        assert_eq!(
            a.record("x", Kind::Counter, &[("__a", "b")], 1.0, 0)
                .unwrap_err()
                .reason(),
            "invalid_name"
        );
        assert!(a.metrics().is_empty());
        a.record("g", Kind::Gauge, &[], -3.5, 0).unwrap();
    }

    #[test]
    fn label_sets_past_the_limit_share_the_overflow_series() {
        let a = engine(3);
        for i in 0..50 {
            let v = i.to_string();
            a.record("x", Kind::Counter, &[("id", &v)], 1.0, 0).unwrap();
        }
        let snap = a.snapshot(0);
        assert_eq!(snap.series.len(), 4);
        let overflow = snap
            .series
            .iter()
            .find(|s| s.labels == vec![("overflow".to_owned(), "true".to_owned())])
            .unwrap();
        assert_eq!(overflow.data.total.stats.sum, 47.0);
        let total: f64 = snap.series.iter().map(|s| s.data.total.stats.sum).sum();
        assert_eq!(total, 50.0);
    }

    #[test]
    fn snapshots_merge_series_by_name_and_labels() {
        let a = engine(10);
        let b = engine(10);
        a.record("x", Kind::Counter, &[("n", "1")], 2.0, 1_000)
            .unwrap();
        b.record("x", Kind::Counter, &[("n", "1")], 3.0, 1_000)
            .unwrap();
        b.record("x", Kind::Counter, &[("n", "2")], 4.0, 1_000)
            .unwrap();
        let mut snap = a.snapshot(1_000);
        let theirs = Snapshot::from_frame(&b.snapshot(1_000).to_frame()).unwrap();
        snap.merge(&theirs).unwrap();
        assert_eq!(snap.series.len(), 2);
        assert_eq!(snap.series[0].data.total.stats.sum, 5.0);
        let c = engine(10);
        c.record("x", Kind::Gauge, &[("n", "1")], 1.0, 0).unwrap();
        let before = snap.clone();
        assert!(snap.merge(&c.snapshot(0)).is_err());
        assert_eq!(snap, before);
    }

    #[test]
    fn records_by_id_and_by_key_reach_the_same_series_and_survive_a_clear() {
        let a = engine(10);
        let spec = || {
            Ok(SeriesSpec {
                name: "hits".into(),
                labels: vec![],
            })
        };
        for _ in 0..3 {
            a.record_with_id(7, b"hits", Kind::Counter, 1.0, 1_000, spec)
                .unwrap();
            a.record_keyed(b"hits", Kind::Counter, 10.0, 1_000, spec)
                .unwrap();
        }
        let snap = a.snapshot(3_000);
        assert_eq!(snap.series.len(), 1);
        assert_eq!(snap.series[0].data.total.stats.sum, 33.0);
        assert!(matches!(
            a.record_with_id(7, b"hits", Kind::Gauge, 1.0, 1_000, spec),
            Err(Error::KindMismatch { .. })
        ));
        a.clear();
        // The id cache went with the shards: the next record starts a fresh series.
        a.record_with_id(7, b"hits", Kind::Gauge, 5.0, 2_000, spec)
            .unwrap();
        let snap = a.snapshot(3_000);
        assert_eq!(snap.series[0].data.kind, Kind::Gauge);
        assert_eq!(snap.series[0].data.total.stats.count, 1);
    }
}
