//! A private `redis-server` for one test: a free port on 127.0.0.1, its data
//! in a temporary directory, append-only file on, killed when dropped.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `redis-server` child process.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
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
        let dir = tempfile::tempdir().expect("temp dir");
        let mut server = RedisServer {
            child: None,
            port: free_port(),
            dir,
        };
        for _ in 0..5 {
            if server.spawn() {
                return server;
            }
            server.kill();
            server.port = free_port();
        }
        panic!("redis-server did not start on any of 5 free ports");
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
