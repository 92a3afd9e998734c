//! PROPFIND (RFC 4918 §9.1) on every resource kind; a book's Depth 1 listing is streamed from the store
//! without reading card bodies unless address-data is asked for.

use super::{check_target, multistatus_response, preference_applied, read_body, wants_minimal};
use crate::app::{Ctx, Target};
use crate::body::RequestBody;
use crate::body::{AnswerSink, Coding, stream_body};
use crate::dav::request::{PropFind, parse_propfind};
use crate::dav::response::Multistatus;
use crate::dav::{Depth, NS_CALSERVER, NS_DAV};
use crate::error::{Condition, DavError, DavResult};
use crate::props::{PropContext, Resource, wants_body};
use crate::router;
use crate::store::{self, BodyRead, CardBody, Store};
use hyper::{Response, StatusCode};
use std::io;

pub async fn handle(ctx: Ctx, target: Target, body: RequestBody) -> DavResult<Response<crate::body::Body>> {
    let depth_header = match ctx.headers.get("depth").map(|v| v.to_str()) {
        Some(Err(_)) => return Err(DavError::bad_request("Depth must be 0, 1 or infinity")),
        Some(Ok(v)) => Some(v),
        None => None,
    };
    // A missing Depth means infinity (RFC 4918); no client relies on that, so it is served as 1.
    let depth = Depth::parse(depth_header, Depth::One)
        .ok_or_else(|| DavError::bad_request("Depth must be 0, 1 or infinity"))?;
    if depth == Depth::Infinity {
        return Err(DavError::new(StatusCode::FORBIDDEN, "Depth: infinity is not supported on PROPFIND")
            .with_condition(Condition::PropfindFiniteDepth));
    }
    let raw = read_body(&ctx.headers, body, ctx.app.config.limits.max_xml_body).await?;
    let request = parse_propfind(&raw)?;
    if let Target::MissingBook { .. } = target {
        return Err(DavError::not_found());
    }
    let card = match &target {
        Target::Card { book, name } => {
            let (id, n) = (book.id, name.clone());
            Some(store::point_read(ctx.store(), move |s| s.card_meta(id, &n)).await?.ok_or_else(DavError::not_found)?)
        }
        _ => None,
    };
    check_target(&ctx, &target, card.as_ref()).await?;
    let minimal = wants_minimal(&ctx.headers);
    let coding = Coding::negotiate(&ctx.headers);
    let store = ctx.store().clone();
    let me = ctx.user.clone();
    let max_resource_size = ctx.app.config.limits.max_resource_size;
    let prefer_v3 = ctx.is_apple();
    let request_path = ctx.path.clone();
    let slot = ctx.app.streaming.slot(&ctx.user.username).await?;
    let body = stream_body(&ctx.app.streaming, slot, coding, move |out| {
        let pctx = PropContext { me: &me.username, max_resource_size, prefer_v3, scoped: me.scope.is_some() };
        let mut ms = Multistatus::begin(out)?;
        let listing =
            Listing { store: store.as_ref(), pctx: &pctx, request: &request, minimal, scope: me.scope.as_deref() };
        listing.write(&mut ms, &target, depth == Depth::One, &request_path)?;
        ms.finish()?;
        Ok(())
    });
    Ok(preference_applied(multistatus_response(body, coding)?, minimal))
}

fn store_err(e: store::Error) -> io::Error {
    io::Error::other(e.to_string())
}

struct Listing<'a> {
    store: &'a dyn Store,
    pctx: &'a PropContext<'a>,
    request: &'a PropFind,
    minimal: bool,
    scope: Option<&'a str>,
}

fn asks_for(request: &PropFind, name: &str) -> bool {
    match request {
        PropFind::Prop(props) => props.iter().any(|p| p.name.is(NS_DAV, name)),
        PropFind::AllProp { .. } => true,
        PropFind::PropName => false,
    }
}

