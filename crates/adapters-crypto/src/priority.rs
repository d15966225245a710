//! Running a hash above the priority of the service's other threads, where the system allows
//! it.
//!
//! The hasher runs at most one hash per core but one, so that a core stays free for everything
//! else. The kernel, though, shares the cores between runnable threads, not between kinds of
//! work: during a storm of sign-ins the HTTP workers, the database and the clients all want the
//! cores too, and a hashing thread at their priority got about half a core (1.7 sign-ins a
//! second where its one thread allows 3.3, on two cores). Raised by [`BOOST`] nice levels while
//! it hashes, a hashing thread gets its core and the other threads share the rest, which is the
//! split the hasher's concurrency stands for.
//!
//! Raising a priority needs `CAP_SYS_NICE` (or an `RLIMIT_NICE` that allows it). Without it,
//! hashes run at their thread's own priority, and the log says so once. A thread is only ever
//! raised while it hashes, and never above any thread that a hash waits for: a hash takes no
//! lock for longer than a wake-up, so the raised thread cannot hold the others back (the
//! reverse, a hashing thread at nice 19 holding a lock the HTTP workers needed, stalled them).

use std::sync::atomic::{AtomicBool, Ordering};

/// How many nice levels above its thread's own priority a hash runs: about nine times the CPU
/// share of a thread at the own priority.
pub(crate) const BOOST: i32 = 10;

/// The highest priority (lowest nice value) there is.
const HIGHEST: i32 = -20;

/// Whether hashes are run raised: asked for at construction, and given up at the first refusal.
#[derive(Debug)]
pub(crate) struct Priority {
    enabled: AtomicBool,
}

impl Priority {
    pub(crate) fn new(enabled: bool) -> Self {
        Self {
            enabled: AtomicBool::new(enabled),
        }
    }

    /// Raises the calling thread's priority by [`BOOST`] until the returned guard is dropped;
    /// `None` when raising is not enabled or not allowed.
    pub(crate) fn raise(&self) -> Option<Raised> {
        if !self.enabled.load(Ordering::Relaxed) {
            return None;
        }
        match Raised::raise() {
            Ok(raised) => Some(raised),
            Err(error) => {
                if self.enabled.swap(false, Ordering::Relaxed) {
                    tracing::warn!(
                        %error,
                        "password hashes run at normal priority (raising a thread's priority needs CAP_SYS_NICE): during a storm of sign-ins they share the cores with every other request"
                    );
                }
                None
            }
        }
    }
}

/// A thread running raised; dropping this gives the thread its own priority back.
#[derive(Debug)]
pub(crate) struct Raised {
    #[cfg(target_os = "linux")]
    thread: rustix::process::Pid,
    #[cfg(target_os = "linux")]
    own: i32,
}

#[cfg(target_os = "linux")]
impl Raised {
    fn raise() -> rustix::io::Result<Self> {
        let thread = rustix::thread::gettid();
        let own = rustix::process::getpriority_process(Some(thread))?;
        rustix::process::setpriority_process(Some(thread), (own - BOOST).max(HIGHEST))?;
        Ok(Self { thread, own })
    }
}

#[cfg(target_os = "linux")]
impl Drop for Raised {
    fn drop(&mut self) {
        // Lowering a priority back is always allowed.
        let _ = rustix::process::setpriority_process(Some(self.thread), self.own);
    }
}

#[cfg(not(target_os = "linux"))]
impl Raised {
    fn raise() -> std::io::Result<Self> {
        Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
    }
}

/// The nice value of the calling thread (for tests).
#[cfg(all(test, target_os = "linux"))]
pub(crate) fn nice_of_this_thread() -> i32 {
    rustix::process::getpriority_process(Some(rustix::thread::gettid())).expect("getpriority")
}

/// Whether this process may raise a thread's priority (tried on a thread of its own; for
/// tests).
#[cfg(all(test, target_os = "linux"))]
pub(crate) fn raising_is_allowed() -> bool {
    std::thread::spawn(|| Raised::raise().is_ok())
        .join()
        .expect("thread")
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn a_raised_thread_gets_its_own_priority_back_when_the_guard_goes() {
        std::thread::spawn(|| {
            let own = nice_of_this_thread();
            let priority = Priority::new(true);

            let raised = priority.raise();
            let during = nice_of_this_thread();
            let was_raised = raised.is_some();
            drop(raised);

            assert_eq!(was_raised, raising_is_allowed());
            if was_raised {
                assert_eq!(during, (own - BOOST).max(HIGHEST));
            } else {
                assert_eq!(during, own);
            }
            assert_eq!(nice_of_this_thread(), own);
        })
        .join()
        .expect("thread");
    }

    #[test]
    fn nothing_is_raised_when_raising_is_not_enabled() {
        std::thread::spawn(|| {
            let own = nice_of_this_thread();

            let raised = Priority::new(false).raise();

            assert!(raised.is_none());
            assert_eq!(nice_of_this_thread(), own);
        })
        .join()
        .expect("thread");
    }
}
