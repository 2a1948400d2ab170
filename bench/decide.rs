//! Micro-benchmarks of the pure core a job-token request goes through, without I/O:
//! credentials extraction ([`credentials`]), canonicalisation and classification
//! ([`canonical`], [`target`]), the resolver's config look-ups without a service token
//! ([`resolve::Resolver`]: source, target, directory) and the decision ([`policy::decide`]).
//!
//! Each request runs against a 10-project and a 10,000-project config (generated here, every
//! project with inbound projects and groups, loaded through the real config loader): the
//! decision must not grow with the size of `projects:`. The job-token look-up itself is a
//! cache hit keyed by a hash in production and is not part of this path.
//!
//! `cargo bench --bench decide` (criterion; `-- --quick` for a shorter run).

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use futures_util::FutureExt;
use http::{HeaderMap, HeaderValue, Method};
use scopegate::canonical;
use scopegate::config::{Config, Ref};
use scopegate::credentials::{self, Origin};
use scopegate::jobs::JobIdentity;
use scopegate::policy::{self, Decision};
use scopegate::resolve::Resolver;
use scopegate::target::{self, ClassParams};
use std::fmt::Write;
use std::path::Path;
use std::sync::Arc;

// The allocator the binary ships with (src/main.rs): the path measured here allocates, and
// glibc's malloc/free were a fifth of its time.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const TOKEN: &str = "glcbt-64_BenchJobTokenAAAAAAAAAAAA";
/// The job's project (S): id 1, in the group `ci/runners`.
const SOURCE_PATH: &str = "ci/runners/builder";

/// Project `i`'s full path.
fn project_path(i: usize) -> String {
    if i == 1 {
        return SOURCE_PATH.to_owned();
    }
    format!("grp{}/team{}/proj{i}", i % 50, i % 7)
}

/// `n` private projects. Every project `i ≥ 2` lists two projects (one by id, one by path)
/// and one group on its inbound allowlist; in addition project `i ≡ 2 (mod 3)` lists the
/// group `ci/runners` (so S gets in through a group), `i ≡ 0 (mod 3)` lists S by path, and
/// `i ≡ 1 (mod 3)` does not list S (denied). S's outbound scope is on and names 2 and 3.
fn config_yaml(n: usize) -> String {
    let mut y = String::from("upstream: { url: \"http://127.0.0.1:3000\" }\nprojects:\n");
    for i in 1..=n {
        let _ = writeln!(y, "  - id: {i}\n    path: {}", project_path(i));
        if i == 1 {
            let _ = writeln!(
                y,
                "    outbound: {{ enabled: true, projects: [2, {}] }}",
                project_path(3)
            );
            continue;
        }
        let mut groups = vec![format!("grp{}/trusted", i % 50)];
        let mut projects = vec![(i + 1).to_string(), project_path(i + 2)];
        match i % 3 {
            2 => groups.push("ci/runners".to_owned()),
            0 => projects.push(SOURCE_PATH.to_owned()),
            _ => {}
        }
        let _ = writeln!(
            y,
            "    inbound: {{ projects: [{}], groups: [{}] }}",
            projects.join(", "),
            groups.join(", ")
        );
    }
    y
}

struct Request {
    name: &'static str,
    method: Method,
    path: String,
    query: Option<&'static str>,
    headers: HeaderMap,
    allowed: bool,
}

fn requests() -> Vec<Request> {
    let mut job_token = HeaderMap::new();
    job_token.insert("job-token", HeaderValue::from_static(TOKEN));
    job_token.insert("user-agent", HeaderValue::from_static("curl/8.5.0"));
    job_token.insert("accept", HeaderValue::from_static("*/*"));
    let mut basic = HeaderMap::new();
    // gitlab-ci-token:<TOKEN>, as git sends it.
    let encoded = base64_basic("gitlab-ci-token", TOKEN);
    basic.insert(
        "authorization",
        HeaderValue::from_str(&format!("Basic {encoded}")).expect("header"),
    );
    basic.insert("user-agent", HeaderValue::from_static("git/2.43.0"));
    vec![
        Request {
            name: "api_package_allowed",
            method: Method::GET,
            path: "/api/v4/projects/2/packages/generic/p/1/f.bin".into(),
            query: None,
            headers: job_token.clone(),
            allowed: true,
        },
        Request {
            name: "git_info_refs_allowed",
            method: Method::GET,
            path: format!("/{}.git/info/refs", project_path(3)),
            query: Some("service=git-upload-pack"),
            headers: basic,
            allowed: true,
        },
        Request {
            name: "api_denied",
            method: Method::GET,
            path: "/api/v4/projects/4/packages/generic/p/1/f.bin".into(),
            query: None,
            headers: job_token,
            allowed: false,
        },
    ]
}

fn base64_basic(user: &str, password: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
}

/// What the gateway holds per config generation.
struct Core {
    config: Arc<Config>,
    resolver: Resolver,
    job: JobIdentity,
}

