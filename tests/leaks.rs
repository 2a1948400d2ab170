//! "Token values never appear in logs, metrics, errors or panics" (SPEC §1): the real binary
//! at `RUST_LOG=trace`, driven through every credential slot and every kind of answer
//! (allowed, 404, 401, 400, 413, 503), must not print a token in any form a reader could
//! recover it from; and the same for the library in-process under a TRACE subscriber.

#[path = "support/slots.rs"]
mod slots;
mod support;

use base64::alphabet::{Alphabet, STANDARD as STD_ALPHABET, URL_SAFE as URL_ALPHABET};
use base64::engine::{GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use scopegate::demo::forge::{FakeForge, JobApi};
use slots::*;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::*;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

/// Bounds on waiting for the child process (never a stand-in for synchronisation).
const START_TIMEOUT: Duration = Duration::from_secs(60);
const EXIT_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// What counts as a leak
// ---------------------------------------------------------------------------------------------

/// Every way a secret could be written down that a reader could turn back into it:
/// `(form, case-insensitive?)`.
fn leak_forms(secret: &str) -> Vec<(String, bool)> {
    let mut forms = vec![(secret.to_owned(), true)];
    // Percent-encoded: everything, and only the special characters (each on its own and all).
    forms.push((
        utf8_percent_encode(secret, NON_ALPHANUMERIC).to_string(),
        true,
    ));
    const DASH: &AsciiSet = &percent_encoding::CONTROLS.add(b'-');
    const UNDERSCORE: &AsciiSet = &percent_encoding::CONTROLS.add(b'_');
    const SPECIALS: &AsciiSet = &percent_encoding::CONTROLS
        .add(b'-')
        .add(b'_')
        .add(b'.')
        .add(b'~');
    for set in [DASH, UNDERSCORE, SPECIALS] {
        forms.push((utf8_percent_encode(secret, set).to_string(), true));
    }
    // Base64, standard and url-safe, padded or not, of the token alone and in Basic form.
    let padded = |a: &Alphabet| GeneralPurpose::new(a, GeneralPurposeConfig::new());
    let unpadded = |a: &Alphabet| {
        GeneralPurpose::new(a, GeneralPurposeConfig::new().with_encode_padding(false))
    };
    for alphabet in [&STD_ALPHABET, &URL_ALPHABET] {
        for plain in [
            secret.to_owned(),
            format!("gitlab-ci-token:{secret}"),
            format!("user:{secret}"),
        ] {
            forms.push((padded(alphabet).encode(&plain), false));
            forms.push((unpadded(alphabet).encode(&plain), false));
        }
        // The token inside any longer base64'd text (a Basic header with any user, a JWT
        // payload): for each alignment, the part of the encoding made of the token's bytes
        // alone, which shows up whatever surrounds it.
        for k in 0..3 {
            let enc = unpadded(alphabet).encode(format!("{}{secret}", "A".repeat(k)));
            let start = if k == 0 { 0 } else { 4 };
            let end = enc.len() - 4;
            if end > start + 12 {
                forms.push((enc[start..end].to_owned(), false));
            }
        }
    }
    forms
}

/// `text` with ANSI colour sequences removed.
fn strip_ansi(text: &str) -> String {
    regex::Regex::new("\x1b\\[[0-9;]*[A-Za-z]")
        .expect("regex")
        .replace_all(text, "")
        .into_owned()
}

/// Asserts that no secret occurs in `haystack` in any of its forms — as written, with colour
/// codes removed, and after percent-decoding the whole text.
fn assert_no_secrets(what: &str, haystack: &[u8], secrets: &Secrets) {
    let text = String::from_utf8_lossy(haystack).into_owned();
    let plain = strip_ansi(&text);
    let decoded = percent_encoding::percent_decode_str(&plain)
        .decode_utf8_lossy()
        .into_owned();
    // All forms in two alternations (case-insensitive and exact): one pass over each view.
    let mut insensitive = Vec::new();
    let mut exact = Vec::new();
    for secret in &secrets.tokens {
        for (form, ci) in leak_forms(secret) {
            let list = if ci { &mut insensitive } else { &mut exact };
            list.push(regex::escape(&form));
        }
    }
    exact.extend(secrets.values.iter().map(|v| regex::escape(v)));
    let patterns = [format!("(?i){}", insensitive.join("|")), exact.join("|")];
    let mut found = Vec::new();
    for pattern in &patterns {
        let re = regex::RegexBuilder::new(pattern)
            .size_limit(1 << 30)
            .dfa_size_limit(1 << 30)
            .build()
            .expect("leak pattern");
        for (view, hay) in [
            ("raw", &text),
            ("without colours", &plain),
            ("percent-decoded", &decoded),
        ] {
            for m in re.find_iter(hay) {
                let line_start = hay[..m.start()].rfind('\n').map_or(0, |i| i + 1);
                let line_end = hay[m.end()..].find('\n').map_or(hay.len(), |i| m.end() + i);
                found.push(format!(
                    "{:?} ({view}) in: {}",
                    m.as_str(),
                    &hay[line_start..line_end]
                ));
            }
        }
    }
    found.dedup();
    assert!(
        found.is_empty(),
        "{what}: {} token leak(s):\n{}",
        found.len(),
        found.join("\n")
    );
}

/// What must never be printed: the tokens, in every form, and the whole credential values
/// the requests carried that do not hold a token in plain text (Basic values, JWTs), as sent.
struct Secrets {
    tokens: Vec<String>,
    values: Vec<String>,
}

fn all_secrets(sent: &[String]) -> Secrets {
    let mut tokens: Vec<String> = ALL_TOKENS.iter().map(|t| t.to_string()).collect();
    tokens.push("glcbt-64_UnknownTokenZZZZZZZZZZZZZ".into());
    tokens.push("NoSuchJobToken987654321".into());
    // A value holding a token in plain text is covered by the token's own forms.
    let values = sent
        .iter()
        .filter(|v| !tokens.iter().any(|t| v.contains(t.as_str())))
        .cloned()
        .collect();
    Secrets { tokens, values }
}

/// The whole credential-bearing values a request sends (an `Authorization` value, a Cookie):
/// none of these may be printed either.
fn sent_values(req: &Req) -> Vec<String> {
    req.headers
        .iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case("content-type"))
        .map(|(_, v)| v.clone())
        .filter(|v| v.len() >= 16)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The traffic: every slot, every answer
// ---------------------------------------------------------------------------------------------

/// What a driven request must get.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Want {
    Forwarded,
    Refused(u16),
}

