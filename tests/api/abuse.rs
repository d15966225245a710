//! Abuse at deployment scale: the real client address behind a trusted proxy, one sign-in
//! throttle for every instance that survives restarts, a bound on the orders one customer can
//! queue, and each customer's request limit.

use std::time::Duration;

use api_tests::{order_number, spawn_accrual, spawn_app_with, spawn_instance, Options, TestApp};
use serde_json::json;

use crate::support::{assert_problem, header_text, scrape};

const TRUSTED: [&str; 2] = ["--trusted-proxies", "127.0.0.0/8"];

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(ToString::to_string).collect()
}

async fn login_from(app: &TestApp, forwarded_for: &str, login: &str, password: &str) -> u16 {
    app.client
        .post(app.url("/api/user/login"))
        .header("x-forwarded-for", forwarded_for)
        .json(&json!({"login": login, "password": password}))
        .send()
        .await
        .expect("request sent")
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_one_clients_failures_refuse_no_other_client() {
    // Every request comes from the proxy's address (127.0.0.1); the proxy names the client.
    let app = spawn_app_with(Options {
        extra_args: args(&TRUSTED),
        ..Options::default()
    })
    .await;
    app.signed_up("carol").await;

    // Sixty wrong sign-ins from one client, over many logins, with the default limits.
    let mut refused = 0;
    for i in 0..60 {
        match login_from(&app, "203.0.113.9", &format!("nobody{i}"), "guess").await {
            401 => {}
            429 => refused += 1,
            other => panic!("unexpected {other}"),
        }
    }

    assert_eq!(refused, 10, "the client is refused past 50 failures");
    assert_eq!(
        login_from(&app, "203.0.113.9", "carol", "password").await,
        429
    );
    assert_eq!(
        login_from(&app, "198.51.100.20", "carol", "password").await,
        200
    );
    assert_eq!(
        login_from(&app, "1.2.3.4, 198.51.100.21", "carol", "password").await,
        200,
        "what a client writes left of its own address is not its address"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_header_of_a_client_that_is_not_a_trusted_proxy_is_ignored() {
    let app = spawn_app_with(Options {
        extra_args: args(&["--login-max-failures-per-address", "3"]),
        ..Options::default()
    })
    .await;
    app.signed_up("dora").await;

    for i in 0..3 {
        // A new address each time, as a client would claim to dodge the limit.
        let claimed = format!("203.0.113.{i}");
        assert_eq!(
            login_from(&app, &claimed, &format!("nobody{i}"), "guess").await,
            401
        );
    }

    assert_eq!(
        login_from(&app, "198.51.100.7", "dora", "password").await,
        429
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_under_attack_from_one_address_still_signs_its_owner_in_from_another() {
    let app = spawn_app_with(Options {
        extra_args: args(&[
            TRUSTED[0],
            TRUSTED[1],
            "--login-max-failures-per-login",
            "3",
        ]),
        ..Options::default()
    })
    .await;
    app.signed_up("erin").await;

    for _ in 0..3 {
        assert_eq!(login_from(&app, "203.0.113.9", "erin", "guess").await, 401);
    }

    assert_eq!(
        login_from(&app, "203.0.113.9", "erin", "password").await,
        429
    );
    assert_eq!(
        login_from(&app, "198.51.100.7", "erin", "password").await,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_refuse_a_brute_force_after_the_failures_one_instance_allows_and_so_does_a_restarted_one(
) {
    let limit = ["--login-max-failures-per-login", "5"];
    let first = spawn_app_with(Options {
        extra_args: args(&limit),
        ..Options::default()
    })
    .await;
    first.signed_up("frank").await;
    let mut others = Vec::new();
    for _ in 0..2 {
        others.push(
            spawn_instance(
                first.db.url(),
                Options {
                    extra_args: args(&limit),
                    ..Options::default()
                },
            )
            .await,
        );
    }

    // Round robin over the three instances.
    let mut answers = Vec::new();
    for i in 0..9 {
        let status = match i % 3 {
            0 => first.login("frank", "guess").await.status(),
            n => others[n - 1].login("frank", "guess", &[]).await.status(),
        };
        answers.push(status.as_u16());
    }

    assert_eq!(answers, [401, 401, 401, 401, 401, 429, 429, 429, 429]);
    others[0].stop().await;
    let restarted = spawn_instance(
        first.db.url(),
        Options {
            extra_args: args(&limit),
            ..Options::default()
        },
    )
    .await;
    assert_eq!(
        restarted.login("frank", "password", &[]).await.status(),
        429,
        "the count survives a restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_past_the_pending_limit_are_refused_and_store_nothing() {
    let app = spawn_app_with(Options {
        extra_args: args(&["--max-pending-orders", "3"]),
        ..Options::default()
    })
    .await;
    let flooder = app.signed_up("flooder").await;
    let neighbour = app.signed_up("neighbour").await;
    // The accrual system is out of reach: every order stays pending.
    for seed in 0..3 {
        assert_eq!(
            app.upload(&flooder, &order_number(seed)).await.status(),
            202
        );
    }

    let refused = app.upload(&flooder, &order_number(3)).await;
    let retry_after = header_text(&refused, "retry-after");
    let body = assert_problem(refused, 429).await;

    assert!(retry_after.is_some_and(|s| s.parse::<u64>().is_ok_and(|s| s > 0)));
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("3 of your orders"),
        "{body}"
    );
    assert_eq!(
        app.upload(&flooder, &order_number(0)).await.status(),
        200,
        "a repeat is still answered"
    );
    let listed = app.get("/api/user/orders", &flooder).await;
    let listed: serde_json::Value = listed.json().await.expect("json");
    assert_eq!(
        listed.as_array().map(Vec::len),
        Some(3),
        "nothing more was stored"
    );
    assert_eq!(app.upload(&neighbour, &order_number(3)).await.status(), 202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn final_orders_do_not_count_against_the_pending_limit() {
    let accrual = spawn_accrual(|_| {}).await;
    let client = reqwest::Client::new();
    let rule = client
        .post(format!("{}/api/goods", accrual.base_url()))
        .json(&json!({"match": "Gadget", "reward": 100, "reward_type": "pt"}))
        .send()
        .await
        .expect("sent");
    assert_eq!(rule.status(), 200);
    let processed = order_number(500);
    let purchase = client
        .post(format!("{}/api/orders", accrual.base_url()))
        .json(&json!({"order": processed, "goods": [{"description": "Gadget", "price": 10}]}))
        .send()
        .await
        .expect("sent");
    assert_eq!(purchase.status(), 202);
    let app = spawn_app_with(Options {
        accrual_address: accrual.base_url(),
        extra_args: args(&["--max-pending-orders", "1"]),
    })
    .await;
    let token = app.signed_up("grace").await;
    assert_eq!(app.upload(&token, &processed).await.status(), 202);
    let order = app
        .wait_final(&token, &processed, Duration::from_secs(20))
        .await;
    assert_eq!(order["status"], "PROCESSED", "{order}");

    assert_eq!(app.upload(&token, &order_number(501)).await.status(), 202);
    assert_eq!(app.upload(&token, &order_number(502)).await.status(), 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_over_the_request_limit_is_refused_with_the_ratelimit_fields() {
    let app = spawn_app_with(Options {
        extra_args: args(&[
            "--customer-requests-per-second",
            "1",
            "--customer-request-burst",
            "3",
        ]),
        ..Options::default()
    })
    .await;
    let greedy = app.signed_up("greedy").await;
    let other = app.signed_up("other").await;

    let mut remaining = Vec::new();
    for _ in 0..3 {
        let answer = app.get("/api/user/balance", &greedy).await;
        assert_eq!(answer.status(), 200);
        assert_eq!(
            header_text(&answer, "ratelimit-policy").as_deref(),
            Some(r#""customer";q=3;w=3"#)
        );
        remaining.push(header_text(&answer, "ratelimit").unwrap_or_default());
    }
    let refused = app.get("/api/user/balance", &greedy).await;

    assert_eq!(
        remaining,
        [
            r#""customer";r=2;t=1"#,
            r#""customer";r=1;t=2"#,
            r#""customer";r=0;t=3"#
        ]
    );
    assert_eq!(header_text(&refused, "retry-after").as_deref(), Some("1"));
    assert_eq!(
        header_text(&refused, "ratelimit").as_deref(),
        Some(r#""customer";r=0;t=3"#)
    );
    assert_problem(refused, 429).await;
    assert_eq!(app.get("/api/user/balance", &other).await.status(), 200);
    let metrics = scrape(&app).await;
    assert!(
        metrics.contains(r#"gophermart_refusals_total{limit="request_limit"} 1"#),
        "{metrics}"
    );
}
