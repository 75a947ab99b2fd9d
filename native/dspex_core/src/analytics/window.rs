//! One series' data: all-time totals, 60 one-second slots and 60 one-minute slots.
//!
//! A slot is stamped with the second (or minute) it covers; the ring index is the stamp
//! modulo 60, so a slot is recycled in place when its time comes round again and retention
//! is exactly the last 60 s and the last 60 min. A record older than a slot's current stamp
//! (a wall clock stepped backwards) still counts in the totals but in no window.

use serde::{Deserialize, Serialize};

use super::histogram::Histogram;
use super::Kind;

/// Slots per ring.
pub const SLOTS: usize = 60;
/// Width of a second slot, in milliseconds.
pub const SECOND_MS: u64 = 1_000;
/// Width of a minute slot, in milliseconds.
pub const MINUTE_MS: u64 = 60_000;

/// Count, sum, extremes and the latest value of a set of records.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Records counted.
    pub count: u64,
    /// Sum of the recorded values.
    pub sum: f64,
    /// Smallest value (`+∞` when empty).
    pub min: f64,
    /// Largest value (`-∞` when empty).
    pub max: f64,
    /// The latest value, for gauges.
    pub last: f64,
    /// When the latest value was recorded (ms).
    pub last_ms: u64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            count: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            last: 0.0,
            last_ms: 0,
        }
    }
}

impl Stats {
    /// Adds one record.
    pub fn add(&mut self, value: f64, now_ms: u64) {
        self.count += 1;
        self.sum += value;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
        if now_ms >= self.last_ms {
            self.last = value;
            self.last_ms = now_ms;
        }
    }

    /// Adds every record of `other`.
    pub fn merge(&mut self, other: &Stats) {
        if other.count == 0 {
            return;
        }
        self.count += other.count;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        if other.last_ms >= self.last_ms {
            self.last = other.last;
            self.last_ms = other.last_ms;
        }
    }
}

/// Stats plus, for histograms, the value distribution.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    /// Count, sum and extremes.
    pub stats: Stats,
    /// The distribution (empty for counters and gauges).
    pub hist: Histogram,
}

impl Cell {
    #[inline]
    fn add(&mut self, kind: Kind, value: f64, now_ms: u64) {
        self.stats.add(value, now_ms);
        if kind == Kind::Histogram {
            self.hist.record(value);
        }
    }

    /// Adds every record of `other`.
    pub fn merge(&mut self, other: &Cell) {
        self.stats.merge(&other.stats);
        self.hist.merge(&other.hist);
    }

    fn clear(&mut self) {
        self.stats = Stats::default();
        self.hist.clear();
    }
}

/// A slot of a ring: the cell of one second or one minute.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Slot {
    /// The second or minute (since the epoch) this slot holds; meaningless when the cell is empty.
    pub stamp: u64,
    /// What was recorded in it.
    pub cell: Cell,
}

/// 60 slots of a fixed width.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ring {
    width_ms: u64,
    slots: Vec<Slot>,
}

impl Ring {
    fn new(width_ms: u64) -> Self {
        Ring {
            width_ms,
            slots: vec![Slot::default(); SLOTS],
        }
    }

    /// Slot width in milliseconds.
    pub fn width_ms(&self) -> u64 {
        self.width_ms
    }

    /// The cell of the slot for `stamp` (`now_ms / width_ms`, computed by the caller, where
    /// the width is a constant and the division cheap).
    #[inline]
    fn cell_for(&mut self, stamp: u64) -> Option<&mut Cell> {
        let slot = &mut self.slots[(stamp % SLOTS as u64) as usize];
        if slot.stamp != stamp || slot.cell.stats.count == 0 {
            if slot.cell.stats.count > 0 && slot.stamp > stamp {
                return None;
            }
            slot.stamp = stamp;
            slot.cell.clear();
        }
        Some(&mut slot.cell)
    }