/// Every scenario, in order: the forge's job API failing (503), then working.
fn scenarios_unavailable() -> Vec<(String, Req, Want)> {
    let mut out = Vec::new();
    for slot in slots() {
        for token in [
            TOK_APP,
            TOK_OTHER,
            TOK_TOOL,
            TOK_EVIL,
            TOK_CANCELING,
            TOK_DONE,
            TOK_SECRET_PROJ,
            LEGACY_APP,
        ] {
            if token == LEGACY_APP && !slot.legacy {
                continue;
            }
            out.push((
                format!("503 {} {token:.12}", slot.name),
                (slot.build)(token, SECRET_PATH),
                Want::Refused(503),
            ));
        }
    }
    // Known non-job formats need no look-up: forwarded even now.
    out.push((
        "PAT during outage".into(),
        Req::get(SECRET_PATH).header("PRIVATE-TOKEN", PAT),
        Want::Forwarded,
    ));
    out.push((
        "service token during outage".into(),
        Req::get(SECRET_PATH).header("PRIVATE-TOKEN", SERVICE_TOKEN),
        Want::Forwarded,
    ));
    out
}

fn scenarios_normal() -> Vec<(String, Req, Want)> {
    let mut out = Vec::new();
    for slot in slots() {
        out.push((
            format!("allow {}", slot.name),
            (slot.build)(TOK_APP, SECRET_PATH),
            Want::Forwarded,
        ));
        out.push((
            format!("deny {}", slot.name),
            (slot.build)(TOK_OTHER, SECRET_PATH),
            Want::Refused(404),
        ));
        out.push((
            format!("deny evil {}", slot.name),
            (slot.build)(TOK_EVIL, SECRET_PATH),
            Want::Refused(404),
        ));
        out.push((
            format!("allow group {}", slot.name),
            (slot.build)(TOK_TOOL, SECRET_PATH),
            Want::Forwarded,
        ));
        out.push((
            format!("allow own {}", slot.name),
            (slot.build)(TOK_SECRET_PROJ, SECRET_PATH),
            Want::Forwarded,
        ));
        out.push((
            format!("allow canceling {}", slot.name),
            (slot.build)(TOK_CANCELING, SECRET_PATH),
            Want::Forwarded,
        ));
        out.push((
            format!("401 finished {}", slot.name),
            (slot.build)(TOK_DONE, "/api/v4/projects/1/repository/tree"),
            Want::Refused(401),
        ));
        if slot.legacy {
            out.push((
                format!("allow legacy {}", slot.name),
                (slot.build)(LEGACY_APP, SECRET_PATH),
                Want::Forwarded,
            ));
            out.push((
                format!("deny legacy {}", slot.name),
                (slot.build)(LEGACY_APP, OTHER_PATH),
                Want::Refused(404),
            ));
        }
    }
    for (name, req, status) in refusal_cases() {
        out.push((name.to_owned(), req, Want::Refused(status)));
    }
    out.push((
        "PAT".into(),
        Req::get(SECRET_PATH).header("PRIVATE-TOKEN", PAT),
        Want::Forwarded,
    ));
    out.push((
        "no credential".into(),
        Req::get(SECRET_PATH),
        Want::Forwarded,
    ));
    // The job token echoed elsewhere in the request-target, encoded in other ways than a
    // client would write it: scopegate knows the value, so it masks it wherever it is.
    let partly = LEGACY_APP.replacen('J', "%4A", 1).replacen('o', "%6f", 1);
    for target in [
        format!("{SECRET_PATH}?ref={}", pct_all(LEGACY_APP)),
        format!("{SECRET_PATH}?ref={partly}"),
        format!("/api/v4/projects/2/repository/files/{partly}"),
        format!("/api/v4/projects/2/repository/files/{LEGACY_APP}"),
    ] {
        out.push((
            format!("token echoed in {target}"),
            Req::get(target).header("JOB-TOKEN", LEGACY_APP),
            Want::Forwarded,
        ));
    }
    // Parameters whose names say "token" (GitLab filters such names from its own logs) but
    // that GitLab does not read as credentials: forwarded, and masked in the log all the same.
    for key in ["CI_JOB_TOKEN", "private-token", "runner_token", "Job-Token"] {
        out.push((
            format!("parameter {key}"),
            Req::get(format!("{SECRET_PATH}?{key}={LEGACY_APP}&x=1")),
            Want::Forwarded,
        ));
    }
    out
}

