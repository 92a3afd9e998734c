//! Request bodies turned into typed values: PROPFIND, PROPPATCH, extended MKCOL and the REPORTs.
//! Every error is a plain sentence for a 400 (or the precondition the caller maps it to).

use super::xml::{self, Element};
use super::{NS_CARDDAV, NS_DAV, PropName};
use crate::carddav::filter::{self, Filter};
use crate::vcard::Version;

#[derive(Debug, Clone, PartialEq)]
pub enum BadRequest {
    /// Not well-formed or not the expected document (400).
    Malformed(String),
    /// `address-data` asked for a media type or version we do not serve.
    UnsupportedAddressData(String),
    /// A text-match named a collation we do not implement.
    UnsupportedCollation(String),
    /// A REPORT we do not implement (403 DAV:supported-report).
    UnsupportedReport(String),
}

impl From<xml::XmlError> for BadRequest {
    fn from(e: xml::XmlError) -> Self {
        BadRequest::Malformed(e.0)
    }
}

impl From<filter::FilterError> for BadRequest {
    fn from(e: filter::FilterError) -> Self {
        match e {
            filter::FilterError::Malformed(m) => BadRequest::Malformed(m),
            filter::FilterError::UnsupportedCollation(c) => BadRequest::UnsupportedCollation(c),
        }
    }
}

fn malformed(msg: impl Into<String>) -> BadRequest {
    BadRequest::Malformed(msg.into())
}

/// What `address-data` in a request asks for: a version and optionally a subset of properties.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AddressDataSpec {
    pub version: Option<Version>,
    pub props: Option<Vec<String>>,
    /// Properties asked for with `novalue="yes"`: present, with an empty value (RFC 6352 §10.4.2).
    pub without_value: Vec<String>,
}

/// One property asked for in a `<prop>`; `address_data` is set for `CARD:address-data`.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestedProp {
    pub name: PropName,
    pub address_data: Option<AddressDataSpec>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum PropFind {
    AllProp { include: Vec<RequestedProp> },
    PropName,
    Prop(Vec<RequestedProp>),
}

fn parse_address_data(e: &Element) -> Result<AddressDataSpec, BadRequest> {
    if let Some(ct) = e.attr("content-type")
        && !ct.trim().eq_ignore_ascii_case("text/vcard")
    {
        return Err(BadRequest::UnsupportedAddressData(format!("address-data content-type '{ct}' is not supported")));
    }
    let version = match e.attr("version") {
        None => None,
        Some(v) => Some(
            Version::parse(v)
                .ok_or_else(|| BadRequest::UnsupportedAddressData(format!("vCard version '{v}' is not supported")))?,
        ),
    };
    let named = || e.children_named(NS_CARDDAV, "prop").filter_map(|p| Some((p.attr("name")?.trim(), p)));
    let props = if e.children.iter().any(|c| c.is(NS_CARDDAV, "allprop")) {
        None
    } else {
        let names: Vec<String> = named().map(|(n, _)| n.to_string()).collect();
        if names.is_empty() { None } else { Some(names) }
    };
    let without_value = named()
        .filter(|(_, p)| p.attr("novalue").is_some_and(|v| v.trim().eq_ignore_ascii_case("yes")))
        .map(|(n, _)| n.to_string())
        .collect();
    Ok(AddressDataSpec { version, props, without_value })
}

/// The most properties one PROPFIND or REPORT may name. Real clients name up to ~40; the answer repeats every
/// name for every resource, so a request naming the XML parser's limit (100,000) would make a 200-card book
/// answer with well over 100 MB.
pub const MAX_REQUESTED_PROPS: usize = 200;

fn parse_prop_list(prop: &Element) -> Result<Vec<RequestedProp>, BadRequest> {
    if prop.children.len() > MAX_REQUESTED_PROPS {
        return Err(BadRequest::Malformed(format!(
            "{} properties requested; at most {MAX_REQUESTED_PROPS} may be named in one request",
            prop.children.len()
        )));
    }
    prop.children
        .iter()
        .map(|c| {
            let address_data = if c.is(NS_CARDDAV, "address-data") { Some(parse_address_data(c)?) } else { None };
            Ok(RequestedProp { name: PropName::new(&c.ns, &c.name), address_data })
        })
        .collect()
}

/// An empty body is an allprop request (RFC 4918 §9.1).
pub fn parse_propfind(body: &[u8]) -> Result<PropFind, BadRequest> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(PropFind::AllProp { include: Vec::new() });
    }
    let root = xml::parse(body)?;
    if !root.is(NS_DAV, "propfind") {
        return Err(malformed(format!("expected a DAV:propfind body, found {{{}}}{}", root.ns, root.name)));
    }
    if let Some(prop) = root.child(NS_DAV, "prop") {
        return Ok(PropFind::Prop(parse_prop_list(prop)?));
    }
    if root.child(NS_DAV, "propname").is_some() {
        return Ok(PropFind::PropName);
    }
    if root.child(NS_DAV, "allprop").is_some() {
        let include = match root.child(NS_DAV, "include") {
            Some(inc) => parse_prop_list(inc)?,
            None => Vec::new(),
        };
        return Ok(PropFind::AllProp { include });
    }
    Err(malformed("DAV:propfind must contain prop, propname or allprop"))
}

