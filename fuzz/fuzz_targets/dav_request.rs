//! The WebDAV XML request parser: every body a client can send to PROPFIND, PROPPATCH, MKCOL and REPORT.
//! Never panics; a parsed element tree survives the round trip through `to_xml` (how dead properties are
//! stored and served back).
#![no_main]

use kartei::dav::request::{parse_mkcol, parse_propfind, parse_proppatch, parse_report};
use kartei::dav::xml;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse_propfind(data);
    let _ = parse_proppatch(data);
    let _ = parse_mkcol(data);
    let _ = parse_report(data, 100);
    if let Ok(root) = xml::parse(data) {
        let written = root.to_xml();
        match xml::parse(written.as_bytes()) {
            Ok(again) => assert_eq!(root, again, "to_xml does not round-trip: {written}"),
            Err(e) => panic!("to_xml wrote XML that does not parse ({e}): {written}"),
        }
    }
});
