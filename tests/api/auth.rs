//! Authentication of the protected endpoints: where the token may travel, which tokens are
//! refused, and that a token only ever shows its own user's data.

use api_tests::{order_number, spawn_app, TEST_JWT_SECRET};
use serde_json::{json, Value};

use crate::support::{
    assert_problem, call, forged_token, signed_token, subject_of, unsigned_token, PROTECTED,
};

/// What a signed-in user without points gets from [`PROTECTED`] called in order: the upload
/// is new, the list then holds it, the balance shows, the withdrawal lacks points, and there
/// are no withdrawals.
const SIGNED_IN_ANSWERS: [u16; 5] = [202, 200, 200, 402, 204];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_protected_endpoint_answers_401_without_credentials() {
    let app = spawn_app().await;

    for (method, path) in PROTECTED {
        let response = call(&app, method, path, &[]).await;

        assert_eq!(response.status(), 401, "{method} {path}");
        assert_problem(response, 401).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_protected_endpoint_accepts_the_token_in_the_authorization_header() {
    let app = spawn_app().await;
    let token = app.signed_up("alice").await;
    let authorization = format!("Bearer {token}");

    let mut statuses = Vec::new();
    for (method, path) in PROTECTED {
        let response = call(&app, method, path, &[("authorization", &authorization)]).await;
        statuses.push(response.status().as_u16());
    }

    assert_eq!(statuses, SIGNED_IN_ANSWERS, "answers to {PROTECTED:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_protected_endpoint_accepts_the_token_in_the_cookie_alone() {
    let app = spawn_app().await;
    let token = app.signed_up("alice").await;
    let cookie = format!("token={token}");

    let mut statuses = Vec::new();
    for (method, path) in PROTECTED {
        let response = call(&app, method, path, &[("cookie", &cookie)]).await;
        statuses.push(response.status().as_u16());
    }

    assert_eq!(statuses, SIGNED_IN_ANSWERS, "answers to {PROTECTED:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_signed_with_another_key_answers_401() {
    let app = spawn_app().await;
    let token = app.signed_up("alice").await;
    let forged = signed_token(
        "some-other-secret",
        &subject_of(&token),
        chrono::Utc::now().timestamp() + 3600,
    );

    for (method, path) in PROTECTED {
        let response = call(
            &app,
            method,
            path,
            &[("authorization", &format!("Bearer {forged}"))],
        )
        .await;

        assert_eq!(response.status(), 401, "{method} {path}");
        assert_problem(response, 401).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsigned_alg_none_token_answers_401() {
    let app = spawn_app().await;
    let token = app.signed_up("alice").await;
    let unsigned = unsigned_token(&subject_of(&token));
    let without_dot = unsigned.trim_end_matches('.').to_owned();

    for forged in [unsigned, without_dot] {
        let by_header = app.get("/api/user/balance", &forged).await;
        let by_cookie = call(
            &app,
            "GET",
            "/api/user/balance",
            &[("cookie", &format!("token={forged}"))],
        )
        .await;

        assert_problem(by_header, 401).await;
        assert_problem(by_cookie, 401).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_answers_401() {
    let app = spawn_app().await;
    let token = app.signed_up("alice").await;
    let expired = signed_token(
        TEST_JWT_SECRET,
        &subject_of(&token),
        chrono::Utc::now().timestamp() - 60,
    );

    let response = app.get("/api/user/balance", &expired).await;

    assert_problem(response, 401).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_tokens_answer_401() {
    let app = spawn_app().await;
    let token = app.signed_up("alice").await;
    let mut tampered: Vec<String> = token.split('.').map(ToOwned::to_owned).collect();
    tampered[2] = "AAAA".into();
    let tampered = tampered.join(".");

    for garbage in ["garbage", "a.b.c", "Bearer", tampered.as_str()] {
        let by_header = app.get("/api/user/orders", garbage).await;
        let by_cookie = call(
            &app,
            "GET",
            "/api/user/orders",
            &[("cookie", &format!("token={garbage}"))],
        )
        .await;

        assert_eq!(by_header.status(), 401, "header {garbage}");
        assert_problem(by_header, 401).await;
        assert_eq!(by_cookie.status(), 401, "cookie {garbage}");
        assert_problem(by_cookie, 401).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_forged_with_the_configured_secret_acts_as_its_user() {
    let app = spawn_app().await;
    let token = app.signed_up("alice").await;
    let number = order_number(4_242_424);
    assert_eq!(app.upload(&token, &number).await.status(), 202);
    let forged = forged_token(&subject_of(&token));
    assert_ne!(forged, token);

    let response = app.get("/api/user/orders", &forged).await;

    assert_eq!(response.status(), 200);
    let orders: Vec<Value> = response.json().await.expect("json");
    assert_eq!(orders.len(), 1);
    assert_eq!(orders[0]["number"], json!(number));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_for_a_user_that_does_not_exist_shows_no_data() {
    let app = spawn_app().await;
    let token = app.signed_up("alice").await;
    assert_eq!(
        app.upload(&token, &order_number(4_242_424)).await.status(),
        202
    );
    let ghost = forged_token("999999");

    let orders = app.get("/api/user/orders", &ghost).await;
    let balance = app.get("/api/user/balance", &ghost).await;
    let withdrawals = app.get("/api/user/withdrawals", &ghost).await;

    assert!(
        orders.status() == 401 || orders.status() == 204,
        "orders: {}",
        orders.status()
    );
    assert!(
        balance.status() == 401 || balance.status() == 200,
        "balance: {}",
        balance.status()
    );
    assert!(
        withdrawals.status() == 401 || withdrawals.status() == 204,
        "withdrawals: {}",
        withdrawals.status()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_users_token_never_shows_another_users_data() {
    let app = spawn_app().await;
    let alice = app.signed_up("alice").await;
    let bob = app.signed_up("bob").await;
    let number = order_number(4_242_424);
    assert_eq!(app.upload(&alice, &number).await.status(), 202);

    let bobs_orders = app.get("/api/user/orders", &bob).await;
    let bobs_withdrawals = app.get("/api/user/withdrawals", &bob).await;
    let bobs_balance = app.balance(&bob).await;
    let alices_orders = app.get("/api/user/orders", &alice).await;

    assert_eq!(bobs_orders.status(), 204);
    assert_eq!(bobs_withdrawals.status(), 204);
    assert_eq!(bobs_balance, json!({"current": 0, "withdrawn": 0}));
    assert_eq!(alices_orders.status(), 200);
    assert_ne!(subject_of(&alice), subject_of(&bob));
}
