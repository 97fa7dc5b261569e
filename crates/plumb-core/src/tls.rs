//! TLS termination: certificates loaded from PEM files, offered with ALPN (`h2`,
//! `http/1.1`), and replaced in place when the files change or on reload, without
//! touching connections already established (each keeps the key it started with).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use plumb_config::model;

/// A certificate loaded and checked, not yet in use.
#[derive(Debug)]
pub struct Prepared {
    key: Arc<CertifiedKey>,
    files: model::Tls,
}

/// How often certificate files are checked for changes.
const WATCH: Duration = Duration::from_secs(2);

/// A certificate that could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("listener {listener:?}: TLS: {detail}")]
pub struct TlsError {
    /// The listener.
    pub listener: String,
    /// What is wrong, naming the file.
    pub detail: String,
}

/// One listener's TLS: an acceptor whose certificate can be swapped.
pub struct Tls {
    acceptor: TlsAcceptor,
    resolver: Arc<Resolver>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("resolver", &self.resolver)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Resolver {
    listener: String,
    files: RwLock<model::Tls>,
    current: RwLock<Arc<CertifiedKey>>,
    stamp: RwLock<(Option<SystemTime>, Option<SystemTime>)>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(
            &self.current.read().unwrap_or_else(|p| p.into_inner()),
        ))
    }
}

impl Tls {
    /// Loads a listener's certificate and key.
    pub fn load(listener: &str, files: &model::Tls) -> Result<Arc<Tls>, TlsError> {
        let key = load_key(listener, files)?;
        let resolver = Arc::new(Resolver {
            listener: listener.to_string(),
            files: RwLock::new(files.clone()),
            current: RwLock::new(key),
            stamp: RwLock::new(stamps(files)),
        });
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError {
            listener: listener.to_string(),
            detail: e.to_string(),
        })?
        .with_no_client_auth()
        .with_cert_resolver(Arc::clone(&resolver) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(Tls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            resolver,
        }))
    }

    /// The acceptor for new connections.
    pub(crate) fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// Reads the files again (possibly new paths). A file that does not load leaves
    /// the current certificate in place and is reported.
    pub fn reload(&self, files: &model::Tls) -> Result<(), TlsError> {
        let prepared = self.prepare(files)?;
        self.apply(prepared);
        Ok(())
    }

    /// Loads and checks a certificate without using it yet, so that a reload of
    /// several listeners can fail before changing any.
    pub fn prepare(&self, files: &model::Tls) -> Result<Prepared, TlsError> {
        Ok(Prepared {
            key: load_key(&self.resolver.listener, files)?,
            files: files.clone(),
        })
    }

    /// Starts serving a prepared certificate.
    pub fn apply(&self, prepared: Prepared) {
        let r = &self.resolver;
        *r.current.write().unwrap_or_else(|p| p.into_inner()) = prepared.key;
        *r.stamp.write().unwrap_or_else(|p| p.into_inner()) = stamps(&prepared.files);
        tracing::info!(listener = %r.listener, cert = %prepared.files.cert.display(), "TLS certificate loaded");
        *r.files.write().unwrap_or_else(|p| p.into_inner()) = prepared.files;
    }

    /// Watches the files and reloads when their modification time changes, until
    /// `stop`.
    pub(crate) fn watch(self: &Arc<Self>, stop: CancellationToken) {
        let tls = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(WATCH) => {}
                }
                let Some(tls) = tls.upgrade() else { return };
                let files = tls
                    .resolver
                    .files
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                let now = stamps(&files);
                let before = *tls.resolver.stamp.read().unwrap_or_else(|p| p.into_inner());
                if now != before {
                    if let Err(e) = tls.reload(&files) {
                        // Keep serving with the old certificate; try again next time.
                        tracing::error!(error = %e, "TLS certificate changed but does not load; keeping the old one");
                        *tls.resolver
                            .stamp
                            .write()
                            .unwrap_or_else(|p| p.into_inner()) = now;
                    }
                }
            }
        });
    }
}

fn stamps(files: &model::Tls) -> (Option<SystemTime>, Option<SystemTime>) {
    let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    (m(&files.cert), m(&files.key))
}

fn load_key(listener: &str, files: &model::Tls) -> Result<Arc<CertifiedKey>, TlsError> {
    let fail = |detail: String| TlsError {
        listener: listener.to_string(),
        detail,
    };
    let shown = |p: &PathBuf| p.display().to_string();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| {
            fail(format!(
                "cannot read certificate file {}: {e}",
                shown(&files.cert)
            ))
        })?
        .collect::<Result<_, _>>()
        .map_err(|e| fail(format!("certificate file {}: {e}", shown(&files.cert))))?;
    if certs.is_empty() {
        return Err(fail(format!(
            "certificate file {} holds no certificate",
            shown(&files.cert)
        )));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| fail(format!("key file {}: {e}", shown(&files.key))))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| fail(format!("key file {}: {e}", shown(&files.key))))?;
    let ck = CertifiedKey::new(certs, signing);
    ck.keys_match().map_err(|e| {
        fail(format!(
            "{} does not match {}: {e}",
            shown(&files.key),
            shown(&files.cert)
        ))
    })?;
    Ok(Arc::new(ck))
}
