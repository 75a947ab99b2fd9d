//! Access-control NIFs (`dspex_core::acl`). One engine per VM, behind a mutex held only for
//! the length of one decision. Every NIF here is regular: a decision takes well under a
//! microsecond, a policy change a few.
//!
//! Rules arrive in the canonical tuple form built by `DSPex.Bridge.AccessControl`; a term of
//! another shape is a badarg (the Elixir layer has already refused it with a clear error).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use ahash::AHashMap;
use dspex_core::acl::{
    AccessControl, AccessMode, Caller, Condition, Context, Decision, Effect, OwnedCaller,
    Permission, Rule, RuleError, SessionPattern, Value,
};
use rustler::types::tuple::get_tuple;
use rustler::{Atom, Encoder, Env, Error, MapIterator, NifResult, Term, TermType};

use crate::atoms::{self, atom_is};
use crate::hot_nif::hot_nif;
use crate::list::List;
use crate::registry;
use crate::reporting;
use crate::term_key::{remembered, AtomMemo, Key};
use crate::var_key::{with_text, VarKey};
use crate::wall_clock;

type Engine = AccessControl<(VarKey, VarKey)>;

/// Decisions cached at most; past this the cache starts over.
const CACHE_CAPACITY: usize = 100_000;

/// A policy as it was given: its mode and each rule's id with the canonical term
/// (`DSPex.Bridge.AccessControl` builds them), in external term format.
struct Source {
    mode: AccessMode,
    rules: Vec<(String, Vec<u8>)>,
}

/// The compiled engine and the policies as given, under one lock: `get_policy` and a
/// session's snapshot read the rules back exactly as they were set, and the two can never
/// be out of step (the policies are stored here only).
pub(crate) struct Store {
    engine: Engine,
    sources: AHashMap<(VarKey, VarKey), Source>,
}

impl std::ops::Deref for Store {
    type Target = Engine;
    fn deref(&self) -> &Engine {
        &self.engine
    }
}

impl std::ops::DerefMut for Store {
    fn deref_mut(&mut self) -> &mut Engine {
        &mut self.engine
    }
}

impl Store {
    pub(crate) fn new() -> Self {
        Store {
            engine: AccessControl::new(CACHE_CAPACITY),
            sources: AHashMap::new(),
        }
    }
}

/// Each rule term's id and external form, for `Source`.
fn rule_sources(rules: Term) -> NifResult<Vec<(String, Vec<u8>)>> {
    crate::list::terms(rules)?
        .into_iter()
        .map(rule_source)
        .collect()
}

fn rule_source(rule: Term) -> NifResult<(String, Vec<u8>)> {
    let id: String = get_tuple(rule)?.first().ok_or(Error::BadArg)?.decode()?;
    Ok((id, rule.to_binary().as_slice().to_vec()))
}

fn encode_source<'a>(env: Env<'a>, source: &Source) -> NifResult<Term<'a>> {
    let rules = source
        .rules
        .iter()
        .map(|(_, bytes)| {
            env.binary_to_term(bytes)
                .map(|(t, _)| t)
                .ok_or(Error::BadArg)
        })
        .collect::<NifResult<Vec<Term>>>()?;
    Ok((encode_mode(source.mode), rules).encode(env))
}

fn decode_permission(term: Term) -> NifResult<Permission> {
    [
        (atoms::read(), Permission::Read),
        (atoms::write(), Permission::Write),
        (atoms::observe(), Permission::Observe),
        (atoms::optimize(), Permission::Optimize),
    ]
    .into_iter()
    .find(|(a, _)| atom_is(term, *a))
    .map(|(_, p)| p)
    .ok_or(Error::BadArg)
}

fn encode_permission(p: Permission) -> Atom {
    match p {
        Permission::Read => atoms::read(),
        Permission::Write => atoms::write(),
        Permission::Observe => atoms::observe(),
        Permission::Optimize => atoms::optimize(),
    }
}

fn decode_mode(term: Term) -> NifResult<AccessMode> {
    if atom_is(term, atoms::private()) {
        Ok(AccessMode::Private)
    } else if atom_is(term, atoms::protected()) {
        Ok(AccessMode::Protected)
    } else if atom_is(term, atoms::public()) {
        Ok(AccessMode::Public)
    } else {
        Err(Error::BadArg)
    }
}

