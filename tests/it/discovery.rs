//! Discovery (RFC 6764, RFC 5397, RFC 6352 §7) from `/.well-known/carddav` down to the book, and the
//! answers every client needs before it syncs (OPTIONS, 401 challenge, status strings).

use crate::support::*;

const CUP: &str = r#"<d:propfind xmlns:d="DAV:"><d:prop><d:current-user-principal/></d:prop></d:propfind>"#;

#[tokio::test]
async fn well_known_redirects_permanently_with_or_without_credentials() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    for method in ["GET", "PROPFIND", "OPTIONS"] {
        let anonymous = s
            .http()
            .request(
                reqwest::Method::from_bytes(method.as_bytes()).expect("m"),
                format!("{}/.well-known/carddav", s.base),
            )
            .send()
            .await
            .expect("send");
        assert_eq!(anonymous.status(), 301, "{method} without credentials");
        assert_eq!(anonymous.headers()["location"], "/dav/");
        let r = alice.send(method, "/.well-known/carddav", &[("depth", "0")], Vec::new()).await;
        assert_eq!(r.status, 301, "{method} with credentials");
        assert_eq!(r.header("location").as_deref(), Some("/dav/"));
    }
    s.stop().await;
}

#[tokio::test]
async fn anonymous_requests_get_a_basic_challenge() {
    let s = TestServer::start().await;
    let r = s
        .http()
        .request(reqwest::Method::from_bytes(b"PROPFIND").expect("m"), format!("{}/dav/", s.base))
        .header("depth", "0")
        .body(CUP)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], r#"Basic realm="kartei", charset="UTF-8""#);
    let mut wrong = s.user("bob").await;
    wrong.password = "not-the-password".into();
    assert_eq!(wrong.propfind("/dav/", "0", CUP).await.status, 401);
    s.stop().await;
}

#[tokio::test]
async fn options_advertises_addressbook_without_class_2() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    for path in ["/dav/", alice.home().as_str(), alice.book().as_str()] {
        let r = alice.send("OPTIONS", path, &[], Vec::new()).await;
        assert_eq!(r.status, 200, "OPTIONS {path} must be 200, not 204");
        let dav = r.header("dav").expect("DAV header");
        assert!(dav.contains("addressbook") && dav.contains('1') && dav.contains('3'), "{dav}");
        assert!(!dav.split(',').any(|c| c.trim() == "2"), "class 2 advertised without LOCK: {dav}");
        let allow = r.header("allow").expect("Allow");
        for m in ["PROPFIND", "REPORT", "PUT", "DELETE", "MKCOL"] {
            assert!(allow.contains(m), "{allow}");
        }
    }
    s.stop().await;
}

