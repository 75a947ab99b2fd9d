//! Analytics NIFs (`dspex_core::analytics`): recording, queries, exports, snapshots, alerts.
//!
//! Recording is a regular NIF: it builds the series key from the raw terms on the stack
//! (an atom is its term word, a string its bytes), so a series seen before costs one hash
//! lookup in the calling scheduler's shard and no allocation. Names and labels are decoded to
//! text only the first time a shard meets a key.

use std::sync::OnceLock;

use dspex_core::analytics::alerts::{
    Alerts, Comparison, Effect, Expr, Rule, State, Term as AlertTerm,
};
use dspex_core::analytics::export;
use dspex_core::analytics::query::{self, Aggregation, Range, Source, Summary, FIGURES};
use dspex_core::analytics::{
    Analytics, Config, Error as AError, Kind, Labels, SeriesData, SeriesSpec, Snapshot,
};
use parking_lot::Mutex;

use crate::binary::to_binary;
use crate::hot_nif::hot_nif;
use crate::list::List;
use crate::registry;
use crate::term_key::{atom_word, Key};
use crate::wall_clock;
use rustler::types::map::MapIterator;
use rustler::{Atom, Binary, Encoder, Env, Error, NifResult, ResourceArc, Term, TermType};

mod atoms {
    rustler::atoms! {
        counter, gauge, histogram, all, last, quantile, prometheus, json, csv, statsd, fired, resolved, above, below, value, ratio,
        inactive, pending, firing, invalid_labels, invalid_name, const_ = "const",
    }
}

/// A live engine, or a frozen (merged) snapshot answering the same queries.
pub enum Engine {
    /// Records and answers.
    Live(Analytics, Mutex<Alerts>),
    /// Answers only.
    Frozen(Snapshot),
}

/// The analytics resource.
pub struct EngineResource(Engine);

#[rustler::resource_impl]
impl rustler::Resource for EngineResource {}

fn error_term<'a>(env: Env<'a>, err: &AError) -> Term<'a> {
    let reason = Atom::from_str(env, err.reason()).expect("reason names are valid atoms");
    (crate::atoms::error(), (reason, err.to_string())).encode(env)
}

fn kind_of(term: Term) -> NifResult<Kind> {
    // Atoms are immediate terms: equal atoms are equal words, so no call into the VM.
    let word = atom_word(term);
    let env = term.get_env();
    if word == atom_word(atoms::histogram().to_term(env)) {
        Ok(Kind::Histogram)
    } else if word == atom_word(atoms::counter().to_term(env)) {
        Ok(Kind::Counter)
    } else if word == atom_word(atoms::gauge().to_term(env)) {
        Ok(Kind::Gauge)
    } else {
        Err(Error::BadArg)
    }
}

fn global() -> &'static ResourceArc<EngineResource> {
    registry::ANALYTICS.get_or_init(|| new_engine(Config::default()))
}

fn new_engine(config: Config) -> ResourceArc<EngineResource> {
    let engine = Engine::Live(Analytics::new(config), Mutex::new(Alerts::new()));
    ResourceArc::new(EngineResource(engine))
}

/// Sets the node engine's limits (`max_metrics` names, `max_series` label sets per name) and
/// returns the engine; the first call wins, later calls return the existing engine.
#[rustler::nif]
fn analytics_init(env: Env, max_metrics: usize, max_series: usize, key_cache: usize) -> Term {
    registry::ANALYTICS
        .get_or_init(|| {
            new_engine(Config {
                max_metrics: max_metrics.max(1),
                max_series_per_metric: max_series.max(1),
                key_cache_per_shard: key_cache,
                ..Config::default()
            })
        })
        .encode(env)
}

fn text(term: Term) -> Result<String, AError> {
    match term.get_type() {
        TermType::Atom => term
            .atom_to_string()
            .map_err(|_| AError::InvalidName("an atom outside Latin-1".into())),
        TermType::Binary => {
            let bin = Binary::from_term(term).map_err(|_| AError::InvalidName("?".into()))?;
            String::from_utf8(bin.as_slice().to_vec())
                .map_err(|_| AError::InvalidLabels("a name or value is not UTF-8".into()))
        }
        TermType::Integer => term
            .decode::<i64>()
            .map(|n| n.to_string())
            .map_err(|_| AError::InvalidLabels("integer out of range".into())),
        _ => Err(AError::InvalidLabels(
            "not an atom, string or integer".into(),
        )),
    }
}

