//! The Lua scripts ([`shared::keys`]) with one typed call each: the order of
//! `KEYS` and `ARGV` is written here once, beside the script's name, and
//! nowhere else. A [`Call`] is an `EVALSHA` that knows its script, so that
//! [`crate::Redis`] can load it again when Redis lost its script cache, alone
//! or in a pipeline.

use std::sync::LazyLock;

use redis::{Cmd, Script, Value};
use shared::keys;

use crate::{StoreError, int, text};

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
            &STORE_DMS,
            &ACK,
        ]
    }
}

static SESSION_ADD: LazyLock<Script> = LazyLock::new(|| Script::new(keys::SESSION_ADD));
static SESSION_DEL: LazyLock<Script> = LazyLock::new(|| Script::new(keys::SESSION_DEL));
static REGISTER: LazyLock<Script> = LazyLock::new(|| Script::new(keys::REGISTER));
static UNREGISTER: LazyLock<Script> = LazyLock::new(|| Script::new(keys::UNREGISTER));
static STORE_DMS: LazyLock<Script> = LazyLock::new(|| Script::new(keys::STORE_DMS));
static ACK: LazyLock<Script> = LazyLock::new(|| Script::new(keys::ACK));

/// [`keys::SESSION_ADD`]: record `session` of `user` at `location`, unless
/// the user holds `max` sessions already (0: no limit).
pub fn session_add(user: &str, session: &str, location: &str, max: u64) -> Call {
    Call::new(
        &SESSION_ADD,
        &[keys::user_sessions(user), keys::user_servers(user)],
    )
    .arg(session)
    .arg(location)
    .arg(max)
}

/// [`keys::SESSION_DEL`]: remove `session` of `user` if it is still at `location`.
pub fn session_del(user: &str, session: &str, location: &str) -> Call {
    Call::new(
        &SESSION_DEL,
        &[keys::user_sessions(user), keys::user_servers(user)],
    )
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

/// The inbox bounds a batch of direct messages is stored under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InboxBounds {
    /// Entries kept per inbox (approximate trimming).
    pub max_len: u64,
    /// Age after which a message leaves its inbox; also the inbox's TTL.
    pub max_age_ms: u64,
    /// Unix ms before which a message is too old to keep.
    pub cutoff_ms: u64,
    /// Lifetime of an idempotency record (a message with a cid).
    pub record_ttl_s: u64,
}

/// One op of a [`StoreDms`] call.
#[derive(Debug, Clone, Copy)]
struct Op<'s> {
    /// `true`: both halves ('d'); `false`: one half ('h').
    whole: bool,
    to: usize,
    /// 0: none (a half, or a note to self).
    from: usize,
    /// Index of the record key in `KEYS`; 0: no record (no cid).
    record_key: usize,
    record: &'s str,
}

/// A [`keys::STORE_DMS`] call under construction: direct messages (both
/// halves in this call) and halves (one user's copy), stored in the order
/// they are added. Each user's keys are passed once, however many of its
/// messages the call holds. With one Redis a whole batch goes in one call;
/// in Redis Cluster every key of a call must share a slot, so the caller
/// makes one call per user and adds only [`StoreDms::half`]s.
#[derive(Debug, Clone)]
pub struct StoreDms<'s> {
    bounds: InboxBounds,
    /// Users in order of first appearance; user `i` (0-based) owns
    /// `KEYS[4i..4i+4]`.
    users: Vec<&'s str>,
    /// The record keys, after the users' keys.
    record_keys: Vec<String>,
    ops: Vec<Op<'s>>,
}

/// What one op of a [`StoreDms`] call gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpStored {
    /// The seq in the first user's inbox (the recipient's for a message).
    pub to_seq: u64,
    /// Stored now (false: stored by an earlier call, found by its record).
    pub to_fresh: bool,
    /// The seq in the sender's inbox, for a message with both halves.
    pub from_seq: Option<u64>,
    /// The sender's half was stored now.
    pub from_fresh: bool,
}

/// A [`StoreDms`] call's reply: one [`OpStored`] per op, in order, and the
/// servers holding live sessions of each user of the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmsStored<'s> {
    pub ops: Vec<OpStored>,
    /// `(user, servers)` for every user of the call.
    pub servers: Vec<(&'s str, Vec<String>)>,
}

