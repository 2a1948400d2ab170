//! Token → job identity through the forge's own `GET /api/v4/job` (SPEC §2), cached.
//!
//! The cache is keyed by a SHA-256 of the token (the token itself is never stored), keeps
//! definitive answers only (live job: `cache.ttl`; no job token: `cache.negative_ttl`; a
//! finished job is as definitive as "not a job token" and shares its TTL), never caches a
//! failure, and makes concurrent first requests for one token share a single look-up.
//!
//! Metrics: a candidate answered from a fresh entry is a cache hit; one that waits for the
//! forge is a miss, whether it sent the look-up or joined one already under way (it waited
//! on the forge all the same). `scopegate_job_lookups_total` counts the look-ups actually
//! sent, so misses minus look-ups is what single flight saved.

use crate::admin::Metrics;
use crate::config::Config;
use crate::forge::{self, HttpClient, LookupFailure};
use crate::secret::Secret;
use dashmap::DashMap;
use futures_util::future::{BoxFuture, FutureExt, Shared};
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::time::Instant;

/// The job a live token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobIdentity {
    pub job_id: u64,
    pub project_id: u64,
    /// The project's full path, lower-cased, from the job's `web_url`. Shared: the cached
    /// answer is cloned into every request the token makes.
    pub project_path: std::sync::Arc<str>,
}

/// A definitive answer about one candidate value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// 200, status `running` or `canceling`.
    Live(JobIdentity),
    /// 200 in any other status: a job token that is no longer live (with its job's id, when
    /// the forge said it).
    Finished(Option<u64>),
    /// 401: not a job token (or skipped by format, see [`crate::credentials::is_known_non_job`]).
    NotJob,
}

type Pending = Shared<BoxFuture<'static, Result<Lookup, LookupFailure>>>;

enum Slot {
    Ready(Lookup, Instant),
    Pending(Pending),
}

/// The token cache with single-flight look-ups.
pub struct JobResolver {
    client: HttpClient,
    config: Arc<Config>,
    slots: Arc<DashMap<[u8; 32], Slot>>,
    /// Counts every `GET /api/v4/job` sent (`scopegate_job_lookups_total`).
    metrics: Arc<Metrics>,
}

/// Candidates longer than this are no GitLab token (job tokens are under 100 characters;
/// JWT wrappers are unpacked into their claims before this point), so they are answered
/// "not a job token" without sending kilobytes of attacker data to the forge.
pub const MAX_CANDIDATE_LEN: usize = 4096;

impl JobResolver {
    pub fn new(client: HttpClient, config: Arc<Config>, metrics: Arc<Metrics>) -> Self {
        JobResolver {
            client,
            config,
            slots: Arc::new(DashMap::new()),
            metrics,
        }
    }

    /// The resolver for a reloaded configuration: it keeps this one's cache when the new
    /// configuration would cache the same answers (same forge, same `relative_url_root`, same
    /// TTLs), so a reload — a ConfigMap edit, an allowlist change — does not send every live
    /// token back to the forge at once. Job facts do not depend on the allowlists, only on
    /// which forge answered and how its `web_url` is read.
    pub fn reloaded(&self, client: HttpClient, config: Arc<Config>) -> JobResolver {
        let (old, new) = (&self.config, &config);
        let same = old.upstream.url == new.upstream.url
            && old.upstream.relative_url_root == new.upstream.relative_url_root
            && old.cache.ttl == new.cache.ttl
            && old.cache.negative_ttl == new.cache.negative_ttl;
        JobResolver {
            client,
            config,
            slots: if same {
                self.slots.clone()
            } else {
                Arc::new(DashMap::new())
            },
            metrics: self.metrics.clone(),
        }
    }

    /// Number of cached entries (ready or pending); for metrics and tests.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// What `token` is when the cache holds a fresh answer: no waiting, no look-up started
    /// (counted as a cache hit). `None`: ask [`lookup`](Self::lookup).
    pub fn cached(&self, token: &Secret) -> Option<Lookup> {
        if token.expose().len() > MAX_CANDIDATE_LEN {
            return Some(Lookup::NotJob);
        }
        let slot = self.slots.get(&token.digest())?;
        match &*slot {
            Slot::Ready(answer, expires) if *expires > Instant::now() => {
                self.metrics.job_cache_hits.fetch_add(1, Ordering::Relaxed);
                Some(answer.clone())
            }
            _ => None,
        }
    }

