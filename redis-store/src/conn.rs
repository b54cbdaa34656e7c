//! The one Redis handle of a process, whatever the deployment: one Redis,
//! Redis Cluster, or a master found through Sentinel.
//!
//! - **single**: the crate's [`ConnectionManager`] (one multiplexed
//!   connection that reconnects by itself);
//! - **cluster**: the crate's [`ClusterConnection`] (a multiplexed
//!   connection per node; follows MOVED/ASK and failovers). Every call
//!   here touches one slot: no pipeline spans two;
//! - **sentinel**: a [`ConnectionManager`] to the master that the sentinels
//!   name. The crate does not follow a failover, so a connection error or a
//!   `READONLY` reply drops it and the next call asks the sentinels again.
//!
//! The connection is made on first use, so a process starts while Redis is
//! away; a call then fails fast and the caller retries or answers
//! `ERR unavailable`. A Redis that may evict keys is refused the same way
//! (see [`crate::eviction`]), and checked again at most every
//! [`EVICTION_RECHECK`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, Slot, SlotAddr};
use redis::sentinel::{SentinelClient, SentinelServerType};
use redis::{Cmd, FromRedisValue, Pipeline, RedisError, RedisFuture, RedisResult, Value};

use crate::StoreError;
use crate::args::{RedisArgs, RedisMode};
use crate::scripts::Call;

/// Longest wait for a connection to be made.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest wait for one reply.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// After refusing a Redis that may evict, calls fail at once for this
/// long before a new connection checks again.
pub const EVICTION_RECHECK: Duration = Duration::from_secs(5);

/// One connection of either kind; cheap to clone (each clone shares it).
#[derive(Clone)]
pub enum Conn {
    /// One Redis, or the Sentinel's master.
    Single(ConnectionManager),
    /// Redis Cluster.
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

struct Inner {
    args: RedisArgs,
    /// The connection once made; emptied (Sentinel) to make a new one.
    slot: ArcSwapOption<Conn>,
    /// One connection attempt at a time.
    connecting: tokio::sync::Mutex<()>,
    /// When and why a Redis that may evict was last refused.
    refused: std::sync::Mutex<Option<(Instant, String)>>,
}

/// The process's Redis: cheap to clone, shared by every task.
#[derive(Clone)]
pub struct Redis {
    inner: Arc<Inner>,
}

impl Redis {
    /// A handle for `args`; nothing is connected until the first call.
    pub fn new(args: &RedisArgs) -> Result<Redis, StoreError> {
        if args.urls.is_empty() {
            return Err(StoreError::Config("--redis names no address".to_owned()));
        }
        for url in &args.urls {
            redis::Client::open(url.as_str())
                .map_err(|e| StoreError::Config(format!("--redis {url}: {e}")))?;
        }
        if args.mode == RedisMode::Single && args.urls.len() > 1 {
            return Err(StoreError::Config(
                "--redis-mode single takes one --redis URL".to_owned(),
            ));
        }
        Ok(Redis {
            inner: Arc::new(Inner {
                args: args.clone(),
                slot: ArcSwapOption::empty(),
                connecting: tokio::sync::Mutex::new(()),
                refused: std::sync::Mutex::new(None),
            }),
        })
    }

    /// The flags this handle was made from.
    pub fn args(&self) -> &RedisArgs {
        &self.inner.args
    }

    /// The connection, made now if there is none.
    pub async fn conn(&self) -> RedisResult<Conn> {
        if let Some(c) = self.inner.slot.load_full() {
            return Ok((*c).clone());
        }
        let _one = self.inner.connecting.lock().await;
        if let Some(c) = self.inner.slot.load_full() {
            return Ok((*c).clone());
        }
        if let Some(why) = self.recently_refused() {
            return Err(may_evict(why));
        }
        let conn = match tokio::time::timeout(CONNECT_TIMEOUT * 2, self.open_checked()).await {
            Ok(conn) => conn?,
            Err(_) => return Err(timed_out("connecting to redis timed out")),
        };
        self.inner.slot.store(Some(Arc::new(conn.clone())));
        Ok(conn)
    }

