//! Registered customers and their password hashes.

use async_trait::async_trait;
use domain::{Login, UserId};

use super::{security::PasswordHash, RepositoryError};

/// Why a user could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateUserError {
    #[error("the login is taken")]
    LoginTaken,
    #[error(transparent)]
    Repository(#[from] RepositoryError),
}

/// A user as needed to check a password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCredentials {
    pub id: UserId,
    pub password_hash: PasswordHash,
}

/// Stores users.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait UserRepository: Send + Sync {
    /// Creates a user and their empty points account, atomically.
    ///
    /// # Errors
    /// [`CreateUserError::LoginTaken`] when the login exists.
    async fn create(&self, login: &Login, hash: &PasswordHash) -> Result<UserId, CreateUserError>;

    /// Finds a user's credentials by login.
    ///
    /// # Errors
    /// [`RepositoryError`] on a storage failure.
    async fn find_by_login(
        &self,
        login: &Login,
    ) -> Result<Option<StoredCredentials>, RepositoryError>;
}
