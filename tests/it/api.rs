//! The contact-manager API (`/api/v1/`): search quality, filters, paging, edits that devices see, views,
//! export with purpose and audit, import with dry run and atomicity.

use crate::support::*;
use serde_json::{Value, json};

async fn api(dav: &Dav, method: &str, path: &str, body: Option<Value>, headers: &[(&str, &str)]) -> (u16, Value, Resp) {
    let mut h = vec![("content-type", "application/json")];
    h.extend_from_slice(headers);
    let r = dav.send(method, path, &h, body.map(|b| b.to_string()).unwrap_or_default()).await;
    let v = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    (r.status.as_u16(), v, r)
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

async fn search(dav: &Dav, query: &str) -> Vec<String> {
    let (status, v, r) = api(dav, "GET", &format!("/api/v1/contacts?{query}"), None, &[]).await;
    assert_eq!(status, 200, "{query}: {}", r.text());
    let mut names: Vec<String> = v["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["fn"].as_str().unwrap_or_default().to_string())
        .collect();
    names.sort();
    names
}

async fn seed(s: &TestServer) -> Dav {
    let alice = s.user("alice").await;
    let cards = [
        (
            "mueller",
            "Jürgen Müller",
            "EMAIL;TYPE=WORK:j.mueller@bau-gmbh.de\r\nTEL;TYPE=WORK:030/1234\r\nORG:Bau GmbH;Einkauf\r\nADR;TYPE=WORK:;;Hauptstr. 1;Berlin;;10115;Germany\r\nTITLE:Geschäftsführer\r\nBDAY:1970-05-01\r\n",
        ),
        (
            "meier",
            "Anna Meier",
            "EMAIL:anna@meier.org\r\nTEL;TYPE=CELL:+49 171 5550000\r\nADR:;;Marktplatz 5;München;;80331;Germany\r\nBDAY:1990-12-24\r\n",
        ),
        (
            "smith",
            "John Smith",
            "EMAIL:john@example.com\r\nORG:Example Inc.\r\nADR:;;1 Main St;Boston;MA;02101;USA\r\nX-KARTEI-INFLUENCE:high\r\n",
        ),
        ("celik", "Cara Çelik", "EMAIL:cara@bau-gmbh.de\r\nORG:Bau GmbH\r\nADR:;;Ring 2;Berlin;;10117;Germany\r\n"),
    ];
    for (name, fn_, extra) in cards {
        alice.put_card(&format!("{name}.vcf"), name, fn_, extra).await;
    }
    alice
}

#[tokio::test]
async fn quick_search_quality() {
    let s = TestServer::start().await;
    let alice = seed(&s).await;
    let table: &[(&str, &[&str])] = &[
        ("muller", &["Jürgen Müller"]),
        ("MÜLLER", &["Jürgen Müller"]),
        ("jurgen", &["Jürgen Müller"]),
        ("celik", &["Cara Çelik"]),
        ("+49 30 1234", &["Jürgen Müller"]),
        ("030 1234", &["Jürgen Müller"]),
        ("0171-555", &["Anna Meier"]),
        ("j.mueller@bau", &["Jürgen Müller"]),
        ("bau-gmbh.de", &["Cara Çelik", "Jürgen Müller"]),
        ("bau gmbh berlin", &["Cara Çelik", "Jürgen Müller"]),
        ("cara berlin", &["Cara Çelik"]),
        ("münchen", &["Anna Meier"]),
        ("einkauf", &["Jürgen Müller"]),
        ("nobody-here", &[]),
    ];
    for (q, expected) in table {
        assert_eq!(search(&alice, &format!("q={}", enc(q))).await, *expected, "q={q}");
    }
    // A card written over CardDAV is found at once.
    alice.put_card("new.vcf", "new", "Zoë Neu", "EMAIL:zoe@neu.de\r\n").await;
    assert_eq!(search(&alice, "q=zoe").await, ["Zoë Neu"]);
    s.stop().await;
}

#[tokio::test]
async fn filters_sorting_and_paging() {
    let s = TestServer::start().await;
    let alice = seed(&s).await;
    let f = |v: Value| format!("filter={}", enc(&v.to_string()));
    assert_eq!(
        search(&alice, &f(json!({"column": "city", "op": "equals", "value": "berlin"}))).await,
        ["Cara Çelik", "Jürgen Müller"]
    );
    assert_eq!(
        search(&alice, &f(json!({"column": "org", "op": "starts-with", "value": "Bau"}))).await,
        ["Cara Çelik", "Jürgen Müller"]
    );
    assert_eq!(search(&alice, &f(json!({"column": "title", "op": "is-not-empty"}))).await, ["Jürgen Müller"]);
    assert_eq!(search(&alice, &f(json!({"column": "phone", "op": "is-empty"}))).await, ["Cara Çelik", "John Smith"]);
    // A phone is compared by number, however it is written on either side (found by a review).
    assert_eq!(
        search(&alice, &f(json!({"column": "phone", "op": "contains", "value": "+49 30 1234"}))).await,
        ["Jürgen Müller"]
    );
    assert_eq!(
        search(&alice, &f(json!({"column": "phone", "op": "equals", "value": "0171 5550000"}))).await,
        ["Anna Meier"]
    );
    assert_eq!(
        search(&alice, &f(json!({"column": "birthday", "op": "before", "value": "1980-01-01"}))).await,
        ["Jürgen Müller"]
    );
    assert_eq!(
        search(&alice, &f(json!({"column": "birthday", "op": "after", "value": "1980-01-01"}))).await,
        ["Anna Meier"]
    );
    assert_eq!(
        search(&alice, &f(json!({"column": "influence", "op": "equals", "value": "HIGH"}))).await,
        ["John Smith"]
    );
    assert_eq!(
        search(&alice, &f(json!({"or": [{"column": "country", "op": "equals", "value": "USA"}, {"column": "city", "op": "equals", "value": "München"}]}))).await,
        ["Anna Meier", "John Smith"]
    );
    assert_eq!(
        search(&alice, &format!("q=bau&{}", f(json!({"and": [{"column": "city", "op": "contains", "value": "berl"}, {"column": "title", "op": "is-empty"}]})))).await,
        ["Cara Çelik"]
    );
    for (bad, message) in [
        (f(json!({"column": "shoe_size", "op": "equals", "value": "42"})), "shoe_size"),
        (f(json!({"column": "city", "op": "resembles", "value": "x"})), "resembles"),
        ("filter=%7Bnot-json".to_string(), "filter"),
        ("sort=-nope".to_string(), "nope"),
        ("columns=fn,zodiac".to_string(), "zodiac"),
        ("cursor=garbage!!".to_string(), "cursor"),
        ("limit=0".to_string(), "limit"),
    ] {
        let (status, v, _) = api(&alice, "GET", &format!("/api/v1/contacts?{bad}"), None, &[]).await;
        assert_eq!(status, 400, "{bad}");
        assert!(v["error"].as_str().unwrap_or_default().contains(message), "{bad}: {v}");
    }
    // Paging with a cursor visits every contact once, in sort order.
    let mut seen = Vec::new();
    let mut cursor = String::new();
    for _ in 0..10 {
        let (status, v, _) = api(
            &alice,
            "GET",
            &format!("/api/v1/contacts?sort=-fn&limit=3&columns=fn,city&cursor={cursor}"),
            None,
            &[],
        )
        .await;
        assert_eq!(status, 200);
        for item in v["items"].as_array().expect("items") {
            assert!(item.get("city").is_some() && item.get("emails").is_none(), "column selection: {item}");
            seen.push(item["fn"].as_str().expect("fn").to_string());
        }
        match v["next"].as_str() {
            Some(next) => cursor = next.to_string(),
            None => break,
        }
    }
    // Sorting uses the folded value: "jurgen muller" > "john smith".
    assert_eq!(seen, ["Jürgen Müller", "John Smith", "Cara Çelik", "Anna Meier"]);
    s.stop().await;
}

#[tokio::test]
async fn edits_through_the_api_reach_devices() {
    let s = TestServer::start().await;
    let alice = seed(&s).await;
    let token = alice.sync(&alice.book(), "", "<d:getetag/>", None).await.multistatus().sync_token.expect("token");

    let (status, created, r) = api(
        &alice,
        "POST",
        "/api/v1/books/contacts/contacts",
        Some(json!({"fn": "Petra Plan", "name": {"family": "Plan", "given": "Petra"}, "emails": [{"value": "petra@plan.de", "types": ["work"]}],
                    "org": "Planbüro", "position": null, "categories": ["Architekt"], "influence": "medium", "attitude": "positive"}).as_object().map(|o| {
            let mut o = o.clone(); o.remove("position"); Value::Object(o) }).expect("obj")),
        &[],
    )
    .await;
    assert_eq!(status, 201, "{}", r.text());
    let uid = created["uid"].as_str().expect("uid").to_string();
    let etag = r.header("etag").expect("etag");
    // The card is a real vCard that CardDAV serves, with the custom fields as X- properties.
    let vcf = alice.get(created["href"].as_str().expect("href")).await.text();
    assert!(
        vcf.contains("FN:Petra Plan")
            && vcf.contains("X-KARTEI-INFLUENCE:medium")
            && vcf.contains("CATEGORIES:Architekt"),
        "{vcf}"
    );

    // Update with a stale ETag is refused; with the right one it lands, and a sync delta sees it.
    let path = format!("/api/v1/books/contacts/contacts/{uid}");
    let (status, _, _) =
        api(&alice, "PATCH", &path, Some(json!({"title": "Chefin"})), &[("if-match", "\"stale\"")]).await;
    assert_eq!(status, 412);
    let (status, patched, _) =
        api(&alice, "PATCH", &path, Some(json!({"title": "Chefin"})), &[("if-match", &etag)]).await;
    assert_eq!(status, 200);
    assert_eq!(patched["title"], "Chefin");
    assert_eq!(patched["org"], "Planbüro", "PATCH keeps other fields");
    let delta = alice.sync(&alice.book(), &token, "<d:getetag/><card:address-data/>", None).await.multistatus();
    let href = created["href"].as_str().expect("href");
    assert!(delta.get(href).text(CARD, "address-data").expect("data").contains("TITLE:Chefin"));

    // An API edit of a device's card keeps what the device wrote that the API does not know.
    let (status, mueller, _) = api(&alice, "GET", "/api/v1/books/contacts/contacts/mueller", None, &[]).await;
    assert_eq!(status, 200);
    assert_eq!(mueller["addresses"][0]["city"], "Berlin");
    assert_eq!(mueller["department"], "Einkauf");
    let mut edited = mueller.clone();
    edited["phones"] = json!([{"value": "+49 30 999", "types": ["work"]}]);
    let (status, _, _) = api(&alice, "PUT", "/api/v1/books/contacts/contacts/mueller", Some(edited), &[]).await;
    assert_eq!(status, 200);
    let vcf = alice.get(&format!("{}mueller.vcf", alice.book())).await.text();
    assert!(
        vcf.contains("TEL;TYPE=work:+49 30 999") && !vcf.contains("030/1234") && vcf.contains("BDAY:1970-05-01"),
        "{vcf}"
    );

    // A card written with LF line endings (some producers do) keeps them: edited and added lines too.
    let lf_card = "BEGIN:VCARD\nVERSION:3.0\nUID:lf-1\nFN:Lena Feld\nTEL;TYPE=HOME:+49 30 1\nEND:VCARD\n";
    let r = alice.put(&format!("{}lf.vcf", alice.book()), lf_card, &[]).await;
    assert!(r.status.is_success(), "{}", r.text());
    let (status, lena, _) = api(&alice, "GET", "/api/v1/books/contacts/contacts/lf-1", None, &[]).await;
    assert_eq!(status, 200);
    let mut edited = lena.clone();
    edited["phones"] = json!([{"value": "+49 30 2", "types": ["home"]}]);
    edited["emails"] = json!([{"value": "lena@feld.de", "types": ["home"]}]);
    edited["title"] = json!("A title long enough that its line is folded at seventy-five octets, twice over, really");
    let (status, _, r) = api(&alice, "PUT", "/api/v1/books/contacts/contacts/lf-1", Some(edited), &[]).await;
    assert_eq!(status, 200, "{}", r.text());
    let vcf = alice.get(&format!("{}lf.vcf", alice.book())).await.text();
    assert!(vcf.contains("+49 30 2\n") && vcf.contains("lena@feld.de\n") && vcf.contains("\n "), "{vcf:?}");
    assert!(!vcf.contains('\r'), "no CR in a card written with LF: {vcf:?}");

    // Other representations.
    let js = alice.get(&format!("{path}?format=jscontact")).await;
    assert!(js.header("content-type").expect("ct").contains("jscontact"));
    let js: Value = serde_json::from_slice(&js.body).expect("JSContact JSON");
    assert_eq!(js["@type"], "Card", "{js}");
    let v3 = alice.get(&format!("{path}?format=vcard&version=3.0")).await.text();
    assert!(v3.contains("VERSION:3.0"));

    // Bad input names the problem.
    let (status, v, _) =
        api(&alice, "POST", "/api/v1/books/contacts/contacts", Some(json!({"fn": "X", "shoe": 42})), &[]).await;
    assert_eq!(status, 400);
    assert!(v["error"].as_str().expect("error").contains("shoe"), "{v}");
    let (status, _, _) = api(&alice, "POST", "/api/v1/books/contacts/contacts", Some(json!({"emails": []})), &[]).await;
    assert_eq!(status, 400);
    let (status, _, _) = api(&alice, "GET", "/api/v1/books/nobook/contacts/x", None, &[]).await;
    assert_eq!(status, 404);
    let (status, _, _) = api(&alice, "DELETE", &path, None, &[]).await;
    assert_eq!(status, 200);
    assert_eq!(alice.get(href).await.status, 404);
    s.stop().await;
}

#[tokio::test]
async fn views_builtin_and_saved() {
    let s = TestServer::start().await;
    let alice = seed(&s).await;
    // Staff: marked internal, or the e-mail of one of our logins.
    alice.put_card("intern.vcf", "intern", "Ina Intern", "X-KARTEI-INTERNAL:true\r\n").await;
    alice.put_card("colleague.vcf", "colleague", "Bob Kollege", "EMAIL:bob\r\n").await;
    s.user("bob").await;
    assert_eq!(search(&alice, "view=staff").await, ["Bob Kollege", "Ina Intern"]);
    assert_eq!(search(&alice, "view=members").await.len(), 4);
    let (status, view, r) = api(
        &alice,
        "POST",
        "/api/v1/views",
        Some(json!({"name": "Berlin", "filter": {"column": "city", "op": "equals", "value": "Berlin"}, "sort": "-fn", "columns": ["fn", "email"]})),
        &[],
    )
    .await;
    assert_eq!(status, 201, "{}", r.text());
    let id = view["id"].as_str().expect("id").to_string();
    let (_, listed, _) = api(&alice, "GET", &format!("/api/v1/contacts?view={id}"), None, &[]).await;
    let names: Vec<&str> =
        listed["items"].as_array().expect("items").iter().map(|i| i["fn"].as_str().expect("fn")).collect();
    assert_eq!(names, ["Jürgen Müller", "Cara Çelik"], "saved sort applies");
    assert!(listed["items"][0].get("email").is_some());
    let (status, _, _) = api(&alice, "POST", "/api/v1/views", Some(json!({"name": "Berlin"})), &[]).await;
    assert_eq!(status, 409);
    let (status, _, _) =
        api(&alice, "POST", "/api/v1/views", Some(json!({"name": "Bad", "filter": {"column": "nope"}})), &[]).await;
    assert_eq!(status, 400);
    let (status, _, _) =
        api(&alice, "PUT", &format!("/api/v1/views/{id}"), Some(json!({"name": "Berlin (all)"})), &[]).await;
    assert_eq!(status, 200);
    let (_, views, _) = api(&alice, "GET", "/api/v1/views", None, &[]).await;
    assert!(views["views"].as_array().expect("views").iter().any(|v| v["name"] == "Berlin (all)"));
    let (status, _, _) = api(&alice, "DELETE", &format!("/api/v1/views/{id}"), None, &[]).await;
    assert_eq!(status, 200);
    s.stop().await;
}

#[tokio::test]
async fn export_requires_a_purpose_and_is_audited() {
    let s = TestServer::start().await;
    let alice = seed(&s).await;
    let (status, v, _) = api(&alice, "GET", "/api/v1/contacts/export?format=csv&q=bau", None, &[]).await;
    assert_eq!(status, 400);
    assert!(v["error"].as_str().expect("error").contains("purpose"));

    let r = alice.get("/api/v1/contacts/export?format=csv&q=bau&purpose=Newsletter&columns=fn,email,city").await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").expect("ct").starts_with("text/csv"));
    assert!(r.body.starts_with(b"\xEF\xBB\xBF"), "UTF-8 BOM for Excel");
    let text = String::from_utf8(r.body[3..].to_vec()).expect("utf8");
    let lines: Vec<&str> = text.split("\r\n").filter(|l| !l.is_empty()).collect();
    assert_eq!(lines[0], "fn,email,city");
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines.contains(&"Jürgen Müller,j.mueller@bau-gmbh.de,Berlin"), "{text}");

    let vcf = alice.get("/api/v1/contacts/export?format=vcf&purpose=Mail%20merge&version=4.0&filter=%7B%22column%22%3A%22city%22%2C%22op%22%3A%22equals%22%2C%22value%22%3A%22Boston%22%7D").await;
    assert_eq!(vcf.text().matches("BEGIN:VCARD").count(), 1);
    assert!(vcf.text().contains("VERSION:4.0") && vcf.text().contains("X-KARTEI-INFLUENCE:high"));

    let audit = s.audit().await;
    let exports: Vec<&Value> =
        audit["records"].as_array().expect("records").iter().filter(|r| r["action"] == "export").collect();
    assert_eq!(exports.len(), 2);
    let newsletter: Value = serde_json::from_str(exports.iter().find(|r| r["detail"].as_str().unwrap_or("").contains("Newsletter")).expect("newsletter")["detail"].as_str().expect("detail")).expect("json detail");
    assert_eq!(newsletter["count"], 2);
    assert_eq!(newsletter["purpose"], "Newsletter");
    let contacts: Vec<&str> =
        newsletter["contacts"].as_array().expect("contacts").iter().filter_map(Value::as_str).collect();
    assert!(
        contacts.contains(&"/dav/addressbooks/alice/contacts/mueller.vcf")
            && contacts.contains(&"/dav/addressbooks/alice/contacts/celik.vcf")
    );
    assert!(exports.iter().all(|r| r["actor"] == "alice"));
    s.stop().await;
}

#[tokio::test]
async fn import_vcf_and_csv_with_dry_run_matching_and_atomicity() {
    let s = TestServer::start().await;
    let alice = seed(&s).await;
    let import = |format: &'static str, body: Vec<u8>, extra: &'static str| {
        let alice = &alice;
        async move {
            let r =
                alice.send("POST", &format!("/api/v1/books/contacts/import?format={format}{extra}"), &[], body).await;
            let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
            (r.status.as_u16(), v)
        }
    };
    // vCard file with several cards of several versions; one matches by UID, one by e-mail.
    let vcf = format!(
        "{}{}BEGIN:VCARD\r\nVERSION:2.1\r\nN:Alt;Otto\r\nEMAIL;INTERNET:otto@alt.de\r\nEND:VCARD\r\n{}",
        vcard("meier", "Anna Meier-Neu", "EMAIL:anna@meier.org\r\n"),
        vcard4("other-uid", "John Smith (work)", "EMAIL:john@example.com\r\nTEL;TYPE=work:+1 617 555 0100\r\n"),
        vcard4("brand-new", "Nina Neu", "")
    );
    let (status, dry) = import("vcf", vcf.clone().into_bytes(), "&dry_run=true").await;
    assert_eq!(status, 200, "{dry}");
    assert_eq!(
        (dry["created"].as_u64(), dry["updated"].as_u64(), dry["rejected"].as_u64()),
        (Some(2), Some(2), Some(0)),
        "{dry}"
    );
    assert_eq!(search(&alice, "q=nina").await.len(), 0, "a dry run writes nothing");
    let (status, done) = import("vcf", vcf.into_bytes(), "").await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(search(&alice, "q=nina").await, ["Nina Neu"]);
    assert_eq!(search(&alice, "q=otto").await, ["Otto Alt"]);
    // Matched by e-mail (another UID): merged into the existing card, whose name is kept and reported.
    assert_eq!(search(&alice, "q=smith").await, ["John Smith"], "matched by e-mail, not duplicated");
    let smith = done["rows"].as_array().expect("rows").iter().find(|r| r["uid"] == "smith").expect("smith row");
    assert_eq!((&smith["match"], &smith["kept"]), (&json!("email"), &json!(["fn"])), "{done}");
    assert_eq!(search(&alice, "q=617%20555%200100").await, ["John Smith"], "the new phone is added");
    assert_eq!(search(&alice, "q=meier").await, ["Anna Meier-Neu"]);

    // Outlook-style CSV with a BOM and ';' as delimiter, auto-mapped.
    let csv = "\u{feff}First Name;Last Name;E-mail Address;Company;Business City;Mobile Phone\r\nLena;Lang;lena@lang.de;Lang AG;Köln;0170 1234567\r\nJürgen;Müller;j.mueller@bau-gmbh.de;;;\r\n";
    let (status, r) = import("csv", csv.as_bytes().to_vec(), "").await;
    assert_eq!(status, 200, "{r}");
    assert_eq!((r["created"].as_u64(), r["updated"].as_u64()), (Some(1), Some(1)), "{r}");
    let (_, lena, _) = api(&alice, "GET", "/api/v1/contacts?q=lena&columns=fn,org,city,phone", None, &[]).await;
    assert_eq!(lena["items"][0]["fn"], "Lena Lang");
    assert_eq!(lena["items"][0]["city"], "Köln");
    assert_eq!(search(&alice, "q=0170%201234567").await, ["Lena Lang"]);
    let (_, mueller, _) = api(&alice, "GET", "/api/v1/books/contacts/contacts/mueller", None, &[]).await;
    assert_eq!(mueller["org"], "Bau GmbH", "empty CSV cells leave fields alone");

    // Google CSV headers map without help; an explicit mapping overrides.
    let google = "Name,Given Name,Family Name,E-mail 1 - Value,Phone 1 - Value,Organization 1 - Name\nGabi Google,Gabi,Google,gabi@g.com,+1 555 0100,G Inc\n";
    let (status, r) = import("csv", google.as_bytes().to_vec(), "").await;
    assert_eq!((status, r["created"].as_u64()), (200, Some(1)), "{r}");
    let custom = "Kontakt,Mail\nKarl Kunde,karl@kunde.de\n";
    let (status, r) =
        import("csv", custom.as_bytes().to_vec(), "&mapping=%7B%22Kontakt%22%3A%22fn%22%2C%22Mail%22%3A%22email%22%7D")
            .await;
    assert_eq!((status, r["created"].as_u64()), (200, Some(1)), "{r}");

    // A malformed row refuses the whole file: nothing half-imported.
    let broken = "fn,email\nGood One,good@one.de\n\"Broken,row\nAnother,another@x.de\n";
    let before = search(&alice, "").await.len();
    let (status, r) = import("csv", broken.as_bytes().to_vec(), "").await;
    assert_eq!(status, 422, "{r}");
    assert!(r["rows"].as_array().expect("rows").iter().any(|row| row["action"] == "reject"), "{r}");
    assert_eq!(search(&alice, "").await.len(), before);
    let (status, r) = import("csv", b"foo,bar\n1,2\n".to_vec(), "").await;
    assert_eq!(status, 400, "{r}");
    assert!(r["error"].as_str().expect("error").contains("mapping"));
    let (status, _) = import("csv", b"fn,email\n\"\xff\xfe\",x\n".to_vec(), "").await;
    assert_eq!(status, 400, "not UTF-8");
    s.stop().await;
}

#[tokio::test]
async fn openapi_lists_every_route_and_read_only_books_stay_read_only() {
    let s = TestServer::start().await;
    let alice = seed(&s).await;
    let bob = s.user("bob").await;
    let (status, doc, _) = api(&alice, "GET", "/api/v1/openapi.json", None, &[]).await;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.0.3");
    for (method, path, _) in kartei::api::ROUTES {
        assert!(
            doc["paths"][path][method.to_lowercase()].is_object(),
            "{method} {path} missing from the OpenAPI document"
        );
    }
    let import = doc["paths"]["/api/v1/books/{book}/import"]["post"]["description"].as_str().unwrap_or_default();
    assert!(import.contains("Same e-mail only"), "the import rules are documented: {import}");
    // Share alice's book read-only with bob: he finds her contacts but cannot change them.
    let segment = s.share("alice", "contacts", "bob", false).await;
    assert_eq!(search(&bob, "q=muller").await, ["Jürgen Müller"]);
    let (status, _, _) =
        api(&bob, "PATCH", &format!("/api/v1/books/{segment}/contacts/mueller"), Some(json!({"title": "x"})), &[])
            .await;
    assert_eq!(status, 403);
    let (status, _, _) =
        api(&bob, "POST", &format!("/api/v1/books/{segment}/contacts"), Some(json!({"fn": "x"})), &[]).await;
    assert_eq!(status, 403);
    let anonymous = s.http().get(format!("{}/api/v1/contacts", s.base)).send().await.expect("send");
    assert_eq!(anonymous.status(), 401);
    assert!(anonymous.headers().contains_key("www-authenticate"));
    let anonymous: Value = serde_json::from_slice(&anonymous.bytes().await.expect("body")).expect("a JSON error");
    assert_eq!(anonymous["status"], 401, "{anonymous}");
    // Errors raised before an API handler runs (a path that does not decode, a refused admin request) are
    // JSON too, like every other API answer (found by schemathesis against the OpenAPI document).
    let (status, error, r) = api(&alice, "GET", "/api/v1/books/w%5C/contacts/x/history", None, &[]).await;
    assert_eq!(status, 400, "{}", r.text());
    assert!(error["error"].as_str().is_some_and(|m| m.contains("path segment")), "{error}");
    // RFC 9110 §15.5.6: a 405 names the methods the endpoint allows.
    let (status, _, r) = api(&alice, "DELETE", "/api/v1/views", None, &[]).await;
    assert_eq!(status, 405, "{}", r.text());
    assert_eq!(r.header("allow").as_deref(), Some("GET, POST"));
    let admin = s.http().get(format!("{}/admin/v1/users", s.base)).bearer_auth("wrong").send().await.expect("send");
    assert_eq!(admin.status(), 401);
    assert!(admin.headers()["content-type"].to_str().is_ok_and(|t| t.starts_with("application/json")));
    s.stop().await;
}

#[tokio::test]
async fn cli_import_and_export_work_on_the_live_database() {
    let s = TestServer::start().await;
    let alice = seed(&s).await;
    let config = s.dir.path().join("cli.toml");
    std::fs::write(&config, format!("[storage]\ndata_dir = \"{}\"\n", s.config.storage.data_dir.display()))
        .expect("config");
    let csv = s.dir.path().join("people.csv");
    std::fs::write(&csv, "fn,email,city\nCarla CLI,carla@cli.de,Hamburg\nDieter CLI,dieter@cli.de,Bremen\n")
        .expect("csv");
    let run = |args: Vec<String>| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_kartei"))
            .arg("--config")
            .arg(&config)
            .args(args)
            .output()
            .expect("kartei");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) =
        run(vec!["import".into(), csv.display().to_string(), "--user".into(), "alice".into(), "--dry-run".into()]);
    assert!(ok && out.contains("dry run: created 2"), "{out}{err}");
    assert!(err.contains("2/2"), "progress is shown: {err}");
    assert!(search(&alice, "q=cli").await.is_empty());
    let (ok, out, err) = run(vec!["import".into(), csv.display().to_string(), "--user".into(), "alice".into()]);
    assert!(ok && out.contains("created 2"), "{out}{err}");
    assert_eq!(search(&alice, "q=cli").await, ["Carla CLI", "Dieter CLI"]);

    let target = s.dir.path().join("out.csv");
    let (ok, _, err) = run(vec![
        "export".into(),
        "--user".into(),
        "alice".into(),
        "--q".into(),
        "cli".into(),
        "--purpose".into(),
        "Mail merge".into(),
        "--columns".into(),
        "fn,city".into(),
        "--output".into(),
        target.display().to_string(),
    ]);
    assert!(ok, "{err}");
    let exported = std::fs::read_to_string(&target).expect("export file");
    assert!(exported.contains("fn,city\r\nCarla CLI,Hamburg\r\nDieter CLI,Bremen\r\n"), "{exported}");
    let (ok, _, err) = run(vec!["export".into(), "--user".into(), "alice".into(), "--purpose".into(), " ".into()]);
    assert!(!ok && err.contains("purpose"), "{err}");
    s.stop().await;
}

