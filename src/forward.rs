//! The streaming forwarder (SPEC §7): hop-by-hop headers removed, `X-Forwarded-*` set, the
//! client's `Host` and credentials kept, bodies streamed both ways with idle timeouts that
//! reset on every chunk (never a total timeout: a `git clone` may take an hour), WebSocket
//! upgrades spliced after the decision.

use crate::admin::Histogram;
use crate::config::{Cidr, Config};
use crate::error::Refusal;
use crate::forge::{self, BodyError, UpBody, Upstream};
use crate::server::ConnectionLease;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

// Parsed once, not per request (`&str` names are parsed and hashed on every call).
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Headers that describe one hop, never the request (RFC 9110 §7.6.1), plus `Proxy-*`.
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
];

/// Removes hop-by-hop headers, including those `Connection` names. `Proxy-Authorization` and
/// every other `proxy-*` header goes too: it is addressed to a proxy, and that proxy is us.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names (already lower case, no hashing) notes which are present; the
    // removals below touch only those. Most requests carry none; most forge answers carry
    // just `Connection: keep-alive`, which costs one removal.
    let mut present = 0u8;
    let mut proxy = false;
    for name in headers.keys() {
        // A `match` on the name compiles to a length switch and one compare.
        let i = match name.as_str() {
            "connection" => 0,
            "keep-alive" => 1,
            "te" => 2,
            "trailer" => 3,
            "transfer-encoding" => 4,
            "upgrade" => 5,
            "proxy-connection" => 6,
            "proxy-authenticate" => 7,
            other => {
                proxy |= other.starts_with("proxy-");
                continue;
            }
        };
        present |= 1 << i;
    }
    if present == 0 && !proxy {
        return;
    }
    if present & 1 != 0 {
        let listed: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            // `keep-alive`, `upgrade`, …: the fixed list below removes them when present.
            .filter(|name| {
                !HOP_BY_HOP
                    .iter()
                    .any(|h| h.as_str().eq_ignore_ascii_case(name))
            })
            .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
            .collect();
        for name in listed {
            headers.remove(name);
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
    if proxy {
        let names: Vec<HeaderName> = headers
            .keys()
            .filter(|k| k.as_str().starts_with("proxy-"))
            .cloned()
            .collect();
        for name in names {
            headers.remove(name);
        }
    }
}

/// Whether the peer is a proxy whose `X-Forwarded-For` we extend rather than replace.
pub fn is_trusted(trusted: &[Cidr], peer: IpAddr) -> bool {
    trusted.iter().any(|c| c.contains(peer))
}

/// The address the forge should charge: the peer, or for a trusted proxy the last address it
/// reports that is not itself a trusted proxy.
pub fn client_ip(config: &Config, headers: &HeaderMap, peer: IpAddr) -> IpAddr {
    if !is_trusted(&config.trusted_proxies, peer) {
        return peer;
    }
    let mut chain: Vec<IpAddr> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    while let Some(last) = chain.pop() {
        if !is_trusted(&config.trusted_proxies, last) {
            return last;
        }
    }
    peer
}

/// Sets `X-Forwarded-For/Proto/Host` (SPEC §7) and restores `Host` for HTTP/2 clients.
pub fn set_forwarded(
    config: &Config,
    headers: &mut HeaderMap,
    uri: &http::Uri,
    peer: SocketAddr,
    tls: bool,
) {
    let trusted = is_trusted(&config.trusted_proxies, peer.ip());
    let xff = if trusted {
        let prior: Vec<&str> = headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if prior.is_empty() {
            ip_value(peer.ip())
        } else {
            HeaderValue::from_str(&format!("{}, {}", prior.join(", "), peer.ip())).ok()
        }
    } else {
        ip_value(peer.ip())
    };
    headers.remove(&X_FORWARDED_FOR);
    if let Some(v) = xff {
        headers.insert(X_FORWARDED_FOR, v);
    }
    if !(trusted && headers.contains_key(&X_FORWARDED_PROTO)) {
        let proto = if tls { "https" } else { "http" };
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    }
    if headers.get(header::HOST).is_none() {
        // HTTP/2 carries the host in :authority; the forge expects it in Host.
        if let Some(a) = uri.authority() {
            if let Ok(v) = HeaderValue::from_str(a.as_str()) {
                headers.insert(header::HOST, v);
            }
        }
    }
    if !(trusted && headers.contains_key(&X_FORWARDED_HOST)) {
        if let Some(host) = headers.get(header::HOST).cloned() {
            headers.insert(X_FORWARDED_HOST, host);
        }
    }
}

/// An address as a header value.
fn ip_value(ip: IpAddr) -> Option<HeaderValue> {
    // The longest textual IPv6 address (with an embedded IPv4) is 45 bytes.
    let mut text = String::with_capacity(45);
    crate::logging::push_ip(&mut text, ip);
    HeaderValue::from_maybe_shared(Bytes::from(text)).ok()
}

/// True for an HTTP/1.1 `Upgrade: websocket` request (Kubernetes agent, web terminals).
pub fn is_websocket_upgrade(req_headers: &HeaderMap, version: http::Version) -> bool {
    version == http::Version::HTTP_11
        && req_headers
            .get_all(header::UPGRADE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|p| p.trim().eq_ignore_ascii_case("websocket"))
}

/// An allowed request, ready to go upstream.
pub struct Outbound {
    pub parts: http::request::Parts,
    pub body: UpBody,
    /// `path?query` to send (the raw one, or the registry's rebuilt query).
    pub path_and_query: String,
    pub peer: SocketAddr,
    pub tls: bool,
    /// Set when the client asked for a WebSocket upgrade: its half of the upgraded connection.
    pub upgrade: Option<hyper::upgrade::OnUpgrade>,
}

/// Sends the request to the forge and streams the answer back; the time to the forge's
/// response head goes into `latency` (requests that get none, 502/504, are not observed).
pub async fn forward(
    config: &Config,
    upstream: &Upstream,
    latency: &Histogram,
    out: Outbound,
) -> Result<Response<UpBody>, Refusal> {
    let Outbound {
        mut parts,
        body,
        path_and_query,
        peer,
        tls,
        upgrade,
    } = out;
    // The client connection's lease: an upgraded connection goes on holding it.
    let lease = parts.extensions.remove::<ConnectionLease>();
    let uri = upstream
        .uri(config, path_and_query)
        .ok_or(Refusal::BadRequest("uri"))?;
    let websocket = upgrade.is_some();
    let upgrade_value = parts.headers.get(header::UPGRADE).cloned();
    strip_hop_by_hop(&mut parts.headers);
    set_forwarded(config, &mut parts.headers, &parts.uri, peer, tls);
    if websocket {
        if let Some(v) = upgrade_value {
            parts.headers.insert(header::UPGRADE, v);
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
    }
    let mut req = Request::new(body);
    *req.method_mut() = parts.method;
    *req.uri_mut() = uri;
    *req.headers_mut() = parts.headers;
    // The client may speak HTTP/2 to us; the upstream picks its protocol itself.
    *req.version_mut() = http::Version::HTTP_11;

    let sent = tokio::time::timeout(config.limits.upstream_response_timeout, upstream.send(req));
    let sending = Instant::now();
    let mut resp = match sent.await {
        Err(_) => return Err(Refusal::GatewayTimeout),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, connect = e.is_connect(), "forwarding failed");
            return Err(Refusal::BadGateway);
        }
        Ok(Ok(resp)) => {
            latency.observe(sending.elapsed());
            resp
        }
    };

    if websocket && resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_side) = upgrade {
            let upstream_side = hyper::upgrade::on(&mut resp);
            tokio::spawn(async move {
                let splice = async {
                    match tokio::try_join!(client_side, upstream_side) {
                        Ok((c, u)) => {
                            let mut c = TokioIo::new(c);
                            let mut u = TokioIo::new(u);
                            if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut u).await {
                                tracing::debug!(error = %e, "upgraded connection ended");
                            }
                        }
                        Err(e) => tracing::debug!(error = %e, "upgrade failed"),
                    }
                };
                match lease {
                    // Counted in `max_connections` until it ends; closed when a shutdown's
                    // grace period is over.
                    Some(lease) => tokio::select! {
                        () = splice => {}
                        () = lease.cut() => {}
                    },
                    None => splice.await,
                }
            });
        }
        let (mut head, _) = resp.into_parts();
        let upgrade_header = head.headers.get(header::UPGRADE).cloned();
        strip_hop_by_hop(&mut head.headers);
        if let Some(v) = upgrade_header {
            head.headers.insert(header::UPGRADE, v);
            head.headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
        return Ok(Response::from_parts(head, forge::empty()));
    }

    let (mut head, body) = resp.into_parts();
    strip_hop_by_hop(&mut head.headers);
    let body = IdleTimeout::new(body, config.limits.idle_timeout).boxed();
    Ok(Response::from_parts(head, body))
}

