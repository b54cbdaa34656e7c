//! Who is connected where: a user's sessions (`sb:{u:<user>}:sess`, read
//! when routing) and a server's index of them (`sb:{s:<id>}:sess`, walked by
//! the purge). Two slots, so two calls: the index is written first and
//! removed last, so a purge always finds every session a dead server may
//! have left.

use std::collections::HashMap;

use redis::Value;
use shared::ids::{SessionId, session_location};
use shared::keys;

use crate::{Redis, StoreError, scripts};

/// One server's life (id and epoch), as its sessions are recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Life {
    pub server: String,
    pub epoch: u64,
    /// `server:epoch`, what the user's hash holds.
    pub location: String,
}

impl Life {
    pub fn new(server: &str, epoch: u64) -> Life {
        Life {
            server: server.to_owned(),
            epoch,
            location: session_location(server, epoch),
        }
    }

    fn index_value(&self, user: &str) -> String {
        format!("{} {user}", self.epoch)
    }
}

/// Records a session of `user` here. `Ok(false)` when the user holds
/// `max` sessions already across the cluster (0: no limit): nothing is
/// recorded then.
pub async fn add(
    redis: &Redis,
    life: &Life,
    user: &str,
    session: SessionId,
    max: u64,
) -> Result<bool, StoreError> {
    let session = session.to_string();
    if record(redis, life, user, &session, max).await? {
        return Ok(true);
    }
    let mut unindex = redis::cmd("HDEL");
    unindex
        .arg(keys::server_sessions(&life.server))
        .arg(&session);
    redis.query::<Value>(&unindex).await?;
    Ok(false)
}

/// The server's index entry, then the user's (unless past `max`).
async fn record(
    redis: &Redis,
    life: &Life,
    user: &str,
    session: &str,
    max: u64,
) -> Result<bool, StoreError> {
    let mut index = redis::cmd("HSET");
    index
        .arg(keys::server_sessions(&life.server))
        .arg(session)
        .arg(life.index_value(user));
    redis.query::<Value>(&index).await?;
    let added: i64 = redis
        .invoke(&scripts::session_add(user, session, &life.location, max))
        .await?;
    Ok(added == 1)
}

/// Removes a session, only if the user's entry is still this life's.
pub async fn remove(
    redis: &Redis,
    life: &Life,
    user: &str,
    session: SessionId,
) -> Result<bool, StoreError> {
    let session = session.to_string();
    let removed: i64 = redis
        .invoke(&scripts::session_del(user, &session, &life.location))
        .await?;
    let mut unindex = redis::cmd("HDEL");
    unindex
        .arg(keys::server_sessions(&life.server))
        .arg(&session);
    redis.query::<Value>(&unindex).await?;
    Ok(removed == 1)
}

/// Writes live sessions again (Redis lost them), ignoring the per-user cap
/// (they are live already). Concurrent calls, one slot each.
pub async fn reassert(
    redis: &Redis,
    life: &Life,
    sessions: &[(String, SessionId)],
) -> Result<(), StoreError> {
    for chunk in sessions.chunks(256) {
        let calls = chunk.iter().map(|(user, session)| async move {
            record(redis, life, user, &session.to_string(), 0).await
        });
        for r in futures_util::future::join_all(calls).await {
            r?;
        }
    }
    Ok(())
}

/// Live sessions of `user` across the cluster.
pub async fn count(redis: &Redis, user: &str) -> Result<u64, StoreError> {
    let mut cmd = redis::cmd("HLEN");
    cmd.arg(keys::user_sessions(user));
    Ok(redis.query(&cmd).await?)
}

/// The distinct servers holding live sessions of `user` (read only).
pub async fn servers(redis: &Redis, user: &str) -> Result<Vec<String>, StoreError> {
    let mut cmd = redis::cmd("HGETALL");
    cmd.arg(keys::user_sessions(user));
    let held: Value = redis.query(&cmd).await?;
    Ok(servers_of(&held))
}

/// The distinct servers in a user's session hash (`session -> server:epoch`
/// pairs, as `HGETALL` answers), entries that do not parse skipped.
pub fn servers_of(v: &Value) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let pairs: Vec<(&Value, &Value)> = match v {
        Value::Array(items) => items
            .chunks(2)
            .filter_map(|c| Some((c.first()?, c.get(1)?)))
            .collect(),
        Value::Map(items) => items.iter().map(|(k, v)| (k, v)).collect(),
        _ => return out,
    };
    for (_, loc) in pairs {
        let Some(loc) = crate::text(loc) else {
            continue;
        };
        if let Some((server, _)) = shared::ids::parse_location(&loc)
            && !out.iter().any(|s| s == server)
        {
            out.push(server.to_owned());
        }
    }
    out
}

/// A server's session index: `session -> (epoch, user)`; entries that do
/// not parse are returned as `None` (the purge drops them).
pub(crate) async fn index(
    redis: &Redis,
    server: &str,
) -> Result<Vec<(String, Option<(u64, String)>)>, StoreError> {
    let mut cmd = redis::cmd("HGETALL");
    cmd.arg(keys::server_sessions(server));
    let entries: HashMap<String, String> = redis.query(&cmd).await?;
    Ok(entries
        .into_iter()
        .map(|(session, held)| {
            let parsed = held
                .split_once(' ')
                .and_then(|(e, u)| Some((e.parse().ok()?, u.to_owned())));
            (session, parsed)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn servers_are_read_from_session_hashes() {
        let v = Value::Array(vec![
            bulk("s1"),
            bulk("a:1"),
            bulk("s2"),
            bulk("b:7"),
            bulk("s3"),
            bulk("a:1"),
            bulk("s4"),
            bulk("garbage"),
        ]);
        assert_eq!(servers_of(&v), vec!["a".to_owned(), "b".to_owned()]);
        assert!(servers_of(&Value::Nil).is_empty());
    }
}
