//! Every failure a client can cause, with its HTTP status and, where an RFC names one, the precondition
//! that goes into the `DAV:error` body. `into_response` is the one place that writes error responses and
//! logs them (warn for 4xx, error for 5xx).

use crate::body::{self, Body};
use crate::dav::request::BadRequest;
use crate::dav::response::{XML_CONTENT_TYPE, error_body};
use crate::store;
use hyper::{Response, StatusCode, header};
use quick_xml::escape::escape;
use std::borrow::Cow;

/// RFC 4918 / RFC 6352 / RFC 6578 / RFC 3744 preconditions, written as the element inside `DAV:error`.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    PropfindFiniteDepth,
    ValidAddressData,
    SupportedAddressData,
    NoUidConflict { existing_href: String },
    MaxResourceSize,
    SupportedCollation,
    ValidSyncToken,
    NumberOfMatchesWithinLimits,
    SupportedReport,
    NeedPrivileges,
    ResourceMustBeNull,
    ValidResourceType,
}

impl Condition {
    fn xml(&self) -> Cow<'static, str> {
        match self {
            Condition::PropfindFiniteDepth => "<d:propfind-finite-depth/>".into(),
            Condition::ValidAddressData => "<card:valid-address-data/>".into(),
            Condition::SupportedAddressData => "<card:supported-address-data/>".into(),
            Condition::NoUidConflict { existing_href } => format!(
                "<card:no-uid-conflict><d:href>{}</d:href></card:no-uid-conflict>",
                escape(existing_href.as_str())
            )
            .into(),
            Condition::MaxResourceSize => "<card:max-resource-size/>".into(),
            Condition::SupportedCollation => "<card:supported-collation/>".into(),
            Condition::ValidSyncToken => "<d:valid-sync-token/>".into(),
            Condition::NumberOfMatchesWithinLimits => "<d:number-of-matches-within-limits/>".into(),
            Condition::SupportedReport => "<d:supported-report/>".into(),
            Condition::NeedPrivileges => "<d:need-privileges/>".into(),
            Condition::ResourceMustBeNull => "<d:resource-must-be-null/>".into(),
            Condition::ValidResourceType => "<d:valid-resourcetype/>".into(),
        }
    }
}

#[derive(Debug)]
pub struct DavError {
    pub status: StatusCode,
    pub condition: Option<Condition>,
    pub message: Cow<'static, str>,
    /// Extra headers (Allow on 405, Retry-After on 429, WWW-Authenticate on 401).
    pub headers: Vec<(header::HeaderName, String)>,
}

impl DavError {
    pub fn new(status: StatusCode, message: impl Into<Cow<'static, str>>) -> Self {
        DavError { status, condition: None, message: message.into(), headers: Vec::new() }
    }

    pub fn with_condition(mut self, condition: Condition) -> Self {
        self.condition = Some(condition);
        self
    }

