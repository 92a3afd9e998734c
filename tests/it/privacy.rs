//! Contacts from bookings (ingest), provenance, purposes, and the data-subject requests (access report,
//! erasure, retention), over HTTPS against a real server.

use crate::support::*;
use serde_json::{Value, json};

struct Admin {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Admin {
    fn new(s: &TestServer) -> Admin {
        Admin { http: s.http(), base: s.base.clone(), token: s.admin_token.clone() }
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value, String) {
        let req = self
            .http
            .request(reqwest::Method::from_bytes(method.as_bytes()).expect("method"), format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .header("content-type", "application/json")
            .body(body.map(|b| b.to_string()).unwrap_or_default());
        let r = req.send().await.expect("admin request");
        let status = r.status().as_u16();
        let text = r.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null), text)
    }

    async fn integration(&self, book: &str, name: &str) -> String {
        let (status, v, text) =
            self.call("POST", "/admin/v1/integrations", Some(json!({"book": book, "name": name}))).await;
        assert_eq!(status, 201, "{text}");
        v["token"].as_str().expect("token").to_string()
    }
}

/// An outside system posting to the ingest endpoint.
async fn ingest(s: &TestServer, token: Option<&str>, body: &str) -> (u16, Value) {
    let mut req = s.http().post(format!("{}/api/v1/ingest", s.base)).header("content-type", "application/json");
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.body(body.to_string()).send().await.expect("ingest request");
    let status = r.status().as_u16();
    let text = r.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or_else(|_| json!({"raw": text})))
}

async fn ok_ingest(s: &TestServer, token: &str, body: Value) -> Value {
    let (status, v) = ingest(s, Some(token), &body.to_string()).await;
    assert!(status == 200 || status == 201, "ingest {body}: {status} {v}");
    v
}

/// The card of `uid` as stored (GET over CardDAV).
async fn card_text(dav: &Dav, uid: &str) -> String {
    let r = dav.get(&format!("{}{uid}.vcf", dav.book())).await;
    assert_eq!(r.status.as_u16(), 200, "GET card {uid}: {}", r.text());
    r.text().replace("\r\n ", "")
}

async fn book_state(dav: &Dav) -> (String, Vec<String>) {
    let r = dav.sync(&dav.book(), "", "<d:getetag/>", None).await;
    let ms = r.multistatus();
    (ms.sync_token.clone().unwrap_or_default(), ms.hrefs())
}

fn tags(v: &Value) -> Vec<String> {
    v["tags"].as_array().into_iter().flatten().map(|t| t.as_str().unwrap_or("").to_string()).collect()
}

