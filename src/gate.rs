//! The authorization step. A request passes through its phases once, in order —
//! extract → resolve → target → decide → forward → log — each a small function named after
//! its phase, with the per-request state in one [`Ctx`]. A denied request never reaches the
//! forwarder: nothing of it is sent to the forge. The decision, its metric and its one access
//! log line live here.

use crate::admin::Metrics;
use crate::canonical::{self, CanonicalPath};
use crate::config::{Config, DenyResponse, Dependencies, Mode, Ref};
use crate::credentials::{self, BodyKind, Credential, Origin, Param};
use crate::error::Refusal;
use crate::forge::{self, HttpClient, UpBody};
use crate::forward::{self, Outbound};
use crate::inspect::{self, ScanError};
use crate::jobs::{JobIdentity, JobResolver, Lookup};
use crate::logging;
use crate::policy::{self, Decision, SourceProject, TargetProject};
use crate::resolve::Resolver;
use crate::secret::Secret;
use crate::target::{self, Class, ClassParams, RegistryRequest, Reject, Shape, Target};
use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use tokio::time::Instant;

/// More distinct candidate values than this in one request is no client's doing: refused
/// (400) rather than fanned out into forge look-ups.
pub const MAX_CANDIDATES: usize = 32;

/// Everything one configuration generation needs to decide requests.
pub struct Gate {
    pub config: Arc<Config>,
    client: HttpClient,
    jobs: JobResolver,
    resolver: Resolver,
    metrics: Arc<Metrics>,
    auth_log: Option<Mutex<std::fs::File>>,
}

/// Per-request state, filled in as the phases run; it is what the access log line says.
struct Ctx {
    method: http::Method,
    raw_target: String,
    class: Class,
    source: Option<JobIdentity>,
    target: Option<String>,
    decision: &'static str,
    reason: &'static str,
    candidates: Vec<Secret>,
}

/// The request head as the decision phases read it (the parts themselves go to the forwarder).
struct Head {
    method: http::Method,
    headers: http::HeaderMap,
    raw_path: String,
    query: Option<String>,
    path: CanonicalPath,
    query_params: Vec<Param>,
    kind: BodyKind,
    peer: SocketAddr,
}

impl Ctx {
    fn for_request(method: http::Method, raw_target: String) -> Ctx {
        Ctx {
            method,
            raw_target,
            class: Class::Unknown,
            source: None,
            target: None,
            decision: "forward",
            reason: "no_job_token",
            candidates: Vec::new(),
        }
    }
}

