//! Helpers for the black-box tests: start the real service on port 0 against a fresh
//! database, and talk to it like a client does.

use std::time::Duration;

use adapters_postgres::testing::TestDatabase;
use clap::Parser;
use gophermart::{Application, Config, StopHandle};
use reqwest::{header, Client, Response};
use serde_json::Value;

/// The signing secret the test service uses, so tests can forge tokens with it.
pub const TEST_JWT_SECRET: &str = "test-secret-for-api-tests";

/// A running service with its own database.
#[derive(Debug)]
pub struct TestApp {
    /// `http://127.0.0.1:<port>`.
    pub address: String,
    /// A client with no cookie store; tests pass credentials explicitly.
    pub client: Client,
    pub db: TestDatabase,
    stop: StopHandle,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// Options for [`spawn_app_with`].
#[derive(Debug, Clone)]
pub struct Options {
    /// The accrual system's address; by default a closed port.
    pub accrual_address: String,
    /// Further flags, as on the command line.
    pub extra_args: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            accrual_address: "http://127.0.0.1:9".into(),
            extra_args: Vec::new(),
        }
    }
}

/// Starts the service on a fresh database.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(Options::default()).await
}

/// Starts the service on a fresh database with options.
///
/// # Panics
/// When the service cannot start; this is test code.
pub async fn spawn_app_with(options: Options) -> TestApp {
    let db = TestDatabase::create().await;
    spawn_app_on(db, options).await
}

/// Starts the service on an existing test database.
///
/// # Panics
/// When the service cannot start; this is test code.
pub async fn spawn_app_on(db: TestDatabase, options: Options) -> TestApp {
    let Instance {
        address,
        client,
        stop,
        task,
    } = spawn_instance(db.url(), options).await;
    TestApp {
        address,
        client,
        db,
        stop,
        task,
    }
}

