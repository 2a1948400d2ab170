//! `proxy.yaml` → the immutable [`Config`] the gateway runs on (SPEC §5).
//!
//! Validation happens *while* deserializing: every value that needs checking (durations, sizes,
//! addresses, references, route regexes, duplicate projects) goes through a visitor of its own,
//! so serde_yaml_ng stamps the error with that node's line and column and an operator is told
//! `proxy.yaml:12:7: ...` rather than "somewhere in projects". Every struct rejects unknown keys:
//! a typo in an allowlist must fail loudly, not silently open or close a project. Relative file
//! paths (`tls`, `upstream.ca`, `auth_log`) are kept as written, relative to the working directory.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

mod de;
mod route_path;
mod summary;
#[cfg(test)]
mod tests;

/// A project or group reference as written in the config: an id, or a full path
/// (stored lower-cased, without leading/trailing `/`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Ref {
    Id(u64),
    Path(String),
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Visibility {
    // Declared from strictest to loosest so `min` picks the stricter of two answers.
    #[default]
    Private,
    Internal,
    Public,
}

/// A project feature's access level, as GitLab's `*_access_level` fields say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessLevel {
    /// "Everyone with access" (`enabled`, or GitLab's `public`).
    Enabled,
    /// "Only project members".
    Private,
    Disabled,
}

/// Per-feature access levels; `None` = not stated (treated as `Enabled`, GitLab's default).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Features {
    pub repository: Option<AccessLevel>,
    pub artifacts: Option<AccessLevel>,
    pub packages: Option<AccessLevel>,
    pub registry: Option<AccessLevel>,
    pub releases: Option<AccessLevel>,
    pub environments: Option<AccessLevel>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Inbound {
    /// "Limit access to this project"; default true.
    pub enabled: bool,
    #[serde(deserialize_with = "de::project_refs")]
    pub projects: Vec<Ref>,
    #[serde(deserialize_with = "de::group_refs")]
    pub groups: Vec<Ref>,
}

