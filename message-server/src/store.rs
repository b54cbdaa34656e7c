//! Durable messages: inboxes, their epochs, device cursors, room history.
//!
//! Callers speak the domain: [`Store::store_batch`] takes [`Write`]s and
//! answers one [`Outcome`] each; Redis commands, key names, script
//! arguments and reply parsing stay here and in [`redis_store`].
//!
//! A direct message is stored as two halves, one per user (the recipient's
//! inbox and the sender's; one for a note to self), each one script in its
//! user's slot ([`shared::keys::STORE_HALF`]), sent at the same time. The
//! sender hears `OK SENT` only after both are stored (and, with
//! `--redis-replica-acks N`, held by N replicas). A send with a `cid` gets
//! a message id derived from sender and cid ([`shared::ids::cid_message_id`]),
//! and each half stores a given id once: a retry of the same cid, on any
//! server, completes whichever half is missing and answers with the first
//! seq.
//!
//! Test hooks: `SB_TEST_CRASH=between-halves` makes the server abort after
//! the recipient's half of the first direct message with a cid is stored and
//! before the sender's; `SB_TEST_CRASH=after-store` after both halves and
//! before the reply. Test-only; inert when the variable is not set.

use std::time::Duration;

use redis::Value;
use redis::streams::StreamRangeReply;
use redis_store::scripts::{self, Half};
use redis_store::{Redis, StoreError, sessions, text};
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

/// One half's answer.
struct HalfStored {
    seq: u64,
    fresh: bool,
    servers: Vec<String>,
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

    /// Stores every write and answers one outcome each, in order. Every
    /// half and room append goes out at once, one pipeline per slot in the
    /// order given (so each inbox gets its seqs in job order).
    pub async fn store_batch(&self, writes: &[Write<'_>]) -> Vec<Result<Outcome, DbError>> {
        let now = now_ms();
        let max_age_ms = u64::try_from(self.limits.inbox_max_age.as_millis()).unwrap_or(u64::MAX);
        let cid_ttl = self.limits.cid_ttl.as_secs().max(1);
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
        let mut calls = Vec::new();
        // For each write, where its replies sit in `calls`: (to, from) halves
        // of a direct message, or the room append.
        let mut at: Vec<(usize, Option<usize>)> = Vec::with_capacity(writes.len());
        for (i, w) in writes.iter().enumerate() {
            match (w, &msgs[i], &records[i]) {
                (Write::Direct { cid, .. }, Some(msg), Some(record)) => {
                    let half = |user: &str| {
                        scripts::store_half(&Half {
                            user,
                            msg_id: &msg.id,
                            record,
                            max_len: self.limits.inbox_max_len,
                            max_age_ms,
                            cutoff_ms: now.saturating_sub(max_age_ms),
                            dedup_ttl_s: if cid.is_some() { cid_ttl } else { 0 },
                        })
                    };
                    calls.push(half(&msg.to));
                    calls.push(scripts::sessions_of(&msg.to));
                    let to = calls.len() - 2;
                    let from = if msg.from == msg.to || self.crash == Some(Crash::BetweenHalves) {
                        None
                    } else {
                        calls.push(half(&msg.from));
                        calls.push(scripts::sessions_of(&msg.from));
                        Some(calls.len() - 2)
                    };
                    at.push((to, from));
                }
                (Write::Room(msg), _, _) => {
                    calls.push(self.room_call(msg));
                    at.push((calls.len() - 1, None));
                }
                _ => at.push((usize::MAX, None)),
            }
        }
        let replies = self.redis().invoke_all(&calls).await;
        if self.crash == Some(Crash::BetweenHalves)
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
        // A half's reply at `i`, its user's sessions at `i + 1`.
        let half = |i: usize| -> Result<HalfStored, DbError> {
            match (reply(i)?, reply(i + 1)?) {
                (Value::Array(items), sessions) => {
                    parse_half_reply(items, sessions).map_err(|e| self.db.failed(e))
                }
                _ => Err(self.db.failed(StoreError::Shape("half reply"))),
            }
        };
        let mut outcomes: Vec<Result<Outcome, DbError>> = Vec::with_capacity(writes.len());
        for (i, msg) in msgs.into_iter().enumerate() {
            let (to_at, from_at) = at[i];
            let Some(msg) = msg else {
                outcomes.push(reply(to_at).map(|_| Outcome::Room));
                continue;
            };
            let stored = half(to_at).and_then(|to| {
                let from = match from_at {
                    Some(f) => half(f)?,
                    None => HalfStored {
                        seq: to.seq,
                        fresh: to.fresh,
                        servers: to.servers.clone(),
                    },
                };
                Ok(Stored {
                    msg,
                    seq_to: to.seq,
                    seq_from: from.seq,
                    to_servers: to.servers,
                    from_servers: from.servers,
                    to_fresh: to.fresh,
                    from_fresh: from.fresh,
                })
            });
            outcomes.push(stored.map(Outcome::Direct));
        }
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
            tracing::warn!(error = %e, "direct messages not replicated in time");
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

/// Reads a [`shared::keys::STORE_HALF`] reply (`{stream-id, dup}`) and the
/// `HGETALL` of the user's sessions that followed it.
fn parse_half_reply(reply: &[Value], sessions: &Value) -> Result<HalfStored, StoreError> {
    let id = reply
        .first()
        .and_then(text)
        .ok_or(StoreError::Shape("half stream id"))?;
    let (_, seq) = keys::parse_inbox_entry_id(&id).ok_or(StoreError::Shape("half stream id"))?;
    let dup = reply
        .get(1)
        .and_then(redis_store::int)
        .ok_or(StoreError::Shape("half duplicate flag"))?;
    let servers = sessions::servers_of(sessions);
    Ok(HalfStored {
        seq,
        fresh: dup == 0,
        servers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn a_half_reply_gives_seq_and_servers() {
        let reply = vec![bulk("1700-3"), Value::Int(0)];
        let sessions = Value::Array(vec![bulk("s1"), bulk("x:1")]);
        let h = parse_half_reply(&reply, &sessions).expect("parses");
        assert_eq!((h.seq, h.fresh), (4, true));
        assert_eq!(h.servers, vec!["x".to_owned()]);
        let dup = parse_half_reply(&[bulk("1700-0"), Value::Int(1)], &Value::Array(vec![]))
            .expect("parses");
        assert_eq!((dup.seq, dup.fresh), (1, false));
    }

    #[test]
    fn malformed_half_replies_are_errors() {
        let none = Value::Nil;
        assert!(parse_half_reply(&[], &none).is_err());
        assert!(parse_half_reply(&[bulk("nodash"), Value::Int(0)], &none).is_err());
        assert!(parse_half_reply(&[bulk("1-0")], &none).is_err());
    }
}
