//! The WebDAV file area `/dav/files/{user}/` (class 1): folders, documents, copy/move, dead properties,
//! and that it is private and invisible to contact clients. litmus covers it in depth (tests/interop).

use crate::support::*;

#[tokio::test]
async fn documents_live_in_a_private_file_area() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let root = "/dav/files/alice/";
    assert_eq!(alice.send("MKCOL", &format!("{root}contracts/"), &[], Vec::new()).await.status, 201);
    assert_eq!(alice.send("MKCOL", &format!("{root}contracts/"), &[], Vec::new()).await.status, 405);
    assert_eq!(alice.send("MKCOL", &format!("{root}missing/deeper/"), &[], Vec::new()).await.status, 409);
    let doc = format!("{root}contracts/Vertrag Müller.pdf");
    let put = alice.send("PUT", &doc, &[("content-type", "application/pdf")], b"%PDF-1.4 fake".to_vec()).await;
    assert_eq!(put.status, 201);
    let got = alice.get(&doc).await;
    assert_eq!(got.body, b"%PDF-1.4 fake");
    assert_eq!(got.header("content-type").as_deref(), Some("application/pdf"));
    assert_eq!(got.header("etag"), put.header("etag"));

    let listing = alice.propfind(&format!("{root}contracts/"), "1", "").await.multistatus();
    assert_eq!(
        listing.hrefs(),
        ["/dav/files/alice/contracts/", "/dav/files/alice/contracts/Vertrag%20M%C3%BCller.pdf"]
    );
    let patch = r#"<d:propertyupdate xmlns:d="DAV:" xmlns:k="urn:kartei:test"><d:set><d:prop><k:contact>urn:uuid:1</k:contact></d:prop></d:set></d:propertyupdate>"#;
    assert_eq!(alice.send("PROPPATCH", &doc, &[], patch.to_string()).await.status, 207);
    let copy = alice
        .send("COPY", &format!("{root}contracts/"), &[("destination", &format!("{root}archive/"))], Vec::new())
        .await;
    assert_eq!(copy.status, 201);
    let copied = alice
        .propfind(
            &format!("{root}archive/Vertrag%20M%C3%BCller.pdf"),
            "0",
            r#"<d:propfind xmlns:d="DAV:" xmlns:k="urn:kartei:test"><d:prop><k:contact/></d:prop></d:propfind>"#,
        )
        .await
        .multistatus();
    assert_eq!(
        copied.responses[0].text("urn:kartei:test", "contact").as_deref(),
        Some("urn:uuid:1"),
        "dead properties travel"
    );
    let mv = alice
        .send("MOVE", &format!("{root}archive/"), &[("destination", &format!("{root}contracts/"))], Vec::new())
        .await;
    assert_eq!(mv.status, 204, "overwrote the existing folder");
    assert_eq!(alice.get(&format!("{root}archive/")).await.status, 404);

    // Private: another user sees nothing, and nobody copies into another's files; contact clients listing the
    // home never see files.
    let into_bob = alice.send("COPY", &doc, &[("destination", "/dav/files/bob/stolen.pdf")], Vec::new()).await;
    assert_eq!(into_bob.status, 403, "{}", into_bob.text());
    assert_eq!(bob.get(&doc).await.status, 404);
    assert_eq!(bob.propfind(root, "1", "").await.status, 404);
    let home = alice.propfind(&alice.home(), "1", "").await.multistatus();
    assert!(home.hrefs().iter().all(|h| !h.contains("/files/")));
    assert_eq!(alice.delete(&format!("{root}contracts/"), &[]).await.status, 204);
    assert_eq!(alice.get(&doc).await.status, 404);
    s.stop().await;
}

#[tokio::test]
async fn file_size_limit_is_enforced() {
    let s = TestServer::start_with(|c| c.limits.max_file_size = 1000).await;
    let alice = s.user("alice").await;
    let r = alice.send("PUT", "/dav/files/alice/big.bin", &[], vec![0u8; 2000]).await;
    assert_eq!(r.status, 413);
    assert_eq!(alice.get("/dav/files/alice/big.bin").await.status, 404);
    s.stop().await;
}