fn encode_mode(mode: AccessMode) -> Atom {
    match mode {
        AccessMode::Private => atoms::private(),
        AccessMode::Protected => atoms::protected(),
        AccessMode::Public => atoms::public(),
    }
}

thread_local! {
    static ATOM_TEXT: AtomMemo<Arc<str>> = AtomMemo::default();
}

fn atom_text(term: Term) -> NifResult<Arc<str>> {
    remembered(&ATOM_TEXT, term, || with_text(term, |text| Arc::from(text)))
}

fn decode_value(term: Term) -> Option<Value> {
    match term.get_type() {
        TermType::Binary => term.decode::<String>().ok().map(Value::Str),
        TermType::Atom => atom_text(term).ok().map(|t| Value::Atom(t.to_string())),
        TermType::Integer => term.decode::<i64>().ok().map(Value::Int),
        TermType::Float => term.decode::<f64>().ok().map(Value::Float),
        _ => None,
    }
}

fn key_text(term: Term) -> NifResult<Arc<str>> {
    match term.get_type() {
        TermType::Atom => atom_text(term),
        TermType::Binary => Ok(term.decode::<String>()?.into()),
        _ => Err(Error::BadArg),
    }
}

/// A context map; values of kinds no condition can test (lists, maps, pids) count as absent.
fn decode_context(term: Term) -> NifResult<Context> {
    let iter = MapIterator::new(term).ok_or(Error::BadArg)?;
    Ok(Context::from_shared(iter.filter_map(|(k, v)| {
        Some((key_text(k).ok()?, decode_value(v)?))
    })))
}

type Compiled<T> = Result<T, RuleError>;

fn decode_pattern(term: Term) -> NifResult<Compiled<SessionPattern>> {
    if atom_is(term, atoms::any()) {
        return Ok(Ok(SessionPattern::Any));
    }
    let parts = get_tuple(term)?;
    let [tag, arg] = parts.as_slice() else {
        return Err(Error::BadArg);
    };
    let arg: String = arg.decode()?;
    Ok(if atom_is(*tag, atoms::exact()) {
        Ok(SessionPattern::Exact(arg))
    } else if atom_is(*tag, atoms::prefix()) {
        Ok(SessionPattern::Prefix(arg))
    } else if atom_is(*tag, atoms::suffix()) {
        Ok(SessionPattern::Suffix(arg))
    } else if atom_is(*tag, atoms::glob()) {
        SessionPattern::glob(&arg)
    } else if atom_is(*tag, atoms::regex()) {
        SessionPattern::regex(&arg)
    } else {
        return Err(Error::BadArg);
    })
}

fn values(term: Term) -> NifResult<Vec<Value>> {
    crate::list::terms(term)?
        .into_iter()
        .map(|t| decode_value(t).ok_or(Error::BadArg))
        .collect()
}

fn decode_condition(term: Term) -> NifResult<Compiled<Condition>> {
    let parts = get_tuple(term)?;
    let tag = *parts.first().ok_or(Error::BadArg)?;
    let arg = |i: usize| parts.get(i).copied().ok_or(Error::BadArg);
    let value = |i: usize| arg(i).and_then(|t| decode_value(t).ok_or(Error::BadArg));
    let number = |i: usize| {
        arg(i).and_then(|t| {
            t.decode::<f64>()
                .or_else(|_| t.decode::<i64>().map(|n| n as f64))
        })
    };
    let c = if atom_is(tag, atoms::equals()) {
        Condition::Equals(value(1)?)
    } else if atom_is(tag, atoms::not_equals()) {
        Condition::NotEquals(value(1)?)
    } else if atom_is(tag, atoms::in_()) {
        Condition::In(values(arg(1)?)?)
    } else if atom_is(tag, atoms::not_in()) {
        Condition::NotIn(values(arg(1)?)?)
    } else if atom_is(tag, atoms::matches()) {
        return Ok(Condition::matches(&arg(1)?.decode::<String>()?));
    } else if atom_is(tag, atoms::cidr()) {
        return Ok(Condition::cidr(&arg(1)?.decode::<List<String>>()?.0));
    } else if atom_is(tag, atoms::gt()) {
        Condition::Gt(number(1)?)
    } else if atom_is(tag, atoms::gte()) {
        Condition::Gte(number(1)?)
    } else if atom_is(tag, atoms::lt()) {
        Condition::Lt(number(1)?)
    } else if atom_is(tag, atoms::lte()) {
        Condition::Lte(number(1)?)
    } else if atom_is(tag, atoms::between()) {
        return Ok(Condition::between(number(1)?, number(2)?));
    } else {
        return Err(Error::BadArg);
    };
    Ok(Ok(c))
}

