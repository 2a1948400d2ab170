//! Test support: the real gateway (`scopegate::start`) on an ephemeral loopback port in front
//! of the recording fake forge, with a fixed world of groups, projects and job tokens.
//! Every denial is proven twice: the client's status, and `assert_untouched` (the forge
//! received nothing but scopegate's own look-ups).
#![allow(dead_code)]

use scopegate::demo::forge::{FakeForge, FakeGroup, FakeJob, FakeProject, ForgeData};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

// Job tokens of the world. `glcbt-` tokens are GitLab 17's format; LEGACY is the older
// prefix-less kind, which scopegate must find by look-up alone.
pub const TOK_APP: &str = "glcbt-64_AppJobTokenAAAAAAAAAAAAAA";
pub const TOK_OTHER: &str = "glcbt-64_OtherJobTokenBBBBBBBBBBBB";
pub const TOK_TOOL: &str = "glcbt-64_TrustedToolTokenCCCCCCCCC";
pub const TOK_EVIL: &str = "glcbt-64_EvilToolTokenDDDDDDDDDDDD";
pub const TOK_CANCELING: &str = "glcbt-64_CancelingTokenEEEEEEEEEEE";
pub const TOK_DONE: &str = "glcbt-64_FinishedTokenFFFFFFFFFFFF";
pub const TOK_SECRET_PROJ: &str = "glcbt-64_SecretJobTokenGGGGGGGGGGG";
pub const LEGACY_APP: &str = "LegacyJobTokenApp1234567";
pub const PAT: &str = "glpat-PersonalAccessToken123456";
pub const SERVICE_TOKEN: &str = "glpat-ServiceReadApiToken0000000";

/// Every secret the tests use, for the leak checks.
pub const ALL_TOKENS: [&str; 10] = [
    TOK_APP,
    TOK_OTHER,
    TOK_TOOL,
    TOK_EVIL,
    TOK_CANCELING,
    TOK_DONE,
    TOK_SECRET_PROJ,
    LEGACY_APP,
    PAT,
    SERVICE_TOKEN,
];

pub const JOB_APP: u64 = 101;

/// Groups g(10) ⊃ g/trusted(11) ⊃ g/trusted/sub(12); g/trusted-evil(13) beside it.
/// Projects: 1 g/app, 2 g/secret, 3 g/public (public), 4 g/other, 5 g/trusted/sub/tool,
/// 6 g/trusted-evil/tool, 7 g/internal (internal, repository members-only).
pub fn world() -> ForgeData {
    let mut internal = FakeProject::new(7, "g/internal", "internal", 10);
    internal.access_levels = vec![("repository_access_level".into(), "private".into())];
    ForgeData {
        jobs: vec![
            FakeJob::new(TOK_APP, JOB_APP, "running", 1),
            FakeJob::new(LEGACY_APP, 102, "running", 1),
            FakeJob::new(TOK_OTHER, 104, "running", 4),
            FakeJob::new(TOK_TOOL, 105, "running", 5),
            FakeJob::new(TOK_EVIL, 106, "running", 6),
            FakeJob::new(TOK_CANCELING, 107, "canceling", 1),
            FakeJob::new(TOK_DONE, 108, "success", 1),
            FakeJob::new(TOK_SECRET_PROJ, 109, "running", 2),
        ],
        projects: vec![
            FakeProject::new(1, "g/app", "private", 10),
            FakeProject::new(2, "g/secret", "private", 10),
            FakeProject::new(3, "g/public", "public", 10),
            FakeProject::new(4, "g/other", "private", 10),
            FakeProject::new(5, "g/trusted/sub/tool", "private", 12),
            FakeProject::new(6, "g/trusted-evil/tool", "private", 13),
            internal,
        ],
        groups: vec![
            FakeGroup::new(10, "g", None),
            FakeGroup::new(11, "g/trusted", Some(10)),
            FakeGroup::new(12, "g/trusted/sub", Some(11)),
            FakeGroup::new(13, "g/trusted-evil", Some(10)),
        ],
        service_token: Some(SERVICE_TOKEN.to_owned()),
        git_root: None,
        base_url_path: String::new(),
    }
}

/// The projects section matching `world()`, without a service token: g/secret lets g/app
/// and the g/trusted group in.
pub const PROJECTS: &str = r#"
projects:
  - id: 1
    path: g/app
  - id: 2
    path: g/secret
    inbound:
      projects: [g/app]
      groups: [g/trusted]
  - id: 3
    path: g/public
    visibility: public
  - id: 4
    path: g/other
  - id: 5
    path: g/trusted/sub/tool
  - id: 6
    path: g/trusted-evil/tool
  - id: 7
    path: g/internal
    visibility: internal
    features: { repository: private }
"#;

pub struct Harness {
    pub forge: FakeForge,
    pub gw: scopegate::Running,
    pub http: reqwest::Client,
    pub base: String,
    pub git: Option<tempfile::TempDir>,
}

static ENV_COUNTER: AtomicUsize = AtomicUsize::new(0);

pub struct Options {
    pub data: ForgeData,
    /// Top-level YAML after `listen` and `upstream` (projects, routes, mode, …).
    pub yaml: String,
    /// Extra lines under `upstream:` (each indented two spaces).
    pub upstream_extra: String,
    pub service_token: bool,
    pub git: bool,
}

