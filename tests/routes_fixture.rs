//! Proof against the forge's own routes (issue 4): `tests/fixtures/gitlab-job-token-routes.tsv`
//! lists every GitLab route that accepts a CI/CD job token, read from GitLab's source, with the
//! place its real client puts the token and the class, target and action scopegate must give it.
//!
//! Every row is checked twice:
//! - purely: `canonicalize` + `classify` (job token present) give the row's class, target and
//!   action;
//! - end to end, through the real gateway in front of the recording fake forge, with the token
//!   where the client sends it: g/app's token (allowed into g/secret) is forwarded, or refused
//!   where the class refuses by design (`unknown` 404, a push 403); g/other's token is a 404
//!   the forge never saw, except for the classes forwarded by design. Both are sent as a
//!   `glcbt-` token and as a prefix-less legacy one, so no slot is found by its prefix alone.
//!   Push rows are also sent with g/secret's own token, which `git_push: true` lets through,
//!   so a push row cannot pass because the gateway refuses everything.
//!
//! Every failure is collected and reported at once, with the row and the GitLab file it came
//! from.

mod support;

use std::fmt::Write as _;
use std::time::Duration;

use base64::Engine as _;
use http::Method;
use scopegate::canonical::canonicalize;
use scopegate::config::Ref;
use scopegate::credentials::{parse_query, Param};
use scopegate::demo::forge::FakeJob;
use scopegate::target::{classify, Action, ClassParams, Feature, Target};
use serde_json::Value;
use support::*;

const FIXTURE: &str = include_str!("fixtures/gitlab-job-token-routes.tsv");

/// How long a forwarded or aborted body may take to end at the forge before the row fails
/// (a bound on a hang, not a synchronisation: the wait itself is event-driven).
const BODY_END_BOUND: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
struct Row {
    line: usize,
    method: String,
    path: String,
    token_in: Vec<String>,
    class: String,
    target: String,
    action: String,
    source: String,
    body: String,
}

impl Row {
    fn describe(&self) -> String {
        format!(
            "line {}: {} {} [{}] ({})",
            self.line,
            self.method,
            self.path,
            self.token_in.join("+"),
            self.source
        )
    }

    fn path_only(&self) -> &str {
        self.path.split('?').next().unwrap_or_default()
    }

    fn query(&self) -> Option<&str> {
        self.path.split_once('?').map(|(_, q)| q)
    }
}

fn rows() -> Vec<Row> {
    let mut out = Vec::new();
    let mut header_seen = false;
    for (i, line) in FIXTURE.lines().enumerate() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let cols: Vec<&str> = line.split('\t').collect();
        if !header_seen {
            assert_eq!(
                cols,
                ["method", "path", "token_in", "class", "target", "action", "source", "body"],
                "fixture header"
            );
            header_seen = true;
            continue;
        }
        assert_eq!(cols.len(), 8, "line {}: {line:?}", i + 1);
        out.push(Row {
            line: i + 1,
            method: cols[0].to_owned(),
            path: cols[1].to_owned(),
            token_in: cols[2].split('+').map(str::to_owned).collect(),
            class: cols[3].to_owned(),
            target: cols[4].to_owned(),
            action: cols[5].to_owned(),
            source: cols[6].to_owned(),
            body: cols[7].to_owned(),
        });
    }
    out
}

#[test]
fn the_fixture_is_well_formed() {
    let rows = rows();
    assert!(rows.len() >= 150, "only {} rows", rows.len());
    let classes = [
        "api",
        "git",
        "registry",
        "registry-login",
        "job-own",
        "runner-own",
        "runner-dependency",
        "unknown",
    ];
    for row in &rows {
        assert!(classes.contains(&row.class.as_str()), "{}", row.describe());
        assert!(
            row.path.starts_with('/') && !row.path.contains(char::is_whitespace),
            "{}",
            row.describe()
        );
        assert!(
            row.action == "read"
                || row.action == "write"
                || row.action == "push"
                || row.action.starts_with("read-feature:"),
            "{}",
            row.describe()
        );
        assert!(!row.source.is_empty(), "{}", row.describe());
        for loc in &row.token_in {
            assert!(
                [
                    "header:",
                    "query:",
                    "json:",
                    "form:",
                    "multipart:",
                    "bearer-jwt:",
                    "query-jwt:",
                    "bearer-agent:"
                ]
                .iter()
                .any(|p| loc.starts_with(p))
                    || ["basic", "basic-any", "bearer", "authorization"].contains(&loc.as_str()),
                "unknown token location {loc:?}: {}",
                row.describe()
            );
        }
    }
}

