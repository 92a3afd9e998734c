//! Conditional requests: If-Match / If-None-Match / If-(Un)Modified-Since (RFC 9110 §13) and the WebDAV If
//! header (RFC 4918 §10.4), on cards, address books and the file area; and the other preconditions of a
//! request that RFC 4918 and RFC 6352 give a status or a DAV:error condition.

use crate::support::*;

/// Makes a second, empty address book and returns its path.
async fn scratch_book(alice: &Dav) -> String {
    let path = format!("{}tmpbook/", alice.home());
    assert_eq!(alice.send("MKCOL", &path, &[], Vec::new()).await.status, 201);
    path
}

async fn exists(alice: &Dav, path: &str) -> bool {
    let r = alice.propfind(path, "0", "").await;
    assert!(r.status == 207 || r.status == 404, "PROPFIND {path}: {}", r.status);
    r.status == 207
}

/// A book has no ETag: a tag in If-Match, or If-None-Match: *, never holds for it, and a failing precondition
/// must not delete it (RFC 9110 §13.1.1).
#[tokio::test]
async fn book_delete_honours_if_match_and_if_none_match() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let book = scratch_book(&alice).await;
    assert_eq!(alice.delete(&book, &[("if-match", "\"does-not-match\"")]).await.status, 412);
    assert!(exists(&alice, &book).await, "a failed If-Match deleted the book");
    assert_eq!(alice.delete(&book, &[("if-none-match", "*")]).await.status, 412);
    assert!(exists(&alice, &book).await, "a failed If-None-Match deleted the book");
    assert_eq!(alice.delete(&book, &[("if-match", "*")]).await.status, 204);
    assert!(!exists(&alice, &book).await);
    s.stop().await;
}

