//! Durable messages: inboxes (`sb:inbox:*`), their sequence counters and
//! epochs, device cursors, `cid` de-duplication and room history.
//!
//! A direct message is stored by one script ([`shared::keys::SEND`]) before
//! anyone is told about it; see [`Store::send_cmd`].

use std::time::Duration;

use redis::streams::StreamRangeReply;
use redis::{AsyncCommands, Value};
use shared::keys;
use shared::link::{DirectMsg, RoomMsg};

use crate::db::{Db, DbError, int, servers_of, text};

/// Inbox bounds and record lifetimes.
#[derive(Debug, Clone)]
pub struct StoreLimits {
    pub inbox_max_len: u64,
    pub inbox_max_age: Duration,
    pub cid_ttl: Duration,
    pub room_history: u64,
}

/// What storing a direct message gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The message as stored (id and ts from the first store on a retry).
    pub msg: DirectMsg,
    /// Its seq in the recipient's inbox.
    pub seq_to: u64,
    /// Its seq in the sender's inbox (equal to `seq_to` for a note to self).
    pub seq_from: u64,
    /// Servers with live sessions of the recipient.
    pub to_servers: Vec<String>,
    /// Servers with live sessions of the sender.
    pub from_servers: Vec<String>,
    /// True when this was a retry of a `cid` already stored: nothing is pushed again.
    pub duplicate: bool,
}

/// One page of an inbox.
#[derive(Debug, Clone, Default)]
pub struct InboxPage {
    /// Messages after the asked seq, in order.
    pub messages: Vec<(u64, DirectMsg)>,
    /// The inbox's last seq (0 when it never had a message).
    pub head: u64,
    /// The inbox epoch ("" when it never had a message).
    pub epoch: String,
}

/// Durable storage on top of [`Db`].
#[derive(Clone)]
pub struct Store {
    db: Db,
    limits: StoreLimits,
}

impl Store {
    pub fn new(db: Db, limits: StoreLimits) -> Store {
        Store { db, limits }
    }

