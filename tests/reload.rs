//! Hot reload under load, with the real binary (SPEC §5: "in-flight requests are never
//! dropped by a reload"): clients keep sending requests on keep-alive connections while the
//! config file is replaced and SIGHUP is sent, ten times, good and broken versions in turn.
//! Nothing sleeps in place of synchronisation: after each reload the test waits (polling the
//! admin port, bounded) until `scopegate_config_generation` or
//! `scopegate_reload_failures_total` says the reload happened, then checks the decision.

mod process;
mod support;

use process::Proc;
use scopegate::demo::forge::FakeForge;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{world, PROJECTS, TOK_APP, TOK_OTHER};

const NOT_FOUND: &str = r#"{"message":"404 Project Not Found"}"#;

/// The gateway's config in front of `forge`; `other_in` lets g/other into g/secret (project 2)
/// beside g/app. Both listeners on port 0; the log names the bound ports.
fn config(forge: &FakeForge, other_in: bool) -> String {
    const FROM: &str = "projects: [g/app]";
    assert_eq!(
        PROJECTS.matches(FROM).count(),
        1,
        "support::PROJECTS changed"
    );
    let projects = if other_in {
        PROJECTS.replacen(FROM, "projects: [g/app, g/other]", 1)
    } else {
        PROJECTS.to_owned()
    };
    format!(
        "listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\nupstream:\n  url: {}\n{projects}",
        forge.url()
    )
}

/// Replaces `path` atomically (write beside it, rename over it), as a deployment tool does:
/// the file watcher never reads a half-written file, so each version is exactly one reload.
fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).expect("write config");
    std::fs::rename(&tmp, path).expect("rename config");
}

/// One sample of the admin port's `/metrics`, by unlabelled series name.
async fn metric(client: &reqwest::Client, admin: &str, name: &str) -> u64 {
    let text = client
        .get(format!("{admin}/metrics"))
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics body");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
}

/// Polls `/metrics` (bounded) until `name` reaches `want`; fails if it goes past it (a reload
/// counted twice) or the deadline passes.
async fn wait_metric(client: &reqwest::Client, admin: &str, name: &str, want: u64, proc: &Proc) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let got = metric(client, admin, name).await;
        assert!(got <= want, "{name} is {got}, past {want}");
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} stuck at {got} (want {want}); stderr:\n{}",
            proc.stderr.text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn file_path(tag: &str) -> String {
    format!("/api/v4/projects/2/repository/files/{tag}/raw?ref=main")
}

/// What one background request saw.
struct Outcome {
    token: &'static str,
    path: String,
    result: Result<(u16, String), String>,
}

/// Sends requests until `stop`, alternating g/app's and g/other's tokens, each to a path of
/// its own so the forge's record tells which of them it received.
async fn load(
    client: reqwest::Client,
    base: String,
    worker: usize,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
) -> Vec<Outcome> {
    let mut seen = Vec::new();
    let mut n = 0usize;
    while !stop.load(Ordering::SeqCst) {
        for token in [TOK_APP, TOK_OTHER] {
            n += 1;
            let path = file_path(&format!("bg-{worker}-{n}"));
            let result = match client
                .get(format!("{base}{path}"))
                .header("JOB-TOKEN", token)
                .send()
                .await
            {
                Ok(r) => {
                    let status = r.status().as_u16();
                    r.text()
                        .await
                        .map(|body| (status, body))
                        .map_err(|e| format!("body: {e}"))
                }
                Err(e) => Err(format!("{e:?}")),
            };
            seen.push(Outcome {
                token,
                path,
                result,
            });
            done.fetch_add(1, Ordering::SeqCst);
        }
    }
    seen
}

/// One reload step and what must hold after it.
enum Step {
    /// Replace the file with a good version; g/other is let in or not.
    Good { other_in: bool },
    /// Replace the file with a broken version (its `marker` makes each one different).
    Broken { marker: &'static str },
    /// SIGHUP: reload whatever the file holds now.
    Hup,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_reloads_under_continuous_load_fail_no_request_and_switch_decisions() {
    let forge = FakeForge::start(world()).await.expect("forge starts");
    let dir = tempfile::tempdir().expect("tempdir");
    let path: PathBuf = dir.path().join("proxy.yaml");
    replace_file(&path, &config(&forge, false));
    let proc = Proc::run(&path);
    let (addr, admin) = proc.wait_listening_with_admin();
    let base = format!("http://{addr}");
    let admin = format!("http://{}", admin.expect("admin listener"));
    let probe = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");

    // Four workers, each with its own client: keep-alive connections that stay open across
    // every reload (a reload swaps the configuration, never the connections).
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let client = reqwest::Client::builder()
                .no_proxy()
                .pool_max_idle_per_host(4)
                .timeout(Duration::from_secs(10))
                .build()
                .expect("client");
            tokio::spawn(load(client, base.clone(), w, stop.clone(), done.clone()))
        })
        .collect();

