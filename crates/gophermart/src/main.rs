//! The `gophermart` binary: telemetry, configuration, build, run until SIGINT or SIGTERM.
//! `gophermart audit` checks the ledger in the database instead (see `gophermart::audit`).

use std::process::ExitCode;

use clap::Parser;
use gophermart::{audit, telemetry, Application, Config};

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let args: Vec<_> = std::env::args_os().collect();
    if audit::is_requested(&args) {
        return Ok(audit::run(audit::AuditArgs::parse_from(&args[1..])).await);
    }
    let config = Config::parse_from(args);
    telemetry::init(config.log_format);
    let application = Application::build(config).await?;
    let stop = application.stop_handle();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("stopping: finishing in-flight requests");
        stop.stop().await;
    });
    application.run_until_stopped().await?;
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
