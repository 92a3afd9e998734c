//! The SQLite backend: one writer connection behind a mutex (SQLite allows one writer anyway) and a small
//! pool of reader connections, all in WAL mode so that reads never wait for writes.
//!
//! Durability: `synchronous = NORMAL` in WAL mode keeps every committed transaction across a process crash
//! (kill -9), because the WAL is written before COMMIT returns; only an OS crash or power loss can drop
//! the last transactions. `[storage] synchronous = "full"` trades write speed for that case too.

use super::*;
use rusqlite::{Connection, ErrorCode, OptionalExtension, Transaction, TransactionBehavior, params};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

// Provenance, integrations, events (the `Records` half of the store), kept apart from the sync core.
mod records;

const SCHEMA_V1: &str = include_str!("schema.sql");
const SCHEMA_V2: &str = include_str!("schema_v2.sql");
const SCHEMA_V3: &str = include_str!("schema_v3.sql");
const SCHEMA_V4: &str = include_str!("schema_v4.sql");
const SCHEMA_V5: &str = include_str!("schema_v5.sql");
const SCHEMA_V6: &str = include_str!("schema_v6.sql");
const SCHEMA_V7: &str = include_str!("schema_v7.sql");
const READER_POOL_MAX: usize = 8;
/// The page cache of the writer and of each pooled reader (negative in PRAGMA cache_size: KiB, not pages).
const PAGE_CACHE_KIB: i64 = 16000;
/// The page cache of a spare reader, used when all pooled readers are busy (more answers produced at once
/// than the pool holds). A big cache there would only add memory: 24 devices full-syncing a 100,000-card
/// book at once each filled 16 MB (see BENCHMARKS.md, optimization 10).
const SPARE_READER_CACHE_KIB: i64 = 2048;
/// Idle spare readers kept for reuse, so that reads beyond the pool do not each open a connection.
const SPARE_POOL_MAX: usize = 8;

pub struct SqliteStore {
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    /// Pooled readers in existence (idle in `readers` or in use); at most `READER_POOL_MAX`.
    pooled_readers: AtomicUsize,
    /// Idle spare readers (small cache); in use there may be any number of them.
    spare_readers: Mutex<Vec<Connection>>,
    synchronous_full: bool,
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            Some(ErrorCode::DiskFull) => Error::Unavailable("disk full".into()),
            Some(ErrorCode::ReadOnly) => Error::Unavailable("database is read-only".into()),
            Some(ErrorCode::CannotOpen) | Some(ErrorCode::SystemIoFailure) => {
                Error::Unavailable(format!("I/O error: {e}"))
            }
            Some(ErrorCode::DatabaseBusy) | Some(ErrorCode::DatabaseLocked) => {
                Error::Unavailable("database busy".into())
            }
            _ => Error::Internal(e.to_string()),
        }
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database and applies pending migrations.
    pub fn open(path: &Path, synchronous_full: bool) -> Result<Self> {
        let writer = Self::connect(path, synchronous_full)?;
        migrate(&writer)?;
        Ok(SqliteStore {
            path: path.to_path_buf(),
            writer: Mutex::new(writer),
            readers: Mutex::new(Vec::new()),
            pooled_readers: AtomicUsize::new(0),
            spare_readers: Mutex::new(Vec::new()),
            synchronous_full,
        })
    }

    fn connect(path: &Path, synchronous_full: bool) -> Result<Connection> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::Internal(format!("could not enable WAL (got {mode})")));
        }
        conn.pragma_update(None, "synchronous", if synchronous_full { "FULL" } else { "NORMAL" })?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        conn.pragma_update(None, "cache_size", -PAGE_CACHE_KIB)?;
        // Checkpoint every 8,192 WAL pages (32 MB) instead of SQLite's 1,000: a card write dirties ~6 pages, so
        // the default checkpointed (and fsynced) every ~40 writes; see BENCHMARKS.md for the numbers.
        conn.pragma_update(None, "wal_autocheckpoint", 8192)?;
        conn.set_prepared_statement_cache_capacity(64);
        Ok(conn)
    }

    fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let reader = self.take_reader()?;
        f(reader.connection()?)
    }

    /// An idle pooled reader; else a new pooled one while the pool has room; else an idle spare; else a new
    /// spare.
    fn take_reader(&self) -> Result<Reader<'_>> {
        if let Some(conn) = self.readers.lock().map_err(|_| poisoned())?.pop() {
            return Ok(Reader { conn: Some(conn), store: self, kind: ReaderKind::Pooled });
        }
        let pooled = self
            .pooled_readers
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < READER_POOL_MAX).then_some(n + 1))
            .is_ok();
        if !pooled && let Some(conn) = self.spare_readers.lock().map_err(|_| poisoned())?.pop() {
            return Ok(Reader { conn: Some(conn), store: self, kind: ReaderKind::Spare });
        }
        let kind = if pooled { ReaderKind::Pooled } else { ReaderKind::Spare };
        // From here the guard gives a pool slot back, whatever happens.
        let mut reader = Reader { conn: None, store: self, kind };
        let conn = Self::connect(&self.path, self.synchronous_full)?;
        if kind == ReaderKind::Spare {
            conn.pragma_update(None, "cache_size", -SPARE_READER_CACHE_KIB)?;
        }
        reader.conn = Some(conn);
        Ok(reader)
    }

    /// Runs `f` in one IMMEDIATE transaction on the writer; commits only when `f` succeeds.
    fn write<T>(&self, f: impl FnOnce(&Transaction) -> Result<T>) -> Result<T> {
        let mut conn = self.writer.lock().map_err(|_| poisoned())?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let value = f(&tx)?;
        tx.commit()?;
        Ok(value)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ReaderKind {
    /// One of at most `READER_POOL_MAX` readers with the full page cache.
    Pooled,
    /// A reader with a small cache, for when all pooled readers are busy.
    Spare,
}

/// A reader connection on loan. Dropping it returns it to its pool (a spare one only while the spare pool
/// has room); one whose read panicked is closed instead, as it may be left inside a transaction.
struct Reader<'a> {
    conn: Option<Connection>,
    store: &'a SqliteStore,
    kind: ReaderKind,
}

impl Reader<'_> {
    fn connection(&self) -> Result<&Connection> {
        self.conn.as_ref().ok_or_else(|| Error::Internal("reader connection missing".into()))
    }
}

impl Drop for Reader<'_> {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take().filter(|_| !std::thread::panicking()) else {
            // It failed to open or its read panicked: nothing to return, but a pooled slot to free.
            if self.kind == ReaderKind::Pooled {
                self.store.pooled_readers.fetch_sub(1, Ordering::AcqRel);
            }
            return;
        };
        match self.kind {
            ReaderKind::Pooled => match self.store.readers.lock() {
                Ok(mut pool) => pool.push(conn),
                Err(_) => {
                    drop(conn); // closed before its slot is freed, so there are never more than the maximum
                    self.store.pooled_readers.fetch_sub(1, Ordering::AcqRel);
                }
            },
            ReaderKind::Spare => {
                if let Ok(mut spares) = self.store.spare_readers.lock()
                    && spares.len() < SPARE_POOL_MAX
                {
                    spares.push(conn);
                }
            }
        }
    }
}

/// One card write inside the caller's transaction: the precondition, the row and the change log.
fn put_card_in(tx: &Transaction, book: BookId, name: &str, card: &NewCard, pre: &Precondition) -> Result<PutOutcome> {
    let existing: Option<String> = tx
        .prepare_cached("SELECT etag FROM cards WHERE book_id = ?1 AND name = ?2")?
        .query_row(params![book, name], |r| r.get(0))
        .optional()?;
    check_precondition(existing.as_deref(), pre)?;
    upsert_card(tx, book, name, card, existing.is_some())?;
    let etag = card.etag.clone();
    Ok(if existing.is_some() { PutOutcome::Updated { etag } } else { PutOutcome::Created { etag } })
}

/// A new book's sync key: 64 random bits in hex, so that no book, not even one at a deleted book's path or
/// row id, takes over another's sync tokens (schema_v6.sql).
fn new_sync_key() -> String {
    use rand::Rng as _;
    format!("{:016x}", rand::rng().next_u64())
}

fn poisoned() -> Error {
    Error::Internal("a store lock was poisoned by an earlier panic".into())
}

fn migrate(conn: &Connection) -> Result<()> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version < 1 {
        conn.execute_batch(&format!("BEGIN; {SCHEMA_V1} PRAGMA user_version = 1; COMMIT;"))?;
    }
    if version < 2 {
        conn.execute_batch(&format!("BEGIN; {SCHEMA_V2} PRAGMA user_version = 2; COMMIT;"))?;
    }
    if version < 3 {
        conn.execute_batch(&format!("BEGIN; {SCHEMA_V3} PRAGMA user_version = 3; COMMIT;"))?;
    }
    if version < 4 {
        conn.execute_batch(&format!("BEGIN; {SCHEMA_V4} PRAGMA user_version = 4; COMMIT;"))?;
    }
    if version < 5 {
        conn.execute_batch(&format!("BEGIN; {SCHEMA_V5} PRAGMA user_version = 5; COMMIT;"))?;
    }
    if version < 6 {
        conn.execute_batch(&format!("BEGIN; {SCHEMA_V6} PRAGMA user_version = 6; COMMIT;"))?;
    }
    if version < 7 {
        conn.execute_batch(&format!("BEGIN; {SCHEMA_V7} PRAGMA user_version = 7; COMMIT;"))?;
    }
    Ok(())
}

