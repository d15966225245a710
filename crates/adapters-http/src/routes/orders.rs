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
use utoipa::ToSchema;

use crate::{
    conditional::{json_or_not_modified, PageError, PageQuery},
    limits::Refused,
    problem::{error_problem, problem, repository_status, Problem},
    routes::json::{optional_money, rfc3339},
    schemas::{
        money_schema, Internal, OrderNumberText, PayloadTooLarge, TooManyRequests, Unauthorized,
        Unavailable,
    },
    AppState, AuthenticatedUser,
};

/// Why an upload was refused.
#[derive(Debug, thiserror::Error)]
pub enum UploadHandlerError {
    #[error("{0}")]
    Malformed(String),
    #[error("{0}")]
    InvalidNumber(#[from] domain::OrderNumberError),
    #[error(transparent)]
    UseCase(#[from] UploadOrderError),
}

impl ResponseError for UploadHandlerError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::Malformed(_) => StatusCode::BAD_REQUEST,
            Self::InvalidNumber(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::UseCase(UploadOrderError::UploadedByAnotherUser) => StatusCode::CONFLICT,
            Self::UseCase(UploadOrderError::TooManyPending { .. }) => StatusCode::TOO_MANY_REQUESTS,
            Self::UseCase(UploadOrderError::Repository(e)) => repository_status(e),
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = error_problem(self);
        if let Self::UseCase(UploadOrderError::TooManyPending { .. }) = self {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, PENDING_RETRY_AFTER_SECONDS.into());
            response.extensions_mut().insert(Refused::PendingOrders);
        }
        response
    }
}

/// The `Retry-After` of an upload refused at the pending-orders limit: the accrual system
/// settles orders at its own pace, so this is a hint, not a promise.
const PENDING_RETRY_AFTER_SECONDS: u32 = 60;

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
#[utoipa::path(
    post,
    path = "/api/user/orders",
    tag = "orders",
    operation_id = "upload_order",
    summary = "Upload an order number",
    description = "Hands in the number of an order the customer bought, as a `text/plain` body. \
        Numbers are digits with a valid Luhn checksum, unique across all customers; the service \
        then asks the accrual system how many points the order earns.",
    request_body(
        content = OrderNumberText,
        content_type = "text/plain",
        description = "The order number.",
        example = "12345678903"
    ),
    responses(
        (status = 200, description = "This customer had already uploaded this number."),
        (status = 202, description = "New number, accepted for processing."),
        (status = 400, description = "Malformed request: not `text/plain`, not UTF-8, or empty.",
            body = Problem, content_type = "application/problem+json",
            example = json!({"type": "about:blank", "title": "Bad Request", "status": 400, "detail": "the body must hold an order number"})),
        (status = 401, response = Unauthorized),
        (status = 429, description = "Nothing was stored: the customer has as many orders waiting \
            for their points as allowed (the detail names the limit; final orders do not count), \
            or sent requests faster than their limit allows (see the `RateLimit` fields).",
            body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait before trying again.")),
            example = json!({"type": "about:blank", "title": "Too Many Requests", "status": 429, "detail": "1000 of your orders are waiting for their points already; upload more once some are processed"})),
        (status = 409, description = "Another customer already uploaded this number.",
            body = Problem, content_type = "application/problem+json",
            example = json!({"type": "about:blank", "title": "Conflict", "status": 409, "detail": "the order number was uploaded by another user"})),
        (status = 413, response = PayloadTooLarge),
        (status = 422, description = "The number is not digits or fails the Luhn checksum.",
            body = Problem, content_type = "application/problem+json",
            example = json!({"type": "about:blank", "title": "Unprocessable Entity", "status": 422, "detail": "the order number fails the Luhn checksum"})),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    ),
    security(("bearer" = []), ("cookie" = []))
)]
pub async fn upload(
    state: web::Data<AppState>,
    user: AuthenticatedUser,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, UploadHandlerError> {
    let number = order_number(&req, &body)?;
    let uploaded = use_cases::upload_order(
        state.orders.as_ref(),
        state.clock.as_ref(),
        user.0,
        &number,
        state.pending_limit,
    )
    .await?;
    Ok(match uploaded {
        Uploaded::Accepted => HttpResponse::Accepted().finish(),
        Uploaded::AlreadyUploadedByYou => HttpResponse::Ok().finish(),
    })
}

/// An order in the list.
#[derive(Debug, Serialize, ToSchema, Hash)]
#[schema(example = json!({
    "number": "9278923470",
    "status": "PROCESSED",
    "accrual": 500,
    "uploaded_at": "2020-12-10T12:15:45Z"
}))]
pub struct OrderItem {
    /// The order number.
    #[schema(example = "9278923470")]
    number: String,
    /// `NEW`: not started by the accrual system; `PROCESSING`: being computed; `INVALID`:
    /// refused, final, no points; `PROCESSED`: final, points credited.
    status: OrderStatus,
    /// Points credited; present only when some were.
    #[serde(
        serialize_with = "optional_money",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(schema_with = money_schema, required = false)]
    accrual: Option<Money>,
    /// When the number was uploaded (RFC 3339).
    #[serde(serialize_with = "rfc3339")]
    uploaded_at: DateTime<Utc>,
}

