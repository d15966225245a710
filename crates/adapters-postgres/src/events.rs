//! The customers' event log ([`EventLog`]): the `events` table, written by the triggers of
//! migration `2026-12-03-000002_events` in the transaction of each change, read here.
//!
//! A transaction id is a 64-bit `xid8`; it travels as `int8` (through its text form, the one
//! cast PostgreSQL offers), which holds every id a cluster can reach.

use application::{
    ports::events::{Change, Event, EventLog, EventPosition, Horizon, Resumed},
    RepositoryError,
};
use async_trait::async_trait;
use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::{
    sql_types::{Bool, Int4, Int8, Nullable, Numeric, Text, Timestamptz},
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
    /// The log's readable end: the oldest transaction still running (or the next to start).
    struct ReadHorizon {}
    "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::int8 AS horizon"
}

prepared_statement! {
    /// Every event of the transactions from `$1` on that have ended, and the readable end
    /// (one row with no event when there is none).
    struct ReadEvents {
        from: i64 => Int8,
    }
    "WITH h AS (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS end_tx)
     SELECT h.end_tx::text::int8 AS horizon, true AS known,
            e.tx::text::int8 AS tx, e.id, e.user_id, e.order_number, e.status, e.accrual,
            e.uploaded_at, e.balance, e.withdrawn
     FROM h LEFT JOIN events e ON e.tx >= $1::text::xid8 AND e.tx < h.end_tx
     ORDER BY e.tx, e.id"
}

prepared_statement! {
    /// A customer's events after a position, before a horizon, at most `$5`; `known` says
    /// whether every event after the position is still in the log (none was removed after
    /// the retention); no event is read when not.
    struct ResumeEvents {
        user: i64 => Int8,
        tx: i64 => Int8,
        id: i64 => Int8,
        until: i64 => Int8,
        limit: i32 => Int4,
    }
    "WITH k AS (SELECT $2 > through AS known FROM events_pruned)
     SELECT 0::int8 AS horizon, k.known,
            e.tx::text::int8 AS tx, e.id, e.user_id, e.order_number, e.status, e.accrual,
            e.uploaded_at, e.balance, e.withdrawn
     FROM k LEFT JOIN LATERAL (
         SELECT * FROM events
         WHERE k.known AND user_id = $1 AND (tx, id) > ($2::text::xid8, $3)
           AND tx < $4::text::xid8
         ORDER BY tx, id LIMIT $5) e ON true
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
struct HorizonRow {
    #[diesel(sql_type = Int8)]
    horizon: i64,
}

/// A row of [`ReadEvents`] or [`ResumeEvents`]: an event, or none (its columns NULL).
#[derive(QueryableByName)]
struct EventRow {
    #[diesel(sql_type = Int8)]
    horizon: i64,
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
                number: order_number(&number)?,
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

#[async_trait]
impl EventLog for PgStore {
    async fn horizon(&self) -> Result<Horizon, RepositoryError> {
        let mut conn = self.conn().await?;
        let row: HorizonRow = ReadHorizon {}
            .get_result(&mut conn)
            .await
            .map_err(from_diesel)?;
        Ok(Horizon(transaction(row.horizon)?))
    }

    async fn read(&self, from: Horizon) -> Result<(Vec<Event>, Horizon), RepositoryError> {
        let mut conn = self.conn().await?;
        let rows: Vec<EventRow> = ReadEvents {
            from: stored(from.0),
        }
        .load(&mut conn)
        .await
        .map_err(from_diesel)?;
        let end = <[EventRow]>::first(&rows)
            .map(|row| row.horizon)
            .ok_or_else(|| corrupt("no readable end of the event log".to_owned()))?;
        let mut events = Vec::with_capacity(rows.len());
        for row in rows {
            events.extend(row.event()?);
        }
        // The end never goes back, even if the database's answer did (after a failover to a
        // standby that had not seen the newest transactions start).
        Ok((events, Horizon(transaction(end)?.max(from.0))))
    }

    async fn resume(
        &self,
        user: UserId,
        after: EventPosition,
        until: Horizon,
        limit: u32,
    ) -> Result<Resumed, RepositoryError> {
        let mut conn = self.conn().await?;
        let rows: Vec<EventRow> = ResumeEvents {
            user: user.0,
            tx: stored(after.tx),
            id: after.id,
            until: stored(until.0),
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
