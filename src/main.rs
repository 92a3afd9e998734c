//! The `kartei` command: `serve`, and account management against the same database (usable while the
//! server runs: SQLite in WAL mode takes writers from several processes).

use clap::{Parser, Subcommand};
use kartei::config::Config;
use kartei::store::{CardBody, Store};
use kartei::{admin, router, vcard};
use serde_json::json;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "kartei", version, about = "A self-hosted CardDAV contacts server")]
struct Cli {
    /// Configuration file (TOML); without one kartei runs on its embedded default.
    #[arg(long, global = true, env = "KARTEI_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve,
    /// Manage users.
    #[command(subcommand)]
    User(UserCommand),
    /// Manage address books.
    #[command(subcommand)]
    Book(BookCommand),
    /// Share address books with other users.
    #[command(subcommand)]
    Share(ShareCommand),
    /// Manage the admin API token.
    #[command(subcommand, name = "admin-token")]
    AdminToken(AdminTokenCommand),
    /// Write a consistent copy of the database (safe while the server runs).
    Backup { file: PathBuf },
    /// Replace the database with a backup (stop the server first); clients then resync their books once.
    Restore { file: PathBuf },
    /// Verify the database's integrity and that every stored card parses.
    Check,
    /// Import a .vcf or .csv file into a user's address book (atomic; matches by UID, then e-mail).
    Import {
        file: PathBuf,
        #[arg(long)]
        user: String,
        #[arg(long, default_value = "contacts")]
        book: String,
        /// csv or vcf (guessed from the content when left out)
        #[arg(long)]
        format: Option<String>,
        /// JSON object mapping CSV headers to columns, e.g. '{"Mail": "email"}'
        #[arg(long)]
        mapping: Option<String>,
        #[arg(long)]
        dry_run: bool,
    },
    /// Take in one contact as an outside system does (upsert by e-mail; the rules of POST /api/v1/ingest).
    Ingest {
        /// The address book, as OWNER/BOOK
        #[arg(long)]
        book: String,
        /// The system the contact comes from (recorded as its origin)
        #[arg(long)]
        source: String,
        /// The contact as JSON: {"email", "name"?, "phone"?, "company"?, "optin"?, "event"?}; "-" reads stdin
        json: String,
    },
    /// Export a user's contacts as CSV or vCard; the purpose is recorded in the audit log.
    Export {
        #[arg(long)]
        user: String,
        #[arg(long)]
        purpose: String,
        #[arg(long)]
        book: Option<String>,
        #[arg(long)]
        q: Option<String>,
        /// JSON filter as in the API, e.g. '{"column": "city", "op": "equals", "value": "Berlin"}'
        #[arg(long)]
        filter: Option<String>,
        /// Comma-separated columns (CSV)
        #[arg(long)]
        columns: Option<String>,
        #[arg(long, default_value = "csv")]
        format: String,
        /// vCard version for format vcf (3.0 or 4.0)
        #[arg(long)]
        version: Option<String>,
        /// Write here instead of standard output
        #[arg(long)]
        output: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create a user with a generated password and a default address book.
    Add {
        #[arg(long)]
        username: Option<String>,
        #[arg(long)]
        display_name: Option<String>,
        #[arg(long)]
        json: bool,
    },
    List {
        #[arg(long)]
        json: bool,
    },
    /// Delete a user and their address books.
    Delete {
        username: String,
    },
    /// Generate a new password; the old one stops working at once.
    Reset {
        username: String,
        #[arg(long)]
        json: bool,
    },
    Disable {
        username: String,
    },
    Enable {
        username: String,
    },
}

#[derive(Subcommand)]
enum BookCommand {
    Add {
        username: String,
        book: String,
        #[arg(long)]
        display_name: Option<String>,
    },
    List {
        username: String,
        #[arg(long)]
        json: bool,
    },
    Delete {
        username: String,
        book: String,
    },
}

#[derive(Subcommand)]
enum ShareCommand {
    /// Share OWNER's BOOK with USER (read-only unless --read-write).
    Add {
        owner: String,
        book: String,
        user: String,
        #[arg(long)]
        read_write: bool,
    },
    Remove {
        owner: String,
        book: String,
        user: String,
    },
    List {
        owner: String,
        book: String,
    },
}

#[derive(Subcommand)]
enum AdminTokenCommand {
    /// Make a new admin token (shown once); the old one stops working.
    Reset {
        #[arg(long)]
        json: bool,
    },
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.level));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).try_init();
}

