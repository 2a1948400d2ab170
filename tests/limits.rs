//! SPEC §5 `limits` and §6 shutdown, end to end: request-head bounds (414/431, HTTP/1.1 and
//! HTTP/2), the header read timeout (slowloris), idle timeouts that reset on every body chunk,
//! `max_connections`, h2c refused, WebSocket upgrades relayed only after the decision, the
//! upstream connect (502) and response-head (504) timeouts, and SIGTERM's drain delay and
//! grace period with the real binary. Every refusal is checked at the client and at the
//! upstream, which must have seen nothing of it.

mod process;
mod support;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use process::{Proc, PATIENCE};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

// ------------------------------------------------------------------ helpers

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

fn with_yaml(extra: &str) -> Options {
    Options::new(&format!("{PROJECTS}{extra}"))
}

/// A gateway (in-process) in front of `upstream_url`, both listeners on port 0.
async fn gateway(upstream_url: &str, extra_yaml: &str) -> scopegate::Running {
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\nupstream:\n  url: {upstream_url}\n\
         {PROJECTS}{extra_yaml}"
    );
    let config = scopegate::Config::from_yaml_str(&yaml, Path::new("test.yaml"))
        .unwrap_or_else(|e| panic!("test config: {e}\n{yaml}"));
    scopegate::start(config).await.expect("gateway starts")
}

/// The status code of a raw HTTP/1.1 response.
fn status_of(raw_response: &str) -> u16 {
    raw_response
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {raw_response:?}"))
}

/// Reads one `Content-Length`-framed response from `s` (a keep-alive connection).
async fn read_response(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.trim()
                        .eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if body.len() >= len {
                return text;
            }
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return String::from_utf8_lossy(&buf).into_owned(),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Reads until the peer closes the connection (bounded by [`PATIENCE`]); returns what came.
async fn read_to_close(s: &mut (impl AsyncReadExt + Unpin)) -> Vec<u8> {
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout(PATIENCE, s.read(&mut chunk)).await {
            Err(_) => panic!(
                "the connection is still open after {PATIENCE:?}; got {:?}",
                String::from_utf8_lossy(&got)
            ),
            Ok(Ok(0)) | Ok(Err(_)) => return got,
            Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
        }
    }
}