// ------------------------------------------------------------------------------------------
// (a) The pure check.
// ------------------------------------------------------------------------------------------

fn feature_name(f: Feature) -> &'static str {
    match f {
        Feature::Repository => "repository",
        Feature::Artifacts => "artifacts",
        Feature::Packages => "packages",
        Feature::Registry => "registry",
        Feature::Releases => "releases",
        Feature::Environments => "environments",
    }
}

fn action_name(a: Action) -> String {
    match a {
        Action::Read(Some(f)) => format!("read-feature:{}", feature_name(f)),
        Action::Read(None) => "read".into(),
        Action::Write => "write".into(),
        Action::Push => "push".into(),
    }
}

/// What the row names as the target, in the form the row writes it.
fn target_name(t: &Target) -> String {
    if let Some(registry) = &t.registry {
        // The images; the row names the project that owns them (a prefix of each).
        return registry
            .scopes
            .iter()
            .map(|s| s.image.clone())
            .collect::<Vec<_>>()
            .join(",");
    }
    match &t.project {
        Some(Ref::Id(id)) => id.to_string(),
        Some(Ref::Path(p)) => p.clone(),
        None => "-".into(),
    }
}

/// The LFS batch `operation` of a JSON body, as the gateway reads it.
fn lfs_operation(row: &Row) -> Option<String> {
    let json = row.body.strip_prefix("json:")?;
    let v: Value = serde_json::from_str(json).ok()?;
    v.get("operation")?.as_str().map(str::to_owned)
}

/// What classification reads from the query (and an LFS batch body's `operation`), as the
/// gateway passes it: the last `service` (Rack keeps the last), every `scope`, every pair.
fn class_params<'a>(params: &'a [Param], lfs_operation: Option<&'a str>) -> ClassParams<'a> {
    ClassParams {
        service: params
            .iter()
            .rfind(|p| p.name == "service")
            .map(|p| p.value.as_str()),
        lfs_operation,
        scopes: params
            .iter()
            .filter(|p| p.name == "scope")
            .map(|p| p.value.as_str())
            .collect(),
        registry_params: params
            .iter()
            .map(|p| (p.name.as_str(), p.value.as_str()))
            .collect(),
    }
}

fn pure_check(row: &Row) -> Result<(), String> {
    let method = Method::from_bytes(row.method.as_bytes()).map_err(|e| e.to_string())?;
    let path = canonicalize(row.path_only(), "", true)
        .map_err(|e| format!("canonicalize refused it: {e}"))?;
    let params = row.query().map(parse_query).unwrap_or_default();
    let operation = lfs_operation(row);
    let class_params = class_params(&params, operation.as_deref());
    let t = classify(&method, &path, row.query(), &class_params, &[], true)
        .map_err(|e| format!("classify refused it: {e}"))?;
    let mut wrong = Vec::new();
    if t.class.as_str() != row.class {
        wrong.push(format!("class {} (want {})", t.class.as_str(), row.class));
    }
    let target = target_name(&t);
    let target_ok = if t.registry.is_some() {
        !target.is_empty()
            && target
                .split(',')
                .all(|image| image == row.target || image.starts_with(&format!("{}/", row.target)))
    } else {
        target == row.target
    };
    if !target_ok {
        wrong.push(format!("target {target} (want {})", row.target));
    }
    let action = action_name(t.action);
    if action != row.action {
        wrong.push(format!("action {action} (want {})", row.action));
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(wrong.join(", "))
    }
}

