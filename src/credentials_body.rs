//! Request bodies that can carry parameters (SPEC §1 "Parameters"): which bodies are read,
//! and the parameters Rack 2.2 and Rails would take from them — urlencoded forms, JSON, and
//! multipart fields checked against Rack's own reading of the same bytes. Part of
//! [`super`]; its two entry points are re-exported there.

use super::{is_ruby_space, is_ruby_space_byte, parse_pairs, BodyError, BodyKind, Param};
use bytes::Bytes;
use http::{header, HeaderMap, Method};
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use std::fmt;

/// RFC 2046 §5.1.1.
const MAX_BOUNDARY_LEN: usize = 70;

/// Whether the body can hold parameters, as Rack and Rails decide, on any method.
pub fn body_kind(method: &Method, headers: &HeaderMap) -> Result<BodyKind, BodyError> {
    let mut values = headers.get_all(header::CONTENT_TYPE).iter();
    let (first, second) = (values.next(), values.next());
    if second.is_some() {
        return Err(BodyError::ContentType("more than one Content-Type"));
    }
    let content_type = match first {
        None => "",
        Some(v) => v
            .to_str()
            .map_err(|_| BodyError::ContentType("Content-Type is not visible ASCII"))?,
    };
    // Rack's `MediaType.type`: up to the first `;` or `,`, compared in lower case.
    let media = content_type
        .split([';', ','])
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let kind = if media.is_empty() {
        // Rack's `form_data?`: a POST without a media type is a form; Grape may read it as
        // JSON too.
        if *method == Method::POST {
            BodyKind::Untyped
        } else {
            BodyKind::Opaque
        }
    } else if media == "application/x-www-form-urlencoded" {
        BodyKind::Form
    } else if media.starts_with("multipart/") {
        BodyKind::Multipart {
            boundary: multipart_boundary(content_type)?,
        }
    } else if is_json_media(&media) {
        BodyKind::Json
    } else {
        BodyKind::Opaque
    };
    if kind != BodyKind::Opaque && is_encoded(headers) {
        // Rails parses the coded bytes (only npm audit paths are inflated first, by
        // `Gitlab::Middleware::CompressedJson`); scopegate cannot read a token in them.
        return Err(BodyError::ContentType(
            "parameter body with a Content-Encoding",
        ));
    }
    Ok(kind)
}

fn is_encoded(headers: &HeaderMap) -> bool {
    headers.get_all(header::CONTENT_ENCODING).iter().any(|v| {
        let v = String::from_utf8_lossy(v.as_bytes());
        v.split(',')
            .map(str::trim)
            .any(|c| !c.is_empty() && !c.eq_ignore_ascii_case("identity"))
    })
}

/// Rails' `Mime[:json]` (with GitLab's LFS synonym) and its default synonyms, plus any
/// structured `+json` type.
fn is_json_media(media: &str) -> bool {
    matches!(
        media,
        "application/json"
            | "application/vnd.git-lfs+json"
            | "text/x-json"
            | "application/jsonrequest"
    ) || (media.starts_with("application/") && media.ends_with("+json"))
}

