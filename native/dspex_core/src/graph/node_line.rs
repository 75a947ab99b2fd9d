//! A node's position and edges in one cache line.

use super::Ix;

/// Edges a line holds without allocating: most variables have a handful.
const INLINE: usize = 11;

/// A node's position in the topological order and its edges, in one 64-byte line: an
/// insert reads the position and the edges of both ends, and re-ordering reads the
/// position of each neighbour before it follows that neighbour's edges, so each node
/// costs one memory access.
///
/// Successors fill the storage from the front and predecessors from the back, so the two
/// lists share one allocation (or the inline space) whatever their sizes.
#[derive(Clone)]
#[repr(align(64))]
pub(super) struct NodeLine {
    /// Position in the topological order.
    pub(super) ord: u64,
    n_out: u32,
    n_in: u32,
    store: Store,
}

#[derive(Debug, Clone)]
enum Store {
    Inline([Ix; INLINE]),
    Heap(Box<[Ix]>),
}

const _: () = assert!(std::mem::size_of::<NodeLine>() == 64);

// The lists, not the unused storage between them.
impl std::fmt::Debug for NodeLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeLine")
            .field("ord", &self.ord)
            .field("out", &self.out())
            .field("inc", &self.inc())
            .finish()
    }
}

impl Default for NodeLine {
    fn default() -> Self {
        NodeLine {
            ord: 0,
            n_out: 0,
            n_in: 0,
            store: Store::Inline([0; INLINE]),
        }
    }
}

impl NodeLine {
    fn slots(&self) -> &[Ix] {
        match &self.store {
            Store::Inline(a) => a,
            Store::Heap(b) => b,
        }
    }

    fn slots_mut(&mut self) -> &mut [Ix] {
        match &mut self.store {
            Store::Inline(a) => a,
            Store::Heap(b) => b,
        }
    }

    /// The successors (edges `self -> s`).
    #[inline]
    pub(super) fn out(&self) -> &[Ix] {
        &self.slots()[..self.n_out as usize]
    }

    /// The predecessors (edges `p -> self`).
    #[inline]
    pub(super) fn inc(&self) -> &[Ix] {
        let slots = self.slots();
        &slots[slots.len() - self.n_in as usize..]
    }

    /// Every node named, successors and predecessors, for renaming.
    pub(super) fn neighbours_mut(&mut self) -> impl Iterator<Item = &mut Ix> {
        let (n_out, n_in) = (self.n_out as usize, self.n_in as usize);
        let slots = self.slots_mut();
        let len = slots.len();
        let (front, back) = slots.split_at_mut(len - n_in);
        front[..n_out].iter_mut().chain(back.iter_mut())
    }

    // Room for one more edge: doubles the storage, successors staying in front and
    // predecessors at the back.
    fn reserve_one(&mut self) {
        let (n_out, n_in) = (self.n_out as usize, self.n_in as usize);
        let len = self.slots().len();
        if n_out + n_in < len {
            return;
        }
        let mut grown = vec![0; len * 2].into_boxed_slice();
        grown[..n_out].copy_from_slice(self.out());
        grown[len * 2 - n_in..].copy_from_slice(self.inc());
        self.store = Store::Heap(grown);
    }

    pub(super) fn push_out(&mut self, s: Ix) {
        self.reserve_one();
        let at = self.n_out as usize;
        self.slots_mut()[at] = s;
        self.n_out += 1;
    }

    pub(super) fn push_inc(&mut self, p: Ix) {
        self.reserve_one();
        let at = self.slots().len() - 1 - self.n_in as usize;
        self.slots_mut()[at] = p;
        self.n_in += 1;
    }

    /// Removes the successor `s`; false if it was not one. The last successor takes its
    /// place.
    pub(super) fn detach_out(&mut self, s: Ix) -> bool {
        let Some(pos) = self.out().iter().position(|&x| x == s) else {
            return false;
        };
        let last = self.n_out as usize - 1;
        self.slots_mut().swap(pos, last);
        self.n_out -= 1;
        true
    }

    /// Removes the predecessor `p`; false if it was not one. The first predecessor (the
    /// one nearest the middle) takes its place.
    pub(super) fn detach_inc(&mut self, p: Ix) -> bool {
        let first = self.slots().len() - self.n_in as usize;
        let Some(pos) = self.inc().iter().position(|&x| x == p) else {
            return false;
        };
        self.slots_mut().swap(first + pos, first);
        self.n_in -= 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::NodeLine;

    #[test]
    fn both_lists_survive_growing_and_removals() {
        let mut line = NodeLine::default();
        for i in 0..40u32 {
            if i % 3 == 0 {
                line.push_inc(1000 + i);
            } else {
                line.push_out(i);
            }
        }
        let mut out: Vec<u32> = (0..40).filter(|i| i % 3 != 0).collect();
        let mut inc: Vec<u32> = (0..40).filter(|i| i % 3 == 0).map(|i| 1000 + i).collect();
        assert!(line.detach_out(5) && !line.detach_out(5));
        assert!(line.detach_inc(1003) && !line.detach_inc(3));
        out.retain(|&x| x != 5);
        inc.retain(|&x| x != 1003);
        let sorted = |s: &[u32]| {
            let mut v = s.to_vec();
            v.sort_unstable();
            v
        };
        assert_eq!(sorted(line.out()), out);
        assert_eq!(sorted(line.inc()), inc);
        for n in line.neighbours_mut() {
            *n += 1;
        }
        assert_eq!(
            sorted(line.out()),
            out.iter().map(|x| x + 1).collect::<Vec<_>>()
        );
        assert_eq!(
            sorted(line.inc()),
            inc.iter().map(|x| x + 1).collect::<Vec<_>>()
        );
    }
}