/// What the credential phase concluded.
enum Holder {
    /// No job token: the forge authenticates whatever else is there.
    NoJobToken,
    /// Exactly one live job token, and nothing else beside it.
    Job(JobIdentity),
    /// Several distinct job tokens, or a job token beside another credential: 404.
    Ambiguous(&'static str),
}

/// The decide phase's verdict for a request with a job token.
enum Verdict {
    Allow(&'static str),
    /// A scope denial (relaxed in audit mode): the refusal to send, and its reason.
    Deny(&'static str, Refusal),
}

impl Gate {
    pub fn new(
        config: Arc<Config>,
        client: HttpClient,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Gate> {
        let auth_log = match &config.auth_log {
            Some(path) => Some(Mutex::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            )),
            None => None,
        };
        Ok(Gate {
            jobs: JobResolver::new(client.clone(), config.clone(), metrics.clone()),
            resolver: Resolver::new(client.clone(), config.clone()),
            config,
            client,
            metrics,
            auth_log,
        })
    }

    pub fn purge_caches(&self) {
        self.jobs.purge_expired();
        self.resolver.purge_expired();
    }

    /// Decides one request and forwards it or answers it.
    pub async fn handle(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        tls: bool,
    ) -> Response<UpBody> {
        let started = Instant::now();
        let mut ctx = Ctx::for_request(
            req.method().clone(),
            req.uri()
                .path_and_query()
                .map(|p| p.as_str().to_owned())
                .unwrap_or_else(|| "/".to_owned()),
        );
        let resp = match self.process(req, peer, tls, &mut ctx).await {
            Ok(resp) => resp,
            Err(refusal) => {
                if ctx.decision == "forward"
                    || ctx.decision == "allow"
                    || ctx.decision == "would_deny"
                {
                    // Refused after the decision: the forge could not be reached.
                    ctx.decision = "error";
                }
                refusal.into_response()
            }
        };
        self.log(&ctx, resp.status(), started);
        resp
    }

    async fn process(
        &self,
        mut req: Request<Incoming>,
        peer: SocketAddr,
        tls: bool,
        ctx: &mut Ctx,
    ) -> Result<Response<UpBody>, Refusal> {
        let config = &*self.config;
        let upgrade = forward::is_websocket_upgrade(req.headers(), req.version())
            .then(|| hyper::upgrade::on(&mut req));
        let (parts, body) = req.into_parts();
        let raw_path = parts.uri.path().to_owned();
        let query = parts.uri.query().map(str::to_owned);
        let root = config.upstream.relative_url_root.as_str();

        // Phase: extract.
        let head_path =
            canonical::canonicalize(&raw_path, root, false).map_err(|r| refuse(ctx, r))?;
        // SPEC §3 covers the whole request-target: the query too must be visible ASCII, and
        // an absolute-form target must not carry userinfo.
        let bad_query = query
            .as_deref()
            .is_some_and(|q| q.bytes().any(|b| !(0x21..=0x7e).contains(&b)));
        let userinfo = parts
            .uri
            .authority()
            .is_some_and(|a| a.as_str().contains('@'));
        if bad_query || userinfo {
            return Err(refuse(ctx, Reject::BadRequest("request-target")));
        }
        let mut creds = credentials::from_headers(&parts.headers);
        let query_params = query
            .as_deref()
            .map(credentials::parse_query)
            .unwrap_or_default();
        creds.extend(credentials::credentials_from_params(
            &query_params,
            Origin::Query,
        ));
        let kind = credentials::body_kind(&parts.method, &parts.headers)
            .map_err(|_| refuse_with(ctx, "content_type", Refusal::BadRequest("content-type")))?;
        let head = Head {
            method: parts.method.clone(),
            headers: parts.headers.clone(),
            raw_path,
            query,
            path: head_path,
            query_params,
            kind,
            peer,
        };
        if let BodyKind::Multipart { boundary } = &head.kind {
            if self.streams(&parts.headers) {
                let boundary = boundary.clone();
                return self
                    .stream_upload(head, creds, &boundary, parts, body, tls, ctx)
                    .await;
            }
        }
        let limit = if is_package_publish(&parts.method, &head.path) {
            config
                .limits
                .inspect_publish
                .max(config.limits.inspect_body)
        } else {
            config.limits.inspect_body
        };
        let untyped = head.kind == BodyKind::Opaque
            && credentials::untyped_api_write(&parts.method, &parts.headers, &head.path.lower);
        let body = forward::client_body(body);
        let read = read_body(
            head.kind.clone(),
            untyped,
            content_length(&parts.headers),
            body,
            limit,
            config.limits.idle_timeout,
        )
        .await;
        let (body, body_params) = read.map_err(|(reason, r)| refuse_with(ctx, reason, r))?;
        creds.extend(credentials::credentials_from_params(
            &body_params,
            Origin::Body,
        ));
        let path_and_query = self.authorize(&head, &creds, &body_params, ctx).await?;

        // Phase: forward.
        forward::forward(
            config,
            &self.client,
            Outbound {
                parts,
                body,
                path_and_query,
                peer,
                tls,
                upgrade,
            },
        )
        .await
    }

    /// Extract (what the credentials are) → resolve → target → decide, for one set of
    /// credentials. Returns the `path?query` to forward, or the refusal to send. Run once per
    /// request, and again when a streamed multipart body turns up credentials of its own.
    async fn authorize(
        &self,
        head: &Head,
        creds: &[Credential],
        body_params: &[Param],
        ctx: &mut Ctx,
    ) -> Result<String, Refusal> {
        let config = &*self.config;
        let root = config.upstream.relative_url_root.as_str();
        ctx.candidates = distinct_candidates(creds);

        let service = one_value(&head.query_params, body_params, "service", ctx)?;
        let lfs_operation = match head.kind {
            // Rails merges query and body parameters with the query winning: an `operation`
            // in both that disagrees is ambiguous, like `service`.
            BodyKind::Json => one_value(&head.query_params, body_params, "operation", ctx)?,
            _ => None,
        };
        let class_params = ClassParams {
            service,
            lfs_operation,
            scopes: head
                .query_params
                .iter()
                .filter(|p| p.name == "scope")
                .map(|p| p.value.as_str())
                .collect(),
            registry_params: head
                .query_params
                .iter()
                .map(|p| (p.name.as_str(), p.value.as_str()))
                .collect(),
        };
        let shallow = target::classify(
            &head.method,
            &head.path,
            head.query.as_deref(),
            &class_params,
            &config.routes,
            false,
        );
        if let Ok(t) = &shallow {
            ctx.class = t.class;
        }
        let shape = shallow.as_ref().map(|t| t.shape).unwrap_or(Shape::Api);
        let runner_job = shallow.as_ref().ok().and_then(|t| t.job_id);

        // Phase: resolve.
        let client_ip = forward::client_ip(config, &head.headers, head.peer.ip());
        let holder = self
            .resolve_credentials(creds, client_ip, shape, runner_job, ctx)
            .await?;

        let mut path_and_query = ctx.raw_target.clone();
        let verdict = match holder {
            Holder::NoJobToken => None,
            Holder::Ambiguous(reason) => Some(Verdict::Deny(reason, Refusal::NotFound(shape))),
            Holder::Job(job) => {
                ctx.source = Some(job.clone());
                // Phase: target.
                let target = canonical::canonicalize(&head.raw_path, root, true).and_then(|path| {
                    target::classify(
                        &head.method,
                        &path,
                        head.query.as_deref(),
                        &class_params,
                        &config.routes,
                        true,
                    )
                    .map(|t| (t, target::repository_shadow(&path)))
                });
                // Phase: decide.
                Some(match target {
                    Err(Reject::BadRequest(why)) => {
                        return Err(refuse_with(ctx, "bad_path", Refusal::BadRequest(why)))
                    }
                    Err(Reject::NotFound(_)) => {
                        Verdict::Deny("bad_target", Refusal::NotFound(shape))
                    }
                    Ok((target, shadow)) => {
                        ctx.class = target.class;
                        self.decide(&job, &target, shadow.as_ref(), &mut path_and_query, ctx)
                            .await?
                    }
                })
            }
        };
        if let Some(verdict) = verdict {
            match verdict {
                Verdict::Allow(reason) => {
                    ctx.decision = "allow";
                    ctx.reason = reason;
                }
                Verdict::Deny(reason, refusal) => {
                    ctx.reason = reason;
                    if config.mode == Mode::Audit {
                        ctx.decision = "would_deny";
                        path_and_query = ctx.raw_target.clone();
                    } else {
                        ctx.decision = "deny";
                        return Err(refusal);
                    }
                }
            }
        }

        Ok(path_and_query)
    }

    /// Whether a multipart body streams (too large, or of unknown length, to read whole).
    fn streams(&self, headers: &http::HeaderMap) -> bool {
        let declared = headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        declared.map_or(true, |n| n > self.config.limits.inspect_body as u64)
    }

    /// A multipart upload too large to read whole: decided on its head first, then streamed to
    /// the forge while its fields are scanned; the end of the request is held back until the
    /// fields' credentials (if any) have been decided on too. A late denial aborts the upstream
    /// request, so the forge never holds a complete request, and the client gets the refusal.
    #[allow(clippy::too_many_arguments)]
    async fn stream_upload(
        &self,
        head: Head,
        creds: Vec<Credential>,
        boundary: &str,
        parts: http::request::Parts,
        body: Incoming,
        tls: bool,
        ctx: &mut Ctx,
    ) -> Result<Response<UpBody>, Refusal> {
        let limits = &self.config.limits;
        let path_and_query = self.authorize(&head, &creds, &[], ctx).await?;
        let streamed =
            inspect::stream_multipart(body, boundary, limits.inspect_body, limits.idle_timeout);
        let forwarding = forward::forward(
            &self.config,
            &self.client,
            Outbound {
                parts,
                body: streamed.body,
                path_and_query,
                peer: head.peer,
                tls,
                upgrade: None,
            },
        );
        tokio::pin!(forwarding);
        let release = streamed.release;
        let outcome = tokio::select! {
            // The forge answered before the whole body was sent: it has not received the end
            // of the request (held back), so it acted on nothing; its answer goes back as is.
            // Dropping `release` withholds the end for good.
            answered = &mut forwarding => return answered,
            outcome = streamed.outcome => outcome,
        };
        let params = match outcome {
            Ok(Ok(params)) => params,
            Ok(Err(ScanError::TooLarge)) => {
                return Err(refuse_with(ctx, "body_too_large", Refusal::PayloadTooLarge))
            }
            Ok(Err(ScanError::Aborted)) | Err(_) => {
                return Err(refuse_with(ctx, "body", Refusal::BadRequest("body")))
            }
            Ok(Err(ScanError::Malformed(_))) => {
                return Err(refuse_with(
                    ctx,
                    "malformed_body",
                    Refusal::BadRequest("body"),
                ))
            }
        };
        let late = credentials::credentials_from_params(&params, Origin::Body);
        let conflicting = credentials::single_value(&params, "service").is_err();
        if !late.is_empty() || conflicting {
            let mut all = creds;
            all.extend(late);
            // The decision on the whole request replaces the one on its head.
            *ctx = Ctx::for_request(ctx.method.clone(), ctx.raw_target.clone());
            if let Err(refusal) = self.authorize(&head, &all, &params, ctx).await {
                let _ = release.send(false);
                return Err(refusal);
            }
        }
        let _ = release.send(true);
        forwarding.await
    }

    /// Looks up every distinct candidate (concurrently, cached) and applies SPEC §1's rules.
    async fn resolve_credentials(
        &self,
        creds: &[Credential],
        client_ip: IpAddr,
        shape: Shape,
        runner_job: Option<u64>,
        ctx: &mut Ctx,
    ) -> Result<Holder, Refusal> {
        if creds.is_empty() {
            return Ok(Holder::NoJobToken);
        }
        if ctx.candidates.len() > MAX_CANDIDATES {
            return Err(refuse_with(
                ctx,
                "too_many_credentials",
                Refusal::BadRequest("credentials"),
            ));
        }
        let prefix = self.config.instance_prefix.as_str();
        // A named async fn rather than an async closure: the closure's borrow of `self`
        // makes the connection future's `Send` bound unprovable (rust-lang/rust#102211).
        let lookups: Vec<_> = ctx
            .candidates
            .iter()
            .map(|c| lookup_one(&self.jobs, c.clone(), prefix, client_ip))
            .collect();
        let mut answers: BTreeMap<Secret, Lookup> = BTreeMap::new();
        for answer in futures_util::future::join_all(lookups).await {
            match answer {
                Ok((c, l)) => {
                    answers.insert(c, l);
                }
                Err(failure) => {
                    self.metrics
                        .lookup_failures
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(reason = %failure, "job-token look-up failed");
                    return Err(refuse_with(ctx, "forge_unavailable", Refusal::Unavailable));
                }
            }
        }
        let mut live: BTreeMap<&Secret, &JobIdentity> = BTreeMap::new();
        for (c, l) in &answers {
            if let Lookup::Live(job) = l {
                live.insert(c, job);
            }
        }
        match live.len() {
            0 => {}
            1 => {
                let (token, job) = live
                    .into_iter()
                    .next()
                    .map(|(t, j)| (t.clone(), j.clone()))
                    .ok_or(Refusal::Unavailable)?;
                if creds.iter().any(|c| !c.candidates.contains(&token)) {
                    ctx.source = Some(job);
                    return Ok(Holder::Ambiguous("job_token_with_other_credential"));
                }
                return Ok(Holder::Job(job));
            }
            _ => return Ok(Holder::Ambiguous("several_job_tokens")),
        }
        // No live job token. A finished job's token, or a dedicated slot holding something
        // that is no job token, is refused — except on the runner's own routes, which the forge
        // binds to the job itself and which the runner still calls as the job ends.
        let finished_jobs: Vec<Option<u64>> = creds
            .iter()
            .flat_map(|c| c.candidates.iter())
            .filter_map(|v| match answers.get(v) {
                Some(Lookup::Finished(job)) => Some(*job),
                _ => None,
            })
            .collect();
        if ctx.class == Class::RunnerOwn {
            // Still, a finished job's token is its own job's only: another job's id is
            // refused as for a live token.
            if finished_jobs
                .iter()
                .any(|j| j.is_some() && *j != runner_job)
            {
                return Ok(Holder::Ambiguous("other_job"));
            }
            return Ok(Holder::NoJobToken);
        }
        let finished = !finished_jobs.is_empty();
        if finished {
            return Err(refuse_with(
                ctx,
                "job_not_running",
                Refusal::Unauthorized(shape),
            ));
        }
        if creds.iter().any(|c| c.dedicated) {
            return Err(refuse_with(
                ctx,
                "not_a_job_token",
                Refusal::Unauthorized(shape),
            ));
        }
        Ok(Holder::NoJobToken)
    }
}

impl Gate {
    /// The decide phase for a request carrying exactly one live job token.
    async fn decide(
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
                let Some(route) = target.route.and_then(|i| config.routes.get(i)) else {
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
                if policy::source_allowed(&route.sources, &dir, &source) {
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
                let decision = policy::decide(config, &dir, &source, &t, target.action);
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
            let actions: Vec<&str> = scope
                .actions
                .iter()
                .map(String::as_str)
                .filter(|a| {
                    matches!(
                        policy::decide_registry_action(config, &dir, &source, &t, a),
                        Decision::Allow(_)
                    )
                })
                .collect();
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

    /// The phase that always runs: one access-log line, one metric, one auth-log line.
    fn log(&self, ctx: &Ctx, status: http::StatusCode, started: Instant) {
        let candidates: Vec<&Secret> = ctx.candidates.iter().collect();
        let path = logging::mask_target(&ctx.raw_target, &candidates);
        let source = ctx
            .source
            .as_ref()
            .map(|j| j.project_path.as_str())
            .unwrap_or("-");
        let job = ctx.source.as_ref().map(|j| j.job_id).unwrap_or(0);
        let target = ctx.target.as_deref().unwrap_or("-");
        let duration_ms = started.elapsed().as_secs_f64() * 1000.0;
        tracing::info!(
            target: "scopegate::access",
            method = %ctx.method,
            path = %path,
            class = ctx.class.as_str(),
            source,
            job,
            target,
            decision = ctx.decision,
            reason = ctx.reason,
            status = status.as_u16(),
            duration_ms,
            "request"
        );
        self.metrics
            .record(ctx.class.as_str(), ctx.decision, ctx.reason);
        if let (Some(file), Some(job)) = (&self.auth_log, &ctx.source) {
            let line = serde_json::json!({
                "time": std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs_f64())
                    .unwrap_or(0.0),
                "method": ctx.method.as_str(),
                "path": path,
                "class": ctx.class.as_str(),
                "source_project": job.project_path,
                "source_project_id": job.project_id,
                "job_id": job.job_id,
                "target": target,
                "decision": ctx.decision,
                "reason": ctx.reason,
                "status": status.as_u16(),
            });
            if let Ok(mut f) = file.lock() {
                if let Err(e) = writeln!(f, "{line}") {
                    tracing::warn!(error = %e, "auth log write failed");
                }
            }
        }
    }
}

/// Records a refusal that happens before any decision (400, 413, 401, 503).
fn refuse_with(ctx: &mut Ctx, reason: &'static str, refusal: Refusal) -> Refusal {
    ctx.decision = "refuse";
    ctx.reason = reason;
    refusal
}

fn refuse(ctx: &mut Ctx, reject: Reject) -> Refusal {
    match reject {
        Reject::BadRequest(why) => refuse_with(ctx, "bad_request_target", Refusal::BadRequest(why)),
        // Without a job token the canonicaliser only refuses malformed targets.
        Reject::NotFound(why) => refuse_with(ctx, "bad_request_target", Refusal::BadRequest(why)),
    }
}

/// A classification-driving parameter (`service`): every copy, in query and body, must
/// agree, or the request is ambiguous → 400.
fn one_value<'a>(
    query: &'a [Param],
    body: &'a [Param],
    name: &str,
    ctx: &mut Ctx,
) -> Result<Option<&'a str>, Refusal> {
    let q = credentials::single_value(query, name);
    let b = credentials::single_value(body, name);
    match (q, b) {
        (Ok(a), Ok(None)) => Ok(a),
        (Ok(None), Ok(b)) => Ok(b),
        (Ok(Some(a)), Ok(Some(b))) if a == b => Ok(Some(a)),
        _ => Err(refuse_with(
            ctx,
            "duplicate_parameter",
            Refusal::BadRequest("parameter"),
        )),
    }
}

/// One candidate's answer: skipped by format, or from the cache / a shared look-up.
async fn lookup_one(
    jobs: &JobResolver,
    candidate: Secret,
    prefix: &str,
    client_ip: IpAddr,
) -> Result<(Secret, Lookup), crate::forge::LookupFailure> {
    if credentials::is_known_non_job(candidate.expose(), prefix)
        || cannot_be_issued(candidate.expose())
    {
        return Ok((candidate, Lookup::NotJob));
    }
    let answer = jobs.lookup(&candidate, client_ip).await?;
    Ok((candidate, answer))
}

/// A value with whitespace or a control character in it is no token the forge issued (job
/// tokens are `[A-Za-z0-9_.-]`): such candidates (a whole `Basic …` header, say) are "not a
/// job token" without a look-up. The narrower candidates of the same credential (its last
/// word, its password, every `glcbt-` substring) are still looked up.
fn cannot_be_issued(value: &str) -> bool {
    value.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// Routes whose JSON body carries a package or a state rather than parameters, read whole up
/// to `limits.inspect_publish` instead of `inspect_body`: npm publish (`PUT
/// /api/v4/projects/:id/packages/npm/:package_name`, `lib/api/npm_project_packages.rb`; its
/// `/-/` routes, dist-tags, are ordinary small documents) and Terraform state (`POST
/// /api/v4/projects/:id/terraform/state/:name`).
fn is_package_publish(method: &http::Method, path: &CanonicalPath) -> bool {
    let Some(rest) = path.lower.strip_prefix("/api/v4/projects/") else {
        return false;
    };
    if method == http::Method::POST {
        // Terraform's http backend POSTs the whole state as JSON (lib/api/terraform/state.rb);
        // real states are often megabytes. `/lock` below it is a small document.
        return rest
            .split_once("/terraform/state/")
            .is_some_and(|(project, name)| {
                !project.is_empty() && !name.is_empty() && !name.contains('/')
            });
    }
    if method != http::Method::PUT {
        return false;
    }
    match rest.split_once("/packages/npm/") {
        Some((project, package)) => {
            !project.is_empty()
                && !package.is_empty()
                && !package.starts_with("-/")
                && !package.contains("/-/")
        }
        None => false,
    }
}

/// Reads a parameter-bearing body whole (bounded) and parses it; streams anything else. An
/// untyped API write is peeked at first: JSON to Grape is read, anything else streams.
///
/// A free function over owned values: with `&self` or `&mut Ctx` captured, a body value held
/// across its awaits defeats the compiler's proof that the connection future is `Send`
/// (rust-lang/rust#102211). The caller records the refusal's reason.
async fn read_body(
    kind: BodyKind,
    untyped: bool,
    declared: Option<u64>,
    body: UpBody,
    limit: usize,
    idle: std::time::Duration,
) -> Result<(UpBody, Vec<Param>), (&'static str, Refusal)> {
    let (kind, body) = if untyped {
        let mut body = body;
        let (json, peeked) = forward::peek_json(&mut body, idle)
            .await
            .map_err(|r| ("body", r))?;
        let kind = if json { BodyKind::Untyped } else { kind };
        (kind, forward::unpeek(peeked, body))
    } else {
        (kind, body)
    };
    if kind == BodyKind::Opaque {
        return Ok((forward::stream_body(body, idle), Vec::new()));
    }
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(("body_too_large", Refusal::PayloadTooLarge));
    }
    let bytes: Bytes = forward::read_limited(body, limit, idle)
        .await
        .map_err(|r| ("body", r))?;
    // An empty body holds no parameters (Rack parses none; Rails' JSON parser skips it).
    let params = if bytes.is_empty() {
        Vec::new()
    } else {
        credentials::parse_body(&kind, bytes.clone())
            .await
            .map_err(|_| ("malformed_body", Refusal::BadRequest("body")))?
    };
    Ok((forge::full(bytes), params))
}

fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
}

fn distinct_candidates(creds: &[Credential]) -> Vec<Secret> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for c in creds.iter().flat_map(|c| c.candidates.iter()) {
        if seen.insert(c) {
            out.push(c.clone());
        }
    }
    out
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
