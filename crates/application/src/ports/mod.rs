//! Ports: what the use cases need from the outside world, as traits the adapters implement.

pub mod accrual;
pub mod clock;
pub mod events;
pub mod gate;
pub mod ledger;
pub mod orders;
pub mod queue;
pub mod security;
pub mod throttle;
pub mod users;

/// Where a page of a list begins: after the item with this sort key (lists are newest first,
/// by time then by storage id, so a page never skips or repeats an item while others are
/// added).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PageCursor {
    pub at: chrono::DateTime<chrono::Utc>,
    pub id: i64,
}

/// One page of a list, newest first, and where the next one begins if there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<PageCursor>,
}

/// A request for one page: at most `limit` items after `before` (from the newest without).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    pub limit: std::num::NonZeroU32,
    pub before: Option<PageCursor>,
}

/// A storage failure that is not a business outcome.
#[derive(Debug, thiserror::Error)]
pub enum RepositoryError {
    /// No connection could be had in time (pool exhausted or database down); worth retrying.
    #[error("the database is unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Anything else went wrong.
    #[error("the database failed")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}
