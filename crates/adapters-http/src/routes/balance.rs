//! `GET /api/user/balance`, `POST /api/user/balance/withdraw` and `GET /api/user/withdrawals`.

use actix_web::{http::StatusCode, web, HttpRequest, HttpResponse, ResponseError};
use application::use_cases::{self, WithdrawError};
use chrono::{DateTime, Utc};
use domain::{Money, OrderNumber, Withdrawal};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{
    conditional::{json_or_not_modified, PageQuery},
    metrics::PointsWithdrawn,
    problem::{error_problem, repository_status, Problem},
    routes::{
        json::{decimal, money, rfc3339, JsonObject},
        orders::{ListError, ReadError},
    },
    schemas::{
        money_schema, order_number_schema, positive_money_schema, Internal, PayloadTooLarge,
        TooManyRequests, Unauthorized, Unavailable,
    },
    AppState, AuthenticatedUser,
};

/// The balance.
#[derive(Debug, Serialize, ToSchema, Hash)]
#[schema(example = json!({"current": 500.5, "withdrawn": 42}))]
pub struct BalanceBody {
    /// Points that can be spent.
    #[serde(serialize_with = "money")]
    #[schema(schema_with = money_schema)]
    current: Money,
    /// Points ever spent.
    #[serde(serialize_with = "money")]
    #[schema(schema_with = money_schema)]
    withdrawn: Money,
}

impl From<domain::Balance> for BalanceBody {
    fn from(balance: domain::Balance) -> Self {
        Self {
            current: balance.current,
            withdrawn: balance.withdrawn,
        }
    }
}

/// Shows the spendable balance and the total ever spent.
#[utoipa::path(
    get,
    path = "/api/user/balance",
    tag = "balance",
    operation_id = "balance",
    summary = "Show the balance",
    description = "The points the customer can spend, and the total they ever spent. One point \
        is worth one rouble; amounts are exact JSON numbers with up to two decimal places.",
    responses(
        (status = 200, description = "The balance.", body = BalanceBody,
            headers(("ETag" = String, description = "Send it in `If-None-Match` to be answered 304 while the balance is the same.")),
            example = json!({"current": 500.5, "withdrawn": 42})),
        (status = 304, description = "`If-None-Match` named the balance's current `ETag`: nothing changed."),
        (status = 401, response = Unauthorized),
        (status = 429, response = TooManyRequests),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    ),
    security(("bearer" = []), ("cookie" = []))
)]
pub async fn balance(
    state: web::Data<AppState>,
    user: AuthenticatedUser,
    req: HttpRequest,
) -> Result<HttpResponse, ReadError> {
    let balance = use_cases::balance(state.ledger.as_ref(), user.0).await?;
    let body = BalanceBody::from(balance);
    Ok(json_or_not_modified(&req, &body, &body, None))
}

/// The body of a withdrawal: `{"order": "2377225624", "sum": 751}`.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({"order": "2377225624", "sum": 751}))]
pub struct WithdrawBody {
    /// The number of the new order the points pay for (digits, valid Luhn checksum).
    #[schema(schema_with = order_number_schema)]
    order: String,
    /// Points to spend: greater than zero, at most two decimal places.
    #[schema(schema_with = positive_money_schema)]
    sum: serde_json::Number,
}

impl WithdrawBody {
    fn try_into_domain(self) -> Result<(OrderNumber, Money), WithdrawHandlerError> {
        let order = OrderNumber::parse(&self.order)
            .map_err(|e| WithdrawHandlerError::InvalidOrder(e.to_string()))?;
        let sum = decimal(&self.sum)
            .ok_or_else(|| {
                WithdrawHandlerError::InvalidSum("the sum is not a decimal number".into())
            })
            .and_then(|d| {
                Money::new(d).map_err(|e| WithdrawHandlerError::InvalidSum(e.to_string()))
            })?;
        Ok((order, sum))
    }
}

/// Why a withdrawal was refused.
#[derive(Debug, thiserror::Error)]
pub enum WithdrawHandlerError {
    #[error("{0}")]
    InvalidOrder(String),
    #[error("{0}")]
    InvalidSum(String),
    #[error(transparent)]
    UseCase(#[from] WithdrawError),
}

impl ResponseError for WithdrawHandlerError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::InvalidOrder(_) | Self::InvalidSum(_) | Self::UseCase(WithdrawError::ZeroSum) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            Self::UseCase(WithdrawError::InsufficientFunds) => StatusCode::PAYMENT_REQUIRED,
            Self::UseCase(WithdrawError::OrderNumberTaken) => StatusCode::CONFLICT,
            Self::UseCase(WithdrawError::Repository(e)) => repository_status(e),
        }
    }

    fn error_response(&self) -> HttpResponse {
        error_problem(self)
    }
}

