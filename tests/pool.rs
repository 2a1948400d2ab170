//! The HTTP/1.1 upstream pool that forwards to an `http://` forge (issue 6), end to end: the
//! real gateway in front of upstreams written here, which report every connection they accept,
//! every request head they read and every connection that ends. Keep-alive reuse (bodies of
//! known length, chunked, none at all), no reuse of a connection whose response was cut or
//! upgraded, a forge that closes each connection after one response, origin-form request
//! lines and `Host`, HTTP/2 clients forwarded over HTTP/1.1.

#[path = "support/pki.rs"]
mod pki;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// How long a test waits for something that should happen at once.
const PATIENCE: Duration = Duration::from_secs(10);

async fn gateway(upstream_url: &str, extra_yaml: &str) -> scopegate::Running {
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\nupstream:\n  url: {upstream_url}\n{extra_yaml}"
    );
    let config = scopegate::Config::from_yaml_str(&yaml, Path::new("test.yaml"))
        .unwrap_or_else(|e| panic!("test config: {e}\n{yaml}"));
    scopegate::start(config).await.expect("gateway starts")
}

/// `GET url` through `http`; the transport must not fail (the statuses are each test's).
async fn get(http: &reqwest::Client, url: String) -> reqwest::Response {
    http.get(url).send().await.expect("send")
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
}

/// What an upstream saw, in order.
#[derive(Debug)]
enum Seen {
    Accepted,
    Request {
        conn: usize,
        method: http::Method,
        /// The request target as parsed: an absolute-form line would carry scheme and authority.
        uri: http::Uri,
        host: Option<String>,
        body: Bytes,
    },
    Closed(usize),
}

/// A keep-alive HTTP/1.1 upstream (hyper's server). Paths:
/// `/len…` a body of known length naming the connection and the request target;
/// `/chunked` a chunked body; `/empty` 204; `/stall` a head and one chunk, then nothing;
/// `/ws` a WebSocket upgrade whose connection echoes what it receives.
struct Upstream {
    url: String,
    seen: mpsc::UnboundedReceiver<Seen>,
    accepted: Arc<AtomicUsize>,
}

