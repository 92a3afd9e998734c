//! The request pipeline: route → authenticate → resolve the target (with the access check) → the method's
//! handler. Reading this file shows every entry point there is.

use crate::auth::{self, AuthState};
use crate::body::RequestBody;
use crate::body::{self, Body};
use crate::config::Config;
use crate::error::{DavError, DavResult};
use crate::router::{self, Route, RouteError};
use crate::store::{self, BookView, SharedStore};
use crate::{admin, methods};
use hyper::{HeaderMap, Request, Response, StatusCode, header};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const DAV_CLASSES: &str = "1, 3, access-control, addressbook, extended-mkcol";

pub struct App {
    pub config: Config,
    pub store: SharedStore,
    pub auth: AuthState,
    /// The base URL clients reach us at (no trailing slash), for absolute URLs in API answers.
    pub public_url: String,
    /// Argon2 hash that unknown logins are verified against, so timing does not tell which logins exist.
    dummy_hash: String,
    /// Argon2 verifications, one thread per core (see `auth::Verifier`).
    verifier: auth::Verifier,
    /// How streamed answers wait for slow clients (see `body::Streaming`).
    pub streaming: body::Streaming,
}

/// The authenticated person making a request.
#[derive(Debug, Clone)]
pub struct AuthUser {
    pub username: String,
    pub display_name: String,
    /// Set for a `user+book` login: this connection sees only that one book (for macOS, which syncs one).
    pub scope: Option<String>,
}

/// What a DAV path resolved to, after the access check.
pub enum Target {
    Root,
    PrincipalCollection,
    Principal {
        user: String,
        display_name: String,
    },
    HomeCollection,
    Home {
        user: String,
    },
    Book(BookView),
    /// A book path in the user's own home where no book exists (MKCOL creates it).
    MissingBook {
        user: String,
        segment: String,
    },
    Card {
        book: BookView,
        name: String,
    },
}

/// Everything a method handler gets.
pub struct Ctx {
    pub app: Arc<App>,
    pub user: AuthUser,
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    /// The host (and port) the request was sent to: HTTP/2's `:authority`, else the Host header.
    pub authority: Option<String>,
}

impl Ctx {
    /// The path segments of the Destination header (COPY, MOVE). An absolute URL must name this server, as
    /// the request did or as the configured public URL does: kartei cannot copy to another server, which
    /// RFC 4918 §9.8.5 answers with 502 Bad Gateway.
    pub fn destination(&self) -> DavResult<Vec<String>> {
        let destination = self
            .headers
            .get("destination")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| DavError::bad_request("COPY and MOVE need a Destination header"))?;
        let segments = router::href_segments(destination)
            .ok_or_else(|| DavError::bad_request("the Destination is not a valid URL"))?;
        if !self.is_this_server(destination) {
            tracing::info!(%destination, "COPY/MOVE to another server refused");
            return Err(DavError::new(StatusCode::BAD_GATEWAY, "the Destination is on another server"));
        }
        Ok(segments)
    }

    /// Whether an href names this server: a path does, an absolute URL when it names the host the request
    /// was sent to or the configured public URL's.
    pub fn is_this_server(&self, href: &str) -> bool {
        let Some(theirs) = router::href_authority(href) else { return true };
        let public = router::href_authority(&self.app.public_url);
        [self.authority.as_deref(), public].into_iter().flatten().any(|o| router::same_authority(o, theirs))
    }

    pub fn store(&self) -> &SharedStore {
        &self.app.store
    }

    pub fn user_agent(&self) -> &str {
        self.headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or("")
    }

    /// Apple's Contacts (macOS) and iOS read only vCard 3.0 (see shared/clients/ios-macos.md).
    pub fn is_apple(&self) -> bool {
        let ua = self.user_agent();
        ["iOS/", "macOS/", "Mac OS X/", "Mac_OS_X/", "dataaccessd", "AddressBook/", "CFNetwork/"]
            .iter()
            .any(|m| ua.contains(m))
    }
}

impl App {
    pub fn new(config: Config, store: SharedStore, bound: Option<SocketAddr>) -> Self {
        let auth = AuthState::new(
            Duration::from_secs(config.auth.cache_secs),
            config.auth.throttle_failures,
            Duration::from_secs(config.auth.throttle_window_secs),
        );
        let dummy_hash = auth::hash_password(&auth::generate_password()).unwrap_or_default();
        let public_url = config.public_url(bound);
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        let streaming = body::Streaming::new(Duration::from_secs(config.limits.idle_timeout_secs.max(1)));
        App { config, store, auth, public_url, dummy_hash, verifier: auth::Verifier::new(cores), streaming }
    }

