//! TLS: load a PEM certificate chain and key, or make a self-signed certificate on first start and keep it
//! in the data directory. The certificate sits behind a resolver so SIGHUP can swap it without dropping
//! connections.

use crate::config::{Config, TlsMode};
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// Serves the current certificate; `reload` replaces it for new handshakes.
#[derive(Debug)]
pub struct ReloadableCert {
    current: RwLock<Arc<CertifiedKey>>,
    cert_path: PathBuf,
    key_path: PathBuf,
}

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| c.clone())
    }
}

impl ReloadableCert {
    pub fn reload(&self) -> Result<(), String> {
        let key = load_certified_key(&self.cert_path, &self.key_path)?;
        let mut current = self.current.write().map_err(|_| "certificate lock poisoned".to_string())?;
        *current = Arc::new(key);
        Ok(())
    }
}

fn load_certified_key(cert_path: &Path, key_path: &Path) -> Result<CertifiedKey, String> {
    let certs = CertificateDer::pem_file_iter(cert_path)
        .map_err(|e| format!("cannot read certificate {}: {e}", cert_path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("bad certificate {}: {e}", cert_path.display()))?;
    if certs.is_empty() {
        return Err(format!("no certificate found in {}", cert_path.display()));
    }
    let key =
        PrivateKeyDer::from_pem_file(key_path).map_err(|e| format!("cannot read key {}: {e}", key_path.display()))?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    CertifiedKey::from_der(certs, key, &provider).map_err(|e| format!("certificate and key do not fit together: {e}"))
}

/// Paths of the certificate and key for the configured mode, generating a self-signed pair when needed.
pub fn certificate_paths(config: &Config) -> Result<(PathBuf, PathBuf), String> {
    let tls_dir = config.storage.data_dir.join("tls");
    let cert = config.tls.cert.clone().unwrap_or_else(|| tls_dir.join("cert.pem"));
    let key = config.tls.key.clone().unwrap_or_else(|| tls_dir.join("key.pem"));
    match config.tls.mode {
        TlsMode::Files => {
            if config.tls.cert.is_none() || config.tls.key.is_none() {
                return Err("[tls] mode = \"files\" needs both cert and key".into());
            }
        }
        TlsMode::SelfSigned => {
            if !cert.exists() || !key.exists() {
                generate_self_signed(&config.tls.hostnames, &cert, &key)?;
                tracing::info!(cert = %cert.display(), "generated a self-signed TLS certificate");
            }
        }
        TlsMode::Off => return Err("TLS is off".into()),
    }
    Ok((cert, key))
}

fn generate_self_signed(hostnames: &[String], cert_path: &Path, key_path: &Path) -> Result<(), String> {
    let generated = rcgen::generate_simple_self_signed(hostnames.to_vec())
        .map_err(|e| format!("cannot make a certificate: {e}"))?;
    for path in [cert_path, key_path] {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
    }
    std::fs::write(cert_path, generated.cert.pem())
        .map_err(|e| format!("cannot write {}: {e}", cert_path.display()))?;
    write_private(key_path, generated.signing_key.serialize_pem().as_bytes())
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    file.write_all(bytes).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// The rustls configuration (TLS 1.2 and 1.3, ALPN h2 and http/1.1) and the reload handle.
pub fn server_config(config: &Config) -> Result<(Arc<ServerConfig>, Arc<ReloadableCert>), String> {
    let (cert_path, key_path) = certificate_paths(config)?;
    let key = load_certified_key(&cert_path, &key_path)?;
    let resolver = Arc::new(ReloadableCert { current: RwLock::new(Arc::new(key)), cert_path, key_path });
    let mut server = ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS setup failed: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(resolver.clone());
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((Arc::new(server), resolver))
}
