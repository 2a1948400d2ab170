//! Where allowed requests are forwarded: [`Upstream`]. For an `http://` forge (the sidecar
//! deployment) that is a lean HTTP/1.1 connection pool of scopegate's own; for an `https://`
//! forge, the shared legacy client of [`super`] as before.
//!
//! Why a pool of our own (issue 6): hyper-util's legacy client spends about 15% of a
//! forwarded request's instructions on generality this deployment does not need — a URI
//! rewrite, a checkout future racing a lazy connect, a `HashMap` keyed by scheme and authority,
//! and a task spawned per request to hand the connection back once it is ready again. Here a
//! connection goes back to the idle list from its response body, the moment that body ends
//! cleanly; a body dropped early or ending in error takes its connection with it.

use super::{BodyError, HttpClient, UpBody};
use crate::config::Config;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Idle connections kept at most (the legacy client's `pool_max_idle_per_host`).
pub const MAX_IDLE: usize = 64;

/// An idle connection older than this is closed rather than reused (the legacy client's
/// `pool_idle_timeout`); checked whenever a connection is taken or given back.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// The forge, as the forwarder reaches it.
#[derive(Clone)]
pub enum Upstream {
    /// `http://` forge: scopegate's own HTTP/1.1 pool.
    Pool(Arc<Pool>),
    /// `https://` forge: the shared legacy client (TLS, ALPN, HTTP/2). Boxed: it is large,
    /// and the pool is the common case.
    Client(Box<HttpClient>),
}

/// Why a forwarded request got no response head.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("cannot connect to the forge: {0}")]
    Connect(std::io::Error),
    #[error("no TCP handshake with the forge within the connect timeout")]
    ConnectTimeout,
    #[error("forge connection failed: {0}")]
    Http(#[from] hyper::Error),
    #[error("forge request failed: {0}")]
    Client(#[from] hyper_util::client::legacy::Error),
}

impl ForwardError {
    /// True when no connection to the forge could be made at all.
    pub fn is_connect(&self) -> bool {
        match self {
            ForwardError::Connect(_) | ForwardError::ConnectTimeout => true,
            ForwardError::Http(_) => false,
            ForwardError::Client(e) => e.is_connect(),
        }
    }
}

impl Upstream {
    /// The pool for an `http://` forge, else `client`.
    pub fn new(config: &Config, client: HttpClient) -> Upstream {
        match Pool::for_forge(&config.upstream.url, config.limits.upstream_connect_timeout) {
            Some(pool) => Upstream::Pool(Arc::new(pool)),
            None => Upstream::Client(Box::new(client)),
        }
    }

    /// The request URI for `path_and_query` (which already carries any relative URL root):
    /// origin-form (`/path?query`, as it goes on the request line) for the pool, absolute for
    /// the legacy client, which picks its connection by the URI's scheme and authority. `None`
    /// when it is no valid request target.
    pub fn uri(&self, config: &Config, path_and_query: String) -> Option<Uri> {
        match self {
            // Anything not starting with `/` would be sent as authority- or absolute-form.
            // The `String` becomes the URI's buffer: no copy.
            Upstream::Pool(_) if path_and_query.starts_with('/') => {
                http::uri::PathAndQuery::try_from(path_and_query)
                    .ok()
                    .map(Uri::from)
            }
            Upstream::Pool(_) => None,
            Upstream::Client(_) => super::upstream_uri(config, &path_and_query).ok(),
        }
    }

    /// Sends `req` (its URI from [`Upstream::uri`]) and returns the forge's response head,
    /// with a body that streams the rest.
    pub async fn send(&self, req: Request<UpBody>) -> Result<Response<UpBody>, ForwardError> {
        match self {
            // Boxed, as the legacy client's response future is: the pool's future is large,
            // and inline it would be copied with every future that holds it.
            Upstream::Pool(pool) => Box::pin(pool.send(req)).await,
            Upstream::Client(client) => {
                let resp = client.request(req).await?;
                Ok(resp.map(|b| b.map_err(|e| -> BodyError { Box::new(e) }).boxed()))
            }
        }
    }
}

/// Where the pool connects: an address literal once parsed, or a name resolved per connect
/// (so a DNS change reaches new connections).
enum Address {
    Socket(SocketAddr),
    Name(String, u16),
}

/// HTTP/1.1 connections to one `http://` forge: an idle list, and nothing running per
/// request. Each connection is driven by one task, spawned when it is made.
pub struct Pool {
    address: Address,
    /// `Host` for a request that has none (the legacy client set it from the URI).
    host: HeaderValue,
    connect_timeout: Duration,
    idle: Mutex<IdleList<SendRequest<UpBody>>>,
}

impl Pool {
    /// A pool for `url` when it is an `http://` URL with a host; `None` otherwise.
    pub fn for_forge(url: &Uri, connect_timeout: Duration) -> Option<Pool> {
        if url.scheme() != Some(&http::uri::Scheme::HTTP) {
            return None;
        }
        let authority = url.authority()?;
        let port = authority.port_u16().unwrap_or(80);
        // An IPv6 literal is bracketed in the authority, not in an address.
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let address = match host.parse::<IpAddr>() {
            Ok(ip) => Address::Socket(SocketAddr::new(ip, port)),
            Err(_) => Address::Name(host.to_owned(), port),
        };
        Some(Pool {
            address,
            host: HeaderValue::from_str(authority.as_str()).ok()?,
            connect_timeout,
            idle: Mutex::new(IdleList::new(MAX_IDLE, IDLE_TIMEOUT)),
        })
    }

    /// Idle connections held now (for tests and diagnostics).
    pub fn idle_count(&self) -> usize {
        self.lock().len()
    }

    async fn send(
        self: &Arc<Self>,
        mut req: Request<UpBody>,
    ) -> Result<Response<UpBody>, ForwardError> {
        if !req.headers().contains_key(header::HOST) {
            req.headers_mut().insert(header::HOST, self.host.clone());
        }
        let taken = self.lock().take(Instant::now());
        let sender = match taken {
            Some(sender) => sender,
            None => self.connect().await?,
        };
        self.send_on(sender, req).await
    }

    /// Sends `req` on `sender`. When that connection turns out to be closed before the request
    /// was written (the forge ended an idle keep-alive connection as it was taken), hyper hands
    /// the request back untouched, and it goes out once more on a new connection: nothing of
    /// it reached the forge, so this is safe for any method, as with the legacy client.
    async fn send_on(
        self: &Arc<Self>,
        mut sender: SendRequest<UpBody>,
        req: Request<UpBody>,
    ) -> Result<Response<UpBody>, ForwardError> {
        // CONNECT turns the connection into a tunnel, like an upgrade.
        let tunnel = req.method() == http::Method::CONNECT;
        let resp = match sender.try_send_request(req).await {
            Ok(resp) => resp,
            Err(mut e) => match e.take_message() {
                Some(req) => {
                    tracing::debug!(error = %e.error(), "idle forge connection closed: sending on a new one");
                    // Boxed: the rare path should not enlarge every request's future.
                    let (fresh, resp) = Box::pin(self.resend(req)).await?;
                    sender = fresh;
                    resp
                }
                None => return Err(e.into_error().into()),
            },
        };
        // An upgraded connection belongs to the upgrade from now on.
        let back = if tunnel || resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            None
        } else {
            Some(CheckIn {
                pool: self.clone(),
                sender,
            })
        };
        Ok(resp.map(|body| PooledBody::new(body, back).boxed()))
    }

    /// `req` on a new connection, which is returned with the response.
    async fn resend(
        &self,
        req: Request<UpBody>,
    ) -> Result<(SendRequest<UpBody>, Response<Incoming>), ForwardError> {
        let mut sender = self.connect().await?;
        let resp = sender.send_request(req).await?;
        Ok((sender, resp))
    }

    async fn connect(&self) -> Result<SendRequest<UpBody>, ForwardError> {
        let connecting = async {
            match &self.address {
                Address::Socket(addr) => TcpStream::connect(addr).await,
                Address::Name(host, port) => TcpStream::connect((host.as_str(), *port)).await,
            }
        };
        let stream = match tokio::time::timeout(self.connect_timeout, connecting).await {
            Err(_) => return Err(ForwardError::ConnectTimeout),
            Ok(Err(e)) => return Err(ForwardError::Connect(e)),
            Ok(Ok(stream)) => stream,
        };
        // Small requests and heads go out at once rather than waiting on Nagle's algorithm.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY on a forge connection");
        }
        let (sender, conn) = hyper::client::conn::http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await?;
        tokio::spawn(async move {
            // `with_upgrades`: a 101 hands the connection to the WebSocket splice in forward.
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "forge connection ended");
            }
        });
        Ok(sender)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, IdleList<SendRequest<UpBody>>> {
        // Nothing panics while the list is held; a poisoned lock still guards a sound list.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn put(&self, sender: SendRequest<UpBody>) {
        if sender.is_closed() {
            return;
        }
        let now = Instant::now();
        self.lock().put(sender, now);
    }
}