impl<'s> StoreDms<'s> {
    /// An empty call.
    pub fn new(bounds: InboxBounds) -> StoreDms<'s> {
        StoreDms {
            bounds,
            users: Vec::new(),
            record_keys: Vec::new(),
            ops: Vec::new(),
        }
    }

    /// Ops added so far.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// No op yet.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// 1-based index of `user`, added when new.
    fn user(&mut self, user: &'s str) -> usize {
        match self.users.iter().position(|u| *u == user) {
            Some(i) => i + 1,
            None => {
                self.users.push(user);
                self.users.len()
            }
        }
    }

    fn record_key(&mut self, owner: &str, msg_id: &str, with_record: bool) -> usize {
        if !with_record {
            return 0;
        }
        self.record_keys.push(keys::stored_half(owner, msg_id));
        // Placeholder: made absolute (after the users' keys) in `call`.
        self.record_keys.len()
    }

    /// Both halves of a message (one half for a note to self), checked and
    /// recorded once, under the recipient, when `with_record` (the message
    /// has a cid). Only where every key may be in one call: not on Redis
    /// Cluster. Returns the op's index.
    pub fn message(
        &mut self,
        to: &'s str,
        from: &'s str,
        msg_id: &str,
        record: &'s str,
        with_record: bool,
    ) -> usize {
        let to_i = self.user(to);
        let from_i = if from == to { 0 } else { self.user(from) };
        let record_key = self.record_key(to, msg_id, with_record);
        self.ops.push(Op {
            whole: true,
            to: to_i,
            from: from_i,
            record_key,
            record,
        });
        self.ops.len() - 1
    }

    /// One half: `user`'s copy of a message, with its own record under
    /// `user` when `with_record`. Returns the op's index.
    pub fn half(
        &mut self,
        user: &'s str,
        msg_id: &str,
        record: &'s str,
        with_record: bool,
    ) -> usize {
        let to = self.user(user);
        let record_key = self.record_key(user, msg_id, with_record);
        self.ops.push(Op {
            whole: false,
            to,
            from: 0,
            record_key,
            record,
        });
        self.ops.len() - 1
    }

    /// The call ([`keys::STORE_DMS`]).
    pub fn call(&self) -> Call {
        let mut keys_ = Vec::with_capacity(4 * self.users.len() + self.record_keys.len());
        for u in &self.users {
            keys_.push(keys::epoch(u));
            keys_.push(keys::inbox(u));
            keys_.push(keys::kept(u));
            keys_.push(keys::user_servers(u));
        }
        let base = keys_.len();
        keys_.extend(self.record_keys.iter().cloned());
        let b = &self.bounds;
        // `kept` lives a tenth of the max age, the inbox keys the max age
        // and that tenth (see the script).
        let kept_ms = b.max_age_ms / 10 + 1;
        let mut call = Call::new(&STORE_DMS, &keys_)
            .arg(b.max_len)
            .arg(b.max_age_ms.saturating_add(kept_ms))
            .arg(kept_ms)
            .arg(b.cutoff_ms)
            .arg(b.record_ttl_s.max(1))
            .arg(self.users.len());
        for op in &self.ops {
            let record_key = if op.record_key == 0 {
                0
            } else {
                base + op.record_key
            };
            call.cmd
                .arg(if op.whole { "d" } else { "h" })
                .arg(op.to)
                .arg(op.from)
                .arg(record_key)
                .arg(op.record);
        }
        call
    }

    /// Reads this call's reply.
    pub fn parse(&self, reply: &Value) -> Result<DmsStored<'s>, StoreError> {
        let Value::Array(items) = reply else {
            return Err(StoreError::Shape("store_dms reply"));
        };
        if items.len() != self.ops.len() + self.users.len() {
            return Err(StoreError::Shape("store_dms reply length"));
        }
        let (ops, sessions) = items.split_at(self.ops.len());
        let ops = ops
            .iter()
            .zip(&self.ops)
            .map(|(v, op)| parse_op(v, op.whole && op.from != 0))
            .collect::<Result<Vec<_>, _>>()?;
        let servers = self
            .users
            .iter()
            .zip(sessions)
            .map(|(u, v)| (*u, text(v).map(|l| servers_in(&l)).unwrap_or_default()))
            .collect();
        Ok(DmsStored { ops, servers })
    }
}

/// One op's reply `{to-id, to-dup, from-id, from-dup}`.
fn parse_op(v: &Value, two_halves: bool) -> Result<OpStored, StoreError> {
    let Value::Array(f) = v else {
        return Err(StoreError::Shape("store_dms op reply"));
    };
    let seq = |i: usize| -> Result<u64, StoreError> {
        f.get(i)
            .and_then(text)
            .and_then(|id| keys::parse_inbox_entry_id(&id).map(|(_, seq)| seq))
            .ok_or(StoreError::Shape("store_dms stream id"))
    };
    let dup = |i: usize| -> Result<bool, StoreError> {
        match f.get(i).and_then(int) {
            Some(0) => Ok(false),
            Some(1) => Ok(true),
            _ => Err(StoreError::Shape("store_dms duplicate flag")),
        }
    };
    Ok(OpStored {
        to_seq: seq(0)?,
        to_fresh: !dup(1)?,
        from_seq: if two_halves { Some(seq(2)?) } else { None },
        from_fresh: if two_halves { !dup(3)? } else { false },
    })
}

/// [`keys::ACK`]: advance `device`'s cursor to `seq`, refreshing its TTL.
pub fn ack(user: &str, device: &str, seq: u64, ttl_s: u64) -> Call {
    Call::new(&ACK, &[keys::cursor(user, device)])
        .arg(seq)
        .arg(ttl_s.max(1))
}