    pub fn with_header(mut self, name: header::HeaderName, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    pub fn bad_request(message: impl Into<Cow<'static, str>>) -> Self {
        DavError::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found() -> Self {
        DavError::new(StatusCode::NOT_FOUND, "no such resource")
    }

    /// 403 for what the server never does (no privilege could allow it): no DAV:error condition.
    pub fn forbidden(message: impl Into<Cow<'static, str>>) -> Self {
        DavError::new(StatusCode::FORBIDDEN, message)
    }

    /// 403 because this login lacks a privilege on the resource (RFC 3744 §7.1.1 need-privileges).
    pub fn no_privilege(message: impl Into<Cow<'static, str>>) -> Self {
        DavError::new(StatusCode::FORBIDDEN, message).with_condition(Condition::NeedPrivileges)
    }

    pub fn method_not_allowed(allow: &str) -> Self {
        DavError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed on this resource")
            .with_header(header::ALLOW, allow)
    }

    pub fn into_response(self, method: &str, path: &str) -> Response<Body> {
        if self.status.is_server_error() {
            tracing::error!(status = self.status.as_u16(), %method, %path, message = ?self.message, "request failed");
        } else {
            tracing::warn!(status = self.status.as_u16(), %method, %path, message = ?self.message, "request refused");
        }
        let mut builder = Response::builder().status(self.status);
        for (name, value) in &self.headers {
            builder = builder.header(name, value);
        }
        let response = match (&self.condition, method) {
            (_, "HEAD") => builder.body(body::empty()),
            (Some(condition), _) => builder
                .header(header::CONTENT_TYPE, XML_CONTENT_TYPE)
                .body(body::full(error_body(&condition.xml(), &xml_text(&self.message)))),
            (None, _) => builder
                .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
                .body(body::full(format!("{}\n", self.message))),
        };
        response.unwrap_or_else(|_| {
            let mut r = Response::new(body::empty());
            *r.status_mut() = self.status;
            r
        })
    }
}

/// Messages quote what the client sent (a vCard line, a name); characters XML 1.0 cannot carry would make
/// the whole `DAV:error` body unparsable, so they become U+FFFD.
fn xml_text(message: &str) -> Cow<'_, str> {
    let allowed =
        |c: char| matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..);
    if message.chars().all(allowed) {
        Cow::Borrowed(message)
    } else {
        Cow::Owned(message.chars().map(|c| if allowed(c) { c } else { '\u{FFFD}' }).collect())
    }
}

impl From<BadRequest> for DavError {
    fn from(e: BadRequest) -> Self {
        match e {
            BadRequest::Malformed(m) => DavError::bad_request(m),
            BadRequest::UnsupportedAddressData(m) => {
                DavError::new(StatusCode::FORBIDDEN, m).with_condition(Condition::SupportedAddressData)
            }
            BadRequest::UnsupportedCollation(c) => {
                DavError::new(StatusCode::FORBIDDEN, format!("collation '{c}' is not supported"))
                    .with_condition(Condition::SupportedCollation)
            }
            BadRequest::UnsupportedReport(r) => {
                DavError::new(StatusCode::FORBIDDEN, format!("report {r} is not supported here"))
                    .with_condition(Condition::SupportedReport)
            }
        }
    }
}

impl From<store::Error> for DavError {
    fn from(e: store::Error) -> Self {
        match e {
            store::Error::NotFound => DavError::not_found(),
            store::Error::PreconditionFailed => DavError::new(
                StatusCode::PRECONDITION_FAILED,
                "the resource's current state does not match If-Match / If-None-Match",
            ),
            store::Error::AlreadyExists => DavError::new(StatusCode::CONFLICT, "already exists"),
            store::Error::Conflict(why) => DavError::new(StatusCode::CONFLICT, why),
            // The caller maps UID conflicts to hrefs; this is a fallback.
            store::Error::UidConflict(name) => {
                DavError::new(StatusCode::CONFLICT, format!("UID already used by {name}"))
                    .with_condition(Condition::NoUidConflict { existing_href: name })
            }
            store::Error::Unavailable(why) => {
                let status = if why.contains("disk full") {
                    StatusCode::INSUFFICIENT_STORAGE
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                DavError::new(status, format!("storage is not accepting writes: {why}"))
                    .with_header(header::RETRY_AFTER, "30")
            }
            store::Error::Internal(why) => DavError::new(StatusCode::INTERNAL_SERVER_ERROR, why),
        }
    }
}

pub type DavResult<T> = Result<T, DavError>;

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn error_bodies_stay_xml_whatever_the_message_quotes() {
        let e = DavError::bad_request("invalid line: a\u{1b}b <&>").with_condition(Condition::ValidAddressData);
        let r = e.into_response("PUT", "/x");
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        let bytes = r.into_body().collect().await.expect("body").to_bytes();
        let root = crate::dav::xml::parse(&bytes).expect("the error body is XML");
        assert!(root.is(crate::dav::NS_DAV, "error"));
        let text = &root.child(crate::dav::NS_DAV, "responsedescription").expect("description").text;
        assert_eq!(text, "invalid line: a\u{FFFD}b <&>");
    }
}