impl Upstream {
    async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let (tx, seen) = mpsc::unbounded_channel();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let conn = count.fetch_add(1, Ordering::SeqCst) + 1;
                let _ = tx.send(Seen::Accepted);
                let tx = tx.clone();
                tokio::spawn(async move {
                    let reqs = tx.clone();
                    let service = hyper::service::service_fn(move |req| {
                        let tx = reqs.clone();
                        async move { Ok::<_, Infallible>(answer(conn, req, tx).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                    let _ = tx.send(Seen::Closed(conn));
                });
            }
        });
        Upstream {
            url,
            seen,
            accepted,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    async fn next(&mut self) -> Seen {
        tokio::time::timeout(PATIENCE, self.seen.recv())
            .await
            .expect("the upstream saw something in time")
            .expect("upstream running")
    }

    /// The next request the upstream read (connections accepted on the way are skipped).
    async fn next_request(&mut self) -> Seen {
        loop {
            match self.next().await {
                r @ Seen::Request { .. } => return r,
                Seen::Accepted | Seen::Closed(_) => {}
            }
        }
    }

    /// Waits until connection `conn` has ended at the upstream.
    async fn closed(&mut self, conn: usize) {
        loop {
            if let Seen::Closed(c) = self.next().await {
                if c == conn {
                    return;
                }
            }
        }
    }
}

type Answer = http::Response<http_body_util::combinators::BoxBody<Bytes, Infallible>>;

async fn answer(
    conn: usize,
    req: http::Request<Incoming>,
    tx: mpsc::UnboundedSender<Seen>,
) -> Answer {
    let mut req = req;
    let upgrade = hyper::upgrade::on(&mut req);
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let host = parts
        .headers
        .get("host")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let _ = tx.send(Seen::Request {
        conn,
        method: parts.method.clone(),
        uri: parts.uri.clone(),
        host,
        body,
    });
    let builder = http::Response::builder();
    match parts.uri.path() {
        "/chunked" => {
            let chunks = ["one,", "two,", "three"]
                .map(|c| Ok::<_, Infallible>(Frame::data(Bytes::from_static(c.as_bytes()))));
            builder
                .body(StreamBody::new(futures_util::stream::iter(chunks)).boxed())
                .expect("response")
        }
        "/empty" => builder.status(204).body(empty()).expect("response"),
        "/stall" => {
            let first = futures_util::stream::iter([Ok::<_, Infallible>(Frame::data(
                Bytes::from_static(b"first chunk"),
            ))]);
            let never = futures_util::stream::pending();
            builder
                .header("content-length", "1000")
                .body(StreamBody::new(futures_util::StreamExt::chain(first, never)).boxed())
                .expect("response")
        }
        "/ws" => {
            tokio::spawn(async move {
                if let Ok(upgraded) = upgrade.await {
                    let (mut r, mut w) = tokio::io::split(TokioIo::new(upgraded));
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                }
            });
            builder
                .status(101)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .body(empty())
                .expect("response")
        }
        _ => builder
            .body(Full::new(Bytes::from(format!("conn {conn} {}", parts.uri))).boxed())
            .expect("response"),
    }
}

fn empty() -> http_body_util::combinators::BoxBody<Bytes, Infallible> {
    http_body_util::Empty::new().boxed()
}

/// One connection serves many sequential requests, whatever their response body: known
/// length, chunked, none at all (HEAD, 204). Each goes out in origin form with the client's
/// `Host`.
#[tokio::test]
async fn one_upstream_connection_serves_many_sequential_requests() {
    let mut up = Upstream::start().await;
    let gw = gateway(&up.url, "").await;
    let http = client();
    let base = format!("http://{}", gw.addr);
    for i in 0..10 {
        let r = http
            .get(format!("{base}/len/{i}?q={i}"))
            .header("host", "gitlab.example")
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.text().await.expect("body"),
            format!("conn 1 /len/{i}?q={i}")
        );
        let Seen::Request {
            conn, uri, host, ..
        } = up.next_request().await
        else {
            unreachable!()
        };
        assert_eq!(conn, 1);
        // Origin form: `GET /len/0?q=0 HTTP/1.1`, never `GET http://…`.
        assert!(uri.scheme().is_none() && uri.authority().is_none(), "{uri}");
        assert_eq!(uri.to_string(), format!("/len/{i}?q={i}"));
        assert_eq!(host.as_deref(), Some("gitlab.example"));

        let r = get(&http, format!("{base}/chunked")).await;
        assert_eq!(r.text().await.expect("body"), "one,two,three");
        let r = http.head(format!("{base}/len")).send().await.expect("send");
        assert_eq!(r.status(), 200);
        let r = get(&http, format!("{base}/empty")).await;
        assert_eq!(r.status(), 204);
        let r = http
            .post(format!("{base}/len/post"))
            .body("a request body")
            .send()
            .await
            .expect("send");
        assert_eq!(r.text().await.expect("body"), "conn 1 /len/post");
        for (method, path) in [
            (http::Method::GET, "/chunked"),
            (http::Method::HEAD, "/len"),
            (http::Method::GET, "/empty"),
            (http::Method::POST, "/len/post"),
        ] {
            let Seen::Request {
                conn,
                method: m,
                uri,
                body,
                ..
            } = up.next_request().await
            else {
                unreachable!()
            };
            assert_eq!((conn, &m, uri.path()), (1, &method, path));
            if method == http::Method::POST {
                assert_eq!(body, "a request body");
            }
        }
    }
    assert_eq!(up.accepted(), 1, "every request on the one connection");
    gw.shutdown().await;
}

/// Requests in parallel each get their own answer (no crossed responses), and connections
/// are reused across them.
#[tokio::test]
async fn parallel_requests_get_their_own_answers() {
    let up = Upstream::start().await;
    let gw = gateway(&up.url, "").await;
    let base = format!("http://{}", gw.addr);
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let base = base.clone();
        tasks.push(tokio::spawn(async move {
            let http = client();
            for i in 0..25 {
                let path = format!("/len/{worker}/{i}");
                let r = get(&http, format!("{base}{path}")).await;
                assert_eq!(r.status(), 200);
                let text = r.text().await.expect("body");
                assert!(text.ends_with(&format!(" {path}")), "{text} for {path}");
            }
        }));
    }
    for t in tasks {
        t.await.expect("worker");
    }
    assert!(
        up.accepted() < 200,
        "200 requests, {} connections: none reused",
        up.accepted()
    );
    gw.shutdown().await;
}

