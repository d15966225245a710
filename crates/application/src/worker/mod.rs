//! The accrual worker: takes due entries from the durable queue, asks the accrual system about
//! each, and applies the answer, so that every uploaded order is credited exactly once.
//!
//! Exactly-once crediting rests on the store (a final outcome applies only from a non-final
//! status, in one transaction); this module decides what to ask, when, and how fast.

mod apply;
mod gate;
mod slots;
mod stats;

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use rand::Rng;
use tokio::{sync::Notify, task::JoinSet};
use tokio_util::sync::CancellationToken;

pub use gate::{interval_for, RateGate, PACE_LAPSES_AFTER, SYNC_INTERVAL};
pub use stats::{AnswerKind, WorkerStats};

use crate::ports::{
    accrual::{AccrualAnswer, AccrualClient},
    clock::Clock,
    queue::{AccrualQueue, ClaimOrder, FinalOutcome, QueueEntry, Retry, RetryReason},
};
use apply::{apply_outcomes, Applier, Outcome};
use domain::AccrualStatus;
use slots::Slots;

/// How the worker paces itself.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Requests to the accrual system in flight at once.
    pub concurrency: usize,
    /// Longest sleep when nothing wakes the worker.
    pub poll_interval: Duration,
    /// Delay before asking again about an order being computed, and the first delay for an
    /// order the accrual system does not know yet.
    pub recheck_delay: Duration,
    /// Longest delay for an order the accrual system does not know yet: the delay doubles
    /// from `recheck_delay` with each such answer in a row, up to this.
    pub unknown_recheck_cap: Duration,
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
            concurrency: 64,
            poll_interval: Duration::from_secs(1),
            recheck_delay: Duration::from_millis(500),
            unknown_recheck_cap: Duration::from_secs(600),
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
    doubling(config.backoff_base, attempts, config.backoff_cap)
        .mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

/// The delay before asking again about an order the accrual system has now answered `checks`
/// times in a row that it does not know: `recheck_delay · 2^(checks-1)`, at most
/// `unknown_recheck_cap`. Never given up: a shop may register an order late.
#[must_use]
pub fn unknown_recheck(config: &WorkerConfig, checks: u32) -> Duration {
    doubling(config.recheck_delay, checks, config.unknown_recheck_cap)
}

fn doubling(base: Duration, times: u32, cap: Duration) -> Duration {
    let exponent = times.saturating_sub(1).min(30);
    base.saturating_mul(1u32 << exponent).min(cap)
}

/// What a turn under the pace came to.
enum Turn {
    /// An entry was claimed and its request sent.
    Served,
    /// No slot before this time.
    Wait(tokio::time::Instant),
    /// Nothing is due (or it was taken by another instance).
    NothingDue,
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
    /// A worker over its ports, with a gate of its own process.
    #[must_use]
    pub fn new(
        queue: Arc<dyn AccrualQueue>,
        client: Arc<dyn AccrualClient>,
        clock: Arc<dyn Clock>,
        config: WorkerConfig,
    ) -> Self {
        Self::with_gate(queue, client, clock, Arc::new(RateGate::new()), config)
    }