    let steps = [
        Step::Good { other_in: true },
        Step::Broken { marker: "a" },
        Step::Hup,
        Step::Good { other_in: false },
        Step::Hup,
        Step::Broken { marker: "b" },
        Step::Good { other_in: true },
        Step::Hup,
        Step::Broken { marker: "c" },
        Step::Good { other_in: false },
    ];
    let (mut generation, mut failures, mut other_in) = (1u64, 0u64, false);
    let mut on_disk_is_good = true;
    let mut probes = 0usize;
    let mut decisions_seen = HashSet::new();
    for (i, step) in steps.iter().enumerate() {
        // The load is running as each reload happens: it has made progress since the last.
        let before = done.load(Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(15);
        while done.load(Ordering::SeqCst) < before + 8 {
            assert!(Instant::now() < deadline, "step {i}: the load stalled");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        match step {
            Step::Good { other_in: now } => {
                replace_file(&path, &config(&forge, *now));
                other_in = *now;
                on_disk_is_good = true;
                generation += 1;
            }
            Step::Broken { marker } => {
                // A duration without a unit: rejected by validation, with its position.
                let text = format!(
                    "{}cache:\n  ttl: 30\n# {marker}\n",
                    config(&forge, !other_in)
                );
                replace_file(&path, &text);
                on_disk_is_good = false;
                failures += 1;
            }
            Step::Hup => {
                proc.signal("HUP");
                if on_disk_is_good {
                    generation += 1;
                } else {
                    failures += 1;
                }
            }
        }
        wait_metric(
            &probe,
            &admin,
            "scopegate_config_generation",
            generation,
            &proc,
        )
        .await;
        wait_metric(
            &probe,
            &admin,
            "scopegate_reload_failures_total",
            failures,
            &proc,
        )
        .await;

        // The configuration in force decides, proven on paths only these probes use.
        probes += 1;
        let allowed = file_path(&format!("probe-{probes}-app"));
        let r = probe
            .get(format!("{base}{allowed}"))
            .header("JOB-TOKEN", TOK_APP)
            .send()
            .await
            .expect("probe");
        assert_eq!(r.status().as_u16(), 200, "step {i}: g/app is always let in");
        let other = file_path(&format!("probe-{probes}-other"));
        let r = probe
            .get(format!("{base}{other}"))
            .header("JOB-TOKEN", TOK_OTHER)
            .send()
            .await
            .expect("probe");
        let status = r.status().as_u16();
        let body = r.text().await.expect("body");
        let reached = |p: &str| forge.requests().iter().any(|r| r.uri == p);
        assert!(
            reached(&allowed),
            "step {i}: the allowed probe reached the forge"
        );
        if other_in {
            assert_eq!(status, 200, "step {i}: g/other is let in ({body})");
            assert!(reached(&other), "step {i}");
        } else {
            assert_eq!((status, body.as_str()), (404, NOT_FOUND), "step {i}");
            assert!(
                !reached(&other),
                "step {i}: a denied request reached the forge"
            );
        }
        decisions_seen.insert(status);
    }
    assert_eq!(decisions_seen, HashSet::from([200, 404]));
    assert_eq!((generation, failures), (7, 4));

    stop.store(true, Ordering::SeqCst);
    let mut outcomes = Vec::new();
    for w in workers {
        outcomes.extend(w.await.expect("worker"));
    }
    // Zero failed requests: every one answered, 200 for g/app, 200 or the forge-shaped 404
    // for g/other; a 404'd request never reached the forge, a 200'd one did.
    let received: HashSet<String> = forge.requests().into_iter().map(|r| r.uri).collect();
    let mut by_status = [0usize; 2];
    for o in &outcomes {
        let (status, body) = match &o.result {
            Ok(r) => r,
            Err(e) => panic!("{} failed across a reload: {e}", o.path),
        };
        match (o.token, *status) {
            (_, 200) => {
                assert!(
                    received.contains(&o.path),
                    "{} answered 200 unforwarded",
                    o.path
                );
                by_status[0] += 1;
            }
            (TOK_OTHER, 404) => {
                assert_eq!(body, NOT_FOUND);
                assert!(
                    !received.contains(&o.path),
                    "denied {} reached the forge",
                    o.path
                );
                by_status[1] += 1;
            }
            (token, status) => panic!("{} with {token}: {status} {body}", o.path),
        }
    }
    assert!(
        outcomes.len() >= 40,
        "the load ran throughout ({} requests)",
        outcomes.len()
    );
    eprintln!(
        "{} background requests across 10 reloads: {} allowed, {} denied, 0 failed",
        outcomes.len(),
        by_status[0],
        by_status[1]
    );
    // The broken versions were logged, the process is still serving.
    assert!(
        proc.stderr.text().contains("has no unit"),
        "{}",
        proc.stderr.text()
    );
    drop(proc);
    forge.stop().await;
}
