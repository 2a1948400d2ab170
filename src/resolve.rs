//! Project and group references → facts (SPEC §3 "Resolving references to ids").
//!
//! Ids are authoritative. With a service token every path (targets, allowlist entries,
//! groups) is resolved through the forge and group membership is decided on ids. Without
//! one, scopegate knows the config's id/path pairs, the job's own project, and what an
//! anonymous look-up finds (public projects only). Answers (found / not found) are cached for
//! `cache.project_ttl`; forge failures are not cached and become 503.

use crate::admin::Metrics;
use crate::config::{AccessLevel, Config, Features, Ref, Visibility};
use crate::forge::{self, HttpClient, LookupFailure};
use crate::jobs::JobIdentity;
use crate::policy::{Directory, ScopeIndex, SourceProject, TargetProject};
use dashmap::DashMap;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::time::Instant;

/// GitLab nests groups at most 20 deep; the ancestor walk stops there whatever the forge says.
const MAX_GROUP_DEPTH: usize = 20;

/// What the forge says about one project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForgeProject {
    pub id: u64,
    pub path: String,
    pub visibility: Visibility,
    pub features: Features,
    pub namespace_id: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForgeGroup {
    pub id: u64,
    pub path: String,
    pub parent_id: Option<u64>,
}

#[derive(Clone)]
enum Cached<T> {
    Found(T),
    Missing,
}

pub struct Resolver {
    client: HttpClient,
    config: Arc<Config>,
    /// The config's projects by id and path and its allowlists as sets, built once here (the
    /// resolver lives as long as its config generation) so no request scans `projects:`.
    index: ScopeIndex,
    service_token: Option<http::HeaderValue>,
    projects: DashMap<String, (Instant, Cached<ForgeProject>)>,
    groups: DashMap<String, (Instant, Cached<ForgeGroup>)>,
    /// Cache hits and misses (`scopegate_project_cache_*`); see [`Resolver::with_metrics`].
    metrics: Arc<Metrics>,
}

impl Resolver {
    pub fn new(client: HttpClient, config: Arc<Config>) -> Self {
        let service_token = config.service_token().and_then(|t| {
            let mut v = http::HeaderValue::from_str(&t).ok()?;
            v.set_sensitive(true);
            Some(v)
        });
        Resolver {
            client,
            index: ScopeIndex::new(config.clone()),
            config,
            service_token,
            projects: DashMap::new(),
            groups: DashMap::new(),
            metrics: Arc::new(Metrics::new()),
        }
    }

    /// Counts cache hits and misses into the gateway's metrics (without it they go to a
    /// private set nobody reads, as in `scopegate check --forge`).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// The compiled config the policy decides on.
    pub fn index(&self) -> &ScopeIndex {
        &self.index
    }

    pub fn has_service_token(&self) -> bool {
        self.service_token.is_some()
    }

    /// The job's project as the policy's source, with its ancestor group ids when a service
    /// token can tell them.
    pub async fn source(&self, job: &JobIdentity) -> Result<SourceProject, LookupFailure> {
        let ancestor_group_ids = if self.has_service_token() {
            let mut ids = Vec::new();
            let project = self.forge_project(&Ref::Id(job.project_id)).await?;
            let mut next = project.and_then(|p| p.namespace_id);
            while let Some(id) = next {
                if ids.len() >= MAX_GROUP_DEPTH || ids.contains(&id) {
                    break;
                }
                ids.push(id);
                // A user namespace is not a group: the look-up misses and the walk ends.
                next = self
                    .forge_group(&Ref::Id(id))
                    .await?
                    .and_then(|g| g.parent_id);
            }
            Some(ids)
        } else {
            None
        };
        Ok(SourceProject {
            id: job.project_id,
            path: job.project_path.to_string(),
            ancestor_group_ids,
        })
    }

