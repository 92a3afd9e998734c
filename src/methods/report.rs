//! REPORT: addressbook-multiget and addressbook-query (RFC 6352 §8.6, §8.7) and sync-collection
//! (RFC 6578). Everything a report can refuse is checked before the 207 starts streaming.

use super::{check_target, multistatus_response, preference_applied, read_body, wants_minimal};
use crate::app::{Ctx, Target};
use crate::body::RequestBody;
use crate::body::{AnswerSink, Coding, stream_body};
use crate::carddav::filter::Filter;
use crate::dav::request::{PropFind, Report, parse_report_limited};
use crate::dav::response::Multistatus;
use crate::error::{Condition, DavError, DavResult};
use crate::props::{self, PropContext, Resource};
use crate::router;
use crate::store::{self, BodyRead, BookView, CardBody, CardMeta, ChangeKind, Prefilter, Store};
use crate::vcard;
use hyper::{Response, StatusCode};
use std::io;

const LIMIT_ERROR: &str = "<d:number-of-matches-within-limits/>";

pub async fn handle(ctx: Ctx, target: Target, body: RequestBody) -> DavResult<Response<crate::body::Body>> {
    let limits = &ctx.app.config.limits;
    let raw = read_body(&ctx.headers, body, limits.max_xml_body).await?;
    let report = parse_report_limited(&raw, limits.max_multiget_hrefs, limits.max_filter_terms)?;
    let coding = Coding::negotiate(&ctx.headers);
    if let Report::EmptyAnswer = report {
        let slot = ctx.app.streaming.slot(&ctx.user.username).await?;
        let body = stream_body(&ctx.app.streaming, slot, coding, |out| Multistatus::begin(out)?.finish().map(|_| ()));
        return multistatus_response(body, coding);
    }
    let book = match &target {
        Target::Book(book) => book.clone(),
        // Some clients address a multiget at a card's URL; answer it for the card's book.
        Target::Card { book, .. } if matches!(report, Report::Multiget { .. }) => book.clone(),
        Target::MissingBook { .. } => return Err(DavError::not_found()),
        _ => {
            return Err(DavError::new(StatusCode::FORBIDDEN, "this report is supported on address books only")
                .with_condition(Condition::SupportedReport));
        }
    };
    // The conditions hold for the resource addressed: a card (a multiget sent to a card's URL is answered
    // for its book, and a missing card leaves the book's state), else the book.
    check_target(&ctx, &target, None).await?;
    // A sync token is checked before anything is streamed, so a bad one gets its own status.
    let since = match &report {
        Report::SyncCollection { token, .. } if !token.is_empty() => Some(check_token(&ctx, &book, token).await?),
        _ => None,
    };
    let minimal = wants_minimal(&ctx.headers);
    let writer = ReportWriter {
        book_href: router::book_href(&ctx.user.username, &book.segment),
        store: ctx.store().clone(),
        me: ctx.user.username.clone(),
        max_resource_size: limits.max_resource_size,
        prefer_v3: ctx.is_apple(),
        minimal,
        coding,
        book,
    };
    let slot = ctx.app.streaming.slot(&ctx.user.username).await?;
    let body = stream_body(&ctx.app.streaming, slot, coding, move |out| {
        let mut ms = Multistatus::begin(out)?;
        match report {
            Report::Multiget { props, hrefs } => writer.multiget(&mut ms, &props, &hrefs)?,
            Report::Query { props, filter, limit } => writer.query(&mut ms, &props, &filter, limit)?,
            Report::SyncCollection { props, limit, .. } => writer.sync_collection(&mut ms, &props, since, limit)?,
            Report::EmptyAnswer => {}
        }
        ms.finish()?;
        Ok(())
    });
    Ok(preference_applied(multistatus_response(body, coding)?, minimal))
}

