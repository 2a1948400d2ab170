//! What a request targets (SPEC §3): its class, the project it names, and what it does to it
//! (read a feature, read, write, push). Pure: no I/O; references are resolved to projects by
//! [`crate::resolve`]. It runs on a [`CanonicalPath`], after canonicalisation and before the
//! decision, so every rule here reads the same decoded-once path.
//!
//! Matching mirrors how the forge routes, so that a path is either classified as the forge
//! will serve it or denied: segments are split on literal `/` only and each is decoded once
//! (Grape's Mustermann patterns match `%XX` in literal parts but never treat `%2F` as a
//! separator; Rails' Journey does not route escaped literals at all), ASCII case is folded (a
//! superset of the forge's case-sensitive routes), and trailing slashes are ignored (both
//! `Journey::Router::Utils.normalize_path` and Grape's router strip them).

use std::borrow::Cow;

use http::Method;

use crate::canonical::{percent_decode_segment, CanonicalPath};
use crate::config::{Ref, Route};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    Api,
    Git,
    Registry,
    RegistryLogin,
    JobOwn,
    RunnerOwn,
    RunnerDependency,
    Route,
    Unknown,
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Api => "api",
            Class::Git => "git",
            Class::Registry => "registry",
            Class::RegistryLogin => "registry-login",
            Class::JobOwn => "job-own",
            Class::RunnerOwn => "runner-own",
            Class::RunnerDependency => "runner-dependency",
            Class::Route => "route",
            Class::Unknown => "unknown",
        }
    }
}

/// The project features whose reads public/internal projects open to any job token (§4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Feature {
    Repository,
    Artifacts,
    Packages,
    Registry,
    Releases,
    Environments,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// A read; `Some` when it reads one of the §4.2 features.
    Read(Option<Feature>),
    Write,
    /// Git push (receive-pack, LFS upload, LFS object PUT, LFS lock writes).
    Push,
}

/// How a denial must look so the client reads it as the forge's own answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Shape {
    Api,
    Git,
    Registry,
}

/// One `repository:IMAGE:ACTIONS` scope of a registry token request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryScope {
    /// `repository` or `repository(plugin)`-style type, as sent.
    pub kind: String,
    /// Image path, lower-cased.
    pub image: String,
    /// Actions in order, deduplicated (`pull`, `push`, `delete`, `*`).
    pub actions: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub class: Class,
    /// The project the request names (`api`, `git`), if any.
    pub project: Option<Ref>,
    pub action: Action,
    /// `runner-own` / `runner-dependency`: the job id in the path.
    pub job_id: Option<u64>,
    /// `route`: index into `Config::routes`.
    pub route: Option<usize>,
    /// `registry`: the parsed scopes, and the query parameters passed through.
    pub registry: Option<RegistryRequest>,
    pub shape: Shape,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryRequest {
    pub scopes: Vec<RegistryScope>,
    /// `service`, `account`, `client_id`, `offline_token` as parsed (decoded), in order.
    pub passthrough: Vec<(String, String)>,
}

/// Why a request is refused before any project is looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    /// 400: the request is malformed whatever it carries.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// 404 (a scope denial, relaxed by audit mode): the path cannot be read safely with a job token.
    #[error("not found: {0}")]
    NotFound(&'static str),
}

/// The request parameters that drive classification, parsed by the caller the way Rack 2.2
/// does (query split on `&` and `;`, keys and values form-decoded).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClassParams<'a> {
    /// The single `service` parameter value (conflicting duplicates already refused: 400).
    pub service: Option<&'a str>,
    /// The LFS batch JSON `operation`.
    pub lfs_operation: Option<&'a str>,
    /// Every value of a parameter named exactly `scope`, decoded, in order.
    pub scopes: Vec<&'a str>,
    /// All decoded query parameters, in order: `/jwt/auth` rebuilds its query from them, and
    /// an LFS batch checks that none of them overrides the body's `operation`.
    pub registry_params: Vec<(&'a str, &'a str)>,
}

/// The `service` value under which `/jwt/auth` hands out dependency-proxy tokens, which are
/// group-level and ignore `scope` (`Auth::DependencyProxyAuthenticationService`).
const DEPENDENCY_PROXY: &str = "dependency_proxy";

