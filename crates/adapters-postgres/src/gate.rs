//! [`ClusterGate`] in PostgreSQL: one `accrual_gate` row per accrual system, shared by every
//! instance.
//!
//! Each operation is one statement, so the row is its own lock: a slot is taken by an
//! `UPDATE` whose condition (no pause, the slot's time has come) PostgreSQL checks again on
//! the newest row version when two instances race, so two instances never take one slot.
//! Times come from PostgreSQL's clock (`clock_timestamp()`), and durations leave it, so the
//! instances' clocks need not agree. Nothing here depends on the session (no `LISTEN`, no
//! session settings), so it holds behind a transaction pooler too. A recorded 429 is also
//! announced on [`GATE_CHANNEL`], which only hastens what the other instances' reads of the
//! row find anyway.

use std::time::Duration;

use application::{
    ports::gate::{ClusterGate, GateState, Slot},
    RepositoryError,
};
use async_trait::async_trait;
use diesel::{
    sql_types::{Bool, Int8, Nullable, Text},
    QueryableByName,
};
use diesel_async::RunQueryDsl;

use crate::{
    error::from_diesel,
    listener::{Announce, GATE_CHANNEL},
    prepared::prepared_statement,
    PgStore,
};

prepared_statement! {
    /// The gate's state: the pause left, the pace unless it lapsed, the totals.
    struct ReadGate {
        name: String => Text,
        lapse_us: i64 => Int8,
    }
    "SELECT
         CASE WHEN paused_until > clock_timestamp() THEN
             (extract(epoch FROM paused_until - clock_timestamp()) * 1000000)::bigint END
             AS paused_us,
         CASE WHEN paced_at > clock_timestamp() - $2 * interval '1 microsecond' THEN interval_us END
             AS interval_us,
         paused_total_ms, rate_limited
     FROM accrual_gate WHERE name = $1"
}

prepared_statement! {
    /// Records a 429: the pause is extended to `retry_after` from now if that is later, the
    /// pace set and confirmed when the limit is known, and the next slot moved past the pause.
    struct RecordRateLimit {
        name: String => Text,
        retry_after_us: i64 => Int8,
        interval_us: Option<i64> => Nullable<Int8>,
        lapse_us: i64 => Int8,
    }
    "INSERT INTO accrual_gate AS g
         (name, paused_until, interval_us, paced_at, next_slot, paused_total_ms, rate_limited)
     VALUES ($1, clock_timestamp() + $2 * interval '1 microsecond', $3,
             CASE WHEN $3::bigint IS NULL THEN NULL ELSE clock_timestamp() END,
             clock_timestamp() + $2 * interval '1 microsecond', $2 / 1000, 1)
     ON CONFLICT (name) DO UPDATE SET
         paused_total_ms = g.paused_total_ms + GREATEST(0, (extract(epoch FROM
             EXCLUDED.paused_until - GREATEST(g.paused_until, clock_timestamp())) * 1000)::bigint),
         paused_until = GREATEST(g.paused_until, EXCLUDED.paused_until),
         interval_us = COALESCE(EXCLUDED.interval_us, g.interval_us),
         paced_at = COALESCE(EXCLUDED.paced_at, g.paced_at),
         next_slot = GREATEST(g.next_slot, EXCLUDED.paused_until),
         rate_limited = g.rate_limited + 1
     RETURNING
         CASE WHEN g.paused_until > clock_timestamp() THEN
             (extract(epoch FROM g.paused_until - clock_timestamp()) * 1000000)::bigint END
             AS paused_us,
         CASE WHEN g.paced_at > clock_timestamp() - $4 * interval '1 microsecond'
             THEN g.interval_us END AS interval_us,
         g.paused_total_ms, g.rate_limited"
}

