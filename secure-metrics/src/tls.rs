//! The serving certificate and the TLS settings of the metrics endpoint.
//!
//! The certificate comes from `tls.crt` and `tls.key` in a directory (a mounted Secret of type
//! `kubernetes.io/tls`, e.g. issued by cert-manager) and is re-read when those files change, so a
//! rotation needs no restart; or, when no directory is given, a self-signed certificate is
//! generated at start (the scraper then skips verification or pins nothing: the token, not the
//! certificate, is what protects the metrics; see docs/decisions.md).
//!
//! ALPN offers `http/1.1` only: the endpoint never speaks HTTP/2 (the HTTP/2 rapid-reset attack,
//! CVE-2023-44487, cannot reach it).

use std::{
    fs,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use rustls::{
    ServerConfig,
    crypto::CryptoProvider,
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, pem::PemObject};
use sha2::{Digest, Sha256};

pub const CERT_FILE: &str = "tls.crt";
pub const KEY_FILE: &str = "tls.key";

/// Why a certificate could not be loaded or made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: no PEM certificate in it ({detail})")]
    NoCertificate { path: PathBuf, detail: String },
    #[error("{path}: no PEM private key in it ({detail})")]
    NoKey { path: PathBuf, detail: String },
    #[error("{dir}: tls.key does not match tls.crt or is not usable: {source}")]
    Mismatch {
        dir: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("cannot generate a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS settings: {0}")]
    Config(#[source] rustls::Error),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The server settings: TLS 1.2 and 1.3, no client certificates, ALPN `http/1.1` only.
pub fn server_config(resolver: Arc<dyn ResolvesServerCert>) -> Result<ServerConfig, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A self-signed certificate for `names` (DNS names or IP addresses), made at start.
pub fn self_signed(names: &[String]) -> Result<Arc<CertifiedKey>, TlsError> {
    let generated = rcgen::generate_simple_self_signed(names.to_vec())?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        generated.signing_key.serialize_der(),
    ));
    let certified = CertifiedKey::from_der(vec![generated.cert.der().clone()], key, &provider())
        .map_err(TlsError::Config)?;
    Ok(Arc::new(certified))
}

/// Always the same certificate (the self-signed one).
#[derive(Debug)]
pub struct Fixed(pub Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// The two files as read together.
#[derive(Debug)]
pub struct Pair {
    cert: Vec<u8>,
    key: Vec<u8>,
}

impl Pair {
    /// Reads `dir/tls.crt` (the chain, leaf first) and `dir/tls.key`.
    pub fn read(dir: &Path) -> Result<Pair, TlsError> {
        let read = |name: &str| {
            let path = dir.join(name);
            fs::read(&path).map_err(|source| TlsError::Read { path, source })
        };
        Ok(Pair {
            cert: read(CERT_FILE)?,
            key: read(KEY_FILE)?,
        })
    }

    /// What identifies these contents (a digest of both files: exact, whatever the file
    /// system's timestamp granularity, and whether a Secret volume swapped a symlink or a file
    /// was rewritten in place).
    pub fn stamp(&self) -> Stamp {
        let mut h = Sha256::new();
        for part in [&self.cert, &self.key] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
        Stamp(h.finalize().into())
    }

    /// The certificate and key, checked to match; `dir` names them in errors.
    pub fn certified(&self, dir: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
        let cert_path = dir.join(CERT_FILE);
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&self.cert)
            .collect::<Result<_, _>>()
            .map_err(|e| TlsError::NoCertificate {
                path: cert_path.clone(),
                detail: e.to_string(),
            })?;
        if chain.is_empty() {
            return Err(TlsError::NoCertificate {
                path: cert_path,
                detail: "empty".into(),
            });
        }
        let key = PrivateKeyDer::from_pem_slice(&self.key).map_err(|e| TlsError::NoKey {
            path: dir.join(KEY_FILE),
            detail: e.to_string(),
        })?;
        let certified = CertifiedKey::from_der(chain, key, &provider()).map_err(|source| {
            TlsError::Mismatch {
                dir: dir.to_owned(),
                source,
            }
        })?;
        Ok(Arc::new(certified))
    }
}

/// Loads and checks the pair in `dir`.
pub fn load_dir(dir: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    Pair::read(dir)?.certified(dir)
}

/// Identifies the contents of a certificate directory (SHA-256 of both files).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stamp([u8; 32]);

/// What to do with the files as they are now.
#[derive(Debug, PartialEq, Eq)]
pub enum Reload {
    /// Serve the loaded certificate: the files are unchanged, missing (mid-update), or the
    /// same ones that already failed to load.
    Keep,
    /// The files changed since they were loaded (or last failed): load them.
    Load,
}

/// The reload decision: load only files that differ both from what is served and from what
/// last failed (a half-written pair is retried once it changes again, not on every handshake).
pub fn reload_decision(loaded: &Stamp, failed: Option<&Stamp>, now: Option<&Stamp>) -> Reload {
    match now {
        None => Reload::Keep,
        Some(now) if now == loaded || Some(now) == failed => Reload::Keep,
        Some(_) => Reload::Load,
    }
}

#[derive(Debug)]
struct DirState {
    key: Arc<CertifiedKey>,
    loaded: Stamp,
    failed: Option<Stamp>,
    checked: Instant,
}

