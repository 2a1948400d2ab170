//! The admin listener's `/metrics` and `/readyz` against the real server and the recording
//! fake forge: cache hits and misses (single flight included), the upstream latency
//! histogram, and readiness following the forge's reachability. Waits poll the metrics,
//! bounded; nothing sleeps in place of synchronisation.

mod support;

use scopegate::demo::forge::{FakeForge, JobApi};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use support::*;

const SECRET_FILE: &str = "/api/v4/projects/2/repository/files/x/raw?ref=main";

async fn scrape(h: &Harness) -> String {
    let admin = h.gw.admin_addr.expect("admin listener");
    h.http
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body")
}

/// An unlabelled sample's value.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

async fn metric(h: &Harness, name: &str) -> f64 {
    sample(&scrape(h).await, name)
}

/// Polls (bounded) until `done` holds.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn readyz(h: &Harness) -> (u16, String) {
    let admin = h.gw.admin_addr.expect("admin listener");
    let r = h
        .http
        .get(format!("http://{admin}/readyz"))
        .send()
        .await
        .expect("readyz");
    (r.status().as_u16(), r.text().await.expect("body"))
}

#[tokio::test]
async fn job_cache_hits_and_misses_follow_the_look_ups() {
    let h = Harness::start().await;
    let name = |s: &str| format!("scopegate_job_cache_{s}_total");
    h.assert_forwarded(h.get_job(SECRET_FILE, TOK_APP).await)
        .await;
    assert_eq!(metric(&h, &name("misses")).await, 1.0);
    assert_eq!(metric(&h, &name("hits")).await, 0.0);
    assert_eq!(metric(&h, "scopegate_job_lookups_total").await, 1.0);

    h.forge.clear();
    h.assert_forwarded(h.get_job(SECRET_FILE, TOK_APP).await)
        .await;
    h.forge.clear();
    let denied = h.get_job(SECRET_FILE, TOK_OTHER).await;
    h.assert_denied(denied, 404).await;
    let text = scrape(&h).await;
    assert_eq!(sample(&text, &name("hits")), 1.0, "{text}");
    assert_eq!(sample(&text, &name("misses")), 2.0, "{text}");
    assert_eq!(sample(&text, "scopegate_job_lookups_total"), 2.0);
    assert_eq!(h.forge.job_lookup_count(), 1, "TOK_OTHER's only");
    assert!(
        text.lines().any(|l| l
            .starts_with(r#"scopegate_requests_total{class="api",decision="deny","#)
            && l.ends_with(" 1")),
        "{text}"
    );
    h.stop().await;
}

/// Concurrent first requests for one token share one look-up: each of them waited for the
/// forge (a miss), one look-up was sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_flight_waiters_are_misses_and_share_one_look_up() {
    const N: usize = 6;
    let Harness {
        forge,
        gw,
        http,
        base,
        ..
    } = Harness::start().await;
    forge.set_job_api(JobApi::Hang);
    let tasks: Vec<_> = (0..N)
        .map(|_| {
            let req = http
                .get(format!("{base}{SECRET_FILE}"))
                .header("JOB-TOKEN", TOK_APP)
                .send();
            tokio::spawn(async move { req.await.expect("answered").status().as_u16() })
        })
        .collect();
    let metrics = gw.metrics.clone();
    eventually("every request to wait on the look-up", || {
        metrics.job_cache_misses.load(Ordering::SeqCst) == N as u64
    })
    .await;
    assert_eq!(forge.job_lookup_count(), 1);
    assert_eq!(metrics.job_lookups.load(Ordering::SeqCst), 1);
    assert_eq!(metrics.job_cache_hits.load(Ordering::SeqCst), 0);
    // The hanging forge answers 503 as it stops: every waiter gets the one failure.
    forge.stop().await;
    for t in tasks {
        assert_eq!(t.await.expect("task"), 503);
    }
    assert_eq!(metrics.job_lookups.load(Ordering::SeqCst), 1);
    gw.shutdown().await;
}

#[tokio::test]
async fn project_cache_hits_and_misses_with_a_service_token() {
    let mut opts = Options::new(PROJECTS);
    opts.service_token = true;
    let h = Harness::with(opts).await;
    // g/trusted/sub/tool's job: the project, its ancestor groups and the allowlist's paths
    // are looked up once, then answered from the cache.
    h.assert_forwarded(h.get_job(SECRET_FILE, TOK_TOOL).await)
        .await;
    let first = scrape(&h).await;
    let misses = sample(&first, "scopegate_project_cache_misses_total");
    let lookups = h
        .forge
        .lookups()
        .iter()
        .filter(|l| l.path() != "/api/v4/job")
        .count();
    assert_eq!(
        misses, lookups as f64,
        "one miss per look-up sent:\n{first}"
    );
    assert!(misses >= 4.0, "project, three groups: {first}");
    let hits_before = sample(&first, "scopegate_project_cache_hits_total");

    h.forge.clear();
    h.assert_forwarded(h.get_job(SECRET_FILE, TOK_TOOL).await)
        .await;
    let second = scrape(&h).await;
    assert_eq!(
        sample(&second, "scopegate_project_cache_misses_total"),
        misses,
        "nothing new was looked up"
    );
    assert!(h.forge.lookups().is_empty());
    assert!(
        sample(&second, "scopegate_project_cache_hits_total") >= hits_before + misses,
        "every reference of the first request is a hit now:\n{second}"
    );
    h.stop().await;
}

