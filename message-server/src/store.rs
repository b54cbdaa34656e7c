//! Durable messages: inboxes, their epochs, device cursors, room history.
//!
//! Callers speak the domain: [`Store::store_batch`] takes [`Write`]s and
//! answers one [`Outcome`] each; Redis commands, key names, script
//! arguments and reply parsing stay here and in [`redis_store`].
//!
//! A direct message is stored as two halves, one per user (the recipient's
//! inbox and the sender's; one for a note to self) by
//! [`shared::keys::STORE_DMS`]: one call for a whole batch on one Redis or
//! Sentinel (both halves of each message together), one call per user of
//! the batch on Redis Cluster (its halves; every key of a call in its
//! slot), all sent at the same time. The sender hears `OK SENT` only after
//! both halves are stored (and, with `--redis-replica-acks N`, held by N
//! replicas). A send with a `cid` gets a message id derived from sender and
//! cid ([`shared::ids::cid_message_id`]) and is stored once: a retry of the
//! same cid, on any server, completes whichever half is missing and answers
//! with the first seq. A send without `cid` writes no idempotency record.
//!
//! Test hooks: `SB_TEST_CRASH=between-halves` makes the server store only
//! the recipients' halves of a batch (as separate halves, each with its
//! record) and abort when it held a direct message with a cid; `SB_TEST_CRASH=after-store` after both halves and
//! before the reply. Test-only; inert when the variable is not set.

use std::time::Duration;

use std::collections::HashMap;

use redis::Value;
use redis::streams::StreamRangeReply;
use redis_store::scripts::{self, DmsStored, InboxBounds, OpStored, StoreDms};
use redis_store::{Redis, RedisMode, StoreError, text};
use shared::keys;
use shared::link::{DirectMsg, RoomMsg};

use crate::db::{Db, DbError};
use entry::now_ms;

/// Inbox bounds and record lifetimes.
#[derive(Debug, Clone)]
pub struct StoreLimits {
    pub inbox_max_len: u64,
    pub inbox_max_age: Duration,
    pub cid_ttl: Duration,
    pub room_history: u64,
}

/// One thing to store.
#[derive(Debug, Clone, Copy)]
pub enum Write<'a> {
    /// A direct message, with the client's id for it if any.
    Direct {
        msg: &'a DirectMsg,
        cid: Option<&'a str>,
    },
    /// A room message (history only).
    Room(&'a RoomMsg),
}

/// What storing one [`Write`] gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A direct message is stored.
    Direct(Stored),
    /// A room message is in the history.
    Room,
}

/// What storing a direct message gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The message as stored (its id derived from the cid when there is one).
    pub msg: DirectMsg,
    /// Its seq in the recipient's inbox.
    pub seq_to: u64,
    /// Its seq in the sender's inbox (equal to `seq_to` for a note to self).
    pub seq_from: u64,
    /// Servers with live sessions of the recipient.
    pub to_servers: Vec<String>,
    /// Servers with live sessions of the sender.
    pub from_servers: Vec<String>,
    /// The recipient's half was stored now (false: a retry found it stored,
    /// and it was pushed then).
    pub to_fresh: bool,
    /// The sender's half was stored now.
    pub from_fresh: bool,
}

impl Stored {
    /// Neither half was new: a retry of a send stored before.
    pub fn duplicate(&self) -> bool {
        !self.to_fresh && !self.from_fresh
    }
}

/// One page of an inbox.
#[derive(Debug, Clone, Default)]
pub struct InboxPage {
    /// Messages after the asked seq, in order.
    pub messages: Vec<(u64, DirectMsg)>,
    /// The inbox's last seq (0 when it holds no message).
    pub head: u64,
    /// The inbox epoch ("" when it never had a message).
    pub epoch: String,
}

/// Where a test asked the server to die.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Crash {
    BetweenHalves,
    AfterStore,
}

/// Durable storage on top of [`Db`].
#[derive(Clone)]
pub struct Store {
    db: Db,
    limits: StoreLimits,
    crash: Option<Crash>,
}

