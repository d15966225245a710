//! Ports: what the use cases need from the outside world, as traits the adapters implement.

pub mod accrual;
pub mod clock;
pub mod gate;
pub mod ledger;
pub mod orders;
pub mod queue;
pub mod security;
pub mod throttle;
pub mod users;

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
