//! Private Redis deployments for one test, from real `redis-server`
//! processes on free ports of 127.0.0.1, data in temporary directories,
//! append-only file on (fsync always), killed when dropped:
//!
//! - [`RedisServer`]: one Redis;
//! - [`RedisCluster`]: Redis Cluster, 3 masters and 3 replicas, ready when
//!   every node's `CLUSTER INFO` says `cluster_state:ok`;
//! - [`RedisSentinel`]: a master, a replica and three sentinels;
//! - [`TestRedis`]: either of the first two, for tests that run over both.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `redis-server` child process.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    /// Flags beyond the defaults (cluster mode, replication, ...).
    extra: Vec<String>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A free port whose cluster bus port (10000 higher) is free too.
fn free_cluster_port() -> u16 {
    loop {
        let p = free_port();
        if p <= 55_535 && TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok() {
            return p;
        }
    }
}

impl RedisServer {
    /// Starts one on a free port and waits until it answers `PING`.
    ///
    /// Redis cannot listen on port 0, so the port is picked by binding and
    /// releasing it; another process may take it meanwhile. So readiness
    /// means that the Redis answering on the port is our child (its
    /// `process_id`), and a child that could not bind is started again on
    /// another port.
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// Starts one with extra `redis-server` flags.
    pub fn start_with(extra: &[&str]) -> RedisServer {
        let mut server = RedisServer::new(extra);
        let cluster = extra.contains(&"--cluster-enabled");
        for _ in 0..5 {
            if server.spawn() {
                return server;
            }
            server.kill();
            server.port = if cluster {
                free_cluster_port()
            } else {
                free_port()
            };
        }
        panic!("redis-server did not start on any of 5 free ports");
    }

