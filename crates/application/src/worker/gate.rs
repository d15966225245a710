//! The gate every request to the accrual system passes: a pause after a 429, and an even pace
//! under the limit the accrual system advertised, so that 429s stop recurring.
//!
//! The limit is the accrual system's, not one instance's, so with a [`ClusterGate`] the state is
//! shared by the whole cluster: a 429 seen by any instance pauses every instance, and while a
//! limit is known each request takes its slot from one shared schedule, so the cluster as a
//! whole stays under it however many instances run. While no limit is known and no pause is in
//! force, a request costs nothing: the shared state is read at most every [`SYNC_INTERVAL`],
//! not per request. Without a [`ClusterGate`] (tests, a single process) the same rules hold
//! within the process.

use std::{sync::Arc, sync::Mutex, time::Duration};

use tokio::time::Instant;

use crate::ports::gate::{ClusterGate, GateState, Slot};

#[derive(Debug)]
struct LocalState {
    paused_until: Option<Instant>,
    interval: Option<Duration>,
    /// When the pace was last confirmed by a 429; it lapses after [`PACE_LAPSES_AFTER`].
    paced_at: Option<Instant>,
    next_slot: Option<Instant>,
    paused_total: Duration,
    synced_at: Option<Instant>,
    /// The cluster's figures as last read.
    cluster: Option<GateState>,
}

/// Shared by every task of one worker.
pub struct RateGate {
    state: Mutex<LocalState>,
    cluster: Option<Arc<dyn ClusterGate>>,
    /// One request for a shared slot at a time from this process.
    slot_turn: tokio::sync::Mutex<()>,
    /// Woken when another instance announces a change of the shared state.
    changed: Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for RateGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateGate")
            .field("shared", &self.cluster.is_some())
            .field("state", &self.state)
            .finish()
    }
}

impl Default for RateGate {
    fn default() -> Self {
        Self::new()
    }
}

/// Requests are spaced slightly wider than the advertised limit strictly needs, so that a
/// sliding one-minute window on the other side never sees more than the limit.
const PACING_MARGIN: f64 = 1.02;

/// A pace not confirmed by another 429 for this long is dropped, so that a lifted or raised
/// limit is noticed; a limit still in force answers one more 429 and the pace returns.
pub const PACE_LAPSES_AFTER: Duration = Duration::from_secs(300);

/// How stale the shared state may be before a worker reads it again. A pause written by another
/// instance is noticed within this (and at once by a request under a pace).
pub const SYNC_INTERVAL: Duration = Duration::from_millis(50);

/// The spacing of requests that keeps under `per_minute` (none for 0).
#[must_use]
pub fn interval_for(per_minute: u32) -> Option<Duration> {
    (per_minute > 0).then(|| {
        Duration::from_secs(60)
            .div_f64(f64::from(per_minute))
            .mul_f64(PACING_MARGIN)
    })
}

impl RateGate {
    /// An open gate with no pace, for this process alone.
    #[must_use]
    pub fn new() -> Self {
        Self::with_cluster(None)
    }

    /// An open gate whose state every instance on `cluster` shares.
    #[must_use]
    pub fn shared(cluster: Arc<dyn ClusterGate>) -> Self {
        Self::with_cluster(Some(cluster))
    }

