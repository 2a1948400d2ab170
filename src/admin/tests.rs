//! The exposition format, checked line by line as a Prometheus scraper would read it.

use super::*;
use std::collections::{BTreeMap, BTreeSet};

/// One sample line: metric name, label pairs, value.
type Sample = (String, Vec<(String, String)>, f64);

/// Parses Prometheus text format 0.0.4 strictly enough to catch what a scraper rejects:
/// every sample's family has `# HELP` and `# TYPE` before it (once each), names and labels
/// are well formed, values are numbers, no series appears twice.
fn parse(text: &str) -> (BTreeMap<String, String>, Vec<Sample>) {
    let name_ok = |n: &str| {
        let mut c = n.chars();
        matches!(c.next(), Some(f) if f.is_ascii_alphabetic() || f == '_' || f == ':')
            && c.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut helps: BTreeSet<String> = BTreeSet::new();
    let mut samples = Vec::new();
    let mut series = BTreeSet::new();
    assert!(text.ends_with('\n'), "the exposition ends with a newline");
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("HELP name text");
            assert!(name_ok(name) && !help.is_empty(), "{line}");
            assert!(helps.insert(name.to_owned()), "HELP twice: {line}");
            assert!(!types.contains_key(name), "HELP after TYPE: {line}");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            assert!(helps.contains(name), "TYPE before HELP: {line}");
            assert!(
                types.insert(name.to_owned(), kind.to_owned()).is_none(),
                "{line}"
            );
            continue;
        }
        assert!(!line.starts_with('#') && !line.is_empty(), "{line:?}");
        let (head, value) = line.rsplit_once(' ').expect("sample value");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("value of {line}"));
        let (name, labels) = match head.split_once('{') {
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').expect("closing brace");
                let labels = body
                    .split(',')
                    .map(|pair| {
                        let (k, v) = pair.split_once('=').expect("label=value");
                        assert!(name_ok(k), "label name {k}");
                        let v = v
                            .strip_prefix('"')
                            .and_then(|v| v.strip_suffix('"'))
                            .expect("quoted label value");
                        assert!(!v.contains(['"', '\\', '\n']), "{v}");
                        (k.to_owned(), v.to_owned())
                    })
                    .collect();
                (name, labels)
            }
            None => (head, Vec::new()),
        };
        assert!(name_ok(name), "{line}");
        let family = types
            .keys()
            .find(|f| {
                name == f.as_str()
                    || (types[f.as_str()] == "histogram"
                        && ["_bucket", "_sum", "_count"]
                            .iter()
                            .any(|s| name.strip_suffix(s) == Some(f.as_str())))
            })
            .unwrap_or_else(|| panic!("sample before its TYPE: {line}"));
        if types[family] == "counter" {
            assert!(name.ends_with("_total"), "counter without _total: {line}");
        }
        assert!(series.insert(head.to_owned()), "series twice: {line}");
        samples.push((name.to_owned(), labels, value));
    }
    (types, samples)
}

fn value(samples: &[Sample], name: &str) -> f64 {
    samples
        .iter()
        .find(|(n, l, _)| n == name && l.is_empty())
        .unwrap_or_else(|| panic!("no {name}"))
        .2
}

