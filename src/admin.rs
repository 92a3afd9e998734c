//! Account operations (shared by the CLI and the HTTP admin API) and the admin API itself: JSON under
//! `/admin/v1/` with a bearer token, plus the self-service `/account/v1/credentials`.

use crate::app::{App, AuthUser};
use crate::auth;
use crate::body::RequestBody;
use crate::body::{self, Body};
use crate::config::Config;
use crate::error::{DavError, DavResult};
use crate::router;
use crate::store::{self, Store, User};
use http_body_util::{BodyExt, Limited};
use hyper::{Method, Request, Response, StatusCode, header};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;

pub const DEFAULT_BOOK: &str = "contacts";
const ADMIN_TOKEN_KEY: &str = "admin_token_sha256";

/// A failure of an account operation, with the HTTP status the API gives it.
#[derive(Debug)]
pub struct AccountError {
    pub status: StatusCode,
    pub message: String,
}

impl AccountError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        AccountError { status, message: message.into() }
    }
}

impl From<store::Error> for AccountError {
    fn from(e: store::Error) -> Self {
        match e {
            store::Error::NotFound => AccountError::new(StatusCode::NOT_FOUND, "no such user or address book"),
            store::Error::AlreadyExists => AccountError::new(StatusCode::CONFLICT, "already exists"),
            store::Error::Conflict(why) => AccountError::new(StatusCode::CONFLICT, why),
            other => AccountError::new(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
        }
    }
}

impl std::fmt::Display for AccountError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// User names: what fits in a URL segment and a Basic login without surprises. `+` is reserved for
/// book-scoped logins (`user+book`), `:` cannot appear in Basic credentials.
pub fn validate_username(name: &str) -> Result<(), AccountError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name.chars().all(|c| c.is_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(AccountError::new(
            StatusCode::BAD_REQUEST,
            "username: 1-128 letters, digits, '.', '_', '-' or '@', not starting with '.'",
        ))
    }
}

pub fn validate_segment(segment: &str) -> Result<(), AccountError> {
    let ok = !segment.is_empty()
        && segment.len() <= 128
        && segment.chars().all(|c| c.is_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && !segment.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(AccountError::new(StatusCode::BAD_REQUEST, "book: 1-128 letters, digits, '.', '_' or '-'"))
    }
}

pub struct NewAccount {
    pub user: User,
    pub password: String,
}

