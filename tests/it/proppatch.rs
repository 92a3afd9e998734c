//! PROPPATCH (atomic), extended MKCOL and DELETE of address books.

use crate::support::*;

const NS: &str = r#"xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:carddav" xmlns:a="http://apple.com/ns/ical/""#;

async fn props(alice: &Dav, path: &str) -> Response {
    let body = format!(
        r#"<d:propfind {NS}><d:prop><d:displayname/><c:addressbook-description/><a:calendar-color/></d:prop></d:propfind>"#
    );
    alice.propfind(path, "0", &body).await.multistatus().responses.remove(0)
}

#[tokio::test]
async fn proppatch_sets_live_and_dead_properties() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let body = format!(
        r#"<d:propertyupdate {NS}><d:set><d:prop><d:displayname>Kunden</d:displayname><c:addressbook-description>Alle Kunden &amp; Partner</c:addressbook-description><a:calendar-color>#FF0000</a:calendar-color></d:prop></d:set></d:propertyupdate>"#
    );
    let ms = alice.send("PROPPATCH", &alice.book(), &[], body).await.multistatus();
    assert_eq!(ms.responses[0].with_status("HTTP/1.1 200 OK").len(), 3);
    let p = props(&alice, &alice.book()).await;
    assert_eq!(p.text(DAV, "displayname").as_deref(), Some("Kunden"));
    assert_eq!(p.text(CARD, "addressbook-description").as_deref(), Some("Alle Kunden & Partner"));
    assert_eq!(p.text("http://apple.com/ns/ical/", "calendar-color").as_deref(), Some("#FF0000"));
    let remove = format!(
        r#"<d:propertyupdate {NS}><d:remove><d:prop><a:calendar-color/></d:prop></d:remove></d:propertyupdate>"#
    );
    assert_eq!(alice.send("PROPPATCH", &alice.book(), &[], remove).await.status, 207);
    assert!(props(&alice, &alice.book()).await.text("http://apple.com/ns/ical/", "calendar-color").is_none());
    s.stop().await;
}

/// A rename changes the book's CTag and sync token, so a client that polls only those learns of it; the
/// delta across it lists no card.
#[tokio::test]
async fn a_rename_changes_the_ctag_and_token_but_no_member() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    alice.put_card("a.vcf", "a", "Anna", "").await;
    async fn poll(alice: &Dav) -> (String, String) {
        let body = r#"<d:propfind xmlns:d="DAV:" xmlns:cs="http://calendarserver.org/ns/"><d:prop><cs:getctag/><d:sync-token/></d:prop></d:propfind>"#;
        let r = alice.propfind(&alice.book(), "0", body).await.multistatus().responses.remove(0);
        (r.text(CS, "getctag").expect("ctag"), r.text(DAV, "sync-token").expect("token"))
    }
    let (ctag, token) = poll(&alice).await;
    let rename = format!(
        r#"<d:propertyupdate {NS}><d:set><d:prop><d:displayname>Kunden</d:displayname></d:prop></d:set></d:propertyupdate>"#
    );
    assert_eq!(alice.send("PROPPATCH", &alice.book(), &[], rename).await.status, 207);
    let (new_ctag, new_token) = poll(&alice).await;
    assert_ne!((&new_ctag, &new_token), (&ctag, &token), "both change");
    let delta = alice.sync(&alice.book(), &token, "<d:getetag/>", None).await.multistatus();
    assert!(delta.responses.is_empty(), "no member changed: {:?}", delta.hrefs());
    assert_eq!(delta.sync_token.as_deref(), Some(new_token.as_str()));
    s.stop().await;
}