/// One more running service, on a database another test service owns (several instances of
/// one deployment).
#[derive(Debug)]
pub struct Instance {
    /// `http://127.0.0.1:<port>`.
    pub address: String,
    pub client: Client,
    stop: StopHandle,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Instance {
    /// `POST /api/user/login` with a JSON body, with `headers` added.
    pub async fn login(&self, login: &str, password: &str, headers: &[(&str, &str)]) -> Response {
        let mut request = self
            .client
            .post(format!("{}/api/user/login", self.address))
            .json(&serde_json::json!({"login": login, "password": password}));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.expect("request sent")
    }

    /// Stops the service gracefully and waits for it.
    pub async fn stop(&mut self) {
        self.stop.stop().await;
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

/// Starts the service on the database at `database_url`.
///
/// # Panics
/// When the service cannot start; this is test code.
pub async fn spawn_instance(database_url: &str, options: Options) -> Instance {
    let (database_url, pooled) = adapters_postgres::testing_pooler::through_pooler(database_url);
    let mut args: Vec<String> = [
        "gophermart",
        "-a",
        "127.0.0.1:0",
        "-d",
        &database_url,
        "-r",
        &options.accrual_address,
        "--jwt-secret",
        TEST_JWT_SECRET,
        "--bcrypt-cost",
        "4",
        "--http-workers",
        "2",
        "--database-pool-size",
        "4",
        "--accrual-recheck-delay-ms",
        "50",
        "--accrual-poll-interval-ms",
        "200",
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    args.extend(pooled);
    args.extend(options.extra_args);
    let config = Config::try_parse_from(args).expect("valid test configuration");
    let app = Application::build(config)
        .await
        .expect("the service starts");
    let address = format!("http://127.0.0.1:{}", app.port());
    let stop = app.stop_handle();
    let task = tokio::spawn(async move {
        app.run_until_stopped().await.expect("the service runs");
    });
    Instance {
        address,
        client: Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client"),
        stop,
        task: Some(task),
    }
}

impl TestApp {
    /// The full URL of a path.
    #[must_use]
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// `POST /api/user/register` with a JSON body.
    pub async fn register(&self, login: &str, password: &str) -> Response {
        self.post_json(
            "/api/user/register",
            &serde_json::json!({"login": login, "password": password}),
            None,
        )
        .await
    }

    /// `POST /api/user/login` with a JSON body.
    pub async fn login(&self, login: &str, password: &str) -> Response {
        self.post_json(
            "/api/user/login",
            &serde_json::json!({"login": login, "password": password}),
            None,
        )
        .await
    }

    /// Registers a user and returns their bearer token.
    ///
    /// # Panics
    /// When registration fails.
    pub async fn signed_up(&self, login: &str) -> String {
        let response = self.register(login, "password").await;
        assert_eq!(response.status(), 200, "registration of {login}");
        bearer(&response)
    }

    /// POSTs JSON, with a bearer token when given.
    pub async fn post_json(&self, path: &str, body: &Value, token: Option<&str>) -> Response {
        let mut request = self.client.post(self.url(path)).json(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.expect("request sent")
    }

    /// `POST /api/user/orders` with a text body.
    pub async fn upload(&self, token: &str, number: &str) -> Response {
        self.client
            .post(self.url("/api/user/orders"))
            .bearer_auth(token)
            .header(header::CONTENT_TYPE, "text/plain")
            .body(number.to_owned())
            .send()
            .await
            .expect("request sent")
    }

    /// `POST /api/user/balance/withdraw`.
    pub async fn withdraw(&self, token: &str, order: &str, sum: &str) -> Response {
        self.client
            .post(self.url("/api/user/balance/withdraw"))
            .bearer_auth(token)
            .header(header::CONTENT_TYPE, "application/json")
            .body(format!(r#"{{"order":"{order}","sum":{sum}}}"#))
            .send()
            .await
            .expect("request sent")
    }

    /// GETs a path with a bearer token.
    pub async fn get(&self, path: &str, token: &str) -> Response {
        self.client
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("request sent")
    }

    /// The user's balance as `(current, withdrawn)` JSON values.
    pub async fn balance(&self, token: &str) -> Value {
        let response = self.get("/api/user/balance", token).await;
        assert_eq!(response.status(), 200);
        response.json().await.expect("json")
    }

    /// Polls the user's orders until `number` has a final status or `timeout` passes.
    ///
    /// # Panics
    /// When the order does not reach a final status in time.
    pub async fn wait_final(&self, token: &str, number: &str, timeout: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let response = self.get("/api/user/orders", token).await;
            if response.status() == 200 {
                let orders: Vec<Value> = response.json().await.expect("json");
                if let Some(order) = orders.into_iter().find(|o| o["number"] == number) {
                    if order["status"] == "PROCESSED" || order["status"] == "INVALID" {
                        return order;
                    }
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "order {number} not final in {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the service gracefully and waits for it.
    pub async fn stop(&mut self) {
        self.stop.stop().await;
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Stops the service and hands back its database, to start another service on it.
    pub async fn into_db(mut self) -> TestDatabase {
        self.stop().await;
        self.db
    }
}

/// The bearer token a register or login response handed out.
///
/// # Panics
/// When the response carries none.
#[must_use]
pub fn bearer(response: &Response) -> String {
    response
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .expect("an Authorization: Bearer header")
        .to_owned()
}

/// A valid order number derived from `seed`.
#[must_use]
pub fn order_number(seed: u64) -> String {
    domain::with_check_digit(&seed.to_string())
}

/// Starts our accrual system in-process on a free port.
///
/// # Panics
/// When it cannot start.
pub async fn spawn_accrual(configure: impl FnOnce(&mut accrual::Config)) -> accrual::Server {
    let mut config = accrual::Config::ephemeral();
    config.processing_delay_ms = 0;
    configure(&mut config);
    accrual::Server::spawn(config)
        .await
        .expect("accrual system starts")
}
