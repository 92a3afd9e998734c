//! A small namespace-resolved element tree for request bodies, read with quick-xml.
//!
//! DAV request bodies are small (a PROPFIND, a filter, a list of hrefs), so a tree is the simplest thing to
//! interpret. The reader enforces the XML policy here, once: no DOCTYPE (so no entity tricks at all), only
//! predefined and character entity references, bounded nesting depth, element and attribute counts, and
//! only characters XML 1.0 allows (a control character stored in a dead property would make every later
//! PROPFIND answer unparsable), in names that are XML names.

use std::borrow::Cow;

use quick_xml::escape::resolve_predefined_entity;
use quick_xml::events::{BytesStart, Event};
use quick_xml::name::{NamespaceResolver, ResolveResult};
use quick_xml::reader::NsReader;

pub const MAX_DEPTH: usize = 64;
pub const MAX_ELEMENTS: usize = 100_000;
/// Attributes on one element (DAV elements have at most three; the duplicate check is quadratic).
pub const MAX_ATTRIBUTES: usize = 32;

/// The namespace the `xml:` prefix is bound to (`xml:lang`).
pub const NS_XML: &str = "http://www.w3.org/XML/1998/namespace";

#[derive(Debug, Clone, PartialEq)]
pub struct Element {
    /// Borrowed for the namespaces DAV bodies use (`KNOWN_NAMESPACES`): one allocation less per element.
    pub ns: Cow<'static, str>,
    pub name: String,
    /// Attributes without a namespace prefix, by local name (DAV and CardDAV use only these).
    pub attrs: Vec<(String, String)>,
    /// Attributes in a namespace (`xml:lang`, `x:a`) as (namespace, local name, value): DAV does not read
    /// them, but a dead property keeps them (RFC 4918 §4.3).
    pub ns_attrs: Vec<(String, String, String)>,
    pub children: Vec<Element>,
    /// All the element's own character data, concatenated.
    pub text: String,
    /// Where in `text` each child stands (a byte offset per child), so that mixed content is written back
    /// in its order (RFC 4918 §4.3).
    pub child_at: Vec<usize>,
}

impl Element {
    pub fn is(&self, ns: &str, name: &str) -> bool {
        self.ns == ns && self.name == name
    }

    pub fn child(&self, ns: &str, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.is(ns, name))
    }

    pub fn children_named<'a>(&'a self, ns: &'a str, name: &'a str) -> impl Iterator<Item = &'a Element> + 'a {
        self.children.iter().filter(move |c| c.is(ns, name))
    }

    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The element's own `xml:lang`, if it has one.
    pub fn lang(&self) -> Option<&str> {
        self.ns_attrs.iter().find(|(ns, name, _)| ns == NS_XML && name == "lang").map(|(_, _, v)| v.as_str())
    }

    /// Gives the element the `xml:lang` in scope where it stood, unless it has its own: a dead property keeps
    /// its language also when the client declared it on an ancestor (RFC 4918 §4.3).
    pub fn inherit_lang(&mut self, in_scope: Option<&str>) {
        if let Some(lang) = in_scope
            && self.lang().is_none()
        {
            self.ns_attrs.push((NS_XML.into(), "lang".into(), lang.into()));
        }
    }

    /// Serializes the element back to XML with its namespace declared on it, to store a dead property.
    pub fn to_xml(&self) -> String {
        let mut out = String::new();
        self.write_xml(&mut out, None);
        out
    }

    fn push_child(&mut self, child: Element) {
        self.child_at.push(self.text.len());
        self.children.push(child);
    }

    fn write_xml(&self, out: &mut String, parent_ns: Option<&str>) {
        out.push('<');
        out.push_str(&self.name);
        if parent_ns != Some(&*self.ns) {
            out.push_str(" xmlns=\"");
            out.push_str(&self.ns);
            out.push('"');
        }
        for (k, v) in &self.attrs {
            out.push(' ');
            out.push_str(k);
            out.push_str("=\"");
            escape_into(out, v, true);
            out.push('"');
        }
        for (i, (ns, name, v)) in self.ns_attrs.iter().enumerate() {
            // `xml:` is bound everywhere; any other namespace gets a prefix of its own, declared right here.
            if ns == NS_XML {
                out.push_str(" xml:");
            } else {
                out.push_str(&format!(" xmlns:a{i}=\"{ns}\" a{i}:"));
            }
            out.push_str(name);
            out.push_str("=\"");
            escape_into(out, v, true);
            out.push('"');
        }
        if self.children.is_empty() && self.text.is_empty() {
            out.push_str("/>");
            return;
        }
        out.push('>');
        let mut at = 0;
        for (i, c) in self.children.iter().enumerate() {
            let start = self.child_at.get(i).copied().unwrap_or(at).clamp(at, self.text.len());
            escape_into(out, self.text.get(at..start).unwrap_or_default(), false);
            at = start;
            c.write_xml(out, Some(&self.ns));
        }
        escape_into(out, self.text.get(at..).unwrap_or_default(), false);
        out.push_str("</");
        out.push_str(&self.name);
        out.push('>');
    }
}

