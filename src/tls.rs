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
            } else if config.tls.cert.is_none() && generated_certificate_is_old(&cert) {
                generate_self_signed(&config.tls.hostnames, &cert, &key)?;
                tracing::warn!(cert = %cert.display(), "renewed the self-signed TLS certificate; devices must trust the new one");
            }
        }
        TlsMode::Off => return Err("TLS is off".into()),
    }
    Ok((cert, key))
}

/// A certificate Apple clients accept once trusted (iOS 13+/macOS 10.15+ rules): serverAuth extended key
/// usage, the first host name as CN, and at most 825 days of validity (we use 820 and renew after 800).
const VALIDITY_DAYS: i64 = 820;
const RENEW_AFTER_DAYS: u64 = 800;

fn generate_self_signed(hostnames: &[String], cert_path: &Path, key_path: &Path) -> Result<(), String> {
    let fail = |e: rcgen::Error| format!("cannot make a certificate: {e}");
    let mut params = rcgen::CertificateParams::new(hostnames.to_vec()).map_err(fail)?;
    let common_name = hostnames.first().cloned().unwrap_or_else(|| "kartei".into());
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, common_name);
    params.distinguished_name.push(rcgen::DnType::OrganizationName, "kartei (self-signed)");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature, rcgen::KeyUsagePurpose::KeyEncipherment];
    let today = days_since_epoch();
    let date = |days| {
        let (y, m, d) = crate::dates::civil_from_days(days);
        rcgen::date_time_ymd(y as i32, m, d)
    };
    params.not_before = date(today - 1);
    params.not_after = date(today + VALIDITY_DAYS);
    let key = rcgen::KeyPair::generate().map_err(fail)?;
    let cert = params.self_signed(&key).map_err(fail)?;
    for path in [cert_path, key_path] {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
    }
    std::fs::write(cert_path, cert.pem()).map_err(|e| format!("cannot write {}: {e}", cert_path.display()))?;
    write_private(key_path, key.serialize_pem().as_bytes())
}

fn days_since_epoch() -> i64 {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    (secs / 86_400) as i64
}

/// A generated certificate older than `RENEW_AFTER_DAYS` is replaced at start (devices must trust it anew).
fn generated_certificate_is_old(cert_path: &Path) -> bool {
    std::fs::metadata(cert_path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age.as_secs() > RENEW_AFTER_DAYS * 86_400)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Apple refuses server certificates without serverAuth or valid for more than 825 days.
    #[test]
    fn generated_certificate_follows_apples_rules() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        generate_self_signed(&["contacts.example.org".into(), "127.0.0.1".into()], &cert, &key).expect("generated");
        assert!(load_certified_key(&cert, &key).is_ok());
        let Ok(out) =
            std::process::Command::new("openssl").args(["x509", "-noout", "-text", "-in"]).arg(&cert).output()
        else {
            eprintln!("openssl is not installed; checked only that the pair loads");
            return;
        };
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("TLS Web Server Authentication"), "{text}");
        assert!(text.contains("CN = contacts.example.org") || text.contains("CN=contacts.example.org"), "{text}");
        assert!(text.contains("IP Address:127.0.0.1") && text.contains("DNS:contacts.example.org"), "{text}");
        let end = std::process::Command::new("openssl")
            .args(["x509", "-noout", "-checkend", &(825 * 86_400).to_string(), "-in"])
            .arg(&cert)
            .output()
            .expect("openssl");
        assert!(!end.status.success(), "valid for more than 825 days");
        let end = std::process::Command::new("openssl")
            .args(["x509", "-noout", "-checkend", &(800 * 86_400).to_string(), "-in"])
            .arg(&cert)
            .output()
            .expect("openssl");
        assert!(end.status.success(), "valid for at least 800 days");
    }
}
