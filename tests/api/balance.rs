//! The balance, withdrawals and their list: exact money, idempotent repeats, and a balance
//! that never goes negative under concurrency.

use std::time::Duration;

use api_tests::{order_number, spawn_app, TestApp};
use reqwest::{header, Response};
use serde_json::{json, Value};

use crate::support::{assert_problem, funded_100, funded_729_98, rfc3339};

async fn withdraw_raw(app: &TestApp, token: &str, body: &str) -> Response {
    app.client
        .post(app.url("/api/user/balance/withdraw"))
        .bearer_auth(token)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body.to_owned())
        .send()
        .await
        .expect("request sent")
}

async fn withdrawals_of(app: &TestApp, token: &str) -> Vec<Value> {
    let response = app.get("/api/user/withdrawals", token).await;
    assert_eq!(response.status(), 200);
    response.json().await.expect("a JSON list")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_user_has_a_zero_balance_as_json_numbers() {
    let app = spawn_app().await;
    let token = app.signed_up("alice").await;

    let response = app.get("/api/user/balance", &token).await;

    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    assert!(body["current"].is_number(), "{body}");
    assert!(body["withdrawn"].is_number(), "{body}");
    assert_eq!(body, json!({"current": 0, "withdrawn": 0}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_without_withdrawals_gets_204_with_an_empty_body() {
    let app = spawn_app().await;
    let token = app.signed_up("alice").await;

    let response = app.get("/api/user/withdrawals", &token).await;

    assert_eq!(response.status(), 204);
    assert!(response.bytes().await.expect("body").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn withdrawing_a_cent_leaves_the_exact_remainder() {
    let funded = funded_729_98("alice").await;
    let (app, token) = (&funded.app, &funded.token);

    let response = app.withdraw(token, &order_number(2_377_225), "0.01").await;

    assert_eq!(response.status(), 200);
    assert_eq!(
        app.balance(token).await,
        json!({"current": 729.97, "withdrawn": 0.01})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn withdrawing_the_whole_balance_leaves_zero() {
    let funded = funded_729_98("alice").await;
    let (app, token) = (&funded.app, &funded.token);

    let response = app
        .withdraw(token, &order_number(2_377_225), "729.98")
        .await;

    assert_eq!(response.status(), 200);
    assert_eq!(
        app.balance(token).await,
        json!({"current": 0, "withdrawn": 729.98})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn withdrawing_more_than_the_balance_answers_402_and_changes_nothing() {
    let funded = funded_729_98("alice").await;
    let (app, token) = (&funded.app, &funded.token);

    let response = app
        .withdraw(token, &order_number(2_377_225), "729.99")
        .await;

    assert_problem(response, 402).await;
    assert_eq!(
        app.balance(token).await,
        json!({"current": 729.98, "withdrawn": 0})
    );
    assert_eq!(app.get("/api/user/withdrawals", token).await.status(), 204);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_without_points_gets_402() {
    let app = spawn_app().await;
    let token = app.signed_up("alice").await;

    let response = app.withdraw(&token, &order_number(2_377_225), "1").await;

    assert_problem(response, 402).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn withdrawing_against_an_invalid_order_number_answers_422() {
    let funded = funded_729_98("alice").await;
    let (app, token) = (&funded.app, &funded.token);

    for order in ["12345678902", "abc", ""] {
        let response = app.withdraw(token, order, "1").await;

        assert_eq!(response.status(), 422, "{order:?}");
        assert_problem(response, 422).await;
    }
    assert_eq!(
        app.balance(token).await,
        json!({"current": 729.98, "withdrawn": 0})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn withdrawing_a_zero_negative_or_too_precise_sum_answers_422() {
    let funded = funded_729_98("alice").await;
    let (app, token) = (&funded.app, &funded.token);

    for (i, sum) in ["0", "0.00", "-5", "-0.01", "1.001"]
        .into_iter()
        .enumerate()
    {
        let order = order_number(5_000 + i as u64);

        let response = app.withdraw(token, &order, sum).await;

        assert_eq!(response.status(), 422, "sum {sum}");
        assert_problem(response, 422).await;
    }
    assert_eq!(
        app.balance(token).await,
        json!({"current": 729.98, "withdrawn": 0})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_withdrawal_bodies_answer_400() {
    let funded = funded_729_98("alice").await;
    let (app, token) = (&funded.app, &funded.token);
    let order = order_number(2_377_225);
    let bodies = [
        format!(r#"{{"order":"{order}","sum":"10"}}"#),
        format!(r#"{{"order":"{order}"}}"#),
        r#"{"sum":10}"#.to_owned(),
        format!(r#"{{"order":"{order}","sum":10"#),
        format!(r#"{{"order":{order},"sum":10}}"#),
        format!(r#"{{"order":"{order}","sum":null}}"#),
        String::new(),
    ];

    for body in bodies {
        let response = withdraw_raw(app, token, &body).await;

        assert_eq!(response.status(), 400, "{body}");
        assert_problem(response, 400).await;
    }
    assert_eq!(
        app.balance(token).await,
        json!({"current": 729.98, "withdrawn": 0})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeating_an_identical_withdrawal_answers_200_and_charges_once() {
    let funded = funded_729_98("alice").await;
    let (app, token) = (&funded.app, &funded.token);
    let order = order_number(2_377_225);
    assert_eq!(app.withdraw(token, &order, "100.5").await.status(), 200);

    let repeated = app.withdraw(token, &order, "100.5").await;
    let repeated_with_trailing_zero = app.withdraw(token, &order, "100.50").await;

    assert_eq!(repeated.status(), 200);
    assert_eq!(repeated_with_trailing_zero.status(), 200);
    assert_eq!(
        app.balance(token).await,
        json!({"current": 629.48, "withdrawn": 100.5})
    );
    assert_eq!(withdrawals_of(app, token).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reusing_a_withdrawal_order_number_with_another_sum_answers_409() {
    let funded = funded_729_98("alice").await;
    let (app, token) = (&funded.app, &funded.token);
    let order = order_number(2_377_225);
    assert_eq!(app.withdraw(token, &order, "100").await.status(), 200);

    let response = app.withdraw(token, &order, "50").await;

    assert_problem(response, 409).await;
    assert_eq!(
        app.balance(token).await,
        json!({"current": 629.98, "withdrawn": 100})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_user_withdrawing_against_a_used_order_number_gets_409() {
    let funded = funded_729_98("alice").await;
    let (app, alice) = (&funded.app, &funded.token);
    let order = order_number(2_377_225);
    assert_eq!(app.withdraw(alice, &order, "100").await.status(), 200);
    let bob = app.signed_up("bob").await;

    let response = app.withdraw(&bob, &order, "100").await;

    assert_eq!(response.status(), 409, "not 402: the number is taken");
    assert_problem(response, 409).await;
    assert_eq!(app.get("/api/user/withdrawals", &bob).await.status(), 204);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn withdrawals_are_listed_newest_first_with_exact_sums() {
    let funded = funded_729_98("alice").await;
    let (app, token) = (&funded.app, &funded.token);
    let first = order_number(2_377_225);
    let second = order_number(2_377_226);
    assert_eq!(app.withdraw(token, &first, "0.01").await.status(), 200);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(app.withdraw(token, &second, "700.5").await.status(), 200);

    let response = app.get("/api/user/withdrawals", token).await;

    assert_eq!(response.status(), 200);
    let list: Vec<Value> = response.json().await.expect("a JSON list");
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["order"], json!(second));
    assert_eq!(list[0]["sum"], json!(700.5));
    assert_eq!(list[1]["order"], json!(first));
    assert_eq!(list[1]["sum"], json!(0.01));
    assert!(list[0]["sum"].is_number() && list[1]["sum"].is_number());
    assert!(rfc3339(&list[0]["processed_at"]) >= rfc3339(&list[1]["processed_at"]));
    assert_eq!(
        app.balance(token).await,
        json!({"current": 29.47, "withdrawn": 700.51})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn withdrawals_within_one_second_are_still_listed_newest_first() {
    let funded = funded_729_98("alice").await;
    let (app, token) = (&funded.app, &funded.token);
    let orders: Vec<String> = (0..3).map(|i| order_number(3_000 + i)).collect();
    for order in &orders {
        assert_eq!(app.withdraw(token, order, "1").await.status(), 200);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let list = withdrawals_of(app, token).await;

    let listed: Vec<&str> = list
        .iter()
        .map(|w| w["order"].as_str().expect("a string order"))
        .collect();
    assert_eq!(listed, [&orders[2], &orders[1], &orders[0]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_concurrent_withdrawals_of_7_from_100_let_exactly_14_through() {
    let funded = funded_100("alice").await;
    let (app, token) = (&funded.app, &funded.token);
    assert_eq!(
        app.balance(token).await,
        json!({"current": 100, "withdrawn": 0})
    );
    let orders: Vec<String> = (0..30).map(|i| order_number(700_000 + i)).collect();

    let statuses: Vec<u16> = futures::future::join_all(
        orders
            .iter()
            .map(|order| async { app.withdraw(token, order, "7").await.status().as_u16() }),
    )
    .await;

    let ok = statuses.iter().filter(|s| **s == 200).count();
    let refused = statuses.iter().filter(|s| **s == 402).count();
    assert_eq!((ok, refused), (14, 16), "{statuses:?}");
    assert_eq!(
        app.balance(token).await,
        json!({"current": 2, "withdrawn": 98})
    );
    assert_eq!(withdrawals_of(app, token).await.len(), 14);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_repeats_of_one_withdrawal_charge_once() {
    let funded = funded_100("alice").await;
    let (app, token) = (&funded.app, &funded.token);
    let order = order_number(800_001);

    let statuses: Vec<u16> = futures::future::join_all(
        (0..10).map(|_| async { app.withdraw(token, &order, "7").await.status().as_u16() }),
    )
    .await;

    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(
        app.balance(token).await,
        json!({"current": 93, "withdrawn": 7})
    );
    assert_eq!(withdrawals_of(app, token).await.len(), 1);
}
