//! Configuration: every key, its default and its meaning in one place. `config.example.toml` documents the
//! same keys for people; a missing file means the embedded default (SQLite in ./kartei-data, self-signed
//! HTTPS on 127.0.0.1:8443).

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub tls: TlsConfig,
    pub storage: StorageConfig,
    pub limits: LimitsConfig,
    pub auth: AuthConfig,
    pub privacy: PrivacyConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address and port to listen on.
    pub listen: String,
    /// The URL clients use to reach kartei (behind a proxy); by default derived from `listen` and TLS mode.
    pub public_url: Option<String>,
    /// Plain HTTP on a non-loopback address is refused unless this is set (for a TLS-terminating proxy).
    pub allow_insecure_public: bool,
    /// Reverse proxies whose `X-Forwarded-For` names the client: login throttling and logs then see the
    /// client's address instead of the proxy's, and the proxy's connections are not capped per address.
    pub trusted_proxies: Vec<std::net::IpAddr>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:8443".into(),
            public_url: None,
            allow_insecure_public: false,
            trusted_proxies: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    SelfSigned,
    Files,
    Off,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    pub mode: TlsMode,
    /// PEM certificate chain (mode "files"; for "self-signed" where the generated one is kept).
    pub cert: Option<PathBuf>,
    /// PEM private key.
    pub key: Option<PathBuf>,
    /// Host names and IP addresses a generated certificate is valid for.
    pub hostnames: Vec<String>,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            mode: TlsMode::SelfSigned,
            cert: None,
            key: None,
            hostnames: vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    pub data_dir: PathBuf,
    /// "normal" survives a process crash; "full" also survives power loss, at the cost of an fsync per write.
    pub synchronous: String,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig { data_dir: PathBuf::from("kartei-data"), synchronous: "normal".into() }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest request body for XML requests (PROPFIND, REPORT, PROPPATCH, MKCOL).
    pub max_xml_body: usize,
    /// Largest vCard accepted by PUT (advertised as CARD:max-resource-size).
    pub max_resource_size: usize,
    /// Largest document in the WebDAV file area (`/dav/files/`).
    pub max_file_size: usize,
    /// Most hrefs in one addressbook-multiget.
    pub max_multiget_hrefs: usize,
    /// Seconds a request (headers and body) may take before the connection is closed; while its body keeps
    /// arriving, counted from the body's last piece.
    pub request_timeout_secs: u64,
    /// Seconds an idle keep-alive connection stays open.
    pub idle_timeout_secs: u64,
    /// Most connections served at once; further ones wait in the accept queue.
    pub max_connections: usize,
    /// Most connections from one client address (a NAT counts as one); further ones are closed at once.
    pub max_connections_per_ip: usize,
    /// Largest request head (request line and headers), in bytes.
    pub max_header_bytes: usize,
    /// Most prop-filters, text-matches and param-filters in one addressbook-query filter.
    pub max_filter_terms: usize,
    /// Seconds a shutdown waits for in-flight requests and streamed answers before it cuts them.
    pub shutdown_grace_secs: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_xml_body: 1024 * 1024,
            max_resource_size: 10 * 1024 * 1024,
            max_file_size: 50 * 1024 * 1024,
            max_multiget_hrefs: 10_000,
            request_timeout_secs: 60,
            idle_timeout_secs: 120,
            max_connections: 1024,
            max_connections_per_ip: 256,
            max_header_bytes: 64 * 1024,
            max_filter_terms: 64,
            shutdown_grace_secs: 10,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Domain of generated logins (`<id>@<domain>`); by default the host of the public URL.
    pub login_domain: Option<String>,
    /// Seconds a successful password verification is remembered (so syncs do not pay Argon2 per request).
    pub cache_secs: u64,
    /// Failed logins per user name or client address within `throttle_window_secs` before 429.
    pub throttle_failures: u32,
    pub throttle_window_secs: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig { login_domain: None, cache_secs: 300, throttle_failures: 10, throttle_window_secs: 60 }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrivacyConfig {
    /// Processing purposes people can attach to contacts (`X-KARTEI-PURPOSE`) and name for exports.
    pub purposes: Vec<String>,
    /// Free-mail domains: an ingested contact's company is never derived from these. Replaces the list
    /// shipped with kartei when set.
    pub free_mail_domains: Option<Vec<String>>,
    /// Added to the free-mail list (shipped or replaced).
    pub extra_free_mail_domains: Vec<String>,
    /// Seconds between runs of the event-history retention job.
    pub retention_interval_secs: u64,
}

impl Default for PrivacyConfig {
    fn default() -> Self {
        PrivacyConfig {
            purposes: ["Customer care", "Newsletter", "Mail merge", "Accounting"].map(String::from).to_vec(),
            free_mail_domains: None,
            extra_free_mail_domains: Vec::new(),
            retention_interval_secs: 3600,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter: "info", "kartei=debug", ... (RUST_LOG overrides it).
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { level: "info".into() }
    }
}

impl Config {
    /// Reads a config file; `None` gives the embedded default.
    pub fn load(path: Option<&Path>) -> Result<Config, String> {
        let Some(path) = path else { return Ok(Config::default()) };
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("invalid config {}: {e}", path.display()))
    }

    pub fn listen_addr(&self) -> Result<SocketAddr, String> {
        self.server
            .listen
            .parse()
            .map_err(|e| format!("[server] listen = {:?} is not an address: {e}", self.server.listen))
    }

    pub fn database_path(&self) -> PathBuf {
        self.storage.data_dir.join("kartei.sqlite3")
    }

    /// The base URL clients use, without a trailing slash.
    pub fn public_url(&self, bound: Option<SocketAddr>) -> String {
        if let Some(url) = &self.server.public_url {
            return url.trim_end_matches('/').to_string();
        }
        let scheme = if self.tls.mode == TlsMode::Off { "http" } else { "https" };
        let addr = bound.map(|a| a.to_string()).unwrap_or_else(|| self.server.listen.clone());
        format!("{scheme}://{addr}")
    }

    /// The domain part of generated logins.
    pub fn login_domain(&self) -> String {
        if let Some(d) = &self.auth.login_domain {
            return d.clone();
        }
        let url = self.public_url(None);
        let host = url.split("://").nth(1).unwrap_or(&url).split('/').next().unwrap_or("localhost");
        let host = if host.starts_with('[') {
            host.split(']').next().unwrap_or(host).trim_start_matches('[')
        } else {
            host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host)
        };
        if host.parse::<std::net::IpAddr>().is_ok() || host.is_empty() { "localhost".into() } else { host.to_string() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_file_parses_and_matches_the_defaults() {
        let example: Config =
            toml::from_str(include_str!("../config.example.toml")).expect("config.example.toml parses");
        let default = Config::default();
        assert_eq!(example.server.listen, default.server.listen);
        assert_eq!(example.tls.mode, default.tls.mode);
        assert_eq!(example.storage.data_dir, default.storage.data_dir);
        assert_eq!(example.limits.max_resource_size, default.limits.max_resource_size);
        assert_eq!(example.auth.cache_secs, default.auth.cache_secs);
        assert_eq!(example.privacy.purposes, default.privacy.purposes);
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<Config>("[server]\nlisten = \"127.0.0.1:1\"\nlisen = 1\n").is_err());
    }

    #[test]
    fn login_domain_comes_from_the_public_url() {
        let mut c = Config::default();
        assert_eq!(c.login_domain(), "localhost");
        c.server.public_url = Some("https://contacts.example.org:8443/".into());
        assert_eq!(c.login_domain(), "contacts.example.org");
    }
}
