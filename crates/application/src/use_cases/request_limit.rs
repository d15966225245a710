//! A fair share of an instance: each customer's requests are limited to a steady rate with a
//! burst above it (GCRA, the continuous form of a token bucket), so that one customer's flood
//! is refused at the door instead of taking the capacity every other customer needs.
//!
//! The limit is kept in memory by each instance and protects that instance's capacity: with N
//! instances behind a balancer that spreads a customer's requests, the customer's total is up
//! to N times the limit, as the capacity it protects is N times one instance's. Behind a
//! balancer that sends a customer to one instance, the customer gets one instance's limit.

use std::{
    num::NonZeroU32,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use domain::UserId;
use governor::{
    clock::{Clock, DefaultClock},
    middleware::{NoOpMiddleware, StateInformationMiddleware},
    state::keyed::DashMapStateStore,
    Quota, RateLimiter,
};

/// A customer's steady rate and burst; `None` switches the limit off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimitConfig {
    /// Requests per second a customer may keep up.
    pub per_second: NonZeroU32,
    /// Requests a customer may send at once after a pause.
    pub burst: NonZeroU32,
}

/// Where a customer stands against the limit: the IETF `RateLimit` fields' quantities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowance {
    /// Requests allowed in one window (the burst).
    pub quota: u32,
    /// The window the quota refills in, in whole seconds.
    pub window_seconds: u64,
    /// Requests left now.
    pub remaining: u32,
    /// Seconds until the whole quota is back.
    pub reset_seconds: u64,
}

/// A refused request: when the customer may send again, and where they stand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub retry_after: Duration,
    pub allowance: Allowance,
}

/// Keys kept before those that refilled are dropped (each is a few dozen bytes).
const PRUNE_EVERY: u64 = 1 << 16;

type Limiter<C> = RateLimiter<UserId, DashMapStateStore<UserId>, C, StateInformationMiddleware>;

/// Each customer's requests against [`RequestLimitConfig`], in this instance.
pub struct CustomerRequestLimit<C: Clock = DefaultClock> {
    config: RequestLimitConfig,
    limiter: Limiter<C>,
    checks: AtomicU64,
}

impl<C: Clock> std::fmt::Debug for CustomerRequestLimit<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CustomerRequestLimit")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl CustomerRequestLimit {
    /// The limit on the system's clock.
    #[must_use]
    pub fn new(config: RequestLimitConfig) -> Self {
        Self::with_clock(config, DefaultClock::default())
    }
}

impl<C: Clock> CustomerRequestLimit<C> {
    /// The limit on `clock`.
    pub fn with_clock(config: RequestLimitConfig, clock: C) -> Self {
        let quota = Quota::per_second(config.per_second).allow_burst(config.burst);
        Self {
            config,
            limiter: RateLimiter::<_, _, _, NoOpMiddleware<C::Instant>>::new(
                quota,
                DashMapStateStore::default(),
                clock,
            )
            .with_middleware::<StateInformationMiddleware>(),
            checks: AtomicU64::new(0),
        }
    }

    fn allowance(&self, remaining: u32) -> Allowance {
        let rate = u64::from(self.config.per_second.get());
        let quota = self.config.burst.get();
        Allowance {
            quota,
            window_seconds: u64::from(quota).div_ceil(rate).max(1),
            remaining,
            reset_seconds: u64::from(quota - remaining.min(quota)).div_ceil(rate),
        }
    }

    /// Counts a request of `customer`, or refuses it when they are over the limit.
    ///
    /// # Errors
    /// [`Refusal`] when the request must be refused (and is not counted).
    pub fn check(&self, customer: UserId) -> Result<Allowance, Refusal> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % PRUNE_EVERY == PRUNE_EVERY - 1 {
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
        }
        match self.limiter.check_key(&customer) {
            Ok(snapshot) => Ok(self.allowance(snapshot.remaining_burst_capacity())),
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.limiter.clock().now());
                Err(Refusal {
                    retry_after: wait,
                    allowance: self.allowance(0),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use governor::clock::FakeRelativeClock;

    use super::*;

    fn limit(
        per_second: u32,
        burst: u32,
    ) -> (CustomerRequestLimit<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        let config = RequestLimitConfig {
            per_second: NonZeroU32::new(per_second).expect("positive"),
            burst: NonZeroU32::new(burst).expect("positive"),
        };
        (
            CustomerRequestLimit::with_clock(config, clock.clone()),
            clock,
        )
    }

    #[test]
    fn a_customer_gets_the_burst_then_is_refused_until_a_request_is_earned() {
        let (limit, clock) = limit(10, 3);
        let remaining: Vec<u32> = (0..3)
            .map(|_| limit.check(UserId(1)).expect("within the burst").remaining)
            .collect();

        assert_eq!(remaining, [2, 1, 0]);
        let refusal = limit.check(UserId(1)).expect_err("over the limit");
        assert_eq!(refusal.retry_after, Duration::from_millis(100));
        clock.advance(Duration::from_millis(100));
        assert!(limit.check(UserId(1)).is_ok());
    }

    #[test]
    fn one_customers_flood_leaves_another_customer_untouched() {
        let (limit, _clock) = limit(10, 3);
        for _ in 0..100 {
            let _ = limit.check(UserId(1));
        }

        let other = limit.check(UserId(2)).expect("another customer is served");
        assert_eq!(other.remaining, 2);
    }

    #[test]
    fn the_allowance_says_the_quota_its_window_and_when_it_is_whole_again() {
        let (limit, _clock) = limit(50, 100);
        let allowance = limit.check(UserId(1)).expect("allowed");

        assert_eq!(
            allowance,
            Allowance {
                quota: 100,
                window_seconds: 2,
                remaining: 99,
                reset_seconds: 1,
            }
        );
        let refusal = {
            for _ in 0..99 {
                limit.check(UserId(1)).expect("within the burst");
            }
            limit.check(UserId(1)).expect_err("over")
        };
        assert_eq!(refusal.allowance.remaining, 0);
        assert_eq!(refusal.allowance.reset_seconds, 2);
    }
}