fn optional<'a, T: rustler::Decoder<'a>>(term: Term<'a>) -> NifResult<Option<T>> {
    if atom_is(term, atoms::nil()) {
        Ok(None)
    } else {
        term.decode().map(Some)
    }
}

/// `{id, pattern, permissions, effect, conditions, priority, not_before, expires_at,
/// granted_by, granted_at}`.
fn decode_rule(term: Term) -> NifResult<Compiled<Rule>> {
    let parts = get_tuple(term)?;
    let [id, pattern, perms, effect, conds, priority, not_before, expires_at, granted_by, granted_at] =
        parts.as_slice()
    else {
        return Err(Error::BadArg);
    };
    let pattern = match decode_pattern(*pattern)? {
        Ok(p) => p,
        Err(e) => return Ok(Err(e)),
    };
    let perms: Vec<Permission> = perms
        .decode::<List<Term>>()?
        .0
        .into_iter()
        .map(decode_permission)
        .collect::<NifResult<_>>()?;
    let mut rule = Rule::new(&id.decode::<String>()?, pattern, &perms);
    rule.effect = if atom_is(*effect, atoms::deny()) {
        Effect::Deny
    } else if atom_is(*effect, atoms::allow()) {
        Effect::Allow
    } else {
        return Err(Error::BadArg);
    };
    for c in crate::list::terms(*conds)? {
        let (key, cond) = c.decode::<(Term, Term)>()?;
        match decode_condition(cond)? {
            Ok(cond) => rule.conditions.push((key_text(key)?.to_string(), cond)),
            Err(e) => return Ok(Err(e)),
        }
    }
    rule.priority = priority.decode()?;
    rule.not_before = optional(*not_before)?;
    rule.expires_at = optional(*expires_at)?;
    rule.granted_by = optional(*granted_by)?;
    rule.granted_at = optional(*granted_at)?;
    Ok(Ok(rule))
}

fn decode_rules(list: Term) -> NifResult<Result<Vec<Rule>, (usize, RuleError)>> {
    let terms = crate::list::terms(list)?;
    let mut rules = Vec::with_capacity(terms.len());
    for (i, t) in terms.into_iter().enumerate() {
        match decode_rule(t)? {
            Ok(r) => rules.push(r),
            Err(e) => return Ok(Err((i, e))),
        }
    }
    Ok(Ok(rules))
}

fn rule_error<'a>(env: Env<'a>, err: &RuleError) -> Term<'a> {
    let reason = Atom::from_str(env, err.reason()).expect("fixed reason names");
    match err {
        RuleError::BadPattern(d)
        | RuleError::BadCidr(d)
        | RuleError::DuplicateId(d)
        | RuleError::UnknownRule(d) => (reason, d.as_str()).encode(env),
        _ => reason.encode(env),
    }
}

fn invalid_rule<'a>(env: Env<'a>, index: usize, err: &RuleError) -> Term<'a> {
    (
        atoms::error(),
        (atoms::invalid_rule(), index, rule_error(env, err)),
    )
        .encode(env)
}

fn ok_or_rule_error<'a>(env: Env<'a>, result: Result<(), RuleError>) -> Term<'a> {
    match result {
        Ok(()) => atoms::ok().encode(env),
        Err(e) => (atoms::error(), rule_error(env, &e)).encode(env),
    }
}

/// Checks rules without storing them: `:ok` or `{:error, {:invalid_rule, index, reason}}`.
#[rustler::nif]
fn acl_validate<'a>(env: Env<'a>, rules: Term<'a>) -> NifResult<Term<'a>> {
    Ok(match decode_rules(rules)? {
        Err((i, e)) => invalid_rule(env, i, &e),
        Ok(rules) => match Engine::validate(&rules) {
            Ok(()) => atoms::ok().encode(env),
            Err((i, e)) => invalid_rule(env, i, &e),
        },
    })
}

