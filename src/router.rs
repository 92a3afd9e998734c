//! What a request path means, decided once, and the canonical hrefs we send back.
//!
//! URL tree (sabre's shape): `/dav/` root → `/dav/principals/{user}/` → `/dav/addressbooks/{user}/` (home)
//! → `/dav/addressbooks/{user}/{book}/` → `/dav/addressbooks/{user}/{book}/{card}`. Segments are
//! percent-decoded before lookup and percent-encoded in every href we write; a collection is found with or
//! without its trailing slash.

use std::borrow::Cow;
use std::sync::LazyLock;

use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};

pub const DAV_ROOT: &str = "/dav/";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    WellKnown,
    /// `/` or `/dav/`.
    Root,
    PrincipalCollection,
    Principal {
        user: String,
    },
    HomeCollection,
    Home {
        user: String,
    },
    AddressBook {
        user: String,
        book: String,
    },
    Card {
        user: String,
        book: String,
        name: String,
    },
    /// `/dav/files/{user}/...`: the user's WebDAV file area (decoded segments below it).
    Files {
        user: String,
        path: Vec<String>,
    },
    /// `/api/v1/...`: the contact-manager API.
    Api(Vec<String>),
    /// `/admin/v1/...` segments after the prefix.
    Admin(Vec<String>),
    /// `/account/v1/...`.
    Account(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    /// Undecodable or dangerous path (400).
    BadPath(&'static str),
    NotFound,
}

fn decode_segments(path: &str) -> Result<Vec<String>, RouteError> {
    segments(path).map(|segment| segment.map(Cow::into_owned)).collect()
}

/// The non-empty segments of `path`, each percent-decoded, one at a time; an undecodable or dangerous one is an
/// error. Lazy, so that a caller matching a known prefix (every href of a multiget) stops at the first
/// difference and allocates nothing for segments that need no decoding.
fn segments(path: &str) -> impl Iterator<Item = Result<Cow<'_, str>, RouteError>> {
    path.split('/').filter(|raw| !raw.is_empty()).map(decode_segment)
}

fn decode_segment(raw: &str) -> Result<Cow<'_, str>, RouteError> {
    if !escapes_are_valid(raw) {
        return Err(RouteError::BadPath("a '%' in the path is not followed by two hex digits"));
    }
    let decoded = percent_decode_str(raw).decode_utf8().map_err(|_| RouteError::BadPath("the path is not UTF-8"))?;
    if decoded == "." || decoded == ".." {
        return Err(RouteError::BadPath("dot segments are not allowed in paths"));
    }
    if decoded.contains('/') || decoded.contains('\\') || decoded.chars().any(|c| c.is_ascii_control()) {
        // Control characters (NUL, newlines, DEL) have no place in a name, and would end up in headers
        // such as a whole-book GET's Content-Disposition.
        return Err(RouteError::BadPath("a path segment contains '/', '\\' or a control character"));
    }
    Ok(decoded)
}

/// RFC 3986 §2.1: every `%` starts a two-digit hex escape (a bare `%` is not passed through as itself).
fn escapes_are_valid(raw: &str) -> bool {
    let bytes = raw.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            match bytes.get(i + 1..i + 3) {
                Some([a, b]) if a.is_ascii_hexdigit() && b.is_ascii_hexdigit() => i += 3,
                _ => return false,
            }
        } else {
            i += 1;
        }
    }
    true
}

