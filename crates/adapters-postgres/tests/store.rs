//! The PostgreSQL store against a real server: constraints, races and the queue's guarantees.

use std::{sync::Arc, time::Duration};

use adapters_postgres::{testing::TestDatabase, PgStore};
use application::ports::{
    ledger::{LedgerRepository, WithdrawOutcome},
    orders::{InsertOrderOutcome, OrderRepository},
    queue::{AccrualQueue, ClaimOrder, FinalOutcome, RetryReason},
    security::PasswordHash,
    users::{CreateUserError, UserRepository},
};
use chrono::Utc;
use diesel_async::RunQueryDsl;
use domain::{with_check_digit, Login, Money, OrderNumber, OrderStatus, UserId};
use rust_decimal::Decimal;
use rust_decimal_macros::dec;

async fn user(store: &PgStore, login: &str) -> UserId {
    store
        .create(
            &Login::parse(login).expect("login"),
            &PasswordHash("hash".into()),
        )
        .await
        .expect("user created")
}

fn number(seed: u64) -> OrderNumber {
    OrderNumber::parse(&with_check_digit(&seed.to_string())).expect("valid number")
}

fn money(value: Decimal) -> Money {
    Money::new(value).expect("valid money")
}

/// Credits points the way the accrual worker does: upload an order and finish it as processed.
async fn credit(store: &PgStore, user: UserId, seed: u64, points: Decimal) {
    let order = number(seed);
    assert_eq!(
        store
            .insert(user, &order, Utc::now(), None)
            .await
            .expect("insert"),
        InsertOrderOutcome::Inserted
    );
    assert!(store
        .finish(&order, FinalOutcome::Processed(Some(money(points))))
        .await
        .expect("finish"));
}

#[tokio::test]
async fn a_login_is_registered_once_and_found_with_its_hash() {
    let db = TestDatabase::create().await;
    let store = db.store();
    let login = Login::parse("gopher").expect("login");

    let id = store
        .create(&login, &PasswordHash("h1".into()))
        .await
        .expect("created");
    let again = store.create(&login, &PasswordHash("h2".into())).await;
    let found = store
        .find_by_login(&login)
        .await
        .expect("found")
        .expect("exists");

    assert!(matches!(again, Err(CreateUserError::LoginTaken)));
    assert_eq!(found.id, id);
    assert_eq!(found.password_hash, PasswordHash("h1".into()));
    assert!(store
        .find_by_login(&Login::parse("nobody").expect("login"))
        .await
        .expect("query")
        .is_none());
    assert_eq!(
        store.balance(id).await.expect("balance"),
        Default::default()
    );
}

#[tokio::test]
async fn an_order_number_belongs_to_its_first_uploader() {
    let db = TestDatabase::create().await;
    let store = db.store();
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let order = number(1234567890);

    let first = store
        .insert(alice, &order, Utc::now(), None)
        .await
        .expect("insert");
    let again = store
        .insert(alice, &order, Utc::now(), None)
        .await
        .expect("insert");
    let other = store
        .insert(bob, &order, Utc::now(), None)
        .await
        .expect("insert");

    assert_eq!(first, InsertOrderOutcome::Inserted);
    assert_eq!(again, InsertOrderOutcome::AlreadyOwnedBySameUser);
    assert_eq!(other, InsertOrderOutcome::OwnedByAnotherUser);
    let listed = store.list(alice).await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].status, OrderStatus::New);
    assert_eq!(listed[0].accrual, None);
    assert!(store.list(bob).await.expect("list").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_uploads_of_one_number_store_it_once() {
    let db = TestDatabase::create().await;
    let store = db.store();
    let mut users = Vec::new();
    for i in 0..8 {
        users.push(user(&store, &format!("racer{i}")).await);
    }
    let order = number(77_777);

    let tasks: Vec<_> = users
        .iter()
        .map(|&u| {
            let store = store.clone();
            let order = order.clone();
            tokio::spawn(async move { store.insert(u, &order, Utc::now(), None).await })
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.expect("task").expect("insert"));
    }

    let inserted = outcomes
        .iter()
        .filter(|o| **o == InsertOrderOutcome::Inserted)
        .count();
    let refused = outcomes
        .iter()
        .filter(|o| **o == InsertOrderOutcome::OwnedByAnotherUser)
        .count();
    assert_eq!((inserted, refused), (1, users.len() - 1));
    let claimed = store
        .claim(
            10,
            Utc::now(),
            Duration::from_secs(30),
            ClaimOrder::DueFirst,
        )
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1, "exactly one queue entry");
}

