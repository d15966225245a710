//! [`PasswordHasher`] with bcrypt on tokio's blocking threads, a few at a time, with a bounded
//! wait.
//!
//! A hash takes a core for hundreds of milliseconds. At most one hash per core but one runs at
//! a time, so a storm of sign-ins leaves a core to everything else; sign-ins wait for their
//! turn only as long as [`MAX_WAIT`] (judged from how long recent hashes took, and at least
//! [`MIN_WAITING_PER_THREAD`] per hash running at once): beyond that a sign-in is refused at
//! once as [`HashingError::Busy`] instead of waiting for seconds. A sign-in whose caller goes
//! while it waits leaves the queue and is not hashed.
//!
//! While it hashes, a thread runs some nice levels above its own priority where the system
//! allows it (see [`crate::priority`]), so that during a storm the hashes get the cores the
//! concurrency gives them instead of a fair share among every runnable thread. Never below:
//! on threads at nice 19 hashes made the HTTP workers stall for up to a second during a storm
//! (a low-priority thread preempted while holding a lock the workers share with it keeps it
//! until the scheduler runs it again).

use std::{
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, OnceLock,
    },
    time::{Duration, Instant},
};

use application::ports::security::{HashingError, HashingTurn, PasswordHash, PasswordHasher};
use async_trait::async_trait;
use domain::Password;
use tokio::sync::Semaphore;

use crate::{password_format, priority::Priority};

/// The longest a sign-in should wait for its turn; beyond it sign-ins are refused.
pub const MAX_WAIT: Duration = Duration::from_secs(1);

/// Sign-ins allowed to wait per hash running at once, however slow hashes are.
pub const MIN_WAITING_PER_THREAD: usize = 4;

/// What a refused sign-in is told to wait before trying again.
const BUSY_RETRY_AFTER: Duration = Duration::from_secs(1);

/// The costs bcrypt accepts (checked here so that a bad setting fails at start, not at the
/// first sign-in).
const COSTS: std::ops::RangeInclusive<u32> = 4..=31;

/// The password the dummy hash is made of.
const DUMMY_PASSWORD: &str = "gophermart dummy password";

/// bcrypt at a chosen cost. Unknown logins are checked against a dummy hash of the same cost,
/// so they take as long as a wrong password.
#[derive(Debug, Clone)]
pub struct BcryptHasher {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    cost: u32,
    /// The dummy hash, made in the background at start, or when first needed (it takes as long
    /// as any hash, and nothing should wait for it at start).
    dummy: OnceLock<String>,
    /// One per hash that may run at once.
    permits: Arc<Semaphore>,
    concurrency: usize,
    /// Sign-ins waiting for a permit, and how many may.
    waiting: AtomicUsize,
    min_waiting_per_thread: usize,
    max_wait: Duration,
    /// How long a hash takes, as a moving average in nanoseconds (0 until one is done).
    hash_nanos: AtomicU64,
    /// Hashes done so far.
    hashes: AtomicU64,
    /// Whether hashes run raised above their thread's priority.
    priority: Priority,
}

impl BcryptHasher {
    /// A hasher of the given cost (4 to 31; 12 is a sound default) that runs at most
    /// [`default_concurrency`] hashes at once.
    ///
    /// # Errors
    /// [`HashingError`] when the cost is out of range.
    pub fn new(cost: u32) -> Result<Self, HashingError> {
        Self::with_concurrency(cost, default_concurrency())
    }

    /// A hasher that runs at most `concurrency` hashes at once (at least one); sign-ins wait up
    /// to about [`MAX_WAIT`].
    ///
    /// # Errors
    /// [`HashingError`] when the cost is out of range.
    pub fn with_concurrency(cost: u32, concurrency: usize) -> Result<Self, HashingError> {
        Self::with_queue(cost, concurrency.max(1), MIN_WAITING_PER_THREAD, MAX_WAIT)
    }

    fn with_queue(
        cost: u32,
        concurrency: usize,
        min_waiting_per_thread: usize,
        max_wait: Duration,
    ) -> Result<Self, HashingError> {
        if !COSTS.contains(&cost) {
            return Err(HashingError::Failed(Box::new(
                bcrypt::BcryptError::CostNotAllowed(cost),
            )));
        }
        let shared = Arc::new(Shared {
            cost,
            dummy: OnceLock::new(),
            permits: Arc::new(Semaphore::new(concurrency)),
            concurrency,
            waiting: AtomicUsize::new(0),
            min_waiting_per_thread,
            max_wait,
            hash_nanos: AtomicU64::new(0),
            hashes: AtomicU64::new(0),
            // Raised hashes leave the other threads a core only while fewer run than there are
            // cores.
            priority: Priority::new(concurrency < available_cores()),
        });
        // Make the dummy hash now, in the background, so that the first unknown login takes
        // no longer than any other (without a runtime it is made when first needed).
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let shared = shared.clone();
            runtime.spawn_blocking(move || {
                let _raised = shared.priority.raise();
                shared.timed(|shared| shared.dummy().map(drop))
            });
        }
        Ok(Self { shared })
    }
}