    fn refused(&self) -> std::sync::MutexGuard<'_, Option<(Instant, String)>> {
        // Poisoned only by a panic elsewhere mid-assignment of an Option.
        self.inner.refused.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Why a Redis that may evict was refused, if it was less than
    /// [`EVICTION_RECHECK`] ago.
    fn recently_refused(&self) -> Option<String> {
        self.refused()
            .as_ref()
            .filter(|(at, _)| at.elapsed() < EVICTION_RECHECK)
            .map(|(_, why)| why.clone())
    }

    /// [`Redis::open_loaded`], refused when a node may evict keys (unless
    /// `--redis-allow-eviction`).
    async fn open_checked(&self) -> RedisResult<Conn> {
        let conn = self.open_loaded().await?;
        let mut c = conn.clone();
        let reply = match redis::cmd("INFO")
            .arg("memory")
            .query_async::<Value>(&mut c)
            .await
        {
            Ok(reply) => reply,
            Err(e) => {
                tracing::warn!(error = %e, "could not read INFO memory: not checking whether redis may evict keys");
                return Ok(conn);
            }
        };
        let single = match self.inner.args.mode {
            RedisMode::Sentinel => format!("the master named {}", self.inner.args.master_name),
            _ => self.inner.args.urls.join(","),
        };
        let (evicting, unread) = crate::eviction::evicting_nodes(&reply, &single);
        if !unread.is_empty() {
            tracing::warn!(nodes = ?unread, "no maxmemory_policy in INFO memory: not checking whether these nodes may evict keys");
        }
        if evicting.is_empty() {
            *self.refused() = None;
            return Ok(conn);
        }
        let nodes = evicting.join(", ");
        if self.inner.args.allow_eviction {
            tracing::warn!(%nodes, "redis may evict keys (--redis-allow-eviction): stored messages may be lost when it fills up");
            return Ok(conn);
        }
        let why = format!(
            "{nodes}: stored messages would be deleted when it fills up; set maxmemory-policy noeviction (or no maxmemory), or pass --redis-allow-eviction"
        );
        tracing::error!(reason = %why, "refusing a redis that may evict keys");
        *self.refused() = Some((Instant::now(), why.clone()));
        Err(may_evict(why))
    }

    /// A new connection with every script loaded up front, so that the
    /// first messages never meet `NOSCRIPT`: a batch that did would run
    /// again after later batches and store out of order. (A Redis that
    /// loses its script cache later, by a restart, can still cause that
    /// once; the calls are idempotent by message id and clients `SYNC` on
    /// the gap.)
    async fn open_loaded(&self) -> RedisResult<Conn> {
        let conn = self.open().await?;
        let mut loading = conn.clone();
        for script in crate::scripts::Call::all_scripts() {
            if let Err(e) = script.load_async(&mut loading).await {
                tracing::warn!(error = %e, "could not load a script yet");
            }
        }
        Ok(conn)
    }

    async fn open(&self) -> RedisResult<Conn> {
        let args = &self.inner.args;
        match args.mode {
            RedisMode::Single => {
                let client = redis::Client::open(args.urls[0].as_str())?;
                Ok(Conn::Single(
                    ConnectionManager::new_with_config(client, manager_config()).await?,
                ))
            }
            RedisMode::Cluster => {
                let client = ClusterClientBuilder::new(args.urls.iter().map(String::as_str))
                    .connection_timeout(CONNECT_TIMEOUT)
                    .response_timeout(RESPONSE_TIMEOUT)
                    .retries(6)
                    .min_retry_wait(50)
                    .max_retry_wait(1000)
                    .build()?;
                Ok(Conn::Cluster(client.get_async_connection().await?))
            }
            RedisMode::Sentinel => {
                let mut sentinel = SentinelClient::build(
                    args.urls.iter().map(String::as_str).collect(),
                    args.master_name.clone(),
                    None,
                    SentinelServerType::Master,
                )?;
                let client = sentinel.async_get_client().await?;
                tracing::info!(master = ?client.get_connection_info().addr(), "sentinel named the master");
                Ok(Conn::Single(
                    ConnectionManager::new_with_config(client, manager_config()).await?,
                ))
            }
        }
    }

