//! One file per HTTP method. `dispatch` is the one `match` that picks the handler; the helpers here are
//! what several handlers share (body limits, If-Match parsing, the multistatus response).

pub mod conditional;
mod copymove;
mod delete;
mod get;
mod mkcol;
mod propfind;
mod proppatch;
mod put;
mod report;

use crate::app::{Ctx, DAV_CLASSES, Target};
use crate::body::RequestBody;
use crate::body::{self, Body, Coding};
use crate::dav::PropName;
use crate::dav::response::{Multistatus, XML_CONTENT_TYPE};
use crate::error::{DavError, DavResult};
use crate::store::{self as store, BookId, Precondition};
use bytes::Bytes;
use conditional::{Conditions, State};
use http_body_util::{BodyExt, Limited};
use hyper::{HeaderMap, Response, StatusCode, header};

pub const ALLOW: &str = "OPTIONS, GET, HEAD, PUT, DELETE, PROPFIND, PROPPATCH, REPORT, MKCOL, COPY, MOVE";

pub async fn dispatch(ctx: Ctx, target: Target, body: RequestBody) -> DavResult<Response<Body>> {
    match ctx.method.as_str() {
        "PROPFIND" => propfind::handle(ctx, target, body).await,
        "PROPPATCH" => proppatch::handle(ctx, target, body).await,
        "REPORT" => report::handle(ctx, target, body).await,
        "GET" | "HEAD" => get::handle(ctx, target).await,
        "PUT" => put::handle(ctx, target, body).await,
        "DELETE" => delete::handle(ctx, target).await,
        "MKCOL" => mkcol::handle(ctx, target, body).await,
        "COPY" | "MOVE" => copymove::handle(ctx, target).await,
        // LOCK/UNLOCK are class 2, which we do not advertise.
        _ => Err(DavError::method_not_allowed(ALLOW)),
    }
}

/// OPTIONS: 200 (not 204, Thunderbird), no body, our DAV classes.
pub fn options() -> Response<Body> {
    Response::builder()
        .status(StatusCode::OK)
        .header("DAV", DAV_CLASSES)
        .header(header::ALLOW, ALLOW)
        .header(header::CONTENT_LENGTH, "0")
        .body(body::empty())
        .unwrap_or_else(|_| Response::new(body::empty()))
}

/// Reads a request body of at most `limit` bytes: refused by Content-Length before reading, and cut off
/// while reading when a chunked body grows past it.
pub async fn read_body(headers: &HeaderMap, body: RequestBody, limit: usize) -> DavResult<Bytes> {
    let too_large = || DavError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("the request body exceeds {limit} bytes"));
    if let Some(len) =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok())
        && len > limit as u64
    {
        return Err(too_large());
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(e) => Err(DavError::bad_request(format!("could not read the request body: {e}"))),
    }
}

/// Strips quotes (and the `\"` escapes Evolution sometimes sends) from an entity tag; weak tags never match
/// a strong comparison, so they keep their `W/` and fail.
fn clean_etag(tag: &str) -> String {
    tag.trim().replace("\\\"", "\"").trim_matches('"').to_string()
}

/// If-Match / If-None-Match (RFC 9110 §13.1) as a store precondition.
pub fn precondition(headers: &HeaderMap) -> DavResult<Precondition> {
    Ok(Conditions::parse_etags(headers)?.precondition())
}

/// Checks the conditional headers of a write to a card and returns the precondition the store checks with
/// the write. The card is read first only when a condition needs more than the store's own check.
pub async fn card_precondition(ctx: &Ctx, book: BookId, name: &str) -> DavResult<Precondition> {
    let conditions = Conditions::parse(&ctx.headers)?;
    if !conditions.needs_state() {
        return Ok(conditions.precondition());
    }
    let n = name.to_string();
    let meta = store::point_read(ctx.store(), move |s| s.card_meta(book, &n)).await?;
    let current = meta.as_ref().map(|m| State { etag: Some(&m.etag), modified: Some(m.modified_at) });
    conditions.check(ctx, current).await?;
    Ok(Conditions::pin(current))
}

/// Checks the conditional headers of a PROPFIND or REPORT against its target (a card's state, or a
/// collection's, which has no entity tag). RFC 4918 §10.4 and RFC 9110 §13 apply to every method; outside
/// GET and HEAD a condition that fails is a 412, and If-Modified-Since is ignored. The caller has answered
/// a missing target with 404 before (RFC 9110 §13.2.1). `card` is the target card's state when the caller
/// has read it already; otherwise it is read, and only when a condition was sent.
pub async fn check_target(ctx: &Ctx, target: &Target, card: Option<&store::CardMeta>) -> DavResult<()> {
    let conditions = Conditions::parse(&ctx.headers)?;
    if conditions.is_empty() {
        return Ok(());
    }
    let read = match (target, card) {
        (Target::Card { book, name }, None) => {
            let (id, n) = (book.id, name.clone());
            store::point_read(ctx.store(), move |s| s.card_meta(id, &n)).await?
        }
        _ => None,
    };
    match card.or(read.as_ref()) {
        Some(meta) => {
            conditions.check(ctx, Some(State { etag: Some(&meta.etag), modified: Some(meta.modified_at) })).await
        }
        None => conditions.check(ctx, Some(State::default())).await,
    }
}

