//! Uploading order numbers and listing them.

use std::time::Duration;

use api_tests::{order_number, spawn_app, TestApp};
use reqwest::{header, Response};
use serde_json::{json, Value};

use crate::support::{assert_problem, rfc3339};

async fn upload_with(app: &TestApp, token: &str, content_type: &str, body: &str) -> Response {
    app.client
        .post(app.url("/api/user/orders"))
        .bearer_auth(token)
        .header(header::CONTENT_TYPE, content_type)
        .body(body.to_owned())
        .send()
        .await
        .expect("request sent")
}

async fn orders_of(app: &TestApp, token: &str) -> Vec<Value> {
    let response = app.get("/api/user/orders", token).await;
    assert_eq!(response.status(), 200);
    response.json().await.expect("a JSON list")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_valid_number_is_accepted_with_202() {
    let app = spawn_app().await;
    let token = app.signed_up("alice").await;

    let response = app.upload(&token, "12345678903").await;

    assert_eq!(response.status(), 202);
    let orders = orders_of(&app, &token).await;
    assert_eq!(orders.len(), 1);
    assert_eq!(orders[0]["number"], "12345678903");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploading_the_same_number_again_answers_200_and_keeps_one_order() {
    let app = spawn_app().await;
    let token = app.signed_up("alice").await;
    assert_eq!(app.upload(&token, "12345678903").await.status(), 202);

    let response = app.upload(&token, "12345678903").await;

    assert_eq!(response.status(), 200);
    assert_eq!(orders_of(&app, &token).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_number_another_user_uploaded_answers_409() {
    let app = spawn_app().await;
    let alice = app.signed_up("alice").await;
    let bob = app.signed_up("bob").await;
    assert_eq!(app.upload(&alice, "12345678903").await.status(), 202);

    let response = app.upload(&bob, "12345678903").await;

    assert_problem(response, 409).await;
    assert_eq!(app.get("/api/user/orders", &bob).await.status(), 204);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbers_failing_validation_answer_422() {
    let app = spawn_app().await;
    let token = app.signed_up("alice").await;

    for number in [
        "12345678902",
        "abc",
        "12 34",
        "-12345678903",
        "1234567890３",
    ] {
        let response = app.upload(&token, number).await;

        assert_eq!(response.status(), 422, "{number:?}");
        assert_problem(response, 422).await;
    }
    assert_eq!(app.get("/api/user/orders", &token).await.status(), 204);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_body_answers_400() {
    let app = spawn_app().await;
    let token = app.signed_up("alice").await;

    for body in ["", "  \n"] {
        let response = app.upload(&token, body).await;

        assert_eq!(response.status(), 400, "{body:?}");
        assert_problem(response, 400).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_content_type_answers_400() {
    let app = spawn_app().await;
    let token = app.signed_up("alice").await;

    let response = upload_with(&app, &token, "application/json", "12345678903").await;

    assert_problem(response, 400).await;
    assert_eq!(app.get("/api/user/orders", &token).await.status(), 204);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_plain_content_type_with_a_charset_is_accepted() {
    let app = spawn_app().await;
    let token = app.signed_up("alice").await;

    let response = upload_with(&app, &token, "text/plain; charset=utf-8", "12345678903").await;

    assert_eq!(response.status(), 202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn surrounding_whitespace_around_the_number_is_ignored() {
    let app = spawn_app().await;
    let token = app.signed_up("alice").await;

    let with_newline = app.upload(&token, "12345678903\n").await;
    let padded_again = app.upload(&token, "  12345678903\r\n").await;

    assert_eq!(with_newline.status(), 202);
    assert_eq!(padded_again.status(), 200);
    let orders = orders_of(&app, &token).await;
    assert_eq!(orders.len(), 1);
    assert_eq!(orders[0]["number"], "12345678903");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_users_racing_for_one_number_get_one_202_and_nine_409() {
    let app = spawn_app().await;
    let mut tokens = Vec::new();
    for i in 0..10 {
        tokens.push(app.signed_up(&format!("racer{i}")).await);
    }
    let number = order_number(31_337);

    let statuses: Vec<u16> = futures::future::join_all(
        tokens
            .iter()
            .map(|token| async { app.upload(token, &number).await.status().as_u16() }),
    )
    .await;

    let accepted = statuses.iter().filter(|s| **s == 202).count();
    let conflicts = statuses.iter().filter(|s| **s == 409).count();
    assert_eq!((accepted, conflicts), (1, 9), "{statuses:?}");
    let mut owners = 0;
    for token in &tokens {
        if app.get("/api/user/orders", token).await.status() == 200 {
            owners += 1;
        }
    }
    assert_eq!(owners, 1, "exactly one user holds the order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_without_orders_gets_204_with_an_empty_body() {
    let app = spawn_app().await;
    let token = app.signed_up("alice").await;

    let response = app.get("/api/user/orders", &token).await;

    assert_eq!(response.status(), 204);
    assert!(response.bytes().await.expect("body").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_are_listed_newest_first_with_their_fields() {
    let app = spawn_app().await;
    let token = app.signed_up("alice").await;
    let numbers: Vec<String> = (1..=3).map(|i| order_number(1_000 + i)).collect();
    for number in &numbers {
        assert_eq!(app.upload(&token, number).await.status(), 202);
        tokio::time::sleep(Duration::from_millis(1_100)).await;
    }

    let response = app.get("/api/user/orders", &token).await;

    assert_eq!(response.status(), 200);
    assert!(
        response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json")),
        "{:?}",
        response.headers().get(header::CONTENT_TYPE)
    );
    let orders: Vec<Value> = response.json().await.expect("a JSON list");
    let listed: Vec<&str> = orders
        .iter()
        .map(|o| o["number"].as_str().expect("a string number"))
        .collect();
    assert_eq!(listed, [&numbers[2], &numbers[1], &numbers[0]]);
    let times: Vec<_> = orders.iter().map(|o| rfc3339(&o["uploaded_at"])).collect();
    assert!(times[0] >= times[1] && times[1] >= times[2], "{times:?}");
    for order in &orders {
        assert!(
            order["status"] == "NEW" || order["status"] == "PROCESSING",
            "{order}"
        );
        assert!(order.get("accrual").is_none(), "no accrual key: {order}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_uploaded_within_one_second_are_still_listed_newest_first() {
    let app = spawn_app().await;
    let token = app.signed_up("alice").await;
    let numbers: Vec<String> = (1..=3).map(|i| order_number(2_000 + i)).collect();
    for number in &numbers {
        assert_eq!(app.upload(&token, number).await.status(), 202);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let orders = orders_of(&app, &token).await;

    let listed: Vec<&str> = orders
        .iter()
        .map(|o| o["number"].as_str().expect("a string number"))
        .collect();
    assert_eq!(listed, [&numbers[2], &numbers[1], &numbers[0]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processed_order_shows_its_accrual_as_a_json_number() {
    let funded = crate::support::funded_729_98("alice").await;

    let orders = orders_of(&funded.app, &funded.token).await;

    assert_eq!(orders.len(), 1);
    assert_eq!(orders[0]["status"], "PROCESSED");
    assert!(orders[0]["accrual"].is_number(), "{}", orders[0]);
    assert_eq!(orders[0]["accrual"], json!(729.98));
    rfc3339(&orders[0]["uploaded_at"]);
}
