//! The HTTP interface: the order-status endpoint Gophermart polls (with its rate limit and
//! fault injection), the management endpoints that register reward rules and purchases, the
//! health check, and the OpenAPI description of them all at `GET /api/openapi.json`, generated
//! from the handlers' annotations. Request bodies are parsed here and handed to the [`Store`].

use std::str::FromStr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use actix_web::http::header::{self, ContentType};
use actix_web::http::{Method, StatusCode};
use actix_web::{web, FromRequest, Handler, HttpResponse, Responder, Route};
use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::{openapi::HttpMethod, OpenApi, ToSchema};

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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, ToSchema)]
#[schema(example = json!({"answered": 120, "rate_limited": 3, "failed": 0, "asked_after_final": 0}))]
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

/// Where the API description is served.
pub const OPENAPI_PATH: &str = "/api/openapi.json";

/// The API description. [`openapi`] builds it.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "Accrual system",
        description = "Computes the points an order earns. The shop registers reward rules \
            (`POST /api/goods`) and purchases (`POST /api/orders`); Gophermart asks about orders \
            (`GET /api/orders/{number}`). Errors of the management endpoints are \
            `application/problem+json` bodies.",
        license(name = "MIT")
    ),
    paths(order_status, register_order, register_rule, request_stats, health),
    tags(
        (name = "orders", description = "Orders and their accrual."),
        (name = "rules", description = "Reward rules."),
        (name = "operations", description = "Health and request statistics."),
    )
)]
pub struct ApiDoc;

/// The API description as served at [`OPENAPI_PATH`].
#[must_use]
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// A documented operation and the route that serves it.
struct Endpoint {
    method: Method,
    path: String,
    route: Route,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.method, self.path)
    }
}

/// `handler` served at each method and the path that the annotation `P` documents.
fn served<P, F, Args>(handler: F) -> Vec<Endpoint>
where
    P: utoipa::Path,
    F: Handler<Args>,
    Args: FromRequest + 'static,
    F::Output: Responder + 'static,
{
    P::methods()
        .iter()
        .map(|method| {
            let method = match method {
                HttpMethod::Get => Method::GET,
                HttpMethod::Post => Method::POST,
                HttpMethod::Put => Method::PUT,
                HttpMethod::Delete => Method::DELETE,
                HttpMethod::Options => Method::OPTIONS,
                HttpMethod::Head => Method::HEAD,
                HttpMethod::Patch => Method::PATCH,
                HttpMethod::Trace => Method::TRACE,
            };
            Endpoint {
                route: web::method(method.clone()).to(handler.clone()),
                method,
                path: P::path(),
            }
        })
        .collect()
}

/// Every documented operation, each handler paired with its own annotation.
fn endpoints() -> Vec<Endpoint> {
    [
        served::<__path_health, _, _>(health),
        served::<__path_request_stats, _, _>(request_stats),
        served::<__path_order_status, _, _>(order_status),
        served::<__path_register_order, _, _>(register_order),
        served::<__path_register_rule, _, _>(register_rule),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// Registers the routes: `GET /api/orders/{number}`, `POST /api/orders`, `POST /api/goods`,
/// `GET /api/stats` and `GET /healthz`, each at the method and path its annotation documents,
/// and the API description at [`OPENAPI_PATH`]. The [`AppState`] must be added as
/// `web::Data` by the caller.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.app_data(web::PayloadConfig::new(BODY_LIMIT));
    let mut by_path: Vec<(String, Vec<Route>)> = Vec::new();
    for endpoint in endpoints() {
        match by_path.iter_mut().find(|(path, _)| *path == endpoint.path) {
            Some((_, routes)) => routes.push(endpoint.route),
            None => by_path.push((endpoint.path, vec![endpoint.route])),
        }
    }
    for (path, routes) in by_path {
        let resource = routes
            .into_iter()
            .fold(web::resource(path), |resource, route| resource.route(route));
        cfg.service(resource);
    }
    let document = openapi();
    cfg.route(
        OPENAPI_PATH,
        web::get().to(move || {
            let document = document.clone();
            async move { HttpResponse::Ok().json(document) }
        }),
    );
}

/// What the order-status endpoint has answered so far.
#[utoipa::path(
    get,
    path = "/api/stats",
    tag = "operations",
    operation_id = "request_stats",
    responses(
        (status = 200, description = "Counts of the answers of `GET /api/orders/{number}`.",
            body = RequestStats),
    )
)]
async fn request_stats(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(state.stats())
}

