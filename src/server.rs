//! Listeners, TLS, HTTP/1.1 and HTTP/2, connection limits, graceful shutdown, reloads.
//!
//! `start` binds the proxy (and admin) listeners and returns a [`Running`] handle; the binary,
//! the demo, the tests and the benches all start scopegate through it.
//!
//! Reload ([`Running::reload`]) swaps the whole [`Gate`] through an `ArcSwap`: each request
//! loads the current generation once, with no lock, and finishes on it. The TLS listener
//! serves the certificate a [`CertStore`] holds; a reload re-reads the files and swaps it, so
//! new handshakes present the new certificate and established connections keep theirs.
//!
//! Readiness: a background probe opens a TCP connection to the forge (`upstream.url`'s host
//! and port, bounded by `upstream_connect_timeout`) every [`PROBE_INTERVAL`], after each
//! reload and as soon as a look-up finds the forge unreachable; `/readyz` reads its last
//! verdict and never waits on the forge itself. A TCP probe sends the forge nothing it would
//! log or rate-limit. The forge is taken as reachable until a probe or a look-up says
//! otherwise: the first probe runs one period after start, not before the listeners open,
//! so a start never waits on a slow forge.
//!
//! Limits owned here (SPEC §5 `limits`): the request head (hyper's read buffer for HTTP/1.1,
//! `SETTINGS_MAX_HEADER_LIST_SIZE` for HTTP/2, and [`head_limits`] for what those cannot tell
//! apart: 414 for a long URL, 431 otherwise), the header read timeout (slowloris), and
//! `max_connections` (past it, new connections wait in the kernel's backlog). The plaintext
//! listener speaks HTTP/1.1 only: h2c, by `Upgrade` or by prior knowledge, is refused (SPEC
//! §7); HTTP/2 is offered over TLS through ALPN.
//!
//! Shutdown ([`Running::terminate`], on SIGTERM): readiness turns 503 at once, the listener
//! keeps accepting for `shutdown.drain_delay`, then stops; in-flight requests get
//! `shutdown.grace_period`, after which the connections still open are closed.

use crate::admin::{self, Metrics};
use crate::config::Config;
use crate::error::Refusal;
use crate::forge;
use crate::forge::UpBody;
use crate::gate::Gate;
use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls::sign::CertifiedKey;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

/// `max_connections` is held to this so every permit can be taken back at once when the
/// drain waits for the last connection ([`Semaphore::acquire_many`] counts in `u32`).
const MAX_CONNECTIONS_CAP: usize = u32::MAX as usize;

/// How often the readiness probe checks that the forge accepts connections.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot read TLS {what} {path}: {source}")]
    TlsFile {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("TLS {0}")]
    Tls(String),
    #[error("`tls` cannot be added or removed by a reload; restart scopegate")]
    TlsToggled,
    #[error(transparent)]
    Client(#[from] forge::ClientError),
    #[error("cannot open auth log: {0}")]
    AuthLog(std::io::Error),
}

/// One client connection's hold on `max_connections` and `scopegate_open_connections`, and
/// its view of the shutdown cut. The connection's task holds it, and every request carries a
/// clone in its extensions: a WebSocket spliced after an upgrade outlives the HTTP
/// connection's task, and must go on counting (a Kubernetes agent holds tunnels for hours)
/// and be closed with the rest when the grace period ends.
#[derive(Clone)]
pub struct ConnectionLease(Arc<Lease>);

struct Lease {
    _permit: OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
    cut: watch::Receiver<bool>,
    cut_count: Arc<AtomicUsize>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.metrics
            .open_connections
            .fetch_sub(1, Ordering::Relaxed);
    }
}

impl ConnectionLease {
    fn new(
        permit: OwnedSemaphorePermit,
        metrics: Arc<Metrics>,
        cut: watch::Receiver<bool>,
        cut_count: Arc<AtomicUsize>,
    ) -> ConnectionLease {
        metrics.open_connections.fetch_add(1, Ordering::Relaxed);
        ConnectionLease(Arc::new(Lease {
            _permit: permit,
            metrics,
            cut,
            cut_count,
        }))
    }

