//! The command-line entry point: flags, logging, signals, run. `main.rs` is
//! one call to [`main`]; the integration tests build the same entry point
//! into a binary of their own, so a `kill -9` test kills the real thing.

use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;

use crate::Config;

/// Parses the flags and runs the relay until SIGTERM or Ctrl-C.
pub fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let config = Config::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    let result = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(signals(shutdown.clone()));
        crate::run(config, shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

/// Prints `error` with its causes, one per line, and gives the failure code.
fn fail(error: &dyn std::error::Error) -> ExitCode {
    eprintln!("relay-server: {error}");
    let mut cause = error.source();
    while let Some(c) = cause {
        eprintln!("  caused by: {c}");
        cause = c.source();
    }
    ExitCode::FAILURE
}

/// Cancels `shutdown` on the first Ctrl-C or SIGTERM.
async fn signals(shutdown: CancellationToken) {
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
    tracing::info!("signal received; shutting down");
    shutdown.cancel();
}
