//! The customers' event log ([`EventLog`]): the `events` table, written by the triggers of
//! migration `2026-12-03-000002_events` in the transaction of each change, read here.
//!
//! A transaction id is a 64-bit `xid8`; it travels as `int8` (through its text form, the one
//! cast PostgreSQL offers), which holds every id a cluster can reach.

use application::{
    ports::events::{Change, Cursor, Event, EventLog, EventPosition, Resumed, Snapshot},
    RepositoryError,
};
use async_trait::async_trait;
use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::{
    sql_types::{Array, Bool, Int4, Int8, Nullable, Numeric, Text, Timestamptz},
    QueryableByName,
};
use diesel_async::RunQueryDsl;
use domain::{Balance, Order, UserId};
use rust_decimal::Decimal;

use crate::{
    error::{corrupt, from_diesel},
    models::{money, order_number, DbOrderStatus},
    prepared::prepared_statement,
    schema::sql_types::OrderStatus,
    PgStore,
};

prepared_statement! {
    /// Which transactions have ended now.
    struct ReadSnapshot {}
    "SELECT pg_current_snapshot()::text AS snapshot"
}

prepared_statement! {
    /// Every event of the transactions that had not ended at snapshot `$1` (running then, or
    /// not yet begun: from its end `$2` on) and have now, and the snapshot now (one row with no
    /// event when there is none). The statement's rows and `pg_current_snapshot()` share one
    /// snapshot.
    ///
    /// `$3` bounds the range from above (far beyond any transaction that can have begun since)
    /// so that a generic plan, which cannot see the values, still expects a narrow range and
    /// reads it through the index: expecting a third of the table for an open range, it
    /// would scan the whole log on every read.
    struct ReadEvents {
        since: String => Text,
        from: i64 => Int8,
        before: i64 => Int8,
    }
    "WITH s AS (SELECT pg_current_snapshot() AS now)
     SELECT s.now::text AS snapshot, true AS known,
            e.tx::text::int8 AS tx, e.id, e.user_id, e.order_number, e.status, e.accrual,
            e.uploaded_at, e.balance, e.withdrawn
     FROM s LEFT JOIN events e
       ON (e.tx >= $2::text::xid8 AND e.tx < $3::text::xid8)
          OR e.tx = ANY (ARRAY(SELECT pg_snapshot_xip($1::pg_snapshot)))
     ORDER BY e.tx, e.id"
}

prepared_statement! {
    /// A customer's events after position (`$2`, `$3`), but for those of transactions `$5`
    /// up to ids `$6`, of the transactions that had ended at snapshot `$4`, at most `$7`;
    /// `known` says whether every event after the position is still in the log (none was
    /// removed after the retention); no event is read when not.
    struct ResumeEvents {
        user: i64 => Int8,
        tx: i64 => Int8,
        id: i64 => Int8,
        until: String => Text,
        also_tx: Vec<i64> => Array<Int8>,
        also_id: Vec<i64> => Array<Int8>,
        limit: i32 => Int4,
    }
    "WITH k AS (SELECT $2 > through AS known FROM events_pruned)
     SELECT ''::text AS snapshot, k.known,
            e.tx::text::int8 AS tx, e.id, e.user_id, e.order_number, e.status, e.accrual,
            e.uploaded_at, e.balance, e.withdrawn
     FROM k LEFT JOIN LATERAL (
         SELECT * FROM events
         WHERE k.known AND user_id = $1 AND (tx, id) > ($2::text::xid8, $3)
           AND tx < pg_snapshot_xmax($4::pg_snapshot)
           AND pg_visible_in_snapshot(tx, $4::pg_snapshot)
           AND NOT EXISTS (
               SELECT 1 FROM unnest($5::int8[], $6::int8[]) AS a(tx, id)
               WHERE a.tx::text::xid8 = events.tx AND events.id <= a.id)
         ORDER BY tx, id LIMIT $7) e ON true
     ORDER BY e.tx, e.id"
}

