-- kartei schema, version 2: the per-user WebDAV file area (documents attached to contacts).
CREATE TABLE files (
    id            INTEGER PRIMARY KEY,
    owner_id      INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    path          TEXT    NOT NULL,          -- "a/b/c": decoded segments, no leading or trailing slash
    parent        TEXT    NOT NULL,          -- "a/b" ("" for the top level)
    is_collection INTEGER NOT NULL,
    content       BLOB,
    content_type  TEXT,
    etag          TEXT,
    size          INTEGER NOT NULL DEFAULT 0,
    created_at    INTEGER NOT NULL,
    modified_at   INTEGER NOT NULL,
    UNIQUE (owner_id, path)
);
CREATE INDEX files_by_parent ON files (owner_id, parent);

CREATE TABLE file_properties (
    file_id   INTEGER NOT NULL REFERENCES files(id) ON DELETE CASCADE,
    namespace TEXT    NOT NULL,
    name      TEXT    NOT NULL,
    xml       TEXT    NOT NULL,
    PRIMARY KEY (file_id, namespace, name)
) WITHOUT ROWID;