/// A connection's way back to its pool, carried by its response body.
struct CheckIn {
    pool: Arc<Pool>,
    sender: SendRequest<UpBody>,
}

/// A response body from a pooled connection: it gives the connection back to the pool when
/// it ends cleanly. Dropped before its end, or ending in an error, it drops the connection
/// (whose task then closes it): a half-read response must never be followed by another
/// request on the same connection.
struct PooledBody {
    inner: Incoming,
    back: Option<CheckIn>,
}

impl PooledBody {
    fn new(inner: Incoming, back: Option<CheckIn>) -> PooledBody {
        let mut body = PooledBody { inner, back };
        // No body at all (HEAD, 204, 304, `Content-Length: 0`): the server writing our
        // response may never poll it, so the connection goes back now.
        if body.inner.is_end_stream() {
            body.check_in();
        }
        body
    }

    fn check_in(&mut self) {
        if let Some(CheckIn { pool, sender }) = self.back.take() {
            pool.put(sender);
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                this.check_in();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(frame))) => {
                // A body of known length is over with its last byte; whoever reads it may
                // not poll again.
                if this.inner.is_end_stream() {
                    this.check_in();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.back = None;
                Poll::Ready(Some(Err(Box::new(e))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What the idle list needs to know of a connection.
trait Reusable {
    /// Ready for a request now (its previous exchange is fully over).
    fn is_ready(&self) -> bool;
    /// Closed for good: drop it.
    fn is_closed(&self) -> bool;
}

impl<B> Reusable for SendRequest<B> {
    fn is_ready(&self) -> bool {
        SendRequest::is_ready(self)
    }

    fn is_closed(&self) -> bool {
        SendRequest::is_closed(self)
    }
}

/// Idle connections, oldest first, each with the time it was given back. Taken newest first:
/// the most recently used connection is the likeliest to be open still, and the oldest ones
/// reach the idle timeout and go.
struct IdleList<C> {
    entries: VecDeque<(C, Instant)>,
    max: usize,
    timeout: Duration,
}

impl<C: Reusable> IdleList<C> {
    fn new(max: usize, timeout: Duration) -> Self {
        IdleList {
            entries: VecDeque::new(),
            max,
            timeout,
        }
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    /// A connection ready for a request, if one is idle. Closed ones met on the way are
    /// dropped; one not ready yet (its task still finishing the previous exchange) stays.
    fn take(&mut self, now: Instant) -> Option<C> {
        self.expire(now);
        let mut i = self.entries.len();
        while i > 0 {
            i -= 1;
            let conn = &self.entries[i].0;
            if conn.is_ready() {
                return self.entries.remove(i).map(|(conn, _)| conn);
            }
            if conn.is_closed() {
                self.entries.remove(i);
            }
        }
        None
    }

    /// Keeps `conn` for reuse; beyond `max`, the oldest idle connection is closed.
    fn put(&mut self, conn: C, now: Instant) {
        self.expire(now);
        if self.entries.len() >= self.max {
            self.entries.pop_front();
        }
        self.entries.push_back((conn, now));
    }

    /// Drops the connections idle for `timeout` or longer (a prefix: given back in order).
    fn expire(&mut self, now: Instant) {
        while let Some((_, since)) = self.entries.front() {
            if now.saturating_duration_since(*since) < self.timeout {
                break;
            }
            self.entries.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    /// A connection whose state the test sets.
    struct Fake {
        id: u32,
        ready: Rc<Cell<bool>>,
        closed: Rc<Cell<bool>>,
    }

    impl Reusable for Fake {
        fn is_ready(&self) -> bool {
            self.ready.get()
        }
        fn is_closed(&self) -> bool {
            self.closed.get()
        }
    }

    fn fake(id: u32) -> (Fake, Rc<Cell<bool>>, Rc<Cell<bool>>) {
        let ready = Rc::new(Cell::new(true));
        let closed = Rc::new(Cell::new(false));
        let conn = Fake {
            id,
            ready: ready.clone(),
            closed: closed.clone(),
        };
        (conn, ready, closed)
    }

    fn ids(list: &IdleList<Fake>) -> Vec<u32> {
        list.entries.iter().map(|(c, _)| c.id).collect()
    }

    #[test]
    fn the_newest_ready_connection_is_taken_first() {
        let t0 = Instant::now();
        let mut list = IdleList::new(MAX_IDLE, IDLE_TIMEOUT);
        list.put(fake(1).0, t0);
        list.put(fake(2).0, t0);
        assert_eq!(list.take(t0).map(|c| c.id), Some(2));
        assert_eq!(list.take(t0).map(|c| c.id), Some(1));
        assert!(list.take(t0).is_none());
    }

    #[test]
    fn a_connection_not_ready_yet_stays_and_a_closed_one_goes() {
        let t0 = Instant::now();
        let mut list = IdleList::new(MAX_IDLE, IDLE_TIMEOUT);
        let (one, _, _) = fake(1);
        let (two, two_ready, _) = fake(2);
        let (three, _, three_closed) = fake(3);
        list.put(one, t0);
        list.put(two, t0);
        list.put(three, t0);
        two_ready.set(false);
        three_closed.set(true);
        // A closed connection reports itself not ready too.
        list.entries[2].0.ready.set(false);
        assert_eq!(list.take(t0).map(|c| c.id), Some(1));
        assert_eq!(ids(&list), vec![2], "3 dropped, 2 kept for later");
        assert!(list.take(t0).is_none());
        two_ready.set(true);
        assert_eq!(list.take(t0).map(|c| c.id), Some(2));
    }

    #[test]
    fn idle_connections_expire_after_the_idle_timeout() {
        let t0 = Instant::now();
        let mut list = IdleList::new(MAX_IDLE, IDLE_TIMEOUT);
        list.put(fake(1).0, t0);
        list.put(fake(2).0, t0 + Duration::from_secs(30));
        let just_before = t0 + IDLE_TIMEOUT - Duration::from_millis(1);
        list.expire(just_before);
        assert_eq!(ids(&list), vec![1, 2]);
        // Checked on checkout: 1 has been idle 90 s, 2 only 60 s.
        let later = t0 + IDLE_TIMEOUT;
        assert_eq!(list.take(later).map(|c| c.id), Some(2));
        list.put(fake(3).0, later);
        // And on return: 3 given back at 90 s is still fresh; nothing older is left.
        list.put(fake(4).0, later + IDLE_TIMEOUT - Duration::from_secs(1));
        assert_eq!(ids(&list), vec![3, 4]);
        list.put(fake(5).0, later + IDLE_TIMEOUT);
        assert_eq!(ids(&list), vec![4, 5]);
    }

    #[test]
    fn at_most_max_idle_connections_are_kept_the_oldest_go() {
        let t0 = Instant::now();
        let mut list = IdleList::new(MAX_IDLE, IDLE_TIMEOUT);
        for id in 0..MAX_IDLE as u32 + 3 {
            list.put(fake(id).0, t0);
        }
        assert_eq!(list.len(), MAX_IDLE);
        assert_eq!(list.entries.front().map(|(c, _)| c.id), Some(3));
        assert_eq!(
            list.entries.back().map(|(c, _)| c.id),
            Some(MAX_IDLE as u32 + 2)
        );
    }

    #[test]
    fn only_http_forges_get_the_pool() {
        let t = Duration::from_secs(5);
        let pool = |url: &str| Pool::for_forge(&url.parse().expect("uri"), t);
        let p = pool("http://[::1]:3000").expect("http");
        assert!(
            matches!(p.address, Address::Socket(a) if a == "[::1]:3000".parse().expect("addr"))
        );
        assert_eq!(p.host, "[::1]:3000");
        let p = pool("http://forge.internal").expect("http");
        assert!(matches!(&p.address, Address::Name(h, 80) if h == "forge.internal"));
        assert!(pool("https://forge.internal").is_none());
    }

    /// An upstream counting its connections and answering every request with its body.
    async fn echo_upstream() -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                        let body = req.into_body().collect().await?.to_bytes();
                        Ok::<_, hyper::Error>(Response::new(http_body_util::Full::new(body)))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (addr, accepted)
    }

    /// The stale-connection retry, made deterministic: a request queued on a connection the
    /// forge has already closed (its end reads EOF before anything is written) comes back
    /// from hyper unsent and goes out, whole, on a new connection.
    #[tokio::test]
    async fn a_request_given_back_unsent_goes_out_on_a_new_connection() {
        use std::sync::atomic::Ordering;
        let (addr, accepted) = echo_upstream().await;
        let pool = Arc::new(
            Pool::for_forge(
                &format!("http://{addr}").parse().expect("uri"),
                Duration::from_secs(5),
            )
            .expect("pool"),
        );
        let (ours, theirs) = tokio::io::duplex(4096);
        drop(theirs);
        let (stale, conn) = hyper::client::conn::http1::handshake(TokioIo::new(ours))
            .await
            .expect("handshake");
        tokio::spawn(conn);

        let req = Request::post("/api/v4/x")
            .header(header::HOST, "gitlab.example")
            .body(super::super::full(Bytes::from_static(b"a POST body")))
            .expect("request");
        let resp = pool.send_on(stale, req).await.expect("resent");
        assert_eq!(resp.status(), StatusCode::OK);
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(body, "a POST body");
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        // And the new connection is now the pool's.
        assert_eq!(pool.idle_count(), 1);
    }
}
