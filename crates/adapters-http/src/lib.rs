//! Gophermart's HTTP API on actix-web: the customer endpoints under `/api/user`, their
//! authentication, and the translation of every outcome into a status code and a JSON body.
//! HTTP status codes exist only in this crate.

mod auth;
mod problem;
mod routes;
mod server;
mod state;

pub use auth::{AuthenticatedUser, TOKEN_COOKIE};
pub use problem::PROBLEM_CONTENT_TYPE;
pub use server::{configure_api, http_server, ServerConfig};
pub use state::AppState;