#[tokio::test]
async fn discovery_walks_from_root_to_the_book() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    // Root and "/" both name the current user's principal.
    for path in ["/", "/dav/", "/dav"] {
        let ms = alice.propfind(path, "0", CUP).await.multistatus();
        assert_eq!(ms.responses.len(), 1);
        assert_eq!(ms.responses[0].href_in(DAV, "current-user-principal").as_deref(), Some("/dav/principals/alice/"));
        assert_eq!(ms.responses[0].propstats[0].0, "HTTP/1.1 200 OK");
    }
    let principal = alice
        .propfind(
            "/dav/principals/alice/",
            "0",
            r#"<d:propfind xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:carddav"><d:prop><d:resourcetype/><d:displayname/><d:principal-URL/><c:addressbook-home-set/><d:current-user-principal/><d:unknown-thing/></d:prop></d:propfind>"#,
        )
        .await
        .multistatus();
    let p = principal.get("/dav/principals/alice/");
    assert!(p.prop(DAV, "resourcetype").expect("resourcetype").child(DAV, "principal").is_some());
    assert_eq!(p.href_in(CARD, "addressbook-home-set").as_deref(), Some("/dav/addressbooks/alice/"));
    assert_eq!(p.href_in(DAV, "principal-URL").as_deref(), Some("/dav/principals/alice/"));
    assert_eq!(p.with_status("HTTP/1.1 404 Not Found"), ["unknown-thing"]);
    // 200 propstat first, then 404 (clients read the first one).
    assert_eq!(p.propstats[0].0, "HTTP/1.1 200 OK");

    let home = alice
        .propfind(
            &alice.home(),
            "1",
            r#"<d:propfind xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:carddav" xmlns:cs="http://calendarserver.org/ns/"><d:prop><d:resourcetype/><d:displayname/><d:current-user-privilege-set/><d:owner/><d:supported-report-set/><d:sync-token/><cs:getctag/><c:supported-address-data/><c:max-resource-size/><c:addressbook-description/></d:prop></d:propfind>"#,
        )
        .await
        .multistatus();
    assert_eq!(home.hrefs(), ["/dav/addressbooks/alice/", "/dav/addressbooks/alice/contacts/"]);
    let book = home.get("/dav/addressbooks/alice/contacts/");
    let rt = book.prop(DAV, "resourcetype").expect("resourcetype");
    assert!(rt.child(DAV, "collection").is_some() && rt.child(CARD, "addressbook").is_some());
    assert_eq!(book.text(DAV, "displayname").as_deref(), Some("Contacts"));
    assert!(book.text(DAV, "sync-token").expect("token").contains("://"), "sync tokens look like URIs");
    assert_eq!(book.text(DAV, "sync-token"), book.text(CS, "getctag"));
    let data = book.prop(CARD, "supported-address-data").expect("supported-address-data");
    let versions: Vec<_> = data.children.iter().filter_map(|c| c.attr("version")).collect();
    assert_eq!(versions, ["3.0", "4.0"]);
    assert_eq!(book.href_in(DAV, "owner").as_deref(), Some("/dav/principals/alice/"));
    let privileges = book.prop(DAV, "current-user-privilege-set").expect("privileges");
    let names: Vec<_> = privileges.children.iter().flat_map(|p| p.children.iter().map(|c| c.name.clone())).collect();
    assert!(names.contains(&"write".to_string()) && names.contains(&"read".to_string()), "{names:?}");
    let reports = book.prop(DAV, "supported-report-set").expect("reports");
    assert_eq!(reports.children.len(), 3);
    s.stop().await;
}

#[tokio::test]
async fn propfind_variants_and_depth_rules() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    alice.put_card("a.vcf", "a", "Anna", "").await;
    let inf = alice.propfind(&alice.book(), "infinity", CUP).await;
    assert_eq!(inf.status, 403);
    assert_eq!(inf.error_condition(), "{DAV:}propfind-finite-depth");
    assert_eq!(alice.propfind(&alice.book(), "2", CUP).await.status, 400);
    // Empty body = allprop; propname lists names without values.
    let all = alice.propfind(&alice.book(), "1", "").await.multistatus();
    let card = all.get("/dav/addressbooks/alice/contacts/a.vcf");
    assert!(card.text(DAV, "getetag").expect("etag").starts_with('"'));
    assert_eq!(card.text(DAV, "getcontenttype").as_deref(), Some("text/vcard; charset=utf-8; version=3.0"));
    assert!(card.prop(DAV, "resourcetype").expect("empty resourcetype").children.is_empty());
    let names = alice
        .propfind(&alice.book(), "0", r#"<d:propfind xmlns:d="DAV:"><d:propname/></d:propfind>"#)
        .await
        .multistatus();
    let book = names.get(&alice.book());
    assert!(book.prop(DAV, "sync-token").expect("listed").text.is_empty());
    // Brief / Prefer: return=minimal drop the 404 propstat.
    let body = r#"<d:propfind xmlns:d="DAV:"><d:prop><d:getetag/><d:nope/></d:prop></d:propfind>"#;
    let full = alice.propfind(&alice.book(), "1", body).await.multistatus();
    assert!(!full.get("/dav/addressbooks/alice/contacts/a.vcf").with_status("HTTP/1.1 404 Not Found").is_empty());
    let brief =
        alice.send("PROPFIND", &alice.book(), &[("depth", "1"), ("brief", "t")], body.to_string()).await.multistatus();
    assert!(brief.get("/dav/addressbooks/alice/contacts/a.vcf").with_status("HTTP/1.1 404 Not Found").is_empty());
    let minimal = alice
        .send("PROPFIND", &alice.book(), &[("depth", "1"), ("prefer", "return=minimal")], body.to_string())
        .await
        .multistatus();
    assert!(minimal.get("/dav/addressbooks/alice/contacts/a.vcf").with_status("HTTP/1.1 404 Not Found").is_empty());
    // A missing resource is 404; bad XML is 400.
    assert_eq!(alice.propfind("/dav/addressbooks/alice/contacts/missing.vcf", "0", CUP).await.status, 404);
    assert_eq!(alice.propfind("/dav/addressbooks/alice/nobook/", "0", CUP).await.status, 404);
    assert_eq!(alice.propfind(&alice.book(), "0", "<d:propfind xmlns:d=\"DAV:\"><d:prop>").await.status, 400);
    s.stop().await;
}

