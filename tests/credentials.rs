//! SPEC §1 end to end: every credential slot is found (allowed request forwarded with the
//! credential intact; denied request answered 404 with nothing reaching the forge), and the
//! rules about several credentials, dedicated slots, unparseable bodies and limits.

#[path = "support/slots.rs"]
mod slots;
mod support;

use scopegate::demo::forge::Recorded;
use slots::*;
use std::sync::Arc;
use support::*;

/// A request that must be forwarded, unchanged.
async fn allowed(h: &Harness, req: &Req) -> Recorded {
    h.forge.clear();
    let resp = req.send(&h.http, &h.base).await;
    let rec = h.assert_forwarded(resp).await;
    req.assert_intact(&rec);
    rec
}

/// A request that must be refused with `status` and `body`, nothing of it at the forge.
async fn refused(h: &Harness, req: &Req, status: u16, body: Option<&str>) {
    h.forge.clear();
    let resp = req.send(&h.http, &h.base).await;
    let got = h.assert_denied(resp, status).await;
    if let Some(expected) = body {
        assert_eq!(got, expected, "response body");
    }
}

async fn not_found(h: &Harness, req: &Req) {
    refused(h, req, 404, Some(NOT_FOUND_JSON)).await;
}

/// The server still serves: a good request after a bad one is forwarded.
async fn still_serving(h: &Harness) {
    allowed(h, &Req::get(SECRET_PATH).header("JOB-TOKEN", TOK_APP)).await;
}

#[derive(Clone, Copy)]
enum Expect {
    Forwarded,
    NotFound,
}

