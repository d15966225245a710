//! End to end: the accrual system's rate limit is one budget for the whole cluster, and it is
//! shared fairly between customers. Real binaries, a real PostgreSQL, our accrual system with
//! its sliding one-minute limit.

mod support;

use std::time::{Duration, Instant};

use adapters_postgres::testing::TestDatabase;
use rust_decimal::Decimal;

use support::{
    balance, numbers, points, register, register_purchases, start_accrual, total, upload,
    wait_all_final, Instance,
};

/// Waits until `check` holds, polling; panics with `what` after `timeout`.
async fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_instances_share_one_limit_through_kills_and_restarts() {
    let db = TestDatabase::create().await;
    let client = reqwest::Client::new();
    let limit = 40;
    let accrual = start_accrual("127.0.0.1:0".parse().expect("address"), |c| {
        c.rate_limit = limit;
    })
    .await;
    let accrual_url = accrual.base_url();
    // More than one minute's allowance: the rest waits for the window, paced by the cluster.
    let all = numbers(60, 3_330_000);
    register_purchases(&client, &accrual_url, &all, &points).await;
    let mut instances: Vec<Instance> = (0..3)
        .map(|_| Instance::start(&db, &accrual_url, &[]))
        .collect();
    for instance in &instances {
        instance.wait_ready(&client).await;
    }
    let token = register(&client, &instances[0].base, "cluster").await;
    let started = Instant::now();
    for (i, number) in all.iter().enumerate() {
        let base = &instances[i % instances.len()].base;
        assert_eq!(upload(&client, base, &token, number).await, 202);
    }

    // The first minute's allowance goes at once; the requests in flight when it ran out are
    // refused, and that 429 pauses every instance.
    wait_until("the first 429", Duration::from_secs(30), || {
        accrual.stats().rate_limited > 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let discovered = accrual.stats().rate_limited;
    // Instances that crash or restart during the pause learn it from the database.
    instances[1].kill();
    instances[1] = Instance::start(&db, &accrual_url, &[]);
    instances[1].wait_ready(&client).await;
    instances[2].terminate();
    instances[2] = Instance::start(&db, &accrual_url, &[]);
    instances[2].wait_ready(&client).await;

    let listed = wait_all_final(
        &client,
        &instances[0].base,
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
        balance(&client, &instances[1].base, &token).await,
        (total(all.len()), Decimal::ZERO)
    );
    let stats = accrual.stats();
    // At discovery, at most the requests then in flight (3 instances × 8) were refused; after
    // it, the shared pace kept the whole cluster under the limit.
    assert!(discovered <= 24, "{discovered} refused at discovery");
    assert!(
        stats.rate_limited <= discovered + 1,
        "429s after the limit was known: {stats:?}, {discovered} at discovery"
    );
    eprintln!(
        "three instances, limit {limit}/min: {} orders in {elapsed:?}; {discovered} × 429 at discovery, {} in all; {stats:?}",
        all.len(),
        stats.rate_limited
    );
    for instance in &mut instances {
        instance.terminate();
    }
}

/// Uploads `count` numbers the accrual system has never heard of.
async fn flood(client: &reqwest::Client, base: &str, token: &str, count: usize, seed: u64) {
    for number in numbers(count, seed) {
        assert_eq!(upload(client, base, token, &number).await, 202);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_unknown_numbers_does_not_hold_back_another_customers_orders() {
    let db = TestDatabase::create().await;
    let client = reqwest::Client::new();
    let limit = 60;
    let accrual = start_accrual("127.0.0.1:0".parse().expect("address"), |c| {
        c.rate_limit = limit;
    })
    .await;
    let accrual_url = accrual.base_url();
    // The flooder's 300 uploads go out as fast as the test can send them, past any
    // customer's request limit: this test is about the accrual budget, so that limit is off.
    let mut instance = Instance::start(&db, &accrual_url, &["--customer-requests-per-second", "0"]);
    instance.wait_ready(&client).await;
    let flooder = register(&client, &instance.base, "flooder").await;
    let customer = register(&client, &instance.base, "customer").await;

    // 300 numbers no shop registered: they use up the first minute and make the limit known.
    flood(&client, &instance.base, &flooder, 300, 4_440_000).await;
    wait_until("the limit is known", Duration::from_secs(60), || {
        accrual.stats().rate_limited > 0
    })
    .await;
    // The customer comes once the pause is over and requests go out under the pace again.
    let at_pause = accrual.stats().answered;
    wait_until("the pause ends", Duration::from_secs(90), || {
        accrual.stats().answered > at_pause + 1
    })
    .await;
    let real = numbers(5, 5_550_000);
    register_purchases(&client, &accrual_url, &real, &points).await;
    for number in &real {
        assert_eq!(
            upload(&client, &instance.base, &customer, number).await,
            202
        );
    }
    let uploaded = Instant::now();
    let answered_before = accrual.stats().answered;

    let listed = wait_all_final(
        &client,
        &instance.base,
        &customer,
        real.len(),
        Duration::from_secs(150),
    )
    .await;
    let waited = uploaded.elapsed();
    let answered = accrual.stats().answered - answered_before;

    assert!(
        listed.iter().all(|o| o["status"] == "PROCESSED"),
        "{listed:?}"
    );
    assert_eq!(
        balance(&client, &instance.base, &customer).await,
        (total(real.len()), Decimal::ZERO)
    );
    // Customers take turns: the flood's hundreds of due numbers cost the customer one request
    // per order of theirs, not a place behind all of them.
    assert!(
        answered <= 2 * real.len() as u64 + 2,
        "{answered} requests answered while the customer's {} orders waited",
        real.len()
    );
    eprintln!(
        "flood of 300 unknown numbers, limit {limit}/min: the customer's {} orders took {waited:?} after the pause; {answered} requests meanwhile",
        real.len()
    );
    instance.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_a_flood_the_same_orders_take_their_own_slots_only() {
    // The baseline of the flood test: the same limit made known by a burst of real orders.
    let db = TestDatabase::create().await;
    let client = reqwest::Client::new();
    let limit = 60;
    let accrual = start_accrual("127.0.0.1:0".parse().expect("address"), |c| {
        c.rate_limit = limit;
    })
    .await;
    let accrual_url = accrual.base_url();
    let mut instance = Instance::start(&db, &accrual_url, &[]);
    instance.wait_ready(&client).await;
    let early = register(&client, &instance.base, "early").await;
    let customer = register(&client, &instance.base, "customer").await;
    let burst = numbers(70, 6_660_000);
    register_purchases(&client, &accrual_url, &burst, &points).await;
    for number in &burst {
        assert_eq!(upload(&client, &instance.base, &early, number).await, 202);
    }
    wait_until("the limit is known", Duration::from_secs(60), || {
        accrual.stats().rate_limited > 0
    })
    .await;
    // The early customer's last orders wait for the window too; the baseline customer comes
    // once they are done, so that only the pace is in the way.
    wait_all_final(
        &client,
        &instance.base,
        &early,
        burst.len(),
        Duration::from_secs(150),
    )
    .await;
    let real = numbers(5, 7_770_000);
    register_purchases(&client, &accrual_url, &real, &points).await;
    for number in &real {
        assert_eq!(
            upload(&client, &instance.base, &customer, number).await,
            202
        );
    }
    let uploaded = Instant::now();

    wait_all_final(
        &client,
        &instance.base,
        &customer,
        real.len(),
        Duration::from_secs(60),
    )
    .await;
    let waited = uploaded.elapsed();

    assert_eq!(
        balance(&client, &instance.base, &customer).await,
        (total(real.len()), Decimal::ZERO)
    );
    eprintln!(
        "no flood, limit {limit}/min: the customer's {} orders took {waited:?}",
        real.len()
    );
    instance.terminate();
}