/// Escapes markup characters, and the whitespace a parser would normalize away: `\r` everywhere (line-end
/// normalization), tab and line feed in attribute values (attribute-value normalization), so that what is
/// written parses back to the same text.
fn escape_into(out: &mut String, text: &str, attribute: bool) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\r' => out.push_str("&#13;"),
            '\t' if attribute => out.push_str("&#9;"),
            '\n' if attribute => out.push_str("&#10;"),
            c => out.push(c),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct XmlError(pub String);

impl std::fmt::Display for XmlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// XML 1.0 `Char`: no C0 controls but tab, line feed and carriage return; no surrogates, U+FFFE or U+FFFF.
fn is_xml_char(c: char) -> bool {
    matches!(c, '\u{9}' | '\u{A}' | '\u{D}' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..='\u{10FFFF}')
}

fn check_chars(s: &str) -> Result<(), XmlError> {
    // Most text is ASCII: then only the C0 controls can be wrong, and a byte test says so (the character
    // walk was the largest part of parsing a multiget's hrefs).
    if s.is_ascii() && !s.bytes().any(|b| b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r')) {
        return Ok(());
    }
    match s.chars().find(|c| !is_xml_char(*c)) {
        Some(c) => Err(XmlError(format!("character U+{:04X} is not allowed in XML", c as u32))),
        None => Ok(()),
    }
}

/// XML 1.0 `NameStartChar` without the colon (names here are local names).
fn is_name_start(c: char) -> bool {
    matches!(c,
        'A'..='Z' | '_' | 'a'..='z' | '\u{C0}'..='\u{D6}' | '\u{D8}'..='\u{F6}' | '\u{F8}'..='\u{2FF}'
        | '\u{370}'..='\u{37D}' | '\u{37F}'..='\u{1FFF}' | '\u{200C}'..='\u{200D}' | '\u{2070}'..='\u{218F}'
        | '\u{2C00}'..='\u{2FEF}' | '\u{3001}'..='\u{D7FF}' | '\u{F900}'..='\u{FDCF}' | '\u{FDF0}'..='\u{FFFD}'
        | '\u{10000}'..='\u{EFFFF}')
}

fn is_name_char(c: char) -> bool {
    is_name_start(c) || matches!(c, '-' | '.' | '0'..='9' | '\u{B7}' | '\u{300}'..='\u{36F}' | '\u{203F}'..='\u{2040}')
}

fn check_name(name: &str) -> Result<(), XmlError> {
    let ascii_name = name.as_bytes().first().is_some_and(|b| b.is_ascii_alphabetic() || *b == b'_')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ascii_name {
        return Ok(());
    }
    let mut chars = name.chars();
    let valid = chars.next().is_some_and(is_name_start) && chars.all(is_name_char);
    if valid { Ok(()) } else { Err(XmlError(format!("'{}' is not an XML name", name.escape_debug()))) }
}

/// The namespaces DAV request bodies use, shared instead of copied into every element.
const KNOWN_NAMESPACES: [&str; 5] =
    [super::NS_DAV, super::NS_CARDDAV, super::NS_CALSERVER, "http://apple.com/ns/ical/", "http://me.com/_namespace/"];

fn namespace(ns: ResolveResult) -> Result<Cow<'static, str>, XmlError> {
    let ns = match ns {
        ResolveResult::Bound(ns) => {
            if let Some(known) = KNOWN_NAMESPACES.iter().find(|k| **k == ns.as_ref()) {
                return Ok(Cow::Borrowed(known));
            }
            ns.as_ref().to_string()
        }
        ResolveResult::Unbound => return Ok(Cow::Borrowed("")),
        ResolveResult::Unknown(prefix) => {
            return Err(XmlError(format!("undeclared namespace prefix '{}'", prefix)));
        }
    };
    // A namespace is a URI: quick-xml takes the declaration verbatim (no entity or whitespace handling), so
    // anything that would need escaping is refused rather than stored in a form that cannot be written back.
    if ns.chars().any(|c| matches!(c, '<' | '>' | '&' | '"' | '\'') || c.is_whitespace() || c.is_control()) {
        return Err(XmlError(format!("namespace '{}' is not a URI", ns.escape_debug())));
    }
    Ok(Cow::Owned(ns))
}

