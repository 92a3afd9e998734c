//! A card seen as a row of the contact table: the JSON shape of the API, the flat folded columns that
//! filters and sorting use, the search text, and edits written back into the stored vCard.
//!
//! Edits are made line by line on the stored text: only the properties whose field changed are replaced,
//! so everything else a client wrote (photos, Apple labels, unknown `X-` properties) stays byte-exact.

use super::{Version, parameter_values, property_text};
use calcard::vcard::{VCard, VCardEntry, VCardProperty};
use serde::{Deserialize, Serialize};
use unicode_normalization::UnicodeNormalization;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Name {
    pub family: String,
    pub given: String,
    pub additional: String,
    pub prefix: String,
    pub suffix: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Typed {
    pub value: String,
    pub types: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Address {
    pub street: String,
    pub city: String,
    pub region: String,
    pub postal_code: String,
    pub country: String,
    pub types: Vec<String>,
}

/// The API's view of a contact. Fields without a standard vCard property travel as documented `X-KARTEI-*`
/// properties (README, "Contact fields").
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Contact {
    #[serde(rename = "fn")]
    pub formatted_name: String,
    pub name: Name,
    pub org: String,
    pub department: String,
    pub title: String,
    pub role: String,
    pub degree: String,
    pub emails: Vec<Typed>,
    pub phones: Vec<Typed>,
    pub addresses: Vec<Address>,
    /// YYYY-MM-DD (or --MM-DD without a year).
    pub birthday: String,
    pub gender: String,
    pub websites: Vec<String>,
    pub social: Vec<String>,
    pub categories: Vec<String>,
    pub note: String,
    pub influence: String,
    pub attitude: String,
    pub personality: String,
    /// Marked as one of our own people (the "Staff" view).
    pub internal: bool,
    /// Paths of documents in the owner's file area (`X-KARTEI-DOCUMENT`).
    pub documents: Vec<String>,
    /// Processing purposes (GDPR) from the admin's list (`X-KARTEI-PURPOSE`).
    pub purposes: Vec<String>,
}

/// Columns a filter or sort may name, in the order of the CSV default.
pub const COLUMNS: &[&str] = &[
    "fn",
    "family",
    "given",
    "org",
    "department",
    "title",
    "role",
    "degree",
    "email",
    "phone",
    "street",
    "city",
    "postal_code",
    "country",
    "birthday",
    "gender",
    "website",
    "social",
    "categories",
    "note",
    "influence",
    "attitude",
    "personality",
    "internal",
    "purposes",
];

fn first_text(card: &VCard, prop: VCardProperty) -> String {
    card.property(&prop).map(property_text).unwrap_or_default()
}

fn other(card: &VCard, name: &str) -> Vec<String> {
    card.entries.iter().filter(|e| super::entry_is(e, name)).map(property_text).collect()
}

fn component(entry: &VCardEntry, i: usize) -> String {
    match entry.values.get(i) {
        Some(calcard::vcard::VCardValue::Component(parts)) => parts.join(","),
        Some(v) => v.as_text().unwrap_or_default().to_string(),
        None => String::new(),
    }
}

fn types(entry: &VCardEntry) -> Vec<String> {
    let mut out: Vec<String> = parameter_values(entry, "TYPE")
        .iter()
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_lowercase())
        .filter(|t| !t.is_empty() && t != "internet" && t != "pref" && t != "voice")
        .collect();
    out.dedup();
    out
}

/// `19800229`, `1980-02-29`, `--0229` → `1980-02-29` / `--02-29`; other text is kept.
fn normalize_date(raw: &str) -> String {
    let s = raw.trim();
    // Spreadsheet forms: `06.05.1970` (day first, as German Outlook writes it) and `5/6/1970` (month first,
    // as US Outlook does; day first when the first number cannot be a month). Read as YYYYMMDD before, the
    // first became 0605-19-70.
    let numbers: Vec<&str> = s.split(['.', '/']).collect();
    if let [a, b, year] = numbers.as_slice()
        && let (Ok(a), Ok(b), Ok(y)) = (a.trim().parse::<u32>(), b.trim().parse::<u32>(), year.trim().parse::<u32>())
        && year.trim().len() == 4
    {
        let (day, month) = if s.contains('.') || a > 12 { (a, b) } else { (b, a) };
        if (1..=12).contains(&month) && (1..=31).contains(&day) {
            return format!("{y:04}-{month:02}-{day:02}");
        }
    }
    let s = s.split('T').next().unwrap_or(s);
    let digits: String = s.chars().filter(|c| c.is_ascii_digit()).collect();
    if s.starts_with("--") && digits.len() == 4 {
        return format!("--{}-{}", &digits[..2], &digits[2..]);
    }
    if digits.len() == 8 && !s.starts_with("--") {
        return format!("{}-{}-{}", &digits[..4], &digits[4..6], &digits[6..]);
    }
    s.to_string()
}

pub fn project(card: &VCard) -> Contact {
    let n = card.property(&VCardProperty::N);
    let org = card.property(&VCardProperty::Org);
    Contact {
        formatted_name: first_text(card, VCardProperty::Fn),
        name: n
            .map(|n| Name {
                family: component(n, 0),
                given: component(n, 1),
                additional: component(n, 2),
                prefix: component(n, 3),
                suffix: component(n, 4),
            })
            .unwrap_or_default(),
        org: org.map(|o| component(o, 0)).unwrap_or_default(),
        department: org
            .map(|o| {
                (1..o.values.len()).map(|i| component(o, i)).filter(|s| !s.is_empty()).collect::<Vec<_>>().join(";")
            })
            .unwrap_or_default(),
        title: first_text(card, VCardProperty::Title),
        role: first_text(card, VCardProperty::Role),
        degree: other(card, "X-KARTEI-DEGREE").into_iter().next().unwrap_or_default(),
        emails: card
            .properties(&VCardProperty::Email)
            .map(|e| Typed { value: property_text(e), types: types(e) })
            .collect(),
        phones: card
            .properties(&VCardProperty::Tel)
            .map(|e| Typed { value: property_text(e), types: types(e) })
            .collect(),
        addresses: card
            .properties(&VCardProperty::Adr)
            .map(|a| Address {
                street: component(a, 2),
                city: component(a, 3),
                region: component(a, 4),
                postal_code: component(a, 5),
                country: component(a, 6),
                types: types(a),
            })
            .collect(),
        birthday: card.property(&VCardProperty::Bday).map(|b| normalize_date(&property_text(b))).unwrap_or_default(),
        gender: first_text(card, VCardProperty::Gender),
        websites: card.properties(&VCardProperty::Url).map(property_text).collect(),
        social: card
            .properties(&VCardProperty::Socialprofile)
            .map(property_text)
            .chain(other(card, "X-SOCIALPROFILE"))
            .collect(),
        // Each value as calcard read it: joining them with ',' and splitting again broke `Berlin\, Mitte` apart.
        categories: card
            .properties(&VCardProperty::Categories)
            .flat_map(|c| c.values.iter().filter_map(|v| v.as_text()).map(|s| s.trim().to_string()).collect::<Vec<_>>())
            .filter(|c| !c.is_empty())
            .collect(),
        note: first_text(card, VCardProperty::Note),
        influence: other(card, "X-KARTEI-INFLUENCE").into_iter().next().unwrap_or_default(),
        attitude: other(card, "X-KARTEI-ATTITUDE").into_iter().next().unwrap_or_default(),
        personality: other(card, "X-KARTEI-PERSONALITY").into_iter().next().unwrap_or_default(),
        internal: other(card, "X-KARTEI-INTERNAL").iter().any(|v| v.trim().eq_ignore_ascii_case("true")),
        documents: other(card, "X-KARTEI-DOCUMENT"),
        purposes: other(card, "X-KARTEI-PURPOSE"),
    }
}

/// Case- and accent-insensitive form: NFD, combining marks dropped, lower-cased, and the Latin letters that
/// carry their mark inside (ł, ø, đ, ı…, which NFD leaves whole) and ligatures spelled out, so that "lukasz"
/// finds "Łukasz" and "aero" finds "Ærø". Stored search columns hold this form: when it changes, raise
/// `vcard::SEARCH_COLUMNS_VERSION`.
pub fn fold(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.nfd().filter(|c| !('\u{300}'..='\u{36f}').contains(c)).flat_map(char::to_lowercase) {
        match c {
            'ß' => out.push_str("ss"),
            'æ' => out.push_str("ae"),
            'œ' => out.push_str("oe"),
            'þ' => out.push_str("th"),
            'ĳ' => out.push_str("ij"),
            'ł' | 'ŀ' => out.push('l'),
            'ø' => out.push('o'),
            'đ' | 'ð' => out.push('d'),
            'ı' => out.push('i'),
            'ħ' => out.push('h'),
            'ŧ' => out.push('t'),
            _ => out.push(c),
        }
    }
    out
}

/// Country calling codes with two digits (E.164); 1 and 7 have one, the rest three.
const TWO_DIGIT_CODES: &[u32] = &[
    20, 27, 30, 31, 32, 33, 34, 36, 39, 40, 41, 43, 44, 45, 46, 47, 48, 49, 51, 52, 53, 54, 55, 56, 57, 58, 60, 61, 62,
    63, 64, 65, 66, 81, 82, 84, 86, 90, 91, 92, 93, 94, 95, 98,
];

/// The national significant number of a phone number, so that `+49 30 1234`, `0049 30 1234` and `030/1234`
/// compare equal (digits only, without the country code or the trunk prefix 0).
pub fn phone_key(raw: &str) -> String {
    let trimmed = raw.trim();
    // A 4.0 `tel:` URI (`tel:+49-30-1234;ext=5`) is the same number as its text form.
    let trimmed = match trimmed.get(..4) {
        Some(scheme) if scheme.eq_ignore_ascii_case("tel:") => trimmed[4..].split(';').next().unwrap_or_default(),
        _ => trimmed,
    };
    let digits: String = trimmed.chars().filter(|c| c.is_ascii_digit()).collect();
    let international = if trimmed.starts_with('+') { Some(digits.as_str()) } else { digits.strip_prefix("00") };
    match international {
        Some(d) => {
            let code_len = match d.get(..2).and_then(|p| p.parse::<u32>().ok()) {
                _ if d.starts_with('1') || d.starts_with('7') => 1,
                Some(two) if TWO_DIGIT_CODES.contains(&two) => 2,
                _ => 3,
            };
            d.get(code_len..).unwrap_or_default().trim_start_matches('0').to_string()
        }
        None => digits.trim_start_matches('0').to_string(),
    }
}

/// Does this query text look like a phone number (digits and the usual separators only)?
pub fn looks_like_phone(q: &str) -> bool {
    let digits = q.chars().filter(|c| c.is_ascii_digit()).count();
    digits >= 3 && q.chars().all(|c| c.is_ascii_digit() || " +-/().".contains(c))
}

impl Contact {
    /// The folded text the quick search looks in.
    pub fn search_text(&self) -> String {
        let mut parts: Vec<String> = vec![
            self.formatted_name.clone(),
            self.name.family.clone(),
            self.name.given.clone(),
            self.org.clone(),
            self.department.clone(),
        ];
        parts.extend(self.emails.iter().map(|e| e.value.clone()));
        parts.extend(self.addresses.iter().map(|a| a.city.clone()));
        let mut text = fold(&parts.join("\n"));
        for p in &self.phones {
            text.push('\n');
            text.push_str(&phone_key(&p.value));
        }
        text
    }

    /// A column's value as text (several values joined by newlines), for display, CSV and filters.
    pub fn column(&self, column: &str) -> String {
        let join = |v: Vec<&str>| v.join("\n");
        match column {
            "fn" => self.formatted_name.clone(),
            "family" => self.name.family.clone(),
            "given" => self.name.given.clone(),
            "org" => self.org.clone(),
            "department" => self.department.clone(),
            "title" => self.title.clone(),
            "role" => self.role.clone(),
            "degree" => self.degree.clone(),
            "email" => join(self.emails.iter().map(|e| e.value.as_str()).collect()),
            "phone" => join(self.phones.iter().map(|e| e.value.as_str()).collect()),
            "street" => join(self.addresses.iter().map(|a| a.street.as_str()).collect()),
            "city" => join(self.addresses.iter().map(|a| a.city.as_str()).collect()),
            "postal_code" => join(self.addresses.iter().map(|a| a.postal_code.as_str()).collect()),
            "country" => join(self.addresses.iter().map(|a| a.country.as_str()).collect()),
            "birthday" => self.birthday.clone(),
            "gender" => self.gender.clone(),
            "website" => join(self.websites.iter().map(String::as_str).collect()),
            "social" => join(self.social.iter().map(String::as_str).collect()),
            "categories" => join(self.categories.iter().map(String::as_str).collect()),
            "purposes" => join(self.purposes.iter().map(String::as_str).collect()),
            "note" => self.note.clone(),
            "influence" => self.influence.clone(),
            "attitude" => self.attitude.clone(),
            "personality" => self.personality.clone(),
            "internal" => {
                if self.internal {
                    "true".into()
                } else {
                    String::new()
                }
            }
            _ => String::new(),
        }
    }

    /// Folded columns as a JSON object: what the store filters and sorts on.
    pub fn fields_json(&self) -> String {
        // Phones as their keys (digits without country code or trunk 0), as a filter's phone value is.
        let value = |c: &str| match c {
            "phone" => self.phones.iter().map(|p| phone_key(&p.value)).collect::<Vec<_>>().join("\n"),
            _ => fold(&self.column(c)),
        };
        let map: serde_json::Map<String, serde_json::Value> =
            COLUMNS.iter().map(|c| (c.to_string(), serde_json::Value::String(value(c)))).collect();
        serde_json::Value::Object(map).to_string()
    }
}

// ---- writing fields back as vCard lines ----

/// Escapes a text value for a content line (RFC 6350 §3.4).
pub(crate) fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            ',' => out.push_str("\\,"),
            ';' => out.push_str("\\;"),
            '\n' => out.push_str("\\n"),
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}

