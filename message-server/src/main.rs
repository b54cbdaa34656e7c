//! `message-server`: see [`message_server::cli`].

fn main() -> anyhow::Result<()> {
    message_server::cli::main()
}
