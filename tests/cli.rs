//! End-to-end tests of the `scopegate` binary (SPEC §5, §6): `check` and `run` on good and bad
//! config files, serving through the real process, SIGTERM, and reloads on SIGHUP and on file
//! changes. Every process runs under a guard that kills it if the test fails; nothing sleeps
//! in place of synchronisation (the tests wait for the log lines the process writes, and poll
//! the admin port, bounded, where they wait on the other process).

mod process;
mod support;

use process::{scopegate, Proc, BIN, PATIENCE};
use scopegate::demo::forge::FakeForge;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use support::{world, PROJECTS, TOK_APP, TOK_OTHER};

// ---------------------------------------------------------------- check on the example

#[test]
fn check_accepts_the_example_config_and_names_its_projects() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("proxy.yaml");
    let out = scopegate(&["check", "--config", example.to_str().expect("utf-8 path")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    for needle in [
        "projects: 2",
        "1 g/p private",
        "2 g/tools/lint internal",
        "routes: 1",
        "^/api/v4/groups/42/-/packages/maven/",
        "listen: 127.0.0.1:8080",
    ] {
        assert!(
            stdout.contains(needle),
            "summary lacks {needle:?}:\n{stdout}"
        );
    }
}

// ---------------------------------------------------------------- bad config files

/// Where the error must be reported: `@@` in a case's YAML marks the line and column
/// (1-based), and is removed before the file is written.
struct Bad {
    name: &'static str,
    yaml: &'static str,
    /// Text the message must contain besides the position.
    needle: &'static str,
}

const UPSTREAM: &str = "upstream:\n  url: http://127.0.0.1:3000\n";

fn bad_cases() -> Vec<Bad> {
    vec![
        Bad {
            name: "unknown_top_level_key",
            yaml: "upstream:\n  url: http://127.0.0.1:3000\n@@listen_addr: 127.0.0.1:8080\n",
            needle: "unknown field `listen_addr`",
        },
        Bad {
            name: "unknown_nested_key",
            yaml: "upstream:\n  url: http://127.0.0.1:3000\nprojects:\n  - id: 1\n    path: g/p\n    \
                   @@inboud:\n      projects: [2]\n",
            needle: "unknown field `inboud`",
        },
        Bad {
            name: "unknown_key_under_upstream",
            yaml: "upstream:\n  url: http://127.0.0.1:3000\n  @@token: glpat-x\n",
            needle: "unknown field `token`",
        },
        Bad {
            name: "duration_without_unit",
            yaml: "upstream:\n  url: http://127.0.0.1:3000\ncache:\n  ttl: @@30\n",
            needle: "`30` has no unit",
        },
        Bad {
            name: "timeout_with_unknown_unit",
            yaml: "upstream:\n  url: http://127.0.0.1:3000\nlimits:\n  idle_timeout: @@1d\n",
            needle: "unknown unit",
        },
        Bad {
            name: "byte_size_with_unknown_unit",
            yaml: "upstream:\n  url: http://127.0.0.1:3000\nlimits:\n  max_request_head: 64KiB\n  \
                   inspect_body: @@10XB\n",
            needle: "`10XB`",
        },
        Bad {
            name: "byte_size_without_unit",
            yaml: "upstream:\n  url: http://127.0.0.1:3000\nlimits:\n  max_request_head: @@65536\n",
            needle: "no unit",
        },
        Bad {
            name: "listen_host_name",
            yaml: "listen: @@localhost:8080\nupstream:\n  url: http://127.0.0.1:3000\n",
            needle: "`localhost:8080` is not an address",
        },
        Bad {
            name: "listen_port_out_of_range",
            yaml: "listen: @@127.0.0.1:99999\nupstream:\n  url: http://127.0.0.1:3000\n",
            needle: "is not an address",
        },
        Bad {
            name: "admin_listen_without_port",
            yaml: "upstream:\n  url: http://127.0.0.1:3000\nadmin: { listen: @@127.0.0.1 }\n",
            needle: "is not an address",
        },
        Bad {
            name: "upstream_without_scheme",
            yaml: "upstream:\n  url: @@127.0.0.1:3000\n",
            needle: "http://",
        },
        Bad {
            name: "unknown_mode",
            yaml: "upstream:\n  url: http://127.0.0.1:3000\nmode: @@enforced\n",
            needle: "unknown variant `enforced`",
        },
        Bad {
            name: "duplicate_project_id",
            yaml: "upstream:\n  url: http://127.0.0.1:3000\nprojects:\n  - id: 1\n    path: g/a\n  \
                   - @@id: 1\n    path: g/b\n",
            needle: "duplicate project id 1",
        },
        Bad {
            name: "duplicate_project_path",
            // Paths compare case-insensitively, as GitLab's do.
            yaml: "upstream:\n  url: http://127.0.0.1:3000\nprojects:\n  - id: 1\n    path: g/a\n  \
                   - @@id: 2\n    path: G/A\n",
            needle: "duplicate project path g/a",
        },
        Bad {
            name: "route_without_sources",
            yaml: "upstream:\n  url: http://127.0.0.1:3000\nroutes:\n  - @@methods: [GET]\n    \
                   path: '^/api/v4/groups/42/-/packages/'\n",
            needle: "missing field `sources`",
        },
        Bad {
            name: "route_over_project_api",
            yaml: "upstream:\n  url: http://127.0.0.1:3000\nroutes:\n  - path: @@'^/api/v4/projects/'\n    \
                   sources: { projects: [g/build] }\n",
            needle: "/api/v4/projects/",
        },
        Bad {
            name: "route_over_project_api_through_an_alternation",
            yaml: "upstream:\n  url: http://127.0.0.1:3000\nroutes:\n  - methods: [GET]\n    \
                   path: @@'^/api/v4/(groups|projects)/'\n    sources: { projects: [g/build] }\n",
            needle: "/api/v4/projects/",
        },
        Bad {
            name: "route_over_graphql",
            yaml: "upstream:\n  url: http://127.0.0.1:3000\nroutes:\n  - path: @@'^/api/graphql'\n    \
                   sources: { groups: [g] }\n",
            needle: "/api/graphql",
        },
        Bad {
            name: "route_over_graphql_case_insensitive",
            yaml: "upstream:\n  url: http://127.0.0.1:3000\nroutes:\n  - path: @@'(?i)^/API/GraphQL'\n    \
                   sources: { groups: [g] }\n",
            needle: "/api/graphql",
        },
        Bad {
            name: "route_over_git_path",
            yaml: "upstream:\n  url: http://127.0.0.1:3000\nroutes:\n  - path: @@'^/g/p\\.git/'\n    \
                   sources: { projects: [g/build] }\n",
            needle: "/g/p.git/",
        },
        Bad {
            name: "route_over_any_repository_info_refs",
            yaml: "upstream:\n  url: http://127.0.0.1:3000\nroutes:\n  - path: @@'^/[^/]+/[^/]+/info/refs'\n    \
                   sources: { projects: [g/build] }\n",
            needle: "info/refs",
        },
        Bad {
            name: "route_over_jwt_auth",
            yaml: "upstream:\n  url: http://127.0.0.1:3000\nroutes:\n  - path: @@'^/jwt/'\n    \
                   sources: { projects: [g/build] }\n",
            needle: "/jwt/auth",
        },
        Bad {
            name: "yaml_syntax_error",
            yaml: "upstream:\n  url: http://127.0.0.1:3000\nprojects: [\n  @@- id: 1\n",
            needle: "",
        },
        Bad {
            name: "yaml_tab_indentation",
            yaml: "upstream:\n@@\turl: http://127.0.0.1:3000\n",
            needle: "",
        },
        Bad {
            name: "missing_upstream",
            yaml: "@@listen: 127.0.0.1:8080\n",
            needle: "missing field `upstream`",
        },
    ]
}

/// The YAML without its `@@` marker, and the marker's (line, column), both 1-based.
fn place(marked: &str) -> (String, usize, usize) {
    let at = marked.find("@@").expect("the case marks its error with @@");
    let before = &marked[..at];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (marked.replacen("@@", "", 1), line, column)
}

#[test]
fn the_marker_helper_counts_from_one() {
    assert_eq!(place("@@a"), ("a".into(), 1, 1));
    assert_eq!(place("a\n  b: @@c\n"), ("a\n  b: c\n".into(), 2, 6));
}

fn write_config(dir: &Path, name: &str, yaml: &str) -> PathBuf {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, yaml).expect("write config");
    path
}

