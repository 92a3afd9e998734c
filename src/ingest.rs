//! Contacts from outside systems (a booking tool, a web form): `POST /api/v1/ingest` with an integration's
//! bearer token upserts one contact by e-mail into the integration's book.
//!
//! The rules, in the order they apply:
//! - match by e-mail (trimmed, case-insensitive); no match creates a contact whose creator is the event's host;
//! - a match only gets fields that are still empty: what a person set is never overwritten by an ingest;
//! - tags (vCard `CATEGORIES`): `Recurring` from the second booking on, `Optin` once opt-in is confirmed;
//! - an empty organization is taken from other contacts of the e-mail's domain, else from the domain name,
//!   never from a free-mail domain;
//! - one ingest per book at a time, so the same e-mail ingested twice concurrently makes one contact.
//!
//! Every write goes through the store's `put_card`, so the book's sync token moves and devices receive it.

use crate::api::{json_response, new_uid};
use crate::app::App;
use crate::auth;
use crate::body::Body;
use crate::body::RequestBody;
use crate::config::Config;
use crate::dates::parse_timestamp;
use crate::error::{DavError, DavResult};
use crate::store::{self, Author, BookId, Integration, NewEvent, Precondition, Store};
use crate::vcard::contact::{Contact, Typed, project};
use crate::vcard::{self, Version};
use http_body_util::{BodyExt, Limited};
use hyper::{Method, Request, Response, StatusCode, header};
use serde::Deserialize;
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};

pub const TAG_RECURRING: &str = "Recurring";
pub const TAG_OPTIN: &str = "Optin";
const MAX_BODY: usize = 64 * 1024;
const MAX_FIELD: usize = 500;
const SHIPPED_FREE_MAIL: &str = include_str!("freemail.txt");

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestRequest {
    pub email: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub phone: Option<String>,
    #[serde(default)]
    pub company: Option<String>,
    #[serde(default)]
    pub optin: Option<bool>,
    #[serde(default)]
    pub event: Option<EventInput>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventInput {
    pub start: String,
    #[serde(default)]
    pub end: Option<String>,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub host: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct IngestOutcome {
    pub uid: String,
    pub created: bool,
    pub tags: Vec<String>,
    /// The card's resource name in the book.
    pub name: String,
}

#[derive(Debug)]
pub struct IngestError {
    pub status: StatusCode,
    pub message: String,
}

impl IngestError {
    fn bad(message: impl Into<String>) -> Self {
        IngestError { status: StatusCode::BAD_REQUEST, message: message.into() }
    }
}

impl From<store::Error> for IngestError {
    fn from(e: store::Error) -> Self {
        let status = match &e {
            store::Error::NotFound => StatusCode::NOT_FOUND,
            store::Error::PreconditionFailed | store::Error::UidConflict(_) | store::Error::Conflict(_) => {
                StatusCode::CONFLICT
            }
            store::Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        IngestError { status, message: e.to_string() }
    }
}

impl From<IngestError> for DavError {
    fn from(e: IngestError) -> Self {
        DavError::new(e.status, e.message)
    }
}

/// `local@domain` with a dotted domain, no spaces; answers the folded (trimmed, lower-case) address.
pub fn normalize_email(raw: &str) -> Result<String, IngestError> {
    let email = raw.trim().to_lowercase();
    let valid = email.len() <= 254
        && !email.chars().any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | ',' | ';' | '"'))
        && match email.split_once('@') {
            Some((local, domain)) => {
                !local.is_empty()
                    && !domain.contains('@')
                    && domain.contains('.')
                    && !domain.starts_with('.')
                    && !domain.ends_with('.')
                    && !domain.contains("..")
            }
            None => false,
        };
    if email.is_empty() {
        return Err(IngestError::bad("email: required"));
    }
    if !valid {
        return Err(IngestError::bad(format!("email: '{}' is not an e-mail address", raw.trim())));
    }
    Ok(email)
}

/// The configured free-mail list (shipped list, replaced or extended by `[privacy]`).
pub fn free_mail_domains(config: &Config) -> HashSet<String> {
    let base: Vec<String> = match &config.privacy.free_mail_domains {
        Some(list) => list.clone(),
        None => SHIPPED_FREE_MAIL
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_string)
            .collect(),
    };
    base.iter().chain(&config.privacy.extra_free_mail_domains).map(|d| d.trim().to_lowercase()).collect()
}

