//! The authorization step. A request passes through its phases once, in order —
//! extract → resolve → target → decide → forward → log — each a small function named after
//! its phase, with the per-request state in one [`Ctx`]. A denied request never reaches the
//! forwarder: nothing of it is sent to the forge. The decision and its metric live here; the
//! log phase (request id, access line, auth-log line) in [`access`], written when the
//! response body ends.

use crate::admin::Metrics;
use crate::canonical::{self, CanonicalPath};
use crate::config::{Config, Mode};
use crate::credentials::{self, BodyKind, Credential, Origin, Param};
use crate::error::Refusal;
use crate::forge::{HttpClient, UpBody, Upstream};
use crate::forward::{self, Outbound};
use crate::jobs::{JobIdentity, JobResolver, Lookup};
use crate::resolve::Resolver;
use crate::secret::Secret;
use crate::target::{self, Class, ClassParams, Reject, Shape};
use http::{Request, Response};
use hyper::body::Incoming;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// More distinct candidate values than this in one request is no client's doing: refused
/// (400) rather than fanned out into forge look-ups.
pub const MAX_CANDIDATES: usize = 32;

pub mod access;
pub mod auth_log;
mod body;
mod decide;

use access::{Record, RequestId};
use auth_log::AuthLog;

use body::{content_length, is_package_publish, read_body};

/// Everything one configuration generation needs to decide requests.
pub struct Gate {
    pub config: Arc<Config>,
    /// Where allowed requests go; a reload builds a new one (old connections close with the
    /// old gate).
    upstream: Upstream,
    jobs: JobResolver,
    resolver: Resolver,
    metrics: Arc<Metrics>,
    auth_log: Option<Arc<AuthLog>>,
}

/// Per-request state, filled in as the phases run; it is what the access log line says.
struct Ctx {
    request_id: RequestId,
    /// The peer address as the gateway saw it (not `X-Forwarded-For`).
    peer: SocketAddr,
    method: http::Method,
    raw_target: String,
    class: Class,
    source: Option<JobIdentity>,
    target: Option<String>,
    /// The target's id and visibility, when one project was resolved.
    target_id: Option<u64>,
    target_visibility: Option<crate::config::Visibility>,
    /// Registry images' projects whose inbound allowlist refused a pull (a registry request
    /// names several projects, and its reason is the scope filtering's).
    inbound_refused: Vec<Refused>,
    decision: &'static str,
    reason: &'static str,
    candidates: Vec<Secret>,
}

/// The request head as the decision phases read it (the parts themselves go to the forwarder).
struct Head {
    method: http::Method,
    headers: http::HeaderMap,
    /// The path read leniently (without a job token: anything undecodable kept as received).
    path: CanonicalPath,
    /// `Ok`: `path` is also the strict reading (with a job token); `Err`: why the strict
    /// reading refuses it.
    strict_path: Result<(), Reject>,
    query_params: Vec<Param>,
    kind: BodyKind,
    peer: SocketAddr,
}

impl Ctx {
    fn for_request(
        request_id: RequestId,
        peer: SocketAddr,
        method: http::Method,
        raw_target: String,
    ) -> Ctx {
        Ctx {
            request_id,
            peer,
            method,
            raw_target,
            class: Class::Unknown,
            source: None,
            target: None,
            target_id: None,
            target_visibility: None,
            inbound_refused: Vec::new(),
            decision: "forward",
            reason: "no_job_token",
            candidates: Vec::new(),
        }
    }

    /// Forgets what was decided (a streamed body's late credentials are decided afresh on the
    /// whole request); the request's identity stays.
    fn restart(&mut self) {
        let (id, peer) = (self.request_id, self.peer);
        let method = std::mem::replace(&mut self.method, http::Method::GET);
        let raw_target = std::mem::take(&mut self.raw_target);
        *self = Ctx::for_request(id, peer, method, raw_target);
    }
}