#[test]
fn every_route_classifies_as_the_fixture_says() {
    let mut failures = String::new();
    let rows = rows();
    for row in &rows {
        if let Err(why) = pure_check(row) {
            let _ = writeln!(failures, "{}: {why}", row.describe());
        }
    }
    assert!(
        failures.is_empty(),
        "rows that scopegate classifies otherwise:\n{failures}"
    );
}

/// The gateway reads a path once: strictly first, then leniently only if the strict reading
/// refuses it, and classifies once for both readings (`classify_request`). It must give
/// exactly what reading and classifying twice gives (lenient for the log, the denial shape and
/// the runner job id; strict for the decision), on every fixture row and on the spellings
/// that split the two readings: encodings, dot segments, doubled slashes, control bytes,
/// digit references that are not ids, case, a relative URL root, and a configured route.
#[test]
fn one_reading_of_the_path_equals_two() {
    use scopegate::target::classify_request;
    let config = scopegate::config::Config::from_yaml_str(
        "upstream: { url: \"http://127.0.0.1:1\" }\nroutes:\n  - methods: [GET]\n    path: '^/api/v4/groups/42/-/packages/maven/'\n    sources: { projects: [g/build] }\n",
        std::path::Path::new("inline.yaml"),
    )
    .expect("config");
    let mut paths: Vec<(String, String, Option<String>)> = Vec::new();
    for row in rows() {
        let p = row.path_only().to_owned();
        let query = row.query().map(str::to_owned);
        let variants = [
            p.clone(),
            p.to_ascii_uppercase(),
            p.replacen('/', "//", 2),
            p.replace("/g/", "/g%2F"),
            p.replace("/g/", "/g/./"),
            p.replace("/g/", "/g/../"),
            p.replace("projects/1", "projects/01"),
            p.replace("projects/1", "projects/1%0Ajunk"),
            p.replace("projects/1", "projects/%31"),
            p.replace("projects/1", "projects/g%2Fsecret"),
            p.replace("app", "%61pp"),
            p.replace("app", "a%ZZpp"),
            p.replace("app", "a%C3pp"),
            p.replace("app", "a%5Cpp"),
            format!("{p}/"),
            format!("/gitlab{p}"),
        ];
        for v in variants {
            paths.push((row.method.clone(), v, query.clone()));
        }
    }
    for (m, p) in [
        ("GET", "/api/v4/groups/42/-/packages/maven/a/b.jar"),
        ("GET", "/api/v4/groups/42/-/packages/maven/%2e%2e/b.jar"),
        ("PUT", "/api/v4/groups/42/-/packages/maven/a/b.jar"),
        ("GET", "/"),
        ("GET", "/api/v4/projects"),
        ("GET", "/api/v4/projects/"),
        ("PUT", "/api/v4/jobs/7"),
        ("PUT", "/api/v4/jobs/07"),
        ("GET", "/api/v4/jobs/7/artifacts"),
        ("GET", "/api/v4/job/%2e%2e/projects/2"),
    ] {
        paths.push((m.to_owned(), p.to_owned(), None));
        paths.push((m.to_owned(), format!("/gitlab{p}"), None));
    }
    let mut checked = 0;
    for root in ["", "/gitlab"] {
        for (method, raw, query) in &paths {
            let method = Method::from_bytes(method.as_bytes()).expect("method");
            let parsed = query.as_deref().map(parse_query).unwrap_or_default();
            let params = class_params(&parsed, None);
            // Reading twice, as the gateway did.
            let lenient_path = canonicalize(raw, root, false);
            let strict_twice = canonicalize(raw, root, true).and_then(|p| {
                classify(&method, &p, None, &params, &config.routes, true)
                    .map(|t| (t, scopegate::target::repository_shadow(&p)))
            });
            // Reading once.
            let (path, strict_path) = match canonicalize(raw, root, true) {
                Ok(p) => (Ok(p), Ok(())),
                Err(e) => (canonicalize(raw, root, false), Err(e)),
            };
            assert_eq!(path, lenient_path, "{root} {raw}: lenient path");
            let Ok(path) = path else {
                continue;
            };
            let lenient_twice = classify(&method, &path, None, &params, &config.routes, false);
            let once = classify_request(&method, &path, &params, &config.routes);
            assert_eq!(
                Ok(&once.lenient),
                lenient_twice.as_ref(),
                "{root} {raw}: lenient"
            );
            let strict_once = strict_path.and_then(|()| {
                once.into_strict()
                    .map(|t| (t, scopegate::target::repository_shadow(&path)))
            });
            assert_eq!(strict_once, strict_twice, "{root} {raw}: strict");
            checked += 1;
        }
    }
    assert!(checked > 5000, "only {checked} spellings compared");
}

