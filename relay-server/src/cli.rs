//! The command-line entry point. `main.rs` is one call to [`main`]; the
//! integration tests build the same entry point into a binary of their own,
//! so a `kill -9` test kills the real thing.

use std::process::ExitCode;

/// Parses the flags and runs the relay until SIGTERM or Ctrl-C.
pub fn main() -> ExitCode {
    entry::main("relay-server", crate::run)
}