prepared_statement! {
    /// Takes the next slot under the pace (GCRA: the next slot moves one interval past the
    /// later of itself and now) when it has come and no pause is in force; says how long to
    /// wait otherwise. Without a row, or with a lapsed pace and no pause, it grants at once.
    struct TakeSlot {
        name: String => Text,
        lapse_us: i64 => Int8,
    }
    "WITH cur AS (
         SELECT g.name, g.paused_until, g.next_slot, clock_timestamp() AS now,
                (g.interval_us IS NOT NULL
                 AND g.paced_at > clock_timestamp() - $2 * interval '1 microsecond') AS paced
         FROM accrual_gate g WHERE g.name = $1),
     taken AS (
         UPDATE accrual_gate g
         SET next_slot = GREATEST(g.next_slot, cur.now) + g.interval_us * interval '1 microsecond'
         FROM cur
         WHERE g.name = cur.name AND cur.paced
           AND (g.paused_until IS NULL OR g.paused_until <= cur.now)
           AND (g.next_slot IS NULL OR g.next_slot <= cur.now)
         RETURNING 1)
     SELECT
         EXISTS (SELECT 1 FROM taken)
             OR NOT COALESCE((SELECT paced OR paused_until > now FROM cur), false) AS granted,
         COALESCE((SELECT GREATEST(0, (extract(epoch FROM
             (CASE WHEN paced THEN GREATEST(paused_until, next_slot) ELSE paused_until END) - now)
             * 1000000)::bigint) FROM cur), 0) AS wait_us,
         COALESCE((SELECT paused_until > now FROM cur), false) AS paused"
}

#[derive(QueryableByName)]
struct GateRow {
    #[diesel(sql_type = Nullable<Int8>)]
    paused_us: Option<i64>,
    #[diesel(sql_type = Nullable<Int8>)]
    interval_us: Option<i64>,
    #[diesel(sql_type = Int8)]
    paused_total_ms: i64,
    #[diesel(sql_type = Int8)]
    rate_limited: i64,
}

impl From<GateRow> for GateState {
    fn from(row: GateRow) -> Self {
        let micros = |us: i64| Duration::from_micros(u64::try_from(us).unwrap_or(0));
        Self {
            paused_for: row.paused_us.map(micros),
            interval: row.interval_us.filter(|us| *us > 0).map(micros),
            paused_total: Duration::from_millis(u64::try_from(row.paused_total_ms).unwrap_or(0)),
            rate_limited: u64::try_from(row.rate_limited).unwrap_or(0),
        }
    }
}

#[derive(QueryableByName)]
struct SlotRow {
    #[diesel(sql_type = Bool)]
    granted: bool,
    #[diesel(sql_type = Int8)]
    wait_us: i64,
    #[diesel(sql_type = Bool)]
    paused: bool,
}

fn micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}

/// The gate of one accrual system, named by its address, in PostgreSQL.
#[derive(Debug, Clone)]
pub struct PgClusterGate {
    store: PgStore,
    name: String,
}

impl PgClusterGate {
    /// The gate named `name` (the accrual system's base address), stored through `store`.
    #[must_use]
    pub fn new(store: PgStore, name: impl Into<String>) -> Self {
        Self {
            store,
            name: name.into(),
        }
    }
}

#[async_trait]
impl ClusterGate for PgClusterGate {
    async fn read(&self, lapse: Duration) -> Result<GateState, RepositoryError> {
        let mut conn = self.store.conn().await?;
        let rows: Vec<GateRow> = ReadGate {
            name: self.name.clone(),
            lapse_us: micros(lapse),
        }
        .load(&mut conn)
        .await
        .map_err(from_diesel)?;
        Ok(rows
            .into_iter()
            .next()
            .map(GateState::from)
            .unwrap_or_default())
    }

    async fn record_rate_limit(
        &self,
        retry_after: Duration,
        interval: Option<Duration>,
        lapse: Duration,
    ) -> Result<GateState, RepositoryError> {
        let mut conn = self.store.conn().await?;
        let row: GateRow = RecordRateLimit {
            name: self.name.clone(),
            retry_after_us: micros(retry_after),
            interval_us: interval.map(micros).filter(|us| *us > 0),
            lapse_us: micros(lapse),
        }
        .get_result(&mut conn)
        .await
        .map_err(from_diesel)?;
        // The other instances would read the pause at their next sync; the announcement makes
        // it reach them at once. A lost one only leaves them to that sync.
        if let Err(error) = (Announce {
            channel: GATE_CHANNEL.to_owned(),
        })
        .execute(&mut conn)
        .await
        {
            tracing::debug!(%error, "could not announce the accrual pause");
        }
        Ok(row.into())
    }

    async fn take_slot(&self, lapse: Duration) -> Result<Slot, RepositoryError> {
        let mut conn = self.store.conn().await?;
        let row: SlotRow = TakeSlot {
            name: self.name.clone(),
            lapse_us: micros(lapse),
        }
        .get_result(&mut conn)
        .await
        .map_err(from_diesel)?;
        Ok(if row.granted {
            Slot::Granted
        } else {
            Slot::Wait {
                wait: Duration::from_micros(u64::try_from(row.wait_us).unwrap_or(0)),
                paused: row.paused,
            }
        })
    }
}
