-- kartei schema, version 7: a large card's text also as a zstd frame, ready for zstd answers.
--
-- A full sync's server CPU went mostly into compressing the base64 of photos, which nothing else in the
-- answer matches. A card whose text is at least 4 KB and compresses alone to no less than half of it (a photo,
-- a key, a sound) is compressed once when written: the frame holds the text escaped as XML element content
-- (`dav::response::push_escaped_text`), and multistatus answers coded in zstd send it as it is
-- (`body::card_xml_frame`, BENCHMARKS.md optimization 21). NULL for every other card, and for cards stored
-- before this version until they are written again: those are compressed with the answer, as before. Should
-- the escaping ever change, a migration must set this column to NULL.
ALTER TABLE cards ADD COLUMN xml_zstd BLOB;