/// A turn at a [`BcryptHasher`]: counted as waiting from when it is given until its work starts
/// (or it is dropped unused).
#[derive(Debug)]
pub struct BcryptTurn {
    waiting: Waiting,
}

impl BcryptHasher {
    /// Admits a caller to the queue, unless too many wait already to be served within about
    /// [`MAX_WAIT`].
    fn take_turn(&self) -> Result<BcryptTurn, HashingError> {
        let limit = self.shared.waiting_limit();
        let waiting = Waiting::enter(self.shared.clone());
        if waiting.ahead >= limit {
            return Err(HashingError::Busy {
                retry_after: BUSY_RETRY_AFTER,
            });
        }
        Ok(BcryptTurn { waiting })
    }
}

impl BcryptTurn {
    /// Runs `work` on a blocking thread once a place is free.
    async fn run<T: Send + 'static>(
        self,
        work: impl FnOnce(&Shared) -> Result<T, bcrypt::BcryptError> + Send + 'static,
    ) -> Result<T, HashingError> {
        let shared = self.waiting.shared.clone();
        // The permit goes with the work: a caller that leaves after this point does not free
        // a place while its hash still runs.
        let permit = shared
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| HashingError::Failed(Box::new(e)))?;
        drop(self.waiting);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let _raised = shared.priority.raise();
            shared.timed(work)
        })
        .await
        .map_err(|e| HashingError::Failed(Box::new(e)))?
        .map_err(|e| HashingError::Failed(Box::new(e)))
    }
}

/// A turn counted as waiting for a place while this lives.
#[derive(Debug)]
struct Waiting {
    shared: Arc<Shared>,
    /// How many were waiting before this one.
    ahead: usize,
}

impl Waiting {
    fn enter(shared: Arc<Shared>) -> Self {
        let ahead = shared.waiting.fetch_add(1, Ordering::AcqRel);
        Self { shared, ahead }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.shared.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Shared {
    /// How many sign-ins may wait: as many as the hashes running at once get through in
    /// `max_wait`, judging by recent hashes, and never fewer than the minimum per hash.
    fn waiting_limit(&self) -> usize {
        let per_hash = self.hash_nanos.load(Ordering::Relaxed).max(1);
        let per_thread = u64::try_from(self.max_wait.as_nanos()).unwrap_or(u64::MAX) / per_hash;
        usize::try_from(per_thread)
            .unwrap_or(usize::MAX)
            .max(self.min_waiting_per_thread)
            .saturating_mul(self.concurrency)
    }

    /// Runs a hash, counting it and taking its duration into the moving average.
    fn timed<T>(&self, work: impl FnOnce(&Self) -> T) -> T {
        let started = Instant::now();
        let result = work(self);
        self.hashes.fetch_add(1, Ordering::Relaxed);
        self.hashed_in(started.elapsed());
        result
    }

    /// Takes a hash's duration into the moving average (weight 1/8).
    fn hashed_in(&self, took: Duration) {
        let took = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX).max(1);
        let _ = self
            .hash_nanos
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |average| {
                Some(if average == 0 {
                    took
                } else {
                    average - average / 8 + took / 8
                })
            });
    }

    fn dummy(&self) -> Result<&str, bcrypt::BcryptError> {
        if let Some(dummy) = self.dummy.get() {
            return Ok(dummy);
        }
        let made = password_format::hash(DUMMY_PASSWORD, self.cost)?;
        Ok(self.dummy.get_or_init(|| made))
    }
}

/// One hash at a time per core but one, so that at least one core stays free for everything
/// else; at least one.
#[must_use]
pub fn default_concurrency() -> usize {
    available_cores().saturating_sub(1).max(1)
}

fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

impl PasswordHasher for BcryptHasher {
    fn turn(&self) -> Result<Box<dyn HashingTurn>, HashingError> {
        Ok(Box::new(self.take_turn()?))
    }
}