/// Runs `scopegate SUBCOMMAND --config PATH`; returns (exit code, stdout, stderr).
fn with_config(subcommand: &str, path: &Path) -> (Option<i32>, String, String) {
    let out = scopegate(&[subcommand, "--config", path.to_str().expect("utf-8 path")]);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_and_run_refuse_bad_configs_with_exit_2_and_file_line_column() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut failures = Vec::new();
    for case in bad_cases() {
        let (yaml, line, column) = place(case.yaml);
        let path = write_config(dir.path(), case.name, &yaml);
        let at = format!("{}:{line}:{column}: ", path.display());
        for subcommand in ["check", "run"] {
            let (code, stdout, stderr) = with_config(subcommand, &path);
            let problems = [
                (code != Some(2)).then(|| format!("exit code {code:?}, not 2")),
                (!stderr.starts_with(&at)).then(|| format!("stderr does not start with {at:?}")),
                (!stderr.contains(case.needle)).then(|| format!("stderr lacks {:?}", case.needle)),
                (!stdout.is_empty()).then(|| "stdout is not empty".to_string()),
                (stderr.trim_end().lines().count() != 1)
                    .then(|| "stderr is not one line".to_string()),
            ];
            let problems: Vec<String> = problems.into_iter().flatten().collect();
            if !problems.is_empty() {
                failures.push(format!(
                    "{} ({subcommand}): {}\n  yaml: {yaml:?}\n  stdout: {stdout}\n  stderr: {stderr}",
                    case.name,
                    problems.join("; ")
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn check_and_run_refuse_a_missing_file_with_exit_2_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("no-such-proxy.yaml");
    for subcommand in ["check", "run"] {
        let (code, stdout, stderr) = with_config(subcommand, &path);
        assert_eq!(code, Some(2), "{subcommand}: {stderr}");
        assert!(
            stderr.starts_with(&format!("{}: ", path.display())),
            "{subcommand}: {stderr}"
        );
        assert!(stdout.is_empty(), "{subcommand}: {stdout}");
    }
}

#[test]
fn check_and_run_refuse_an_empty_file_with_exit_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(dir.path(), "empty", "# only a comment\n\n");
    for subcommand in ["check", "run"] {
        let (code, _, stderr) = with_config(subcommand, &path);
        assert_eq!(code, Some(2), "{subcommand}: {stderr}");
        assert!(
            stderr.starts_with(&format!("{}: ", path.display())),
            "{subcommand}: {stderr}"
        );
        assert!(stderr.contains("empty"), "{subcommand}: {stderr}");
    }
}

#[test]
fn check_prints_the_summary_of_a_minimal_config_with_defaults() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(dir.path(), "minimal", UPSTREAM);
    let (code, stdout, stderr) = with_config("check", &path);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("projects: 0"), "{stdout}");
    assert!(stdout.contains("listen: 127.0.0.1:8080"), "{stdout}");
    assert!(
        stdout.contains("upstream: http://127.0.0.1:3000"),
        "{stdout}"
    );
}

#[test]
fn run_exits_1_when_its_port_is_taken() {
    // A held listener: the port is certainly taken for as long as the test runs.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = format!("listen: 127.0.0.1:{port}\n{UPSTREAM}");
    let path = write_config(dir.path(), "taken", &yaml);
    let (code, _, stderr) = with_config("run", &path);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{stderr}"
    );
}

// ---------------------------------------------------------------- run, serve, SIGTERM

const API_FILE: &str = "/api/v4/projects/2/repository/files/README.md/raw?ref=main";

/// The gateway's config in front of `forge`: `world()`'s projects, where g/secret (2) lets
/// g/app in, and `projects` in place of the support module's `PROJECTS`. Both listeners on
/// port 0: the kernel picks free ports as they are bound and the log names them (a port
/// picked by the test and released first could be taken by a parallel test meanwhile).
fn gateway_yaml(forge: &FakeForge, projects: &str) -> String {
    // No drain delay: these tests watch the port stop accepting right after SIGTERM (the
    // delay itself is tested in tests/limits.rs).
    format!(
        "listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\nupstream:\n  url: {}\n\
         shutdown:\n  drain_delay: 0s\n{projects}",
        forge.url()
    )
}

/// `PROJECTS` with g/other also let into g/secret: flips TOK_OTHER's request to allowed.
fn projects_letting_other_in() -> String {
    const FROM: &str = "projects: [g/app]";
    assert_eq!(
        PROJECTS.matches(FROM).count(),
        1,
        "support::PROJECTS changed"
    );
    PROJECTS.replacen(FROM, "projects: [g/app, g/other]", 1)
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// GET `url` with `JOB-TOKEN: token`; returns the status.
async fn get_with_job_token(client: &reqwest::Client, url: &str, token: &str) -> u16 {
    client
        .get(url)
        .header("JOB-TOKEN", token)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .status()
        .as_u16()
}

/// `scopegate_config_generation` from the admin port's /metrics.
async fn generation(client: &reqwest::Client, admin: u16) -> u64 {
    let url = format!("http://127.0.0.1:{admin}/metrics");
    let text = client
        .get(&url)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .text()
        .await
        .expect("metrics body");
    text.lines()
        .find_map(|l| l.strip_prefix("scopegate_config_generation "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no scopegate_config_generation in:\n{text}"))
}

/// Polls the admin port (bounded) until the generation is at least `want`.
async fn wait_for_generation(client: &reqwest::Client, admin: u16, want: u64, proc: &Proc) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = generation(client, admin).await;
        if got >= want {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "config generation stuck at {got} (want {want}); stderr:\n{}",
            proc.stderr.text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A started gateway process in front of a fake forge.
struct Gateway {
    proc: Proc,
    forge: FakeForge,
    base: String,
    listen: u16,
    admin: u16,
    client: reqwest::Client,
}

impl Gateway {
    /// Starts `scopegate run --config path` and waits for it to listen; learns both ports
    /// from its log.
    fn start(path: &Path, forge: FakeForge) -> Gateway {
        let proc = Proc::run(path);
        let (addr, admin) = proc.wait_listening_with_admin();
        let admin = admin
            .unwrap_or_else(|| panic!("no admin listener: {}", proc.stderr.text()))
            .port();
        Gateway {
            proc,
            forge,
            base: format!("http://{addr}"),
            listen: addr.port(),
            admin,
            client: http(),
        }
    }

    async fn generation(&self) -> u64 {
        generation(&self.client, self.admin).await
    }

    async fn wait_for_generation(&self, want: u64) -> u64 {
        wait_for_generation(&self.client, self.admin, want, &self.proc).await
    }

    async fn status(&self, token: &str) -> u16 {
        get_with_job_token(&self.client, &format!("{}{API_FILE}", self.base), token).await
    }

    /// SIGTERM, exit 0 within a bounded wait, the drain is logged; stops the forge.
    async fn terminate(mut self) {
        self.proc.signal("TERM");
        let status = self.proc.wait_exit(PATIENCE);
        assert_eq!(status.code(), Some(0), "{}", self.proc.stderr.text());
        assert!(
            self.proc.stderr.text().contains("shutting down"),
            "{}",
            self.proc.stderr.text()
        );
        self.forge.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_decides_and_exits_0_on_sigterm() {
    let forge = FakeForge::start(world()).await.expect("forge starts");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(dir.path(), "proxy", &gateway_yaml(&forge, PROJECTS));
    let gw = Gateway::start(&path, forge);

    let ready = gw
        .client
        .get(format!("http://127.0.0.1:{}/readyz", gw.admin))
        .send()
        .await
        .expect("GET /readyz");
    assert_eq!(ready.status().as_u16(), 200);
    let health = gw
        .client
        .get(format!("http://127.0.0.1:{}/healthz", gw.admin))
        .send()
        .await
        .expect("GET /healthz");
    assert_eq!(health.status().as_u16(), 200);
    assert_eq!(gw.generation().await, 1);

    // g/secret lets g/app in: forwarded to the forge, which echoes it.
    assert_eq!(gw.status(TOK_APP).await, 200);
    let forwarded = gw.forge.requests();
    assert_eq!(
        forwarded.len(),
        1,
        "{:?}",
        forwarded.iter().map(|r| &r.uri).collect::<Vec<_>>()
    );
    assert_eq!(forwarded[0].uri, API_FILE);

    // g/other's job is not let in: 404 from the gateway, nothing reaches the forge.
    gw.forge.clear();
    assert_eq!(gw.status(TOK_OTHER).await, 404);
    assert!(gw.forge.requests().is_empty());

    // The client's keep-alive connections stay open across the SIGTERM: an idle connection
    // must not hold the drain up.
    let client = gw.client.clone();
    let base = gw.base.clone();
    // stderr is a pipe here, as under systemd or docker: log lines must not carry terminal
    // colour codes.
    let raw = gw.proc.stderr.raw();
    assert!(
        !raw.contains(&0x1b),
        "escape codes in piped logs: {:?}",
        String::from_utf8_lossy(&raw)
    );
    gw.terminate().await;
    let after = client
        .get(format!("{base}{API_FILE}"))
        .header("JOB-TOKEN", TOK_APP)
        .send()
        .await;
    assert!(after.is_err(), "the gateway still answers after exiting");
}

/// SIGTERM while an upload is in flight: /readyz turns 503 (so a load balancer drains this
/// instance), new connections are refused, the upload still completes, then exit 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_an_in_flight_request_and_readyz_turns_503() {
    let forge = FakeForge::start(world()).await.expect("forge starts");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(dir.path(), "proxy", &gateway_yaml(&forge, PROJECTS));
    let mut gw = Gateway::start(&path, forge);

    // An allowed upload whose body the test holds open.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    let upload = gw
        .client
        .put(format!(
            "{}/api/v4/projects/2/packages/generic/p/1/f.bin",
            gw.base
        ))
        .header("JOB-TOKEN", TOK_APP)
        .header("content-type", "application/octet-stream")
        .body(reqwest::Body::wrap_stream(body))
        .send();
    let upload = tokio::spawn(upload);
    tx.send(Ok(b"first half ".to_vec())).await.expect("send");
    // The forge has the request head: the upload is in flight through the gateway.
    tokio::time::timeout(PATIENCE, gw.forge.wait_for_requests(1))
        .await
        .expect("the upload reaches the forge");

    let mark = gw.proc.stderr.len();
    gw.proc.signal("TERM");
    gw.proc
        .stderr
        .expect_line(mark, "the drain to begin", |l| l.contains("shutting down"));
    // The log line comes just before readiness flips: poll (bounded) for the flip. Every
    // answer must be a real one: a refused connection is not "not ready" to every prober.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let ready = http()
            .get(format!("http://127.0.0.1:{}/readyz", gw.admin))
            .send()
            .await
            .map(|r| r.status().as_u16());
        match ready {
            Ok(503) => break,
            Ok(200) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            other => panic!("/readyz during the drain: {other:?}"),
        }
    }
    // The proxy port stops accepting (polled, bounded, for the same reason).
    let deadline = Instant::now() + PATIENCE;
    while std::net::TcpStream::connect(("127.0.0.1", gw.listen)).is_ok() {
        assert!(
            Instant::now() < deadline,
            "the proxy port still accepts during the drain"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    tx.send(Ok(b"second half".to_vec())).await.expect("send");
    drop(tx);
    let resp = tokio::time::timeout(PATIENCE, upload)
        .await
        .expect("the upload completes in time")
        .expect("task")
        .expect("the in-flight upload is not dropped");
    assert_eq!(resp.status().as_u16(), 200);
    let status = gw.proc.wait_exit(PATIENCE);
    assert_eq!(status.code(), Some(0), "{}", gw.proc.stderr.text());
    let recorded = gw.forge.requests();
    assert_eq!(recorded.len(), 1);
    assert!(recorded[0].complete, "{:?}", recorded[0]);
    assert_eq!(&recorded[0].body[..], b"first half second half");
    gw.forge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_exits_0_on_sigint() {
    let forge = FakeForge::start(world()).await.expect("forge starts");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(dir.path(), "proxy", &gateway_yaml(&forge, PROJECTS));
    let mut gw = Gateway::start(&path, forge);
    assert_eq!(gw.status(TOK_APP).await, 200);
    gw.proc.signal("INT");
    let status = gw.proc.wait_exit(PATIENCE);
    let stderr = gw.proc.stderr.text();
    assert_eq!(status.code(), Some(0), "{stderr}");
    // Ctrl-C at a terminal: no load balancer to warn, so the drain delay is skipped.
    assert!(stderr.contains("signal=Interrupt"), "{stderr}");
    assert!(!stderr.contains("drain delay is over"), "{stderr}");
    gw.forge.stop().await;
}

/// A SIGTERM or SIGHUP sent the moment the process says it listens (as an orchestrator or a
/// test harness does) is handled: drained exit 0, or a reload; never the signal's default
/// action, which kills the process. The signal is armed in advance so it lands within
/// microseconds of the line (handlers installed after the line failed the first round).
#[test]
fn signals_sent_as_soon_as_it_listens_are_handled() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(
        dir.path(),
        "proxy",
        &format!("listen: 127.0.0.1:0\nshutdown: {{drain_delay: 0s}}\n{UPSTREAM}"),
    );
    for round in 0..5 {
        let mut proc = Proc::run(&path);
        let term = proc.arm_signal("TERM");
        proc.wait_listening();
        term.fire();
        let status = proc.wait_exit(PATIENCE);
        assert_eq!(
            status.code(),
            Some(0),
            "round {round}: {}",
            proc.stderr.text()
        );

        let mut proc = Proc::run(&path);
        let hup = proc.arm_signal("HUP");
        proc.wait_listening();
        hup.fire();
        proc.stderr
            .expect_line(0, "the reload", |l| l.contains("configuration reloaded"));
        proc.signal("TERM");
        let status = proc.wait_exit(PATIENCE);
        assert_eq!(
            status.code(),
            Some(0),
            "round {round}: {}",
            proc.stderr.text()
        );
    }
}

/// `check --forge` asks the forge about every configured id: exit 0 when each path matches,
/// 2 (naming the project) when one does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_with_forge_compares_each_id_and_path_with_the_forge() {
    let forge = FakeForge::start(world()).await.expect("forge starts");
    let dir = tempfile::tempdir().expect("tempdir");
    let var = "SCOPEGATE_CLI_TEST_FORGE_TOKEN";
    let upstream = format!("upstream:\n  url: {}\n  token_env: {var}\n", forge.url());
    let check = |name: &str, projects: &str| {
        let path = write_config(dir.path(), name, &format!("{upstream}{projects}"));
        let mut proc = Proc::spawn(
            Command::new(BIN)
                .args(["check", "--forge", "--config"])
                .arg(&path)
                .env(var, support::SERVICE_TOKEN),
        );
        let status = proc.wait_exit(PATIENCE);
        (status.code(), proc.stdout.text(), proc.stderr.text())
    };

    let (code, stdout, stderr) = check("matching", PROJECTS);
    assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("g/secret"), "{stdout}");

    let renamed = PROJECTS.replacen("path: g/secret", "path: g/renamed", 1);
    let (code, stdout, stderr) = check("renamed", &renamed);
    assert_eq!(code, Some(2), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let line = stdout
        .lines()
        .find(|l| l.contains("g/renamed") && l.contains("g/secret") && l.contains(" 2"))
        .unwrap_or_else(|| panic!("no line names project 2's mismatch:\n{stdout}"));
    assert!(line.to_ascii_lowercase().contains("mismatch"), "{line}");
    forge.stop().await;
}

// ---------------------------------------------------------------- reload

/// Points the symlink `link` at `target` atomically (a new link renamed over the old one).
fn swap_symlink(link: &Path, target: &Path) {
    let tmp = link.with_extension("swap");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).expect("symlink");
    std::fs::rename(&tmp, link).expect("rename symlink");
}

/// A config reached through a symlink that is swapped to each new version, as a Kubernetes
/// ConfigMap volume does: the swap alone is noticed (the file's own name need not change) and
/// reloads; SIGHUP reloads again whatever changed; a broken version is logged with
/// file:line:column and the last good config stays in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlink_swaps_and_sighup_reload_and_a_broken_version_changes_nothing() {
    let forge = FakeForge::start(world()).await.expect("forge starts");
    let dir = tempfile::tempdir().expect("tempdir");
    let versions = dir.path().join("versions");
    std::fs::create_dir(&versions).expect("mkdir");
    let v1 = write_config(&versions, "v1", &gateway_yaml(&forge, PROJECTS));
    let link = dir.path().join("proxy.yaml");
    std::os::unix::fs::symlink(&v1, &link).expect("symlink");
    let gw = Gateway::start(&link, forge);

    assert_eq!(gw.generation().await, 1);
    assert_eq!(gw.status(TOK_APP).await, 200);
    assert_eq!(
        gw.status(TOK_OTHER).await,
        404,
        "g/other is not let into g/secret yet"
    );

    // A good change, by swapping the symlink only: g/other is let in.
    let good = gateway_yaml(&gw.forge, &projects_letting_other_in());
    let v2 = write_config(&versions, "v2", &good);
    let mark = gw.proc.stderr.len();
    swap_symlink(&link, &v2);
    let swapped = gw.wait_for_generation(2).await;
    gw.proc
        .stderr
        .expect_line(mark, "the reload to be logged", |l| {
            l.contains("configuration reloaded")
        });
    assert_eq!(
        gw.status(TOK_OTHER).await,
        200,
        "the reload flips the decision"
    );
    assert_eq!(gw.status(TOK_APP).await, 200);

    // SIGHUP reloads whatever changed (here: nothing), counting a generation.
    gw.proc.signal("HUP");
    let reloaded = gw.wait_for_generation(swapped + 1).await;

    // A broken change: a duration without a unit. The error is logged with its place, the
    // process keeps serving on the last good generation, with or without a signal.
    let (broken, line, column) = place(&format!("{good}cache:\n  ttl: @@30\n"));
    let v3 = write_config(&versions, "v3", &broken);
    let mark = gw.proc.stderr.len();
    swap_symlink(&link, &v3);
    gw.proc.signal("HUP");
    let at = format!("{}:{line}:{column}:", link.display());
    let (_, logged) = gw
        .proc
        .stderr
        .expect_line(mark, "the broken config to be logged", |l| l.contains(&at));
    assert!(logged.contains("ERROR"), "{logged}");
    assert!(logged.contains("`30` has no unit"), "{logged}");
    assert_eq!(
        gw.generation().await,
        reloaded,
        "a broken file counts no generation"
    );
    assert_eq!(
        gw.status(TOK_OTHER).await,
        200,
        "the last good config stays in force"
    );
    assert_eq!(gw.status(TOK_APP).await, 200);
    gw.terminate().await;
}

/// The file watcher: rewriting the file in place, with no signal, reloads it; a broken
/// rewrite is logged with file:line:column and the last good config stays in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewritten_config_file_is_reloaded_without_a_signal() {
    let forge = FakeForge::start(world()).await.expect("forge starts");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(dir.path(), "proxy", &gateway_yaml(&forge, PROJECTS));
    let gw = Gateway::start(&path, forge);
    assert_eq!(gw.status(TOK_OTHER).await, 404);

    let good = gateway_yaml(&gw.forge, &projects_letting_other_in());
    std::fs::write(&path, &good).expect("rewrite config");
    // An editor's save can arrive as several events (truncate, write): whichever reads the
    // complete file counts the generation.
    let reached = gw.wait_for_generation(2).await;
    assert_eq!(
        gw.status(TOK_OTHER).await,
        200,
        "the rewrite flips the decision"
    );

    let (broken, line, column) = place(&format!("{good}@@inboud: []\n"));
    let mark = gw.proc.stderr.len();
    std::fs::write(&path, &broken).expect("rewrite config");
    let at = format!("{}:{line}:{column}:", path.display());
    gw.proc
        .stderr
        .expect_line(mark, "the broken config to be logged", |l| {
            l.contains(&at) && l.contains("unknown field `inboud`")
        });
    assert_eq!(
        gw.status(TOK_OTHER).await,
        200,
        "the last good config stays in force"
    );
    assert!(gw.generation().await >= reached);
    gw.terminate().await;
}

/// The binary's own `--help` names its subcommands (a smoke test that the binary is the one
/// the other tests think it is).
#[test]
fn help_lists_the_subcommands() {
    let out = Command::new(BIN)
        .arg("--help")
        .output()
        .expect("run --help");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for sub in ["run", "check", "demo"] {
        assert!(text.contains(sub), "{text}");
    }
}

/// `SCOPEGATE_WORKERS` sizes the runtime (1: Tokio's current-thread scheduler); a value that
/// is not a whole number of at least one is refused before anything starts (exit 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopegate_workers_sizes_the_runtime_and_a_bad_value_is_exit_2() {
    for bad in ["0", "two", "-1", ""] {
        let mut proc = Proc::spawn(
            Command::new(BIN)
                .args(["check", "--config", "proxy.yaml"])
                .env("SCOPEGATE_WORKERS", bad),
        );
        let status = proc.wait_exit(PATIENCE);
        let stderr = proc.stderr.text();
        assert_eq!(status.code(), Some(2), "{bad:?}: {stderr}");
        assert!(stderr.contains("SCOPEGATE_WORKERS"), "{bad:?}: {stderr}");
    }
    for workers in ["1", "3"] {
        let forge = FakeForge::start(world()).await.expect("forge starts");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_config(dir.path(), "proxy", &gateway_yaml(&forge, PROJECTS));
        let mut proc = Proc::spawn(
            Command::new(BIN)
                .arg("run")
                .arg("--config")
                .arg(&path)
                .env("SCOPEGATE_WORKERS", workers),
        );
        let addr = proc.wait_listening();
        let client = http();
        let url = format!("http://{addr}{API_FILE}");
        assert_eq!(
            get_with_job_token(&client, &url, TOK_APP).await,
            200,
            "{workers}"
        );
        assert_eq!(
            get_with_job_token(&client, &url, TOK_OTHER).await,
            404,
            "{workers}"
        );
        assert_eq!(
            forge.requests().len(),
            1,
            "only the allowed request reached the forge"
        );
        proc.signal("INT");
        assert_eq!(proc.wait_exit(PATIENCE).code(), Some(0), "{workers}");
        forge.stop().await;
    }
}