impl Listing<'_> {
    fn respond<W: AnswerSink>(&self, ms: &mut Multistatus<W>, href: &str, resource: &Resource) -> io::Result<()> {
        let (found, missing) = resource.answer(self.pctx, self.request);
        let others = [(404, missing)];
        ms.response(href, &found, if self.minimal { &[] } else { &others })
    }

    fn write<W: AnswerSink>(
        &self,
        ms: &mut Multistatus<W>,
        target: &Target,
        depth_one: bool,
        request_path: &str,
    ) -> io::Result<()> {
        let me = self.pctx.me;
        match target {
            Target::Root => {
                let href =
                    if request_path.ends_with('/') { request_path.to_string() } else { format!("{request_path}/") };
                self.respond(ms, &href, &Resource::Root)?;
                if depth_one {
                    self.respond(ms, "/dav/principals/", &Resource::PrincipalCollection)?;
                    self.respond(ms, "/dav/addressbooks/", &Resource::HomeCollection)?;
                }
            }
            Target::PrincipalCollection => {
                self.respond(ms, "/dav/principals/", &Resource::PrincipalCollection)?;
                if depth_one {
                    let user = self.store.user(me).map_err(store_err)?;
                    let display_name = user.as_ref().map_or(me, |u| u.display_name.as_str());
                    self.respond(ms, &router::principal_href(me), &Resource::Principal { user: me, display_name })?;
                }
            }
            Target::HomeCollection => {
                self.respond(ms, "/dav/addressbooks/", &Resource::HomeCollection)?;
                if depth_one {
                    self.respond(ms, &router::home_href(me), &Resource::Home { user: me, me_card: None })?;
                }
            }
            Target::Principal { user, display_name } => {
                self.respond(ms, &router::principal_href(user), &Resource::Principal { user, display_name })?;
            }
            Target::Home { user } => {
                let books = self.store.books_in_home(user).map_err(store_err)?;
                let visible: Vec<&store::BookView> =
                    books.iter().filter(|b| self.scope.is_none_or(|s| s == b.segment)).collect();
                // macOS reads its "this is my card" on the home; PROPPATCH keeps it with the first own book.
                let me_card = match visible.iter().find(|b| !b.shared) {
                    Some(first) => self
                        .store
                        .dead_properties(first.id)
                        .map_err(store_err)?
                        .into_iter()
                        .find(|d| d.namespace == NS_CALSERVER && d.name == "me-card")
                        .map(|d| d.xml),
                    None => None,
                };
                self.respond(ms, &router::home_href(user), &Resource::Home { user, me_card: me_card.as_deref() })?;
                if depth_one {
                    for book in visible {
                        self.book(ms, book)?;
                    }
                }
            }
            Target::Book(book) => {
                self.book(ms, book)?;
                if depth_one {
                    let body = if wants_body(self.request) { BodyRead::Text } else { BodyRead::None };
                    let mut failure = None;
                    let book_href = router::book_href(me, &book.segment);
                    self.store
                        .for_each_card(book.id, body, &mut |meta, body| {
                            let href = router::member_href(&book_href, &meta.name);
                            match self.respond(ms, &href, &Resource::Card { book, meta, body }) {
                                Ok(()) => true,
                                Err(e) => {
                                    failure = Some(e);
                                    false
                                }
                            }
                        })
                        .map_err(store_err)?;
                    if let Some(e) = failure {
                        return Err(e);
                    }
                }
            }
            Target::Card { book, name } => {
                if let Some(card) = self.store.card(book.id, name).map_err(store_err)? {
                    let href = router::card_href(me, &book.segment, name);
                    self.respond(
                        ms,
                        &href,
                        &Resource::Card { book, meta: &card.meta, body: CardBody::Text(&card.vcard) },
                    )?;
                }
            }
            Target::MissingBook { .. } => {}
        }
        Ok(())
    }

    fn book<W: AnswerSink>(&self, ms: &mut Multistatus<W>, book: &store::BookView) -> io::Result<()> {
        let dead = self.store.dead_properties(book.id).map_err(store_err)?;
        let used_bytes =
            if asks_for(self.request, "quota-used-bytes") || asks_for(self.request, "quota-available-bytes") {
                self.store.book_size(book.id).map_err(store_err)?
            } else {
                0
            };
        let href = router::book_href(self.pctx.me, &book.segment);
        self.respond(ms, &href, &Resource::Book { book, dead: &dead, used_bytes })
    }
}
