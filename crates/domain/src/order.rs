//! Orders a customer uploaded, their life cycle, and what the accrual system says of them.

use std::fmt;

use chrono::{DateTime, Utc};

use crate::{Money, OrderNumber};

/// A registered customer's identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(pub i64);

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// An order's status as the customer sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OrderStatus {
    /// Uploaded; the accrual system has not started on it.
    New,
    /// The accrual system is computing the reward.
    Processing,
    /// The accrual system refused it; final, no points.
    Invalid,
    /// Done and credited (possibly with zero points); final.
    Processed,
}

impl OrderStatus {
    /// Whether no further change can happen.
    #[must_use]
    pub fn is_final(self) -> bool {
        matches!(self, Self::Invalid | Self::Processed)
    }

    /// The status's name on the wire and in storage.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::New => "NEW",
            Self::Processing => "PROCESSING",
            Self::Invalid => "INVALID",
            Self::Processed => "PROCESSED",
        }
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the accrual system answers about an order it knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AccrualStatus {
    /// Known, not computed yet.
    Registered,
    /// Refused; final.
    Invalid,
    /// Being computed.
    Processing,
    /// Computed; final.
    Processed,
}

impl AccrualStatus {
    /// The customer-facing status this answer moves an order to.
    #[must_use]
    pub fn order_status(self) -> OrderStatus {
        match self {
            Self::Registered | Self::Processing => OrderStatus::Processing,
            Self::Invalid => OrderStatus::Invalid,
            Self::Processed => OrderStatus::Processed,
        }
    }
}

/// An uploaded order as its owner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    pub number: OrderNumber,
    pub status: OrderStatus,
    /// Points credited; present only once the order is `PROCESSED`.
    pub accrual: Option<Money>,
    pub uploaded_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_invalid_and_processed_are_final() {
        assert!(!OrderStatus::New.is_final());
        assert!(!OrderStatus::Processing.is_final());
        assert!(OrderStatus::Invalid.is_final());
        assert!(OrderStatus::Processed.is_final());
    }

    #[test]
    fn accrual_answers_map_to_customer_statuses() {
        assert_eq!(
            AccrualStatus::Registered.order_status(),
            OrderStatus::Processing
        );
        assert_eq!(
            AccrualStatus::Processing.order_status(),
            OrderStatus::Processing
        );
        assert_eq!(AccrualStatus::Invalid.order_status(), OrderStatus::Invalid);
        assert_eq!(
            AccrualStatus::Processed.order_status(),
            OrderStatus::Processed
        );
    }
}
