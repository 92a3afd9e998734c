//! The record-keeping half of the store: where a contact came from, integrations that feed contacts in,
//! a contact's event history, and what a data-subject request needs to find and erase. Kept apart from the
//! sync core (`Store`) so that each trait stays narrow; a backend implements both.

use super::{AuditRecord, BookId, Card, NewCard, Precondition, PutOutcome, Result};

/// How a contact arrived and who touched it last.
#[derive(Debug, Clone, PartialEq)]
pub struct Origin {
    pub source: String,
    pub created_at: i64,
    pub created_by: String,
    pub changed_at: i64,
    pub changed_by: String,
    pub changed_via: String,
}

/// An outside system allowed to ingest contacts into one book.
#[derive(Debug, Clone)]
pub struct Integration {
    pub id: i64,
    pub book: BookId,
    pub owner: String,
    pub segment: String,
    pub name: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub book: BookId,
    pub uid: String,
    pub email: String,
    pub source: String,
    pub starts_at: String,
    pub starts_unix: i64,
    pub ends_at: Option<String>,
    pub title: Option<String>,
    pub host: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ContactEvent {
    pub id: i64,
    pub event: NewEvent,
    pub recorded_at: i64,
}

/// A card found by e-mail, with the book it lives in.
#[derive(Debug, Clone)]
pub struct LocatedCard {
    pub book: BookId,
    pub owner: String,
    pub segment: String,
    pub card: Card,
}

/// Who writes a card (a username, or an integration) and through what (`carddav: <user agent>`, `api`).
pub struct Author<'a> {
    pub actor: &'a str,
    pub via: &'a str,
}

pub trait Records {
    /// `put_card` that also notes who wrote the card and through what (a creation starts its origin, a change
    /// updates "last changed"), in the same transaction: a card is never stored without its origin.
    fn put_card_by(
        &self,
        book: BookId,
        name: &str,
        card: &NewCard,
        pre: &Precondition,
        author: &Author,
    ) -> Result<PutOutcome>;
    /// `put_cards` (all or none) with every card's origin, in the same transaction.
    fn put_cards_by(
        &self,
        book: BookId,
        cards: &[(String, NewCard, Precondition)],
        author: &Author,
    ) -> Result<Vec<PutOutcome>>;
    fn origin(&self, book: BookId, uid: &str) -> Result<Option<Origin>>;

    fn create_integration(&self, book: BookId, name: &str, token_hash: &str) -> Result<Integration>;
    fn integration_by_token_hash(&self, token_hash: &str) -> Result<Option<Integration>>;
    fn integrations(&self) -> Result<Vec<Integration>>;
    fn delete_integration(&self, id: i64) -> Result<bool>;

    fn add_event(&self, event: &NewEvent) -> Result<()>;
    fn events(&self, book: BookId, uid: &str) -> Result<Vec<ContactEvent>>;
    /// Events recorded for an e-mail address (folded) in any book, also when its card is gone.
    fn events_for_email(&self, email: &str) -> Result<Vec<ContactEvent>>;

    /// Cards that carry the e-mail address (compared case-insensitively, as `vcard::unicode_casemap`), in one
    /// book or in all.
    fn cards_with_email(&self, book: Option<BookId>, email: &str) -> Result<Vec<LocatedCard>>;
    /// Up to `limit` cards of the book that have an organization and an address at `domain` (compared as
    /// `vcard::unicode_casemap`).
    fn org_cards_at_domain(&self, book: BookId, domain: &str, limit: usize) -> Result<Vec<Card>>;

    /// The audit records `keep` accepts, oldest first (what a record is about is the caller's business: see
    /// `privacy::Subject`).
    fn audit_matching(&self, keep: &dyn Fn(&AuditRecord) -> bool) -> Result<Vec<AuditRecord>>;
    /// Writes these records' target and detail back (an erasure's redaction), in one transaction.
    fn rewrite_audit(&self, records: &[AuditRecord]) -> Result<()>;
    /// Drops a contact's event history and origin (after its card was deleted for an erasure).
    fn forget_contact(&self, book: BookId, uid: &str, email: &str) -> Result<usize>;

    fn set_event_retention(&self, book: BookId, days: Option<i64>) -> Result<()>;
    fn event_retention(&self, book: BookId) -> Result<Option<i64>>;
    /// Deletes events older than each book's retention period at time `now`; returns (book, count) per book.
    fn expire_events(&self, now: i64) -> Result<Vec<(BookId, usize)>>;
}