    /// Notes a failed call: in Sentinel mode a lost connection or a
    /// `READONLY` reply (the master became a replica) means the master may
    /// have moved, so the next call asks the sentinels again.
    pub fn note_error(&self, e: &RedisError) {
        if self.inner.args.mode != RedisMode::Sentinel {
            return;
        }
        let moved = e.is_io_error()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_timeout()
            || e.code() == Some("READONLY");
        if moved && self.inner.slot.load().is_some() {
            tracing::warn!(error = %e, "redis master lost; asking the sentinels again");
            self.inner.slot.store(None);
        }
    }

    /// Runs one command.
    pub async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> RedisResult<T> {
        let mut conn = self.conn().await?;
        let r = cmd.query_async(&mut conn).await;
        if let Err(e) = &r {
            self.note_error(e);
        }
        r
    }

    /// Runs a pipeline whose commands all touch one slot (or no key).
    pub async fn query_pipe<T: FromRedisValue>(&self, pipe: &Pipeline) -> RedisResult<T> {
        let mut conn = self.conn().await?;
        let r = pipe.query_async(&mut conn).await;
        if let Err(e) = &r {
            self.note_error(e);
        }
        r
    }

    /// Runs a script call; when Redis lost its script cache (a restart),
    /// loads the script and runs the call again (it did not run).
    pub async fn invoke<T: FromRedisValue>(&self, call: &Call) -> RedisResult<T> {
        let mut conn = self.conn().await?;
        let r = match call.cmd.query_async(&mut conn).await {
            Err(e) if is_noscript(&e) && call.script.is_some() => {
                if let Some(script) = call.script {
                    script.load_async(&mut conn).await?;
                }
                call.cmd.query_async(&mut conn).await
            }
            r => r,
        };
        if let Err(e) = &r {
            self.note_error(e);
        }
        r
    }

    /// Runs many script calls and answers each one's reply, in order.
    /// Calls in one slot go out as one pipeline, in the given order (so
    /// Redis runs them in that order: one user's messages keep theirs);
    /// with one Redis that is one pipeline for all, in a cluster one per
    /// slot, all at the same time. Calls that met `NOSCRIPT` (and did not
    /// run) are run again once the scripts are loaded.
    pub async fn invoke_all(&self, calls: &[Call]) -> Vec<RedisResult<Value>> {
        let conn = match self.conn().await {
            Ok(c) => c,
            Err(e) => return calls.iter().map(|_| Err(copy_error(&e))).collect(),
        };
        let groups: Vec<Vec<usize>> = match conn {
            Conn::Single(_) => vec![(0..calls.len()).collect()],
            Conn::Cluster(_) => {
                let mut by_slot: HashMap<Slot, Vec<usize>> = HashMap::new();
                let mut order = Vec::new();
                for (i, call) in calls.iter().enumerate() {
                    let slot = Slot::for_key(&call.slot_key);
                    by_slot
                        .entry(slot)
                        .or_insert_with(|| {
                            order.push(slot);
                            Vec::new()
                        })
                        .push(i);
                }
                order
                    .into_iter()
                    .filter_map(|s| by_slot.remove(&s))
                    .collect()
            }
        };
        let runs = groups.into_iter().map(|group| {
            let conn = conn.clone();
            async move {
                let replies = self.pipeline(conn, calls, &group).await;
                group.into_iter().zip(replies).collect::<Vec<_>>()
            }
        });
        let mut out: Vec<Option<RedisResult<Value>>> = calls.iter().map(|_| None).collect();
        for done in futures_util::future::join_all(runs).await {
            for (i, r) in done {
                out[i] = Some(r);
            }
        }
        out.into_iter()
            .map(|r| r.unwrap_or_else(|| Err(timed_out("no reply"))))
            .collect()
    }

