//! The HTTP interface: the order-status endpoint Gophermart polls (with its rate limit and
//! fault injection), the management endpoints that register reward rules and purchases, and
//! the health check. Request bodies are parsed here and handed to the [`Store`].

use std::str::FromStr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use actix_web::http::header::{self, ContentType};
use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer, Serialize};

use crate::config::Config;
use crate::rate_limit::{SlidingWindow, WINDOW};
use crate::rules::{Good, RewardType, Rule};
use crate::store::{AddRuleError, RegisterOrderError, Store};

/// The largest request body accepted: 1 MiB.
pub const BODY_LIMIT: usize = 1 << 20;

/// Everything the handlers share: the store, the rate limit and the fault-injection settings.
#[derive(Debug)]
pub struct AppState {
    store: Store,
    stats: Mutex<Tally>,
    rate_limit: u32,
    limiter: Option<Mutex<SlidingWindow>>,
    fail_rate: f64,
    latency: Duration,
}

impl AppState {
    /// The state for a server run with `config`: an empty store, and a rate limit when
    /// `config.rate_limit` is not 0. A fail rate outside 0.0..=1.0 is clamped into it.
    #[must_use]
    pub fn new(config: &Config) -> Self {
        let fail_rate = if config.fail_rate.is_finite() {
            config.fail_rate.clamp(0.0, 1.0)
        } else {
            0.0
        };
        Self {
            store: Store::new(config.processing_delay()),
            stats: Mutex::default(),
            rate_limit: config.rate_limit,
            limiter: (config.rate_limit > 0)
                .then(|| Mutex::new(SlidingWindow::new(config.rate_limit, WINDOW))),
            fail_rate,
            latency: config.latency(),
        }
    }

    /// The rules and orders.
    #[must_use]
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// What the order-status endpoint has answered so far.
    #[must_use]
    pub fn stats(&self) -> RequestStats {
        self.tally().stats
    }

    fn tally(&self) -> std::sync::MutexGuard<'_, Tally> {
        self.stats.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Counts of the answers of `GET /api/orders/{number}`, for tests and benchmarks that check
/// how a client treats this system.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RequestStats {
    /// Requests answered with 200 or 204.
    pub answered: u64,
    /// Requests refused with 429.
    pub rate_limited: u64,
    /// Requests answered with an injected 500.
    pub failed: u64,
    /// Requests about an order whose final status had already been given to some caller.
    pub asked_after_final: u64,
}

#[derive(Debug, Default)]
struct Tally {
    stats: RequestStats,
    finalized: std::collections::HashSet<String>,
}

/// Registers the routes: `GET /api/orders/{number}`, `POST /api/orders`, `POST /api/goods`
/// and `GET /healthz`. The [`AppState`] must be added as `web::Data` by the caller.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.app_data(web::PayloadConfig::new(BODY_LIMIT))
        .route("/healthz", web::get().to(health))
        .route("/api/stats", web::get().to(request_stats))
        .route("/api/orders/{number}", web::get().to(order_status))
        .route("/api/orders", web::post().to(register_order))
        .route("/api/goods", web::post().to(register_rule));
}

async fn request_stats(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(state.stats())
}

async fn health() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

#[derive(Debug, Serialize)]
struct OrderAnswer<'a> {
    order: &'a str,
    status: &'static str,
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "rust_decimal::serde::arbitrary_precision_option"
    )]
    accrual: Option<Decimal>,
}