    /// What `token` is, from the cache or one shared look-up. `client` is charged by the
    /// forge's rate limits through `X-Forwarded-For`.
    pub async fn lookup(&self, token: &Secret, client: IpAddr) -> Result<Lookup, LookupFailure> {
        if token.expose().len() > MAX_CANDIDATE_LEN {
            return Ok(Lookup::NotJob);
        }
        let key = token.digest();
        // Fast path under a read lock: a fresh answer or a look-up already under way.
        if let Some(slot) = self.slots.get(&key) {
            match &*slot {
                Slot::Ready(answer, expires) if *expires > Instant::now() => {
                    self.metrics.job_cache_hits.fetch_add(1, Ordering::Relaxed);
                    return Ok(answer.clone());
                }
                Slot::Pending(p) => {
                    let p = p.clone();
                    drop(slot);
                    self.metrics
                        .job_cache_misses
                        .fetch_add(1, Ordering::Relaxed);
                    return p.await;
                }
                Slot::Ready(..) => {}
            }
        }
        let header = match http::HeaderValue::from_str(token.expose()) {
            Ok(mut v) => {
                v.set_sensitive(true);
                v
            }
            // A value that cannot travel in a header is no token the forge issued (and so
            // never reaches the cache the fast path reads).
            Err(_) => return Ok(Lookup::NotJob),
        };
        let pending = {
            let now = Instant::now();
            let mut entry = self
                .slots
                .entry(key)
                .or_insert_with(|| Slot::Pending(self.start_lookup(key, header.clone(), client)));
            match &*entry {
                Slot::Ready(answer, expires) if *expires > now => {
                    self.metrics.job_cache_hits.fetch_add(1, Ordering::Relaxed);
                    return Ok(answer.clone());
                }
                Slot::Ready(..) => {
                    let fresh = self.start_lookup(key, header, client);
                    *entry = Slot::Pending(fresh.clone());
                    fresh
                }
                Slot::Pending(p) => p.clone(),
            }
        };
        self.metrics
            .job_cache_misses
            .fetch_add(1, Ordering::Relaxed);
        pending.await
    }

    /// Spawns the look-up so it completes (and fills the cache) even when the request that
    /// started it goes away; every concurrent asker awaits the same shared result.
    fn start_lookup(&self, key: [u8; 32], token: http::HeaderValue, client_ip: IpAddr) -> Pending {
        let client = self.client.clone();
        let config = self.config.clone();
        let slots = self.slots.clone();
        self.metrics.job_lookups.fetch_add(1, Ordering::Relaxed);
        let metrics = self.metrics.clone();
        let task = tokio::spawn(async move {
            let result = fetch_job(&client, &config, token, client_ip).await;
            let now = Instant::now();
            match &result {
                Ok(answer) => {
                    let ttl = match answer {
                        Lookup::Live(_) => config.cache.ttl,
                        Lookup::Finished(_) | Lookup::NotJob => config.cache.negative_ttl,
                    };
                    slots.insert(key, Slot::Ready(answer.clone(), now + ttl));
                }
                Err(failure) => {
                    slots.remove(&key);
                    if matches!(failure, LookupFailure::Unreachable | LookupFailure::Timeout) {
                        // Readiness should not wait for the next periodic probe to notice.
                        metrics.probe_now.notify_one();
                    }
                }
            }
            result
        });
        async move { task.await.unwrap_or(Err(LookupFailure::Unreachable)) }
            .boxed()
            .shared()
    }

    /// Drops expired entries; run periodically so a stream of one-off junk candidates cannot
    /// grow the cache without bound.
    pub fn purge_expired(&self) {
        let now = Instant::now();
        self.slots
            .retain(|_, slot| !matches!(slot, Slot::Ready(_, expires) if *expires <= now));
    }
}

