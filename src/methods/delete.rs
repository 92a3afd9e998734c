//! DELETE of a card (leaves a tombstone in the change log) or of an address book (a sharee's DELETE only
//! removes the share from their own home).

use super::{card_precondition, check_collection, empty_response};
use crate::app::{App, Ctx, Target};
use crate::body::Body;
use crate::error::{DavError, DavResult};
use crate::store;
use hyper::{Response, StatusCode};

pub async fn handle(ctx: Ctx, target: Target) -> DavResult<Response<Body>> {
    match target {
        Target::Card { book, name } => {
            App::require_writable(&book)?;
            let pre = card_precondition(&ctx, book.id, &name).await?;
            let id = book.id;
            store::blocking(ctx.store(), move |s| s.delete_card(id, &name, &pre)).await?;
            Ok(empty_response(StatusCode::NO_CONTENT))
        }
        Target::Book(book) => {
            if ctx.user.scope.is_some() {
                return Err(DavError::no_privilege("a login scoped to one book cannot delete books"));
            }
            // A book exists but has no entity tag: a tag in If-Match never holds (RFC 9110 §13.1.1).
            check_collection(&ctx, true).await?;
            let me = ctx.user.username.clone();
            if book.shared {
                store::blocking(ctx.store(), move |s| s.unshare_book(book.id, &me)).await?;
            } else {
                store::blocking(ctx.store(), move |s| s.delete_book(book.id)).await?;
            }
            Ok(empty_response(StatusCode::NO_CONTENT))
        }
        Target::MissingBook { .. } => Err(DavError::not_found()),
        _ => Err(DavError::forbidden("this resource cannot be deleted")),
    }
}