/// A response the client stops reading is not followed by another request on its connection:
/// the connection is closed, and the next request gets a new one.
#[tokio::test]
async fn a_response_dropped_before_its_end_closes_its_connection() {
    let mut up = Upstream::start().await;
    let gw = gateway(&up.url, "").await;
    let http = client();
    let base = format!("http://{}", gw.addr);
    let mut r = get(&http, format!("{base}/stall")).await;
    assert_eq!(r.status(), 200);
    let first = tokio::time::timeout(PATIENCE, r.chunk())
        .await
        .expect("first chunk in time")
        .expect("chunk");
    assert_eq!(first.as_deref(), Some(&b"first chunk"[..]));
    drop(r);
    up.closed(1).await;

    let r = get(&http, format!("{base}/len/after")).await;
    assert_eq!(r.text().await.expect("body"), "conn 2 /len/after");
    assert_eq!(up.accepted(), 2);
    gw.shutdown().await;
}

/// A response body that ends in an error (here: idle past `limits.idle_timeout`) is cut at
/// the client and its upstream connection closed, never reused.
#[tokio::test]
async fn a_response_cut_by_the_idle_timeout_closes_its_connection() {
    let mut up = Upstream::start().await;
    let gw = gateway(&up.url, "limits:\n  idle_timeout: 300ms\n").await;
    let http = client();
    let base = format!("http://{}", gw.addr);
    let r = get(&http, format!("{base}/stall")).await;
    assert_eq!(r.status(), 200);
    let body = tokio::time::timeout(PATIENCE, r.bytes())
        .await
        .expect("cut in time");
    assert!(
        body.is_err(),
        "a stalled body of 1000 bytes cannot end well"
    );
    up.closed(1).await;

    let r = get(&http, format!("{base}/len/after")).await;
    assert_eq!(r.text().await.expect("body"), "conn 2 /len/after");
    gw.shutdown().await;
}

/// An upgraded connection belongs to its WebSocket: the next request opens a new one.
#[tokio::test]
async fn an_upgraded_connection_is_never_reused() {
    let mut up = Upstream::start().await;
    let gw = gateway(&up.url, "").await;
    let mut s = TcpStream::connect(gw.addr).await.expect("connect");
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: gitlab.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .expect("write");
    let mut reader = BufReader::new(s);
    let mut head = String::new();
    while !head.ends_with("\r\n\r\n") {
        let n = tokio::time::timeout(PATIENCE, reader.read_line(&mut head))
            .await
            .expect("head in time")
            .expect("read");
        assert!(n > 0, "connection closed in the head: {head:?}");
    }
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let mut s = reader.into_inner();
    s.write_all(b"ping").await.expect("write");
    let mut echo = [0u8; 4];
    tokio::time::timeout(PATIENCE, s.read_exact(&mut echo))
        .await
        .expect("echo in time")
        .expect("echo");
    assert_eq!(&echo, b"ping");

    // The WebSocket is still open: the next request cannot have used its connection.
    let r = client()
        .get(format!("http://{}/len/after", gw.addr))
        .send()
        .await
        .expect("send");
    assert_eq!(r.text().await.expect("body"), "conn 2 /len/after");
    s.write_all(b"pong").await.expect("write");
    tokio::time::timeout(PATIENCE, s.read_exact(&mut echo))
        .await
        .expect("echo in time")
        .expect("echo");
    assert_eq!(&echo, b"pong");
    let Seen::Request { conn: 1, .. } = up.next_request().await else {
        panic!("the upgrade came first, on connection 1");
    };
    // Closing the WebSocket lets the shutdown finish without waiting out its grace period.
    drop(s);
    up.closed(1).await;
    gw.shutdown().await;
}