/// The `/jwt/auth` parameters the rebuilt registry query keeps besides its scopes.
const REGISTRY_PASSTHROUGH: [&str; 4] = ["service", "account", "client_id", "offline_token"];

/// Classifies a canonicalised request (SPEC §3's table).
///
/// With `job_token`, a request whose target cannot be read exactly (a project reference that
/// is neither an id nor a path, a malformed job id) is `Reject::NotFound`. Without one the
/// request is forwarded whatever it is, so the same request classifies as `unknown` and the
/// result only names the class in the log.
///
/// `query` is not read: everything classification needs from the query arrives parsed, in
/// `params`, so that one parser (the caller's, Rack-exact) decides what the forge will see.
pub fn classify(
    method: &Method,
    path: &CanonicalPath,
    query: Option<&str>,
    params: &ClassParams<'_>,
    routes: &[Route],
    job_token: bool,
) -> Result<Target, Reject> {
    let _ = query;
    match classify_fixed(method, path, params, job_token) {
        Ok(Some(target)) => Ok(target),
        Ok(None) => {
            Ok(configured_route(method, path, routes).unwrap_or_else(|| unknown(method, path)))
        }
        Err(why) if job_token => Err(Reject::NotFound(why)),
        Err(_) => Ok(unknown(method, path)),
    }
}

/// One request classified for both readings at once (see [`Classified`]).
///
/// Equivalent to calling [`classify`] with `job_token` false and then true, with the second
/// call skipped when it cannot differ: the two differ only when a fixed shape cannot read its
/// target exactly, or when a segment has a `%` that does not decode (only the strict reading
/// refuses it); for a path with a `%` the strict reading is run separately.
pub fn classify_request(
    method: &Method,
    path: &CanonicalPath,
    params: &ClassParams<'_>,
    routes: &[Route],
) -> Classified {
    match classify_fixed(method, path, params, false) {
        Ok(found) => {
            let lenient = found.unwrap_or_else(|| {
                configured_route(method, path, routes).unwrap_or_else(|| unknown(method, path))
            });
            let strict = if path.raw.contains('%') {
                Some(classify(method, path, None, params, routes, true))
            } else {
                None
            };
            Classified { lenient, strict }
        }
        Err(why) => Classified {
            lenient: unknown(method, path),
            strict: Some(Err(Reject::NotFound(why))),
        },
    }
}

/// A request's class and target read leniently (no job token: only for the log, the
/// denial's shape and the runner routes' job id) and strictly (a job token is present: what
/// the decision uses).
#[derive(Debug)]
pub struct Classified {
    pub lenient: Target,
    /// `None`: the strict reading is `lenient` itself.
    strict: Option<Result<Target, Reject>>,
}

impl Classified {
    /// The strict reading, as [`classify`] with `job_token` gives it.
    pub fn into_strict(self) -> Result<Target, Reject> {
        self.strict.unwrap_or(Ok(self.lenient))
    }
}

/// True iff `s` is a project or job id as scopegate accepts one: `[1-9][0-9]{0,18}`.
///
/// Stricter than the forge on purpose: `lib/api/helpers.rb` tests `INTEGER_ID_REGEX`
/// (`/^-?\d+$/`, line-anchored) and then lets the database cast the string, so `05`, `+5` and
/// `5\njunk` all find project 5. Only the canonical spelling is an id here; every other
/// all-digit reference is refused rather than guessed.
pub fn is_id(s: &str) -> bool {
    let b = s.as_bytes();
    (1..=19).contains(&b.len()) && b[0] != b'0' && b.iter().all(u8::is_ascii_digit)
}

/// Reads an already-decoded project reference: an id (see [`is_id`]), or a full path of at
/// least two segments each `[A-Za-z0-9_][A-Za-z0-9_.-]*`, lower-cased (the forge looks paths
/// up case-insensitively). Anything else is `None`.
pub fn project_ref(s: &str) -> Option<Ref> {
    if is_id(s) {
        return s.parse().ok().map(Ref::Id);
    }
    let mut segments = 0usize;
    for segment in s.split('/') {
        if !is_path_segment(segment) {
            return None;
        }
        segments += 1;
    }
    (segments >= 2).then(|| Ref::Path(s.to_ascii_lowercase()))
}