fn describe(name: Term, labels: Term) -> Result<SeriesSpec, AError> {
    let mut pairs = Vec::new();
    if let Some(iter) = MapIterator::new(labels) {
        for (k, v) in iter {
            pairs.push((text(k)?, text(v)?));
        }
    }
    Ok(SeriesSpec {
        name: text(name)?,
        labels: pairs,
    })
}

/// Records `value` (a number) for `name` (atom or string) with `labels` (a map of at most
/// 16 atom/string keys to atom/string/integer values). `:ok` or `{:error, {reason, message}}`;
/// nothing is recorded on error. Records into the node engine.
fn analytics_record<'a>(
    env: Env<'a>,
    [kind, name, value, labels]: [Term<'a>; 4],
) -> NifResult<Term<'a>> {
    let Engine::Live(analytics, _) = &global().0 else {
        unreachable!("the node engine is live")
    };
    let kind = kind_of(kind)?;
    let value = number(value)?;
    let size = labels.map_size().map_err(|_| Error::BadArg)?;
    if size > 16 {
        let err = AError::InvalidLabels(format!("{size} labels, at most 16"));
        return Ok(error_term(env, &err));
    }
    let mut key = Key::new();
    let mut bad = None;
    if let Err(why) = key.push_term(name, false) {
        bad = Some(AError::InvalidName(why.into()));
    }
    if size > 0 && bad.is_none() {
        let iter = MapIterator::new(labels).ok_or(Error::BadArg)?;
        for (k, v) in iter {
            key.push(&[0]);
            if let Err(why) = key.push_term(k, false).and_then(|_| key.push_term(v, true)) {
                bad = Some(AError::InvalidLabels(why.into()));
                break;
            }
        }
    }
    if let Some(err) = bad {
        return Ok(error_term(env, &err));
    }
    let describe = || describe(name, labels);
    let recorded = if size == 0 && name.is_atom() {
        // A label-less atom name: the atom's word names the series (see record_with_id).
        let id = atom_word(name) as u64;
        analytics.record_with_id(
            id,
            key.bytes(),
            kind,
            value,
            wall_clock::coarse_ms(),
            describe,
        )
    } else {
        analytics.record_keyed(key.bytes(), kind, value, wall_clock::coarse_ms(), describe)
    };
    match recorded {
        Ok(()) => Ok(crate::atoms::ok().encode(env)),
        Err(err) => Ok(error_term(env, &err)),
    }
}

/// An integer or a float as `f64`; badarg for anything else.
fn number(term: Term) -> NifResult<f64> {
    if let Ok(f) = term.decode::<f64>() {
        return Ok(f);
    }
    match term.decode::<i64>() {
        Ok(n) => Ok(n as f64),
        // A bignum becomes the nearest float; one beyond 128 bits becomes infinity, which
        // the engine refuses as not finite.
        Err(_) if term.get_type() == TermType::Integer => {
            Ok(term.decode::<i128>().map_or(f64::INFINITY, |n| n as f64))
        }
        Err(e) => Err(e),
    }
}

hot_nif!("analytics_record", 4, analytics_record);

fn decode_range(term: Term) -> NifResult<Range> {
    if crate::atoms::atom_is(term, atoms::all()) {
        return Ok(Range::All);
    }
    let (tag, n): (Term, Term) = term.decode()?;
    if crate::atoms::atom_is(tag, atoms::last()) {
        return Ok(Range::LastSeconds(n.decode()?));
    }
    Ok(Range::Between {
        start_ms: tag.decode()?,
        end_ms: n.decode()?,
    })
}

impl Source for Engine {
    fn visit(&self, metric: Option<&str>, f: &mut dyn FnMut(&str, &Labels, &SeriesData)) {
        match self {
            Engine::Live(analytics, _) => analytics.visit(metric, f),
            Engine::Frozen(snapshot) => snapshot.visit(metric, f),
        }
    }
}

/// The atoms of the core's figure names, made once (atoms live as long as the VM).
static FIGURE_ATOMS: OnceLock<Vec<Atom>> = OnceLock::new();