/// `scopegate_open_connections` as the admin listener reports it.
async fn open_connections(admin: SocketAddr) -> u64 {
    let text = client()
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body");
    text.lines()
        .find_map(|l| l.strip_prefix("scopegate_open_connections "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no scopegate_open_connections in:\n{text}"))
}

/// Polls (bounded) until `scopegate_open_connections` is `want`.
async fn wait_open_connections(admin: SocketAddr, want: u64) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let got = open_connections(admin).await;
        if got == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "scopegate_open_connections stuck at {got}, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Something the test upstream received.
#[derive(Debug)]
enum Seen {
    /// A WebSocket upgrade request (answered 101, then greeted and echoed).
    Upgrade(http::request::Parts),
    /// A request under `/stream/`: its head, and the sender feeding its response body
    /// (dropping the sender ends the body).
    Stream(http::request::Parts, mpsc::Sender<Bytes>),
    /// A request under `/upload/`: its head and its body as far as it got (`Err`: cut).
    Upload(http::request::Parts, Result<Vec<u8>, Vec<u8>>),
}

/// An upstream for what the fake forge cannot do: WebSocket upgrades (101, a greeting, then
/// an echo), responses the test feeds chunk by chunk (`/stream/…`) and request bodies it
/// reports as they end (`/upload/…`). Everything else (the gateway's job look-ups, other
/// requests) is relayed to the fake forge, so job tokens resolve as usual.
struct TestUpstream {
    url: String,
    seen: mpsc::UnboundedReceiver<Seen>,
    task: tokio::task::JoinHandle<()>,
}

const GREETING: &[u8] = b"hello-from-upstream;";

async fn test_upstream(forge: Option<String>) -> TestUpstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let (tx, seen) = mpsc::unbounded_channel();
    let relay = client();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tx = tx.clone();
            let relay = relay.clone();
            let forge = forge.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                    upstream_answer(req, tx.clone(), relay.clone(), forge.clone())
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    TestUpstream { url, seen, task }
}

type TestBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn upstream_answer(
    mut req: http::Request<Incoming>,
    tx: mpsc::UnboundedSender<Seen>,
    relay: reqwest::Client,
    forge: Option<String>,
) -> Result<http::Response<TestBody>, Infallible> {
    let upgrade = req
        .headers()
        .get("upgrade")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    if upgrade {
        let on_upgrade = hyper::upgrade::on(&mut req);
        let (parts, _) = req.into_parts();
        let _ = tx.send(Seen::Upgrade(parts));
        tokio::spawn(async move {
            let Ok(upgraded) = on_upgrade.await else {
                return;
            };
            let mut io = TokioIo::new(upgraded);
            if io.write_all(GREETING).await.is_err() {
                return;
            }
            let mut buf = [0u8; 1024];
            while let Ok(n) = io.read(&mut buf).await {
                if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        });
        let resp = http::Response::builder()
            .status(101)
            .header("upgrade", "websocket")
            .header("connection", "Upgrade")
            .body(Full::new(Bytes::new()).boxed())
            .expect("101");
        return Ok(resp);
    }
    let path = req.uri().path().to_owned();
    if path.starts_with("/stream/") {
        let (parts, _) = req.into_parts();
        let (body_tx, body_rx) = mpsc::channel::<Bytes>(1);
        let _ = tx.send(Seen::Stream(parts, body_tx));
        let frames = futures_util::stream::unfold(body_rx, |mut rx| async move {
            let chunk = rx.recv().await?;
            Some((Ok::<_, Infallible>(Frame::data(chunk)), rx))
        });
        let resp = http::Response::builder()
            .status(200)
            .header("content-type", "application/octet-stream")
            .body(StreamBody::new(Box::pin(frames)).boxed())
            .expect("response");
        return Ok(resp);
    }
    if path.starts_with("/upload/") {
        let (parts, mut body) = req.into_parts();
        let mut got = Vec::new();
        let outcome = loop {
            match body.frame().await {
                None => break Ok(got),
                Some(Err(_)) => break Err(got),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        got.extend_from_slice(&data);
                    }
                }
            }
        };
        let complete = outcome.is_ok();
        let _ = tx.send(Seen::Upload(parts, outcome));
        let status = if complete { 201 } else { 400 };
        let resp = http::Response::builder()
            .status(status)
            .body(Full::new(Bytes::new()).boxed())
            .expect("response");
        return Ok(resp);
    }
    // Relay to the fake forge: the gateway's own look-ups and ordinary requests.
    let Some(forge) = forge else {
        let resp = http::Response::builder()
            .status(404)
            .body(Full::new(Bytes::new()).boxed())
            .expect("response");
        return Ok(resp);
    };
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let target = format!(
        "{forge}{}",
        parts.uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let mut headers = parts.headers.clone();
    headers.remove("host");
    let answer = relay
        .request(parts.method.clone(), target)
        .headers(headers)
        .body(body)
        .send()
        .await
        .expect("the fake forge answers");
    let mut resp = http::Response::builder().status(answer.status());
    for (k, v) in answer.headers() {
        if k != "content-length" && k != "transfer-encoding" {
            resp = resp.header(k, v);
        }
    }
    let bytes = answer.bytes().await.expect("forge body");
    Ok(resp.body(Full::new(bytes).boxed()).expect("response"))
}

impl TestUpstream {
    async fn next(&mut self) -> Seen {
        tokio::time::timeout(PATIENCE, self.seen.recv())
            .await
            .expect("the upstream saw a request in time")
            .expect("upstream running")
    }

    fn assert_nothing_seen(&mut self) {
        if let Ok(seen) = self.seen.try_recv() {
            panic!("the upstream received {seen:?}");
        }
    }
}

// ------------------------------------------------------------------ 1. head and URL bounds

/// `max_url` 4 KiB inside a 16 KiB head: a long URL is 414, a large head that is not the
/// URL's doing is 431, and neither reaches the forge (not even as a token look-up).
#[tokio::test]
async fn a_long_url_is_414_and_an_oversized_head_is_431() {
    let h = Harness::with(with_yaml(
        "limits:\n  max_request_head: 16KiB\n  max_url: 4KiB\n",
    ))
    .await;
    let get = |target: &str, extra: &str| {
        format!("GET {target} HTTP/1.1\r\nHost: h\r\nJOB-TOKEN: {TOK_APP}\r\n{extra}\r\n")
    };
    // `/api/v4/projects/1/issues?q=` + padding: exactly `len` bytes of request-target.
    let url = |len: usize| {
        let base = "/api/v4/projects/1/issues?q=";
        format!("{base}{}", "a".repeat(len - base.len()))
    };
    let cases: Vec<(&str, String, u16)> = vec![
        ("URL one byte over max_url", get(&url(4097), ""), 414),
        ("URL of 12 KiB", get(&url(12 * 1024), ""), 414),
        (
            "a token in an over-long URL",
            get(&format!("{}&job_token={TOK_OTHER}", url(5000)), ""),
            414,
        ),
        (
            "one header over the head limit",
            get(&url(100), &format!("X-Big: {}\r\n", "b".repeat(17 * 1024))),
            431,
        ),
        (
            "many headers over the head limit",
            get(
                &url(100),
                &"X-Many: 0123456789abcdef0123456789\r\n".repeat(600),
            ),
            431,
        ),
        // The documented limit of the scheme: hyper reads the head into one buffer bounded
        // by max_request_head and cannot tell which part outgrew it.
        (
            "URL longer than the whole head limit",
            get(&url(20 * 1024), ""),
            431,
        ),
    ];
    for (name, request, status) in cases {
        let resp = raw(h.gw.addr, request.as_bytes()).await;
        assert_eq!(status_of(&resp), status, "{name}: {resp}");
        if status == 414 {
            // scopegate's own answer (a 431 for a head hyper's buffer cannot hold is hyper's,
            // written before any handler runs, and has none).
            assert!(
                resp.to_ascii_lowercase().contains("\r\nx-request-id: "),
                "{name}: {resp}"
            );
        }
        h.assert_untouched();
        assert_eq!(
            h.forge.job_lookup_count(),
            0,
            "{name}: a token was looked up"
        );
    }
    // At the bound exactly: served.
    let resp = raw(h.gw.addr, get(&url(4096), "").as_bytes()).await;
    assert_eq!(status_of(&resp), 200, "{resp}");
    let reqs = h.forge.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].uri.len(), 4096);
    h.stop().await;
}