/// Answers 200 while the process serves HTTP.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    operation_id = "healthz",
    responses(
        (status = 200, description = "The process is alive.", content_type = "application/json",
            example = json!({"status": "ok"})),
    )
)]
async fn health() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

/// An order's status and accrual.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"order": "12345678903", "status": "PROCESSED", "accrual": 729.98}))]
struct OrderAnswer<'a> {
    /// The order number.
    #[schema(value_type = String)]
    order: &'a str,
    /// `REGISTERED`: known, not computed yet; `PROCESSING`: being computed; `INVALID` and
    /// `PROCESSED`: final.
    #[schema(value_type = String, pattern = "^(REGISTERED|INVALID|PROCESSING|PROCESSED)$")]
    status: &'static str,
    /// Points earned; absent when nothing is owed.
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "rust_decimal::serde::arbitrary_precision_option"
    )]
    #[schema(value_type = Option<f64>, required = false)]
    accrual: Option<Decimal>,
}

/// The status and accrual of an order, subject to the rate limit and fault injection.
#[utoipa::path(
    get,
    path = "/api/orders/{number}",
    tag = "orders",
    operation_id = "order_status",
    params(("number" = String, Path, description = "The order number.", example = "12345678903")),
    responses(
        (status = 200, description = "The order is registered.", body = OrderAnswer,
            example = json!({"order": "12345678903", "status": "PROCESSED", "accrual": 729.98})),
        (status = 204, description = "The order is not registered (yet)."),
        (status = 429, description = "Over the rate limit; every caller should pause.",
            body = String, content_type = "text/plain",
            headers(("Retry-After" = u64, description = "Seconds to wait.")),
            example = "No more than 10 requests per minute allowed"),
        (status = 500, description = "An injected failure (`--fail-rate`).",
            body = String, content_type = "text/plain", example = "internal server error"),
    )
)]
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
#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({"match": "Bork", "reward": 10, "reward_type": "%"}))]
struct RuleRequest {
    /// Goods whose description contains this text earn the reward.
    #[serde(rename = "match")]
    #[schema(min_length = 1, example = "Bork")]
    pattern: String,
    /// Percent of the price (`%`) or points per good (`pt`); not negative.
    #[serde(deserialize_with = "json_number")]
    #[schema(value_type = f64, minimum = 0, example = 10)]
    reward: Decimal,
    /// `%` or `pt`.
    reward_type: WireRewardType,
}

/// How a reward counts: `%` of the price, or `pt` points flat.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
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

/// Registers a reward rule.
#[utoipa::path(
    post,
    path = "/api/goods",
    tag = "rules",
    operation_id = "register_rule",
    request_body(content = RuleRequest, content_type = "application/json",
        example = json!({"match": "Bork", "reward": 10, "reward_type": "%"})),
    responses(
        (status = 200, description = "Registered."),
        (status = 400, description = "Bad body: empty match, negative reward, unknown type.",
            body = Problem, content_type = "application/problem+json",
            example = json!({"type": "about:blank", "title": "Bad Request", "status": 400, "detail": "unknown variant `percent`, expected `%` or `pt` at line 1 column 54"})),
        (status = 409, description = "A rule with that `match` exists.",
            body = Problem, content_type = "application/problem+json",
            example = json!({"type": "about:blank", "title": "Conflict", "status": 409, "detail": "a rule for \"Bork\" is already registered"})),
        (status = 413, description = "The body is larger than 1 MiB."),
    )
)]
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
#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({"order": "12345678903", "goods": [{"description": "Bork kettle", "price": 14599.50}]}))]
struct OrderRequest {
    /// The order number: digits with a valid Luhn checksum.
    #[schema(example = "12345678903")]
    order: String,
    /// What was bought.
    goods: Vec<GoodRequest>,
}

/// A good in an order.
#[derive(Debug, Deserialize, ToSchema)]
struct GoodRequest {
    /// Matched against the rules' `match`.
    #[schema(example = "Bork kettle")]
    description: String,
    /// The price, not negative.
    #[serde(deserialize_with = "json_number")]
    #[schema(value_type = f64, minimum = 0, example = 14599.50)]
    price: Decimal,
}

