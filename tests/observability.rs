//! Observability, end to end through the real binary in front of the recording fake forge:
//! request ids on scopegate's own answers and in the access line (text and JSON), the access
//! line's fields (client, class, source, target, decision, reason, status, bytes, duration),
//! the authentication log, and the audit → `allowlist suggest` → enforce workflow. Every
//! output is checked for tokens.

mod process;
mod support;

use base64::Engine as _;
use process::{scopegate, Proc, PATIENCE};
use scopegate::demo::forge::FakeForge;
use std::path::Path;
use std::time::{Duration, Instant};
use support::{make_repo, world, TOK_APP, TOK_EVIL, TOK_OTHER, TOK_TOOL};

const API_404: &str = r#"{"message":"404 Project Not Found"}"#;

fn basic(token: &str) -> String {
    let encoded =
        base64::engine::general_purpose::STANDARD.encode(format!("gitlab-ci-token:{token}"));
    format!("Basic {encoded}")
}

/// Projects of `support::world()` with g/secret letting only g/app in.
const PROJECTS: &str = "projects:
- id: 1
  path: g/app
- id: 2
  path: g/secret
  inbound:
    projects: [g/app]
- id: 3
  path: g/public
  visibility: public
- id: 4
  path: g/other
- id: 5
  path: g/trusted/sub/tool
- id: 6
  path: g/trusted-evil/tool
";

fn config_text(
    forge: &FakeForge,
    format: &str,
    mode: &str,
    auth_log: &Path,
    projects: &str,
) -> String {
    format!(
        "listen: 127.0.0.1:0\nupstream:\n  url: {}\nmode: {mode}\nlog:\n  format: {format}\nauth_log:\n  path: {}\n{projects}",
        forge.url(),
        auth_log.display()
    )
}

/// The running binary and a client for it.
struct Gateway {
    proc: Proc,
    base: String,
    http: reqwest::Client,
}

impl Gateway {
    fn start(config: &Path, format: &str) -> Gateway {
        let proc = Proc::run(config);
        let addr = match format {
            "json" => {
                let (_, line) = proc.stderr.expect_line(0, "the listening line", |l| {
                    l.contains("scopegate listening")
                });
                let v: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
                v["fields"]["addr"]
                    .as_str()
                    .expect("addr field")
                    .parse()
                    .expect("an address")
            }
            _ => proc.wait_listening(),
        };
        let addr: std::net::SocketAddr = addr;
        Gateway {
            proc,
            base: format!("http://{addr}"),
            http: reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("client"),
        }
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
        let mut req = self.http.get(format!("{}{path}", self.base));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().await.expect("request completes")
    }

    /// The access line naming `needle` (a request id, a path), once it is written.
    fn access_line(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        self.proc
            .stderr
            .expect_line(0, what, |l| l.contains("scopegate::access") && pred(l))
            .1
    }
}

/// A field of an access line, text (`key=value`, strings quoted) or JSON (`fields.key`).
fn field(line: &str, key: &str) -> Option<String> {
    if line.starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        return match &v["fields"][key] {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Null => None,
            other => Some(other.to_string()),
        };
    }
    let start = line.find(&format!(" {key}="))? + key.len() + 2;
    let rest = &line[start..];
    let value = match rest.strip_prefix('"') {
        Some(quoted) => &quoted[..quoted.find('"')?],
        None => rest.split_whitespace().next()?,
    };
    Some(value.to_owned())
}

