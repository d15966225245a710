//! The HTTP server: routes, body limits, compression, request ids, metrics, error bodies, and
//! the API description with its browsable page.

use std::{net::TcpListener, time::Duration};

use actix_web::{
    dev::{Server, Service},
    http::header::{HeaderName, HeaderValue},
    middleware::{Compress, ErrorHandlers},
    web, App, HttpMessage, HttpServer,
};
use tracing_actix_web::{RequestId, TracingLogger};
use utoipa_swagger_ui::SwaggerUi;

use crate::{
    client_address::ClientAddressSpan, limits, metrics, openapi, ops::Operations,
    problem::ensure_problem_body, routes::json, AppState,
};

/// Where the API description is served.
pub const OPENAPI_PATH: &str = "/api/openapi.json";
/// Where the browsable API page is served.
pub const SWAGGER_UI_PATH: &str = "/swagger-ui/";

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

/// Registers every documented endpoint (the customer API under `/api/user` and the operational
/// ones) at the method and path its OpenAPI annotation gives, with the body limits.
pub fn configure_api(cfg: &mut web::ServiceConfig) {
    cfg.app_data(
        web::JsonConfig::default()
            .limit(json::BODY_LIMIT)
            .error_handler(json::json_error),
    )
    .app_data(web::PayloadConfig::new(json::BODY_LIMIT));
    openapi::register_endpoints(cfg);
}

/// Serves the API description at [`OPENAPI_PATH`] and the browsable page at
/// [`SWAGGER_UI_PATH`] (its assets are built into the binary; `/swagger-ui` redirects there).
pub fn configure_api_description(cfg: &mut web::ServiceConfig, document: utoipa::openapi::OpenApi) {
    let bare = SWAGGER_UI_PATH.trim_end_matches('/');
    cfg.service(web::redirect(bare, SWAGGER_UI_PATH))
        .service(SwaggerUi::new(format!("{SWAGGER_UI_PATH}{{_:.*}}")).url(OPENAPI_PATH, document));
}

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Builds the server on already-bound listeners: the customer API on `state`, the operational
/// endpoints on `operations`, and the API description.
///
/// # Errors
/// When a listener cannot be used.
pub fn http_server(
    state: AppState,
    operations: Operations,
    listeners: Vec<TcpListener>,
    config: &ServerConfig,
) -> std::io::Result<Server> {
    let data = web::Data::new(state);
    let metrics = operations.metrics().clone();
    let operations = web::Data::new(operations);
    let document = openapi::openapi();
    let mut server = HttpServer::new(move || {
        let metrics = metrics.clone();
        let document = document.clone();
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
            .wrap_fn(limits::rate_limit_fields)
            .wrap(TracingLogger::<ClientAddressSpan>::new())
            .wrap_fn(move |req, srv| metrics::record(&metrics, req, srv))
            .app_data(data.clone())
            .app_data(operations.clone())
            .configure(configure_api)
            .configure(|cfg| configure_api_description(cfg, document))
    })
    .disable_signals()
    // Answers may go out in more than one write (a compressed body is encoded after its
    // headers are sent): without TCP_NODELAY, Nagle's algorithm holds the second write until
    // the client acknowledges the first, which a client delaying its ACKs does after 40 ms.
    .tcp_nodelay(true)
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
