//! Personal-data duties (GDPR) on the admin API: integrations that feed contacts in, the subject-access
//! report, erasure, and the retention of event history.
//!
//! Endpoints (admin bearer token, under `/admin/v1/`):
//! - `POST integrations` `{"book": "owner/book", "name"}` → `{"id", "token", "book", "name"}` (token shown once);
//!   `GET integrations`; `DELETE integrations/{id}`
//! - `GET subject-access?email=…[&format=html]`: everything kartei holds about one e-mail address
//! - `POST erase` `{"email"}`: removes the person from every book (devices see a deletion on their next sync)
//! - `PUT users/{user}/books/{book}/retention` `{"days": N | null}`; `POST retention/run`
//! - `GET purposes`: the configured processing purposes

use crate::api::json_response;
use crate::app::App;
use crate::auth;
use crate::body::RequestBody;
use crate::body::{self, Body};
use crate::error::{DavError, DavResult};
use crate::ingest::normalize_email;
use crate::router;
use crate::store::{self, AuditRecord, BookId, ContactEvent, LocatedCard, Precondition, SharedStore, Store};
use crate::vcard::{self, contact::project};
use http_body_util::{BodyExt, Limited};
use hyper::{Method, Request, Response, StatusCode, header};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The vCard property that carries a contact's processing purposes to every client.
pub const PURPOSE_PROPERTY: &str = "X-KARTEI-PURPOSE";

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

fn err(status: StatusCode, message: impl Into<String>) -> DavError {
    DavError::new(status, message.into())
}

