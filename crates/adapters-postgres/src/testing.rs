//! Throwaway databases for tests: each test gets its own database, copied from a migrated
//! template, and drops it when done.
//!
//! The server is the one `DATABASE_URI` points at (`make test` starts a throwaway cluster and
//! sets it). When `DATABASE_URI` is unset, the first test that needs a database starts one
//! throwaway cluster for the whole test process with `scripts/with-postgres.sh` (see
//! [`ScriptedCluster`]), and the cluster goes away when the process ends, however it ends.
//! The template is named after a hash of the migration files, so editing a migration makes a
//! new template.

use std::{
    hash::{DefaultHasher, Hash, Hasher},
    io::{BufRead, BufReader},
    os::unix::process::CommandExt,
    path::Path,
    process::{Child, ChildStdout, Command, ExitStatus, Stdio},
    sync::OnceLock,
};

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use url::Url;

use crate::{run_migrations, PgPoolConfig, PgStore};

pub use crate::audit::LedgerAudit;

const TEMPLATE_LOCK_KEY: i64 = 0x7465_6d70_6c61_7465; // "template"

/// A database that exists for the lifetime of this value.
#[derive(Debug)]
pub struct TestDatabase {
    name: String,
    url: String,
    admin_url: String,
}

/// A PostgreSQL cluster started by `scripts/with-postgres.sh`, which stays up while this value
/// lives.
///
/// The script runs, in a process group of its own, a command that prints `DATABASE_URI` and
/// then waits for its standard input to close. Only this process holds the other end of that
/// pipe, and the kernel closes it when the process ends, whether the tests pass, a test
/// panics, the run is interrupted with SIGINT or SIGTERM, or the process is SIGKILLed. The
/// script then stops the server and (unless the cluster is kept) deletes its folder. The
/// script ignores SIGINT and SIGPIPE, so that Ctrl-C or a closed terminal cannot stop it
/// before it has cleaned up.
#[derive(Debug)]
pub struct ScriptedCluster {
    uri: String,
    child: Child,
    _stdout: BufReader<ChildStdout>,
}

const WAIT_FOR_STDIN_TO_CLOSE: &str = r#"printf '%s\n' "$DATABASE_URI"; exec cat >/dev/null"#;

impl ScriptedCluster {
    /// Starts a cluster: a throwaway one (in `$TMPDIR`, fast and unsafe settings), or one whose
    /// data is kept in `keep_dir` (PostgreSQL's durable defaults), as `make run` does.
    ///
    /// # Panics
    /// When the cluster cannot be started, for instance because the PostgreSQL server
    /// binaries are missing; this is test code.
    #[must_use]
    pub fn start(keep_dir: Option<&Path>) -> Self {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/with-postgres.sh");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port for PostgreSQL");
        let mut command = Command::new("bash");
        command
            .arg("-c")
            .arg(r#"trap '' INT PIPE HUP; exec "$0" "$@""#)
            .arg(&script);
        if let Some(dir) = keep_dir {
            command.arg("--keep-dir").arg(dir);
        }
        let mut child = command
            .args(["sh", "-c", WAIT_FOR_STDIN_TO_CLOSE])
            .env_remove("DATABASE_URI")
            .env("PGPORT_THROWAWAY", port.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|error| panic!("cannot run {}: {error}", script.display()));
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut uri = String::new();
        let read = stdout.read_line(&mut uri);
        let uri = uri.trim().to_owned();
        if read.is_err() || uri.is_empty() {
            let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
            panic!(
                "could not start a throwaway PostgreSQL cluster (scripts/with-postgres.sh: {status}; \
                 its messages are above). Install the PostgreSQL server binaries (Debian's \
                 `postgresql` package; they are looked for on PATH and in /usr/lib/postgresql/*/bin) \
                 or set DATABASE_URI to a server the tests may create databases on"
            );
        }
        Self {
            uri,
            child,
            _stdout: stdout,
        }
    }

