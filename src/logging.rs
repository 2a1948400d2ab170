//! Tracing setup and masking. Token values never reach a log line: credentials travel as
//! [`crate::secret::Secret`], and the request path and query are masked before they are
//! logged (sensitive parameter values, and any candidate value wherever it occurs).

use crate::config::LogFormat;
use crate::secret::Secret;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber: `RUST_LOG` if set, else `info`. Idempotent (a second call
/// is a no-op and returns `None`), so tests and the demo can call it freely.
///
/// Lines are formatted on the thread that logs them and written by a dedicated thread through
/// a buffer that is flushed whenever its queue runs empty: under load one `write(2)` carries
/// many lines instead of one per request, and a request never waits on the terminal or pipe
/// unless the queue (8192 lines) is full — then it waits, as nginx does, rather than losing
/// access lines. Keep the returned guard alive until exit: dropping it flushes what is queued.
#[must_use = "dropping the guard stops the log writer"]
pub fn init(format: LogFormat) -> Option<tracing_appender::non_blocking::WorkerGuard> {
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // The HTTP/2 and TLS libraries trace decoded frames at debug/trace level, which can
    // include header values (credentials). They stay at info whatever RUST_LOG asks; every
    // other target follows RUST_LOG.
    for directive in ["h2=info", "hyper=info", "rustls=info", "tokio_rustls=info"] {
        if let Ok(d) = directive.parse() {
            filter = filter.add_directive(d);
        }
    }
    // Colours only on a terminal: piped into journald, docker or a file they would be noise.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(8192)
        .thread_name("scopegate-log")
        .finish(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stderr(),
        ));
    let access = writer.clone();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    let installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    installed.ok()?;
    if format == LogFormat::Text && !ansi {
        let _ = ACCESS.set(access);
    }
    Some(guard)
}

/// The log writer, for access lines written without the subscriber's formatter (text format,
/// no colours; see [`write_access_line`]).
static ACCESS: std::sync::OnceLock<tracing_appender::non_blocking::NonBlocking> =
    std::sync::OnceLock::new();

/// Writes one access line in the text format's layout (`<RFC 3339 µs>  INFO
/// scopegate::access: <message>`) straight to the log writer, and returns `true`; `false` when
/// there is no such writer (JSON, a terminal, or no subscriber from [`init`]), and the caller
/// emits a `tracing` event instead. The caller has checked that the target is enabled.
/// `message` appends the line's text to the buffer it is given.
///
/// Why: the subscriber runs every message through an escaping writer a character at a time;
/// for the one line every request writes that was a fifth of an allowed request's
/// instructions. The access line needs no escaping: its path is visible ASCII (hyper refuses
/// the rest), and the strings that come from the forge are `Debug`-quoted.
pub fn write_access_line(message: impl FnOnce(&mut String)) -> bool {
    let Some(writer) = ACCESS.get() else {
        return false;
    };
    let mut line = String::with_capacity(512);
    push_rfc3339_micros(&mut line, std::time::SystemTime::now());
    line.push_str("  INFO scopegate::access: ");
    message(&mut line);
    line.push('\n');
    let _ = std::io::Write::write_all(&mut writer.clone(), line.as_bytes());
    true
}

