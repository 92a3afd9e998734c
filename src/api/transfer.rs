//! Export (CSV or vCard, with a stated purpose that is audited) and import (vCard or CSV, dry run, matching
//! by UID then e-mail, atomic per file).

use super::{ApiCtx, bad, json_response, new_uid, uuid_form};
use crate::body::{self, Body};
use crate::error::{DavError, DavResult};
use crate::store::{self, Author, BookView, NewCard, Precondition};
use crate::vcard::contact::{
    Address, COLUMNS, Contact, Scalars, Typed, apply_changes, email_key, escape, fold_line, is_modelled, line_name,
    logical_lines, merge, newline_of, project, same_phone, split_value, unfold,
};
use crate::vcard::{self, Version};
use http_body_util::{BodyExt, Limited};
use hyper::{Request, Response, StatusCode, header};
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};

const EXPORT_PAGE: usize = 1000;
const MAX_IMPORT_BYTES: usize = 64 * 1024 * 1024;
/// `uid` last: a spreadsheet user can ignore it, and an edited file imported again updates the same contacts
/// instead of adding copies of those without an e-mail.
const DEFAULT_CSV_COLUMNS: &[&str] =
    &["fn", "given", "family", "org", "title", "email", "phone", "street", "city", "postal_code", "country", "uid"];

/// What to export and why.
pub struct ExportRequest {
    /// "csv" or "vcf".
    pub format: String,
    pub purpose: String,
    pub columns: Vec<String>,
    pub version: Option<Version>,
    pub bom: bool,
    /// The request as given, for the audit record.
    pub description: Value,
}

/// Checks the parts of an export request that do not depend on the selection.
pub fn export_request(
    params: &HashMap<String, String>,
    columns: Option<Vec<String>>,
    description: Value,
) -> DavResult<ExportRequest> {
    let purpose = params.get("purpose").map(|p| p.trim()).filter(|p| !p.is_empty()).ok_or_else(|| {
        bad("purpose: an export must state its purpose (for example purpose=Newsletter); it is recorded in the audit log")
    })?;
    if purpose.chars().count() > 200 {
        return Err(bad("purpose: at most 200 characters"));
    }
    // It is written to the audit log and the server log as given: one line of text.
    if purpose.chars().any(char::is_control) {
        return Err(bad("purpose: no line breaks or other control characters"));
    }
    let format = params.get("format").map(String::as_str).unwrap_or("csv");
    if !matches!(format, "csv" | "vcf") {
        return Err(bad(format!("format: '{format}' is not csv or vcf")));
    }
    let version =
        params.get("version").map(|v| Version::parse(v).ok_or_else(|| bad("version: use 3.0 or 4.0"))).transpose()?;
    Ok(ExportRequest {
        format: format.to_string(),
        purpose: purpose.to_string(),
        columns: columns.unwrap_or_else(|| DEFAULT_CSV_COLUMNS.iter().map(|c| c.to_string()).collect()),
        version,
        bom: params.get("bom").map(String::as_str) != Some("false"),
        description,
    })
}