// ------------------------------------------------------------------------------------------
// (b) End to end.
// ------------------------------------------------------------------------------------------

/// g/secret (id 2) lets g/app in; its own jobs may push (`git_push`), so a push row has an
/// allowed twin.
const YAML: &str = r#"
projects:
  - id: 1
    path: g/app
  - id: 2
    path: g/secret
    inbound:
      projects: [g/app]
    git_push: true
  - id: 4
    path: g/other
"#;

/// A JWT (unverified by the gateway) whose payload claim `claim` is `token`.
fn jwt(claim: &str, token: &str) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let payload = serde_json::json!({ claim: token, "user_id": 1, "exp": 4102444800u64 });
    format!(
        "{}.{}.{}",
        b64(r#"{"alg":"HS256","typ":"JWT"}"#),
        b64(&payload.to_string()),
        b64("not-a-signature")
    )
}

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

fn add_query(path: &str, key: &str, value: &str) -> String {
    let sep = if path.contains('?') { '&' } else { '?' };
    format!("{path}{sep}{key}={value}")
}

/// Form fields of a `multipart:`/`form:` body description (`-`: none).
fn fields(spec: &str) -> Vec<(String, String)> {
    if spec == "-" || spec.is_empty() {
        return Vec::new();
    }
    parse_query(spec)
        .into_iter()
        .map(|p| (p.name, p.value))
        .collect()
}

