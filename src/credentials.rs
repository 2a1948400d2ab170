//! Every place a request can carry a credential, turned into [`Credential`]s (SPEC §1).
//! Detection is the security boundary: a slot this module does not read is a token the
//! gateway forwards unchecked, so it reads a superset of what GitLab's `auth_finders.rb` and
//! `api_authentication/` read, with Rack 2.2's parameter rules. Pure: no I/O.
//!
//! Where GitLab reads a job token, and the candidates taken from it:
//! - headers `JOB-TOKEN`, `PRIVATE-TOKEN`, `DEPLOY-TOKEN` (`auth_finders.rb`) and NuGet's
//!   `X-NuGet-ApiKey` (`api/nuget_project_packages.rb`, `sent_through(http_header:)`), in any
//!   mix of `-` and `_`, because Puma maps both to one `HTTP_*` key;
//! - `Authorization`, any scheme: the whole value (`TokenLocator#http_token`), the last word
//!   (`http_bearer_token`), what follows `Bearer ` (Doorkeeper), the Rails token-params form, and
//!   the Basic password decoded by Ruby's lenient `unpack1("m")`; `TokenLocator` decodes Basic
//!   credentials without checking the scheme, so every scheme is decoded;
//! - parameters `job_token`, `token`, `access_token`, `bearer_token`, `private_token`
//!   (`auth_finders.rb`, Doorkeeper, rack-oauth2, `token_locator.rb`), from the query
//!   (split on `&` and `;`), urlencoded bodies (split on `&` only: Rack 2.2 `Request#POST`),
//!   multipart fields and JSON bodies (Rails' JSON params parser);
//! - any header or parameter holding `glcbt-`, the job-token prefix, wherever it sits;
//! - a token header given twice: also the `", "`-joined value Puma hands the forge.
//!
//! Every candidate is then expanded: its trimmed form, each `glcbt-` token inside it, the
//! token in the Kubernetes agent form `ci:<agent_id>:<token>`, the `token`/`access_token`
//! claims of an unverified JWT (Conan and Terraform-registry tokens wrap a job token), and a
//! JWT job token as the forge verifies it (the jwt gem skips junk in the signature). JWTs are
//! split and decoded as the jwt gem does. `tests/oracle.rs` checks all of this against Rack
//! and GitLab's readers (`tests/oracle/rack_oracle.rb`).
//!
//! Values are held as [`Secret`]s from the moment they are found; errors from body parsing
//! are fixed strings, so no token reaches a log through this module.

use crate::secret::Secret;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use http::HeaderMap;

#[path = "credentials_body.rs"]
mod body;
pub use body::{body_kind, json_sniff, parse_body, untyped_api_write};
pub(crate) use body::{part_name, rack_file_part};

/// Where a credential was found; names only, never values (safe to log).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Slot {
    /// A header, by lower-cased name.
    Header(String),
    /// A query-string parameter, by its decoded key.
    Query(String),
    /// A body parameter (form, multipart field, JSON key), by its decoded key.
    Body(String),
}

/// One header or one parameter: one credential, whatever number of candidate values it yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    pub slot: Slot,
    /// `JOB-TOKEN`/`JOB_TOKEN`, parameter `job_token`, Basic with user `gitlab-ci-token`:
    /// a non-live value here is answered 401.
    pub dedicated: bool,
    /// Distinct candidate values, in discovery order; never empty.
    pub candidates: Vec<Secret>,
}

/// A decoded parameter, as Rack would expose it (query, form field, multipart field, or a
/// JSON leaf flattened to `key[sub]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    pub name: String,
    pub value: String,
}

/// What kind of body a request carries, decided from method and Content-Type alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyKind {
    /// Not parameter-bearing: streams through untouched.
    Opaque,
    /// `application/x-www-form-urlencoded`.
    Form,
    /// A POST with no media type. Rack reads it as a form; a Grape endpoint whose default
    /// format is JSON (`default_format :json`, e.g. Terraform state) parses it as JSON and
    /// merges an object into the same params. Read both ways.
    Untyped,
    /// `application/json`, `application/vnd.git-lfs+json` and the other JSON types.
    Json,
    Multipart {
        boundary: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("malformed Content-Type: {0}")]
    ContentType(&'static str),
    #[error("malformed multipart body: {0}")]
    Multipart(String),
    #[error("malformed JSON body: {0}")]
    Json(String),
    #[error("body is not valid UTF-8")]
    Utf8,
}

