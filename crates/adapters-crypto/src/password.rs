//! [`PasswordHasher`] with bcrypt, run on tokio's blocking threads so that the slow hashing
//! never stalls the request handlers.

use application::ports::security::{HashingError, PasswordHash, PasswordHasher};
use async_trait::async_trait;
use domain::Password;

/// bcrypt at a chosen cost. Unknown logins are checked against a dummy hash of the same cost,
/// so they take as long as a wrong password.
#[derive(Debug, Clone)]
pub struct BcryptHasher {
    cost: u32,
    dummy: String,
}

impl BcryptHasher {
    /// A hasher of the given cost (4 to 31; 12 is a sound default).
    ///
    /// # Errors
    /// [`HashingError`] when the cost is out of range.
    pub fn new(cost: u32) -> Result<Self, HashingError> {
        let dummy = bcrypt::hash("gophermart dummy password", cost)
            .map_err(|e| HashingError(Box::new(e)))?;
        Ok(Self { cost, dummy })
    }
}

#[async_trait]
impl PasswordHasher for BcryptHasher {
    async fn hash(&self, password: &Password) -> Result<PasswordHash, HashingError> {
        let clear = password.expose().to_owned();
        let cost = self.cost;
        tokio::task::spawn_blocking(move || bcrypt::hash(clear, cost))
            .await
            .map_err(|e| HashingError(Box::new(e)))?
            .map(PasswordHash)
            .map_err(|e| HashingError(Box::new(e)))
    }

    async fn verify(
        &self,
        password: &Password,
        hash: Option<PasswordHash>,
    ) -> Result<bool, HashingError> {
        let clear = password.expose().to_owned();
        let known = hash.is_some();
        let hash = hash.map_or_else(|| self.dummy.clone(), |h| h.0);
        let matches = tokio::task::spawn_blocking(move || bcrypt::verify(clear, &hash))
            .await
            .map_err(|e| HashingError(Box::new(e)))?
            .map_err(|e| HashingError(Box::new(e)))?;
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

    #[test]
    fn an_out_of_range_cost_is_refused() {
        assert!(BcryptHasher::new(3).is_err());
    }
}