/// The line ending a stored card uses: CRLF as RFC 6350 asks, or LF, which some producers write. Lines
/// kartei adds to a card take its ending, so that a card never mixes the two.
pub(crate) fn newline_of(text: &str) -> &'static str {
    if text.contains("\r\n") || !text.contains('\n') { "\r\n" } else { "\n" }
}

/// Folds a content line at 75 octets (RFC 6350 §3.2), never inside a UTF-8 sequence, and ends it with
/// `newline` (a card's own, see `newline_of`).
pub(crate) fn fold_line(line: &str, newline: &str) -> String {
    let mut out = String::with_capacity(line.len() + 8);
    let mut width = 0;
    for c in line.chars() {
        if width + c.len_utf8() > 75 {
            out.push_str(newline);
            out.push(' ');
            width = 1;
        }
        out.push(c);
        width += c.len_utf8();
    }
    out.push_str(newline);
    out
}

fn type_param(types: &[String]) -> String {
    let clean: Vec<String> = types
        .iter()
        .map(|t| t.trim().to_lowercase())
        .filter(|t| !t.is_empty() && t.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
        .collect();
    if clean.is_empty() { String::new() } else { format!(";TYPE={}", clean.join(",")) }
}

/// The vCard properties each field is stored in (replaced together when the field changes).
fn field_properties(field: &str) -> &'static [&'static str] {
    match field {
        "fn" => &["FN"],
        "name" => &["N"],
        "org" => &["ORG"],
        "title" => &["TITLE"],
        "role" => &["ROLE"],
        "degree" => &["X-KARTEI-DEGREE"],
        "emails" => &["EMAIL"],
        "phones" => &["TEL"],
        "addresses" => &["ADR"],
        "birthday" => &["BDAY"],
        "gender" => &["GENDER"],
        "websites" => &["URL"],
        "social" => &["SOCIALPROFILE", "X-SOCIALPROFILE"],
        "categories" => &["CATEGORIES"],
        "note" => &["NOTE"],
        "influence" => &["X-KARTEI-INFLUENCE"],
        "attitude" => &["X-KARTEI-ATTITUDE"],
        "personality" => &["X-KARTEI-PERSONALITY"],
        "internal" => &["X-KARTEI-INTERNAL"],
        "documents" => &["X-KARTEI-DOCUMENT"],
        "purposes" => &["X-KARTEI-PURPOSE"],
        _ => &[],
    }
}