/// Where a parameter came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Query,
    Body,
}

/// The CI/CD job token prefix (`Ci::Build::TOKEN_PREFIX`); an instance prefix goes before it.
const JOB_TOKEN_MARKER: &str = "glcbt-";
/// `Gitlab::Auth::CI_JOB_USER`: the Basic username that makes the password a job token.
const CI_JOB_USER: &[u8] = b"gitlab-ci-token";
/// Prefixes of tokens that are never job tokens: PAT, trigger, deploy, runner, OAuth app
/// secret, SCIM, feed, incoming-mail and cluster-agent tokens.
const NON_JOB_PREFIXES: [&str; 9] = [
    "glpat-", "glptt-", "gldt-", "glrt-", "gloas-", "glsoat-", "glft-", "glimt-", "glagent-",
];
/// Parameter base names GitLab reads a token from (`PARAM_TOKEN_KEYS`, Doorkeeper's
/// `access_token`/`bearer_token`, rack-oauth2's `access_token`).
const TOKEN_PARAMS: [&str; 5] = [
    "job_token",
    "token",
    "access_token",
    "bearer_token",
    "private_token",
];
/// Derived candidates stop here; the values GitLab itself would use (whole value, words,
/// decoded password) come first and are always kept. Bounds the forge look-ups one header
/// stuffed with `glcbt-` strings can cause.
const MAX_CANDIDATES: usize = 64;

// ---------------------------------------------------------------------------------------------
// Headers
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HeaderClass {
    Token { dedicated: bool },
    Authorization,
    Other,
}

/// Puma turns `Job-Token` and `JOB_TOKEN` alike into `HTTP_JOB_TOKEN`, so names are compared
/// with `_` read as `-`.
fn normalized_header(name: &str) -> String {
    name.to_ascii_lowercase().replace('_', "-")
}

fn header_class(name: &str) -> HeaderClass {
    // Compared in place rather than through `normalized_header`: this runs for every header
    // of every request, and most are `Other`.
    let is = |spelling: &str| {
        name.len() == spelling.len()
            && name
                .bytes()
                .zip(spelling.bytes())
                .all(|(a, b)| a.to_ascii_lowercase() == b || (a == b'_' && b == b'-'))
    };
    if is("job-token") {
        HeaderClass::Token { dedicated: true }
    } else if is("private-token") || is("deploy-token") || is("x-nuget-apikey") {
        HeaderClass::Token { dedicated: false }
    } else if is("authorization") || is("x-http-authorization") {
        // Rails' `request.authorization` also consults `X-HTTP_AUTHORIZATION`; no client
        // header reaches that key through Puma, but reading it costs nothing.
        HeaderClass::Authorization
    } else {
        HeaderClass::Other
    }
}

/// Every credential the request's headers carry: one per header field, plus one per joined
/// value where a token header is repeated, because the forge reads the joined value.
pub fn from_headers(headers: &HeaderMap) -> Vec<Credential> {
    let mut out = Vec::new();
    let mut groups: Vec<(String, Vec<(&str, String)>)> = Vec::new();
    for (name, value) in headers {
        let class = header_class(name.as_str());
        // Most headers are neither token slots nor carry the marker: decide that on the bytes,
        // before any copy (the marker is ASCII, so lossy decoding cannot create or hide it).
        if class == HeaderClass::Other && !contains_marker_bytes(value.as_bytes()) {
            continue;
        }
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        if let Some(c) = header_credential(name.as_str(), class, &value) {
            out.push(c);
        }
        if class == HeaderClass::Other {
            continue;
        }
        let norm = normalized_header(name.as_str());
        match groups.iter_mut().find(|(n, _)| *n == norm) {
            Some((_, members)) => members.push((name.as_str(), value)),
            None => groups.push((norm, vec![(name.as_str(), value)])),
        }
    }
    for (_, members) in groups.iter().filter(|(_, m)| m.len() > 1) {
        let (first, _) = members[0];
        let class = header_class(first);
        for joined in puma_joins(members) {
            if let Some(c) = header_credential(first, class, &joined) {
                if !out.contains(&c) {
                    out.push(c);
                }
            }
        }
    }
    out
}

