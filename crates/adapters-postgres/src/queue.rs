//! [`AccrualQueue`] in PostgreSQL.
//!
//! Entries are claimed with `FOR UPDATE SKIP LOCKED` and a lease (`locked_until`), so several
//! workers and instances share the queue and the entries of a crashed worker come back when
//! its lease runs out. Final outcomes are applied by one statement guarded by each order's
//! status, so none can apply twice, however many orders one statement carries.

use std::time::Duration;

use application::{
    ports::queue::{AccrualQueue, ClaimOrder, FinalOutcome, QueueEntry, Retry, RetryReason},
    RepositoryError,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use diesel::{
    prelude::*,
    sql_types::{Array, Bool, Int4, Int8, Nullable, Numeric, Text, Timestamptz},
};
use diesel_async::{AsyncConnection, RunQueryDsl};
use domain::{Money, OrderNumber};
use rust_decimal::Decimal;

use crate::{
    error::{corrupt, from_diesel},
    models::{order_number, DbQueueStatus},
    prepared::prepared_statement,
    schema::accrual_queue,
    PgStore,
};

/// The due-first claim's SQL (see [`ClaimDueFirst`]).
const CLAIM_DUE_FIRST: &str = "UPDATE accrual_queue
     SET locked_until = $3, updated_at = $2
     WHERE order_number = ANY(ARRAY(
         SELECT order_number FROM accrual_queue
         WHERE next_attempt_at <= $2 AND (locked_until IS NULL OR locked_until <= $2)
         ORDER BY next_attempt_at
         LIMIT $1
         FOR UPDATE SKIP LOCKED))
     RETURNING order_number, attempts, unknown_checks";

prepared_statement! {
    /// Leases up to `limit` due entries that no live lease holds, earliest due first.
    ///
    /// The entries are picked by a sub-select that PostgreSQL runs once per claim (an
    /// `ARRAY(...)`, its "InitPlan"), and updated by their primary key. The claim used to join
    /// that sub-select in `FROM` instead. The generic plan PostgreSQL settles on for it, which
    /// knows neither the limit nor the time, read the whole queue on every claim (a hash join
    /// over a sequential scan), and under load such claims leased up to four times the entries
    /// asked for: the worker, with no request slot for them, left them leased and unasked
    /// until their leases ran out.
    struct ClaimDueFirst {
        limit: i64 => Int8,
        now: DateTime<Utc> => Timestamptz,
        lease_until: DateTime<Utc> => Timestamptz,
    }
    CLAIM_DUE_FIRST
}

/// The fair claim's SQL (see [`ClaimFairShares`]).
const CLAIM_FAIR_SHARES: &str = "WITH RECURSIVE owners(user_id) AS (
         (SELECT user_id FROM accrual_queue WHERE user_id IS NOT NULL ORDER BY user_id LIMIT 1)
         UNION ALL
         SELECT (SELECT q.user_id FROM accrual_queue q WHERE q.user_id > owners.user_id
                 ORDER BY q.user_id LIMIT 1)
         FROM owners WHERE owners.user_id IS NOT NULL),
     candidates AS (
         SELECT o.user_id, e.order_number, e.next_attempt_at,
                row_number() OVER (PARTITION BY o.user_id ORDER BY e.next_attempt_at) AS turn
         FROM owners o CROSS JOIN LATERAL (
             SELECT q.order_number, q.next_attempt_at FROM accrual_queue q
             WHERE q.user_id = o.user_id AND q.next_attempt_at <= $2
               AND (q.locked_until IS NULL OR q.locked_until <= $2)
             ORDER BY q.next_attempt_at LIMIT $1) e
         WHERE o.user_id IS NOT NULL
         UNION ALL
         SELECT NULL, e.order_number, e.next_attempt_at,
                row_number() OVER (ORDER BY e.next_attempt_at)
         FROM (
             SELECT q.order_number, q.next_attempt_at FROM accrual_queue q
             WHERE q.user_id IS NULL AND q.next_attempt_at <= $2
               AND (q.locked_until IS NULL OR q.locked_until <= $2)
             ORDER BY q.next_attempt_at LIMIT $1) e),
     picked AS MATERIALIZED (
         SELECT q.order_number FROM candidates c
         JOIN accrual_queue q ON q.order_number = c.order_number
         LEFT JOIN accrual_turns t ON t.user_id = c.user_id
         WHERE q.order_number = ANY(ARRAY(SELECT order_number FROM candidates))
           AND q.next_attempt_at <= $2 AND (q.locked_until IS NULL OR q.locked_until <= $2)
         ORDER BY c.turn, t.served_at NULLS FIRST, c.next_attempt_at
         LIMIT $1
         FOR UPDATE OF q SKIP LOCKED),
     claimed AS (
         UPDATE accrual_queue q SET locked_until = $3, updated_at = $2
         WHERE q.order_number = ANY(ARRAY(SELECT order_number FROM picked))
         RETURNING q.order_number, q.attempts, q.unknown_checks, q.user_id),
     served AS (
         INSERT INTO accrual_turns (user_id, served_at)
         SELECT DISTINCT user_id, $2::timestamptz FROM claimed WHERE user_id IS NOT NULL
         ON CONFLICT (user_id) DO UPDATE SET served_at = EXCLUDED.served_at)
     SELECT order_number, attempts, unknown_checks FROM claimed";

