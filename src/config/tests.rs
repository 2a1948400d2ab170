use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use super::de::{parse_duration, parse_ref, parse_size, parse_upstream_url, parse_url_root};
use super::route_path::{is_forbidden, parse_route_path, FORBIDDEN_PROBES};
use super::*;

/// SPEC §5's example, verbatim.
const SPEC_EXAMPLE: &str = r##"
listen: 127.0.0.1:8080              # where clients connect
# tls: { cert: certs/gateway.pem, key: certs/gateway-key.pem }   # rustls termination
upstream:
  url: http://127.0.0.1:3000        # the forge; https:// uses rustls
  # relative_url_root: /gitlab      # when the forge lives under a path
  # ca: certs/forge-ca.pem          # extra roots for an https forge
  # token_env: SCOPEGATE_FORGE_TOKEN  # read_api service token for project/group look-ups
admin:
  listen: 127.0.0.1:9090            # /metrics (Prometheus), /healthz, /readyz
trusted_proxies: []                 # peers whose X-Forwarded-For is appended to rather than replaced
cache:
  ttl: 30s                          # live job tokens
  negative_ttl: 5s                  # "not a job token"
  project_ttl: 60s                  # project and group look-ups
tokens:
  instance_prefix: ""               # GitLab's custom token prefix, if the instance sets one
mode: enforce                       # enforce | audit
deny_response: not_found            # not_found (404) | forbidden (403 with reason, like GitLab 17+)
runner:
  dependencies: forge               # forge | strict (see §3)
projects:
  - id: 1
    path: g/p
    visibility: private             # private | internal | public (the forge's answer wins when it is stricter)
    # features: { repository: enabled, artifacts: private }   # only without a service token;
    #   keys repository, artifacts, packages, registry, releases, environments; values enabled | private | disabled
    inbound:                        # "Limit access to this project"
      enabled: true                 # default true: only listed projects (and itself) get in
      projects: [2, g/tools/lint]   # ids or full paths
      groups: [g/trusted]           # every project in the group and its subgroups
    outbound:                       # "Limit access from this project"
      enabled: false
      projects: []
    git_push: false
routes:                             # endpoints with no target project, opened for named sources only
  - methods: [GET]
    path: '^/api/v4/groups/42/-/packages/maven/'   # regex matched from the start of the decoded path ($ to match it whole)
    sources: { projects: [g/build], groups: [] }
limits:                             # defaults shown
  max_request_head: 64KiB           # request line + headers; larger → 431 (long URL → 414)
  inspect_body: 1MiB                # urlencoded/JSON bodies read whole for tokens; larger → 413
  header_read_timeout: 10s          # slowloris
  idle_timeout: 60s                 # keep-alive and idle stream bodies
  upstream_connect_timeout: 5s      # → 502
  upstream_response_timeout: 60s    # time to the response head → 504
  max_connections: 10000
log:
  format: text                      # text | json
auth_log:                           # optional: one JSON line per job-token request
  path: /var/log/scopegate/auth.jsonl
"##;

fn parse(yaml: &str) -> Config {
    match Config::from_yaml_str(yaml, Path::new("t.yaml")) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    }
}

fn err(yaml: &str) -> String {
    match Config::from_yaml_str(yaml, Path::new("t.yaml")) {
        Ok(_) => panic!("accepted:\n{yaml}"),
        Err(e) => e.to_string(),
    }
}

