//! Tests of the fake forge: it must play GitLab faithfully for the gateway's tests to mean
//! anything.
use super::*;
use std::path::Path;
use std::process::Output;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const APP: &str = "glcbt-app-running";
const DONE: &str = "glcbt-app-finished";
const SERVICE: &str = "glpat-service";

fn data() -> ForgeData {
    let mut secret = FakeProject::new(2, "g/sub/secret", "private", 11);
    secret
        .access_levels
        .push(("builds_access_level".into(), "private".into()));
    ForgeData {
        jobs: vec![
            FakeJob::new(APP, 101, "running", 1),
            FakeJob::new(DONE, 100, "success", 1),
        ],
        projects: vec![
            FakeProject::new(1, "g/app", "private", 10),
            secret,
            FakeProject::new(3, "g/public", "public", 10),
        ],
        groups: vec![
            FakeGroup::new(10, "g", None),
            FakeGroup::new(11, "g/sub", Some(10)),
        ],
        service_token: Some(SERVICE.into()),
        git_root: None,
        base_url_path: String::new(),
    }
}

/// One request on a fresh connection; returns status, headers and the whole body.
async fn send(addr: SocketAddr, req: Request<BoxBody>) -> (StatusCode, HeaderMap, Bytes) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let resp = sender.send_request(req).await.expect("response");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    (parts.status, parts.headers, body)
}

fn get(path: &str, headers: &[(&str, &str)]) -> Request<BoxBody> {
    let mut b = Request::get(path).header("host", "forge.test");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::new()).map_err(never).boxed())
        .expect("request")
}

fn json(body: &Bytes) -> Value {
    serde_json::from_slice(body).expect("JSON body")
}

fn basic(user: &str, password: &str) -> String {
    let engine = base64::engine::general_purpose::STANDARD;
    format!("Basic {}", engine.encode(format!("{user}:{password}")))
}

#[tokio::test]
async fn job_lookup_finds_the_token_in_every_slot_and_answers_like_gitlab() {
    let forge = FakeForge::start(data()).await.expect("start");
    let addr = forge.addr();

    let (status, headers, body) = send(addr, get("/api/v4/job", &[("JOB-TOKEN", APP)])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[CONTENT_TYPE], "application/json");
    let v = json(&body);
    assert_eq!(v["id"], 101);
    assert_eq!(v["status"], "running");
    assert_eq!(v["pipeline"]["project_id"], 1);
    assert_eq!(v["user"]["username"], "demo");
    assert_eq!(v["web_url"], format!("{}/g/app/-/jobs/101", forge.url()));

    // A finished job's token still resolves, in its own status: the gateway decides.
    let (status, _, body) = send(addr, get("/api/v4/job", &[("JOB-TOKEN", DONE)])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json(&body)["status"], "success");

    let query = format!("/api/v4/job?job_token={APP}");
    let basic_ci = basic("gitlab-ci-token", APP);
    let bearer = format!("Bearer {APP}");
    for req in [
        get(&query, &[]),
        get("/api/v4/job", &[("authorization", &basic_ci)]),
        get("/api/v4/job", &[("authorization", &bearer)]),
    ] {
        let (status, _, body) = send(addr, req).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(json(&body)["id"], 101);
    }

    let other_user = basic("someone", APP);
    for req in [
        get("/api/v4/job", &[("JOB-TOKEN", "glcbt-unknown")]),
        get("/api/v4/job", &[("authorization", &other_user)]),
        get("/api/v4/job", &[]),
    ] {
        let (status, _, body) = send(addr, req).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body, r#"{"message":"401 Unauthorized"}"#);
    }
    forge.stop().await;
}