#[tokio::test]
async fn proppatch_is_all_or_nothing() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let body = format!(
        r#"<d:propertyupdate {NS}><d:set><d:prop><d:displayname>Changed</d:displayname><d:getetag>"x"</d:getetag></d:prop></d:set></d:propertyupdate>"#
    );
    let ms = alice.send("PROPPATCH", &alice.book(), &[], body).await.multistatus();
    let r = &ms.responses[0];
    assert_eq!(r.with_status("HTTP/1.1 403 Forbidden"), ["getetag"]);
    assert_eq!(r.with_status("HTTP/1.1 424 Failed Dependency"), ["displayname"]);
    assert_eq!(
        props(&alice, &alice.book()).await.text(DAV, "displayname").as_deref(),
        Some("Contacts"),
        "nothing applied"
    );
    assert_eq!(alice.send("PROPPATCH", &alice.book(), &[], "<broken".to_string()).await.status, 400);
    s.stop().await;
}

#[tokio::test]
async fn extended_mkcol_creates_books_and_delete_removes_them() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let body = format!(
        r#"<d:mkcol {NS}><d:set><d:prop><d:resourcetype><d:collection/><c:addressbook/></d:resourcetype><d:displayname>Handwerker</d:displayname><c:addressbook-description>Bau</c:addressbook-description></d:prop></d:set></d:mkcol>"#
    );
    let path = "/dav/addressbooks/alice/craftsmen/";
    assert_eq!(alice.send("MKCOL", path, &[], body.clone()).await.status, 201);
    assert_eq!(props(&alice, path).await.text(DAV, "displayname").as_deref(), Some("Handwerker"));
    // Again: the resource exists.
    assert_eq!(alice.send("MKCOL", path, &[], body).await.status, 405);
    // Only address books may be made.
    let cal = format!(
        r#"<d:mkcol {NS}><d:set><d:prop><d:resourcetype><d:collection/><x:calendar xmlns:x="urn:ietf:params:xml:ns:caldav"/></d:resourcetype></d:prop></d:set></d:mkcol>"#
    );
    let r = alice.send("MKCOL", "/dav/addressbooks/alice/cal/", &[], cal).await;
    assert_eq!(r.status, 403);
    let answer = r.text();
    assert!(answer.contains("mkcol-response") && answer.contains("valid-resourcetype"), "RFC 5689 §3: {answer}");
    // The default book stays first in the home listing.
    let home = alice
        .propfind(&alice.home(), "1", r#"<d:propfind xmlns:d="DAV:"><d:prop><d:resourcetype/></d:prop></d:propfind>"#)
        .await
        .multistatus();
    assert_eq!(home.responses[1].href, alice.book());
    alice.put(&format!("{path}x.vcf"), &vcard("x", "X", ""), &[]).await;
    assert_eq!(alice.delete(path, &[]).await.status, 204);
    assert_eq!(alice.propfind(path, "0", "").await.status, 404);
    assert_eq!(alice.get(&format!("{path}x.vcf")).await.status, 404);
    s.stop().await;
}

/// The DAV:error of each propstat with `status` in a PROPPATCH answer, as `{ns}name` of its condition.
fn propstat_errors(r: &Resp, status: &str) -> Vec<String> {
    let root = kartei::dav::xml::parse(&r.body).expect("multistatus");
    root.children_named(DAV, "response")
        .flat_map(|resp| resp.children_named(DAV, "propstat"))
        .filter(|ps| ps.child(DAV, "status").is_some_and(|s| s.text == status))
        .flat_map(|ps| ps.child(DAV, "error").map(|e| e.children.clone()).unwrap_or_default())
        .map(|c| format!("{{{}}}{}", c.ns, c.name))
        .collect()
}

