//! An acknowledged write is a committed write.
//!
//! With synchronous replication a commit waits, after its rows have been sent, until a standby
//! has the transaction; only `ReadyForQuery` says that it is done. These tests make every
//! commit of one database wait for a standby that does not exist, then either end the session
//! that waits (`pg_terminate_backend`, as a shutdown does) or cancel its wait
//! (`pg_cancel_backend`, as pg_auto_failover's keeper does to every waiting session when it
//! disables synchronous replication; PostgreSQL then answers the commit with success and a
//! `WARNING`), and check that the client is never told that its upload, withdrawal or
//! registration was made: the standby never confirmed it. The answer is 503 with
//! `Retry-After` (the outcome is unknown; the same request may be repeated), in both statement
//! modes.
//!
//! Each test runs a cluster of its own, since `synchronous_standby_names` is a setting of the
//! whole server.

mod support;

use std::time::{Duration, Instant};

use adapters_postgres::testing::{ScriptedCluster, TestDatabase};
use diesel::{sql_types::Int8, QueryableByName};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use serde_json::json;

use support::{register, upload, Instance};

#[derive(QueryableByName)]
struct Ended {
    #[diesel(sql_type = Int8)]
    ended: i64,
}

/// A throwaway cluster of the test's own (`synchronous_standby_names` is a setting of the
/// whole server) with a database whose commits wait for a synchronous standby when the server
/// names one, as a durable deployment's do (the cluster itself has `synchronous_commit = off`),
/// and an HTTP client that gives up after 30 s.
async fn durable_database() -> (ScriptedCluster, TestDatabase, reqwest::Client) {
    let cluster = ScriptedCluster::start(None);
    let db = TestDatabase::create_on(cluster.uri()).await;
    db.execute(&format!(
        "ALTER DATABASE {} SET synchronous_commit = on",
        db.name()
    ))
    .await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    (cluster, db, client)
}

/// How a commit waiting for the standby is released without the standby.
#[derive(Debug, Clone, Copy)]
enum Release {
    /// The session is ended (`pg_terminate_backend`): the client sees it closed.
    Terminate,
    /// The wait is cancelled (`pg_cancel_backend`): PostgreSQL answers the commit with success
    /// and `WARNING: canceling wait for synchronous replication due to user request`.
    Cancel,
}

/// Ends (or cancels the wait of) every session of the database that waits for its commit to
/// reach a standby, and says how many there were.
async fn release_sessions_waiting_for_a_standby(
    conn: &mut AsyncPgConnection,
    release: Release,
) -> i64 {
    use diesel_async::RunQueryDsl;
    let function = match release {
        Release::Terminate => "pg_terminate_backend",
        Release::Cancel => "pg_cancel_backend",
    };
    diesel::sql_query(format!(
        "SELECT count({function}(pid)) AS ended FROM pg_stat_activity \
         WHERE datname = current_database() AND wait_event = 'SyncRep'"
    ))
    .get_result::<Ended>(conn)
    .await
    .expect("release the waiting sessions")
    .ended
}

/// Sends a request and, while it is out, releases the sessions whose commit waits for the
/// standby; returns the answer's status, its `Retry-After` and how many sessions were released.
async fn answer_while_commits_are_never_confirmed(
    db: &TestDatabase,
    request: reqwest::RequestBuilder,
    release: Release,
) -> (u16, Option<String>, i64) {
    let mut observer = AsyncPgConnection::establish(db.url())
        .await
        .expect("connect");
    let mut sent = tokio::spawn(request.send());
    let mut ended = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    let response = loop {
        assert!(Instant::now() < deadline, "no answer in 20 s");
        tokio::select! {
            response = &mut sent => break response.expect("joined").expect("answered"),
            () = tokio::time::sleep(Duration::from_millis(10)) => {
                ended += release_sessions_waiting_for_a_standby(&mut observer, release).await;
            }
        }
    };
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(ToOwned::to_owned);
    (response.status().as_u16(), retry_after, ended)
}