/// Reads the auth log once it has at least `n` lines (bounded wait: it is written by the
/// gateway's writer thread, asynchronously to the responses).
fn auth_lines(path: &Path, n: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let complete: Vec<&str> = text
            .split_inclusive('\n')
            .filter(|l| l.ends_with('\n'))
            .collect();
        if complete.len() >= n {
            return complete
                .iter()
                .map(|l| {
                    serde_json::from_str(l).unwrap_or_else(|e| panic!("auth log line {l:?}: {e}"))
                })
                .collect();
        }
        assert!(
            Instant::now() < deadline,
            "auth log has {} lines, want {n}:\n{text}",
            complete.len()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every spelling of every token a test used: none may appear in any output.
fn assert_no_tokens(what: &str, output: &[u8]) {
    let text = String::from_utf8_lossy(output);
    let lower = text.to_ascii_lowercase();
    for token in [TOK_APP, TOK_OTHER, TOK_TOOL, TOK_EVIL] {
        let b64 =
            base64::engine::general_purpose::STANDARD.encode(format!("gitlab-ci-token:{token}"));
        for spelling in [
            token.to_ascii_lowercase(),
            token.to_ascii_lowercase().replace('_', "%5f"),
            b64.to_ascii_lowercase(),
        ] {
            assert!(
                !lower.contains(&spelling),
                "{what} shows a token ({spelling}):\n{text}"
            );
        }
        // The part after the prefix alone, too (a masked prefix with the secret left).
        let secret = &token["glcbt-64_".len()..];
        assert!(
            !text.contains(secret),
            "{what} shows a token's secret part:\n{text}"
        );
    }
}

fn is_rfc3339_millis(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 24
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'.',
            23 => *c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

async fn access_log_and_auth_log(format: &str) {
    let mut data = world();
    let git = tempfile::tempdir().expect("tempdir");
    make_repo(git.path(), "g/app");
    data.git_root = Some(git.path().to_path_buf());
    let forge = FakeForge::start(data).await.expect("forge");
    let dir = tempfile::tempdir().expect("tempdir");
    let auth_log = dir.path().join("auth.jsonl");
    let config = dir.path().join("proxy.yaml");
    std::fs::write(
        &config,
        config_text(&forge, format, "enforce", &auth_log, PROJECTS),
    )
    .expect("write config");
    let gw = Gateway::start(&config, format);

    // 1. A denial: 404 with X-Request-Id, nothing at the forge, and the same id in the
    // access line with everything an administrator needs.
    // The token in the query string, so the masking of the logged path shows.
    let resp = gw
        .get(
            &format!("/api/v4/projects/2/issues?state=opened&job_token={TOK_OTHER}"),
            &[],
        )
        .await;
    assert_eq!(resp.status(), 404);
    let id = resp.headers()["x-request-id"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert_eq!(id.len(), 24, "{id}");
    assert!(id.bytes().all(|c| c.is_ascii_hexdigit()), "{id}");
    assert_eq!(resp.text().await.expect("body"), API_404);
    assert!(
        forge.requests().is_empty(),
        "the forge received {:?}",
        forge.requests()
    );
    let line = gw.access_line("the denial's access line", |l| l.contains(&id));
    let f = |k: &str| field(&line, k).unwrap_or_else(|| panic!("no {k} in {line}"));
    assert_eq!(f("request_id"), id);
    assert!(f("client").starts_with("127.0.0.1:"), "{line}");
    assert_eq!(f("method"), "GET");
    assert_eq!(
        f("path"),
        "/api/v4/projects/2/issues?state=opened&job_token=[MASKED]"
    );
    assert_eq!(f("class"), "api");
    assert_eq!(f("source"), "g/other");
    assert_eq!(f("job"), "104");
    assert_eq!(f("target"), "g/secret");
    assert_eq!(f("decision"), "deny");
    assert_eq!(f("reason"), "not_in_inbound_allowlist");
    assert_eq!(f("status"), "404");
    assert_eq!(f("bytes_sent"), API_404.len().to_string());
    assert_eq!(f("bytes_received"), "0");
    assert!(
        f("duration_ms").parse::<f64>().is_ok_and(|d| d >= 0.0),
        "{line}"
    );
    assert_eq!(f("complete"), "true");
    if format == "json" {
        let v: serde_json::Value = serde_json::from_str(&line).expect("JSON");
        assert!(
            v["timestamp"].as_str().is_some_and(|t| !t.is_empty()),
            "{line}"
        );
        assert_eq!(v["target"], "scopegate::access");
    }

    // 2. Other answers scopegate gives itself carry an id too: 401 (a dedicated slot with
    // no job token in it) and 400 (a classifying parameter given twice).
    let r = gw
        .get(
            "/api/v4/projects/1",
            &[("JOB-TOKEN", "glcbt-64_NoSuchJobToken0000000000")],
        )
        .await;
    assert_eq!(r.status(), 401);
    let id_401 = r.headers()["x-request-id"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert_ne!(id_401, id);
    let r = gw
        .get(
            "/g/app.git/info/refs?service=git-upload-pack&service=git-receive-pack",
            &[("authorization", &basic(TOK_APP))],
        )
        .await;
    assert_eq!(r.status(), 400);
    assert!(r.headers().contains_key("x-request-id"));
    assert!(
        forge.requests().is_empty(),
        "the forge received {:?}",
        forge.requests()
    );
    let line = gw.access_line("the 401's access line", |l| l.contains(&id_401));
    assert_eq!(field(&line, "status").as_deref(), Some("401"));

    // 3. An allowed, streamed download (git's ref advertisement from `git http-backend`):
    // the forge's answer is passed on unchanged (no id added) and the line logs the bytes.
    let r = gw
        .get(
            "/g/app.git/info/refs?service=git-upload-pack",
            &[("authorization", &basic(TOK_APP))],
        )
        .await;
    assert_eq!(r.status(), 200);
    assert!(
        !r.headers().contains_key("x-request-id"),
        "forwarded answers are the forge's"
    );
    let body = r.bytes().await.expect("body");
    assert!(
        body.starts_with(b"001e# service=git-upload-pack"),
        "{body:?}"
    );
    assert_eq!(forge.requests().len(), 1);
    let line = gw.access_line("the download's access line", |l| {
        l.contains("/g/app.git/info/refs") && field(l, "status").as_deref() == Some("200")
    });
    assert_eq!(
        field(&line, "bytes_sent"),
        Some(body.len().to_string()),
        "{line}"
    );
    assert_eq!(field(&line, "class").as_deref(), Some("git"));
    assert_eq!(field(&line, "decision").as_deref(), Some("allow"));
    assert_eq!(field(&line, "reason").as_deref(), Some("same_project"));
    assert_eq!(field(&line, "complete").as_deref(), Some("true"));

    // 4. A request body: its size is logged as received.
    let payload = format!("{{\"title\":\"{}\"}}", "x".repeat(5000));
    let r = gw
        .http
        .post(format!("{}/api/v4/projects/1/issues", gw.base))
        .header("JOB-TOKEN", TOK_APP)
        .header("content-type", "application/json")
        .body(payload.clone())
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 200);
    let _ = r.bytes().await;
    let line = gw.access_line("the upload's access line", |l| {
        field(l, "method").as_deref() == Some("POST")
    });
    assert_eq!(
        field(&line, "bytes_received"),
        Some(payload.len().to_string()),
        "{line}"
    );

    // 5. No job token: forwarded, an access line, no auth-log line.
    let r = gw.get("/api/v4/projects/3", &[]).await;
    assert_eq!(r.status(), 200);
    let _ = r.bytes().await;
    let line = gw.access_line("the token-less access line", |l| {
        field(l, "path").as_deref() == Some("/api/v4/projects/3")
    });
    assert_eq!(field(&line, "decision").as_deref(), Some("forward"));
    assert_eq!(field(&line, "source").as_deref(), Some("-"));

    // The auth log: one line per request with a live job token (the denial, the download,
    // the upload). The 401's token resolved to no job, the 400 was refused before its
    // credentials were looked up, the last request carried no token.
    let lines = auth_lines(&auth_log, 3);
    assert_eq!(lines.len(), 3, "{lines:?}");
    let denial = lines
        .iter()
        .find(|l| l["request_id"] == id.as_str())
        .unwrap_or_else(|| panic!("the denial's id {id} in the auth log: {lines:?}"));
    assert_eq!(denial["source_project"], "g/other");
    assert_eq!(denial["source_project_id"], 4);
    assert_eq!(denial["job_id"], 104);
    assert_eq!(denial["target_project"], "g/secret");
    assert_eq!(denial["target_project_id"], 2);
    assert_eq!(denial["class"], "api");
    assert_eq!(denial["decision"], "deny");
    assert_eq!(denial["reason"], "not_in_inbound_allowlist");
    assert_eq!(denial["status"], 404);
    assert_eq!(
        denial["path"],
        "/api/v4/projects/2/issues?state=opened&job_token=[MASKED]"
    );
    for l in &lines {
        assert!(l["time"].as_str().is_some_and(is_rfc3339_millis), "{l}");
        assert_eq!(l["request_id"].as_str().map(str::len), Some(24), "{l}");
        assert_ne!(
            l["path"], "/api/v4/projects/3",
            "token-less requests are not in the auth log"
        );
        assert_ne!(l["request_id"], id_401.as_str());
    }
    assert_eq!(
        lines
            .iter()
            .filter(|l| l["source_project"] == "g/app")
            .count(),
        2,
        "{lines:?}"
    );

    gw.proc.signal("TERM");
    let mut proc = gw.proc;
    assert!(proc.wait_exit(PATIENCE).success());
    assert_no_tokens("stderr", &proc.stderr.raw());
    assert_no_tokens("stdout", &proc.stdout.raw());
    assert_no_tokens("auth log", &std::fs::read(&auth_log).expect("auth log"));
    forge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_access_line_and_auth_log_carry_the_request_id() {
    access_log_and_auth_log("text").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_access_line_and_auth_log_carry_the_request_id() {
    access_log_and_auth_log("json").await;
}

/// The cross-project requests the audit run observes and the enforce run must then allow
/// (a `docker pull` of another project's image among them).
const CROSS: [(&str, &str); 4] = [
    (TOK_OTHER, "/api/v4/projects/2/issues"),
    (TOK_OTHER, "/api/v4/projects/1/merge_requests"),
    (TOK_TOOL, "/api/v4/projects/1/issues"),
    (
        TOK_OTHER,
        "/jwt/auth?service=container_registry&scope=repository:g/secret/img:pull",
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_then_suggest_then_enforce_keeps_pipelines_working() {
    let forge = FakeForge::start(world()).await.expect("forge");
    let dir = tempfile::tempdir().expect("tempdir");
    let auth_log = dir.path().join("auth.jsonl");
    let config = dir.path().join("proxy.yaml");
    std::fs::write(
        &config,
        config_text(&forge, "text", "audit", &auth_log, PROJECTS),
    )
    .expect("write config");

    // Audit: everything goes through; the would-be denials are recorded.
    let gw = Gateway::start(&config, "text");
    let mut job_token_requests = 0;
    for (token, path) in CROSS.iter().chain(CROSS.iter().take(1)) {
        let r = gw.get(path, &[("JOB-TOKEN", token)]).await;
        assert_eq!(r.status(), 200, "{path}: audit forwards");
        job_token_requests += 1;
    }
    // Own project, a public project's repository read, an allowlisted source: allowed, and
    // nothing to suggest. A 401 and a token-less request: nothing in the auth log at all.
    for (token, path) in [
        (TOK_APP, "/api/v4/projects/1/issues"),
        (TOK_OTHER, "/api/v4/projects/3/repository/tree"),
        (TOK_APP, "/api/v4/projects/2/issues"),
    ] {
        let r = gw.get(path, &[("JOB-TOKEN", token)]).await;
        assert_eq!(r.status(), 200, "{path}");
        job_token_requests += 1;
    }
    let r = gw
        .get(
            "/api/v4/projects/2",
            &[("JOB-TOKEN", "glcbt-64_NoSuchJobToken0000000000")],
        )
        .await;
    assert_eq!(r.status(), 401, "audit keeps 401");
    let r = gw.get("/api/v4/projects/2/issues", &[]).await;
    assert_eq!(r.status(), 200);
    let lines = auth_lines(&auth_log, job_token_requests);
    let reasons: Vec<String> = lines
        .iter()
        .map(|l| format!("{} {}", l["decision"], l["reason"]))
        .collect();
    assert_eq!(
        lines
            .iter()
            .filter(|l| l["decision"] == "would_deny")
            .count(),
        5,
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("feature_read")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("same_project")),
        "{reasons:?}"
    );
    drop(gw);
    // A torn or foreign line is reported with its number and skipped.
    let mut log = std::fs::read_to_string(&auth_log).expect("auth log");
    log.push_str("this is not json\n");
    std::fs::write(&auth_log, &log).expect("append junk");
    let junk_line = log.lines().count();

    // Suggest, against the config in force.
    let out = scopegate(&[
        "allowlist",
        "suggest",
        "--auth-log",
        auth_log.to_str().expect("utf8"),
        "--config",
        config.to_str().expect("utf8"),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "suggest failed: {stderr}");
    assert!(
        stderr.contains(&format!("auth.jsonl:{junk_line}: skipped")),
        "{stderr}"
    );
    assert_no_tokens("suggest output", &out.stdout);
    // g/app (1) gets g/other and the tool; g/secret (2) keeps g/app and gets g/other, seen
    // three times (twice through the API, once pulling an image). Own-project, public and allowlisted traffic suggest nothing.
    assert!(stdout.contains("- id: 1\n  path: g/app\n"), "{stdout}");
    assert!(stdout.contains("- id: 2\n  path: g/secret\n"), "{stdout}");
    assert!(
        stdout.contains("      - g/other  # id 4: 3 requests, first "),
        "{stdout}"
    );
    assert!(
        stdout.contains("      - g/trusted/sub/tool  # id 5: 1 request, first "),
        "{stdout}"
    );
    assert!(
        stdout.contains("      - g/app\n"),
        "the existing entry is kept: {stdout}"
    );
    assert!(!stdout.contains("g/public"), "{stdout}");
    assert!(
        !stdout.contains("- g/app  #"),
        "g/app is already allowed: {stdout}"
    );

    // Merge: the suggested entries replace the config's entries for those projects.
    let suggested_ids: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("- id: "))
        .collect();
    assert_eq!(suggested_ids, vec!["1", "2"]);
    let mut kept = String::from("projects:\n");
    for entry in PROJECTS
        .trim_start_matches("projects:\n")
        .split("- id: ")
        .filter(|e| !e.is_empty())
    {
        let id = entry.lines().next().unwrap_or_default();
        if !suggested_ids.contains(&id) {
            kept.push_str("- id: ");
            kept.push_str(entry);
        }
    }
    kept.push_str(&stdout);
    let enforce = dir.path().join("enforce.yaml");
    std::fs::write(
        &enforce,
        config_text(&forge, "text", "enforce", &auth_log, &kept),
    )
    .expect("write");
    let check = scopegate(&["check", "--config", enforce.to_str().expect("utf8")]);
    assert!(
        check.status.success(),
        "scopegate check refuses the merged config: {}\n{kept}",
        String::from_utf8_lossy(&check.stderr)
    );
    // Suggesting again against the merged config: nothing left to add.
    let again = scopegate(&[
        "allowlist",
        "suggest",
        "--auth-log",
        auth_log.to_str().expect("utf8"),
        "--config",
        enforce.to_str().expect("utf8"),
    ]);
    assert!(
        String::from_utf8_lossy(&again.stdout).starts_with("# No cross-project"),
        "{}",
        String::from_utf8_lossy(&again.stdout)
    );

    // Enforce with the merged config: the observed traffic is allowed, an unrelated project
    // is still denied, and the forge sees nothing of it.
    let gw = Gateway::start(&enforce, "text");
    forge.clear();
    for (token, path) in CROSS {
        let r = gw.get(path, &[("JOB-TOKEN", token)]).await;
        assert_eq!(r.status(), 200, "{path} is allowed after the merge");
    }
    let forwarded = forge.requests();
    assert_eq!(forwarded.len(), CROSS.len());
    assert!(
        forwarded
            .iter()
            .any(|r| r.uri.contains("scope=repository%3Ag%2Fsecret%2Fimg%3Apull")),
        "the pull scope is kept: {:?}",
        forwarded.iter().map(|r| &r.uri).collect::<Vec<_>>()
    );
    forge.clear();
    for path in ["/api/v4/projects/2/issues", "/api/v4/projects/1/issues"] {
        let r = gw.get(path, &[("JOB-TOKEN", TOK_EVIL)]).await;
        assert_eq!(
            r.status(),
            404,
            "{path}: g/trusted-evil/tool was never allowed"
        );
        assert!(r.headers().contains_key("x-request-id"));
        assert!(
            forge.requests().is_empty(),
            "the forge received {:?}",
            forge.requests()
        );
    }
    gw.proc.signal("TERM");
    let mut proc = gw.proc;
    assert!(proc.wait_exit(PATIENCE).success());
    assert_no_tokens("stderr", &proc.stderr.raw());
    assert_no_tokens("auth log", &std::fs::read(&auth_log).expect("auth log"));
    forge.stop().await;
}

/// A job-token request g/secret refuses; its X-Request-Id.
async fn denied(gw: &Gateway) -> String {
    let r = gw
        .get("/api/v4/projects/2/issues", &[("JOB-TOKEN", TOK_OTHER)])
        .await;
    assert_eq!(r.status(), 404);
    r.headers()["x-request-id"]
        .to_str()
        .expect("ascii")
        .to_owned()
}

/// logrotate either way: `copytruncate` (the file is emptied in place: appends start again at
/// its beginning, no hole) and rename + SIGHUP (the reload reopens the configured path).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_auth_log_survives_rotation() {
    let forge = FakeForge::start(world()).await.expect("forge");
    let dir = tempfile::tempdir().expect("tempdir");
    let auth_log = dir.path().join("auth.jsonl");
    let config = dir.path().join("proxy.yaml");
    std::fs::write(
        &config,
        config_text(&forge, "text", "enforce", &auth_log, PROJECTS),
    )
    .expect("write config");
    let gw = Gateway::start(&config, "text");
    let first = denied(&gw).await;
    assert_eq!(auth_lines(&auth_log, 1)[0]["request_id"], first.as_str());

    // copytruncate.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&auth_log)
        .expect("open")
        .set_len(0)
        .expect("truncate");
    let second = denied(&gw).await;
    let lines = auth_lines(&auth_log, 1);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["request_id"], second.as_str());
    let text = std::fs::read(&auth_log).expect("read");
    assert_eq!(text.first(), Some(&b'{'), "no hole before the line");

    // rename + SIGHUP.
    let rotated = dir.path().join("auth.jsonl.1");
    std::fs::rename(&auth_log, &rotated).expect("rename");
    let from = gw.proc.stderr.len();
    gw.proc.signal("HUP");
    gw.proc
        .stderr
        .expect_line(from, "the reload", |l| l.contains("configuration reloaded"));
    let third = denied(&gw).await;
    let lines = auth_lines(&auth_log, 1);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["request_id"], third.as_str());
    let old = std::fs::read_to_string(&rotated).expect("rotated");
    assert_eq!(old.lines().count(), 1, "{old}");
    assert!(old.contains(&second));
    assert!(forge.requests().is_empty(), "{:?}", forge.requests());
    forge.stop().await;
}

/// Every kind of answer scopegate gives itself carries a distinct `X-Request-Id`; nothing of
/// these requests reaches the forge.
#[tokio::test]
async fn every_answer_scopegate_gives_itself_carries_a_request_id() {
    use scopegate::demo::forge::JobApi;
    use support::{Harness, Options, PROJECTS as WORLD_PROJECTS};
    let h = Harness::with(Options::new(&format!(
        "{WORLD_PROJECTS}\nlimits:\n  inspect_body: 1KiB\n"
    )))
    .await;
    let mut ids = std::collections::BTreeSet::new();
    let mut check = |r: &reqwest::Response, status: u16, what: &str| {
        assert_eq!(r.status().as_u16(), status, "{what}");
        let id = r
            .headers()
            .get("x-request-id")
            .unwrap_or_else(|| panic!("{what}: no X-Request-Id"))
            .to_str()
            .expect("ascii")
            .to_owned();
        assert!(ids.insert(id), "{what}: ids are distinct");
    };
    let r = h.get_job("/api/v4/projects/2/issues", TOK_OTHER).await;
    check(&r, 404, "scope denial");
    let r = h
        .get(
            "/g/app.git/info/refs?service=git-receive-pack",
            &[("authorization", &basic(TOK_APP))],
        )
        .await;
    check(&r, 403, "push refused");
    let r = h
        .get_job("/api/v4/projects/1", "glcbt-64_NoSuchJobToken0000000000")
        .await;
    check(&r, 401, "no live job token");
    let r = h
        .get(
            "/g/app.git/info/refs?service=git-upload-pack&service=git-receive-pack",
            &[("authorization", &basic(TOK_APP))],
        )
        .await;
    check(&r, 400, "conflicting service");
    let r = h
        .http
        .post(h.url("/api/v4/projects/1/issues"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("title={}", "x".repeat(2048)))
        .send()
        .await
        .expect("answered");
    check(&r, 413, "body over inspect_body");
    h.forge.set_job_api(JobApi::Status(500));
    let r = h.get_job("/api/v4/projects/1", TOK_TOOL).await;
    check(&r, 503, "forge look-up failed");
    h.assert_untouched();
    h.stop().await;

    // 502: the forge is unreachable (a socket bound but never listening, kept for the test).
    let closed = tokio::net::TcpSocket::new_v4().expect("socket");
    closed
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let upstream = closed.local_addr().expect("addr");
    let config = scopegate::Config::from_yaml_str(
        &format!("listen: 127.0.0.1:0\nupstream:\n  url: http://{upstream}\n"),
        Path::new("test.yaml"),
    )
    .expect("config");
    let gw = scopegate::start(config).await.expect("starts");
    let r = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
        .get(format!("http://{}/api/v4/projects/1", gw.addr))
        .send()
        .await
        .expect("answered");
    check(&r, 502, "forge unreachable");
    gw.shutdown().await;
    drop(closed);
}
