//! The connection pool and the store that implements the application's storage ports.

use std::{sync::Arc, time::Duration};

use application::RepositoryError;
use diesel_async::pooled_connection::{
    deadpool::{Object, Pool},
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};
use futures::FutureExt;

use crate::{
    availability::Availability,
    connection::{ConnectOptions, DbConnection, StatementMode},
    error::from_pool,
    listener::QueueSignal,
};

/// Longest wait, after a write, for a synchronous standby to have it; see
/// [`PgStore::requiring_synchronous_standby`].
pub const STANDBY_CONFIRMATION_WAIT: Duration = Duration::from_secs(1);

/// A pool of PostgreSQL connections.
pub type PgPool = Pool<DbConnection>;

/// How the pool is sized and how long a caller waits.
#[derive(Debug, Clone)]
pub struct PgPoolConfig {
    /// A `postgres://` connection URI.
    pub url: String,
    /// Most connections open at once.
    pub max_size: usize,
    /// Longest wait for a free connection before a request fails as unavailable.
    pub wait_timeout: Duration,
    /// Longest wait to open a new connection (shared between the URI's hosts).
    pub connect_timeout: Duration,
    /// Longest wait for one statement's answer; `None`: no limit. See
    /// [`ConnectOptions::statement_timeout`].
    pub statement_timeout: Option<Duration>,
    /// Named prepared statements (the default), or unnamed ones for a transaction pooler.
    pub statements: StatementMode,
    /// The runtime that opens every connection and so drives its I/O, whichever task borrows
    /// it; `None`: the runtime of whichever caller happens to open it.
    ///
    /// A connection's reads and writes are done by a task spawned on the runtime that opened
    /// it. An HTTP worker is a thread with a runtime of its own: left to open connections, each
    /// worker drives some of the pool's, and a worker whose thread does not run for a while
    /// stalls the requests of every other worker that borrow one of them. Give the service's
    /// main runtime here, so that HTTP workers only wait on their own thread.
    pub driver: Option<tokio::runtime::Handle>,
    /// Where the pool's connections report whether the database answers; give the same to
    /// [`PgStore::with_availability`].
    pub availability: Arc<Availability>,
}

impl PgPoolConfig {
    /// Defaults suited to a small machine: 16 connections, waits of 5 seconds (for a
    /// connection, to open one, for a statement), connections driven by whichever runtime
    /// opens them.
    #[must_use]
    pub fn new(url: impl Into<String>) -> Self {
        let url = url.into();
        Self {
            availability: Arc::new(Availability::new(&url)),
            url,
            max_size: 16,
            wait_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Some(Duration::from_secs(5)),
            statements: StatementMode::Prepared,
            driver: None,
        }
    }

    /// Builds the pool; connections are opened lazily.
    ///
    /// # Errors
    /// When the configuration is unusable.
    pub fn build(&self) -> Result<PgPool, RepositoryError> {
        // `Fast` recycling: a checkout costs no round trip. The default (`Verified`) runs
        // `SELECT 1` before every statement, which halves what PostgreSQL can serve. A dead
        // connection is still never handed out: deadpool discards any connection whose socket
        // has closed or whose transaction state is broken, and a connection that dies while
        // idle fails its next statement, whose caller is told the database is unavailable,
        // and is discarded then.
        let mut manager_config = ManagerConfig::default();
        manager_config.recycling_method = RecyclingMethod::Fast;
        let mode = self.statements;
        let options = ConnectOptions {
            connect_timeout: Some(self.connect_timeout),
            statement_timeout: self.statement_timeout,
            availability: Some(self.availability.clone()),
        };
        let driver = self.driver.clone();
        manager_config.custom_setup = Box::new(move |url| match &driver {
            None => DbConnection::open_with(url, mode, options.clone()).boxed(),
            Some(runtime) => {
                let (url, options) = (url.to_owned(), options.clone());
                let opening = runtime
                    .spawn(async move { DbConnection::open_with(&url, mode, options).await });
                async move {
                    opening.await.map_err(|e| {
                        diesel::ConnectionError::BadConnection(format!("opening a connection: {e}"))
                    })?
                }
                .boxed()
            }
        });
        let manager = AsyncDieselConnectionManager::<DbConnection>::new_with_config(
            self.url.clone(),
            manager_config,
        );
        Pool::builder(manager)
            .max_size(self.max_size)
            .wait_timeout(Some(self.wait_timeout))
            .create_timeout(Some(self.connect_timeout))
            .recycle_timeout(Some(self.connect_timeout))
            .runtime(deadpool::Runtime::Tokio1)
            .build()
            .map_err(|e| RepositoryError::Internal(Box::new(e)))
    }
}

