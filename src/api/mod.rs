//! The contact-manager API under `/api/v1/`: the same stored vCards that CardDAV serves, seen as a table
//! (search, filters, sorting, saved views), edited as JSON, imported and exported. Authentication and the
//! books a user sees are exactly those of CardDAV (Basic auth, own and shared books, read-only rules).
//!
//! `ROUTES` is the one list of endpoints: dispatch matches against it and the OpenAPI document is generated
//! from it, so the two cannot drift apart.

pub mod transfer;

use crate::app::{App, AuthUser};
use crate::auth;
use crate::body::RequestBody;
use crate::body::{self, Body};
use crate::error::{DavError, DavResult};
use crate::router;
use crate::store::{self, Author, BookView, ContactQuery, FieldFilter, FieldOp, Precondition, PutOutcome};
use crate::vcard::contact::{COLUMNS, Contact, fold, looks_like_phone, phone_key, project};
use crate::vcard::{self, Version};
use base64::Engine as _;
use http_body_util::{BodyExt, Limited};
use hyper::{HeaderMap, Method, Request, Response, StatusCode, header};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;

/// Every endpoint: method, path template, summary. `{name}` segments are parameters.
pub const ROUTES: &[(&str, &str, &str)] = &[
    ("GET", "/api/v1/openapi.json", "This OpenAPI document"),
    ("GET", "/api/v1/books", "Address books the user can see (own and shared)"),
    ("GET", "/api/v1/contacts", "Search and list contacts across books: q, filter, view, sort, columns, limit, cursor"),
    ("GET", "/api/v1/contacts/export", "Export the matching contacts as CSV or vCard; requires a purpose (audited)"),
    ("POST", "/api/v1/books/{book}/contacts", "Create a contact from JSON"),
    ("GET", "/api/v1/books/{book}/contacts/{uid}", "One contact as JSON (format=vcard or jscontact for the others)"),
    ("PUT", "/api/v1/books/{book}/contacts/{uid}", "Replace a contact's fields (If-Match)"),
    ("PATCH", "/api/v1/books/{book}/contacts/{uid}", "Change some fields of a contact (If-Match)"),
    ("DELETE", "/api/v1/books/{book}/contacts/{uid}", "Delete a contact (If-Match)"),
    ("GET", "/api/v1/books/{book}/contacts/{uid}/documents", "Documents attached to a contact (X-KARTEI-DOCUMENT)"),
    ("GET", "/api/v1/books/{book}/contacts/{uid}/history", "Where a contact came from, who changed it, its events"),
    ("GET", "/api/v1/purposes", "The processing purposes contacts may carry (X-KARTEI-PURPOSE)"),
    ("POST", "/api/v1/books/{book}/import", "Import a .vcf or .csv file: dry_run, mapping; atomic per file"),
    ("POST", "/api/v1/ingest", "Upsert a contact from an outside system by e-mail (integration bearer token)"),
    ("POST", "/api/v1/books/{book}/ingest", "The same, naming the integration's book (integration bearer token)"),
    ("GET", "/api/v1/views", "Built-in and saved views"),
    ("POST", "/api/v1/views", "Save a view (name, q, filter, sort, columns)"),
    ("PUT", "/api/v1/views/{id}", "Change a saved view"),
    ("DELETE", "/api/v1/views/{id}", "Delete a saved view"),
];

const MAX_PAGE: usize = 1000;
const DEFAULT_PAGE: usize = 50;
const MAX_FILTER_TERMS: usize = 64;

/// Matches a request against `ROUTES`; returns the route index and the path parameters.
fn route(method: &str, segments: &[String]) -> Option<(usize, HashMap<&'static str, String>)> {
    'routes: for (i, (m, template, _)) in ROUTES.iter().enumerate() {
        if *m != method {
            continue;
        }
        let parts: Vec<&str> = template.trim_start_matches("/api/v1/").split('/').collect();
        if parts.len() != segments.len() {
            continue;
        }
        let mut params = HashMap::new();
        for (part, seg) in parts.iter().zip(segments) {
            if let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                params.insert(name, seg.clone());
            } else if part != seg {
                continue 'routes;
            }
        }
        return Some((i, params));
    }
    None
}

pub fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body::full(format!("{value}\n")))
        .unwrap_or_else(|_| Response::new(body::empty()))
}

fn bad(message: impl Into<String>) -> DavError {
    DavError::bad_request(message.into())
}

/// Entry point: errors become `{"error": "...", "status": N}`.
pub async fn handle(app: Arc<App>, user: AuthUser, segments: Vec<String>, req: Request<RequestBody>) -> Response<Body> {
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    match dispatch(app, user, segments, req).await {
        Ok(r) => r,
        Err(e) => error_json(e, &method, &path),
    }
}

/// An API error as `{"error": "...", "status": N}`, logged.
pub fn error_json(e: DavError, method: &str, path: &str) -> Response<Body> {
    if e.status.is_server_error() {
        tracing::error!(status = e.status.as_u16(), %method, %path, message = ?e.message, "API request failed");
    } else {
        tracing::warn!(status = e.status.as_u16(), %method, %path, message = ?e.message, "API request refused");
    }
    let mut r = json_response(e.status, &json!({"error": e.message, "status": e.status.as_u16()}));
    for (name, value) in &e.headers {
        if let Ok(v) = value.parse() {
            r.headers_mut().insert(name, v);
        }
    }
    r
}

/// Decoded query parameters (`+` is a space, as in HTML forms).
pub fn query_params(uri: &hyper::Uri) -> HashMap<String, String> {
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let decode =
                |s: &str| percent_encoding::percent_decode_str(&s.replace('+', " ")).decode_utf8_lossy().into_owned();
            (decode(k), decode(v))
        })
        .collect()
}

