//! Writing multistatus bodies and DAV:error bodies.
//!
//! The writer appends to any `io::Write`, so a large listing can be streamed chunk by chunk (see
//! `body::stream_body`). Namespaces are declared once on the root with fixed prefixes; status lines are
//! written exactly as `HTTP/1.1 200 OK` (Thunderbird compares the string).

use super::{NS_CALSERVER, NS_CARDDAV, NS_DAV, PropName};
use crate::body::AnswerSink;
use quick_xml::escape::escape;
use std::borrow::Cow;
use std::io;

pub const XML_CONTENT_TYPE: &str = "application/xml; charset=utf-8";

/// A property's value as it goes into a propstat.
#[derive(Debug, Clone)]
pub enum Value<'a> {
    Empty,
    Text(String),
    /// A card's text as stored (UTF-8, validated when it was written), escaped like `Text`: checking it
    /// again on every read showed in the full sync's profile.
    CardText(Cow<'a, [u8]>),
    /// A card's text already escaped and compressed into a zstd frame (`body::card_xml_frame`), for answers
    /// coded in zstd only: `Multistatus::response` sends it as it is.
    XmlZstd(&'a [u8]),
    /// Inner XML written verbatim (already escaped; uses the root's prefixes).
    Xml(String),
    /// One or more hrefs, each wrapped in `<d:href>` (and escaped).
    Hrefs(Vec<String>),
    /// A whole stored element (a dead property), written verbatim instead of the element itself.
    Raw(String),
}

/// A property in an answer. Its name is borrowed from the request whenever it can be: an answer names the
/// same few properties for every card, and two `String`s per property and card showed in the server's profile.
#[derive(Debug, Clone)]
pub struct Prop<'a> {
    pub name: Cow<'a, PropName>,
    /// Borrowed from the stored card for a card's text or frame: copying each was ~10 % of the bytes a full
    /// sync moves through memcpy.
    pub value: Value<'a>,
}

pub fn status_line(code: u16) -> &'static str {
    match code {
        200 => "HTTP/1.1 200 OK",
        403 => "HTTP/1.1 403 Forbidden",
        404 => "HTTP/1.1 404 Not Found",
        409 => "HTTP/1.1 409 Conflict",
        424 => "HTTP/1.1 424 Failed Dependency",
        507 => "HTTP/1.1 507 Insufficient Storage",
        _ => "HTTP/1.1 500 Internal Server Error",
    }
}

fn prefix_of(ns: &str) -> Option<&'static str> {
    match ns {
        NS_DAV => Some("d"),
        NS_CARDDAV => Some("card"),
        NS_CALSERVER => Some("cs"),
        _ => None,
    }
}

/// Writes `<prefix:name ...>` with a local declaration for namespaces the root does not declare.
fn open_tag(out: &mut Vec<u8>, name: &PropName, empty: bool) {
    out.push(b'<');
    match prefix_of(&name.ns) {
        Some(p) => {
            out.extend_from_slice(p.as_bytes());
            out.push(b':');
            out.extend_from_slice(name.name.as_bytes());
        }
        None if name.ns.is_empty() => out.extend_from_slice(name.name.as_bytes()),
        None => {
            out.extend_from_slice(b"x:");
            out.extend_from_slice(name.name.as_bytes());
            out.extend_from_slice(b" xmlns:x=\"");
            out.extend_from_slice(escape(name.ns.as_str()).as_bytes());
            out.push(b'"');
        }
    }
    if empty {
        out.extend_from_slice(b"/>");
    } else {
        out.push(b'>');
    }
}

fn close_tag(out: &mut Vec<u8>, name: &PropName) {
    out.extend_from_slice(b"</");
    match prefix_of(&name.ns) {
        Some(p) => {
            out.extend_from_slice(p.as_bytes());
            out.push(b':');
        }
        None if name.ns.is_empty() => {}
        None => out.extend_from_slice(b"x:"),
    }
    out.extend_from_slice(name.name.as_bytes());
    out.push(b'>');
}

