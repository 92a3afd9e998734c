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