#[tokio::test]
async fn large_imports_stream_their_progress() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let rows = 10_000;
    let mut csv = String::from("First Name,Last Name,E-mail Address,Company\r\n");
    for i in 0..rows {
        csv.push_str(&format!("Person{i},Bulk,person{i}@bulk-import.example,Bulk GmbH\r\n"));
    }
    let started = std::time::Instant::now();
    let r = alice
        .send(
            "POST",
            "/api/v1/books/contacts/import?format=csv&progress=true&filename=bulk.csv",
            &[("content-type", "text/csv")],
            csv,
        )
        .await;
    let elapsed = started.elapsed();
    assert_eq!(r.status.as_u16(), 200, "{}", r.text());
    assert_eq!(r.header("content-type").as_deref(), Some("application/x-ndjson"));
    let lines: Vec<Value> =
        r.text().lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("line {l}: {e}"))).collect();
    let progress: Vec<u64> = lines.iter().filter_map(|l| l["progress"]["done"].as_u64()).collect();
    assert!(progress.len() >= 10, "progress lines: {progress:?}");
    assert!(progress.windows(2).all(|w| w[0] <= w[1]), "progress only goes up: {progress:?}");
    assert_eq!(progress.last(), Some(&(rows as u64)));
    let summary = lines.last().expect("summary");
    assert_eq!((summary["status"].as_u64(), summary["created"].as_u64()), (Some(200), Some(rows as u64)), "{summary}");
    eprintln!("streamed import of {rows} CSV rows: {elapsed:?}");

    // Every row is a contact, with the file as its origin.
    let (_, found, _) = api(&alice, "GET", "/api/v1/contacts?q=person9999", None, &[]).await;
    let uid = found["items"][0]["uid"].as_str().expect("imported contact").to_string();
    let (_, history, _) =
        api(&alice, "GET", &format!("/api/v1/books/contacts/contacts/{uid}/history"), None, &[]).await;
    assert_eq!(history["origin"]["source"], "import: bulk.csv", "{history}");

    // A refused row is reported in the stream and nothing is imported.
    let r = alice
        .send(
            "POST",
            "/api/v1/books/contacts/import?format=csv&progress=true",
            &[("content-type", "text/csv")],
            "First Name,E-mail Address\r\nOk,ok@x.example\r\n,\r\n".to_string(),
        )
        .await;
    let last: Value = serde_json::from_str(r.text().lines().last().unwrap_or("")).expect("summary line");
    assert_eq!(last["status"], 422, "{last}");
    let (_, found, _) = api(&alice, "GET", "/api/v1/contacts?q=ok%40x.example", None, &[]).await;
    assert_eq!(found["items"].as_array().map(Vec::len), Some(0), "atomic: {found}");
    s.stop().await;
}