#[tokio::test]
async fn orders_are_listed_newest_first() {
    let db = TestDatabase::create().await;
    let store = db.store();
    let alice = user(&store, "alice").await;
    let start = Utc::now();
    for (i, seed) in [11u64, 22, 33].iter().enumerate() {
        let at = start + chrono::Duration::seconds(i64::try_from(i).expect("small"));
        store
            .insert(alice, &number(*seed), at, None)
            .await
            .expect("insert");
    }

    let listed: Vec<String> = store
        .list(alice)
        .await
        .expect("list")
        .into_iter()
        .map(|o| o.number.to_string())
        .collect();

    assert_eq!(
        listed,
        vec![
            number(33).to_string(),
            number(22).to_string(),
            number(11).to_string()
        ]
    );
}

#[tokio::test]
async fn a_withdrawal_charges_once_and_is_recorded() {
    let db = TestDatabase::create().await;
    let store = db.store();
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    credit(&store, alice, 100, dec!(500.50)).await;
    let order = number(2377225624 / 10);

    let first = store
        .withdraw(alice, &order, money(dec!(42)), Utc::now())
        .await
        .expect("withdraw");
    let repeated = store
        .withdraw(alice, &order, money(dec!(42)), Utc::now())
        .await
        .expect("withdraw");
    let other_sum = store
        .withdraw(alice, &order, money(dec!(43)), Utc::now())
        .await
        .expect("withdraw");
    let other_user = store
        .withdraw(bob, &order, money(dec!(42)), Utc::now())
        .await
        .expect("withdraw");
    let too_much = store
        .withdraw(alice, &number(555), money(dec!(458.51)), Utc::now())
        .await
        .expect("withdraw");

    assert_eq!(first, WithdrawOutcome::Withdrawn);
    assert_eq!(repeated, WithdrawOutcome::AlreadyWithdrawn);
    assert_eq!(other_sum, WithdrawOutcome::OrderNumberTaken);
    assert_eq!(other_user, WithdrawOutcome::OrderNumberTaken);
    assert_eq!(too_much, WithdrawOutcome::InsufficientFunds);
    let balance = store.balance(alice).await.expect("balance");
    assert_eq!(balance.current.amount(), dec!(458.50));
    assert_eq!(balance.withdrawn.amount(), dec!(42.00));
    let history = store.withdrawals(alice).await.expect("history");
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].sum.amount(), dec!(42));
    assert!(store.withdrawals(bob).await.expect("history").is_empty());
}

#[tokio::test]
async fn repeating_a_withdrawal_that_emptied_the_account_still_succeeds() {
    let db = TestDatabase::create().await;
    let store = db.store();
    let alice = user(&store, "alice").await;
    credit(&store, alice, 100, dec!(10)).await;

    let first = store
        .withdraw(alice, &number(9), money(dec!(10)), Utc::now())
        .await
        .expect("withdraw");
    let repeated = store
        .withdraw(alice, &number(9), money(dec!(10)), Utc::now())
        .await
        .expect("withdraw");

    assert_eq!(
        (first, repeated),
        (
            WithdrawOutcome::Withdrawn,
            WithdrawOutcome::AlreadyWithdrawn
        )
    );
    assert_eq!(
        store.balance(alice).await.expect("balance").current,
        Money::ZERO
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_withdrawals_never_overdraw() {
    let db = TestDatabase::create().await;
    let store = db.store();
    let alice = user(&store, "alice").await;
    credit(&store, alice, 100, dec!(100)).await;

    // 64 withdrawals of 7 points against 100: at most 14 can succeed.
    let tasks: Vec<_> = (0..64u64)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .withdraw(alice, &number(1000 + i), money(dec!(7)), Utc::now())
                    .await
            })
        })
        .collect();
    let mut succeeded = 0;
    for task in tasks {
        match task.await.expect("task").expect("withdraw") {
            WithdrawOutcome::Withdrawn => succeeded += 1,
            WithdrawOutcome::InsufficientFunds => {}
            other => panic!("unexpected outcome {other:?}"),
        }
    }

    let balance = store.balance(alice).await.expect("balance");
    let history = store.withdrawals(alice).await.expect("history");
    assert_eq!(succeeded, 14);
    assert_eq!(history.len(), succeeded);
    assert_eq!(balance.current.amount(), dec!(2));
    assert_eq!(balance.withdrawn.amount(), dec!(98));
}