#[tokio::test]
async fn ingest_upserts_by_email_with_tags_company_and_fill_only_empty() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let admin = Admin::new(&s);
    let token = admin.integration("alice/contacts", "Booking").await;

    // A new address: a contact, its company from the domain name (no other contact of that domain yet).
    let first = ok_ingest(
        &s,
        &token,
        json!({"email": " Jana.Novak@Acme-Bau.de ", "name": "Jana Novak", "event": {"start": "2026-11-20T10:00:00+01:00", "title": "Site visit", "host": "alice"}}),
    )
    .await;
    assert_eq!(first["created"], true, "{first}");
    assert!(tags(&first).is_empty(), "{first}");
    let uid = first["uid"].as_str().expect("uid").to_string();
    let card = card_text(&alice, &uid).await;
    for expected in ["FN:Jana Novak", "Jana.Novak@Acme-Bau.de", "ORG:Acme-Bau"] {
        assert!(card.contains(expected), "missing {expected} in\n{card}");
    }

    // The same address again, differently written: no second contact; the second booking tags Recurring;
    // the phone was empty and is filled.
    let (token_before, _) = book_state(&alice).await;
    let second = ok_ingest(
        &s,
        &token,
        json!({"email": "jana.novak@acme-bau.de", "name": "J. Novak", "phone": "+49 30 1234", "event": {"start": "2026-11-27T10:00:00Z"}}),
    )
    .await;
    assert_eq!((second["created"].clone(), second["uid"].clone()), (json!(false), json!(uid)), "{second}");
    assert_eq!(tags(&second), ["Recurring"]);
    let card = card_text(&alice, &uid).await;
    assert!(card.contains("FN:Jana Novak"), "a set name is never overwritten:\n{card}");
    assert!(card.contains("+49 30 1234"), "an empty phone is filled:\n{card}");
    assert!(card.contains("Recurring"), "{card}");
    let (token_after, _) = book_state(&alice).await;
    assert_ne!(token_before, token_after, "an ingest change moves the sync token");
    let delta = alice.sync(&alice.book(), &token_before, "<d:getetag/>", None).await.multistatus();
    assert_eq!(delta.hrefs(), [format!("{}{uid}.vcf", alice.book())], "devices receive the change");

    // A person edits the organization over CardDAV; a later ingest with a company does not overwrite it.
    let edited = card.replace("ORG:Acme-Bau", "ORG:Acme Bau GmbH & Co. KG");
    let r = alice.put(&format!("{}{uid}.vcf", alice.book()), &edited, &[]).await;
    assert!(r.status.is_success(), "{}", r.text());
    let third =
        ok_ingest(&s, &token, json!({"email": "jana.novak@acme-bau.de", "company": "Other Ltd", "optin": true})).await;
    assert_eq!(tags(&third), ["Recurring", "Optin"], "opt-in confirmed adds Optin");
    let card = card_text(&alice, &uid).await;
    assert!(card.contains("ORG:Acme Bau GmbH & Co. KG") && !card.contains("Other Ltd"), "{card}");

    // A colleague at the same domain gets the company the book already uses for that domain.
    let colleague = ok_ingest(&s, &token, json!({"email": "max@acme-bau.de", "name": "Max Kurz"})).await;
    let card = card_text(&alice, colleague["uid"].as_str().expect("uid")).await;
    assert!(card.contains("ORG:Acme Bau GmbH & Co. KG"), "{card}");

    // Free-mail domains never become a company; a given company is used as is.
    let free = ok_ingest(&s, &token, json!({"email": "someone@gmail.com", "name": "Some One"})).await;
    let card = card_text(&alice, free["uid"].as_str().expect("uid")).await;
    assert!(!card.contains("ORG:"), "no company from gmail.com:\n{card}");
    let given = ok_ingest(&s, &token, json!({"email": "eva@web.de", "name": "Eva", "company": "Eva's Bakery"})).await;
    assert!(card_text(&alice, given["uid"].as_str().expect("uid")).await.contains("ORG:Eva's Bakery"));

    // Ingest's provenance: source is the integration, the creator the event's host.
    let (_, history, _) = api_get(&alice, &format!("/api/v1/books/contacts/contacts/{uid}/history")).await;
    assert_eq!(history["origin"]["source"], "ingest: Booking", "{history}");
    assert_eq!(history["origin"]["created_by"], "alice", "{history}");
    assert_eq!(history["origin"]["changed_via"], "ingest: Booking", "the last change was the opt-in: {history}");
    assert_eq!(history["events"].as_array().map(Vec::len), Some(2), "{history}");
    s.stop().await;
}

#[tokio::test]
async fn concurrent_ingests_of_one_address_make_one_contact() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let token = Admin::new(&s).integration("alice/contacts", "Webform").await;
    let mut tasks = Vec::new();
    for i in 0..12 {
        let (http, url, token) = (s.http(), format!("{}/api/v1/ingest", s.base), token.clone());
        tasks.push(tokio::spawn(async move {
            let body =
                json!({"email": "Race@Example.org", "name": format!("Racer {i}"), "event": {"start": "2026-11-23"}});
            let r = http.post(url).bearer_auth(token).body(body.to_string()).send().await.expect("send");
            let status = r.status().as_u16();
            let v: Value = serde_json::from_str(&r.text().await.expect("body")).expect("json");
            (status, v)
        }));
    }
    let mut uids = std::collections::BTreeSet::new();
    let mut created = 0;
    for t in tasks {
        let (status, v) = t.await.expect("join");
        assert!(status == 200 || status == 201, "{status} {v}");
        created += usize::from(v["created"] == true);
        uids.insert(v["uid"].as_str().unwrap_or_default().to_string());
    }
    assert_eq!((created, uids.len()), (1, 1), "one contact, created once: {uids:?}");
    let (_, hrefs) = book_state(&alice).await;
    assert_eq!(hrefs.len(), 1, "{hrefs:?}");
    let uid = uids.into_iter().next().unwrap_or_default();
    assert!(card_text(&alice, &uid).await.contains("Recurring"), "11 more bookings make it Recurring");
    s.stop().await;
}