/// Appends element content with `&`, `<` and `>` escaped, and CR as `&#13;`: XML parsers turn CRLF into LF,
/// and a vCard's lines must keep their CRLF. Quotes need no escaping outside attributes. XML 1.0 cannot carry
/// C0 controls other than TAB, LF and CR, not even as references: one such byte in a stored card would make
/// the whole multistatus unreadable, so each becomes `?` (new cards with them are refused; this covers what
/// was stored before).
///
/// A multiget streams every card through here. Cards seldom hold `>` and never controls, so one vectorized
/// pass looks for those first; without them, memchr (SIMD) finds the rest and the runs between are copied
/// whole; a text that holds them is split at them and its pieces go the same way. Searching each run for `>`
/// again cost more (BENCHMARKS.md, optimization 18).
pub fn push_escaped_text(out: &mut Vec<u8>, text: &[u8]) {
    out.reserve(text.len());
    let rare = |b: u8| (b == b'>') | is_control(b);
    if !text.chunks(64).any(|chunk| chunk.iter().fold(false, |found, &b| found | rare(b))) {
        return push_escaped_common(out, text);
    }
    let mut start = 0;
    for (i, &b) in text.iter().enumerate().filter(|&(_, &b)| rare(b)) {
        push_escaped_common(out, &text[start..i]);
        out.extend_from_slice(if b == b'>' { b"&gt;" } else { b"?" });
        start = i + 1;
    }
    push_escaped_common(out, &text[start..]);
}

/// Escapes `&`, `<` and CR, the bytes a card commonly holds.
fn push_escaped_common(out: &mut Vec<u8>, text: &[u8]) {
    let mut start = 0;
    for i in memchr::memchr3_iter(b'&', b'<', b'\r', text) {
        out.extend_from_slice(&text[start..i]);
        out.extend_from_slice(match text[i] {
            b'&' => b"&amp;",
            b'<' => b"&lt;",
            _ => b"&#13;",
        });
        start = i + 1;
    }
    out.extend_from_slice(&text[start..]);
}

/// A C0 control character that XML 1.0 does not allow (all but TAB, LF, CR).
pub fn is_control(b: u8) -> bool {
    b < 0x20 && b != b'\t' && b != b'\n' && b != b'\r'
}

pub fn write_prop(out: &mut Vec<u8>, prop: &Prop) {
    match &prop.value {
        Value::Empty => open_tag(out, &prop.name, true),
        Value::Raw(xml) => out.extend_from_slice(xml.as_bytes()),
        Value::Text(t) => {
            open_tag(out, &prop.name, false);
            push_escaped_text(out, t.as_bytes());
            close_tag(out, &prop.name);
        }
        Value::CardText(t) => {
            open_tag(out, &prop.name, false);
            push_escaped_text(out, t);
            close_tag(out, &prop.name);
        }
        // Only `Multistatus::response` can send a frame; it never hands one here.
        Value::XmlZstd(_) => open_tag(out, &prop.name, true),
        Value::Xml(x) => {
            open_tag(out, &prop.name, false);
            out.extend_from_slice(x.as_bytes());
            close_tag(out, &prop.name);
        }
        Value::Hrefs(hrefs) => {
            open_tag(out, &prop.name, false);
            for h in hrefs {
                out.extend_from_slice(b"<d:href>");
                push_escaped_text(out, h.as_bytes());
                out.extend_from_slice(b"</d:href>");
            }
            close_tag(out, &prop.name);
        }
    }
}

/// A propstat naming properties (without values) with a status and, optionally, the DAV:error condition
/// that explains it; nothing for no names.
fn names_propstat(b: &mut Vec<u8>, status: u16, names: &[PropName], error: Option<&str>) {
    if names.is_empty() {
        return;
    }
    b.extend_from_slice(b"<d:propstat><d:prop>");
    for n in names {
        open_tag(b, n, true);
    }
    b.extend_from_slice(b"</d:prop>");
    status_and_error(b, status, error);
    b.extend_from_slice(b"</d:propstat>");
}

