//! The gate every request to the accrual system passes: a global pause after a 429, and an
//! even pace under the limit the accrual system advertised, so that 429s stop recurring.

use std::{sync::Mutex, time::Duration};

use tokio::time::Instant;

#[derive(Debug)]
struct GateState {
    paused_until: Option<Instant>,
    interval: Option<Duration>,
    /// When the pace was last confirmed by a 429; it lapses after [`PACE_LAPSES_AFTER`].
    paced_at: Option<Instant>,
    next_slot: Option<Instant>,
    paused_total: Duration,
}

/// Shared by every task of one worker.
#[derive(Debug)]
pub struct RateGate {
    state: Mutex<GateState>,
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

impl RateGate {
    /// An open gate with no pace.
    #[must_use]
    pub fn new() -> Self {
        Self {
            state: Mutex::new(GateState {
                paused_until: None,
                interval: None,
                paced_at: None,
                next_slot: None,
                paused_total: Duration::ZERO,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
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

    /// Closes the gate for everyone for `duration` (extending, never shortening, a pause).
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

    /// Spaces requests evenly to stay under `per_minute` (0 removes the pace).
    pub fn pace(&self, per_minute: u32) {
        let mut state = self.lock();
        state.interval = (per_minute > 0).then(|| {
            Duration::from_secs(60)
                .div_f64(f64::from(per_minute))
                .mul_f64(PACING_MARGIN)
        });
        state.paced_at = Some(Instant::now());
    }

    /// Total time the gate has been closed by pauses.
    #[must_use]
    pub fn paused_total(&self) -> Duration {
        self.lock().paused_total
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

    /// When the next request may be sent; `None` means now.
    #[must_use]
    pub fn ready_at(&self) -> Option<Instant> {
        let now = Instant::now();
        let state = self.lock();
        let paused = state.paused_until.filter(|t| *t > now);
        let slot = state.next_slot.filter(|t| *t > now);
        paused.max(slot)
    }

    /// Takes the slot of a request if one may be sent now.
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

    /// Waits until a request may be sent, and takes its slot.
    pub async fn acquire(&self) {
        while let Err(until) = self.try_acquire() {
            tokio::time::sleep_until(until).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
