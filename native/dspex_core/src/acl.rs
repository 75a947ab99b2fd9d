//! Access control: per-variable policies with rules, deny-overrides, conditions on the
//! request context, time windows, an explanation for every decision and a coherent cache.
//!
//! A decision for `(variable, session, permission, context, now)`:
//! 1. the variable's owner session may do everything;
//! 2. otherwise, among the rules that are active at `now`, match the session and the
//!    context, and apply to the permission, the highest priority decides; at equal
//!    priority a deny wins;
//! 3. if none applies, the access mode decides: `Private` denies everything, `Protected`
//!    allows read, `Public` allows read and observe.
//!
//! The owner is recognised by identity, not by text: a [`Caller`] carries the exact id the
//! policy's owner is compared with byte for byte, and the text that session patterns match.
//! For plain Rust use both are the same string (`"alice".into()`); a host whose ids are
//! typed (an Erlang atom `:bob` and a string `"bob"` are different sessions) gives each a
//! distinct id.
//!
//! Permissions imply others: `Write` ⇒ `Read`, `Optimize` ⇒ `Write` and `Read`,
//! `Observe` ⇒ `Read`. An allow rule grants what its permissions imply; a deny rule refuses
//! every request that would imply one of its permissions (denying `Read` denies `Write`).
//!
//! ```
//! use dspex_core::acl::{AccessControl, AccessMode, Decision, Effect, Permission, Rule, SessionPattern};
//!
//! let mut acl = AccessControl::new(1024);
//! acl.set_policy("temperature", "owner", AccessMode::Private, vec![]).unwrap();
//! let admins = Rule::new("admins", SessionPattern::glob("admin_*").unwrap(), &[Permission::Write]);
//! acl.add_rule(&"temperature", admins).unwrap();
//!
//! let ctx = Default::default();
//! assert!(acl.check(&"temperature", "admin_alice", Permission::Read, &ctx, 0).allowed());
//! assert!(!acl.check(&"temperature", "guest", Permission::Read, &ctx, 0).allowed());
//! assert!(matches!(
//!     acl.explain(&"temperature", "admin_alice", Permission::Write, &ctx, 0),
//!     Decision::Rule { effect: Effect::Allow, .. }
//! ));
//! ```

use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::Arc;

use ahash::AHashMap;
use ipnet::IpNet;
use regex::{Regex, RegexBuilder};
use smallvec::SmallVec;

/// Compiled regexes are limited to this many bytes, so no pattern can exhaust memory; the
/// `regex` crate matches in linear time, so none can take super-linear time either.
pub const REGEX_SIZE_LIMIT: usize = 64 * 1024;
/// The most rules one variable may carry.
pub const MAX_RULES_PER_VARIABLE: usize = 1_000;

/// A permission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    /// Read the value, history and listing.
    Read,
    /// Write, roll back, delete.
    Write,
    /// Watch for changes.
    Observe,
    /// Take optimizer locks.
    Optimize,
}

impl Permission {
    /// Every permission, in a fixed order.
    pub const ALL: [Permission; 4] = [
        Permission::Read,
        Permission::Write,
        Permission::Observe,
        Permission::Optimize,
    ];

    fn bit(self) -> u8 {
        match self {
            Permission::Read => 1,
            Permission::Write => 2,
            Permission::Observe => 4,
            Permission::Optimize => 8,
        }
    }
}

// The permissions a set of permissions implies (including itself).
fn closure(bits: u8) -> u8 {
    let mut out = bits;
    if out & 8 != 0 {
        out |= 2 | 1;
    }
    if out & (2 | 4) != 0 {
        out |= 1;
    }
    out
}

fn bits_of(perms: &[Permission]) -> u8 {
    perms.iter().fold(0, |acc, p| acc | p.bit())
}

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Effect {
    /// Grants the rule's permissions and what they imply.
    Allow,
    /// Refuses every request implying one of the rule's permissions.
    Deny,
}

/// What a variable allows when no rule applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AccessMode {
    /// Nothing (the default).
    Private,
    /// Read.
    Protected,
    /// Read and observe.
    Public,
}

impl AccessMode {
    fn allows(self, p: Permission) -> bool {
        match self {
            AccessMode::Private => false,
            AccessMode::Protected => p == Permission::Read,
            AccessMode::Public => matches!(p, Permission::Read | Permission::Observe),
        }
    }
}

