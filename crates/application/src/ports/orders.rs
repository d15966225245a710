//! Uploaded orders.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::{Order, OrderNumber, UserId};

use super::RepositoryError;

/// What storing an uploaded number did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertOrderOutcome {
    /// A new order, stored as `NEW` and queued for the accrual system.
    Inserted,
    /// The same user had already uploaded it; nothing changed.
    AlreadyOwnedBySameUser,
    /// Another user owns it; nothing changed.
    OwnedByAnotherUser,
}

/// Stores orders.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait OrderRepository: Send + Sync {
    /// Stores a new order as `NEW` and queues it for the accrual system in one transaction,
    /// unless the number exists.
    ///
    /// # Errors
    /// [`RepositoryError`] on a storage failure; nothing is stored then.
    async fn insert(
        &self,
        user: UserId,
        number: &OrderNumber,
        uploaded_at: DateTime<Utc>,
    ) -> Result<InsertOrderOutcome, RepositoryError>;

    /// A user's orders, newest first.
    ///
    /// # Errors
    /// [`RepositoryError`] on a storage failure.
    async fn list(&self, user: UserId) -> Result<Vec<Order>, RepositoryError>;
}
