//! The admin listener: `/healthz` (the process serves), `/readyz` (503 once shutdown has
//! begun, so a load balancer drains us), `/metrics` (Prometheus text). It sits on its own
//! address so it is never reachable through the proxy port.

use crate::forge::{self, UpBody};
use bytes::Bytes;
use dashmap::DashMap;
use http::{Response, StatusCode};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Counters and gauges; label values are fixed strings (classes, decisions, reasons), never
/// request data, so their number is bounded.
#[derive(Default)]
pub struct Metrics {
    requests: DashMap<(&'static str, &'static str, &'static str), AtomicU64>,
    pub job_lookups: AtomicU64,
    pub lookup_failures: AtomicU64,
    pub config_generation: AtomicU64,
    pub open_connections: AtomicU64,
    pub ready: AtomicBool,
}

impl Metrics {
    pub fn new() -> Self {
        let m = Metrics::default();
        m.ready.store(true, Ordering::SeqCst);
        m
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
        out.push_str("# HELP scopegate_requests_total Requests by class, decision and reason.\n");
        out.push_str("# TYPE scopegate_requests_total counter\n");
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
        let gauges = [
            (
                "scopegate_job_lookups_total",
                "counter",
                "Job-token look-ups sent to the forge.",
                &self.job_lookups,
            ),
            (
                "scopegate_lookup_failures_total",
                "counter",
                "Look-ups the forge could not answer (503s).",
                &self.lookup_failures,
            ),
            (
                "scopegate_config_generation",
                "gauge",
                "Successful configuration loads.",
                &self.config_generation,
            ),
            (
                "scopegate_open_connections",
                "gauge",
                "Client connections being served.",
                &self.open_connections,
            ),
        ];
        for (name, kind, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
        let ready = u8::from(self.ready.load(Ordering::SeqCst));
        let _ = writeln!(out, "# HELP scopegate_ready 1 while accepting traffic.\n# TYPE scopegate_ready gauge\nscopegate_ready {ready}");
        out
    }
}

/// Answers one admin request.
pub fn respond(metrics: &Metrics, path: &str) -> Response<UpBody> {
    let (status, ctype, body) = match path {
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        "/readyz" if metrics.ready.load(Ordering::SeqCst) => {
            (StatusCode::OK, "text/plain", "ready\n".to_owned())
        }
        "/readyz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "shutting down\n".to_owned(),
        ),
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
