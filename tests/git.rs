//! Git over smart HTTP through scopegate, with the real `git` client and the fake forge
//! serving bare repositories through the real `git http-backend`.
//!
//! git first sends every request without credentials (the forge challenges it with 401,
//! scopegate forwards it: there is no token in it), then retries with the credentials from
//! the URL. So "the forge received nothing" reads here as "the forge received no request
//! carrying a credential": every denial is proven by git's own failure and output, and by the
//! forge's record holding nothing but those credential-less probes.

mod support;

use base64::Engine as _;
use http::header::AUTHORIZATION;
use scopegate::demo::forge::Recorded;
use std::path::Path;
use support::*;

const NOT_FOUND: &str =
    "The project you were looking for could not be found or you don't have permission to view it.";
const PUSH_FORBIDDEN: &str = "You are not allowed to push code to this project.";

async fn git_harness(yaml: &str) -> Harness {
    let mut opts = Options::new(yaml);
    opts.git = true;
    Harness::with(opts).await
}

fn remote(h: &Harness, token: &str, repo: &str) -> String {
    format!("http://gitlab-ci-token:{token}@{}/{repo}", h.gw.addr)
}

fn basic(user: &str, password: &str) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}")
}

/// An optional `(content-type, body)`.
type ReqBody = Option<(&'static str, String)>;

fn carries_credentials(r: &Recorded) -> bool {
    r.headers.contains_key(AUTHORIZATION)
        || r.headers.contains_key("job-token")
        || r.uri.contains("glcbt-")
}

/// The forge saw at least the credential-less probe, and nothing that carried a credential.
fn assert_only_anonymous_probes(h: &Harness) {
    let reqs = h.forge.requests();
    assert!(
        !reqs.is_empty(),
        "git's credential-less probe should have been forwarded"
    );
    for r in &reqs {
        assert!(
            !carries_credentials(r),
            "the forge received a request with credentials: {} {}",
            r.method,
            r.uri
        );
        assert_eq!(r.method, http::Method::GET, "{}", r.uri);
        assert!(r.path().ends_with("/info/refs"), "{}", r.uri);
    }
}

/// A work tree with one commit on `main`, ready to push somewhere.
async fn local_repo(dir: &Path) {
    for args in [
        &["init", "-q", "-b", "main"][..],
        &["config", "user.name", "t"],
        &["config", "user.email", "t@example.invalid"],
    ] {
        let (ok, err) = git(dir, args).await;
        assert!(ok, "git {args:?}: {err}");
    }
    std::fs::write(dir.join("new.txt"), "pushed\n").expect("write");
    for args in [&["add", "new.txt"][..], &["commit", "-q", "-m", "new"]] {
        let (ok, err) = git(dir, args).await;
        assert!(ok, "git {args:?}: {err}");
    }
}

async fn bare_head(h: &Harness, repo: &str) -> String {
    let root = h.git.as_ref().expect("git harness").path();
    let out = tokio::process::Command::new("git")
        .args(["-c", "safe.directory=*", "rev-parse", "main"])
        .current_dir(root.join(format!("{repo}.git")))
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .await
        .expect("git runs");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test]
async fn clone_of_an_allowlisted_project_succeeds() {
    let h = git_harness(PROJECTS).await;
    let work = tempfile::tempdir().expect("tempdir");
    let url = remote(&h, TOK_APP, "g/secret.git");
    let (ok, err) = git(work.path(), &["clone", "-q", &url, "clone"]).await;
    assert!(ok, "clone failed: {err}");
    let readme = std::fs::read_to_string(work.path().join("clone/README.md")).expect("README");
    assert_eq!(readme, "# g/secret\n");
    // The pack came from the forge, asked for with the token.
    assert!(h
        .forge
        .requests()
        .iter()
        .any(|r| r.path() == "/g/secret.git/git-upload-pack"
            && r.headers.contains_key(AUTHORIZATION)));
    h.stop().await;
}

#[tokio::test]
async fn clone_of_a_project_outside_the_allowlist_is_denied_before_the_forge() {
    let h = git_harness(PROJECTS).await;
    let work = tempfile::tempdir().expect("tempdir");
    let url = remote(&h, TOK_OTHER, "g/secret.git");
    let (ok, err) = git(work.path(), &["clone", "-q", &url, "clone"]).await;
    assert!(!ok, "clone should fail");
    assert!(err.contains(NOT_FOUND), "git's stderr: {err}");
    assert!(!work.path().join("clone/README.md").exists());
    assert_only_anonymous_probes(&h);

    // The same denial, as one request.
    h.forge.clear();
    let r = h
        .get(
            "/g/secret.git/info/refs?service=git-upload-pack",
            &[("authorization", &basic("gitlab-ci-token", TOK_OTHER))],
        )
        .await;
    assert_eq!(
        r.headers()["content-type"].to_str().expect("ascii"),
        "text/plain; charset=utf-8"
    );
    let body = h.assert_denied(r, 404).await;
    assert_eq!(body, NOT_FOUND);
    h.stop().await;
}

#[tokio::test]
async fn clone_of_the_jobs_own_project_succeeds() {
    let h = git_harness(PROJECTS).await;
    let work = tempfile::tempdir().expect("tempdir");
    let url = remote(&h, TOK_APP, "g/app.git");
    let (ok, err) = git(work.path(), &["clone", "-q", &url, "clone"]).await;
    assert!(ok, "clone failed: {err}");
    let readme = std::fs::read_to_string(work.path().join("clone/README.md")).expect("README");
    assert_eq!(readme, "# g/app\n");

    // Without `.git`, as GitLab also routes it.
    let url = remote(&h, TOK_APP, "g/app");
    let (ok, err) = git(work.path(), &["clone", "-q", &url, "clone2"]).await;
    assert!(ok, "clone without .git failed: {err}");
    assert!(work.path().join("clone2/README.md").exists());
    h.stop().await;
}

#[tokio::test]
async fn a_finished_jobs_token_is_refused_with_401() {
    let h = git_harness(PROJECTS).await;
    let work = tempfile::tempdir().expect("tempdir");
    let url = remote(&h, TOK_DONE, "g/app.git");
    let (ok, err) = git(work.path(), &["ls-remote", &url]).await;
    assert!(!ok, "ls-remote should fail");
    assert!(err.contains("Authentication failed"), "git's stderr: {err}");
    assert_only_anonymous_probes(&h);

    h.forge.clear();
    let r = h
        .get(
            "/g/app.git/info/refs?service=git-upload-pack",
            &[("authorization", &basic("gitlab-ci-token", TOK_DONE))],
        )
        .await;
    assert_eq!(r.headers()["www-authenticate"], "Basic realm=\"GitLab\"");
    h.assert_denied(r, 401).await;
    h.stop().await;
}

#[tokio::test]
async fn push_to_a_project_out_of_scope_is_denied_as_not_found() {
    let h = git_harness(PROJECTS).await;
    let work = tempfile::tempdir().expect("tempdir");
    local_repo(work.path()).await;
    let before = bare_head(&h, "g/other").await;
    let url = remote(&h, TOK_APP, "g/other.git");
    let (ok, err) = git(work.path(), &["push", "-q", &url, "HEAD:refs/heads/main"]).await;
    assert!(!ok, "push should fail");
    assert!(err.contains(NOT_FOUND), "git's stderr: {err}");
    assert_only_anonymous_probes(&h);
    assert!(!h
        .forge
        .requests()
        .iter()
        .any(|r| r.path().ends_with("/git-receive-pack")));
    assert_eq!(bare_head(&h, "g/other").await, before);

    h.forge.clear();
    let r = h
        .get(
            "/g/other.git/info/refs?service=git-receive-pack",
            &[("authorization", &basic("gitlab-ci-token", TOK_APP))],
        )
        .await;
    assert_eq!(h.assert_denied(r, 404).await, NOT_FOUND);
    h.stop().await;
}

#[tokio::test]
async fn push_to_the_jobs_own_project_is_forbidden_without_git_push() {
    let h = git_harness(PROJECTS).await;
    let work = tempfile::tempdir().expect("tempdir");
    local_repo(work.path()).await;
    let before = bare_head(&h, "g/app").await;
    let url = remote(&h, TOK_APP, "g/app.git");
    let (ok, err) = git(work.path(), &["push", "-q", &url, "HEAD:refs/heads/main"]).await;
    assert!(!ok, "push should fail");
    assert!(err.contains(PUSH_FORBIDDEN), "git's stderr: {err}");
    assert_only_anonymous_probes(&h);
    assert!(!h
        .forge
        .requests()
        .iter()
        .any(|r| r.path().ends_with("/git-receive-pack")));
    assert_eq!(bare_head(&h, "g/app").await, before);
    h.stop().await;
}

#[tokio::test]
async fn receive_pack_advertisement_on_the_own_project_is_a_plain_text_403() {
    let h = git_harness(PROJECTS).await;
    let auth = basic("gitlab-ci-token", TOK_APP);
    let r = h
        .get(
            "/g/app.git/info/refs?service=git-receive-pack",
            &[("authorization", &auth)],
        )
        .await;
    assert_eq!(
        r.headers()["content-type"].to_str().expect("ascii"),
        "text/plain; charset=utf-8"
    );
    assert_eq!(h.assert_denied(r, 403).await, PUSH_FORBIDDEN);

    // The POST itself, whatever its body, never reaches the forge either.
    let r = h
        .http
        .post(h.url("/g/app.git/git-receive-pack"))
        .header("authorization", &auth)
        .header("content-type", "application/x-git-receive-pack-request")
        .body("0000")
        .send()
        .await
        .expect("request");
    assert_eq!(h.assert_denied(r, 403).await, PUSH_FORBIDDEN);

    // The upload-pack advertisement of the same project is fine: the 403 is the push rule.
    let r = h
        .get(
            "/g/app.git/info/refs?service=git-upload-pack",
            &[("authorization", &auth)],
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(h.forge.requests().len(), 1);
    h.stop().await;
}

#[tokio::test]
async fn push_to_the_own_project_with_git_push_enabled_works() {
    let yaml = PROJECTS.replacen(
        "  - id: 1\n    path: g/app\n",
        "  - id: 1\n    path: g/app\n    git_push: true\n",
        1,
    );
    assert_ne!(yaml, PROJECTS);
    let h = git_harness(&yaml).await;
    let work = tempfile::tempdir().expect("tempdir");
    local_repo(work.path()).await;
    let url = remote(&h, TOK_APP, "g/app.git");
    let (ok, err) = git(
        work.path(),
        &["push", "-q", "--force", &url, "HEAD:refs/heads/main"],
    )
    .await;
    assert!(ok, "push failed: {err}");
    let (ok, local) = {
        let out = tokio::process::Command::new("git")
            .args(["rev-parse", "HEAD"])
            .current_dir(work.path())
            .output()
            .await
            .expect("git runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        )
    };
    assert!(ok);
    assert_eq!(bare_head(&h, "g/app").await, local);

    // `git_push` is for the job's own project only: g/secret lets g/app in, but not to push.
    h.forge.clear();
    let url = remote(&h, TOK_APP, "g/secret.git");
    let (ok, err) = git(work.path(), &["push", "-q", &url, "HEAD:refs/heads/x"]).await;
    assert!(!ok, "push should fail");
    assert!(err.contains(PUSH_FORBIDDEN), "git's stderr: {err}");
    assert_only_anonymous_probes(&h);
    h.stop().await;
}

#[tokio::test]
async fn wiki_and_design_repositories_are_scoped_as_their_project() {
    // Without Git repositories the forge echoes authenticated Git requests (200).
    let h = Harness::start().await;
    let other = basic("gitlab-ci-token", TOK_OTHER);
    let app = basic("gitlab-ci-token", TOK_APP);
    for repo in [
        "g/secret.wiki.git",
        "g/secret.design.git",
        "G/Secret.Wiki.git",
    ] {
        let path = format!("/{repo}/info/refs?service=git-upload-pack");
        h.forge.clear();
        let r = h.get(&path, &[("authorization", &other)]).await;
        assert_eq!(h.assert_denied(r, 404).await, NOT_FOUND, "{repo}");

        h.forge.clear();
        let r = h.get(&path, &[("authorization", &app)]).await;
        let rec = h.assert_forwarded(r).await;
        assert_eq!(rec.uri, path);

        // A push to the wiki is a push to the project: in scope, but 403.
        h.forge.clear();
        let path = format!("/{repo}/info/refs?service=git-receive-pack");
        let r = h.get(&path, &[("authorization", &app)]).await;
        assert_eq!(h.assert_denied(r, 403).await, PUSH_FORBIDDEN, "{repo}");
    }
    h.forge.clear();
    let r = h
        .get(
            "/g/app.wiki.git/info/refs?service=git-upload-pack",
            &[("authorization", &app)],
        )
        .await;
    h.assert_forwarded(r).await;
    h.stop().await;
}

#[tokio::test]
async fn job_token_header_is_read_on_git_routes() {
    let h = git_harness(PROJECTS).await;
    let work = tempfile::tempdir().expect("tempdir");

    // A JOB-TOKEN header travels on git's very first request: a denial comes before the
    // forge sees anything at all.
    let header = format!("http.extraHeader=JOB-TOKEN: {TOK_OTHER}");
    let url = format!("http://{}/g/secret.git", h.gw.addr);
    let (ok, err) = git(work.path(), &["-c", &header, "clone", "-q", &url, "denied"]).await;
    assert!(!ok, "clone should fail");
    assert!(err.contains(NOT_FOUND), "git's stderr: {err}");
    h.assert_untouched();

    // Allowed: scopegate forwards the JOB-TOKEN request. The forge, like GitLab, still wants
    // Basic credentials for Git, so the working clone carries the same token in both places
    // (one job token in two slots is one credential holder, not two).
    let header = format!("http.extraHeader=JOB-TOKEN: {TOK_APP}");
    let url = remote(&h, TOK_APP, "g/secret.git");
    let (ok, err) = git(work.path(), &["-c", &header, "clone", "-q", &url, "clone"]).await;
    assert!(ok, "clone failed: {err}");
    let readme = std::fs::read_to_string(work.path().join("clone/README.md")).expect("README");
    assert_eq!(readme, "# g/secret\n");
    let reqs = h.forge.requests();
    let first = reqs.first().expect("forwarded");
    assert_eq!(first.headers["job-token"], TOK_APP);
    assert!(!first.headers.contains_key(AUTHORIZATION));
    assert!(reqs
        .iter()
        .any(|r| r.path() == "/g/secret.git/git-upload-pack"
            && r.headers.contains_key(AUTHORIZATION)
            && r.headers.contains_key("job-token")));

    // Two different job tokens (header and Basic) → 404 at the first request carrying both;
    // only the JOB-TOKEN-only probe got through (and the forge challenged it).
    h.forge.clear();
    let url = remote(&h, TOK_OTHER, "g/secret.git");
    let (ok, err) = git(work.path(), &["-c", &header, "clone", "-q", &url, "mixed"]).await;
    assert!(!ok, "clone should fail");
    assert!(err.contains(NOT_FOUND), "git's stderr: {err}");
    for r in h.forge.requests() {
        assert!(!r.headers.contains_key(AUTHORIZATION), "{}", r.uri);
        assert!(r.path().ends_with("/info/refs"), "{}", r.uri);
    }
    h.stop().await;
}

#[tokio::test]
async fn every_git_and_lfs_endpoint_is_scoped() {
    // Without Git repositories the forge echoes authenticated Git requests (200).
    let h = Harness::start().await;
    let other = basic("gitlab-ci-token", TOK_OTHER);
    let app = basic("gitlab-ci-token", TOK_APP);
    let send = |method: &str, path: &str, auth: &str, body: Option<(&'static str, String)>| {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = h
            .http
            .request(method, h.url(path))
            .header("authorization", auth);
        if let Some((ct, body)) = body {
            req = req.header("content-type", ct).body(body);
        }
        req.send()
    };
    let pack = || Some(("application/x-git-upload-pack-request", "0000".to_owned()));
    let lfs = |op: &str| {
        Some((
            "application/vnd.git-lfs+json",
            format!(
                r#"{{"operation":"{op}","objects":[{{"oid":"{}","size":1}}]}}"#,
                "a".repeat(64)
            ),
        ))
    };

    // Reads: denied for g/other's job, forwarded for g/app's (on g/secret's allowlist).
    let reads: Vec<(&str, String, ReqBody)> = vec![
        (
            "GET",
            "/g/secret/info/refs?service=git-upload-pack".into(),
            None,
        ),
        ("POST", "/g/secret.git/git-upload-pack".into(), pack()),
        ("POST", "/g/secret/git-upload-pack".into(), pack()),
        (
            "POST",
            "/g/secret.git/info/lfs/objects/batch".into(),
            lfs("download"),
        ),
        (
            "GET",
            format!("/g/secret.git/gitlab-lfs/objects/{}", "a".repeat(64)),
            None,
        ),
    ];
    for (method, path, body) in reads {
        h.forge.clear();
        let r = send(method, &path, &other, body.clone())
            .await
            .expect("request");
        assert_eq!(h.assert_denied(r, 404).await, NOT_FOUND, "{method} {path}");
        h.forge.clear();
        let r = send(method, &path, &app, body).await.expect("request");
        let rec = h.assert_forwarded(r).await;
        assert_eq!(rec.uri, path);
    }

    // Writes: 404 out of scope, 403 in scope (no job token pushes without `git_push`).
    let writes: Vec<(&str, String, ReqBody)> = vec![
        (
            "POST",
            "/g/secret.git/info/lfs/objects/batch".into(),
            lfs("upload"),
        ),
        (
            "PUT",
            format!("/g/secret.git/gitlab-lfs/objects/{}/1", "a".repeat(64)),
            None,
        ),
        (
            "POST",
            "/g/secret.git/info/lfs/locks".into(),
            Some(("application/vnd.git-lfs+json", r#"{"path":"a"}"#.into())),
        ),
        (
            "POST",
            "/g/secret/git-receive-pack".into(),
            Some(("application/x-git-receive-pack-request", "0000".into())),
        ),
    ];
    for (method, path, body) in writes {
        h.forge.clear();
        let r = send(method, &path, &other, body.clone())
            .await
            .expect("request");
        assert_eq!(h.assert_denied(r, 404).await, NOT_FOUND, "{method} {path}");
        h.forge.clear();
        let r = send(method, &path, &app, body).await.expect("request");
        let got = h.assert_denied(r, 403).await;
        assert_eq!(got, PUSH_FORBIDDEN, "{method} {path}");
    }
    h.stop().await;
}
