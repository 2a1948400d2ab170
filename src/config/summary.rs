//! What `scopegate check` prints: the loaded config in the operator's own terms, then the
//! warnings (things that load but are probably not what was meant).

use std::fmt::Write;
use std::time::Duration;

use super::{Cidr, Config, DenyResponse, Features, Mode, Ref};

impl Config {
    /// Things that load but are probably not what the operator meant (no "warning: " prefix).
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        match &self.upstream.token_env {
            None => out.push(
                "no service token (upstream.token_env): paths are matched as written; a renamed \
                 project can mislead scopegate"
                    .to_string(),
            ),
            Some(name) if self.service_token().is_none() => out.push(format!(
                "upstream.token_env names {name}, which is not set (or empty) here: look-ups will \
                 run without a service token"
            )),
            Some(_) => {}
        }
        if self.mode == Mode::Audit {
            out.push("mode: audit: scope denials are logged as would_deny and forwarded".into());
        }
        for (i, p) in self.projects.iter().enumerate() {
            if self.upstream.token_env.is_some() && p.features != Features::default() {
                out.push(format!(
                    "projects[{i}] (id {}): `features` is ignored with a service token; the \
                     forge's access levels are used",
                    p.id
                ));
            }
            if self.upstream.token_env.is_none() && p.path.is_none() {
                out.push(format!(
                    "projects[{i}] (id {}) has no path: without a service token, requests naming \
                     it by path cannot be matched to this entry",
                    p.id
                ));
            }
        }
        for (i, r) in self.routes.iter().enumerate() {
            if r.sources.projects.is_empty() && r.sources.groups.is_empty() {
                out.push(format!("routes[{i}] lists no sources: it opens nothing"));
            }
        }
        out
    }

    /// The human summary printed by `scopegate check`. Contains no secret.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let tls = match &self.tls {
            Some(t) => format!(" (tls: cert {}, key {})", t.cert.display(), t.key.display()),
            None => String::new(),
        };
        let _ = writeln!(s, "config: {}", self.source.display());
        let _ = writeln!(s, "listen: {}{tls}", self.listen);
        let url = &self.upstream.url;
        let authority = url.authority().map(|a| a.as_str()).unwrap_or_default();
        let _ = writeln!(
            s,
            "upstream: {}://{authority}",
            url.scheme_str().unwrap_or("http")
        );
        if !self.upstream.relative_url_root.is_empty() {
            let _ = writeln!(
                s,
                "  relative_url_root: {}",
                self.upstream.relative_url_root
            );
        }
        if let Some(ca) = &self.upstream.ca {
            let _ = writeln!(s, "  ca: {}", ca.display());
        }
        let token = match &self.upstream.token_env {
            Some(name) if self.service_token().is_some() => format!("${name} (set)"),
            Some(name) => format!("${name} (not set)"),
            None => "none".into(),
        };
        let _ = writeln!(s, "  service token: {token}");
        let admin = self.admin.as_ref().map_or("none".into(), |a| {
            format!("{} (/metrics, /healthz, /readyz)", a.listen)
        });
        let _ = writeln!(s, "admin: {admin}");
        let proxies: Vec<String> = self.trusted_proxies.iter().map(Cidr::to_string).collect();
        let _ = writeln!(s, "trusted_proxies: {}", list_or_none(&proxies));
        let _ = writeln!(
            s,
            "mode: {}; deny_response: {}; runner.dependencies: {}",
            self.mode.as_str(),
            match self.deny_response {
                DenyResponse::NotFound => "not_found (404)",
                DenyResponse::Forbidden => "forbidden (403 with reason)",
            },
            self.dependencies.as_str()
        );
        let _ = writeln!(
            s,
            "cache: ttl {}, negative_ttl {}, project_ttl {}",
            show_duration(self.cache.ttl),
            show_duration(self.cache.negative_ttl),
            show_duration(self.cache.project_ttl)
        );
        if !self.instance_prefix.is_empty() {
            let _ = writeln!(s, "tokens.instance_prefix: {}", self.instance_prefix);
        }
        let _ = writeln!(s, "projects: {}", self.projects.len());
        for p in &self.projects {
            let inbound = if p.inbound.enabled {
                format!(
                    "inbound: projects {}; groups {}",
                    show_refs(&p.inbound.projects),
                    show_refs(&p.inbound.groups)
                )
            } else {
                "inbound: not limited".into()
            };
            let outbound = if p.outbound.enabled {
                format!("outbound: projects {}", show_refs(&p.outbound.projects))
            } else {
                "outbound: not limited".into()
            };
            let features: Vec<String> = p
                .features
                .stated()
                .iter()
                .map(|(k, v)| format!("{k} {}", v.as_str()))
                .collect();
            let features = match features.is_empty() {
                true => String::new(),
                false => format!("; features: {}", features.join(", ")),
            };
            let _ = writeln!(
                s,
                "  {} {} {}{features}; {inbound}; {outbound}; git_push {}",
                p.id,
                p.path.as_deref().unwrap_or("(no path)"),
                p.visibility.as_str(),
                p.git_push
            );
        }
        let _ = writeln!(s, "routes: {}", self.routes.len());
        for r in &self.routes {
            let methods: Vec<&str> = r.methods.iter().map(http::Method::as_str).collect();
            let _ = writeln!(
                s,
                "  {} '{}' for projects {}; groups {}",
                if methods.is_empty() {
                    "ANY".into()
                } else {
                    methods.join(",")
                },
                route_source(&r.path),
                show_refs(&r.sources.projects),
                show_refs(&r.sources.groups)
            );
        }
        let l = &self.limits;
        let _ = writeln!(
            s,
            "limits: max_request_head {}, max_url {}, inspect_body {}, inspect_publish {}, \
             header_read_timeout {}, idle_timeout {}, upstream_connect_timeout {}, \
             upstream_response_timeout {}, max_connections {}",
            show_size(l.max_request_head),
            show_size(l.max_url),
            show_size(l.inspect_body),
            show_size(l.inspect_publish),
            show_duration(l.header_read_timeout),
            show_duration(l.idle_timeout),
            show_duration(l.upstream_connect_timeout),
            show_duration(l.upstream_response_timeout),
            l.max_connections
        );
        let _ = writeln!(
            s,
            "shutdown: drain_delay {}, grace_period {}",
            show_duration(self.shutdown.drain_delay),
            show_duration(self.shutdown.grace_period)
        );
        let auth_log = self.auth_log.as_ref().map(|p| p.display().to_string());
        let _ = writeln!(
            s,
            "log: {}; auth_log: {}",
            self.log_format.as_str(),
            auth_log.as_deref().unwrap_or("none")
        );
        for w in self.warnings() {
            let _ = writeln!(s, "warning: {w}");
        }
        s
    }
}

fn show_duration(d: Duration) -> String {
    match d.as_millis() {
        ms if ms % 1_000 == 0 => format!("{}s", ms / 1_000),
        ms => format!("{ms}ms"),
    }
}

fn show_size(n: usize) -> String {
    const UNITS: &[(usize, &str)] = &[
        (1 << 30, "GiB"),
        (1 << 20, "MiB"),
        (1 << 10, "KiB"),
        (1_000_000_000, "GB"),
        (1_000_000, "MB"),
        (1_000, "KB"),
    ];
    UNITS
        .iter()
        .find(|(scale, _)| n >= *scale && n.is_multiple_of(*scale))
        .map_or_else(
            || format!("{n}B"),
            |(scale, unit)| format!("{}{unit}", n / scale),
        )
}

fn show_refs(refs: &[Ref]) -> String {
    let refs: Vec<String> = refs.iter().map(Ref::to_string).collect();
    list_or_none(&refs)
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}

/// The pattern as the operator wrote it (without the `^(?:...)` anchoring added here).
fn route_source(re: &regex::Regex) -> &str {
    let s = re.as_str();
    s.strip_prefix("^(?:")
        .and_then(|s| s.strip_suffix(')'))
        .unwrap_or(s)
}
