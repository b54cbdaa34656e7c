//! The Lua scripts ([`shared::keys`]) with one typed call each: the order of
//! `KEYS` and `ARGV` is written here once, beside the script's name, and
//! nowhere else. A [`Call`] is an `EVALSHA` that knows its script, so that
//! [`crate::Redis`] can load it again when Redis lost its script cache, alone
//! or in a pipeline.

use std::sync::LazyLock;

use redis::{Cmd, Script};
use shared::keys;

/// One script call: its `EVALSHA` and the script to load on `NOSCRIPT`.
#[derive(Clone)]
pub struct Call {
    /// `None` for a plain command.
    pub(crate) script: Option<&'static Script>,
    pub(crate) cmd: Cmd,
    /// A key of the call, naming its slot.
    pub(crate) slot_key: String,
}

impl Call {
    fn new(script: &'static LazyLock<Script>, keys: &[String]) -> Call {
        let script: &'static Script = script;
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(script.get_hash()).arg(keys.len());
        for k in keys {
            cmd.arg(k);
        }
        Call {
            script: Some(script),
            cmd,
            slot_key: keys.first().cloned().unwrap_or_default(),
        }
    }

    /// A plain command (no script) on `key`'s slot, to go in the same
    /// ordered pipelines as script calls.
    pub fn plain(cmd: Cmd, key: &str) -> Call {
        Call {
            script: None,
            cmd,
            slot_key: key.to_owned(),
        }
    }

    fn arg<T: redis::ToRedisArgs>(mut self, arg: T) -> Call {
        self.cmd.arg(arg);
        self
    }

    /// Every script, to load up front.
    pub fn all_scripts() -> [&'static Script; 6] {
        [
            &SESSION_ADD,
            &SESSION_DEL,
            &REGISTER,
            &UNREGISTER,
            &STORE_HALF,
            &ACK,
        ]
    }
}

static SESSION_ADD: LazyLock<Script> = LazyLock::new(|| Script::new(keys::SESSION_ADD));
static SESSION_DEL: LazyLock<Script> = LazyLock::new(|| Script::new(keys::SESSION_DEL));
static REGISTER: LazyLock<Script> = LazyLock::new(|| Script::new(keys::REGISTER));
static UNREGISTER: LazyLock<Script> = LazyLock::new(|| Script::new(keys::UNREGISTER));
static STORE_HALF: LazyLock<Script> = LazyLock::new(|| Script::new(keys::STORE_HALF));
static ACK: LazyLock<Script> = LazyLock::new(|| Script::new(keys::ACK));

/// [`keys::SESSION_ADD`]: record `session` of `user` at `location`, unless
/// the user holds `max` sessions already (0: no limit).
pub fn session_add(user: &str, session: &str, location: &str, max: u64) -> Call {
    Call::new(&SESSION_ADD, &[keys::user_sessions(user)])
        .arg(session)
        .arg(location)
        .arg(max)
}

/// [`keys::SESSION_DEL`]: remove `session` of `user` if it is still at `location`.
pub fn session_del(user: &str, session: &str, location: &str) -> Call {
    Call::new(&SESSION_DEL, &[keys::user_sessions(user)])
        .arg(session)
        .arg(location)
}

/// What a server writes in its registry entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration<'s> {
    pub server: &'s str,
    pub epoch: u64,
    pub ws: &'s str,
    pub tcp: &'s str,
    pub conns: u64,
    pub cap: u64,
    pub now_ms: u64,
    pub ttl_s: u64,
}

/// [`keys::REGISTER`].
pub fn register(r: &Registration<'_>) -> Call {
    Call::new(&REGISTER, &[keys::server(r.server)])
        .arg(r.epoch)
        .arg(r.ws)
        .arg(r.tcp)
        .arg(r.conns)
        .arg(r.cap)
        .arg(r.now_ms)
        .arg(r.ttl_s.max(1))
}

/// [`keys::UNREGISTER`]: delete `server`'s entry if it names `epoch`.
pub fn unregister(server: &str, epoch: u64) -> Call {
    Call::new(&UNREGISTER, &[keys::server(server)]).arg(epoch)
}

/// One half of a direct message: what [`keys::STORE_HALF`] needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Half<'s> {
    /// Whose inbox.
    pub user: &'s str,
    /// The message id (idempotency key when `dedup_ttl_s > 0`).
    pub msg_id: &'s str,
    /// The encoded record ([`shared::record::encode`]).
    pub record: &'s str,
    pub max_len: u64,
    pub max_age_ms: u64,
    /// Unix ms before which a message is too old to keep.
    pub cutoff_ms: u64,
    /// Lifetime of the idempotency record; 0 for a send without cid.
    pub dedup_ttl_s: u64,
}

/// `HGETALL` of a user's sessions, to run right after [`store_half`] in
/// the same pipeline (outside the script: cheaper than through Lua).
pub fn sessions_of(user: &str) -> Call {
    let key = keys::user_sessions(user);
    let mut cmd = redis::cmd("HGETALL");
    cmd.arg(&key);
    Call::plain(cmd, &key)
}

/// [`keys::STORE_HALF`].
pub fn store_half(h: &Half<'_>) -> Call {
    Call::new(
        &STORE_HALF,
        &[
            keys::epoch(h.user),
            keys::inbox(h.user),
            keys::stored_half(h.user, h.msg_id),
        ],
    )
    .arg(h.record)
    .arg(h.max_len)
    .arg(h.max_age_ms.max(1))
    .arg(h.cutoff_ms)
    .arg(h.dedup_ttl_s)
}

/// [`keys::ACK`]: advance `device`'s cursor to `seq`, refreshing its TTL.
pub fn ack(user: &str, device: &str, seq: u64, ttl_s: u64) -> Call {
    Call::new(&ACK, &[keys::cursor(user, device)])
        .arg(seq)
        .arg(ttl_s.max(1))
}
