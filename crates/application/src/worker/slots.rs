//! The worker's request slots: how many requests to the accrual system may be in flight at once,
//! and how many claimed entries the worker may hold (asked about, or answered and waiting for
//! their answer to be written).
//!
//! A slot is given back as soon as its request is answered, not once the answer is written:
//! answers are written in batches, and a request slot held through the write would keep the
//! next request waiting for the database instead of the accrual system.
//!
//! The slots open gradually (slow start): one request at a time at first, twice as many after
//! each [`RAMP_STEP`], up to the concurrency. The accrual system's limit is unknown until its
//! first 429, and every request in flight when the limit is reached is refused with one; a
//! worker that opened all its slots at once would meet the limit with dozens in flight. The ramp
//! starts again whenever the gate was closed or paced, since a limit was met, and when work
//! comes after the worker was idle for [`IDLE_RESTART`] (as TCP restarts its slow start after
//! an idle period), so that it counts from when the work began, not from when the process
//! started.

use std::{sync::Arc, time::Duration};

use tokio::{
    sync::{Notify, OwnedSemaphorePermit, Semaphore},
    time::Instant,
};

/// Entries held per request slot: those asked about, and answers waiting to be written.
const HELD_PER_SLOT: usize = 4;

/// How long the slots open stay at one width before it doubles.
pub(super) const RAMP_STEP: Duration = Duration::from_millis(50);

/// How long the worker must have had nothing to do for its slots to open gradually again.
pub(super) const IDLE_RESTART: Duration = Duration::from_secs(1);

/// The request slots of one worker.
#[derive(Debug)]
pub(super) struct Slots {
    requests: Arc<Semaphore>,
    concurrency: usize,
    held_limit: usize,
    freed: Arc<Notify>,
    /// When the slots started opening, and since when nothing was due (see the module's
    /// documentation).
    ramp: std::sync::Mutex<Ramp>,
}

#[derive(Debug)]
struct Ramp {
    from: Instant,
    idle_since: Option<Instant>,
}

/// One request in flight; its slot is free again when this is dropped.
#[derive(Debug)]
pub(super) struct Slot {
    permit: Option<OwnedSemaphorePermit>,
    freed: Arc<Notify>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        // The permit first, so that whoever the notification wakes finds the slot free.
        drop(self.permit.take());
        self.freed.notify_one();
    }
}

impl Slots {
    /// `concurrency` request slots (at least one).
    pub(super) fn new(concurrency: usize) -> Self {
        let concurrency = concurrency.max(1);
        Self {
            requests: Arc::new(Semaphore::new(concurrency)),
            concurrency,
            held_limit: concurrency.saturating_mul(HELD_PER_SLOT),
            freed: Arc::new(Notify::new()),
            ramp: std::sync::Mutex::new(Ramp {
                from: Instant::now(),
                idle_since: None,
            }),
        }
    }

    fn ramp(&self) -> std::sync::MutexGuard<'_, Ramp> {
        self.ramp
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How many slots are open now: one, doubling after each [`RAMP_STEP`] since the ramp
    /// started, at most the concurrency.
    pub(super) fn open(&self) -> usize {
        let steps = self.ramp().from.elapsed().as_nanos() / RAMP_STEP.as_nanos().max(1);
        let width = 1usize
            .checked_shl(u32::try_from(steps).unwrap_or(u32::MAX))
            .unwrap_or(usize::MAX);
        width.min(self.concurrency)
    }

    /// Starts the ramp again: a limit was met (the gate closed, or requests are paced).
    pub(super) fn restart_ramp(&self) {
        self.ramp().from = Instant::now();
    }

    /// Nothing more was due: the worker goes idle (unless it already was).
    pub(super) fn idle(&self) {
        self.ramp().idle_since.get_or_insert_with(Instant::now);
    }

    /// Work was claimed: the ramp starts again if the worker had been idle for
    /// [`IDLE_RESTART`].
    pub(super) fn busy(&self) {
        let mut ramp = self.ramp();
        if let Some(since) = ramp.idle_since.take() {
            if since.elapsed() >= IDLE_RESTART {
                ramp.from = Instant::now();
            }
        }
    }

