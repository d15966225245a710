//! Helpers shared by the API test modules: problem-body checks, forged tokens, gzip, and a
//! customer with points earned through the real accrual flow.

use std::io::{Read, Write};
use std::time::Duration;

use api_tests::{order_number, spawn_accrual, spawn_app_with, Options, TestApp, TEST_JWT_SECRET};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use flate2::{read::GzDecoder, write::GzEncoder, Compression};
use reqwest::{header, Response};
use serde::Serialize;
use serde_json::{json, Value};

/// The media type of every error body.
pub const PROBLEM: &str = "application/problem+json";

/// Every protected endpoint, as `(method, path)`.
pub const PROTECTED: [(&str, &str); 5] = [
    ("POST", "/api/user/orders"),
    ("GET", "/api/user/orders"),
    ("GET", "/api/user/balance"),
    ("POST", "/api/user/balance/withdraw"),
    ("GET", "/api/user/withdrawals"),
];

/// A header's value as text, if present.
pub fn header_text(response: &Response, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(ToOwned::to_owned)
}

/// Asserts that `response` has `status` and a problem body whose `status` field matches, and
/// returns the body.
///
/// # Panics
/// When it does not.
pub async fn assert_problem(response: Response, status: u16) -> Value {
    assert_eq!(response.status(), status, "status of {}", response.url());
    let content_type = header_text(&response, "content-type");
    assert_eq!(
        content_type.as_deref(),
        Some(PROBLEM),
        "content type of a {status} answer"
    );
    let body: Value = response.json().await.expect("a JSON problem body");
    assert_eq!(body["status"], json!(status), "problem body {body}");
    body
}

/// The `sub` claim of a token the service issued.
///
/// # Panics
/// When the token is not a JWT with a string `sub`.
pub fn subject_of(token: &str) -> String {
    let payload = token.split('.').nth(1).expect("a JWT with a payload");
    let claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url payload"))
            .expect("JSON claims");
    claims["sub"].as_str().expect("a string sub").to_owned()
}

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    iat: i64,
    exp: i64,
}

/// A HS256 token for `sub` signed with `secret`, expiring at `exp` (Unix seconds).
///
/// # Panics
/// When encoding fails.
pub fn signed_token(secret: &str, sub: &str, exp: i64) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &Claims {
            sub,
            iat: chrono::Utc::now().timestamp() - 10,
            exp,
        },
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("a token")
}

/// A HS256 token for `sub` signed with the service's configured secret, valid for an hour.
pub fn forged_token(sub: &str) -> String {
    signed_token(TEST_JWT_SECRET, sub, chrono::Utc::now().timestamp() + 3600)
}

/// An unsigned `alg: none` token for `sub`, valid for an hour.
pub fn unsigned_token(sub: &str) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let exp = chrono::Utc::now().timestamp() + 3600;
    let claims = URL_SAFE_NO_PAD.encode(format!(r#"{{"sub":"{sub}","iat":0,"exp":{exp}}}"#));
    format!("{header}.{claims}.")
}

/// Sends `method path` with no body beyond what each endpoint expects, and the given headers.
pub async fn call(app: &TestApp, method: &str, path: &str, headers: &[(&str, &str)]) -> Response {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("a method");
    let mut request = app.client.request(method.clone(), app.url(path));
    if method == reqwest::Method::POST {
        request = if path.ends_with("/withdraw") {
            request
                .header(header::CONTENT_TYPE, "application/json")
                .body(format!(
                    r#"{{"order":"{}","sum":1}}"#,
                    order_number(2_377_225)
                ))
        } else {
            request
                .header(header::CONTENT_TYPE, "text/plain")
                .body(order_number(1_234_567))
        };
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.expect("request sent")
}

/// `data` compressed with gzip.
///
/// # Panics
/// When compression fails.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(data).expect("compressed");
    encoder.finish().expect("compressed")
}

/// `data` decompressed from gzip.
///
/// # Panics
/// When `data` is not gzip.
pub fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    GzDecoder::new(data)
        .read_to_end(&mut out)
        .expect("a gzip body");
    out
}

/// A running service wired to our accrual system, and a signed-in customer holding the points
/// one processed order earned.
#[derive(Debug)]
pub struct Funded {
    pub app: TestApp,
    pub token: String,
    /// Kept alive for the service to ask.
    pub _accrual: accrual::Server,
}

/// Starts our accrual system with `rule`, registers a purchase of `goods` under it, starts the
/// service, signs up `login`, uploads the purchase and waits for the points.
///
/// # Panics
/// When any step fails.
pub async fn funded(login: &str, rule: Value, goods: Value) -> Funded {
    let accrual = spawn_accrual(|_| {}).await;
    let client = reqwest::Client::new();
    let registered_rule = client
        .post(format!("{}/api/goods", accrual.base_url()))
        .json(&rule)
        .send()
        .await
        .expect("sent");
    assert_eq!(registered_rule.status(), 200, "rule {rule}");
    let number = order_number(987_654_321);
    let registered_order = client
        .post(format!("{}/api/orders", accrual.base_url()))
        .json(&json!({"order": number, "goods": goods}))
        .send()
        .await
        .expect("sent");
    assert_eq!(registered_order.status(), 202, "purchase {goods}");
    let app = spawn_app_with(Options {
        accrual_address: accrual.base_url(),
        ..Options::default()
    })
    .await;
    let token = app.signed_up(login).await;
    assert_eq!(app.upload(&token, &number).await.status(), 202);
    let order = app
        .wait_final(&token, &number, Duration::from_secs(20))
        .await;
    assert_eq!(order["status"], "PROCESSED", "order {order}");
    Funded {
        app,
        token,
        _accrual: accrual,
    }
}

/// A customer holding 729.98 points (5 % of 14599.50).
pub async fn funded_729_98(login: &str) -> Funded {
    funded(
        login,
        json!({"match": "Bork", "reward": 5, "reward_type": "%"}),
        json!([{"description": "Bork kettle", "price": 14599.50}]),
    )
    .await
}

/// A customer holding exactly 100 points (a flat 100-point rule).
pub async fn funded_100(login: &str) -> Funded {
    funded(
        login,
        json!({"match": "Gadget", "reward": 100, "reward_type": "pt"}),
        json!([{"description": "Gadget deluxe", "price": 5000}]),
    )
    .await
}

/// Parses an RFC 3339 timestamp.
///
/// # Panics
/// When `value` is not one.
pub fn rfc3339(value: &Value) -> chrono::DateTime<chrono::FixedOffset> {
    let text = value.as_str().expect("a timestamp string");
    chrono::DateTime::parse_from_rfc3339(text).expect("an RFC 3339 timestamp")
}

/// The value of the sample `series` (name and labels exactly as exposed) in a scrape.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// `/metrics` of `app`, checked to be Prometheus text.
pub async fn scrape(app: &TestApp) -> String {
    let response = call(app, "GET", "/metrics", &[]).await;
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .expect("text")
        .to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    response.text().await.expect("text")
}