const FIELDS: &[&str] = &[
    "fn",
    "name",
    "org",
    "title",
    "role",
    "degree",
    "emails",
    "phones",
    "addresses",
    "birthday",
    "gender",
    "websites",
    "social",
    "categories",
    "note",
    "influence",
    "attitude",
    "personality",
    "internal",
    "documents",
    "purposes",
];

impl Contact {
    fn lines_for(&self, field: &str, version: Version) -> Vec<String> {
        let v4 = version == Version::V4;
        let single =
            |name: &str, value: &str| if value.is_empty() { vec![] } else { vec![format!("{name}:{}", escape(value))] };
        match field {
            "fn" => single("FN", &self.formatted_name),
            "name" => {
                let n = &self.name;
                if [&n.family, &n.given, &n.additional, &n.prefix, &n.suffix].iter().all(|s| s.is_empty()) {
                    vec![]
                } else {
                    vec![format!(
                        "N:{};{};{};{};{}",
                        escape(&n.family),
                        escape(&n.given),
                        escape(&n.additional),
                        escape(&n.prefix),
                        escape(&n.suffix)
                    )]
                }
            }
            "org" => {
                if self.org.is_empty() && self.department.is_empty() {
                    vec![]
                } else {
                    let mut value = escape(&self.org);
                    for unit in self.department.split(';').filter(|u| !u.is_empty()) {
                        value.push(';');
                        value.push_str(&escape(unit));
                    }
                    vec![format!("ORG:{value}")]
                }
            }
            "title" => single("TITLE", &self.title),
            "role" => single("ROLE", &self.role),
            "degree" => single("X-KARTEI-DEGREE", &self.degree),
            "emails" => self
                .emails
                .iter()
                .filter(|e| !e.value.trim().is_empty())
                .map(|e| format!("EMAIL{}:{}", type_param(&e.types), escape(e.value.trim())))
                .collect(),
            "phones" => self
                .phones
                .iter()
                .filter(|p| !p.value.trim().is_empty())
                .map(|p| format!("TEL{}:{}", type_param(&p.types), escape(p.value.trim())))
                .collect(),
            "addresses" => self
                .addresses
                .iter()
                .map(|a| {
                    format!(
                        "ADR{}:;;{};{};{};{};{}",
                        type_param(&a.types),
                        escape(&a.street),
                        escape(&a.city),
                        escape(&a.region),
                        escape(&a.postal_code),
                        escape(&a.country)
                    )
                })
                .collect(),
            "birthday" => {
                let b = normalize_date(&self.birthday);
                if b.is_empty() {
                    vec![]
                } else if v4 {
                    let basic = match b.strip_prefix("--") {
                        Some(month_day) => format!("--{}", month_day.replace('-', "")),
                        None => b.replace('-', ""),
                    };
                    vec![format!("BDAY:{basic}")]
                } else {
                    vec![format!("BDAY:{b}")]
                }
            }
            "gender" => single("GENDER", &self.gender),
            "websites" => self.websites.iter().filter(|w| !w.is_empty()).map(|w| format!("URL:{w}")).collect(),
            "social" => {
                let name = if v4 { "SOCIALPROFILE" } else { "X-SOCIALPROFILE" };
                self.social.iter().filter(|s| !s.is_empty()).map(|s| format!("{name}:{s}")).collect()
            }
            "categories" => {
                let cats: Vec<String> =
                    self.categories.iter().filter(|c| !c.trim().is_empty()).map(|c| escape(c.trim())).collect();
                if cats.is_empty() { vec![] } else { vec![format!("CATEGORIES:{}", cats.join(","))] }
            }
            "note" => single("NOTE", &self.note),
            "influence" => single("X-KARTEI-INFLUENCE", &self.influence),
            "attitude" => single("X-KARTEI-ATTITUDE", &self.attitude),
            "personality" => single("X-KARTEI-PERSONALITY", &self.personality),
            "internal" => {
                if self.internal {
                    vec!["X-KARTEI-INTERNAL:true".into()]
                } else {
                    vec![]
                }
            }
            "documents" => self
                .documents
                .iter()
                .filter(|d| !d.is_empty())
                .map(|d| format!("X-KARTEI-DOCUMENT:{}", escape(d)))
                .collect(),
            "purposes" => self
                .purposes
                .iter()
                .filter(|p| !p.is_empty())
                .map(|p| format!("X-KARTEI-PURPOSE:{}", escape(p)))
                .collect(),
            _ => vec![],
        }
    }

