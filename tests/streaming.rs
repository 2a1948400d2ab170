//! Streaming inspection of large multipart uploads through the real binary (SPEC §1
//! "Bodies"): a 200 MiB artifact upload arrives byte-identical while the gateway's peak RSS
//! stays under 32 MiB, and a 50 MiB upload whose last field carries a foreign job token never
//! completes at the forge.

mod process;
mod support;

use process::Proc;
use sha2::{Digest, Sha256};
use support::*;

const BOUNDARY: &str = "----scopegate-stream-7MA4YWxkTrZu0gW";
const MIB: usize = 1024 * 1024;

/// Deterministic file content that never contains the boundary (bytes below 0x2d are not '-').
fn file_chunk(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|j| ((i * 31 + j * 7) % 40) as u8).collect()
}

/// The pieces of a multipart body: `before` fields, one file part of `file_mib` MiB, `after`
/// fields. Produced lazily so neither the test nor its client holds more than a MiB at a time.
fn pieces(
    before: &[(&str, &str)],
    file_mib: usize,
    after: &[(&str, &str)],
) -> impl Iterator<Item = Vec<u8>> {
    let field = |(n, v): &(&str, &str)| {
        format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{n}\"\r\n\r\n{v}\r\n")
    };
    let mut head: String = before.iter().map(field).collect();
    head.push_str(&format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"artifacts.zip\"\r\nContent-Type: application/zip\r\n\r\n"
    ));
    let mut tail = String::from("\r\n");
    tail.extend(after.iter().map(field));
    tail.push_str(&format!("--{BOUNDARY}--\r\n"));
    std::iter::once(head.into_bytes())
        .chain((0..file_mib).map(|i| file_chunk(i, MIB)))
        .chain(std::iter::once(tail.into_bytes()))
}

/// The body's sha256 and length, computed over the same pieces the client will send.
fn digest(before: &[(&str, &str)], file_mib: usize, after: &[(&str, &str)]) -> ([u8; 32], u64) {
    let mut h = Sha256::new();
    let mut len = 0u64;
    for p in pieces(before, file_mib, after) {
        h.update(&p);
        len += p.len() as u64;
    }
    (h.finalize().into(), len)
}

/// The same pieces as a streamed request body.
fn stream_body(before: &[(&str, &str)], file_mib: usize, after: &[(&str, &str)]) -> reqwest::Body {
    let pieces =
        pieces(before, file_mib, after).map(|p| Ok::<_, std::io::Error>(bytes::Bytes::from(p)));
    reqwest::Body::wrap_stream(futures_util::stream::iter(pieces))
}

fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .expect("VmHWM readable")
}

async fn start_binary(
    forge: &scopegate::demo::forge::FakeForge,
) -> (Proc, std::net::SocketAddr, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("proxy.yaml");
    std::fs::write(
        &path,
        format!(
            "listen: 127.0.0.1:0\nupstream:\n  url: {}\n{PROJECTS}",
            forge.url()
        ),
    )
    .expect("config");
    let proc = Proc::run(&path);
    let addr = proc.wait_listening();
    (proc, addr, dir)
}