/// The body of a 207 as the client decodes it, by its Content-Encoding.
fn decoded(r: &Resp) -> Vec<u8> {
    let mut out = Vec::new();
    match r.header("content-encoding").as_deref() {
        None => out.extend_from_slice(&r.body),
        Some("gzip") => {
            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&r.body[..]), &mut out).expect("valid gzip");
        }
        // A zstd decoder that refuses any window above RFC 9659's 8 MB, as HTTP clients may.
        Some("zstd") => {
            let mut decoder = zstd::stream::read::Decoder::new(&r.body[..]).expect("zstd decoder");
            decoder.window_log_max(23).expect("window limit");
            std::io::Read::read_to_end(&mut decoder, &mut out).expect("valid zstd");
        }
        Some(other) => panic!("unexpected content-encoding {other}"),
    }
    out
}

#[tokio::test]
async fn large_answers_are_compressed_as_the_client_accepts() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    for i in 0..40 {
        alice.put_card(&format!("c{i}.vcf"), &format!("c{i}"), &format!("Person {i}"), "").await;
    }
    let listing = r#"<d:propfind xmlns:d="DAV:"><d:prop><d:getetag/></d:prop></d:propfind>"#;
    let hrefs: String = (0..40).map(|i| format!("<d:href>{}c{i}.vcf</d:href>", alice.book())).collect();
    let multiget = format!(
        r#"<c:addressbook-multiget xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:carddav"><d:prop><d:getetag/><c:address-data/></d:prop>{hrefs}</c:addressbook-multiget>"#
    );
    let ask = |method: &'static str, body: String, accept: Option<&'static str>| {
        let alice = &alice;
        async move {
            let mut headers = vec![("depth", "1"), ("content-type", "application/xml")];
            headers.extend(accept.map(|a| ("accept-encoding", a)));
            let r = alice.send(method, &alice.book(), &headers, body).await;
            assert_eq!(r.status, 207, "{method} with {accept:?}");
            assert!(r.header("vary").unwrap_or_default().contains("Accept-Encoding"), "caches must key on it");
            r
        }
    };
    let plain_listing = ask("PROPFIND", listing.to_string(), None).await;
    let plain_multiget = ask("REPORT", multiget.clone(), None).await;
    assert_eq!(plain_listing.header("content-encoding"), None);
    assert_eq!(Multistatus::parse(&plain_multiget.body).responses.len(), 40);

    // (Accept-Encoding, the coding chosen)
    let cases: &[(&str, Option<&str>)] = &[
        ("gzip, deflate, br, zstd", Some("zstd")), // Thunderbird
        ("gzip, deflate, br", Some("gzip")),       // Apple clients
        ("gzip", Some("gzip")),
        ("x-gzip", Some("gzip")),
        ("ZSTD", Some("zstd")),
        ("zstd;q=0.5, gzip", Some("gzip")),
        ("gzip;q=0.5, zstd;q=0.8", Some("zstd")),
        ("zstd;q=0, gzip", Some("gzip")),
        ("zstd;q=0.000, gzip;q=0.001", Some("gzip")),
        ("*", Some("gzip")),
        ("*;q=0.5, zstd;q=0.4", Some("gzip")),
        ("gzip;q=0, zstd;q=0", None),
        ("br, deflate", None),
        ("identity", None),
        // A weight that is not a qvalue makes the entry void, never a guess.
        ("zstd;q=2, gzip;q=abc", None),
        ("zstd;q=0.5.1, gzip", Some("gzip")),
    ];
    for &(accept, expected) in cases {
        let r = ask("PROPFIND", listing.to_string(), Some(accept)).await;
        assert_eq!(r.header("content-encoding").as_deref(), expected, "PROPFIND with Accept-Encoding: {accept}");
        assert_eq!(decoded(&r), plain_listing.body.to_vec(), "the same listing under {accept}");
    }
    for accept in ["gzip, deflate, br, zstd", "gzip"] {
        let r = ask("REPORT", multiget.clone(), Some(accept)).await;
        assert!(r.body.len() < plain_multiget.body.len() / 2, "{accept}: {} bytes on the wire", r.body.len());
        assert_eq!(decoded(&r), plain_multiget.body.to_vec(), "the same multiget under {accept}");
    }
    s.stop().await;
}

