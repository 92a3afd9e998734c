-- kartei schema, version 5: two indexes for the read paths, no data changes. Builds made before this
-- migration existed created them at open, hence IF NOT EXISTS. On a 100,000-card database they take about
-- half a second to build.

-- Covers the listings (PROPFIND Depth 1, an initial sync without bodies) and the search columns of
-- addressbook-query's prefilter, in name order. Both read this index instead of the cards' rows, which hold
-- the vCards (BENCHMARKS.md: a query over 100,000 cards went from 200 ms to 50 ms).
CREATE INDEX IF NOT EXISTS cards_listing ON cards
    (book_id, name, etag, size, version, created_at, modified_at, uid, fn, emails, phones, org);

-- The quick-search text by book, so that `q=` tests each card against this narrow index and reads a card's row
-- only when it matches (a scan of the rows read all 100,000 cards' search and field columns: ~165 ms).
CREATE INDEX IF NOT EXISTS cards_search ON cards (book_id, search);
