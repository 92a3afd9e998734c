//! Live properties: which ones each kind of resource has and how each is computed (RFC 4918 §15, RFC 6352
//! §6, RFC 6578, RFC 5397, RFC 3744's privilege sets, CalendarServer's getctag).

use std::borrow::Cow;

use crate::dav::request::{PropFind, RequestedProp};
use crate::dav::response::{Prop, Value};
use crate::dav::{NS_CALSERVER, NS_CARDDAV, NS_DAV, PropName};
use crate::router;
use crate::store::{BookView, CardBody, CardMeta, DeadProperty};
use crate::vcard::{self, Version};

pub const SYNC_TOKEN_PREFIX: &str = "http://kartei.invalid/ns/sync/";

/// The book's sync key and revision; also its CTag. (Books made before schema v6 have their row id as key,
/// so the tokens of that time stay valid.)
pub fn sync_token(book: &BookView) -> String {
    format!("{SYNC_TOKEN_PREFIX}{}/{}", book.sync_key, book.revision)
}

/// `(book's sync key, revision)` of a token we issued, if it is one.
pub fn parse_sync_token(token: &str) -> Option<(&str, i64)> {
    let rest = token.strip_prefix(SYNC_TOKEN_PREFIX)?;
    let (book, revision) = rest.split_once('/')?;
    Some((book, revision.parse().ok()?))
}

/// What the properties are computed from.
pub enum Resource<'a> {
    Root,
    PrincipalCollection,
    Principal {
        user: &'a str,
        display_name: &'a str,
    },
    HomeCollection,
    /// `me_card`: macOS's "this is my card" (a `CS:me-card` element kept with the home's first own book).
    Home {
        user: &'a str,
        me_card: Option<&'a str>,
    },
    Book {
        book: &'a BookView,
        dead: &'a [DeadProperty],
        used_bytes: i64,
    },
    Card {
        book: &'a BookView,
        meta: &'a CardMeta,
        body: CardBody<'a>,
    },
}

pub struct PropContext<'a> {
    /// The authenticated user.
    pub me: &'a str,
    pub max_resource_size: usize,
    /// Apple clients read only vCard 3.0 and never ask for it: default their address-data to 3.0.
    pub prefer_v3: bool,
    /// A `user+book` login: it can change cards in its book, but not the home (no MKCOL there).
    pub scoped: bool,
}

fn dav(name: &str) -> PropName {
    PropName::new(NS_DAV, name)
}

fn card_ns(name: &str) -> PropName {
    PropName::new(NS_CARDDAV, name)
}

fn privileges(writable: bool, collection: bool) -> Value<'static> {
    let mut x = String::from(
        "<d:privilege><d:read/></d:privilege><d:privilege><d:read-current-user-privilege-set/></d:privilege>",
    );
    if writable {
        x.push_str("<d:privilege><d:write/></d:privilege><d:privilege><d:write-content/></d:privilege>");
        x.push_str("<d:privilege><d:write-properties/></d:privilege>");
        if collection {
            x.push_str("<d:privilege><d:bind/></d:privilege><d:privilege><d:unbind/></d:privilege>");
        }
    }
    Value::Xml(x)
}

fn supported_reports(book: bool) -> Value<'static> {
    let mut x = String::new();
    if book {
        for r in ["card:addressbook-multiget", "card:addressbook-query", "d:sync-collection"] {
            x.push_str(&format!("<d:supported-report><d:report><{r}/></d:report></d:supported-report>"));
        }
    }
    Value::Xml(x)
}

