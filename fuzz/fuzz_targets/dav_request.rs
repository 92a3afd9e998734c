//! The WebDAV XML request parser: every body a client can send to PROPFIND, PROPPATCH, MKCOL and REPORT.
//! Never panics; a parsed element tree survives the round trip through `to_xml` (how dead properties are
//! stored and served back).
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::dav_request(data));
