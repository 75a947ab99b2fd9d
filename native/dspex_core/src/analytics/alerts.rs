//! Alert rules: a threshold on an aggregation over a window, held for a `for` duration.
//!
//! Each rule is a small state machine: `inactive` → (condition true) `pending` → (still true
//! after `for_ms`) `firing`, which emits [`Effect::Fired`]; a false condition returns a
//! pending rule to `inactive` silently and a firing one with [`Effect::Resolved`]. A rule with
//! no data (an empty window, a zero denominator) counts as false. Rules are evaluated when
//! the caller says (the Elixir side does it once a second).
//!
//! ```
//! use dspex_core::analytics::alerts::{Alerts, Comparison, Effect, Expr, Rule};
//!
//! let mut alerts = Alerts::new();
//! alerts.put(Rule {
//!     name: "too_hot".into(),
//!     expr: Expr::Const(0.0),
//!     comparison: Comparison::Above,
//!     threshold: -1.0,
//!     window_s: 60,
//!     for_ms: 1_000,
//!     severity: "warning".into(),
//! }).unwrap();
//! assert!(alerts.step(0, |_| Some(0.0)).is_empty(), "pending, not firing yet");
//! let fired = alerts.step(1_000, |_| Some(0.0));
//! assert!(matches!(fired.as_slice(), [Effect::Fired { .. }]));
//! ```

use super::query::{summarize_many, Aggregation, Range, Source};
use super::{Error, Result};

/// Which side of the threshold is bad.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    /// The value is bad when greater than the threshold.
    Above,
    /// The value is bad when less than the threshold.
    Below,
}

/// One or more metrics (merged) aggregated over the rule's window.
#[derive(Debug, Clone, PartialEq)]
pub struct Term {
    /// Metric names, merged (say, reads and writes).
    pub metrics: Vec<String>,
    /// Aggregation over the window.
    pub aggregation: Aggregation,
}

/// What a rule watches.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// One aggregated metric.
    Value(Term),
    /// One aggregated metric divided by another (no value when the denominator is 0).
    Ratio(Term, Term),
    /// A fixed value (for tests and examples).
    Const(f64),
}

/// An alert rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Unique name.
    pub name: String,
    /// The watched value.
    pub expr: Expr,
    /// Which side is bad.
    pub comparison: Comparison,
    /// The threshold.
    pub threshold: f64,
    /// Window in seconds (1..=3600) the value is aggregated over.
    pub window_s: u64,
    /// How long the condition must hold before the rule fires.
    pub for_ms: u64,
    /// Free-form severity (`warning`, `critical`, …).
    pub severity: String,
}

/// Where a rule is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum State {
    /// Condition false.
    Inactive,
    /// Condition true since `since_ms`, not yet for `for_ms`.
    Pending {
        /// When the condition became true.
        since_ms: u64,
    },
    /// Fired at `since_ms`.
    Firing {
        /// When it fired.
        since_ms: u64,
        /// The value that made it fire.
        value: f64,
    },
}

/// What an evaluation produced.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// A rule started firing.
    Fired {
        /// Rule name.
        rule: String,
        /// Rule severity.
        severity: String,
        /// The value that crossed the threshold.
        value: f64,
        /// The threshold.
        threshold: f64,
    },
    /// A firing rule's condition is false again.
    Resolved {
        /// Rule name.
        rule: String,
        /// Rule severity.
        severity: String,
        /// The current value (`None`: no data).
        value: Option<f64>,
        /// How long it fired.
        fired_for_ms: u64,
    },
}

/// A set of rules and their states.
#[derive(Debug, Clone, Default)]
pub struct Alerts {
    rules: Vec<(Rule, State)>,
}

impl Alerts {
    /// No rules.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `rule`, replacing a rule of the same name (whose state is reset).
    ///
    /// # Errors
    /// [`Error::InvalidAlert`] for an empty name, a window outside 1..=3600 s, a threshold
    /// that is not finite, or a quantile outside [0, 1].
    pub fn put(&mut self, rule: Rule) -> Result<()> {
        check(&rule)?;
        self.remove(&rule.name);
        self.rules.push((rule, State::Inactive));
        Ok(())
    }

