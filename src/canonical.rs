//! Decode-once canonicalisation of the request path (SPEC §3), used for matching only: the
//! raw path is what is forwarded. It sits before classification because every path-based
//! decision ([`crate::target::classify`], configured routes) must read the same bytes.
//!
//! Path-normalisation differences between a gateway and its backend are the classic bypass
//! (Envoy, Istio, Traefik CVEs), so with a job token present anything whose meaning could
//! differ between scopegate and the forge is refused rather than normalised: the forge
//! squeezes `//` (Rails' `Journey::Router::Utils.normalize_path`, Grape's router), Grape
//! matches `%XX` in literal route parts (Mustermann's `encoded`), Ruby's `^…$` are line
//! anchors (`5%0A…`), and a second decode would turn `%252e` into `.`.

use std::borrow::Cow;

use crate::target::Reject;

/// A request path in the three spellings the gateway needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanonicalPath {
    /// The path as received, `upstream.relative_url_root` stripped.
    pub raw: String,
    /// `raw` percent-decoded once (equal to `raw` when that could not be decoded and no job
    /// token is present).
    pub decoded: String,
    /// `decoded`, ASCII-lowercased: for matching only.
    pub lower: String,
}

/// Applies SPEC §3's canonicalisation steps in order to the path component of a
/// request-target (no query, no fragment).
///
/// 400 for what is malformed whatever the request carries; with `job_token`, 404 for what
/// cannot be read safely. Without a job token the request is forwarded anyway, so what cannot
/// be decoded is kept as received (the result is only used to log the request's class).
pub fn canonicalize(
    raw_path: &str,
    relative_url_root: &str,
    job_token: bool,
) -> Result<CanonicalPath, Reject> {
    // 1. Malformed whatever the request carries.
    if raw_path.contains('#') {
        return Err(Reject::BadRequest("fragment in request-target"));
    }
    if !raw_path.starts_with('/') {
        return Err(Reject::BadRequest("request-target is not an absolute path"));
    }
    // RFC 3986 allows only visible ASCII in a path; hyper already refuses most of the rest,
    // this also holds when the path comes from elsewhere (an absolute-form target, a test).
    if raw_path.bytes().any(|b| !(0x21..=0x7e).contains(&b)) {
        return Err(Reject::BadRequest("raw non-ASCII or control byte in path"));
    }
    if has_userinfo(raw_path) {
        return Err(Reject::BadRequest("userinfo in request-target"));
    }

    // 2. The forge lives under the relative root; a path outside it is not the forge's.
    let stripped = match strip_root(raw_path, relative_url_root) {
        Some(s) => s,
        None if job_token => return Err(Reject::NotFound("path outside relative_url_root")),
        None => raw_path,
    };

    // 3. Decode exactly once.
    let decoded = match percent_decode_segment(stripped) {
        Some(d) => d.into_owned(),
        None if job_token => return Err(Reject::NotFound("invalid percent-encoding")),
        None => stripped.to_owned(),
    };

    // 4. What the forge could read differently from us.
    if job_token {
        check_unambiguous(&decoded)?;
    }

    let lower = decoded.to_ascii_lowercase();
    Ok(CanonicalPath {
        raw: stripped.to_owned(),
        decoded,
        lower,
    })
}

/// Percent-decodes `s` once, strictly: `None` when a `%` is not followed by two hex digits or
/// the result is not UTF-8. `+` stays `+` (that is form encoding, not path encoding).
pub fn percent_decode_segment(s: &str) -> Option<Cow<'_, str>> {
    // Most paths have nothing to decode: no copy for them.
    if !s.contains('%') {
        return Some(Cow::Borrowed(s));
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hi = hex_value(*bytes.get(i + 1)?)?;
            let lo = hex_value(*bytes.get(i + 2)?)?;
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).ok().map(Cow::Owned)
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// `//user@host/…`: a network-path reference carrying userinfo, which some parsers read as
/// an authority. The caller hands over only the path, so this is the one spelling left.
fn has_userinfo(path: &str) -> bool {
    path.strip_prefix("//")
        .map(|rest| rest.split('/').next().unwrap_or_default().contains('@'))
        .unwrap_or(false)
}

