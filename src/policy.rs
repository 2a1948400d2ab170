//! The decision (SPEC §4): a pure function of the source job's project, the target project's
//! facts, what the request does, and the config. No I/O; table-tested.
//!
//! It sits between target resolution and forwarding: by the time it runs, every reference has
//! been resolved to ids (or to the path knowledge in [`Directory`]), so nothing here can fail
//! and nothing here waits. The config arrives compiled ([`ScopeIndex`], built once per config
//! generation), so nothing here scans `projects:` or an allowlist either. Audit mode and
//! response shapes belong to the gateway; this module only says *what* would happen and *why*.

use crate::config::{AccessLevel, Features, Visibility};
use crate::target::{Action, Feature};

mod index;
pub use index::{Allowlist, Directory, ScopeIndex};

/// The project whose job holds the token (S).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceProject {
    pub id: u64,
    /// Full path, lower-cased (from the job's `web_url`).
    pub path: String,
    /// Ids of every group above S (parent, grand-parent, …) when a service token resolved
    /// them; `None` without one (group entries then match on path segments).
    pub ancestor_group_ids: Option<Vec<u64>>,
}

/// The project the request targets (T), resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetProject {
    pub id: u64,
    /// Full path, lower-cased.
    pub path: String,
    pub visibility: Visibility,
    /// Effective feature access levels (the forge's answer with a service token, else config).
    pub features: Features,
}

/// Why a request is let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Allow {
    /// S == T: GitLab's `Scope#self_referential?` short-circuits every scope check.
    SameProject,
    /// T is public or internal and the request reads a feature open to "everyone with access"
    /// (§4 step 2).
    FeatureRead,
    /// T's inbound allowlist is enabled and lists S, or a group above S.
    InboundAllowlist,
    /// T's inbound allowlist ("Limit access to this project") is switched off.
    InboundDisabled,
}

/// Why a request is refused. Every variant but `PushNotAllowed` is a scope denial (404, or
/// 403 with a reason under `deny_response: forbidden`; relaxed by audit mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Deny {
    /// T's inbound allowlist is enabled and lists neither S nor a group above S.
    InboundAllowlist,
    /// S's outbound scope is enabled, T is private and not on it.
    OutboundScope,
    /// In scope, but a job token may not push here: 403 "You are not allowed to push code to
    /// this project." (only S itself with `git_push: true` may).
    PushNotAllowed,
    /// Registry `push`, `delete` or `*` to a project that is not S.
    RegistryWrite,
    /// A registry action GitLab does not know (not `pull`, `push`, `delete` or `*`).
    RegistryUnknownAction,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    Allow(Allow),
    Deny(Deny),
}

impl Allow {
    /// Snake-case reason for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Allow::SameProject => "same_project",
            Allow::FeatureRead => "feature_read",
            Allow::InboundAllowlist => "inbound_allowlisted",
            Allow::InboundDisabled => "inbound_disabled",
        }
    }
}

impl Deny {
    /// Snake-case reason for logs and metric labels (distinct from every [`Allow`] reason, so
    /// a single `reason` label is unambiguous).
    pub fn as_str(self) -> &'static str {
        match self {
            Deny::InboundAllowlist => "not_in_inbound_allowlist",
            Deny::OutboundScope => "not_in_outbound_scope",
            Deny::PushNotAllowed => "push_not_allowed",
            Deny::RegistryWrite => "registry_write_not_own_project",
            Deny::RegistryUnknownAction => "registry_unknown_action",
        }
    }

    /// A scope denial answers like an unknown project (404, or the 17+ 403 with a reason) and
    /// audit mode relaxes it; `PushNotAllowed` is the forge's own 403 for an in-scope push.
    pub fn is_scope(self) -> bool {
        !matches!(self, Deny::PushNotAllowed)
    }
}

impl Decision {
    pub fn is_allow(self) -> bool {
        matches!(self, Decision::Allow(_))
    }

    /// Snake-case reason for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow(a) => a.as_str(),
            Decision::Deny(d) => d.as_str(),
        }
    }
}

