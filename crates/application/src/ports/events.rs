//! Each customer's event log: what changed that the customer can see, in commit order.

use async_trait::async_trait;
use std::time::Duration;

use domain::{Balance, Order, UserId};

use super::RepositoryError;

/// Where an event stands in the log: after every event of an older transaction, and after the
/// events its own transaction wrote before it. Positions only grow in the order the log is
/// read, so a reader that remembers the last one it passed never misses one nor sees one twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventPosition {
    /// The writing transaction.
    pub tx: u64,
    /// The event within the log, in insertion order.
    pub id: i64,
}

impl EventPosition {
    /// The position before every event of transactions from `horizon` on (no event has id 0),
    /// where a stream that starts at `horizon` stands.
    #[must_use]
    pub fn before(horizon: Horizon) -> Self {
        Self {
            tx: horizon.0,
            id: 0,
        }
    }
}

impl std::fmt::Display for EventPosition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.tx, self.id)
    }
}

impl std::str::FromStr for EventPosition {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (tx, id) = s.split_once('-').ok_or(())?;
        Ok(Self {
            tx: tx.parse().map_err(|_| ())?,
            id: id.parse().map_err(|_| ())?,
        })
    }
}

/// The log's readable end: every transaction older than this one has ended, so the events
/// before it are all there is before it, and no event of an older transaction can appear later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Horizon(pub u64);

/// What changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// An order was uploaded, or its status or accrual changed: its state after.
    Order(Order),
    /// The balance after a credit or a withdrawal.
    Balance(Balance),
}

/// One event of a customer's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub position: EventPosition,
    pub user: UserId,
    pub change: Change,
}

/// A customer's events after a position they had seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resumed {
    /// The events after the position and before the horizon, in order.
    Events(Vec<Event>),
    /// Events after the position were removed after the retention: what the customer missed
    /// cannot be told.
    Lost,
}

/// Reads the event log (written with the changes themselves) and removes old events.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait EventLog: Send + Sync {
    /// The log's readable end now.
    ///
    /// # Errors
    /// [`RepositoryError`] on a storage failure.
    async fn horizon(&self) -> Result<Horizon, RepositoryError>;

    /// Every customer's events from the transaction `from` on and before the log's readable
    /// end, in order, and that end (where the next read begins).
    ///
    /// # Errors
    /// [`RepositoryError`] on a storage failure.
    async fn read(&self, from: Horizon) -> Result<(Vec<Event>, Horizon), RepositoryError>;

    /// `user`'s events after `after` and before `until`, in order, at most `limit`.
    ///
    /// # Errors
    /// [`RepositoryError`] on a storage failure.
    async fn resume(
        &self,
        user: UserId,
        after: EventPosition,
        until: Horizon,
        limit: u32,
    ) -> Result<Resumed, RepositoryError>;

    /// Removes at most `batch` events written more than `older_than` ago (by the database's
    /// clock); returns how many.
    ///
    /// # Errors
    /// [`RepositoryError`] on a storage failure.
    async fn prune(&self, older_than: Duration, batch: u32) -> Result<u64, RepositoryError>;
}