/// Sends `req`, checks the answer (and that a refused request never reached the forge), and
/// returns scopegate's own answer (head and body) for the leak check.
async fn drive(
    http: &reqwest::Client,
    base: &str,
    forge: &FakeForge,
    name: &str,
    req: &Req,
    want: Want,
) -> Vec<u8> {
    forge.clear();
    let resp = req.send(http, base).await;
    let status = resp.status().as_u16();
    let mut out = format!("{status} {:?}\n", resp.headers()).into_bytes();
    out.extend_from_slice(&resp.bytes().await.unwrap_or_default());
    let seen: Vec<String> = forge
        .requests()
        .iter()
        .map(|r| format!("{} {}", r.method, r.uri))
        .collect();
    match want {
        Want::Forwarded => {
            assert_eq!(status, 200, "{name}: {}", String::from_utf8_lossy(&out));
            assert_eq!(seen.len(), 1, "{name}: forwarded once");
        }
        Want::Refused(s) => {
            assert_eq!(status, s, "{name}: {}", String::from_utf8_lossy(&out));
            assert!(seen.is_empty(), "{name}: the forge received {seen:?}");
        }
    }
    // Only scopegate's own answers are its errors; a forwarded answer is the forge's.
    match want {
        Want::Refused(_) => out,
        Want::Forwarded => Vec::new(),
    }
}

/// Drives every scenario through the gateway at `base`; returns (requests sent, every
/// answer scopegate gave itself, every credential value sent).
async fn drive_all(base: &str, forge: &FakeForge) -> (usize, Vec<u8>, Vec<String>) {
    let http = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let mut responses = Vec::new();
    let mut values = Vec::new();
    let mut sent = 0;
    forge.set_job_api(JobApi::Status(500));
    for (name, req, want) in scenarios_unavailable() {
        responses.extend(drive(&http, base, forge, &name, &req, want).await);
        values.extend(sent_values(&req));
        sent += 1;
    }
    forge.set_job_api(JobApi::Normal);
    for (name, req, want) in scenarios_normal() {
        responses.extend(drive(&http, base, forge, &name, &req, want).await);
        values.extend(sent_values(&req));
        sent += 1;
    }
    values.sort();
    values.dedup();
    (sent, responses, values)
}

