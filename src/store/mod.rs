//! The storage interface: users, address books, cards, the change log and the audit trail, in domain words.
//!
//! Every write is one coarse operation that the backend runs as one transaction (check the precondition,
//! write, bump the book's revision, append to the change log), so the protocol code never sees SQL and a
//! PostgreSQL backend can implement the same trait. The trait is synchronous: async callers go through
//! [`blocking`], which moves the call onto tokio's blocking pool, or, for a read of one row by its key,
//! [`point_read`], which an embedded backend answers on the calling task.

mod records;
mod sqlite;

pub use records::{Author, ContactEvent, Integration, LocatedCard, NewEvent, Origin, Records};
pub use sqlite::SqliteStore;

use std::sync::Arc;

/// A change counter of one address book. Sync tokens and ctags are derived from it.
pub type Revision = i64;
pub type BookId = i64;
pub type UserId = i64;

#[derive(Debug, Clone)]
pub struct User {
    pub id: UserId,
    pub username: String,
    pub display_name: String,
    pub password_hash: String,
    pub disabled: bool,
    pub credential_generation: i64,
    pub created_at: i64,
}

/// An address book as seen from one user's home: their own, or one shared with them.
#[derive(Debug, Clone)]
pub struct BookView {
    pub id: BookId,
    pub owner: String,
    /// The book's own URL segment in its owner's home.
    pub owner_segment: String,
    /// The segment under which this user sees it (differs from `owner_segment` for shared books).
    pub segment: String,
    pub display_name: Option<String>,
    pub description: Option<String>,
    pub revision: Revision,
    pub is_default: bool,
    pub writable: bool,
    pub shared: bool,
    pub created_at: i64,
    /// Names the book in its sync tokens and CTag; never reused by another book (schema_v6.sql).
    pub sync_key: String,
}

/// A dead property stored on a book: the client's XML element, serialized.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadProperty {
    pub namespace: String,
    pub name: String,
    pub xml: String,
}

/// One PROPPATCH instruction on a book. All instructions of one request are applied atomically.
#[derive(Debug, Clone)]
pub enum BookPatch {
    DisplayName(Option<String>),
    Description(Option<String>),
    SetDead(DeadProperty),
    RemoveDead { namespace: String, name: String },
}

/// Card metadata without the body, enough for listings and ETag checks.
#[derive(Debug, Clone)]
pub struct CardMeta {
    pub name: String,
    pub uid: String,
    pub etag: String,
    pub size: i64,
    pub version: String,
    pub created_at: i64,
    pub modified_at: i64,
}

#[derive(Debug, Clone)]
pub struct Card {
    pub meta: CardMeta,
    pub vcard: Vec<u8>,
}

/// What the vCard layer extracted from a card for storage and search.
#[derive(Debug, Clone)]
pub struct NewCard {
    pub uid: String,
    pub etag: String,
    pub bytes: Vec<u8>,
    pub version: String,
    pub fn_lower: String,
    pub emails_lower: String,
    pub phones_lower: String,
    pub org_lower: String,
    /// The folded contact columns as JSON (filters and sorting in the contact API).
    pub fields_json: String,
    /// The folded quick-search text.
    pub search: String,
    /// For a large card that does not compress much (a photo): its text as XML element content in one zstd
    /// frame, which answers coded in zstd send as it is (`body::card_xml_frame`).
    pub xml_zstd: Option<Vec<u8>>,
}

/// HTTP preconditions for a write, already parsed.
#[derive(Debug, Clone, PartialEq)]
pub enum Precondition {
    None,
    /// `If-None-Match: *`: only create.
    MustNotExist,
    /// `If-Match: *`: only overwrite.
    MustExist,
    /// `If-Match: "etag"` (one or more): only overwrite that version.
    EtagIn(Vec<String>),
    /// `If-None-Match: "etag"` (one or more): not over any of these versions (creating is fine).
    EtagNotIn(Vec<String>),
}

