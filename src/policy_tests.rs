//! Table tests for §4. Paths are given lower-cased, as config validation and the resolver hand
//! them over (that is the contract); a few rows pin down that mixed case still folds.
//!
//! Fixtures: S is project 1 `g/src`, T is project 2 `g/dst`. The tables are kept one row per
//! line (`rustfmt::skip`) so each reads as a truth table.

use super::*;
use crate::config::{
    Cache, Config, DenyResponse, Dependencies, Inbound, Limits, LogFormat, Mode, Outbound,
    ProjectConfig, Ref, Sources, Upstream,
};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use Visibility::{Internal, Private, Public};

const SELF: Decision = Decision::Allow(Allow::SameProject);
const FEATURE: Decision = Decision::Allow(Allow::FeatureRead);
const LISTED: Decision = Decision::Allow(Allow::InboundAllowlist);
const OPEN: Decision = Decision::Allow(Allow::InboundDisabled);
const NOT_LISTED: Decision = Decision::Deny(Deny::InboundAllowlist);
const OUTBOUND: Decision = Decision::Deny(Deny::OutboundScope);
const NO_PUSH: Decision = Decision::Deny(Deny::PushNotAllowed);
const REG_WRITE: Decision = Decision::Deny(Deny::RegistryWrite);
const REG_UNKNOWN: Decision = Decision::Deny(Deny::RegistryUnknownAction);

const READ: Action = Action::Read(None);
const WRITE: Action = Action::Write;
const PUSH: Action = Action::Push;
const CLONE: Action = Action::Read(Some(Feature::Repository));

const FEATURES: [Feature; 6] = [
    Feature::Repository,
    Feature::Artifacts,
    Feature::Packages,
    Feature::Registry,
    Feature::Releases,
    Feature::Environments,
];

// --- builders -------------------------------------------------------------------------------

fn cfg(projects: Vec<ProjectConfig>) -> Config {
    Config {
        source: "<string>".into(),
        listen: "127.0.0.1:8080".parse().unwrap(),
        tls: None,
        upstream: Upstream {
            url: "http://127.0.0.1:3000".parse().unwrap(),
            relative_url_root: String::new(),
            ca: None,
            token_env: None,
        },
        admin: None,
        trusted_proxies: Vec::new(),
        cache: Cache {
            ttl: Duration::from_secs(30),
            negative_ttl: Duration::from_secs(5),
            project_ttl: Duration::from_secs(60),
        },
        instance_prefix: String::new(),
        mode: Mode::Enforce,
        deny_response: DenyResponse::NotFound,
        dependencies: Dependencies::Forge,
        projects,
        routes: Vec::new(),
        limits: Limits::default(),
        shutdown: Default::default(),
        log_format: LogFormat::Text,
        auth_log: None,
    }
}

/// A private project with GitLab's defaults: inbound enabled and empty, outbound disabled.
fn proj(id: u64, path: &str) -> ProjectConfig {
    ProjectConfig {
        id,
        path: Some(path.to_owned()),
        visibility: Private,
        features: Features::default(),
        inbound: Inbound::default(),
        outbound: Outbound::default(),
        git_push: false,
    }
}

fn inbound(mut p: ProjectConfig, projects: &[Ref], groups: &[Ref]) -> ProjectConfig {
    p.inbound.projects = projects.to_vec();
    p.inbound.groups = groups.to_vec();
    p
}

fn inbound_off(mut p: ProjectConfig) -> ProjectConfig {
    p.inbound.enabled = false;
    p
}

fn outbound(mut p: ProjectConfig, projects: &[Ref]) -> ProjectConfig {
    p.outbound = Outbound {
        enabled: true,
        projects: projects.to_vec(),
    };
    p
}

fn git_push(mut p: ProjectConfig) -> ProjectConfig {
    p.git_push = true;
    p
}

fn id(n: u64) -> Ref {
    Ref::Id(n)
}

fn path(p: &str) -> Ref {
    Ref::Path(p.to_owned())
}

/// S without ancestor ids (no service token).
fn src(id: u64, path: &str) -> SourceProject {
    SourceProject {
        id,
        path: path.to_owned(),
        ancestor_group_ids: None,
    }
}

/// S with ancestor group ids (a service token resolved them).
fn src_in(id: u64, path: &str, ancestors: &[u64]) -> SourceProject {
    SourceProject {
        id,
        path: path.to_owned(),
        ancestor_group_ids: Some(ancestors.to_vec()),
    }
}

