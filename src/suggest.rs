//! `scopegate allowlist suggest`: from the authentication log to inbound allowlist entries.
//!
//! Pure parsing and aggregation (the CLI in `main.rs` reads the files and prints). The log's
//! lines are kept when they record cross-project job-token traffic that a target's inbound
//! allowlist refused (`deny`) or would refuse (`would_deny`, audit mode), registry pulls
//! included (per image's project, from `inbound_refused`); 401s, own-project
//! traffic, feature reads allowed for a public or internal project, requests naming no
//! project and refusals an allowlist cannot fix (outbound scope, registry writes, pushes) are
//! left out. The output is one YAML block per target project, ready to paste under
//! `projects:`: with the running config given, entries it already allows are omitted and a
//! project it lists is printed whole — its existing settings and inbound list plus the new
//! sources — so the block replaces the old entry without losing anything.

use crate::config::{Config, ProjectConfig, Ref};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The reason the decision records when a target's inbound allowlist refused the source.
pub const INBOUND_REASON: &str = "not_in_inbound_allowlist";

/// The auth-log fields `suggest` reads (see [`crate::gate::auth_log::AuthLine`]); other
/// fields are ignored, so older and newer logs both read.
#[derive(Debug, Clone, Deserialize)]
pub struct LogLine {
    pub time: String,
    pub source_project: String,
    pub source_project_id: u64,
    #[serde(default)]
    pub target_project: Option<String>,
    #[serde(default)]
    pub target_project_id: Option<u64>,
    #[serde(default)]
    pub target_visibility: Option<String>,
    pub decision: String,
    pub reason: String,
    pub status: u16,
    /// Registry requests: the images' projects whose inbound allowlist refused a pull.
    #[serde(default)]
    pub inbound_refused: Vec<RefusedTarget>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RefusedTarget {
    pub path: String,
    pub id: u64,
    #[serde(default)]
    pub visibility: Option<String>,
}

/// One source reaching one target that an inbound allowlist entry would let in.
struct Observation<'l> {
    target: &'l str,
    target_id: Option<u64>,
    visibility: Option<&'l str>,
}

/// A line that could not be read, by 1-based line number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLine {
    pub line: usize,
    pub message: String,
}

/// Parses an auth log; blank lines are skipped, unreadable ones reported and skipped.
pub fn parse(text: &str) -> (Vec<LogLine>, Vec<BadLine>) {
    let mut lines = Vec::new();
    let mut bad = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        if raw.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<LogLine>(raw) {
            Ok(l) => lines.push(l),
            Err(e) => bad.push(BadLine {
                line: i + 1,
                message: e.to_string(),
            }),
        }
    }
    (lines, bad)
}

/// Whether a line is traffic an inbound allowlist entry would let through.
pub fn wants_entry(l: &LogLine) -> bool {
    let cross_project = match (l.target_project_id, &l.target_project) {
        (Some(id), _) => id != l.source_project_id,
        (None, Some(path)) => !path.eq_ignore_ascii_case(&l.source_project),
        (None, None) => false,
    };
    (l.decision == "deny" || l.decision == "would_deny")
        && l.reason == INBOUND_REASON
        && l.status != 401
        && l.target_project.is_some()
        // A registry request naming several images records them comma-separated, and no
        // single inbound reason: nothing to attribute.
        && !l.target_project.as_deref().unwrap_or_default().contains(',')
        && cross_project
}

/// One source seen reaching one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub source_id: u64,
    pub count: u64,
    pub first: String,
    pub last: String,
}

/// What one target project needs on its inbound allowlist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetSuggestion {
    pub id: Option<u64>,
    pub path: String,
    pub visibility: Option<String>,
    /// Source project path → what was seen; only sources not yet allowed.
    pub sources: BTreeMap<String, Seen>,
}

/// What a line contributes: its own target when the inbound allowlist refused it, and each
/// registry image's project whose allowlist refused a pull (a `docker pull` of another
/// project's image is refused scope by scope, under the registry's own reason).
fn observations(l: &LogLine) -> Vec<Observation<'_>> {
    let mut out = Vec::new();
    if wants_entry(l) {
        if let Some(target) = l.target_project.as_deref() {
            out.push(Observation {
                target,
                target_id: l.target_project_id,
                visibility: l.target_visibility.as_deref(),
            });
        }
    }
    if l.status != 401 {
        for r in l
            .inbound_refused
            .iter()
            .filter(|r| r.id != l.source_project_id)
        {
            out.push(Observation {
                target: &r.path,
                target_id: Some(r.id),
                visibility: r.visibility.as_deref(),
            });
        }
    }
    out
}