#[test]
fn every_family_is_declared_and_counters_render_their_values() {
    let m = Metrics::new();
    m.record("api", "deny", "not_on_allowlist");
    m.record("api", "deny", "not_on_allowlist");
    m.record("git", "allow", "same_project");
    m.job_cache_hits.fetch_add(3, Ordering::Relaxed);
    m.job_cache_misses.fetch_add(2, Ordering::Relaxed);
    m.job_lookups.fetch_add(1, Ordering::Relaxed);
    m.project_cache_misses.fetch_add(4, Ordering::Relaxed);
    m.reload_failures.fetch_add(5, Ordering::Relaxed);
    m.config_generation.store(7, Ordering::Relaxed);
    m.open_connections.store(2, Ordering::Relaxed);
    let (types, samples) = parse(&m.render());

    for (name, kind) in [
        ("scopegate_requests_total", "counter"),
        ("scopegate_job_cache_hits_total", "counter"),
        ("scopegate_job_cache_misses_total", "counter"),
        ("scopegate_project_cache_hits_total", "counter"),
        ("scopegate_project_cache_misses_total", "counter"),
        ("scopegate_reload_failures_total", "counter"),
        ("scopegate_auth_log_dropped_total", "counter"),
        ("scopegate_config_generation", "gauge"),
        ("scopegate_open_connections", "gauge"),
        ("scopegate_upstream_response_seconds", "histogram"),
    ] {
        assert_eq!(types.get(name).map(String::as_str), Some(kind), "{name}");
    }
    let deny = samples
        .iter()
        .find(|(n, l, _)| {
            n == "scopegate_requests_total" && l.iter().any(|(k, v)| k == "decision" && v == "deny")
        })
        .expect("the deny series");
    assert_eq!(deny.2, 2.0);
    assert_eq!(
        deny.1,
        [
            ("class".to_owned(), "api".to_owned()),
            ("decision".to_owned(), "deny".to_owned()),
            ("reason".to_owned(), "not_on_allowlist".to_owned())
        ]
    );
    assert_eq!(value(&samples, "scopegate_job_cache_hits_total"), 3.0);
    assert_eq!(value(&samples, "scopegate_job_cache_misses_total"), 2.0);
    assert_eq!(value(&samples, "scopegate_project_cache_misses_total"), 4.0);
    assert_eq!(value(&samples, "scopegate_reload_failures_total"), 5.0);
    assert_eq!(value(&samples, "scopegate_config_generation"), 7.0);
    assert_eq!(value(&samples, "scopegate_open_connections"), 2.0);
    assert_eq!(
        value(&samples, "scopegate_upstream_response_seconds_count"),
        0.0
    );
}

#[test]
fn histogram_buckets_are_cumulative_and_end_at_the_count() {
    let m = Metrics::new();
    let h = &m.upstream_response;
    for ms in [0, 1, 3, 3, 40, 700, 9_000, 120_000] {
        h.observe(Duration::from_millis(ms));
    }
    let (_, samples) = parse(&m.render());
    let buckets: Vec<(String, f64)> = samples
        .iter()
        .filter(|(n, _, _)| n == "scopegate_upstream_response_seconds_bucket")
        .map(|(_, l, v)| {
            assert_eq!(l.len(), 1);
            assert_eq!(l[0].0, "le");
            (l[0].1.clone(), *v)
        })
        .collect();
    assert_eq!(buckets.len(), LATENCY_BUCKETS.len() + 1);
    assert_eq!(buckets.last().map(|b| b.0.as_str()), Some("+Inf"));
    let bounds: Vec<f64> = buckets
        .iter()
        .map(|(le, _)| le.parse::<f64>().unwrap_or(f64::INFINITY))
        .collect();
    assert!(bounds.windows(2).all(|w| w[0] < w[1]), "{bounds:?}");
    assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{buckets:?}");
    let at = |le: &str| {
        buckets
            .iter()
            .find(|b| b.0 == le)
            .unwrap_or_else(|| panic!("le={le}"))
            .1
    };
    // 0 ms and 1 ms are ≤ 1 ms (bounds are inclusive); 3 ms twice ≤ 5 ms; …
    assert_eq!(at("0.001"), 2.0);
    assert_eq!(at("0.0025"), 2.0);
    assert_eq!(at("0.005"), 4.0);
    assert_eq!(at("0.05"), 5.0);
    assert_eq!(at("1"), 6.0);
    assert_eq!(at("10"), 7.0);
    assert_eq!(at("60"), 7.0);
    assert_eq!(at("+Inf"), 8.0);
    assert_eq!(
        value(&samples, "scopegate_upstream_response_seconds_count"),
        8.0
    );
    assert_eq!(h.count(), 8);
    let sum = value(&samples, "scopegate_upstream_response_seconds_sum");
    assert!((sum - 129.747).abs() < 1e-9, "{sum}");
}

#[test]
fn readiness_needs_both_no_shutdown_and_a_reachable_forge() {
    let body = |m: &Metrics| {
        let r = respond(m, "/readyz");
        r.status().as_u16()
    };
    let m = Metrics::new();
    assert_eq!(body(&m), 200);
    m.forge_reachable.store(false, Ordering::SeqCst);
    assert_eq!(body(&m), 503);
    m.forge_reachable.store(true, Ordering::SeqCst);
    m.ready.store(false, Ordering::SeqCst);
    assert_eq!(body(&m), 503);
    assert_eq!(respond(&m, "/healthz").status().as_u16(), 200);
    assert_eq!(respond(&m, "/nope").status().as_u16(), 404);
}
