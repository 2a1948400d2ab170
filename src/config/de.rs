//! The visitors and value parsers behind `proxy.yaml`'s `deserialize_with` attributes.
//!
//! Each checked value is refused *inside* its own visitor, where serde_yaml_ng knows the node's
//! position: an error raised after a visitor returns would be stamped with the enclosing
//! mapping's position instead, and the operator would look at the wrong line.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use serde::de::value::MapAccessDeserializer;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::route_path::parse_route_path;
use super::{Cidr, ProjectConfig, Ref};

/// A plain-string visitor running `parse`; `expecting` is what a wrong-typed node is told.
struct Parsed<T>(&'static str, fn(&str) -> Result<T, String>);

impl<T> Visitor<'_> for Parsed<T> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        (self.1)(v).map_err(E::custom)
    }
}

fn parsed<'de, D: Deserializer<'de>, T>(
    d: D,
    expecting: &'static str,
    parse: fn(&str) -> Result<T, String>,
) -> Result<T, D::Error> {
    d.deserialize_str(Parsed(expecting, parse))
}

/// A key written with nothing after it (`routes:` with every entry commented out) means empty.
pub(super) fn null_default<'de, D: Deserializer<'de>, T: Deserialize<'de> + Default>(
    d: D,
) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

pub(super) fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    parsed(d, "a duration such as 30s, 500ms, 5m or 1h", parse_duration)
}

pub(super) fn timeout<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    parsed(d, "a duration such as 30s, 500ms, 5m or 1h", |s| {
        parse_duration(s).and_then(|t| nonzero(s, t, Duration::ZERO))
    })
}

pub(super) fn size<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    parsed(d, "a size such as 64KiB, 1MiB or 512B", |s| {
        parse_size(s).and_then(|n| nonzero(s, n, 0))
    })
}

fn nonzero<T: PartialEq>(s: &str, value: T, zero: T) -> Result<T, String> {
    if value == zero {
        Err(format!("`{s}`: must be more than zero"))
    } else {
        Ok(value)
    }
}

pub(super) fn count<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    parsed(d, "a positive integer", |s| {
        let s = s.trim();
        match s.parse::<usize>() {
            Ok(n) if n > 0 && s.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
            _ => Err(format!("`{s}`: must be a positive integer")),
        }
    })
}

pub(super) fn address<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    parsed(d, "an address ip:port", |s| {
        s.trim().parse().map_err(|_| {
            format!(
                "`{s}` is not an address: write ip:port, e.g. 127.0.0.1:8080 or '[::1]:8080' \
                 (host names are not resolved here)"
            )
        })
    })
}

pub(super) fn cidrs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Cidr>, D::Error> {
    struct Entry(Cidr);
    impl<'de> Deserialize<'de> for Entry {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            parsed(d, "an IP address or CIDR", |s| Cidr::parse(s.trim())).map(Entry)
        }
    }
    let entries: Vec<Entry> = null_default(d)?;
    Ok(entries.into_iter().map(|e| e.0).collect())
}

pub(super) fn upstream_url<'de, D: Deserializer<'de>>(d: D) -> Result<http::Uri, D::Error> {
    parsed(
        d,
        "a URL http://host:port or https://host:port",
        parse_upstream_url,
    )
}

pub(super) fn url_root<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Option::<UrlRoot>::deserialize(d)?
        .map(|r| r.0)
        .unwrap_or_default())
}

struct UrlRoot(String);
impl<'de> Deserialize<'de> for UrlRoot {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parsed(d, "a path such as /gitlab", parse_url_root).map(UrlRoot)
    }
}

pub(super) fn env_name<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    struct Name(String);
    impl<'de> Deserialize<'de> for Name {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            parsed(d, "an environment variable name", |s| {
                let ok = s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                    && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
                if ok {
                    Ok(s.to_string())
                } else {
                    // Not echoed: a token pasted here by mistake must not reach a log.
                    Err(
                        "not an environment variable name: give the variable's name (e.g. \
                         SCOPEGATE_FORGE_TOKEN), never the token itself"
                            .to_string(),
                    )
                }
            })
            .map(Name)
        }
    }
    Ok(Option::<Name>::deserialize(d)?.map(|n| n.0))
}

pub(super) fn instance_prefix<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    struct Prefix(String);
    impl<'de> Deserialize<'de> for Prefix {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            parsed(d, "a token prefix", |s| {
                if s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                {
                    Ok(s.to_string())
                } else {
                    Err(format!(
                        "`{s}` is not a token prefix: letters, digits, `-` and `_` only"
                    ))
                }
            })
            .map(Prefix)
        }
    }
    Ok(Option::<Prefix>::deserialize(d)?
        .map(|p| p.0)
        .unwrap_or_default())
}

