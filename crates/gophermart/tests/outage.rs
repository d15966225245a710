//! A database outage in the middle of a workload: requests fail fast with 503, readiness says
//! so, and once the database is back the service recovers without a restart and nothing that
//! was acknowledged is lost.
//!
//! The outage is made by a TCP proxy between the service and PostgreSQL that, on command, cuts
//! every connection and refuses new ones.

mod support;

use std::time::{Duration, Instant};

use adapters_postgres::{
    testing::TestDatabase,
    testing_proxy::{Cut, OutageProxy},
};

use support::{balance, register, upload, Instance};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_service_answers_503_during_a_database_outage_and_recovers_after_it() {
    let db = TestDatabase::create().await;
    let proxy = OutageProxy::start(db.url()).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let mut instance = Instance::start_at(
        proxy.url(),
        "http://127.0.0.1:9",
        &["--database-timeout-ms", "1000"],
    );
    instance.wait_ready(&client).await;
    let token = register(&client, &instance.base, "steady").await;
    let before = domain::with_check_digit("4242");
    assert_eq!(upload(&client, &instance.base, &token, &before).await, 202);

    proxy.outage(Cut::AtOnce);
    let started = Instant::now();
    let during = client
        .get(format!("{}/api/user/balance", instance.base))
        .bearer_auth(&token)
        .send()
        .await
        .expect("answered");
    let failed_in = started.elapsed();
    let ready = client
        .get(format!("{}/readyz", instance.base))
        .send()
        .await
        .expect("answered");
    let alive = client
        .get(format!("{}/healthz", instance.base))
        .send()
        .await
        .expect("answered");
    let upload_during = upload(
        &client,
        &instance.base,
        &token,
        &domain::with_check_digit("4343"),
    )
    .await;

    assert_eq!(during.status(), 503);
    assert!(
        failed_in < Duration::from_secs(5),
        "answered after {failed_in:?}"
    );
    assert_eq!(ready.status(), 503);
    assert_eq!(alive.status(), 200);
    assert_eq!(upload_during, 503);

    proxy.restore();
    let restored = Instant::now();
    let recovered_in = loop {
        let response = client
            .get(format!("{}/api/user/balance", instance.base))
            .bearer_auth(&token)
            .send()
            .await
            .expect("answered");
        if response.status() == 200 {
            break restored.elapsed();
        }
        assert!(restored.elapsed() < Duration::from_secs(30), "no recovery");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let after = domain::with_check_digit("4444");
    assert_eq!(upload(&client, &instance.base, &token, &after).await, 202);
    assert_eq!(
        upload(&client, &instance.base, &token, &before).await,
        200,
        "the earlier order is kept"
    );
    assert_eq!(
        balance(&client, &instance.base, &token).await.0,
        rust_decimal::Decimal::ZERO
    );
    let ready_after = client
        .get(format!("{}/readyz", instance.base))
        .send()
        .await
        .expect("answered");
    assert_eq!(ready_after.status(), 200);
    eprintln!("outage: a request failed in {failed_in:?}; service recovered {recovered_in:?} after the database returned");
    instance.terminate();
}