    /// The target project, or `None` when it cannot be resolved (→ 404 with a job token).
    pub async fn target(
        &self,
        reference: &Ref,
        source: &SourceProject,
    ) -> Result<Option<TargetProject>, LookupFailure> {
        if self.has_service_token() {
            let Some(found) = self.forge_project(reference).await? else {
                return Ok(None);
            };
            let configured = self.index.project(found.id);
            let visibility = match configured {
                Some(c) => found.visibility.min(c.visibility),
                None => found.visibility,
            };
            return Ok(Some(TargetProject {
                id: found.id,
                path: found.path,
                visibility,
                features: found.features,
            }));
        }
        // Without a service token: config pairs and the job's own project first, then an
        // anonymous look-up, which finds public projects only.
        let configured = match reference {
            Ref::Id(id) => self.index.project(*id),
            Ref::Path(p) => self.index.project_at(p),
        };
        if let Some(c) = configured {
            let path = c
                .path
                .clone()
                .or_else(|| (c.id == source.id).then(|| source.path.clone()));
            let Some(path) = path else {
                return Ok(None);
            };
            let mut visibility = c.visibility;
            if visibility != Visibility::Private {
                // The forge's answer wins when it is stricter: a project the config calls
                // public that an anonymous look-up cannot see is not public. An internal
                // project is never visible anonymously (GitLab shows it to signed-in users
                // only), so not finding it agrees with the config rather than refuting it.
                visibility = match self.forge_project(&Ref::Id(c.id)).await? {
                    Some(f) => visibility.min(f.visibility),
                    None if visibility == Visibility::Internal => Visibility::Internal,
                    None => Visibility::Private,
                };
            }
            return Ok(Some(TargetProject {
                id: c.id,
                path,
                visibility,
                features: c.features.clone(),
            }));
        }
        let is_source = match reference {
            Ref::Id(id) => *id == source.id,
            Ref::Path(p) => *p == source.path,
        };
        if is_source {
            return Ok(Some(TargetProject {
                id: source.id,
                path: source.path.clone(),
                visibility: Visibility::Private,
                features: Features::default(),
            }));
        }
        Ok(self.forge_project(reference).await?.map(|f| TargetProject {
            id: f.id,
            path: f.path,
            visibility: f.visibility,
            features: f.features,
        }))
    }

    /// Path → id knowledge for the allowlist entries the policy will compare, beyond the
    /// config's own pairs (which the [`ScopeIndex`] holds): S's and T's paths, and with a
    /// service token every path entry of T's inbound list, S's outbound list and `extra` (a
    /// route's sources) resolved through the forge.
    pub async fn directory(
        &self,
        source: &SourceProject,
        target: Option<&TargetProject>,
        extra_projects: &[Ref],
        extra_groups: &[Ref],
    ) -> Result<Directory, LookupFailure> {
        let mut dir = Directory::default();
        dir.insert_project(&source.path, source.id);
        if let Some(t) = target {
            dir.insert_project(&t.path, t.id);
        }
        if !self.has_service_token() {
            return Ok(dir);
        }
        let mut project_refs: Vec<&Ref> = extra_projects.iter().collect();
        let mut group_refs: Vec<&Ref> = extra_groups.iter().collect();
        if let Some(t) = target.and_then(|t| self.index.project(t.id)) {
            project_refs.extend(&t.inbound.projects);
            group_refs.extend(&t.inbound.groups);
        }
        if let Some(s) = self.index.project(source.id) {
            project_refs.extend(&s.outbound.projects);
        }
        for r in project_refs {
            if let Ref::Path(p) = r {
                if let Some(found) = self.forge_project(r).await? {
                    dir.insert_project(p, found.id);
                }
            }
        }
        for r in group_refs {
            if let Ref::Path(p) = r {
                if let Some(found) = self.forge_group(r).await? {
                    dir.insert_group(p, found.id);
                }
            }
        }
        Ok(dir)
    }