    /// One pipeline of `calls[idx]` (one slot), `NOSCRIPT` retried once.
    async fn pipeline(
        &self,
        mut conn: Conn,
        calls: &[Call],
        idx: &[usize],
    ) -> Vec<RedisResult<Value>> {
        let run = |conn: &mut Conn, which: Vec<usize>| {
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for i in &which {
                pipe.add_command(calls[*i].cmd.clone());
            }
            let mut conn = conn.clone();
            async move { pipe.query_async::<Vec<RedisResult<Value>>>(&mut conn).await }
        };
        let mut results = match run(&mut conn, idx.to_vec()).await {
            Ok(r) if r.len() == idx.len() => r,
            Ok(_) => {
                return idx
                    .iter()
                    .map(|_| Err(timed_out("short pipeline reply")))
                    .collect();
            }
            Err(e) => {
                self.note_error(&e);
                return idx.iter().map(|_| Err(copy_error(&e))).collect();
            }
        };
        let missing: Vec<usize> = results
            .iter()
            .enumerate()
            .filter(|(_, r)| matches!(r, Err(e) if is_noscript(e)))
            .map(|(pos, _)| pos)
            .collect();
        if missing.is_empty() {
            return results;
        }
        tracing::info!(
            calls = missing.len(),
            "redis lost its scripts; loading them again"
        );
        for pos in &missing {
            if let Some(script) = calls[idx[*pos]].script
                && let Err(e) = script.load_async(&mut conn).await
            {
                self.note_error(&e);
                break;
            }
        }
        match run(&mut conn, missing.iter().map(|pos| idx[*pos]).collect()).await {
            Ok(again) => {
                for (pos, r) in missing.into_iter().zip(again) {
                    results[pos] = r;
                }
            }
            Err(e) => {
                for pos in missing {
                    results[pos] = Err(copy_error(&e));
                }
            }
        }
        results
    }

    /// With `--redis-replica-acks N`, waits (up to `--redis-replica-timeout`)
    /// until N replicas of every master holding one of `keys` have every
    /// write this process made there so far: one `WAIT` on the one
    /// connection, or in a cluster one per distinct slot, at the same time.
    /// Ok at once with N = 0.
    pub async fn wait_replicas(&self, keys: &[String]) -> Result<(), StoreError> {
        let args = &self.inner.args;
        if args.replica_acks == 0 || keys.is_empty() {
            return Ok(());
        }
        let mut cmd = redis::cmd("WAIT");
        cmd.arg(args.replica_acks)
            .arg(u64::try_from(args.replica_timeout.as_millis()).unwrap_or(u64::MAX));
        let conn = self.conn().await?;
        let replies: Vec<RedisResult<Value>> = match conn {
            Conn::Single(mut c) => vec![cmd.query_async::<Value>(&mut c).await],
            Conn::Cluster(c) => {
                let routes: std::collections::HashSet<Route> = keys
                    .iter()
                    .map(|k| Route::with_key(k, SlotAddr::Master))
                    .collect();
                let waits = routes.into_iter().map(|route| {
                    let mut c = c.clone();
                    let cmd = cmd.clone();
                    async move {
                        c.route_command(
                            cmd,
                            RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
                        )
                        .await
                    }
                });
                futures_util::future::join_all(waits).await
            }
        };
        for reply in replies {
            let reply = reply.inspect_err(|e| self.note_error(e))?;
            let acked = match reply {
                Value::Int(n) => u32::try_from(n).unwrap_or(0),
                _ => return Err(StoreError::Shape("WAIT reply")),
            };
            if acked < args.replica_acks {
                return Err(StoreError::NotReplicated {
                    wanted: args.replica_acks,
                    acked,
                });
            }
        }
        Ok(())
    }
}

fn manager_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_millis(500))
}

fn is_noscript(e: &RedisError) -> bool {
    e.code() == Some("NOSCRIPT")
}

/// The same error again, for each call of a pipeline that failed as a whole.
fn copy_error(e: &RedisError) -> RedisError {
    RedisError::from(std::io::Error::other(e.to_string()))
}

fn may_evict(why: String) -> RedisError {
    RedisError::from((redis::ErrorKind::Client, "redis may evict keys", why))
}

fn timed_out(what: &'static str) -> RedisError {
    RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, what))
}