    fn field_changed(&self, other: &Contact, field: &str) -> bool {
        match field {
            "fn" => self.formatted_name != other.formatted_name,
            "name" => self.name != other.name,
            "org" => self.org != other.org || self.department != other.department,
            "title" => self.title != other.title,
            "role" => self.role != other.role,
            "degree" => self.degree != other.degree,
            "emails" => self.emails != other.emails,
            "phones" => self.phones != other.phones,
            "addresses" => self.addresses != other.addresses,
            "birthday" => normalize_date(&self.birthday) != normalize_date(&other.birthday),
            "gender" => self.gender != other.gender,
            "websites" => self.websites != other.websites,
            "social" => self.social != other.social,
            "categories" => self.categories != other.categories,
            "note" => self.note != other.note,
            "influence" => self.influence != other.influence,
            "attitude" => self.attitude != other.attitude,
            "personality" => self.personality != other.personality,
            "internal" => self.internal != other.internal,
            "documents" => self.documents != other.documents,
            "purposes" => self.purposes != other.purposes,
            _ => false,
        }
    }

    /// A new vCard 4.0 for this contact.
    pub fn to_new_vcard(&self, uid: &str) -> String {
        let mut out = String::from("BEGIN:VCARD\r\nVERSION:4.0\r\nPRODID:-//kartei//contact API//EN\r\n");
        out.push_str(&fold_line(&format!("UID:{}", escape(uid)), "\r\n"));
        for field in FIELDS {
            for line in self.lines_for(field, Version::V4) {
                out.push_str(&fold_line(&line, "\r\n"));
            }
        }
        out.push_str("END:VCARD\r\n");
        out
    }
}

/// The property name of an unfolded content line (`item1.EMAIL;TYPE=x:v` → (Some("item1"), "EMAIL")).
pub(crate) fn line_name(line: &str) -> (Option<&str>, String) {
    let head = line.split([';', ':']).next().unwrap_or("");
    match head.split_once('.') {
        Some((group, name)) => (Some(group), name.to_ascii_uppercase()),
        None => (None, head.to_ascii_uppercase()),
    }
}

/// The logical (unfolded) lines of a card, each with its original bytes: line ending and folding kept.
pub(crate) fn logical_lines(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut end) = (0, 0);
    for physical in text.split_inclusive('\n') {
        let continuation = physical.starts_with([' ', '\t']) && end > start;
        if !continuation && end > start {
            out.push(&text[start..end]);
            start = end;
        }
        end += physical.len();
    }
    if end > start {
        out.push(&text[start..end]);
    }
    out
}

/// The vCard properties the contact fields are stored in: what the projection reads and edits write.
pub fn is_modelled(name: &str) -> bool {
    FIELDS.iter().any(|f| field_properties(f).iter().any(|p| p.eq_ignore_ascii_case(name)))
}