    /// Resolves when the grace period is over and this connection must close (counted as
    /// cut for the shutdown's log line).
    pub async fn cut(&self) {
        let mut cut = self.0.cut.clone();
        // An error means the listener's task is gone: nothing is left to wait for either.
        let _ = cut.wait_for(|cut| *cut).await;
        self.0.cut_count.fetch_add(1, Ordering::Relaxed);
    }
}

/// The live configuration generation; swapped whole on reload, loaded once per request.
/// `ArcSwap` rather than a lock: the per-request load is a few atomic operations and never
/// waits for (or blocks) a reload.
pub type SharedGate = Arc<ArcSwap<Gate>>;

/// The TLS listener's certificate and key, swapped whole on reload; every handshake takes
/// the one in force when it starts.
#[derive(Debug)]
pub struct CertStore {
    current: ArcSwap<CertifiedKey>,
}

impl rustls::server::ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// A started gateway.
pub struct Running {
    pub addr: SocketAddr,
    pub admin_addr: Option<SocketAddr>,
    pub metrics: Arc<Metrics>,
    gate: SharedGate,
    /// Present when the proxy listener terminates TLS.
    certs: Option<Arc<CertStore>>,
    /// `None` while serving; `Some(grace)`: stop accepting, and give the requests in flight
    /// `grace` before their connections are closed.
    stop: watch::Sender<Option<Duration>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// The SIGTERM sequence (SPEC §6), timed by the configuration's `shutdown` keys:
    /// readiness → 503 at once; the listener keeps accepting for `drain_delay` (a load
    /// balancer that has not yet seen the 503 must not meet refused connections); then it
    /// stops accepting, in-flight requests get `grace_period`, and whatever is still open
    /// after that is closed. Returns once every connection is closed.
    pub async fn terminate(self) {
        let shutdown = self.config().shutdown.clone();
        self.metrics.ready.store(false, Ordering::SeqCst);
        tracing::info!(
            drain_delay = ?shutdown.drain_delay,
            grace_period = ?shutdown.grace_period,
            "readiness off; the listener closes when the drain delay is over"
        );
        tokio::time::sleep(shutdown.drain_delay).await;
        self.stop(shutdown.grace_period).await;
    }

    /// [`terminate`](Self::terminate) without the drain delay, for an embedding that has no
    /// load balancer to warn (the tests, the demo, the benches): readiness → 503, stop
    /// accepting, in-flight requests get `shutdown.grace_period`, return.
    pub async fn shutdown(self) {
        let grace = self.config().shutdown.grace_period;
        self.metrics.ready.store(false, Ordering::SeqCst);
        self.stop(grace).await;
    }

    async fn stop(self, grace: Duration) {
        let _ = self.stop.send(Some(grace));
        for t in self.tasks {
            let _ = t.await;
        }
    }

    /// Installs a new configuration for every request that starts from now on; requests in
    /// flight finish on the generation they started with. With TLS, the certificate and key
    /// files the new configuration names are read again and new handshakes present them.
    /// All or nothing: a failure (a CA or certificate file that cannot be read, a key that
    /// does not match its certificate) changes nothing and is counted in
    /// `scopegate_reload_failures_total`. The listeners stay as they are (changing `listen`
    /// or `admin` needs a restart; adding or removing `tls` is refused).
    pub fn reload(&self, config: Config) -> Result<(), ServeError> {
        let result = self.try_reload(config);
        if result.is_err() {
            self.metrics.reload_failures.fetch_add(1, Ordering::SeqCst);
        }
        result
    }

    fn try_reload(&self, config: Config) -> Result<(), ServeError> {
        let key = match (&self.certs, &config.tls) {
            (Some(_), Some(tls)) => Some(load_certified_key(&tls.cert, &tls.key)?),
            (None, None) => None,
            _ => return Err(ServeError::TlsToggled),
        };
        let previous = current(&self.gate);
        let gate = build_gate(Arc::new(config), self.metrics.clone(), Some(&previous))?;
        self.gate.store(Arc::new(gate));
        if let (Some(certs), Some(key)) = (&self.certs, key) {
            certs.current.store(key);
        }
        self.metrics
            .config_generation
            .fetch_add(1, Ordering::SeqCst);
        // `upstream.url` may have changed: readiness should say so now, not in 5 s.
        self.metrics.probe_now.notify_one();
        Ok(())
    }

