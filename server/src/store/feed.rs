//! The change feed: history entries "after my cursor", which cannot skip a commit.
//!
//! A history entry's id comes from a sequence, taken when the entry is inserted; the entry is
//! seen by others when its transaction commits. On Postgres the two orders differ: transaction A
//! takes id 41, B takes 42, B commits first. A reader of `id > cursor` sees 42, moves its cursor
//! past 41, and never sees 41 once A commits — that run's card stays where it was.
//!
//! **Postgres.** Each entry also records the id of the transaction that wrote it (`tx xid8`,
//! defaulting to `pg_current_xact_id()`), and the feed is ordered by `(tx, id)`. A read only
//! returns entries whose `tx` is below the oldest transaction still in flight
//! (`pg_snapshot_xmin(pg_current_snapshot())`): every transaction below it has ended, so no entry
//! can ever appear below that line again, and a cursor that only moves through entries below it
//! cannot pass one that commits later. Entries of a transaction still open wait (with those of
//! any later transaction) until it ends; an aborted transaction leaves nothing to wait for.
//! The price is latency, not loss: a transaction left open on the database holds the feed back
//! while it lasts (`facteur_feed_held_back_seconds` shows it), where the window alternative (re-read
//! the last N seconds, de-duplicate) loses an entry whose transaction outlives the window.
//! Entries written before this column existed read as `tx = 0`, all of them before every new one.
//!
//! **SQLite.** One writer at a time: an id is taken inside the write transaction, which holds the
//! database's write lock until it commits, so ids commit in their own order and `id > cursor` is
//! exact. `tx` is always 0 there. `run_events.id` is `AUTOINCREMENT`, so an id is never reused
//! after the newest entries are pruned (a reused id below a cursor would be skipped).

use crate::domain::{Error, Result};
use sea_orm::{ConnectionTrait, DatabaseBackend, DatabaseConnection, Statement, Value};

/// A position in the change feed: after the entry `id` of transaction `tx`. Opaque to clients:
/// `<tx>-<id>`; a bare `<id>` (cursors of earlier versions) reads as `0-<id>`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct FeedCursor {
    /// The writing transaction (Postgres `xid8`; 0 on SQLite and for entries older than it).
    pub tx: u64,
    /// The history entry.
    pub id: i64,
}

impl std::fmt::Display for FeedCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.tx, self.id)
    }
}

impl std::str::FromStr for FeedCursor {
    type Err = Error;
    fn from_str(s: &str) -> Result<FeedCursor> {
        let bad = || {
            Error::invalid(
                "cursor",
                format!("cursor `{s}` is not a cursor from an update"),
            )
        };
        let (tx, id) = match s.split_once('-') {
            Some((tx, id)) => (tx.parse::<u64>().map_err(|_| bad())?, id),
            None => (0, s),
        };
        let id = id.parse::<i64>().map_err(|_| bad())?;
        if id < 0 {
            return Err(bad());
        }
        Ok(FeedCursor { tx, id })
    }
}

/// One entry of the feed: where it is, and whose run it belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeedEntry {
    pub cursor: FeedCursor,
    pub run_id: String,
}

const PG_AFTER: &str = "SELECT e.id, e.run_id, e.tx::text AS tx FROM run_events e \
    WHERE (e.tx, e.id) > ($1::text::xid8, $2) \
      AND e.tx < pg_snapshot_xmin(pg_current_snapshot()) \
      AND EXISTS (SELECT 1 FROM runs r WHERE r.id = e.run_id AND r.guild_id <> '') \
    ORDER BY e.tx, e.id LIMIT $3";

const SQLITE_AFTER: &str = "SELECT e.id, e.run_id, '0' AS tx FROM run_events e \
    WHERE e.id > ? \
      AND EXISTS (SELECT 1 FROM runs r WHERE r.id = e.run_id AND r.guild_id <> '') \
    ORDER BY e.id LIMIT ?";