#[derive(Debug, Clone, PartialEq)]
pub enum PatchOp {
    Set(Element),
    Remove(PropName),
}

/// PROPPATCH instructions in document order (RFC 4918 §9.2: applied in order, all or nothing).
pub fn parse_proppatch(body: &[u8]) -> Result<Vec<PatchOp>, BadRequest> {
    let root = xml::parse(body)?;
    if !root.is(NS_DAV, "propertyupdate") {
        return Err(malformed("expected a DAV:propertyupdate body"));
    }
    let mut ops = Vec::new();
    for instruction in &root.children {
        let set = if instruction.is(NS_DAV, "set") {
            true
        } else if instruction.is(NS_DAV, "remove") {
            false
        } else {
            continue;
        };
        for prop in instruction.children_named(NS_DAV, "prop") {
            let lang = prop.lang().or(instruction.lang()).or(root.lang());
            for p in &prop.children {
                ops.push(if set {
                    let mut p = p.clone();
                    p.inherit_lang(lang);
                    PatchOp::Set(p)
                } else {
                    PatchOp::Remove(PropName::new(&p.ns, &p.name))
                });
            }
        }
    }
    if ops.is_empty() {
        return Err(malformed("DAV:propertyupdate contains no property to set or remove"));
    }
    Ok(ops)
}

/// Extended MKCOL (RFC 5689): the resource types and initial properties.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MkCol {
    pub resourcetypes: Vec<PropName>,
    pub props: Vec<Element>,
}

pub fn parse_mkcol(body: &[u8]) -> Result<MkCol, BadRequest> {
    let root = xml::parse(body)?;
    if !root.is(NS_DAV, "mkcol") {
        return Err(malformed("expected a DAV:mkcol body"));
    }
    let mut mkcol = MkCol::default();
    for set in root.children_named(NS_DAV, "set") {
        for prop in set.children_named(NS_DAV, "prop") {
            let lang = prop.lang().or(set.lang()).or(root.lang());
            for p in &prop.children {
                if p.is(NS_DAV, "resourcetype") {
                    mkcol.resourcetypes.extend(p.children.iter().map(|t| PropName::new(&t.ns, &t.name)));
                } else {
                    let mut p = p.clone();
                    p.inherit_lang(lang);
                    mkcol.props.push(p);
                }
            }
        }
    }
    Ok(mkcol)
}

#[derive(Debug, Clone, PartialEq)]
pub enum Report {
    Multiget {
        props: PropFind,
        hrefs: Vec<String>,
    },
    Query {
        props: PropFind,
        filter: Filter,
        limit: Option<usize>,
    },
    SyncCollection {
        token: String,
        props: PropFind,
        limit: Option<usize>,
    },
    /// Apple asks these of principals; an empty multistatus is the honest answer.
    EmptyAnswer,
}

fn report_props(root: &Element) -> Result<PropFind, BadRequest> {
    if let Some(prop) = root.child(NS_DAV, "prop") {
        Ok(PropFind::Prop(parse_prop_list(prop)?))
    } else if root.child(NS_DAV, "propname").is_some() {
        Ok(PropFind::PropName)
    } else {
        Ok(PropFind::AllProp { include: Vec::new() })
    }
}

fn parse_nresults(limit: &Element, ns: &str) -> Result<usize, BadRequest> {
    let n = limit.child(ns, "nresults").ok_or_else(|| malformed("limit must contain nresults"))?;
    let value: usize = n
        .text
        .trim()
        .parse()
        .map_err(|_| malformed(format!("nresults '{}' is not a positive number", n.text.trim())))?;
    if value == 0 {
        return Err(malformed("nresults must be at least 1"));
    }
    Ok(value)
}

/// Parses a REPORT body with the default filter term limit.
pub fn parse_report(body: &[u8], max_hrefs: usize) -> Result<Report, BadRequest> {
    parse_report_limited(body, max_hrefs, filter::MAX_FILTER_TERMS)
}

