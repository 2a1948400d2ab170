//! The log phase: request ids, the access line and the authentication-log line.
//!
//! Bytes and duration are only known when the response body ends, so the per-request record
//! rides inside the response body (`Logged`) and writes its lines when that body finishes or
//! is dropped (an aborted download, a closed connection), exactly once — as nginx logs after
//! completion. A request whose handler is cancelled before a response exists (the client went
//! away mid-look-up) is logged by the record's own `Drop`, with nginx's 499.

use super::auth_log::{AuthLine, AuthLog, RefusedTarget};
use super::Ctx;
use crate::forge::{BodyError, UpBody};
use crate::logging;
use crate::secret::Secret;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use tokio::time::Instant;

/// The response header that carries the request id on every answer scopegate gives itself.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// nginx's "client closed request": the client left before any response was produced.
const CLIENT_CLOSED: u16 = 499;

/// A request's id: a per-process random prefix and a per-process counter, 24 hex digits.
/// Unique across restarts (the prefix) and cheap (an atomic increment, no syscall).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestId {
    prefix: u32,
    seq: u64,
}

static SEQUENCE: AtomicU64 = AtomicU64::new(1);
static PREFIX: OnceLock<u32> = OnceLock::new();

impl RequestId {
    pub fn next() -> RequestId {
        let prefix = *PREFIX.get_or_init(|| {
            // `RandomState` is seeded from the OS's randomness once per thread: a random
            // 32-bit prefix without a dependency; the pid and the clock make a collision
            // between two processes' prefixes even less likely.
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u32(std::process::id());
            if let Ok(d) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
                h.write_u128(d.as_nanos());
            }
            let v = h.finish();
            (v ^ (v >> 32)) as u32
        });
        RequestId {
            prefix,
            seq: SEQUENCE.fetch_add(1, Ordering::Relaxed),
        }
    }

    pub fn header_value(&self) -> http::HeaderValue {
        // 24 hex digits are always a valid header value.
        http::HeaderValue::from_bytes(&self.hex())
            .unwrap_or_else(|_| http::HeaderValue::from_static("-"))
    }

    /// The id's 24 lower-case hex digits: the prefix (8), then the counter (16).
    fn hex(&self) -> [u8; 24] {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 24];
        let value = (u128::from(self.prefix) << 64) | u128::from(self.seq);
        for (i, slot) in out.iter_mut().enumerate() {
            let shift = 4 * (23 - i);
            *slot = DIGITS[((value >> shift) & 0xf) as usize];
        }
        out
    }

    /// Appends the id as [`Display`](fmt::Display) writes it.
    pub fn push_to(&self, out: &mut String) {
        // ASCII hex digits: always UTF-8.
        out.push_str(std::str::from_utf8(&self.hex()).unwrap_or("-"));
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::with_capacity(24);
        self.push_to(&mut s);
        f.write_str(&s)
    }
}

/// Counts the request body's bytes as they are read, whichever phase reads them (the
/// inspector, the multipart scanner, the forwarder). One atomic add per chunk. By hand rather
/// than `BodyExt::map_frame`: that combinator drops the body's size hint, from which the
/// forwarder's HTTP/1.1 client picks `Content-Length` or chunked framing.
struct CountingRequest {
    inner: hyper::body::Incoming,
    count: Arc<AtomicU64>,
}

impl Body for CountingRequest {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.count.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(None) => Poll::Ready(None),
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

/// The client's body in the one type every later phase takes, counted on the way.
pub(super) fn count_request(body: hyper::body::Incoming, count: Arc<AtomicU64>) -> UpBody {
    CountingRequest { inner: body, count }.boxed()
}

/// What the log phase needs about one request, filled in by the other phases.
pub(super) struct Record {
    pub ctx: Ctx,
    started: Instant,
    /// `None` until a response exists.
    status: Option<u16>,
    pub request_bytes: Arc<AtomicU64>,
    response_bytes: u64,
    auth_log: Option<Arc<AuthLog>>,
    /// `log.format: json`: the access line as structured fields; otherwise one preformatted
    /// message (see [`TextLine`]).
    json: bool,
    done: bool,
}

impl Record {
    pub fn begin(ctx: Ctx, auth_log: Option<Arc<AuthLog>>, json: bool) -> Record {
        Record {
            ctx,
            started: Instant::now(),
            status: None,
            request_bytes: Arc::new(AtomicU64::new(0)),
            response_bytes: 0,
            auth_log,
            json,
            done: false,
        }
    }

    /// The response is ready: the record travels inside its body from now on.
    pub fn into_response(mut self, resp: http::Response<UpBody>) -> http::Response<UpBody> {
        self.status = Some(resp.status().as_u16());
        resp.map(|inner| {
            Logged {
                inner,
                record: self,
            }
            .boxed()
        })
    }