async fn order_status(state: web::Data<AppState>, number: web::Path<String>) -> HttpResponse {
    let admitted = match &state.limiter {
        None => Ok(()),
        Some(limiter) => limiter
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .try_acquire(Instant::now()),
    };
    if !state.latency.is_zero() {
        tokio::time::sleep(state.latency).await;
    }
    if let Err(rejected) = admitted {
        state.tally().stats.rate_limited += 1;
        let retry_after = rejected.retry_after_secs();
        tracing::debug!(order = %number, retry_after, "rate limit reached");
        return HttpResponse::TooManyRequests()
            .insert_header((header::RETRY_AFTER, retry_after.to_string()))
            .content_type(ContentType::plaintext())
            .body(format!(
                "No more than {} requests per minute allowed",
                state.rate_limit
            ));
    }
    if state.fail_rate > 0.0 && rand::random_bool(state.fail_rate) {
        tracing::debug!(order = %number, "injected failure");
        state.tally().stats.failed += 1;
        return HttpResponse::InternalServerError()
            .content_type(ContentType::plaintext())
            .body("internal server error");
    }
    let view = state.store.order(&number, Instant::now());
    {
        let mut tally = state.tally();
        tally.stats.answered += 1;
        if tally.finalized.contains(number.as_str()) {
            tally.stats.asked_after_final += 1;
        } else if view.as_ref().is_some_and(|v| v.status.is_final()) {
            tally.finalized.insert(number.to_string());
        }
    }
    match view {
        None => {
            tracing::debug!(order = %number, "order not registered");
            HttpResponse::NoContent().finish()
        }
        Some(view) => {
            tracing::debug!(order = %number, status = %view.status, "order status");
            HttpResponse::Ok().json(OrderAnswer {
                order: &view.number,
                status: view.status.as_str(),
                accrual: view.accrual,
            })
        }
    }
}

/// The body of `POST /api/goods`.
#[derive(Debug, Deserialize)]
struct RuleRequest {
    #[serde(rename = "match")]
    pattern: String,
    #[serde(deserialize_with = "json_number")]
    reward: Decimal,
    reward_type: WireRewardType,
}

#[derive(Debug, Clone, Copy, Deserialize)]
enum WireRewardType {
    #[serde(rename = "%")]
    Percent,
    #[serde(rename = "pt")]
    Points,
}

impl From<WireRewardType> for RewardType {
    fn from(wire: WireRewardType) -> Self {
        match wire {
            WireRewardType::Percent => Self::Percent,
            WireRewardType::Points => Self::Points,
        }
    }
}

async fn register_rule(state: web::Data<AppState>, body: web::Bytes) -> HttpResponse {
    let request: RuleRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(error) => return bad_request(&error.to_string()),
    };
    let rule = Rule {
        pattern: request.pattern,
        reward: request.reward,
        reward_type: request.reward_type.into(),
    };
    let pattern = rule.pattern.clone();
    let (reward, reward_type) = (rule.reward, rule.reward_type);
    match state.store.add_rule(rule) {
        Ok(()) => {
            tracing::info!(%pattern, %reward, %reward_type, "reward rule registered");
            HttpResponse::Ok().finish()
        }
        Err(error @ (AddRuleError::EmptyMatch | AddRuleError::NegativeReward)) => {
            bad_request(&error.to_string())
        }
        Err(error @ AddRuleError::Duplicate(_)) => conflict(&error.to_string()),
    }
}

/// The body of `POST /api/orders`.
#[derive(Debug, Deserialize)]
struct OrderRequest {
    order: String,
    goods: Vec<GoodRequest>,
}

#[derive(Debug, Deserialize)]
struct GoodRequest {
    description: String,
    #[serde(deserialize_with = "json_number")]
    price: Decimal,
}

async fn register_order(state: web::Data<AppState>, body: web::Bytes) -> HttpResponse {
    let request: OrderRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(error) => return bad_request(&error.to_string()),
    };
    let goods: Vec<Good> = request
        .goods
        .into_iter()
        .map(|good| Good {
            description: good.description,
            price: good.price,
        })
        .collect();
    let number = request.order;
    match state
        .store
        .register_order(number.clone(), &goods, Instant::now())
    {
        Ok(()) => {
            tracing::info!(order = %number, goods = goods.len(), "order registered");
            HttpResponse::Accepted().finish()
        }
        Err(
            error @ (RegisterOrderError::InvalidNumber(_) | RegisterOrderError::NegativePrice(_)),
        ) => bad_request(&error.to_string()),
        Err(error @ RegisterOrderError::Duplicate(_)) => conflict(&error.to_string()),
    }
}

