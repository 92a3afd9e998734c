//! COPY and MOVE of cards between the user's own (or writable shared) books (RFC 4918 §9.8, §9.9).

use super::{card_precondition, empty_response};
use crate::app::{App, Ctx, Target};
use crate::body::Body;
use crate::error::{Condition, DavError, DavResult};
use crate::router::{self, Route};
use crate::store::{self, Precondition, PutOutcome};
use crate::vcard;
use hyper::{Response, StatusCode, header};

pub async fn handle(ctx: Ctx, target: Target) -> DavResult<Response<Body>> {
    let Target::Card { book: from, name: from_name } = target else {
        return Err(DavError::forbidden("only cards can be copied or moved"));
    };
    let segments = ctx.destination()?;
    let location = ctx.headers.get("destination").cloned();
    let path = format!("/{}", segments.iter().map(|s| router::encode(s)).collect::<Vec<_>>().join("/"));
    let route = router::parse(&path)
        .map_err(|_| DavError::forbidden("the Destination must be a card inside an address book"))?;
    let Route::Card { .. } = route else {
        return Err(DavError::forbidden("the Destination must be a card inside an address book"));
    };
    let Target::Card { book: to, name: to_name } = ctx.app.resolve_for_create(&ctx.user, route).await? else {
        return Err(DavError::not_found());
    };
    App::require_writable(&to)?;
    if ctx.method == "MOVE" {
        App::require_writable(&from)?;
    }
    if from.id == to.id && from_name == to_name {
        return Err(DavError::forbidden("source and destination are the same"));
    }
    let overwrite =
        !ctx.headers.get("overwrite").and_then(|v| v.to_str().ok()).is_some_and(|v| v.trim().eq_ignore_ascii_case("F"));
    // If-Match / If-None-Match and the If header's untagged lists are about the request's resource, the
    // source (RFC 4918 §9.8, §10.4, RFC 9110 §13): a MOVE by a client that has not seen the card's latest
    // version must not carry it away.
    let source_pre = card_precondition(&ctx, from.id, &from_name).await?;
    let me = ctx.user.username.clone();
    let to_segment = to.segment.clone();
    let result = if ctx.method == "MOVE" {
        let (f, fname, t, tname) = (from.id, from_name.clone(), to.id, to_name.clone());
        store::blocking(ctx.store(), move |s| s.move_card(f, &fname, t, &tname, overwrite, &source_pre)).await
    } else {
        let (f, fname, t, tname) = (from.id, from_name.clone(), to.id, to_name.clone());
        store::blocking(ctx.store(), move |s| {
            let card = s.card(f, &fname)?;
            if !source_pre.holds_for(card.as_ref().map(|c| c.meta.etag.as_str())) {
                return Err(store::Error::PreconditionFailed);
            }
            let card = card.ok_or(store::Error::NotFound)?;
            let valid = vcard::validate(&card.vcard)
                .map_err(|_| store::Error::Internal("stored card no longer parses".into()))?;
            let pre = if overwrite { Precondition::None } else { Precondition::MustNotExist };
            s.put_card(t, &tname, &valid.new_card, &pre)
        })
        .await
    };
    match result {
        Ok(PutOutcome::Created { .. }) => Ok(empty_response(StatusCode::CREATED)),
        Ok(PutOutcome::Updated { .. }) => Ok(empty_response(StatusCode::NO_CONTENT)),
        Err(store::Error::UidConflict(existing)) => {
            let href = router::card_href(&me, &to_segment, &existing);
            Err(DavError::new(StatusCode::CONFLICT, "the destination book already has a card with this UID")
                .with_condition(Condition::NoUidConflict { existing_href: href }))
        }
        Err(e) => Err(e.into()),
    }
    .map(|mut r: Response<Body>| {
        if let Some(v) = location {
            r.headers_mut().insert(header::LOCATION, v);
        }
        r
    })
}
