//! End to end: Gophermart processes with a real PostgreSQL and our accrual system, through
//! restarts after SIGKILL, several instances on one database, and the accrual system's rate
//! limit. Every order must be credited exactly once.

use std::{
    net::{SocketAddr, TcpListener},
    process::{Child, Command, Stdio},
    str::FromStr,
    time::{Duration, Instant},
};

use adapters_postgres::testing::TestDatabase;
use rust_decimal::Decimal;
use serde_json::{json, Value};

const SECRET: &str = "end-to-end-secret";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A Gophermart process started from the built binary.
struct Instance {
    child: Child,
    base: String,
}

impl Instance {
    fn start(db: &TestDatabase, accrual: &str, extra: &[&str]) -> Self {
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_gophermart"))
            .args([
                "-a",
                &format!("127.0.0.1:{port}"),
                "-d",
                db.url(),
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
            ])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("gophermart starts");
        Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    async fn wait_ready(&self, client: &reqwest::Client) {
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

    fn kill(&mut self) {
        // SIGKILL: no shutdown of any kind.
        self.child.kill().expect("killed");
        self.child.wait().expect("reaped");
    }

    fn terminate(&mut self) {
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

async fn register(client: &reqwest::Client, base: &str, login: &str) -> String {
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

async fn upload(client: &reqwest::Client, base: &str, token: &str, number: &str) -> u16 {
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

async fn orders(client: &reqwest::Client, base: &str, token: &str) -> Vec<Value> {
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

async fn balance(client: &reqwest::Client, base: &str, token: &str) -> (Decimal, Decimal) {
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
async fn wait_all_final(
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

async fn start_accrual(
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

/// Registers a `pt` rule "Gift" and orders with one gift each, worth `points(i)`.
async fn register_purchases(
    client: &reqwest::Client,
    accrual: &str,
    numbers: &[String],
    points: &dyn Fn(usize) -> Decimal,
) {
    for (i, number) in numbers.iter().enumerate() {
        // One rule per order keeps each order's accrual distinct and exact.
        let rule = client
            .post(format!("{accrual}/api/goods"))
            .json(&json!({"match": format!("Gift#{i}#"), "reward": serde_json::Number::from_str(&points(i).to_string()).expect("number"), "reward_type": "pt"}))
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
            .json(&json!({"order": number, "goods": [{"description": format!("Gift#{i}# box"), "price": 1}]}))
            .send()
            .await
            .expect("sent");
        assert_eq!(order.status(), 202);
    }
}

fn numbers(count: usize, seed: u64) -> Vec<String> {
    (0..count as u64)
        .map(|i| domain::with_check_digit(&(seed + i).to_string()))
        .collect()
}

fn points(i: usize) -> Decimal {
    Decimal::new(1000 + i64::try_from(i).expect("small") * 101, 2)
}

fn total(count: usize) -> Decimal {
    (0..count).map(points).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orders_survive_sigkill_and_are_credited_exactly_once_after_restart() {
    let db = TestDatabase::create().await;
    let client = reqwest::Client::new();
    let accrual_address: SocketAddr = format!("127.0.0.1:{}", free_port())
        .parse()
        .expect("address");
    let accrual_url = format!("http://{accrual_address}");
    let down_first = numbers(10, 5_550_000);
    let in_flight = numbers(10, 6_660_000);
    let mut all = down_first.clone();
    all.extend(in_flight.iter().cloned());

    // Uploads while the accrual system is down.
    let mut first = Instance::start(&db, &accrual_url, &[]);
    first.wait_ready(&client).await;
    let token = register(&client, &first.base, "survivor").await;
    for number in &down_first {
        assert_eq!(upload(&client, &first.base, &token, number).await, 202);
    }
    // The accrual system comes up slow, so that requests are in flight when the kill comes.
    let slow = start_accrual(accrual_address, |c| c.latency_ms = 1_000).await;
    register_purchases(&client, &accrual_url, &all, &points).await;
    for number in &in_flight {
        assert_eq!(upload(&client, &first.base, &token, number).await, 202);
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    first.kill();
    slow.stop().await.expect("slow accrual stops");

    // A fresh accrual system that answers at once, and a fresh Gophermart on the same database.
    let fast = start_accrual(accrual_address, |_| {}).await;
    register_purchases(&client, &accrual_url, &all, &points).await;
    let mut second = Instance::start(&db, &accrual_url, &[]);
    second.wait_ready(&client).await;

    let listed = wait_all_final(
        &client,
        &second.base,
        &token,
        all.len(),
        Duration::from_secs(60),
    )
    .await;
    assert!(
        listed.iter().all(|o| o["status"] == "PROCESSED"),
        "{listed:?}"
    );
    assert_eq!(
        balance(&client, &second.base, &token).await,
        (total(all.len()), Decimal::ZERO)
    );
    let store = db.store();
    assert_eq!(
        store.queue_depth(chrono::Utc::now()).await.expect("depth"),
        Default::default()
    );
    second.terminate();
    drop(fast);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_instances_on_one_database_credit_every_order_once() {
    let db = TestDatabase::create().await;
    let client = reqwest::Client::new();
    let accrual = start_accrual("127.0.0.1:0".parse().expect("address"), |c| {
        c.latency_ms = 5
    })
    .await;
    let accrual_url = accrual.base_url();
    let all = numbers(60, 7_770_000);
    register_purchases(&client, &accrual_url, &all, &points).await;
    let instances: Vec<Instance> = (0..3)
        .map(|_| Instance::start(&db, &accrual_url, &[]))
        .collect();
    for instance in &instances {
        instance.wait_ready(&client).await;
    }
    let token = register(&client, &instances[0].base, "shared").await;

    // Uploads spread over the instances.
    for (i, number) in all.iter().enumerate() {
        let base = &instances[i % instances.len()].base;
        assert_eq!(upload(&client, base, &token, number).await, 202);
    }

    let listed = wait_all_final(
        &client,
        &instances[1].base,
        &token,
        all.len(),
        Duration::from_secs(60),
    )
    .await;
    assert!(
        listed.iter().all(|o| o["status"] == "PROCESSED"),
        "{listed:?}"
    );
    assert_eq!(
        balance(&client, &instances[2].base, &token).await,
        (total(all.len()), Decimal::ZERO)
    );
    let stats = accrual.stats();
    assert_eq!(stats.asked_after_final, 0, "{stats:?}");
    let mut instances = instances;
    for instance in &mut instances {
        instance.terminate();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_rate_limit_pauses_every_request_and_all_orders_finish() {
    let db = TestDatabase::create().await;
    let client = reqwest::Client::new();
    let limit = 12;
    let accrual = start_accrual("127.0.0.1:0".parse().expect("address"), |c| {
        c.rate_limit = limit
    })
    .await;
    let accrual_url = accrual.base_url();
    // More orders than one minute's allowance: the rest must wait for the window.
    let all = numbers(16, 8_880_000);
    register_purchases(&client, &accrual_url, &all, &points).await;
    let mut instance = Instance::start(&db, &accrual_url, &["--accrual-concurrency", "4"]);
    instance.wait_ready(&client).await;
    let token = register(&client, &instance.base, "patient").await;

    let started = Instant::now();
    for number in &all {
        assert_eq!(upload(&client, &instance.base, &token, number).await, 202);
    }
    let listed = wait_all_final(
        &client,
        &instance.base,
        &token,
        all.len(),
        Duration::from_secs(150),
    )
    .await;
    let elapsed = started.elapsed();

    assert!(
        listed.iter().all(|o| o["status"] == "PROCESSED"),
        "{listed:?}"
    );
    assert_eq!(
        balance(&client, &instance.base, &token).await,
        (total(all.len()), Decimal::ZERO)
    );
    let stats = accrual.stats();
    // Requests already in flight when the first 429 came may also be refused; after that the
    // pause holds every request back.
    assert!(stats.rate_limited <= 4, "{stats:?}");
    assert!(stats.answered >= all.len() as u64, "{stats:?}");
    eprintln!(
        "rate-limited run: {} orders in {elapsed:?}, {stats:?}",
        all.len()
    );
    instance.terminate();
}
