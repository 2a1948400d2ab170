mod support;
use support::*;

#[tokio::test]
async fn probe() {
    let h = Harness::with(Options::new(&format!("{PROJECTS}limits:\n  max_request_head: 8KiB\n"))).await;
    let a = h.gw.addr;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", b"garbage\r\n\r\n".to_vec()),
        ("hash", b"GET /api/v4/projects/1#frag HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("hashq", b"GET /api/v4/projects/1?a=1#frag HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("nonascii", b"GET /api/v4/projects/\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("nonasciiq", b"GET /api/v4/projects/1?a=\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("longurl", format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(10000)).into_bytes()),
        ("bigheader", format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(10000)).into_bytes()),
        ("longurl_small", format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(7000)).into_bytes()),
        ("h2c", b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n".to_vec()),
    ];
    for (name, bytes) in cases {
        h.forge.clear();
        let out = raw(a, &bytes).await;
        println!("=== {name}: {:?}\n forge: {:?}", out, h.forge.requests().iter().map(|r| r.uri.clone()).collect::<Vec<_>>());
    }
}
