//! `message-server`: see [`message_server::cli`].

/// mimalloc: the server allocates many small, short-lived buffers per
/// message, where glibc malloc was a sixth of the CPU.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    message_server::cli::main()
}
