//! The index answers exactly as the scans it replaced: an oracle (the previous scan-based
//! rules, kept verbatim below) is compared with it over a grid of entries, sources and
//! directories, mixed case included; then the rules that matter most, spelled out.

use super::*;
use crate::config::{Inbound, Outbound, Visibility};
use std::path::PathBuf;

fn config(projects: &[(u64, &str)]) -> Arc<Config> {
    let mut c = Config::from_yaml_str(
        "upstream: { url: 'http://127.0.0.1:3000' }",
        &PathBuf::from("<test>"),
    )
    .expect("minimal config");
    c.projects = projects
        .iter()
        .map(|(id, path)| ProjectConfig {
            id: *id,
            path: Some(path.to_string()),
            visibility: Visibility::Private,
            features: Default::default(),
            inbound: Inbound::default(),
            outbound: Outbound::default(),
            git_push: false,
        })
        .collect();
    Arc::new(c)
}

fn source(id: u64, path: &str, ancestors: Option<&[u64]>) -> SourceProject {
    SourceProject {
        id,
        path: path.to_owned(),
        ancestor_group_ids: ancestors.map(<[u64]>::to_vec),
    }
}

fn path(p: &str) -> Ref {
    Ref::Path(p.to_owned())
}

/// The rules as they were evaluated before the index: a map rebuilt per request from the
/// config's pairs and the request's knowledge, and a scan over each list.
mod oracle {
    use super::*;

    pub struct OldDirectory {
        pub project_ids: HashMap<String, u64>,
        pub group_ids: HashMap<String, u64>,
    }

    pub fn lists_source(
        projects: &[Ref],
        groups: &[Ref],
        dir: &OldDirectory,
        source: &SourceProject,
    ) -> bool {
        projects
            .iter()
            .any(|entry| project_entry_matches(entry, dir, source.id, &source.path))
            || groups
                .iter()
                .any(|entry| group_contains(entry, dir, source))
    }

    pub fn project_entry_matches(entry: &Ref, dir: &OldDirectory, id: u64, path: &str) -> bool {
        match entry {
            Ref::Id(n) => *n == id,
            Ref::Path(p) => match lookup(&dir.project_ids, p) {
                Some(known) => known == id,
                None => p.eq_ignore_ascii_case(path),
            },
        }
    }

    fn group_contains(entry: &Ref, dir: &OldDirectory, source: &SourceProject) -> bool {
        match (&source.ancestor_group_ids, entry) {
            (Some(ancestors), Ref::Id(g)) => ancestors.contains(g),
            (Some(ancestors), Ref::Path(p)) => {
                lookup(&dir.group_ids, p).is_some_and(|g| ancestors.contains(&g))
            }
            (None, Ref::Path(p)) => path_within(&source.path, p),
            (None, Ref::Id(g)) => dir
                .group_ids
                .iter()
                .any(|(p, id)| id == g && path_within(&source.path, p)),
        }
    }

    fn path_within(path: &str, group: &str) -> bool {
        let (path, group) = (path.as_bytes(), group.trim_matches('/').as_bytes());
        !group.is_empty()
            && path.len() > group.len()
            && path[group.len()] == b'/'
            && path[..group.len()].eq_ignore_ascii_case(group)
    }

    fn lookup(map: &HashMap<String, u64>, path: &str) -> Option<u64> {
        match map.get(path) {
            Some(id) => Some(*id),
            None if path.bytes().any(|b| b.is_ascii_uppercase()) => {
                map.get(&path.to_ascii_lowercase()).copied()
            }
            None => None,
        }
    }
}