pub fn parse(path: &str) -> Result<Route, RouteError> {
    if !path.starts_with('/') {
        return Err(RouteError::BadPath("the path must start with '/'"));
    }
    let segments = decode_segments(path)?;
    let s: Vec<&str> = segments.iter().map(String::as_str).collect();
    let route = match s.as_slice() {
        [] => Route::Root,
        [".well-known", "carddav"] => Route::WellKnown,
        ["dav"] => Route::Root,
        ["dav", "principals"] => Route::PrincipalCollection,
        ["dav", "principals", user] => Route::Principal { user: user.to_string() },
        ["dav", "addressbooks"] => Route::HomeCollection,
        ["dav", "addressbooks", user] => Route::Home { user: user.to_string() },
        ["dav", "addressbooks", user, book] => Route::AddressBook { user: user.to_string(), book: book.to_string() },
        ["dav", "addressbooks", user, book, name] => {
            Route::Card { user: user.to_string(), book: book.to_string(), name: name.to_string() }
        }
        ["dav", "files", user, rest @ ..] => {
            Route::Files { user: user.to_string(), path: rest.iter().map(|x| x.to_string()).collect() }
        }
        ["api", "v1", rest @ ..] => Route::Api(rest.iter().map(|x| x.to_string()).collect()),
        ["admin", "v1", rest @ ..] => Route::Admin(rest.iter().map(|x| x.to_string()).collect()),
        ["account", "v1", rest @ ..] => Route::Account(rest.iter().map(|x| x.to_string()).collect()),
        _ => return Err(RouteError::NotFound),
    };
    Ok(route)
}

/// Characters escaped inside one path segment (RFC 3986 pchar keeps the rest, including `@` and `+`).
const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'[')
    .add(b'\\')
    .add(b']')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');

pub fn encode(segment: &str) -> String {
    let mut encoded = String::with_capacity(segment.len());
    push_encoded(&mut encoded, segment);
    encoded
}

/// Whether an ASCII byte goes into a path segment as it is: what `SEGMENT` leaves alone, worked out once.
static PLAIN: LazyLock<[bool; 128]> = LazyLock::new(|| {
    std::array::from_fn(|b| {
        let byte = [b as u8];
        std::str::from_utf8(&byte).is_ok_and(|s| utf8_percent_encode(s, SEGMENT).next() == Some(s))
    })
});

/// Appends `segment` percent-encoded. Plain runs are copied as they are, without the formatting machinery:
/// every card of a listing or multiget gets an href, and `format!` with three `encode`s was 5 % of the
/// server's CPU in a full sync.
fn push_encoded(out: &mut String, segment: &str) {
    // Most names need no encoding (every name a client or the server makes from a UID, as a rule): one test
    // per byte says so, where the encoder's iterator costs several times that.
    if segment.bytes().all(|b| PLAIN.get(usize::from(b)).copied().unwrap_or(false)) {
        out.push_str(segment);
    } else {
        out.extend(utf8_percent_encode(segment, SEGMENT));
    }
}

/// `/dav/{collection}/` followed by each segment encoded, each with a slash after it: a collection's href.
fn dav_path(collection: &str, segments: &[&str]) -> String {
    let mut path = String::with_capacity(8 + collection.len() + segments.iter().map(|s| s.len() + 1).sum::<usize>());
    path.push_str("/dav/");
    path.push_str(collection);
    for segment in segments {
        path.push('/');
        push_encoded(&mut path, segment);
    }
    path.push('/');
    path
}

pub fn principal_href(user: &str) -> String {
    dav_path("principals", &[user])
}

pub fn home_href(user: &str) -> String {
    dav_path("addressbooks", &[user])
}

pub fn book_href(user: &str, book: &str) -> String {
    dav_path("addressbooks", &[user, book])
}

pub fn card_href(user: &str, book: &str, name: &str) -> String {
    member_href(&book_href(user, book), name)
}

/// `card_href` for a member of the book at `book_href` (`book_href(user, book)`): listings and multigets name
/// hundreds of cards of one book, and encoding its user and segment again for each was ~2 % of a full sync.
pub fn member_href(book_href: &str, name: &str) -> String {
    let mut href = String::with_capacity(book_href.len() + name.len() + 8);
    href.push_str(book_href);
    push_encoded(&mut href, name);
    href
}

/// Reads an href a client sent (absolute URL or path, encoded or not) as decoded path segments.
pub fn href_segments(href: &str) -> Option<Vec<String>> {
    decode_segments(href_path(href)?).ok()
}

