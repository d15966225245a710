//! The transaction pooler itself fails: PgBouncer is killed in the middle of a workload and
//! started again. Requests while it is gone answer 503 fast (never 500), the service recovers
//! without a restart, and every order is credited exactly once.
//!
//! Runs under scripts/with-pgbouncer.sh with `GOPHERMART_E2E_POOLER=1` (`make test` does);
//! elsewhere it says so and passes without running.

mod support;

use std::{
    net::SocketAddr,
    process::Command,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use adapters_postgres::testing::TestDatabase;
use rust_decimal::Decimal;

use support::{
    balance, free_port, numbers, points, register, register_purchases, start_accrual, upload,
    wait_all_final, Instance,
};

fn pgbouncer(action: &str) {
    let ctl = std::env::var("PGBOUNCER_CTL").expect("PGBOUNCER_CTL");
    let status = Command::new(ctl).arg(action).status().expect("runs");
    assert!(status.success(), "PgBouncer {action}: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_pooler_answers_503_fast_and_loses_or_doubles_nothing() {
    if std::env::var("GOPHERMART_E2E_POOLER").as_deref() != Ok("1")
        || std::env::var("PGBOUNCER_CTL").is_err()
    {
        eprintln!("skipped: runs under scripts/with-pgbouncer.sh with GOPHERMART_E2E_POOLER=1");
        return;
    }
    let db = TestDatabase::create().await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let accrual_address: SocketAddr = format!("127.0.0.1:{}", free_port())
        .parse()
        .expect("address");
    let accrual_url = format!("http://{accrual_address}");
    let _accrual = start_accrual(accrual_address, |_| {}).await;
    let instance = Instance::start(&db, &accrual_url, &["--database-timeout-ms", "1000"]);
    instance.wait_ready(&client).await;

    const CUSTOMERS: u64 = 4;
    const ORDERS: usize = 30;
    let mut tokens = Vec::new();
    let mut all = Vec::new();
    for c in 0..CUSTOMERS {
        tokens.push(register(&client, &instance.base, &format!("pooled{c}")).await);
        let mine = numbers(ORDERS, 7_100_000 + c * 1_000);
        register_purchases(&client, &accrual_url, &mine, &points).await;
        all.push(mine);
    }

    // Each customer uploads its orders one after the other, a few milliseconds apart, while
    // PgBouncer is killed and started again. Every answer is recorded.
    let answers: Arc<Mutex<Vec<(u16, Duration)>>> = Arc::default();
    let uploads = (0..CUSTOMERS as usize).map(|c| {
        let (client, base, token) = (client.clone(), instance.base.clone(), tokens[c].clone());
        let (mine, answers) = (all[c].clone(), answers.clone());
        tokio::spawn(async move {
            let mut refused = Vec::new();
            for number in &mine {
                let started = Instant::now();
                let status = upload(&client, &base, &token, number).await;
                answers
                    .lock()
                    .expect("lock")
                    .push((status, started.elapsed()));
                if status == 503 {
                    refused.push(number.clone());
                }
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
            refused
        })
    });
    let uploads: Vec<_> = uploads.collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    pgbouncer("kill");
    let during_started = Instant::now();
    let during = client
        .get(format!("{}/api/user/balance", instance.base))
        .bearer_auth(&tokens[0])
        .send()
        .await
        .expect("answered");
    let during_in = during_started.elapsed();
    let ready_during = client
        .get(format!("{}/readyz", instance.base))
        .send()
        .await
        .expect("answered")
        .status();
    tokio::time::sleep(Duration::from_millis(500)).await;
    pgbouncer("start");
    let mut refused = Vec::new();
    for task in uploads {
        refused.push(task.await.expect("uploads"));
    }

    assert_eq!(during.status(), 503, "a request while PgBouncer is gone");
    assert!(
        during_in < Duration::from_secs(3),
        "answered after {during_in:?}"
    );
    assert_eq!(ready_during, 503);
    let answers = answers.lock().expect("lock").clone();
    for (status, took) in &answers {
        assert!(
            *status == 202 || *status == 503,
            "an upload answered {status}"
        );
        if *status == 503 {
            assert!(*took < Duration::from_secs(3), "a 503 after {took:?}");
        }
    }
    let failed = answers.iter().filter(|(s, _)| *s == 503).count();

    // A refused upload is retried, as a client would: it answers 202, or 200 when the first
    // attempt had committed after all.
    for (c, numbers) in refused.iter().enumerate() {
        for number in numbers {
            let status = upload(&client, &instance.base, &tokens[c], number).await;
            assert!(status == 202 || status == 200, "retry answered {status}");
        }
    }
    let expected: Decimal = (0..ORDERS).map(points).sum();
    for (c, token) in tokens.iter().enumerate() {
        wait_all_final(
            &client,
            &instance.base,
            token,
            ORDERS,
            Duration::from_secs(60),
        )
        .await;
        assert_eq!(
            balance(&client, &instance.base, token).await.0,
            expected,
            "customer {c}: every order credited exactly once"
        );
    }
    eprintln!(
        "pooler outage: {failed} of {} uploads answered 503; a request while PgBouncer was gone answered in {during_in:?}",
        answers.len()
    );
}
