//! SPEC §2: who a token belongs to. The forge's `GET /api/v4/job` is asked once per token
//! (single flight), definitive answers are cached, and every failure of the forge is a 503
//! that forwards nothing and caches nothing.

mod support;

use scopegate::demo::forge::{FakeForge, JobApi, LOOKUP_USER_AGENT_PREFIX};
use std::time::{Duration, Instant};
use support::*;

const UNAVAILABLE: &str = r#"{"message":"503 Service Unavailable"}"#;
const UNAUTHORIZED: &str = r#"{"message":"401 Unauthorized"}"#;
/// A path below project 1 (g/app), the own project of TOK_APP, TOK_CANCELING and TOK_DONE.
const OWN: &str = "/api/v4/projects/1/repository/files/x";
/// A path below project 4 (g/other), the own project of TOK_OTHER.
const OTHER_OWN: &str = "/api/v4/projects/4/repository/files/x";

fn with_yaml(extra: &str) -> Options {
    Options::new(&format!("{PROJECTS}{extra}"))
}

/// Asserts a 503 with GitLab's shape, nothing forwarded.
async fn assert_unavailable(h: &Harness, resp: reqwest::Response) {
    let body = h.assert_denied(resp, 503).await;
    assert_eq!(body, UNAVAILABLE);
}

#[tokio::test]
async fn a_canceling_jobs_token_is_live() {
    let h = Harness::start().await;
    let r = h.get_job(OWN, TOK_CANCELING).await;
    let rec = h.assert_forwarded(r).await;
    assert_eq!(rec.uri, OWN);
    // Forwarded unchanged: the forge checks the token itself.
    assert_eq!(rec.headers["job-token"], TOK_CANCELING);
    assert_eq!(h.forge.job_lookup_count(), 1);
    h.stop().await;
}

#[tokio::test]
async fn a_finished_jobs_token_is_401_and_never_forwarded() {
    let h = Harness::start().await;
    for _ in 0..2 {
        let r = h.get_job(OWN, TOK_DONE).await;
        assert_eq!(
            r.headers()["content-type"],
            "application/json",
            "a GitLab-shaped answer"
        );
        let body = h.assert_denied(r, 401).await;
        assert_eq!(body, UNAUTHORIZED);
    }
    // "Finished" is definitive: the second request was answered from the cache.
    assert_eq!(h.forge.job_lookup_count(), 1);
    h.stop().await;
}

/// Each troubled answer of `/api/v4/job` → 503, nothing forwarded, nothing cached: once the
/// forge is well again the very next request is allowed, after a new look-up.
async fn forge_trouble_is_503_and_not_cached(mode: JobApi) {
    let h = Harness::start().await;
    h.forge.set_job_api(mode);
    assert_unavailable(&h, h.get_job(OWN, TOK_APP).await).await;
    assert_eq!(h.forge.job_lookup_count(), 1, "{mode:?}");
    // Not cached: the second request asks again, and is refused again.
    assert_unavailable(&h, h.get_job(OWN, TOK_APP).await).await;
    assert_eq!(
        h.forge.job_lookup_count(),
        2,
        "{mode:?}: the failure was cached"
    );

    h.forge.set_job_api(JobApi::Normal);
    let rec = h.assert_forwarded(h.get_job(OWN, TOK_APP).await).await;
    assert_eq!(rec.uri, OWN);
    assert_eq!(h.forge.job_lookup_count(), 3, "{mode:?}: no new look-up");
    assert_eq!(metric(&h, "scopegate_job_lookups_total").await, 3);
    assert_eq!(metric(&h, "scopegate_lookup_failures_total").await, 2);
    // The success is cached.
    h.forge.clear();
    h.assert_forwarded(h.get_job(OWN, TOK_APP).await).await;
    assert_eq!(h.forge.job_lookup_count(), 0);
    h.stop().await;
}

#[tokio::test]
async fn forge_500_is_503_and_not_cached() {
    forge_trouble_is_503_and_not_cached(JobApi::Status(500)).await;
}

#[tokio::test]
async fn forge_502_is_503_and_not_cached() {
    forge_trouble_is_503_and_not_cached(JobApi::Status(502)).await;
}

