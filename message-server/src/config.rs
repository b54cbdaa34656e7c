//! Typed configuration of one message server: every flag, its `SB_*`
//! environment variable and its laptop default, and every limit in one place.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use shared::config::parse_duration;

/// Flags of `message-server` (each also `SB_<FLAG>` in the environment).
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "message-server", version, about = "Switchboard message server")]
pub struct Config {
    /// This server's id: unique in the cluster, letters, digits and `_ . @ -`.
    #[arg(long, env = "SB_ID")]
    pub id: String,

    /// WebSocket and HTTP listener (`/ws`, `/healthz`, `/metrics`); port 0 picks one.
    #[arg(long, env = "SB_WS", default_value = "127.0.0.1:9001")]
    pub ws: SocketAddr,

    /// Plain-TCP line listener (telnet); port 0 picks one.
    #[arg(long, env = "SB_TCP", default_value = "127.0.0.1:9101")]
    pub tcp: SocketAddr,

    /// Relay link address; give it more than once to link to several relays.
    #[arg(
        long,
        env = "SB_RELAY",
        default_value = "127.0.0.1:9000",
        value_delimiter = ','
    )]
    pub relay: Vec<String>,

    /// Where Redis is (`--redis`, `--redis-mode`, ...), as on the relay.
    #[command(flatten)]
    pub redis: redis_store::RedisArgs,

    /// Runtime threads (`--worker-threads`, default 1), as on the other binary.
    #[command(flatten)]
    pub runtime: entry::RuntimeArgs,

    /// Most client connections at once (WebSocket and TCP together).
    #[arg(long, env = "SB_MAX_CONNECTIONS", default_value_t = 500)]
    pub max_connections: usize,

    /// File holding the HMAC secret that signs client tokens (one trailing
    /// newline is ignored; every other byte counts; at least 16 bytes).
    #[arg(long, env = "SB_TOKEN_SECRET_FILE")]
    pub token_secret_file: Option<PathBuf>,

    /// Accept `LOGIN <user>` without a token. For demos and tests only.
    #[arg(long, env = "SB_INSECURE_LOGIN")]
    pub insecure_login: bool,

    /// File holding the shared secret that authenticates the relay link (one
    /// trailing newline is ignored; every other byte counts; not empty).
    #[arg(long, env = "SB_LINK_SECRET_FILE")]
    pub link_secret_file: Option<PathBuf>,

    /// CA or certificate (PEM) the relay's TLS certificate must chain to;
    /// given, the link to every relay uses TLS.
    #[arg(long, env = "SB_RELAY_CA")]
    pub relay_ca: Option<PathBuf>,

    /// Name the relay certificate must carry (default: the host of `--relay`).
    #[arg(long, env = "SB_RELAY_TLS_NAME")]
    pub relay_tls_name: Option<String>,

    /// TLS certificate chain (PEM) for wss:// and the TCP listener.
    #[arg(long, env = "SB_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// TLS private key (PEM).
    #[arg(long, env = "SB_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Browser origins allowed to open WebSockets (comma-separated, e.g.
    /// `https://chat.example.com`); empty allows any. Clients that send no
    /// `Origin` (non-browsers) are not affected.
    #[arg(long, env = "SB_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// Serve an echo endpoint at `/echo` (same pipeline and limits as `/ws`),
    /// for conformance testing.
    #[arg(long, env = "SB_ECHO")]
    pub echo: bool,

    #[command(flatten)]
    pub limits: Limits,
}

/// Limits and timings, each with the default an operator starts from.
#[derive(Debug, Clone, clap::Args)]
pub struct Limits {
    /// Largest client message (WebSocket message or TCP line), bytes.
    #[arg(long, env = "SB_MAX_MESSAGE", default_value_t = 64 * 1024)]
    pub max_message: usize,

    /// Commands per second one session may send on average (0: no limit).
    #[arg(long, env = "SB_RATE_LIMIT", default_value_t = 100)]
    pub rate_limit: u32,

    /// Commands one session may send at once above the average rate; a
    /// client refused more than this many times in a row is closed (1008).
    #[arg(long, env = "SB_RATE_BURST", default_value_t = 200)]
    pub rate_burst: u32,

    /// Live sessions one user may hold across the cluster.
    #[arg(long, env = "SB_MAX_SESSIONS_PER_USER", default_value_t = 32)]
    pub max_sessions_per_user: u64,

