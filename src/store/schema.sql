-- kartei schema, version 1. Applied when PRAGMA user_version < 1.
CREATE TABLE users (
    id            INTEGER PRIMARY KEY,
    username      TEXT    NOT NULL UNIQUE,
    display_name  TEXT    NOT NULL,
    password_hash TEXT    NOT NULL,
    disabled      INTEGER NOT NULL DEFAULT 0,
    -- bumped on every credential reset so caches and open connections can tell a stale login
    credential_generation INTEGER NOT NULL DEFAULT 1,
    created_at    INTEGER NOT NULL
);

CREATE TABLE addressbooks (
    id           INTEGER PRIMARY KEY,
    owner_id     INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    segment      TEXT    NOT NULL,
    display_name TEXT,
    description  TEXT,
    -- the sync counter: bumped by every change; sync tokens and CS:getctag are derived from it
    revision     INTEGER NOT NULL DEFAULT 0,
    is_default   INTEGER NOT NULL DEFAULT 0,
    created_at   INTEGER NOT NULL,
    UNIQUE (owner_id, segment)
);

-- dead properties set with PROPPATCH / extended MKCOL, stored as the client's XML fragment
CREATE TABLE book_properties (
    book_id   INTEGER NOT NULL REFERENCES addressbooks(id) ON DELETE CASCADE,
    namespace TEXT    NOT NULL,
    name      TEXT    NOT NULL,
    xml       TEXT    NOT NULL,
    PRIMARY KEY (book_id, namespace, name)
) WITHOUT ROWID;

CREATE TABLE cards (
    id          INTEGER PRIMARY KEY,
    book_id     INTEGER NOT NULL REFERENCES addressbooks(id) ON DELETE CASCADE,
    name        TEXT    NOT NULL,          -- resource name (last path segment, decoded)
    uid         TEXT    NOT NULL,
    etag        TEXT    NOT NULL,          -- unquoted hash of the stored bytes
    size        INTEGER NOT NULL,
    version     TEXT    NOT NULL,          -- "3.0", "4.0", ...
    revision    INTEGER NOT NULL,          -- book revision of the last change
    created_at  INTEGER NOT NULL,
    modified_at INTEGER NOT NULL,
    -- search columns, lower-cased, several values joined by newlines
    fn          TEXT    NOT NULL DEFAULT '',
    emails      TEXT    NOT NULL DEFAULT '',
    phones      TEXT    NOT NULL DEFAULT '',
    org         TEXT    NOT NULL DEFAULT '',
    fields      TEXT    NOT NULL DEFAULT '{}', -- folded contact columns (JSON) for the API's filters and sorting
    search      TEXT    NOT NULL DEFAULT '',   -- folded quick-search text
    -- exactly the bytes the client sent; last, so listings and searches never read past it (or its
    -- overflow pages, for cards with photos)
    vcard       BLOB    NOT NULL,
    UNIQUE (book_id, name),
    UNIQUE (book_id, uid)
);

-- one row per change; a delta is the rows after a revision, so its cost follows the number of changes
CREATE TABLE changes (
    book_id  INTEGER NOT NULL REFERENCES addressbooks(id) ON DELETE CASCADE,
    revision INTEGER NOT NULL,
    name     TEXT    NOT NULL,
    kind     INTEGER NOT NULL,               -- 1 added, 2 modified, 3 deleted (tombstone)
    PRIMARY KEY (book_id, revision)
) WITHOUT ROWID;

CREATE TABLE shares (
    book_id  INTEGER NOT NULL REFERENCES addressbooks(id) ON DELETE CASCADE,
    user_id  INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    segment  TEXT    NOT NULL,               -- the book's name inside the sharee's home
    writable INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (book_id, user_id),
    UNIQUE (user_id, segment)
) WITHOUT ROWID;

CREATE TABLE audit (
    id     INTEGER PRIMARY KEY,
    at     INTEGER NOT NULL,
    actor  TEXT    NOT NULL,
    action TEXT    NOT NULL,
    target TEXT    NOT NULL DEFAULT '',
    detail TEXT    NOT NULL DEFAULT ''
);

CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
