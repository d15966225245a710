//! Prometheus metrics of the HTTP layer (requests by method, route pattern and status, their
//! latency, requests in flight, points spent) and the registry the rest of the service adds
//! its own metrics to. One registry per running service, so several can share a process.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use actix_web::{
    body::MessageBody,
    dev::{Service, ServiceRequest, ServiceResponse},
    http::{Method, StatusCode},
    Error,
};
use domain::Money;

use crate::limits::Refused;
use prometheus::{
    Counter, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};
use rust_decimal::prelude::ToPrimitive;

/// The route label of requests that matched no route (bounded: raw paths are never labels).
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// Put into the extensions of the answer to a successful withdrawal: the points spent.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PointsWithdrawn(pub Money);

/// The metrics registry and the HTTP layer's metrics. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    in_flight: IntGauge,
    withdrawals: IntCounter,
    points_withdrawn: Counter,
    refusals: IntCounterVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

const LABELS: [&str; 3] = ["method", "route", "status"];

impl Metrics {
    /// A fresh registry whose metric names all start with `<namespace>_`, holding the HTTP
    /// metrics.
    ///
    /// # Errors
    /// When a metric is malformed (a bug) or the namespace is not a valid name prefix.
    pub fn new(namespace: &str) -> prometheus::Result<Self> {
        let registry = Registry::new_custom(Some(namespace.to_owned()), None)?;
        let requests = IntCounterVec::new(
            Opts::new(
                "http_requests_total",
                "HTTP requests answered, by method, route pattern and status.",
            ),
            &LABELS,
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "Time from a request's arrival to its answer, by method, route pattern and status.",
            ),
            &LABELS,
        )?;
        let in_flight = IntGauge::new(
            "http_requests_in_flight",
            "HTTP requests being answered now.",
        )?;
        let withdrawals = IntCounter::new(
            "withdrawals_total",
            "Successful withdrawals answered by this process.",
        )?;
        let points_withdrawn = Counter::new(
            "points_withdrawn_total",
            "Points spent in successful withdrawals answered by this process.",
        )?;
        let refusals = IntCounterVec::new(
            Opts::new(
                "refusals_total",
                "Requests refused by an abuse limit, by limit: sign_in_throttle (failed sign-ins \
                 for a login from an address, or from an address), pending_orders (a customer's \
                 orders waiting for points), request_limit (a customer's request rate).",
            ),
            &["limit"],
        )?;
        for kind in Refused::ALL {
            refusals.with_label_values(&[kind.label()]);
        }
        registry.register(Box::new(refusals.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(withdrawals.clone()))?;
        registry.register(Box::new(points_withdrawn.clone()))?;
        Ok(Self {
            inner: Arc::new(Inner {
                registry,
                requests,
                duration,
                in_flight,
                withdrawals,
                points_withdrawn,
                refusals,
            }),
        })
    }

    /// The registry, for the rest of the service to register its metrics in.
    #[must_use]
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// Every metric of the registry in Prometheus' text exposition format.
    ///
    /// # Errors
    /// When a collector produced a metric that cannot be encoded.
    pub fn render(&self) -> prometheus::Result<String> {
        TextEncoder::new().encode_to_string(&self.inner.registry.gather())
    }

    fn observe(&self, method: &Method, route: &str, status: StatusCode, elapsed: Duration) {
        let labels = [method_label(method), route, status.as_str()];
        self.inner.requests.with_label_values(&labels).inc();
        self.inner
            .duration
            .with_label_values(&labels)
            .observe(elapsed.as_secs_f64());
    }

    fn withdrawn(&self, points: Money) {
        self.inner.withdrawals.inc();
        if let Some(points) = points.amount().to_f64() {
            self.inner.points_withdrawn.inc_by(points);
        }
    }
}

/// Methods outside the standard set share one label, so clients cannot make new series.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Counts a request as in flight until dropped, even when the client goes away first.
struct InFlight(IntGauge);

impl InFlight {
    fn enter(gauge: &IntGauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The middleware, for `App::wrap_fn`: records every request under its route pattern (not its
/// raw path, which would make a series per order number) and the points of successful
/// withdrawals.
pub(crate) fn record<S, B>(
    metrics: &Metrics,
    req: ServiceRequest,
    service: &S,
) -> impl std::future::Future<Output = Result<ServiceResponse<B>, Error>> + 'static
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error>,
    S::Future: 'static,
    B: MessageBody,
{
    let metrics = metrics.clone();
    let started = Instant::now();
    let in_flight = InFlight::enter(&metrics.inner.in_flight);
    let method = req.method().clone();
    let route = req
        .match_pattern()
        .unwrap_or_else(|| UNMATCHED_ROUTE.to_owned());
    let response = service.call(req);
    async move {
        let response = response.await;
        let status = match &response {
            Ok(response) => response.status(),
            Err(error) => error.as_response_error().status_code(),
        };
        metrics.observe(&method, &route, status, started.elapsed());
        if let Ok(response) = &response {
            if let Some(PointsWithdrawn(points)) =
                response.response().extensions().get::<PointsWithdrawn>()
            {
                metrics.withdrawn(*points);
            }
            if let Some(refused) = response.response().extensions().get::<Refused>() {
                metrics
                    .inner
                    .refusals
                    .with_label_values(&[refused.label()])
                    .inc();
            }
        }
        drop(in_flight);
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonstandard_methods_share_one_label() {
        let method = Method::from_bytes(b"BREW").expect("a method");

        assert_eq!(method_label(&method), "other");
        assert_eq!(method_label(&Method::POST), "POST");
    }

    #[test]
    fn metric_names_carry_the_namespace() {
        let metrics = Metrics::new("gophermart").expect("metrics");
        metrics.observe(
            &Method::GET,
            "/api/user/balance",
            StatusCode::OK,
            Duration::from_millis(3),
        );

        let text = metrics.render().expect("text");

        assert!(
            text.contains(
                r#"gophermart_http_requests_total{method="GET",route="/api/user/balance",status="200"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains("gophermart_http_request_duration_seconds_bucket"));
    }
}
