//! Hostile and malformed input (issue 6): a table of several hundred malformed requests, each of which must
//! get a 4xx (never a 5xx, never a hang) with a `DAV:error` body where a precondition applies, leaving the
//! store exactly as it was; and every configurable limit (body size, max-resource-size, header size,
//! multiget hrefs, filter terms, request time, idle connections, concurrent connections) tested small.
//!
//! Requests go over a raw TLS connection so that the test controls every byte: broken paths, broken
//! headers, lying Content-Lengths and half-sent requests that no HTTP client library would send.

use crate::support::*;
use base64::Engine as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

// ---------------------------------------------------------------------------------------------------------
// A raw HTTP/1.1-over-TLS client.

struct Raw {
    addr: SocketAddr,
    connector: TlsConnector,
    h2_connector: TlsConnector,
    /// `Basic …` for the test user.
    auth: String,
}

#[derive(Debug)]
struct RawResp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawResp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).chars().take(300).collect()
    }

    /// The `{ns}name` of the precondition in a `DAV:error` body.
    fn condition(&self) -> Result<String, String> {
        let e =
            kartei::dav::xml::parse(&self.body).map_err(|e| format!("error body is not XML ({e}): {}", self.text()))?;
        if !e.is(DAV, "error") {
            return Err(format!("not a DAV:error body: {}", self.text()));
        }
        let c = e
            .children
            .iter()
            .find(|c| c.name != "responsedescription")
            .ok_or_else(|| format!("DAV:error without a condition: {}", self.text()))?;
        Ok(format!("{{{}}}{}", c.ns, c.name))
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Decodes a complete chunked body; `None` while incomplete.
fn dechunk(mut rest: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = find(rest, b"\r\n")?;
        let size_text = std::str::from_utf8(&rest[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        if rest.len() < size + 2 {
            return None;
        }
        out.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

/// A complete response at the start of `buf`, if there is one (`eof`: the server closed the connection).
fn parse_response(buf: &[u8], eof: bool) -> Option<RawResp> {
    let head_end = find(buf, b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..head_end]);
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let rest = &buf[head_end + 4..];
    let get = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
    let body = if let Some(len) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
        if rest.len() < len {
            return None;
        }
        rest[..len].to_vec()
    } else if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        dechunk(rest)?
    } else if eof {
        rest.to_vec()
    } else {
        return None;
    };
    Some(RawResp { status, headers, body })
}

/// Reads one response; `Err` on a timeout or when the connection closes first.
async fn read_response<R: tokio::io::AsyncRead + Unpin>(stream: &mut R, limit: Duration) -> Result<RawResp, String> {
    let mut buf = Vec::new();
    let read = async {
        let mut chunk = vec![0u8; 16 * 1024];
        loop {
            let n = match stream.read(&mut chunk).await {
                Ok(n) => n,
                // A peer that closes without close_notify is an EOF here.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
                Err(e) if buf.is_empty() => return Err(format!("read failed: {e}")),
                Err(_) => 0,
            };
            buf.extend_from_slice(&chunk[..n]);
            if let Some(r) = parse_response(&buf, n == 0) {
                return Ok(r);
            }
            if n == 0 {
                return Err(format!(
                    "connection closed before a complete response ({} bytes: {:?})",
                    buf.len(),
                    String::from_utf8_lossy(&buf[..buf.len().min(200)])
                ));
            }
        }
    };
    match tokio::time::timeout(limit, read).await {
        Ok(r) => r,
        Err(_) => Err(format!("no response within {limit:?} (server hung)")),
    }
}

/// Reads a streamed answer until the server closes the connection or the answer ends with its last chunk
/// (a whole answer leaves a keep-alive connection open). Returns the bytes received and the last 16 of them,
/// or `None` when neither happened within `limit`.
async fn read_answer<R: tokio::io::AsyncRead + Unpin>(stream: &mut R, limit: Duration) -> Option<(usize, Vec<u8>)> {
    let (mut received, mut tail) = (0usize, Vec::new());
    let mut chunk = vec![0u8; 64 * 1024];
    let read = async {
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    received += n;
                    tail.extend_from_slice(&chunk[..n]);
                    tail.drain(..tail.len().saturating_sub(16));
                }
            }
            if tail.ends_with(LAST_CHUNK) {
                return;
            }
        }
    };
    tokio::time::timeout(limit, read).await.ok()?;
    Some((received, tail))
}

/// How a chunked HTTP/1.1 body ends when it is complete.
const LAST_CHUNK: &[u8] = b"\r\n0\r\n\r\n";

/// Waits until the server closes the connection; `Ok(elapsed)` or `Err` when it is still open at `limit`.
async fn wait_closed<R: tokio::io::AsyncRead + Unpin>(stream: &mut R, limit: Duration) -> Result<Duration, String> {
    let started = Instant::now();
    let mut chunk = vec![0u8; 16 * 1024];
    let wait = async {
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(limit, wait)
        .await
        .map(|_| started.elapsed())
        .map_err(|_| format!("the connection was still open after {limit:?}"))
}

impl Raw {
    fn new(s: &TestServer, user: &Dav) -> Raw {
        let pem = std::fs::read(s.config.storage.data_dir.join("tls/cert.pem")).expect("certificate");
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem) {
            roots.add(cert.expect("pem")).expect("root certificate");
        }
        let config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
        let mut h2 = config.clone();
        h2.alpn_protocols = vec![b"h2".to_vec()];
        let port: u16 = s.base.rsplit(':').next().and_then(|p| p.trim_end_matches('/').parse().ok()).expect("port");
        let auth = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", user.user, user.password))
        );
        Raw {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            connector: TlsConnector::from(Arc::new(config)),
            h2_connector: TlsConnector::from(Arc::new(h2)),
            auth,
        }
    }

    async fn connect_with(&self, connector: &TlsConnector) -> std::io::Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(self.addr).await?;
        let name = ServerName::try_from("localhost").expect("server name");
        connector.connect(name, tcp).await
    }

    async fn connect(&self) -> TlsStream<TcpStream> {
        tokio::time::timeout(Duration::from_secs(10), self.connect_with(&self.connector))
            .await
            .expect("TLS connect in time")
            .expect("TLS connect")
    }

    /// Sends `request` on a fresh connection and reads the answer.
    async fn exchange(&self, request: &[u8], limit: Duration) -> Result<RawResp, String> {
        let mut tls = tokio::time::timeout(limit, self.connect_with(&self.connector))
            .await
            .map_err(|_| "TLS connect timed out".to_string())?
            .map_err(|e| format!("connect: {e}"))?;
        // The server may answer (and close) before it has read everything we send: that is allowed.
        let _ = tls.write_all(request).await;
        let _ = tls.flush().await;
        read_response(&mut tls, limit).await
    }
}

