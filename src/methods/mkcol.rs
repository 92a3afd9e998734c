//! MKCOL and extended MKCOL (RFC 5689): creates an address book in the user's own home.

use super::{check_collection, empty_response, read_body};
use crate::app::{Ctx, Target};
use crate::body::Body;
use crate::body::RequestBody;
use crate::dav::request::{PatchOp, parse_mkcol};
use crate::dav::response::mkcol_failure_body;
use crate::dav::{NS_CARDDAV, NS_DAV, PropName};
use crate::error::{Condition, DavError, DavResult};
use crate::store::{self, BookPatch, DeadProperty};
use hyper::{Response, StatusCode};

pub async fn handle(ctx: Ctx, target: Target, body: RequestBody) -> DavResult<Response<Body>> {
    let (user, segment) = match target {
        Target::MissingBook { user, segment } => (user, segment),
        // MKCOL only makes something where nothing is (RFC 4918 §9.3.1: 405 on an existing resource).
        Target::Book(_)
        | Target::Root
        | Target::PrincipalCollection
        | Target::Principal { .. }
        | Target::HomeCollection
        | Target::Home { .. } => {
            return Err(DavError::method_not_allowed(super::ALLOW).with_condition(Condition::ResourceMustBeNull));
        }
        Target::Card { book, name } => {
            let id = book.id;
            return Err(match store::point_read(ctx.store(), move |s| s.card_meta(id, &name)).await? {
                Some(_) => DavError::method_not_allowed(super::ALLOW).with_condition(Condition::ResourceMustBeNull),
                None => DavError::forbidden("address books can only be created inside your address-book home"),
            });
        }
    };
    if ctx.user.scope.is_some() {
        return Err(DavError::no_privilege("a login scoped to one book cannot create books"));
    }
    check_collection(&ctx, false).await?;
    let raw = read_body(&ctx.headers, body, ctx.app.config.limits.max_xml_body).await?;
    let mut display_name = None;
    let mut description = None;
    let mut dead = Vec::new();
    if !raw.iter().all(u8::is_ascii_whitespace) {
        // A body is an extended MKCOL (RFC 5689), which is XML; any other kind is not understood (RFC 4918
        // §9.3: 415).
        let content_type = ctx.headers.get(hyper::header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
        if content_type.is_some_and(|t| !super::is_xml_media_type(t)) {
            return Err(DavError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "a MKCOL body must be an XML mkcol request (RFC 5689)",
            ));
        }
        let mkcol = parse_mkcol(&raw)?;
        // Inside a home only address books may be made (RFC 5689 valid-resourcetype).
        let is_book = mkcol.resourcetypes.iter().any(|t| t.is(NS_CARDDAV, "addressbook"));
        let only_known =
            mkcol.resourcetypes.iter().all(|t| t.is(NS_CARDDAV, "addressbook") || t.is(NS_DAV, "collection"));
        let resourcetype = PropName::new(NS_DAV, "resourcetype");
        let (mut applied, mut protected) = (Vec::new(), Vec::new());
        if is_book && only_known {
            applied.push(resourcetype.clone());
        }
        for p in mkcol.props {
            let name = PropName::new(&p.ns, &p.name);
            match super::proppatch::to_patch(&PatchOp::Set(p)) {
                Some((_, BookPatch::DisplayName(v))) => display_name = v,
                Some((_, BookPatch::Description(v))) => description = v,
                Some((_, BookPatch::SetDead(d))) => dead.push(d),
                _ => {
                    protected.push(name);
                    continue;
                }
            }
            applied.push(name);
        }
        let mut refused = Vec::new();
        if !(is_book && only_known) {
            refused.push(("<d:valid-resourcetype/>", vec![resourcetype]));
        }
        if !protected.is_empty() {
            refused.push(("<d:cannot-modify-protected-property/>", protected));
        }
        if !refused.is_empty() {
            tracing::warn!(path = %ctx.path, "extended MKCOL refused: only address books with writable properties");
            return Response::builder()
                .status(StatusCode::FORBIDDEN)
                .header(hyper::header::CONTENT_TYPE, "application/xml; charset=utf-8")
                .body(crate::body::full(mkcol_failure_body(&refused, &applied)))
                .map_err(|e| DavError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()));
        }
    }
    // A plain MKCOL (no body) also makes an address book: a home holds nothing else.
    let dead: Vec<DeadProperty> = dead;
    let result = store::blocking(ctx.store(), move |s| {
        s.create_book(&user, &segment, display_name.as_deref(), description.as_deref(), &dead, false)
    })
    .await;
    match result {
        Ok(_) => Ok(empty_response(StatusCode::CREATED)),
        Err(store::Error::AlreadyExists) => {
            Err(DavError::method_not_allowed(super::ALLOW).with_condition(Condition::ResourceMustBeNull))
        }
        Err(e) => Err(e.into()),
    }
}