/// References are parsed from the scalar's text, not YAML's reading of it, so `05` and `0x10`
/// are judged by the same `[1-9][0-9]{0,18}` rule as a request path.
struct ProjectRef(Ref);
impl<'de> Deserialize<'de> for ProjectRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parsed(d, "a project id or full path", |s| parse_ref(s, 2)).map(ProjectRef)
    }
}

struct GroupRef(Ref);
impl<'de> Deserialize<'de> for GroupRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parsed(d, "a group id or full path", |s| parse_ref(s, 1)).map(GroupRef)
    }
}

pub(super) fn project_refs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Ref>, D::Error> {
    let refs: Vec<ProjectRef> = null_default(d)?;
    Ok(refs.into_iter().map(|r| r.0).collect())
}

pub(super) fn group_refs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Ref>, D::Error> {
    let refs: Vec<GroupRef> = null_default(d)?;
    Ok(refs.into_iter().map(|r| r.0).collect())
}

pub(super) fn project_id<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    parsed(d, "a project id", |s| {
        parse_id(s.trim()).ok_or_else(|| {
            format!("`{s}` is not a project id: 1 to 19 digits with no leading zero")
        })
    })
}

pub(super) fn project_path<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    struct FullPath(String);
    impl<'de> Deserialize<'de> for FullPath {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            parsed(d, "a full project path such as g/p", |s| parse_path(s, 2)).map(FullPath)
        }
    }
    Ok(Option::<FullPath>::deserialize(d)?.map(|p| p.0))
}

pub(super) fn methods<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<http::Method>, D::Error> {
    struct Name(http::Method);
    impl<'de> Deserialize<'de> for Name {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            parsed(d, "an HTTP method", |s| {
                // A closed list, so a typo (`GTE`) fails here rather than never matching.
                const KNOWN: &[&str] =
                    &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];
                let upper = s.trim().to_ascii_uppercase();
                match KNOWN.contains(&upper.as_str()) {
                    true => http::Method::from_bytes(upper.as_bytes()).map_err(|e| e.to_string()),
                    false => Err(format!("`{s}` is not one of {}", KNOWN.join(", "))),
                }
            })
            .map(Name)
        }
    }
    let names: Vec<Name> = null_default(d)?;
    Ok(names.into_iter().map(|n| n.0).collect())
}

pub(super) fn route_path<'de, D: Deserializer<'de>>(d: D) -> Result<regex::Regex, D::Error> {
    parsed(
        d,
        "a regex over the decoded path, starting with /",
        parse_route_path,
    )
}

/// Duplicates are cross-item checks, so they run in a visitor over the sequence that hands each
/// item what came before: the error is then raised while that item is being read, and carries
/// the duplicate's own position.
pub(super) fn projects<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ProjectConfig>, D::Error> {
    #[derive(Default)]
    struct Seen {
        ids: HashMap<u64, usize>,
        paths: HashMap<String, usize>,
        items: Vec<ProjectConfig>,
    }
    struct Projects;
    impl<'de> Visitor<'de> for Projects {
        type Value = Vec<ProjectConfig>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list of projects")
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut seen = Seen::default();
            while seq.next_element_seed(&mut seen)?.is_some() {}
            Ok(seen.items)
        }
    }
    impl<'de> DeserializeSeed<'de> for &mut Seen {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_map(self)
        }
    }
    impl<'de> Visitor<'de> for &mut Seen {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a project (a mapping with at least `id`)")
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
            let p = ProjectConfig::deserialize(MapAccessDeserializer::new(map))?;
            let index = self.items.len();
            if let Some(first) = self.ids.insert(p.id, index) {
                return Err(de::Error::custom(format!(
                    "duplicate project id {} (already projects[{first}])",
                    p.id
                )));
            }
            if let Some(path) = &p.path {
                if let Some(first) = self.paths.insert(path.clone(), index) {
                    return Err(de::Error::custom(format!(
                        "duplicate project path {path} (already projects[{first}])"
                    )));
                }
            }
            self.items.push(p);
            Ok(())
        }
    }
    d.deserialize_any(Projects)
}

// ---- value parsers (plain functions, so tests can drive them without YAML)

/// `[1-9][0-9]{0,18}`, GitLab's `INTEGER_ID_REGEX`.
fn parse_id(s: &str) -> Option<u64> {
    let id =
        (1..=19).contains(&s.len()) && !s.starts_with('0') && s.bytes().all(|b| b.is_ascii_digit());
    id.then(|| s.parse().ok()).flatten()
}

