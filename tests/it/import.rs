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