/// A target project an inbound allowlist refused.
struct Refused {
    path: String,
    id: u64,
    visibility: crate::config::Visibility,
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
    /// A gate for `config`; `previous` is the generation it replaces on a reload, whose job
    /// cache it keeps when the forge and the TTLs are unchanged ([`JobResolver::reloaded`]).
    pub fn new(
        config: Arc<Config>,
        client: HttpClient,
        metrics: Arc<Metrics>,
        previous: Option<&Gate>,
    ) -> std::io::Result<Gate> {
        let auth_log = match &config.auth_log {
            Some(path) => Some(Arc::new(AuthLog::open(
                path,
                metrics.auth_log_dropped.clone(),
            )?)),
            None => None,
        };
        Ok(Gate {
            jobs: match previous {
                Some(p) => p.jobs.reloaded(client.clone(), config.clone()),
                None => JobResolver::new(client.clone(), config.clone(), metrics.clone()),
            },
            resolver: Resolver::new(client.clone(), config.clone()).with_metrics(metrics.clone()),
            upstream: Upstream::new(&config, client),
            config,
            metrics,
            auth_log,
        })
    }

    pub fn purge_caches(&self) {
        self.jobs.purge_expired();
        self.resolver.purge_expired();
    }

    /// Decides one request and forwards it or answers it. Every answer scopegate gives itself
    /// carries `X-Request-Id`; forwarded answers are the forge's, unchanged.
    pub async fn handle(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        tls: bool,
    ) -> Response<UpBody> {
        let ctx = Ctx::for_request(
            RequestId::next(),
            peer,
            req.method().clone(),
            req.uri()
                .path_and_query()
                .map(|p| p.as_str().to_owned())
                .unwrap_or_else(|| "/".to_owned()),
        );
        // The record is the log phase: it writes its lines when the response body ends, or
        // here if this future is dropped first.
        let mut record = Record::begin(
            ctx,
            self.auth_log.clone(),
            self.config.log_format == crate::config::LogFormat::Json,
        );
        let req = req.map(|b| access::count_request(b, record.request_bytes.clone()));
        let ctx = &mut record.ctx;
        let resp = match self.process(req, peer, tls, ctx).await {
            Ok(resp) => resp,
            Err(refusal) => {
                if ctx.decision == "forward"
                    || ctx.decision == "allow"
                    || ctx.decision == "would_deny"
                {
                    // Refused after the decision: the forge could not be reached.
                    ctx.decision = "error";
                }
                let mut resp = refusal.into_response();
                resp.headers_mut().insert(
                    http::header::HeaderName::from_static(access::REQUEST_ID_HEADER),
                    ctx.request_id.header_value(),
                );
                resp
            }
        };
        self.metrics
            .record(ctx.class.as_str(), ctx.decision, ctx.reason);
        record.into_response(resp)
    }

