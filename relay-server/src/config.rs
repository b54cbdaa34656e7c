//! The relay's configuration: every flag, its environment variable and its
//! default in one typed struct.
//!
//! Each flag `--foo-bar` can also be given as `SB_FOO_BAR`. Durations are
//! written as on the message server (`250ms`, `1s`, `5m`) and are
//! [`Duration`]s in the struct, so tests set them directly. The defaults are
//! the laptop defaults of DESIGN.md; [`Config::default`] is the same set
//! without reading the environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use shared::config::parse_duration;

use shared::codec::DEFAULT_MAX_FRAME;

/// Default link listener.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9000";
/// Default admin HTTP listener.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:9080";
/// Default Redis URL.
pub const DEFAULT_REDIS: &str = "redis://127.0.0.1:6379/";

/// Switchboard relay: routes frames between message servers, checks their
/// heartbeats and purges the Redis entries of servers that die.
#[derive(clap::Parser, Clone, Debug, PartialEq, Eq)]
#[command(name = "relay-server", version, about, long_about = None)]
pub struct Config {
    /// Address message servers link to (port 0 picks a free port).
    #[arg(long, env = "SB_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,

    /// Address of the admin HTTP endpoint: /healthz, /servers, /metrics.
    #[arg(long, env = "SB_ADMIN", default_value = DEFAULT_ADMIN)]
    pub admin: SocketAddr,

    /// Where Redis is (`--redis`, `--redis-mode`, ...), as on the servers.
    #[command(flatten)]
    pub redis: redis_store::RedisArgs,

    /// Runtime threads (`--worker-threads`, default 1), as on the other binary.
    #[command(flatten)]
    pub runtime: entry::RuntimeArgs,

    /// File holding the shared link secret (one trailing newline is ignored).
    /// Without it the relay accepts only servers that have no secret either.
    #[arg(long, env = "SB_LINK_SECRET_FILE")]
    pub link_secret_file: Option<PathBuf>,

    /// This relay's name, sent to servers in `Welcome` and shown in logs.
    #[arg(long, env = "SB_RELAY_ID", default_value = "relay")]
    pub relay_id: String,

    /// Interval between heartbeat pings on every link.
    #[arg(long = "heartbeat", env = "SB_HEARTBEAT", default_value = "1s", value_parser = parse_duration)]
    pub heartbeat: Duration,

    /// A link that sends nothing for this long is dead; so is one that
    /// accepts nothing we write for this long.
    #[arg(long = "dead-after", env = "SB_DEAD_AFTER", default_value = "3s", value_parser = parse_duration)]
    pub dead_after: Duration,

    /// After a link dies, how long the server has to link again with the
    /// same epoch before its sessions are purged from Redis.
    #[arg(long = "purge-grace", env = "SB_PURGE_GRACE", default_value = "1s", value_parser = parse_duration)]
    pub purge_grace: Duration,

    /// Interval between sweeps of the server registry for servers that
    /// died while no relay watched them.
    #[arg(long = "sweep-interval", env = "SB_SWEEP_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub sweep_interval: Duration,

    /// A registry entry whose `seen` is older than this, for a server
    /// not linked here, belongs to a dead server and is purged by the sweep.
    #[arg(long = "stale-after", env = "SB_STALE_AFTER", default_value = "10s", value_parser = parse_duration)]
    pub stale_after: Duration,

    /// Time a new connection has to complete the link handshake.
    #[arg(long = "handshake-timeout", env = "SB_HANDSHAKE_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,

    /// Largest link frame body in bytes; a longer length prefix closes the link.
    #[arg(long, env = "SB_MAX_FRAME", default_value_t = DEFAULT_MAX_FRAME)]
    pub max_frame: usize,

    /// Frames queued towards one server before new ones are dropped (they
    /// stay durable in the recipient's inbox).
    #[arg(long, env = "SB_LINK_QUEUE", default_value_t = 8192)]
    pub link_queue: usize,

    /// TLS certificate chain (PEM) for the link port; with `--tls-key`,
    /// servers must link over TLS (they trust it with `--relay-ca`).
    #[arg(long, env = "SB_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// TLS private key (PEM) for the link port.
    #[arg(long, env = "SB_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Most connections (linked or in handshake) at once; more are closed.
    #[arg(long, env = "SB_MAX_LINKS", default_value_t = 1024)]
    pub max_links: usize,
}