fn main() -> ExitCode {
    limit_malloc_arenas();
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kartei: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(&config);
    let result = match cli.command {
        Command::Serve => serve(config),
        other => offline(&config, other),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kartei: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One malloc arena for the whole server instead of glibc's default of up to eight per core. Answers are produced
/// on tokio's blocking threads, a different one almost every time, and each thread with an arena of its own
/// faulted in its own working set: ~1,500 page faults and ~5 ms of CPU in the first 1,000-card full sync after
/// a start or a quiet spell (later syncs none). With one arena that sync took 24 % less time, the later ones
/// the same, and peak RSS fell from 43 to 35 MB (BENCHMARKS.md, nineteenth session). Small allocations do not
/// take the arena's lock (glibc's per-thread cache). An operator's own `MALLOC_ARENA_MAX` wins.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets a malloc parameter, and it runs first in main, before any other thread.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}

fn serve(config: Config) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        // Before anything else: a SIGHUP or SIGTERM during startup must not kill the process.
        let signals = kartei::Signals::install();
        let (server, reload) = kartei::start(config).await?;
        println!("kartei listening on {}/ (CardDAV discovery: {}/.well-known/carddav)", server.url, server.url);
        if let Some(token) = &server.admin_token {
            println!("admin API token (shown once, store it now): {token}");
        }
        server.run_until_signal(reload, signals).await;
        Ok(())
    })
}