    pub fn config(&self) -> Arc<Config> {
        current(&self.gate).config.clone()
    }
}

fn build_gate(
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    previous: Option<&Gate>,
) -> Result<Gate, ServeError> {
    let client = forge::build_client(&config)?;
    Gate::new(config, client, metrics, previous).map_err(ServeError::AuthLog)
}

fn current(gate: &SharedGate) -> Arc<Gate> {
    gate.load_full()
}

/// Binds the listeners and starts serving.
pub async fn start(config: Config) -> Result<Running, ServeError> {
    let config = Arc::new(config);
    let metrics = Arc::new(Metrics::new());
    let gate: SharedGate = Arc::new(ArcSwap::from_pointee(build_gate(
        config.clone(),
        metrics.clone(),
        None,
    )?));
    metrics.config_generation.store(1, Ordering::SeqCst);
    let certs = match &config.tls {
        Some(t) => Some(Arc::new(CertStore {
            current: ArcSwap::new(load_certified_key(&t.cert, &t.key)?),
        })),
        None => None,
    };
    let tls = match &certs {
        Some(store) => Some(tls_acceptor(store.clone())?),
        None => None,
    };
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: config.listen,
        source,
    })?;
    let (stop, stop_rx) = watch::channel(None);
    // The admin listener outlives the proxy's drain, so a load balancer asking /readyz hears
    // 503 (not a refused connection) while in-flight requests finish: it stops once this
    // sender, held by the proxy task, is dropped.
    let (proxy_done, proxy_done_rx) = watch::channel(false);
    let mut tasks = Vec::new();

    let mut admin_addr = None;
    if let Some(admin) = &config.admin {
        let admin_listener =
            TcpListener::bind(admin.listen)
                .await
                .map_err(|source| ServeError::Bind {
                    addr: admin.listen,
                    source,
                })?;
        admin_addr = admin_listener.local_addr().ok();
        tasks.push(tokio::spawn(serve_admin(
            admin_listener,
            metrics.clone(),
            proxy_done_rx,
        )));
    }

    let proxy = serve_proxy(
        listener,
        gate.clone(),
        config.clone(),
        tls,
        metrics.clone(),
        stop_rx.clone(),
    );
    tasks.push(tokio::spawn(async move {
        proxy.await;
        drop(proxy_done);
    }));

    // Expired cache entries are dropped in the background so one-off junk tokens cannot
    // grow the caches without bound.
    let purge_gate = gate.clone();
    let stop_rx_probe = stop_rx.clone();
    let mut purge_rx = stop_rx;
    tasks.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        loop {
            tokio::select! {
                _ = tick.tick() => current(&purge_gate).purge_caches(),
                _ = purge_rx.changed() => return,
            }
        }
    }));
    tasks.push(tokio::spawn(probe_forge(
        gate.clone(),
        metrics.clone(),
        stop_rx_probe,
    )));
    // The bound addresses (not the configured ones: port 0 picks one) so an orchestrator or a
    // test can find both listeners from the log.
    let admin = admin_addr.map_or_else(|| "off".to_string(), |a| a.to_string());
    tracing::info!(%addr, %admin, upstream = %config.upstream.url, mode = ?config.mode, "scopegate listening");
    Ok(Running {
        addr,
        admin_addr,
        metrics,
        gate,
        certs,
        stop,
        tasks,
    })
}

