//! Every place a request can carry a credential (SPEC §1), as request builders shared by
//! `tests/credentials.rs` and `tests/leaks.rs`. Included with `#[path]` by those test crates
//! (not through `support/mod.rs`), next to their `mod support;`.
#![allow(dead_code)]

use crate::support::{LEGACY_APP, PAT, TOK_APP, TOK_DONE, TOK_OTHER};
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use sha2::{Digest, Sha256};

/// Target of the allowed requests: g/secret (id 2) lets g/app in.
pub const SECRET_PATH: &str = "/api/v4/projects/2/repository/tree";
/// g/other (id 4) lets nobody in: where LEGACY_APP (g/app) is denied.
pub const OTHER_PATH: &str = "/api/v4/projects/4/repository/tree";
pub const NOT_FOUND_JSON: &str = r#"{"message":"404 Project Not Found"}"#;
pub const UNAUTHORIZED_JSON: &str = r#"{"message":"401 Unauthorized"}"#;

/// One request, described exactly, so the test can check what the forge received.
#[derive(Debug, Clone)]
pub struct Req {
    pub method: reqwest::Method,
    /// `path?query`, exactly as sent.
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
}

impl Req {
    pub fn get(target: impl Into<String>) -> Req {
        Req {
            method: reqwest::Method::GET,
            target: target.into(),
            headers: Vec::new(),
            body: None,
        }
    }

    pub fn with_body(
        method: reqwest::Method,
        target: &str,
        content_type: Option<&str>,
        body: impl Into<Vec<u8>>,
    ) -> Req {
        let mut r = Req::get(target);
        r.method = method;
        if let Some(ct) = content_type {
            r.headers.push(("Content-Type".into(), ct.into()));
        }
        r.body = Some(body.into());
        r
    }

    pub fn header(mut self, name: &str, value: impl Into<String>) -> Req {
        self.headers.push((name.to_owned(), value.into()));
        self
    }

    pub fn builder(&self, http: &reqwest::Client, base: &str) -> reqwest::RequestBuilder {
        let mut rb = http.request(self.method.clone(), format!("{base}{}", self.target));
        for (k, v) in &self.headers {
            rb = rb.header(k.as_str(), v.as_str());
        }
        if let Some(b) = &self.body {
            rb = rb.body(b.clone());
        }
        rb
    }

    pub async fn send(&self, http: &reqwest::Client, base: &str) -> reqwest::Response {
        self.builder(http, base)
            .send()
            .await
            .unwrap_or_else(|e| panic!("request {} {} fails: {e}", self.method, self.target))
    }

