//! The decide phase: for a request carrying exactly one live job token, its target resolved
//! to projects and the policy applied, per class (API and Git, registry scopes, runner and
//! job routes, configured routes).

use super::{refuse_with, Ctx, Gate, Verdict};
use crate::config::{DenyResponse, Dependencies, Mode, Ref};
use crate::error::Refusal;
use crate::jobs::JobIdentity;
use crate::policy::{self, Decision, SourceProject, TargetProject};
use crate::target::{self, Class, RegistryRequest, Shape, Target};

impl Gate {
    /// The decide phase for a request carrying exactly one live job token.
    pub(super) async fn decide(
        &self,
        job: &JobIdentity,
        target: &Target,
        shadow: Option<&Ref>,
        path_and_query: &mut String,
        ctx: &mut Ctx,
    ) -> Result<Verdict, Refusal> {
        let config = &*self.config;
        let shape = target.shape;
        let not_found = Refusal::NotFound(shape);
        Ok(match target.class {
            Class::JobOwn => Verdict::Allow("job_own"),
            Class::RegistryLogin => Verdict::Allow("registry_login"),
            Class::RunnerOwn => {
                if target.job_id == Some(job.job_id) {
                    Verdict::Allow("own_job")
                } else {
                    Verdict::Deny("other_job", not_found)
                }
            }
            Class::RunnerDependency => match (config.dependencies, target.job_id) {
                (Dependencies::Forge, _) => Verdict::Allow("dependency_checked_by_forge"),
                (Dependencies::Strict, Some(id)) if id == job.job_id => Verdict::Allow("own_job"),
                (Dependencies::Strict, Some(id)) => {
                    if self
                        .resolver
                        .job_in_project(job.project_id, id)
                        .await
                        .map_err(|f| self.unavailable(ctx, f))?
                    {
                        Verdict::Allow("dependency_same_project")
                    } else {
                        Verdict::Deny("dependency_other_project", not_found)
                    }
                }
                (Dependencies::Strict, None) => Verdict::Deny("dependency_unresolved", not_found),
            },
            Class::Route => {
                let index = self.resolver.index();
                let (Some(route), Some(sources)) = (
                    target.route.and_then(|i| config.routes.get(i)),
                    target.route.and_then(|i| index.route_sources(i)),
                ) else {
                    return Ok(Verdict::Deny("unknown_route", not_found));
                };
                let source = self.source(job, ctx).await?;
                let dir = self
                    .resolver
                    .directory(
                        &source,
                        None,
                        &route.sources.projects,
                        &route.sources.groups,
                    )
                    .await
                    .map_err(|f| self.unavailable(ctx, f))?;
                if policy::source_allowed(index, sources, &dir, &source) {
                    Verdict::Allow("route_source")
                } else {
                    Verdict::Deny("route_source", not_found)
                }
            }
            Class::Unknown => Verdict::Deny("unknown_route", not_found),
            Class::Api | Class::Git => {
                let Some(reference) = &target.project else {
                    return Ok(Verdict::Deny("unresolved_target", not_found));
                };
                let source = self.source(job, ctx).await?;
                // `/g/p.wiki.git` is the project `g/p.wiki` when one exists (GitLab's
                // RepoPath tries it first): scope against what the forge will serve.
                let shadowed = match shadow {
                    Some(r) => self.target(r, &source, ctx).await?,
                    None => None,
                };
                let resolved = match shadowed {
                    Some(t) => Some(t),
                    None => self.target(reference, &source, ctx).await?,
                };
                let Some(t) = resolved else {
                    return Ok(Verdict::Deny("unresolved_target", not_found));
                };
                let dir = self
                    .resolver
                    .directory(&source, Some(&t), &[], &[])
                    .await
                    .map_err(|f| self.unavailable(ctx, f))?;
                let decision =
                    policy::decide(self.resolver.index(), &dir, &source, &t, target.action);
                self.verdict(decision, shape, &source, &t)
            }
            Class::Registry => {
                let Some(registry) = &target.registry else {
                    return Ok(Verdict::Deny(
                        "registry_scope",
                        Refusal::NotFound(Shape::Registry),
                    ));
                };
                self.decide_registry(job, registry, path_and_query, ctx)
                    .await?
            }
        })
    }