const UP: &str = "upstream:\n  url: http://127.0.0.1:3000\n";

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[test]
fn spec_example_parses() {
    let c = parse(SPEC_EXAMPLE);
    assert_eq!(c.source, Path::new("t.yaml"));
    assert_eq!(c.listen, "127.0.0.1:8080".parse::<SocketAddr>().unwrap());
    assert!(c.tls.is_none());
    assert_eq!(c.upstream.url.scheme_str(), Some("http"));
    assert_eq!(
        c.upstream.url.authority().unwrap().as_str(),
        "127.0.0.1:3000"
    );
    assert_eq!(c.upstream.relative_url_root, "");
    assert!(c.upstream.ca.is_none() && c.upstream.token_env.is_none());
    assert_eq!(
        c.admin.unwrap().listen,
        "127.0.0.1:9090".parse::<SocketAddr>().unwrap()
    );
    assert!(c.trusted_proxies.is_empty());
    assert_eq!(
        (c.cache.ttl, c.cache.negative_ttl, c.cache.project_ttl),
        (secs(30), secs(5), secs(60))
    );
    assert_eq!(c.instance_prefix, "");
    assert_eq!(c.mode, Mode::Enforce);
    assert_eq!(c.deny_response, DenyResponse::NotFound);
    assert_eq!(c.dependencies, Dependencies::Forge);
    assert_eq!(
        c.projects,
        vec![ProjectConfig {
            id: 1,
            path: Some("g/p".into()),
            visibility: Visibility::Private,
            features: Features::default(),
            inbound: Inbound {
                enabled: true,
                projects: vec![Ref::Id(2), Ref::Path("g/tools/lint".into())],
                groups: vec![Ref::Path("g/trusted".into())],
            },
            outbound: Outbound {
                enabled: false,
                projects: vec![]
            },
            git_push: false,
        }]
    );
    let route = &c.routes[0];
    assert_eq!(c.routes.len(), 1);
    assert_eq!(route.methods, vec![http::Method::GET]);
    assert!(route
        .path
        .is_match("/api/v4/groups/42/-/packages/maven/com/x/1.0/x.jar"));
    assert!(!route.path.is_match("/x/api/v4/groups/42/-/packages/maven/"));
    assert_eq!(route.sources.projects, vec![Ref::Path("g/build".into())]);
    assert!(route.sources.groups.is_empty());
    let l = &c.limits;
    assert_eq!(
        (l.max_request_head, l.inspect_body),
        (64 * 1024, 1024 * 1024)
    );
    assert_eq!(
        (
            l.header_read_timeout,
            l.idle_timeout,
            l.upstream_connect_timeout
        ),
        (secs(10), secs(60), secs(5))
    );
    assert_eq!(
        (l.upstream_response_timeout, l.max_connections),
        (secs(60), 10_000)
    );
    assert_eq!(c.log_format, LogFormat::Text);
    assert_eq!(
        c.auth_log.as_deref(),
        Some(Path::new("/var/log/scopegate/auth.jsonl"))
    );
}

#[test]
fn defaults_when_only_upstream_is_given() {
    let c = parse(UP);
    assert_eq!(c.listen, "127.0.0.1:8080".parse::<SocketAddr>().unwrap());
    assert!(c.tls.is_none() && c.admin.is_none() && c.auth_log.is_none());
    assert!(c.trusted_proxies.is_empty() && c.projects.is_empty() && c.routes.is_empty());
    assert_eq!(c.cache.ttl, secs(30));
    assert_eq!(c.cache.negative_ttl, secs(5));
    assert_eq!(c.cache.project_ttl, secs(60));
    assert_eq!(c.instance_prefix, "");
    assert_eq!(
        (c.mode, c.deny_response, c.dependencies, c.log_format),
        (
            Mode::Enforce,
            DenyResponse::NotFound,
            Dependencies::Forge,
            LogFormat::Text
        )
    );
    assert_eq!(c.limits.max_request_head, 65_536);
    assert_eq!(c.limits.inspect_body, 1_048_576);
    assert_eq!(c.limits.header_read_timeout, secs(10));
    assert_eq!(c.limits.idle_timeout, secs(60));
    assert_eq!(c.limits.upstream_connect_timeout, secs(5));
    assert_eq!(c.limits.upstream_response_timeout, secs(60));
    assert_eq!(c.limits.max_connections, 10_000);
}

#[test]
fn project_defaults_and_every_field() {
    let c = parse(&format!(
        "{UP}projects:\n  - id: 7\n  - id: 8\n    path: /Grp/Sub/Proj/\n    visibility: public\n    \
         features: {{repository: enabled, artifacts: private, packages: disabled, registry: \
         enabled, releases: private, environments: disabled}}\n    inbound: {{enabled: false}}\n    \
         outbound: {{enabled: true, projects: ['9', a/b]}}\n    git_push: true\n"
    ));
    let p = &c.projects[0];
    assert_eq!(
        (p.id, p.path.as_deref(), p.visibility),
        (7, None, Visibility::Private)
    );
    assert_eq!(p.inbound, Inbound::default());
    assert!(p.inbound.enabled);
    assert_eq!(p.outbound, Outbound::default());
    assert!(!p.git_push);
    let p = c.project(8).unwrap();
    assert_eq!(p.path.as_deref(), Some("grp/sub/proj"));
    assert_eq!(p.visibility, Visibility::Public);
    assert_eq!(p.features.artifacts, Some(AccessLevel::Private));
    assert_eq!(p.features.environments, Some(AccessLevel::Disabled));
    assert_eq!(p.features.registry, Some(AccessLevel::Enabled));
    assert!(!p.inbound.enabled);
    assert_eq!(
        p.outbound.projects,
        vec![Ref::Id(9), Ref::Path("a/b".into())]
    );
    assert!(p.outbound.enabled && p.git_push);
    assert!(c.project(9).is_none());
}