/// The distinct servers in a user's server list ([`keys::user_servers`]:
/// `server:epoch` locations joined by spaces); locations that do not parse
/// are skipped.
pub fn servers_in(list: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for loc in list.split(' ') {
        if let Some((server, _)) = shared::ids::parse_location(loc)
            && !out.iter().any(|s| s == server)
        {
            out.push(server.to_owned());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn bounds() -> InboxBounds {
        InboxBounds {
            max_len: 100,
            max_age_ms: 60_000,
            cutoff_ms: 1,
            record_ttl_s: 60,
        }
    }

    fn args(call: &Call) -> Vec<String> {
        call.cmd
            .args_iter()
            .filter_map(|a| match a {
                redis::Arg::Simple(b) => Some(String::from_utf8_lossy(b).into_owned()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_batch_passes_each_user_once_and_the_ops_in_order() {
        let mut dms = StoreDms::new(bounds());
        assert_eq!(dms.message("bob", "alice", "m1", "r1", true), 0);
        assert_eq!(dms.message("alice", "bob", "m2", "r2", false), 1);
        assert_eq!(dms.half("carol", "m3", "r3", true), 2);
        let a = args(&dms.call());
        // EVALSHA sha numkeys: 3 users x 4 keys + 2 record keys.
        assert_eq!(a[2], "14");
        assert_eq!(
            &a[3..7],
            [
                "sb:{u:bob}:ep",
                "sb:{u:bob}:inbox",
                "sb:{u:bob}:kept",
                "sb:{u:bob}:where"
            ]
        );
        assert_eq!(a[7], "sb:{u:alice}:ep");
        assert_eq!(a[15..17], ["sb:{u:bob}:dm:m1", "sb:{u:carol}:dm:m3"]);
        // Bounds, then the user count, then five values per op.
        assert_eq!(a[17..23], ["100", "66001", "6001", "1", "60", "3"]);
        assert_eq!(a[23..28], ["d", "1", "2", "13", "r1"]);
        assert_eq!(a[28..33], ["d", "2", "1", "0", "r2"]);
        assert_eq!(a[33..38], ["h", "3", "0", "14", "r3"]);
        assert_eq!(a.len(), 38);
    }

    #[test]
    fn a_reply_gives_seqs_freshness_and_servers() {
        let mut dms = StoreDms::new(bounds());
        dms.message("bob", "alice", "m1", "r1", true);
        dms.message("bob", "bob", "m2", "r2", false);
        let op = |a: &str, ad: i64, b: &str, bd: i64| {
            Value::Array(vec![bulk(a), Value::Int(ad), bulk(b), Value::Int(bd)])
        };
        let reply = Value::Array(vec![
            op("1700-3", 0, "1800-0", 0),
            op("1700-4", 1, "", 1),
            bulk("x:1 x:2 y:3"),
            bulk(""),
        ]);
        let got = dms.parse(&reply).expect("parses");
        assert_eq!(
            got.ops,
            [
                OpStored {
                    to_seq: 4,
                    to_fresh: true,
                    from_seq: Some(1),
                    from_fresh: true
                },
                OpStored {
                    to_seq: 5,
                    to_fresh: false,
                    from_seq: None,
                    from_fresh: false
                },
            ]
        );
        assert_eq!(
            got.servers,
            [
                ("bob", vec!["x".to_owned(), "y".to_owned()]),
                ("alice", vec![])
            ]
        );
    }

    #[test]
    fn malformed_replies_are_errors() {
        let mut dms = StoreDms::new(bounds());
        dms.message("bob", "alice", "m1", "r1", true);
        let ok_op = Value::Array(vec![bulk("1-0"), Value::Int(0), bulk("2-0"), Value::Int(0)]);
        let sess = || bulk("");
        for bad in [
            Value::Nil,
            Value::Array(vec![]),
            Value::Array(vec![ok_op.clone(), sess()]),
            Value::Array(vec![
                Value::Array(vec![
                    bulk("nodash"),
                    Value::Int(0),
                    bulk("2-0"),
                    Value::Int(0),
                ]),
                sess(),
                sess(),
            ]),
            Value::Array(vec![
                Value::Array(vec![bulk("1-0"), Value::Int(7), bulk("2-0"), Value::Int(0)]),
                sess(),
                sess(),
            ]),
            Value::Array(vec![Value::Array(vec![bulk("1-0")]), sess(), sess()]),
        ] {
            assert!(dms.parse(&bad).is_err(), "{bad:?}");
        }
        assert!(
            dms.parse(&Value::Array(vec![ok_op, sess(), sess()]))
                .is_ok()
        );
    }

    #[test]
    fn servers_are_read_from_server_lists() {
        assert_eq!(
            servers_in("a:1 b:7 a:1 garbage a:2"),
            vec!["a".to_owned(), "b".to_owned()]
        );
        assert!(servers_in("").is_empty());
    }
}
