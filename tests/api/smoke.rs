//! The complete customer story against our accrual system.

use std::time::Duration;

use api_tests::{order_number, spawn_accrual, spawn_app_with, Options};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_earns_points_and_spends_them() {
    let accrual = spawn_accrual(|_| {}).await;
    let client = reqwest::Client::new();
    let rule = client
        .post(format!("{}/api/goods", accrual.base_url()))
        .json(&json!({"match": "Bork", "reward": 5, "reward_type": "%"}))
        .send()
        .await
        .expect("sent");
    assert_eq!(rule.status(), 200);
    let number = order_number(987_654_321);
    let registered = client
        .post(format!("{}/api/orders", accrual.base_url()))
        .json(
            &json!({"order": number, "goods": [{"description": "Bork kettle", "price": 14599.50}]}),
        )
        .send()
        .await
        .expect("sent");
    assert_eq!(registered.status(), 202);
    let app = spawn_app_with(Options {
        accrual_address: accrual.base_url(),
        ..Options::default()
    })
    .await;
    let token = app.signed_up("alice").await;

    assert_eq!(app.upload(&token, &number).await.status(), 202);
    let order = app
        .wait_final(&token, &number, Duration::from_secs(20))
        .await;
    assert_eq!(order["status"], "PROCESSED");
    assert_eq!(order["accrual"], json!(729.98));
    assert_eq!(
        app.balance(&token).await,
        json!({"current": 729.98, "withdrawn": 0})
    );

    assert_eq!(
        app.withdraw(&token, &order_number(2_377_225), "700.5")
            .await
            .status(),
        200
    );
    assert_eq!(
        app.balance(&token).await,
        json!({"current": 29.48, "withdrawn": 700.5})
    );
    let withdrawals: serde_json::Value = app
        .get("/api/user/withdrawals", &token)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(withdrawals[0]["order"], json!(order_number(2_377_225)));
    assert_eq!(withdrawals[0]["sum"], json!(700.5));
}