prepared_statement! {
    /// Leases up to `limit` due entries, customers in turn: each customer's earliest due
    /// entries (at most `limit` of each) are ranked by their place in that customer's line,
    /// then by when the customer was last served (never first), then by due time; the
    /// customers served are recorded. Customers are found by a skip scan of the owner index
    /// (one probe per customer with queue entries), so a customer's backlog of any size costs
    /// the claim no more than one entry. Entries without an owner (queued by an older
    /// version) count as one customer that is always first in its round. The candidates are
    /// looked up, and the entries picked updated, by their key (`= ANY(ARRAY(…))`), and the
    /// pick runs once per claim: the generic plan of a join knows neither the limit nor how
    /// few the candidates are, and read the whole queue twice on every claim.
    struct ClaimFairShares {
        limit: i64 => Int8,
        now: DateTime<Utc> => Timestamptz,
        lease_until: DateTime<Utc> => Timestamptz,
    }
    CLAIM_FAIR_SHARES
}

prepared_statement! {
    /// Locks the accounts that final outcomes for these orders may credit, in one order, so
    /// that batches crediting the same customers concurrently cannot deadlock.
    struct LockAccountsToCredit {
        orders: Vec<String> => Array<Text>,
    }
    "SELECT a.user_id FROM accounts a JOIN orders o ON o.user_id = a.user_id
     WHERE o.number = ANY($1) AND o.status IN ('NEW', 'PROCESSING')
     ORDER BY a.user_id
     FOR UPDATE OF a"
}

prepared_statement! {
    /// Applies final outcomes to the orders that are not final yet: `PROCESSED` with its
    /// accrual credited to the owner, or `INVALID`; drops their queue entries. Returns the
    /// orders it applied to; an order already final is left as it is.
    struct FinishOrders {
        orders: Vec<String> => Array<Text>,
        accruals: Vec<Option<Decimal>> => Array<Nullable<Numeric>>,
        processed: Vec<bool> => Array<Bool>,
    }
    "WITH input AS (
         SELECT * FROM unnest($1::text[], $2::numeric[], $3::bool[]) AS i(number, accrual, processed)),
     o AS (
         UPDATE orders
         SET status = CASE WHEN i.processed THEN 'PROCESSED'::order_status
                           ELSE 'INVALID'::order_status END,
             accrual = CASE WHEN i.processed THEN i.accrual END,
             updated_at = now()
         FROM input i
         WHERE orders.number = i.number AND orders.status IN ('NEW', 'PROCESSING')
         RETURNING orders.number, orders.user_id, orders.accrual),
     credits AS (
         SELECT user_id, sum(accrual) AS total FROM o WHERE accrual IS NOT NULL GROUP BY user_id),
     a AS (
         UPDATE accounts SET balance = accounts.balance + credits.total
         FROM credits WHERE accounts.user_id = credits.user_id),
     d AS (DELETE FROM accrual_queue WHERE order_number IN (SELECT number FROM input))
     SELECT number AS order_number FROM o"
}

prepared_statement! {
    /// Ends the leases of entries and makes each due again at its time, with what was learned:
    /// a failure counts an attempt and is kept; an unknown order counts an unknown check; an
    /// order being computed resets that count and shows `PROCESSING`.
    struct RescheduleMany {
        orders: Vec<String> => Array<Text>,
        statuses: Vec<String> => Array<Text>,
        due_at: Vec<DateTime<Utc>> => Array<Timestamptz>,
        failures: Vec<Option<String>> => Array<Nullable<Text>>,
    }
    "WITH input AS (
         SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[])
             AS i(number, status, due_at, failure)),
     shown AS (
         UPDATE orders SET status = 'PROCESSING', updated_at = now()
         FROM input i
         WHERE orders.number = i.number AND i.status = 'PROCESSING' AND orders.status = 'NEW')
     UPDATE accrual_queue q
     SET status = i.status::queue_status, next_attempt_at = i.due_at, locked_until = NULL,
         attempts = q.attempts + CASE WHEN i.failure IS NULL THEN 0 ELSE 1 END,
         unknown_checks = CASE i.status
             WHEN 'NOT_REGISTERED' THEN q.unknown_checks + 1
             WHEN 'PROCESSING' THEN 0
             ELSE q.unknown_checks END,
         last_error = i.failure, updated_at = now()
     FROM input i
     WHERE q.order_number = i.number"
}

