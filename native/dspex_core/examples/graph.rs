//! A dependency graph that refuses cycles and gives the order to recompute in.
//!
//!     cargo run -p dspex_core --example graph --no-default-features --features graph

use dspex_core::graph::{DependencyGraph, EdgeKind, GraphError};

fn main() {
    let mut g = DependencyGraph::new();
    for v in ["temperature", "prompt", "score", "report"] {
        g.add_node(v);
    }
    g.add_edge(&"temperature", &"prompt", EdgeKind::Data)
        .unwrap();
    g.add_edge(&"prompt", &"score", EdgeKind::Compute).unwrap();
    g.add_edge(&"score", &"report", EdgeKind::Compute).unwrap();
    println!(
        "after temperature changes, recompute: {:?}",
        g.update_order(&"temperature").unwrap()
    );
    match g.add_edge(&"report", &"temperature", EdgeKind::Data) {
        Err(GraphError::Cycle(path)) => {
            println!("report -> temperature refused, it would close {path:?}")
        }
        other => panic!("expected a cycle, got {other:?}"),
    }
}