/// The path of an href (absolute URL or path), without its query or fragment.
fn href_path(href: &str) -> Option<&str> {
    let href = href.trim();
    let path = match after_scheme(href) {
        Some(after) => &after[after.find('/')?..],
        None => href,
    };
    Some(path.split(['?', '#']).next().unwrap_or(path))
}

/// What follows `scheme://` in an absolute URL; None for a path (which may hold `://` in its query).
fn after_scheme(href: &str) -> Option<&str> {
    let (scheme, rest) = href.split_once("://")?;
    let mut chars = scheme.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    valid.then_some(rest)
}

/// The authority (`host[:port]`) of an absolute URL; None for a path.
pub fn href_authority(href: &str) -> Option<&str> {
    let after = after_scheme(href.trim())?;
    let end = after.find(['/', '?', '#']).unwrap_or(after.len());
    // Userinfo is not part of where the server is.
    Some(after[..end].rsplit('@').next().unwrap_or_default())
}

/// Whether two authorities name the same server: host names compare without case, and a port left out is the
/// scheme's default, which a client may write or not.
pub fn same_authority(a: &str, b: &str) -> bool {
    let strip = |s: &str| {
        let s = s.trim().to_ascii_lowercase();
        match s.strip_suffix(":443").or_else(|| s.strip_suffix(":80")) {
            Some(host) => host.to_string(),
            None => s,
        }
    };
    strip(a) == strip(b)
}

/// The resource name an href names inside the book `/dav/addressbooks/{user}/{book}/`, if it does.
pub fn card_name_in_book(href: &str, user: &str, book: &str) -> Option<String> {
    if let Some(name) = plain_member_name(href, user, book) {
        return Some(name.to_string());
    }
    // Segment by segment rather than through `href_segments`: a multiget names up to thousands of cards, and
    // decoding each href into a vector of strings was ~5 % of the server's CPU in a full sync.
    let mut segments = segments(href_path(href)?);
    for expected in ["dav", "addressbooks", user, book] {
        if segments.next()?.ok()? != expected {
            return None;
        }
    }
    let name = segments.next()?.ok()?;
    segments.next().is_none().then(|| name.into_owned())
}