impl Default for Config {
    /// The flag defaults, without reading the command line or environment.
    fn default() -> Self {
        let addr = |s: &str| match s.parse() {
            Ok(a) => a,
            Err(_) => unreachable!("the default addresses are valid"),
        };
        Config {
            listen: addr(DEFAULT_LISTEN),
            admin: addr(DEFAULT_ADMIN),
            redis: redis_store::RedisArgs::single(DEFAULT_REDIS),
            runtime: entry::RuntimeArgs::default(),
            link_secret_file: None,
            relay_id: "relay".to_owned(),
            heartbeat: Duration::from_millis(1000),
            dead_after: Duration::from_millis(3000),
            purge_grace: Duration::from_millis(1000),
            sweep_interval: Duration::from_millis(5000),
            stale_after: Duration::from_millis(10_000),
            handshake_timeout: Duration::from_millis(5000),
            max_frame: DEFAULT_MAX_FRAME,
            link_queue: 8192,
            tls_cert: None,
            tls_key: None,
            max_links: 1024,
        }
    }
}

impl Config {
    /// Checks the values clap cannot: what would otherwise panic (a zero
    /// interval, a zero-sized queue) or make no sense (dead before the first
    /// heartbeat is due).
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("--heartbeat", self.heartbeat),
            ("--dead-after", self.dead_after),
            ("--sweep-interval", self.sweep_interval),
            ("--stale-after", self.stale_after),
            ("--handshake-timeout", self.handshake_timeout),
        ];
        for (flag, value) in positive {
            if value.is_zero() {
                return Err(format!("{flag} must be above 0"));
            }
        }
        if self.dead_after <= self.heartbeat {
            return Err("--dead-after must be longer than --heartbeat".into());
        }
        if self.link_queue == 0 || self.max_links == 0 {
            return Err("--link-queue and --max-links must be above 0".into());
        }
        if self.max_frame < 64 {
            return Err("--max-frame must be at least 64 bytes".into());
        }
        shared::ids::check_name(&self.relay_id).map_err(|e| format!("--relay-id: {e}"))?;
        Ok(())
    }
}

impl entry::RuntimeConfig for Config {
    fn runtime_args(&self) -> entry::RuntimeArgs {
        self.runtime
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// Parses `args` as the command line, with every `SB_*` variable of
    /// this process's environment ignored (a developer's shell may set them).
    fn parse_without_env(args: &[&str]) -> Result<Config, clap::Error> {
        use clap::{CommandFactory, FromArgMatches};
        let command = Config::command().mut_args(|a| a.env(None));
        Config::from_arg_matches(&command.try_get_matches_from(args)?)
    }

    #[test]
    fn default_matches_the_flag_defaults() {
        let parsed = parse_without_env(&["relay-server"]).expect("defaults parse");
        assert_eq!(parsed, Config::default());
        assert_eq!(parsed.validate(), Ok(()));
        // The defaults the README documents.
        assert_eq!(parsed.listen.to_string(), "127.0.0.1:9000");
        assert_eq!(parsed.admin.to_string(), "127.0.0.1:9080");
        assert_eq!(parsed.redis.urls, ["redis://127.0.0.1:6379/"]);
        assert_eq!(parsed.redis.mode, redis_store::RedisMode::Single);
        assert_eq!(
            (parsed.heartbeat, parsed.dead_after, parsed.purge_grace),
            (
                Duration::from_secs(1),
                Duration::from_secs(3),
                Duration::from_secs(1)
            )
        );
    }

    #[test]
    fn durations_read_like_the_message_servers() {
        let c = Config::try_parse_from(["relay-server", "--heartbeat", "250ms"]).expect("parse");
        assert_eq!(c.heartbeat, Duration::from_millis(250));
        let c = Config::try_parse_from(["relay-server", "--stale-after", "1m"]).expect("parse");
        assert_eq!(c.stale_after, Duration::from_secs(60));
        assert!(Config::try_parse_from(["relay-server", "--heartbeat", "soon"]).is_err());
    }

    #[test]
    fn nonsense_is_refused() {
        let c = Config {
            heartbeat: Duration::ZERO,
            ..Config::default()
        };
        assert!(c.validate().is_err());
        let c = Config {
            dead_after: Duration::from_millis(500),
            ..Config::default()
        };
        assert!(c.validate().is_err());
        let c = Config {
            link_queue: 0,
            ..Config::default()
        };
        assert!(c.validate().is_err());
    }
}
