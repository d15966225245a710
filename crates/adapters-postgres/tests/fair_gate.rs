//! The cluster-wide gate and the fair, batched queue against a real PostgreSQL: several pools
//! stand for several instances.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use adapters_postgres::{testing::TestDatabase, PgClusterGate, PgStore};
use application::ports::{
    gate::{ClusterGate, Slot},
    ledger::LedgerRepository,
    orders::OrderRepository,
    queue::{AccrualQueue, ClaimOrder, FinalOutcome, Retry, RetryReason},
    security::PasswordHash,
    users::UserRepository,
};
use chrono::Utc;
use domain::{with_check_digit, Login, Money, OrderNumber, UserId};

const GATE: &str = "http://accrual.test/";
const LAPSE: Duration = Duration::from_secs(300);

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

fn money(text: &str) -> Money {
    Money::new(text.parse().expect("decimal")).expect("money")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn instances_taking_slots_at_once_never_exceed_the_shared_schedule() {
    let db = TestDatabase::create().await;
    let interval = Duration::from_millis(40);
    PgClusterGate::new(db.store(), GATE)
        .record_rate_limit(Duration::ZERO, Some(interval), LAPSE)
        .await
        .expect("limit recorded");
    let granted = Arc::new(Mutex::new(Vec::new()));
    let run_for = Duration::from_secs(2);
    let start = Instant::now();

    let mut instances = Vec::new();
    for _ in 0..3 {
        // Each instance has a pool of its own.
        let gate = PgClusterGate::new(db.store(), GATE);
        let granted = granted.clone();
        instances.push(tokio::spawn(async move {
            while start.elapsed() < run_for {
                // The slot is granted somewhere between the call and its answer.
                let asked = start.elapsed();
                match gate.take_slot(LAPSE).await.expect("slot") {
                    Slot::Granted => granted.lock().expect("lock").push((asked, start.elapsed())),
                    Slot::Wait { wait, paused } => {
                        assert!(!paused, "no pause was recorded");
                        tokio::time::sleep(wait).await;
                    }
                }
            }
        }));
    }
    for instance in instances {
        instance.await.expect("no panic");
    }

    let mut times = granted.lock().expect("lock").clone();
    times.sort();
    // One slot per interval for the cluster: in any window, at most window / interval + 1.
    // Only the slots surely granted within a window count: those asked for and answered in
    // it (an answer read late, by a task its thread left waiting, says nothing of when the
    // slot was granted).
    let window = Duration::from_millis(400);
    for (i, (from, _)) in times.iter().enumerate() {
        let within = times[i..]
            .iter()
            .filter(|(_, answered)| *answered < *from + window)
            .count();
        assert!(
            within <= 11,
            "{within} slots within {window:?} from {from:?}"
        );
    }
    // And the schedule is used, not starved: about 2 s / 40 ms = 50 slots.
    assert!(times.len() >= 35, "{} slots in {run_for:?}", times.len());
}

#[tokio::test]
async fn a_pause_recorded_by_one_instance_holds_every_other() {
    let db = TestDatabase::create().await;
    let first = PgClusterGate::new(db.store(), GATE);
    let second = PgClusterGate::new(db.store(), GATE);
    assert_eq!(
        second.take_slot(LAPSE).await.expect("slot"),
        Slot::Granted,
        "no limit known yet: granted at once"
    );

    // A pause longer than the test takes, however slowly it runs.
    first
        .record_rate_limit(
            Duration::from_secs(60),
            Some(Duration::from_millis(100)),
            LAPSE,
        )
        .await
        .expect("recorded");

    let seen = second.read(LAPSE).await.expect("read");
    let paused_for = seen.paused_for.expect("paused");
    assert!(
        paused_for > Duration::from_secs(50) && paused_for <= Duration::from_secs(60),
        "{paused_for:?}"
    );
    assert_eq!(seen.interval, Some(Duration::from_millis(100)));
    assert_eq!(seen.rate_limited, 1);
    match second.take_slot(LAPSE).await.expect("slot") {
        Slot::Wait { wait, paused } => {
            assert!(paused);
            assert!(wait > Duration::from_secs(50), "{wait:?}");
        }
        Slot::Granted => panic!("a slot during a pause"),
    }
    // A second 429 with a shorter wait does not shorten the pause.
    let again = second
        .record_rate_limit(Duration::from_millis(100), None, LAPSE)
        .await
        .expect("recorded");
    assert!(again.paused_for.expect("paused") > Duration::from_secs(50));
    assert_eq!(again.interval, Some(Duration::from_millis(100)));
    assert_eq!(again.rate_limited, 2);
}

#[tokio::test]
async fn a_pace_not_confirmed_within_the_lapse_counts_as_none() {
    let db = TestDatabase::create().await;
    let gate = PgClusterGate::new(db.store(), GATE);
    gate.record_rate_limit(Duration::ZERO, Some(Duration::from_secs(60)), LAPSE)
        .await
        .expect("recorded");
    assert_eq!(gate.take_slot(LAPSE).await.expect("slot"), Slot::Granted);
    assert!(matches!(
        gate.take_slot(LAPSE).await.expect("slot"),
        Slot::Wait { paused: false, .. }
    ));
    tokio::time::sleep(Duration::from_millis(20)).await;

    let lapsed = Duration::from_millis(10);
    assert_eq!(gate.read(lapsed).await.expect("read").interval, None);
    assert_eq!(gate.take_slot(lapsed).await.expect("slot"), Slot::Granted);
}

#[tokio::test]
async fn the_fair_claim_serves_customers_in_turn_whatever_their_backlog() {
    let db = TestDatabase::create().await;
    let store = db.store();
    let flooder = user(&store, "flooder").await;
    let customer = user(&store, "customer").await;
    let start = Utc::now() - chrono::Duration::seconds(60);
    for seed in 0..200 {
        store
            .insert(flooder, &number(1_000 + seed), start, None)
            .await
            .expect("upload");
    }
    for seed in 0..3 {
        store
            .insert(
                customer,
                &number(9_000 + seed),
                start + chrono::Duration::seconds(1),
                None,
            )
            .await
            .expect("upload");
    }

    let mut owners = Vec::new();
    for step in 0..8 {
        let now = Utc::now() + chrono::Duration::milliseconds(step);
        let claimed = store
            .claim(1, now, Duration::from_secs(30), ClaimOrder::FairShares)
            .await
            .expect("claim");
        let [entry] = claimed.as_slice() else {
            panic!("one entry: {claimed:?}")
        };
        owners.push(if entry.order.as_str().starts_with('9') {
            "customer"
        } else {
            "flooder"
        });
        // Asked about: it goes back, due much later.
        store
            .retry_many(&[Retry {
                order: entry.order.clone(),
                due_at: now + chrono::Duration::hours(1),
                reason: RetryReason::NotRegistered,
            }])
            .await
            .expect("back");
    }

    assert_eq!(
        owners,
        [
            "flooder", "customer", "flooder", "customer", "flooder", "customer", "flooder",
            "flooder"
        ]
    );
    // Earliest due first ignores owners: the flood comes first.
    let due_first = store
        .claim(5, Utc::now(), Duration::from_secs(30), ClaimOrder::DueFirst)
        .await
        .expect("claim");
    assert!(due_first.iter().all(|e| !e.order.as_str().starts_with('9')));
}

#[tokio::test]
async fn unknown_answers_are_counted_until_the_order_is_known() {
    let db = TestDatabase::create().await;
    let store = db.store();
    let owner = user(&store, "owner").await;
    let order = number(4242);
    store
        .insert(owner, &order, Utc::now(), None)
        .await
        .expect("upload");
    let back = |reason: RetryReason| Retry {
        order: order.clone(),
        due_at: Utc::now(),
        reason,
    };
    let claim = || async {
        let claimed = store
            .claim(1, Utc::now(), Duration::from_secs(30), ClaimOrder::DueFirst)
            .await
            .expect("claim");
        claimed.into_iter().next().expect("the entry")
    };

    assert_eq!(claim().await.unknown_checks, 0);
    store
        .retry_many(&[back(RetryReason::NotRegistered)])
        .await
        .expect("back");
    assert_eq!(claim().await.unknown_checks, 1);
    store
        .retry_many(&[back(RetryReason::NotRegistered)])
        .await
        .expect("back");
    let entry = claim().await;
    assert_eq!((entry.unknown_checks, entry.attempts), (2, 0));
    store
        .retry_many(&[back(RetryReason::Failed("timeout".into()))])
        .await
        .expect("back");
    let entry = claim().await;
    assert_eq!((entry.unknown_checks, entry.attempts), (2, 1));
    store
        .retry_many(&[back(RetryReason::StillProcessing)])
        .await
        .expect("back");
    assert_eq!(claim().await.unknown_checks, 0);
}

#[tokio::test]
async fn a_batch_of_final_outcomes_credits_each_order_exactly_once() {
    let db = TestDatabase::create().await;
    let store = db.store();
    let ann = user(&store, "ann").await;
    let bob = user(&store, "bob").await;
    for (owner, seed) in [(ann, 1), (ann, 2), (bob, 3), (bob, 4)] {
        store
            .insert(owner, &number(seed), Utc::now(), None)
            .await
            .expect("upload");
    }
    let batch = [
        (number(1), FinalOutcome::Processed(Some(money("10.50")))),
        (number(2), FinalOutcome::Processed(Some(money("0.25")))),
        (number(3), FinalOutcome::Processed(None)),
        (number(4), FinalOutcome::Invalid),
    ];

    assert_eq!(
        store.finish_many(&batch).await.expect("applied"),
        vec![true; 4]
    );
    // The same answers again (a duplicate request, another instance): nothing changes.
    assert_eq!(
        store.finish_many(&batch).await.expect("applied"),
        vec![false; 4]
    );

    assert_eq!(
        store.balance(ann).await.expect("balance").current,
        money("10.75")
    );
    assert_eq!(
        store.balance(bob).await.expect("balance").current,
        money("0")
    );
    let ann_orders = store.list(ann).await.expect("list");
    assert!(ann_orders.iter().all(|o| o.accrual.is_some()));
    let left = store
        .claim(
            10,
            Utc::now(),
            Duration::from_secs(30),
            ClaimOrder::DueFirst,
        )
        .await
        .expect("claim");
    assert!(left.is_empty(), "no queue entry is left: {left:?}");
}

#[tokio::test]
async fn a_pause_recorded_by_one_instance_is_announced_to_the_others() {
    let db = TestDatabase::create().await;
    let stop = tokio_util::sync::CancellationToken::new();
    // Another instance's listener, with its gate follower's wake.
    let gate_changed = Arc::new(tokio::sync::Notify::new());
    let listener = tokio::spawn(adapters_postgres::listen_for_notifications(
        db.url().to_owned(),
        adapters_postgres::Wakes {
            queue: Arc::default(),
            gate: gate_changed.clone(),
            events: Arc::default(),
        },
        stop.clone(),
    ));
    // It wakes once when it starts listening.
    tokio::time::timeout(Duration::from_secs(10), gate_changed.notified())
        .await
        .expect("listening");

    PgClusterGate::new(db.store(), GATE)
        .record_rate_limit(Duration::from_secs(60), None, LAPSE)
        .await
        .expect("429 recorded");

    tokio::time::timeout(Duration::from_secs(10), gate_changed.notified())
        .await
        .expect("the other instance is told of the pause");
    stop.cancel();
    listener.await.expect("listener stops");
}
