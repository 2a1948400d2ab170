//! The decision (SPEC §3 targets, §4 policy) end to end: the real gateway in front of the
//! recording fake forge. Every denial is proven twice — the client's status and body, and
//! the forge's record showing nothing of the request arrived (`assert_denied`) — and most
//! have an allowed twin, so a denial cannot pass because the harness refuses everything.

mod support;

use scopegate::demo::forge::Recorded;
use support::*;

const API_404: &str = r#"{"message":"404 Project Not Found"}"#;

async fn with_yaml(yaml: &str, service_token: bool) -> Harness {
    let mut opts = Options::new(yaml);
    opts.service_token = service_token;
    Harness::with(opts).await
}

/// `JOB-TOKEN` request with any method and an optional `(content-type, body)`.
async fn job(
    h: &Harness,
    method: &str,
    path: &str,
    token: &str,
    body: Option<(&str, String)>,
) -> reqwest::Response {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut req = h
        .http
        .request(method, h.url(path))
        .header("JOB-TOKEN", token);
    if let Some((ct, body)) = body {
        req = req.header("content-type", ct).body(body);
    }
    req.send().await.expect("request completes")
}

/// The request reached the forge (whatever the forge answered) exactly once, unchanged.
async fn forwarded(h: &Harness, resp: reqwest::Response, path: &str) -> Recorded {
    let rec = h.assert_forwarded(resp).await;
    assert_eq!(rec.uri, path);
    h.forge.clear();
    rec
}

/// A scope denial: 404 in the forge's API shape, and the forge untouched.
async fn denied(h: &Harness, resp: reqwest::Response) {
    let body = h.assert_denied(resp, 404).await;
    assert_eq!(body, API_404);
    h.forge.clear();
}

/// GET with `JOB-TOKEN`, must be forwarded unchanged.
async fn allow_get(h: &Harness, path: &str, token: &str) {
    let r = h.get_job(path, token).await;
    forwarded(h, r, path).await;
}

/// GET with `JOB-TOKEN`, must be a 404 the forge never saw.
async fn deny_get(h: &Harness, path: &str, token: &str) {
    let r = h.get_job(path, token).await;
    denied(h, r).await;
}

async fn deny_post(h: &Harness, path: &str, token: &str) {
    let r = job(h, "POST", path, token, Some(("text/plain", "x".into()))).await;
    denied(h, r).await;
}

async fn allow_post(h: &Harness, path: &str, token: &str) {
    let r = job(h, "POST", path, token, Some(("text/plain", "x".into()))).await;
    forwarded(h, r, path).await;
}