/// One write's answer, before it is joined to its message.
enum Answer {
    Direct {
        seq_to: u64,
        seq_from: u64,
        to_fresh: bool,
        from_fresh: bool,
        to_servers: Vec<String>,
        from_servers: Vec<String>,
    },
    Room,
}

/// Where one write's answer is in a batch's replies.
enum Place {
    /// A direct message: the op `(call, op)` of its recipient's half (or of
    /// the whole message), and of its sender's half when that is an op of
    /// its own (Redis Cluster).
    Direct {
        to: (usize, usize),
        from: Option<(usize, usize)>,
    },
    /// A room append: its index among the batch's room calls.
    Room(usize),
    /// Nothing to answer (cannot happen: every write is one of the above).
    Nothing,
}

/// The [`StoreDms`] calls of one batch: one in all on one Redis, one per
/// user in a cluster (all keys of a call in one slot).
struct Batch<'a> {
    cluster: bool,
    bounds: InboxBounds,
    dms: Vec<StoreDms<'a>>,
    /// The call of each user (cluster), or of everyone (key "").
    call_of: HashMap<&'a str, usize>,
}

impl<'a> Batch<'a> {
    fn call_for(&mut self, user: &'a str) -> usize {
        let key = if self.cluster { user } else { "" };
        if let Some(c) = self.call_of.get(key) {
            return *c;
        }
        self.dms.push(StoreDms::new(self.bounds));
        self.call_of.insert(key, self.dms.len() - 1);
        self.dms.len() - 1
    }

    /// Adds a direct message: one op with both halves on one Redis, a
    /// half in each user's call in a cluster. `only_recipient` (a test
    /// hook) stores the recipient's half alone.
    fn add(
        &mut self,
        msg: &'a DirectMsg,
        record: &'a str,
        keep: bool,
        only_recipient: bool,
    ) -> Place {
        let to_call = self.call_for(&msg.to);
        if self.cluster || only_recipient {
            let to = (
                to_call,
                self.dms[to_call].half(&msg.to, &msg.id, record, keep),
            );
            let from = (msg.from != msg.to && !only_recipient).then(|| {
                let c = self.call_for(&msg.from);
                (c, self.dms[c].half(&msg.from, &msg.id, record, keep))
            });
            return Place::Direct { to, from };
        }
        let op = self.dms[to_call].message(&msg.to, &msg.from, &msg.id, record, keep);
        Place::Direct {
            to: (to_call, op),
            from: None,
        }
    }
}

impl Store {
    pub fn new(db: Db, limits: StoreLimits) -> Store {
        let crash = match std::env::var("SB_TEST_CRASH").as_deref() {
            Ok("between-halves") => Some(Crash::BetweenHalves),
            Ok("after-store") => Some(Crash::AfterStore),
            _ => None,
        };
        if let Some(c) = crash {
            tracing::warn!(
                ?c,
                "SB_TEST_CRASH is set: this server will abort on purpose"
            );
        }
        Store { db, limits, crash }
    }

    fn redis(&self) -> &Redis {
        &self.db.redis
    }

    /// Redis pipelines the router should keep in flight. One Redis (or
    /// Sentinel's master) is one ordered connection, and a batch is one
    /// script call there: 2, so that one batch is stored while the previous
    /// one is routed and the next one gathers (with 1 the router's own work
    /// between batches caps the rate; more only makes batches smaller: more
    /// calls and fsyncs per message). A cluster spreads a batch over several
    /// masters: 4, so one batch's slowest master does not hold up the others.
    pub fn pipelines_in_flight(&self) -> usize {
        match self.redis().args().mode {
            RedisMode::Cluster => 4,
            RedisMode::Single | RedisMode::Sentinel => 2,
        }
    }

