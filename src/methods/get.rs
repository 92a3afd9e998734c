//! GET and HEAD: a card (stored bytes, or converted when the client asks for the other vCard version), or a
//! whole address book as one text/vcard stream (a browser download works).

use super::conditional::{Conditions, State, Verdict};
use super::not_modified;
use crate::app::{Ctx, Target};
use crate::body::{self, Body, stream_body};
use crate::error::{DavError, DavResult};
use crate::store::{self, BodyRead};
use crate::vcard::{self, Version};
use hyper::{Response, StatusCode, header};

/// A card's representation depends on these (see `wanted_version`).
const VARY: &str = "Accept, User-Agent";

/// `Accept: text/vcard; version=4.0` picks a version; Apple clients get 3.0 (they read nothing else).
fn wanted_version(ctx: &Ctx) -> Option<Version> {
    let accept = ctx.headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    let asked = accept.split(',').find_map(|media| {
        let mut parts = media.split(';');
        let kind = parts.next().unwrap_or("").trim();
        if !kind.eq_ignore_ascii_case("text/vcard") {
            return None;
        }
        parts.find_map(|p| p.trim().strip_prefix("version=").and_then(|v| Version::parse(v.trim_matches('"'))))
    });
    asked.or(if ctx.is_apple() { Some(Version::V3) } else { None })
}

pub async fn handle(ctx: Ctx, target: Target) -> DavResult<Response<Body>> {
    let head = ctx.method == "HEAD";
    match target {
        Target::Card { book, name } => {
            let id = book.id;
            let card =
                store::point_read(ctx.store(), move |s| s.card(id, &name)).await?.ok_or_else(DavError::not_found)?;
            let (bytes, converted) = vcard::render(&card.vcard, &card.meta.version, wanted_version(&ctx), None);
            // A converted card is another representation: the stored ETag does not describe these bytes.
            let etag = (!converted).then_some(card.meta.etag.as_str());
            let current = State { etag, modified: Some(card.meta.modified_at) };
            if Conditions::parse(&ctx.headers)?.check_read(&ctx, Some(current)).await? == Verdict::NotModified {
                return Ok(not_modified(etag, Some(card.meta.modified_at), Some(VARY)));
            }
            let version = if converted {
                wanted_version(&ctx).map(Version::as_str).unwrap_or("4.0")
            } else {
                card.meta.version.as_str()
            };
            let mut builder = Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, format!("text/vcard; charset=utf-8; version={version}"))
                .header(header::CONTENT_LENGTH, bytes.len())
                .header(header::LAST_MODIFIED, crate::dates::format_http_date(card.meta.modified_at))
                .header(header::VARY, VARY);
            if let Some(etag) = etag {
                builder = builder.header(header::ETAG, format!("\"{etag}\""));
            }
            let body = if head { body::empty() } else { body::full(bytes.into_owned()) };
            builder.body(body).map_err(|e| DavError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
        }
        Target::Book(book) => {
            // A book has neither an ETag nor a modification date; only `*` can match it.
            if Conditions::parse(&ctx.headers)?.check_read(&ctx, Some(State::default())).await? == Verdict::NotModified
            {
                return Ok(not_modified(None, None, None));
            }
            let store = ctx.store().clone();
            let want = wanted_version(&ctx);
            let disposition = attachment(&format!("{}.vcf", book.segment));
            let body = if head {
                body::empty()
            } else {
                let slot = ctx.app.streaming.slot(&ctx.user.username).await?;
                stream_body(&ctx.app.streaming, slot, body::Coding::Identity, move |out| {
                    let mut failure = None;
                    store
                        .for_each_card(book.id, BodyRead::Text, &mut |meta, body| {
                            let Some(bytes) = body.text() else { return true };
                            let (bytes, _) = vcard::render(bytes, &meta.version, want, None);
                            let mut result = out.write_all(&bytes);
                            if result.is_ok() && !bytes.ends_with(b"\n") {
                                result = out.write_all(b"\r\n");
                            }
                            match result {
                                Ok(()) => true,
                                Err(e) => {
                                    failure = Some(e);
                                    false
                                }
                            }
                        })
                        .map_err(|e| std::io::Error::other(e.to_string()))?;
                    failure.map_or(Ok(()), Err)
                })
            };
            Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "text/vcard; charset=utf-8")
                .header(header::CONTENT_DISPOSITION, disposition)
                .body(body)
                .map_err(|e| DavError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
        }
        Target::MissingBook { .. } => Err(DavError::not_found()),
        _ => Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(if head {
                body::empty()
            } else {
                body::full("kartei CardDAV server: point a CardDAV client at this URL.\n")
            })
            .map_err(|e| DavError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
}

/// `Content-Disposition: attachment` for any file name (RFC 6266): an ASCII stand-in for old clients, and
/// the exact name, percent-encoded UTF-8, in `filename*`. Always a valid header value.
fn attachment(name: &str) -> String {
    let plain: String =
        name.chars().map(|c| if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' { c } else { '_' }).collect();
    let exact = percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC);
    format!("attachment; filename=\"{plain}\"; filename*=UTF-8''{exact}")
}