async fn dispatch(
    app: Arc<App>,
    user: AuthUser,
    segments: Vec<String>,
    req: Request<RequestBody>,
) -> DavResult<Response<Body>> {
    let Some((index, params)) = route(req.method().as_str(), &segments) else {
        let allowed: Vec<&str> =
            ROUTES.iter().filter(|(_, t, _)| route_matches_path(t, &segments)).map(|(m, _, _)| *m).collect();
        return Err(if allowed.is_empty() {
            DavError::new(StatusCode::NOT_FOUND, "no such API endpoint")
        } else {
            // RFC 9110 §15.5.6: a 405 names the methods the resource does allow.
            DavError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed on this endpoint")
                .with_header(header::ALLOW, allowed.join(", "))
        });
    };
    let query = query_params(req.uri());
    let ctx = ApiCtx { app, user };
    match ROUTES[index].1 {
        "/api/v1/openapi.json" => Ok(json_response(StatusCode::OK, &openapi())),
        "/api/v1/books" => ctx.list_books().await,
        "/api/v1/contacts" => ctx.list_contacts(&query).await,
        "/api/v1/contacts/export" => transfer::export(&ctx, &query).await,
        "/api/v1/books/{book}/contacts" => {
            let book = ctx.book(&params["book"]).await?;
            let body = read_json(req).await?;
            ctx.create_contact(&book, body).await
        }
        "/api/v1/books/{book}/contacts/{uid}" => {
            let book = ctx.book(&params["book"]).await?;
            let uid = params["uid"].clone();
            let method = req.method().clone();
            let headers = req.headers().clone();
            match method {
                Method::GET => ctx.get_contact(&book, &uid, &query).await,
                Method::DELETE => ctx.delete_contact(&book, &uid, &headers).await,
                Method::PUT | Method::PATCH => {
                    let body = read_json(req).await?;
                    ctx.update_contact(&book, &uid, &headers, body, method == Method::PATCH).await
                }
                _ => Err(DavError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")),
            }
        }
        "/api/v1/books/{book}/contacts/{uid}/documents" => {
            let book = ctx.book(&params["book"]).await?;
            ctx.documents(&book, &params["uid"]).await
        }
        "/api/v1/books/{book}/contacts/{uid}/history" => {
            let book = ctx.book(&params["book"]).await?;
            ctx.history(&book, &params["uid"]).await
        }
        "/api/v1/purposes" => Ok(json_response(StatusCode::OK, &json!({"purposes": ctx.app.config.privacy.purposes}))),
        "/api/v1/books/{book}/import" => {
            let book = ctx.book(&params["book"]).await?;
            transfer::import(&ctx, &book, &query, req).await
        }
        // Saved views belong to the whole account, which a `user+book` login does not speak for.
        "/api/v1/views" | "/api/v1/views/{id}" if ctx.user.scope.is_some() => {
            Err(DavError::forbidden("a book-scoped login cannot use the account's saved views"))
        }
        "/api/v1/views" if req.method() == Method::GET => ctx.list_views().await,
        "/api/v1/views" => {
            let body = read_json(req).await?;
            ctx.save_view(None, body).await
        }
        // Reached only without an integration token: app.rs sends ingest requests with one to `ingest`.
        "/api/v1/ingest" | "/api/v1/books/{book}/ingest" => {
            Err(DavError::new(StatusCode::UNAUTHORIZED, "ingest takes an integration bearer token"))
        }
        "/api/v1/views/{id}" => {
            let id: i64 = params["id"].parse().map_err(|_| DavError::not_found())?;
            if req.method() == Method::DELETE {
                ctx.delete_view(id).await
            } else {
                let body = read_json(req).await?;
                ctx.save_view(Some(id), body).await
            }
        }
        _ => Err(DavError::not_found()),
    }
}

fn route_matches_path(template: &str, segments: &[String]) -> bool {
    let parts: Vec<&str> = template.trim_start_matches("/api/v1/").split('/').collect();
    parts.len() == segments.len() && parts.iter().zip(segments).all(|(p, s)| p.starts_with('{') || p == s)
}

async fn read_json(req: Request<RequestBody>) -> DavResult<Value> {
    let bytes = match Limited::new(req.into_body(), 1024 * 1024).collect().await {
        Ok(c) => c.to_bytes(),
        Err(_) => return Err(DavError::new(StatusCode::PAYLOAD_TOO_LARGE, "the JSON body exceeds 1 MiB")),
    };
    serde_json::from_slice(&bytes).map_err(|e| bad(format!("invalid JSON body: {e}")))
}

/// The OpenAPI 3 document, generated from `ROUTES`.
/// Query parameters of the list-shaped endpoints, for the OpenAPI document.
fn selection_parameters() -> Vec<Value> {
    let param = |name: &str, description: &str| json!({"name": name, "in": "query", "required": false, "schema": {"type": "string"}, "description": description});
    vec![
        param("q", "quick search: words in any order, case-, accent- and phone-format-insensitive"),
        param(
            "filter",
            "JSON: {\"column\", \"op\", \"value\"} or {\"and\"|\"or\": […]} or {\"not\": …}; ops equals, contains, starts-with, is-empty, is-not-empty, before, after",
        ),
        param("view", "a built-in view (all, staff, members) or a saved view's id"),
        json!({"name": "sort", "in": "query", "required": false, "description": "a column, '-' in front for descending",
            "schema": {"type": "string", "enum": COLUMNS.iter().flat_map(|c| [c.to_string(), format!("-{c}")]).collect::<Vec<_>>()}}),
        param("columns", "comma-separated columns"),
        param("book", "only this address book (its URL segment)"),
        json!({"name": "limit", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE}}),
        param("cursor", "the `next` of the previous page"),
    ]
}