    /// Connections one client address may hold on this server (0: no limit).
    #[arg(long, env = "SB_MAX_CONNECTIONS_PER_IP", default_value_t = 1000)]
    pub max_connections_per_ip: u32,

    /// Pushes queued for one session before it counts as too slow and is closed.
    #[arg(long, env = "SB_SESSION_QUEUE", default_value_t = 256)]
    pub session_queue: usize,

    /// WebSocket ping interval.
    #[arg(long, env = "SB_PING_INTERVAL", default_value = "20s", value_parser = parse_duration)]
    pub ping_interval: Duration,

    /// A session silent for this long is closed (WebSocket and TCP).
    #[arg(long, env = "SB_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// TCP keepalive idle time on client sockets: the kernel notices a peer
    /// that vanished without a FIN even while the session is quiet.
    #[arg(long, env = "SB_TCP_KEEPALIVE", default_value = "30s", value_parser = parse_duration)]
    pub tcp_keepalive: Duration,

    /// A connection that has not logged in after this long is closed.
    #[arg(long, env = "SB_LOGIN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub login_timeout: Duration,

    /// Time a client has to send its HTTP request head (slowloris guard).
    #[arg(long, env = "SB_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,

    /// A write to a client that takes longer than this closes the session.
    #[arg(long, env = "SB_WRITE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub write_timeout: Duration,

    /// Messages kept per inbox (approximate: Redis trims whole blocks).
    #[arg(long, env = "SB_INBOX_MAX_LEN", default_value_t = 10_000)]
    pub inbox_max_len: u64,

    /// Age after which a message leaves its inbox.
    #[arg(long, env = "SB_INBOX_MAX_AGE", default_value = "7d", value_parser = parse_duration)]
    pub inbox_max_age: Duration,

    /// Messages kept per room history.
    #[arg(long, env = "SB_ROOM_HISTORY", default_value_t = 100)]
    pub room_history: u64,

    /// How long a `cid` is remembered to de-duplicate a retried send. Each
    /// remembered cid holds about 200 B of Redis memory.
    #[arg(long, env = "SB_CID_TTL", default_value = "1d", value_parser = parse_duration)]
    pub cid_ttl: Duration,

    /// Heartbeat interval on the relay link.
    #[arg(long, env = "SB_LINK_HEARTBEAT", default_value = "1s", value_parser = parse_duration)]
    pub link_heartbeat: Duration,

    /// A relay link silent for this long is dead.
    #[arg(long, env = "SB_LINK_DEAD_AFTER", default_value = "3s", value_parser = parse_duration)]
    pub link_dead_after: Duration,

    /// Frames queued for the relay link; beyond this a frame is dropped and
    /// counted (`dropped_link_full`): stored messages arrive by replay.
    #[arg(long, env = "SB_LINK_QUEUE", default_value_t = 8192)]
    pub link_queue: usize,

    /// How long a `TELL` trusts what it read of a user's servers (the
    /// presence cache; a login elsewhere invalidates it sooner through the
    /// relay). 0 reads Redis for every `TELL`.
    #[arg(long, env = "SB_PRESENCE_MAX_AGE", default_value = "10s", value_parser = parse_duration)]
    pub presence_max_age: Duration,

    /// How often the server refreshes its registry entry in Redis.
    #[arg(long, env = "SB_REGISTRY_INTERVAL", default_value = "2s", value_parser = parse_duration)]
    pub registry_interval: Duration,

    /// Registry entry TTL: the backstop if nothing else removes a dead server.
    #[arg(long, env = "SB_REGISTRY_TTL", default_value = "30s", value_parser = parse_duration)]
    pub registry_ttl: Duration,

    /// Messages waiting to be stored before senders wait (backpressure).
    #[arg(long, env = "SB_STORE_INFLIGHT", default_value_t = 1024)]
    pub store_inflight: usize,

    /// Group commit: under load, store calls start at most this often (the
    /// messages that arrive meanwhile go together in the next one, so Redis
    /// pays one script call, one AOF write and one fsync for all of them).
    /// Only a batch of several messages holds the next one back: a message
    /// that finds the store idle, or a lone sender's next, goes at once. 0
    /// sends whenever a pipeline is free.
    #[arg(long, env = "SB_STORE_COMMIT_INTERVAL", default_value = "2ms", value_parser = parse_duration)]
    pub store_commit_interval: Duration,

