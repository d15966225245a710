//! End to end: Gophermart processes with a real PostgreSQL and our accrual system, through
//! restarts after SIGKILL, several instances on one database, and the accrual system's rate
//! limit. Every order must be credited exactly once.

mod support;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use adapters_postgres::testing::TestDatabase;
use rust_decimal::Decimal;

use support::{
    balance, free_port, numbers, points, register, register_purchases, start_accrual, total,
    upload, wait_all_final, Instance,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orders_survive_sigkill_and_are_credited_exactly_once_after_restart() {
    let db = TestDatabase::create().await;
    let client = reqwest::Client::new();
    let accrual_address: SocketAddr = format!("127.0.0.1:{}", free_port())
        .parse()
        .expect("address");
    let accrual_url = format!("http://{accrual_address}");
    let down_first = numbers(10, 5_550_000);
    let in_flight = numbers(10, 6_660_000);
    let mut all = down_first.clone();
    all.extend(in_flight.iter().cloned());

    // Uploads while the accrual system is down.
    let mut first = Instance::start(&db, &accrual_url, &[]);
    first.wait_ready(&client).await;
    let token = register(&client, &first.base, "survivor").await;
    for number in &down_first {
        assert_eq!(upload(&client, &first.base, &token, number).await, 202);
    }
    // The accrual system comes up slow, so that requests are in flight when the kill comes.
    let slow = start_accrual(accrual_address, |c| c.latency_ms = 700).await;
    register_purchases(&client, &accrual_url, &all, &points).await;
    for number in &in_flight {
        assert_eq!(upload(&client, &first.base, &token, number).await, 202);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    first.kill();
    slow.stop().await.expect("slow accrual stops");

    // A fresh accrual system that answers at once, and a fresh Gophermart on the same database.
    let fast = start_accrual(accrual_address, |_| {}).await;
    register_purchases(&client, &accrual_url, &all, &points).await;
    let mut second = Instance::start(&db, &accrual_url, &[]);
    second.wait_ready(&client).await;

    let listed = wait_all_final(
        &client,
        &second.base,
        &token,
        all.len(),
        Duration::from_secs(60),
    )
    .await;
    assert!(
        listed.iter().all(|o| o["status"] == "PROCESSED"),
        "{listed:?}"
    );
    assert_eq!(
        balance(&client, &second.base, &token).await,
        (total(all.len()), Decimal::ZERO)
    );
    let store = db.store();
    assert_eq!(
        store.queue_depth(chrono::Utc::now()).await.expect("depth"),
        Default::default()
    );
    second.terminate();
    drop(fast);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_instances_on_one_database_credit_every_order_once() {
    let db = TestDatabase::create().await;
    let client = reqwest::Client::new();
    let accrual = start_accrual("127.0.0.1:0".parse().expect("address"), |c| {
        c.latency_ms = 5
    })
    .await;
    let accrual_url = accrual.base_url();
    let all = numbers(60, 7_770_000);
    register_purchases(&client, &accrual_url, &all, &points).await;
    let instances: Vec<Instance> = (0..3)
        .map(|_| Instance::start(&db, &accrual_url, &[]))
        .collect();
    for instance in &instances {
        instance.wait_ready(&client).await;
    }
    let token = register(&client, &instances[0].base, "shared").await;

    // Uploads spread over the instances.
    for (i, number) in all.iter().enumerate() {
        let base = &instances[i % instances.len()].base;
        assert_eq!(upload(&client, base, &token, number).await, 202);
    }

    let listed = wait_all_final(
        &client,
        &instances[1].base,
        &token,
        all.len(),
        Duration::from_secs(60),
    )
    .await;
    assert!(
        listed.iter().all(|o| o["status"] == "PROCESSED"),
        "{listed:?}"
    );
    assert_eq!(
        balance(&client, &instances[2].base, &token).await,
        (total(all.len()), Decimal::ZERO)
    );
    let stats = accrual.stats();
    assert_eq!(stats.asked_after_final, 0, "{stats:?}");
    let mut instances = instances;
    for instance in &mut instances {
        instance.terminate();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_rate_limit_pauses_every_request_and_all_orders_finish() {
    let db = TestDatabase::create().await;
    let client = reqwest::Client::new();
    let limit = 12;
    let accrual = start_accrual("127.0.0.1:0".parse().expect("address"), |c| {
        c.rate_limit = limit
    })
    .await;
    let accrual_url = accrual.base_url();
    // More orders than one minute's allowance: the rest must wait for the window.
    let all = numbers(16, 8_880_000);
    register_purchases(&client, &accrual_url, &all, &points).await;
    let mut instance = Instance::start(&db, &accrual_url, &["--accrual-concurrency", "4"]);
    instance.wait_ready(&client).await;
    let token = register(&client, &instance.base, "patient").await;

    let started = Instant::now();
    for number in &all {
        assert_eq!(upload(&client, &instance.base, &token, number).await, 202);
    }
    let listed = wait_all_final(
        &client,
        &instance.base,
        &token,
        all.len(),
        Duration::from_secs(150),
    )
    .await;
    let elapsed = started.elapsed();

    assert!(
        listed.iter().all(|o| o["status"] == "PROCESSED"),
        "{listed:?}"
    );
    assert_eq!(
        balance(&client, &instance.base, &token).await,
        (total(all.len()), Decimal::ZERO)
    );
    let stats = accrual.stats();
    // Requests already in flight when the first 429 came may also be refused; after that the
    // pause holds every request back.
    assert!(stats.rate_limited <= 4, "{stats:?}");
    assert!(stats.answered >= all.len() as u64, "{stats:?}");
    // No entry waited at the gate until its lease ran out and was asked about twice.
    assert_eq!(stats.asked_after_final, 0, "{stats:?}");
    eprintln!(
        "rate-limited run: {} orders in {elapsed:?}, {stats:?}",
        all.len()
    );
    instance.terminate();
}
