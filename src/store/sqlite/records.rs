//! SQLite implementation of [`Records`]: provenance, integrations, events, data-subject lookups.

use super::{META_COLUMNS, SqliteStore, meta_from_row, now};
use crate::store::*;
use rusqlite::{OptionalExtension, params};

const INTEGRATION_SELECT: &str = "SELECT i.id, i.book_id, u.username, b.segment, i.name, i.created_at
     FROM integrations i JOIN addressbooks b ON b.id = i.book_id JOIN users u ON u.id = b.owner_id";

fn integration_from_row(r: &rusqlite::Row) -> rusqlite::Result<Integration> {
    Ok(Integration {
        id: r.get(0)?,
        book: r.get(1)?,
        owner: r.get(2)?,
        segment: r.get(3)?,
        name: r.get(4)?,
        created_at: r.get(5)?,
    })
}

const EVENT_COLUMNS: &str =
    "id, book_id, uid, email, source, starts_at, starts_unix, ends_at, title, host, recorded_at";

fn event_from_row(r: &rusqlite::Row) -> rusqlite::Result<ContactEvent> {
    Ok(ContactEvent {
        id: r.get(0)?,
        event: NewEvent {
            book: r.get(1)?,
            uid: r.get(2)?,
            email: r.get(3)?,
            source: r.get(4)?,
            starts_at: r.get(5)?,
            starts_unix: r.get(6)?,
            ends_at: r.get(7)?,
            title: r.get(8)?,
            host: r.get(9)?,
        },
        recorded_at: r.get(10)?,
    })
}

/// `emails` holds each address in `vcard::unicode_casemap` form, one per line (and the bare address on a line of
/// its own when it was written with blanks or `mailto:`); this matches one whole line with `contact::email_key`.
const HAS_EMAIL: &str = "instr(char(10) || c.emails || char(10), char(10) || ?1 || char(10)) > 0";

/// Writes one card and notes who created or last changed it, and through what, inside the caller's
/// transaction.
fn put_noted(
    tx: &rusqlite::Transaction,
    book: BookId,
    name: &str,
    card: &NewCard,
    pre: &Precondition,
    author: &Author,
) -> Result<PutOutcome> {
    let outcome = super::put_card_in(tx, book, name, card, pre)?;
    let ts = now();
    let (uid, via, actor) = (&card.uid, author.via, author.actor);
    if matches!(outcome, PutOutcome::Created { .. }) {
        tx.prepare_cached(
            "INSERT OR REPLACE INTO card_origins
                 (book_id, uid, source, created_at, created_by, changed_at, changed_by, changed_via)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?4, ?5, ?3)",
        )?
        .execute(params![book, uid, via, ts, actor])?;
    } else {
        // A card that predates provenance keeps "unknown" as its source.
        tx.prepare_cached(
            "INSERT INTO card_origins
                 (book_id, uid, source, created_at, created_by, changed_at, changed_by, changed_via)
                 VALUES (?1, ?2, 'unknown', ?4, '', ?4, ?5, ?3)
                 ON CONFLICT (book_id, uid) DO UPDATE SET changed_at = excluded.changed_at,
                     changed_by = excluded.changed_by, changed_via = excluded.changed_via",
        )?
        .execute(params![book, uid, via, ts, actor])?;
    }
    Ok(outcome)
}

impl Records for SqliteStore {
    fn put_card_by(
        &self,
        book: BookId,
        name: &str,
        card: &NewCard,
        pre: &Precondition,
        author: &Author,
    ) -> Result<PutOutcome> {
        self.write(|tx| put_noted(tx, book, name, card, pre, author))
    }

    fn put_cards_by(
        &self,
        book: BookId,
        cards: &[(String, NewCard, Precondition)],
        author: &Author,
    ) -> Result<Vec<PutOutcome>> {
        self.write(|tx| cards.iter().map(|(name, card, pre)| put_noted(tx, book, name, card, pre, author)).collect())
    }