    /// The command that stores `msg` in the inboxes of `msg.to` and
    /// `msg.from` (one script, one round trip) and answers where their
    /// sessions are ([`parse_send_reply`]). With a `cid`, a retry answers
    /// with the first store and stores nothing.
    pub fn send_cmd(&self, msg: &DirectMsg, cid: Option<&str>) -> redis::Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.db.scripts.send.get_hash())
            .arg(7)
            .arg(keys::seq(&msg.to))
            .arg(keys::inbox(&msg.to))
            .arg(keys::user(&msg.to))
            .arg(keys::seq(&msg.from))
            .arg(keys::inbox(&msg.from))
            .arg(keys::user(&msg.from))
            .arg(keys::cid(&msg.from, cid.unwrap_or("-")))
            .arg(&msg.id)
            .arg(&msg.from)
            .arg(&msg.to)
            .arg(msg.ts)
            .arg(&msg.text)
            .arg(self.limits.inbox_max_len)
            .arg(self.limits.inbox_max_age.as_millis() as u64)
            .arg(cid.unwrap_or(""))
            .arg(self.limits.cid_ttl.as_secs().max(1))
            .arg(&msg.id);
        cmd
    }

    /// The command that appends a room message to the room's bounded history.
    pub fn room_cmd(&self, msg: &RoomMsg) -> redis::Cmd {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(keys::room(&msg.room))
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
        cmd
    }

    /// The latest `count` messages of a room's history, oldest first.
    pub async fn room_history(&self, room: &str, count: u64) -> Result<Vec<RoomMsg>, DbError> {
        let range: StreamRangeReply = self
            .db
            .conn()
            .xrevrange_count(keys::room(room), "+", "-", count)
            .await
            .map_err(|e| self.db.failed(e))?;
        let mut out = Vec::with_capacity(range.ids.len());
        for entry in range.ids.into_iter().rev() {
            let field = |k: &str| entry.map.get(k).and_then(text);
            let (Some(id), Some(from), Some(ts), Some(body)) =
                (field("id"), field("f"), field("ts"), field("x"))
            else {
                return Err(DbError::Shape("room history entry fields"));
            };
            out.push(RoomMsg {
                room: room.to_owned(),
                from,
                id,
                ts: ts.parse().map_err(|_| DbError::Shape("room history ts"))?,
                text: body,
            });
        }
        Ok(out)
    }

    /// Runs `cmds` as one pipeline (one write, one read: Redis runs them in
    /// this order, back to back) and returns each one's reply. When Redis
    /// has lost its script cache (a restart), the scripts are loaded and the
    /// commands that met `NOSCRIPT`, and so did not run, are run again.
    pub async fn run(&self, cmds: &[redis::Cmd]) -> Vec<Result<Value, DbError>> {
        let mut conn = self.db.conn();
        let mut results = match Self::pipeline(&mut conn, cmds.iter()).await {
            Ok(r) => r,
            Err(e) => {
                let e = self.db.failed(e);
                return cmds
                    .iter()
                    .map(|_| Err(DbError::Unavailable(e.to_string())))
                    .collect();
            }
        };
        let missing: Vec<usize> = results
            .iter()
            .enumerate()
            .filter(|(_, r)| matches!(r, Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)))
            .map(|(i, _)| i)
            .collect();
        if !missing.is_empty() {
            tracing::info!(
                commands = missing.len(),
                "redis lost its scripts; loading them again"
            );
            let retried = match self.db.scripts.send.load_async(&mut conn).await {
                Ok(_) => Self::pipeline(&mut conn, missing.iter().map(|i| &cmds[*i])).await,
                Err(e) => Err(e),
            };
            match retried {
                Ok(again) => {
                    for (i, r) in missing.into_iter().zip(again) {
                        results[i] = r;
                    }
                }
                Err(e) => {
                    for i in missing {
                        results[i] = Err(redis::RedisError::from((
                            redis::ErrorKind::Io,
                            "retry failed",
                            e.to_string(),
                        )));
                    }
                }
            }
        }
        results
            .into_iter()
            .map(|r| r.map_err(|e| self.db.failed(e)))
            .collect()
    }

    async fn pipeline<'a>(
        conn: &mut redis::aio::ConnectionManager,
        cmds: impl Iterator<Item = &'a redis::Cmd>,
    ) -> redis::RedisResult<Vec<redis::RedisResult<Value>>> {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for cmd in cmds {
            pipe.add_command(cmd.clone());
        }
        pipe.query_async(conn).await
    }

    /// Reads up to `count` messages of `user`'s inbox after `after`.
    pub async fn read_inbox(
        &self,
        user: &str,
        after: u64,
        count: usize,
    ) -> Result<InboxPage, DbError> {
        let mut conn = self.db.conn();
        let (range, seq): (StreamRangeReply, std::collections::HashMap<String, Value>) =
            redis::pipe()
                .cmd("XRANGE")
                .arg(keys::inbox(user))
                .arg(format!("({after}-0"))
                .arg("+")
                .arg("COUNT")
                .arg(count)
                .cmd("HGETALL")
                .arg(keys::seq(user))
                .query_async(&mut conn)
                .await
                .map_err(|e| self.db.failed(e))?;
        let mut messages = Vec::with_capacity(range.ids.len());
        for entry in range.ids {
            let seq = entry
                .id
                .split_once('-')
                .and_then(|(s, _)| s.parse::<u64>().ok())
                .ok_or(DbError::Shape("inbox entry id"))?;
            let field = |k: &str| entry.map.get(k).and_then(text);
            let (Some(id), Some(from), Some(to), Some(ts), Some(body)) =
                (field("id"), field("f"), field("t"), field("ts"), field("x"))
            else {
                return Err(DbError::Shape("inbox entry fields"));
            };
            let ts = ts.parse().map_err(|_| DbError::Shape("inbox entry ts"))?;
            messages.push((
                seq,
                DirectMsg {
                    id,
                    from,
                    to,
                    ts,
                    text: body,
                },
            ));
        }
        Ok(InboxPage {
            messages,
            head: seq.get("n").and_then(int).unwrap_or(0),
            epoch: seq.get("ep").and_then(text).unwrap_or_default(),
        })
    }

    /// The first seq still held in `user`'s inbox, if any.
    pub async fn first_seq(&self, user: &str) -> Result<Option<u64>, DbError> {
        let range: StreamRangeReply = self
            .db
            .conn()
            .xrange_count(keys::inbox(user), "-", "+", 1)
            .await
            .map_err(|e| self.db.failed(e))?;
        Ok(range
            .ids
            .first()
            .and_then(|e| e.id.split_once('-'))
            .and_then(|(s, _)| s.parse().ok()))
    }

    /// Advances a device's cursor to `seq` (never backwards).
    pub async fn ack(&self, user: &str, device: &str, seq: u64) -> Result<(), DbError> {
        self.db
            .scripts
            .ack
            .key(keys::cursor(user, device))
            .arg(seq)
            .arg(self.limits.inbox_max_age.as_secs().max(1))
            .invoke_async::<u64>(&mut self.db.conn())
            .await
            .map_err(|e| self.db.failed(e))?;
        Ok(())
    }

    /// A device's cursor (0 when it never acknowledged anything).
    pub async fn cursor(&self, user: &str, device: &str) -> Result<u64, DbError> {
        let v: Option<u64> = self
            .db
            .conn()
            .get(keys::cursor(user, device))
            .await
            .map_err(|e| self.db.failed(e))?;
        Ok(v.unwrap_or(0))
    }
}