fn encode_summary<'a>(env: Env<'a>, s: &Summary) -> NifResult<Term<'a>> {
    let atoms = FIGURE_ATOMS.get_or_init(|| {
        FIGURES
            .iter()
            .map(|(name, _)| Atom::from_str(env, name).expect("figure names are valid atoms"))
            .collect()
    });
    let mut keys = Vec::with_capacity(FIGURES.len());
    let mut values = Vec::with_capacity(FIGURES.len());
    for (atom, (_, agg)) in atoms.iter().zip(FIGURES) {
        keys.push(atom.encode(env));
        values.push(match s.value(agg) {
            Some(v) if agg == Aggregation::Count => (v as u64).encode(env),
            Some(v) => v.encode(env),
            None => crate::atoms::nil().encode(env),
        });
    }
    Term::map_from_term_arrays(env, &keys, &values)
}

fn decode_filter<'a>(term: Term<'a>) -> NifResult<Vec<(String, String)>> {
    term.decode::<List<(String, String)>>().map(|l| l.0)
}

/// The label filter as the core's borrowed pairs.
fn pairs(filter: &[(String, String)]) -> Vec<(&str, &str)> {
    filter
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

/// Every figure of `metrics` (a list of names, merged) over `range`: `{:ok, %{count:, sum:, min:, max:, avg:, last:,
/// p50:, p95:, p99:, rate:}}` (nil where a figure has no value) or `{:error, {reason, msg}}`.
#[rustler::nif]
fn analytics_summary<'a>(
    env: Env<'a>,
    engine: ResourceArc<EngineResource>,
    metrics: List<String>,
    filter: Term<'a>,
    range: Term<'a>,
    now_ms: u64,
) -> NifResult<Term<'a>> {
    let metrics = metrics.0;
    let filter = decode_filter(filter)?;
    let pairs = pairs(&filter);
    let names: Vec<&str> = metrics.iter().map(String::as_str).collect();
    let range = decode_range(range)?;
    match query::summarize_many(&engine.0, &names, &pairs, range, now_ms) {
        Ok(summary) => Ok((crate::atoms::ok(), encode_summary(env, &summary)?).encode(env)),
        Err(err) => Ok(error_term(env, &err)),
    }
}

/// `{:ok, [{step_start_ms, figures}]}` or `{:error, {reason, msg}}`.
#[rustler::nif]
#[allow(clippy::too_many_arguments)]
fn analytics_time_series<'a>(
    env: Env<'a>,
    engine: ResourceArc<EngineResource>,
    metric: String,
    filter: Term<'a>,
    start_ms: u64,
    end_ms: u64,
    step_ms: u64,
    now_ms: u64,
) -> NifResult<Term<'a>> {
    let filter = decode_filter(filter)?;
    let pairs = pairs(&filter);
    match query::time_series(
        &engine.0, &metric, &pairs, start_ms, end_ms, step_ms, now_ms,
    ) {
        Ok(points) => {
            let mut out = Vec::with_capacity(points.len());
            for (t, summary) in &points {
                out.push((*t, encode_summary(env, summary)?).encode(env));
            }
            Ok((crate::atoms::ok(), out).encode(env))
        }
        Err(err) => Ok(error_term(env, &err)),
    }
}

/// `{:ok, text}` in `format` (`:prometheus | :json | :csv | :statsd`) over `range`.
#[rustler::nif]
fn analytics_export<'a>(
    env: Env<'a>,
    engine: ResourceArc<EngineResource>,
    format: Term<'a>,
    range: Term<'a>,
    now_ms: u64,
    prefix: String,
) -> NifResult<Term<'a>> {
    use crate::atoms::atom_is;
    let range = decode_range(range)?;
    let series = match query::series_summaries(&engine.0, range, now_ms) {
        Ok(series) => series,
        Err(err) => return Ok(error_term(env, &err)),
    };
    let text = if atom_is(format, atoms::prometheus()) {
        export::prometheus(&series, &prefix)
    } else if atom_is(format, atoms::json()) {
        export::json(&series)
    } else if atom_is(format, atoms::csv()) {
        export::csv(&series)
    } else if atom_is(format, atoms::statsd()) {
        export::statsd(&series, &prefix)
    } else {
        return Err(Error::BadArg);
    };
    Ok((crate::atoms::ok(), to_binary(env, text.as_bytes())).encode(env))
}