    fn origin(&self, book: BookId, uid: &str) -> Result<Option<Origin>> {
        self.read(|c| {
            Ok(c.prepare_cached(
                "SELECT source, created_at, created_by, changed_at, changed_by, changed_via
                 FROM card_origins WHERE book_id = ?1 AND uid = ?2",
            )?
            .query_row(params![book, uid], |r| {
                Ok(Origin {
                    source: r.get(0)?,
                    created_at: r.get(1)?,
                    created_by: r.get(2)?,
                    changed_at: r.get(3)?,
                    changed_by: r.get(4)?,
                    changed_via: r.get(5)?,
                })
            })
            .optional()?)
        })
    }

    fn create_integration(&self, book: BookId, name: &str, token_hash: &str) -> Result<Integration> {
        let id = self.write(|tx| {
            let taken: Option<i64> = tx
                .query_row("SELECT id FROM integrations WHERE book_id = ?1 AND name = ?2", params![book, name], |r| {
                    r.get(0)
                })
                .optional()?;
            if taken.is_some() {
                return Err(Error::AlreadyExists);
            }
            tx.execute(
                "INSERT INTO integrations (book_id, name, token_hash, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![book, name, token_hash, now()],
            )?;
            Ok(tx.last_insert_rowid())
        })?;
        self.read(|c| Ok(c.query_row(&format!("{INTEGRATION_SELECT} WHERE i.id = ?1"), [id], integration_from_row)?))
    }

    fn integration_by_token_hash(&self, token_hash: &str) -> Result<Option<Integration>> {
        self.read(|c| {
            Ok(c.prepare_cached(&format!("{INTEGRATION_SELECT} WHERE i.token_hash = ?1"))?
                .query_row([token_hash], integration_from_row)
                .optional()?)
        })
    }

