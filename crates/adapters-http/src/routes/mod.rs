//! The customer endpoints under `/api/user`.

pub mod accounts;
pub mod balance;
pub mod events;
pub mod json;
pub mod orders;
