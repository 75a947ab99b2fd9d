//! Rendezvous placement: every node computes the same owner for a session, and removing a
//! node moves only the sessions it owned.
//!
//!     cargo run -p dspex_core --example ha --no-default-features --features ha

use dspex_core::ha::placement::{owner, Node};

fn main() {
    let three = vec![
        Node::new("a@host1", 1.0),
        Node::new("b@host2", 1.0),
        Node::new("c@host3", 1.0),
    ];
    let two = vec![three[0].clone(), three[1].clone()];
    let mut moved = 0;
    for i in 0..1_000 {
        let session = format!("session_{i}");
        let before = &three[owner(session.as_bytes(), &three).unwrap()].name;
        let after = &two[owner(session.as_bytes(), &two).unwrap()].name;
        if before != after {
            assert_eq!(before, "c@host3", "only the leaving node's sessions move");
            moved += 1;
        }
    }
    println!("c@host3 left: {moved} of 1000 sessions moved, all of them its own");
}