async fn run<T: Send + 'static>(
    app: &Arc<App>,
    f: impl FnOnce(&dyn Store) -> Result<T, DavError> + Send + 'static,
) -> DavResult<T> {
    let store = app.store.clone();
    tokio::task::spawn_blocking(move || f(store.as_ref()))
        .await
        .map_err(|e| err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
}

async fn read_json(req: Request<RequestBody>) -> DavResult<Value> {
    let bytes = match Limited::new(req.into_body(), 64 * 1024).collect().await {
        Ok(c) => c.to_bytes(),
        Err(_) => return Err(err(StatusCode::PAYLOAD_TOO_LARGE, "the JSON body exceeds 64 KiB")),
    };
    serde_json::from_slice(&bytes).map_err(|e| err(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")))
}

fn string_field(body: &Value, name: &str) -> DavResult<String> {
    body.get(name)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .ok_or_else(|| err(StatusCode::BAD_REQUEST, format!("{name}: required (a string)")))
}

/// The admin endpoints of this module; `None` when the path is not one of them.
pub async fn handle_admin(
    app: Arc<App>,
    method: &Method,
    segments: &[&str],
    req: Request<RequestBody>,
) -> Option<DavResult<Response<Body>>> {
    let result = match (method, segments) {
        (&Method::POST, ["integrations"]) => create_integration(app, req).await,
        (&Method::GET, ["integrations"]) => list_integrations(app).await,
        (&Method::DELETE, ["integrations", id]) => delete_integration(app, id).await,
        (&Method::GET, ["subject-access"]) => subject_access(app, &req).await,
        (&Method::POST, ["erase"]) => erase(app, req).await,
        (&Method::PUT, ["users", user, "books", book, "retention"]) => {
            set_retention(app, user.to_string(), book.to_string(), req).await
        }
        (&Method::POST, ["retention", "run"]) => {
            let deleted = run(&app, |s| Ok(expire_events(s, now())?)).await;
            deleted.map(|d| json_response(StatusCode::OK, &json!({"deleted": d})))
        }
        (&Method::GET, ["purposes"]) => {
            Ok(json_response(StatusCode::OK, &json!({"purposes": app.config.privacy.purposes})))
        }
        _ => return None,
    };
    Some(result)
}

async fn create_integration(app: Arc<App>, req: Request<RequestBody>) -> DavResult<Response<Body>> {
    let body = read_json(req).await?;
    let book = string_field(&body, "book")?;
    let name = string_field(&body, "name")?;
    if name.chars().count() > 100 || name.chars().any(char::is_control) {
        return Err(err(StatusCode::BAD_REQUEST, "name: at most 100 printable characters"));
    }
    let (owner, segment) = book
        .split_once('/')
        .map(|(o, s)| (o.to_string(), s.trim_matches('/').to_string()))
        .ok_or_else(|| err(StatusCode::BAD_REQUEST, "book: write it as \"owner/book\""))?;
    let token = auth::generate_token("kartei_int_");
    let hash = auth::token_hash(&token);
    let n = name.clone();
    let integration = run(&app, move |s| {
        let view = s
            .book_in_home(&owner, &segment)?
            .filter(|b| !b.shared)
            .ok_or_else(|| err(StatusCode::NOT_FOUND, format!("no book '{owner}/{segment}'")))?;
        let created = s.create_integration(view.id, &n, &hash).map_err(|e| match e {
            store::Error::AlreadyExists => {
                err(StatusCode::CONFLICT, format!("the book already has an integration '{n}'"))
            }
            other => DavError::from(other),
        })?;
        s.audit("admin", "integration.create", &format!("{owner}/{segment}"), &json!({"name": n}).to_string())?;
        Ok(created)
    })
    .await?;
    Ok(json_response(
        StatusCode::CREATED,
        &json!({
            "id": integration.id,
            "token": token,
            "book": format!("{}/{}", integration.owner, integration.segment),
            "name": integration.name,
            "ingest_url": format!("{}/api/v1/ingest", app.public_url),
        }),
    ))
}

async fn list_integrations(app: Arc<App>) -> DavResult<Response<Body>> {
    let list = run(&app, |s| Ok(s.integrations()?)).await?;
    let items: Vec<Value> = list
        .iter()
        .map(|i| json!({"id": i.id, "book": format!("{}/{}", i.owner, i.segment), "name": i.name, "created_at": i.created_at}))
        .collect();
    Ok(json_response(StatusCode::OK, &json!({"integrations": items})))
}

async fn delete_integration(app: Arc<App>, id: &str) -> DavResult<Response<Body>> {
    let id: i64 = id.parse().map_err(|_| err(StatusCode::BAD_REQUEST, "integration id: a number"))?;
    let deleted = run(&app, move |s| {
        let gone = s.delete_integration(id)?;
        if gone {
            s.audit("admin", "integration.delete", &id.to_string(), "")?;
        }
        Ok(gone)
    })
    .await?;
    if !deleted {
        return Err(err(StatusCode::NOT_FOUND, "no such integration"));
    }
    Ok(json_response(StatusCode::OK, &json!({"deleted": id})))
}

fn event_json(e: &ContactEvent) -> Value {
    json!({
        "start": e.event.starts_at, "end": e.event.ends_at, "title": e.event.title, "host": e.event.host,
        "source": e.event.source, "recorded_at": e.recorded_at,
    })
}

/// One person as the audit log mentions them: by address (subject-access records, an export's query), and
/// each of their cards by book and UID (contact edits, imports and ingests name the book in `target` and the
/// UID in `detail`) or by the card's href in its owner's home (exports list those). Only whole tokens count,
/// and a UID only in a record about its own book: UIDs are unique per book only, and a short one (`7`,
/// `contact1`) is part of many unrelated strings that an erasure must not touch.
struct Subject {
    /// The address as asked for, and with its domain in the other form (punycode or Unicode) if it has one.
    emails: Vec<String>,
    cards: Vec<SubjectCard>,
}

struct SubjectCard {
    /// `owner/segment`, as records about a book name it.
    book: String,
    uid: String,
    href: String,
}

const ERASED: &str = "[erased]";

impl Subject {
    fn new(email: &str, cards: &[LocatedCard]) -> Subject {
        let cards = cards
            .iter()
            .map(|c| SubjectCard {
                book: format!("{}/{}", c.owner, c.segment),
                uid: c.card.meta.uid.clone(),
                href: router::card_href(&c.owner, &c.segment, &c.card.meta.name),
            })
            .collect();
        Subject { emails: spellings(email), cards }
    }

    /// The record with every mention of this person replaced by `[erased]`, or None when it has none.
    fn redacted(&self, record: &AuditRecord) -> Option<AuditRecord> {
        let mut out = record.clone();
        let mut exported = false;
        for text in [&mut out.target, &mut out.detail] {
            for email in &self.emails {
                *text = replace_tokens(text, email, ERASED);
            }
            for card in &self.cards {
                let replaced = replace_tokens(text, &card.href, ERASED);
                exported |= replaced != *text;
                *text = replaced;
            }
        }
        for card in self.cards.iter().filter(|c| c.book == record.target && !c.uid.is_empty()) {
            if out.detail == card.uid {
                out.detail = ERASED.to_string();
            } else if let Ok(mut detail) = serde_json::from_str::<Value>(&out.detail) {
                // Imports and ingests list UIDs in JSON: a string value that is the whole UID (never a key:
                // a UID may well be `created`).
                if erase_string_values(&mut detail, &card.uid) {
                    out.detail = detail.to_string();
                }
            }
        }
        // An export of this person's card: its query may have named them (`q=hilde`).
        if exported
            && record.action == "export"
            && let Ok(mut detail) = serde_json::from_str::<Value>(&out.detail)
            && detail.get("selection").is_some()
        {
            detail["selection"] = json!(ERASED);
            out.detail = detail.to_string();
        }
        (out.target != record.target || out.detail != record.detail).then_some(out)
    }
}

/// An address as given and, when its domain is internationalized, with the domain in its other form: event
/// history and audit records keep an address as it was written (`jürgen@xn--mller-kva.de` or
/// `jürgen@müller.de`), cards are found either way (`contact::email_key`).
fn spellings(email: &str) -> Vec<String> {
    let mut out = vec![email.to_string()];
    if let Some((local, domain)) = email.rsplit_once('@') {
        let unicode = vcard::contact::unicode_domain(domain);
        let ascii = idna::domain_to_ascii(&unicode).unwrap_or_default();
        for other in [unicode, ascii] {
            let spelled = format!("{local}@{other}");
            if !other.is_empty() && !out.contains(&spelled) {
                out.push(spelled);
            }
        }
    }
    out
}

/// Replaces every string value equal to `uid` in `value` (not keys); whether there was one.
fn erase_string_values(value: &mut Value, uid: &str) -> bool {
    match value {
        Value::String(s) if s == uid => {
            *s = ERASED.to_string();
            true
        }
        Value::Array(items) => items.iter_mut().fold(false, |hit, v| erase_string_values(v, uid) | hit),
        Value::Object(fields) => fields.values_mut().fold(false, |hit, v| erase_string_values(v, uid) | hit),
        _ => false,
    }
}

/// `text` with each whole-token occurrence of `needle` (letter case ignored) replaced: one that no letter,
/// digit or address/path character (`._%+-@/`) touches on either side, so `a@x.de` is not found inside
/// `ba@x.de` nor `/c.vcf` inside `/c.vcf2`.
fn replace_tokens(text: &str, needle: &str, with: &str) -> String {
    // Lower case char by char, and a final sigma as any sigma (the address may have been lower-cased as a
    // whole, `ΟΔΟΣ` → `οδος`, the text not).
    let fold = |c: char| c.to_lowercase().map(|l| if l == 'ς' { 'σ' } else { l });
    let lower_needle: Vec<char> = needle.chars().flat_map(fold).collect();
    // Most records mention nobody: a plain search decides that before the char-by-char walk.
    let lower_text: String = text.chars().flat_map(fold).collect();
    if lower_needle.is_empty() || !lower_text.contains(&lower_needle.iter().collect::<String>()) {
        return text.to_string();
    }
    let in_token = |c: char| c.is_alphanumeric() || "._%+-@/".contains(c);
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let (mut out, mut copied, mut i) = (String::with_capacity(text.len()), 0, 0);
    while i < chars.len() {
        // Match the needle's lower-case chars against those of text from char i on.
        let (mut j, mut k) = (i, 0);
        while k < lower_needle.len() && j < chars.len() {
            let lower: Vec<char> = fold(chars[j].1).collect();
            if !lower_needle[k..].starts_with(&lower) {
                break;
            }
            k += lower.len();
            j += 1;
        }
        let whole = k == lower_needle.len()
            && (i == 0 || !in_token(chars[i - 1].1))
            && chars.get(j).is_none_or(|&(_, c)| !in_token(c));
        if whole {
            let (start, end) = (chars[i].0, chars.get(j).map_or(text.len(), |&(at, _)| at));
            out.push_str(&text[copied..start]);
            out.push_str(with);
            copied = end;
            i = j;
        } else {
            i += 1;
        }
    }
    out.push_str(&text[copied..]);
    out
}

/// Processing purposes stored on a card.
pub fn purposes_of(card: &calcard::vcard::VCard) -> Vec<String> {
    card.entries
        .iter()
        .filter(|e| vcard::entry_is(e, PURPOSE_PROPERTY))
        .flat_map(|e| vcard::property_text(e).split(',').map(|p| p.trim().to_string()).collect::<Vec<_>>())
        .filter(|p| !p.is_empty())
        .collect()
}

/// Everything kept about one e-mail address, as JSON.
pub fn access_report(store: &dyn Store, email: &str) -> Result<Value, DavError> {
    let cards = store.cards_with_email(None, email)?;
    let subject = Subject::new(email, &cards);
    let mut contacts = Vec::new();
    let mut seen_events = std::collections::HashSet::new();
    for LocatedCard { book, owner, segment, card } in &cards {
        let parsed = vcard::parse_stored(&card.vcard);
        let events = store.events(*book, &card.meta.uid)?;
        seen_events.extend(events.iter().map(|e| e.id));
        contacts.push(json!({
            "book": format!("{owner}/{segment}"),
            "href": router::card_href(owner, segment, &card.meta.name),
            "uid": card.meta.uid,
            "created_at": card.meta.created_at,
            "modified_at": card.meta.modified_at,
            "contact": parsed.as_ref().map(|p| serde_json::to_value(project(p)).unwrap_or(Value::Null)),
            "purposes": parsed.as_ref().map(purposes_of).unwrap_or_default(),
            "origin": store.origin(*book, &card.meta.uid)?.map(|o| json!({
                "source": o.source, "created_at": o.created_at, "created_by": o.created_by,
                "changed_at": o.changed_at, "changed_by": o.changed_by, "changed_via": o.changed_via,
            })),
            "events": events.iter().map(event_json).collect::<Vec<_>>(),
            "vcard": String::from_utf8_lossy(&card.vcard),
        }));
    }
    let orphan_events: Vec<Value> = spellings(email)
        .iter()
        .map(|e| store.events_for_email(e))
        .collect::<Result<Vec<_>, _>>()?
        .iter()
        .flatten()
        .filter(|e| seen_events.insert(e.id))
        .map(event_json)
        .collect();
    let audit: Vec<Value> = store
        .audit_matching(&|r| subject.redacted(r).is_some())?
        .iter()
        .map(|r| json!({"id": r.id, "at": r.at, "actor": r.actor, "action": r.action, "target": r.target, "detail": r.detail}))
        .collect();
    Ok(json!({
        "email": email,
        "generated_at": now(),
        "contacts": contacts,
        "events_without_contact": orphan_events,
        "audit": audit,
    }))
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The JSON report as a readable document (for the data subject).
fn report_html(report: &Value) -> String {
    let text = |v: &Value| match v {
        Value::String(s) => html_escape(s),
        Value::Null => String::new(),
        other => html_escape(&other.to_string()),
    };
    let email = text(&report["email"]);
    let mut out = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Data held about {email}</title></head><body>\n<h1>Data held about {email}</h1>\n"
    );
    let contacts = report["contacts"].as_array().cloned().unwrap_or_default();
    out.push_str(&format!("<p>{} contact record(s).</p>\n", contacts.len()));
    for c in &contacts {
        out.push_str(&format!("<h2>{} in {}</h2>\n<dl>\n", text(&c["contact"]["fn"]), text(&c["book"])));
        let origin = &c["origin"];
        for (label, value) in [
            ("Source", text(&origin["source"])),
            ("Created by", text(&origin["created_by"])),
            ("Last changed by", format!("{} ({})", text(&origin["changed_by"]), text(&origin["changed_via"]))),
            (
                "Purposes",
                html_escape(
                    &c["purposes"]
                        .as_array()
                        .map(|p| p.iter().map(|x| x.as_str().unwrap_or("")).collect::<Vec<_>>().join(", "))
                        .unwrap_or_default(),
                ),
            ),
        ] {
            out.push_str(&format!("<dt>{label}</dt><dd>{value}</dd>\n"));
        }
        out.push_str("</dl>\n<h3>Stored data (vCard)</h3>\n<pre>");
        out.push_str(&text(&c["vcard"]));
        out.push_str("</pre>\n<h3>Events</h3>\n<ul>\n");
        for e in c["events"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "<li>{} {} (host {}, via {})</li>\n",
                text(&e["start"]),
                text(&e["title"]),
                text(&e["host"]),
                text(&e["source"])
            ));
        }
        out.push_str("</ul>\n");
    }
    out.push_str("<h2>Processing records</h2>\n<table>\n<tr><th>When (Unix time)</th><th>Who</th><th>What</th><th>Details</th></tr>\n");
    for r in report["audit"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
            text(&r["at"]),
            text(&r["actor"]),
            text(&r["action"]),
            text(&r["detail"])
        ));
    }
    out.push_str("</table>\n</body></html>\n");
    out
}

