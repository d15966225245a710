//! The points account: balance, spending, and the history of spending.

use domain::{Balance, Money, OrderNumber, UserId, Withdrawal};

use crate::ports::{
    clock::Clock,
    ledger::{LedgerRepository, WithdrawOutcome},
    Page, PageRequest, RepositoryError,
};

/// What an accepted withdrawal did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Withdrawn {
    /// Charged now.
    Charged,
    /// The identical withdrawal had been made before; not charged again.
    AlreadyCharged,
}

/// Why a withdrawal was refused; nothing was charged.
#[derive(Debug, thiserror::Error)]
pub enum WithdrawError {
    #[error("not enough points")]
    InsufficientFunds,
    #[error("the order number was already used for another withdrawal")]
    OrderNumberTaken,
    #[error("the sum must be greater than zero")]
    ZeroSum,
    #[error(transparent)]
    Repository(#[from] RepositoryError),
}

/// A user's balance.
///
/// # Errors
/// [`RepositoryError`] on a storage failure.
pub async fn balance(
    ledger: &dyn LedgerRepository,
    user: UserId,
) -> Result<Balance, RepositoryError> {
    ledger.balance(user).await
}

/// Spends points on an order. Repeating the same withdrawal (same user, order and sum) is
/// answered as done without charging twice.
///
/// # Errors
/// See [`WithdrawError`].
#[tracing::instrument(skip(ledger, clock), fields(order = %order, sum = %sum))]
pub async fn withdraw(
    ledger: &dyn LedgerRepository,
    clock: &dyn Clock,
    user: UserId,
    order: &OrderNumber,
    sum: Money,
) -> Result<Withdrawn, WithdrawError> {
    if sum.is_zero() {
        return Err(WithdrawError::ZeroSum);
    }
    match ledger.withdraw(user, order, sum, clock.now()).await? {
        WithdrawOutcome::Withdrawn => Ok(Withdrawn::Charged),
        WithdrawOutcome::AlreadyWithdrawn => Ok(Withdrawn::AlreadyCharged),
        WithdrawOutcome::InsufficientFunds => Err(WithdrawError::InsufficientFunds),
        WithdrawOutcome::OrderNumberTaken => Err(WithdrawError::OrderNumberTaken),
    }
}

/// One page of a user's withdrawals, newest first.
///
/// # Errors
/// [`RepositoryError`] on a storage failure.
pub async fn withdrawals_page(
    ledger: &dyn LedgerRepository,
    user: UserId,
    page: PageRequest,
) -> Result<Page<Withdrawal>, RepositoryError> {
    ledger.withdrawals_page(user, page).await
}

/// A user's withdrawals, newest first.
///
/// # Errors
/// [`RepositoryError`] on a storage failure.
pub async fn withdrawals(
    ledger: &dyn LedgerRepository,
    user: UserId,
) -> Result<Vec<Withdrawal>, RepositoryError> {
    ledger.withdrawals(user).await
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use rust_decimal_macros::dec;

    use super::*;
    use crate::ports::{clock::MockClock, ledger::MockLedgerRepository};

    fn clock() -> MockClock {
        let mut clock = MockClock::new();
        clock.expect_now().returning(Utc::now);
        clock
    }

    fn order() -> OrderNumber {
        OrderNumber::parse("2377225624").expect("valid")
    }

    async fn withdraw_with(outcome: WithdrawOutcome) -> Result<Withdrawn, WithdrawError> {
        let mut ledger = MockLedgerRepository::new();
        ledger
            .expect_withdraw()
            .withf(|user, order, sum, _| {
                *user == UserId(2) && order.as_str() == "2377225624" && sum.amount() == dec!(751)
            })
            .times(1)
            .returning(move |_, _, _, _| Ok(outcome));
        let sum = Money::new(dec!(751)).expect("valid");
        withdraw(&ledger, &clock(), UserId(2), &order(), sum).await
    }

    #[tokio::test]
    async fn withdraw_charges_the_account() {
        assert!(matches!(
            withdraw_with(WithdrawOutcome::Withdrawn).await,
            Ok(Withdrawn::Charged)
        ));
    }

    #[tokio::test]
    async fn withdraw_repeated_identically_is_not_charged_twice() {
        assert!(matches!(
            withdraw_with(WithdrawOutcome::AlreadyWithdrawn).await,
            Ok(Withdrawn::AlreadyCharged)
        ));
    }

    #[tokio::test]
    async fn withdraw_refuses_when_points_are_short() {
        assert!(matches!(
            withdraw_with(WithdrawOutcome::InsufficientFunds).await,
            Err(WithdrawError::InsufficientFunds)
        ));
    }

    #[tokio::test]
    async fn withdraw_refuses_an_order_number_used_differently() {
        assert!(matches!(
            withdraw_with(WithdrawOutcome::OrderNumberTaken).await,
            Err(WithdrawError::OrderNumberTaken)
        ));
    }

    #[tokio::test]
    async fn withdraw_of_zero_is_refused_without_touching_storage() {
        let mut ledger = MockLedgerRepository::new();
        ledger.expect_withdraw().never();

        let result = withdraw(&ledger, &clock(), UserId(2), &order(), Money::ZERO).await;

        assert!(matches!(result, Err(WithdrawError::ZeroSum)));
    }

    #[tokio::test]
    async fn balance_and_withdrawals_come_from_the_ledger() {
        let mut ledger = MockLedgerRepository::new();
        ledger
            .expect_balance()
            .returning(|_| Ok(Balance::default()));
        ledger.expect_withdrawals().returning(|_| Ok(vec![]));

        assert_eq!(
            balance(&ledger, UserId(1)).await.expect("balance"),
            Balance::default()
        );
        assert!(withdrawals(&ledger, UserId(1))
            .await
            .expect("list")
            .is_empty());
    }
}
