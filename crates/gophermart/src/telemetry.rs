//! Logging: human-readable lines by default, JSON objects with `LOG_FORMAT=json`; the level
//! comes from `RUST_LOG` (default `info`). Lines carry terminal colours only when standard
//! error is a terminal: a file or a log collector gets plain text.

use std::io::IsTerminal;

use tracing_subscriber::{fmt, EnvFilter};

use crate::config::LogFormat;

/// Installs the global subscriber; later calls are ignored (tests build many applications).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _already_set = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
