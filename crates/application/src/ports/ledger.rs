//! Points accounts and withdrawals.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::{Balance, Money, OrderNumber, UserId, Withdrawal};

use super::{Page, PageRequest, RepositoryError};

/// What an attempt to spend points did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WithdrawOutcome {
    /// Charged and recorded.
    Withdrawn,
    /// The same user had already spent the same sum on this order; nothing charged again.
    AlreadyWithdrawn,
    /// Not enough points; nothing changed.
    InsufficientFunds,
    /// The order number was used for a withdrawal by another user or with another sum.
    OrderNumberTaken,
}

/// Stores accounts and withdrawals.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait LedgerRepository: Send + Sync {
    /// A user's balance.
    ///
    /// # Errors
    /// [`RepositoryError`] on a storage failure.
    async fn balance(&self, user: UserId) -> Result<Balance, RepositoryError>;

    /// Charges `sum` and records the withdrawal atomically; the balance never goes negative,
    /// whatever the concurrency.
    ///
    /// # Errors
    /// [`RepositoryError`] on a storage failure; nothing is charged then.
    async fn withdraw(
        &self,
        user: UserId,
        order: &OrderNumber,
        sum: Money,
        at: DateTime<Utc>,
    ) -> Result<WithdrawOutcome, RepositoryError>;

    /// A user's withdrawals, newest first.
    ///
    /// # Errors
    /// [`RepositoryError`] on a storage failure.
    async fn withdrawals(&self, user: UserId) -> Result<Vec<Withdrawal>, RepositoryError>;

    /// One page of a user's withdrawals, newest first, in the order of [`Self::withdrawals`].
    ///
    /// # Errors
    /// [`RepositoryError`] on a storage failure.
    async fn withdrawals_page(
        &self,
        user: UserId,
        page: PageRequest,
    ) -> Result<Page<Withdrawal>, RepositoryError>;
}