/// The revision a client's token stands for; RFC 6578 §3.2: 403 + valid-sync-token for a token that is not
/// ours, belongs to another book, or lies in the future. Thunderbird resyncs only after a 400, so it gets
/// the same body with 400 (see shared/clients/thunderbird.md).
async fn check_token(ctx: &Ctx, book: &BookView, token: &str) -> DavResult<i64> {
    let invalid = |why: &str| {
        let status =
            if ctx.user_agent().contains("Thunderbird") { StatusCode::BAD_REQUEST } else { StatusCode::FORBIDDEN };
        DavError::new(status, format!("invalid sync token: {why}")).with_condition(Condition::ValidSyncToken)
    };
    let Some((sync_key, revision)) = props::parse_sync_token(token) else {
        return Err(invalid("not a token this server issued"));
    };
    if sync_key != book.sync_key {
        return Err(invalid("the token belongs to another address book"));
    }
    let id = book.id;
    let current = store::point_read(ctx.store(), move |s| s.book_revision(id)).await?;
    if revision < 0 || revision > current {
        return Err(invalid("the token is newer than the address book"));
    }
    Ok(revision)
}

fn store_err(e: store::Error) -> io::Error {
    io::Error::other(e.to_string())
}

struct ReportWriter {
    store: store::SharedStore,
    me: String,
    max_resource_size: usize,
    prefer_v3: bool,
    minimal: bool,
    coding: Coding,
    book: BookView,
    /// The book's href, which every member's href starts with (`router::member_href`).
    book_href: String,
}

impl ReportWriter {
    fn card_response<W: AnswerSink>(
        &self,
        ms: &mut Multistatus<W>,
        props: &PropFind,
        href: &str,
        meta: &CardMeta,
        body: CardBody<'_>,
    ) -> io::Result<()> {
        let pctx = PropContext {
            me: &self.me,
            max_resource_size: self.max_resource_size,
            prefer_v3: self.prefer_v3,
            scoped: false,
        };
        let resource = Resource::Card { book: &self.book, meta, body };
        let (found, missing) = resource.answer(&pctx, props);
        let others = [(404, missing)];
        ms.response(href, &found, if self.minimal { &[] } else { &others })
    }

    /// What the reads behind these properties need of each card: a zstd answer that sends cards as stored
    /// takes the frames stored for large ones (`body::card_xml_frame`), which spares compressing them again.
    fn body_read(&self, props: &PropFind) -> BodyRead {
        if !props::wants_body(props) {
            BodyRead::None
        } else if self.coding.takes_zstd_frames() && props::address_data_as_stored(props, self.prefer_v3) {
            BodyRead::XmlZstdOrText
        } else {
            BodyRead::Text
        }
    }

    fn card_href(&self, meta: &CardMeta) -> String {
        router::member_href(&self.book_href, &meta.name)
    }

    fn book_href(&self) -> String {
        self.book_href.clone()
    }

    /// Streams the named cards in the order asked, each under its href in `hrefs`; names that do not exist get
    /// a 404 response.
    fn named_cards<W: AnswerSink>(
        &self,
        ms: &mut Multistatus<W>,
        props: &PropFind,
        names: &[String],
        hrefs: &[String],
    ) -> io::Result<()> {
        let mut next = 0;
        let mut failure = None;
        self.store
            .for_each_named_card(self.book.id, names, self.body_read(props), &mut |meta, body| {
                let mut step = || -> io::Result<()> {
                    while next < names.len() && names[next] != meta.name {
                        ms.status_response(&hrefs[next], 404, None)?;
                        next += 1;
                    }
                    let result = match hrefs.get(next) {
                        Some(href) => self.card_response(ms, props, href, meta, body),
                        // The store answers in the order asked; should it not, the card still gets its href.
                        None => self.card_response(ms, props, &self.card_href(meta), meta, body),
                    };
                    next += 1;
                    result
                };
                match step() {
                    Ok(()) => true,
                    Err(e) => {
                        failure = Some(e);
                        false
                    }
                }
            })
            .map_err(store_err)?;
        if let Some(e) = failure {
            return Err(e);
        }
        for href in &hrefs[next.min(hrefs.len())..] {
            ms.status_response(href, 404, None)?;
        }
        Ok(())
    }

