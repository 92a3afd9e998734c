//! PROPPATCH (RFC 4918 §9.2) on address books: displayname, addressbook-description and dead properties,
//! applied all or nothing in one store transaction. On the address-book home only macOS's `CS:me-card` can be
//! set (see shared/clients/ios-macos.md): it is kept with the first book of the home as this login sees it -
//! the one book an Apple account syncs, which the me-card href points into.

use super::{check_collection, proppatch_answer, read_body};
use crate::app::{App, Ctx, Target};
use crate::body::RequestBody;
use crate::dav::request::{PatchOp, parse_proppatch};
use crate::dav::{NS_CALSERVER, NS_CARDDAV, NS_DAV, PropName};
use crate::error::{DavError, DavResult};
use crate::router;
use crate::store::{self, BookPatch, DeadProperty};
use hyper::Response;

/// Live properties a client may not set. Every DAV: and CARDDAV: property is defined by an RFC, and those
/// namespaces are not for dead properties (RFC 4918 §21.1), so of them only the two a book stores are
/// writable; a list of protected names would miss some (it missed supported-collation-set and
/// principal-collection-set, which were then stored as dead properties that PROPFIND never showed).
fn is_protected(name: &PropName) -> bool {
    (name.ns == NS_DAV && name.name != "displayname")
        || (name.ns == NS_CARDDAV && name.name != "addressbook-description")
        || name.is(NS_CALSERVER, "getctag")
}

/// The store patch for one instruction, or None when the property is protected.
pub fn to_patch(op: &PatchOp) -> Option<(PropName, BookPatch)> {
    let (name, patch) = match op {
        PatchOp::Set(e) => {
            let name = PropName::new(&e.ns, &e.name);
            let text = e.text.trim().to_string();
            let patch = if name.is(NS_DAV, "displayname") {
                BookPatch::DisplayName(Some(text))
            } else if name.is(NS_CARDDAV, "addressbook-description") {
                BookPatch::Description(Some(text))
            } else {
                BookPatch::SetDead(DeadProperty { namespace: e.ns.to_string(), name: e.name.clone(), xml: e.to_xml() })
            };
            (name, patch)
        }
        PatchOp::Remove(name) => {
            let patch = if name.is(NS_DAV, "displayname") {
                BookPatch::DisplayName(None)
            } else if name.is(NS_CARDDAV, "addressbook-description") {
                BookPatch::Description(None)
            } else {
                BookPatch::RemoveDead { namespace: name.ns.clone(), name: name.name.clone() }
            };
            (name.clone(), patch)
        }
    };
    if is_protected(&name) { None } else { Some((name, patch)) }
}

pub async fn handle(ctx: Ctx, target: Target, body: RequestBody) -> DavResult<Response<crate::body::Body>> {
    let raw = read_body(&ctx.headers, body, ctx.app.config.limits.max_xml_body).await?;
    let ops = parse_proppatch(&raw)?;
    let book = match target {
        Target::Book(book) => book,
        Target::Home { user } => return patch_home(ctx, user, ops).await,
        Target::MissingBook { .. } => return Err(DavError::not_found()),
        _ => return Err(DavError::forbidden("properties can be changed on address books only")),
    };
    App::require_writable(&book)?;
    check_collection(&ctx, true).await?;
    let mut patches = Vec::new();
    let mut names = Vec::new();
    let mut refused = Vec::new();
    for op in &ops {
        match to_patch(op) {
            Some((name, patch)) => {
                names.push(name);
                patches.push(patch);
            }
            None => refused.push(match op {
                PatchOp::Set(e) => PropName::new(&e.ns, &e.name),
                PatchOp::Remove(n) => n.clone(),
            }),
        }
    }
    // All or nothing: one protected property fails the whole request (424 for the rest).
    if refused.is_empty() {
        let id = book.id;
        store::blocking(ctx.store(), move |s| s.patch_book(id, &patches)).await?;
    }
    proppatch_answer(&ctx, router::book_href(&ctx.user.username, &book.segment), names, refused).await
}

/// macOS's "this is my card" (`PROPPATCH <home>` with `CS:me-card`); anything else on a home is refused
/// (403, the rest 424), all or nothing as on a book.
async fn patch_home(ctx: Ctx, user: String, ops: Vec<PatchOp>) -> DavResult<Response<crate::body::Body>> {
    check_collection(&ctx, true).await?;
    let is_me_card = |name: &PropName| name.is(NS_CALSERVER, "me-card");
    let mut patches = Vec::new();
    let mut names = Vec::new();
    let mut refused = Vec::new();
    for op in &ops {
        match op {
            PatchOp::Set(e) if is_me_card(&PropName::new(&e.ns, &e.name)) => {
                if e.child(NS_DAV, "href").is_none_or(|h| h.text.trim().is_empty()) {
                    return Err(DavError::bad_request("CS:me-card must contain a DAV:href"));
                }
                names.push(PropName::new(&e.ns, &e.name));
                patches.push(BookPatch::SetDead(DeadProperty {
                    namespace: e.ns.to_string(),
                    name: e.name.clone(),
                    xml: e.to_xml(),
                }));
            }
            PatchOp::Remove(name) if is_me_card(name) => {
                names.push(name.clone());
                patches.push(BookPatch::RemoveDead { namespace: name.ns.clone(), name: name.name.clone() });
            }
            PatchOp::Set(e) => refused.push(PropName::new(&e.ns, &e.name)),
            PatchOp::Remove(name) => refused.push(name.clone()),
        }
    }
    if refused.is_empty() {
        let (owner, scope) = (user.clone(), ctx.user.scope.clone());
        let books = store::blocking(ctx.store(), move |s| s.books_in_home(&owner)).await?;
        let Some(first) = books.into_iter().find(|b| scope.as_ref().is_none_or(|s| *s == b.segment)) else {
            return Err(DavError::forbidden("there is no address book in this home to keep the me-card with"));
        };
        if first.shared {
            // The owner's book must not carry a sharee's me-card.
            return Err(DavError::forbidden("a me-card can only be kept with one of your own address books"));
        }
        let id = first.id;
        store::blocking(ctx.store(), move |s| s.patch_book(id, &patches)).await?;
    }
    proppatch_answer(&ctx, router::home_href(&user), names, refused).await
}