/// Why a rule could not be compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleError {
    /// A regex or glob failed to compile (or exceeded [`REGEX_SIZE_LIMIT`]).
    BadPattern(String),
    /// A CIDR block failed to parse.
    BadCidr(String),
    /// A rule with no permissions.
    NoPermissions,
    /// `not_before` is not before `expires_at`.
    EmptyTimeWindow,
    /// `between` with `low > high`, or a bound that is not a number.
    BadRange,
    /// Two rules of one variable share an id.
    DuplicateId(String),
    /// More than [`MAX_RULES_PER_VARIABLE`] rules.
    TooManyRules,
    /// No policy for that variable.
    UnknownVariable,
    /// No rule with that id.
    UnknownRule(String),
}

impl std::fmt::Display for RuleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RuleError::BadPattern(p) => write!(f, "bad pattern: {p}"),
            RuleError::BadCidr(c) => write!(f, "bad CIDR block: {c}"),
            RuleError::NoPermissions => f.write_str("a rule needs at least one permission"),
            RuleError::EmptyTimeWindow => f.write_str("not_before is not before expires_at"),
            RuleError::BadRange => {
                f.write_str("a range with low > high or a bound that is not a number")
            }
            RuleError::DuplicateId(id) => write!(f, "two rules share the id {id:?}"),
            RuleError::TooManyRules => write!(f, "more than {MAX_RULES_PER_VARIABLE} rules"),
            RuleError::UnknownVariable => f.write_str("no policy for that variable"),
            RuleError::UnknownRule(id) => write!(f, "no rule with the id {id:?}"),
        }
    }
}

impl std::error::Error for RuleError {}

impl RuleError {
    /// A stable snake_case name for the error.
    pub fn reason(&self) -> &'static str {
        match self {
            RuleError::BadPattern(_) => "bad_pattern",
            RuleError::BadCidr(_) => "bad_cidr",
            RuleError::NoPermissions => "no_permissions",
            RuleError::EmptyTimeWindow => "empty_time_window",
            RuleError::BadRange => "bad_range",
            RuleError::DuplicateId(_) => "duplicate_rule_id",
            RuleError::TooManyRules => "too_many_rules",
            RuleError::UnknownVariable => "unknown_variable",
            RuleError::UnknownRule(_) => "unknown_rule",
        }
    }
}

fn compile_regex(source: &str) -> Result<Regex, RuleError> {
    RegexBuilder::new(source)
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| RuleError::BadPattern(e.to_string()))
}

/// Which sessions a rule applies to. Sessions are matched by their text.
#[derive(Debug, Clone)]
pub enum SessionPattern {
    /// Every session.
    Any,
    /// Exactly this session.
    Exact(String),
    /// Sessions starting with this.
    Prefix(String),
    /// Sessions ending with this.
    Suffix(String),
    /// A glob: `*` any run of characters, `?` one character; the source is kept.
    Glob(String, Regex),
    /// A regular expression (linear-time, size-limited).
    Regex(Regex),
}

impl SessionPattern {
    /// Compiles a glob such as `admin_*` (`*` any run of characters, `?` one character).
    /// Globs that are a plain prefix, suffix or exact name become those patterns.
    ///
    /// # Errors
    /// [`RuleError::BadPattern`] if the compiled form is too large.
    pub fn glob(source: &str) -> Result<Self, RuleError> {
        // The common globs need no regex: `literal`, `literal*`, `*literal`.
        if !source.contains('?') {
            let stars = source.matches('*').count();
            if stars == 0 {
                return Ok(SessionPattern::Exact(source.to_string()));
            }
            if stars == 1 && source.ends_with('*') {
                return Ok(SessionPattern::Prefix(
                    source[..source.len() - 1].to_string(),
                ));
            }
            if stars == 1 && source.starts_with('*') {
                return Ok(SessionPattern::Suffix(source[1..].to_string()));
            }
        }
        let mut re = String::with_capacity(source.len() + 8);
        re.push('^');
        for c in source.chars() {
            match c {
                '*' => re.push_str(".*"),
                '?' => re.push('.'),
                c => re.push_str(&regex::escape(&c.to_string())),
            }
        }
        re.push('$');
        Ok(SessionPattern::Glob(
            source.to_string(),
            compile_regex(&re)?,
        ))
    }

    /// Compiles a regular expression.
    ///
    /// # Errors
    /// [`RuleError::BadPattern`] for invalid or oversized expressions.
    pub fn regex(source: &str) -> Result<Self, RuleError> {
        Ok(SessionPattern::Regex(compile_regex(source)?))
    }

