//! Differential tests of the access-control engine (cached and uncached) against a
//! deliberately naive reference evaluator written from the rules' description.

use dspex_core::acl::{
    AccessControl, AccessMode, Condition, Context, Effect, Permission, Rule, SessionPattern, Value,
};
use proptest::prelude::*;

const SESSIONS: [&str; 6] = ["owner", "s1", "s2", "admin_a", "admin_b", "x_admin"];
const PERMS: [Permission; 4] = [
    Permission::Read,
    Permission::Write,
    Permission::Observe,
    Permission::Optimize,
];

#[derive(Debug, Clone)]
enum Pat {
    Any,
    Exact(usize),
    Prefix,
    Suffix,
    Glob,
    Regex,
}

#[derive(Debug, Clone)]
enum Cond {
    RoleEquals(&'static str),
    RoleIn,
    LevelGt(i64),
    LevelBetween(i64, i64),
    IpInTen,
    RoleNotEquals(&'static str),
}

#[derive(Debug, Clone)]
struct RuleModel {
    id: usize,
    pat: Pat,
    perms: Vec<bool>,
    deny: bool,
    priority: i64,
    conds: Vec<Cond>,
    window: (Option<u64>, Option<u64>),
}

#[derive(Debug, Clone)]
struct Ctx {
    role: Option<&'static str>,
    level: Option<i64>,
    ip: Option<&'static str>,
}

fn pat() -> impl Strategy<Value = Pat> {
    prop_oneof![
        Just(Pat::Any),
        (0..SESSIONS.len()).prop_map(Pat::Exact),
        Just(Pat::Prefix),
        Just(Pat::Suffix),
        Just(Pat::Glob),
        Just(Pat::Regex),
    ]
}

fn cond() -> impl Strategy<Value = Cond> {
    prop_oneof![
        prop_oneof![Just("admin"), Just("dev")].prop_map(Cond::RoleEquals),
        Just(Cond::RoleIn),
        (0i64..5).prop_map(Cond::LevelGt),
        (0i64..5, 0i64..5).prop_map(|(a, b)| Cond::LevelBetween(a.min(b), a.max(b))),
        Just(Cond::IpInTen),
        prop_oneof![Just("admin"), Just("dev")].prop_map(Cond::RoleNotEquals),
    ]
}

fn rule(id: usize) -> impl Strategy<Value = RuleModel> {
    (
        pat(),
        proptest::collection::vec(any::<bool>(), 4)
            .prop_filter("some permission", |p| p.iter().any(|&b| b)),
        any::<bool>(),
        0i64..3,
        proptest::collection::vec(cond(), 0..3),
        (
            proptest::option::of(0u64..20),
            proptest::option::of(0u64..20),
        )
            .prop_filter("non-empty window", |(a, b)| match (a, b) {
                (Some(a), Some(b)) => a < b,
                _ => true,
            }),
    )
        .prop_map(
            move |(pat, perms, deny, priority, conds, window)| RuleModel {
                id,
                pat,
                perms,
                deny,
                priority,
                conds,
                window,
            },
        )
}

fn ctx() -> impl Strategy<Value = Ctx> {
    (
        proptest::option::of(prop_oneof![Just("admin"), Just("dev"), Just("ops")]),
        proptest::option::of(0i64..6),
        proptest::option::of(prop_oneof![
            Just("10.1.2.3"),
            Just("192.168.0.1"),
            Just("nonsense")
        ]),
    )
        .prop_map(|(role, level, ip)| Ctx { role, level, ip })
}

fn mode() -> impl Strategy<Value = AccessMode> {
    prop_oneof![
        Just(AccessMode::Private),
        Just(AccessMode::Protected),
        Just(AccessMode::Public)
    ]
}

// ---- the naive reference -------------------------------------------------------------

fn naive_pattern(p: &Pat, s: &str) -> bool {
    match p {
        Pat::Any => true,
        Pat::Exact(i) => s == SESSIONS[*i],
        Pat::Prefix => s.starts_with("admin"),
        Pat::Suffix => s.ends_with("admin"),
        Pat::Glob => s.len() >= 6 && &s[..6] == "admin_",
        Pat::Regex => s == "s1" || s == "s2",
    }
}

fn naive_cond(c: &Cond, x: &Ctx) -> bool {
    match c {
        Cond::RoleEquals(r) => x.role == Some(*r),
        Cond::RoleNotEquals(r) => matches!(x.role, Some(v) if v != *r),
        Cond::RoleIn => matches!(x.role, Some("admin") | Some("ops")),
        Cond::LevelGt(n) => matches!(x.level, Some(l) if l > *n),
        Cond::LevelBetween(a, b) => matches!(x.level, Some(l) if l >= *a && l <= *b),
        Cond::IpInTen => x.ip == Some("10.1.2.3"),
    }
}

// What holding permission i grants (i itself plus its implications).
fn grants(i: usize) -> Vec<usize> {
    match i {
        0 => vec![0],
        1 => vec![1, 0],
        2 => vec![2, 0],
        _ => vec![3, 1, 0],
    }
}

fn naive_applies(r: &RuleModel, p: usize) -> bool {
    if r.deny {
        // Denying q refuses every request that would grant q.
        grants(p).iter().any(|&q| r.perms[q])
    } else {
        (0..4).any(|q| r.perms[q] && grants(q).contains(&p))
    }
}

fn naive(mode: AccessMode, rules: &[RuleModel], s: &str, p: usize, x: &Ctx, now: u64) -> bool {
    if s == "owner" {
        return true;
    }
    let matching: Vec<&RuleModel> = rules
        .iter()
        .filter(|r| r.window.0.is_none_or(|nb| now >= nb) && r.window.1.is_none_or(|ex| now < ex))
        .filter(|r| naive_applies(r, p))
        .filter(|r| naive_pattern(&r.pat, s))
        .filter(|r| r.conds.iter().all(|c| naive_cond(c, x)))
        .collect();
    match matching.iter().map(|r| r.priority).max() {
        None => match mode {
            AccessMode::Private => false,
            AccessMode::Protected => p == 0,
            AccessMode::Public => p == 0 || p == 2,
        },
        Some(top) => !matching.iter().any(|r| r.priority == top && r.deny),
    }
}

// ---- building engine inputs -----------------------------------------------------------

fn to_rule(m: &RuleModel) -> Rule {
    let pattern = match &m.pat {
        Pat::Any => SessionPattern::Any,
        Pat::Exact(i) => SessionPattern::Exact(SESSIONS[*i].to_string()),
        Pat::Prefix => SessionPattern::Prefix("admin".into()),
        Pat::Suffix => SessionPattern::Suffix("admin".into()),
        Pat::Glob => SessionPattern::glob("admin_*").unwrap(),
        Pat::Regex => SessionPattern::regex("^s[12]$").unwrap(),
    };
    let perms: Vec<Permission> = (0..4).filter(|&i| m.perms[i]).map(|i| PERMS[i]).collect();
    let mut rule = Rule::new(&format!("r{}", m.id), pattern, &perms);
    rule.effect = if m.deny { Effect::Deny } else { Effect::Allow };
    rule.priority = m.priority;
    rule.not_before = m.window.0;
    rule.expires_at = m.window.1;
    rule.conditions = m
        .conds
        .iter()
        .map(|c| match c {
            Cond::RoleEquals(r) => ("role".into(), Condition::Equals(Value::Str(r.to_string()))),
            Cond::RoleNotEquals(r) => (
                "role".into(),
                Condition::NotEquals(Value::Str(r.to_string())),
            ),
            Cond::RoleIn => (
                "role".into(),
                Condition::In(vec![Value::Str("admin".into()), Value::Str("ops".into())]),
            ),
            Cond::LevelGt(n) => ("level".into(), Condition::Gt(*n as f64)),
            Cond::LevelBetween(a, b) => (
                "level".into(),
                Condition::between(*a as f64, *b as f64).unwrap(),
            ),
            Cond::IpInTen => ("ip".into(), Condition::cidr(&["10.0.0.0/8"]).unwrap()),
        })
        .collect();
    rule
}

fn to_ctx(x: &Ctx) -> Context {
    let mut pairs = Vec::new();
    if let Some(r) = x.role {
        pairs.push(("role".to_string(), Value::Str(r.to_string())));
    }
    if let Some(l) = x.level {
        pairs.push(("level".to_string(), Value::Int(l)));
    }
    if let Some(ip) = x.ip {
        pairs.push(("ip".to_string(), Value::Str(ip.to_string())));
    }
    Context::new(pairs)
}

fn rules_strategy() -> impl Strategy<Value = Vec<RuleModel>> {
    (0usize..8).prop_flat_map(|n| (0..n).map(rule).collect::<Vec<_>>())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(10_000))]