#[tokio::test]
async fn the_schema_refuses_a_negative_balance_whatever_the_caller() {
    let db = TestDatabase::create().await;
    let store = db.store();
    let alice = user(&store, "alice").await;
    let mut conn =
        <diesel_async::AsyncPgConnection as diesel_async::AsyncConnection>::establish(db.url())
            .await
            .expect("connect");

    let result = diesel::sql_query(format!(
        "UPDATE accounts SET balance = -1 WHERE user_id = {}",
        alice.0
    ))
    .execute(&mut conn)
    .await;

    let error = result
        .expect_err("the CHECK constraint refuses it")
        .to_string();
    assert!(error.contains("accounts_balance_non_negative"), "{error}");
}

#[tokio::test]
async fn a_final_outcome_applies_exactly_once() {
    let db = TestDatabase::create().await;
    let store = db.store();
    let alice = user(&store, "alice").await;
    let order = number(4242);
    store
        .insert(alice, &order, Utc::now(), None)
        .await
        .expect("insert");

    let first = store
        .finish(&order, FinalOutcome::Processed(Some(money(dec!(729.98)))))
        .await
        .expect("finish");
    let second = store
        .finish(&order, FinalOutcome::Processed(Some(money(dec!(729.98)))))
        .await
        .expect("finish");
    let invalid_after = store
        .finish(&order, FinalOutcome::Invalid)
        .await
        .expect("finish");

    assert!(first);
    assert!(!second);
    assert!(!invalid_after);
    assert_eq!(
        store
            .balance(alice)
            .await
            .expect("balance")
            .current
            .amount(),
        dec!(729.98)
    );
    let listed = store.list(alice).await.expect("list");
    assert_eq!(listed[0].status, OrderStatus::Processed);
    assert_eq!(listed[0].accrual.map(Money::amount), Some(dec!(729.98)));
    assert!(store
        .claim(
            10,
            Utc::now(),
            Duration::from_secs(30),
            ClaimOrder::DueFirst
        )
        .await
        .expect("claim")
        .is_empty());
}

#[tokio::test]
async fn an_invalid_order_earns_nothing_and_leaves_the_queue() {
    let db = TestDatabase::create().await;
    let store = db.store();
    let alice = user(&store, "alice").await;
    let order = number(31337);
    store
        .insert(alice, &order, Utc::now(), None)
        .await
        .expect("insert");

    assert!(store
        .finish(&order, FinalOutcome::Invalid)
        .await
        .expect("finish"));

    let listed = store.list(alice).await.expect("list");
    assert_eq!(listed[0].status, OrderStatus::Invalid);
    assert_eq!(
        store.balance(alice).await.expect("balance").current,
        Money::ZERO
    );
    assert!(store
        .claim(
            10,
            Utc::now(),
            Duration::from_secs(30),
            ClaimOrder::DueFirst
        )
        .await
        .expect("claim")
        .is_empty());
}

