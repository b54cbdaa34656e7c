//! `sb-token`: mints a client token for a user, signed with the same secret
//! file the message servers are given (`--token-secret-file`).
//!
//! ```text
//! sb-token --secret-file .run/token.secret --user alice            # 24 h
//! sb-token --secret-file .run/token.secret --user ops --ttl 1h --admin
//! ```
//!
//! Prints the token alone on stdout, so `TOKEN=$(scripts/token ...)` works;
//! use it as `LOGIN alice $TOKEN` or `ws://host:9001/ws?user=alice&token=$TOKEN`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use message_server::auth::{TokenAuth, load_secret};

/// Mint a Switchboard client token (HS256 JWT).
#[derive(Debug, Parser)]
#[command(name = "sb-token", version)]
struct Opt {
    /// File holding the HMAC secret (at least 16 bytes; trailing whitespace
    /// is ignored). The same file as the servers' --token-secret-file.
    #[arg(long, env = "SB_TOKEN_SECRET_FILE", value_name = "FILE")]
    secret_file: PathBuf,

    /// The user the token is for (its `sub`).
    #[arg(long)]
    user: String,

    /// Lifetime: a number with a unit, s, m, h or d (`90s`, `15m`, `24h`,
    /// `30d`); a bare number is seconds.
    #[arg(long, default_value = "24h", value_parser = shared::config::parse_duration, conflicts_with = "ttl_secs")]
    ttl: Duration,

    /// Lifetime in seconds (instead of --ttl).
    #[arg(long, value_name = "N")]
    ttl_secs: Option<u64>,

    /// Grant the admin role (needed for `ALL` broadcasts).
    #[arg(long)]
    admin: bool,
}

fn main() -> ExitCode {
    match run(Opt::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, no backtrace: this is an operator's tool.
            eprintln!("sb-token: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(opt: Opt) -> anyhow::Result<()> {
    let secret = load_secret(&opt.secret_file)?;
    let ttl = opt.ttl_secs.map_or(opt.ttl, Duration::from_secs);
    let token = TokenAuth::from_secret(&secret)
        .mint(&opt.user, ttl, opt.admin)
        .with_context(|| format!("minting a token for {:?}", opt.user))?;
    println!("{token}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn flags() {
        Opt::command().debug_assert();
        let opt = Opt::try_parse_from(["sb-token", "--secret-file", "f", "--user", "a"]);
        assert!(
            matches!(opt, Ok(Opt { ttl, ttl_secs: None, admin: false, .. }) if ttl == Duration::from_secs(86_400))
        );
        let both = Opt::try_parse_from([
            "sb-token",
            "--secret-file",
            "f",
            "--user",
            "a",
            "--ttl",
            "1h",
            "--ttl-secs",
            "5",
        ]);
        assert!(both.is_err());
    }
}