/// A request without `Host` (HTTP/1.0 allows it) gets the forge's authority, as the legacy
/// client gave it.
#[tokio::test]
async fn a_request_without_host_gets_the_forges_authority() {
    let mut up = Upstream::start().await;
    let gw = gateway(&up.url, "").await;
    let mut s = TcpStream::connect(gw.addr).await.expect("connect");
    s.write_all(b"GET /len/old HTTP/1.0\r\n\r\n")
        .await
        .expect("write");
    let mut resp = Vec::new();
    tokio::time::timeout(PATIENCE, s.read_to_end(&mut resp))
        .await
        .expect("answer in time")
        .expect("read");
    let resp = String::from_utf8_lossy(&resp);
    assert!(resp.starts_with("HTTP/1.0 200"), "{resp}");
    let Seen::Request { host, uri, .. } = up.next_request().await else {
        unreachable!()
    };
    assert_eq!(uri.to_string(), "/len/old");
    let authority = up.url.trim_start_matches("http://");
    assert_eq!(host.as_deref(), Some(authority));
    gw.shutdown().await;
}

/// A forge that closes every connection after one response, without saying so
/// (`Connection: close` absent): the idle connection scopegate kept is dead when the next
/// request comes, and that request must not fail. Counts the connections it accepts.
async fn closing_upstream() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let n = count.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::spawn(async move {
                let mut reader = BufReader::new(stream);
                let mut length = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut body = vec![0u8; length];
                if reader.read_exact(&mut body).await.is_err() {
                    return;
                }
                let text = format!("conn {n} got {}", String::from_utf8_lossy(&body));
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{text}",
                    text.len()
                );
                let mut stream = reader.into_inner();
                let _ = stream.write_all(resp.as_bytes()).await;
                // Closed here, after one response, without `Connection: close`.
            });
        }
    });
    (url, accepted)
}

#[tokio::test]
async fn a_forge_that_closes_idle_connections_does_not_fail_requests() {
    let (url, accepted) = closing_upstream().await;
    let gw = gateway(&url, "").await;
    let http = client();
    for i in 1..=10 {
        // A POST too: resent only when nothing of it was written, so safe for any method.
        let r = http
            .post(format!("http://{}/api/v4/x", gw.addr))
            .body(format!("body {i}"))
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 200, "request {i}");
        assert_eq!(
            r.text().await.expect("body"),
            format!("conn {i} got body {i}")
        );
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 10);
    gw.shutdown().await;
}

/// HTTP/2 clients (the TLS listener) are forwarded over the same HTTP/1.1 connection, their
/// `:authority` as `Host`; many streams of one HTTP/2 connection, sequentially, one upstream
/// connection.
#[tokio::test]
async fn http2_clients_are_forwarded_over_pooled_http1_connections() {
    let pki = pki::pki();
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = pki::write(dir.path(), "gw.pem", &pki.cert_pem);
    let key = pki::write(dir.path(), "gw-key.pem", &pki.key_pem);
    let mut up = Upstream::start().await;
    let gw = gateway(
        &up.url,
        &format!("tls: {{ cert: '{cert}', key: '{key}' }}\n"),
    )
    .await;
    let http = reqwest::Client::builder()
        .no_proxy()
        .add_root_certificate(reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).expect("ca"))
        .http2_prior_knowledge()
        .build()
        .expect("client");
    let authority = format!("127.0.0.1:{}", gw.addr.port());
    for i in 0..5 {
        let r = get(&http, format!("https://{authority}/len/h2/{i}")).await;
        assert_eq!(r.version(), reqwest::Version::HTTP_2);
        assert_eq!(r.text().await.expect("body"), format!("conn 1 /len/h2/{i}"));
        let Seen::Request { uri, host, .. } = up.next_request().await else {
            unreachable!()
        };
        assert!(uri.authority().is_none(), "{uri}");
        assert_eq!(host.as_deref(), Some(authority.as_str()));
    }
    assert_eq!(up.accepted(), 1);
    gw.shutdown().await;
}