prepared_statement! {
    /// Removes at most `$2` events written more than `$1` µs ago, skipping rows another
    /// instance is removing, and moves `events_pruned` past them.
    struct PruneEvents {
        older_than_us: i64 => Int8,
        batch: i32 => Int4,
    }
    "WITH doomed AS (
         SELECT ctid FROM events WHERE created_at < now() - $1 * interval '1 microsecond'
         LIMIT $2 FOR UPDATE SKIP LOCKED),
     gone AS (
         DELETE FROM events WHERE ctid IN (SELECT ctid FROM doomed) RETURNING tx::text::int8 AS tx),
     marked AS (
         UPDATE events_pruned SET through = greatest(through, (SELECT max(tx) FROM gone))
         WHERE EXISTS (SELECT 1 FROM gone))
     SELECT count(*) AS removed FROM gone"
}

#[derive(QueryableByName)]
struct Removed {
    #[diesel(sql_type = Int8)]
    removed: i64,
}

#[derive(QueryableByName)]
struct SnapshotRow {
    #[diesel(sql_type = Text)]
    snapshot: String,
}

/// A row of [`ReadEvents`] or [`ResumeEvents`]: an event, or none (its columns NULL).
#[derive(QueryableByName)]
struct EventRow {
    /// `pg_current_snapshot()`'s text (of a read; empty for a resume).
    #[diesel(sql_type = Text)]
    snapshot: String,
    #[diesel(sql_type = Bool)]
    known: bool,
    #[diesel(sql_type = Nullable<Int8>)]
    tx: Option<i64>,
    #[diesel(sql_type = Nullable<Int8>)]
    id: Option<i64>,
    #[diesel(sql_type = Nullable<Int8>)]
    user_id: Option<i64>,
    #[diesel(sql_type = Nullable<Text>)]
    order_number: Option<String>,
    #[diesel(sql_type = Nullable<OrderStatus>)]
    status: Option<DbOrderStatus>,
    #[diesel(sql_type = Nullable<Numeric>)]
    accrual: Option<Decimal>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    uploaded_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<Numeric>)]
    balance: Option<Decimal>,
    #[diesel(sql_type = Nullable<Numeric>)]
    withdrawn: Option<Decimal>,
}

impl EventRow {
    /// The event of the row; `None` for the row that carries no event.
    fn event(self) -> Result<Option<Event>, RepositoryError> {
        let (Some(tx), Some(id), Some(user)) = (self.tx, self.id, self.user_id) else {
            return Ok(None);
        };
        let change = match (
            self.order_number,
            self.status,
            self.uploaded_at,
            self.balance,
        ) {
            (Some(number), Some(status), Some(uploaded_at), None) => Change::Order(Order {
                number: order_number(number)?,
                status: status.into(),
                accrual: self.accrual.map(money).transpose()?,
                uploaded_at,
            }),
            (None, None, None, Some(current)) => Change::Balance(Balance {
                current: money(current)?,
                withdrawn: money(
                    self.withdrawn
                        .ok_or_else(|| corrupt("an event's withdrawn".to_owned()))?,
                )?,
            }),
            _ => {
                return Err(corrupt(
                    "an event that is neither an order nor a balance".to_owned(),
                ))
            }
        };
        Ok(Some(Event {
            position: EventPosition {
                tx: transaction(tx)?,
                id,
            },
            user: UserId(user),
            change,
        }))
    }
}

fn transaction(tx: i64) -> Result<u64, RepositoryError> {
    u64::try_from(tx).map_err(|_| corrupt("a negative transaction id".to_owned()))
}

fn stored(tx: u64) -> i64 {
    // Transaction ids stay far below 2^63 (a cluster would take millennia to get there).
    i64::try_from(tx).unwrap_or(i64::MAX)
}

