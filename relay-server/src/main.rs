//! `relay-server`: see [`relay_server::cli`].

/// mimalloc, as on the message servers: every forwarded frame is decoded
/// into small, short-lived strings and encoded again.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    relay_server::cli::main()
}