/// Sets a variable's whole policy.
#[rustler::nif]
fn acl_set_policy<'a>(
    env: Env<'a>,
    session: VarKey,
    name: VarKey,
    mode: Term<'a>,
    rules: Term<'a>,
) -> NifResult<Term<'a>> {
    let mode = decode_mode(mode)?;
    let owner = session.id_bytes().to_vec();
    let source = Source {
        mode,
        rules: rule_sources(rules)?,
    };
    Ok(match decode_rules(rules)? {
        Err((i, e)) => invalid_rule(env, i, &e),
        Ok(compiled) => {
            let mut store = registry::ACL.lock();
            let key = (session, name);
            match store.set_policy(key.clone(), &owner, mode, compiled) {
                Ok(()) => {
                    store.sources.insert(key, source);
                    atoms::ok().encode(env)
                }
                Err((i, e)) => invalid_rule(env, i, &e),
            }
        }
    })
}

/// Sets the policies of many variables of one session (an import): `[{name, mode, rules}]`,
/// all checked before any is set. `:ok` or the first `{:error, {:invalid_rule, i, reason}}`.
/// DirtyCpu: a large session's import sets tens of thousands.
#[rustler::nif(schedule = "DirtyCpu")]
fn acl_set_policies<'a>(
    env: Env<'a>,
    session: VarKey,
    policies: List<(VarKey, Term<'a>, Term<'a>)>,
) -> NifResult<Term<'a>> {
    let policies = policies.0;
    let owner = session.id_bytes().to_vec();
    let mut decoded = Vec::with_capacity(policies.len());
    for (name, mode, rules) in policies {
        match decode_rules(rules)? {
            Err((i, e)) => return Ok(invalid_rule(env, i, &e)),
            Ok(compiled) => {
                let mode = decode_mode(mode)?;
                let source = Source {
                    mode,
                    rules: rule_sources(rules)?,
                };
                decoded.push((name, mode, compiled, source))
            }
        }
    }
    let mut store = registry::ACL.lock();
    for (name, mode, compiled, source) in decoded {
        let key = (session.clone(), name);
        if let Err((i, e)) = store.set_policy(key.clone(), &owner, mode, compiled) {
            return Ok(invalid_rule(env, i, &e));
        }
        store.sources.insert(key, source);
    }
    Ok(atoms::ok().encode(env))
}

/// Drops the policies of every variable of `session`; how many there were. DirtyCpu: a
/// large session has tens of thousands.
///
/// An atom whose text is outside Latin-1 cannot key a policy (see `var_key`), so a session
/// named by one has none: 0.
#[rustler::nif(schedule = "DirtyCpu")]
fn acl_remove_session(session: Term) -> NifResult<usize> {
    let session: VarKey = match session.decode() {
        Ok(key) => key,
        Err(_) if session.is_atom() => return Ok(0),
        Err(err) => return Err(err),
    };
    let mut store = registry::ACL.lock();
    store.sources.retain(|(s, _), _| *s != session);
    Ok(store.remove_policies_where(|(s, _)| *s == session))
}

/// Drops a variable's policy; `true` if it had one.
#[rustler::nif]
fn acl_remove_policy(session: VarKey, name: VarKey) -> bool {
    let mut store = registry::ACL.lock();
    let key = (session, name);
    store.sources.remove(&key);
    store.remove_policy(&key)
}

/// Adds one rule: `:ok` or `{:error, reason}`.
#[rustler::nif]
fn acl_add_rule<'a>(
    env: Env<'a>,
    session: VarKey,
    name: VarKey,
    rule: Term<'a>,
) -> NifResult<Term<'a>> {
    let source = rule_source(rule)?;
    Ok(match decode_rule(rule)? {
        Err(e) => (atoms::error(), rule_error(env, &e)).encode(env),
        Ok(compiled) => {
            let mut store = registry::ACL.lock();
            let key = (session, name);
            let result = store.add_rule(&key, compiled);
            if result.is_ok() {
                if let Some(s) = store.sources.get_mut(&key) {
                    s.rules.push(source);
                }
            }
            ok_or_rule_error(env, result)
        }
    })
}