/// How a changed field is written back.
enum Edit {
    /// Every line of the field's properties is replaced by the new value's lines.
    ReplaceAll,
    /// Items of a list field: the lines of the items at these indexes are replaced in place (`None`: no
    /// line for it any more), and the new items' lines are added. Lines of unchanged items stay as they are.
    Items { replace: Vec<(usize, Vec<String>)>, append: Vec<String> },
}

impl Contact {
    /// The number of items of a list field (`None` for a field with one value).
    fn list_len(&self, field: &str) -> Option<usize> {
        Some(match field {
            "emails" => self.emails.len(),
            "phones" => self.phones.len(),
            "addresses" => self.addresses.len(),
            "websites" => self.websites.len(),
            "social" => self.social.len(),
            "documents" => self.documents.len(),
            "purposes" => self.purposes.len(),
            _ => return None,
        })
    }

    fn item_eq(&self, other: &Contact, field: &str, i: usize) -> bool {
        match field {
            "emails" => self.emails.get(i) == other.emails.get(i),
            "phones" => self.phones.get(i) == other.phones.get(i),
            "addresses" => self.addresses.get(i) == other.addresses.get(i),
            "websites" => self.websites.get(i) == other.websites.get(i),
            "social" => self.social.get(i) == other.social.get(i),
            "documents" => self.documents.get(i) == other.documents.get(i),
            "purposes" => self.purposes.get(i) == other.purposes.get(i),
            _ => false,
        }
    }

    /// The lines of one item of a list field.
    fn item_lines(&self, field: &str, i: usize, version: Version) -> Vec<String> {
        let mut one = Contact::default();
        match field {
            "emails" => one.emails = self.emails[i..=i].to_vec(),
            "phones" => one.phones = self.phones[i..=i].to_vec(),
            "addresses" => one.addresses = self.addresses[i..=i].to_vec(),
            "websites" => one.websites = self.websites[i..=i].to_vec(),
            "social" => one.social = self.social[i..=i].to_vec(),
            "documents" => one.documents = self.documents[i..=i].to_vec(),
            "purposes" => one.purposes = self.purposes[i..=i].to_vec(),
            _ => {}
        }
        one.lines_for(field, version)
    }

    /// How to write `field` of `new` (this contact) over `old`, given how many stored lines carry it.
    fn edit_for(&self, old: &Contact, field: &str, version: Version, stored_lines: usize) -> Edit {
        let (Some(before), Some(after)) = (old.list_len(field), self.list_len(field)) else {
            return Edit::ReplaceAll;
        };
        if after < before {
            return Edit::ReplaceAll;
        }
        let append: Vec<String> = (before..after).flat_map(|i| self.item_lines(field, i, version)).collect();
        let changed: Vec<usize> = (0..before).filter(|&i| !self.item_eq(old, field, i)).collect();
        if changed.is_empty() {
            return Edit::Items { replace: Vec::new(), append };
        }
        // Items edited in place need their own line: one property (not SOCIALPROFILE and X-SOCIALPROFILE,
        // which the projection reads in another order), one line per item.
        if field_properties(field).len() != 1 || stored_lines != before {
            return Edit::ReplaceAll;
        }
        let replace = changed.into_iter().map(|i| (i, self.item_lines(field, i, version))).collect();
        Edit::Items { replace, append }
    }
}

/// Rewrites `stored` so that the fields where `new` differs from `old` hold `new`'s values; every other line
/// stays byte for byte. In a list field (e-mails, phones, addresses…) only the items that changed are
/// rewritten and new items are added, so the other items keep their parameters (`PREF`), groups and labels.
/// Groups that lose their property (Apple's `item1.X-ABLabel`) go with it.
pub fn apply_changes(stored: &str, version: Version, old: &Contact, new: &Contact) -> String {
    let changed: Vec<&str> = FIELDS.iter().copied().filter(|f| old.field_changed(new, f)).collect();
    if changed.is_empty() {
        return stored.to_string();
    }
    let logical = logical_lines(stored);
    let names: Vec<(Option<&str>, String)> = logical.iter().map(|l| line_name(l)).collect();
    // Per replaced line (by index): what goes in its place. Lines of fields replaced whole map to nothing.
    let mut in_place: std::collections::HashMap<usize, Vec<String>> = std::collections::HashMap::new();
    let mut at_end: Vec<String> = Vec::new();
    for field in &changed {
        let props = field_properties(field);
        let positions: Vec<usize> =
            names.iter().enumerate().filter(|(_, (_, n))| props.contains(&n.as_str())).map(|(i, _)| i).collect();
        match new.edit_for(old, field, version, positions.len()) {
            Edit::ReplaceAll => {
                for &p in &positions {
                    in_place.insert(p, Vec::new());
                }
                at_end.extend(new.lines_for(field, version));
            }
            Edit::Items { replace, append } => {
                for (item, lines) in replace {
                    in_place.insert(positions[item], lines);
                }
                at_end.extend(append);
            }
        }
    }
    // A line edited in place keeps its group (`item1.EMAIL` stays with `item1.X-ABLabel`); only when a grouped
    // line goes away do the Apple label lines of its group (`X-ABLabel`, `X-ABADR`…) go with it. Other
    // properties sharing the group stay: RFC 6350 groups are just grouping.
    let removed_groups: Vec<&str> =
        in_place.iter().filter(|(_, lines)| lines.is_empty()).filter_map(|(&i, _)| names[i].0).collect();
    let newline = newline_of(stored);
    let mut out = String::with_capacity(stored.len() + 256);
    for (i, line) in logical.iter().enumerate() {
        let (group, name) = &names[i];
        if name == "END" {
            for new_line in at_end.drain(..) {
                out.push_str(&fold_line(&new_line, newline));
            }
        }
        if let Some(lines) = in_place.get(&i) {
            for new_line in lines {
                let new_line = keep_unprojected_parts(line, new_line, name);
                match group {
                    Some(g) => out.push_str(&fold_line(&format!("{g}.{new_line}"), newline)),
                    None => out.push_str(&fold_line(&new_line, newline)),
                }
            }
        } else if !(group.is_some_and(|g| removed_groups.contains(&g)) && name.starts_with("X-AB")) {
            out.push_str(line);
        }
    }
    out
}