/// The WebDAV If header (RFC 4918 §10.4): a request whose lists all fail is 412 and changes nothing.
#[tokio::test]
async fn the_if_header_guards_card_writes() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let etag = alice.put_card("a.vcf", "a", "Anna", "").await;
    let path = format!("{}a.vcf", alice.book());
    let v2 = vcard("a", "Anna Zwei", "");
    let r = alice.put(&path, &v2, &[("if", r#"(["bogus"])"#)]).await;
    assert_eq!(r.status, 412, "{}", r.text());
    assert_eq!(alice.get(&path).await.header("etag").as_deref(), Some(etag.as_str()), "nothing written");
    // A list holds when all its conditions do; the header holds when any list does.
    let if_ = format!("([{etag}] <DAV:no-lock>) (Not <DAV:no-lock> [{etag}])");
    let r = alice.put(&path, &v2, &[("if", &if_)]).await;
    assert_eq!(r.status, 204, "{}", r.text());
    let etag2 = r.header("etag").expect("etag");
    assert_eq!(alice.delete(&path, &[("if", &format!("([{etag}])"))]).await.status, 412, "a stale tag");
    assert_eq!(alice.delete(&path, &[("if", "(<DAV:no-lock>)")]).await.status, 412, "no state token holds");
    assert_eq!(alice.delete(&path, &[("if", "([\"x\"]")]).await.status, 400, "malformed");
    assert_eq!(alice.get(&path).await.status, 200);
    assert_eq!(alice.delete(&path, &[("if", &format!("([{etag2}])"))]).await.status, 204);
    s.stop().await;
}

#[tokio::test]
async fn the_if_header_guards_books() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let book = scratch_book(&alice).await;
    assert_eq!(alice.delete(&book, &[("if", r#"(["nope"])"#)]).await.status, 412);
    assert!(exists(&alice, &book).await, "a failed If header deleted the book");
    let patch = r#"<d:propertyupdate xmlns:d="DAV:"><d:set><d:prop><d:displayname>X</d:displayname></d:prop></d:set></d:propertyupdate>"#;
    assert_eq!(alice.send("PROPPATCH", &book, &[("if", r#"(["nope"])"#)], patch).await.status, 412);
    assert_eq!(alice.send("PROPPATCH", &book, &[("if", "(Not <DAV:no-lock>)")], patch).await.status, 207);
    assert_eq!(alice.delete(&book, &[("if", "(Not <DAV:no-lock>)")]).await.status, 204);
    s.stop().await;
}

/// Tagged lists are about the resource they name: the destination of a MOVE, or (when kartei cannot
/// resolve it) nothing here, and then they do not apply.
#[tokio::test]
async fn tagged_if_lists_name_their_resource() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    alice.put_card("a.vcf", "a", "Anna", "").await;
    let dest_etag = alice.put_card("b.vcf", "b", "Berta", "").await;
    let (a, b) = (format!("{}a.vcf", alice.book()), format!("{}b.vcf", alice.book()));
    let dest_url = format!("{}{b}", alice.base);
    let mv = |if_: String| {
        let (alice, a, b) = (&alice, a.clone(), b.clone());
        async move { alice.send("MOVE", &a, &[("destination", &b), ("if", &if_)], Vec::new()).await.status }
    };
    assert_eq!(mv(format!(r#"<{dest_url}> (["wrong"])"#)).await, 412, "the destination's tag does not match");
    assert_eq!(mv(format!(r#"<{b}> (["wrong"])"#)).await, 412, "a path names it too");
    assert_eq!(alice.get(&a).await.status, 200, "nothing moved");
    // This server's home and principal exist and have no entity tag, so a tag on them never matches.
    for own in [alice.home(), format!("/dav/principals/{}/", alice.user)] {
        assert_eq!(mv(format!(r#"<{own}> (["bogus"])"#)).await, 412, "{own}");
    }
    assert_eq!(mv(r#"<https://elsewhere.example/x.vcf> (["x"])"#.to_string()).await, 204, "not about us");
    assert_ne!(alice.get(&b).await.header("etag"), Some(dest_etag), "overwritten");
    s.stop().await;
}

/// An HTTP date `secs` seconds from now.
fn http_date_in(secs: i64) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() as i64;
    kartei::dates::format_http_date(now + secs)
}

const LONG_AGO: &str = "Mon, 01 Jan 2001 00:00:00 GMT";

/// GET and HEAD of a card evaluate the preconditions in RFC 9110 §13.2.2's order: a current copy is 304,
/// a failed If-Match 412.
#[tokio::test]
async fn conditional_get_of_a_card() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let etag = alice.put_card("a.vcf", "a", "Anna", "").await;
    let path = format!("{}a.vcf", alice.book());
    let get = |headers: Vec<(&'static str, String)>| {
        let (alice, path) = (&alice, path.clone());
        async move {
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            alice.send("GET", &path, &h, Vec::new()).await
        }
    };
    let r = get(vec![("if-none-match", etag.clone())]).await;
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());
    assert_eq!(r.header("etag").as_deref(), Some(etag.as_str()), "a 304 carries the validator");
    assert_eq!(get(vec![("if-none-match", format!("\"x\", W/{etag}"))]).await.status, 304, "weak comparison");
    assert_eq!(get(vec![("if-none-match", "\"other\"".into())]).await.status, 200);
    assert_eq!(get(vec![("if-none-match", "*".into())]).await.status, 304);
    assert_eq!(get(vec![("if-match", "\"nope\"".into())]).await.status, 412);
    assert_eq!(get(vec![("if-match", etag.clone())]).await.status, 200);
    assert_eq!(get(vec![("if-modified-since", http_date_in(60))]).await.status, 304);
    assert_eq!(get(vec![("if-modified-since", LONG_AGO.into())]).await.status, 200);
    assert_eq!(get(vec![("if-modified-since", "not a date".into())]).await.status, 200, "ignored");
    // If-None-Match decides when present; If-Modified-Since is then ignored (RFC 9110 §13.1.3).
    let both = vec![("if-none-match", "\"other\"".to_string()), ("if-modified-since", http_date_in(60))];
    assert_eq!(get(both).await.status, 200);
    let head = alice.send("HEAD", &path, &[("if-none-match", &etag)], Vec::new()).await;
    assert_eq!(head.status, 304);
    // A card converted to another vCard version has no ETag: no tag matches it.
    let v4 = ("accept", "text/vcard; version=4.0".to_string());
    let converted = get(vec![v4.clone()]).await;
    assert_eq!(converted.status, 200);
    assert!(converted.header("etag").is_none());
    assert_eq!(get(vec![v4.clone(), ("if-none-match", etag.clone())]).await.status, 200);
    assert_eq!(get(vec![v4, ("if-match", etag.clone())]).await.status, 412);
    let missing = format!("{}nope.vcf", alice.book());
    assert_eq!(alice.send("GET", &missing, &[("if-match", "*")], Vec::new()).await.status, 404);
    s.stop().await;
}

/// If-Unmodified-Since guards writes (RFC 9110 §13.1.4).
#[tokio::test]
async fn if_unmodified_since_guards_writes() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let etag = alice.put_card("a.vcf", "a", "Anna", "").await;
    let path = format!("{}a.vcf", alice.book());
    let v2 = vcard("a", "Anna Zwei", "");
    assert_eq!(alice.put(&path, &v2, &[("if-unmodified-since", LONG_AGO)]).await.status, 412);
    assert_eq!(alice.delete(&path, &[("if-unmodified-since", LONG_AGO)]).await.status, 412);
    assert_eq!(alice.get(&path).await.header("etag").as_deref(), Some(etag.as_str()), "nothing changed");
    // If-Match decides when present.
    let r = alice.put(&path, &v2, &[("if-unmodified-since", LONG_AGO), ("if-match", &etag)]).await;
    assert_eq!(r.status, 204);
    let later = http_date_in(60);
    assert_eq!(alice.delete(&path, &[("if-unmodified-since", &later)]).await.status, 204);
    s.stop().await;
}

/// If-None-Match with entity tags on a write proceeds unless one of them is the current ETag (RFC 9110
/// §13.1.2, weak comparison); it used to be refused whatever the tags.
#[tokio::test]
async fn if_none_match_with_tags_on_writes() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let etag = alice.put_card("a.vcf", "a", "Anna", "").await;
    let path = format!("{}a.vcf", alice.book());
    let v2 = vcard("a", "Anna Zwei", "");
    assert_eq!(alice.put(&path, &v2, &[("if-none-match", &etag)]).await.status, 412);
    assert_eq!(alice.put(&path, &v2, &[("if-none-match", &format!("\"x\", W/{etag}"))]).await.status, 412, "weak");
    assert_eq!(alice.delete(&path, &[("if-none-match", &etag)]).await.status, 412);
    // If-Match and If-None-Match together: both must hold.
    assert_eq!(alice.put(&path, &v2, &[("if-match", &etag), ("if-none-match", &etag)]).await.status, 412);
    assert_eq!(alice.get(&path).await.header("etag").as_deref(), Some(etag.as_str()), "nothing changed");
    let r = alice.put(&path, &v2, &[("if-none-match", "\"other\"")]).await;
    assert_eq!(r.status, 204, "{}", r.text());
    let new = format!("{}new.vcf", alice.book());
    assert_eq!(alice.put(&new, &vcard("n", "Neu", ""), &[("if-none-match", "\"other\"")]).await.status, 201);
    let moved = format!("{}moved.vcf", alice.book());
    let mv = [("destination", moved.as_str()), ("if-none-match", "\"other\"")];
    assert_eq!(alice.send("MOVE", &new, &mv, Vec::new()).await.status, 201);
    assert_eq!(alice.delete(&path, &[("if-none-match", "\"other\"")]).await.status, 204);
    s.stop().await;
}

/// Creating something inside an address book that does not exist is 409 Conflict (RFC 4918 §9.7.1, §9.3.1,
/// §9.8.5); reading or deleting it stays 404, and another user's paths stay 404 (their existence is hidden).
#[tokio::test]
async fn writes_into_a_missing_book_conflict() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    s.user("bob").await;
    alice.put_card("a.vcf", "a", "Anna", "").await;
    let missing = format!("{}nobook/", alice.home());
    let card = format!("{missing}x.vcf");
    assert_eq!(alice.put(&card, &vcard("x", "X", ""), &[]).await.status, 409);
    assert_eq!(alice.send("MKCOL", &format!("{missing}sub/"), &[], Vec::new()).await.status, 409);
    let src = format!("{}a.vcf", alice.book());
    for method in ["COPY", "MOVE"] {
        assert_eq!(alice.send(method, &src, &[("destination", &card)], Vec::new()).await.status, 409, "{method}");
    }
    assert_eq!(alice.get(&src).await.status, 200, "nothing moved");
    assert_eq!(alice.get(&card).await.status, 404);
    assert_eq!(alice.propfind(&card, "0", "").await.status, 404);
    assert_eq!(alice.delete(&card, &[]).await.status, 404);
    assert_eq!(alice.put("/dav/addressbooks/bob/nobook/x.vcf", &vcard("x", "X", ""), &[]).await.status, 404);
    assert_eq!(alice.put("/dav/addressbooks/bob/contacts/x.vcf", &vcard("x", "X", ""), &[]).await.status, 404);
    s.stop().await;
}

/// DAV:need-privileges (RFC 3744 §7.1.1) names a missing privilege; a 403 for what the server never does
/// (COPY onto itself, a card onto a book, deleting the home) must not send a client asking for access.
#[tokio::test]
async fn need_privileges_only_for_missing_privileges() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    alice.put_card("a.vcf", "a", "Anna", "").await;
    let card = format!("{}a.vcf", alice.book());
    let book = alice.book();
    let home = alice.home();
    let refused = [
        alice.send("COPY", &card, &[("destination", card.as_str())], Vec::new()).await,
        alice.send("COPY", &card, &[("destination", book.as_str())], Vec::new()).await,
        alice.send("MOVE", &book, &[("destination", "/dav/addressbooks/alice/other/")], Vec::new()).await,
        alice.delete(&home, &[]).await,
    ];
    for r in refused {
        assert_eq!(r.status, 403, "{}", r.text());
        assert!(!r.text().contains("need-privileges"), "{}", r.text());
    }
    // A login scoped to one book lacks the home's unbind privilege.
    let scoped = Dav { user: "alice+contacts".into(), ..alice };
    let r = scoped.delete(&book, &[]).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.error_condition(), "{DAV:}need-privileges");
    s.stop().await;
}

/// A multiget naming one card with two spellings of its href answers it once (RFC 4918 §14.24).
#[tokio::test]
async fn multiget_answers_each_card_once() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let r = alice.put(&format!("{}my%20card%26x.vcf", alice.book()), &vcard("m", "My Card", ""), &[]).await;
    assert_eq!(r.status, 201);
    let book = alice.book();
    let body = format!(
        r#"<c:addressbook-multiget xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:carddav"><d:prop><d:getetag/></d:prop><d:href>{book}my%20card%26x.vcf</d:href><d:href>{book}my%20card&amp;x.vcf</d:href><d:href>{book}my card&amp;x.vcf</d:href><d:href>{book}gone.vcf</d:href><d:href>{book}gone.vcf</d:href></c:addressbook-multiget>"#
    );
    let ms = alice.report(&book, "1", &body).await.multistatus();
    let hrefs: Vec<&str> = ms.responses.iter().map(|r| r.href.as_str()).collect();
    assert_eq!(hrefs.len(), 2, "{hrefs:?}");
    assert!(hrefs[0].ends_with("card&x.vcf") && hrefs[1].ends_with("gone.vcf"), "{hrefs:?}");
    s.stop().await;
}

/// The names a PROPFIND propname lists.
async fn propnames(alice: &Dav, path: &str) -> Vec<(String, String)> {
    let body = r#"<d:propfind xmlns:d="DAV:"><d:propname/></d:propfind>"#;
    let ms = alice.propfind(path, "0", body).await.multistatus();
    ms.responses[0].propstats.iter().flat_map(|(_, p)| p.iter().map(|e| (e.ns.to_string(), e.name.clone()))).collect()
}

/// propname lists exactly the properties a resource has (RFC 4918 §9.1): each of them PROPFIND answers
/// with 200, and the book's live properties PROPFIND answers are all there.
#[tokio::test]
async fn propname_lists_what_propfind_answers() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    alice.put_card("a.vcf", "a", "Anna", "").await;
    let card = format!("{}a.vcf", alice.book());
    let principal = format!("/dav/principals/{}/", alice.user);
    for path in [alice.book(), card, alice.home(), principal] {
        let names = propnames(&alice, &path).await;
        assert!(!names.is_empty(), "{path}");
        let props: String = names.iter().map(|(ns, n)| format!(r#"<x:{n} xmlns:x="{ns}"/>"#)).collect();
        let body = format!(r#"<d:propfind xmlns:d="DAV:"><d:prop>{props}</d:prop></d:propfind>"#);
        let ms = alice.propfind(&path, "0", &body).await.multistatus();
        let missing: Vec<String> = ms.responses[0]
            .propstats
            .iter()
            .filter(|(s, _)| s != "HTTP/1.1 200 OK")
            .flat_map(|(_, p)| p.iter().map(|e| e.name.clone()))
            .collect();
        assert!(missing.is_empty(), "{path}: propname lists {missing:?}, which PROPFIND does not have");
    }
    let book = propnames(&alice, &alice.book()).await;
    let has = |ns: &str, n: &str| book.iter().any(|(a, b)| a == ns && b == n);
    assert!(!has(CARD, "addressbook-description"), "the book has no description");
    for (ns, n) in [
        (CARD, "supported-collation-set"),
        (CARD, "max-image-size"),
        (DAV, "quota-available-bytes"),
        (DAV, "principal-collection-set"),
    ] {
        assert!(has(ns, n), "{n} missing from propname");
    }
    let patch = r#"<d:propertyupdate xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:carddav"><d:set><d:prop><c:addressbook-description>Alle</c:addressbook-description></d:prop></d:set></d:propertyupdate>"#;
    assert_eq!(alice.send("PROPPATCH", &alice.book(), &[], patch).await.status, 207);
    let book = propnames(&alice, &alice.book()).await;
    assert!(book.iter().any(|(ns, n)| ns == CARD && n == "addressbook-description"));
    s.stop().await;
}

/// PROPFIND and REPORT honour the conditional headers too (RFC 4918 §10.4, RFC 9110 §13): a failed
/// condition is a 412 (If-None-Match gives 304 only on GET and HEAD), If-Modified-Since is ignored outside
/// them, and a missing resource stays a 404.
#[tokio::test]
async fn propfind_and_report_honour_conditional_headers() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let etag = alice.put_card("a.vcf", "a", "Anna", "").await;
    let card = format!("{}a.vcf", alice.book());
    let book = alice.book();
    let listing = r#"<d:propfind xmlns:d="DAV:"><d:prop><d:getetag/></d:prop></d:propfind>"#;
    let multiget = format!(
        r#"<c:addressbook-multiget xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:carddav"><d:prop><d:getetag/></d:prop><d:href>{card}</d:href></c:addressbook-multiget>"#
    );
    let propfind = |path: String, headers: Vec<(&'static str, String)>| {
        let alice = &alice;
        async move {
            let mut all: Vec<(&str, &str)> = vec![("depth", "0"), ("content-type", "application/xml")];
            all.extend(headers.iter().map(|(k, v)| (*k, v.as_str())));
            alice.send("PROPFIND", &path, &all, listing.to_string()).await
        }
    };
    // (path, conditional headers, status)
    type Case = (String, Vec<(&'static str, String)>, u16);
    let cases: Vec<Case> = vec![
        (card.clone(), vec![], 207),
        (card.clone(), vec![("if-match", etag.clone())], 207),
        (card.clone(), vec![("if-match", "\"other\"".into())], 412),
        (card.clone(), vec![("if-none-match", etag.clone())], 412),
        (card.clone(), vec![("if-none-match", "*".into())], 412),
        (card.clone(), vec![("if-none-match", "\"other\"".into())], 207),
        (card.clone(), vec![("if", format!("([{etag}])"))], 207),
        (card.clone(), vec![("if", "([\"stale\"])".into())], 412),
        (card.clone(), vec![("if", "(<urn:uuid:no-such-lock>)".into())], 412),
        (card.clone(), vec![("if", "(Not <DAV:no-lock>)".into())], 207),
        (card.clone(), vec![("if-unmodified-since", "Mon, 01 Jan 2001 00:00:00 GMT".into())], 412),
        (card.clone(), vec![("if-modified-since", "Fri, 01 Jan 2100 00:00:00 GMT".into())], 207),
        (book.clone(), vec![("if-match", "*".into())], 207),
        (book.clone(), vec![("if-match", etag.clone())], 412),
        (book.clone(), vec![("if", "([\"x\"])".into())], 412),
        (format!("{book}missing.vcf"), vec![("if-match", etag.clone())], 404),
        (card.clone(), vec![("if", "([\"x\"]".into())], 400),
    ];
    for (path, headers, status) in cases {
        let r = propfind(path.clone(), headers.clone()).await;
        assert_eq!(r.status.as_u16(), status, "PROPFIND {path} with {headers:?}: {}", r.text());
    }
    let report = |headers: &'static [(&'static str, &'static str)]| {
        let (alice, multiget) = (&alice, multiget.clone());
        async move {
            let mut all = vec![("depth", "1"), ("content-type", "application/xml")];
            all.extend_from_slice(headers);
            alice.send("REPORT", &alice.book(), &all, multiget).await.status.as_u16()
        }
    };
    assert_eq!(report(&[]).await, 207);
    assert_eq!(report(&[("if-match", "*")]).await, 207);
    assert_eq!(report(&[("if-match", "\"x\"")]).await, 412, "a book has no entity tag");
    assert_eq!(report(&[("if", "([\"x\"])")]).await, 412);
    // A multiget sent to the card's own URL is checked against the card.
    let at_card = vec![("depth", "1"), ("content-type", "application/xml"), ("if-match", etag.as_str())];
    assert_eq!(alice.send("REPORT", &card, &at_card, multiget.clone()).await.status.as_u16(), 207);
    s.stop().await;
}
