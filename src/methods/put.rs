//! PUT of a card (RFC 6352 §6.3.2): validated, stored byte-exact, ETag over the stored bytes.

use super::{card_precondition, empty_response};
use crate::app::{App, Ctx, Target};
use crate::body::Body;
use crate::body::RequestBody;
use crate::error::{Condition, DavError, DavResult};
use crate::router;
use crate::store::{self, Author, PutOutcome};
use crate::vcard::{self, Invalid};
use http_body_util::{BodyExt, Limited};
use hyper::{Response, StatusCode, header};

pub async fn handle(ctx: Ctx, target: Target, body: RequestBody) -> DavResult<Response<Body>> {
    let (book, name) = match target {
        Target::Card { book, name } => (book, name),
        Target::Book(_) | Target::Home { .. } | Target::Root => {
            return Err(DavError::method_not_allowed(super::ALLOW));
        }
        _ => return Err(DavError::not_found()),
    };
    App::require_writable(&book)?;
    let pre = card_precondition(&ctx, book.id, &name).await?;
    let limit = ctx.app.config.limits.max_resource_size;
    let too_large = || {
        DavError::new(StatusCode::FORBIDDEN, format!("the card exceeds the maximum resource size of {limit} bytes"))
            .with_condition(Condition::MaxResourceSize)
    };
    let declared = ctx
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(too_large());
    }
    let raw = match Limited::new(body, limit).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
        Err(e) => return Err(DavError::bad_request(format!("could not read the request body: {e}"))),
    };
    let valid = vcard::validate(&raw).map_err(|invalid| match invalid {
        Invalid::Unsupported(m) => {
            DavError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, m).with_condition(Condition::SupportedAddressData)
        }
        Invalid::Malformed(m) => DavError::bad_request(m).with_condition(Condition::ValidAddressData),
    })?;
    let id = book.id;
    let card_name = name.clone();
    let new_card = valid.new_card;
    let actor = ctx.user.username.clone();
    let via = format!("carddav: {}", ctx.user_agent().chars().take(200).collect::<String>());
    let result = store::blocking(ctx.store(), move |s| {
        s.put_card_by(id, &card_name, &new_card, &pre, &Author { actor: &actor, via: &via })
    })
    .await;
    let (status, etag) = match result {
        Ok(PutOutcome::Created { etag }) => (StatusCode::CREATED, etag),
        Ok(PutOutcome::Updated { etag }) => (StatusCode::NO_CONTENT, etag),
        Err(store::Error::UidConflict(existing)) => {
            let href = router::card_href(&ctx.user.username, &book.segment, &existing);
            return Err(DavError::new(
                StatusCode::CONFLICT,
                format!("another card in this book ({href}) has the same UID"),
            )
            .with_condition(Condition::NoUidConflict { existing_href: href }));
        }
        Err(e) => return Err(e.into()),
    };
    let mut response = empty_response(status);
    if let Ok(v) = format!("\"{etag}\"").parse() {
        // The stored bytes are exactly the bytes sent, so the client may keep this ETag.
        response.headers_mut().insert(header::ETAG, v);
    }
    Ok(response)
}
