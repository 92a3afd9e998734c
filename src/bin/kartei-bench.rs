//! kartei-bench: drives a CardDAV address book like real clients do and times it.
//!
//! Works against any CardDAV server (only standard requests: PUT, PROPFIND, REPORT, GET, DELETE). It
//! generates N deterministic contacts and runs the seven phases of issue 5:
//!   1. upload all with PUT + `If-None-Match: *` at concurrency C;
//!   2. PROPFIND Depth 1 (getetag, getcontenttype);
//!   3. addressbook-multiget of every card in batches of 100, checking every card came back;
//!   4. sync-collection: initial, then 10 modified / 5 deleted / 5 added, then the delta (exactly those 20);
//!   5. addressbook-query text-match on EMAIL matching ~1% of the cards (exact set checked);
//!   6. 1,000 GETs of random cards at concurrency C;
//!   7. 500 PUT updates with If-Match at concurrency C, all must be accepted.
//!
//! With `--devices D` an eighth phase has D devices, each on its own connection, make an initial full sync
//! (phases 2 + 3) of the book at the same time, as when dozens of phones are set up at once.
//!
//! With `--versus-url` (and `--versus-user`, `--versus-password`) it compares two books, usually two servers:
//! both get the same cards, then their full syncs (phases 2 + 3) alternate for `--rounds` rounds, and it
//! reports the ratio of each round's two times (`bench/versus.sh`).
//!
//! With `--pid` it reports the server's peak RSS per phase (VmHWM, reset before each phase through
//! /proc/PID/clear_refs when allowed); with `--data-dir` the size of the server's data on disk.
//!
//! Build: `cargo build --release --features bench --bin kartei-bench`.

use base64::Engine as _;
use bytes::Bytes;
use clap::Parser;
use quick_xml::events::Event;
use reqwest::header::{self, HeaderValue};
use reqwest::{Client, Method, StatusCode};
use serde_json::{Value, json};
use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Parser, Debug, Clone)]
#[command(name = "kartei-bench", about = "Benchmark a CardDAV address book like real clients use it")]
struct Args {
    /// The address-book collection URL (it must exist and should be empty).
    #[arg(long, required_unless_present = "argon2", default_value = "")]
    url: String,
    #[arg(long, required_unless_present = "argon2", default_value = "")]
    user: String,
    #[arg(long, required_unless_present = "argon2", default_value = "")]
    password: String,
    /// Only time kartei's own Argon2 password verification (what its login cache saves per request), then exit.
    #[arg(long)]
    argon2: bool,
    /// Number of contacts to upload.
    #[arg(short = 'n', default_value_t = 1000)]
    n: usize,
    /// Concurrency of the upload, GET and update phases.
    #[arg(short = 'c', default_value_t = 8)]
    c: usize,
    /// The server's process id, for its peak RSS (VmHWM).
    #[arg(long)]
    pid: Option<u32>,
    /// The server's data directory, for its size on disk.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Accept any TLS certificate.
    #[arg(long)]
    insecure: bool,
    /// Trust this PEM certificate (a self-signed server's).
    #[arg(long)]
    cacert: Option<PathBuf>,
    /// Speak HTTP/1.1 only (no HTTP/2 over TLS).
    #[arg(long)]
    http1: bool,
    /// The `Accept-Encoding` sent on PROPFIND/REPORT. The default is Thunderbird's (see the traces in the
    /// clients' notes); `gzip` is what Apple clients and DAVx5 get answered in.
    #[arg(long, default_value = THUNDERBIRD_ACCEPT_ENCODING)]
    accept_encoding: String,
    /// Send no `Accept-Encoding` on PROPFIND/REPORT: answers come uncompressed.
    #[arg(long, alias = "no-compression")]
    no_gzip: bool,
    /// GETs in phase 6 (the issue's phase uses 1,000; more for profiling).
    #[arg(long, default_value_t = 1000)]
    gets: usize,
    /// Phase 8: this many devices (each its own HTTP client and connection) full-sync the book at once.
    #[arg(long, default_value_t = 0)]
    devices: usize,
    /// Initial full syncs (phases 2+3) to time: the first is reported, and with more than one also the median.
    #[arg(long, default_value_t = 1)]
    full_syncs: usize,
    /// Seed of the contact generator.
    #[arg(long, default_value_t = 5)]
    seed: u64,
    /// Client worker threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Print the report as JSON on stdout (the human summary always goes to stderr).
    #[arg(long)]
    json: bool,
    /// A label for the report (server name, TLS mode).
    #[arg(long, default_value = "")]
    label: String,
    /// Interleaved comparison with a second address book, usually another server's: both get the same cards
    /// (phase 1), then are full-synced (phases 2 + 3) in alternation for `--rounds` rounds, so that both are
    /// timed under the same machine conditions. The other phases do not run.
    #[arg(long)]
    versus_url: Option<String>,
    #[arg(long, default_value = "")]
    versus_user: String,
    #[arg(long, default_value = "")]
    versus_password: String,
    /// Accept any TLS certificate from the second server.
    #[arg(long)]
    versus_insecure: bool,
    /// The second server's process id, for its CPU per full sync.
    #[arg(long)]
    versus_pid: Option<u32>,
    #[arg(long, default_value = "")]
    versus_label: String,
    /// Rounds of the interleaved comparison; each syncs both books once, in turn first.
    #[arg(long, default_value_t = 20)]
    rounds: usize,
}

impl Args {
    /// The options that point at the second book of `--versus-url`.
    fn versus(&self) -> Option<Args> {
        let url = self.versus_url.clone()?;
        Some(Args {
            url,
            user: self.versus_user.clone(),
            password: self.versus_password.clone(),
            insecure: self.versus_insecure,
            pid: self.versus_pid,
            data_dir: None,
            label: self.versus_label.clone(),
            versus_url: None,
            ..self.clone()
        })
    }
}

// ---------------------------------------------------------------------------------------------------------
// Deterministic contact generation