#[tokio::test]
async fn bad_ingests_answer_4xx_with_a_message_and_change_nothing() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let admin = Admin::new(&s);
    let token = admin.integration("alice/contacts", "Booking").await;
    let before = book_state(&alice).await;

    let huge = json!({"email": "a@b.de", "name": "x".repeat(70 * 1024)}).to_string();
    let cases: Vec<(Option<&str>, String, u16, &str)> = vec![
        (Some(&token), json!({"name": "No Mail"}).to_string(), 400, "email"),
        (Some(&token), json!({"email": ""}).to_string(), 400, "email"),
        (Some(&token), json!({"email": "not-an-address"}).to_string(), 400, "not an e-mail address"),
        (Some(&token), json!({"email": "a b@c.de"}).to_string(), 400, "not an e-mail address"),
        (Some(&token), json!({"email": "a@b.de", "event": {"start": "next tuesday"}}).to_string(), 400, "event.start"),
        (Some(&token), json!({"email": "a@b.de", "colour": "red"}).to_string(), 400, "colour"),
        (Some(&token), json!({"email": "a@b.de", "name": "x".repeat(600)}).to_string(), 400, "name"),
        (Some(&token), "{not json".to_string(), 400, "invalid ingest body"),
        (Some(&token), huge, 413, "64 KiB"),
        (None, json!({"email": "a@b.de"}).to_string(), 401, "integration bearer token"),
        (Some("kartei_int_wrong"), json!({"email": "a@b.de"}).to_string(), 401, "integration bearer token"),
        (Some(&s.admin_token), json!({"email": "a@b.de"}).to_string(), 401, "integration bearer token"),
    ];
    for (token, body, status, message) in &cases {
        let (got, v) = ingest(&s, *token, body).await;
        assert_eq!(got, *status, "{}: {v}", &body[..body.len().min(80)]);
        assert!(v.to_string().contains(message), "message for {}: {v}", &body[..body.len().min(80)]);
    }
    // A book that is not the integration's.
    let r = s
        .http()
        .post(format!("{}/api/v1/books/other/ingest", s.base))
        .bearer_auth(&token)
        .body(json!({"email": "a@b.de"}).to_string())
        .send()
        .await
        .expect("send");
    assert_eq!(r.status().as_u16(), 403);
    // Integrations need a real book, a name, and the admin token.
    let (status, _, text) =
        admin.call("POST", "/admin/v1/integrations", Some(json!({"book": "alice/nope", "name": "X"}))).await;
    assert_eq!(status, 404, "{text}");
    let (status, _, text) = admin.call("POST", "/admin/v1/integrations", Some(json!({"book": "alice/contacts"}))).await;
    assert_eq!(status, 400, "{text}");
    let (status, _, text) =
        admin.call("POST", "/admin/v1/integrations", Some(json!({"book": "alice/contacts", "name": "Booking"}))).await;
    assert_eq!(status, 409, "{text}");
    let r = s.http().get(format!("{}/admin/v1/integrations", s.base)).send().await.expect("send");
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(book_state(&alice).await, before, "nothing changed");

    // The integration's own book path works too.
    let r = s
        .http()
        .post(format!("{}/api/v1/books/contacts/ingest", s.base))
        .bearer_auth(&token)
        .body(json!({"email": "ok@b.de"}).to_string())
        .send()
        .await
        .expect("send");
    assert_eq!(r.status().as_u16(), 201);
    s.stop().await;
}

async fn api_get(dav: &Dav, path: &str) -> (u16, Value, String) {
    let r = dav.get(path).await;
    (r.status.as_u16(), serde_json::from_slice(&r.body).unwrap_or(Value::Null), r.text())
}