/// A body that fails when no frame arrives for `idle`; the timer resets on every frame, so a
/// long transfer that keeps moving is never cut.
///
/// The timer is armed only when the body has to wait: a small answer whose frames are all
/// ready when first polled (most API answers, every empty request body) never touches the
/// timer wheel. The idle period runs while the body waits for its source, not while its
/// consumer (a slow client) has not asked for more.
pub struct IdleTimeout<B> {
    inner: B,
    idle: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    /// A frame arrived since the timer was last set: the next wait starts a new period.
    moved: bool,
}

impl<B> IdleTimeout<B> {
    pub fn new(inner: B, idle: Duration) -> Self {
        IdleTimeout {
            inner,
            idle,
            timer: None,
            moved: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("stream idle for longer than the idle timeout")]
pub struct IdleElapsed;

// The error type is fixed rather than `B::Error: Into<BodyError>`: that bound, inside the
// gate's async functions, is one the compiler cannot prove for every lifetime of the boxed
// error (rust-lang/rust#102211). Every body is an `UpBody` by the time it is timed.
impl<B> Body for IdleTimeout<B>
where
    B: Body<Data = Bytes, Error = BodyError> + Unpin,
{
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            this.moved = true;
            return Poll::Ready(frame);
        }
        let timer = match &mut this.timer {
            Some(timer) => {
                if std::mem::take(&mut this.moved) {
                    timer.as_mut().reset(Instant::now() + this.idle);
                }
                timer
            }
            None => {
                this.moved = false;
                this.timer.insert(Box::pin(tokio::time::sleep(this.idle)))
            }
        };
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(IdleElapsed)))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The client's body as an upstream body, streamed with the idle timeout.
pub fn stream_body(body: UpBody, idle: Duration) -> UpBody {
    IdleTimeout::new(body, idle).boxed()
}

