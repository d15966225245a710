//! Gophermart's HTTP API on actix-web: the customer endpoints under `/api/user`, their
//! authentication, and the translation of every outcome into a status code and a JSON body;
//! the operational endpoints (health, readiness, Prometheus metrics); and the OpenAPI
//! description generated from the handlers. HTTP status codes exist only in this crate.

mod auth;
pub mod client_address;
pub mod conditional;
mod limits;
mod metrics;
pub mod openapi;
mod ops;
mod problem;
mod routes;
pub mod schemas;
mod server;
mod state;

pub use auth::{AuthenticatedUser, TOKEN_COOKIE};
pub use metrics::{Metrics, UNMATCHED_ROUTE};
pub use ops::{DatabaseModes, Operations, ServiceStatus};
pub use problem::PROBLEM_CONTENT_TYPE;
pub use server::{
    configure_api, configure_api_description, http_server, ServerConfig, OPENAPI_PATH,
    SWAGGER_UI_PATH,
};
pub use state::AppState;