/// SplitMix64: small, fast and the same on every platform.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed)
    }
    /// A card's own stream. The start is hashed from (seed, salt, index): seeding with `seed ^ index × γ`, as
    /// before the eleventh session, made card i + k's stream card i's shifted by k steps (SplitMix64 steps by
    /// that same γ), so cards shared runs of "random" bytes, their photos too, and compressed far better
    /// together than real address books do.
    fn for_card(seed: u64, index: usize, salt: u64) -> Self {
        let book = Rng(seed ^ salt.rotate_left(32)).next();
        Rng(Rng(book ^ index as u64).next())
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

const FIRST: &[&str] = &[
    "Anna",
    "Jürgen",
    "Zoë",
    "José",
    "Łukasz",
    "Søren",
    "François",
    "Ömer",
    "Chloé",
    "Björn",
    "Niamh",
    "Ayşe",
    "Kateřina",
    "Grzegorz",
    "Małgorzata",
    "Jiří",
    "Zsófia",
    "Ágnes",
    "Ólafur",
    "Þóra",
    "Saoirse",
    "Matthias",
    "Sophie",
    "Lena",
    "Jan",
    "Paul",
    "Maria",
    "Mehmet",
    "Fatma",
    "Emma",
    "Noah",
    "Léa",
    "Luca",
    "Giulia",
    "Sven",
    "Ingrid",
    "Tomás",
    "Élodie",
    "Yusuf",
    "Hana",
    "Иван",
    "Αλέξανδρος",
    "美咲",
    "Nguyễn Văn",
    "Dörte",
    "Renée",
];
const LAST: &[&str] = &[
    "Müller",
    "Schmidt",
    "Schneider",
    "Fischer",
    "Weber",
    "Meyer",
    "Wagner",
    "Becker",
    "Schulz",
    "Hoffmann",
    "Köhler",
    "Groß",
    "O'Brien",
    "García",
    "Martínez",
    "López",
    "Dubois",
    "Lefèvre",
    "Nowak",
    "Kowalski",
    "Wiśniewska",
    "Novák",
    "Dvořák",
    "Horváth",
    "Nagy",
    "Yılmaz",
    "Kaya",
    "Sørensen",
    "Jónsdóttir",
    "Rossi",
    "Bianchi",
    "Esposito",
    "Иванов",
    "山田",
    "Παπαδόπουλος",
    "van der Berg",
    "de Vries",
    "Åström",
    "Ruiz",
];
const COMPANY_A: &[&str] = &["Nord", "Süd", "Alpen", "Rhein", "Berg", "Sonnen", "Stadt", "Wald", "Fluss", "Hafen"];
const COMPANY_B: &[&str] =
    &["werk", "bau", "tech", "logistik", "medien", "handel", "consult", "energie", "design", "systeme"];
const FORMS: &[&str] = &["GmbH", "AG", "KG", "e.K.", "GmbH & Co. KG", "SE"];
const DEPARTMENTS: &[&str] = &["Vertrieb", "Einkauf", "Geschäftsführung", "IT", "Buchhaltung", "Marketing"];
const TITLES: &[&str] = &["Projektleiterin", "Geschäftsführer", "Ingénieur", "Key Account Manager", "Einkäuferin"];
const FREEMAIL: &[&str] = &["gmail.com", "web.de", "gmx.de", "posteo.de", "outlook.com", "t-online.de"];
const STREETS: &[&str] =
    &["Königstraße", "Hauptstraße", "Rue de l'Église", "Calle Mayor", "ul. Świętokrzyska", "Bahnhofplatz"];
const CITIES: &[(&str, &str, &str)] = &[
    ("München", "80331", "Deutschland"),
    ("Köln", "50667", "Deutschland"),
    ("Zürich", "8001", "Schweiz"),
    ("Wien", "1010", "Österreich"),
    ("Kraków", "31-001", "Polska"),
    ("Malmö", "211 20", "Sverige"),
    ("Besançon", "25000", "France"),
    ("Düsseldorf", "40213", "Deutschland"),
];
const NOTES: &[&str] = &[
    "Kennengelernt auf der Messe in Frankfurt; bevorzugt Rückruf am Vormittag und Angebote per E-Mail",
    "Rencontré au salon de Lyon. Préfère être contacté par téléphone après 14 h; très intéressé par la démo",
    "Ansprechpartner für Rahmenverträge – Zahlungsziel 30 Tage; Lieferadresse abweichend (siehe ADR work)",
    "Spotkanie w Krakowie, temat: współpraca logistyczna; oddzwonić w przyszłym tygodniu",
];
const CATEGORIES: &[&str] = &["Kunden", "Lieferanten", "Familie", "Freunde", "Presse", "VIP"];

/// Lower-case ASCII for e-mail local parts and domains.
fn ascii_fold(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars().flat_map(char::to_lowercase) {
        let rep = match c {
            'a'..='z' | '0'..='9' => {
                out.push(c);
                continue;
            }
            'ä' | 'æ' => "ae",
            'ö' | 'ø' => "oe",
            'ü' => "ue",
            'ß' => "ss",
            'é' | 'è' | 'ê' | 'ë' | 'ě' | 'ễ' => "e",
            'á' | 'à' | 'â' | 'å' | 'ă' | 'ā' => "a",
            'ó' | 'ò' | 'ô' | 'ő' => "o",
            'í' | 'ì' | 'î' | 'ı' => "i",
            'ú' | 'ù' | 'û' | 'ű' => "u",
            'ł' => "l",
            'ç' | 'č' => "c",
            'ñ' => "n",
            'ş' | 'ś' | 'š' => "s",
            'ğ' => "g",
            'ř' => "r",
            'ż' | 'ž' => "z",
            'þ' => "th",
            'ð' => "d",
            _ => "",
        };
        out.push_str(rep);
    }
    out
}

fn company(i: usize) -> (String, String) {
    let (a, b) = (COMPANY_A[i / 10], COMPANY_B[i % 10]);
    (format!("{a}{b}"), format!("{}.example", ascii_fold(&format!("{a}{b}"))))
}

/// The e-mail substring the query phase looks for: one company's domain (each card has one company).
fn query_needle() -> String {
    format!("@{}", company(37).1)
}

/// Escapes a vCard TEXT value.
fn esc(s: &str) -> String {
    s.replace('\\', "\\\\").replace(',', "\\,").replace(';', "\\;").replace('\n', "\\n")
}

/// Appends a content line folded at 75 octets (RFC 6350 §3.2), never inside a UTF-8 sequence.
fn line(out: &mut String, content: &str) {
    let mut width = 0;
    for c in content.chars() {
        let w = c.len_utf8();
        if width + w > 75 {
            out.push_str("\r\n ");
            width = 1;
        }
        out.push(c);
        width += w;
    }
    out.push_str("\r\n");
}

struct GenCard {
    name: String,
    uid: String,
    body: Bytes,
    emails: Vec<String>,
}

/// Card `index` at edit `version` (0 = as first uploaded). Everything but NOTE and REV depends on the index only.
fn generate(seed: u64, index: usize, version: u32) -> GenCard {
    let mut r = Rng::for_card(seed, index, 0);
    let uuid = format!(
        "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
        r.next() as u32,
        r.next() as u16,
        r.next() as u16 & 0xfff,
        r.next() as u16 & 0xfff,
        r.next() & 0xffff_ffff_ffff
    );
    let v4 = r.chance(40);
    let first = r.pick(FIRST);
    let last = r.pick(LAST);
    let (org, domain) = company(r.below(100));
    let form = r.pick(FORMS);
    let mut local = format!("{}.{}", ascii_fold(first), ascii_fold(last));
    if local.len() < 4 {
        local = format!("kontakt{index}");
    }
    let mut emails = vec![format!("{local}@{domain}")];
    if r.chance(60) {
        emails.push(format!("{local}{}@{}", r.below(100), r.pick(FREEMAIL)));
    }
    if r.chance(15) {
        emails.push(format!("{}.{}@{}", ascii_fold(last), index, r.pick(FREEMAIL)));
    }
    let uid = if v4 { format!("urn:uuid:{uuid}") } else { uuid.clone() };
    let mut s = String::with_capacity(1024);
    s.push_str("BEGIN:VCARD\r\n");
    s.push_str(if v4 { "VERSION:4.0\r\n" } else { "VERSION:3.0\r\n" });
    s.push_str("PRODID:-//kartei-bench//generator 1//EN\r\n");
    line(&mut s, &format!("UID:{uid}"));
    if v4 {
        s.push_str("KIND:individual\r\n");
    }
    line(&mut s, &format!("N:{};{};;;", esc(last), esc(first)));
    line(&mut s, &format!("FN:{} {}", esc(first), esc(last)));
    line(&mut s, &format!("ORG:{} {};{}", esc(&org), esc(form), esc(r.pick(DEPARTMENTS))));
    if r.chance(70) {
        line(&mut s, &format!("TITLE:{}", esc(r.pick(TITLES))));
    }
    for (k, e) in emails.iter().enumerate() {
        let kind = if k == 0 { "work" } else { "home" };
        if v4 {
            let pref = if k == 0 { ";PREF=1" } else { "" };
            line(&mut s, &format!("EMAIL;TYPE={kind}{pref}:{e}"));
        } else {
            let pref = if k == 0 { ",PREF" } else { "" };
            line(&mut s, &format!("EMAIL;TYPE=INTERNET,{}{pref}:{e}", kind.to_uppercase()));
        }
    }
    let phones = 1 + r.below(3);
    for k in 0..phones {
        let (t3, t4) = [("CELL,VOICE", "cell,voice"), ("WORK,VOICE", "work,voice"), ("HOME,VOICE", "home,voice")][k];
        let number = format!("+49 {} {}", 30 + r.below(900), 1_000_000 + r.below(9_000_000));
        if v4 {
            line(&mut s, &format!("TEL;VALUE=uri;TYPE=\"{t4}\":tel:{}", number.replace(' ', "-")));
        } else {
            line(&mut s, &format!("TEL;TYPE={t3}:{number}"));
        }
    }
    for k in 0..r.below(3) {
        let (city, zip, country) = CITIES[r.below(CITIES.len())];
        let street = format!("{} {}", r.pick(STREETS), 1 + r.below(120));
        let kind = if k == 0 { "HOME" } else { "WORK" };
        let value = format!(";;{};{};;{};{}", esc(&street), esc(city), esc(zip), esc(country));
        if v4 {
            let label = format!("{street}\\n{zip} {city}\\n{country}").replace('"', "'");
            line(&mut s, &format!("ADR;TYPE={};LABEL=\"{label}\":{value}", kind.to_lowercase()));
        } else {
            line(&mut s, &format!("ADR;TYPE={kind}:{value}"));
        }
    }
    if r.chance(40) {
        line(&mut s, &format!("BDAY:{}-{:02}-{:02}", 1950 + r.below(55), 1 + r.below(12), 1 + r.below(28)));
    }
    if r.chance(50) {
        line(&mut s, &format!("CATEGORIES:{},{}", r.pick(CATEGORIES), r.pick(CATEGORIES)));
    }
    let note = r.pick(NOTES);
    if version > 0 || r.chance(35) {
        let edit = if version > 0 { format!(" (Änderung {version})") } else { String::new() };
        line(&mut s, &format!("NOTE:{}{}", esc(note), esc(&edit)));
    }
    if r.chance(10) {
        // An 8 KB JPEG-looking photo.
        let mut photo = vec![0u8; 8192];
        photo[..4].copy_from_slice(&[0xFF, 0xD8, 0xFF, 0xE0]);
        for chunk in photo[4..].chunks_mut(8) {
            let bytes = r.next().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
        let b64 = base64::engine::general_purpose::STANDARD.encode(&photo);
        if v4 {
            line(&mut s, &format!("PHOTO:data:image/jpeg;base64,{b64}"));
        } else {
            line(&mut s, &format!("PHOTO;ENCODING=b;TYPE=JPEG:{b64}"));
        }
    }
    line(&mut s, &format!("REV:2026{:02}{:02}T{:02}0000Z", 1 + version % 12, 1 + index % 28, version % 24));
    s.push_str("END:VCARD\r\n");
    GenCard { name: format!("{uuid}.vcf"), uid, body: Bytes::from(s), emails }
}

// ---------------------------------------------------------------------------------------------------------
// Multistatus parsing (namespace prefixes ignored: every server picks its own)

#[derive(Debug, Default, Clone)]
struct MsResponse {
    href: String,
    /// `<status>` directly in the response (a deleted member, a missing href).
    status: Option<u16>,
    /// Status of the propstat that carried the properties we read.
    ok: bool,
    etag: Option<String>,
    data_len: usize,
    data_has: Option<String>,
}

#[derive(Debug, Default)]
struct Multistatus {
    responses: Vec<MsResponse>,
    sync_token: Option<String>,
}

fn status_code(text: &str) -> Option<u16> {
    text.split_whitespace().nth(1)?.parse().ok()
}

/// The elements the parser acts on; all others are `Other`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tag {
    Response,
    Propstat,
    Href,
    Status,
    GetEtag,
    /// Read whole when it starts, so it never reaches the stack.
    AddressData,
    SyncToken,
    Other,
}

impl Tag {
    fn of(local_name: &str) -> Self {
        match local_name {
            "response" => Tag::Response,
            "propstat" => Tag::Propstat,
            "href" => Tag::Href,
            "status" => Tag::Status,
            "getetag" => Tag::GetEtag,
            "address-data" => Tag::AddressData,
            "sync-token" => Tag::SyncToken,
            _ => Tag::Other,
        }
    }

    /// Whether the element's text is read; the text of all others is skipped without being copied.
    fn has_text(self) -> bool {
        !matches!(self, Tag::Response | Tag::Propstat | Tag::Other)
    }
}

/// Appends `s` with XML 1.0 end-of-line normalization (CR LF and a lone CR become LF), as
/// `BytesText::xml10_content` does, but into a reused buffer: card text has CR LF, and the allocation
/// per text node showed in the client's profile.
fn push_xml10(out: &mut Vec<u8>, mut s: &[u8]) {
    while let Some(i) = memchr::memchr(b'\r', s) {
        out.extend_from_slice(&s[..i]);
        out.push(b'\n');
        let rest = &s[i + 1..];
        s = rest.strip_prefix(b"\n").unwrap_or(rest);
    }
    out.extend_from_slice(s);
}

/// The character an entity or character reference (without `&` and `;`) stands for.
fn resolve_reference(name: &str) -> Option<char> {
    match name {
        "amp" => Some('&'),
        "lt" => Some('<'),
        "gt" => Some('>'),
        "quot" => Some('"'),
        "apos" => Some('\''),
        other => other
            .strip_prefix("#x")
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .or_else(|| other.strip_prefix('#').and_then(|d| d.parse().ok()))
            .and_then(char::from_u32),
    }
}

/// Appends the text content of an element given as its raw markup, decoded as an XML parser does
/// (references, CDATA sections, CR LF and lone CR as LF), as bytes: the caller only measures and searches it.
/// One pass over the markup: a card's text is most of an answer, with a `&#13;` reference on every line, so
/// line ends are decoded in the same search as references rather than by `push_xml10` over each run.
/// Comments and elements inside it are refused: a card's text has neither.
fn push_xml_text(out: &mut Vec<u8>, raw: &[u8]) -> Result<(), String> {
    let mut rest = raw;
    while let Some(i) = memchr::memchr3(b'&', b'<', b'\r', rest) {
        out.extend_from_slice(&rest[..i]);
        rest = &rest[i..];
        if let Some(after) = rest.strip_prefix(b"&#13;") {
            out.push(b'\r');
            rest = after;
        } else if let Some(after) = rest.strip_prefix(b"\r") {
            out.push(b'\n');
            rest = after.strip_prefix(b"\n").unwrap_or(after);
        } else if let Some(reference) = rest.strip_prefix(b"&") {
            let end = memchr::memchr(b';', reference).ok_or("bad XML: a reference without ';'")?;
            let name = std::str::from_utf8(&reference[..end]).map_err(|_| "bad XML: a reference that is not UTF-8")?;
            let ch = resolve_reference(name).ok_or_else(|| format!("bad XML: unknown reference &{name};"))?;
            out.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes());
            rest = &reference[end + 1..];
        } else {
            let cdata = rest.strip_prefix(b"<![CDATA[").ok_or("bad XML: markup inside a card's text")?;
            let end = memchr::memmem::find(cdata, b"]]>").ok_or("bad XML: an unclosed CDATA section")?;
            // Inside CDATA only line ends are decoded.
            push_xml10(out, &cdata[..end]);
            rest = &cdata[end + 3..];
        }
    }
    out.extend_from_slice(rest);
    Ok(())
}

/// Parses a whole multistatus; `probe(href)` returns a string whose presence in the address-data is checked.
fn parse_multistatus<'p>(xml: &[u8], probe: &dyn Fn(&str) -> Option<&'p str>) -> Result<Multistatus, String> {
    let mut parser = MultistatusParser::default();
    parser.parse(xml, probe)?;
    parser.finish()
}