    #[test]
    fn engine_matches_naive_evaluator(
        mode in mode(),
        rules in rules_strategy(),
        requests in proptest::collection::vec((0..SESSIONS.len(), 0usize..4, ctx(), 0u64..25), 1..12),
    ) {
        let mut acl = AccessControl::new(64);
        acl.set_policy("v", "owner", mode, rules.iter().map(to_rule).collect()).unwrap();
        for (s, p, x, now) in &requests {
            let expected = naive(mode, &rules, SESSIONS[*s], *p, x, *now);
            let c = to_ctx(x);
            prop_assert_eq!(acl.explain(&"v", SESSIONS[*s], PERMS[*p], &c, *now).allowed(), expected);
            // Reading the clock only for windowed policies changes no explanation.
            prop_assert_eq!(
                acl.explain_with(&"v", SESSIONS[*s], PERMS[*p], &c, || *now),
                acl.explain(&"v", SESSIONS[*s], PERMS[*p], &c, *now)
            );
            // Cached twice: the second is a hit and must agree.
            prop_assert_eq!(acl.check(&"v", SESSIONS[*s], PERMS[*p], &c, *now).allowed(), expected);
            prop_assert_eq!(acl.check(&"v", SESSIONS[*s], PERMS[*p], &c, *now).allowed(), expected);
        }
    }

