-- kartei schema, version 3: saved views of the contact API.
CREATE TABLE views (
    id         INTEGER PRIMARY KEY,
    user_id    INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name       TEXT    NOT NULL,
    definition TEXT    NOT NULL,          -- JSON: q, filter, sort, columns
    created_at INTEGER NOT NULL,
    UNIQUE (user_id, name)
);