// ---------------------------------------------------------------------------------------------
// The real binary
// ---------------------------------------------------------------------------------------------

/// Copies a child's output stream, line by line, into `sink`; the first line that announces
/// the listening address is sent on `addr`.
async fn pump(
    stream: impl AsyncRead + Unpin,
    sink: Arc<Mutex<Vec<u8>>>,
    mut addr: Option<tokio::sync::oneshot::Sender<std::net::SocketAddr>>,
) {
    let listening = regex::Regex::new(r#"addr\W{1,3}(127\.0\.0\.1:\d+)"#).expect("regex");
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        sink.lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(&line);
        let text = strip_ansi(&String::from_utf8_lossy(&line));
        if text.contains("scopegate listening") {
            if let Some(found) = listening.captures(&text).and_then(|c| c[1].parse().ok()) {
                if let Some(tx) = addr.take() {
                    let _ = tx.send(found);
                }
            }
        }
    }
}

async fn binary_leaks(format: &str) {
    let forge = FakeForge::start(world()).await.expect("forge");
    let dir = tempfile::tempdir().expect("tempdir");
    let auth_log = dir.path().join("auth.jsonl");
    let config = dir.path().join("proxy.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:0\nupstream:\n  url: {}\nlimits:\n  inspect_body: 1KiB\nlog:\n  format: {format}\nauth_log:\n  path: {}\n{PROJECTS}",
            forge.url(),
            auth_log.display()
        ),
    )
    .expect("write config");

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_scopegate"))
        .arg("run")
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "trace")
        .env("NO_COLOR", "1")
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("scopegate binary starts");
    let output = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = tokio::sync::oneshot::channel();
    let readers = [
        tokio::spawn(pump(
            child.stdout.take().expect("stdout"),
            output.clone(),
            None,
        )),
        tokio::spawn(pump(
            child.stderr.take().expect("stderr"),
            output.clone(),
            Some(tx),
        )),
    ];
    let captured = |output: &Arc<Mutex<Vec<u8>>>| {
        String::from_utf8_lossy(&output.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    };
    let addr = match tokio::time::timeout(START_TIMEOUT, rx).await {
        Ok(Ok(addr)) => addr,
        _ => panic!(
            "scopegate did not announce its address; output:\n{}",
            captured(&output)
        ),
    };
    let base = format!("http://{addr}");

    let (mut sent, responses, values) = drive_all(&base, &forge).await;
    // Raw requests: the underscore header, and a request-target hyper itself refuses.
    for (request, want) in [
        (format!("GET {SECRET_PATH} HTTP/1.1\r\nHost: x\r\nJOB_TOKEN: {TOK_OTHER}\r\nConnection: close\r\n\r\n"), 404),
        (format!("GET {SECRET_PATH} HTTP/1.1\r\nHost: x\r\nJOB_TOKEN: {TOK_APP}\r\nConnection: close\r\n\r\n"), 200),
    ] {
        forge.clear();
        let (status, _) = raw_status_body(&raw(addr, request.as_bytes()).await);
        assert_eq!(status, want, "raw JOB_TOKEN");
        assert_eq!(forge.requests().len(), usize::from(want == 200));
        sent += 1;
    }

    // SIGTERM: drain and exit 0.
    let pid = child.id().expect("child pid");
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(killed.success(), "kill -TERM {pid}");
    let status = tokio::time::timeout(EXIT_TIMEOUT, child.wait())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "scopegate did not exit after SIGTERM; output:\n{}",
                captured(&output)
            )
        })
        .expect("wait");
    for r in readers {
        r.await.expect("reader");
    }
    let log = captured(&output);
    // Kept for a post-mortem look: target/tmp/leaks-<format>.log.
    let _ = std::fs::write(
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("leaks-{format}.log")),
        &log,
    );
    assert!(status.success(), "exit status {status:?}; output:\n{log}");
    forge.stop().await;

    // Logging happened: one access line per request, with the decisions in them.
    let plain = strip_ansi(&log);
    let access_lines = plain
        .lines()
        .filter(|l| l.contains("scopegate::access"))
        .count();
    assert_eq!(access_lines, sent, "one access line per request");
    let field = |k: &str, v: &str| match format {
        "json" => format!("\"{k}\":\"{v}\""),
        _ => format!("{k}=\"{v}\""),
    };
    let number = |k: &str, v: u16| match format {
        "json" => format!("\"{k}\":{v}"),
        _ => format!("{k}={v}"),
    };
    for needle in [
        field("decision", "deny"),
        field("decision", "allow"),
        field("decision", "forward"),
        field("decision", "refuse"),
        field("reason", "forge_unavailable"),
        field("reason", "not_a_job_token"),
        number("status", 503),
        number("status", 413),
        number("status", 401),
        number("status", 400),
        number("status", 404),
        "job_token=[MASKED]".to_owned(),
    ] {
        assert!(plain.contains(&needle), "the log has {needle}:\n{log}");
    }
    assert!(!plain.contains("panicked"), "no panic:\n{log}");
    assert!(plain.contains("TRACE"), "RUST_LOG=trace is in force");

    let secrets = all_secrets(&values);
    assert_no_secrets(
        &format!("scopegate output ({format})"),
        log.as_bytes(),
        &secrets,
    );
    let auth = std::fs::read(&auth_log).expect("auth log written");
    assert!(!auth.is_empty(), "auth log has lines");
    assert_no_secrets("auth log", &auth, &secrets);
    assert_no_secrets("responses", &responses, &secrets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_text_log_never_shows_a_token() {
    binary_leaks("text").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_json_log_never_shows_a_token() {
    binary_leaks("json").await;
}

// ---------------------------------------------------------------------------------------------
// In-process, under a global TRACE subscriber
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Buffer {
    type Writer = Buffer;

    fn make_writer(&'a self) -> Buffer {
        self.clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_trace_never_shows_a_token() {
    let buffer = Buffer::default();
    // Everything at TRACE, the gateway's own dependencies included; only the test's HTTP
    // client (reqwest prints the URLs it requests) is left out: it is not scopegate.
    let filter = tracing_subscriber::EnvFilter::new("trace,reqwest=off");
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(buffer.clone())
        .finish();
    tracing::subscriber::set_global_default(subscriber)
        .expect("the only global subscriber in this test binary");

    let h = Harness::with(Options::new(&format!(
        "{PROJECTS}\nlimits:\n  inspect_body: 1KiB\n"
    )))
    .await;
    let (sent, responses, values) = drive_all(&h.base, &h.forge).await;
    let metrics = h.gw.metrics.render();
    h.stop().await;

    let log = buffer.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let text = String::from_utf8_lossy(&log);
    let access_lines = text
        .lines()
        .filter(|l| l.contains("scopegate::access"))
        .count();
    assert_eq!(access_lines, sent, "one access line per request");
    assert!(text.contains("TRACE"), "TRACE events were recorded");
    let secrets = all_secrets(&values);
    assert_no_secrets("in-process trace", &log, &secrets);
    assert_no_secrets("metrics", metrics.as_bytes(), &secrets);
    assert_no_secrets("responses", &responses, &secrets);
}

/// The check itself: each form a token could be printed in is caught.
#[test]
fn the_leak_check_finds_every_form() {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    let secrets = all_secrets(&[format!(
        "Basic {}",
        lenient_basic("gitlab-ci-token", LEGACY_APP)
    )]);
    let printed = [
        format!("path=/x?q={TOK_APP}"),
        format!("token {}", TOK_APP.to_ascii_uppercase()),
        format!("q={}", utf8_percent_encode(TOK_OTHER, NON_ALPHANUMERIC)),
        format!("q={}", TOK_OTHER.replace('_', "%5f")),
        format!("q={}", LEGACY_APP.replace('J', "%4A")),
        format!(
            "auth=Basic {}",
            STANDARD.encode(format!("gitlab-ci-token:{TOK_TOOL}"))
        ),
        format!("auth=Basic {}", STANDARD.encode(format!("deployer:{PAT}"))),
        format!("auth=Basic {}", STANDARD.encode(format!("ab:{PAT}"))),
        format!("jwt={}", jwt("token", TOK_EVIL)),
        format!("b64={}", URL_SAFE_NO_PAD.encode(TOK_DONE)),
        format!(
            "header=Basic {}",
            lenient_basic("gitlab-ci-token", LEGACY_APP)
        ),
    ];
    for line in printed {
        let caught =
            std::panic::catch_unwind(|| assert_no_secrets("sample", line.as_bytes(), &secrets));
        assert!(caught.is_err(), "not caught: {line}");
    }
    assert_no_secrets(
        "clean sample",
        b"method=GET path=/api/v4/projects/2?job_token=[MASKED] decision=\"deny\"",
        &secrets,
    );
}