/// Every live property is protected, also those a list of names once missed; the 403 propstat says why
/// (RFC 4918 §9.2, §16 cannot-modify-protected-property), and nothing is stored in the live one's place.
#[tokio::test]
async fn protected_properties_are_refused_with_their_condition() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let body = format!(
        r#"<d:propertyupdate {NS}><d:set><d:prop><d:displayname>Changed</d:displayname><c:supported-collation-set><c:supported-collation>x</c:supported-collation></c:supported-collation-set><d:principal-collection-set><d:href>/x/</d:href></d:principal-collection-set></d:prop></d:set></d:propertyupdate>"#
    );
    let r = alice.send("PROPPATCH", &alice.book(), &[], body).await;
    let ms = r.multistatus();
    let mut refused = ms.responses[0].with_status("HTTP/1.1 403 Forbidden");
    refused.sort();
    assert_eq!(refused, ["principal-collection-set", "supported-collation-set"]);
    assert_eq!(ms.responses[0].with_status("HTTP/1.1 424 Failed Dependency"), ["displayname"]);
    assert_eq!(propstat_errors(&r, "HTTP/1.1 403 Forbidden"), ["{DAV:}cannot-modify-protected-property"]);
    let check = r#"<d:propfind xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:carddav"><d:prop><d:displayname/><c:supported-collation-set/><d:principal-collection-set/></d:prop></d:propfind>"#;
    let p = alice.propfind(&alice.book(), "0", check).await.multistatus().responses.remove(0);
    assert_eq!(p.text(DAV, "displayname").as_deref(), Some("Contacts"));
    assert!(p.prop(CARD, "supported-collation-set").expect("live").children.len() > 1, "still the live value");
    assert_eq!(p.href_in(DAV, "principal-collection-set").as_deref(), Some("/dav/principals/"));
    // Removing one is refused the same way.
    let remove =
        format!(r#"<d:propertyupdate {NS}><d:remove><d:prop><d:getetag/></d:prop></d:remove></d:propertyupdate>"#);
    let r = alice.send("PROPPATCH", &alice.book(), &[], remove).await;
    assert_eq!(propstat_errors(&r, "HTTP/1.1 403 Forbidden"), ["{DAV:}cannot-modify-protected-property"]);
    // The file area too.
    alice.send("PUT", "/dav/files/alice/a.txt", &[], b"x".to_vec()).await;
    let r = alice
        .send(
            "PROPPATCH",
            "/dav/files/alice/a.txt",
            &[],
            r#"<d:propertyupdate xmlns:d="DAV:"><d:set><d:prop><d:getetag>x</d:getetag></d:prop></d:set></d:propertyupdate>"#,
        )
        .await;
    assert_eq!(propstat_errors(&r, "HTTP/1.1 403 Forbidden"), ["{DAV:}cannot-modify-protected-property"]);
    s.stop().await;
}

/// A dead property comes back as it was set (RFC 4918 §4.3): mixed content in its order, attributes in a
/// namespace, and the xml:lang in scope where it was set, also when declared on an ancestor.
#[tokio::test]
async fn dead_properties_keep_mixed_content_attributes_and_language() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let body = r#"<d:propertyupdate xmlns:d="DAV:" xmlns:k="urn:k" xmlns:z="urn:z" xml:lang="de"><d:set><d:prop><k:note z:kind="memo">Anruf <k:b>heute</k:b> um <k:t>10</k:t> Uhr</k:note><k:en xml:lang="en">call</k:en></d:prop></d:set></d:propertyupdate>"#;
    for path in [alice.book(), "/dav/files/alice/".to_string() + "a.txt"] {
        if path.contains("/files/") {
            alice.send("PUT", &path, &[], b"x".to_vec()).await;
        }
        assert_eq!(alice.send("PROPPATCH", &path, &[], body).await.status, 207, "{path}");
        let ask = r#"<d:propfind xmlns:d="DAV:" xmlns:k="urn:k"><d:prop><k:note/><k:en/></d:prop></d:propfind>"#;
        let answer = alice.propfind(&path, "0", ask).await;
        let r = answer.multistatus().responses.remove(0);
        let note = r.prop("urn:k", "note").expect("note").to_xml();
        assert!(note.contains(">Anruf <b>heute</b> um <t>10</t> Uhr</note>"), "{path}: order lost: {note}");
        // Attributes: in the answer as written by the server (the parsed element would hide what is missing).
        let text = answer.text();
        assert!(text.contains(r#"xml:lang="de""#), "{path}: inherited xml:lang lost: {text}");
        assert!(text.contains(r#"xml:lang="en""#), "{path}: xml:lang lost: {text}");
        assert!(text.contains(r#"="urn:z""#) && text.contains(r#":kind="memo""#), "{path}: attribute lost: {text}");
    }
    s.stop().await;
}
