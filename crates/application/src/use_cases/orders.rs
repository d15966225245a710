//! Uploading order numbers and listing them.

use std::num::NonZeroU32;

use domain::{Order, OrderNumber, UserId};

use crate::ports::{
    clock::Clock,
    orders::{InsertOrderOutcome, OrderRepository},
    Page, PageRequest, RepositoryError,
};

/// What an accepted upload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Uploaded {
    /// A new number, queued for the accrual system.
    Accepted,
    /// The same user had already uploaded it.
    AlreadyUploadedByYou,
}

/// Why an upload was refused.
#[derive(Debug, thiserror::Error)]
pub enum UploadOrderError {
    #[error("the order number was uploaded by another user")]
    UploadedByAnotherUser,
    #[error("{limit} of your orders are waiting for their points already; upload more once some are processed")]
    TooManyPending { limit: NonZeroU32 },
    #[error(transparent)]
    Repository(#[from] RepositoryError),
}

/// Uploads an order number for the accrual system to reward. With a `pending_limit`, a new
/// number is refused while the user has that many orders that are not final yet, so that one
/// customer cannot grow the accrual queue without bound; a number the user uploaded already
/// is still answered as such.
///
/// # Errors
/// [`UploadOrderError::UploadedByAnotherUser`] when someone else owns the number,
/// [`UploadOrderError::TooManyPending`] at the limit.
#[tracing::instrument(skip(orders, clock, pending_limit), fields(number = %number))]
pub async fn upload_order(
    orders: &dyn OrderRepository,
    clock: &dyn Clock,
    user: UserId,
    number: &OrderNumber,
    pending_limit: Option<NonZeroU32>,
) -> Result<Uploaded, UploadOrderError> {
    match orders
        .insert(user, number, clock.now(), pending_limit)
        .await?
    {
        InsertOrderOutcome::Inserted => Ok(Uploaded::Accepted),
        InsertOrderOutcome::AlreadyOwnedBySameUser => Ok(Uploaded::AlreadyUploadedByYou),
        InsertOrderOutcome::OwnedByAnotherUser => Err(UploadOrderError::UploadedByAnotherUser),
        InsertOrderOutcome::PendingLimitReached => Err(UploadOrderError::TooManyPending {
            limit: pending_limit.unwrap_or(NonZeroU32::MIN),
        }),
    }
}

/// One page of a user's orders, newest first.
///
/// # Errors
/// [`RepositoryError`] on a storage failure.
pub async fn list_orders_page(
    orders: &dyn OrderRepository,
    user: UserId,
    page: PageRequest,
) -> Result<Page<Order>, RepositoryError> {
    orders.list_page(user, page).await
}

/// A user's orders, newest first.
///
/// # Errors
/// [`RepositoryError`] on a storage failure.
pub async fn list_orders(
    orders: &dyn OrderRepository,
    user: UserId,
) -> Result<Vec<Order>, RepositoryError> {
    orders.list(user).await
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use mockall::predicate::eq;

    use super::*;
    use crate::ports::{clock::MockClock, orders::MockOrderRepository};

    fn number() -> OrderNumber {
        OrderNumber::parse("12345678903").expect("valid")
    }

    fn clock() -> MockClock {
        let mut clock = MockClock::new();
        clock.expect_now().returning(|| {
            Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5)
                .single()
                .expect("valid date")
        });
        clock
    }

    async fn upload_with(outcome: InsertOrderOutcome) -> Result<Uploaded, UploadOrderError> {
        let mut orders = MockOrderRepository::new();
        orders
            .expect_insert()
            .with(
                eq(UserId(1)),
                eq(number()),
                eq(Utc
                    .with_ymd_and_hms(2026, 1, 2, 3, 4, 5)
                    .single()
                    .expect("valid date")),
                eq(NonZeroU32::new(1000)),
            )
            .times(1)
            .returning(move |_, _, _, _| Ok(outcome));
        upload_order(
            &orders,
            &clock(),
            UserId(1),
            &number(),
            NonZeroU32::new(1000),
        )
        .await
    }

    #[tokio::test]
    async fn upload_accepts_a_new_number() {
        assert!(matches!(
            upload_with(InsertOrderOutcome::Inserted).await,
            Ok(Uploaded::Accepted)
        ));
    }

    #[tokio::test]
    async fn upload_recognises_the_users_own_number() {
        assert!(matches!(
            upload_with(InsertOrderOutcome::AlreadyOwnedBySameUser).await,
            Ok(Uploaded::AlreadyUploadedByYou)
        ));
    }

    #[tokio::test]
    async fn upload_returns_conflict_when_another_user_owns_the_number() {
        assert!(matches!(
            upload_with(InsertOrderOutcome::OwnedByAnotherUser).await,
            Err(UploadOrderError::UploadedByAnotherUser)
        ));
    }

    #[tokio::test]
    async fn upload_is_refused_naming_the_limit_when_too_many_orders_are_pending() {
        let result = upload_with(InsertOrderOutcome::PendingLimitReached).await;

        assert!(matches!(
            result,
            Err(UploadOrderError::TooManyPending { limit }) if limit.get() == 1000
        ));
    }

    #[tokio::test]
    async fn upload_passes_storage_failures_through() {
        let mut orders = MockOrderRepository::new();
        orders
            .expect_insert()
            .returning(|_, _, _, _| Err(RepositoryError::Internal("boom".into())));

        let result = upload_order(&orders, &clock(), UserId(1), &number(), None).await;

        assert!(matches!(result, Err(UploadOrderError::Repository(_))));
    }

    #[tokio::test]
    async fn list_returns_the_users_orders() {
        let mut orders = MockOrderRepository::new();
        orders
            .expect_list()
            .with(eq(UserId(4)))
            .returning(|_| Ok(vec![]));

        assert_eq!(
            list_orders(&orders, UserId(4)).await.expect("listed"),
            vec![]
        );
    }
}