/// Appends `t` as `YYYY-MM-DDTHH:MM:SS.ffffffZ` (UTC, microseconds: what
/// `humantime::format_rfc3339_micros` writes), with integer arithmetic instead of the
/// formatting machinery: it stamps every access line. Times before 1970 are written as the
/// epoch (a clock set that far back is not a time worth reporting precisely).
pub fn push_rfc3339_micros(out: &mut String, t: std::time::SystemTime) {
    let since = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (year, month, day) = civil_from_days(secs / 86_400);
    let of_day = secs % 86_400;
    push_padded(out, year, 4);
    out.push('-');
    push_padded(out, month, 2);
    out.push('-');
    push_padded(out, day, 2);
    out.push('T');
    push_padded(out, of_day / 3600, 2);
    out.push(':');
    push_padded(out, of_day / 60 % 60, 2);
    out.push(':');
    push_padded(out, of_day % 60, 2);
    out.push('.');
    push_padded(out, u64::from(since.subsec_micros()), 6);
    out.push('Z');
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar (Howard
/// Hinnant's `civil_from_days`, for non-negative day counts).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// `value` in decimal, zero-padded to at least `width` digits.
fn push_padded(out: &mut String, value: u64, width: usize) {
    let mut buf = itoa::Buffer::new();
    let digits = buf.format(value);
    for _ in digits.len()..width {
        out.push('0');
    }
    out.push_str(digits);
}

/// Appends `s` as `{:?}` renders it (quoted, escaped), without the formatting machinery when
/// there is nothing to escape: printable ASCII other than `"` and `\\`, the usual case for the
/// project paths and names in an access line.
pub fn push_debug_str(out: &mut String, s: &str) {
    if s.bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else {
        use std::fmt::Write as _;
        let _ = write!(out, "{s:?}");
    }
}

/// Appends an integer in decimal.
pub fn push_u64(out: &mut String, value: u64) {
    out.push_str(itoa::Buffer::new().format(value));
}

/// Appends an address as `IpAddr`'s `Display` writes it; IPv4, the usual peer, without the
/// formatting machinery (it goes into every access line and every `X-Forwarded-For`).
pub fn push_ip(out: &mut String, ip: std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                push_u64(out, u64::from(*octet));
            }
        }
        v6 => {
            use std::fmt::Write as _;
            let _ = write!(out, "{v6}");
        }
    }
}

pub const MASK: &str = "[MASKED]";

/// Query parameters whose values are credentials whatever they look like (base names, as
/// Rack reads them: `job_token[]` is `job_token`).
const SENSITIVE_PARAMS: [&str; 7] = [
    "job_token",
    "token",
    "access_token",
    "bearer_token",
    "private_token",
    "password",
    "offline_token",
];

/// Whether a parameter's value is masked whatever it looks like: the names GitLab reads
/// credentials from, and, as GitLab's own `filter_parameters` does, any name that says
/// `token`, `password` or `secret` (`CI_JOB_TOKEN=`, `private-token=`, `runner_token=`):
/// scopegate cannot tell a prefix-less token from other text by its value.
fn sensitive_key(decoded_key: &str) -> bool {
    let key = decoded_key.trim();
    let lower = key.to_ascii_lowercase();
    SENSITIVE_PARAMS
        .iter()
        .any(|s| base_name(key).eq_ignore_ascii_case(s))
        || ["token", "password", "secret"]
            .iter()
            .any(|word| lower.contains(word))
}

fn base_name(key: &str) -> &str {
    let key = key.trim_start_matches(['[', ']']);
    let end = key.find(['[', ']']).unwrap_or(key.len());
    &key[..end]
}

/// `path?query` with every credential masked: values of sensitive parameters (matched on the
/// decoded key), values containing `glcbt-`, and every occurrence of a known candidate value
/// (raw or percent-encoded) anywhere in the path or query.
/// Borrowed from `path_and_query` when there is nothing to mask in a target without a query
/// (the usual access line: the token rides in a header).
pub fn mask_target<'a>(
    path_and_query: &'a str,
    candidates: &[&Secret],
) -> std::borrow::Cow<'a, str> {
    let Some((path, q)) = path_and_query.split_once('?') else {
        return mask_borrowed(path_and_query, candidates);
    };
    let mut out = String::with_capacity(path_and_query.len());
    out.push_str(path);
    out.push('?');
    for piece in q.split_inclusive(['&', ';']) {
        let (body, sep) = match piece.char_indices().last() {
            Some((i, c)) if c == '&' || c == ';' => (&piece[..i], &piece[i..]),
            _ => (piece, ""),
        };
        let (key, value) = match body.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (body, None),
        };
        let decoded_key = percent_encoding::percent_decode_str(&key.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned();
        let decoded_value = value.map(|v| {
            percent_encoding::percent_decode_str(&v.replace('+', " "))
                .decode_utf8_lossy()
                .to_ascii_lowercase()
        });
        let sensitive = sensitive_key(&decoded_key)
            || decoded_value
                .as_deref()
                .is_some_and(|v| v.contains("glcbt-"));
        out.push_str(key);
        if let Some(v) = value {
            out.push('=');
            out.push_str(if sensitive && !v.is_empty() { MASK } else { v });
        }
        out.push_str(sep);
    }
    std::borrow::Cow::Owned(mask_values(&out, candidates))
}