    /// `GET /api/v4/projects/:ref`, with the service token when there is one.
    pub async fn forge_project(&self, r: &Ref) -> Result<Option<ForgeProject>, LookupFailure> {
        let key = ref_key(r);
        if let Some(hit) = fresh(&self.projects, &key) {
            self.metrics
                .project_cache_hits
                .fetch_add(1, Ordering::Relaxed);
            return Ok(hit);
        }
        self.metrics
            .project_cache_misses
            .fetch_add(1, Ordering::Relaxed);
        let answer = self
            .get(&format!("/api/v4/projects/{}", encode_ref(r)))
            .await?;
        let value = match answer {
            Some(json) => Cached::Found(parse_project(&json).ok_or(LookupFailure::Malformed)?),
            None => Cached::Missing,
        };
        self.store(&self.projects, key, value.clone());
        Ok(match value {
            Cached::Found(p) => Some(p),
            Cached::Missing => None,
        })
    }

    /// `GET /api/v4/groups/:ref`.
    pub async fn forge_group(&self, r: &Ref) -> Result<Option<ForgeGroup>, LookupFailure> {
        let key = ref_key(r);
        if let Some(hit) = fresh(&self.groups, &key) {
            self.metrics
                .project_cache_hits
                .fetch_add(1, Ordering::Relaxed);
            return Ok(hit);
        }
        self.metrics
            .project_cache_misses
            .fetch_add(1, Ordering::Relaxed);
        let answer = self
            .get(&format!("/api/v4/groups/{}", encode_ref(r)))
            .await?;
        let value = match answer {
            Some(json) => Cached::Found(parse_group(&json).ok_or(LookupFailure::Malformed)?),
            None => Cached::Missing,
        };
        self.store(&self.groups, key, value.clone());
        Ok(match value {
            Cached::Found(g) => Some(g),
            Cached::Missing => None,
        })
    }

    fn store<T>(&self, map: &DashMap<String, (Instant, Cached<T>)>, key: String, value: Cached<T>) {
        map.insert(key, (Instant::now() + self.config.cache.project_ttl, value));
    }

    /// 200 → the JSON; 404 → `None`; anything else is a failure (never cached).
    async fn get(&self, api_path: &str) -> Result<Option<serde_json::Value>, LookupFailure> {
        let uri = forge::api_uri(&self.config, api_path).map_err(|_| LookupFailure::Malformed)?;
        let mut headers = http::HeaderMap::new();
        if let Some(t) = &self.service_token {
            headers.insert("private-token", t.clone());
        }
        let answer = forge::get(
            &self.client,
            uri,
            headers,
            self.config.limits.upstream_response_timeout,
        )
        .await?;
        match answer.status.as_u16() {
            200 => serde_json::from_slice(&answer.body)
                .map(Some)
                .map_err(|_| LookupFailure::Malformed),
            // Anonymous look-ups of private projects answer 401 on some forges, 404 on GitLab.
            404 => Ok(None),
            401 if self.service_token.is_none() => Ok(None),
            other => Err(LookupFailure::Status(other)),
        }
    }

    /// Drops expired entries.
    pub fn purge_expired(&self) {
        let now = Instant::now();
        self.projects.retain(|_, (exp, _)| *exp > now);
        self.groups.retain(|_, (exp, _)| *exp > now);
    }
}

fn fresh<T: Clone>(map: &DashMap<String, (Instant, Cached<T>)>, key: &str) -> Option<Option<T>> {
    let entry = map.get(key)?;
    let (expires, value) = &*entry;
    if *expires <= Instant::now() {
        return None;
    }
    Some(match value {
        Cached::Found(v) => Some(v.clone()),
        Cached::Missing => None,
    })
}

fn ref_key(r: &Ref) -> String {
    match r {
        Ref::Id(id) => format!("#{id}"),
        Ref::Path(p) => p.clone(),
    }
}

fn encode_ref(r: &Ref) -> String {
    match r {
        Ref::Id(id) => id.to_string(),
        Ref::Path(p) => utf8_percent_encode(p, NON_ALPHANUMERIC).to_string(),
    }
}

fn visibility(v: &serde_json::Value) -> Option<Visibility> {
    match v.as_str()? {
        "private" => Some(Visibility::Private),
        "internal" => Some(Visibility::Internal),
        "public" => Some(Visibility::Public),
        _ => None,
    }
}

