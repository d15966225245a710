//! The endpoints for operators: `GET /healthz` (the process answers), `GET /readyz` (the
//! service can take requests) and `GET /metrics` (Prometheus). What "ready" means and the values
//! read at scrape time come from the rest of the service through [`ServiceStatus`].

use std::sync::Arc;

use actix_web::{http::StatusCode, web, HttpResponse};
use async_trait::async_trait;
use serde::Serialize;
use utoipa::ToSchema;

use crate::{
    metrics::Metrics,
    problem::{problem, Problem},
};

/// What the operational endpoints ask of the rest of the service.
#[async_trait]
pub trait ServiceStatus: Send + Sync {
    /// Whether the service can take requests now.
    ///
    /// # Errors
    /// Why it cannot, in words for an operator.
    async fn readiness(&self) -> Result<(), String>;

    /// Brings the metrics that are read at scrape time (database pool, queue depth, worker
    /// counters) up to date.
    async fn refresh_metrics(&self);

    /// How the service reaches its database, shown by a ready `/readyz`.
    fn database_modes(&self) -> Option<DatabaseModes> {
        None
    }
}

/// How the service reaches its database.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DatabaseModes {
    /// `prepared` (named prepared statements) or `unnamed` (one round trip each, nothing kept
    /// on the server: for a transaction pooler).
    #[schema(value_type = String, example = "prepared")]
    pub statements: &'static str,
    /// `listen` (woken by other instances through PostgreSQL `LISTEN`) or `poll` (the accrual
    /// worker polls for orders queued elsewhere).
    #[schema(value_type = String, example = "listen")]
    pub wakeups: &'static str,
    /// The database server the last connection opened reached, `address:port`: with several
    /// hosts in `DATABASE_URI` and `target_session_attrs=read-write`, the primary.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "10.0.0.5:5432")]
    pub server: Option<String>,
}

/// The state of the operational endpoints.
#[derive(Clone)]
pub struct Operations {
    status: Arc<dyn ServiceStatus>,
    metrics: Metrics,
}

impl std::fmt::Debug for Operations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Operations").finish_non_exhaustive()
    }
}

impl Operations {
    /// Operational endpoints answering from `status` and `metrics`.
    #[must_use]
    pub fn new(status: Arc<dyn ServiceStatus>, metrics: Metrics) -> Self {
        Self { status, metrics }
    }

    /// The metrics the middleware records requests into.
    #[must_use]
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}

/// The body of `/healthz` and of a ready `/readyz`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"status": "ok"}))]
pub struct HealthBody {
    /// `ok` from `/healthz`, `ready` from `/readyz`.
    #[schema(value_type = String, example = "ok")]
    status: &'static str,
    /// From `/readyz`: how the database is reached.
    #[serde(skip_serializing_if = "Option::is_none")]
    database: Option<DatabaseModes>,
}

/// Answers 200 while the process serves HTTP at all.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    operation_id = "healthz",
    summary = "Liveness",
    description = "200 while the process answers HTTP; it does not look at the database.",
    responses(
        (status = 200, description = "The process is alive.", body = HealthBody,
            example = json!({"status": "ok"})),
    )
)]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(HealthBody {
        status: "ok",
        database: None,
    })
}

/// Answers 200 when the service can take requests, 503 with the reason otherwise.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    operation_id = "readyz",
    summary = "Readiness",
    description = "200 when the database answers (within two seconds) and every migration this \
        build knows is applied; 503 with the reason otherwise.",
    responses(
        (status = 200, description = "Ready to take requests.", body = HealthBody,
            example = json!({"status": "ready"})),
        (status = 503, description = "Not ready; `detail` says why.",
            body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait before asking again.")),
            example = json!({
                "type": "about:blank",
                "title": "Service Unavailable",
                "status": 503,
                "detail": "database: the database is unavailable: Error occurred while creating a new object: error connecting to server: Connection refused (os error 111)"
            })),
    )
)]
pub async fn readyz(operations: web::Data<Operations>) -> HttpResponse {
    match operations.status.readiness().await {
        Ok(()) => HttpResponse::Ok().json(HealthBody {
            status: "ready",
            database: operations.status.database_modes(),
        }),
        Err(reason) => {
            tracing::warn!(%reason, "not ready");
            problem(StatusCode::SERVICE_UNAVAILABLE, reason)
        }
    }
}

/// The metrics in Prometheus' text format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    operation_id = "metrics",
    summary = "Prometheus metrics",
    description = "Every metric in Prometheus' text exposition format 0.0.4; values that live in \
        the database (pool, queue depth) are read at scrape time. See docs/operations.md.",
    responses(
        (status = 200, description = "The metrics.", body = String,
            content_type = "text/plain; version=0.0.4",
            example = "# HELP gophermart_http_requests_total HTTP requests answered, by method, route pattern and status.\n# TYPE gophermart_http_requests_total counter\ngophermart_http_requests_total{method=\"POST\",route=\"/api/user/register\",status=\"200\"} 1\n"),
        (status = 500, description = "The metrics could not be encoded.",
            body = Problem, content_type = "application/problem+json",
            example = json!({"type": "about:blank", "title": "Internal Server Error", "status": 500})),
    )
)]
pub async fn metrics(operations: web::Data<Operations>) -> HttpResponse {
    operations.status.refresh_metrics().await;
    match operations.metrics.render() {
        Ok(text) => HttpResponse::Ok()
            .content_type(prometheus::TEXT_FORMAT)
            .body(text),
        Err(error) => {
            crate::problem::log_chain(&error);
            problem(StatusCode::INTERNAL_SERVER_ERROR, None)
        }
    }
}
