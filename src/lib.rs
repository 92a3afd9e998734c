//! kartei: a CardDAV/WebDAV contacts server.
//!
//! A tour, from the socket inwards:
//! - [`server`] accepts connections (TLS from [`tls`]), speaks HTTP/1.1 and HTTP/2, enforces limits.
//! - [`app`] is the request pipeline: [`router`] decides what a path means, [`auth`] checks Basic
//!   credentials, the target is resolved with the access check, and one of [`methods`] answers.
//! - [`dav`] turns request bodies into typed values and writes multistatus answers; [`props`] computes
//!   live properties; [`carddav`] holds the addressbook-query filters; [`vcard`] is the only calcard user.
//! - [`store`] is the storage interface (SQLite today) in domain words, one transaction per operation.
//! - [`files`] is the plain WebDAV file area for documents attached to contacts.
//! - [`api`] is the contact-manager JSON API over the same cards (search, views, import/export).
//! - [`admin`] holds account operations shared by the CLI and the admin HTTP API.

pub mod admin;
pub mod api;
pub mod app;
pub mod auth;
pub mod body;
pub mod carddav;
pub mod config;
pub mod dates;
pub mod dav;
pub mod error;
pub mod files;
pub mod ingest;
pub mod methods;
pub mod privacy;
pub mod props;
pub mod router;
pub mod server;
pub mod store;
pub mod tls;
pub mod vcard;

use config::{Config, TlsMode};
use std::net::SocketAddr;
use std::sync::Arc;
use store::{SharedStore, SqliteStore};
use tokio::sync::watch;

/// Opens (creating) the data directory and the database.
pub fn open_store(config: &Config) -> Result<SharedStore, String> {
    let dir = &config.storage.data_dir;
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    // Contacts and password hashes live here: other local accounts must not read them.
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(|e| format!("cannot create data directory {}: {e}", dir.display()))?;
    let full = config.storage.synchronous.eq_ignore_ascii_case("full");
    let store =
        SqliteStore::open(&config.database_path(), full).map_err(|e| format!("cannot open the database: {e}"))?;
    refresh_search_columns(&store).map_err(|e| format!("cannot update the search columns: {e}"))?;
    refresh_card_frames(&store).map_err(|e| format!("cannot make the cards' zstd frames: {e}"))?;
    Ok(Arc::new(store))
}

/// Runs `remake` (which returns how many cards it changed) unless the setting `key` already says `version`,
/// then records `version` and logs what was made: derived data that a newer kartei makes otherwise is made
/// again once, when the database is first opened by it.
fn once_per_version(
    store: &dyn store::Store,
    key: &str,
    version: &str,
    what: &str,
    remake: impl FnOnce() -> store::Result<usize>,
) -> store::Result<()> {
    if store.setting(key)?.as_deref() == Some(version) {
        return Ok(());
    }
    let started = std::time::Instant::now();
    let made = remake()?;
    store.set_setting(key, version)?;
    if made > 0 {
        tracing::info!(cards = made, elapsed_ms = started.elapsed().as_millis() as u64, "{what} made again");
    }
    Ok(())
}