    /// Asserts that `rec` is this request, credentials and body unchanged.
    pub fn assert_intact(&self, rec: &scopegate::demo::forge::Recorded) {
        assert_eq!(rec.method.as_str(), self.method.as_str(), "method");
        assert_eq!(
            rec.uri, self.target,
            "path and query reach the forge unchanged"
        );
        for (k, v) in &self.headers {
            let got: Vec<&[u8]> = rec
                .headers
                .get_all(k.as_str())
                .iter()
                .map(|v| v.as_bytes())
                .collect();
            assert!(
                got.contains(&v.as_bytes()),
                "header {k} reaches the forge unchanged; it got {:?}",
                got.iter()
                    .map(|g| String::from_utf8_lossy(g))
                    .collect::<Vec<_>>()
            );
        }
        let body = self.body.as_deref().unwrap_or_default();
        assert!(rec.complete, "the forge received the whole body");
        assert_eq!(rec.body_len, body.len() as u64, "body length");
        assert_eq!(
            rec.body_sha256_hex(),
            sha256_hex(body),
            "body is byte-identical"
        );
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A credential slot: how to put `token` into a request for `path` (no query).
#[derive(Clone, Copy)]
pub struct Slot {
    pub name: &'static str,
    /// The slot is read by its name, so a prefix-less (legacy) token is found there too;
    /// false for slots only the `glcbt-` rule finds (a Cookie, an arbitrary header).
    pub legacy: bool,
    pub build: fn(token: &str, path: &str) -> Req,
}

fn hdr(path: &str, name: &str, value: String) -> Req {
    Req::get(path).header(name, value)
}

/// `user:password` in standard base64.
pub fn basic(user: &str, password: &str) -> String {
    STANDARD.encode(format!("{user}:{password}"))
}

/// `user:password` in base64 as only Ruby's lenient `Base64.decode64` reads it: no padding,
/// junk characters (outside the alphabet, a space among them) sprinkled through it.
pub fn lenient_basic(user: &str, password: &str) -> String {
    let clean = STANDARD_NO_PAD.encode(format!("{user}:{password}"));
    let junk = ['!', '.', '*', ' ', '$', '~', '#', '-', '_', '@'];
    let mut out = String::new();
    for (i, c) in clean.chars().enumerate() {
        if i > 0 && i % 5 == 0 {
            out.push(junk[(i / 5) % junk.len()]);
        }
        out.push(c);
    }
    out
}

/// An unsigned JWT whose payload carries `claim: token` (Conan, Terraform registry).
pub fn jwt(claim: &str, token: &str) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(
        serde_json::json!({ "iss": "gitlab", "sub": "ci", claim: token, "exp": 4102444800u64 })
            .to_string(),
    );
    let signature = URL_SAFE_NO_PAD.encode(b"not-a-real-signature");
    format!("{header}.{payload}.{signature}")
}

/// Every byte percent-encoded.
pub fn pct_all(s: &str) -> String {
    s.bytes().map(|b| format!("%{b:02X}")).collect()
}

pub const BOUNDARY: &str = "----scopegateTestBoundary7MA4YWxk";

/// A multipart/form-data body: `(name, part headers after Content-Disposition, value)`
/// fields, then one file part.
pub fn multipart(fields: &[(&str, &str, &str)]) -> Vec<u8> {
    let mut b = String::new();
    for (name, extra, value) in fields {
        b.push_str(&format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n{extra}\r\n{value}\r\n"
        ));
    }
    b.push_str(&format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.bin\"\r\nContent-Type: application/octet-stream\r\n\r\nsome file bytes\r\n--{BOUNDARY}--\r\n"
    ));
    b.into_bytes()
}

pub fn multipart_type() -> String {
    format!("multipart/form-data; boundary={BOUNDARY}")
}

fn post(path: &str, ct: Option<&str>, body: impl Into<Vec<u8>>) -> Req {
    Req::with_body(reqwest::Method::POST, path, ct, body)
}

const FORM: &str = "application/x-www-form-urlencoded";

