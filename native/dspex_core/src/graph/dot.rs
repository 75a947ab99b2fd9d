//! Graphviz DOT output.

use std::fmt::Write as _;
use std::hash::Hash;

use super::{DependencyGraph, Ix};

impl<K: Eq + Hash + Clone> DependencyGraph<K> {
    /// Graphviz DOT text; `label` renders a node id.
    pub fn to_dot(&self, label: impl Fn(&K) -> String) -> String {
        let mut nodes: Vec<Ix> = self.live().collect();
        nodes.sort_unstable_by_key(|&n| self.adj[n as usize].ord);
        let mut dot = String::from("digraph dependencies {\n  rankdir=LR;\n");
        for &n in &nodes {
            let _ = writeln!(dot, "  n{n} [label={}];", dot_quote(&label(self.key(n))));
        }
        for (from, to, kind) in self.edges() {
            let _ = writeln!(
                dot,
                "  n{} -> n{} [label={}];",
                self.find(&from).expect("an edge's source is a node"),
                self.find(&to).expect("an edge's target is a node"),
                dot_quote(kind.name())
            );
        }
        dot.push_str("}\n");
        dot
    }
}

fn dot_quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
