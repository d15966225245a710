//! `POST /api/user/orders` (upload a number) and `GET /api/user/orders` (list them).

use actix_web::{
    http::{header, StatusCode},
    web, HttpRequest, HttpResponse, ResponseError,
};
use application::{
    use_cases::{self, UploadOrderError, Uploaded},
    RepositoryError,
};
use chrono::{DateTime, Utc};
use domain::{Money, Order, OrderNumber};
use serde::Serialize;

use crate::{
    problem::{problem, repository_status},
    routes::json::{optional_money, rfc3339},
    AppState, AuthenticatedUser,
};

/// Why an upload was refused.
#[derive(thiserror::Error)]
pub enum UploadHandlerError {
    #[error("{0}")]
    Malformed(String),
    #[error("{0}")]
    InvalidNumber(#[from] domain::OrderNumberError),
    #[error(transparent)]
    UseCase(#[from] UploadOrderError),
}

impl std::fmt::Debug for UploadHandlerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl ResponseError for UploadHandlerError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::Malformed(_) => StatusCode::BAD_REQUEST,
            Self::InvalidNumber(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::UseCase(UploadOrderError::UploadedByAnotherUser) => StatusCode::CONFLICT,
            Self::UseCase(UploadOrderError::Repository(e)) => repository_status(e),
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        let detail = status.is_client_error().then(|| self.to_string());
        problem(status, detail)
    }
}

/// Reads the order number from a `text/plain` body; surrounding whitespace is ignored.
fn order_number(req: &HttpRequest, body: &[u8]) -> Result<OrderNumber, UploadHandlerError> {
    if let Some(content_type) = req.headers().get(header::CONTENT_TYPE) {
        let plain = content_type
            .to_str()
            .ok()
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("text/plain"));
        if !plain {
            return Err(UploadHandlerError::Malformed(
                "the order number must be sent as text/plain".into(),
            ));
        }
    }
    let text = std::str::from_utf8(body)
        .map_err(|_| UploadHandlerError::Malformed("the body is not UTF-8 text".into()))?
        .trim();
    if text.is_empty() {
        return Err(UploadHandlerError::Malformed(
            "the body must hold an order number".into(),
        ));
    }
    Ok(OrderNumber::parse(text)?)
}

/// Uploads an order number: 202 when new, 200 when the user had already uploaded it.
#[tracing::instrument(name = "upload_order", skip_all, fields(user_id = %user.0))]
pub async fn upload(
    state: web::Data<AppState>,
    user: AuthenticatedUser,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, UploadHandlerError> {
    let number = order_number(&req, &body)?;
    let uploaded =
        use_cases::upload_order(state.orders.as_ref(), state.clock.as_ref(), user.0, &number)
            .await?;
    Ok(match uploaded {
        Uploaded::Accepted => HttpResponse::Accepted().finish(),
        Uploaded::AlreadyUploadedByYou => HttpResponse::Ok().finish(),
    })
}

/// An order in the list.
#[derive(Debug, Serialize)]
pub struct OrderItem {
    number: String,
    status: &'static str,
    #[serde(
        serialize_with = "optional_money",
        skip_serializing_if = "Option::is_none"
    )]
    accrual: Option<Money>,
    #[serde(serialize_with = "rfc3339")]
    uploaded_at: DateTime<Utc>,
}

impl From<Order> for OrderItem {
    fn from(order: Order) -> Self {
        Self {
            number: order.number.to_string(),
            status: order.status.as_str(),
            accrual: order.accrual,
            uploaded_at: order.uploaded_at,
        }
    }
}

/// A storage failure while reading.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct ReadError(#[from] pub RepositoryError);

impl ResponseError for ReadError {
    fn status_code(&self) -> StatusCode {
        repository_status(&self.0)
    }

    fn error_response(&self) -> HttpResponse {
        problem(self.status_code(), None)
    }
}

/// Lists the user's orders, newest first; 204 when there are none.
#[tracing::instrument(name = "list_orders", skip_all, fields(user_id = %user.0))]
pub async fn list(
    state: web::Data<AppState>,
    user: AuthenticatedUser,
) -> Result<HttpResponse, ReadError> {
    let orders = use_cases::list_orders(state.orders.as_ref(), user.0).await?;
    if orders.is_empty() {
        return Ok(HttpResponse::NoContent().finish());
    }
    let items: Vec<OrderItem> = orders.into_iter().map(OrderItem::from).collect();
    Ok(HttpResponse::Ok().json(items))
}
