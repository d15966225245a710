//! Wakes the accrual workers when an order is queued, in this instance or any other.
//!
//! This instance's worker is woken in process as soon as an upload commits. Other instances
//! learn of it through PostgreSQL's `LISTEN`/`NOTIFY`, sent by a background task, at most one
//! `NOTIFY` per [`ANNOUNCE_INTERVAL`] however many orders came in: a transaction that sends
//! `NOTIFY` takes a database-wide lock while it commits, so a `NOTIFY` inside each upload
//! would make uploads commit one at a time. Workers also poll, so a lost notification delays
//! an order by one poll interval at most; it is never lost.

use std::{sync::Arc, time::Duration};

use diesel::sql_types::Text;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use futures::StreamExt;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{prepared::prepared_statement, PgStore};

/// The channel on which queued orders are announced (with an empty payload).
pub const QUEUE_CHANNEL: &str = "gophermart_accrual_queue";

/// The shortest time between two announcements.
pub const ANNOUNCE_INTERVAL: Duration = Duration::from_millis(5);

prepared_statement! {
    /// Sends a notification.
    struct Announce {
        channel: String => Text,
    }
    "SELECT pg_notify($1, '')"
}

/// What an upload does once its order is queued: wake this instance's worker, and ask for an
/// announcement to the others.
#[derive(Debug, Default)]
pub(crate) struct QueueSignal {
    local: Arc<Notify>,
    announce: Notify,
}

impl QueueSignal {
    pub(crate) fn order_queued(&self) {
        self.local.notify_one();
        self.announce.notify_one();
    }
}

impl PgStore {
    /// What this instance's accrual worker waits on: woken when an upload here queues an order
    /// (give it to [`listen_for_queued_orders`] too, for uploads elsewhere).
    #[must_use]
    pub fn queue_wake(&self) -> Arc<Notify> {
        self.signal.local.clone()
    }

    /// Announces queued orders to every instance's [`listen_for_queued_orders`], until `stop`
    /// is cancelled: one `NOTIFY` for all the orders queued since the last one, at most one
    /// per [`ANNOUNCE_INTERVAL`].
    pub async fn announce_queued_orders(self, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.signal.announce.notified() => {}
            }
            let sent = async {
                let mut conn = self.conn().await?;
                Announce {
                    channel: QUEUE_CHANNEL.to_owned(),
                }
                .execute(&mut conn)
                .await
                .map_err(crate::error::from_diesel)
            };
            if let Err(error) = sent.await {
                tracing::warn!(%error, "could not announce queued orders; other instances will poll");
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(ANNOUNCE_INTERVAL) => {}
            }
        }
    }
}

/// Listens on [`QUEUE_CHANNEL`] over a dedicated connection and wakes `wake` for every
/// notification, until `stop` is cancelled. A lost connection is re-opened after a pause (and
/// `wake` is woken then, so nothing queued meanwhile waits for the poll interval).
pub async fn listen_for_queued_orders(url: String, wake: Arc<Notify>, stop: CancellationToken) {
    let mut pause = Duration::from_millis(100);
    loop {
        let session = async {
            let mut conn = AsyncPgConnection::establish(&url).await?;
            diesel::sql_query(format!("LISTEN {QUEUE_CHANNEL}"))
                .execute(&mut conn)
                .await?;
            tracing::debug!("listening for queued orders");
            wake.notify_one();
            let mut notifications = std::pin::pin!(conn.notifications_stream());
            while let Some(notification) = notifications.next().await {
                notification?;
                wake.notify_one();
            }
            Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
        };
        tokio::select! {
            () = stop.cancelled() => return,
            result = session => {
                if let Err(error) = result {
                    tracing::warn!(error = %error, "lost the queue notification connection; polling meanwhile");
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