/// What the OpenAPI document says about one route besides its path parameters: query parameters and body.
fn operation_details(method: &str, template: &str) -> (Vec<Value>, Option<Value>) {
    let json_body = |description: &str, schema: &str| {
        json!({"required": true, "description": description,
               "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}})
    };
    let flag = |name: &str| json!({"name": name, "in": "query", "required": false, "schema": {"type": "boolean"}});
    match (method, template) {
        ("GET", "/api/v1/contacts") => (selection_parameters(), None),
        ("GET", "/api/v1/contacts/export") => {
            let mut params = selection_parameters();
            params.push(json!({"name": "purpose", "in": "query", "required": true,
                "schema": {"type": "string", "minLength": 1, "maxLength": 200}, "description": "why the data leaves kartei (audited)"}));
            params.push(json!({"name": "format", "in": "query", "required": false, "schema": {"type": "string", "enum": ["csv", "vcf"]}}));
            params.push(json!({"name": "version", "in": "query", "required": false, "schema": {"type": "string", "enum": ["3.0", "4.0"]}}));
            params.push(flag("bom"));
            (params, None)
        }
        ("GET", "/api/v1/books/{book}/contacts/{uid}") => (
            vec![json!({"name": "format", "in": "query", "required": false,
                "schema": {"type": "string", "enum": ["json", "vcard", "jscontact"]}})],
            None,
        ),
        ("POST", "/api/v1/books/{book}/contacts") | ("PUT", "/api/v1/books/{book}/contacts/{uid}") => {
            (vec![], Some(json_body("the contact's fields; a formatted name is required", "NewContact")))
        }
        ("PATCH", "/api/v1/books/{book}/contacts/{uid}") => {
            (vec![], Some(json_body("the fields to change; the others stay", "Contact")))
        }
        ("POST", "/api/v1/views") | ("PUT", "/api/v1/views/{id}") => {
            (vec![], Some(json_body("a saved view: a name and the selection it stands for", "View")))
        }
        ("POST", "/api/v1/ingest" | "/api/v1/books/{book}/ingest") => {
            (vec![], Some(json_body("a contact from an outside system, matched by e-mail", "Ingest")))
        }
        ("POST", "/api/v1/books/{book}/import") => (
            vec![
                json!({"name": "format", "in": "query", "required": false, "schema": {"type": "string", "enum": ["vcf", "csv"]}}),
                json!({"name": "mapping", "in": "query", "required": false, "schema": {"type": "string"},
                    "description": "CSV column mapping as JSON; detected for Google and Outlook exports"}),
                flag("dry_run"),
                flag("progress"),
                json!({"name": "filename", "in": "query", "required": false, "schema": {"type": "string"}}),
            ],
            Some(json!({"required": true, "content": {
                "text/vcard": {"schema": {"type": "string"}},
                "text/csv": {"schema": {"type": "string"}},
            }})),
        ),
        _ => (vec![], None),
    }
}

/// The JSON shape of a contact (`vcard::contact::Contact`); unknown fields are refused.
fn contact_schema() -> Value {
    let text = json!({"type": "string"});
    let texts = json!({"type": "array", "items": {"type": "string"}});
    let strict = |properties: Value| json!({"type": "object", "additionalProperties": false, "properties": properties});
    let typed = strict(json!({"value": text, "types": texts}));
    strict(json!({
        "fn": text,
        "name": strict(json!({"family": text, "given": text, "additional": text, "prefix": text, "suffix": text})),
        "org": text, "department": text, "title": text, "role": text, "degree": text,
        "emails": {"type": "array", "items": typed},
        "phones": {"type": "array", "items": typed},
        "addresses": {"type": "array", "items": strict(json!({"street": text, "city": text, "region": text,
            "postal_code": text, "country": text, "types": texts}))},
        "birthday": {"type": "string", "description": "YYYY-MM-DD, or --MM-DD without a year"},
        "gender": text, "websites": texts, "social": texts, "categories": texts, "note": text,
        "influence": text, "attitude": text, "personality": text,
        "internal": {"type": "boolean"},
        "documents": {"type": "array", "items": {"type": "string"}, "description": "paths below /dav/files/{user}/"},
        "purposes": {"type": "array", "items": {"type": "string"}, "description": "from GET /api/v1/purposes"},
    }))
}

pub fn openapi() -> Value {
    let error = json!({"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    let with_description = |text: &str| {
        let mut e = error.clone();
        e["description"] = json!(text);
        e
    };
    let mut paths = serde_json::Map::new();
    for (method, template, summary) in ROUTES {
        let mut parameters: Vec<Value> = template
            .split('/')
            .filter_map(|p| p.strip_prefix('{').and_then(|p| p.strip_suffix('}')))
            .map(|name| {
                // A segment cannot hold '/', '\' or NUL (they are refused with 400 before any lookup).
                json!({"name": name, "in": "path", "required": true, "schema": {"type": "string", "pattern": "^[^/\\\\\\u0000]+$"}})
            })
            .collect();
        let (query, body) = operation_details(method, template);
        parameters.extend(query);
        let entry = paths.entry(template.to_string()).or_insert_with(|| json!({}));
        let mut operation = json!({
            "summary": summary,
            "parameters": parameters,
            "security": [if template.ends_with("/ingest") { json!({"integration": []}) } else { json!({"basic": []}) }],
            "responses": {
                "200": {"description": "success"},
                "400": with_description("bad input; the message names the problem"),
                "401": with_description("authentication required"),
                "403": with_description("the book is shared with you read-only"),
                "404": with_description("no such book, contact or view"),
                "405": with_description("method not allowed here (see Allow)"),
                "412": with_description("If-Match does not match the contact's ETag"),
                "413": with_description("the body is too large"),
                "429": with_description("too many failed logins"),
            }
        });
        if method == &"POST" {
            operation["responses"]["201"] = json!({"description": "created"});
        }
        if let Some(body) = body {
            operation["requestBody"] = body;
        }
        if template.ends_with("/import") {
            operation["description"] = json!(transfer::IMPORT_RULES);
        }
        entry[method.to_lowercase()] = operation;
    }
    json!({
        "openapi": "3.0.3",
        "info": {"title": "kartei contact API", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
        "components": {
            "securitySchemes": {
                "basic": {"type": "http", "scheme": "basic"},
                "integration": {"type": "http", "scheme": "bearer", "description": "token from POST /admin/v1/integrations"},
            },
            "schemas": {
                "Error": {"type": "object", "properties": {"error": {"type": "string"}, "status": {"type": "integer"}}},
                "Columns": {"type": "string", "enum": COLUMNS.iter().chain(&["uid"]).collect::<Vec<_>>()},
                "Contact": contact_schema(),
                "NewContact": {"allOf": [{"$ref": "#/components/schemas/Contact"},
                    {"type": "object", "required": ["fn"], "properties": {"fn": {"type": "string", "pattern": "\\S"}}}]},
                "View": {"type": "object", "required": ["name"], "additionalProperties": false, "properties": {
                    "name": {"type": "string", "minLength": 1, "pattern": "\\S"},
                    "q": {"type": "string"},
                    "filter": {"type": "object", "description": "as the filter parameter of GET /api/v1/contacts"},
                    "sort": {"type": "string"},
                    "columns": {"type": "array", "items": {"$ref": "#/components/schemas/Columns"}},
                }},
                "Ingest": {"type": "object", "required": ["email"], "properties": {
                    "email": {"type": "string", "format": "email"},
                    "name": {"type": "string"}, "phone": {"type": "string"}, "company": {"type": "string"},
                    "optin": {"type": "boolean"},
                    "event": {"type": "object", "required": ["start"], "properties": {
                        "start": {"type": "string"}, "end": {"type": "string"},
                        "title": {"type": "string"}, "host": {"type": "string"},
                    }},
                }},
            }
        }
    })
}

/// A parsed list/export request: which contacts, in which order, which columns.
pub struct Selection {
    pub query: ContactQuery,
    pub columns: Option<Vec<String>>,
    /// What the request asked for, for the audit trail.
    pub description: Value,
}

pub struct ApiCtx {
    pub app: Arc<App>,
    pub user: AuthUser,
}

pub fn check_column(c: &str) -> DavResult<()> {
    if COLUMNS.contains(&c) {
        Ok(())
    } else {
        Err(bad(format!("unknown column '{c}' (known: {})", COLUMNS.join(", "))))
    }
}

/// `{"and": [...]}`, `{"or": [...]}`, `{"not": {...}}` or `{"column": c, "op": o, "value": v}`.
pub fn parse_filter(v: &Value, terms: &mut usize) -> DavResult<FieldFilter> {
    *terms += 1;
    if *terms > MAX_FILTER_TERMS {
        return Err(bad(format!("the filter has more than {MAX_FILTER_TERMS} terms")));
    }
    let obj = v.as_object().ok_or_else(|| bad("filter: each term must be a JSON object"))?;
    for (key, ctor) in [("and", FieldFilter::And as fn(Vec<FieldFilter>) -> FieldFilter), ("or", FieldFilter::Or)] {
        if let Some(list) = obj.get(key) {
            let list = list.as_array().ok_or_else(|| bad(format!("filter: \"{key}\" takes a list")))?;
            return Ok(ctor(list.iter().map(|t| parse_filter(t, terms)).collect::<DavResult<Vec<_>>>()?));
        }
    }
    if let Some(inner) = obj.get("not") {
        return Ok(FieldFilter::Not(Box::new(parse_filter(inner, terms)?)));
    }
    let column =
        obj.get("column").and_then(Value::as_str).ok_or_else(|| bad("filter: a condition needs \"column\""))?;
    check_column(column)?;
    let op = match obj.get("op").and_then(Value::as_str).unwrap_or("contains") {
        "equals" => FieldOp::Equals,
        "contains" => FieldOp::Contains,
        "starts-with" => FieldOp::StartsWith,
        "is-empty" => FieldOp::IsEmpty,
        "is-not-empty" => FieldOp::IsNotEmpty,
        "before" => FieldOp::Before,
        "after" => FieldOp::After,
        other => {
            return Err(bad(format!(
                "unknown operator '{other}' (known: equals, contains, starts-with, is-empty, is-not-empty, before, after)"
            )));
        }
    };
    let value = match obj.get("value") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::Bool(b)) => b.to_string(),
        None | Some(Value::Null) if matches!(op, FieldOp::IsEmpty | FieldOp::IsNotEmpty) => String::new(),
        _ => return Err(bad(format!("filter: condition on '{column}' needs a string \"value\""))),
    };
    let value = if column == "phone" { phone_key(&value) } else { fold(&value) };
    Ok(FieldFilter::Condition { column: column.to_string(), op, value })
}

fn encode_cursor(key: &str, id: i64) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json!([key, id]).to_string())
}

