//! The rate limit of the order-status endpoint: a sliding window over the last minute that
//! remembers when each accepted request arrived.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The length of the window the limit counts requests in.
pub const WINDOW: Duration = Duration::from_secs(60);

/// At most `limit` accepted requests in any `window`; rejected requests take no slot.
#[derive(Debug, Clone)]
pub struct SlidingWindow {
    limit: u32,
    window: Duration,
    accepted: VecDeque<Instant>,
}

/// A request over the limit was refused; another is accepted once `retry_after` has passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejected {
    /// How long until the oldest accepted request leaves the window.
    pub retry_after: Duration,
}

impl Rejected {
    /// `retry_after` in whole seconds, rounded up and at least 1, as `Retry-After` states it.
    #[must_use]
    pub fn retry_after_secs(&self) -> u64 {
        let whole = self.retry_after.as_secs();
        let rounded_up = if self.retry_after.subsec_nanos() > 0 {
            whole + 1
        } else {
            whole
        };
        rounded_up.max(1)
    }
}

impl SlidingWindow {
    /// A window admitting `limit` requests per `window`. A `limit` of 0 admits nothing: callers
    /// that want "unlimited" do not create a window at all.
    #[must_use]
    pub fn new(limit: u32, window: Duration) -> Self {
        Self {
            limit,
            window,
            accepted: VecDeque::with_capacity(usize::try_from(limit).unwrap_or(0).min(4096)),
        }
    }

    /// The configured number of requests per window.
    #[must_use]
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// Accepts a request arriving at `now` and takes a slot for it, or refuses it without
    /// taking one. `now` must not go backwards between calls.
    ///
    /// # Errors
    /// [`Rejected`] when `limit` requests were already accepted within the window before `now`.
    pub fn try_acquire(&mut self, now: Instant) -> Result<(), Rejected> {
        while let Some(&oldest) = self.accepted.front() {
            if now.saturating_duration_since(oldest) >= self.window {
                self.accepted.pop_front();
            } else {
                break;
            }
        }
        if self.accepted.len() < usize::try_from(self.limit).unwrap_or(usize::MAX) {
            self.accepted.push_back(now);
            return Ok(());
        }
        let retry_after = self.accepted.front().map_or(self.window, |&oldest| {
            self.window
                .saturating_sub(now.saturating_duration_since(oldest))
        });
        Err(Rejected { retry_after })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_limit_requests_then_rejects() {
        let start = Instant::now();
        let mut window = SlidingWindow::new(3, WINDOW);
        for i in 0..3 {
            assert_eq!(
                window.try_acquire(start + Duration::from_secs(i)),
                Ok(()),
                "request {i}"
            );
        }
        let rejected = window
            .try_acquire(start + Duration::from_secs(3))
            .expect_err("the fourth request is over the limit");
        assert_eq!(rejected.retry_after, Duration::from_secs(57));
        assert_eq!(rejected.retry_after_secs(), 57);
    }

    #[test]
    fn slot_frees_when_the_oldest_request_leaves_the_window() {
        let start = Instant::now();
        let mut window = SlidingWindow::new(2, WINDOW);
        assert!(window.try_acquire(start).is_ok());
        assert!(window.try_acquire(start + Duration::from_secs(30)).is_ok());
        assert!(window
            .try_acquire(start + Duration::from_millis(59_999))
            .is_err());
        assert!(window.try_acquire(start + Duration::from_secs(60)).is_ok());
        let rejected = window
            .try_acquire(start + Duration::from_secs(61))
            .expect_err("two requests in the last minute");
        assert_eq!(rejected.retry_after, Duration::from_secs(29));
    }

    #[test]
    fn rejected_requests_take_no_slot() {
        let start = Instant::now();
        let mut window = SlidingWindow::new(1, WINDOW);
        assert!(window.try_acquire(start).is_ok());
        for second in 1..60 {
            assert!(window
                .try_acquire(start + Duration::from_secs(second))
                .is_err());
        }
        assert!(window.try_acquire(start + Duration::from_secs(60)).is_ok());
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds_and_is_at_least_one() {
        let secs = |retry_after| Rejected { retry_after }.retry_after_secs();
        assert_eq!(secs(Duration::from_millis(1)), 1);
        assert_eq!(secs(Duration::ZERO), 1);
        assert_eq!(secs(Duration::from_millis(1000)), 1);
        assert_eq!(secs(Duration::from_millis(1001)), 2);
        assert_eq!(secs(Duration::from_millis(59_500)), 60);
        assert_eq!(secs(Duration::from_secs(60)), 60);
    }

    #[test]
    fn retry_after_counts_from_the_oldest_accepted_request() {
        let start = Instant::now();
        let mut window = SlidingWindow::new(2, WINDOW);
        assert!(window.try_acquire(start).is_ok());
        assert!(window.try_acquire(start + Duration::from_secs(50)).is_ok());
        let rejected = window
            .try_acquire(start + Duration::from_millis(50_250))
            .expect_err("over the limit");
        assert_eq!(rejected.retry_after, Duration::from_millis(9_750));
        assert_eq!(rejected.retry_after_secs(), 10);
    }
}