/// A request's knowledge, as both representations hold it (the old one on top of the
/// config's pairs, inserted first, as `Resolver::directory` used to).
struct Knowledge {
    projects: Vec<(&'static str, u64)>,
    groups: Vec<(&'static str, u64)>,
}

impl Knowledge {
    fn new(projects: &[(&'static str, u64)], groups: &[(&'static str, u64)]) -> Knowledge {
        Knowledge {
            projects: projects.to_vec(),
            groups: groups.to_vec(),
        }
    }

    fn directory(&self) -> Directory {
        let mut d = Directory::default();
        for (p, id) in &self.projects {
            d.insert_project(p, *id);
        }
        for (p, id) in &self.groups {
            d.insert_group(p, *id);
        }
        d
    }

    fn old(&self, config: &Config) -> oracle::OldDirectory {
        let mut project_ids = HashMap::default();
        for c in &config.projects {
            if let Some(p) = &c.path {
                project_ids.insert(p.clone(), c.id);
            }
        }
        for (p, id) in &self.projects {
            project_ids.insert(p.to_string(), *id);
        }
        oracle::OldDirectory {
            project_ids,
            group_ids: self
                .groups
                .iter()
                .map(|(p, id)| (p.to_string(), *id))
                .collect(),
        }
    }
}

#[test]
fn identical_to_the_scans_it_replaced() {
    let config = config(&[(1, "g/src"), (2, "g/dst"), (5, "g/old"), (6, "g/trusted/x")]);
    let index = ScopeIndex::new(config.clone());
    let project_entries = [
        vec![],
        vec![Ref::Id(1)],
        vec![Ref::Id(9)],
        vec![path("g/src")],
        vec![path("G/Src")],
        vec![path("g/old")],
        vec![path("g/trusted/x")],
        vec![path("G/Trusted/X")],
        vec![path("h/unknown")],
        vec![path("g/trusted-evil/x")],
        vec![Ref::Id(9), path("g/old")],
    ];
    let group_entries = [
        vec![],
        vec![path("g/trusted")],
        vec![path("G/TRUSTED")],
        vec![path("g")],
        vec![path("g/trusted/")],
        vec![path("/g/trusted")],
        vec![path("h")],
        vec![path("g/trusted/sub")],
        vec![Ref::Id(50)],
        vec![Ref::Id(60)],
        vec![Ref::Id(50), path("h")],
    ];
    let ancestors: [Option<&[u64]>; 3] = [None, Some(&[10, 50]), Some(&[60])];
    let sources = [
        (1, "g/src"),
        (1, "g/trusted/x"),
        (1, "G/Trusted/x"),
        (1, "g/trusted-evil/x"),
        (1, "g/trusted"),
        (7, "g/trusted/sub/x"),
        (6, "g/trusted/x"),
        (8, "h/unknown"),
    ];
    let knowledge = [
        Knowledge::new(&[], &[]),
        Knowledge::new(&[("g/src", 1)], &[]),
        Knowledge::new(&[("g/old", 1)], &[]),
        Knowledge::new(&[("g/src", 4)], &[]),
        Knowledge::new(&[("g/trusted/x", 1), ("h/unknown", 8)], &[]),
        Knowledge::new(&[], &[("g/trusted", 50)]),
        Knowledge::new(&[], &[("g/trusted", 60), ("h", 50)]),
        Knowledge::new(&[("g/old", 1), ("g/old", 3)], &[("g/trusted/sub", 50)]),
    ];
    let mut checked = 0;
    let mut failures = Vec::new();
    for projects in &project_entries {
        for groups in &group_entries {
            let list = Allowlist::new(projects, groups);
            for k in &knowledge {
                let (dir, old) = (k.directory(), k.old(&config));
                for (id, p) in sources {
                    for a in ancestors {
                        let s = source(id, p, a);
                        let want = oracle::lists_source(projects, groups, &old, &s);
                        if index.lists_source(&list, &dir, &s) != want {
                            failures.push(format!(
                                "lists_source {projects:?} {groups:?} {:?}/{:?} S={id} {p} {a:?}: want {want}",
                                k.projects, k.groups
                            ));
                        }
                        // The outbound question: does the list name the project (id, p)?
                        let want = projects
                            .iter()
                            .any(|e| oracle::project_entry_matches(e, &old, id, p));
                        if index.names_project(&list, &dir, id, p) != want {
                            failures.push(format!(
                                "names_project {projects:?} {:?} ({id}, {p}): want {want}",
                                k.projects
                            ));
                        }
                        checked += 1;
                    }
                }
            }
        }
    }
    assert!(checked > 20_000, "the grid shrank: {checked}");
    assert!(
        failures.is_empty(),
        "{} of {checked} differ:\n{}",
        failures.len(),
        failures[..failures.len().min(20)].join("\n")
    );
}

#[test]
fn subgroups_are_inside_their_groups_on_segment_boundaries() {
    let index = ScopeIndex::new(config(&[]));
    let list = Allowlist::new(&[], &[path("g/trusted")]);
    let dir = Directory::default();
    let inside = |p: &str| index.lists_source(&list, &dir, &source(1, p, None));
    assert!(inside("g/trusted/x"));
    assert!(inside("g/trusted/sub/x"));
    assert!(inside("g/trusted/a/b/c/d/x"));
    assert!(
        !inside("g/trusted-evil/x"),
        "a sibling sharing a prefix is not inside"
    );
    assert!(!inside("g/trustedx/x"));
    assert!(
        !inside("g/trusted"),
        "a project at the group's own path is not inside it"
    );
    assert!(!inside("g/x"), "the parent's projects are not inside");
    assert!(
        !inside("h/g/trusted/x"),
        "the same name elsewhere is not inside"
    );
}

#[test]
fn case_folds_as_before() {
    let index = ScopeIndex::new(config(&[(3, "g/listed")]));
    let list = Allowlist::new(&[path("G/Listed")], &[path("G/TRUSTED")]);
    let dir = Directory::default();
    let listed = |id: u64, p: &str| index.lists_source(&list, &dir, &source(id, p, None));
    // Group entries and S's path fold ASCII case.
    assert!(listed(1, "G/Trusted/x"));
    assert!(listed(1, "g/trusted/x"));
    assert!(!listed(1, "G/Trusted-Evil/x"));
    // A path entry the config knows compares by the config's id, whatever its case.
    assert!(listed(3, "elsewhere/now"));
    assert!(!listed(4, "g/listed"), "the path is project 3's, not 4's");
    // The directory stores lower-cased paths and folds the ones it is asked about.
    let mut dir = Directory::default();
    dir.insert_project("G/Moved", 9);
    assert_eq!(dir.project_id("g/moved"), Some(9));
    assert_eq!(dir.project_id("G/MOVED"), Some(9));
}

#[test]
fn ancestor_ids_decide_when_known() {
    let index = ScopeIndex::new(config(&[]));
    let by_path = Allowlist::new(&[], &[path("g/trusted")]);
    let by_id = Allowlist::new(&[], &[Ref::Id(50)]);
    let mut resolved = Directory::default();
    resolved.insert_group("g/trusted", 50);
    let s = |p: &str, a: &[u64]| source(1, p, Some(a));
    // The path string is not consulted once ancestor ids are known.
    assert!(index.lists_source(&by_path, &resolved, &s("g/moved/x", &[10, 50])));
    assert!(!index.lists_source(&by_path, &resolved, &s("g/trusted/x", &[10, 66])));
    // A group path that did not resolve matches nothing.
    assert!(!index.lists_source(&by_path, &Directory::default(), &s("g/trusted/x", &[50])));
    assert!(index.lists_source(&by_id, &Directory::default(), &s("x/y", &[50])));
    assert!(!index.lists_source(&by_id, &Directory::default(), &s("g/trusted/x", &[])));
}

#[test]
fn projects_are_found_by_id_and_path_without_a_scan() {
    let projects: Vec<(u64, String)> = (1..=10_000)
        .map(|i| (i, format!("g{}/p{i}", i % 10)))
        .collect();
    let refs: Vec<(u64, &str)> = projects.iter().map(|(i, p)| (*i, p.as_str())).collect();
    let index = ScopeIndex::new(config(&refs));
    assert_eq!(index.project(9_999).map(|p| p.id), Some(9_999));
    assert_eq!(index.project_at("g7/p4567").map(|p| p.id), Some(4_567));
    assert!(index.project(10_001).is_none());
    assert!(index.project_at("g7/p4568").is_none());
    assert!(index.inbound(1).is_some() && index.inbound(10_001).is_none());
}
