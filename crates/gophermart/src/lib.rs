//! Gophermart's wiring: configuration in, a running service out. Builds the adapters, hands
//! them to the HTTP server and the accrual worker, and stops both cleanly.

pub mod audit;
pub mod config;
mod operations;
pub mod telemetry;

use std::{net::TcpListener, num::NonZeroU32, sync::Arc, time::Duration};

use actix_web::dev::{Server, ServerHandle};
use adapters_accrual::{normalize_base_url, AccrualClientConfig, HttpAccrualClient};
use adapters_crypto::{BcryptHasher, JwtTokens};
use adapters_http::{
    client_address::ClientAddressConfig, http_server, AppState, Metrics, Operations, ServerConfig,
};
use adapters_postgres::{
    listen_for_notifications, run_migrations_in, PgClusterGate, PgPoolConfig, PgStore,
    StatementMode, Wakes,
};
use anyhow::Context;
use application::{
    ports::clock::SystemClock,
    use_cases::{
        CustomerRequestLimit, EventStreams, EventStreamsConfig, LoginThrottle, Registrations,
        ThrottleConfig,
    },
    worker::{AccrualWorker, RateGate, WorkerConfig},
};
use secrecy::ExposeSecret;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use config::Config;

/// A built, not yet running, service.
pub struct Application {
    server: Server,
    port: u16,
    events: Arc<EventStreams>,
    stop: CancellationToken,
    background: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

/// Stops a running [`Application`] from elsewhere (a signal handler, a test).
#[derive(Debug, Clone)]
pub struct StopHandle {
    server: ServerHandle,
    events: Arc<EventStreams>,
}

impl StopHandle {
    /// Ends the event streams (their clients reconnect elsewhere), stops accepting
    /// connections, lets in-flight requests finish, then stops the worker.
    pub async fn stop(&self) {
        self.events.stop_streams();
        self.server.stop(true).await;
    }
}

impl Application {
    /// Connects to the database, applies migrations, binds the listen addresses, and prepares
    /// the HTTP server and the accrual worker.
    ///
    /// # Errors
    /// When the database cannot be migrated, an address cannot be bound, or a setting is unusable.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        if config.accrual_lease_ms <= config.accrual_request_timeout_ms {
            anyhow::bail!(
                "ACCRUAL_LEASE_MS ({}) must exceed ACCRUAL_REQUEST_TIMEOUT_MS ({}): a lease that ends during a request lets another worker ask about the same order",
                config.accrual_lease_ms,
                config.accrual_request_timeout_ms
            );
        }
        let database_url = config.database_uri.expose_secret().to_owned();
        let statements = if config.database_prepared_statements {
            StatementMode::Prepared
        } else {
            StatementMode::Unnamed
        };
        let listen_url = match (&config.database_listen_uri, statements) {
            (Some(uri), _) => Some(uri.expose_secret().to_owned()),
            (None, StatementMode::Prepared) => Some(database_url.clone()),
            (None, StatementMode::Unnamed) => None,
        };
        let wakeups = if listen_url.is_some() {
            operations::Wakeups::Listen
        } else {
            tracing::info!(
                poll_interval_ms = config.accrual_poll_interval_ms,
                "no LISTEN connection (DATABASE_PREPARED_STATEMENTS=false and no DATABASE_LISTEN_URI): the accrual worker polls for orders queued by other instances"
            );
            operations::Wakeups::Poll
        };
        let applied = run_migrations_in(&database_url, statements)
            .await
            .context("applying database migrations")?;
        if !applied.is_empty() {
            tracing::info!(?applied, "database migrated");
        }
        let mut pool = PgPoolConfig::new(database_url.clone());
        pool.max_size = config.database_pool_size;
        pool.wait_timeout = Duration::from_millis(config.database_timeout_ms);
        pool.connect_timeout = Duration::from_millis(config.database_timeout_ms);
        pool.statement_timeout = (config.database_statement_timeout_ms > 0)
            .then(|| Duration::from_millis(config.database_statement_timeout_ms));
        pool.statements = statements;
        // Connections are opened, and their I/O driven, on this (the main) runtime, not on
        // the HTTP worker that first needs one: see `PgPoolConfig::driver`.
        pool.driver = Some(tokio::runtime::Handle::current());
        let store = PgStore::with_availability(
            pool.build().context("building the database pool")?,
            pool.availability.clone(),
        )
        .requiring_synchronous_standby(config.database_require_synchronous_standby);
        if config.database_require_synchronous_standby
            && !store
                .can_confirm_standbys()
                .await
                .context("asking whether the database role sees the standbys' positions")?
        {
            anyhow::bail!(
                "DATABASE_REQUIRE_SYNCHRONOUS_STANDBY needs a database role that sees the \
                 standbys' positions in pg_stat_replication: GRANT pg_monitor (or \
                 pg_read_all_stats) TO the role in DATABASE_URI"
            );
        }

