//! The accrual worker: takes due entries from the durable queue, asks the accrual system about
//! each, and applies the answer, so that every uploaded order is credited exactly once.
//!
//! Exactly-once crediting rests on the store (a final outcome applies only from a non-final
//! status, in one transaction); this module decides what to ask, when, and how fast.

mod gate;
mod stats;

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use rand::Rng;
use tokio::{sync::Notify, task::JoinSet};
use tokio_util::sync::CancellationToken;

pub use gate::RateGate;
pub use stats::{AnswerKind, WorkerStats};

use crate::ports::{
    accrual::{AccrualAnswer, AccrualClient},
    clock::Clock,
    queue::{AccrualQueue, FinalOutcome, QueueEntry, RetryReason},
};
use domain::AccrualStatus;

/// How the worker paces itself.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Requests to the accrual system in flight at once.
    pub concurrency: usize,
    /// Longest sleep when nothing wakes the worker.
    pub poll_interval: Duration,
    /// Delay before asking again about an order being computed or not registered yet.
    pub recheck_delay: Duration,
    /// First delay after a failure; doubles with each failed attempt.
    pub backoff_base: Duration,
    /// Longest delay after failures.
    pub backoff_cap: Duration,
    /// How long a claimed entry stays reserved for this worker.
    pub lease: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            concurrency: 8,
            poll_interval: Duration::from_secs(1),
            recheck_delay: Duration::from_millis(500),
            backoff_base: Duration::from_millis(500),
            backoff_cap: Duration::from_secs(60),
            lease: Duration::from_secs(30),
        }
    }
}

/// The delay before the next try after `attempts` failures: `base · 2^(attempts-1)`, capped,
/// with "equal jitter" (between half and all of it) so that many failing entries spread out.
#[must_use]
pub fn backoff(config: &WorkerConfig, attempts: u32, jitter: f64) -> Duration {
    let exponent = attempts.saturating_sub(1).min(30);
    let full = config
        .backoff_base
        .saturating_mul(1u32 << exponent)
        .min(config.backoff_cap);
    full.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

/// The worker's collaborators.
#[derive(Clone)]
pub struct AccrualWorker {
    queue: Arc<dyn AccrualQueue>,
    client: Arc<dyn AccrualClient>,
    clock: Arc<dyn Clock>,
    gate: Arc<RateGate>,
    stats: Arc<WorkerStats>,
    config: WorkerConfig,
}

impl std::fmt::Debug for AccrualWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccrualWorker")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn after(now: DateTime<Utc>, delay: Duration) -> DateTime<Utc> {
    now + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX)
}

impl AccrualWorker {
    /// A worker over its ports.
    #[must_use]
    pub fn new(
        queue: Arc<dyn AccrualQueue>,
        client: Arc<dyn AccrualClient>,
        clock: Arc<dyn Clock>,
        config: WorkerConfig,
    ) -> Self {
        Self {
            queue,
            client,
            clock,
            gate: Arc::new(RateGate::new()),
            stats: Arc::new(WorkerStats::default()),
            config,
        }
    }

    /// What the worker has done so far.
    #[must_use]
    pub fn stats(&self) -> Arc<WorkerStats> {
        self.stats.clone()
    }

    /// The gate every request to the accrual system passes.
    #[must_use]
    pub fn gate(&self) -> Arc<RateGate> {
        self.gate.clone()
    }

    /// Runs until `stop` is cancelled: claims due entries whenever requests are free, and
    /// sleeps until `wake` is notified (an order was queued), the poll interval passes, or the
    /// next entry is due. On stop it claims nothing more, lets requests in flight finish, and
    /// releases entries that have not been asked about.
    pub async fn run(self, wake: Arc<Notify>, stop: CancellationToken) {
        let mut in_flight: JoinSet<()> = JoinSet::new();
        let concurrency = self.config.concurrency.max(1);
        loop {
            while in_flight.try_join_next().is_some() {}
            if stop.is_cancelled() {
                break;
            }
            let free = concurrency.saturating_sub(in_flight.len());
            if free > 0 {
                // Claim nothing while the gate is closed: a claimed entry would only wait with
                // its lease running.
                if let Some(opens) = self.gate.ready_at() {
                    tokio::select! {
                        () = stop.cancelled() => {}
                        () = tokio::time::sleep_until(opens) => {}
                    }
                    continue;
                }
            }
            let paced = self.gate.is_paced();
            let mut claimed = 0;
            if free > 0 {
                // Under a pace, one request per slot: claim one entry at a time.
                let batch = if paced { 1 } else { free };
                match self
                    .queue
                    .claim(
                        u32::try_from(batch).unwrap_or(u32::MAX),
                        self.clock.now(),
                        self.config.lease,
                    )
                    .await
                {
                    Ok(entries) => {
                        claimed = entries.len();
                        for entry in entries {
                            let worker = self.clone();
                            let stop = stop.clone();
                            in_flight.spawn(async move { worker.handle(entry, stop).await });
                        }
                    }
                    Err(error) => {
                        tracing::warn!(error = %error, "could not claim queued orders");
                    }
                }
            }
            if claimed > 0 && (paced || claimed == free) {
                // There may be more due work: go round for the next slot, or as soon as a
                // request finishes when all are in flight.
                if !paced {
                    tokio::select! {
                        () = stop.cancelled() => {}
                        _ = in_flight.join_next() => {}
                    }
                }
                continue;
            }
            if free == 0 {
                // Every request slot is busy: nothing can be claimed before one finishes, so
                // there is no point asking the queue when the next entry is due.
                tokio::select! {
                    () = stop.cancelled() => {}
                    _ = in_flight.join_next() => {}
                }
                continue;
            }
            let sleep = self.idle_sleep().await;
            tokio::select! {
                () = stop.cancelled() => {}
                () = wake.notified() => {}
                () = tokio::time::sleep(sleep) => {}
            }
        }
        while in_flight.join_next().await.is_some() {}
    }