/// The boundary as Rack 2.2 reads it (`MULTIPART = /\Amultipart\/.*?boundary(\s*)="?([^";,]+)"?/i`),
/// refusing every case where Rack raises or where Rack and a strict parser could disagree.
fn multipart_boundary(content_type: &str) -> Result<String, BodyError> {
    let lower = content_type.to_ascii_lowercase();
    let mut found = None;
    let mut count = 0;
    let mut from = 0;
    while let Some(off) = lower[from..].find("boundary") {
        let at = from + off;
        let after = &content_type[at + "boundary".len()..];
        let spaced = after.trim_start_matches(is_ruby_space);
        if let Some(value) = spaced.strip_prefix('=') {
            count += 1;
            if spaced.len() != after.len() {
                return Err(BodyError::ContentType("space before the boundary's '='"));
            }
            found.get_or_insert(value);
        }
        from = at + 1;
    }
    let value = match (found, count) {
        (Some(v), 1) => v,
        (None, _) => return Err(BodyError::ContentType("multipart without a boundary")),
        _ => return Err(BodyError::ContentType("boundary given more than once")),
    };
    let (quoted, value) = match value.strip_prefix('"') {
        Some(v) => (true, v),
        None => (false, value),
    };
    let end = value.find(['"', ';', ',']).unwrap_or(value.len());
    let boundary = &value[..end];
    if quoted && !value[end..].starts_with('"') {
        // Rack stops at `;` or `,` even inside quotes: ambiguous, refuse.
        return Err(BodyError::ContentType("quoted boundary holds ';' or ','"));
    }
    if boundary.is_empty() {
        return Err(BodyError::ContentType("empty boundary"));
    }
    if boundary.len() > MAX_BOUNDARY_LEN {
        return Err(BodyError::ContentType("boundary longer than 70 characters"));
    }
    if boundary.starts_with(is_ruby_space) || boundary.ends_with(is_ruby_space) {
        // Rack compares stripped lines with the boundary and would never find it.
        return Err(BodyError::ContentType("boundary with surrounding space"));
    }
    Ok(boundary.to_owned())
}

/// The parameters a body carries, as Rack/Rails would see them.
pub async fn parse_body(kind: &BodyKind, body: Bytes) -> Result<Vec<Param>, BodyError> {
    match kind {
        BodyKind::Opaque => Ok(Vec::new()),
        BodyKind::Form => Ok(parse_form(&body)),
        BodyKind::Untyped => parse_untyped(&body),
        BodyKind::Json => parse_json(&body),
        BodyKind::Multipart { boundary } => parse_multipart(boundary, body).await,
    }
}

/// Rack 2.2 `Request#POST` parses a form with `parse_query(form_vars, '&')`: unlike the query
/// string, `;` does not separate. Reading `a=1;token=x` as one value is what the forge does;
/// the `glcbt-` rule still sees a job token inside it. Rack drops one trailing NUL (Safari).
fn parse_form(body: &[u8]) -> Vec<Param> {
    let body = body.strip_suffix(b"\0").unwrap_or(body);
    parse_pairs(&String::from_utf8_lossy(body), b"&")
}

/// A POST body without a media type: its form reading (Rack) and, where Ruby's JSON parser
/// could read an object in it (after whitespace, a comment or a byte-order mark), its JSON
/// reading (Grape's `default_format :json` endpoints), which must then succeed: a body that
/// Grape would take parameters from and scopegate cannot read is refused (400).
fn parse_untyped(body: &[u8]) -> Result<Vec<Param>, BodyError> {
    let mut params = parse_form(body);
    let text = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    let first = text
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n'));
    if matches!(first, Some(b'{' | b'/')) {
        params.extend(parse_json(body)?);
    }
    Ok(params)
}

/// Rails' JSON params: a top-level object's members by key, anything else under `_json`;
/// nested values flattened to `key[sub]` and `key[]`. Every member counts, duplicate keys
/// included (Ruby keeps the last, other parsers the first).
fn parse_json(body: &[u8]) -> Result<Vec<Param>, BodyError> {
    if body.is_empty() {
        // Rails and Grape skip an empty body.
        return Ok(Vec::new());
    }
    let text = std::str::from_utf8(body).map_err(|_| BodyError::Utf8)?;
    let leaves = flatten_json(text).map_err(|e| {
        let what = match e.classify() {
            serde_json::error::Category::Io => "read error",
            serde_json::error::Category::Syntax => "syntax error",
            serde_json::error::Category::Data => "unsupported value",
            serde_json::error::Category::Eof => "unexpected end",
        };
        BodyError::Json(format!("{what} at line {} column {}", e.line(), e.column()))
    })?;
    Ok(leaves
        .into_iter()
        .map(|l| Param {
            name: l.name,
            value: l.value,
        })
        .collect())
}

pub(super) struct Leaf {
    pub(super) name: String,
    pub(super) value: String,
    /// A JSON string (JWT claims must be strings to be a token).
    pub(super) string: bool,
}