/// `[{name, kind, series_count}]`.
#[rustler::nif]
fn analytics_metrics(env: Env, engine: ResourceArc<EngineResource>) -> Term {
    let list: Vec<(String, Kind, usize)> = match &engine.0 {
        Engine::Live(a, _) => a.metrics(),
        Engine::Frozen(s) => s.metrics(),
    };
    let encoded: Vec<Term> = list
        .into_iter()
        .map(|(name, kind, n)| {
            let kind = match kind {
                Kind::Counter => atoms::counter(),
                Kind::Gauge => atoms::gauge(),
                Kind::Histogram => atoms::histogram(),
            };
            (name, kind, n).encode(env)
        })
        .collect();
    encoded.encode(env)
}

/// The engine's data as a checked binary frame (for another node).
#[rustler::nif(schedule = "DirtyCpu")]
fn analytics_snapshot(env: Env, engine: ResourceArc<EngineResource>, now_ms: u64) -> Term {
    let frame = match &engine.0 {
        Engine::Live(a, _) => a.snapshot(now_ms).to_frame(),
        Engine::Frozen(s) => s.to_frame(),
    };
    to_binary(env, &frame)
}

/// A frozen engine merging snapshot frames: `{:ok, engine}` or `{:error, {reason, msg}}`.
#[rustler::nif(schedule = "DirtyCpu")]
fn analytics_merge<'a>(env: Env<'a>, frames: List<Binary<'a>>) -> Term<'a> {
    let mut merged = Snapshot::default();
    for frame in frames.0 {
        let result = Snapshot::from_frame(frame.as_slice()).and_then(|s| merged.merge(&s));
        if let Err(err) = result {
            return error_term(env, &err);
        }
    }
    let engine = ResourceArc::new(EngineResource(Engine::Frozen(merged)));
    (crate::atoms::ok(), engine.encode(env)).encode(env)
}

/// Heap bytes the node engine holds (see `Analytics::heap_bytes`).
#[rustler::nif]
fn analytics_memory() -> usize {
    let Engine::Live(analytics, _) = &global().0 else {
        unreachable!("the node engine is live")
    };
    analytics.heap_bytes()
}

/// The node engine's limits: `{shards, max_metrics, max_series_per_metric}`.
#[rustler::nif]
fn analytics_limits() -> (usize, usize, usize) {
    let Engine::Live(analytics, _) = &global().0 else {
        unreachable!("the node engine is live")
    };
    let c = analytics.config();
    (c.shards, c.max_metrics, c.max_series_per_metric)
}

/// Forgets every metric (alert rules stay).
#[rustler::nif]
fn analytics_clear(engine: ResourceArc<EngineResource>) -> NifResult<Atom> {
    match &engine.0 {
        Engine::Live(a, _) => {
            a.clear();
            Ok(crate::atoms::ok())
        }
        Engine::Frozen(_) => Err(Error::BadArg),
    }
}

fn decode_aggregation(term: Term) -> NifResult<Aggregation> {
    use crate::atoms::atom_is;
    if let Ok((tag, q)) = term.decode::<(Term, f64)>() {
        if atom_is(tag, atoms::quantile()) {
            return Ok(Aggregation::Quantile(q));
        }
        return Err(Error::BadArg);
    }
    let name = term.atom_to_string()?;
    query::aggregation_named(&name).ok_or(Error::BadArg)
}

fn decode_term(term: Term) -> NifResult<AlertTerm> {
    let (metrics, agg): (List<String>, Term) = term.decode()?;
    Ok(AlertTerm {
        metrics: metrics.0,
        aggregation: decode_aggregation(agg)?,
    })
}

fn decode_expr(term: Term) -> NifResult<Expr> {
    use crate::atoms::atom_is;
    let items = rustler::types::tuple::get_tuple(term)?;
    match items.as_slice() {
        [tag, v] if atom_is(*tag, atoms::const_()) => Ok(Expr::Const(v.decode()?)),
        [tag, t] if atom_is(*tag, atoms::value()) => Ok(Expr::Value(decode_term(*t)?)),
        [tag, n, d] if atom_is(*tag, atoms::ratio()) => {
            Ok(Expr::Ratio(decode_term(*n)?, decode_term(*d)?))
        }
        _ => Err(Error::BadArg),
    }
}

