//! An `https://` forge whose CA is in the system trust store (here: `SSL_CERT_FILE`, as
//! `update-ca-certificates` or a container's CA bundle would provide it) is trusted without an
//! `upstream.ca` key; the same forge without it is not. The real binary, so the environment is
//! the child's alone.

#[path = "support/pki.rs"]
mod pki;
mod process;
mod support;

use process::{Proc, PATIENCE};
use std::process::Command;
use support::*;

/// Starts `scopegate run` in front of `https://front` with `SSL_CERT_FILE` set (or not);
/// returns the process and its proxy address.
fn gateway(dir: &std::path::Path, front: std::net::SocketAddr, ca: Option<&str>) -> Proc {
    let yaml = format!(
        "listen: 127.0.0.1:0\nupstream:\n  url: https://127.0.0.1:{}\n{PROJECTS}",
        front.port()
    );
    let path = dir.join("proxy.yaml");
    std::fs::write(&path, yaml).expect("write config");
    let mut cmd = Command::new(process::BIN);
    cmd.arg("run").arg("--config").arg(&path);
    // An empty directory as the only other source, so the machine's own store cannot make
    // the negative case pass or fail by accident.
    cmd.env("SSL_CERT_DIR", dir.join("no-certs"));
    match ca {
        Some(ca) => cmd.env("SSL_CERT_FILE", ca),
        None => cmd.env("SSL_CERT_FILE", dir.join("missing.pem")),
    };
    Proc::spawn(&mut cmd)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_system_trust_store_verifies_an_https_forge() {
    let pki = pki::pki();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("no-certs")).expect("mkdir");
    let ca = pki::write(dir.path(), "system-ca.pem", &pki.ca_pem);
    let forge = scopegate::demo::forge::FakeForge::start(world())
        .await
        .expect("forge");
    let front = pki::tls_front(&pki, forge.addr()).await;
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");

    let mut trusted = gateway(dir.path(), front, Some(&ca));
    let addr = trusted.wait_listening();
    let url = format!("http://{addr}/api/v4/projects/2/repository/tree");
    let r = client
        .get(&url)
        .header("JOB-TOKEN", TOK_APP)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status().as_u16(), 200, "{}", trusted.stderr.text());
    assert_eq!(forge.lookups().len(), 1, "the job look-up went over TLS");
    assert_eq!(forge.requests().len(), 1, "the request went over TLS");
    trusted.signal("TERM");
    assert_eq!(trusted.wait_exit(PATIENCE).code(), Some(0));

    // The same forge with no system store at all: the bundled public roots do not know this
    // CA, so the look-up fails (503) and nothing is forwarded.
    forge.clear();
    let mut untrusted = gateway(dir.path(), front, None);
    let addr = untrusted.wait_listening();
    let url = format!("http://{addr}/api/v4/projects/2/repository/tree");
    let r = client
        .get(&url)
        .header("JOB-TOKEN", TOK_APP)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status().as_u16(), 503, "{}", untrusted.stderr.text());
    assert!(forge.requests().is_empty(), "nothing reached the forge");
    assert!(
        untrusted
            .stderr
            .text()
            .contains("using the bundled Mozilla roots"),
        "{}",
        untrusted.stderr.text()
    );
    untrusted.signal("TERM");
    assert_eq!(untrusted.wait_exit(PATIENCE).code(), Some(0));
    forge.stop().await;
}