fn s() -> SourceProject {
    src(1, "g/src")
}

fn tgt(id: u64, path: &str, visibility: Visibility) -> TargetProject {
    TargetProject {
        id,
        path: path.to_owned(),
        visibility,
        features: Features::default(),
    }
}

fn t(visibility: Visibility) -> TargetProject {
    tgt(2, "g/dst", visibility)
}

/// S itself as a target.
fn me() -> TargetProject {
    tgt(1, "g/src", Private)
}

fn with_level(mut t: TargetProject, feature: Feature, level: Option<AccessLevel>) -> TargetProject {
    let slot = match feature {
        Feature::Repository => &mut t.features.repository,
        Feature::Artifacts => &mut t.features.artifacts,
        Feature::Packages => &mut t.features.packages,
        Feature::Registry => &mut t.features.registry,
        Feature::Releases => &mut t.features.releases,
        Feature::Environments => &mut t.features.environments,
    };
    *slot = level;
    t
}

/// What a request learned beyond the config's pairs (which the index supplies).
fn dir(projects: &[(&str, u64)], groups: &[(&str, u64)]) -> Directory {
    let mut d = Directory::default();
    for (p, i) in projects {
        d.insert_project(p, *i);
    }
    for (p, i) in groups {
        d.insert_group(p, *i);
    }
    d
}

fn index(config: &Config) -> ScopeIndex {
    ScopeIndex::new(Arc::new(config.clone()))
}

fn nodir() -> Directory {
    Directory::default()
}

/// T = 2 `g/dst` with the given inbound entries.
fn t_allows(projects: &[Ref], groups: &[Ref]) -> Config {
    cfg(vec![inbound(proj(2, "g/dst"), projects, groups)])
}

// --- the runner -----------------------------------------------------------------------------

type Row = (
    String,
    Config,
    Directory,
    SourceProject,
    TargetProject,
    Action,
    Decision,
);

fn row(
    name: impl Into<String>,
    config: Config,
    dir: Directory,
    source: SourceProject,
    target: TargetProject,
    action: Action,
    want: Decision,
) -> Row {
    (name.into(), config, dir, source, target, action, want)
}

