//! The state that every instance's [`crate::worker::RateGate`] shares: the pause after a 429 and
//! the pace under the accrual system's advertised limit, so that the cluster as a whole, not
//! each instance, stays under the limit.
//!
//! Durations, not instants, cross this port: the store measures them on one clock of its own,
//! so instances need not agree on the time.

use std::time::Duration;

use async_trait::async_trait;

use super::RepositoryError;

/// What the cluster knows about the accrual system's budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GateState {
    /// How long the pause in force still lasts, if one is.
    pub paused_for: Option<Duration>,
    /// The spacing of requests under the advertised limit, while one is known and confirmed.
    pub interval: Option<Duration>,
    /// Total time the cluster has been paused.
    pub paused_total: Duration,
    /// 429s recorded by every instance.
    pub rate_limited: u64,
}

/// The answer to a request for a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// The slot is taken: one request may be sent now.
    Granted,
    /// No request before this much time has passed; `paused` when a pause, not the pace, is
    /// the reason.
    Wait { wait: Duration, paused: bool },
}

/// The cluster-wide gate's storage. Every method is one atomic step.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait ClusterGate: Send + Sync {
    /// The current state. A pace not confirmed within `lapse` counts as no pace.
    ///
    /// # Errors
    /// [`RepositoryError`] on a storage failure.
    async fn read(&self, lapse: Duration) -> Result<GateState, RepositoryError>;

    /// Records a 429: pauses everyone for `retry_after` (extending, never shortening, a pause
    /// in force), and when `interval` is known, paces requests by it from the end of the
    /// pause on. Returns the state after it.
    ///
    /// # Errors
    /// [`RepositoryError`] on a storage failure.
    async fn record_rate_limit(
        &self,
        retry_after: Duration,
        interval: Option<Duration>,
        lapse: Duration,
    ) -> Result<GateState, RepositoryError>;

    /// Takes the next request slot under the pace, if it has come and no pause is in force;
    /// grants at once when no pace is known (or it lapsed, after `lapse`).
    ///
    /// # Errors
    /// [`RepositoryError`] on a storage failure.
    async fn take_slot(&self, lapse: Duration) -> Result<Slot, RepositoryError>;
}