pub(super) fn flatten_json(text: &str) -> Result<Vec<Leaf>, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(text);
    let mut leaves = Vec::new();
    Flatten {
        name: None,
        out: &mut leaves,
    }
    .deserialize(&mut de)?;
    de.end()?;
    Ok(leaves)
}

/// Walks a JSON document in order, emitting every leaf; `serde_json::Value` would keep only
/// one of two equal keys, and the one it keeps need not be the one the forge reads.
struct Flatten<'a> {
    /// `None` at the top level, where an object's keys are names and anything else is `_json`.
    name: Option<String>,
    out: &'a mut Vec<Leaf>,
}

impl Flatten<'_> {
    fn leaf_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| "_json".to_owned())
    }

    fn push(self, value: String, string: bool) {
        let name = self.leaf_name();
        self.out.push(Leaf {
            name,
            value,
            string,
        });
    }
}

impl<'de> DeserializeSeed<'de> for Flatten<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Flatten<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<(), E> {
        self.push(v.to_string(), false);
        Ok(())
    }

    fn visit_i64<E>(self, v: i64) -> Result<(), E> {
        self.push(v.to_string(), false);
        Ok(())
    }

    fn visit_u64<E>(self, v: u64) -> Result<(), E> {
        self.push(v.to_string(), false);
        Ok(())
    }

    fn visit_f64<E>(self, v: f64) -> Result<(), E> {
        self.push(v.to_string(), false);
        Ok(())
    }

    fn visit_str<E>(self, v: &str) -> Result<(), E> {
        self.push(v.to_owned(), true);
        Ok(())
    }

    fn visit_string<E>(self, v: String) -> Result<(), E> {
        self.push(v, true);
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let name = format!("{}[]", self.leaf_name());
        let out = self.out;
        while seq
            .next_element_seed(Flatten {
                name: Some(name.clone()),
                out: &mut *out,
            })?
            .is_some()
        {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let out = self.out;
        while let Some(key) = map.next_key::<String>()? {
            let name = match &self.name {
                None => key,
                Some(parent) => format!("{parent}[{key}]"),
            };
            map.next_value_seed(Flatten {
                name: Some(name),
                out: &mut *out,
            })?;
        }
        Ok(())
    }
}

fn multer_error(e: multer::Error) -> BodyError {
    // multer's own messages quote field names and header values: body content.
    let what = match e {
        multer::Error::IncompleteFieldData { .. } => "incomplete field data",
        multer::Error::IncompleteHeaders => "incomplete part headers",
        multer::Error::ReadHeaderFailed(_) => "unreadable part headers",
        multer::Error::DecodeHeaderName { .. } => "bad part header name",
        multer::Error::DecodeHeaderValue { .. } => "bad part header value",
        multer::Error::IncompleteStream => "incomplete multipart stream",
        _ => "unreadable multipart body",
    };
    BodyError::Multipart(what.to_owned())
}

fn multipart_error(what: &str) -> BodyError {
    BodyError::Multipart(what.to_owned())
}

/// Fields of a multipart body, parsed by multer and checked against Rack 2.2's reading of the
/// same bytes: the two must split the body at the same delimiters, agree on every part's
/// name, and a part is skipped as a file only when Rack, too, would not make it a string
/// parameter. Any disagreement is an error (400), never a guess.
async fn parse_multipart(boundary: &str, body: Bytes) -> Result<Vec<Param>, BodyError> {
    let stream = futures_util::stream::iter(std::iter::once(
        Ok::<Bytes, std::convert::Infallible>(body.clone()),
    ));
    let mut multipart = multer::Multipart::new(stream, boundary.to_owned());
    let mut parts: Vec<(Option<String>, Bytes)> = Vec::new();
    while let Some(field) = multipart.next_field().await.map_err(multer_error)? {
        let name = field.name().map(str::to_owned);
        let data = field.bytes().await.map_err(multer_error)?;
        parts.push((name, data));
    }
    let heads = part_heads(&body, boundary, parts.len())?;
    let mut params = Vec::new();
    for ((multer_name, data), head) in parts.into_iter().zip(heads) {
        let name = part_name(head, multer_name.as_deref())?;
        if rack_file_part(head) {
            continue;
        }
        params.push(Param {
            name,
            value: String::from_utf8_lossy(&data).into_owned(),
        });
    }
    Ok(params)
}