    /// How long to sleep when idle: until the next entry is due, at most the poll interval.
    async fn idle_sleep(&self) -> Duration {
        match self.queue.next_due().await {
            Ok(Some(due)) => (due - self.clock.now())
                .to_std()
                .unwrap_or(Duration::ZERO)
                .max(Duration::from_millis(5))
                .min(self.config.poll_interval),
            Ok(None) | Err(_) => self.config.poll_interval,
        }
    }

    /// Asks about one claimed entry and applies the answer. An entry that meets a closed gate
    /// waits only if the gate opens well within its lease; otherwise it goes back to the queue,
    /// due when the gate opens, so that no lease runs out while its holder waits.
    pub async fn handle(&self, entry: QueueEntry, stop: CancellationToken) {
        loop {
            let opens = match self.gate.try_acquire() {
                Ok(()) => break,
                Err(opens) => opens,
            };
            let wait = opens.saturating_duration_since(tokio::time::Instant::now());
            if wait > self.config.lease / 2 {
                let due = after(self.clock.now(), wait);
                if let Err(error) = self
                    .queue
                    .retry_later(&entry.order, due, RetryReason::RateLimited)
                    .await
                {
                    tracing::warn!(order = %entry.order, error = %error, "could not put an entry back");
                }
                return;
            }
            tokio::select! {
                () = stop.cancelled() => {
                    if let Err(error) = self.queue.release(std::slice::from_ref(&entry.order)).await {
                        tracing::warn!(order = %entry.order, error = %error, "could not release an entry on shutdown");
                    }
                    return;
                }
                () = tokio::time::sleep_until(opens) => {}
            }
        }
        let answer = self.client.order(&entry.order).await;
        let now = self.clock.now();
        let applied = match answer {
            Ok(AccrualAnswer::Known {
                status: AccrualStatus::Processed,
                accrual,
            }) => {
                self.stats.record(AnswerKind::Processed);
                self.queue
                    .finish(&entry.order, FinalOutcome::Processed(accrual))
                    .await
                    .map(|credited| {
                        if credited {
                            self.stats.record_credit(accrual);
                            tracing::info!(order = %entry.order, accrual = ?accrual.map(|a| a.to_string()), "order processed");
                        }
                    })
            }
            Ok(AccrualAnswer::Known {
                status: AccrualStatus::Invalid,
                ..
            }) => {
                self.stats.record(AnswerKind::Invalid);
                self.queue
                    .finish(&entry.order, FinalOutcome::Invalid)
                    .await
                    .map(|_| ())
            }
            Ok(AccrualAnswer::Known {
                status: AccrualStatus::Registered | AccrualStatus::Processing,
                ..
            }) => {
                self.stats.record(AnswerKind::Processing);
                self.queue
                    .retry_later(
                        &entry.order,
                        after(now, self.config.recheck_delay),
                        RetryReason::StillProcessing,
                    )
                    .await
            }
            Ok(AccrualAnswer::NotRegistered) => {
                self.stats.record(AnswerKind::NotRegistered);
                self.queue
                    .retry_later(
                        &entry.order,
                        after(now, self.config.recheck_delay),
                        RetryReason::NotRegistered,
                    )
                    .await
            }
            Ok(AccrualAnswer::RateLimited {
                retry_after,
                per_minute,
            }) => {
                self.stats.record(AnswerKind::RateLimited);
                tracing::warn!(
                    retry_after_s = retry_after.as_secs_f64(),
                    per_minute,
                    "accrual system rate limit hit; pausing"
                );
                self.gate.pause_for(retry_after);
                if let Some(limit) = per_minute {
                    self.gate.pace(limit);
                }
                self.queue
                    .retry_later(
                        &entry.order,
                        after(now, retry_after),
                        RetryReason::RateLimited,
                    )
                    .await
            }
            Err(error) => {
                self.stats.record(AnswerKind::Failed);
                let attempts = entry.attempts.saturating_add(1);
                let delay = backoff(&self.config, attempts, rand::rng().random());
                tracing::warn!(order = %entry.order, attempts, error = %error, delay_ms = delay.as_millis(), "accrual request failed; retrying later");
                self.queue
                    .retry_later(
                        &entry.order,
                        after(now, delay),
                        RetryReason::Failed(error.to_string()),
                    )
                    .await
            }
        };
        if let Err(error) = applied {
            // The lease runs out and the entry is asked about again; nothing is lost.
            tracing::warn!(order = %entry.order, error = %error, "could not record the accrual answer");
        }
    }
}

#[cfg(test)]
mod tests;
