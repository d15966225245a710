//! What the handlers share: the ports of the use cases and a few settings.

use std::{sync::Arc, time::Duration};

use application::ports::{
    clock::Clock, ledger::LedgerRepository, orders::OrderRepository, security::PasswordHasher,
    security::TokenService, users::UserRepository,
};
use application::use_cases::{LoginThrottle, Registrations};

/// The handlers' shared state.
#[derive(Clone)]
pub struct AppState {
    pub users: Arc<dyn UserRepository>,
    pub orders: Arc<dyn OrderRepository>,
    pub ledger: Arc<dyn LedgerRepository>,
    pub hasher: Arc<dyn PasswordHasher>,
    pub tokens: Arc<dyn TokenService>,
    pub clock: Arc<dyn Clock>,
    /// Refuses sign-ins after too many failures.
    pub throttle: Arc<LoginThrottle>,
    /// The sign-ups in progress, so that simultaneous ones of one login cost one hash.
    pub registrations: Arc<Registrations>,
    /// How long an issued token stays valid (also the cookie's `Max-Age`).
    pub token_lifetime: Duration,
    /// Whether the session cookie carries the `Secure` flag (set when served over TLS).
    pub secure_cookie: bool,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("token_lifetime", &self.token_lifetime)
            .field("secure_cookie", &self.secure_cookie)
            .finish_non_exhaustive()
    }
}