    /// The cluster's `postgres` database, as a connection URI.
    #[must_use]
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// Stops the cluster and waits until the script has stopped the server and, unless it is
    /// kept, deleted its folder.
    ///
    /// # Panics
    /// When the script cannot be waited for.
    pub fn stop(mut self) -> ExitStatus {
        self.stop_and_wait()
    }

    fn stop_and_wait(&mut self) -> ExitStatus {
        drop(self.child.stdin.take());
        self.child
            .wait()
            .expect("wait for scripts/with-postgres.sh")
    }
}

impl Drop for ScriptedCluster {
    fn drop(&mut self) {
        self.stop_and_wait();
    }
}

/// The cluster this test process shares when `DATABASE_URI` is unset. A static is never
/// dropped: the cluster ends with the process, when the kernel closes the script's stdin.
static PROCESS_CLUSTER: OnceLock<ScriptedCluster> = OnceLock::new();

fn admin_url() -> String {
    match std::env::var("DATABASE_URI") {
        Ok(uri) if !uri.is_empty() => uri,
        _ => PROCESS_CLUSTER
            .get_or_init(|| ScriptedCluster::start(None))
            .uri()
            .to_owned(),
    }
}

fn with_database(url: &str, name: &str) -> String {
    let mut url = Url::parse(url).expect("DATABASE_URI must be a postgres:// URL");
    url.set_path(&format!("/{name}"));
    url.to_string()
}

fn migrations_hash() -> u64 {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../migrations");
    let mut files: Vec<_> = walk(&dir);
    files.sort();
    let mut hasher = DefaultHasher::new();
    for file in files {
        file.strip_prefix(&dir).ok().hash(&mut hasher);
        std::fs::read(&file)
            .expect("readable migration")
            .hash(&mut hasher);
    }
    hasher.finish()
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("migrations folder").flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

async fn execute(conn: &mut AsyncPgConnection, sql: &str) -> Result<usize, diesel::result::Error> {
    diesel::sql_query(sql).execute(conn).await
}

async fn database_exists(conn: &mut AsyncPgConnection, name: &str) -> bool {
    #[derive(diesel::QueryableByName)]
    struct Found {
        #[diesel(sql_type = diesel::sql_types::Int4)]
        #[allow(dead_code)]
        found: i32,
    }
    diesel::sql_query("SELECT 1 AS found FROM pg_database WHERE datname = $1")
        .bind::<diesel::sql_types::Text, _>(name)
        .load::<Found>(conn)
        .await
        .expect("query pg_database")
        .len()
        == 1
}

async fn ensure_template(admin: &mut AsyncPgConnection, admin_url: &str) -> String {
    let template = format!("gophermart_template_{:016x}", migrations_hash());
    execute(
        admin,
        &format!("SELECT pg_advisory_lock({TEMPLATE_LOCK_KEY})"),
    )
    .await
    .expect("take the template lock");
    if !database_exists(admin, &template).await {
        let building = format!("{template}_building");
        execute(
            admin,
            &format!("DROP DATABASE IF EXISTS {building} WITH (FORCE)"),
        )
        .await
        .expect("drop a half-built template");
        execute(admin, &format!("CREATE DATABASE {building}"))
            .await
            .expect("create the template");
        run_migrations(&with_database(admin_url, &building))
            .await
            .expect("migrate the template");
        execute(
            admin,
            &format!("ALTER DATABASE {building} RENAME TO {template}"),
        )
        .await
        .expect("publish the template");
    }
    execute(
        admin,
        &format!("SELECT pg_advisory_unlock({TEMPLATE_LOCK_KEY})"),
    )
    .await
    .expect("release the template lock");
    template
}

impl TestDatabase {
    /// Creates a fresh, migrated database.
    ///
    /// # Panics
    /// When no server can be had (see the module's documentation) or the server refuses;
    /// this is test code.
    pub async fn create() -> Self {
        Self::create_on(&admin_url()).await
    }

    /// Creates a fresh, migrated database on the server of `admin_url` (a database a
    /// superuser may connect to), for a test that runs a cluster of its own.
    ///
    /// # Panics
    /// When the server refuses; this is test code.
    pub async fn create_on(admin_url: &str) -> Self {
        let admin_url = admin_url.to_owned();
        let mut admin = AsyncPgConnection::establish(&admin_url)
            .await
            .expect("connect to DATABASE_URI");
        let template = ensure_template(&mut admin, &admin_url).await;
        let name = format!("gophermart_test_{}", uuid::Uuid::new_v4().simple());
        let mut attempts = 0;
        loop {
            match execute(
                &mut admin,
                &format!("CREATE DATABASE {name} TEMPLATE {template}"),
            )
            .await
            {
                Ok(_) => break,
                // Another session may be copying or inspecting the template at this moment.
                Err(error) if attempts < 50 => {
                    attempts += 1;
                    tracing::debug!(%error, "template busy; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(20 * attempts)).await;
                }
                Err(error) => panic!("create test database: {error}"),
            }
        }
        Self {
            url: with_database(&admin_url, &name),
            name,
            admin_url,
        }
    }

    /// The database's connection URI.
    #[must_use]
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The database's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A store over a small pool on this database.
    ///
    /// # Panics
    /// When the pool cannot be built.
    #[must_use]
    pub fn store(&self) -> PgStore {
        let mut config = PgPoolConfig::new(self.url.clone());
        config.max_size = 8;
        PgStore::new(config.build().expect("pool"))
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let mut admin = AsyncPgConnection::establish(&admin_url).await?;
                diesel::sql_query(sql).execute(&mut admin).await?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
            })
        })
        .join();
        if let Ok(Err(error)) = dropped {
            eprintln!("could not drop test database {}: {error}", self.name);
        }
    }
}