#[async_trait]
impl HashingTurn for BcryptTurn {
    async fn hash(self: Box<Self>, password: &Password) -> Result<PasswordHash, HashingError> {
        let clear = password.expose().to_owned();
        self.run(move |shared| password_format::hash(&clear, shared.cost))
            .await
            .map(PasswordHash)
    }

    async fn verify(
        self: Box<Self>,
        password: &Password,
        hash: Option<PasswordHash>,
    ) -> Result<bool, HashingError> {
        let clear = password.expose().to_owned();
        let known = hash.is_some();
        let matches = self
            .run(move |shared| match hash {
                Some(hash) => password_format::verify(&clear, &hash.0),
                None => password_format::verify(&clear, shared.dummy()?),
            })
            .await?;
        Ok(known && matches)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn password(text: &str) -> Password {
        Password::parse(text).expect("valid password")
    }

    /// A turn taken and spent at once, as most tests need.
    impl BcryptHasher {
        async fn hash(&self, password: &Password) -> Result<PasswordHash, HashingError> {
            self.turn()?.hash(password).await
        }

        async fn verify(
            &self,
            password: &Password,
            hash: Option<PasswordHash>,
        ) -> Result<bool, HashingError> {
            self.turn()?.verify(password, hash).await
        }
    }

    #[tokio::test]
    async fn a_hash_verifies_its_password_only() {
        let hasher = BcryptHasher::new(4).expect("cost");

        let hash = hasher
            .hash(&password("correct horse"))
            .await
            .expect("hashed");

        assert!(!hash.0.contains("correct horse"));
        assert!(hasher
            .verify(&password("correct horse"), Some(hash.clone()))
            .await
            .expect("verified"));
        assert!(!hasher
            .verify(&password("wrong horse"), Some(hash))
            .await
            .expect("verified"));
    }

    #[tokio::test]
    async fn two_hashes_of_one_password_differ_by_salt() {
        let hasher = BcryptHasher::new(4).expect("cost");

        let a = hasher.hash(&password("same")).await.expect("hashed");
        let b = hasher.hash(&password("same")).await.expect("hashed");

        assert_ne!(a, b);
    }

    #[tokio::test]
    async fn an_unknown_user_never_verifies_even_with_the_dummy_password() {
        let hasher = BcryptHasher::new(4).expect("cost");

        let verified = hasher
            .verify(&password("gophermart dummy password"), None)
            .await
            .expect("verified");

        assert!(!verified);
    }

    /// Takes the place of one hash running until the returned permit is dropped.
    fn hold_a_thread(hasher: &BcryptHasher) -> tokio::sync::OwnedSemaphorePermit {
        hasher
            .shared
            .permits
            .clone()
            .try_acquire_owned()
            .expect("a free place")
    }

    /// A hasher that lets `waiting` sign-ins wait per hash running, however fast hashes are,
    /// with its dummy hash made already.
    ///
    /// It is made off the runtime, so that no background job makes the dummy hash: its own
    /// first verify does, and every hash a test counts after that is one the test asked for
    /// (a background job finishing late was counted as a test's hash).
    async fn hasher(concurrency: usize, waiting: usize) -> BcryptHasher {
        let hasher = std::thread::spawn(move || {
            BcryptHasher::with_queue(4, concurrency, waiting, Duration::ZERO)
        })
        .join()
        .expect("made")
        .expect("cost");
        hasher
            .verify(&password("anything"), None)
            .await
            .expect("dummy made");
        hasher
    }

    #[tokio::test]
    async fn hashes_beyond_the_threads_wait_their_turn() {
        let hasher = hasher(1, 4).await;
        let release = hold_a_thread(&hasher);
        let pending = {
            let hasher = hasher.clone();
            tokio::spawn(async move { hasher.hash(&password("queued")).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;

        assert!(!pending.is_finished(), "no free thread, no hashing");
        drop(release);
        assert!(pending.await.expect("task").is_ok());
    }

    #[tokio::test]
    async fn beyond_the_waiting_room_a_sign_in_is_refused_at_once_as_busy() {
        let hasher = hasher(1, 2).await;
        let release = hold_a_thread(&hasher);
        // Two wait for the one place: the waiting room is full.
        let waiting: Vec<_> = (0..2)
            .map(|_| {
                let hasher = hasher.clone();
                tokio::spawn(async move { hasher.verify(&password("p"), None).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;

        let refused = hasher.verify(&password("p"), None).await;

        assert!(
            matches!(refused, Err(HashingError::Busy { retry_after }) if retry_after > Duration::ZERO),
            "{refused:?}"
        );
        drop(release);
        for task in waiting {
            assert!(!task
                .await
                .expect("task")
                .expect("the waiting ones are served"));
        }
    }

    #[tokio::test]
    async fn a_turn_is_refused_at_once_and_one_given_up_unused_frees_its_place() {
        let hasher = hasher(1, 1).await;
        let release = hold_a_thread(&hasher);
        let first = hasher.turn().expect("admitted");

        assert!(matches!(hasher.turn(), Err(HashingError::Busy { .. })));
        drop(first);
        let second = hasher.turn().expect("the place given up is free again");
        drop(release);
        assert!(!second.verify(&password("p"), None).await.expect("served"));
        assert_eq!(hasher.shared.waiting.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn sign_ins_may_wait_as_long_as_the_threads_take_to_clear_them_in_a_second() {
        let hasher = BcryptHasher::with_queue(4, 2, 4, Duration::from_secs(1)).expect("cost");
        let shared = &hasher.shared;

        shared.hash_nanos.store(250_000_000, Ordering::Relaxed);
        assert_eq!(
            shared.waiting_limit(),
            8,
            "slow hashes: the minimum, 4 per thread"
        );
        shared.hash_nanos.store(100_000_000, Ordering::Relaxed);
        assert_eq!(shared.waiting_limit(), 20, "10 per second per thread");
        shared.hash_nanos.store(1_000_000, Ordering::Relaxed);
        assert_eq!(shared.waiting_limit(), 2000, "fast hashes: many may wait");
    }

    #[test]
    fn the_hash_time_is_a_moving_average() {
        let hasher = BcryptHasher::with_queue(4, 1, 4, MAX_WAIT).expect("cost");
        let shared = &hasher.shared;
        shared.hash_nanos.store(0, Ordering::Relaxed);

        shared.hashed_in(Duration::from_millis(80));
        assert_eq!(shared.hash_nanos.load(Ordering::Relaxed), 80_000_000);
        shared.hashed_in(Duration::from_millis(160));
        assert_eq!(shared.hash_nanos.load(Ordering::Relaxed), 90_000_000);
    }

    #[tokio::test]
    async fn a_burst_of_fast_hashes_waits_instead_of_being_refused() {
        let hasher = std::thread::spawn(|| BcryptHasher::with_queue(4, 1, 1, MAX_WAIT))
            .join()
            .expect("made")
            .expect("cost");
        hasher
            .verify(&password("anything"), None)
            .await
            .expect("dummy made");
        // Hashes known to take a millisecond, whatever the first one took on a busy machine:
        // a thousand may wait for a second.
        hasher.shared.hash_nanos.store(1_000_000, Ordering::Relaxed);
        let release = hold_a_thread(&hasher);
        let burst: Vec<_> = (0..16)
            .map(|_| {
                let hasher = hasher.clone();
                tokio::spawn(async move { hasher.hash(&password("p")).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;

        drop(release);
        for task in burst {
            assert!(task.await.expect("task").is_ok(), "waited its turn");
        }
    }

    #[tokio::test]
    async fn a_sign_in_whose_caller_left_is_not_hashed() {
        let hasher = hasher(1, 4).await;
        let hashed_before = hasher.shared.hashes.load(Ordering::Relaxed);
        let release = hold_a_thread(&hasher);
        let left = {
            let hasher = hasher.clone();
            tokio::spawn(async move { hasher.hash(&password("gone")).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        left.abort();
        let _ = left.await;

        drop(release);
        // A later hash runs once the place is free; the abandoned one never ran.
        hasher.hash(&password("here")).await.expect("hashed");

        assert_eq!(
            hasher.shared.hashes.load(Ordering::Relaxed) - hashed_before,
            1
        );
        assert_eq!(hasher.shared.waiting.load(Ordering::Relaxed), 0);
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_hash_runs_raised_above_its_threads_priority_where_that_is_allowed() {
        use crate::priority::{nice_of_this_thread, raising_is_allowed, BOOST};
        let hasher = BcryptHasher::with_queue(4, 1, 4, MAX_WAIT).expect("cost");
        let own = std::thread::spawn(nice_of_this_thread)
            .join()
            .expect("thread");

        let during = hasher
            .take_turn()
            .expect("a turn")
            .run(|_| Ok(nice_of_this_thread()))
            .await
            .expect("ran");

        let raised = raising_is_allowed() && available_cores() > 1;
        assert_eq!(during, if raised { (own - BOOST).max(-20) } else { own });
    }

    #[test]
    fn an_out_of_range_cost_is_refused() {
        assert!(BcryptHasher::new(3).is_err());
        assert!(BcryptHasher::new(32).is_err());
    }
}
