//! Scraping the secure metrics endpoints of fim-operator and fim-agent (issue 10, item 9): HTTPS
//! with a bearer token whose service account is bound to the shipped `fim-metrics-reader`
//! ClusterRole. The client is a small HTTP/1.1-over-rustls one of our own so that tests can
//! choose the ALPN offer, see the negotiated protocol and the served certificate, and verify (or
//! not) against a CA.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{E2eError, Result, repo_root, service_account_token};

/// The ClusterRole a scraper needs (config/rbac/metrics_reader_role.yaml).
pub const READER_ROLE: &str = "fim-metrics-reader";
/// The ClusterRole the operator and agents need to review tokens (config/rbac/metrics_auth_role.yaml).
pub const AUTH_ROLE: &str = "fim-metrics-auth";
/// Where the shared scraper identity lives (kept across tests; cluster-down removes it).
pub const SCRAPER_NAMESPACE: &str = "kube-fim-e2e-metrics";
pub const SCRAPER_ACCOUNT: &str = "scraper";

/// Applies the metrics ClusterRoles exactly as config/rbac ships them (the bindings there name
/// kube-fim's accounts; tests bind their own).
pub async fn apply_metrics_roles(client: &Client) -> Result<()> {
    let roles: Api<ClusterRole> = Api::all(client.clone());
    for file in ["metrics_reader_role.yaml", "metrics_auth_role.yaml"] {
        let path = repo_root().join("config/rbac").join(file);
        let text = std::fs::read_to_string(&path)?;
        for doc in text.split("\n---\n") {
            let value: serde_json::Value = serde_saphyr::from_str(doc)
                .map_err(|e| E2eError::Other(format!("{}: {e}", path.display())))?;
            if value["kind"] != "ClusterRole" {
                continue;
            }
            let name = value["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            roles
                .patch(
                    &name,
                    &PatchParams::apply("kube-fim-e2e").force(),
                    &Patch::Apply(&value),
                )
                .await?;
        }
    }
    Ok(())
}

/// Binds ClusterRole `role` to service account `ns/sa` with a ClusterRoleBinding owned by the
/// namespace (the garbage collector deletes it with the namespace).
pub async fn bind_cluster_role(client: &Client, ns: &str, sa: &str, role: &str) -> Result<()> {
    let namespace = Api::<Namespace>::all(client.clone()).get(ns).await?;
    let binding = ClusterRoleBinding {
        metadata: ObjectMeta {
            name: Some(format!("{role}-{ns}-{sa}")),
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Namespace".into(),
                name: ns.into(),
                uid: namespace.metadata.uid.unwrap_or_default(),
                ..Default::default()
            }]),
            ..Default::default()
        },
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            name: role.into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: sa.into(),
            namespace: Some(ns.into()),
            ..Default::default()
        }]),
    };
    let api: Api<ClusterRoleBinding> = Api::all(client.clone());
    match api.create(&PostParams::default(), &binding).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Creates service account `ns/sa` unless it exists.
pub async fn ensure_service_account(client: &Client, ns: &str, sa: &str) -> Result<()> {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let account = ServiceAccount {
        metadata: ObjectMeta {
            name: Some(sa.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    match api.create(&PostParams::default(), &account).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// A token of a new service account `ns/sa`, bound to ClusterRole `role` when given.
pub async fn account_token(
    client: &Client,
    ns: &str,
    sa: &str,
    role: Option<&str>,
) -> Result<String> {
    ensure_service_account(client, ns, sa).await?;
    if let Some(role) = role {
        apply_metrics_roles(client).await?;
        bind_cluster_role(client, ns, sa, role).await?;
    }
    service_account_token(client, ns, sa, None).await
}

static SCRAPER: Mutex<Option<(String, Instant)>> = Mutex::new(None);

/// The token every suite scrapes with: service account `kube-fim-e2e-metrics/scraper`, bound to
/// the shipped `fim-metrics-reader` role. Renewed every 5 minutes (tokens last 10).
pub async fn scraper_token() -> Result<String> {
    if let Some((token, at)) = SCRAPER.lock().unwrap().as_ref()
        && at.elapsed() < Duration::from_secs(300)
    {
        return Ok(token.clone());
    }
    let client = crate::client().await?;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(SCRAPER_NAMESPACE.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    match namespaces.create(&PostParams::default(), &ns).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(e.into()),
    }
    ensure_service_account(&client, SCRAPER_NAMESPACE, SCRAPER_ACCOUNT).await?;
    apply_metrics_roles(&client).await?;
    let binding = ClusterRoleBinding {
        metadata: ObjectMeta {
            name: Some("kube-fim-e2e-scraper".into()),
            ..Default::default()
        },
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            name: READER_ROLE.into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: SCRAPER_ACCOUNT.into(),
            namespace: Some(SCRAPER_NAMESPACE.into()),
            ..Default::default()
        }]),
    };
    match Api::<ClusterRoleBinding>::all(client.clone())
        .create(&PostParams::default(), &binding)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(e.into()),
    }
    let token = service_account_token(&client, SCRAPER_NAMESPACE, SCRAPER_ACCOUNT, None).await?;
    *SCRAPER.lock().unwrap() = Some((token.clone(), Instant::now()));
    Ok(token)
}

