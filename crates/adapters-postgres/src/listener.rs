//! Wakes the accrual workers when an order is queued, in this instance or any other, and when
//! another instance changed the shared accrual gate (a 429 it received).
//!
//! This instance's worker is woken in process as soon as an upload commits. Other instances
//! learn of it through PostgreSQL's `LISTEN`/`NOTIFY`, sent by a background task, at most one
//! `NOTIFY` per [`ANNOUNCE_INTERVAL`] however many orders came in: a transaction that sends
//! `NOTIFY` takes a database-wide lock while it commits, so a `NOTIFY` inside each upload
//! would make uploads commit one at a time. Workers also poll, so a lost notification delays
//! an order by one poll interval at most; it is never lost.

use std::{sync::Arc, time::Duration};

use diesel::{sql_types::Text, ConnectionError, ConnectionResult};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use futures::StreamExt;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{connection::with_keepalives, prepared::prepared_statement, PgStore};

/// The channel on which queued orders are announced (with an empty payload).
pub const QUEUE_CHANNEL: &str = "gophermart_accrual_queue";

/// The channel on which changes that customers can see (events in the log: a withdrawal, an
/// order's new status, a credit) are announced, with an empty payload. An upload is announced
/// on [`QUEUE_CHANNEL`] alone, which wakes event readers too.
pub const EVENTS_CHANNEL: &str = "gophermart_events";

/// The channel on which a change of the shared accrual gate is announced (with an empty
/// payload): a 429 recorded by one instance reaches the others within a round trip instead of
/// at their next read of the gate. Only a hastener: the gate is read on its own schedule too.
pub const GATE_CHANNEL: &str = "gophermart_accrual_gate";

/// The shortest time between two announcements.
pub const ANNOUNCE_INTERVAL: Duration = Duration::from_millis(5);

prepared_statement! {
    /// Sends a notification.
    struct Announce {
        channel: String => Text,
    }
    "SELECT pg_notify($1, '')"
}

/// What a write does once it committed: wake what waits for it in this instance (the accrual
/// worker for a queued order, the event streams for any change a customer sees), and ask for
/// an announcement to the others.
#[derive(Debug, Default)]
pub(crate) struct QueueSignal {
    local: Arc<Notify>,
    announce: Notify,
    events: Arc<Notify>,
    announce_events: Notify,
}

impl QueueSignal {
    /// An upload committed: a queued order and its event.
    pub(crate) fn order_queued(&self) {
        self.local.notify_one();
        self.events.notify_one();
        self.announce.notify_one();
    }

    /// A change with an event but no queued order committed.
    pub(crate) fn customer_changed(&self) {
        self.events.notify_one();
        self.announce_events.notify_one();
    }
}

impl PgStore {
    /// What this instance's accrual worker waits on: woken when an upload here queues an order
    /// (give it to [`listen_for_notifications`] too, for uploads elsewhere).
    #[must_use]
    pub fn queue_wake(&self) -> Arc<Notify> {
        self.signal.local.clone()
    }

    /// What this instance's event streams wait on: woken when a change with an event commits
    /// here (give it to [`listen_for_notifications`] too, for changes elsewhere).
    #[must_use]
    pub fn events_wake(&self) -> Arc<Notify> {
        self.signal.events.clone()
    }

    /// Announces queued orders and other changes with events to every instance's
    /// [`listen_for_notifications`], until `stop` is cancelled: one `NOTIFY` for all that
    /// happened since the last one, at most one per [`ANNOUNCE_INTERVAL`].
    pub async fn announce_queued_orders(self, stop: CancellationToken) {
        loop {
            let channel = tokio::select! {
                () = stop.cancelled() => return,
                () = self.signal.announce.notified() => QUEUE_CHANNEL,
                () = self.signal.announce_events.notified() => EVENTS_CHANNEL,
            };
            let sent = async {
                let mut conn = self.conn().await?;
                Announce {
                    channel: channel.to_owned(),
                }
                .execute(&mut conn)
                .await
                .map_err(crate::error::from_diesel)
            };
            match sent.await {
                // The outage is reported once, by the pool's connections.
                Err(error @ application::RepositoryError::Unavailable(_)) => {
                    tracing::debug!(%error, "could not announce queued orders; other instances will poll");
                }
                Err(error) => {
                    tracing::warn!(%error, "could not announce queued orders; other instances will poll");
                }
                Ok(_) => {}
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(ANNOUNCE_INTERVAL) => {}
            }
        }
    }
}

