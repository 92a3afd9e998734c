//! addressbook-multiget and addressbook-query (RFC 6352 §8.6, §8.7): every filter feature with a positive
//! and a negative case, limits, address-data subsets and version conversion.

use crate::support::*;

const NS: &str = r#"xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:carddav""#;

async fn seeded(s: &TestServer) -> Dav {
    let alice = s.user("alice").await;
    alice
        .put_card(
            "anna.vcf",
            "anna",
            "Anna Müller",
            "EMAIL;TYPE=WORK:anna@firma.de\r\nTEL;TYPE=CELL:+49 30 1234\r\nORG:Firma GmbH\r\n",
        )
        .await;
    alice.put_card("bert.vcf", "bert", "Bert Bauer", "EMAIL;TYPE=HOME:bert@example.org\r\nNICKNAME:Berti\r\n").await;
    alice.put_card("cara.vcf", "cara", "Cara Çelik", "EMAIL:cara@firma.de\r\nTEL;TYPE=WORK,VOICE:030 555\r\n").await;
    alice
}

async fn query(alice: &Dav, filter: &str) -> Vec<String> {
    let body = format!(
        r#"<c:addressbook-query {NS}><d:prop><d:getetag/></d:prop><c:filter {filter}</c:filter></c:addressbook-query>"#
    );
    let r = alice.report(&alice.book(), "1", &body).await;
    let ms = r.multistatus();
    ms.hrefs()
        .into_iter()
        .map(|h| h.rsplit('/').next().unwrap_or_default().trim_end_matches(".vcf").to_string())
        .collect()
}

