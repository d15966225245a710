//! The worker's request slots: how many requests to the accrual system may be in flight at once,
//! and how many claimed entries the worker may hold (asked about, or answered and waiting for
//! their answer to be written).
//!
//! A slot is given back as soon as its request is answered, not once the answer is written:
//! answers are written in batches, and a request slot held through the write would keep the
//! next request waiting for the database instead of the accrual system.

use std::sync::Arc;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// Entries held per request slot: those asked about, and answers waiting to be written.
const HELD_PER_SLOT: usize = 4;

/// The request slots of one worker.
#[derive(Debug)]
pub(super) struct Slots {
    requests: Arc<Semaphore>,
    concurrency: usize,
    held_limit: usize,
    freed: Arc<Notify>,
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
        }
    }

    /// How many entries may be claimed now, given the `held` entries not finished yet.
    pub(super) fn free(&self, held: usize) -> usize {
        self.requests
            .available_permits()
            .min(self.held_limit.saturating_sub(held))
    }

    /// How many slots should be free before claiming again after a full claim, so that each
    /// claim takes many entries, not one.
    pub(super) fn refill(&self) -> usize {
        self.concurrency.div_ceil(2).max(1)
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

    #[test]
    fn a_slot_is_free_again_once_its_request_is_over() {
        let slots = Slots::new(2);

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

    #[test]
    fn answers_waiting_to_be_written_bound_what_may_be_claimed() {
        let slots = Slots::new(2);

        assert_eq!(slots.free(HELD_PER_SLOT * 2 - 1), 1);
        assert_eq!(slots.free(HELD_PER_SLOT * 2), 0);
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