/// Puma joins repeated headers that map to one env key with `", "`, in wire order, and the
/// forge reads the joined string. A JWT job token split over several fields is invalid in
/// each part but valid joined (the jwt gem decodes the signature leniently, skipping
/// `", "`), so joined values are candidates too. A `HeaderMap` keeps the order of the fields
/// of one name but not across names (`Job-Token`, `Job_Token`), so every interleaving of the
/// names' fields is tried (each name's own order kept), and each name's fields alone (Puma
/// 6.4.3 and later drop the underscore spellings when a dashed one is present).
///
/// At most [`MAX_CANDIDATES`] joins: a request with more interleavings than that (many
/// fields under several spellings) carries more candidates than the gate looks up
/// (`gate::MAX_CANDIDATES`), so it is refused rather than half checked.
fn puma_joins(members: &[(&str, String)]) -> Vec<String> {
    let mut blocks: Vec<(&str, Vec<&str>)> = Vec::new();
    for (name, value) in members {
        match blocks.iter_mut().find(|(n, _)| n == name) {
            Some((_, values)) => values.push(value),
            None => blocks.push((name, vec![value])),
        }
    }
    let blocks: Vec<Vec<&str>> = blocks.into_iter().map(|(_, values)| values).collect();
    let mut out: Vec<String> = Vec::new();
    if blocks.len() > 1 {
        for block in blocks.iter().filter(|b| b.len() > 1) {
            out.push(block.join(", "));
        }
    }
    interleave(
        &blocks,
        &mut vec![0; blocks.len()],
        &mut Vec::new(),
        &mut out,
    );
    out
}

/// Every interleaving of `blocks` keeping each block's order, appended to `out` (stops at
/// [`MAX_CANDIDATES`] entries).
fn interleave<'a>(
    blocks: &[Vec<&'a str>],
    next: &mut [usize],
    acc: &mut Vec<&'a str>,
    out: &mut Vec<String>,
) {
    if out.len() >= MAX_CANDIDATES {
        return;
    }
    let mut complete = true;
    for (b, block) in blocks.iter().enumerate() {
        if let Some(&value) = block.get(next[b]) {
            complete = false;
            acc.push(value);
            next[b] += 1;
            interleave(blocks, next, acc, out);
            next[b] -= 1;
            acc.pop();
        }
    }
    if complete {
        let joined = acc.join(", ");
        if !out.contains(&joined) {
            out.push(joined);
        }
    }
}

fn header_credential(name: &str, class: HeaderClass, value: &str) -> Option<Credential> {
    let mut base = Vec::new();
    let dedicated = match class {
        HeaderClass::Token { dedicated } => {
            base.push(value.to_owned());
            dedicated
        }
        HeaderClass::Authorization => authorization_candidates(value, &mut base),
        HeaderClass::Other => {
            if !contains_marker(value) {
                return None;
            }
            base.push(value.to_owned());
            false
        }
    };
    credential(Slot::Header(name.to_owned()), dedicated, base)
}

/// Ruby's `String#split(" ")` whitespace (`rb_isspace`).
fn is_ruby_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r')
}

fn is_ruby_space_byte(b: u8) -> bool {
    is_ruby_space(char::from(b))
}

/// `value.split(" ", 2).second`, as Rails' `auth_param` and Rack's `AbstractRequest#parts`
/// read the credentials after the scheme.
fn after_scheme(value: &str) -> Option<&str> {
    let rest = value.trim_start_matches(is_ruby_space);
    let scheme_end = rest.find(is_ruby_space)?;
    Some(rest[scheme_end..].trim_start_matches(is_ruby_space))
}