#[test]
fn every_top_level_field() {
    let c = parse(
        "listen: '[::1]:0'\ntls: {cert: c.pem, key: k.pem}\nupstream:\n  url: https://forge.example:8443/\n  \
         relative_url_root: gitlab/\n  ca: ca.pem\n  token_env: SG_TOKEN\nadmin: {listen: 127.0.0.1:0}\n\
         trusted_proxies: [10.0.0.0/8, 192.168.1.7, '::1/128']\ncache: {ttl: 500ms, negative_ttl: 1m, \
         project_ttl: 1h}\ntokens: {instance_prefix: acme-}\nmode: audit\ndeny_response: forbidden\n\
         runner: {dependencies: strict}\nlimits: {max_request_head: 10KB, inspect_body: 1GiB, \
         header_read_timeout: 1s, idle_timeout: 2m, upstream_connect_timeout: 100ms, \
         upstream_response_timeout: 1h, max_connections: 5}\nlog: {format: json}\n\
         auth_log: {path: auth.jsonl}\n",
    );
    assert_eq!(c.listen, "[::1]:0".parse::<SocketAddr>().unwrap());
    assert_eq!(c.tls.as_ref().unwrap().key, Path::new("k.pem"));
    assert_eq!(c.upstream.url.scheme_str(), Some("https"));
    assert_eq!(c.upstream.relative_url_root, "/gitlab");
    assert_eq!(c.upstream.ca.as_deref(), Some(Path::new("ca.pem")));
    assert_eq!(c.upstream.token_env.as_deref(), Some("SG_TOKEN"));
    assert_eq!(c.admin.unwrap().listen.port(), 0);
    assert_eq!(c.trusted_proxies.len(), 3);
    assert_eq!(
        c.trusted_proxies[1],
        Cidr {
            addr: "192.168.1.7".parse().unwrap(),
            prefix: 32
        }
    );
    assert_eq!(c.cache.ttl, Duration::from_millis(500));
    assert_eq!(
        (c.cache.negative_ttl, c.cache.project_ttl),
        (secs(60), secs(3600))
    );
    assert_eq!(c.instance_prefix, "acme-");
    assert_eq!(
        (c.mode, c.deny_response),
        (Mode::Audit, DenyResponse::Forbidden)
    );
    assert_eq!(c.dependencies, Dependencies::Strict);
    assert_eq!(
        (c.limits.max_request_head, c.limits.inspect_body),
        (10_000, 1 << 30)
    );
    assert_eq!(
        c.limits.upstream_connect_timeout,
        Duration::from_millis(100)
    );
    assert_eq!(c.limits.max_connections, 5);
    assert_eq!(c.log_format, LogFormat::Json);
    assert_eq!(c.auth_log.as_deref(), Some(Path::new("auth.jsonl")));
}

#[test]
fn empty_sections_and_lists_mean_defaults() {
    let c = parse(&format!(
        "{UP}admin:\ntrusted_proxies:\ncache:\nprojects:\nroutes:\nlimits:\nlog:\n"
    ));
    assert!(c.admin.is_none() && c.projects.is_empty() && c.routes.is_empty());
    assert_eq!(c.cache.ttl, secs(30));
}

#[test]
fn example_proxy_yaml_parses() {
    let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/proxy.yaml"));
    let c = match Config::load(path) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(c.projects.len(), 2);
    assert_eq!(c.routes.len(), 1);
    assert!(c.admin.is_some());
    assert!(c
        .summary()
        .contains("warning: no service token (upstream.token_env)"));
}

