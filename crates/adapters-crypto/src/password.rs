//! [`PasswordHasher`] with bcrypt, run on tokio's blocking threads so that the slow hashing
//! never stalls the request handlers, and at most a few at a time so that a storm of logins
//! cannot take every core from the other requests.

use std::sync::Arc;

use application::ports::security::{HashingError, PasswordHash, PasswordHasher};
use async_trait::async_trait;
use domain::Password;
use tokio::sync::Semaphore;

/// bcrypt at a chosen cost. Unknown logins are checked against a dummy hash of the same cost,
/// so they take as long as a wrong password.
#[derive(Debug, Clone)]
pub struct BcryptHasher {
    cost: u32,
    dummy: String,
    permits: Arc<Semaphore>,
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

    /// A hasher that runs at most `concurrency` hashes at once (at least one).
    ///
    /// # Errors
    /// [`HashingError`] when the cost is out of range.
    pub fn with_concurrency(cost: u32, concurrency: usize) -> Result<Self, HashingError> {
        let dummy = bcrypt::hash("gophermart dummy password", cost)
            .map_err(|e| HashingError(Box::new(e)))?;
        Ok(Self {
            cost,
            dummy,
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
        })
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, bcrypt::BcryptError> + Send + 'static,
    ) -> Result<T, HashingError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| HashingError(Box::new(e)))?;
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| HashingError(Box::new(e)))?
            .map_err(|e| HashingError(Box::new(e)))
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
        let cost = self.cost;
        self.run(move || bcrypt::hash(clear, cost))
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
        let hash = hash.map_or_else(|| self.dummy.clone(), |h| h.0);
        let matches = self.run(move || bcrypt::verify(clear, &hash)).await?;
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn hashes_beyond_the_concurrency_limit_wait_their_turn() {
        let hasher = BcryptHasher::with_concurrency(4, 1).expect("cost");
        let held = hasher
            .permits
            .clone()
            .acquire_owned()
            .await
            .expect("permit");
        let pending = {
            let hasher = hasher.clone();
            tokio::spawn(async move { hasher.hash(&password("queued")).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;

        assert!(!pending.is_finished(), "no permit, no hashing");
        drop(held);
        assert!(pending.await.expect("task").is_ok());
    }

    #[test]
    fn an_out_of_range_cost_is_refused() {
        assert!(BcryptHasher::new(3).is_err());
    }
}