fn content_type() -> String {
    format!("multipart/form-data; boundary={BOUNDARY}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_mib_artifact_upload_streams_byte_identical_in_bounded_memory() {
    let forge = scopegate::demo::forge::FakeForge::start(world())
        .await
        .expect("forge");
    let (proc, addr, _dir) = start_binary(&forge).await;
    let (sha, len) = digest(&[], 200, &[]);
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let resp = client
        .post(format!("http://{addr}/api/v4/jobs/{JOB_APP}/artifacts"))
        .header("JOB-TOKEN", TOK_APP)
        .header("content-type", content_type())
        .header("content-length", len.to_string())
        .body(stream_body(&[], 200, &[]))
        .send()
        .await
        .expect("upload");
    assert_eq!(
        resp.status().as_u16(),
        200,
        "{}",
        resp.text().await.unwrap_or_default()
    );
    forge
        .wait_until(|reqs, _| reqs.len() == 1 && reqs[0].ended)
        .await;
    let rec = &forge.requests()[0];
    assert!(rec.complete, "the upload completed at the forge");
    assert_eq!(rec.body_len, len);
    assert_eq!(rec.body_sha256, sha, "byte-identical");
    let rss = peak_rss_kib(proc.pid());
    assert!(rss < 32 * 1024, "gateway peak RSS {rss} KiB, over 32 MiB");
    eprintln!("200 MiB upload: gateway peak RSS {rss} KiB");
    forge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_foreign_job_token_aborts_a_50_mib_upload_before_it_completes() {
    let forge = scopegate::demo::forge::FakeForge::start(world())
        .await
        .expect("forge");
    let (_proc, addr, _dir) = start_binary(&forge).await;
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let (_, len) = digest(&[("name", "pkg")], 50, &[("job_token", TOK_OTHER)]);
    let resp = client
        .put(format!(
            "http://{addr}/api/v4/projects/2/packages/generic/pkg/1.0/file.bin"
        ))
        .header("content-type", content_type())
        .header("content-length", len.to_string())
        .body(stream_body(
            &[("name", "pkg")],
            50,
            &[("job_token", TOK_OTHER)],
        ))
        .send()
        .await
        .expect("upload answered");
    assert_eq!(resp.status().as_u16(), 404);
    assert_eq!(
        resp.text().await.unwrap_or_default(),
        r#"{"message":"404 Project Not Found"}"#
    );
    // The forge saw the upload begin (it streamed) but never its end.
    forge
        .wait_until(|reqs, _| reqs.iter().all(|r| r.ended))
        .await;
    for r in forge.requests() {
        assert!(!r.complete, "{} {} completed at the forge", r.method, r.uri);
        assert!(r.body_len < len, "the forge got all {} bytes", r.body_len);
    }

    // The same upload with the project's own token in the last field is allowed and intact.
    forge.clear();
    let (sha, len) = digest(&[("name", "pkg")], 50, &[("job_token", TOK_APP)]);
    let resp = client
        .put(format!(
            "http://{addr}/api/v4/projects/2/packages/generic/pkg/1.0/file.bin"
        ))
        .header("content-type", content_type())
        .header("content-length", len.to_string())
        .body(stream_body(
            &[("name", "pkg")],
            50,
            &[("job_token", TOK_APP)],
        ))
        .send()
        .await
        .expect("upload");
    assert_eq!(resp.status().as_u16(), 200);
    forge
        .wait_until(|reqs, _| reqs.len() == 1 && reqs[0].ended)
        .await;
    let rec = &forge.requests()[0];
    assert!(rec.complete && rec.body_len == len && rec.body_sha256 == sha);
    forge.stop().await;
}

/// npm publish carries the tarball base64-encoded inside its JSON: it is read whole up to
/// `limits.inspect_publish`, not `inspect_body`, and decided on like any JSON body.
#[tokio::test]
async fn npm_publish_json_has_its_own_bound() {
    let mut opts = Options::new(PROJECTS);
    opts.yaml = format!("limits: {{ inspect_body: 1KiB, inspect_publish: 64KiB }}\n{PROJECTS}");
    let h = Harness::with(opts).await;
    let doc = |token: &str, size: usize| {
        serde_json::json!({
            "name": "@g/pkg",
            "versions": {"1.0.0": {"name": "@g/pkg", "version": "1.0.0"}},
            "_attachments": {"@g/pkg-1.0.0.tgz": {"data": "A".repeat(size), "length": size}},
            "token": token,
        })
        .to_string()
    };
    let publish = |body: String, token: &str| {
        h.http
            .put(h.url("/api/v4/projects/2/packages/npm/@g%2fpkg"))
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    // 20 KiB: over inspect_body, within inspect_publish → decided and forwarded byte for byte.
    let body = doc(TOK_APP, 20 * 1024);
    let resp = publish(body.clone(), TOK_APP).await.expect("publish");
    let rec = h.assert_forwarded(resp).await;
    assert_eq!(rec.body_len as usize, body.len());
    // The same with a foreign token in the document: 404, nothing forwarded.
    h.forge.clear();
    let resp = publish(doc(TOK_OTHER, 20 * 1024), TOK_APP)
        .await
        .expect("publish");
    h.assert_denied(resp, 404).await;
    // Over inspect_publish: 413, nothing forwarded.
    let resp = publish(doc(TOK_APP, 80 * 1024), TOK_APP)
        .await
        .expect("publish");
    h.assert_denied(resp, 413).await;
    // Other npm routes keep inspect_body.
    let resp = h
        .http
        .put(h.url("/api/v4/projects/2/packages/npm/-/package/@g%2fpkg/dist-tags/latest"))
        .header("authorization", format!("Bearer {TOK_APP}"))
        .header("content-type", "application/json")
        .body(format!("\"{}\"", "1".repeat(4096)))
        .send()
        .await
        .expect("dist-tag");
    h.assert_denied(resp, 413).await;
    h.stop().await;
}

/// An API PUT/PATCH/DELETE with no Content-Type: Grape's `default_format :json` parses a
/// JSON body into params, so scopegate peeks at it; anything else (a `curl -T` package upload)
/// streams untouched, whatever its size.
#[tokio::test]
async fn untyped_api_writes_are_peeked_json_read_binary_streamed() {
    let mut opts = Options::new(PROJECTS);
    opts.yaml = format!("limits: {{ inspect_body: 1KiB }}\n{PROJECTS}");
    let h = Harness::with(opts).await;
    let put = |path: &str, body: Vec<u8>| {
        let req = h.http.put(h.url(path)).body(body);
        // reqwest adds no Content-Type to a raw body: the request is untyped, as curl -T's is.
        req.send()
    };
    // JSON carrying a foreign job token, after some whitespace: read, decided, denied.
    let json = format!("  \n{{\"job_token\":\"{TOK_OTHER}\",\"description\":\"x\"}}");
    let resp = put("/api/v4/projects/2/variables/X", json.into_bytes())
        .await
        .expect("put");
    h.assert_denied(resp, 404).await;
    // The project's own token in the JSON: forwarded byte for byte.
    let json = format!("{{\"job_token\":\"{TOK_APP}\"}}");
    let resp = put("/api/v4/projects/2/variables/X", json.clone().into_bytes())
        .await
        .expect("put");
    let rec = h.assert_forwarded(resp).await;
    assert_eq!(&rec.body[..], json.as_bytes());
    // A 3 MiB binary upload with no Content-Type (generic packages): streams, not 413.
    h.forge.clear();
    let blob: Vec<u8> = (0..3 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let resp = h
        .http
        .put(h.url("/api/v4/projects/2/packages/generic/pkg/1.0/file.bin"))
        .header("JOB-TOKEN", TOK_APP)
        .body(blob.clone())
        .send()
        .await
        .expect("upload");
    assert_eq!(resp.status().as_u16(), 200);
    h.forge
        .wait_until(|reqs, _| reqs.len() == 1 && reqs[0].ended)
        .await;
    let rec = &h.forge.requests()[0];
    assert!(rec.complete);
    assert_eq!(rec.body_len as usize, blob.len());
    let want: [u8; 32] = Sha256::digest(&blob).into();
    assert_eq!(rec.body_sha256, want);
    h.stop().await;
}