/// Keeps `metrics.forge_reachable` current: every [`PROBE_INTERVAL`], and at once when asked
/// through `metrics.probe_now`. Probes the forge of the configuration in force.
async fn probe_forge(
    gate: SharedGate,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<Option<Duration>>,
) {
    let mut tick =
        tokio::time::interval_at(tokio::time::Instant::now() + PROBE_INTERVAL, PROBE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = metrics.probe_now.notified() => {}
            _ = shutdown.changed() => return,
        }
        let config = current(&gate).config.clone();
        // A probe can take `upstream_connect_timeout`; shutdown does not wait for it.
        tokio::select! {
            _ = probe(&config, &metrics) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// One probe: can a TCP connection to the forge be opened within `upstream_connect_timeout`?
/// Logs when the answer changes.
async fn probe(config: &Config, metrics: &Metrics) {
    let url = &config.upstream.url;
    let host = url.host().unwrap_or_default().trim_matches(['[', ']']);
    let https = url.scheme() == Some(&http::uri::Scheme::HTTPS);
    let port = url.port_u16().unwrap_or(if https { 443 } else { 80 });
    let connect = tokio::net::TcpStream::connect((host, port));
    let reachable =
        match tokio::time::timeout(config.limits.upstream_connect_timeout, connect).await {
            Ok(Ok(_)) => true,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "readiness probe: cannot connect to the forge");
                false
            }
            Err(_) => false,
        };
    let was = metrics.forge_reachable.swap(reachable, Ordering::SeqCst);
    if was != reachable {
        if reachable {
            tracing::info!(upstream = %url, "the forge is reachable again: ready");
        } else {
            tracing::warn!(upstream = %url, "the forge is unreachable: /readyz answers 503");
        }
    }
}

/// Reads and checks a certificate chain and its key: both files parse, the chain is not
/// empty, the key is one rustls can sign with and matches the leaf certificate.
pub fn load_certified_key(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<Arc<CertifiedKey>, ServeError> {
    let read = |what: &'static str, path: &std::path::Path| {
        std::fs::read(path).map_err(|source| ServeError::TlsFile {
            what,
            path: path.display().to_string(),
            source,
        })
    };
    let cert_pem = read("certificate", cert)?;
    let key_pem = read("key", key)?;
    let certs = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ServeError::Tls(format!("certificate {}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(ServeError::Tls(format!(
            "certificate {}: no certificate found",
            cert.display()
        )));
    }
    let private = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| ServeError::Tls(format!("key {}: {e}", key.display())))?
        .ok_or_else(|| ServeError::Tls(format!("key {}: no private key found", key.display())))?;
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(certs, private, &provider)
        .map(Arc::new)
        .map_err(|e| {
            ServeError::Tls(format!(
                "certificate {} with key {}: {e}",
                cert.display(),
                key.display()
            ))
        })
}

/// The acceptor for the proxy listener: ALPN `h2` then `http/1.1`, the certificate from
/// `certs` at each handshake.
fn tls_acceptor(certs: Arc<CertStore>) -> Result<tokio_rustls::TlsAcceptor, ServeError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ServeError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(server)))
}

/// The TLS listener's builder: HTTP/1.1 or HTTP/2, as the client's preface says (ALPN offers
/// both).
fn connection_builder(config: &Config) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    http1_limits(&mut builder, config);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(config.limits.max_request_head).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(config.limits.idle_timeout))
        .keep_alive_timeout(config.limits.idle_timeout);
    builder
}

/// The plaintext listener's builder: HTTP/1.1 only. The auto builder would answer an HTTP/2
/// preface (`PRI * HTTP/2.0`) with HTTP/2 — h2c by prior knowledge, which SPEC §7 refuses —
/// and its `http1_only` does not apply to connections served with upgrades (which WebSocket
/// needs). hyper's HTTP/1 parser closes such a connection without answering.
fn plain_builder(config: &Config) -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // hyper times the wait for a head from its start, idle keep-alive time included:
        // this is also how long an idle HTTP/1.1 connection is kept.
        .header_read_timeout(config.limits.header_read_timeout)
        // hyper refuses a buffer under 8 KiB; [`head_limits`] enforces a smaller configured
        // head exactly.
        .max_buf_size(config.limits.max_request_head.max(8192))
        .keep_alive(true);
    builder
}

/// [`plain_builder`]'s HTTP/1.1 settings, on the TLS listener's auto builder (a different
/// type with the same methods).
fn http1_limits(builder: &mut auto::Builder<TokioExecutor>, config: &Config) {
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.limits.header_read_timeout)
        .max_buf_size(config.limits.max_request_head.max(8192))
        .keep_alive(true);
}

/// Drives a connection to its end; once shutdown begins, asks it to finish what is in flight
/// and close (HTTP/1.1: no more keep-alive; HTTP/2: GOAWAY). Works on hyper's and
/// hyper-util's upgradeable connections alike, which share no trait for this.
macro_rules! serve_until_drained {
    ($conn:expr, $stop:expr) => {{
        let conn = $conn;
        let mut conn = std::pin::pin!(conn);
        tokio::select! {
            result = conn.as_mut() => result.map_err(|e| e.to_string()),
            _ = stop_requested(&mut $stop) => {
                conn.as_mut().graceful_shutdown();
                conn.await.map_err(|e| e.to_string())
            }
        }
    }};
}