    fn new(extra: &[&str]) -> RedisServer {
        let cluster = extra.contains(&"--cluster-enabled");
        RedisServer {
            child: None,
            port: if cluster {
                free_cluster_port()
            } else {
                free_port()
            },
            dir: tempfile::tempdir().expect("temp dir"),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its process id (for CPU accounting), if running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether it is running (not killed).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Starts redis-server on this port and directory; false if it did not
    /// come up as the server on that port.
    fn spawn(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(self.dir.path())
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--protected-mode",
                "no",
                "--loglevel",
                "warning",
            ])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (apt-get install redis-server)");
        self.child = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let Some(child) = self.child.as_mut() else {
                return false;
            };
            if let Ok(Some(_)) = child.try_wait() {
                return false; // it exited: most likely the port was taken
            }
            let pid = child.id();
            if let Ok(client) = redis::Client::open(self.url())
                && let Ok(mut conn) = client.get_connection()
                && redis::cmd("PING").query::<String>(&mut conn).is_ok()
                && let Ok(info) = redis::cmd("INFO").arg("server").query::<String>(&mut conn)
            {
                return info
                    .lines()
                    .any(|l| l.trim() == format!("process_id:{pid}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Runs one command on a fresh connection.
    pub fn cmd<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> redis::RedisResult<T> {
        let client = redis::Client::open(self.url())?;
        let mut conn = client.get_connection_with_timeout(Duration::from_secs(2))?;
        conn.set_read_timeout(Some(Duration::from_secs(5)))?;
        cmd.query(&mut conn)
    }

    /// `CONFIG SET name value`; panics when Redis refuses it.
    pub fn config_set(&self, name: &str, value: &str) {
        let _: () = self
            .cmd(redis::cmd("CONFIG").arg("SET").arg(name).arg(value))
            .expect("CONFIG SET");
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The data directory (append-only file lives here).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A plain synchronous connection for assertions.
    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection())
            .expect("redis connection")
    }

    /// `kill -9`, as a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and directory (so from its
    /// append-only file). With `empty`, the data is thrown away first, as a
    /// Redis without persistence would come back.
    pub fn restart(&mut self, empty: bool) {
        self.kill();
        if empty {
            for entry in std::fs::read_dir(self.dir.path())
                .expect("read dir")
                .flatten()
            {
                let p: PathBuf = entry.path();
                let _ = if p.is_dir() {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
            }
        }
        assert!(
            self.spawn(),
            "redis-server did not start again on port {}",
            self.port
        );
    }

    /// Every key under the Switchboard prefix matching `pattern` (e.g. `sb:user:*`).
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        let mut conn = self.conn();
        let mut keys: Vec<String> = redis::cmd("KEYS")
            .arg(pattern)
            .query(&mut conn)
            .expect("KEYS");
        keys.sort();
        keys
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `check` every 50 ms until it is true or `limit` passes.
fn poll(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Redis Cluster: 3 masters, each with one replica.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts six nodes, creates the cluster with `redis-cli --cluster
    /// create`, and waits until every node says `cluster_state:ok`.
    pub fn start() -> RedisCluster {
        let flags = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "1500",
        ];
        let nodes: Vec<RedisServer> = (0..6).map(|_| RedisServer::start_with(&flags)).collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli on PATH (apt-get install redis-tools)");
        assert!(
            out.status.success(),
            "cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let cluster = RedisCluster { nodes };
        cluster.wait_ok(Duration::from_secs(30));
        cluster
    }

    /// Waits until every running node says `cluster_state:ok` and three
    /// running nodes are masters with slots.
    pub fn wait_ok(&self, limit: Duration) {
        let ok = poll(limit, || {
            self.nodes.iter().filter(|n| n.is_running()).all(|n| {
                n.cmd::<String>(redis::cmd("CLUSTER").arg("INFO"))
                    .is_ok_and(|info| info.contains("cluster_state:ok"))
            }) && self.masters().len() == 3
        });
        assert!(ok, "redis cluster not ok within {limit:?}");
    }

    /// Seed URLs, comma-separated (as `SB_REDIS` takes them).
    pub fn seeds(&self) -> String {
        self.nodes
            .iter()
            .map(RedisServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The flags a server or relay needs.
    pub fn args(&self) -> redis_store::RedisArgs {
        let mut args = redis_store::RedisArgs::single(&self.nodes[0].url());
        args.mode = redis_store::RedisMode::Cluster;
        args.urls = self.nodes.iter().map(RedisServer::url).collect();
        args
    }

    /// Indexes of the running nodes that are masters owning slots.
    pub fn masters(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| self.nodes[*i].is_running())
            .filter(|i| {
                let role: redis::RedisResult<Vec<redis::Value>> =
                    self.nodes[*i].cmd(&redis::cmd("ROLE"));
                matches!(role.as_deref(), Ok([redis::Value::BulkString(r), ..]) if r == b"master")
            })
            .filter(|i| {
                self.nodes[*i]
                    .cmd::<String>(redis::cmd("CLUSTER").arg("NODES"))
                    .is_ok_and(|nodes| {
                        nodes
                            .lines()
                            .find(|l| l.contains("myself"))
                            .is_some_and(|l| l.split(' ').count() > 8)
                    })
            })
            .collect()
    }

    /// The slot of `key`.
    pub fn slot(&self, key: &str) -> u16 {
        let n = self.nodes.iter().find(|n| n.is_running()).expect("a node");
        n.cmd(redis::cmd("CLUSTER").arg("KEYSLOT").arg(key))
            .expect("CLUSTER KEYSLOT")
    }

    /// The index of the running master that serves `key`.
    pub fn master_of(&self, key: &str) -> usize {
        let slot = self.slot(key);
        self.masters()
            .into_iter()
            .find(|i| {
                self.nodes[*i]
                    .cmd::<i64>(redis::cmd("CLUSTER").arg("COUNTKEYSINSLOT").arg(slot))
                    .is_ok()
                    && self.nodes[*i]
                        .cmd::<String>(redis::cmd("CLUSTER").arg("NODES"))
                        .is_ok_and(|nodes| {
                            nodes
                                .lines()
                                .find(|l| l.contains("myself"))
                                .is_some_and(|l| owns(l, slot))
                        })
            })
            .expect("a master serves the slot")
    }

    /// Every key matching `pattern` on every running master, sorted.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        let mut keys: Vec<String> = self
            .masters()
            .into_iter()
            .flat_map(|i| {
                self.nodes[i]
                    .cmd::<Vec<String>>(redis::cmd("KEYS").arg(pattern))
                    .expect("KEYS")
            })
            .collect();
        keys.sort();
        keys
    }
}

/// Whether a `CLUSTER NODES` line's slot ranges include `slot`.
fn owns(line: &str, slot: u16) -> bool {
    line.split(' ').skip(8).any(|range| {
        let mut ends = range.split('-').map(|s| s.parse::<u16>());
        match (ends.next(), ends.next()) {
            (Some(Ok(a)), Some(Ok(b))) => (a..=b).contains(&slot),
            (Some(Ok(a)), None) => a == slot,
            _ => false,
        }
    })
}

/// A master, one replica and three sentinels watching them (quorum 2,
/// down after 1 s).
pub struct RedisSentinel {
    pub master: RedisServer,
    pub replica: RedisServer,
    pub sentinels: Vec<RedisServer>,
}

/// The name the sentinels know the master by.
pub const SENTINEL_MASTER: &str = "switchboard";

impl RedisSentinel {
    /// Starts them and waits until every sentinel knows the replica.
    pub fn start() -> RedisSentinel {
        let master = RedisServer::start();
        let replicaof = master.port().to_string();
        let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &replicaof]);
        let sentinels: Vec<RedisServer> = (0..3)
            .map(|_| {
                let mut s = RedisServer::new(&[]);
                let conf = s.dir().join("sentinel.conf");
                std::fs::write(
                    &conf,
                    format!(
                        "port {}\nbind 127.0.0.1\nprotected-mode no\ndir {}\n\
                         sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {} 2\n\
                         sentinel down-after-milliseconds {SENTINEL_MASTER} 1000\n\
                         sentinel failover-timeout {SENTINEL_MASTER} 5000\n\
                         sentinel parallel-syncs {SENTINEL_MASTER} 1\n",
                        s.port(),
                        s.dir().display(),
                        master.port()
                    ),
                )
                .expect("sentinel.conf");
                let child = Command::new("redis-server")
                    .arg(&conf)
                    .arg("--sentinel")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("redis-server --sentinel");
                s.child = Some(child);
                s.wait_ready();
                s
            })
            .collect();
        let setup = RedisSentinel {
            master,
            replica,
            sentinels,
        };
        let known = poll(Duration::from_secs(30), || {
            setup.sentinels.iter().all(|s| {
                s.cmd::<Vec<redis::Value>>(
                    redis::cmd("SENTINEL").arg("REPLICAS").arg(SENTINEL_MASTER),
                )
                .is_ok_and(|r| !r.is_empty())
            })
        });
        assert!(known, "sentinels did not find the replica");
        setup
    }

    /// The flags a server or relay needs.
    pub fn args(&self) -> redis_store::RedisArgs {
        let mut args = redis_store::RedisArgs::single(&self.sentinels[0].url());
        args.mode = redis_store::RedisMode::Sentinel;
        args.urls = self.sentinels.iter().map(RedisServer::url).collect();
        args.master_name = SENTINEL_MASTER.to_owned();
        args
    }

    /// The port the sentinels name as master now.
    pub fn master_port(&self) -> Option<u16> {
        let addr: Vec<String> = self.sentinels.iter().find_map(|s| {
            s.cmd(
                redis::cmd("SENTINEL")
                    .arg("GET-MASTER-ADDR-BY-NAME")
                    .arg(SENTINEL_MASTER),
            )
            .ok()
        })?;
        addr.get(1)?.parse().ok()
    }
}

/// The Redis a test runs over: one Redis or a cluster.
pub enum TestRedis {
    Single(RedisServer),
    Cluster(RedisCluster),
}

/// Which kind of [`TestRedis`] to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisKind {
    Single,
    Cluster,
}

impl RedisKind {
    /// `SB_TEST_REDIS=cluster` runs the tests written for one Redis over a
    /// 3-master cluster instead (those that restart or read the one Redis
    /// directly need a single Redis and say so).
    pub fn from_env() -> RedisKind {
        match std::env::var("SB_TEST_REDIS").as_deref() {
            Ok("cluster") => RedisKind::Cluster,
            _ => RedisKind::Single,
        }
    }
}

impl TestRedis {
    /// Starts one of `kind`.
    pub fn start(kind: RedisKind) -> TestRedis {
        match kind {
            RedisKind::Single => TestRedis::Single(RedisServer::start()),
            RedisKind::Cluster => TestRedis::Cluster(RedisCluster::start()),
        }
    }

    /// The flags a server or relay needs.
    pub fn args(&self) -> redis_store::RedisArgs {
        match self {
            TestRedis::Single(r) => redis_store::RedisArgs::single(&r.url()),
            TestRedis::Cluster(c) => c.args(),
        }
    }

    /// The same as command-line flags for a process.
    pub fn flags(&self) -> (String, Vec<&'static str>) {
        match self {
            TestRedis::Single(r) => (r.url(), vec![]),
            TestRedis::Cluster(c) => (c.seeds(), vec!["--redis-mode", "cluster"]),
        }
    }

    /// Every key matching `pattern`, on every master, sorted.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        match self {
            TestRedis::Single(r) => r.keys(pattern),
            TestRedis::Cluster(c) => c.keys(pattern),
        }
    }

    /// Runs one single-key command where `key` lives.
    pub fn cmd_on<T: redis::FromRedisValue>(&self, key: &str, cmd: &redis::Cmd) -> T {
        match self {
            TestRedis::Single(r) => r.cmd(cmd).expect("redis command"),
            TestRedis::Cluster(c) => c.nodes[c.master_of(key)].cmd(cmd).expect("redis command"),
        }
    }
}

/// The single Redis, for tests written for one (they never see a cluster).
impl std::ops::Deref for TestRedis {
    type Target = RedisServer;
    fn deref(&self) -> &RedisServer {
        match self {
            TestRedis::Single(r) => r,
            TestRedis::Cluster(_) => panic!("this test helper needs a single Redis"),
        }
    }
}

impl std::ops::DerefMut for TestRedis {
    fn deref_mut(&mut self) -> &mut RedisServer {
        match self {
            TestRedis::Single(r) => r,
            TestRedis::Cluster(_) => panic!("this test helper needs a single Redis"),
        }
    }
}
