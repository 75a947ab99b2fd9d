//! Metrics recorded on any thread and summarized over the last minute.
//!
//!     cargo run -p dspex_core --example analytics --no-default-features --features analytics

use dspex_core::analytics::query::{summarize, Aggregation, Range};
use dspex_core::analytics::{Analytics, Config, Kind};

fn main() {
    let metrics = Analytics::new(Config::default());
    let now = 1_700_000_000_000; // wall-clock milliseconds
    for latency in [120.0, 80.0, 100.0, 95.0, 300.0] {
        metrics
            .record(
                "python_call_us",
                Kind::Histogram,
                &[("pool", "tools")],
                latency,
                now,
            )
            .unwrap();
    }
    let summary = summarize(&metrics, "python_call_us", &[], Range::LastSeconds(60), now).unwrap();
    for aggregation in [Aggregation::Count, Aggregation::Avg, Aggregation::Max] {
        println!("{aggregation:?}: {:?}", summary.value(aggregation));
    }
}