/// The quick search folds the Latin letters that carry their mark inside (ł, ø, æ…, which Unicode does not
/// decompose), and a database whose search columns an older kartei made is brought up to date when it is opened.
#[tokio::test]
async fn search_folds_letters_with_a_built_in_mark_also_in_an_older_database() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    alice.put_card("lukasz", "lukasz", "Łukasz Ødegård", "ORG:Ærø Bau\r\n").await;
    alice.put_card("anna", "anna", "Anna Lukas", "").await;
    assert_eq!(search(&alice, "q=lukasz").await, ["Łukasz Ødegård"]);
    assert_eq!(search(&alice, "q=odegard%20aero").await, ["Łukasz Ødegård"]);
    assert_eq!(search(&alice, "q=%C5%82ukasz").await, ["Łukasz Ødegård"], "typed with ł, too");
    assert_eq!(search(&alice, "q=lukas").await, ["Anna Lukas", "Łukasz Ødegård"]);

    // As an older kartei left it: ł, ø and æ kept in the search columns, and no fold version recorded.
    let etag_before = alice.get(&format!("{}lukasz", alice.book())).await.header("etag");
    {
        let db = rusqlite::Connection::open(s.config.database_path()).expect("open the database");
        db.execute_batch(
            "UPDATE cards SET search = 'łukasz ødegård\nærø bau', fields = replace(fields, 'lukasz odegard', 'łukasz ødegård'),
                    fn = '', org = '';
             DELETE FROM settings WHERE key = 'search_fold_version';",
        )
        .expect("make the columns old");
    }
    let by_org = r#"<c:addressbook-query xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:carddav"><d:prop><d:getetag/></d:prop><c:filter><c:prop-filter name="ORG"><c:text-match>bau</c:text-match></c:prop-filter></c:filter></c:addressbook-query>"#;
    let found_by_org = || async { alice.report(&alice.book(), "1", by_org).await.multistatus().hrefs().len() };
    assert_eq!(search(&alice, "q=lukasz").await, Vec::<String>::new(), "the old columns miss it");
    assert_eq!(found_by_org().await, 0, "the query's pre-filter reads the emptied column");
    kartei::open_store(&s.config).expect("opening brings the columns up to date");
    assert_eq!(search(&alice, "q=lukasz").await, ["Łukasz Ødegård"]);
    assert_eq!(found_by_org().await, 1, "the CardDAV search columns were made again too");
    assert_eq!(search(&alice, "q=anna").await, ["Anna Lukas"], "every card was made again");
    let etag_after = alice.get(&format!("{}lukasz", alice.book())).await.header("etag");
    assert_eq!(etag_before, etag_after, "not a change of the card");
    s.stop().await;
}