#[tokio::test]
async fn forge_403_is_503_and_not_cached() {
    forge_trouble_is_503_and_not_cached(JobApi::Status(403)).await;
}

#[tokio::test]
async fn forge_404_is_503_and_not_cached() {
    forge_trouble_is_503_and_not_cached(JobApi::Status(404)).await;
}

#[tokio::test]
async fn forge_429_is_503_and_not_cached() {
    forge_trouble_is_503_and_not_cached(JobApi::Status(429)).await;
}

#[tokio::test]
async fn forge_301_is_503_and_not_cached() {
    forge_trouble_is_503_and_not_cached(JobApi::Status(301)).await;
}

#[tokio::test]
async fn malformed_job_json_is_503_and_not_cached() {
    forge_trouble_is_503_and_not_cached(JobApi::Malformed).await;
}

#[tokio::test]
async fn a_hanging_forge_is_503_within_the_response_timeout() {
    let h = Harness::with(with_yaml("limits:\n  upstream_response_timeout: 200ms\n")).await;
    h.forge.set_job_api(JobApi::Hang);
    for _ in 0..2 {
        let started = Instant::now();
        let r = h.get_job(OWN, TOK_APP).await;
        let took = started.elapsed();
        assert_unavailable(&h, r).await;
        assert!(
            took >= Duration::from_millis(200),
            "answered before the timeout: {took:?}"
        );
        // The timeout is 200 ms; a generous bound that still proves it is not the default 60 s.
        assert!(took < Duration::from_secs(5), "took {took:?}");
    }
    assert_eq!(h.forge.job_lookup_count(), 2, "a timeout was cached");
    h.forge.set_job_api(JobApi::Normal);
    h.assert_forwarded(h.get_job(OWN, TOK_APP).await).await;
    assert_eq!(h.forge.job_lookup_count(), 3);
    h.stop().await;
}

#[tokio::test]
async fn a_forge_that_is_down_is_503_for_token_requests() {
    let mut h = Harness::start().await;
    // A working request first, so the gateway has a pooled connection to the forge.
    h.assert_forwarded(h.get_job(OWN, TOK_APP).await).await;
    let down = std::mem::replace(
        &mut h.forge,
        FakeForge::start(world()).await.expect("spare forge"),
    );
    down.stop().await;

    for _ in 0..2 {
        let r = h.get_job(OTHER_OWN, TOK_OTHER).await;
        let status = r.status().as_u16();
        let body = r.text().await.unwrap_or_default();
        // 503 (the look-up failed, nothing forwarded), not 502 (a forwarding failure).
        assert_eq!(status, 503, "{body}");
        assert_eq!(body, UNAVAILABLE);
    }
    // The same forge is really gone for forwarding too: a request without a token is a 502.
    let r = h.get("/api/v4/projects/4", &[]).await;
    assert_eq!(r.status().as_u16(), 502);
    h.assert_untouched();
    h.stop().await;
}

#[tokio::test]
async fn concurrent_first_requests_share_one_look_up() {
    const N: usize = 50;
    let h = Harness::start().await;
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(N));
    let url = h.url(OTHER_OWN);
    let tasks: Vec<_> = (0..N)
        .map(|_| {
            let (client, url, barrier) = (h.http.clone(), url.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                let r = client
                    .get(url)
                    .header("JOB-TOKEN", TOK_OTHER)
                    .send()
                    .await
                    .expect("request completes");
                r.status().as_u16()
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.expect("task"), 200);
    }
    assert_eq!(h.forge.job_lookup_count(), 1);
    assert_eq!(h.forge.requests().len(), N);
    h.stop().await;
}

#[tokio::test]
async fn a_live_token_is_cached() {
    let h = Harness::start().await;
    h.assert_forwarded(h.get_job(OWN, TOK_APP).await).await;
    assert_eq!(h.forge.job_lookup_count(), 1);
    h.forge.clear();
    h.assert_forwarded(h.get_job(OWN, TOK_APP).await).await;
    assert_eq!(
        h.forge.job_lookup_count(),
        0,
        "the second request asked again"
    );
    assert_eq!(metric(&h, "scopegate_job_lookups_total").await, 1);
    assert_eq!(metric(&h, "scopegate_lookup_failures_total").await, 0);
    h.stop().await;
}

