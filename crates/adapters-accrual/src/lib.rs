//! Gophermart's client for the external accrual system: an HTTP implementation of the
//! [`AccrualClient`](application::ports::accrual::AccrualClient) port.
//!
//! [`HttpAccrualClient`] asks `GET {base}/api/orders/{number}` and turns the reply into an
//! [`AccrualAnswer`](application::ports::accrual::AccrualAnswer):
//!
//! | reply | result |
//! |---|---|
//! | `200` with `{"order", "status", "accrual"?}` | `Known { status, accrual }` |
//! | `204` | `NotRegistered` |
//! | `429` with `Retry-After` | `RateLimited { retry_after, per_minute }` |
//! | `5xx` | `AccrualClientError::Server` |
//! | anything else, or a `200` that cannot be understood | `AccrualClientError::InvalidAnswer` |
//! | no reply in time | `AccrualClientError::Timeout` |
//! | no connection | `AccrualClientError::Transport` |
//!
//! The crate is built without TLS: the accrual system is reached over plain `http`.

mod client;
mod config;
mod response;

pub use client::HttpAccrualClient;
pub use config::{normalize_base_url, AccrualClientConfig, AccrualConfigError};