#[tokio::test]
async fn provenance_and_purposes_are_recorded_and_travel_in_the_vcard() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await.with_agent("DAVx5/4.4.2-ose (2024/06/01; dav4jvm; okhttp/4.12.0) Android/14");
    alice.put_card("p1.vcf", "p1", "Paula Prov", "EMAIL:paula@prov.de\r\n").await;
    let (status, h, text) = api_get(&alice, "/api/v1/books/contacts/contacts/p1/history").await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(h["origin"]["source"].as_str().map(|s| s.starts_with("carddav: DAVx5/4.4.2")), Some(true), "{h}");
    assert_eq!(h["origin"]["created_by"], "alice");

    let bob_view = s.user("bob").await;
    drop(bob_view);
    let (status, purposes, _) = api_get(&alice, "/api/v1/purposes").await;
    assert_eq!(status, 200);
    assert!(purposes["purposes"].as_array().is_some_and(|p| p.contains(&json!("Newsletter"))), "{purposes}");
    let patch = |body: Value| {
        let alice = &alice;
        async move {
            let r = alice
                .send(
                    "PATCH",
                    "/api/v1/books/contacts/contacts/p1",
                    &[("content-type", "application/json")],
                    body.to_string(),
                )
                .await;
            (r.status.as_u16(), r.text())
        }
    };
    let (status, text) = patch(json!({"purposes": ["Newsletter", "Customer care"]})).await;
    assert_eq!(status, 200, "{text}");
    let card = card_text(&alice, "p1").await;
    assert!(card.contains("X-KARTEI-PURPOSE:Newsletter") && card.contains("X-KARTEI-PURPOSE:Customer care"), "{card}");
    let (status, text) = patch(json!({"purposes": ["Selling to third parties"]})).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("not a configured purpose"), "{text}");

    let (_, h, _) = api_get(&alice, "/api/v1/books/contacts/contacts/p1/history").await;
    assert_eq!(h["origin"]["changed_via"], "api", "{h}");
    assert_eq!(h["origin"]["source"].as_str().map(|s| s.starts_with("carddav")), Some(true), "the source stays: {h}");
    s.stop().await;
}