impl Options {
    pub fn new(yaml: &str) -> Self {
        Options {
            data: world(),
            yaml: yaml.to_owned(),
            upstream_extra: String::new(),
            service_token: false,
            git: false,
        }
    }
}

impl Harness {
    /// The world, `PROJECTS`, no service token.
    pub async fn start() -> Harness {
        Harness::with(Options::new(PROJECTS)).await
    }

    pub async fn with(mut opts: Options) -> Harness {
        let git = if opts.git {
            let dir = tempfile::tempdir().expect("tempdir");
            make_repo(dir.path(), "g/secret");
            make_repo(dir.path(), "g/other");
            make_repo(dir.path(), "g/app");
            opts.data.git_root = Some(dir.path().to_path_buf());
            Some(dir)
        } else {
            None
        };
        let forge = FakeForge::start(opts.data).await.expect("forge starts");
        let mut upstream = format!("upstream:\n  url: {}\n{}", forge.url(), opts.upstream_extra);
        if opts.service_token {
            let var = format!(
                "SCOPEGATE_TEST_TOKEN_{}_{}",
                std::process::id(),
                ENV_COUNTER.fetch_add(1, Ordering::SeqCst)
            );
            std::env::set_var(&var, SERVICE_TOKEN);
            upstream.push_str(&format!("  token_env: {var}\n"));
        }
        let yaml = format!(
            "listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\n{upstream}{}\n",
            opts.yaml
        );
        let config = scopegate::Config::from_yaml_str(&yaml, Path::new("test.yaml"))
            .unwrap_or_else(|e| panic!("test config: {e}\n{yaml}"));
        let gw = scopegate::start(config).await.expect("gateway starts");
        let base = format!("http://{}", gw.addr);
        let http = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");
        Harness {
            forge,
            gw,
            http,
            base,
            git,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// GET with the given headers.
    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
        let mut req = self.http.get(self.url(path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().await.expect("request completes")
    }

    /// GET with `JOB-TOKEN`.
    pub async fn get_job(&self, path: &str, token: &str) -> reqwest::Response {
        self.get(path, &[("JOB-TOKEN", token)]).await
    }

    /// Asserts the status, and that nothing but look-ups reached the forge.
    pub async fn assert_denied(&self, resp: reqwest::Response, status: u16) -> String {
        let got = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        assert_eq!(got, status, "status (body: {body})");
        self.assert_untouched();
        body
    }

    pub fn assert_untouched(&self) {
        let seen: Vec<String> = self
            .forge
            .requests()
            .iter()
            .map(|r| format!("{} {}", r.method, r.uri))
            .collect();
        assert!(seen.is_empty(), "the forge received {seen:?}");
    }

    /// Asserts the request was forwarded: 200 from the forge's catch-all, exactly one request.
    pub async fn assert_forwarded(
        &self,
        resp: reqwest::Response,
    ) -> scopegate::demo::forge::Recorded {
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        assert_eq!(status, 200, "status (body: {body})");
        let reqs = self.forge.requests();
        assert_eq!(
            reqs.len(),
            1,
            "forwarded requests: {:?}",
            reqs.iter().map(|r| &r.uri).collect::<Vec<_>>()
        );
        reqs.into_iter().next().expect("one request")
    }

    pub async fn stop(self) {
        self.gw.shutdown().await;
        self.forge.stop().await;
    }
}

/// A bare repository `<root>/<path>.git` with one commit on `main`.
pub fn make_repo(root: &Path, path: &str) {
    let bare = root.join(format!("{path}.git"));
    std::fs::create_dir_all(&bare).expect("mkdir");
    let work = tempfile::tempdir().expect("tempdir");
    let git = |dir: &Path, args: &[&str]| {
        let out = std::process::Command::new("git")
            .args([
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@example.invalid",
                "-c",
                "init.defaultBranch=main",
            ])
            .args(args)
            .current_dir(dir)
            .output()
            .expect("git runs");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    git(&bare, &["init", "--bare", "-q"]);
    git(&bare, &["config", "http.receivepack", "true"]);
    git(work.path(), &["init", "-q"]);
    std::fs::write(work.path().join("README.md"), format!("# {path}\n")).expect("write");
    git(work.path(), &["add", "README.md"]);
    git(work.path(), &["commit", "-q", "-m", "init"]);
    git(
        work.path(),
        &[
            "push",
            "-q",
            bare.to_str().expect("utf8 path"),
            "HEAD:refs/heads/main",
        ],
    );
    git(&bare, &["symbolic-ref", "HEAD", "refs/heads/main"]);
}

/// Runs `git` with no config from the environment, no prompts, and returns (success, stderr).
pub async fn git(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = tokio::process::Command::new("git")
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.invalid",
            "-c",
            "credential.helper=",
        ])
        .args(args)
        .current_dir(dir)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .output()
        .await
        .expect("git runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Sends raw bytes over a fresh connection and returns what came back until the server
/// closed the connection or one response was complete.
pub async fn raw(addr: std::net::SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("write");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if response_complete(&buf) {
                    break;
                }
            }
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

fn response_complete(buf: &[u8]) -> bool {
    let text = String::from_utf8_lossy(buf);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    let len = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<usize>().ok())?
    });
    match len {
        Some(n) => body.len() >= n,
        None => false,
    }
}