/// For a Git path naming a wiki or design repository (`/g/p.wiki.git/…`), the project GitLab
/// looks for *first*: `g/p.wiki` itself. `Gitlab::RepoPath.parse` (lib/gitlab/repo_path.rb)
/// tries the plain project type before the suffixed ones, and a project may be named
/// `p.wiki`, so when this resolves to a project the forge serves *that* project, not the
/// wiki of [`Target::project`]; the gateway must then deny (or scope against this one).
/// `None` for every other path.
pub fn repository_shadow(path: &CanonicalPath) -> Option<Ref> {
    // Only a segment ending `.wiki.git` or `.design.git` can shadow, and when the whole path
    // decoded, each decoded segment appears as it is in `lower`: every other request (nearly
    // all) skips the split. (Without a job token an undecodable path keeps its raw spelling
    // in `lower` while single segments may still decode, so that case takes the long way.)
    let whole_path_decoded = !path.raw.contains('%') || path.decoded != path.raw;
    if whole_path_decoded
        && !(path.lower.contains(".wiki.git") || path.lower.contains(".design.git"))
    {
        return None;
    }
    let segments = Segments::new(path, false).ok()?;
    let lower = segments.lower_strs();
    let repo = git_repository(&lower)?;
    match project_ref(&repo.unsuffixed?) {
        Some(r @ Ref::Path(_)) => Some(r),
        _ => None,
    }
}

fn is_path_segment(segment: &str) -> bool {
    let mut bytes = segment.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn is_read(method: &Method) -> bool {
    method == Method::GET || method == Method::HEAD
}

fn method_action(method: &Method) -> Action {
    if is_read(method) {
        Action::Read(None)
    } else {
        Action::Write
    }
}

fn target(class: Class, project: Option<Ref>, action: Action, shape: Shape) -> Target {
    Target {
        class,
        project,
        action,
        job_id: None,
        route: None,
        registry: None,
        shape,
    }
}

fn unknown(method: &Method, path: &CanonicalPath) -> Target {
    target(
        Class::Unknown,
        None,
        method_action(method),
        shape_of_path(&path.lower),
    )
}

/// The shape a refusal must take when there is no [`Target`] to say it (a [`Reject`] from
/// canonicalisation or classification): a denial on a Git path must read like the forge's
/// Git answer (git prints it), one on the registry token endpoint like the registry's.
/// Takes any spelling of the path (raw, decoded, with or without the relative root).
pub fn shape_of_path(path: &str) -> Shape {
    let lower = path.to_ascii_lowercase();
    let lower = lower.trim_end_matches('/');
    let git_endpoint = ["/info/refs", "/git-upload-pack", "/git-receive-pack"]
        .iter()
        .any(|end| lower.ends_with(end));
    if lower.ends_with(".git") || lower.contains(".git/") || git_endpoint {
        return Shape::Git;
    }
    let mut segments = lower.rsplit('/');
    match (segments.next(), segments.next()) {
        (Some(auth), Some("jwt")) if is_jwt_auth(auth) => Shape::Registry,
        _ => Shape::Api,
    }
}

/// The path split on literal `/`, each segment decoded once on its own. An encoded slash
/// stays inside its segment, as it does for the forge's routers, so `%2F` can neither create
/// nor hide a route boundary; only a project reference (`g%2Fp`) reads it as a path.
struct Segments<'p> {
    /// Raw segments after the leading `/`, trailing empty ones dropped.
    raw: Vec<&'p str>,
    /// The same segments, decoded once and ASCII-lowercased. Borrowed from
    /// [`CanonicalPath::lower`] when the path has no `%` (then decoding each segment is the
    /// identity and the whole-path lower-casing already did the rest): the common case copies
    /// nothing.
    lower: Vec<Cow<'p, str>>,
}

