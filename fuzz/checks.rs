//! What each fuzz target checks, one function per target. Shared by the libFuzzer targets in
//! fuzz_targets/ (coverage-guided, `tests/fuzz.sh`) and by the integration test `fuzz_replay`, which replays
//! the corpus and mutations of it on every `cargo test` (so CI needs no instrumented build).

#![allow(dead_code)]

use kartei::carddav::filter::{self, Filter};
use kartei::dav::request::{Report, parse_mkcol, parse_propfind, parse_proppatch, parse_report};
use kartei::dav::xml;
use kartei::router::{self, Route};
use kartei::store::{IndexedField, NewCard, Prefilter};
use kartei::vcard::{self, ValidCard, Version};
use std::sync::OnceLock;

const CARDS: &[&str] = &[
    "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:anna-1\r\nFN:Anna Müller\r\nFN;LANGUAGE=en:Anna Mueller\r\nN:Müller;Anna;;;\r\nEMAIL;TYPE=INTERNET,WORK:Anna@Firma.de\r\nTEL;TYPE=CELL:+49 30 1234\r\nORG:Firma GmbH;Einkauf\r\nitem1.X-ABLabel:Custom\r\nEND:VCARD\r\n",
    "BEGIN:VCARD\r\nVERSION:4.0\r\nUID:urn:uuid:ÄBC-Σ\r\nFN:ΟΔΟΣ Çelik\r\nEMAIL:cara@example.org\r\nEMAIL;PREF=1:c@ex.org\r\nTEL;VALUE=uri;TYPE=\"work,voice\":tel:+1-555\r\nBDAY:19800101\r\nNICKNAME:Cé,Cara\r\nEND:VCARD\r\n",
    "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:\u{212A}ELVIN-K\r\nFN:İstanbul Office\r\nORG:ACME\r\nNOTE:line1\\nline2\r\nX-ADDRESSBOOKSERVER-KIND:group\r\nEND:VCARD\r\n",
];

fn cards() -> &'static [(calcard::vcard::VCard, ValidCard)] {
    static CARDS_PARSED: OnceLock<Vec<(calcard::vcard::VCard, ValidCard)>> = OnceLock::new();
    CARDS_PARSED.get_or_init(|| {
        CARDS
            .iter()
            .map(|c| {
                let valid = vcard::validate(c.as_bytes()).expect("fixture card validates");
                (vcard::parse_stored(c.as_bytes()).expect("fixture card parses"), valid)
            })
            .collect()
    })
}

/// The SQL in store/sqlite.rs (`instr(column, needle) > 0`; the UID column through SQLite's ASCII `lower`).
fn prefilter_accepts(p: &Prefilter, card: &NewCard) -> bool {
    match p {
        Prefilter::All => true,
        Prefilter::UidNotAscii => card.uid.chars().any(|c| !(' '..='~').contains(&c)),
        Prefilter::Contains(field, needle) => {
            let column = match field {
                IndexedField::Fn => card.fn_lower.clone(),
                IndexedField::Email => card.emails_lower.clone(),
                IndexedField::Phone => card.phones_lower.clone(),
                IndexedField::Org => card.org_lower.clone(),
                IndexedField::Uid => card.uid.to_ascii_lowercase(),
            };
            column.contains(needle.as_str())
        }
        Prefilter::And(parts) => parts.iter().all(|q| prefilter_accepts(q, card)),
        Prefilter::Or(parts) => parts.iter().any(|q| prefilter_accepts(q, card)),
    }
}

fn check(f: &Filter) {
    let prefilter = f.prefilter();
    for (card, valid) in cards() {
        if f.matches(card) {
            assert!(
                prefilter_accepts(&prefilter, &valid.new_card),
                "the pre-filter {prefilter:?} skips card {} that the filter {f:?} matches",
                valid.new_card.uid
            );
        }
    }
}

fn clean(segment: &str) {
    assert!(segment != "." && segment != "..", "dot segment routed");
    assert!(!segment.contains(['/', '\\', '\0']), "dangerous segment routed: {segment:?}");
}

/// The `Authorization: Basic` parser and the `login+book` split, on any header value.
pub fn basic_auth(data: &[u8]) {
    let header = String::from_utf8_lossy(data);
    if let Some((user, password)) = kartei::auth::parse_basic(&header) {
        assert!(!user.is_empty());
        assert!(!user.contains(':'), "the user name ends at the first colon");
        let _ = password;
        let (username, scope) = kartei::app::split_scoped_login(&user);
        assert!(!username.is_empty());
        if let Some(book) = scope {
            assert!(!book.is_empty());
        }
    }
    let _ = kartei::auth::parse_bearer(&header);
}