#[tokio::test]
async fn claimed_entries_are_leased_and_come_back_when_the_lease_ends() {
    let db = TestDatabase::create().await;
    let store = db.store();
    let alice = user(&store, "alice").await;
    let now = Utc::now();
    store
        .insert(alice, &number(1), now, None)
        .await
        .expect("insert");
    store
        .insert(alice, &number(2), now, None)
        .await
        .expect("insert");

    let first = store
        .claim(10, now, Duration::from_secs(30), ClaimOrder::DueFirst)
        .await
        .expect("claim");
    let while_leased = store
        .claim(10, now, Duration::from_secs(30), ClaimOrder::DueFirst)
        .await
        .expect("claim");
    let after_lease = store
        .claim(
            10,
            now + chrono::Duration::seconds(31),
            Duration::from_secs(30),
            ClaimOrder::DueFirst,
        )
        .await
        .expect("claim");

    assert_eq!(first.len(), 2);
    assert!(while_leased.is_empty());
    assert_eq!(after_lease.len(), 2);
}

#[tokio::test]
async fn the_next_due_time_skips_entries_in_flight_and_counts_those_whose_lease_ran_out() {
    let db = TestDatabase::create().await;
    let store = db.store();
    let alice = user(&store, "alice").await;
    let now = Utc::now();
    assert_eq!(
        store.next_due(now).await.expect("read"),
        None,
        "nothing queued"
    );
    store
        .insert(alice, &number(1), now, None)
        .await
        .expect("insert");
    let queued = store.next_due(now).await.expect("read").expect("due");

    let later = now + chrono::Duration::seconds(1);
    let claimed = store
        .claim(10, later, Duration::from_secs(30), ClaimOrder::DueFirst)
        .await
        .expect("claim");

    assert_eq!(claimed.len(), 1);
    assert_eq!(
        store.next_due(later).await.expect("read"),
        None,
        "in flight"
    );
    assert_eq!(
        store
            .next_due(later + chrono::Duration::seconds(31))
            .await
            .expect("read"),
        Some(queued),
        "its holder's lease ran out"
    );
}

#[tokio::test]
async fn retries_are_scheduled_and_only_failures_count_as_attempts() {
    let db = TestDatabase::create().await;
    let store = db.store();
    let alice = user(&store, "alice").await;
    let now = Utc::now();
    let order = number(5);
    store
        .insert(alice, &order, now, None)
        .await
        .expect("insert");
    store
        .claim(1, now, Duration::from_secs(30), ClaimOrder::DueFirst)
        .await
        .expect("claim");

    store
        .retry_later(
            &order,
            now + chrono::Duration::seconds(5),
            RetryReason::StillProcessing,
        )
        .await
        .expect("retry");
    let too_early = store
        .claim(
            1,
            now + chrono::Duration::seconds(4),
            Duration::from_secs(30),
            ClaimOrder::DueFirst,
        )
        .await
        .expect("claim");
    let due = store
        .claim(
            1,
            now + chrono::Duration::seconds(5),
            Duration::from_secs(30),
            ClaimOrder::DueFirst,
        )
        .await
        .expect("claim");
    store
        .retry_later(
            &order,
            now + chrono::Duration::seconds(6),
            RetryReason::Failed("boom".into()),
        )
        .await
        .expect("retry");
    store
        .retry_later(
            &order,
            now + chrono::Duration::seconds(6),
            RetryReason::RateLimited,
        )
        .await
        .expect("retry");
    let failed_once = store
        .claim(
            1,
            now + chrono::Duration::seconds(6),
            Duration::from_secs(30),
            ClaimOrder::DueFirst,
        )
        .await
        .expect("claim");

    assert!(too_early.is_empty());
    assert_eq!(due[0].attempts, 0);
    assert_eq!(failed_once[0].attempts, 1);
    assert_eq!(
        store.list(alice).await.expect("list")[0].status,
        OrderStatus::Processing
    );
    store
        .release(std::slice::from_ref(&order))
        .await
        .expect("release");
    assert_eq!(
        store
            .claim(
                1,
                now + chrono::Duration::seconds(6),
                Duration::from_secs(30),
                ClaimOrder::DueFirst
            )
            .await
            .expect("claim")
            .len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claimers_never_share_an_entry() {
    let db = TestDatabase::create().await;
    let store = db.store();
    let alice = user(&store, "alice").await;
    let now = Utc::now();
    for seed in 0..200u64 {
        store
            .insert(alice, &number(10_000 + seed), now, None)
            .await
            .expect("insert");
    }

    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut mine = Vec::new();
                loop {
                    let batch = store
                        .claim(7, now, Duration::from_secs(60), ClaimOrder::DueFirst)
                        .await
                        .expect("claim");
                    if batch.is_empty() {
                        return mine;
                    }
                    mine.extend(batch.into_iter().map(|e| e.order));
                }
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("task"));
    }

    let total = all.len();
    all.sort();
    all.dedup();
    assert_eq!((total, all.len()), (200, 200));
}