impl<'p> Segments<'p> {
    fn new(path: &'p CanonicalPath, job_token: bool) -> Result<Self, &'static str> {
        let raw = split_segments(&path.raw);
        if !path.raw.contains('%') {
            let lower = split_segments(&path.lower);
            // Same bytes up to ASCII case, so the same `/` positions; checked, not assumed.
            if lower.len() == raw.len() {
                return Ok(Segments {
                    raw,
                    lower: lower.into_iter().map(Cow::Borrowed).collect(),
                });
            }
        }
        let mut lower = Vec::with_capacity(raw.len());
        for segment in &raw {
            let decoded = match percent_decode_segment(segment) {
                Some(d) => d,
                // Only reachable without a job token: canonicalize refused it otherwise.
                None if job_token => return Err("invalid percent-encoding"),
                None => Cow::Borrowed(*segment),
            };
            lower.push(lowercase(decoded));
        }
        Ok(Segments { raw, lower })
    }

    fn lower_strs(&self) -> Vec<&str> {
        self.lower.iter().map(|s| s.as_ref()).collect()
    }
}

/// A path's segments after the leading `/`, trailing empty ones dropped.
fn split_segments(path: &str) -> Vec<&str> {
    let body = path.strip_prefix('/').unwrap_or(path);
    let body = body.trim_end_matches('/');
    if body.is_empty() {
        return Vec::new();
    }
    // One pass over bytes into an exactly sized vector: this runs for every request, and
    // `str::split` + `collect` cost several reallocations and a searcher per segment.
    let mut segments = Vec::with_capacity(body.bytes().filter(|&b| b == b'/').count() + 1);
    let mut start = 0;
    for (i, b) in body.bytes().enumerate() {
        if b == b'/' {
            segments.push(&body[start..i]);
            start = i + 1;
        }
    }
    segments.push(&body[start..]);
    segments
}

/// ASCII-lowercased, copying only when something changes.
fn lowercase(s: Cow<'_, str>) -> Cow<'_, str> {
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(s.to_ascii_lowercase())
    } else {
        s
    }
}

/// The classes with a fixed shape, in precedence order. `Ok(None)`: none of them (configured
/// routes, then `unknown`). `Err`: one of them, but its target cannot be read exactly.
fn classify_fixed(
    method: &Method,
    path: &CanonicalPath,
    params: &ClassParams<'_>,
    job_token: bool,
) -> Result<Option<Target>, &'static str> {
    let segments = Segments::new(path, job_token)?;
    let lower = segments.lower_strs();
    match lower.as_slice() {
        ["api", "v4", "projects"] => Ok(Some(unknown(method, path))),
        ["api", "v4", "projects", _, rest @ ..] => {
            let raw_ref = segments.raw.get(3).copied().unwrap_or_default();
            api(method, raw_ref, rest).map(Some)
        }
        ["api", "v4", "job", ..] => Ok(Some(target(
            Class::JobOwn,
            None,
            method_action(method),
            Shape::Api,
        ))),
        ["api", "v4", "jobs", id, rest @ ..] => runner(method, id, rest),
        ["jwt", auth] if is_jwt_auth(auth) => Ok(Some(registry(params))),
        _ => git(method, &lower, params),
    }
}

/// `/api/v4/projects/:ref/…`. The reference is the raw segment decoded once: GitLab expects
/// `g%2Fp` there (Grape's `:id` never spans a literal `/`).
fn api(method: &Method, raw_ref: &str, rest: &[&str]) -> Result<Target, &'static str> {
    let decoded = percent_decode_segment(raw_ref).ok_or("invalid percent-encoding")?;
    let project = project_ref(&decoded).ok_or("project reference is neither an id nor a path")?;
    let action = if is_read(method) {
        Action::Read(api_feature(rest))
    } else {
        Action::Write
    };
    Ok(target(Class::Api, Some(project), action, Shape::Api))
}