/// Remakes the stored search columns when they were made with an older folding (a database from an older
/// kartei), so that a search finds the same cards in old and new contacts.
fn refresh_search_columns(store: &dyn store::Store) -> store::Result<()> {
    let unreadable = std::sync::atomic::AtomicUsize::new(0);
    let project = |text: &[u8]| {
        let card = vcard::reindex_stored(text);
        if card.is_none() {
            unreadable.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        card
    };
    once_per_version(store, "search_fold_version", vcard::SEARCH_COLUMNS_VERSION, "search columns", || {
        store.refresh_search_columns(&project)
    })?;
    let unreadable = unreadable.into_inner();
    if unreadable > 0 {
        tracing::warn!(cards = unreadable, "cards that do not parse kept their old search columns (`kartei check`)");
    }
    Ok(())
}

/// Makes the zstd frames stored with large cards (`body::card_xml_frame`) when the database's were made
/// otherwise or not at all (a database from before schema v7): without them those cards are compressed again
/// for every answer, and a frame made with other parameters than today's must not stay.
fn refresh_card_frames(store: &dyn store::Store) -> store::Result<()> {
    once_per_version(store, "card_frames_version", body::CARD_FRAMES_VERSION, "cards' zstd frames", || {
        store.refresh_card_frames(body::CARD_FRAME_MIN, &body::card_xml_frame)
    })
}

/// A running server.
pub struct Server {
    pub addr: SocketAddr,
    pub url: String,
    /// The admin token when this start created it (first start); shown once.
    pub admin_token: Option<String>,
    pub store: SharedStore,
    pub app: Arc<App>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    /// Background jobs (event-history retention), stopped with the server.
    jobs: Vec<tokio::task::JoinHandle<()>>,
}

pub use app::App;

impl Server {
    /// Stops accepting, lets in-flight requests finish, and checkpoints the WAL.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for job in &self.jobs {
            job.abort();
        }
        let _ = self.task.await;
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || store.checkpoint()).await {
            Ok(Ok(())) => tracing::info!("stopped; the WAL is checkpointed"),
            Ok(Err(e)) => tracing::error!(error = %e, "WAL checkpoint at shutdown failed; the next start recovers it"),
            Err(e) => tracing::error!(error = %e, "WAL checkpoint at shutdown did not run"),
        }
    }

    /// Runs until SIGTERM or Ctrl-C (SIGHUP reloads the TLS certificate), then stops gracefully. `signals`
    /// should be installed before `start`, so that a signal during startup is not the default action (exit).
    pub async fn run_until_signal(self, reload: Option<Arc<tls::ReloadableCert>>, signals: Option<Signals>) {
        #[cfg(unix)]
        {
            let Some(Signals { mut term, mut hup }) = signals.or_else(Signals::install) else {
                tracing::error!("cannot install signal handlers");
                return self.stop().await;
            };
            loop {
                tokio::select! {
                    _ = term.recv() => break,
                    _ = tokio::signal::ctrl_c() => break,
                    _ = hup.recv() => match &reload {
                        Some(r) => match r.reload() {
                            Ok(()) => tracing::info!("reloaded the TLS certificate"),
                            Err(e) => tracing::error!(error = %e, "TLS certificate reload failed; keeping the old one"),
                        },
                        None => tracing::info!("SIGHUP ignored: TLS is off"),
                    },
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = signals;
            let _ = tokio::signal::ctrl_c().await;
        }
        tracing::info!("shutting down");
        self.stop().await;
    }
}

/// SIGTERM and SIGHUP listeners; from the moment they exist, those signals are queued instead of ending the
/// process.
#[cfg(unix)]
pub struct Signals {
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

#[cfg(not(unix))]
pub struct Signals;

impl Signals {
    /// Must run inside a tokio runtime.
    #[cfg(unix)]
    pub fn install() -> Option<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Some(Signals { term: signal(SignalKind::terminate()).ok()?, hup: signal(SignalKind::hangup()).ok()? })
    }

    #[cfg(not(unix))]
    pub fn install() -> Option<Signals> {
        Some(Signals)
    }
}

/// Starts serving with `config`: opens the store, makes the admin token on first start, sets up TLS and
/// binds the listener (port 0 picks a free one; see `Server::addr`).
pub async fn start(config: Config) -> Result<(Server, Option<Arc<tls::ReloadableCert>>), String> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let addr = config.listen_addr()?;
    if config.tls.mode == TlsMode::Off && !addr.ip().is_loopback() && !config.server.allow_insecure_public {
        return Err(format!(
            "refusing to serve plain HTTP on {addr}: set [tls] mode to \"self-signed\" or \"files\", or set \
             [server] allow_insecure_public = true when a TLS proxy is in front"
        ));
    }
    let store = open_store(&config)?;
    let admin_token = {
        let s = store.clone();
        tokio::task::spawn_blocking(move || admin::ensure_admin_token(s.as_ref()))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?
    };
    let (acceptor, reload) = match config.tls.mode {
        TlsMode::Off => (None, None),
        _ => {
            let (server_config, reload) = tls::server_config(&config)?;
            (Some(tokio_rustls::TlsAcceptor::from(server_config)), Some(reload))
        }
    };
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    let app = Arc::new(App::new(config, store.clone(), Some(bound)));
    let url = app.public_url.clone();
    let (shutdown, shutdown_rx) = watch::channel(false);
    let task = tokio::spawn(server::serve(app.clone(), listener, acceptor, shutdown_rx));
    let jobs = vec![privacy::spawn_retention_job(store.clone(), app.config.privacy.retention_interval_secs)];
    Ok((Server { addr: bound, url, admin_token, store, app, shutdown, task, jobs }, reload))
}
