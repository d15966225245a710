//! `GET /api/user/balance`, `POST /api/user/balance/withdraw` and `GET /api/user/withdrawals`.

use actix_web::{http::StatusCode, web, HttpResponse, ResponseError};
use application::use_cases::{self, WithdrawError};
use chrono::{DateTime, Utc};
use domain::{Money, OrderNumber, Withdrawal};
use serde::{Deserialize, Serialize};

use crate::{
    problem::{problem, repository_status},
    routes::{
        json::{decimal, money, rfc3339},
        orders::ReadError,
    },
    AppState, AuthenticatedUser,
};

/// The balance.
#[derive(Debug, Serialize)]
pub struct BalanceBody {
    #[serde(serialize_with = "money")]
    current: Money,
    #[serde(serialize_with = "money")]
    withdrawn: Money,
}

/// Shows the spendable balance and the total ever spent.
#[tracing::instrument(name = "balance", skip_all, fields(user_id = %user.0))]
pub async fn balance(
    state: web::Data<AppState>,
    user: AuthenticatedUser,
) -> Result<HttpResponse, ReadError> {
    let balance = use_cases::balance(state.ledger.as_ref(), user.0).await?;
    Ok(HttpResponse::Ok().json(BalanceBody {
        current: balance.current,
        withdrawn: balance.withdrawn,
    }))
}

/// The body of a withdrawal: `{"order": "2377225624", "sum": 751}`.
#[derive(Debug, Deserialize)]
pub struct WithdrawBody {
    order: String,
    sum: serde_json::Number,
}

impl WithdrawBody {
    fn try_into_domain(self) -> Result<(OrderNumber, Money), WithdrawHandlerError> {
        let order = OrderNumber::parse(self.order.trim())
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
#[derive(thiserror::Error)]
pub enum WithdrawHandlerError {
    #[error("{0}")]
    InvalidOrder(String),
    #[error("{0}")]
    InvalidSum(String),
    #[error(transparent)]
    UseCase(#[from] WithdrawError),
}

impl std::fmt::Debug for WithdrawHandlerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
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
        let status = self.status_code();
        let detail = status.is_client_error().then(|| self.to_string());
        problem(status, detail)
    }
}

/// Spends points on an order.
#[tracing::instrument(name = "withdraw", skip_all, fields(user_id = %user.0))]
pub async fn withdraw(
    state: web::Data<AppState>,
    user: AuthenticatedUser,
    body: web::Json<WithdrawBody>,
) -> Result<HttpResponse, WithdrawHandlerError> {
    let (order, sum) = body.into_inner().try_into_domain()?;
    use_cases::withdraw(
        state.ledger.as_ref(),
        state.clock.as_ref(),
        user.0,
        &order,
        sum,
    )
    .await?;
    Ok(HttpResponse::Ok().finish())
}

/// A withdrawal in the list.
#[derive(Debug, Serialize)]
pub struct WithdrawalItem {
    order: String,
    #[serde(serialize_with = "money")]
    sum: Money,
    #[serde(serialize_with = "rfc3339")]
    processed_at: DateTime<Utc>,
}

impl From<Withdrawal> for WithdrawalItem {
    fn from(withdrawal: Withdrawal) -> Self {
        Self {
            order: withdrawal.order.to_string(),
            sum: withdrawal.sum,
            processed_at: withdrawal.processed_at,
        }
    }
}

/// Lists the user's withdrawals, newest first; 204 when there are none.
#[tracing::instrument(name = "list_withdrawals", skip_all, fields(user_id = %user.0))]
pub async fn withdrawals(
    state: web::Data<AppState>,
    user: AuthenticatedUser,
) -> Result<HttpResponse, ReadError> {
    let withdrawals = use_cases::withdrawals(state.ledger.as_ref(), user.0).await?;
    if withdrawals.is_empty() {
        return Ok(HttpResponse::NoContent().finish());
    }
    let items: Vec<WithdrawalItem> = withdrawals.into_iter().map(WithdrawalItem::from).collect();
    Ok(HttpResponse::Ok().json(items))
}
