-- kartei schema, version 4: where each contact came from, integrations that feed contacts in (ingest), the
-- event history of a contact (bookings), and a per-book retention period for that history.

-- One row per card (by UID, so it survives a rename): how it arrived and who changed it last.
CREATE TABLE card_origins (
    book_id     INTEGER NOT NULL REFERENCES addressbooks(id) ON DELETE CASCADE,
    uid         TEXT    NOT NULL,
    source      TEXT    NOT NULL,   -- "carddav: <User-Agent>", "api", "import: <file>", "ingest: <integration>"
    created_at  INTEGER NOT NULL,
    created_by  TEXT    NOT NULL,
    changed_at  INTEGER NOT NULL,
    changed_by  TEXT    NOT NULL,
    changed_via TEXT    NOT NULL,
    PRIMARY KEY (book_id, uid)
) WITHOUT ROWID;

-- An outside system (booking tool, web form) allowed to ingest contacts into one book.
CREATE TABLE integrations (
    id         INTEGER PRIMARY KEY,
    book_id    INTEGER NOT NULL REFERENCES addressbooks(id) ON DELETE CASCADE,
    name       TEXT    NOT NULL,
    token_hash TEXT    NOT NULL UNIQUE,   -- SHA-256 of the token (tokens are 192-bit random, so no slow hash)
    created_at INTEGER NOT NULL,
    UNIQUE (book_id, name)
);

-- What happened with a contact (an appointment booked through an integration).
CREATE TABLE contact_events (
    id          INTEGER PRIMARY KEY,
    book_id     INTEGER NOT NULL REFERENCES addressbooks(id) ON DELETE CASCADE,
    uid         TEXT    NOT NULL,
    email       TEXT    NOT NULL,    -- folded, so a subject-access request finds it without the card
    source      TEXT    NOT NULL,
    starts_at   TEXT    NOT NULL,    -- as given (RFC 3339)
    starts_unix INTEGER NOT NULL,    -- for retention
    ends_at     TEXT,
    title       TEXT,
    host        TEXT,
    recorded_at INTEGER NOT NULL
);
CREATE INDEX contact_events_by_card ON contact_events (book_id, uid);
CREATE INDEX contact_events_by_email ON contact_events (email);

-- Days after which a book's event history is deleted (NULL: kept).
ALTER TABLE addressbooks ADD COLUMN event_retention_days INTEGER;