/// One raw HTTP/1.1 request (for paths an URL library would normalise), and its status.
async fn raw_get(h: &Harness, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut req = format!("GET {path} HTTP/1.1\r\nhost: forge.test\r\nconnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let resp = raw(h.gw.addr, req.as_bytes()).await;
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {resp:?}"));
    (status, resp)
}

/// `Authorization: Basic` for `gitlab-ci-token:<token>`, as git sends it.
fn basic(token: &str) -> String {
    use base64::Engine as _;
    let encoded =
        base64::engine::general_purpose::STANDARD.encode(format!("gitlab-ci-token:{token}"));
    format!("Basic {encoded}")
}

async fn metrics(h: &Harness) -> String {
    let admin = h.gw.admin_addr.expect("admin listener");
    let r = h
        .http
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .expect("metrics");
    assert_eq!(r.status(), 200);
    r.text().await.expect("text")
}

// ---- §4 step 1: the job's own project ----

#[tokio::test]
async fn the_jobs_own_project_is_open_for_reads_and_writes() {
    let h = Harness::start().await;
    allow_get(&h, "/api/v4/projects/1/issues", TOK_APP).await;
    allow_get(&h, "/api/v4/projects/g%2Fapp/issues", TOK_APP).await;
    allow_post(&h, "/api/v4/projects/1/issues", TOK_APP).await;
    let r = job(&h, "DELETE", "/api/v4/projects/1/issues/3", TOK_APP, None).await;
    forwarded(&h, r, "/api/v4/projects/1/issues/3").await;
    // A cancelling job's token is still live (its after_script runs).
    allow_get(&h, "/api/v4/projects/1/issues", TOK_CANCELING).await;
    // Another project's job may not do the same.
    deny_get(&h, "/api/v4/projects/1/issues", TOK_OTHER).await;
    deny_post(&h, "/api/v4/projects/1/issues", TOK_OTHER).await;
    h.stop().await;
}

#[tokio::test]
async fn a_finished_jobs_token_is_401_outside_the_runner_routes() {
    let h = Harness::start().await;
    let r = h.get_job("/api/v4/projects/1/issues", TOK_DONE).await;
    assert_eq!(r.headers()["www-authenticate"], "Basic realm=\"GitLab\"");
    let body = h.assert_denied(r, 401).await;
    assert_eq!(body, r#"{"message":"401 Unauthorized"}"#);
    h.stop().await;
}

// ---- §4 step 2: feature reads of public and internal projects ----

#[tokio::test]
async fn public_project_feature_reads_are_open_to_any_job_token() {
    let h = Harness::start().await;
    for path in [
        "/api/v4/projects/3/repository/files/README.md?ref=main",
        "/api/v4/projects/3/repository/tree",
        "/api/v4/projects/3/jobs/artifacts/main/download?job=x",
        "/api/v4/projects/3/jobs/42/artifacts",
        "/api/v4/projects/3/packages",
        "/api/v4/projects/3/packages/generic/p/1.0/f.bin",
        "/api/v4/projects/3/releases",
        "/api/v4/projects/3/environments",
        "/api/v4/projects/3/deployments",
        "/api/v4/projects/g%2Fpublic/releases",
    ] {
        for token in [TOK_OTHER, TOK_EVIL, TOK_APP] {
            allow_get(&h, path, token).await;
        }
    }
    // Every other read goes to the allowlist, which lists nobody.
    deny_get(&h, "/api/v4/projects/3/issues", TOK_OTHER).await;
    deny_get(&h, "/api/v4/projects/3/merge_requests", TOK_OTHER).await;
    deny_get(&h, "/api/v4/projects/3/variables", TOK_APP).await;
    // And every write, feature or not.
    deny_post(&h, "/api/v4/projects/3/issues", TOK_OTHER).await;
    deny_post(&h, "/api/v4/projects/3/releases", TOK_OTHER).await;
    deny_post(&h, "/api/v4/projects/3/repository/files/x", TOK_OTHER).await;
    let r = job(
        &h,
        "PUT",
        "/api/v4/projects/3/packages/generic/p/1.0/f.bin",
        TOK_OTHER,
        None,
    )
    .await;
    denied(&h, r).await;
    h.stop().await;
}

/// g/internal is internal with its repository "only project members".
async fn internal_project_checks(h: &Harness) {
    deny_get(
        h,
        "/api/v4/projects/7/repository/files/README.md?ref=main",
        TOK_OTHER,
    )
    .await;
    deny_get(h, "/api/v4/projects/7/repository/tree", TOK_APP).await;
    let r = h
        .get(
            "/g/internal.git/info/refs?service=git-upload-pack",
            &[("authorization", &basic(TOK_OTHER))],
        )
        .await;
    let body = h.assert_denied(r, 404).await;
    assert!(
        body.starts_with("The project you were looking for"),
        "{body}"
    );
    h.forge.clear();
    allow_get(h, "/api/v4/projects/7/releases", TOK_OTHER).await;
    allow_get(h, "/api/v4/projects/7/packages", TOK_OTHER).await;
    allow_get(
        h,
        "/api/v4/projects/7/jobs/artifacts/main/download?job=x",
        TOK_OTHER,
    )
    .await;
    deny_get(h, "/api/v4/projects/7/issues", TOK_OTHER).await;
}

#[tokio::test]
async fn internal_project_with_a_members_only_repository_with_a_service_token() {
    // The forge says internal, repository_access_level private.
    let h = with_yaml(PROJECTS, true).await;
    internal_project_checks(&h).await;
    h.stop().await;
}

#[tokio::test]
async fn internal_project_with_a_members_only_repository_from_the_config() {
    // Without a service token the config's `visibility: internal` and `features:` speak; an
    // anonymous look-up cannot see an internal project, and that must not turn it private.
    let h = Harness::start().await;
    internal_project_checks(&h).await;
    h.stop().await;
}

#[tokio::test]
async fn a_project_the_config_calls_public_but_the_forge_hides_is_private() {
    // g/other is private at the forge; the config's claim does not open it.
    let yaml = PROJECTS.replacen(
        "  - id: 4\n    path: g/other\n",
        "  - id: 4\n    path: g/other\n    visibility: public\n",
        1,
    );
    assert_ne!(yaml, PROJECTS);
    let h = with_yaml(&yaml, false).await;
    deny_get(&h, "/api/v4/projects/4/releases", TOK_APP).await;
    deny_get(&h, "/api/v4/projects/4/repository/tree", TOK_APP).await;
    allow_get(&h, "/api/v4/projects/4/releases", TOK_OTHER).await;
    h.stop().await;
}

// ---- §4 step 3: the inbound allowlist ----

async fn inbound_checks(h: &Harness) {
    for path in [
        "/api/v4/projects/2/issues",
        "/api/v4/projects/2/repository/files/a?ref=main",
        "/api/v4/projects/g%2Fsecret/variables",
    ] {
        allow_get(h, path, TOK_APP).await;
        allow_get(h, path, TOK_TOOL).await;
        deny_get(h, path, TOK_OTHER).await;
        deny_get(h, path, TOK_EVIL).await;
    }
    allow_post(h, "/api/v4/projects/2/issues", TOK_APP).await;
    allow_post(h, "/api/v4/projects/2/issues", TOK_TOOL).await;
    deny_post(h, "/api/v4/projects/2/issues", TOK_OTHER).await;
    deny_post(h, "/api/v4/projects/2/issues", TOK_EVIL).await;
    // The allowlist is one-way: g/secret is not on g/app's.
    deny_get(h, "/api/v4/projects/1/issues", TOK_SECRET_PROJ).await;
    allow_get(h, "/api/v4/projects/2/issues", TOK_SECRET_PROJ).await;
}

#[tokio::test]
async fn inbound_allowlist_projects_and_groups_by_path_segments() {
    // No service token: `g/trusted` contains g/trusted/sub/tool, not g/trusted-evil/tool.
    let h = Harness::start().await;
    inbound_checks(&h).await;
    h.stop().await;
}

#[tokio::test]
async fn inbound_allowlist_groups_by_ancestor_ids_with_a_service_token() {
    let h = with_yaml(PROJECTS, true).await;
    // S's ancestor groups are looked up with the service token, by id.
    let r = h.get_job("/api/v4/projects/2/issues", TOK_TOOL).await;
    assert_eq!(r.status(), 200);
    let lookups = h.forge.lookups();
    for group in [
        "/api/v4/groups/12",
        "/api/v4/groups/11",
        "/api/v4/groups/10",
    ] {
        assert!(
            lookups
                .iter()
                .any(|r| r.path() == group && r.headers["private-token"] == SERVICE_TOKEN),
            "{group} not looked up: {:?}",
            lookups.iter().map(|r| &r.uri).collect::<Vec<_>>()
        );
    }
    h.forge.clear();
    inbound_checks(&h).await;
    h.stop().await;
}

#[tokio::test]
async fn inbound_allowlist_group_given_by_id() {
    let yaml = PROJECTS.replacen("groups: [g/trusted]", "groups: [11]", 1);
    assert_ne!(yaml, PROJECTS);
    let h = with_yaml(&yaml, true).await;
    inbound_checks(&h).await;
    h.stop().await;
}

#[tokio::test]
async fn inbound_allowlist_switched_off_lets_any_job_token_in() {
    let yaml = PROJECTS.replacen(
        "  - id: 4\n    path: g/other\n",
        "  - id: 4\n    path: g/other\n    inbound: { enabled: false }\n",
        1,
    );
    assert_ne!(yaml, PROJECTS);
    let h = with_yaml(&yaml, false).await;
    for token in [TOK_APP, TOK_EVIL, TOK_TOOL, TOK_SECRET_PROJ] {
        allow_get(&h, "/api/v4/projects/4/issues", token).await;
        allow_post(&h, "/api/v4/projects/4/issues", token).await;
    }
    // Its neighbour, still limited, is not affected.
    deny_get(&h, "/api/v4/projects/2/issues", TOK_OTHER).await;
    h.stop().await;
}

// ---- §4 step 4: the outbound scope ----

const OUTBOUND: &str = r#"
projects:
  - id: 1
    path: g/app
    outbound: { enabled: true, projects: [g/secret] }
  - id: 2
    path: g/secret
    inbound: { projects: [g/app] }
  - id: 3
    path: g/public
    visibility: public
  - id: 4
    path: g/other
    inbound: { enabled: false }
"#;

async fn outbound_checks(h: &Harness) {
    allow_get(h, "/api/v4/projects/2/issues", TOK_APP).await;
    allow_post(h, "/api/v4/projects/2/issues", TOK_APP).await;
    // g/other lets everyone in, but g/app limits where its jobs go.
    deny_get(h, "/api/v4/projects/4/issues", TOK_APP).await;
    deny_get(h, "/api/v4/projects/g%2Fother/repository/tree", TOK_APP).await;
    allow_get(h, "/api/v4/projects/4/issues", TOK_TOOL).await;
    // Public projects are outside the outbound scope's reach: feature reads still work.
    allow_get(h, "/api/v4/projects/3/releases", TOK_APP).await;
    allow_get(h, "/api/v4/projects/3/repository/tree", TOK_APP).await;
    // The job's own project, of course.
    allow_get(h, "/api/v4/projects/1/issues", TOK_APP).await;
}

#[tokio::test]
async fn outbound_scope_limits_where_the_jobs_go() {
    let h = with_yaml(OUTBOUND, false).await;
    outbound_checks(&h).await;
    h.stop().await;
}

#[tokio::test]
async fn outbound_scope_with_a_service_token() {
    let h = with_yaml(OUTBOUND, true).await;
    outbound_checks(&h).await;
    h.stop().await;
}

// ---- §3: project references ----

#[tokio::test]
async fn a_path_reference_is_the_same_project_as_its_id() {
    let h = Harness::start().await;
    for path in [
        "/api/v4/projects/g%2Fsecret/issues",
        "/api/v4/projects/g%2fsecret/issues",
        "/api/v4/projects/G%2FSecret/issues",
        "/api/v4/projects/2/issues",
    ] {
        allow_get(&h, path, TOK_APP).await;
        deny_get(&h, path, TOK_OTHER).await;
    }
    h.stop().await;
}

#[tokio::test]
async fn references_that_are_neither_ids_nor_paths_are_404() {
    let h = Harness::start().await;
    // `05` is project 5 to Grape; not an id here, even for project 5's own job.
    deny_get(&h, "/api/v4/projects/05/issues", TOK_TOOL).await;
    allow_get(&h, "/api/v4/projects/5/issues", TOK_TOOL).await;
    // `2\njunk` is project 2 to Ruby's line-anchored regex.
    deny_get(&h, "/api/v4/projects/2%0Ajunk/issues", TOK_APP).await;
    deny_get(&h, "/api/v4/projects/2%0ajunk", TOK_APP).await;
    // Grape's `:id` never spans a literal slash: `g` is a one-segment reference.
    deny_get(&h, "/api/v4/projects/g/secret/issues", TOK_APP).await;
    deny_get(&h, "/api/v4/projects/g/app/issues", TOK_APP).await;
    deny_get(&h, "/api/v4/projects/+2/issues", TOK_APP).await;
    deny_get(&h, "/api/v4/projects/-2/issues", TOK_APP).await;
    deny_get(&h, "/api/v4/projects/g%2F/issues", TOK_APP).await;
    // Case is folded for matching: no spelling of the route escapes classification.
    deny_get(&h, "/API/V4/Projects/2/issues", TOK_OTHER).await;
    deny_get(&h, "/api/v4/projects/2/", TOK_OTHER).await;
    h.stop().await;
}

#[tokio::test]
async fn odd_paths_are_404_with_a_job_token_and_forwarded_without_one() {
    let h = Harness::start().await;
    let odd = [
        "/api/v4/projects/1/../2/issues",
        "/api/v4/projects/1/./issues",
        "/api/v4/projects/1/%2e%2e/2/issues",
        "/api/v4/projects/1/%2E%2E/2/issues",
        "/api/v4/projects/1/%252e%252e/2/issues",
        "/api/v4/projects/2%252Fx/issues",
        "/api/v4/projects//2/issues",
        "/api/v4/projects/1//issues",
        "/api/v4/projects/1/issues%5C..%5C..%5C2",
        "/api/v4/projects/1\\..\\2/issues",
        "/api/v4/projects/1/issues%00",
        "/api/v4/projects/1/issues%0d%0a",
    ];
    for path in odd {
        // Even project 1's own job: what the forge might read differently is refused.
        let (status, resp) = raw_get(&h, path, &[("JOB-TOKEN", TOK_APP)]).await;
        assert_eq!(status, 404, "{path}: {resp}");
        assert!(resp.ends_with(API_404), "{path}: {resp}");
        h.assert_untouched();
        h.forge.clear();

        // Without a token there is nothing to protect: forwarded, raw path as received.
        let (status, resp) = raw_get(&h, path, &[]).await;
        assert_eq!(status, 200, "{path}: {resp}");
        h.forge.wait_for_requests(1).await;
        let reqs = h.forge.requests();
        assert_eq!(reqs.len(), 1, "{path}");
        assert_eq!(reqs[0].uri, path);
        h.forge.clear();
    }
    // A PAT is no job token either.
    let (status, _) = raw_get(&h, odd[0], &[("PRIVATE-TOKEN", PAT)]).await;
    assert_eq!(status, 200);
    h.forge.clear();
    // The control: the plain spelling with the job token is forwarded.
    let (status, _) = raw_get(&h, "/api/v4/projects/1/issues", &[("JOB-TOKEN", TOK_APP)]).await;
    assert_eq!(status, 200);
    assert_eq!(h.forge.requests().len(), 1);
    h.stop().await;
}

// ---- §3: classes ----

#[tokio::test]
async fn unknown_classes_are_404_with_a_job_token() {
    let h = Harness::start().await;
    for path in [
        "/api/v4/groups/10",
        "/api/v4/groups/10/projects",
        "/api/v4/groups/g%2Ftrusted/variables",
        "/-/profile",
        "/g/secret/-/settings/ci_cd",
        "/api/v4/internal/x",
        "/api/v4/packages/npm/@g/pkg",
        "/api/v4/projects",
        "/api/v4/user",
        "/api/v4/jobs",
        "/api/v4/jobx",
        "/api/v4/runners",
    ] {
        deny_get(&h, path, TOK_APP).await;
        // The same request without a job token is the forge's business.
        let r = h.get(path, &[]).await;
        assert_eq!(h.forge.requests().len(), 1, "{path}");
        drop(r);
        h.forge.clear();
    }
    let query = r#"{"query":"{ project(fullPath: \"g/secret\") { id } }"}"#;
    let r = job(
        &h,
        "POST",
        "/api/graphql",
        TOK_APP,
        Some(("application/json", query.into())),
    )
    .await;
    denied(&h, r).await;
    let r = job(&h, "POST", "/api/graphql", TOK_APP, None).await;
    denied(&h, r).await;
    h.stop().await;
}

#[tokio::test]
async fn job_own_routes_are_forwarded_by_segment() {
    let h = Harness::start().await;
    for token in [TOK_APP, TOK_OTHER, TOK_CANCELING] {
        let r = h.get_job("/api/v4/job", token).await;
        forwarded(&h, r, "/api/v4/job").await;
    }
    allow_get(&h, "/api/v4/job/allowed_agents", TOK_OTHER).await;
    // `jobs` is not `job`, and `jobx` no segment of it.
    deny_get(&h, "/api/v4/jobs", TOK_APP).await;
    deny_get(&h, "/api/v4/jobx", TOK_APP).await;
    deny_get(&h, "/api/v4/jobs/101", TOK_APP).await; // GET is not a runner route
    h.stop().await;
}

#[tokio::test]
async fn runner_routes_are_bound_to_the_tokens_own_job() {
    let h = Harness::start().await;
    // The runner's update: the token in the JSON body.
    let body = serde_json::json!({ "token": TOK_APP, "state": "running" }).to_string();
    let r = h
        .http
        .put(h.url("/api/v4/jobs/101"))
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .expect("request");
    let rec = forwarded(&h, r, "/api/v4/jobs/101").await;
    assert_eq!(
        rec.body,
        body.as_bytes(),
        "the body is forwarded byte for byte"
    );
    assert!(rec.complete);

    // Another job's id.
    let other = serde_json::json!({ "token": TOK_APP, "state": "running" }).to_string();
    let r = h
        .http
        .put(h.url("/api/v4/jobs/999"))
        .header("content-type", "application/json")
        .body(other)
        .send()
        .await
        .expect("request");
    denied(&h, r).await;
    let r = job(&h, "PUT", "/api/v4/jobs/104", TOK_APP, None).await;
    denied(&h, r).await;

    // Artifact upload and its authorize, with JOB-TOKEN.
    for path in [
        "/api/v4/jobs/101/artifacts/authorize",
        "/api/v4/jobs/101/artifacts",
    ] {
        let r = job(
            &h,
            "POST",
            path,
            TOK_APP,
            Some(("application/octet-stream", "zip".into())),
        )
        .await;
        forwarded(&h, r, path).await;
        let other = path.replace("101", "104");
        let r = job(
            &h,
            "POST",
            &other,
            TOK_APP,
            Some(("application/octet-stream", "zip".into())),
        )
        .await;
        denied(&h, r).await;
    }

    // The trace.
    let r = h
        .http
        .patch(h.url("/api/v4/jobs/101/trace"))
        .header("JOB-TOKEN", TOK_APP)
        .header("content-type", "text/plain")
        .header("content-range", "0-4")
        .body("hello")
        .send()
        .await
        .expect("request");
    let rec = forwarded(&h, r, "/api/v4/jobs/101/trace").await;
    assert_eq!(rec.body, "hello");
    let r = h
        .http
        .patch(h.url("/api/v4/jobs/999/trace"))
        .header("JOB-TOKEN", TOK_APP)
        .header("content-type", "text/plain")
        .body("hello")
        .send()
        .await
        .expect("request");
    denied(&h, r).await;
    // Not an id.
    let r = job(&h, "PUT", "/api/v4/jobs/0101", TOK_APP, None).await;
    denied(&h, r).await;
    h.stop().await;
}

#[tokio::test]
async fn a_finished_jobs_token_still_reaches_its_runner_routes() {
    let h = Harness::start().await;
    let body = serde_json::json!({ "token": TOK_DONE, "state": "success" }).to_string();
    let r = h
        .http
        .put(h.url("/api/v4/jobs/108"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("request");
    forwarded(&h, r, "/api/v4/jobs/108").await;
    let r = job(&h, "PUT", "/api/v4/jobs/108", TOK_DONE, None).await;
    forwarded(&h, r, "/api/v4/jobs/108").await;
    let r = job(
        &h,
        "PATCH",
        "/api/v4/jobs/108/trace",
        TOK_DONE,
        Some(("text/plain", "x".into())),
    )
    .await;
    forwarded(&h, r, "/api/v4/jobs/108/trace").await;
    // Elsewhere it is no longer a credential.
    let r = h.get_job("/api/v4/projects/1/issues", TOK_DONE).await;
    h.assert_denied(r, 401).await;
    h.stop().await;
}

#[tokio::test]
async fn dependency_artifacts_are_left_to_the_forge_by_default() {
    let h = Harness::start().await;
    allow_get(&h, "/api/v4/jobs/555/artifacts", TOK_APP).await;
    allow_get(&h, "/api/v4/jobs/101/artifacts", TOK_APP).await;
    allow_get(&h, "/api/v4/jobs/104/artifacts", TOK_APP).await;
    h.stop().await;
}

#[tokio::test]
async fn strict_dependencies_without_a_service_token_allow_only_the_own_job() {
    let yaml = format!("{PROJECTS}runner:\n  dependencies: strict\n");
    let h = with_yaml(&yaml, false).await;
    deny_get(&h, "/api/v4/jobs/555/artifacts", TOK_APP).await;
    deny_get(&h, "/api/v4/jobs/102/artifacts", TOK_APP).await;
    allow_get(&h, "/api/v4/jobs/101/artifacts", TOK_APP).await;
    h.stop().await;
}

#[tokio::test]
async fn strict_dependencies_with_a_service_token_follow_the_jobs_project() {
    let yaml = format!("{PROJECTS}runner:\n  dependencies: strict\n");
    let h = with_yaml(&yaml, true).await;
    // Job 102 belongs to g/app, as does TOK_APP's job.
    allow_get(&h, "/api/v4/jobs/102/artifacts", TOK_APP).await;
    // Job 104 belongs to g/other; job 555 does not exist.
    deny_get(&h, "/api/v4/jobs/104/artifacts", TOK_APP).await;
    deny_get(&h, "/api/v4/jobs/555/artifacts", TOK_APP).await;
    allow_get(&h, "/api/v4/jobs/104/artifacts", TOK_OTHER).await;
    h.stop().await;
}

#[tokio::test]
async fn configured_routes_admit_their_sources_only() {
    let yaml = format!(
        "{PROJECTS}routes:
  - methods: [GET]
    path: '^/api/v4/groups/10/-/packages/maven/'
    sources: {{ projects: [g/app] }}
  - path: '^/api/v4/groups/11/-/packages/maven/'
    sources: {{ groups: [g/trusted] }}
"
    );
    let h = with_yaml(&yaml, false).await;
    let jar = "/api/v4/groups/10/-/packages/maven/com/example/lib/1.0/lib-1.0.jar";
    allow_get(&h, jar, TOK_APP).await;
    deny_get(&h, jar, TOK_OTHER).await;
    deny_get(&h, jar, TOK_TOOL).await;
    // The entry lists GET only.
    let r = job(
        &h,
        "PUT",
        jar,
        TOK_APP,
        Some(("application/octet-stream", "jar".into())),
    )
    .await;
    denied(&h, r).await;
    // Matched from the start of the decoded path.
    deny_get(&h, "/x/api/v4/groups/10/-/packages/maven/a", TOK_APP).await;

    let trusted = "/api/v4/groups/11/-/packages/maven/com/example/lib/1.0/lib-1.0.pom";
    allow_get(&h, trusted, TOK_TOOL).await;
    let r = job(
        &h,
        "PUT",
        trusted,
        TOK_TOOL,
        Some(("application/octet-stream", "pom".into())),
    )
    .await;
    forwarded(&h, r, trusted).await;
    deny_get(&h, trusted, TOK_EVIL).await;
    deny_get(&h, trusted, TOK_APP).await;
    h.stop().await;
}

// ---- modes and answers ----

#[tokio::test]
async fn audit_mode_forwards_would_be_denials_and_counts_them() {
    let yaml = format!("{PROJECTS}mode: audit\n");
    let h = with_yaml(&yaml, false).await;
    allow_get(&h, "/api/v4/projects/2/issues", TOK_OTHER).await;
    allow_get(&h, "/api/v4/groups/10/projects", TOK_APP).await;
    allow_get(&h, "/api/v4/projects/2/issues", TOK_APP).await;
    let m = metrics(&h).await;
    assert!(
        m.lines().any(|l| l.starts_with("scopegate_requests_total{")
            && l.contains("class=\"api\"")
            && l.contains("decision=\"would_deny\"")
            && l.contains("reason=\"not_in_inbound_allowlist\"")
            && l.ends_with(" 1")),
        "{m}"
    );
    assert!(
        m.lines()
            .any(|l| l.contains("class=\"unknown\"") && l.contains("decision=\"would_deny\"")),
        "{m}"
    );
    assert!(
        m.lines()
            .any(|l| l.contains("decision=\"allow\"")
                && l.contains("reason=\"inbound_allowlisted\"")),
        "{m}"
    );
    // 401 stays 401.
    let r = h.get_job("/api/v4/projects/1/issues", TOK_DONE).await;
    h.assert_denied(r, 401).await;
    h.stop().await;
}

#[tokio::test]
async fn enforce_mode_counts_denials_as_deny() {
    let h = Harness::start().await;
    deny_get(&h, "/api/v4/projects/2/issues", TOK_OTHER).await;
    let m = metrics(&h).await;
    assert!(
        m.lines().any(|l| l.contains("decision=\"deny\"")
            && l.contains("reason=\"not_in_inbound_allowlist\"")),
        "{m}"
    );
    assert!(!m.contains("would_deny"), "{m}");
    h.stop().await;
}

#[tokio::test]
async fn deny_response_forbidden_answers_like_gitlab_17() {
    let yaml = format!("{PROJECTS}deny_response: forbidden\n");
    let h = with_yaml(&yaml, false).await;
    let r = h.get_job("/api/v4/projects/2/issues", TOK_OTHER).await;
    assert_eq!(r.headers()["content-type"], "application/json");
    let body = h.assert_denied(r, 403).await;
    assert_eq!(
        body,
        r#"{"message":"403 Forbidden - Authentication by CI/CD job token not allowed from g/other to g/secret."}"#
    );
    h.forge.clear();
    let r = h
        .get_job("/api/v4/projects/g%2Fsecret/issues", TOK_EVIL)
        .await;
    let body = h.assert_denied(r, 403).await;
    assert_eq!(
        body,
        r#"{"message":"403 Forbidden - Authentication by CI/CD job token not allowed from g/trusted-evil/tool to g/secret."}"#
    );
    h.forge.clear();
    allow_get(&h, "/api/v4/projects/2/issues", TOK_APP).await;
    h.stop().await;
}

/// Status, headers (but `date` and `x-request-id`, which differ per request by design) and
/// body.
async fn snapshot(resp: reqwest::Response) -> (u16, Vec<(String, String)>, bytes::Bytes) {
    let status = resp.status().as_u16();
    let mut headers: Vec<(String, String)> = resp
        .headers()
        .iter()
        .filter(|(k, _)| k.as_str() != "date" && k.as_str() != "x-request-id")
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("?").to_owned()))
        .collect();
    headers.sort();
    (status, headers, resp.bytes().await.expect("body"))
}

#[tokio::test]
async fn a_denial_does_not_reveal_whether_the_project_exists() {
    let h = Harness::start().await;
    let mut answers = Vec::new();
    for path in [
        "/api/v4/projects/2/issues",
        "/api/v4/projects/999/issues",
        "/api/v4/projects/g%2Fsecret/issues",
        "/api/v4/projects/g%2Fnope/issues",
    ] {
        let r = h.get_job(path, TOK_OTHER).await;
        h.assert_untouched();
        answers.push((path, snapshot(r).await));
    }
    let (_, first) = &answers[0];
    assert_eq!(first.0, 404);
    assert_eq!(first.2, API_404.as_bytes());
    for (path, a) in &answers {
        assert_eq!(a, first, "{path}");
    }

    let auth = basic(TOK_OTHER);
    let mut git = Vec::new();
    for path in [
        "/g/secret.git/info/refs?service=git-upload-pack",
        "/g/nope.git/info/refs?service=git-upload-pack",
    ] {
        let r = h.get(path, &[("authorization", &auth)]).await;
        h.assert_untouched();
        git.push(snapshot(r).await);
    }
    assert_eq!(git[0].0, 404);
    assert_eq!(git[0], git[1]);
    h.stop().await;
}

#[tokio::test]
async fn a_forge_failure_while_resolving_the_target_is_503() {
    // The fake forge cannot be told to fail project look-ups (only `/api/v4/job`), so the
    // forge goes away instead, after the job token and the job's own project are cached.
    let h = with_yaml(PROJECTS, true).await;
    allow_get(&h, "/api/v4/projects/1/issues", TOK_APP).await;
    let Harness {
        forge,
        gw,
        http,
        base,
        git: _git,
    } = h;
    forge.stop().await;

    // Everything about this one is cached: it is decided and forwarded, and the forward fails.
    let r = http
        .get(format!("{base}/api/v4/projects/1/issues"))
        .header("JOB-TOKEN", TOK_APP)
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 502);
    // g/secret was never looked up: the look-up fails, so nothing is forwarded (a forwarded
    // request would be a 502 like the one above).
    let r = http
        .get(format!("{base}/api/v4/projects/2/issues"))
        .header("JOB-TOKEN", TOK_APP)
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 503);
    assert_eq!(
        r.text().await.expect("body"),
        r#"{"message":"503 Service Unavailable"}"#
    );
    gw.shutdown().await;
}