/// Candidates of one `Authorization` value; true when it is a dedicated job-token slot
/// (Basic credentials with user `gitlab-ci-token`).
fn authorization_candidates(value: &str, out: &mut Vec<String>) -> bool {
    out.push(value.to_owned());
    let scheme = value
        .split(is_ruby_space)
        .find(|w| !w.is_empty())
        .unwrap_or("");
    // `TokenLocator#http_bearer_token`: `split(' ').last`.
    let last = value.split(is_ruby_space).rfind(|w| !w.is_empty());
    out.extend(last.map(str::to_owned));
    let param = after_scheme(value);
    out.extend(param.map(str::to_owned));
    // Doorkeeper's `from_bearer_authorization` removes exactly `Bearer ` (one space).
    if let Some((_, after)) = value.split_once(' ') {
        out.push(after.to_owned());
    }
    if scheme.eq_ignore_ascii_case("token") || scheme.eq_ignore_ascii_case("bearer") {
        out.extend(param.and_then(rails_token_param));
    }

    let is_basic = scheme.eq_ignore_ascii_case("basic");
    let mut dedicated = false;
    let mut encodings: Vec<&str> = param.into_iter().collect();
    if let Some(l) = last {
        if !encodings.contains(&l) {
            encodings.push(l);
        }
    }
    for encoded in encodings {
        let decoded = ruby_decode64(encoded.as_bytes());
        match decoded.iter().position(|&b| b == b':') {
            Some(colon) => {
                let (user, password) = (&decoded[..colon], &decoded[colon + 1..]);
                let password_text = String::from_utf8_lossy(password).into_owned();
                // Any scheme's parameter is decoded because `TokenLocator#http_basic_auth`
                // does not look at the scheme; outside Basic only values that can be tokens
                // are kept, so a PAT decoded as base64 does not become a forge look-up.
                if is_basic || plausible_token(&password_text) {
                    out.push(password_text);
                }
                if user == CI_JOB_USER && !password.is_empty() {
                    dedicated = true;
                }
            }
            None if is_basic => out.push(String::from_utf8_lossy(&decoded).into_owned()),
            None => {}
        }
    }
    dedicated
}

fn plausible_token(s: &str) -> bool {
    (!s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic())) || contains_marker(s)
}

/// Rails' `ActionController::HttpAuthentication::Token#token_and_options`: the parameters
/// after `Token`/`Bearer` are split on `,`, `;` or tab; the first is the token, written
/// `token="..."` or bare, with one surrounding quote removed on each side.
fn rails_token_param(param: &str) -> Option<String> {
    let first = param
        .split([',', ';', '\t'])
        .map(str::trim)
        .find(|p| !p.is_empty())?;
    let value = first.strip_prefix("token=").unwrap_or(first);
    let value = value.strip_prefix('"').unwrap_or(value);
    let value = value.strip_suffix('"').unwrap_or(value);
    Some(value.to_owned())
}