async fn no_write_is_acknowledged_before_its_commit_is_confirmed(
    statements: &str,
    release: Release,
) {
    let (cluster, db, client) = durable_database().await;
    let instance = Instance::start(
        &db,
        "http://127.0.0.1:9",
        &["--database-prepared-statements", statements],
    );
    instance.wait_ready(&client).await;
    let token = register(&client, &instance.base, "payer").await;
    db.execute("UPDATE accounts SET balance = 100 FROM users WHERE users.id = accounts.user_id AND users.login = 'payer'")
        .await;

    // From here on no commit of the server is ever confirmed.
    db.execute("ALTER SYSTEM SET synchronous_standby_names = 'ghost'")
        .await;
    db.execute("SELECT pg_reload_conf()").await;

    let base = &instance.base;
    let number = domain::with_check_digit("7001");
    let uploading = client
        .post(format!("{base}/api/user/orders"))
        .bearer_auth(&token)
        .header("content-type", "text/plain")
        .body(number.clone());
    let withdrawal = client
        .post(format!("{base}/api/user/balance/withdraw"))
        .bearer_auth(&token)
        .json(&json!({"order": domain::with_check_digit("7002"), "sum": 10}));
    let registration = client
        .post(format!("{base}/api/user/register"))
        .json(&json!({"login": "newcomer", "password": "password"}));
    for (what, request) in [
        ("upload", uploading),
        ("withdrawal", withdrawal),
        ("registration", registration),
    ] {
        let (status, retry_after, ended) =
            answer_while_commits_are_never_confirmed(&db, request, release).await;
        assert!(
            ended >= 1,
            "{what} ({statements}, {release:?}): no session waited for the standby"
        );
        assert_eq!(
            status, 503,
            "{what} ({statements}, {release:?}) was answered {status} though its commit was never confirmed"
        );
        assert!(
            retry_after.is_some(),
            "{what} ({statements}, {release:?}): 503 without Retry-After"
        );
    }

    // Once commits are confirmed again, repeating the upload is safe: the first one may have
    // been stored (PostgreSQL had committed it locally), and the repeat says so.
    db.execute("ALTER SYSTEM RESET synchronous_standby_names")
        .await;
    db.execute("SELECT pg_reload_conf()").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let repeated = loop {
        let status = upload(&client, base, &token, &number).await;
        if status != 503 || Instant::now() > deadline {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        repeated == 200 || repeated == 202,
        "the repeated upload answered {repeated}"
    );
    assert_eq!(upload(&client, base, &token, &number).await, 200);
    drop(instance);
    drop(db);
    cluster.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_write_is_acknowledged_before_its_commit_is_confirmed_with_prepared_statements() {
    no_write_is_acknowledged_before_its_commit_is_confirmed("true", Release::Terminate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_write_is_acknowledged_before_its_commit_is_confirmed_with_unnamed_statements() {
    no_write_is_acknowledged_before_its_commit_is_confirmed("false", Release::Terminate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_write_is_acknowledged_when_its_wait_for_the_standby_is_cancelled_with_prepared_statements(
) {
    no_write_is_acknowledged_before_its_commit_is_confirmed("true", Release::Cancel).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_write_is_acknowledged_when_its_wait_for_the_standby_is_cancelled_with_unnamed_statements(
) {
    no_write_is_acknowledged_before_its_commit_is_confirmed("false", Release::Cancel).await;
}

/// With `--database-require-synchronous-standby`, a server whose commits wait for no standby
/// (pg_auto_failover's `wait_primary` empties `synchronous_standby_names`) gets writes, but
/// none is acknowledged: an upload, a withdrawal and a registration each answer 503 with
/// `Retry-After`. Without the option the same server acknowledges them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_not_acknowledged_without_a_synchronous_standby_when_one_is_required() {
    let (cluster, db, client) = durable_database().await;

    // Without the option: acknowledged, as pg_auto_failover's two-node default intends.
    let lenient = Instance::start(
        &db,
        "http://127.0.0.1:9",
        &["--database-prepared-statements", "true"],
    );
    lenient.wait_ready(&client).await;
    let token = register(&client, &lenient.base, "payer").await;
    db.execute("UPDATE accounts SET balance = 100 FROM users WHERE users.id = accounts.user_id AND users.login = 'payer'")
        .await;
    let first = domain::with_check_digit("7101");
    assert_eq!(upload(&client, &lenient.base, &token, &first).await, 202);
    drop(lenient);

    // With it: refused, whatever the write.
    let strict = Instance::start(
        &db,
        "http://127.0.0.1:9",
        &[
            "--database-prepared-statements",
            "true",
            "--database-require-synchronous-standby",
        ],
    );
    strict.wait_ready(&client).await;
    let base = &strict.base;
    let uploading = client
        .post(format!("{base}/api/user/orders"))
        .bearer_auth(&token)
        .header("content-type", "text/plain")
        .body(domain::with_check_digit("7102"));
    let repeating = client
        .post(format!("{base}/api/user/orders"))
        .bearer_auth(&token)
        .header("content-type", "text/plain")
        .body(first.clone());
    let withdrawal = client
        .post(format!("{base}/api/user/balance/withdraw"))
        .bearer_auth(&token)
        .json(&json!({"order": domain::with_check_digit("7103"), "sum": 10}));
    let registration = client
        .post(format!("{base}/api/user/register"))
        .json(&json!({"login": "newcomer", "password": "password"}));
    for (what, request) in [
        ("upload", uploading),
        ("repeated upload", repeating),
        ("withdrawal", withdrawal),
        ("registration", registration),
    ] {
        let response = request.send().await.expect("answered");
        assert_eq!(
            response.status().as_u16(),
            503,
            "{what} was acknowledged by a primary without a synchronous standby"
        );
        assert!(
            response.headers().get("retry-after").is_some(),
            "{what}: 503 without Retry-After"
        );
    }
    // Reads are served.
    let balance = client
        .get(format!("{base}/api/user/balance"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("answered");
    assert_eq!(balance.status().as_u16(), 200);
    drop(strict);
    drop(db);
    cluster.stop();
}

/// The server's checkpointer, stopped (SIGSTOP) until dropped: a setting reloaded meanwhile is
/// seen by every session but not yet acted on where only the checkpointer acts on it.
struct StoppedCheckpointer(String);

impl StoppedCheckpointer {
    async fn stop(db: &TestDatabase) -> Self {
        use diesel_async::RunQueryDsl;

        #[derive(QueryableByName)]
        struct Pid {
            #[diesel(sql_type = diesel::sql_types::Int4)]
            pid: i32,
        }
        let mut conn = AsyncPgConnection::establish(db.url())
            .await
            .expect("connect");
        let pid = diesel::sql_query(
            "SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'",
        )
        .get_result::<Pid>(&mut conn)
        .await
        .expect("the checkpointer")
        .pid
        .to_string();
        signal("-STOP", &pid);
        Self(pid)
    }
}

impl Drop for StoppedCheckpointer {
    fn drop(&mut self) {
        signal("-CONT", &self.0);
    }
}

/// How many orders with `number` the database holds.
async fn stored_orders(db: &TestDatabase, number: &str) -> i64 {
    use diesel_async::RunQueryDsl;
    let mut conn = AsyncPgConnection::establish(db.url())
        .await
        .expect("connect");
    diesel::sql_query(format!(
        "SELECT count(*) AS ended FROM orders WHERE number = '{number}'"
    ))
    .get_result::<Ended>(&mut conn)
    .await
    .expect("count the orders")
    .ended
}

fn signal(which: &str, pid: &str) {
    let status = std::process::Command::new("kill")
        .args([which, pid])
        .status()
        .expect("kill");
    assert!(status.success(), "kill {which} {pid}");
}

/// A server can name a synchronous standby and still commit without waiting for one: a commit
/// waits only once the checkpointer has read the reloaded `synchronous_standby_names` into
/// shared memory, and a checkpointer busy with a checkpoint behind schedule (on a loaded
/// machine, after a promotion) reads it late. Stopping the checkpointer makes that state at
/// will: every session shows the standby's name, commits do not wait. With
/// `--database-require-synchronous-standby` the upload is then stored on the primary alone
/// and answered 503, since no standby has flushed it, where the setting alone would have let
/// it be acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_no_standby_has_is_not_acknowledged_though_the_server_names_one() {
    let (cluster, db, client) = durable_database().await;
    let lenient = Instance::start(
        &db,
        "http://127.0.0.1:9",
        &["--database-prepared-statements", "false"],
    );
    lenient.wait_ready(&client).await;
    let token = register(&client, &lenient.base, "payer").await;
    drop(lenient);
    let strict = Instance::start(
        &db,
        "http://127.0.0.1:9",
        &[
            "--database-prepared-statements",
            "false",
            "--database-require-synchronous-standby",
        ],
    );
    strict.wait_ready(&client).await;

    let checkpointer = StoppedCheckpointer::stop(&db).await;
    db.execute("ALTER SYSTEM SET synchronous_standby_names = 'ghost'")
        .await;
    db.execute("SELECT pg_reload_conf()").await;
    let number = domain::with_check_digit("7201");
    let started = Instant::now();
    let status = upload(&client, &strict.base, &token, &number).await;
    let took = started.elapsed();
    assert_eq!(
        status, 503,
        "an upload no standby has was acknowledged by a server that names one"
    );
    // It was committed without waiting for the standby: on the primary alone.
    assert_eq!(
        stored_orders(&db, &number).await,
        1,
        "the upload was not committed: the test did not make the state it is about"
    );
    assert!(
        took < Duration::from_secs(10),
        "the upload waited {took:?}: its commit waited for the standby"
    );
    drop(checkpointer);
    drop(strict);
    drop(db);
    cluster.stop();
}

/// `--database-require-synchronous-standby` reads the standbys' positions, which PostgreSQL
/// shows only to a superuser or a member of `pg_read_all_stats`: with a role that sees none,
/// every write would answer 503 for ever, so the service refuses to start and says what to
/// grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_option_needs_a_role_that_sees_the_standbys() {
    let db = TestDatabase::create().await;
    let role = format!("{}_plain", db.name());
    db.execute(&format!("CREATE ROLE {role} LOGIN")).await;
    db.execute(&format!("GRANT ALL ON SCHEMA public TO {role}"))
        .await;
    db.execute(&format!(
        "GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}"
    ))
    .await;
    db.execute(&format!(
        "GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {role}"
    ))
    .await;
    let mut url = url::Url::parse(db.url()).expect("the database URL");
    url.set_username(&role).expect("a user name");
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_gophermart"))
            .args([
                "-a",
                &format!("127.0.0.1:{}", support::free_port()),
                "-d",
                url.as_str(),
                "-r",
                "http://127.0.0.1:9",
                "--jwt-secret",
                "secret",
                "--database-require-synchronous-standby",
            ])
            .env("RUST_LOG", "error")
            .env_remove("LOG_FORMAT")
            .output()
            .expect("gophermart runs")
    })
    .await
    .expect("joined");
    let said = String::from_utf8_lossy(&output.stderr).into_owned()
        + &String::from_utf8_lossy(&output.stdout);
    assert!(
        !output.status.success(),
        "started with a role that cannot see the standbys: {said}"
    );
    assert!(
        said.contains("GRANT pg_monitor"),
        "the refusal does not say what to grant: {said}"
    );
    db.execute(&format!("DROP OWNED BY {role}")).await;
    db.execute(&format!("DROP ROLE {role}")).await;
}
