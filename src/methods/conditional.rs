//! Conditional requests, evaluated in one place for the address books and the file area: If-Match,
//! If-None-Match, If-Modified-Since and If-Unmodified-Since (RFC 9110 §13) and the WebDAV If header
//! (RFC 4918 §10.4). Writes check them against the state read before the write and hand the store a
//! precondition that holds only while that state does.
//!
//! kartei has no locks, so every state token in an If header is false (`Not <DAV:no-lock>` is true).

use super::clean_etag;
use crate::app::{Ctx, Target};
use crate::error::{DavError, DavResult};
use crate::router::{self, Route};
use crate::store::{self, Precondition};
use hyper::{HeaderMap, StatusCode, header};
use std::collections::HashMap;

/// For each resource an If header's tagged list names: its entity tag, or `None` when kartei cannot resolve
/// it (the list then does not apply).
type Tagged = HashMap<String, Option<Option<String>>>;

/// A resource as the conditions see it; `None` in its place means nothing is there.
#[derive(Debug, Clone, Copy, Default)]
pub struct State<'a> {
    /// The entity tag of the representation the response would carry; collections (address books, folders)
    /// and converted cards have none.
    pub etag: Option<&'a str>,
    /// Last modification, Unix seconds (what Last-Modified says), if it has one.
    pub modified: Option<i64>,
}

/// What a read may answer instead of the representation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Proceed,
    /// 304: the client's copy is current (RFC 9110 §15.4.5).
    NotModified,
}

/// `*` or a list of entity tags (quotes stripped; a weak tag keeps its `W/`, so it never matches strongly).
#[derive(Debug, Clone, PartialEq)]
enum Tags {
    Any,
    List(Vec<String>),
}

impl Tags {
    fn parse(name: &header::HeaderName, value: &str) -> DavResult<Tags> {
        if value == "*" {
            return Ok(Tags::Any);
        }
        let tags: Vec<String> = value.split(',').map(clean_etag).filter(|t| !t.is_empty()).collect();
        if tags.is_empty() {
            return Err(DavError::bad_request(format!("{name} has no entity tag")));
        }
        Ok(Tags::List(tags))
    }

    /// Strong comparison for If-Match (RFC 9110 §13.1.1), weak for If-None-Match (§13.1.2). kartei's own
    /// tags are all strong.
    fn matches(&self, current: Option<State>, weak: bool) -> bool {
        let opaque = |t: &str| {
            if weak { t.strip_prefix("W/").unwrap_or(t).trim_matches('"').to_string() } else { t.to_string() }
        };
        match (self, current) {
            (_, None) => false,
            (Tags::Any, Some(_)) => true,
            (Tags::List(tags), Some(s)) => s.etag.is_some_and(|e| tags.iter().any(|t| opaque(t) == e)),
        }
    }
}

/// A tag without its weakness marker, for weak comparison.
fn opaque_tag(tag: &str) -> &str {
    tag.strip_prefix("W/").map_or(tag, |t| t.trim_matches('"'))
}

/// The conditional headers of one request.
#[derive(Debug, Default)]
pub struct Conditions {
    if_match: Option<Tags>,
    if_none_match: Option<Tags>,
    /// Unix seconds; a date that does not parse is ignored (RFC 9110 §13.1.3, §13.1.4).
    if_modified_since: Option<i64>,
    if_unmodified_since: Option<i64>,
    if_header: Option<IfHeader>,
}

/// 412, the answer to every failed precondition.
fn failed(why: &'static str) -> DavError {
    DavError::new(StatusCode::PRECONDITION_FAILED, why)
}

impl Conditions {
    /// Reads the conditional headers; an If-Match, If-None-Match or If the server cannot read is a 400,
    /// never ignored (ignoring it would make a write unconditional).
    pub fn parse(headers: &HeaderMap) -> DavResult<Conditions> {
        let mut c = Conditions::parse_etags(headers)?;
        let date = |name| headers.get(name).and_then(|v| v.to_str().ok()).and_then(crate::dates::parse_http_date);
        c.if_modified_since = date(header::IF_MODIFIED_SINCE);
        c.if_unmodified_since = date(header::IF_UNMODIFIED_SINCE);
        let values: Vec<&str> = headers
            .get_all("if")
            .iter()
            .map(|v| v.to_str().map_err(|_| DavError::bad_request("the If header is not visible ASCII")))
            .collect::<DavResult<_>>()?;
        if !values.is_empty() {
            c.if_header =
                Some(IfHeader::parse(&values.join(" ")).map_err(|why| {
                    DavError::bad_request(format!("the If header is malformed (RFC 4918 §10.4): {why}"))
                })?);
        }
        Ok(c)
    }

