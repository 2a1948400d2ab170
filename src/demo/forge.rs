//! The fake forge: an in-process HTTP server that plays just enough of GitLab for
//! `scopegate demo` and for the integration tests, where it is the recording upstream double.
//!
//! It sits where the real forge would, behind the gateway. It answers the gateway's own
//! look-ups (`/api/v4/job`, `/api/v4/projects/:ref` and its `jobs/:id`,
//! `/api/v4/groups/:ref`) as GitLab does, serves real Git repositories through
//! [`gitcgi`](super::gitcgi), and echoes every other request. Every request is recorded the
//! moment its head arrives, with its body streamed through a SHA-256 hasher, so a test can
//! prove what did (and did not) reach the forge, and that a 200 MiB upload arrived intact,
//! without holding it in memory.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use http::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, USER_AGENT, WWW_AUTHENTICATE};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use percent_encoding::percent_decode_str;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tokio::task::{JoinHandle, JoinSet};

pub use super::gitcgi::BoxBody;
use super::gitcgi::{self, never};

/// The gateway marks its own forge look-ups with this User-Agent prefix; the forge files them
/// apart from forwarded client requests.
pub const LOOKUP_USER_AGENT_PREFIX: &str = "scopegate-lookup/";

/// How much of each request body a [`Recorded`] keeps; the rest is only hashed and counted.
pub const RECORDED_BODY_LIMIT: usize = 1024 * 1024;

/// How long [`FakeForge::stop`] lets in-flight requests finish before cutting them off.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// What the fake forge knows: its jobs, projects and groups.
#[derive(Debug, Clone, Default)]
pub struct ForgeData {
    pub jobs: Vec<FakeJob>,
    pub projects: Vec<FakeProject>,
    pub groups: Vec<FakeGroup>,
    /// A `read_api` token (`PRIVATE-TOKEN`) that may see every project and group.
    pub service_token: Option<String>,
    /// The directory holding bare repositories as `<path>.git`; `None` = Git routes echo.
    pub git_root: Option<PathBuf>,
    /// `""`, or the relative URL root the forge lives under (`/gitlab`).
    pub base_url_path: String,
}

#[derive(Debug, Clone)]
pub struct FakeJob {
    pub token: String,
    pub id: u64,
    /// `running`, `canceling`, `success`, `failed`, … reported as is.
    pub status: String,
    pub project_id: u64,
}

impl FakeJob {
    pub fn new(token: &str, id: u64, status: &str, project_id: u64) -> FakeJob {
        FakeJob {
            token: token.into(),
            id,
            status: status.into(),
            project_id,
        }
    }
}

#[derive(Debug, Clone)]
pub struct FakeProject {
    pub id: u64,
    /// Full path, `g/p`.
    pub path: String,
    /// `private`, `internal` or `public`.
    pub visibility: String,
    pub namespace_id: u64,
    /// `("repository_access_level", "private")` and the like; unlisted levels are `enabled`.
    pub access_levels: Vec<(String, String)>,
}

