//! The differential oracle (issue 4, "Proof against the forge's parser"): every request of a
//! hostile corpus and of a few hundred generated variations goes both through scopegate's
//! extraction and classification and through `tests/oracle/rack_oracle.rb`, which parses it
//! with Debian's `ruby-rack` (Rack 2.2, the parser Rails and Grape use) and reads it the way
//! GitLab's `auth_finders.rb` and `api_authentication/` do. For every request:
//!
//! - every token-like value the forge would read is among scopegate's candidates, or
//!   scopegate refuses the request (400: unparseable body, ambiguous parameter, too many
//!   credentials, malformed request-target);
//! - the project the forge routes on (Grape's `:id` in `/api/v4/projects/:id/…`, the
//!   repository path of a Git route) is scopegate's target, or scopegate denies the request.
//!
//! A value is token-like when it is non-empty visible ASCII: every token the forge issues
//! (legacy job tokens, `glcbt-` tokens, JWT job tokens as they verify) is, and the gateway
//! looks nothing else up. Values with spaces the forge would still accept (a JWT job token
//! with junk in its signature) are covered by the oracle's "as verified" reading of them.
//!
//! Without `ruby` or its `rack` the test is skipped with a message, unless `CI` is set: CI
//! installs both (`.ci/run`), so there a missing Ruby fails the test.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use scopegate::canonical::canonicalize;
use scopegate::config::Ref;
use scopegate::credentials::{
    body_kind, credentials_from_params, from_headers, json_sniff, parse_body, parse_query,
    single_value, untyped_api_write, BodyKind, Credential, Origin, Param,
};
use scopegate::inspect::MultipartScanner;
use scopegate::target::{classify, repository_shadow, Action, Class, ClassParams, Reject};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// How many generated variations join the hand-written corpus (`ORACLE_GENERATED` overrides,
/// to explore further).
const GENERATED: usize = 1000;
/// The generator's seed: the same requests on every run (`ORACLE_SEED` overrides).
const SEED: u64 = 0x5c0e_9a7e_d1ff_0001;

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
/// The gateway's bound on a body it reads whole.
const INSPECT_BODY: usize = 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Case {
    label: String,
    method: String,
    path: String,
    query: Option<String>,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

impl Case {
    fn new(label: impl Into<String>, method: &str, target: &str) -> Case {
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
            None => (target.to_owned(), None),
        };
        Case {
            label: label.into(),
            method: method.to_owned(),
            path,
            query,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    fn get(label: impl Into<String>, target: &str) -> Case {
        Case::new(label, "GET", target)
    }

    /// A header field as a server receives it: httparse drops the value's surrounding
    /// whitespace, and Puma does the same.
    fn h(mut self, name: &str, value: impl AsRef<[u8]>) -> Case {
        let v = value.as_ref();
        let start = v.iter().position(|&b| b != b' ' && b != b'\t');
        let end = v.iter().rposition(|&b| b != b' ' && b != b'\t');
        let v = match (start, end) {
            (Some(s), Some(e)) => v[s..=e].to_vec(),
            _ => Vec::new(),
        };
        self.headers.push((name.to_owned(), v));
        self
    }

    fn body(mut self, content_type: Option<&str>, body: impl AsRef<[u8]>) -> Case {
        if let Some(ct) = content_type {
            self = self.h("Content-Type", ct);
        }
        self.body = body.as_ref().to_vec();
        self
    }

    fn method(&self) -> Method {
        Method::from_bytes(self.method.as_bytes()).expect("method")
    }

    fn header_map(&self) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in &self.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .unwrap_or_else(|_| panic!("{}: header name {name:?}", self.label));
            let value = HeaderValue::from_bytes(value)
                .unwrap_or_else(|_| panic!("{}: header value {value:?}", self.label));
            map.append(name, value);
        }
        map
    }

    fn to_json(&self, id: usize) -> String {
        let headers: Vec<Value> = self
            .headers
            .iter()
            .map(|(n, v)| json!([n, STANDARD.encode(v)]))
            .collect();
        json!({
            "id": id,
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "headers": headers,
            "body": STANDARD.encode(&self.body),
        })
        .to_string()
    }

    fn describe(&self) -> String {
        let mut s = format!("[{}] {} {}", self.label, self.method, self.path);
        if let Some(q) = &self.query {
            s.push('?');
            s.push_str(q);
        }
        for (n, v) in &self.headers {
            s.push_str(&format!("\n      {n}: {}", String::from_utf8_lossy(v)));
        }
        if !self.body.is_empty() {
            let shown: String = String::from_utf8_lossy(&self.body)
                .chars()
                .take(300)
                .collect();
            s.push_str(&format!("\n      body: {shown:?}"));
        }
        s
    }
}

fn basic(userpass: &str) -> String {
    format!("Basic {}", STANDARD.encode(userpass))
}

/// A JWT with the given payload and a signature of `sig_len` made-up bytes.
fn jwt_parts(header: &str, payload: &str, sig_len: usize, salt: u8) -> (String, String, String) {
    let sig: Vec<u8> = (0..sig_len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt))
        .collect();
    (
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload),
        URL_SAFE_NO_PAD.encode(sig),
    )
}

/// A Terraform/Conan-style JWT wrapping `token` in `claim`.
fn wrapping_jwt(claim: &str, token: &str) -> String {
    let (h, p, s) = jwt_parts(
        r#"{"alg":"HS256","typ":"JWT"}"#,
        &json!({ claim: token, "user_id": 7 }).to_string(),
        32,
        claim.len() as u8,
    );
    format!("{h}.{p}.{s}")
}

/// A job token in GitLab's JWT format (`glcbt-` + an RS256 JWT), split at its signature so
/// the corpus can put junk where the forge's decoder skips it.
fn jwt_job_token() -> (String, String) {
    let (h, p, s) = jwt_parts(
        r#"{"alg":"RS256","kid":"k1","typ":"JWT"}"#,
        r#"{"sub":"gid://gitlab/Ci::Build/77","o":"1","u":"2"}"#,
        256,
        9,
    );
    (format!("glcbt-{h}.{p}."), s)
}

fn multipart(boundary: &str, parts: &[(&str, &str)]) -> String {
    let mut body = String::new();
    for (head, value) in parts {
        body.push_str(&format!("--{boundary}\r\n{head}\r\n\r\n{value}\r\n"));
    }
    body.push_str(&format!("--{boundary}--\r\n"));
    body
}

fn field(name: &str) -> String {
    format!("Content-Disposition: form-data; name=\"{name}\"")
}

const FORM: Option<&str> = Some("application/x-www-form-urlencoded");
const JSON: Option<&str> = Some("application/json");
const MP: Option<&str> = Some("multipart/form-data; boundary=B");