/// An edited line, with what the contact projection does not carry taken over from the line it replaces:
/// an address's PO box and extended address (its first two components).
fn keep_unprojected_parts(old: &str, new: &str, name: &str) -> String {
    if name != "ADR" {
        return new.to_string();
    }
    let components = |line: &str| -> Option<Vec<String>> {
        let (_, value) = split_value(line)?;
        Some(split_unescaped(value.trim_end_matches(['\r', '\n']), ';'))
    };
    // The stored line as one line (it may be folded).
    let old = unfold(old);
    let (Some(old_parts), Some((head, _)), Some(mut new_parts)) = (components(&old), split_value(new), components(new))
    else {
        return new.to_string();
    };
    if new_parts.len() < 2 || old_parts.len() < 2 {
        return new.to_string();
    }
    new_parts[0] = old_parts[0].clone();
    new_parts[1] = old_parts[1].clone();
    format!("{head}:{}", new_parts.join(";"))
}

/// A logical line as one line: folding (a line break followed by a space or tab) removed.
pub(crate) fn unfold(line: &str) -> String {
    line.replace("\r\n ", "").replace("\r\n\t", "").replace("\n ", "").replace("\n\t", "")
}

/// `(head, value)` of a content line, split at its first `:` outside a quoted parameter value.
pub(crate) fn split_value(line: &str) -> Option<(&str, &str)> {
    let mut quoted = false;
    for (i, c) in line.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ':' if !quoted => return Some((&line[..i], &line[i + 1..])),
            _ => {}
        }
    }
    None
}

/// A value split at `sep`, a backslash-escaped `sep` staying part of its component (escapes kept as written).
fn split_unescaped(value: &str, sep: char) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut escaped = false;
    for c in value.chars() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == sep {
            parts.push(String::new());
            continue;
        }
        if let Some(last) = parts.last_mut() {
            last.push(c);
        }
    }
    parts
}

// ---- merging an imported contact into an existing one ----

/// What an import does with a single-valued field (name, organization, birthday, note…) that both the
/// existing contact and the imported row fill, with different values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scalars {
    /// The imported value replaces the existing one (a CSV row is an edit of the fields it fills).
    Overwrite,
    /// The existing value stays and the field is named in the result's `kept` list.
    KeepExisting,
}

/// The same e-mail address: trimmed, case-insensitive, without a `mailto:` (how vCard 4.0 writers give
/// `EMAIL;VALUE=uri`) and with an internationalized domain in Unicode (`xn--mller-bau-q9a.de` is
/// `müller-bau.de`), in the `vcard::unicode_casemap` form that the stored `emails` column also holds for
/// every address (see `SearchIndex`), so that keys made here and read from the column compare.
pub fn email_key(raw: &str) -> String {
    let folded = super::unicode_casemap(raw.trim());
    let address = folded.strip_prefix("mailto:").map_or(folded.as_str(), str::trim);
    match address.rsplit_once('@') {
        Some((local, domain)) if domain.contains("xn--") => {
            format!("{local}@{}", super::unicode_casemap(&unicode_domain(domain)))
        }
        _ => address.to_string(),
    }
}

/// A domain with its punycode labels (`xn--…`) decoded; as written when it does not decode.
pub fn unicode_domain(domain: &str) -> String {
    match idna::domain_to_unicode(domain) {
        (unicode, Ok(())) => unicode,
        _ => domain.to_string(),
    }
}

/// The same phone number whatever its formatting (`+49 30 1234` = `030 1234`), see [`phone_key`].
pub fn same_phone(a: &str, b: &str) -> bool {
    let (ka, kb) = (phone_key(a), phone_key(b));
    if ka.is_empty() || kb.is_empty() { fold(a.trim()) == fold(b.trim()) } else { ka == kb }
}

fn address_parts(a: &Address) -> [&str; 5] {
    [&a.street, &a.city, &a.region, &a.postal_code, &a.country]
}

/// Every part `small` has is the same in `big` (case- and accent-insensitive): `small` adds nothing.
fn address_covers(big: &Address, small: &Address) -> bool {
    address_parts(small)
        .iter()
        .zip(address_parts(big))
        .all(|(s, b)| s.trim().is_empty() || fold(s.trim()) == fold(b.trim()))
}

/// No part that both addresses have differs, and at least one is the same: one address, one of them
/// knowing more.
fn address_compatible(a: &Address, b: &Address) -> bool {
    let pairs: Vec<(String, String)> =
        address_parts(a).iter().zip(address_parts(b)).map(|(x, y)| (fold(x.trim()), fold(y.trim()))).collect();
    pairs.iter().all(|(x, y)| x.is_empty() || y.is_empty() || x == y)
        && pairs.iter().any(|(x, y)| !x.is_empty() && x == y)
}

/// Adds an imported address: nothing when an existing address already has all its parts; the missing parts
/// of an existing address it agrees with (never a part that differs); otherwise a new address.
fn merge_address(addresses: &mut Vec<Address>, incoming: &Address) {
    if address_parts(incoming).iter().all(|p| p.trim().is_empty())
        || addresses.iter().any(|e| address_covers(e, incoming))
    {
        return;
    }
    if let Some(existing) = addresses.iter_mut().find(|e| address_compatible(e, incoming)) {
        for (e, i) in [
            (&mut existing.street, &incoming.street),
            (&mut existing.city, &incoming.city),
            (&mut existing.region, &incoming.region),
            (&mut existing.postal_code, &incoming.postal_code),
            (&mut existing.country, &incoming.country),
        ] {
            if e.trim().is_empty() && !i.trim().is_empty() {
                *e = i.trim().to_string();
            }
        }
        if existing.types.is_empty() {
            existing.types = incoming.types.clone();
        }
        return;
    }
    addresses.push(incoming.clone());
}

