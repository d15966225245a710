//! The sign-in throttle's policy. Failed sign-ins are counted by the [`SignInFailures`] port
//! for the whole deployment (every instance, across restarts) under two keys, each within a
//! window that starts at its first failure:
//!
//! - **a login from one client address**: guessing one customer's password from one place.
//!   Past the limit that address is refused for that login until the window ends; the same
//!   login from any other address is not, so an attacker cannot lock the owner out, and the
//!   owner's own mistakes stop them for at most one window;
//! - **a client address, whatever the login**: spraying a password over many logins. Past the
//!   limit that address is refused for every login until the window ends; no other address is.
//!
//! No key counts a login over every address: such a limit would hand anyone the power to lock
//! any customer out. Guessing from many addresses is bounded per address by both limits, and
//! beyond that by the cost of each password check.
//!
//! [`SignInFailures`]: crate::ports::throttle::SignInFailures

use std::time::Duration;

use crate::ports::throttle::{FailureCount, RecentFailures};

/// Limits of the throttle; a limit of 0 switches that key off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleConfig {
    /// Failed sign-ins allowed for one login from one client address within the window.
    pub max_failures_per_login: u32,
    /// Failed sign-ins allowed from one client address, whatever the login, within the window.
    pub max_failures_per_address: u32,
    /// The window, counted from the first failure.
    pub window: Duration,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            max_failures_per_login: 10,
            max_failures_per_address: 50,
            window: Duration::from_secs(300),
        }
    }
}

/// Decides whether a sign-in attempt may go on, from the failures counted against it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginThrottle {
    config: ThrottleConfig,
}

impl LoginThrottle {
    /// A throttle with the given limits.
    #[must_use]
    pub fn new(config: ThrottleConfig) -> Self {
        Self { config }
    }

    /// The window failures are counted in.
    #[must_use]
    pub fn window(&self) -> Duration {
        self.config.window
    }

    /// Whether the throttle counts anything at all.
    #[must_use]
    pub fn is_on(&self) -> bool {
        self.config.max_failures_per_login > 0 || self.config.max_failures_per_address > 0
    }

    /// `Err(retry_after)` when an attempt with these failures against it must be refused.
    ///
    /// # Errors
    /// The time until the attempt may be made.
    pub fn check(&self, failures: &RecentFailures) -> Result<(), Duration> {
        let over = |count: &FailureCount, limit: u32| {
            (limit > 0 && count.failures >= limit && !count.window_left.is_zero())
                .then_some(count.window_left)
        };
        let wait = [
            over(
                &failures.login_from_address,
                self.config.max_failures_per_login,
            ),
            over(&failures.address, self.config.max_failures_per_address),
        ]
        .into_iter()
        .flatten()
        .max();
        wait.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle(per_login: u32, per_address: u32) -> LoginThrottle {
        LoginThrottle::new(ThrottleConfig {
            max_failures_per_login: per_login,
            max_failures_per_address: per_address,
            window: Duration::from_secs(60),
        })
    }

    fn count(failures: u32, left: u64) -> FailureCount {
        FailureCount {
            failures,
            window_left: Duration::from_secs(left),
        }
    }

    #[test]
    fn a_login_from_an_address_is_refused_once_its_failures_reach_the_limit() {
        let throttle = throttle(3, 50);
        let below = RecentFailures {
            login_from_address: count(2, 40),
            address: count(2, 40),
        };
        let at = RecentFailures {
            login_from_address: count(3, 40),
            address: count(3, 40),
        };

        assert_eq!(throttle.check(&below), Ok(()));
        assert_eq!(throttle.check(&at), Err(Duration::from_secs(40)));
    }

    #[test]
    fn an_address_is_refused_once_its_failures_over_every_login_reach_the_limit() {
        let throttle = throttle(3, 4);
        let failures = RecentFailures {
            login_from_address: count(0, 0),
            address: count(4, 25),
        };

        assert_eq!(throttle.check(&failures), Err(Duration::from_secs(25)));
    }

    #[test]
    fn the_longer_wait_is_given_when_both_keys_refuse() {
        let throttle = throttle(3, 4);
        let failures = RecentFailures {
            login_from_address: count(3, 10),
            address: count(4, 30),
        };

        assert_eq!(throttle.check(&failures), Err(Duration::from_secs(30)));
    }

    #[test]
    fn a_count_whose_window_ended_refuses_nothing() {
        let throttle = throttle(3, 4);
        let failures = RecentFailures {
            login_from_address: count(9, 0),
            address: count(9, 0),
        };

        assert_eq!(throttle.check(&failures), Ok(()));
    }

    #[test]
    fn zero_limits_switch_the_throttle_off() {
        let throttle = throttle(0, 0);
        let failures = RecentFailures {
            login_from_address: count(100, 60),
            address: count(100, 60),
        };

        assert_eq!(throttle.check(&failures), Ok(()));
        assert!(!throttle.is_on());
    }
}