    fn integrations(&self) -> Result<Vec<Integration>> {
        self.read(|c| {
            let mut stmt = c.prepare(&format!("{INTEGRATION_SELECT} ORDER BY i.id"))?;
            let rows = stmt.query_map([], integration_from_row)?.collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
    }

    fn delete_integration(&self, id: i64) -> Result<bool> {
        self.write(|tx| Ok(tx.execute("DELETE FROM integrations WHERE id = ?1", [id])? > 0))
    }

    fn add_event(&self, e: &NewEvent) -> Result<()> {
        self.write(|tx| {
            tx.prepare_cached(
                "INSERT INTO contact_events
                 (book_id, uid, email, source, starts_at, starts_unix, ends_at, title, host, recorded_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?
            .execute(params![
                e.book,
                e.uid,
                e.email,
                e.source,
                e.starts_at,
                e.starts_unix,
                e.ends_at,
                e.title,
                e.host,
                now()
            ])?;
            Ok(())
        })
    }

    fn events(&self, book: BookId, uid: &str) -> Result<Vec<ContactEvent>> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {EVENT_COLUMNS} FROM contact_events WHERE book_id = ?1 AND uid = ?2 ORDER BY starts_unix, id"
            ))?;
            let rows = stmt.query_map(params![book, uid], event_from_row)?.collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
    }

    fn events_for_email(&self, email: &str) -> Result<Vec<ContactEvent>> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {EVENT_COLUMNS} FROM contact_events WHERE email = ?1 ORDER BY starts_unix, id"
            ))?;
            let rows = stmt.query_map([email], event_from_row)?.collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
    }

    fn cards_with_email(&self, book: Option<BookId>, email: &str) -> Result<Vec<LocatedCard>> {
        self.read(|c| {
            let columns = META_COLUMNS.split(", ").map(|col| format!("c.{col}")).collect::<Vec<_>>().join(", ");
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {columns}, c.vcard, c.book_id, u.username, b.segment
                 FROM cards c JOIN addressbooks b ON b.id = c.book_id JOIN users u ON u.id = b.owner_id
                 WHERE {HAS_EMAIL} AND (?2 IS NULL OR c.book_id = ?2) ORDER BY c.book_id, c.name"
            ))?;
            let rows = stmt
                .query_map(params![crate::vcard::contact::email_key(email), book], |r| {
                    Ok(LocatedCard {
                        card: Card { meta: meta_from_row(r)?, vcard: r.get(7)? },
                        book: r.get(8)?,
                        owner: r.get(9)?,
                        segment: r.get(10)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
    }

    fn org_cards_at_domain(&self, book: BookId, domain: &str, limit: usize) -> Result<Vec<Card>> {
        self.read(|c| {
            // `emails` lines end in "@domain"; the pattern's own wildcards are escaped.
            // The column holds `vcard::unicode_casemap` of each address, so the domain is compared in that form.
            let domain = crate::vcard::unicode_casemap(domain.trim());
            let escaped = domain.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
            let pattern = format!("%@{escaped}");
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {META_COLUMNS}, vcard FROM cards
                 WHERE book_id = ?1 AND org <> ''
                   AND (char(10) || emails || char(10)) LIKE ?2 || char(10) || '%' ESCAPE '\\'
                 ORDER BY modified_at DESC LIMIT ?3"
            ))?;
            let rows = stmt
                .query_map(params![book, pattern, limit as i64], |r| {
                    Ok(Card { meta: meta_from_row(r)?, vcard: r.get(7)? })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
    }

    fn audit_matching(&self, keep: &dyn Fn(&AuditRecord) -> bool) -> Result<Vec<AuditRecord>> {
        self.read(|c| {
            let mut stmt = c.prepare("SELECT id, at, actor, action, target, detail FROM audit ORDER BY id")?;
            let mut rows = stmt.query([])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                let record = AuditRecord {
                    id: r.get(0)?,
                    at: r.get(1)?,
                    actor: r.get(2)?,
                    action: r.get(3)?,
                    target: r.get(4)?,
                    detail: r.get(5)?,
                };
                if keep(&record) {
                    out.push(record);
                }
            }
            Ok(out)
        })
    }

    fn rewrite_audit(&self, records: &[AuditRecord]) -> Result<()> {
        self.write(|tx| {
            let mut update = tx.prepare_cached("UPDATE audit SET target = ?1, detail = ?2 WHERE id = ?3")?;
            for record in records {
                update.execute(params![record.target, record.detail, record.id])?;
            }
            Ok(())
        })
    }

    fn forget_contact(&self, book: BookId, uid: &str, email: &str) -> Result<usize> {
        self.write(|tx| {
            let events = tx.execute(
                "DELETE FROM contact_events WHERE (book_id = ?1 AND uid = ?2) OR email = ?3",
                params![book, uid, email],
            )?;
            tx.execute("DELETE FROM card_origins WHERE book_id = ?1 AND uid = ?2", params![book, uid])?;
            Ok(events)
        })
    }

    fn set_event_retention(&self, book: BookId, days: Option<i64>) -> Result<()> {
        self.write(|tx| {
            let n =
                tx.execute("UPDATE addressbooks SET event_retention_days = ?1 WHERE id = ?2", params![days, book])?;
            if n == 0 { Err(Error::NotFound) } else { Ok(()) }
        })
    }

    fn event_retention(&self, book: BookId) -> Result<Option<i64>> {
        self.read(|c| {
            Ok(c.query_row("SELECT event_retention_days FROM addressbooks WHERE id = ?1", [book], |r| r.get(0))
                .optional()?
                .flatten())
        })
    }

    fn expire_events(&self, now: i64) -> Result<Vec<(BookId, usize)>> {
        self.write(|tx| {
            let books: Vec<(BookId, i64)> = {
                let mut stmt = tx.prepare(
                    "SELECT id, event_retention_days FROM addressbooks WHERE event_retention_days IS NOT NULL",
                )?;
                stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<rusqlite::Result<Vec<_>>>()?
            };
            let mut out = Vec::new();
            for (book, days) in books {
                let cutoff = now - days.max(0) * 86_400;
                let n = tx.execute(
                    "DELETE FROM contact_events WHERE book_id = ?1 AND starts_unix < ?2",
                    params![book, cutoff],
                )?;
                if n > 0 {
                    out.push((book, n));
                }
            }
            Ok(out)
        })
    }
}