fn access_level(v: Option<&serde_json::Value>) -> Option<AccessLevel> {
    match v?.as_str()? {
        "enabled" | "public" => Some(AccessLevel::Enabled),
        "private" => Some(AccessLevel::Private),
        "disabled" => Some(AccessLevel::Disabled),
        // An unknown level is read as the strictest open one.
        _ => Some(AccessLevel::Private),
    }
}

/// GitLab's project JSON. A project without a visibility the forge states is private.
pub fn parse_project(v: &serde_json::Value) -> Option<ForgeProject> {
    let id = v.get("id")?.as_u64()?;
    let path = v.get("path_with_namespace")?.as_str()?.to_ascii_lowercase();
    let visibility = v
        .get("visibility")
        .and_then(visibility)
        .unwrap_or(Visibility::Private);
    let features = Features {
        repository: access_level(v.get("repository_access_level")),
        artifacts: access_level(v.get("builds_access_level")),
        packages: access_level(v.get("package_registry_access_level")),
        registry: access_level(v.get("container_registry_access_level")),
        releases: access_level(v.get("releases_access_level")),
        environments: access_level(v.get("environments_access_level")),
    };
    let namespace_id = v
        .get("namespace")
        .filter(|n| n.get("kind").and_then(|k| k.as_str()) != Some("user"))
        .and_then(|n| n.get("id"))
        .and_then(|i| i.as_u64());
    Some(ForgeProject {
        id,
        path,
        visibility,
        features,
        namespace_id,
    })
}

pub fn parse_group(v: &serde_json::Value) -> Option<ForgeGroup> {
    Some(ForgeGroup {
        id: v.get("id")?.as_u64()?,
        path: v.get("full_path")?.as_str()?.to_ascii_lowercase(),
        parent_id: v.get("parent_id").and_then(|p| p.as_u64()),
    })
}

impl Resolver {
    /// `runner.dependencies: strict`: whether job `job_id` belongs to `project_id`, asked
    /// with the service token (`GET /api/v4/projects/:id/jobs/:job_id`). Without a service
    /// token the question cannot be answered and the answer is "no".
    pub async fn job_in_project(
        &self,
        project_id: u64,
        job_id: u64,
    ) -> Result<bool, LookupFailure> {
        if !self.has_service_token() {
            return Ok(false);
        }
        let answer = self
            .get(&format!("/api/v4/projects/{project_id}/jobs/{job_id}"))
            .await?;
        Ok(answer
            .and_then(|v| v.get("pipeline")?.get("project_id")?.as_u64())
            .is_some_and(|p| p == project_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_json() {
        let v = serde_json::json!({
            "id": 5, "path_with_namespace": "G/P", "visibility": "internal",
            "repository_access_level": "private", "builds_access_level": "enabled",
            "namespace": {"id": 9, "kind": "group"}
        });
        let p = parse_project(&v).expect("parses");
        assert_eq!(p.id, 5);
        assert_eq!(p.path, "g/p");
        assert_eq!(p.visibility, Visibility::Internal);
        assert_eq!(p.features.repository, Some(AccessLevel::Private));
        assert_eq!(p.features.artifacts, Some(AccessLevel::Enabled));
        assert_eq!(p.features.packages, None);
        assert_eq!(p.namespace_id, Some(9));
    }

    #[test]
    fn user_namespace_has_no_group() {
        let v = serde_json::json!({"id": 5, "path_with_namespace": "u/p", "namespace": {"id": 9, "kind": "user"}});
        assert_eq!(parse_project(&v).and_then(|p| p.namespace_id), None);
    }

    #[test]
    fn missing_visibility_is_private() {
        let v = serde_json::json!({"id": 5, "path_with_namespace": "g/p"});
        assert_eq!(
            parse_project(&v).map(|p| p.visibility),
            Some(Visibility::Private)
        );
    }

    #[test]
    fn refs_are_encoded_for_the_api() {
        assert_eq!(encode_ref(&Ref::Path("g/sub/p".into())), "g%2Fsub%2Fp");
        assert_eq!(encode_ref(&Ref::Id(7)), "7");
    }
}
