//! Refusals by the abuse limits, as HTTP: each customer's request limit (429 with
//! `Retry-After`), the IETF `RateLimit` and `RateLimit-Policy` fields on every answer to a
//! customer (draft-ietf-httpapi-ratelimit-headers), and the kind of each refusal for the
//! metrics.

use actix_web::{
    body::MessageBody,
    dev::{Service, ServiceRequest, ServiceResponse},
    http::header::{HeaderMap, HeaderName, HeaderValue},
    Error, HttpMessage,
};
use application::use_cases::Allowance;

/// The name of the policy in the `RateLimit` fields.
const POLICY: &str = "customer";

const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

/// What refused a request; put into the extensions of the answer for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Too many failed sign-ins for the login from the address, or from the address.
    SignInThrottle,
    /// The customer has as many orders pending as allowed.
    PendingOrders,
    /// The customer sent requests faster than their limit.
    RequestLimit,
    /// The customer, or the instance, has as many event streams open as allowed.
    EventStreams,
}

impl Refused {
    /// The metric label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::SignInThrottle => "sign_in_throttle",
            Self::PendingOrders => "pending_orders",
            Self::RequestLimit => "request_limit",
            Self::EventStreams => "event_streams",
        }
    }

    /// Every kind, so that the metric shows each from the start.
    pub(crate) const ALL: [Self; 4] = [
        Self::SignInThrottle,
        Self::PendingOrders,
        Self::RequestLimit,
        Self::EventStreams,
    ];
}

/// A `Retry-After` in whole seconds: `wait` rounded up, at least one.
pub(crate) fn retry_after_seconds(wait: std::time::Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

/// Sets the `RateLimit` and `RateLimit-Policy` fields of an answer.
pub(crate) fn insert_fields(headers: &mut HeaderMap, allowance: &Allowance) {
    let policy = item(
        ("q", u64::from(allowance.quota)),
        ("w", allowance.window_seconds),
    );
    let state = item(
        ("r", u64::from(allowance.remaining)),
        ("t", allowance.reset_seconds),
    );
    for (name, value) in [(RATELIMIT_POLICY, policy), (RATELIMIT, state)] {
        if let Ok(value) = HeaderValue::from_bytes(&value) {
            headers.insert(name, value);
        }
    }
}

/// `"customer";<key>=<value>;<key>=<value>`, written without the formatting machinery: these
/// fields go on every answer to a customer.
fn item(first: (&str, u64), second: (&str, u64)) -> Vec<u8> {
    let mut out = Vec::with_capacity(48);
    out.push(b'"');
    out.extend_from_slice(POLICY.as_bytes());
    out.push(b'"');
    for (key, value) in [first, second] {
        out.push(b';');
        out.extend_from_slice(key.as_bytes());
        out.push(b'=');
        out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
    }
    out
}

/// The middleware, for `App::wrap_fn`: an answer to a request that the customer's limit
/// counted carries the fields (a refusal sets them itself).
pub(crate) fn rate_limit_fields<S, B>(
    req: ServiceRequest,
    service: &S,
) -> impl std::future::Future<Output = Result<ServiceResponse<B>, Error>> + 'static
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error>,
    S::Future: 'static,
    B: MessageBody,
{
    let response = service.call(req);
    async move {
        let mut response = response.await?;
        let allowance = response.request().extensions().get::<Allowance>().copied();
        if let Some(allowance) = allowance {
            insert_fields(response.headers_mut(), &allowance);
        }
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fields_follow_the_drafts_structured_syntax() {
        let mut headers = HeaderMap::new();
        insert_fields(
            &mut headers,
            &Allowance {
                quota: 200,
                window_seconds: 2,
                remaining: 150,
                reset_seconds: 1,
            },
        );

        assert_eq!(
            headers.get("ratelimit-policy").expect("set"),
            r#""customer";q=200;w=2"#
        );
        assert_eq!(
            headers.get("ratelimit").expect("set"),
            r#""customer";r=150;t=1"#
        );
    }
}