/// An order's status as customers see it.
#[derive(Debug, Clone, Copy, Serialize, ToSchema, Hash)]
#[serde(rename_all = "UPPERCASE")]
pub enum OrderStatus {
    /// Uploaded; the accrual system has not started on it.
    New,
    /// The accrual system is computing the reward.
    Processing,
    /// The accrual system refused it; final, no points.
    Invalid,
    /// Done, points (possibly none) credited; final.
    Processed,
}

impl From<domain::OrderStatus> for OrderStatus {
    fn from(status: domain::OrderStatus) -> Self {
        match status {
            domain::OrderStatus::New => Self::New,
            domain::OrderStatus::Processing => Self::Processing,
            domain::OrderStatus::Invalid => Self::Invalid,
            domain::OrderStatus::Processed => Self::Processed,
        }
    }
}

impl From<Order> for OrderItem {
    fn from(order: Order) -> Self {
        Self {
            number: order.number.into(),
            status: order.status.into(),
            accrual: order.accrual,
            uploaded_at: order.uploaded_at,
        }
    }
}

/// A storage failure while reading.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct ReadError(#[from] pub RepositoryError);

/// Why a list could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    #[error(transparent)]
    Page(#[from] PageError),
    #[error(transparent)]
    Read(#[from] ReadError),
}

impl From<RepositoryError> for ListError {
    fn from(error: RepositoryError) -> Self {
        Self::Read(ReadError(error))
    }
}

impl ResponseError for ListError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::Page(error) => error.status_code(),
            Self::Read(error) => error.status_code(),
        }
    }

    fn error_response(&self) -> HttpResponse {
        match self {
            Self::Page(error) => error.error_response(),
            Self::Read(error) => error.error_response(),
        }
    }
}

impl ResponseError for ReadError {
    fn status_code(&self) -> StatusCode {
        repository_status(&self.0)
    }

    fn error_response(&self) -> HttpResponse {
        problem(self.status_code(), None)
    }
}

/// Lists the user's orders, newest first; 204 when there are none.
#[utoipa::path(
    get,
    path = "/api/user/orders",
    tag = "orders",
    operation_id = "list_orders",
    summary = "List uploaded orders",
    description = "The customer's orders with their status and accrual, newest first: all of \
        them, or one page with `limit` (and `before` from the previous page's `Link`). The \
        answer's `ETag` may be sent back in `If-None-Match`: 304 when nothing changed.",
    params(PageQuery),
    responses(
        (status = 200, description = "The orders, newest first.", body = [OrderItem],
            headers(
                ("ETag" = String, description = "Send it in `If-None-Match` to be answered 304 while the list is the same."),
                ("Link" = String, description = "With `limit`, when more orders follow: `<…?limit=N&before=…>; rel=\"next\"`.")
            ),
            example = json!([
                {"number": "9278923470", "status": "PROCESSED", "accrual": 500, "uploaded_at": "2020-12-10T12:15:45Z"},
                {"number": "12345678903", "status": "PROCESSING", "uploaded_at": "2020-12-10T12:12:23Z"},
                {"number": "346436439", "status": "INVALID", "uploaded_at": "2020-12-09T13:09:57Z"}
            ])),
        (status = 204, description = "The customer has uploaded no orders (or the page is empty)."),
        (status = 304, description = "`If-None-Match` named the list's current `ETag`: nothing changed."),
        (status = 400, description = "`limit` out of 1–1000, or `before` not a cursor of this list.",
            body = Problem, content_type = "application/problem+json",
            example = json!({"type": "about:blank", "title": "Bad Request", "status": 400, "detail": "limit must be between 1 and 1000"})),
        (status = 401, response = Unauthorized),
        (status = 429, response = TooManyRequests),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    ),
    security(("bearer" = []), ("cookie" = []))
)]
pub async fn list(
    state: web::Data<AppState>,
    user: AuthenticatedUser,
    req: HttpRequest,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ListError> {
    let (orders, next) = match query.request()? {
        None => (
            use_cases::list_orders(state.orders.as_ref(), user.0).await?,
            None,
        ),
        Some(page) => {
            let found = use_cases::list_orders_page(state.orders.as_ref(), user.0, page).await?;
            (found.items, found.next.map(|next| (next, page.limit)))
        }
    };
    if orders.is_empty() {
        return Ok(HttpResponse::NoContent().finish());
    }
    let items: Vec<OrderItem> = orders.into_iter().map(OrderItem::from).collect();
    Ok(json_or_not_modified(
        &req,
        &items,
        &items,
        next.as_ref().map(|(cursor, limit)| (cursor, *limit)),
    ))
}