/// Reads a JSON number, and only a number, as an exact decimal: the digits are taken as
/// written (serde_json's `arbitrary_precision`), never through a float.
fn json_number<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Decimal, D::Error> {
    let number = serde_json::Number::deserialize(deserializer)?;
    parse_decimal(number.as_str())
        .ok_or_else(|| serde::de::Error::custom(format!("{number} does not fit a 96-bit decimal")))
}

fn parse_decimal(text: &str) -> Option<Decimal> {
    Decimal::from_str(text)
        .or_else(|_| Decimal::from_scientific(text))
        .ok()
}

#[derive(Debug, Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    title: &'static str,
    status: u16,
    detail: &'a str,
}

fn problem(status: StatusCode, title: &'static str, detail: &str) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("application/problem+json")
        .json(Problem {
            kind: "about:blank",
            title,
            status: status.as_u16(),
            detail,
        })
}

fn bad_request(detail: &str) -> HttpResponse {
    problem(StatusCode::BAD_REQUEST, "Bad Request", detail)
}

fn conflict(detail: &str) -> HttpResponse {
    problem(StatusCode::CONFLICT, "Conflict", detail)
}

#[cfg(test)]
mod tests {
    use rust_decimal_macros::dec;

    use super::*;

    #[test]
    fn numbers_are_read_exactly() {
        let good: GoodRequest =
            serde_json::from_str(r#"{"description": "x", "price": 47399.99}"#).expect("valid");
        assert_eq!(good.price, dec!(47399.99));
        let good: GoodRequest = serde_json::from_str(
            r#"{"description": "x", "price": 0.1000000000000000055511151231257827}"#,
        )
        .expect("valid");
        assert_eq!(good.price.to_string(), "0.1000000000000000055511151231");
        let good: GoodRequest =
            serde_json::from_str(r#"{"description": "x", "price": 1.5e2}"#).expect("valid");
        assert_eq!(good.price, dec!(150));
    }

    #[test]
    fn numbers_in_strings_and_other_types_are_refused() {
        for reward in [r#""10""#, "null", "true", "[10]", r#"{"n": 10}"#, "1e400"] {
            let body = format!(r#"{{"match": "x", "reward": {reward}, "reward_type": "%"}}"#);
            assert!(
                serde_json::from_str::<RuleRequest>(&body).is_err(),
                "{reward} should be refused"
            );
        }
    }

    #[test]
    fn reward_types_are_percent_and_points_only() {
        let parse = |kind: &str| {
            serde_json::from_str::<RuleRequest>(&format!(
                r#"{{"match": "x", "reward": 1, "reward_type": "{kind}"}}"#
            ))
            .map(|request| RewardType::from(request.reward_type))
        };
        assert_eq!(parse("%").expect("valid"), RewardType::Percent);
        assert_eq!(parse("pt").expect("valid"), RewardType::Points);
        for kind in ["PT", "percent", "", "points"] {
            assert!(parse(kind).is_err(), "{kind:?} should be refused");
        }
    }

    #[test]
    fn accrual_is_written_as_a_json_number_and_left_out_when_absent() {
        let answer = OrderAnswer {
            order: "12345678903",
            status: "PROCESSED",
            accrual: Some(dec!(729.98)),
        };
        assert_eq!(
            serde_json::to_string(&answer).expect("serializable"),
            r#"{"order":"12345678903","status":"PROCESSED","accrual":729.98}"#
        );
        let answer = OrderAnswer {
            accrual: None,
            ..answer
        };
        assert_eq!(
            serde_json::to_string(&answer).expect("serializable"),
            r#"{"order":"12345678903","status":"PROCESSED"}"#
        );
    }
}