#[tokio::test]
async fn query_filters() {
    let s = TestServer::start().await;
    let alice = seeded(&s).await;
    let cases: &[(&str, &[&str])] = &[
        // default collation i;unicode-casemap and match-type contains
        (r#"><c:prop-filter name="FN"><c:text-match>MÜLLER</c:text-match></c:prop-filter>"#, &["anna"]),
        (r#"><c:prop-filter name="FN"><c:text-match>nobody</c:text-match></c:prop-filter>"#, &[]),
        (
            r#"><c:prop-filter name="FN"><c:text-match collation="i;ascii-casemap">MÜLLER</c:text-match></c:prop-filter>"#,
            &[],
        ),
        (
            r#"><c:prop-filter name="FN"><c:text-match collation="i;ascii-casemap">anna</c:text-match></c:prop-filter>"#,
            &["anna"],
        ),
        (
            r#"><c:prop-filter name="EMAIL"><c:text-match match-type="equals">bert@example.org</c:text-match></c:prop-filter>"#,
            &["bert"],
        ),
        (
            r#"><c:prop-filter name="EMAIL"><c:text-match match-type="equals">bert@example</c:text-match></c:prop-filter>"#,
            &[],
        ),
        (
            r#"><c:prop-filter name="EMAIL"><c:text-match match-type="starts-with">cara</c:text-match></c:prop-filter>"#,
            &["cara"],
        ),
        (
            r#"><c:prop-filter name="EMAIL"><c:text-match match-type="ends-with">@firma.de</c:text-match></c:prop-filter>"#,
            &["anna", "cara"],
        ),
        (
            r#"><c:prop-filter name="EMAIL"><c:text-match negate-condition="yes">firma</c:text-match></c:prop-filter>"#,
            &["bert"],
        ),
        (r#"><c:prop-filter name="NICKNAME"><c:is-not-defined/></c:prop-filter>"#, &["anna", "cara"]),
        (r#"><c:prop-filter name="NICKNAME"/>"#, &["bert"]),
        (
            r#"><c:prop-filter name="TEL"><c:param-filter name="TYPE"><c:text-match match-type="equals">cell</c:text-match></c:param-filter></c:prop-filter>"#,
            &["anna"],
        ),
        (
            r#"><c:prop-filter name="TEL"><c:param-filter name="TYPE"><c:text-match match-type="equals">voice</c:text-match></c:param-filter></c:prop-filter>"#,
            &["cara"],
        ),
        (
            r#"><c:prop-filter name="EMAIL"><c:param-filter name="TYPE"><c:is-not-defined/></c:param-filter></c:prop-filter>"#,
            &["cara"],
        ),
        (
            r#" test="anyof"><c:prop-filter name="FN"><c:text-match>anna</c:text-match></c:prop-filter><c:prop-filter name="FN"><c:text-match>bert</c:text-match></c:prop-filter>"#,
            &["anna", "bert"],
        ),
        (
            r#" test="allof"><c:prop-filter name="FN"><c:text-match>anna</c:text-match></c:prop-filter><c:prop-filter name="ORG"><c:text-match>firma</c:text-match></c:prop-filter>"#,
            &["anna"],
        ),
        (
            r#" test="allof"><c:prop-filter name="FN"><c:text-match>bert</c:text-match></c:prop-filter><c:prop-filter name="ORG"><c:text-match>firma</c:text-match></c:prop-filter>"#,
            &[],
        ),
        (
            r#"><c:prop-filter name="EMAIL" test="allof"><c:text-match>anna</c:text-match><c:text-match>firma</c:text-match></c:prop-filter>"#,
            &["anna"],
        ),
        (
            r#"><c:prop-filter name="EMAIL" test="allof"><c:text-match>anna</c:text-match><c:text-match>example</c:text-match></c:prop-filter>"#,
            &[],
        ),
        (r#">"#, &["anna", "bert", "cara"]),
    ];
    for (filter, expected) in cases {
        let got = query(&alice, filter).await;
        assert_eq!(got, *expected, "filter {filter}");
    }
    s.stop().await;
}

#[tokio::test]
async fn query_limits_and_collations() {
    let s = TestServer::start().await;
    let alice = seeded(&s).await;
    let limited = alice
        .report(&alice.book(), "1", &format!(r#"<c:addressbook-query {NS}><d:prop><d:getetag/></d:prop><c:filter/><c:limit><c:nresults>2</c:nresults></c:limit></c:addressbook-query>"#))
        .await
        .multistatus();
    let cards: Vec<_> = limited.responses.iter().filter(|r| r.href.ends_with(".vcf")).collect();
    assert_eq!(cards.len(), 2);
    let marker = limited.get(&alice.book());
    assert_eq!(marker.status.as_deref(), Some("HTTP/1.1 507 Insufficient Storage"));
    assert!(marker.error.as_ref().expect("error").child(DAV, "number-of-matches-within-limits").is_some());

    let bad = alice
        .report(&alice.book(), "1", &format!(r#"<c:addressbook-query {NS}><d:prop><d:getetag/></d:prop><c:filter><c:prop-filter name="FN"><c:text-match collation="i;klingon">x</c:text-match></c:prop-filter></c:filter></c:addressbook-query>"#))
        .await;
    assert_eq!(bad.status, 403);
    assert_eq!(bad.error_condition(), "{urn:ietf:params:xml:ns:carddav}supported-collation");
    for n in ["0", "-1", "many"] {
        let r = alice
            .report(&alice.book(), "1", &format!(r#"<c:addressbook-query {NS}><d:prop/><c:limit><c:nresults>{n}</c:nresults></c:limit></c:addressbook-query>"#))
            .await;
        assert_eq!(r.status, 400, "nresults {n}");
    }
    s.stop().await;
}

/// i;unicode-casemap compares NFKD forms (RFC 4790 §9.3, RFC 5051): a name stored decomposed (as macOS may
/// write it) is found by the precomposed text, a ligature by its letters, fullwidth letters by ASCII; the
/// accent still counts. i;octet and i;ascii-casemap keep comparing the text as written.
#[tokio::test]
async fn unicode_casemap_compares_normalized_text() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    alice.put_card("jose.vcf", "jose", "Jose\u{301} Nun\u{303}ez", "ORG:ﬁsh ＧｍｂＨ\r\n").await;
    alice.put_card("plain.vcf", "plain", "Jose Nunez", "").await;
    let fn_match = |text: &str, collation: &str| {
        format!(
            r#"><c:prop-filter name="FN"><c:text-match collation="{collation}">{text}</c:text-match></c:prop-filter>"#
        )
    };
    assert_eq!(query(&alice, &fn_match("JOSÉ", "i;unicode-casemap")).await, ["jose"], "precomposed finds decomposed");
    assert_eq!(query(&alice, &fn_match("nuñez", "i;unicode-casemap")).await, ["jose"]);
    assert_eq!(query(&alice, &fn_match("jose", "i;unicode-casemap")).await.len(), 2, "e is in é's decomposition");
    let org = |text: &str| format!(r#"><c:prop-filter name="ORG"><c:text-match>{text}</c:text-match></c:prop-filter>"#);
    assert_eq!(query(&alice, &org("fish gmbh")).await, ["jose"], "ligature and fullwidth letters");
    assert_eq!(query(&alice, &fn_match("JOSÉ", "i;octet")).await, Vec::<String>::new(), "octet: as written");
    assert_eq!(query(&alice, &fn_match("Jose\u{301}", "i;octet")).await, ["jose"]);
    // UIDs: the column holds them as written, so the pre-filter lets UIDs outside ASCII through.
    alice.put_card("wide.vcf", "ｋim-1", "Kim Wide", "").await;
    let uid = |text: &str| format!(r#"><c:prop-filter name="UID"><c:text-match>{text}</c:text-match></c:prop-filter>"#);
    assert_eq!(query(&alice, &uid("KIM-1")).await, ["wide"], "fullwidth ｋ is k");
    assert_eq!(query(&alice, &uid("ＰＬＡＩＮ")).await, ["plain"], "and the other way round");
    assert_eq!(query(&alice, &uid("kim-2")).await, Vec::<String>::new());
    // The UID column is stored trimmed; a text-match on the UID's own leading space still finds it.
    alice.put_card("spaced.vcf", " spaced-1", "Spaced Uid", "").await;
    let octet = |text: &str| {
        format!(r#"><c:prop-filter name="UID"><c:text-match collation="i;octet">{text}</c:text-match></c:prop-filter>"#)
    };
    assert_eq!(query(&alice, &octet(" spaced")).await, ["spaced"], "leading space of the UID");
    assert_eq!(query(&alice, &octet("spaced-1")).await, ["spaced"]);
    s.stop().await;
}

#[tokio::test]
async fn multiget_answers_every_href_once() {
    let s = TestServer::start().await;
    let alice = seeded(&s).await;
    let book = alice.book();
    // Depth 1 (Thunderbird), an absolute URL, a duplicate, a missing card and a foreign path.
    let body = format!(
        r#"<c:addressbook-multiget {NS}><d:prop><d:getetag/><c:address-data/></d:prop>
        <d:href>{book}anna.vcf</d:href><d:href>{base}{book}bert.vcf</d:href><d:href>{book}anna.vcf</d:href>
        <d:href>{book}missing.vcf</d:href><d:href>/dav/addressbooks/bob/contacts/x.vcf</d:href></c:addressbook-multiget>"#,
        base = alice.base
    );
    let ms = alice.report(&book, "1", &body).await.multistatus();
    assert_eq!(ms.responses.len(), 4, "{:?}", ms.hrefs());
    let anna = ms.get(&format!("{book}anna.vcf"));
    assert!(anna.text(CARD, "address-data").expect("address-data").contains("FN:Anna Müller"));
    assert_eq!(
        anna.text(CARD, "address-data").expect("data").as_bytes(),
        alice.get(&format!("{book}anna.vcf")).await.body,
        "CRLF and bytes survive XML"
    );
    assert!(anna.text(DAV, "getetag").is_some());
    assert!(ms.get(&format!("{book}bert.vcf")).text(CARD, "address-data").is_some());
    assert_eq!(ms.get(&format!("{book}missing.vcf")).status.as_deref(), Some("HTTP/1.1 404 Not Found"));
    assert_eq!(ms.get("/dav/addressbooks/bob/contacts/x.vcf").status.as_deref(), Some("HTTP/1.1 404 Not Found"));
    // Any Depth is accepted.
    for depth in ["0", "1"] {
        assert_eq!(alice.report(&book, depth, &body).await.status, 207);
    }
    s.stop().await;
}

#[tokio::test]
async fn address_data_subsets_and_versions() {
    let s = TestServer::start().await;
    let alice = seeded(&s).await;
    let book = alice.book();
    let body = format!(
        r#"<c:addressbook-multiget {NS}><d:prop><c:address-data content-type="text/vcard" version="4.0"><c:prop name="EMAIL"/></c:address-data></d:prop><d:href>{book}anna.vcf</d:href></c:addressbook-multiget>"#
    );
    let ms = alice.report(&book, "0", &body).await.multistatus();
    let data = ms.get(&format!("{book}anna.vcf")).text(CARD, "address-data").expect("data");
    assert!(data.contains("VERSION:4.0") && data.contains("anna@firma.de") && data.contains("UID:anna"), "{data}");
    assert!(!data.contains("FN:") && !data.contains("TEL"), "subset keeps only EMAIL: {data}");
    // novalue="yes": the property is there, its value is not (RFC 6352 §10.4.2).
    let body = format!(
        r#"<c:addressbook-multiget {NS}><d:prop><c:address-data><c:prop name="FN"/><c:prop name="EMAIL" novalue="yes"/></c:address-data></d:prop><d:href>{book}anna.vcf</d:href></c:addressbook-multiget>"#
    );
    let ms = alice.report(&book, "0", &body).await.multistatus();
    let data = ms.get(&format!("{book}anna.vcf")).text(CARD, "address-data").expect("data");
    let email = data.lines().find(|l| l.starts_with("EMAIL")).unwrap_or_default();
    assert!(
        data.contains("Anna Müller") && email.trim_end().ends_with(':') && !data.contains("anna@firma.de"),
        "{data}"
    );
    let bad = alice
        .report(&book, "0", &format!(r#"<c:addressbook-multiget {NS}><d:prop><c:address-data content-type="application/json"/></d:prop><d:href>{book}anna.vcf</d:href></c:addressbook-multiget>"#))
        .await;
    assert_eq!(bad.error_condition(), "{urn:ietf:params:xml:ns:carddav}supported-address-data");
    let unknown = alice.report(&book, "0", r#"<x:frobnicate xmlns:x="urn:x"/>"#).await;
    assert_eq!(unknown.status, 403);
    assert_eq!(unknown.error_condition(), "{DAV:}supported-report");
    s.stop().await;
}