#[tokio::test]
async fn forwarded_requests_are_timed_and_denied_ones_are_not() {
    let h = Harness::start().await;
    let count = "scopegate_upstream_response_seconds_count";
    assert_eq!(metric(&h, count).await, 0.0);
    for _ in 0..3 {
        h.forge.clear();
        h.assert_forwarded(h.get_job(SECRET_FILE, TOK_APP).await)
            .await;
    }
    h.forge.clear();
    h.assert_denied(h.get_job(SECRET_FILE, TOK_OTHER).await, 404)
        .await;
    let text = scrape(&h).await;
    assert_eq!(sample(&text, count), 3.0, "{text}");
    assert_eq!(
        sample(
            &text,
            "scopegate_upstream_response_seconds_bucket{le=\"+Inf\"}"
        ),
        3.0
    );
    assert!(sample(&text, "scopegate_upstream_response_seconds_sum") > 0.0);
    h.stop().await;
}

/// `/metrics` on the proxy port is the forge's path like any other: with a job token it is
/// an `unknown` route (404, nothing forwarded), never scopegate's own metrics.
#[tokio::test]
async fn the_proxy_port_never_serves_metrics() {
    let h = Harness::start().await;
    for path in ["/metrics", "/readyz", "/healthz"] {
        h.forge.clear();
        let body = h.assert_denied(h.get_job(path, TOK_APP).await, 404).await;
        assert!(!body.contains("scopegate_"), "{body}");
        h.forge.clear();
        let rec = h.assert_forwarded(h.get(path, &[]).await).await;
        assert_eq!(rec.uri, path);
    }
    h.stop().await;
}

/// /readyz: 200 while the forge accepts connections; 503 once it does not (noticed at once
/// when a look-up finds it unreachable, else by the periodic probe); 200 again after a
/// reload points at a forge that answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_forges_reachability() {
    let Harness {
        forge,
        gw,
        http,
        base,
        ..
    } = Harness::start().await;
    let h_admin = gw.admin_addr.expect("admin listener");
    let readyz = |http: reqwest::Client| async move {
        let r = http
            .get(format!("http://{h_admin}/readyz"))
            .send()
            .await
            .expect("readyz");
        (r.status().as_u16(), r.text().await.expect("body"))
    };
    assert_eq!(readyz(http.clone()).await, (200, "ready\n".to_owned()));
    forge.stop().await;

    // A job-token request finds the forge gone (503) and readiness follows.
    let r = http
        .get(format!("{base}{SECRET_FILE}"))
        .header("JOB-TOKEN", TOK_APP)
        .send()
        .await
        .expect("answered");
    assert_eq!(r.status().as_u16(), 503);
    let metrics = gw.metrics.clone();
    eventually("the probe to find the forge gone", || {
        !metrics.forge_reachable.load(Ordering::SeqCst)
    })
    .await;
    assert_eq!(
        readyz(http.clone()).await,
        (503, "forge unreachable\n".to_owned())
    );
    let admin_metrics = http
        .get(format!("http://{h_admin}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("body");
    assert_eq!(sample(&admin_metrics, "scopegate_forge_reachable"), 0.0);

    // A new forge, and a reload pointing at it: ready again without waiting for the period.
    let forge = FakeForge::start(world()).await.expect("forge");
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\nupstream:\n  url: {}\n{PROJECTS}",
        forge.url()
    );
    let new = scopegate::Config::from_yaml_str(&yaml, Path::new("ready.yaml")).expect("config");
    gw.reload(new).expect("reload");
    eventually("the probe to find the new forge", || {
        metrics.forge_reachable.load(Ordering::SeqCst)
    })
    .await;
    assert_eq!(readyz(http.clone()).await, (200, "ready\n".to_owned()));
    let r = http
        .get(format!("{base}{SECRET_FILE}"))
        .header("JOB-TOKEN", TOK_APP)
        .send()
        .await
        .expect("answered");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(forge.requests().len(), 1);
    gw.shutdown().await;
    forge.stop().await;
}

/// A reload that fails (here: a CA file that does not exist) counts a failure and changes
/// nothing: same generation, same decisions.
#[tokio::test]
async fn a_failed_reload_is_counted_and_changes_nothing() {
    let h = Harness::start().await;
    let yaml = format!(
        "listen: 127.0.0.1:0\nupstream:\n  url: {}\n  ca: /nonexistent/ca.pem\n{}",
        h.forge.url(),
        PROJECTS.replacen("projects: [g/app]", "projects: [g/app, g/other]", 1)
    );
    let bad = scopegate::Config::from_yaml_str(&yaml, Path::new("bad.yaml")).expect("parses");
    let err = h.gw.reload(bad).expect_err("the CA file is missing");
    assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
    let text = scrape(&h).await;
    assert_eq!(sample(&text, "scopegate_reload_failures_total"), 1.0);
    assert_eq!(sample(&text, "scopegate_config_generation"), 1.0);
    h.assert_denied(h.get_job(SECRET_FILE, TOK_OTHER).await, 404)
        .await;
    assert_eq!(readyz(&h).await, (200, "ready\n".to_owned()));
    h.stop().await;
}