#[tokio::test]
async fn shared_books_are_named_apart_from_the_sharees_own() {
    let s = TestServer::start().await;
    let office = s.user("office").await;
    let bob = s.user("bob").await;
    let store = s.store();
    tokio::task::spawn_blocking(move || {
        let book = store.book_in_home("office", "contacts").expect("store").expect("office's book");
        store.share_book(book.id, "bob", false).expect("share")
    })
    .await
    .expect("join");
    let home = bob
        .propfind(&bob.home(), "1", r#"<d:propfind xmlns:d="DAV:"><d:prop><d:displayname/></d:prop></d:propfind>"#)
        .await;
    let ms = home.multistatus();
    let names: Vec<String> = ms.responses.iter().skip(1).filter_map(|r| r.text(DAV, "displayname")).collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert_ne!(names[0], names[1], "two books called alike: {names:?}");
    assert!(names[1].ends_with("(shared by office)"), "{names:?}");
    drop(office);
    s.stop().await;
}

/// A photo's worth of base64 that no compressor can shrink by matching (xorshift bytes), folded as vCards fold.
fn photo_line(seed: u64, bytes: usize) -> String {
    use base64::Engine;
    let mut x = seed | 1;
    let raw: Vec<u8> = (0..bytes)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let encoded = base64::engine::general_purpose::STANDARD.encode(raw);
    let mut line = String::from("PHOTO;ENCODING=b;TYPE=JPEG:");
    for (i, c) in encoded.chars().enumerate() {
        if i > 0 && (i + 27) % 74 == 0 {
            line.push_str("\r\n ");
        }
        line.push(c);
    }
    line + "\r\n"
}

/// The `<d:response>` elements of a multistatus, sorted (zstd answers send large cards first), and whether a
/// `<d:sync-token>` comes after all of them.
fn sorted_responses(body: &[u8]) -> (Vec<String>, bool) {
    let text = String::from_utf8(body.to_vec()).expect("utf-8");
    let mut responses: Vec<String> =
        text.split("<d:response>").skip(1).map(|r| r.split("</d:response>").next().expect("end").to_string()).collect();
    responses.sort();
    let token_last = text.rfind("<d:sync-token>").is_some_and(|t| t > text.rfind("</d:response>").unwrap_or(0));
    (responses, token_last)
}

/// The zstd frames an answer is made of.
fn zstd_frames(body: &[u8]) -> usize {
    let (mut at, mut frames) = (0, 0);
    while at < body.len() {
        at += zstd::zstd_safe::find_frame_compressed_size(&body[at..]).expect("a whole zstd frame");
        frames += 1;
    }
    frames
}

/// Large cards that barely compress (photos) are stored with their XML in a zstd frame of its own, and answers
/// in zstd send those frames as they are (BENCHMARKS.md, optimization 21). Such an answer must hold exactly the
/// responses of the uncompressed one, also after a card is changed, shrunk or moved, and a sync-token stays
/// after every response. Conversions and gzip answers never use the frames.
#[tokio::test]
async fn zstd_answers_send_large_cards_from_their_stored_frames() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/vcards");
    // Real cards with photos (fixtures/vcards/SOURCES.md), two made here, and small ones around them.
    let mut names = Vec::new();
    for (name, fixture) in [
        ("iphone.vcf", "ez-vcard/John_Doe_IPHONE.vcf"),
        ("mac.vcf", "ez-vcard/John_Doe_MAC_ADDRESS_BOOK.vcf"),
        ("kontact.vcf", "ical4j-vcard/vcard-antoni-kontact.vcf"),
    ] {
        let card = std::fs::read(root.join(fixture)).expect("fixture");
        let card = if card.windows(4).any(|w| w == b"\nUID") { card } else { crate::corpus::with_uid(&card, name) };
        let r = alice.send("PUT", &format!("{}{name}", alice.book()), &[("content-type", "text/vcard")], card).await;
        assert!(r.status.is_success(), "{fixture}: {} {}", r.status, r.text());
        names.push(name.to_string());
    }
    for i in 0..2u64 {
        let card = vcard4(&format!("photo{i}"), &format!("Photo {i}"), &photo_line(i + 1, 9000));
        let r = alice.put(&format!("{}photo{i}.vcf", alice.book()), &card, &[]).await;
        assert!(r.status.is_success(), "{} {}", r.status, r.text());
        names.push(format!("photo{i}.vcf"));
    }
    for i in 0..30 {
        alice.put_card(&format!("small{i}.vcf"), &format!("small{i}"), &format!("Small Person {i}"), "").await;
        names.push(format!("small{i}.vcf"));
    }
    let multiget = |names: &[String], version: &str| {
        let hrefs: String = names.iter().map(|n| format!("<d:href>{}{n}</d:href>", alice.book())).collect();
        format!(
            r#"<c:addressbook-multiget xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:carddav"><d:prop><d:getetag/><c:address-data{version}/></d:prop>{hrefs}</c:addressbook-multiget>"#
        )
    };
    let ask = |body: String, accept: Option<&'static str>| {
        let alice = &alice;
        async move {
            let mut headers = vec![("depth", "1"), ("content-type", "application/xml")];
            headers.extend(accept.map(|a| ("accept-encoding", a)));
            let r = alice.send("REPORT", &alice.book(), &headers, body).await;
            assert_eq!(r.status, 207, "{}", r.text());
            r
        }
    };
    // The zstd answer and the plain one agree; returns the frames the zstd answer is made of.
    let agree = |body: String| {
        let ask = &ask;
        async move {
            let plain = ask(body.clone(), None).await;
            let zstd = ask(body, Some("gzip, deflate, br, zstd")).await;
            assert_eq!(zstd.header("content-encoding").as_deref(), Some("zstd"));
            let (want, want_token_last) = sorted_responses(&plain.body);
            let (got, got_token_last) = sorted_responses(&decoded(&zstd));
            let differing: Vec<&str> = got
                .iter()
                .zip(&want)
                .filter(|(g, w)| g != w)
                .map(|(g, _)| g.split("</d:href>").next().unwrap_or_default())
                .collect();
            assert!(got.len() == want.len() && differing.is_empty(), "the zstd answer differs: {differing:?}");
            assert_eq!(got_token_last, want_token_last, "the sync-token stays after every response");
            zstd_frames(&zstd.body)
        }
    };

    // Five large cards: each its own frame, the XML before, between and after them in frames of their own.
    assert!(agree(multiget(&names, "")).await >= 11, "the large cards were sent from their frames");
    // A small card and a changed photo: the frames follow the cards.
    let r = alice
        .put(&format!("{}photo0.vcf", alice.book()), &vcard4("photo0", "Photo 0 changed", &photo_line(7, 9000)), &[])
        .await;
    assert!(r.status.is_success());
    alice.put_card("mac.vcf", "mac-now-small", "Mac Now Small", "").await;
    let moved = alice
        .send(
            "MOVE",
            &format!("{}photo1.vcf", alice.book()),
            &[("destination", &format!("{}moved.vcf", alice.book()))],
            Vec::new(),
        )
        .await;
    assert_eq!(moved.status, 201, "{}", moved.text());
    let names: Vec<String> =
        names.iter().map(|n| if n == "photo1.vcf" { "moved.vcf".to_string() } else { n.clone() }).collect();
    assert!(agree(multiget(&names, "")).await >= 9, "four large cards left");
    let zstd = decoded(&ask(multiget(&names, ""), Some("zstd")).await);
    let zstd = String::from_utf8(zstd).expect("utf-8");
    assert!(zstd.contains("FN:Photo 0 changed") && zstd.contains("FN:Mac Now Small"), "current cards");
    assert!(!zstd.contains("FN:Photo 0&#13;"), "no stale frame of the old photo card");
    // The initial sync-collection with address-data (Thunderbird's), and a multiget converting to 3.0, which
    // cannot use the frames: a 4.0 photo card comes back as 3.0.
    let props = "<d:getetag/><card:address-data/>";
    let sync = format!(
        r#"<d:sync-collection xmlns:d="DAV:" xmlns:card="urn:ietf:params:xml:ns:carddav"><d:sync-token/><d:sync-level>1</d:sync-level><d:prop>{props}</d:prop></d:sync-collection>"#
    );
    assert!(agree(sync).await >= 9);
    assert_eq!(agree(multiget(&names, r#" version="3.0""#)).await, 1, "a conversion is compressed with the answer");
    let converted = decoded(&ask(multiget(&["moved.vcf".to_string()], r#" version="3.0""#), Some("zstd")).await);
    assert!(String::from_utf8(converted).expect("utf-8").contains("VERSION:3.0"), "converted to 3.0");
    // gzip answers are one stream, frames or not.
    let gzip = ask(multiget(&names, ""), Some("gzip")).await;
    assert_eq!(gzip.header("content-encoding").as_deref(), Some("gzip"));
    assert_eq!(sorted_responses(&decoded(&gzip)).0, sorted_responses(&ask(multiget(&names, ""), None).await.body).0);
    s.stop().await;
}

/// A database written before frames were stored (schema v6, or frames made otherwise) gets them when it is
/// opened, and `kartei check` finds a frame that does not hold its card's text, says so and makes it again.
#[tokio::test]
async fn stored_frames_are_made_for_older_databases_and_checked() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let mut hrefs = String::new();
    for i in 0..2u64 {
        let card = vcard4(&format!("photo{i}"), &format!("Photo {i}"), &photo_line(i + 11, 9000));
        assert!(alice.put(&format!("{}photo{i}.vcf", alice.book()), &card, &[]).await.status.is_success());
        hrefs.push_str(&format!("<d:href>{}photo{i}.vcf</d:href>", alice.book()));
    }
    for i in 0..5 {
        alice.put_card(&format!("small{i}.vcf"), &format!("small{i}"), &format!("Small Person {i}"), "").await;
        hrefs.push_str(&format!("<d:href>{}small{i}.vcf</d:href>", alice.book()));
    }
    let multiget = format!(
        r#"<c:addressbook-multiget xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:carddav"><d:prop><d:getetag/><c:address-data/></d:prop>{hrefs}</c:addressbook-multiget>"#
    );
    let plain = sorted_responses(&alice.report(&alice.book(), "1", &multiget).await.body).0;
    // The frames of a zstd answer, after checking that it says what the uncompressed one says.
    let frames = || async {
        let headers = [("depth", "1"), ("content-type", "application/xml"), ("accept-encoding", "zstd")];
        let r = alice.send("REPORT", &alice.book(), &headers, multiget.clone()).await;
        assert_eq!(r.status, 207, "{}", r.text());
        assert_eq!(sorted_responses(&decoded(&r)).0, plain, "the zstd answer holds the cards' text");
        zstd_frames(&r.body)
    };
    assert!(frames().await >= 3, "each photo from its stored frame");

    let db = rusqlite::Connection::open(s.config.database_path()).expect("open the database");
    db.execute_batch("UPDATE cards SET xml_zstd = NULL; DELETE FROM settings WHERE key = 'card_frames_version';")
        .expect("as a database from before schema v7");
    assert_eq!(frames().await, 1, "no stored frames: the photos are compressed with the answer");
    let etag = alice.get(&format!("{}photo0.vcf", alice.book())).await.header("etag");
    kartei::open_store(&s.config).expect("opening makes the frames");
    assert!(frames().await >= 3, "the frames were made when the database was opened");
    assert_eq!(alice.get(&format!("{}photo0.vcf", alice.book())).await.header("etag"), etag, "not a change");

    // A frame that holds another card's text: `kartei check` names the card and makes the frame again.
    db.execute(
        "UPDATE cards SET xml_zstd = (SELECT xml_zstd FROM cards WHERE name = 'photo1.vcf') WHERE name = 'photo0.vcf'",
        [],
    )
    .expect("a wrong frame");
    let headers = [("depth", "1"), ("content-type", "application/xml"), ("accept-encoding", "zstd")];
    let wrong = alice.send("REPORT", &alice.book(), &headers, multiget.clone()).await;
    assert_ne!(sorted_responses(&decoded(&wrong)).0, plain, "the wrong frame is sent as it is");
    let config = s.dir.path().join("cli.toml");
    std::fs::write(&config, format!("[storage]\ndata_dir = \"{}\"\n", s.config.storage.data_dir.display()))
        .expect("config");
    let check = || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_kartei"))
            .arg("--config")
            .arg(&config)
            .arg("check")
            .output()
            .expect("kartei check");
        (
            out.status.success(),
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        )
    };
    let (ok, said) = check();
    assert!(!ok && said.contains("alice/contacts/photo0.vcf") && !said.contains("photo1"), "{said}");
    assert!(said.contains("1 frames made again"), "{said}");
    let (ok, said) = check();
    assert!(ok && said.contains("ok: integrity_check passed, 7 cards parse"), "{said}");
    assert!(frames().await >= 3, "the answer holds photo0's own text again, from its frame");
    s.stop().await;
}
