//! The customers' event log: written with each change and never without it, read in commit
//! order, pruned after the retention.

use std::time::Duration;

use adapters_postgres::{testing::TestDatabase, PgStore};
use application::ports::{
    events::{Change, Cursor, Event, EventLog, EventPosition, Resumed, Snapshot},
    ledger::{LedgerRepository, WithdrawOutcome},
    orders::{InsertOrderOutcome, OrderRepository},
    queue::{AccrualQueue, FinalOutcome},
    security::PasswordHash,
    users::UserRepository,
};
use chrono::Utc;
use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use domain::{with_check_digit, Login, Money, OrderNumber, OrderStatus, UserId};
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

/// Which transactions had ended before the first one began.
fn beginning() -> Snapshot {
    Snapshot {
        xmin: 1,
        xmax: 1,
        running: Vec::new(),
    }
}

/// Every event of the log, once at least `count` are readable.
async fn everything(store: &PgStore, count: usize) -> Vec<Event> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (events, _) = store.read(&beginning()).await.expect("read");
        if events.len() >= count || std::time::Instant::now() > deadline {
            return events;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `user`'s events after `after`, once at least `count` are readable (or the log says some
/// are lost).
async fn resumed(store: &PgStore, user: UserId, after: &Cursor, count: usize) -> Resumed {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let until = store.snapshot().await.expect("snapshot");
        let resumed = store
            .resume(user, after, &until, 100)
            .await
            .expect("resume");
        match &resumed {
            Resumed::Events(events)
                if events.len() < count && std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            _ => return resumed,
        }
    }
}

#[tokio::test]
async fn each_change_writes_its_event_in_order_and_a_refused_change_none() {
    let db = TestDatabase::create().await;
    let store = db.store();
    let payer = user(&store, "payer").await;
    let order = number(1);

    assert_eq!(
        store
            .insert(payer, &order, Utc::now(), None)
            .await
            .expect("insert"),
        InsertOrderOutcome::Inserted
    );
    // A second upload of the number changes nothing: no event.
    store
        .insert(payer, &order, Utc::now(), None)
        .await
        .expect("insert");
    assert!(store
        .finish(
            &order,
            FinalOutcome::Processed(Some(Money::new(dec!(50)).expect("money")))
        )
        .await
        .expect("finish"));
    let sum = Money::new(dec!(20)).expect("money");
    assert_eq!(
        store
            .withdraw(payer, &number(2), sum, Utc::now())
            .await
            .expect("withdraw"),
        WithdrawOutcome::Withdrawn
    );
    let too_much = Money::new(dec!(1000)).expect("money");
    assert_eq!(
        store
            .withdraw(payer, &number(3), too_much, Utc::now())
            .await
            .expect("withdraw"),
        WithdrawOutcome::InsufficientFunds
    );

    let events = everything(&store, 4).await;
    let kinds: Vec<String> = events
        .iter()
        .map(|e| match &e.change {
            Change::Order(o) => format!(
                "order {:?} {:?}",
                o.status,
                o.accrual.map(|a| a.amount().normalize())
            ),
            Change::Balance(b) => {
                format!(
                    "balance {} {}",
                    b.current.amount().normalize(),
                    b.withdrawn.amount().normalize()
                )
            }
        })
        .collect();
    // The credit's order and balance events come from one transaction, in either order.
    assert_eq!(kinds.len(), 4, "{kinds:?}");
    assert_eq!(kinds[0], format!("order {:?} None", OrderStatus::New));
    let mut credit = kinds[1..3].to_vec();
    credit.sort();
    assert_eq!(
        credit,
        vec![
            "balance 50 0".to_owned(),
            format!("order {:?} Some(50)", OrderStatus::Processed)
        ]
    );
    assert_eq!(kinds[3], "balance 30 20");
    assert!(events.iter().all(|e| e.user == payer));
    let positions: Vec<EventPosition> = events.iter().map(|e| e.position).collect();
    let mut sorted = positions.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(positions, sorted, "positions grow");
}

#[tokio::test]
async fn a_change_rolled_back_leaves_no_event() {
    let db = TestDatabase::create().await;
    let store = db.store();
    let payer = user(&store, "payer").await;
    db.execute(&format!(
        "BEGIN; UPDATE accounts SET balance = 10 WHERE user_id = {}; ROLLBACK;",
        payer.0
    ))
    .await;
    db.execute(&format!(
        "UPDATE accounts SET balance = 10 WHERE user_id = {}",
        payer.0
    ))
    .await;

    let events = everything(&store, 1).await;
    assert_eq!(events.len(), 1, "only the committed change: {events:?}");
}

