//! HTTP clients to the forge. The shared legacy client serves scopegate's own look-ups
//! (`GET /api/v4/job`, projects, groups) and forwarding to an `https://` forge: pooled,
//! HTTP/1.1 and HTTP/2 (ALPN over TLS), rustls with optional extra roots. Forwarding to an
//! `http://` forge goes through the lean HTTP/1.1 pool of [`pool`].

use crate::config::Config;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::BodyExt;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::sync::Arc;
use std::time::Duration;

pub mod pool;

pub use pool::{ForwardError, Upstream};

/// Body type of every request scopegate sends upstream: streamed client bodies and buffered
/// inspected ones alike.
pub type UpBody = BoxBody<Bytes, BodyError>;

/// A body error on the way up or down; boxed because it comes from hyper, the client, or a
/// timeout, and is only ever logged (never with body content).
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

pub type HttpClient = Client<HttpsConnector<HttpConnector>, UpBody>;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot read forge CA file {path}: {source}")]
    Ca {
        path: String,
        source: std::io::Error,
    },
    #[error("forge CA file {0} holds no usable certificate")]
    CaEmpty(String),
    #[error("TLS setup: {0}")]
    Tls(#[from] rustls::Error),
}

/// Builds the pooled client. `https://` forges are verified against the system's roots (as
/// an administrator's `update-ca-certificates` or `SSL_CERT_FILE`/`SSL_CERT_DIR` left them)
/// plus `upstream.ca`.
pub fn build_client(config: &Config) -> Result<HttpClient, ClientError> {
    let mut roots = system_roots();
    if let Some(ca) = &config.upstream.ca {
        let pem = std::fs::read(ca).map_err(|source| ClientError::Ca {
            path: ca.display().to_string(),
            source,
        })?;
        let mut added = 0;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            let cert = cert.map_err(|source| ClientError::Ca {
                path: ca.display().to_string(),
                source,
            })?;
            roots.add(cert)?;
            added += 1;
        }
        if added == 0 {
            return Err(ClientError::CaEmpty(ca.display().to_string()));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(config.limits.upstream_connect_timeout));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(64)
        .build(connector))
}

/// The system's trust store. A minimal container image may have none (no `ca-certificates`
/// package); then the bundled Mozilla roots stand in, so a forge with a public certificate
/// still verifies. Unreadable entries are logged and skipped, as curl and git skip them.
fn system_roots() -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::warn!(error = %e, "skipping an unreadable system trust store entry");
    }
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        tracing::info!("no system trust store found: using the bundled Mozilla roots");
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    roots
}

/// An empty upstream body.
pub fn empty() -> UpBody {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed()
}

/// A buffered upstream body (an inspected body, forwarded byte for byte).
pub fn full(bytes: Bytes) -> UpBody {
    http_body_util::Full::new(bytes)
        .map_err(|never| match never {})
        .boxed()
}

/// The `User-Agent` of scopegate's own look-ups, so the forge's logs (and the test doubles)
/// can tell them from forwarded traffic.
pub const LOOKUP_USER_AGENT: &str = concat!("scopegate-lookup/", env!("CARGO_PKG_VERSION"));

/// Largest look-up answer read (a job or project JSON is a few KiB).
pub const MAX_LOOKUP_BODY: usize = 1024 * 1024;

/// Why a look-up did not produce an answer; every one of these is a 503 and is never cached.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LookupFailure {
    #[error("forge unreachable")]
    Unreachable,
    #[error("forge timed out")]
    Timeout,
    #[error("forge answered {0}")]
    Status(u16),
    #[error("forge answer malformed")]
    Malformed,
}

/// The parts of a look-up answer scopegate reads.
pub struct LookupAnswer {
    pub status: http::StatusCode,
    pub body: Bytes,
}

/// Sends one look-up `GET` to the forge and reads its answer whole (bounded).
pub async fn get(
    client: &HttpClient,
    uri: http::Uri,
    headers: http::HeaderMap,
    timeout: Duration,
) -> Result<LookupAnswer, LookupFailure> {
    let mut req = http::Request::new(empty());
    *req.uri_mut() = uri;
    *req.headers_mut() = headers;
    req.headers_mut().insert(
        http::header::USER_AGENT,
        http::HeaderValue::from_static(LOOKUP_USER_AGENT),
    );
    req.headers_mut().insert(
        http::header::ACCEPT,
        http::HeaderValue::from_static("application/json"),
    );
    let work = async {
        let resp = client.request(req).await.map_err(|e| {
            tracing::debug!(error = %e, "forge look-up failed");
            LookupFailure::Unreachable
        })?;
        let status = resp.status();
        let limited = http_body_util::Limited::new(resp.into_body(), MAX_LOOKUP_BODY);
        let body = limited
            .collect()
            .await
            .map_err(|_| LookupFailure::Malformed)?
            .to_bytes();
        Ok(LookupAnswer { status, body })
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(LookupFailure::Timeout),
    }
}

/// `upstream.url` + `path_and_query` (which already carries any relative URL root).
pub fn upstream_uri(config: &Config, path_and_query: &str) -> Result<http::Uri, http::Error> {
    let base = &config.upstream.url;
    let mut builder = http::Uri::builder();
    if let Some(scheme) = base.scheme() {
        builder = builder.scheme(scheme.clone());
    }
    if let Some(authority) = base.authority() {
        builder = builder.authority(authority.clone());
    }
    builder.path_and_query(path_and_query).build()
}

/// `upstream.url` + relative URL root + an API path scopegate builds itself.
pub fn api_uri(config: &Config, api_path: &str) -> Result<http::Uri, http::Error> {
    upstream_uri(
        config,
        &format!("{}{}", config.upstream.relative_url_root, api_path),
    )
}