async fn subject_access(app: Arc<App>, req: &Request<RequestBody>) -> DavResult<Response<Body>> {
    let params = crate::api::query_params(req.uri());
    let raw = params.get("email").cloned().unwrap_or_default();
    let email = normalize_email(&raw).map_err(DavError::from)?;
    let wants_html = params.get("format").is_some_and(|f| f == "html")
        || req.headers().get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("text/html"));
    let report = run(&app, move |s| {
        let report = access_report(s, &email)?;
        s.audit("admin", "subject-access", &email, "")?;
        Ok(report)
    })
    .await?;
    if wants_html {
        return Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
            .body(body::full(report_html(&report)))
            .map_err(|e| err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()));
    }
    Ok(json_response(StatusCode::OK, &report))
}

/// Removes every card carrying `email` (a tombstone per card, so devices delete it), its event history and
/// origin, and scrubs the address and the cards' UIDs from earlier audit records. Returns counts only.
pub fn erase_subject(store: &dyn Store, email: &str) -> Result<Value, DavError> {
    let cards = store.cards_with_email(None, email)?;
    let subject = Subject::new(email, &cards);
    let mut events = 0;
    let mut books: Vec<BookId> = Vec::new();
    for found in &cards {
        match store.delete_card(found.book, &found.card.meta.name, &Precondition::None) {
            Ok(()) | Err(store::Error::NotFound) => {}
            Err(e) => return Err(e.into()),
        }
        for spelling in &subject.emails {
            events += store.forget_contact(found.book, &found.card.meta.uid, spelling)?;
        }
        if !books.contains(&found.book) {
            books.push(found.book);
        }
    }
    // Events whose card was already gone.
    for spelling in &subject.emails {
        events += store.forget_contact(-1, "", spelling)?;
    }
    let redacted: Vec<AuditRecord> =
        store.audit_matching(&|r| subject.redacted(r).is_some())?.iter().filter_map(|r| subject.redacted(r)).collect();
    store.rewrite_audit(&redacted)?;
    let summary = json!({"contacts": cards.len(), "books": books.len(), "events": events, "audit_records_redacted": redacted.len()});
    // The only trace left: that an erasure happened, with counts and no personal data.
    store.audit("admin", "subject.erase", "", &summary.to_string())?;
    Ok(summary)
}