/// Reads the `send.lua` reply.
pub fn parse_send_reply(mut msg: DirectMsg, reply: &[Value]) -> Result<Stored, DbError> {
    let flag = reply
        .first()
        .and_then(int)
        .ok_or(DbError::Shape("send flag"))?;
    if flag == 1 {
        // A retry: "id seq-to seq-from ts" of the first store.
        let prev = reply
            .get(1)
            .and_then(text)
            .ok_or(DbError::Shape("send dup record"))?;
        let mut parts = prev.split(' ');
        let (Some(id), Some(seq_to), Some(seq_from), Some(ts)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(DbError::Shape("send dup record fields"));
        };
        let num = |s: &str| {
            s.parse::<u64>()
                .map_err(|_| DbError::Shape("send dup number"))
        };
        msg.id = id.to_owned();
        msg.ts = num(ts)?;
        return Ok(Stored {
            msg,
            seq_to: num(seq_to)?,
            seq_from: num(seq_from)?,
            to_servers: Vec::new(),
            from_servers: Vec::new(),
            duplicate: true,
        });
    }
    let seq_to = reply
        .get(2)
        .and_then(int)
        .ok_or(DbError::Shape("send seq-to"))?;
    let seq_from = reply
        .get(3)
        .and_then(int)
        .ok_or(DbError::Shape("send seq-from"))?;
    let to_servers = reply.get(5).map(servers_of).unwrap_or_default();
    let from_servers = reply.get(6).map(servers_of).unwrap_or_default();
    Ok(Stored {
        msg,
        seq_to,
        seq_from,
        to_servers,
        from_servers,
        duplicate: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn msg() -> DirectMsg {
        DirectMsg {
            id: "new".into(),
            from: "a".into(),
            to: "b".into(),
            ts: 9,
            text: "t".into(),
        }
    }

    #[test]
    fn a_stored_reply_names_the_servers() {
        let reply = vec![
            Value::Int(0),
            bulk("new"),
            Value::Int(4),
            Value::Int(7),
            bulk("9"),
            Value::Array(vec![bulk("s1"), bulk("x:1")]),
            Value::Array(vec![]),
        ];
        let s = parse_send_reply(msg(), &reply).expect("parses");
        assert_eq!((s.seq_to, s.seq_from, s.duplicate), (4, 7, false));
        assert_eq!(s.to_servers, vec!["x".to_owned()]);
    }

    #[test]
    fn a_duplicate_reply_gives_the_first_answer() {
        let reply = vec![Value::Int(1), bulk("old 3 5 1234")];
        let s = parse_send_reply(msg(), &reply).expect("parses");
        assert_eq!(
            (s.msg.id.as_str(), s.seq_to, s.seq_from, s.msg.ts),
            ("old", 3, 5, 1234)
        );
        assert!(s.duplicate);
    }

    #[test]
    fn malformed_replies_are_errors() {
        assert!(parse_send_reply(msg(), &[]).is_err());
        assert!(parse_send_reply(msg(), &[Value::Int(1), bulk("old 3")]).is_err());
        assert!(parse_send_reply(msg(), &[Value::Int(0), bulk("x")]).is_err());
    }
}