/// The name in an href of the form clients echo back, `/dav/addressbooks/{user}/{book}/{name}`, when no part
/// of it holds anything to decode, trim or refuse; None for any other href, which `card_name_in_book` then
/// reads the general way, to the same answer. The general way decodes and checks every segment: ~7,900
/// instructions per href, 6 % of a full sync's (BENCHMARKS.md, optimization 20).
fn plain_member_name<'a>(href: &'a str, user: &str, book: &str) -> Option<&'a str> {
    // What `segments` would decode, split on or refuse, and the dot segments.
    let plain = |segment: &str| {
        !matches!(segment, "" | "." | "..")
            && !segment.bytes().any(|b| matches!(b, b'%' | b'/' | b'\\' | b'?' | b'#') || b.is_ascii_control())
    };
    let name = href
        .strip_prefix("/dav/addressbooks/")?
        .strip_prefix(user)?
        .strip_prefix('/')?
        .strip_prefix(book)?
        .strip_prefix('/')?;
    // `href_path` trims the href: white space at its end is not part of the name.
    let untrimmed = name.trim_end().len() == name.len();
    (plain(user) && plain(book) && plain(name) && untrimmed).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_hrefs_equal_card_hrefs() {
        for (user, book, name) in [
            ("anna@example.org", "contacts", "a.vcf"),
            ("b r", "Bücher & Co", "ä ö/%20?#.vcf"),
            ("u", "b", "\u{1F600}:;,.vcf"),
        ] {
            assert_eq!(member_href(&book_href(user, book), name), card_href(user, book, name));
        }
    }

    #[test]
    fn plain_names_are_copied_exactly_as_the_encoder_would_write_them() {
        // Every ASCII character alone, then names with and without something to encode.
        let singles = (0u8..128).map(|b| char::from(b).to_string());
        let names = ["a.vcf", "0f3c-11ee_x~y@z.vcf", "a b.vcf", "a%2F.vcf", "ü.vcf", "a\u{7f}", ""].map(String::from);
        for name in singles.chain(names) {
            let mut fast = String::new();
            push_encoded(&mut fast, &name);
            assert_eq!(fast, utf8_percent_encode(&name, SEGMENT).to_string(), "{name:?}");
        }
        assert!(PLAIN[usize::from(b'a')] && !PLAIN[usize::from(b'/')] && !PLAIN[usize::from(b'%')] && !PLAIN[0x7f]);
    }

    #[test]
    fn destination_authorities() {
        assert_eq!(href_authority("https://Host.example:8443/dav/x"), Some("Host.example:8443"));
        assert_eq!(href_authority("http://user@host.example"), Some("host.example"));
        assert_eq!(href_authority("/dav/x"), None);
        assert_eq!(href_authority("/dav/x.vcf?from=https://x.example/"), None, "a URL in a query is no authority");
        assert_eq!(
            href_segments("/dav/x.vcf?from=https://x.example/"),
            Some(vec!["dav".to_string(), "x.vcf".to_string()])
        );
        assert!(same_authority("HOST.example:443", "host.example"));
        assert!(!same_authority("host.example:8443", "host.example"));
        assert!(!same_authority("other.example", "host.example"));
    }

    #[test]
    fn routes_with_and_without_trailing_slash() {
        assert_eq!(
            parse("/dav/addressbooks/a%40b.c/contacts"),
            Ok(Route::AddressBook { user: "a@b.c".into(), book: "contacts".into() })
        );
        assert_eq!(
            parse("/dav/addressbooks/a@b.c/contacts/"),
            Ok(Route::AddressBook { user: "a@b.c".into(), book: "contacts".into() })
        );
        assert_eq!(
            parse("/dav/addressbooks/u/contacts/My%20Card%2B1.vcf"),
            Ok(Route::Card { user: "u".into(), book: "contacts".into(), name: "My Card+1.vcf".into() })
        );
        assert_eq!(parse("/.well-known/carddav"), Ok(Route::WellKnown));
        assert_eq!(parse("/"), Ok(Route::Root));
        assert_eq!(parse("/nope"), Err(RouteError::NotFound));
    }

    #[test]
    fn refuses_dangerous_paths() {
        assert!(matches!(parse("/dav/addressbooks/u/../v/"), Err(RouteError::BadPath(_))));
        assert!(matches!(parse("/dav/addressbooks/u/%2e%2e/v/"), Err(RouteError::BadPath(_))));
        assert!(matches!(parse("/dav/addressbooks/u/a%2fb/"), Err(RouteError::BadPath(_))));
        assert!(matches!(parse("/dav/addressbooks/u/a%00b/"), Err(RouteError::BadPath(_))));
        assert!(matches!(parse("/dav/addressbooks/u/%c0%ae/"), Err(RouteError::BadPath(_))));
        assert!(matches!(parse("dav"), Err(RouteError::BadPath(_))));
        for bad in ["/dav/addressbooks/u/c/%", "/dav/addressbooks/u/c/%4", "/dav/addressbooks/u/c/%zz.vcf", "/dav/%g0/"]
        {
            assert!(matches!(parse(bad), Err(RouteError::BadPath(_))), "{bad}");
        }
        assert!(
            matches!(parse("/dav/addressbooks/u/c/100%25.vcf"), Ok(Route::Card { ref name, .. }) if name == "100%.vcf")
        );
    }

    #[test]
    fn hrefs_round_trip() {
        let href = card_href("a@b.c", "contacts", "x y#1.vcf");
        assert_eq!(href, "/dav/addressbooks/a@b.c/contacts/x%20y%231.vcf");
        assert_eq!(book_href("a b", "c/d"), "/dav/addressbooks/a%20b/c%2Fd/");
        assert_eq!(home_href("ü"), "/dav/addressbooks/%C3%BC/");
        assert_eq!(principal_href("a@b.c"), "/dav/principals/a@b.c/");
        assert_eq!(card_name_in_book(&href, "a@b.c", "contacts"), Some("x y#1.vcf".into()));
        assert_eq!(card_name_in_book(&format!("https://h:1{href}"), "a@b.c", "contacts"), Some("x y#1.vcf".into()));
        assert_eq!(card_name_in_book("/dav/addressbooks/a@b.c/other/x.vcf", "a@b.c", "contacts"), None);
    }

    #[test]
    fn multiget_members_are_exactly_five_clean_segments_under_the_book() {
        let member = |href: &str| card_name_in_book(href, "u", "c");
        assert_eq!(member("//dav//addressbooks/u/c/x.vcf/"), Some("x.vcf".into()), "empty segments are skipped");
        assert_eq!(member(" /dav/addressbooks/%75/c/x.vcf?v=1#f "), Some("x.vcf".into()), "decoded, query dropped");
        assert_eq!(member("/dav/addressbooks/u/c/a%2526b.vcf"), Some("a%26b.vcf".into()), "decoded once");
        for not_a_member in [
            "/dav/addressbooks/u/c/",
            "/dav/addressbooks/u/c/x.vcf/y",
            "/dav/addressbooks/u/c/x.vcf/%zz",
            "/dav/addressbooks/u/c/%2e%2e",
            "/dav/addressbooks/u/c/a%00b",
            "/dav/addressbooks/u/c/a%2Fb",
            "/dav/addressbooks/u/c/%FF.vcf",
            "/dav/addressbooks/v/c/x.vcf",
            "/dav/principals/u/c/x.vcf",
            "https://h.example",
            "",
            "/dav/addressbooks/u/c/..",
            "/dav/addressbooks/u/c/a\\b",
            "/dav/addressbooks/u/c/a\tb",
            "/dav/addressbooks/u/c/a\u{7f}",
        ] {
            assert_eq!(member(not_a_member), None, "{not_a_member:?}");
        }
    }

    #[test]
    fn the_plain_path_answers_only_what_the_general_one_would() {
        // Each answered by the shortcut, or left to the general path, with the same result as decoding the
        // whole href (the fuzz target checks this for any input).
        let cases = [
            ("/dav/addressbooks/u/c/x.vcf", Some("x.vcf")),
            ("/dav/addressbooks/u/c/x.vcf  ", None),
            ("/dav/addressbooks/u/c/x.vcf\u{85}", None),
            ("/dav/addressbooks/u/c/ü .vcf", Some("ü .vcf")),
            ("/dav/addressbooks/u/c/a:b@c!$&'()*+,;=.vcf", Some("a:b@c!$&'()*+,;=.vcf")),
            ("/dav/addressbooks/u/c/x.vcf?a", None),
            ("/dav/addressbooks/u/c/x%41.vcf", None),
            ("/dav/addressbooks/u/c/.", None),
            ("/dav/addressbooks/u/cc/x.vcf", None),
        ];
        for (href, shortcut) in cases {
            assert_eq!(plain_member_name(href, "u", "c"), shortcut, "{href:?}");
            let whole = href_segments(href).and_then(|s| match s.as_slice() {
                [dav, abs, u, c, name] if dav == "dav" && abs == "addressbooks" && u == "u" && c == "c" => {
                    Some(name.clone())
                }
                _ => None,
            });
            assert_eq!(card_name_in_book(href, "u", "c"), whole, "{href:?}");
        }
        assert_eq!(card_name_in_book("/dav/addressbooks/u/c/x.vcf  ", "u", "c").as_deref(), Some("x.vcf"));
        assert_eq!(card_name_in_book("/dav/addressbooks/u/c/x%41.vcf", "u", "c").as_deref(), Some("xA.vcf"));
        // A user or book that decoding would change never takes the shortcut.
        assert_eq!(plain_member_name("/dav/addressbooks/a%41/c/x.vcf", "a%41", "c"), None);
        assert_eq!(card_name_in_book("/dav/addressbooks/a%41/c/x.vcf", "a%41", "c"), None);
        assert_eq!(card_name_in_book("/dav/addressbooks/a%41/c/x.vcf", "aA", "c").as_deref(), Some("x.vcf"));
    }
}
