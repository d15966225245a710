//! [`AccrualQueue`] in PostgreSQL.
//!
//! Entries are claimed with `FOR UPDATE SKIP LOCKED` and a lease (`locked_until`), so several
//! workers and instances share the queue and the entries of a crashed worker come back when
//! its lease runs out. A final outcome is applied by one statement guarded by the order's
//! status, so it can never apply twice.

use std::time::Duration;

use application::{
    ports::queue::{AccrualQueue, FinalOutcome, QueueEntry, RetryReason},
    RepositoryError,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use diesel::{
    prelude::*,
    sql_types::{Array, Int4, Int8, Nullable, Numeric, Text, Timestamptz},
};
use diesel_async::RunQueryDsl;
use domain::{Money, OrderNumber};
use rust_decimal::Decimal;

use crate::{
    error::{corrupt, from_diesel},
    models::{order_number, DbQueueStatus},
    prepared::prepared_statement,
    schema::{accrual_queue, sql_types::QueueStatus},
    PgStore,
};

prepared_statement! {
    /// Leases up to `limit` due entries that no live lease holds, earliest due first.
    struct Claim {
        limit: i64 => Int8,
        now: DateTime<Utc> => Timestamptz,
        lease_until: DateTime<Utc> => Timestamptz,
    }
    "UPDATE accrual_queue q
     SET locked_until = $3, updated_at = $2
     FROM (
         SELECT order_number FROM accrual_queue
         WHERE next_attempt_at <= $2 AND (locked_until IS NULL OR locked_until <= $2)
         ORDER BY next_attempt_at
         LIMIT $1
         FOR UPDATE SKIP LOCKED) due
     WHERE q.order_number = due.order_number
     RETURNING q.order_number, q.attempts"
}

prepared_statement! {
    /// Marks an unfinished order `PROCESSED`, credits its accrual to the owner and drops its
    /// queue entry; nothing when the order is already final.
    struct CreditProcessed {
        order: String => Text,
        accrual: Option<Decimal> => Nullable<Numeric>,
    }
    "WITH o AS (
         UPDATE orders SET status = 'PROCESSED', accrual = $2, updated_at = now()
         WHERE number = $1 AND status IN ('NEW', 'PROCESSING')
         RETURNING user_id),
     a AS (
         UPDATE accounts SET balance = accounts.balance + COALESCE($2, 0)
         FROM o WHERE accounts.user_id = o.user_id),
     d AS (DELETE FROM accrual_queue WHERE order_number = $1)
     SELECT count(*) AS count FROM o"
}

prepared_statement! {
    /// Marks an unfinished order `INVALID` and drops its queue entry.
    struct MarkInvalid {
        order: String => Text,
    }
    "WITH o AS (
         UPDATE orders SET status = 'INVALID', updated_at = now()
         WHERE number = $1 AND status IN ('NEW', 'PROCESSING')
         RETURNING user_id),
     d AS (DELETE FROM accrual_queue WHERE order_number = $1)
     SELECT count(*) AS count FROM o"
}

prepared_statement! {
    /// Shows a `NEW` order as `PROCESSING`.
    struct MarkProcessing {
        order: String => Text,
    }
    "UPDATE orders SET status = 'PROCESSING', updated_at = now()
     WHERE number = $1 AND status = 'NEW'"
}

prepared_statement! {
    /// Ends an entry's lease and makes it due again at `due_at`; a failure counts an attempt.
    struct Reschedule {
        order: String => Text,
        status: DbQueueStatus => QueueStatus,
        due_at: DateTime<Utc> => Timestamptz,
        failed: i32 => Int4,
        failure: Option<String> => Nullable<Text>,
    }
    "UPDATE accrual_queue
     SET status = $2, next_attempt_at = $3, locked_until = NULL,
         attempts = attempts + $4, last_error = $5, updated_at = now()
     WHERE order_number = $1"
}

prepared_statement! {
    /// Ends the leases of entries that were claimed and not asked about.
    struct Release {
        numbers: Vec<String> => Array<Text>,
    }
    "UPDATE accrual_queue SET locked_until = NULL WHERE order_number = ANY($1)"
}

prepared_statement! {
    /// When the earliest entry becomes claimable: due, and its lease (if any) over.
    struct EarliestDue {}
    "SELECT min(GREATEST(next_attempt_at, COALESCE(locked_until, next_attempt_at))) AS due
     FROM accrual_queue"
}

#[derive(QueryableByName)]
struct NextDue {
    #[diesel(sql_type = Nullable<Timestamptz>)]
    due: Option<DateTime<Utc>>,
}

#[derive(QueryableByName)]
struct Claimed {
    #[diesel(sql_type = Text)]
    order_number: String,
    #[diesel(sql_type = Int4)]
    attempts: i32,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = Int8)]
    count: i64,
}

/// Queue entries per state, for monitoring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueDepth {
    pub queued: i64,
    pub not_registered: i64,
    pub processing: i64,
    pub rate_limited: i64,
    pub failing: i64,
    /// Entries under a live lease, whatever their state.
    pub in_flight: i64,
}

