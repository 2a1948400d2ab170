//! Listeners, TLS, HTTP/1.1 and HTTP/2, connection limits, graceful shutdown, reloads.
//!
//! `start` binds the proxy (and admin) listeners and returns a [`Running`] handle; the binary,
//! the demo, the tests and the benches all start scopegate through it. Shutdown: readiness
//! turns 503, the listeners stop accepting, in-flight requests finish (bounded by
//! [`DRAIN_TIMEOUT`]), then `Running::shutdown` returns.
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

use crate::admin::{self, Metrics};
use crate::config::Config;
use crate::forge;
use crate::gate::Gate;
use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls::sign::CertifiedKey;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

/// How long in-flight requests may run on after shutdown begins.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

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
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Readiness → 503, stop accepting, let in-flight requests finish (bounded), return.
    pub async fn shutdown(self) {
        self.metrics.ready.store(false, Ordering::SeqCst);
        let _ = self.shutdown.send(true);
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
        let gate = build_gate(Arc::new(config), self.metrics.clone())?;
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

fn build_gate(config: Arc<Config>, metrics: Arc<Metrics>) -> Result<Gate, ServeError> {
    let client = forge::build_client(&config)?;
    Gate::new(config, client, metrics).map_err(ServeError::AuthLog)
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
    let (shutdown, shutdown_rx) = watch::channel(false);
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
        shutdown_rx.clone(),
    );
    tasks.push(tokio::spawn(async move {
        proxy.await;
        drop(proxy_done);
    }));

    // Expired cache entries are dropped in the background so one-off junk tokens cannot
    // grow the caches without bound.
    let purge_gate = gate.clone();
    let shutdown_rx_probe = shutdown_rx.clone();
    let mut purge_rx = shutdown_rx;
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
        shutdown_rx_probe,
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
        shutdown,
        tasks,
    })
}

/// Keeps `metrics.forge_reachable` current: every [`PROBE_INTERVAL`], and at once when asked
/// through `metrics.probe_now`. Probes the forge of the configuration in force.
async fn probe_forge(gate: SharedGate, metrics: Arc<Metrics>, mut shutdown: watch::Receiver<bool>) {
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

fn connection_builder(config: &Config) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.limits.header_read_timeout)
        .max_buf_size(config.limits.max_request_head.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(config.limits.max_request_head).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(config.limits.idle_timeout))
        .keep_alive_timeout(config.limits.idle_timeout);
    builder
}

async fn serve_proxy(
    listener: TcpListener,
    gate: SharedGate,
    config: Arc<Config>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let builder = Arc::new(connection_builder(&config));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(config.limits.max_connections.max(1)));
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = shutdown.changed() => break,
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
            _ = shutdown.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        let gate = gate.clone();
        let builder = builder.clone();
        let metrics = metrics.clone();
        let tls = tls.clone();
        let handshake_timeout = config.limits.header_read_timeout;
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _permit = permit;
            metrics.open_connections.fetch_add(1, Ordering::Relaxed);
            let is_tls = tls.is_some();
            let service = service_fn(move |req| {
                let gate = current(&gate);
                async move { Ok::<_, std::convert::Infallible>(gate.handle(req, peer, is_tls).await) }
            });
            let result = match tls {
                None => {
                    let conn =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    watcher.watch(conn.into_owned()).await
                }
                Some(acceptor) => {
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(tls_stream)) => {
                            let conn = builder
                                .serve_connection_with_upgrades(TokioIo::new(tls_stream), service);
                            watcher.watch(conn.into_owned()).await
                        }
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
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
            metrics.open_connections.fetch_sub(1, Ordering::Relaxed);
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("drain timeout: closing remaining connections");
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