/// `mail.acme-bau.co.uk` → `Acme-Bau`: the registrable label, capitalized per part.
pub fn company_from_domain(domain: &str) -> String {
    let domain = crate::vcard::contact::unicode_domain(domain);
    let labels: Vec<&str> = domain.split('.').filter(|l| !l.is_empty()).collect();
    let second_level = ["co", "com", "org", "net", "ac", "gov", "edu", "or", "ne"];
    let idx = match labels.len() {
        0 => return String::new(),
        1 => 0,
        n if n >= 3 && labels[n - 1].len() == 2 && second_level.contains(&labels[n - 2]) => n - 3,
        n => n - 2,
    };
    labels[idx]
        .split('-')
        .map(|part| {
            let mut chars = part.chars();
            match chars.next() {
                Some(first) => first.to_uppercase().chain(chars).collect::<String>(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join("-")
}

fn clean(field: &str, value: &Option<String>) -> Result<Option<String>, IngestError> {
    let Some(v) = value.as_deref().map(str::trim).filter(|v| !v.is_empty()) else { return Ok(None) };
    if v.chars().count() > MAX_FIELD {
        return Err(IngestError::bad(format!("{field}: at most {MAX_FIELD} characters")));
    }
    if v.chars().any(|c| c.is_control()) {
        return Err(IngestError::bad(format!("{field}: control characters are not allowed")));
    }
    Ok(Some(v.to_string()))
}

/// Serializes ingests per book: matching and writing must not interleave for the same e-mail.
fn book_lock(book: BookId) -> Arc<Mutex<()>> {
    static LOCKS: OnceLock<Mutex<HashMap<BookId, Arc<Mutex<()>>>>> = OnceLock::new();
    let mut map = LOCKS.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
    map.entry(book).or_default().clone()
}

/// Upserts one contact; synchronous (runs on the blocking pool or in the CLI).
pub fn ingest(
    store: &dyn Store,
    config: &Config,
    integration: &Integration,
    request: &IngestRequest,
) -> Result<IngestOutcome, IngestError> {
    let email = normalize_email(&request.email)?;
    let name = clean("name", &request.name)?;
    let phone = clean("phone", &request.phone)?;
    let company = clean("company", &request.company)?;
    let event = match &request.event {
        Some(e) => {
            let starts_unix = parse_timestamp(&e.start)
                .ok_or_else(|| IngestError::bad(format!("event.start: '{}' is not an RFC 3339 date-time", e.start)))?;
            if let Some(end) = &e.end
                && parse_timestamp(end).is_none()
            {
                return Err(IngestError::bad(format!("event.end: '{end}' is not an RFC 3339 date-time")));
            }
            Some((e, starts_unix))
        }
        None => None,
    };
    let host = match &event {
        Some((e, _)) => clean("event.host", &e.host)?,
        None => None,
    };
    let title = match &event {
        Some((e, _)) => clean("event.title", &e.title)?,
        None => None,
    };
    let book = integration.book;
    let source = format!("ingest: {}", integration.name);

    let lock = book_lock(book);
    let _guard = lock.lock().unwrap_or_else(|p| p.into_inner());

    let existing = store.cards_with_email(Some(book), &email)?.into_iter().next();
    let (uid, resource, created, old_contact, stored) = match &existing {
        Some(found) => {
            let parsed = vcard::parse_stored(&found.card.vcard).ok_or_else(|| IngestError {
                status: StatusCode::CONFLICT,
                message: "the matching card does not parse".into(),
            })?;
            (
                found.card.meta.uid.clone(),
                found.card.meta.name.clone(),
                false,
                project(&parsed),
                Some(found.card.clone()),
            )
        }
        None => {
            let uid = new_uid();
            let resource = format!("{uid}.vcf");
            (uid, resource, true, Contact::default(), None)
        }
    };
    let prior_events = if created { 0 } else { store.events(book, &uid)?.len() };

    // Fill only what is empty. A name we filled with the e-mail address itself counts as empty.
    let mut contact = old_contact.clone();
    let fn_is_placeholder = contact.formatted_name.trim().is_empty() || contact.formatted_name.trim() == email;
    if let Some(n) = &name
        && fn_is_placeholder
    {
        contact.formatted_name = n.clone();
        if contact.name.family.is_empty() && contact.name.given.is_empty() {
            let mut words: Vec<&str> = n.split_whitespace().collect();
            contact.name.family = words.pop().unwrap_or_default().to_string();
            contact.name.given = words.join(" ");
        }
    }
    if contact.formatted_name.trim().is_empty() {
        contact.formatted_name = email.clone();
    }
    if contact.emails.is_empty() {
        contact.emails.push(Typed { value: request.email.trim().to_string(), types: Vec::new() });
    }
    if let Some(p) = &phone
        && contact.phones.is_empty()
    {
        contact.phones.push(Typed { value: p.clone(), types: Vec::new() });
    }
    if contact.org.trim().is_empty() {
        if let Some(c) = &company {
            contact.org = c.clone();
        } else if let Some(org) = org_from_domain(store, config, book, &email)? {
            contact.org = org;
        }
    }
    let mut tags = contact.categories.clone();
    let mut tag = |t: &str| {
        if !tags.iter().any(|x| x.eq_ignore_ascii_case(t)) {
            tags.push(t.to_string());
        }
    };
    if event.is_some() && prior_events >= 1 {
        tag(TAG_RECURRING);
    }
    if request.optin == Some(true) {
        tag(TAG_OPTIN);
    }
    contact.categories = tags.clone();

    let actor = host.clone().unwrap_or_else(|| integration.name.clone());
    let changed = created || contact != old_contact;
    if changed {
        let text = match &stored {
            Some(card) => {
                let version = Version::parse(&card.meta.version).unwrap_or(Version::V4);
                crate::vcard::contact::apply_changes(
                    &String::from_utf8_lossy(&card.vcard),
                    version,
                    &old_contact,
                    &contact,
                )
            }
            None => contact.to_new_vcard(&uid),
        };
        let valid = vcard::validate(text.as_bytes())
            .map_err(|e| IngestError::bad(format!("the contact does not make a valid vCard: {e:?}")))?;
        let pre = match &stored {
            Some(card) => Precondition::EtagIn(vec![card.meta.etag.clone()]),
            None => Precondition::MustNotExist,
        };
        store.put_card_by(book, &resource, &valid.new_card, &pre, &Author { actor: &actor, via: &source })?;
    }
    if let Some((e, starts_unix)) = &event {
        store.add_event(&NewEvent {
            book,
            uid: uid.clone(),
            email: email.clone(),
            source: integration.name.clone(),
            starts_at: e.start.trim().to_string(),
            starts_unix: *starts_unix,
            ends_at: e.end.as_ref().map(|s| s.trim().to_string()),
            title,
            host,
        })?;
    }
    store.audit(
        &format!("integration:{}", integration.name),
        "ingest",
        &format!("{}/{}", integration.owner, integration.segment),
        &json!({"uid": uid, "created": created, "changed": changed, "event": event.is_some()}).to_string(),
    )?;
    Ok(IngestOutcome { uid, created, tags, name: resource })
}

/// The organization for an address at a company domain: the most common one among the book's contacts of
/// that domain, else the domain's name. None for free-mail domains.
fn org_from_domain(
    store: &dyn Store,
    config: &Config,
    book: BookId,
    email: &str,
) -> Result<Option<String>, IngestError> {
    let Some((_, domain)) = email.rsplit_once('@') else { return Ok(None) };
    if free_mail_domains(config).contains(domain) {
        return Ok(None);
    }
    let mut counts: Vec<(String, usize)> = Vec::new();
    // The Unicode form: the `emails` column holds it for every address, however the card wrote the domain.
    let unicode = vcard::contact::unicode_domain(domain);
    for card in store.org_cards_at_domain(book, &unicode, 50)? {
        if let Some(parsed) = vcard::parse_stored(&card.vcard) {
            let org = project(&parsed).org.trim().to_string();
            if org.is_empty() {
                continue;
            }
            match counts.iter_mut().find(|(o, _)| o.eq_ignore_ascii_case(&org)) {
                Some((_, n)) => *n += 1,
                None => counts.push((org, 1)),
            }
        }
    }
    counts.sort_by_key(|c| std::cmp::Reverse(c.1));
    Ok(Some(counts.into_iter().next().map(|(o, _)| o).unwrap_or_else(|| company_from_domain(domain))))
}

/// `ingest` or `books/{book}/ingest` under `/api/v1/`.
pub fn is_ingest_path(segments: &[String]) -> bool {
    matches!(segments.iter().map(String::as_str).collect::<Vec<_>>().as_slice(), ["ingest"] | ["books", _, "ingest"])
}

/// `POST /api/v1/ingest` and `POST /api/v1/books/{book}/ingest`, authenticated with an integration token.
pub async fn handle(app: Arc<App>, segments: &[String], req: Request<RequestBody>) -> DavResult<Response<Body>> {
    if req.method() != Method::POST {
        return Err(
            DavError::new(StatusCode::METHOD_NOT_ALLOWED, "ingest takes POST").with_header(header::ALLOW, "POST")
        );
    }
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(auth::parse_bearer)
        .map(auth::token_hash);
    let integration = match token {
        Some(hash) => store::blocking(&app.store, move |s| s.integration_by_token_hash(&hash)).await?,
        None => None,
    };
    let Some(integration) = integration else {
        tracing::warn!(path = %req.uri().path(), "ingest without a valid integration token");
        return Err(DavError::new(StatusCode::UNAUTHORIZED, "a valid integration bearer token is required")
            .with_header(header::WWW_AUTHENTICATE, "Bearer realm=\"kartei-ingest\""));
    };
    if let [_, book, _] = segments
        && book != &integration.segment
        && book != &format!("{}/{}", integration.owner, integration.segment)
    {
        return Err(DavError::new(
            StatusCode::FORBIDDEN,
            format!("this integration feeds the book '{}', not '{book}'", integration.segment),
        ));
    }
    let bytes = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(c) => c.to_bytes(),
        Err(_) => return Err(DavError::new(StatusCode::PAYLOAD_TOO_LARGE, "the JSON body exceeds 64 KiB")),
    };
    let request: IngestRequest = serde_json::from_slice(&bytes)
        .map_err(|e| DavError::new(StatusCode::BAD_REQUEST, format!("invalid ingest body: {e}")))?;
    let config = app.config.clone();
    let name = integration.name.clone();
    let outcome = tokio::task::spawn_blocking({
        let store = app.store.clone();
        move || ingest(store.as_ref(), &config, &integration, &request)
    })
    .await
    .map_err(|e| DavError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    tracing::info!(integration = %name, created = outcome.created, "contact ingested");
    Ok(json_response(
        if outcome.created { StatusCode::CREATED } else { StatusCode::OK },
        &json!({"uid": outcome.uid, "created": outcome.created, "tags": outcome.tags}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dates::parse_timestamp;

    #[test]
    fn timestamps() {
        assert_eq!(parse_timestamp("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_timestamp("1970-01-02"), Some(86_400));
        assert_eq!(parse_timestamp("2026-11-23T10:00:00+01:00"), Some(1_795_424_400));
        assert_eq!(parse_timestamp("2026-11-23T09:00:00Z"), parse_timestamp("2026-11-23T10:00:00+01:00"));
        assert_eq!(parse_timestamp("2026-11-23T10:00:00.123-02:30"), parse_timestamp("2026-11-23T12:30:00Z"));
        for bad in ["", "tomorrow", "2026-13-01", "2026-11-23T25:00", "2026-11-23T10:00:00Q"] {
            assert_eq!(parse_timestamp(bad), None, "{bad}");
        }
    }

    #[test]
    fn emails_and_domains() {
        assert_eq!(normalize_email("  Anna.Muster@Example.ORG ").ok().as_deref(), Some("anna.muster@example.org"));
        for bad in ["", "anna", "anna@", "@x.de", "a b@x.de", "a@x", "a@x..de", "a@@x.de"] {
            assert!(normalize_email(bad).is_err(), "{bad}");
        }
        assert_eq!(company_from_domain("acme-bau.de"), "Acme-Bau");
        assert_eq!(company_from_domain("mail.example.co.uk"), "Example");
        assert_eq!(company_from_domain("sub.firma.com"), "Firma");
        assert_eq!(company_from_domain("xn--mller-bau-q9a.de"), "Müller-Bau", "punycode is decoded");
        assert!(free_mail_domains(&Config::default()).contains("gmail.com"));
    }
}
