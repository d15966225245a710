//! A customer's points account: what can be spent and what has been spent.

use chrono::{DateTime, Utc};

use crate::{Money, OrderNumber};

/// The state of a customer's account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Balance {
    /// Points that can be spent now.
    pub current: Money,
    /// Points ever spent.
    pub withdrawn: Money,
}

/// Points spent against an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Withdrawal {
    pub order: OrderNumber,
    pub sum: Money,
    pub processed_at: DateTime<Utc>,
}