/// `<d:status>` and, when given, the `<d:error>` condition that explains it (a response's or a propstat's).
fn status_and_error(b: &mut Vec<u8>, status: u16, error: Option<&str>) {
    b.extend_from_slice(b"<d:status>");
    b.extend_from_slice(status_line(status).as_bytes());
    b.extend_from_slice(b"</d:status>");
    if let Some(e) = error {
        b.extend_from_slice(b"<d:error>");
        b.extend_from_slice(e.as_bytes());
        b.extend_from_slice(b"</d:error>");
    }
}

/// Builds a multistatus into a buffer that the caller drains (or keeps) as it goes.
///
/// A response that carries a zstd frame (`Value::XmlZstd`) is sent at once, the frame spliced in, while the
/// other responses wait in the buffer. Each frame ends the frame the answer's own XML is being compressed
/// into, and a new one starts without the history that XML compresses against. Sent in between the cards,
/// that made answers 10 % bigger; with the buffer held back up to `HELD_FOR_FRAMES` (zstd's block size, so it
/// delays no byte), a multiget's small cards stay in one frame after the large ones, for 1-2 %. The large
/// cards then reach the client while the server still compresses the rest. Clients match responses by
/// href, and RFC 4918 gives them no order.
pub struct Multistatus<W: AnswerSink> {
    out: W,
    buf: Vec<u8>,
    flush_at: usize,
    /// Whether the root's start tag was sent (it is in `buf` until then).
    started: bool,
}

const MULTISTATUS_START: &[u8] = br#"<?xml version="1.0" encoding="utf-8"?>
<d:multistatus xmlns:d="DAV:" xmlns:card="urn:ietf:params:xml:ns:carddav" xmlns:cs="http://calendarserver.org/ns/">"#;

/// How much XML an answer that takes frames holds back: zstd emits nothing before a 128 KB block is full.
const HELD_FOR_FRAMES: usize = 128 * 1024;

impl<W: AnswerSink> Multistatus<W> {
    pub fn begin(out: W) -> io::Result<Self> {
        let flush_at = if out.takes_zstd_frames() { HELD_FOR_FRAMES } else { 32 * 1024 };
        // Room for one more response past the flush point, so that the buffer is not grown (and copied) by
        // doubling from a small start in every answer: that was ~0.5 MB of copying per 1,000-card full sync.
        let buf = Vec::with_capacity(flush_at + 16 * 1024);
        let mut m = Multistatus { out, buf, flush_at, started: false };
        m.buf.extend_from_slice(MULTISTATUS_START);
        Ok(m)
    }

    fn flush_if_large(&mut self) -> io::Result<()> {
        if self.buf.len() >= self.flush_at {
            self.out.write_all(&self.buf)?;
            self.buf.clear();
            self.started = true;
        }
        Ok(())
    }

    /// A response with propstats; `found` goes in a 200 propstat, each `(status, props)` after it.
    pub fn response(&mut self, href: &str, found: &[Prop], others: &[(u16, Vec<PropName>)]) -> io::Result<()> {
        if found.iter().any(|p| matches!(p.value, Value::XmlZstd(_))) {
            return self.framed_response(href, found, others);
        }
        response_xml(&mut self.buf, href, found, others, write_prop);
        self.flush_if_large()
    }

