//! Every door of SPEC §3 beyond the plain project API (issue 4, "Doors" 2–6): the runner's
//! own routes, the container registry's token endpoint, Git LFS and the wiki/design
//! repositories, every package manager's project-level routes in its real client's
//! credential shape, and the group/instance-level package endpoints. All through the real
//! gateway in front of the recording fake forge: an allowed request is checked against what
//! the forge received (method, path and query, credentials, body bytes), a denial twice —
//! the client's status and body, and the forge's record holding nothing of it.
//!
//! Where the GitLab routes come from (`gitlabhq/gitlabhq`): `lib/api/generic_packages.rb`,
//! `maven_packages.rb`, `npm_project_packages.rb`, `pypi_packages.rb`,
//! `nuget_project_packages.rb`, `composer_packages.rb`, `conan_project_packages.rb` with
//! `concerns/packages/conan_endpoints.rb` (and `lib/gitlab/conan_token.rb` for the JWT),
//! `debian_project_packages.rb` with `concerns/packages/debian_package_endpoints.rb`,
//! `helm_packages.rb`, `rubygem_packages.rb`, `cargo_project_packages.rb`, `go_proxy.rb`,
//! `terraform/modules/v1/{project,namespace}_packages.rb` (and
//! `lib/gitlab/terraform_registry_token.rb`), `terraform/state.rb`; the token locations in
//! `lib/gitlab/api_authentication/token_locator.rb` and `token_resolver.rb`; the registry's
//! scope parsing in `app/controllers/jwt_controller.rb` (`scopes_param`).
//!
//! Push opt-in (`git_push: true`, item 6) is proven with real `git` in `tests/git.rs`; the
//! runner's own routes are also covered route by route in `tests/policy.rs`. This file adds
//! what those do not: every runner route in every job status, the LFS routes git.rs leaves
//! out, and everything else above.

#[path = "support/slots.rs"]
mod slots;
mod support;

use scopegate::demo::forge::Recorded;
use serde_json::json;
use slots::{jwt, sha256_hex, Req};
use support::*;

const API_404: &str = r#"{"message":"404 Project Not Found"}"#;
const REGISTRY_DENIED: &str = r#"{"errors":[{"code":"DENIED","message":"access forbidden"}]}"#;
const GIT_404: &str =
    "The project you were looking for could not be found or you don't have permission to view it.";
const PUSH_403: &str = "You are not allowed to push code to this project.";
const LFS_JSON: &str = "application/vnd.git-lfs+json; charset=utf-8";
const MIB: usize = 1024 * 1024;

fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", slots::basic(user, password))
}

fn ci_basic(token: &str) -> String {
    basic("gitlab-ci-token", token)
}

fn method(m: &str) -> reqwest::Method {
    reqwest::Method::from_bytes(m.as_bytes()).expect("method")
}

/// A request with a method, no body.
fn call(m: &str, target: impl Into<String>) -> Req {
    let mut r = Req::get(target);
    r.method = method(m);
    r
}

/// A request with a body and, when given, its Content-Type.
fn with_body(
    m: &str,
    target: impl Into<String>,
    ct: Option<&str>,
    body: impl Into<Vec<u8>>,
) -> Req {
    let target: String = target.into();
    Req::with_body(method(m), &target, ct, body)
}

fn describe(r: &Req) -> String {
    format!("{} {}", r.method, r.target)
}

/// Forwarded, and the forge received exactly this request: path and query, every header the
/// client set, the body byte for byte.
async fn passes(h: &Harness, label: &str, req: &Req) -> Recorded {
    h.forge.clear();
    let resp = req.send(&h.http, &h.base).await;
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap_or_default();
    assert_eq!(status, 200, "{label}: {} (body: {body})", describe(req));
    let reqs = h.forge.requests();
    assert_eq!(
        reqs.len(),
        1,
        "{label}: forwarded {:?}",
        reqs.iter().map(|r| &r.uri).collect::<Vec<_>>()
    );
    let rec = reqs.into_iter().next().expect("one request");
    req.assert_intact(&rec);
    h.forge.clear();
    rec
}

/// Refused with `status` and exactly `body`, and nothing of it reached the forge.
async fn refused(h: &Harness, label: &str, req: &Req, status: u16, body: &str) {
    h.forge.clear();
    let resp = req.send(&h.http, &h.base).await;
    let got = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    assert_eq!(got, status, "{label}: {} (body: {text})", describe(req));
    // A HEAD answer has the head of the GET answer and no body.
    let body = if req.method == reqwest::Method::HEAD {
        ""
    } else {
        body
    };
    assert_eq!(text, body, "{label}: {}", describe(req));
    let seen: Vec<String> = h
        .forge
        .requests()
        .iter()
        .map(|r| format!("{} {}", r.method, r.uri))
        .collect();
    assert!(seen.is_empty(), "{label}: the forge received {seen:?}");
}