#[tokio::test]
async fn a_candidate_that_is_no_job_token_is_forwarded_and_negatively_cached() {
    let h = Harness::start().await;
    let headers = [("PRIVATE-TOKEN", "someopaquevalue")];
    let rec = h.assert_forwarded(h.get(OWN, &headers).await).await;
    assert_eq!(rec.headers["private-token"], "someopaquevalue");
    assert_eq!(
        h.forge.job_lookup_count(),
        1,
        "an opaque candidate is looked up"
    );
    h.forge.clear();
    let rec = h.assert_forwarded(h.get(OWN, &headers).await).await;
    assert_eq!(rec.headers["private-token"], "someopaquevalue");
    assert_eq!(h.forge.job_lookup_count(), 0, "not negatively cached");
    h.stop().await;
}

#[tokio::test]
async fn answers_expire_after_their_ttl() {
    let h = Harness::with(with_yaml("cache: { ttl: 50ms, negative_ttl: 50ms }\n")).await;
    let opaque = [("PRIVATE-TOKEN", "someopaquevalue")];
    h.assert_forwarded(h.get_job(OWN, TOK_APP).await).await;
    h.forge.clear();
    h.assert_forwarded(h.get(OWN, &opaque).await).await;
    h.forge.clear();
    // The expiry itself is under test here, not a stand-in for synchronisation.
    tokio::time::sleep(Duration::from_millis(80)).await;
    h.assert_forwarded(h.get_job(OWN, TOK_APP).await).await;
    assert_eq!(
        h.forge.job_lookup_count(),
        1,
        "live answer outlived cache.ttl"
    );
    h.forge.clear();
    h.assert_forwarded(h.get(OWN, &opaque).await).await;
    assert_eq!(
        h.forge.job_lookup_count(),
        1,
        "negative answer outlived cache.negative_ttl"
    );
    h.stop().await;
}