/// `GET /api/v1/contacts/export?format=csv|vcf&purpose=…`: every matching contact, audited with the purpose.
pub async fn export(ctx: &ApiCtx, params: &HashMap<String, String>) -> DavResult<Response<Body>> {
    let mut paging = params.clone();
    paging.remove("cursor");
    paging.insert("limit".into(), EXPORT_PAGE.to_string());
    let selection = ctx.selection(&paging).await?;
    let request = export_request(params, selection.columns.clone(), selection.description.clone())?;
    let books: HashMap<i64, store::BookView> = ctx.visible_books().await?.into_iter().map(|b| (b.id, b)).collect();
    let store = ctx.store().clone();
    let user = ctx.user.username.clone();
    let query = selection.query;
    let format = request.format.clone();
    let (bytes, count) =
        tokio::task::spawn_blocking(move || run_export(store.as_ref(), &user, &books, query, &request))
            .await
            .map_err(|e| DavError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    let (content_type, ext) =
        if format == "csv" { ("text/csv; charset=utf-8", "csv") } else { ("text/vcard; charset=utf-8", "vcf") };
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CONTENT_DISPOSITION, format!("attachment; filename=\"contacts.{ext}\""))
        .header("X-Exported-Count", count.to_string())
        .body(body::full(bytes))
        .map_err(|e| DavError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// Writes every contact the query matches (all pages) as CSV or vCard and records the export — who, when,
/// purpose, selection, count and which contacts — in the audit log. Returns the file and the count.
pub fn run_export(
    store: &dyn store::Store,
    username: &str,
    books: &HashMap<i64, store::BookView>,
    mut query: store::ContactQuery,
    request: &ExportRequest,
) -> DavResult<(Vec<u8>, usize)> {
    let internal = |e: csv::Error| DavError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    let mut csv_out = csv::WriterBuilder::new().terminator(csv::Terminator::CRLF).from_writer(Vec::new());
    let mut vcf_out: Vec<u8> = Vec::new();
    if request.format == "csv" {
        csv_out.write_record(&request.columns).map_err(internal)?;
    }
    query.limit = Some(EXPORT_PAGE);
    query.after = None;
    let mut exported: Vec<String> = Vec::new();
    loop {
        let page = store.search_contacts(&query)?;
        for found in &page {
            let Some(book) = books.get(&found.book) else { continue };
            // The card's own href in its owner's home, whoever exports it: a sharee's view of a book has
            // another segment, and subject access and erasure look for every export of the card (privacy.rs).
            exported.push(crate::router::card_href(&book.owner, &book.owner_segment, &found.meta.name));
            if request.format == "csv" {
                let Some(card) = vcard::parse_stored(&found.vcard) else { continue };
                let contact = project(&card);
                // Several values (and the lines of a note) are separated by newlines; the CSV writer quotes them.
                let row: Vec<String> = request
                    .columns
                    .iter()
                    .map(|c| guard_formula(if c == "uid" { found.meta.uid.clone() } else { contact.column(c) }))
                    .collect();
                csv_out.write_record(&row).map_err(internal)?;
            } else {
                let (bytes, _) = vcard::render(&found.vcard, &found.meta.version, request.version, None);
                vcf_out.extend_from_slice(&bytes);
                if !bytes.ends_with(b"\n") {
                    vcf_out.extend_from_slice(b"\r\n");
                }
            }
        }
        match page.last() {
            Some(last) if page.len() == EXPORT_PAGE => query.after = Some((last.sort_key.clone(), last.id)),
            _ => break,
        }
    }
    let detail = json!({
        "purpose": request.purpose, "format": request.format, "selection": request.description,
        "count": exported.len(), "contacts": exported,
    });
    store.audit(username, "export", "contacts", &detail.to_string())?;
    tracing::info!(user = %username, purpose = ?request.purpose, format = %request.format, count = exported.len(), "contacts exported");
    let bytes = if request.format == "csv" {
        let mut bytes =
            csv_out.into_inner().map_err(|e| DavError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        if request.bom {
            // Excel only reads UTF-8 CSV correctly when it starts with a byte-order mark.
            bytes.splice(0..0, *b"\xEF\xBB\xBF");
        }
        bytes
    } else {
        vcf_out
    };
    Ok((bytes, exported.len()))
}

/// A CSV header as a contact column: our own names, Google Contacts and Outlook exports.
fn auto_column(header: &str) -> Option<&'static str> {
    let h = header.trim().trim_start_matches('\u{feff}').to_lowercase();
    if let Some(c) = COLUMNS.iter().find(|c| **c == h) {
        return Some(c);
    }
    let starts = |p: &str| h.starts_with(p);
    Some(match h.as_str() {
        "name" | "display name" | "full name" => "fn",
        "given name" | "first name" | "vorname" => "given",
        "family name" | "last name" | "surname" | "nachname" => "family",
        "company" | "organization" | "organisation" | "firma" => "org",
        "job title" | "position" => "title",
        "birthday" | "geburtstag" => "birthday",
        "notes" | "note" | "notizen" => "note",
        "web page" | "website" => "website",
        "categories" | "group membership" | "labels" => "categories",
        "gender" => "gender",
        "department" => "department",
        _ if starts("e-mail") && (h.ends_with("value") || h.ends_with("address")) => "email",
        _ if h == "email" || h == "e-mail" => "email",
        _ if starts("phone") && h.ends_with("value") => "phone",
        _ if h.ends_with(" phone") || h == "phone" || h == "mobile" || h == "telefon" => "phone",
        _ if starts("organization") && h.ends_with("- name") => "org",
        _ if starts("organization") && h.ends_with("- title") => "title",
        _ if starts("organization") && h.ends_with("- department") => "department",
        _ if starts("address 1") && h.ends_with("- street") => "street",
        _ if starts("address 1") && h.ends_with("- city") => "city",
        _ if starts("address 1") && h.ends_with("- postal code") => "postal_code",
        _ if starts("address 1") && h.ends_with("- country") => "country",
        _ if starts("website") && h.ends_with("value") => "website",
        "business street" | "home street" | "street" | "straße" => "street",
        "business city" | "home city" | "city" | "ort" | "stadt" => "city",
        "business postal code" | "home postal code" | "postal code" | "zip" | "plz" => "postal_code",
        "business country/region" | "home country/region" | "country" | "land" => "country",
        _ => return None,
    })
}

/// The columns that make up an address in a CSV row.
const ADDRESS_COLUMNS: &[&str] = &["street", "city", "postal_code", "country"];

/// The values of a cell that holds several: one per line (kartei's own export), separated by ` ::: `
/// (Google Contacts) or by `separators`.
fn cell_values<'a>(value: &'a str, separators: &'a [char]) -> impl Iterator<Item = String> + 'a {
    value
        .split(":::")
        .flat_map(move |part| part.split(move |c| c == '\n' || separators.contains(&c)))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// A cell that a spreadsheet would run as a formula (`=HYPERLINK(…)`, `@SUM(…)`, `+cmd|…`, OWASP's "CSV
/// injection"), prefixed with `'` so that it shows as text; contact data comes from outside (bookings,
/// imports, every device of every member of a shared book). Numbers and phone numbers (`+49 30 1234`,
/// `-5`) cannot call anything and stay as they are. The import takes the `'` off again ([`unguard_formula`]).
fn guard_formula(cell: String) -> String {
    let harmless = |c: char| c.is_ascii_digit() || " +-()./\n".contains(c);
    match cell.chars().next() {
        Some('=' | '@' | '\t' | '\r') => format!("'{cell}"),
        Some('+' | '-') if !cell.chars().all(harmless) => format!("'{cell}"),
        // A value that already looks guarded would lose its own `'` on the way back in.
        Some('\'') if looks_guarded(&cell) => format!("'{cell}"),
        _ => cell,
    }
}

/// A `'` in front of a formula's first character, or in front of such a value.
fn looks_guarded(cell: &str) -> bool {
    cell.starts_with('\'') && cell.trim_start_matches('\'').starts_with(['=', '@', '+', '-', '\t', '\r'])
}

/// A cell as it was before [`guard_formula`].
fn unguard_formula(cell: &str) -> &str {
    if looks_guarded(cell) { &cell[1..] } else { cell }
}

/// Puts one CSV value into the contact field behind `column` (addresses are put together by
/// [`csv_addresses`]).
fn set_column(c: &mut Contact, column: &str, value: &str) {
    let v = value.trim();
    if v.is_empty() {
        return;
    }
    let typed = |value: String| Typed { value, types: vec![] };
    match column {
        "fn" => c.formatted_name = v.into(),
        "family" => c.name.family = v.into(),
        "given" => c.name.given = v.into(),
        "org" => c.org = v.into(),
        "department" => c.department = v.into(),
        "title" => c.title = v.into(),
        "role" => c.role = v.into(),
        "degree" => c.degree = v.into(),
        "email" => c.emails.extend(cell_values(v, &[';']).map(typed)),
        "phone" => c.phones.extend(cell_values(v, &[';']).map(typed)),
        "birthday" => c.birthday = v.into(),
        "gender" => c.gender = v.into(),
        "website" => c.websites.extend(cell_values(v, &[])),
        "social" => c.social.extend(cell_values(v, &[])),
        "categories" => c.categories.extend(
            cell_values(v, &[',', ';'])
                .flat_map(|x| x.split(":::").map(str::to_string).collect::<Vec<_>>())
                .map(|x| x.trim().trim_start_matches('*').trim().to_string())
                .filter(|x| !x.is_empty()),
        ),
        "note" => c.note = v.into(),
        "influence" => c.influence = v.into(),
        "attitude" => c.attitude = v.into(),
        "personality" => c.personality = v.into(),
        "internal" => c.internal = matches!(v.to_lowercase().as_str(), "true" | "yes" | "1" | "ja"),
        _ => {}
    }
}

/// The addresses of a CSV row, from its `(column, cell)` pairs in file order. A column that comes again
/// (Outlook's "Business City" and "Home City") starts another address. A cell holds several addresses, one
/// per line (kartei's export) or separated by `;` (older kartei exports), only when every filled address cell
/// of the row holds the same number; otherwise the cells make one address (a street may have two lines).
fn csv_addresses(cells: &[(&str, &str)]) -> Vec<Address> {
    let mut groups: Vec<Vec<(&str, &str)>> = Vec::new();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for &(column, value) in cells {
        let n = seen.entry(column).or_insert(0);
        if groups.len() <= *n {
            groups.push(Vec::new());
        }
        groups[*n].push((column, value));
        *n += 1;
    }
    let mut out = Vec::new();
    for group in groups {
        let filled: Vec<(&str, &str)> = group.into_iter().filter(|(_, v)| !v.is_empty()).collect();
        let split = ['\n', ';'].into_iter().find(|&sep| {
            let counts: Vec<usize> = filled.iter().map(|(_, v)| v.split(sep).count()).collect();
            filled.len() >= 2 && counts[0] > 1 && counts.iter().all(|&c| c == counts[0])
        });
        let parts: Vec<(&str, Vec<&str>)> =
            filled.iter().map(|&(c, v)| (c, split.map_or_else(|| vec![v], |sep| v.split(sep).collect()))).collect();
        let count = parts.iter().map(|(_, p)| p.len()).max().unwrap_or(0);
        for i in 0..count {
            let mut a = Address::default();
            for (column, values) in &parts {
                let v = values.get(i).map(|v| v.trim().to_string()).unwrap_or_default();
                match *column {
                    "street" => a.street = v,
                    "city" => a.city = v,
                    "postal_code" => a.postal_code = v,
                    _ => a.country = v,
                }
            }
            if ![&a.street, &a.city, &a.postal_code, &a.country].iter().all(|p| p.is_empty()) {
                out.push(a);
            }
        }
    }
    out
}

/// One contact to import, before matching.
struct ImportRow {
    row: usize,
    /// A CSV row without a name cell: its FN was made up (from the name parts, organization or e-mail) for a
    /// new card, and must not replace the name of a card it is merged into.
    made_up_fn: bool,
    /// The UID from the file, or for a contact without one the UID kartei made from its text.
    uid: Option<String>,
    /// The UID was made from the text (`uid_for_uidless`): a second row with it holds the same text.
    uid_from_content: bool,
    contact: Contact,
    /// For vCard imports: the validated card to store (3.0/4.0 as uploaded, plus a UID or FN when it had
    /// none; older versions converted to 4.0).
    card: Option<vcard::ValidCard>,
}

impl ImportRow {
    /// What the row would store, to tell a repeated row from another contact with the same UID.
    fn fingerprint(&self) -> String {
        match &self.card {
            Some(card) => String::from_utf8_lossy(&card.new_card.bytes).into_owned(),
            None => serde_json::to_string(&self.contact).unwrap_or_default(),
        }
    }
}

fn parse_csv(text: &str, mapping: Option<&Value>) -> DavResult<Vec<Result<ImportRow, (usize, String)>>> {
    let text = text.trim_start_matches('\u{feff}');
    let header_line = text.lines().next().unwrap_or("");
    let delimiter = if header_line.matches(';').count() > header_line.matches(',').count() { b';' } else { b',' };
    let mut reader = csv::ReaderBuilder::new().delimiter(delimiter).flexible(false).from_reader(text.as_bytes());
    let headers = reader.headers().map_err(|e| bad(format!("CSV header: {e}")))?.clone();
    let mut columns: Vec<Option<String>> = headers.iter().map(|h| auto_column(h).map(str::to_string)).collect();
    if let Some(map) = mapping {
        let map = map.as_object().ok_or_else(|| bad("mapping: a JSON object {\"CSV header\": \"column\"}"))?;
        for (csv_header, column) in map {
            let column = column
                .as_str()
                .ok_or_else(|| bad(format!("mapping: the column for '{csv_header}' must be a string")))?;
            if !column.is_empty() && !COLUMNS.contains(&column) {
                return Err(bad(format!("mapping: unknown column '{column}'")));
            }
            let index = headers
                .iter()
                .position(|h| h.trim() == csv_header)
                .ok_or_else(|| bad(format!("mapping: the CSV has no column '{csv_header}'")))?;
            columns[index] = if column.is_empty() { None } else { Some(column.to_string()) };
        }
    }
    if columns.iter().all(Option::is_none) {
        return Err(bad("CSV: no column could be mapped to a contact field; give a mapping"));
    }
    let mut rows = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let row = i + 2; // 1-based, after the header line
        match record {
            Err(e) => rows.push(Err((row, format!("malformed CSV row: {e}")))),
            Ok(record) => {
                let mut contact = Contact::default();
                let mut uid = None;
                let mut address_cells = Vec::new();
                for (value, column) in record.iter().zip(&columns) {
                    let value = unguard_formula(value);
                    match column.as_deref() {
                        Some(c) if ADDRESS_COLUMNS.contains(&c) => address_cells.push((c, value)),
                        Some(c) => set_column(&mut contact, c, value),
                        None => {}
                    }
                }
                contact.addresses = csv_addresses(&address_cells);
                if let Some(i) = headers.iter().position(|h| h.trim().eq_ignore_ascii_case("uid")) {
                    uid =
                        record.get(i).map(|u| unguard_formula(u).trim()).filter(|u| !u.is_empty()).map(str::to_string);
                }
                let uid_from_content = uid.is_none();
                if uid_from_content {
                    // The header too: the same cells under other columns are another contact.
                    let cells = headers.iter().chain(record.iter()).collect::<Vec<_>>().join("\u{1f}");
                    uid = Some(uid_for_uidless(&cells));
                }
                let made_up_fn = contact.formatted_name.is_empty();
                if contact.formatted_name.is_empty() {
                    let composed = [contact.name.given.as_str(), contact.name.family.as_str()]
                        .iter()
                        .filter(|s| !s.is_empty())
                        .copied()
                        .collect::<Vec<_>>()
                        .join(" ");
                    contact.formatted_name = if composed.is_empty() { contact.org.clone() } else { composed };
                }
                if contact.formatted_name.is_empty() && contact.emails.is_empty() {
                    rows.push(Err((row, "the row has neither a name nor an e-mail address".into())));
                } else {
                    if contact.formatted_name.is_empty() {
                        contact.formatted_name = contact.emails[0].value.clone();
                    }
                    rows.push(Ok(ImportRow { row, made_up_fn, uid, uid_from_content, contact, card: None }));
                }
            }
        }
    }
    Ok(rows)
}

/// A piece of an uploaded .vcf file.
enum Piece<'a> {
    /// From a `BEGIN:VCARD` line to its `END:VCARD` line, as uploaded.
    Card(&'a str),
    /// A line outside any card.
    Stray(&'a str),
    /// A card without its `END:VCARD`.
    Unterminated,
}

/// Splits a .vcf file into its cards, keeping each card's bytes (a nested card, vCard 2.1's AGENT, stays
/// inside its card).
fn split_cards(text: &str) -> Vec<Piece<'_>> {
    let mut out = Vec::new();
    let (mut depth, mut start, mut offset) = (0usize, 0, 0);
    for line in text.split_inclusive('\n') {
        let at = offset;
        offset += line.len();
        // Files joined with `cat` keep each one's byte order mark, before its BEGIN:VCARD.
        let bom = if depth == 0 { line.len() - line.trim_start_matches('\u{feff}').len() } else { 0 };
        let bare = line[bom..].trim_end_matches(['\r', '\n', ' ', '\t']);
        if bare.eq_ignore_ascii_case("BEGIN:VCARD") {
            if depth == 0 {
                start = at + bom;
            }
            depth += 1;
        } else if depth > 0 && bare.eq_ignore_ascii_case("END:VCARD") {
            depth -= 1;
            if depth == 0 {
                out.push(Piece::Card(&text[start..offset]));
            }
        } else if depth == 0 && !bare.trim().is_empty() {
            out.push(Piece::Stray(bare));
        }
    }
    if depth > 0 {
        out.push(Piece::Unterminated);
    }
    out
}

/// `text` with `lines` inserted before its `END:VCARD` line.
fn insert_before_end(text: &str, lines: &str) -> String {
    let mut offset = 0;
    let mut end_at = text.len();
    for line in logical_lines(text) {
        if line_name(line).1 == "END" {
            end_at = offset;
        }
        offset += line.len();
    }
    let mut out = String::with_capacity(text.len() + lines.len());
    out.push_str(&text[..end_at]);
    out.push_str(lines);
    out.push_str(&text[end_at..]);
    out
}

/// Why a card was refused, as PUT would say it.
fn invalid_reason(invalid: vcard::Invalid) -> String {
    match invalid {
        vcard::Invalid::Unsupported(m) | vcard::Invalid::Malformed(m) => m,
    }
}

fn parse_vcf(text: &str) -> Vec<Result<ImportRow, (usize, String)>> {
    let mut out = Vec::new();
    for (i, piece) in split_cards(text.trim_start_matches('\u{feff}')).into_iter().enumerate() {
        let n = i + 1;
        let chunk = match piece {
            Piece::Card(chunk) => chunk,
            Piece::Stray(line) => {
                out.push(Err((n, format!("invalid line: {}", line.chars().take(60).collect::<String>()))));
                continue;
            }
            Piece::Unterminated => {
                out.push(Err((n, "the vCard is not terminated by END:VCARD".into())));
                continue;
            }
        };
        // Dates in the extended format are handed to calcard in the basic one (see vcard::calcard_input).
        let readable = vcard::calcard_input(chunk);
        let card = match calcard::Parser::new(&readable).entry() {
            calcard::Entry::VCard(mut card) => {
                vcard::restore_binary_values(&mut card, chunk);
                card
            }
            calcard::Entry::InvalidLine(line) => {
                out.push(Err((n, format!("invalid line: {}", line.chars().take(60).collect::<String>()))));
                continue;
            }
            _ => {
                out.push(Err((n, "not a vCard".into())));
                continue;
            }
        };
        let mut contact = project(&card);
        let file_uid = card.uid().map(str::trim).filter(|u| !u.is_empty()).map(str::to_string);
        let generated_uid = if file_uid.is_none() { Some(uid_for_uidless(chunk)) } else { None };
        let has_fn = card.property(&calcard::vcard::VCardProperty::Fn).is_some();
        let (source, newline) = match card.version() {
            // 3.0 and 4.0 are stored as uploaded, like a PUT.
            Some(calcard::vcard::VCardVersion::V3_0 | calcard::vcard::VCardVersion::V4_0) => {
                (chunk.to_string(), newline_of(chunk))
            }
            _ => (vcard::write_as(&card, Version::V4), "\r\n"),
        };
        // What kartei must add (older producers, Outlook and phone exports omit UID or FN): one line each, and
        // an empty UID line gives way to the new one.
        let mut additions = String::new();
        if let Some(uid) = &generated_uid {
            additions.push_str(&format!("UID:{uid}{newline}"));
        }
        if !has_fn {
            let fallback_fn = if contact.formatted_name.is_empty() {
                [contact.name.given.as_str(), contact.name.family.as_str()].join(" ").trim().to_string()
            } else {
                contact.formatted_name.clone()
            };
            let line = format!("FN:{}", escape(if fallback_fn.is_empty() { "(no name)" } else { &fallback_fn }));
            additions.push_str(&fold_line(&line, newline));
            contact.formatted_name = fallback_fn;
        }
        let source: String = if generated_uid.is_some() {
            logical_lines(&source).into_iter().filter(|l| line_name(l).1 != "UID").collect()
        } else {
            source
        };
        let text = insert_before_end(&source, &additions);
        // The checks a PUT makes: a card that PUT would refuse (a line without a name or a colon, which the
        // parser skips) is refused with its reason rather than stored without the line.
        match vcard::validate(text.as_bytes()) {
            Ok(valid) => {
                let uid = Some(valid.new_card.uid.clone());
                let uid_from_content = generated_uid.is_some();
                out.push(Ok(ImportRow { row: n, made_up_fn: false, uid, uid_from_content, contact, card: Some(valid) }))
            }
            Err(e) => out.push(Err((n, invalid_reason(e)))),
        }
    }
    out
}

/// The UID given to a card that has none: made from its text (a name-based UUID, version 8), so that importing
/// the same export again finds the cards it made instead of adding them a second time. Line endings and
/// trailing blanks do not count: the same export saved by another tool is the same card.
fn uid_for_uidless(card: &str) -> String {
    use sha2::Digest;
    let mut hash = sha2::Sha256::new();
    for line in card.lines() {
        hash.update(line.trim_end().as_bytes());
        hash.update(b"\n");
    }
    uuid_form(&hash.finalize(), '8')
}

/// How an import treats each row (the import operation's description in the OpenAPI document; README says
/// the same).
pub const IMPORT_RULES: &str = "Atomic per file: when a row is refused nothing is written (422 with the row \
report). Each row is matched to a card of the book by UID, then by e-mail (trimmed, case-insensitive). vCard \
3.0 and 4.0 cards are stored as uploaded; only a missing UID or FN is added, as one line. A UID kartei adds \
(to a vCard or CSV row without one) is made from the text, so importing the same file again finds its cards, \
and a second copy of a contact in one file is `unchanged` (`same_as_row`). vCard 2.1 is \
converted to 4.0. A card that PUT would refuse is refused with its reason. Same UID: the file's card replaces \
the stored one. Same e-mail only: the existing card and its UID stay, and it gets what it lacks: new e-mails, \
phones (compared by number; both as the file writes them, with parameters and labels, when the versions \
agree), addresses, websites and categories, and fields it has empty; fields that differ \
keep the book's value and are listed in the row's `kept`; other properties are copied when the card has none \
of them, else listed in `not_merged`. CSV rows: a filled cell replaces a single-valued field (name, \
organization, title, birthday, note...); e-mails, phones and addresses are added only when new, an address \
only completes an address it agrees with and never replaces one; multi-valued cells hold one value per line. \
Lines that do not change stay byte for byte. A row that changes nothing is `unchanged` and not written. A new \
card is named after its UID, with -2, -3... when another card has that name.";

/// What an import run was asked to do.
pub struct ImportRequest {
    /// "csv" or "vcf".
    pub format: String,
    pub mapping: Option<Value>,
    pub dry_run: bool,
    /// Who imports, and the source noted as each contact's origin ("import: <file name>").
    pub actor: String,
    pub source: String,
    /// `[limits] max_resource_size`: a card larger than this is refused, as by PUT.
    pub max_card_size: usize,
}

/// Guesses the format of an upload from its Content-Type and first bytes.
pub fn detect_format(content_type: &str, text: &str) -> String {
    if content_type.contains("csv") {
        "csv".into()
    } else if text.trim_start_matches('\u{feff}').trim_start().to_uppercase().starts_with("BEGIN:VCARD") {
        "vcf".into()
    } else {
        "csv".into()
    }
}

/// `POST /api/v1/books/{book}/import?format=vcf|csv&dry_run=true&mapping={…}`.
pub async fn import(
    ctx: &ApiCtx,
    book: &BookView,
    params: &HashMap<String, String>,
    req: Request<crate::body::RequestBody>,
) -> DavResult<Response<Body>> {
    crate::app::App::require_writable(book)?;
    let content_type =
        req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_lowercase();
    let req_accept = req.headers().get(header::ACCEPT).and_then(|v| v.to_str().ok()).map(str::to_string);
    let bytes = read_upload(req.into_body()).await?;
    let text = String::from_utf8(bytes).map_err(|_| bad("the file is not UTF-8 text"))?;
    let request = ImportRequest {
        format: params.get("format").cloned().unwrap_or_else(|| detect_format(&content_type, &text)),
        mapping: match params.get("mapping").filter(|m| !m.trim().is_empty()) {
            Some(m) => Some(serde_json::from_str::<Value>(m).map_err(|e| bad(format!("mapping: invalid JSON: {e}")))?),
            None => None,
        },
        dry_run: matches!(params.get("dry_run").map(String::as_str), Some("true" | "1" | "yes")),
        actor: ctx.user.username.clone(),
        source: format!("import: {}", params.get("filename").map(String::as_str).unwrap_or("upload")),
        max_card_size: ctx.app.config.limits.max_resource_size,
    };
    let store = ctx.store().clone();
    let target = book.clone();
    let wants_progress = params.get("progress").is_some_and(|p| matches!(p.as_str(), "true" | "1" | "ndjson"))
        || ctx_accepts_ndjson(req_accept.as_deref());
    if wants_progress {
        let slot = ctx.app.streaming.slot(&ctx.user.username).await?;
        return Ok(streamed_import(&ctx.app.streaming, slot, store, target, text, request));
    }
    let (status, summary) =
        tokio::task::spawn_blocking(move || run_import(store.as_ref(), &target, &text, &request, &mut |_, _| {}))
            .await
            .map_err(|e| DavError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    if status == StatusCode::OK && !summary["dry_run"].as_bool().unwrap_or(true) {
        let detail =
            json!({"created": summary["created"], "updated": summary["updated"], "uids": imported_uids(&summary)});
        ctx.audit("import", book, &detail.to_string()).await;
    }
    Ok(json_response(status, &summary))
}

fn ctx_accepts_ndjson(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| a.contains("application/x-ndjson"))
}

/// A large import with live progress: `application/x-ndjson`, one `{"progress": {"done", "total"}}` line
/// per ~1% of the rows as they are planned, then the summary line (with its `status`: 200, or 422 when
/// rows were refused and nothing was imported). The HTTP status is 200 once streaming starts.
fn streamed_import(
    streaming: &body::Streaming,
    slot: body::Slot,
    store: store::SharedStore,
    book: BookView,
    text: String,
    request: ImportRequest,
) -> Response<Body> {
    let produce = move |out: &mut dyn body::AnswerSink| -> std::io::Result<()> {
        let mut last_line = 0usize;
        let mut write_error = None;
        let result = run_import(store.as_ref(), &book, &text, &request, &mut |done, total| {
            let step = (total / 100).max(1);
            if write_error.is_none() && (done >= last_line + step || done == total) {
                last_line = done;
                if let Err(e) = writeln!(out, "{}", json!({"progress": {"done": done, "total": total}})) {
                    write_error = Some(e);
                }
            }
        });
        if let Some(e) = write_error {
            return Err(e);
        }
        let (status, mut summary) = match result {
            Ok(r) => r,
            Err(e) => (e.status, json!({"error": e.message})),
        };
        if status == StatusCode::OK && !summary["dry_run"].as_bool().unwrap_or(true) {
            let detail =
                json!({"created": summary["created"], "updated": summary["updated"], "uids": imported_uids(&summary)});
            let target = format!("{}/{}", book.owner, book.owner_segment);
            if let Err(e) = store.audit(&request.actor, "import", &target, &detail.to_string()) {
                tracing::error!(error = %e, "could not write an audit record");
            }
        }
        summary["status"] = json!(status.as_u16());
        writeln!(out, "{summary}")
    };
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(body::stream_body(streaming, slot, body::Coding::Identity, produce))
        .unwrap_or_else(|_| Response::new(body::empty()))
}

/// What an import does with one row, once planned.
struct Planned {
    name: String,
    /// The card to write; `None` when the row changes nothing.
    card: Option<NewCard>,
    pre: Precondition,
    action: &'static str,
    uid: String,
    /// For an update: "uid" or "email", what the row was matched by.
    matched_by: Option<&'static str>,
    /// Fields the existing card kept although the row had another value.
    kept: Vec<&'static str>,
    /// Properties of the row's card that could not be added to the existing card.
    not_merged: Vec<String>,
}

/// Plans and (unless a dry run) applies an import in one transaction. `progress(done, total)` is called as
/// rows are planned. Answers 200 with the row report, or 422 with it when any row was refused (nothing is
/// written then: an import is atomic per file).
pub fn run_import(
    store: &dyn store::Store,
    book: &BookView,
    text: &str,
    request: &ImportRequest,
    progress: &mut dyn FnMut(usize, usize),
) -> DavResult<(StatusCode, Value)> {
    let rows = match request.format.as_str() {
        "csv" => parse_csv(text, request.mapping.as_ref())?,
        "vcf" => parse_vcf(text),
        other => return Err(bad(format!("format: '{other}' is not csv or vcf"))),
    };
    // Existing cards by UID and by e-mail, to update instead of duplicating. Both sides go through
    // `email_key` (the stored column holds the same form; keying it again trims).
    let index = store.card_index(book.id)?;
    let by_uid: HashMap<&str, usize> = index.iter().enumerate().map(|(i, k)| (k.uid.as_str(), i)).collect();
    let mut by_email: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, k) in index.iter().enumerate() {
        // The column may hold an address twice (as written and as the bare address): one entry per card.
        let keys: HashSet<String> = k.emails.lines().map(email_key).filter(|e| !e.is_empty()).collect();
        for e in keys {
            by_email.entry(e).or_default().push(i);
        }
    }
    // Resource names in use, so that a new card never lands on another card's name.
    let mut names: HashSet<String> = index.iter().map(|k| k.name.clone()).collect();
    let total = rows.len();
    let mut report = Vec::new();
    let mut writes: Vec<(String, NewCard, Precondition)> = Vec::new();
    // Existing cards this import updates, and UIDs it creates: the row that did, for a second row that would.
    let mut touched: HashMap<String, usize> = HashMap::new();
    let mut created_uids: HashMap<String, usize> = HashMap::new();
    let mut same_text: HashMap<String, (usize, String)> = HashMap::new();
    let (mut created, mut updated, mut unchanged, mut rejected) = (0, 0, 0, 0);
    for (done, row) in rows.into_iter().enumerate() {
        if done % 500 == 0 {
            progress(done, total);
        }
        let incoming = match row {
            Ok(i) => i,
            Err((row, reason)) => {
                rejected += 1;
                report.push(json!({"row": row, "action": "reject", "reason": reason}));
                continue;
            }
        };
        let matched = match incoming.uid.as_deref().and_then(|u| by_uid.get(u)) {
            Some(&i) => Some((i, "uid")),
            None => {
                // People may share an address (a couple, a family): a card that another row of this file has
                // matched already is passed over for the next card with the address, so that such rows meet
                // their own cards again on a second import.
                let mut candidates =
                    incoming.contact.emails.iter().filter_map(|e| by_email.get(&email_key(&e.value))).flatten();
                let first = candidates.clone().next();
                candidates.find(|&&i| !touched.contains_key(&index[i].name)).or(first).map(|&i| (i, "email"))
            }
        };
        let (row_number, row_fn) = (incoming.row, incoming.contact.formatted_name.clone());
        if let Some(uid) = &incoming.uid {
            // The same contact as an earlier row (an export of several books holds a card copied between them
            // twice, UID and all): nothing more to store. A UID made from the text says so by itself; a UID
            // from the file only with the same content.
            let content = if incoming.uid_from_content { String::new() } else { incoming.fingerprint() };
            match same_text.get(uid) {
                Some((first, earlier)) if *earlier == content => {
                    unchanged += 1;
                    report.push(json!({"row": row_number, "action": "unchanged", "uid": uid, "fn": row_fn,
                        "same_as_row": first}));
                    continue;
                }
                Some(_) => {}
                None => {
                    same_text.insert(uid.clone(), (row_number, content));
                }
            }
        }
        let outcome = match matched {
            Some((i, how)) => plan_update(store, book, &index[i], how, incoming)?,
            None => plan_create(incoming, &names),
        };
        // The limit a PUT has (CARD:max-resource-size) holds for imported and merged cards too.
        let outcome = outcome.and_then(|p| match &p.card {
            Some(card) if card.bytes.len() > request.max_card_size => Err(format!(
                "the card would be {} bytes, more than the maximum resource size of {} bytes",
                card.bytes.len(),
                request.max_card_size
            )),
            _ => Ok(p),
        });
        let planned = match outcome {
            Ok(p) => p,
            Err(reason) => {
                rejected += 1;
                report.push(json!({"row": row_number, "action": "reject", "reason": reason}));
                continue;
            }
        };
        let first = match planned.action {
            "create" => created_uids.get(&planned.uid),
            _ => touched.get(&planned.name),
        };
        if let Some(first) = first {
            rejected += 1;
            let reason = format!("the same contact as row {first}");
            report.push(json!({"row": row_number, "action": "reject", "uid": planned.uid, "reason": reason}));
            continue;
        }
        match planned.action {
            "create" => {
                created += 1;
                created_uids.insert(planned.uid.clone(), row_number);
                names.insert(planned.name.clone());
            }
            "update" => updated += 1,
            _ => unchanged += 1,
        }
        if planned.action != "create" {
            touched.insert(planned.name.clone(), row_number);
        }
        let mut entry = json!({"row": row_number, "action": planned.action, "uid": planned.uid, "fn": row_fn});
        if let Some(how) = planned.matched_by {
            entry["match"] = json!(how);
        }
        if !planned.kept.is_empty() {
            entry["kept"] = json!(planned.kept);
        }
        if !planned.not_merged.is_empty() {
            entry["not_merged"] = json!(planned.not_merged);
        }
        report.push(entry);
        if let Some(card) = planned.card {
            writes.push((planned.name, card, planned.pre));
        }
    }
    progress(total, total);
    let mut summary = json!({
        "dry_run": request.dry_run, "created": created, "updated": updated, "unchanged": unchanged,
        "rejected": rejected, "rows": report,
    });
    if request.dry_run {
        return Ok((StatusCode::OK, summary));
    }
    if rejected > 0 {
        summary["error"] =
            json!(format!("{rejected} rows were refused; nothing was imported (see rows, or run with dry_run=true)"));
        return Ok((StatusCode::UNPROCESSABLE_ENTITY, summary));
    }
    if writes.is_empty() {
        return Ok((StatusCode::OK, summary));
    }
    let author = Author { actor: &request.actor, via: &request.source };
    match store.put_cards_by(book.id, &writes, &author) {
        Ok(_) => Ok((StatusCode::OK, summary)),
        Err(store::Error::PreconditionFailed) => Err(DavError::new(
            StatusCode::CONFLICT,
            "the book changed during the import; nothing was imported, try again",
        )),
        Err(store::Error::UidConflict(existing)) => Err(DavError::new(
            StatusCode::CONFLICT,
            format!("a UID in the file is already used by {existing}; nothing was imported"),
        )),
        Err(e) => Err(e.into()),
    }
}

/// A row that matches no card: a new card, named after its UID unless another card has that name.
fn plan_create(incoming: ImportRow, names: &HashSet<String>) -> Result<Planned, String> {
    let card = match incoming.card {
        Some(valid) => valid.new_card,
        None => {
            let uid = incoming.uid.unwrap_or_else(new_uid);
            vcard::validate(incoming.contact.to_new_vcard(&uid).as_bytes()).map_err(invalid_reason)?.new_card
        }
    };
    Ok(Planned {
        name: free_name(&card.uid, names),
        uid: card.uid.clone(),
        card: Some(card),
        pre: Precondition::MustNotExist,
        action: "create",
        matched_by: None,
        kept: Vec::new(),
        not_merged: Vec::new(),
    })
}

/// A resource name for a new card: its UID (without the characters a path segment cannot hold), with `-2`,
/// `-3`… when another card already has that name.
fn free_name(uid: &str, taken: &HashSet<String>) -> String {
    let base: String = uid.chars().map(|c| if c == '/' || c == '\\' || c.is_control() { '_' } else { c }).collect();
    let mut name = format!("{base}.vcf");
    let mut n = 1;
    while taken.contains(&name) {
        n += 1;
        name = format!("{base}-{n}.vcf");
    }
    name
}

/// A row that matches an existing card. By UID, a vCard replaces the card (the same card, a newer copy); a
/// CSV row is merged into it. By e-mail only, the existing card is kept, with its UID, and gets what the
/// row adds; nothing it has is removed.
fn plan_update(
    store: &dyn store::Store,
    book: &BookView,
    key: &store::CardKey,
    matched_by: &'static str,
    incoming: ImportRow,
) -> DavResult<Result<Planned, String>> {
    let existing = store.card(book.id, &key.name)?.ok_or_else(DavError::not_found)?;
    let stored = String::from_utf8_lossy(&existing.vcard).into_owned();
    let stored_version = Version::parse(&existing.meta.version).unwrap_or(Version::V4);
    let old = vcard::parse_stored(&existing.vcard).map(|c| project(&c)).unwrap_or_default();
    // A UID kartei made from the text finds the card an earlier import of the same text made, which may have
    // been edited since: that card is merged into (keeping its values), not replaced like one the file names.
    let replaces = matched_by == "uid" && !incoming.uid_from_content;
    let (text, kept, not_merged) = match incoming.card {
        Some(valid) if replaces => (String::from_utf8_lossy(&valid.new_card.bytes).into_owned(), vec![], vec![]),
        Some(valid) => {
            let text = String::from_utf8_lossy(&valid.new_card.bytes).into_owned();
            merge_vcard(&stored, stored_version, &old, &incoming.contact, &text, valid.version)
        }
        None => {
            let mut contact = incoming.contact;
            if incoming.made_up_fn {
                contact.formatted_name.clear(); // an empty cell changes nothing
            }
            let scalars = if incoming.uid_from_content { Scalars::KeepExisting } else { Scalars::Overwrite };
            let (merged, kept) = merge(&old, &contact, scalars);
            (apply_changes(&stored, stored_version, &old, &merged), kept, vec![])
        }
    };
    // A vCard export ends every card with a line break; a card stored without one is the same card.
    let without_final_break =
        |b: &[u8]| -> usize { b.len() - b.iter().rev().take_while(|c| matches!(c, b'\r' | b'\n')).count() };
    let same = |a: &[u8], b: &[u8]| a[..without_final_break(a)] == b[..without_final_break(b)];
    let card = if same(text.as_bytes(), &existing.vcard) {
        None
    } else {
        match vcard::validate(text.as_bytes()) {
            Ok(valid) => Some(valid.new_card),
            Err(e) => return Ok(Err(invalid_reason(e))),
        }
    };
    Ok(Ok(Planned {
        name: key.name.clone(),
        action: if card.is_some() { "update" } else { "unchanged" },
        card,
        pre: Precondition::EtagIn(vec![key.etag.clone()]),
        uid: key.uid.clone(),
        matched_by: Some(matched_by),
        kept,
        not_merged,
    }))
}

/// A content line compared across cards: unfolded, without its group and line ending, name upper-cased.
fn line_key(line: &str) -> String {
    let unfolded = unfold(line);
    let unfolded = unfolded.trim_end_matches(['\r', '\n']);
    let head_len = unfolded.find([';', ':']).unwrap_or(unfolded.len());
    let head = &unfolded[..head_len];
    let name = head.split_once('.').map_or(head, |(_, n)| n);
    format!("{}{}", name.to_ascii_uppercase(), &unfolded[head_len..])
}

/// Merges a vCard matched by e-mail into the stored card: the contact fields as [`merge`] does, keeping every
/// existing value; then the row's other properties (ANNIVERSARY, IMPP, PHOTO, `X-`…) that the stored card
/// does not have at all, copied line for line when both cards are the same version. Returns the text, the
/// fields kept, and the properties that were not added (named in the report).
fn merge_vcard(
    stored: &str,
    stored_version: Version,
    old: &Contact,
    incoming: &Contact,
    incoming_text: &str,
    incoming_version: Version,
) -> (String, Vec<&'static str>, Vec<String>) {
    let (mut merged, kept) = merge(old, incoming, Scalars::KeepExisting);
    let newline = newline_of(stored);
    // New e-mails and phones from a card of the same version keep the file's lines, with their PREF and TYPE
    // and the label of their group, instead of being written again from the contact fields.
    let mut added = String::new();
    let mut copied_groups = HashSet::new();
    if incoming_version == stored_version {
        let mut copier = LineCopier::new(stored, incoming_text, newline);
        let new_emails = merged.emails.split_off(old.emails.len());
        merged.emails.extend(new_emails.into_iter().filter(|e| !copier.copy("EMAIL", &e.value, &mut added)));
        let new_phones = merged.phones.split_off(old.phones.len());
        merged.phones.extend(new_phones.into_iter().filter(|p| !copier.copy("TEL", &p.value, &mut added)));
        copied_groups = copier.copied_groups;
    }
    let text = apply_changes(stored, stored_version, old, &merged);
    let lines = logical_lines(&text);
    let present: HashSet<String> = lines.iter().map(|l| line_key(l)).collect();
    let present_names: HashSet<String> = lines.iter().map(|l| line_name(l).1).collect();
    let mut not_merged: Vec<String> = Vec::new();
    for line in logical_lines(incoming_text) {
        let (group, name) = line_name(line);
        if matches!(name.as_str(), "BEGIN" | "END" | "VERSION" | "UID" | "PRODID" | "REV")
            || is_modelled(&name)
            || present.contains(&line_key(line))
            || group.is_some_and(|g| copied_groups.contains(&g.to_ascii_lowercase()))
        {
            continue;
        }
        if group.is_none() && incoming_version == stored_version && !present_names.contains(&name) {
            added.push_str(line.trim_end_matches(['\r', '\n']));
            added.push_str(newline);
        } else if !not_merged.contains(&name) {
            not_merged.push(name);
        }
    }
    (insert_before_end(&text, &added), kept, not_merged)
}

/// Copies an imported card's e-mail or phone lines into a merge as they are written in the file. A grouped
/// line (`item2.EMAIL` with `item2.X-ABLabel:Privat`) comes with the rest of its group, under a group name
/// the stored card does not use.
struct LineCopier<'a> {
    file_lines: Vec<&'a str>,
    taken_groups: HashSet<String>,
    /// The file's groups that were copied (lower-cased): their other lines are not merged again.
    copied_groups: HashSet<String>,
    newline: &'a str,
}