fn offline(config: &Config, command: Command) -> Result<(), String> {
    if let Command::Restore { file } = &command {
        return restore(config, file);
    }
    let store = kartei::open_store(config)?;
    let store: &dyn Store = store.as_ref();
    let err = |e: admin::AccountError| e.message;
    let public_url = config.public_url(None);
    match command {
        Command::User(UserCommand::Add { username, display_name, json }) => {
            let account =
                admin::create_user(store, config, username.as_deref(), display_name.as_deref()).map_err(err)?;
            let u = &account.user.username;
            if json {
                println!(
                    "{}",
                    json!({"username": u, "password": account.password, "carddav_url": format!("{public_url}{}", router::home_href(u))})
                );
            } else {
                println!(
                    "login:    {u}\npassword: {}\n(shown once)\nCardDAV:  {public_url}{}",
                    account.password,
                    router::home_href(u)
                );
            }
        }
        Command::User(UserCommand::List { json }) => {
            let users = store.users().map_err(|e| e.to_string())?;
            if json {
                let list: Vec<_> = users
                    .iter()
                    .map(|u| json!({"username": u.username, "display_name": u.display_name, "disabled": u.disabled}))
                    .collect();
                println!("{}", json!({ "users": list }));
            } else {
                for u in users {
                    println!("{}\t{}{}", u.username, u.display_name, if u.disabled { "\t(disabled)" } else { "" });
                }
            }
        }
        Command::User(UserCommand::Delete { username }) => {
            if !store.delete_user(&username).map_err(|e| e.to_string())? {
                return Err(format!("no user '{username}'"));
            }
            let _ = store.audit("cli", "user.delete", &username, "");
            println!("deleted {username}");
        }
        Command::User(UserCommand::Reset { username, json }) => {
            let password = admin::reset_password(store, &username, "cli").map_err(err)?;
            if json {
                println!("{}", json!({"username": username, "password": password}));
            } else {
                println!("login:    {username}\npassword: {password}\n(shown once)");
            }
        }
        Command::User(UserCommand::Disable { username }) => {
            store.set_disabled(&username, true).map_err(|e| e.to_string())?;
            let _ = store.audit("cli", "user.disable", &username, "");
            println!("disabled {username}");
        }
        Command::User(UserCommand::Enable { username }) => {
            store.set_disabled(&username, false).map_err(|e| e.to_string())?;
            let _ = store.audit("cli", "user.enable", &username, "");
            println!("enabled {username}");
        }
        Command::Book(BookCommand::Add { username, book, display_name }) => {
            admin::validate_segment(&book).map_err(err)?;
            store
                .create_book(&username, &book, display_name.as_deref(), None, &[], false)
                .map_err(|e| e.to_string())?;
            println!("{public_url}{}", router::book_href(&username, &book));
        }
        Command::Book(BookCommand::List { username, json }) => {
            let books = store.books_in_home(&username).map_err(|e| e.to_string())?;
            if json {
                let list: Vec<_> = books
                    .iter()
                    .map(|b| json!({"book": b.segment, "owner": b.owner, "shared": b.shared, "writable": b.writable}))
                    .collect();
                println!("{}", json!({ "books": list }));
            } else {
                for b in books {
                    let kind = if b.shared {
                        format!("shared by {} ({})", b.owner, if b.writable { "read-write" } else { "read-only" })
                    } else {
                        "own".into()
                    };
                    println!("{}\t{}\t{public_url}{}", b.segment, kind, router::book_href(&username, &b.segment));
                }
            }
        }
        Command::Book(BookCommand::Delete { username, book }) => {
            let view = store
                .book_in_home(&username, &book)
                .map_err(|e| e.to_string())?
                .filter(|b| !b.shared)
                .ok_or("no such book")?;
            store.delete_book(view.id).map_err(|e| e.to_string())?;
            println!("deleted {username}/{book}");
        }
        Command::Share(ShareCommand::Add { owner, book, user, read_write }) => {
            let view = store
                .book_in_home(&owner, &book)
                .map_err(|e| e.to_string())?
                .filter(|b| !b.shared)
                .ok_or("no such book")?;
            let segment = store.share_book(view.id, &user, read_write).map_err(|e| e.to_string())?;
            let _ = store.audit(
                "cli",
                "book.share",
                &format!("{owner}/{book}"),
                &format!("with={user} writable={read_write}"),
            );
            println!("{public_url}{}", router::book_href(&user, &segment));
        }
        Command::Share(ShareCommand::Remove { owner, book, user }) => {
            let view = store
                .book_in_home(&owner, &book)
                .map_err(|e| e.to_string())?
                .filter(|b| !b.shared)
                .ok_or("no such book")?;
            if !store.unshare_book(view.id, &user).map_err(|e| e.to_string())? {
                return Err("the book is not shared with this user".into());
            }
            let _ = store.audit("cli", "book.unshare", &format!("{owner}/{book}"), &format!("with={user}"));
            println!("revoked");
        }
        Command::Share(ShareCommand::List { owner, book }) => {
            let view = store
                .book_in_home(&owner, &book)
                .map_err(|e| e.to_string())?
                .filter(|b| !b.shared)
                .ok_or("no such book")?;
            for s in store.shares(view.id).map_err(|e| e.to_string())? {
                println!("{}\t{}\t{}", s.username, s.segment, if s.writable { "read-write" } else { "read" });
            }
        }
        Command::AdminToken(AdminTokenCommand::Reset { json }) => {
            let token = admin::reset_admin_token(store).map_err(err)?;
            if json {
                println!("{}", json!({ "token": token }));
            } else {
                println!("admin API token (shown once): {token}");
            }
        }
        Command::Backup { file } => backup(config, &file)?,
        Command::Check => check(store)?,
        Command::Import { file, user, book, format, mapping, dry_run } => {
            let max_card_size = config.limits.max_resource_size;
            import(store, ImportArgs { file, user, book, format, mapping, dry_run, max_card_size })?
        }
        Command::Export { user, purpose, book, q, filter, columns, format, version, output } => {
            export(store, ExportArgs { user, purpose, book, q, filter, columns, format, version, output })?
        }
        Command::Ingest { book, source, json } => ingest(config, store, &book, &source, &json)?,
        Command::Serve | Command::Restore { .. } => unreachable!("handled above"),
    }
    Ok(())
}

