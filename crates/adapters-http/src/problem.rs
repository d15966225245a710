//! Error bodies in the `application/problem+json` format (RFC 9457), and the translation of
//! storage failures into 500 and 503.

use actix_web::{
    body::{BoxBody, EitherBody},
    dev::ServiceResponse,
    http::{header, StatusCode},
    middleware::ErrorHandlerResponse,
    HttpResponse,
};
use application::RepositoryError;
use serde::Serialize;
use utoipa::ToSchema;

/// The media type of error bodies.
pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

/// An error body (RFC 9457). Server errors (5xx) leave `detail` out, except a failed readiness
/// check, which gives its reason.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({
    "type": "about:blank",
    "title": "Unprocessable Entity",
    "status": 422,
    "detail": "the order number fails the Luhn checksum"
}))]
pub struct Problem {
    /// Always `about:blank`: the status code says what kind of problem it is.
    #[serde(rename = "type")]
    #[schema(value_type = String, example = "about:blank")]
    kind: &'static str,
    /// The status code's reason phrase.
    #[schema(example = "Unprocessable Entity")]
    title: String,
    /// The HTTP status code.
    #[schema(example = 422)]
    status: u16,
    /// What went wrong, for a person to read.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "the order number fails the Luhn checksum")]
    detail: Option<String>,
}

/// A response with a problem body.
pub fn problem(status: StatusCode, detail: impl Into<Option<String>>) -> HttpResponse {
    let body = Problem {
        kind: "about:blank",
        title: status.canonical_reason().unwrap_or("Error").to_owned(),
        status: status.as_u16(),
        detail: detail.into(),
    };
    let mut response = HttpResponse::build(status);
    response.content_type(PROBLEM_CONTENT_TYPE);
    if status == StatusCode::UNAUTHORIZED {
        response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
    }
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response.insert_header((header::RETRY_AFTER, "1"));
    }
    response.json(body)
}

/// The problem response of a handler's error: its status, and its message as the detail when
/// it is the client's error (server failures say nothing more than their status).
pub fn error_problem<E: actix_web::ResponseError>(error: &E) -> HttpResponse {
    let status = error.status_code();
    problem(status, status.is_client_error().then(|| error.to_string()))
}

/// The status for a storage failure: 503 when the database is out of reach (worth retrying),
/// 500 otherwise. A 500 is logged as an error with its whole cause chain; a 503 only at debug
/// level, since the storage adapter reports an outage once, when it begins and when it ends,
/// and the metrics count the 503s. The body says nothing more.
pub fn repository_status(error: &RepositoryError) -> StatusCode {
    match error {
        RepositoryError::Unavailable(_) => {
            tracing::debug!(error = %chain(error), "request refused: the database is unavailable");
            StatusCode::SERVICE_UNAVAILABLE
        }
        RepositoryError::Internal(_) => {
            log_chain(error);
            StatusCode::INTERNAL_SERVER_ERROR
        }
    }
}

/// An error with every cause beneath it.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut chain = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        chain.push_str(": ");
        chain.push_str(&cause.to_string());
        source = cause.source();
    }
    chain
}

/// Logs an error with every cause beneath it.
pub fn log_chain(error: &(dyn std::error::Error + 'static)) {
    tracing::error!(error = %chain(error), "request failed");
}

/// Gives every error response that lacks one a problem body: routing misses (404, 405) and
/// extractor failures of actix itself.
///
/// # Errors
/// Never; the signature is actix's.
pub fn ensure_problem_body<B>(
    res: ServiceResponse<B>,
) -> actix_web::Result<ErrorHandlerResponse<B>> {
    let is_problem = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with(PROBLEM_CONTENT_TYPE));
    if is_problem {
        return Ok(ErrorHandlerResponse::Response(res.map_into_left_body()));
    }
    let status = res.status();
    let (req, original) = res.into_parts();
    let mut response = problem(status, None);
    // A 405 names the methods the resource allows (RFC 9110); keep that.
    if let Some(allow) = original.headers().get(header::ALLOW) {
        response.headers_mut().insert(header::ALLOW, allow.clone());
    }
    let response: ServiceResponse<EitherBody<B, BoxBody>> =
        ServiceResponse::new(req, response).map_into_right_body();
    Ok(ErrorHandlerResponse::Response(response))
}