/// How the client checks the server's certificate.
#[derive(Clone, Debug)]
pub enum Verify {
    /// Not at all (the endpoints' default certificate is self-signed; the token is the secret,
    /// as with Prometheus' `insecure_skip_verify`).
    Nothing,
    /// Against this CA (PEM), for `server_name`.
    Ca { pem: String, server_name: String },
}

/// What a request over TLS saw.
#[derive(Clone, Debug)]
pub struct Exchange {
    /// The protocol ALPN settled on, if any.
    pub alpn: Option<Vec<u8>>,
    /// The leaf certificate the server presented (DER).
    pub certificate: Vec<u8>,
    /// Everything the server sent back before closing.
    pub reply: Vec<u8>,
}

/// A parsed HTTP/1.x response.
#[derive(Clone, Debug)]
pub struct Response {
    /// `HTTP/1.1`, from the status line.
    pub version: String,
    pub status: u16,
    pub body: String,
}

impl Response {
    pub fn parse(reply: &[u8]) -> Result<Response> {
        let text = String::from_utf8_lossy(reply);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| E2eError::Other(format!("not an HTTP response: {text:?}")))?;
        let mut status_line = head.lines().next().unwrap_or_default().split(' ');
        let version = status_line.next().unwrap_or_default().to_owned();
        let status = status_line
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| E2eError::Other(format!("no status in {head:?}")))?;
        Ok(Response {
            version,
            status,
            body: body.to_owned(),
        })
    }
}

/// Accepts any certificate (signatures are still checked).
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
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn client_config(alpn: &[&[u8]], verify: &Verify) -> Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| E2eError::Other(e.to_string()))?;
    let mut config = match verify {
        Verify::Nothing => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
            .with_no_client_auth(),
        Verify::Ca { pem, .. } => {
            use rustls::pki_types::pem::PemObject;
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                roots
                    .add(cert.map_err(|e| E2eError::Other(e.to_string()))?)
                    .map_err(|e| E2eError::Other(e.to_string()))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// Connects to `127.0.0.1:port` over TLS offering `alpn`, sends `request` and reads until the
/// server closes (10 s at most).
pub async fn tls_exchange(
    port: u16,
    alpn: &[&[u8]],
    verify: &Verify,
    request: &[u8],
) -> Result<Exchange> {
    let config = client_config(alpn, verify)?;
    let name = match verify {
        Verify::Nothing => "localhost".to_owned(),
        Verify::Ca { server_name, .. } => server_name.clone(),
    };
    let server_name =
        ServerName::try_from(name.clone()).map_err(|e| E2eError::Other(format!("{name}: {e}")))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let mut tls = connector.connect(server_name, tcp).await?;
        let (_, session) = tls.get_ref();
        let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
        let certificate = session
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.as_ref().to_vec())
            .unwrap_or_default();
        tls.write_all(request).await?;
        tls.flush().await?;
        let mut reply = Vec::new();
        // A server that resets instead of closing cleanly still gave what it gave.
        let _ = tls.read_to_end(&mut reply).await;
        Ok::<_, std::io::Error>(Exchange {
            alpn,
            certificate,
            reply,
        })
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| E2eError::Other(format!("TLS exchange with 127.0.0.1:{port} timed out")))?
        .map_err(|e| E2eError::Other(format!("TLS exchange with 127.0.0.1:{port}: {e}")))
}

/// An HTTP/1.1 GET request (connection closed after it), with the token when given.
pub fn get_request(path: &str, token: Option<&str>) -> Vec<u8> {
    let mut request =
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: kube-fim-e2e\r\n");
    if let Some(token) = token {
        request.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    request.push_str("Connection: close\r\n\r\n");
    request.into_bytes()
}

/// GET `path` on `127.0.0.1:port` over HTTPS (no certificate check), with `token` if given.
pub async fn https_get(port: u16, path: &str, token: Option<&str>) -> Result<Response> {
    let exchange = tls_exchange(
        port,
        &[b"http/1.1"],
        &Verify::Nothing,
        &get_request(path, token),
    )
    .await?;
    Response::parse(&exchange.reply)
}

/// GET `path` with the shared scraper's token: (status, body).
pub async fn scrape(port: u16, path: &str) -> Result<(u16, String)> {
    let token = scraper_token().await?;
    let r = https_get(port, path, Some(&token)).await?;
    Ok((r.status, r.body))
}

/// Sends `request` over plain TCP and returns whatever comes back (10 s at most).
pub async fn plain_exchange(port: u16, request: &[u8]) -> Result<Vec<u8>> {
    let exchange = async {
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        tcp.write_all(request).await?;
        let mut reply = Vec::new();
        let _ = tcp.read_to_end(&mut reply).await;
        Ok::<_, std::io::Error>(reply)
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| E2eError::Other("plain exchange timed out".into()))?
        .map_err(|e| E2eError::Other(e.to_string()))
}