impl<'a> LineCopier<'a> {
    fn new(stored: &str, incoming_text: &'a str, newline: &'a str) -> Self {
        let taken_groups =
            logical_lines(stored).iter().filter_map(|l| line_name(l).0).map(str::to_ascii_lowercase).collect();
        LineCopier { file_lines: logical_lines(incoming_text), taken_groups, copied_groups: HashSet::new(), newline }
    }

    /// Appends the file's `property` line holding `value` (and its group) to `out`; false when there is none.
    fn copy(&mut self, property: &str, value: &str, out: &mut String) -> bool {
        let holds_value = |line: &str| {
            let unfolded = unfold(line);
            split_value(unfolded.trim_end_matches(['\r', '\n'])).is_some_and(|(_, v)| match property {
                "TEL" => same_phone(v, value),
                _ => email_key(v) == email_key(value),
            })
        };
        let Some(line) = self.file_lines.iter().copied().find(|l| line_name(l).1 == property && holds_value(l)) else {
            return false;
        };
        let Some(group) = line_name(line).0 else {
            out.push_str(line.trim_end_matches(['\r', '\n']));
            out.push_str(self.newline);
            return true;
        };
        let fresh = (1..).map(|n| format!("item{n}")).find(|g| !self.taken_groups.contains(g)).unwrap_or_default();
        self.taken_groups.insert(fresh.clone());
        self.copied_groups.insert(group.to_ascii_lowercase());
        // The line itself and its group's labels; another modelled property in the same group stays out.
        for member in self.file_lines.iter().filter(|l| line_name(l).0.is_some_and(|g| g.eq_ignore_ascii_case(group))) {
            if *member == line || !is_modelled(&line_name(member).1) {
                out.push_str(&fresh);
                out.push_str(member[group.len()..].trim_end_matches(['\r', '\n']));
                out.push_str(self.newline);
            }
        }
        true
    }
}