/// Ruby's `Base64.decode64` (`String#unpack1("m")`), byte for byte: characters outside the
/// standard alphabet are skipped anywhere (so are `=` in a quantum's first two places), an
/// `=` in the third or fourth place ends decoding, and a trailing partial quantum yields the
/// bytes it has.
fn ruby_decode64(input: &[u8]) -> Vec<u8> {
    fn sextet(b: u8) -> Option<u8> {
        match b {
            b'A'..=b'Z' => Some(b - b'A'),
            b'a'..=b'z' => Some(b - b'a' + 26),
            b'0'..=b'9' => Some(b - b'0' + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    }
    // The next sextet at or after `*i`; `stop_at_pad` makes `=` end the search.
    fn next(input: &[u8], i: &mut usize, stop_at_pad: bool) -> Option<u8> {
        while let Some(&b) = input.get(*i) {
            if let Some(v) = sextet(b) {
                *i += 1;
                return Some(v);
            }
            if stop_at_pad && b == b'=' {
                return None;
            }
            *i += 1;
        }
        None
    }

    let mut out = Vec::with_capacity(input.len() / 4 * 3 + 2);
    let mut i = 0;
    while let Some(a) = next(input, &mut i, false) {
        let Some(b) = next(input, &mut i, false) else {
            break;
        };
        let Some(c) = next(input, &mut i, true) else {
            out.push(a << 2 | b >> 4);
            break;
        };
        let Some(d) = next(input, &mut i, true) else {
            out.push(a << 2 | b >> 4);
            out.push(b << 4 | c >> 2);
            break;
        };
        out.push(a << 2 | b >> 4);
        out.push(b << 4 | c >> 2);
        out.push(c << 6 | d);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Candidate expansion
// ---------------------------------------------------------------------------------------------

fn credential(slot: Slot, dedicated: bool, base: Vec<String>) -> Option<Credential> {
    let candidates = expand(base);
    (!candidates.is_empty()).then_some(Credential {
        slot,
        dedicated,
        candidates,
    })
}

/// Base candidates, then everything derived from them (breadth first), deduplicated. Blank
/// values are dropped: GitLab reads tokens with `.presence`, and a blank one is no token.
fn expand(base: Vec<String>) -> Vec<Secret> {
    // Each value with whether the marker rule cut it out of a longer one: the marker rule is
    // not applied again to such a value (it would only find the same tokens), which keeps a
    // header full of `glcbt-` strings from costing quadratic work.
    fn add(list: &mut Vec<(String, bool)>, s: String, cut: bool) {
        if !s.trim().is_empty() && !list.iter().any(|(v, _)| *v == s) {
            list.push((s, cut));
        }
    }
    let mut list = Vec::new();
    for b in base {
        add(&mut list, b, false);
    }
    let mut i = 0;
    while i < list.len() {
        let (value, cut) = &list[i];
        for (d, d_cut) in derived(value, !*cut) {
            if list.len() >= MAX_CANDIDATES {
                break;
            }
            add(&mut list, d, d_cut);
        }
        i += 1;
    }
    list.into_iter().map(|(v, _)| Secret::new(v)).collect()
}

/// What one candidate implies: `(value, cut out by the marker rule)`.
fn derived(s: &str, markers: bool) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    let trimmed = s.trim();
    if trimmed != s {
        out.push((trimmed.to_owned(), false));
    }
    if markers {
        out.extend(marker_substrings(s).into_iter().map(|m| (m, true)));
    }
    out.extend(agent_ci_token(trimmed).map(|t| (t.to_owned(), false)));
    out.extend(jwt_claims(trimmed).into_iter().map(|c| (c, false)));
    out.extend(jwt_as_verified(trimmed).map(|c| (c, false)));
    out
}

fn contains_marker(s: &str) -> bool {
    contains_marker_bytes(s.as_bytes())
}

/// [`JOB_TOKEN_MARKER`] anywhere in `b`, in any ASCII case, without a lower-cased copy.
fn contains_marker_bytes(b: &[u8]) -> bool {
    find_marker(b, 0).is_some()
}

/// Where [`JOB_TOKEN_MARKER`] next starts in `b` at or after `from`, in any ASCII case: each
/// `g`/`G` (found with `memchr`) is a place to compare, nothing is copied or lower-cased.
fn find_marker(b: &[u8], from: usize) -> Option<usize> {
    let marker = JOB_TOKEN_MARKER.as_bytes();
    let mut at = from;
    while at + marker.len() <= b.len() {
        let candidate = at + memchr::memchr2(marker[0], marker[0].to_ascii_uppercase(), &b[at..])?;
        let window = b.get(candidate..candidate + marker.len())?;
        if window.eq_ignore_ascii_case(marker) {
            return Some(candidate);
        }
        at = candidate + 1;
    }
    None
}

/// Every `[A-Za-z0-9_-]*glcbt-[A-Za-z0-9_.-]+` in `s` (the marker in any case): a job token,
/// with any instance prefix, wherever it sits (inside a Cookie, a User-Agent, a longer value).
fn marker_substrings(s: &str) -> Vec<String> {
    let bytes = s.as_bytes();
    let prefix_char = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'-';
    let token_char = |b: u8| prefix_char(b) || b == b'.';
    let mut out = Vec::new();
    let mut from = 0;
    // `run_start` is where the current run of prefix characters began, so each occurrence's
    // left edge is found without rescanning (linear in the value).
    let mut run_start = 0;
    let mut scanned = 0;
    while let Some(at) = find_marker(bytes, from) {
        for (k, &b) in bytes.iter().enumerate().take(at).skip(scanned) {
            if !prefix_char(b) {
                run_start = k + 1;
            }
        }
        scanned = at;
        let body = at + JOB_TOKEN_MARKER.len();
        let end = body + bytes[body..].iter().take_while(|&&b| token_char(b)).count();
        if end > body {
            out.push(s[run_start..end].to_owned());
            if out.len() >= MAX_CANDIDATES {
                break;
            }
        }
        from = at + 1;
    }
    out
}

/// `ci:<agent_id>:<token>`: the Kubernetes agent's `Bearer` form, where the job token follows
/// the agent id.
fn agent_ci_token(s: &str) -> Option<&str> {
    let head = s.get(..3)?;
    if !head.eq_ignore_ascii_case("ci:") {
        return None;
    }
    let rest = &s[3..];
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    let token = rest[digits..].strip_prefix(':')?;
    (!token.is_empty()).then_some(token)
}

/// A JWT's segments as the jwt gem splits a token: Ruby's `String#split('.')`, which drops
/// trailing empty segments, so `h.p.s.` and `h.p.s..` are `h.p.s` to the forge. Two segments
/// (no signature: what the gem decodes without verifying) give an empty signature.
fn jwt_segments(s: &str) -> Option<(&str, &str, &str)> {
    let mut segments = s.trim_end_matches('.').split('.');
    match (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ) {
        (Some(header), Some(payload), signature, None) => {
            Some((header, payload, signature.unwrap_or("")))
        }
        _ => None,
    }
}

/// The jwt gem's `JWT::Base64.url_decode`: strict url-safe base64, or where that fails (the
/// gem falls back unless `strict_base64_decoding` is set) Ruby's `Base64.decode64` after
/// `tr('-_', '+/')`, which skips characters outside the alphabet and needs no padding. The
/// lenient reading gives the same bytes wherever the strict one succeeds.
fn jwt_decode64(segment: &str) -> Vec<u8> {
    let standard: Vec<u8> = segment
        .bytes()
        .map(|b| match b {
            b'-' => b'+',
            b'_' => b'/',
            b => b,
        })
        .collect();
    ruby_decode64(&standard)
}

/// The unverified payload's string claims `token` and `access_token`: what
/// `TokenResolver#job_token_from_jwt` (Terraform modules) and Conan's token wrap. Every
/// occurrence counts, duplicate claims included. Segments are split and decoded as the jwt
/// gem does, so a trailing `.` or junk in the signature (which the forge still verifies)
/// hides nothing.
fn jwt_claims(s: &str) -> Vec<String> {
    let Some((_, payload, _)) = jwt_segments(s) else {
        return Vec::new();
    };
    let Ok(text) = String::from_utf8(jwt_decode64(payload)) else {
        return Vec::new();
    };
    let Ok(leaves) = body::flatten_json(&text) else {
        return Vec::new();
    };
    leaves
        .into_iter()
        .filter(|l| l.string && (l.name == "token" || l.name == "access_token"))
        .map(|l| l.value)
        .collect()
}

/// A job token that is itself a JWT (`glcbt-` and an RS256 JWT, `Authn::Tokens::Jwt`) as the
/// forge verifies it: header and payload as sent (the signature covers those bytes), the
/// signature as the jwt gem's lenient decoder reads it, re-encoded cleanly. To the forge,
/// `glcbt-h.p.s.`, a signature with junk or a space in it, or one split over two header
/// fields (joined with `", "`) is the same token; its clean spelling is one the gateway can
/// look up. `None` when `s` is no JWT (header and payload must decode to JSON objects, as the
/// gem needs) or is already clean.
fn jwt_as_verified(s: &str) -> Option<String> {
    let (header, payload, signature) = jwt_segments(s)?;
    let object = |segment: &str| {
        serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&jwt_decode64(segment))
            .is_ok()
    };
    // `rsa_decode` strips the token prefix (any instance prefix included) before decoding.
    let unprefixed = header
        .to_ascii_lowercase()
        .find(JOB_TOKEN_MARKER)
        .map(|at| &header[at + JOB_TOKEN_MARKER.len()..]);
    if !(object(header) || unprefixed.is_some_and(object)) || !object(payload) {
        return None;
    }
    let signature = jwt_decode64(signature);
    if signature.is_empty() {
        return None;
    }
    let clean = format!("{header}.{payload}.{}", URL_SAFE_NO_PAD.encode(signature));
    (clean != s).then_some(clean)
}

/// True when the candidate has the prefix of a token type that is never a job token and holds
/// no `glcbt-` anywhere: no forge look-up needed. With an instance prefix configured, GitLab's
/// forms are accepted too: the first one, where the prefix took the place of `gl`
/// (`<instance>pat-`), the current `<instance>-<type>` (`acme-glpat-`), and `<instance><type>`
/// for a prefix that ends in its own separator.
pub fn is_known_non_job(candidate: &str, instance_prefix: &str) -> bool {
    if contains_marker(candidate) {
        return false;
    }
    let after_instance = (!instance_prefix.is_empty())
        .then(|| candidate.strip_prefix(instance_prefix))
        .flatten();
    NON_JOB_PREFIXES.iter().any(|&prefix| {
        if candidate.starts_with(prefix) {
            return true;
        }
        let Some(rest) = after_instance else {
            return false;
        };
        let short = &prefix[2..];
        let dashed = rest.strip_prefix('-');
        rest.starts_with(prefix)
            || rest.starts_with(short)
            || dashed.is_some_and(|r| r.starts_with(prefix) || r.starts_with(short))
    })
}

// ---------------------------------------------------------------------------------------------
// Parameters
// ---------------------------------------------------------------------------------------------

/// A query string as Rack 2.2 `parse_nested_query` splits it (`DEFAULT_SEP = /[&;] */`): on
/// `&` and `;`, each followed by any number of spaces; empty pieces skipped; key and value
/// split on the first `=` and decoded (`+` is a space). Where Rack would reject a bad
/// `%`-escape, it is kept literally: the token must still be seen.
pub fn parse_query(raw: &str) -> Vec<Param> {
    parse_pairs(raw, b"&;")
}

fn parse_pairs(raw: &str, separators: &[u8]) -> Vec<Param> {
    let bytes = raw.as_bytes();
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        if separators.contains(&bytes[i]) {
            push_pair(&raw[start..i], &mut out);
            i += 1;
            while bytes.get(i) == Some(&b' ') {
                i += 1;
            }
            start = i;
        } else {
            i += 1;
        }
    }
    push_pair(&raw[start..], &mut out);
    out
}

fn push_pair(piece: &str, out: &mut Vec<Param>) {
    if piece.is_empty() {
        return;
    }
    let (key, value) = piece.split_once('=').unwrap_or((piece, ""));
    out.push(Param {
        name: form_decode(key),
        value: form_decode(value),
    });
}

/// `application/x-www-form-urlencoded` component decoding, lenient about bad escapes.
fn form_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = |b: Option<&u8>| b.and_then(|&b| char::from(b).to_digit(16));
                if let (Some(h), Some(l)) = (hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) {
                    // Both digits are below 16, so the byte cannot overflow.
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Rack's parameter base name: leading `[`/`]` skipped, then up to the next bracket, so
/// `job_token[]`, `job_token[x]` and `[job_token]` all name `job_token`.
fn rack_base_name(name: &str) -> &str {
    let rest = name.trim_start_matches(['[', ']']);
    let end = rest.find(['[', ']']).unwrap_or(rest.len());
    &rest[..end]
}

/// One credential per parameter that GitLab reads a token from, or whose value holds a job
/// token anywhere. Names match as Rails does (exactly) and also in any ASCII case.
pub fn credentials_from_params(params: &[Param], origin: Origin) -> Vec<Credential> {
    params
        .iter()
        .filter_map(|p| {
            let base = rack_base_name(&p.name);
            let named = TOKEN_PARAMS.iter().any(|t| base.eq_ignore_ascii_case(t));
            if !named && !contains_marker(&p.value) {
                return None;
            }
            let slot = match origin {
                Origin::Query => Slot::Query(p.name.clone()),
                Origin::Body => Slot::Body(p.name.clone()),
            };
            credential(slot, base == "job_token", vec![p.value.clone()])
        })
        .collect()
}

/// The one value of a classification key (`service`, LFS `operation`). Every parameter with
/// exactly this name must agree: Rack keeps the last, other readers the first.
#[allow(clippy::result_unit_err)] // the contract: the caller answers 400, nothing more to say
pub fn single_value<'a>(params: &'a [Param], name: &str) -> Result<Option<&'a str>, ()> {
    let mut found: Option<&'a str> = None;
    for p in params.iter().filter(|p| p.name == name) {
        match found {
            Some(v) if v != p.value => return Err(()),
            Some(_) => {}
            None => found = Some(&p.value),
        }
    }
    Ok(found)
}

#[cfg(test)]
#[path = "credentials_tests.rs"]
mod tests;