    /// If-Match and If-None-Match only.
    pub fn parse_etags(headers: &HeaderMap) -> DavResult<Conditions> {
        let mut c = Conditions::default();
        for name in [header::IF_MATCH, header::IF_NONE_MATCH] {
            let Some(value) = headers.get(&name) else { continue };
            let value = value
                .to_str()
                .map_err(|_| DavError::bad_request(format!("{name} is not a list of entity tags in visible ASCII")))?;
            let tags = Tags::parse(&name, value.trim())?;
            if name == header::IF_MATCH {
                c.if_match = Some(tags);
            } else {
                c.if_none_match = Some(tags);
            }
        }
        Ok(c)
    }

    /// The If-Match / If-None-Match part as a store precondition, which the store checks atomically with the
    /// write. (With both headers `needs_state` is true, and `check` evaluates them together.)
    pub fn precondition(&self) -> Precondition {
        match (&self.if_match, &self.if_none_match) {
            (Some(Tags::Any), _) => Precondition::MustExist,
            (Some(Tags::List(tags)), _) => Precondition::EtagIn(tags.clone()),
            (None, Some(Tags::Any)) => Precondition::MustNotExist,
            // Weak comparison (RFC 9110 §13.1.2): a `W/` tag stands for the strong tag of the same value.
            (None, Some(Tags::List(tags))) => {
                Precondition::EtagNotIn(tags.iter().map(|t| opaque_tag(t).to_string()).collect())
            }
            (None, None) => Precondition::None,
        }
    }

    /// Whether the request sent no conditional header at all.
    pub fn is_empty(&self) -> bool {
        self.if_match.is_none()
            && self.if_none_match.is_none()
            && self.if_modified_since.is_none()
            && self.if_unmodified_since.is_none()
            && self.if_header.is_none()
    }

    /// Whether evaluating a write needs the resource's current state; if not, `precondition` alone decides.
    pub fn needs_state(&self) -> bool {
        self.if_header.is_some()
            || self.if_unmodified_since.is_some()
            || (self.if_match.is_some() && self.if_none_match.is_some())
    }

    /// The precondition that keeps a resource in the state the conditions were evaluated against, so that a
    /// write racing with this request between the check and the store's write still fails.
    pub fn pin(current: Option<State>) -> Precondition {
        match current {
            Some(State { etag: Some(etag), .. }) => Precondition::EtagIn(vec![etag.to_string()]),
            Some(State { etag: None, .. }) => Precondition::MustExist,
            None => Precondition::MustNotExist,
        }
    }

    /// Evaluates every condition for a write against the request target's current state: 412 on failure.
    pub async fn check(&self, ctx: &Ctx, current: Option<State<'_>>) -> DavResult<()> {
        self.check_as(ctx, current, false).await.map(|_| ())
    }

    /// The same for GET and HEAD, where a failed If-None-Match or If-Modified-Since is a 304.
    pub async fn check_read(&self, ctx: &Ctx, current: Option<State<'_>>) -> DavResult<Verdict> {
        self.check_as(ctx, current, true).await
    }

    async fn check_as(&self, ctx: &Ctx, current: Option<State<'_>>, read: bool) -> DavResult<Verdict> {
        let mut tagged = HashMap::new();
        if let Some(h) = &self.if_header {
            for uri in h.lists.iter().filter_map(|l| l.tag.as_deref()) {
                if !tagged.contains_key(uri) {
                    tagged.insert(uri.to_string(), tagged_etag(ctx, uri).await);
                }
            }
        }
        self.evaluate(current, &tagged, read)
    }

    /// The conditions against `current` with every tagged If list naming a resource elsewhere (so it does
    /// not apply): what `check` and `check_read` decide without a request context (the fuzz target's way in).
    pub fn evaluate_untagged(&self, current: Option<State>, read: bool) -> DavResult<Verdict> {
        let tagged = self
            .if_header
            .iter()
            .flat_map(|h| h.lists.iter().filter_map(|l| l.tag.clone()))
            .map(|tag| (tag, None))
            .collect();
        self.evaluate(current, &tagged, read)
    }