/// The UIDs an import created or updated, from its row report (for the audit record).
pub fn imported_uids(summary: &Value) -> Vec<Value> {
    summary["rows"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["action"] == "create" || r["action"] == "update")
        .map(|r| r["uid"].clone())
        .collect()
}

async fn read_upload(body: crate::body::RequestBody) -> DavResult<Vec<u8>> {
    match Limited::new(body, MAX_IMPORT_BYTES).collect().await {
        Ok(c) => Ok(c.to_bytes().to_vec()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(DavError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("imports may be at most {} MiB", MAX_IMPORT_BYTES / 1024 / 1024),
        )),
        Err(e) => Err(bad(format!("could not read the upload: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formula_guards_round_trip() {
        for value in
            ["=HYPERLINK(1)", "@SUM(1)", "+cmd|x", "'=x", "''+49 30", "'hello", "+49 30 1234", "-5", "plain", "'"]
        {
            let guarded = guard_formula(value.to_string());
            assert_eq!(unguard_formula(&guarded), value, "{value} -> {guarded}");
            assert!(!guarded.starts_with(['=', '@']) && !guarded.starts_with("+c"), "{guarded}");
        }
        assert_eq!(guard_formula("+49 30 1234".into()), "+49 30 1234", "a phone number stays a number");
        assert_eq!(unguard_formula(&"'".repeat(100_000)), "'".repeat(100_000));
    }

    #[test]
    fn cards_are_split_with_their_bytes() {
        let a = "BEGIN:VCARD\r\nVERSION:3.0\r\nFN:A\r\nEND:VCARD\r\n";
        let b = "begin:vcard\nVERSION:2.1\nAGENT:\nBEGIN:VCARD\nFN:Inner\nEND:VCARD\nFN:B\nend:vcard";
        let text = format!("{a}\r\n{b}\nstray line\nBEGIN:VCARD\nFN:cut off\n");
        let pieces = split_cards(&text);
        assert_eq!(pieces.len(), 4);
        assert!(matches!(pieces[0], Piece::Card(t) if t == a));
        assert!(matches!(pieces[1], Piece::Card(t) if t == format!("{b}\n")), "a nested card stays inside");
        assert!(matches!(pieces[2], Piece::Stray("stray line")));
        assert!(matches!(pieces[3], Piece::Unterminated));
    }

    #[test]
    fn csv_cells_make_addresses() {
        let address =
            |street: &str, city: &str| Address { street: street.into(), city: city.into(), ..Address::default() };
        // One per line (kartei's export), or "; " (older kartei exports), when every filled cell agrees.
        for (street, city) in
            [("Hauptstr. 1\nGartenweg 5", "Berlin\r\nPotsdam"), ("Hauptstr. 1; Gartenweg 5", "Berlin; Potsdam")]
        {
            assert_eq!(
                csv_addresses(&[("street", street), ("city", city)]),
                [address("Hauptstr. 1", "Berlin"), address("Gartenweg 5", "Potsdam")]
            );
        }
        // A street with two lines is one address.
        assert_eq!(
            csv_addresses(&[("street", "Hof 2\nHinterhaus"), ("city", "Berlin")]),
            [address("Hof 2\nHinterhaus", "Berlin")]
        );
        // A column that comes again starts the next address (Outlook's Business … and Home …).
        assert_eq!(
            csv_addresses(&[("street", ""), ("city", "Berlin"), ("street", "Gartenweg 5"), ("city", "Potsdam")]),
            [address("", "Berlin"), address("Gartenweg 5", "Potsdam")]
        );
        assert!(csv_addresses(&[("street", ""), ("city", " ")]).is_empty());
    }

    #[test]
    fn lines_are_inserted_before_end() {
        let card = "BEGIN:VCARD\nVERSION:4.0\nNOTE:a\n b\nEND:VCARD\n";
        assert_eq!(insert_before_end(card, "UID:x\n"), "BEGIN:VCARD\nVERSION:4.0\nNOTE:a\n b\nUID:x\nEND:VCARD\n");
        assert_eq!(free_name("a/b", &HashSet::from(["a_b.vcf".to_string(), "a_b-2.vcf".to_string()])), "a_b-3.vcf");
        assert_eq!(line_key("item1.email;TYPE=work:a\r\n @b.c\r\n"), "EMAIL;TYPE=work:a@b.c");
    }
}
