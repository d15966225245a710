//! Black-box tests of the accrual system over HTTP: each test spawns a real server on
//! 127.0.0.1 with a free port and talks to it with reqwest.

use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use accrual::{Config, Server};
use reqwest::header::{CONTENT_TYPE, RETRY_AFTER};
use reqwest::{Response, StatusCode};
use serde_json::Value;

const VALID_NUMBER: &str = "12345678903";
const BAD_LUHN_NUMBER: &str = "12345678902";

struct Harness {
    server: Server,
    client: reqwest::Client,
}

impl Harness {
    async fn start(config: Config) -> Self {
        let config = Config {
            workers: NonZeroUsize::new(1),
            ..config
        };
        let server = Server::spawn(config).await.expect("the server starts");
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("a client");
        Self { server, client }
    }

    async fn with_delay(processing_delay_ms: u64) -> Self {
        Self::start(Config {
            processing_delay_ms,
            ..Config::ephemeral()
        })
        .await
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.base_url())
    }

    async fn post(&self, path: &str, body: &str) -> Response {
        self.client
            .post(self.url(path))
            .header(CONTENT_TYPE, "application/json")
            .body(body.to_owned())
            .send()
            .await
            .expect("the server answers")
    }

    async fn get_order(&self, number: &str) -> Response {
        self.client
            .get(self.url(&format!("/api/orders/{number}")))
            .send()
            .await
            .expect("the server answers")
    }

    async fn add_rule(&self, pattern: &str, reward: &str, reward_type: &str) {
        let body = format!(
            r#"{{"match": "{pattern}", "reward": {reward}, "reward_type": "{reward_type}"}}"#
        );
        let response = self.post("/api/goods", &body).await;
        assert_eq!(response.status(), StatusCode::OK, "rule {body}");
    }

    async fn add_order(&self, number: &str, goods: &str) {
        let body = format!(r#"{{"order": "{number}", "goods": {goods}}}"#);
        let response = self.post("/api/orders", &body).await;
        assert_eq!(response.status(), StatusCode::ACCEPTED, "order {body}");
    }

    async fn order_json(&self, number: &str) -> Value {
        let response = self.get_order(number).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()[CONTENT_TYPE],
            "application/json",
            "content type"
        );
        response.json().await.expect("a JSON body")
    }

    /// Polls the order until its status is final or `deadline` passes; returns the distinct
    /// statuses seen, in order, and the last answer.
    async fn poll_until_final(&self, number: &str, deadline: Duration) -> (Vec<String>, Value) {
        let until = Instant::now() + deadline;
        let mut seen: Vec<String> = Vec::new();
        loop {
            let answer = self.order_json(number).await;
            let status = answer["status"]
                .as_str()
                .expect("status is a string")
                .to_owned();
            if seen.last() != Some(&status) {
                seen.push(status.clone());
            }
            if status == "PROCESSED" || status == "INVALID" {
                return (seen, answer);
            }
            assert!(
                Instant::now() < until,
                "order {number} not final in time: {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

async fn assert_problem(response: Response, status: StatusCode) {
    assert_eq!(response.status(), status);
    assert_eq!(response.headers()[CONTENT_TYPE], "application/problem+json");
    let body: Value = response.json().await.expect("a problem document");
    assert_eq!(body["type"], "about:blank");
    assert_eq!(body["status"].as_u64(), Some(u64::from(status.as_u16())));
    assert!(body["title"].is_string());
    assert!(body["detail"].is_string());
}

#[tokio::test]
async fn health_check_answers_ok() {
    let harness = Harness::with_delay(0).await;
    let response = harness
        .client
        .get(harness.url("/healthz"))
        .send()
        .await
        .expect("the server answers");
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(body, serde_json::json!({ "status": "ok" }));
}

#[tokio::test]
async fn registering_a_rule_answers_200() {
    let harness = Harness::with_delay(0).await;
    let response = harness
        .post(
            "/api/goods",
            r#"{"match": "Bork", "reward": 10, "reward_type": "%"}"#,
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let response = harness
        .post(
            "/api/goods",
            r#"{"match": "Coca-Cola", "reward": 12.5, "reward_type": "pt"}"#,
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn registering_a_rule_with_an_existing_match_answers_409() {
    let harness = Harness::with_delay(0).await;
    harness.add_rule("Bork", "10", "%").await;
    let response = harness
        .post(
            "/api/goods",
            r#"{"match": "Bork", "reward": 3, "reward_type": "pt"}"#,
        )
        .await;
    assert_problem(response, StatusCode::CONFLICT).await;
}

#[tokio::test]
async fn malformed_rule_bodies_answer_400() {
    let harness = Harness::with_delay(0).await;
    for body in [
        r#"{"match": "Bork", "reward": 10"#,
        "not json",
        "",
        "[]",
        r#"{"match": "Bork", "reward": 10}"#,
        r#"{"reward": 10, "reward_type": "%"}"#,
        r#"{"match": 5, "reward": 10, "reward_type": "%"}"#,
    ] {
        let response = harness.post("/api/goods", body).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "body {body:?}");
    }
}

#[tokio::test]
async fn rule_with_negative_reward_answers_400() {
    let harness = Harness::with_delay(0).await;
    let response = harness
        .post(
            "/api/goods",
            r#"{"match": "Bork", "reward": -1, "reward_type": "%"}"#,
        )
        .await;
    assert_problem(response, StatusCode::BAD_REQUEST).await;
}

#[tokio::test]
async fn rule_with_non_numeric_reward_answers_400() {
    let harness = Harness::with_delay(0).await;
    for reward in [r#""ten""#, r#""10""#, "null", "true"] {
        let body = format!(r#"{{"match": "Bork", "reward": {reward}, "reward_type": "%"}}"#);
        let response = harness.post("/api/goods", &body).await;
        assert_problem(response, StatusCode::BAD_REQUEST).await;
    }
}

#[tokio::test]
async fn rule_with_unknown_reward_type_answers_400() {
    let harness = Harness::with_delay(0).await;
    for reward_type in ["percent", "PT", ""] {
        let body = format!(r#"{{"match": "Bork", "reward": 10, "reward_type": "{reward_type}"}}"#);
        let response = harness.post("/api/goods", &body).await;
        assert_problem(response, StatusCode::BAD_REQUEST).await;
    }
}

#[tokio::test]
async fn rule_with_empty_match_answers_400() {
    let harness = Harness::with_delay(0).await;
    let response = harness
        .post(
            "/api/goods",
            r#"{"match": "", "reward": 10, "reward_type": "%"}"#,
        )
        .await;
    assert_problem(response, StatusCode::BAD_REQUEST).await;
}

#[tokio::test]
async fn registering_an_order_answers_202() {
    let harness = Harness::with_delay(0).await;
    let response = harness
        .post(
            "/api/orders",
            r#"{"order": "12345678903", "goods": [{"description": "Bork kettle", "price": 47399.99}]}"#,
        )
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
}

#[tokio::test]
async fn registering_an_order_twice_answers_409() {
    let harness = Harness::with_delay(0).await;
    harness
        .add_order(VALID_NUMBER, r#"[{"description": "x", "price": 1}]"#)
        .await;
    let response = harness
        .post(
            "/api/orders",
            r#"{"order": "12345678903", "goods": [{"description": "y", "price": 2}]}"#,
        )
        .await;
    assert_problem(response, StatusCode::CONFLICT).await;
}

#[tokio::test]
async fn order_number_failing_luhn_or_not_digits_answers_400() {
    let harness = Harness::with_delay(0).await;
    for number in [BAD_LUHN_NUMBER, "abc", "1234567890a", "", "-18"] {
        let body =
            format!(r#"{{"order": "{number}", "goods": [{{"description": "x", "price": 1}}]}}"#);
        let response = harness.post("/api/orders", &body).await;
        assert_problem(response, StatusCode::BAD_REQUEST).await;
    }
    let response = harness.get_order(BAD_LUHN_NUMBER).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn order_with_negative_price_answers_400() {
    let harness = Harness::with_delay(0).await;
    let response = harness
        .post(
            "/api/orders",
            r#"{"order": "12345678903", "goods": [{"description": "x", "price": 1}, {"description": "y", "price": -0.01}]}"#,
        )
        .await;
    assert_problem(response, StatusCode::BAD_REQUEST).await;
    let response = harness.get_order(VALID_NUMBER).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn malformed_order_bodies_answer_400() {
    let harness = Harness::with_delay(0).await;
    for body in [
        r#"{"order": "12345678903", "goods": ["#,
        "{}",
        r#"{"order": "12345678903"}"#,
        r#"{"order": 12345678903, "goods": []}"#,
        r#"{"order": "12345678903", "goods": [{"description": "x", "price": "1"}]}"#,
        r#"{"order": "12345678903", "goods": [{"price": 1}]}"#,
        r#"{"order": "12345678903", "goods": {}}"#,
    ] {
        let response = harness.post("/api/orders", body).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "body {body:?}");
    }
}

#[tokio::test]
async fn body_over_one_mebibyte_is_refused_without_a_server_error() {
    let harness = Harness::with_delay(0).await;
    let description = "x".repeat(1 << 20);
    let body = format!(
        r#"{{"order": "12345678903", "goods": [{{"description": "{description}", "price": 1}}]}}"#
    );
    let response = harness.post("/api/orders", &body).await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn unknown_order_answers_204_with_an_empty_body() {
    let harness = Harness::with_delay(0).await;
    let response = harness.get_order(VALID_NUMBER).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(response.text().await.expect("a body"), "");
}

#[tokio::test]
async fn order_goes_from_registered_through_processing_to_processed() {
    // Each state lasts a second: polled every 10 ms, each is seen unless the test stalls
    // for that long.
    let harness = Harness::with_delay(1_000).await;
    harness.add_rule("Bork", "10", "%").await;
    harness
        .add_order(
            VALID_NUMBER,
            r#"[{"description": "Bork kettle", "price": 7000}]"#,
        )
        .await;
    let (seen, last) = harness
        .poll_until_final(VALID_NUMBER, Duration::from_secs(10))
        .await;
    assert_eq!(seen, ["REGISTERED", "PROCESSING", "PROCESSED"]);
    assert_eq!(last["order"], VALID_NUMBER);
    assert_eq!(last["accrual"].to_string(), "700");
}

#[tokio::test]
async fn accrual_is_absent_until_the_order_is_processed() {
    // Processed in two minutes, long after the test has asked.
    let harness = Harness::with_delay(60_000).await;
    harness.add_rule("Bork", "10", "%").await;
    harness
        .add_order(VALID_NUMBER, r#"[{"description": "Bork", "price": 100}]"#)
        .await;
    let first = harness.order_json(VALID_NUMBER).await;
    assert_ne!(first["status"], "PROCESSED");
    assert!(first.get("accrual").is_none(), "{first}");
}

#[tokio::test]
async fn zero_processing_delay_makes_the_order_processed_at_once() {
    let harness = Harness::with_delay(0).await;
    harness.add_rule("Bork", "5", "%").await;
    harness
        .add_order(
            VALID_NUMBER,
            r#"[{"description": "Bork kettle", "price": 14599.50}]"#,
        )
        .await;
    let answer = harness.order_json(VALID_NUMBER).await;
    assert_eq!(answer["status"], "PROCESSED");
    assert_eq!(answer["accrual"].to_string(), "729.98");
}

#[tokio::test]
async fn worked_example_is_served_as_exactly_27_25() {
    let harness = Harness::with_delay(0).await;
    harness.add_rule("Pringles", "10", "%").await;
    harness.add_rule("Coca-Cola", "12.5", "pt").await;
    harness
        .add_order(
            VALID_NUMBER,
            r#"[{"description": "kettle", "price": 7000},
                {"description": "Pringles chips", "price": 147.5},
                {"description": "Coca-Cola", "price": 55}]"#,
        )
        .await;
    let response = harness.get_order(VALID_NUMBER).await;
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.expect("a body");
    assert_eq!(
        text,
        r#"{"order":"12345678903","status":"PROCESSED","accrual":27.25}"#
    );
}

#[tokio::test]
async fn order_with_no_goods_becomes_invalid() {
    let harness = Harness::with_delay(50).await;
    harness.add_rule("Bork", "10", "%").await;
    harness.add_order(VALID_NUMBER, "[]").await;
    let (seen, last) = harness
        .poll_until_final(VALID_NUMBER, Duration::from_secs(10))
        .await;
    assert_eq!(seen.last().map(String::as_str), Some("INVALID"));
    assert!(last.get("accrual").is_none(), "{last}");
}

#[tokio::test]
async fn order_matching_no_rule_is_processed_without_accrual_field() {
    let harness = Harness::with_delay(0).await;
    harness.add_rule("Bork", "10", "%").await;
    harness
        .add_order(
            VALID_NUMBER,
            r#"[{"description": "LG fridge", "price": 50000}]"#,
        )
        .await;
    let answer = harness.order_json(VALID_NUMBER).await;
    assert_eq!(
        answer,
        serde_json::json!({ "order": VALID_NUMBER, "status": "PROCESSED" })
    );
}

#[tokio::test]
async fn rate_limit_admits_n_requests_per_minute_then_answers_429() {
    let harness = Harness::start(Config {
        rate_limit: 5,
        processing_delay_ms: 0,
        ..Config::ephemeral()
    })
    .await;
    harness
        .add_order(VALID_NUMBER, r#"[{"description": "x", "price": 1}]"#)
        .await;
    let mut admitted = 0;
    for attempt in 0..12 {
        let response = harness.get_order(VALID_NUMBER).await;
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            assert!(attempt >= 5, "refused after only {attempt} requests");
            let retry_after: u64 = response.headers()[RETRY_AFTER]
                .to_str()
                .expect("ASCII")
                .parse()
                .expect("whole seconds");
            assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");
            assert!(response.headers()[CONTENT_TYPE]
                .to_str()
                .expect("ASCII")
                .starts_with("text/plain"));
            assert_eq!(
                response.text().await.expect("a body"),
                "No more than 5 requests per minute allowed"
            );
        } else {
            assert_eq!(response.status(), StatusCode::OK);
            admitted += 1;
        }
    }
    assert_eq!(admitted, 5);
    let response = harness
        .post(
            "/api/goods",
            r#"{"match": "Bork", "reward": 1, "reward_type": "pt"}"#,
        )
        .await;
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "management is not limited"
    );
}

#[tokio::test]
async fn zero_rate_limit_means_unlimited() {
    let harness = Harness::with_delay(0).await;
    for _ in 0..100 {
        let response = harness.get_order(VALID_NUMBER).await;
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
    }
}

#[tokio::test]
async fn fail_rate_one_answers_500_to_every_status_request() {
    let harness = Harness::start(Config {
        fail_rate: 1.0,
        processing_delay_ms: 0,
        ..Config::ephemeral()
    })
    .await;
    harness.add_rule("Bork", "10", "%").await;
    harness
        .add_order(VALID_NUMBER, r#"[{"description": "Bork", "price": 10}]"#)
        .await;
    for number in [VALID_NUMBER, "79927398713"] {
        let response = harness.get_order(number).await;
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}

#[tokio::test]
async fn latency_delays_status_answers() {
    let harness = Harness::start(Config {
        latency_ms: 300,
        ..Config::ephemeral()
    })
    .await;
    let started = Instant::now();
    let response = harness.get_order(VALID_NUMBER).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn out_of_range_fail_rate_is_refused_at_start() {
    let result = Server::spawn(Config {
        fail_rate: 1.5,
        ..Config::ephemeral()
    })
    .await;
    assert!(result.is_err());
}

#[tokio::test]
async fn stopped_server_no_longer_answers() {
    let harness = Harness::with_delay(0).await;
    let url = harness.url("/healthz");
    let Harness { server, client } = harness;
    assert_eq!(
        client.get(&url).send().await.expect("answers").status(),
        StatusCode::OK
    );
    server.stop().await.expect("a clean stop");
    let fresh = reqwest::Client::new();
    assert!(fresh.get(&url).send().await.is_err());
}

#[tokio::test]
async fn request_statistics_count_answers_and_questions_after_the_final_status() {
    let harness = Harness::with_delay(0).await;
    let registered = harness
        .post(
            "/api/orders",
            &format!(
                r#"{{"order":"{VALID_NUMBER}","goods":[{{"description":"kettle","price":10}}]}}"#
            ),
        )
        .await;
    assert_eq!(registered.status(), StatusCode::ACCEPTED);

    harness.get_order("79927398713").await;
    harness.get_order(VALID_NUMBER).await;
    harness.get_order(VALID_NUMBER).await;
    let stats: Value = harness
        .client
        .get(harness.url("/api/stats"))
        .send()
        .await
        .expect("the server answers")
        .json()
        .await
        .expect("json");

    assert_eq!(harness.server.stats().answered, 3);
    assert_eq!(harness.server.stats().asked_after_final, 1);
    assert_eq!(stats["answered"], 3);
    assert_eq!(stats["asked_after_final"], 1);
    assert_eq!(stats["rate_limited"], 0);
}