#[derive(diesel::QueryableByName)]
struct Tx {
    #[diesel(sql_type = diesel::sql_types::Int8)]
    tx: i64,
}

#[tokio::test]
async fn events_are_read_when_their_transaction_commits_and_a_late_one_is_never_passed_over() {
    let db = TestDatabase::create().await;
    let store = db.store();
    let payer = user(&store, "payer").await;
    // A transaction that takes its id first and commits last.
    let mut slow = AsyncPgConnection::establish(db.url())
        .await
        .expect("connect");
    slow.batch_execute(&format!(
        "BEGIN; UPDATE accounts SET balance = 1 WHERE user_id = {}",
        payer.0
    ))
    .await
    .expect("update");
    let from = store.snapshot().await.expect("snapshot");
    let other = user(&store, "other").await;
    store
        .insert(other, &number(7), Utc::now(), None)
        .await
        .expect("insert");

    // The later transaction committed while the earlier one still runs: its event is read
    // now, and the earlier one's is not passed over.
    let (early, end) = store.read(&from).await.expect("read");
    let users: Vec<UserId> = early.iter().map(|e| e.user).collect();
    assert_eq!(users, vec![other], "{early:?}");
    let slow_tx: Tx = diesel_async::RunQueryDsl::get_result(
        diesel::sql_query("SELECT pg_current_xact_id()::text::int8 AS tx"),
        &mut slow,
    )
    .await
    .expect("the slow one's id");
    let slow_tx = u64::try_from(slow_tx.tx).expect("an id");
    assert!(!end.ended(slow_tx) && early[0].position.tx > slow_tx);

    let (nothing, end) = store.read(&end).await.expect("read");
    assert!(nothing.is_empty(), "read once: {nothing:?}");
    slow.batch_execute("COMMIT").await.expect("commit");
    let (late, end) = store.read(&end).await.expect("read");
    let users: Vec<UserId> = late.iter().map(|e| e.user).collect();
    assert_eq!(users, vec![payer], "{late:?}");
    assert_eq!(late[0].position.tx, slow_tx);
    assert!(end.ended(slow_tx));

    // A customer's resume covers what a cursor lists ahead and nothing more.
    let ahead = Cursor {
        through: EventPosition {
            tx: from.xmin,
            id: 0,
        },
        also: vec![early[0].position],
    };
    let Resumed::Events(missed) = resumed(&store, other, &ahead, 0).await else {
        panic!("nothing was pruned");
    };
    assert!(missed.is_empty(), "{missed:?}");
    let Resumed::Events(missed) = resumed(&store, payer, &ahead, 1).await else {
        panic!("nothing was pruned");
    };
    assert_eq!(missed, late);
}

#[tokio::test]
async fn pruning_removes_old_events_and_a_reader_from_before_them_is_told_so() {
    let db = TestDatabase::create().await;
    let store = db.store();
    let payer = user(&store, "payer").await;
    let start = Cursor::start(store.snapshot().await.expect("snapshot").xmin);
    store
        .insert(payer, &number(1), Utc::now(), None)
        .await
        .expect("insert");
    let Resumed::Events(missed) = resumed(&store, payer, &start, 1).await else {
        panic!("nothing was pruned yet");
    };
    assert_eq!(missed.len(), 1);

    // Younger than the retention: kept.
    assert_eq!(
        store
            .prune(Duration::from_secs(3600), 100)
            .await
            .expect("prune"),
        0
    );
    db.execute("UPDATE events SET created_at = now() - interval '2 hours'")
        .await;
    store
        .insert(payer, &number(2), Utc::now(), None)
        .await
        .expect("insert");
    assert_eq!(
        store
            .prune(Duration::from_secs(3600), 100)
            .await
            .expect("prune"),
        1
    );

    let until = store.snapshot().await.expect("snapshot");
    assert_eq!(
        store
            .resume(payer, &start, &until, 100)
            .await
            .expect("resume"),
        Resumed::Lost
    );
    // From the remaining event's own position on, nothing is missing.
    let remaining = everything(&store, 1).await;
    assert_eq!(remaining.len(), 1);
    assert_eq!(
        store
            .resume(
                payer,
                &Cursor {
                    through: remaining[0].position,
                    also: Vec::new()
                },
                &until,
                100
            )
            .await
            .expect("resume"),
        Resumed::Events(Vec::new())
    );
}
