//! vCard handling: the only module that knows calcard.
//!
//! Cards are stored byte-exact as the client sent them (clients keep their own properties and the ETag is
//! a hash of exactly those bytes). We parse to validate, to extract the UID and the search columns, to
//! evaluate query filters, and to convert between 3.0 and 4.0 when a client asks for the other version.

pub mod contact;

use crate::store::NewCard;
use calcard::vcard::{VCard, VCardEntry, VCardParameterName, VCardProperty, VCardValue, VCardVersion};
use calcard::{Entry, Parser};
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::collections::HashMap;
use unicode_normalization::UnicodeNormalization;

/// The vCard versions a CardDAV client can ask for (RFC 6352 supported-address-data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V3,
    V4,
}

impl Version {
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V3 => "3.0",
            Version::V4 => "4.0",
        }
    }

    pub fn parse(s: &str) -> Option<Version> {
        match s.trim() {
            "3.0" => Some(Version::V3),
            "4.0" => Some(Version::V4),
            _ => None,
        }
    }

    fn calcard(self) -> VCardVersion {
        match self {
            Version::V3 => VCardVersion::V3_0,
            Version::V4 => VCardVersion::V4_0,
        }
    }
}

/// Why a body was refused as a card.
#[derive(Debug, Clone, PartialEq)]
pub enum Invalid {
    /// Not a vCard at all, or a version CardDAV does not carry (415, supported-address-data).
    Unsupported(String),
    /// A vCard, but not a valid single one (400, valid-address-data).
    Malformed(String),
}

/// A card that passed validation, ready to store.
pub struct ValidCard {
    pub new_card: NewCard,
    pub version: Version,
}

pub fn etag_of(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

fn strip_bom(text: &str) -> &str {
    text.strip_prefix('\u{feff}').unwrap_or(text)
}

/// Validates a PUT body: UTF-8, exactly one vCard 3.0 or 4.0 with BEGIN/END, a UID and an FN.
pub fn validate(bytes: &[u8]) -> Result<ValidCard, Invalid> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        Invalid::Unsupported(format!("the body is not UTF-8 text (invalid byte at offset {})", e.valid_up_to()))
    })?;
    let text = strip_bom(text);
    if let Some(b) = text.bytes().find(|&b| crate::dav::response::is_control(b)) {
        // No vCard property may hold one (RFC 6350 §3.3 excludes controls from values), and XML cannot carry
        // it: a multiget answer with this card would be unreadable for the client.
        return Err(Invalid::Malformed(format!("the vCard contains the control character U+{b:04X}")));
    }
    let trimmed = text.trim();
    if !starts_with_ignore_case(trimmed, "BEGIN:VCARD") {
        return Err(Invalid::Unsupported("the body is not a vCard (it must start with BEGIN:VCARD)".into()));
    }
    if !ends_with_ignore_case(trimmed, "END:VCARD") {
        return Err(Invalid::Malformed("the vCard is not terminated by END:VCARD".into()));
    }
    let input = calcard_input(text);
    let mut parser = Parser::new(&input);
    let card = match parser.entry() {
        Entry::VCard(card) => card,
        Entry::ICalendar(_) => return Err(Invalid::Unsupported("the body is iCalendar data, not a vCard".into())),
        Entry::InvalidLine(line) => return Err(Invalid::Malformed(format!("invalid line: {}", clip(&line)))),
        Entry::UnterminatedComponent(c) => return Err(Invalid::Malformed(format!("unterminated component {c}"))),
        Entry::Eof => return Err(Invalid::Malformed("empty vCard".into())),
        _ => return Err(Invalid::Malformed("the body could not be parsed as a vCard".into())),
    };
    match parser.entry() {
        Entry::Eof => {}
        Entry::VCard(_) => {
            return Err(Invalid::Malformed(
                "a card resource must hold exactly one vCard, this body has several".into(),
            ));
        }
        _ => return Err(Invalid::Malformed("unexpected data after END:VCARD".into())),
    }
    let version = match card.version() {
        Some(VCardVersion::V3_0) => Version::V3,
        Some(VCardVersion::V4_0) => Version::V4,
        Some(other) => {
            return Err(Invalid::Unsupported(format!(
                "vCard version {} is not supported over CardDAV (use 3.0 or 4.0; import handles older cards)",
                version_label(other)
            )));
        }
        None => {
            // calcard knows only 2.0, 2.1, 3.0 and 4.0; any other VERSION value (`4`, `5.0`) is a version we do
            // not carry, which is not the same as a missing VERSION.
            if let Some(v) = card.property(&VCardProperty::Version).map(property_text)
                && !v.trim().is_empty()
            {
                return Err(Invalid::Unsupported(format!(
                    "vCard version '{}' is not supported over CardDAV (use 3.0 or 4.0)",
                    clip(v.trim())
                )));
            }
            return Err(Invalid::Malformed("the vCard has no VERSION property".into()));
        }
    };
    if let Some(why) = bad_content_line(text) {
        return Err(Invalid::Malformed(why));
    }
    let uid = card.uid().map(str::trim).unwrap_or_default();
    if uid.is_empty() {
        return Err(Invalid::Malformed("the vCard has no UID property (RFC 6352 §5.1 requires one)".into()));
    }
    if card.property(&VCardProperty::Fn).is_none() {
        return Err(Invalid::Malformed("the vCard has no FN property (RFC 6350 §6.2.1 requires one)".into()));
    }
    Ok(ValidCard { new_card: indexed(bytes, &card, uid, version), version })
}

