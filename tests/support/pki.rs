//! Certificates made at test time (rcgen) and a TLS terminator in front of a plain-HTTP
//! backend, for the tests that need TLS. Included with `#[path = "support/pki.rs"] mod pki;`
//! by the test files that use it.
#![allow(dead_code)]

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SerialNumber};
use std::path::Path;
use std::sync::Arc;

pub struct Pki {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// A CA that signs leaves for 127.0.0.1 / localhost.
pub struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    pub fn new() -> Ca {
        let key = KeyPair::generate().expect("ca key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // Distinct names for the CA and the leaf: OpenSSL (curl) takes a leaf whose issuer
        // is its own subject for a self-signed certificate.
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "scopegate test CA");
        let cert = params.self_signed(&key).expect("ca cert");
        Ca { cert, key }
    }

    /// A leaf with a key of its own and the given serial.
    pub fn leaf(&self, serial: u64) -> Pki {
        let leaf_key = KeyPair::generate().expect("leaf key");
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("leaf params");
        params.serial_number = Some(SerialNumber::from(serial));
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "localhost");
        let leaf = params
            .signed_by(&leaf_key, &self.cert, &self.key)
            .expect("leaf cert");
        Pki {
            ca_pem: self.cert.pem(),
            cert_pem: leaf.pem(),
            key_pem: leaf_key.serialize_pem(),
        }
    }
}

/// A CA and a leaf for 127.0.0.1 / localhost signed by it.
pub fn pki() -> Pki {
    Ca::new().leaf(1)
}

/// Writes `text` to `dir/name`; returns the path as a string for a YAML config.
pub fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write pem");
    p.display().to_string()
}

/// A TLS terminator (HTTP/1.1 by ALPN) in front of `backend`: an `https://` forge.
pub async fn tls_front(pki: &Pki, backend: std::net::SocketAddr) -> std::net::SocketAddr {
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