/// The request head's bounds, on what hyper parsed: 414 when the request-target is over
/// `max_url`, else 431 when the head is over `max_request_head`. hyper (HTTP/1.1) and h2
/// (HTTP/2) refuse a head that does not fit their buffers with 431 before this runs, not
/// knowing which part outgrew them; `max_url` is at most `max_request_head`, so every URL
/// over `max_url` whose head fits is answered 414 here.
fn head_limits<B>(req: &http::Request<B>, limits: &crate::config::Limits) -> Option<Refusal> {
    let url = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if url > limits.max_url {
        return Some(Refusal::UriTooLong);
    }
    // The head as HTTP/1.1 puts it on the wire: request line, `name: value` lines, blank line.
    let line = req.method().as_str().len() + 1 + url + " HTTP/1.1\r\n".len();
    let fields: usize = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + 2 + value.len() + 2)
        .sum();
    (line + fields + 2 > limits.max_request_head).then_some(Refusal::HeadTooLarge)
}

/// The head check, then the gate, on the configuration generation current for this request.
async fn serve_request(
    gate: Arc<Gate>,
    req: http::Request<hyper::body::Incoming>,
    peer: SocketAddr,
    tls: bool,
) -> http::Response<UpBody> {
    if let Some(refusal) = head_limits(&req, &gate.config.limits) {
        // Like every answer scopegate gives itself, it carries a request id its log line
        // names. Nothing of the request is logged: an over-long URL may well carry a token.
        let id = crate::gate::access::RequestId::next();
        tracing::info!(
            request_id = %id,
            %peer,
            status = refusal.status().as_u16(),
            "request head over the limits"
        );
        let mut resp = refusal.into_response();
        resp.headers_mut().insert(
            http::header::HeaderName::from_static(crate::gate::access::REQUEST_ID_HEADER),
            id.header_value(),
        );
        return resp;
    }
    gate.handle(req, peer, tls).await
}

/// Resolves with the grace period once [`Running`] asks the listener to stop (at once, with
/// no grace, if the handle is dropped).
async fn stop_requested(stop: &mut watch::Receiver<Option<Duration>>) -> Duration {
    loop {
        if let Some(grace) = *stop.borrow_and_update() {
            return grace;
        }
        if stop.changed().await.is_err() {
            return Duration::ZERO;
        }
    }
}

