//! Configuration from command-line flags and environment variables (flags win).

use std::{net::SocketAddr, net::ToSocketAddrs, num::NonZeroU32, time::Duration};

use application::use_cases::RequestLimitConfig;

use adapters_http::client_address::{ForwardedHeader, TrustedProxies};
use clap::{Parser, ValueEnum};
use secrecy::SecretString;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Gophermart, a loyalty-points service: customers upload order numbers, the accrual system
/// says how many points each earns, and customers spend them on new orders.
#[derive(Debug, Clone, Parser)]
#[command(name = "gophermart", version, about, args_override_self = true)]
#[command(
    after_help = "Ledger audit: `gophermart audit [-d URI] [--format text|json]` checks the ledger's invariants in the database and exits 0 when they hold, 1 when not (see docs/operations.md)."
)]
pub struct Config {
    /// Address and port to listen on. `:8080` means every interface; `localhost` binds
    /// every address the name resolves to, IPv4 included.
    #[arg(
        short = 'a',
        long = "address",
        env = "RUN_ADDRESS",
        default_value = "127.0.0.1:8080"
    )]
    pub run_address: String,

    /// PostgreSQL connection URI, e.g. `postgres://user:password@127.0.0.1:5432/gophermart`.
    #[arg(
        short = 'd',
        long = "database-uri",
        env = "DATABASE_URI",
        hide_env_values = true
    )]
    pub database_uri: SecretString,

    /// Base address of the accrual system, e.g. `http://127.0.0.1:8081`.
    #[arg(
        short = 'r',
        long = "accrual-address",
        env = "ACCRUAL_SYSTEM_ADDRESS",
        default_value = "http://127.0.0.1:8081"
    )]
    pub accrual_system_address: String,

    /// Secret that signs session tokens. Every instance sharing a database must use the same
    /// one; when unset a random one is made and tokens do not survive a restart.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<SecretString>,

    /// How long a session token stays valid, in seconds.
    #[arg(long, env = "TOKEN_TTL_SECONDS", default_value_t = 86_400)]
    pub token_ttl_seconds: u64,

    /// bcrypt cost of password hashes (4-31; each step doubles the work).
    #[arg(long, env = "BCRYPT_COST", default_value_t = 12, value_parser = clap::value_parser!(u32).range(4..=31))]
    pub bcrypt_cost: u32,

    /// Password hashes computed at once; sign-ins wait their turn up to about a second (at
    /// least four per hash running), and further ones get 503 at once. Default: one per core
    /// but one, at least one.
    #[arg(long, env = "BCRYPT_CONCURRENCY")]
    pub bcrypt_concurrency: Option<usize>,

    /// Failed sign-ins allowed for one login from one client address within the throttle
    /// window; past it that address is refused for that login, no other address is (0 = no
    /// limit). Counted in the database, for every instance together.
    #[arg(long, env = "LOGIN_MAX_FAILURES_PER_LOGIN", default_value_t = 10)]
    pub login_max_failures_per_login: u32,

    /// Failed sign-ins allowed from one client address, whatever the login, within the
    /// throttle window; past it that address is refused (0 = no limit).
    #[arg(long, env = "LOGIN_MAX_FAILURES_PER_ADDRESS", default_value_t = 50)]
    pub login_max_failures_per_address: u32,

    /// The sign-in throttle window, in seconds, counted from the first failure.
    #[arg(long, env = "LOGIN_THROTTLE_WINDOW_SECONDS", default_value_t = 300)]
    pub login_throttle_window_seconds: u64,

    /// The reverse proxies and load balancers in front of the service, as a comma-separated
    /// list of addresses and CIDR blocks (`10.0.0.0/8, 192.0.2.7`). A request from one of
    /// them is taken to come from the rightmost address of FORWARDED_HEADER that is not one
    /// of them; the header of anyone else is ignored. Empty: the connection's address is the
    /// client's.
    #[arg(long, env = "TRUSTED_PROXIES", default_value = "")]
    pub trusted_proxies: TrustedProxies,

    /// The header the trusted proxies add their client's address to: `x-forwarded-for` or
    /// `forwarded` (RFC 7239). Only this one is read: a proxy passes the other on from the
    /// client unchanged.
    #[arg(long, env = "FORWARDED_HEADER", default_value = "x-forwarded-for")]
    pub forwarded_header: ForwardedHeader,

    /// Most orders one customer may have waiting for their points (not final yet); an upload
    /// past it answers 429 and stores nothing (0 = no limit).
    #[arg(long, env = "MAX_PENDING_ORDERS", default_value_t = 1000)]
    pub max_pending_orders: u32,

    /// How long the customers' events are kept for streams that resume
    /// (`GET /api/user/events` with `Last-Event-ID`); a client away longer is told to reload.
    #[arg(long, env = "EVENTS_RETENTION_SECONDS", default_value_t = 86_400)]
    pub events_retention_seconds: u64,

    /// Most event streams open on one instance; more answer 429.
    #[arg(long, env = "EVENT_STREAMS_MAX", default_value_t = 20_000)]
    pub event_streams_max: usize,

    /// Most event streams one customer may have open on one instance; more answer 429.
    #[arg(long, env = "EVENT_STREAMS_PER_CUSTOMER", default_value_t = 5)]
    pub event_streams_per_customer: usize,

    /// How often the event log is read for open streams when no LISTEN connection wakes this
    /// instance (DATABASE_PREPARED_STATEMENTS=false and no DATABASE_LISTEN_URI); with one, it
    /// is read on each change and at least once a second.
    #[arg(long, env = "EVENTS_POLL_INTERVAL_MS", default_value_t = 50)]
    pub events_poll_interval_ms: u64,

    /// Requests per second one customer may keep up, in each instance; past it (and the
    /// burst) requests answer 429 with Retry-After (0 = no limit). With N instances sharing a
    /// customer's requests, the customer's total is up to N times this.
    #[arg(long, env = "CUSTOMER_REQUESTS_PER_SECOND", default_value_t = 50)]
    pub customer_requests_per_second: u32,

    /// Requests one customer may send at once above the steady rate, in each instance.
    #[arg(long, env = "CUSTOMER_REQUEST_BURST", default_value_t = 100)]
    pub customer_request_burst: u32,

    /// Mark the session cookie `Secure` (set when clients reach the service over HTTPS).
    #[arg(long, env = "COOKIE_SECURE", default_value_t = false)]
    pub cookie_secure: bool,

    /// Most PostgreSQL connections open at once.
    #[arg(long, env = "DATABASE_POOL_SIZE", default_value_t = 16)]
    pub database_pool_size: usize,

    /// Send statements as named prepared statements kept on each connection (true, the default
    /// and the fastest), or unnamed, one round trip each with nothing kept on the server
    /// (false). Set false when DATABASE_URI goes through a transaction pooler such as
    /// PgBouncer with `pool_mode = transaction` (or `statement`) that does not track prepared
    /// statements; a direct connection or session pooling keeps the default.
    #[arg(
        long,
        env = "DATABASE_PREPARED_STATEMENTS",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub database_prepared_statements: bool,

    /// A direct PostgreSQL URI (not through a transaction pooler) for the one session that
    /// LISTENs for orders queued, and accrual pauses (429s) recorded, by other instances.
    /// Default: DATABASE_URI when statements are prepared; with
    /// DATABASE_PREPARED_STATEMENTS=false and no listen URI the accrual worker only polls
    /// (ACCRUAL_POLL_INTERVAL_MS) for other instances' orders, and learns their pauses at its
    /// next read of the shared gate (every 50 ms while it works).
    #[arg(long, env = "DATABASE_LISTEN_URI", hide_env_values = true)]
    pub database_listen_uri: Option<SecretString>,

    /// Longest wait for a database connection before a request answers 503, in milliseconds.
    #[arg(long, env = "DATABASE_TIMEOUT_MS", default_value_t = 5_000)]
    pub database_timeout_ms: u64,

    /// Longest wait for one statement's answer, in milliseconds (0: no limit). Past it the
    /// request answers 503 (for a write: outcome unknown, repeat it) and the connection is
    /// dropped, so a database server that goes silent (a network partition) holds a request
    /// for at most DATABASE_TIMEOUT_MS + this.
    #[arg(long, env = "DATABASE_STATEMENT_TIMEOUT_MS", default_value_t = 5_000)]
    pub database_statement_timeout_ms: u64,

    /// Answer an upload, a withdrawal or a registration only once a synchronous standby has
    /// it: asked right after the write, the database server must still make commits wait for
    /// a synchronous standby, and one must have flushed its WAL past the write (waited for up
    /// to 1 s). Otherwise the write answers 503 (outcome unknown, repeat it): a primary that
    /// commits alone, as pg_auto_failover's `wait_primary` does, acknowledges writes a failover
    /// can lose. Durability over availability: writes are refused for as long as the primary
    /// has no synchronous standby. The database role must see the standbys' positions
    /// (`GRANT pg_monitor`); the service does not start otherwise. See docs/deployment.md,
    /// "High availability".
    #[arg(
        long,
        env = "DATABASE_REQUIRE_SYNCHRONOUS_STANDBY",
        default_value_t = false
    )]
    pub database_require_synchronous_standby: bool,

    /// HTTP worker threads; 0 means one per core.
    #[arg(long, env = "HTTP_WORKERS", default_value_t = 0)]
    pub http_workers: usize,

    /// Concurrent requests to the accrual system (as many connections are kept alive to it).
    #[arg(long, env = "ACCRUAL_CONCURRENCY", default_value_t = 64)]
    pub accrual_concurrency: usize,

    /// Longest pause between looks at the queue when nothing wakes the worker, in milliseconds.
    #[arg(long, env = "ACCRUAL_POLL_INTERVAL_MS", default_value_t = 1_000)]
    pub accrual_poll_interval_ms: u64,

    /// Timeout of one request to the accrual system, in milliseconds.
    #[arg(long, env = "ACCRUAL_REQUEST_TIMEOUT_MS", default_value_t = 5_000)]
    pub accrual_request_timeout_ms: u64,

    /// Delay before asking again about an order the accrual system is still computing or does
    /// not know yet, in milliseconds.
    #[arg(long, env = "ACCRUAL_RECHECK_DELAY_MS", default_value_t = 500)]
    pub accrual_recheck_delay_ms: u64,

    /// Longest delay before asking again about an order the accrual system does not know yet
    /// (204), in milliseconds: the delay doubles from the recheck delay with each such answer
    /// in a row, up to this; such an order is never given up.
    #[arg(
        long,
        env = "ACCRUAL_UNKNOWN_RECHECK_CAP_MS",
        default_value_t = 600_000
    )]
    pub accrual_unknown_recheck_cap_ms: u64,

    /// Longest delay between retries after failures (backoff cap), in milliseconds.
    #[arg(long, env = "ACCRUAL_BACKOFF_CAP_MS", default_value_t = 60_000)]
    pub accrual_backoff_cap_ms: u64,

    /// How long a claimed queue entry stays reserved for its worker, in milliseconds; a crashed
    /// instance's entries return to the queue after it.
    #[arg(long, env = "ACCRUAL_LEASE_MS", default_value_t = 30_000)]
    pub accrual_lease_ms: u64,

    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl Config {
    /// Each customer's request limit in each instance, unless switched off.
    #[must_use]
    pub fn request_limit(&self) -> Option<RequestLimitConfig> {
        let per_second = NonZeroU32::new(self.customer_requests_per_second)?;
        Some(RequestLimitConfig {
            per_second,
            burst: NonZeroU32::new(self.customer_request_burst).unwrap_or(per_second),
        })
    }

    /// The addresses to listen on.
    ///
    /// # Errors
    /// When the address cannot be resolved.
    pub fn listen_addresses(&self) -> std::io::Result<Vec<SocketAddr>> {
        let address = if self.run_address.starts_with(':') {
            format!("0.0.0.0{}", self.run_address)
        } else {
            self.run_address.clone()
        };
        let mut addresses: Vec<SocketAddr> = address.to_socket_addrs()?.collect();
        addresses.sort();
        addresses.dedup();
        Ok(addresses)
    }

    /// The token lifetime.
    #[must_use]
    pub fn token_ttl(&self) -> Duration {
        Duration::from_secs(self.token_ttl_seconds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Config {
        Config::try_parse_from(std::iter::once("gophermart").chain(args.iter().copied()))
            .expect("valid flags")
    }

    #[test]
    fn flags_of_the_spec_are_understood() {
        let config = parse(&[
            "-a",
            "localhost:9090",
            "-d",
            "postgres://x",
            "-r",
            "http://acc:1",
        ]);

        assert_eq!(config.run_address, "localhost:9090");
        assert_eq!(config.accrual_system_address, "http://acc:1");
    }

    #[test]
    fn a_bare_port_listens_on_every_ipv4_interface() {
        let config = parse(&["-a", ":8089", "-d", "postgres://x"]);

        assert_eq!(
            config.listen_addresses().expect("resolves"),
            vec!["0.0.0.0:8089".parse().expect("addr")]
        );
    }

    #[test]
    fn localhost_includes_the_ipv4_loopback() {
        let config = parse(&["-a", "localhost:8089", "-d", "postgres://x"]);

        let addresses = config.listen_addresses().expect("resolves");

        assert!(
            addresses.contains(&"127.0.0.1:8089".parse().expect("addr")),
            "{addresses:?}"
        );
    }

    #[tokio::test]
    async fn a_lease_shorter_than_the_request_timeout_is_refused_at_start() {
        let config = parse(&[
            "-d",
            "postgres://127.0.0.1:9/none",
            "--accrual-lease-ms",
            "1000",
            "--accrual-request-timeout-ms",
            "1000",
        ]);

        let error = crate::Application::build(config)
            .await
            .expect_err("refused");

        assert!(error.to_string().contains("ACCRUAL_LEASE_MS"), "{error}");
    }

    #[test]
    fn the_bcrypt_cost_is_bounded() {
        assert!(Config::try_parse_from(["gophermart", "-d", "x", "--bcrypt-cost", "3"]).is_err());
    }
}
