//! Optimizer locks with fencing tokens: a second optimizer is refused, and a write with an
//! old token is refused after the lock moved on.
//!
//!     cargo run -p dspex_core --example coordinator --no-default-features --features coordinator

use dspex_core::coordinator::{Acquired, Conflict, LockTable};

fn main() {
    let mut table: LockTable<&str, &str> = LockTable::new();
    let Acquired::Granted { token: first } = table
        .acquire("lr", "opt_a", 0, Conflict::Abort, 1_000, 0)
        .value
    else {
        panic!("a free lock is granted")
    };
    println!("opt_a holds lr with token {first}");
    println!(
        "opt_b asks: {:?}",
        table
            .acquire("lr", "opt_b", 0, Conflict::Abort, 1_000, 0)
            .value
    );
    let _ = table.release(&"lr", &"opt_a", 1);
    let Acquired::Granted { token: second } = table
        .acquire("lr", "opt_b", 0, Conflict::Abort, 1_000, 2)
        .value
    else {
        panic!("a released lock is granted")
    };
    println!("opt_b holds lr with token {second}");
    println!(
        "a late write with opt_a's token: {:?}",
        table.check_write(&"lr", first)
    );
    println!(
        "a write with opt_b's token: {:?}",
        table.check_write(&"lr", second)
    );
}
