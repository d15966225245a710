//! [`PasswordHasher`] with bcrypt, on a few threads of its own, with a bounded wait.
//!
//! A hash takes a core for hundreds of milliseconds. At most one hash per core but one runs at
//! a time, so a storm of sign-ins leaves a core to everything else; sign-ins wait for their
//! turn only as long as [`MAX_WAIT`] (judged from how long recent hashes took, and at least
//! [`MIN_WAITING_PER_THREAD`] per thread): beyond that a sign-in is refused at once as
//! [`HashingError::Busy`] instead of waiting for seconds. A sign-in whose client has gone
//! before its turn comes is not hashed at all.
//!
//! The threads run at normal priority on purpose. At nice 19 they made the HTTP workers stall
//! for up to a second during a storm: a hashing thread preempted while it held a lock the
//! workers share with it (the job channel's, the async runtime's wake-up queue) kept it until
//! the scheduler ran it again, which at nice 19 on busy cores took that long.

use std::{
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        mpsc, Arc, Mutex, OnceLock,
    },
    time::{Duration, Instant},
};

use application::ports::security::{HashingError, PasswordHash, PasswordHasher};
use async_trait::async_trait;
use domain::Password;
use tokio::sync::oneshot;

/// The longest a sign-in should wait for a hashing thread; beyond it sign-ins are refused.
pub const MAX_WAIT: Duration = Duration::from_secs(1);

/// Sign-ins allowed to wait per hashing thread however slow hashes are.
pub const MIN_WAITING_PER_THREAD: usize = 4;

/// What a refused sign-in is told to wait before trying again.
const BUSY_RETRY_AFTER: Duration = Duration::from_secs(1);

/// The costs bcrypt accepts (checked here so that a bad setting fails at start, not at the
/// first sign-in).
const COSTS: std::ops::RangeInclusive<u32> = 4..=31;

/// The password the dummy hash is made of.
const DUMMY_PASSWORD: &str = "gophermart dummy password";

type Job = Box<dyn FnOnce() + Send>;

/// bcrypt at a chosen cost. Unknown logins are checked against a dummy hash of the same cost,
/// so they take as long as a wrong password.
#[derive(Debug, Clone)]
pub struct BcryptHasher {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    cost: u32,
    /// The dummy hash, made on a hashing thread when first needed (it takes as long as any
    /// hash, and nothing should wait for it at start).
    dummy: OnceLock<String>,
    jobs: mpsc::Sender<Job>,
    /// One per thread: at most one job per thread is in the channel at a time.
    permits: tokio::sync::Semaphore,
    threads: usize,
    /// Sign-ins waiting for a thread (for a permit), and how many may.
    waiting: AtomicUsize,
    min_waiting_per_thread: usize,
    max_wait: Duration,
    /// How long a hash takes, as a moving average in nanoseconds (0 until one is done).
    hash_nanos: AtomicU64,
    /// Sign-ins dropped unhashed because their caller had gone.
    abandoned: AtomicU64,
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

    /// A hasher that runs at most `concurrency` hashes at once (at least one), each on a
    /// thread of its own; sign-ins wait up to about [`MAX_WAIT`].
    ///
    /// # Errors
    /// [`HashingError`] when the cost is out of range or a thread cannot be started.
    pub fn with_concurrency(cost: u32, concurrency: usize) -> Result<Self, HashingError> {
        let threads = concurrency.max(1);
        Self::with_queue(cost, threads, MIN_WAITING_PER_THREAD, MAX_WAIT)
    }

    fn with_queue(
        cost: u32,
        threads: usize,
        min_waiting_per_thread: usize,
        max_wait: Duration,
    ) -> Result<Self, HashingError> {
        if !COSTS.contains(&cost) {
            return Err(HashingError::Failed(Box::new(
                bcrypt::BcryptError::CostNotAllowed(cost),
            )));
        }
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for n in 0..threads {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("bcrypt-{n}"))
                .spawn(move || hashing_thread(&queue))
                .map_err(|e| HashingError::Failed(Box::new(e)))?;
        }
        let hasher = Self {
            shared: Arc::new(Shared {
                cost,
                dummy: OnceLock::new(),
                jobs,
                permits: tokio::sync::Semaphore::new(threads),
                threads,
                waiting: AtomicUsize::new(0),
                min_waiting_per_thread,
                max_wait,
                hash_nanos: AtomicU64::new(0),
                abandoned: AtomicU64::new(0),
            }),
        };
        // Make the dummy hash now, in the background, so that the first unknown login takes
        // no longer than any other.
        let shared = hasher.shared.clone();
        let _ = hasher.shared.jobs.send(Box::new(move || {
            let started = Instant::now();
            if shared.dummy().is_ok() {
                shared.hashed_in(started.elapsed());
            }
        }));
        Ok(hasher)
    }

    /// Runs `work` on a hashing thread, unless too many are waiting already.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Shared) -> Result<T, bcrypt::BcryptError> + Send + 'static,
    ) -> Result<T, HashingError> {
        let limit = self.shared.waiting_limit();
        let waiting = Waiting::enter(&self.shared.waiting);
        if waiting.ahead >= limit {
            return Err(HashingError::Busy {
                retry_after: BUSY_RETRY_AFTER,
            });
        }
        // Sign-ins wait for a thread here, not in the threads' channel, so that one whose
        // caller goes while it waits simply leaves the queue (and the count of waiting ones).
        let _permit = self
            .shared
            .permits
            .acquire()
            .await
            .map_err(|e| HashingError::Failed(Box::new(e)))?;
        drop(waiting);
        let (reply, answer) = oneshot::channel();
        let shared = self.shared.clone();
        let job: Job = Box::new(move || {
            if reply.is_closed() {
                let abandoned = shared.abandoned.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::debug!(abandoned, "sign-in abandoned by its client: not hashed");
                return;
            }
            let started = Instant::now();
            let result = work(&shared);
            shared.hashed_in(started.elapsed());
            let _ = reply.send(result);
        });
        if self.shared.jobs.send(job).is_err() {
            return Err(HashingError::Failed(
                "the hashing threads have stopped".into(),
            ));
        }
        answer
            .await
            .map_err(|e| HashingError::Failed(Box::new(e)))?
            .map_err(|e| HashingError::Failed(Box::new(e)))
    }
}