fn user_from_row(r: &rusqlite::Row) -> rusqlite::Result<User> {
    Ok(User {
        id: r.get(0)?,
        username: r.get(1)?,
        display_name: r.get(2)?,
        password_hash: r.get(3)?,
        disabled: r.get(4)?,
        credential_generation: r.get(5)?,
        created_at: r.get(6)?,
    })
}

const USER_COLUMNS: &str = "id, username, display_name, password_hash, disabled, credential_generation, created_at";

// Own books and shared books share one shape; `segment` is the name in the viewer's home.
const OWN_BOOKS: &str = "SELECT b.id, u.username, b.segment, b.segment, b.display_name, b.description, b.revision,
        b.is_default, 1, 0, b.created_at, b.sync_key
     FROM addressbooks b JOIN users u ON u.id = b.owner_id
     WHERE u.username = ?1";
const SHARED_BOOKS: &str = "SELECT b.id, o.username, b.segment, s.segment, b.display_name, b.description, b.revision,
        0, s.writable, 1, b.created_at, b.sync_key
     FROM shares s JOIN users u ON u.id = s.user_id
     JOIN addressbooks b ON b.id = s.book_id JOIN users o ON o.id = b.owner_id
     WHERE u.username = ?1";

// The lookups behind every DAV request's path (`book_in_home`) are single-table statements with scalar
// subqueries, not joins: the bundled SQLite re-prepared (parsed and planned) a join that has a bound
// parameter each time the cached statement was used again, ~5 % of a GET's server CPU (BENCHMARKS.md,
// optimization 12). A unit test checks they are not re-prepared.
const OWN_BOOK_BY_SEGMENT: &str = "SELECT b.id, ?1, b.segment, b.segment, b.display_name, b.description, b.revision,
        b.is_default, 1, 0, b.created_at, b.sync_key
     FROM addressbooks b WHERE b.owner_id = (SELECT id FROM users WHERE username = ?1) AND b.segment = ?2";
const SHARE_BY_SEGMENT: &str = "SELECT book_id, segment, writable FROM shares
     WHERE user_id = (SELECT id FROM users WHERE username = ?1) AND segment = ?2";
/// The shared book `?1` as its sharee sees it: in the sharee's home as `?2`, writable if `?3`.
const SHARED_BOOK_BY_ID: &str = "SELECT b.id, (SELECT username FROM users WHERE id = b.owner_id), b.segment, ?2,
        b.display_name, b.description, b.revision, 0, ?3, 1, b.created_at, b.sync_key
     FROM addressbooks b WHERE b.id = ?1";

fn book_from_row(r: &rusqlite::Row) -> rusqlite::Result<BookView> {
    Ok(BookView {
        id: r.get(0)?,
        owner: r.get(1)?,
        owner_segment: r.get(2)?,
        segment: r.get(3)?,
        display_name: r.get(4)?,
        description: r.get(5)?,
        revision: r.get(6)?,
        is_default: r.get(7)?,
        writable: r.get(8)?,
        shared: r.get(9)?,
        created_at: r.get(10)?,
        sync_key: r.get(11)?,
    })
}

const META_COLUMNS: &str = "name, uid, etag, size, version, created_at, modified_at";

fn meta_from_row(r: &rusqlite::Row) -> rusqlite::Result<CardMeta> {
    Ok(CardMeta {
        name: r.get(0)?,
        uid: r.get(1)?,
        etag: r.get(2)?,
        size: r.get(3)?,
        version: r.get(4)?,
        created_at: r.get(5)?,
        modified_at: r.get(6)?,
    })
}

/// The two columns after the metadata that a read with `body` selects: the text, and the zstd frame. With
/// `XmlZstdOrText` the text of a card that has a frame is not copied out (SQLite still walks its overflow
/// pages to reach the frame, which follows it in the row).
fn body_columns(body: BodyRead) -> &'static str {
    match body {
        BodyRead::None => "NULL, NULL",
        BodyRead::Text => "vcard, NULL",
        BodyRead::XmlZstdOrText => "CASE WHEN xml_zstd IS NULL THEN vcard END, xml_zstd",
    }
}

/// The content of a row selected with `body_columns` (columns 7 and 8).
fn body_from_row<'r>(row: &'r rusqlite::Row) -> rusqlite::Result<CardBody<'r>> {
    if let Some(frame) = row.get_ref(8)?.as_blob_or_null().map_err(rusqlite::Error::from)? {
        return Ok(CardBody::XmlZstd(frame));
    }
    Ok(match row.get_ref(7)?.as_blob_or_null().map_err(rusqlite::Error::from)? {
        Some(text) => CardBody::Text(text),
        None => CardBody::None,
    })
}

fn user_id(tx: &Connection, username: &str) -> Result<UserId> {
    tx.query_row("SELECT id FROM users WHERE username = ?1", [username], |r| r.get(0))
        .optional()?
        .ok_or(Error::NotFound)
}

/// Bumps the book's revision and records the change; returns the new revision.
fn record_change(tx: &Transaction, book: BookId, name: &str, kind: i64) -> Result<Revision> {
    let revision: Revision = tx
        .prepare_cached("UPDATE addressbooks SET revision = revision + 1 WHERE id = ?1 RETURNING revision")?
        .query_row([book], |r| r.get(0))
        .optional()?
        .ok_or(Error::NotFound)?;
    tx.prepare_cached("INSERT INTO changes (book_id, revision, name, kind) VALUES (?1, ?2, ?3, ?4)")?
        .execute(params![book, revision, name, kind])?;
    Ok(revision)
}

fn check_precondition(existing_etag: Option<&str>, pre: &Precondition) -> Result<()> {
    if pre.holds_for(existing_etag) { Ok(()) } else { Err(Error::PreconditionFailed) }
}

/// Inserts or replaces a card inside a transaction that already checked preconditions.
fn upsert_card(tx: &Transaction, book: BookId, name: &str, card: &NewCard, exists: bool) -> Result<()> {
    let conflict: Option<String> = tx
        .prepare_cached("SELECT name FROM cards WHERE book_id = ?1 AND uid = ?2 AND name <> ?3")?
        .query_row(params![book, card.uid, name], |r| r.get(0))
        .optional()?;
    if let Some(existing) = conflict {
        return Err(Error::UidConflict(existing));
    }
    let kind = if exists { 2 } else { 1 };
    let revision = record_change(tx, book, name, kind)?;
    let ts = now();
    tx.prepare_cached(
        "INSERT INTO cards (book_id, name, uid, etag, vcard, size, version, revision, created_at, modified_at,
                            fn, emails, phones, org, fields, search, xml_zstd)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)
         ON CONFLICT (book_id, name) DO UPDATE SET uid = excluded.uid, etag = excluded.etag,
             vcard = excluded.vcard, xml_zstd = excluded.xml_zstd, size = excluded.size, version = excluded.version,
             revision = excluded.revision, modified_at = excluded.modified_at, fn = excluded.fn,
             emails = excluded.emails, phones = excluded.phones, org = excluded.org, fields = excluded.fields,
             search = excluded.search",
    )?
    .execute(params![
        book,
        name,
        card.uid,
        card.etag,
        card.bytes,
        card.bytes.len() as i64,
        card.version,
        revision,
        ts,
        card.fn_lower,
        card.emails_lower,
        card.phones_lower,
        card.org_lower,
        card.fields_json,
        card.search,
        card.xml_zstd
    ])?;
    Ok(())
}

const FILE_COLUMNS: &str = "f.path, f.is_collection, f.size, f.etag, f.content_type, f.created_at, f.modified_at";

fn file_from_row(r: &rusqlite::Row) -> rusqlite::Result<FileEntry> {
    Ok(FileEntry {
        path: r.get(0)?,
        is_collection: r.get(1)?,
        size: r.get(2)?,
        etag: r.get(3)?,
        content_type: r.get(4)?,
        created_at: r.get(5)?,
        modified_at: r.get(6)?,
    })
}

fn parent_of(path: &str) -> &str {
    path.rsplit_once('/').map(|(p, _)| p).unwrap_or("")
}

/// The prefix of every path strictly below `path` (compared with substr, so no LIKE escaping or case folding).
fn below(path: &str) -> String {
    format!("{path}/")
}

/// The top-level folder always exists; other folders must be rows.
fn folder_exists(tx: &Connection, owner: UserId, path: &str) -> Result<bool> {
    if path.is_empty() {
        return Ok(true);
    }
    Ok(tx
        .query_row("SELECT is_collection FROM files WHERE owner_id = ?1 AND path = ?2", params![owner, path], |r| {
            r.get::<_, bool>(0)
        })
        .optional()?
        .unwrap_or(false))
}

fn delete_subtree(tx: &Connection, owner: UserId, path: &str) -> Result<usize> {
    Ok(tx.execute(
        "DELETE FROM files WHERE owner_id = ?1 AND (path = ?2 OR substr(path, 1, length(?3)) = ?3)",
        params![owner, path, below(path)],
    )?)
}

/// Clears the destination of a copy or move; tells whether something was there.
fn delete_subtree_if(tx: &Connection, owner: UserId, path: &str, overwrite: bool) -> Result<bool> {
    let exists: bool = tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM files WHERE owner_id = ?1 AND path = ?2)",
        params![owner, path],
        |r| r.get(0),
    )?;
    if exists {
        if !overwrite {
            return Err(Error::PreconditionFailed);
        }
        delete_subtree(tx, owner, path)?;
    }
    Ok(exists)
}