    /// True if `session` matches.
    pub fn matches(&self, session: &str) -> bool {
        match self {
            SessionPattern::Any => true,
            SessionPattern::Exact(s) => session == s,
            SessionPattern::Prefix(p) => has_prefix(session.as_bytes(), p.as_bytes()),
            SessionPattern::Suffix(s) => has_suffix(session.as_bytes(), s.as_bytes()),
            SessionPattern::Glob(_, re) | SessionPattern::Regex(re) => re.is_match(session),
        }
    }
}

// Most rules a request is checked against do not match it, and most mismatches show in the
// first byte compared: testing it first spares a `memcmp` call per rule.
fn has_prefix(text: &[u8], prefix: &[u8]) -> bool {
    match prefix.first() {
        None => true,
        Some(first) => text.first() == Some(first) && text.starts_with(prefix),
    }
}

fn has_suffix(text: &[u8], suffix: &[u8]) -> bool {
    match suffix.last() {
        None => true,
        Some(last) => text.last() == Some(last) && text.ends_with(suffix),
    }
}

/// A context value.
#[derive(Debug, Clone)]
pub enum Value {
    /// A string.
    Str(String),
    /// An atom's text (kept apart from strings: `:admin` is not `"admin"`).
    Atom(String),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
}

impl Value {
    fn number(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            _ => None,
        }
    }

    fn text(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
}

// Numbers compare by value (1 == 1.0, as in Elixir's ==); other kinds by kind and content.
impl PartialEq for Value {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Value::Str(a), Value::Str(b)) | (Value::Atom(a), Value::Atom(b)) => a == b,
            _ => match (self.number(), other.number()) {
                (Some(a), Some(b)) => a == b,
                _ => false,
            },
        }
    }
}

impl Eq for Value {}

impl Hash for Value {
    fn hash<H: Hasher>(&self, state: &mut H) {
        match self {
            Value::Str(s) => (0u8, s).hash(state),
            Value::Atom(a) => (1u8, a).hash(state),
            // Equal numbers must hash equally whatever their representation.
            _ => {
                let n = self.number().unwrap_or(0.0);
                let n = if n == 0.0 { 0.0 } else { n };
                (2u8, n.to_bits()).hash(state)
            }
        }
    }
}

/// A condition on one context key. A missing key fails every condition.
#[derive(Debug, Clone)]
pub enum Condition {
    /// The value equals this.
    Equals(Value),
    /// The value differs from this.
    NotEquals(Value),
    /// The value is one of these.
    In(Vec<Value>),
    /// The value is none of these.
    NotIn(Vec<Value>),
    /// The value is a string matching this regex.
    Matches(Regex),
    /// The value is a string IP address inside one of these blocks.
    Cidr(Vec<IpNet>),
    /// Number greater than.
    Gt(f64),
    /// Number greater than or equal.
    Gte(f64),
    /// Number less than.
    Lt(f64),
    /// Number less than or equal.
    Lte(f64),
    /// Number within `[low, high]`.
    Between(f64, f64),
}

impl Condition {
    /// Compiles a `matches` condition.
    ///
    /// # Errors
    /// [`RuleError::BadPattern`].
    pub fn matches(source: &str) -> Result<Self, RuleError> {
        Ok(Condition::Matches(compile_regex(source)?))
    }

