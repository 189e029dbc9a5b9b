//! The endpoint as a client sees it, without a cluster: HTTPS only, ALPN `http/1.1` only, 401
//! without a token, open health, and 500 (never 200) when the API server cannot review a token.
//! The reviews go to 127.0.0.1:9, where nothing listens. With a cluster, e2e/tests/metrics.rs
//! covers 403 and 200.

use std::sync::Arc;

use axum::{Router, routing::get};
use fim_secure_metrics::{Endpoint, MetricsArgs};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Serves a `/metrics` (protected) and `/healthz` (open) on a free loopback port.
async fn start() -> u16 {
    let client =
        kube::Client::try_from(kube::Config::new("http://127.0.0.1:9".parse().unwrap())).unwrap();
    let endpoint = Endpoint::new(&MetricsArgs::default(), client, &["localhost".into()]).unwrap();
    let app = endpoint
        .protect(Router::new().route("/metrics", get(|| async { "secret_metric 1\n" })))
        .route("/healthz", get(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(endpoint.serve(listener, app));
    port
}

/// (negotiated ALPN, reply) of `request` sent over TLS offering `alpn`.
async fn exchange(
    port: u16,
    alpn: &[&[u8]],
    request: &[u8],
) -> Result<(Option<Vec<u8>>, String), String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let negotiated = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    tls.write_all(request).await.map_err(|e| e.to_string())?;
    let mut reply = Vec::new();
    let _ = tls.read_to_end(&mut reply).await;
    Ok((negotiated, String::from_utf8_lossy(&reply).into_owned()))
}

fn get_request(path: &str, token: Option<&str>) -> Vec<u8> {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n")
        .into_bytes()
}

#[tokio::test]
async fn metrics_need_a_token_and_health_does_not() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let port = start().await;
    let (_, reply) = exchange(port, &[b"http/1.1"], &get_request("/metrics", None))
        .await
        .unwrap();
    assert!(reply.starts_with("HTTP/1.1 401"), "{reply}");
    assert!(reply.contains("www-authenticate: Bearer"), "{reply}");
    assert!(!reply.contains("secret_metric"), "{reply}");
    let (_, reply) = exchange(port, &[b"http/1.1"], &get_request("/metrics", Some("")))
        .await
        .unwrap();
    assert!(reply.starts_with("HTTP/1.1 401"), "{reply}");
    // A token the API server cannot review (unreachable): refused with 500, never served.
    let (_, reply) = exchange(port, &[b"http/1.1"], &get_request("/metrics", Some("abc")))
        .await
        .unwrap();
    assert!(reply.starts_with("HTTP/1.1 500"), "{reply}");
    assert!(!reply.contains("secret_metric"), "{reply}");
    let (_, reply) = exchange(port, &[b"http/1.1"], &get_request("/healthz", None))
        .await
        .unwrap();
    assert!(
        reply.starts_with("HTTP/1.1 200") && reply.ends_with("ok"),
        "{reply}"
    );
}

#[tokio::test]
async fn only_http1_over_tls_is_spoken() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let port = start().await;
    let (alpn, reply) = exchange(port, &[b"h2", b"http/1.1"], &get_request("/healthz", None))
        .await
        .unwrap();
    assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let refused = exchange(port, &[b"h2"], &get_request("/healthz", None)).await;
    assert!(
        refused.is_err(),
        "an h2-only client was served: {refused:?}"
    );
    let mut preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    preface.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    let (alpn, reply) = exchange(port, &[], &preface).await.unwrap();
    assert_eq!(alpn, None);
    assert!(
        reply.is_empty() || reply.starts_with("HTTP/1.1 "),
        "answered an HTTP/2 preface with {reply:?}"
    );
    // Plain HTTP on the port: no answer.
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    tcp.write_all(&get_request("/healthz", None)).await.unwrap();
    let mut reply = Vec::new();
    let _ = tcp.read_to_end(&mut reply).await;
    assert!(!reply.starts_with(b"HTTP/1.1 200"), "{reply:?}");
}