/// How busy the pool is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStatus {
    pub max_size: usize,
    pub size: usize,
    pub available: usize,
    pub waiting: usize,
}

/// Gophermart's PostgreSQL storage. Cheap to clone; all clones share one pool.
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    pub(crate) signal: Arc<QueueSignal>,
    availability: Arc<Availability>,
    /// See [`PgStore::requiring_synchronous_standby`].
    require_synchronous_standby: bool,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("status", &self.status())
            .finish()
    }
}

impl PgStore {
    /// A store over a pool.
    #[must_use]
    pub fn new(pool: PgPool) -> Self {
        Self::with_availability(pool, Arc::new(Availability::new("")))
    }

    /// A store over a pool whose connections report to `availability` (the pool's
    /// [`PgPoolConfig::availability`]): refused requests are counted in the outage it tells
    /// of, and [`PgStore::primary`] names the server.
    #[must_use]
    pub fn with_availability(pool: PgPool, availability: Arc<Availability>) -> Self {
        Self {
            pool,
            signal: Arc::new(QueueSignal::default()),
            availability,
            require_synchronous_standby: false,
        }
    }

    /// With `require` set, an upload, a withdrawal or a registration is answered only once a
    /// synchronous standby has the write: asked on the same connection right after it, the
    /// server must still make commits wait for a standby (`synchronous_standby_names` not
    /// empty, `synchronous_commit` at `on`, `remote_write` or `remote_apply`), and one of its
    /// synchronous standbys (`pg_stat_replication`, `sync` or `quorum`) must have flushed the
    /// server's WAL up to where it was flushed locally then, which the write's commit is
    /// within. The standby's position is asked again every millisecond until it has, for at
    /// most [`STANDBY_CONFIRMATION_WAIT`]; otherwise the write fails as the database being
    /// unavailable (503: outcome unknown, repeat it).
    ///
    /// A primary that commits without a standby (pg_auto_failover's `wait_primary`, which
    /// empties `synchronous_standby_names` when the standby is judged unhealthy, and after
    /// every failover until the old primary is back as a standby) acknowledges writes that
    /// exist on it alone: if it then fails, or is demoted and rewound, they are gone. The
    /// setting alone does not tell: a commit waits only once the checkpointer has read the
    /// reloaded setting, and a checkpointer busy with a checkpoint behind schedule reads it
    /// late, so a server can show a standby's name and still commit without waiting for it.
    /// The standby's flush position tells what the standby has. This chooses durability over
    /// availability: writes are refused for as long as no synchronous standby keeps up (reads
    /// are served). It costs each write two round trips and, under concurrent writes, about one
    /// more flush of the standby's (the server's flush point includes the commits still
    /// waiting for it; `make durability-experiment`), and the database role must see the
    /// standbys' positions (`pg_read_all_stats`, as in `pg_monitor`; see
    /// [`PgStore::can_confirm_standbys`]).
    #[must_use]
    pub fn requiring_synchronous_standby(mut self, require: bool) -> Self {
        self.require_synchronous_standby = require;
        self
    }

    /// Whether the database role sees the standbys' positions in `pg_stat_replication`, which
    /// [`PgStore::requiring_synchronous_standby`] needs: a superuser or a member of
    /// `pg_read_all_stats` (as `pg_monitor` is) does.
    pub async fn can_confirm_standbys(&self) -> Result<bool, RepositoryError> {
        use diesel_async::RunQueryDsl;

        #[derive(diesel::QueryableByName)]
        struct Allowed {
            #[diesel(sql_type = diesel::sql_types::Bool)]
            allowed: bool,
        }

        let mut conn = self.conn().await?;
        let answer: Allowed = diesel::sql_query(
            "SELECT pg_has_role(current_user, 'pg_read_all_stats', 'USAGE') AS allowed",
        )
        .get_result(&mut conn)
        .await
        .map_err(crate::error::from_diesel)?;
        Ok(answer.allowed)
    }

