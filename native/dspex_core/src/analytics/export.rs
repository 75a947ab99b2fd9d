//! Exporters: Prometheus text exposition, JSON, CSV and StatsD lines.
//!
//! All four take [`SeriesSummary`]s (see [`super::query::series_summaries`]). Prometheus
//! counters and a summary's `_sum`/`_count` use the all-time totals (they must never go
//! down); quantiles, JSON, CSV and StatsD describe the chosen range.

use std::fmt::Write;

use super::query::{Aggregation, SeriesSummary, FIGURES};
use super::Kind;

/// The quantiles every exporter reports for histograms.
pub const QUANTILES: [(f64, &str); 3] = [(0.5, "0.5"), (0.95, "0.95"), (0.99, "0.99")];

fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

fn prom_escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn prom_labels(labels: &[(String, String)], extra: Option<(&str, &str)>) -> String {
    let mut parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", prom_escape(v)))
        .collect();
    if let Some((k, v)) = extra {
        parts.push(format!("{k}=\"{v}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

/// The Prometheus family name of a metric: `prefix` + name, with `_total` for counters.
pub fn prometheus_name(prefix: &str, metric: &str, kind: Kind) -> String {
    match kind {
        Kind::Counter if !metric.ends_with("_total") => format!("{prefix}{metric}_total"),
        _ => format!("{prefix}{metric}"),
    }
}

/// Prometheus text exposition format 0.0.4. Histograms are exported as summaries.
pub fn prometheus(series: &[SeriesSummary], prefix: &str) -> String {
    let mut out = String::new();
    let mut current: Option<&str> = None;
    for s in series {
        let name = prometheus_name(prefix, &s.metric, s.kind);
        if current != Some(s.metric.as_str()) {
            current = Some(&s.metric);
            let kind = match s.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
                Kind::Histogram => "summary",
            };
            let _ = writeln!(out, "# HELP {name} DSPex metric {}.", s.metric);
            let _ = writeln!(out, "# TYPE {name} {kind}");
        }
        match s.kind {
            Kind::Counter => {
                let _ = writeln!(
                    out,
                    "{name}{} {}",
                    prom_labels(&s.labels, None),
                    number(s.total.sum)
                );
            }
            Kind::Gauge => {
                let _ = writeln!(
                    out,
                    "{name}{} {}",
                    prom_labels(&s.labels, None),
                    number(s.total.last)
                );
            }
            Kind::Histogram => {
                for (q, text) in QUANTILES {
                    let v = s.window.value(Aggregation::Quantile(q)).unwrap_or(f64::NAN);
                    let labels = prom_labels(&s.labels, Some(("quantile", text)));
                    let _ = writeln!(out, "{name}{labels} {}", number(v));
                }
                let labels = prom_labels(&s.labels, None);
                let _ = writeln!(out, "{name}_sum{labels} {}", number(s.total.sum));
                let _ = writeln!(out, "{name}_count{labels} {}", s.total.count);
            }
        }
    }
    out
}

/// The aggregations JSON and CSV report, by name.
pub fn figures(s: &SeriesSummary) -> Vec<(&'static str, Option<f64>)> {
    FIGURES
        .iter()
        .map(|&(name, agg)| (name, s.window.value(agg)))
        .collect()
}

fn json_string(v: &str) -> String {
    let mut out = String::with_capacity(v.len() + 2);
    out.push('"');
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A JSON array with one object per series: metric, kind, labels and the range's figures
/// (`null` where a figure has no value).
pub fn json(series: &[SeriesSummary]) -> String {
    let mut out = String::from("[");
    for (i, s) in series.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let labels: Vec<String> = s
            .labels
            .iter()
            .map(|(k, v)| format!("{}:{}", json_string(k), json_string(v)))
            .collect();
        let _ = write!(
            out,
            "{{\"metric\":{},\"kind\":\"{}\",\"labels\":{{{}}}",
            json_string(&s.metric),
            s.kind.name(),
            labels.join(",")
        );
        for (name, v) in figures(s) {
            match v {
                Some(v) => {
                    let _ = write!(out, ",\"{name}\":{}", number(v));
                }
                None => {
                    let _ = write!(out, ",\"{name}\":null");
                }
            }
        }
        out.push('}');
    }
    out.push(']');
    out
}

fn csv_field(v: &str) -> String {
    if v.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", v.replace('"', "\"\""))
    } else {
        v.to_owned()
    }
}

/// CSV (RFC 4180) with a header row; labels as `name=value` pairs joined by `;`.
pub fn csv(series: &[SeriesSummary]) -> String {
    let mut out =
        String::from("metric,kind,labels,count,sum,min,max,avg,last,p50,p95,p99,rate\r\n");
    for s in series {
        let labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut row = vec![
            csv_field(&s.metric),
            s.kind.name().to_owned(),
            csv_field(&labels.join(";")),
        ];
        row.extend(
            figures(s)
                .into_iter()
                .map(|(_, v)| v.map(number).unwrap_or_default()),
        );
        out.push_str(&row.join(","));
        out.push_str("\r\n");
    }
    out
}

fn statsd_clean(v: &str) -> String {
    v.chars()
        .map(|c| {
            if matches!(c, '|' | ',' | '#' | ':' | '\n' | '\r' | '@') {
                '_'
            } else {
                c
            }
        })
        .collect()
}

/// StatsD lines with DogStatsD tags: counters as `|c` (the range's increase), gauges as
/// `|g`, histograms as `.count|c` plus `.avg`, `.p50`, `.p95`, `.p99`, `.max` gauges.
pub fn statsd(series: &[SeriesSummary], prefix: &str) -> String {
    let mut out = String::new();
    for s in series {
        let tags = if s.labels.is_empty() {
            String::new()
        } else {
            let t: Vec<String> = s
                .labels
                .iter()
                .map(|(k, v)| format!("{k}:{}", statsd_clean(v)))
                .collect();
            format!("|#{}", t.join(","))
        };
        let name = format!("{prefix}{}", s.metric);
        let w = &s.window;
        match s.kind {
            Kind::Counter => {
                let _ = writeln!(out, "{name}:{}|c{tags}", number(w.stats.sum));
            }
            Kind::Gauge => {
                if let Some(v) = w.value(Aggregation::Last) {
                    let _ = writeln!(out, "{name}:{}|g{tags}", number(v));
                }
            }
            Kind::Histogram => {
                let _ = writeln!(out, "{name}.count:{}|c{tags}", w.stats.count);
                let stats = [
                    ("avg", w.value(Aggregation::Avg)),
                    ("p50", w.value(Aggregation::Quantile(0.5))),
                    ("p95", w.value(Aggregation::Quantile(0.95))),
                    ("p99", w.value(Aggregation::Quantile(0.99))),
                    ("max", w.value(Aggregation::Max)),
                ];
                for (suffix, v) in stats {
                    if let Some(v) = v {
                        let _ = writeln!(out, "{name}.{suffix}:{}|g{tags}", number(v));
                    }
                }
            }
        }
    }
    out
}