/// A stored card with search columns made by today's folding (see `Store::refresh_search_columns`). Read as
/// leniently as every stored card is read (`parse_stored`), not checked like a PUT: a card stored before a
/// check was added must get its columns too.
pub fn reindex_stored(bytes: &[u8]) -> Option<NewCard> {
    let card = parse_stored(bytes)?;
    let version = if matches!(card.version(), Some(VCardVersion::V3_0)) { Version::V3 } else { Version::V4 };
    let uid = card.uid().map(str::trim).unwrap_or_default().to_string();
    Some(indexed(bytes, &card, &uid, version))
}

/// The card as the store keeps it: its bytes, ETag and search columns.
fn indexed(bytes: &[u8], card: &VCard, uid: &str, version: Version) -> NewCard {
    // Every FN (language variants too), so the search column finds what the query filter would match.
    let fn_text =
        card.entries.iter().filter(|e| e.name == VCardProperty::Fn).map(property_text).collect::<Vec<_>>().join("\n");
    let index = SearchIndex::of(card);
    let projected = contact::project(card);
    NewCard {
        uid: uid.to_string(),
        etag: etag_of(bytes),
        bytes: bytes.to_vec(),
        version: version.as_str().to_string(),
        fn_lower: unicode_casemap(&fn_text),
        emails_lower: index.emails,
        phones_lower: index.phones,
        org_lower: index.org,
        fields_json: projected.fields_json(),
        search: projected.search_text(),
        // Made here, on the request's task, not under the store's write lock.
        xml_zstd: crate::body::card_xml_frame(bytes),
    }
}

/// Why the card's text is not well-formed content lines, if it is not: the first logical (unfolded) line that
/// has no colon or no property name (calcard would skip it silently). Folded lines and quoted-printable soft line breaks (a line ending in `=`,
/// common from old phones) continue the line before.
fn bad_content_line(text: &str) -> Option<String> {
    let mut logical: Vec<String> = Vec::new();
    let mut soft_break = false;
    for physical in text.split('\n') {
        let line = physical.trim_end_matches('\r');
        match logical.last_mut() {
            Some(last) if soft_break => last.push_str(line),
            Some(last) if line.starts_with([' ', '\t']) => last.push_str(&line[1..]),
            _ => logical.push(line.to_string()),
        }
        let current = logical.last().map(String::as_str).unwrap_or_default();
        soft_break = line.ends_with('=') && current.to_ascii_uppercase().contains("QUOTED-PRINTABLE");
    }
    for line in logical.iter().filter(|l| !l.trim().is_empty()) {
        let Some(colon) = line.find(':') else {
            return Some(format!("a content line has no ':' (name:value): {}", clip(line)));
        };
        // Real producers put spaces and slashes in X- names ("X-GOOGLE TALK"), so only an empty name is refused.
        if line[..colon].split(';').next().unwrap_or_default().trim().is_empty() {
            return Some(format!("a content line has no property name: {}", clip(line)));
        }
    }
    None
}

#[cfg(test)]
mod line_tests {
    use super::bad_content_line;

    #[test]
    fn content_lines() {
        assert_eq!(bad_content_line("BEGIN:VCARD\r\nFN:A\r\n b\r\nitem1.X-ABLabel:x\r\nEND:VCARD\r\n"), None);
        let qp = "BEGIN:VCARD\r\nLABEL;ENCODING=QUOTED-PRINTABLE:a=0D=0A=\r\nb=\r\nc\r\nEND:VCARD";
        assert_eq!(bad_content_line(qp), None);
        for bad in [
            "BEGIN:VCARD\r\nno colon here\r\nEND:VCARD\r\n",
            "BEGIN:VCARD\r\nNOTE:x=\r\nno colon\r\nEND:VCARD",
            "BEGIN:VCARD\r\n:value\r\nEND:VCARD",
        ] {
            assert!(bad_content_line(bad).is_some(), "{bad}");
        }
    }
}

fn version_label(v: VCardVersion) -> &'static str {
    match v {
        VCardVersion::V2_0 => "2.0",
        VCardVersion::V2_1 => "2.1",
        VCardVersion::V3_0 => "3.0",
        VCardVersion::V4_0 => "4.0",
    }
}

fn clip(s: &str) -> String {
    s.chars().take(80).collect()
}