/// Builds the row's request with `token` wherever the row's client puts it.
fn request(h: &Harness, row: &Row, token: &str) -> reqwest::RequestBuilder {
    let method = reqwest::Method::from_bytes(row.method.as_bytes()).expect("method");
    let mut path = row.path.clone();
    let mut headers: Vec<(String, String)> = Vec::new();
    let mut json_fields: Vec<(String, String)> = Vec::new();
    let mut form_fields: Vec<(String, String)> = Vec::new();
    let mut multipart_fields: Vec<(String, String)> = Vec::new();
    for loc in &row.token_in {
        let (kind, name) = loc.split_once(':').unwrap_or((loc.as_str(), ""));
        match kind {
            "header" => headers.push((name.into(), token.into())),
            "query" => path = add_query(&path, name, token),
            "json" => json_fields.push((name.into(), token.into())),
            "form" => form_fields.push((name.into(), token.into())),
            "multipart" => multipart_fields.push((name.into(), token.into())),
            "basic" => headers.push(("Authorization".into(), basic("gitlab-ci-token", token))),
            "basic-any" => headers.push(("Authorization".into(), basic("deployer", token))),
            "bearer" => headers.push(("Authorization".into(), format!("Bearer {token}"))),
            "authorization" => headers.push(("Authorization".into(), token.into())),
            "bearer-jwt" => headers.push((
                "Authorization".into(),
                format!("Bearer {}", jwt(name, token)),
            )),
            "query-jwt" => path = add_query(&path, name, &jwt("token", token)),
            "bearer-agent" => {
                headers.push(("Authorization".into(), format!("Bearer ci:{name}:{token}")))
            }
            other => panic!("unknown token location {other}: {}", row.describe()),
        }
    }
    let mut req = h.http.request(method, h.url(&path));
    for (k, v) in &headers {
        req = req.header(k.as_str(), v.as_str());
    }

    let (kind, spec) = row.body.split_once(':').unwrap_or(("-", ""));
    let kind = if kind == "-" {
        // No body of its own: the token's body location decides.
        if !json_fields.is_empty() {
            "json"
        } else if !form_fields.is_empty() {
            "form"
        } else if !multipart_fields.is_empty() {
            "multipart"
        } else {
            "-"
        }
    } else {
        kind
    };
    for (fields_kind, fields) in [
        ("json", &json_fields),
        ("form", &form_fields),
        ("multipart", &multipart_fields),
    ] {
        assert!(
            fields.is_empty() || fields_kind == kind,
            "a {fields_kind} token in a {kind} body: {}",
            row.describe()
        );
    }
    match kind {
        "json" => {
            let mut value: Value = if spec.is_empty() {
                Value::Object(Default::default())
            } else {
                serde_json::from_str(spec).unwrap_or_else(|e| panic!("{}: {e}", row.describe()))
            };
            if let Value::Object(map) = &mut value {
                for (k, v) in json_fields {
                    map.insert(k, Value::String(v));
                }
            } else {
                assert!(json_fields.is_empty(), "{}", row.describe());
            }
            let ct = if row.path.contains("/info/lfs/") {
                "application/vnd.git-lfs+json"
            } else {
                "application/json"
            };
            req.header("content-type", ct).body(value.to_string())
        }
        "form" => {
            let mut pairs = fields(spec);
            pairs.extend(form_fields);
            let body = pairs
                .iter()
                .map(|(k, v)| format!("{}={}", urlencode(k), urlencode(v)))
                .collect::<Vec<_>>()
                .join("&");
            req.header("content-type", "application/x-www-form-urlencoded")
                .body(body)
        }
        "multipart" => {
            let mut form = reqwest::multipart::Form::new();
            for (k, v) in fields(spec).into_iter().chain(multipart_fields) {
                form = form.text(k, v);
            }
            let file = reqwest::multipart::Part::bytes(b"PK\x03\x04 payload".to_vec())
                .file_name("payload.bin")
                .mime_str("application/octet-stream")
                .expect("mime");
            req.multipart(form.part("file", file))
        }
        _ if matches!(row.method.as_str(), "GET" | "HEAD" | "DELETE") => req,
        _ => req
            .header("content-type", "application/octet-stream")
            .body("opaque payload bytes"),
    }
}

fn urlencode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Forwarded,
    Denied(u16),
}

/// A job token the rows are sent with.
#[derive(Debug, Clone, Copy)]
struct Source {
    name: &'static str,
    token: &'static str,
    job: u64,
    /// On g/secret's inbound allowlist.
    allowed: bool,
}

/// A prefix-less job token of g/other, the kind GitLab issued before `glcbt-`: detection must
/// not lean on the prefix anywhere.
const LEGACY_OTHER: &str = "LegacyJobTokenOther987654";
const JOB_LEGACY_OTHER: u64 = 110;

const SOURCES: [Source; 4] = [
    Source {
        name: "g/app",
        token: TOK_APP,
        job: JOB_APP,
        allowed: true,
    },
    Source {
        name: "g/other",
        token: TOK_OTHER,
        job: 104,
        allowed: false,
    },
    Source {
        name: "g/app (legacy token)",
        token: LEGACY_APP,
        job: 102,
        allowed: true,
    },
    Source {
        name: "g/other (legacy token)",
        token: LEGACY_OTHER,
        job: JOB_LEGACY_OTHER,
        allowed: false,
    },
];

/// The job id of a runner route (`/api/v4/jobs/:id/...`).
fn runner_job_id(row: &Row) -> Option<u64> {
    row.path_only()
        .strip_prefix("/api/v4/jobs/")?
        .split('/')
        .next()?
        .parse()
        .ok()
}