#[tokio::test]
async fn lookups_are_told_apart_by_user_agent() {
    let forge = FakeForge::start(data()).await.expect("start");
    let ua = ("user-agent", "scopegate-lookup/0.1");
    send(forge.addr(), get("/api/v4/job", &[("JOB-TOKEN", APP), ua])).await;
    send(forge.addr(), get("/api/v4/job", &[("JOB-TOKEN", APP), ua])).await;
    send(forge.addr(), get("/api/v4/projects/1", &[ua])).await;
    // A client's own request to /api/v4/job (forwarded by the gateway) is not a look-up.
    send(
        forge.addr(),
        get(
            "/api/v4/job",
            &[("JOB-TOKEN", APP), ("user-agent", "curl/8")],
        ),
    )
    .await;

    assert_eq!(forge.job_lookup_count(), 2);
    assert_eq!(forge.lookups().len(), 3);
    let requests = forge.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].headers["user-agent"], "curl/8");

    forge.clear();
    assert_eq!(forge.job_lookup_count(), 0);
    assert!(forge.requests().is_empty() && forge.lookups().is_empty());
    forge.stop().await;
}

#[tokio::test]
async fn job_api_modes_simulate_a_forge_in_trouble() {
    let forge = FakeForge::start(data()).await.expect("start");
    let addr = forge.addr();

    forge.set_job_api(JobApi::Status(502));
    let (status, _, _) = send(addr, get("/api/v4/job", &[("JOB-TOKEN", APP)])).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);

    forge.set_job_api(JobApi::Malformed);
    let (status, _, body) = send(addr, get("/api/v4/job", &[("JOB-TOKEN", APP)])).await;
    assert_eq!(status, StatusCode::OK);
    assert!(serde_json::from_slice::<Value>(&body).is_err());

    forge.set_job_api(JobApi::Normal);
    let (status, _, _) = send(addr, get("/api/v4/job", &[("JOB-TOKEN", APP)])).await;
    assert_eq!(status, StatusCode::OK);

    // Hang: no answer while the forge runs; stopping it releases the request with 503.
    forge.set_job_api(JobApi::Hang);
    forge.clear();
    let pending = tokio::spawn(send(addr, get("/api/v4/job", &[("JOB-TOKEN", APP)])));
    forge
        .wait_until(|reqs, _| reqs.first().is_some_and(|r| r.ended))
        .await;
    assert!(!pending.is_finished());
    forge.stop().await;
    let (status, _, _) = pending.await.expect("client task");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn projects_and_groups_by_id_or_path_anonymous_or_with_the_service_token() {
    let forge = FakeForge::start(data()).await.expect("start");
    let addr = forge.addr();
    let svc = [("PRIVATE-TOKEN", SERVICE)];

    // Anonymous: public projects only, by id or by encoded path (any case).
    for path in [
        "/api/v4/projects/3",
        "/api/v4/projects/g%2Fpublic",
        "/api/v4/projects/G%2FPublic",
    ] {
        let (status, _, body) = send(addr, get(path, &[])).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert_eq!(json(&body)["id"], 3);
    }
    for path in [
        "/api/v4/projects/1",
        "/api/v4/projects/g%2Fapp",
        "/api/v4/projects/99",
    ] {
        let (status, _, body) = send(addr, get(path, &[])).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(body, r#"{"message":"404 Project Not Found"}"#);
    }
    // A wrong service token is no better than none.
    let (status, _, _) = send(
        addr,
        get("/api/v4/projects/1", &[("PRIVATE-TOKEN", "nope")]),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, _, body) = send(addr, get("/api/v4/projects/g%2Fsub%2Fsecret", &svc)).await;
    assert_eq!(status, StatusCode::OK);
    let v = json(&body);
    assert_eq!(v["id"], 2);
    assert_eq!(v["path_with_namespace"], "g/sub/secret");
    assert_eq!(v["path"], "secret");
    assert_eq!(v["visibility"], "private");
    assert_eq!(v["web_url"], format!("{}/g/sub/secret", forge.url()));
    assert_eq!(v["namespace"]["id"], 11);
    assert_eq!(v["namespace"]["full_path"], "g/sub");
    assert_eq!(v["namespace"]["parent_id"], 10);
    assert_eq!(v["namespace"]["kind"], "group");
    assert_eq!(v["builds_access_level"], "private");
    for level in [
        "repository",
        "package_registry",
        "container_registry",
        "releases",
        "environments",
    ] {
        assert_eq!(v[format!("{level}_access_level")], "enabled", "{level}");
    }
    let bearer = format!("Bearer {SERVICE}");
    let (status, _, _) = send(
        addr,
        get("/api/v4/projects/1", &[("authorization", &bearer)]),
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    // Groups: the service token only.
    for path in ["/api/v4/groups/11", "/api/v4/groups/g%2Fsub"] {
        let (status, _, body) = send(addr, get(path, &svc)).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        let v = json(&body);
        assert_eq!(
            (
                v["id"].clone(),
                v["full_path"].clone(),
                v["parent_id"].clone()
            ),
            (json!(11), json!("g/sub"), json!(10))
        );
    }
    let (status, _, body) = send(addr, get("/api/v4/groups/11", &[])).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body, r#"{"message":"404 Group Not Found"}"#);

    // One job of one project, for `runner.dependencies: strict`: service token only.
    let (status, _, body) = send(addr, get("/api/v4/projects/1/jobs/101", &svc)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json(&body)["pipeline"]["project_id"], 1);
    let (status, _, _) = send(addr, get("/api/v4/projects/2/jobs/101", &svc)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, _, body) = send(addr, get("/api/v4/projects/1/jobs/101", &[])).await;
    assert_eq!(json(&body)["forge"], "fake");

    // Below a project: echoed, not a project look-up.
    let (status, _, body) = send(addr, get("/api/v4/projects/1/repository/tree", &[])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        json(&body),
        json!({"forge": "fake", "method": "GET", "path": "/api/v4/projects/1/repository/tree"})
    );
    forge.stop().await;
}

#[tokio::test]
async fn everything_lives_under_the_relative_url_root() {
    let mut d = data();
    d.base_url_path = "/gitlab".into();
    let forge = FakeForge::start(d).await.expect("start");
    let (status, _, body) = send(
        forge.addr(),
        get("/gitlab/api/v4/job", &[("JOB-TOKEN", APP)]),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        json(&body)["web_url"],
        format!("{}/gitlab/g/app/-/jobs/101", forge.url())
    );
    let (_, _, body) = send(forge.addr(), get("/gitlab/api/v4/projects/3", &[])).await;
    assert_eq!(
        json(&body)["web_url"],
        format!("{}/gitlab/g/public", forge.url())
    );
    // Outside the root nothing is GitLab: echoed.
    let (_, _, body) = send(forge.addr(), get("/api/v4/job", &[("JOB-TOKEN", APP)])).await;
    assert_eq!(json(&body)["forge"], "fake");
    forge.stop().await;
}

#[tokio::test]
async fn every_request_is_recorded_with_its_body() {
    let forge = FakeForge::start(data()).await.expect("start");
    let req = Request::post("/api/v4/projects/1/issues?a=%2F&b")
        .header("host", "forge.test")
        .header("x-probe", "1")
        .body(
            Full::new(Bytes::from_static(b"title=hi"))
                .map_err(never)
                .boxed(),
        )
        .expect("request");
    let (status, _, body) = send(forge.addr(), req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        json(&body),
        json!({"forge": "fake", "method": "POST", "path": "/api/v4/projects/1/issues"})
    );

    forge.wait_for_requests(1).await;
    let r = &forge.requests()[0];
    assert_eq!(r.method, Method::POST);
    assert_eq!(r.uri, "/api/v4/projects/1/issues?a=%2F&b");
    assert_eq!(r.path(), "/api/v4/projects/1/issues");
    assert_eq!(r.headers["x-probe"], "1");
    assert_eq!(r.body, "title=hi");
    assert_eq!(r.body_len, 8);
    assert_eq!(r.body_sha256, <[u8; 32]>::from(Sha256::digest(b"title=hi")));
    assert!(r.complete && r.ended);
    forge.stop().await;
}

#[tokio::test]
async fn a_large_streamed_body_is_hashed_whole_and_kept_only_in_part() {
    let forge = FakeForge::start(data()).await.expect("start");
    const CHUNK: usize = 64 * 1024;
    const CHUNKS: usize = 8 * 16; // 8 MiB, sent chunked
    let chunk = Bytes::from((0..CHUNK).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    let mut expected = Sha256::new();
    for _ in 0..CHUNKS {
        expected.update(&chunk);
    }
    let frames = futures_util::stream::iter(
        std::iter::repeat_n(chunk.clone(), CHUNKS).map(|c| Ok::<_, std::io::Error>(Frame::data(c))),
    );
    let req = Request::put("/api/v4/projects/1/packages/generic/p/1/big.bin")
        .header("host", "forge.test")
        .body(http_body_util::StreamBody::new(frames).boxed())
        .expect("request");
    let (status, _, _) = send(forge.addr(), req).await;
    assert_eq!(status, StatusCode::OK);
    let r = &forge.requests()[0];
    assert_eq!(r.body_len, (CHUNK * CHUNKS) as u64);
    assert_eq!(r.body_sha256, <[u8; 32]>::from(expected.finalize()));
    assert_eq!(r.body.len(), RECORDED_BODY_LIMIT);
    assert_eq!(r.body[..CHUNK], chunk[..]);
    assert!(r.complete);
    forge.stop().await;
}

#[tokio::test]
async fn a_request_is_seen_when_it_arrives_and_an_aborted_body_is_incomplete() {
    let forge = FakeForge::start(data()).await.expect("start");
    let mut tcp = TcpStream::connect(forge.addr()).await.expect("connect");
    tcp.write_all(
        b"POST /upload HTTP/1.1\r\nhost: forge.test\r\ncontent-length: 100000\r\n\r\n0123456789",
    )
    .await
    .expect("write");
    forge.wait_for_requests(1).await;
    let r = &forge.requests()[0];
    assert_eq!(r.uri, "/upload");
    assert!(!r.ended && !r.complete);

    drop(tcp); // the client gives up mid-body
    forge.wait_until(|reqs, _| reqs[0].ended).await;
    let r = &forge.requests()[0];
    assert!(!r.complete);
    assert_eq!(r.body_len, 10);
    assert_eq!(r.body, "0123456789");
    assert_eq!(
        r.body_sha256,
        <[u8; 32]>::from(Sha256::digest(b"0123456789"))
    );
    forge.stop().await;
}

#[tokio::test]
async fn keep_alive_serves_several_requests_on_one_connection() {
    let forge = FakeForge::start(data()).await.expect("start");
    let mut tcp = TcpStream::connect(forge.addr()).await.expect("connect");
    tcp.write_all(b"GET /a HTTP/1.1\r\nhost: f\r\n\r\nGET /b HTTP/1.1\r\nhost: f\r\nconnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.expect("read");
    assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 2, "{out}");
    assert_eq!(
        forge
            .requests()
            .iter()
            .map(|r| r.uri.clone())
            .collect::<Vec<_>>(),
        ["/a", "/b"]
    );
    forge.stop().await;
}

// ---- Git through the fake forge (this is what proves the gitcgi bridge) ----

/// git as a client: isolated from the user's config, credential helpers and prompts.
async fn git_client(home: &Path, cwd: &Path, args: &[&str]) -> Output {
    tokio::process::Command::new("git")
        .args(args)
        .current_dir(cwd)
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .env("HOME", home)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
        .output()
        .await
        .expect("run git")
}

fn ok(out: &Output) {
    assert!(
        out.status.success(),
        "git failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn git_forge(base: &str) -> (tempfile::TempDir, FakeForge) {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("repos");
    crate::demo::seed_repo(&root, "g/app", "hello from g/app\n")
        .await
        .expect("seed");
    let mut d = data();
    d.git_root = Some(root);
    d.base_url_path = base.into();
    (dir, FakeForge::start(d).await.expect("start"))
}

#[tokio::test]
async fn git_clone_and_push_through_the_fake_forge() {
    let (dir, forge) = git_forge("").await;
    let home = dir.path();
    let url = format!("http://u:p@{}/g/app.git", forge.addr());
    ok(&git_client(home, home, &["clone", "-q", &url, "clone"]).await);
    let work = dir.path().join("clone");
    let readme = std::fs::read_to_string(work.join("README.md")).expect("README");
    assert_eq!(readme, "hello from g/app\n");

    // Git was challenged first, as GitLab does, then came back with its credentials.
    let first = &forge.requests()[0];
    assert_eq!(first.path(), "/g/app.git/info/refs");
    assert!(!first.headers.contains_key(AUTHORIZATION));
    assert!(forge
        .requests()
        .iter()
        .any(|r| r.path() == "/g/app.git/git-upload-pack"));

    // A push larger than git's post buffer (1 MiB) goes chunked, with no Content-Length.
    let mut blob = Vec::with_capacity(3 << 20);
    let mut h: [u8; 32] = Sha256::digest(b"seed").into();
    while blob.len() < 3 << 20 {
        h = Sha256::digest(h).into();
        blob.extend_from_slice(&h);
    }
    std::fs::write(work.join("big.bin"), &blob).expect("write blob");
    ok(&git_client(home, &work, &["add", "big.bin"]).await);
    ok(&git_client(home, &work, &["commit", "-q", "-m", "big"]).await);
    forge.clear();
    ok(&git_client(home, &work, &["push", "-q", "origin", "main"]).await);

    // git probes a large push with a tiny POST first; the pack is the largest one.
    let pushed = forge
        .requests()
        .into_iter()
        .filter(|r| r.path() == "/g/app.git/git-receive-pack")
        .max_by_key(|r| r.body_len)
        .expect("receive-pack request");
    assert!(pushed.body_len > 3 << 20 && pushed.complete);
    assert!(!pushed.headers.contains_key(http::header::CONTENT_LENGTH));

    let head = git_client(home, &work, &["rev-parse", "HEAD"]).await;
    let bare = dir.path().join("repos/g/app.git");
    let remote = git_client(home, &bare, &["rev-parse", "main"]).await;
    ok(&remote);
    assert_eq!(head.stdout, remote.stdout);
    forge.stop().await;
}

#[tokio::test]
async fn git_under_a_relative_url_root_and_without_the_dot_git() {
    let (dir, forge) = git_forge("/gitlab").await;
    let home = dir.path();
    let url = format!("http://u:p@{}/gitlab/g/app", forge.addr());
    ok(&git_client(home, home, &["clone", "-q", &url, "clone"]).await);
    assert!(dir.path().join("clone/README.md").exists());
    forge.stop().await;
}

#[tokio::test]
async fn git_without_credentials_is_challenged_and_unknown_repos_are_404() {
    let (_dir, forge) = git_forge("").await;
    let addr = forge.addr();
    let (status, headers, _) = send(
        addr,
        get("/g/app.git/info/refs?service=git-upload-pack", &[]),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers[WWW_AUTHENTICATE], "Basic realm=\"GitLab\"");

    let auth = basic("u", "p");
    let (status, headers, body) = send(
        addr,
        get(
            "/g/app.git/info/refs?service=git-upload-pack",
            &[("authorization", &auth)],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        headers[CONTENT_TYPE],
        "application/x-git-upload-pack-advertisement"
    );
    assert!(body.starts_with(b"001e# service=git-upload-pack\n"));

    let (status, _, _) = send(
        addr,
        get(
            "/g/missing.git/info/refs?service=git-upload-pack",
            &[("authorization", &auth)],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = send(
        addr,
        get(
            "/g/../app.git/info/refs?service=git-upload-pack",
            &[("authorization", &auth)],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    forge.stop().await;
}
