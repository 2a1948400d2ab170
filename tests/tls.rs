//! TLS on both sides, with certificates made at test time (rcgen): scopegate terminates TLS
//! for clients (HTTP/2 negotiated by ALPN, HTTP/1.1 too) and speaks TLS to an `https://` forge
//! verified against `upstream.ca`. Decisions are the same over every transport, and the same
//! for every client: reqwest, a bare hyper HTTP/2 connection, `curl` (HTTP/1.1 and HTTP/2)
//! and `git clone https://`. A reload re-reads the certificate files: new handshakes present
//! the new certificate, established connections keep theirs, a bad certificate changes
//! nothing.

#[path = "support/pki.rs"]
mod pki;
mod process;
mod support;

use pki::{pki, tls_front, write, Ca, Pki};
use std::path::Path;
use std::sync::Arc;
use support::*;

fn client(ca_pem: &str, http2_only: bool) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .no_proxy()
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).expect("ca"));
    if http2_only {
        b = b.http2_prior_knowledge();
    } else {
        b = b.http1_only();
    }
    b.build().expect("client")
}

#[tokio::test]
async fn tls_listener_negotiates_h2_and_h1_and_decides_the_same() {
    let pki = pki();
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = write(dir.path(), "gw.pem", &pki.cert_pem);
    let key = write(dir.path(), "gw-key.pem", &pki.key_pem);
    let mut opts = Options::new(PROJECTS);
    opts.yaml = format!("tls: {{ cert: '{cert}', key: '{key}' }}\n{}", PROJECTS);
    let h = Harness::with(opts).await;
    let base = format!("https://127.0.0.1:{}", h.gw.addr.port());

    for (h2, version) in [
        (true, reqwest::Version::HTTP_2),
        (false, reqwest::Version::HTTP_11),
    ] {
        h.forge.clear();
        let c = client(&pki.ca_pem, h2);
        let allowed = c
            .get(format!("{base}/api/v4/projects/2/repository/tree"))
            .header("JOB-TOKEN", TOK_APP)
            .send()
            .await
            .expect("allowed request");
        assert_eq!(allowed.version(), version);
        let rec = h.assert_forwarded(allowed).await;
        assert_eq!(
            rec.headers.get("x-forwarded-proto").map(|v| v.as_bytes()),
            Some(&b"https"[..])
        );
        // HTTP/2 carries the host in :authority; the forge gets it as Host.
        assert_eq!(
            rec.headers.get("host").map(|v| v.as_bytes()),
            Some(format!("127.0.0.1:{}", h.gw.addr.port()).as_bytes())
        );
        h.forge.clear();
        let denied = c
            .get(format!("{base}/api/v4/projects/2/repository/tree"))
            .header("JOB-TOKEN", TOK_OTHER)
            .send()
            .await
            .expect("denied request");
        assert_eq!(denied.version(), version);
        h.assert_denied(denied, 404).await;
    }
    h.stop().await;
}

#[tokio::test]
async fn https_forge_is_verified_against_the_configured_ca() {
    let pki = pki();
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = write(dir.path(), "forge-ca.pem", &pki.ca_pem);
    let forge = scopegate::demo::forge::FakeForge::start(world())
        .await
        .expect("forge");
    let front = tls_front(&pki, forge.addr()).await;
    let yaml = format!(
        "listen: 127.0.0.1:0\nupstream:\n  url: https://127.0.0.1:{}\n  ca: '{ca}'\n{PROJECTS}",
        front.port()
    );
    let config = scopegate::Config::from_yaml_str(&yaml, Path::new("tls.yaml")).expect("config");
    let gw = scopegate::start(config).await.expect("gateway");
    let c = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let url = format!("http://{}/api/v4/projects/2/repository/tree", gw.addr);

    let ok = c
        .get(&url)
        .header("JOB-TOKEN", TOK_APP)
        .send()
        .await
        .expect("send");
    assert_eq!(ok.status().as_u16(), 200);
    assert_eq!(forge.lookups().len(), 1, "the job look-up went over TLS");
    assert_eq!(
        forge.requests().len(),
        1,
        "the allowed request went over TLS"
    );

    let denied = c
        .get(&url)
        .header("JOB-TOKEN", TOK_OTHER)
        .send()
        .await
        .expect("send");
    assert_eq!(denied.status().as_u16(), 404);
    assert_eq!(forge.requests().len(), 1, "nothing more reached the forge");
    gw.shutdown().await;

    // Without the CA the forge's certificate is not trusted: look-ups fail → 503, and a
    // token-less request cannot be forwarded → 502.
    let yaml = format!(
        "listen: 127.0.0.1:0\nupstream:\n  url: https://127.0.0.1:{}\n{PROJECTS}",
        front.port()
    );
    let config = scopegate::Config::from_yaml_str(&yaml, Path::new("tls.yaml")).expect("config");
    let gw = scopegate::start(config).await.expect("gateway");
    forge.clear();
    let url = format!("http://{}/api/v4/projects/2/repository/tree", gw.addr);
    let r = c
        .get(&url)
        .header("JOB-TOKEN", TOK_APP)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status().as_u16(), 503);
    let r = c.get(&url).send().await.expect("send");
    assert_eq!(r.status().as_u16(), 502);
    assert!(forge.requests().is_empty() && forge.lookups().is_empty());
    gw.shutdown().await;
    forge.stop().await;
}

