//! sync-collection (RFC 6578): initial, deltas with changes and tombstones, bad tokens (403, and 400 for
//! Thunderbird), paging with limit, and the ctag moving with every change.

use crate::support::*;

const ETAG: &str = "<d:getetag/>";

#[tokio::test]
async fn initial_then_delta_with_changes_and_deletions() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let book = alice.book();
    for i in 0..5 {
        alice.put_card(&format!("{i}.vcf"), &format!("u{i}"), &format!("Person {i}"), "").await;
    }
    let initial = alice.sync(&book, "", ETAG, None).await.multistatus();
    assert_eq!(initial.responses.len(), 5);
    let token = initial.sync_token.clone().expect("token");
    assert!(token.contains(':') && token.contains('/'), "URI-like token: {token}");

    // Nothing changed: an empty delta with the same token.
    let same = alice.sync(&book, &token, ETAG, None).await.multistatus();
    assert!(same.responses.is_empty());
    assert_eq!(same.sync_token.as_deref(), Some(token.as_str()));

    let new_etag = alice.put_card("1.vcf", "u1", "Person One Changed", "").await;
    assert_eq!(alice.delete(&format!("{book}2.vcf"), &[]).await.status, 204);
    alice.put_card("new.vcf", "unew", "Newcomer", "").await;
    let delta = alice.sync(&book, &token, "<d:getetag/><card:address-data/>", None).await.multistatus();
    assert_eq!(delta.hrefs(), [format!("{book}1.vcf"), format!("{book}2.vcf"), format!("{book}new.vcf")]);
    let changed = delta.get(&format!("{book}1.vcf"));
    assert_eq!(changed.text(DAV, "getetag").as_deref(), Some(new_etag.as_str()));
    assert!(changed.text(CARD, "address-data").expect("inlined address-data").contains("Person One Changed"));
    assert_eq!(delta.get(&format!("{book}2.vcf")).status.as_deref(), Some("HTTP/1.1 404 Not Found"));
    let token2 = delta.sync_token.clone().expect("token");
    assert_ne!(token, token2);
    assert!(alice.sync(&book, &token2, ETAG, None).await.multistatus().responses.is_empty());
    s.stop().await;
}

#[tokio::test]
async fn invalid_tokens_are_refused_with_valid_sync_token() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let book = alice.book();
    alice.put_card("a.vcf", "a", "A", "").await;
    let good = alice.sync(&book, "", ETAG, None).await.multistatus().sync_token.expect("token");
    let future = {
        let (prefix, rev) = good.rsplit_once('/').expect("token shape");
        format!("{prefix}/{}", rev.parse::<i64>().expect("rev") + 100)
    };
    for bad in ["garbage", "http://kartei.invalid/ns/sync/999/1", future.as_str()] {
        let r = alice.sync(&book, bad, ETAG, None).await;
        assert_eq!(r.status, 403, "token {bad}");
        assert_eq!(r.error_condition(), "{DAV:}valid-sync-token");
    }
    // Thunderbird only recovers (full resync) after a 400.
    let tb = Dav {
        user_agent: Some("Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Thunderbird/128.3.0".into()),
        ..alice
    };
    let r = tb.sync(&book, "garbage", ETAG, None).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.error_condition(), "{DAV:}valid-sync-token");
    s.stop().await;
}

#[tokio::test]
async fn limit_truncates_and_the_follow_up_finishes() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let book = alice.book();
    for i in 0..7 {
        alice.put_card(&format!("{i}.vcf"), &format!("u{i}"), "P", "").await;
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut token = String::new();
    let mut rounds = 0;
    loop {
        rounds += 1;
        assert!(rounds < 10, "paging does not end");
        let ms = alice.sync(&book, &token, ETAG, Some(3)).await.multistatus();
        let truncated = ms
            .responses
            .iter()
            .any(|r| r.href == book && r.status.as_deref() == Some("HTTP/1.1 507 Insufficient Storage"));
        for r in ms.responses.iter().filter(|r| r.href != book) {
            seen.insert(r.href.clone());
        }
        token = ms.sync_token.expect("token");
        if !truncated {
            break;
        }
    }
    assert_eq!(seen.len(), 7);
    assert!(rounds >= 3);
    s.stop().await;
}

/// Deleting the newest book and making one at the same path: SQLite gives the new book the deleted one's
/// row id, which tokens and CTags used to carry, so the old token gave a delta of the new book as if it
/// were the same one (the client kept cards that were gone and missed new ones), and the CTag repeated.
#[tokio::test]
async fn a_recreated_book_refuses_the_deleted_books_token() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let book = "/dav/addressbooks/alice/project/";
    let ctag_body = r#"<d:propfind xmlns:d="DAV:" xmlns:cs="http://calendarserver.org/ns/"><d:prop><cs:getctag/></d:prop></d:propfind>"#;
    let ctag = || async {
        alice.propfind(book, "0", ctag_body).await.multistatus().responses[0].text(CS, "getctag").expect("ctag")
    };
    let put = |name: String| {
        let alice = &alice;
        async move {
            let card = vcard(&name, &name, "");
            assert_eq!(alice.put(&format!("{book}{name}.vcf"), &card, &[]).await.status, 201);
        }
    };
    assert_eq!(alice.send("MKCOL", book, &[], Vec::new()).await.status, 201);
    for i in 0..3 {
        put(format!("old{i}")).await;
    }
    let old_token = alice.sync(book, "", ETAG, None).await.multistatus().sync_token.expect("token");
    let old_ctag = ctag().await;

    assert_eq!(alice.delete(book, &[]).await.status, 204);
    assert_eq!(alice.send("MKCOL", book, &[], Vec::new()).await.status, 201);
    for i in 0..3 {
        put(format!("new{i}")).await;
    }
    assert_ne!(ctag().await, old_ctag, "the new book, with as many changes, repeats the deleted book's CTag");
    put("new3".into()).await;
    let r = alice.sync(book, &old_token, ETAG, None).await;
    assert_eq!(r.status, 403, "the deleted book's token on the new book: {}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.error_condition(), "{DAV:}valid-sync-token");
    let fresh = alice.sync(book, "", ETAG, None).await.multistatus();
    let names: Vec<String> = (0..4).map(|i| format!("{book}new{i}.vcf")).collect();
    assert_eq!(fresh.hrefs(), names);
    s.stop().await;
}

#[tokio::test]
async fn ctag_and_token_change_on_every_change() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let body = r#"<d:propfind xmlns:d="DAV:" xmlns:cs="http://calendarserver.org/ns/"><d:prop><cs:getctag/><d:sync-token/></d:prop></d:propfind>"#;
    let ctag = || async {
        alice.propfind(&alice.book(), "0", body).await.multistatus().responses[0].text(CS, "getctag").expect("ctag")
    };
    let c0 = ctag().await;
    alice.put_card("a.vcf", "a", "A", "").await;
    let c1 = ctag().await;
    alice.put_card("a.vcf", "a", "A2", "").await;
    let c2 = ctag().await;
    alice.delete(&format!("{}a.vcf", alice.book()), &[]).await;
    let c3 = ctag().await;
    let all = [c0, c1, c2, c3];
    let unique: std::collections::HashSet<_> = all.iter().collect();
    assert_eq!(unique.len(), 4, "{all:?}");
    s.stop().await;
}
