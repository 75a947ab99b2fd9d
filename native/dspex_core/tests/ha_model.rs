//! Property tests of high-availability placement and ownership.
//!
//! Placement: removing a node moves only its sessions, adding one moves only the sessions it
//! wins, and the order nodes are listed in never matters. Ownership: three nodes run the
//! ownership state machine for one session through migrations, failovers and partitions
//! (ownership news delivered late, in any order); a model checks that no epoch ever has two
//! writers, that once every message is delivered at most one node writes, and that a
//! former owner's replicated changes are refused once the replica knows a newer epoch.

use std::collections::{BTreeMap, VecDeque};

use dspex_core::ha::ownership::{Epoch, Ownership, Refusal, Role};
use dspex_core::ha::placement::{owner, ranked, Node};
use proptest::prelude::*;

fn membership() -> impl Strategy<Value = Vec<Node>> {
    prop::collection::btree_map(0u8..12, prop_oneof![Just(1.0), 0.5f64..4.0], 1..8).prop_map(|m| {
        m.into_iter()
            .map(|(i, w)| Node::new(format!("n{i}@127.0.0.1"), w))
            .collect()
    })
}

fn owner_name(key: &str, nodes: &[Node]) -> Option<String> {
    owner(key.as_bytes(), nodes).map(|i| nodes[i].name.clone())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn a_leaving_node_moves_only_its_sessions(nodes in membership(), leave in any::<prop::sample::Index>()) {
        let gone = nodes[leave.index(nodes.len())].name.clone();
        let rest: Vec<Node> = nodes.iter().filter(|n| n.name != gone).cloned().collect();
        for k in 0..200 {
            let key = format!("session-{k}");
            let before = owner_name(&key, &nodes).unwrap();
            let after = owner_name(&key, &rest);
            if before != gone {
                prop_assert_eq!(after, Some(before));
            }
        }
    }

    #[test]
    fn a_joining_node_takes_only_what_it_wins(nodes in membership(), weight in 0.5f64..4.0) {
        let joining = Node::new("joining@127.0.0.1", weight);
        let mut more = nodes.clone();
        more.push(joining.clone());
        for k in 0..200 {
            let key = format!("session-{k}");
            let before = owner_name(&key, &nodes).unwrap();
            let after = owner_name(&key, &more).unwrap();
            prop_assert!(after == before || after == joining.name);
        }
    }

    #[test]
    fn listing_order_never_matters(nodes in membership(), seed in any::<u64>()) {
        let mut shuffled = nodes.clone();
        let mut s = seed;
        for i in (1..shuffled.len()).rev() {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            shuffled.swap(i, (s >> 33) as usize % (i + 1));
        }
        for k in 0..100 {
            let key = format!("session-{k}");
            prop_assert_eq!(owner_name(&key, &nodes), owner_name(&key, &shuffled));
            let names = |ns: &[Node]| -> Vec<String> {
                ranked(key.as_bytes(), ns).into_iter().map(|i| ns[i].name.clone()).collect()
            };
            prop_assert_eq!(names(&nodes), names(&shuffled));
        }
    }
}

#[derive(Debug, Clone)]
enum Step {
    /// Node `from` migrates the session to node `to` (both steps in one go, as the shell's
    /// migration is one call); news of the new epoch reaches the third node later.
    Migrate {
        from: usize,
        to: usize,
        /// The target's announcement reaches the source before the target's reply does.
        news_first: bool,
    },
    /// Node `at` considers the owner down and promotes its replica.
    Promote { at: usize },
    /// Node `at` makes itself a replica of whoever it thinks owns the session.
    Replicate { at: usize },
    /// The owner at node `from` replicates a write to node `to`.
    Write { from: usize, to: usize },
    /// One pending ownership message is delivered.
    Deliver(prop::sample::Index),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        1 => (0usize..3, 0usize..3, any::<bool>())
            .prop_map(|(from, to, news_first)| Step::Migrate { from, to, news_first }),
        1 => (0usize..3).prop_map(|at| Step::Promote { at }),
        1 => (0usize..3).prop_map(|at| Step::Replicate { at }),
        1 => (0usize..3, 0usize..3).prop_map(|(from, to)| Step::Write { from, to }),
        3 => any::<prop::sample::Index>().prop_map(Step::Deliver),
    ]
}

const NODES: [&str; 3] = ["a", "b", "c"];

struct Cluster {
    nodes: Vec<Ownership>,
    /// (recipient, owner, epoch) not yet delivered.
    pending: VecDeque<(usize, String, Epoch)>,
    /// Every epoch that had a writer, and which node.
    writers: BTreeMap<Epoch, usize>,
}