impl FakeProject {
    pub fn new(id: u64, path: &str, visibility: &str, namespace_id: u64) -> FakeProject {
        FakeProject {
            id,
            path: path.into(),
            visibility: visibility.into(),
            namespace_id,
            access_levels: Vec::new(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct FakeGroup {
    pub id: u64,
    pub full_path: String,
    pub parent_id: Option<u64>,
}

impl FakeGroup {
    pub fn new(id: u64, full_path: &str, parent_id: Option<u64>) -> FakeGroup {
        FakeGroup {
            id,
            full_path: full_path.into(),
            parent_id,
        }
    }
}

/// How `GET /api/v4/job` answers; anything but `Normal` simulates a forge in trouble.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum JobApi {
    #[default]
    Normal,
    /// Answer every `/api/v4/job` with this status (and a GitLab-shaped JSON message).
    Status(u16),
    /// 200 with a body that is not JSON.
    Malformed,
    /// Never answer (until the forge stops, when it answers 503).
    Hang,
}

/// One request as the forge received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    /// `path?query` exactly as received (raw, not decoded).
    pub uri: String,
    pub headers: HeaderMap,
    /// Body bytes received so far.
    pub body_len: u64,
    /// SHA-256 of the body bytes received so far (set when the body ends; all zero before).
    pub body_sha256: [u8; 32],
    /// The first [`RECORDED_BODY_LIMIT`] bytes of the body.
    pub body: Bytes,
    /// The body was read to its end without error.
    pub complete: bool,
    /// The forge is done with the body: read to its end (`complete`), failed (client
    /// aborted) or abandoned mid-way. False while it is still arriving.
    pub ended: bool,
}

impl Recorded {
    /// The path part of [`Recorded::uri`].
    pub fn path(&self) -> &str {
        self.uri.split('?').next().unwrap_or_default()
    }

    /// The body's SHA-256 as lower-case hex, for comparing with a test's own digest.
    pub fn body_sha256_hex(&self) -> String {
        self.body_sha256
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// A running fake forge on `127.0.0.1:<ephemeral port>`.
pub struct FakeForge {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl FakeForge {
    /// Binds an ephemeral loopback port and starts serving.
    pub async fn start(data: ForgeData) -> std::io::Result<FakeForge> {
        let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let (shutdown, stopping) = watch::channel(false);
        let shared = Arc::new(Shared {
            url: format!("http://{addr}"),
            data,
            job_api: Mutex::new(JobApi::Normal),
            log: Mutex::new(Vec::new()),
            changed: Notify::new(),
            stopping: stopping.clone(),
        });
        let task = tokio::spawn(accept_loop(listener, shared.clone(), stopping));
        Ok(FakeForge {
            addr,
            shared,
            shutdown,
            task: Some(task),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, without `base_url_path`.
    pub fn url(&self) -> String {
        self.shared.url.clone()
    }

    /// Every request except the gateway's own look-ups, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.snapshot(|e| !e.lookup)
    }

    /// The gateway's own look-ups (User-Agent starting with `scopegate-lookup/`).
    pub fn lookups(&self) -> Vec<Recorded> {
        self.shared.snapshot(|e| e.lookup)
    }

    /// How many `GET /api/v4/job` look-ups (gateway User-Agent) arrived since the last clear.
    pub fn job_lookup_count(&self) -> usize {
        lock(&self.shared.log)
            .iter()
            .filter(|e| lock(e).job_lookup)
            .count()
    }

    pub fn set_job_api(&self, mode: JobApi) {
        *lock(&self.shared.job_api) = mode;
    }

    /// Forgets every recorded request (requests still arriving update their lost entries).
    pub fn clear(&self) {
        lock(&self.shared.log).clear();
        self.shared.changed.notify_waiters();
    }

    /// Resolves once [`requests`](Self::requests) holds at least `n` entries.
    pub async fn wait_for_requests(&self, n: usize) {
        self.wait_for(|_| {
            lock(&self.shared.log)
                .iter()
                .filter(|e| !lock(e).lookup)
                .count()
                >= n
        })
        .await
    }

    /// Resolves once `done(requests, lookups)` holds. It is re-checked whenever a request
    /// arrives or a request body ends, e.g. to wait until an aborted upload has `ended`.
    pub async fn wait_until(&self, mut done: impl FnMut(&[Recorded], &[Recorded]) -> bool) {
        self.wait_for(|shared| {
            done(
                &shared.snapshot(|e| !e.lookup),
                &shared.snapshot(|e| e.lookup),
            )
        })
        .await
    }

    async fn wait_for(&self, mut done: impl FnMut(&Shared) -> bool) {
        loop {
            // Register interest before checking, so a change between the check and the
            // await is not missed.
            let changed = self.shared.changed.notified();
            let mut changed = std::pin::pin!(changed);
            changed.as_mut().enable();
            if done(&self.shared) {
                return;
            }
            changed.await;
        }
    }

    /// Stops accepting, lets in-flight requests finish (bounded), and closes every connection.
    pub async fn stop(mut self) {
        self.shutdown.send_replace(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for FakeForge {
    fn drop(&mut self) {
        // A test that forgets `stop` must not leave the accept loop running.
        self.shutdown.send_replace(true);
    }
}

struct Shared {
    url: String,
    data: ForgeData,
    job_api: Mutex<JobApi>,
    log: Mutex<Vec<Arc<Mutex<Entry>>>>,
    /// Woken when a request arrives, a body ends, or the log is cleared.
    changed: Notify,
    stopping: watch::Receiver<bool>,
}

struct Entry {
    rec: Recorded,
    /// The kept body prefix; copied into `rec.body` only when a snapshot is taken.
    prefix: BytesMut,
    lookup: bool,
    job_lookup: bool,
}

impl Shared {
    fn snapshot(&self, keep: impl Fn(&Entry) -> bool) -> Vec<Recorded> {
        lock(&self.log)
            .iter()
            .filter_map(|e| {
                let e = lock(e);
                keep(&e).then(|| {
                    let mut rec = e.rec.clone();
                    rec.body = Bytes::copy_from_slice(&e.prefix);
                    rec
                })
            })
            .collect()
    }

    fn record_arrival(&self, parts: &http::request::Parts) -> Arc<Mutex<Entry>> {
        let lookup = parts
            .headers
            .get(USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ua| ua.starts_with(LOOKUP_USER_AGENT_PREFIX));
        let job_lookup = lookup
            && parts.method == Method::GET
            && self.relative(parts.uri.path()) == Some("/api/v4/job");
        let uri = match parts.uri.path_and_query() {
            Some(pq) => pq.as_str().to_owned(),
            None => parts.uri.to_string(),
        };
        let entry = Arc::new(Mutex::new(Entry {
            rec: Recorded {
                method: parts.method.clone(),
                uri,
                headers: parts.headers.clone(),
                body_len: 0,
                body_sha256: [0; 32],
                body: Bytes::new(),
                complete: false,
                ended: false,
            },
            prefix: BytesMut::new(),
            lookup,
            job_lookup,
        }));
        lock(&self.log).push(entry.clone());
        self.changed.notify_waiters();
        entry
    }

    /// The path below `base_url_path`, or `None` when the request is outside it.
    fn relative<'p>(&self, path: &'p str) -> Option<&'p str> {
        let base = self.data.base_url_path.trim_end_matches('/');
        let rest = path.strip_prefix(base)?;
        (rest.is_empty() || rest.starts_with('/')).then_some(rest)
    }

    fn project_by_ref(&self, reference: &str) -> Option<&FakeProject> {
        let reference = percent_decode_str(reference).decode_utf8().ok()?;
        if !reference.is_empty() && reference.bytes().all(|b| b.is_ascii_digit()) {
            let id: u64 = reference.parse().ok()?;
            return self.data.projects.iter().find(|p| p.id == id);
        }
        // GitLab finds paths case-insensitively.
        self.data
            .projects
            .iter()
            .find(|p| p.path.eq_ignore_ascii_case(&reference))
    }

    fn group_by_ref(&self, reference: &str) -> Option<&FakeGroup> {
        let reference = percent_decode_str(reference).decode_utf8().ok()?;
        if !reference.is_empty() && reference.bytes().all(|b| b.is_ascii_digit()) {
            let id: u64 = reference.parse().ok()?;
            return self.data.groups.iter().find(|g| g.id == id);
        }
        self.data
            .groups
            .iter()
            .find(|g| g.full_path.eq_ignore_ascii_case(&reference))
    }

    fn web_url(&self, path: &str) -> String {
        format!(
            "{}{}/{}",
            self.url,
            self.data.base_url_path.trim_end_matches('/'),
            path
        )
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking test thread must not turn every later look at the log into a panic.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stopping: watch::Receiver<bool>,
) {
    // auto: HTTP/1.1 with keep-alive (the default), and HTTP/2 prior knowledge should a
    // client speak it.
    let builder = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            // Err: the FakeForge is gone; stop as well.
            changed = stopping.changed() => if changed.is_err() || *stopping.borrow() { break },
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    let shared = shared.clone();
                    let service = hyper::service::service_fn(move |req| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(handle(shared, req).await) }
                    });
                    let conn = builder.serve_connection(TokioIo::new(stream), service).into_owned();
                    let conn = graceful.watch(conn);
                    conns.spawn(async move {
                        if let Err(e) = conn.await {
                            tracing::debug!(error = %e, "fake forge connection failed");
                        }
                    });
                }
                Err(e) => tracing::debug!(error = %e, "fake forge accept failed"),
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    if tokio::time::timeout(STOP_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::debug!("fake forge: connections still busy at stop; closing them");
    }
    conns.shutdown().await;
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<BoxBody> {
    let (parts, body) = req.into_parts();
    let entry = shared.record_arrival(&parts);
    let body = RecordingBody::new(body, entry, shared.clone());
    route(&shared, Request::from_parts(parts, body)).await
}

async fn route(shared: &Shared, req: Request<RecordingBody>) -> Response<BoxBody> {
    let path = req.uri().path().to_owned();
    let Some(rel) = shared.relative(&path) else {
        return echo(req).await;
    };
    let is_get = req.method() == Method::GET;
    if is_get && rel == "/api/v4/job" {
        return job(shared, req).await;
    }
    if let Some(reference) = rel
        .strip_prefix("/api/v4/projects/")
        .filter(|r| !r.contains('/'))
    {
        if is_get {
            return project(shared, req, reference).await;
        }
    }
    let project_job_ref = rel
        .strip_prefix("/api/v4/projects/")
        .and_then(|r| r.split_once("/jobs/"))
        .filter(|(r, id)| {
            !r.contains('/') && !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit())
        });
    if let Some((reference, job_id)) = project_job_ref {
        if is_get {
            return project_job(shared, req, reference, job_id).await;
        }
    }
    if let Some(reference) = rel
        .strip_prefix("/api/v4/groups/")
        .filter(|r| !r.contains('/'))
    {
        if is_get {
            return group(shared, req, reference).await;
        }
    }
    if let Some((repo, service)) = git_route(rel) {
        return git(shared, req, &repo, service).await;
    }
    echo(req).await
}

/// `GET /api/v4/job`: the job a token belongs to, as GitLab's `API::Ci::Jobs` answers it.
async fn job(shared: &Shared, req: Request<RecordingBody>) -> Response<BoxBody> {
    let (parts, body) = req.into_parts();
    drain(body).await;
    let mode = *lock(&shared.job_api);
    match mode {
        JobApi::Normal => {}
        JobApi::Status(code) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return json_response(status, &json!({ "message": status.to_string() }));
        }
        JobApi::Malformed => {
            return bytes_response(
                StatusCode::OK,
                "application/json",
                Bytes::from_static(b"{\"id\": 1, \"pipeline\": {"),
            );
        }
        JobApi::Hang => {
            let mut stopping = shared.stopping.clone();
            let _ = stopping.wait_for(|stop| *stop).await;
            return json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({ "message": "503 Service Unavailable" }),
            );
        }
    }
    let found = job_token(&parts).and_then(|t| shared.data.jobs.iter().find(|j| j.token == t));
    let Some(job) = found else {
        return json_response(
            StatusCode::UNAUTHORIZED,
            &json!({ "message": "401 Unauthorized" }),
        );
    };
    json_response(StatusCode::OK, &job_json(shared, job))
}

fn job_json(shared: &Shared, job: &FakeJob) -> Value {
    let project_path = shared
        .data
        .projects
        .iter()
        .find(|p| p.id == job.project_id)
        .map(|p| p.path.clone())
        .unwrap_or_else(|| format!("unknown/project-{}", job.project_id));
    json!({
        "id": job.id,
        "status": job.status,
        "stage": "test",
        "name": "demo-job",
        "ref": "main",
        "tag": false,
        "allow_failure": false,
        "web_url": format!("{}/-/jobs/{}", shared.web_url(&project_path), job.id),
        "pipeline": {
            "id": job.id + 1000,
            "project_id": job.project_id,
            "ref": "main",
            "sha": format!("{:040x}", job.id),
            "status": job.status,
        },
        "user": { "id": 1, "username": "demo" },
    })
}

/// `GET /api/v4/projects/:ref/jobs/:id` with the service token: one job of one project,
/// which `runner.dependencies: strict` asks about. Without the service token the route is
/// echoed like any other client request.
async fn project_job(
    shared: &Shared,
    req: Request<RecordingBody>,
    reference: &str,
    job_id: &str,
) -> Response<BoxBody> {
    if !privileged(shared, req.headers()) {
        return echo(req).await;
    }
    let (_, body) = req.into_parts();
    drain(body).await;
    let project = shared.project_by_ref(reference);
    let job = job_id.parse::<u64>().ok().and_then(|id| {
        let project = project?;
        shared
            .data
            .jobs
            .iter()
            .find(|j| j.id == id && j.project_id == project.id)
    });
    match (project, job) {
        (Some(_), Some(job)) => json_response(StatusCode::OK, &job_json(shared, job)),
        (None, _) => json_response(
            StatusCode::NOT_FOUND,
            &json!({ "message": "404 Project Not Found" }),
        ),
        (Some(_), None) => json_response(
            StatusCode::NOT_FOUND,
            &json!({ "message": "404 Not found" }),
        ),
    }
}

/// Where GitLab's job-token finders would read a token on `/api/v4/job`.
fn job_token(parts: &http::request::Parts) -> Option<String> {
    for name in ["job-token", "job_token"] {
        if let Some(v) = parts.headers.get(name).and_then(|v| v.to_str().ok()) {
            return Some(v.to_owned());
        }
    }
    if let Some(v) = query_param(parts.uri.query().unwrap_or(""), "job_token") {
        return Some(v);
    }
    match authorization(&parts.headers)? {
        Auth::Basic { user, password } if user == "gitlab-ci-token" => Some(password),
        Auth::Bearer(token) => Some(token),
        _ => None,
    }
}

fn query_param(query: &str, key: &str) -> Option<String> {
    query.split(['&', ';']).find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| {
            percent_decode_str(&s.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        };
        (decode(k) == key).then(|| decode(v))
    })
}

enum Auth {
    Basic { user: String, password: String },
    Bearer(String),
    Other,
}

fn authorization(headers: &HeaderMap) -> Option<Auth> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("basic") {
        let engine = base64::engine::general_purpose::STANDARD;
        let decoded = engine
            .decode(rest)
            .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(rest))
            .ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        let (user, password) = decoded.split_once(':').unwrap_or((&decoded, ""));
        Some(Auth::Basic {
            user: user.to_owned(),
            password: password.to_owned(),
        })
    } else if scheme.eq_ignore_ascii_case("bearer") {
        Some(Auth::Bearer(rest.to_owned()))
    } else {
        Some(Auth::Other)
    }
}

/// The service token may see everything; anyone else only public projects (as anonymous
/// API calls on GitLab do).
fn privileged(shared: &Shared, headers: &HeaderMap) -> bool {
    let Some(service) = shared.data.service_token.as_deref() else {
        return false;
    };
    let private = ["private-token", "private_token"]
        .iter()
        .filter_map(|name| headers.get(*name)?.to_str().ok())
        .any(|v| v == service);
    let bearer = matches!(authorization(headers), Some(Auth::Bearer(t)) if t == service);
    private || bearer
}

async fn project(
    shared: &Shared,
    req: Request<RecordingBody>,
    reference: &str,
) -> Response<BoxBody> {
    let (parts, body) = req.into_parts();
    drain(body).await;
    let privileged = privileged(shared, &parts.headers);
    let found = shared
        .project_by_ref(reference)
        .filter(|p| privileged || p.visibility == "public");
    let Some(p) = found else {
        return json_response(
            StatusCode::NOT_FOUND,
            &json!({ "message": "404 Project Not Found" }),
        );
    };
    json_response(StatusCode::OK, &project_json(shared, p))
}

fn project_json(shared: &Shared, p: &FakeProject) -> Value {
    let (ns_path, name) = p.path.rsplit_once('/').unwrap_or(("", p.path.as_str()));
    let group = shared.data.groups.iter().find(|g| g.id == p.namespace_id);
    let ns_full_path = group.map_or(ns_path, |g| g.full_path.as_str());
    let ns_name = ns_full_path.rsplit('/').next().unwrap_or(ns_full_path);
    let mut v = json!({
        "id": p.id,
        "name": name,
        "path": name,
        "name_with_namespace": p.path.replace('/', " / "),
        "path_with_namespace": p.path,
        "visibility": p.visibility,
        "default_branch": "main",
        "web_url": shared.web_url(&p.path),
        "http_url_to_repo": format!("{}.git", shared.web_url(&p.path)),
        "namespace": {
            "id": p.namespace_id,
            "name": ns_name,
            "path": ns_name,
            "full_path": ns_full_path,
            "parent_id": group.and_then(|g| g.parent_id),
            "kind": "group",
            "web_url": shared.web_url(&format!("groups/{ns_full_path}")),
        },
    });
    if let Some(obj) = v.as_object_mut() {
        for feature in [
            "repository",
            "builds",
            "package_registry",
            "container_registry",
            "releases",
            "environments",
        ] {
            obj.insert(format!("{feature}_access_level"), Value::from("enabled"));
        }
        for (key, level) in &p.access_levels {
            obj.insert(key.clone(), Value::from(level.as_str()));
        }
    }
    v
}

async fn group(shared: &Shared, req: Request<RecordingBody>, reference: &str) -> Response<BoxBody> {
    let (parts, body) = req.into_parts();
    drain(body).await;
    let found = shared
        .group_by_ref(reference)
        .filter(|_| privileged(shared, &parts.headers));
    let Some(g) = found else {
        return json_response(
            StatusCode::NOT_FOUND,
            &json!({ "message": "404 Group Not Found" }),
        );
    };
    let name = g.full_path.rsplit('/').next().unwrap_or(&g.full_path);
    json_response(
        StatusCode::OK,
        &json!({
            "id": g.id,
            "name": name,
            "path": name,
            "full_path": g.full_path,
            "full_name": g.full_path.replace('/', " / "),
            "parent_id": g.parent_id,
            "visibility": "private",
            "web_url": shared.web_url(&format!("groups/{}", g.full_path)),
        }),
    )
}

/// Git smart-HTTP routes: `/:path(.git)?/{info/refs,git-upload-pack,git-receive-pack}` →
/// (repository path without `.git`, the route's tail with its leading `/`).
fn git_route(rel: &str) -> Option<(String, &'static str)> {
    const SERVICES: [&str; 3] = ["/info/refs", "/git-upload-pack", "/git-receive-pack"];
    let (repo, service) = SERVICES
        .iter()
        .find_map(|s| Some((rel.strip_suffix(s)?, *s)))?;
    let repo = repo.strip_prefix('/')?;
    let repo = repo.strip_suffix(".git").unwrap_or(repo);
    Some((repo.to_owned(), service))
}

/// One path segment http-backend may see: no `..`, no empty segments, nothing to escape.
fn safe_segment(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphanumeric() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

async fn git(
    shared: &Shared,
    req: Request<RecordingBody>,
    repo: &str,
    service: &str,
) -> Response<BoxBody> {
    if !req.headers().contains_key(AUTHORIZATION) {
        // GitLab challenges anonymous Git requests for non-public projects; git answers the
        // challenge by sending the credentials from the URL (or a helper).
        let (_, body) = req.into_parts();
        drain(body).await;
        let mut resp = bytes_response(
            StatusCode::UNAUTHORIZED,
            "text/plain; charset=utf-8",
            Bytes::from_static(b"HTTP Basic: Access denied\n"),
        );
        resp.headers_mut().insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"GitLab\""),
        );
        return resp;
    }
    let Some(root) = shared.data.git_root.as_deref() else {
        return echo(req).await;
    };
    if !repo.split('/').all(safe_segment) {
        let (_, body) = req.into_parts();
        drain(body).await;
        return bytes_response(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            Bytes::from_static(b"The project you were looking for could not be found.\n"),
        );
    }
    let user = match authorization(req.headers()) {
        Some(Auth::Basic { user, .. }) if !user.is_empty() => Some(user),
        _ => None,
    };
    let path_info = format!("/{repo}.git{service}");
    gitcgi::serve(req, root, &path_info, user.as_deref()).await
}