/// The conditional headers (If, If-Match, If-None-Match, If-Modified-Since, If-Unmodified-Since), one per
/// line of the input: reading them never panics, and evaluating what was read against any state (a card, a
/// collection, nothing) for a read and a write never panics either; a 304 is only ever a read's answer.
/// Every line is also an Accept-Encoding value: negotiating never panics, and never picks a coding that no
/// line names (zstd must be named; gzip may come from `*`).
pub fn conditional(data: &[u8]) {
    use kartei::body::Coding;
    use kartei::methods::conditional::{Conditions, State, Verdict};
    let names = ["if", "if-match", "if-none-match", "if-modified-since", "if-unmodified-since"];
    let mut headers = hyper::HeaderMap::new();
    let mut accept = hyper::HeaderMap::new();
    for (name, line) in names.iter().zip(data.split(|&b| b == b'\n')) {
        if let Ok(value) = hyper::header::HeaderValue::from_bytes(line) {
            headers.append(*name, value.clone());
            accept.append(hyper::header::ACCEPT_ENCODING, value);
        }
    }
    let named = |word: &[u8]| {
        accept
            .get_all(hyper::header::ACCEPT_ENCODING)
            .iter()
            .any(|v| v.as_bytes().windows(word.len()).any(|w| w.eq_ignore_ascii_case(word)))
    };
    match Coding::negotiate(&accept) {
        Coding::Zstd => assert!(named(b"zstd"), "zstd chosen but not named"),
        Coding::Gzip => assert!(named(b"gzip") || named(b"*"), "gzip chosen but not accepted"),
        Coding::Identity => {}
    }
    let Ok(conditions) = Conditions::parse(&headers) else { return };
    let _ = conditions.precondition();
    let states = [
        None,
        Some(State { etag: Some("abc"), modified: Some(1_700_000_000) }),
        Some(State { etag: None, modified: None }),
        Some(State { etag: Some("W/x"), modified: Some(i64::MAX) }),
    ];
    for state in states {
        let _ = Conditions::pin(state);
        for read in [false, true] {
            if let Ok(Verdict::NotModified) = conditions.evaluate_untagged(state, read) {
                assert!(read, "a write answered 304");
            }
        }
    }
}

/// The WebDAV XML request parser: every body a client can send to PROPFIND, PROPPATCH, MKCOL and REPORT.
/// Never panics; a parsed element tree survives the round trip through `to_xml` (how dead properties are
/// stored and served back).
pub fn dav_request(data: &[u8]) {
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
}

/// addressbook-query filters: parse any XML as a `CARD:filter` (or a whole REPORT body), evaluate it against
/// fixed cards, and check the store pre-filter never skips a card the filter matches.
pub fn query_filter(data: &[u8]) {
    let Ok(root) = xml::parse(data) else { return };
    if let Ok(f) = filter::parse(&root) {
        check(&f);
    }
    if let Ok(Report::Query { filter: f, .. }) = parse_report(data, 100) {
        check(&f);
    }
}

/// The URL path router: any path (percent-encoding, `..`, `//`, NUL, overlong UTF-8) routes or is refused
/// without panicking; routed segments are never dot segments or hold `/`, `\` or NUL; and the hrefs we
/// write for a route parse back to the same route.
pub fn router(data: &[u8]) {
    let path = String::from_utf8_lossy(data);
    // A multiget member is exactly a five-segment href under the book: the lazy matcher agrees with the
    // whole decoding.
    let whole = router::href_segments(&path).and_then(|s| match s.as_slice() {
        [dav, abs, u, b, name] if dav == "dav" && abs == "addressbooks" && u == "u" && b == "contacts" => {
            Some(name.clone())
        }
        _ => None,
    });
    assert_eq!(router::card_name_in_book(&path, "u", "contacts"), whole);
    let Ok(route) = router::parse(&path) else { return };
    match &route {
        Route::Principal { user } => {
            clean(user);
            assert_eq!(router::parse(&router::principal_href(user)), Ok(route.clone()));
        }
        Route::Home { user } => {
            clean(user);
            assert_eq!(router::parse(&router::home_href(user)), Ok(route.clone()));
        }
        Route::AddressBook { user, book } => {
            clean(user);
            clean(book);
            assert_eq!(router::parse(&router::book_href(user, book)), Ok(route.clone()));
        }
        Route::Card { user, book, name } => {
            clean(user);
            clean(book);
            clean(name);
            let href = router::card_href(user, book, name);
            assert_eq!(router::parse(&href), Ok(route.clone()));
            assert_eq!(router::card_name_in_book(&href, user, book).as_deref(), Some(name.as_str()));
        }
        Route::Files { user, path } => {
            clean(user);
            path.iter().for_each(|s| clean(s));
        }
        Route::Api(s) | Route::Admin(s) | Route::Account(s) => s.iter().for_each(|x| clean(x)),
        Route::WellKnown | Route::Root | Route::PrincipalCollection | Route::HomeCollection => {}
    }
}

/// vCard validation and conversion: whatever a PUT body holds, validation never panics, and a card that
/// validates can be indexed, rendered in both versions, subset, turned into JSContact and projected.
pub fn vcard(data: &[u8]) {
    let Ok(valid) = vcard::validate(data) else { return };
    let stored = valid.new_card.version.as_str();
    for want in [Some(Version::V3), Some(Version::V4), None] {
        let (bytes, converted) = vcard::render(data, stored, want, None);
        // What a client is served (and may PUT back) is itself a valid card.
        if converted && let Err(e) = vcard::validate(&bytes) {
            panic!("a converted card does not validate ({e:?}):\n{}", String::from_utf8_lossy(&bytes));
        }
        let _ =
            vcard::render(data, stored, want, Some((&["FN".to_string(), "EMAIL".to_string()], &["EMAIL".to_string()])));
    }
    if let Some(card) = vcard::parse_stored(data) {
        let _ = vcard::to_jscontact(&card);
        let _ = vcard::contact::project(&card);
        for entry in &card.entries {
            let _ = vcard::property_text(entry);
            let _ = vcard::parameter_values(entry, "TYPE");
        }
    }
}
