//! Sign-in throttling: after too many failed sign-ins for one login, or from one client
//! address, within a window, further attempts are refused until the window ends, so that
//! passwords cannot be guessed by brute force. The state is kept in memory, per instance.

use std::{collections::HashMap, net::IpAddr, sync::Mutex, time::Duration};

use tokio::time::Instant;

/// Limits of the throttle; a limit of 0 switches that key off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleConfig {
    /// Failed sign-ins allowed for one login within the window.
    pub max_failures_per_login: u32,
    /// Failed sign-ins allowed from one client address within the window.
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

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Login(String),
    Address(IpAddr),
}

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    failures: u32,
}

/// Entries are pruned when the map grows past this many keys.
const PRUNE_ABOVE: usize = 10_000;

/// Counts failed sign-ins per login and per client address.
#[derive(Debug)]
pub struct LoginThrottle {
    config: ThrottleConfig,
    windows: Mutex<HashMap<Key, Window>>,
}

impl LoginThrottle {
    /// A throttle with the given limits.
    #[must_use]
    pub fn new(config: ThrottleConfig) -> Self {
        Self {
            config,
            windows: Mutex::new(HashMap::new()),
        }
    }

    fn keys(&self, login: &str, address: Option<IpAddr>) -> Vec<(Key, u32)> {
        let mut keys = Vec::with_capacity(2);
        if self.config.max_failures_per_login > 0 {
            keys.push((
                Key::Login(login.to_owned()),
                self.config.max_failures_per_login,
            ));
        }
        if let (Some(address), true) = (address, self.config.max_failures_per_address > 0) {
            keys.push((Key::Address(address), self.config.max_failures_per_address));
        }
        keys
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Window>> {
        self.windows
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `Err(retry_after)` when an attempt for `login` from `address` must be refused now.
    ///
    /// # Errors
    /// The time until the attempt may be made.
    pub fn check(&self, login: &str, address: Option<IpAddr>) -> Result<(), Duration> {
        let now = Instant::now();
        let windows = self.lock();
        let mut wait = Duration::ZERO;
        for (key, limit) in self.keys(login, address) {
            if let Some(window) = windows.get(&key) {
                let ends = window.started + self.config.window;
                if window.failures >= limit && ends > now {
                    wait = wait.max(ends - now);
                }
            }
        }
        if wait.is_zero() {
            Ok(())
        } else {
            Err(wait)
        }
    }

    /// Counts a failed attempt.
    pub fn record_failure(&self, login: &str, address: Option<IpAddr>) {
        let now = Instant::now();
        let keys = self.keys(login, address);
        let mut windows = self.lock();
        if windows.len() > PRUNE_ABOVE {
            let window = self.config.window;
            windows.retain(|_, w| w.started + window > now);
        }
        for (key, _) in keys {
            let window = windows.entry(key).or_insert(Window {
                started: now,
                failures: 0,
            });
            if window.started + self.config.window <= now {
                *window = Window {
                    started: now,
                    failures: 0,
                };
            }
            window.failures = window.failures.saturating_add(1);
        }
    }

    /// Forgets the failures of a login after a successful sign-in (the address keeps its count).
    pub fn record_success(&self, login: &str) {
        self.lock().remove(&Key::Login(login.to_owned()));
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

    fn address(last: u8) -> Option<IpAddr> {
        Some(IpAddr::from([10, 0, 0, last]))
    }

    #[tokio::test(start_paused = true)]
    async fn a_login_is_refused_after_its_failures_until_the_window_ends() {
        let throttle = throttle(3, 0);
        for _ in 0..3 {
            assert_eq!(throttle.check("alice", address(1)), Ok(()));
            throttle.record_failure("alice", address(1));
        }

        assert_eq!(
            throttle.check("alice", address(2)),
            Err(Duration::from_secs(60))
        );
        assert_eq!(throttle.check("bob", address(1)), Ok(()));
        tokio::time::advance(Duration::from_secs(45)).await;
        assert_eq!(
            throttle.check("alice", address(1)),
            Err(Duration::from_secs(15))
        );
        tokio::time::advance(Duration::from_secs(15)).await;
        assert_eq!(throttle.check("alice", address(1)), Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn an_address_trying_many_logins_is_refused() {
        let throttle = throttle(0, 4);
        for i in 0..4 {
            throttle.record_failure(&format!("user{i}"), address(7));
        }

        assert!(throttle.check("someone", address(7)).is_err());
        assert_eq!(throttle.check("someone", address(8)), Ok(()));
        assert_eq!(throttle.check("someone", None), Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_successful_sign_in_clears_the_logins_failures() {
        let throttle = throttle(3, 0);
        throttle.record_failure("alice", None);
        throttle.record_failure("alice", None);
        throttle.record_success("alice");
        throttle.record_failure("alice", None);
        throttle.record_failure("alice", None);

        assert_eq!(throttle.check("alice", None), Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn failures_after_the_window_start_a_new_count() {
        let throttle = throttle(2, 0);
        throttle.record_failure("alice", None);
        tokio::time::advance(Duration::from_secs(61)).await;
        throttle.record_failure("alice", None);

        assert_eq!(throttle.check("alice", None), Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn zero_limits_switch_the_throttle_off() {
        let throttle = throttle(0, 0);
        for _ in 0..100 {
            throttle.record_failure("alice", address(1));
        }

        assert_eq!(throttle.check("alice", address(1)), Ok(()));
    }
}
