//! The customer's use cases, one module per capability.

mod accounts;
mod events;
mod ledger;
mod orders;
mod request_limit;
mod throttle;

pub use accounts::{log_in, register, Claim, LogInError, RegisterError, Registrations};
pub use events::{
    EventStream, EventStreams, EventStreamsConfig, OpenStreamError, StreamItem, StreamStart,
};
pub use ledger::{balance, withdraw, withdrawals, withdrawals_page, WithdrawError, Withdrawn};
pub use orders::{list_orders, list_orders_page, upload_order, UploadOrderError, Uploaded};
pub use request_limit::{Allowance, CustomerRequestLimit, Refusal, RequestLimitConfig};
pub use throttle::{LoginThrottle, ThrottleConfig};