    /// A worker over its ports that passes `gate` (shared with other instances, see
    /// [`RateGate::shared`]).
    #[must_use]
    pub fn with_gate(
        queue: Arc<dyn AccrualQueue>,
        client: Arc<dyn AccrualClient>,
        clock: Arc<dyn Clock>,
        gate: Arc<RateGate>,
        config: WorkerConfig,
    ) -> Self {
        Self {
            queue,
            client,
            clock,
            gate,
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
    ///
    /// While requests are plentiful (no limit known) it claims as many entries as it has free
    /// request slots, earliest due first, and answers are applied in batches. While they are
    /// scarce (a limit is known), it claims one entry at a time, customers in turn
    /// ([`ClaimOrder::FairShares`]), and only once that entry has its slot does it claim the
    /// next, so that no entry waits at the gate ahead of another customer's.
    pub async fn run(self, wake: Arc<Notify>, stop: CancellationToken) {
        let (applier, applying) = Applier::start(self.queue.clone(), self.stats.clone());
        let following = tokio::spawn({
            let gate = self.gate.clone();
            let stop = stop.clone();
            async move { gate.follow_changes(stop).await }
        });
        let mut in_flight: JoinSet<()> = JoinSet::new();
        let slots = Slots::new(self.config.concurrency);
        loop {
            while in_flight.try_join_next().is_some() {}
            if stop.is_cancelled() {
                break;
            }
            self.gate.sync().await;
            if slots.free(in_flight.len()) == 0 {
                // Every request slot is busy (or enough answers wait to be written): nothing
                // can be claimed before one frees, so there is no point asking the queue when
                // the next entry is due.
                tokio::select! {
                    () = stop.cancelled() => {}
                    _ = in_flight.join_next() => {}
                    () = slots.freed() => {}
                }
                continue;
            }
            // Claim nothing while the gate is closed: a claimed entry would only wait with
            // its lease running.
            if let Some(opens) = self.gate.ready_at() {
                tokio::select! {
                    () = stop.cancelled() => {}
                    () = tokio::time::sleep_until(opens) => {}
                }
                // A limit was met: the slots open gradually from when the gate opens.
                slots.restart_ramp();
                continue;
            }
            if self.gate.is_paced() {
                slots.restart_ramp();
                match self
                    .serve_one_in_turn(&applier, &slots, &mut in_flight)
                    .await
                {
                    Turn::Served => continue,
                    Turn::Wait(opens) => {
                        tokio::select! {
                            () = stop.cancelled() => {}
                            () = tokio::time::sleep_until(opens) => {}
                        }
                        continue;
                    }
                    Turn::NothingDue => {}
                }
            } else {
                let mut taken = slots.take(slots.free(in_flight.len()));
                let free = taken.len();
                let claimed = self
                    .claim(
                        u32::try_from(free).unwrap_or(u32::MAX),
                        ClaimOrder::DueFirst,
                    )
                    .await;
                let count = claimed.len();
                if count > 0 {
                    slots.busy();
                }
                // Slots left over when fewer entries were due go back.
                for (entry, slot) in claimed.into_iter().zip(taken.drain(..)) {
                    let worker = self.clone();
                    let stop = stop.clone();
                    let applier = applier.clone();
                    in_flight.spawn(async move {
                        if worker.admit(&entry, &stop).await {
                            let outcome = worker.ask(&entry).await;
                            // The request is over: its slot goes to the next entry while this
                            // answer waits to be written with the others.
                            drop(slot);
                            applier.apply(entry.order, outcome).await;
                        }
                    });
                }
                if count > 0 && count == free {
                    // There may be more due work: go round once half the slots are free again,
                    // so that each claim takes many entries, not one.
                    while slots.free(in_flight.len()) < slots.refill() {
                        tokio::select! {
                            () = stop.cancelled() => break,
                            _ = in_flight.join_next() => {}
                            () = slots.freed() => {}
                        }
                    }
                    continue;
                }
            }
            slots.idle();
            let sleep = self.idle_sleep().await;
            tokio::select! {
                () = stop.cancelled() => {}
                () = wake.notified() => {}
                () = tokio::time::sleep(sleep) => {}
            }
        }
        while in_flight.join_next().await.is_some() {}
        drop(applier);
        if let Err(error) = applying.await {
            tracing::error!(%error, "the accrual answer writer failed");
        }
        if let Err(error) = following.await {
            tracing::error!(%error, "following the shared accrual gate failed");
        }
    }

    /// Claims up to `limit` due entries in `order`; none when the queue cannot be read.
    ///
    /// Entries beyond `limit` have no request slot: they are released at once, so that they
    /// do not wait out their leases unasked.
    async fn claim(&self, limit: u32, order: ClaimOrder) -> Vec<QueueEntry> {
        let mut entries = match self
            .queue
            .claim(limit, self.clock.now(), self.config.lease, order)
            .await
        {
            Ok(entries) => entries,
            Err(error) => {
                storage_failed("could not claim queued orders", &error);
                return Vec::new();
            }
        };
        let extra = entries.split_off(entries.len().min(limit as usize));
        if !extra.is_empty() {
            tracing::warn!(
                asked = limit,
                leased = entries.len() + extra.len(),
                "the queue leased more entries than asked for; releasing the rest"
            );
            let orders: Vec<_> = extra.into_iter().map(|entry| entry.order).collect();
            if let Err(error) = self.queue.release(&orders).await {
                tracing::warn!(error = %error, "could not release entries claimed beyond the limit");
            }
        }
        entries
    }

    /// Under a pace: takes the next request slot first, and only then claims the entry it goes
    /// to, customers in turn, so that the entry chosen is the one served now and no entry
    /// waits at the gate with its lease running (or is counted as served without being
    /// asked).
    async fn serve_one_in_turn(
        &self,
        applier: &Applier,
        slots: &Slots,
        in_flight: &mut JoinSet<()>,
    ) -> Turn {
        // The loop calls this only with a request slot free.
        let Some(slot) = slots.take(1).pop() else {
            return Turn::NothingDue;
        };
        // A slot of the shared schedule is worth taking only when an entry is due.
        match self.queue.next_due(self.clock.now()).await {
            Ok(Some(due)) if due <= self.clock.now() => {}
            Ok(_) => return Turn::NothingDue,
            Err(error) => {
                storage_failed("could not read the queue", &error);
                return Turn::NothingDue;
            }
        }
        if let Err(opens) = self.gate.try_admit().await {
            return Turn::Wait(opens);
        }
        let Some(entry) = self
            .claim(1, ClaimOrder::FairShares)
            .await
            .into_iter()
            .next()
        else {
            // Another instance took what was due: the slot goes unused.
            return Turn::NothingDue;
        };
        let worker = self.clone();
        let applier = applier.clone();
        in_flight.spawn(async move {
            let outcome = worker.ask(&entry).await;
            drop(slot);
            applier.apply(entry.order, outcome).await;
        });
        Turn::Served
    }

    /// How long to sleep when idle: until the next entry is due, at most the poll interval.
    async fn idle_sleep(&self) -> Duration {
        match self.queue.next_due(self.clock.now()).await {
            Ok(Some(due)) => (due - self.clock.now())
                .to_std()
                .unwrap_or(Duration::ZERO)
                .max(Duration::from_millis(5))
                .min(self.config.poll_interval),
            Ok(None) | Err(_) => self.config.poll_interval,
        }
    }

    /// Asks about one claimed entry and applies the answer.
    pub async fn handle(&self, entry: QueueEntry, stop: CancellationToken) {
        if self.admit(&entry, &stop).await {
            let outcome = self.ask(&entry).await;
            apply_outcomes(&*self.queue, &self.stats, vec![(entry.order, outcome)]).await;
        }
    }

    /// Waits at the gate for the entry's request slot. An entry that meets a closed gate waits
    /// only if the gate opens well within its lease; otherwise it goes back to the queue, due
    /// when the gate opens, so that no lease runs out while its holder waits. Returns whether
    /// the request may be sent; on stop the entry is released.
    async fn admit(&self, entry: &QueueEntry, stop: &CancellationToken) -> bool {
        loop {
            let opens = match self.gate.try_admit().await {
                Ok(()) => return true,
                Err(opens) => opens,
            };
            let wait = opens.saturating_duration_since(tokio::time::Instant::now());
            if wait > self.config.lease / 2 {
                let due = after(self.clock.now(), wait);
                let back = Retry {
                    order: entry.order.clone(),
                    due_at: due,
                    reason: RetryReason::RateLimited,
                };
                if let Err(error) = self.queue.retry_many(std::slice::from_ref(&back)).await {
                    tracing::warn!(order = %entry.order, error = %error, "could not put an entry back");
                }
                return false;
            }
            tokio::select! {
                () = stop.cancelled() => {
                    if let Err(error) = self.queue.release(std::slice::from_ref(&entry.order)).await {
                        tracing::warn!(order = %entry.order, error = %error, "could not release an entry on shutdown");
                    }
                    return false;
                }
                () = tokio::time::sleep_until(opens) => {}
            }
        }
    }

    /// Asks the accrual system about an admitted entry and decides what becomes of it.
    async fn ask(&self, entry: &QueueEntry) -> Outcome {
        let answer = self.client.order(&entry.order).await;
        let now = self.clock.now();
        let retry = |delay: Duration, reason: RetryReason| Outcome::Retry {
            due_at: after(now, delay),
            reason,
        };
        match answer {
            Ok(AccrualAnswer::Known {
                status: AccrualStatus::Processed,
                accrual,
            }) => {
                self.stats.record(AnswerKind::Processed);
                Outcome::Final(FinalOutcome::Processed(accrual))
            }
            Ok(AccrualAnswer::Known {
                status: AccrualStatus::Invalid,
                ..
            }) => {
                self.stats.record(AnswerKind::Invalid);
                Outcome::Final(FinalOutcome::Invalid)
            }
            Ok(AccrualAnswer::Known {
                status: AccrualStatus::Registered | AccrualStatus::Processing,
                ..
            }) => {
                self.stats.record(AnswerKind::Processing);
                retry(self.config.recheck_delay, RetryReason::StillProcessing)
            }
            Ok(AccrualAnswer::NotRegistered) => {
                self.stats.record(AnswerKind::NotRegistered);
                let checks = entry.unknown_checks.saturating_add(1);
                retry(
                    unknown_recheck(&self.config, checks),
                    RetryReason::NotRegistered,
                )
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
                self.gate.rate_limited(retry_after, per_minute).await;
                retry(retry_after, RetryReason::RateLimited)
            }
            Err(error) => {
                self.stats.record(AnswerKind::Failed);
                let attempts = entry.attempts.saturating_add(1);
                let delay = backoff(&self.config, attempts, rand::rng().random());
                tracing::warn!(order = %entry.order, attempts, error = %error, delay_ms = delay.as_millis(), "accrual request failed; retrying later");
                retry(delay, RetryReason::Failed(error.to_string()))
            }
        }
    }
}

/// Logs a failure of the worker's storage: a warning, unless the database is merely out of
/// reach, which the storage adapter reports once per outage (its beginning and its end); then
/// at debug level, so that an outage does not write a line per step of the worker.
pub(crate) fn storage_failed(what: &str, error: &crate::RepositoryError) {
    if matches!(error, crate::RepositoryError::Unavailable(_)) {
        tracing::debug!(%error, "{what}");
    } else {
        tracing::warn!(%error, "{what}");
    }
}

#[cfg(test)]
mod tests;