/// Every live property `value` can answer (address-data aside: it is the card itself, asked for by name).
const LIVE: &[(&str, &str)] = &[
    (NS_DAV, "resourcetype"),
    (NS_DAV, "displayname"),
    (NS_DAV, "current-user-principal"),
    (NS_DAV, "principal-collection-set"),
    (NS_DAV, "principal-URL"),
    (NS_DAV, "group-membership"),
    (NS_DAV, "group-member-set"),
    (NS_DAV, "alternate-URI-set"),
    (NS_DAV, "owner"),
    (NS_DAV, "sync-token"),
    (NS_DAV, "supported-report-set"),
    (NS_DAV, "current-user-privilege-set"),
    (NS_DAV, "quota-used-bytes"),
    (NS_DAV, "quota-available-bytes"),
    (NS_DAV, "creationdate"),
    (NS_DAV, "getetag"),
    (NS_DAV, "getcontenttype"),
    (NS_DAV, "getcontentlength"),
    (NS_DAV, "getlastmodified"),
    (NS_CARDDAV, "addressbook-home-set"),
    (NS_CARDDAV, "principal-address"),
    (NS_CARDDAV, "addressbook-description"),
    (NS_CARDDAV, "supported-address-data"),
    (NS_CARDDAV, "supported-collation-set"),
    (NS_CARDDAV, "max-resource-size"),
    (NS_CARDDAV, "max-image-size"),
    (NS_CALSERVER, "getctag"),
    (NS_CALSERVER, "me-card"),
];