/// Below hyper's 8 KiB buffer floor the configured head limit still holds exactly: a 5 KiB
/// head under a 4 KiB `max_request_head` is 431, and the same connection is not needed for
/// the next request to be served.
#[tokio::test]
async fn a_head_limit_under_hypers_floor_is_enforced_exactly() {
    let h = Harness::with(with_yaml(
        "limits:\n  max_request_head: 4KiB\n  max_url: 1KiB\n",
    ))
    .await;
    let big = format!(
        "GET /api/v4/projects/1/issues HTTP/1.1\r\nHost: h\r\nX-Big: {}\r\n\r\n",
        "b".repeat(5000)
    );
    let resp = raw(h.gw.addr, big.as_bytes()).await;
    assert_eq!(status_of(&resp), 431, "{resp}");
    assert!(
        resp.ends_with(r#"{"message":"431 Request Header Fields Too Large"}"#),
        "{resp}"
    );
    // Under hyper's floor the 431 is scopegate's own answer, with its request id.
    assert!(
        resp.to_ascii_lowercase().contains("\r\nx-request-id: "),
        "{resp}"
    );
    h.assert_untouched();
    let long = format!(
        "GET /api/v4/projects/1/issues?q={} HTTP/1.1\r\nHost: h\r\n\r\n",
        "a".repeat(1100)
    );
    let resp = raw(h.gw.addr, long.as_bytes()).await;
    assert_eq!(status_of(&resp), 414, "{resp}");
    assert!(
        resp.ends_with(r#"{"message":"414 URI Too Long"}"#),
        "{resp}"
    );
    h.assert_untouched();
    // Keep-alive: a refused request does not poison the connection it came on.
    let mut s = TcpStream::connect(h.gw.addr).await.expect("connect");
    s.write_all(long.as_bytes()).await.expect("write");
    assert_eq!(status_of(&read_response(&mut s).await), 414);
    s.write_all(b"GET /api/v4/projects/1/issues HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .expect("write");
    assert_eq!(status_of(&read_response(&mut s).await), 200);
    assert_eq!(h.forge.requests().len(), 1);
    h.stop().await;
}

/// The same bounds over HTTP/2 (TLS, ALPN h2): 414 for a long `:path`; 431 for a header
/// list over `max_request_head` (h2's SETTINGS_MAX_HEADER_LIST_SIZE).
#[tokio::test]
async fn over_http2_a_long_path_is_414_and_a_large_header_list_431() {
    let tls = support_tls::Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = tls.write(dir.path());
    let h = Harness::with(Options::new(&format!(
        "tls: {{ cert: '{cert}', key: '{key}' }}\nlimits:\n  max_request_head: 16KiB\n  \
         max_url: 4KiB\n{PROJECTS}"
    )))
    .await;
    let c = tls.h2_client();
    let base = format!("https://127.0.0.1:{}", h.gw.addr.port());
    let r = c
        .get(format!(
            "{base}/api/v4/projects/1/issues?q={}",
            "a".repeat(5000)
        ))
        .header("JOB-TOKEN", TOK_APP)
        .send()
        .await
        .expect("answered");
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    h.assert_denied(r, 414).await;
    assert_eq!(h.forge.job_lookup_count(), 0);
    let r = c
        .get(format!("{base}/api/v4/projects/1/issues"))
        .header("X-Big", "b".repeat(20 * 1024))
        .send()
        .await
        .expect("answered");
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    h.assert_denied(r, 431).await;
    // The connection and the server keep serving.
    let r = c
        .get(format!("{base}/api/v4/projects/1/issues"))
        .send()
        .await
        .expect("served");
    h.assert_forwarded(r).await;
    h.stop().await;
}

/// Test certificates for the TLS listener (rcgen).
mod support_tls {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    use std::path::Path;

    pub struct Pki {
        ca_pem: String,
        cert_pem: String,
        key_pem: String,
    }

    impl Pki {
        pub fn new() -> Pki {
            let ca_key = KeyPair::generate().expect("ca key");
            let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
            ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            let ca = ca_params.self_signed(&ca_key).expect("ca cert");
            let leaf_key = KeyPair::generate().expect("leaf key");
            let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()])
                .expect("leaf params")
                .signed_by(&leaf_key, &ca, &ca_key)
                .expect("leaf cert");
            Pki {
                ca_pem: ca.pem(),
                cert_pem: leaf.pem(),
                key_pem: leaf_key.serialize_pem(),
            }
        }

        /// Writes the gateway's certificate and key; returns their paths.
        pub fn write(&self, dir: &Path) -> (String, String) {
            let cert = dir.join("gw.pem");
            let key = dir.join("gw-key.pem");
            std::fs::write(&cert, &self.cert_pem).expect("write cert");
            std::fs::write(&key, &self.key_pem).expect("write key");
            (cert.display().to_string(), key.display().to_string())
        }

        pub fn h2_client(&self) -> reqwest::Client {
            reqwest::Client::builder()
                .no_proxy()
                .add_root_certificate(
                    reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).expect("ca"),
                )
                .http2_prior_knowledge()
                .build()
                .expect("client")
        }
    }
}

// ------------------------------------------------------------------ 2. slowloris