/// Adds or replaces an alert rule `{name, expr, :above | :below, threshold, window_s,
/// for_ms, severity}`; `:ok` or `{:error, {:invalid_alert, msg}}`. Badarg for wrong shapes.
#[rustler::nif]
fn analytics_put_alert<'a>(
    env: Env<'a>,
    engine: ResourceArc<EngineResource>,
    rule: Term<'a>,
) -> NifResult<Term<'a>> {
    let Engine::Live(_, alerts) = &engine.0 else {
        return Err(Error::BadArg);
    };
    let (name, expr, cmp, threshold, window_s, for_ms, severity): (
        String,
        Term,
        Term,
        f64,
        u64,
        u64,
        String,
    ) = rule.decode()?;
    let comparison = if crate::atoms::atom_is(cmp, atoms::above()) {
        Comparison::Above
    } else if crate::atoms::atom_is(cmp, atoms::below()) {
        Comparison::Below
    } else {
        return Err(Error::BadArg);
    };
    let rule = Rule {
        name,
        expr: decode_expr(expr)?,
        comparison,
        threshold,
        window_s,
        for_ms,
        severity,
    };
    match alerts.lock().put(rule) {
        Ok(()) => Ok(crate::atoms::ok().encode(env)),
        Err(err) => Ok(error_term(env, &err)),
    }
}

/// Removes an alert rule; true if it existed.
#[rustler::nif]
fn analytics_remove_alert(engine: ResourceArc<EngineResource>, name: String) -> NifResult<bool> {
    match &engine.0 {
        Engine::Live(_, alerts) => Ok(alerts.lock().remove(&name)),
        Engine::Frozen(_) => Err(Error::BadArg),
    }
}

/// `[{name, severity, state}]` with state `:inactive | {:pending, since} | {:firing, since, value}`.
#[rustler::nif]
fn analytics_alerts(env: Env, engine: ResourceArc<EngineResource>) -> NifResult<Term> {
    let Engine::Live(_, alerts) = &engine.0 else {
        return Err(Error::BadArg);
    };
    let alerts = alerts.lock();
    let list: Vec<Term> = alerts
        .rules()
        .iter()
        .map(|(rule, state)| {
            let state = match state {
                State::Inactive => atoms::inactive().encode(env),
                State::Pending { since_ms } => (atoms::pending(), *since_ms).encode(env),
                State::Firing { since_ms, value } => {
                    (atoms::firing(), *since_ms, *value).encode(env)
                }
            };
            (rule.name.as_str(), rule.severity.as_str(), state).encode(env)
        })
        .collect();
    Ok(list.encode(env))
}

/// Evaluates every alert rule at `now_ms`: `[{:fired, name, severity, value, threshold} |
/// {:resolved, name, severity, value | nil, fired_for_ms}]`.
#[rustler::nif]
fn analytics_evaluate_alerts(
    env: Env,
    engine: ResourceArc<EngineResource>,
    now_ms: u64,
) -> NifResult<Term> {
    let Engine::Live(analytics, alerts) = &engine.0 else {
        return Err(Error::BadArg);
    };
    let effects = alerts.lock().evaluate(analytics, now_ms);
    let list: Vec<Term> = effects
        .iter()
        .map(|e| match e {
            Effect::Fired {
                rule,
                severity,
                value,
                threshold,
            } => (
                atoms::fired(),
                rule.as_str(),
                severity.as_str(),
                *value,
                *threshold,
            )
                .encode(env),
            Effect::Resolved {
                rule,
                severity,
                value,
                fired_for_ms,
            } => {
                let v = match value {
                    Some(v) => v.encode(env),
                    None => crate::atoms::nil().encode(env),
                };
                (
                    atoms::resolved(),
                    rule.as_str(),
                    severity.as_str(),
                    v,
                    *fired_for_ms,
                )
                    .encode(env)
            }
        })
        .collect();
    Ok(list.encode(env))
}