    /// Parses a `cidr` condition.
    ///
    /// # Errors
    /// [`RuleError::BadCidr`] naming the first block that does not parse.
    pub fn cidr<S: AsRef<str>>(blocks: &[S]) -> Result<Self, RuleError> {
        blocks
            .iter()
            .map(|b| {
                b.as_ref()
                    .parse::<IpNet>()
                    .map_err(|_| RuleError::BadCidr(b.as_ref().to_string()))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Condition::Cidr)
    }

    /// A `between` condition.
    ///
    /// # Errors
    /// [`RuleError::BadRange`] when `low > high` or a bound is NaN.
    pub fn between(low: f64, high: f64) -> Result<Self, RuleError> {
        if low <= high {
            Ok(Condition::Between(low, high))
        } else {
            Err(RuleError::BadRange)
        }
    }

    fn holds(&self, value: Option<&Value>) -> bool {
        let Some(v) = value else {
            return false;
        };
        let num = |f: &dyn Fn(f64) -> bool| v.number().is_some_and(f);
        match self {
            Condition::Equals(x) => v == x,
            Condition::NotEquals(x) => v != x,
            Condition::In(xs) => xs.contains(v),
            Condition::NotIn(xs) => !xs.contains(v),
            Condition::Matches(re) => v.text().is_some_and(|t| re.is_match(t)),
            Condition::Cidr(nets) => v
                .text()
                .and_then(|t| t.parse::<IpAddr>().ok())
                .is_some_and(|ip| nets.iter().any(|n| n.contains(&ip))),
            Condition::Gt(x) => num(&|n| n > *x),
            Condition::Gte(x) => num(&|n| n >= *x),
            Condition::Lt(x) => num(&|n| n < *x),
            Condition::Lte(x) => num(&|n| n <= *x),
            Condition::Between(lo, hi) => num(&|n| n >= *lo && n <= *hi),
        }
    }
}

/// The request context: key/value pairs, sorted by key, keys unique.
///
/// Keys are shared strings: a caller that sees the same few keys over and over (the NIF
/// remembers the text of each atom key) builds a context without allocating them, and a
/// handful of pairs live inline.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Context(SmallVec<[(Arc<str>, Value); 2]>);

impl Context {
    /// Builds a context; later duplicates of a key replace earlier ones.
    pub fn new(pairs: Vec<(String, Value)>) -> Self {
        Self::from_shared(pairs.into_iter().map(|(k, v)| (Arc::from(k), v)))
    }

    /// [`new`](Self::new) from keys the caller already shares.
    pub fn from_shared(pairs: impl IntoIterator<Item = (Arc<str>, Value)>) -> Self {
        let mut pairs: SmallVec<[(Arc<str>, Value); 2]> = pairs.into_iter().collect();
        pairs.reverse();
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        pairs.dedup_by(|a, b| a.0 == b.0);
        Context(pairs)
    }

    /// The value under `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0
            .binary_search_by(|(k, _)| (**k).cmp(key))
            .ok()
            .map(|i| &self.0[i].1)
    }
}

/// One access rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Unique within its variable.
    pub id: Arc<str>,
    /// Which sessions.
    pub pattern: SessionPattern,
    permissions: u8,
    /// Allow or deny.
    pub effect: Effect,
    /// Every condition must hold.
    pub conditions: Vec<(String, Condition)>,
    /// Higher decides first.
    pub priority: i64,
    /// Active from this time on (nanoseconds, same clock as `now`).
    pub not_before: Option<u64>,
    /// Inactive from this time on.
    pub expires_at: Option<u64>,
    /// Who granted it (informational).
    pub granted_by: Option<String>,
    /// When it was granted (informational).
    pub granted_at: Option<u64>,
}

impl Rule {
    /// An allow rule with priority 0, no conditions, no time window.
    pub fn new(id: &str, pattern: SessionPattern, permissions: &[Permission]) -> Self {
        Rule {
            id: id.into(),
            pattern,
            permissions: bits_of(permissions),
            effect: Effect::Allow,
            conditions: Vec::new(),
            priority: 0,
            not_before: None,
            expires_at: None,
            granted_by: None,
            granted_at: None,
        }
    }

    /// The rule's permissions as given.
    pub fn permissions(&self) -> Vec<Permission> {
        Permission::ALL
            .into_iter()
            .filter(|p| self.permissions & p.bit() != 0)
            .collect()
    }

    fn check(&self) -> Result<(), RuleError> {
        if self.permissions == 0 {
            return Err(RuleError::NoPermissions);
        }
        if let (Some(nb), Some(ex)) = (self.not_before, self.expires_at) {
            if nb >= ex {
                return Err(RuleError::EmptyTimeWindow);
            }
        }
        Ok(())
    }

    fn active(&self, now: u64) -> bool {
        self.not_before.is_none_or(|nb| now >= nb) && self.expires_at.is_none_or(|ex| now < ex)
    }

    fn applies_to(&self, p: Permission) -> bool {
        match self.effect {
            Effect::Allow => closure(self.permissions) & p.bit() != 0,
            Effect::Deny => closure(p.bit()) & self.permissions != 0,
        }
    }

    fn matches(&self, session: &str, p: Permission, ctx: &Context, now: u64) -> bool {
        self.active(now)
            && self.applies_to(p)
            && self.pattern.matches(session)
            && self.conditions.iter().all(|(k, c)| c.holds(ctx.get(k)))
    }
}

/// A decision and why it was taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The session owns the variable.
    Owner,
    /// This rule decided.
    Rule {
        /// The rule's id.
        id: Arc<str>,
        /// Its effect.
        effect: Effect,
        /// Its priority.
        priority: i64,
    },
    /// No rule applied; the mode decided.
    Default {
        /// The variable's mode.
        mode: AccessMode,
        /// What the mode allows for this permission.
        allowed: bool,
    },
    /// The variable has no policy: denied.
    NoPolicy,
}