/// Reads a parameter-bearing body whole, up to `limit` bytes, for inspection.
pub async fn read_limited(
    mut body: UpBody,
    limit: usize,
    idle: Duration,
) -> Result<Bytes, Refusal> {
    // By hand rather than with `http_body_util::Limited`: its boxed-error conversion, inside
    // the gate's async functions, trips rust-lang/rust#102211.
    let mut buf = bytes::BytesMut::new();
    loop {
        let next = tokio::time::timeout(idle, NextFrame(&mut body)).await;
        match next {
            Err(_) | Ok(Some(Err(_))) => return Err(Refusal::BadRequest("body")),
            Ok(None) => return Ok(buf.freeze()),
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    if buf.len() + data.len() > limit {
                        return Err(Refusal::PayloadTooLarge);
                    }
                    buf.extend_from_slice(&data);
                }
            }
        }
    }
}

/// The client's body in the one type every later phase takes.
pub fn client_body(body: hyper::body::Incoming) -> UpBody {
    body.map_err(|e| -> BodyError { Box::new(e) }).boxed()
}

/// How far [`peek_json`] looks for the first byte that is not whitespace.
const PEEK_LIMIT: usize = 4096;

/// Whether a body with no Content-Type is JSON to Grape, whose `default_format :json` parses
/// such bodies of POST/PUT/PATCH/DELETE into params: its first byte that is not whitespace is
/// `{` (or `/`, a comment Ruby's parser skips). Returns the answer and what was read, which
/// [`unpeek`] puts back in front of the body, so nothing is lost whichever way it goes.
pub async fn peek_json(body: &mut UpBody, idle: Duration) -> Result<(bool, Vec<Bytes>), Refusal> {
    let mut peeked: Vec<Bytes> = Vec::new();
    let mut seen = 0;
    let json = loop {
        let next = tokio::time::timeout(idle, NextFrame(body)).await;
        match next {
            Err(_) | Ok(Some(Err(_))) => return Err(Refusal::BadRequest("body")),
            Ok(None) => break false,
            Ok(Some(Ok(frame))) => {
                // Trailers carry no parameters; they are not forwarded.
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                let sniffed = crate::credentials::json_sniff(&data);
                seen += data.len();
                peeked.push(data);
                if let Some(json) = sniffed {
                    break json;
                }
                if seen > PEEK_LIMIT {
                    break false;
                }
            }
        }
    };
    Ok((json, peeked))
}

/// `body` with `peeked` (what [`peek_json`] read of it) put back in front.
pub fn unpeek(peeked: Vec<Bytes>, body: UpBody) -> UpBody {
    Prefixed {
        prefix: peeked.into(),
        rest: body,
    }
    .boxed()
}

/// Chunks already read from a body, then the rest of it.
struct Prefixed {
    prefix: std::collections::VecDeque<Bytes>,
    rest: UpBody,
}

impl Body for Prefixed {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if let Some(chunk) = self.prefix.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_empty() && self.rest.is_end_stream()
    }
}

/// The next frame of a body, as a plain future (no closure, no borrowed adapter type).
struct NextFrame<'a>(&'a mut UpBody);