/// Removes a rule by id.
#[rustler::nif]
fn acl_remove_rule(env: Env, session: VarKey, name: VarKey, id: String) -> Term {
    let mut store = registry::ACL.lock();
    let key = (session, name);
    let result = store.remove_rule(&key, &id);
    if result.is_ok() {
        if let Some(s) = store.sources.get_mut(&key) {
            s.rules.retain(|(rule_id, _)| *rule_id != id);
        }
    }
    ok_or_rule_error(env, result)
}

/// Changes the access mode.
#[rustler::nif]
fn acl_set_mode<'a>(
    env: Env<'a>,
    session: VarKey,
    name: VarKey,
    mode: Term<'a>,
) -> NifResult<Term<'a>> {
    let mode = decode_mode(mode)?;
    let mut store = registry::ACL.lock();
    let key = (session, name);
    let result = store.set_mode(&key, mode);
    if result.is_ok() {
        if let Some(s) = store.sources.get_mut(&key) {
            s.mode = mode;
        }
    }
    Ok(ok_or_rule_error(env, result))
}

/// A variable's policy as it was set: `{mode, [rule]}` (the canonical rule terms), or `nil`.
#[rustler::nif]
fn acl_policy(env: Env, session: VarKey, name: VarKey) -> NifResult<Term> {
    match registry::ACL.lock().sources.get(&(session, name)) {
        Some(source) => encode_source(env, source),
        None => Ok(atoms::nil().encode(env)),
    }
}

/// Every policy of a session as it was set: `[{name, mode, [rule]}]`. DirtyCpu: a large
/// session has tens of thousands.
#[rustler::nif(schedule = "DirtyCpu")]
fn acl_session_policies(env: Env, session: VarKey) -> NifResult<Term> {
    let store = registry::ACL.lock();
    let mut out = Vec::new();
    for ((s, name), source) in store.sources.iter() {
        if *s == session {
            let (mode, rules) = encode_source(env, source)?.decode::<(Term, Term)>()?;
            out.push((name, mode, rules).encode(env));
        }
    }
    Ok(out.encode(env))
}

/// Decisions made by `acl_check` since the last `acl_take_counts`: allowed and denied, each
/// from the cache or computed. Counted here so the hot path makes no second call.
static DECISIONS: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];

/// The request as canonical bytes, when every part is an atom, a string or (for context
/// values) an integer; `None` sends the request down the decoding path alone.
fn request_key(terms: [Term; 4], context: Term) -> Option<Key> {
    let mut key = Key::new();
    for t in terms {
        key.push_term(t, false).ok()?;
    }
    if context.map_size().ok()? > 0 {
        for (k, v) in MapIterator::new(context)? {
            key.push_term(k, false).ok()?;
            key.push_term(v, true).ok()?;
        }
    }
    Some(key)
}

/// True while an allowed decision must be reported to Elixir: someone listens to events
/// (see `reporting`) or the audit log keeps every decision. Starts true, so nothing goes
/// unreported before the Elixir side has said what it needs.
static AUDIT_ALL: AtomicBool = AtomicBool::new(true);

/// Whether the audit log keeps every decision (`true`) or fewer (`false`).
#[rustler::nif]
fn acl_set_audit_all(all: bool) -> rustler::Atom {
    AUDIT_ALL.store(all, Ordering::Relaxed);
    atoms::ok()
}