// ------------------------------------------------------------ real clients

const SECRET_TREE: &str = "/api/v4/projects/2/repository/tree";

/// A harness whose proxy listener terminates TLS with `pki`'s leaf; `git` serves real
/// repositories. Returns the harness, the `https://127.0.0.1:PORT` base, the CA file's path
/// and the directory holding the files.
async fn tls_harness(pki: &Pki, git: bool) -> (Harness, String, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = write(dir.path(), "gw.pem", &pki.cert_pem);
    let key = write(dir.path(), "gw-key.pem", &pki.key_pem);
    let ca = write(dir.path(), "ca.pem", &pki.ca_pem);
    let mut opts = Options::new(PROJECTS);
    opts.yaml = format!("tls: {{ cert: '{cert}', key: '{key}' }}\n{PROJECTS}");
    opts.git = git;
    let h = Harness::with(opts).await;
    let base = format!("https://127.0.0.1:{}", h.gw.addr.port());
    (h, base, ca, dir)
}

/// `curl` with `args`, then the URL; returns (status, HTTP version as curl names it, body).
/// curl's own output format, so the test reads what the real client negotiated.
async fn curl(args: &[&str], url: &str) -> (u16, String, String) {
    let out = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "--noproxy",
            "*",
            "-o",
            "-",
            "-w",
            "\n%{http_code} %{http_version}",
        ])
        .args(args)
        .arg(url)
        .output()
        .await
        .expect("curl runs (.ci/run installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "curl {args:?} {url}: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (body, trailer) = stdout.rsplit_once('\n').expect("curl's -w line");
    let (code, version) = trailer.split_once(' ').expect("code and version");
    (
        code.parse().expect("status"),
        version.to_owned(),
        body.to_owned(),
    )
}

/// `.ci/run` installs Debian's curl, which is built with nghttp2: a curl without HTTP/2 is a
/// broken environment here, not a reason to skip.
async fn require_curl_http2() {
    let out = tokio::process::Command::new("curl")
        .arg("-V")
        .output()
        .await
        .expect("curl runs (.ci/run installs it)");
    let v = String::from_utf8_lossy(&out.stdout);
    assert!(
        v.lines()
            .any(|l| l.starts_with("Features:") && l.split_whitespace().any(|f| f == "HTTP2")),
        "this curl has no HTTP/2 support (install a curl built with nghttp2, as .ci/run does):\n{v}"
    );
}

