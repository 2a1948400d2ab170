//! The guard on `routes[].path`: a route may open only endpoints that have no target project.
//!
//! A regex cannot be intersected with "every project path", so the guard probes it: the
//! pattern must start with a literal `/`, and must match none of a fixed list of forbidden
//! paths nor its own literal prefix followed by project-ish tails. It catches mistakes
//! (`^/api/v4/`, `^/g/p`), not a determined author: the config's author is trusted.

use super::de::parse_path;

/// Representative paths a route must never match: scopegate scopes these itself, and a route
/// over them would hand a project's API, jobs, Git, registry or GraphQL to every listed source.
/// Case variants are here because a pattern may carry `(?i)`.
pub(super) const FORBIDDEN_PROBES: &[&str] = &[
    "/api/graphql",
    "/API/GRAPHQL",
    "/api/graphql/",
    "/api/v4/projects/",
    "/api/v4/projects/1",
    "/API/V4/PROJECTS/1",
    "/Api/V4/Projects/1/jobs",
    "/api/v4/projects/g%2Fp/repository/files",
    "/api/v4/projects/g/p/repository/files",
    "/api/v4/projects/1/packages/maven/x",
    "/api/v4/projects/1/jobs/artifacts/main/download",
    "/api/v4/jobs/1/artifacts",
    "/jwt/auth",
    "/JWT/AUTH",
    "/jwt/auth/",
    "/g/p.git/info/refs",
    "/g/p/info/refs",
    "/G/P.GIT/INFO/REFS",
    "/g/s/p.git/info/refs",
    "/g/p.wiki.git/info/refs",
    "/g/p.design.git/info/refs",
    "/g/p.git/git-upload-pack",
    "/g/p/git-upload-pack",
    "/g/p.git/git-receive-pack",
    "/g/p/git-receive-pack",
    "/g/p.git/info/lfs/objects/batch",
    "/g/p.git/info/lfs/locks",
    "/g/p.git/gitlab-lfs/objects/0123abcd",
];

/// Appended to a pattern's literal prefix: `^/api/v4/projects/42/` matches none of the probes
/// above, but does match its own prefix plus `x`.
const PROBE_TAILS: &[&str] = &[
    "",
    "x",
    "1",
    "/1",
    "/info/refs",
    "info/refs",
    ".git/info/refs",
    "x/info/refs",
    "x.git/info/refs",
    "/git-upload-pack",
    "git-upload-pack",
    ".git/git-upload-pack",
    "x.git/git-upload-pack",
    "/git-receive-pack",
    "git-receive-pack",
    ".git/git-receive-pack",
    "x.git/git-receive-pack",
    ".git/info/lfs/objects/batch",
    "x.git/info/lfs/objects/batch",
    ".git/gitlab-lfs/objects/x",
    "x.git/gitlab-lfs/objects/x",
    ".wiki.git/info/refs",
];

/// Whether `path` is one scopegate scopes itself: `api`, `git`, `registry`, GraphQL, and the
/// runner's `/api/v4/jobs/:id/…` (a route there would sidestep `runner.dependencies: strict`).
pub(super) fn is_forbidden(path: &str) -> bool {
    let p = path.to_ascii_lowercase();
    let under = |root: &str| p == root || p.starts_with(&format!("{root}/"));
    let api = ["/api/v4/projects/", "/api/v4/jobs/"];
    if under("/api/graphql") || api.iter().any(|a| p.starts_with(a)) || under("/jwt/auth") {
        return true;
    }
    if p.starts_with("/api/") {
        return false; // `api` is a reserved top-level namespace: no project lives there
    }
    let repo = ["/info/refs", "/git-upload-pack", "/git-receive-pack"]
        .iter()
        .find_map(|end| p.strip_suffix(end).map(|repo| (repo, "")))
        .or_else(|| {
            ["/info/lfs/", "/gitlab-lfs/"]
                .iter()
                .find_map(|m| p.split_once(m))
        })
        .map(|(repo, _)| repo);
    let Some(repo) = repo else { return false };
    let repo = [".wiki.git", ".design.git", ".git"]
        .iter()
        .find_map(|ext| repo.strip_suffix(ext))
        .unwrap_or(repo);
    parse_path(repo, 2).is_ok()
}

pub(super) fn parse_route_path(s: &str) -> Result<regex::Regex, String> {
    if let Err(e) = regex::Regex::new(s) {
        let detail = e.to_string();
        let short = detail.lines().rev().find_map(|l| l.strip_prefix("error: "));
        return Err(format!(
            "`{s}` is not a valid regex: {}",
            short.unwrap_or(&detail)
        ));
    }
    let re = regex::Regex::new(&format!("^(?:{s})"))
        .map_err(|e| format!("`{s}` is not a valid regex: {e}"))?;
    let alternatives = top_level_alternatives(s);
    for alt in &alternatives {
        if !strip_anchor(alt).starts_with('/') {
            return Err(format!(
                "route path `{s}` must start with a literal `/` (e.g. '^/api/v4/groups/42/-/packages/'): \
                 a pattern that can match anywhere could open project routes"
            ));
        }
    }
    let derived = alternatives.iter().flat_map(|alt| {
        let prefix = literal_prefix(alt);
        PROBE_TAILS
            .iter()
            .map(move |tail| format!("{prefix}{tail}"))
    });
    let probes = FORBIDDEN_PROBES
        .iter()
        .map(|p| p.to_string())
        .chain(derived);
    for probe in probes {
        if re.is_match(&probe) && is_forbidden(&probe) {
            return Err(format!(
                "route path `{s}` matches `{probe}`: project API, jobs, Git, registry (/jwt/auth) \
                 and GraphQL paths are scoped by scopegate itself; routes are for endpoints with \
                 no target project"
            ));
        }
    }
    Ok(re)
}

/// Splits a pattern at its top-level `|` (outside groups and classes); a heuristic over the
/// text, good enough because the pattern has already compiled.
fn top_level_alternatives(p: &str) -> Vec<&str> {
    let (mut out, mut depth, mut in_class, mut escaped, mut start) =
        (Vec::new(), 0, false, false, 0);
    for (i, c) in p.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '[' => in_class = true,
            ']' => in_class = false,
            '(' if !in_class => depth += 1,
            ')' if !in_class => depth -= 1,
            '|' if !in_class && depth == 0 => {
                out.push(&p[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&p[start..]);
    out
}

/// An alternative without its leading `^` and inline flags such as `(?i)`: they match no text.
fn strip_anchor(alt: &str) -> &str {
    let mut rest = alt;
    loop {
        if let Some(r) = rest.strip_prefix('^') {
            rest = r;
            continue;
        }
        let flags = rest.strip_prefix("(?").and_then(|r| r.split_once(')'));
        match flags {
            Some((f, r))
                if !f.is_empty() && f.bytes().all(|b| b.is_ascii_alphabetic() || b == b'-') =>
            {
                rest = r
            }
            _ => return rest,
        }
    }
}

/// The text an alternative must begin with: `^/a\.b/cd?` → `/a.b/c` (a char a quantifier
/// applies to may be absent, so it is left off).
fn literal_prefix(alt: &str) -> String {
    let mut out = String::new();
    let mut chars = strip_anchor(alt).chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(e) if e.is_ascii_punctuation() => out.push(e),
                _ => break,
            },
            '?' | '*' | '{' => {
                out.pop();
                break;
            }
            '.' | '+' | '(' | ')' | '|' | '[' | ']' | '}' | '^' | '$' => break,
            c => out.push(c),
        }
    }
    out
}