    #[test]
    fn no_stale_decision_after_changes_or_time(
        mode in mode(),
        rules in rules_strategy(),
        extra in rule(100),
        new_mode in mode(),
        requests in proptest::collection::vec((0..SESSIONS.len(), 0usize..4, ctx(), 0u64..25), 1..8),
        later in 0u64..25,
    ) {
        let mut acl = AccessControl::new(1024);
        acl.set_policy("v", "owner", mode, rules.iter().map(to_rule).collect()).unwrap();
        // Warm the cache.
        for (s, p, x, now) in &requests {
            acl.check(&"v", SESSIONS[*s], PERMS[*p], &to_ctx(x), *now);
        }
        let mut current = rules.clone();
        acl.add_rule(&"v", to_rule(&extra)).unwrap();
        current.push(extra.clone());
        acl.set_mode(&"v", new_mode).unwrap();
        for (s, p, x, now) in &requests {
            let expected = naive(new_mode, &current, SESSIONS[*s], *p, x, *now);
            prop_assert_eq!(acl.check(&"v", SESSIONS[*s], PERMS[*p], &to_ctx(x), *now).allowed(), expected);
            // Time moves: entries must not outlive a rule's window boundary.
            let t = now.max(&later);
            let expected = naive(new_mode, &current, SESSIONS[*s], *p, x, *t);
            prop_assert_eq!(acl.check(&"v", SESSIONS[*s], PERMS[*p], &to_ctx(x), *t).allowed(), expected);
        }
        acl.remove_rule(&"v", "r100").unwrap();
        current.pop();
        for (s, p, x, now) in &requests {
            let expected = naive(new_mode, &current, SESSIONS[*s], *p, x, *now);
            prop_assert_eq!(acl.check(&"v", SESSIONS[*s], PERMS[*p], &to_ctx(x), *now).allowed(), expected);
        }
    }