fn check(store: &dyn Store) -> Result<(), String> {
    let integrity = store.integrity_check().map_err(|e| e.to_string())?;
    if integrity != ["ok"] {
        return Err(format!("integrity check failed: {}", integrity.join("; ")));
    }
    let mut cards = 0usize;
    let mut broken = Vec::new();
    let mut bad_frames = Vec::new();
    for user in store.users().map_err(|e| e.to_string())? {
        for book in store.books_in_home(&user.username).map_err(|e| e.to_string())?.into_iter().filter(|b| !b.shared) {
            let mut failed = None;
            store
                .for_each_card(book.id, kartei::store::BodyRead::XmlZstdOrText, &mut |meta, body| {
                    cards += 1;
                    let path = || format!("{}/{}/{}", user.username, book.segment, meta.name);
                    match body {
                        // A card with a stored frame: its text is read on its own (another reader), and the
                        // frame must hold exactly it, unless the server changed the card in between.
                        CardBody::XmlZstd(frame) => match store.card(book.id, &meta.name) {
                            Ok(Some(card)) if card.meta.etag != meta.etag => {}
                            Ok(Some(card)) if vcard::validate(&card.vcard).is_err() => broken.push(path()),
                            Ok(Some(card)) if !kartei::body::card_frame_holds(frame, &card.vcard) => {
                                bad_frames.push(path())
                            }
                            Ok(_) => {}
                            Err(e) => {
                                failed = Some(e.to_string());
                                return false;
                            }
                        },
                        body if body.text().is_none_or(|b| vcard::validate(b).is_err()) => broken.push(path()),
                        _ => {}
                    }
                    true
                })
                .map_err(|e| e.to_string())?;
            if let Some(e) = failed {
                return Err(e);
            }
        }
    }
    if !broken.is_empty() {
        return Err(format!("{} of {cards} cards do not parse: {}", broken.len(), broken.join(", ")));
    }
    if !bad_frames.is_empty() {
        // Frames are made from the text, which is the card: they are made again, and the run still fails,
        // because something wrote them wrong.
        let remade = store
            .refresh_card_frames(kartei::body::CARD_FRAME_MIN, &kartei::body::card_xml_frame)
            .map_err(|e| e.to_string())?;
        return Err(format!(
            "{} of {cards} cards had a stored zstd frame that did not hold their text (answers in zstd would have \
             sent it); {remade} frames made again from the cards' text: {}",
            bad_frames.len(),
            bad_frames.join(", ")
        ));
    }
    println!("ok: integrity_check passed, {cards} cards parse");
    Ok(())
}