impl Decision {
    /// True if access is granted.
    pub fn allowed(&self) -> bool {
        match self {
            Decision::Owner => true,
            Decision::Rule { effect, .. } => *effect == Effect::Allow,
            Decision::Default { allowed, .. } => *allowed,
            Decision::NoPolicy => false,
        }
    }
}

/// Who makes a request: `id`, compared byte for byte with a policy's owner, and `text`,
/// which session patterns match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Caller<'a> {
    /// The exact identity.
    pub id: &'a [u8],
    /// The text patterns see.
    pub text: &'a str,
}

impl<'a> From<&'a str> for Caller<'a> {
    /// A caller whose identity is its text.
    fn from(text: &'a str) -> Self {
        Caller {
            id: text.as_bytes(),
            text,
        }
    }
}

impl<'a> From<&'a String> for Caller<'a> {
    fn from(text: &'a String) -> Self {
        Caller::from(text.as_str())
    }
}

/// A [`Caller`] that owns its id and text (a cache key).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OwnedCaller {
    /// The exact identity.
    pub id: Box<[u8]>,
    /// The text patterns see.
    pub text: String,
}

impl OwnedCaller {
    /// Borrowed as a [`Caller`].
    pub fn as_caller(&self) -> Caller<'_> {
        Caller {
            id: &self.id,
            text: &self.text,
        }
    }
}

impl From<String> for OwnedCaller {
    /// A caller whose identity is its text.
    fn from(text: String) -> Self {
        OwnedCaller {
            id: text.as_bytes().into(),
            text,
        }
    }
}

/// A variable's policy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The owner session's identity ([`Caller::id`]).
    pub owner: Box<[u8]>,
    /// The default for requests no rule decides.
    pub mode: AccessMode,
    /// The rules, in the order given (order never changes a decision).
    pub rules: Vec<Rule>,
}

impl Policy {
    fn decide(&self, caller: Caller, p: Permission, ctx: &Context, now: u64) -> Decision {
        if caller.id == &*self.owner {
            return Decision::Owner;
        }
        let session = caller.text;
        let mut best: Option<&Rule> = None;
        for rule in self
            .rules
            .iter()
            .filter(|r| r.matches(session, p, ctx, now))
        {
            best = match best {
                None => Some(rule),
                Some(b) if rule.priority > b.priority => Some(rule),
                // Deny overrides at equal priority; among equals the smallest id is reported,
                // so rule order never changes the explanation either.
                Some(b) if rule.priority == b.priority => {
                    let better = (rule.effect == Effect::Deny && b.effect == Effect::Allow)
                        || (rule.effect == b.effect && rule.id < b.id);
                    Some(if better { rule } else { b })
                }
                keep => keep,
            };
        }
        match best {
            Some(r) => Decision::Rule {
                id: r.id.clone(),
                effect: r.effect,
                priority: r.priority,
            },
            None => Decision::Default {
                mode: self.mode,
                allowed: self.mode.allows(p),
            },
        }
    }