/// The end of the last `</response>` (any prefix) in `xml`: a point where an answer still arriving can be
/// cut, since every response before it is whole.
fn last_response_end(xml: &[u8]) -> Option<usize> {
    memchr::memmem::rfind_iter(xml, b"response>").find_map(|at| {
        let before = &xml[..at];
        let before = match before.strip_suffix(b":") {
            Some(prefixed) => {
                let name = prefixed.iter().rev().take_while(|&&b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
                &prefixed[..prefixed.len() - name.count()]
            }
            None => before,
        };
        before.ends_with(b"</").then_some(at + "response>".len())
    })
}

/// A multistatus parsed piece by piece as it arrives, each piece ending after a whole response (see
/// `last_response_end`), so that a client's parsing overlaps the server's sending of the rest, as a
/// streaming client's does. The parser keeps its state between pieces and checks that end tags match.
#[derive(Default)]
struct MultistatusParser {
    ms: Multistatus,
    /// The open elements, and their names (`names[name_starts[i]..]` is the i-th).
    stack: Vec<Tag>,
    names: String,
    name_starts: Vec<usize>,
    cur: Option<MsResponse>,
    /// The text of the innermost open element since its last child, kept only for elements that are read.
    text: Vec<u8>,
    /// An address-data's decoded text.
    data: Vec<u8>,
    /// The end tag searched for by `card_text`, and its searcher: built once, not for every card (building
    /// one was ~1 % of the client's instructions).
    end_tag: Option<memchr::memmem::Finder<'static>>,
    propstat_status: Option<u16>,
    propstat_etag: Option<String>,
    propstat_data: Option<(usize, bool)>,
    /// Whether the root element has ended.
    done: bool,
}

impl MultistatusParser {
    fn parse<'p>(&mut self, xml: &[u8], probe: &dyn Fn(&str) -> Option<&'p str>) -> Result<(), String> {
        // A slice reader borrows events from `xml` instead of copying each into a buffer. Elements opened in
        // an earlier piece end in this one, so end tags are checked here, against `names`.
        let mut reader = quick_xml::Reader::from_reader(xml);
        let config = reader.config_mut();
        config.trim_text(false);
        config.check_end_names = false;
        config.allow_unmatched_ends = true;
        loop {
            let event = reader.read_event().map_err(|e| format!("bad XML: {e}"))?;
            let reading = self.stack.last().is_some_and(|t| t.has_text());
            match event {
                Event::Start(_) | Event::Empty(_) if self.done => {
                    return Err("bad XML: content after the root element".into());
                }
                Event::Start(e) if self.cur.is_some() && Tag::of(e.local_name().as_ref()) == Tag::AddressData => {
                    // A card's text is most of the answer. Taken whole up to its end tag and decoded in one
                    // pass, it is not cut into an event per line (every line ends in a `&#13;` reference).
                    let raw = match self.card_text(&mut reader, e.name().as_ref().as_bytes())? {
                        Some(raw) => raw,
                        None => {
                            let span = reader.read_to_end(e.name()).map_err(|e| format!("bad XML: {e}"))?;
                            usize::try_from(span.start)
                                .ok()
                                .zip(usize::try_from(span.end).ok())
                                .and_then(|(a, b)| xml.get(a..b))
                                .ok_or("bad XML: a span outside the answer")?
                        }
                    };
                    self.data.clear();
                    push_xml_text(&mut self.data, raw)?;
                    if let Some(r) = self.cur.as_mut() {
                        // Rabin-Karp needs next to no set-up per probe (each card has its own), and the UID
                        // is near the start of the card.
                        let has = probe(&r.href).is_none_or(|w| {
                            let w = w.as_bytes();
                            memchr::arch::all::rabinkarp::Finder::new(w).find(&self.data, w).is_some()
                        });
                        self.propstat_data = Some((self.data.len(), has));
                    }
                }
                Event::Start(e) => {
                    let tag = Tag::of(e.local_name().as_ref());
                    match tag {
                        Tag::Response => self.cur = Some(MsResponse::default()),
                        Tag::Propstat => {
                            self.propstat_status = None;
                            self.propstat_etag = None;
                            self.propstat_data = None;
                        }
                        _ => {}
                    }
                    self.stack.push(tag);
                    self.name_starts.push(self.names.len());
                    self.names.push_str(e.name().as_ref());
                    self.text.clear();
                }
                Event::Empty(_) => {}
                Event::Text(t) if reading => push_xml10(&mut self.text, t.into_inner().as_bytes()),
                Event::GeneralRef(r) if reading => {
                    if let Some(c) = resolve_reference(&r.into_inner()) {
                        self.text.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                    }
                }
                Event::CData(t) if reading => push_xml10(&mut self.text, t.into_inner().as_bytes()),
                Event::End(e) => {
                    let (Some(tag), Some(start)) = (self.stack.pop(), self.name_starts.pop()) else {
                        return Err(format!("bad XML: </{}> closes nothing", e.name().as_ref()));
                    };
                    if self.names[start..] != *e.name().as_ref() {
                        return Err(format!("bad XML: </{}> closes <{}>", e.name().as_ref(), &self.names[start..]));
                    }
                    self.names.truncate(start);
                    self.end(tag)?;
                }
                Event::Eof => return Ok(()),
                _ => {}
            }
        }
    }

    /// The raw text of the element `name` just opened, up to its end tag, with the reader moved past that tag;
    /// None (the reader untouched) when the text holds markup (a CDATA section), which `read_to_end` reads.
    /// Found with one search and checked as UTF-8 in one call: `read_to_end` makes an event of every line and
    /// reference of a card and checks each alone, ~8 % of the client's CPU (BENCHMARKS.md, fourteenth session).
    fn card_text<'x>(
        &mut self,
        reader: &mut quick_xml::Reader<&'x [u8]>,
        name: &[u8],
    ) -> Result<Option<&'x [u8]>, String> {
        let rest: &'x [u8] = reader.get_ref();
        let finder = match &mut self.end_tag {
            Some(f) if f.needle().strip_prefix(b"</").and_then(|t| t.strip_suffix(b">")) == Some(name) => f,
            other => other.insert(memchr::memmem::Finder::new(&[b"</", name, b">"].concat()).into_owned()),
        };
        let tag_len = finder.needle().len();
        let Some(end) = finder.find(rest) else {
            return Err(format!("bad XML: <{}> is not closed", String::from_utf8_lossy(name)));
        };
        let raw = &rest[..end];
        if memchr::memchr(b'<', raw).is_some() {
            return Ok(None);
        }
        // A vectorized check: the std one was ~4 % of the client's instructions on cards' text (mostly base64).
        simdutf8::basic::from_utf8(raw).map_err(|_| "bad XML: a card's text that is not UTF-8")?;
        *reader.get_mut() = &rest[end + tag_len..];
        Ok(Some(raw))
    }

    fn end(&mut self, tag: Tag) -> Result<(), String> {
        let parent = self.stack.last().copied();
        let text = std::str::from_utf8(&self.text).map_err(|_| "bad XML: text that is not UTF-8")?;
        match (tag, self.cur.as_mut()) {
            (Tag::Href, Some(r)) if parent == Some(Tag::Response) => r.href = text.trim().to_string(),
            (Tag::Status, Some(r)) if parent == Some(Tag::Response) => r.status = status_code(text),
            (Tag::Status, Some(_)) if parent == Some(Tag::Propstat) => self.propstat_status = status_code(text),
            (Tag::GetEtag, Some(_)) => self.propstat_etag = Some(text.trim().to_string()),
            (Tag::Propstat, Some(r)) if self.propstat_status == Some(200) => {
                r.ok = true;
                if self.propstat_etag.is_some() {
                    r.etag = self.propstat_etag.take();
                }
                if let Some((len, has)) = self.propstat_data.take() {
                    r.data_len = len;
                    r.data_has = if has { Some(String::new()) } else { None };
                }
            }
            (Tag::Response, Some(_)) => self.ms.responses.extend(self.cur.take()),
            (Tag::SyncToken, _) => self.ms.sync_token = Some(text.trim().to_string()),
            _ => {}
        }
        self.text.clear();
        self.done = self.stack.is_empty();
        Ok(())
    }

    /// The answer, once the last piece was parsed.
    fn finish(self) -> Result<Multistatus, String> {
        if !self.done {
            return Err(format!(
                "bad XML: the answer ends inside <{}>",
                &self.names[self.name_starts.first().map_or(0, |&s| s)..]
            ));
        }
        Ok(self.ms)
    }
}

/// One device's initial full sync: PROPFIND Depth 1, then multigets of 100. Returns its time and the number of
/// cards that came back with data.
async fn device_full_sync(http: Arc<Http>) -> Result<(f64, usize), String> {
    let t = Instant::now();
    let listing = http.dav_parsed("PROPFIND", "1", PROPFIND_BODY.into(), &|_| None).await?;
    let Some(listing) = listing.ms else { return Err(format!("PROPFIND -> {}", listing.status)) };
    let base = http.base.path().trim_end_matches('/').to_string();
    let hrefs: Vec<String> = listing
        .responses
        .into_iter()
        .filter(|r| r.ok && !r.href.trim_end_matches('/').ends_with(&base))
        .map(|r| r.href)
        .collect();
    // Distinct hrefs that came back with data, so that a repeated answer cannot hide a missing one.
    let mut cards = std::collections::HashSet::new();
    for batch in hrefs.chunks(100) {
        let body = multiget_body(batch.iter().map(String::as_str));
        let r = http.dav_parsed("REPORT", "0", body, &|_| Some("BEGIN:VCARD")).await?;
        let Some(answer) = r.ms else { return Err(format!("multiget -> {}", r.status)) };
        cards.extend(
            answer.responses.into_iter().filter(|r| r.ok && r.data_len > 0 && r.data_has.is_some()).map(|r| r.href),
        );
    }
    Ok((ms(t.elapsed()), cards.len()))
}

/// The last path segment of an href, percent-decoded (the member's resource name); borrowed when nothing
/// needed decoding, as for every name the benchmark generates.
fn href_name(href: &str) -> Cow<'_, str> {
    let path = href.trim_end_matches('/');
    let last = path.rsplit('/').next().unwrap_or("");
    // Most names hold nothing to decode; one search says so faster than the decoder's walk.
    if memchr::memchr(b'%', last.as_bytes()).is_none() {
        return Cow::Borrowed(last);
    }
    percent_encoding::percent_decode_str(last).decode_utf8_lossy()
}

// ---------------------------------------------------------------------------------------------------------
// HTTP

/// What Thunderbird sends on every request (recorded on the wire).
const THUNDERBIRD_ACCEPT_ENCODING: &str = "gzip, deflate, br, zstd";

struct Http {
    client: Client,
    auth: HeaderValue,
    base: reqwest::Url,
    /// `Accept-Encoding` for PROPFIND/REPORT, if any.
    accept_encoding: Option<String>,
    decode_pool: DecodePool,
}

struct Reply {
    status: StatusCode,
    etag: Option<String>,
    body: Bytes,
}

/// A streaming decoder of a body (compressed or not).
trait Decoder: std::io::Write {
    /// What was decoded so far.
    fn decoded(&self) -> &[u8];
    /// The decoded body, once the stream is known to be whole; what can be reused goes back to `pool`.
    fn finish(self: Box<Self>, pool: &DecodePool) -> std::io::Result<Vec<u8>>;
}

impl Decoder for Vec<u8> {
    fn decoded(&self) -> &[u8] {
        self
    }
    fn finish(self: Box<Self>, _: &DecodePool) -> std::io::Result<Vec<u8>> {
        Ok(*self)
    }
}

impl Decoder for flate2::write::GzDecoder<Vec<u8>> {
    fn decoded(&self) -> &[u8] {
        self.get_ref()
    }
    fn finish(self: Box<Self>, _: &DecodePool) -> std::io::Result<Vec<u8>> {
        (*self).finish()
    }
}

/// A zstd stream decoded into a growing buffer with a context kept from earlier answers (a long-running
/// client keeps its decoder): making a context and growing a fresh buffer for every answer was ~5 % of the
/// client's CPU (BENCHMARKS.md, fifteenth session). Concatenated frames decode as one body.
struct ZstdStream {
    ctx: zstd::zstd_safe::DCtx<'static>,
    out: Vec<u8>,
    /// Whether the last input ended a frame (no body may end inside one).
    at_frame_end: bool,
}

impl std::io::Write for ZstdStream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let zstd_error = |code| std::io::Error::other(zstd::zstd_safe::get_error_name(code));
        let mut input = zstd::zstd_safe::InBuffer::around(buf);
        loop {
            if self.out.capacity() - self.out.len() < 32 * 1024 {
                self.out.reserve(128 * 1024);
            }
            let start = self.out.len();
            let mut output = zstd::zstd_safe::OutBuffer::around_pos(&mut self.out, start);
            let hint = self.ctx.decompress_stream(&mut output, &mut input).map_err(zstd_error)?;
            let filled = output.pos() == output.capacity();
            self.at_frame_end = hint == 0;
            // Done when the input is used up and the output had room left (nothing more is buffered).
            if input.pos() == buf.len() && !filled {
                return Ok(buf.len());
            }
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Decoder for ZstdStream {
    fn decoded(&self) -> &[u8] {
        &self.out
    }
    fn finish(self: Box<Self>, pool: &DecodePool) -> std::io::Result<Vec<u8>> {
        let ZstdStream { ctx, out, at_frame_end } = *self;
        if let Ok(mut contexts) = pool.zstd.lock() {
            contexts.push(ctx);
        }
        if !at_frame_end {
            return Err(std::io::Error::other("incomplete frame"));
        }
        Ok(out)
    }
}

/// Buffers and zstd contexts kept between answers, as a long-running client keeps them.
#[derive(Default)]
struct DecodePool {
    buffers: Mutex<Vec<Vec<u8>>>,
    zstd: Mutex<Vec<zstd::zstd_safe::DCtx<'static>>>,
}

impl DecodePool {
    fn buffer(&self) -> Vec<u8> {
        self.buffers.lock().ok().and_then(|mut b| b.pop()).unwrap_or_default()
    }

    /// A decoded body given back once it was read.
    fn give_back(&self, mut body: Vec<u8>) {
        body.clear();
        if let Ok(mut buffers) = self.buffers.lock() {
            buffers.push(body);
        }
    }

    /// A decoder for a `Content-Encoding` (`content_coding`; none is `identity`).
    fn decoder_for(&self, coding: Option<&str>) -> Result<Box<dyn Decoder + Send>, String> {
        Ok(match coding {
            None => Box::new(self.buffer()),
            Some("gzip") => Box::new(flate2::write::GzDecoder::new(self.buffer())),
            Some("zstd") => {
                let mut ctx =
                    self.zstd.lock().ok().and_then(|mut z| z.pop()).unwrap_or_else(zstd::zstd_safe::DCtx::create);
                ctx.reset(zstd::zstd_safe::ResetDirective::SessionOnly)
                    .map_err(|code| format!("zstd: {}", zstd::zstd_safe::get_error_name(code)))?;
                Box::new(ZstdStream { ctx, out: self.buffer(), at_frame_end: false })
            }
            Some(other) => return Err(format!("unsupported Content-Encoding {other:?}")),
        })
    }
}

/// A 207 answer, parsed.
struct Parsed {
    status: StatusCode,
    /// The multistatus, when the status was 207.
    ms: Option<Multistatus>,
    /// Bytes on the wire, and decoded.
    wire: usize,
    raw: usize,
}

impl Http {
    /// A client with its own connection pool (one per simulated device in phase 8).
    fn new(args: &Args, base: &reqwest::Url) -> Result<Self, String> {
        let mut builder = Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(args.c.max(1) * 2)
            .timeout(Duration::from_secs(600))
            .user_agent("kartei-bench/1");
        if args.http1 {
            builder = builder.http1_only();
        }
        if args.insecure {
            builder = builder.tls_danger_accept_invalid_certs(true);
        }
        if let Some(path) = &args.cacert {
            let pem = std::fs::read(path).map_err(|e| format!("--cacert {}: {e}", path.display()))?;
            let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| format!("--cacert: {e}"))?;
            builder = builder.add_root_certificate(cert);
        }
        let client = builder.build().map_err(|e| format!("HTTP client: {e}"))?;
        let credentials =
            base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", args.user, args.password).as_bytes());
        let auth = HeaderValue::from_str(&format!("Basic {credentials}")).map_err(|e| e.to_string())?;
        let accept_encoding = (!args.no_gzip).then(|| args.accept_encoding.clone());
        Ok(Http { client, auth, base: base.clone(), accept_encoding, decode_pool: DecodePool::default() })
    }

    fn card_url(&self, name: &str) -> reqwest::Url {
        let mut url = self.base.clone();
        let encoded = percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC).to_string();
        // Keep '.', '-' readable: servers compare decoded names, but logs are nicer.
        let encoded = encoded.replace("%2E", ".").replace("%2D", "-").replace("%5F", "_");
        url.set_path(&format!("{}{}", self.base.path(), encoded));
        url
    }

    fn card_path(&self, name: &str) -> String {
        self.card_url(name).path().to_string()
    }

    /// Sends a request with the credentials and `headers`, and waits for the response's head.
    async fn request(
        &self,
        method: Method,
        url: reqwest::Url,
        headers: &[(&str, String)],
        body: Option<Bytes>,
    ) -> Result<reqwest::Response, String> {
        let mut req = self.client.request(method, url).header(header::AUTHORIZATION, self.auth.clone());
        for (k, v) in headers {
            req = req.header(*k, v.as_str());
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        req.send().await.map_err(|e| format!("request failed: {e}"))
    }

    async fn send(
        &self,
        method: Method,
        url: reqwest::Url,
        headers: &[(&str, String)],
        body: Option<Bytes>,
    ) -> Result<Reply, String> {
        let mut resp = self.request(method, url, headers, body).await?;
        let status = resp.status();
        let etag = resp.headers().get(header::ETAG).and_then(|v| v.to_str().ok()).map(str::to_string);
        if content_coding(&resp).is_none() {
            let body = resp.bytes().await.map_err(|e| format!("reading the body failed: {e}"))?;
            return Ok(Reply { status, etag, body });
        }
        let (body, _) = read_decoded(&mut resp, &self.decode_pool, |_| Ok(())).await?;
        Ok(Reply { status, etag, body: Bytes::from(body) })
    }

    /// The headers of a PROPFIND / REPORT.
    fn dav_headers(&self, depth: &str) -> Vec<(&'static str, String)> {
        let mut headers = vec![("Content-Type", "application/xml; charset=utf-8".to_string()), ("Depth", depth.into())];
        if let Some(accept) = &self.accept_encoding {
            headers.push(("Accept-Encoding", accept.clone()));
        }
        headers
    }

    /// PROPFIND / REPORT with an XML body.
    async fn dav(&self, method: &str, depth: &str, xml: String) -> Result<Reply, String> {
        let method = Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?;
        self.send(method, self.base.clone(), &self.dav_headers(depth), Some(Bytes::from(xml))).await
    }

    /// PROPFIND / REPORT whose 207 answer is decoded and parsed piece by piece while it arrives, as a
    /// streaming client does (`MultistatusParser`); `probe` as for `parse_multistatus`.
    async fn dav_parsed<'p>(
        &self,
        method: &str,
        depth: &str,
        xml: String,
        probe: &(dyn Fn(&str) -> Option<&'p str> + Sync),
    ) -> Result<Parsed, String> {
        let method = Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?;
        let mut resp =
            self.request(method, self.base.clone(), &self.dav_headers(depth), Some(Bytes::from(xml))).await?;
        let status = resp.status();
        if status.as_u16() != 207 {
            let body = resp.bytes().await.map_err(|e| format!("reading the body failed: {e}"))?;
            return Ok(Parsed { status, ms: None, wire: body.len(), raw: body.len() });
        }
        let mut parser = MultistatusParser::default();
        // How much of the decoded answer was parsed.
        let mut parsed = 0;
        let (body, wire) = read_decoded(&mut resp, &self.decode_pool, |decoded| {
            let fresh = &decoded[parsed..];
            if let Some(cut) = last_response_end(fresh) {
                parser.parse(&fresh[..cut], probe)?;
                parsed += cut;
            }
            Ok(())
        })
        .await?;
        parser.parse(&body[parsed..], probe)?;
        let raw = body.len();
        self.decode_pool.give_back(body);
        Ok(Parsed { status, ms: Some(parser.finish()?), wire, raw })
    }
}