fn decode_cursor(cursor: &str) -> DavResult<(String, i64)> {
    let invalid = || bad("cursor: not a cursor this server issued");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(cursor).map_err(|_| invalid())?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|_| invalid())?;
    match v.as_array().map(Vec::as_slice) {
        Some([Value::String(k), Value::Number(id)]) => Ok((k.clone(), id.as_i64().ok_or_else(invalid)?)),
        _ => Err(invalid()),
    }
}

/// The folded words of a quick search; a query that looks like a phone number is one phone key.
pub fn search_words(q: &str) -> Vec<String> {
    if looks_like_phone(q) {
        return vec![phone_key(q)];
    }
    fold(q).split_whitespace().map(str::to_string).collect()
}

impl ApiCtx {
    pub fn store(&self) -> &store::SharedStore {
        &self.app.store
    }

    pub async fn visible_books(&self) -> DavResult<Vec<BookView>> {
        let me = self.user.username.clone();
        let books = store::blocking(self.store(), move |s| s.books_in_home(&me)).await?;
        Ok(books.into_iter().filter(|b| self.user.scope.as_ref().is_none_or(|s| *s == b.segment)).collect())
    }

    pub async fn book(&self, segment: &str) -> DavResult<BookView> {
        self.visible_books()
            .await?
            .into_iter()
            .find(|b| b.segment == segment)
            .ok_or_else(|| DavError::new(StatusCode::NOT_FOUND, format!("no address book '{segment}'")))
    }