/// A client that trickles its head, a header line every 50 ms (never idle for long), is cut
/// once `header_read_timeout` (300 ms) has passed since the head began; a fast client on
/// other connections meanwhile is served every time.
#[tokio::test]
async fn a_trickled_head_is_cut_after_the_header_read_timeout() {
    let h = Harness::with(with_yaml("limits:\n  header_read_timeout: 300ms\n")).await;
    let slow = TcpStream::connect(h.gw.addr).await.expect("connect");
    let (mut rd, mut wr) = slow.into_split();
    wr.write_all(b"GET /api/v4/projects/1/issues HTTP/1.1\r\nHost: h\r\n")
        .await
        .expect("write");
    let trickle = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        let mut sent = 0u32;
        loop {
            tick.tick().await;
            if wr.write_all(b"X-Slow: 1\r\n").await.is_err() {
                return sent;
            }
            sent += 1;
        }
    });
    let fast = async {
        let c = client();
        for _ in 0..5 {
            let r = c
                .get(h.url("/api/v4/projects/1/issues"))
                .send()
                .await
                .expect("the fast client is served");
            assert_eq!(r.status().as_u16(), 200);
        }
    };
    let (got, ()) = tokio::join!(read_to_close(&mut rd), fast);
    assert!(
        got.is_empty(),
        "the slow client got an answer: {:?}",
        String::from_utf8_lossy(&got)
    );
    trickle.abort();
    // Only the fast client's requests reached the forge.
    let reqs = h.forge.requests();
    assert_eq!(
        reqs.len(),
        5,
        "{:?}",
        reqs.iter().map(|r| &r.uri).collect::<Vec<_>>()
    );
    assert!(reqs.iter().all(|r| !r.headers.contains_key("x-slow")));
    h.stop().await;
}

/// hyper times the wait for a head from its start, so an idle HTTP/1.1 keep-alive connection
/// is closed after `header_read_timeout` too (README: it is the keep-alive timeout).
#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_header_read_timeout() {
    let h = Harness::with(with_yaml("limits:\n  header_read_timeout: 300ms\n")).await;
    let mut s = TcpStream::connect(h.gw.addr).await.expect("connect");
    s.write_all(b"GET /api/v4/projects/1/issues HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .expect("write");
    assert_eq!(status_of(&read_response(&mut s).await), 200);
    // Then silence from the client: the server closes the connection, saying nothing.
    assert!(read_to_close(&mut s).await.is_empty());
    h.stop().await;
}

// ------------------------------------------------------------------ 3. idle timeouts

const IDLE: &str = "limits:\n  idle_timeout: 300ms\n";
/// Spacing of the paced chunks: well under the 300 ms idle timeout.
const PACE: Duration = Duration::from_millis(60);
/// Chunks per paced stream: 20 × 60 ms = 1.2 s, four idle timeouts in all.
const PACED_CHUNKS: usize = 20;

fn paced_chunk(i: usize) -> Vec<u8> {
    format!("chunk {i:02} of a paced stream;").into_bytes()
}

/// A request body arriving in small chunks, each well inside `idle_timeout` but the whole
/// lasting four times longer, reaches the forge intact.
#[tokio::test]
async fn a_paced_upload_longer_than_the_idle_timeout_arrives_whole() {
    let h = Harness::with(with_yaml(IDLE)).await;
    let expected: Vec<u8> = (0..PACED_CHUNKS).flat_map(paced_chunk).collect();
    let chunks = futures_util::stream::unfold(0usize, |i| async move {
        if i == PACED_CHUNKS {
            return None;
        }
        tokio::time::sleep(PACE).await;
        Some((Ok::<_, std::io::Error>(paced_chunk(i)), i + 1))
    });
    let r = h
        .http
        .put(h.url("/api/v4/projects/1/packages/generic/p/1/paced.bin"))
        .header("JOB-TOKEN", TOK_APP)
        .header("content-type", "application/octet-stream")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .expect("upload completes");
    let rec = h.assert_forwarded(r).await;
    assert!(rec.complete);
    assert_eq!(&rec.body[..], &expected[..]);
    h.stop().await;
}

/// A response body produced in small paced chunks, lasting four idle timeouts, reaches the
/// client whole.
#[tokio::test]
async fn a_paced_download_longer_than_the_idle_timeout_arrives_whole() {
    let mut up = test_upstream(None).await;
    let gw = gateway(&up.url, IDLE).await;
    let pending = tokio::spawn(
        client()
            .get(format!("http://{}/stream/paced", gw.addr))
            .send(),
    );
    let Seen::Stream(parts, body_tx) = up.next().await else {
        panic!("expected the stream request");
    };
    assert_eq!(parts.uri.path(), "/stream/paced");
    let feeder = tokio::spawn(async move {
        for i in 0..PACED_CHUNKS {
            tokio::time::sleep(PACE).await;
            body_tx
                .send(Bytes::from(paced_chunk(i)))
                .await
                .expect("send");
        }
    });
    let resp = pending.await.expect("task").expect("response head");
    assert_eq!(resp.status().as_u16(), 200);
    let body = resp.bytes().await.expect("the whole body");
    let expected: Vec<u8> = (0..PACED_CHUNKS).flat_map(paced_chunk).collect();
    assert_eq!(&body[..], &expected[..]);
    feeder.await.expect("feeder");
    gw.shutdown().await;
    up.task.abort();
}