async fn erase(app: Arc<App>, req: Request<RequestBody>) -> DavResult<Response<Body>> {
    let body = read_json(req).await?;
    let raw = body.get("email").and_then(Value::as_str).unwrap_or_default().to_string();
    let email = normalize_email(&raw).map_err(DavError::from)?;
    let summary = run(&app, move |s| erase_subject(s, &email)).await?;
    tracing::info!(contacts = %summary["contacts"], events = %summary["events"], "data subject erased");
    Ok(json_response(StatusCode::OK, &json!({"erased": summary})))
}

async fn set_retention(
    app: Arc<App>,
    user: String,
    book: String,
    req: Request<RequestBody>,
) -> DavResult<Response<Body>> {
    let body = read_json(req).await?;
    let days = match body.get("days") {
        Some(Value::Null) => None,
        Some(v) => match v.as_i64() {
            Some(d) if (1..=36_500).contains(&d) => Some(d),
            _ => return Err(err(StatusCode::BAD_REQUEST, "days: a whole number from 1 to 36500, or null")),
        },
        None => return Err(err(StatusCode::BAD_REQUEST, "days: required (a number of days, or null to keep)")),
    };
    run(&app, move |s| {
        let view = s
            .book_in_home(&user, &book)?
            .filter(|b| !b.shared)
            .ok_or_else(|| err(StatusCode::NOT_FOUND, format!("no book '{user}/{book}'")))?;
        s.set_event_retention(view.id, days)?;
        s.audit("admin", "book.retention", &format!("{user}/{book}"), &json!({"days": days}).to_string())?;
        Ok(())
    })
    .await?;
    Ok(json_response(StatusCode::OK, &json!({"days": days})))
}

