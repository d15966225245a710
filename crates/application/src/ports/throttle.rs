//! Failed sign-ins, counted for the whole deployment.

use std::{net::IpAddr, time::Duration};

use async_trait::async_trait;
use domain::Login;

use super::{users::StoredCredentials, RepositoryError};

/// Failed sign-ins counted under one key within the current window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FailureCount {
    /// Failures since the window began; 0 when no window is running.
    pub failures: u32,
    /// Time left until the window ends (and the count with it).
    pub window_left: Duration,
}

/// The failures counted against one sign-in attempt: those of its login from its client
/// address, and those of its client address whatever the login.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RecentFailures {
    pub login_from_address: FailureCount,
    pub address: FailureCount,
}

/// The stored credentials of a login together with the failures counted against an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignInRecord {
    /// `None` when no customer has the login.
    pub credentials: Option<StoredCredentials>,
    pub failures: RecentFailures,
}

/// Where failed sign-ins are counted, shared by every instance and kept across restarts.
/// Windows run on the store's clock, so instances' clocks need not agree.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait SignInFailures: Send + Sync {
    /// The stored credentials of `login` and the failures counted, within `window`, for
    /// `login` from `client` and for `client`: one round trip.
    ///
    /// # Errors
    /// [`RepositoryError`] on a storage failure.
    async fn sign_in_record(
        &self,
        login: &Login,
        client: IpAddr,
        window: Duration,
    ) -> Result<SignInRecord, RepositoryError>;

    /// Counts a failed sign-in for `login` from `client` and for `client`; a count whose
    /// window has ended starts again at one. Counts whose window ended are removed as a
    /// part of this, so the store holds only what the running windows need.
    ///
    /// # Errors
    /// [`RepositoryError`] on a storage failure.
    async fn record_failure(
        &self,
        login: &Login,
        client: IpAddr,
        window: Duration,
    ) -> Result<(), RepositoryError>;

    /// Forgets the failures of `login` from `client` (those of `client` stay).
    ///
    /// # Errors
    /// [`RepositoryError`] on a storage failure.
    async fn forget_failures(&self, login: &Login, client: IpAddr) -> Result<(), RepositoryError>;
}