impl Future for NextFrame<'_> {
    type Output = Option<Result<Frame<Bytes>, BodyError>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut *self.0).poll_frame(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body fed by a channel: a frame per message, the end when the sender is dropped.
    fn channel_body() -> (tokio::sync::mpsc::Sender<Bytes>, UpBody) {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(4);
        let stream = futures_util::stream::poll_fn(move |cx| {
            rx.poll_recv(cx)
                .map(|m| m.map(|b| Ok::<_, BodyError>(Frame::data(b))))
        });
        (tx, http_body_util::StreamBody::new(stream).boxed())
    }

    #[tokio::test(start_paused = true)]
    async fn idle_timeout_cuts_a_stalled_body_and_spares_a_moving_one() {
        let idle = Duration::from_secs(10);
        // Frames every 6 s for a minute: never idle for 10 s, never cut.
        let (tx, body) = channel_body();
        let mut timed = IdleTimeout::new(body, idle);
        let feeder = tokio::spawn(async move {
            for _ in 0..10 {
                tokio::time::sleep(Duration::from_secs(6)).await;
                if tx.send(Bytes::from_static(b"x")).await.is_err() {
                    return;
                }
            }
        });
        let mut got = 0;
        while let Some(frame) = timed.frame().await {
            assert!(frame.is_ok(), "a moving body was cut");
            got += 1;
        }
        assert_eq!(got, 10);
        feeder.await.expect("feeder");

        // One frame, then silence: cut one idle period after the wait began.
        let (tx, body) = channel_body();
        let mut timed = IdleTimeout::new(body, idle);
        tx.send(Bytes::from_static(b"first")).await.expect("send");
        assert!(matches!(timed.frame().await, Some(Ok(_))));
        let waiting = Instant::now();
        let cut = timed.frame().await;
        assert!(
            matches!(cut, Some(Err(ref e)) if e.is::<IdleElapsed>()),
            "{cut:?}"
        );
        assert_eq!(waiting.elapsed(), idle);
        drop(tx);

        // A consumer that takes longer than the idle period between reads, while frames are
        // ready, is not the source going idle.
        let (tx, body) = channel_body();
        let mut timed = IdleTimeout::new(body, idle);
        for _ in 0..3 {
            tx.send(Bytes::from_static(b"y")).await.expect("send");
            tokio::time::sleep(Duration::from_secs(30)).await;
            assert!(matches!(timed.frame().await, Some(Ok(_))));
        }
        drop(tx);
        assert!(timed.frame().await.is_none());
    }

    #[test]
    fn strips_hop_by_hop_and_what_connection_lists() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, X-Secret-Hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("proxy-authorization", HeaderValue::from_static("Basic x"));
        h.insert("upgrade", HeaderValue::from_static("h2c"));
        h.insert("job-token", HeaderValue::from_static("kept"));
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, vec!["job-token"]);
    }

    #[test]
    fn connection_listing_is_case_insensitive_and_keeps_end_to_end_headers() {
        // The forge's usual answer: only `Connection: keep-alive` to drop.
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("keep-alive"));
        h.insert("content-length", HeaderValue::from_static("5"));
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, vec!["content-length"]);
        // Names listed in any case, several `Connection` lines, `close`, and junk.
        let mut h = HeaderMap::new();
        h.append(
            "connection",
            HeaderValue::from_static("Keep-Alive, X-Hop-A"),
        );
        h.append(
            "connection",
            HeaderValue::from_static("close,x-hop-b , ,bad name"),
        );
        h.insert("x-hop-a", HeaderValue::from_static("1"));
        h.insert("x-hop-b", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-end-to-end", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, vec!["x-end-to-end"]);
    }

    #[test]
    fn each_hop_header_alone_triggers_the_strip() {
        // The fast path must not skip a request whose only hop header is any one of them.
        let names = HOP_BY_HOP.iter().map(HeaderName::as_str);
        for name in names.chain(["proxy-authorization", "proxy-other"]) {
            let mut h = HeaderMap::new();
            h.insert(
                HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_static("x"),
            );
            h.insert("job-token", HeaderValue::from_static("kept"));
            strip_hop_by_hop(&mut h);
            let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
            assert_eq!(left, vec!["job-token"], "{name}");
        }
    }

    #[test]
    fn addresses_format_as_header_values() {
        for ip in [
            "127.0.0.1",
            "::1",
            "2001:db8::ffff:192.0.2.1",
            "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255",
        ] {
            let parsed: IpAddr = ip.parse().expect("ip");
            let v = ip_value(parsed).expect("value");
            assert_eq!(v.to_str().expect("ascii"), parsed.to_string());
        }
    }
}