    /// How long shutdown waits for sessions to close before giving up.
    #[arg(long, env = "SB_SHUTDOWN_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
}

impl Config {
    /// A configuration for tests and embedding: ports 0 on 127.0.0.1,
    /// insecure login, the given Redis and relay (`None`: no relay at all),
    /// every other value the flag default. `SB_*` variables are not read:
    /// the result does not depend on the caller's environment.
    pub fn local(id: &str, redis: &str, relay: Option<SocketAddr>) -> Config {
        use clap::{CommandFactory, FromArgMatches};
        let mut args = vec![
            "message-server".to_owned(),
            "--id".to_owned(),
            id.to_owned(),
            "--ws".to_owned(),
            "127.0.0.1:0".to_owned(),
            "--tcp".to_owned(),
            "127.0.0.1:0".to_owned(),
            "--redis".to_owned(),
            redis.to_owned(),
            "--insecure-login".to_owned(),
        ];
        if let Some(relay) = relay {
            args.push("--relay".to_owned());
            args.push(relay.to_string());
        }
        let command = Config::command().mut_args(|a| a.env(None));
        let parsed = command
            .try_get_matches_from(args)
            .and_then(|m| Config::from_arg_matches(&m));
        match parsed {
            Ok(mut c) => {
                if relay.is_none() {
                    c.relay.clear();
                }
                c
            }
            Err(e) => unreachable!("built-in arguments parse: {e}"),
        }
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

    /// Parses `args` as the command line, with every `SB_*` variable of
    /// this process's environment ignored (a developer's shell may set them).
    fn parse_without_env(args: &[&str]) -> Result<Config, clap::Error> {
        use clap::{CommandFactory, FromArgMatches};
        let command = Config::command().mut_args(|a| a.env(None));
        Config::from_arg_matches(&command.try_get_matches_from(args)?)
    }

    #[test]
    fn the_flag_defaults_are_the_documented_ones() {
        let c = parse_without_env(&["message-server", "--id", "a"]).expect("defaults parse");
        // The README's table of defaults.
        assert_eq!(c.ws.to_string(), "127.0.0.1:9001");
        assert_eq!(c.tcp.to_string(), "127.0.0.1:9101");
        assert_eq!(c.relay, ["127.0.0.1:9000"]);
        assert_eq!(c.redis.urls, ["redis://127.0.0.1:6379/"]);
        assert_eq!(c.redis.mode, redis_store::RedisMode::Single);
        assert_eq!(c.redis.replica_acks, 0);
        assert_eq!(c.redis.replica_timeout, Duration::from_secs(1));
        assert_eq!(c.max_connections, 500);
        assert!(!c.insecure_login && c.token_secret_file.is_none());
        assert_eq!(c.limits.rate_limit, 100);
        assert_eq!(c.limits.max_sessions_per_user, 32);
        assert_eq!(c.limits.max_connections_per_ip, 1000);
        assert_eq!(c.limits.idle_timeout, Duration::from_secs(60));
        assert_eq!(c.limits.max_message, 64 * 1024);
        assert_eq!(c.limits.link_dead_after, Duration::from_secs(3));
        assert_eq!(c.limits.presence_max_age, Duration::from_secs(10));
        assert_eq!(c.limits.store_commit_interval, Duration::from_millis(2));
        // --id is required.
        assert!(parse_without_env(&["message-server"]).is_err());
    }

    #[test]
    fn local_changes_only_addresses_redis_relay_and_login() {
        let flags = parse_without_env(&["message-server", "--id", "a"]).expect("defaults parse");
        let c = Config::local("a", "redis://127.0.0.1:1/", None);
        assert_eq!((c.ws.port(), c.tcp.port()), (0, 0));
        assert!(c.relay.is_empty(), "no relay given, none configured");
        assert!(c.insecure_login);
        // Every limit is the flag default: tests run what operators run.
        assert_eq!(format!("{:?}", c.limits), format!("{:?}", flags.limits));
        let relay = "127.0.0.1:7".parse().expect("addr");
        let c = Config::local("a", "redis://127.0.0.1:1/", Some(relay));
        assert_eq!(c.relay, ["127.0.0.1:7"]);
    }
}