/// A request body that stalls for longer than `idle_timeout` is cut: the upstream sees it
/// end in an error (an incomplete request it must not act on), the client gets an error
/// answer, and the server keeps serving.
#[tokio::test]
async fn a_stalled_upload_is_cut_and_the_upstream_sees_it_incomplete() {
    let mut up = test_upstream(None).await;
    let gw = gateway(&up.url, IDLE).await;
    let (tx, rx) = mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    let upload = tokio::spawn(
        client()
            .put(format!("http://{}/upload/stalled", gw.addr))
            .header("content-type", "application/octet-stream")
            .body(reqwest::Body::wrap_stream(body))
            .send(),
    );
    tx.send(Ok(b"the first part;".to_vec()))
        .await
        .expect("send");
    // Then nothing: `tx` is held, so the body neither ends nor moves.
    let Seen::Upload(parts, outcome) = up.next().await else {
        panic!("expected the upload");
    };
    assert_eq!(parts.uri.path(), "/upload/stalled");
    assert_eq!(
        outcome,
        Err(b"the first part;".to_vec()),
        "the upstream saw the body end cleanly"
    );
    let answered = tokio::time::timeout(PATIENCE, upload)
        .await
        .expect("the client hears back")
        .expect("task");
    if let Ok(resp) = answered {
        assert!(
            !resp.status().is_success(),
            "a cut upload answered {}",
            resp.status()
        );
    }
    drop(tx);
    // Still serving.
    let r = client()
        .get(format!("http://{}/stream/after", gw.addr))
        .send();
    let pending = tokio::spawn(r);
    let Seen::Stream(_, body_tx) = up.next().await else {
        panic!("expected the stream request");
    };
    drop(body_tx);
    let resp = pending.await.expect("task").expect("served");
    assert_eq!(resp.status().as_u16(), 200);
    gw.shutdown().await;
    up.task.abort();
}

/// A response body that stalls for longer than `idle_timeout` is cut: the client's read
/// fails rather than waiting for ever, after the bytes that did come.
#[tokio::test]
async fn a_stalled_download_is_cut() {
    let mut up = test_upstream(None).await;
    let gw = gateway(&up.url, IDLE).await;
    let pending = tokio::spawn(
        client()
            .get(format!("http://{}/stream/stalled", gw.addr))
            .send(),
    );
    let Seen::Stream(_, body_tx) = up.next().await else {
        panic!("expected the stream request");
    };
    body_tx
        .send(Bytes::from_static(b"first;"))
        .await
        .expect("send");
    let mut resp = pending.await.expect("task").expect("response head");
    assert_eq!(
        resp.chunk().await.expect("first chunk").as_deref(),
        Some(&b"first;"[..])
    );
    // The upstream holds `body_tx` and sends nothing more.
    let next = tokio::time::timeout(PATIENCE, resp.chunk())
        .await
        .expect("the stalled download is cut in time");
    assert!(next.is_err(), "a stalled body ended cleanly: {next:?}");
    drop(body_tx);
    gw.shutdown().await;
    up.task.abort();
}

// ------------------------------------------------------------------ 4. max_connections

/// With `max_connections: 2`, two held keep-alive connections are served; a third is left in
/// the kernel's backlog, unanswered, until one of the two closes; then it is served.
#[tokio::test]
async fn past_max_connections_a_connection_waits_until_one_closes() {
    let h = Harness::with(with_yaml("limits:\n  max_connections: 2\n")).await;
    let admin = h.gw.admin_addr.expect("admin");
    const GET: &[u8] = b"GET /api/v4/projects/1/issues HTTP/1.1\r\nHost: h\r\n\r\n";
    let mut a = TcpStream::connect(h.gw.addr).await.expect("connect a");
    a.write_all(GET).await.expect("write");
    assert_eq!(status_of(&read_response(&mut a).await), 200);
    let mut b = TcpStream::connect(h.gw.addr).await.expect("connect b");
    b.write_all(GET).await.expect("write");
    assert_eq!(status_of(&read_response(&mut b).await), 200);
    wait_open_connections(admin, 2).await;

    // The kernel completes the handshake (the listener's backlog), but scopegate does not
    // accept the connection while two are open.
    let mut c = TcpStream::connect(h.gw.addr).await.expect("connect c");
    c.write_all(GET).await.expect("write");
    let mut byte = [0u8; 1];
    // A negative can only be watched for a while: 300 ms of silence, bounded.
    let early = tokio::time::timeout(Duration::from_millis(300), c.read(&mut byte)).await;
    assert!(
        early.is_err(),
        "the third connection was answered: {early:?}"
    );
    assert_eq!(h.forge.requests().len(), 2);
    assert_eq!(open_connections(admin).await, 2);

    drop(a);
    let resp = tokio::time::timeout(PATIENCE, read_response(&mut c))
        .await
        .expect("the third connection is served once one closes");
    assert_eq!(status_of(&resp), 200, "{resp}");
    assert_eq!(h.forge.requests().len(), 3);
    wait_open_connections(admin, 2).await;
    drop(b);
    drop(c);
    wait_open_connections(admin, 0).await;
    h.stop().await;
}

// ------------------------------------------------------------------ 5. h2c