/// Registers a purchase for computation.
#[utoipa::path(
    post,
    path = "/api/orders",
    tag = "orders",
    operation_id = "register_order",
    request_body(content = OrderRequest, content_type = "application/json",
        example = json!({"order": "12345678903", "goods": [{"description": "Bork kettle", "price": 14599.50}]})),
    responses(
        (status = 202, description = "Accepted for computation."),
        (status = 400, description = "Bad body or bad (Luhn) order number.",
            body = Problem, content_type = "application/problem+json",
            example = json!({"type": "about:blank", "title": "Bad Request", "status": 400, "detail": "the order number \"12345678902\" is not digits with a valid Luhn checksum"})),
        (status = 409, description = "The order is already registered.",
            body = Problem, content_type = "application/problem+json",
            example = json!({"type": "about:blank", "title": "Conflict", "status": 409, "detail": "the order 12345678903 is already registered"})),
        (status = 413, description = "The body is larger than 1 MiB."),
    )
)]
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

/// An error body (RFC 9457).
#[derive(Debug, Serialize, ToSchema)]
struct Problem<'a> {
    /// Always `about:blank`.
    #[serde(rename = "type")]
    #[schema(value_type = String, example = "about:blank")]
    kind: &'static str,
    /// The status code's reason phrase.
    #[schema(value_type = String, example = "Bad Request")]
    title: &'static str,
    /// The HTTP status code.
    status: u16,
    /// What went wrong.
    #[schema(value_type = String)]
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
    use std::collections::BTreeSet;

    use actix_web::{test as actix_test, App};
    use rust_decimal_macros::dec;
    use serde_json::Value;

    use super::*;

    /// `(METHOD, path)` of every operation in the document.
    fn documented() -> BTreeSet<(String, String)> {
        let document = serde_json::to_value(openapi()).expect("serializes");
        let methods = [
            "get", "put", "post", "delete", "options", "head", "patch", "trace",
        ];
        document["paths"]
            .as_object()
            .expect("paths")
            .iter()
            .flat_map(|(path, item)| {
                methods
                    .iter()
                    .filter(|method| item.get(**method).is_some())
                    .map(|method| (method.to_uppercase(), path.clone()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn the_routes_registered_and_the_operations_documented_are_the_same() {
        let registered: BTreeSet<(String, String)> = endpoints()
            .into_iter()
            .map(|endpoint| (endpoint.method.to_string(), endpoint.path))
            .collect();
        let documented = documented();

        assert_eq!(
            registered, documented,
            "left: registered routes, right: documented operations"
        );
        for expected in [
            ("GET", "/api/orders/{number}"),
            ("POST", "/api/orders"),
            ("POST", "/api/goods"),
            ("GET", "/healthz"),
        ] {
            assert!(
                documented.contains(&(expected.0.to_owned(), expected.1.to_owned())),
                "{expected:?}"
            );
        }
    }

    #[actix_web::test]
    async fn actix_serves_each_documented_method_and_refuses_the_others() {
        let state = web::Data::new(AppState::new(&Config::ephemeral()));
        let app = actix_test::init_service(App::new().app_data(state).configure(routes)).await;
        let documented = documented();
        let paths: BTreeSet<&String> = documented.iter().map(|(_, path)| path).collect();

        for path in paths {
            let concrete = path.replace("{number}", "12345678903");
            for method in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
                let request = actix_test::TestRequest::default()
                    .method(Method::from_bytes(method.as_bytes()).expect("a method"))
                    .uri(&concrete)
                    .to_request();
                let status = actix_test::call_service(&app, request).await.status();
                if documented.contains(&(method.to_owned(), path.clone())) {
                    assert!(
                        status != StatusCode::NOT_FOUND && status != StatusCode::METHOD_NOT_ALLOWED,
                        "{method} {path} is documented but not routed: {status}"
                    );
                } else {
                    assert_eq!(
                        status,
                        StatusCode::METHOD_NOT_ALLOWED,
                        "{method} {path} is not documented but answers"
                    );
                }
            }
        }
    }

    #[actix_web::test]
    async fn the_description_is_served() {
        let state = web::Data::new(AppState::new(&Config::ephemeral()));
        let app = actix_test::init_service(App::new().app_data(state).configure(routes)).await;

        let document: Value = actix_test::call_and_read_body_json(
            &app,
            actix_test::TestRequest::get()
                .uri(OPENAPI_PATH)
                .to_request(),
        )
        .await;

        assert_eq!(document["openapi"], "3.1.0");
        assert!(document["paths"]["/api/orders/{number}"]["get"].is_object());
    }

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