/// May S's job token do `action` to T? (SPEC §4.)
///
/// `Action::Push` is scoped first, as a write: a push out of scope gets the scope denial (so
/// it is as invisible as any other), an in-scope push the 403.
pub fn decide(
    index: &ScopeIndex,
    dir: &Directory,
    source: &SourceProject,
    target: &TargetProject,
    action: Action,
) -> Decision {
    let scoped = scope(index, dir, source, target, action);
    if action != Action::Push {
        return scoped;
    }
    match scoped {
        Decision::Deny(deny) => Decision::Deny(deny),
        // GitLab refuses every job-token push (the seed page; issue 389060); `git_push` is
        // scopegate's opt-in for a job pushing to its own project only.
        Decision::Allow(_)
            if target.id == source.id && index.project(target.id).is_some_and(|p| p.git_push) =>
        {
            Decision::Allow(Allow::SameProject)
        }
        Decision::Allow(_) => Decision::Deny(Deny::PushNotAllowed),
    }
}

/// One action of a registry `repository:IMAGE:ACTIONS` scope, where IMAGE belongs to T.
///
/// As in GitLab's `ContainerRegistryAuthenticationService#can_access?`: `pull` is a read of
/// the registry feature; `push`, `delete` and `*` change images, which a job token may do only
/// in its own project; any other action is never granted.
pub fn decide_registry_action(
    index: &ScopeIndex,
    dir: &Directory,
    source: &SourceProject,
    target: &TargetProject,
    action: &str,
) -> Decision {
    match action {
        "pull" => decide(
            index,
            dir,
            source,
            target,
            Action::Read(Some(Feature::Registry)),
        ),
        "push" | "delete" | "*" if target.id == source.id => Decision::Allow(Allow::SameProject),
        "push" | "delete" | "*" => Decision::Deny(Deny::RegistryWrite),
        _ => Decision::Deny(Deny::RegistryUnknownAction),
    }
}

/// Does a `routes:` entry's `sources` admit S? S matches a listed project, or lies inside a
/// listed group (subgroups included), by the same rules as an inbound allowlist.
pub fn source_allowed(
    index: &ScopeIndex,
    sources: &Allowlist,
    dir: &Directory,
    source: &SourceProject,
) -> bool {
    index.lists_source(sources, dir, source)
}

/// Steps 1–5 of §4, for any action (a push is scoped as a write).
fn scope(
    index: &ScopeIndex,
    dir: &Directory,
    source: &SourceProject,
    target: &TargetProject,
    action: Action,
) -> Decision {
    // 1. `Ci::JobToken::Scope#accessible?` returns early when the project is itself.
    if source.id == target.id {
        return Decision::Allow(Allow::SameProject);
    }

    // 2. `ProjectPolicy#job_token_access_allowed_to?`: on a project any signed-in user can
    //    see, a feature open to "everyone with access" is readable by any job token; only a
    //    "project members" level falls back to the scope. A disabled feature is refused by the
    //    forge itself, so here it simply gets no shortcut.
    if let Action::Read(Some(feature)) = action {
        let open = matches!(target.visibility, Visibility::Public | Visibility::Internal);
        if open && access_level(&target.features, feature) == AccessLevel::Enabled {
            return Decision::Allow(Allow::FeatureRead);
        }
    }

    // 3. `Scope#inbound_accessible?`: T decides who gets in. A project the config does not
    //    mention has GitLab's default for new projects: enabled, listing only itself.
    let inbound_enabled = match index.project(target.id) {
        Some(p) => p.inbound.enabled,
        None => true,
    };
    if inbound_enabled {
        let listed = index
            .inbound(target.id)
            .is_some_and(|list| index.lists_source(list, dir, source));
        if !listed {
            return Decision::Deny(Deny::InboundAllowlist);
        }
    }

    // 4. `Scope#outbound_accessible?`: S limits where it goes, and only private projects
    //    count ("If project B is public or internal, you do not need to add B").
    if let (Some(source_config), Some(outbound)) =
        (index.project(source.id), index.outbound(source.id))
    {
        if source_config.outbound.enabled
            && target.visibility == Visibility::Private
            && !index.names_project(outbound, dir, target.id, &target.path)
        {
            return Decision::Deny(Deny::OutboundScope);
        }
    }

    // 5. Both directions let S through; the reason names the inbound verdict, the one an
    //    operator acts on.
    Decision::Allow(if inbound_enabled {
        Allow::InboundAllowlist
    } else {
        Allow::InboundDisabled
    })
}

/// The effective level of `feature`; unstated means "everyone with access", GitLab's default.
fn access_level(features: &Features, feature: Feature) -> AccessLevel {
    let level = match feature {
        Feature::Repository => features.repository,
        Feature::Artifacts => features.artifacts,
        Feature::Packages => features.packages,
        Feature::Registry => features.registry,
        Feature::Releases => features.releases,
        Feature::Environments => features.environments,
    };
    level.unwrap_or(AccessLevel::Enabled)
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