/// Deterministic bytes that no compressor or text heuristic would treat kindly.
fn blob(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A multipart/form-data body: each part's raw head lines and its content.
fn multipart(boundary: &str, parts: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (head, data) in parts {
        out.extend_from_slice(format!("--{boundary}\r\n{head}\r\n\r\n").as_bytes());
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    out
}

// =============================================================================================
// Runner API (item 2)
// =============================================================================================

/// The runner's calls for job `job` with `token`, shaped as gitlab-runner's
/// `network/gitlab.go` sends them: the update with the token in its JSON body, the trace
/// with `JOB-TOKEN`, the artifact authorize and upload (multipart, `file` part) with
/// `JOB-TOKEN` and the format in the query.
fn runner_calls(token: &str, job: u64) -> Vec<(&'static str, Req)> {
    let boundary = "------------------------runnerArtifacts42";
    let zip = multipart(
        boundary,
        &[(
            "Content-Disposition: form-data; name=\"file\"; filename=\"artifacts.zip\"\r\n\
             Content-Type: application/octet-stream",
            b"PK\x03\x04 pretend this is a zip",
        )],
    );
    let update = json!({
        "token": token,
        "state": "running",
        "info": { "name": "gitlab-runner", "version": "17.0.0" },
        "output": { "checksum": "crc32:0", "bytesize": 0 },
    })
    .to_string();
    vec![
        (
            "update (JSON token)",
            with_body(
                "PUT",
                format!("/api/v4/jobs/{job}"),
                Some("application/json"),
                update,
            ),
        ),
        (
            "trace (JOB-TOKEN)",
            with_body(
                "PATCH",
                format!("/api/v4/jobs/{job}/trace"),
                Some("text/plain"),
                "Running with gitlab-runner\n",
            )
            .header("JOB-TOKEN", token)
            .header("Content-Range", "0-26"),
        ),
        (
            "artifacts authorize (JOB-TOKEN)",
            call(
                "POST",
                format!("/api/v4/jobs/{job}/artifacts/authorize?artifact_format=zip&artifact_type=archive"),
            )
            .header("JOB-TOKEN", token),
        ),
        (
            "artifacts upload (JOB-TOKEN, multipart)",
            with_body(
                "POST",
                format!(
                    "/api/v4/jobs/{job}/artifacts?artifact_format=zip&artifact_type=archive&expire_in=1+day"
                ),
                Some(&format!("multipart/form-data; boundary={boundary}")),
                zip,
            )
            .header("JOB-TOKEN", token),
        ),
    ]
}

#[tokio::test]
async fn runner_routes_of_the_tokens_own_job_pass_in_any_job_status() {
    let h = Harness::start().await;
    // Running, cancelling (after_script still runs) and finished (the runner's last update
    // and upload after the job ended): the forge binds these routes to the job's own token.
    for (token, job) in [(TOK_APP, JOB_APP), (TOK_CANCELING, 107), (TOK_DONE, 108)] {
        for (label, req) in runner_calls(token, job) {
            passes(&h, &format!("job {job}: {label}"), &req).await;
        }
    }
    h.stop().await;
}

#[tokio::test]
async fn runner_routes_of_another_job_are_404_untouched() {
    let h = Harness::start().await;
    // Job 104 exists (g/other's), 999 does not: the answer is the same.
    // A finished job's token too: it is its own job's only, even as that job ends.
    for (token, own) in [(TOK_APP, JOB_APP), (TOK_CANCELING, 107), (TOK_DONE, 108)] {
        for other in [104, 999] {
            for (label, req) in runner_calls(token, other) {
                let label = format!("job {own}'s token on job {other}: {label}");
                refused(&h, &label, &req, 404, API_404).await;
            }
        }
    }
    // The id in the path is the own job, but the JSON token is another job's.
    let update = json!({ "token": TOK_OTHER, "state": "running" }).to_string();
    let req = with_body(
        "PUT",
        format!("/api/v4/jobs/{JOB_APP}"),
        Some("application/json"),
        update,
    );
    refused(&h, "another job's token in the body", &req, 404, API_404).await;
    // Two job tokens (the own one in the header, another in the body): never forwarded.
    let update = json!({ "token": TOK_OTHER, "state": "running" }).to_string();
    let req = with_body(
        "PUT",
        format!("/api/v4/jobs/{JOB_APP}"),
        Some("application/json"),
        update,
    )
    .header("JOB-TOKEN", TOK_APP);
    refused(&h, "two job tokens", &req, 404, API_404).await;
    h.stop().await;
}

#[tokio::test]
async fn a_large_opaque_artifact_upload_arrives_byte_identical() {
    let h = Harness::start().await;
    let data = blob(6 * MIB);
    let req = with_body(
        "POST",
        format!("/api/v4/jobs/{JOB_APP}/artifacts?artifact_format=gzip&artifact_type=junit"),
        Some("application/octet-stream"),
        data.clone(),
    )
    .header("JOB-TOKEN", TOK_APP);
    let rec = passes(&h, "6 MiB artifact", &req).await;
    assert_eq!(rec.body_len, data.len() as u64);
    assert_eq!(rec.body_sha256_hex(), sha256_hex(&data));
    h.stop().await;
}

/// `GET /api/v4/jobs/:id/artifacts` (and HEAD), as the runner downloads a dependency's
/// artifacts: `JOB-TOKEN` and `?direct_download=true`.
fn dependency(token: &str, job: u64, m: &str) -> Req {
    call(
        m,
        format!("/api/v4/jobs/{job}/artifacts?direct_download=true"),
    )
    .header("JOB-TOKEN", token)
}

#[tokio::test]
async fn dependency_downloads_are_the_forges_business_by_default() {
    let h = Harness::start().await;
    // The forge serves only the dependencies of the token's own job; scopegate forwards.
    for job in [JOB_APP, 102, 104, 999] {
        for m in ["GET", "HEAD"] {
            let req = dependency(TOK_APP, job, m);
            passes(&h, &format!("dependency {job}"), &req).await;
        }
    }
    // Not a dependency download: another method on the same path is no runner route.
    let req = with_body(
        "DELETE",
        "/api/v4/jobs/104/artifacts",
        None,
        Vec::<u8>::new(),
    )
    .header("JOB-TOKEN", TOK_APP);
    refused(&h, "DELETE is not a runner route", &req, 404, API_404).await;
    h.stop().await;
}

#[tokio::test]
async fn strict_dependencies_follow_the_dependency_jobs_project() {
    let mut opts = Options::new(&format!("{PROJECTS}runner:\n  dependencies: strict\n"));
    opts.service_token = true;
    let h = Harness::with(opts).await;
    for m in ["GET", "HEAD"] {
        // Own job, and job 102 of the same project (g/app).
        passes(&h, "own job", &dependency(TOK_APP, JOB_APP, m)).await;
        passes(&h, "same project", &dependency(TOK_APP, 102, m)).await;
        // Job 104 belongs to g/other; job 999 does not exist.
        let req = dependency(TOK_APP, 104, m);
        if m == "GET" {
            refused(&h, "other project", &req, 404, API_404).await;
            refused(
                &h,
                "no such job",
                &dependency(TOK_APP, 999, m),
                404,
                API_404,
            )
            .await;
        } else {
            // HEAD: the same 404, with no body to compare.
            h.forge.clear();
            let resp = req.send(&h.http, &h.base).await;
            assert_eq!(resp.status(), 404);
            h.assert_untouched();
        }
        // g/other's own job may fetch it.
        passes(&h, "other project's own", &dependency(TOK_OTHER, 104, m)).await;
    }
    h.stop().await;
}

// =============================================================================================
// Container registry (item 3)
// =============================================================================================

/// `docker login`'s and `docker push`'s token request: Go's `url.Values.Encode` sorts the
/// keys and escapes `:`, `/` and `,`; the credentials are Basic `gitlab-ci-token:TOKEN`.
const DOCKER: &str = "account=gitlab-ci-token&client_id=docker&offline_token=true";

fn registry(token: &str, query: &str) -> Req {
    Req::get(format!("/jwt/auth?{query}")).header("Authorization", ci_basic(token))
}

/// Forwarded with the Basic credentials intact and exactly `expected` as its query.
async fn registry_forwards(h: &Harness, token: &str, query: &str, expected: &str) {
    let req = registry(token, query);
    h.forge.clear();
    let resp = req.send(&h.http, &h.base).await;
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap_or_default();
    assert_eq!(status, 200, "{query}: {body}");
    let reqs = h.forge.requests();
    assert_eq!(reqs.len(), 1, "{query}");
    let rec = &reqs[0];
    assert_eq!(
        rec.uri,
        format!("/jwt/auth?{expected}"),
        "asked for {query}"
    );
    assert_eq!(rec.headers["authorization"], ci_basic(token).as_str());
    h.forge.clear();
}

async fn registry_denied(h: &Harness, token: &str, query: &str) {
    let req = registry(token, query);
    h.forge.clear();
    let resp = req.send(&h.http, &h.base).await;
    assert_eq!(
        resp.headers()["content-type"],
        "application/json",
        "{query}"
    );
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap_or_default();
    assert_eq!((status, body.as_str()), (404, REGISTRY_DENIED), "{query}");
    h.assert_untouched();
}

#[tokio::test]
async fn registry_push_with_a_cross_project_base_keeps_only_the_allowed_actions() {
    let h = Harness::start().await;
    // `docker push g/app/img` built FROM g/secret/base: push+pull on its own image, and
    // the cross-mount asks pull+push on the base. The base keeps pull (g/secret lets g/app
    // in), loses push (only the job's own project).
    registry_forwards(
        &h,
        TOK_APP,
        &format!(
            "{DOCKER}&scope=repository%3Ag%2Fapp%2Fimg%3Apush%2Cpull\
             &scope=repository%3Ag%2Fsecret%2Fbase%3Apull%2Cpush&service=container_registry"
        ),
        "account=gitlab-ci-token&client_id=docker&offline_token=true&service=container_registry\
         &scope=repository%3Ag%2Fapp%2Fimg%3Apush%2Cpull&scope=repository%3Ag%2Fsecret%2Fbase%3Apull",
    )
    .await;
    h.stop().await;
}

#[tokio::test]
async fn registry_scopes_are_parsed_as_the_forge_parses_them() {
    let h = Harness::start().await;
    let both = "service=container_registry\
                &scope=repository%3Ag%2Fapp%2Fimg%3Apull&scope=repository%3Ag%2Fsecret%2Fbase%3Apull";
    let cases: &[(&str, &str)] = &[
        // Unescaped, as a hand-written client sends it.
        (
            "service=container_registry&scope=repository:g/app/img:pull&scope=repository:g/secret/base:pull",
            both,
        ),
        // Rack splits the query on `;` too.
        (
            "service=container_registry;scope=repository:g/app/img:pull;scope=repository:g/secret/base:pull",
            both,
        ),
        // Several space-separated scopes in one value (RFC 6749 §3.3): `+`, `%20`, and the
        // other whitespace Ruby's `String#split` splits on.
        (
            "service=container_registry&scope=repository:g/app/img:pull+repository:g/secret/base:pull",
            both,
        ),
        (
            "scope=repository%3Ag%2Fapp%2Fimg%3Apull%20repository%3Ag%2Fsecret%2Fbase%3Apull&service=container_registry",
            both,
        ),
        (
            "service=container_registry&scope=%09repository:g/app/img:pull%0Arepository:g/secret/base:pull%0D%0A",
            both,
        ),
        // A key spelled with an escape is the same key to Rack.
        (
            "service=container_registry&sc%6Fpe=repository:g/app/img:pull&scope=repository:g/secret/base:pull",
            both,
        ),
        // The image name is case-folded, as `ContainerRegistry::Path` does.
        (
            "service=container_registry&scope=repository:G/App/Img:pull&scope=repository:g/SECRET/base:pull",
            both,
        ),
        // Actions: duplicates once, unknown ones dropped, in the order asked.
        (
            "service=container_registry&scope=repository:g/app/img:pull,pull,admin,,push",
            "service=container_registry&scope=repository%3Ag%2Fapp%2Fimg%3Apull%2Cpush",
        ),
        // The job's own project: `delete` and `*` too.
        (
            "service=container_registry&scope=repository:g/app/img:delete&scope=repository:g/app/cache:*",
            "service=container_registry&scope=repository%3Ag%2Fapp%2Fimg%3Adelete\
             &scope=repository%3Ag%2Fapp%2Fcache%3A%2A",
        ),
        // The image directly at the project path, and one nested deeper.
        (
            "service=container_registry&scope=repository:g/app:pull&scope=repository:g/secret/a/b/c:pull",
            "service=container_registry&scope=repository%3Ag%2Fapp%3Apull\
             &scope=repository%3Ag%2Fsecret%2Fa%2Fb%2Fc%3Apull",
        ),
        // Garbage scopes are dropped, the good one kept: another resource type, no actions,
        // a plugin type, bad image names, a one-component name, empty actions, an action
        // with a further `:`.
        (
            "service=container_registry&scope=registry:catalog:*&scope=repository:g/app/img\
             &scope=repository(plugin):g/app/img:pull&scope=repository:g//app:pull\
             &scope=repository:-g/app:pull&scope=repository:app:pull&scope=repository:g/app/img:\
             &scope=repository:g/app/img:pull:push&scope=repository:g/app/img:pull",
            "service=container_registry&scope=repository%3Ag%2Fapp%2Fimg%3Apull",
        ),
        // `account`, `client_id`, `offline_token`, `service` pass through in their order;
        // everything else is dropped.
        (
            "foo=bar&account=gitlab-ci-token&scope=repository:g/app/img:pull&service=container_registry\
             &client_id=docker&state=x&offline_token=true&scope%5B%5D=repository:g/other/x:pull",
            "account=gitlab-ci-token&service=container_registry&client_id=docker&offline_token=true\
             &scope=repository%3Ag%2Fapp%2Fimg%3Apull",
        ),
    ];
    for (query, expected) in cases {
        registry_forwards(&h, TOK_APP, query, expected).await;
    }
    // `/jwt/auth.json` is the same Rails route, and is rebuilt the same way.
    let req =
        Req::get("/jwt/auth.json?service=container_registry&scope=repository:g/secret/x:pull,push")
            .header("Authorization", ci_basic(TOK_APP));
    h.forge.clear();
    let resp = req.send(&h.http, &h.base).await;
    assert_eq!(resp.status(), 200);
    let reqs = h.forge.requests();
    assert_eq!(
        reqs[0].uri,
        "/jwt/auth.json?service=container_registry&scope=repository%3Ag%2Fsecret%2Fx%3Apull"
    );
    h.stop().await;
}

#[tokio::test]
async fn registry_push_and_delete_reach_only_the_jobs_own_project() {
    let h = Harness::start().await;
    // In scope for reading, but not the job's own project: no push, delete or `*`.
    for actions in ["push", "delete", "*", "push,delete,*"] {
        let q = format!("service=container_registry&scope=repository:g/secret/img:{actions}");
        registry_denied(&h, TOK_APP, &q).await;
    }
    // A public project: pull for anyone, push for nobody else.
    registry_denied(
        &h,
        TOK_OTHER,
        "service=container_registry&scope=repository:g/public/img:push",
    )
    .await;
    registry_forwards(
        &h,
        TOK_OTHER,
        "service=container_registry&scope=repository:g/public/img:push,pull",
        "service=container_registry&scope=repository%3Ag%2Fpublic%2Fimg%3Apull",
    )
    .await;
    // Each job to its own project: everything.
    registry_forwards(
        &h,
        TOK_OTHER,
        "service=container_registry&scope=repository:g/other/img:push,pull,delete",
        "service=container_registry&scope=repository%3Ag%2Fother%2Fimg%3Apush%2Cpull%2Cdelete",
    )
    .await;
    h.stop().await;
}

#[tokio::test]
async fn registry_pull_follows_the_policy() {
    let h = Harness::start().await;
    let pull = |image: &str| format!("service=container_registry&scope=repository:{image}:pull");
    let kept = |image: &str| {
        format!(
            "service=container_registry&scope=repository%3A{}%3Apull",
            image.replace('/', "%2F")
        )
    };
    // Allowed: allowlisted project, allowlisted group (by path segments), public and
    // internal projects (registry open to everyone with access).
    for (token, image) in [
        (TOK_APP, "g/secret/img"),
        (TOK_TOOL, "g/secret/img"),
        (TOK_OTHER, "g/public/img"),
        (TOK_OTHER, "g/internal/img"),
        (TOK_SECRET_PROJ, "g/secret/img"),
    ] {
        registry_forwards(&h, token, &pull(image), &kept(image)).await;
    }
    // Denied: not on the allowlist (g/trusted-evil is not g/trusted), a project nobody
    // lets in, a project that does not exist.
    for (token, image) in [
        (TOK_OTHER, "g/secret/img"),
        (TOK_EVIL, "g/secret/img"),
        (TOK_APP, "g/other/img"),
        (TOK_APP, "nope/nothing/img"),
    ] {
        registry_denied(&h, token, &pull(image)).await;
    }
    // A denied pull beside an allowed one is dropped, not fatal.
    registry_forwards(
        &h,
        TOK_OTHER,
        "service=container_registry&scope=repository:g/secret/img:pull&scope=repository:g/public/img:pull",
        "service=container_registry&scope=repository%3Ag%2Fpublic%2Fimg%3Apull",
    )
    .await;
    h.stop().await;
}

#[tokio::test]
async fn registry_pull_with_a_service_token_resolves_through_the_forge() {
    let mut opts = Options::new(PROJECTS);
    opts.service_token = true;
    let h = Harness::with(opts).await;
    registry_forwards(
        &h,
        TOK_APP,
        &format!(
            "{DOCKER}&scope=repository%3Ag%2Fapp%2Fimg%3Apush%2Cpull\
             &scope=repository%3Ag%2Fsecret%2Fbase%3Apull%2Cpush&service=container_registry"
        ),
        "account=gitlab-ci-token&client_id=docker&offline_token=true&service=container_registry\
         &scope=repository%3Ag%2Fapp%2Fimg%3Apush%2Cpull&scope=repository%3Ag%2Fsecret%2Fbase%3Apull",
    )
    .await;
    // g/trusted/sub/tool is in g/trusted by ancestor ids; g/trusted-evil/tool is not.
    let q = "service=container_registry&scope=repository:g/secret/img:pull";
    registry_forwards(
        &h,
        TOK_TOOL,
        q,
        "service=container_registry&scope=repository%3Ag%2Fsecret%2Fimg%3Apull",
    )
    .await;
    registry_denied(&h, TOK_EVIL, q).await;
    h.stop().await;
}

#[tokio::test]
async fn registry_with_no_scope_left_is_denied_in_the_registrys_shape() {
    let h = Harness::start().await;
    for query in [
        // Only disallowed actions.
        "service=container_registry&scope=repository:g/secret/img:push",
        // Only scopes GitLab would not grant.
        "service=container_registry&scope=registry:catalog:*",
        "service=container_registry&scope=repository:g/app/img:admin",
        "service=container_registry&scope=repository:nope:pull",
        // A pull out of scope beside garbage.
        "service=container_registry&scope=repository:g/other/img:pull&scope=foo",
    ] {
        registry_denied(&h, TOK_APP, query).await;
    }
    h.stop().await;
}

#[tokio::test]
async fn registry_login_and_dependency_proxy_are_forwarded_unchanged() {
    let h = Harness::start().await;
    for (token, query) in [
        // `docker login`: no scope (a token with no access).
        (TOK_APP, format!("{DOCKER}&service=container_registry")),
        (
            TOK_OTHER,
            format!("{DOCKER}&service=container_registry&foo=bar"),
        ),
        // An empty scope is no scope, to the forge as well (`"".split` is empty).
        (TOK_OTHER, "service=container_registry&scope=".to_owned()),
        // The dependency proxy's token is group-level and ignores scopes.
        (
            TOK_OTHER,
            "service=dependency_proxy&scope=repository:g/dependency_proxy/containers/alpine:pull"
                .to_owned(),
        ),
        (TOK_OTHER, format!("{DOCKER}&service=dependency_proxy")),
    ] {
        registry_forwards(&h, token, &query, &query).await;
    }
    // Without a job token the forge decides: nothing is rebuilt.
    let q = "service=container_registry&scope=repository:g/secret/img:push,pull&foo=bar";
    let req = Req::get(format!("/jwt/auth?{q}")).header("Authorization", basic("alice", PAT));
    passes(&h, "PAT", &req).await;
    h.stop().await;
}

#[tokio::test]
async fn registry_scope_filtering_is_relaxed_in_audit_mode() {
    let h = Harness::with(Options::new(&format!("{PROJECTS}mode: audit\n"))).await;
    for query in [
        "service=container_registry&scope=repository:g/secret/img:push,pull&foo=bar",
        "service=container_registry&scope=repository:g/other/img:pull",
    ] {
        registry_forwards(&h, TOK_APP, query, query).await;
    }
    h.stop().await;
}

// =============================================================================================
// Git LFS, wiki and design repositories (item 4; the rest is in tests/git.rs)
// =============================================================================================

fn git_call(m: &str, path: impl Into<String>, token: &str) -> Req {
    call(m, path).header("Authorization", ci_basic(token))
}

fn git_body(m: &str, path: impl Into<String>, token: &str, ct: &str, body: &str) -> Req {
    with_body(m, path, Some(ct), body).header("Authorization", ci_basic(token))
}

fn batch(operation: &str) -> String {
    format!(
        r#"{{"operation":"{operation}","transfers":["basic"],"ref":{{"name":"refs/heads/main"}},"objects":[{{"oid":"{}","size":12}}],"hash_algo":"sha256"}}"#,
        "b".repeat(64)
    )
}

/// Reads of the repository feature: out of scope 404, in scope forwarded.
fn lfs_reads(token: &str) -> Vec<Req> {
    let oid = "c".repeat(64);
    vec![
        git_call(
            "GET",
            "/g/secret.git/info/lfs/locks?path=a.bin&limit=10",
            token,
        ),
        git_call("GET", "/g/secret.git/info/lfs/locks/7", token),
        git_body(
            "POST",
            "/g/secret.git/info/lfs/locks/verify",
            token,
            LFS_JSON,
            r#"{"ref":{"name":"refs/heads/main"},"limit":100}"#,
        ),
        // The pre-batch object API.
        git_call(
            "GET",
            format!("/g/secret.git/info/lfs/objects/{oid}"),
            token,
        ),
        git_call(
            "HEAD",
            format!("/g/secret.git/gitlab-lfs/objects/{oid}"),
            token,
        ),
        // LFS and Git on the wiki and design repositories.
        git_body(
            "POST",
            "/g/secret.wiki.git/info/lfs/objects/batch",
            token,
            LFS_JSON,
            &batch("download"),
        ),
        git_call(
            "GET",
            format!("/g/secret.wiki.git/gitlab-lfs/objects/{oid}"),
            token,
        ),
        git_call(
            "GET",
            "/g/secret.design.git/info/refs?service=git-upload-pack",
            token,
        ),
        git_body(
            "POST",
            "/g/secret.design.git/git-upload-pack",
            token,
            "application/x-git-upload-pack-request",
            "0000",
        ),
        git_body(
            "POST",
            "/g/secret.design.git/info/lfs/objects/batch",
            token,
            LFS_JSON,
            &batch("download"),
        ),
    ]
}

/// Pushes: out of scope 404, in scope 403 (no job token pushes without `git_push`).
fn lfs_pushes(token: &str) -> Vec<Req> {
    let oid = "c".repeat(64);
    vec![
        git_body(
            "POST",
            "/g/secret.git/info/lfs/locks/7/unlock",
            token,
            LFS_JSON,
            r#"{"force":false,"ref":{"name":"refs/heads/main"}}"#,
        ),
        git_call("DELETE", "/g/secret.git/info/lfs/locks/7", token),
        git_call(
            "PUT",
            format!("/g/secret.git/gitlab-lfs/objects/{oid}/12/authorize"),
            token,
        ),
        with_body(
            "PUT",
            format!("/g/secret.git/gitlab-lfs/objects/{oid}/12"),
            Some("application/octet-stream"),
            "twelve bytes",
        )
        .header("Authorization", ci_basic(token)),
        // The pre-batch upload.
        git_body(
            "POST",
            "/g/secret.git/info/lfs/objects",
            token,
            LFS_JSON,
            &format!(r#"{{"oid":"{oid}","size":12}}"#),
        ),
        // A batch that does not say `download` is not a download.
        git_body(
            "POST",
            "/g/secret.git/info/lfs/objects/batch",
            token,
            LFS_JSON,
            r#"{"objects":[]}"#,
        ),
        git_body(
            "POST",
            "/g/secret.git/info/lfs/objects/batch",
            token,
            LFS_JSON,
            &batch("verify"),
        ),
        git_body(
            "POST",
            "/g/secret.wiki.git/info/lfs/objects/batch",
            token,
            LFS_JSON,
            &batch("upload"),
        ),
        git_call(
            "GET",
            "/g/secret.design.git/info/refs?service=git-receive-pack",
            token,
        ),
        git_body(
            "POST",
            "/g/secret.design.git/git-receive-pack",
            token,
            "application/x-git-receive-pack-request",
            "0000",
        ),
        git_body(
            "POST",
            "/g/secret.wiki.git/git-receive-pack",
            token,
            "application/x-git-receive-pack-request",
            "0000",
        ),
    ]
}

#[tokio::test]
async fn lfs_locks_objects_wiki_and_design_are_scoped() {
    // Without Git repositories the forge echoes authenticated Git and LFS requests (200).
    let h = Harness::start().await;
    for req in lfs_reads(TOK_OTHER) {
        refused(&h, "read out of scope", &req, 404, GIT_404).await;
    }
    for req in lfs_reads(TOK_APP) {
        passes(&h, "read in scope", &req).await;
    }
    for req in lfs_pushes(TOK_OTHER) {
        refused(&h, "push out of scope", &req, 404, GIT_404).await;
    }
    for req in lfs_pushes(TOK_APP) {
        refused(&h, "push in scope", &req, 403, PUSH_403).await;
    }
    h.stop().await;
}

#[tokio::test]
async fn lfs_on_a_public_project_is_readable_but_not_writable() {
    let h = Harness::start().await;
    let download = git_body(
        "POST",
        "/g/public.git/info/lfs/objects/batch",
        TOK_OTHER,
        LFS_JSON,
        &batch("download"),
    );
    passes(&h, "public download", &download).await;
    let locks = git_call("GET", "/g/public.git/info/lfs/locks", TOK_OTHER);
    passes(&h, "public lock list", &locks).await;
    // A write is scoped as a write first: g/public does not let g/other in, so 404.
    let upload = git_body(
        "POST",
        "/g/public.git/info/lfs/objects/batch",
        TOK_OTHER,
        LFS_JSON,
        &batch("upload"),
    );
    refused(&h, "public upload", &upload, 404, GIT_404).await;
    h.stop().await;
}

#[tokio::test]
async fn a_batch_that_names_its_operation_twice_is_never_a_download() {
    let h = Harness::start().await;
    // The same key twice in JSON: Rails keeps one of them; scopegate refuses both.
    let both = r#"{"operation":"download","operation":"upload","objects":[]}"#;
    let req = git_body(
        "POST",
        "/g/secret.git/info/lfs/objects/batch",
        TOK_APP,
        LFS_JSON,
        both,
    );
    refused(
        &h,
        "operation twice in the body",
        &req,
        400,
        r#"{"message":"400 Bad request"}"#,
    )
    .await;
    // Rails' `params` merges the query over the JSON body, so `?operation=upload` would win
    // over a `download` body at the forge. A classification key given twice with different
    // values is ambiguous (SPEC §1): 400, whoever asks.
    for token in [TOK_APP, TOK_OTHER] {
        let req = git_body(
            "POST",
            "/g/secret.git/info/lfs/objects/batch?operation=upload",
            token,
            LFS_JSON,
            &batch("download"),
        );
        refused(
            &h,
            "operation in the query and the body, disagreeing",
            &req,
            400,
            r#"{"message":"400 Bad request"}"#,
        )
        .await;
    }
    // The control: the query agreeing with the body stays a download.
    let req = git_body(
        "POST",
        "/g/secret.git/info/lfs/objects/batch?operation=download",
        TOK_APP,
        LFS_JSON,
        &batch("download"),
    );
    passes(&h, "operation agreeing", &req).await;
    h.stop().await;
}

#[tokio::test]
async fn lfs_writes_to_the_own_project_pass_with_git_push() {
    let yaml = PROJECTS.replacen(
        "  - id: 1\n    path: g/app\n",
        "  - id: 1\n    path: g/app\n    git_push: true\n",
        1,
    );
    assert_ne!(yaml, PROJECTS);
    let h = Harness::with(Options::new(&yaml)).await;
    let oid = "d".repeat(64);
    let own = [
        git_body(
            "POST",
            "/g/app.git/info/lfs/objects/batch",
            TOK_APP,
            LFS_JSON,
            &batch("upload"),
        ),
        with_body(
            "PUT",
            format!("/g/app.git/gitlab-lfs/objects/{oid}/12"),
            Some("application/octet-stream"),
            "twelve bytes",
        )
        .header("Authorization", ci_basic(TOK_APP)),
        git_body(
            "POST",
            "/g/app.git/info/lfs/locks",
            TOK_APP,
            LFS_JSON,
            r#"{"path":"a.bin","ref":{"name":"refs/heads/main"}}"#,
        ),
        git_body(
            "POST",
            "/g/app.git/info/lfs/locks/3/unlock",
            TOK_APP,
            LFS_JSON,
            r#"{"force":true}"#,
        ),
    ];
    for req in &own {
        passes(&h, "own project with git_push", req).await;
    }
    // Still only the own project: g/secret (in scope) 403, and another job 404.
    let req = git_body(
        "POST",
        "/g/secret.git/info/lfs/objects/batch",
        TOK_APP,
        LFS_JSON,
        &batch("upload"),
    );
    refused(&h, "in scope, not own", &req, 403, PUSH_403).await;
    let req = git_body(
        "POST",
        "/g/app.git/info/lfs/objects/batch",
        TOK_OTHER,
        LFS_JSON,
        &batch("upload"),
    );
    refused(&h, "another project's job", &req, 404, GIT_404).await;
    h.stop().await;
}

// =============================================================================================
// Packages (item 5)
// =============================================================================================

const BOUNDARY: &str = "------------------------scopegatePkg7f3a";

fn form_data() -> String {
    format!("multipart/form-data; boundary={BOUNDARY}")
}

/// twine's upload: `requests_toolbelt` fields, then the distribution as the `content` part.
fn twine_body() -> Vec<u8> {
    let field = |name: &str| format!("Content-Disposition: form-data; name=\"{name}\"");
    multipart(
        BOUNDARY,
        &[
            (&field(":action"), b"file_upload"),
            (&field("protocol_version"), b"1"),
            (&field("name"), b"my-pkg"),
            (&field("version"), b"1.0.0"),
            (&field("filetype"), b"sdist"),
            (&field("metadata_version"), b"2.1"),
            (
                &field("sha256_digest"),
                b"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            ),
            (
                "Content-Disposition: form-data; name=\"content\"; filename=\"my_pkg-1.0.0.tar.gz\"\r\n\
                 Content-Type: application/octet-stream",
                b"\x1f\x8b\x08\x00 a tarball",
            ),
        ],
    )
}

/// `dotnet nuget push`: .NET's `MultipartFormDataContent`, quoted boundary, unquoted names.
const NUGET_BOUNDARY: &str = "3c8ee8e2-5f2e-4bd1-9d5c-0a7b1c7f0e11";

fn nuget_body() -> Vec<u8> {
    multipart(
        NUGET_BOUNDARY,
        &[(
            "Content-Type: application/octet-stream\r\n\
             Content-Disposition: form-data; name=package; filename=package.nupkg; filename*=utf-8''package.nupkg",
            b"PK\x03\x04 a nupkg",
        )],
    )
}

/// `curl --form chart=@mychart-0.1.0.tgz` (the Helm docs' upload).
fn helm_body() -> Vec<u8> {
    multipart(
        BOUNDARY,
        &[(
            "Content-Disposition: form-data; name=\"chart\"; filename=\"mychart-0.1.0.tgz\"\r\n\
             Content-Type: application/octet-stream",
            b"\x1f\x8b\x08\x00 a chart",
        )],
    )
}

/// `npm publish`: the package document with the tarball base64-encoded in `_attachments`.
fn npm_publish_body() -> String {
    json!({
        "_id": "@g/pkg",
        "name": "@g/pkg",
        "dist-tags": { "latest": "1.0.0" },
        "versions": { "1.0.0": {
            "name": "@g/pkg",
            "version": "1.0.0",
            "dist": {
                "integrity": "sha512-AAAA",
                "shasum": "da39a3ee5e6b4b0d3255bfef95601890afd80709",
                "tarball": "http://gitlab.example.com/api/v4/projects/2/packages/npm/@g/pkg/-/@g/pkg-1.0.0.tgz"
            }
        }},
        "access": null,
        "_attachments": { "@g/pkg-1.0.0.tgz": {
            "content_type": "application/octet-stream",
            "data": "H4sIAAAAAAAAA+3OMQ6CQBCF4a33FHsC3WEWOM+GQmwwG7BIdPfuWNhoZUXD/zVv8qZ5eZ2n+bSzvpfE2IuqrnzGS8kqVTWJJxmh5Rr1rjSmsX7h0e5rzo/8+5Yc+Wjl3xcAAAAAAAAAAAAAAAAAwA5vJfxhnwAoAAA=",
            "length": 128
        }}
    })
    .to_string()
}

/// Every package manager's requests against g/secret (id 2), each in its real client's
/// credential shape. `token` goes wherever that client puts the job token.
fn package_calls(token: &str) -> Vec<(&'static str, Req)> {
    let p = "/api/v4/projects/2/packages";
    let by_path = "/api/v4/projects/g%2Fsecret/packages";
    let ci = ci_basic(token);
    let bearer = format!("Bearer {token}");
    // Conan: `users/authenticate` answers a JWT whose `access_token` claim is the job token
    // (lib/gitlab/conan_token.rb); the client then sends it as a Bearer token.
    let conan = format!("Bearer {}", jwt("access_token", token));
    let conan_ref = "conans/hello/1.0/g+secret/stable";
    let state = "/api/v4/projects/2/terraform/state/prod";
    let lock = json!({
        "ID": "2b3c8f6e-0b1d-4c1a-9d7e-5f4a3b2c1d0e",
        "Operation": "OperationTypeApply",
        "Info": "",
        "Who": "runner@ci",
        "Version": "1.7.0",
        "Created": "2024-01-01T00:00:00Z",
        "Path": ""
    })
    .to_string();
    let tf_state = json!({
        "version": 4,
        "terraform_version": "1.7.0",
        "serial": 3,
        "lineage": "5f4a3b2c-1d0e-2b3c-8f6e-0b1d4c1a9d7e",
        "outputs": {},
        "resources": []
    })
    .to_string();
    vec![
        // generic_packages.rb: `job_token_allowed: true` (JOB-TOKEN, `job_token`), and
        // `%i[request basic_auth]` on the download.
        (
            "generic download, JOB-TOKEN",
            Req::get(format!("{p}/generic/my_pkg/1.0.0/file.bin")).header("JOB-TOKEN", token),
        ),
        (
            "generic download, job_token parameter",
            Req::get(format!("{p}/generic/my_pkg/1.0.0/file.bin?job_token={token}")),
        ),
        (
            "generic download by path, Basic",
            Req::get(format!("{by_path}/generic/my_pkg/1.0.0/dir/file.bin"))
                .header("Authorization", ci.clone()),
        ),
        (
            "generic upload (curl --upload-file), JOB-TOKEN",
            with_body(
                "PUT",
                format!("{p}/generic/my_pkg/1.0.0/file.bin?status=default"),
                None,
                "generic bytes",
            )
            .header("JOB-TOKEN", token),
        ),
        (
            "generic upload, job_token parameter",
            with_body(
                "PUT",
                format!("{p}/generic/my_pkg/1.0.0/file.bin?job_token={token}"),
                None,
                "generic bytes",
            ),
        ),
        // maven_packages.rb: `Job-Token` (Maven's settings.xml httpHeaders) or Basic.
        (
            "maven download, Job-Token",
            Req::get(format!("{p}/maven/com/example/lib/1.0/lib-1.0.jar")).header("Job-Token", token),
        ),
        (
            "maven metadata, Basic",
            Req::get(format!("{p}/maven/com/example/lib/maven-metadata.xml"))
                .header("Authorization", ci.clone()),
        ),
        (
            "maven upload, Job-Token",
            with_body(
                "PUT",
                format!("{p}/maven/com/example/lib/1.0/lib-1.0.pom"),
                Some("application/octet-stream"),
                "<project/>",
            )
            .header("Job-Token", token),
        ),
        (
            "maven checksum upload, Basic",
            with_body(
                "PUT",
                format!("{p}/maven/com/example/lib/1.0/lib-1.0.pom.sha1"),
                Some("text/plain"),
                "da39a3ee5e6b4b0d3255bfef95601890afd80709",
            )
            .header("Authorization", ci.clone()),
        ),
        // npm_project_packages.rb / concerns/packages/npm_endpoints.rb: Bearer.
        (
            "npm metadata, Bearer",
            Req::get(format!("{p}/npm/@g%2fpkg")).header("Authorization", bearer.clone()),
        ),
        (
            "npm tarball, Bearer",
            Req::get(format!("{p}/npm/@g/pkg/-/@g/pkg-1.0.0.tgz"))
                .header("Authorization", bearer.clone()),
        ),
        (
            "npm publish, Bearer",
            with_body(
                "PUT",
                format!("{p}/npm/@g%2fpkg"),
                Some("application/json"),
                npm_publish_body(),
            )
            .header("Authorization", bearer.clone())
            .header("npm-command", "publish"),
        ),
        (
            "npm dist-tag add, Bearer",
            with_body(
                "PUT",
                format!("{p}/npm/-/package/@g%2fpkg/dist-tags/stable"),
                Some("application/json"),
                r#""1.0.0""#,
            )
            .header("Authorization", bearer.clone()),
        ),
        // pypi_packages.rb: `job_token_allowed: :basic_auth` (pip and twine).
        (
            "pypi simple index, Basic",
            Req::get(format!("{p}/pypi/simple/my-pkg/")).header("Authorization", ci.clone()),
        ),
        (
            "pypi file download, Basic",
            Req::get(format!(
                "{p}/pypi/files/9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08/my_pkg-1.0.0.tar.gz"
            ))
            .header("Authorization", ci.clone()),
        ),
        (
            "pypi twine upload, Basic",
            with_body("POST", format!("{p}/pypi"), Some(&form_data()), twine_body())
                .header("Authorization", ci.clone()),
        ),
        // nuget_project_packages.rb: Basic (any username reaches the password), and
        // `X-NuGet-ApiKey` on publish.
        (
            "nuget service index, Basic",
            Req::get(format!("{p}/nuget/index.json")).header("Authorization", basic("deployer", token)),
        ),
        (
            "nuget download, Basic",
            Req::get(format!("{p}/nuget/download/mypkg/1.0.0/mypkg.1.0.0.nupkg"))
                .header("Authorization", basic("deployer", token)),
        ),
        (
            "nuget v2 find, Basic",
            Req::get(format!("{p}/nuget/v2/FindPackagesById()?id=mypkg"))
                .header("Authorization", ci.clone()),
        ),
        (
            "nuget push, X-NuGet-ApiKey",
            with_body(
                "PUT",
                format!("{p}/nuget/"),
                Some(&format!("multipart/form-data; boundary=\"{NUGET_BOUNDARY}\"")),
                nuget_body(),
            )
            .header("X-NuGet-ApiKey", token),
        ),
        (
            "nuget push, X-NuGet-ApiKey and Basic",
            with_body(
                "PUT",
                format!("{p}/nuget/v2"),
                Some(&format!("multipart/form-data; boundary=\"{NUGET_BOUNDARY}\"")),
                nuget_body(),
            )
            .header("X-NuGet-ApiKey", token)
            .header("Authorization", basic("deployer", token)),
        ),
        // composer_packages.rb: `job_token_allowed: true` — the form's `job_token`, Basic.
        (
            "composer register, job_token in the form",
            with_body(
                "POST",
                format!("{p}/composer"),
                Some("application/x-www-form-urlencoded"),
                format!("tag=v1.0.0&job_token={token}"),
            ),
        ),
        (
            "composer archive, Basic",
            Req::get(format!(
                "{p}/composer/archives/g/secret.zip?sha=673594f85a55fe3c0eb45df7bd2fa9d95a1601ab"
            ))
            .header("Authorization", ci.clone()),
        ),
        // conan_endpoints.rb: Basic for `users/authenticate`, then the JWT as Bearer.
        (
            "conan authenticate, Basic",
            Req::get(format!("{p}/conan/v1/users/authenticate")).header("Authorization", ci.clone()),
        ),
        (
            "conan check_credentials, Bearer JWT",
            Req::get(format!("{p}/conan/v1/users/check_credentials"))
                .header("Authorization", conan.clone()),
        ),
        (
            "conan download_urls, Bearer JWT",
            Req::get(format!("{p}/conan/v1/{conan_ref}/download_urls"))
                .header("Authorization", conan.clone()),
        ),
        (
            "conan upload_urls, Bearer JWT",
            with_body(
                "POST",
                format!("{p}/conan/v1/{conan_ref}/upload_urls"),
                Some("application/json"),
                r#"{"conanfile.py":24,"conanmanifest.txt":10}"#,
            )
            .header("Authorization", conan.clone()),
        ),
        (
            "conan file upload, Bearer JWT",
            with_body(
                "PUT",
                format!("{p}/conan/v1/files/hello/1.0/g+secret/stable/0/export/conanfile.py"),
                None,
                "from conans import ConanFile\n",
            )
            .header("Authorization", conan.clone()),
        ),
        // debian_package_endpoints.rb: `token_types(:personal_access_token, :deploy_token,
        // :job_token).sent_through(:http_basic_auth)` — any username.
        (
            "debian upload, Basic with any username",
            with_body("PUT", format!("{p}/debian/hello_1.0_amd64.deb"), None, "!<arch>\n")
                .header("Authorization", basic("anything", token)),
        ),
        (
            "debian Release, Basic with any username",
            Req::get(format!("{p}/debian/dists/stable/Release"))
                .header("Authorization", basic("apt", token)),
        ),
        // helm_packages.rb: Basic.
        (
            "helm index, Basic",
            Req::get(format!("{p}/helm/stable/index.yaml")).header("Authorization", ci.clone()),
        ),
        (
            "helm chart, Basic",
            Req::get(format!("{p}/helm/stable/charts/mychart-0.1.0.tgz"))
                .header("Authorization", ci.clone()),
        ),
        (
            "helm upload, Basic",
            with_body(
                "POST",
                format!("{p}/helm/api/stable/charts"),
                Some(&form_data()),
                helm_body(),
            )
            .header("Authorization", ci.clone()),
        ),
        // rubygem_packages.rb: `sent_through(:http_token)` — the raw Authorization value.
        (
            "rubygems push, raw Authorization",
            with_body(
                "POST",
                format!("{p}/rubygems/api/v1/gems"),
                Some("application/octet-stream"),
                "a gem",
            )
            .header("Authorization", token),
        ),
        (
            "rubygems download, raw Authorization",
            Req::get(format!("{p}/rubygems/gems/hello-1.0.0.gem")).header("Authorization", token),
        ),
        (
            "rubygems dependencies, raw Authorization",
            Req::get(format!("{p}/rubygems/api/v1/dependencies?gems=hello,world"))
                .header("Authorization", token),
        ),
        // cargo_project_packages.rb: `sent_through(:http_bearer_token)` (the last word);
        // cargo sends the configured token as the whole Authorization value.
        (
            "cargo config, raw Authorization",
            Req::get(format!("{p}/cargo/config.json")).header("Authorization", token),
        ),
        (
            "cargo config, Bearer",
            Req::get(format!("{p}/cargo/config.json")).header("Authorization", bearer.clone()),
        ),
        // go_proxy.rb: `job_token_allowed: true`; go reads Basic credentials from .netrc.
        (
            "go list, Basic",
            Req::get(format!("{p}/go/gitlab.example.com/g/secret/@v/list"))
                .header("Authorization", ci.clone()),
        ),
        (
            "go zip, Basic",
            Req::get(format!("{p}/go/gitlab.example.com/g/!secret/@v/v1.0.0.zip"))
                .header("Authorization", ci.clone()),
        ),
        // terraform/modules/v1/project_packages.rb: Basic to download, JOB-TOKEN to upload;
        // a `token` parameter holding a Terraform-registry JWT is read wherever it sits.
        (
            "terraform module download, Basic",
            Req::get(format!("{p}/terraform/modules/infra/aws/1.0.0?terraform-get=1"))
                .header("Authorization", ci.clone()),
        ),
        (
            "terraform module download, token parameter (JWT)",
            Req::get(format!(
                "{p}/terraform/modules/infra/aws/1.0.0?token={}&archive=tgz",
                jwt("token", token)
            )),
        ),
        (
            "terraform module upload, JOB-TOKEN",
            with_body(
                "PUT",
                format!("{p}/terraform/modules/infra/aws/1.0.0/file"),
                None,
                b"\x1f\x8b module".to_vec(),
            )
            .header("JOB-TOKEN", token),
        ),
        // terraform/state.rb: `job_token_allowed: :basic_auth` (Terraform's http backend,
        // username gitlab-ci-token).
        (
            "terraform state get, Basic",
            Req::get(state.to_owned()).header("Authorization", ci.clone()),
        ),
        (
            "terraform state save, Basic",
            with_body(
                "POST",
                format!("{state}?ID=2b3c8f6e-0b1d-4c1a-9d7e-5f4a3b2c1d0e"),
                Some("application/json"),
                tf_state,
            )
            .header("Authorization", ci.clone())
            .header("Content-MD5", "1B2M2Y8AsgTpgAmY7PhCfg=="),
        ),
        (
            "terraform state lock, Basic",
            with_body(
                "POST",
                format!("{state}/lock"),
                Some("application/json"),
                lock.clone(),
            )
            .header("Authorization", ci.clone()),
        ),
        (
            "terraform state unlock, Basic",
            with_body("DELETE", format!("{state}/lock"), Some("application/json"), lock)
                .header("Authorization", ci.clone()),
        ),
    ]
}

#[tokio::test]
async fn package_managers_reach_an_allowlisted_project_with_their_credentials_intact() {
    let h = Harness::start().await;
    for (label, req) in package_calls(TOK_APP) {
        passes(&h, label, &req).await;
    }
    h.stop().await;
}

#[tokio::test]
async fn package_managers_are_denied_outside_the_allowlist_before_the_forge() {
    let h = Harness::start().await;
    for (label, req) in package_calls(TOK_OTHER) {
        refused(&h, label, &req, 404, API_404).await;
    }
    // Two slots, two job tokens (NuGet's API key and its Basic password): never forwarded,
    // whichever of them the forge would have read.
    let req = with_body(
        "PUT",
        "/api/v4/projects/2/packages/nuget/",
        Some(&format!(
            "multipart/form-data; boundary=\"{NUGET_BOUNDARY}\""
        )),
        nuget_body(),
    )
    .header("X-NuGet-ApiKey", TOK_OTHER)
    .header("Authorization", basic("deployer", TOK_APP));
    refused(&h, "nuget with two job tokens", &req, 404, API_404).await;
    // A prefix-less (legacy) token in the same slots is found by look-up alone: g/app's
    // LEGACY_APP is let into g/secret like TOK_APP (found, so it was looked at).
    for (label, req) in package_calls(LEGACY_APP) {
        passes(&h, label, &req).await;
    }
    h.stop().await;
}

#[tokio::test]
async fn package_reads_of_public_and_internal_projects_are_open_writes_are_not() {
    let h = Harness::start().await;
    for project in [3, 7] {
        let p = format!("/api/v4/projects/{project}/packages");
        for req in [
            Req::get(format!("{p}/generic/my_pkg/1.0.0/file.bin")).header("JOB-TOKEN", TOK_OTHER),
            Req::get(format!("{p}/npm/@g%2fpkg"))
                .header("Authorization", format!("Bearer {TOK_OTHER}")),
            Req::get(format!("{p}/pypi/simple/my-pkg/"))
                .header("Authorization", ci_basic(TOK_OTHER)),
        ] {
            passes(&h, "feature read", &req).await;
        }
        for req in [
            with_body(
                "PUT",
                format!("{p}/generic/my_pkg/1.0.0/file.bin"),
                None,
                "bytes",
            )
            .header("JOB-TOKEN", TOK_OTHER),
            with_body(
                "POST",
                format!("{p}/pypi"),
                Some(&form_data()),
                twine_body(),
            )
            .header("Authorization", ci_basic(TOK_OTHER)),
        ] {
            refused(&h, "write", &req, 404, API_404).await;
        }
    }
    h.stop().await;
}

/// Package file uploads with opaque bodies, as their clients send them.
fn file_uploads(token: &str, data: &[u8]) -> Vec<(&'static str, Req)> {
    let p = "/api/v4/projects/2/packages";
    vec![
        (
            "generic",
            with_body("PUT", format!("{p}/generic/big/1.0.0/big.bin"), None, data)
                .header("JOB-TOKEN", token),
        ),
        (
            "maven",
            with_body(
                "PUT",
                format!("{p}/maven/com/example/big/1.0/big-1.0.jar"),
                Some("application/java-archive"),
                data,
            )
            .header("Authorization", ci_basic(token)),
        ),
        (
            "rubygems",
            with_body(
                "POST",
                format!("{p}/rubygems/api/v1/gems"),
                Some("application/octet-stream"),
                data,
            )
            .header("Authorization", token),
        ),
        (
            "conan",
            with_body(
                "PUT",
                format!(
                    "{p}/conan/v1/files/big/1.0/g+secret/stable/0/package/abc/0/conan_package.tgz"
                ),
                Some("application/octet-stream"),
                data,
            )
            .header(
                "Authorization",
                format!("Bearer {}", jwt("access_token", token)),
            ),
        ),
        (
            "debian",
            with_body("PUT", format!("{p}/debian/big_1.0_amd64.deb"), None, data)
                .header("Authorization", basic("dput", token)),
        ),
        (
            "terraform module",
            with_body(
                "PUT",
                format!("{p}/terraform/modules/big/aws/1.0.0/file"),
                None,
                data,
            )
            .header("JOB-TOKEN", token),
        ),
    ]
}

/// Package uploads whose clients send multipart bodies, with a large file part.
fn multipart_uploads(token: &str, data: &[u8]) -> Vec<(&'static str, Req)> {
    let p = "/api/v4/projects/2/packages";
    let field = |name: &str| format!("Content-Disposition: form-data; name=\"{name}\"");
    let twine = multipart(
        BOUNDARY,
        &[
            (&field(":action"), b"file_upload"),
            (&field("name"), b"big"),
            (&field("version"), b"1.0.0"),
            (
                "Content-Disposition: form-data; name=\"content\"; filename=\"big-1.0.0.tar.gz\"\r\n\
                 Content-Type: application/octet-stream",
                data,
            ),
        ],
    );
    let chart = multipart(
        BOUNDARY,
        &[(
            "Content-Disposition: form-data; name=\"chart\"; filename=\"big-0.1.0.tgz\"\r\n\
             Content-Type: application/octet-stream",
            data,
        )],
    );
    let nupkg = multipart(
        NUGET_BOUNDARY,
        &[(
            "Content-Type: application/octet-stream\r\n\
             Content-Disposition: form-data; name=package; filename=package.nupkg; filename*=utf-8''package.nupkg",
            data,
        )],
    );
    vec![
        (
            "pypi (twine)",
            with_body("POST", format!("{p}/pypi"), Some(&form_data()), twine)
                .header("Authorization", ci_basic(token)),
        ),
        (
            "helm",
            with_body(
                "POST",
                format!("{p}/helm/api/stable/charts"),
                Some(&form_data()),
                chart,
            )
            .header("Authorization", ci_basic(token)),
        ),
        (
            "nuget",
            with_body(
                "PUT",
                format!("{p}/nuget/"),
                Some(&format!(
                    "multipart/form-data; boundary=\"{NUGET_BOUNDARY}\""
                )),
                nupkg,
            )
            .header("X-NuGet-ApiKey", token),
        ),
    ]
}

#[tokio::test]
async fn multipart_package_uploads_stream_through_byte_identical() {
    let h = Harness::start().await;
    let data = blob(6 * MIB + 777);
    for (label, req) in multipart_uploads(TOK_APP, &data) {
        let body = req.body.clone().unwrap_or_default();
        let rec = passes(&h, label, &req).await;
        assert_eq!(rec.body_len, body.len() as u64, "{label}");
        assert_eq!(rec.body_sha256_hex(), sha256_hex(&body), "{label}");
    }
    for (label, req) in multipart_uploads(TOK_OTHER, &data) {
        refused(&h, label, &req, 404, API_404).await;
    }
    h.stop().await;
}

#[tokio::test]
async fn package_files_stream_through_byte_identical() {
    let h = Harness::start().await;
    let data = blob(6 * MIB + 12_345);
    let digest = sha256_hex(&data);
    for (label, req) in file_uploads(TOK_APP, &data) {
        let rec = passes(&h, label, &req).await;
        assert_eq!(rec.body_len, data.len() as u64, "{label}");
        assert_eq!(rec.body_sha256_hex(), digest, "{label}");
    }
    // The same uploads with another project's token: refused before a byte reaches the forge.
    for (label, req) in file_uploads(TOK_OTHER, &data) {
        refused(&h, label, &req, 404, API_404).await;
    }
    h.stop().await;
}

// =============================================================================================
// Group- and instance-level package endpoints
// =============================================================================================

/// Package endpoints with no target project, each with the credential its client sends.
fn group_and_instance_calls(token: &str) -> Vec<(&'static str, Req)> {
    let ci = ci_basic(token);
    let bearer = format!("Bearer {token}");
    vec![
        (
            "maven group",
            Req::get("/api/v4/groups/10/-/packages/maven/com/example/lib/1.0/lib-1.0.jar")
                .header("Job-Token", token),
        ),
        (
            "maven instance",
            Req::get("/api/v4/packages/maven/com/example/lib/1.0/lib-1.0.jar")
                .header("Job-Token", token),
        ),
        (
            "npm instance",
            Req::get("/api/v4/packages/npm/@g%2fpkg").header("Authorization", bearer.clone()),
        ),
        (
            "npm group",
            Req::get("/api/v4/groups/10/-/packages/npm/@g%2fpkg")
                .header("Authorization", bearer.clone()),
        ),
        (
            "conan instance",
            Req::get("/api/v4/packages/conan/v1/conans/search?q=hello").header(
                "Authorization",
                format!("Bearer {}", jwt("access_token", token)),
            ),
        ),
        (
            "nuget group",
            Req::get("/api/v4/groups/10/-/packages/nuget/index.json")
                .header("Authorization", basic("deployer", token)),
        ),
        (
            "pypi group",
            Req::get("/api/v4/groups/10/-/packages/pypi/simple/my-pkg/")
                .header("Authorization", ci.clone()),
        ),
        (
            "composer group (singular `group`)",
            Req::get("/api/v4/group/10/-/packages/composer/packages.json")
                .header("Authorization", ci.clone()),
        ),
        (
            "debian group",
            Req::get("/api/v4/groups/g%2Ftrusted/-/packages/debian/dists/stable/Release")
                .header("Authorization", basic("apt", token)),
        ),
        (
            "terraform registry versions, Bearer",
            Req::get("/api/v4/packages/terraform/modules/v1/g/infra/aws/versions")
                .header("Authorization", bearer.clone()),
        ),
        (
            "terraform registry file, token parameter (JWT)",
            Req::get(format!(
                "/api/v4/packages/terraform/modules/v1/g/infra/aws/1.0.0/file?token={}&archive=tgz",
                jwt("token", token)
            )),
        ),
    ]
}

#[tokio::test]
async fn group_and_instance_package_endpoints_are_unknown_with_a_job_token() {
    let h = Harness::start().await;
    for (label, req) in group_and_instance_calls(TOK_APP) {
        refused(&h, label, &req, 404, API_404).await;
    }
    // Without a job token they are the forge's business: anonymous, or with a PAT.
    for (label, req) in group_and_instance_calls(TOK_APP) {
        let mut bare = Req::get(req.target.split("?token=").next().unwrap_or_default());
        bare.method = req.method.clone();
        passes(&h, label, &bare).await;
        passes(&h, label, &bare.header("PRIVATE-TOKEN", PAT)).await;
    }
    h.stop().await;
}

#[tokio::test]
async fn a_routes_entry_opens_group_and_instance_package_endpoints_to_its_sources_only() {
    let yaml = format!(
        "{PROJECTS}routes:
  - path: '^/api/v4/groups/10/-/packages/'
    sources: {{ projects: [g/app] }}
  - methods: [GET]
    path: '^/api/v4/packages/'
    sources: {{ groups: [g/trusted] }}
"
    );
    let h = Harness::with(Options::new(&yaml)).await;
    let calls = |token: &str| -> Vec<(&'static str, Req)> {
        group_and_instance_calls(token)
            .into_iter()
            .filter(|(_, r)| {
                r.target.starts_with("/api/v4/groups/10/")
                    || r.target.starts_with("/api/v4/packages/")
            })
            .collect()
    };
    for (label, req) in calls(TOK_APP) {
        if req.target.starts_with("/api/v4/groups/10/") {
            passes(&h, label, &req).await;
        } else {
            // g/app is no source of the instance-level entry.
            refused(&h, label, &req, 404, API_404).await;
        }
    }
    for (label, req) in calls(TOK_TOOL) {
        if req.target.starts_with("/api/v4/packages/") {
            // g/trusted/sub/tool is inside g/trusted.
            passes(&h, label, &req).await;
        } else {
            refused(&h, label, &req, 404, API_404).await;
        }
    }
    // Not a source of either entry: g/trusted-evil is not g/trusted; g/other is nobody's.
    for token in [TOK_EVIL, TOK_OTHER] {
        for (label, req) in calls(token) {
            refused(&h, label, &req, 404, API_404).await;
        }
    }
    // What no entry opens stays unknown for everyone: another group, the singular
    // `group` spelling, a method the entry does not list.
    let ci = ci_basic(TOK_APP);
    for req in [
        Req::get("/api/v4/groups/11/-/packages/maven/a/b/1.0/b-1.0.jar")
            .header("Authorization", ci.clone()),
        Req::get("/api/v4/group/10/-/packages/composer/packages.json")
            .header("Authorization", ci.clone()),
        with_body(
            "PUT",
            "/api/v4/packages/npm/@g%2fpkg",
            Some("application/json"),
            "{}",
        )
        .header("Authorization", format!("Bearer {TOK_TOOL}")),
    ] {
        refused(&h, "not opened", &req, 404, API_404).await;
    }
    // The group entry lists no methods: a publish to the group's endpoint is opened too.
    let req = with_body(
        "PUT",
        "/api/v4/groups/10/-/packages/maven/com/example/lib/1.0/lib-1.0.jar",
        Some("application/octet-stream"),
        "jar",
    )
    .header("Job-Token", TOK_APP);
    passes(&h, "group entry, any method", &req).await;
    h.stop().await;
}
