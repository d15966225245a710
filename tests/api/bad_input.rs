//! Limits, routing misses and hostile input: always a problem body, never a 5xx; every answer
//! carries a request id; the health endpoints answer.

use api_tests::{order_number, spawn_app, TestApp};
use reqwest::{header, Response};
use serde_json::json;

use crate::support::{assert_problem, gzip, header_text, PROBLEM};

async fn send(app: &TestApp, method: &str, path: &str, token: Option<&str>) -> Response {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("a method");
    let mut request = app.client.request(method, app.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.expect("request sent")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_body_over_64_kib_answers_413() {
    let app = spawn_app().await;
    let body = json!({"login": "alice", "password": "x".repeat(70 * 1024)}).to_string();

    let response = app
        .client
        .post(app.url("/api/user/register"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .expect("request sent");

    assert_problem(response, 413).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gzip_body_that_inflates_past_64_kib_answers_413() {
    let app = spawn_app().await;
    let body = json!({"login": "alice", "password": "x".repeat(1024 * 1024)}).to_string();
    let compressed = gzip(body.as_bytes());
    assert!(compressed.len() < 64 * 1024, "the compressed body is small");

    let response = app
        .client
        .post(app.url("/api/user/register"))
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_ENCODING, "gzip")
        .body(compressed)
        .send()
        .await
        .expect("request sent");

    assert_problem(response, 413).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_upload_over_64_kib_answers_413() {
    let app = spawn_app().await;
    let token = app.signed_up("alice").await;

    let response = app.upload(&token, &"1".repeat(70 * 1024)).await;

    assert_problem(response, 413).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_path_answers_404_with_a_problem_body() {
    let app = spawn_app().await;

    for path in ["/nope", "/api/user/nope", "/api/user/orders/123"] {
        let response = send(&app, "GET", path, None).await;

        assert_eq!(response.status(), 404, "{path}");
        assert_problem(response, 404).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_method_answers_404_or_405_with_a_problem_body() {
    let app = spawn_app().await;
    let token = app.signed_up("alice").await;

    for (method, path) in [
        ("PUT", "/api/user/orders"),
        ("DELETE", "/api/user/orders"),
        ("GET", "/api/user/register"),
        ("GET", "/api/user/balance/withdraw"),
        ("POST", "/api/user/balance"),
    ] {
        let response = send(&app, method, path, Some(&token)).await;

        let status = response.status().as_u16();
        assert!(status == 404 || status == 405, "{method} {path}: {status}");
        if status == 405 {
            let allow = response
                .headers()
                .get("allow")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            assert!(
                !allow.is_empty(),
                "{method} {path}: a 405 names the allowed methods"
            );
            assert!(!allow.contains(method), "{method} {path}: Allow {allow}");
        }
        assert_problem(response, status).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_never_answers_5xx() {
    let app = spawn_app().await;
    let token = app.signed_up("alice").await;
    let huge_number = "9".repeat(5_000);
    let long_order = order_number(123).repeat(20);
    let cases: Vec<(&str, &str, &str, Vec<u8>)> = vec![
        (
            "/api/user/register",
            "application/json",
            "",
            b"\xff\xfe\x00".to_vec(),
        ),
        (
            "/api/user/register",
            "application/json",
            "",
            b"null".to_vec(),
        ),
        ("/api/user/register", "application/json", "", b"{}".to_vec()),
        (
            "/api/user/register",
            "application/json",
            "",
            json!({"login": "a\u{0}b", "password": "x"})
                .to_string()
                .into_bytes(),
        ),
        (
            "/api/user/register",
            "application/json",
            "",
            json!({"login": "x".repeat(10_000), "password": "x"})
                .to_string()
                .into_bytes(),
        ),
        (
            "/api/user/login",
            "application/json",
            "",
            b"[[[[[[".to_vec(),
        ),
        ("/api/user/orders", "text/plain", "", b"\xff\xfe".to_vec()),
        ("/api/user/orders", "text/plain", "", b"1\x002".to_vec()),
        (
            "/api/user/orders",
            "text/plain",
            "",
            huge_number.into_bytes(),
        ),
        (
            "/api/user/orders",
            "text/plain",
            "",
            long_order.clone().into_bytes(),
        ),
        (
            "/api/user/orders",
            "text/plain",
            "deflate",
            b"garbage".to_vec(),
        ),
        ("/api/user/orders", "text/plain", "br", b"garbage".to_vec()),
        (
            "/api/user/orders",
            "text/plain",
            "x-unknown",
            b"garbage".to_vec(),
        ),
        (
            "/api/user/balance/withdraw",
            "application/json",
            "",
            format!(r#"{{"order":"{long_order}","sum":1}}"#).into_bytes(),
        ),
        (
            "/api/user/balance/withdraw",
            "application/json",
            "",
            format!(r#"{{"order":"{}","sum":1e400}}"#, order_number(1)).into_bytes(),
        ),
        (
            "/api/user/balance/withdraw",
            "application/json",
            "",
            format!(
                r#"{{"order":"{}","sum":99999999999999999999999999999999999999}}"#,
                order_number(2)
            )
            .into_bytes(),
        ),
        (
            "/api/user/balance/withdraw",
            "application/json",
            "",
            format!(r#"{{"order":"{}","sum":1e-400}}"#, order_number(3)).into_bytes(),
        ),
        (
            "/api/user/balance/withdraw",
            "application/json",
            "",
            b"{\"order\":\"\xff\",\"sum\":1}".to_vec(),
        ),
    ];

    for (path, content_type, encoding, body) in cases {
        let mut request = app
            .client
            .post(app.url(path))
            .bearer_auth(&token)
            .header(header::CONTENT_TYPE, content_type)
            .body(body.clone());
        if !encoding.is_empty() {
            request = request.header(header::CONTENT_ENCODING, encoding);
        }

        let response = request.send().await.expect("request sent");

        let status = response.status();
        assert!(
            status.is_client_error(),
            "{path} [{encoding}] {:?}: {status}",
            String::from_utf8_lossy(&body)
        );
        assert_problem(response, status.as_u16()).await;
    }
    assert_eq!(
        app.balance(&token).await,
        json!({"current": 0, "withdrawn": 0})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_arrays_in_place_of_objects_answer_400() {
    let app = spawn_app().await;
    let token = app.signed_up("alice").await;
    let cases = [
        ("/api/user/register", r#"["bob", "password"]"#.to_owned()),
        ("/api/user/login", r#"["alice", "password"]"#.to_owned()),
        (
            "/api/user/balance/withdraw",
            format!(r#"["{}", 1]"#, order_number(2_377_225)),
        ),
    ];

    let mut answers = Vec::new();
    for (path, body) in cases {
        let response = app
            .client
            .post(app.url(path))
            .bearer_auth(&token)
            .header(header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .expect("request sent");
        answers.push((
            path,
            response.status().as_u16(),
            header_text(&response, "content-type"),
        ));
    }

    for (path, status, content_type) in &answers {
        assert_eq!(*status, 400, "{path}; all answers: {answers:?}");
        assert_eq!(content_type.as_deref(), Some(PROBLEM), "{path}");
    }
    assert_eq!(
        app.register("bob", "password").await.status(),
        200,
        "the array did not register bob"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_endpoints_refuse_a_body_declared_as_text_plain() {
    let app = spawn_app().await;
    let token = app.signed_up("alice").await;
    let cases = [
        (
            "/api/user/register",
            json!({"login": "bob", "password": "password"}).to_string(),
        ),
        (
            "/api/user/login",
            json!({"login": "alice", "password": "password"}).to_string(),
        ),
        (
            "/api/user/balance/withdraw",
            json!({"order": order_number(2_377_225), "sum": 1}).to_string(),
        ),
    ];

    let mut answers = Vec::new();
    for (path, body) in cases {
        let response = app
            .client
            .post(app.url(path))
            .bearer_auth(&token)
            .header(header::CONTENT_TYPE, "text/plain")
            .body(body)
            .send()
            .await
            .expect("request sent");
        answers.push((
            path,
            response.status().as_u16(),
            header_text(&response, "content-type"),
        ));
    }

    for (path, status, content_type) in &answers {
        assert!(
            *status == 400 || *status == 415,
            "{path}; all answers: {answers:?}"
        );
        assert_eq!(content_type.as_deref(), Some(PROBLEM), "{path}");
    }
    assert_eq!(
        app.register("bob", "password").await.status(),
        200,
        "the text/plain body did not register bob"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_carries_a_request_id() {
    let app = spawn_app().await;
    let token = app.signed_up("alice").await;
    let responses = vec![
        app.register("bob", "password").await,
        app.register("bob", "password").await,
        app.login("bob", "wrong").await,
        app.upload(&token, &order_number(77)).await,
        app.upload(&token, "12345678902").await,
        app.get("/api/user/orders", &token).await,
        app.get("/api/user/withdrawals", &token).await,
        app.get("/api/user/balance", "garbage").await,
        app.withdraw(&token, &order_number(78), "5").await,
        send(&app, "GET", "/nope", None).await,
        send(&app, "PUT", "/api/user/orders", None).await,
        send(&app, "GET", "/healthz", None).await,
    ];

    let mut ids = Vec::new();
    for response in &responses {
        let id = header_text(response, "x-request-id");
        assert!(
            id.as_deref().is_some_and(|id| !id.is_empty()),
            "{} {}: no x-request-id",
            response.url(),
            response.status()
        );
        ids.extend(id);
    }
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "request ids are unique: {ids:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_endpoints_answer_200() {
    let app = spawn_app().await;

    let live = send(&app, "GET", "/healthz", None).await;
    let ready = send(&app, "GET", "/readyz", None).await;

    assert_eq!(live.status(), 200);
    assert_eq!(ready.status(), 200);
}