    /// RFC 9110 §13.2.2's order, after the If header (which is a precondition of its own, RFC 4918 §10.4).
    fn evaluate(&self, current: Option<State>, tagged: &Tagged, read: bool) -> DavResult<Verdict> {
        if let Some(h) = &self.if_header
            && !h.holds(current.and_then(|c| c.etag), tagged)
        {
            return Err(failed("no list of the If header matches the resource's state"));
        }
        let modified = current.and_then(|c| c.modified);
        match (&self.if_match, self.if_unmodified_since) {
            (Some(m), _) if !m.matches(current, false) => {
                return Err(failed("If-Match does not match the resource's current entity tag"));
            }
            (None, Some(since)) if modified.is_some_and(|m| m > since) => {
                return Err(failed("the resource was modified after If-Unmodified-Since"));
            }
            _ => {}
        }
        match (&self.if_none_match, self.if_modified_since) {
            (Some(m), _) if m.matches(current, true) => {
                if read {
                    Ok(Verdict::NotModified)
                } else {
                    Err(failed("If-None-Match matches the resource's current entity tag"))
                }
            }
            (None, Some(since)) if read && modified.is_some_and(|m| m <= since) => Ok(Verdict::NotModified),
            _ => Ok(Verdict::Proceed),
        }
    }
}

/// The entity tag of the resource a tagged If list names; `None` when it is not one of this user's resources
/// on this server, `Some(None)` when it is but has no tag (a collection, or nothing there).
async fn tagged_etag(ctx: &Ctx, uri: &str) -> Option<Option<String>> {
    if !ctx.is_this_server(uri) {
        return None;
    }
    let segments = router::href_segments(uri)?;
    let path = format!("/{}", segments.iter().map(|s| router::encode(s)).collect::<Vec<_>>().join("/"));
    match router::parse(&path).ok()? {
        route @ (Route::Card { .. } | Route::AddressBook { .. }) => {
            match ctx.app.resolve(&ctx.user, route).await.ok()? {
                Target::Card { book, name } => {
                    let id = book.id;
                    let meta = store::point_read(ctx.store(), move |s| s.card_meta(id, &name)).await.ok()?;
                    Some(meta.map(|m| m.etag))
                }
                _ => Some(None),
            }
        }
        Route::Files { user, path } if user == ctx.user.username && ctx.user.scope.is_none() => {
            let (owner, p) = (user, path.join("/"));
            let file = store::point_read(ctx.store(), move |s| s.file(&owner, &p)).await.ok()?;
            Some(file.and_then(|f| f.etag))
        }
        // The collections above the books, and this user's own home and principal: there, with no tag.
        Route::Root | Route::WellKnown | Route::PrincipalCollection | Route::HomeCollection => Some(None),
        Route::Home { user } | Route::Principal { user } if user == ctx.user.username => Some(None),
        _ => None,
    }
}

/// The If header (RFC 4918 §10.4): lists of conditions, each list optionally tagged with the resource it
/// is about. It holds when any list that applies holds; a list holds when all its conditions do.
#[derive(Debug, Clone, PartialEq)]
struct IfHeader {
    lists: Vec<IfList>,
}

#[derive(Debug, Clone, PartialEq)]
struct IfList {
    /// The Resource-Tag; `None` for a No-tag-list, which is about the request URI.
    tag: Option<String>,
    conditions: Vec<IfCondition>,
}

#[derive(Debug, Clone, PartialEq)]
struct IfCondition {
    not: bool,
    /// An entity tag `[...]` (`None` for a weak one, which never matches strongly); a state token `<...>`
    /// when absent.
    etag: Option<Option<String>>,
}

impl IfCondition {
    fn holds(&self, etag: Option<&str>) -> bool {
        let matched = match &self.etag {
            Some(Some(tag)) => etag == Some(tag.as_str()),
            // A weak tag never matches strongly; a state token never matches: there are no locks.
            Some(None) | None => false,
        };
        matched != self.not
    }
}