async fn serve_proxy(
    listener: TcpListener,
    gate: SharedGate,
    config: Arc<Config>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<Option<Duration>>,
) {
    let builder = Arc::new(connection_builder(&config));
    let plain = Arc::new(plain_builder(&config));
    // Past `max_connections` the loop stops accepting: new connections wait in the kernel's
    // backlog (their connect timeout applies) instead of costing a file descriptor and an
    // answer each while the gateway is saturated.
    let max = config.limits.max_connections.clamp(1, MAX_CONNECTIONS_CAP);
    let permits = Arc::new(Semaphore::new(max));
    // Set when the grace period is over: every connection still open is closed.
    let (cut, cut_rx) = watch::channel(false);
    let cut_count = Arc::new(AtomicUsize::new(0));
    let grace = loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break Duration::ZERO },
            grace = stop_requested(&mut stop) => break grace,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: log, and keep serving the connections we have.
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
            grace = stop_requested(&mut stop) => break grace,
        };
        let _ = stream.set_nodelay(true);
        let gate = gate.clone();
        let builder = builder.clone();
        let plain = plain.clone();
        let metrics = metrics.clone();
        let tls = tls.clone();
        let handshake_timeout = config.limits.header_read_timeout;
        let mut conn_stop = stop.clone();
        let lease = ConnectionLease::new(permit, metrics, cut_rx.clone(), cut_count.clone());
        tokio::spawn(async move {
            let is_tls = tls.is_some();
            let request_lease = lease.clone();
            let service = service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
                // Only an upgrade (a WebSocket spliced after the decision) outlives this
                // connection's task and needs the lease; inserting it into every request's
                // extensions cost three allocations per request.
                if req.headers().contains_key(http::header::UPGRADE) {
                    req.extensions_mut().insert(request_lease.clone());
                }
                let gate = current(&gate);
                async move {
                    Ok::<_, std::convert::Infallible>(serve_request(gate, req, peer, is_tls).await)
                }
            });
            let serve = async move {
                match tls {
                    None => serve_until_drained!(
                        plain
                            .serve_connection(TokioIo::new(stream), service)
                            .with_upgrades(),
                        conn_stop
                    ),
                    Some(acceptor) => {
                        match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await
                        {
                            Ok(Ok(tls_stream)) => serve_until_drained!(
                                builder.serve_connection_with_upgrades(
                                    TokioIo::new(tls_stream),
                                    service,
                                ),
                                conn_stop
                            ),
                            Ok(Err(e)) => {
                                tracing::debug!(error = %e, %peer, "TLS handshake failed");
                                Ok(())
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "TLS handshake timed out");
                                Ok(())
                            }
                        }
                    }
                }
            };
            tokio::select! {
                result = serve => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, %peer, "connection ended with an error");
                    }
                }
                () = lease.cut() => {}
            }
        });
    };
    drop(listener);
    tracing::info!(
        open = metrics.open_connections.load(Ordering::Relaxed),
        ?grace,
        "stopped accepting; in-flight requests are finishing"
    );
    // Every connection holds a permit in its lease until it ends: all permits back means
    // every connection is closed, TLS handshakes and spliced WebSockets included.
    let all_permits = u32::try_from(max).unwrap_or(u32::MAX);
    if tokio::time::timeout(grace, permits.acquire_many(all_permits))
        .await
        .is_err()
    {
        let _ = cut.send(true);
        let _ = permits.acquire_many(all_permits).await;
        tracing::warn!(
            cut = cut_count.load(Ordering::Relaxed),
            "grace period over: closed the connections still in flight"
        );
    } else {
        tracing::info!("every in-flight request finished");
    }
}

async fn serve_admin(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted { Ok(a) => a, Err(_) => continue },
            _ = shutdown.changed() => break,
        };
        let metrics = metrics.clone();
        let conn = hyper::server::conn::http1::Builder::new().serve_connection(
            TokioIo::new(stream),
            service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let resp = admin::respond(&metrics, req.uri().path());
                async move { Ok::<_, std::convert::Infallible>(resp) }
            }),
        );
        let fut = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = fut.await;
        });
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), graceful.shutdown()).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Limits;

    fn limits(max_request_head: usize, max_url: usize) -> Limits {
        Limits {
            max_request_head,
            max_url,
            ..Limits::default()
        }
    }

    fn get(target: &str, headers: &[(&str, &str)]) -> http::Request<()> {
        let mut req = http::Request::get(target);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.body(()).expect("request")
    }

    #[test]
    fn a_url_over_max_url_is_414_at_the_byte() {
        let l = limits(4096, 100);
        let at = format!("/p?q={}", "a".repeat(100 - 5));
        assert_eq!(head_limits(&get(&at, &[]), &l), None);
        let over = format!("{at}b");
        assert_eq!(head_limits(&get(&over, &[]), &l), Some(Refusal::UriTooLong));
        // The URL is judged first, whatever else is large.
        let big = "v".repeat(8000);
        assert_eq!(
            head_limits(&get(&over, &[("x-big", big.as_str())]), &l),
            Some(Refusal::UriTooLong)
        );
    }

    #[test]
    fn a_head_over_max_request_head_is_431_at_the_byte() {
        // "GET /p HTTP/1.1\r\n" (17) + "x-a: " + value + "\r\n" (7 + n) + "\r\n" (2).
        let l = limits(100, 50);
        let fits = "v".repeat(100 - 17 - 7 - 2);
        assert_eq!(head_limits(&get("/p", &[("x-a", fits.as_str())]), &l), None);
        let over = format!("{fits}v");
        assert_eq!(
            head_limits(&get("/p", &[("x-a", over.as_str())]), &l),
            Some(Refusal::HeadTooLarge)
        );
    }
}