    /// Writes the access line and, for a job-token request, the auth-log line. Once.
    fn finish(&mut self, complete: bool) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let access = tracing::enabled!(target: "scopegate::access", tracing::Level::INFO);
        let auth = self.auth_log.is_some() && self.ctx.source.is_some();
        if !access && !auth {
            return;
        }
        let ctx = &self.ctx;
        let status = self.status.unwrap_or(CLIENT_CLOSED);
        let candidates: Vec<&Secret> = ctx.candidates.iter().collect();
        let path = logging::mask_target(&ctx.raw_target, &candidates);
        let target = ctx.target.as_deref().unwrap_or("-");
        if access {
            let source = ctx.source.as_ref().map(|j| &*j.project_path).unwrap_or("-");
            let job = ctx.source.as_ref().map(|j| j.job_id).unwrap_or(0);
            let duration_us = u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX);
            let bytes_received = self.request_bytes.load(Ordering::Relaxed);
            if self.json {
                tracing::info!(
                    target: "scopegate::access",
                    request_id = %ctx.request_id,
                    client = %ctx.peer,
                    method = %ctx.method,
                    path = %path,
                    class = ctx.class.as_str(),
                    source,
                    job,
                    target,
                    decision = ctx.decision,
                    reason = ctx.reason,
                    status,
                    bytes_received,
                    bytes_sent = self.response_bytes,
                    duration_ms = duration_us as f64 / 1000.0,
                    complete,
                    "request"
                );
            } else {
                // The same text the structured event above renders in the text format, written
                // in one pass: through the subscriber's per-field visitor it was a fifth of an
                // allowed request's instructions (bench/RESULTS.md).
                let line = TextLine {
                    ctx,
                    path: &path,
                    source,
                    job,
                    target,
                    status,
                    bytes_received,
                    bytes_sent: self.response_bytes,
                    duration_us,
                    complete,
                };
                if !logging::write_access_line(|out| line.render(out)) {
                    tracing::info!(target: "scopegate::access", "{line}");
                }
            }
        }
        if let (Some(log), Some(job)) = (&self.auth_log, &ctx.source) {
            log.write(&AuthLine {
                time: super::auth_log::rfc3339_millis(std::time::SystemTime::now()),
                request_id: ctx.request_id.to_string(),
                method: ctx.method.as_str(),
                path: &path,
                class: ctx.class.as_str(),
                source_project: &job.project_path,
                source_project_id: job.project_id,
                job_id: job.job_id,
                target_project: ctx.target.as_deref(),
                target_project_id: ctx.target_id,
                target_visibility: ctx.target_visibility.map(|v| v.as_str()),
                decision: ctx.decision,
                reason: ctx.reason,
                status,
                inbound_refused: ctx
                    .inbound_refused
                    .iter()
                    .map(|r| RefusedTarget {
                        path: &r.path,
                        id: r.id,
                        visibility: r.visibility.as_str(),
                    })
                    .collect(),
            });
        }
    }
}

/// The access line's fields as `tracing_subscriber`'s text format renders them (`%` fields
/// bare, strings quoted and escaped as `Debug` does, numbers bare), after the word `request`.
struct TextLine<'a> {
    ctx: &'a Ctx,
    path: &'a str,
    source: &'a str,
    job: u64,
    target: &'a str,
    status: u16,
    bytes_received: u64,
    bytes_sent: u64,
    duration_us: u64,
    complete: bool,
}

impl TextLine<'_> {
    /// Appends the line: `request request_id=… client=… … complete=…`, with the strings that
    /// come from outside (the forge's project paths) `Debug`-quoted so that no value can
    /// forge a field or a line. Written piece by piece rather than through `write!`: this runs
    /// for every request, and the formatting machinery was most of its cost.
    fn render(&self, out: &mut String) {
        let ctx = self.ctx;
        out.push_str("request request_id=");
        ctx.request_id.push_to(out);
        out.push_str(" client=");
        push_socket_addr(out, ctx.peer);
        out.push_str(" method=");
        out.push_str(ctx.method.as_str());
        out.push_str(" path=");
        out.push_str(self.path);
        out.push_str(" class=");
        logging::push_debug_str(out, ctx.class.as_str());
        out.push_str(" source=");
        logging::push_debug_str(out, self.source);
        out.push_str(" job=");
        logging::push_u64(out, self.job);
        out.push_str(" target=");
        logging::push_debug_str(out, self.target);
        out.push_str(" decision=");
        logging::push_debug_str(out, ctx.decision);
        out.push_str(" reason=");
        logging::push_debug_str(out, ctx.reason);
        out.push_str(" status=");
        logging::push_u64(out, u64::from(self.status));
        out.push_str(" bytes_received=");
        logging::push_u64(out, self.bytes_received);
        out.push_str(" bytes_sent=");
        logging::push_u64(out, self.bytes_sent);
        out.push_str(" duration_ms=");
        // Milliseconds with microsecond precision, always three decimals.
        logging::push_u64(out, self.duration_us / 1000);
        out.push('.');
        let frac = self.duration_us % 1000;
        if frac < 100 {
            out.push('0');
        }
        if frac < 10 {
            out.push('0');
        }
        logging::push_u64(out, frac);
        out.push_str(if self.complete {
            " complete=true"
        } else {
            " complete=false"
        });
    }
}

impl fmt::Display for TextLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut line = String::with_capacity(256);
        self.render(&mut line);
        f.write_str(&line)
    }
}