/// The path below `root` (`"/gitlab"`: `/gitlab` → `/`, `/gitlab/x` → `/x`, `/gitlabx` → none).
/// The comparison is exact: the forge's front end matches its prefix byte for byte.
fn strip_root<'a>(path: &'a str, root: &str) -> Option<&'a str> {
    let root = root.trim_end_matches('/');
    if root.is_empty() {
        return Some(path);
    }
    let rest = path.strip_prefix(root)?;
    if rest.is_empty() {
        Some("/")
    } else if rest.starts_with('/') {
        Some(rest)
    } else {
        None
    }
}

fn check_unambiguous(decoded: &str) -> Result<(), Reject> {
    // One pass over the bytes notes every finding; they are then reported in a fixed order
    // (the reason a request is refused must not depend on where in the path things sit).
    const PERCENT: u8 = 1;
    const EMPTY_SEGMENT: u8 = 2;
    const DOT_SEGMENT: u8 = 4;
    const BACKSLASH: u8 = 8;
    const SEMICOLON: u8 = 16;
    const CONTROL: u8 = 32;
    let b = decoded.as_bytes();
    let is_dots = |segment: &[u8]| segment == b"." || segment == b"..";
    let mut found = 0u8;
    let mut segment_start = 0;
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'%' => found |= PERCENT,
            b'\\' => found |= BACKSLASH,
            b';' => found |= SEMICOLON,
            b'/' => {
                if i > 0 && b[i - 1] == b'/' {
                    found |= EMPTY_SEGMENT;
                }
                if is_dots(&b[segment_start..i]) {
                    found |= DOT_SEGMENT;
                }
                segment_start = i + 1;
            }
            // C0 and DEL; C1 (U+0080..U+009F) is 0xC2 0x80..0x9F in UTF-8. Together what
            // `char::is_control` calls control.
            0x00..=0x1f | 0x7f => found |= CONTROL,
            0xc2 if b.get(i + 1).is_some_and(|n| (0x80..=0x9f).contains(n)) => found |= CONTROL,
            _ => {}
        }
    }
    if is_dots(&b[segment_start..]) {
        found |= DOT_SEGMENT;
    }
    let why = if found == 0 {
        return Ok(());
    } else if found & PERCENT != 0 {
        // Double encoding: a second decoder (Grape's params, a package registry) would see
        // something else than we matched.
        "percent sign after decoding"
    } else if found & EMPTY_SEGMENT != 0 {
        "empty path segment"
    } else if found & DOT_SEGMENT != 0 {
        "dot segment"
    } else if found & BACKSLASH != 0 {
        "backslash in path"
    } else if found & SEMICOLON != 0 {
        "semicolon in path"
    } else {
        "control character in path"
    };
    Err(Reject::NotFound(why))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SPEC §3's checks written the obvious way, one pass each: the reference the one-pass
    /// [`check_unambiguous`] must agree with.
    fn unambiguous_reference(decoded: &str) -> Result<(), Reject> {
        let why = if decoded.contains('%') {
            "percent sign after decoding"
        } else if decoded.contains("//") {
            "empty path segment"
        } else if decoded.split('/').any(|s| s == "." || s == "..") {
            "dot segment"
        } else if decoded.contains('\\') {
            "backslash in path"
        } else if decoded.contains(';') {
            "semicolon in path"
        } else if decoded.chars().any(char::is_control) {
            "control character in path"
        } else {
            return Ok(());
        };
        Err(Reject::NotFound(why))
    }

    #[test]
    fn one_pass_checks_agree_with_the_reference() {
        // Every string of up to four pieces from an alphabet of the characters that matter,
        // on both sides of a segment boundary.
        let pieces = [
            "/", "//", ".", "..", "a", "%", "\\", ";", "\n", "\u{0}", "\u{7f}", "\u{80}", "\u{9f}",
            "\u{a0}", "\u{c2}", "é", "...", ".a",
        ];
        let mut checked = 0;
        let mut stack = vec![String::from("/")];
        while let Some(s) = stack.pop() {
            assert_eq!(check_unambiguous(&s), unambiguous_reference(&s), "{s:?}");
            checked += 1;
            if s.chars().count() < 5 {
                for p in pieces {
                    stack.push(format!("{s}{p}"));
                }
            }
        }
        assert!(checked > 50_000, "{checked}");
    }

    fn ok(raw: &str, root: &str, token: bool) -> CanonicalPath {
        match canonicalize(raw, root, token) {
            Ok(p) => p,
            Err(e) => panic!("{raw:?} (root {root:?}, token {token}): {e}"),
        }
    }

    #[test]
    fn accepts_and_decodes_once() {
        let cases: &[(&str, &str, &str, &str, &str)] = &[
            // raw, root, → raw, decoded, lower
            ("/", "", "/", "/", "/"),
            (
                "/api/v4/projects/1",
                "",
                "/api/v4/projects/1",
                "/api/v4/projects/1",
                "/api/v4/projects/1",
            ),
            (
                "/api/v4/projects/G%2Fp",
                "",
                "/api/v4/projects/G%2Fp",
                "/api/v4/projects/G/p",
                "/api/v4/projects/g/p",
            ),
            (
                "/API/V4/Projects/1",
                "",
                "/API/V4/Projects/1",
                "/API/V4/Projects/1",
                "/api/v4/projects/1",
            ),
            ("/a+b/%2B", "", "/a+b/%2B", "/a+b/+", "/a+b/+"),
            (
                "/files/%C3%A9t%C3%A9",
                "",
                "/files/%C3%A9t%C3%A9",
                "/files/été",
                "/files/été",
            ),
            (
                "/npm/@scope%2fpkg",
                "",
                "/npm/@scope%2fpkg",
                "/npm/@scope/pkg",
                "/npm/@scope/pkg",
            ),
            ("/gitlab", "/gitlab", "/", "/", "/"),
            ("/gitlab/", "/gitlab", "/", "/", "/"),
            (
                "/gitlab/api/v4/job",
                "/gitlab",
                "/api/v4/job",
                "/api/v4/job",
                "/api/v4/job",
            ),
            (
                "/gitlab/api/v4/job",
                "/gitlab/",
                "/api/v4/job",
                "/api/v4/job",
                "/api/v4/job",
            ),
            ("/a/.../b", "", "/a/.../b", "/a/.../b", "/a/.../b"),
            ("/a/.b/c.", "", "/a/.b/c.", "/a/.b/c.", "/a/.b/c."),
            (
                "/g/p.git/info/refs",
                "",
                "/g/p.git/info/refs",
                "/g/p.git/info/refs",
                "/g/p.git/info/refs",
            ),
            ("/x@y/z", "", "/x@y/z", "/x@y/z", "/x@y/z"),
            ("/a/", "", "/a/", "/a/", "/a/"),
        ];
        for &(raw, root, want_raw, want_decoded, want_lower) in cases {
            for token in [true, false] {
                let p = ok(raw, root, token);
                assert_eq!(p.raw, want_raw, "{raw:?} raw");
                assert_eq!(p.decoded, want_decoded, "{raw:?} decoded");
                assert_eq!(p.lower, want_lower, "{raw:?} lower");
            }
        }
    }

    #[test]
    fn bad_request_whatever_the_token() {
        let cases: &[&str] = &[
            "/a#b",
            "/a/%23#",
            "",
            "a/b",
            "*",
            "http://host/a",
            "user@host/a",
            "//user@host/a",
            "//u:p@h",
            "/a b",
            "/a\tb",
            "/a\nb",
            "/a\rb",
            "/a\0b",
            "/a\x7fb",
            "/a\x01",
            "/é",
            "/a/\u{202e}",
        ];
        for &raw in cases {
            for token in [true, false] {
                for root in ["", "/gitlab"] {
                    assert!(
                        matches!(canonicalize(raw, root, token), Err(Reject::BadRequest(_))),
                        "{raw:?} token {token} root {root:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn job_token_denies_ambiguous_paths() {
        let cases: &[(&str, &str)] = &[
            // root, raw
            ("/gitlab", "/gitlabx/api/v4/job"),
            ("/gitlab", "/api/v4/job"),
            ("/gitlab", "/GITLAB/api/v4/job"),
            ("/gitlab", "/%67itlab/api/v4/job"),
            ("", "/a/%zz"),
            ("", "/a/%4"),
            ("", "/a/%"),
            ("", "/a/%ff"),
            ("", "/a/%c3%28"),
            ("", "/a/%252e%252e/b"),
            ("", "/a/%25"),
            ("", "/a/../b"),
            ("", "/a/./b"),
            ("", "/a/.."),
            ("", "/a/."),
            ("", "/.."),
            ("", "/a/%2e%2e/b"),
            ("", "/a/%2E%2E/b"),
            ("", "/a/.%2e/b"),
            ("", "/a%2F..%2Fb"),
            ("", "/a/%2e"),
            ("", "//a"),
            ("", "/a//b"),
            ("", "/a%2F%2Fb"),
            ("", "/a%2F/b"),
            ("", "/a\\b"),
            ("", "/a%5Cb"),
            ("", "/a%5c..%5cb"),
            ("", "/a;b"),
            ("", "/a%3Bb"),
            ("", "/a/b;jsessionid=1"),
            ("", "/a%00b"),
            ("", "/api/v4/projects/1%0Ajunk"),
            ("", "/a%0D"),
            ("", "/a%09"),
            ("", "/a%7F"),
            ("", "/a%C2%85"),
            ("", "/a%1B"),
        ];
        for &(root, raw) in cases {
            assert!(
                matches!(canonicalize(raw, root, true), Err(Reject::NotFound(_))),
                "{raw:?} root {root:?}: {:?}",
                canonicalize(raw, root, true)
            );
        }
    }

    #[test]
    fn without_job_token_keeps_what_it_cannot_read() {
        // Outside the root: kept whole.
        let p = ok("/other/x", "/gitlab", false);
        assert_eq!(
            (p.raw.as_str(), p.decoded.as_str()),
            ("/other/x", "/other/x")
        );
        // Invalid escapes: kept undecoded.
        for raw in ["/a/%zz", "/a/%", "/a/%ff", "/A/%4"] {
            let p = ok(raw, "", false);
            assert_eq!(p.decoded, raw);
            assert_eq!(p.lower, raw.to_ascii_lowercase());
        }
        // Ambiguous but well-formed: decoded, not refused.
        let p = ok("/a/%2e%2e/b%0A", "", false);
        assert_eq!(p.decoded, "/a/../b\n");
        let p = ok("/a//b;c", "", false);
        assert_eq!(p.decoded, "/a//b;c");
    }

    #[test]
    fn decodes_segments_strictly() {
        let cases: &[(&str, Option<&str>)] = &[
            ("", Some("")),
            ("abc", Some("abc")),
            ("g%2Fp", Some("g/p")),
            ("g%2fp", Some("g/p")),
            ("%41%62", Some("Ab")),
            ("a+b", Some("a+b")),
            ("%252e", Some("%2e")),
            ("%C3%A9", Some("é")),
            ("%", None),
            ("%2", None),
            ("%2g", None),
            ("%g2", None),
            ("a%", None),
            ("%FF", None),
            ("%C3", None),
            ("%E2%82", None),
        ];
        for &(s, want) in cases {
            assert_eq!(percent_decode_segment(s).as_deref(), want, "{s:?}");
        }
    }
}
