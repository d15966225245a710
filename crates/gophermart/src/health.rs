//! `GET /healthz` (the process is alive) and `GET /readyz` (the database answers and every
//! migration is applied).

use actix_web::{web, HttpResponse};
use adapters_postgres::{pending_migrations, PgStore};
use serde_json::json;

/// Registers the health endpoints.
pub fn configure(cfg: &mut web::ServiceConfig, store: PgStore) {
    cfg.app_data(web::Data::new(store))
        .route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz));
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

async fn readyz(store: web::Data<PgStore>) -> HttpResponse {
    match pending_migrations(&store).await {
        Ok(0) => HttpResponse::Ok().json(json!({"status": "ready"})),
        Ok(pending) => HttpResponse::ServiceUnavailable().json(
            json!({"status": "not ready", "reason": format!("{pending} migrations pending")}),
        ),
        Err(error) => HttpResponse::ServiceUnavailable()
            .json(json!({"status": "not ready", "reason": format!("database: {error}")})),
    }
}
