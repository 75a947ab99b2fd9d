//! Model-based tests of `DependencyGraph` against a brute-force model: a plain edge set with
//! reachability computed by exhaustive search.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use dspex_core::graph::{DependencyGraph, EdgeKind, GraphError};
use proptest::prelude::*;

const N: u8 = 12;

#[derive(Debug, Clone)]
enum Op {
    Add(u8, u8, u8),
    Remove(u8, u8),
    Clear(u8),
    Recreate(u8),
    // The batch, and whether it goes in by the whole-graph sort.
    Batch(Vec<(u8, u8, u8)>, bool),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..N, 0..N, 0..4u8).prop_map(|(a, b, k)| Op::Add(a, b, k)),
        2 => (0..N, 0..N).prop_map(|(a, b)| Op::Remove(a, b)),
        1 => (0..N).prop_map(Op::Clear),
        1 => (0..N).prop_map(Op::Recreate),
        1 => (proptest::collection::vec((0..N, 0..N, 0..4u8), 0..20), any::<bool>())
            .prop_map(|(batch, sorted)| Op::Batch(batch, sorted)),
    ]
}

// Edge kinds drawn by the `Add` operation: plain data is stored differently from the rest.
fn kind(k: u8) -> EdgeKind {
    match k {
        0 => EdgeKind::Data,
        1 => EdgeKind::Compute,
        2 => EdgeKind::Constraint,
        _ => EdgeKind::Custom("weight".into()),
    }
}

#[derive(Default)]
struct Model {
    edges: BTreeSet<(u8, u8)>,
    kinds: BTreeMap<(u8, u8), EdgeKind>,
}

impl Model {
    fn reaches(&self, from: u8, to: u8) -> bool {
        let mut seen = BTreeSet::from([from]);
        let mut stack = vec![from];
        while let Some(n) = stack.pop() {
            if n == to {
                return true;
            }
            for &(a, b) in &self.edges {
                if a == n && seen.insert(b) {
                    stack.push(b);
                }
            }
        }
        false
    }

    fn would_cycle(&self, from: u8, to: u8) -> bool {
        from == to || self.reaches(to, from)
    }

    fn downstream(&self, v: u8) -> BTreeSet<u8> {
        (0..N).filter(|&w| self.reaches(v, w)).collect()
    }
}

fn check_cycle_path(model: &Model, from: u8, to: u8, path: &[u8]) -> Result<(), TestCaseError> {
    prop_assert!(path.len() >= 2);
    prop_assert_eq!(path[0], to);
    prop_assert_eq!(*path.last().unwrap(), to);
    prop_assert_eq!(path[path.len() - 2], from);
    // Every step but the last is an existing edge; the last is the refused edge itself.
    for pair in path[..path.len() - 1].windows(2) {
        prop_assert!(
            model.edges.contains(&(pair[0], pair[1])),
            "{:?} not an edge",
            pair
        );
    }
    Ok(())
}