/// Every credential slot of SPEC §1.
pub fn slots() -> Vec<Slot> {
    vec![
        Slot {
            name: "header JOB-TOKEN",
            legacy: true,
            build: |t, p| hdr(p, "JOB-TOKEN", t.into()),
        },
        Slot {
            name: "header JOB_TOKEN",
            legacy: true,
            build: |t, p| hdr(p, "JOB_TOKEN", t.into()),
        },
        Slot {
            name: "header job-token (lower case)",
            legacy: true,
            build: |t, p| hdr(p, "job-token", t.into()),
        },
        Slot {
            name: "header PRIVATE-TOKEN",
            legacy: true,
            build: |t, p| hdr(p, "PRIVATE-TOKEN", t.into()),
        },
        Slot {
            name: "header PRIVATE_TOKEN",
            legacy: true,
            build: |t, p| hdr(p, "PRIVATE_TOKEN", t.into()),
        },
        Slot {
            name: "header DEPLOY-TOKEN",
            legacy: true,
            build: |t, p| hdr(p, "DEPLOY-TOKEN", t.into()),
        },
        Slot {
            name: "Authorization: Bearer",
            legacy: true,
            build: |t, p| hdr(p, "Authorization", format!("Bearer {t}")),
        },
        Slot {
            name: "Authorization: bearer (lower-case scheme)",
            legacy: true,
            build: |t, p| hdr(p, "Authorization", format!("bearer {t}")),
        },
        Slot {
            name: "Authorization: Basic gitlab-ci-token",
            legacy: true,
            build: |t, p| {
                hdr(
                    p,
                    "Authorization",
                    format!("Basic {}", basic("gitlab-ci-token", t)),
                )
            },
        },
        Slot {
            name: "Authorization: Basic other user",
            legacy: true,
            build: |t, p| {
                hdr(
                    p,
                    "Authorization",
                    format!("Basic {}", basic("deployer", t)),
                )
            },
        },
        Slot {
            name: "Authorization: bAsIc (scheme case)",
            legacy: true,
            build: |t, p| hdr(p, "Authorization", format!("bAsIc {}", basic("someone", t))),
        },
        Slot {
            name: "Authorization: Basic lenient gitlab-ci-token",
            legacy: true,
            build: |t, p| {
                hdr(
                    p,
                    "Authorization",
                    format!("Basic {}", lenient_basic("gitlab-ci-token", t)),
                )
            },
        },
        Slot {
            name: "Authorization: Basic lenient other user",
            legacy: true,
            build: |t, p| {
                hdr(
                    p,
                    "Authorization",
                    format!("Basic {}", lenient_basic("x", t)),
                )
            },
        },
        Slot {
            name: "Authorization: Bearer<TAB>",
            legacy: true,
            build: |t, p| hdr(p, "Authorization", format!("Bearer\t{t}")),
        },
        Slot {
            name: "Authorization: Token",
            legacy: true,
            build: |t, p| hdr(p, "Authorization", format!("Token {t}")),
        },
        Slot {
            name: "Authorization: Token token=\"…\"",
            legacy: true,
            build: |t, p| {
                hdr(
                    p,
                    "Authorization",
                    format!("Token token=\"{t}\", scope=api"),
                )
            },
        },
        Slot {
            name: "Authorization: raw value",
            legacy: true,
            build: |t, p| hdr(p, "Authorization", t.into()),
        },
        Slot {
            name: "Authorization: Bearer ci:<agent>:<token>",
            legacy: true,
            build: |t, p| hdr(p, "Authorization", format!("Bearer ci:123:{t}")),
        },
        Slot {
            name: "Authorization: Bearer JWT token claim",
            legacy: true,
            build: |t, p| hdr(p, "Authorization", format!("Bearer {}", jwt("token", t))),
        },
        Slot {
            name: "Authorization: Bearer JWT access_token claim",
            legacy: true,
            build: |t, p| {
                hdr(
                    p,
                    "Authorization",
                    format!("Bearer {}", jwt("access_token", t)),
                )
            },
        },
        Slot {
            name: "Authorization: Basic with JWT password",
            legacy: true,
            build: |t, p| {
                hdr(
                    p,
                    "Authorization",
                    format!("Basic {}", basic("terraform", &jwt("token", t))),
                )
            },
        },
        Slot {
            name: "query job_token",
            legacy: true,
            build: |t, p| Req::get(format!("{p}?job_token={t}")),
        },
        Slot {
            name: "query token",
            legacy: true,
            build: |t, p| Req::get(format!("{p}?ref=main&token={t}")),
        },
        Slot {
            name: "query private_token",
            legacy: true,
            build: |t, p| Req::get(format!("{p}?private_token={t}")),
        },
        Slot {
            name: "query access_token",
            legacy: true,
            build: |t, p| Req::get(format!("{p}?access_token={t}")),
        },
        Slot {
            name: "query bearer_token",
            legacy: true,
            build: |t, p| Req::get(format!("{p}?bearer_token={t}")),
        },
        Slot {
            name: "query job_token[]",
            legacy: true,
            build: |t, p| Req::get(format!("{p}?job_token[]={t}")),
        },
        Slot {
            name: "query job_token%5B%5D",
            legacy: true,
            build: |t, p| Req::get(format!("{p}?job_token%5B%5D={t}")),
        },
        Slot {
            name: "query job%5Ftoken",
            legacy: true,
            build: |t, p| Req::get(format!("{p}?job%5Ftoken={t}")),
        },
        Slot {
            name: "query ;-separated",
            legacy: true,
            build: |t, p| Req::get(format!("{p}?ref=main;job_token={t}")),
        },
        Slot {
            name: "query empty pieces",
            legacy: true,
            build: |t, p| Req::get(format!("{p}?ref=main;;&;private_token={t}&")),
        },
        Slot {
            name: "query value %-encoded",
            legacy: true,
            build: |t, p| Req::get(format!("{p}?job_token={}", pct_all(t))),
        },
        Slot {
            name: "query value with + (a space)",
            legacy: true,
            build: |t, p| Req::get(format!("{p}?private_token={t}+")),
        },
        Slot {
            name: "Cookie",
            legacy: false,
            build: |t, p| hdr(p, "Cookie", format!("a=b; ci={t}; theme=dark")),
        },
        Slot {
            name: "arbitrary header",
            legacy: false,
            build: |t, p| hdr(p, "X-Custom-Thing", format!("prefix {t} suffix")),
        },
        Slot {
            name: "User-Agent",
            legacy: false,
            build: |t, p| hdr(p, "User-Agent", format!("curl/8.0 ({t})")),
        },
        Slot {
            name: "query, arbitrary parameter",
            legacy: false,
            build: |t, p| Req::get(format!("{p}?note=see%20{t}%20here")),
        },
        Slot {
            name: "body urlencoded",
            legacy: true,
            build: |t, p| post(p, Some(FORM), format!("title=x&job_token={t}")),
        },
        Slot {
            name: "body urlencoded (type case, charset)",
            legacy: true,
            build: |t, p| {
                post(
                    p,
                    Some("Application/X-WWW-Form-URLEncoded; charset=UTF-8"),
                    format!("private_token={t}&a=1"),
                )
            },
        },
        Slot {
            name: "body form, POST without Content-Type",
            legacy: true,
            build: |t, p| post(p, None, format!("a=1&token={t}")),
        },
        Slot {
            name: "body form on GET",
            legacy: true,
            build: |t, p| {
                Req::with_body(
                    reqwest::Method::GET,
                    p,
                    Some(FORM),
                    format!("job_token={t}"),
                )
            },
        },
        Slot {
            name: "body form on PUT",
            legacy: true,
            build: |t, p| {
                Req::with_body(
                    reqwest::Method::PUT,
                    p,
                    Some(FORM),
                    format!("access_token={t}"),
                )
            },
        },
        Slot {
            name: "body JSON token",
            legacy: true,
            build: |t, p| {
                post(
                    p,
                    Some("application/json"),
                    serde_json::json!({ "title": "x", "token": t }).to_string(),
                )
            },
        },
        Slot {
            name: "body JSON job_token array",
            legacy: true,
            build: |t, p| {
                post(
                    p,
                    Some("application/json; charset=utf-8"),
                    serde_json::json!({ "job_token": [t] }).to_string(),
                )
            },
        },
        Slot {
            name: "body JSON nested",
            legacy: false,
            build: |t, p| {
                post(
                    p,
                    Some("application/json"),
                    serde_json::json!({ "a": { "b": [ { "job_token": t } ] } }).to_string(),
                )
            },
        },
        Slot {
            name: "body JSON top-level array",
            legacy: false,
            build: |t, p| {
                post(
                    p,
                    Some("application/json"),
                    serde_json::json!([ { "job_token": t } ]).to_string(),
                )
            },
        },
        Slot {
            name: "body git-lfs+json",
            legacy: true,
            build: |t, p| {
                post(
                    p,
                    Some("application/vnd.git-lfs+json"),
                    serde_json::json!({ "operation": "download", "objects": [], "job_token": t })
                        .to_string(),
                )
            },
        },
        Slot {
            name: "body multipart field",
            legacy: true,
            build: |t, p| {
                post(
                    p,
                    Some(&multipart_type()),
                    multipart(&[("job_token", "", t)]),
                )
            },
        },
        Slot {
            name: "body multipart field with its own Content-Type",
            legacy: true,
            build: |t, p| {
                post(
                    p,
                    Some(&multipart_type()),
                    multipart(&[
                        ("x", "", "1"),
                        ("token", "Content-Type: application/json\r\n", t),
                    ]),
                )
            },
        },
    ]
}