/// What [`listen_for_notifications`] wakes.
#[derive(Debug, Clone)]
pub struct Wakes {
    /// The accrual worker, for orders queued by other instances ([`QUEUE_CHANNEL`]).
    pub queue: Arc<Notify>,
    /// The accrual gate's follower, for a change another instance made ([`GATE_CHANNEL`]).
    pub gate: Arc<Notify>,
    /// The event streams, for changes made by other instances ([`EVENTS_CHANNEL`], and
    /// [`QUEUE_CHANNEL`] for uploads).
    pub events: Arc<Notify>,
}

/// Listens on [`QUEUE_CHANNEL`], [`EVENTS_CHANNEL`] and [`GATE_CHANNEL`] over a dedicated connection and wakes the
/// matching [`Wakes`] for every notification, until `stop` is cancelled. A lost connection is
/// re-opened after a pause (and both are woken then, so nothing that happened meanwhile waits
/// for the next poll).
pub async fn listen_for_notifications(url: String, wakes: Wakes, stop: CancellationToken) {
    let mut pause = Duration::from_millis(100);
    loop {
        let listening = std::sync::atomic::AtomicBool::new(false);
        let session = async {
            let mut conn = open(&url).await?;
            for channel in [QUEUE_CHANNEL, EVENTS_CHANNEL, GATE_CHANNEL] {
                diesel::sql_query(format!("LISTEN {channel}"))
                    .execute(&mut conn)
                    .await?;
            }
            tracing::debug!("listening for queued orders and gate changes");
            listening.store(true, std::sync::atomic::Ordering::Relaxed);
            wakes.queue.notify_one();
            wakes.gate.notify_one();
            wakes.events.notify_one();
            let mut notifications = std::pin::pin!(conn.notifications_stream());
            while let Some(notification) = notifications.next().await {
                match notification?.channel.as_str() {
                    GATE_CHANNEL => wakes.gate.notify_one(),
                    EVENTS_CHANNEL => wakes.events.notify_one(),
                    _ => {
                        wakes.queue.notify_one();
                        wakes.events.notify_one();
                    }
                }
            }
            Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
        };
        tokio::select! {
            () = stop.cancelled() => return,
            result = session => {
                // Once per loss: while the database stays out of reach, the attempts to listen
                // again fail quietly (the pool's connections report the outage).
                let lost = std::sync::atomic::AtomicBool::load(&listening, std::sync::atomic::Ordering::Relaxed);
                match result {
                    Err(error) if lost => {
                        tracing::warn!(error = %error, "lost the notification connection; polling meanwhile");
                    }
                    Err(error) => {
                        tracing::debug!(error = %error, "could not listen for notifications yet; polling meanwhile");
                    }
                    Ok(()) => {}
                }
                if lost {
                    pause = Duration::from_millis(100);
                }
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

/// Opens the listening session: diesel-async's connection, over a socket with the keepalives
/// of [`session_config`].
async fn open(url: &str) -> ConnectionResult<AsyncPgConnection> {
    let (client, connection) = session_config(url)?
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| ConnectionError::BadConnection(e.to_string()))?;
    AsyncPgConnection::try_from_client_and_connection(client, connection).await
}

/// The listening session's configuration: `url`'s, with the pool's TCP keepalives unless the
/// URI sets its own. The session is idle between notifications: with the operating system's
/// default (two hours) a server that went silent (a network partition) would hold it, and hide
/// other instances' orders but for polling, until then.
fn session_config(url: &str) -> ConnectionResult<tokio_postgres::Config> {
    let mut config: tokio_postgres::Config = url
        .parse()
        .map_err(|e: tokio_postgres::Error| ConnectionError::InvalidConnectionUrl(e.to_string()))?;
    with_keepalives(&mut config);
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connection::{KEEPALIVES_IDLE, KEEPALIVES_INTERVAL, KEEPALIVES_RETRIES};

    #[test]
    fn the_session_finds_a_silent_server_dead_as_the_pool_does() {
        let config = session_config("postgres://u@node1:5432,node2:5432/db").expect("valid URI");

        assert!(config.get_keepalives());
        assert_eq!(config.get_keepalives_idle(), KEEPALIVES_IDLE);
        assert_eq!(config.get_keepalives_interval(), Some(KEEPALIVES_INTERVAL));
        assert_eq!(config.get_keepalives_retries(), Some(KEEPALIVES_RETRIES));
    }

    #[test]
    fn keepalives_set_in_the_uri_are_kept() {
        let config = session_config("postgres://u@h/db?keepalives_idle=30&keepalives_retries=9")
            .expect("valid URI");

        assert_eq!(config.get_keepalives_idle(), Duration::from_secs(30));
        assert_eq!(config.get_keepalives_retries(), Some(9));
    }

    #[test]
    fn keepalives_switched_off_in_the_uri_stay_off() {
        let config = session_config("postgres://u@h/db?keepalives=0").expect("valid URI");

        assert!(!config.get_keepalives());
        assert_eq!(config.get_keepalives_interval(), None);
    }
}