/// Spends points on an order.
#[utoipa::path(
    post,
    path = "/api/user/balance/withdraw",
    tag = "balance",
    operation_id = "withdraw",
    summary = "Spend points on an order",
    description = "Takes `sum` points from the balance to pay for the order numbered `order`. \
        The withdrawal is complete once answered 200; the balance never goes negative. Sending \
        the same withdrawal again does not charge twice.",
    request_body(
        content = WithdrawBody,
        content_type = "application/json",
        example = json!({"order": "2377225624", "sum": 751})
    ),
    responses(
        (status = 200, description = "Done: the points are spent."),
        (status = 400, description = "Malformed request: not JSON or a field missing.",
            body = Problem, content_type = "application/problem+json",
            example = json!({"type": "about:blank", "title": "Bad Request", "status": 400, "detail": "Json deserialize error: missing field `sum` at line 1 column 22"})),
        (status = 401, response = Unauthorized),
        (status = 429, response = TooManyRequests),
        (status = 402, description = "Not enough points.",
            body = Problem, content_type = "application/problem+json",
            example = json!({"type": "about:blank", "title": "Payment Required", "status": 402, "detail": "not enough points"})),
        (status = 409, description = "The order number was already used for another withdrawal.",
            body = Problem, content_type = "application/problem+json",
            example = json!({"type": "about:blank", "title": "Conflict", "status": 409, "detail": "the order number was already used for another withdrawal"})),
        (status = 413, response = PayloadTooLarge),
        (status = 422, description = "A bad order number, or a sum that is not positive or has more than two decimal places.",
            body = Problem, content_type = "application/problem+json",
            example = json!({"type": "about:blank", "title": "Unprocessable Entity", "status": 422, "detail": "the order number fails the Luhn checksum"})),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    ),
    security(("bearer" = []), ("cookie" = []))
)]
pub async fn withdraw(
    state: web::Data<AppState>,
    user: AuthenticatedUser,
    body: JsonObject<WithdrawBody>,
) -> Result<HttpResponse, WithdrawHandlerError> {
    let (order, sum) = body.0.try_into_domain()?;
    use_cases::withdraw(
        state.ledger.as_ref(),
        state.clock.as_ref(),
        user.0,
        &order,
        sum,
    )
    .await?;
    let mut response = HttpResponse::Ok().finish();
    response.extensions_mut().insert(PointsWithdrawn(sum));
    Ok(response)
}

/// A withdrawal in the list.
#[derive(Debug, Serialize, ToSchema, Hash)]
#[schema(example = json!({"order": "2377225624", "sum": 500, "processed_at": "2020-12-09T13:09:57Z"}))]
pub struct WithdrawalItem {
    /// The order the points paid for.
    #[schema(example = "2377225624")]
    order: String,
    /// Points spent.
    #[serde(serialize_with = "money")]
    #[schema(schema_with = money_schema)]
    sum: Money,
    /// When the withdrawal was made (RFC 3339).
    #[serde(serialize_with = "rfc3339")]
    processed_at: DateTime<Utc>,
}

impl From<Withdrawal> for WithdrawalItem {
    fn from(withdrawal: Withdrawal) -> Self {
        Self {
            order: withdrawal.order.into(),
            sum: withdrawal.sum,
            processed_at: withdrawal.processed_at,
        }
    }
}

/// Lists the user's withdrawals, newest first; 204 when there are none.
#[utoipa::path(
    get,
    path = "/api/user/withdrawals",
    tag = "balance",
    operation_id = "list_withdrawals",
    summary = "List withdrawals",
    description = "The customer's withdrawals, newest first: all of them, or one page with \
        `limit` (and `before` from the previous page's `Link`). The answer's `ETag` may be sent \
        back in `If-None-Match`: 304 when nothing changed.",
    params(PageQuery),
    responses(
        (status = 200, description = "The withdrawals, newest first.", body = [WithdrawalItem],
            headers(
                ("ETag" = String, description = "Send it in `If-None-Match` to be answered 304 while the list is the same."),
                ("Link" = String, description = "With `limit`, when more withdrawals follow: `<…?limit=N&before=…>; rel=\"next\"`.")
            ),
            example = json!([
                {"order": "2377225624", "sum": 500, "processed_at": "2020-12-09T13:09:57Z"},
                {"order": "79927398713", "sum": 42.5, "processed_at": "2020-12-08T10:00:00Z"}
            ])),
        (status = 204, description = "The customer has made no withdrawals (or the page is empty)."),
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
pub async fn withdrawals(
    state: web::Data<AppState>,
    user: AuthenticatedUser,
    req: HttpRequest,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ListError> {
    let (withdrawals, next) = match query.request()? {
        None => (
            use_cases::withdrawals(state.ledger.as_ref(), user.0).await?,
            None,
        ),
        Some(page) => {
            let found = use_cases::withdrawals_page(state.ledger.as_ref(), user.0, page).await?;
            (found.items, found.next.map(|next| (next, page.limit)))
        }
    };
    if withdrawals.is_empty() {
        return Ok(HttpResponse::NoContent().finish());
    }
    let items: Vec<WithdrawalItem> = withdrawals.into_iter().map(WithdrawalItem::from).collect();
    Ok(json_or_not_modified(
        &req,
        &items,
        &items,
        next.as_ref().map(|(cursor, limit)| (cursor, *limit)),
    ))
}
