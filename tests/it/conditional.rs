//! Conditional requests: If-Match / If-None-Match / If-(Un)Modified-Since (RFC 9110 §13) and the WebDAV If
//! header (RFC 4918 §10.4), on cards, address books and the file area.

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
    assert_eq!(mv(r#"<https://elsewhere.example/x.vcf> (["x"])"#.to_string()).await, 204, "not about us");
    assert_ne!(alice.get(&b).await.header("etag"), Some(dest_etag), "overwritten");
    s.stop().await;
}
