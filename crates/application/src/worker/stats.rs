//! Counters of what the worker did, read by the metrics endpoint.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Mutex,
};

use domain::Money;

/// Kinds of answers from the accrual system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerKind {
    Processed,
    Invalid,
    Processing,
    NotRegistered,
    RateLimited,
    Failed,
}

impl AnswerKind {
    /// Every kind, in a fixed order.
    pub const ALL: [Self; 6] = [
        Self::Processed,
        Self::Invalid,
        Self::Processing,
        Self::NotRegistered,
        Self::RateLimited,
        Self::Failed,
    ];

    /// A short lowercase name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Processed => "processed",
            Self::Invalid => "invalid",
            Self::Processing => "processing",
            Self::NotRegistered => "not_registered",
            Self::RateLimited => "rate_limited",
            Self::Failed => "failed",
        }
    }
}

/// Monotonic counters.
#[derive(Debug, Default)]
pub struct WorkerStats {
    answers: [AtomicU64; 6],
    orders_credited: AtomicU64,
    points_credited: Mutex<Money>,
}

impl WorkerStats {
    /// Counts an answer.
    pub fn record(&self, kind: AnswerKind) {
        self.answers[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an order credited with `points`.
    pub fn record_credit(&self, points: Option<Money>) {
        self.orders_credited.fetch_add(1, Ordering::Relaxed);
        if let Some(points) = points {
            let mut total = self
                .points_credited
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            *total = total.checked_add(points).unwrap_or(*total);
        }
    }

    /// Answers of a kind so far.
    #[must_use]
    pub fn answers(&self, kind: AnswerKind) -> u64 {
        self.answers[kind as usize].load(Ordering::Relaxed)
    }

    /// Orders credited by this process.
    #[must_use]
    pub fn orders_credited(&self) -> u64 {
        self.orders_credited.load(Ordering::Relaxed)
    }

    /// Points credited by this process.
    #[must_use]
    pub fn points_credited(&self) -> Money {
        *self
            .points_credited
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