/// Replaces every occurrence of each candidate in `text`, however its characters are
/// percent-encoded: raw, wholly encoded, or any mix (`%4A` or `%4a` for `J`), since any of
/// these spellings reads back as the token.
pub fn mask_values(text: &str, candidates: &[&Secret]) -> String {
    mask_borrowed(text, candidates).into_owned()
}

/// [`mask_values`], borrowed until a candidate is actually found: on nearly every request the
/// token is in a header, not in the logged path, and nothing needs copying.
fn mask_borrowed<'a>(text: &'a str, candidates: &[&Secret]) -> std::borrow::Cow<'a, str> {
    let mut out = std::borrow::Cow::Borrowed(text);
    for c in candidates {
        let raw = c.expose();
        if raw.len() < 4 {
            // Masking a two-letter "token" would shred the line and protect nothing.
            continue;
        }
        if let Some(masked) = mask_spellings(&out, raw.as_bytes()) {
            out = std::borrow::Cow::Owned(masked);
        }
    }
    out
}

/// `text` with every spelling of `needle` masked; `None` when there is none.
fn mask_spellings(text: &str, needle: &[u8]) -> Option<String> {
    let t = text.as_bytes();
    // Without a `%` the only spelling is the needle itself.
    if !t.contains(&b'%') && memchr::memmem::find(t, needle).is_none() {
        return None;
    }
    let mut out: Vec<u8> = Vec::with_capacity(t.len());
    let mut found = false;
    let mut i = 0;
    while i < t.len() {
        match spelled_at(t, i, needle) {
            Some(end) => {
                out.extend_from_slice(MASK.as_bytes());
                found = true;
                i = end;
            }
            None => {
                out.push(t[i]);
                i += 1;
            }
        }
    }
    // Matches start and end on character boundaries (a needle is whole UTF-8 characters, and
    // an escape is ASCII), so this is lossless.
    found.then(|| String::from_utf8_lossy(&out).into_owned())
}

