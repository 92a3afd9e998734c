//! PROPPATCH (RFC 4918 §9.2) on address books: displayname, addressbook-description and dead properties,
//! applied all or nothing in one store transaction.

use super::{multistatus_response, read_body};
use crate::app::{App, Ctx, Target};
use crate::body::stream_body;
use crate::dav::request::{PatchOp, parse_proppatch};
use crate::dav::response::{Multistatus, Prop, Value};
use crate::dav::{NS_CALSERVER, NS_CARDDAV, NS_DAV, PropName};
use crate::error::{DavError, DavResult};
use crate::router;
use crate::store::{self, BookPatch, DeadProperty};
use hyper::Response;
use hyper::body::Incoming;

/// Live properties a client may not set.
fn is_protected(name: &PropName) -> bool {
    (name.ns == NS_DAV
        && matches!(
            name.name.as_str(),
            "resourcetype"
                | "getetag"
                | "getcontenttype"
                | "getcontentlength"
                | "getlastmodified"
                | "creationdate"
                | "sync-token"
                | "supported-report-set"
                | "current-user-privilege-set"
                | "owner"
                | "current-user-principal"
                | "quota-used-bytes"
                | "quota-available-bytes"
                | "lockdiscovery"
                | "supportedlock"
        ))
        || (name.ns == NS_CARDDAV
            && matches!(name.name.as_str(), "supported-address-data" | "max-resource-size" | "max-image-size"))
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
                BookPatch::SetDead(DeadProperty { namespace: e.ns.clone(), name: e.name.clone(), xml: e.to_xml() })
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

pub async fn handle(ctx: Ctx, target: Target, body: Incoming) -> DavResult<Response<crate::body::Body>> {
    let raw = read_body(&ctx.headers, body, ctx.app.config.limits.max_xml_body).await?;
    let ops = parse_proppatch(&raw)?;
    let book = match target {
        Target::Book(book) => book,
        Target::MissingBook { .. } => return Err(DavError::not_found()),
        _ => return Err(DavError::forbidden("properties can be changed on address books only")),
    };
    App::require_writable(&book)?;
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
    let (ok, others) = if refused.is_empty() {
        let id = book.id;
        store::blocking(ctx.store(), move |s| s.patch_book(id, &patches)).await?;
        (names, Vec::new())
    } else {
        (Vec::new(), vec![(403u16, refused), (424u16, names)])
    };
    let href = router::book_href(&ctx.user.username, &book.segment);
    let body = stream_body(false, move |out| {
        let mut ms = Multistatus::begin(out)?;
        let found: Vec<Prop> = ok.into_iter().map(|name| Prop { name, value: Value::Empty }).collect();
        ms.response(&href, &found, &others)?;
        ms.finish()?;
        Ok(())
    });
    multistatus_response(body, false)
}