    // The span around `now` in which no rule switches on or off: a decision taken at `now`
    // holds for every time in [from, until). Both ends matter, since callers on other
    // threads may present a `now` slightly older than one already cached.
    fn stable_span(&self, now: u64) -> (u64, u64) {
        let boundaries = self
            .rules
            .iter()
            .flat_map(|r| [r.not_before, r.expires_at])
            .flatten();
        let mut span = (0, u64::MAX);
        for t in boundaries {
            if t > now {
                span.1 = span.1.min(t);
            } else {
                span.0 = span.0.max(t);
            }
        }
        span
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CacheKey<V> {
    variable: V,
    session: OwnedCaller,
    permission: Permission,
    context: Context,
}

#[derive(Debug, Clone)]
struct Cached<T> {
    value: T,
    version: u64,
    valid_from: u64,
    valid_until: u64,
}

impl<T> Cached<T> {
    /// Still the decision: made under the current policies, and `now` inside the span where
    /// no rule of the variable switches on or off.
    fn fresh(&self, version: u64, now: u64) -> bool {
        self.version == version && self.valid_from <= now && now < self.valid_until
    }

    /// Valid at any time: no rule of the variable has a window.
    fn timeless(&self) -> bool {
        self.valid_from == 0 && self.valid_until == u64::MAX
    }
}

/// Inserts into a bounded cache: when full it starts over rather than track recency on the
/// hot path.
fn remember<K: Eq + Hash, T>(
    cache: &mut AHashMap<K, Cached<T>>,
    capacity: usize,
    key: K,
    entry: Cached<T>,
) {
    if capacity == 0 {
        return;
    }
    if cache.len() >= capacity {
        cache.clear();
    }
    cache.insert(key, entry);
}

/// Cache statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Decisions served from the cache.
    pub hits: u64,
    /// Decisions evaluated.
    pub misses: u64,
    /// Entries now.
    pub size: usize,
}

/// The access-control engine: policies for variables of type `V`, plus the decision cache.
#[derive(Debug)]
pub struct AccessControl<V> {
    policies: AHashMap<V, Policy>,
    // Bumped on every policy change: entries of an older version are dead, so invalidation
    // is O(1) whatever the cache holds.
    version: u64,
    cache: AHashMap<CacheKey<V>, Cached<Decision>>,
    // The same decisions keyed by a caller's canonical bytes for the request (see
    // `check_by_bytes`): a hit allocates nothing. Same freshness rules, same bound.
    by_bytes: AHashMap<Box<[u8]>, Cached<bool>>,
    capacity: usize,
    stats: CacheStats,
}

impl<V: Eq + Hash + Clone> AccessControl<V> {
    /// An engine whose cache holds at most `capacity` decisions (0 disables caching).
    pub fn new(capacity: usize) -> Self {
        Self {
            policies: AHashMap::new(),
            version: 0,
            cache: AHashMap::new(),
            by_bytes: AHashMap::new(),
            capacity,
            stats: CacheStats::default(),
        }
    }

    fn changed(&mut self) {
        self.version += 1;
    }

    /// Validates rules the way [`set_policy`](Self::set_policy) does, without storing them.
    ///
    /// # Errors
    /// The index of the first bad rule and why.
    pub fn validate(rules: &[Rule]) -> Result<(), (usize, RuleError)> {
        if rules.len() > MAX_RULES_PER_VARIABLE {
            return Err((MAX_RULES_PER_VARIABLE, RuleError::TooManyRules));
        }
        let mut ids = std::collections::HashSet::new();
        for (i, rule) in rules.iter().enumerate() {
            rule.check().map_err(|e| (i, e))?;
            if !ids.insert(&*rule.id) {
                return Err((i, RuleError::DuplicateId(rule.id.to_string())));
            }
        }
        Ok(())
    }

    /// Sets (or replaces) a variable's whole policy.
    ///
    /// # Errors
    /// As [`validate`](Self::validate); the old policy is kept.
    pub fn set_policy(
        &mut self,
        variable: V,
        owner: impl AsRef<[u8]>,
        mode: AccessMode,
        rules: Vec<Rule>,
    ) -> Result<(), (usize, RuleError)> {
        Self::validate(&rules)?;
        self.policies.insert(
            variable,
            Policy {
                owner: owner.as_ref().into(),
                mode,
                rules,
            },
        );
        self.changed();
        Ok(())
    }

    /// Removes a variable's policy; returns whether there was one.
    pub fn remove_policy(&mut self, variable: &V) -> bool {
        let removed = self.policies.remove(variable).is_some();
        if removed {
            self.changed();
        }
        removed
    }

    /// Drops the policies of every variable matching `gone` (a whole session leaving this
    /// node): how many there were. One version bump, however many.
    pub fn remove_policies_where(&mut self, gone: impl Fn(&V) -> bool) -> usize {
        let before = self.policies.len();
        self.policies.retain(|v, _| !gone(v));
        let removed = before - self.policies.len();
        if removed > 0 {
            self.changed();
        }
        removed
    }

    /// The policy of a variable.
    pub fn policy(&self, variable: &V) -> Option<&Policy> {
        self.policies.get(variable)
    }

    /// Adds one rule.
    ///
    /// # Errors
    /// [`RuleError::UnknownVariable`], or the rule's own error, or a duplicate id.
    pub fn add_rule(&mut self, variable: &V, rule: Rule) -> Result<(), RuleError> {
        let policy = self
            .policies
            .get_mut(variable)
            .ok_or(RuleError::UnknownVariable)?;
        rule.check()?;
        if policy.rules.iter().any(|r| r.id == rule.id) {
            return Err(RuleError::DuplicateId(rule.id.to_string()));
        }
        if policy.rules.len() >= MAX_RULES_PER_VARIABLE {
            return Err(RuleError::TooManyRules);
        }
        policy.rules.push(rule);
        self.changed();
        Ok(())
    }