/// Creates a user with a generated password (and, unless a name is given, a generated login) and their
/// default address book.
pub fn create_user(
    store: &dyn Store,
    config: &Config,
    username: Option<&str>,
    display_name: Option<&str>,
) -> Result<NewAccount, AccountError> {
    let username = match username {
        Some(u) => {
            validate_username(u)?;
            u.to_string()
        }
        None => auth::generate_login(&config.login_domain()),
    };
    let password = auth::generate_password();
    let hash = auth::hash_password(&password).map_err(|e| AccountError::new(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    let display = display_name.map(str::trim).filter(|d| !d.is_empty()).unwrap_or(&username).to_string();
    let user = store.create_user(&username, &display, &hash)?;
    store.create_book(&username, DEFAULT_BOOK, Some("Contacts"), None, &[], true)?;
    store.audit("admin", "user.create", &username, "")?;
    Ok(NewAccount { user, password })
}

/// Generates a new password; the old one stops working at once (the credential generation changes).
/// `actor` is who asked, for the audit log: "admin", "cli", or the user themself.
pub fn reset_password(store: &dyn Store, username: &str, actor: &str) -> Result<String, AccountError> {
    let password = auth::generate_password();
    let hash = auth::hash_password(&password).map_err(|e| AccountError::new(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    store.set_password_hash(username, &hash)?;
    store.audit(actor, "user.reset-credentials", username, "")?;
    Ok(password)
}

/// Makes a new admin token, stores its hash, returns the token (shown once).
pub fn reset_admin_token(store: &dyn Store) -> Result<String, AccountError> {
    let token = auth::generate_token("kartei_admin_");
    store.set_setting(ADMIN_TOKEN_KEY, &auth::token_hash(&token))?;
    store.audit("admin", "admin-token.reset", "", "")?;
    Ok(token)
}

/// Creates the admin token on first start; returns it when it was just made (to print once).
pub fn ensure_admin_token(store: &dyn Store) -> Result<Option<String>, AccountError> {
    if store.setting(ADMIN_TOKEN_KEY)?.is_some() {
        return Ok(None);
    }
    reset_admin_token(store).map(Some)
}

pub fn user_json(store: &dyn Store, user: &User, public_url: &str) -> Result<Value, AccountError> {
    let books = store.books_in_home(&user.username)?;
    Ok(json!({
        "username": user.username,
        "display_name": user.display_name,
        "disabled": user.disabled,
        "created_at": user.created_at,
        "principal_url": format!("{public_url}{}", router::principal_href(&user.username)),
        "books": books.iter().map(|b| json!({
            "book": b.segment,
            "owner": b.owner,
            "display_name": b.display_name,
            "shared": b.shared,
            "writable": b.writable,
            "url": format!("{public_url}{}", router::book_href(&user.username, &b.segment)),
        })).collect::<Vec<_>>(),
    }))
}

fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-store")
        .body(body::full(format!("{value}\n")))
        .unwrap_or_else(|_| Response::new(body::empty()))
}

fn api_error(status: StatusCode, message: impl Into<String>) -> DavError {
    DavError::new(status, message.into())
}

impl From<AccountError> for DavError {
    fn from(e: AccountError) -> Self {
        api_error(e.status, e.message)
    }
}

async fn read_json<T: for<'de> Deserialize<'de> + Default>(req: Request<RequestBody>) -> DavResult<T> {
    let bytes = match Limited::new(req.into_body(), 64 * 1024).collect().await {
        Ok(c) => c.to_bytes(),
        Err(_) => return Err(api_error(StatusCode::PAYLOAD_TOO_LARGE, "the JSON body exceeds 64 KiB")),
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        let field = (e.classify() == serde_json::error::Category::Data).then(|| offending_field::<T>(&bytes)).flatten();
        match field {
            Some(name) => api_error(StatusCode::BAD_REQUEST, format!("invalid JSON body: field `{name}`: {e}")),
            None => api_error(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")),
        }
    })
}

/// The member of a JSON object that keeps it from being a `T`: serde_json names the position of a value of the
/// wrong type, not its field, so each member is tried alone (a lone member may only lack the required others).
fn offending_field<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Option<String> {
    let object: serde_json::Map<String, Value> = serde_json::from_slice(bytes).ok()?;
    object.into_iter().find_map(|(name, value)| {
        let alone = Value::Object(std::iter::once((name.clone(), value)).collect());
        match serde_json::from_value::<T>(alone) {
            Err(e) if !e.to_string().starts_with("missing field") => Some(name),
            _ => None,
        }
    })
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CreateUser {
    username: Option<String>,
    display_name: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CreateBook {
    book: Option<String>,
    display_name: Option<String>,
    description: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CreateShare {
    username: String,
    #[serde(default)]
    access: Option<String>,
}

/// Runs an account operation on the blocking pool.
async fn run<T: Send + 'static>(
    app: &Arc<App>,
    f: impl FnOnce(&dyn Store) -> Result<T, AccountError> + Send + 'static,
) -> DavResult<T> {
    let store = app.store.clone();
    match tokio::task::spawn_blocking(move || f(store.as_ref())).await {
        Ok(r) => r.map_err(DavError::from),
        Err(e) => Err(api_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
}

pub async fn handle_admin(
    app: Arc<App>,
    segments: Vec<String>,
    req: Request<RequestBody>,
) -> DavResult<Response<Body>> {
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(auth::parse_bearer)
        .map(str::to_string);
    let stored = run(&app, |s| Ok(s.setting(ADMIN_TOKEN_KEY)?)).await?;
    let authorized = matches!((&token, &stored), (Some(t), Some(h)) if auth::token_matches(t, h));
    if !authorized {
        tracing::warn!(path = %req.uri().path(), "admin request without a valid token");
        return Err(api_error(StatusCode::UNAUTHORIZED, "a valid admin bearer token is required")
            .with_header(header::WWW_AUTHENTICATE, "Bearer realm=\"kartei-admin\""));
    }
    let public_url = app.public_url.clone();
    let method = req.method().clone();
    let s: Vec<&str> = segments.iter().map(String::as_str).collect();
    match (&method, s.as_slice()) {
        (&Method::POST, ["users"]) => {
            let body: CreateUser = read_json(req).await?;
            let config = app.config.clone();
            let account =
                run(&app, move |s| create_user(s, &config, body.username.as_deref(), body.display_name.as_deref()))
                    .await?;
            let u = &account.user.username;
            Ok(json_response(
                StatusCode::CREATED,
                &json!({
                    "username": u,
                    "password": account.password,
                    "principal_url": format!("{public_url}{}", router::principal_href(u)),
                    "carddav_url": format!("{public_url}{}", router::home_href(u)),
                    "default_book_url": format!("{public_url}{}", router::book_href(u, DEFAULT_BOOK)),
                }),
            ))
        }
        (&Method::GET, ["users"]) => {
            let list = run(&app, move |s| {
                let users = s.users()?;
                Ok(users.iter().map(|u| json!({"username": u.username, "display_name": u.display_name, "disabled": u.disabled, "created_at": u.created_at})).collect::<Vec<_>>())
            })
            .await?;
            Ok(json_response(StatusCode::OK, &json!({ "users": list })))
        }
        (&Method::GET, ["users", name]) => {
            let name = name.to_string();
            let v = run(&app, move |s| {
                let user = s.user(&name)?.ok_or(store::Error::NotFound)?;
                user_json(s, &user, &public_url)
            })
            .await?;
            Ok(json_response(StatusCode::OK, &v))
        }
        (&Method::DELETE, ["users", name]) => {
            let name = name.to_string();
            let n = name.clone();
            run(&app, move |s| {
                if !s.delete_user(&n)? {
                    return Err(store::Error::NotFound.into());
                }
                s.audit("admin", "user.delete", &n, "")?;
                Ok(())
            })
            .await?;
            app.auth.forget(&name);
            Ok(json_response(StatusCode::OK, &json!({ "deleted": name })))
        }
        (&Method::POST, ["users", name, "credentials"]) => {
            let name = name.to_string();
            let n = name.clone();
            let password = run(&app, move |s| reset_password(s, &n, "admin")).await?;
            app.auth.forget(&name);
            Ok(json_response(StatusCode::OK, &json!({ "username": name, "password": password })))
        }
        (&Method::POST, ["users", name, action @ ("disable" | "enable")]) => {
            let name = name.to_string();
            let disable = *action == "disable";
            let n = name.clone();
            let v = run(&app, move |s| {
                let user = s.set_disabled(&n, disable)?;
                s.audit("admin", if disable { "user.disable" } else { "user.enable" }, &n, "")?;
                user_json(s, &user, &public_url)
            })
            .await?;
            app.auth.forget(&name);
            Ok(json_response(StatusCode::OK, &v))
        }
        (&Method::POST, ["users", name, "books"]) => {
            let name = name.to_string();
            let body: CreateBook = read_json(req).await?;
            let segment =
                body.book.clone().unwrap_or_else(|| format!("book-{}", &auth::generate_password()[..8].to_lowercase()));
            validate_segment(&segment)?;
            let seg = segment.clone();
            let n = name.clone();
            run(&app, move |s| {
                s.user(&n)?.ok_or(store::Error::NotFound)?;
                s.create_book(&n, &seg, body.display_name.as_deref(), body.description.as_deref(), &[], false)?;
                s.audit("admin", "book.create", &format!("{n}/{seg}"), "")?;
                Ok(())
            })
            .await?;
            Ok(json_response(
                StatusCode::CREATED,
                &json!({"owner": name, "book": segment, "url": format!("{public_url}{}", router::book_href(&name, &segment))}),
            ))
        }
        (&Method::DELETE, ["users", name, "books", book]) => {
            let (n, b) = (name.to_string(), book.to_string());
            run(&app, move |s| {
                let view = owned_book(s, &n, &b)?;
                s.delete_book(view.id)?;
                s.audit("admin", "book.delete", &format!("{n}/{b}"), "")?;
                Ok(())
            })
            .await?;
            Ok(json_response(StatusCode::OK, &json!({"deleted": format!("{name}/{book}")})))
        }
        (&Method::GET, ["users", name, "books", book, "shares"]) => {
            let (n, b) = (name.to_string(), book.to_string());
            let shares = run(&app, move |s| {
                let view = owned_book(s, &n, &b)?;
                Ok(s.shares(view.id)?)
            })
            .await?;
            let list: Vec<Value> = shares.iter().map(|sh| json!({"username": sh.username, "book": sh.segment, "access": if sh.writable {"read-write"} else {"read"}})).collect();
            Ok(json_response(StatusCode::OK, &json!({ "shares": list })))
        }
        (&Method::POST, ["users", name, "books", book, "shares"]) => {
            let body: CreateShare = read_json(req).await?;
            let writable = match body.access.as_deref() {
                None | Some("read") => false,
                Some("read-write") => true,
                Some(other) => {
                    return Err(api_error(
                        StatusCode::BAD_REQUEST,
                        format!("access: '{other}' must be \"read\" or \"read-write\""),
                    ));
                }
            };
            let (n, b, sharee) = (name.to_string(), book.to_string(), body.username.clone());
            let segment = run(&app, move |s| {
                let view = owned_book(s, &n, &b)?;
                s.user(&sharee)?
                    .ok_or_else(|| AccountError::new(StatusCode::NOT_FOUND, format!("username: no user '{sharee}'")))?;
                let seg = s.share_book(view.id, &sharee, writable).map_err(|e| match e {
                    store::Error::AlreadyExists => {
                        AccountError::new(StatusCode::CONFLICT, "a book cannot be shared with its owner")
                    }
                    other => other.into(),
                })?;
                s.audit("admin", "book.share", &format!("{n}/{b}"), &format!("with={sharee} writable={writable}"))?;
                Ok(seg)
            })
            .await?;
            Ok(json_response(
                StatusCode::CREATED,
                &json!({
                    "username": body.username,
                    "book": segment,
                    "access": if writable {"read-write"} else {"read"},
                    "url": format!("{public_url}{}", router::book_href(&body.username, &segment)),
                }),
            ))
        }
        (&Method::DELETE, ["users", name, "books", book, "shares", sharee]) => {
            let (n, b, who) = (name.to_string(), book.to_string(), sharee.to_string());
            run(&app, move |s| {
                let view = owned_book(s, &n, &b)?;
                if !s.unshare_book(view.id, &who)? {
                    return Err(AccountError::new(StatusCode::NOT_FOUND, "the book is not shared with this user"));
                }
                s.audit("admin", "book.unshare", &format!("{n}/{b}"), &format!("with={who}"))?;
                Ok(())
            })
            .await?;
            Ok(json_response(StatusCode::OK, &json!({"revoked": sharee})))
        }
        (&Method::GET, ["audit"]) => {
            let records = run(&app, |s| Ok(s.audit_records(1000)?)).await?;
            let list: Vec<Value> = records
                .iter()
                .map(|r| json!({"id": r.id, "at": r.at, "actor": r.actor, "action": r.action, "target": r.target, "detail": r.detail}))
                .collect();
            Ok(json_response(StatusCode::OK, &json!({ "records": list })))
        }
        // Integrations, subject access, erasure and retention live in `privacy`.
        _ => match crate::privacy::handle_admin(app.clone(), &method, s.as_slice(), req).await {
            Some(result) => result,
            None => Err(api_error(StatusCode::NOT_FOUND, "no such admin endpoint")),
        },
    }
}

fn owned_book(s: &dyn Store, owner: &str, segment: &str) -> Result<store::BookView, AccountError> {
    s.user(owner)?.ok_or_else(|| AccountError::new(StatusCode::NOT_FOUND, format!("no user '{owner}'")))?;
    match s.book_in_home(owner, segment)? {
        Some(b) if !b.shared => Ok(b),
        _ => Err(AccountError::new(StatusCode::NOT_FOUND, format!("user '{owner}' has no book '{segment}'"))),
    }
}

/// Self-service: `POST /account/v1/credentials` makes a new password for the authenticated user.
pub async fn handle_account(
    app: Arc<App>,
    user: AuthUser,
    segments: Vec<String>,
    req: Request<RequestBody>,
) -> DavResult<Response<Body>> {
    match (req.method(), segments.iter().map(String::as_str).collect::<Vec<_>>().as_slice()) {
        (&Method::POST, ["credentials"]) => {
            if user.scope.is_some() {
                return Err(DavError::no_privilege("a book-scoped login cannot change the account's password"));
            }
            let name = user.username.clone();
            let password = run(&app, move |s| reset_password(s, &name, &name)).await?;
            app.auth.forget(&user.username);
            Ok(json_response(StatusCode::OK, &json!({ "username": user.username, "password": password })))
        }
        (&Method::GET, []) => {
            let name = user.username.clone();
            let public_url = app.public_url.clone();
            let mut v = run(&app, move |s| {
                let u = s.user(&name)?.ok_or(store::Error::NotFound)?;
                user_json(s, &u, &public_url)
            })
            .await?;
            // A `user+book` login sees its one book here too, as over CardDAV and the contacts API.
            if let (Some(scope), Some(books)) = (&user.scope, v["books"].as_array_mut()) {
                books.retain(|b| b["book"].as_str() == Some(scope.as_str()));
            }
            Ok(json_response(StatusCode::OK, &v))
        }
        _ => Err(api_error(StatusCode::NOT_FOUND, "no such account endpoint")),
    }
}