/// The §4.2 feature a project API read belongs to (the `*_access_level` that
/// `app/policies/project_policy.rb` consults for job tokens); `None` for every other read,
/// which the allowlist then decides.
fn api_feature(rest: &[&str]) -> Option<Feature> {
    match rest {
        ["repository", ..] => Some(Feature::Repository),
        ["packages", ..] => Some(Feature::Packages),
        ["registry", ..] => Some(Feature::Registry),
        ["releases", ..] => Some(Feature::Releases),
        ["environments", ..] | ["deployments", ..] => Some(Feature::Environments),
        // lib/api/ci/job_artifacts.rb: `jobs/artifacts/:ref_name/download|raw/*path` and
        // `jobs/:job_id/artifacts[/*artifact_path]`.
        ["jobs", "artifacts", _, ..] => Some(Feature::Artifacts),
        ["jobs", id, "artifacts", ..] if is_id(id) => Some(Feature::Artifacts),
        _ => None,
    }
}

/// The runner's calls with the job token, `resource :jobs` in lib/api/ci/runner.rb (and
/// gitlab-runner's network/gitlab.go): update, trace, artifact upload and its authorize,
/// artifact download. No other runner route takes a job id; `POST /jobs/request` uses the
/// runner token. A wrong method is not a runner route, whatever the path.
fn runner(method: &Method, id: &str, rest: &[&str]) -> Result<Option<Target>, &'static str> {
    let (class, action) = match rest {
        [] if method == Method::PUT => (Class::RunnerOwn, Action::Write),
        ["trace"] if method == Method::PATCH => (Class::RunnerOwn, Action::Write),
        ["artifacts"] | ["artifacts", "authorize"] if method == Method::POST => {
            (Class::RunnerOwn, Action::Write)
        }
        // Grape answers HEAD for every GET route.
        ["artifacts"] if is_read(method) => (
            Class::RunnerDependency,
            Action::Read(Some(Feature::Artifacts)),
        ),
        _ => return Ok(None),
    };
    if !is_id(id) {
        return Err("job id is not an id");
    }
    let job_id = id.parse().map_err(|_| "job id is not an id")?;
    Ok(Some(Target {
        job_id: Some(job_id),
        ..target(class, None, action, Shape::Api)
    }))
}

/// `jwt/auth` is a plain Rails route (config/routes.rb: `get 'jwt/auth' => 'jwt#auth'`), so
/// Rails also routes it with a format suffix (`/jwt/auth.json`): classify that the same way,
/// so its scopes are filtered and its query rebuilt like the plain spelling's.
fn is_jwt_auth(segment: &str) -> bool {
    segment == "auth"
        || segment
            .strip_prefix("auth.")
            .is_some_and(|format| !format.is_empty() && !format.contains('.'))
}

/// `/jwt/auth`: the registry token endpoint. Scopes are read as GitLab reads them:
/// `JwtController#scopes_param` takes every `scope` of the query (`Rack::Utils.parse_query`,
/// so repeated keys and `;` separators) and splits each on whitespace (`String#split`, which
/// is also RFC 6749's space-delimited list); `ContainerRegistryAuthenticationService` then
/// parses each one. What GitLab would not grant as a repository scope is dropped here, so the
/// rebuilt query never carries it.
fn registry(params: &ClassParams<'_>) -> Target {
    let words: Vec<&str> = params
        .scopes
        .iter()
        .flat_map(|value| value.split(is_ruby_space))
        .filter(|word| !word.is_empty())
        .collect();
    if words.is_empty() || params.service == Some(DEPENDENCY_PROXY) {
        // `docker login` (no scope: a token without access), or a dependency-proxy token,
        // which is group-level and ignores scopes.
        return target(
            Class::RegistryLogin,
            None,
            Action::Read(None),
            Shape::Registry,
        );
    }
    let scopes: Vec<RegistryScope> = words.into_iter().filter_map(parse_registry_scope).collect();
    let action = if scopes.iter().any(|s| s.actions.iter().any(|a| a != "pull")) {
        Action::Push
    } else {
        Action::Read(Some(Feature::Registry))
    };
    let passthrough = params
        .registry_params
        .iter()
        .filter(|(key, _)| REGISTRY_PASSTHROUGH.contains(key))
        .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
        .collect();
    Target {
        registry: Some(RegistryRequest {
            scopes,
            passthrough,
        }),
        ..target(Class::Registry, None, action, Shape::Registry)
    }
}