    /// Stores every write and answers one outcome each, in order. The
    /// direct messages go out as [`keys::STORE_DMS`] calls: one for the
    /// whole batch on one Redis, one per user in a cluster (each user's
    /// halves in job order, so each inbox gets its seqs in job order);
    /// room appends beside them, all at once.
    pub async fn store_batch(&self, writes: &[Write<'_>]) -> Vec<Result<Outcome, DbError>> {
        let now = now_ms();
        let max_age_ms = u64::try_from(self.limits.inbox_max_age.as_millis()).unwrap_or(u64::MAX);
        let bounds = InboxBounds {
            max_len: self.limits.inbox_max_len,
            max_age_ms,
            cutoff_ms: now.saturating_sub(max_age_ms),
            record_ttl_s: self.limits.cid_ttl.as_secs().max(1),
        };
        // The messages as stored: an id derived from the cid when there is one.
        let msgs: Vec<Option<DirectMsg>> = writes
            .iter()
            .map(|w| match w {
                Write::Direct { msg, cid } => {
                    let mut msg = (*msg).clone();
                    if let Some(cid) = cid {
                        msg.id = shared::ids::cid_message_id(&msg.from, cid);
                    }
                    Some(msg)
                }
                Write::Room(_) => None,
            })
            .collect();
        let records: Vec<Option<String>> = msgs
            .iter()
            .map(|m| m.as_ref().map(shared::record::encode))
            .collect();
        let mut batch = Batch {
            cluster: self.redis().args().mode == RedisMode::Cluster,
            bounds,
            dms: Vec::new(),
            call_of: HashMap::new(),
        };
        let only_recipients = self.crash == Some(Crash::BetweenHalves);
        // For each write, where its answer will be.
        let mut at: Vec<Place> = Vec::with_capacity(writes.len());
        let mut rooms: Vec<scripts::Call> = Vec::new();
        for (i, w) in writes.iter().enumerate() {
            match (w, &msgs[i], &records[i]) {
                (Write::Direct { cid, .. }, Some(msg), Some(record)) => {
                    at.push(batch.add(msg, record, cid.is_some(), only_recipients));
                }
                (Write::Room(msg), _, _) => {
                    rooms.push(self.room_call(msg));
                    at.push(Place::Room(rooms.len() - 1));
                }
                _ => at.push(Place::Nothing),
            }
        }
        let dms = batch.dms;
        let mut calls: Vec<scripts::Call> = dms.iter().map(StoreDms::call).collect();
        calls.extend(rooms);
        let replies = self.redis().invoke_all(&calls).await;
        if only_recipients
            && writes
                .iter()
                .any(|w| matches!(w, Write::Direct { cid: Some(_), .. }))
        {
            tracing::error!("SB_TEST_CRASH=between-halves: aborting after the recipients' halves");
            std::process::abort();
        }
        let reply = |i: usize| -> Result<&Value, DbError> {
            match replies.get(i) {
                Some(Ok(v)) => Ok(v),
                Some(Err(e)) => Err(self.db.failed(copy(e))),
                None => Err(DbError::Internal("missing store reply")),
            }
        };
        // Each write's answer, read while the calls (which borrow the
        // messages) are alive: seqs, freshness and servers.
        let answers: Vec<Result<Answer, DbError>> = {
            let stored: Vec<Result<DmsStored<'_>, DbError>> = dms
                .iter()
                .enumerate()
                .map(|(c, call)| {
                    reply(c).and_then(|v| call.parse(v).map_err(|e| self.db.failed(e)))
                })
                .collect();
            let mut servers: HashMap<&str, &[String]> = HashMap::new();
            for s in stored.iter().flatten() {
                for (user, held) in &s.servers {
                    servers.insert(*user, held.as_slice());
                }
            }
            let servers_of = |user: &str| servers.get(user).map(|s| s.to_vec()).unwrap_or_default();
            let op = |(c, o): (usize, usize)| -> Result<OpStored, DbError> {
                match stored.get(c) {
                    Some(Ok(s)) => s
                        .ops
                        .get(o)
                        .copied()
                        .ok_or(DbError::Internal("missing store op reply")),
                    Some(Err(e)) => Err(DbError::Store(StoreError::Unavailable(e.to_string()))),
                    None => Err(DbError::Internal("missing store call")),
                }
            };
            msgs.iter()
                .zip(&at)
                .map(|(msg, place)| match (msg, place) {
                    (Some(msg), Place::Direct { to, from }) => {
                        let t = op(*to)?;
                        let (seq_from, from_fresh) = match (from, t.from_seq) {
                            (Some(f), _) => {
                                let f = op(*f)?;
                                (f.to_seq, f.to_fresh)
                            }
                            (None, Some(seq)) => (seq, t.from_fresh),
                            // A note to self, or (test hook) no sender's half.
                            (None, None) => (t.to_seq, t.to_fresh),
                        };
                        Ok(Answer::Direct {
                            seq_to: t.to_seq,
                            seq_from,
                            to_fresh: t.to_fresh,
                            from_fresh,
                            to_servers: servers_of(&msg.to),
                            from_servers: servers_of(&msg.from),
                        })
                    }
                    (None, Place::Room(r)) => reply(dms.len() + r).map(|_| Answer::Room),
                    _ => Err(DbError::Internal("store batch out of step")),
                })
                .collect()
        };
        drop(dms);
        let mut outcomes: Vec<Result<Outcome, DbError>> = msgs
            .into_iter()
            .zip(answers)
            .map(|(msg, answer)| match (msg, answer?) {
                (
                    Some(msg),
                    Answer::Direct {
                        seq_to,
                        seq_from,
                        to_fresh,
                        from_fresh,
                        to_servers,
                        from_servers,
                    },
                ) => Ok(Outcome::Direct(Stored {
                    msg,
                    seq_to,
                    seq_from,
                    to_servers,
                    from_servers,
                    to_fresh,
                    from_fresh,
                })),
                (None, Answer::Room) => Ok(Outcome::Room),
                _ => Err(DbError::Internal("store batch out of step")),
            })
            .collect();
        // Acknowledged means replicated when the operator asks: one WAIT per
        // Redis node that took a half of this batch.
        let touched: Vec<String> = outcomes
            .iter()
            .filter_map(|o| match o {
                Ok(Outcome::Direct(s)) => Some([keys::inbox(&s.msg.to), keys::inbox(&s.msg.from)]),
                _ => None,
            })
            .flatten()
            .collect();
        if !touched.is_empty()
            && let Err(e) = self.redis().wait_replicas(&touched).await
        {
            let e = self.db.failed(e);
            crate::warn_limited!(error = %e, "direct messages not replicated in time");
            for o in &mut outcomes {
                if matches!(o, Ok(Outcome::Direct(_))) {
                    *o = Err(DbError::Store(StoreError::Unavailable(e.to_string())));
                }
            }
        }
        if self.crash == Some(Crash::AfterStore)
            && writes
                .iter()
                .any(|w| matches!(w, Write::Direct { cid: Some(_), .. }))
        {
            tracing::error!("SB_TEST_CRASH=after-store: aborting before the reply");
            std::process::abort();
        }
        outcomes
    }

    fn room_call(&self, msg: &RoomMsg) -> scripts::Call {
        let key = keys::room(&msg.room);
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&key)
            .arg("MAXLEN")
            .arg("~")
            .arg(self.limits.room_history)
            .arg("*")
            .arg("id")
            .arg(&msg.id)
            .arg("f")
            .arg(&msg.from)
            .arg("ts")
            .arg(msg.ts)
            .arg("x")
            .arg(&msg.text);
        scripts::Call::plain(cmd, &key)
    }