    /// Removes a rule; false if there was none of that name.
    pub fn remove(&mut self, name: &str) -> bool {
        let before = self.rules.len();
        self.rules.retain(|(r, _)| r.name != name);
        self.rules.len() != before
    }

    /// Every rule with its state.
    pub fn rules(&self) -> &[(Rule, State)] {
        &self.rules
    }

    /// Advances every rule to `now_ms`, with `value` giving each rule's current value.
    pub fn step(
        &mut self,
        now_ms: u64,
        mut value: impl FnMut(&Rule) -> Option<f64>,
    ) -> Vec<Effect> {
        let mut effects = Vec::new();
        for (rule, state) in &mut self.rules {
            let v = value(rule);
            let bad = v.is_some_and(|v| match rule.comparison {
                Comparison::Above => v > rule.threshold,
                Comparison::Below => v < rule.threshold,
            });
            *state = match (*state, bad) {
                (State::Inactive, false) | (State::Pending { .. }, false) => State::Inactive,
                (firing @ State::Firing { .. }, true) => firing,
                (State::Firing { since_ms, .. }, false) => {
                    effects.push(Effect::Resolved {
                        rule: rule.name.clone(),
                        severity: rule.severity.clone(),
                        value: v,
                        fired_for_ms: now_ms.saturating_sub(since_ms),
                    });
                    State::Inactive
                }
                // Bad now: pending since it first went bad, firing once that is `for_ms` ago
                // (at once when `for_ms` is zero).
                (previous, true) => {
                    let since_ms = match previous {
                        State::Pending { since_ms } => since_ms,
                        _ => now_ms,
                    };
                    if now_ms.saturating_sub(since_ms) >= rule.for_ms {
                        let v = v.unwrap_or(f64::NAN);
                        effects.push(Effect::Fired {
                            rule: rule.name.clone(),
                            severity: rule.severity.clone(),
                            value: v,
                            threshold: rule.threshold,
                        });
                        State::Firing {
                            since_ms: now_ms,
                            value: v,
                        }
                    } else {
                        State::Pending { since_ms }
                    }
                }
            };
        }
        effects
    }

    /// Advances every rule to `now_ms`, reading values from `source`.
    pub fn evaluate(&mut self, source: &impl Source, now_ms: u64) -> Vec<Effect> {
        self.step(now_ms, |rule| value_of(source, rule, now_ms))
    }
}

fn term_value(source: &impl Source, term: &Term, window_s: u64, now_ms: u64) -> Option<f64> {
    let names: Vec<&str> = term.metrics.iter().map(String::as_str).collect();
    summarize_many(source, &names, &[], Range::LastSeconds(window_s), now_ms)
        .ok()?
        .value(term.aggregation)
}

/// A rule's current value.
pub fn value_of(source: &impl Source, rule: &Rule, now_ms: u64) -> Option<f64> {
    match &rule.expr {
        Expr::Const(v) => Some(*v),
        Expr::Value(t) => term_value(source, t, rule.window_s, now_ms),
        Expr::Ratio(n, d) => {
            let d = term_value(source, d, rule.window_s, now_ms)?;
            let n = term_value(source, n, rule.window_s, now_ms).unwrap_or(0.0);
            (d != 0.0).then(|| n / d)
        }
    }
}

fn check(rule: &Rule) -> Result<()> {
    let bad = |why: &str| Err(Error::InvalidAlert(format!("{}: {why}", rule.name)));
    if rule.name.is_empty() {
        return bad("empty name");
    }
    if !(1..=3_600).contains(&rule.window_s) {
        return bad("window must be 1..=3600 seconds");
    }
    if !rule.threshold.is_finite() {
        return bad("threshold must be finite");
    }
    let terms: Vec<&Term> = match &rule.expr {
        Expr::Value(t) => vec![t],
        Expr::Ratio(a, b) => vec![a, b],
        Expr::Const(_) => vec![],
    };
    for t in terms {
        if t.metrics.is_empty() {
            return bad("a term names no metric");
        }
        if let Aggregation::Quantile(q) = t.aggregation {
            if !(0.0..=1.0).contains(&q) {
                return bad("quantile must be in [0, 1]");
            }
        }
    }
    Ok(())
}
