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

/// A fresh database, a proxy in front of it, and a client that waits at most 30 s.
async fn behind_a_proxy() -> (TestDatabase, OutageProxy, reqwest::Client) {
    let db = TestDatabase::create().await;
    let proxy = OutageProxy::start(db.url()).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    (db, proxy, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_service_answers_503_during_a_database_outage_and_recovers_after_it() {
    let (_db, proxy, client) = behind_a_proxy().await;
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

/// A database server that goes silent (a network partition: no FIN, no RST) holds no request
/// beyond the documented bound: DATABASE_TIMEOUT_MS to get a connection plus
/// DATABASE_STATEMENT_TIMEOUT_MS for a statement. Every request answers 503 meanwhile, never a
/// 500, and the service recovers by itself once the server answers again. The log tells the
/// outage once: a warning when it begins, a line when it ends with what it refused; not a line
/// per request.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_silent_database_server_holds_no_request_beyond_the_bound() {
    let (_db, proxy, client) = behind_a_proxy().await;
    let log = std::env::temp_dir().join(format!("gophermart-silent-{}.log", std::process::id()));
    let _remove = RemoveOnDrop(log.clone());
    eprintln!("log: {}", log.display());
    let mut instance = Instance::start_logging(
        proxy.url(),
        "http://127.0.0.1:9",
        &[
            "--database-timeout-ms",
            "1000",
            "--database-statement-timeout-ms",
            "1000",
        ],
        &log,
    );
    instance.wait_ready(&client).await;
    let token = register(&client, &instance.base, "partitioned").await;
    let before = domain::with_check_digit("5151");
    assert_eq!(upload(&client, &instance.base, &token, &before).await, 202);

    proxy.outage(Cut::Silent);
    // Requests on the connections already open, and more than the pool holds, so that some
    // wait for a connection and some try to open one.
    let requests = (0..8).map(|i| {
        let (client, base, token) = (client.clone(), instance.base.clone(), token.clone());
        async move {
            let started = Instant::now();
            let status = if i % 2 == 0 {
                upload(
                    &client,
                    &base,
                    &token,
                    &domain::with_check_digit(&format!("52{i}")),
                )
                .await
            } else {
                client
                    .get(format!("{base}/api/user/balance"))
                    .bearer_auth(&token)
                    .send()
                    .await
                    .expect("answered")
                    .status()
                    .as_u16()
            };
            (status, started.elapsed())
        }
    });
    let answers = futures::future::join_all(requests).await;
    let bound = Duration::from_millis(1000 + 1000);
    for (status, took) in &answers {
        assert_eq!(*status, 503, "{answers:?}");
        // The bound, and generous slack for a loaded test machine: without the bound such a
        // request waits for as long as TCP keeps retrying, many minutes.
        assert!(*took < bound + Duration::from_secs(5), "{answers:?}");
    }

    proxy.restore();
    let restored = Instant::now();
    loop {
        let status = upload(&client, &instance.base, &token, &before).await;
        if status == 200 {
            break;
        }
        assert!(
            status == 503 && restored.elapsed() < Duration::from_secs(30),
            "answered {status} after the server came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    instance.terminate();
    // The log's text, without its colours.
    let lines = std::fs::read_to_string(&log).expect("the log");
    let lines: String = {
        let mut plain = String::with_capacity(lines.len());
        let mut rest = lines.as_str();
        while let Some(at) = rest.find('\u{1b}') {
            plain.push_str(&rest[..at]);
            rest = &rest[at..];
            rest = rest.find('m').map_or("", |end| &rest[end + 1..]);
        }
        plain.push_str(rest);
        plain
    };
    // The accrual system of this test is a closed port: the worker's warnings about it come
    // and go with its retries, and say nothing of the database.
    let loud: Vec<&str> = lines
        .lines()
        .filter(|line| line.contains(" WARN ") || line.contains(" ERROR "))
        .filter(|line| !line.contains("accrual request failed"))
        .collect();
    assert!(
        loud.iter()
            .any(|line| line.contains("the database is unreachable")),
        "the outage's beginning is not in the log: {loud:#?}"
    );
    assert!(
        loud.len() <= 3,
        "{} lines at WARN or above for one outage: {loud:#?}",
        loud.len()
    );
    assert!(
        lines.contains("the database is reachable again"),
        "the outage's end is not in the log"
    );
    eprintln!(
        "silent server: every request answered 503 in at most {:?} (bound {bound:?}); recovered {:?} after it answered again; {} lines at WARN or above",
        answers.iter().map(|(_, took)| *took).max().unwrap_or_default(),
        restored.elapsed(),
        loud.len()
    );
}

/// Removes a file when dropped, also when the test fails.
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if std::env::var_os("KEEP_TEST_LOG").is_none() {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}