/// A response's `Content-Encoding`, lowercased; none for `identity`.
fn content_coding(resp: &reqwest::Response) -> Option<String> {
    let coding = resp.headers().get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok())?.to_ascii_lowercase();
    (coding != "identity").then_some(coding)
}

/// Reads a body, decoding it chunk by chunk as the chunks arrive (while the server still sends the rest), and
/// calls `each` with everything decoded so far after every chunk. Returns the decoded body and its size on
/// the wire. Finishing checks gzip's trailer (CRC and length) or that the zstd frame ended (and its
/// checksum), so a cut-off body is an error.
async fn read_decoded(
    resp: &mut reqwest::Response,
    pool: &DecodePool,
    mut each: impl FnMut(&[u8]) -> Result<(), String>,
) -> Result<(Vec<u8>, usize), String> {
    let coding = content_coding(resp);
    let bad_body = |e: std::io::Error| format!("bad {} body: {e}", coding.as_deref().unwrap_or_default());
    let mut decoder = pool.decoder_for(coding.as_deref())?;
    let mut wire = 0;
    while let Some(chunk) = resp.chunk().await.map_err(|e| format!("reading the body failed: {e}"))? {
        wire += chunk.len();
        decoder.write_all(&chunk).map_err(bad_body)?;
        each(decoder.decoded())?;
    }
    Ok((decoder.finish(pool).map_err(bad_body)?, wire))
}

// ---------------------------------------------------------------------------------------------------------
// The book as the benchmark believes it is

/// A card's index in the model and its resource name (or path).
type IndexedName = (usize, String);
type Shared<T> = Arc<Mutex<T>>;

#[derive(Clone, Default)]
struct Slot {
    version: u32,
    alive: bool,
    etag: Option<String>,
}

struct Model {
    seed: u64,
    slots: Vec<Slot>,
    names: Vec<String>,
    /// Each card's request path, encoded once: names never change, and the full syncs send them again and again.
    paths: Arc<[String]>,
    /// Each card's UID and the index of each name: fixed once generated, and shared with the threads that
    /// parse answers as they arrive.
    uids: Arc<[String]>,
    by_name: Arc<HashMap<String, usize>>,
}

impl Model {
    fn new(seed: u64, total: usize) -> Self {
        let mut names = Vec::with_capacity(total);
        let mut uids = Vec::with_capacity(total);
        let mut by_name = HashMap::with_capacity(total);
        for i in 0..total {
            let g = generate(seed, i, 0);
            by_name.insert(g.name.clone(), i);
            names.push(g.name);
            uids.push(g.uid);
        }
        Model {
            seed,
            slots: vec![Slot::default(); total],
            names,
            paths: Arc::new([]),
            uids: uids.into(),
            by_name: Arc::new(by_name),
        }
    }
    /// Fills in the request paths (outside the generator's timing).
    fn with_paths(mut self, http: &Http) -> Self {
        self.paths = self.names.iter().map(|name| http.card_path(name)).collect();
        self
    }
    fn alive(&self) -> Vec<usize> {
        (0..self.slots.len()).filter(|&i| self.slots[i].alive).collect()
    }
}

// ---------------------------------------------------------------------------------------------------------
// Measurement helpers

#[derive(Default)]
struct Lat(Vec<f64>);

impl Lat {
    fn pct(&mut self, p: f64) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        self.0.sort_by(|a, b| a.total_cmp(b));
        let idx = ((self.0.len() as f64 - 1.0) * p).round() as usize;
        self.0[idx]
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn read_status_kb(pid: u32, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines().find(|l| l.starts_with(key)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok())
}

/// CPU time the process has used so far, in nanoseconds, two ways: the sum over its live threads of
/// `/proc/PID/task/TID/schedstat` (exact, but blind to threads that ended), and `/proc/PID/stat`'s utime +
/// stime (every thread, in ticks of 10 ms: too coarse for a full sync of ~20 ms on its own).
fn cpu_ns(pid: u32) -> Option<(u64, u64)> {
    let mut threads = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
        let text = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
        threads += text.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    // utime and stime are the 12th and 13th fields after the command name. USER_HZ is 100 on Linux.
    let stat = proc_stat(pid)?;
    let mut fields = stat.split_whitespace().skip(11);
    let ticks: u64 = fields.next()?.parse::<u64>().ok()? + fields.next()?.parse::<u64>().ok()?;
    Some((threads, ticks * 10_000_000))
}

/// Milliseconds of CPU between two `cpu_ns` readings; None when either is unknown, or when the two ways
/// disagree by more than two ticks: then threads came and went (a thread per request, as Radicale has).
fn cpu_delta_ms(before: Option<(u64, u64)>, after: Option<(u64, u64)>) -> Option<f64> {
    let (before, after) = (before?, after?);
    let exact = after.0.saturating_sub(before.0) as f64 / 1e6;
    let coarse = after.1.saturating_sub(before.1) as f64 / 1e6;
    ((coarse - exact).abs() <= 20.0).then_some(exact)
}

/// A server's CPU per round over a window of `rounds` full syncs: the exact figure of its live threads when
/// the ticks of all its threads agree with it, else (threads that ended, as Radicale's thread per request)
/// the ticks, which over a window of many syncs are precise enough.
fn cpu_per_round(before: Option<(u64, u64)>, after: Option<(u64, u64)>, rounds: usize) -> Option<f64> {
    let (before, after) = (before?, after?);
    let exact = after.0.saturating_sub(before.0) as f64 / 1e6;
    let ticks = after.1.saturating_sub(before.1) as f64 / 1e6;
    let total = if (ticks - exact).abs() <= 20.0 + ticks * 0.05 { exact } else { ticks };
    Some(total / rounds.max(1) as f64)
}

/// `/proc/PID/stat` after the command name, which is in parentheses and may hold spaces.
fn proc_stat(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(stat.rsplit_once(')')?.1.to_string())
}

/// The minor page faults of a process so far (`minflt`, the 8th field after the command name).
fn minor_faults(pid: u32) -> Option<u64> {
    proc_stat(pid)?.split_whitespace().nth(7)?.parse().ok()
}

/// Resets the peak RSS (VmHWM) to the current RSS; false when the kernel or permissions refuse.
fn reset_peak(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// (apparent bytes, allocated bytes) of everything under `dir`.
fn dir_size(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let mut total = (0, 0);
    let Ok(entries) = std::fs::read_dir(dir) else { return total };
    for entry in entries.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            let (a, b) = dir_size(&entry.path());
            total.0 += a;
            total.1 += b;
        } else {
            total.0 += meta.len();
            total.1 += meta.blocks() * 512;
        }
    }
    total
}

struct Bench {
    args: Args,
    http: Arc<Http>,
    model: Arc<Mutex<Model>>,
    phases: Vec<Value>,
    failures: Vec<String>,
    peak_reset_works: bool,
    /// Repeated phases (extra full syncs) record nothing on stderr.
    quiet: bool,
}

/// Runs `count` jobs on `c` tasks; each job returns its latency in ms or an error.
async fn run_concurrent<F, Fut>(count: usize, c: usize, job: F) -> (Duration, Lat, Vec<String>)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send,
{
    let job = Arc::new(job);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..c.max(1) {
        let (job, next) = (job.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = Vec::new();
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= count {
                    break;
                }
                let t = Instant::now();
                if let Err(e) = job(k).await {
                    errors.push(e);
                }
                lat.push(ms(t.elapsed()));
            }
            (lat, errors)
        }));
    }
    let mut lat = Lat::default();
    let mut errors = Vec::new();
    for t in tasks {
        match t.await {
            Ok((l, e)) => {
                lat.0.extend(l);
                errors.extend(e);
            }
            Err(e) => errors.push(format!("task failed: {e}")),
        }
    }
    (started.elapsed(), lat, errors)
}

const PROPFIND_BODY: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<d:propfind xmlns:d="DAV:"><d:prop><d:getetag/><d:getcontenttype/></d:prop></d:propfind>"#;

fn multiget_body<'a>(paths: impl IntoIterator<Item = &'a str>) -> String {
    let mut s = String::from(
        r#"<?xml version="1.0" encoding="utf-8"?>
<card:addressbook-multiget xmlns:d="DAV:" xmlns:card="urn:ietf:params:xml:ns:carddav"><d:prop><d:getetag/><card:address-data/></d:prop>"#,
    );
    for p in paths {
        s.push_str("<d:href>");
        s.push_str(&quick_xml::escape::escape(p));
        s.push_str("</d:href>");
    }
    s.push_str("</card:addressbook-multiget>");
    s
}

fn sync_body(token: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="utf-8"?>
<d:sync-collection xmlns:d="DAV:"><d:sync-token>{}</d:sync-token><d:sync-level>1</d:sync-level><d:prop><d:getetag/></d:prop></d:sync-collection>"#,
        quick_xml::escape::escape(token)
    )
}

fn query_body(needle: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="utf-8"?>
<card:addressbook-query xmlns:d="DAV:" xmlns:card="urn:ietf:params:xml:ns:carddav"><d:prop><d:getetag/><card:address-data/></d:prop><card:filter><card:prop-filter name="EMAIL"><card:text-match collation="i;unicode-casemap" match-type="contains">{}</card:text-match></card:prop-filter></card:filter></card:addressbook-query>"#,
        quick_xml::escape::escape(needle)
    )
}

impl Bench {
    fn check(&mut self, ok: bool, what: impl Into<String>) {
        if !ok {
            let what = what.into();
            eprintln!("CHECK FAILED: {what}");
            self.failures.push(what);
        }
    }

    fn phase_start(&self) {
        if let Some(pid) = self.args.pid
            && self.peak_reset_works
        {
            reset_peak(pid);
        }
    }

    fn peak_kb(&self) -> Option<u64> {
        self.args.pid.and_then(|pid| read_status_kb(pid, "VmHWM:"))
    }

    fn record(&mut self, mut phase: Value) {
        if let Some(kb) = self.peak_kb() {
            phase["peak_rss_mb"] = json!((kb as f64 / 1024.0 * 10.0).round() / 10.0);
        }
        if !self.quiet {
            let name = phase["phase"].as_str().unwrap_or("");
            let wall = phase["wall_ms"].as_f64().unwrap_or(0.0);
            let reqs = phase["requests"].as_u64().unwrap_or(0);
            let rate = phase["req_per_s"].as_f64().unwrap_or(0.0);
            let rss = phase.get("peak_rss_mb").and_then(Value::as_f64).map(|m| format!("  peak RSS {m:.1} MB"));
            eprintln!("{name:<28} {wall:>10.1} ms {reqs:>7} req {rate:>9.0} req/s{}", rss.unwrap_or_default());
        }
        self.phases.push(phase);
    }

