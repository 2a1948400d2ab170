//! The admin listener's answers: `/healthz` (the process serves), `/readyz` (ready to take
//! traffic: not shutting down and the forge reachable), `/metrics` (Prometheus text), and the
//! [`Metrics`] they read. The listener sits on its own address ([`crate::server`]), so none
//! of this is reachable through the proxy port.
//!
//! Every counter the request path touches is a plain atomic (the per-request outcome counter
//! takes a `DashMap` read lock on a key of three `&'static str`): nothing on the hot path
//! locks exclusively or allocates.

use crate::forge::{self, UpBody};
use bytes::Bytes;
use dashmap::DashMap;
use http::{Response, StatusCode};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// Counters and gauges; label values are fixed strings (classes, decisions, reasons), never
/// request data, so their number is bounded.
pub struct Metrics {
    requests: DashMap<(&'static str, &'static str, &'static str), AtomicU64>,
    /// `GET /api/v4/job` look-ups sent to the forge.
    pub job_lookups: AtomicU64,
    /// Look-ups the forge could not answer (each one a 503).
    pub lookup_failures: AtomicU64,
    /// Job-token candidates answered from the cache.
    pub job_cache_hits: AtomicU64,
    /// Job-token candidates that waited for the forge: the one that sent a look-up, and
    /// every concurrent asker that joined it (single flight). `misses − job_lookups` is the
    /// number of look-ups single flight saved.
    pub job_cache_misses: AtomicU64,
    /// Project and group references answered from the cache.
    pub project_cache_hits: AtomicU64,
    /// Project and group references that needed a forge look-up.
    pub project_cache_misses: AtomicU64,
    /// Forwarded requests: from sending to the forge to its response head.
    pub upstream_response: Histogram,
    pub config_generation: AtomicU64,
    /// Reloads that left the previous configuration in force (bad file, bad certificate…).
    pub reload_failures: AtomicU64,
    /// Authentication-log lines dropped because the writer could not keep up (shared with
    /// every generation's log, so the count survives reloads).
    pub auth_log_dropped: Arc<AtomicU64>,
    pub open_connections: AtomicU64,
    /// False once shutdown has begun.
    pub ready: AtomicBool,
    /// The last readiness probe's verdict on the forge (see [`crate::server`]).
    pub forge_reachable: AtomicBool,
    /// Asks the readiness probe to look again now (a look-up found the forge unreachable, a
    /// reload may have changed `upstream.url`). `notify_one` keeps the request if the probe
    /// is busy, so none is lost.
    pub probe_now: Notify,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Metrics {
            requests: DashMap::new(),
            job_lookups: AtomicU64::new(0),
            lookup_failures: AtomicU64::new(0),
            job_cache_hits: AtomicU64::new(0),
            job_cache_misses: AtomicU64::new(0),
            project_cache_hits: AtomicU64::new(0),
            project_cache_misses: AtomicU64::new(0),
            upstream_response: Histogram::new(),
            config_generation: AtomicU64::new(0),
            reload_failures: AtomicU64::new(0),
            auth_log_dropped: Arc::new(AtomicU64::new(0)),
            open_connections: AtomicU64::new(0),
            ready: AtomicBool::new(true),
            // Until a probe or a failed look-up says otherwise (see `server`).
            forge_reachable: AtomicBool::new(true),
            probe_now: Notify::new(),
        }
    }