fn check_orders(graph: &DependencyGraph<u8>, model: &Model) -> Result<(), TestCaseError> {
    prop_assert!(graph.check_invariants());
    prop_assert_eq!(graph.edge_count(), model.edges.len());
    let kinds: BTreeMap<(u8, u8), EdgeKind> = graph
        .edges()
        .into_iter()
        .map(|(a, b, k)| ((a, b), k))
        .collect();
    prop_assert_eq!(&kinds, &model.kinds);
    for v in 0..N {
        let order = graph.update_order(&v).unwrap();
        prop_assert_eq!(order[0], v);
        let as_set: BTreeSet<u8> = order.iter().copied().collect();
        prop_assert_eq!(as_set.len(), order.len(), "no duplicates");
        prop_assert_eq!(&as_set, &model.downstream(v));
        let pos: HashMap<u8, usize> = order.iter().enumerate().map(|(i, &n)| (n, i)).collect();
        for &(a, b) in &model.edges {
            if let (Some(pa), Some(pb)) = (pos.get(&a), pos.get(&b)) {
                prop_assert!(pa < pb, "edge {}->{} out of order in {:?}", a, b, order);
            }
        }
        let deps: BTreeSet<u8> = graph.dependencies(&v).unwrap().into_iter().collect();
        let model_deps: BTreeSet<u8> = model
            .edges
            .iter()
            .filter(|e| e.1 == v)
            .map(|e| e.0)
            .collect();
        prop_assert_eq!(deps, model_deps);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn graph_matches_brute_force_model(ops in proptest::collection::vec(op(), 1..60)) {
        let mut graph = DependencyGraph::new();
        let mut model = Model::default();
        for v in 0..N {
            graph.add_node(v);
        }
        for op in ops {
            match op {
                Op::Add(a, b, k) => {
                    let expect_cycle = model.would_cycle(a, b);
                    match graph.add_edge(&a, &b, kind(k)) {
                        Ok(new) => {
                            prop_assert!(!expect_cycle, "accepted {}->{} closing a cycle", a, b);
                            prop_assert_eq!(new, model.edges.insert((a, b)));
                            model.kinds.insert((a, b), kind(k));
                        }
                        Err(GraphError::Cycle(path)) => {
                            prop_assert!(expect_cycle, "refused {}->{} needlessly", a, b);
                            check_cycle_path(&model, a, b, &path)?;
                            let predicted = graph.cycle_path(&a, &b).unwrap().unwrap();
                            check_cycle_path(&model, a, b, &predicted)?;
                        }
                        Err(other) => prop_assert!(false, "unexpected {:?}", other),
                    }
                }
                Op::Remove(a, b) => {
                    prop_assert_eq!(graph.remove_edge(&a, &b), model.edges.remove(&(a, b)));
                    model.kinds.remove(&(a, b));
                }
                Op::Clear(a) => {
                    let before = model.edges.len();
                    model.edges.retain(|&(x, y)| x != a && y != a);
                    model.kinds.retain(|&(x, y), _| x != a && y != a);
                    prop_assert_eq!(graph.clear_edges(&a).unwrap(), before - model.edges.len());
                }
                Op::Recreate(a) => {
                    prop_assert!(graph.remove_node(&a));
                    model.edges.retain(|&(x, y)| x != a && y != a);
                    model.kinds.retain(|&(x, y), _| x != a && y != a);
                    prop_assert!(graph.add_node(a));
                }
                Op::Batch(batch, sorted) => {
                    let mut trial = Model { edges: model.edges.clone(), kinds: model.kinds.clone() };
                    let mut first_failure = None;
                    // Of two entries for one edge, the later sets its kind.
                    for &(a, b, k) in &batch {
                        if trial.would_cycle(a, b) {
                            first_failure = Some((a, b));
                            break;
                        }
                        trial.edges.insert((a, b));
                        trial.kinds.insert((a, b), kind(k));
                    }
                    let triples: Vec<_> = batch.iter().map(|&(a, b, k)| (a, b, kind(k))).collect();
                    let added = if sorted {
                        graph.add_edges_sorted(&triples)
                    } else {
                        graph.add_edges(&triples)
                    };
                    match (added, first_failure) {
                        (Ok(_), None) => model = trial,
                        (Err(GraphError::Cycle(path)), Some((a, b))) => {
                            // Reported against the edges of the batch before the failing one.
                            check_cycle_path(&trial, a, b, &path)?;
                        }
                        (got, expected) => prop_assert!(false, "batch: got {:?}, model says {:?}", got, expected),
                    }
                }
            }
            check_orders(&graph, &model)?;
        }
    }

    #[test]
    fn snapshot_restores_the_same_graph(edges in proptest::collection::vec((0..N, 0..N), 0..40)) {
        let mut graph = DependencyGraph::new();
        for v in 0..N {
            graph.add_node(v);
        }
        for (a, b) in edges {
            let _ = graph.add_edge(&a, &b, EdgeKind::Custom(format!("k{a}")));
        }
        let restored = DependencyGraph::restore(&graph.snapshot()).unwrap();
        let mut e1 = graph.edges();
        let mut e2 = restored.edges();
        e1.sort_by_key(|e| (e.0, e.1));
        e2.sort_by_key(|e| (e.0, e.1));
        prop_assert_eq!(e1, e2);
        prop_assert!(restored.check_invariants());
    }
}

#[test]
fn self_loop_is_a_cycle() {
    let mut g = DependencyGraph::new();
    g.add_node("a");
    assert_eq!(
        g.add_edge(&"a", &"a", EdgeKind::Data),
        Err(GraphError::Cycle(vec!["a", "a"]))
    );
    assert_eq!(g.edge_count(), 0);
}

#[test]
fn cycle_path_runs_to_from_to() {
    let mut g = DependencyGraph::new();
    for v in ["a", "b", "c"] {
        g.add_node(v);
    }
    g.add_edge(&"a", &"b", EdgeKind::Data).unwrap();
    g.add_edge(&"b", &"c", EdgeKind::Data).unwrap();
    assert_eq!(
        g.add_edge(&"c", &"a", EdgeKind::Data),
        Err(GraphError::Cycle(vec!["a", "b", "c", "a"]))
    );
    assert_eq!(
        g.cycle_path(&"c", &"a").unwrap(),
        Some(vec!["a", "b", "c", "a"])
    );
    assert_eq!(g.cycle_path(&"a", &"c").unwrap(), None);
}

#[test]
fn unknown_nodes_are_reported() {
    let mut g: DependencyGraph<&str> = DependencyGraph::new();
    g.add_node("a");
    assert_eq!(
        g.add_edge(&"a", &"zz", EdgeKind::Data),
        Err(GraphError::UnknownNode("zz"))
    );
    assert_eq!(g.update_order(&"zz"), Err(GraphError::UnknownNode("zz")));
    assert!(!g.add_node("a"));
}

#[test]
fn re_adding_an_edge_relabels_it() {
    let mut g = DependencyGraph::new();
    g.add_node(1);
    g.add_node(2);
    assert_eq!(g.add_edge(&1, &2, EdgeKind::Data), Ok(true));
    assert_eq!(g.add_edge(&1, &2, EdgeKind::Constraint), Ok(false));
    assert_eq!(g.edge_kind(&1, &2), Some(&EdgeKind::Constraint));
    assert_eq!(g.edge_count(), 1);
}

#[test]
fn failed_batch_restores_relabelled_edges() {
    let mut g = DependencyGraph::new();
    for v in 0..3 {
        g.add_node(v);
    }
    g.add_edge(&0, &1, EdgeKind::Data).unwrap();
    let batch = vec![
        (0, 1, EdgeKind::Compute),
        (1, 2, EdgeKind::Data),
        (2, 0, EdgeKind::Data),
    ];
    assert!(matches!(g.add_edges(&batch), Err(GraphError::Cycle(_))));
    assert_eq!(g.edge_kind(&0, &1), Some(&EdgeKind::Data));
    assert_eq!(g.edge_count(), 1);
}

#[test]
fn diamond_update_order_lists_each_node_once() {
    let mut g = DependencyGraph::new();
    for v in ["d", "c", "b", "a"] {
        g.add_node(v);
    }
    for (f, t) in [("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")] {
        g.add_edge(&f, &t, EdgeKind::Compute).unwrap();
    }
    let order = g.update_order(&"a").unwrap();
    assert_eq!(order.len(), 4);
    assert_eq!(order[0], "a");
    assert_eq!(order[3], "d");
    assert_eq!(g.update_order_batch(&["b", "c"]).unwrap().len(), 3);
    assert_eq!(g.upstream(&"d").unwrap().len(), 3);
    assert_eq!(g.downstream(&"b").unwrap(), vec!["d"]);
}

#[test]
fn dot_export_quotes_labels() {
    let mut g = DependencyGraph::new();
    g.add_node("say \"hi\"".to_string());
    g.add_node("b".to_string());
    g.add_edge(
        &"say \"hi\"".to_string(),
        &"b".to_string(),
        EdgeKind::Custom("uses".into()),
    )
    .unwrap();
    let dot = g.to_dot(|k| k.clone());
    assert!(dot.starts_with("digraph dependencies {"));
    assert!(dot.contains(r#"label="say \"hi\"""#));
    assert!(dot.contains(r#"[label="uses"]"#));
}

#[test]
fn large_bulk_insert_matches_incremental() {
    // A hidden order: node i may depend only on nodes with a larger permuted rank.
    let n = 2_000u32;
    let rank: Vec<u32> = (0..n).map(|i| (i * 7919) % n).collect();
    let mut edges = Vec::new();
    for i in 0..n {
        for k in 1..4u32 {
            let j = (i * 31 + k * 977) % n;
            if rank[i as usize] < rank[j as usize] {
                edges.push((i, j, EdgeKind::Data));
            }
        }
    }
    let mut bulk = DependencyGraph::new();
    let mut one_by_one = DependencyGraph::new();
    for i in 0..n {
        bulk.add_node(i);
        one_by_one.add_node(i);
    }
    bulk.add_edges(&edges).unwrap();
    for (a, b, k) in &edges {
        one_by_one.add_edge(a, b, k.clone()).unwrap();
    }
    assert!(bulk.check_invariants() && one_by_one.check_invariants());
    assert_eq!(bulk.edge_count(), one_by_one.edge_count());
    let (from, to, _) = &edges[0];
    assert!(matches!(
        bulk.add_edge(to, from, EdgeKind::Data),
        Err(GraphError::Cycle(_))
    ));
}

#[test]
fn edges_and_kinds_survive_the_node_table_growing_and_churning() {
    let mut g = DependencyGraph::new();
    for v in 0..3u32 {
        g.add_node(v);
    }
    g.add_edge(&0, &1, EdgeKind::Compute).unwrap();
    g.add_edge(&1, &2, EdgeKind::Data).unwrap();
    // Edges exist while the table grows many times over.
    let custom = EdgeKind::Custom("feeds".into());
    for v in 3..5_000u32 {
        assert!(g.add_node(v));
        if v % 2 == 1 {
            g.add_edge(&(v - 1), &v, custom.clone()).unwrap();
        }
    }
    // Nodes removed and added again at a constant size: freed slots are reused or the
    // table is rebuilt in place.
    for round in 0..20_000u32 {
        let v = 5_000 + round % 7;
        if round >= 7 {
            assert!(g.remove_node(&v));
        }
        assert!(g.add_node(v));
        g.add_edge(&4, &v, EdgeKind::Data).unwrap();
    }
    assert!(g.check_invariants());
    assert_eq!(g.node_count(), 5_007);
    assert_eq!(g.edge_count(), 2 + 2_499 + 7);
    assert_eq!(g.update_order(&0).unwrap(), vec![0, 1, 2, 3]);
    assert_eq!(g.edge_kind(&0, &1), Some(&EdgeKind::Compute));
    for v in (3..5_000u32).filter(|v| v % 2 == 1) {
        assert_eq!(g.dependencies(&v).unwrap(), vec![v - 1]);
        assert_eq!(g.edge_kind(&(v - 1), &v), Some(&custom));
    }
    let mut churned = g.dependents(&4).unwrap();
    churned.sort_unstable();
    assert_eq!(
        churned,
        [5].into_iter().chain(5_000..5_007).collect::<Vec<_>>()
    );
}

#[test]
fn chains_built_against_the_order_end_in_order() {
    // Registered 0..10, so every edge below goes against the order. Built from the sink
    // up, each new edge's target has no successors yet; built from the source down, each
    // new edge's source has no predecessors yet. Either way the chain runs 9 -> ... -> 0.
    let expected: Vec<u32> = (0..10).rev().collect();
    let from_the_sink: Vec<(u32, u32)> = (0..9).map(|i| (i + 1, i)).collect();
    let from_the_source: Vec<(u32, u32)> = (0..9).rev().map(|i| (i + 1, i)).collect();
    for edges in [from_the_sink, from_the_source] {
        let mut g = DependencyGraph::new();
        for v in 0..10u32 {
            g.add_node(v);
        }
        for (a, b) in &edges {
            assert_eq!(g.add_edge(a, b, EdgeKind::Data), Ok(true));
            assert!(g.check_invariants());
        }
        assert_eq!(g.topological_order(), expected);
        assert_eq!(g.update_order(&9).unwrap(), expected);
        assert!(matches!(
            g.add_edge(&0, &9, EdgeKind::Data),
            Err(GraphError::Cycle(path)) if path.len() == 11
        ));
    }
}