    /// The byte-keyed cache (the NIF's allocation-free path) against the naive evaluator,
    /// through policy changes and time: a hit is never a stale decision.
    #[test]
    fn byte_keyed_decisions_match_the_naive_evaluator(
        mode in mode(),
        rules in rules_strategy(),
        extra in rule(100),
        requests in proptest::collection::vec((0..SESSIONS.len(), 0usize..4, ctx(), 0u64..25), 1..8),
        later in 0u64..25,
    ) {
        let mut acl = AccessControl::new(1024);
        acl.set_policy("v", "owner", mode, rules.iter().map(to_rule).collect()).unwrap();
        let decide = |acl: &mut AccessControl<&str>, s: usize, p: usize, x: &Ctx, now: u64| {
            let key = format!("{s}|{p}|{x:?}").into_bytes();
            match acl.lookup_bytes(&key, now) {
                Some(allowed) => (allowed, true),
                None => (acl.check_by_bytes(&key, &"v", SESSIONS[s], PERMS[p], &to_ctx(x), now), false),
            }
        };
        let mut current = rules.clone();
        for round in 0..3 {
            for (s, p, x, now) in &requests {
                for t in [*now, (*now).max(later)] {
                    let expected = naive(mode, &current, SESSIONS[*s], *p, x, t);
                    prop_assert_eq!(decide(&mut acl, *s, *p, x, t).0, expected);
                    let (again, hit) = decide(&mut acl, *s, *p, x, t);
                    prop_assert_eq!(again, expected);
                    prop_assert!(hit, "the same request at the same time is a hit");
                    // Asking for the time only when the decision depends on it: the same
                    // answer, and no clock read at all while no rule has a window.
                    let key = format!("{s}|{p}|{x:?}").into_bytes();
                    let mut read = false;
                    let lazily = acl.lookup_bytes_with(&key, || { read = true; t });
                    prop_assert_eq!(lazily, Some(expected));
                    let windowed = current.iter().any(|r| r.window.0.is_some() || r.window.1.is_some());
                    prop_assert!(windowed || !read, "read the clock for a timeless decision");
                }
            }
            match round {
                0 => {
                    acl.add_rule(&"v", to_rule(&extra)).unwrap();
                    current.push(extra.clone());
                }
                1 => {
                    acl.remove_rule(&"v", "r100").unwrap();
                    current.pop();
                }
                _ => {}
            }
        }
    }

    #[test]
    fn rule_order_and_duplicates_never_change_a_decision(
        mode in mode(),
        rules in rules_strategy(),
        seed in any::<u64>(),
        requests in proptest::collection::vec((0..SESSIONS.len(), 0usize..4, ctx(), 0u64..25), 1..8),
    ) {
        let mut shuffled: Vec<RuleModel> = rules.clone();
        // A deterministic shuffle from the seed, then every rule again under a new id.
        let mut state = seed | 1;
        for i in (1..shuffled.len()).rev() {
            state ^= state << 13; state ^= state >> 7; state ^= state << 17;
            shuffled.swap(i, (state % (i as u64 + 1)) as usize);
        }
        let dupes: Vec<RuleModel> = rules.iter().map(|r| RuleModel { id: r.id + 1000, ..r.clone() }).collect();
        shuffled.extend(dupes);
        let mut a = AccessControl::new(0);
        let mut b = AccessControl::new(0);
        a.set_policy("v", "owner", mode, rules.iter().map(to_rule).collect()).unwrap();
        b.set_policy("v", "owner", mode, shuffled.iter().map(to_rule).collect()).unwrap();
        for (s, p, x, now) in &requests {
            let c = to_ctx(x);
            prop_assert_eq!(
                a.explain(&"v", SESSIONS[*s], PERMS[*p], &c, *now).allowed(),
                b.explain(&"v", SESSIONS[*s], PERMS[*p], &c, *now).allowed()
            );
        }
    }
}