    /// Ready for traffic: not shutting down, and the forge answered the last probe.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst) && self.forge_reachable.load(Ordering::SeqCst)
    }

    /// One request's outcome: its class, decision (`allow`, `deny`, `would_deny`, `forward`,
    /// `refuse`) and reason.
    pub fn record(&self, class: &'static str, decision: &'static str, reason: &'static str) {
        let key = (class, decision, reason);
        // The read lock first: every request of a kind bumps the same counter, and the
        // write lock `entry` takes would serialise them.
        if let Some(counter) = self.requests.get(&key) {
            counter.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.requests
            .entry(key)
            .or_default()
            .fetch_add(1, Ordering::Relaxed);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        family(
            &mut out,
            "scopegate_requests_total",
            "counter",
            "Requests by class, decision and reason.",
        );
        let mut rows: Vec<_> = self
            .requests
            .iter()
            .map(|e| (*e.key(), e.value().load(Ordering::Relaxed)))
            .collect();
        rows.sort();
        for ((class, decision, reason), n) in rows {
            let _ = writeln!(
                out,
                "scopegate_requests_total{{class=\"{class}\",decision=\"{decision}\",reason=\"{reason}\"}} {n}"
            );
        }
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let flag = |a: &AtomicBool| u64::from(a.load(Ordering::SeqCst));
        let scalars = [
            (
                "scopegate_job_lookups_total",
                "counter",
                "Job-token look-ups (GET /api/v4/job) sent to the forge.",
                load(&self.job_lookups),
            ),
            (
                "scopegate_lookup_failures_total",
                "counter",
                "Look-ups the forge could not answer (503s).",
                load(&self.lookup_failures),
            ),
            (
                "scopegate_job_cache_hits_total",
                "counter",
                "Job-token candidates answered from the cache.",
                load(&self.job_cache_hits),
            ),
            (
                "scopegate_job_cache_misses_total",
                "counter",
                "Job-token candidates that waited for a forge look-up (sent, or shared with a concurrent request).",
                load(&self.job_cache_misses),
            ),
            (
                "scopegate_project_cache_hits_total",
                "counter",
                "Project and group references answered from the cache.",
                load(&self.project_cache_hits),
            ),
            (
                "scopegate_project_cache_misses_total",
                "counter",
                "Project and group references looked up at the forge.",
                load(&self.project_cache_misses),
            ),
            (
                "scopegate_config_generation",
                "gauge",
                "Successful configuration loads.",
                load(&self.config_generation),
            ),
            (
                "scopegate_reload_failures_total",
                "counter",
                "Reloads that failed and left the previous configuration in force.",
                load(&self.reload_failures),
            ),
            (
                "scopegate_auth_log_dropped_total",
                "counter",
                "Authentication-log lines dropped because the writer fell behind.",
                load(&self.auth_log_dropped),
            ),
            (
                "scopegate_open_connections",
                "gauge",
                "Client connections being served.",
                load(&self.open_connections),
            ),
            (
                "scopegate_forge_reachable",
                "gauge",
                "1 while the last readiness probe reached the forge.",
                flag(&self.forge_reachable),
            ),
            (
                "scopegate_ready",
                "gauge",
                "1 while accepting traffic (not shutting down).",
                flag(&self.ready),
            ),
        ];
        for (name, kind, help, value) in scalars {
            family(&mut out, name, kind, help);
            let _ = writeln!(out, "{name} {value}");
        }
        self.upstream_response.render(
            &mut out,
            "scopegate_upstream_response_seconds",
            "Forwarded requests: time from sending to the forge to its response head.",
        );
        out
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Upper bounds of the latency buckets, in seconds: from a cached answer on the same host
/// to `upstream_response_timeout`'s default (60 s).
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0,
];

/// A Prometheus histogram with fixed buckets, lock-free: one atomic per bucket (the count of
/// observations that fell in it, not cumulative, so an observation touches one bucket) plus
/// the sum in nanoseconds. Cumulative counts are computed when rendering.
pub struct Histogram {
    /// `LATENCY_BUCKETS.len()` buckets, then the one above the last bound (`+Inf`).
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::new()
    }
}

impl Histogram {
    pub fn new() -> Self {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_nanos: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let i = LATENCY_BUCKETS
            .iter()
            .position(|le| secs <= *le)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        family(out, name, "histogram", help);
        // `_count` is the `+Inf` bucket by construction, so the two always agree even while
        // observations land during rendering.
        let mut cumulative = 0u64;
        for (i, bucket) in self.buckets.iter().enumerate() {
            cumulative += bucket.load(Ordering::Relaxed);
            let le = LATENCY_BUCKETS
                .get(i)
                .map_or_else(|| "+Inf".to_owned(), |b| b.to_string());
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {cumulative}");
    }
}

/// Answers one admin request.
pub fn respond(metrics: &Metrics, path: &str) -> Response<UpBody> {
    let (status, ctype, body) = match path {
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        "/readyz" if metrics.is_ready() => (StatusCode::OK, "text/plain", "ready\n".to_owned()),
        "/readyz" => {
            let why = if metrics.ready.load(Ordering::SeqCst) {
                "forge unreachable\n"
            } else {
                "shutting down\n"
            };
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                why.to_owned(),
            )
        }
        "/metrics" => (
            StatusCode::OK,
            "text/plain; version=0.0.4",
            metrics.render(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_owned(),
        ),
    };
    let mut resp = Response::new(forge::full(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(ctype) {
        resp.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    resp
}

#[cfg(test)]
mod tests;