/// Non-overlapping positions of `needle` in `hay`.
fn positions(hay: &[u8], needle: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut i = 0;
    while i + needle.len() <= hay.len() {
        if hay[i..].starts_with(needle) {
            out.push(i);
            i += needle.len();
        } else {
            i += 1;
        }
    }
    out
}

/// The raw header block of each part, after checking that the delimiters multer used are the
/// only `--boundary` strings in the body. Rack ends a part at `--boundary` followed by CRLF
/// or `--` even without a CRLF before it, and starts parsing after a leading close
/// delimiter; multer does neither. With every occurrence a clean delimiter, they agree.
pub(super) fn part_heads<'b>(
    body: &'b [u8],
    boundary: &str,
    parts: usize,
) -> Result<Vec<&'b [u8]>, BodyError> {
    let delimiter = [b"--", boundary.as_bytes()].concat();
    let at = positions(body, &delimiter);
    if at.len() != parts + 1 {
        return Err(multipart_error(
            "boundary string inside a part, preamble or epilogue",
        ));
    }
    for (i, &p) in at.iter().enumerate() {
        let after = &body[p + delimiter.len()..];
        let preceded = body[..p].ends_with(b"\r\n");
        if (i > 0 || p > 0) && !preceded {
            return Err(multipart_error("delimiter not at the start of a line"));
        }
        let closing = i == parts;
        if (closing && !after.starts_with(b"--")) || (!closing && !after.starts_with(b"\r\n")) {
            return Err(multipart_error("delimiter not followed by CRLF or '--'"));
        }
    }
    let mut heads = Vec::with_capacity(parts);
    for w in at.windows(2) {
        // Between the CRLF after one delimiter and the CRLF before the next; the two CRLFs
        // may be one when the delimiters touch, which is no part at all.
        let head = body
            .get(w[0] + delimiter.len() + 2..w[1].saturating_sub(2))
            .and_then(|part| {
                let end = positions(part, b"\r\n\r\n").first().copied()?;
                part.get(..end + 2)
            })
            .ok_or_else(|| multipart_error("part without a header block"))?;
        heads.push(head);
    }
    Ok(heads)
}

/// The part's name, which Rack reads with `/Content-Disposition:[^:]*;\s*name=(VALUE)/i`
/// anywhere in the head. Every such match and multer's name must agree.
pub(crate) fn part_name(head: &[u8], multer_name: Option<&str>) -> Result<String, BodyError> {
    let mut names = rack_disposition_names(head);
    if names.is_empty() {
        // Rack would fall back to Content-ID or the part's content type; refuse instead.
        return Err(multipart_error("part without a name"));
    }
    names.extend(multer_name.map(str::to_owned));
    names.dedup();
    if names.iter().any(|n| *n != names[0]) {
        return Err(multipart_error("part with more than one name"));
    }
    Ok(names.swap_remove(0))
}

const CONTENT_DISPOSITION: &[u8] = b"content-disposition:";

fn rack_disposition_names(head: &[u8]) -> Vec<String> {
    let lower = head.to_ascii_lowercase();
    let mut out = Vec::new();
    for at in positions(&lower, CONTENT_DISPOSITION) {
        let start = at + CONTENT_DISPOSITION.len();
        let end = head[start..]
            .iter()
            .position(|&b| b == b':')
            .map_or(head.len(), |p| start + p);
        for semi in (start..end).filter(|&i| head[i] == b';') {
            let j = skip_space(head, semi + 1);
            if lower[j..].starts_with(b"name=") {
                if let Some(v) = rack_value(head, j + 5) {
                    out.push(rack_dequote(&head[j + 5..v]));
                }
            }
        }
    }
    out
}