    /// Phase 1: PUT every card with If-None-Match: *.
    async fn upload(&mut self) {
        let n = self.args.n;
        self.phase_start();
        // Bodies generated before the clock starts, so the phase measures the server.
        let bodies: Arc<Vec<Bytes>> = Arc::new((0..n).map(|i| generate(self.args.seed, i, 0).body).collect::<Vec<_>>());
        let names: Arc<Vec<String>> = Arc::new(self.model.lock().expect("model").names[..n].to_vec());
        let done_at: Arc<Mutex<Vec<(f64, f64)>>> = Arc::new(Mutex::new(vec![(0.0, 0.0); n]));
        let etags: Arc<Mutex<Vec<Option<String>>>> = Arc::new(Mutex::new(vec![None; n]));
        let t0 = Instant::now();
        let (http, d, e) = (self.http.clone(), done_at.clone(), etags.clone());
        let (wall, mut lat, errors) = run_concurrent(n, self.args.c, move |i| {
            let (http, bodies, names, d, e) = (http.clone(), bodies.clone(), names.clone(), d.clone(), e.clone());
            async move {
                let start = ms(t0.elapsed());
                let headers =
                    [("If-None-Match", "*".to_string()), ("Content-Type", "text/vcard; charset=utf-8".to_string())];
                let r = http.send(Method::PUT, http.card_url(&names[i]), &headers, Some(bodies[i].clone())).await?;
                d.lock().expect("times")[i] = (start, ms(t0.elapsed()));
                if !r.status.is_success() {
                    return Err(format!("PUT {} -> {}", names[i], r.status));
                }
                e.lock().expect("etags")[i] = r.etag;
                Ok(())
            }
        })
        .await;
        let etags = std::mem::take(&mut *etags.lock().expect("etags"));
        {
            let mut m = self.model.lock().expect("model");
            for (i, etag) in etags.into_iter().enumerate() {
                m.slots[i].alive = true;
                m.slots[i].etag = etag;
            }
        }
        // Rate per tenth of the book: cards in the slice / (last completion - first start) within the slice.
        let times = done_at.lock().expect("times").clone();
        let slices: Vec<f64> = (0..10)
            .map(|s| {
                let (a, b) = (s * n / 10, ((s + 1) * n / 10).max(s * n / 10 + 1).min(n));
                if a >= b {
                    return 0.0;
                }
                let start = times[a..b].iter().map(|t| t.0).fold(f64::MAX, f64::min);
                let end = times[a..b].iter().map(|t| t.1).fold(0.0, f64::max);
                ((b - a) as f64 / ((end - start).max(0.001) / 1000.0)).round()
            })
            .collect();
        self.check(errors.is_empty(), format!("upload: {} failed, first: {:?}", errors.len(), errors.first()));
        let rate = n as f64 / wall.as_secs_f64();
        self.record(json!({
            "phase": "1 upload (PUT If-None-Match)", "key": "upload", "wall_ms": ms(wall), "requests": n,
            "req_per_s": rate.round(), "p50_ms": lat.pct(0.5), "p99_ms": lat.pct(0.99), "errors": errors.len(),
            "rate_by_tenth": slices, "first_tenth_per_s": slices[0], "last_tenth_per_s": slices[9],
        }));
    }

    /// A full sync (phases 2 + 3) with its checks but not recorded as a phase: (wall ms, the server's CPU ms
    /// when its PID is known). Only the bench's requests reach the server, so the CPU it used meanwhile is
    /// its own work, apart from the client's on the same machine.
    async fn unrecorded_full_sync(&mut self) -> (f64, Option<f64>) {
        let recorded = self.phases.len();
        self.quiet = true;
        let cpu_before = self.args.pid.and_then(cpu_ns);
        let wall = self.propfind().await + self.multiget().await;
        let cpu = cpu_delta_ms(cpu_before, self.args.pid.and_then(cpu_ns));
        self.phases.truncate(recorded);
        self.quiet = false;
        (wall, cpu)
    }

    /// Phase 2: PROPFIND Depth 1.
    async fn propfind(&mut self) -> f64 {
        self.phase_start();
        // Timed until the listing is parsed: a client cannot ask for the cards before it knows them.
        let t = Instant::now();
        let r = self.http.dav_parsed("PROPFIND", "1", PROPFIND_BODY.into(), &|_| None).await;
        let wall = t.elapsed();
        let (count, wire, raw, ok) = match r {
            Ok(Parsed { ms: Some(msr), wire, raw, .. }) => {
                let base = self.http.base.path().trim_end_matches('/').to_string();
                let mut m = self.model.lock().expect("model");
                let mut count = 0;
                for resp in &msr.responses {
                    let path = resp.href.trim_end_matches('/');
                    if path.ends_with(&base) {
                        continue; // the collection itself
                    }
                    if let Some(&i) = m.by_name.get(&*href_name(&resp.href))
                        && resp.ok
                    {
                        count += 1;
                        m.slots[i].etag = resp.etag.clone();
                    }
                }
                (count, wire, raw, true)
            }
            Ok(r) => {
                eprintln!("PROPFIND -> {}", r.status);
                (0, 0, 0, false)
            }
            Err(e) => {
                eprintln!("PROPFIND: {e}");
                (0, 0, 0, false)
            }
        };
        let expected = self.model.lock().expect("model").alive().len();
        self.check(ok && count == expected, format!("PROPFIND listed {count} of {expected} cards"));
        self.record(json!({
            "phase": "2 PROPFIND Depth 1", "key": "propfind", "wall_ms": ms(wall), "requests": 1,
            "req_per_s": (1.0 / wall.as_secs_f64()).round(), "members": count, "wire_bytes": wire, "body_bytes": raw,
        }));
        ms(wall)
    }

    /// Phase 3: multiget of every card in batches of 100.
    async fn multiget(&mut self) -> f64 {
        let (alive, paths, by_name, uids) = {
            let m = self.model.lock().expect("model");
            (m.alive(), m.paths.clone(), m.by_name.clone(), m.uids.clone())
        };
        // Each returned card must contain its own UID (UIDs do not change with a card's version).
        let probe = |href: &str| by_name.get(&*href_name(href)).map(|&i| uids[i].as_str());
        let t = Instant::now();
        let mut got = 0usize;
        let mut bad = Vec::new();
        let mut requests = 0;
        let mut wire = 0usize;
        let mut lat = Lat::default();
        for batch in alive.chunks(100) {
            let rt = Instant::now();
            let body = multiget_body(batch.iter().map(|&i| paths[i].as_str()));
            let r = self.http.dav_parsed("REPORT", "0", body, &probe).await;
            requests += 1;
            match r {
                Ok(Parsed { ms: Some(msr), wire: w, .. }) => {
                    wire += w;
                    let mut m = self.model.lock().expect("model");
                    let mut seen = BTreeSet::new();
                    for resp in msr.responses {
                        let name = href_name(&resp.href);
                        if resp.ok && resp.data_len > 0 && resp.data_has.is_some() {
                            if let Some(&i) = m.by_name.get(&*name) {
                                seen.insert(i);
                                if resp.etag.is_some() {
                                    m.slots[i].etag = resp.etag;
                                }
                            }
                        } else if bad.len() < 5 {
                            bad.push(format!("{name}: status {:?}", resp.status));
                        }
                    }
                    got += batch.iter().filter(|i| seen.contains(*i)).count();
                }
                Ok(r) => bad.push(format!("multiget -> {}", r.status)),
                Err(e) => bad.push(e),
            }
            lat.0.push(ms(rt.elapsed()));
        }
        let wall = t.elapsed();
        self.check(got == alive.len(), format!("multiget returned {got} of {} cards; {bad:?}", alive.len()));
        self.record(json!({
            "phase": "3 multiget (100 per REPORT)", "key": "multiget", "wall_ms": ms(wall), "requests": requests,
            "req_per_s": (requests as f64 / wall.as_secs_f64()).round(), "cards": got,
            "cards_per_s": (got as f64 / wall.as_secs_f64()).round(), "p50_ms": lat.pct(0.5), "p99_ms": lat.pct(0.99),
            "wire_bytes": wire,
        }));
        ms(wall)
    }

    /// Phase 8: `--devices` clients, each with its own connection, full-sync the book at once: PROPFIND
    /// Depth 1, then multigets of 100 of what it listed. Every device must get every card.
    async fn devices(&mut self, url: &reqwest::Url) {
        let d = self.args.devices;
        let expected = self.model.lock().expect("model").alive().len();
        let mut clients = Vec::with_capacity(d);
        for _ in 0..d {
            match Http::new(&self.args, url) {
                Ok(h) => clients.push(Arc::new(h)),
                Err(e) => return self.check(false, format!("devices: {e}")),
            }
        }
        self.phase_start();
        let t = Instant::now();
        let tasks: Vec<_> = clients.into_iter().map(|http| tokio::spawn(device_full_sync(http))).collect();
        let mut lat = Lat::default();
        let mut complete = 0;
        let mut errors = Vec::new();
        for task in tasks {
            match task.await {
                Ok(Ok((ms, cards))) if cards == expected => {
                    complete += 1;
                    lat.0.push(ms);
                }
                Ok(Ok((_, cards))) => errors.push(format!("a device got {cards} of {expected} cards")),
                Ok(Err(e)) => errors.push(e),
                Err(e) => errors.push(e.to_string()),
            }
        }
        let wall = t.elapsed();
        self.check(
            errors.is_empty(),
            format!("devices: {} of {d} incomplete, first: {:?}", d - complete, errors.first()),
        );
        self.record(json!({
            "phase": format!("8 {d} devices full-sync at once"), "key": "devices", "wall_ms": ms(wall),
            "requests": d * (1 + expected.div_ceil(100)), "req_per_s": ((d * (1 + expected.div_ceil(100))) as f64 / wall.as_secs_f64()).round(),
            "devices": d, "complete": complete, "cards_per_s": ((complete * expected) as f64 / wall.as_secs_f64()).round(),
            "p50_ms": lat.pct(0.5), "max_ms": lat.pct(1.0),
        }));
    }

    async fn put_version(&self, i: usize, version: u32, pre: (&str, String)) -> Result<Reply, String> {
        let g = generate(self.args.seed, i, version);
        let headers = [pre, ("Content-Type", "text/vcard; charset=utf-8".to_string())];
        self.http.send(Method::PUT, self.http.card_url(&g.name), &headers, Some(g.body)).await
    }

    /// Fetches a card's current ETag (for servers that do not return one on PUT).
    async fn fetch_etag(&self, i: usize) -> Option<String> {
        let name = self.model.lock().expect("model").names[i].clone();
        self.http.send(Method::GET, self.http.card_url(&name), &[], None).await.ok().and_then(|r| r.etag)
    }

    async fn etag_of(&self, i: usize) -> Option<String> {
        let known = self.model.lock().expect("model").slots[i].etag.clone();
        match known {
            Some(e) => Some(e),
            None => self.fetch_etag(i).await,
        }
    }

