//! Wakes the accrual workers when an order is queued, in this instance or any other, through
//! PostgreSQL's `LISTEN`/`NOTIFY`.

use std::{sync::Arc, time::Duration};

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use futures::StreamExt;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The channel an upload notifies, with the order number as payload.
pub const QUEUE_CHANNEL: &str = "gophermart_accrual_queue";

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