/// Whether any registry scope of the row asks to pull (what survives filtering for a token
/// from another project).
fn registry_pulls(row: &Row) -> bool {
    row.query()
        .map(parse_query)
        .unwrap_or_default()
        .iter()
        .filter(|p| p.name == "scope")
        .flat_map(|p| {
            p.value
                .split_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .any(|scope| {
            scope
                .splitn(3, ':')
                .nth(2)
                .is_some_and(|actions| actions.split(',').any(|a| a == "pull"))
        })
}

/// What `source`'s token must get on `row` (targets are g/secret, which lets g/app in).
fn expect(row: &Row, source: &Source) -> Expect {
    match (row.class.as_str(), row.action.as_str()) {
        // Forwarded by design: the job's own data, group-level registry logins, and the
        // dependency downloads the forge itself binds to the token's job.
        ("job-own" | "registry-login" | "runner-dependency", _) => Expect::Forwarded,
        ("runner-own", _) if runner_job_id(row) == Some(source.job) => Expect::Forwarded,
        ("runner-own" | "unknown", _) => Expect::Denied(404),
        _ if !source.allowed => Expect::Denied(404),
        // In scope, but only a project's own jobs push.
        ("git", "push") => Expect::Denied(403),
        ("registry", "push") if !registry_pulls(row) => Expect::Denied(404),
        _ => Expect::Forwarded,
    }
}

async fn check(h: &Harness, row: &Row, who: &str, token: &str, want: Expect) -> Result<(), String> {
    h.forge.clear();
    let resp = request(h, row, token)
        .send()
        .await
        .map_err(|e| format!("{who}: request failed: {e}"))?;
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap_or_default();
    // Wait (event-driven, bounded) until every body the forge received has ended, so a
    // forwarded body is known complete and an aborted one known incomplete.
    let ended = tokio::time::timeout(
        BODY_END_BOUND,
        h.forge.wait_until(|reqs, _| reqs.iter().all(|r| r.ended)),
    )
    .await;
    let reqs = h.forge.requests();
    if ended.is_err() {
        return Err(format!("{who}: a body never ended at the forge"));
    }
    let seen: Vec<String> = reqs
        .iter()
        .map(|r| format!("{} {} complete={}", r.method, r.uri, r.complete))
        .collect();
    match want {
        Expect::Forwarded => {
            let [rec] = reqs.as_slice() else {
                return Err(format!(
                    "{who}: want forwarded once; got {status} {body:?}, forge saw {seen:?}"
                ));
            };
            if rec.path() != row.path_only() || rec.method.as_str() != row.method {
                return Err(format!("{who}: forwarded as {seen:?}"));
            }
            if !rec.complete {
                return Err(format!("{who}: forwarded body incomplete: {seen:?}"));
            }
            Ok(())
        }
        Expect::Denied(code) => {
            if status != code {
                return Err(format!(
                    "{who}: want {code}, got {status} {body:?} (forge saw {seen:?})"
                ));
            }
            // Untouched: nothing, or (a token found late in a streamed multipart body) only
            // requests the gateway aborted before their last byte.
            let late_scan = row.token_in.iter().all(|l| l.starts_with("multipart:"));
            if !(reqs.is_empty() || late_scan && reqs.iter().all(|r| !r.complete)) {
                return Err(format!("{who}: denied {code} but the forge saw {seen:?}"));
            }
            Ok(())
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_is_scoped_end_to_end() {
    let mut opts = Options::new(YAML);
    opts.data
        .jobs
        .push(FakeJob::new(LEGACY_OTHER, JOB_LEGACY_OTHER, "running", 4));
    let h = Harness::with(opts).await;
    let rows = rows();
    let mut failures = String::new();
    let mut checks = 0usize;
    for row in &rows {
        let mut cases: Vec<(&str, &str, Expect)> = SOURCES
            .iter()
            .map(|s| (s.name, s.token, expect(row, s)))
            .collect();
        if row.action == "push" {
            // g/secret's own job: git_push lets it push, and a registry push to its own
            // project is always allowed.
            cases.push(("g/secret", TOK_SECRET_PROJ, Expect::Forwarded));
        }
        for (who, token, want) in cases {
            checks += 1;
            if let Err(why) = check(&h, row, who, token, want).await {
                let _ = writeln!(failures, "{}: {why}", row.describe());
            }
        }
    }
    h.stop().await;
    assert!(
        failures.is_empty(),
        "{} of {checks} checks failed:\n{failures}",
        failures.lines().count()
    );
}
