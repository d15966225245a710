//! The customer endpoints under `/api/user`.

pub mod accounts;
pub mod balance;
pub mod json;
pub mod orders;