/// `PATH` with `suffix` appended to its file name.
fn with_suffix(path: &std::path::Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Creates an empty file readable and writable by its owner only (backups hold every contact and the
/// password hashes); fails if it exists.
fn create_private(path: &std::path::Path) -> Result<(), String> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    options.open(path).map(drop).map_err(|e| format!("cannot create {}: {e}", path.display()))
}

/// Removes a database's `-wal`, `-shm` and `-journal` side files.
fn remove_side_files(db: &std::path::Path) {
    for suffix in ["-wal", "-shm", "-journal"] {
        let _ = std::fs::remove_file(with_suffix(db, suffix));
    }
}

/// SQLite's online backup into `FILE.partial`, renamed to FILE when complete: FILE is always either the old
/// backup or a whole new one, and private to its owner.
///
/// The copy is one backup step under one read transaction: in WAL mode that never blocks the server's
/// writers and sees one consistent state. (Copying in small steps, as `Store::backup_to` does, starts over
/// whenever the server commits between two steps, and on a busy server with a large database never ends.)
fn backup(config: &Config, file: &std::path::Path) -> Result<(), String> {
    use rusqlite::backup::{Backup, StepResult};
    use rusqlite::{Connection, OpenFlags};
    let partial = with_suffix(file, ".partial");
    let _ = std::fs::remove_file(&partial);
    remove_side_files(&partial);
    create_private(&partial)?;
    let written = (|| -> Result<(), String> {
        let db = config.database_path();
        let source = Connection::open_with_flags(&db, OpenFlags::SQLITE_OPEN_READ_WRITE)
            .map_err(|e| format!("cannot open {}: {e}", db.display()))?;
        source.busy_timeout(std::time::Duration::from_secs(10)).map_err(|e| e.to_string())?;
        let mut target = Connection::open(&partial).map_err(|e| e.to_string())?;
        let copy = Backup::new(&source, &mut target).map_err(|e| e.to_string())?;
        for _ in 0..100 {
            match copy.step(-1).map_err(|e| e.to_string())? {
                StepResult::Done => return Ok(()),
                // Busy or locked for a moment (a checkpoint): try again.
                _ => std::thread::sleep(std::time::Duration::from_millis(100)),
            }
        }
        Err("the database stayed busy for 10 s".into())
    })()
    .map_err(|e| format!("backup failed: {e}"));
    remove_side_files(&partial);
    if let Err(e) = written.and_then(|()| {
        std::fs::rename(&partial, file).map_err(|e| format!("cannot move the backup to {}: {e}", file.display()))
    }) {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    println!("backup written to {}", file.display());
    Ok(())
}

/// Replaces the database with a backup. The backup is copied next to the database first and checked there
/// (the file given is never modified); the swap is a rename, so an interrupted restore leaves the old
/// database. Refuses while any process (the server) has the database open, and refuses files that are not
/// kartei databases (an empty file would otherwise "restore" an empty server).
fn restore(config: &Config, file: &std::path::Path) -> Result<(), String> {
    use rusqlite::{Connection, OpenFlags};
    let not_kartei = |why: String| format!("{} is not a kartei database: {why}", file.display());
    if std::fs::metadata(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?.len() == 0 {
        return Err(not_kartei("it is empty".into()));
    }
    std::fs::create_dir_all(&config.storage.data_dir).map_err(|e| e.to_string())?;
    let target = config.database_path();

    // Nobody may have the database open: the server keeps a connection, and WAL-mode connections hold a
    // shared lock, so an exclusive one is refused while it runs. Kept until the swap is done.
    let guard = if target.exists() {
        let c = Connection::open_with_flags(&target, OpenFlags::SQLITE_OPEN_READ_WRITE)
            .map_err(|e| format!("cannot open {}: {e}", target.display()))?;
        let locked = c
            .pragma_update(None, "locking_mode", "EXCLUSIVE")
            .and_then(|()| c.execute_batch("BEGIN EXCLUSIVE; COMMIT;"));
        match locked {
            Ok(()) => Some(c),
            Err(e)
                if matches!(
                    e.sqlite_error_code(),
                    Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
                ) =>
            {
                return Err(format!(
                    "the database {} is in use ({e}): stop the server (and any other kartei command) first",
                    target.display()
                ));
            }
            // A damaged database is what a restore is for.
            Err(e) => {
                eprintln!("the current database {} cannot be read ({e}); replacing it", target.display());
                None
            }
        }
    } else {
        None
    };

    let incoming = with_suffix(&target, ".restoring");
    let _ = std::fs::remove_file(&incoming);
    remove_side_files(&incoming);
    create_private(&incoming)?;
    let prepared = (|| {
        std::fs::copy(file, &incoming).map_err(|e| format!("cannot copy {}: {e}", file.display()))?;
        {
            let probe = Connection::open_with_flags(&incoming, OpenFlags::SQLITE_OPEN_READ_WRITE)
                .map_err(|e| not_kartei(e.to_string()))?;
            let version: i64 =
                probe.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(|e| not_kartei(e.to_string()))?;
            let has_users: bool = probe
                .query_row("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'users'", [], |r| {
                    r.get::<_, i64>(0)
                })
                .map(|n| n == 1)
                .map_err(|e| not_kartei(e.to_string()))?;
            if version < 1 || !has_users {
                return Err(not_kartei("it has no kartei schema".into()));
            }
        }
        // Open it the way the server does (applies pending migrations), check it, and write its WAL back.
        let store = kartei::store::SqliteStore::open(&incoming, false).map_err(|e| not_kartei(e.to_string()))?;
        let integrity = store.integrity_check().map_err(|e| e.to_string())?;
        if integrity != ["ok"] {
            return Err(format!("the backup fails its integrity check: {}", integrity.join("; ")));
        }
        // Clients hold sync tokens of the database being replaced; tokens of the backup's books would look
        // valid for them once the revisions catch up, and the deltas would be wrong. New keys make every
        // client resync.
        store.reissue_sync_keys().map_err(|e| e.to_string())?;
        store.checkpoint().map_err(|e| e.to_string())?;
        drop(store);
        if std::fs::metadata(with_suffix(&incoming, "-wal")).is_ok_and(|m| m.len() > 0) {
            return Err("the checked copy kept a write-ahead log; nothing was replaced".into());
        }
        remove_side_files(&incoming);
        std::fs::File::open(&incoming).and_then(|f| f.sync_all()).map_err(|e| e.to_string())
    })();
    if let Err(e) = prepared {
        let _ = std::fs::remove_file(&incoming);
        remove_side_files(&incoming);
        return Err(e);
    }
    // The old database's WAL must go with it: replayed onto the restored file it would corrupt it.
    remove_side_files(&target);
    std::fs::rename(&incoming, &target).map_err(|e| format!("cannot move the backup into place: {e}"))?;
    // The lock ends with this process. Closing the connection would make SQLite clean up `-wal` by path,
    // which now belongs to the restored database.
    std::mem::forget(guard);
    println!("restored {} into {}", file.display(), target.display());
    Ok(())
}

fn progress_bar(done: usize, total: usize) {
    let width = 30;
    let filled = (done * width).checked_div(total).unwrap_or(width).min(width);
    eprint!("\r[{}{}] {done}/{total}", "#".repeat(filled), ".".repeat(width - filled));
    if done >= total {
        eprintln!();
    }
}

struct ImportArgs {
    file: PathBuf,
    user: String,
    book: String,
    format: Option<String>,
    mapping: Option<String>,
    dry_run: bool,
    /// `[limits] max_resource_size`, as for a PUT.
    max_card_size: usize,
}

fn import(store: &dyn Store, args: ImportArgs) -> Result<(), String> {
    use kartei::api::transfer::{ImportRequest, detect_format, run_import};
    let ImportArgs { file, user, book, format, mapping, dry_run, max_card_size } = args;
    let (file, user, book) = (file.as_path(), user.as_str(), book.as_str());
    let bytes = std::fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let text = String::from_utf8(bytes).map_err(|_| format!("{} is not UTF-8 text", file.display()))?;
    let view =
        store.book_in_home(user, book).map_err(|e| e.to_string())?.ok_or(format!("{user} has no book '{book}'"))?;
    let ext = file.extension().and_then(|e| e.to_str()).unwrap_or("").to_lowercase();
    let format = format.unwrap_or_else(|| if ext == "vcf" { "vcf".into() } else { detect_format(&ext, &text) });
    let mapping = mapping.map(|m| serde_json::from_str(&m).map_err(|e| format!("--mapping: {e}"))).transpose()?;
    let file_name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let request = ImportRequest {
        format,
        mapping,
        dry_run,
        actor: "cli".into(),
        source: format!("import: {file_name}"),
        max_card_size,
    };
    let (status, summary) =
        run_import(store, &view, &text, &request, &mut progress_bar).map_err(|e| e.message.to_string())?;
    for row in summary["rows"].as_array().into_iter().flatten().filter(|r| r["action"] == "reject") {
        eprintln!("row {}: refused: {}", row["row"], row["reason"].as_str().unwrap_or(""));
    }
    for row in summary["rows"].as_array().into_iter().flatten() {
        let names =
            |key: &str| row[key].as_array().map(|a| a.iter().filter_map(|v| v.as_str()).collect::<Vec<_>>().join(", "));
        if let Some(kept) = names("kept") {
            eprintln!("row {}: the file's {kept} differ; kept what the book has", row["row"]);
        }
        if let Some(not_merged) = names("not_merged") {
            eprintln!("row {}: not added to the existing card: {not_merged}", row["row"]);
        }
    }
    println!(
        "{}created {}, updated {}, unchanged {}, refused {}",
        if dry_run { "dry run: " } else { "" },
        summary["created"],
        summary["updated"],
        summary["unchanged"],
        summary["rejected"]
    );
    if status.is_success() {
        if !dry_run {
            let _ = store.audit("cli", "import", &format!("{user}/{book}"), &json!({"file": file.display().to_string(), "created": summary["created"], "updated": summary["updated"], "uids": kartei::api::transfer::imported_uids(&summary)}).to_string());
        }
        Ok(())
    } else {
        Err("nothing was imported".into())
    }
}

struct ExportArgs {
    user: String,
    purpose: String,
    book: Option<String>,
    q: Option<String>,
    filter: Option<String>,
    columns: Option<String>,
    format: String,
    version: Option<String>,
    output: Option<PathBuf>,
}

fn export(store: &dyn Store, args: ExportArgs) -> Result<(), String> {
    use kartei::api::transfer::{export_request, run_export};
    use kartei::store::ContactQuery;
    let books = store.books_in_home(&args.user).map_err(|e| e.to_string())?;
    let books: Vec<_> = books.into_iter().filter(|b| args.book.as_ref().is_none_or(|s| *s == b.segment)).collect();
    if books.is_empty() {
        return Err(format!("{} has no such book", args.user));
    }
    let filter = match &args.filter {
        Some(f) => {
            let v: serde_json::Value = serde_json::from_str(f).map_err(|e| format!("--filter: {e}"))?;
            Some(kartei::api::parse_filter(&v, &mut 0).map_err(|e| e.message.to_string())?)
        }
        None => None,
    };
    let columns = match &args.columns {
        Some(c) => {
            let list: Vec<String> = c.split(',').map(|s| s.trim().to_string()).collect();
            for col in &list {
                kartei::api::check_column(col).map_err(|e| e.message.to_string())?;
            }
            Some(list)
        }
        None => None,
    };
    let mut params = std::collections::HashMap::new();
    params.insert("purpose".to_string(), args.purpose.clone());
    params.insert("format".to_string(), args.format.clone());
    if let Some(v) = &args.version {
        params.insert("version".to_string(), v.clone());
    }
    let description = json!({"q": args.q, "filter": args.filter, "book": args.book, "via": "cli"});
    let request = export_request(&params, columns, description).map_err(|e| e.message.to_string())?;
    let query = ContactQuery {
        books: books.iter().map(|b| b.id).collect(),
        words: args.q.as_deref().map(kartei::api::search_words).unwrap_or_default(),
        filter,
        sort: ("fn".into(), false),
        after: None,
        limit: None,
    };
    let books = books.into_iter().map(|b| (b.id, b)).collect();
    let (bytes, count) = run_export(store, &args.user, &books, query, &request).map_err(|e| e.message.to_string())?;
    match &args.output {
        Some(path) => std::fs::write(path, &bytes).map_err(|e| format!("cannot write {}: {e}", path.display()))?,
        None => std::io::Write::write_all(&mut std::io::stdout(), &bytes).map_err(|e| e.to_string())?,
    }
    eprintln!("exported {count} contacts (purpose: {})", args.purpose);
    Ok(())
}

fn ingest(config: &Config, store: &dyn Store, book: &str, source: &str, body: &str) -> Result<(), String> {
    let text = if body == "-" {
        std::io::read_to_string(std::io::stdin()).map_err(|e| format!("cannot read standard input: {e}"))?
    } else {
        body.to_string()
    };
    let request: kartei::ingest::IngestRequest =
        serde_json::from_str(&text).map_err(|e| format!("invalid contact JSON: {e}"))?;
    let (owner, segment) = book.split_once('/').ok_or("--book: write it as OWNER/BOOK")?;
    let view = store
        .book_in_home(owner, segment)
        .map_err(|e| e.to_string())?
        .filter(|b| !b.shared)
        .ok_or(format!("no book '{book}'"))?;
    let integration = kartei::store::Integration {
        id: 0,
        book: view.id,
        owner: owner.to_string(),
        segment: segment.to_string(),
        name: source.to_string(),
        created_at: 0,
    };
    let outcome = kartei::ingest::ingest(store, config, &integration, &request).map_err(|e| e.message)?;
    println!("{}", json!({"uid": outcome.uid, "created": outcome.created, "tags": outcome.tags}));
    Ok(())
}
