//! Helpers shared by the end-to-end tests: Gophermart processes started from the built
//! binary, our accrual system in-process, and a client's view of the API.

#![allow(dead_code)]

use std::{
    net::{SocketAddr, TcpListener},
    process::{Child, Command, Stdio},
    str::FromStr,
    time::{Duration, Instant},
};

use adapters_postgres::testing::TestDatabase;
use rust_decimal::Decimal;
use serde_json::{json, Value};

pub const SECRET: &str = "end-to-end-secret";

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A Gophermart process started from the built binary.
pub struct Instance {
    child: Child,
    pub base: String,
}

impl Instance {
    pub fn start(db: &TestDatabase, accrual: &str, extra: &[&str]) -> Self {
        Self::start_at(db.url(), accrual, extra)
    }

    /// Starts an instance on a database given by URI.
    pub fn start_at(database_url: &str, accrual: &str, extra: &[&str]) -> Self {
        Self::spawn(database_url, accrual, extra, None)
    }

    /// Starts an instance on a database given by URI that logs at INFO and above (plain
    /// text) into the file `log`.
    pub fn start_logging(
        database_url: &str,
        accrual: &str,
        extra: &[&str],
        log: &std::path::Path,
    ) -> Self {
        Self::spawn(database_url, accrual, extra, Some(log))
    }

    fn spawn(
        database_url: &str,
        accrual: &str,
        extra: &[&str],
        log: Option<&std::path::Path>,
    ) -> Self {
        let (database_url, pooled) =
            adapters_postgres::testing_pooler::through_pooler(database_url);
        let database_url = database_url.as_str();
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_gophermart"))
            .args([
                "-a",
                &format!("127.0.0.1:{port}"),
                "-d",
                database_url,
                "-r",
                accrual,
            ])
            .args([
                "--jwt-secret",
                SECRET,
                "--bcrypt-cost",
                "4",
                "--http-workers",
                "1",
            ])
            .args([
                "--database-pool-size",
                "4",
                "--accrual-recheck-delay-ms",
                "50",
            ])
            .args([
                "--accrual-backoff-cap-ms",
                "300",
                "--accrual-lease-ms",
                "1500",
                "--accrual-request-timeout-ms",
                "1000",
            ])
            .args(&pooled)
            .args(extra)
            .env(
                "RUST_LOG",
                match log {
                    Some(_) => "info".into(),
                    None => std::env::var("E2E_RUST_LOG").unwrap_or_else(|_| "error".into()),
                },
            )
            .env_remove("LOG_FORMAT")
            .stdout(Stdio::null())
            .stderr(match log {
                Some(path) => Stdio::from(std::fs::File::create(path).expect("log file")),
                None => Stdio::inherit(),
            })
            .spawn()
            .expect("gophermart starts");
        Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    pub async fn wait_ready(&self, client: &reqwest::Client) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(response) = client.get(format!("{}/readyz", self.base)).send().await {
                if response.status() == 200 {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("gophermart at {} not ready", self.base);
    }

    pub fn kill(&mut self) {
        // SIGKILL: no shutdown of any kind.
        self.child.kill().expect("killed");
        self.child.wait().expect("reaped");
    }

    pub fn terminate(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let status = self.child.wait().expect("reaped");
        assert!(status.success(), "graceful stop exits 0, got {status}");
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn register(client: &reqwest::Client, base: &str, login: &str) -> String {
    let response = client
        .post(format!("{base}/api/user/register"))
        .json(&json!({"login": login, "password": "password"}))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
    response
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .expect("token")
        .to_owned()
}

pub async fn upload(client: &reqwest::Client, base: &str, token: &str, number: &str) -> u16 {
    client
        .post(format!("{base}/api/user/orders"))
        .bearer_auth(token)
        .header("content-type", "text/plain")
        .body(number.to_owned())
        .send()
        .await
        .expect("sent")
        .status()
        .as_u16()
}

pub async fn orders(client: &reqwest::Client, base: &str, token: &str) -> Vec<Value> {
    let response = client
        .get(format!("{base}/api/user/orders"))
        .bearer_auth(token)
        .send()
        .await
        .expect("sent");
    if response.status() == 204 {
        return Vec::new();
    }
    response.json().await.expect("json")
}

pub async fn balance(client: &reqwest::Client, base: &str, token: &str) -> (Decimal, Decimal) {
    let body: Value = client
        .get(format!("{base}/api/user/balance"))
        .bearer_auth(token)
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    let read = |v: &Value| Decimal::from_str(&v.to_string()).expect("decimal");
    (read(&body["current"]), read(&body["withdrawn"]))
}

/// Waits until every listed order of the user is final; returns the orders.
pub async fn wait_all_final(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    count: usize,
    timeout: Duration,
) -> Vec<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let listed = orders(client, base, token).await;
        let done = listed
            .iter()
            .filter(|o| o["status"] == "PROCESSED" || o["status"] == "INVALID")
            .count();
        if listed.len() == count && done == count {
            return listed;
        }
        assert!(
            Instant::now() < deadline,
            "only {done} of {count} orders final: {listed:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn start_accrual(
    address: SocketAddr,
    configure: impl FnOnce(&mut accrual::Config),
) -> accrual::Server {
    let mut config = accrual::Config::ephemeral();
    config.address = address;
    config.processing_delay_ms = 0;
    configure(&mut config);
    // The port was just released by an earlier server; retry briefly while it is reused.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match accrual::Server::spawn(config.clone()).await {
            Ok(server) => return server,
            Err(error) if Instant::now() < deadline => {
                eprintln!("accrual not started yet: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => panic!("accrual system: {error}"),
        }
    }
}

/// Registers in the accrual system a purchase of `number` that earns exactly `points`: a `pt`
/// rule of its own and one matching good. Repeating it is harmless.
pub async fn register_purchase(
    client: &reqwest::Client,
    accrual: &str,
    number: &str,
    points: Decimal,
) {
    let tag = format!("Gift#{number}#");
    let rule = client
        .post(format!("{accrual}/api/goods"))
        .json(&json!({
            "match": tag,
            "reward": serde_json::Number::from_str(&points.to_string()).expect("number"),
            "reward_type": "pt"
        }))
        .send()
        .await
        .expect("sent");
    assert!(
        rule.status() == 200 || rule.status() == 409,
        "rule: {}",
        rule.status()
    );
    let order = client
        .post(format!("{accrual}/api/orders"))
        .json(
            &json!({"order": number, "goods": [{"description": format!("{tag} box"), "price": 1}]}),
        )
        .send()
        .await
        .expect("sent");
    assert!(
        order.status() == 202 || order.status() == 409,
        "order: {}",
        order.status()
    );
}

/// Registers purchases for `numbers`, the i-th earning `points(i)`.
pub async fn register_purchases(
    client: &reqwest::Client,
    accrual: &str,
    numbers: &[String],
    points: &dyn Fn(usize) -> Decimal,
) {
    for (i, number) in numbers.iter().enumerate() {
        register_purchase(client, accrual, number, points(i)).await;
    }
}

pub fn numbers(count: usize, seed: u64) -> Vec<String> {
    (0..count as u64)
        .map(|i| domain::with_check_digit(&(seed + i).to_string()))
        .collect()
}

pub fn points(i: usize) -> Decimal {
    Decimal::new(1000 + i64::try_from(i).expect("small") * 101, 2)
}

pub fn total(count: usize) -> Decimal {
    (0..count).map(points).sum()
}