fn start_element(e: &BytesStart, ns: Cow<'static, str>, resolver: &NamespaceResolver) -> Result<Element, XmlError> {
    let name = e.local_name().as_ref().to_string();
    check_name(&name)?;
    let mut attrs = Vec::new();
    let mut ns_attrs = Vec::new();
    for (i, attr) in e.attributes().enumerate() {
        if i >= MAX_ATTRIBUTES {
            return Err(XmlError(format!("an element has more than {MAX_ATTRIBUTES} attributes")));
        }
        let attr = attr.map_err(|err| XmlError(format!("malformed attribute: {err}")))?;
        let key = attr.key;
        let value = attr
            .normalized_value(quick_xml::XmlVersion::Implicit1_0)
            .map_err(|err| XmlError(format!("malformed attribute value: {err}")))?;
        check_chars(&value)?;
        if key.as_namespace_binding().is_some() {
            continue;
        }
        if key.prefix().is_some() {
            let (attr_ns, local) = resolver.resolve_attribute(key);
            let local = local.as_ref().to_string();
            check_name(&local)?;
            ns_attrs.push((namespace(attr_ns)?.into_owned(), local, value.into_owned()));
            continue;
        }
        check_name(key.as_ref())?;
        attrs.push((key.as_ref().to_string(), value.into_owned()));
    }
    Ok(Element { ns, name, attrs, ns_attrs, children: Vec::new(), text: String::new(), child_at: Vec::new() })
}