/// A request head (and body) with `Connection: close`; `auth` adds the test user's credentials.
fn request(method: &str, path: &[u8], headers: &[(&str, &[u8])], body: &[u8], auth: Option<&str>) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path);
    out.extend_from_slice(b" HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    if let Some(a) = auth {
        out.extend_from_slice(format!("Authorization: {a}\r\n").as_bytes());
    }
    let mut has_length = false;
    for (name, value) in headers {
        has_length |= name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("transfer-encoding");
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    if !has_length {
        out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

// ---------------------------------------------------------------------------------------------------------
// The malformed-request table.

#[derive(Debug, Clone, Copy)]
enum Expect {
    /// Any 4xx.
    Client,
    /// Exactly this status.
    Status(u16),
    /// This status with a `DAV:error` body naming this precondition.
    Condition(u16, &'static str),
}

struct Case {
    label: String,
    request: Vec<u8>,
    expect: Expect,
}

const NS: &str = r#"xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:carddav""#;
const XML: (&str, &[u8]) = ("Content-Type", b"application/xml; charset=utf-8");

const C_SUPPORTED_REPORT: &str = "{DAV:}supported-report";
const C_FINITE_DEPTH: &str = "{DAV:}propfind-finite-depth";
const C_VALID_ADDRESS_DATA: &str = "{urn:ietf:params:xml:ns:carddav}valid-address-data";
const C_SUPPORTED_ADDRESS_DATA: &str = "{urn:ietf:params:xml:ns:carddav}supported-address-data";
const C_MAX_RESOURCE_SIZE: &str = "{urn:ietf:params:xml:ns:carddav}max-resource-size";
const C_SUPPORTED_COLLATION: &str = "{urn:ietf:params:xml:ns:carddav}supported-collation";
const C_NO_UID_CONFLICT: &str = "{urn:ietf:params:xml:ns:carddav}no-uid-conflict";
const C_VALID_SYNC_TOKEN: &str = "{DAV:}valid-sync-token";

/// Real request bodies (shaped like Thunderbird's, Apple's and DAVx5's), truncated at every few bytes.
fn corpus() -> Vec<(&'static str, &'static str, String)> {
    vec![
        (
            "PROPFIND",
            "1",
            r#"<?xml version="1.0" encoding="utf-8"?>
<d:propfind xmlns:d="DAV:" xmlns:cs="http://calendarserver.org/ns/" xmlns:c="urn:ietf:params:xml:ns:carddav">
  <d:prop>
    <d:resourcetype/>
    <d:displayname/>
    <cs:getctag/>
    <d:sync-token/>
    <d:current-user-privilege-set/>
    <c:supported-address-data/>
    <c:max-resource-size/>
    <d:getetag/>
  </d:prop>
</d:propfind>"#
                .to_string(),
        ),
        (
            "PROPPATCH",
            "0",
            r#"<?xml version="1.0" encoding="utf-8"?>
<d:propertyupdate xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:carddav" xmlns:h="urn:x-kartei:hostile">
  <d:set><d:prop><d:displayname>Pwned &amp; renamed</d:displayname><h:marker>changed</h:marker></d:prop></d:set>
  <d:set><d:prop><c:addressbook-description>overwritten</c:addressbook-description></d:prop></d:set>
  <d:remove><d:prop><h:other/></d:prop></d:remove>
</d:propertyupdate>"#
                .to_string(),
        ),
        (
            "REPORT",
            "1",
            format!(
                r#"<?xml version="1.0" encoding="utf-8"?>
<c:addressbook-multiget {NS}>
  <d:prop><d:getetag/><c:address-data content-type="text/vcard" version="4.0"/></d:prop>
  <d:href>/dav/addressbooks/alice/contacts/anna.vcf</d:href>
  <d:href>/dav/addressbooks/alice/contacts/bert.vcf</d:href>
</c:addressbook-multiget>"#
            ),
        ),
        (
            "REPORT",
            "1",
            format!(
                r#"<?xml version="1.0" encoding="utf-8"?>
<c:addressbook-query {NS}>
  <d:prop><d:getetag/><c:address-data><c:prop name="FN"/><c:prop name="EMAIL"/></c:address-data></d:prop>
  <c:filter test="anyof">
    <c:prop-filter name="FN"><c:text-match collation="i;unicode-casemap" match-type="contains">anna</c:text-match></c:prop-filter>
    <c:prop-filter name="EMAIL"><c:param-filter name="TYPE"><c:text-match match-type="equals">work</c:text-match></c:param-filter></c:prop-filter>
  </c:filter>
  <c:limit><c:nresults>10</c:nresults></c:limit>
</c:addressbook-query>"#
            ),
        ),
        (
            "REPORT",
            "0",
            r#"<?xml version="1.0" encoding="utf-8"?>
<d:sync-collection xmlns:d="DAV:">
  <d:sync-token/>
  <d:sync-level>1</d:sync-level>
  <d:limit><d:nresults>5</d:nresults></d:limit>
  <d:prop><d:getetag/><d:getcontenttype/></d:prop>
</d:sync-collection>"#
                .to_string(),
        ),
    ]
}

/// A small deterministic generator (xorshift) for the binary-garbage cases.
fn garbage(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

struct Table {
    auth: String,
    book: String,
    card: String,
    cases: Vec<Case>,
}

impl Table {
    fn push(&mut self, label: impl Into<String>, request: Vec<u8>, expect: Expect) {
        self.cases.push(Case { label: label.into(), request, expect });
    }

    fn xml(&mut self, label: impl Into<String>, method: &str, path: &str, depth: &str, body: &[u8], expect: Expect) {
        let req = request(method, path.as_bytes(), &[XML, ("Depth", depth.as_bytes())], body, Some(&self.auth));
        self.push(label, req, expect);
    }

    fn put(&mut self, label: impl Into<String>, name: &str, headers: &[(&str, &[u8])], body: &[u8], expect: Expect) {
        let path = format!("{}{name}", self.book);
        let mut h: Vec<(&str, &[u8])> = vec![("Content-Type", b"text/vcard; charset=utf-8")];
        h.extend_from_slice(headers);
        let req = request("PUT", path.as_bytes(), &h, body, Some(&self.auth));
        self.push(label, req, expect);
    }
}

fn build_table(auth: &str, alice_password: &str) -> Vec<Case> {
    let book = "/dav/addressbooks/alice/contacts/".to_string();
    let mut t = Table { auth: auth.to_string(), card: format!("{book}anna.vcf"), book, cases: Vec::new() };
    let book = t.book.clone();
    let card = t.card.clone();

    // Truncated XML: every real body cut at every 11th byte (never empty: an empty PROPFIND is allprop).
    for (method, depth, body) in corpus() {
        let bytes = body.as_bytes();
        for cut in (1..bytes.len()).step_by(11) {
            if bytes[..cut].iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let label = format!("{method} body truncated at {cut}/{}", bytes.len());
            t.xml(label, method, &book, depth, &bytes[..cut], Expect::Status(400));
        }
        // The same body with a byte flipped into invalid UTF-8, and with garbage after the root element.
        let mut flipped = bytes.to_vec();
        let mid = flipped.len() / 2;
        flipped[mid] = 0xff;
        t.xml(format!("{method} body with invalid UTF-8"), method, &book, depth, &flipped, Expect::Status(400));
        let trailing = format!("{body}<d:extra xmlns:d=\"DAV:\"/>");
        t.xml(
            format!("{method} body with a second root"),
            method,
            &book,
            depth,
            trailing.as_bytes(),
            Expect::Status(400),
        );
    }

    // Wrong namespaces.
    let wrong_ns: &[(&str, &str, Expect)] = &[
        ("PROPFIND", r#"<propfind xmlns="urn:wrong"><prop><getetag/></prop></propfind>"#, Expect::Status(400)),
        ("PROPFIND", r#"<propfind><prop><getetag/></prop></propfind>"#, Expect::Status(400)),
        ("PROPFIND", r#"<d:propfind xmlns:d="dav:"><d:prop><d:getetag/></d:prop></d:propfind>"#, Expect::Status(400)),
        (
            "PROPFIND",
            r#"<d:propfind xmlns:d="DAV:"><x:prop xmlns:x="urn:x"><d:getetag/></x:prop></d:propfind>"#,
            Expect::Status(400),
        ),
        ("PROPFIND", r#"<d:propfind xmlns:d="DAV:"><q:prop><d:getetag/></q:prop></d:propfind>"#, Expect::Status(400)),
        ("PROPFIND", r#"<D:propfind xmlns:d="DAV:"><d:allprop/></D:propfind>"#, Expect::Status(400)),
        (
            "PROPPATCH",
            r#"<d:propertyupdate xmlns:d="urn:wrong"><d:set><d:prop><d:displayname>x</d:displayname></d:prop></d:set></d:propertyupdate>"#,
            Expect::Status(400),
        ),
        (
            "PROPPATCH",
            r#"<d:propertyupdate xmlns:d="DAV:"><x:set xmlns:x="urn:x"><d:prop><d:displayname>x</d:displayname></d:prop></x:set></d:propertyupdate>"#,
            Expect::Status(400),
        ),
        (
            "PROPPATCH",
            r#"<d:propertyupdate xmlns:d="DAV:"><d:set><x:prop xmlns:x="urn:x"><d:displayname>x</d:displayname></x:prop></d:set></d:propertyupdate>"#,
            Expect::Status(400),
        ),
        ("PROPPATCH", r#"<d:propfind xmlns:d="DAV:"><d:allprop/></d:propfind>"#, Expect::Status(400)),
        (
            "REPORT",
            r#"<d:addressbook-multiget xmlns:d="DAV:"><d:href>/x</d:href></d:addressbook-multiget>"#,
            Expect::Condition(403, C_SUPPORTED_REPORT),
        ),
        (
            "REPORT",
            r#"<c:sync-collection xmlns:c="urn:ietf:params:xml:ns:carddav"><c:sync-token/></c:sync-collection>"#,
            Expect::Condition(403, C_SUPPORTED_REPORT),
        ),
        (
            "REPORT",
            r#"<c:addressbook-query xmlns:c="urn:ietf:params:xml:ns:caldav"/>"#,
            Expect::Condition(403, C_SUPPORTED_REPORT),
        ),
        ("REPORT", r#"<addressbook-query xmlns="urn:ietf:params:xml:ns:carddav "/>"#, Expect::Status(400)),
        (
            "REPORT",
            r#"<c:addressbook-query xmlns:c="urn:ietf:params:xml:ns:carddav"><c:filter><c:prop-filter name="FN"><c:text-match>a</c:text-match></c:prop-filter></c:filter><x:limit xmlns:x="urn:x"/></c:addressbook-query>"#,
            Expect::Status(207),
        ),
    ];
    for (i, (method, body, expect)) in wrong_ns.iter().enumerate() {
        // The last one is a control: foreign elements are ignored, not an error.
        if matches!(expect, Expect::Status(207)) {
            continue;
        }
        t.xml(format!("wrong namespace #{i} ({method})"), method, &book, "0", body.as_bytes(), *expect);
    }

    // Reports we do not implement.
    for (ns, name) in [
        ("urn:ietf:params:xml:ns:caldav", "calendar-query"),
        ("urn:ietf:params:xml:ns:caldav", "calendar-multiget"),
        ("urn:ietf:params:xml:ns:caldav", "free-busy-query"),
        ("DAV:", "acl-principal-prop-set"),
        ("DAV:", "principal-match"),
        ("DAV:", "version-tree"),
        ("urn:x", "frob"),
        ("", "addressbook-query"),
        ("urn:ietf:params:xml:ns:carddav", "addressbook-sync"),
    ] {
        let body = format!(r#"<r:{name} xmlns:r="{ns}"><d:prop xmlns:d="DAV:"><d:getetag/></d:prop></r:{name}>"#);
        let body = if ns.is_empty() { format!("<{name}/>") } else { body };
        t.xml(
            format!("unknown report {{{ns}}}{name}"),
            "REPORT",
            &book,
            "1",
            body.as_bytes(),
            Expect::Condition(403, C_SUPPORTED_REPORT),
        );
    }

    // Bad Depth values.
    let propfind = br#"<d:propfind xmlns:d="DAV:"><d:prop><d:getetag/></d:prop></d:propfind>"#;
    for depth in ["2", "-1", "one", "", "0,1", "1 1", "infinite", "0x1", "01a", "\t"] {
        t.xml(format!("PROPFIND Depth {depth:?}"), "PROPFIND", &book, depth, propfind, Expect::Status(400));
    }
    t.xml("PROPFIND Depth infinity", "PROPFIND", &book, "infinity", propfind, Expect::Condition(403, C_FINITE_DEPTH));
    t.xml("PROPFIND Depth Infinity", "PROPFIND", &book, "Infinity", propfind, Expect::Condition(403, C_FINITE_DEPTH));

    // Bad nresults, in sync-collection (DAV:) and addressbook-query (CARD:).
    for n in [
        "-1",
        "0",
        "abc",
        "",
        "1.5",
        "1e3",
        "18446744073709551616",
        "99999999999999999999999999",
        "0x10",
        "- 3",
        "５",
        "１０",
    ] {
        let sync = format!(
            r#"<d:sync-collection xmlns:d="DAV:"><d:sync-token/><d:sync-level>1</d:sync-level><d:limit><d:nresults>{n}</d:nresults></d:limit><d:prop><d:getetag/></d:prop></d:sync-collection>"#
        );
        t.xml(format!("sync-collection nresults {n:?}"), "REPORT", &book, "0", sync.as_bytes(), Expect::Status(400));
        let query = format!(
            r#"<c:addressbook-query {NS}><d:prop><d:getetag/></d:prop><c:limit><c:nresults>{n}</c:nresults></c:limit></c:addressbook-query>"#
        );
        t.xml(format!("addressbook-query nresults {n:?}"), "REPORT", &book, "1", query.as_bytes(), Expect::Status(400));
    }
    let no_nresults = format!(r#"<c:addressbook-query {NS}><c:limit/></c:addressbook-query>"#);
    t.xml("limit without nresults", "REPORT", &book, "1", no_nresults.as_bytes(), Expect::Status(400));
    for level in ["2", "0", "all", ""] {
        let body = format!(
            r#"<d:sync-collection xmlns:d="DAV:"><d:sync-token/><d:sync-level>{level}</d:sync-level><d:prop/></d:sync-collection>"#
        );
        t.xml(format!("sync-level {level:?}"), "REPORT", &book, "0", body.as_bytes(), Expect::Status(400));
    }

    // Sync tokens that are not ours or not valid for this book.
    for token in [
        "garbage",
        "http://kartei.invalid/ns/sync/",
        "http://kartei.invalid/ns/sync/x/1",
        "http://kartei.invalid/ns/sync/999999/1",
        "http://kartei.invalid/ns/sync/1/99999999",
        "http://kartei.invalid/ns/sync/1/-5",
        "http://kartei.invalid/ns/sync/1/99999999999999999999999",
        "data:,1",
    ] {
        let body = format!(
            r#"<d:sync-collection xmlns:d="DAV:"><d:sync-token>{token}</d:sync-token><d:sync-level>1</d:sync-level><d:prop><d:getetag/></d:prop></d:sync-collection>"#
        );
        t.xml(
            format!("sync-token {token:?}"),
            "REPORT",
            &book,
            "0",
            body.as_bytes(),
            Expect::Condition(403, C_VALID_SYNC_TOKEN),
        );
    }

    // Filters and address-data the server must refuse.
    let filters: &[(&str, Expect)] = &[
        (r#"<c:filter test="maybe"/>"#, Expect::Status(400)),
        (r#"<c:filter><c:prop-filter name="FN" test="xor"/></c:filter>"#, Expect::Status(400)),
        (r#"<c:filter><c:prop-filter><c:text-match>a</c:text-match></c:prop-filter></c:filter>"#, Expect::Status(400)),
        (r#"<c:filter><c:prop-filter name="  "/></c:filter>"#, Expect::Status(400)),
        (
            r#"<c:filter><c:prop-filter name="FN"><c:text-match match-type="regex">.*</c:text-match></c:prop-filter></c:filter>"#,
            Expect::Status(400),
        ),
        (
            r#"<c:filter><c:prop-filter name="FN"><c:text-match negate-condition="perhaps">a</c:text-match></c:prop-filter></c:filter>"#,
            Expect::Status(400),
        ),
        (
            r#"<c:filter><c:prop-filter name="FN"><c:param-filter><c:is-not-defined/></c:param-filter></c:prop-filter></c:filter>"#,
            Expect::Status(400),
        ),
        (
            r#"<c:filter><c:prop-filter name="FN"><c:text-match collation="i;klingon">a</c:text-match></c:prop-filter></c:filter>"#,
            Expect::Condition(403, C_SUPPORTED_COLLATION),
        ),
        (
            r#"<c:filter><c:prop-filter name="FN"><c:param-filter name="TYPE"><c:text-match collation="i;basic">a</c:text-match></c:param-filter></c:prop-filter></c:filter>"#,
            Expect::Condition(403, C_SUPPORTED_COLLATION),
        ),
    ];
    for (i, (filter, expect)) in filters.iter().enumerate() {
        let body = format!(r#"<c:addressbook-query {NS}><d:prop><d:getetag/></d:prop>{filter}</c:addressbook-query>"#);
        t.xml(format!("bad filter #{i}"), "REPORT", &book, "1", body.as_bytes(), *expect);
    }
    let many_terms = r#"<c:prop-filter name="FN"><c:text-match>a</c:text-match></c:prop-filter>"#.repeat(40);
    let body = format!(r#"<c:addressbook-query {NS}><c:filter>{many_terms}</c:filter></c:addressbook-query>"#);
    t.xml("filter with 80 terms", "REPORT", &book, "1", body.as_bytes(), Expect::Status(400));
    for (label, ad) in [
        ("address-data application/json", r#"<c:address-data content-type="application/json"/>"#),
        ("address-data version 2.1", r#"<c:address-data version="2.1"/>"#),
        ("address-data version 4", r#"<c:address-data content-type="text/vcard" version="4"/>"#),
    ] {
        let body = format!(
            r#"<c:addressbook-multiget {NS}><d:prop>{ad}</d:prop><d:href>{card}</d:href></c:addressbook-multiget>"#
        );
        t.xml(
            format!("multiget {label}"),
            "REPORT",
            &book,
            "1",
            body.as_bytes(),
            Expect::Condition(403, C_SUPPORTED_ADDRESS_DATA),
        );
        let body = format!(
            r#"<d:propfind xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:carddav"><d:prop>{ad}</d:prop></d:propfind>"#
        );
        t.xml(
            format!("PROPFIND {label}"),
            "PROPFIND",
            &card,
            "0",
            body.as_bytes(),
            Expect::Condition(403, C_SUPPORTED_ADDRESS_DATA),
        );
    }

    // DOCTYPEs, entity bombs and external entities: always 400, for every XML method.
    let doctype_bodies: &[(&str, &str)] = &[
        (
            "billion laughs",
            r#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;"><!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;"><!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">]><d:propfind xmlns:d="DAV:"><d:prop><d:displayname>&lol4;</d:displayname></d:prop></d:propfind>"#,
        ),
        (
            "external entity",
            r#"<?xml version="1.0"?><!DOCTYPE d [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><d:propfind xmlns:d="DAV:"><d:prop><d:displayname>&xxe;</d:displayname></d:prop></d:propfind>"#,
        ),
        (
            "parameter entity",
            r#"<?xml version="1.0"?><!DOCTYPE d [<!ENTITY % remote SYSTEM "http://127.0.0.1:9/evil.dtd"> %remote;]><d:propfind xmlns:d="DAV:"><d:allprop/></d:propfind>"#,
        ),
        (
            "external DTD",
            r#"<?xml version="1.0"?><!DOCTYPE d:propfind PUBLIC "-//evil//DTD" "http://127.0.0.1:9/x.dtd"><d:propfind xmlns:d="DAV:"><d:allprop/></d:propfind>"#,
        ),
        ("bare DOCTYPE", r#"<!DOCTYPE propfind><d:propfind xmlns:d="DAV:"><d:allprop/></d:propfind>"#),
        (
            "undeclared entity",
            r#"<d:propfind xmlns:d="DAV:"><d:prop><d:displayname>&xxe;</d:displayname></d:prop></d:propfind>"#,
        ),
        (
            "invalid character reference",
            r#"<d:propfind xmlns:d="DAV:"><d:prop><d:displayname>&#0;</d:displayname></d:prop></d:propfind>"#,
        ),
        (
            "surrogate character reference",
            r#"<d:propfind xmlns:d="DAV:"><d:prop><d:displayname>&#xD800;</d:displayname></d:prop></d:propfind>"#,
        ),
        (
            "control character reference",
            r#"<d:propfind xmlns:d="DAV:"><d:prop><d:displayname>&#1;</d:displayname></d:prop></d:propfind>"#,
        ),
        (
            "noncharacter reference",
            r#"<d:propfind xmlns:d="DAV:"><d:prop><d:displayname>&#xFFFE;</d:displayname></d:prop></d:propfind>"#,
        ),
        (
            "raw control character",
            "<d:propfind xmlns:d=\"DAV:\"><d:prop><d:displayname>a\u{1b}b</d:displayname></d:prop></d:propfind>",
        ),
        (
            "control character in an attribute",
            "<d:propfind xmlns:d=\"DAV:\"><d:prop><d:displayname x=\"\u{8}\">a</d:displayname></d:prop></d:propfind>",
        ),
    ];
    for (label, body) in doctype_bodies {
        for (method, depth) in [("PROPFIND", "0"), ("PROPPATCH", "0"), ("REPORT", "1")] {
            t.xml(format!("{method} {label}"), method, &book, depth, body.as_bytes(), Expect::Status(400));
        }
    }

    // Nesting past the limit, too many elements, too many attributes.
    for depth in [65usize, 200, 10_000] {
        let body = format!(
            r#"<d:propfind xmlns:d="DAV:"><d:prop>{}{}</d:prop></d:propfind>"#,
            "<x>".repeat(depth),
            "</x>".repeat(depth)
        );
        t.xml(format!("nesting {depth} deep"), "PROPFIND", &book, "0", body.as_bytes(), Expect::Status(400));
        let body = format!(
            r#"<d:propertyupdate xmlns:d="DAV:"><d:set><d:prop>{}{}</d:prop></d:set></d:propertyupdate>"#,
            "<x>".repeat(depth),
            "</x>".repeat(depth)
        );
        t.xml(format!("PROPPATCH nesting {depth} deep"), "PROPPATCH", &book, "0", body.as_bytes(), Expect::Status(400));
    }
    let body = format!(r#"<d:propfind xmlns:d="DAV:"><d:prop>{}</d:prop></d:propfind>"#, "<x/>".repeat(100_001));
    t.xml("100001 elements", "PROPFIND", &book, "0", body.as_bytes(), Expect::Status(400));
    let attrs: String = (0..60_000).map(|i| format!(" a{i}=\"\"")).collect();
    let body = format!(r#"<d:propfind xmlns:d="DAV:"{attrs}><d:allprop/></d:propfind>"#);
    t.xml("60000 attributes on one element", "PROPFIND", &book, "0", body.as_bytes(), Expect::Status(400));
    let decls: String = (0..40_000).map(|i| format!(" xmlns:p{i}=\"u\"")).collect();
    let body = format!(r#"<d:propfind xmlns:d="DAV:"{decls}>{}</d:propfind>"#, "<d:allprop/>".repeat(5000));
    t.xml("40000 namespace declarations", "PROPFIND", &book, "0", body.as_bytes(), Expect::Status(400));
    let body = r#"<d:propfind xmlns:d="DAV:" a="1" a="2"><d:allprop/></d:propfind>"#;
    t.xml("duplicate attribute", "PROPFIND", &book, "0", body.as_bytes(), Expect::Status(400));

    // XML bodies that are not XML at all.
    for (i, len) in [1usize, 7, 64, 1000, 40_000].into_iter().enumerate() {
        let junk = garbage(i as u64 + 1, len);
        t.xml(format!("PROPFIND binary garbage {len} bytes"), "PROPFIND", &book, "0", &junk, Expect::Status(400));
        t.xml(format!("REPORT binary garbage {len} bytes"), "REPORT", &book, "1", &junk, Expect::Status(400));
    }
    let json: (&str, &[u8]) = ("Content-Type", b"application/json");
    let req = request("PROPFIND", book.as_bytes(), &[json, ("Depth", b"0")], br#"{"propfind": "all"}"#, Some(auth));
    t.push("PROPFIND with a JSON body", req, Expect::Status(400));
    let req =
        request("REPORT", book.as_bytes(), &[("Content-Type", b"text/plain"), ("Depth", b"1")], b"hello", Some(auth));
    t.push("REPORT with a text body", req, Expect::Status(400));
    let req = request(
        "PROPPATCH",
        book.as_bytes(),
        &[("Content-Type", b"multipart/form-data; boundary=x")],
        b"--x\r\n\r\n--x--",
        Some(auth),
    );
    t.push("PROPPATCH with a multipart body", req, Expect::Status(400));
    let utf16: Vec<u8> =
        "<d:propfind xmlns:d=\"DAV:\"><d:allprop/></d:propfind>".encode_utf16().flat_map(u16::to_le_bytes).collect();
    t.xml("PROPFIND in UTF-16 without BOM", "PROPFIND", &book, "0", &utf16, Expect::Status(400));
    t.xml("PROPPATCH with an empty body", "PROPPATCH", &book, "0", b"", Expect::Status(400));
    t.xml("REPORT with an empty body", "REPORT", &book, "1", b"", Expect::Status(400));
    t.xml("REPORT with only whitespace", "REPORT", &book, "1", b"  \r\n ", Expect::Status(400));

    // vCards that are not one valid card.
    let good = vcard("new-uid", "New Person", "");
    let no = |line: &str| good.replace(line, "");
    let invalid =
        |status| Expect::Condition(status, if status == 415 { C_SUPPORTED_ADDRESS_DATA } else { C_VALID_ADDRESS_DATA });
    let cards: Vec<(&str, Vec<u8>, Expect)> = vec![
        ("vCard without UID", no("UID:new-uid\r\n").into_bytes(), invalid(400)),
        ("vCard with an empty UID", good.replace("UID:new-uid", "UID:").into_bytes(), invalid(400)),
        ("vCard with a blank UID", good.replace("UID:new-uid", "UID:   ").into_bytes(), invalid(400)),
        ("vCard without FN", no("FN:New Person\r\n").into_bytes(), invalid(400)),
        ("vCard without END", no("END:VCARD\r\n").into_bytes(), invalid(400)),
        ("vCard without BEGIN", no("BEGIN:VCARD\r\n").into_bytes(), invalid(415)),
        ("vCard without VERSION", no("VERSION:3.0\r\n").into_bytes(), invalid(400)),
        ("vCard 2.1", good.replace("VERSION:3.0", "VERSION:2.1").into_bytes(), invalid(415)),
        ("two vCards", format!("{good}{}", vcard("other-uid", "Other", "")).into_bytes(), invalid(400)),
        ("vCard then garbage", format!("{good}trailing garbage\r\n").into_bytes(), Expect::Client),
        ("only BEGIN and END", b"BEGIN:VCARD\r\nEND:VCARD\r\n".to_vec(), invalid(400)),
        ("empty body", Vec::new(), invalid(415)),
        ("iCalendar", b"BEGIN:VCALENDAR\r\nVERSION:2.0\r\nEND:VCALENDAR\r\n".to_vec(), invalid(415)),
        (
            "vCard with invalid UTF-8",
            {
                let mut bytes = good.clone().into_bytes();
                bytes.insert(45, 0xc0);
                bytes
            },
            invalid(415),
        ),
        (
            "vCard in Latin-1",
            good.replace("New Person", "J\u{fc}rgen").chars().map(|c| c as u32 as u8).collect(),
            invalid(415),
        ),
        (
            "vCard in UTF-16",
            "\u{feff}"
                .chars()
                .chain(good.chars())
                .collect::<String>()
                .encode_utf16()
                .flat_map(u16::to_le_bytes)
                .collect(),
            invalid(415),
        ),
        ("JSON body", br#"{"uid": "x", "fn": "y"}"#.to_vec(), invalid(415)),
        (
            "vCard with a 300 KB line",
            good.replace("FN:New Person", &format!("FN:{}", "x".repeat(300_000))).into_bytes(),
            Expect::Condition(403, C_MAX_RESOURCE_SIZE),
        ),
        (
            "same UID as anna.vcf",
            vcard("anna", "Anna Again", "").into_bytes(),
            Expect::Condition(409, C_NO_UID_CONFLICT),
        ),
    ];
    for (i, (label, body, expect)) in cards.into_iter().enumerate() {
        t.put(format!("PUT {label}"), &format!("new-{i}.vcf"), &[], &body, expect);
    }
    for (i, len) in [1usize, 3, 100, 5000, 100_000].into_iter().enumerate() {
        t.put(
            format!("PUT binary garbage {len} bytes"),
            &format!("junk-{i}.vcf"),
            &[],
            &garbage(100 + i as u64, len),
            invalid(415),
        );
    }
    let mut binary_card = good.clone().into_bytes();
    binary_card.splice(40..40, garbage(7, 64));
    t.put("PUT vCard with binary garbage inside", "bin.vcf", &[], &binary_card, Expect::Client);
    let json: (&str, &[u8]) = ("Content-Type", b"application/json");
    let req = request("PUT", format!("{book}json.vcf").as_bytes(), &[json], br#"{"fn": "x"}"#, Some(auth));
    t.push("PUT JSON as application/json", req, invalid(415));

    // Preconditions on existing cards: the card must stay as it is.
    let update = vcard("anna", "Anna Overwritten", "").into_bytes();
    for (label, name, value, expect) in [
        ("If-Match wrong tag", "If-Match", &b"\"0000\""[..], Expect::Status(412)),
        ("If-Match weak tag", "If-Match", b"W/\"0000\"", Expect::Status(412)),
        ("If-Match empty list", "If-Match", b",, ,", Expect::Status(400)),
        ("If-Match unquoted garbage", "If-Match", b"garbage", Expect::Status(412)),
        ("If-None-Match * on an existing card", "If-None-Match", b"*", Expect::Status(412)),
        ("If with a wrong tag", "If", b"([\"0000\"])", Expect::Status(412)),
        ("If with a state token", "If", b"(<DAV:no-lock>)", Expect::Status(412)),
        ("If with a list left open", "If", b"([\"0000\"]", Expect::Status(400)),
        ("If with mixed tagged and untagged lists", "If", b"(Not <DAV:no-lock>) </x> ([\"0\"])", Expect::Status(400)),
        ("If-Unmodified-Since long ago", "If-Unmodified-Since", b"Mon, 01 Jan 2001 00:00:00 GMT", Expect::Status(412)),
    ] {
        t.put(format!("PUT {label}"), "anna.vcf", &[(name, value)], &update, expect);
        let req = request("DELETE", card.as_bytes(), &[(name, value)], b"", Some(auth));
        t.push(format!("DELETE {label}"), req, expect);
    }

    // Paths: dot segments, bad escapes, NUL, overlong UTF-8, other people's things.
    let paths: &[&[u8]] = &[
        b"/dav/addressbooks/alice/../bob/contacts/",
        b"/dav/addressbooks/alice/contacts/../../bob/contacts/",
        b"/dav/addressbooks/alice/%2e%2e/bob/contacts/",
        b"/dav/addressbooks/alice/%2E%2E/bob/contacts/",
        b"/dav/addressbooks/alice/./contacts/",
        b"/dav/addressbooks/alice/contacts/..%2f..%2fbob%2fcontacts",
        b"/dav/addressbooks/alice/contacts/%00.vcf",
        b"/dav/addressbooks/alice/contacts/a\x00b.vcf",
        b"/dav/addressbooks/alice/contacts/%c0%ae%c0%ae/",
        b"/dav/addressbooks/alice/contacts/%e0%80%ae.vcf",
        b"/dav/addressbooks/alice/contacts/%f0%80%80%af.vcf",
        b"/dav/addressbooks/alice/contacts/%ed%a0%80.vcf",
        b"/dav/addressbooks/alice/contacts/%ff.vcf",
        b"/dav/addressbooks/alice/contacts/\xff.vcf",
        b"/dav/addressbooks/alice/contacts/a%2fb.vcf",
        b"/dav/addressbooks/alice/contacts/a%5cb.vcf",
        b"/dav/addressbooks/alice/contacts/a\\b.vcf",
        b"/dav/addressbooks/alice/contacts/%",
        b"/dav/addressbooks/alice/contacts/%4",
        b"/dav/addressbooks/alice/contacts/%zz.vcf",
        b"/dav/addressbooks/alice/contacts/a b.vcf",
        b"//dav//addressbooks//bob//contacts//",
        b"/dav/addressbooks/bob/contacts/",
        b"/dav/addressbooks/bob/contacts/bob.vcf",
        b"/dav/addressbooks/bob/",
        b"/dav/principals/bob/",
        b"/dav/addressbooks/alice/nosuchbook/",
        b"/dav/addressbooks/alice/contacts/nosuchcard.vcf",
        b"/dav/addressbooks/alice/contacts/anna.vcf/deeper",
        b"/nowhere",
        b"/admin/v1/users",
        b"dav/addressbooks/alice/contacts/",
        b"*",
        b"https://localhost/dav/../admin/v1/users",
        b"/dav/addressbooks/alice/contacts/%00%00%00%00%00%00",
        b"/dav/addressbooks/\xe2\x80\xae/contacts/",
    ];
    for path in paths {
        let label = String::from_utf8_lossy(path).escape_debug().to_string();
        let req = request("PROPFIND", path, &[XML, ("Depth", b"0")], propfind, Some(auth));
        t.push(format!("PROPFIND path {label}"), req, Expect::Client);
        if !path.ends_with(b"nosuchcard.vcf") {
            let card = vcard("path-uid", "Path", "");
            let req = request("PUT", path, &[("Content-Type", b"text/vcard")], card.as_bytes(), Some(auth));
            t.push(format!("PUT path {label}"), req, Expect::Client);
        }
    }
    let long = format!("/dav/addressbooks/alice/contacts/{}.vcf", "a".repeat(100_000));
    t.push("GET a 100 KB path", request("GET", long.as_bytes(), &[], b"", Some(auth)), Expect::Client);

    // Authorization headers that are not valid credentials (the throttle is off for this server).
    let b64 = |s: &[u8]| base64::engine::general_purpose::STANDARD.encode(s);
    let auths: Vec<(String, Vec<u8>)> = vec![
        ("Basic without credentials".into(), b"Basic".to_vec()),
        ("Basic and a space".into(), b"Basic ".to_vec()),
        ("not base64".into(), b"Basic !!!!".to_vec()),
        ("base64 with a space inside".into(), {
            let mut v = b64(format!("alice:{alice_password}").as_bytes());
            v.insert(8, ' ');
            format!("Basic {v}").into_bytes()
        }),
        ("no colon".into(), format!("Basic {}", b64(b"alice")).into_bytes()),
        ("empty user".into(), format!("Basic {}", b64(format!(":{alice_password}").as_bytes())).into_bytes()),
        ("wrong password".into(), format!("Basic {}", b64(b"alice:wrong")).into_bytes()),
        (
            "someone else's login".into(),
            format!("Basic {}", b64(format!("bob:{alice_password}").as_bytes())).into_bytes(),
        ),
        (
            "scoped to a missing book".into(),
            format!("Basic {}", b64(format!("alice+nosuchbook:{alice_password}").as_bytes())).into_bytes(),
        ),
        (
            "NUL in the user".into(),
            format!("Basic {}", b64(format!("alice\0:{alice_password}").as_bytes())).into_bytes(),
        ),
        ("invalid UTF-8 credentials".into(), format!("Basic {}", b64(b"\xff\xfe:\xfd")).into_bytes()),
        ("raw non-ASCII".into(), "Basic \u{e9}\u{e9}\u{e9}".as_bytes().to_vec()),
        ("Bearer".into(), b"Bearer kartei_admin_nope".to_vec()),
        ("Digest".into(), b"Digest username=\"alice\", realm=\"kartei\", nonce=\"x\", response=\"y\"".to_vec()),
        ("huge".into(), format!("Basic {}", "QUFB".repeat(12_000)).into_bytes()),
        (
            "huge password".into(),
            format!("Basic {}", b64(format!("alice:{}", "p".repeat(30_000)).as_bytes())).into_bytes(),
        ),
    ];
    for (label, value) in auths {
        let req =
            request("PROPFIND", book.as_bytes(), &[XML, ("Depth", b"0"), ("Authorization", &value)], propfind, None);
        t.push(format!("Authorization: {label}"), req, Expect::Client);
    }
    let req = request("PROPFIND", book.as_bytes(), &[XML, ("Depth", b"0")], propfind, None);
    t.push("no Authorization", req, Expect::Status(401));

    // Destination headers for COPY and MOVE of anna.vcf (Overwrite: F onto bert.vcf is a 412).
    let destinations: Vec<(&str, Option<&[u8]>, Expect)> = vec![
        ("missing", None, Expect::Status(400)),
        ("empty", Some(b""), Expect::Client),
        ("dot segments", Some(b"/dav/addressbooks/alice/contacts/../x.vcf"), Expect::Status(400)),
        ("NUL", Some(b"/dav/addressbooks/alice/contacts/%00x.vcf"), Expect::Status(400)),
        ("overlong UTF-8", Some(b"/dav/addressbooks/alice/contacts/%c0%ae"), Expect::Status(400)),
        ("non-ASCII bytes", Some(b"/dav/addressbooks/alice/contacts/\xff.vcf"), Expect::Client),
        ("a book", Some(b"/dav/addressbooks/alice/contacts/"), Expect::Client),
        ("another user's book", Some(b"/dav/addressbooks/bob/contacts/stolen.vcf"), Expect::Client),
        ("itself", Some(b"/dav/addressbooks/alice/contacts/anna.vcf"), Expect::Client),
        ("a principal", Some(b"/dav/principals/alice/"), Expect::Client),
        ("the root", Some(b"https://localhost/"), Expect::Client),
        ("a URL without a path", Some(b"https://evil.example"), Expect::Status(400)),
        ("a missing book", Some(b"/dav/addressbooks/alice/nosuchbook/x.vcf"), Expect::Client),
        ("an existing card with Overwrite: F", Some(b"/dav/addressbooks/alice/contacts/bert.vcf"), Expect::Status(412)),
    ];
    for method in ["COPY", "MOVE"] {
        for (label, dest, expect) in &destinations {
            let mut headers: Vec<(&str, &[u8])> = vec![("Overwrite", b"F")];
            if let Some(d) = dest {
                headers.push(("Destination", d));
            }
            let req = request(method, card.as_bytes(), &headers, b"", Some(auth));
            t.push(format!("{method} Destination {label}"), req, *expect);
        }
        let req =
            request(method, book.as_bytes(), &[("Destination", b"/dav/addressbooks/alice/other/")], b"", Some(auth));
        // Books are never copied: no privilege is missing, so no need-privileges.
        t.push(format!("{method} of a book"), req, Expect::Status(403));
    }

    // Broken HTTP framing, headers and methods.
    let a = format!("Authorization: {auth}\r\n");
    let framing: Vec<(&str, Vec<u8>)> = vec![
        ("garbage request line", b"GARBAGE\r\n\r\n".to_vec()),
        ("binary garbage instead of a request", [garbage(99, 300), b"\r\n\r\n".to_vec()].concat()),
        ("HTTP/9.9", format!("PROPFIND {book} HTTP/9.9\r\nHost: localhost\r\n{a}\r\n").into_bytes()),
        ("header without a colon", format!("PROPFIND {book} HTTP/1.1\r\nHost: localhost\r\nNoColonHere\r\n{a}\r\n").into_bytes()),
        ("header name with a space", format!("PROPFIND {book} HTTP/1.1\r\nHost: localhost\r\nBad Name: x\r\n{a}\r\n").into_bytes()),
        ("NUL in a header value", format!("PROPFIND {book} HTTP/1.1\r\nHost: localhost\r\nDepth: 0\0\r\n{a}\r\n").into_bytes()),
        ("non-numeric Content-Length", format!("PROPFIND {book} HTTP/1.1\r\nHost: localhost\r\n{a}Content-Length: ten\r\n\r\n").into_bytes()),
        ("negative Content-Length", format!("PROPFIND {book} HTTP/1.1\r\nHost: localhost\r\n{a}Content-Length: -5\r\n\r\n").into_bytes()),
        ("two different Content-Lengths", format!("PROPFIND {book} HTTP/1.1\r\nHost: localhost\r\n{a}Content-Length: 1\r\nContent-Length: 2\r\n\r\nab").into_bytes()),
        ("Content-Length and chunked", format!("PUT {card} HTTP/1.1\r\nHost: localhost\r\n{a}Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n").into_bytes()),
        ("bad chunk size", format!("PUT {card} HTTP/1.1\r\nHost: localhost\r\n{a}Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n").into_bytes()),
        ("unknown transfer coding", format!("PUT {card} HTTP/1.1\r\nHost: localhost\r\n{a}Transfer-Encoding: gzip\r\n\r\nabc").into_bytes()),
        ("200 headers", format!("PROPFIND {book} HTTP/1.1\r\nHost: localhost\r\n{a}{}\r\n", (0..200).map(|i| format!("X-H{i}: v\r\n")).collect::<String>()).into_bytes()),
        ("obsolete line folding", format!("PROPFIND {book} HTTP/1.1\r\nHost: localhost\r\n{a}Depth: 0\r\n 1\r\n\r\n").into_bytes()),
    ];
    for (label, bytes) in framing {
        t.push(format!("framing: {label}"), bytes, Expect::Client);
    }
    for method in ["LOCK", "UNLOCK", "TRACE", "CONNECT", "ACL", "SEARCH", "BIND", "X-NONSENSE-METHOD-NAME"] {
        let req = request(method, card.as_bytes(), &[], b"", Some(auth));
        t.push(format!("method {method}"), req, Expect::Client);
    }
    let mkcol_bodies: &[(&str, &[u8], Expect)] = &[
        ("garbage body", b"<<<>>>", Expect::Status(400)),
        ("wrong namespace", b"<m:mkcol xmlns:m=\"urn:x\"/>", Expect::Status(400)),
        ("truncated", b"<d:mkcol xmlns:d=\"DAV:\"><d:set><d:prop><d:resourcetype>", Expect::Status(400)),
    ];
    for (label, body, expect) in mkcol_bodies {
        let req = request("MKCOL", b"/dav/addressbooks/alice/newbook/", &[XML], body, Some(auth));
        t.push(format!("MKCOL {label}"), req, *expect);
    }
    let req = request("MKCOL", b"/dav/addressbooks/bob/newbook/", &[], b"", Some(auth));
    t.push("MKCOL in another user's home", req, Expect::Client);
    let req = request("MKCOL", book.as_bytes(), &[], b"", Some(auth));
    t.push("MKCOL on an existing book", req, Expect::Client);
    t.cases
}

/// What must not change: every book's listing (ETags, sync token, CTag, names and dead properties).
async fn snapshot(users: &[&Dav]) -> Vec<String> {
    let body = r#"<d:propfind xmlns:d="DAV:" xmlns:cs="http://calendarserver.org/ns/" xmlns:c="urn:ietf:params:xml:ns:carddav" xmlns:h="urn:x-kartei:hostile"><d:prop><d:getetag/><d:sync-token/><cs:getctag/><d:displayname/><c:addressbook-description/><h:marker/><h:other/></d:prop></d:propfind>"#;
    let mut out = Vec::new();
    for u in users {
        let home = u.propfind(&u.home(), "1", body).await.multistatus();
        for r in &home.responses {
            out.push(format!("{} {:?}", r.href, r.propstats));
            if r.href != u.home() {
                let book = u.propfind(&r.href, "1", body).await.multistatus();
                for c in &book.responses {
                    out.push(format!("{} {:?}", c.href, c.propstats));
                }
            }
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn malformed_requests_get_4xx_and_change_nothing() {
    let s = TestServer::start_with(|c| {
        c.auth.throttle_failures = 1_000_000;
        c.limits.max_resource_size = 256 * 1024;
    })
    .await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    alice.put_card("anna.vcf", "anna", "Anna Müller", "EMAIL;TYPE=WORK:anna@firma.de\r\n").await;
    alice.put_card("bert.vcf", "bert", "Bert Bauer", "TEL:+49 30 1\r\n").await;
    bob.put_card("bob.vcf", "bob-card", "Bob Private", "").await;
    let set_marker = r#"<d:propertyupdate xmlns:d="DAV:" xmlns:h="urn:x-kartei:hostile"><d:set><d:prop><h:marker>original</h:marker></d:prop></d:set></d:propertyupdate>"#;
    let r = alice.send("PROPPATCH", &alice.book(), &[("content-type", "application/xml")], set_marker).await;
    assert_eq!(r.status.as_u16(), 207, "{}", r.text());
    let before = snapshot(&[&alice, &bob]).await;

    let raw = Raw::new(&s, &alice);
    let mut cases = build_table(&raw.auth, &alice.password);
    // Generated cases may coincide (a truncation that equals a hand-written body): each request counts once.
    let mut seen = std::collections::HashSet::new();
    cases.retain(|c| seen.insert(c.request.clone()));
    assert!(cases.len() >= 200, "only {} cases", cases.len());

    let started = Instant::now();
    let mut failures = Vec::new();
    for case in &cases {
        let t0 = Instant::now();
        let resp = match raw.exchange(&case.request, Duration::from_secs(15)).await {
            Ok(r) => r,
            Err(e) => {
                failures.push(format!("{}: {e}", case.label));
                continue;
            }
        };
        let took = t0.elapsed();
        if took > Duration::from_secs(5) {
            failures.push(format!("{}: took {took:?}", case.label));
        }
        let ok = match case.expect {
            Expect::Client => (400..500).contains(&resp.status),
            Expect::Status(s) => resp.status == s,
            Expect::Condition(s, condition) => {
                resp.status == s
                    && match resp.condition() {
                        Ok(c) if c == condition => true,
                        Ok(c) => {
                            failures.push(format!("{}: condition {c}, expected {condition}", case.label));
                            true
                        }
                        Err(e) => {
                            failures.push(format!("{}: {e}", case.label));
                            true
                        }
                    }
            }
        };
        if !ok {
            failures.push(format!(
                "{}: got {} ({:?}), expected {:?}: {}",
                case.label,
                resp.status,
                resp.header("content-type"),
                case.expect,
                resp.text()
            ));
        }
        // Whatever the status, an XML error body is a DAV:error.
        if resp.status >= 400
            && resp.header("content-type").is_some_and(|ct| ct.contains("xml"))
            && let Err(e) = resp.condition()
        {
            failures.push(format!("{}: {e}", case.label));
        }
    }
    let after = snapshot(&[&alice, &bob]).await;
    println!("hostile: {} malformed requests in {:?}, {} failures", cases.len(), started.elapsed(), failures.len());
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
    assert_eq!(before, after, "the store changed");
    // And the server still works.
    alice.put_card("after.vcf", "after", "After", "").await;
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------------------
// Limits, each configured small.

fn chunk(data: &[u8]) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

/// Sends a head announcing a chunked body, then streams chunks until the answer arrives.
async fn endless_chunked(raw: &Raw, head: Vec<u8>) -> (RawResp, usize) {
    let tls = raw.connect().await;
    let (mut rd, mut wr) = tokio::io::split(tls);
    wr.write_all(&head).await.expect("head");
    let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = sent.clone();
    let writer = tokio::spawn(async move {
        let piece = chunk(&[b'x'; 1024]);
        while wr.write_all(&piece).await.is_ok() && counter.load(std::sync::atomic::Ordering::SeqCst) < 1 << 26 {
            counter.fetch_add(1024, std::sync::atomic::Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    let resp = read_response(&mut rd, Duration::from_secs(15)).await.expect("an answer while still sending");
    writer.abort();
    (resp, sent.load(std::sync::atomic::Ordering::SeqCst))
}

#[tokio::test]
async fn body_limits_refuse_before_reading_the_body() {
    let s = TestServer::start_with(|c| {
        c.limits.max_xml_body = 4096;
        c.limits.max_resource_size = 2048;
    })
    .await;
    let alice = s.user("alice").await;
    let raw = Raw::new(&s, &alice);
    let book = alice.book();
    let auth = raw.auth.clone();

    // A Content-Length far past the limit, and no body at all: the answer comes without waiting for it.
    for (method, expect) in [("PROPFIND", 413), ("REPORT", 413), ("PROPPATCH", 413), ("MKCOL", 413)] {
        let path = if method == "MKCOL" { format!("{}big/", alice.home()) } else { book.clone() };
        let head = request(method, path.as_bytes(), &[XML, ("Content-Length", b"104857600")], b"", Some(&auth));
        let t0 = Instant::now();
        let r = raw.exchange(&head, Duration::from_secs(10)).await.expect("answered without the body");
        assert_eq!(r.status, expect, "{method}: {}", r.text());
        assert!(t0.elapsed() < Duration::from_secs(5));
    }
    let head =
        request("PUT", format!("{book}big.vcf").as_bytes(), &[("Content-Length", b"10485760")], b"", Some(&auth));
    let r = raw.exchange(&head, Duration::from_secs(10)).await.expect("answered without the body");
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.condition().expect("DAV:error"), C_MAX_RESOURCE_SIZE);

    // Chunked bodies that never end are cut off at the limit.
    let head = request("PROPFIND", book.as_bytes(), &[XML, ("Transfer-Encoding", b"chunked")], b"", Some(&auth));
    let (r, sent) = endless_chunked(&raw, head).await;
    assert_eq!(r.status, 413, "{}", r.text());
    println!("chunked PROPFIND refused after the client had written {sent} bytes");
    let head =
        request("PUT", format!("{book}big.vcf").as_bytes(), &[("Transfer-Encoding", b"chunked")], b"", Some(&auth));
    let (r, _) = endless_chunked(&raw, head).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.condition().expect("DAV:error"), C_MAX_RESOURCE_SIZE);

    // A card of exactly the limit is stored; one byte more is refused with CARD:max-resource-size.
    let base = vcard("sized", "Sized", "NOTE:\r\n");
    let exact = base.replace("NOTE:", &format!("NOTE:{}", "n".repeat(2048 - base.len())));
    assert_eq!(exact.len(), 2048);
    let r = alice.put(&format!("{book}exact.vcf"), &exact, &[]).await;
    assert_eq!(r.status.as_u16(), 201, "{}", r.text());
    let over = exact.replace("NOTE:n", "NOTE:nn").replace("UID:sized", "UID:sized2");
    let r = alice.put(&format!("{book}over.vcf"), &over, &[]).await;
    assert_eq!(r.status.as_u16(), 403, "{}", r.text());
    assert_eq!(r.error_condition(), C_MAX_RESOURCE_SIZE);
    // The limit is advertised.
    let r = alice
        .propfind(&book, "0", r#"<d:propfind xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:carddav"><d:prop><c:max-resource-size/></d:prop></d:propfind>"#)
        .await;
    assert_eq!(r.multistatus().get(&book).text(CARD, "max-resource-size").as_deref(), Some("2048"));
    // An XML body of exactly the limit is read; one byte more is refused.
    let filler = |n: usize| {
        let head = r#"<d:propfind xmlns:d="DAV:"><d:prop><d:getetag/></d:prop></d:propfind>"#;
        format!("{head}{}", " ".repeat(n - head.len()))
    };
    assert_eq!(alice.propfind(&book, "0", &filler(4096)).await.status.as_u16(), 207);
    assert_eq!(alice.propfind(&book, "0", &filler(4097)).await.status.as_u16(), 413);
    s.stop().await;
}

#[tokio::test]
async fn header_size_limit() {
    let s = TestServer::start_with(|c| c.limits.max_header_bytes = 8192).await;
    let alice = s.user("alice").await;
    let raw = Raw::new(&s, &alice);
    let book = alice.book();
    let small = "v".repeat(2000);
    let head =
        request("PROPFIND", book.as_bytes(), &[("Depth", b"0"), ("X-Padding", small.as_bytes())], b"", Some(&raw.auth));
    assert_eq!(raw.exchange(&head, Duration::from_secs(10)).await.expect("answer").status, 207);
    for size in [9000usize, 20_000, 200_000] {
        let big = "v".repeat(size);
        let head = request(
            "PROPFIND",
            book.as_bytes(),
            &[("Depth", b"0"), ("X-Padding", big.as_bytes())],
            b"",
            Some(&raw.auth),
        );
        let r = raw.exchange(&head, Duration::from_secs(10)).await.expect("answer");
        assert!(r.status == 431 || r.status == 400, "{size}-byte header: {}", r.status);
        let path = format!("{book}{}", "p".repeat(size));
        let head = request("GET", path.as_bytes(), &[], b"", Some(&raw.auth));
        let r = raw.exchange(&head, Duration::from_secs(10)).await.expect("answer");
        assert!((400..500).contains(&r.status), "{size}-byte path: {}", r.status);
    }
    s.stop().await;
}

#[tokio::test]
async fn multiget_href_and_filter_term_limits() {
    let s = TestServer::start_with(|c| {
        c.limits.max_multiget_hrefs = 3;
        c.limits.max_filter_terms = 9;
    })
    .await;
    let alice = s.user("alice").await;
    alice.put_card("a.vcf", "a", "A", "").await;
    let book = alice.book();
    let multiget = |n: usize| {
        let hrefs: String = (0..n).map(|i| format!("<d:href>{book}c{i}.vcf</d:href>")).collect();
        format!(r#"<c:addressbook-multiget {NS}><d:prop><d:getetag/></d:prop>{hrefs}</c:addressbook-multiget>"#)
    };
    assert_eq!(alice.report(&book, "1", &multiget(3)).await.multistatus().responses.len(), 3);
    let r = alice.report(&book, "1", &multiget(4)).await;
    assert_eq!(r.status.as_u16(), 400, "{}", r.text());
    // Filter complexity: prop-filters, text-matches and param-filters all count.
    let max = s.config.limits.max_filter_terms;
    let query = |terms: usize| {
        let pf = r#"<c:prop-filter name="FN"><c:text-match>a</c:text-match></c:prop-filter>"#.repeat(terms / 2);
        let extra = if terms % 2 == 1 { r#"<c:prop-filter name="UID"/>"# } else { "" };
        format!(
            r#"<c:addressbook-query {NS}><d:prop><d:getetag/></d:prop><c:filter>{pf}{extra}</c:filter></c:addressbook-query>"#
        )
    };
    assert_eq!(max, 9);
    assert_eq!(alice.report(&book, "1", &query(max)).await.multistatus().responses.len(), 1);
    let r = alice.report(&book, "1", &query(max + 1)).await;
    assert_eq!(r.status.as_u16(), 400, "{}", r.text());
    assert!(r.text().contains("terms"), "{}", r.text());
    // The properties one request names: each is repeated for every card in the answer.
    let propfind = |n: usize| {
        let props: String = (0..n).map(|i| format!("<x:p{i}/>")).collect();
        format!(r#"<d:propfind xmlns:d="DAV:" xmlns:x="urn:x"><d:prop>{props}</d:prop></d:propfind>"#)
    };
    let max = kartei::dav::request::MAX_REQUESTED_PROPS;
    assert_eq!(alice.propfind(&book, "1", &propfind(max)).await.status.as_u16(), 207);
    for r in [
        alice.propfind(&book, "1", &propfind(max + 1)).await,
        alice.report(&book, "1", &multiget(1).replace("<d:getetag/>", &"<d:getetag/>".repeat(max + 1))).await,
        alice.propfind("/dav/files/alice/", "1", &propfind(max + 1)).await,
    ] {
        assert_eq!(r.status.as_u16(), 400, "{}", r.text());
        assert!(r.text().contains("at most"), "{}", r.text());
    }
    s.stop().await;
}

/// What a browser may do with an answer: nothing but show it as its Content-Type says, over HTTPS only, and
/// a stored document (its type chosen by whoever uploaded it) never as a page of kartei's own that runs.
#[tokio::test]
async fn answers_carry_headers_that_keep_browsers_safe() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    alice.put_card("a.vcf", "a", "A", "").await;
    let html = b"<script>alert(document.domain)</script>".to_vec();
    assert_eq!(alice.send("PUT", "/dav/files/alice/x.html", &[("content-type", "text/html")], html).await.status, 201);
    assert_eq!(
        alice.send("PUT", "/dav/files/alice/p.png", &[("content-type", "image/png")], b"png".to_vec()).await.status,
        201
    );
    for path in [format!("{}a.vcf", alice.book()), "/api/v1/books".into(), "/dav/files/alice/x.html".into()] {
        let r = alice.get(&path).await;
        assert_eq!(r.header("x-content-type-options").as_deref(), Some("nosniff"), "{path}");
        assert_eq!(r.header("strict-transport-security").as_deref(), Some("max-age=31536000"), "{path}");
    }
    let r = alice.get("/dav/files/alice/x.html").await;
    assert_eq!(r.header("content-security-policy").as_deref(), Some("sandbox"));
    assert_eq!(r.header("content-disposition").as_deref(), Some("attachment"), "HTML is downloaded, not shown");
    let r = alice.get("/dav/files/alice/p.png").await;
    assert_eq!(
        (r.header("content-security-policy").as_deref(), r.header("content-disposition")),
        (Some("sandbox"), None)
    );
    s.stop().await;
    // Plain HTTP (behind a proxy that terminates TLS) does not claim HSTS.
    let s = TestServer::start_with(|c| c.tls.mode = kartei::config::TlsMode::Off).await;
    let alice = s.user("alice").await;
    let r = alice.get("/api/v1/books").await;
    assert_eq!((r.status.as_u16(), r.header("strict-transport-security")), (200, None));
    assert_eq!(r.header("x-content-type-options").as_deref(), Some("nosniff"));
    s.stop().await;
}

/// Text a client chooses never starts a line of its own in the server log or the audit trail.
#[tokio::test]
async fn client_text_cannot_forge_log_lines() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let forged = "x%0A2026-11-24T00:00:00.000000Z%20%20WARN%20kartei::app:%20authentication%20failed";
    let r = alice.get(&format!("/api/v1/contacts/export?format=vcf&purpose={forged}")).await;
    assert_eq!(r.status.as_u16(), 400, "{}", r.text());
    assert!(r.text().contains("control characters"), "{}", r.text());
    assert!(!s.audit().await.to_string().contains("authentication failed"), "no export was recorded");
    s.stop().await;
}

#[tokio::test]
async fn request_time_limit() {
    let s = TestServer::start_with(|c| c.limits.request_timeout_secs = 1).await;
    let alice = s.user("alice").await;
    let raw = Raw::new(&s, &alice);
    // A body that trickles in: announced 500 bytes, 100 sent, then nothing.
    for (method, path, ct) in [
        ("PUT", format!("{}slow.vcf", alice.book()), &b"text/vcard"[..]),
        ("PROPFIND", alice.book(), &b"application/xml"[..]),
    ] {
        let mut head =
            request(method, path.as_bytes(), &[("Content-Type", ct), ("Content-Length", b"500")], b"", Some(&raw.auth));
        head.extend_from_slice(&[b' '; 100]);
        let mut tls = raw.connect().await;
        tls.write_all(&head).await.expect("write");
        let t0 = Instant::now();
        let r = read_response(&mut tls, Duration::from_secs(10)).await.expect("an answer after the request timeout");
        let took = t0.elapsed();
        // RFC 9110 §15.5.9: the client did not send its request in time.
        assert_eq!(r.status, 408, "{method}: {}", r.text());
        assert!(
            took >= Duration::from_millis(800) && took < Duration::from_secs(6),
            "{method}: answered after {took:?}"
        );
        wait_closed(&mut tls, Duration::from_secs(5)).await.expect("connection closed after the timeout");
    }
    // Nothing was stored.
    assert_eq!(alice.get(&format!("{}slow.vcf", alice.book())).await.status.as_u16(), 404);

    // A body that keeps arriving is slow, not stuck: five pieces 400 ms apart (2 s in all, twice the limit)
    // are stored. The limit counts from the last piece. (Found by a review: a 50 MB document needed more
    // than 6.7 Mbit/s to fit into the default 60 s.)
    let card = vcard("steady", "Steady", &"NOTE:sent in pieces over a slow line\r\n".repeat(10));
    let path = format!("{}steady.vcf", alice.book());
    let length = card.len().to_string();
    let head = request(
        "PUT",
        path.as_bytes(),
        &[("Content-Type", b"text/vcard"), ("Content-Length", length.as_bytes())],
        b"",
        Some(&raw.auth),
    );
    let mut tls = raw.connect().await;
    tls.write_all(&head).await.expect("write");
    let t0 = Instant::now();
    for piece in card.as_bytes().chunks(card.len().div_ceil(5)) {
        tokio::time::sleep(Duration::from_millis(400)).await;
        tls.write_all(piece).await.expect("write a piece");
        tls.flush().await.expect("flush");
    }
    let r = read_response(&mut tls, Duration::from_secs(10)).await.expect("an answer");
    assert_eq!(r.status, 201, "a steady upload of {:?}: {}", t0.elapsed(), r.text());
    assert!(t0.elapsed() > Duration::from_millis(1500), "the upload took longer than the limit");
    assert_eq!(alice.get(&path).await.body, card.as_bytes());
    s.stop().await;
}

/// One client address may hold at most `max_connections_per_ip` connections: beyond, a connection is closed
/// at once, and a slot comes back when one of its connections ends. (Found by a review: one address held
/// all 1,024 slots with requests that trickled in, and nobody else could connect.)
#[tokio::test]
async fn one_address_cannot_hold_every_connection() {
    let s = TestServer::start_with(|c| c.limits.max_connections_per_ip = 3).await;
    let alice = s.user("alice").await;
    let raw = Raw::new(&s, &alice);
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(tokio::net::TcpStream::connect(raw.addr).await.expect("connect"));
    }
    // The fourth is accepted by the kernel, then closed by the server without a byte.
    let mut fourth = tokio::net::TcpStream::connect(raw.addr).await.expect("connect");
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(5), fourth.read(&mut buf)).await.expect("closed at once");
    assert!(matches!(read, Ok(0) | Err(_)), "the fourth connection of one address was served: {read:?}");
    // A slot comes back once a connection of that address ends.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut served = false;
    while !served && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let Ok(mut tls) = raw.connect_with(&raw.connector).await else { continue };
        let head = request("OPTIONS", b"/dav/", &[], b"", None);
        if tls.write_all(&head).await.is_ok() {
            served = read_response(&mut tls, Duration::from_secs(2)).await.is_ok_and(|r| r.status == 200);
        }
    }
    assert!(served, "no connection served after one of the address's connections ended");
    drop(held);
    s.stop().await;
}

#[tokio::test]
async fn idle_connections_are_closed() {
    let s = TestServer::start_with(|c| c.limits.idle_timeout_secs = 1).await;
    let alice = s.user("alice").await;
    let raw = Raw::new(&s, &alice);
    let limit = Duration::from_secs(6);
    let early = Duration::from_millis(800);

    // Slowloris: half a request head, then silence.
    let mut tls = raw.connect().await;
    tls.write_all(b"PROPFIND /dav/addressbooks/alice/contacts/ HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        .await
        .expect("write");
    let took = wait_closed(&mut tls, limit).await.expect("half a header");
    assert!(took >= early, "closed too early: {took:?}");

    // A few bytes: not even enough to tell HTTP/1.1 from HTTP/2.
    let mut tls = raw.connect().await;
    tls.write_all(b"PRI").await.expect("write");
    wait_closed(&mut tls, limit).await.expect("three bytes");

    // A TLS connection that never sends a request.
    let mut tls = raw.connect().await;
    let took = wait_closed(&mut tls, limit).await.expect("silent TLS connection");
    assert!(took >= early, "closed too early: {took:?}");

    // A TCP connection that never starts TLS.
    let mut tcp = TcpStream::connect(raw.addr).await.expect("tcp");
    wait_closed(&mut tcp, limit).await.expect("no TLS handshake");

    // An HTTP/2 connection after its preface and settings, then nothing.
    let mut h2 = raw.connect_with(&raw.h2_connector).await.expect("h2 connect");
    assert_eq!(h2.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00").await.expect("preface");
    let took = wait_closed(&mut h2, limit).await.expect("idle HTTP/2 connection");
    assert!(took >= early, "closed too early: {took:?}");

    // Keep-alive: a connection in use stays open; once idle it is closed.
    let mut tls = raw.connect().await;
    let get = format!("GET {} HTTP/1.1\r\nHost: localhost\r\nAuthorization: {}\r\n\r\n", alice.book(), raw.auth);
    for _ in 0..4 {
        tls.write_all(get.as_bytes()).await.expect("write");
        let r = read_response(&mut tls, Duration::from_secs(5)).await.expect("keep-alive answer");
        assert_eq!(r.status, 200);
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let took = wait_closed(&mut tls, limit).await.expect("idle keep-alive connection");
    assert!(took >= Duration::from_millis(400), "closed too early: {took:?}");
    s.stop().await;
}

#[tokio::test]
async fn concurrent_connection_limit() {
    let s = TestServer::start_with(|c| c.limits.max_connections = 2).await;
    let alice = s.user("alice").await;
    let raw = Raw::new(&s, &alice);
    let get = format!("GET {} HTTP/1.1\r\nHost: localhost\r\nAuthorization: {}\r\n\r\n", alice.book(), raw.auth);
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut tls = raw.connect().await;
        tls.write_all(get.as_bytes()).await.expect("write");
        assert_eq!(read_response(&mut tls, Duration::from_secs(5)).await.expect("answer").status, 200);
        held.push(tls);
    }
    // A third connection waits in the accept queue: its TLS handshake does not complete.
    let third = tokio::time::timeout(Duration::from_millis(1500), raw.connect_with(&raw.connector)).await;
    assert!(third.is_err(), "a third connection was served while two were open");
    // Once one closes, a new connection is served.
    drop(held.remove(0));
    let mut tls = tokio::time::timeout(Duration::from_secs(10), raw.connect_with(&raw.connector))
        .await
        .expect("served after a slot freed up")
        .expect("connect");
    tls.write_all(get.as_bytes()).await.expect("write");
    assert_eq!(read_response(&mut tls, Duration::from_secs(5)).await.expect("answer").status, 200);
    s.stop().await;
}

/// Requests that used to get a 2xx: an unreadable If-Match (a lost update), a non-ASCII Depth, COPY below a
/// card, a content line without a colon; and a second FN that the search column used to miss.
#[tokio::test]
async fn edge_cases_that_once_slipped_through() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let etag = alice.put_card("anna.vcf", "anna", "Anna", "").await;
    let raw = Raw::new(&s, &alice);
    let card = format!("{}anna.vcf", alice.book());
    let mut failures = Vec::new();
    let mut check = |label: &str, r: RawResp| {
        if !(400..500).contains(&r.status) {
            failures.push(format!("{label}: got {}", r.status));
        }
    };
    // methods/mod.rs `precondition`: an If-Match that is not visible ASCII is ignored, so the write is
    // unconditional (a lost update); it should be 400.
    let update = vcard("anna", "Anna Overwritten", "");
    let req =
        request("PUT", card.as_bytes(), &[("If-Match", "\"\u{e9}\"".as_bytes())], update.as_bytes(), Some(&raw.auth));
    check("PUT with a non-ASCII If-Match", raw.exchange(&req, Duration::from_secs(10)).await.expect("answer"));
    // methods/propfind.rs: a non-ASCII Depth is read as no Depth at all.
    let req = request("PROPFIND", alice.book().as_bytes(), &[("Depth", "\u{661}".as_bytes())], b"", Some(&raw.auth));
    check("PROPFIND with a non-ASCII Depth", raw.exchange(&req, Duration::from_secs(10)).await.expect("answer"));
    // methods/copymove.rs: a Destination on this server outside the card space is 502 Bad Gateway (meant
    // for other servers); 403 or 409 fits.
    let dest = format!("{card}/deeper");
    let req = request("COPY", card.as_bytes(), &[("Destination", dest.as_bytes())], b"", Some(&raw.auth));
    check("COPY to a path below a card", raw.exchange(&req, Duration::from_secs(10)).await.expect("answer"));
    // vcard/mod.rs `validate`: calcard accepts a content line without a colon.
    let bad = vcard("colon", "No Colon", "this line has no colon\r\n");
    let req = request("PUT", format!("{}colon.vcf", alice.book()).as_bytes(), &[], bad.as_bytes(), Some(&raw.auth));
    check(
        "PUT a vCard with a line without a colon",
        raw.exchange(&req, Duration::from_secs(10)).await.expect("answer"),
    );
    let _ = etag;
    // vcard/mod.rs: the FN search column holds only the first FN, so the store's pre-filter skips a card whose
    // second FN (a language variant) is what the query matches (found by the query_filter fuzz target).
    alice.put_card("two-fn.vcf", "two-fn", "Jürgen", "FN;LANGUAGE=en:Juergen Miller\r\n").await;
    let query = format!(
        r#"<c:addressbook-query {NS}><d:prop><d:getetag/></d:prop><c:filter><c:prop-filter name="FN"><c:text-match>miller</c:text-match></c:prop-filter></c:filter></c:addressbook-query>"#
    );
    let found = alice.report(&alice.book(), "1", &query).await.multistatus().hrefs();
    if found.is_empty() {
        failures.push("addressbook-query on a second FN finds nothing".to_string());
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    s.stop().await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_disconnected() {
    let s = TestServer::start_with(|c| {
        c.limits.idle_timeout_secs = 1;
        c.limits.request_timeout_secs = 1;
    })
    .await;
    let alice = s.user("alice").await;
    let note = format!("NOTE:{}\r\n", "x".repeat(900_000));
    for i in 0..24 {
        alice.put_card(&format!("big-{i}.vcf"), &format!("big-{i}"), "Big", &note).await;
    }
    let raw = Raw::new(&s, &alice);
    let mut tls = raw.connect().await;
    let get = format!("GET {} HTTP/1.1\r\nHost: localhost\r\nAuthorization: {}\r\n\r\n", alice.book(), raw.auth);
    tls.write_all(get.as_bytes()).await.expect("write");
    // The answer (about 22 MB, streamed from a blocking thread) fills the socket buffers; then nothing moves.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let drained = read_answer(&mut tls, Duration::from_secs(10)).await;
    assert!(drained.is_some(), "the stalled connection was still open");
    let received = drained.map_or(0, |(n, _)| n);
    assert!(received < 24 * 900_000, "the whole answer arrived ({received} bytes): the connection was not cut");
    // The server is fine afterwards.
    assert_eq!(alice.get(&format!("{}big-0.vcf", alice.book())).await.status.as_u16(), 200);
    s.stop().await;
}

#[tokio::test]
async fn a_streamed_answer_its_client_stops_reading_is_cut_visibly() {
    // A producer blocked on a client that takes nothing gives up after idle_timeout_secs, although the
    // connection would stay open until the watchdog's request timeout (or longer, on an HTTP/2 connection
    // kept busy otherwise). The cut answer must never end like a complete one (the last chunk, or a gzip
    // trailer or zstd epilogue), or the client would take the part that arrived for the whole answer.
    let s = TestServer::start_with(|c| {
        c.limits.idle_timeout_secs = 2;
        c.limits.request_timeout_secs = 120;
    })
    .await;
    let alice = s.user("alice").await;
    // Letters from a small LCG: the notes must not compress away, or a compressed answer would fit the buffers.
    let mut seed = 7u64;
    let mut noise = |n: usize| -> String {
        (0..n)
            .map(|_| {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                char::from(b'a' + (seed >> 59) as u8 % 26)
            })
            .collect()
    };
    // 32 cards of 900 KB: more than the answer channel (16 chunks) and the socket buffers hold.
    for i in 0..32 {
        let note = format!("NOTE:{}\r\n", noise(900_000));
        alice.put_card(&format!("big-{i}.vcf"), &format!("big-{i}"), "Big", &note).await;
    }
    let raw = Raw::new(&s, &alice);
    let get = format!("GET {} HTTP/1.1\r\nHost: localhost\r\nAuthorization: {}\r\n\r\n", alice.book(), raw.auth);
    let sync = r#"<d:sync-collection xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:carddav"><d:sync-token/><d:sync-level>1</d:sync-level><d:prop><d:getetag/><c:address-data/></d:prop></d:sync-collection>"#;
    let report = |coding: &str| {
        format!(
            "REPORT {} HTTP/1.1\r\nHost: localhost\r\nAuthorization: {}\r\nAccept-Encoding: {coding}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n{sync}",
            alice.book(),
            raw.auth,
            sync.len()
        )
    };
    let mut stalled = Vec::new();
    for request in [&get, &get, &report("gzip"), &report("zstd")] {
        let mut tls = raw.connect().await;
        tls.write_all(request.as_bytes()).await.expect("write");
        stalled.push(tls);
    }
    // Meanwhile others are answered.
    let listing =
        alice.propfind(&alice.book(), "1", r#"<propfind xmlns="DAV:"><prop><getetag/></prop></propfind>"#).await;
    assert_eq!(listing.multistatus().hrefs().len(), 33, "the book and its 32 cards");
    tokio::time::sleep(Duration::from_secs(4)).await;
    for (n, mut tls) in stalled.into_iter().enumerate() {
        let drained = read_answer(&mut tls, Duration::from_secs(20)).await;
        let (received, tail) =
            drained.unwrap_or_else(|| panic!("stalled answer {n}: the connection neither closed nor ended the answer"));
        assert!(!tail.ends_with(LAST_CHUNK), "stalled answer {n} ended like a complete one ({received} bytes)");
    }
    assert_eq!(alice.get(&format!("{}big-0.vcf", alice.book())).await.status.as_u16(), 200);
    s.stop().await;
}