impl Default for Inbound {
    fn default() -> Self {
        Inbound {
            enabled: true,
            projects: Vec::new(),
            groups: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Outbound {
    /// "Limit access from this project"; default false.
    pub enabled: bool,
    #[serde(deserialize_with = "de::project_refs")]
    pub projects: Vec<Ref>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectConfig {
    #[serde(deserialize_with = "de::project_id")]
    pub id: u64,
    /// Full path, lower-cased.
    #[serde(default, deserialize_with = "de::project_path")]
    pub path: Option<String>,
    #[serde(default)]
    pub visibility: Visibility,
    #[serde(default, deserialize_with = "de::null_default")]
    pub features: Features,
    #[serde(default, deserialize_with = "de::null_default")]
    pub inbound: Inbound,
    #[serde(default, deserialize_with = "de::null_default")]
    pub outbound: Outbound,
    #[serde(default)]
    pub git_push: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    Enforce,
    Audit,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DenyResponse {
    #[default]
    NotFound,
    Forbidden,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dependencies {
    #[default]
    Forge,
    Strict,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sources {
    #[serde(default, deserialize_with = "de::project_refs")]
    pub projects: Vec<Ref>,
    #[serde(default, deserialize_with = "de::group_refs")]
    pub groups: Vec<Ref>,
}

/// `sources` has no default on purpose: an entry that forgets it must not load as "nobody".
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Upper-case method names; empty = any method.
    #[serde(default, deserialize_with = "de::methods")]
    pub methods: Vec<http::Method>,
    /// Matched with `is_match` against the decoded path, anchored at the start.
    #[serde(deserialize_with = "de::route_path")]
    pub path: regex::Regex,
    pub sources: Sources,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// `http://host:port` or `https://host:port` (no path).
    #[serde(deserialize_with = "de::upstream_url")]
    pub url: http::Uri,
    /// `""` or `/gitlab` (leading slash, no trailing slash).
    #[serde(default, deserialize_with = "de::url_root")]
    pub relative_url_root: String,
    #[serde(default)]
    pub ca: Option<PathBuf>,
    #[serde(default, deserialize_with = "de::env_name")]
    pub token_env: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    #[serde(deserialize_with = "de::address")]
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: std::net::IpAddr,
    pub prefix: u8,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Cache {
    #[serde(deserialize_with = "de::duration")]
    pub ttl: Duration,
    #[serde(deserialize_with = "de::duration")]
    pub negative_ttl: Duration,
    #[serde(deserialize_with = "de::duration")]
    pub project_ttl: Duration,
}

impl Default for Cache {
    fn default() -> Self {
        Cache {
            ttl: Duration::from_secs(30),
            negative_ttl: Duration::from_secs(5),
            project_ttl: Duration::from_secs(60),
        }
    }
}

/// Zero is refused for every limit: a zero timeout or size would refuse all traffic.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// The request head (request line and header fields; HTTP/2: the header list) → 431.
    #[serde(deserialize_with = "de::size")]
    pub max_request_head: usize,
    /// The request-target (`path?query`) → 414. Part of the head, so at most
    /// `max_request_head` (checked in [`Config::from_yaml_str`]).
    #[serde(deserialize_with = "de::size")]
    pub max_url: usize,
    #[serde(deserialize_with = "de::size")]
    pub inspect_body: usize,
    /// The bound for known package-publish routes whose JSON carries the package itself
    /// (npm publish: the tarball base64-encoded in the document), read whole like any JSON.
    #[serde(deserialize_with = "de::size")]
    pub inspect_publish: usize,
    #[serde(deserialize_with = "de::timeout")]
    pub header_read_timeout: Duration,
    #[serde(deserialize_with = "de::timeout")]
    pub idle_timeout: Duration,
    #[serde(deserialize_with = "de::timeout")]
    pub upstream_connect_timeout: Duration,
    #[serde(deserialize_with = "de::timeout")]
    pub upstream_response_timeout: Duration,
    #[serde(deserialize_with = "de::count")]
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_head: 64 * 1024,
            // nginx's `large_client_header_buffers 4 8k`: a request line over 8 KiB is 414.
            max_url: 8 * 1024,
            inspect_body: 1024 * 1024,
            inspect_publish: 128 * 1024 * 1024,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            upstream_connect_timeout: Duration::from_secs(5),
            upstream_response_timeout: Duration::from_secs(60),
            max_connections: 10_000,
        }
    }
}

/// What happens on SIGTERM (SPEC §6): readiness turns 503 at once; the listener keeps
/// accepting for `drain_delay` (a load balancer that has not yet seen the 503 still sends
/// traffic here, and must not meet refused connections); then it stops accepting, and
/// requests in flight get `grace_period` to finish before their connections are closed.
/// Zero is allowed for both: no delay, or no grace.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Shutdown {
    #[serde(deserialize_with = "de::duration")]
    pub drain_delay: Duration,
    #[serde(deserialize_with = "de::duration")]
    pub grace_period: Duration,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown {
            drain_delay: Duration::from_secs(5),
            grace_period: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    /// Where the config was read from ("<string>" for in-memory configs).
    pub source: PathBuf,
    pub listen: SocketAddr,
    pub tls: Option<Tls>,
    pub upstream: Upstream,
    pub admin: Option<Admin>,
    pub trusted_proxies: Vec<Cidr>,
    pub cache: Cache,
    pub instance_prefix: String,
    pub mode: Mode,
    pub deny_response: DenyResponse,
    pub dependencies: Dependencies,
    pub projects: Vec<ProjectConfig>,
    pub routes: Vec<Route>,
    pub limits: Limits,
    pub shutdown: Shutdown,
    pub log_format: LogFormat,
    pub auth_log: Option<PathBuf>,
}

/// Why `proxy.yaml` was refused. Display is `FILE:LINE:COLUMN: message` (1-based) when the
/// place is known, else `FILE: message`; the CLI prints it and exits 2.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read: {source}", .file.display())]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{line}:{column}: {message}", .file.display())]
    At {
        file: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{}: {message}", .file.display())]
    Invalid { file: PathBuf, message: String },
}

impl ConfigError {
    fn from_yaml(file: &Path, err: serde_yaml_ng::Error) -> ConfigError {
        let text = err.to_string();
        match err.location() {
            Some(loc) => {
                // serde_yaml_ng appends " at line L column C"; the position leads our message.
                let suffix = format!(" at line {} column {}", loc.line(), loc.column());
                ConfigError::At {
                    file: file.to_path_buf(),
                    line: loc.line(),
                    column: loc.column(),
                    message: text.replacen(&suffix, "", 1),
                }
            }
            None => ConfigError::Invalid {
                file: file.to_path_buf(),
                message: text,
            },
        }
    }
}

/// The file's shape; nested sections are flattened into [`Config`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default = "default_listen", deserialize_with = "de::address")]
    listen: SocketAddr,
    #[serde(default)]
    tls: Option<Tls>,
    upstream: Upstream,
    #[serde(default)]
    admin: Option<Admin>,
    #[serde(default, deserialize_with = "de::cidrs")]
    trusted_proxies: Vec<Cidr>,
    #[serde(default, deserialize_with = "de::null_default")]
    cache: Cache,
    #[serde(default, deserialize_with = "de::null_default")]
    tokens: RawTokens,
    #[serde(default)]
    mode: Mode,
    #[serde(default)]
    deny_response: DenyResponse,
    #[serde(default, deserialize_with = "de::null_default")]
    runner: RawRunner,
    #[serde(default, deserialize_with = "de::projects")]
    projects: Vec<ProjectConfig>,
    #[serde(default, deserialize_with = "de::null_default")]
    routes: Vec<Route>,
    #[serde(default, deserialize_with = "de::null_default")]
    limits: Limits,
    #[serde(default, deserialize_with = "de::null_default")]
    shutdown: Shutdown,
    #[serde(default, deserialize_with = "de::null_default")]
    log: RawLog,
    #[serde(default)]
    auth_log: Option<RawAuthLog>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawTokens {
    #[serde(deserialize_with = "de::instance_prefix")]
    instance_prefix: String,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawRunner {
    dependencies: Dependencies,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLog {
    format: LogFormat,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuthLog {
    path: PathBuf,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.to_path_buf(),
            source,
        })?;
        Config::from_yaml_str(&text, path)
    }

    /// Validates `text`; `source` names it in errors and in [`Config::source`].
    pub fn from_yaml_str(text: &str, source: &Path) -> Result<Config, ConfigError> {
        if text
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
        {
            return Err(ConfigError::Invalid {
                file: source.to_path_buf(),
                message: "the file is empty: at least `upstream: { url: ... }` is required".into(),
            });
        }
        let raw: RawConfig =
            serde_yaml_ng::from_str(text).map_err(|e| ConfigError::from_yaml(source, e))?;
        // Two keys that must agree: checked once both are read, so without a position (serde
        // would stamp an error raised here at the document's start, which would mislead).
        if raw.limits.max_url > raw.limits.max_request_head {
            return Err(ConfigError::Invalid {
                file: source.to_path_buf(),
                message: format!(
                    "limits.max_url ({}B) is larger than limits.max_request_head ({}B): the URL \
                     is part of the request head, so set max_request_head at least as large",
                    raw.limits.max_url, raw.limits.max_request_head
                ),
            });
        }
        Ok(Config {
            source: source.to_path_buf(),
            listen: raw.listen,
            tls: raw.tls,
            upstream: raw.upstream,
            admin: raw.admin,
            trusted_proxies: raw.trusted_proxies,
            cache: raw.cache,
            instance_prefix: raw.tokens.instance_prefix,
            mode: raw.mode,
            deny_response: raw.deny_response,
            dependencies: raw.runner.dependencies,
            projects: raw.projects,
            routes: raw.routes,
            limits: raw.limits,
            shutdown: raw.shutdown,
            log_format: raw.log.format,
            auth_log: raw.auth_log.map(|a| a.path),
        })
    }

    pub fn project(&self, id: u64) -> Option<&ProjectConfig> {
        self.projects.iter().find(|p| p.id == id)
    }

    /// The forge service token, read from `upstream.token_env` now (so a rotated token is
    /// picked up on reload). Never log or print it.
    pub fn service_token(&self) -> Option<String> {
        let name = self.upstream.token_env.as_deref()?;
        let value = std::env::var(name).ok()?;
        let value = value.trim();
        (!value.is_empty()).then(|| value.to_string())
    }
}

/// The config's own spelling of each enumeration value, for the summary and for logs.
macro_rules! config_names {
    ($($ty:ident { $($variant:ident => $name:literal),+ })+) => {$(
        impl $ty {
            pub fn as_str(self) -> &'static str {
                match self { $($ty::$variant => $name),+ }
            }
        }
    )+};
}

config_names! {
    Visibility { Private => "private", Internal => "internal", Public => "public" }
    AccessLevel { Enabled => "enabled", Private => "private", Disabled => "disabled" }
    Mode { Enforce => "enforce", Audit => "audit" }
    DenyResponse { NotFound => "not_found", Forbidden => "forbidden" }
    Dependencies { Forge => "forge", Strict => "strict" }
    LogFormat { Text => "text", Json => "json" }
}

impl Features {
    /// `(key, level)` for each level the config states, in the config's key spelling.
    pub fn stated(&self) -> Vec<(&'static str, AccessLevel)> {
        [
            ("repository", self.repository),
            ("artifacts", self.artifacts),
            ("packages", self.packages),
            ("registry", self.registry),
            ("releases", self.releases),
            ("environments", self.environments),
        ]
        .into_iter()
        .filter_map(|(key, level)| Some((key, level?)))
        .collect()
    }
}

impl fmt::Display for Ref {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ref::Id(id) => write!(f, "{id}"),
            Ref::Path(path) => f.write_str(path),
        }
    }
}

impl Cidr {
    /// Whether `ip` is in this network. An IPv4-mapped IPv6 peer (`::ffff:10.0.0.1`, as a
    /// dual-stack listener reports it) matches IPv4 networks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match (self.addr, ip) {
            (IpAddr::V4(_), IpAddr::V6(v6)) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            _ => ip,
        };
        self.addr.is_ipv4() == ip.is_ipv4()
            && masked(self.addr, self.prefix) == masked(ip, self.prefix)
    }

    /// `10.0.0.0/8`, `::1/128`, or a bare address (one host). Host bits are cleared so the
    /// summary shows the network an entry really covers.
    fn parse(s: &str) -> Result<Cidr, String> {
        let bad = || format!("`{s}` is not an IP address or CIDR (e.g. 10.0.0.0/8, ::1/128)");
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{s}`: the prefix length must be at most {max}"))?,
            Some(_) => return Err(bad()),
        };
        Ok(Cidr {
            addr: masked(addr, prefix),
            prefix,
        })
    }
}

/// `addr` with all but its first `prefix` bits cleared (a prefix past the family's width keeps
/// every bit, so hand-built `Cidr`s cannot make this panic).
fn masked(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let mask = u32::MAX
                .checked_shl(32u32.saturating_sub(prefix.into()))
                .unwrap_or(0);
            IpAddr::V4((u32::from(a) & mask).into())
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX
                .checked_shl(128u32.saturating_sub(prefix.into()))
                .unwrap_or(0);
            IpAddr::V6((u128::from(a) & mask).into())
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}