/// Ruby's `String#split` with no pattern splits on ASCII whitespace (`rb_isspace`); NUL and
/// non-ASCII spaces are not separators.
fn is_ruby_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r')
}

/// One scope, as `ContainerRegistryAuthenticationService#process_scope` reads it:
/// `type, name, actions = scope.split(':', 3)` (so the actions keep any further `:`),
/// `actions.split(',')`, and only the type `repository` (exact: `case type when
/// 'repository'`; `repository(plugin)` types are not granted, and `registry:catalog:*` is an
/// admin-only instance catalogue, never a job token's). A scope without actions makes GitLab
/// raise (`nil.split`); here it is simply dropped, as is one left with no known action (GitLab
/// grants nothing for it either).
fn parse_registry_scope(scope: &str) -> Option<RegistryScope> {
    let mut parts = scope.splitn(3, ':');
    let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
    if kind != "repository" {
        return None;
    }
    // `ContainerRegistry::Path.new(name)` downcases (Unicode-aware in Ruby; a non-ASCII name
    // is refused here instead, which only ever drops a scope).
    let image = name.to_ascii_lowercase();
    if !is_image_path(&image) {
        return None;
    }
    let mut kept: Vec<String> = Vec::new();
    for action in actions.split(',') {
        // `can_access?` knows exactly these; anything else is never granted.
        if matches!(action, "pull" | "push" | "delete" | "*") && !kept.iter().any(|k| k == action) {
            kept.push(action.to_owned());
        }
    }
    if kept.is_empty() {
        return None;
    }
    Some(RegistryScope {
        kind: kind.to_owned(),
        image,
        actions: kept,
    })
}

/// `ContainerRegistry::Path#valid?` (lib/container_registry/path.rb) on a lower-cased name:
/// `Gitlab::Regex.container_repository_name_regex`
/// (`\A[a-z0-9]+(([._/]|__|-*)[a-z0-9])*\z`), more than one component and fewer than
/// `Namespace::NUMBER_OF_ANCESTORS_ALLOWED` (20).
fn is_image_path(name: &str) -> bool {
    let bytes = name.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !bytes.first().is_some_and(|&b| alnum(b)) || !bytes.last().is_some_and(|&b| alnum(b)) {
        return false;
    }
    // Between alphanumerics, each run of other bytes must be exactly one separator.
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let run = &bytes[start..i];
        if !(matches!(run, b"." | b"_" | b"/" | b"__") || run.iter().all(|&b| b == b'-')) {
            return false;
        }
    }
    (2..20).contains(&name.split('/').count())
}

/// A Git repository path: the project it belongs to, and for `.wiki.git`/`.design.git` the
/// path as a project of its own (see [`repository_shadow`]).
struct GitRepository<'l> {
    project: String,
    unsuffixed: Option<String>,
    /// The segments after the repository (`info/refs`, `info/lfs/…`).
    rest: &'l [&'l str],
}

/// config/routes/git_http.rb: `*namespace_id/:repository_id` with `repository_id` ending in
/// `.git` (a project path segment cannot itself end in `.git`, `Gitlab::PathRegex`'s
/// `NO_SUFFIX_REGEX`, so the first such segment ends the repository path). Without `.git`
/// only the three smart-HTTP endpoints are taken (GitLab redirects `info/refs` to the `.git`
/// spelling; classifying the others too costs nothing).
fn git_repository<'l>(lower: &'l [&'l str]) -> Option<GitRepository<'l>> {
    let with_suffix = lower
        .iter()
        .position(|s| s.strip_suffix(".git").is_some_and(|r| !r.is_empty()));
    if let Some(i) = with_suffix {
        let (namespace, rest) = lower.split_at(i);
        let (repo, rest) = rest.split_first()?;
        let repo = repo.strip_suffix(".git")?;
        let stripped = repo
            .strip_suffix(".wiki")
            .or_else(|| repo.strip_suffix(".design"));
        let join = |last: &str| {
            let mut parts = namespace.to_vec();
            parts.push(last);
            parts.join("/")
        };
        return Some(GitRepository {
            project: join(stripped.unwrap_or(repo)),
            unsuffixed: stripped.map(|_| join(repo)),
            rest,
        });
    }
    let split = match lower {
        [project @ .., "info", "refs"] => project.len(),
        [project @ .., "git-upload-pack" | "git-receive-pack"] => project.len(),
        _ => return None,
    };
    let (project, rest) = lower.split_at(split);
    Some(GitRepository {
        project: project.join("/"),
        unsuffixed: None,
        rest,
    })
}

fn git(
    method: &Method,
    lower: &[&str],
    params: &ClassParams<'_>,
) -> Result<Option<Target>, &'static str> {
    let Some(repo) = git_repository(lower) else {
        return Ok(None);
    };
    let Some(action) = git_action(method, repo.rest, params) else {
        return Ok(None);
    };
    // A Git path names a project by path; an id-like one is not a repository route.
    match project_ref(&repo.project) {
        Some(project @ Ref::Path(_)) => {
            Ok(Some(target(Class::Git, Some(project), action, Shape::Git)))
        }
        _ => Err("repository path is not a project path"),
    }
}