impl Cluster {
    fn announce(&mut self, from: usize, epoch: &Epoch) {
        for to in 0..NODES.len() {
            if to != from {
                self.pending
                    .push_back((to, NODES[from].to_string(), epoch.clone()));
            }
        }
    }

    fn note_writer(&mut self, at: usize, epoch: &Epoch) -> Result<(), TestCaseError> {
        if let Some(&other) = self.writers.get(epoch) {
            prop_assert_eq!(other, at, "two writers at epoch {:?}", epoch);
        }
        self.writers.insert(epoch.clone(), at);
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1_000))]

    #[test]
    fn ownership_never_has_two_writers(steps in prop::collection::vec(step(), 1..60)) {
        let mut c = Cluster {
            nodes: NODES.iter().map(|n| Ownership::new(*n)).collect(),
            pending: VecDeque::new(),
            writers: BTreeMap::new(),
        };
        let e = c.nodes[0].register().unwrap();
        c.note_writer(0, &e)?;
        c.announce(0, &e);

        for s in &steps {
            match s {
                Step::Migrate { from, to, news_first } => {
                    let (from, to) = (*from, *to);
                    if c.nodes[from].begin_out(NODES[to]).is_err() {
                        continue;
                    }
                    let epoch = c.nodes[from].epoch().clone();
                    if c.nodes[to].begin_in(NODES[from], &epoch).is_err() {
                        c.nodes[from].abort_out().unwrap();
                        continue;
                    }
                    let new = c.nodes[to].finish_in().unwrap();
                    prop_assert!(new > epoch);
                    if *news_first {
                        prop_assert!(c.nodes[from].observe(NODES[to], &new), "not stepped down");
                    }
                    c.nodes[from].finish_out(&new).unwrap();
                    prop_assert_eq!(c.nodes[from].role(), &Role::Absent);
                    c.note_writer(to, &new)?;
                    c.announce(to, &new);
                }
                Step::Promote { at } => {
                    if let Ok(new) = c.nodes[*at].promote() {
                        c.note_writer(*at, &new)?;
                        c.announce(*at, &new);
                    }
                }
                Step::Replicate { at } => {
                    let node = &c.nodes[*at];
                    if let Some(owner) = node.owner().map(str::to_owned) {
                        if owner != NODES[*at] {
                            let epoch = node.epoch().clone();
                            let _ = c.nodes[*at].become_replica(&owner, &epoch);
                        }
                    }
                }
                Step::Write { from, to } => {
                    let Ok(epoch) = c.nodes[*from].accept_write().cloned() else { continue };
                    if from == to {
                        continue;
                    }
                    let known = c.nodes[*to].epoch().clone();
                    let result = c.nodes[*to].accept_replicated(NODES[*from], &epoch);
                    if epoch < known {
                        prop_assert!(
                            matches!(result, Err(Refusal::StaleEpoch { .. })),
                            "a stale owner's change was kept"
                        );
                    }
                }
                Step::Deliver(i) => {
                    if c.pending.is_empty() {
                        continue;
                    }
                    let i = i.index(c.pending.len());
                    let (to, owner, epoch) = c.pending.remove(i).unwrap();
                    c.nodes[to].observe(&owner, &epoch);
                }
            }
            // A node writing at an epoch older than the newest is one the news has not
            // reached yet: a message to it is still pending.
            let newest = c.writers.keys().next_back().unwrap().clone();
            for (i, n) in c.nodes.iter().enumerate() {
                if let Ok(epoch) = n.accept_write() {
                    if *epoch < newest {
                        prop_assert!(
                            c.pending.iter().any(|(to, _, e)| *to == i && *e > *epoch),
                            "node {} writes at {:?} though every newer epoch reached it", i, epoch
                        );
                    }
                }
            }
        }

        // Heal: deliver everything. Then at most one writer, at the newest epoch.
        while let Some((to, owner, epoch)) = c.pending.pop_front() {
            c.nodes[to].observe(&owner, &epoch);
        }
        let writing: Vec<usize> = (0..3).filter(|&i| c.nodes[i].accept_write().is_ok()).collect();
        prop_assert!(writing.len() <= 1, "writers after heal: {:?}", writing);
        let newest = c.writers.keys().next_back().unwrap();
        for &i in &writing {
            prop_assert_eq!(c.nodes[i].accept_write().unwrap(), newest);
        }
        for n in &c.nodes {
            prop_assert!(n.epoch() <= newest);
            let moving = matches!(n.role(), Role::MigratingIn { .. } | Role::MigratingOut { .. });
            prop_assert!(!moving, "left migrating: {:?}", n.role());
        }
    }
}