prepared_statement! {
    /// Ends the leases of entries that were claimed and not asked about.
    struct Release {
        numbers: Vec<String> => Array<Text>,
    }
    "UPDATE accrual_queue SET locked_until = NULL WHERE order_number = ANY($1)"
}

prepared_statement! {
    /// When the earliest entry that no live lease holds is due. It walks the due index from its
    /// start and stops at the first such entry, past only the entries in flight, instead of
    /// reading the whole queue.
    struct EarliestDue {
        now: DateTime<Utc> => Timestamptz,
    }
    "SELECT next_attempt_at AS due FROM accrual_queue
     WHERE locked_until IS NULL OR locked_until <= $1
     ORDER BY next_attempt_at
     LIMIT 1"
}

prepared_statement! {
    /// How long the longest-waiting claimable entry has been due, in milliseconds.
    struct OldestDueAge {
        now: DateTime<Utc> => Timestamptz,
    }
    "SELECT COALESCE((extract(epoch FROM $1 - min(next_attempt_at)) * 1000)::bigint, 0) AS age_ms
     FROM accrual_queue
     WHERE next_attempt_at <= $1 AND (locked_until IS NULL OR locked_until <= $1)"
}

#[derive(QueryableByName)]
struct NextDue {
    #[diesel(sql_type = Timestamptz)]
    due: DateTime<Utc>,
}

#[derive(QueryableByName)]
struct Claimed {
    #[diesel(sql_type = Text)]
    order_number: String,
    #[diesel(sql_type = Int4)]
    attempts: i32,
    #[diesel(sql_type = Int4)]
    unknown_checks: i32,
}

#[derive(QueryableByName)]
struct Applied {
    #[diesel(sql_type = Text)]
    order_number: String,
}