fn field_filter_sql(f: &FieldFilter, sql: &mut String, args: &mut Vec<String>) {
    match f {
        FieldFilter::And(parts) | FieldFilter::Or(parts) => {
            let and = matches!(f, FieldFilter::And(_));
            if parts.is_empty() {
                sql.push_str(if and { "1" } else { "0" });
                return;
            }
            sql.push('(');
            for (i, p) in parts.iter().enumerate() {
                if i > 0 {
                    sql.push_str(if and { " AND " } else { " OR " });
                }
                field_filter_sql(p, sql, args);
            }
            sql.push(')');
        }
        FieldFilter::Not(inner) => {
            sql.push_str("NOT (");
            field_filter_sql(inner, sql, args);
            sql.push(')');
        }
        FieldFilter::Condition { column, op, value } => {
            args.push(format!("$.{column}"));
            let v = format!("json_extract(fields, ?{})", args.len());
            let mut arg = |value: String| {
                args.push(value);
                format!("?{}", args.len())
            };
            // Multi-valued columns hold one value per line: equals/starts-with look at every line.
            let cond = match op {
                FieldOp::Equals => format!("instr(char(10) || {v} || char(10), {}) > 0", arg(format!("\n{value}\n"))),
                FieldOp::Contains => format!("instr({v}, {}) > 0", arg(value.clone())),
                FieldOp::StartsWith => format!("instr(char(10) || {v}, {}) > 0", arg(format!("\n{value}"))),
                FieldOp::IsEmpty => format!("{v} = ''"),
                FieldOp::IsNotEmpty => format!("{v} <> ''"),
                FieldOp::Before => format!("({v} <> '' AND {v} < {})", arg(value.clone())),
                FieldOp::After => format!("({v} <> '' AND {v} > {})", arg(value.clone())),
            };
            sql.push_str(&cond);
        }
    }
}

/// Shifts `?N` placeholders by `offset` (a condition built on its own, appended after other parameters).
fn renumber(sql: &str, offset: usize) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        out.push(c);
        if c == '?' {
            let mut n = String::new();
            while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                n.push(*d);
                chars.next();
            }
            let shifted = n.parse::<usize>().map(|n| n + offset).unwrap_or(0);
            out.push_str(&shifted.to_string());
        }
    }
    out
}

fn prefilter_sql(p: &Prefilter, sql: &mut String, args: &mut Vec<String>) {
    match p {
        Prefilter::All => sql.push('1'),
        Prefilter::UidNotAscii => sql.push_str("uid GLOB '*[^ -~]*'"),
        Prefilter::Contains(field, needle) => {
            let column = match field {
                IndexedField::Fn => "fn",
                IndexedField::Email => "emails",
                IndexedField::Phone => "phones",
                IndexedField::Org => "org",
                IndexedField::Uid => "lower(uid)",
            };
            args.push(needle.clone());
            sql.push_str(&format!("instr({column}, ?{}) > 0", args.len() + 1));
        }
        Prefilter::And(parts) | Prefilter::Or(parts) => {
            if parts.is_empty() {
                sql.push_str(if matches!(p, Prefilter::And(_)) { "1" } else { "0" });
                return;
            }
            let joiner = if matches!(p, Prefilter::And(_)) { " AND " } else { " OR " };
            sql.push('(');
            for (i, part) in parts.iter().enumerate() {
                if i > 0 {
                    sql.push_str(joiner);
                }
                prefilter_sql(part, sql, args);
            }
            sql.push(')');
        }
    }
}

impl Store for SqliteStore {
    fn create_user(&self, username: &str, display_name: &str, password_hash: &str) -> Result<User> {
        self.write(|tx| {
            // A random first credential generation: a user deleted and made again under the same name (by
            // another process, e.g. the CLI, whose server's login cache knows nothing of it) must not
            // inherit the old password's cached logins, which are keyed by name and generation.
            let generation = {
                use rand::Rng as _;
                i64::from(rand::rng().next_u32()) + 2
            };
            let inserted = tx.execute(
                "INSERT INTO users (username, display_name, password_hash, created_at, credential_generation)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (username) DO NOTHING",
                params![username, display_name, password_hash, now(), generation],
            )?;
            if inserted == 0 {
                return Err(Error::AlreadyExists);
            }
            Ok(tx.query_row(
                &format!("SELECT {USER_COLUMNS} FROM users WHERE username = ?1"),
                [username],
                user_from_row,
            )?)
        })
    }

    fn user(&self, username: &str) -> Result<Option<User>> {
        self.read(|c| {
            Ok(c.prepare_cached(&format!("SELECT {USER_COLUMNS} FROM users WHERE username = ?1"))?
                .query_row([username], user_from_row)
                .optional()?)
        })
    }

    fn users(&self) -> Result<Vec<User>> {
        self.read(|c| {
            let mut stmt = c.prepare(&format!("SELECT {USER_COLUMNS} FROM users ORDER BY username"))?;
            let users = stmt.query_map([], user_from_row)?.collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(users)
        })
    }

    fn delete_user(&self, username: &str) -> Result<bool> {
        self.write(|tx| Ok(tx.execute("DELETE FROM users WHERE username = ?1", [username])? > 0))
    }

    fn set_password_hash(&self, username: &str, password_hash: &str) -> Result<User> {
        self.write(|tx| {
            tx.query_row(
                &format!(
                    "UPDATE users SET password_hash = ?2, credential_generation = credential_generation + 1
                     WHERE username = ?1 RETURNING {USER_COLUMNS}"
                ),
                params![username, password_hash],
                user_from_row,
            )
            .optional()?
            .ok_or(Error::NotFound)
        })
    }

    fn set_disabled(&self, username: &str, disabled: bool) -> Result<User> {
        self.write(|tx| {
            tx.query_row(
                &format!("UPDATE users SET disabled = ?2 WHERE username = ?1 RETURNING {USER_COLUMNS}"),
                params![username, disabled],
                user_from_row,
            )
            .optional()?
            .ok_or(Error::NotFound)
        })
    }

    fn books_in_home(&self, username: &str) -> Result<Vec<BookView>> {
        self.read(|c| {
            let sql = format!("SELECT * FROM ({OWN_BOOKS} UNION ALL {SHARED_BOOKS}) ORDER BY 10, 8 DESC, 4");
            let mut stmt = c.prepare_cached(&sql)?;
            let books = stmt.query_map([username], book_from_row)?.collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(books)
        })
    }

