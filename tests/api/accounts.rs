//! Registration and sign-in: credentials handed out, and every malformed request refused
//! with a problem body.

use api_tests::{bearer, spawn_app, spawn_app_with, Options, TestApp};
use reqwest::{header, Response};
use serde_json::json;

use crate::support::{assert_problem, header_text};

async fn post_raw(app: &TestApp, path: &str, body: &str) -> Response {
    app.client
        .post(app.url(path))
        .header(header::CONTENT_TYPE, "application/json")
        .body(body.to_owned())
        .send()
        .await
        .expect("request sent")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registering_signs_in_with_a_bearer_header_and_a_strict_http_only_cookie() {
    let app = spawn_app().await;

    let response = app.register("alice", "s3cret").await;

    assert_eq!(response.status(), 200);
    let token = bearer(&response);
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    let cookie = header_text(&response, "set-cookie").expect("a Set-Cookie header");
    let attributes: Vec<&str> = cookie.split(';').map(str::trim).collect();
    assert_eq!(attributes[0], format!("token={token}"), "{cookie}");
    for expected in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(
            attributes.iter().any(|a| a.eq_ignore_ascii_case(expected)),
            "{expected} missing from {cookie}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_handed_out_at_registration_opens_protected_endpoints() {
    let app = spawn_app().await;
    let token = app.signed_up("alice").await;

    let response = app.get("/api/user/balance", &token).await;

    assert_eq!(response.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registering_a_taken_login_answers_409() {
    let app = spawn_app().await;
    app.signed_up("alice").await;

    let response = app.register("alice", "another").await;

    assert_problem(response, 409).await;
}

/// At the production cost (12) with one hashing thread, so that twelve hashes could not all be
/// served within the hasher's wait: the duplicates must not queue for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twelve_simultaneous_registrations_of_one_login_give_one_200_and_eleven_409() {
    let app = spawn_app_with(Options {
        extra_args: vec![
            "--bcrypt-cost".into(),
            "12".into(),
            "--bcrypt-concurrency".into(),
            "1".into(),
        ],
        ..Options::default()
    })
    .await;
    // One sign-in first, so that the hasher knows how long a hash takes and sizes its queue.
    assert_eq!(app.login("nobody", "password").await.status(), 401);

    let answers = futures::future::join_all((0..12).map(|i| {
        let app = &app;
        async move { app.register("alice", &format!("password {i}")).await }
    }))
    .await;

    let mut statuses: Vec<u16> = answers.iter().map(|r| r.status().as_u16()).collect();
    statuses.sort_unstable();
    let mut expected = vec![409; 11];
    expected.insert(0, 200);
    assert_eq!(statuses, expected);
    for answer in answers.into_iter().filter(|r| r.status() == 409) {
        assert_problem(answer, 409).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registering_with_malformed_bodies_answers_400_with_a_problem_body() {
    let app = spawn_app().await;
    let long_password = "p".repeat(129);
    let bodies = [
        (
            "malformed JSON".to_owned(),
            r#"{"login": "alice", "#.to_owned(),
        ),
        ("not JSON".to_owned(), "login=alice&password=x".to_owned()),
        ("empty body".to_owned(), String::new()),
        (
            "missing password".to_owned(),
            r#"{"login": "alice"}"#.to_owned(),
        ),
        (
            "missing login".to_owned(),
            r#"{"password": "x"}"#.to_owned(),
        ),
        (
            "login as a number".to_owned(),
            r#"{"login": 42, "password": "x"}"#.to_owned(),
        ),
        (
            "password as null".to_owned(),
            r#"{"login": "alice", "password": null}"#.to_owned(),
        ),
        (
            "empty login".to_owned(),
            r#"{"login": "", "password": "x"}"#.to_owned(),
        ),
        (
            "empty password".to_owned(),
            r#"{"login": "alice", "password": ""}"#.to_owned(),
        ),
        (
            "password over 128 characters".to_owned(),
            json!({"login": "alice", "password": long_password}).to_string(),
        ),
        (
            "login with surrounding whitespace".to_owned(),
            r#"{"login": " alice ", "password": "x"}"#.to_owned(),
        ),
    ];

    for (case, body) in bodies {
        let response = post_raw(&app, "/api/user/register", &body).await;

        assert_eq!(response.status(), 400, "{case}");
        assert_problem(response, 400).await;
    }
    let later = app.register("alice", "password").await;
    assert_eq!(later.status(), 200, "no malformed request created alice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_of_exactly_72_bytes_is_accepted() {
    let app = spawn_app().await;
    let password = "p".repeat(72);

    let registered = app.register("alice", &password).await;
    let signed_in = app.login("alice", &password).await;

    assert_eq!(registered.status(), 200);
    assert_eq!(signed_in.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_in_with_the_right_password_hands_out_credentials() {
    let app = spawn_app().await;
    app.register("alice", "s3cret").await;

    let response = app.login("alice", "s3cret").await;

    assert_eq!(response.status(), 200);
    let token = bearer(&response);
    let cookie = header_text(&response, "set-cookie").expect("a Set-Cookie header");
    assert!(cookie.starts_with(&format!("token={token}")), "{cookie}");
    assert_eq!(app.get("/api/user/balance", &token).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_in_with_a_wrong_password_answers_401() {
    let app = spawn_app().await;
    app.register("alice", "s3cret").await;

    let response = app.login("alice", "S3cret").await;

    assert!(response.headers().get(header::AUTHORIZATION).is_none());
    assert!(response.headers().get(header::SET_COOKIE).is_none());
    assert_problem(response, 401).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_in_with_an_unknown_login_answers_401() {
    let app = spawn_app().await;

    let response = app.login("nobody", "s3cret").await;

    assert_problem(response, 401).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_in_with_malformed_bodies_answers_400() {
    let app = spawn_app().await;
    app.register("alice", "s3cret").await;
    let bodies = [
        r#"{"login": "alice", "#,
        r#"{"login": "alice"}"#,
        r#"{"password": "s3cret"}"#,
        r#"{"login": 42, "password": "s3cret"}"#,
        r#"{"login": "", "password": "s3cret"}"#,
        r#"{"login": "alice", "password": ""}"#,
        "",
    ];

    for body in bodies {
        let response = post_raw(&app, "/api/user/login", body).await;

        assert_eq!(response.status(), 400, "{body}");
        assert_problem(response, 400).await;
    }
}