/// A sign-in counted as waiting for a thread while this lives.
struct Waiting<'a> {
    count: &'a AtomicUsize,
    /// How many were waiting before this one.
    ahead: usize,
}

impl<'a> Waiting<'a> {
    fn enter(count: &'a AtomicUsize) -> Self {
        let ahead = count.fetch_add(1, Ordering::AcqRel);
        Self { count, ahead }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Shared {
    /// How many sign-ins may wait: as many as the threads get through in `max_wait`, judging
    /// by recent hashes, and never fewer than the minimum per thread.
    fn waiting_limit(&self) -> usize {
        let per_hash = self.hash_nanos.load(Ordering::Relaxed).max(1);
        let per_thread = u64::try_from(self.max_wait.as_nanos()).unwrap_or(u64::MAX) / per_hash;
        usize::try_from(per_thread)
            .unwrap_or(usize::MAX)
            .max(self.min_waiting_per_thread)
            .saturating_mul(self.threads)
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
        let made = bcrypt::hash(DUMMY_PASSWORD, self.cost)?;
        Ok(self.dummy.get_or_init(|| made))
    }
}

/// A hashing thread: runs jobs until the hasher is dropped.
fn hashing_thread(queue: &Mutex<mpsc::Receiver<Job>>) {
    loop {
        // The lock is held only while waiting for a job, never while hashing.
        let job = match queue.lock() {
            Ok(queue) => queue.recv(),
            Err(_) => return,
        };
        match job {
            Ok(job) => job(),
            Err(mpsc::RecvError) => return,
        }
    }
}

/// One hash at a time per core but one, so that at least one core stays free for everything
/// else; at least one.
#[must_use]
pub fn default_concurrency() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get().saturating_sub(1))
        .unwrap_or(1)
        .max(1)
}

#[async_trait]
impl PasswordHasher for BcryptHasher {
    async fn hash(&self, password: &Password) -> Result<PasswordHash, HashingError> {
        let clear = password.expose().to_owned();
        self.run(move |shared| bcrypt::hash(clear, shared.cost))
            .await
            .map(PasswordHash)
    }

    async fn verify(
        &self,
        password: &Password,
        hash: Option<PasswordHash>,
    ) -> Result<bool, HashingError> {
        let clear = password.expose().to_owned();
        let known = hash.is_some();
        let matches = self
            .run(move |shared| match hash {
                Some(hash) => bcrypt::verify(clear, &hash.0),
                None => bcrypt::verify(clear, shared.dummy()?),
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

    /// Occupies one hashing thread until the returned sender is dropped.
    fn hold_a_thread(hasher: &BcryptHasher) -> std::sync::mpsc::Sender<()> {
        let (release, held) = std::sync::mpsc::channel::<()>();
        let (started, running) = std::sync::mpsc::channel::<()>();
        hasher
            .shared
            .jobs
            .send(Box::new(move || {
                let _ = started.send(());
                let _ = held.recv();
            }))
            .expect("queued");
        running.recv().expect("the job runs");
        release
    }

    /// A hasher that lets `waiting` sign-ins wait per thread, however fast hashes are, with its
    /// dummy hash made already.
    async fn hasher(threads: usize, waiting: usize) -> BcryptHasher {
        let hasher = BcryptHasher::with_queue(4, threads, waiting, Duration::ZERO).expect("cost");
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
        // One takes the thread's place in line, two wait for it: the waiting room is full.
        let waiting: Vec<_> = (0..3)
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
        let hasher = BcryptHasher::with_queue(4, 1, 1, MAX_WAIT).expect("cost");
        hasher
            .verify(&password("anything"), None)
            .await
            .expect("dummy made, hash time known");
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
        let release = hold_a_thread(&hasher);
        let left = {
            let hasher = hasher.clone();
            tokio::spawn(async move { hasher.hash(&password("gone")).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        left.abort();
        let _ = left.await;

        drop(release);
        // A later hash runs after the abandoned one was taken off the queue.
        hasher.hash(&password("here")).await.expect("hashed");

        assert_eq!(hasher.shared.abandoned.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn an_out_of_range_cost_is_refused() {
        assert!(BcryptHasher::new(3).is_err());
        assert!(BcryptHasher::new(32).is_err());
    }
}
