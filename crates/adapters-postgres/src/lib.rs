//! Gophermart's storage in PostgreSQL.
//!
//! Every port of the application layer that keeps state is implemented here over one deadpool
//! pool of connections that offer diesel-async's interface over tokio-postgres
//! ([`DbConnection`]). SQL lives only in this crate, and no diesel type leaves
//! it: failures are translated into the application's error enums.

mod audit;
mod availability;
mod connection;
mod error;
mod events;
mod gate;
mod ledger;
mod listener;
mod migrations;
mod models;
mod numeric;
mod orders;
mod pool;
mod prepared;
mod queue;
mod schema;
mod sign_ins;
#[cfg(feature = "testing")]
pub mod testing;
#[cfg(feature = "testing")]
pub mod testing_pooler;
#[cfg(feature = "testing")]
pub mod testing_proxy;
mod users;

pub use audit::{
    AuditError, Invariant, InvariantCheck, LedgerAudit, Violation, EXAMPLES_PER_INVARIANT,
};
pub use availability::Availability;
pub use connection::{ConnectOptions, DbConnection, StatementMode};
pub use gate::PgClusterGate;
pub use listener::{
    listen_for_notifications, Wakes, ANNOUNCE_INTERVAL, EVENTS_CHANNEL, GATE_CHANNEL, QUEUE_CHANNEL,
};
pub use migrations::{
    pending_migrations, run_migrations, run_migrations_in, MigrationError, MIGRATIONS,
};
pub use pool::{PgPool, PgPoolConfig, PgStore, PoolStatus};
pub use queue::QueueDepth;
