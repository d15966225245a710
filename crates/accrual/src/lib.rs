//! A standalone, in-memory accrual system compatible with the one Gophermart calls.
//!
//! Reward rules are registered with `POST /api/goods`, purchases with `POST /api/orders`, and
//! Gophermart asks `GET /api/orders/{number}` for an order's status and accrual. [`build`]
//! binds a server and [`Server::spawn`] runs one in the background, which is what tests use.

pub mod config;
pub mod http;
pub mod luhn;
pub mod rate_limit;
pub mod rules;
pub mod store;
pub mod telemetry;

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpServer};

pub use config::Config;
pub use http::AppState;
pub use rules::{compute_accrual, Good, RewardType, Rule};
pub use store::{OrderStatus, OrderView, Store};

/// Seconds the server waits for requests in flight when asked to stop.
const SHUTDOWN_TIMEOUT_SECS: u64 = 5;

/// Binds `config.address` (port 0 picks a free port) and prepares the server. Returns the
/// server, which runs when awaited or spawned and stops gracefully on SIGINT or SIGTERM, and
/// the address it actually listens on. Must be called inside a Tokio runtime.
///
/// # Errors
/// When the configuration is out of range or the address cannot be bound.
pub async fn build(config: Config) -> io::Result<(actix_web::dev::Server, SocketAddr)> {
    build_with_state(config)
        .await
        .map(|(server, address, _)| (server, address))
}

/// As [`build`], also returning the shared state so that an in-process caller can read the
/// request statistics.
///
/// # Errors
/// As [`build`].
pub async fn build_with_state(
    config: Config,
) -> io::Result<(actix_web::dev::Server, SocketAddr, web::Data<AppState>)> {
    config
        .validate()
        .map_err(|message| io::Error::new(io::ErrorKind::InvalidInput, message))?;
    let state = web::Data::new(AppState::new(&config));
    let shared = state.clone();
    let listener = TcpListener::bind(config.address)?;
    let address = listener.local_addr()?;
    let mut server =
        HttpServer::new(move || App::new().app_data(state.clone()).configure(http::routes))
            .shutdown_timeout(SHUTDOWN_TIMEOUT_SECS);
    if let Some(workers) = config.workers {
        server = server.workers(workers.get());
    }
    let server = server.listen(listener)?.run();
    Ok((server, address, shared))
}

/// A server running in the background of the current Tokio runtime. Dropping it asks the
/// server to stop without waiting.
#[derive(Debug)]
pub struct Server {
    address: SocketAddr,
    handle: ServerHandle,
    state: web::Data<AppState>,
    task: Option<tokio::task::JoinHandle<io::Result<()>>>,
}

impl Server {
    /// Builds a server with `config` and spawns it on the current Tokio runtime.
    ///
    /// # Errors
    /// As [`build`].
    pub async fn spawn(config: Config) -> io::Result<Self> {
        let (server, address, state) = build_with_state(config).await?;
        let handle = server.handle();
        let task = tokio::spawn(server);
        Ok(Self {
            address,
            handle,
            state,
            task: Some(task),
        })
    }

    /// What the order-status endpoint has answered so far.
    #[must_use]
    pub fn stats(&self) -> http::RequestStats {
        self.state.stats()
    }

    /// The address the server listens on.
    #[must_use]
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The URL to reach the server at, without a trailing slash, such as
    /// `http://127.0.0.1:40123`. An unspecified listening address is reached through loopback.
    #[must_use]
    pub fn base_url(&self) -> String {
        let mut address = self.address;
        if address.ip().is_unspecified() {
            address.set_ip(if address.is_ipv4() {
                Ipv4Addr::LOCALHOST.into()
            } else {
                Ipv6Addr::LOCALHOST.into()
            });
        }
        format!("http://{address}")
    }

    /// Stops the server gracefully (requests in flight get up to five seconds) and waits
    /// until it has stopped.
    ///
    /// # Errors
    /// When the server ended with an error.
    pub async fn stop(mut self) -> io::Result<()> {
        self.handle.stop(true).await;
        match self.task.take() {
            Some(task) => task.await.map_err(io::Error::other)?,
            None => Ok(()),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.task.is_some() {
            drop(self.handle.stop(false));
        }
    }
}
