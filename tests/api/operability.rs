//! Operability: the API description and its browsable page, readiness when the database is
//! gone, and Prometheus metrics that move with the traffic.

use std::time::{Duration, Instant};

use adapters_postgres::testing::TestDatabase;
use api_tests::{order_number, spawn_accrual, spawn_app, spawn_app_with, Options};
use clap::Parser;
use gophermart::{Application, Config};
use serde_json::{json, Value};

use crate::support::{call, sample, scrape};

fn requests(method: &str, route: &str, status: u16) -> String {
    format!(
        r#"gophermart_http_requests_total{{method="{method}",route="{route}",status="{status}"}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_description_documents_every_customer_operation() {
    let app = spawn_app().await;

    let response = call(&app, "GET", "/api/openapi.json", &[]).await;

    assert_eq!(response.status(), 200);
    let document: Value = response.json().await.expect("JSON");
    assert!(
        document["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.")),
        "{}",
        document["openapi"]
    );
    for (method, path) in [
        ("post", "/api/user/register"),
        ("post", "/api/user/login"),
        ("post", "/api/user/orders"),
        ("get", "/api/user/orders"),
        ("get", "/api/user/balance"),
        ("post", "/api/user/balance/withdraw"),
        ("get", "/api/user/withdrawals"),
    ] {
        assert!(
            document["paths"][path][method]["responses"].is_object(),
            "{method} {path}"
        );
    }
    assert_eq!(
        document["components"]["securitySchemes"]["cookie"],
        json!({"type": "apiKey", "in": "cookie", "name": "token",
               "description": "The session cookie set by the register or login answer (HttpOnly, SameSite=Strict)."})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_browsable_api_page_is_served_with_its_assets() {
    let app = spawn_app().await;

    let page = call(&app, "GET", "/swagger-ui/", &[]).await;
    let initializer = call(&app, "GET", "/swagger-ui/swagger-initializer.js", &[]).await;
    let bundle = call(&app, "GET", "/swagger-ui/swagger-ui-bundle.js", &[]).await;
    let bare = call(&app, "GET", "/swagger-ui", &[]).await;

    assert_eq!(page.status(), 200);
    assert!(page.text().await.expect("text").contains("swagger-ui"));
    assert_eq!(initializer.status(), 200);
    assert!(initializer
        .text()
        .await
        .expect("text")
        .contains("/api/openapi.json"));
    assert_eq!(bundle.status(), 200);
    assert!(bare.status().is_redirection(), "{}", bare.status());
    assert_eq!(bare.headers()["location"], "/swagger-ui/");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_by_route_pattern_and_the_points_that_move() {
    let accrual = spawn_accrual(|_| {}).await;
    let client = reqwest::Client::new();
    let rule = client
        .post(format!("{}/api/goods", accrual.base_url()))
        .json(&json!({"match": "Bork", "reward": 5, "reward_type": "%"}))
        .send()
        .await
        .expect("sent");
    assert_eq!(rule.status(), 200);
    let credited = order_number(555_001);
    let registered = client
        .post(format!("{}/api/orders", accrual.base_url()))
        .json(&json!({"order": credited, "goods": [{"description": "Bork kettle", "price": 14599.50}]}))
        .send()
        .await
        .expect("sent");
    assert_eq!(registered.status(), 202);
    let app = spawn_app_with(Options {
        accrual_address: accrual.base_url(),
        ..Options::default()
    })
    .await;
    let before = scrape(&app).await;

    let token = app.signed_up("metered").await;
    assert_eq!(app.upload(&token, &credited).await.status(), 202);
    app.wait_final(&token, &credited, Duration::from_secs(20))
        .await;
    // The worker counts a credit once the commit that made the order PROCESSED has returned
    // to it, which may be a moment after the order reads PROCESSED.
    let deadline = Instant::now() + Duration::from_secs(10);
    while sample(
        &scrape(&app).await,
        "gophermart_accrual_orders_credited_total",
    ) != Some(1.0)
    {
        assert!(Instant::now() < deadline, "the credit was never counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let spent = order_number(555_002);
    assert_eq!(app.withdraw(&token, &spent, "700.5").await.status(), 200);
    assert_eq!(
        app.withdraw(&token, &order_number(555_003), "1000")
            .await
            .status(),
        402
    );
    let unknown_to_accrual = order_number(555_004);
    assert_eq!(app.upload(&token, &unknown_to_accrual).await.status(), 202);
    let miss = call(
        &app,
        "GET",
        &format!("/api/user/orders/{unknown_to_accrual}"),
        &[],
    )
    .await;
    assert_eq!(miss.status(), 404);
    let after = scrape(&app).await;

    assert_eq!(
        sample(&before, &requests("POST", "/api/user/register", 200)),
        None
    );
    assert_eq!(
        sample(&after, &requests("POST", "/api/user/register", 200)),
        Some(1.0)
    );
    assert_eq!(
        sample(&after, &requests("POST", "/api/user/orders", 202)),
        Some(2.0)
    );
    assert_eq!(
        sample(&after, &requests("POST", "/api/user/balance/withdraw", 200)),
        Some(1.0)
    );
    assert_eq!(
        sample(&after, &requests("POST", "/api/user/balance/withdraw", 402)),
        Some(1.0)
    );
    assert!(sample(&after, &requests("GET", "/api/user/orders", 200)).is_some_and(|n| n >= 1.0));
    assert_eq!(
        sample(&after, &requests("GET", "unmatched", 404)),
        Some(1.0)
    );
    assert!(
        !after.contains(&format!("/api/user/orders/{unknown_to_accrual}")),
        "raw paths must not become labels"
    );
    assert_eq!(
        sample(
            &after,
            r#"gophermart_http_request_duration_seconds_count{method="POST",route="/api/user/register",status="200"}"#
        ),
        Some(1.0)
    );
    assert_eq!(sample(&after, "gophermart_withdrawals_total"), Some(1.0));
    assert_eq!(
        sample(&after, "gophermart_points_withdrawn_total"),
        Some(700.5)
    );
    assert!(
        sample(
            &after,
            r#"gophermart_accrual_answers_total{kind="processed"}"#
        )
        .is_some_and(|n| n >= 1.0),
        "{after}"
    );
    assert_eq!(
        sample(&after, "gophermart_accrual_orders_credited_total"),
        Some(1.0)
    );
    assert_eq!(
        sample(&after, "gophermart_accrual_points_credited_total"),
        Some(729.98)
    );
    assert_eq!(
        sample(&after, "gophermart_accrual_paused_seconds_total"),
        Some(0.0)
    );
    assert_eq!(sample(&after, "gophermart_accrual_paused"), Some(0.0));
    let waiting: f64 = [
        "queued",
        "not_registered",
        "processing",
        "rate_limited",
        "failing",
    ]
    .iter()
    .filter_map(|state| {
        sample(
            &after,
            &format!(r#"gophermart_accrual_queue_entries{{state="{state}"}}"#),
        )
    })
    .sum();
    assert_eq!(
        waiting, 1.0,
        "the order the accrual system does not know waits"
    );
    assert_eq!(sample(&after, "gophermart_db_pool_max_size"), Some(4.0));
    assert!(sample(&after, "gophermart_db_pool_size").is_some_and(|n| n >= 1.0));
    assert!(sample(&after, "gophermart_db_pool_available").is_some());
    assert!(sample(&after, "gophermart_db_pool_waiting").is_some());
    assert!(after.contains("gophermart_build_info{version="));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_with_the_reason_when_the_database_is_gone() {
    let db = TestDatabase::create().await;
    let config = Config::try_parse_from([
        "gophermart",
        "-a",
        "127.0.0.1:0",
        "-d",
        db.url(),
        "-r",
        "http://127.0.0.1:9",
        "--bcrypt-cost",
        "4",
        "--http-workers",
        "1",
        "--database-pool-size",
        "2",
        "--database-timeout-ms",
        "1000",
    ])
    .expect("valid configuration");
    let app = Application::build(config).await.expect("starts");
    let base = format!("http://127.0.0.1:{}", app.port());
    let stop = app.stop_handle();
    let task = tokio::spawn(app.run_until_stopped());
    let client = reqwest::Client::new();
    let ready = client
        .get(format!("{base}/readyz"))
        .send()
        .await
        .expect("sent");
    assert_eq!(ready.status(), 200);

    drop(db);
    let not_ready = client
        .get(format!("{base}/readyz"))
        .send()
        .await
        .expect("sent");
    let live = client
        .get(format!("{base}/healthz"))
        .send()
        .await
        .expect("sent");
    let metrics = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("sent");

    assert_eq!(not_ready.status(), 503);
    assert_eq!(
        not_ready.headers()["content-type"],
        "application/problem+json"
    );
    let body: Value = not_ready.json().await.expect("JSON");
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(detail.starts_with("database: "), "{body}");
    assert_eq!(live.status(), 200);
    assert_eq!(metrics.status(), 200);
    let text = metrics.text().await.expect("text");
    assert_eq!(
        sample(&text, "gophermart_accrual_queue_read_errors_total"),
        Some(1.0)
    );
    assert!(
        !text.contains("gophermart_accrual_queue_entries{"),
        "{text}"
    );
    stop.stop().await;
    let _ = task.await;
}
