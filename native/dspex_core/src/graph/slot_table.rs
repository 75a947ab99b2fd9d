//! The slots of a [`DependencyGraph`](super::DependencyGraph)'s nodes.

use std::hash::Hash;

use crate::prefetch;

/// Where nodes live: open addressing with linear probing over slots, one control byte per
/// slot (free, freed, or seven bits of the id's hash). A node's key, position and edges sit
/// at its slot in the graph's arrays, so finding an id leads straight to its edges: the
/// control bytes (a small array) and then the node itself, with no slot number to read in
/// between; and the first slot to look at is known from the hash alone.
#[derive(Debug, Clone)]
pub(super) struct SlotTable {
    ctrl: Vec<u8>,
    pub(super) len: usize,
    freed: usize,
    hasher: ahash::RandomState,
}

const FREE: u8 = 0x80;
const FREED: u8 = 0xFF;

impl SlotTable {
    pub(super) fn new() -> Self {
        SlotTable {
            ctrl: Vec::new(),
            len: 0,
            freed: 0,
            hasher: ahash::RandomState::new(),
        }
    }

    // An empty table of `capacity` slots (a power of two) hashing as this one.
    pub(super) fn emptied(&self, capacity: usize) -> SlotTable {
        SlotTable {
            ctrl: vec![FREE; capacity],
            len: 0,
            freed: 0,
            hasher: self.hasher.clone(),
        }
    }

    #[inline]
    pub(super) fn hash<Q: Hash + ?Sized>(&self, key: &Q) -> u64 {
        self.hasher.hash_one(key)
    }

    // Seven bits of the hash not used to choose the first slot.
    #[inline]
    fn tag(hash: u64) -> u8 {
        (hash >> 57) as u8
    }

    // Whether one more node needs a bigger table: at most 7/8 of the slots are ever taken
    // (live or freed), so every probe meets a free slot.
    pub(super) fn is_full(&self) -> bool {
        (self.len + self.freed + 1) * 8 > self.ctrl.len() * 7
    }

    // The slot where the probe for `hash` starts, if there are slots.
    #[inline]
    pub(super) fn first_slot(&self, hash: u64) -> Option<usize> {
        Some(hash as usize & self.ctrl.len().checked_sub(1)?)
    }

    // Asks for the control byte of `slot` (see `DependencyGraph::prefetch_lookup`).
    #[inline(always)]
    pub(super) fn prefetch(&self, slot: usize) {
        prefetch::read(&self.ctrl[slot]);
    }

    // The slot holding the node whose id hashes to `hash` and passes `is`.
    #[inline]
    pub(super) fn find(&self, hash: u64, is: impl Fn(usize) -> bool) -> Option<usize> {
        if self.ctrl.is_empty() {
            return None;
        }
        let (mask, tag) = (self.ctrl.len() - 1, Self::tag(hash));
        let mut slot = hash as usize & mask;
        loop {
            let c = self.ctrl[slot];
            if c == tag && is(slot) {
                return Some(slot);
            }
            if c == FREE {
                return None;
            }
            slot = (slot + 1) & mask;
        }
    }

    // Takes the first free or freed slot of the probe for `hash`. The caller has checked
    // that the id is absent and that the table is not full.
    pub(super) fn claim(&mut self, hash: u64) -> usize {
        let mask = self.ctrl.len() - 1;
        let mut slot = hash as usize & mask;
        while self.ctrl[slot] & FREE == 0 {
            slot = (slot + 1) & mask;
        }
        if self.ctrl[slot] == FREED {
            self.freed -= 1;
        }
        self.ctrl[slot] = Self::tag(hash);
        self.len += 1;
        slot
    }

    // Frees a live slot. It stays marked so that probes passing through it go on.
    pub(super) fn release(&mut self, slot: usize) {
        self.ctrl[slot] = FREED;
        self.len -= 1;
        self.freed += 1;
    }

    pub(super) fn live(&self) -> impl Iterator<Item = usize> + '_ {
        self.ctrl
            .iter()
            .enumerate()
            .filter(|(_, &c)| c & FREE == 0)
            .map(|(slot, _)| slot)
    }
}