#[tokio::test]
async fn subject_access_report_and_erasure_reach_every_book_and_device() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let admin = Admin::new(&s);
    let token = admin.integration("alice/contacts", "Booking").await;
    let person = "Lea.Berg@Berg-Tech.de";

    // A scripted history: ingested with a booking, edited on a phone, exported with a purpose, and a second
    // card for the same person in another user's book.
    let v = ok_ingest(&s, &token, json!({"email": person, "name": "Lea Berg", "event": {"start": "2026-10-01T09:00:00Z", "title": "Consultation", "host": "alice"}})).await;
    let uid = v["uid"].as_str().expect("uid").to_string();
    let edited = card_text(&alice, &uid).await.replace("FN:Lea Berg", "FN:Dr. Lea Berg");
    let r = alice
        .put(&format!("{}{uid}.vcf", alice.book()), &edited, &[("user-agent", "iOS/17.5 (21F79) dataaccessd/1.0")])
        .await;
    assert!(r.status.is_success());
    let r = alice.get("/api/v1/contacts/export?format=csv&purpose=Newsletter&q=berg").await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text());
    bob.put_card("lea.vcf", "bob-lea", "Lea B.", "EMAIL:lea.berg@berg-tech.de\r\n").await;
    alice.put_card("other.vcf", "other", "Someone Else", "EMAIL:else@berg-tech.de\r\n").await;
    let (alice_token, _) = book_state(&alice).await;
    let (bob_token, _) = book_state(&bob).await;

    let (status, report, text) =
        admin.call("GET", "/admin/v1/subject-access?email=lea.berg%40berg-tech.de", None).await;
    assert_eq!(status, 200, "{text}");
    let contacts = report["contacts"].as_array().expect("contacts");
    assert_eq!(contacts.len(), 2, "both books: {report}");
    let mine = contacts.iter().find(|c| c["book"] == "alice/contacts").expect("alice's card");
    assert_eq!(mine["contact"]["fn"], "Dr. Lea Berg");
    assert_eq!(mine["origin"]["source"], "ingest: Booking");
    assert_eq!(mine["origin"]["changed_via"].as_str().map(|v| v.contains("iOS/17.5")), Some(true), "{mine}");
    assert_eq!(mine["events"][0]["title"], "Consultation");
    let actions: Vec<&str> =
        report["audit"].as_array().expect("audit").iter().filter_map(|r| r["action"].as_str()).collect();
    assert!(actions.contains(&"ingest") && actions.contains(&"export"), "{actions:?}");
    let export = report["audit"].as_array().into_iter().flatten().find(|r| r["action"] == "export").expect("export");
    assert!(export["detail"].as_str().is_some_and(|d| d.contains("Newsletter")), "the purpose is shown: {export}");
    let bobs = contacts.iter().find(|c| c["book"] == "bob/contacts").expect("bob's card");
    assert_eq!(bobs["origin"]["created_by"], "bob");

    let r = s
        .http()
        .get(format!("{}/admin/v1/subject-access?email=lea.berg%40berg-tech.de&format=html", s.base))
        .bearer_auth(&s.admin_token)
        .send()
        .await
        .expect("send");
    assert!(r.headers()["content-type"].to_str().unwrap_or("").starts_with("text/html"));
    let html = r.text().await.expect("html");
    assert!(html.contains("Data held about lea.berg@berg-tech.de") && html.contains("Consultation"), "{html}");

    // Erasure: gone from both books, seen as deletions by each device's next delta, history gone, and only
    // a count-only record that it happened.
    let (status, erased, text) = admin.call("POST", "/admin/v1/erase", Some(json!({"email": person}))).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(erased["erased"]["contacts"], 2, "{erased}");
    let delta = alice.sync(&alice.book(), &alice_token, "<d:getetag/>", None).await.multistatus();
    let gone = delta.get(&format!("{}{uid}.vcf", alice.book()));
    assert_eq!(gone.status.as_deref(), Some("HTTP/1.1 404 Not Found"));
    assert_eq!(delta.responses.len(), 1, "the other contact of that domain stays");
    let delta = bob.sync(&bob.book(), &bob_token, "<d:getetag/>", None).await.multistatus();
    assert_eq!(delta.get(&format!("{}lea.vcf", bob.book())).status.as_deref(), Some("HTTP/1.1 404 Not Found"));
    let (_, audit, text) = admin.call("GET", "/admin/v1/audit", None).await;
    assert!(!text.to_lowercase().contains("lea.berg") && !text.contains(&uid), "no personal data remains: {text}");
    assert!(
        audit["records"].as_array().into_iter().flatten().any(|r| r["action"] == "subject.erase"),
        "the erasure is recorded: {audit}"
    );
    let (_, after, _) = admin.call("GET", "/admin/v1/subject-access?email=lea.berg%40berg-tech.de", None).await;
    assert_eq!(after["contacts"].as_array().map(Vec::len), Some(0), "{after}");
    assert_eq!(after["events_without_contact"].as_array().map(Vec::len), Some(0), "{after}");
    let (status, _, _) = admin.call("POST", "/admin/v1/erase", Some(json!({"email": "nonsense"}))).await;
    assert_eq!(status, 400);
    s.stop().await;
}

