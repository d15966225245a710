//! Password hashing and session tokens.

use std::{fmt, time::Duration};

use async_trait::async_trait;
use domain::{Password, UserId};

/// A slow, salted password hash in its textual (PHC or modular crypt) form.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordHash(pub String);

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PasswordHash(***)")
    }
}

/// Why a password could not be hashed or checked (a wrong password is not an error).
#[derive(Debug, thiserror::Error)]
pub enum HashingError {
    /// Too many passwords are waiting to be hashed: the caller should try again later. This
    /// bounds how long a sign-in can wait, and how much hashing a burst of them can queue up.
    #[error("too many sign-ins at once; try again in {retry_after:?}")]
    Busy { retry_after: Duration },
    /// The hasher failed.
    #[error("password hashing failed")]
    Failed(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Hashes and verifies passwords, a turn at a time. A caller first takes a turn, which decides
/// at once whether the hasher can serve it soon, and does its other work (reading the stored
/// hash) only once admitted: a refused caller costs nothing else. Implementations run the slow
/// work off the async threads.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
pub trait PasswordHasher: Send + Sync {
    /// Takes a turn at the hasher, without waiting: the turn then waits for a free place when
    /// its hash or check is asked for. A turn given up unused frees its place.
    ///
    /// # Errors
    /// [`HashingError::Busy`] when too many turns wait already to be served soon.
    fn turn(&self) -> Result<Box<dyn HashingTurn>, HashingError>;
}

/// An admitted turn at the hasher, spent on one hash or one check.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait HashingTurn: Send {
    /// Hashes a new password.
    ///
    /// # Errors
    /// [`HashingError`] when the hasher fails.
    async fn hash(self: Box<Self>, password: &Password) -> Result<PasswordHash, HashingError>;

    /// Checks a password against a stored hash; `None` checks it against a dummy hash of the same
    /// cost, so an unknown login takes as long as a wrong password, and answers `false`.
    ///
    /// # Errors
    /// [`HashingError`] when the hasher fails.
    async fn verify(
        self: Box<Self>,
        password: &Password,
        hash: Option<PasswordHash>,
    ) -> Result<bool, HashingError>;
}

/// A signed session token handed to a signed-in user.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(pub String);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(***)")
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is malformed, forged or uses another algorithm")]
    Invalid,
    #[error("the token has expired")]
    Expired,
}

/// Issues and checks session tokens.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
pub trait TokenService: Send + Sync {
    /// Issues a token for a user.
    ///
    /// # Errors
    /// [`HashingError`] if signing fails.
    fn issue(&self, user: UserId) -> Result<Token, HashingError>;

    /// Returns the user a token was issued to.
    ///
    /// # Errors
    /// [`TokenError`] when the token cannot be trusted.
    fn verify(&self, token: &str) -> Result<UserId, TokenError>;
}
