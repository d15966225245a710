//! gzip on the way in (`Content-Encoding: gzip`) and on the way out (`Accept-Encoding: gzip`).

use api_tests::{bearer, order_number, spawn_app};
use reqwest::header;
use serde_json::{json, Value};

use crate::support::{assert_problem, gunzip, gzip, header_text};

/// A client that shows responses exactly as sent: no automatic gzip decoding.
fn raw_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_gzip()
        .build()
        .expect("a client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gzip_compressed_registration_is_accepted() {
    let app = spawn_app().await;
    let body = gzip(
        json!({"login": "alice", "password": "s3cret"})
            .to_string()
            .as_bytes(),
    );

    let response = app
        .client
        .post(app.url("/api/user/register"))
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_ENCODING, "gzip")
        .body(body)
        .send()
        .await
        .expect("request sent");

    assert_eq!(response.status(), 200);
    assert!(!bearer(&response).is_empty());
    assert_eq!(app.login("alice", "s3cret").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gzip_compressed_order_upload_is_accepted() {
    let app = spawn_app().await;
    let token = app.signed_up("alice").await;
    let number = order_number(123_456);

    let response = app
        .client
        .post(app.url("/api/user/orders"))
        .bearer_auth(&token)
        .header(header::CONTENT_TYPE, "text/plain")
        .header(header::CONTENT_ENCODING, "gzip")
        .body(gzip(number.as_bytes()))
        .send()
        .await
        .expect("request sent");

    assert_eq!(response.status(), 202);
    let orders: Vec<Value> = app
        .get("/api/user/orders", &token)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(orders[0]["number"], json!(number));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_gzip_body_answers_400() {
    let app = spawn_app().await;
    let token = app.signed_up("alice").await;
    let mut corrupt = gzip(
        json!({"login": "bob", "password": "s3cret"})
            .to_string()
            .as_bytes(),
    );
    let middle = corrupt.len() / 2;
    corrupt[middle..].iter_mut().for_each(|b| *b ^= 0x5a);
    let not_gzip_at_all = b"this is not gzip".to_vec();

    for body in [corrupt, not_gzip_at_all] {
        let register = app
            .client
            .post(app.url("/api/user/register"))
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CONTENT_ENCODING, "gzip")
            .body(body.clone())
            .send()
            .await
            .expect("request sent");
        let upload = app
            .client
            .post(app.url("/api/user/orders"))
            .bearer_auth(&token)
            .header(header::CONTENT_TYPE, "text/plain")
            .header(header::CONTENT_ENCODING, "gzip")
            .body(body)
            .send()
            .await
            .expect("request sent");

        assert_problem(register, 400).await;
        assert_problem(upload, 400).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_responses_are_gzip_compressed_when_the_client_accepts_gzip() {
    let app = spawn_app().await;
    let token = app.signed_up("alice").await;
    for i in 0..3 {
        assert_eq!(
            app.upload(&token, &order_number(900 + i)).await.status(),
            202
        );
    }
    let client = raw_client();

    for path in ["/api/user/balance", "/api/user/orders"] {
        let response = client
            .get(app.url(path))
            .bearer_auth(&token)
            .header(header::ACCEPT_ENCODING, "gzip")
            .send()
            .await
            .expect("request sent");

        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(
            header_text(&response, "content-encoding").as_deref(),
            Some("gzip"),
            "{path}"
        );
        let body = response.bytes().await.expect("body");
        let json: Value = serde_json::from_slice(&gunzip(&body)).expect("gzip of JSON");
        assert!(json.is_object() || json.is_array(), "{path}: {json}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_bodies_are_gzip_compressed_when_the_client_accepts_gzip() {
    let app = spawn_app().await;
    let client = raw_client();

    let response = client
        .get(app.url("/api/user/balance"))
        .header(header::ACCEPT_ENCODING, "gzip")
        .send()
        .await
        .expect("request sent");

    assert_eq!(response.status(), 401);
    assert_eq!(
        header_text(&response, "content-encoding").as_deref(),
        Some("gzip")
    );
    let body = response.bytes().await.expect("body");
    let problem: Value = serde_json::from_slice(&gunzip(&body)).expect("gzip of JSON");
    assert_eq!(problem["status"], json!(401));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_are_not_compressed_for_a_client_that_does_not_ask() {
    let app = spawn_app().await;
    let token = app.signed_up("alice").await;
    let client = raw_client();

    let response = client
        .get(app.url("/api/user/balance"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("request sent");

    assert_eq!(response.status(), 200);
    assert!(header_text(&response, "content-encoding").is_none_or(|v| v == "identity"));
    let body: Value = response.json().await.expect("plain JSON");
    assert_eq!(body, json!({"current": 0, "withdrawn": 0}));
}
