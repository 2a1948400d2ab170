//! End-to-end throughput: the same load sent straight to an upstream, through scopegate, and
//! (when `nginx` is installed) through nginx as a plain reverse proxy, all in one run on one
//! machine. Results are printed as ratios against the direct baseline, because absolute
//! numbers on a shared, noisy machine mean little.
//!
//! `cargo bench --bench gateway` (env `BENCH_REQUESTS`, default 20000; `BENCH_CONCURRENCY`,
//! default 32).

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const TOKEN: &str = "glcbt-64_BenchJobTokenAAAAAAAAAAAA";

/// A minimal forge: answers the job look-up for TOKEN and 200 with a small JSON otherwise.
async fn upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                    let body = if req.uri().path() == "/api/v4/job" {
                        if req.headers().get("job-token").map(|v| v.as_bytes())
                            == Some(TOKEN.as_bytes())
                        {
                            r#"{"id":7,"status":"running","web_url":"http://f/g/app/-/jobs/7","pipeline":{"project_id":1}}"#
                        } else {
                            return Ok::<_, Infallible>(
                                hyper::Response::builder()
                                    .status(401)
                                    .body(Full::new(Bytes::from_static(
                                        b"{\"message\":\"401 Unauthorized\"}",
                                    )))
                                    .expect("response"),
                            );
                        }
                    } else {
                        r#"{"id":2,"name":"secret","default_branch":"main"}"#
                    };
                    Ok(hyper::Response::builder()
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from_static(body.as_bytes())))
                        .expect("response"))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// Requests per second for `total` GETs of `path` at `concurrency`, with optional JOB-TOKEN.
async fn load(
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
    total: usize,
    concurrency: usize,
    expect: u16,
) -> f64 {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(concurrency)
        .build_http();
    let client = Arc::new(client);
    let uri: hyper::Uri = format!("http://{addr}{path}").parse().expect("uri");
    let per = total / concurrency;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let client = client.clone();
        let uri = uri.clone();
        let token = token.map(str::to_owned);
        tasks.push(tokio::spawn(async move {
            for _ in 0..per {
                let mut req = hyper::Request::get(uri.clone());
                if let Some(t) = &token {
                    req = req.header("JOB-TOKEN", t.as_str());
                }
                let resp = client
                    .request(req.body(Empty::new()).expect("req"))
                    .await
                    .expect("response");
                assert_eq!(resp.status().as_u16(), expect);
                let _ = resp.into_body().collect().await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    (per * concurrency) as f64 / start.elapsed().as_secs_f64()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// nginx as a plain reverse proxy in front of the same upstream, if nginx is installed.
fn start_nginx(dir: &Path, upstream: SocketAddr) -> Option<(std::process::Child, SocketAddr)> {
    let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| Path::new(p).exists())?;
    let port = free_port();
    let conf = format!(
        "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{ worker_connections 1024; }}\n\
         http {{ access_log off; client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};\n\
         upstream forge {{ server {upstream}; keepalive 64; }}\n\
         server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://forge; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }} }}\n",
        d = dir.display()
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).ok()?;
    let child = std::process::Command::new(nginx)
        .args(["-c", path.to_str()?, "-g", "daemon off;"])
        .spawn()
        .ok()?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().ok()?;
    for _ in 0..100 {
        if std::net::TcpStream::connect(addr).is_ok() {
            return Some((child, addr));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}

fn main() {
    let total: usize = std::env::var("BENCH_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let concurrency: usize = std::env::var("BENCH_CONCURRENCY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let up = upstream().await;
        let yaml = format!(
            "listen: 127.0.0.1:0\nupstream:\n  url: http://{up}\nprojects:\n  - id: 2\n    path: g/secret\n    inbound:\n      projects: [g/app]\n  - id: 4\n    path: g/other\n"
        );
        let config = scopegate::Config::from_yaml_str(&yaml, Path::new("bench.yaml")).expect("config");
        let gw = scopegate::start(config).await.expect("gateway");
        let dir = tempfile::tempdir().expect("tempdir");
        let nginx = start_nginx(dir.path(), up);

        // Warm-up: connections, the token cache.
        load(gw.addr, "/api/v4/projects/2", Some(TOKEN), 256, 8, 200).await;
        let rss_before = peak_rss_kib();

        let direct = load(up, "/api/v4/projects/2", None, total, concurrency, 200).await;
        let via_plain = load(gw.addr, "/api/v4/projects/2", None, total, concurrency, 200).await;
        let via_token = load(gw.addr, "/api/v4/projects/2", Some(TOKEN), total, concurrency, 200).await;
        let via_denied = load(gw.addr, "/api/v4/projects/4", Some(TOKEN), total, concurrency, 404).await;
        let via_nginx = match &nginx {
            Some((_, addr)) => Some(load(*addr, "/api/v4/projects/2", None, total, concurrency, 200).await),
            None => None,
        };
        println!("requests per scenario: {total}, concurrency {concurrency}");
        println!("{:<44} {:>10} {:>8}", "scenario", "req/s", "ratio");
        let row = |name: &str, v: f64| println!("{name:<44} {v:>10.0} {:>8.2}", v / direct);
        row("direct to upstream (baseline)", direct);
        if let Some(n) = via_nginx {
            row("nginx proxy_pass, no token", n);
        } else {
            println!("{:<44} {:>10}", "nginx proxy_pass, no token", "(nginx not installed)");
        }
        row("scopegate, no token (forwarded)", via_plain);
        row("scopegate, job token, allowed (cached)", via_token);
        row("scopegate, job token, denied 404 (cached)", via_denied);
        if let Some(n) = via_nginx {
            println!("scopegate/nginx (no token): {:.2}", via_plain / n);
        }
        println!(
            "peak RSS of this process (client, upstream and gateway together): {} KiB, grew {} KiB during the runs",
            peak_rss_kib(),
            peak_rss_kib().saturating_sub(rss_before)
        );
        gw.shutdown().await;
        if let Some((mut child, _)) = nginx {
            let _ = child.kill();
            let _ = child.wait();
        }
    });
}