#[tokio::test]
async fn retention_deletes_old_event_history_and_keeps_the_contact() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let admin = Admin::new(&s);
    let token = admin.integration("alice/contacts", "Booking").await;
    let v = ok_ingest(
        &s,
        &token,
        json!({"email": "old@firm.de", "name": "Old Client", "event": {"start": "2026-01-10T09:00:00Z"}}),
    )
    .await;
    let uid = v["uid"].as_str().expect("uid").to_string();
    ok_ingest(&s, &token, json!({"email": "old@firm.de", "event": {"start": "2026-11-01T09:00:00Z"}})).await;

    let (status, _, text) =
        admin.call("PUT", "/admin/v1/users/alice/books/contacts/retention", Some(json!({"days": 90}))).await;
    assert_eq!(status, 200, "{text}");
    let (status, _, _) =
        admin.call("PUT", "/admin/v1/users/alice/books/contacts/retention", Some(json!({"days": -3}))).await;
    assert_eq!(status, 400);
    let (status, _, _) =
        admin.call("PUT", "/admin/v1/users/alice/books/nope/retention", Some(json!({"days": 3}))).await;
    assert_eq!(status, 404);

    // The job with a fake clock: on 2026-11-23, 90 days reach back to 2026-08-25.
    let now = kartei::dates::parse_timestamp("2026-11-23T00:00:00Z").expect("date");
    let store = s.store();
    let deleted = tokio::task::spawn_blocking(move || kartei::privacy::expire_events(store.as_ref(), now))
        .await
        .expect("join")
        .expect("retention job");
    assert_eq!(deleted.len(), 1, "{deleted:?}");
    assert_eq!(deleted[0]["deleted"], 1);
    let (_, h, _) = api_get(&alice, &format!("/api/v1/books/contacts/contacts/{uid}/history")).await;
    let starts: Vec<&str> = h["events"].as_array().into_iter().flatten().filter_map(|e| e["start"].as_str()).collect();
    assert_eq!(starts, ["2026-11-01T09:00:00Z"], "{h}");
    assert!(card_text(&alice, &uid).await.contains("FN:Old Client"), "the contact stays");
    // A later clock removes the rest, through the admin endpoint too (real clock: far past the events).
    let (status, v, text) = admin.call("POST", "/admin/v1/retention/run", None).await;
    assert_eq!(status, 200, "{text}");
    let total: i64 = v["deleted"].as_array().into_iter().flatten().filter_map(|d| d["deleted"].as_i64()).sum();
    assert!(total <= 1, "{v}");
    let (_, audit, _) = admin.call("GET", "/admin/v1/audit", None).await;
    assert!(audit["records"].as_array().into_iter().flatten().any(|r| r["action"] == "events.expire"), "logged");
    s.stop().await;
}