impl Core {
    fn new(n: usize) -> Core {
        let config = Config::from_yaml_str(&config_yaml(n), Path::new("<bench>")).expect("config");
        let config = Arc::new(config);
        let client = scopegate::forge::build_client(&config).expect("client");
        Core {
            resolver: Resolver::new(client, config.clone()),
            config,
            job: JobIdentity {
                job_id: 7,
                project_id: 1,
                project_path: SOURCE_PATH.into(),
            },
        }
    }

    /// The gate's phases for one request, minus the job-token cache and the forwarding.
    fn decide(&self, req: &Request) -> Decision {
        let (target, shadow) = read(&self.config, req);
        self.resolve_decide(&target, shadow.as_ref())
    }

    /// Every resolver call must complete without I/O (`now_or_never`): without a service
    /// token, configured private projects are answered from the config.
    fn resolve_decide(&self, target: &target::Target, shadow: Option<&Ref>) -> Decision {
        let source = now(self.resolver.source(&self.job));
        let reference = shadow.or(target.project.as_ref()).expect("project");
        let t = now(self.resolver.target(reference, &source)).expect("target resolves");
        let dir = now(self.resolver.directory(&source, Some(&t), &[], &[]));
        policy::decide(self.resolver.index(), &dir, &source, &t, target.action)
    }
}

/// Extract and target, as the gate does them: the path read once (strictly, as with a job
/// token; leniently only if that refuses it), every credential in the head and the query,
/// the body's kind, and one classification giving both the lenient reading (logged, and used
/// before the token is known) and the strict one the decision takes.
fn read(config: &Config, req: &Request) -> (target::Target, Option<Ref>) {
    let path = canonical::canonicalize(&req.path, "", true).expect("path");
    let mut creds = credentials::from_headers(&req.headers);
    let params = req.query.map(credentials::parse_query).unwrap_or_default();
    creds.extend(credentials::credentials_from_params(&params, Origin::Query));
    assert_eq!(creds.len(), 1, "{}: one credential", req.name);
    let _kind = credentials::body_kind(&req.method, &req.headers).expect("content type");
    let classified =
        target::classify_request(&req.method, &path, &class_params(&params), &config.routes);
    black_box(&classified.lenient);
    let target = classified.into_strict().expect("classified");
    let shadow = target::repository_shadow(&path);
    black_box(creds.len());
    (target, shadow)
}

/// Only the credentials: headers and query.
fn extract(req: &Request) -> usize {
    let mut creds = credentials::from_headers(&req.headers);
    let params = req.query.map(credentials::parse_query).unwrap_or_default();
    creds.extend(credentials::credentials_from_params(&params, Origin::Query));
    creds.len()
}

/// Only the path: canonicalisation and classification.
fn classify(config: &Config, req: &Request) -> (target::Target, Option<Ref>) {
    let params = req.query.map(credentials::parse_query).unwrap_or_default();
    let path = canonical::canonicalize(&req.path, "", true).expect("path");
    let target =
        target::classify_request(&req.method, &path, &class_params(&params), &config.routes)
            .into_strict()
            .expect("classified");
    let shadow = target::repository_shadow(&path);
    (target, shadow)
}

fn class_params(params: &[credentials::Param]) -> ClassParams<'_> {
    ClassParams {
        service: credentials::single_value(params, "service").expect("one service"),
        lfs_operation: None,
        scopes: Vec::new(),
        registry_params: params
            .iter()
            .map(|p| (p.name.as_str(), p.value.as_str()))
            .collect(),
    }
}

/// Polls a resolver future once: it must not wait on the forge here.
fn now<T>(f: impl std::future::Future<Output = Result<T, scopegate::forge::LookupFailure>>) -> T {
    f.now_or_never()
        .expect("no I/O without a service token")
        .expect("no failure")
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = runtime.enter();
    let cores = [(10, Core::new(10)), (10_000, Core::new(10_000))];
    let requests = requests();
    let mut group = c.benchmark_group("decide");
    for req in &requests {
        for (n, core) in &cores {
            // The benchmark measures what it claims: the expected verdict, at both sizes.
            assert_eq!(
                core.decide(req).is_allow(),
                req.allowed,
                "{} at {n}",
                req.name
            );
            group.bench_with_input(BenchmarkId::new(req.name, n), req, |b, req| {
                b.iter(|| core.decide(black_box(req)))
            });
        }
    }
    group.finish();

    // Where a request's time goes, phase by phase (the allowed API request).
    let req = &requests[0];
    let mut phases = c.benchmark_group("phase");
    let core = &cores[1].1;
    phases.bench_function("extract", |b| b.iter(|| extract(black_box(req))));
    phases.bench_function("canonicalise_classify", |b| {
        b.iter(|| classify(&core.config, black_box(req)))
    });
    let (target, _) = classify(&core.config, req);
    for (n, core) in &cores {
        phases.bench_with_input(BenchmarkId::new("resolve_decide", n), &target, |b, t| {
            b.iter(|| core.resolve_decide(black_box(t), None))
        });
    }
    phases.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