/// If-Match, If-None-Match and the If header (RFC 4918 §10.4) guard writes in the file area.
#[tokio::test]
async fn conditional_writes_in_the_file_area() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let doc = "/dav/files/alice/a.txt";
    let etag = alice.send("PUT", doc, &[], b"one".to_vec()).await.header("etag").expect("etag");
    let r = alice.send("PUT", doc, &[("if", r#"(["bogus"])"#)], b"two".to_vec()).await;
    assert_eq!(r.status, 412);
    assert_eq!(alice.get(doc).await.body, b"one");
    assert_eq!(alice.delete(doc, &[("if", r#"(["nope"])"#)]).await.status, 412);
    assert_eq!(alice.delete(doc, &[("if-none-match", "*")]).await.status, 412, "it exists");
    let patch = r#"<d:propertyupdate xmlns:d="DAV:" xmlns:k="urn:k"><d:set><d:prop><k:x>1</k:x></d:prop></d:set></d:propertyupdate>"#;
    assert_eq!(alice.send("PROPPATCH", doc, &[("if", r#"(["nope"])"#)], patch).await.status, 412);
    let copy = [("destination", "/dav/files/alice/b.txt"), ("if", r#"(["nope"])"#)];
    assert_eq!(alice.send("COPY", doc, &copy, Vec::new()).await.status, 412);
    assert_eq!(alice.get("/dav/files/alice/b.txt").await.status, 404);
    assert_eq!(alice.send("MKCOL", "/dav/files/alice/d/", &[("if", "(<DAV:no-lock>)")], Vec::new()).await.status, 412);
    let r = alice.send("PUT", doc, &[("if", &format!("(Not <DAV:no-lock> [{etag}])"))], b"two".to_vec()).await;
    assert_eq!(r.status, 204);
    assert_eq!(alice.delete(doc, &[("if-match", "*")]).await.status, 204);
    s.stop().await;
}

/// GET in the file area answers 304 for a current copy and 412 for a failed If-Match (RFC 9110 §13.2.2).
#[tokio::test]
async fn conditional_reads_in_the_file_area() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let doc = "/dav/files/alice/a.txt";
    let etag = alice.send("PUT", doc, &[], b"one".to_vec()).await.header("etag").expect("etag");
    let r = alice.send("GET", doc, &[("if-none-match", &etag)], Vec::new()).await;
    assert_eq!(r.status, 304);
    assert_eq!(r.header("etag").as_deref(), Some(etag.as_str()));
    assert_eq!(alice.send("GET", doc, &[("if-match", "\"nope\"")], Vec::new()).await.status, 412);
    let future = "Fri, 01 Jan 2100 00:00:00 GMT";
    assert_eq!(alice.send("HEAD", doc, &[("if-modified-since", future)], Vec::new()).await.status, 304);
    let past = "Mon, 01 Jan 2001 00:00:00 GMT";
    assert_eq!(alice.send("GET", doc, &[("if-modified-since", past)], Vec::new()).await.status, 200);
    assert_eq!(alice.send("PUT", doc, &[("if-unmodified-since", past)], b"two".to_vec()).await.status, 412);
    assert_eq!(alice.delete(doc, &[("if-unmodified-since", past)]).await.status, 412);
    assert_eq!(alice.get(doc).await.body, b"one");
    // PROPFIND is checked too: a failed condition is a 412 there, never a 304.
    for (name, value, status) in [
        ("if-match", "\"nope\"", 412),
        ("if-unmodified-since", past, 412),
        // If-Modified-Since is ignored outside GET and HEAD.
        ("if-modified-since", future, 207),
        ("if-none-match", etag.as_str(), 412),
        ("if-match", etag.as_str(), 207),
    ] {
        let r = alice.send("PROPFIND", doc, &[("depth", "0"), (name, value)], Vec::new()).await;
        assert_eq!(r.status.as_u16(), status, "PROPFIND with {name}: {value}");
    }
    // Folder listings are compressed like the address books' when the client asks.
    let r =
        alice.send("PROPFIND", "/dav/files/alice/", &[("depth", "1"), ("accept-encoding", "zstd")], Vec::new()).await;
    assert_eq!(r.status, 207);
    assert_eq!(r.header("content-encoding").as_deref(), Some("zstd"));
    let listing = String::from_utf8(zstd::decode_all(&r.body[..]).expect("zstd")).expect("utf-8");
    assert!(listing.contains("/dav/files/alice/a.txt"), "{listing}");
    // A folder's listing changes with what is put in it, which its own time does not show: never 304.
    assert_eq!(alice.send("MKCOL", "/dav/files/alice/docs/", &[], Vec::new()).await.status, 201);
    assert_eq!(alice.send("PUT", "/dav/files/alice/docs/new.txt", &[], b"x".to_vec()).await.status, 201);
    let r = alice.send("GET", "/dav/files/alice/docs/", &[("if-modified-since", future)], Vec::new()).await;
    assert_eq!(r.status, 200);
    assert!(r.text().contains("new.txt"), "{}", r.text());
    s.stop().await;
}

/// If-None-Match with tags in the file area: 412 only when one is the current ETag.
#[tokio::test]
async fn if_none_match_with_tags_in_the_file_area() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let doc = "/dav/files/alice/a.txt";
    let etag = alice.send("PUT", doc, &[], b"one".to_vec()).await.header("etag").expect("etag");
    assert_eq!(alice.send("PUT", doc, &[("if-none-match", &etag)], b"two".to_vec()).await.status, 412);
    assert_eq!(alice.delete(doc, &[("if-none-match", &etag)]).await.status, 412);
    assert_eq!(alice.get(doc).await.body, b"one");
    assert_eq!(alice.send("PUT", doc, &[("if-none-match", "\"x\"")], b"two".to_vec()).await.status, 204);
    assert_eq!(alice.delete(doc, &[("if-none-match", "\"x\"")]).await.status, 204);
    s.stop().await;
}
