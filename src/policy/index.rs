//! The config's job-token settings compiled once per config generation ([`ScopeIndex`]), and
//! the path → id knowledge one request gathered ([`Directory`]), laid over the config's pairs.
//!
//! Every question a decision asks is a hash look-up, never a scan of `projects:` or of an
//! allowlist, so a decision costs the same with 10 projects or 10,000 (`bench/decide.rs`):
//! - "which project is id N / path P?" — maps from id and from lower-cased path;
//! - "does this list name project N?" — the list's ids, and its path entries against the
//!   few paths the directory says are N;
//! - "is S inside a listed group?" — S's ancestor group ids (≤ 20), or the ancestors of S's
//!   path (one per `/`), each looked up in the list's group sets.
//!
//! The rules are those of GitLab's `Ci::JobToken::Allowlist` as [`super`] documents them; this
//! module only changes how they are evaluated.

use crate::config::{Config, ProjectConfig, Ref, Sources};
use std::borrow::Cow;
// FxHash rather than SipHash: the long-lived maps hold the configuration's own ids and paths
// (a request only looks them up), and a request's `Directory` holds a handful of entries of
// its own; no attacker can fill a map with colliding keys, so a keyed hash's DoS resistance
// buys nothing, and hashing was a tenth of the decision's time.
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::sync::Arc;

use super::SourceProject;

/// One allowlist (a project's inbound or outbound list, a route's `sources`) as hash sets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowlist {
    project_ids: HashSet<u64>,
    /// Project path entries, lower-cased.
    project_paths: HashSet<String>,
    group_ids: HashSet<u64>,
    /// Group path entries, lower-cased: compared with the group paths a service token
    /// resolved.
    group_paths: HashSet<String>,
    /// The same without leading or trailing `/` (empty ones dropped): compared with the
    /// ancestors of S's path when no ancestor ids are known.
    group_prefixes: HashSet<String>,
}

impl Allowlist {
    pub fn new(projects: &[Ref], groups: &[Ref]) -> Allowlist {
        let mut list = Allowlist::default();
        for entry in projects {
            match entry {
                Ref::Id(id) => list.project_ids.insert(*id),
                Ref::Path(p) => list.project_paths.insert(p.to_ascii_lowercase()),
            };
        }
        for entry in groups {
            match entry {
                Ref::Id(id) => {
                    list.group_ids.insert(*id);
                }
                Ref::Path(p) => {
                    let lower = p.to_ascii_lowercase();
                    let trimmed = lower.trim_matches('/');
                    if !trimmed.is_empty() {
                        list.group_prefixes.insert(trimmed.to_owned());
                    }
                    list.group_paths.insert(lower);
                }
            }
        }
        list
    }

    pub fn from_sources(sources: &Sources) -> Allowlist {
        Allowlist::new(&sources.projects, &sources.groups)
    }
}

/// A configured project's compiled lists, beside its position in `Config::projects`.
#[derive(Debug)]
struct Entry {
    position: usize,
    inbound: Allowlist,
    outbound: Allowlist,
}

/// The config's projects and routes indexed for decisions; built with the gate, once per
/// config generation (a reload builds a new one with the new gate).
#[derive(Debug)]
pub struct ScopeIndex {
    config: Arc<Config>,
    projects: HashMap<u64, Entry>,
    /// The config's path → id pairs (lower-cased paths): the base layer under every
    /// [`Directory`].
    ids_by_path: HashMap<String, u64>,
    /// The reverse, so "which paths name project N" needs no scan.
    paths_by_id: HashMap<u64, Vec<String>>,
    /// `routes[i].sources`, compiled.
    routes: Vec<Allowlist>,
}

impl ScopeIndex {
    pub fn new(config: Arc<Config>) -> ScopeIndex {
        let mut projects =
            HashMap::with_capacity_and_hasher(config.projects.len(), Default::default());
        let mut ids_by_path =
            HashMap::with_capacity_and_hasher(config.projects.len(), Default::default());
        let mut paths_by_id: HashMap<u64, Vec<String>> = HashMap::default();
        for (position, p) in config.projects.iter().enumerate() {
            // Ids and paths are unique once the config has loaded; should a hand-built one
            // repeat an id, the first entry wins, as a scan from the top would find it.
            projects.entry(p.id).or_insert_with(|| Entry {
                position,
                inbound: Allowlist::new(&p.inbound.projects, &p.inbound.groups),
                outbound: Allowlist::new(&p.outbound.projects, &[]),
            });
            if let Some(path) = &p.path {
                let path = path.to_ascii_lowercase();
                paths_by_id.entry(p.id).or_default().push(path.clone());
                ids_by_path.insert(path, p.id);
            }
        }
        let routes = config
            .routes
            .iter()
            .map(|r| Allowlist::from_sources(&r.sources))
            .collect();
        ScopeIndex {
            config,
            projects,
            ids_by_path,
            paths_by_id,
            routes,
        }
    }

    /// The configured project with this id.
    pub fn project(&self, id: u64) -> Option<&ProjectConfig> {
        let entry = self.projects.get(&id)?;
        self.config.projects.get(entry.position)
    }

    /// The configured project at this full path (as validation writes it: lower-cased).
    pub fn project_at(&self, path: &str) -> Option<&ProjectConfig> {
        self.project(*self.ids_by_path.get(path)?)
    }

    /// `routes[i].sources`, compiled.
    pub fn route_sources(&self, i: usize) -> Option<&Allowlist> {
        self.routes.get(i)
    }