    /// A response with a frame among its properties, sent at once (see `Multistatus`). The XML around the
    /// frame goes out as it is made, and the frame after it.
    fn framed_response(&mut self, href: &str, found: &[Prop], others: &[(u16, Vec<PropName>)]) -> io::Result<()> {
        // The root's start tag comes first; responses in the buffer may wait.
        if !self.started {
            self.out.write_all(MULTISTATUS_START)?;
            self.buf.drain(..MULTISTATUS_START.len());
            self.started = true;
        }
        let out = &mut self.out;
        let mut result = Ok(());
        let mut xml = Vec::with_capacity(512);
        response_xml(&mut xml, href, found, others, |b, p| match &p.value {
            Value::XmlZstd(frame) => {
                open_tag(b, &p.name, false);
                if result.is_ok() {
                    result = out.write_all(b).and_then(|()| out.splice_zstd_frame(frame));
                }
                b.clear();
                close_tag(b, &p.name);
            }
            _ => write_prop(b, p),
        });
        result?;
        self.out.write_all(&xml)
    }

    /// A PROPPATCH answer (RFC 4918 §9.2), all or nothing: the `changed` properties with 200, or, when any
    /// was refused, the refused ones with 403 and `cannot-modify-protected-property` (§16) and the others
    /// with 424 (not applied).
    pub fn proppatch_response(&mut self, href: &str, changed: &[PropName], refused: &[PropName]) -> io::Result<()> {
        let b = &mut self.buf;
        b.extend_from_slice(b"<d:response><d:href>");
        push_escaped_text(b, href.as_bytes());
        b.extend_from_slice(b"</d:href>");
        if refused.is_empty() {
            b.extend_from_slice(b"<d:propstat><d:prop>");
            for n in changed {
                open_tag(b, n, true);
            }
            b.extend_from_slice(b"</d:prop><d:status>HTTP/1.1 200 OK</d:status></d:propstat>");
        } else {
            names_propstat(b, 403, refused, Some("<d:cannot-modify-protected-property/>"));
            names_propstat(b, 424, changed, None);
        }
        b.extend_from_slice(b"</d:response>");
        self.flush_if_large()
    }

    /// A response that carries only a status (a deleted member, a missing href, a truncation marker).
    pub fn status_response(&mut self, href: &str, status: u16, error: Option<&str>) -> io::Result<()> {
        let b = &mut self.buf;
        b.extend_from_slice(b"<d:response><d:href>");
        push_escaped_text(b, href.as_bytes());
        b.extend_from_slice(b"</d:href>");
        status_and_error(b, status, error);
        b.extend_from_slice(b"</d:response>");
        self.flush_if_large()
    }

    pub fn sync_token(&mut self, token: &str) -> io::Result<()> {
        self.buf.extend_from_slice(b"<d:sync-token>");
        self.buf.extend_from_slice(escape(token).as_bytes());
        self.buf.extend_from_slice(b"</d:sync-token>");
        Ok(())
    }

