//! No secret, password or token ever reaches the logs, even at the most verbose level.

mod support;

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use adapters_postgres::testing::TestDatabase;
use serde_json::json;

use support::free_port;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_passwords_and_tokens_never_appear_in_the_logs() {
    let db = TestDatabase::create().await;
    // Trust authentication ignores the password, but the service must still never print it.
    let db_password = "db-password-7f3a";
    let mut url = url::Url::parse(db.url()).expect("url");
    url.set_password(Some(db_password)).expect("password");
    let jwt_secret = "jwt-secret-91bc";
    let user_password = "user-password-c0ffee";
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let log = tempfile_path("gophermart-logs");
    let mut child = Command::new(env!("CARGO_BIN_EXE_gophermart"))
        .args([
            "-a",
            &format!("127.0.0.1:{port}"),
            "-r",
            "http://127.0.0.1:9",
        ])
        .args(["--bcrypt-cost", "4", "--http-workers", "1"])
        .env("DATABASE_URI", url.as_str())
        .env("JWT_SECRET", jwt_secret)
        .env("RUST_LOG", "trace")
        .env("LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("gophermart starts");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(Instant::now() < deadline, "not started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let credentials = json!({"login": "logged", "password": user_password});
    let registered = client
        .post(format!("{base}/api/user/register"))
        .json(&credentials)
        .send()
        .await
        .expect("sent");
    let token = registered
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .expect("token")
        .to_owned();
    let wrong = json!({"login": "logged", "password": "wrong-password-5eed"});
    // A client that is not a trusted proxy cannot choose the address the logs give it.
    client
        .post(format!("{base}/api/user/login"))
        .header("x-forwarded-for", "198.51.100.99")
        .json(&wrong)
        .send()
        .await
        .expect("sent");
    client
        .post(format!("{base}/api/user/login"))
        .json(&credentials)
        .send()
        .await
        .expect("sent");
    for path in [
        "/api/user/orders",
        "/api/user/balance",
        "/api/user/withdrawals",
    ] {
        client
            .get(format!("{base}{path}"))
            .bearer_auth(&token)
            .send()
            .await
            .expect("sent");
    }
    client
        .post(format!("{base}/api/user/orders"))
        .bearer_auth(&token)
        .header("content-type", "text/plain")
        .body("12345678903")
        .send()
        .await
        .expect("sent");
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    child.wait().expect("stopped");

    let logs = std::fs::read_to_string(&log).expect("logs");
    let _ = std::fs::remove_file(&log);
    assert!(
        logs.contains("logged") || logs.contains("register"),
        "the run was logged at all"
    );
    for secret in [
        db_password,
        jwt_secret,
        user_password,
        "wrong-password-5eed",
        token.as_str(),
    ] {
        assert!(!logs.contains(secret), "{secret:?} appears in the logs");
    }
    assert!(
        logs.contains(r#""http.client_ip":"127.0.0.1""#),
        "requests are logged with the connection's address"
    );
    assert!(
        !logs.contains("198.51.100.99"),
        "a forged X-Forwarded-For reached the logs"
    );
    // Not even a token's signature, which would let a reader replay part of it.
    let signature = token.rsplit('.').next().expect("signature");
    assert!(!logs.contains(signature));

    // Every line logged while answering an authenticated request names the customer in the
    // request's own span, beside its id and route.
    let routes = ["/api/user/balance", "/api/user/orders"];
    let mut seen = 0;
    for line in logs.lines() {
        let Ok(event) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let Some(request) = event["spans"].get(0) else {
            continue;
        };
        if !routes.contains(&request["http.route"].as_str().unwrap_or_default()) {
            continue;
        }
        seen += 1;
        assert!(
            request["user_id"].is_u64() && request["request_id"].is_string(),
            "a line logged within an authenticated request lacks its customer: {line}"
        );
    }
    assert!(
        seen > 0,
        "nothing was logged within the authenticated requests"
    );
}

fn tempfile_path(prefix: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!(
        "{prefix}-{}-{}.log",
        std::process::id(),
        free_port()
    ))
}