    /// How many entries may be claimed now, given the `held` entries not finished yet.
    pub(super) fn free(&self, held: usize) -> usize {
        let in_use = self.concurrency - self.requests.available_permits();
        self.open()
            .saturating_sub(in_use)
            .min(self.held_limit.saturating_sub(held))
    }

    /// How many slots should be free before claiming again after a full claim, so that each
    /// claim takes many entries, not one.
    pub(super) fn refill(&self) -> usize {
        self.open().div_ceil(2).max(1)
    }

    /// Takes up to `wanted` free slots.
    pub(super) fn take(&self, wanted: usize) -> Vec<Slot> {
        std::iter::from_fn(|| self.requests.clone().try_acquire_owned().ok())
            .take(wanted)
            .map(|permit| Slot {
                permit: Some(permit),
                freed: self.freed.clone(),
            })
            .collect()
    }

    /// Completes when a slot has been given back (possibly one given back before the call).
    pub(super) async fn freed(&self) {
        self.freed.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_slot_is_free_again_once_its_request_is_over() {
        let slots = Slots::new(2);
        tokio::time::advance(RAMP_STEP).await;

        let taken = slots.take(5);

        assert_eq!(taken.len(), 2, "no more than the concurrency");
        assert_eq!(slots.free(2), 0);
        drop(taken);
        assert_eq!(
            slots.free(2),
            2,
            "answers waiting to be written hold no slot"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn answers_waiting_to_be_written_bound_what_may_be_claimed() {
        let slots = Slots::new(2);
        tokio::time::advance(RAMP_STEP).await;

        assert_eq!(slots.free(HELD_PER_SLOT * 2 - 1), 1);
        assert_eq!(slots.free(HELD_PER_SLOT * 2), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_slots_open_one_at_first_and_double_each_step_up_to_the_concurrency() {
        let slots = Slots::new(64);

        let mut widths = Vec::new();
        for _ in 0..8 {
            widths.push(slots.free(0));
            tokio::time::advance(RAMP_STEP).await;
        }

        assert_eq!(widths, [1, 2, 4, 8, 16, 32, 64, 64]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_ramp_starts_again_after_a_limit_was_met() {
        let slots = Slots::new(64);
        tokio::time::advance(RAMP_STEP * 10).await;
        assert_eq!(slots.free(0), 64);

        slots.restart_ramp();

        assert_eq!(slots.free(0), 1);
        tokio::time::advance(RAMP_STEP).await;
        assert_eq!(slots.free(0), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn requests_in_flight_count_against_the_open_slots() {
        let slots = Slots::new(64);
        tokio::time::advance(RAMP_STEP * 2).await;

        let taken = slots.take(3);

        assert_eq!(taken.len(), 3);
        assert_eq!(slots.free(3), 1, "four open, three in flight");
    }

    #[tokio::test(start_paused = true)]
    async fn work_after_a_long_idle_spell_opens_the_slots_gradually_again() {
        let slots = Slots::new(64);
        tokio::time::advance(RAMP_STEP * 10).await;

        slots.idle();
        tokio::time::advance(IDLE_RESTART / 2).await;
        slots.busy();
        let after_a_short_spell = slots.free(0);
        slots.idle();
        tokio::time::advance(IDLE_RESTART).await;
        slots.busy();
        let after_a_long_spell = slots.free(0);

        assert_eq!(after_a_short_spell, 64);
        assert_eq!(after_a_long_spell, 1);
    }

    #[tokio::test]
    async fn giving_a_slot_back_wakes_the_one_waiting_for_it() {
        let slots = Arc::new(Slots::new(1));
        let mut taken = slots.take(1);
        let waiting = tokio::spawn({
            let slots = slots.clone();
            async move {
                slots.freed().await;
                slots.free(0)
            }
        });

        tokio::task::yield_now().await;
        taken.clear();

        assert_eq!(waiting.await.expect("no panic"), 1);
    }
}