    pub async fn handle(self: Arc<Self>, req: Request<RequestBody>, peer: SocketAddr) -> Response<Body> {
        let method = req.method().as_str().to_string();
        let path = req.uri().path().to_string();
        let started = Instant::now();
        let tls = self.config.tls.mode != crate::config::TlsMode::Off;
        let peer = self.client_address(req.headers(), peer);
        let mut response = match self.dispatch(req, peer).await {
            Ok(r) => r,
            // The JSON APIs answer errors in JSON too, also those raised before their handlers (a path that
            // does not decode, a failed login, a refused admin request).
            Err(e) if is_json_api(&path) => crate::api::error_json(e, &method, &path),
            Err(e) => e.into_response(&method, &path),
        };
        let headers = response.headers_mut();
        // Every answer is what its Content-Type says: no browser guesses HTML into a vCard or a document.
        headers.insert("x-content-type-options", header::HeaderValue::from_static("nosniff"));
        if tls {
            // Browsers ignore it on a certificate they had to be told to trust, so a self-signed start is
            // not locked out; with a real certificate, no later visit falls back to plain HTTP.
            headers.insert(header::STRICT_TRANSPORT_SECURITY, header::HeaderValue::from_static("max-age=31536000"));
        }
        let encoding =
            response.headers().get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok()).unwrap_or("identity");
        tracing::debug!(%method, %path, status = response.status().as_u16(), %encoding, micros = started.elapsed().as_micros() as u64, "request");
        response
    }

    /// Who sent the request: the TCP peer, or behind a trusted proxy the address that proxy saw. The entries
    /// of `X-Forwarded-For` are read from the right (each proxy appends the address it got the request from);
    /// the first that is not a trusted proxy is the client, and what lies left of it the client could forge.
    fn client_address(&self, headers: &HeaderMap, peer: SocketAddr) -> SocketAddr {
        // An IPv4 proxy reaches a dual-stack listener as `::ffff:a.b.c.d`.
        let trusted = |ip: &std::net::IpAddr| {
            self.config.server.trusted_proxies.iter().any(|t| t.to_canonical() == ip.to_canonical())
        };
        if !trusted(&peer.ip()) {
            return peer;
        }
        // Entry by entry as bytes: a byte the client put in its own part of the line must not hide the part
        // the proxy appended.
        let lines: Vec<&[u8]> = headers.get_all("x-forwarded-for").iter().map(|v| v.as_bytes()).collect();
        let client = lines
            .iter()
            .rev()
            .flat_map(|line| line.rsplit(|&b| b == b','))
            .map_while(|entry| std::str::from_utf8(entry).ok()?.trim().parse::<std::net::IpAddr>().ok())
            .map(|ip| ip.to_canonical())
            .find(|ip| !trusted(ip));
        client.map_or(peer, |ip| SocketAddr::new(ip, 0))
    }

    async fn dispatch(self: Arc<Self>, req: Request<RequestBody>, peer: SocketAddr) -> DavResult<Response<Body>> {
        let route = match router::parse(req.uri().path()) {
            Ok(r) => r,
            Err(RouteError::BadPath(why)) => return Err(DavError::bad_request(why)),
            Err(RouteError::NotFound) => return Err(DavError::not_found()),
        };
        match route {
            // RFC 6764 §5: a permanent redirect to the context path, whatever the method and credentials.
            Route::WellKnown => Ok(Response::builder()
                .status(StatusCode::MOVED_PERMANENTLY)
                .header(header::LOCATION, router::DAV_ROOT)
                .body(body::empty())
                .map_err(|e| DavError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?),
            Route::Admin(segments) => admin::handle_admin(self, segments, req).await,
            // Outside systems ingest with an integration's bearer token, not a person's password.
            Route::Api(segments) if crate::ingest::is_ingest_path(&segments) => {
                let (method, path) = (req.method().to_string(), req.uri().path().to_string());
                Ok(match crate::ingest::handle(self, &segments, req).await {
                    Ok(r) => r,
                    Err(e) => crate::api::error_json(e, &method, &path),
                })
            }
            Route::Api(segments) => {
                let user = self.authenticate(req.headers(), peer).await?;
                Ok(crate::api::handle(self, user, segments, req).await)
            }
            Route::Account(segments) => {
                let user = self.authenticate(req.headers(), peer).await?;
                admin::handle_account(self, user, segments, req).await
            }
            Route::Files { user, path } => {
                if req.method() == hyper::Method::OPTIONS {
                    return Ok(crate::files::options());
                }
                let me = self.authenticate(req.headers(), peer).await?;
                let (parts, incoming) = req.into_parts();
                let ctx = Ctx {
                    app: self.clone(),
                    user: me,
                    method: parts.method.as_str().to_string(),
                    path: parts.uri.path().to_string(),
                    authority: request_authority(&parts),
                    headers: parts.headers,
                };
                crate::files::handle(ctx, user, path, incoming).await
            }
            dav_route => {
                if req.method() == hyper::Method::OPTIONS {
                    return Ok(methods::options());
                }
                let user = self.authenticate(req.headers(), peer).await?;
                let target = if matches!(req.method().as_str(), "PUT" | "MKCOL") {
                    self.resolve_for_create(&user, dav_route).await?
                } else {
                    self.resolve(&user, dav_route).await?
                };
                let (parts, incoming) = req.into_parts();
                let ctx = Ctx {
                    app: self.clone(),
                    user,
                    method: parts.method.as_str().to_string(),
                    path: parts.uri.path().to_string(),
                    authority: request_authority(&parts),
                    headers: parts.headers,
                };
                methods::dispatch(ctx, target, incoming).await
            }
        }
    }

    fn challenge(&self, message: &'static str) -> DavError {
        DavError::new(StatusCode::UNAUTHORIZED, message)
            .with_header(header::WWW_AUTHENTICATE, "Basic realm=\"kartei\", charset=\"UTF-8\"")
    }

    /// HTTP Basic on every request, with the verification cache and failure throttling (per address, and
    /// per login from that address; see `auth::pair_key`). Credentials verified recently pass even while
    /// their address is throttled (a guess is never cached), so a person's synced devices, also behind the
    /// same address as an attacker, keep working.
    pub async fn authenticate(&self, headers: &HeaderMap, peer: SocketAddr) -> DavResult<AuthUser> {
        let ip_key = auth::ip_key(peer.ip());
        let Some((login, password)) =
            headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(auth::parse_basic)
        else {
            return Err(self.challenge("authentication required"));
        };
        let (username, scope) = split_scoped_login(&login);
        let lookup = username.clone();
        let user = store::point_read(&self.store, move |s| s.user(&lookup)).await?;
        let pair_key = auth::pair_key(&username, peer.ip());
        // Only logins that exist are named in the log: a password typed into the user-name field must not
        // end up there.
        let logged_login = if user.is_some() { username.as_str() } else { "(unknown login)" };
        if let Some(u) = &user
            && !u.disabled
            && self.auth.cached(&u.username, &password, u.credential_generation)
        {
            return self.authorize_scope(u, scope).await;
        }
        let attempt = match self.auth.begin_attempt([ip_key, pair_key]).await {
            Ok(attempt) => attempt,
            Err(wait) => {
                tracing::warn!(login = %logged_login, client = %peer.ip(), "login attempt throttled after repeated failures");
                return Err(too_many(wait));
            }
        };
        let hash = user
            .as_ref()
            .filter(|u| !u.disabled)
            .map(|u| u.password_hash.clone())
            .unwrap_or_else(|| self.dummy_hash.clone());
        let verified = self.verifier.verify(password.clone(), hash).await;
        match user {
            Some(u) if verified && !u.disabled => {
                self.auth.remember(&u.username, &password, u.credential_generation);
                drop(attempt);
                self.authorize_scope(&u, scope).await
            }
            _ => {
                attempt.failed();
                tracing::warn!(login = %logged_login, client = %peer.ip(), "authentication failed");
                Err(self.challenge("wrong user name or password"))
            }
        }
    }

    async fn authorize_scope(&self, user: &store::User, scope: Option<String>) -> DavResult<AuthUser> {
        if let Some(segment) = &scope {
            let (name, seg) = (user.username.clone(), segment.clone());
            let book = store::point_read(&self.store, move |s| s.book_in_home(&name, &seg)).await?;
            if book.is_none() {
                return Err(self.challenge("wrong user name or password"));
            }
        }
        Ok(AuthUser { username: user.username.clone(), display_name: user.display_name.clone(), scope })
    }

    /// Maps a DAV route to what it names for this user; foreign homes and books are 404 (their existence is
    /// not revealed), foreign principals 403.
    pub async fn resolve(&self, me: &AuthUser, route: Route) -> DavResult<Target> {
        let mine = |user: &str| user == me.username;
        match route {
            Route::Root => Ok(Target::Root),
            Route::PrincipalCollection => Ok(Target::PrincipalCollection),
            Route::HomeCollection => Ok(Target::HomeCollection),
            Route::Principal { user } if mine(&user) => {
                Ok(Target::Principal { user, display_name: me.display_name.clone() })
            }
            Route::Principal { .. } => Err(DavError::no_privilege("this is another user's principal")),
            Route::Home { user } if mine(&user) => Ok(Target::Home { user }),
            Route::AddressBook { user, book } if mine(&user) => {
                if me.scope.as_ref().is_some_and(|s| *s != book) {
                    return Err(DavError::not_found());
                }
                let (name, seg) = (user.clone(), book.clone());
                match store::point_read(&self.store, move |s| s.book_in_home(&name, &seg)).await? {
                    Some(view) => Ok(Target::Book(view)),
                    None => Ok(Target::MissingBook { user, segment: book }),
                }
            }
            Route::Card { user, book, name } if mine(&user) => {
                if me.scope.as_ref().is_some_and(|s| *s != book) {
                    return Err(DavError::not_found());
                }
                let (u, seg) = (user.clone(), book.clone());
                match store::point_read(&self.store, move |s| s.book_in_home(&u, &seg)).await? {
                    Some(view) => Ok(Target::Card { book: view, name }),
                    None => Err(DavError::not_found()),
                }
            }
            Route::Home { .. } | Route::AddressBook { .. } | Route::Card { .. } => Err(DavError::not_found()),
            Route::WellKnown | Route::Admin(_) | Route::Account(_) | Route::Api(_) | Route::Files { .. } => {
                Err(DavError::not_found())
            }
        }
    }

    /// `resolve` for a request that creates what the route names (PUT, MKCOL, a COPY/MOVE destination): a
    /// member of one of the user's own books that does not exist is 409 Conflict, not 404 (RFC 4918 §9.7.1,
    /// §9.3.1, §9.8.5). Other users' paths stay 404, as `resolve` answers them.
    pub async fn resolve_for_create(&self, me: &AuthUser, route: Route) -> DavResult<Target> {
        let own_member = matches!(&route, Route::Card { user, book, .. }
            if *user == me.username && me.scope.as_ref().is_none_or(|s| s == book));
        match self.resolve(me, route).await {
            Err(e) if own_member && e.status == StatusCode::NOT_FOUND => {
                Err(DavError::new(StatusCode::CONFLICT, "the address book does not exist (MKCOL creates it)"))
            }
            other => other,
        }
    }

    /// Refuses writes to a book shared read-only with this user.
    pub fn require_writable(book: &BookView) -> DavResult<()> {
        if book.writable {
            Ok(())
        } else {
            Err(DavError::no_privilege("this address book is shared with you read-only"))
        }
    }
}

