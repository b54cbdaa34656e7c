//! The real `relay-server` entry point, built inside the tests package so
//! fault tests can spawn it and `kill -9` it.

fn main() -> std::process::ExitCode {
    relay_server::cli::main()
}
