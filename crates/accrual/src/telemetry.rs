//! Logging set-up: `tracing` events written to standard output, filtered by `RUST_LOG`
//! (default `info`), as JSON lines when `LOG_FORMAT=json` and as plain text otherwise.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Does nothing when one is already installed.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("LOG_FORMAT").is_ok_and(|format| format.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let installed = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    if installed.is_err() {
        tracing::debug!("a tracing subscriber was already installed");
    }
}