/// One run of the retention job at time `now` (a parameter, so tests can move the clock).
pub fn expire_events(store: &dyn Store, now: i64) -> Result<Vec<Value>, store::Error> {
    let expired = store.expire_events(now)?;
    let mut out = Vec::new();
    for (book, count) in expired {
        tracing::info!(book, count, "retention: deleted old event history");
        store.audit("retention", "events.expire", &book.to_string(), &json!({"deleted": count}).to_string())?;
        out.push(json!({"book": book, "deleted": count}));
    }
    Ok(out)
}

/// Runs the retention job every `[privacy] retention_interval_secs` until the server stops.
pub fn spawn_retention_job(store: SharedStore, interval_secs: u64) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(interval_secs.max(1)));
        loop {
            tick.tick().await;
            let s = store.clone();
            match tokio::task::spawn_blocking(move || expire_events(s.as_ref(), now())).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "retention job failed"),
                Err(e) => tracing::error!(error = %e, "retention job panicked"),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(action: &str, target: &str, detail: &str) -> AuditRecord {
        AuditRecord {
            id: 1,
            at: 0,
            actor: "bob".into(),
            action: action.into(),
            target: target.into(),
            detail: detail.into(),
        }
    }

    fn subject() -> Subject {
        Subject {
            emails: vec!["one@uid.example".into()],
            cards: vec![SubjectCard {
                book: "anna/contacts".into(),
                uid: "contact1".into(),
                href: "/dav/addressbooks/anna/contacts/c1.vcf".into(),
            }],
        }
    }

    #[test]
    fn only_whole_tokens_are_replaced() {
        assert_eq!(replace_tokens("a@x.de, ba@x.de, (A@X.DE)", "a@x.de", "[e]"), "[e], ba@x.de, ([e])");
        assert_eq!(replace_tokens("rt/a217 7 \"7\"", "7", "[e]"), "rt/a217 [e] \"[e]\"");
        assert_eq!(replace_tokens("/b/c.vcf2 /b/c.vcf", "/b/c.vcf", "[e]"), "/b/c.vcf2 [e]");
        assert_eq!(replace_tokens("JÜRGEN@MÜLLER.DE!", "jürgen@müller.de", "[e]"), "[e]!");
        assert_eq!(replace_tokens("nothing here", "", "[e]"), "nothing here");
        for needle in ["οδοσ@x.gr", "οδος@x.gr"] {
            assert_eq!(replace_tokens(r#"{"q":"ΟΔΟΣ@X.GR"}"#, needle, "[e]"), r#"{"q":"[e]"}"#, "final sigma");
        }
    }

    #[test]
    fn a_uid_counts_only_in_records_about_its_own_book() {
        let s = subject();
        let mine = s.redacted(&record("contact.create", "anna/contacts", "contact1")).expect("about the card");
        assert_eq!(mine.detail, ERASED);
        // Another book's card with the same UID, and a longer UID in the same book: not this person.
        assert!(s.redacted(&record("contact.create", "bob/contacts", "contact1")).is_none());
        assert!(s.redacted(&record("contact.create", "anna/contacts", "contact12")).is_none());
        let import = s
            .redacted(&record("import", "anna/contacts", r#"{"uids":["contact12","contact1"]}"#))
            .expect("an import of the card");
        assert_eq!(import.detail, r#"{"uids":["contact12","[erased]"]}"#);
        let keyed =
            Subject { cards: vec![SubjectCard { uid: "created".into(), ..subject().cards.remove(0) }], ..subject() };
        let ingest = keyed
            .redacted(&record("ingest", "anna/contacts", r#"{"created":true,"uid":"created"}"#))
            .expect("an ingest of the card");
        assert_eq!(ingest.detail, r#"{"created":true,"uid":"[erased]"}"#, "keys stay keys");
    }

    #[test]
    fn an_export_of_the_card_loses_its_href_and_query() {
        let s = subject();
        let detail = json!({"purpose": "Mailing", "selection": {"q": "one"}, "count": 2,
            "contacts": ["/dav/addressbooks/anna/contacts/c1.vcf", "/dav/addressbooks/anna/contacts/c12.vcf"]});
        let out = s.redacted(&record("export", "contacts", &detail.to_string())).expect("an export of the card");
        let out: Value = serde_json::from_str(&out.detail).expect("json");
        assert_eq!(out["selection"], ERASED);
        assert_eq!(out["contacts"], json!([ERASED, "/dav/addressbooks/anna/contacts/c12.vcf"]));
        assert_eq!(out["purpose"], "Mailing", "who exported it and why stays");
        let other = json!({"selection": {"q": "x"}, "contacts": ["/dav/addressbooks/anna/contacts/c12.vcf"]});
        assert!(s.redacted(&record("export", "contacts", &other.to_string())).is_none());
    }
}