#[tokio::test]
async fn cli_ingest_follows_the_same_rules_on_the_live_database() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let config = s.dir.path().join("cli.toml");
    std::fs::write(&config, format!("[storage]\ndata_dir = \"{}\"\n", s.config.storage.data_dir.display()))
        .expect("config");
    let run = |book: &str, body: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_kartei"))
            .arg("--config")
            .arg(&config)
            .args(["ingest", "--book", book, "--source", "Front desk", body])
            .output()
            .expect("kartei");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = run(
        "alice/contacts",
        r#"{"email": "walk.in@firma.de", "name": "Walk In", "event": {"start": "2026-11-23T08:00:00Z"}}"#,
    );
    assert!(ok, "{out}{err}");
    let first: Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(first["created"], true);
    let (ok, out, err) =
        run("alice/contacts", r#"{"email": "WALK.IN@firma.de", "event": {"start": "2026-11-30T08:00:00Z"}}"#);
    assert!(ok, "{out}{err}");
    let second: Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(
        (second["created"].clone(), second["uid"].clone(), tags(&second)),
        (json!(false), first["uid"].clone(), vec!["Recurring".to_string()])
    );
    let uid = first["uid"].as_str().expect("uid");
    assert!(card_text(&alice, uid).await.contains("ORG:Firma"), "the running server sees the CLI's contact");
    let (ok, _, err) = run("alice/contacts", r#"{"name": "no mail"}"#);
    assert!(!ok && err.contains("email"), "{err}");
    let (ok, _, err) = run("alice/nope", r#"{"email": "a@b.de"}"#);
    assert!(!ok && err.contains("no book"), "{err}");
    s.stop().await;
}

/// An address with non-ASCII letters is found by erasure, by ingest and by an import's e-mail match, whatever
/// form (precomposed or not, any case) it was written in. (Found by a review: the stored column holds the
/// i;unicode-casemap form, and these lookups lower-cased only.)
#[tokio::test]
async fn a_non_ascii_address_is_found_by_erasure_ingest_and_import() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let admin = Admin::new(&s);
    alice.put_card("j.vcf", "j", "Jürgen", "EMAIL:jürgen@müller.de\r\n").await;
    let csv = "Name,E-mail Address\nJürgen M.,JU\u{308}RGEN@MÜLLER.DE\n";
    let r = alice.send("POST", "/api/v1/books/contacts/import?format=csv", &[], csv.to_string()).await;
    let v: Value = serde_json::from_slice(&r.body).expect("json");
    assert_eq!((r.status.as_u16(), &v["created"], &v["rows"][0]["match"]), (200, &json!(0), &json!("email")), "{v}");
    let token = admin.integration("alice/contacts", "Booking").await;
    let booked = ok_ingest(&s, &token, json!({"email": "Jürgen@Müller.de", "name": "Jürgen Müller"})).await;
    assert_eq!(booked["created"], false, "ingest matched the card: {booked}");
    // The same mailbox with its domain in punycode (as some systems send it) is the same person.
    let booked = ok_ingest(&s, &token, json!({"email": "jürgen@xn--mller-kva.de"})).await;
    assert_eq!(booked["created"], false, "punycode domain matched the card: {booked}");
    let (_, report, _) = admin.call("GET", "/admin/v1/subject-access?email=j%C3%BCrgen@xn--mller-kva.de", None).await;
    assert_eq!(report["contacts"].as_array().map(Vec::len), Some(1), "{report}");
    let (status, erased, text) =
        admin.call("POST", "/admin/v1/erase", Some(json!({"email": "jürgen@müller.de"}))).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(erased["erased"]["contacts"], 1, "{erased}");
    assert_eq!(alice.get(&format!("{}j.vcf", alice.book())).await.status, 404);
    s.stop().await;
}

/// Subject access and erasure find a person by the address however a card writes it (blanks around it,
/// `mailto:`), report and redact every export of their cards (a sharee's too), and leave alone the records
/// of other people whose UIDs merely contain theirs or repeat it in another book.
async fn api(dav: &Dav, body: Value, book: &str) {
    let path = format!("/api/v1/books/{book}/contacts");
    let r = dav.send("POST", &path, &[("content-type", "application/json")], body.to_string()).await;
    assert_eq!(r.status.as_u16(), 201, "{}", r.text());
}

#[tokio::test]
async fn subject_requests_match_whole_addresses_and_only_this_persons_records() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let admin = Admin::new(&s);
    // The person, and two others: one in bob's book with a UID that contains hers, one with the same UID.
    api(&alice, json!({"uid": "contact1", "fn": "Ann One", "emails": [{"value": "one@uid.example"}]}), "contacts")
        .await;
    api(&bob, json!({"uid": "contact12", "fn": "Ben Twelve", "emails": [{"value": "twelve@uid.example"}]}), "contacts")
        .await;
    api(&bob, json!({"uid": "contact1", "fn": "Bea Other", "emails": [{"value": "bea@uid.example"}]}), "contacts")
        .await;
    // Two more cards of hers, written as some producers do.
    alice.put_card("blank.vcf", "blank", "Ann Blank", "EMAIL;TYPE=INTERNET:One@uid.example \r\n").await;
    let uri = vcard4("uri", "Ann Uri", "EMAIL;VALUE=uri:mailto:one@uid.example\r\n");
    assert!(alice.put(&format!("{}uri.vcf", alice.book()), &uri, &[]).await.status.is_success());
    // Bob sees alice's book through a share and exports her from it.
    let segment = s.share("alice", "contacts", "bob", false).await;
    let r = bob.get(&format!("/api/v1/contacts/export?format=csv&purpose=BobCampaign&book={segment}&q=Ann")).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text());
    let r = bob.get("/api/v1/contacts/export?format=csv&purpose=BobOwn&book=contacts").await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text());
    // An ingest matches the card written with a blank instead of making a duplicate.
    let token = admin.integration("alice/contacts", "Booking").await;
    let booked = ok_ingest(&s, &token, json!({"email": "one@uid.example", "name": "Ann"})).await;
    assert_eq!(booked["created"], false, "{booked}");

    let (status, report, text) = admin.call("GET", "/admin/v1/subject-access?email=one@uid.example", None).await;
    assert_eq!(status, 200, "{text}");
    let mut uids: Vec<&str> =
        report["contacts"].as_array().into_iter().flatten().filter_map(|c| c["uid"].as_str()).collect();
    uids.sort();
    assert_eq!(uids, ["blank", "contact1", "uri"], "{report}");
    let audit = report["audit"].as_array().expect("audit");
    let purposes: Vec<&str> = audit
        .iter()
        .filter(|r| r["action"] == "export")
        .filter_map(|r| serde_json::from_str::<Value>(r["detail"].as_str()?).ok())
        .filter_map(|d| d["purpose"].as_str().map(str::to_string))
        .map(|p| if p == "BobCampaign" { "BobCampaign" } else { "other" })
        .collect();
    assert_eq!(purposes, ["BobCampaign"], "bob's export of her card, and not his export of his own: {report}");
    assert!(
        audit.iter().all(|r| r["actor"] != "bob" || r["action"] == "export"),
        "bob's records about his own cards are not hers: {report}"
    );

    let (status, erased, text) = admin.call("POST", "/admin/v1/erase", Some(json!({"email": "One@UID.example"}))).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(erased["erased"]["contacts"], 3, "{erased}");
    for name in ["blank", "uri"] {
        assert_eq!(alice.get(&format!("{}{name}.vcf", alice.book())).await.status, 404, "{name}");
    }
    let (_, audit, text) = admin.call("GET", "/admin/v1/audit", None).await;
    assert!(!text.to_lowercase().contains("one@uid.example"), "{text}");
    assert!(!text.contains("q=Ann") && !text.contains("\\\"Ann\\\""), "the export's query is erased: {text}");
    let records = audit["records"].as_array().expect("records");
    let details = |action: &str, actor: &str| -> Vec<String> {
        records
            .iter()
            .filter(|r| r["action"] == action && r["actor"] == actor)
            .filter_map(|r| r["detail"].as_str().map(str::to_string))
            .collect()
    };
    let mut bobs = details("contact.create", "bob");
    bobs.sort();
    assert_eq!(bobs, ["contact1", "contact12"], "bob's records about his own cards are untouched");
    assert_eq!(details("contact.create", "alice"), ["[erased]"]);
    let exports = details("export", "bob");
    assert!(exports.iter().any(|d| d.contains("BobCampaign") && d.contains("[erased]")), "{exports:?}");
    assert!(exports.iter().any(|d| d.contains("BobOwn") && !d.contains("[erased]")), "{exports:?}");
    s.stop().await;
}

