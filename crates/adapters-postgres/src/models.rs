//! Rows as diesel reads them, and their conversion into domain values.

use chrono::{DateTime, Utc};
use domain::{Money, Order, OrderNumber, OrderStatus, Withdrawal};
use rust_decimal::Decimal;

use crate::{error::corrupt, numeric::PgDecimal};
use application::RepositoryError;

/// `order_status` in PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, diesel_derive_enum::DbEnum)]
#[ExistingTypePath = "crate::schema::sql_types::OrderStatus"]
#[DbValueStyle = "SCREAMING_SNAKE_CASE"]
pub enum DbOrderStatus {
    New,
    Processing,
    Invalid,
    Processed,
}

impl From<DbOrderStatus> for OrderStatus {
    fn from(status: DbOrderStatus) -> Self {
        match status {
            DbOrderStatus::New => Self::New,
            DbOrderStatus::Processing => Self::Processing,
            DbOrderStatus::Invalid => Self::Invalid,
            DbOrderStatus::Processed => Self::Processed,
        }
    }
}

/// `queue_status` in PostgreSQL: what the queue last learned about an entry's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, diesel_derive_enum::DbEnum)]
#[ExistingTypePath = "crate::schema::sql_types::QueueStatus"]
#[DbValueStyle = "SCREAMING_SNAKE_CASE"]
pub enum DbQueueStatus {
    Queued,
    NotRegistered,
    Processing,
    RateLimited,
    Failing,
}

/// An `orders` row as its owner sees it.
#[derive(Debug, diesel::Queryable)]
pub struct OrderRow {
    pub number: String,
    pub status: DbOrderStatus,
    pub accrual: Option<PgDecimal>,
    pub uploaded_at: DateTime<Utc>,
}

impl TryFrom<OrderRow> for Order {
    type Error = RepositoryError;

    fn try_from(row: OrderRow) -> Result<Self, Self::Error> {
        Ok(Self {
            number: order_number(row.number)?,
            status: row.status.into(),
            accrual: row
                .accrual
                .map(|PgDecimal(accrual)| money(accrual))
                .transpose()?,
            uploaded_at: row.uploaded_at,
        })
    }
}

/// A `withdrawals` row.
#[derive(Debug, diesel::Queryable)]
pub struct WithdrawalRow {
    pub order_number: String,
    pub sum: PgDecimal,
    pub processed_at: DateTime<Utc>,
}

impl TryFrom<WithdrawalRow> for Withdrawal {
    type Error = RepositoryError;

    fn try_from(row: WithdrawalRow) -> Result<Self, Self::Error> {
        Ok(Self {
            order: order_number(row.order_number)?,
            sum: money(row.sum.0)?,
            processed_at: row.processed_at,
        })
    }
}

/// A stored order number, kept in the row's string; the table's CHECK guarantees digits, the
/// checksum was verified on the way in.
pub fn order_number(stored: String) -> Result<OrderNumber, RepositoryError> {
    OrderNumber::parse_owned(stored)
        .map_err(|(e, stored)| corrupt(format!("stored order number {stored:?}: {e}")))
}

/// A stored amount.
pub fn money(stored: Decimal) -> Result<Money, RepositoryError> {
    Money::new(stored).map_err(|e| corrupt(format!("stored amount {stored}: {e}")))
}

/// A page of a list from its rows (with their ids) read one beyond `limit`: the extra row, if
/// any, says that a next page begins after the page's last item.
pub fn page<R, T>(
    mut rows: Vec<(i64, R)>,
    limit: std::num::NonZeroU32,
    at: impl Fn(&R) -> chrono::DateTime<chrono::Utc>,
    item: impl Fn(R) -> Result<T, RepositoryError>,
) -> Result<application::ports::Page<T>, RepositoryError> {
    let limit = usize::try_from(limit.get()).unwrap_or(usize::MAX);
    let more = rows.len() > limit;
    rows.truncate(limit);
    let next = if more {
        rows.last().map(|(id, row)| application::ports::PageCursor {
            at: at(row),
            id: *id,
        })
    } else {
        None
    };
    let items = rows
        .into_iter()
        .map(|(_, row)| item(row))
        .collect::<Result<_, _>>()?;
    Ok(application::ports::Page { items, next })
}
