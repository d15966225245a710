//! The HTTP server: routes, body limits, compression, request ids and error bodies.

use std::{net::TcpListener, time::Duration};

use actix_web::{
    dev::{Server, Service},
    http::header::{HeaderName, HeaderValue},
    middleware::{Compress, ErrorHandlers},
    web, App, HttpMessage, HttpServer,
};
use tracing_actix_web::{RequestId, TracingLogger};

use crate::{
    problem::ensure_problem_body,
    routes::{accounts, balance, json, orders},
    AppState,
};

/// How the server treats connections.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Worker threads; 0 means one per core.
    pub workers: usize,
    /// How long in-flight requests may run once a stop is asked for.
    pub shutdown_timeout: Duration,
    /// How long a client may take to send a request's head before it is dropped.
    pub client_request_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            workers: 0,
            shutdown_timeout: Duration::from_secs(10),
            client_request_timeout: Duration::from_secs(5),
        }
    }
}

/// Registers the customer endpoints under `/api/user`.
pub fn configure_api(cfg: &mut web::ServiceConfig) {
    cfg.app_data(
        web::JsonConfig::default()
            .limit(json::BODY_LIMIT)
            .content_type_required(false)
            .error_handler(json::json_error),
    )
    .app_data(web::PayloadConfig::new(json::BODY_LIMIT))
    .service(
        web::scope("/api/user")
            .route("/register", web::post().to(accounts::register))
            .route("/login", web::post().to(accounts::log_in))
            .route("/orders", web::post().to(orders::upload))
            .route("/orders", web::get().to(orders::list))
            .route("/balance", web::get().to(balance::balance))
            .route("/balance/withdraw", web::post().to(balance::withdraw))
            .route("/withdrawals", web::get().to(balance::withdrawals)),
    );
}

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Builds the server on already-bound listeners. `extra` registers further routes (health,
/// metrics, API description) beside the customer API.
///
/// # Errors
/// When a listener cannot be used.
pub fn http_server<F>(
    state: AppState,
    listeners: Vec<TcpListener>,
    config: &ServerConfig,
    extra: F,
) -> std::io::Result<Server>
where
    F: Fn(&mut web::ServiceConfig) + Clone + Send + 'static,
{
    let data = web::Data::new(state);
    let mut server = HttpServer::new(move || {
        App::new()
            .wrap(ErrorHandlers::new().default_handler(ensure_problem_body))
            .wrap(Compress::default())
            .wrap_fn(|req, srv| {
                let id = req.extensions().get::<RequestId>().map(ToString::to_string);
                let response = srv.call(req);
                async move {
                    let mut response = response.await?;
                    if let Some(value) = id.and_then(|id| HeaderValue::from_str(&id).ok()) {
                        response.headers_mut().insert(REQUEST_ID, value);
                    }
                    Ok(response)
                }
            })
            .wrap(TracingLogger::default())
            .app_data(data.clone())
            .configure(configure_api)
            .configure(extra.clone())
    })
    .disable_signals()
    .shutdown_timeout(config.shutdown_timeout.as_secs())
    .client_request_timeout(config.client_request_timeout);
    if config.workers > 0 {
        server = server.workers(config.workers);
    }
    for listener in listeners {
        server = server.listen(listener)?;
    }
    Ok(server.run())
}