    async fn process(
        &self,
        mut req: Request<UpBody>,
        peer: SocketAddr,
        tls: bool,
        ctx: &mut Ctx,
    ) -> Result<Response<UpBody>, Refusal> {
        let config = &*self.config;
        let upgrade = forward::is_websocket_upgrade(req.headers(), req.version())
            .then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        let raw_path = parts.uri.path();
        let query = parts.uri.query();
        let root = config.upstream.relative_url_root.as_str();

        // Phase: extract. The strict reading (SPEC §3 with a job token) first: when it
        // succeeds it is also the lenient one, and the decision reuses it rather than
        // canonicalizing again once a job token turns up.
        let (head_path, strict_path) = match canonical::canonicalize(raw_path, root, true) {
            Ok(path) => (path, Ok(())),
            Err(strict) => (
                canonical::canonicalize(raw_path, root, false).map_err(|r| refuse(ctx, r))?,
                Err(strict),
            ),
        };
        // SPEC §3 covers the whole request-target: the query too must be visible ASCII, and
        // an absolute-form target must not carry userinfo.
        let bad_query = query.is_some_and(|q| q.bytes().any(|b| !(0x21..=0x7e).contains(&b)));
        let userinfo = parts
            .uri
            .authority()
            .is_some_and(|a| a.as_str().contains('@'));
        if bad_query || userinfo {
            return Err(refuse(ctx, Reject::BadRequest("request-target")));
        }
        let mut creds = credentials::from_headers(&parts.headers);
        let query_params = query.map(credentials::parse_query).unwrap_or_default();
        creds.extend(credentials::credentials_from_params(
            &query_params,
            Origin::Query,
        ));
        let kind = credentials::body_kind(&parts.method, &parts.headers)
            .map_err(|_| refuse_with(ctx, "content_type", Refusal::BadRequest("content-type")))?;
        // The head's headers are lent to the decision phases and handed back to the forwarder,
        // not copied per request.
        let head = Head {
            method: parts.method.clone(),
            headers: std::mem::take(&mut parts.headers),
            path: head_path,
            strict_path,
            query_params,
            kind,
            peer,
        };
        if let BodyKind::Multipart { boundary } = &head.kind {
            if self.streams(&head.headers) {
                let boundary = boundary.clone();
                // Boxed, like the other rarely taken or long awaits below: a future holds the
                // largest of its awaits' states inline, and hyper moves each request's future
                // (memcpy) before polling it. Unboxed, a streamed upload's state made every
                // GET's future several KiB larger.
                return Box::pin(self.stream_upload(head, creds, &boundary, parts, body, tls, ctx))
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
            && credentials::untyped_api_write(&head.method, &head.headers, &head.path.lower);
        let read = if head.kind == BodyKind::Opaque && !untyped {
            // Nothing to inspect (most requests): streamed, without entering the reader.
            Ok((
                forward::stream_body(body, config.limits.idle_timeout),
                Vec::new(),
            ))
        } else {
            Box::pin(read_body(
                head.kind.clone(),
                untyped,
                content_length(&head.headers),
                body,
                limit,
                config.limits.idle_timeout,
            ))
            .await
        };
        let (body, body_params) = read.map_err(|(reason, r)| refuse_with(ctx, reason, r))?;
        creds.extend(credentials::credentials_from_params(
            &body_params,
            Origin::Body,
        ));
        let path_and_query = Box::pin(self.authorize(&head, &creds, &body_params, ctx)).await?;
        parts.headers = head.headers;

        // Phase: forward.
        forward::forward(
            config,
            &self.upstream,
            &self.metrics.upstream_response,
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
        let classified =
            target::classify_request(&head.method, &head.path, &class_params, &config.routes);
        ctx.class = classified.lenient.class;
        let shape = classified.lenient.shape;
        let runner_job = classified.lenient.job_id;

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
                let target = head.strict_path.and_then(|()| {
                    classified
                        .into_strict()
                        .map(|t| (t, target::repository_shadow(&head.path)))
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
        // What the format or the cache answers at once (the usual request: a token seen
        // before), then one concurrent look-up per remaining candidate.
        let mut answers: BTreeMap<Secret, Lookup> = BTreeMap::new();
        let mut missing = Vec::new();
        for c in &ctx.candidates {
            let known = if skips_lookup(c, prefix) {
                Some(Lookup::NotJob)
            } else {
                self.jobs.cached(c)
            };
            match known {
                Some(l) => {
                    answers.insert(c.clone(), l);
                }
                None => missing.push(c.clone()),
            }
        }
        // A named async fn rather than an async closure: the closure's borrow of `self`
        // makes the connection future's `Send` bound unprovable (rust-lang/rust#102211).
        let lookups: Vec<_> = missing
            .into_iter()
            .map(|c| lookup_one(&self.jobs, c, prefix, client_ip))
            .collect();
        let fetched = if lookups.is_empty() {
            Vec::new()
        } else {
            futures_util::future::join_all(lookups).await
        };
        for answer in fetched {
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
    if skips_lookup(&candidate, prefix) {
        return Ok((candidate, Lookup::NotJob));
    }
    let answer = jobs.lookup(&candidate, client_ip).await?;
    Ok((candidate, answer))
}

/// "Not a job token" by its format alone: no cache, no forge.
fn skips_lookup(candidate: &Secret, prefix: &str) -> bool {
    credentials::is_known_non_job(candidate.expose(), prefix)
        || cannot_be_issued(candidate.expose())
}

/// A value with whitespace or a control character in it is no token the forge issued (job
/// tokens are `[A-Za-z0-9_.-]`): such candidates (a whole `Basic …` header, say) are "not a
/// job token" without a look-up. The narrower candidates of the same credential (its last
/// word, its password, every `glcbt-` substring) are still looked up.
fn cannot_be_issued(value: &str) -> bool {
    value.chars().any(|c| c.is_whitespace() || c.is_control())
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