/// HTTP/2 by prior knowledge on the plaintext listener is refused: the connection is closed
/// without a single HTTP/2 frame (no SETTINGS), nothing reaches the forge, and the server
/// keeps serving HTTP/1.1. (`Upgrade: h2c` is covered in tests/forwarding.rs: the header is
/// dropped and the request served as HTTP/1.1, never 101.)
#[tokio::test]
async fn http2_prior_knowledge_on_the_plaintext_listener_is_refused() {
    let h = Harness::start().await;
    let mut s = TcpStream::connect(h.gw.addr).await.expect("connect");
    // The client preface, then an empty SETTINGS frame, as an h2c client sends them.
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .expect("write");
    let got = read_to_close(&mut s).await;
    // A server speaking HTTP/2 would answer with its SETTINGS frame (type 0x4) first.
    assert!(
        !(got.len() >= 9 && got[3] == 0x04),
        "the server answered in HTTP/2: {got:?}"
    );
    h.assert_untouched();

    let h2c = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .expect("client");
    let refused = h2c.get(h.url("/api/v4/projects/1/issues")).send().await;
    assert!(refused.is_err(), "served over h2c: {refused:?}");
    h.assert_untouched();

    let r = h.get("/api/v4/projects/1/issues", &[]).await;
    assert_eq!(r.version(), reqwest::Version::HTTP_11);
    h.assert_forwarded(r).await;
    h.stop().await;
}

// ------------------------------------------------------------------ 6. WebSocket

fn websocket_request(path: &str, token: Option<&str>) -> String {
    let token = token.map_or(String::new(), |t| format!("JOB-TOKEN: {t}\r\n"));
    format!(
        "GET {path} HTTP/1.1\r\nHost: gitlab.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{token}\r\n"
    )
}

/// Reads a response head (up to the blank line) from `s`.
async fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match tokio::time::timeout(PATIENCE, s.read(&mut byte)).await {
            Ok(Ok(1)) => head.push(byte[0]),
            other => panic!(
                "no response head ({other:?}); got {:?}",
                String::from_utf8_lossy(&head)
            ),
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// Upgraded, then bytes flow both ways: the upstream's greeting reaches the client, and what
/// the client sends comes back echoed.
async fn assert_relayed_both_ways(s: &mut TcpStream) {
    let mut greeting = vec![0u8; GREETING.len()];
    tokio::time::timeout(PATIENCE, s.read_exact(&mut greeting))
        .await
        .expect("greeting in time")
        .expect("greeting");
    assert_eq!(greeting, GREETING);
    for msg in [&b"ping from the client"[..], b"\x00\x01binary\xff"] {
        s.write_all(msg).await.expect("write");
        let mut echo = vec![0u8; msg.len()];
        tokio::time::timeout(PATIENCE, s.read_exact(&mut echo))
            .await
            .expect("echo in time")
            .expect("echo");
        assert_eq!(echo, msg);
    }
}

#[tokio::test]
async fn websocket_upgrades_are_decided_then_relayed_both_ways() {
    let forge = scopegate::demo::forge::FakeForge::start(world())
        .await
        .expect("forge");
    let mut up = test_upstream(Some(forge.url())).await;
    let gw = gateway(&up.url, "").await;

    // Allowed: g/app's job token on its own project.
    let mut s = TcpStream::connect(gw.addr).await.expect("connect");
    s.write_all(
        websocket_request(
            "/api/v4/projects/1/environments/1/terminal.ws",
            Some(TOK_APP),
        )
        .as_bytes(),
    )
    .await
    .expect("write");
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("upgrade: websocket"),
        "{head}"
    );
    let Seen::Upgrade(parts) = up.next().await else {
        panic!("expected the upgrade request");
    };
    assert_eq!(
        parts.uri.path(),
        "/api/v4/projects/1/environments/1/terminal.ws"
    );
    assert_eq!(parts.headers["upgrade"], "websocket");
    assert_eq!(parts.headers["job-token"], TOK_APP);
    assert_eq!(
        parts.headers["sec-websocket-key"],
        "dGhlIHNhbXBsZSBub25jZQ=="
    );
    assert_relayed_both_ways(&mut s).await;
    drop(s);

    // Denied: g/other's job token on g/secret. 404, and the upstream never sees it.
    let mut s = TcpStream::connect(gw.addr).await.expect("connect");
    s.write_all(
        websocket_request(
            "/api/v4/projects/2/environments/1/terminal.ws",
            Some(TOK_OTHER),
        )
        .as_bytes(),
    )
    .await
    .expect("write");
    let resp = read_response(&mut s).await;
    assert_eq!(status_of(&resp), 404, "{resp}");
    assert!(
        resp.ends_with(r#"{"message":"404 Project Not Found"}"#),
        "{resp}"
    );
    // The connection is not upgraded: it still speaks HTTP/1.1.
    s.write_all(b"GET /api/v4/projects/1/issues HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .expect("write");
    assert_eq!(status_of(&read_response(&mut s).await), 200);
    drop(s);
    forge.clear();
    up.assert_nothing_seen();

    // No job token: relayed (the forge authenticates whatever else there is).
    let mut s = TcpStream::connect(gw.addr).await.expect("connect");
    s.write_all(websocket_request("/-/kubernetes-agent/k8s-proxy/", None).as_bytes())
        .await
        .expect("write");
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let Seen::Upgrade(parts) = up.next().await else {
        panic!("expected the upgrade request");
    };
    assert_eq!(parts.uri.path(), "/-/kubernetes-agent/k8s-proxy/");
    assert_relayed_both_ways(&mut s).await;
    drop(s);

    gw.shutdown().await;
    up.task.abort();
    forge.stop().await;
}

// ------------------------------------------------------------------ 8. upstream timeouts

/// A forge that does not complete the TCP handshake (a listener whose accept queue is full:
/// Linux drops further SYNs) is 502 after `upstream_connect_timeout`, not 504 after the
/// (much longer) response timeout. The 504 side is `no_response_head_in_time_is_504` in
/// tests/forwarding.rs (a listener that accepts and never answers, 200 ms configured).
#[tokio::test]
async fn a_forge_that_never_completes_the_handshake_is_502() {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let blackhole = socket.listen(0).expect("listen");
    let addr = blackhole.local_addr().expect("addr");
    // Fill the accept queue (never accepted): connect until a handshake no longer completes.
    let mut held = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await {
            Ok(Ok(s)) => held.push(s),
            // `net.ipv4.tcp_abort_on_overflow=1` answers a full queue with a reset instead:
            // then the gateway's connect fails at once, which must be a 502 just the same.
            Ok(Err(_)) | Err(_) => break,
        }
        assert!(held.len() < 64, "the accept queue never filled");
    }
    let gw = gateway(
        &format!("http://{addr}"),
        "limits:\n  upstream_connect_timeout: 200ms\n  upstream_response_timeout: 30s\n",
    )
    .await;
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        client()
            .get(format!("http://{}/api/v4/projects/1/issues", gw.addr))
            .send(),
    )
    .await
    .expect("answered well before the response timeout")
    .expect("answered");
    assert_eq!(r.status().as_u16(), 502);
    assert_eq!(
        r.text().await.expect("body"),
        r#"{"message":"502 Bad Gateway"}"#
    );
    gw.shutdown().await;
    drop(held);
    drop(blackhole);
}

