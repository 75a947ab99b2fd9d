//! Dependency graph inserts: the incremental topological order of `DependencyGraph` against
//! a baseline written here that checks every insert with a search of everything reachable
//! from the new edge's head (what `:digraph` with `[:acyclic]` does). Same random DAG with a
//! hidden order for both.
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use dspex_core::graph::{DependencyGraph, EdgeKind};
use std::hint::black_box;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*: deterministic and dependency-free.
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// 300k edges over 100k nodes in pipelines of `cluster` consecutive ranks, node ids a
/// shuffle of ranks (the same shape as benches/dependency_graph.exs).
fn random_dag(n: u32, m: usize, cluster: u32, seed: u64) -> Vec<(u32, u32)> {
    let mut rng = Rng(seed);
    let mut by_rank: Vec<u32> = (0..n).collect();
    for i in (1..n as usize).rev() {
        by_rank.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let mut seen = std::collections::HashSet::new();
    let mut edges = Vec::with_capacity(m);
    while edges.len() < m {
        let base = rng.below(u64::from(n / cluster)) as u32 * cluster;
        let (x, y) = (
            rng.below(u64::from(cluster)) as u32,
            rng.below(u64::from(cluster)) as u32,
        );
        if x == y {
            continue;
        }
        let (a, b) = (base + x.min(y), base + x.max(y));
        let edge = (by_rank[a as usize], by_rank[b as usize]);
        if seen.insert(edge) {
            edges.push(edge);
        }
    }
    edges
}

/// The baseline: adjacency lists and a full reachability search per insert.
fn naive_insert_all(n: u32, edges: &[(u32, u32)]) -> usize {
    let mut out: Vec<Vec<u32>> = vec![Vec::new(); n as usize];
    let mut mark = vec![0u32; n as usize];
    let mut stamp = 0u32;
    let mut stack = Vec::new();
    let mut accepted = 0;
    for &(from, to) in edges {
        stamp += 1;
        stack.clear();
        stack.push(to);
        mark[to as usize] = stamp;
        let mut cycle = false;
        while let Some(v) = stack.pop() {
            if v == from {
                cycle = true;
                break;
            }
            for &s in &out[v as usize] {
                if mark[s as usize] != stamp {
                    mark[s as usize] = stamp;
                    stack.push(s);
                }
            }
        }
        if !cycle {
            out[from as usize].push(to);
            accepted += 1;
        }
    }
    accepted
}

fn build(n: u32) -> DependencyGraph<u32> {
    let mut g = DependencyGraph::new();
    for v in 0..n {
        g.add_node(v);
    }
    g
}

fn inserts(c: &mut Criterion) {
    let (n, m) = (100_000u32, 300_000usize);
    let edges = random_dag(n, m, 100, 0x5eed);
    let kinds: Vec<(u32, u32, EdgeKind)> =
        edges.iter().map(|&(a, b)| (a, b, EdgeKind::Data)).collect();
    let mut group = c.benchmark_group("graph_insert_100k_300k");
    group.sample_size(10);
    group.bench_function("baseline_full_search_per_insert", |b| {
        b.iter(|| black_box(naive_insert_all(n, &edges)))
    });
    group.bench_function("incremental_one_by_one", |b| {
        b.iter_batched(
            || build(n),
            |mut g| {
                for &(a, b) in &edges {
                    g.add_edge(&a, &b, EdgeKind::Data).unwrap();
                }
                black_box(g.edge_count())
            },
            BatchSize::LargeInput,
        )
    });
    group.bench_function("bulk_add_edges", |b| {
        b.iter_batched(
            || build(n),
            |mut g| black_box(g.add_edges(&kinds).unwrap()),
            BatchSize::LargeInput,
        )
    });
    group.finish();

    let mut g = build(n);
    g.add_edges(&kinds).unwrap();
    let probes: Vec<u32> = edges.iter().step_by(1_500).map(|e| e.0).take(200).collect();
    c.bench_function("graph_update_order_200_probes", |b| {
        b.iter(|| {
            for p in &probes {
                black_box(g.update_order(p).unwrap().len());
            }
        })
    });
}

criterion_group!(benches, inserts);
criterion_main!(benches);
