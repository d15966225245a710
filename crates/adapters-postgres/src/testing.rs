//! Throwaway databases for tests: each test gets its own database, copied from a migrated
//! template, and drops it when done.
//!
//! The server is the one `DATABASE_URI` points at (`make test` starts a throwaway cluster and
//! sets it). The template is named after a hash of the migration files, so editing a migration
//! makes a new template.

use std::{
    hash::{DefaultHasher, Hash, Hasher},
    path::Path,
};

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use url::Url;

use crate::{run_migrations, PgPoolConfig, PgStore};

const TEMPLATE_LOCK_KEY: i64 = 0x7465_6d70_6c61_7465; // "template"

/// A database that exists for the lifetime of this value.
#[derive(Debug)]
pub struct TestDatabase {
    name: String,
    url: String,
    admin_url: String,
}

fn admin_url() -> String {
    std::env::var("DATABASE_URI").expect(
        "DATABASE_URI must point at a PostgreSQL server for database tests; `make test` sets it",
    )
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
    /// When `DATABASE_URI` is unset or the server refuses; this is test code.
    pub async fn create() -> Self {
        let admin_url = admin_url();
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

/// What the ledger looks like, checked against the rules that must hold whatever happened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LedgerAudit {
    /// Orders stored.
    pub orders: i64,
    /// Orders not in a final status.
    pub unfinished_orders: i64,
    /// Queue entries left.
    pub queue_entries: i64,
    /// Withdrawals stored.
    pub withdrawals: i64,
    /// Accounts whose `balance + withdrawn` differs from the accruals of their processed
    /// orders, with both sides.
    pub unbalanced_accounts: Vec<(i64, String, String)>,
    /// Accounts whose `withdrawn` differs from the sum of their withdrawals.
    pub withdrawn_mismatches: Vec<i64>,
    /// Accounts with a negative balance.
    pub negative_balances: i64,
}

impl LedgerAudit {
    /// Reads the audit from a database.
    ///
    /// # Panics
    /// When the database cannot be read; this is test code.
    pub async fn read(url: &str) -> Self {
        #[derive(diesel::QueryableByName)]
        struct Unbalanced {
            #[diesel(sql_type = diesel::sql_types::Int8)]
            user_id: i64,
            #[diesel(sql_type = diesel::sql_types::Text)]
            held: String,
            #[diesel(sql_type = diesel::sql_types::Text)]
            earned: String,
        }
        #[derive(diesel::QueryableByName)]
        struct User {
            #[diesel(sql_type = diesel::sql_types::Int8)]
            user_id: i64,
        }
        let mut conn = AsyncPgConnection::establish(url).await.expect("connect");
        let orders = count(&mut conn, "SELECT count(*) AS count FROM orders").await;
        let unfinished_orders = count(
            &mut conn,
            "SELECT count(*) AS count FROM orders WHERE status NOT IN ('PROCESSED', 'INVALID')",
        )
        .await;
        let queue_entries = count(&mut conn, "SELECT count(*) AS count FROM accrual_queue").await;
        let withdrawals = count(&mut conn, "SELECT count(*) AS count FROM withdrawals").await;
        let negative_balances = count(
            &mut conn,
            "SELECT count(*) AS count FROM accounts WHERE balance < 0",
        )
        .await;
        let unbalanced: Vec<Unbalanced> = diesel::sql_query(
            "SELECT a.user_id, (a.balance + a.withdrawn)::text AS held,
                    COALESCE(sum(o.accrual) FILTER (WHERE o.status = 'PROCESSED'), 0)::text AS earned
             FROM accounts a LEFT JOIN orders o ON o.user_id = a.user_id
             GROUP BY a.user_id, a.balance, a.withdrawn
             HAVING a.balance + a.withdrawn
                 <> COALESCE(sum(o.accrual) FILTER (WHERE o.status = 'PROCESSED'), 0)",
        )
        .load(&mut conn)
        .await
        .expect("unbalanced");
        let withdrawn: Vec<User> = diesel::sql_query(
            "SELECT a.user_id FROM accounts a LEFT JOIN withdrawals w ON w.user_id = a.user_id
             GROUP BY a.user_id, a.withdrawn
             HAVING a.withdrawn <> COALESCE(sum(w.sum), 0)",
        )
        .load(&mut conn)
        .await
        .expect("withdrawn");
        Self {
            orders,
            unfinished_orders,
            queue_entries,
            withdrawals,
            unbalanced_accounts: unbalanced
                .into_iter()
                .map(|u| (u.user_id, u.held, u.earned))
                .collect(),
            withdrawn_mismatches: withdrawn.into_iter().map(|u| u.user_id).collect(),
            negative_balances,
        }
    }

    /// Whether every rule holds and nothing is left to do.
    #[must_use]
    pub fn is_clean(&self) -> bool {
        self.unfinished_orders == 0
            && self.queue_entries == 0
            && self.unbalanced_accounts.is_empty()
            && self.withdrawn_mismatches.is_empty()
            && self.negative_balances == 0
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

async fn count(conn: &mut AsyncPgConnection, sql: &'static str) -> i64 {
    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::Int8)]
        count: i64,
    }
    let rows: Vec<Count> = diesel::sql_query(sql).load(conn).await.expect(sql);
    rows.into_iter().next().map_or(0, |c| c.count)
}