/// Each kind of error, with the exact place an operator is sent to.
#[test]
fn errors_name_file_line_and_column() {
    let cases: &[(&str, &str, &str)] = &[
        // YAML syntax
        (
            "upstream:\n\turl: x\n",
            "t.yaml:2:1: ",
            "cannot start any token",
        ),
        (
            "upstream: {url: http://x:1}\nmode: 'enforce\n",
            "t.yaml:3:1: ",
            "found unexpected end of stream",
        ),
        // unknown keys, top level and nested
        (
            "upstream: {url: http://x:1}\nbogus: 1\n",
            "t.yaml:2:1: ",
            "unknown field `bogus`",
        ),
        (
            &format!("{UP}projects:\n  - id: 1\n    inbound:\n      projectz: [2]\n"),
            "t.yaml:6:7: ",
            "projects[0].inbound: unknown field `projectz`",
        ),
        (
            &format!("{UP}  tokens_env: X\n"),
            "t.yaml:3:3: ",
            "upstream: unknown field `tokens_env`",
        ),
        (
            &format!("{UP}limits:\n  max_body: 1MiB\n"),
            "t.yaml:4:3: ",
            "unknown field `max_body`",
        ),
        // missing required
        (
            "listen: 127.0.0.1:1\n",
            "t.yaml:1:1: ",
            "missing field `upstream`",
        ),
        ("upstream: {}\n", "t.yaml:1:11: ", "missing field `url`"),
        ("# nothing\n\n", "t.yaml: ", "the file is empty"),
        // durations and sizes
        (
            &format!("{UP}cache:\n  ttl: 30\n"),
            "t.yaml:4:8: ",
            "cache.ttl: `30` has no unit",
        ),
        (
            &format!("{UP}cache:\n  ttl: 1.5s\n"),
            "t.yaml:4:8: ",
            "unknown unit `.5s`",
        ),
        (
            &format!("{UP}cache:\n  ttl: 3d\n"),
            "t.yaml:4:8: ",
            "unknown unit `d`",
        ),
        (
            &format!("{UP}limits:\n  idle_timeout: 0s\n"),
            "t.yaml:4:17: ",
            "more than zero",
        ),
        (
            &format!("{UP}limits:\n  inspect_body: 1MB2\n"),
            "t.yaml:4:17: ",
            "unknown unit `MB2`",
        ),
        (
            &format!("{UP}limits:\n  inspect_body: 1024\n"),
            "t.yaml:4:17: ",
            "has no unit",
        ),
        (
            &format!("{UP}limits:\n  inspect_body: 1mib\n"),
            "t.yaml:4:17: ",
            "unknown unit",
        ),
        (
            &format!("{UP}limits:\n  max_connections: -1\n"),
            "t.yaml:4:20: ",
            "positive integer",
        ),
        // addresses
        (
            &format!("listen: localhost:8080\n{UP}"),
            "t.yaml:1:9: ",
            "`localhost:8080` is not an address",
        ),
        (
            &format!("{UP}admin:\n  listen: 127.0.0.1\n"),
            "t.yaml:4:11: ",
            "admin.listen: `127.0.0.1` is not",
        ),
        (
            &format!("{UP}trusted_proxies: [10.0.0.0/33]\n"),
            "t.yaml:3:19: ",
            "at most 32",
        ),
        (
            &format!("{UP}trusted_proxies:\n  - ::1/129\n"),
            "t.yaml:4:5: ",
            "at most 128",
        ),
        (
            &format!("{UP}trusted_proxies: [proxy.local]\n"),
            "t.yaml:3:19: ",
            "not an IP address or CIDR",
        ),
        // the forge URL
        (
            "upstream:\n  url: ftp://x\n",
            "t.yaml:2:8: ",
            "http:// or https://",
        ),
        (
            "upstream:\n  url: 127.0.0.1:3000\n",
            "t.yaml:2:8: ",
            "http:// or https://",
        ),
        (
            "upstream:\n  url: http://x:1/gitlab\n",
            "t.yaml:2:8: ",
            "relative_url_root",
        ),
        (
            "upstream:\n  url: http://x:1/?a=b\n",
            "t.yaml:2:8: ",
            "relative_url_root",
        ),
        (
            "upstream:\n  url: http://u:p@x:1\n",
            "t.yaml:2:8: ",
            "must not carry credentials",
        ),
        (
            "upstream:\n  url: http://x:1\n  relative_url_root: /a/../b\n",
            "t.yaml:3:22: ",
            "not a URL path",
        ),
        (
            "upstream:\n  url: http://x:1\n  token_env: glpat-abc\n",
            "t.yaml:3:14: ",
            "never the token itself",
        ),
        // projects
        (
            &format!("{UP}projects:\n  - id: 1\n    path: g/p\n  - id: 1\n    path: g/q\n"),
            "t.yaml:6:5: ",
            "projects[1]: duplicate project id 1 (already projects[0])",
        ),
        (
            &format!("{UP}projects:\n  - id: 1\n    path: g/p\n  - id: 2\n    path: G/P\n"),
            "t.yaml:6:5: ",
            "projects[1]: duplicate project path g/p (already projects[0])",
        ),
        (
            &format!("{UP}projects:\n  - path: g/p\n"),
            "t.yaml:4:5: ",
            "projects[0]: missing field `id`",
        ),
        (
            &format!("{UP}projects:\n  - id: 0\n"),
            "t.yaml:4:9: ",
            "`0` is not a project id",
        ),
        (
            &format!("{UP}projects:\n  - id: g/p\n"),
            "t.yaml:4:9: ",
            "`g/p` is not a project id",
        ),
        (
            &format!("{UP}projects:\n  - id: 0x10\n"),
            "t.yaml:4:9: ",
            "`0x10` is not a project id",
        ),
        (
            &format!("{UP}projects:\n  - id: 1\n    inbound: {{projects: [0x10]}}\n"),
            "t.yaml:5:26: ",
            "`0x10` is not a full project path",
        ),
        (
            &format!("{UP}projects:\n  - id: 1\n    path: p\n"),
            "t.yaml:5:11: ",
            "needs its group too",
        ),
        (
            &format!("{UP}projects:\n  - id: 1\n    visibility: open\n"),
            "t.yaml:5:17: ",
            "unknown variant `open`",
        ),
        (
            &format!("{UP}projects:\n  - id: 1\n    features: {{builds: enabled}}\n"),
            "t.yaml:5:16: ",
            "unknown field `builds`",
        ),
        (
            &format!("{UP}projects:\n  - id: 1\n    features: {{registry: public}}\n"),
            "t.yaml:5:26: ",
            "unknown variant `public`",
        ),
        // references
        (
            &format!("{UP}projects:\n  - id: 1\n    inbound:\n      projects: [2, 05]\n"),
            "t.yaml:6:21: ",
            "projects[0].inbound.projects[1]: `05` is not an id",
        ),
        (
            &format!("{UP}projects:\n  - id: 1\n    inbound:\n      projects: [a b]\n"),
            "t.yaml:6:18: ",
            "`a b` is not a full path",
        ),
        (
            &format!("{UP}projects:\n  - id: 1\n    inbound:\n      projects: [g]\n"),
            "t.yaml:6:18: ",
            "needs its group too",
        ),
        (
            &format!("{UP}projects:\n  - id: 1\n    inbound:\n      groups: [-g]\n"),
            "t.yaml:6:16: ",
            "`-g` is not a full path",
        ),
        (
            &format!("{UP}projects:\n  - id: 1\n    outbound:\n      projects: [-3]\n"),
            "t.yaml:6:18: ",
            "`-3` is not a full path",
        ),
        // routes
        (
            &format!("{UP}routes:\n  - methods: [GET]\n    path: ^/api/v4/groups/1/\n"),
            "t.yaml:4:5: ",
            "routes[0]: missing field `sources`",
        ),
        (
            &format!("{UP}routes:\n  - path: ^/api/v4/projects/\n    sources: {{}}\n"),
            "t.yaml:4:11: ",
            "routes[0].path: route path `^/api/v4/projects/` matches",
        ),
        (
            &format!("{UP}routes:\n  - path: /api/graphql\n    sources: {{}}\n"),
            "t.yaml:4:11: ",
            "matches `/api/graphql`",
        ),
        (
            &format!("{UP}routes:\n  - sources: {{}}\n    path: '^/[^/]+/[^/]+\\.git/'\n"),
            "t.yaml:5:11: ",
            "matches `/g/p.git/info/refs`",
        ),
        (
            &format!("{UP}routes:\n  - sources: {{}}\n    path: '^/jwt/'\n"),
            "t.yaml:5:11: ",
            "matches `/jwt/auth`",
        ),
        (
            &format!("{UP}routes:\n  - sources: {{}}\n    path: '^/x/(a'\n"),
            "t.yaml:5:11: ",
            "is not a valid regex: unclosed group",
        ),
        (
            &format!("{UP}routes:\n  - sources: {{}}\n    path: '.*'\n"),
            "t.yaml:5:11: ",
            "must start with a literal `/`",
        ),
        (
            &format!(
                "{UP}routes:\n  - sources: {{}}\n    methods: [GET, FETCH]\n    path: ^/a/-/\n"
            ),
            "t.yaml:5:20: ",
            "routes[0].methods[1]: `FETCH` is not one of",
        ),
        (
            &format!("{UP}routes:\n  - path: ^/a/-/\n    sources: {{projects: [x]}}\n"),
            "t.yaml:5:26: ",
            "routes[0].sources.projects[0]: `x` is not a full project path",
        ),
        // enumerations
        (
            &format!("{UP}mode: warn\n"),
            "t.yaml:3:7: ",
            "unknown variant `warn`",
        ),
        (
            &format!("{UP}deny_response: 403\n"),
            "t.yaml:3:16: ",
            "deny_response",
        ),
        (
            &format!("{UP}runner: {{dependencies: none}}\n"),
            "t.yaml:3:24: ",
            "unknown variant `none`",
        ),
        (
            &format!("{UP}log: {{format: xml}}\n"),
            "t.yaml:3:15: ",
            "unknown variant `xml`",
        ),
    ];
    let mut failures = Vec::new();
    for (yaml, place, words) in cases {
        let e = err(yaml);
        if !e.starts_with(place) || !e.contains(words) {
            failures.push(format!("want {place}…{words}\n got {e}\n in {yaml:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn unreadable_file() {
    let e = Config::load(Path::new("/nonexistent/proxy.yaml")).unwrap_err();
    assert!(matches!(e, ConfigError::Read { .. }));
    assert!(
        e.to_string()
            .starts_with("/nonexistent/proxy.yaml: cannot read: "),
        "{e}"
    );
}

#[test]
fn references() {
    assert_eq!(parse_ref("42", 2), Ok(Ref::Id(42)));
    assert_eq!(
        parse_ref("9999999999999999999", 2),
        Ok(Ref::Id(9_999_999_999_999_999_999))
    );
    assert!(parse_ref("10000000000000000000", 2).is_err());
    assert_eq!(
        parse_ref("G/Tools/Lint", 2),
        Ok(Ref::Path("g/tools/lint".into()))
    );
    assert_eq!(parse_ref("/g/p/", 2), Ok(Ref::Path("g/p".into())));
    assert_eq!(parse_ref("g", 1), Ok(Ref::Path("g".into())));
    assert_eq!(parse_ref("_g/p.x-y", 2), Ok(Ref::Path("_g/p.x-y".into())));
    for bad in [
        "05", "0", "", "/", "g", "g//p", "g/.p", "g/p%2F", "g/p q", "5\njunk", "g/../p",
    ] {
        assert!(parse_ref(bad, 2).is_err(), "{bad:?}");
    }
    // YAML integers are ids too; a quoted digit string is parsed like the API would.
    let c = parse(&format!(
        "{UP}projects:\n  - id: 1\n    inbound: {{groups: [3, '4', g]}}\n"
    ));
    assert_eq!(
        c.projects[0].inbound.groups,
        vec![Ref::Id(3), Ref::Id(4), Ref::Path("g".into())]
    );
}

#[test]
fn durations_and_sizes() {
    assert_eq!(parse_duration("30s"), Ok(secs(30)));
    assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(parse_duration("5m"), Ok(secs(300)));
    assert_eq!(parse_duration("1h"), Ok(secs(3600)));
    assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    for bad in [
        "30",
        "s",
        "",
        "-1s",
        "1.5s",
        "99999999999999999999s",
        "30 sec",
    ] {
        assert!(parse_duration(bad).is_err(), "{bad:?}");
    }
    assert_eq!(parse_size("64KiB"), Ok(65_536));
    assert_eq!(parse_size("1MiB"), Ok(1 << 20));
    assert_eq!(parse_size("1GiB"), Ok(1 << 30));
    assert_eq!(parse_size("512B"), Ok(512));
    assert_eq!(parse_size("10KB"), Ok(10_000));
    assert_eq!(parse_size("2MB"), Ok(2_000_000));
    for bad in ["64", "64kb", "KiB", "1.5MiB", "99999999999GiB"] {
        assert!(parse_size(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn upstream_urls_and_roots() {
    assert!(parse_upstream_url("http://127.0.0.1:3000").is_ok());
    assert!(parse_upstream_url("https://gitlab.example.com/").is_ok());
    assert!(parse_upstream_url("http://[::1]:3000").is_ok());
    for bad in [
        "gitlab.example.com",
        "http://",
        "http://h/x",
        "http://h?x",
        "unix:/s",
        "http://:80",
    ] {
        assert!(parse_upstream_url(bad).is_err(), "{bad:?}");
    }
    assert_eq!(parse_url_root("").as_deref(), Ok(""));
    assert_eq!(parse_url_root("/").as_deref(), Ok(""));
    assert_eq!(parse_url_root("gitlab").as_deref(), Ok("/gitlab"));
    assert_eq!(parse_url_root("/gitlab/").as_deref(), Ok("/gitlab"));
    assert_eq!(parse_url_root("/a/b").as_deref(), Ok("/a/b"));
    for bad in ["/a//b", "/a/./b", "/a b", "/a%2F", "/a?x"] {
        assert!(parse_url_root(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn cidrs_contain_their_addresses() {
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let net = Cidr::parse("10.1.2.3/8").unwrap();
    assert_eq!(net.to_string(), "10.0.0.0/8");
    assert!(net.contains(ip("10.255.0.1")));
    assert!(net.contains(ip("::ffff:10.0.0.9")));
    assert!(!net.contains(ip("11.0.0.1")));
    assert!(!net.contains(ip("::1")));
    let host = Cidr::parse("::1").unwrap();
    assert_eq!(host.prefix, 128);
    assert!(host.contains(ip("::1")) && !host.contains(ip("::2")));
    assert!(!host.contains(ip("127.0.0.1")));
    assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("1.2.3.4")));
    assert!(Cidr::parse("fd00::/8").unwrap().contains(ip("fdff::1")));
    // Hand-built values with an impossible prefix compare whole addresses instead of panicking.
    assert!(Cidr {
        addr: ip("1.2.3.4"),
        prefix: 99
    }
    .contains(ip("1.2.3.4")));
    for bad in [
        "10.0.0.0/",
        "10.0.0.0/x",
        "10.0.0.0/-1",
        "10/8",
        "::1/200",
        "a::z",
    ] {
        assert!(Cidr::parse(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn routes_may_open_only_paths_without_a_target_project() {
    for ok in [
        "^/api/v4/groups/42/-/packages/maven/",
        "/api/v4/groups/42/-/packages/maven/$",
        "^/api/v4/packages/npm/",
        "^/api/v4/groups/g%2Fsub/-/packages/",
        "^/groups/g/-/",
        "^/api/v4/job$",
        "^/api/v4/job/",
        "^/api/v4/projects$",
        "(?i)/api/v4/groups/42/-/packages/",
        "^(?i)/api/v4/groups/42/-/packages/",
        "/api/v4/groups/1/|/api/v4/groups/2/",
    ] {
        if let Err(e) = parse_route_path(ok) {
            panic!("{ok}: {e}");
        }
    }
    for bad in [
        ".*",
        "^.*",
        "(?i)/api/",
        "^/.*",
        "^/api/v4/",
        "/api/v4/projects/",
        "^/api/v4/projects/42/packages/",
        "(?i)^/API/V4/PROJECTS/",
        "/(?i)api/v4/projects/",
        "^/api/graphql$",
        "/api/graphql",
        "^/jwt/auth",
        "^/jwt/auth$",
        "^/mygroup/myproject",
        "^/mygroup/myproject\\.git/",
        "^/[^/]+/[^/]+/info/refs",
        "^/mygroup/",
        "/api/v4/groups/1/|/api/v4/projects/5/",
        "/api/v4/groups/1/|.*",
        "(?i)^/api/v4/PROJECTS/",
        "(?i:/api/v4/groups/)",
        "^/api/v4/jobs/",
    ] {
        assert!(parse_route_path(bad).is_err(), "{bad} was accepted");
    }
    for probe in FORBIDDEN_PROBES {
        assert!(is_forbidden(probe), "{probe}");
    }
    assert!(!is_forbidden(
        "/api/v4/groups/42/-/packages/maven/info/refs"
    ));
    assert!(!is_forbidden("/-/x/info/refs"));
    assert!(!is_forbidden("/api/v4/projects"));
}

#[test]
fn route_methods_are_upper_cased() {
    let c = parse(&format!(
        "{UP}routes:\n  - methods: [get, Put]\n    path: ^/api/v4/groups/1/\n    sources: {{groups: [g]}}\n  \
         - path: ^/api/v4/groups/2/\n    sources: {{}}\n"
    ));
    assert_eq!(
        c.routes[0].methods,
        vec![http::Method::GET, http::Method::PUT]
    );
    assert!(c.routes[1].methods.is_empty());
    assert!(c
        .warnings()
        .iter()
        .any(|w| w.contains("routes[1] lists no sources")));
}

#[test]
fn summary_and_warnings() {
    let c = parse(SPEC_EXAMPLE);
    let s = c.summary();
    for words in [
        "listen: 127.0.0.1:8080",
        "upstream: http://127.0.0.1:3000",
        "admin: 127.0.0.1:9090",
        "mode: enforce; deny_response: not_found (404)",
        "projects: 1",
        "  1 g/p private; inbound: projects 2, g/tools/lint; groups g/trusted; outbound: not limited",
        "routes: 1",
        "  GET '^/api/v4/groups/42/-/packages/maven/' for projects g/build; groups none",
        "max_request_head 64KiB, max_url 8KiB, inspect_body 1MiB, inspect_publish 128MiB, header_read_timeout 10s",
        "max_connections 10000",
        "cache: ttl 30s, negative_ttl 5s, project_ttl 60s",
        "log: text; auth_log",
        "auth_log: /var/log/scopegate/auth.jsonl",
        "warning: no service token (upstream.token_env): paths are matched as written; a renamed \
         project can mislead scopegate",
    ] {
        assert!(s.contains(words), "{words:?} not in\n{s}");
    }
}

#[test]
fn service_token_is_read_at_call_time_and_never_summarised() {
    let name = "SCOPEGATE_CONFIG_TEST_TOKEN_7F3A";
    let c = parse(&format!(
        "upstream:\n  url: http://x:1\n  token_env: {name}\n"
    ));
    std::env::remove_var(name);
    assert_eq!(c.service_token(), None);
    assert!(c.summary().contains(&format!("${name} (not set)")));
    std::env::set_var(name, "glpat-secret-value\n");
    assert_eq!(c.service_token().as_deref(), Some("glpat-secret-value"));
    let s = c.summary();
    assert!(s.contains(&format!("${name} (set)")) && !s.contains("glpat-secret-value"));
    assert!(!s.contains("no service token"));
    std::env::remove_var(name);
}

#[test]
fn url_and_shutdown_keys_and_their_defaults() {
    let c = parse(UP);
    assert_eq!(c.limits.max_url, 8 * 1024);
    assert_eq!(
        (c.shutdown.drain_delay, c.shutdown.grace_period),
        (secs(5), secs(30))
    );
    let c = parse(&format!(
        "{UP}limits: {{max_request_head: 32KiB, max_url: 32KiB}}\n\
         shutdown: {{drain_delay: 0s, grace_period: 250ms}}\n"
    ));
    assert_eq!(
        (c.limits.max_request_head, c.limits.max_url),
        (32_768, 32_768)
    );
    // Zero is a valid choice for both: no delay (a test, no load balancer), no grace.
    assert_eq!(
        (c.shutdown.drain_delay, c.shutdown.grace_period),
        (Duration::ZERO, Duration::from_millis(250))
    );
    let summary = c.summary();
    assert!(summary.contains("max_url 32KiB"), "{summary}");
    assert!(
        summary.contains("shutdown: drain_delay 0s, grace_period 250ms"),
        "{summary}"
    );
    let c = parse(&format!("{UP}shutdown:\n"));
    assert_eq!(c.shutdown.grace_period, secs(30));
}

#[test]
fn url_longer_than_the_head_and_bad_shutdown_keys_are_refused() {
    let e = err(&format!(
        "{UP}limits:\n  max_request_head: 8KiB\n  max_url: 16KiB\n"
    ));
    assert!(e.starts_with("t.yaml: "), "{e}");
    assert!(
        e.contains("limits.max_url (16384B) is larger than limits.max_request_head (8192B)"),
        "{e}"
    );
    let e = err(&format!("{UP}shutdown:\n  drain: 5s\n"));
    assert!(e.starts_with("t.yaml:4:3: "), "{e}");
    assert!(e.contains("unknown field `drain`"), "{e}");
    let e = err(&format!("{UP}shutdown:\n  grace_period: 30\n"));
    assert!(e.starts_with("t.yaml:4:17: "), "{e}");
    assert!(e.contains("has no unit"), "{e}");
}