/// Parses a request body into its root element.
pub fn parse(body: &[u8]) -> Result<Element, XmlError> {
    let mut reader = NsReader::from_reader(body);
    reader.config_mut().trim_text(false);
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    let mut count = 0usize;
    loop {
        let (ns, event) = match reader.read_resolved_event() {
            Ok(r) => r,
            Err(e) => {
                let at = reader.error_position();
                return Err(XmlError(format!("malformed XML at byte {at}: {e}")));
            }
        };
        match event {
            Event::DocType(_) => return Err(XmlError("DOCTYPE declarations are not accepted".into())),
            Event::Start(e) | Event::Empty(e) if root.is_some() => {
                let _ = e;
                return Err(XmlError("content after the root element".into()));
            }
            Event::Start(e) => {
                count += 1;
                if stack.len() >= MAX_DEPTH || count > MAX_ELEMENTS {
                    return Err(XmlError("the XML body is nested too deeply or has too many elements".into()));
                }
                let ns = namespace(ns)?;
                stack.push(start_element(&e, ns, reader.resolver())?);
            }
            Event::Empty(e) => {
                count += 1;
                if count > MAX_ELEMENTS {
                    return Err(XmlError("the XML body has too many elements".into()));
                }
                let ns = namespace(ns)?;
                let element = start_element(&e, ns, reader.resolver())?;
                match stack.last_mut() {
                    Some(parent) => parent.push_child(element),
                    None => root = Some(element),
                }
            }
            Event::End(_) => {
                let Some(element) = stack.pop() else {
                    return Err(XmlError("unbalanced end tag".into()));
                };
                match stack.last_mut() {
                    Some(parent) => parent.push_child(element),
                    None => root = Some(element),
                }
            }
            Event::Text(t) => {
                let text = t.xml10_content();
                check_chars(&text)?;
                match stack.last_mut() {
                    Some(parent) => parent.text.push_str(&text),
                    None if text.trim().is_empty() => {}
                    None => return Err(XmlError("text outside the root element".into())),
                }
            }
            Event::CData(t) => {
                let text = t.into_inner().into_owned();
                check_chars(&text)?;
                if let Some(parent) = stack.last_mut() {
                    parent.text.push_str(&text);
                }
            }
            Event::GeneralRef(r) => {
                let name = r.clone().into_inner();
                let resolved = if let Some(s) = resolve_predefined_entity(&name) {
                    s.to_string()
                } else if let Ok(Some(c)) = r.resolve_char_ref()
                    && is_xml_char(c)
                {
                    c.to_string()
                } else {
                    return Err(XmlError(format!("unknown entity reference '&{name};'")));
                };
                if let Some(parent) = stack.last_mut() {
                    parent.text.push_str(&resolved);
                }
            }
            Event::Eof => break,
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
        }
    }
    if !stack.is_empty() {
        return Err(XmlError("the XML body ends before its elements are closed".into()));
    }
    root.ok_or_else(|| XmlError("the XML body has no root element".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_namespaces_whatever_the_prefix() {
        let e = parse(br#"<?xml version="1.0"?><A:propfind xmlns:A="DAV:"><A:prop><x:foo xmlns:x="urn:x"/></A:prop></A:propfind>"#)
            .expect("parses");
        assert!(e.is("DAV:", "propfind"));
        let prop = e.child("DAV:", "prop").expect("prop");
        assert!(prop.children[0].is("urn:x", "foo"));
        // The namespaces of DAV bodies are shared, not copied into every element.
        assert!(matches!(prop.ns, Cow::Borrowed(_)) && matches!(prop.children[0].ns, Cow::Owned(_)));
    }

    #[test]
    fn refuses_doctype_unknown_entities_and_truncation() {
        assert!(parse(b"<!DOCTYPE x [<!ENTITY a \"b\">]><x>&a;</x>").is_err());
        assert!(parse(b"<x xmlns=\"DAV:\">&boom;</x>").is_err());
        assert!(parse(b"<d:x xmlns:d=\"DAV:\"><d:y>").is_err());
        assert!(parse(b"<q:x/>").is_err());
        assert!(parse(b"").is_err());
        let deep = "<a>".repeat(100) + &"</a>".repeat(100);
        assert!(parse(deep.as_bytes()).is_err());
    }

    #[test]
    fn refuses_characters_and_names_xml_does_not_allow() {
        assert!(parse(b"<x xmlns=\"DAV:\">&#1;</x>").is_err());
        assert!(parse(b"<x xmlns=\"DAV:\">&#xFFFE;</x>").is_err());
        assert!(parse(b"<x xmlns=\"DAV:\">a\x1bb</x>").is_err());
        assert!(parse("<x xmlns=\"DAV:\">ä\u{FFFF}</x>".as_bytes()).is_err(), "non-ASCII text is checked in full");
        assert!(parse("<x\u{2FF0} xmlns=\"DAV:\"/>".as_bytes()).is_err(), "non-ASCII names are checked in full");
        assert!(parse(b"<x xmlns=\"DAV:\"><![CDATA[\x01]]></x>").is_err());
        assert!(parse(b"<x xmlns=\"DAV:\" a=\"\x08\"/>").is_err());
        assert!(parse(b"<x xmlns=\"urn:\x01\"/>").is_err());
        assert!(parse(b"<x\"y xmlns=\"DAV:\"/>").is_err());
        assert!(parse(b"<1x/>").is_err());
        assert!(parse(b"<x xmlns=\"urn:a&amp;b\"/>").is_err());
        assert!(parse(b"<x xmlns=\"urn:a b\"/>").is_err());
        let attrs: String = (0..=MAX_ATTRIBUTES).map(|i| format!(" a{i}=\"\"")).collect();
        assert!(parse(format!("<x{attrs}/>").as_bytes()).is_err());
        let e = parse("<x xmlns=\"DAV:\" a=\"\t\">tab\there, ünïcödé 😀 &#x1F600;</x>".as_bytes()).expect("parses");
        assert_eq!(e.text, "tab\there, ünïcödé 😀 😀");
    }

    #[test]
    fn resolves_predefined_and_character_references() {
        let e = parse(b"<x xmlns=\"DAV:\">a &amp; b &#x41;</x>").expect("parses");
        assert_eq!(e.text, "a & b A");
    }

    #[test]
    fn round_trips_dead_properties() {
        let e = parse(br#"<x:color xmlns:x="urn:apple" a="1">#FF0000<x:sub/></x:color>"#).expect("parses");
        let again = parse(e.to_xml().as_bytes()).expect("reparses");
        assert_eq!(e, again);
        let e = parse(b"<x xmlns=\"urn:x\" a=\"&#9;&#10;&#13;&quot;'&lt;\">a&#13;b\r\n&amp;<y xmlns=\"\"/></x>")
            .expect("parses");
        assert_eq!(e.attrs[0].1, "\t\n\r\"'<");
        assert_eq!(e.text, "a\rb\n&");
        assert_eq!(parse(e.to_xml().as_bytes()).expect("reparses"), e);
    }

    /// RFC 4918 §4.3: mixed content keeps its order, and attributes in a namespace (xml:lang too) stay.
    #[test]
    fn round_trips_mixed_content_and_namespaced_attributes() {
        let body =
            r#"<p xmlns="urn:x" xmlns:z="urn:z" xml:lang="de" z:a="1" b="2">eins <i>zwei</i> drei<i z:c="3"/>vier</p>"#;
        let e = parse(body.as_bytes()).expect("parses");
        assert_eq!(e.text, "eins  dreivier");
        assert_eq!(e.lang(), Some("de"));
        assert_eq!(e.ns_attrs[1], ("urn:z".to_string(), "a".to_string(), "1".to_string()));
        let xml = e.to_xml();
        assert!(xml.contains("eins <i>zwei</i> drei<i "), "{xml}");
        assert!(xml.contains("</i>") && xml.ends_with("vier</p>"), "{xml}");
        assert_eq!(parse(xml.as_bytes()).expect("reparses"), e);
    }
}
