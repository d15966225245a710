//! The `accrual` binary: sets up logging, reads the configuration and serves until SIGINT or
//! SIGTERM.

use accrual::{build, telemetry, Config};
use anyhow::Context;
use clap::Parser;

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init();
    let config = Config::parse();
    if config.database_uri.is_some() {
        tracing::info!(
            "a database URI was given; this accrual system keeps its data in memory and ignores it"
        );
    }
    let (server, address) = build(config.clone())
        .await
        .with_context(|| format!("cannot listen on {}", config.address))?;
    tracing::info!(
        %address,
        rate_limit = config.rate_limit,
        fail_rate = config.fail_rate,
        latency_ms = config.latency_ms,
        processing_delay_ms = config.processing_delay_ms,
        "accrual system listening"
    );
    server.await.context("the server failed")?;
    tracing::info!("accrual system stopped");
    Ok(())
}