/// An id, else a full path of at least `min_segments` segments.
pub(super) fn parse_ref(s: &str, min_segments: usize) -> Result<Ref, String> {
    let s = s.trim();
    if let Some(id) = parse_id(s) {
        return Ok(Ref::Id(id));
    }
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        // `05` would be read as 5 by GitLab's API but is not an id: refuse rather than guess.
        return Err(format!(
            "`{s}` is not an id: ids are 1 to 19 digits with no leading zero"
        ));
    }
    parse_path(s, min_segments).map(Ref::Path)
}

/// A full path: segments `[A-Za-z0-9_][A-Za-z0-9_.-]*`; lower-cased, outer `/` dropped.
pub(super) fn parse_path(s: &str, min_segments: usize) -> Result<String, String> {
    let inner = s.strip_prefix('/').unwrap_or(s);
    let inner = inner.strip_suffix('/').unwrap_or(inner);
    let valid_segment = |seg: &str| {
        seg.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
            && seg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
    };
    let segments: Vec<&str> = inner.split('/').collect();
    if !segments.iter().all(|seg| valid_segment(seg)) {
        return Err(format!(
            "`{s}` is not a full path: segments of letters, digits, `_`, `.` and `-` (not \
             starting with `.` or `-`), separated by `/`"
        ));
    }
    if segments.len() < min_segments {
        return Err(format!(
            "`{s}` is not a full project path: it needs its group too, e.g. `group/{s}`"
        ));
    }
    Ok(inner.to_ascii_lowercase())
}

/// `<integer><unit>`; a bare number is refused because `30` could mean seconds or milliseconds.
pub(super) fn parse_duration(s: &str) -> Result<Duration, String> {
    let (n, unit) = split_number(s)
        .ok_or_else(|| format!("`{s}` is not a duration: write a number and a unit, e.g. 30s"))?;
    let millis: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "" => {
            return Err(format!(
                "`{s}` has no unit: write e.g. {s}s (units: ms, s, m, h)"
            ))
        }
        _ => return Err(format!("`{s}`: unknown unit `{unit}` (units: ms, s, m, h)")),
    };
    n.checked_mul(millis)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("`{s}` is too long"))
}

/// `<integer><unit>` with `B`, `KB`/`MB`/`GB` (powers of 1000) or `KiB`/`MiB`/`GiB`.
pub(super) fn parse_size(s: &str) -> Result<usize, String> {
    let (n, unit) = split_number(s)
        .ok_or_else(|| format!("`{s}` is not a size: write a number and a unit, e.g. 64KiB"))?;
    let scale: u64 = match unit {
        "B" => 1,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "" => {
            return Err(format!(
                "`{s}` has no unit: write e.g. {s}B (units: B, KB, MB, GB, KiB, MiB, GiB)"
            ))
        }
        _ => {
            return Err(format!(
                "`{s}`: unknown unit `{unit}` (units: B, KB, MB, GB, KiB, MiB, GiB)"
            ))
        }
    };
    n.checked_mul(scale)
        .and_then(|b| usize::try_from(b).ok())
        .ok_or_else(|| format!("`{s}` is too large"))
}

/// Splits `30s` into (30, "s"); `None` without leading digits or on overflow.
fn split_number(s: &str) -> Option<(u64, &str)> {
    let s = s.trim();
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let n = s[..end].parse().ok()?;
    Some((n, s[end..].trim_start()))
}

pub(super) fn parse_upstream_url(s: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = s
        .trim()
        .parse()
        .map_err(|e| format!("`{s}` is not a URL: {e}"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(format!(
            "`{s}`: the forge URL must start with http:// or https://"
        ));
    }
    let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
    if authority.is_empty() || authority.starts_with(':') {
        return Err(format!("`{s}`: the forge URL needs a host"));
    }
    if authority.contains('@') {
        // Not echoed: the value holds a password.
        return Err("the forge URL must not carry credentials (use upstream.token_env)".into());
    }
    if uri.query().is_some() || !matches!(uri.path(), "" | "/") {
        return Err(format!(
            "`{s}`: give the forge as scheme://host:port and put its path in \
             upstream.relative_url_root (e.g. relative_url_root: /gitlab)"
        ));
    }
    Ok(uri)
}

/// `gitlab`, `/gitlab/` → `/gitlab`; `/` → `""`.
pub(super) fn parse_url_root(s: &str) -> Result<String, String> {
    let inner = s.trim().trim_matches('/');
    if inner.is_empty() {
        return Ok(String::new());
    }
    let valid = inner.split('/').all(|seg| {
        !seg.is_empty()
            && seg != "."
            && seg != ".."
            && seg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
    });
    if !valid {
        return Err(format!("`{s}` is not a URL path such as /gitlab"));
    }
    Ok(format!("/{inner}"))
}