#[test]
fn invalid_rules_are_refused_with_their_index() {
    let good = Rule::new("a", SessionPattern::Any, &[Permission::Read]);
    let empty = Rule::new("b", SessionPattern::Any, &[]);
    assert!(matches!(
        AccessControl::<&str>::validate(&[good.clone(), empty]),
        Err((1, dspex_core::acl::RuleError::NoPermissions))
    ));
    assert!(matches!(
        AccessControl::<&str>::validate(&[good.clone(), good.clone()]),
        Err((1, dspex_core::acl::RuleError::DuplicateId(_)))
    ));
    assert!(SessionPattern::regex("(unclosed").is_err());
    assert!(
        SessionPattern::regex("a{1000}{1000}").is_err(),
        "oversized regex refused"
    );
    assert!(Condition::cidr(&["10.0.0.0/33"]).is_err());
    assert!(Condition::between(3.0, 1.0).is_err());
}

#[test]
fn cache_is_bounded_and_counts_hits() {
    let mut acl = AccessControl::new(10);
    acl.set_policy(1u32, "owner", AccessMode::Public, vec![])
        .unwrap();
    let ctx = Context::default();
    for i in 0..100 {
        acl.check(&1, &format!("s{i}"), Permission::Read, &ctx, 0);
    }
    assert!(acl.cache_stats().size <= 10);
    acl.check(&1, "s99", Permission::Read, &ctx, 0);
    assert!(acl.cache_stats().hits >= 1);
}

#[test]
fn explain_names_the_deciding_rule() {
    use dspex_core::acl::Decision;
    let mut acl = AccessControl::new(0);
    let allow = Rule::new("allow_all", SessionPattern::Any, &[Permission::Write]);
    let mut deny = Rule::new(
        "no_guests",
        SessionPattern::Prefix("guest".into()),
        &[Permission::Read],
    );
    deny.effect = Effect::Deny;
    acl.set_policy("v", "owner", AccessMode::Private, vec![allow, deny])
        .unwrap();
    let ctx = Context::default();
    assert_eq!(
        acl.explain(&"v", "owner", Permission::Write, &ctx, 0),
        Decision::Owner
    );
    assert_eq!(
        acl.explain(&"v", "guest_1", Permission::Write, &ctx, 0),
        Decision::Rule {
            id: "no_guests".into(),
            effect: Effect::Deny,
            priority: 0
        }
    );
    assert!(acl
        .explain(&"v", "bob", Permission::Write, &ctx, 0)
        .allowed());
    assert_eq!(
        acl.explain(&"v", "bob", Permission::Observe, &ctx, 0),
        Decision::Default {
            mode: AccessMode::Private,
            allowed: false
        }
    );
    assert_eq!(
        acl.explain(&"w", "bob", Permission::Read, &ctx, 0),
        Decision::NoPolicy
    );
}

#[test]
fn globs_match_like_shell_patterns() {
    let cases = [
        ("admin_*", "admin_ann", true),
        ("admin_*", "xadmin_ann", false),
        ("*_bot", "build_bot", true),
        ("team_*_lead", "team_red_lead", true),
        ("team_*_lead", "team_red_leader", false),
        ("s?", "s1", true),
        ("s?", "s12", false),
        ("a.b*", "a.bc", true),
        ("a.b*", "axbc", false),
        ("exact", "exact", true),
        ("exact", "exactly", false),
    ];
    for (glob, session, expected) in cases {
        let pattern = SessionPattern::glob(glob).unwrap();
        assert_eq!(pattern.matches(session), expected, "{glob} vs {session}");
    }
}