    /// Phase 4: sync-collection initial, 20 changes, delta.
    async fn sync(&mut self) {
        self.phase_start();
        let t = Instant::now();
        let r = self.http.dav("REPORT", "0", sync_body("")).await;
        let initial = t.elapsed();
        let expected = self.model.lock().expect("model").alive().len();
        let mut token = None;
        let mut listed = 0;
        match r {
            Ok(r) if r.status.as_u16() == 207 => match parse_multistatus(&r.body, &|_| None) {
                Ok(msr) => {
                    let m = self.model.lock().expect("model");
                    listed =
                        msr.responses.iter().filter(|x| x.ok && m.by_name.contains_key(&*href_name(&x.href))).count();
                    token = msr.sync_token;
                }
                Err(e) => eprintln!("sync-collection: {e}"),
            },
            Ok(r) => eprintln!("sync-collection -> {}", r.status),
            Err(e) => eprintln!("sync-collection: {e}"),
        }
        self.check(listed == expected, format!("initial sync-collection listed {listed} of {expected}"));
        let Some(token) = token else {
            self.check(false, "initial sync-collection gave no sync-token");
            return;
        };
        // The 20 changes: 10 modified, 5 deleted, 5 added (indices N..N+5).
        let mut rng = Rng::new(self.args.seed ^ 0x5359_4e43);
        let alive = self.model.lock().expect("model").alive();
        let mut picked = BTreeSet::new();
        while picked.len() < 15.min(alive.len()) {
            picked.insert(alive[rng.below(alive.len())]);
        }
        let picked: Vec<usize> = picked.into_iter().collect();
        let (modify, delete) = picked.split_at(10.min(picked.len()));
        let n = self.args.n;
        let add: Vec<usize> = (n..n + 5).collect();
        let tc = Instant::now();
        let mut change_errors = Vec::new();
        for &i in modify {
            let version = self.model.lock().expect("model").slots[i].version + 1;
            let etag = self.etag_of(i).await.unwrap_or_default();
            match self.put_version(i, version, ("If-Match", etag)).await {
                Ok(r) if r.status.is_success() => {
                    let mut m = self.model.lock().expect("model");
                    m.slots[i].version = version;
                    m.slots[i].etag = r.etag;
                }
                Ok(r) => change_errors.push(format!("modify -> {}", r.status)),
                Err(e) => change_errors.push(e),
            }
        }
        for &i in delete {
            let etag = self.etag_of(i).await.unwrap_or_default();
            let name = self.model.lock().expect("model").names[i].clone();
            match self.http.send(Method::DELETE, self.http.card_url(&name), &[("If-Match", etag)], None).await {
                Ok(r) if r.status.is_success() => self.model.lock().expect("model").slots[i].alive = false,
                Ok(r) => change_errors.push(format!("delete -> {}", r.status)),
                Err(e) => change_errors.push(e),
            }
        }
        for &i in &add {
            match self.put_version(i, 0, ("If-None-Match", "*".into())).await {
                Ok(r) if r.status.is_success() => {
                    let mut m = self.model.lock().expect("model");
                    m.slots[i].alive = true;
                    m.slots[i].etag = r.etag;
                }
                Ok(r) => change_errors.push(format!("add -> {}", r.status)),
                Err(e) => change_errors.push(e),
            }
        }
        let changes = tc.elapsed();
        self.check(change_errors.is_empty(), format!("sync changes failed: {change_errors:?}"));
        // The delta, checked once, then timed over more runs (the same token answers the same way).
        let (want_changed, want_deleted): (BTreeSet<String>, BTreeSet<String>) = {
            let m = self.model.lock().expect("model");
            (
                modify.iter().chain(add.iter()).map(|&i| m.names[i].clone()).collect(),
                delete.iter().map(|&i| m.names[i].clone()).collect(),
            )
        };
        let mut times = Lat::default();
        let mut first = 0.0;
        for run in 0..11 {
            let t = Instant::now();
            let r = self.http.dav("REPORT", "0", sync_body(&token)).await;
            let took = ms(t.elapsed());
            times.0.push(took);
            if run > 0 {
                continue;
            }
            first = took;
            let (mut changed, mut deleted) = (BTreeSet::new(), BTreeSet::new());
            match r {
                Ok(r) if r.status.as_u16() == 207 => match parse_multistatus(&r.body, &|_| None) {
                    Ok(msr) => {
                        for resp in msr.responses {
                            let name = href_name(&resp.href).into_owned();
                            if resp.status == Some(404) {
                                deleted.insert(name);
                            } else if resp.ok {
                                changed.insert(name);
                            }
                        }
                    }
                    Err(e) => eprintln!("delta: {e}"),
                },
                Ok(r) => eprintln!("delta -> {}", r.status),
                Err(e) => eprintln!("delta: {e}"),
            }
            let ok = changed == want_changed && deleted == want_deleted;
            self.check(
                ok,
                format!(
                    "delta listed {} changed / {} deleted, expected exactly {} / {}",
                    changed.len(),
                    deleted.len(),
                    want_changed.len(),
                    want_deleted.len()
                ),
            );
        }
        let median = times.pct(0.5);
        self.record(json!({
            "phase": "4 sync-collection", "key": "sync", "wall_ms": ms(initial) + ms(changes) + first,
            "requests": 22, "req_per_s": (22.0 / ((ms(initial) + ms(changes) + first) / 1000.0)).round(),
            "initial_ms": ms(initial), "changes_ms": ms(changes), "delta_first_ms": first, "delta_median_ms": median,
            "delta_runs": 11,
        }));
        {
            eprintln!(
                "    initial {:.1} ms, 20 changes {:.1} ms, delta {first:.2} ms (median of 11: {median:.2} ms)",
                ms(initial),
                ms(changes)
            );
        }
    }

    /// Phase 5: addressbook-query text-match on EMAIL.
    async fn query(&mut self) {
        self.phase_start();
        let needle = query_needle();
        let (expected, uids): (BTreeSet<String>, HashMap<String, String>) = {
            let m = self.model.lock().expect("model");
            let mut set = BTreeSet::new();
            let mut uids = HashMap::new();
            for i in m.alive() {
                let g = generate(m.seed, i, m.slots[i].version);
                if g.emails.iter().any(|e| e.to_lowercase().contains(&needle)) {
                    set.insert(g.name.clone());
                }
                uids.insert(g.name, g.uid);
            }
            (set, uids)
        };
        let probe = |href: &str| uids.get(&*href_name(href)).map(String::as_str);
        let mut times = Lat::default();
        let mut first = 0.0;
        let mut got = BTreeSet::new();
        for run in 0..5 {
            let t = Instant::now();
            let r = self.http.dav("REPORT", "1", query_body(&needle)).await;
            let took = ms(t.elapsed());
            times.0.push(took);
            if run > 0 {
                continue;
            }
            first = took;
            match r {
                Ok(r) if r.status.as_u16() == 207 => match parse_multistatus(&r.body, &probe) {
                    Ok(msr) => {
                        got = msr
                            .responses
                            .into_iter()
                            .filter(|x| x.ok && x.data_has.is_some())
                            .map(|x| href_name(&x.href).into_owned())
                            .collect()
                    }
                    Err(e) => eprintln!("query: {e}"),
                },
                Ok(r) => eprintln!("query -> {}", r.status),
                Err(e) => eprintln!("query: {e}"),
            }
        }
        let alive = self.model.lock().expect("model").alive().len();
        self.check(
            got == expected,
            format!("query matched {} cards, expected exactly {} (of {alive})", got.len(), expected.len()),
        );
        let median = times.pct(0.5);
        self.record(json!({
            "phase": "5 addressbook-query", "key": "query", "wall_ms": first, "requests": 1,
            "req_per_s": (1000.0 / first).round(), "matches": got.len(), "expected": expected.len(),
            "median_ms": median, "runs": 5, "needle": needle,
        }));
    }

    /// Phase 6: 1,000 GETs of random cards.
    async fn gets(&mut self) {
        self.phase_start();
        let (targets, uids): (Arc<Vec<IndexedName>>, Arc<[String]>) = {
            let m = self.model.lock().expect("model");
            let alive = m.alive();
            let mut rng = Rng::new(self.args.seed ^ 0x0047_4554);
            let t = (0..self.args.gets)
                .map(|_| {
                    let i = alive[rng.below(alive.len())];
                    (i, m.names[i].clone())
                })
                .collect();
            (Arc::new(t), m.uids.clone())
        };
        let etags: Shared<Vec<(usize, Option<String>)>> = Arc::new(Mutex::new(Vec::new()));
        let (http, tg, e) = (self.http.clone(), targets.clone(), etags.clone());
        let (wall, mut lat, errors) = run_concurrent(targets.len(), self.args.c, move |k| {
            let (http, tg, uids, e) = (http.clone(), tg.clone(), uids.clone(), e.clone());
            async move {
                let (i, name) = &tg[k];
                let r = http.send(Method::GET, http.card_url(name), &[], None).await?;
                if r.status != StatusCode::OK {
                    return Err(format!("GET {name} -> {}", r.status));
                }
                let body = String::from_utf8_lossy(&r.body);
                if !body.contains(&uids[*i]) {
                    return Err(format!("GET {name}: the body lacks the UID"));
                }
                e.lock().expect("etags").push((*i, r.etag));
                Ok(())
            }
        })
        .await;
        {
            let mut m = self.model.lock().expect("model");
            for (i, etag) in etags.lock().expect("etags").drain(..) {
                if etag.is_some() {
                    m.slots[i].etag = etag;
                }
            }
        }
        self.check(errors.is_empty(), format!("GET: {} failed, first: {:?}", errors.len(), errors.first()));
        self.record(json!({
            "phase": format!("6 GET x{}", targets.len()), "key": "get", "wall_ms": ms(wall), "requests": targets.len(),
            "req_per_s": (targets.len() as f64 / wall.as_secs_f64()).round(), "p50_ms": lat.pct(0.5),
            "p99_ms": lat.pct(0.99), "errors": errors.len(),
        }));
    }

    /// Phase 7: 500 If-Match updates of distinct cards.
    async fn updates(&mut self) {
        let (targets, missing): (Vec<usize>, Vec<usize>) = {
            let m = self.model.lock().expect("model");
            let alive = m.alive();
            let mut rng = Rng::new(self.args.seed ^ 0x0055_5044);
            let mut picked = BTreeSet::new();
            while picked.len() < 500.min(alive.len()) {
                picked.insert(alive[rng.below(alive.len())]);
            }
            let mut t: Vec<usize> = picked.into_iter().collect();
            // Shuffle deterministically so the order is not the upload order.
            for k in (1..t.len()).rev() {
                t.swap(k, rng.below(k + 1));
            }
            let missing = t.iter().copied().filter(|&i| m.slots[i].etag.is_none()).collect();
            (t, missing)
        };
        // ETags the server did not hand out on earlier answers are fetched first, outside the clock.
        for i in &missing {
            let etag = self.fetch_etag(*i).await;
            self.model.lock().expect("model").slots[*i].etag = etag;
        }
        self.phase_start();
        let jobs: Arc<Vec<(usize, u32, String, Bytes)>> = {
            let m = self.model.lock().expect("model");
            Arc::new(
                targets
                    .iter()
                    .map(|&i| {
                        let v = m.slots[i].version + 1;
                        let g = generate(m.seed, i, v);
                        (i, v, m.slots[i].etag.clone().unwrap_or_default(), g.body)
                    })
                    .collect(),
            )
        };
        let names: Arc<Vec<String>> = Arc::new(self.model.lock().expect("model").names.clone());
        let results: Shared<Vec<(usize, u32, Option<String>)>> = Arc::new(Mutex::new(Vec::new()));
        let statuses: Arc<Mutex<HashMap<u16, usize>>> = Arc::new(Mutex::new(HashMap::new()));
        let (http, j, res, st) = (self.http.clone(), jobs.clone(), results.clone(), statuses.clone());
        let (wall, mut lat, errors) = run_concurrent(jobs.len(), self.args.c, move |k| {
            let (http, j, names, res, st) = (http.clone(), j.clone(), names.clone(), res.clone(), st.clone());
            async move {
                let (i, v, etag, body) = &j[k];
                let headers = [("If-Match", etag.clone()), ("Content-Type", "text/vcard; charset=utf-8".to_string())];
                let r = http.send(Method::PUT, http.card_url(&names[*i]), &headers, Some(body.clone())).await?;
                *st.lock().expect("statuses").entry(r.status.as_u16()).or_default() += 1;
                if !r.status.is_success() {
                    return Err(format!("PUT If-Match {} -> {}", names[*i], r.status));
                }
                res.lock().expect("results").push((*i, *v, r.etag));
                Ok(())
            }
        })
        .await;
        {
            let mut m = self.model.lock().expect("model");
            for (i, v, etag) in results.lock().expect("results").drain(..) {
                m.slots[i].version = v;
                m.slots[i].etag = etag;
            }
        }
        let statuses: HashMap<String, usize> =
            statuses.lock().expect("statuses").iter().map(|(k, v)| (k.to_string(), *v)).collect();
        self.check(errors.is_empty(), format!("updates: {} refused, statuses {statuses:?}", errors.len()));
        self.record(json!({
            "phase": "7 PUT If-Match x500", "key": "update", "wall_ms": ms(wall), "requests": jobs.len(),
            "req_per_s": (jobs.len() as f64 / wall.as_secs_f64()).round(), "p50_ms": lat.pct(0.5),
            "p99_ms": lat.pct(0.99), "errors": errors.len(), "statuses": statuses,
            "etags_fetched_first": missing.len(),
        }));
    }
}

/// Connects to the book of `args.url`, checks that it answers as a collection, and generates the cards.
/// Also returns how long generating the cards took (ms).
async fn open_bench(args: &Args) -> Result<(Bench, reqwest::Url, f64), String> {
    if args.n < 20 {
        return Err("-n must be at least 20 (the sync phase modifies and deletes 15 existing cards)".into());
    }
    let mut url = reqwest::Url::parse(&args.url).map_err(|e| format!("--url {}: {e}", args.url))?;
    if !url.path().ends_with('/') {
        let p = format!("{}/", url.path());
        url.set_path(&p);
    }
    let http = Arc::new(Http::new(args, &url)?);

    // The collection must answer before anything is timed.
    let probe = http.dav("PROPFIND", "0", PROPFIND_BODY.into()).await?;
    if probe.status.as_u16() != 207 {
        return Err(format!("PROPFIND Depth 0 on {url} answered {} (is the URL an address book?)", probe.status));
    }
    let gen_start = Instant::now();
    let model = Model::new(args.seed, args.n + 5);
    let gen_ms = ms(gen_start.elapsed());
    let model = model.with_paths(&http);
    let peak_reset_works = args.pid.is_some_and(reset_peak);
    let bench = Bench {
        args: args.clone(),
        http,
        model: Arc::new(Mutex::new(model)),
        phases: Vec::new(),
        failures: Vec::new(),
        peak_reset_works,
        quiet: false,
    };
    Ok((bench, url, gen_ms))
}