fn merge_scalar(field: &'static str, a: &mut String, b: &str, scalars: Scalars, kept: &mut Vec<&'static str>) {
    let b = b.trim();
    let same = if field == "birthday" { normalize_date(a) == normalize_date(b) } else { a.trim() == b };
    if b.is_empty() || same {
        return;
    }
    if a.trim().is_empty() || scalars == Scalars::Overwrite {
        *a = b.to_string();
    } else if !kept.contains(&field) {
        kept.push(field);
    }
}

fn merge_list(list: &mut Vec<String>, incoming: &[String], same: impl Fn(&str, &str) -> bool) {
    for value in incoming.iter().filter(|v| !v.trim().is_empty()) {
        if !list.iter().any(|x| same(x, value)) {
            list.push(value.trim().to_string());
        }
    }
}

/// `existing` with what `incoming` adds: e-mails, phones, addresses, websites, profiles, categories,
/// documents and purposes that are new (compared trimmed and case-insensitive, phones by [`phone_key`],
/// addresses part by part), and the single-valued fields as `scalars` says. Nothing of `existing` is
/// removed, and items that stay keep their position, so [`apply_changes`] leaves their lines as they are.
/// Returns the merged contact and the fields whose differing imported value was not taken.
pub fn merge(existing: &Contact, incoming: &Contact, scalars: Scalars) -> (Contact, Vec<&'static str>) {
    let mut m = existing.clone();
    let mut kept = Vec::new();
    let k = &mut kept;
    merge_scalar("fn", &mut m.formatted_name, &incoming.formatted_name, scalars, k);
    let (n, i) = (&mut m.name, &incoming.name);
    for (a, b) in [
        (&mut n.family, &i.family),
        (&mut n.given, &i.given),
        (&mut n.additional, &i.additional),
        (&mut n.prefix, &i.prefix),
        (&mut n.suffix, &i.suffix),
    ] {
        merge_scalar("name", a, b, scalars, k);
    }
    for (field, a, b) in [
        ("org", &mut m.org, &incoming.org),
        ("department", &mut m.department, &incoming.department),
        ("title", &mut m.title, &incoming.title),
        ("role", &mut m.role, &incoming.role),
        ("degree", &mut m.degree, &incoming.degree),
        ("birthday", &mut m.birthday, &incoming.birthday),
        ("gender", &mut m.gender, &incoming.gender),
        ("note", &mut m.note, &incoming.note),
        ("influence", &mut m.influence, &incoming.influence),
        ("attitude", &mut m.attitude, &incoming.attitude),
        ("personality", &mut m.personality, &incoming.personality),
    ] {
        merge_scalar(field, a, b, scalars, k);
    }
    m.internal |= incoming.internal;
    for e in incoming.emails.iter().filter(|e| !e.value.trim().is_empty()) {
        if !m.emails.iter().any(|x| email_key(&x.value) == email_key(&e.value)) {
            m.emails.push(Typed { value: e.value.trim().to_string(), types: e.types.clone() });
        }
    }
    for p in incoming.phones.iter().filter(|p| !p.value.trim().is_empty()) {
        if !m.phones.iter().any(|x| same_phone(&x.value, &p.value)) {
            m.phones.push(Typed { value: p.value.trim().to_string(), types: p.types.clone() });
        }
    }
    for a in &incoming.addresses {
        merge_address(&mut m.addresses, a);
    }
    let same_text = |a: &str, b: &str| fold(a.trim()) == fold(b.trim());
    merge_list(&mut m.websites, &incoming.websites, same_text);
    merge_list(&mut m.social, &incoming.social, same_text);
    merge_list(&mut m.categories, &incoming.categories, same_text);
    merge_list(&mut m.documents, &incoming.documents, |a, b| a.trim() == b.trim());
    merge_list(&mut m.purposes, &incoming.purposes, |a, b| a.trim() == b.trim());
    (m, kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_keys_name_the_mailbox_however_it_is_written() {
        let key = email_key("jörg@müller-bau.de");
        for written in [
            " Jörg@MÜLLER-BAU.DE ",
            "mailto:jörg@müller-bau.de",
            "MAILTO: jörg@xn--mller-bau-q9a.de",
            "jo\u{308}rg@xn--MLLER-BAU-Q9A.de",
        ] {
            assert_eq!(email_key(written), key, "{written}");
        }
        assert_ne!(email_key("ba@x.de"), email_key("a@x.de"));
        assert_eq!(email_key("odd@xn--"), "odd@xn--", "a domain that does not decode stays as written");
    }

    #[test]
    fn phone_keys_ignore_formatting_and_country_codes() {
        assert_eq!(phone_key("+49 30 1234"), "301234");
        assert_eq!(phone_key("0049 (30) 1234"), "301234");
        assert_eq!(phone_key("030/1234"), "301234");
        assert_eq!(phone_key("+1 (555) 123-4567"), "5551234567");
        assert!(looks_like_phone("+49 30 1234") && !looks_like_phone("muller"));
    }

    #[test]
    fn folding_removes_case_and_accents() {
        assert_eq!(fold("Müller Ærø ÉCOLE Straße"), "muller aero ecole strasse");
        assert_eq!(fold("Łukasz Đurić Þór Ødegård İnci ıŞık ẞ"), "lukasz duric thor odegard inci isik ss");
    }

    #[test]
    fn edits_replace_only_changed_fields_and_keep_the_rest() {
        let stored = "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:1\r\nFN:Anna\r\nitem1.EMAIL;TYPE=INTERNET:a@x.org\r\nitem1.X-ABLabel:_$!<Work>!$_\r\nPHOTO;ENCODING=b;TYPE=JPEG:AAAA\r\n BBBB\r\nX-CUSTOM:keep\r\nEND:VCARD\r\n";
        let card = VCard::parse(stored).expect("card");
        let old = project(&card);
        assert_eq!(old.emails[0].value, "a@x.org");
        let mut new = old.clone();
        new.formatted_name = "Anna Neu".into();
        new.emails = vec![Typed { value: "anna@neu.de".into(), types: vec!["work".into()] }];
        new.categories = vec!["Kunde".into()];
        let edited = apply_changes(stored, Version::V3, &old, &new);
        assert!(edited.contains("FN:Anna Neu\r\n") && !edited.contains("FN:Anna\r\n"), "{edited}");
        // Edited in place, the e-mail keeps its group, and so its label.
        assert!(
            edited.contains("item1.EMAIL;TYPE=work:anna@neu.de\r\nitem1.X-ABLabel:_$!<Work>!$_\r\n")
                && !edited.contains("a@x.org"),
            "{edited}"
        );
        assert!(
            edited.contains("PHOTO;ENCODING=b;TYPE=JPEG:AAAA\r\n BBBB\r\n") && edited.contains("X-CUSTOM:keep"),
            "{edited}"
        );
        assert!(edited.ends_with("CATEGORIES:Kunde\r\nEND:VCARD\r\n"), "{edited}");
        let reparsed = project(&VCard::parse(&edited).expect("reparses"));
        assert_eq!(reparsed.formatted_name, "Anna Neu");
        assert_eq!(reparsed.categories, ["Kunde"]);
    }

    const LISTS: &str = "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:1\r\nFN:A\r\nitem1.TEL;TYPE=CELL,pref:+49 170 1\r\n\
item1.X-ABLabel:Privat\r\nTEL;TYPE=WORK:+49 30 1234\r\nADR;TYPE=WORK:;;Hauptstr. 1;Berlin;;10115;Germany\r\n\
ADR;TYPE=HOME:;;Gartenweg 5;Potsdam;;14467;Germany\r\nEND:VCARD\r\n";

    #[test]
    fn list_edits_keep_the_lines_of_the_other_items() {
        let old = project(&VCard::parse(LISTS).expect("card"));
        let mut new = old.clone();
        new.phones.push(Typed { value: "+49 40 5".into(), types: vec![] });
        assert_eq!(apply_changes(LISTS, Version::V3, &old, &new), LISTS.replace("END:", "TEL:+49 40 5\r\nEND:"));
        let mut new = old.clone();
        new.addresses[1].postal_code = "14469".into();
        assert_eq!(
            apply_changes(LISTS, Version::V3, &old, &new),
            LISTS.replace("ADR;TYPE=HOME:;;Gartenweg 5;Potsdam;;14467", "ADR;TYPE=home:;;Gartenweg 5;Potsdam;;14469")
        );
        // A changed item keeps its group and label; a removed item rewrites the field.
        let mut new = old.clone();
        new.phones[0].value = "+49 170 2".into();
        let edited = apply_changes(LISTS, Version::V3, &old, &new);
        assert!(
            edited.contains("item1.TEL;TYPE=cell:+49 170 2\r\nitem1.X-ABLabel:Privat\r\nTEL;TYPE=WORK:+49 30 1234\r\n"),
            "{edited}"
        );
        let mut new = old.clone();
        new.addresses.remove(0);
        let edited = apply_changes(LISTS, Version::V3, &old, &new);
        assert!(!edited.contains("Hauptstr") && edited.contains("ADR;TYPE=home:;;Gartenweg 5"), "{edited}");
    }

    #[test]
    fn merging_adds_only_what_is_new() {
        let old = project(&VCard::parse(LISTS).expect("card"));
        let mut incoming = Contact {
            formatted_name: "A".into(),
            phones: vec![Typed { value: "030 1234".into(), types: vec![] }],
            addresses: vec![Address { city: "berlin".into(), ..Address::default() }],
            ..Contact::default()
        };
        assert_eq!(merge(&old, &incoming, Scalars::Overwrite), (old.clone(), vec![]));
        incoming.addresses =
            vec![Address { street: "Elbchaussee 9".into(), city: "Hamburg".into(), ..Address::default() }];
        incoming.phones.push(Typed { value: "+49 40 5".into(), types: vec![] });
        let (merged, _) = merge(&old, &incoming, Scalars::Overwrite);
        assert_eq!(merged.phones.len(), 3);
        assert_eq!(&merged.addresses[..2], &old.addresses[..]);
        assert_eq!(merged.addresses[2].city, "Hamburg");
        // An address that agrees with an existing one completes it.
        incoming.addresses = vec![Address { city: "Potsdam".into(), region: "BB".into(), ..Address::default() }];
        let (merged, _) = merge(&old, &incoming, Scalars::Overwrite);
        assert_eq!(merged.addresses.len(), 2);
        assert_eq!((merged.addresses[1].street.as_str(), merged.addresses[1].region.as_str()), ("Gartenweg 5", "BB"));
        // Single values: replaced, or kept and named.
        incoming.formatted_name = "B".into();
        incoming.note = "new".into();
        assert_eq!(merge(&old, &incoming, Scalars::Overwrite).0.formatted_name, "B");
        let (kept, named) = merge(&old, &incoming, Scalars::KeepExisting);
        assert_eq!((kept.formatted_name.as_str(), kept.note.as_str(), named), ("A", "new", vec!["fn"]));
    }

    #[test]
    fn new_cards_round_trip_through_the_projection() {
        let c = Contact {
            formatted_name: "Dr. Jürgen Müller".into(),
            name: Name { family: "Müller".into(), given: "Jürgen".into(), ..Name::default() },
            org: "Bau, GmbH".into(),
            department: "Einkauf".into(),
            emails: vec![Typed { value: "jm@bau.de".into(), types: vec!["work".into()] }],
            addresses: vec![Address {
                street: "Hauptstr. 1".into(),
                city: "Berlin".into(),
                postal_code: "10115".into(),
                country: "DE".into(),
                ..Address::default()
            }],
            birthday: "1980-02-29".into(),
            influence: "high".into(),
            internal: true,
            note: "line one\nline two; with, punctuation".into(),
            ..Contact::default()
        };
        let text = c.to_new_vcard("u-1");
        let card = super::super::validate(text.as_bytes()).expect("valid vCard");
        assert_eq!(card.new_card.uid, "u-1");
        let back = project(&VCard::parse(&text).expect("parses"));
        assert_eq!(back, c, "{text}");
    }
}