async fn fetch_job(
    client: &HttpClient,
    config: &Config,
    token: http::HeaderValue,
    client_ip: IpAddr,
) -> Result<Lookup, LookupFailure> {
    let uri = forge::api_uri(config, "/api/v4/job").map_err(|_| LookupFailure::Malformed)?;
    let mut headers = http::HeaderMap::new();
    headers.insert("job-token", token);
    if let Ok(v) = http::HeaderValue::from_str(&client_ip.to_string()) {
        headers.insert("x-forwarded-for", v);
    }
    let answer = forge::get(
        client,
        uri,
        headers,
        config.limits.upstream_response_timeout,
    )
    .await?;
    match answer.status.as_u16() {
        200 => parse_job(&answer.body, &config.upstream.relative_url_root),
        401 => Ok(Lookup::NotJob),
        other => Err(LookupFailure::Status(other)),
    }
}

/// Reads GitLab's job JSON: `id`, `status`, `pipeline.project_id`, `web_url`.
pub fn parse_job(body: &[u8], relative_url_root: &str) -> Result<Lookup, LookupFailure> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| LookupFailure::Malformed)?;
    let status = v
        .get("status")
        .and_then(|s| s.as_str())
        .ok_or(LookupFailure::Malformed)?;
    if !matches!(status, "running" | "canceling") {
        return Ok(Lookup::Finished(v.get("id").and_then(|s| s.as_u64())));
    }
    let job_id = v
        .get("id")
        .and_then(|s| s.as_u64())
        .ok_or(LookupFailure::Malformed)?;
    let project_id = v
        .get("pipeline")
        .and_then(|p| p.get("project_id"))
        .and_then(|s| s.as_u64())
        .ok_or(LookupFailure::Malformed)?;
    let web_url = v
        .get("web_url")
        .and_then(|s| s.as_str())
        .ok_or(LookupFailure::Malformed)?;
    let project_path =
        project_path_from_web_url(web_url, relative_url_root).ok_or(LookupFailure::Malformed)?;
    Ok(Lookup::Live(JobIdentity {
        job_id,
        project_id,
        project_path: project_path.into(),
    }))
}

/// `https://host/root/g/sub/p/-/jobs/8` → `g/sub/p`.
fn project_path_from_web_url(web_url: &str, relative_url_root: &str) -> Option<String> {
    let uri: http::Uri = web_url.parse().ok()?;
    let path = uri.path();
    let path = path.strip_prefix(relative_url_root).unwrap_or(path);
    let (project, _) = path.split_once("/-/jobs/")?;
    let project = project.trim_matches('/');
    let segments: Vec<&str> = project.split('/').collect();
    let valid = segments.len() >= 2
        && segments.iter().all(|s| {
            let mut chars = s.chars();
            matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        });
    valid.then(|| project.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_live_job() {
        let body = br#"{"id":8,"status":"running","web_url":"http://f/gitlab/G/Sub/P/-/jobs/8","pipeline":{"id":3,"project_id":12}}"#;
        assert_eq!(
            parse_job(body, "/gitlab").ok(),
            Some(Lookup::Live(JobIdentity {
                job_id: 8,
                project_id: 12,
                project_path: "g/sub/p".into()
            }))
        );
    }

    #[test]
    fn canceling_is_live_and_other_statuses_are_finished() {
        let live = br#"{"id":8,"status":"canceling","web_url":"http://f/g/p/-/jobs/8","pipeline":{"project_id":1}}"#;
        assert!(matches!(parse_job(live, ""), Ok(Lookup::Live(_))));
        for status in [
            "success", "failed", "canceled", "created", "pending", "manual",
        ] {
            let body = format!(r#"{{"id":8,"status":"{status}","pipeline":{{"project_id":1}}}}"#);
            assert_eq!(
                parse_job(body.as_bytes(), "").ok(),
                Some(Lookup::Finished(Some(8)))
            );
        }
    }

    #[test]
    fn malformed_answers_are_failures() {
        for body in [
            &b"not json"[..],
            br#"{"status":"running"}"#,
            br#"{"id":8,"status":"running","web_url":"http://f/g/p/-/jobs/8"}"#,
            br#"{"id":8,"status":"running","web_url":"http://f/p/-/jobs/8","pipeline":{"project_id":1}}"#,
            br#"{"id":8,"status":"running","web_url":"http://f/g/p/jobs/8","pipeline":{"project_id":1}}"#,
            br#"{"id":"8","status":"running","web_url":"http://f/g/p/-/jobs/8","pipeline":{"project_id":1}}"#,
        ] {
            assert!(parse_job(body, "").is_err());
        }
    }
}