async fn run(args: Args) -> Result<Value, String> {
    if args.versus_url.is_some() {
        return run_versus(args).await;
    }
    let startup_peak = args.pid.and_then(|pid| read_status_kb(pid, "VmHWM:"));
    let (mut bench, url, gen_ms) = open_bench(&args).await?;
    let peak_reset_works = bench.peak_reset_works;
    {
        eprintln!(
            "kartei-bench: {} cards, concurrency {}, {} ({}){}",
            args.n,
            args.c,
            url,
            if args.label.is_empty() { "-" } else { &args.label },
            if args.pid.is_some() && !peak_reset_works { "; peak RSS is since server start" } else { "" }
        );
    }
    let total = Instant::now();
    bench.upload().await;
    let cpu_before = args.pid.and_then(cpu_ns);
    let faults_before = args.pid.and_then(minor_faults);
    let p2 = bench.propfind().await;
    let p3 = bench.multiget().await;
    // Memory the server touches for the first time shows as page faults (optimization 26 in BENCHMARKS.md).
    let first_sync_faults = faults_before.zip(args.pid.and_then(minor_faults)).map(|(a, b)| b.saturating_sub(a));
    let mut full_sync_cpu: Vec<Option<f64>> = vec![cpu_delta_ms(cpu_before, args.pid.and_then(cpu_ns))];
    // Peak over phases 2 and 3 (each phase reset the peak at its start).
    let full_sync_peak = bench.phases[1..3]
        .iter()
        .filter_map(|p| p.get("peak_rss_mb").and_then(Value::as_f64))
        .fold(None, |acc: Option<f64>, v| Some(acc.map_or(v, |a| a.max(v))));
    {
        eprintln!("{:<28} {:>10.1} ms", "  = initial full sync (2+3)", p2 + p3);
    }
    // Further full syncs of the unchanged book: a median is steadier than one run on a shared machine.
    let mut full_syncs = Lat(vec![p2 + p3]);
    for _ in 1..args.full_syncs {
        let (again, cpu) = bench.unrecorded_full_sync().await;
        full_sync_cpu.push(cpu);
        full_syncs.0.push(again);
    }
    let full_sync_each = full_syncs.0.clone();
    let full_sync_median = full_syncs.pct(0.5);
    if args.full_syncs > 1 {
        eprintln!("{:<28} {:>10.1} ms", format!("  median of {} full syncs", args.full_syncs), full_sync_median);
    }
    let cpu_known: Vec<f64> = full_sync_cpu.iter().flatten().copied().collect();
    if cpu_known.len() == full_sync_cpu.len() && !cpu_known.is_empty() {
        let first = cpu_known[0];
        eprintln!(
            "{:<28} {:>10.1} ms first, {:.1} ms median",
            "  server CPU per full sync",
            first,
            Lat(cpu_known).pct(0.5)
        );
    }
    if let Some(faults) = first_sync_faults {
        eprintln!("{:<28} {:>10}", "  server page faults, first", faults);
    }
    bench.sync().await;
    // A new device's full sync on a server that has been serving and was just written to: the 20 changes of
    // phase 4 came before it. The first full sync above is also the first work a freshly started server does
    // (its buffers and allocator arenas are touched for the first time); this one is not, while the
    // database connections' page caches are cold again, as after any write.
    let after_writes = bench.unrecorded_full_sync().await;
    {
        let cpu = after_writes.1.map(|c| format!(" (server CPU {c:.1} ms)")).unwrap_or_default();
        eprintln!("{:<28} {:>10.1} ms{cpu}", "  full sync after phase 4", after_writes.0);
    }
    bench.query().await;
    bench.gets().await;
    bench.updates().await;
    if args.devices > 0 {
        bench.devices(&url).await;
    }
    let total_ms = ms(total.elapsed());
    let size = args.data_dir.as_deref().map(dir_size);
    let cards_bytes: usize = (0..args.n).map(|i| generate(args.seed, i, 0).body.len()).sum();
    let report = json!({
        "label": args.label,
        "url": args.url,
        "n": args.n,
        "c": args.c,
        "seed": args.seed,
        "accept_encoding": (!args.no_gzip).then_some(&args.accept_encoding),
        "http1_only": args.http1,
        "generated_bytes": cards_bytes,
        "generator_ms": gen_ms,
        "phases": bench.phases,
        "full_sync_ms": p2 + p3,
        "full_syncs": args.full_syncs,
        "full_sync_median_ms": full_sync_median,
        "full_sync_each_ms": full_sync_each,
        "full_sync_server_cpu_ms_each": full_sync_cpu,
        "full_sync_first_server_page_faults": first_sync_faults,
        "full_sync_after_writes_ms": after_writes.0,
        "full_sync_after_writes_server_cpu_ms": after_writes.1,
        "full_sync_peak_rss_mb": full_sync_peak,
        "peak_rss_before_mb": startup_peak.map(|kb| kb as f64 / 1024.0),
        "peak_rss_per_phase": peak_reset_works,
        "data_dir_bytes": size.map(|s| s.0),
        "data_dir_allocated_bytes": size.map(|s| s.1),
        "total_ms": total_ms,
        "failures": bench.failures,
    });
    {
        if let Some((apparent, allocated)) = size {
            eprintln!(
                "data dir: {:.1} MB ({:.1} MB allocated); the cards are {:.1} MB as generated",
                apparent as f64 / 1e6,
                allocated as f64 / 1e6,
                cards_bytes as f64 / 1e6
            );
        }
        if let Some(p) = full_sync_peak {
            eprintln!("peak RSS during PROPFIND + multiget: {p:.1} MB");
        }
        eprintln!(
            "total {:.1} s; {} failed checks",
            total_ms / 1000.0,
            report["failures"].as_array().map_or(0, Vec::len)
        );
    }
    Ok(report)
}

/// `--versus-url`: both books get the same cards, then full syncs alternate between them. Round r syncs the
/// first book first when r is even and the second first when odd, so neither always follows the other's
/// work. The two syncs of a round run within a second of each other, under the same machine conditions; the
/// median of the rounds' ratios is what this mode is for, as the shared machine's speed drifts by tens of
/// percent between minutes (BENCHMARKS.md, seventeenth session).
async fn run_versus(args: Args) -> Result<Value, String> {
    let Some(peer_args) = args.versus() else {
        return Err("--versus-url is missing".into());
    };
    if args.rounds == 0 {
        return Err("--rounds must be at least 1".into());
    }
    let (mut a, url_a, _) = open_bench(&args).await?;
    let (mut b, url_b, _) = open_bench(&peer_args).await?;
    let name =
        |args: &Args, url: &reqwest::Url| if args.label.is_empty() { url.to_string() } else { args.label.clone() };
    let (name_a, name_b) = (name(&args, &url_a), name(&peer_args, &url_b));
    eprintln!("kartei-bench: {} cards; {} and {} full-synced in turn, {} rounds", args.n, name_a, name_b, args.rounds);
    eprintln!("{name_a}:");
    a.upload().await;
    eprintln!("{name_b}:");
    b.upload().await;
    // The first full sync of each is recorded with its phases; the rounds follow.
    eprintln!("{name_a}:");
    let first_a = a.propfind().await + a.multiget().await;
    eprintln!("{name_b}:");
    let first_b = b.propfind().await + b.multiget().await;
    let mut each: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut ratios = Vec::with_capacity(args.rounds);
    // Each server's CPU over all the rounds: it idles while the other one is synced.
    let cpu_before = [args.pid.and_then(cpu_ns), peer_args.pid.and_then(cpu_ns)];
    for round in 0..args.rounds {
        let mut wall = [0.0; 2];
        for k in if round % 2 == 0 { [0, 1] } else { [1, 0] } {
            let (w, _) = if k == 0 { a.unrecorded_full_sync().await } else { b.unrecorded_full_sync().await };
            wall[k] = w;
            each[k].push(w);
        }
        ratios.push(wall[1] / wall[0]);
    }
    let cpu = [
        cpu_per_round(cpu_before[0], args.pid.and_then(cpu_ns), args.rounds),
        cpu_per_round(cpu_before[1], peer_args.pid.and_then(cpu_ns), args.rounds),
    ];
    let pct = |v: &[f64], p: f64| Lat(v.to_vec()).pct(p);
    let side = |bench: &Bench, name: &str, url: &reqwest::Url, first: f64, each: &[f64], cpu: Option<f64>| {
        json!({
            "label": name, "url": url.as_str(), "phases": bench.phases, "full_sync_ms": first,
            "full_sync_median_ms": pct(each, 0.5), "full_sync_each_ms": each, "full_sync_server_cpu_ms": cpu,
        })
    };
    for (name, first, each, cpu) in [(&name_a, first_a, &each[0], cpu[0]), (&name_b, first_b, &each[1], cpu[1])] {
        let cpu = cpu.map(|c| format!("; server CPU {c:.1} ms per sync")).unwrap_or_default();
        eprintln!(
            "{name}: first full sync {first:.1} ms; over the rounds {:.1} / {:.1} / {:.1} ms (25th / median / 75th){cpu}",
            pct(each, 0.25),
            pct(each, 0.5),
            pct(each, 0.75)
        );
    }
    let (median_a, median_b) = (pct(&each[0], 0.5), pct(&each[1], 0.5));
    eprintln!(
        "{name_b} / {name_a}, per round: {:.2}x / {:.2}x / {:.2}x (25th / median / 75th; {:.2}x to {:.2}x); first sync \
         {:.2}x; ratio of the medians {:.2}x",
        pct(&ratios, 0.25),
        pct(&ratios, 0.5),
        pct(&ratios, 0.75),
        pct(&ratios, 0.0),
        pct(&ratios, 1.0),
        first_b / first_a,
        median_b / median_a
    );
    let failures: Vec<String> = [(&name_a, &a.failures), (&name_b, &b.failures)]
        .iter()
        .flat_map(|(name, f)| f.iter().map(move |f| format!("{name}: {f}")))
        .collect();
    eprintln!("{} failed checks", failures.len());
    Ok(json!({
        "mode": "versus",
        "n": args.n,
        "c": args.c,
        "seed": args.seed,
        "accept_encoding": (!args.no_gzip).then_some(&args.accept_encoding),
        "rounds": args.rounds,
        "a": side(&a, &name_a, &url_a, first_a, &each[0], cpu[0]),
        "b": side(&b, &name_b, &url_b, first_b, &each[1], cpu[1]),
        "ratio_each": ratios,
        "ratio_median": pct(&ratios, 0.5),
        "ratio_p25": pct(&ratios, 0.25),
        "ratio_p75": pct(&ratios, 0.75),
        "ratio_of_medians": median_b / median_a,
        "ratio_first": first_b / first_a,
        "failures": failures,
    }))
}