impl Resource<'_> {
    /// What `propname` lists (RFC 4918 §9.1: every property the resource has): the live properties that
    /// have a value here, and the dead ones. Derived from `value`, so the two cannot disagree.
    pub fn all_names(&self, ctx: &PropContext) -> Vec<PropName> {
        let mut names: Vec<PropName> = LIVE
            .iter()
            .map(|(ns, name)| PropName::new(ns, name))
            .filter(|name| self.value(ctx, &RequestedProp { name: name.clone(), address_data: None }).is_some())
            .collect();
        if let Resource::Book { dead, .. } = self {
            for d in dead.iter() {
                // A dead property stored under a live name (before every live name was protected) is hidden.
                let name = PropName::new(&d.namespace, &d.name);
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
        names
    }

    /// The properties `allprop` returns (expensive or large ones excluded, RFC 4918 §9.1).
    pub fn prop_names(&self) -> Vec<PropName> {
        let mut names = vec![dav("resourcetype"), dav("displayname"), dav("current-user-principal")];
        match self {
            Resource::Principal { .. } => {
                names.extend([dav("principal-URL"), card_ns("addressbook-home-set"), dav("principal-collection-set")]);
            }
            Resource::Book { dead, .. } => {
                names.extend([
                    dav("owner"),
                    dav("sync-token"),
                    PropName::new(NS_CALSERVER, "getctag"),
                    card_ns("addressbook-description"),
                    card_ns("supported-address-data"),
                    card_ns("max-resource-size"),
                    dav("supported-report-set"),
                    dav("current-user-privilege-set"),
                    dav("quota-used-bytes"),
                    dav("creationdate"),
                ]);
                names.extend(dead.iter().map(|d| PropName::new(&d.namespace, &d.name)));
            }
            Resource::Card { .. } => {
                names.extend([
                    dav("getetag"),
                    dav("getcontenttype"),
                    dav("getcontentlength"),
                    dav("getlastmodified"),
                    dav("creationdate"),
                ]);
            }
            _ => {}
        }
        names
    }

    pub fn value(&self, ctx: &PropContext, req: &RequestedProp) -> Option<Value<'_>> {
        let n = &req.name;
        if n.ns == NS_DAV {
            return self.dav_value(ctx, &n.name);
        }
        if n.ns == NS_CARDDAV {
            return self.carddav_value(ctx, req);
        }
        if n.is(NS_CALSERVER, "getctag") {
            return match self {
                Resource::Book { book, .. } => Some(Value::Text(sync_token(book))),
                _ => None,
            };
        }
        match self {
            Resource::Book { dead, .. } => {
                dead.iter().find(|d| d.namespace == n.ns && d.name == n.name).map(|d| Value::Raw(d.xml.clone()))
            }
            Resource::Home { me_card: Some(xml), .. } if n.is(NS_CALSERVER, "me-card") => {
                Some(Value::Raw(xml.to_string()))
            }
            _ => None,
        }
    }

    fn dav_value(&self, ctx: &PropContext, name: &str) -> Option<Value<'_>> {
        let me = ctx.me;
        let value = match (name, self) {
            ("current-user-principal", _) => Value::Hrefs(vec![router::principal_href(me)]),
            ("principal-collection-set", _) => Value::Hrefs(vec!["/dav/principals/".into()]),
            ("resourcetype", Resource::Principal { .. }) => Value::Xml("<d:collection/><d:principal/>".into()),
            ("resourcetype", Resource::Book { .. }) => Value::Xml("<d:collection/><card:addressbook/>".into()),
            ("resourcetype", Resource::Card { .. }) => Value::Empty,
            ("resourcetype", _) => Value::Xml("<d:collection/>".into()),
            ("displayname", Resource::Principal { display_name, .. }) => Value::Text(display_name.to_string()),
            ("displayname", Resource::Book { book, .. }) => {
                let name = book.display_name.clone().unwrap_or_else(|| book.owner_segment.clone());
                // A sharee's own "Contacts" and a shared "Contacts" must look different in the client.
                Value::Text(if book.shared { format!("{name} (shared by {})", book.owner) } else { name })
            }
            ("displayname", Resource::Home { user, .. }) => Value::Text(format!("Address books of {user}")),
            ("displayname", Resource::Root) => Value::Text("kartei".into()),
            ("principal-URL", Resource::Principal { user, .. }) => Value::Hrefs(vec![router::principal_href(user)]),
            ("group-membership" | "group-member-set", Resource::Principal { .. }) => Value::Empty,
            ("alternate-URI-set", Resource::Principal { .. }) => Value::Empty,
            ("owner", Resource::Book { book, .. }) => Value::Hrefs(vec![router::principal_href(&book.owner)]),
            ("owner", Resource::Home { user, .. }) => Value::Hrefs(vec![router::principal_href(user)]),
            ("owner", Resource::Principal { user, .. }) => Value::Hrefs(vec![router::principal_href(user)]),
            ("sync-token", Resource::Book { book, .. }) => Value::Text(sync_token(book)),
            ("supported-report-set", Resource::Book { .. }) => supported_reports(true),
            ("supported-report-set", _) => supported_reports(false),
            ("current-user-privilege-set", Resource::Book { book, .. }) => privileges(book.writable, true),
            ("current-user-privilege-set", Resource::Card { book, .. }) => privileges(book.writable, false),
            ("current-user-privilege-set", Resource::Home { .. }) => privileges(!ctx.scoped, true),
            ("current-user-privilege-set", _) => privileges(false, false),
            ("quota-used-bytes", Resource::Book { used_bytes, .. }) => Value::Text(used_bytes.to_string()),
            ("quota-available-bytes", Resource::Book { .. }) => Value::Text((i64::MAX / 2).to_string()),
            ("creationdate", Resource::Book { book, .. }) => Value::Text(crate::dates::format_rfc3339(book.created_at)),
            // `concat` rather than `format!`: these two are made for every card of a full sync, and `format!`
            // took ~1,000 instructions each (BENCHMARKS.md, optimization 20).
            ("getetag", Resource::Card { meta, .. }) => Value::Text(["\"", &meta.etag, "\""].concat()),
            ("getcontenttype", Resource::Card { meta, .. }) => {
                Value::Text(["text/vcard; charset=utf-8; version=", &meta.version].concat())
            }
            ("getcontentlength", Resource::Card { meta, .. }) => Value::Text(meta.size.to_string()),
            ("getlastmodified", Resource::Card { meta, .. }) => {
                Value::Text(crate::dates::format_http_date(meta.modified_at))
            }
            ("creationdate", Resource::Card { meta, .. }) => Value::Text(crate::dates::format_rfc3339(meta.created_at)),
            _ => return None,
        };
        Some(value)
    }

    fn carddav_value(&self, ctx: &PropContext, req: &RequestedProp) -> Option<Value<'_>> {
        let value = match (req.name.name.as_str(), self) {
            ("addressbook-home-set", Resource::Principal { user, .. }) => Value::Hrefs(vec![router::home_href(user)]),
            ("principal-address", Resource::Principal { .. }) => Value::Empty,
            ("addressbook-description", Resource::Book { book, .. }) => Value::Text(book.description.clone()?),
            ("supported-address-data", Resource::Book { .. }) => Value::Xml(
                "<card:address-data-type content-type=\"text/vcard\" version=\"3.0\"/>\
                 <card:address-data-type content-type=\"text/vcard\" version=\"4.0\"/>"
                    .into(),
            ),
            ("supported-collation-set", Resource::Book { .. }) => Value::Xml(
                "<card:supported-collation>i;ascii-casemap</card:supported-collation>\
                 <card:supported-collation>i;unicode-casemap</card:supported-collation>\
                 <card:supported-collation>i;octet</card:supported-collation>"
                    .into(),
            ),
            ("max-resource-size", Resource::Book { .. }) => Value::Text(ctx.max_resource_size.to_string()),
            ("max-image-size", Resource::Book { .. }) => Value::Text(ctx.max_resource_size.to_string()),
            // Stored as a frame, the card is sent as stored: the reader asked for one only if that is what the
            // request wants (`address_data_as_stored`).
            ("address-data", Resource::Card { body: CardBody::XmlZstd(frame), .. }) => Value::XmlZstd(frame),
            ("address-data", Resource::Card { meta, body: CardBody::Text(body), .. }) => {
                let no_spec = Default::default();
                let spec: &crate::dav::request::AddressDataSpec = req.address_data.as_ref().unwrap_or(&no_spec);
                let want = spec.version.or(if ctx.prefer_v3 { Some(Version::V3) } else { None });
                let (bytes, _) = vcard::render(
                    body,
                    &meta.version,
                    want,
                    spec.props.as_deref().map(|p| (p, spec.without_value.as_slice())),
                );
                Value::CardText(bytes)
            }
            _ => return None,
        };
        Some(value)
    }

    /// Splits a PROPFIND's request into found properties and 404 names.
    pub fn answer<'r>(&'r self, ctx: &PropContext, request: &'r PropFind) -> (Vec<Prop<'r>>, Vec<PropName>) {
        let mut found = Vec::new();
        let mut missing = Vec::new();
        match request {
            PropFind::PropName => {
                for name in self.all_names(ctx) {
                    found.push(Prop { name: Cow::Owned(name), value: Value::Empty });
                }
            }
            PropFind::AllProp { include } => {
                let mut asked: Vec<RequestedProp> =
                    self.prop_names().into_iter().map(|name| RequestedProp { name, address_data: None }).collect();
                for extra in include {
                    if !asked.iter().any(|a| a.name == extra.name) {
                        asked.push(extra.clone());
                    }
                }
                for req in &asked {
                    if let Some(value) = self.value(ctx, req) {
                        found.push(Prop { name: Cow::Owned(req.name.clone()), value });
                    }
                }
            }
            PropFind::Prop(props) => {
                for req in props {
                    match self.value(ctx, req) {
                        Some(value) => found.push(Prop { name: Cow::Borrowed(&req.name), value }),
                        None => missing.push(req.name.clone()),
                    }
                }
            }
        }
        (found, missing)
    }
}