impl PgStore {
    /// How many entries the queue holds, by state.
    ///
    /// # Errors
    /// [`RepositoryError`] on a storage failure.
    pub async fn queue_depth(&self, now: DateTime<Utc>) -> Result<QueueDepth, RepositoryError> {
        let mut conn = self.conn().await?;
        let rows: Vec<(DbQueueStatus, i64)> = accrual_queue::table
            .group_by(accrual_queue::status)
            .select((accrual_queue::status, diesel::dsl::count_star()))
            .load(&mut conn)
            .await
            .map_err(from_diesel)?;
        let in_flight: i64 = accrual_queue::table
            .filter(accrual_queue::locked_until.gt(now))
            .count()
            .get_result(&mut conn)
            .await
            .map_err(from_diesel)?;
        let mut depth = QueueDepth {
            in_flight,
            ..QueueDepth::default()
        };
        for (status, count) in rows {
            match status {
                DbQueueStatus::Queued => depth.queued = count,
                DbQueueStatus::NotRegistered => depth.not_registered = count,
                DbQueueStatus::Processing => depth.processing = count,
                DbQueueStatus::RateLimited => depth.rate_limited = count,
                DbQueueStatus::Failing => depth.failing = count,
            }
        }
        Ok(depth)
    }
}

#[async_trait]
impl AccrualQueue for PgStore {
    async fn claim(
        &self,
        limit: u32,
        now: DateTime<Utc>,
        lease: Duration,
    ) -> Result<Vec<QueueEntry>, RepositoryError> {
        let lease_until = now
            + chrono::Duration::from_std(lease)
                .map_err(|e| corrupt(format!("lease {lease:?}: {e}")))?;
        let mut conn = self.conn().await?;
        let claimed: Vec<Claimed> = Claim {
            limit: i64::from(limit),
            now,
            lease_until,
        }
        .load(&mut conn)
        .await
        .map_err(from_diesel)?;
        // An entry whose stored number cannot be read is left leased and reported, so that it
        // cannot stop the rest of the batch; the schema's checks make this a corrupted row.
        Ok(claimed
            .into_iter()
            .filter_map(|c| match order_number(&c.order_number) {
                Ok(order) => Some(QueueEntry {
                    order,
                    attempts: u32::try_from(c.attempts).unwrap_or(0),
                }),
                Err(error) => {
                    tracing::error!(order = %c.order_number, %error, "unreadable queue entry skipped");
                    None
                }
            })
            .collect())
    }

    async fn finish(
        &self,
        order: &OrderNumber,
        outcome: FinalOutcome,
    ) -> Result<bool, RepositoryError> {
        let mut conn = self.conn().await?;
        let applied: Count = match outcome {
            FinalOutcome::Processed(accrual) => CreditProcessed {
                order: order.as_str().to_owned(),
                accrual: accrual.map(Money::amount),
            }
            .get_result(&mut conn)
            .await
            .map_err(from_diesel)?,
            FinalOutcome::Invalid => MarkInvalid {
                order: order.as_str().to_owned(),
            }
            .get_result(&mut conn)
            .await
            .map_err(from_diesel)?,
        };
        Ok(applied.count > 0)
    }

    async fn retry_later(
        &self,
        order: &OrderNumber,
        due_at: DateTime<Utc>,
        reason: RetryReason,
    ) -> Result<(), RepositoryError> {
        let mut conn = self.conn().await?;
        let (status, failure) = match reason {
            RetryReason::StillProcessing => (DbQueueStatus::Processing, None),
            RetryReason::NotRegistered => (DbQueueStatus::NotRegistered, None),
            RetryReason::RateLimited => (DbQueueStatus::RateLimited, None),
            RetryReason::Failed(error) => (DbQueueStatus::Failing, Some(error)),
        };
        if status == DbQueueStatus::Processing {
            MarkProcessing {
                order: order.as_str().to_owned(),
            }
            .execute(&mut conn)
            .await
            .map_err(from_diesel)?;
        }
        Reschedule {
            order: order.as_str().to_owned(),
            status,
            due_at,
            failed: i32::from(failure.is_some()),
            failure,
        }
        .execute(&mut conn)
        .await
        .map_err(from_diesel)?;
        Ok(())
    }

    async fn release(&self, orders: &[OrderNumber]) -> Result<(), RepositoryError> {
        if orders.is_empty() {
            return Ok(());
        }
        let numbers = orders.iter().map(|o| o.as_str().to_owned()).collect();
        let mut conn = self.conn().await?;
        Release { numbers }
            .execute(&mut conn)
            .await
            .map_err(from_diesel)?;
        Ok(())
    }

    async fn next_due(&self) -> Result<Option<DateTime<Utc>>, RepositoryError> {
        let mut conn = self.conn().await?;
        let next: NextDue = EarliestDue {}
            .get_result(&mut conn)
            .await
            .map_err(from_diesel)?;
        Ok(next.due)
    }
}