    /// Filters each `repository:IMAGE:ACTIONS` scope's actions (SPEC §3), drops scopes with
    /// none left, and rebuilds the query from what was parsed.
    async fn decide_registry(
        &self,
        job: &JobIdentity,
        registry: &RegistryRequest,
        path_and_query: &mut String,
        ctx: &mut Ctx,
    ) -> Result<Verdict, Refusal> {
        let config = &*self.config;
        let source = self.source(job, ctx).await?;
        let mut kept = Vec::new();
        let mut filtered = false;
        let mut targets = Vec::new();
        for scope in &registry.scopes {
            let Some(t) = self.registry_project(&scope.image, &source, ctx).await? else {
                filtered = true;
                continue;
            };
            let dir = self
                .resolver
                .directory(&source, Some(&t), &[], &[])
                .await
                .map_err(|f| self.unavailable(ctx, f))?;
            let mut actions: Vec<&str> = Vec::with_capacity(scope.actions.len());
            for a in scope.actions.iter().map(String::as_str) {
                match policy::decide_registry_action(self.resolver.index(), &dir, &source, &t, a) {
                    Decision::Allow(_) => actions.push(a),
                    // A pull the inbound allowlist refused: what `allowlist suggest` can fix.
                    Decision::Deny(policy::Deny::InboundAllowlist) => {
                        if !ctx.inbound_refused.iter().any(|r| r.id == t.id) {
                            ctx.inbound_refused.push(super::Refused {
                                path: t.path.clone(),
                                id: t.id,
                                visibility: t.visibility,
                            });
                        }
                    }
                    Decision::Deny(_) => {}
                }
            }
            filtered |= actions.len() < scope.actions.len();
            if !actions.is_empty() {
                kept.push(format!(
                    "{}:{}:{}",
                    scope.kind,
                    scope.image,
                    actions.join(",")
                ));
            }
            targets.push(t.path);
        }
        if targets.len() != 1 {
            ctx.target_id = None;
            ctx.target_visibility = None;
        }
        ctx.target = Some(targets.join(","));
        if kept.is_empty() {
            return Ok(Verdict::Deny(
                "registry_scope",
                Refusal::NotFound(Shape::Registry),
            ));
        }
        if filtered && config.mode == Mode::Audit {
            // Audit mode forwards the request as sent and records what enforcement would drop.
            return Ok(Verdict::Deny(
                "registry_scope_filtered",
                Refusal::NotFound(Shape::Registry),
            ));
        }
        let raw_path = ctx.raw_target.split('?').next().unwrap_or("/");
        *path_and_query = rebuild_registry_query(raw_path, &registry.passthrough, &kept);
        Ok(Verdict::Allow(if filtered {
            "registry_scope_filtered"
        } else {
            "registry_scope"
        }))
    }

    /// The project owning a registry image: the longest prefix of its path (≥ 2 segments)
    /// that resolves to a project.
    async fn registry_project(
        &self,
        image: &str,
        source: &SourceProject,
        ctx: &mut Ctx,
    ) -> Result<Option<TargetProject>, Refusal> {
        let segments: Vec<&str> = image.split('/').collect();
        for n in (2..=segments.len()).rev() {
            let candidate = segments[..n].join("/");
            if target::project_ref(&candidate).is_none() {
                continue;
            }
            if let Some(t) = self.target(&Ref::Path(candidate), source, ctx).await? {
                return Ok(Some(t));
            }
        }
        Ok(None)
    }

    fn verdict(
        &self,
        decision: Decision,
        shape: Shape,
        source: &SourceProject,
        t: &TargetProject,
    ) -> Verdict {
        match decision {
            Decision::Allow(a) => Verdict::Allow(a.as_str()),
            Decision::Deny(policy::Deny::PushNotAllowed) => Verdict::Deny(
                policy::Deny::PushNotAllowed.as_str(),
                Refusal::PushForbidden(shape),
            ),
            Decision::Deny(d) => {
                let refusal = match (self.config.deny_response, shape) {
                    (DenyResponse::Forbidden, Shape::Api | Shape::Git) => Refusal::ForbiddenScope {
                        source: source.path.clone(),
                        target: t.path.clone(),
                    },
                    _ => Refusal::NotFound(shape),
                };
                Verdict::Deny(d.as_str(), refusal)
            }
        }
    }

    async fn source(&self, job: &JobIdentity, ctx: &mut Ctx) -> Result<SourceProject, Refusal> {
        self.resolver
            .source(job)
            .await
            .map_err(|f| self.unavailable(ctx, f))
    }

    async fn target(
        &self,
        reference: &Ref,
        source: &SourceProject,
        ctx: &mut Ctx,
    ) -> Result<Option<TargetProject>, Refusal> {
        let t = self
            .resolver
            .target(reference, source)
            .await
            .map_err(|f| self.unavailable(ctx, f))?;
        if let Some(t) = &t {
            ctx.target = Some(t.path.clone());
            ctx.target_id = Some(t.id);
            ctx.target_visibility = Some(t.visibility);
        }
        Ok(t)
    }

    fn unavailable(&self, ctx: &mut Ctx, failure: crate::forge::LookupFailure) -> Refusal {
        self.metrics
            .lookup_failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::warn!(reason = %failure, "forge look-up failed");
        refuse_with(ctx, "forge_unavailable", Refusal::Unavailable)
    }
}

/// `/jwt/auth?service=…&account=…&scope=…`: only what scopegate parsed, allowed scopes only.
fn rebuild_registry_query(
    path: &str,
    passthrough: &[(String, String)],
    scopes: &[String],
) -> String {
    use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
    const FORM: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    let mut out = String::from(path);
    let pairs = passthrough
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .chain(scopes.iter().map(|s| ("scope", s.as_str())));
    for (i, (k, v)) in pairs.enumerate() {
        out.push(if i == 0 { '?' } else { '&' });
        out.push_str(&utf8_percent_encode(k, FORM).to_string());
        out.push('=');
        out.push_str(&utf8_percent_encode(v, FORM).to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_query_is_rebuilt_from_parsed_values() {
        let q = rebuild_registry_query(
            "/jwt/auth",
            &[
                ("service".into(), "container_registry".into()),
                ("account".into(), "gitlab-ci-token".into()),
            ],
            &["repository:g/p:pull,push".into()],
        );
        assert_eq!(
            q,
            "/jwt/auth?service=container_registry&account=gitlab-ci-token&scope=repository%3Ag%2Fp%3Apull%2Cpush"
        );
    }
}