/// A transaction left running, for tests of what happens meanwhile.
pub struct RunningTransaction {
    conn: AsyncPgConnection,
}

impl std::fmt::Debug for RunningTransaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningTransaction").finish_non_exhaustive()
    }
}

impl RunningTransaction {
    /// Commits it.
    ///
    /// # Panics
    /// When the commit fails; this is test code.
    pub async fn commit(mut self) {
        diesel_async::SimpleAsyncConnection::batch_execute(&mut self.conn, "COMMIT")
            .await
            .expect("commit");
    }
}

impl TestDatabase {
    /// Begins a transaction on this database that runs `sql` and stays open until committed
    /// (rolled back when dropped).
    ///
    /// # Panics
    /// When the statements fail; this is test code.
    pub async fn begin(&self, sql: &str) -> RunningTransaction {
        RunningTransaction {
            conn: self.connected_after(&format!("BEGIN; {sql}")).await,
        }
    }

    /// Runs SQL statements on this database, for tests that set up (or break) data on purpose.
    ///
    /// # Panics
    /// When the statements fail; this is test code.
    pub async fn execute(&self, sql: &str) {
        self.connected_after(sql).await;
    }

    /// A new connection to this database, once it has run `sql`.
    async fn connected_after(&self, sql: &str) -> AsyncPgConnection {
        let mut conn = AsyncPgConnection::establish(&self.url)
            .await
            .expect("connect");
        diesel_async::SimpleAsyncConnection::batch_execute(&mut conn, sql)
            .await
            .unwrap_or_else(|error| panic!("{sql}: {error}"));
        conn
    }
}

/// The ledger audit, for tests.
impl LedgerAudit {
    /// Reads the audit from a database.
    ///
    /// # Panics
    /// When the database cannot be read; this is test code.
    pub async fn read(url: &str) -> Self {
        Self::run(url).await.expect("ledger audit")
    }

    /// Whether every invariant holds and nothing is left to do: no order waits for the
    /// accrual system. Stricter than [`LedgerAudit::holds`], which a running service's
    /// in-flight orders do not break.
    #[must_use]
    pub fn is_clean(&self) -> bool {
        self.holds() && self.unfinished_orders == 0 && self.queue_entries == 0
    }