/// Whether every card's address-data is sent as stored for this request, whatever its version: no version
/// or property subset asked for, and no conversion the client needs (`prefer_v3`).
pub fn address_data_as_stored(request: &PropFind, prefer_v3: bool) -> bool {
    let as_stored = |p: &RequestedProp| {
        !p.name.is(NS_CARDDAV, "address-data")
            || p.address_data.as_ref().is_none_or(|spec| spec.version.is_none() && spec.props.is_none())
    };
    !prefer_v3
        && match request {
            PropFind::Prop(props) => props.iter().all(as_stored),
            PropFind::AllProp { include } => include.iter().all(as_stored),
            PropFind::PropName => true,
        }
}

/// Does this request need card bodies (address-data)? Listings without it never read vCards.
pub fn wants_body(request: &PropFind) -> bool {
    match request {
        PropFind::Prop(props) => props.iter().any(|p| p.name.is(NS_CARDDAV, "address-data")),
        PropFind::AllProp { include } => include.iter().any(|p| p.name.is(NS_CARDDAV, "address-data")),
        PropFind::PropName => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_tokens_round_trip() {
        assert_eq!(parse_sync_token("http://kartei.invalid/ns/sync/7/42"), Some(("7", 42)));
        assert_eq!(parse_sync_token("http://kartei.invalid/ns/sync/0f3a9c2e41b7d655/3"), Some(("0f3a9c2e41b7d655", 3)));
        assert_eq!(parse_sync_token("http://other/ns/sync/7/42"), None);
        assert_eq!(parse_sync_token("http://kartei.invalid/ns/sync/7/x"), None);
    }
}