#[tokio::test]
async fn curl_over_tls_http1_and_http2_decides_the_same() {
    require_curl_http2().await;
    let pki = pki();
    let (h, base, ca, _dir) = tls_harness(&pki, false).await;
    let url = format!("{base}{SECRET_TREE}");
    for (flag, version) in [("--http1.1", "1.1"), ("--http2", "2")] {
        h.forge.clear();
        let app = format!("JOB-TOKEN: {TOK_APP}");
        let (status, got, _) = curl(&["--cacert", &ca, flag, "-H", &app], &url).await;
        assert_eq!((status, got.as_str()), (200, version), "{flag}");
        let reqs = h.forge.requests();
        assert_eq!(reqs.len(), 1, "{flag}");
        assert_eq!(reqs[0].uri, SECRET_TREE);
        assert_eq!(reqs[0].headers["x-forwarded-proto"], "https");

        h.forge.clear();
        let other = format!("JOB-TOKEN: {TOK_OTHER}");
        let (status, got, body) = curl(&["--cacert", &ca, flag, "-H", &other], &url).await;
        assert_eq!((status, got.as_str()), (404, version), "{flag}");
        assert_eq!(body, r#"{"message":"404 Project Not Found"}"#);
        h.assert_untouched();
    }
    // Without the CA, curl refuses the certificate: the listener is really TLS.
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--noproxy", "*", &url])
        .output()
        .await
        .expect("curl runs");
    assert!(!out.status.success());
    h.stop().await;
}

/// Runs `git` trusting only `ca` for https, with no config from the environment.
async fn git_tls(dir: &Path, ca: &str, args: &[&str]) -> (bool, String) {
    let out = tokio::process::Command::new("git")
        .args(["-c", "credential.helper=", "-c", "http.sslVerify=true"])
        .args(args)
        .current_dir(dir)
        .env("GIT_SSL_CAINFO", ca)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .env_remove("https_proxy")
        .env_remove("HTTPS_PROXY")
        .output()
        .await
        .expect("git runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn git_clone_over_https_is_decided_like_plain_http() {
    let pki = pki();
    let (h, base, ca, _dir) = tls_harness(&pki, true).await;
    let work = tempfile::tempdir().expect("tempdir");
    let remote =
        |token: &str| base.replacen("https://", &format!("https://gitlab-ci-token:{token}@"), 1);

    let url = format!("{}/g/secret.git", remote(TOK_APP));
    let (ok, err) = git_tls(work.path(), &ca, &["clone", "-q", &url, "allowed"]).await;
    assert!(ok, "clone failed: {err}");
    let readme = std::fs::read_to_string(work.path().join("allowed/README.md")).expect("README");
    assert_eq!(readme, "# g/secret\n");
    assert!(h
        .forge
        .requests()
        .iter()
        .any(|r| r.path() == "/g/secret.git/git-upload-pack"
            && r.headers.contains_key("authorization")
            && r.headers["x-forwarded-proto"] == "https"));

    h.forge.clear();
    let url = format!("{}/g/secret.git", remote(TOK_OTHER));
    let (ok, err) = git_tls(work.path(), &ca, &["clone", "-q", &url, "denied"]).await;
    assert!(!ok, "clone should fail");
    assert!(
        err.contains("The project you were looking for could not be found"),
        "git's stderr: {err}"
    );
    assert!(!work.path().join("denied").join("README.md").exists());
    // git asks without credentials first (forwarded: no token in it); nothing that carried
    // the token reached the forge.
    for r in h.forge.requests() {
        assert!(!r.headers.contains_key("authorization"), "{}", r.uri);
        assert!(r.path().ends_with("/info/refs"), "{}", r.uri);
    }
    h.stop().await;
}

/// A rustls client trusting `ca_pem`, offering `alpn`.
fn tls_connector(ca_pem: &str, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(cert.expect("ca pem")).expect("ca cert");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

type TlsStream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

async fn tls_connect(addr: std::net::SocketAddr, ca_pem: &str, alpn: &[&[u8]]) -> TlsStream {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
    tls_connector(ca_pem, alpn)
        .connect(name, tcp)
        .await
        .expect("TLS handshake")
}

/// The leaf certificate the server presented on this connection.
fn peer_leaf(stream: &TlsStream) -> Vec<u8> {
    stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .expect("a peer certificate")
        .as_ref()
        .to_vec()
}

fn leaf_der(pki: &Pki) -> Vec<u8> {
    rustls_pemfile::certs(&mut pki.cert_pem.as_bytes())
        .next()
        .expect("a cert")
        .expect("pem")
        .as_ref()
        .to_vec()
}

type H2Sender = hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>;

/// An HTTP/2 connection over `stream` (ALPN must have said h2).
async fn h2(stream: TlsStream) -> H2Sender {
    assert_eq!(
        stream.get_ref().1.alpn_protocol(),
        Some(&b"h2"[..]),
        "ALPN negotiated h2"
    );
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(conn);
    sender
}

async fn h2_get(sender: &mut H2Sender, authority: &str, path: &str, token: &str) -> (u16, String) {
    use http_body_util::BodyExt;
    sender.ready().await.expect("connection ready");
    let req = http::Request::builder()
        .uri(format!("https://{authority}{path}"))
        .header("job-token", token)
        .body(http_body_util::Empty::new())
        .expect("request");
    let resp = sender.send_request(req).await.expect("response");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn a_hyper_http2_client_over_tokio_rustls_is_decided_like_any_other() {
    let pki = pki();
    let (h, _base, _ca, _dir) = tls_harness(&pki, false).await;
    let stream = tls_connect(h.gw.addr, &pki.ca_pem, &[b"h2"]).await;
    assert_eq!(peer_leaf(&stream), leaf_der(&pki));
    let mut sender = h2(stream).await;
    let authority = format!("127.0.0.1:{}", h.gw.addr.port());

    // Several requests on the one connection, allowed and denied interleaved.
    for round in 0..3 {
        h.forge.clear();
        let (status, _) = h2_get(&mut sender, &authority, SECRET_TREE, TOK_APP).await;
        assert_eq!(status, 200, "round {round}");
        let reqs = h.forge.requests();
        assert_eq!(reqs.len(), 1);
        assert_eq!(
            reqs[0].headers["host"],
            authority.as_str(),
            "from :authority"
        );
        h.forge.clear();
        let (status, body) = h2_get(&mut sender, &authority, SECRET_TREE, TOK_OTHER).await;
        assert_eq!(
            (status, body.as_str()),
            (404, r#"{"message":"404 Project Not Found"}"#)
        );
        h.assert_untouched();
    }
    h.stop().await;
}

// ------------------------------------------------------------ certificate rotation

/// `text` into `path` through a rename, so the server never reads a half-written file.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

/// An unlabelled sample from the admin port's /metrics.
async fn admin_metric(admin: std::net::SocketAddr, name: &str) -> u64 {
    let text = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("body");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

/// Polls the admin port (bounded) until `name` is `want`.
async fn wait_admin_metric(
    admin: std::net::SocketAddr,
    name: &str,
    want: u64,
    proc: &process::Proc,
) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let got = admin_metric(admin, name).await;
        assert!(got <= want, "{name} is {got}, past {want}");
        if got == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name} stuck at {got} (want {want}): {}",
            proc.stderr.text()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The real binary with TLS: SIGHUP re-reads the certificate files. A new connection
/// presents the new certificate (new key, new serial); a connection opened before keeps
/// working on the old one; a bad new certificate is a counted reload failure and the current
/// one stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rotates_the_certificate_for_new_connections_only() {
    let forge = scopegate::demo::forge::FakeForge::start(world())
        .await
        .expect("forge");
    let ca = Ca::new();
    let first = ca.leaf(1001);
    let second = ca.leaf(1002);
    assert_ne!(first.key_pem, second.key_pem);
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().join("certs");
    std::fs::create_dir(&certs).expect("mkdir");
    let cert = certs.join("gw.pem");
    let key = certs.join("gw-key.pem");
    replace(&cert, &first.cert_pem);
    replace(&key, &first.key_pem);
    let config = dir.path().join("proxy.yaml");
    replace(
        &config,
        &format!(
            "listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\ntls: {{ cert: '{}', key: '{}' }}\nupstream:\n  url: {}\n{PROJECTS}",
            cert.display(),
            key.display(),
            forge.url()
        ),
    );
    let proc = process::Proc::run(&config);
    let (addr, admin) = proc.wait_listening_with_admin();
    let admin = admin.expect("admin listener");
    let authority = format!("127.0.0.1:{}", addr.port());

    let before = tls_connect(addr, &first.ca_pem, &[b"h2"]).await;
    assert_eq!(peer_leaf(&before), leaf_der(&first));
    let mut before = h2(before).await;
    assert_eq!(
        h2_get(&mut before, &authority, SECRET_TREE, TOK_APP)
            .await
            .0,
        200
    );

    // Rotate: new key first, then the certificate; the reload reads both.
    replace(&key, &second.key_pem);
    replace(&cert, &second.cert_pem);
    proc.signal("HUP");
    wait_admin_metric(admin, "scopegate_config_generation", 2, &proc).await;
    let after = tls_connect(addr, &first.ca_pem, &[b"h2"]).await;
    assert_eq!(
        peer_leaf(&after),
        leaf_der(&second),
        "a new connection gets the new certificate"
    );
    let mut after = h2(after).await;
    assert_eq!(
        h2_get(&mut after, &authority, SECRET_TREE, TOK_APP).await.0,
        200
    );
    // The connection from before the rotation is still served.
    assert_eq!(
        h2_get(&mut before, &authority, SECRET_TREE, TOK_APP)
            .await
            .0,
        200
    );
    let denied = h2_get(&mut before, &authority, SECRET_TREE, TOK_OTHER).await;
    assert_eq!(denied.0, 404);

    // A key that does not match the certificate: the reload fails, is logged and counted,
    // and handshakes keep presenting the second certificate.
    let third = ca.leaf(1003);
    let mark = proc.stderr.len();
    replace(&key, &third.key_pem);
    proc.signal("HUP");
    wait_admin_metric(admin, "scopegate_reload_failures_total", 1, &proc).await;
    proc.stderr
        .expect_line(mark, "the failed reload to be logged", |l| {
            l.contains("ERROR") && l.contains("gw.pem")
        });
    assert_eq!(admin_metric(admin, "scopegate_config_generation").await, 2);
    let still = tls_connect(addr, &first.ca_pem, &[b"http/1.1"]).await;
    assert_eq!(peer_leaf(&still), leaf_der(&second));
    // A missing certificate file: the same.
    std::fs::remove_file(&cert).expect("rm cert");
    proc.signal("HUP");
    wait_admin_metric(admin, "scopegate_reload_failures_total", 2, &proc).await;
    let still = tls_connect(addr, &first.ca_pem, &[b"h2"]).await;
    assert_eq!(peer_leaf(&still), leaf_der(&second));
    let mut still = h2(still).await;
    assert_eq!(
        h2_get(&mut still, &authority, SECRET_TREE, TOK_APP).await.0,
        200
    );
    assert!(
        !forge
            .requests()
            .iter()
            .any(|r| r.headers.get("job-token").is_some_and(|t| t == TOK_OTHER)),
        "the denied request never reached the forge"
    );
    drop(proc);
    forge.stop().await;
}
