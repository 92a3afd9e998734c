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
        categories: card
            .properties(&VCardProperty::Categories)
            .flat_map(|c| property_text(c).split(',').map(|s| s.trim().to_string()).collect::<Vec<_>>())
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

/// Case- and accent-insensitive form: NFD, combining marks dropped, lower-cased, ß → ss.
pub fn fold(s: &str) -> String {
    s.nfd().filter(|c| !('\u{300}'..='\u{36f}').contains(c)).collect::<String>().to_lowercase().replace('ß', "ss")
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
        let map: serde_json::Map<String, serde_json::Value> =
            COLUMNS.iter().map(|c| (c.to_string(), serde_json::Value::String(fold(&self.column(c))))).collect();
        serde_json::Value::Object(map).to_string()
    }
}

// ---- writing fields back as vCard lines ----

fn escape(value: &str) -> String {
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

/// Folds a content line at 75 octets (RFC 6350 §3.2), never inside a UTF-8 sequence.
fn fold_line(line: &str) -> String {
    let mut out = String::with_capacity(line.len() + 8);
    let mut width = 0;
    for c in line.chars() {
        if width + c.len_utf8() > 75 {
            out.push_str("\r\n ");
            width = 1;
        }
        out.push(c);
        width += c.len_utf8();
    }
    out.push_str("\r\n");
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
        out.push_str(&fold_line(&format!("UID:{}", escape(uid))));
        for field in FIELDS {
            for line in self.lines_for(field, Version::V4) {
                out.push_str(&fold_line(&line));
            }
        }
        out.push_str("END:VCARD\r\n");
        out
    }
}

/// The property name of an unfolded content line (`item1.EMAIL;TYPE=x:v` → (Some("item1"), "EMAIL")).
fn line_name(line: &str) -> (Option<&str>, String) {
    let head = line.split([';', ':']).next().unwrap_or("");
    match head.split_once('.') {
        Some((group, name)) => (Some(group), name.to_ascii_uppercase()),
        None => (None, head.to_ascii_uppercase()),
    }
}

/// Rewrites `stored` so that the fields where `new` differs from `old` hold `new`'s values; every other line
/// stays byte for byte. Groups that lose their property (Apple's `item1.X-ABLabel`) go with it.
pub fn apply_changes(stored: &str, version: Version, old: &Contact, new: &Contact) -> String {
    let changed: Vec<&str> = FIELDS.iter().copied().filter(|f| old.field_changed(new, f)).collect();
    if changed.is_empty() {
        return stored.to_string();
    }
    let replaced: Vec<&str> = changed.iter().flat_map(|f| field_properties(f).iter().copied()).collect();
    // Physical lines grouped into logical (unfolded) lines, keeping their original bytes.
    let mut logical: Vec<String> = Vec::new();
    for physical in stored.split_inclusive('\n') {
        if (physical.starts_with(' ') || physical.starts_with('\t')) && !logical.is_empty() {
            if let Some(last) = logical.last_mut() {
                last.push_str(physical);
            }
        } else {
            logical.push(physical.to_string());
        }
    }
    let dropped_groups: Vec<String> = logical
        .iter()
        .filter_map(|l| {
            let (group, name) = line_name(l);
            group.filter(|_| replaced.contains(&name.as_str())).map(str::to_string)
        })
        .collect();
    let mut out = String::with_capacity(stored.len() + 256);
    for line in &logical {
        let (group, name) = line_name(line);
        if name == "END" {
            for field in &changed {
                for new_line in new.lines_for(field, version) {
                    out.push_str(&fold_line(&new_line));
                }
            }
        }
        let drop = replaced.contains(&name.as_str()) || group.is_some_and(|g| dropped_groups.iter().any(|d| d == g));
        if !drop {
            out.push_str(line);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(fold("Müller Ærø ÉCOLE Straße"), "muller ærø ecole strasse");
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
        assert!(edited.contains("EMAIL;TYPE=work:anna@neu.de") && !edited.contains("a@x.org"), "{edited}");
        assert!(!edited.contains("X-ABLabel"), "the orphaned label goes with its e-mail: {edited}");
        assert!(
            edited.contains("PHOTO;ENCODING=b;TYPE=JPEG:AAAA\r\n BBBB\r\n") && edited.contains("X-CUSTOM:keep"),
            "{edited}"
        );
        assert!(edited.ends_with("CATEGORIES:Kunde\r\nEND:VCARD\r\n"), "{edited}");
        let reparsed = project(&VCard::parse(&edited).expect("reparses"));
        assert_eq!(reparsed.formatted_name, "Anna Neu");
        assert_eq!(reparsed.categories, ["Kunde"]);
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