#[tokio::test]
async fn the_look_up_charges_the_client_and_identifies_scopegate() {
    let h = Harness::start().await;
    // A client-supplied X-Forwarded-For is not believed (127.0.0.1 is no trusted proxy).
    let r = h
        .get(
            OWN,
            &[("JOB-TOKEN", TOK_APP), ("X-Forwarded-For", "203.0.113.7")],
        )
        .await;
    h.assert_forwarded(r).await;
    let lookups = h.forge.lookups();
    assert_eq!(lookups.len(), 1, "{:?}", uris(&lookups));
    let l = &lookups[0];
    assert_eq!((l.method.as_str(), l.uri.as_str()), ("GET", "/api/v4/job"));
    assert_eq!(l.headers["job-token"], TOK_APP);
    assert_eq!(l.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(l.headers.get_all("x-forwarded-for").iter().count(), 1);
    let ua = l.headers["user-agent"].to_str().expect("ascii");
    assert_eq!(
        ua,
        format!("{LOOKUP_USER_AGENT_PREFIX}{}", env!("CARGO_PKG_VERSION"))
    );
    // Nothing of the client's request leaks into the look-up; no service token is configured.
    assert!(!l.headers.contains_key("private-token"));
    assert!(!l.headers.contains_key("authorization"));
    h.stop().await;
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_look_up_charges_the_proxys_client() {
    let h = Harness::with(with_yaml("trusted_proxies: [127.0.0.1]\n")).await;
    let r = h
        .get(
            OWN,
            &[("JOB-TOKEN", TOK_APP), ("X-Forwarded-For", "203.0.113.7")],
        )
        .await;
    h.assert_forwarded(r).await;
    let lookups = h.forge.lookups();
    assert_eq!(lookups.len(), 1);
    assert_eq!(lookups[0].headers["x-forwarded-for"], "203.0.113.7");
    h.stop().await;
}

#[tokio::test]
async fn with_a_service_token_project_look_ups_carry_it_and_job_look_ups_do_not() {
    let mut opts = Options::new(PROJECTS);
    opts.service_token = true;
    let h = Harness::with(opts).await;
    let r = h
        .get_job("/api/v4/projects/2/repository/files/x", TOK_APP)
        .await;
    let rec = h.assert_forwarded(r).await;
    assert_eq!(rec.uri, "/api/v4/projects/2/repository/files/x");
    let lookups = h.forge.lookups();
    let project_lookups: Vec<_> = lookups
        .iter()
        .filter(|l| l.path().starts_with("/api/v4/projects/"))
        .collect();
    assert!(!project_lookups.is_empty(), "{:?}", uris(&lookups));
    for l in &lookups {
        if l.path() == "/api/v4/job" {
            assert!(!l.headers.contains_key("private-token"), "job look-up");
            assert_eq!(l.headers["job-token"], TOK_APP);
        } else {
            assert_eq!(l.headers["private-token"], SERVICE_TOKEN, "{}", l.uri);
            assert!(!l.headers.contains_key("job-token"), "{}", l.uri);
        }
    }
    h.stop().await;
}

#[tokio::test]
async fn under_a_relative_url_root_look_ups_go_below_it() {
    let mut opts = Options::new(PROJECTS);
    opts.data.base_url_path = "/gitlab".into();
    opts.upstream_extra = "  relative_url_root: /gitlab\n".into();
    let h = Harness::with(opts).await;
    let path = "/gitlab/api/v4/projects/2/repository/files/x";
    let rec = h.assert_forwarded(h.get_job(path, TOK_APP).await).await;
    assert_eq!(rec.uri, path, "the raw path is forwarded, root included");
    let lookups = h.forge.lookups();
    assert_eq!(uris(&lookups), ["/gitlab/api/v4/job"]);
    assert_eq!(h.forge.job_lookup_count(), 1);
    // And the job's project path was read from a web_url below the root: TOK_OTHER (g/other)
    // is still refused g/secret.
    h.forge.clear();
    let body = h.assert_denied(h.get_job(path, TOK_OTHER).await, 404).await;
    assert_eq!(body, r#"{"message":"404 Project Not Found"}"#);
    h.stop().await;
}

/// One unlabelled counter from the admin listener's `/metrics`.
async fn metric(h: &Harness, name: &str) -> u64 {
    let admin = h.gw.admin_addr.expect("admin listener");
    let text = h
        .http
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

fn uris(recs: &[scopegate::demo::forge::Recorded]) -> Vec<String> {
    recs.iter().map(|r| r.uri.clone()).collect()
}

/// A reload that changes only policy (an allowlist) keeps the job cache: live tokens are not
/// all sent back to the forge at once. One that changes how answers are cached (a TTL) starts
/// an empty cache, so the new TTL applies to every entry.
#[tokio::test]
async fn a_policy_reload_keeps_the_job_cache_and_a_ttl_change_empties_it() {
    let h = Harness::start().await;
    h.assert_forwarded(h.get_job(OWN, TOK_APP).await).await;
    assert_eq!(h.forge.job_lookup_count(), 1);

    let config = |extra: &str| {
        let yaml = format!(
            "listen: 127.0.0.1:0\nupstream:\n  url: {}\n{}{extra}",
            h.forge.url(),
            PROJECTS.replacen("projects: [g/app]", "projects: [g/app, g/other]", 1)
        );
        scopegate::Config::from_yaml_str(&yaml, std::path::Path::new("reload.yaml"))
            .unwrap_or_else(|e| panic!("config: {e}"))
    };
    h.gw.reload(config("")).expect("policy reload");
    h.forge.clear();
    // The new allowlist is in force (g/other may now reach g/secret) …
    h.assert_forwarded(
        h.get_job("/api/v4/projects/2/repository/files/x", TOK_OTHER)
            .await,
    )
    .await;
    assert_eq!(h.forge.job_lookup_count(), 1, "TOK_OTHER was new");
    h.forge.clear();
    // … and TOK_APP is still known without asking the forge.
    h.assert_forwarded(h.get_job(OWN, TOK_APP).await).await;
    assert_eq!(
        h.forge.job_lookup_count(),
        0,
        "the cache survived the reload"
    );

    h.gw.reload(config("cache:\n  ttl: 20s\n"))
        .expect("ttl reload");
    h.forge.clear();
    h.assert_forwarded(h.get_job(OWN, TOK_APP).await).await;
    assert_eq!(
        h.forge.job_lookup_count(),
        1,
        "a new TTL starts an empty cache"
    );
    h.stop().await;
}
