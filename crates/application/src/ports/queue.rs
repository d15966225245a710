//! The durable accrual work queue: one entry per order that is not final yet.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::{Money, OrderNumber};

use super::RepositoryError;

/// A claimed queue entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueEntry {
    pub order: OrderNumber,
    /// Failed attempts so far (rate limits and "not yet" answers do not count).
    pub attempts: u32,
    /// Answers in a row that the accrual system does not know the order (204).
    pub unknown_checks: u32,
}

/// The order in which due entries are claimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimOrder {
    /// Earliest due first: the cheapest claim, for when requests are plentiful.
    DueFirst,
    /// Customers in turn: the earliest due entry of each customer that has due entries, the
    /// customer served least recently first, then each one's second entry, and so on. A
    /// customer's backlog, however large, delays another customer's order by one entry per
    /// round. For when requests are scarce.
    FairShares,
}

/// A claimed entry going back to the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retry {
    pub order: OrderNumber,
    /// When it is due again.
    pub due_at: DateTime<Utc>,
    pub reason: RetryReason,
}

/// The final word on an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinalOutcome {
    /// Credited with the given points (none when absent).
    Processed(Option<Money>),
    /// Refused by the accrual system.
    Invalid,
}

/// Why an entry goes back to the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetryReason {
    /// The accrual system knows the order and is computing it: the order shows `PROCESSING`.
    StillProcessing,
    /// The accrual system does not know the order yet; counted, so that the delay grows.
    NotRegistered,
    /// The accrual system asked everyone to wait; not a failure.
    RateLimited,
    /// No usable answer; counts as a failed attempt and is kept as the entry's last error.
    Failed(String),
}

/// The queue of orders waiting for the accrual system.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait AccrualQueue: Send + Sync {
    /// Claims up to `limit` entries due at `now` that no live lease holds, in `order`, leasing
    /// them for `lease`, so that other workers and instances skip them.
    ///
    /// # Errors
    /// [`RepositoryError`] on a storage failure.
    async fn claim(
        &self,
        limit: u32,
        now: DateTime<Utc>,
        lease: Duration,
        order: ClaimOrder,
    ) -> Result<Vec<QueueEntry>, RepositoryError>;

    /// Applies a final outcome in one transaction: the order's status and accrual, the credit
    /// to its owner's account, and the removal of the entry. Returns `false`, changing nothing,
    /// when the order was already final.
    ///
    /// # Errors
    /// [`RepositoryError`] on a storage failure; nothing is applied then.
    async fn finish(
        &self,
        order: &OrderNumber,
        outcome: FinalOutcome,
    ) -> Result<bool, RepositoryError>;

    /// [`AccrualQueue::finish`] for many orders at once, each exactly as if alone; returns, for
    /// each in turn, whether it was applied.
    ///
    /// # Errors
    /// [`RepositoryError`] on a storage failure; nothing is applied then.
    async fn finish_many(
        &self,
        outcomes: &[(OrderNumber, FinalOutcome)],
    ) -> Result<Vec<bool>, RepositoryError>;

    /// [`AccrualQueue::retry_later`] for many entries at once.
    ///
    /// # Errors
    /// [`RepositoryError`] on a storage failure; nothing is applied then.
    async fn retry_many(&self, retries: &[Retry]) -> Result<(), RepositoryError>;

    /// Puts a claimed entry back, due at `due_at`, and releases its lease.
    ///
    /// # Errors
    /// [`RepositoryError`] on a storage failure.
    async fn retry_later(
        &self,
        order: &OrderNumber,
        due_at: DateTime<Utc>,
        reason: RetryReason,
    ) -> Result<(), RepositoryError>;

    /// Releases the leases of entries this worker will not finish (on shutdown), so that another
    /// instance can take them at once.
    ///
    /// # Errors
    /// [`RepositoryError`] on a storage failure.
    async fn release(&self, orders: &[OrderNumber]) -> Result<(), RepositoryError>;

    /// The earliest time an entry that no live lease holds at `now` is due, if any. Entries
    /// under a live lease are not counted: their holder answers for them, and if it dies the
    /// lease runs out and the next look at the queue finds them.
    ///
    /// # Errors
    /// [`RepositoryError`] on a storage failure.
    async fn next_due(&self, now: DateTime<Utc>) -> Result<Option<DateTime<Utc>>, RepositoryError>;
}