fn starts_with_ignore_case(s: &str, prefix: &str) -> bool {
    s.len() >= prefix.len() && s.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

fn ends_with_ignore_case(s: &str, suffix: &str) -> bool {
    s.len() >= suffix.len() && s.as_bytes()[s.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
}

/// The lower-cased search columns; the same text the query filter compares, so the SQL pre-filter is exact
/// about which cards can match.
/// The version of the folding that the stored search columns hold (`unicode_casemap` for CardDAV queries,
/// `contact::fold` for the quick search and the API's filters). Raise it when either changes: the columns
/// are made again at the next start (see `open_store`).
pub const SEARCH_COLUMNS_VERSION: &str = "5";

/// The `i;unicode-casemap` collation's form of a text (RFC 4790 §9.3, RFC 5051): compatibility-decomposed
/// (NFKD), then lower-cased letter by letter, with final sigma as sigma. So `José` written precomposed or
/// decomposed, `ﬁ` and `fi`, `ＡＢＣ` and `abc` compare equal. The search columns hold this form, so a
/// query's pre-filter can use them.
pub fn unicode_casemap(s: &str) -> String {
    if s.is_ascii() {
        return s.to_ascii_lowercase();
    }
    s.nfkd().flat_map(char::to_lowercase).map(|c| if c == 'ς' { 'σ' } else { c }).collect()
}

struct SearchIndex {
    emails: String,
    phones: String,
    org: String,
}

impl SearchIndex {
    fn of(card: &VCard) -> Self {
        let join = |prop: VCardProperty| {
            card.properties(&prop).map(|e| unicode_casemap(&property_text(e))).collect::<Vec<_>>().join("\n")
        };
        // Each address as written (a CardDAV text-match's pre-filter looks for a part of it) and, when that
        // differs, as the address itself (`contact::email_key`: no blanks around it, no `mailto:`), the line
        // that erasure, subject access, ingest and import look up.
        let emails = card
            .properties(&VCardProperty::Email)
            .flat_map(|e| {
                let text = property_text(e);
                let (written, key) = (unicode_casemap(&text), contact::email_key(&text));
                let key = (key != written && !key.is_empty()).then_some(key);
                std::iter::once(written).chain(key)
            })
            .collect::<Vec<_>>()
            .join("\n");
        SearchIndex { emails, phones: join(VCardProperty::Tel), org: join(VCardProperty::Org) }
    }
}

/// Parses a stored card (already validated on the way in) for filtering or conversion.
pub fn parse_stored(bytes: &[u8]) -> Option<VCard> {
    let text = strip_bom(std::str::from_utf8(bytes).ok()?);
    let mut card = VCard::parse(calcard_input(text).as_ref()).ok()?;
    restore_binary_values(&mut card, text);
    Some(card)
}

/// calcard decodes a 3.0 (or 2.1) `ENCODING=b` value that happens to be valid UTF-8 into a text value
/// instead of bytes (other bytes it keeps as binary), so such a SOUND reached 4.0 clients as text with NUL
/// bytes, and so did any other property (the vcard fuzz target found an `X-` one). The card's own lines tell
/// which values were base64; those text values go back to being the bytes calcard decoded, a SOUND with a
/// media type from its TYPE (`OGG` → `audio/ogg`), and then become a `data:` URI in 4.0 and `ENCODING=b`
/// in 3.0, like a PHOTO.
pub fn restore_binary_values(card: &mut VCard, text: &str) {
    // Cheap ways out for the common card (every card read for a query passes through here): only a text
    // value of a property that holds data, or one with a control character, can be such a value worth undoing.
    let suspect = |e: &VCardEntry| match e.values.as_slice() {
        [VCardValue::Text(t)] => {
            matches!(e.name, VCardProperty::Photo | VCardProperty::Logo | VCardProperty::Sound | VCardProperty::Key)
                || t.bytes().any(crate::dav::response::is_control)
        }
        _ => false,
    };
    if !card.entries.iter().any(suspect) {
        return;
    }
    let upper_has = |needle: &[u8]| text.as_bytes().windows(needle.len()).any(|w| w.eq_ignore_ascii_case(needle));
    if !upper_has(b"BASE64") && !upper_has(b"ENCODING=B") && !upper_has(b"ENCODING=\"B") {
        return;
    }
    // Per property name, in order: was its line base64?
    let mut encoded: HashMap<String, Vec<bool>> = HashMap::new();
    for l in contact::logical_lines(text) {
        let line = contact::unfold(l.trim_end_matches(['\r', '\n']));
        // Every line counts (calcard may read one this split cannot), but only a clean head can say base64.
        let head = contact::split_value(&line).map_or("", |(head, _)| head);
        let base64 = head.split(';').skip(1).any(|p| {
            let p = p.replace('"', "").to_ascii_uppercase();
            let p = p.trim();
            p == "ENCODING=B" || p == "ENCODING=BASE64" || p == "BASE64"
        });
        encoded.entry(contact::line_name(&line).1).or_default().push(base64);
    }
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut restored: Vec<usize> = Vec::new();
    for (i, entry) in card.entries.iter().enumerate() {
        let name = entry.name.as_str().to_ascii_uppercase();
        let n = seen.entry(name.clone()).or_default();
        let was_base64 = encoded.get(&name).and_then(|lines| lines.get(*n)).copied().unwrap_or(false);
        *n += 1;
        if was_base64 && suspect(entry) {
            restored.push(i);
        }
    }
    // A name with a different count of lines and entries: calcard read other lines than these; leave it.
    let aligned = |name: &str| encoded.get(name).map_or(0, Vec::len) == seen.get(name).copied().unwrap_or(0);
    for i in restored {
        let entry = &mut card.entries[i];
        if !aligned(&entry.name.as_str().to_ascii_uppercase()) {
            continue;
        }
        let [VCardValue::Text(decoded)] = entry.values.as_slice() else { continue };
        let data = decoded.clone().into_bytes();
        let content_type = (entry.name == VCardProperty::Sound).then(|| {
            let types = parameter_values(entry, "TYPE");
            types
                .iter()
                .flat_map(|v| v.split(','))
                .find_map(audio_media_type)
                .unwrap_or_else(|| "application/octet-stream".to_string())
        });
        entry.values = vec![VCardValue::Binary(calcard::common::Data { content_type, data })];
    }
}

/// The media type for a 3.0 SOUND's TYPE value: a media type as it is, the common audio formats by name.
fn audio_media_type(type_value: &str) -> Option<String> {
    let t = type_value.trim().to_ascii_lowercase();
    let known = match t.as_str() {
        _ if t.contains('/') => return Some(t),
        "ogg" | "oga" | "vorbis" => "audio/ogg",
        "mp3" | "mpeg" => "audio/mpeg",
        "wav" | "wave" => "audio/wav",
        "aac" => "audio/aac",
        "basic" | "au" => "audio/basic",
        "aiff" | "aif" => "audio/aiff",
        "mp4" | "m4a" => "audio/mp4",
        "flac" => "audio/flac",
        "opus" => "audio/opus",
        _ => return None,
    };
    Some(known.to_string())
}

/// The card text as calcard should read it. calcard reads the dates of BDAY, ANNIVERSARY and DEATHDATE in
/// RFC 6350's basic format only: the extended `1983-02-03`, which many producers write (and vCard 3.0
/// allows), became `1983-02`, and `--04-16` became `--4`, so an Apple client (served 3.0) lost the day of
/// every such birthday. Those values are handed over in the basic format (`19830203`, `--0416`); the stored
/// bytes stay as they came.
pub fn calcard_input(text: &str) -> Cow<'_, str> {
    if !text.lines().any(|line| basic_date_line(line).is_some()) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(
        text.split_inclusive('\n').map(|line| basic_date_line(line).unwrap_or_else(|| line.to_string())).collect(),
    )
}

/// `[group.]BDAY|ANNIVERSARY|DEATHDATE[;params]:<extended date>` in the basic format, if it is one.
fn basic_date_line(line: &str) -> Option<String> {
    // The name first, without allocating: every line of every card parsed passes through here.
    let name = line[..line.find([';', ':'])?].rsplit('.').next()?;
    if !["BDAY", "ANNIVERSARY", "DEATHDATE"].iter().any(|n| name.eq_ignore_ascii_case(n)) {
        return None;
    }
    let (head, rest) = contact::split_value(line)?;
    if head.to_ascii_uppercase().contains("VALUE=TEXT") {
        return None;
    }
    let value = rest.trim_end_matches(['\r', '\n']);
    let basic = basic_date(value)?;
    Some(format!("{head}:{basic}{}", &rest[value.len()..]))
}

/// `1983-02-03` → `19830203`, `--04-16` → `--0416`, with an optional time `T20:12:43+04:00` → `T201243+0400`.
/// Anything else (already basic, reduced accuracy like `1983-02`, text) gives `None`.
fn basic_date(value: &str) -> Option<String> {
    let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
    let (date, time) = match value.split_once(['T', 't']) {
        Some((d, t)) => (d, Some(t)),
        None => (value, None),
    };
    let date = match date.split('-').collect::<Vec<_>>().as_slice() {
        [y, m, d] if digits(y, 4) && digits(m, 2) && digits(d, 2) => format!("{y}{m}{d}"),
        ["", "", m, d] if digits(m, 2) && digits(d, 2) => format!("--{m}{d}"),
        _ => return None,
    };
    match time {
        None => Some(date),
        Some(t) if t.bytes().all(|b| b.is_ascii_digit() || b"+-:Zz.".contains(&b)) => {
            Some(format!("{date}T{}", t.replace(':', "")))
        }
        Some(_) => None,
    }
}

/// The text value of a property as a text-match sees it: structured components joined with `;`, list values
/// with `,`.
pub fn property_text(entry: &VCardEntry) -> String {
    let structured =
        matches!(entry.name, VCardProperty::N | VCardProperty::Adr | VCardProperty::Org | VCardProperty::Gender);
    let separator = if structured { ";" } else { "," };
    let mut out = String::new();
    for (i, value) in entry.values.iter().enumerate() {
        if i > 0 {
            out.push_str(separator);
        }
        match value {
            VCardValue::Component(parts) => out.push_str(&parts.join(",")),
            VCardValue::Integer(n) => out.push_str(&n.to_string()),
            VCardValue::Float(f) => out.push_str(&f.to_string()),
            VCardValue::Boolean(b) => out.push_str(if *b { "TRUE" } else { "FALSE" }),
            VCardValue::PartialDateTime(_) | VCardValue::Binary(_) => {
                // Dates and binary data: compare against the written form of the property.
                let mut line = String::new();
                if entry.write_to(&mut line, true).is_ok()
                    && let Some((_, v)) = line.split_once(':')
                {
                    out.push_str(v.trim_end());
                }
            }
            other => out.push_str(other.as_text().unwrap_or_default()),
        }
    }
    out
}

/// Does this entry carry the property `name` (case-insensitive, `X-` names included)?
pub fn entry_is(entry: &VCardEntry, name: &str) -> bool {
    entry.name.as_str().eq_ignore_ascii_case(name)
}

/// The values of parameter `name` on an entry, as text.
pub fn parameter_values(entry: &VCardEntry, name: &str) -> Vec<String> {
    let wanted =
        VCardParameterName::try_parse(name.as_bytes()).unwrap_or_else(|| VCardParameterName::Other(name.to_string()));
    entry
        .params
        .iter()
        .filter(|p| match (&p.name, &wanted) {
            (VCardParameterName::Other(a), VCardParameterName::Other(b)) => a.eq_ignore_ascii_case(b),
            (a, b) => a == b,
        })
        .map(|p| p.value.clone().into_text().into_owned())
        .collect()
}

const APPLE_KIND: &str = "X-ADDRESSBOOKSERVER-KIND";
const APPLE_MEMBER: &str = "X-ADDRESSBOOKSERVER-MEMBER";

/// Serializes a card in `target` version. Group cards switch between Apple's `X-ADDRESSBOOKSERVER-KIND` /
/// `-MEMBER` (3.0) and RFC 6350 `KIND` / `MEMBER` (4.0); unknown `X-` properties pass through.
pub fn write_as(card: &VCard, target: Version) -> String {
    let mut card = card.clone();
    for entry in &mut card.entries {
        match (target, &entry.name) {
            (Version::V4, VCardProperty::Other(n)) if n.eq_ignore_ascii_case(APPLE_KIND) => {
                entry.name = VCardProperty::Kind;
            }
            (Version::V4, VCardProperty::Other(n)) if n.eq_ignore_ascii_case(APPLE_MEMBER) => {
                entry.name = VCardProperty::Member;
            }
            (Version::V3, VCardProperty::Kind) => entry.name = VCardProperty::Other(APPLE_KIND.into()),
            (Version::V3, VCardProperty::Member) => entry.name = VCardProperty::Other(APPLE_MEMBER.into()),
            _ => {}
        }
        if matches!(target, Version::V4) {
            inline_data_uris(entry);
        }
        if entry.name == VCardProperty::Geo {
            convert_geo(entry, target);
        }
        if matches!(target, Version::V3) && matches!(entry.name, VCardProperty::Other(ref n) if n == APPLE_KIND) {
            // 3.0 readers expect the plain text value ("group"), not a KIND enum.
            entry.values =
                entry.values.iter().map(|v| VCardValue::Text(v.as_text().unwrap_or_default().to_lowercase())).collect();
        }
    }
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = card.write_to(&mut out, target.calcard());
    out
}

/// 4.0 carries inline photos (and logos, sounds, keys) as `data:` URIs (RFC 6350 §6.2.4). calcard writes a
/// binary value as `data:TYPE;base64\,…`, escaping the comma as if the value were text; a URI is not
/// backslash-escaped, and readers that take the URI literally (Thunderbird's ical.js among them) get a
/// broken image. So binary values of URI-typed properties become the data: URI text, written unescaped,
/// with a media type guessed from the bytes when the 3.0 card named none. The 3.0-only `VALUE=BINARY`
/// goes with it.
fn inline_data_uris(entry: &mut VCardEntry) {
    use base64::Engine;
    let uri_typed =
        matches!(entry.name, VCardProperty::Photo | VCardProperty::Logo | VCardProperty::Sound | VCardProperty::Key);
    if !uri_typed {
        return;
    }
    let explicit_text = parameter_values(entry, "VALUE").iter().any(|v| v.eq_ignore_ascii_case("text"));
    if explicit_text {
        return;
    }
    // Thunderbird writes 3.0 photos as bare base64 without `ENCODING=b`, which calcard keeps as text; in
    // 4.0 that text would be read as a (broken) URI. Only values that decode to a known image format are
    // taken as inline images.
    for value in &mut entry.values {
        if let VCardValue::Text(t) = value
            && !t.contains(':')
            && t.len() >= 16
        {
            let compact: String = t.chars().filter(|c| !c.is_whitespace()).collect();
            if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(compact.as_bytes())
                && sniff_media_type(&bytes).is_some()
            {
                *value = VCardValue::Binary(calcard::common::Data { content_type: None, data: bytes });
            }
        }
    }
    if !entry.values.iter().any(|v| matches!(v, VCardValue::Binary(_))) {
        return;
    }
    for value in &mut entry.values {
        if let VCardValue::Binary(data) = value {
            let media_type = data
                .content_type
                .clone()
                .filter(|t| !t.trim().is_empty())
                .or_else(|| sniff_media_type(&data.data).map(str::to_string))
                .unwrap_or_default();
            let encoded = base64::engine::general_purpose::STANDARD.encode(&data.data);
            *value = VCardValue::Text(format!("data:{media_type};base64,{encoded}"));
        }
    }
    entry.params.retain(|p| {
        !(p.name == VCardParameterName::Value && p.value.clone().into_text().eq_ignore_ascii_case("binary"))
    });
}

/// GEO is `lat;lon` in 3.0 (RFC 2426 §3.4.2) and a `geo:lat,lon` URI in 4.0 (RFC 6350 §6.5.2, RFC 5870);
/// calcard copies the value as it is, so each version's readers would get the other's form.
fn convert_geo(entry: &mut VCardEntry, target: Version) {
    let text = entry.values.iter().filter_map(|v| v.as_text()).collect::<Vec<_>>().join(";");
    let text = text.trim();
    let (is_uri, coordinates) = match text.get(..4) {
        Some(p) if p.eq_ignore_ascii_case("geo:") => (true, text[4..].split(';').next().unwrap_or_default()),
        _ => (false, text),
    };
    let parts: Vec<&str> = coordinates.split([',', ';']).map(str::trim).collect();
    if parts.len() < 2 || parts[..2].iter().any(|p| p.parse::<f64>().is_err()) {
        return;
    }
    match target {
        Version::V4 if !is_uri => entry.values = vec![VCardValue::Text(format!("geo:{},{}", parts[0], parts[1]))],
        Version::V3 if is_uri || parts.len() != 2 || text.contains(',') => {
            entry.values = vec![VCardValue::Text(parts[0].to_string()), VCardValue::Text(parts[1].to_string())];
            entry.params.retain(|p| p.name != VCardParameterName::Value);
        }
        _ => {}
    }
}

/// The media type of common inline images, from their first bytes.
fn sniff_media_type(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(&[0xff, 0xd8, 0xff]) {
        Some("image/jpeg")
    } else if bytes.starts_with(b"\x89PNG") {
        Some("image/png")
    } else if bytes.starts_with(b"GIF8") {
        Some("image/gif")
    } else if bytes.len() > 12 && bytes.starts_with(b"RIFF") && &bytes[8..12] == b"WEBP" {
        Some("image/webp")
    } else {
        None
    }
}

/// The card as JSContact (RFC 9553) JSON, converted by calcard.
pub fn to_jscontact(card: &VCard) -> String {
    let js = card.clone().into_jscontact::<String, String>();
    serde_json::to_string(&js.0).unwrap_or_else(|_| "{}".into())
}

/// Keeps only the named properties (plus BEGIN, END, VERSION, UID), for `address-data` subsets.
/// The card with only the named properties (and those every card needs); `without_value` ones keep their
/// name and parameters with an empty value (`novalue="yes"`, RFC 6352 §10.4.2).
pub fn subset(card: &VCard, names: &[String], without_value: &[String]) -> VCard {
    let entries = card
        .entries
        .iter()
        .filter(|e| {
            matches!(e.name, VCardProperty::Begin | VCardProperty::End | VCardProperty::Version | VCardProperty::Uid)
                || names.iter().any(|n| entry_is(e, n))
        })
        .map(|e| {
            let mut e = e.clone();
            if without_value.iter().any(|n| entry_is(&e, n)) {
                e.values = vec![VCardValue::Text(String::new())];
            }
            e
        })
        .collect();
    VCard { entries }
}

/// The bytes a client gets for a stored card: the stored bytes when no other version (or subset: the names
/// to keep, and of those the ones to keep without value) is wanted, otherwise a conversion. Returns
/// `(bytes, converted)`.
pub fn render<'a>(
    stored: &'a [u8],
    stored_version: &str,
    want: Option<Version>,
    props: Option<(&[String], &[String])>,
) -> (Cow<'a, [u8]>, bool) {
    let same_version = want.is_none_or(|w| w.as_str() == stored_version);
    if same_version && props.is_none() {
        // Borrowed: every card of a multiget or export takes this way, and a copy of each showed in profiles.
        return (Cow::Borrowed(stored), false);
    }
    let Some(card) = parse_stored(stored) else {
        return (Cow::Borrowed(stored), false);
    };
    let target = want.or_else(|| Version::parse(stored_version)).unwrap_or(Version::V4);
    let card = match props {
        Some((names, without_value)) => subset(&card, names, without_value),
        None => card,
    };
    let out = write_as(&card, target);
    // A card whose odd content the converter cannot carry over is served as stored rather than broken; so
    // is one whose conversion wrote control characters (a base64 value calcard read as text, see
    // `restore_binary_values`): a stored card has none, and XML could not carry them.
    let controls = out.bytes().any(crate::dav::response::is_control);
    if controls || bad_content_line(&out).is_some() || parse_stored(out.as_bytes()).is_none() {
        tracing::warn!(version = %stored_version, "a card could not be converted cleanly; serving it as stored");
        return (Cow::Borrowed(stored), false);
    }
    (Cow::Owned(out.into_bytes()), true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by a review: calcard read the extended format of 4.0 dates wrongly, and conversions served the
    /// damage (an Apple client got `BDAY:1983-02` for `BDAY:1983-02-03`).
    #[test]
    fn dates_keep_their_day_through_a_conversion() {
        for (version, line, want) in [
            ("4.0", "BDAY:1983-02-03", "BDAY:1983-02-03"),
            ("4.0", "BDAY;VALUE=DATE:1983-02-03", "BDAY;VALUE=DATE:1983-02-03"),
            ("4.0", "item1.BDAY:1983-02-03", "item1.BDAY:1983-02-03"),
            ("4.0", "BDAY:--04-16", "BDAY:--04-16"),
            ("4.0", "ANNIVERSARY:2009-08-08", "ANNIVERSARY:2009-08-08"),
            ("4.0", "DEATHDATE:1983-02-03", "DEATHDATE:1983-02-03"),
            ("4.0", "BDAY:1996-04-15T20:12:43+04:00", "BDAY:1996-04-15T20:12:43+04:00"),
            ("4.0", "BDAY:1983-02", "BDAY:1983-02"),
            ("4.0", "BDAY;VALUE=text:circa 1800", "BDAY;VALUE=TEXT:circa 1800"),
            ("3.0", "BDAY:1983-02-03", "BDAY:19830203"),
            ("3.0", "BDAY:19830203", "BDAY:19830203"),
        ] {
            let text = format!("BEGIN:VCARD\r\nVERSION:{version}\r\nUID:x\r\nFN:X\r\n{line}\r\nEND:VCARD\r\n");
            let to = if version == "4.0" { Version::V3 } else { Version::V4 };
            let (out, converted) = render(text.as_bytes(), version, Some(to), None);
            assert!(converted, "{line}");
            let out = String::from_utf8(out.into_owned()).expect("utf-8");
            assert!(out.lines().any(|l| l == want), "{version} {line} -> {out}");
        }
        // The stored bytes are never rewritten: validation reads the basic form but keeps the card as sent.
        let text = "BEGIN:VCARD\r\nVERSION:4.0\r\nUID:x\r\nFN:X\r\nBDAY:1983-02-03\r\nEND:VCARD\r\n";
        assert_eq!(validate(text.as_bytes()).expect("valid").new_card.bytes, text.as_bytes());
    }

    const V3: &str = "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:abc\r\nFN:Jürgen Müller\r\nN:Müller;Jürgen;;;\r\n\
EMAIL;TYPE=INTERNET,WORK:JM@Example.com\r\nTEL;TYPE=CELL:+49 30 1234\r\nitem1.X-ABLabel:Custom\r\nEND:VCARD\r\n";

    #[test]
    fn unicode_casemap_equates_compositions_compatibility_forms_and_cases() {
        let same = |a: &str, b: &str| assert_eq!(unicode_casemap(a), unicode_casemap(b), "{a} vs {b}");
        same("José", "Jose\u{301}");
        same("ﬁsh", "FISH");
        same("ＡＢＣ", "abc");
        same("ΟΔΟΣ", "οδοσ");
        same("Straße", "STRAßE");
        assert_ne!(unicode_casemap("José"), unicode_casemap("Jose"), "accents still count");
    }

    #[test]
    fn validates_and_indexes() {
        let card = validate(V3.as_bytes()).expect("valid");
        assert_eq!(card.version, Version::V3);
        assert_eq!(card.new_card.uid, "abc");
        assert_eq!(card.new_card.fn_lower, "ju\u{308}rgen mu\u{308}ller", "the i;unicode-casemap form (NFKD)");
        assert_eq!(card.new_card.emails_lower, "jm@example.com");
        assert_eq!(card.new_card.bytes, V3.as_bytes());
    }

    #[test]
    fn refuses_what_is_not_one_valid_card() {
        let no_uid = V3.replace("UID:abc\r\n", "");
        assert!(matches!(validate(no_uid.as_bytes()), Err(Invalid::Malformed(_))));
        let no_end = V3.replace("END:VCARD\r\n", "");
        assert!(matches!(validate(no_end.as_bytes()), Err(Invalid::Malformed(_))));
        let two = format!("{V3}{V3}");
        assert!(matches!(validate(two.as_bytes()), Err(Invalid::Malformed(_))));
        assert!(matches!(validate(b"\xff\xfe"), Err(Invalid::Unsupported(_))));
        assert!(matches!(validate(b"BEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n"), Err(Invalid::Unsupported(_))));
        let v21 = V3.replace("VERSION:3.0", "VERSION:2.1");
        assert!(matches!(validate(v21.as_bytes()), Err(Invalid::Unsupported(_))));
    }

    #[test]
    fn converts_groups_between_versions() {
        let group = "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:g1\r\nFN:Team\r\nX-ADDRESSBOOKSERVER-KIND:group\r\n\
X-ADDRESSBOOKSERVER-MEMBER:urn:uuid:abc\r\nX-CUSTOM:kept\r\nEND:VCARD\r\n";
        let (v4, converted) = render(group.as_bytes(), "3.0", Some(Version::V4), None);
        let v4 = String::from_utf8(v4.into_owned()).expect("utf8");
        assert!(converted);
        assert!(v4.contains("VERSION:4.0"), "{v4}");
        assert!(v4.contains("KIND:group"), "{v4}");
        assert!(v4.contains("MEMBER:urn:uuid:abc"), "{v4}");
        assert!(!v4.contains("X-ADDRESSBOOKSERVER"), "{v4}");
        assert!(v4.contains("X-CUSTOM:kept"), "{v4}");
        let (back, _) = render(v4.as_bytes(), "4.0", Some(Version::V3), None);
        let back = String::from_utf8(back.into_owned()).expect("utf8");
        assert!(back.contains("X-ADDRESSBOOKSERVER-KIND:group"), "{back}");
        assert!(back.contains("X-ADDRESSBOOKSERVER-MEMBER:urn:uuid:abc"), "{back}");
    }

    #[test]
    fn photos_become_unescaped_data_uris_in_4_0() {
        let v3 = "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:p\r\nFN:P\r\nPHOTO;ENCODING=b;TYPE=JPEG:/9j/4AAQ\r\n\
PHOTO;ENCODING=b:iVBORw0KGgo=\r\nEND:VCARD\r\n";
        let (v4, _) = render(v3.as_bytes(), "3.0", Some(Version::V4), None);
        let v4 = String::from_utf8(v4.into_owned()).expect("utf8");
        assert!(v4.contains(":data:image/jpeg;base64,/9j/4AAQ\r\n"), "{v4}");
        assert!(v4.contains("PHOTO:data:image/png;base64,iVBORw0KGgo=\r\n"), "{v4}");
        assert!(!v4.contains("\\,") && !v4.contains("ENCODING"), "{v4}");
        let (back, _) = render(v4.as_bytes(), "4.0", Some(Version::V3), None);
        let back = String::from_utf8(back.into_owned()).expect("utf8");
        assert!(back.contains("ENCODING=b") && back.contains("/9j/4AAQ"), "{back}");
        // Thunderbird's 3.0 form: bare base64 without ENCODING.
        let bare = v3.replace("PHOTO;ENCODING=b;TYPE=JPEG:/9j/4AAQ", "PHOTO:/9j/4AAQSkZJRgABAQ==");
        let (v4, _) = render(bare.as_bytes(), "3.0", Some(Version::V4), None);
        let v4 = String::from_utf8(v4.into_owned()).expect("utf8");
        assert!(v4.contains("PHOTO:data:image/jpeg;base64,/9j/4AAQSkZJRgABAQ==\r\n"), "{v4}");
    }

    #[test]
    fn geo_switches_between_pair_and_uri() {
        let v3 = "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:g\r\nFN:G\r\nGEO:45.000000;-87.300003\r\nEND:VCARD\r\n";
        let (v4, _) = render(v3.as_bytes(), "3.0", Some(Version::V4), None);
        let v4 = String::from_utf8(v4.into_owned()).expect("utf8");
        assert!(v4.contains("GEO:geo:45.000000,-87.300003\r\n"), "{v4}");
        let (back, _) = render(v4.as_bytes(), "4.0", Some(Version::V3), None);
        let back = String::from_utf8(back.into_owned()).expect("utf8");
        assert!(back.contains("GEO:45.000000;-87.300003\r\n"), "{back}");
    }

    #[test]
    fn an_unknown_version_is_unsupported_not_missing() {
        let v4 = V3.replace("VERSION:3.0", "VERSION:4");
        assert!(matches!(validate(v4.as_bytes()), Err(Invalid::Unsupported(_))));
        let none = V3.replace("VERSION:3.0\r\n", "");
        assert!(matches!(validate(none.as_bytes()), Err(Invalid::Malformed(_))));
    }

    #[test]
    fn same_version_is_byte_exact() {
        let (bytes, converted) = render(V3.as_bytes(), "3.0", Some(Version::V3), None);
        assert!(!converted);
        assert_eq!(bytes, V3.as_bytes());
    }
}