/// `Rack::Auth::Digest::Params.dequote`.
pub(super) fn rack_dequote(raw: &[u8]) -> String {
    let inner = match raw {
        [b'"', inner @ .., b'"'] if !inner.contains(&b'\n') => inner,
        _ => raw,
    };
    let mut out = Vec::with_capacity(inner.len());
    let mut i = 0;
    while i < inner.len() {
        if inner[i] == b'\\' && inner.get(i + 1).is_some_and(|&b| b != b'\n') {
            i += 1;
        }
        out.push(inner[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn skip_space(s: &[u8], mut i: usize) -> usize {
    while s.get(i).is_some_and(|&b| is_ruby_space_byte(b)) {
        i += 1;
    }
    i
}

/// Rack's `TOKEN = /[^\s()<>,;:\\"\/\[\]?=]+/`.
fn is_rack_token_byte(b: u8) -> bool {
    !is_ruby_space_byte(b) && !b"()<>,;:\\\"/[]?=".contains(&b)
}

/// Rack's RFC 2231 `ATTRIBUTE_CHAR`.
fn is_attribute_byte(b: u8) -> bool {
    b > 0x1f && b != 0x7f && !b" ()<>@,;:\\\"/[]?='*%".contains(&b)
}

fn run_end(s: &[u8], i: usize, pred: impl Fn(u8) -> bool) -> usize {
    i + s
        .get(i..)
        .map_or(0, |r| r.iter().take_while(|&&b| pred(b)).count())
}

/// End of Rack's `VALUE = /"(?:\\"|[^"])*"|TOKEN/` at `i`, as the regex engine picks it: a
/// quoted string closes at the first quote not preceded by a backslash, or failing that at
/// the last quote.
pub(super) fn rack_value(s: &[u8], i: usize) -> Option<usize> {
    if s.get(i) == Some(&b'"') {
        let mut last = None;
        for j in i + 1..s.len() {
            if s[j] == b'"' {
                if s[j - 1] != b'\\' {
                    return Some(j + 1);
                }
                last = Some(j + 1);
            }
        }
        return last;
    }
    let end = run_end(s, i, is_rack_token_byte);
    (end > i).then_some(end)
}

/// One `DISPPARM = /;\s*(?:REGULAR_PARAMETER|EXTENDED_PARAMETER)\s*/` at `s[p] == ';'`:
/// (key, raw value, end of the value, end of the match).
fn rack_dispparm(s: &[u8], p: usize) -> Option<(&[u8], &[u8], usize, usize)> {
    let i = skip_space(s, p + 1);
    let attr = run_end(s, i, is_attribute_byte);
    if attr == i {
        return None;
    }
    let hex = |b: Option<&u8>| b.is_some_and(u8::is_ascii_hexdigit);
    let ext_value_end = |mut j: usize| loop {
        if s.get(j) == Some(&b'%') && hex(s.get(j + 1)) && hex(s.get(j + 2)) {
            j += 3;
        } else if s.get(j).is_some_and(|&b| is_attribute_byte(b)) {
            j += 1;
        } else {
            return j;
        }
    };
    let digits_end = |j: usize| run_end(s, j, |b| b.is_ascii_digit());

    // REGULAR_PARAMETER: ATTRIBUTE (\*[0-9]+)? = VALUE
    let mut name_end = attr;
    if s.get(attr) == Some(&b'*') && digits_end(attr + 1) > attr + 1 {
        name_end = digits_end(attr + 1);
    }
    let (name_end, value_start, value_end) = if s.get(name_end) == Some(&b'=') {
        match rack_value(s, name_end + 1) {
            Some(v) => (name_end, name_end + 1, v),
            None => return None,
        }
    } else if s[attr..].starts_with(b"*0*=") || s[attr..].starts_with(b"*=") {
        // EXTENDED_INITIAL: ATTRIBUTE (\*0)? \* = charset ' language ' value
        let name_end = if s[attr..].starts_with(b"*0*=") {
            attr + 3
        } else {
            attr + 1
        };
        let charset = run_end(s, name_end + 1, |b| b.is_ascii_alphanumeric() || b == b'-');
        if s.get(charset) != Some(&b'\'') {
            return None;
        }
        let language = run_end(s, charset + 1, |b| b.is_ascii_alphanumeric() || b == b'-');
        if s.get(language) != Some(&b'\'') {
            return None;
        }
        (name_end, name_end + 1, ext_value_end(language + 1))
    } else if s.get(attr) == Some(&b'*') && matches!(s.get(attr + 1), Some(b'1'..=b'9')) {
        // EXTENDED_OTHER: ATTRIBUTE \*[1-9][0-9]*\* = value
        let d = digits_end(attr + 1);
        if s.get(d) != Some(&b'*') || s.get(d + 1) != Some(&b'=') {
            return None;
        }
        (d + 1, d + 2, ext_value_end(d + 2))
    } else {
        return None;
    };
    let end = skip_space(s, value_end);
    Some((&s[i..name_end], &s[value_start..value_end], value_end, end))
}

/// Whether some line of the head matches Rack's
/// `RFC2183 = /^Content-Disposition:\s*TOKEN\s*(DISPPARM)+$/i` along the greedy path. A miss
/// here means the part is read as a field: more candidates, never fewer.
fn rack_rfc2183(head: &[u8]) -> bool {
    let lower = head.to_ascii_lowercase();
    positions(&lower, CONTENT_DISPOSITION)
        .into_iter()
        .filter(|&at| at == 0 || head[at - 1] == b'\n')
        .any(|at| {
            let i = skip_space(head, at + CONTENT_DISPOSITION.len());
            let token = run_end(head, i, is_rack_token_byte);
            if token == i {
                return false;
            }
            let mut p = skip_space(head, token);
            let mut last = None;
            while head.get(p) == Some(&b';') {
                match rack_dispparm(head, p) {
                    Some((_, _, value_end, end)) => {
                        last = Some((value_end, end));
                        p = end;
                    }
                    None => break,
                }
            }
            // `$`: end of input or before a newline, somewhere in the trailing whitespace.
            last.is_some_and(|(value_end, end)| {
                end == head.len() || head[value_end..end].contains(&b'\n')
            })
        })
}

/// True when Rack 2.2 `get_filename` finds a filename, so the part is an upload (or, for an
/// empty name, dropped): no string parameter either way. Rack scans the whole head for
/// parameters, last one winning, so a quote opened in another header can hide a filename.
pub(crate) fn rack_file_part(head: &[u8]) -> bool {
    if !rack_rfc2183(head) {
        return false;
    }
    let mut params: Vec<(&[u8], &[u8])> = Vec::new();
    let mut p = 0;
    while let Some(off) = head[p..].iter().position(|&b| b == b';') {
        let semi = p + off;
        match rack_dispparm(head, semi) {
            Some((key, value, _, end)) => {
                params.push((key, value));
                p = end;
            }
            None => p = semi + 1,
        }
    }
    let last = |k: &[u8]| {
        params
            .iter()
            .rev()
            .find(|(key, _)| *key == k)
            .map(|&(_, v)| v)
    };
    if last(b"filename").is_some() {
        return true;
    }
    // `encoding, _, filename = value.split("'", 3)`: without two quotes there is no name.
    last(b"filename*").is_some_and(|v| v.iter().filter(|&&b| b == b'\'').count() >= 2)
}

/// An API write (PUT, PATCH, DELETE) with no Content-Type, whose body Grape's
/// `default_format :json` parses as JSON into params when it is JSON (POST without a type is
/// already [`BodyKind::Untyped`]). `path_lower` is the decoded, case-folded path.
pub fn untyped_api_write(method: &Method, headers: &HeaderMap, path_lower: &str) -> bool {
    matches!(*method, Method::PUT | Method::PATCH | Method::DELETE)
        && !headers.contains_key(http::header::CONTENT_TYPE)
        && path_lower.starts_with("/api/")
}

/// Whether a body starting with `prefix` is JSON to Grape: its first byte that is not
/// whitespace is `{` (or `/`, a comment Ruby's parser skips). `None` while `prefix` is all
/// whitespace (more bytes are needed).
pub fn json_sniff(prefix: &[u8]) -> Option<bool> {
    prefix
        .iter()
        .copied()
        .find(|b| !b.is_ascii_whitespace())
        .map(|b| b == b'{' || b == b'/')
}