    fn multiget<W: AnswerSink>(&self, ms: &mut Multistatus<W>, props: &PropFind, hrefs: &[String]) -> io::Result<()> {
        let mut names = Vec::new();
        let mut answered_hrefs = Vec::new();
        // An href must not appear twice in a multistatus (RFC 4918 §14.24): a card named twice, also in two
        // spellings (`a%26b.vcf`, `a&amp;b.vcf`), is answered once.
        let mut seen_names = std::collections::HashSet::new();
        let mut seen_hrefs = std::collections::HashSet::new();
        for href in hrefs {
            match router::card_name_in_book(href, &self.me, &self.book.segment) {
                Some(name) if seen_names.insert(name.clone()) => {
                    answered_hrefs.push(router::member_href(&self.book_href, &name));
                    names.push(name);
                }
                Some(_) => {}
                // Not a member of this book: answered as missing, under the href the client sent.
                None if seen_hrefs.insert(href.as_str()) => ms.status_response(href, 404, None)?,
                None => {}
            }
        }
        self.named_cards(ms, props, &names, &answered_hrefs)
    }

    fn query<W: AnswerSink>(
        &self,
        ms: &mut Multistatus<W>,
        props: &PropFind,
        filter: &Filter,
        limit: Option<usize>,
    ) -> io::Result<()> {
        let mut matched = 0usize;
        let mut truncated = false;
        let mut failure = None;
        let prefilter: Prefilter = filter.prefilter();
        self.store
            .for_each_candidate(self.book.id, &prefilter, &mut |meta, body| {
                let Some(bytes) = body.text() else { return true };
                let Some(card) = vcard::parse_stored(bytes) else { return true };
                if !filter.matches(&card) {
                    return true;
                }
                if limit.is_some_and(|l| matched >= l) {
                    truncated = true;
                    return false;
                }
                matched += 1;
                match self.card_response(ms, props, &self.card_href(meta), meta, CardBody::Text(bytes)) {
                    Ok(()) => true,
                    Err(e) => {
                        failure = Some(e);
                        false
                    }
                }
            })
            .map_err(store_err)?;
        if let Some(e) = failure {
            return Err(e);
        }
        if truncated {
            // RFC 6352 §8.6.1: the result was cut at the client's limit.
            ms.status_response(&self.book_href(), 507, Some(LIMIT_ERROR))?;
        }
        Ok(())
    }

    fn sync_collection<W: AnswerSink>(
        &self,
        ms: &mut Multistatus<W>,
        props: &PropFind,
        since: Option<i64>,
        limit: Option<usize>,
    ) -> io::Result<()> {
        let store: &dyn Store = self.store.as_ref();
        if since.is_none() && limit.is_none() {
            // Initial sync: every member. The revision is read first, so a change racing the listing shows up
            // again in the next delta instead of being lost.
            let revision = store.book_revision(self.book.id).map_err(store_err)?;
            let mut failure = None;
            store
                .for_each_card(self.book.id, self.body_read(props), &mut |meta, body| match self.card_response(
                    ms,
                    props,
                    &self.card_href(meta),
                    meta,
                    body,
                ) {
                    Ok(()) => true,
                    Err(e) => {
                        failure = Some(e);
                        false
                    }
                })
                .map_err(store_err)?;
            if let Some(e) = failure {
                return Err(e);
            }
            let mut book = self.book.clone();
            book.revision = revision;
            return ms.sync_token(&props::sync_token(&book));
        }
        let changes = store.changes_since(self.book.id, since.unwrap_or(0), limit).map_err(store_err)?;
        let initial = since.is_none();
        let mut changed = Vec::new();
        let mut changed_hrefs = Vec::new();
        for change in &changes.changes {
            let href = router::member_href(&self.book_href, &change.name);
            match change.kind {
                ChangeKind::Changed => {
                    changed.push(change.name.clone());
                    changed_hrefs.push(href);
                }
                // An initial listing reports only members that exist.
                ChangeKind::Deleted if initial => {}
                ChangeKind::Deleted => ms.status_response(&href, 404, None)?,
            }
        }
        self.named_cards(ms, props, &changed, &changed_hrefs)?;
        if changes.truncated {
            ms.status_response(&self.book_href(), 507, Some(LIMIT_ERROR))?;
        }
        let mut book = self.book.clone();
        book.revision = changes.revision;
        ms.sync_token(&props::sync_token(&book))
    }
}