/// Checks the conditional headers of a request on a collection (which has no entity tag), or on nothing
/// when `exists` is false.
pub async fn check_collection(ctx: &Ctx, exists: bool) -> DavResult<()> {
    Conditions::parse(&ctx.headers)?.check(ctx, exists.then_some(State::default())).await
}

/// `application/xml`, `text/xml` or a `+xml` type, parameters ignored (RFC 7303).
pub fn is_xml_media_type(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    essence == "application/xml" || essence == "text/xml" || essence.ends_with("+xml")
}

pub fn multistatus_response(body: Body, coding: Coding) -> DavResult<Response<Body>> {
    let mut builder = Response::builder()
        .status(StatusCode::MULTI_STATUS)
        .header(header::CONTENT_TYPE, XML_CONTENT_TYPE)
        .header(header::VARY, "Accept-Encoding, Brief, Prefer");
    if let Some(encoding) = coding.header_value() {
        builder = builder.header(header::CONTENT_ENCODING, encoding);
    }
    builder.body(body).map_err(|e| DavError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// The 207 answer to a PROPPATCH of `href` (see `Multistatus::proppatch_response`).
pub async fn proppatch_answer(
    ctx: &Ctx,
    href: String,
    changed: Vec<PropName>,
    refused: Vec<PropName>,
) -> DavResult<Response<Body>> {
    let slot = ctx.app.streaming.slot(&ctx.user.username).await?;
    let body = body::stream_body(&ctx.app.streaming, slot, Coding::Identity, move |out| {
        let mut ms = Multistatus::begin(out)?;
        ms.proppatch_response(&href, &changed, &refused)?;
        ms.finish()?;
        Ok(())
    });
    multistatus_response(body, Coding::Identity)
}

/// Tells the client its `Prefer: return=minimal` was honoured (RFC 7240 §3).
pub fn preference_applied(mut response: Response<Body>, minimal: bool) -> Response<Body> {
    if minimal {
        response.headers_mut().insert("preference-applied", header::HeaderValue::from_static("return=minimal"));
    }
    response
}

/// `Brief: t` or `Prefer: return=minimal` (Apple, Evolution): leave out the 404 propstats.
pub fn wants_minimal(headers: &HeaderMap) -> bool {
    let brief = headers.get("brief").and_then(|v| v.to_str().ok()).is_some_and(|v| v.trim().eq_ignore_ascii_case("t"));
    let prefer = headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|p| p.trim().eq_ignore_ascii_case("return=minimal")));
    brief || prefer
}

/// 304 with the validators a 200 would carry (RFC 9110 §15.4.5): the ETag, else Last-Modified.
pub fn not_modified(etag: Option<&str>, last_modified: Option<i64>, vary: Option<&'static str>) -> Response<Body> {
    let mut builder = Response::builder().status(StatusCode::NOT_MODIFIED);
    if let Some(etag) = etag {
        builder = builder.header(header::ETAG, format!("\"{etag}\""));
    } else if let Some(m) = last_modified {
        builder = builder.header(header::LAST_MODIFIED, crate::dates::format_http_date(m));
    }
    if let Some(vary) = vary {
        builder = builder.header(header::VARY, vary);
    }
    builder.body(body::empty()).unwrap_or_else(|_| Response::new(body::empty()))
}

pub fn empty_response(status: StatusCode) -> Response<Body> {
    Response::builder().status(status).body(body::empty()).unwrap_or_else(|_| Response::new(body::empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etag_preconditions() {
        let mut h = HeaderMap::new();
        assert_eq!(precondition(&h).ok(), Some(Precondition::None));
        h.insert(header::IF_MATCH, "\"abc\", \\\"def\\\"".parse().expect("header"));
        assert_eq!(precondition(&h).ok(), Some(Precondition::EtagIn(vec!["abc".into(), "def".into()])));
        let mut h = HeaderMap::new();
        h.insert(header::IF_NONE_MATCH, "*".parse().expect("header"));
        assert_eq!(precondition(&h).ok(), Some(Precondition::MustNotExist));
        h.insert(header::IF_NONE_MATCH, "\"abc\", W/\"def\"".parse().expect("header"));
        assert_eq!(precondition(&h).ok(), Some(Precondition::EtagNotIn(vec!["abc".into(), "def".into()])));
    }
}