/// The end of `needle` spelled at `t[i..]` with any of its bytes as `%XX`, if it is there.
fn spelled_at(t: &[u8], mut i: usize, needle: &[u8]) -> Option<usize> {
    let hex = |b: Option<&u8>| b.and_then(|&b| char::from(b).to_digit(16));
    for &want in needle {
        let b = *t.get(i)?;
        if b == want {
            i += 1;
        } else if b == b'%' {
            let (h, l) = (hex(t.get(i + 1))?, hex(t.get(i + 2))?);
            // Both digits are below 16: the byte cannot overflow.
            if (h * 16 + l) as u8 != want {
                return None;
            }
            i += 3;
        } else {
            return None;
        }
    }
    Some(i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    fn stamp(t: SystemTime) -> String {
        let mut s = String::new();
        push_rfc3339_micros(&mut s, t);
        s
    }

    #[test]
    fn access_timestamps_match_humantime_across_calendars() {
        let edges = [
            0u64,
            59,
            86_399,
            86_400,
            951_782_400,     // 2000-02-29 (a century leap year)
            951_868_799,     // 2000-02-29T23:59:59
            978_307_199,     // 2000-12-31T23:59:59
            1_709_164_800,   // 2024-02-29
            4_107_542_400,   // 2100-03-01 (2100 is not a leap year)
            4_102_444_799,   // 2099-12-31T23:59:59
            253_402_300_799, // 9999-12-31T23:59:59
        ];
        for secs in edges {
            for micros in [0u32, 1, 999_999, 123_456] {
                let t = UNIX_EPOCH + Duration::new(secs, micros * 1000);
                assert_eq!(
                    stamp(t),
                    humantime::format_rfc3339_micros(t).to_string(),
                    "{secs}.{micros}"
                );
            }
        }
        // A deterministic spread over 1970..2300, one second resolution, odd microseconds.
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let t = UNIX_EPOCH + Duration::new(x % 10_413_792_000, (x % 1_000_000) as u32 * 1000);
            assert_eq!(stamp(t), humantime::format_rfc3339_micros(t).to_string());
        }
        // Nanoseconds below a microsecond are dropped, as humantime drops them.
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 999_999_999);
        assert_eq!(stamp(t), humantime::format_rfc3339_micros(t).to_string());
        // Before the epoch: the epoch, not a panic.
        assert_eq!(
            stamp(UNIX_EPOCH - Duration::from_secs(5)),
            "1970-01-01T00:00:00.000000Z"
        );
    }

    #[test]
    fn debug_quoting_matches_the_formatter() {
        for s in [
            "",
            "g/app",
            "g/a b",
            "quote\"d",
            "back\\slash",
            "tab\tnew\nline\r",
            "bell\u{7}del\u{7f}",
            "ünïcode/päth",
            "zero\u{200b}width",
            "it's",
            "~!@#$%^&*()_+`-=[]{}|;:,./<>?",
        ] {
            let mut out = String::new();
            push_debug_str(&mut out, s);
            assert_eq!(out, format!("{s:?}"), "{s:?}");
        }
        let mut out = String::new();
        for v in [0u64, 7, 10, 999, 1_000_000, u64::MAX] {
            out.clear();
            push_u64(&mut out, v);
            assert_eq!(out, v.to_string());
        }
    }

    #[test]
    fn masks_sensitive_params_and_candidates() {
        let s = Secret::new("glcbt-64_abcdef");
        let masked = mask_target(
            "/api/v4/projects/1/x?job_token=abc;ref=main&private%5Ftoken=zz&q=glcbt-64_abcdef&token[]=t",
            &[&s],
        );
        assert_eq!(
            masked,
            "/api/v4/projects/1/x?job_token=[MASKED];ref=main&private%5Ftoken=[MASKED]&q=[MASKED]&token[]=[MASKED]"
        );
        let other = Secret::new("sekrit-value-123");
        assert_eq!(
            mask_target("/a/sekrit-value-123/b?x=sekrit%2Dvalue%2D123", &[&other]),
            "/a/[MASKED]/b?x=[MASKED]"
        );
    }

    #[test]
    fn masks_every_spelling_and_token_named_parameters() {
        let s = Secret::new("LegacyToken123");
        assert_eq!(
            mask_target(
                "/a/Legacy%54oken123/b?ref=%4c%65gacyToken123&x=1&y=Legacy%2",
                &[&s]
            ),
            "/a/[MASKED]/b?ref=[MASKED]&x=1&y=Legacy%2"
        );
        assert_eq!(
            mask_target(
                "/p?CI_JOB_TOKEN=abc&private-token=def&runner%5Ftoken=g&Secret_Key=h&tokenish=&scope=x",
                &[]
            ),
            "/p?CI_JOB_TOKEN=[MASKED]&private-token=[MASKED]&runner%5Ftoken=[MASKED]&Secret_Key=[MASKED]&tokenish=&scope=x"
        );
        // Non-ASCII text around a masked value survives.
        let t = Secret::new("tok-é-1234");
        assert_eq!(mask_values("ä tok-%C3%A9-1234 ü", &[&t]), "ä [MASKED] ü");
    }

    #[test]
    fn text_without_a_spelling_is_unchanged_and_each_spelling_is_masked() {
        let s = Secret::new("LegacyToken123");
        for (text, want) in [
            ("/api/v4/projects/1/issues", "/api/v4/projects/1/issues"),
            ("/a%2Fb/c%20d", "/a%2Fb/c%20d"),
            ("/x/LegacyToken12", "/x/LegacyToken12"),
            ("/x/LegacyToken123/y", "/x/[MASKED]/y"),
            ("/x/%4cegacyToken123", "/x/[MASKED]"),
            ("/LegacyToken123/LegacyToken%31%323", "/[MASKED]/[MASKED]"),
        ] {
            assert_eq!(mask_values(text, &[&s]), want, "{text}");
        }
    }
}
