//! The external accrual system, as the worker needs it.

use std::time::Duration;

use async_trait::async_trait;
use domain::{AccrualStatus, Money, OrderNumber};

/// What the accrual system said about one order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccrualAnswer {
    /// The order is known; `accrual` is the reward when there is one.
    Known {
        status: AccrualStatus,
        accrual: Option<Money>,
    },
    /// The order is not (yet) registered there; ask again later.
    NotRegistered,
    /// Too many requests: nobody may ask again before `retry_after` has passed. `per_minute` is
    /// the advertised limit when the answer states one.
    RateLimited {
        retry_after: Duration,
        per_minute: Option<u32>,
    },
}

/// A failure to get a usable answer; always worth retrying later.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccrualClientError {
    #[error("the accrual system failed: {0}")]
    Server(String),
    #[error("the accrual system gave an answer that cannot be understood: {0}")]
    InvalidAnswer(String),
    #[error("the accrual system did not answer in time")]
    Timeout,
    #[error("the accrual system could not be reached: {0}")]
    Transport(String),
}

/// Asks the accrual system about orders.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait AccrualClient: Send + Sync {
    /// Asks about one order.
    ///
    /// # Errors
    /// [`AccrualClientError`] when no usable answer came back.
    async fn order(&self, number: &OrderNumber) -> Result<AccrualAnswer, AccrualClientError>;
}