    fn with_cluster(cluster: Option<Arc<dyn ClusterGate>>) -> Self {
        Self {
            state: Mutex::new(LocalState {
                paused_until: None,
                interval: None,
                paced_at: None,
                next_slot: None,
                paused_total: Duration::ZERO,
                synced_at: None,
                cluster: None,
            }),
            cluster,
            slot_turn: tokio::sync::Mutex::new(()),
            changed: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// What to wake when another instance announces that it changed the shared state (a 429
    /// it received): the worker then reads the state at once instead of at its next sync, so
    /// that a pause stops this instance's requests within a round trip. Announcements only
    /// hasten it: without them the state is still read every [`SYNC_INTERVAL`].
    #[must_use]
    pub fn changes(&self) -> Arc<tokio::sync::Notify> {
        self.changed.clone()
    }

    /// Waits for an announced change and reads the shared state, until `stop` is cancelled.
    pub async fn follow_changes(&self, stop: tokio_util::sync::CancellationToken) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.changed.notified() => self.refresh().await,
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LocalState> {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if state
            .paced_at
            .is_some_and(|at| at + PACE_LAPSES_AFTER <= Instant::now())
        {
            state.interval = None;
            state.paced_at = None;
        }
        state
    }

    /// Closes the gate of this process for `duration` (extending, never shortening, a pause).
    pub fn pause_for(&self, duration: Duration) {
        let now = Instant::now();
        let until = now + duration;
        let mut state = self.lock();
        let current = state.paused_until.filter(|t| *t > now);
        let added = match current {
            Some(current) if current >= until => Duration::ZERO,
            Some(current) => until - current,
            None => duration,
        };
        state.paused_total += added;
        state.paused_until = Some(current.map_or(until, |c| c.max(until)));
    }

    /// Spaces this process's requests evenly to stay under `per_minute` (0 removes the pace).
    pub fn pace(&self, per_minute: u32) {
        let mut state = self.lock();
        state.interval = interval_for(per_minute);
        state.paced_at = Some(Instant::now());
    }

    /// Takes in the shared state: its pause (never shortening one known here) and its pace.
    fn adopt(&self, shared: GateState) {
        let now = Instant::now();
        let mut state = self.lock();
        if let Some(paused_for) = shared.paused_for {
            let until = now + paused_for;
            if state.paused_until.is_none_or(|t| t < until) {
                state.paused_until = Some(until);
            }
        }
        state.interval = shared.interval;
        state.paced_at = shared.interval.map(|_| now);
        state.synced_at = Some(now);
        state.cluster = Some(shared);
    }

    /// A 429 came back: pauses every request for `retry_after` and, when the answer stated
    /// the limit, paces requests under it, here at once and, with a shared gate, everywhere.
    pub async fn rate_limited(&self, retry_after: Duration, per_minute: Option<u32>) {
        self.pause_for(retry_after);
        if let Some(limit) = per_minute {
            self.pace(limit);
        }
        let Some(cluster) = &self.cluster else {
            return;
        };
        let interval = per_minute.and_then(interval_for);
        match cluster
            .record_rate_limit(retry_after, interval, PACE_LAPSES_AFTER)
            .await
        {
            Ok(shared) => self.adopt(shared),
            Err(error) => {
                super::storage_failed(
                    "could not share the accrual pause; pausing this instance only",
                    &error,
                );
            }
        }
    }

    /// Reads the shared state when the copy here is older than [`SYNC_INTERVAL`].
    pub async fn sync(&self) {
        if self.cluster.is_none() {
            return;
        }
        let stale = self
            .lock()
            .synced_at
            .is_none_or(|at| at.elapsed() >= SYNC_INTERVAL);
        if stale {
            self.refresh().await;
        }
    }

    /// Reads the shared state now, however fresh the copy here.
    pub async fn refresh(&self) {
        let Some(cluster) = &self.cluster else {
            return;
        };
        match cluster.read(PACE_LAPSES_AFTER).await {
            Ok(shared) => self.adopt(shared),
            Err(error) => {
                // Keep what is known here; try again after the interval.
                self.lock().synced_at = Some(Instant::now());
                tracing::debug!(%error, "could not read the shared accrual gate");
            }
        }
    }

    /// Total time requests have been paused: the cluster's, with a shared gate that has been
    /// read, this process's otherwise.
    #[must_use]
    pub fn paused_total(&self) -> Duration {
        let state = self.lock();
        state
            .cluster
            .map_or(state.paused_total, |shared| shared.paused_total)
    }

    /// 429s recorded by the whole cluster, when a shared gate has been read.
    #[must_use]
    pub fn cluster_rate_limited(&self) -> Option<u64> {
        self.lock().cluster.map(|shared| shared.rate_limited)
    }

    /// Whether a pause is in force now.
    #[must_use]
    pub fn is_paused(&self) -> bool {
        self.lock().paused_until.is_some_and(|t| t > Instant::now())
    }

    /// Whether requests are being spaced under an advertised limit.
    #[must_use]
    pub fn is_paced(&self) -> bool {
        self.lock().interval.is_some()
    }

    /// When the next request may be sent as far as this process knows; `None` means now.
    #[must_use]
    pub fn ready_at(&self) -> Option<Instant> {
        let now = Instant::now();
        let state = self.lock();
        let paused = state.paused_until.filter(|t| *t > now);
        let slot = state.next_slot.filter(|t| *t > now);
        paused.max(slot)
    }

    /// Takes the slot of a request if one may be sent now, by this process's state alone.
    ///
    /// # Errors
    /// The time when one may be sent.
    pub fn try_acquire(&self) -> Result<(), Instant> {
        let now = Instant::now();
        let mut state = self.lock();
        let paused = state.paused_until.filter(|t| *t > now);
        let slot = state.next_slot.filter(|t| *t > now);
        match paused.max(slot) {
            Some(until) => Err(until),
            None => {
                if let Some(interval) = state.interval {
                    state.next_slot = Some(now + interval);
                }
                Ok(())
            }
        }
    }

    /// Takes the slot of a request if one may be sent now: with a shared gate and a known limit
    /// from the shared schedule (one round trip), otherwise as [`RateGate::try_acquire`].
    ///
    /// # Errors
    /// The time when one may be sent.
    pub async fn try_admit(&self) -> Result<(), Instant> {
        let Some(cluster) = &self.cluster else {
            return self.try_acquire();
        };
        if let Some(until) = self.lock().paused_until.filter(|t| *t > Instant::now()) {
            return Err(until);
        }
        if !self.is_paced() {
            return Ok(());
        }
        let turn = self.slot_turn.lock().await;
        match cluster.take_slot(PACE_LAPSES_AFTER).await {
            Ok(Slot::Granted) => Ok(()),
            Ok(Slot::Wait { wait, paused }) => {
                let until = Instant::now() + wait;
                if paused {
                    let mut state = self.lock();
                    if state.paused_until.is_none_or(|t| t < until) {
                        state.paused_until = Some(until);
                    }
                }
                Err(until)
            }
            Err(error) => {
                super::storage_failed(
                    "could not take a shared accrual slot; pacing this instance alone",
                    &error,
                );
                drop(turn);
                self.try_acquire()
            }
        }
    }

    /// Waits until a request may be sent, and takes its slot.
    pub async fn acquire(&self) {
        while let Err(until) = self.try_admit().await {
            tokio::time::sleep_until(until).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::{gate::MockClusterGate, RepositoryError};

    fn paced_every(interval: Duration) -> GateState {
        GateState {
            interval: Some(interval),
            ..GateState::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_change_announced_by_another_instance_is_read_at_once() {
        let mut cluster = MockClusterGate::new();
        let mut reads = 0;
        cluster.expect_read().times(2).returning(move |_| {
            reads += 1;
            Ok(if reads == 1 {
                GateState::default()
            } else {
                GateState {
                    paused_for: Some(Duration::from_secs(30)),
                    ..GateState::default()
                }
            })
        });
        let gate = Arc::new(RateGate::shared(Arc::new(cluster)));
        gate.sync().await;
        let stop = tokio_util::sync::CancellationToken::new();
        let following = tokio::spawn({
            let gate = gate.clone();
            let stop = stop.clone();
            async move { gate.follow_changes(stop).await }
        });

        // Another instance recorded a 429 and announced it, well within the sync interval.
        gate.changes().notify_one();
        tokio::task::yield_now().await;
        tokio::task::yield_now().await;

        assert!(gate.is_paused(), "the pause is known before the next sync");
        assert!(gate.try_admit().await.is_err());
        stop.cancel();
        following.await.expect("no panic");
    }

    #[tokio::test(start_paused = true)]
    async fn with_no_limit_known_requests_cost_no_round_trip_and_the_state_is_read_at_most_every_sync_interval(
    ) {
        let mut cluster = MockClusterGate::new();
        cluster
            .expect_read()
            .times(2)
            .returning(|_| Ok(GateState::default()));
        cluster.expect_take_slot().never();
        let gate = RateGate::shared(Arc::new(cluster));

        for _ in 0..1000 {
            gate.sync().await;
            assert_eq!(gate.try_admit().await, Ok(()));
        }
        tokio::time::advance(SYNC_INTERVAL).await;
        gate.sync().await;
        gate.sync().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_recorded_by_another_instance_closes_this_gate_at_the_next_sync() {
        let mut cluster = MockClusterGate::new();
        cluster.expect_read().times(1).returning(|_| {
            Ok(GateState {
                paused_for: Some(Duration::from_secs(3)),
                ..GateState::default()
            })
        });
        cluster.expect_take_slot().never();
        let gate = RateGate::shared(Arc::new(cluster));
        let start = Instant::now();

        gate.sync().await;

        assert!(gate.is_paused());
        assert_eq!(gate.ready_at(), Some(start + Duration::from_secs(3)));
        assert_eq!(gate.try_admit().await, Err(start + Duration::from_secs(3)));
    }

    #[tokio::test(start_paused = true)]
    async fn under_a_known_limit_each_request_takes_its_slot_from_the_shared_schedule() {
        let mut cluster = MockClusterGate::new();
        cluster
            .expect_read()
            .returning(|_| Ok(paced_every(Duration::from_secs(1))));
        let mut answers = vec![
            Slot::Wait {
                wait: Duration::from_millis(400),
                paused: false,
            },
            Slot::Granted,
        ];
        cluster.expect_take_slot().times(2).returning(move |lapse| {
            assert_eq!(lapse, PACE_LAPSES_AFTER);
            Ok(answers.pop().expect("two answers"))
        });
        let gate = RateGate::shared(Arc::new(cluster));
        gate.sync().await;
        assert!(gate.is_paced());
        let start = Instant::now();

        assert_eq!(gate.try_admit().await, Ok(()));
        assert_eq!(
            gate.try_admit().await,
            Err(start + Duration::from_millis(400))
        );
        assert!(!gate.is_paused(), "waiting for the pace is not a pause");
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_here_is_recorded_for_every_instance_with_the_pace_it_implies() {
        let mut cluster = MockClusterGate::new();
        cluster
            .expect_record_rate_limit()
            .withf(|retry_after, interval, lapse| {
                *retry_after == Duration::from_secs(7)
                    && *interval == Some(Duration::from_millis(1020))
                    && *lapse == PACE_LAPSES_AFTER
            })
            .times(1)
            .returning(|_, interval, _| {
                Ok(GateState {
                    paused_for: Some(Duration::from_secs(9)),
                    interval,
                    paused_total: Duration::from_secs(20),
                    rate_limited: 4,
                })
            });
        let gate = RateGate::shared(Arc::new(cluster));
        let start = Instant::now();

        gate.rate_limited(Duration::from_secs(7), Some(60)).await;

        // Another instance's longer pause is kept; the totals are the cluster's.
        assert_eq!(gate.ready_at(), Some(start + Duration::from_secs(9)));
        assert!(gate.is_paced());
        assert_eq!(gate.paused_total(), Duration::from_secs(20));
        assert_eq!(gate.cluster_rate_limited(), Some(4));
    }

    #[tokio::test(start_paused = true)]
    async fn when_the_shared_schedule_cannot_be_reached_this_instance_paces_itself() {
        let mut cluster = MockClusterGate::new();
        cluster
            .expect_read()
            .returning(|_| Ok(paced_every(Duration::from_secs(1))));
        cluster
            .expect_take_slot()
            .returning(|_| Err(RepositoryError::Unavailable("database down".into())));
        let gate = RateGate::shared(Arc::new(cluster));
        gate.sync().await;
        let start = Instant::now();

        assert_eq!(gate.try_admit().await, Ok(()));
        assert_eq!(gate.try_admit().await, Err(start + Duration::from_secs(1)));
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_gate_lets_requests_through_at_once() {
        let gate = RateGate::new();
        let start = Instant::now();

        for _ in 0..100 {
            gate.acquire().await;
        }

        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_holds_every_request_until_it_ends() {
        let gate = RateGate::new();
        gate.pause_for(Duration::from_secs(7));
        let start = Instant::now();

        gate.acquire().await;

        assert_eq!(start.elapsed(), Duration::from_secs(7));
        assert_eq!(gate.paused_total(), Duration::from_secs(7));
    }

    #[tokio::test(start_paused = true)]
    async fn a_shorter_pause_does_not_cut_a_longer_one_short() {
        let gate = RateGate::new();
        gate.pause_for(Duration::from_secs(10));
        gate.pause_for(Duration::from_secs(3));
        let start = Instant::now();

        gate.acquire().await;

        assert_eq!(start.elapsed(), Duration::from_secs(10));
        assert_eq!(gate.paused_total(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_pace_spaces_requests_under_the_advertised_limit() {
        let gate = RateGate::new();
        gate.pace(60);
        let start = Instant::now();

        for _ in 0..11 {
            gate.acquire().await;
        }

        // 10 intervals of 1.02 s each: never more than 60 in any minute.
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_millis(10_200), "{elapsed:?}");
        assert!(elapsed < Duration::from_millis(10_300), "{elapsed:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn try_acquire_tells_when_the_gate_opens_without_taking_a_slot() {
        let gate = RateGate::new();
        gate.pace(60);
        assert_eq!(gate.try_acquire(), Ok(()));

        let opens = gate
            .try_acquire()
            .expect_err("the next slot is a second away");

        assert_eq!(opens - Instant::now(), Duration::from_millis(1020));
        assert_eq!(gate.ready_at(), Some(opens));
        tokio::time::advance(Duration::from_millis(1020)).await;
        assert_eq!(gate.ready_at(), None);
        assert_eq!(gate.try_acquire(), Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_pace_lapses_when_no_429_confirms_it() {
        let gate = RateGate::new();
        gate.pace(1);
        assert!(gate.is_paced());

        tokio::time::advance(PACE_LAPSES_AFTER).await;

        assert!(!gate.is_paced());
        let start = Instant::now();
        for _ in 0..10 {
            gate.acquire().await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_paced_gate_admits_at_most_the_limit_in_any_minute() {
        let gate = RateGate::new();
        gate.pace(10);
        let start = Instant::now();
        let mut times = Vec::new();

        for _ in 0..30 {
            gate.acquire().await;
            times.push(start.elapsed());
        }

        for (i, t) in times.iter().enumerate() {
            let in_window = times[i..]
                .iter()
                .filter(|u| **u < *t + Duration::from_secs(60))
                .count();
            assert!(
                in_window <= 10,
                "{in_window} requests within a minute from {t:?}"
            );
        }
    }
}
