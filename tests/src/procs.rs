//! Real processes for fault tests: the relay and message servers as
//! binaries (the same entry points as the shipped ones), so a test can
//! `kill -9` them, `SIGTERM` them and start them again.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The message server binary built for the tests.
pub const MESSAGE_SERVER: &str = "sb-test-message-server";
/// The relay binary built for the tests.
pub const RELAY: &str = "sb-test-relay";

/// Where cargo put this package's binaries: beside the test executable's
/// `deps/` folder (cargo builds them for every integration test run).
fn bin_path(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not built; run the tests with cargo test",
        path.display()
    );
    path
}

/// A child process whose output lines are collected.
pub struct Proc {
    pub name: String,
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl Proc {
    /// Starts `bin` with `args`; its stdout and stderr are collected. The
    /// test's own `SB_*` variables are not passed on: the flags decide.
    pub fn spawn(name: &str, bin: &str, args: &[String]) -> Proc {
        Proc::spawn_env(name, bin, args, &[])
    }

    /// Like [`Proc::spawn`], with extra environment variables (only those
    /// given here: the test's own `SB_*` are not passed on either).
    pub fn spawn_env(name: &str, bin: &str, args: &[String], env: &[(&str, &str)]) -> Proc {
        let mut command = Command::new(bin_path(bin));
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("SB_") {
                command.env_remove(key);
            }
        }
        let mut child = command
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let outputs: Vec<Box<dyn std::io::Read + Send>> = vec![
            Box::new(child.stdout.take().expect("stdout")),
            Box::new(child.stderr.take().expect("stderr")),
        ];
        for out in outputs {
            let lines = Arc::clone(&lines);
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    lines
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(strip_ansi(&line));
                }
            });
        }
        Proc {
            name: name.to_owned(),
            child,
            lines,
        }
    }

    /// Waits for an output line containing `needle`; returns it.
    pub fn wait_line(&self, needle: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(l) = self
                .lines
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .find(|l| l.contains(needle))
            {
                return l.clone();
            }
            assert!(
                Instant::now() < deadline,
                "{} never printed {needle:?}; output:\n{}",
                self.name,
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything printed so far.
    pub fn output(&self) -> String {
        self.lines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .join("\n")
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// `kill -TERM`.
    pub fn term(&self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status();
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A loopback address whose port is free now: for a process that must be
/// started again on the same address (a relay after `kill -9`), so the
/// address is known before the first start. A process started once may as
/// well get port 0 and report what it bound.
pub fn any_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

/// Reads `key=<addr>` from a log line such as `listening ws=127.0.0.1:4000 tcp=...`.
pub fn addr_in(line: &str, key: &str) -> SocketAddr {
    let prefix = format!("{key}=");
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&prefix))
        .and_then(|a| a.trim_matches(|c: char| c == '"' || c == ',').parse().ok())
        .unwrap_or_else(|| panic!("no {key}=<addr> in {line:?}"))
}

/// A relay process.
pub struct RelayProc {
    pub proc: Proc,
    pub link: SocketAddr,
    pub admin: SocketAddr,
}

impl RelayProc {
    /// Starts a relay on `link` (port 0: any) with `extra` flags.
    pub fn start(redis: &str, link: SocketAddr, extra: &[&str]) -> RelayProc {
        let mut args: Vec<String> = vec![
            "--listen".into(),
            link.to_string(),
            "--admin".into(),
            "127.0.0.1:0".into(),
            "--redis".into(),
            redis.into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let proc = Proc::spawn("relay", RELAY, &args);
        let line = proc.wait_line("listening link=", Duration::from_secs(20));
        RelayProc {
            link: addr_in(&line, "link"),
            admin: addr_in(&line, "admin"),
            proc,
        }
    }
}

/// A message server process.
pub struct ServerProc {
    pub id: String,
    pub proc: Proc,
    pub ws: SocketAddr,
    pub tcp: SocketAddr,
}

impl ServerProc {
    /// Starts server `id` linked to `relay`, insecure login, with `extra`
    /// flags (an `--ws`, `--tcp` or `--relay` there replaces the default).
    pub fn start(id: &str, redis: &str, relay: SocketAddr, extra: &[&str]) -> ServerProc {
        ServerProc::start_env(id, redis, relay, extra, &[])
    }

    /// Like [`ServerProc::start`], with extra environment variables (for
    /// example the test-only `SB_TEST_CRASH`).
    pub fn start_env(
        id: &str,
        redis: &str,
        relay: SocketAddr,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> ServerProc {
        let mut args: Vec<String> = vec!["--id".into(), id.into()];
        let relay = relay.to_string();
        for (flag, default) in [
            ("--ws", "127.0.0.1:0"),
            ("--tcp", "127.0.0.1:0"),
            ("--relay", relay.as_str()),
        ] {
            if !extra.contains(&flag) {
                args.extend([flag.to_owned(), default.to_owned()]);
            }
        }
        args.extend(["--redis".into(), redis.into(), "--insecure-login".into()]);
        args.extend(extra.iter().map(|s| s.to_string()));
        let proc = Proc::spawn_env(&format!("server-{id}"), MESSAGE_SERVER, &args, env);
        let line = proc.wait_line("listening ws=", Duration::from_secs(20));
        ServerProc {
            id: id.to_owned(),
            ws: addr_in(&line, "ws"),
            tcp: addr_in(&line, "tcp"),
            proc,
        }
    }

    /// Waits until the server's log says its relay link is up (the n-th time).
    pub fn wait_linked(&self, times: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let n = self.proc.output().matches("relay link up").count();
            if n >= times {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not link; output:\n{}",
                self.id,
                self.proc.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
