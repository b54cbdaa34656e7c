//! `relay-server`: see [`relay_server::cli`].

fn main() -> anyhow::Result<()> {
    relay_server::cli::main()
}