    /// The latest `count` messages of a room's history, oldest first.
    pub async fn room_history(&self, room: &str, count: u64) -> Result<Vec<RoomMsg>, DbError> {
        let mut cmd = redis::cmd("XREVRANGE");
        cmd.arg(keys::room(room))
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(count);
        let range: StreamRangeReply = self
            .redis()
            .query(&cmd)
            .await
            .map_err(|e| self.db.failed(e))?;
        let mut out = Vec::with_capacity(range.ids.len());
        for entry in range.ids.into_iter().rev() {
            let field = |k: &str| entry.map.get(k).and_then(text);
            let (Some(id), Some(from), Some(ts), Some(body)) =
                (field("id"), field("f"), field("ts"), field("x"))
            else {
                return Err(StoreError::Shape("room history entry fields").into());
            };
            out.push(RoomMsg {
                room: room.to_owned(),
                from,
                id,
                ts: ts
                    .parse()
                    .map_err(|_| StoreError::Shape("room history ts"))?,
                text: body,
            });
        }
        Ok(out)
    }

    /// Reads up to `count` messages of `user`'s inbox after `after`.
    pub async fn read_inbox(
        &self,
        user: &str,
        after: u64,
        count: usize,
    ) -> Result<InboxPage, DbError> {
        let mut head = redis::pipe();
        head.cmd("GET")
            .arg(keys::epoch(user))
            .cmd("XREVRANGE")
            .arg(keys::inbox(user))
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1);
        let (epoch, last): (Option<String>, StreamRangeReply) = self
            .redis()
            .query_pipe(&head)
            .await
            .map_err(|e| self.db.failed(e))?;
        let Some(epoch) = epoch else {
            return Ok(InboxPage::default());
        };
        let head = match last.ids.first() {
            Some(e) => seq_of(&e.id)?,
            None => 0,
        };
        let mut range = redis::cmd("XRANGE");
        range.arg(keys::inbox(user));
        if after == 0 {
            range.arg("-");
        } else {
            range.arg(format!("({}", keys::inbox_entry_id(&epoch, after)));
        }
        range.arg("+").arg("COUNT").arg(count);
        let entries: StreamRangeReply = self
            .redis()
            .query(&range)
            .await
            .map_err(|e| self.db.failed(e))?;
        let mut messages = Vec::with_capacity(entries.ids.len());
        for entry in entries.ids {
            let seq = seq_of(&entry.id)?;
            let msg = entry
                .map
                .get(shared::record::FIELD)
                .and_then(text)
                .and_then(|r| shared::record::decode(&r))
                .ok_or(StoreError::Shape("inbox record"))?;
            messages.push((seq, msg));
        }
        Ok(InboxPage {
            messages,
            head,
            epoch,
        })
    }

    /// The first seq still held in `user`'s inbox, if any.
    pub async fn first_seq(&self, user: &str) -> Result<Option<u64>, DbError> {
        let mut cmd = redis::cmd("XRANGE");
        cmd.arg(keys::inbox(user))
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1);
        let range: StreamRangeReply = self
            .redis()
            .query(&cmd)
            .await
            .map_err(|e| self.db.failed(e))?;
        range.ids.first().map(|e| seq_of(&e.id)).transpose()
    }

    /// Advances a device's cursor to `seq` (never backwards).
    pub async fn ack(&self, user: &str, device: &str, seq: u64) -> Result<(), DbError> {
        let ttl = self.limits.inbox_max_age.as_secs();
        self.redis()
            .invoke::<u64>(&scripts::ack(user, device, seq, ttl))
            .await
            .map_err(|e| self.db.failed(e))?;
        Ok(())
    }

    /// A device's cursor (0 when it never acknowledged anything).
    pub async fn cursor(&self, user: &str, device: &str) -> Result<u64, DbError> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(keys::cursor(user, device));
        let v: Option<u64> = self
            .redis()
            .query(&cmd)
            .await
            .map_err(|e| self.db.failed(e))?;
        Ok(v.unwrap_or(0))
    }
}

/// A pipeline's error again, for the one write it failed.
fn copy(e: &redis::RedisError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn seq_of(id: &str) -> Result<u64, DbError> {
    keys::parse_inbox_entry_id(id)
        .map(|(_, seq)| seq)
        .ok_or(StoreError::Shape("inbox entry id").into())
}
