//! The schema's migrations, embedded in the binary and applied on start.

use diesel::Connection;
use diesel_async::{async_connection_wrapper::AsyncConnectionWrapper, AsyncPgConnection};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

use crate::connection::{DbConnection, StatementMode};

/// The migrations in the repository's top-level `migrations/` folder.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations");

/// An arbitrary constant that names the advisory lock serialising migrations across instances.
const MIGRATION_LOCK_KEY: i64 = 0x676f_7068_6572_6d61; // "gopherma"

/// Why migrations could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error("could not connect to the database")]
    Connect(#[source] diesel::ConnectionError),
    #[error("could not apply the migrations")]
    Apply(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("a database error")]
    Database(#[from] diesel::result::Error),
    #[error("the migration task failed")]
    Task(#[source] tokio::task::JoinError),
}

/// Applies every pending migration over named prepared statements; see [`run_migrations_in`].
///
/// # Errors
/// [`MigrationError`] when the database cannot be reached or a migration fails.
pub async fn run_migrations(url: &str) -> Result<Vec<String>, MigrationError> {
    run_migrations_in(url, StatementMode::Prepared).await
}

/// Applies every pending migration. Several instances starting at once are safe: they take a
/// PostgreSQL advisory lock in turn, and the later ones find nothing to do.
///
/// With [`StatementMode::Unnamed`] (through a transaction pooler) the pending migrations are
/// applied in one transaction that holds a transaction-scoped advisory lock, over a connection
/// that sends every statement unnamed, so nothing depends on keeping one server connection
/// between transactions. Otherwise each migration is its own transaction under a session lock.
///
/// # Errors
/// [`MigrationError`] when the database cannot be reached or a migration fails.
pub async fn run_migrations_in(
    url: &str,
    mode: StatementMode,
) -> Result<Vec<String>, MigrationError> {
    if mode == StatementMode::Unnamed {
        return run_in_one_transaction(url).await;
    }
    let url = url.to_owned();
    tokio::task::spawn_blocking(move || {
        use diesel::RunQueryDsl;
        let mut conn = AsyncConnectionWrapper::<AsyncPgConnection>::establish(&url)
            .map_err(MigrationError::Connect)?;
        diesel::sql_query(format!("SELECT pg_advisory_lock({MIGRATION_LOCK_KEY})"))
            .execute(&mut conn)
            .map_err(|e| MigrationError::Apply(Box::new(e)))?;
        let applied = conn
            .run_pending_migrations(MIGRATIONS)
            .map(|versions| versions.iter().map(ToString::to_string).collect())
            .map_err(MigrationError::Apply);
        let unlocked =
            diesel::sql_query(format!("SELECT pg_advisory_unlock({MIGRATION_LOCK_KEY})"))
                .execute(&mut conn)
                .map_err(|e| MigrationError::Apply(Box::new(e)));
        let applied = applied?;
        unlocked?;
        Ok(applied)
    })
    .await
    .map_err(MigrationError::Task)?
}

async fn run_in_one_transaction(url: &str) -> Result<Vec<String>, MigrationError> {
    let conn = DbConnection::open(url, StatementMode::Unnamed)
        .await
        .map_err(MigrationError::Connect)?;
    tokio::task::spawn_blocking(move || {
        use diesel::RunQueryDsl;
        let mut conn = AsyncConnectionWrapper::<DbConnection>::from(conn);
        conn.transaction(|conn| {
            diesel::sql_query(format!(
                "SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})"
            ))
            .execute(conn)
            .map_err(|e| MigrationError::Apply(Box::new(e)))?;
            conn.run_pending_migrations(MIGRATIONS)
                .map(|versions| versions.iter().map(ToString::to_string).collect())
                .map_err(MigrationError::Apply)
        })
    })
    .await
    .map_err(MigrationError::Task)?
}

/// Whether every embedded migration has been applied, asked over a pooled connection.
///
/// # Errors
/// [`application::RepositoryError`] when the database cannot be asked.
pub async fn pending_migrations(
    store: &crate::PgStore,
) -> Result<usize, application::RepositoryError> {
    use diesel::migration::MigrationSource;
    use diesel::{sql_types::Text, QueryableByName};
    use diesel_async::RunQueryDsl;

    #[derive(QueryableByName)]
    struct Version {
        #[diesel(sql_type = Text)]
        version: String,
    }

    let known: Vec<String> = MigrationSource::<diesel::pg::Pg>::migrations(&MIGRATIONS)
        .map_err(application::RepositoryError::Internal)?
        .iter()
        .map(|m| m.name().version().to_string())
        .collect();
    let mut conn = store.conn().await?;
    let applied: Vec<Version> = diesel::sql_query("SELECT version FROM __diesel_schema_migrations")
        .load(&mut conn)
        .await
        .map_err(crate::error::from_diesel)?;
    Ok(known
        .iter()
        .filter(|v| !applied.iter().any(|a| &a.version == *v))
        .count())
}