/// Runs every row and reports all failures at once, so a broken rule shows its whole blast
/// radius rather than the first casualty.
fn run(rows: Vec<Row>) {
    let mut names = HashSet::new();
    let mut failures = Vec::new();
    for (name, config, dir, source, target, action, want) in &rows {
        assert!(names.insert(name.clone()), "duplicate row name {name:?}");
        let got = decide(&index(config), dir, source, target, *action);
        if got != *want {
            failures.push(format!("{name}: want {want:?}, got {got:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failing row(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// --- §4 step 1 and the push rule ------------------------------------------------------------

#[test]
#[rustfmt::skip]
fn same_project() {
    run(vec![
        row("self read",                     cfg(vec![]),                         nodir(), s(), me(), READ,  SELF),
        row("self feature read",             cfg(vec![]),                         nodir(), s(), me(), CLONE, SELF),
        row("self write",                    cfg(vec![]),                         nodir(), s(), me(), WRITE, SELF),
        // An enabled, empty inbound list or outbound scope never shuts a project out of itself.
        row("self write, inbound on",        cfg(vec![proj(1, "g/src")]),          nodir(), s(), me(), WRITE, SELF),
        row("self write, outbound on",       cfg(vec![outbound(proj(1, "g/src"), &[])]), nodir(), s(), me(), WRITE, SELF),
        row("self push, not configured",     cfg(vec![]),                         nodir(), s(), me(), PUSH,  NO_PUSH),
        row("self push, git_push off",       cfg(vec![proj(1, "g/src")]),          nodir(), s(), me(), PUSH,  NO_PUSH),
        row("self push, git_push on",        cfg(vec![git_push(proj(1, "g/src"))]), nodir(), s(), me(), PUSH, SELF),
        // Identity is the id: another project at S's path is not S.
        row("same path, other id",           cfg(vec![]), nodir(), s(), tgt(9, "g/src", Private), READ, NOT_LISTED),
    ]);
}

#[test]
#[rustfmt::skip]
fn push_is_scoped_first() {
    let t_in = || inbound(proj(2, "g/dst"), &[id(1)], &[]);
    let s_out = || outbound(proj(1, "g/src"), &[]);
    run(vec![
        // Out of scope: the scope denial (404), so a push reveals no more than a read.
        row("unlisted private",         cfg(vec![]),                              nodir(), s(), t(Private), PUSH, NOT_LISTED),
        row("unlisted public",          cfg(vec![]),                              nodir(), s(), t(Public),  PUSH, NOT_LISTED),
        row("outbound denies",          cfg(vec![s_out(), t_in()]),               nodir(), s(), t(Private), PUSH, OUTBOUND),
        // In scope: the forge's 403, whoever has `git_push`.
        row("listed",                   cfg(vec![t_in()]),                        nodir(), s(), t(Private), PUSH, NO_PUSH),
        row("listed, T has git_push",   cfg(vec![git_push(t_in())]),              nodir(), s(), t(Private), PUSH, NO_PUSH),
        row("listed, S has git_push",   cfg(vec![git_push(proj(1, "g/src")), t_in()]), nodir(), s(), t(Private), PUSH, NO_PUSH),
        row("inbound disabled",         cfg(vec![inbound_off(proj(2, "g/dst"))]), nodir(), s(), t(Public), PUSH, NO_PUSH),
    ]);
}

// --- §4 step 2 ------------------------------------------------------------------------------

/// Every feature × level × visibility, read unlisted and allowlisted, plus the non-feature
/// actions that must never take the shortcut.
#[test]
fn feature_reads_on_every_feature_level_and_visibility() {
    let levels = [
        (Some(AccessLevel::Enabled), "enabled"),
        (None, "unstated"),
        (Some(AccessLevel::Private), "private"),
        (Some(AccessLevel::Disabled), "disabled"),
    ];
    let mut rows = Vec::new();
    for feature in FEATURES {
        for (level, level_name) in levels {
            for vis in [Public, Internal, Private] {
                let target = with_level(t(vis), feature, level);
                let name = format!("{feature:?} {level_name} on {vis:?}");
                let open_level = matches!(level, None | Some(AccessLevel::Enabled));
                let shortcut = vis != Private && open_level;
                let read = Action::Read(Some(feature));
                // T not in config: default inbound (enabled, empty).
                let want = if shortcut { FEATURE } else { NOT_LISTED };
                rows.push(row(
                    format!("{name}, unlisted"),
                    cfg(vec![]),
                    nodir(),
                    s(),
                    target.clone(),
                    read,
                    want,
                ));
                // On T's allowlist the scope lets the read through whatever the level (the
                // forge itself refuses a disabled feature).
                let want = if shortcut { FEATURE } else { LISTED };
                let config = t_allows(&[id(1)], &[]);
                rows.push(row(
                    format!("{name}, allowlisted"),
                    config,
                    nodir(),
                    s(),
                    target.clone(),
                    read,
                    want,
                ));
                for (action, action_name) in [(READ, "read"), (WRITE, "write"), (PUSH, "push")] {
                    let name = format!("{name}, unlisted {action_name}");
                    rows.push(row(
                        name,
                        cfg(vec![]),
                        nodir(),
                        s(),
                        target.clone(),
                        action,
                        NOT_LISTED,
                    ));
                }
            }
        }
    }
    run(rows);
}

#[test]
#[rustfmt::skip]
fn feature_levels_are_per_feature() {
    let repo_private = with_level(t(Public), Feature::Repository, Some(AccessLevel::Private));
    let artifacts = Action::Read(Some(Feature::Artifacts));
    let says_public = ProjectConfig { visibility: Public, ..proj(2, "g/dst") };
    run(vec![
        row("repository private",         cfg(vec![]), nodir(), s(), repo_private.clone(), CLONE,     NOT_LISTED),
        row("artifacts still open",       cfg(vec![]), nodir(), s(), repo_private.clone(), artifacts, FEATURE),
        // T's resolved visibility decides, not the config's (the forge's stricter answer wins).
        row("config public, resolved private", cfg(vec![says_public]), nodir(), s(), t(Private), CLONE, NOT_LISTED),
    ]);
}

// --- §4 step 3 ------------------------------------------------------------------------------

#[test]
#[rustfmt::skip]
fn inbound_projects() {
    let off = || cfg(vec![inbound_off(proj(2, "g/dst"))]);
    let off_listing = cfg(vec![inbound_off(inbound(proj(2, "g/dst"), &[id(7)], &[]))]);
    let s_lists_t = cfg(vec![inbound(proj(1, "g/src"), &[id(2)], &[])]);
    run(vec![
        row("not in config: default inbound", cfg(vec![]),              nodir(), s(), t(Private), READ,  NOT_LISTED),
        row("configured, empty list",      t_allows(&[], &[]),           nodir(), s(), t(Private), READ,  NOT_LISTED),
        row("disabled: read",              off(),                        nodir(), s(), t(Private), READ,  OPEN),
        row("disabled: write",             off(),                        nodir(), s(), t(Private), WRITE, OPEN),
        row("disabled: list ignored",      off_listing,                  nodir(), s(), t(Private), READ,  OPEN),
        // By id.
        row("by id",                       t_allows(&[id(1)], &[]),      nodir(), s(), t(Private), READ,  LISTED),
        row("by id: write",                t_allows(&[id(1)], &[]),      nodir(), s(), t(Private), WRITE, LISTED),
        row("by other id",                 t_allows(&[id(3)], &[]),      nodir(), s(), t(Private), READ,  NOT_LISTED),
        row("among others",  t_allows(&[id(3), path("g/x"), id(1)], &[]), nodir(), s(), t(Private), READ,  LISTED),
        // By path.
        row("by path",                     t_allows(&[path("g/src")], &[]),  nodir(), s(), t(Private), READ, LISTED),
        row("by other path",               t_allows(&[path("g/src2")], &[]), nodir(), s(), t(Private), READ, NOT_LISTED),
        row("a group path is no project",  t_allows(&[path("g")], &[]),      nodir(), s(), t(Private), READ, NOT_LISTED),
        row("mixed-case S folds",  t_allows(&[path("g/src")], &[]), nodir(), src(1, "G/Src"), t(Private), READ, LISTED),
        // By path through the directory: ids are authoritative.
        row("old path resolves to S",  t_allows(&[path("g/old")], &[]), dir(&[("g/old", 1)], &[]), s(), t(Private), READ, LISTED),
        row("S's path resolves to 5",  t_allows(&[path("g/src")], &[]), dir(&[("g/src", 5)], &[]), s(), t(Private), READ, NOT_LISTED),
        row("directory silent on it",  t_allows(&[path("g/src")], &[]), dir(&[("g/x", 1)], &[]),   s(), t(Private), READ, LISTED),
        // Public and internal projects are scoped for everything but feature reads.
        row("public non-feature read",     cfg(vec![]),                  nodir(), s(), t(Public),   READ,  NOT_LISTED),
        row("public non-feature, listed",  t_allows(&[id(1)], &[]),      nodir(), s(), t(Public),   READ,  LISTED),
        row("internal write",              cfg(vec![]),                  nodir(), s(), t(Internal), WRITE, NOT_LISTED),
        row("public write",                cfg(vec![]),                  nodir(), s(), t(Public),   WRITE, NOT_LISTED),
        row("public write, listed",        t_allows(&[id(1)], &[]),      nodir(), s(), t(Public),   WRITE, LISTED),
        // The list that counts is T's: S listing T opens nothing.
        row("S lists T in its own inbound", s_lists_t,                   nodir(), s(), t(Private), READ,  NOT_LISTED),
    ]);
}

#[test]
#[rustfmt::skip]
fn inbound_groups() {
    let g = |groups: &[Ref]| t_allows(&[], groups);
    let trusted = || g(&[path("g/trusted")]);
    let as_project = t_allows(&[path("g/trusted")], &[]);
    let resolved = || dir(&[], &[("g/trusted", 50)]);
    let r = |name: &str, config: Config, d: Directory, source: SourceProject, want: Decision| {
        row(name, config, d, source, t(Private), READ, want)
    };
    run(vec![
        // By id, with ancestor ids (service token): GitLab's `includes_group?`.
        r("id: parent",                 g(&[id(50)]), nodir(), src_in(1, "g/trusted/x", &[10, 50]),          LISTED),
        r("id: grand-parent",           g(&[id(10)]), nodir(), src_in(1, "g/trusted/sub/x", &[10, 50, 51]), LISTED),
        r("id: not an ancestor",        g(&[id(60)]), nodir(), src_in(1, "g/trusted/x", &[10, 50]),          NOT_LISTED),
        r("id: no ancestors at all",    g(&[id(50)]), nodir(), src_in(1, "x/y", &[]),                        NOT_LISTED),
        r("id: S's id is not a group",  g(&[id(1)]),  nodir(), src_in(1, "g/x", &[10]),                      NOT_LISTED),
        // By id, without ancestor ids: only through a path the directory pairs with that id.
        r("id, no ancestors, unknown",  g(&[id(50)]), nodir(),    src(1, "g/trusted/x"),      NOT_LISTED),
        r("id, no ancestors, via dir",  g(&[id(50)]), resolved(), src(1, "g/trusted/x"),      LISTED),
        r("id, no ancestors, sibling",  g(&[id(50)]), resolved(), src(1, "g/trusted-evil/x"), NOT_LISTED),
        // By path, with ancestor ids: decided on the resolved id, never on the string.
        r("path: resolved ancestor",    trusted(), resolved(), src_in(1, "g/moved/x", &[10, 50]),   LISTED),
        r("path: prefix, not ancestor", trusted(), resolved(), src_in(1, "g/trusted/x", &[10, 66]), NOT_LISTED),
        r("path: unresolved, closed",   trusted(), nodir(),    src_in(1, "g/trusted/x", &[10, 50]), NOT_LISTED),
        r("path: mixed-case resolves",  g(&[path("G/Trusted")]), resolved(), src_in(1, "g/trusted/x", &[50]), LISTED),
        // By path, without ancestor ids: whole path segments.
        r("seg: child",                 trusted(), nodir(), src(1, "g/trusted/x"),        LISTED),
        r("seg: subgroup",              trusted(), nodir(), src(1, "g/trusted/sub/x"),    LISTED),
        r("seg: sibling with prefix",   trusted(), nodir(), src(1, "g/trusted-evil/x"),   NOT_LISTED),
        r("seg: longer name",           trusted(), nodir(), src(1, "g/trustedx/x"),       NOT_LISTED),
        r("seg: project at group path", trusted(), nodir(), src(1, "g/trusted"),          NOT_LISTED),
        r("seg: parent's project",      trusted(), nodir(), src(1, "g/x"),                NOT_LISTED),
        r("seg: nested elsewhere",      trusted(), nodir(), src(1, "h/g/trusted/x"),      NOT_LISTED),
        r("seg: top-level group",       g(&[path("g")]), nodir(), src(1, "g/trusted/x"),  LISTED),
        // Lower-cased inputs are the contract; ASCII case folds anyway, as GitLab paths do.
        r("seg: mixed-case S",          trusted(), nodir(), src(1, "G/Trusted/x"),        LISTED),
        r("seg: mixed-case entry",      g(&[path("G/TRUSTED")]), nodir(), src(1, "g/trusted/x"), LISTED),
        r("seg: mixed-case sibling",    trusted(), nodir(), src(1, "G/Trusted-Evil/x"),   NOT_LISTED),
        // A group listed as a project contains nothing.
        r("group path as a project",    as_project, nodir(), src(1, "g/trusted/x"),       NOT_LISTED),
    ]);
}

// --- §4 step 4 ------------------------------------------------------------------------------

#[test]
#[rustfmt::skip]
fn outbound_scope() {
    let s_out = |projects: &[Ref]| outbound(proj(1, "g/src"), projects);
    let t_in = || inbound(proj(2, "g/dst"), &[id(1)], &[]);
    let t_off = || inbound_off(proj(2, "g/dst"));
    let off_with_list = ProjectConfig { outbound: Outbound { enabled: false, projects: vec![id(9)] }, ..proj(1, "g/src") };
    let old = || dir(&[("g/old-dst", 2)], &[]);
    let moved = || dir(&[("g/dst", 8)], &[]);
    run(vec![
        row("private, not listed",      cfg(vec![s_out(&[]), t_in()]),              nodir(), s(), t(Private), READ,  OUTBOUND),
        row("private, by id",           cfg(vec![s_out(&[id(2)]), t_in()]),         nodir(), s(), t(Private), READ,  LISTED),
        row("private, by path",         cfg(vec![s_out(&[path("g/dst")]), t_in()]), nodir(), s(), t(Private), WRITE, LISTED),
        row("private, by old path",     cfg(vec![s_out(&[path("g/old-dst")]), t_in()]), old(), s(), t(Private), READ, LISTED),
        row("private, path moved on",   cfg(vec![s_out(&[path("g/dst")]), t_in()]), moved(), s(), t(Private), READ,  OUTBOUND),
        row("private feature read",     cfg(vec![s_out(&[]), t_in()]),              nodir(), s(), t(Private), CLONE, OUTBOUND),
        // Only private targets count (`Scope#outbound_accessible?`).
        row("public: not applicable",   cfg(vec![s_out(&[]), t_in()]),              nodir(), s(), t(Public),   READ,  LISTED),
        row("internal: not applicable", cfg(vec![s_out(&[]), t_in()]),              nodir(), s(), t(Internal), WRITE, LISTED),
        row("public feature read",      cfg(vec![s_out(&[])]),                      nodir(), s(), t(Public),   CLONE, FEATURE),
        // Disabled or absent: nothing is limited, whatever the list.
        row("disabled, with a list",    cfg(vec![off_with_list, t_in()]),           nodir(), s(), t(Private), READ,  LISTED),
        row("S not in config",          cfg(vec![t_in()]),                          nodir(), s(), t(Private), READ,  LISTED),
        row("T's outbound irrelevant",  cfg(vec![outbound(t_in(), &[])]),          nodir(), s(), t(Private), READ,  LISTED),
        // Both directions must pass; inbound is reported first.
        row("both fail",                cfg(vec![s_out(&[])]),                      nodir(), s(), t(Private), READ,  NOT_LISTED),
        row("outbound only",            cfg(vec![s_out(&[id(2)])]),                 nodir(), s(), t(Private), READ,  NOT_LISTED),
        row("inbound off, outbound no", cfg(vec![s_out(&[]), t_off()]),             nodir(), s(), t(Private), READ,  OUTBOUND),
        row("inbound off, outbound ok", cfg(vec![s_out(&[id(2)]), t_off()]),        nodir(), s(), t(Private), READ,  OPEN),
    ]);
}

// --- registry scopes (§3) -------------------------------------------------------------------

#[test]
#[rustfmt::skip]
fn registry_actions() {
    let listed = cfg(vec![inbound(proj(2, "g/dst"), &[id(1)], &[]), git_push(proj(1, "g/src"))]);
    let none = cfg(vec![]);
    let reg = |vis, level| with_level(t(vis), Feature::Registry, level);
    let (enabled, private, disabled) = (Some(AccessLevel::Enabled), Some(AccessLevel::Private), Some(AccessLevel::Disabled));
    let table: Vec<(&str, &Config, TargetProject, &str, Decision)> = vec![
        ("pull self",                     &listed, me(),                     "pull",    SELF),
        ("push self",                     &listed, me(),                     "push",    SELF),
        ("delete self",                   &listed, me(),                     "delete",  SELF),
        ("star self",                     &none,   me(),                     "*",       SELF),
        ("pull public, unstated",         &none,   reg(Public, None),        "pull",    FEATURE),
        ("pull internal, enabled",        &none,   reg(Internal, enabled),   "pull",    FEATURE),
        ("pull public, private, listed",  &listed, reg(Public, private),     "pull",    LISTED),
        ("pull public, private, unlisted", &none,  reg(Public, private),     "pull",    NOT_LISTED),
        ("pull public, disabled",         &none,   reg(Public, disabled),    "pull",    NOT_LISTED),
        ("pull private, listed",          &listed, reg(Private, None),       "pull",    LISTED),
        ("pull private, unlisted",        &none,   reg(Private, None),       "pull",    NOT_LISTED),
        // Writes go to S's own project only, allowlist or not.
        ("push public, listed",           &listed, reg(Public, None),        "push",    REG_WRITE),
        ("push private, listed",          &listed, reg(Private, None),       "push",    REG_WRITE),
        ("delete public",                 &none,   reg(Public, None),        "delete",  REG_WRITE),
        ("star public, listed",           &listed, reg(Public, None),        "*",       REG_WRITE),
        // Anything else is never granted, not even on S.
        ("unknown action to self",        &listed, me(),                     "catalog", REG_UNKNOWN),
        ("actions are case-sensitive",    &listed, me(),                     "PULL",    REG_UNKNOWN),
        ("empty action",                  &listed, me(),                     "",        REG_UNKNOWN),
    ];
    let failures: Vec<String> = table
        .iter()
        .filter_map(|(name, config, target, action, want)| {
            let got = decide_registry_action(&index(config), &nodir(), &s(), target, action);
            (got != *want).then(|| format!("{name}: want {want:?}, got {got:?}"))
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn registry_pull_is_a_registry_read() {
    let levels = [
        None,
        Some(AccessLevel::Enabled),
        Some(AccessLevel::Private),
        Some(AccessLevel::Disabled),
    ];
    for config in [
        cfg(vec![]),
        t_allows(&[id(1)], &[]),
        cfg(vec![outbound(proj(1, "g/src"), &[])]),
    ] {
        for vis in [Public, Internal, Private] {
            for level in levels {
                let target = with_level(t(vis), Feature::Registry, level);
                let index = index(&config);
                assert_eq!(
                    decide_registry_action(&index, &nodir(), &s(), &target, "pull"),
                    decide(
                        &index,
                        &nodir(),
                        &s(),
                        &target,
                        Action::Read(Some(Feature::Registry))
                    ),
                );
            }
        }
    }
}

// --- routes (§5) ----------------------------------------------------------------------------

#[test]
#[rustfmt::skip]
fn route_sources() {
    let srcs = |projects: &[Ref], groups: &[Ref]| Sources { projects: projects.to_vec(), groups: groups.to_vec() };
    let table: Vec<(&str, Sources, Directory, SourceProject, bool)> = vec![
        ("empty sources",           srcs(&[], &[]),               nodir(), src(1, "g/build"),      false),
        ("project by path",         srcs(&[path("g/build")], &[]), nodir(), src(1, "g/build"),     true),
        ("project by id",           srcs(&[id(1)], &[]),          nodir(), src(1, "g/build"),      true),
        ("other project",           srcs(&[path("g/build")], &[]), nodir(), src(1, "g/build-evil"), false),
        ("project via directory",   srcs(&[path("g/old")], &[]),   dir(&[("g/old", 1)], &[]),   src(1, "g/build"), true),
        ("path resolves elsewhere", srcs(&[path("g/build")], &[]), dir(&[("g/build", 4)], &[]), src(1, "g/build"), false),
        ("group by segments",       srcs(&[], &[path("g/ci")]),   nodir(), src(1, "g/ci/sub/runner"),  true),
        ("group sibling prefix",    srcs(&[], &[path("g/ci")]),   nodir(), src(1, "g/ci-evil/runner"), false),
        ("group by id, ancestor",   srcs(&[], &[id(30)]),         nodir(), src_in(1, "g/ci/runner", &[3, 30]), true),
        ("group by id, unrelated",  srcs(&[], &[id(31)]),         nodir(), src_in(1, "g/ci/runner", &[3, 30]), false),
        ("group path, resolved",    srcs(&[], &[path("g/ci")]),   dir(&[], &[("g/ci", 30)]), src_in(1, "g/ci/runner", &[3, 30]), true),
    ];
    let failures: Vec<&str> = table
        .iter()
        .filter(|(_, sources, d, source, want)| {
            let list = Allowlist::from_sources(sources);
            source_allowed(&index(&cfg(vec![])), &list, d, source) != *want
        })
        .map(|(name, ..)| *name)
        .collect();
    assert!(failures.is_empty(), "failing: {failures:?}");
}

// --- reasons --------------------------------------------------------------------------------

#[test]
fn reasons_are_distinct_snake_case() {
    let reasons = [
        Allow::SameProject.as_str(),
        Allow::FeatureRead.as_str(),
        Allow::InboundAllowlist.as_str(),
        Allow::InboundDisabled.as_str(),
        Deny::InboundAllowlist.as_str(),
        Deny::OutboundScope.as_str(),
        Deny::PushNotAllowed.as_str(),
        Deny::RegistryWrite.as_str(),
        Deny::RegistryUnknownAction.as_str(),
    ];
    let unique: HashSet<_> = reasons.iter().collect();
    assert_eq!(unique.len(), reasons.len());
    for r in reasons {
        assert!(
            !r.is_empty() && r.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
            "{r}"
        );
    }
    assert_eq!(NOT_LISTED.as_str(), Deny::InboundAllowlist.as_str());
    assert!(SELF.is_allow() && !NOT_LISTED.is_allow());
    assert!(!Deny::PushNotAllowed.is_scope());
    assert!(Deny::InboundAllowlist.is_scope() && Deny::RegistryWrite.is_scope());
}