    /// The non-empty slots whose time overlaps `[start_ms, end_ms]` and that are still retained
    /// at `now_ms`.
    pub fn cells_in(
        &self,
        start_ms: u64,
        end_ms: u64,
        now_ms: u64,
    ) -> impl Iterator<Item = &Slot> + '_ {
        let width = self.width_ms;
        let newest = now_ms / width;
        let oldest = newest.saturating_sub(SLOTS as u64 - 1);
        self.slots.iter().filter(move |s| {
            let from = s.stamp * width;
            s.cell.stats.count > 0
                && s.stamp >= oldest
                && s.stamp <= newest
                && from <= end_ms
                && from + width > start_ms
        })
    }

    /// Adds every slot of `other`: equal stamps add up, a newer stamp replaces an older one.
    pub fn merge(&mut self, other: &Ring) {
        for (mine, theirs) in self.slots.iter_mut().zip(&other.slots) {
            if theirs.cell.stats.count == 0 {
                continue;
            }
            if mine.cell.stats.count == 0 || theirs.stamp > mine.stamp {
                mine.clone_from(theirs);
            } else if theirs.stamp == mine.stamp {
                mine.cell.merge(&theirs.cell);
            }
        }
    }
}

/// Everything kept for one series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeriesData {
    /// Counter, gauge or histogram.
    pub kind: Kind,
    /// Every record since the series appeared.
    pub total: Cell,
    /// The last 60 seconds.
    pub seconds: Ring,
    /// The last 60 minutes.
    pub minutes: Ring,
}

impl SeriesData {
    /// An empty series of `kind`.
    pub fn new(kind: Kind) -> Self {
        SeriesData {
            kind,
            total: Cell::default(),
            seconds: Ring::new(SECOND_MS),
            minutes: Ring::new(MINUTE_MS),
        }
    }

    /// Records `value` at `now_ms` (wall-clock milliseconds).
    pub fn record(&mut self, value: f64, now_ms: u64) {
        let kind = self.kind;
        self.total.add(kind, value, now_ms);
        if let Some(cell) = self.seconds.cell_for(now_ms / SECOND_MS) {
            cell.add(kind, value, now_ms);
        }
        if let Some(cell) = self.minutes.cell_for(now_ms / MINUTE_MS) {
            cell.add(kind, value, now_ms);
        }
    }

    /// Heap bytes held: the slots and every histogram's buckets.
    pub fn heap_bytes(&self) -> usize {
        let ring = |r: &Ring| {
            r.slots.capacity() * std::mem::size_of::<Slot>()
                + r.slots
                    .iter()
                    .map(|s| s.cell.hist.heap_bytes())
                    .sum::<usize>()
        };
        self.total.hist.heap_bytes() + ring(&self.seconds) + ring(&self.minutes)
    }

    /// Adds every record of `other` (same kind).
    pub fn merge(&mut self, other: &SeriesData) {
        self.total.merge(&other.total);
        self.seconds.merge(&other.seconds);
        self.minutes.merge(&other.minutes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_recycled_after_sixty_widths() {
        let mut s = SeriesData::new(Kind::Counter);
        s.record(1.0, 0);
        s.record(2.0, 60_000);
        let now = 60_000;
        let in_window: Vec<_> = s.seconds.cells_in(0, now, now).collect();
        assert_eq!(in_window.len(), 1);
        assert_eq!(in_window[0].cell.stats.sum, 2.0);
        assert_eq!(s.total.stats.sum, 3.0);
        let minutes: u64 = s
            .minutes
            .cells_in(0, now, now)
            .map(|x| x.cell.stats.count)
            .sum();
        assert_eq!(minutes, 2);
    }

    #[test]
    fn a_record_older_than_its_slot_counts_only_in_totals() {
        let mut s = SeriesData::new(Kind::Counter);
        s.record(1.0, 61_000);
        s.record(5.0, 1_000);
        assert_eq!(s.total.stats.sum, 6.0);
        let secs: f64 = s
            .seconds
            .cells_in(0, 61_000, 61_000)
            .map(|x| x.cell.stats.sum)
            .sum();
        assert_eq!(secs, 1.0);
    }
}