// ------------------------------------------------------------------ 7. SIGTERM, real binary

fn write_config(dir: &Path, yaml: &str) -> std::path::PathBuf {
    let path = dir.join("proxy.yaml");
    std::fs::write(&path, yaml).expect("write config");
    path
}

fn binary_yaml(upstream: &str, shutdown: &str) -> String {
    format!(
        "listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\nupstream:\n  url: {upstream}\n\
         shutdown: {shutdown}\n"
    )
}

async fn readyz(admin: SocketAddr) -> u16 {
    client()
        .get(format!("http://{admin}/readyz"))
        .send()
        .await
        .expect("the admin listener answers")
        .status()
        .as_u16()
}

/// SIGTERM: /readyz is 503 at once, yet for `drain_delay` the listener still accepts and
/// serves new connections (a load balancer that has not noticed yet is not refused); then it
/// stops accepting, and the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_keeps_accepting_for_the_drain_delay_then_stops() {
    let mut up = test_upstream(None).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(
        dir.path(),
        &binary_yaml(&up.url, "{drain_delay: 3s, grace_period: 10s}"),
    );
    let mut proc = Proc::run(&path);
    let (addr, admin) = proc.wait_listening_with_admin();
    let admin = admin.expect("admin listener");
    assert_eq!(readyz(admin).await, 200);

    let mark = proc.stderr.len();
    proc.signal("TERM");
    proc.stderr
        .expect_line(mark, "readiness off", |l| l.contains("readiness off"));
    assert_eq!(readyz(admin).await, 503);
    // A new connection during the drain delay is accepted and served.
    let pending = tokio::spawn(
        client()
            .get(format!("http://{addr}/stream/during-drain"))
            .send(),
    );
    let Seen::Stream(_, body_tx) = up.next().await else {
        panic!("expected the stream request");
    };
    body_tx
        .send(Bytes::from_static(b"served"))
        .await
        .expect("send");
    drop(body_tx);
    let resp = pending
        .await
        .expect("task")
        .expect("served during the drain delay");
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(&resp.bytes().await.expect("body")[..], b"served");
    // The request was served before the listener stopped: its line is not there yet.
    assert!(
        !proc.stderr.text().contains("stopped accepting"),
        "{}",
        proc.stderr.text()
    );

    // After the delay the listener stops accepting, and the process exits 0.
    proc.stderr.expect_line(mark, "the listener to stop", |l| {
        l.contains("stopped accepting")
    });
    let status = proc.wait_exit(PATIENCE);
    assert_eq!(status.code(), Some(0), "{}", proc.stderr.text());
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "the port still accepts after exit"
    );
    up.task.abort();
}

/// A slow streaming download in flight through SIGTERM runs to its end within the grace
/// period, while /readyz says 503 and the port refuses new connections; then exit 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_slow_download_finish_within_the_grace_period() {
    let mut up = test_upstream(None).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(
        dir.path(),
        &binary_yaml(&up.url, "{drain_delay: 0s, grace_period: 30s}"),
    );
    let mut proc = Proc::run(&path);
    let (addr, admin) = proc.wait_listening_with_admin();
    let admin = admin.expect("admin listener");
    let pending = tokio::spawn(client().get(format!("http://{addr}/stream/slow")).send());
    let Seen::Stream(_, body_tx) = up.next().await else {
        panic!("expected the stream request");
    };
    body_tx
        .send(Bytes::from_static(b"part 1;"))
        .await
        .expect("send");
    let mut resp = pending.await.expect("task").expect("response head");
    assert_eq!(
        resp.chunk().await.expect("chunk").as_deref(),
        Some(&b"part 1;"[..])
    );

    let mark = proc.stderr.len();
    proc.signal("TERM");
    proc.stderr.expect_line(mark, "the listener to stop", |l| {
        l.contains("stopped accepting")
    });
    assert_eq!(readyz(admin).await, 503);
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "the proxy port still accepts after the drain delay"
    );
    // The download goes on, paced, and ends cleanly.
    let mut got = Vec::new();
    for i in 2..=6 {
        tokio::time::sleep(PACE).await;
        body_tx
            .send(Bytes::from(format!("part {i};")))
            .await
            .expect("send");
    }
    drop(body_tx);
    while let Some(chunk) = resp.chunk().await.expect("the download is not cut") {
        got.extend_from_slice(&chunk);
    }
    assert_eq!(got, b"part 2;part 3;part 4;part 5;part 6;");
    let status = proc.wait_exit(PATIENCE);
    assert_eq!(status.code(), Some(0), "{}", proc.stderr.text());
    assert!(
        proc.stderr
            .text()
            .contains("every in-flight request finished"),
        "{}",
        proc.stderr.text()
    );
    up.task.abort();
}