    async fn list_books(&self) -> DavResult<Response<Body>> {
        let books = self.visible_books().await?;
        let list: Vec<Value> = books
            .iter()
            .map(|b| {
                json!({"book": b.segment, "owner": b.owner, "display_name": b.display_name, "shared": b.shared,
                       "writable": b.writable, "href": router::book_href(&self.user.username, &b.segment)})
            })
            .collect();
        Ok(json_response(StatusCode::OK, &json!({ "books": list })))
    }

    /// Built-in views: all, staff (our own people: marked internal or with a login's e-mail), members (the rest).
    async fn builtin_view(&self, name: &str) -> DavResult<Option<Value>> {
        let staff = || async {
            let users = store::blocking(self.store(), |s| s.users()).await?;
            let mut any: Vec<Value> = vec![json!({"column": "internal", "op": "is-not-empty"})];
            any.extend(users.iter().take(500).map(|u| json!({"column": "email", "op": "equals", "value": u.username})));
            Ok::<Value, DavError>(json!({ "or": any }))
        };
        Ok(match name {
            "all" => Some(json!({"name": "All contacts"})),
            "staff" => Some(json!({"name": "Staff", "filter": staff().await?})),
            "members" => Some(json!({"name": "Organization members", "filter": {"not": staff().await?}})),
            _ => None,
        })
    }