    pub(super) fn inbound(&self, id: u64) -> Option<&Allowlist> {
        self.projects.get(&id).map(|e| &e.inbound)
    }

    pub(super) fn outbound(&self, id: u64) -> Option<&Allowlist> {
        self.projects.get(&id).map(|e| &e.outbound)
    }

    /// Path → id: what this request learned (the job's and the target's own paths, forge
    /// look-ups) first, then the config's pairs.
    fn project_id(&self, dir: &Directory, path: &str) -> Option<u64> {
        let path = fold(path);
        dir.projects
            .ids
            .get(path.as_ref())
            .or_else(|| self.ids_by_path.get(path.as_ref()))
            .copied()
    }

    /// Does one of `list`'s project entries name project (`id`, `path`)?
    ///
    /// An id entry compares ids. A path entry the directory knows is compared by the id it
    /// resolves to (a project now sitting at a renamed project's old path does not inherit
    /// its place); one it does not know is compared as a path, ASCII case folded.
    pub(super) fn names_project(
        &self,
        list: &Allowlist,
        dir: &Directory,
        id: u64,
        path: &str,
    ) -> bool {
        if list.project_ids.contains(&id) {
            return true;
        }
        if list.project_paths.is_empty() {
            return false;
        }
        // The path entries that resolve to `id` are among the paths the directory pairs with
        // `id`; each is checked against the merged view, where this request's knowledge wins.
        let known = dir
            .projects
            .paths_of(id)
            .chain(self.paths_by_id.get(&id).into_iter().flatten());
        for candidate in known {
            if list.project_paths.contains(candidate) && self.project_id(dir, candidate) == Some(id)
            {
                return true;
            }
        }
        let path = fold(path);
        list.project_paths.contains(path.as_ref()) && self.project_id(dir, &path).is_none()
    }

    /// Is S one of `list`'s projects, or inside one of its groups (at any depth)?
    pub(super) fn lists_source(
        &self,
        list: &Allowlist,
        dir: &Directory,
        source: &SourceProject,
    ) -> bool {
        self.names_project(list, dir, source.id, &source.path) || group_contains(list, dir, source)
    }
}

/// Is S inside one of `list`'s groups?
///
/// With S's ancestor group ids (a service token resolved them) those ids are the only test,
/// GitLab's `Allowlist#includes_group?`: a listed id, or a listed path the directory resolves
/// to one of them. Without them, each ancestor of S's path (`g`, `g/trusted`, … — whole
/// segments, so `g/trusted-evil/x` is never inside `g/trusted`) is looked up among the listed
/// paths, and among the directory's group paths for a listed id.
fn group_contains(list: &Allowlist, dir: &Directory, source: &SourceProject) -> bool {
    match &source.ancestor_group_ids {
        Some(ancestors) => ancestors.iter().any(|g| {
            list.group_ids.contains(g)
                || dir
                    .groups
                    .paths_of(*g)
                    .any(|p| list.group_paths.contains(p) && dir.groups.ids.get(p) == Some(g))
        }),
        None => {
            if list.group_prefixes.is_empty() && list.group_ids.is_empty() {
                return false;
            }
            let path = fold(&source.path);
            let inside = ancestors(&path).any(|group| {
                list.group_prefixes.contains(group)
                    || dir
                        .groups
                        .ids
                        .get(group)
                        .is_some_and(|g| list.group_ids.contains(g))
            });
            inside
        }
    }
}

/// The proper ancestors of a path on segment boundaries: `a/b/c` → `a`, `a/b`.
fn ancestors(path: &str) -> impl Iterator<Item = &str> {
    path.match_indices('/')
        .map(move |(i, _)| &path[..i])
        .filter(|a| !a.is_empty())
}

/// `path` with ASCII upper case folded, borrowed when there is none (the usual case: paths
/// arrive lower-cased from config validation and the resolver).
fn fold(path: &str) -> Cow<'_, str> {
    if path.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(path.to_ascii_lowercase())
    } else {
        Cow::Borrowed(path)
    }
}

/// Path → id knowledge one request gathered (the job's own project, the resolved target,
/// forge look-ups with a service token), laid over the config's pairs in [`ScopeIndex`]:
/// where both know a path, this wins. Paths are full paths, stored lower-cased.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Directory {
    projects: Names,
    groups: Names,
}

impl Directory {
    pub fn insert_project(&mut self, path: &str, id: u64) {
        self.projects.insert(path, id);
    }

    pub fn insert_group(&mut self, path: &str, id: u64) {
        self.groups.insert(path, id);
    }

    /// This request's knowledge of a project path (not the config's).
    pub fn project_id(&self, path: &str) -> Option<u64> {
        self.projects.ids.get(fold(path).as_ref()).copied()
    }

    pub fn group_id(&self, path: &str) -> Option<u64> {
        self.groups.ids.get(fold(path).as_ref()).copied()
    }
}

/// Lower-cased path → id. A request's directory holds a handful of entries (its source and
/// target; with a service token, the path entries of the lists it is checked against), so
/// the reverse direction is a scan rather than a second map to fill on every request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Names {
    ids: HashMap<String, u64>,
}

impl Names {
    fn insert(&mut self, path: &str, id: u64) {
        self.ids.insert(path.to_ascii_lowercase(), id);
    }

    /// Every path this request paired with `id`.
    fn paths_of(&self, id: u64) -> impl Iterator<Item = &String> {
        self.ids
            .iter()
            .filter(move |(_, v)| **v == id)
            .map(|(path, _)| path)
    }
}

#[cfg(test)]
mod tests;