/// Parses a REPORT body: a multiget of at most `max_hrefs` hrefs, a query filter of at most
/// `max_filter_terms` terms (`limits.max_multiget_hrefs`, `limits.max_filter_terms`).
pub fn parse_report_limited(body: &[u8], max_hrefs: usize, max_filter_terms: usize) -> Result<Report, BadRequest> {
    let mut root = xml::parse(body)?;
    if root.is(NS_CARDDAV, "addressbook-multiget") {
        let count = root.children_named(NS_DAV, "href").count();
        if count > max_hrefs {
            return Err(malformed(format!("a multiget may name at most {max_hrefs} hrefs, this one names {count}")));
        }
        let props = report_props(&root)?;
        // The hrefs' text is moved out rather than copied: a multiget names up to thousands of cards.
        let hrefs = std::mem::take(&mut root.children)
            .into_iter()
            .filter(|h| h.is(NS_DAV, "href"))
            .map(|h| if h.text.trim().len() == h.text.len() { h.text } else { h.text.trim().to_string() })
            .collect();
        return Ok(Report::Multiget { props, hrefs });
    }
    if root.is(NS_CARDDAV, "addressbook-query") {
        let filter = match root.child(NS_CARDDAV, "filter") {
            Some(f) => filter::parse_limited(f, max_filter_terms)?,
            None => Filter::match_all(),
        };
        let limit = match root.child(NS_CARDDAV, "limit") {
            Some(l) => Some(parse_nresults(l, NS_CARDDAV)?),
            None => None,
        };
        return Ok(Report::Query { props: report_props(&root)?, filter, limit });
    }
    if root.is(NS_DAV, "sync-collection") {
        let token = root.child(NS_DAV, "sync-token").map(|t| t.text.trim().to_string()).unwrap_or_default();
        if let Some(level) = root.child(NS_DAV, "sync-level") {
            let level = level.text.trim();
            if level != "1" && !level.eq_ignore_ascii_case("infinite") {
                return Err(malformed(format!("sync-level '{level}' must be 1 or infinite")));
            }
        }
        let limit = match root.child(NS_DAV, "limit") {
            Some(l) => Some(parse_nresults(l, NS_DAV)?),
            None => None,
        };
        return Ok(Report::SyncCollection { token, props: report_props(&root)?, limit });
    }
    if root.ns == NS_DAV
        && matches!(
            root.name.as_str(),
            "expand-property" | "principal-property-search" | "principal-search-property-set"
        )
    {
        return Ok(Report::EmptyAnswer);
    }
    Err(BadRequest::UnsupportedReport(format!("{{{}}}{}", root.ns, root.name)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn propfind_variants() {
        assert!(matches!(parse_propfind(b""), Ok(PropFind::AllProp { .. })));
        let p = parse_propfind(br#"<d:propfind xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:carddav"><d:prop><d:getetag/><c:address-data version="4.0"><c:prop name="FN"/></c:address-data></d:prop></d:propfind>"#)
            .expect("parses");
        let PropFind::Prop(props) = p else { panic!("expected prop") };
        assert!(props[0].name.is(NS_DAV, "getetag"));
        let spec = props[1].address_data.clone().expect("address-data");
        assert_eq!(spec.version, Some(Version::V4));
        assert_eq!(spec.props, Some(vec!["FN".to_string()]));
        assert!(matches!(
            parse_propfind(br#"<d:propfind xmlns:d="DAV:"><d:propname/></d:propfind>"#),
            Ok(PropFind::PropName)
        ));
        assert!(parse_propfind(br#"<d:propfind xmlns:d="DAV:"></d:propfind>"#).is_err());
        assert!(parse_propfind(br#"<d:propfind xmlns:d="urn:wrong"><d:propname/></d:propfind>"#).is_err());
    }

    #[test]
    fn report_variants() {
        let r = parse_report(br#"<d:sync-collection xmlns:d="DAV:"><d:sync-token/><d:sync-level>1</d:sync-level><d:limit><d:nresults>10</d:nresults></d:limit><d:prop><d:getetag/></d:prop></d:sync-collection>"#, 1000).expect("parses");
        assert!(matches!(r, Report::SyncCollection { ref token, limit: Some(10), .. } if token.is_empty()));
        let bad = parse_report(
            br#"<d:sync-collection xmlns:d="DAV:"><d:limit><d:nresults>-1</d:nresults></d:limit></d:sync-collection>"#,
            1000,
        );
        assert!(matches!(bad, Err(BadRequest::Malformed(_))));
        let unknown = parse_report(br#"<x:frob xmlns:x="urn:x"/>"#, 1000);
        assert!(matches!(unknown, Err(BadRequest::UnsupportedReport(_))));
        let many = format!(
            r#"<c:addressbook-multiget xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:carddav">{}</c:addressbook-multiget>"#,
            "<d:href>/a</d:href>".repeat(3)
        );
        assert!(parse_report(many.as_bytes(), 2).is_err());
        assert!(matches!(parse_report(many.as_bytes(), 3), Ok(Report::Multiget { ref hrefs, .. }) if hrefs.len() == 3));
        let query = |terms: usize| {
            let pf = r#"<c:prop-filter name="FN"/>"#.repeat(terms);
            format!(
                r#"<c:addressbook-query xmlns:c="urn:ietf:params:xml:ns:carddav"><c:filter>{pf}</c:filter></c:addressbook-query>"#
            )
        };
        assert!(matches!(parse_report_limited(query(3).as_bytes(), 10, 3), Ok(Report::Query { .. })));
        assert!(matches!(parse_report_limited(query(4).as_bytes(), 10, 3), Err(BadRequest::Malformed(_))));
    }
}