/// Runs each case in its own task so one failure does not hide the others; panics with the
/// list of every failing case.
async fn run_cases(h: &Arc<Harness>, cases: Vec<(String, Req, Expect)>) {
    let mut failures = Vec::new();
    let total = cases.len();
    for (name, req, expect) in cases {
        let h = h.clone();
        // Sequential: the cases share the forge's request log.
        let case = tokio::spawn(async move {
            match expect {
                Expect::Forwarded => {
                    allowed(&h, &req).await;
                }
                Expect::NotFound => not_found(&h, &req).await,
            }
        });
        if let Err(e) = case.await {
            let panic = e.into_panic();
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failures.push(format!("{name}: {msg}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {total} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

async fn stop(h: Arc<Harness>) {
    match Arc::try_unwrap(h) {
        Ok(h) => h.stop().await,
        Err(_) => panic!("harness still shared"),
    }
}

// ---------------------------------------------------------------------------------------------
// Every slot
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn every_slot_allows_the_permitted_job_and_denies_the_other() {
    let h = Arc::new(Harness::start().await);
    let mut cases = Vec::new();
    for slot in slots() {
        cases.push((
            format!("{} TOK_APP → g/secret allowed", slot.name),
            (slot.build)(TOK_APP, SECRET_PATH),
            Expect::Forwarded,
        ));
        cases.push((
            format!("{} TOK_OTHER → g/secret denied", slot.name),
            (slot.build)(TOK_OTHER, SECRET_PATH),
            Expect::NotFound,
        ));
    }
    run_cases(&h, cases).await;
    stop(h).await;
}

/// The prefix-less token is found by its slot alone (no `glcbt-` to spot), resolved by
/// look-up: allowed where g/app may go, denied where it may not.
#[tokio::test]
async fn every_named_slot_finds_a_legacy_token() {
    let h = Arc::new(Harness::start().await);
    let mut cases = Vec::new();
    for slot in slots().into_iter().filter(|s| s.legacy) {
        cases.push((
            format!("{} LEGACY_APP → g/secret allowed", slot.name),
            (slot.build)(LEGACY_APP, SECRET_PATH),
            Expect::Forwarded,
        ));
        cases.push((
            format!("{} LEGACY_APP → g/other denied", slot.name),
            (slot.build)(LEGACY_APP, OTHER_PATH),
            Expect::NotFound,
        ));
    }
    run_cases(&h, cases).await;
    stop(h).await;
}

/// `JOB_TOKEN` sent as raw bytes, as a client that does not normalise header names would.
#[tokio::test]
async fn underscore_header_over_a_raw_connection() {
    let h = Harness::start().await;
    let req = |token: &str| {
        format!(
            "GET {SECRET_PATH} HTTP/1.1\r\nHost: forge.example\r\nJOB_TOKEN: {token}\r\nConnection: close\r\n\r\n"
        )
    };
    h.forge.clear();
    let (status, _) = raw_status_body(&raw(h.gw.addr, req(TOK_APP).as_bytes()).await);
    assert_eq!(status, 200);
    let recs = h.forge.requests();
    assert_eq!(recs.len(), 1, "forwarded once");
    assert_eq!(
        recs[0].headers.get("job_token").map(|v| v.as_bytes()),
        Some(TOK_APP.as_bytes()),
        "the underscore header reaches the forge unchanged"
    );

    for token in [TOK_OTHER, LEGACY_APP] {
        h.forge.clear();
        let path_token = if token == LEGACY_APP {
            req(token).replace(SECRET_PATH, OTHER_PATH)
        } else {
            req(token)
        };
        let (status, body) = raw_status_body(&raw(h.gw.addr, path_token.as_bytes()).await);
        assert_eq!((status, body.as_str()), (404, NOT_FOUND_JSON));
        h.assert_untouched();
    }
    h.stop().await;
}

/// A Git LFS batch on a Git path, with the token in the JSON body.
#[tokio::test]
async fn lfs_batch_body_on_a_git_path() {
    let h = Harness::start().await;
    let body = |t: &str| {
        serde_json::json!({ "operation": "download", "objects": [{ "oid": "a", "size": 1 }], "job_token": t })
            .to_string()
    };
    let req = |t: &str, p: &str| {
        Req::with_body(
            reqwest::Method::POST,
            &format!("/{p}.git/info/lfs/objects/batch"),
            Some("application/vnd.git-lfs+json"),
            body(t),
        )
    };
    allowed(&h, &req(TOK_APP, "g/secret")).await;
    allowed(&h, &req(LEGACY_APP, "g/secret")).await;
    for (t, p) in [(TOK_OTHER, "g/secret"), (LEGACY_APP, "g/other")] {
        refused(&h, &req(t, p), 404, Some(scopegate::error::GIT_NOT_FOUND)).await;
    }
    h.stop().await;
}

/// The decoded Basic password and the `ci:` agent form are found even without `glcbt-`
/// visible anywhere in the raw request.
#[tokio::test]
async fn hidden_encodings_are_decoded() {
    let h = Harness::start().await;
    // Nothing in these requests contains the token as plain text.
    let cases = [
        Req::get(SECRET_PATH).header(
            "Authorization",
            format!("Basic {}", lenient_basic("anyone", TOK_OTHER)),
        ),
        Req::get(SECRET_PATH).header(
            "Authorization",
            format!("Bearer {}", jwt("access_token", TOK_OTHER)),
        ),
        Req::get(format!("{SECRET_PATH}?job_token={}", pct_all(TOK_OTHER))),
        Req::get(format!(
            "{SECRET_PATH}?%6Aob%5Ftoken={}",
            pct_all(TOK_OTHER)
        )),
    ];
    for req in &cases {
        let raw = format!("{req:?}");
        assert!(!raw.contains(TOK_OTHER), "the test hides the token: {raw}");
        not_found(&h, req).await;
    }
    h.stop().await;
}

// ---------------------------------------------------------------------------------------------
// The rules
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn legacy_token_is_found_by_look_up() {
    let h = Harness::start().await;
    h.forge.clear();
    allowed(&h, &Req::get(SECRET_PATH).header("JOB-TOKEN", LEGACY_APP)).await;
    let asked: Vec<_> = h
        .forge
        .lookups()
        .into_iter()
        .filter(|r| r.path() == "/api/v4/job")
        .filter_map(|r| r.headers.get("job-token").map(|v| v.as_bytes().to_vec()))
        .collect();
    assert_eq!(
        asked,
        vec![LEGACY_APP.as_bytes().to_vec()],
        "one look-up, of the legacy token"
    );
    not_found(&h, &Req::get(OTHER_PATH).header("JOB-TOKEN", LEGACY_APP)).await;
    h.stop().await;
}

#[tokio::test]
async fn two_distinct_job_tokens_are_denied() {
    let h = Harness::start().await;
    let cases = [
        Req::get(format!("{SECRET_PATH}?job_token={TOK_OTHER}")).header("JOB-TOKEN", TOK_APP),
        // Both g/app's, still two tokens.
        Req::get(format!("{SECRET_PATH}?private_token={LEGACY_APP}")).header("JOB-TOKEN", TOK_APP),
        Req::get(SECRET_PATH)
            .header(
                "Authorization",
                format!("Basic {}", basic("gitlab-ci-token", TOK_APP)),
            )
            .header("Cookie", format!("x={TOK_OTHER}")),
        Req::with_body(
            reqwest::Method::POST,
            SECRET_PATH,
            Some("application/json"),
            serde_json::json!({ "token": TOK_OTHER }).to_string(),
        )
        .header("JOB-TOKEN", TOK_APP),
        // Two tokens in one header value.
        Req::get(SECRET_PATH).header("X-Note", format!("{TOK_APP} {TOK_OTHER}")),
    ];
    for req in &cases {
        not_found(&h, req).await;
    }
    still_serving(&h).await;
    h.stop().await;
}

#[tokio::test]
async fn job_token_beside_another_credential_is_denied() {
    let h = Harness::start().await;
    let cases = [
        Req::get(SECRET_PATH)
            .header("JOB-TOKEN", TOK_APP)
            .header("PRIVATE-TOKEN", PAT),
        Req::get(format!("{SECRET_PATH}?private_token={PAT}")).header("JOB-TOKEN", TOK_APP),
        Req::get(format!("{SECRET_PATH}?job_token={TOK_APP}"))
            .header("Authorization", format!("Bearer {PAT}")),
        Req::get(SECRET_PATH)
            .header("JOB-TOKEN", TOK_APP)
            .header("DEPLOY-TOKEN", "gldt-DeployTokenValue123"),
    ];
    for req in &cases {
        not_found(&h, req).await;
    }
    h.stop().await;
}

#[tokio::test]
async fn same_token_in_several_slots_is_one_credential() {
    let h = Harness::start().await;
    let cases = [
        Req::get(format!("{SECRET_PATH}?job_token={TOK_APP}")).header("JOB-TOKEN", TOK_APP),
        Req::get(SECRET_PATH).header("JOB-TOKEN", TOK_APP).header(
            "Authorization",
            format!("Basic {}", basic("gitlab-ci-token", TOK_APP)),
        ),
        Req::get(format!("{SECRET_PATH}?private_token={LEGACY_APP}"))
            .header("Authorization", format!("Bearer {LEGACY_APP}")),
        Req::with_body(
            reqwest::Method::POST,
            SECRET_PATH,
            Some("application/x-www-form-urlencoded"),
            format!("job_token={TOK_APP}"),
        )
        .header("JOB-TOKEN", TOK_APP),
    ];
    for req in &cases {
        allowed(&h, req).await;
    }
    h.stop().await;
}

#[tokio::test]
async fn dedicated_slot_without_a_live_job_token_is_401() {
    let h = Harness::start().await;
    let unknown = "glcbt-64_UnknownTokenZZZZZZZZZZZZZ";
    let unknown_legacy = "NoSuchJobToken987654321";
    let cases = [
        // A PAT in the job-token header: a known non-job format, no look-up needed.
        (Req::get(SECRET_PATH).header("JOB-TOKEN", PAT), Some(0)),
        (Req::get(SECRET_PATH).header("JOB_TOKEN", PAT), Some(0)),
        (Req::get(format!("{SECRET_PATH}?job_token={PAT}")), Some(0)),
        (Req::get(format!("{SECRET_PATH}?job_token={unknown}")), None),
        (
            Req::get(format!("{SECRET_PATH}?job_token={unknown_legacy}")),
            None,
        ),
        (Req::get(SECRET_PATH).header("JOB-TOKEN", unknown), None),
        (
            Req::get(SECRET_PATH).header(
                "Authorization",
                format!("Basic {}", basic("gitlab-ci-token", unknown)),
            ),
            None,
        ),
        (
            Req::get(SECRET_PATH).header(
                "Authorization",
                format!("Basic {}", basic("gitlab-ci-token", unknown_legacy)),
            ),
            None,
        ),
        // A finished job's token.
        (Req::get(SECRET_PATH).header("JOB-TOKEN", TOK_DONE), None),
        (
            Req::get(SECRET_PATH).header(
                "Authorization",
                format!("Basic {}", lenient_basic("gitlab-ci-token", TOK_DONE)),
            ),
            None,
        ),
    ];
    for (req, lookups) in &cases {
        refused(&h, req, 401, Some(UNAUTHORIZED_JSON)).await;
        if let Some(n) = lookups {
            assert_eq!(h.forge.job_lookup_count(), *n, "look-ups for {req:?}");
        }
    }
    still_serving(&h).await;
    h.stop().await;
}

#[tokio::test]
async fn pat_alone_is_forwarded_without_a_look_up() {
    let h = Harness::start().await;
    for req in [
        Req::get(SECRET_PATH).header("PRIVATE-TOKEN", PAT),
        Req::get(format!("{SECRET_PATH}?private_token={PAT}")),
    ] {
        allowed(&h, &req).await;
        assert_eq!(
            h.forge.job_lookup_count(),
            0,
            "a glpat- token is never looked up: {req:?}"
        );
    }
    h.stop().await;
}

/// No credential: forwarded with the headers the client sent, byte for byte, except the
/// SPEC §7 changes (hop-by-hop removed, X-Forwarded-* set).
#[tokio::test]
async fn no_credential_is_forwarded_with_headers_intact() {
    let h = Harness::start().await;
    h.forge.clear();
    let request = format!(
        "GET {SECRET_PATH}?ref=main&per_page=100 HTTP/1.1\r\n\
         Host: forge.example:8443\r\n\
         User-Agent: custom-client/1.0 (x; y)\r\n\
         Accept: application/json, */*;q=0.5\r\n\
         X-Custom: first\r\n\
         X-Custom: second\r\n\
         X-Odd: value  with   spaces, \"quotes\" and ;=,:\r\n\
         Cookie: session=abc; theme=dark\r\n\
         X-Forwarded-For: 203.0.113.9\r\n\
         X-Forwarded-Proto: https\r\n\
         X-Forwarded-Host: spoofed.example\r\n\
         Connection: close, X-Hop\r\n\
         X-Hop: hop-only\r\n\
         Keep-Alive: timeout=5\r\n\
         TE: trailers\r\n\
         Proxy-Authorization: Basic Zm9vOmJhcg==\r\n\
         \r\n"
    );
    let (status, _) = raw_status_body(&raw(h.gw.addr, request.as_bytes()).await);
    assert_eq!(status, 200);
    let recs = h.forge.requests();
    assert_eq!(recs.len(), 1);
    let rec = &recs[0];
    assert_eq!(rec.uri, format!("{SECRET_PATH}?ref=main&per_page=100"));
    assert_eq!(h.forge.job_lookup_count(), 0, "nothing to look up");
    let mut got: Vec<(String, Vec<u8>)> = rec
        .headers
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.as_bytes().to_vec()))
        .collect();
    let mut want: Vec<(String, Vec<u8>)> = [
        ("host", "forge.example:8443"),
        ("user-agent", "custom-client/1.0 (x; y)"),
        ("accept", "application/json, */*;q=0.5"),
        ("x-custom", "first"),
        ("x-custom", "second"),
        ("x-odd", "value  with   spaces, \"quotes\" and ;=,:"),
        ("cookie", "session=abc; theme=dark"),
        ("x-forwarded-for", "127.0.0.1"),
        ("x-forwarded-proto", "http"),
        ("x-forwarded-host", "forge.example:8443"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
    .collect();
    // Stable sort by name: values of one name keep their order.
    got.sort_by(|a, b| a.0.cmp(&b.0));
    want.sort_by(|a, b| a.0.cmp(&b.0));
    let show = |v: &[(String, Vec<u8>)]| {
        v.iter()
            .map(|(k, v)| format!("{k}: {}", String::from_utf8_lossy(v)))
            .collect::<Vec<_>>()
    };
    assert_eq!(show(&got), show(&want));
    h.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Bodies that cannot be inspected or parsed, ambiguous classification
// ---------------------------------------------------------------------------------------------

fn limited_harness() -> Options {
    Options::new(&format!("{PROJECTS}\nlimits:\n  inspect_body: 1KiB\n"))
}

#[tokio::test]
async fn body_over_inspect_limit_is_413() {
    let h = Harness::with(limited_harness()).await;
    let form = |len: usize, token: &str| {
        let mut b = format!("job_token={token}&pad=").into_bytes();
        b.resize(len, b'a');
        b
    };
    const FORM: &str = "application/x-www-form-urlencoded";
    // At the limit: read, decided on, forwarded byte for byte.
    allowed(
        &h,
        &Req::with_body(
            reqwest::Method::POST,
            SECRET_PATH,
            Some(FORM),
            form(1024, TOK_APP),
        ),
    )
    .await;
    for token in [TOK_APP, TOK_OTHER] {
        // Declared too large.
        refused(
            &h,
            &Req::with_body(
                reqwest::Method::POST,
                SECRET_PATH,
                Some(FORM),
                form(1025, token),
            ),
            413,
            None,
        )
        .await;
        still_serving(&h).await;
        refused(
            &h,
            &Req::with_body(
                reqwest::Method::POST,
                SECRET_PATH,
                Some(FORM),
                form(64 * 1024, token),
            ),
            413,
            None,
        )
        .await;
        still_serving(&h).await;
        let json = {
            let mut s = serde_json::json!({ "token": token, "pad": "" })
                .to_string()
                .into_bytes();
            let pad: Vec<u8> = vec![b'b'; 2048];
            s.splice(s.len() - 2..s.len() - 2, pad);
            s
        };
        refused(
            &h,
            &Req::with_body(
                reqwest::Method::POST,
                SECRET_PATH,
                Some("application/json"),
                json,
            ),
            413,
            None,
        )
        .await;
        still_serving(&h).await;
        // Chunked, no Content-Length: found too large while reading.
        h.forge.clear();
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> = form(4096, token)
            .chunks(512)
            .map(|c| Ok(c.to_vec()))
            .collect();
        let resp = h
            .http
            .post(h.url(SECRET_PATH))
            .header("Content-Type", FORM)
            .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                chunks,
            )))
            .send()
            .await
            .expect("response");
        h.assert_denied(resp, 413).await;
        still_serving(&h).await;
    }
    // No job token at all: still too large to inspect.
    refused(
        &h,
        &Req::with_body(
            reqwest::Method::POST,
            SECRET_PATH,
            Some(FORM),
            vec![b'a'; 4096],
        ),
        413,
        None,
    )
    .await;
    still_serving(&h).await;
    h.stop().await;
}

#[tokio::test]
async fn unparseable_bodies_are_400() {
    let h = Harness::start().await;
    let post = |ct: &str, body: Vec<u8>| {
        Req::with_body(reqwest::Method::POST, SECRET_PATH, Some(ct), body)
    };
    let mp_body = multipart(&[("job_token", "", TOK_APP)]);
    let cases = [
        (
            "truncated JSON",
            post(
                "application/json",
                format!("{{\"job_token\": \"{TOK_APP}\"").into_bytes(),
            ),
        ),
        (
            "JSON with trailing garbage",
            post(
                "application/json",
                format!("{{\"token\": \"{TOK_APP}\"}} x").into_bytes(),
            ),
        ),
        (
            "JSON not UTF-8",
            post(
                "application/json",
                [
                    br#"{"a": ""#.as_slice(),
                    b"\xff\xfe",
                    br#"", "token": "x"}"#,
                ]
                .concat(),
            ),
        ),
        (
            "LFS JSON truncated",
            post(
                "application/vnd.git-lfs+json",
                br#"{"operation": "#.to_vec(),
            ),
        ),
        (
            "multipart, boundary not in the body",
            post(
                "multipart/form-data; boundary=SomethingElse",
                mp_body.clone(),
            ),
        ),
        (
            "multipart without a boundary",
            post("multipart/form-data", mp_body.clone()),
        ),
        (
            "multipart, boundary given twice",
            post(
                &format!("multipart/form-data; boundary={BOUNDARY}; boundary=Other"),
                mp_body.clone(),
            ),
        ),
        (
            "multipart truncated",
            post(&multipart_type(), mp_body[..mp_body.len() - 10].to_vec()),
        ),
    ];
    for (name, req) in &cases {
        for with_token in [true, false] {
            let req = if with_token {
                req.clone().header("JOB-TOKEN", TOK_APP)
            } else {
                req.clone()
            };
            h.forge.clear();
            let resp = req.send(&h.http, &h.base).await;
            let status = resp.status().as_u16();
            let body = resp.text().await.unwrap_or_default();
            assert_eq!(status, 400, "{name} (job token: {with_token}): {body}");
            h.assert_untouched();
            assert!(!body.contains(TOK_APP), "the error echoes nothing: {body}");
            still_serving(&h).await;
        }
    }
    h.stop().await;
}

#[tokio::test]
async fn service_given_twice_with_different_values_is_400() {
    let h = Harness::start().await;
    for query in [
        "service=git-upload-pack&service=git-receive-pack",
        "service=git-receive-pack;service=git-upload-pack",
        "service=git-upload-pack&x=1&service=git%2Dreceive%2Dpack",
    ] {
        let req = Req::get(format!("/g/secret.git/info/refs?{query}")).header("JOB-TOKEN", TOK_APP);
        refused(&h, &req, 400, None).await;
        still_serving(&h).await;
    }
    // The same value twice is no ambiguity: forwarded (the fake forge's Git route then asks
    // for Basic credentials itself, so its status is not checked).
    let req = Req::get("/g/secret.git/info/refs?service=git-upload-pack&service=git-upload-pack")
        .header("JOB-TOKEN", TOK_APP);
    h.forge.clear();
    let resp = req.send(&h.http, &h.base).await;
    assert_eq!(resp.status().as_u16(), 401, "the forge's own answer");
    let recs = h.forge.requests();
    assert_eq!(recs.len(), 1, "forwarded");
    req.assert_intact(&recs[0]);
    h.stop().await;
}

/// SPEC §1: "A multipart body streams … file parts are not buffered": `limits.inspect_body`
/// bounds urlencoded and JSON bodies, not uploads. A package upload (twine, NuGet push) with
/// the job token in a header or a field must pass whatever the file's size; a denied one
/// must never reach the forge complete.
// SPEC §1 "Bodies": a multipart body larger than `limits.inspect_body` streams; its fields are
// scanned as they pass and the end of the request is held back until they are decided on.
#[tokio::test]
async fn multipart_upload_larger_than_inspect_limit_streams() {
    let h = Harness::with(limited_harness()).await;
    let file = "x".repeat(64 * 1024);
    let body = |fields_before: &[(&str, &str, &str)], fields_after: &[(&str, &str)]| {
        let mut b = String::new();
        for (name, extra, value) in fields_before {
            b.push_str(&format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n{extra}\r\n{value}\r\n"
            ));
        }
        b.push_str(&format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"content\"; filename=\"pkg-1.0.tar.gz\"\r\nContent-Type: application/octet-stream\r\n\r\n{file}\r\n"
        ));
        for (name, value) in fields_after {
            b.push_str(&format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            ));
        }
        b.push_str(&format!("--{BOUNDARY}--\r\n"));
        b.into_bytes()
    };
    let upload = |body: Vec<u8>| {
        Req::with_body(
            reqwest::Method::POST,
            "/api/v4/projects/2/packages/pypi",
            Some(&multipart_type()),
            body,
        )
    };
    // Token in a header (twine's Basic auth), then in a field before and after the file.
    allowed(
        &h,
        &upload(body(&[("name", "", "pkg")], &[])).header(
            "Authorization",
            format!("Basic {}", basic("gitlab-ci-token", TOK_APP)),
        ),
    )
    .await;
    allowed(&h, &upload(body(&[("job_token", "", TOK_APP)], &[]))).await;
    allowed(&h, &upload(body(&[], &[("job_token", TOK_APP)]))).await;

    // Denied: 404, and the forge never holds a complete request.
    for req in [
        upload(body(&[("job_token", "", TOK_OTHER)], &[])),
        upload(body(&[], &[("job_token", TOK_OTHER)])),
        upload(body(&[], &[])).header("JOB-TOKEN", TOK_OTHER),
    ] {
        h.forge.clear();
        let resp = req.send(&h.http, &h.base).await;
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        assert_eq!((status, text.as_str()), (404, NOT_FOUND_JSON));
        h.forge
            .wait_until(|reqs, _| reqs.iter().all(|r| r.ended))
            .await;
        assert!(
            h.forge.requests().iter().all(|r| !r.complete),
            "a denied upload never reaches the forge complete"
        );
    }
    h.stop().await;
}