/// Groups the wanted lines per target and source, leaving out what `config` already allows.
pub fn aggregate(lines: &[LogLine], config: Option<&Config>) -> Vec<TargetSuggestion> {
    let mut by_target: BTreeMap<String, TargetSuggestion> = BTreeMap::new();
    for (l, o) in lines
        .iter()
        .flat_map(|l| observations(l).into_iter().map(move |o| (l, o)))
    {
        let path = o.target.to_ascii_lowercase();
        let t = by_target
            .entry(path.clone())
            .or_insert_with(|| TargetSuggestion {
                id: None,
                path,
                visibility: None,
                sources: BTreeMap::new(),
            });
        t.id = t.id.or(o.target_id);
        if let Some(v) = o.visibility {
            t.visibility = Some(v.to_owned());
        }
        let source = l.source_project.to_ascii_lowercase();
        let seen = t.sources.entry(source).or_insert_with(|| Seen {
            source_id: l.source_project_id,
            count: 0,
            first: l.time.clone(),
            last: l.time.clone(),
        });
        seen.count += 1;
        // RFC 3339 UTC timestamps of one fixed width compare as strings.
        if l.time < seen.first {
            seen.first.clone_from(&l.time);
        }
        if l.time > seen.last {
            seen.last.clone_from(&l.time);
        }
    }
    let mut out: Vec<TargetSuggestion> = by_target.into_values().collect();
    if let Some(config) = config {
        for t in &mut out {
            if let Some(p) = configured(config, t) {
                t.sources
                    .retain(|path, seen| !already_allowed(config, p, path, seen.source_id));
            }
        }
        out.retain(|t| !t.sources.is_empty());
    }
    out
}

/// The config's entry for a target, by id, else by path.
fn configured<'c>(config: &'c Config, t: &TargetSuggestion) -> Option<&'c ProjectConfig> {
    t.id.and_then(|id| config.project(id)).or_else(|| {
        config.projects.iter().find(|p| {
            p.path
                .as_deref()
                .is_some_and(|q| q.eq_ignore_ascii_case(&t.path))
        })
    })
}

/// Does the config's inbound allowlist for `p` already let the source in? Paths are matched
/// as the gateway does without a service token: project paths exactly (or through the
/// config's id/path pairs), groups by whole path segments. A group given by id cannot be
/// checked offline, so it is assumed not to contain the source: the suggestion is then
/// redundant at worst, never missing.
fn already_allowed(config: &Config, p: &ProjectConfig, source: &str, source_id: u64) -> bool {
    if !p.inbound.enabled || p.id == source_id {
        return true;
    }
    let project_listed = p.inbound.projects.iter().any(|r| match r {
        Ref::Id(id) => *id == source_id,
        Ref::Path(path) => {
            path.eq_ignore_ascii_case(source)
                || config.projects.iter().any(|c| {
                    c.id == source_id
                        && c.path
                            .as_deref()
                            .is_some_and(|q| q.eq_ignore_ascii_case(path))
                })
        }
    });
    let group_listed = p.inbound.groups.iter().any(|r| match r {
        Ref::Id(_) => false,
        Ref::Path(group) => {
            source.len() > group.len()
                && source[..group.len()].eq_ignore_ascii_case(group)
                && source.as_bytes()[group.len()] == b'/'
        }
    });
    project_listed || group_listed
}

/// The YAML to paste under `projects:`, with a comment per source (requests, first and last
/// seen). Targets whose id the log does not name cannot be written as config entries; they
/// are listed as comments.
pub fn render(suggestions: &[TargetSuggestion], config: Option<&Config>) -> String {
    let mut out = String::new();
    if suggestions.is_empty() {
        out.push_str("# No cross-project job-token traffic to allow: nothing to add.\n");
        return out;
    }
    out.push_str(
        "# Paste under `projects:`. A project already in the config is printed whole (its\n\
         # settings, its inbound list and the new sources): replace its entry with this one.\n",
    );
    for t in suggestions {
        let existing = config.and_then(|c| configured(c, t));
        let Some(id) = existing.map(|p| p.id).or(t.id) else {
            let _ = writeln!(
                out,
                "# {}: the log names no project id; add by hand:",
                t.path
            );
            for source in t.sources.keys() {
                let _ = writeln!(out, "#   {source}");
            }
            continue;
        };
        out.push('\n');
        let _ = writeln!(out, "- id: {id}");
        let path = existing.and_then(|p| p.path.as_deref()).unwrap_or(&t.path);
        let _ = writeln!(out, "  path: {path}");
        match existing {
            Some(p) => write_settings(&mut out, p),
            None => {
                // A new entry must not make the project look stricter than the forge says
                // it is (visibility is the stricter of the two): state what the gate saw.
                if let Some(v) = t.visibility.as_deref().filter(|v| *v != "private") {
                    let _ = writeln!(out, "  visibility: {v}");
                }
            }
        }
        out.push_str("  inbound:\n    projects:\n");
        if let Some(p) = existing {
            for r in &p.inbound.projects {
                let _ = writeln!(out, "      - {r}");
            }
        }
        for (source, seen) in &t.sources {
            let _ = writeln!(
                out,
                "      - {source}  # id {}: {} request{}, first {}, last {}",
                seen.source_id,
                seen.count,
                if seen.count == 1 { "" } else { "s" },
                seen.first,
                seen.last
            );
        }
        if let Some(p) = existing.filter(|p| !p.inbound.groups.is_empty()) {
            out.push_str("    groups:\n");
            for g in &p.inbound.groups {
                let _ = writeln!(out, "      - {g}");
            }
        }
    }
    out
}