/// What a Git or LFS route does (config/routes/git_http.rb, app/controllers/repositories/).
/// Anything that is not one of GitLab's routes is `None` (left to `unknown`); where the
/// operation is not known for sure it is a push, which is the strictest answer.
fn git_action(method: &Method, rest: &[&str], params: &ClassParams<'_>) -> Option<Action> {
    let read = Action::Read(Some(Feature::Repository));
    let read_or_push = if is_read(method) { read } else { Action::Push };
    Some(match rest {
        ["info", "refs"] => match params.service {
            None | Some("git-upload-pack") => read,
            // `git-receive-pack`, or a service GitLab would not know either.
            Some(_) => Action::Push,
        },
        ["git-upload-pack"] => read,
        ["git-receive-pack"] => Action::Push,
        // LfsApiController#batch: `download` reads, `upload` writes, anything else is not a
        // download. It reads `params[:operation]`, and Rails' params merge the query over the
        // JSON body, so the query must not say otherwise.
        ["info", "lfs", "objects", "batch"] => {
            if params.lfs_operation == Some("download") && query_agrees_on_download(params) {
                read
            } else {
                Action::Push
            }
        }
        // The deprecated pre-batch object API (`post '/'`, `get '/*oid'`).
        ["info", "lfs", "objects", ..] => read_or_push,
        // LfsLocksApiController: `verify` is a POST that only lists.
        ["info", "lfs", "locks", "verify"] => {
            if is_read(method) || method == Method::POST {
                read
            } else {
                Action::Push
            }
        }
        ["info", "lfs", "locks", _, "unlock"] => Action::Push,
        ["info", "lfs", "locks"] | ["info", "lfs", "locks", _] => read_or_push,
        // LfsStorageController: `get '/'` downloads, `put '/*size[/authorize]'` uploads.
        ["gitlab-lfs", "objects", _, ..] => read_or_push,
        _ => return None,
    })
}

/// Every query parameter Rails would read as `operation` (the Rack base name: `operation`,
/// `operation[]`, `[operation]`, …) is exactly `operation=download`. Rails' `params` is
/// `request_parameters.merge(query_parameters)`: a query `operation` replaces the JSON body's.
fn query_agrees_on_download(params: &ClassParams<'_>) -> bool {
    params.registry_params.iter().all(|(key, value)| {
        let base = key.trim_start_matches(['[', ']']);
        let base = &base[..base.find(['[', ']']).unwrap_or(base.len())];
        base != "operation" || (*key == "operation" && *value == "download")
    })
}

/// The first configured route whose methods include `method` (none listed: any) and whose
/// regex matches the decoded path. Config validation keeps routes off the fixed classes.
fn configured_route(method: &Method, path: &CanonicalPath, routes: &[Route]) -> Option<Target> {
    let index = routes.iter().position(|route| {
        (route.methods.is_empty() || route.methods.contains(method))
            && route.path.is_match(&path.decoded)
    })?;
    Some(Target {
        route: Some(index),
        ..target(Class::Route, None, method_action(method), Shape::Api)
    })
}

#[cfg(test)]
#[path = "target_tests.rs"]
mod tests;