/// Entries of runs started from Discord after `cursor`, in feed order, at most `limit`.
pub(crate) async fn discord_after(
    db: &DatabaseConnection,
    cursor: FeedCursor,
    limit: u64,
) -> Result<Vec<FeedEntry>> {
    let backend = db.get_database_backend();
    let limit = limit.min(i64::MAX as u64) as i64;
    let statement = match backend {
        DatabaseBackend::Postgres => Statement::from_sql_and_values(
            backend,
            PG_AFTER,
            [cursor.tx.to_string().into(), cursor.id.into(), limit.into()],
        ),
        _ => Statement::from_sql_and_values(
            backend,
            SQLITE_AFTER,
            [Value::from(cursor.id), limit.into()],
        ),
    };
    let rows = db.query_all_raw(statement).await?;
    rows.iter()
        .map(|r| {
            let id: i64 = r.try_get("", "id")?;
            let run_id: String = r.try_get("", "run_id")?;
            let tx: String = r.try_get("", "tx")?;
            let tx = tx
                .parse::<u64>()
                .map_err(|e| Error::Internal(format!("feed transaction id `{tx}`: {e}")))?;
            Ok(FeedEntry {
                cursor: FeedCursor { tx, id },
                run_id,
            })
        })
        .collect()
}

/// Where a watcher without a cursor starts: after everything that is final now. On Postgres,
/// entries of transactions still in flight are after it (delivered when they commit); entries
/// already committed above the line may be delivered once more, which only repeats a card.
pub(crate) async fn now(db: &DatabaseConnection) -> Result<FeedCursor> {
    let backend = db.get_database_backend();
    let sql = match backend {
        DatabaseBackend::Postgres => {
            "SELECT pg_snapshot_xmin(pg_current_snapshot())::text AS tx, 0::bigint AS id"
        }
        _ => "SELECT '0' AS tx, COALESCE(MAX(id), 0) AS id FROM run_events",
    };
    let row = db
        .query_one_raw(Statement::from_string(backend, sql))
        .await?
        .ok_or_else(|| Error::Internal("feed position: no row".into()))?;
    let tx: String = row.try_get("", "tx")?;
    let id: i64 = row.try_get("", "id")?;
    let tx = tx
        .parse::<u64>()
        .map_err(|e| Error::Internal(format!("feed transaction id `{tx}`: {e}")))?;
    // On Postgres `(xmin, 0)` is before every entry of xmin itself (ids start at 1).
    Ok(FeedCursor { tx, id })
}

/// How long the oldest transaction still writing has been open (seconds; 0 when none, and on
/// SQLite): how far behind it holds the feed.
pub(crate) async fn held_back_seconds(db: &DatabaseConnection) -> Result<f64> {
    let backend = db.get_database_backend();
    if backend != DatabaseBackend::Postgres {
        return Ok(0.0);
    }
    let row = db
        .query_one_raw(Statement::from_string(
            backend,
            "SELECT COALESCE(EXTRACT(EPOCH FROM now() - MIN(xact_start)), 0)::float8 AS s \
             FROM pg_stat_activity WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid()",
        ))
        .await?;
    Ok(row
        .and_then(|r| r.try_get::<f64>("", "s").ok())
        .unwrap_or(0.0)
        .max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_read_back_and_old_ones_still_parse() {
        let c = FeedCursor { tx: 812, id: 41 };
        assert_eq!(c.to_string().parse::<FeedCursor>().expect("round trip"), c);
        assert_eq!(
            "41".parse::<FeedCursor>().expect("an old cursor"),
            FeedCursor { tx: 0, id: 41 }
        );
        for bad in ["", "x", "1-", "-1", "1-x", "1-2-3", "-5"] {
            assert!(bad.parse::<FeedCursor>().is_err(), "{bad}");
        }
        assert!(FeedCursor { tx: 1, id: 1 } > FeedCursor { tx: 0, id: 99 });
    }
}