    /// Removes the rule with `id`.
    ///
    /// # Errors
    /// [`RuleError::UnknownVariable`] or [`RuleError::UnknownRule`].
    pub fn remove_rule(&mut self, variable: &V, id: &str) -> Result<(), RuleError> {
        let policy = self
            .policies
            .get_mut(variable)
            .ok_or(RuleError::UnknownVariable)?;
        let before = policy.rules.len();
        policy.rules.retain(|r| &*r.id != id);
        if policy.rules.len() == before {
            return Err(RuleError::UnknownRule(id.to_string()));
        }
        self.changed();
        Ok(())
    }

    /// Changes a variable's access mode.
    ///
    /// # Errors
    /// [`RuleError::UnknownVariable`].
    pub fn set_mode(&mut self, variable: &V, mode: AccessMode) -> Result<(), RuleError> {
        let policy = self
            .policies
            .get_mut(variable)
            .ok_or(RuleError::UnknownVariable)?;
        policy.mode = mode;
        self.changed();
        Ok(())
    }

    /// [`explain`](Self::explain) reading the time only if a rule of the variable has a
    /// window (no other decision depends on it).
    pub fn explain_with<'c>(
        &self,
        variable: &V,
        session: impl Into<Caller<'c>>,
        p: Permission,
        ctx: &Context,
        now: impl FnOnce() -> u64,
    ) -> Decision {
        match self.policies.get(variable) {
            Some(policy) => {
                let windowed = policy
                    .rules
                    .iter()
                    .any(|r| r.not_before.is_some() || r.expires_at.is_some());
                policy.decide(session.into(), p, ctx, if windowed { now() } else { 0 })
            }
            None => Decision::NoPolicy,
        }
    }

