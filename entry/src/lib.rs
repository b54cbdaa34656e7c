//! The process entry point both binaries share: parse the flags, set up
//! logging (`RUST_LOG`, default `info`), start the runtime
//! (`--worker-threads`), turn SIGTERM or Ctrl-C into one cancelled
//! [`CancellationToken`], run, and turn the result into an exit code,
//! printing an error with its causes.
//!
//! Beside it, the runtime pieces both binaries need exactly one of:
//! - [`secret`]: the secret-file reader (one rule for every secret file);
//! - [`accept`]: the accept loop step with backoff that shutdown interrupts;
//! - [`clock`]: `now_ms`, the wall clock;
//! - [`runtime`]: `--worker-threads`, the runtime's shape.

pub mod accept;
pub mod clock;
pub mod runtime;
pub mod secret;

pub use clock::now_ms;
pub use runtime::{RuntimeArgs, RuntimeConfig};

use std::future::Future;
use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

/// Runs `run(flags, shutdown)` as the process `name` (used in error lines).
pub fn main<C, E, F, Fut>(name: &str, run: F) -> ExitCode
where
    C: clap::Parser + RuntimeConfig,
    E: std::error::Error,
    F: FnOnce(C, CancellationToken) -> Fut,
    Fut: Future<Output = Result<(), E>>,
{
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let config = C::parse();
    let runtime = match config.runtime_args().build() {
        Ok(r) => r,
        Err(e) => return fail(name, &e),
    };
    let result = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(cancel_on_signal(shutdown.clone()));
        run(config, shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(name, &e),
    }
}

/// Prints `error` with its causes, one per line, and gives the failure code.
fn fail(name: &str, error: &dyn std::error::Error) -> ExitCode {
    eprintln!("{name}: {error}");
    let mut cause = error.source();
    while let Some(c) = cause {
        eprintln!("  caused by: {c}");
        cause = c.source();
    }
    ExitCode::FAILURE
}

/// Cancels `shutdown` on the first SIGTERM or Ctrl-C.
pub async fn cancel_on_signal(shutdown: CancellationToken) {
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
