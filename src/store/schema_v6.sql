-- kartei schema, version 6: a sync key per address book, the part of its sync tokens and CTag that names it.
--
-- Tokens used to name a book by its row id, and SQLite gives a deleted book's id to the next new book. A
-- client holding a token of the deleted book then got a delta of the new one as if it were the same book:
-- it kept cards that were gone and missed ones that were there. New books get a random key instead, and a
-- restore gives every book a new one (`Store::reissue_sync_keys`), so such tokens are refused and the
-- client resyncs (RFC 6578 §3.2). Existing books keep their id as key, so the tokens clients hold stay valid.
ALTER TABLE addressbooks ADD COLUMN sync_key TEXT NOT NULL DEFAULT '';
UPDATE addressbooks SET sync_key = CAST(id AS TEXT);