    pub fn finish(mut self) -> io::Result<W> {
        self.buf.extend_from_slice(b"</d:multistatus>\n");
        self.out.write_all(&self.buf)?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// A response with propstats into `b`, each found property written by `prop`.
fn response_xml(
    b: &mut Vec<u8>,
    href: &str,
    found: &[Prop],
    others: &[(u16, Vec<PropName>)],
    mut prop: impl FnMut(&mut Vec<u8>, &Prop),
) {
    b.extend_from_slice(b"<d:response><d:href>");
    push_escaped_text(b, href.as_bytes());
    b.extend_from_slice(b"</d:href>");
    if !found.is_empty() || others.iter().all(|(_, p)| p.is_empty()) {
        b.extend_from_slice(b"<d:propstat><d:prop>");
        for p in found {
            prop(b, p);
        }
        b.extend_from_slice(b"</d:prop><d:status>HTTP/1.1 200 OK</d:status></d:propstat>");
    }
    for (status, names) in others {
        names_propstat(b, *status, names, None);
    }
    b.extend_from_slice(b"</d:response>");
}

/// The body of a failed extended MKCOL (RFC 5689 §3): each refused property with 403 and the precondition it
/// failed (`(condition element, properties)`), every other one with 424, since none was applied.
pub fn mkcol_failure_body(refused: &[(&str, Vec<PropName>)], not_applied: &[PropName]) -> Vec<u8> {
    let mut b = br#"<?xml version="1.0" encoding="utf-8"?>
<d:mkcol-response xmlns:d="DAV:" xmlns:card="urn:ietf:params:xml:ns:carddav" xmlns:cs="http://calendarserver.org/ns/">"#
        .to_vec();
    for (condition, names) in refused {
        names_propstat(&mut b, 403, names, Some(condition));
    }
    names_propstat(&mut b, 424, not_applied, None);
    b.extend_from_slice(b"</d:mkcol-response>\n");
    b
}

/// A `DAV:error` body naming one precondition element (e.g. `<card:no-uid-conflict>...`), RFC 4918 §16.
pub fn error_body(condition_xml: &str, message: &str) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(
        br#"<?xml version="1.0" encoding="utf-8"?>
<d:error xmlns:d="DAV:" xmlns:card="urn:ietf:params:xml:ns:carddav" xmlns:cs="http://calendarserver.org/ns/">"#,
    );
    out.extend_from_slice(condition_xml.as_bytes());
    if !message.is_empty() {
        out.extend_from_slice(b"<d:responsedescription>");
        out.extend_from_slice(escape(message).as_bytes());
        out.extend_from_slice(b"</d:responsedescription>");
    }
    out.extend_from_slice(b"</d:error>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::push_escaped_text;

    #[test]
    fn text_escaping_keeps_crlf_and_markup_safe() {
        let mut out = Vec::new();
        push_escaped_text(&mut out, "FN:O'Brien & <Söhne> \"GmbH\"\r\nEND:VCARD\r\n".as_bytes());
        assert_eq!(String::from_utf8(out).unwrap(), "FN:O'Brien &amp; &lt;Söhne&gt; \"GmbH\"&#13;\nEND:VCARD&#13;\n");
        let mut out = b"x".to_vec();
        push_escaped_text(&mut out, b"");
        push_escaped_text(&mut out, b"&");
        assert_eq!(out, b"x&amp;");
    }

    #[test]
    fn control_characters_never_reach_the_xml() {
        let mut out = Vec::new();
        push_escaped_text(&mut out, b"NOTE:a\x0bb\x00c\td <&>\r\n");
        assert_eq!(out, b"NOTE:a?b?c\td &lt;&amp;&gt;&#13;\n");
    }

    /// What `push_escaped_text` must do, by another route: controls become `?`, then each special byte is
    /// replaced everywhere, `&` first so that the references added later are left alone.
    fn escaped_by_replacing(text: &[u8]) -> Vec<u8> {
        let cleaned: Vec<u8> = text.iter().map(|&b| if super::is_control(b) { b'?' } else { b }).collect();
        let replacements: [(u8, &[u8]); 4] = [(b'&', b"&amp;"), (b'<', b"&lt;"), (b'>', b"&gt;"), (b'\r', b"&#13;")];
        replacements.iter().fold(cleaned, |text, &(from, to)| text.split(|&b| b == from).collect::<Vec<_>>().join(to))
    }

    #[test]
    fn the_escaper_equals_a_replacing_one() {
        // Every byte value at every position of a 20-byte text, amid plain bytes, bytes above 0x7f and the
        // other specials: texts with `>` or a control are split at them, the others go to memchr whole.
        for background in [b'x', 0xc3, b'\n', b'&', 0x1f, 0x20, 0x7f, 0xff] {
            for position in 0..20 {
                for byte in 0..=255u8 {
                    let mut text = vec![background; 20];
                    text[position] = byte;
                    let mut out = b"kept".to_vec();
                    push_escaped_text(&mut out, &text);
                    assert_eq!(out[4..], escaped_by_replacing(&text), "{text:?}");
                }
            }
        }
        // Pseudo-random texts of every length up to 300 drawn from an alphabet rich in specials.
        let alphabet = b"ab\t\n\r &<>\x00\x1f\x7f\x80\xc3\xbc]";
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for len in 0..300 {
            let text: Vec<u8> = (0..len)
                .map(|_| {
                    state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    alphabet[(state >> 33) as usize % alphabet.len()]
                })
                .collect();
            let mut out = Vec::new();
            push_escaped_text(&mut out, &text);
            assert_eq!(out, escaped_by_replacing(&text), "{text:?}");
        }
    }
}

#[cfg(test)]
mod framed_tests {
    use super::*;
    use crate::dav::PropName;

    /// Records what a multistatus sends: its XML, and each frame as `[frame N]`.
    #[derive(Default)]
    struct Recorder {
        sent: String,
    }

    impl io::Write for Recorder {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.sent.push_str(std::str::from_utf8(buf).expect("utf-8"));
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl AnswerSink for Recorder {
        fn splice_zstd_frame(&mut self, frame: &[u8]) -> io::Result<()> {
            self.sent.push_str(&format!("[frame {}]", frame[0]));
            Ok(())
        }
        fn takes_zstd_frames(&self) -> bool {
            true
        }
    }

    /// Frames of 100 bytes, each its number repeated.
    const FRAMES: [&[u8]; 4] = [&[0; 100], &[1; 100], &[2; 100], &[3; 100]];

    fn card(frame: Option<u8>) -> Vec<Prop<'static>> {
        let value = match frame {
            Some(n) => Value::XmlZstd(FRAMES[n as usize]),
            None => Value::CardText(Cow::Borrowed(b"BEGIN:VCARD")),
        };
        vec![
            Prop {
                name: Cow::Owned(PropName { ns: NS_DAV.into(), name: "getetag".into() }),
                value: Value::Text("\"e\"".into()),
            },
            Prop { name: Cow::Owned(PropName { ns: NS_CARDDAV.into(), name: "address-data".into() }), value },
        ]
    }

    #[test]
    fn responses_with_frames_go_out_first_and_the_others_after_them() {
        let mut ms = Multistatus::begin(Recorder::default()).expect("begin");
        ms.response("/a", &card(None), &[]).expect("a");
        ms.response("/f1", &card(Some(1)), &[]).expect("f1");
        ms.response("/b", &card(None), &[]).expect("b");
        ms.response("/f2", &card(Some(2)), &[]).expect("f2");
        ms.response("/f3", &card(Some(3)), &[]).expect("f3");
        ms.sync_token("token").expect("token");
        let out = ms.finish().expect("finish");
        assert!(out.sent.starts_with(std::str::from_utf8(MULTISTATUS_START).expect("utf-8")), "the root first");
        let hrefs: Vec<&str> = out.sent.split("<d:href>").skip(1).map(|r| &r[..r.find('<').expect("end")]).collect();
        assert_eq!(hrefs, ["/f1", "/f2", "/f3", "/a", "/b"]);
        let f1 = out.sent.find("[frame 1]").expect("f1's frame");
        assert!(out.sent[..f1].ends_with("<card:address-data>"), "each frame inside its element");
        assert!(out.sent[f1..].starts_with("[frame 1]</card:address-data></d:prop>"));
        assert_eq!(out.sent.matches("<d:response>").count(), out.sent.matches("</d:response>").count());
        assert!(out.sent.ends_with("<d:sync-token>token</d:sync-token></d:multistatus>\n"));
    }

    #[test]
    fn answers_without_frames_are_sent_as_they_fill() {
        // A sink that takes no frames (gzip, identity) gets the XML every 32 KB, as before.
        let mut ms = Multistatus::begin(Vec::new()).expect("begin");
        let mut sent_early = false;
        for i in 0..400 {
            ms.response(&format!("/c{i}"), &card(None), &[]).expect("c");
            sent_early |= !ms.out.is_empty();
        }
        assert!(sent_early, "32 KB reached within 400 responses");
        let out = ms.finish().expect("finish");
        assert!(out.starts_with(MULTISTATUS_START) && out.ends_with(b"</d:multistatus>\n"));
    }
}