/// Event history and audit records keep an address as it was written; erasure and subject access find them
/// under the other spelling of an internationalized domain too (a booking tool that sent punycode).
#[tokio::test]
async fn erasure_reaches_history_written_with_the_other_spelling_of_the_domain() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let admin = Admin::new(&s);
    let token = admin.integration("alice/contacts", "Booking").await;
    let booked =
        ok_ingest(&s, &token, json!({"email": "jürgen@xn--mller-kva.de", "event": {"start": "2026-10-01T09:00:00Z"}}))
            .await;
    let uid = booked["uid"].as_str().expect("uid").to_string();
    // The card goes over CardDAV; its event history stays, under the punycode address.
    assert_eq!(alice.delete(&format!("{}{uid}.vcf", alice.book()), &[]).await.status, 204);
    let (_, report, _) = admin.call("GET", "/admin/v1/subject-access?email=j%C3%BCrgen@m%C3%BCller.de", None).await;
    assert_eq!(report["events_without_contact"].as_array().map(Vec::len), Some(1), "{report}");
    let (status, erased, text) =
        admin.call("POST", "/admin/v1/erase", Some(json!({"email": "jürgen@müller.de"}))).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(erased["erased"]["events"], 1, "{erased}");
    let (_, _, audit) = admin.call("GET", "/admin/v1/audit", None).await;
    assert!(!audit.contains("xn--mller-kva") && !audit.contains("müller.de"), "{audit}");
    let (_, report, _) = admin.call("GET", "/admin/v1/subject-access?email=j%C3%BCrgen@xn--mller-kva.de", None).await;
    assert_eq!(report["events_without_contact"].as_array().map(Vec::len), Some(0), "{report}");
    s.stop().await;
}