/// Everything else: say what arrived, so a test can tell the forge answered.
async fn echo(req: Request<RecordingBody>) -> Response<BoxBody> {
    let (parts, body) = req.into_parts();
    drain(body).await;
    json_response(
        StatusCode::OK,
        &json!({ "forge": "fake", "method": parts.method.as_str(), "path": parts.uri.path() }),
    )
}

/// Reads a body to its end (recording it on the way) before answering, as a real forge
/// would; a failure just means the client is gone.
async fn drain(body: RecordingBody) {
    let mut body = std::pin::pin!(body);
    while let Some(frame) = body.frame().await {
        if frame.is_err() {
            return;
        }
    }
}

fn json_response(status: StatusCode, v: &Value) -> Response<BoxBody> {
    bytes_response(status, "application/json", Bytes::from(v.to_string()))
}

fn bytes_response(
    status: StatusCode,
    content_type: &'static str,
    body: Bytes,
) -> Response<BoxBody> {
    let mut resp = Response::new(Full::new(body).map_err(never).boxed());
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// The request body on its way to a handler, hashed and counted into its [`Entry`] frame by
/// frame, so memory stays bounded whatever the size.
struct RecordingBody {
    inner: Incoming,
    entry: Arc<Mutex<Entry>>,
    shared: Arc<Shared>,
    hasher: Sha256,
    ended: bool,
}

impl RecordingBody {
    fn new(inner: Incoming, entry: Arc<Mutex<Entry>>, shared: Arc<Shared>) -> RecordingBody {
        RecordingBody {
            inner,
            entry,
            shared,
            hasher: Sha256::new(),
            ended: false,
        }
    }

    fn finish(&mut self, complete: bool) {
        if self.ended {
            return;
        }
        self.ended = true;
        {
            let mut e = lock(&self.entry);
            e.rec.body_sha256 = self.hasher.clone().finalize().into();
            e.rec.complete = complete;
            e.rec.ended = true;
        }
        self.shared.changed.notify_waiters();
    }
}

impl Body for RecordingBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.hasher.update(data);
                    let mut e = lock(&this.entry);
                    e.rec.body_len += data.len() as u64;
                    let room = RECORDED_BODY_LIMIT.saturating_sub(e.prefix.len());
                    let keep = room.min(data.len());
                    e.prefix.extend_from_slice(&data[..keep]);
                }
            }
            Poll::Ready(Some(Err(_))) => this.finish(false),
            Poll::Ready(None) => this.finish(true),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for RecordingBody {
    fn drop(&mut self) {
        // A handler may stop polling once hyper reports the end (without a final `None`), or
        // be cut off mid-body (the forge stopping): settle the entry either way.
        let whole = self.inner.is_end_stream();
        self.finish(whole);
    }
}

#[cfg(test)]
#[path = "forge_tests.rs"]
mod tests;
