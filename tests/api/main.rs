//! Black-box tests of the HTTP API: the real service on port 0, a fresh database per test.

mod smoke;
mod throttle;