    /// The numbers of all orders and withdrawals, to compare with what clients were told.
    ///
    /// # Panics
    /// When the database cannot be read; this is test code.
    pub async fn numbers(url: &str) -> (Vec<String>, Vec<String>) {
        #[derive(diesel::QueryableByName)]
        struct Number {
            #[diesel(sql_type = diesel::sql_types::Text)]
            number: String,
        }
        let mut conn = AsyncPgConnection::establish(url).await.expect("connect");
        let orders: Vec<Number> = diesel::sql_query("SELECT number FROM orders ORDER BY number")
            .load(&mut conn)
            .await
            .expect("orders");
        let withdrawals: Vec<Number> = diesel::sql_query(
            "SELECT order_number AS number FROM withdrawals ORDER BY order_number",
        )
        .load(&mut conn)
        .await
        .expect("withdrawals");
        (
            orders.into_iter().map(|n| n.number).collect(),
            withdrawals.into_iter().map(|n| n.number).collect(),
        )
    }
}

/// The event log against the ledger, for tests that check that every change was recorded once.
impl LedgerAudit {
    /// What in the event log disagrees with the ledger: per customer, the balance events in
    /// the order of the account's versions (the order the changes committed in) must step from zero through each withdrawal once (withdrawn up by its sum,
    /// current down by as much) and credits (current up, withdrawn unchanged) whose sum is
    /// what the processed orders earned, and end at the account's balance; each order must have
    /// one event when uploaded and one with its final status and accrual, nothing after it.
    /// Only meaningful while nothing was pruned.
    ///
    /// # Panics
    /// When the database cannot be read; this is test code.
    pub async fn event_log_violations(url: &str) -> Vec<String> {
        use diesel::sql_types::{Int8, Nullable, Numeric, Text};
        use rust_decimal::Decimal;
        use std::collections::BTreeMap;

        #[derive(diesel::QueryableByName)]
        struct BalanceEvent {
            #[diesel(sql_type = Int8)]
            user_id: i64,
            #[diesel(sql_type = Numeric)]
            balance: Decimal,
            #[diesel(sql_type = Numeric)]
            withdrawn: Decimal,
        }
        #[derive(diesel::QueryableByName)]
        struct OrderEvent {
            #[diesel(sql_type = Text)]
            order_number: String,
            #[diesel(sql_type = Text)]
            status: String,
            #[diesel(sql_type = Nullable<Numeric>)]
            accrual: Option<Decimal>,
        }
        #[derive(diesel::QueryableByName)]
        struct Amount {
            #[diesel(sql_type = Int8)]
            user_id: i64,
            #[diesel(sql_type = Text)]
            key: String,
            #[diesel(sql_type = Nullable<Numeric>)]
            amount: Option<Decimal>,
        }
        let mut conn = AsyncPgConnection::establish(url).await.expect("connect");
        let balances: Vec<BalanceEvent> = diesel::sql_query(
            "SELECT user_id, balance, withdrawn FROM events WHERE balance IS NOT NULL \
             ORDER BY user_id, version",
        )
        .load(&mut conn)
        .await
        .expect("balance events");
        let order_events: Vec<OrderEvent> = diesel::sql_query(
            "SELECT order_number, status::text AS status, accrual FROM events \
             WHERE order_number IS NOT NULL ORDER BY tx, id",
        )
        .load(&mut conn)
        .await
        .expect("order events");
        let withdrawals: Vec<Amount> = diesel::sql_query(
            "SELECT user_id, order_number AS key, sum AS amount FROM withdrawals",
        )
        .load(&mut conn)
        .await
        .expect("withdrawals");
        let orders: Vec<Amount> = diesel::sql_query(
            "SELECT user_id, number || ' ' || status::text AS key, accrual AS amount FROM orders",
        )
        .load(&mut conn)
        .await
        .expect("orders");
        let accounts: Vec<BalanceEvent> =
            diesel::sql_query("SELECT user_id, balance, withdrawn FROM accounts")
                .load(&mut conn)
                .await
                .expect("accounts");

        let mut violations = Vec::new();
        // Per customer: the balance after the last event, the withdrawals' sums seen, credits.
        let mut seen: BTreeMap<i64, (Decimal, Decimal, Vec<Decimal>, Decimal)> = BTreeMap::new();
        for event in &balances {
            let (current, withdrawn, sums, credited) = seen.entry(event.user_id).or_default();
            let spent = event.withdrawn - *withdrawn;
            let gained = event.balance - *current;
            if spent > Decimal::ZERO && gained == -spent {
                sums.push(spent);
            } else if spent == Decimal::ZERO && gained > Decimal::ZERO {
                *credited += gained;
            } else {
                violations.push(format!(
                    "user {}: a balance event from ({current}, {withdrawn}) to ({}, {}) is neither one withdrawal nor a credit",
                    event.user_id, event.balance, event.withdrawn
                ));
            }
            (*current, *withdrawn) = (event.balance, event.withdrawn);
        }
        let mut expected_sums: BTreeMap<i64, Vec<Decimal>> = BTreeMap::new();
        for withdrawal in &withdrawals {
            expected_sums
                .entry(withdrawal.user_id)
                .or_default()
                .push(withdrawal.amount.unwrap_or_default());
        }
        let mut earned: BTreeMap<i64, Decimal> = BTreeMap::new();
        let mut final_orders = BTreeMap::new();
        for order in &orders {
            *earned.entry(order.user_id).or_default() += order.amount.unwrap_or_default();
            let (number, status) = order.key.split_once(' ').expect("number and status");
            final_orders.insert(number.to_owned(), (status.to_owned(), order.amount));
        }
        for account in &accounts {
            let user = account.user_id;
            let (current, withdrawn, mut sums, credited) = seen.remove(&user).unwrap_or_default();
            let mut expected = expected_sums.remove(&user).unwrap_or_default();
            sums.sort();
            expected.sort();
            if sums != expected {
                violations.push(format!(
                    "user {user}: withdrawals in the log {sums:?}, in the ledger {expected:?}"
                ));
            }
            let earned = earned.get(&user).copied().unwrap_or_default();
            if credited != earned {
                violations.push(format!(
                    "user {user}: credits in the log {credited}, earned {earned}"
                ));
            }
            if (current, withdrawn) != (account.balance, account.withdrawn) {
                violations.push(format!(
                    "user {user}: the log ends at ({current}, {withdrawn}), the account holds ({}, {})",
                    account.balance, account.withdrawn
                ));
            }
        }
        // Orders: uploaded once, final once, nothing after the final status.
        let mut history: BTreeMap<&str, Vec<(&str, Option<Decimal>)>> = BTreeMap::new();
        for event in &order_events {
            history
                .entry(event.order_number.as_str())
                .or_default()
                .push((event.status.as_str(), event.accrual));
        }
        for (number, (status, accrual)) in &final_orders {
            let events = history.remove(number.as_str()).unwrap_or_default();
            let uploads = events.iter().filter(|(s, _)| *s == "NEW").count();
            if <[_]>::first(&events).map(|(s, _)| *s) != Some("NEW") || uploads != 1 {
                violations.push(format!(
                    "order {number}: events {events:?}, not one upload first"
                ));
            }
            if status == "PROCESSED" || status == "INVALID" {
                let finals = events.iter().filter(|(s, _)| s == status).count();
                if finals != 1 || events.last() != Some(&(status.as_str(), *accrual)) {
                    violations.push(format!(
                        "order {number}: events {events:?}, final {status} {accrual:?} not once and last"
                    ));
                }
            }
        }
        for (number, events) in history {
            violations.push(format!(
                "events {events:?} of order {number}, which does not exist"
            ));
        }
        violations
    }
}
