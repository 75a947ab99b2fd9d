//! Access policies: a private variable, a rule for a group of sessions, and why a decision
//! was made.
//!
//!     cargo run -p dspex_core --example acl --no-default-features --features acl

use dspex_core::acl::{AccessControl, AccessMode, Permission, Rule, SessionPattern};

fn main() {
    let mut acl = AccessControl::new(1024);
    acl.set_policy("temperature", "owner", AccessMode::Private, vec![])
        .unwrap();
    let admins = Rule::new(
        "admins",
        SessionPattern::glob("admin_*").unwrap(),
        &[Permission::Write],
    );
    acl.add_rule(&"temperature", admins).unwrap();
    let ctx = Default::default();
    for session in ["owner", "admin_alice", "guest"] {
        let decision = acl.explain(&"temperature", session, Permission::Write, &ctx, 0);
        println!("{session:>12} writes temperature: {decision:?}");
    }
}
