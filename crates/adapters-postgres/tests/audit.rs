//! The ledger audit against databases broken on purpose, one invariant at a time.

use adapters_postgres::{testing::TestDatabase, Invariant, LedgerAudit, Violation};
use rust_decimal_macros::dec;

/// A user with 10.00 earned by a processed order, 4.00 of it withdrawn.
const SOUND: &str = "
    INSERT INTO users (login, password_hash) VALUES ('ann', 'x');
    INSERT INTO accounts (user_id, balance, withdrawn) SELECT id, 6.00, 4.00 FROM users;
    INSERT INTO orders (number, user_id, status, accrual, uploaded_at)
        SELECT '12345678903', id, 'PROCESSED', 10.00, now() FROM users;
    INSERT INTO orders (number, user_id, status, uploaded_at)
        SELECT '2377225624', id, 'PROCESSING', now() FROM users;
    INSERT INTO accrual_queue (order_number) VALUES ('2377225624');
    INSERT INTO withdrawals (order_number, user_id, sum, processed_at)
        SELECT '79927398713', id, 4.00, now() FROM users;
";

async fn audited(corruption: &str) -> LedgerAudit {
    let db = TestDatabase::create().await;
    db.execute(SOUND).await;
    db.execute(corruption).await;
    LedgerAudit::read(db.url()).await
}

fn broken(audit: &LedgerAudit) -> Vec<Invariant> {
    audit.violated().map(|check| check.invariant).collect()
}

#[tokio::test]
async fn a_sound_ledger_with_an_order_in_flight_holds() {
    let audit = audited("").await;

    assert!(audit.holds(), "{audit:?}");
    assert!(!audit.is_clean(), "an order is still in flight");
    assert_eq!(
        (audit.orders, audit.unfinished_orders, audit.queue_entries),
        (2, 1, 1)
    );
    assert_eq!(audit.total_accrued, dec!(10.00));
}

#[tokio::test]
async fn each_corruption_breaks_its_own_invariant() {
    let unbalanced = audited("UPDATE accounts SET balance = balance + 1").await;
    assert_eq!(broken(&unbalanced), [Invariant::BalanceMatchesAccruals]);
    assert!(matches!(
        unbalanced.check(Invariant::BalanceMatchesAccruals).examples[..],
        [Violation::Unbalanced { balance, accrued, .. }] if balance == dec!(7.00) && accrued == dec!(10.00)
    ));

    let withdrawn = audited("DELETE FROM withdrawals").await;
    assert_eq!(broken(&withdrawn), [Invariant::WithdrawnMatchesWithdrawals]);

    let negative = audited(
        "ALTER TABLE accounts DROP CONSTRAINT accounts_balance_non_negative;
         UPDATE accounts SET balance = -1, withdrawn = 11;
         UPDATE withdrawals SET sum = 11",
    )
    .await;
    assert_eq!(broken(&negative), [Invariant::NoNegativeBalance]);

    let unqueued = audited("DELETE FROM accrual_queue").await;
    assert_eq!(broken(&unqueued), [Invariant::UnfinishedOrderQueuedOnce]);
    assert_eq!(
        unqueued
            .check(Invariant::UnfinishedOrderQueuedOnce)
            .examples[0]
            .to_string(),
        "order 2377225624 (PROCESSING) has 0 queue entries"
    );

    let queued = audited("INSERT INTO accrual_queue (order_number) VALUES ('12345678903')").await;
    assert_eq!(broken(&queued), [Invariant::FinishedOrderNotQueued]);
}