    fn book_in_home(&self, username: &str, segment: &str) -> Result<Option<BookView>> {
        self.read(|c| {
            let own = c
                .prepare_cached(OWN_BOOK_BY_SEGMENT)?
                .query_row(params![username, segment], book_from_row)
                .optional()?;
            if own.is_some() {
                return Ok(own);
            }
            let share = c
                .prepare_cached(SHARE_BY_SEGMENT)?
                .query_row(params![username, segment], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, bool>(2)?))
                })
                .optional()?;
            let Some((book, segment, writable)) = share else { return Ok(None) };
            Ok(c.prepare_cached(SHARED_BOOK_BY_ID)?
                .query_row(params![book, segment, writable], book_from_row)
                .optional()?)
        })
    }

    fn create_book(
        &self,
        owner: &str,
        segment: &str,
        display_name: Option<&str>,
        description: Option<&str>,
        dead: &[DeadProperty],
        is_default: bool,
    ) -> Result<BookView> {
        self.write(|tx| {
            let owner_id = user_id(tx, owner)?;
            // A shared book may already use this segment in the owner's home.
            let taken: bool = tx.query_row(
                "SELECT EXISTS (SELECT 1 FROM addressbooks WHERE owner_id = ?1 AND segment = ?2)
                     OR EXISTS (SELECT 1 FROM shares WHERE user_id = ?1 AND segment = ?2)",
                params![owner_id, segment],
                |r| r.get(0),
            )?;
            if taken {
                return Err(Error::AlreadyExists);
            }
            let created = now();
            let sync_key = new_sync_key();
            tx.execute(
                "INSERT INTO addressbooks (owner_id, segment, display_name, description, is_default, created_at,
                                           sync_key)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![owner_id, segment, display_name, description, is_default, created, sync_key],
            )?;
            let id = tx.last_insert_rowid();
            for p in dead {
                tx.execute(
                    "INSERT OR REPLACE INTO book_properties (book_id, namespace, name, xml) VALUES (?1, ?2, ?3, ?4)",
                    params![id, p.namespace, p.name, p.xml],
                )?;
            }
            Ok(BookView {
                id,
                owner: owner.to_string(),
                owner_segment: segment.to_string(),
                segment: segment.to_string(),
                display_name: display_name.map(str::to_string),
                description: description.map(str::to_string),
                revision: 0,
                is_default,
                writable: true,
                shared: false,
                created_at: created,
                sync_key,
            })
        })
    }

    fn reissue_sync_keys(&self) -> Result<()> {
        self.write(|tx| {
            let mut stmt = tx.prepare("SELECT id FROM addressbooks")?;
            let ids = stmt.query_map([], |r| r.get::<_, BookId>(0))?.collect::<rusqlite::Result<Vec<_>>>()?;
            for id in ids {
                tx.execute("UPDATE addressbooks SET sync_key = ?2 WHERE id = ?1", params![id, new_sync_key()])?;
            }
            Ok(())
        })
    }

    fn delete_book(&self, book: BookId) -> Result<()> {
        self.write(|tx| {
            if tx.execute("DELETE FROM addressbooks WHERE id = ?1", [book])? == 0 {
                return Err(Error::NotFound);
            }
            Ok(())
        })
    }

    fn patch_book(&self, book: BookId, patch: &[BookPatch]) -> Result<()> {
        self.write(|tx| {
            for p in patch {
                match p {
                    BookPatch::DisplayName(v) => {
                        tx.execute("UPDATE addressbooks SET display_name = ?2 WHERE id = ?1", params![book, v])?;
                    }
                    BookPatch::Description(v) => {
                        tx.execute("UPDATE addressbooks SET description = ?2 WHERE id = ?1", params![book, v])?;
                    }
                    BookPatch::SetDead(d) => {
                        tx.execute(
                            "INSERT OR REPLACE INTO book_properties (book_id, namespace, name, xml)
                             VALUES (?1, ?2, ?3, ?4)",
                            params![book, d.namespace, d.name, d.xml],
                        )?;
                    }
                    BookPatch::RemoveDead { namespace, name } => {
                        tx.execute(
                            "DELETE FROM book_properties WHERE book_id = ?1 AND namespace = ?2 AND name = ?3",
                            params![book, namespace, name],
                        )?;
                    }
                }
            }
            // The CTag and sync token follow the revision: a client that polls only them (CalendarServer's
            // getctag: "changes when the collection or any member changes") learns of a rename too. No change
            // row: a delta across this revision lists no member.
            if !patch.is_empty() {
                tx.prepare_cached("UPDATE addressbooks SET revision = revision + 1 WHERE id = ?1")?.execute([book])?;
            }
            Ok(())
        })
    }

    fn dead_properties(&self, book: BookId) -> Result<Vec<DeadProperty>> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT namespace, name, xml FROM book_properties WHERE book_id = ?1 ORDER BY namespace, name",
            )?;
            let props = stmt
                .query_map([book], |r| Ok(DeadProperty { namespace: r.get(0)?, name: r.get(1)?, xml: r.get(2)? }))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(props)
        })
    }

    fn book_size(&self, book: BookId) -> Result<i64> {
        self.read(|c| {
            Ok(c.prepare_cached("SELECT COALESCE(SUM(size), 0) FROM cards WHERE book_id = ?1")?
                .query_row([book], |r| r.get(0))?)
        })
    }

    fn share_book(&self, book: BookId, with_user: &str, writable: bool) -> Result<String> {
        self.write(|tx| {
            let sharee = user_id(tx, with_user)?;
            let (owner_id, owner, segment): (UserId, String, String) = tx
                .query_row(
                    "SELECT b.owner_id, u.username, b.segment FROM addressbooks b JOIN users u ON u.id = b.owner_id
                     WHERE b.id = ?1",
                    [book],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?
                .ok_or(Error::NotFound)?;
            if owner_id == sharee {
                return Err(Error::AlreadyExists);
            }
            if let Some(existing) = tx
                .query_row(
                    "SELECT segment FROM shares WHERE book_id = ?1 AND user_id = ?2",
                    params![book, sharee],
                    |r| r.get::<_, String>(0),
                )
                .optional()?
            {
                tx.execute(
                    "UPDATE shares SET writable = ?3 WHERE book_id = ?1 AND user_id = ?2",
                    params![book, sharee, writable],
                )?;
                return Ok(existing);
            }
            // The sharee sees the book as "<owner's segment>-<owner's login name>", made unique.
            let local = owner.split('@').next().unwrap_or(&owner);
            let base = format!("{segment}-{local}");
            let mut candidate = base.clone();
            let mut n = 1;
            loop {
                let taken: bool = tx.query_row(
                    "SELECT EXISTS (SELECT 1 FROM addressbooks WHERE owner_id = ?1 AND segment = ?2)
                         OR EXISTS (SELECT 1 FROM shares WHERE user_id = ?1 AND segment = ?2)",
                    params![sharee, candidate],
                    |r| r.get(0),
                )?;
                if !taken {
                    break;
                }
                n += 1;
                candidate = format!("{base}-{n}");
            }
            tx.execute(
                "INSERT INTO shares (book_id, user_id, segment, writable) VALUES (?1, ?2, ?3, ?4)",
                params![book, sharee, candidate, writable],
            )?;
            Ok(candidate)
        })
    }

    fn unshare_book(&self, book: BookId, with_user: &str) -> Result<bool> {
        self.write(|tx| {
            let sharee = user_id(tx, with_user)?;
            Ok(tx.execute("DELETE FROM shares WHERE book_id = ?1 AND user_id = ?2", params![book, sharee])? > 0)
        })
    }

    fn shares(&self, book: BookId) -> Result<Vec<ShareInfo>> {
        self.read(|c| {
            let mut stmt = c.prepare(
                "SELECT u.username, s.segment, s.writable FROM shares s JOIN users u ON u.id = s.user_id
                 WHERE s.book_id = ?1 ORDER BY u.username",
            )?;
            let shares = stmt
                .query_map([book], |r| Ok(ShareInfo { username: r.get(0)?, segment: r.get(1)?, writable: r.get(2)? }))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(shares)
        })
    }

    fn card(&self, book: BookId, name: &str) -> Result<Option<Card>> {
        self.read(|c| {
            Ok(c.prepare_cached(&format!("SELECT {META_COLUMNS}, vcard FROM cards WHERE book_id = ?1 AND name = ?2"))?
                .query_row(params![book, name], |r| Ok(Card { meta: meta_from_row(r)?, vcard: r.get(7)? }))
                .optional()?)
        })
    }

    fn card_meta(&self, book: BookId, name: &str) -> Result<Option<CardMeta>> {
        self.read(|c| {
            Ok(c.prepare_cached(&format!("SELECT {META_COLUMNS} FROM cards WHERE book_id = ?1 AND name = ?2"))?
                .query_row(params![book, name], meta_from_row)
                .optional()?)
        })
    }

    fn for_each_card(&self, book: BookId, body: BodyRead, sink: &mut CardSink<'_>) -> Result<()> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {META_COLUMNS}, {} FROM cards WHERE book_id = ?1 ORDER BY id",
                body_columns(body)
            ))?;
            let mut rows = stmt.query([book])?;
            while let Some(row) = rows.next()? {
                let meta = meta_from_row(row)?;
                if !sink(&meta, body_from_row(row)?) {
                    break;
                }
            }
            Ok(())
        })
    }

    fn for_each_named_card(
        &self,
        book: BookId,
        names: &[String],
        body: BodyRead,
        sink: &mut CardSink<'_>,
    ) -> Result<()> {
        self.read(|c| {
            // One snapshot for all names: consistent, and one WAL read lock instead of one per card (each costs
            // fcntl calls; per-card autocommit made a 100-card multiget spend ~a fifth of its time locking).
            let tx = c.unchecked_transaction()?;
            let mut stmt = tx.prepare_cached(&format!(
                "SELECT {META_COLUMNS}, {} FROM cards WHERE book_id = ?1 AND name = ?2",
                body_columns(body)
            ))?;
            for name in names {
                let mut rows = stmt.query(params![book, name])?;
                if let Some(row) = rows.next()? {
                    let meta = meta_from_row(row)?;
                    if !sink(&meta, body_from_row(row)?) {
                        break;
                    }
                }
            }
            Ok(())
        })
    }

    fn for_each_candidate(&self, book: BookId, prefilter: &Prefilter, sink: &mut CardSink<'_>) -> Result<()> {
        let mut condition = String::new();
        let mut args = Vec::new();
        prefilter_sql(prefilter, &mut condition, &mut args);
        self.read(|c| {
            // Two steps in one snapshot: the prefilter runs over the covering index only (a scan of the rows
            // would read every stored vCard), then the candidates are read by rowid, in insertion order.
            let tx = c.unchecked_transaction()?;
            let sql =
                format!("SELECT id FROM cards INDEXED BY cards_listing WHERE book_id = ?1 AND {condition} ORDER BY id");
            let mut values: Vec<&dyn rusqlite::ToSql> = vec![&book];
            values.extend(args.iter().map(|a| a as &dyn rusqlite::ToSql));
            let ids = tx
                .prepare_cached(&sql)?
                .query_map(values.as_slice(), |r| r.get::<_, i64>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut stmt = tx.prepare_cached(&format!("SELECT {META_COLUMNS}, vcard FROM cards WHERE id = ?1"))?;
            for id in ids {
                let mut rows = stmt.query([id])?;
                if let Some(row) = rows.next()? {
                    let meta = meta_from_row(row)?;
                    let bytes = row.get_ref(7)?.as_blob().map_err(rusqlite::Error::from)?;
                    if !sink(&meta, CardBody::Text(bytes)) {
                        break;
                    }
                }
            }
            Ok(())
        })
    }

    fn put_card(&self, book: BookId, name: &str, card: &NewCard, pre: &Precondition) -> Result<PutOutcome> {
        self.write(|tx| put_card_in(tx, book, name, card, pre))
    }

    fn delete_card(&self, book: BookId, name: &str, pre: &Precondition) -> Result<()> {
        self.write(|tx| {
            let existing: Option<String> = tx
                .prepare_cached("SELECT etag FROM cards WHERE book_id = ?1 AND name = ?2")?
                .query_row(params![book, name], |r| r.get(0))
                .optional()?;
            let Some(etag) = existing else { return Err(Error::NotFound) };
            check_precondition(Some(&etag), pre)?;
            tx.prepare_cached("DELETE FROM cards WHERE book_id = ?1 AND name = ?2")?.execute(params![book, name])?;
            record_change(tx, book, name, 3)?;
            Ok(())
        })
    }

    fn move_card(
        &self,
        from: BookId,
        from_name: &str,
        to: BookId,
        to_name: &str,
        overwrite: bool,
        source_pre: &Precondition,
    ) -> Result<PutOutcome> {
        self.write(|tx| {
            let source = tx
                .query_row(
                    "SELECT uid, etag, vcard, version, fn, emails, phones, org, fields, search, xml_zstd FROM cards
                     WHERE book_id = ?1 AND name = ?2",
                    params![from, from_name],
                    |r| {
                        Ok(NewCard {
                            uid: r.get(0)?,
                            etag: r.get(1)?,
                            bytes: r.get(2)?,
                            version: r.get(3)?,
                            fn_lower: r.get(4)?,
                            emails_lower: r.get(5)?,
                            phones_lower: r.get(6)?,
                            org_lower: r.get(7)?,
                            fields_json: r.get(8)?,
                            search: r.get(9)?,
                            xml_zstd: r.get(10)?,
                        })
                    },
                )
                .optional()?;
            check_precondition(source.as_ref().map(|c| c.etag.as_str()), source_pre)?;
            let source = source.ok_or(Error::NotFound)?;
            let target_exists: bool = tx.query_row(
                "SELECT EXISTS (SELECT 1 FROM cards WHERE book_id = ?1 AND name = ?2)",
                params![to, to_name],
                |r| r.get(0),
            )?;
            if target_exists && !overwrite {
                return Err(Error::PreconditionFailed);
            }
            tx.execute("DELETE FROM cards WHERE book_id = ?1 AND name = ?2", params![from, from_name])?;
            record_change(tx, from, from_name, 3)?;
            upsert_card(tx, to, to_name, &source, target_exists)?;
            let etag = source.etag;
            Ok(if target_exists { PutOutcome::Updated { etag } } else { PutOutcome::Created { etag } })
        })
    }

    fn put_cards(&self, book: BookId, cards: &[(String, NewCard, Precondition)]) -> Result<Vec<PutOutcome>> {
        self.write(|tx| cards.iter().map(|(name, card, pre)| put_card_in(tx, book, name, card, pre)).collect())
    }

    fn card_index(&self, book: BookId) -> Result<Vec<CardKey>> {
        self.read(|c| {
            let mut stmt = c.prepare_cached("SELECT name, uid, etag, emails FROM cards WHERE book_id = ?1")?;
            let keys = stmt
                .query_map([book], |r| {
                    Ok(CardKey { name: r.get(0)?, uid: r.get(1)?, etag: r.get(2)?, emails: r.get(3)? })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(keys)
        })
    }

    fn refresh_search_columns(&self, project: &SearchProjection<'_>) -> Result<usize> {
        // In batches, each its own transaction: a 100,000-card database is not held in one write for seconds.
        const BATCH: i64 = 500;
        let (mut after, mut made) = (0_i64, 0_usize);
        loop {
            let (last, count) = self.write(|tx| {
                let rows = tx
                    .prepare_cached("SELECT id, vcard FROM cards WHERE id > ?1 ORDER BY id LIMIT ?2")?
                    .query_map(params![after, BATCH], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                let mut update = tx.prepare_cached(
                    "UPDATE cards SET fn = ?2, emails = ?3, phones = ?4, org = ?5, fields = ?6, search = ?7
                     WHERE id = ?1",
                )?;
                let mut count = 0;
                for (id, vcard) in &rows {
                    if let Some(c) = project(vcard) {
                        update.execute(params![
                            id,
                            c.fn_lower,
                            c.emails_lower,
                            c.phones_lower,
                            c.org_lower,
                            c.fields_json,
                            c.search
                        ])?;
                        count += 1;
                    }
                }
                Ok((rows.last().map(|(id, _)| *id), count))
            })?;
            made += count;
            match last {
                Some(id) => after = id,
                None => return Ok(made),
            }
        }
    }

    fn refresh_card_frames(&self, min_size: usize, make: &FrameMaker<'_>) -> Result<usize> {
        // Read and compressed in batches outside the write lock (compressing is most of the time), each batch
        // written in one transaction. A card rewritten in between keeps the frame its own write made (the ETag differs).
        const BATCH: i64 = 500;
        let (mut after, mut changed) = (0_i64, 0_usize);
        loop {
            let rows = self.read(|c| {
                Ok(c.prepare_cached(
                    "SELECT id, etag, vcard, xml_zstd FROM cards WHERE id > ?1 AND (size >= ?2 OR xml_zstd IS NOT NULL)
                     ORDER BY id LIMIT ?3",
                )?
                .query_map(params![after, min_size as i64, BATCH], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, Vec<u8>>(2)?,
                        r.get::<_, Option<Vec<u8>>>(3)?,
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?)
            })?;
            let Some(last) = rows.last().map(|row| row.0) else { return Ok(changed) };
            let updates: Vec<(i64, String, Option<Vec<u8>>)> = rows
                .into_iter()
                .filter_map(|(id, etag, text, stored)| {
                    let frame = make(&text);
                    (frame != stored).then_some((id, etag, frame))
                })
                .collect();
            if !updates.is_empty() {
                changed += self.write(|tx| {
                    let mut update = tx.prepare_cached("UPDATE cards SET xml_zstd = ?3 WHERE id = ?1 AND etag = ?2")?;
                    let mut count = 0;
                    for (id, etag, frame) in &updates {
                        count += update.execute(params![id, etag, frame])?;
                    }
                    Ok(count)
                })?;
            }
            after = last;
        }
    }

    fn card_by_uid(&self, book: BookId, uid: &str) -> Result<Option<Card>> {
        self.read(|c| {
            Ok(c.prepare_cached(&format!("SELECT {META_COLUMNS}, vcard FROM cards WHERE book_id = ?1 AND uid = ?2"))?
                .query_row(params![book, uid], |r| Ok(Card { meta: meta_from_row(r)?, vcard: r.get(7)? }))
                .optional()?)
        })
    }

    fn search_contacts(&self, query: &ContactQuery) -> Result<Vec<FoundCard>> {
        if query.books.is_empty() {
            return Ok(Vec::new());
        }
        let mut args: Vec<String> = Vec::new();
        let books = query.books.iter().map(|b| b.to_string()).collect::<Vec<_>>().join(",");
        args.push(format!("$.{}", query.sort.0));
        // Two steps, as for the query prefilter: the match, sort and page run over ids and sort keys only (a
        // sort that carried the vCards would copy every matching card, photos included), then the page's
        // cards are read by id.
        let mut sql =
            format!("SELECT id, COALESCE(json_extract(fields, ?1), '') AS k FROM cards WHERE book_id IN ({books})");
        for w in &query.words {
            args.push(w.clone());
            sql.push_str(&format!(" AND instr(search, ?{}) > 0", args.len()));
        }
        if let Some(f) = &query.filter {
            let mut cond = String::new();
            let mut extra = Vec::new();
            // field_filter_sql numbers its parameters after the ones already used.
            let offset = args.len();
            field_filter_sql(f, &mut cond, &mut extra);
            let renumbered = renumber(&cond, offset);
            args.extend(extra);
            sql.push_str(&format!(" AND {renumbered}"));
        }
        let desc = query.sort.1;
        if let Some((key, id)) = &query.after {
            args.push(key.clone());
            let k = args.len();
            args.push(id.to_string());
            let i = args.len();
            let cmp = if desc { "<" } else { ">" };
            sql.push_str(&format!(" AND (k, id) {cmp} (?{k}, CAST(?{i} AS INTEGER))"));
        }
        let dir = if desc { "DESC" } else { "ASC" };
        sql.push_str(&format!(" ORDER BY k {dir}, id {dir}"));
        if let Some(limit) = query.limit {
            sql.push_str(&format!(" LIMIT {limit}"));
        }
        self.read(|c| {
            let tx = c.unchecked_transaction()?;
            let values: Vec<&dyn rusqlite::ToSql> = args.iter().map(|a| a as &dyn rusqlite::ToSql).collect();
            let page = tx
                .prepare_cached(&sql)?
                .query_map(values.as_slice(), |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut stmt =
                tx.prepare_cached(&format!("SELECT book_id, {META_COLUMNS}, vcard FROM cards WHERE id = ?1"))?;
            let mut rows = Vec::with_capacity(page.len());
            for (id, sort_key) in page {
                let found = stmt
                    .query_row([id], move |r| {
                        Ok(FoundCard {
                            id,
                            book: r.get(0)?,
                            meta: CardMeta {
                                name: r.get(1)?,
                                uid: r.get(2)?,
                                etag: r.get(3)?,
                                size: r.get(4)?,
                                version: r.get(5)?,
                                created_at: r.get(6)?,
                                modified_at: r.get(7)?,
                            },
                            sort_key,
                            vcard: r.get(8)?,
                        })
                    })
                    .optional()?;
                rows.extend(found);
            }
            Ok(rows)
        })
    }

    fn views(&self, username: &str) -> Result<Vec<SavedView>> {
        self.read(|c| {
            let mut stmt = c.prepare(
                "SELECT v.id, v.name, v.definition FROM views v JOIN users u ON u.id = v.user_id WHERE u.username = ?1 ORDER BY v.name",
            )?;
            let views = stmt
                .query_map([username], |r| Ok(SavedView { id: r.get(0)?, name: r.get(1)?, definition: r.get(2)? }))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(views)
        })
    }

    fn save_view(&self, username: &str, id: Option<i64>, name: &str, definition: &str) -> Result<SavedView> {
        self.write(|tx| {
            let user = user_id(tx, username)?;
            let taken: Option<i64> = tx
                .query_row("SELECT id FROM views WHERE user_id = ?1 AND name = ?2", params![user, name], |r| r.get(0))
                .optional()?;
            if taken.is_some_and(|t| Some(t) != id) {
                return Err(Error::AlreadyExists);
            }
            let id = match id {
                Some(id) => {
                    let n = tx.execute(
                        "UPDATE views SET name = ?3, definition = ?4 WHERE id = ?1 AND user_id = ?2",
                        params![id, user, name, definition],
                    )?;
                    if n == 0 {
                        return Err(Error::NotFound);
                    }
                    id
                }
                None => {
                    tx.execute(
                        "INSERT INTO views (user_id, name, definition, created_at) VALUES (?1, ?2, ?3, ?4)",
                        params![user, name, definition, now()],
                    )?;
                    tx.last_insert_rowid()
                }
            };
            Ok(SavedView { id, name: name.to_string(), definition: definition.to_string() })
        })
    }

    fn delete_view(&self, username: &str, id: i64) -> Result<bool> {
        self.write(|tx| {
            let user = user_id(tx, username)?;
            Ok(tx.execute("DELETE FROM views WHERE id = ?1 AND user_id = ?2", params![id, user])? > 0)
        })
    }

    fn book_revision(&self, book: BookId) -> Result<Revision> {
        self.read(|c| {
            c.prepare_cached("SELECT revision FROM addressbooks WHERE id = ?1")?
                .query_row([book], |r| r.get(0))
                .optional()?
                .ok_or(Error::NotFound)
        })
    }

    fn changes_since(&self, book: BookId, since: Revision, limit: Option<usize>) -> Result<Changes> {
        self.read(|c| {
            let current: Revision = c
                .prepare_cached("SELECT revision FROM addressbooks WHERE id = ?1")?
                .query_row([book], |r| r.get(0))
                .optional()?
                .ok_or(Error::NotFound)?;
            // SQLite returns the other columns from the row that holds MAX(revision): the latest change per name.
            let mut stmt = c.prepare_cached(
                "SELECT name, kind, MAX(revision) AS r FROM changes WHERE book_id = ?1 AND revision > ?2
                 GROUP BY name ORDER BY r LIMIT ?3",
            )?;
            let fetch = limit.map(|l| l as i64 + 1).unwrap_or(-1);
            let mut rows = stmt.query(params![book, since, fetch])?;
            let mut changes = Vec::new();
            let mut last_revision = since;
            let mut truncated = false;
            while let Some(row) = rows.next()? {
                if limit.is_some_and(|l| changes.len() >= l) {
                    truncated = true;
                    break;
                }
                let kind: i64 = row.get(1)?;
                changes.push(Change {
                    name: row.get(0)?,
                    kind: if kind == 3 { ChangeKind::Deleted } else { ChangeKind::Changed },
                });
                last_revision = row.get(2)?;
            }
            let revision = if truncated { last_revision } else { current };
            Ok(Changes { changes, revision, truncated })
        })
    }

    fn file(&self, owner: &str, path: &str) -> Result<Option<FileEntry>> {
        if path.is_empty() {
            return Ok(self.user(owner)?.map(|u| FileEntry {
                path: String::new(),
                is_collection: true,
                size: 0,
                etag: None,
                content_type: None,
                created_at: u.created_at,
                modified_at: u.created_at,
            }));
        }
        self.read(|c| {
            Ok(c.prepare_cached(&format!(
                "SELECT {FILE_COLUMNS} FROM files f JOIN users u ON u.id = f.owner_id WHERE u.username = ?1 AND f.path = ?2"
            ))?
            .query_row(params![owner, path], file_from_row)
            .optional()?)
        })
    }

    fn file_content(&self, owner: &str, path: &str) -> Result<Option<Vec<u8>>> {
        self.read(|c| {
            Ok(c.prepare_cached(
                "SELECT content FROM files f JOIN users u ON u.id = f.owner_id WHERE u.username = ?1 AND f.path = ?2",
            )?
            .query_row(params![owner, path], |r| r.get::<_, Option<Vec<u8>>>(0))
            .optional()?
            .flatten())
        })
    }

    fn file_children(&self, owner: &str, path: &str) -> Result<Vec<FileEntry>> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {FILE_COLUMNS} FROM files f JOIN users u ON u.id = f.owner_id
                 WHERE u.username = ?1 AND f.parent = ?2 ORDER BY f.path"
            ))?;
            let rows = stmt.query_map(params![owner, path], file_from_row)?.collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
    }

    fn put_file(
        &self,
        owner: &str,
        path: &str,
        content: &[u8],
        content_type: &str,
        pre: &Precondition,
    ) -> Result<PutOutcome> {
        self.write(|tx| {
            let owner_id = user_id(tx, owner)?;
            if !folder_exists(tx, owner_id, parent_of(path))? {
                return Err(Error::Conflict("the parent folder does not exist".into()));
            }
            let existing: Option<(bool, Option<String>)> = tx
                .query_row(
                    "SELECT is_collection, etag FROM files WHERE owner_id = ?1 AND path = ?2",
                    params![owner_id, path],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            if matches!(existing, Some((true, _))) {
                return Err(Error::Conflict("a folder exists at this path".into()));
            }
            let existing_etag = existing.as_ref().map(|(_, e)| e.clone().unwrap_or_default());
            check_precondition(existing_etag.as_deref(), pre)?;
            let etag = crate::vcard::etag_of(content);
            let ts = now();
            tx.execute(
                "INSERT INTO files (owner_id, path, parent, is_collection, content, content_type, etag, size, created_at, modified_at)
                 VALUES (?1, ?2, ?3, 0, ?4, ?5, ?6, ?7, ?8, ?8)
                 ON CONFLICT (owner_id, path) DO UPDATE SET content = excluded.content,
                     content_type = excluded.content_type, etag = excluded.etag, size = excluded.size,
                     modified_at = excluded.modified_at",
                params![owner_id, path, parent_of(path), content, content_type, etag, content.len() as i64, ts],
            )?;
            Ok(if existing.is_some() { PutOutcome::Updated { etag } } else { PutOutcome::Created { etag } })
        })
    }

    fn make_folder(&self, owner: &str, path: &str) -> Result<()> {
        self.write(|tx| {
            let owner_id = user_id(tx, owner)?;
            let taken: bool = tx.query_row(
                "SELECT EXISTS (SELECT 1 FROM files WHERE owner_id = ?1 AND path = ?2)",
                params![owner_id, path],
                |r| r.get(0),
            )?;
            if taken || path.is_empty() {
                return Err(Error::AlreadyExists);
            }
            if !folder_exists(tx, owner_id, parent_of(path))? {
                return Err(Error::Conflict("the parent folder does not exist".into()));
            }
            let ts = now();
            tx.execute(
                "INSERT INTO files (owner_id, path, parent, is_collection, created_at, modified_at) VALUES (?1, ?2, ?3, 1, ?4, ?4)",
                params![owner_id, path, parent_of(path), ts],
            )?;
            Ok(())
        })
    }

    fn delete_file(&self, owner: &str, path: &str) -> Result<()> {
        self.write(|tx| {
            let owner_id = user_id(tx, owner)?;
            if delete_subtree(tx, owner_id, path)? == 0 {
                return Err(Error::NotFound);
            }
            Ok(())
        })
    }

    fn transfer_file(&self, owner: &str, from: &str, to: &str, how: Transfer, overwrite: bool) -> Result<PutOutcome> {
        self.write(|tx| {
            let owner_id = user_id(tx, owner)?;
            let source_is_folder: bool = tx
                .query_row(
                    "SELECT is_collection FROM files WHERE owner_id = ?1 AND path = ?2",
                    params![owner_id, from],
                    |r| r.get(0),
                )
                .optional()?
                .ok_or(Error::NotFound)?;
            if to == from || to.starts_with(&format!("{from}/")) {
                return Err(Error::Conflict("cannot copy or move a folder into itself".into()));
            }
            if !folder_exists(tx, owner_id, parent_of(to))? {
                return Err(Error::Conflict("the destination's parent folder does not exist".into()));
            }
            let target_exists = delete_subtree_if(tx, owner_id, to, overwrite)?;
            // Rows to carry over: the source, and everything below it unless this is a shallow copy.
            let recursive = matches!(how, Transfer::Move | Transfer::Copy { recursive: true }) || !source_is_folder;
            let mut stmt = tx.prepare(
                "SELECT id, path, is_collection, content, content_type, etag, size, created_at FROM files
                 WHERE owner_id = ?1 AND (path = ?2 OR (?4 AND substr(path, 1, length(?3)) = ?3)) ORDER BY length(path)",
            )?;
            type Row = (i64, String, bool, Option<Vec<u8>>, Option<String>, Option<String>, i64, i64);
            let rows: Vec<Row> = stmt
                .query_map(params![owner_id, from, below(from), recursive], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            drop(stmt);
            let ts = now();
            for (old_id, path, is_collection, content, content_type, etag, size, created) in rows {
                let new_path = format!("{to}{}", &path[from.len()..]);
                tx.execute(
                    "INSERT INTO files (owner_id, path, parent, is_collection, content, content_type, etag, size, created_at, modified_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                    params![owner_id, new_path, parent_of(&new_path), is_collection, content, content_type, etag, size,
                        if how == Transfer::Move { created } else { ts }, ts],
                )?;
                let new_id = tx.last_insert_rowid();
                tx.execute(
                    "INSERT INTO file_properties (file_id, namespace, name, xml) SELECT ?2, namespace, name, xml
                     FROM file_properties WHERE file_id = ?1",
                    params![old_id, new_id],
                )?;
            }
            if how == Transfer::Move {
                delete_subtree(tx, owner_id, from)?;
            }
            let etag = String::new();
            Ok(if target_exists { PutOutcome::Updated { etag } } else { PutOutcome::Created { etag } })
        })
    }

    fn file_properties(&self, owner: &str, path: &str) -> Result<Vec<DeadProperty>> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT p.namespace, p.name, p.xml FROM file_properties p JOIN files f ON f.id = p.file_id
                 JOIN users u ON u.id = f.owner_id WHERE u.username = ?1 AND f.path = ?2 ORDER BY p.namespace, p.name",
            )?;
            let props = stmt
                .query_map(params![owner, path], |r| {
                    Ok(DeadProperty { namespace: r.get(0)?, name: r.get(1)?, xml: r.get(2)? })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(props)
        })
    }

    fn patch_file(&self, owner: &str, path: &str, patch: &[BookPatch]) -> Result<()> {
        self.write(|tx| {
            let owner_id = user_id(tx, owner)?;
            let file_id: i64 = tx
                .query_row("SELECT id FROM files WHERE owner_id = ?1 AND path = ?2", params![owner_id, path], |r| r.get(0))
                .optional()?
                .ok_or(Error::NotFound)?;
            for p in patch {
                match p {
                    BookPatch::SetDead(d) => {
                        tx.execute(
                            "INSERT OR REPLACE INTO file_properties (file_id, namespace, name, xml) VALUES (?1, ?2, ?3, ?4)",
                            params![file_id, d.namespace, d.name, d.xml],
                        )?;
                    }
                    BookPatch::RemoveDead { namespace, name } => {
                        tx.execute(
                            "DELETE FROM file_properties WHERE file_id = ?1 AND namespace = ?2 AND name = ?3",
                            params![file_id, namespace, name],
                        )?;
                    }
                    BookPatch::DisplayName(_) | BookPatch::Description(_) => {
                        return Err(Error::Internal("live book properties do not apply to files".into()));
                    }
                }
            }
            Ok(())
        })
    }

    fn audit(&self, actor: &str, action: &str, target: &str, detail: &str) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO audit (at, actor, action, target, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![now(), actor, action, target, detail],
            )?;
            Ok(())
        })
    }

    fn audit_records(&self, limit: usize) -> Result<Vec<AuditRecord>> {
        self.read(|c| {
            let mut stmt =
                c.prepare("SELECT id, at, actor, action, target, detail FROM audit ORDER BY id DESC LIMIT ?1")?;
            let records = stmt
                .query_map([limit as i64], |r| {
                    Ok(AuditRecord {
                        id: r.get(0)?,
                        at: r.get(1)?,
                        actor: r.get(2)?,
                        action: r.get(3)?,
                        target: r.get(4)?,
                        detail: r.get(5)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(records)
        })
    }

    fn setting(&self, key: &str) -> Result<Option<String>> {
        self.read(|c| Ok(c.query_row("SELECT value FROM settings WHERE key = ?1", [key], |r| r.get(0)).optional()?))
    }

    fn set_setting(&self, key: &str, value: &str) -> Result<()> {
        self.write(|tx| {
            tx.execute("INSERT OR REPLACE INTO settings (key, value) VALUES (?1, ?2)", params![key, value])?;
            Ok(())
        })
    }

    fn integrity_check(&self) -> Result<Vec<String>> {
        self.read(|c| {
            let mut stmt = c.prepare("PRAGMA integrity_check")?;
            let lines = stmt.query_map([], |r| r.get::<_, String>(0))?.collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(lines)
        })
    }

    fn backup_to(&self, path: &Path) -> Result<()> {
        self.read(|c| {
            c.backup(rusqlite::MAIN_DB, path, None::<fn(rusqlite::backup::Progress)>)?;
            Ok(())
        })
    }

    fn checkpoint(&self) -> Result<()> {
        let conn = self.writer.lock().map_err(|_| poisoned())?;
        // The first column is 1 when a reader kept the checkpoint from finishing (after the busy timeout).
        let busy: i64 = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))?;
        if busy != 0 {
            return Err(Error::Unavailable("a reader kept the WAL from being checkpointed".into()));
        }
        Ok(())
    }

    /// WAL readers never wait for the writer, and a row by key is a few pages from the page cache; but only
    /// with an idle reader at hand. Without one, the read would open the database file on an async worker,
    /// so it goes to the blocking pool instead. (Another thread may take the last idle reader between this
    /// check and the read, which then opens one on the worker: well under a millisecond, and rare.)
    fn point_reads_are_local(&self) -> bool {
        // try_lock: never wait on the async worker; a contended pool means the blocking pool.
        let idle = |pool: &Mutex<Vec<Connection>>| pool.try_lock().is_ok_and(|p| !p.is_empty());
        idle(&self.readers) || idle(&self.spare_readers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn card(uid: &str, body: &str) -> NewCard {
        NewCard {
            uid: uid.into(),
            etag: format!("e-{body}"),
            bytes: body.as_bytes().to_vec(),
            version: "4.0".into(),
            fn_lower: String::new(),
            emails_lower: String::new(),
            phones_lower: String::new(),
            org_lower: String::new(),
            fields_json: "{}".into(),
            search: String::new(),
            xml_zstd: None,
        }
    }

    fn store_with_book() -> (tempfile::TempDir, SqliteStore, BookId) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("k.db"), false).expect("open");
        store.create_user("alice", "Alice", "hash").expect("user");
        let book = store.create_book("alice", "contacts", Some("Contacts"), None, &[], true).expect("book");
        (dir, store, book.id)
    }

    #[test]
    fn migration_5_puts_the_read_indexes_in_insertion_order_also_in_a_version_4_database() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("k.db");
        let indexes = |c: &Connection| -> Vec<String> {
            let mut stmt = c
                .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND name IN ('cards_listing', 'cards_search') ORDER BY name")
                .expect("prepare");
            stmt.query_map([], |r| r.get(0)).expect("query").collect::<rusqlite::Result<_>>().expect("rows")
        };
        // A database as a version-4 build left it: migrations 1-4, no read indexes.
        {
            let c = Connection::open(&path).expect("open");
            c.execute_batch(&format!("{SCHEMA_V1} {SCHEMA_V2} {SCHEMA_V3} {SCHEMA_V4} PRAGMA user_version = 4;"))
                .expect("v4 schema");
            assert!(indexes(&c).is_empty());
        }
        // ...or as the builds that made the read indexes at open left it: ordered by name.
        Connection::open(&path)
            .expect("open")
            .execute_batch("CREATE INDEX cards_listing ON cards (book_id, name, etag); CREATE INDEX cards_search ON cards (book_id, search);")
            .expect("old indexes");
        drop(SqliteStore::open(&path, false).expect("migrate"));
        let c = Connection::open(&path).expect("reopen");
        assert_eq!(c.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0)).expect("version"), 7);
        assert_eq!(indexes(&c), ["cards_listing", "cards_search"]);
        // Both are replaced by the ones in insertion order.
        let sql = |name: &str| -> String {
            c.query_row("SELECT sql FROM sqlite_master WHERE name = ?1", [name], |r| r.get(0)).expect("index sql")
        };
        assert!(sql("cards_listing").contains("(book_id, id, name,"), "{}", sql("cards_listing"));
        assert!(sql("cards_search").contains("(book_id, id, search)"), "{}", sql("cards_search"));
        drop(SqliteStore::open(&path, false).expect("reopen store"));
        assert_eq!(indexes(&Connection::open(&path).expect("reopen")), ["cards_listing", "cards_search"]);
    }

    #[test]
    fn migration_6_keeps_existing_books_tokens_and_new_books_never_take_over_a_deleted_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("k.db");
        {
            let c = Connection::open(&path).expect("open");
            c.execute_batch(&format!(
                "{SCHEMA_V1} {SCHEMA_V2} {SCHEMA_V3} {SCHEMA_V4} {SCHEMA_V5} PRAGMA user_version = 5;
                 INSERT INTO users (id, username, display_name, password_hash, created_at) VALUES (1, 'al', 'Al', 'x', 0);
                 INSERT INTO addressbooks (id, owner_id, segment, revision, created_at) VALUES (7, 1, 'old', 3, 0);"
            ))
            .expect("a version-5 database with one book");
        }
        let s = SqliteStore::open(&path, false).expect("migrate");
        // The book from before keeps its id as key: the tokens its clients hold (".../sync/7/3") stay valid.
        let old = s.book_in_home("al", "old").expect("read").expect("book");
        assert_eq!((old.id, old.sync_key.as_str()), (7, "7"));
        // A book made now gets a random key; deleted and made again (SQLite gives it the same row id), it gets
        // another one.
        let made = s.create_book("al", "new", None, None, &[], false).expect("create");
        assert_eq!(made.sync_key.len(), 16, "{}", made.sync_key);
        assert!(made.sync_key.chars().all(|c| c.is_ascii_hexdigit()), "{}", made.sync_key);
        s.delete_book(made.id).expect("delete");
        let again = s.create_book("al", "new", None, None, &[], false).expect("create again");
        assert_eq!(again.id, made.id, "SQLite reuses the deleted book's row id");
        assert_ne!(again.sync_key, made.sync_key);
        assert_eq!(s.book_in_home("al", "new").expect("read").expect("book").sync_key, again.sync_key);
        // A restore gives every book a new key.
        s.reissue_sync_keys().expect("reissue");
        let after: Vec<String> = s.books_in_home("al").expect("books").into_iter().map(|b| b.sync_key).collect();
        assert_eq!(after.len(), 2);
        assert!(!after.contains(&"7".to_string()) && !after.contains(&again.sync_key), "{after:?}");
    }

    #[test]
    fn put_checks_preconditions_and_uid_conflicts() {
        let (_dir, s, b) = store_with_book();
        assert!(matches!(
            s.put_card(b, "a.vcf", &card("u1", "1"), &Precondition::MustNotExist),
            Ok(PutOutcome::Created { .. })
        ));
        assert!(matches!(
            s.put_card(b, "a.vcf", &card("u1", "2"), &Precondition::MustNotExist),
            Err(Error::PreconditionFailed)
        ));
        assert!(matches!(
            s.put_card(b, "a.vcf", &card("u1", "2"), &Precondition::EtagIn(vec!["nope".into()])),
            Err(Error::PreconditionFailed)
        ));
        assert!(matches!(
            s.put_card(b, "a.vcf", &card("u1", "2"), &Precondition::EtagIn(vec!["e-1".into()])),
            Ok(PutOutcome::Updated { .. })
        ));
        match s.put_card(b, "b.vcf", &card("u1", "3"), &Precondition::None) {
            Err(Error::UidConflict(name)) => assert_eq!(name, "a.vcf"),
            other => panic!("expected a UID conflict, got {other:?}"),
        }
        assert!(matches!(
            s.put_card(b, "x.vcf", &card("u9", "9"), &Precondition::MustExist),
            Err(Error::PreconditionFailed)
        ));
    }

    #[test]
    fn changes_since_lists_each_name_once_and_truncates_at_a_real_revision() {
        let (_dir, s, b) = store_with_book();
        for i in 0..5 {
            s.put_card(b, &format!("{i}.vcf"), &card(&format!("u{i}"), &i.to_string()), &Precondition::None)
                .expect("put");
        }
        let start = s.book_revision(b).expect("rev");
        s.put_card(b, "1.vcf", &card("u1", "1b"), &Precondition::None).expect("update");
        s.put_card(b, "1.vcf", &card("u1", "1c"), &Precondition::None).expect("update");
        s.delete_card(b, "2.vcf", &Precondition::None).expect("delete");
        let all = s.changes_since(b, start, None).expect("changes");
        assert_eq!(all.changes.len(), 2);
        assert_eq!(all.revision, start + 3);
        assert!(matches!(all.changes[1].kind, ChangeKind::Deleted));

        let first = s.changes_since(b, 0, Some(3)).expect("page");
        assert!(first.truncated);
        assert_eq!(first.changes.len(), 3);
        let rest = s.changes_since(b, first.revision, None).expect("rest");
        let mut names: Vec<_> = first.changes.iter().chain(rest.changes.iter()).map(|c| c.name.clone()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names, ["0.vcf", "1.vcf", "2.vcf", "3.vcf", "4.vcf"]);
    }

    #[test]
    fn shared_books_appear_after_own_books() {
        let (_dir, s, b) = store_with_book();
        s.create_user("bob", "Bob", "hash").expect("bob");
        s.create_book("bob", "contacts", None, None, &[], true).expect("bob's book");
        let segment = s.share_book(b, "bob", false).expect("share");
        let books = s.books_in_home("bob").expect("books");
        assert_eq!(books.len(), 2);
        assert!(books[0].is_default && !books[0].shared);
        assert!(books[1].shared && !books[1].writable && books[1].segment == segment);
        assert_eq!(s.book_in_home("bob", &segment).expect("lookup").map(|v| v.id), Some(b));
    }

    /// Reads nested `depth` deep (each holding its connection, as concurrent answers do) and returns the
    /// page cache size each level's connection had.
    fn nested_cache_sizes(store: &SqliteStore, depth: usize) -> Vec<i64> {
        if depth == 0 {
            return Vec::new();
        }
        store
            .read(|conn| {
                let size: i64 = conn.query_row("PRAGMA cache_size", [], |r| r.get(0))?;
                let mut sizes = vec![size];
                sizes.extend(nested_cache_sizes(store, depth - 1));
                Ok(sizes)
            })
            .expect("read")
    }

    #[test]
    fn readers_beyond_the_pool_get_a_small_cache_and_are_reused_within_limits() {
        let (dir, mut store, _) = store_with_book();
        let idle = |pool: &Mutex<Vec<Connection>>| pool.lock().expect("pool").len();

        let sizes = nested_cache_sizes(&store, READER_POOL_MAX + 3);
        assert_eq!(sizes[..READER_POOL_MAX], vec![-PAGE_CACHE_KIB; READER_POOL_MAX][..], "pooled readers keep 16 MB");
        assert_eq!(sizes[READER_POOL_MAX..], [-SPARE_READER_CACHE_KIB; 3][..], "spare readers get 2 MB");
        assert_eq!((idle(&store.readers), idle(&store.spare_readers)), (READER_POOL_MAX, 3));
        assert_eq!(store.pooled_readers.load(Ordering::Acquire), READER_POOL_MAX);
        // The same again reuses both pools (new spares would leave 6 idle)...
        nested_cache_sizes(&store, READER_POOL_MAX + 3);
        assert_eq!((idle(&store.readers), idle(&store.spare_readers)), (READER_POOL_MAX, 3));
        // ...and spares beyond their pool's limit are closed.
        let sizes = nested_cache_sizes(&store, READER_POOL_MAX + SPARE_POOL_MAX + 2);
        assert_eq!(sizes.iter().filter(|&&s| s == -PAGE_CACHE_KIB).count(), READER_POOL_MAX);
        assert_eq!((idle(&store.readers), idle(&store.spare_readers)), (READER_POOL_MAX, SPARE_POOL_MAX));

        // A point read runs inline only with an idle reader at hand.
        assert!(store.point_reads_are_local());
        let take_all = |pool: &Mutex<Vec<Connection>>| std::mem::take(&mut *pool.lock().expect("pool"));
        let (busy, busy_spares) = (take_all(&store.readers), take_all(&store.spare_readers));
        assert!(!store.point_reads_are_local(), "no idle reader: the blocking pool, not a new file on the worker");
        store.spare_readers.lock().expect("pool").extend(busy_spares);
        assert!(store.point_reads_are_local(), "an idle spare will do");
        store.readers.lock().expect("pool").extend(busy);

        // A read that panics does not give its connection back, but frees its slot for a new one.
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = store.read(|_| -> Result<()> { panic!("a bug inside a read") });
        }));
        assert!(panicked.is_err());
        assert_eq!(idle(&store.readers), READER_POOL_MAX - 1);
        assert_eq!(store.pooled_readers.load(Ordering::Acquire), READER_POOL_MAX - 1);
        assert_eq!(nested_cache_sizes(&store, READER_POOL_MAX), vec![-PAGE_CACHE_KIB; READER_POOL_MAX]);

        // A reader that cannot be opened frees its slot too.
        take_all(&store.readers);
        store.pooled_readers.store(0, Ordering::Release);
        let path = std::mem::replace(&mut store.path, dir.path().join("missing").join("k.db"));
        assert!(store.read(|_| Ok(())).is_err());
        assert_eq!(store.pooled_readers.load(Ordering::Acquire), 0);
        store.path = path;
        assert_eq!(nested_cache_sizes(&store, 1), vec![-PAGE_CACHE_KIB]);
    }

    #[test]
    fn path_lookups_are_not_re_prepared_when_their_cached_statements_are_reused() {
        let (_dir, s, own) = store_with_book();
        s.create_user("bob", "Bob", "hash").expect("bob");
        let segment = s.share_book(own, "bob", false).expect("share");
        for _ in 0..5 {
            assert_eq!(s.book_in_home("alice", "contacts").expect("own").map(|b| b.id), Some(own));
            let shared = s.book_in_home("bob", &segment).expect("shared").expect("found");
            assert!(shared.id == own && shared.owner == "alice" && shared.segment == segment && !shared.writable);
            assert!(s.book_in_home("bob", "nothing").expect("missing").is_none());
        }
        s.read(|c| {
            for sql in [OWN_BOOK_BY_SEGMENT, SHARE_BY_SEGMENT, SHARED_BOOK_BY_ID] {
                let reprepared = c.prepare_cached(sql)?.get_status(rusqlite::StatementStatus::RePrepare);
                assert_eq!(reprepared, 0, "re-prepared on reuse: {sql}");
            }
            // The control: a join with a bound parameter is re-prepared on each reuse (if SQLite ever stops
            // doing that, the comment on OWN_BOOK_BY_SEGMENT can go).
            let join = "SELECT b.id FROM addressbooks b JOIN users u ON u.id = b.owner_id WHERE u.username = ?1";
            for _ in 0..3 {
                c.prepare_cached(join)?.query_row(["alice"], |_| Ok(()))?;
            }
            assert!(c.prepare_cached(join)?.get_status(rusqlite::StatementStatus::RePrepare) > 0);
            Ok(())
        })
        .expect("read");
    }
}
