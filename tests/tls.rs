//! TLS on both sides, with certificates made at test time (rcgen): scopegate terminates TLS
//! for clients (HTTP/2 negotiated by ALPN, HTTP/1.1 too) and speaks TLS to an `https://` forge
//! verified against `upstream.ca`. Decisions are the same over every transport.

mod support;

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use std::path::Path;
use std::sync::Arc;
use support::*;

struct Pki {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

/// A CA and a leaf for 127.0.0.1 / localhost signed by it.
fn pki() -> Pki {
    let ca_key = KeyPair::generate().expect("ca key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("ca cert");
    let leaf_key = KeyPair::generate().expect("leaf key");
    let leaf_params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .expect("leaf params");
    let leaf = leaf_params
        .signed_by(&leaf_key, &ca, &ca_key)
        .expect("leaf cert");
    Pki {
        ca_pem: ca.pem(),
        cert_pem: leaf.pem(),
        key_pem: leaf_key.serialize_pem(),
    }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write pem");
    p.display().to_string()
}

fn client(ca_pem: &str, http2_only: bool) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .no_proxy()
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).expect("ca"));
    if http2_only {
        b = b.http2_prior_knowledge();
    } else {
        b = b.http1_only();
    }
    b.build().expect("client")
}

#[tokio::test]
async fn tls_listener_negotiates_h2_and_h1_and_decides_the_same() {
    let pki = pki();
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = write(dir.path(), "gw.pem", &pki.cert_pem);
    let key = write(dir.path(), "gw-key.pem", &pki.key_pem);
    let mut opts = Options::new(PROJECTS);
    opts.yaml = format!("tls: {{ cert: '{cert}', key: '{key}' }}\n{}", PROJECTS);
    let h = Harness::with(opts).await;
    let base = format!("https://127.0.0.1:{}", h.gw.addr.port());

    for (h2, version) in [
        (true, reqwest::Version::HTTP_2),
        (false, reqwest::Version::HTTP_11),
    ] {
        h.forge.clear();
        let c = client(&pki.ca_pem, h2);
        let allowed = c
            .get(format!("{base}/api/v4/projects/2/repository/tree"))
            .header("JOB-TOKEN", TOK_APP)
            .send()
            .await
            .expect("allowed request");
        assert_eq!(allowed.version(), version);
        let rec = h.assert_forwarded(allowed).await;
        assert_eq!(
            rec.headers.get("x-forwarded-proto").map(|v| v.as_bytes()),
            Some(&b"https"[..])
        );
        // HTTP/2 carries the host in :authority; the forge gets it as Host.
        assert_eq!(
            rec.headers.get("host").map(|v| v.as_bytes()),
            Some(format!("127.0.0.1:{}", h.gw.addr.port()).as_bytes())
        );
        h.forge.clear();
        let denied = c
            .get(format!("{base}/api/v4/projects/2/repository/tree"))
            .header("JOB-TOKEN", TOK_OTHER)
            .send()
            .await
            .expect("denied request");
        assert_eq!(denied.version(), version);
        h.assert_denied(denied, 404).await;
    }
    h.stop().await;
}

/// A TLS terminator in front of the fake forge, so the gateway's upstream is `https://`.
async fn tls_front(pki: &Pki, backend: std::net::SocketAddr) -> std::net::SocketAddr {
    let certs = rustls_pemfile::certs(&mut pki.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("certs");
    let key = rustls_pemfile::private_key(&mut pki.key_pem.as_bytes())
        .expect("key pem")
        .expect("a key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server config");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut up) = tokio::net::TcpStream::connect(backend).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn https_forge_is_verified_against_the_configured_ca() {
    let pki = pki();
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = write(dir.path(), "forge-ca.pem", &pki.ca_pem);
    let forge = scopegate::demo::forge::FakeForge::start(world())
        .await
        .expect("forge");
    let front = tls_front(&pki, forge.addr()).await;
    let yaml = format!(
        "listen: 127.0.0.1:0\nupstream:\n  url: https://127.0.0.1:{}\n  ca: '{ca}'\n{PROJECTS}",
        front.port()
    );
    let config = scopegate::Config::from_yaml_str(&yaml, Path::new("tls.yaml")).expect("config");
    let gw = scopegate::start(config).await.expect("gateway");
    let c = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let url = format!("http://{}/api/v4/projects/2/repository/tree", gw.addr);

    let ok = c
        .get(&url)
        .header("JOB-TOKEN", TOK_APP)
        .send()
        .await
        .expect("send");
    assert_eq!(ok.status().as_u16(), 200);
    assert_eq!(forge.lookups().len(), 1, "the job look-up went over TLS");
    assert_eq!(
        forge.requests().len(),
        1,
        "the allowed request went over TLS"
    );

    let denied = c
        .get(&url)
        .header("JOB-TOKEN", TOK_OTHER)
        .send()
        .await
        .expect("send");
    assert_eq!(denied.status().as_u16(), 404);
    assert_eq!(forge.requests().len(), 1, "nothing more reached the forge");
    gw.shutdown().await;

    // Without the CA the forge's certificate is not trusted: look-ups fail → 503, and a
    // token-less request cannot be forwarded → 502.
    let yaml = format!(
        "listen: 127.0.0.1:0\nupstream:\n  url: https://127.0.0.1:{}\n{PROJECTS}",
        front.port()
    );
    let config = scopegate::Config::from_yaml_str(&yaml, Path::new("tls.yaml")).expect("config");
    let gw = scopegate::start(config).await.expect("gateway");
    forge.clear();
    let url = format!("http://{}/api/v4/projects/2/repository/tree", gw.addr);
    let r = c
        .get(&url)
        .header("JOB-TOKEN", TOK_APP)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status().as_u16(), 503);
    let r = c.get(&url).send().await.expect("send");
    assert_eq!(r.status().as_u16(), 502);
    assert!(forge.requests().is_empty() && forge.lookups().is_empty());
    gw.shutdown().await;
    forge.stop().await;
}