/// Everything but `inbound` of a configured project, as the config states it.
fn write_settings(out: &mut String, p: &ProjectConfig) {
    let _ = writeln!(out, "  visibility: {}", p.visibility.as_str());
    let stated = p.features.stated();
    if !stated.is_empty() {
        let features: Vec<String> = stated
            .iter()
            .map(|(k, v)| format!("{k}: {}", v.as_str()))
            .collect();
        let _ = writeln!(out, "  features: {{ {} }}", features.join(", "));
    }
    if p.outbound.enabled || !p.outbound.projects.is_empty() {
        let projects: Vec<String> = p.outbound.projects.iter().map(Ref::to_string).collect();
        let _ = writeln!(
            out,
            "  outbound: {{ enabled: {}, projects: [{}] }}",
            p.outbound.enabled,
            projects.join(", ")
        );
    }
    if p.git_push {
        out.push_str("  git_push: true\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn line(
        source: (&str, u64),
        target: Option<(&str, u64)>,
        decision: &str,
        reason: &str,
        status: u16,
        time: &str,
    ) -> String {
        let (tp, tid) = match target {
            Some((p, id)) => (format!("\"{p}\""), id.to_string()),
            None => ("null".into(), "null".into()),
        };
        format!(
            r#"{{"time":"{time}","request_id":"x","method":"GET","path":"/p","class":"api","source_project":"{}","source_project_id":{},"job_id":9,"target_project":{tp},"target_project_id":{tid},"target_visibility":"private","decision":"{decision}","reason":"{reason}","status":{status}}}"#,
            source.0, source.1
        )
    }

    const T1: &str = "2026-01-01T10:00:00.000Z";
    const T2: &str = "2026-01-02T10:00:00.000Z";
    const T3: &str = "2026-01-03T10:00:00.000Z";

    fn sample() -> String {
        [
            // Two sources into g/secret, one of them twice (out of order in time).
            line(
                ("g/other", 4),
                Some(("g/secret", 2)),
                "would_deny",
                INBOUND_REASON,
                200,
                T2,
            ),
            line(
                ("g/other", 4),
                Some(("g/secret", 2)),
                "would_deny",
                INBOUND_REASON,
                200,
                T1,
            ),
            line(
                ("g/tools/lint", 8),
                Some(("g/secret", 2)),
                "deny",
                INBOUND_REASON,
                404,
                T3,
            ),
            // Left out: own project, a feature read, outbound, a 401, no target, allowed.
            line(
                ("g/secret", 2),
                Some(("g/secret", 2)),
                "allow",
                "same_project",
                200,
                T1,
            ),
            line(
                ("g/other", 4),
                Some(("g/public", 3)),
                "allow",
                "feature_read",
                200,
                T1,
            ),
            line(
                ("g/other", 4),
                Some(("g/x", 9)),
                "would_deny",
                "not_in_outbound_scope",
                200,
                T1,
            ),
            line(
                ("g/other", 4),
                Some(("g/secret", 2)),
                "would_deny",
                INBOUND_REASON,
                401,
                T1,
            ),
            line(("g/other", 4), None, "would_deny", "unknown_route", 200, T1),
            line(
                ("g/app", 1),
                Some(("g/secret", 2)),
                "allow",
                "inbound_allowlisted",
                200,
                T1,
            ),
        ]
        .join("\n")
    }

    #[test]
    fn parse_reports_bad_lines_by_number_and_keeps_going() {
        let text = format!(
            "{}\nnot json\n\n{{\"time\":1}}\n{}\n",
            line(
                ("a/b", 1),
                Some(("c/d", 2)),
                "deny",
                INBOUND_REASON,
                404,
                T1
            ),
            line(
                ("a/b", 1),
                Some(("c/d", 2)),
                "deny",
                INBOUND_REASON,
                404,
                T2
            )
        );
        let (lines, bad) = parse(&text);
        assert_eq!(lines.len(), 2);
        assert_eq!(bad.iter().map(|b| b.line).collect::<Vec<_>>(), vec![2, 4]);
    }

    #[test]
    fn aggregates_cross_project_inbound_refusals_only() {
        let (lines, bad) = parse(&sample());
        assert!(bad.is_empty());
        let s = aggregate(&lines, None);
        assert_eq!(s.len(), 1, "{s:?}");
        let t = &s[0];
        assert_eq!((t.id, t.path.as_str()), (Some(2), "g/secret"));
        assert_eq!(
            t.sources.keys().collect::<Vec<_>>(),
            vec!["g/other", "g/tools/lint"]
        );
        let other = &t.sources["g/other"];
        assert_eq!((other.source_id, other.count), (4, 2));
        assert_eq!((other.first.as_str(), other.last.as_str()), (T1, T2));
        let yaml = render(&s, None);
        assert!(yaml.contains("- id: 2\n  path: g/secret\n  inbound:\n    projects:\n      - g/other  # id 4: 2 requests, first 2026-01-01T10:00:00.000Z, last 2026-01-02T10:00:00.000Z\n      - g/tools/lint  # id 8: 1 request,"), "{yaml}");
    }

    #[test]
    fn with_a_config_keeps_what_is_there_and_omits_what_it_allows() {
        let yaml = "listen: 127.0.0.1:0\nupstream:\n  url: http://127.0.0.1:1\nprojects:\n  - id: 2\n    path: g/secret\n    visibility: internal\n    features: { repository: private }\n    outbound: { enabled: true, projects: [g/app] }\n    inbound:\n      projects: [1, g/tools/lint]\n      groups: [g/trusted]\n";
        let config = Config::from_yaml_str(yaml, Path::new("p.yaml")).expect("config");
        let mut text = sample();
        text.push('\n');
        text.push_str(&line(
            ("g/trusted/sub/x", 7),
            Some(("g/secret", 2)),
            "deny",
            INBOUND_REASON,
            404,
            T1,
        ));
        let (lines, _) = parse(&text);
        let s = aggregate(&lines, Some(&config));
        assert_eq!(
            s[0].sources.keys().collect::<Vec<_>>(),
            vec!["g/other"],
            "lint listed, g/trusted/sub/x in g/trusted"
        );
        let out = render(&s, Some(&config));
        // Merged into the config in place of the old entry, the result loads and keeps
        // every setting.
        let merged =
            format!("listen: 127.0.0.1:0\nupstream:\n  url: http://127.0.0.1:1\nprojects:\n{out}");
        let merged = Config::from_yaml_str(&merged, Path::new("merged.yaml"))
            .unwrap_or_else(|e| panic!("{e}\n{out}"));
        let p = merged.project(2).expect("project 2");
        assert_eq!(
            p.inbound.projects,
            vec![
                Ref::Id(1),
                Ref::Path("g/tools/lint".into()),
                Ref::Path("g/other".into())
            ]
        );
        assert_eq!(p.inbound.groups, vec![Ref::Path("g/trusted".into())]);
        let old = config.project(2).expect("old");
        assert_eq!(
            (p.visibility, &p.features, &p.outbound),
            (old.visibility, &old.features, &old.outbound)
        );
        // Nothing left to suggest once merged.
        assert!(aggregate(&lines, Some(&merged)).is_empty());
        assert!(render(&[], Some(&merged)).starts_with("# No cross-project"));
    }

    #[test]
    fn registry_pulls_refused_by_an_allowlist_count_per_image_project() {
        let text = format!(
            "{}\n{}",
            r#"{"time":"2026-01-01T10:00:00.000Z","source_project":"g/app","source_project_id":1,"target_project":"g/secret,g/app","decision":"allow","reason":"registry_scope_filtered","status":200,"inbound_refused":[{"path":"g/secret","id":2,"visibility":"internal"}]}"#,
            // A 401 counts for nothing, whatever it records.
            r#"{"time":"2026-01-01T10:00:00.000Z","source_project":"g/app","source_project_id":1,"target_project":"g/secret","decision":"deny","reason":"registry_scope","status":401,"inbound_refused":[{"path":"g/secret","id":2}]}"#
        );
        let (lines, bad) = parse(&text);
        assert!(bad.is_empty(), "{bad:?}");
        let s = aggregate(&lines, None);
        assert_eq!(s.len(), 1);
        assert_eq!((s[0].id, s[0].path.as_str()), (Some(2), "g/secret"));
        assert_eq!(s[0].sources["g/app"].count, 1);
        assert!(render(&s, None).contains("  visibility: internal\n"));
    }

    #[test]
    fn inbound_disabled_allows_everyone() {
        let yaml = "listen: 127.0.0.1:0\nupstream:\n  url: http://127.0.0.1:1\nprojects:\n  - id: 2\n    path: g/secret\n    inbound: { enabled: false }\n";
        let config = Config::from_yaml_str(yaml, Path::new("p.yaml")).expect("config");
        let (lines, _) = parse(&sample());
        assert!(aggregate(&lines, Some(&config)).is_empty());
    }
}