        let secret = config.jwt_secret.clone().unwrap_or_else(|| {
            tracing::warn!("JWT_SECRET is not set: using a random secret; sessions end with this process and are not shared between instances");
            JwtTokens::random_secret()
        });
        let hasher = BcryptHasher::with_concurrency(
            config.bcrypt_cost,
            config
                .bcrypt_concurrency
                .unwrap_or_else(adapters_crypto::default_concurrency),
        )
        .context("bcrypt cost")?;
        let clock = Arc::new(SystemClock);
        let events = Arc::new(EventStreams::new(
            Arc::new(store.clone()),
            EventStreamsConfig {
                max_streams: config.event_streams_max,
                max_streams_per_customer: config.event_streams_per_customer,
                poll_interval: if listen_url.is_some() {
                    Duration::from_secs(1)
                } else {
                    Duration::from_millis(config.events_poll_interval_ms.max(1))
                },
                retention: Duration::from_secs(config.events_retention_seconds),
                ..EventStreamsConfig::default()
            },
        ));
        let state = AppState {
            users: Arc::new(store.clone()),
            orders: Arc::new(store.clone()),
            ledger: Arc::new(store.clone()),
            hasher: Arc::new(hasher),
            tokens: Arc::new(JwtTokens::new(&secret, config.token_ttl())),
            clock: clock.clone(),
            sign_ins: Arc::new(store.clone()),
            throttle: LoginThrottle::new(ThrottleConfig {
                max_failures_per_login: config.login_max_failures_per_login,
                max_failures_per_address: config.login_max_failures_per_address,
                window: Duration::from_secs(config.login_throttle_window_seconds),
            }),
            request_limit: config
                .request_limit()
                .map(|limit| Arc::new(CustomerRequestLimit::new(limit))),
            pending_limit: NonZeroU32::new(config.max_pending_orders),
            client_address: ClientAddressConfig {
                trusted_proxies: config.trusted_proxies.clone(),
                header: config.forwarded_header,
            },
            events: events.clone(),
            registrations: Arc::new(Registrations::new()),
            token_lifetime: config.token_ttl(),
            secure_cookie: config.cookie_secure,
        };

        let base_url =
            normalize_base_url(&config.accrual_system_address).context("ACCRUAL_SYSTEM_ADDRESS")?;
        let gate_name = base_url.as_str().to_owned();
        let mut client_config = AccrualClientConfig::new(base_url);
        client_config.request_timeout = Duration::from_millis(config.accrual_request_timeout_ms);
        // One kept-alive connection per request that may be in flight: fewer would make the
        // worker open and close a connection per request beyond them.
        client_config.max_idle_connections_per_host = config.accrual_concurrency.max(1);
        // One gate per accrual system, shared by every instance on this database.
        let gate = Arc::new(RateGate::shared(Arc::new(PgClusterGate::new(
            store.clone(),
            gate_name,
        ))));
        let client =
            HttpAccrualClient::new(client_config).context("building the accrual client")?;
        let worker = AccrualWorker::with_gate(
            Arc::new(store.clone()),
            Arc::new(client),
            clock,
            gate,
            WorkerConfig {
                concurrency: config.accrual_concurrency,
                poll_interval: Duration::from_millis(config.accrual_poll_interval_ms),
                recheck_delay: Duration::from_millis(config.accrual_recheck_delay_ms),
                unknown_recheck_cap: Duration::from_millis(config.accrual_unknown_recheck_cap_ms),
                backoff_cap: Duration::from_millis(config.accrual_backoff_cap_ms),
                lease: Duration::from_millis(config.accrual_lease_ms),
                ..WorkerConfig::default()
            },
        );

        let mut listeners = Vec::new();
        for address in config.listen_addresses().context("RUN_ADDRESS")? {
            listeners
                .push(TcpListener::bind(address).with_context(|| format!("binding {address}"))?);
        }
        let port = listeners
            .first()
            .context("RUN_ADDRESS resolves to no address")?
            .local_addr()?
            .port();
        for listener in &listeners {
            tracing::info!(address = %listener.local_addr()?, "listening");
        }
        let server_config = ServerConfig {
            workers: config.http_workers,
            ..ServerConfig::default()
        };
        let metrics = Metrics::new("gophermart").context("setting up the metrics")?;
        let status = operations::PgServiceStatus::new(
            store.clone(),
            Arc::new(SystemClock),
            worker.stats(),
            worker.gate(),
            events.clone(),
            metrics.registry(),
            operations::Modes {
                statements,
                wakeups,
            },
        )
        .context("setting up the metrics")?;
        let operations = Operations::new(Arc::new(status), metrics);
        let server = http_server(state, operations, listeners, &server_config)?;

        let stop = CancellationToken::new();
        let wake = store.queue_wake();
        let wakes = Wakes {
            queue: wake.clone(),
            gate: worker.gate().changes(),
            events: store.events_wake(),
        };
        let mut background = vec![
            tokio::spawn(store.clone().announce_queued_orders(stop.clone())),
            tokio::spawn(worker.run(wake, stop.clone())),
            tokio::spawn(events.clone().run(store.events_wake(), stop.clone())),
            tokio::spawn(events.clone().prune(stop.clone())),
        ];
        if let Some(listen_url) = listen_url {
            background.push(tokio::spawn(listen_for_notifications(
                listen_url,
                wakes,
                stop.clone(),
            )));
        }
        Ok(Self {
            server,
            port,
            events,
            stop,
            background,
        })
    }

    /// The port of the first listen address (useful when it was 0).
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A handle that stops the service.
    #[must_use]
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle {
            server: self.server.handle(),
            events: self.events.clone(),
        }
    }

    /// Serves until stopped, then stops the worker: no new claims, in-flight accrual requests
    /// finish, unasked entries are released.
    ///
    /// # Errors
    /// When the server fails.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let served = self.server.await;
        self.stop.cancel();
        for task in self.background {
            if let Err(error) = task.await {
                tracing::error!(%error, "a background task failed");
            }
        }
        tracing::info!("stopped");
        Ok(served?)
    }
}