    /// The decision with its reason, never cached.
    pub fn explain<'c>(
        &self,
        variable: &V,
        session: impl Into<Caller<'c>>,
        p: Permission,
        ctx: &Context,
        now: u64,
    ) -> Decision {
        match self.policies.get(variable) {
            Some(policy) => policy.decide(session.into(), p, ctx, now),
            None => Decision::NoPolicy,
        }
    }

    /// The decision, from the cache when a valid entry exists; returns whether it was a hit.
    pub fn check_cached<'c>(
        &mut self,
        variable: &V,
        session: impl Into<Caller<'c>>,
        p: Permission,
        ctx: &Context,
        now: u64,
    ) -> (Decision, bool) {
        let c = session.into();
        let owned = OwnedCaller {
            id: c.id.into(),
            text: c.text.to_string(),
        };
        self.check_owned(variable.clone(), owned, p, ctx.clone(), now)
    }

    /// [`check_cached`](Self::check_cached) taking its arguments by value, so a caller that
    /// already owns them (the NIF decodes into owned values) builds the cache key without
    /// copying.
    pub fn check_owned(
        &mut self,
        variable: V,
        session: impl Into<OwnedCaller>,
        p: Permission,
        ctx: Context,
        now: u64,
    ) -> (Decision, bool) {
        let key = CacheKey {
            variable,
            session: session.into(),
            permission: p,
            context: ctx,
        };
        if let Some(entry) = self.cache.get(&key) {
            if entry.fresh(self.version, now) {
                self.stats.hits += 1;
                return (entry.value.clone(), true);
            }
        }
        self.stats.misses += 1;
        let decision = self.explain(&key.variable, key.session.as_caller(), p, &key.context, now);
        let entry = self.cached(&key.variable, decision.clone(), now);
        remember(&mut self.cache, self.capacity, key, entry);
        (decision, false)
    }

    /// `value` as decided now for `variable`: valid under the current policies while no rule
    /// of the variable switches on or off.
    fn cached<T>(&self, variable: &V, value: T, now: u64) -> Cached<T> {
        let (valid_from, valid_until) = self
            .policies
            .get(variable)
            .map_or((0, u64::MAX), |pol| pol.stable_span(now));
        Cached {
            value,
            version: self.version,
            valid_from,
            valid_until,
        }
    }

    /// A cached decision for the request the caller encodes as `key` (its canonical bytes:
    /// equal requests, equal bytes; different requests, different bytes), if one is still
    /// valid at `now` under the current policies. Allocates nothing; on `None` the caller
    /// decides with [`check_by_bytes`](Self::check_by_bytes).
    pub fn lookup_bytes(&mut self, key: &[u8], now: u64) -> Option<bool> {
        self.lookup_bytes_with(key, || now)
    }

    /// [`lookup_bytes`](Self::lookup_bytes) reading the time only when it matters: a
    /// decision no rule window bounds (the common case) is answered without calling `now`.
    pub fn lookup_bytes_with(&mut self, key: &[u8], now: impl FnOnce() -> u64) -> Option<bool> {
        let e = self.by_bytes.get(key)?;
        let fresh = if e.timeless() {
            e.version == self.version
        } else {
            e.fresh(self.version, now())
        };
        if fresh {
            self.stats.hits += 1;
            Some(e.value)
        } else {
            None
        }
    }

    /// Decides the request (the caller's `key` bytes standing for `variable`, `session`,
    /// `p` and `ctx`) and remembers the outcome under `key` for
    /// [`lookup_bytes`](Self::lookup_bytes), valid as long as a
    /// [`check_cached`](Self::check_cached) entry would be.
    pub fn check_by_bytes<'c>(
        &mut self,
        key: &[u8],
        variable: &V,
        session: impl Into<Caller<'c>>,
        p: Permission,
        ctx: &Context,
        now: u64,
    ) -> bool {
        self.stats.misses += 1;
        let allowed = self.explain(variable, session, p, ctx, now).allowed();
        let entry = self.cached(variable, allowed, now);
        remember(&mut self.by_bytes, self.capacity, key.into(), entry);
        allowed
    }

    /// [`check_cached`](Self::check_cached) without the hit flag.
    pub fn check<'c>(
        &mut self,
        variable: &V,
        session: impl Into<Caller<'c>>,
        p: Permission,
        ctx: &Context,
        now: u64,
    ) -> Decision {
        self.check_cached(variable, session, p, ctx, now).0
    }

    /// The permissions `session` holds on `variable` (uncached).
    pub fn permissions<'c>(
        &self,
        variable: &V,
        session: impl Into<Caller<'c>>,
        ctx: &Context,
        now: u64,
    ) -> Vec<Permission> {
        let session = session.into();
        Permission::ALL
            .into_iter()
            .filter(|&p| self.explain(variable, session, p, ctx, now).allowed())
            .collect()
    }

    /// Cache statistics.
    pub fn cache_stats(&self) -> CacheStats {
        CacheStats {
            size: self.cache.len() + self.by_bytes.len(),
            ..self.stats
        }
    }

    /// Number of variables with a policy.
    pub fn policy_count(&self) -> usize {
        self.policies.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_owner_is_recognised_by_identity_not_by_text() {
        let mut acl: AccessControl<&str> = AccessControl::new(64);
        // Two ids with the same text ("bob"), told apart by a tag byte as a typed host does.
        acl.set_policy("v", b"s:bob", AccessMode::Private, vec![])
            .unwrap();
        let ctx = Context::default();
        let string_bob = Caller {
            id: b"s:bob",
            text: "bob",
        };
        let atom_bob = Caller {
            id: b"a:bob",
            text: "bob",
        };
        assert_eq!(
            acl.explain(&"v", string_bob, Permission::Read, &ctx, 0),
            Decision::Owner
        );
        assert!(!acl
            .check(&"v", atom_bob, Permission::Read, &ctx, 0)
            .allowed());
        // The cache keeps the two apart too.
        assert!(acl
            .check(&"v", string_bob, Permission::Write, &ctx, 0)
            .allowed());
        assert!(!acl
            .check(&"v", atom_bob, Permission::Write, &ctx, 0)
            .allowed());
        // Patterns see the text: a rule for "bob" admits both.
        let rule = Rule::new(
            "bobs",
            SessionPattern::glob("bob").unwrap(),
            &[Permission::Read],
        );
        acl.add_rule(&"v", rule).unwrap();
        assert!(acl
            .check(&"v", atom_bob, Permission::Read, &ctx, 0)
            .allowed());
    }

    #[test]
    fn plain_text_callers_are_their_own_identity() {
        let mut acl: AccessControl<&str> = AccessControl::new(64);
        acl.set_policy("v", "alice", AccessMode::Private, vec![])
            .unwrap();
        let ctx = Context::default();
        assert_eq!(
            acl.explain(&"v", "alice", Permission::Write, &ctx, 0),
            Decision::Owner
        );
        assert!(!acl
            .check(&"v", "alice ", Permission::Read, &ctx, 0)
            .allowed());
    }
}
