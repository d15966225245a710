//! Black-box tests of the HTTP API: the real service on port 0, a fresh database per test.

mod abuse;
mod accounts;
mod attacks;
mod auth;
mod bad_input;
mod balance;
mod conditional;
mod encoding;
mod events;
mod operability;
mod orders;
mod passwords;
mod smoke;
mod support;
mod throttle;