    async fn view_definition(&self, view: &str) -> DavResult<Value> {
        if let Some(v) = self.builtin_view(view).await? {
            return Ok(v);
        }
        let id: i64 = view.parse().map_err(|_| bad(format!("view: no view '{view}'")))?;
        if self.user.scope.is_some() {
            return Err(DavError::forbidden("a book-scoped login cannot use the account's saved views"));
        }
        let me = self.user.username.clone();
        let views = store::blocking(self.store(), move |s| s.views(&me)).await?;
        let saved = views.into_iter().find(|v| v.id == id).ok_or_else(|| bad(format!("view: no view '{view}'")))?;
        serde_json::from_str(&saved.definition)
            .map_err(|e| DavError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
    }

    /// Reads q / filter / view / sort / columns / book / limit / cursor into a store query.
    pub async fn selection(&self, params: &HashMap<String, String>) -> DavResult<Selection> {
        let view = match params.get("view") {
            Some(v) => self.view_definition(v).await?,
            None => json!({}),
        };
        let mut terms = 0;
        let mut filters = Vec::new();
        if let Some(f) = view.get("filter") {
            filters.push(parse_filter(f, &mut terms)?);
        }
        if let Some(f) = params.get("filter").filter(|f| !f.trim().is_empty()) {
            let v: Value = serde_json::from_str(f).map_err(|e| bad(format!("filter: invalid JSON: {e}")))?;
            filters.push(parse_filter(&v, &mut terms)?);
        }
        let mut words = Vec::new();
        for q in [view.get("q").and_then(Value::as_str), params.get("q").map(String::as_str)].into_iter().flatten() {
            words.extend(search_words(q));
        }
        let sort_spec = params
            .get("sort")
            .cloned()
            .or_else(|| view.get("sort").and_then(Value::as_str).map(str::to_string))
            .unwrap_or_else(|| "fn".into());
        let (desc, column) = match sort_spec.strip_prefix('-') {
            Some(c) => (true, c.to_string()),
            None => (false, sort_spec.clone()),
        };
        check_column(&column).map_err(|e| bad(format!("sort: {}", e.message)))?;
        let columns_spec = params.get("columns").cloned().or_else(|| {
            view.get("columns")
                .and_then(Value::as_array)
                .map(|c| c.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(","))
        });
        let columns = match columns_spec.filter(|c| !c.is_empty()) {
            Some(c) => {
                let list: Vec<String> = c.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
                // `uid` is every item's anyway; asking for it puts it in an export's columns.
                for col in list.iter().filter(|c| *c != "uid") {
                    check_column(col).map_err(|e| bad(format!("columns: {}", e.message)))?;
                }
                Some(list)
            }
            None => None,
        };
        let books = match params.get("book") {
            Some(b) => vec![self.book(b).await?],
            None => self.visible_books().await?,
        };
        let limit = match params.get("limit") {
            Some(l) => {
                let n: usize = l.parse().map_err(|_| bad(format!("limit: '{l}' is not a number")))?;
                if n == 0 || n > MAX_PAGE {
                    return Err(bad(format!("limit: must be between 1 and {MAX_PAGE}")));
                }
                n
            }
            None => DEFAULT_PAGE,
        };
        let after = params.get("cursor").filter(|c| !c.is_empty()).map(|c| decode_cursor(c)).transpose()?;
        let filter = match filters.len() {
            0 => None,
            1 => filters.pop(),
            _ => Some(FieldFilter::And(filters)),
        };
        let description = json!({
            "q": params.get("q"), "filter": params.get("filter"), "view": params.get("view"), "book": params.get("book"), "sort": sort_spec,
        });
        Ok(Selection {
            query: ContactQuery {
                books: books.iter().map(|b| b.id).collect(),
                words,
                filter,
                sort: (column, desc),
                after,
                limit: Some(limit),
            },
            columns,
            description,
        })
    }

    /// The book (as this user sees it) a card id belongs to.
    pub async fn book_segments(&self) -> DavResult<HashMap<i64, String>> {
        Ok(self.visible_books().await?.into_iter().map(|b| (b.id, b.segment)).collect())
    }

    pub fn item_json(
        &self,
        segment: &str,
        meta: &store::CardMeta,
        contact: &Contact,
        columns: Option<&[String]>,
    ) -> Value {
        let mut item = json!({
            "uid": meta.uid,
            "href": router::card_href(&self.user.username, segment, &meta.name),
            "book": segment,
            "etag": format!("\"{}\"", meta.etag),
            "fn": contact.formatted_name,
        });
        match columns {
            Some(cols) => {
                for c in cols.iter().filter(|c| *c != "uid") {
                    item[c.as_str()] = Value::String(contact.column(c));
                }
            }
            None => {
                if let Ok(Value::Object(fields)) = serde_json::to_value(contact) {
                    for (k, v) in fields {
                        item[k] = v;
                    }
                }
            }
        }
        item
    }

    async fn list_contacts(&self, params: &HashMap<String, String>) -> DavResult<Response<Body>> {
        let selection = self.selection(params).await?;
        let limit = selection.query.limit.unwrap_or(DEFAULT_PAGE);
        let mut query = selection.query.clone();
        query.limit = Some(limit + 1);
        let found = store::blocking(self.store(), move |s| s.search_contacts(&query)).await?;
        let segments = self.book_segments().await?;
        let more = found.len() > limit;
        let page = &found[..found.len().min(limit)];
        let items: Vec<Value> = page
            .iter()
            .filter_map(|f| {
                let card = vcard::parse_stored(&f.vcard)?;
                let segment = segments.get(&f.book)?;
                Some(self.item_json(segment, &f.meta, &project(&card), selection.columns.as_deref()))
            })
            .collect();
        let next = if more { page.last().map(|l| encode_cursor(&l.sort_key, l.id)) } else { None };
        Ok(json_response(StatusCode::OK, &json!({ "items": items, "next": next })))
    }

    async fn find(&self, book: &BookView, uid: &str) -> DavResult<store::Card> {
        let (id, u) = (book.id, uid.to_string());
        store::blocking(self.store(), move |s| s.card_by_uid(id, &u)).await?.ok_or_else(|| {
            DavError::new(StatusCode::NOT_FOUND, format!("no contact with UID '{uid}' in '{}'", book.segment))
        })
    }

    async fn get_contact(
        &self,
        book: &BookView,
        uid: &str,
        params: &HashMap<String, String>,
    ) -> DavResult<Response<Body>> {
        let card = self.find(book, uid).await?;
        let etag = format!("\"{}\"", card.meta.etag);
        let parsed = vcard::parse_stored(&card.vcard)
            .ok_or_else(|| DavError::new(StatusCode::INTERNAL_SERVER_ERROR, "stored card does not parse"))?;
        let (content_type, body) = match params.get("format").map(String::as_str) {
            None | Some("json") => (
                "application/json".to_string(),
                self.item_json(&book.segment, &card.meta, &project(&parsed), None).to_string(),
            ),
            Some("vcard") => {
                let version = params
                    .get("version")
                    .map(|v| Version::parse(v).ok_or_else(|| bad("version: use 3.0 or 4.0")))
                    .transpose()?;
                let (bytes, _) = vcard::render(&card.vcard, &card.meta.version, version, None);
                ("text/vcard; charset=utf-8".to_string(), String::from_utf8_lossy(&bytes).into_owned())
            }
            Some("jscontact") => ("application/jscontact+json".to_string(), vcard::to_jscontact(&parsed)),
            Some(other) => return Err(bad(format!("format: '{other}' is not json, vcard or jscontact"))),
        };
        Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, content_type)
            .header(header::ETAG, etag)
            .body(body::full(body))
            .map_err(|e| DavError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
    }

    fn contact_from(value: Value) -> DavResult<Contact> {
        let mut value = value;
        if let Some(obj) = value.as_object_mut() {
            // Read-only fields of an item are accepted (so a GET result can be sent back) and ignored.
            for k in ["uid", "href", "book", "etag"] {
                obj.remove(k);
            }
        }
        serde_json::from_value(value).map_err(|e| bad(format!("invalid contact: {e}")))
    }

    async fn store_card(
        &self,
        book: &BookView,
        name: String,
        text: String,
        pre: Precondition,
    ) -> DavResult<PutOutcome> {
        App::require_writable(book)?;
        let valid = vcard::validate(text.as_bytes())
            .map_err(|e| bad(format!("the contact does not make a valid vCard: {e:?}")))?;
        let id = book.id;
        let actor = self.user.username.clone();
        let result = store::blocking(self.store(), move |s| {
            s.put_card_by(id, &name, &valid.new_card, &pre, &Author { actor: &actor, via: "api" })
        })
        .await;
        match result {
            Err(store::Error::UidConflict(existing)) => {
                Err(DavError::new(StatusCode::CONFLICT, format!("a contact with this UID exists ({existing})")))
            }
            other => Ok(other?),
        }
    }

    /// Purposes must come from the admin's list (`[privacy] purposes`); ones already on the card may stay.
    fn check_purposes(&self, purposes: &[String], already: &[String]) -> DavResult<()> {
        let allowed = &self.app.config.privacy.purposes;
        for p in purposes {
            let known = allowed.iter().chain(already).any(|a| a.eq_ignore_ascii_case(p.trim()));
            if !known {
                return Err(bad(format!(
                    "purposes: '{p}' is not a configured purpose (one of: {})",
                    allowed.join(", ")
                )));
            }
        }
        Ok(())
    }

    async fn create_contact(&self, book: &BookView, body: Value) -> DavResult<Response<Body>> {
        let uid = body.get("uid").and_then(Value::as_str).map(str::to_string).unwrap_or_else(new_uid);
        let contact = Self::contact_from(body)?;
        self.check_purposes(&contact.purposes, &[])?;
        if contact.formatted_name.trim().is_empty() {
            return Err(bad("fn: a contact needs a formatted name"));
        }
        let name = format!("{}.vcf", uid.replace(['/', '\\', '\0'], "_"));
        let text = contact.to_new_vcard(&uid);
        self.store_card(book, name, text, Precondition::MustNotExist).await?;
        self.audit("contact.create", book, &uid).await;
        let card = self.find(book, &uid).await?;
        let item = self.item_json(&book.segment, &card.meta, &contact, None);
        let mut r = json_response(StatusCode::CREATED, &item);
        if let Ok(v) = format!("\"{}\"", card.meta.etag).parse() {
            r.headers_mut().insert(header::ETAG, v);
        }
        Ok(r)
    }

    async fn update_contact(
        &self,
        book: &BookView,
        uid: &str,
        headers: &HeaderMap,
        body: Value,
        patch: bool,
    ) -> DavResult<Response<Body>> {
        let card = self.find(book, uid).await?;
        let pre = crate::methods::precondition(headers)?;
        if let Precondition::EtagIn(tags) = &pre
            && !tags.contains(&card.meta.etag)
        {
            return Err(DavError::new(
                StatusCode::PRECONDITION_FAILED,
                "the contact changed since it was read (If-Match)",
            ));
        }
        let stored = String::from_utf8_lossy(&card.vcard).into_owned();
        let parsed = vcard::parse_stored(&card.vcard)
            .ok_or_else(|| DavError::new(StatusCode::INTERNAL_SERVER_ERROR, "stored card does not parse"))?;
        let old = project(&parsed);
        let new = if patch {
            let mut merged = serde_json::to_value(&old)
                .map_err(|e| DavError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
            let changes = body.as_object().ok_or_else(|| bad("a PATCH body must be a JSON object"))?;
            for (k, v) in changes {
                if !["uid", "href", "book", "etag"].contains(&k.as_str()) {
                    merged[k] = v.clone();
                }
            }
            Self::contact_from(merged)?
        } else {
            Self::contact_from(body)?
        };
        self.check_purposes(&new.purposes, &old.purposes)?;
        let version = Version::parse(&card.meta.version).unwrap_or(Version::V4);
        let text = vcard::contact::apply_changes(&stored, version, &old, &new);
        // The stored ETag guards the write, so a device's concurrent change is never overwritten.
        let guard = Precondition::EtagIn(vec![card.meta.etag.clone()]);
        self.store_card(book, card.meta.name.clone(), text, guard).await?;
        self.audit("contact.update", book, uid).await;
        let updated = self.find(book, uid).await?;
        let item = self.item_json(&book.segment, &updated.meta, &new, None);
        let mut r = json_response(StatusCode::OK, &item);
        if let Ok(v) = format!("\"{}\"", updated.meta.etag).parse() {
            r.headers_mut().insert(header::ETAG, v);
        }
        Ok(r)
    }

    async fn delete_contact(&self, book: &BookView, uid: &str, headers: &HeaderMap) -> DavResult<Response<Body>> {
        App::require_writable(book)?;
        let card = self.find(book, uid).await?;
        let pre = crate::methods::precondition(headers)?;
        let (id, name) = (book.id, card.meta.name.clone());
        store::blocking(self.store(), move |s| s.delete_card(id, &name, &pre)).await?;
        self.audit("contact.delete", book, uid).await;
        Ok(json_response(StatusCode::OK, &json!({"deleted": uid})))
    }

    async fn history(&self, book: &BookView, uid: &str) -> DavResult<Response<Body>> {
        let card = self.find(book, uid).await?;
        let (id, uid) = (book.id, card.meta.uid.clone());
        let (origin, events) =
            store::blocking(self.store(), move |s| Ok((s.origin(id, &uid)?, s.events(id, &uid)?))).await?;
        let events: Vec<Value> = events
            .iter()
            .map(|e| json!({"start": e.event.starts_at, "end": e.event.ends_at, "title": e.event.title, "host": e.event.host, "source": e.event.source}))
            .collect();
        Ok(json_response(
            StatusCode::OK,
            &json!({
                "uid": card.meta.uid,
                "created_at": card.meta.created_at,
                "modified_at": card.meta.modified_at,
                "origin": origin.map(|o| json!({"source": o.source, "created_at": o.created_at, "created_by": o.created_by, "changed_at": o.changed_at, "changed_by": o.changed_by, "changed_via": o.changed_via})),
                "events": events,
            }),
        ))
    }

    async fn documents(&self, book: &BookView, uid: &str) -> DavResult<Response<Body>> {
        let card = self.find(book, uid).await?;
        let parsed = vcard::parse_stored(&card.vcard)
            .ok_or_else(|| DavError::new(StatusCode::INTERNAL_SERVER_ERROR, "stored card does not parse"))?;
        let contact = project(&parsed);
        let owner = book.owner.clone();
        let paths = contact.documents.clone();
        // The files live in the book owner's private file area, which sharing a book does not share: anyone
        // who may write the book could otherwise probe it for names, sizes and types by naming paths in a
        // card. Others get the paths only. (`None`: no such file; `Some(None)`: not looked up.)
        let mine = self.user.username == book.owner && self.user.scope.is_none();
        let entries = store::blocking(self.store(), move |s| {
            paths
                .iter()
                .map(|p| {
                    Ok((p.clone(), if mine { s.file(&owner, p.trim_matches('/'))?.map(Some) } else { Some(None) }))
                })
                .collect::<store::Result<Vec<_>>>()
        })
        .await?;
        let list: Vec<Value> = entries
            .into_iter()
            .map(|(path, entry)| {
                let clean = path.trim_matches('/');
                let (exists, size, content_type) = match &entry {
                    None => (json!(false), Value::Null, Value::Null),
                    Some(Some(file)) => (json!(true), json!(file.size), json!(file.content_type)),
                    Some(None) => (Value::Null, Value::Null, Value::Null), // not the caller's to know
                };
                json!({
                    "path": clean,
                    "href": format!("/dav/files/{}/{}", router::encode(&book.owner), clean.split('/').map(router::encode).collect::<Vec<_>>().join("/")),
                    "exists": exists,
                    "size": size,
                    "content_type": content_type,
                })
            })
            .collect();
        Ok(json_response(StatusCode::OK, &json!({ "documents": list })))
    }

    async fn list_views(&self) -> DavResult<Response<Body>> {
        let me = self.user.username.clone();
        let saved = store::blocking(self.store(), move |s| s.views(&me)).await?;
        let mut list = vec![
            json!({"id": "all", "name": "All contacts", "builtin": true}),
            json!({"id": "staff", "name": "Staff", "builtin": true}),
            json!({"id": "members", "name": "Organization members", "builtin": true}),
        ];
        for v in saved {
            let mut def: Value = serde_json::from_str(&v.definition).unwrap_or_else(|_| json!({}));
            def["id"] = json!(v.id.to_string());
            def["name"] = json!(v.name);
            def["builtin"] = json!(false);
            list.push(def);
        }
        Ok(json_response(StatusCode::OK, &json!({ "views": list })))
    }

    async fn save_view(&self, id: Option<i64>, body: Value) -> DavResult<Response<Body>> {
        let obj = body.as_object().ok_or_else(|| bad("a view must be a JSON object"))?;
        for key in obj.keys() {
            if !["name", "q", "filter", "sort", "columns", "id", "builtin"].contains(&key.as_str()) {
                return Err(bad(format!("view: unknown field '{key}'")));
            }
        }
        let name = obj
            .get("name")
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| bad("name: a view needs a name"))?;
        // Validate by building the selection it describes.
        let mut probe = HashMap::new();
        if let Some(f) = obj.get("filter") {
            probe.insert("filter".to_string(), f.to_string());
        }
        if let Some(s) = obj.get("sort").and_then(Value::as_str) {
            probe.insert("sort".to_string(), s.to_string());
        }
        if let Some(c) = obj.get("columns") {
            let list = c.as_array().ok_or_else(|| bad("columns: a list of column names"))?;
            probe.insert("columns".to_string(), list.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(","));
        }
        self.selection(&probe).await?;
        let definition = json!({
            "q": obj.get("q").cloned().unwrap_or(Value::Null),
            "filter": obj.get("filter").cloned().unwrap_or(Value::Null),
            "sort": obj.get("sort").cloned().unwrap_or(Value::Null),
            "columns": obj.get("columns").cloned().unwrap_or(Value::Null),
        });
        let definition = Value::Object(
            definition
                .as_object()
                .map(|m| m.iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap_or_default(),
        );
        let (me, n, d) = (self.user.username.clone(), name.to_string(), definition.to_string());
        let saved = match store::blocking(self.store(), move |s| s.save_view(&me, id, &n, &d)).await {
            Err(store::Error::AlreadyExists) => {
                return Err(DavError::new(StatusCode::CONFLICT, format!("a view named '{name}' exists")));
            }
            Err(store::Error::NotFound) => return Err(DavError::new(StatusCode::NOT_FOUND, "no such view")),
            other => other?,
        };
        let mut out = definition;
        out["id"] = json!(saved.id.to_string());
        out["name"] = json!(saved.name);
        Ok(json_response(if id.is_some() { StatusCode::OK } else { StatusCode::CREATED }, &out))
    }

    async fn delete_view(&self, id: i64) -> DavResult<Response<Body>> {
        let me = self.user.username.clone();
        if !store::blocking(self.store(), move |s| s.delete_view(&me, id)).await? {
            return Err(DavError::new(StatusCode::NOT_FOUND, "no such view"));
        }
        Ok(json_response(StatusCode::OK, &json!({"deleted": id.to_string()})))
    }

    pub async fn audit(&self, action: &str, book: &BookView, detail: &str) {
        let (actor, action, target, detail) = (
            self.user.username.clone(),
            action.to_string(),
            format!("{}/{}", book.owner, book.owner_segment),
            detail.to_string(),
        );
        if let Err(e) = store::blocking(self.store(), move |s| s.audit(&actor, &action, &target, &detail)).await {
            tracing::error!(error = %e, "could not write an audit record");
        }
    }
}

/// A random UID in UUID form (version 4 layout).
pub fn new_uid() -> String {
    let t = auth::generate_token("");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&t).unwrap_or_default();
    uuid_form(&bytes, '4')
}

/// The first 16 bytes in UUID form with the given version digit (and the RFC 9562 variant `a`).
pub fn uuid_form(bytes: &[u8], version: char) -> String {
    let mut hex: String = bytes.iter().take(16).map(|b| format!("{b:02x}")).collect();
    // Too few bytes (a token that did not decode) still give a well-formed UID.
    while hex.len() < 32 {
        hex.push('0');
    }
    format!("{}-{}-{version}{}-a{}-{}", &hex[0..8], &hex[8..12], &hex[13..16], &hex[17..20], &hex[20..32])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_match_templates() {
        let segs = |p: &str| p.split('/').map(str::to_string).collect::<Vec<_>>();
        let (i, params) = route("GET", &segs("books/contacts/contacts/abc")).expect("route");
        assert_eq!(ROUTES[i].1, "/api/v1/books/{book}/contacts/{uid}");
        assert_eq!(params["book"], "contacts");
        assert_eq!(params["uid"], "abc");
        assert!(route("POST", &segs("contacts")).is_none());
    }

    #[test]
    fn every_route_is_in_the_openapi_document() {
        let doc = openapi();
        for (method, path, _) in ROUTES {
            assert!(doc["paths"][path][method.to_lowercase()].is_object(), "{method} {path}");
        }
    }

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let c = encode_cursor("müller", 42);
        assert_eq!(decode_cursor(&c).ok(), Some(("müller".to_string(), 42)));
        assert!(decode_cursor("garbage!").is_err());
        assert!(decode_cursor(&base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("[1,2]")).is_err());
    }

    #[test]
    fn uids_look_like_uuids() {
        let u = new_uid();
        assert_eq!(u.len(), 36);
        assert_eq!(u.matches('-').count(), 4);
    }
}