#[tokio::test]
async fn an_upload_wakes_this_instances_worker_and_a_repeated_one_does_not() {
    let db = TestDatabase::create().await;
    let store = db.store();
    let alice = user(&store, "alice").await;
    let wake = store.queue_wake();

    store
        .insert(alice, &number(8080), Utc::now(), None)
        .await
        .expect("insert");
    tokio::time::timeout(Duration::from_secs(1), wake.notified())
        .await
        .expect("woken by the upload");

    // Nothing new was queued: no wake.
    store
        .insert(alice, &number(8080), Utc::now(), None)
        .await
        .expect("insert again");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), wake.notified())
            .await
            .is_err(),
        "a repeated upload queues nothing and wakes nobody"
    );
}

#[tokio::test]
async fn uploads_are_announced_to_the_workers_of_other_instances() {
    let db = TestDatabase::create().await;
    let here = db.store();
    let alice = user(&here, "alice").await;
    let stop = tokio_util::sync::CancellationToken::new();
    let announcer = tokio::spawn(here.clone().announce_queued_orders(stop.clone()));
    // Another instance: its own pool, its worker's wake, and its listener.
    let elsewhere = db.store();
    let wake = elsewhere.queue_wake();
    let listener = tokio::spawn(adapters_postgres::listen_for_notifications(
        db.url().to_owned(),
        adapters_postgres::Wakes {
            queue: wake.clone(),
            gate: Arc::default(),
            events: Arc::default(),
        },
        stop.clone(),
    ));
    // The listener wakes once when it starts listening.
    tokio::time::timeout(Duration::from_secs(10), wake.notified())
        .await
        .expect("listening");

    for n in 1..=20 {
        here.insert(alice, &number(8080 + n), Utc::now(), None)
            .await
            .expect("insert");
    }

    tokio::time::timeout(Duration::from_secs(10), wake.notified())
        .await
        .expect("woken by the uploads of the other instance");
    stop.cancel();
    announcer.await.expect("announcer stops");
    listener.await.expect("listener stops");
}

#[tokio::test]
async fn migrations_are_all_applied_to_a_test_database() {
    let db = TestDatabase::create().await;
    let store = db.store();

    assert_eq!(
        adapters_postgres::pending_migrations(&store)
            .await
            .expect("asked"),
        0
    );
    // Applying again is a no-op.
    assert!(adapters_postgres::run_migrations(db.url())
        .await
        .expect("migrated")
        .is_empty());
}

#[tokio::test]
async fn an_unreadable_queue_entry_does_not_stop_the_others() {
    let db = TestDatabase::create().await;
    let store = db.store();
    let alice = user(&store, "alice").await;
    let now = Utc::now();
    store
        .insert(alice, &number(1), now, None)
        .await
        .expect("insert");
    // A row written around the service: digits, but a wrong checksum.
    let mut conn =
        <diesel_async::AsyncPgConnection as diesel_async::AsyncConnection>::establish(db.url())
            .await
            .expect("connect");
    diesel::sql_query(format!(
        "WITH o AS (INSERT INTO orders (number, user_id, uploaded_at) VALUES ('12345678902', {}, now()) RETURNING number)
         INSERT INTO accrual_queue (order_number, next_attempt_at) SELECT number, now() - interval '1 minute' FROM o",
        alice.0
    ))
    .execute(&mut conn)
    .await
    .expect("corrupt row written");

    let claimed = store
        .claim(
            10,
            now + chrono::Duration::seconds(1),
            Duration::from_secs(30),
            ClaimOrder::DueFirst,
        )
        .await
        .expect("claim");

    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].order, number(1));
}