/// The hot path, at the current time: `:ok` for an allowed request nobody needs to hear of,
/// else `{allowed?, cache_hit?, nanoseconds}` (the time this call took when events are on,
/// else 0). A repeated request is found by its canonical bytes without decoding anything; a
/// new one is decoded, decided and remembered under them.
fn acl_check<'a>(
    env: Env<'a>,
    [session, name, caller, permission, context]: [Term<'a>; 5],
) -> NifResult<Term<'a>> {
    let observed = reporting::events_enabled();
    let started = observed.then(Instant::now);
    let key = request_key([session, name, caller, permission], context);
    let mut engine = registry::ACL.lock();
    // The clock is read (precisely: rule windows are judged to the millisecond) only when
    // the cached decision has a window, or when there is none to use.
    let mut now = None;
    let cached = key.as_ref().and_then(|k| {
        engine.lookup_bytes_with(k.bytes(), || *now.insert(wall_clock::precise_ms()))
    });
    let (allowed, hit) = match cached {
        Some(allowed) => (allowed, true),
        None => {
            let now = now.unwrap_or_else(wall_clock::precise_ms);
            let variable: (VarKey, VarKey) = (session.decode()?, name.decode()?);
            let caller: VarKey = caller.decode()?;
            let p = decode_permission(permission)?;
            let ctx = decode_context(context)?;
            match &key {
                Some(k) => {
                    let text = caller.text();
                    let who = Caller {
                        id: caller.id_bytes(),
                        text: &text,
                    };
                    let allowed = engine.check_by_bytes(k.bytes(), &variable, who, p, &ctx, now);
                    (allowed, false)
                }
                None => {
                    let who = OwnedCaller {
                        id: caller.id_bytes().into(),
                        text: caller.text(),
                    };
                    let (d, hit) = engine.check_owned(variable, who, p, ctx, now);
                    (d.allowed(), hit)
                }
            }
        }
    };
    drop(engine);
    DECISIONS[usize::from(!allowed) * 2 + usize::from(!hit)].fetch_add(1, Ordering::Relaxed);
    if allowed && !observed && !AUDIT_ALL.load(Ordering::Relaxed) {
        return Ok(atoms::ok().encode(env));
    }
    let nanos = started.map_or(0, |t| t.elapsed().as_nanos() as u64);
    Ok((allowed, hit, nanos).encode(env))
}

hot_nif!("acl_check", 5, acl_check);

/// The decisions counted since the last call, and zero again: `[allowed_hit, allowed_miss,
/// denied_hit, denied_miss]`.
#[rustler::nif]
fn acl_take_counts() -> Vec<u64> {
    DECISIONS
        .iter()
        .map(|c| c.swap(0, Ordering::Relaxed))
        .collect()
}

/// `acl_explain(session, name, caller, permission, context)`, at the current time: why
/// (`:owner`, `{:rule, id, effect, priority}`, `{:default, mode}` or `:no_policy`), with the
/// outcome: `{allowed?, reason}`. Always evaluated, never from the cache. Registered hot:
/// explaining is what an operator does in a loop over many requests.
fn acl_explain<'a>(
    env: Env<'a>,
    [session, name, caller, permission, context]: [Term<'a>; 5],
) -> NifResult<Term<'a>> {
    let variable: (VarKey, VarKey) = (session.decode()?, name.decode()?);
    let p = decode_permission(permission)?;
    let ctx = decode_context(context)?;
    let caller: VarKey = caller.decode()?;
    let text = caller.text();
    let who = Caller {
        id: caller.id_bytes(),
        text: &text,
    };
    let decision =
        registry::ACL
            .lock()
            .explain_with(&variable, who, p, &ctx, wall_clock::precise_ms);
    let reason = match &decision {
        Decision::Owner => atoms::owner().encode(env),
        Decision::Rule {
            id,
            effect,
            priority,
        } => {
            let effect = if *effect == Effect::Allow {
                atoms::allow()
            } else {
                atoms::deny()
            };
            (atoms::rule(), &**id, effect, *priority).encode(env)
        }
        Decision::Default { mode, .. } => (atoms::default(), encode_mode(*mode)).encode(env),
        Decision::NoPolicy => atoms::no_policy().encode(env),
    };
    Ok((decision.allowed(), reason).encode(env))
}

hot_nif!("acl_explain", 5, acl_explain);

/// The permissions `caller` holds on the variable (uncached).
#[rustler::nif]
fn acl_permissions<'a>(
    session: VarKey,
    name: VarKey,
    caller: VarKey,
    context: Term<'a>,
    now: u64,
) -> NifResult<Vec<Atom>> {
    let ctx = decode_context(context)?;
    let text = caller.text();
    let who = Caller {
        id: caller.id_bytes(),
        text: &text,
    };
    let perms = registry::ACL
        .lock()
        .permissions(&(session, name), who, &ctx, now);
    Ok(perms.into_iter().map(encode_permission).collect())
}

/// `{hits, misses, cache_size, policies}`.
#[rustler::nif]
fn acl_stats() -> (u64, u64, usize, usize) {
    let engine = registry::ACL.lock();
    let s = engine.cache_stats();
    (s.hits, s.misses, s.size, engine.policy_count())
}
