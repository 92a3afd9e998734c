-- kartei schema, version 5: two indexes for the read paths, no data changes. Builds before this migration
-- created indexes of these names at open, ordered by name; they are replaced. On a 100,000-card database
-- building both took 0.65-0.85 s (once, at the first start after the upgrade).
--
-- Both are ordered by the card's row id after the book, i.e. in insertion order: a new card's entries go at
-- the end of the book's range instead of at random places (card names are mostly random UUIDs), which kept
-- the upload rate at 100,000 cards 28 % higher (BENCHMARKS.md, optimization 9). Listings come in that
-- order; WebDAV gives members no order.
DROP INDEX IF EXISTS cards_listing;
DROP INDEX IF EXISTS cards_search;

-- Covers the listings (PROPFIND Depth 1, an initial sync without bodies) and the search columns of
-- addressbook-query's prefilter. Both read this index instead of the cards' rows, which hold the vCards
-- (a query over 100,000 cards went from 200 ms to 50 ms).
CREATE INDEX cards_listing ON cards
    (book_id, id, name, etag, size, version, created_at, modified_at, uid, fn, emails, phones, org);

-- The quick-search text by book, so that `q=` tests each card against this narrow index and reads a card's row
-- only when it matches (a scan of the rows read all 100,000 cards' search and field columns: ~165 ms).
CREATE INDEX cards_search ON cards (book_id, id, search);