/// The certificate of a directory, re-read when its files' contents change (checked at most
/// once a second, during a handshake); a pair that fails to load leaves the previous one in service.
#[derive(Debug)]
pub struct DirResolver {
    dir: PathBuf,
    interval: Duration,
    state: Mutex<DirState>,
}

impl DirResolver {
    /// Loads the certificate now: a directory without a usable pair fails the start.
    pub fn new(dir: &Path) -> Result<DirResolver, TlsError> {
        let pair = Pair::read(dir)?;
        let key = pair.certified(dir)?;
        let loaded = pair.stamp();
        Ok(DirResolver {
            dir: dir.to_owned(),
            interval: Duration::from_secs(1),
            state: Mutex::new(DirState {
                key,
                loaded,
                failed: None,
                checked: Instant::now(),
            }),
        })
    }

    /// The certificate to serve now, reloading it first if the files changed.
    pub fn current(&self) -> Arc<CertifiedKey> {
        let mut state = self.state.lock().expect("resolver lock");
        if state.checked.elapsed() < self.interval {
            return state.key.clone();
        }
        state.checked = Instant::now();
        // A file missing (mid-update): keep serving, look again later.
        let pair = Pair::read(&self.dir).ok();
        let now = pair.as_ref().map(Pair::stamp);
        if reload_decision(&state.loaded, state.failed.as_ref(), now.as_ref()) == Reload::Load {
            let (pair, now) = (pair.expect("read"), now.expect("read"));
            match pair.certified(&self.dir) {
                Ok(key) => {
                    tracing::info!(dir = %self.dir.display(), "serving certificate reloaded");
                    state.key = key;
                    state.loaded = now;
                    state.failed = None;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "new serving certificate not loaded; keeping the previous one");
                    state.failed = Some(now);
                }
            }
        }
        state.key.clone()
    }
}

impl ResolvesServerCert for DirResolver {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(n: u8) -> Stamp {
        Stamp([n; 32])
    }

    #[test]
    fn changed_files_are_loaded_and_unchanged_or_missing_ones_are_not() {
        assert_eq!(
            reload_decision(&stamp(1), None, Some(&stamp(1))),
            Reload::Keep
        );
        assert_eq!(
            reload_decision(&stamp(1), None, Some(&stamp(2))),
            Reload::Load
        );
        // Mid-update (a file missing): keep serving.
        assert_eq!(reload_decision(&stamp(1), None, None), Reload::Keep);
    }

    #[test]
    fn a_pair_that_failed_is_retried_only_once_it_changes_again() {
        assert_eq!(
            reload_decision(&stamp(1), Some(&stamp(2)), Some(&stamp(2))),
            Reload::Keep
        );
        assert_eq!(
            reload_decision(&stamp(1), Some(&stamp(2)), Some(&stamp(3))),
            Reload::Load
        );
    }

    fn write_pair(dir: &Path, name: &str) -> Vec<u8> {
        let generated = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
        fs::write(dir.join(CERT_FILE), generated.cert.pem()).unwrap();
        fs::write(dir.join(KEY_FILE), generated.signing_key.serialize_pem()).unwrap();
        generated.cert.der().to_vec()
    }

    #[test]
    fn the_resolver_serves_the_new_pair_after_a_change_and_the_old_one_after_a_bad_change() {
        let dir = tempfile::tempdir().unwrap();
        let first = write_pair(dir.path(), "one.example");
        let resolver = DirResolver {
            interval: Duration::ZERO,
            ..DirResolver::new(dir.path()).unwrap()
        };
        assert_eq!(resolver.current().cert[0].as_ref(), &first[..]);
        let second = write_pair(dir.path(), "two.example");
        assert_eq!(resolver.current().cert[0].as_ref(), &second[..]);
        // A key that does not match the certificate: the previous pair stays in service.
        let other = rcgen::KeyPair::generate().unwrap();
        fs::write(dir.path().join(KEY_FILE), other.serialize_pem()).unwrap();
        assert_eq!(resolver.current().cert[0].as_ref(), &second[..]);
        let third = write_pair(dir.path(), "three.example");
        assert_eq!(resolver.current().cert[0].as_ref(), &third[..]);
    }

    #[test]
    fn a_directory_without_a_usable_pair_fails_with_the_file_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = DirResolver::new(dir.path()).unwrap_err().to_string();
        assert!(err.contains("tls.crt"), "{err}");
        fs::write(dir.path().join(CERT_FILE), "not pem").unwrap();
        fs::write(dir.path().join(KEY_FILE), "not pem").unwrap();
        let err = DirResolver::new(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("tls.crt") && err.contains("no PEM certificate"),
            "{err}"
        );
        write_pair(dir.path(), "a.example");
        let other = rcgen::KeyPair::generate().unwrap();
        fs::write(dir.path().join(KEY_FILE), other.serialize_pem()).unwrap();
        let err = DirResolver::new(dir.path()).unwrap_err().to_string();
        assert!(err.contains("does not match"), "{err}");
    }

    #[test]
    fn only_http1_is_offered() {
        let key = self_signed(&["localhost".into()]).unwrap();
        let config = server_config(Arc::new(Fixed(key))).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }
}
