//! What the handlers share: the ports of the use cases and a few settings.

use std::{num::NonZeroU32, sync::Arc, time::Duration};

use application::ports::{
    clock::Clock, ledger::LedgerRepository, orders::OrderRepository, security::PasswordHasher,
    security::TokenService, throttle::SignInFailures, users::UserRepository,
};
use application::use_cases::{CustomerRequestLimit, EventStreams, LoginThrottle, Registrations};

use crate::client_address::ClientAddressConfig;

/// The handlers' shared state.
#[derive(Clone)]
pub struct AppState {
    pub users: Arc<dyn UserRepository>,
    pub orders: Arc<dyn OrderRepository>,
    pub ledger: Arc<dyn LedgerRepository>,
    pub hasher: Arc<dyn PasswordHasher>,
    pub tokens: Arc<dyn TokenService>,
    pub clock: Arc<dyn Clock>,
    /// Where failed sign-ins are counted, for the whole deployment.
    pub sign_ins: Arc<dyn SignInFailures>,
    /// Refuses sign-ins after too many failures.
    pub throttle: LoginThrottle,
    /// Each customer's share of this instance; `None`: no limit.
    pub request_limit: Option<Arc<CustomerRequestLimit>>,
    /// Most orders a customer may have waiting for the accrual system; `None`: no limit.
    pub pending_limit: Option<NonZeroU32>,
    /// How a request's client address is found.
    pub client_address: ClientAddressConfig,
    /// The customers' open event streams on this instance.
    pub events: Arc<EventStreams>,
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
            .field("throttle", &self.throttle)
            .field("request_limit", &self.request_limit)
            .field("pending_limit", &self.pending_limit)
            .field("client_address", &self.client_address)
            .finish_non_exhaustive()
    }
}
