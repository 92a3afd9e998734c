//! WebDAV and CardDAV protocol values: namespaces, property names, Depth, and the typed request bodies
//! (`request`) and multistatus writer (`response`). No I/O and no storage here.

pub mod request;
pub mod response;
pub mod xml;

pub const NS_DAV: &str = "DAV:";
pub const NS_CARDDAV: &str = "urn:ietf:params:xml:ns:carddav";
pub const NS_CALSERVER: &str = "http://calendarserver.org/ns/";

/// A property's name: namespace URI and local name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PropName {
    pub ns: String,
    pub name: String,
}

impl PropName {
    pub fn new(ns: &str, name: &str) -> Self {
        PropName { ns: ns.to_string(), name: name.to_string() }
    }

    pub fn is(&self, ns: &str, name: &str) -> bool {
        self.ns == ns && self.name == name
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    Zero,
    One,
    Infinity,
}

impl Depth {
    /// Parses the Depth header; `None` means a value that is not allowed (400).
    pub fn parse(header: Option<&str>, default: Depth) -> Option<Depth> {
        match header.map(str::trim) {
            None => Some(default),
            Some("0") => Some(Depth::Zero),
            Some("1") => Some(Depth::One),
            Some(v) if v.eq_ignore_ascii_case("infinity") => Some(Depth::Infinity),
            Some(_) => None,
        }
    }
}