/// Times kartei's password verification (Argon2id with kartei's parameters) on this machine.
fn time_argon2() -> ExitCode {
    let Ok(hash) = kartei::auth::hash_password("correct horse battery staple") else {
        eprintln!("kartei-bench: hashing failed");
        return ExitCode::FAILURE;
    };
    let mut lat = Lat::default();
    for _ in 0..20 {
        let t = Instant::now();
        let ok = kartei::auth::verify_password("correct horse battery staple", &hash);
        lat.0.push(ms(t.elapsed()));
        if !ok {
            eprintln!("kartei-bench: verification failed");
            return ExitCode::FAILURE;
        }
    }
    let (p50, min) = (lat.pct(0.5), lat.pct(0.0));
    println!(
        "{}",
        json!({"argon2_verify_ms_median": p50, "argon2_verify_ms_min": min, "runs": 20, "hash": hash.split('$').take(4).collect::<Vec<_>>().join("$")})
    );
    eprintln!(
        "one Argon2 verification: {p50:.1} ms median ({min:.1} ms min) = at most {:.0} verifications/s per core",
        1000.0 / p50
    );
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.argon2 {
        return time_argon2();
    }
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime =
        match tokio::runtime::Builder::new_multi_thread().worker_threads(args.threads.max(1)).enable_all().build() {
            Ok(r) => r,
            Err(e) => {
                eprintln!("kartei-bench: {e}");
                return ExitCode::FAILURE;
            }
        };
    let json_out = args.json;
    // The benchmark runs as a task on the worker threads, next to the connections' tasks: from the main
    // thread (plain block_on) every wake-up would cross threads.
    let outcome =
        runtime.block_on(runtime.spawn(run(args))).unwrap_or_else(|e| Err(format!("the benchmark task failed: {e}")));
    match outcome {
        Ok(report) => {
            if json_out {
                println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
            }
            if report["failures"].as_array().is_some_and(|f| !f.is_empty()) {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("kartei-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Over the rounds of `--versus-url`: a server whose threads live on is measured exactly; one whose ticks
    /// show far more than its live threads did (a thread per request) is measured by the ticks.
    #[test]
    fn cpu_per_round_falls_back_to_ticks_when_threads_ended() {
        let ms = 1_000_000;
        let kartei = cpu_per_round(Some((0, 0)), Some((203 * ms, 210 * ms)), 20).expect("known");
        assert!((kartei - 10.15).abs() < 1e-9, "{kartei}");
        let radicale = cpu_per_round(Some((5 * ms, 0)), Some((19 * ms, 3_000 * ms)), 20).expect("known");
        assert!((radicale - 150.0).abs() < 1e-9, "{radicale}");
        assert_eq!(cpu_per_round(None, Some((1, 1)), 20), None);
    }

    /// The page-fault count of the first full sync: touching fresh pages shows in this process's own count.
    #[test]
    fn minor_faults_grow_when_fresh_memory_is_touched() {
        let before = minor_faults(std::process::id()).expect("own /proc/self/stat");
        // 8 MB of fresh pages, written so that each is faulted in.
        let mut fresh = vec![0u8; 8 << 20];
        for page in fresh.chunks_mut(4096) {
            page[0] = 1;
        }
        let after = minor_faults(std::process::id()).expect("own /proc/self/stat");
        assert!(after >= before + 1000, "{before} -> {after} faults for 2,048 fresh pages");
        assert_eq!(fresh.iter().filter(|&&b| b == 1).count(), 2048);
    }

    /// The server-CPU figure: this process's own CPU grows by about the time it spins, and a reading whose
    /// two ways disagree (threads that came and went) is reported as unknown rather than too low.
    #[test]
    fn cpu_per_sync_is_measured_or_unknown() {
        let pid = std::process::id();
        let before = cpu_ns(pid);
        let start = Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(60) {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        let after = cpu_ns(pid);
        let (b, a) = (before.expect("schedstat readable"), after.expect("schedstat readable"));
        let exact = (a.0 - b.0) as f64 / 1e6;
        assert!(exact >= 30.0, "spun 60 ms, measured {exact} ms of CPU");
        assert_eq!(cpu_delta_ms(Some((0, 0)), Some((15_000_000, 20_000_000))), Some(15.0));
        assert_eq!(cpu_delta_ms(Some((0, 0)), Some((5_000_000, 300_000_000))), None);
        assert_eq!(cpu_delta_ms(None, Some((1, 1))), None);
    }

    #[test]
    fn push_xml10_normalizes_like_quick_xml() {
        for s in ["", "a", "\r", "\r\n", "\n\r", "a\r\nb\rc\n\r\r\nd", "ü\r\n\r", "BEGIN:VCARD\r\nUID:x\r\n"] {
            let mut out = b"kept ".to_vec();
            push_xml10(&mut out, s.as_bytes());
            let t = quick_xml::events::BytesText::from_escaped(s);
            assert_eq!(String::from_utf8(out).expect("utf-8"), format!("kept {}", t.xml10_content()), "{s:?}");
        }
    }

    const MULTIGET: &str = "<?xml version=\"1.0\"?>\n<D:multistatus xmlns:D=\"DAV:\" xmlns:C=\"urn:ietf:params:xml:ns:carddav\">\
        <D:response><D:href>/b/one.vcf</D:href><D:propstat><D:prop><D:getetag>\"e1\"</D:getetag>\
        <C:address-data>BEGIN:VCARD\r\nUID:u&#58;1\r\nNOTE:a &amp; b<![CDATA[<c>]]>\r\nEND:VCARD\r\n</C:address-data>\
        </D:prop><D:status>HTTP/1.1 200 OK</D:status></D:propstat>\
        <D:propstat><D:prop><D:getetag>\"other\"</D:getetag></D:prop><D:status>HTTP/1.1 404 Not Found</D:status></D:propstat></D:response>\
        <D:response><D:href>/b/t%C3%BCr.vcf</D:href><D:propstat><D:prop><D:getetag>\"e2\"</D:getetag>\
        <C:address-data>BEGIN:VCARD&#13;\nUID:wrong&#13;\nEND:VCARD&#13;\n</C:address-data></D:prop>\
        <D:status>HTTP/1.1 200 OK</D:status></D:propstat></D:response>\
        <D:response><D:href>/b/gone.vcf</D:href><D:status>HTTP/1.1 404 Not Found</D:status></D:response>\
        <D:sync-token> http://example/sync/7 </D:sync-token></D:multistatus>";

    #[test]
    fn multistatus_checks_the_probe_in_the_decoded_address_data() {
        let probe = |href: &str| match &*href_name(href) {
            "one.vcf" => Some("UID:u:1\nNOTE:a & b<c>\n"),
            "tür.vcf" => Some("UID:u:2"),
            _ => None,
        };
        let ms = parse_multistatus(MULTIGET.as_bytes(), &probe).expect("parses");
        assert_eq!(ms.sync_token.as_deref(), Some("http://example/sync/7"));
        let [one, two, gone] = &ms.responses[..] else { panic!("three responses: {:?}", ms.responses) };
        assert_eq!((one.href.as_str(), one.ok, one.etag.as_deref()), ("/b/one.vcf", true, Some("\"e1\"")));
        // CR LF became LF; the references and the CDATA section were decoded.
        assert_eq!(one.data_len, "BEGIN:VCARD\nUID:u:1\nNOTE:a & b<c>\nEND:VCARD\n".len());
        assert!(one.data_has.is_some());
        assert_eq!((&*href_name(&two.href), two.ok, two.etag.as_deref()), ("tür.vcf", true, Some("\"e2\"")));
        // A CR written as a reference is kept, and the wrong UID fails the probe.
        assert_eq!(two.data_len, "BEGIN:VCARD\r\nUID:wrong\r\nEND:VCARD\r\n".len());
        assert!(two.data_has.is_none());
        assert_eq!((gone.status, gone.ok, gone.data_len), (Some(404), false, 0));
    }

    #[test]
    fn address_data_is_found_whatever_its_prefix() {
        // The end tag's searcher is kept between cards; a card under another prefix needs a searcher of its
        // own (the old one would find no end tag after the second card's start).
        let card = |prefix: &str, uid: &str| {
            format!(
                "<D:response xmlns:{prefix}=\"urn:ietf:params:xml:ns:carddav\"><D:href>/b/{uid}.vcf</D:href><D:propstat>\
                 <D:prop><{prefix}:address-data>BEGIN:VCARD&#13;\nUID:{uid}&#13;\nEND:VCARD&#13;\n</{prefix}:address-data>\
                 </D:prop><D:status>HTTP/1.1 200 OK</D:status></D:propstat></D:response>"
            )
        };
        let xml = format!(
            "<D:multistatus xmlns:D=\"DAV:\">{}{}{}</D:multistatus>",
            card("C", "a"),
            card("card", "bb"),
            card("card", "ccc")
        );
        let ms = parse_multistatus(xml.as_bytes(), &|href: &str| {
            Some(if href.contains("/a.") { "UID:a\r" } else { "UID:" })
        })
        .expect("parses");
        let lens: Vec<_> = ms.responses.iter().map(|r| (r.ok, r.data_len, r.data_has.is_some())).collect();
        assert_eq!(lens, [(true, 31, true), (true, 32, true), (true, 33, true)]);
    }

    #[test]
    fn raw_text_decodes_like_quick_xml_events() {
        for raw in
            ["", "a", "a&#13;\nb", "x\r\ny\rz", "&lt;&amp;&gt;&quot;&apos;&#x1F600;", "<![CDATA[<a>\r\n]]>b", "ü&#252;"]
        {
            let mut out = b"kept ".to_vec();
            push_xml_text(&mut out, raw.as_bytes()).expect("decodes");
            let xml = format!("<x>{raw}</x>");
            let mut expected = String::from("kept ");
            let mut reader = quick_xml::Reader::from_str(&xml);
            loop {
                match reader.read_event().expect("well-formed") {
                    Event::Text(t) => expected.push_str(&t.xml10_content()),
                    Event::CData(t) => expected.push_str(&t.xml10_content()),
                    Event::GeneralRef(r) => expected.extend(resolve_reference(&r.into_inner())),
                    Event::Eof => break,
                    _ => {}
                }
            }
            assert_eq!(String::from_utf8(out).expect("utf-8"), expected, "{raw:?}");
        }
        for bad in ["a & b", "<b/>", "<!-- c -->", "<![CDATA[open", "&nosuch;"] {
            assert!(push_xml_text(&mut Vec::new(), bad.as_bytes()).is_err(), "{bad:?}");
        }
    }

    /// Parses `xml` as `Http::dav_parsed` does when it arrives in the pieces that `cuts` ends.
    fn parse_in_pieces(xml: &[u8], cuts: &[usize], probe: &dyn Fn(&str) -> Option<&'static str>) -> String {
        let mut parser = MultistatusParser::default();
        let mut parsed = 0;
        for &arrived in cuts {
            let fresh = &xml[parsed..arrived];
            if let Some(cut) = last_response_end(fresh) {
                parser.parse(&fresh[..cut], probe).expect("parses");
                parsed += cut;
            }
        }
        parser.parse(&xml[parsed..], probe).expect("parses");
        format!("{:?}", parser.finish().expect("whole"))
    }

    #[test]
    fn an_answer_parsed_as_it_arrives_equals_the_whole_parse() {
        let probe = |href: &str| if href.ends_with("one.vcf") { Some("UID:u:1") } else { Some("UID:u:2") };
        let xml = MULTIGET.as_bytes();
        let whole = format!("{:?}", parse_multistatus(xml, &probe).expect("parses"));
        // Every point where the first piece could end, then pieces of every size.
        for first in 0..=xml.len() {
            assert_eq!(parse_in_pieces(xml, &[first], &probe), whole, "cut at {first}");
        }
        for size in 1..64 {
            let cuts: Vec<usize> = (size..xml.len()).step_by(size).collect();
            assert_eq!(parse_in_pieces(xml, &cuts, &probe), whole, "pieces of {size}");
        }
        // Only a whole response's end tag is a cut point, with any prefix or none.
        assert_eq!(last_response_end(b"<D:response><x/></D:response><D:response>"), Some(29));
        assert_eq!(last_response_end(b"<response></response>"), Some(21));
        assert_eq!(last_response_end(b"<a:response><a:href>/response></a:href>"), None);
        assert_eq!(last_response_end(b"<a:response></a:responsex>"), None);
    }

    #[test]
    fn pooled_zstd_decoding_reads_concatenated_frames_and_refuses_a_cut_body() {
        let pool = DecodePool::default();
        let text: Vec<u8> = (0..200_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
        // Two frames, as an answer with a spliced card frame has; the big output overflows any first buffer.
        let mut body = zstd::bulk::compress(&text[..100_000], 1).expect("compresses");
        body.extend(zstd::bulk::compress(&text[100_000..], 1).expect("compresses"));
        for round in 0..3 {
            let mut decoder = pool.decoder_for(Some("zstd")).expect("a decoder");
            for piece in body.chunks(7_000) {
                decoder.write_all(piece).expect("decodes");
            }
            let decoded = decoder.finish(&pool).expect("whole");
            assert!(decoded == text, "round {round}: the decoded body differs");
            pool.give_back(decoded);
            assert_eq!(pool.zstd.lock().expect("pool").len(), 1, "the context is kept and reused");
        }
        let mut decoder = pool.decoder_for(Some("zstd")).expect("a decoder");
        decoder.write_all(&body[..body.len() - 10]).expect("decodes so far");
        assert!(decoder.finish(&pool).is_err(), "a body cut inside a frame is an error");
        let mut decoder = pool.decoder_for(Some("zstd")).expect("a decoder after a cut body");
        decoder.write_all(&body).expect("decodes");
        assert!(decoder.finish(&pool).expect("whole") == text, "a context reused after a cut body starts afresh");
        let mut decoder = pool.decoder_for(Some("zstd")).expect("a decoder");
        assert!(decoder.write_all(b"not zstd at all").is_err(), "garbage is refused");
    }

    #[test]
    fn a_cut_or_mismatched_answer_is_an_error() {
        let xml = MULTIGET.as_bytes();
        let first_response = last_response_end(&xml[..xml.len() - 200]).expect("a response before the last");
        let mut parser = MultistatusParser::default();
        parser.parse(&xml[..first_response], &|_| None).expect("well-formed so far");
        assert!(parser.finish().is_err(), "an answer that ends inside its root is not whole");
        for bad in ["<a><b></a></b>", "<a></a><b/>", "</a>", "<a><response></a>"] {
            let mut parser = MultistatusParser::default();
            let result = parser.parse(bad.as_bytes(), &|_| None).and_then(|()| parser.finish());
            assert!(result.is_err(), "{bad}");
        }
    }

    #[test]
    fn cards_share_no_random_bytes() {
        // Every 24-character run of a photo's base64 (the part after its first line), across 400 cards: a run
        // seen in two cards means their streams overlap (18 random bytes match by chance with odds of 2^-144).
        let mut seen = HashMap::new();
        let mut photos = 0;
        for index in 0..400 {
            let body = generate(5, index, 0).body;
            let text = std::str::from_utf8(&body).expect("utf-8");
            let Some(start) = text.find("PHOTO") else { continue };
            photos += 1;
            let photo: Vec<u8> =
                text[start..].lines().skip(1).take_while(|l| l.starts_with(' ')).flat_map(|l| l[1..].bytes()).collect();
            for run in photo.windows(24) {
                if let Some(other) = seen.insert(run.to_vec(), index) {
                    assert_eq!(other, index, "cards {other} and {index} share {:?}", String::from_utf8_lossy(run));
                }
            }
        }
        assert!(photos >= 20, "{photos} photos in 400 cards");
    }

    #[test]
    fn multistatus_rejects_bad_xml() {
        assert!(parse_multistatus(b"<a><response></a>", &|_| None).is_err());
        // A card's text that is not UTF-8, or never ends.
        let card = |text: &[u8]| {
            [&b"<d:multistatus xmlns:d=\"DAV:\" xmlns:c=\"urn:ietf:params:xml:ns:carddav\"><d:response><d:href>/b/x.vcf</d:href><d:propstat><d:prop><c:address-data>"[..], text, b"</c:address-data></d:prop><d:status>HTTP/1.1 200 OK</d:status></d:propstat></d:response></d:multistatus>"].concat()
        };
        let ok = parse_multistatus(&card(b"UID:x&#13;\n"), &|_| Some("UID:x")).expect("parses");
        assert_eq!((ok.responses[0].data_len, ok.responses[0].data_has.is_some()), (7, true));
        assert!(parse_multistatus(&card(b"FN:\xff&#13;\n"), &|_| None).is_err(), "not UTF-8");
        let open = card(b"FN:x");
        let open = &open[..open.len() - 100];
        assert!(parse_multistatus(open, &|_| None).is_err(), "not closed");
    }
}