impl IfHeader {
    fn parse(value: &str) -> Result<IfHeader, &'static str> {
        let mut rest = value.trim();
        let mut lists = Vec::new();
        let mut tag: Option<String> = None;
        let (mut tagged, mut untagged) = (false, false);
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix('<') {
                let end = after.find('>').ok_or("a resource tag has no closing '>'")?;
                if end == 0 {
                    return Err("an empty resource tag");
                }
                tag = Some(after[..end].to_string());
                tagged = true;
                rest = after[end + 1..].trim_start();
                if !rest.starts_with('(') {
                    return Err("a resource tag is not followed by a list");
                }
            } else if let Some(after) = rest.strip_prefix('(') {
                untagged |= tag.is_none();
                let (conditions, after) = parse_list(after)?;
                lists.push(IfList { tag: tag.clone(), conditions });
                rest = after.trim_start();
            } else {
                return Err("expected '(' or '<'");
            }
        }
        if lists.is_empty() {
            return Err("no list");
        }
        if tagged && untagged {
            return Err("tagged and untagged lists are mixed");
        }
        Ok(IfHeader { lists })
    }

    /// `target`: the entity tag of the request URI's resource, which untagged lists are about.
    fn holds(&self, target: Option<&str>, tagged: &Tagged) -> bool {
        let mut applied = false;
        for list in &self.lists {
            let etag = match &list.tag {
                None => target,
                Some(uri) => match tagged.get(uri) {
                    Some(Some(etag)) => etag.as_deref(),
                    // A resource kartei cannot resolve: the list is not about anything here.
                    _ => continue,
                },
            };
            applied = true;
            if list.conditions.iter().all(|c| c.holds(etag)) {
                return true;
            }
        }
        !applied
    }
}

/// One `( ... )` list, after its `(`; returns the conditions and what follows the `)`.
fn parse_list(mut rest: &str) -> Result<(Vec<IfCondition>, &str), &'static str> {
    let mut conditions = Vec::new();
    loop {
        rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix(')') {
            if conditions.is_empty() {
                return Err("an empty list");
            }
            return Ok((conditions, after));
        }
        let not = rest.get(..3).is_some_and(|w| w.eq_ignore_ascii_case("not"));
        if not {
            rest = rest[3..].trim_start();
        }
        if let Some(after) = rest.strip_prefix('<') {
            let end = after.find('>').ok_or("a state token has no closing '>'")?;
            if end == 0 {
                return Err("an empty state token");
            }
            conditions.push(IfCondition { not, etag: None });
            rest = &after[end + 1..];
        } else if let Some(after) = rest.strip_prefix('[') {
            let after = after.trim_start();
            let (weak, after) = match after.strip_prefix("W/") {
                Some(a) => (true, a),
                None => (false, after),
            };
            let after = after.strip_prefix('"').ok_or("an entity tag is not quoted")?;
            let end = after.find('"').ok_or("an entity tag has no closing quote")?;
            let tag = after[..end].to_string();
            rest = after[end + 1..].trim_start().strip_prefix(']').ok_or("an entity tag has no closing ']'")?;
            conditions.push(IfCondition { not, etag: Some((!weak).then_some(tag)) });
        } else {
            return Err("a condition must be a state token <...> or an entity tag [...]");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holds(header: &str, etag: Option<&str>) -> bool {
        IfHeader::parse(header).expect("parses").holds(etag, &HashMap::new())
    }

    #[test]
    fn if_header_lists() {
        assert!(holds(r#"(["abc"])"#, Some("abc")));
        assert!(!holds(r#"(["bogus"])"#, Some("abc")));
        assert!(!holds(r#"(["abc"])"#, None));
        assert!(!holds(r#"([W/"abc"])"#, Some("abc")), "strong comparison");
        assert!(holds(r#"(["x"]) (["abc"])"#, Some("abc")), "any list");
        assert!(!holds(r#"(["abc"] <urn:uuid:1>)"#, Some("abc")), "all conditions of a list");
        assert!(!holds("(<DAV:no-lock>)", Some("abc")), "no state token holds");
        assert!(holds(r#"(Not <DAV:no-lock> ["abc"])"#, Some("abc")));
        assert!(holds(r#"(not["x"])"#, Some("abc")));
        assert!(holds(r#"(<opaquelocktoken:x>) (Not <DAV:no-lock>)"#, None));
    }

    #[test]
    fn tagged_lists_apply_to_the_resource_they_name() {
        let h = IfHeader::parse(r#"</a> (["1"]) </b> (["2"])"#).expect("parses");
        let mut tagged = HashMap::new();
        assert!(h.holds(None, &tagged), "no list applies");
        tagged.insert("/a".to_string(), Some(Some("9".to_string())));
        assert!(!h.holds(None, &tagged));
        tagged.insert("/b".to_string(), Some(Some("2".to_string())));
        assert!(h.holds(None, &tagged));
        tagged.insert("/b".to_string(), Some(None));
        assert!(!h.holds(None, &tagged), "unmapped: no entity tag matches");
    }

    #[test]
    fn malformed_if_headers() {
        for bad in ["", "()", "(", r#"(["x")"#, r#"("x")"#, "<a>", r#"(["x"]) </a> (["x"])"#, "x", "(<>)", "(Not)"] {
            assert!(IfHeader::parse(bad).is_err(), "{bad:?}");
        }
    }
}