/// The hand-written corpus: every credential slot, Rack's parameter quirks, JSON and
/// multipart oddities, and the project references the forge routes on.
fn corpus() -> Vec<Case> {
    let t = "glcbt-64_tokenAAAA";
    let legacy = "Legacy20CharToken0aZ";
    let mut c = vec![
        // Header slots, every spelling Puma maps to one env key.
        Case::get("JOB-TOKEN", "/api/v4/projects/1/jobs").h("JOB-TOKEN", t),
        Case::get("Job_Token", "/api/v4/projects/1/jobs").h("Job_Token", legacy),
        Case::get("PRIVATE-TOKEN", "/api/v4/projects/1").h("PRIVATE-TOKEN", t),
        Case::get("private_token header", "/api/v4/projects/1").h("Private_Token", legacy),
        Case::get("DEPLOY-TOKEN", "/api/v4/projects/1").h("Deploy-Token", legacy),
        Case::new("X-NuGet-ApiKey", "PUT", "/api/v4/projects/1/packages/nuget")
            .h("X-NuGet-ApiKey", legacy),
        Case::get("X_NUGET_APIKEY", "/api/v4/projects/1").h("X_NUGET_APIKEY", legacy),
        Case::get("JOB-TOKEN twice", "/api/v4/projects/1")
            .h("JOB-TOKEN", t)
            .h("JOB-TOKEN", legacy),
        Case::get("JOB-TOKEN and JOB_TOKEN", "/api/v4/projects/1")
            .h("JOB-TOKEN", legacy)
            .h("JOB_TOKEN", t),
        Case::get("JOB-TOKEN blank, PRIVATE-TOKEN set", "/api/v4/projects/1")
            .h("JOB-TOKEN", "")
            .h("PRIVATE-TOKEN", legacy),
        Case::get("token in Cookie", "/api/v4/projects/1").h("Cookie", format!("a=b; t={t}")),
        // Authorization, every scheme.
        Case::get("Bearer", "/api/v4/projects/1").h("Authorization", format!("Bearer {legacy}")),
        Case::get("bearer lower", "/api/v4/projects/1")
            .h("Authorization", format!("bearer {legacy}")),
        Case::get("Bearer two spaces", "/api/v4/projects/1")
            .h("Authorization", format!("Bearer  {legacy}")),
        Case::get("Bearer tab", "/api/v4/projects/1")
            .h("Authorization", format!("Bearer\t{legacy}")),
        Case::get("Bearer Bearer", "/api/v4/projects/1")
            .h("Authorization", format!("Bearer Bearer {legacy}")),
        Case::get("Token", "/api/v4/projects/1").h("Authorization", format!("Token {legacy}")),
        Case::get("Token token=quoted", "/api/v4/projects/1").h(
            "Authorization",
            format!("Token token=\"{legacy}\", realm=x"),
        ),
        Case::get("Token token= with =", "/api/v4/projects/1")
            .h("Authorization", format!("Token token={legacy}=x;a=b")),
        Case::get("Bearer params", "/api/v4/projects/1")
            .h("Authorization", format!("Bearer ,\"{legacy}\"\t,x")),
        Case::get("raw Authorization (RubyGems)", "/api/v4/projects/1").h("Authorization", legacy),
        Case::get("Kubernetes agent", "/api/v4/projects/1")
            .h("Authorization", format!("Bearer ci:42:{t}")),
        Case::get("Basic ci user", "/g/p.git/info/refs")
            .h("Authorization", basic(&format!("gitlab-ci-token:{t}"))),
        Case::get("Basic any user", "/api/v4/projects/1/packages/debian")
            .h("Authorization", basic(&format!("anyone:{legacy}"))),
        Case::get("Basic empty user", "/api/v4/projects/1")
            .h("Authorization", basic(&format!(":{legacy}"))),
        Case::get("Basic colon in password", "/api/v4/projects/1")
            .h("Authorization", basic(&format!("u:{legacy}:x"))),
        Case::get("Basic no colon", "/api/v4/projects/1").h("Authorization", basic(legacy)),
        Case::get("Basic junk base64", "/api/v4/projects/1").h("Authorization", {
            let b = STANDARD.encode(format!("gitlab-ci-token:{legacy}"));
            format!("Basic {}!{}*{}", &b[..5], &b[5..11], &b[11..])
        }),
        Case::get("Basic unpadded", "/api/v4/projects/1").h(
            "Authorization",
            format!(
                "Basic {}",
                STANDARD
                    .encode(format!("u:{legacy}x"))
                    .trim_end_matches('=')
            ),
        ),
        Case::get("Basic early padding", "/api/v4/projects/1").h(
            "Authorization",
            format!("Basic {}==QUJD", STANDARD.encode(format!("u:{legacy}"))),
        ),
        Case::get("Basic lower scheme", "/api/v4/projects/1").h(
            "Authorization",
            basic(&format!("u:{t}")).replace("Basic", "basic"),
        ),
        Case::get("Basic in Bearer", "/api/v4/projects/1").h(
            "Authorization",
            format!("Bearer {}", STANDARD.encode(format!("u:{legacy}"))),
        ),
        Case::get("Basic two words", "/api/v4/projects/1").h("Authorization", {
            let b = STANDARD.encode(format!("u:{legacy}"));
            format!("Basic {} {}", &b[..8], &b[8..])
        }),
        Case::get("Authorization twice", "/api/v4/projects/1")
            .h("Authorization", format!("Bearer {legacy}"))
            .h("Authorization", basic(&format!("u:{t}"))),
        Case::get("Basic alone", "/api/v4/projects/1").h("Authorization", "Basic"),
        Case::get("Basic tab", "/api/v4/projects/1").h(
            "Authorization",
            basic(&format!("u:{legacy}")).replace(' ', "\t"),
        ),
        Case::get("Basic trailing junk", "/api/v4/projects/1").h(
            "Authorization",
            format!("{} x=y", basic(&format!("gitlab-ci-token:{legacy}"))),
        ),
        Case::get("Authorization empty", "/api/v4/projects/1").h("Authorization", ""),
        Case::get("JOB-TOKEN with comma", "/api/v4/projects/1")
            .h("JOB-TOKEN", format!("{legacy}, {t}")),
        // JWT-wrapped job tokens.
        Case::get("Conan JWT", "/api/v4/projects/1/packages/conan/v1/ping").h(
            "Authorization",
            format!("Bearer {}", wrapping_jwt("access_token", t)),
        ),
        Case::get(
            "Terraform JWT param",
            &format!(
                "/api/v4/projects/1/packages/terraform/modules/v1/a/b/c/1.0.0/file?token={}",
                wrapping_jwt("token", legacy)
            ),
        ),
        Case::get(
            "Terraform JWT trailing dot",
            &format!(
                "/api/v4/projects/1/packages/terraform/modules/v1/a/b/c/1.0.0/file?token={}.",
                wrapping_jwt("token", legacy)
            ),
        ),
        Case::get(
            "Terraform JWT junk in signature",
            &format!("/api/v4/projects/1/x?token={}", {
                let j = wrapping_jwt("token", legacy);
                format!("{}!{}", &j[..j.len() - 6], &j[j.len() - 6..])
            }),
        ),
        Case::get(
            "Conan JWT two trailing dots",
            "/api/v4/projects/1/packages/conan",
        )
        .h(
            "Authorization",
            format!("Bearer {}..", wrapping_jwt("access_token", t)),
        ),
    ];
    let (head, sig) = jwt_job_token();
    c.extend([
        Case::get("JWT job token", "/api/v4/projects/1").h("JOB-TOKEN", format!("{head}{sig}")),
        Case::get("JWT job token, trailing dot", "/api/v4/projects/1")
            .h("JOB-TOKEN", format!("{head}{sig}.")),
        Case::get("JWT job token, space in signature", "/api/v4/projects/1")
            .h("JOB-TOKEN", format!("{head}{} {}", &sig[..40], &sig[40..])),
        Case::get("JWT job token, junk in signature", "/api/v4/projects/1")
            .h("JOB-TOKEN", format!("{head}{}!~{}", &sig[..40], &sig[40..])),
        Case::get("JWT job token split over two fields", "/api/v4/projects/1")
            .h("JOB-TOKEN", format!("{head}{}", &sig[..100]))
            .h("JOB-TOKEN", &sig[100..]),
        Case::get(
            "JWT job token over three fields, two spellings",
            "/api/v4/projects/1",
        )
        .h("JOB-TOKEN", format!("{head}{}", &sig[..100]))
        .h("Job_Token", &sig[100..200])
        .h("job-token", &sig[200..]),
        Case::new(
            "JWT job token over X-NuGet-ApiKey spellings",
            "PUT",
            "/api/v4/projects/1/packages/nuget",
        )
        .h("X-NuGet-ApiKey", format!("{head}{}", &sig[..100]))
        .h("X_NuGet_ApiKey", &sig[100..200])
        .h("x-nuget-apikey", &sig[200..]),
        Case::get(
            "JWT job token, Basic password with comma",
            "/g/p.git/info/refs",
        )
        .h(
            "Authorization",
            basic(&format!(
                "gitlab-ci-token:{head}{}, {}",
                &sig[..50],
                &sig[50..]
            )),
        ),
    ]);
    // Query parameters: Rack's separators, encodings and nesting.
    for (label, q) in [
        ("job_token", format!("job_token={t}")),
        ("job%5Ftoken", format!("job%5Ftoken={t}")),
        ("%6Aob_token", format!("%6Aob_token={legacy}")),
        ("job_token[]", format!("job_token[]={legacy}")),
        ("job_token%5B%5D", format!("job_token%5B%5D={legacy}")),
        ("[job_token]", format!("[job_token]={legacy}")),
        ("]job_token", format!("]job_token={legacy}")),
        ("job_token]x", format!("job_token]x={legacy}")),
        ("job_token[a]", format!("job_token[a]={legacy}")),
        ("job_token[][b]", format!("job_token[][b]={legacy}")),
        ("job_token[", format!("job_token[={legacy}")),
        (";", format!("a=1;job_token={legacy}")),
        ("; space", format!("a=1; job_token={legacy}")),
        ("&&", format!("&&job_token={legacy}&&")),
        ("+", "job_token=a+b".to_owned()),
        ("%20", "job_token=a%20b".to_owned()),
        ("%2B", format!("job_token={legacy}%2Bx")),
        ("bad escape elsewhere", format!("a=%zz&job_token={legacy}")),
        ("bad escape in value", format!("job_token={legacy}%z")),
        ("duplicate", format!("job_token={legacy}&job_token={t}")),
        (
            "array then string",
            format!("job_token[]={legacy}&job_token=x"),
        ),
        ("token", format!("token={legacy}")),
        ("private_token", format!("private_token={legacy}")),
        ("access_token", format!("access_token={legacy}")),
        ("bearer_token", format!("bearer_token={legacy}")),
        ("Job_Token case", format!("Job_Token={legacy}")),
        ("no =", "job_token".to_owned()),
        ("= only", format!("={legacy}")),
        ("%00", format!("job_token={legacy}%00")),
        ("utf-8", "job_token=%E2%82%AC".to_owned()),
        ("latin-1", "job_token=%E9".to_owned()),
        ("deep", format!("job_token[a][b][c][d][e]={legacy}")),
        (
            "scope and token",
            format!("scope=repository:g/p:pull&token={legacy}"),
        ),
    ] {
        c.push(Case::get(
            format!("query {label}"),
            &format!("/api/v4/projects/1?{q}"),
        ));
    }
    // Form bodies, on any method.
    for (label, method, ct, body) in [
        ("form", "POST", FORM, format!("job_token={legacy}")),
        (
            "form ; is no separator",
            "POST",
            FORM,
            format!("a=1;job_token={legacy}"),
        ),
        (
            "form ; then token",
            "POST",
            FORM,
            format!("a=1;job_token={t}"),
        ),
        (
            "form trailing NUL",
            "POST",
            FORM,
            format!("job_token={legacy}\0"),
        ),
        (
            "form charset",
            "POST",
            Some("application/x-www-form-urlencoded; charset=utf-8"),
            format!("token={legacy}"),
        ),
        (
            "form upper",
            "POST",
            Some("APPLICATION/X-WWW-FORM-URLENCODED"),
            format!("token={legacy}"),
        ),
        (
            "form, comma",
            "POST",
            Some("application/x-www-form-urlencoded, text/plain"),
            format!("token={legacy}"),
        ),
        ("form on GET", "GET", FORM, format!("job_token={legacy}")),
        (
            "form on PUT",
            "PUT",
            FORM,
            format!("private_token={legacy}"),
        ),
        (
            "form on DELETE",
            "DELETE",
            FORM,
            format!("access_token={legacy}"),
        ),
        (
            "POST without Content-Type",
            "POST",
            None,
            format!("job_token={legacy}"),
        ),
        (
            "POST, empty Content-Type",
            "POST",
            Some(""),
            format!("job_token={legacy}"),
        ),
        (
            "form bad escape",
            "POST",
            FORM,
            format!("job_token={legacy}&x=%"),
        ),
        (
            "form _method",
            "POST",
            FORM,
            format!("_method=PUT&job_token={legacy}"),
        ),
        (
            "form nested",
            "POST",
            FORM,
            format!("bearer_token[x][]={legacy}"),
        ),
        (
            "form in text/plain",
            "POST",
            Some("text/plain"),
            format!("job_token={legacy}"),
        ),
    ] {
        c.push(Case::new(label, method, "/api/v4/projects/1/x").body(ct, body));
    }
    // JSON bodies.
    for (label, method, ct, body) in [
        (
            "json",
            "POST",
            JSON,
            format!(r#"{{"job_token":"{legacy}"}}"#),
        ),
        (
            "json nested",
            "POST",
            JSON,
            format!(r#"{{"a":{{"job_token":"{legacy}"}},"token":"{t}"}}"#),
        ),
        (
            "json array value",
            "PUT",
            JSON,
            format!(r#"{{"job_token":["{legacy}","x"]}}"#),
        ),
        (
            "json object value",
            "PUT",
            JSON,
            format!(r#"{{"private_token":{{"a":"{legacy}"}}}}"#),
        ),
        (
            "json duplicate keys",
            "POST",
            JSON,
            format!(r#"{{"job_token":"{legacy}","job_token":"{t}"}}"#),
        ),
        (
            "json top-level array",
            "POST",
            JSON,
            format!(r#"["{legacy}"]"#),
        ),
        (
            "json escapes",
            "POST",
            JSON,
            r#"{"job\u005ftoken":"glcbt-\u0061bc"}"#.to_owned(),
        ),
        (
            "json integer",
            "POST",
            JSON,
            r#"{"token":1234567890123}"#.to_owned(),
        ),
        ("json true", "POST", JSON, r#"{"token":true}"#.to_owned()),
        (
            "json comment (Ruby only)",
            "POST",
            JSON,
            format!(r#"{{"job_token":"{legacy}"/* c */}}"#),
        ),
        (
            "json NaN",
            "POST",
            JSON,
            format!(r#"{{"job_token":"{legacy}","n":NaN}}"#),
        ),
        (
            "lfs json",
            "POST",
            Some("application/vnd.git-lfs+json"),
            format!(r#"{{"operation":"download","job_token":"{legacy}"}}"#),
        ),
        (
            "text/x-json",
            "POST",
            Some("text/x-json"),
            format!(r#"{{"token":"{legacy}"}}"#),
        ),
        (
            "jsonrequest",
            "POST",
            Some("application/jsonrequest"),
            format!(r#"{{"token":"{legacy}"}}"#),
        ),
        (
            "json charset",
            "PATCH",
            Some("application/json; charset=utf-8"),
            format!(r#"{{"token":"{legacy}"}}"#),
        ),
        (
            "JSON upper",
            "PATCH",
            Some("Application/JSON"),
            format!(r#"{{"token":"{legacy}"}}"#),
        ),
        (
            "json on GET",
            "GET",
            JSON,
            format!(r#"{{"job_token":"{legacy}"}}"#),
        ),
        (
            "json invalid utf-8",
            "POST",
            JSON,
            "{\"job_token\":\"\u{fffd}\"}".to_owned(),
        ),
        (
            "json no Content-Type, POST",
            "POST",
            None,
            format!(r#"{{"job_token":"{legacy}"}}"#),
        ),
        (
            "json no Content-Type, PUT",
            "PUT",
            None,
            format!(r#"{{"job_token":"{legacy}"}}"#),
        ),
        (
            "json no Content-Type, PATCH",
            "PATCH",
            None,
            format!(r#" {{"token":"{legacy}"}}"#),
        ),
        (
            "json no Content-Type, DELETE",
            "DELETE",
            None,
            format!(r#"{{"private_token":"{legacy}"}}"#),
        ),
        (
            "json, method override",
            "POST",
            None,
            format!(r#"{{"job_token":"{legacy}"}}"#),
        ),
    ] {
        let mut case = Case::new(label, method, "/api/v4/projects/1/x").body(ct, body);
        if label.contains("override") {
            case = case.h("X-HTTP-Method-Override", "PUT");
        }
        c.push(case);
    }
    // Multipart: Rack's reading against scopegate's.
    let value_part = |head: &str| multipart("B", &[(head, legacy)]);
    for (label, ct, body) in [
        ("multipart field", MP, value_part(&field("job_token"))),
        ("multipart field[]", MP, value_part(&field("job_token[]"))),
        (
            "multipart unquoted name",
            MP,
            value_part("Content-Disposition: form-data; name=job_token"),
        ),
        (
            "multipart escaped quote",
            MP,
            value_part("Content-Disposition: form-data; name=\"job_\\token\""),
        ),
        (
            "multipart own Content-Type",
            MP,
            value_part(&format!(
                "{}\r\nContent-Type: application/json",
                field("token")
            )),
        ),
        (
            "multipart filename",
            MP,
            value_part(&format!("{}; filename=\"a.txt\"", field("job_token"))),
        ),
        (
            "multipart empty filename",
            MP,
            value_part(&format!("{}; filename=\"\"", field("job_token"))),
        ),
        (
            "multipart filename*",
            MP,
            value_part(&format!("{}; filename*=UTF-8''a.txt", field("job_token"))),
        ),
        (
            "multipart filename* no quotes",
            MP,
            value_part(&format!("{}; filename*=a.txt", field("job_token"))),
        ),
        (
            "multipart upper header",
            MP,
            value_part("CONTENT-DISPOSITION: form-data; name=\"job_token\""),
        ),
        (
            "multipart two dispositions",
            MP,
            value_part(&format!("{}\r\n{}", field("a"), field("job_token"))),
        ),
        (
            "multipart Content-ID",
            MP,
            value_part("Content-ID: job_token"),
        ),
        (
            "multipart no name",
            MP,
            value_part("Content-Disposition: form-data"),
        ),
        (
            "multipart quoted boundary",
            Some("multipart/form-data; boundary=\"B\""),
            value_part(&field("job_token")),
        ),
        (
            "multipart mixed",
            Some("multipart/mixed; boundary=B"),
            value_part(&field("job_token")),
        ),
        (
            "multipart related",
            Some("multipart/related; boundary=B"),
            value_part(&field("token")),
        ),
        (
            "multipart alternative",
            Some("multipart/alternative; boundary=B"),
            value_part(&field("token")),
        ),
        (
            "multipart no boundary",
            Some("multipart/form-data"),
            format!("job_token={legacy}"),
        ),
        (
            "multipart two boundaries",
            Some("multipart/form-data; boundary=B; boundary=C"),
            value_part(&field("job_token")),
        ),
        (
            "multipart boundary space",
            Some("multipart/form-data; boundary =B"),
            value_part(&field("job_token")),
        ),
        (
            "multipart preamble",
            MP,
            format!("preamble\r\n{}", value_part(&field("job_token"))),
        ),
        (
            "multipart leading close",
            MP,
            format!("--B--\r\n{}", value_part(&field("job_token"))),
        ),
        (
            "multipart missing CRLF",
            MP,
            format!(
                "--B\r\n{}\r\n\r\n{legacy}--B\r\n{}\r\n\r\n{t}\r\n--B--\r\n",
                field("a"),
                field("job_token")
            ),
        ),
        (
            "multipart LF only",
            MP,
            format!("--B\n{}\n\n{legacy}\n--B--\n", field("job_token")),
        ),
        (
            "multipart epilogue",
            MP,
            format!(
                "{}--B\r\n{}\r\n\r\n{t}\r\n",
                value_part(&field("a")),
                field("job_token")
            ),
        ),
        (
            "multipart no close",
            MP,
            format!("--B\r\n{}\r\n\r\n{legacy}\r\n", field("job_token")),
        ),
        (
            "multipart two fields",
            MP,
            multipart("B", &[(&field("token"), legacy), (&field("job_token"), t)]),
        ),
        (
            "multipart filename then field",
            MP,
            multipart(
                "B",
                &[
                    (&format!("{}; filename=\"f\"", field("file")), "data"),
                    (&field("job_token"), legacy),
                ],
            ),
        ),
        (
            "multipart name with quote in filename",
            MP,
            value_part("Content-Disposition: form-data; filename=\"a;name=x\"; name=\"job_token\""),
        ),
        ("multipart on PUT", MP, value_part(&field("private_token"))),
        (
            "multipart two names",
            MP,
            value_part("Content-Disposition: form-data; name=\"a\"; name=\"job_token\""),
        ),
        (
            "multipart name*",
            MP,
            value_part("Content-Disposition: form-data; name*=UTF-8''job_token"),
        ),
        (
            "multipart padding after delimiter",
            MP,
            format!(
                "--B \r\n{}\r\n\r\n{legacy}\r\n--B--\r\n",
                field("job_token")
            ),
        ),
        (
            "multipart folded header",
            MP,
            value_part("Content-Disposition: form-data;\r\n name=\"job_token\""),
        ),
        (
            "multipart boundary ;",
            Some("multipart/form-data; boundary=\"a;b\""),
            multipart("a;b", &[(&field("job_token"), legacy)]),
        ),
        (
            "multipart boundary =",
            Some("multipart/form-data; boundary==B"),
            multipart("=B", &[(&field("job_token"), legacy)]),
        ),
        (
            "multipart charset first",
            Some("multipart/form-data; charset=utf-8; boundary=B"),
            value_part(&field("job_token")),
        ),
        (
            "multipart _charset_",
            MP,
            multipart(
                "B",
                &[
                    (&field("_charset_"), "ISO-8859-1"),
                    (&field("job_token"), legacy),
                ],
            ),
        ),
    ] {
        let method = if label.ends_with("on PUT") {
            "PUT"
        } else {
            "POST"
        };
        c.push(
            Case::new(label, method, "/api/v4/projects/1/packages/generic/a/1/f").body(ct, body),
        );
    }
    c.push(
        Case::new("form, gzip", "POST", "/api/v4/projects/1/x")
            .body(FORM, format!("job_token={legacy}"))
            .h("Content-Encoding", "gzip"),
    );
    c.push(
        Case::new("two Content-Types", "POST", "/api/v4/projects/1/x")
            .body(FORM, format!("job_token={legacy}"))
            .h("Content-Type", "application/json"),
    );
    // Project references the forge routes on.
    for path in [
        "/api/v4/projects/1",
        "/api/v4/projects/05/issues",
        "/api/v4/projects/1%0A",
        "/api/v4/projects/1%0Ag%2Fp",
        "/api/v4/projects/x%0A7",
        "/api/v4/projects/g%2Fp",
        "/api/v4/projects/g%2fp/repository/tree",
        "/api/v4/projects/G%2FP",
        "/api/v4/projects/%67/p",
        "/api/v4/projects/%67%2Fp",
        "/api/v4/projects/%67%2F%70/jobs",
        "/api/v4/projects/1.json",
        "/api/v4/projects/g%2Fp.json",
        "/api/v4/projects/g%252Fp",
        "/api/v4/projects/1%2Fissues",
        "/api/v4/projects/-5",
        "/api/v4/projects/%2B5",
        "/api/v4/projects/5%20",
        "/api/v4/projects/99999999999999999999",
        "/api/v4/projects/9223372036854775807",
        "/api/v4/projects/g%2Fp%2F",
        "/api/v4/projects/g%2F%2Fp",
        "/api/v4/projects/g%2F..%2Fp",
        "/api/v4/projects/a%2Fb%ZZ",
        "/api/v4/projects/g+p",
        "/api/v4/projects/1;x=1",
        "/api/v4/projects/1/",
        "//api/v4/projects/1",
        "/api//v4/projects/1",
        "/api/v4/%70rojects/1",
        "/api/v4/%50rojects/1",
        "/API/v4/projects/1",
        "/api/v4/projects/1/../2",
        "/api/v4/projects/1/info/refs",
        "/g/p.git/info/refs",
        "/g/p/info/refs",
        "/g/sub/p.git/git-upload-pack",
        "/g/p.wiki.git/info/refs",
        "/g/p.design.git/git-upload-pack",
        "/g/p.wiki.wiki.git/info/refs",
        "/g/p..git/info/refs",
        "/g/p.git.git/info/refs",
        "/G/P.git/info/refs",
        "/g/p.GIT/info/refs",
        "/g/p.git/info/refs/",
        "//g/p.git/info/refs",
        "/g//p.git/info/refs",
        "/g/p%2Egit/info/refs",
        "/g%2Fp.git/info/refs",
        "/g/p.git/info/lfs/objects/batch",
        "/g/p.git/info/lfs/locks/verify",
        "/g/p.git/gitlab-lfs/objects/0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        "/groups/g/p.git/info/refs",
        "/api/p.git/info/refs",
        "/g/-/p.git/info/refs",
        "/g/p/-/snippets/1.git/info/refs",
        "/g/p.atom.git/info/refs",
    ] {
        for method in ["GET", "POST"] {
            c.push(Case::new(format!("ref {method}"), method, path).h("JOB-TOKEN", t));
        }
    }
    let lfs = Some("application/vnd.git-lfs+json");
    for (label, query, body) in [
        ("download", "", r#"{"operation":"download","objects":[]}"#),
        (
            "query upload",
            "?operation=upload",
            r#"{"operation":"download"}"#,
        ),
        (
            "query operation[]",
            "?operation[]=upload",
            r#"{"operation":"download"}"#,
        ),
        (
            "query [operation]",
            "?[operation]=upload",
            r#"{"operation":"download"}"#,
        ),
        (
            "query ;operation",
            "?a=1;operation=upload",
            r#"{"operation":"download"}"#,
        ),
        (
            "query operation%5F",
            "?oper%61tion=upload",
            r#"{"operation":"download"}"#,
        ),
        (
            "query download too",
            "?operation=download",
            r#"{"operation":"download"}"#,
        ),
        (
            "duplicate key",
            "",
            r#"{"operation":"download","operation":"upload"}"#,
        ),
        ("nested", "", r#"{"operation":{"a":"download"}}"#),
        ("upload", "", r#"{"operation":"upload"}"#),
    ] {
        c.push(
            Case::new(
                format!("lfs batch {label}"),
                "POST",
                &format!("/g/p.git/info/lfs/objects/batch{query}"),
            )
            .body(lfs, body)
            .h("Authorization", basic(&format!("gitlab-ci-token:{t}"))),
        );
    }
    c.push(
        Case::new(
            "ref, _method override",
            "POST",
            "/g/p.git/info/lfs/locks/verify",
        )
        .body(FORM, "_method=DELETE")
        .h("JOB-TOKEN", t),
    );
    c
}

// ---------------------------------------------------------------------------------------------
// Generated variations
// ---------------------------------------------------------------------------------------------

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<'a, T: ?Sized>(&mut self, items: &[&'a T]) -> &'a T {
        items[self.below(items.len())]
    }

    fn token(&mut self) -> String {
        const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";
        let len = 12 + self.below(16);
        let body: String = (0..len)
            .map(|_| char::from(ALNUM[self.below(ALNUM.len())]))
            .collect();
        match self.below(5) {
            0 => format!("glcbt-{body}"),
            1 => format!("glpat-{body}"),
            2 => format!("acme-glcbt-{body}"),
            _ => body,
        }
    }
}

/// Percent-encodes some of `s`'s characters (any of them: Rack and Mustermann decode all).
fn reencode(rng: &mut Rng, s: &str, percent: u64) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if rng.chance(percent) {
            if rng.chance(50) {
                out.push_str(&format!("%{b:02X}"));
            } else {
                out.push_str(&format!("%{b:02x}"));
            }
        } else {
            out.push(char::from(b));
        }
    }
    out
}

fn gen_key(rng: &mut Rng) -> String {
    let base = rng.pick(&[
        "job_token",
        "token",
        "private_token",
        "access_token",
        "bearer_token",
        "job_token",
        "JOB_TOKEN",
        "a",
        "service",
    ]);
    let shaped = match rng.below(9) {
        0 => format!("{base}[]"),
        1 => format!("[{base}]"),
        2 => format!("{base}[x]"),
        3 => format!("{base}[][y]"),
        4 => format!("]{base}"),
        _ => base.to_owned(),
    };
    shaped
}

fn gen_value(rng: &mut Rng) -> String {
    let tok = rng.token();
    match rng.below(12) {
        0 => wrapping_jwt("token", &tok),
        1 => format!("{}.", wrapping_jwt("access_token", &tok)),
        2 => format!("{tok}+x"),
        3 => String::new(),
        4 => format!("ci:{}:{tok}", rng.below(999)),
        5 => format!("x {tok}"),
        _ => tok,
    }
}

fn gen_query(rng: &mut Rng) -> Option<String> {
    if rng.chance(30) {
        return None;
    }
    let n = 1 + rng.below(4);
    let mut q = String::new();
    for i in 0..n {
        if i > 0 {
            q.push_str(rng.pick(&["&", ";", "&&", ";&"]));
        }
        let key = gen_key(rng);
        q.push_str(&reencode(rng, &key, 15));
        if rng.chance(92) {
            q.push('=');
            let v = gen_value(rng);
            // Query values: visible ASCII only (the gateway refuses anything else), `+` and
            // `%20` for spaces, and now and then a bad escape.
            let v = v.replace(' ', if rng.chance(50) { "+" } else { "%20" });
            q.push_str(&reencode(rng, &v, 8));
            if rng.chance(4) {
                q.push_str("%z");
            }
        }
    }
    Some(q)
}

fn gen_headers(rng: &mut Rng, mut case: Case) -> Case {
    for _ in 0..rng.below(4) {
        let tok = rng.token();
        case = match rng.below(11) {
            0 => case.h(rng.pick(&["JOB-TOKEN", "Job_Token", "job-token"]), &tok),
            1 => case.h(rng.pick(&["PRIVATE-TOKEN", "Private_Token"]), &tok),
            2 => case.h(
                rng.pick(&["DEPLOY-TOKEN", "X-NuGet-ApiKey", "X_NUGET_APIKEY"]),
                &tok,
            ),
            3 => {
                let scheme = rng.pick(&["Bearer", "bearer", "Token", "token", "Foo"]);
                let sep = rng.pick(&[" ", "  ", "\t"]);
                case.h("Authorization", format!("{scheme}{sep}{tok}"))
            }
            4 => {
                let user = rng.pick(&["gitlab-ci-token", "anyone", ""]);
                let mut b = STANDARD.encode(format!("{user}:{tok}"));
                if rng.chance(40) {
                    let at = rng.below(b.len());
                    b.insert_str(at, rng.pick(&["!", "*", "%", " ", "=", "-_"]));
                }
                if rng.chance(30) {
                    b = b.trim_end_matches('=').to_owned();
                }
                case.h(
                    "Authorization",
                    format!("{} {b}", rng.pick(&["Basic", "basic", "Bearer"])),
                )
            }
            5 => case.h("Authorization", format!("Token token=\"{tok}\", a=b")),
            6 => case.h(
                "Authorization",
                format!("Bearer {}", wrapping_jwt("access_token", &tok)),
            ),
            7 => case.h("Authorization", &tok),
            8 => case.h("Cookie", format!("_gitlab_session=x; ci={tok}")),
            9 => {
                let (head, sig) = jwt_job_token();
                let cut = 1 + rng.below(sig.len() - 2);
                let junk = rng.pick(&[" ", ", ", "!", "..", "~"]);
                case.h(
                    "JOB-TOKEN",
                    format!("{head}{}{junk}{}", &sig[..cut], &sig[cut..]),
                )
            }
            _ => case.h(
                "X-HTTP-Method-Override",
                rng.pick(&["PUT", "GET", "DELETE", "patch"]),
            ),
        };
    }
    case
}

fn gen_body(rng: &mut Rng, case: Case) -> Case {
    let pairs = |rng: &mut Rng| -> Vec<(String, String)> {
        (0..1 + rng.below(3))
            .map(|_| (gen_key(rng), gen_value(rng)))
            .collect()
    };
    match rng.below(8) {
        0 | 1 => case,
        2 => {
            let sep = if rng.chance(70) { "&" } else { ";" };
            let body = pairs(rng)
                .into_iter()
                .map(|(k, v)| format!("{}={}", reencode(rng, &k, 10), reencode(rng, &v, 5)))
                .collect::<Vec<_>>()
                .join(sep);
            let ct = rng.pick(&[
                "application/x-www-form-urlencoded",
                "application/x-www-form-urlencoded; charset=UTF-8",
                "Application/X-Www-Form-Urlencoded",
                "",
            ]);
            let ct = (!ct.is_empty() || rng.chance(50)).then_some(ct);
            case.body(ct, body)
        }
        3 | 4 => {
            let mut body = String::from("{");
            for (i, (k, v)) in pairs(rng).into_iter().enumerate() {
                if i > 0 {
                    body.push(',');
                }
                let k = k.trim_matches(|c| c == '[' || c == ']').to_owned();
                let v = match rng.below(5) {
                    0 => json!([v, "x"]),
                    1 => json!({ "n": v }),
                    _ => json!(v),
                };
                body.push_str(&format!("{}:{}", json!(k), v));
            }
            body.push('}');
            let ct = rng.pick(&[
                "application/json",
                "application/vnd.git-lfs+json",
                "application/json; charset=utf-8",
                "text/x-json",
                "",
            ]);
            let ct = (!ct.is_empty()).then_some(ct);
            case.body(ct, body)
        }
        _ => {
            let boundary = rng.pick(&["B", "----xyz", "a'b"]);
            let mut body = String::new();
            for (k, v) in pairs(rng) {
                let mut head = match rng.below(4) {
                    0 => format!("Content-Disposition: form-data; name={k}"),
                    _ => format!("Content-Disposition: form-data; name=\"{k}\""),
                };
                if rng.chance(20) {
                    head.push_str("; filename=\"f.bin\"");
                }
                if rng.chance(25) {
                    head.push_str("\r\nContent-Type: text/plain");
                }
                body.push_str(&format!("--{boundary}\r\n{head}\r\n\r\n{v}\r\n"));
            }
            body.push_str(&format!("--{boundary}--\r\n"));
            let ct = format!(
                "{}; boundary={}",
                rng.pick(&[
                    "multipart/form-data",
                    "multipart/mixed",
                    "Multipart/Form-Data"
                ]),
                if rng.chance(30) {
                    format!("\"{boundary}\"")
                } else {
                    boundary.to_owned()
                }
            );
            case.body(Some(&ct), body)
        }
    }
}

fn gen_path(rng: &mut Rng) -> String {
    let api_ref = rng.pick(&[
        "1", "42", "g/p", "g/sub/p", "05", "G/P", "g/p.json", "1.json",
    ]);
    let git_repo = rng.pick(&["g/p", "g/sub/p", "g/p.wiki", "g/p.design", "G/p", "g/p."]);
    let path = match rng.below(6) {
        0 | 1 => {
            let r = api_ref.replace('/', if rng.chance(70) { "%2F" } else { "%2f" });
            let rest = rng.pick(&[
                "",
                "/issues",
                "/repository/files/a%2Fb/raw",
                "/jobs/1/artifacts",
            ]);
            format!("/api/v4/projects/{r}{rest}")
        }
        2 => format!("/api/v4/projects/{}", reencode(rng, api_ref, 30)),
        3 => {
            let rest = rng.pick(&[
                "info/refs",
                "git-upload-pack",
                "git-receive-pack",
                "info/lfs/objects/batch",
                "info/lfs/locks",
            ]);
            format!("/{git_repo}.git/{rest}")
        }
        4 => format!("/{git_repo}/info/refs"),
        _ => rng
            .pick(&[
                "/api/v4/job",
                "/api/v4/jobs/5/artifacts",
                "/jwt/auth",
                "/api/v4/groups/1",
            ])
            .to_owned(),
    };
    // Now and then re-encode a few characters of the whole path.
    if rng.chance(15) {
        let keep = path.len().min(5);
        let (head, tail) = path.split_at(keep);
        format!("{head}{}", reencode(rng, tail, 10))
    } else {
        path
    }
}

fn generated(n: usize) -> Vec<Case> {
    let mut rng = Rng(env_number("ORACLE_SEED", SEED).max(1));
    (0..n)
        .map(|i| {
            let method = rng.pick(&["GET", "POST", "POST", "PUT", "PATCH", "DELETE", "HEAD"]);
            let path = gen_path(&mut rng);
            let mut case = Case::new(format!("generated #{i}"), method, &path);
            case.query = gen_query(&mut rng);
            let case = gen_headers(&mut rng, case);
            gen_body(&mut rng, case)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// scopegate's reading
// ---------------------------------------------------------------------------------------------

/// What scopegate makes of one request, on one of its two body paths.
enum Reading {
    /// Refused before anything is forwarded (400/413), and why.
    Refused(String),
    Read {
        candidates: HashSet<String>,
        query: Vec<Param>,
        body: Vec<Param>,
        kind: BodyKind,
    },
}

fn candidates(creds: &[Credential]) -> HashSet<String> {
    creds
        .iter()
        .flat_map(|c| c.candidates.iter().map(|s| s.expose().to_owned()))
        .collect()
}

/// The gate's extraction phase (gate.rs `process` and `authorize`), with the body read whole
/// (`read_body`) or, for multipart, streamed through the scanner (`stream_upload`).
fn scopegate_reading(rt: &tokio::runtime::Runtime, case: &Case, streamed: bool) -> Reading {
    let refused = |why: &str| Reading::Refused(why.to_owned());
    if let Err(Reject::BadRequest(why)) = canonicalize(&case.path, "", false) {
        return refused(why);
    }
    if let Some(q) = &case.query {
        if q.bytes().any(|b| !(0x21..=0x7e).contains(&b)) {
            return refused("request-target");
        }
    }
    let headers = case.header_map();
    let mut creds = from_headers(&headers);
    let query = case.query.as_deref().map(parse_query).unwrap_or_default();
    creds.extend(credentials_from_params(&query, Origin::Query));
    let mut kind = match body_kind(&case.method(), &headers) {
        Ok(k) => k,
        Err(_) => return refused("content-type"),
    };
    // The gate peeks at an untyped API write: JSON to Grape is read like an untyped POST.
    if kind == BodyKind::Opaque {
        if let Ok(path) = canonicalize(&case.path, "", false) {
            if untyped_api_write(&case.method(), &headers, &path.lower)
                && json_sniff(&case.body) == Some(true)
            {
                kind = BodyKind::Untyped;
            }
        }
    }
    let body = if kind == BodyKind::Opaque || case.body.is_empty() {
        Vec::new()
    } else if let (true, BodyKind::Multipart { boundary }) = (streamed, &kind) {
        let mut scanner = MultipartScanner::new(boundary, INSPECT_BODY);
        let mut fed = Ok(());
        // An uneven chunking, so delimiters straddle chunk edges.
        for chunk in case.body.chunks(7) {
            fed = scanner.feed(chunk);
            if fed.is_err() {
                break;
            }
        }
        match fed.and_then(|()| scanner.finish()) {
            Ok(params) => params,
            Err(_) => return refused("multipart scan"),
        }
    } else {
        match rt.block_on(parse_body(&kind, bytes::Bytes::from(case.body.clone()))) {
            Ok(params) => params,
            Err(_) => return refused("body"),
        }
    };
    creds.extend(credentials_from_params(&body, Origin::Body));
    let candidates = candidates(&creds);
    if candidates.len() > scopegate::gate::MAX_CANDIDATES {
        return refused("too many credentials");
    }
    // `one_value`: every `service` must agree; `operation` in a JSON body too.
    let q = single_value(&query, "service");
    let b = single_value(&body, "service");
    match (q, b) {
        (Ok(Some(a)), Ok(Some(b))) if a != b => return refused("service"),
        (Err(()), _) | (_, Err(())) => return refused("service"),
        _ => {}
    }
    if kind == BodyKind::Json && single_value(&body, "operation").is_err() {
        return refused("operation");
    }
    Reading::Read {
        candidates,
        query,
        body,
        kind,
    }
}

/// What scopegate classifies the request as, with a job token present.
fn scopegate_target(
    case: &Case,
    method: &Method,
    query: &[Param],
    body: &[Param],
    kind: &BodyKind,
) -> Result<(scopegate::target::Target, Option<Ref>), Reject> {
    let service = single_value(query, "service")
        .ok()
        .flatten()
        .or_else(|| single_value(body, "service").ok().flatten());
    let lfs_operation = match kind {
        BodyKind::Json => single_value(body, "operation").ok().flatten(),
        _ => None,
    };
    let params = ClassParams {
        service,
        lfs_operation,
        scopes: query
            .iter()
            .filter(|p| p.name == "scope")
            .map(|p| p.value.as_str())
            .collect(),
        registry_params: query
            .iter()
            .map(|p| (p.name.as_str(), p.value.as_str()))
            .collect(),
    };
    let path = canonicalize(&case.path, "", true)?;
    let target = classify(method, &path, case.query.as_deref(), &params, &[], true)?;
    Ok((target, repository_shadow(&path)))
}

// ---------------------------------------------------------------------------------------------
// The oracle
// ---------------------------------------------------------------------------------------------

fn oracle_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/oracle/rack_oracle.rb")
}

/// `Ok(rack version)`, or why the oracle cannot run here.
fn ruby_with_rack() -> Result<String, String> {
    let out = Command::new("ruby")
        .args(["-e", "require 'rack'; print Rack.release"])
        .output()
        .map_err(|e| format!("`ruby` cannot be run ({e})"))?;
    if !out.status.success() {
        return Err(format!(
            "`ruby -e 'require \"rack\"'` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Runs every request through the Ruby oracle; one answer per request, in order.
fn ask_oracle(cases: &[Case]) -> (Value, Vec<Value>) {
    let mut child = Command::new("ruby")
        .arg(oracle_script())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the Ruby oracle");
    let mut stdin = child.stdin.take().expect("oracle stdin");
    let lines: Vec<String> = cases
        .iter()
        .enumerate()
        .map(|(i, c)| c.to_json(i))
        .collect();
    let writer = std::thread::spawn(move || {
        for line in lines {
            writeln!(stdin, "{line}").expect("write to the oracle");
        }
    });
    let mut reader = BufReader::new(child.stdout.take().expect("oracle stdout"));
    let mut read_line = || {
        let mut line = String::new();
        reader.read_line(&mut line).expect("read from the oracle");
        assert!(!line.is_empty(), "the oracle ended early");
        serde_json::from_str::<Value>(&line).expect("oracle output is JSON")
    };
    let banner = read_line();
    let answers: Vec<Value> = (0..cases.len()).map(|_| read_line()).collect();
    writer.join().expect("writer thread");
    let status = child.wait().expect("oracle exit");
    assert!(status.success(), "the oracle failed: {status}");
    (banner, answers)
}

fn b64(v: &Value) -> Vec<u8> {
    STANDARD
        .decode(v.as_str().expect("base64 string"))
        .expect("valid base64")
}

fn shorten(s: &str) -> String {
    if s.len() <= 90 {
        format!("{s:?}")
    } else {
        format!(
            "{:?}…{:?} ({} bytes)",
            &s[..50],
            &s[s.len() - 30..],
            s.len()
        )
    }
}

/// A value the gateway could have to look up: non-empty visible ASCII.
fn token_like(v: &[u8]) -> Option<&str> {
    (!v.is_empty() && v.iter().all(|b| (0x21..=0x7e).contains(b)))
        .then(|| std::str::from_utf8(v).expect("ASCII"))
}

/// The oracle's project reference, as scopegate would spell it.
fn oracle_ref(v: &Value) -> Option<Ref> {
    if let Some(id) = v.get("id").and_then(Value::as_u64) {
        return Some(Ref::Id(id));
    }
    let path = b64(v.get("path_b64")?);
    Some(Ref::Path(
        String::from_utf8_lossy(&path).to_ascii_lowercase(),
    ))
}

fn is_read(a: Action) -> bool {
    matches!(a, Action::Read(_))
}

struct Failure {
    /// What kind of disagreement, without the request's values: failures are counted by it.
    kind: String,
    detail: String,
}

#[derive(Default)]
struct Tally {
    requests: usize,
    refused: BTreeMap<String, usize>,
    values: usize,
    compared: usize,
    not_token_like: usize,
    streamed_compared: usize,
    routes: usize,
    routes_denied: usize,
    routes_matched: usize,
    no_project: usize,
    overrides: usize,
}

/// `ORACLE_VERBOSE=1`: every refusal and every oracle answer on stderr.
fn verbose() -> bool {
    std::env::var_os("ORACLE_VERBOSE").is_some()
}

fn check(
    case: &Case,
    answer: &Value,
    rt: &tokio::runtime::Runtime,
    tally: &mut Tally,
    failures: &mut Vec<Failure>,
) {
    tally.requests += 1;
    if verbose() {
        let _ = writeln!(
            std::io::stderr(),
            "{}\n    oracle: {answer}",
            case.describe()
        );
    }
    if let Some(fatal) = answer.get("fatal") {
        failures.push(Failure {
            kind: "the oracle failed".into(),
            detail: format!("{}\n    oracle error: {fatal}", case.describe()),
        });
        return;
    }
    let fail = |failures: &mut Vec<Failure>, kind: String, why: String| {
        failures.push(Failure {
            kind,
            detail: format!("{}\n    {why}", case.describe()),
        })
    };
    let effective = answer["method"].as_str().unwrap_or(&case.method).to_owned();
    if effective != case.method {
        tally.overrides += 1;
    }
    let multipart = matches!(
        body_kind(&case.method(), &case.header_map()),
        Ok(BodyKind::Multipart { .. })
    );
    let paths: &[bool] = if multipart { &[false, true] } else { &[false] };
    let mut first_read = None;
    for &streamed in paths {
        let reading = scopegate_reading(rt, case, streamed);
        let (candidates, query, body, kind) = match reading {
            Reading::Refused(why) => {
                if verbose() {
                    let _ = writeln!(std::io::stderr(), "refused ({why}): {}", case.describe());
                }
                *tally.refused.entry(why).or_default() += 1;
                continue;
            }
            Reading::Read {
                candidates,
                query,
                body,
                kind,
            } => (candidates, query, body, kind),
        };
        for token in answer["tokens"].as_array().expect("tokens") {
            let src = token["src"].as_str().unwrap_or("?");
            let value = b64(&token["b64"]);
            if !streamed {
                tally.values += 1;
            }
            let Some(value) = token_like(&value) else {
                if !streamed {
                    tally.not_token_like += 1;
                }
                continue;
            };
            if streamed {
                tally.streamed_compared += 1;
            } else {
                tally.compared += 1;
            }
            if !candidates.contains(value) {
                let path = if streamed { "streamed" } else { "read whole" };
                fail(
                    failures,
                    format!("missed: {src} (body {path})"),
                    format!(
                        "the forge reads {} ({src}); scopegate ({path}) has no such candidate",
                        shorten(value)
                    ),
                );
            }
        }
        if first_read.is_none() {
            first_read = Some((query, body, kind));
        }
    }
    let Some((query, body, kind)) = first_read else {
        return;
    };

    // The project the forge routes on.
    let route = &answer["route"];
    if route.is_null() {
        return;
    }
    tally.routes += 1;
    let target = scopegate_target(case, &case.method(), &query, &body, &kind);
    let forge_refs: Vec<Option<Ref>> = match route["kind"].as_str() {
        Some("api") => vec![oracle_ref(&route["ref"])],
        _ => route["refs"]
            .as_array()
            .expect("refs")
            .iter()
            .map(oracle_ref)
            .collect(),
    };
    if forge_refs.iter().all(Option::is_none) {
        tally.no_project += 1;
        return;
    }
    let (target, shadow) = match target {
        Err(Reject::NotFound(_)) | Err(Reject::BadRequest(_)) => {
            tally.routes_denied += 1;
            return;
        }
        Ok(t) => t,
    };
    let expected_class = if route["kind"] == "api" {
        Class::Api
    } else {
        Class::Git
    };
    if target.class == Class::Unknown {
        tally.routes_denied += 1;
        return;
    }
    if target.class != expected_class {
        fail(
            failures,
            format!(
                "class: forge {} route, scopegate {:?}",
                route["kind"], target.class
            ),
            format!(
                "the forge routes to a project ({}), scopegate classifies {:?}",
                route["kind"], target.class
            ),
        );
        return;
    }
    let ours: Vec<Ref> = target.project.iter().cloned().chain(shadow).collect();
    for r in forge_refs.into_iter().flatten() {
        if !ours.contains(&r) {
            fail(
                failures,
                format!("target: forge {} route on another project", route["kind"]),
                format!("the forge routes on {r:?}; scopegate's target is {ours:?}"),
            );
            return;
        }
    }
    tally.routes_matched += 1;

    // An LFS batch is a download only when the `operation` the forge reads says so.
    if is_read(target.action)
        && route.get("rest").and_then(Value::as_str) == Some("info/lfs/objects/batch")
        && route["lfs_operation"] != "download"
    {
        fail(
            failures,
            "LFS batch: scopegate reads a download, the forge another operation".into(),
            format!(
                "scopegate scopes a download; the forge's operation is {}",
                route["lfs_operation"]
            ),
        );
    }

    // What scopegate scopes as a read must not write at the forge, whatever method
    // Rack::MethodOverride makes of a POST and whatever operation an LFS batch names.
    if is_read(target.action) && route["write"] == true {
        fail(
            failures,
            "scopegate scopes a read, the forge's route writes".into(),
            format!(
                "scopegate scopes a read ({:?}); the forge runs {effective} {}, a write",
                target.action, route["kind"]
            ),
        );
    }
}

#[test]
fn every_token_and_project_the_forge_reads_scopegate_reads_too() {
    let rack = match ruby_with_rack() {
        Ok(v) => v,
        Err(why) if std::env::var_os("CI").is_some() => {
            panic!("the Rack oracle cannot run in CI: {why} (.ci/run installs ruby and ruby-rack)")
        }
        Err(why) => {
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED oracle: {why}; install `ruby` and `ruby-rack` (Rack 2.2) to run it"
            );
            return;
        }
    };
    let mut cases = corpus();
    let hand_written = cases.len();
    let generated_count = env_number("ORACLE_GENERATED", GENERATED as u64) as usize;
    cases.extend(generated(generated_count));
    let (banner, answers) = ask_oracle(&cases);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");

    let mut tally = Tally::default();
    let mut failures = Vec::new();
    for (case, answer) in cases.iter().zip(&answers) {
        assert_eq!(
            answer.get("id").and_then(Value::as_u64),
            Some(tally.requests as u64),
            "answers out of order"
        );
        check(case, answer, &rt, &mut tally, &mut failures);
    }

    let refused: usize = tally.refused.values().sum();
    let summary = format!(
        "oracle: Rack {rack} (ruby {}): {} requests ({hand_written} hand-written, {generated_count} generated)\n\
         \x20 token values the forge reads: {} ({} token-like compared with scopegate's candidates, \
         {} more on the streaming multipart path; {} not token-like)\n\
         \x20 refused by scopegate (400): {refused} {:?}\n\
         \x20 project routes: {} ({} matched scopegate's target, {} denied by scopegate, \
         {} name no project at the forge); method overrides: {}",
        banner["ruby"].as_str().unwrap_or("?"),
        tally.requests,
        tally.values,
        tally.compared,
        tally.streamed_compared,
        tally.not_token_like,
        tally.refused,
        tally.routes,
        tally.routes_matched,
        tally.routes_denied,
        tally.no_project,
        tally.overrides,
    );
    let _ = writeln!(std::io::stderr(), "{summary}");
    if !failures.is_empty() {
        // One line per kind of disagreement (the value and the request left out), then the
        // first few in full.
        let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
        for f in &failures {
            *kinds.entry(f.kind.as_str()).or_default() += 1;
        }
        let shown: Vec<&str> = failures
            .iter()
            .take(40)
            .map(|f| f.detail.as_str())
            .collect();
        panic!(
            "{} disagreement(s) with the forge's parser:\n{}\n\nfirst {}:\n\n{}",
            failures.len(),
            kinds
                .iter()
                .map(|(k, n)| format!("  {n:4} × {k}"))
                .collect::<Vec<_>>()
                .join("\n"),
            shown.len(),
            shown.join("\n\n")
        );
    }
    assert!(tally.compared > 500, "too few values compared: {summary}");
    assert!(
        tally.routes_matched > 50,
        "too few routes compared: {summary}"
    );
}