/// A `pg_snapshot` from its text, `xmin:xmax:running,running`.
fn snapshot(text: &str) -> Result<Snapshot, RepositoryError> {
    let bad = || corrupt(format!("a snapshot {text:?}"));
    let mut parts = text.splitn(3, ':');
    let mut next = || parts.next().ok_or_else(bad);
    let xmin = next()?.parse().map_err(|_| bad())?;
    let xmax = next()?.parse().map_err(|_| bad())?;
    let running = next()?;
    let mut running = if running.is_empty() {
        Vec::new()
    } else {
        running
            .split(',')
            .map(str::parse)
            .collect::<Result<Vec<u64>, _>>()
            .map_err(|_| bad())?
    };
    running.sort_unstable();
    Ok(Snapshot {
        xmin,
        xmax,
        running,
    })
}

/// A `pg_snapshot`'s text.
fn snapshot_text(snapshot: &Snapshot) -> String {
    let running: Vec<String> = snapshot.running.iter().map(u64::to_string).collect();
    format!("{}:{}:{}", snapshot.xmin, snapshot.xmax, running.join(","))
}

#[async_trait]
impl EventLog for PgStore {
    async fn snapshot(&self) -> Result<Snapshot, RepositoryError> {
        let mut conn = self.conn().await?;
        let row: SnapshotRow = ReadSnapshot {}
            .get_result(&mut conn)
            .await
            .map_err(from_diesel)?;
        snapshot(&row.snapshot)
    }

    async fn read(&self, since: &Snapshot) -> Result<(Vec<Event>, Snapshot), RepositoryError> {
        let mut conn = self.conn().await?;
        let rows: Vec<EventRow> = ReadEvents {
            since: snapshot_text(since),
            from: stored(since.xmax),
            before: stored(since.xmax).saturating_add(1 << 40),
        }
        .load(&mut conn)
        .await
        .map_err(from_diesel)?;
        let now = <[EventRow]>::first(&rows)
            .map(|row| snapshot(&row.snapshot))
            .ok_or_else(|| corrupt("no snapshot with the event log".to_owned()))??;
        let mut events = Vec::with_capacity(rows.len());
        for row in rows {
            events.extend(row.event()?);
        }
        Ok((events, now))
    }

    async fn resume(
        &self,
        user: UserId,
        after: &Cursor,
        until: &Snapshot,
        limit: u32,
    ) -> Result<Resumed, RepositoryError> {
        let mut conn = self.conn().await?;
        let rows: Vec<EventRow> = ResumeEvents {
            user: user.0,
            tx: stored(after.through.tx),
            id: after.through.id,
            until: snapshot_text(until),
            also_tx: after.also.iter().map(|a| stored(a.tx)).collect(),
            also_id: after.also.iter().map(|a| a.id).collect(),
            limit: i32::try_from(limit).unwrap_or(i32::MAX),
        }
        .load(&mut conn)
        .await
        .map_err(from_diesel)?;
        if !<[EventRow]>::first(&rows).is_some_and(|row| row.known) {
            return Ok(Resumed::Lost);
        }
        let mut events = Vec::with_capacity(rows.len());
        for row in rows {
            events.extend(row.event()?);
        }
        Ok(Resumed::Events(events))
    }

    async fn prune(&self, older_than: Duration, batch: u32) -> Result<u64, RepositoryError> {
        let mut conn = self.conn().await?;
        let row: Removed = PruneEvents {
            older_than_us: i64::try_from(older_than.as_micros()).unwrap_or(i64::MAX),
            batch: i32::try_from(batch).unwrap_or(i32::MAX),
        }
        .get_result(&mut conn)
        .await
        .map_err(from_diesel)?;
        Ok(u64::try_from(row.removed).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_reads_back_as_postgresql_prints_it() {
        for text in ["741:741:", "741:760:742,755", "5:9:8"] {
            assert_eq!(snapshot_text(&snapshot(text).expect(text)), text);
        }
        let s = snapshot("741:760:755,742").expect("unsorted");
        assert_eq!(s.running, vec![742, 755]);
        assert!(s.ended(740) && s.ended(743) && !s.ended(742) && !s.ended(760));
        for bad in ["", "1", "1:2", "a:2:", "1:2:x"] {
            assert!(snapshot(bad).is_err(), "{bad}");
        }
    }
}