#[derive(QueryableByName)]
struct Age {
    #[diesel(sql_type = Int8)]
    age_ms: i64,
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
    /// How long the longest-waiting claimable entry has been due (0 when none is).
    pub oldest_due: Duration,
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
        let age: Age = OldestDueAge { now }
            .get_result(&mut conn)
            .await
            .map_err(from_diesel)?;
        let mut depth = QueueDepth {
            in_flight,
            oldest_due: Duration::from_millis(u64::try_from(age.age_ms).unwrap_or(0)),
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
        order: ClaimOrder,
    ) -> Result<Vec<QueueEntry>, RepositoryError> {
        let lease_until = now
            + chrono::Duration::from_std(lease)
                .map_err(|e| corrupt(format!("lease {lease:?}: {e}")))?;
        let limit = i64::from(limit);
        let mut conn = self.conn().await?;
        let claimed: Vec<Claimed> = match order {
            ClaimOrder::DueFirst => {
                ClaimDueFirst {
                    limit,
                    now,
                    lease_until,
                }
                .load(&mut conn)
                .await
            }
            ClaimOrder::FairShares => {
                ClaimFairShares {
                    limit,
                    now,
                    lease_until,
                }
                .load(&mut conn)
                .await
            }
        }
        .map_err(from_diesel)?;
        // An entry whose stored number cannot be read is left leased and reported, so that it
        // cannot stop the rest of the batch; the schema's checks make this a corrupted row.
        Ok(claimed
            .into_iter()
            .filter_map(|c| match order_number(c.order_number) {
                Ok(order) => Some(QueueEntry {
                    order,
                    attempts: u32::try_from(c.attempts).unwrap_or(0),
                    unknown_checks: u32::try_from(c.unknown_checks).unwrap_or(0),
                }),
                // The error names the stored number.
                Err(error) => {
                    tracing::error!(%error, "unreadable queue entry skipped");
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
        let applied = self.finish_many(&[(order.clone(), outcome)]).await?;
        Ok(applied.into_iter().next().unwrap_or(false))
    }

    async fn finish_many(
        &self,
        outcomes: &[(OrderNumber, FinalOutcome)],
    ) -> Result<Vec<bool>, RepositoryError> {
        if outcomes.is_empty() {
            return Ok(Vec::new());
        }
        let orders: Vec<String> = outcomes
            .iter()
            .map(|(order, _)| order.as_str().to_owned())
            .collect();
        let finish = FinishOrders {
            orders: orders.clone(),
            accruals: outcomes
                .iter()
                .map(|(_, outcome)| match outcome {
                    FinalOutcome::Processed(accrual) => accrual.map(Money::amount),
                    FinalOutcome::Invalid => None,
                })
                .collect(),
            processed: outcomes
                .iter()
                .map(|(_, outcome)| matches!(outcome, FinalOutcome::Processed(_)))
                .collect(),
        };
        let mut conn = self.conn().await?;
        let applied: Vec<Applied> = if outcomes.len() == 1 {
            // One order credits one account: nothing to order the locks of.
            finish.load(&mut conn).await
        } else {
            conn.transaction(async |conn| {
                LockAccountsToCredit { orders }.execute(conn).await?;
                finish.load(conn).await
            })
            .await
        }
        .map_err(from_diesel)?;
        if !applied.is_empty() {
            self.signal.customer_changed();
        }
        Ok(outcomes
            .iter()
            .map(|(order, _)| applied.iter().any(|a| a.order_number == order.as_str()))
            .collect())
    }

    async fn retry_later(
        &self,
        order: &OrderNumber,
        due_at: DateTime<Utc>,
        reason: RetryReason,
    ) -> Result<(), RepositoryError> {
        self.retry_many(&[Retry {
            order: order.clone(),
            due_at,
            reason,
        }])
        .await
    }

    async fn retry_many(&self, retries: &[Retry]) -> Result<(), RepositoryError> {
        if retries.is_empty() {
            return Ok(());
        }
        let mut statement = RescheduleMany {
            orders: Vec::with_capacity(retries.len()),
            statuses: Vec::with_capacity(retries.len()),
            due_at: Vec::with_capacity(retries.len()),
            failures: Vec::with_capacity(retries.len()),
        };
        for retry in retries {
            let (status, failure) = match &retry.reason {
                RetryReason::StillProcessing => ("PROCESSING", None),
                RetryReason::NotRegistered => ("NOT_REGISTERED", None),
                RetryReason::RateLimited => ("RATE_LIMITED", None),
                RetryReason::Failed(error) => ("FAILING", Some(error.clone())),
            };
            statement.orders.push(retry.order.as_str().to_owned());
            statement.statuses.push(status.to_owned());
            statement.due_at.push(retry.due_at);
            statement.failures.push(failure);
        }
        let shown = statement
            .statuses
            .iter()
            .any(|status| status == "PROCESSING");
        let mut conn = self.conn().await?;
        statement.execute(&mut conn).await.map_err(from_diesel)?;
        if shown {
            // Orders may have come to show `PROCESSING`.
            self.signal.customer_changed();
        }
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

    async fn next_due(&self, now: DateTime<Utc>) -> Result<Option<DateTime<Utc>>, RepositoryError> {
        let mut conn = self.conn().await?;
        let next: Option<NextDue> = EarliestDue { now }
            .get_result(&mut conn)
            .await
            .optional()
            .map_err(from_diesel)?;
        Ok(next.map(|next| next.due))
    }
}

#[cfg(test)]
mod on_a_database {
    use diesel::{sql_types::Text, QueryableByName};
    use diesel_async::RunQueryDsl;

    use super::{CLAIM_DUE_FIRST, CLAIM_FAIR_SHARES};
    use crate::testing::TestDatabase;

    #[derive(QueryableByName)]
    struct PlanLine {
        #[diesel(sql_type = Text, column_name = "QUERY PLAN")]
        line: String,
    }

    /// The pages of the database one claim of `limit` entries reads (shared buffers hit or
    /// read), with the generic plan: the plan that a prepared statement settles on, which knows
    /// neither the limit nor the time.
    async fn pages_read_by_a_claim(db: &TestDatabase, sql: &str, limit: u32) -> u64 {
        let mut conn = db.store().conn().await.expect("connection");
        diesel_async::SimpleAsyncConnection::batch_execute(
            &mut *conn,
            &format!(
                "SET plan_cache_mode = force_generic_plan;
                 PREPARE claim(int8, timestamptz, timestamptz) AS {sql};"
            ),
        )
        .await
        .expect("prepared");
        let plan: Vec<PlanLine> = diesel::sql_query(format!(
            "EXPLAIN (ANALYZE, BUFFERS)
             EXECUTE claim({limit}, now(), now() + interval '30 seconds')"
        ))
        .load(&mut conn)
        .await
        .expect("explained");
        pages_read(&plan)
    }

    /// The pages a statement read, from its plan (shared buffers hit or read).
    fn pages_read(plan: &[PlanLine]) -> u64 {
        // The first `Buffers:` line is the whole statement's.
        let buffers = plan
            .iter()
            .find_map(|l| l.line.trim().strip_prefix("Buffers: shared "))
            .expect("buffer counts")
            .to_owned();
        buffers
            .split_whitespace()
            .filter_map(|part| part.split_once('='))
            .filter(|(kind, _)| matches!(*kind, "hit" | "read"))
            .map(|(_, n)| n.parse::<u64>().expect("count"))
            .sum()
    }

    /// Customers `first..=last`, each with `per_customer` queued orders numbered from `from`.
    fn queue_sql(customers: std::ops::RangeInclusive<u32>, per_customer: u32, from: u64) -> String {
        format!(
            "INSERT INTO users (id, login, password_hash) OVERRIDING SYSTEM VALUE
                 SELECT c, 'customer-' || c, 'hash' FROM generate_series({first}, {last}) c
                 ON CONFLICT DO NOTHING;
             INSERT INTO orders (number, user_id, status, uploaded_at)
                 SELECT ({from} + (c - {first}) * {per_customer} + k)::text, c, 'NEW', now()
                 FROM generate_series({first}, {last}) c, generate_series(1, {per_customer}) k;
             INSERT INTO accrual_queue (order_number, user_id)
                 SELECT number, user_id FROM orders WHERE number::bigint >= {from}
                 ON CONFLICT DO NOTHING;",
            first = customers.start(),
            last = customers.end(),
        )
    }

    /// Queues as [`queue_sql`] does, then vacuums and analyzes the queue.
    ///
    /// The pages a claim reads depend on the queue's state as well as on its plan: a claim
    /// that locks and updates a row on a page marked all-visible also visits the visibility
    /// map. So every claim measured runs on a queue just vacuumed, as autovacuum keeps it, and
    /// autovacuum is off for the queue so that it cannot change that state in between (with
    /// it on, the same plan read 245, 286 or 469 pages behind 20,040 entries, by when it ran).
    async fn queue(
        db: &TestDatabase,
        customers: std::ops::RangeInclusive<u32>,
        per_customer: u32,
        from: u64,
    ) {
        TestDatabase::execute(
            db,
            "ALTER TABLE accrual_queue SET (autovacuum_enabled = false)",
        )
        .await;
        TestDatabase::execute(db, &queue_sql(customers, per_customer, from)).await;
        TestDatabase::execute(db, "VACUUM (ANALYZE) accrual_queue").await;
    }

    /// Orders one customer queues behind twenty customers' two orders each.
    const BACKLOG: u32 = 100_000;

    /// A claim of `limit` entries reads about as many pages once one customer has queued
    /// [`BACKLOG`] more orders as behind twenty customers' two orders each.
    ///
    /// A claim that finds its entries by its indexes reads a few pages per entry it leases, at
    /// any size of the queue (2.0 and 1.6 times the small queue's pages here, for the due-first
    /// and the fair claim: the large queue's indexes are a level deeper, and the small queue's
    /// plan reads its one heap page instead). A plan that scans the queue reads it whole:
    /// with index scans off, 16 and 770 times.
    async fn assert_a_claim_reads_no_more_behind_a_large_backlog(sql: &str, limit: u32) {
        let db = TestDatabase::create().await;
        queue(&db, 1..=20, 2, 1_000_000).await;
        let small = pages_read_by_a_claim(&db, sql, limit).await;
        queue(&db, 1..=1, BACKLOG, 2_000_000).await;

        let large = pages_read_by_a_claim(&db, sql, limit).await;

        assert!(
            large <= small * 3,
            "a claim read {small} pages behind 40 entries and {large} behind {}",
            BACKLOG + 40
        );
    }

    /// The fair claim walks the owner index, one probe per customer.
    #[tokio::test]
    async fn a_fair_claim_reads_no_more_of_the_queue_behind_a_large_backlog_than_behind_a_small_one(
    ) {
        assert_a_claim_reads_no_more_behind_a_large_backlog(CLAIM_FAIR_SHARES, 1).await;
    }

    /// The due-first claim finds its entries by the due index and updates them by their key.
    #[tokio::test]
    async fn a_due_first_claim_reads_no_more_of_the_queue_behind_a_large_backlog_than_behind_a_small_one(
    ) {
        assert_a_claim_reads_no_more_behind_a_large_backlog(CLAIM_DUE_FIRST, 32).await;
    }
}