/// With a tiny grace period, a stalled download is cut when it is over, and the process
/// still exits 0 promptly, saying how many connections it closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_cuts_a_stalled_download_after_a_tiny_grace_period_and_exits_0() {
    let mut up = test_upstream(None).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(
        dir.path(),
        &binary_yaml(&up.url, "{drain_delay: 0s, grace_period: 200ms}"),
    );
    let mut proc = Proc::run(&path);
    let addr = proc.wait_listening();
    let pending = tokio::spawn(client().get(format!("http://{addr}/stream/stalled")).send());
    let Seen::Stream(_, body_tx) = up.next().await else {
        panic!("expected the stream request");
    };
    body_tx
        .send(Bytes::from_static(b"part 1;"))
        .await
        .expect("send");
    let mut resp = pending.await.expect("task").expect("response head");
    assert_eq!(
        resp.chunk().await.expect("chunk").as_deref(),
        Some(&b"part 1;"[..])
    );
    proc.signal("TERM");
    // The upstream holds the stream open and silent: only the grace period ends it.
    let status = proc.wait_exit(PATIENCE);
    assert_eq!(status.code(), Some(0), "{}", proc.stderr.text());
    let log = proc.stderr.text();
    assert!(log.contains("grace period over"), "{log}");
    assert!(log.contains("cut=1"), "{log}");
    let rest = tokio::time::timeout(PATIENCE, resp.chunk())
        .await
        .expect("the client hears the cut");
    assert!(rest.is_err(), "a cut download ended cleanly: {rest:?}");
    drop(body_tx);
    up.task.abort();
}

// Keep the in-process shutdown honest too: `Running::shutdown` (tests, demo) has no drain
// delay, so readiness and the listener go together.
#[tokio::test]
async fn in_process_shutdown_has_no_drain_delay() {
    let h = Harness::with(with_yaml("shutdown: {drain_delay: 1h, grace_period: 1s}\n")).await;
    let metrics = h.gw.metrics.clone();
    let addr = h.gw.addr;
    tokio::time::timeout(PATIENCE, h.gw.shutdown())
        .await
        .expect("shutdown does not wait for the drain delay");
    assert!(!metrics.ready.load(Ordering::SeqCst));
    assert!(TcpStream::connect(addr).await.is_err());
    h.forge.stop().await;
}

/// An upgraded connection outlives its HTTP exchange, and goes on counting: with
/// `max_connections: 1`, a live WebSocket keeps a new connection waiting until it closes. On
/// shutdown it is closed when the grace period is over, and `shutdown` returns.
#[tokio::test]
async fn an_upgraded_connection_counts_until_it_ends_and_is_cut_at_shutdown() {
    let mut up = test_upstream(None).await;
    let gw = gateway(
        &up.url,
        "limits:\n  max_connections: 1\nshutdown:\n  grace_period: 200ms\n",
    )
    .await;
    let admin = gw.admin_addr.expect("admin");
    let open_websocket = || async {
        let mut s = TcpStream::connect(gw.addr).await.expect("connect");
        s.write_all(websocket_request("/-/kubernetes-agent/k8s-proxy/", None).as_bytes())
            .await
            .expect("write");
        let head = read_head(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        s
    };
    let mut ws = open_websocket().await;
    assert!(matches!(up.next().await, Seen::Upgrade(_)));
    assert_relayed_both_ways(&mut ws).await;
    assert_eq!(open_connections(admin).await, 1);

    let mut other = TcpStream::connect(gw.addr).await.expect("connect");
    other
        .write_all(b"GET /stream/waiting HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .expect("write");
    // A negative can only be watched for a while: 300 ms of silence, bounded.
    let mut byte = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(300), other.read(&mut byte)).await;
    assert!(early.is_err(), "served beside a live WebSocket: {early:?}");
    up.assert_nothing_seen();

    // The WebSocket ends (the client closes it; the upstream's echo loop ends too): the
    // waiting connection is accepted and served.
    drop(ws);
    let Seen::Stream(_, body_tx) = up.next().await else {
        panic!("expected the waiting request");
    };
    body_tx.send(Bytes::from_static(b"ok")).await.expect("send");
    drop(body_tx);
    let head = read_head(&mut other).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    drop(other);
    wait_open_connections(admin, 0).await;

    // Shutdown with a WebSocket open: cut after the 200 ms grace period.
    let mut ws = open_websocket().await;
    assert!(matches!(up.next().await, Seen::Upgrade(_)));
    let mut greeting = vec![0u8; GREETING.len()];
    ws.read_exact(&mut greeting).await.expect("greeting");
    tokio::time::timeout(PATIENCE, gw.shutdown())
        .await
        .expect("shutdown ends once the grace period is over");
    assert!(read_to_close(&mut ws).await.is_empty());
    up.task.abort();
}