/// `ip:port` (`[ip]:port` for IPv6), as `SocketAddr`'s `Display` writes it; IPv4, the usual
/// peer, without the formatting machinery.
fn push_socket_addr(out: &mut String, addr: std::net::SocketAddr) {
    match addr {
        std::net::SocketAddr::V4(v4) => {
            logging::push_ip(out, std::net::IpAddr::V4(*v4.ip()));
            out.push(':');
            logging::push_u64(out, u64::from(v4.port()));
        }
        v6 => {
            use fmt::Write as _;
            let _ = write!(out, "{v6}");
        }
    }
}

impl Drop for Record {
    /// Reached with `done` unset only when the handler was cancelled before a response
    /// existed (the body wrapper finishes the record otherwise).
    fn drop(&mut self) {
        self.finish(false);
    }
}

/// The response body, counted; the record's lines are written when it ends or is dropped.
struct Logged {
    inner: UpBody,
    record: Record,
}

impl Body for Logged {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.record.response_bytes += data.len() as u64;
                }
                if this.inner.is_end_stream() {
                    this.record.finish(true);
                }
            }
            Poll::Ready(None) => this.record.finish(true),
            Poll::Ready(Some(Err(_))) => this.record.finish(false),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        // A body with nothing (left) to send — a HEAD answer, a 304, an empty refusal —
        // may be dropped without ever being polled: it is complete all the same.
        let complete = self.inner.is_end_stream();
        self.record.finish(complete);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_fixed_width_hex_and_distinct() {
        let a = RequestId::next();
        let b = RequestId::next();
        let (sa, sb) = (a.to_string(), b.to_string());
        assert_eq!(sa.len(), 24);
        assert!(sa.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(sa, sb);
        // One process, one prefix.
        assert_eq!(sa[..8], sb[..8]);
        assert_eq!(a.header_value().to_str().ok(), Some(sa.as_str()));
        for (prefix, seq) in [
            (0, 0),
            (u32::MAX, u64::MAX),
            (0xdead_beef, 0x0123_4567_89ab_cdef),
        ] {
            let id = RequestId { prefix, seq };
            assert_eq!(id.to_string(), format!("{prefix:08x}{seq:016x}"));
        }
    }

    #[test]
    fn peers_are_written_as_socket_addr_display_writes_them() {
        for addr in [
            "127.0.0.1:8080",
            "0.0.0.0:0",
            "255.255.255.255:65535",
            "10.1.22.203:443",
            "[::1]:9",
            "[fe80::1%7]:22",
            "[2001:db8::ff00:42:8329]:65535",
            "[::ffff:192.0.2.128]:80",
        ] {
            let parsed: std::net::SocketAddr = addr.parse().expect("address");
            let mut out = String::new();
            push_socket_addr(&mut out, parsed);
            assert_eq!(out, parsed.to_string());
        }
    }

    /// What the subscriber wrote, for comparing renderings.
    #[derive(Clone, Default)]
    struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if let Ok(mut v) = self.0.lock() {
                v.extend_from_slice(buf);
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The one-pass text line is, byte for byte, what the structured event renders as in the
    /// text format, including strings that need escaping.
    #[test]
    fn the_text_line_matches_the_structured_rendering() {
        let captured = Captured::default();
        let sink = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || sink.clone())
            .with_ansi(false)
            .without_time()
            .finish();
        let mut ctx = Ctx::for_request(
            RequestId::next(),
            "[::1]:5555".parse().expect("addr"),
            http::Method::PATCH,
            "/api/v4/projects/2?job_token=x".to_owned(),
        );
        ctx.class = crate::target::Class::Api;
        ctx.decision = "deny";
        ctx.reason = "not_in_inbound_allowlist";
        let (path, source, target) = (
            "/api/v4/projects/2?job_token=[MASKED]",
            "g/\u{fc}n\"quoted\"\\x\u{7}",
            "g/t\tab",
        );
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(
                target: "scopegate::access",
                request_id = %ctx.request_id,
                client = %ctx.peer,
                method = %ctx.method,
                path = %path,
                class = ctx.class.as_str(),
                source,
                job = 42u64,
                target,
                decision = ctx.decision,
                reason = ctx.reason,
                status = 404u16,
                bytes_received = 7u64,
                bytes_sent = 31u64,
                duration_ms = 1.025f64,
                complete = true,
                "request"
            );
            tracing::info!(
                target: "scopegate::access",
                "{}",
                TextLine {
                    ctx: &ctx,
                    path,
                    source,
                    job: 42,
                    target,
                    status: 404,
                    bytes_received: 7,
                    bytes_sent: 31,
                    duration_us: 1025,
                    complete: true,
                }
            );
        });
        let text = String::from_utf8(captured.0.lock().map(|v| v.clone()).unwrap_or_default())
            .expect("utf8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0], lines[1]);
        // Escaped as Debug escapes: the forge controls project paths.
        assert!(
            lines[0].contains(r#"source="g/ün\"quoted\"\\x\u{7}" job=42 target="g/t\tab""#),
            "{}",
            lines[0]
        );
    }
}
