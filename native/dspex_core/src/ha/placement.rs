//! Rendezvous (highest random weight) placement with weights.
//!
//! Each (node, session) pair gets a pseudo-random score from a fixed hash of both names; a
//! session's owner is the node with the highest score and its successors follow in score
//! order. Weighted scores use `-weight / ln(u)` with `u` the hash mapped into (0, 1), which
//! gives each node a share of sessions proportional to its weight. The hash is FNV-1a with a
//! SplitMix64 finish, written here so that every node and every build agrees on it.
//!
//! ```
//! use dspex_core::ha::placement::{owner, Node};
//!
//! let nodes = [Node::new("a@host", 1.0), Node::new("b@host", 1.0), Node::new("c@host", 2.0)];
//! let first = owner(b"session-42", &nodes).unwrap();
//! // Same membership, same answer, on any node.
//! assert_eq!(owner(b"session-42", &nodes), Some(first));
//! // A node that is not the owner leaving does not move the session.
//! let others: Vec<Node> = nodes.iter().filter(|n| n.name != nodes[first].name).cloned().collect();
//! let without_one: Vec<Node> = nodes.iter().filter(|n| n.name != others[0].name).cloned().collect();
//! assert_eq!(without_one[owner(b"session-42", &without_one).unwrap()].name, nodes[first].name);
//! ```

/// A node that can own sessions.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// The node's name (the Erlang node name).
    pub name: String,
    /// Its relative capacity; 0 (or anything not positive and finite) never owns a session.
    pub weight: f64,
}

impl Node {
    /// A node with a weight.
    pub fn new(name: impl Into<String>, weight: f64) -> Self {
        Node {
            name: name.into(),
            weight,
        }
    }
}

fn fnv1a(state: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(state, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn splitmix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The score of `node` for `key`: higher wins. Not positive weights score `-∞`.
pub fn score(node: &Node, key: &[u8]) -> f64 {
    if !(node.weight > 0.0 && node.weight.is_finite()) {
        return f64::NEG_INFINITY;
    }
    // The length prefix keeps ("ab", "c") and ("a", "bc") apart.
    let h = fnv1a(
        0xcbf2_9ce4_8422_2325,
        &(node.name.len() as u64).to_le_bytes(),
    );
    let h = splitmix(fnv1a(fnv1a(h, node.name.as_bytes()), key));
    // 53 random bits into (0, 1): never 0, so the logarithm is finite and negative.
    let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -node.weight / u.ln()
}

/// Indices of `nodes` from the owner down, for `key`. Ties (equal scores, in practice only
/// duplicate names) are broken by name so the order is the same everywhere; nodes that can
/// never own (weight not positive) are left out.
pub fn ranked(key: &[u8], nodes: &[Node]) -> Vec<usize> {
    let mut scored: Vec<(f64, usize)> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (score(n, key), i))
        .filter(|(s, _)| *s > f64::NEG_INFINITY)
        .collect();
    scored.sort_by(|(sa, a), (sb, b)| {
        sb.total_cmp(sa)
            .then_with(|| nodes[*a].name.cmp(&nodes[*b].name))
    });
    scored.into_iter().map(|(_, i)| i).collect()
}

/// The index of `key`'s owner among `nodes`, if any node can own it.
pub fn owner(key: &[u8], nodes: &[Node]) -> Option<usize> {
    nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (score(n, key), i))
        .filter(|(s, _)| *s > f64::NEG_INFINITY)
        .max_by(|(sa, a), (sb, b)| {
            sa.total_cmp(sb)
                .then_with(|| nodes[*b].name.cmp(&nodes[*a].name))
        })
        .map(|(_, i)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_share_sessions_proportionally() {
        let nodes = [Node::new("a", 1.0), Node::new("b", 3.0)];
        let n = 20_000;
        let to_b = (0..n)
            .filter(|i| owner(format!("s{i}").as_bytes(), &nodes) == Some(1))
            .count();
        let share = to_b as f64 / f64::from(n);
        assert!((share - 0.75).abs() < 0.02, "b owns {share}");
    }

    #[test]
    fn zero_weight_nodes_never_own() {
        let nodes = [Node::new("a", 0.0), Node::new("b", f64::NAN)];
        assert_eq!(owner(b"s", &nodes), None);
        assert!(ranked(b"s", &nodes).is_empty());
    }

    #[test]
    fn ranked_starts_with_the_owner() {
        let nodes: Vec<Node> = (0..5).map(|i| Node::new(format!("n{i}"), 1.0)).collect();
        for i in 0..100 {
            let key = format!("k{i}");
            let r = ranked(key.as_bytes(), &nodes);
            assert_eq!(r.len(), 5);
            assert_eq!(Some(r[0]), owner(key.as_bytes(), &nodes));
        }
    }
}