fn is_json_api(path: &str) -> bool {
    ["/api/", "/admin/", "/account/"].iter().any(|prefix| path.starts_with(prefix))
}

fn too_many(wait: u64) -> DavError {
    DavError::new(StatusCode::TOO_MANY_REQUESTS, "too many failed logins; try again later")
        .with_header(header::RETRY_AFTER, wait.to_string())
}

/// `alice+work@example.org` (or `alice+work`) logs in as `alice@example.org` scoped to the book `work`;
/// usernames never contain `+` (user creation refuses it), so the first `+` ends the user name (a book made by
/// MKCOL may have `+` in its name).
pub fn split_scoped_login(login: &str) -> (String, Option<String>) {
    let (local, domain) = match login.rsplit_once('@') {
        Some((l, d)) => (l, Some(d)),
        None => (login, None),
    };
    match local.split_once('+') {
        Some((user, book)) if !user.is_empty() && !book.is_empty() => {
            let username = match domain {
                Some(d) => format!("{user}@{d}"),
                None => user.to_string(),
            };
            (username, Some(book.to_string()))
        }
        _ => (login.to_string(), None),
    }
}

/// HTTP/2's `:authority`, else the Host header (HTTP/1.1).
fn request_authority(parts: &hyper::http::request::Parts) -> Option<String> {
    parts
        .uri
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| parts.headers.get(header::HOST).and_then(|v| v.to_str().ok()).map(str::to_string))
}