/// Splits what `support::raw` returned into (status, body).
pub fn raw_status_body(resp: &str) -> (u16, String) {
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {resp:?}"));
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Requests scopegate refuses itself (given `limits.inspect_body: 1KiB`), each carrying a
/// token somewhere: `(what, request, status)`.
pub fn refusal_cases() -> Vec<(&'static str, Req, u16)> {
    let unknown = "glcbt-64_UnknownTokenZZZZZZZZZZZZZ";
    let json = |body: String| {
        Req::with_body(
            reqwest::Method::POST,
            SECRET_PATH,
            Some("application/json"),
            body,
        )
    };
    let mut big_form = format!("job_token={TOK_APP}&pad=").into_bytes();
    big_form.resize(4096, b'a');
    vec![
        ("two job tokens", Req::get(format!("{SECRET_PATH}?job_token={TOK_OTHER}")).header("JOB-TOKEN", TOK_APP), 404),
        ("job token and PAT", Req::get(SECRET_PATH).header("JOB-TOKEN", TOK_APP).header("PRIVATE-TOKEN", PAT), 404),
        ("PAT in JOB-TOKEN", Req::get(SECRET_PATH).header("JOB-TOKEN", PAT), 401),
        ("unknown job_token", Req::get(format!("{SECRET_PATH}?job_token={unknown}")), 401),
        ("unknown legacy job_token", Req::get(format!("{SECRET_PATH}?job_token=NoSuchJobToken987654321")), 401),
        ("Basic gitlab-ci-token unknown", Req::get(SECRET_PATH).header("Authorization", format!("Basic {}", basic("gitlab-ci-token", unknown))), 401),
        ("finished job", Req::get(format!("{SECRET_PATH}?private_token={TOK_DONE}")).header("JOB-TOKEN", TOK_DONE), 401),
        ("finished job, lenient Basic", Req::get(SECRET_PATH).header("Authorization", format!("Basic {}", lenient_basic("gitlab-ci-token", TOK_DONE))), 401),
        ("malformed JSON", json(format!("{{\"job_token\": \"{TOK_APP}\"")), 400),
        ("malformed JSON, token in header", json("{".into()).header("JOB-TOKEN", TOK_OTHER), 400),
        (
            "bad multipart boundary",
            Req::with_body(reqwest::Method::POST, SECRET_PATH, Some("multipart/form-data; boundary=Nope"), multipart(&[("job_token", "", TOK_APP)])),
            400,
        ),
        (
            "service twice",
            Req::get(format!("/g/secret.git/info/refs?service=git-upload-pack&service=git-receive-pack&job_token={TOK_APP}")),
            400,
        ),
        ("body over the limit", Req::with_body(reqwest::Method::POST, &format!("{SECRET_PATH}?private_token={LEGACY_APP}"), Some("application/x-www-form-urlencoded"), big_form), 413),
        ("control character in the path", Req::get(format!("/api/v4/projects/2/repository/files/a%0Ab?job_token={TOK_APP}")), 404),
        ("unknown route", Req::get(format!("/api/v4/groups/10/projects?job_token={TOK_APP}")).header("Authorization", format!("Bearer {TOK_APP}")), 404),
    ]
}
