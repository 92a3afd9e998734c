//! DELETE of a card (leaves a tombstone in the change log) or of an address book (a sharee's DELETE only
//! removes the share from their own home).

use super::{empty_response, precondition};
use crate::app::{App, Ctx, Target};
use crate::body::Body;
use crate::error::{DavError, DavResult};
use crate::store::{self, Precondition};
use hyper::{Response, StatusCode};

pub async fn handle(ctx: Ctx, target: Target) -> DavResult<Response<Body>> {
    match target {
        Target::Card { book, name } => {
            App::require_writable(&book)?;
            let pre = precondition(&ctx.headers)?;
            let id = book.id;
            store::blocking(ctx.store(), move |s| s.delete_card(id, &name, &pre)).await?;
            Ok(empty_response(StatusCode::NO_CONTENT))
        }
        Target::Book(book) => {
            if ctx.user.scope.is_some() {
                return Err(DavError::forbidden("a login scoped to one book cannot delete books"));
            }
            // A book exists but has no entity tag: only `If-Match: *` can hold (RFC 9110 §13.1.1, §13.1.2).
            if !matches!(precondition(&ctx.headers)?, Precondition::None | Precondition::MustExist) {
                return Err(DavError::new(StatusCode::PRECONDITION_FAILED, "an address book has no entity tag"));
            }
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