    /// See [`PgStore::requiring_synchronous_standby`]: `Ok` when not required, or when a
    /// synchronous standby of the server behind `conn` has flushed what the server had
    /// flushed when asked, the write just made with it included.
    pub(crate) async fn confirm_synchronous_standby(
        &self,
        conn: &mut DbConnection,
    ) -> Result<(), RepositoryError> {
        use diesel::sql_types::{Bool, Text};
        use diesel_async::RunQueryDsl;

        #[derive(diesel::QueryableByName)]
        struct Synchronous {
            #[diesel(sql_type = Bool)]
            synchronous: bool,
            #[diesel(sql_type = Text)]
            flushed_here: String,
        }

        #[derive(diesel::QueryableByName)]
        struct OnStandby {
            #[diesel(sql_type = Bool)]
            on_standby: bool,
        }

        if !self.require_synchronous_standby {
            return Ok(());
        }
        let here: Synchronous = diesel::sql_query(
            "SELECT current_setting('synchronous_standby_names') <> '' \
             AND current_setting('synchronous_commit') IN ('on', 'remote_write', 'remote_apply') \
             AS synchronous, pg_current_wal_flush_lsn()::text AS flushed_here",
        )
        .get_result(conn)
        .await
        .map_err(crate::error::from_diesel)?;
        if !here.synchronous {
            return Err(RepositoryError::Unavailable(
                "the primary commits without a synchronous standby: the write's durability is \
                 not confirmed"
                    .into(),
            ));
        }
        let deadline = tokio::time::Instant::now() + STANDBY_CONFIRMATION_WAIT;
        loop {
            let answer: OnStandby = diesel::sql_query(
                "SELECT EXISTS (SELECT FROM pg_stat_replication \
                 WHERE sync_state IN ('sync', 'quorum') AND flush_lsn >= $1::pg_lsn) AS on_standby",
            )
            .bind::<Text, _>(&here.flushed_here)
            .get_result(conn)
            .await
            .map_err(crate::error::from_diesel)?;
            if answer.on_standby {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(RepositoryError::Unavailable(
                    format!(
                        "no synchronous standby has flushed the write (WAL to {}) within {} ms: \
                         its durability is not confirmed",
                        here.flushed_here,
                        STANDBY_CONFIRMATION_WAIT.as_millis()
                    )
                    .into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// The database server the last connection opened reached (`address:port`): with several
    /// hosts in the URI and `target_session_attrs=read-write`, the primary.
    #[must_use]
    pub fn primary(&self) -> Option<String> {
        self.availability.primary()
    }

    /// Whether the database answers, as far as the pool's last connections and statements
    /// tell (see [`Availability`]).
    #[must_use]
    pub fn database_reachable(&self) -> bool {
        !self.availability.is_down()
    }

    /// A pooled connection, or [`RepositoryError::Unavailable`] when none comes in time.
    pub(crate) async fn conn(&self) -> Result<Object<DbConnection>, RepositoryError> {
        use deadpool::managed::TimeoutType;
        use diesel_async::pooled_connection::deadpool::PoolError;
        self.pool.get().await.map_err(|error| {
            match &error {
                // A connection that could not be opened has told the availability why.
                PoolError::Backend(_) => {}
                // Opening one took too long: the server does not answer.
                PoolError::Timeout(TimeoutType::Create) => self
                    .availability
                    .unreachable("no connection could be opened in time"),
                _ => self.availability.refused(),
            }
            from_pool(error)
        })
    }

    /// Whether the database answers a trivial query.
    ///
    /// # Errors
    /// [`RepositoryError`] when it does not.
    pub async fn ping(&self) -> Result<(), RepositoryError> {
        use diesel_async::RunQueryDsl;
        let mut conn = self.conn().await?;
        diesel::sql_query("SELECT 1")
            .execute(&mut conn)
            .await
            .map(|_| ())
            .map_err(crate::error::from_diesel)
    }

    /// The pool's current occupation.
    #[must_use]
    pub fn status(&self) -> PoolStatus {
        let status = self.pool.status();
        PoolStatus {
            max_size: status.max_size,
            size: status.size,
            available: status.available,
            waiting: status.waiting,
        }
    }
}