impl Precondition {
    /// Whether it holds for a resource with this ETag (`None`: there is none).
    pub fn holds_for(&self, existing_etag: Option<&str>) -> bool {
        match (self, existing_etag) {
            (Precondition::None, _) => true,
            (Precondition::MustNotExist, existing) => existing.is_none(),
            (Precondition::MustExist, existing) => existing.is_some(),
            (Precondition::EtagIn(tags), Some(etag)) => tags.iter().any(|t| t == etag),
            (Precondition::EtagIn(_), None) => false,
            (Precondition::EtagNotIn(tags), Some(etag)) => !tags.iter().any(|t| t == etag),
            (Precondition::EtagNotIn(_), None) => true,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum PutOutcome {
    Created { etag: String },
    Updated { etag: String },
}

#[derive(Debug, Clone, PartialEq)]
pub enum ChangeKind {
    Changed,
    Deleted,
}

#[derive(Debug, Clone)]
pub struct Change {
    pub name: String,
    pub kind: ChangeKind,
}

/// The answer to "what changed after revision R": each name once, with its latest state.
#[derive(Debug, Clone)]
pub struct Changes {
    pub changes: Vec<Change>,
    /// The revision the client is at after applying these changes (the book's current one unless truncated).
    pub revision: Revision,
    pub truncated: bool,
}

/// Fields a search can narrow on before the exact filter runs (see carddav::filter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexedField {
    Fn,
    Email,
    Phone,
    Org,
    Uid,
}

/// A conservative pre-filter: every card that can match the real filter satisfies it.
#[derive(Debug, Clone)]
pub enum Prefilter {
    All,
    Contains(IndexedField, String),
    /// The UID holds a character outside printable ASCII (only such a UID's `i;unicode-casemap` form can
    /// differ from its ASCII lower case).
    UidNotAscii,
    And(Vec<Prefilter>),
    Or(Vec<Prefilter>),
}

#[derive(Debug, Clone)]
pub struct AuditRecord {
    pub id: i64,
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub detail: String,
}

#[derive(Debug, Clone)]
pub struct ShareInfo {
    pub username: String,
    pub segment: String,
    pub writable: bool,
}

/// A file or folder in a user's WebDAV file area.
#[derive(Debug, Clone)]
pub struct FileEntry {
    /// Decoded segments joined by `/`, without leading or trailing slash; "" is the area's root.
    pub path: String,
    pub is_collection: bool,
    pub size: i64,
    pub etag: Option<String>,
    pub content_type: Option<String>,
    pub created_at: i64,
    pub modified_at: i64,
}

/// Copy or move of a file-area subtree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transfer {
    Copy { recursive: bool },
    Move,
}

/// A condition on the folded contact columns (see vcard::contact::COLUMNS); values arrive folded.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldFilter {
    And(Vec<FieldFilter>),
    Or(Vec<FieldFilter>),
    Not(Box<FieldFilter>),
    Condition { column: String, op: FieldOp, value: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldOp {
    Equals,
    Contains,
    StartsWith,
    IsEmpty,
    IsNotEmpty,
    Before,
    After,
}

/// A page request of the contact table.
#[derive(Debug, Clone, Default)]
pub struct ContactQuery {
    pub books: Vec<BookId>,
    /// Folded words that must all occur in the search text.
    pub words: Vec<String>,
    pub filter: Option<FieldFilter>,
    /// Column to sort by (folded value) and whether descending.
    pub sort: (String, bool),
    /// Continue after this (sort value, card id).
    pub after: Option<(String, i64)>,
    pub limit: Option<usize>,
}

#[derive(Debug, Clone)]
pub struct FoundCard {
    pub id: i64,
    pub book: BookId,
    pub meta: CardMeta,
    pub vcard: Vec<u8>,
    pub sort_key: String,
}

/// Identity of a card for import matching.
#[derive(Debug, Clone)]
pub struct CardKey {
    pub name: String,
    pub uid: String,
    pub etag: String,
    /// E-mails in `vcard::unicode_casemap` form, newline-separated.
    pub emails: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SavedView {
    pub id: i64,
    pub name: String,
    pub definition: String,
}

#[derive(Debug)]
pub enum Error {
    NotFound,
    /// If-Match / If-None-Match did not hold.
    PreconditionFailed,
    /// Another card in the book has this UID; carries the existing resource name.
    UidConflict(String),
    /// A username or book segment is taken.
    AlreadyExists,
    /// The operation needs something that is missing or in the way (a parent folder): 409.
    Conflict(String),
    /// The database refuses writes (disk full, read-only file): 507/503, reads go on.
    Unavailable(String),
    Internal(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::NotFound => write!(f, "not found"),
            Error::PreconditionFailed => write!(f, "precondition failed"),
            Error::UidConflict(name) => write!(f, "UID already used by {name}"),
            Error::AlreadyExists => write!(f, "already exists"),
            Error::Conflict(why) => write!(f, "conflict: {why}"),
            Error::Unavailable(why) => write!(f, "storage unavailable: {why}"),
            Error::Internal(why) => write!(f, "storage error: {why}"),
        }
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

/// What a read hands over of each card besides its metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyRead {
    None,
    Text,
    /// The zstd frame where one is stored (`NewCard::xml_zstd`), else the text: for answers coded in zstd
    /// that send the card as stored. The text of a card with a frame is then not read at all.
    XmlZstdOrText,
}

/// A card's content as a read hands it to its sink.
#[derive(Debug, Clone, Copy)]
pub enum CardBody<'a> {
    None,
    Text(&'a [u8]),
    /// The card's text, escaped as XML element content, in one zstd frame.
    XmlZstd(&'a [u8]),
}

impl<'a> CardBody<'a> {
    pub fn text(self) -> Option<&'a [u8]> {
        match self {
            CardBody::Text(text) => Some(text),
            CardBody::None | CardBody::XmlZstd(_) => None,
        }
    }
}

/// Receives cards one at a time, so that large listings are streamed and never held whole.
/// Returning `false` stops the iteration (the client went away).
pub type CardSink<'a> = dyn FnMut(&CardMeta, CardBody<'_>) -> bool + 'a;

/// A card's text → the card as it would be stored now (only its search columns are used), or None to leave
/// the card as it is.
pub type SearchProjection<'a> = dyn Fn(&[u8]) -> Option<NewCard> + 'a;

/// A card's text → the zstd frame to store with it (`NewCard::xml_zstd`), or None for a card sent without one.
pub type FrameMaker<'a> = dyn Fn(&[u8]) -> Option<Vec<u8>> + 'a;

pub trait Store: Records + Send + Sync {
    // --- users ---
    fn create_user(&self, username: &str, display_name: &str, password_hash: &str) -> Result<User>;
    fn user(&self, username: &str) -> Result<Option<User>>;
    fn users(&self) -> Result<Vec<User>>;
    /// Deletes the user with their books (cascade). Returns false when there was no such user.
    fn delete_user(&self, username: &str) -> Result<bool>;
    /// Replaces the password hash and bumps the credential generation.
    fn set_password_hash(&self, username: &str, password_hash: &str) -> Result<User>;
    fn set_disabled(&self, username: &str, disabled: bool) -> Result<User>;

    // --- address books ---
    /// The books in a user's home: their default book first, then their own by name, then shared ones.
    fn books_in_home(&self, username: &str) -> Result<Vec<BookView>>;
    fn book_in_home(&self, username: &str, segment: &str) -> Result<Option<BookView>>;
    fn create_book(
        &self,
        owner: &str,
        segment: &str,
        display_name: Option<&str>,
        description: Option<&str>,
        dead: &[DeadProperty],
        is_default: bool,
    ) -> Result<BookView>;
    /// Gives every book a new sync key, so that the sync tokens and CTags issued before are refused and
    /// clients resync (after a restore, whose database clients did not see last).
    fn reissue_sync_keys(&self) -> Result<()>;
    fn delete_book(&self, book: BookId) -> Result<()>;
    fn patch_book(&self, book: BookId, patch: &[BookPatch]) -> Result<()>;
    fn dead_properties(&self, book: BookId) -> Result<Vec<DeadProperty>>;
    /// Storage used by the book's cards, in bytes.
    fn book_size(&self, book: BookId) -> Result<i64>;

    // --- sharing ---
    fn share_book(&self, book: BookId, with_user: &str, writable: bool) -> Result<String>;
    fn unshare_book(&self, book: BookId, with_user: &str) -> Result<bool>;
    fn shares(&self, book: BookId) -> Result<Vec<ShareInfo>>;

    // --- cards ---
    fn card(&self, book: BookId, name: &str) -> Result<Option<Card>>;
    fn card_meta(&self, book: BookId, name: &str) -> Result<Option<CardMeta>>;
    /// Streams every card of a book in the order they were added.
    fn for_each_card(&self, book: BookId, body: BodyRead, sink: &mut CardSink<'_>) -> Result<()>;
    /// Streams the named cards that exist, in the order asked; missing names are skipped.
    fn for_each_named_card(
        &self,
        book: BookId,
        names: &[String],
        body: BodyRead,
        sink: &mut CardSink<'_>,
    ) -> Result<()>;
    /// Streams the cards that satisfy the pre-filter, with their text.
    fn for_each_candidate(&self, book: BookId, prefilter: &Prefilter, sink: &mut CardSink<'_>) -> Result<()>;
    fn put_card(&self, book: BookId, name: &str, card: &NewCard, pre: &Precondition) -> Result<PutOutcome>;
    fn delete_card(&self, book: BookId, name: &str, pre: &Precondition) -> Result<()>;
    /// Moves a card between books (or renames it) in one transaction; both change logs record it.
    /// `source` is the client's If-Match / If-None-Match, checked against the card being moved.
    fn move_card(
        &self,
        from: BookId,
        from_name: &str,
        to: BookId,
        to_name: &str,
        overwrite: bool,
        source: &Precondition,
    ) -> Result<PutOutcome>;

    /// Writes several cards in one transaction: all or none (imports).
    fn put_cards(&self, book: BookId, cards: &[(String, NewCard, Precondition)]) -> Result<Vec<PutOutcome>>;
    fn card_index(&self, book: BookId) -> Result<Vec<CardKey>>;
    fn card_by_uid(&self, book: BookId, uid: &str) -> Result<Option<Card>>;
    /// Makes every card's search columns (`NewCard`'s `*_lower`, `fields_json` and `search`) again from its
    /// stored text with `project` (None leaves a card as it is), for when the folding they hold changed;
    /// returns how many were made. Not a change of any card: ETags, revisions and sync tokens stay.
    fn refresh_search_columns(&self, project: &SearchProjection<'_>) -> Result<usize>;
    /// Makes the stored frame (`NewCard::xml_zstd`) of every card of at least `min_size` bytes, and of every
    /// card that has one, again with `make`, for a database written before frames were stored or with other
    /// parameters; returns how many frames were set, changed or dropped. Not a change of any card.
    fn refresh_card_frames(&self, min_size: usize, make: &FrameMaker<'_>) -> Result<usize>;
    /// One page of the contact table across books, in sort order.
    fn search_contacts(&self, query: &ContactQuery) -> Result<Vec<FoundCard>>;

    // --- saved views ---
    fn views(&self, username: &str) -> Result<Vec<SavedView>>;
    fn save_view(&self, username: &str, id: Option<i64>, name: &str, definition: &str) -> Result<SavedView>;
    fn delete_view(&self, username: &str, id: i64) -> Result<bool>;

    // --- sync ---
    fn book_revision(&self, book: BookId) -> Result<Revision>;
    fn changes_since(&self, book: BookId, since: Revision, limit: Option<usize>) -> Result<Changes>;

    // --- the WebDAV file area (documents), one tree per user ---
    fn file(&self, owner: &str, path: &str) -> Result<Option<FileEntry>>;
    fn file_content(&self, owner: &str, path: &str) -> Result<Option<Vec<u8>>>;
    fn file_children(&self, owner: &str, path: &str) -> Result<Vec<FileEntry>>;
    /// Creates or replaces a file; the parent folder must exist (else Conflict).
    fn put_file(
        &self,
        owner: &str,
        path: &str,
        content: &[u8],
        content_type: &str,
        pre: &Precondition,
    ) -> Result<PutOutcome>;
    /// Creates a folder; AlreadyExists if the path is taken, Conflict if the parent is missing.
    fn make_folder(&self, owner: &str, path: &str) -> Result<()>;
    /// Deletes a file or a folder with everything below it.
    fn delete_file(&self, owner: &str, path: &str) -> Result<()>;
    /// Copies or moves a subtree (with dead properties); PreconditionFailed when the destination exists and
    /// `overwrite` is false.
    fn transfer_file(&self, owner: &str, from: &str, to: &str, how: Transfer, overwrite: bool) -> Result<PutOutcome>;
    fn file_properties(&self, owner: &str, path: &str) -> Result<Vec<DeadProperty>>;
    /// Applies dead-property changes atomically (DisplayName/Description patches are stored as dead ones).
    fn patch_file(&self, owner: &str, path: &str, patch: &[BookPatch]) -> Result<()>;

    // --- audit and settings ---
    fn audit(&self, actor: &str, action: &str, target: &str, detail: &str) -> Result<()>;
    fn audit_records(&self, limit: usize) -> Result<Vec<AuditRecord>>;
    fn setting(&self, key: &str) -> Result<Option<String>>;
    fn set_setting(&self, key: &str, value: &str) -> Result<()>;

    // --- operations ---
    fn integrity_check(&self) -> Result<Vec<String>>;
    fn backup_to(&self, path: &std::path::Path) -> Result<()>;
    /// Writes the WAL back into the database file (at shutdown); an error when readers kept it from
    /// finishing.
    fn checkpoint(&self) -> Result<()>;

    /// Whether a point read would be answered inside this process in microseconds right now (an embedded
    /// database with a connection at hand), so that [`point_read`] may run it on the calling task. A backend
    /// across the network keeps the default.
    fn point_reads_are_local(&self) -> bool {
        false
    }
}

pub type SharedStore = Arc<dyn Store>;

/// Runs a store call on tokio's blocking pool, so SQLite never blocks an async worker: anything that writes
/// (a commit may wait for the disk), scans or streams.
pub async fn blocking<T, F>(store: &SharedStore, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(&dyn Store) -> Result<T> + Send + 'static,
{
    let store = store.clone();
    match tokio::task::spawn_blocking(move || f(store.as_ref())).await {
        Ok(result) => result,
        Err(join) => Err(Error::Internal(format!("store task failed: {join}"))),
    }
}

/// Runs a point read (one row by its key: a login's user, a book by its path, one card) on the calling task
/// when the backend answers those in-process (`point_reads_are_local`), else like [`blocking`]. From SQLite's
/// page cache such a read takes microseconds, while the hand-off to the blocking pool and back (futex
/// wake-ups, context switches) was ~40 % of a GET's server CPU here: every DAV request makes two or three of
/// these reads (BENCHMARKS.md, optimization 8). A cold page read holds one worker briefly; the others go on.
pub async fn point_read<T, F>(store: &SharedStore, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(&dyn Store) -> Result<T> + Send + 'static,
{
    if store.point_reads_are_local() { f(store.as_ref()) } else { blocking(store, f).await }
}
