//! Hostile input: SQL metacharacters, deeply nested bodies, and clients that send a request
//! slowly to hold connections.

use std::time::{Duration, Instant};

use api_tests::{spawn_app, TestApp};
use serde_json::json;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const SQL: [&str; 4] = [
    "x'; DROP TABLE users; --",
    "\" OR \"1\"=\"1",
    "1); DELETE FROM accounts; --",
    "$1 \\' ;",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_metacharacters_are_plain_data_in_every_field() {
    let app = spawn_app().await;

    for (i, text) in SQL.iter().enumerate() {
        let login = format!("{text}{i}");
        assert_eq!(app.register(&login, text).await.status(), 200, "{login}");
        assert_eq!(app.login(&login, text).await.status(), 200, "{login}");
    }
    let token = app.signed_up("after").await;
    for text in SQL {
        assert_eq!(app.upload(&token, text).await.status(), 422, "{text}");
        let withdraw = app
            .post_json(
                "/api/user/balance/withdraw",
                &json!({"order": text, "sum": 1}),
                Some(&token),
            )
            .await;
        assert_eq!(withdraw.status(), 422, "{text}");
    }

    // The tables are intact: the users above still sign in and the account reads.
    assert_eq!(
        app.login(&format!("{}0", SQL[0]), SQL[0]).await.status(),
        200
    );
    assert_eq!(
        app.balance(&token).await,
        json!({"current": 0, "withdrawn": 0})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deeply_nested_body_is_refused_as_malformed() {
    let app = spawn_app().await;
    let depth = 10_000;
    let body = format!("{}{}", "[".repeat(depth), "]".repeat(depth));

    let response = app
        .client
        .post(app.url("/api/user/register"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("sent");

    assert_eq!(response.status(), 400);
    assert_eq!(app.register("still-alive", "pw").await.status(), 200);
}

async fn slow_client(app: &TestApp) -> TcpStream {
    let address = app.address.trim_start_matches("http://").to_owned();
    let mut stream = TcpStream::connect(address).await.expect("connected");
    stream
        .write_all(b"POST /api/user/login HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("partial head sent");
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_and_do_not_starve_others() {
    let app = spawn_app().await;
    // More idle half-requests than the service has workers.
    let mut slow = Vec::new();
    for _ in 0..64 {
        slow.push(slow_client(&app).await);
    }

    let started = Instant::now();
    let served = app.register("patient", "pw").await;
    assert_eq!(served.status(), 200);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "served while slow clients hang"
    );

    // The service closes a connection whose request head does not arrive in time.
    let mut stream = slow.pop().expect("a slow client");
    let mut buffer = Vec::new();
    let closed =
        tokio::time::timeout(Duration::from_secs(15), stream.read_to_end(&mut buffer)).await;
    assert!(closed.is_ok(), "the connection was not closed within 15 s");
}

/// A small deterministic generator of test bytes.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            u8::try_from(state >> 56).expect("one byte")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_bodies_compressed_or_not_never_cause_a_server_error() {
    let app = spawn_app().await;
    let token = app.signed_up("fuzzed").await;
    let targets = [
        ("/api/user/register", "application/json"),
        ("/api/user/login", "application/json"),
        ("/api/user/orders", "text/plain"),
        ("/api/user/balance/withdraw", "application/json"),
    ];

    for seed in 0..60u64 {
        let body = noise(seed, usize::try_from(seed * 37 % 2_000).expect("small"));
        let (path, content_type) = targets[usize::try_from(seed).expect("small") % targets.len()];
        for gzip in [false, true] {
            let mut request = app
                .client
                .post(app.url(path))
                .bearer_auth(&token)
                .header("content-type", content_type)
                .body(body.clone());
            if gzip {
                request = request.header("content-encoding", "gzip");
            }
            let status = request.send().await.expect("answered").status();

            assert!(
                status.is_client_error(),
                "{path} with {} bytes (gzip {gzip}): {status}",
                body.len()
            );
        }
    }
    assert_eq!(
        app.balance(&token).await,
        json!({"current": 0, "withdrawn": 0})
    );
}