fn address(last: u8) -> std::net::IpAddr {
    std::net::IpAddr::from([192, 0, 2, last])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_sign_ins_are_counted_per_login_and_address_and_per_address() {
    use application::ports::throttle::SignInFailures;
    let db = TestDatabase::create().await;
    let store = db.store();
    let alice = Login::parse("alice").expect("login");
    let bob = Login::parse("bob").expect("login");
    let window = Duration::from_secs(60);

    for _ in 0..3 {
        store
            .record_failure(&alice, address(1), window)
            .await
            .expect("counted");
    }
    store
        .record_failure(&bob, address(1), window)
        .await
        .expect("counted");
    let alice_there = store
        .sign_in_record(&alice, address(1), window)
        .await
        .expect("read");
    let alice_elsewhere = store
        .sign_in_record(&alice, address(2), window)
        .await
        .expect("read");
    store
        .forget_failures(&alice, address(1))
        .await
        .expect("forgotten");
    let after_success = store
        .sign_in_record(&alice, address(1), window)
        .await
        .expect("read");

    assert_eq!(alice_there.failures.login_from_address.failures, 3);
    assert_eq!(alice_there.failures.address.failures, 4);
    assert!(alice_there.failures.address.window_left > Duration::from_secs(50));
    assert!(alice_there.credentials.is_none(), "no such customer");
    assert_eq!(alice_elsewhere.failures.login_from_address.failures, 0);
    assert_eq!(alice_elsewhere.failures.address.failures, 0);
    assert_eq!(after_success.failures.login_from_address.failures, 0);
    assert_eq!(
        after_success.failures.address.failures, 4,
        "the address keeps its count"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_whose_window_ended_restart_and_are_removed_by_later_failures() {
    use application::ports::throttle::SignInFailures;
    let db = TestDatabase::create().await;
    let store = db.store();
    // A window longer than the test takes, however slowly it runs: the first windows are
    // ended by moving their start back, not by waiting.
    let window = Duration::from_secs(60);
    for i in 0..6 {
        let login = Login::parse(&format!("user{i}")).expect("login");
        store
            .record_failure(&login, address(i), window)
            .await
            .expect("counted");
    }
    TestDatabase::execute(
        &db,
        "UPDATE sign_in_failures SET started_at = started_at - interval '61 seconds'",
    )
    .await;
    let carol = Login::parse("carol").expect("login");
    let user0 = Login::parse("user0").expect("login");

    let ended = store
        .sign_in_record(&user0, address(0), window)
        .await
        .expect("read");
    store
        .record_failure(&user0, address(0), window)
        .await
        .expect("counted");
    let restarted = store
        .sign_in_record(&user0, address(0), window)
        .await
        .expect("read");
    for _ in 0..3 {
        store
            .record_failure(&carol, address(9), window)
            .await
            .expect("counted");
    }
    #[derive(diesel::QueryableByName)]
    struct Rows {
        #[diesel(sql_type = diesel::sql_types::Int8)]
        count: i64,
    }
    let mut conn =
        <diesel_async::AsyncPgConnection as diesel_async::AsyncConnection>::establish(db.url())
            .await
            .expect("connect");
    let rows: Rows = diesel::sql_query("SELECT count(*) AS count FROM sign_in_failures")
        .get_result(&mut conn)
        .await
        .expect("counted");

    assert_eq!(ended.failures.login_from_address.failures, 0);
    assert_eq!(restarted.failures.login_from_address.failures, 1);
    // Six ended windows of two rows each, four removed by each later failure: only the live
    // rows are left (user0's two and carol's two).
    assert_eq!(rows.count, 4);
}
