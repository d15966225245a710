//! Uploaded orders.

use std::num::NonZeroU32;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::{Order, OrderNumber, UserId};

use super::{Page, PageRequest, RepositoryError};

/// What storing an uploaded number did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertOrderOutcome {
    /// A new order, stored as `NEW` and queued for the accrual system.
    Inserted,
    /// The same user had already uploaded it; nothing changed.
    AlreadyOwnedBySameUser,
    /// Another user owns it; nothing changed.
    OwnedByAnotherUser,
    /// A new number, but the user has as many orders pending as the limit allows; nothing
    /// changed.
    PendingLimitReached,
}

/// Stores orders.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait OrderRepository: Send + Sync {
    /// Stores a new order as `NEW` and queues it for the accrual system in one transaction,
    /// unless the number exists or, with a `pending_limit`, the user has that many orders
    /// that are not final yet. Uploads of one user racing at the limit may each see room, so
    /// the limit can be passed by at most the uploads of that user in flight at once.
    ///
    /// # Errors
    /// [`RepositoryError`] on a storage failure; nothing is stored then.
    async fn insert(
        &self,
        user: UserId,
        number: &OrderNumber,
        uploaded_at: DateTime<Utc>,
        pending_limit: Option<NonZeroU32>,
    ) -> Result<InsertOrderOutcome, RepositoryError>;

    /// A user's orders, newest first.
    ///
    /// # Errors
    /// [`RepositoryError`] on a storage failure.
    async fn list(&self, user: UserId) -> Result<Vec<Order>, RepositoryError>;

    /// One page of a user's orders, newest first, in the order of [`Self::list`].
    ///
    /// # Errors
    /// [`RepositoryError`] on a storage failure.
    async fn list_page(
        &self,
        user: UserId,
        page: PageRequest,
    ) -> Result<Page<Order>, RepositoryError>;
}
