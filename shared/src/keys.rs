//! Redis key names and the Lua scripts that change them.
//!
//! Every key lives under [`PREFIX`] and, except the one set of server ids,
//! under a hash tag naming its owner, so that everything one script or one
//! transaction touches sits in one Redis Cluster slot:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `sb:servers` | set | ids of registered servers (its own slot, single-key commands only) |
//! | `sb:{s:<id>}:srv` | hash, TTL | `epoch ws tcp conns cap seen` of one server ([`crate::registry`]) |
//! | `sb:{s:<id>}:links` | hash, TTL | `relay-instance -> "epoch until-ms"`: relays holding a live link to the server |
//! | `sb:{s:<id>}:sess` | hash | `session-id -> "epoch user"`: the sessions a purge walks |
//! | `sb:{u:<user>}:sess` | hash | `session-id -> server-id:epoch`, every live device |
//! | `sb:{u:<user>}:where` | string | the hash's values joined by spaces (absent with no session), read by the store's `MGET` |
//! | `sb:{u:<user>}:ep` | string | the inbox epoch (unix ms of the inbox's start) |
//! | `sb:{u:<user>}:inbox` | stream, TTL | one field `m` per message ([`crate::record`]), id `<epoch>-<seq - 1>` |
//! | `sb:{u:<user>}:kept` | string, TTL | present while the inbox's and epoch's TTLs are fresh (refreshed only when it is gone) |
//! | `sb:{u:<user>}:cur:<device>` | string, TTL | the device's ACK cursor |
//! | `sb:{u:<user>}:dm:<msg-id>` | string, TTL | the ids a message sent with a `cid` got: `<to-id> <from-id>` under the recipient when both halves were stored in one call, `<id>` under each user when stored as halves (Redis Cluster) |
//! | `sb:{r:<room>}:hist` | stream | bounded room history |
//!
//! The inbox's sequence numbers need no counter key: `XADD <epoch>-*` makes
//! Redis number the entries `<epoch>-0`, `<epoch>-1`, ... so entry
//! `<epoch>-k` is seq `k + 1`, dense per inbox.

/// The prefix of every key.
pub const PREFIX: &str = "sb:";

/// Set of registered server ids.
pub const SERVERS: &str = "sb:servers";

/// The hash tag of one user's keys.
pub fn user_tag(user: &str) -> String {
    format!("sb:{{u:{user}}}")
}

/// Registry hash of one server.
pub fn server(id: &str) -> String {
    format!("sb:{{s:{id}}}:srv")
}

/// Relays holding a live link to one server: `relay-instance -> "epoch until-ms"`.
pub fn server_links(id: &str) -> String {
    format!("sb:{{s:{id}}}:links")
}

/// Sessions held by one server: `session-id -> "epoch user"`.
pub fn server_sessions(id: &str) -> String {
    format!("sb:{{s:{id}}}:sess")
}

/// Sessions of one user: `session-id -> server-id:epoch`.
pub fn user_sessions(user: &str) -> String {
    format!("sb:{{u:{user}}}:sess")
}

/// Where one user's sessions are: their `server:epoch` locations joined by
/// spaces, written with every change of [`user_sessions`] (by
/// [`SESSION_ADD`] and [`SESSION_DEL`]) so that storing a message reads it
/// with the same `MGET` as the inbox epoch.
pub fn user_servers(user: &str) -> String {
    format!("sb:{{u:{user}}}:where")
}

/// Inbox epoch of one user.
pub fn epoch(user: &str) -> String {
    format!("sb:{{u:{user}}}:ep")
}

/// Inbox stream of one user.
pub fn inbox(user: &str) -> String {
    format!("sb:{{u:{user}}}:inbox")
}

/// ACK cursor of one device of one user.
pub fn cursor(user: &str, device: &str) -> String {
    format!("sb:{{u:{user}}}:cur:{device}")
}

/// The record that makes one half of a message idempotent: the id the
/// message got in `user`'s inbox.
pub fn stored_half(user: &str, msg_id: &str) -> String {
    format!("sb:{{u:{user}}}:dm:{msg_id}")
}

/// Present while one user's inbox TTLs are fresh: the store refreshes
/// them only when this key is gone (`SET PX` a tenth of the max age).
pub fn kept(user: &str) -> String {
    format!("sb:{{u:{user}}}:kept")
}

/// History stream of one room.
pub fn room(room: &str) -> String {
    format!("sb:{{r:{room}}}:hist")
}

/// The stream id of seq `seq` (1-based) in an inbox of epoch `epoch`.
pub fn inbox_entry_id(epoch: &str, seq: u64) -> String {
    format!("{epoch}-{}", seq.saturating_sub(1))
}

/// The seq of an inbox stream id `<epoch>-<k>`: `k + 1`, and the epoch.
pub fn parse_inbox_entry_id(id: &str) -> Option<(&str, u64)> {
    let (epoch, k) = id.split_once('-')?;
    let k: u64 = k.parse().ok()?;
    Some((epoch, k.checked_add(1)?))
}

/// Adds a session of one user, unless the user already holds the most
/// sessions allowed. `KEYS = [user-sessions, user-servers]`,
/// `ARGV = [session, "server:epoch", max (0: no limit)]`; returns 1, or 0
/// when refused.
pub const SESSION_ADD: &str = include_str!("lua/session_add.lua");

/// Removes a session of one user if it is still the one this server/epoch
/// wrote (compare-and-delete): `KEYS = [user-sessions, user-servers]`,
/// `ARGV = [session, "server:epoch"]`; returns 1 if removed.
pub const SESSION_DEL: &str = include_str!("lua/session_del.lua");

/// Writes a server's registry hash with a TTL; returns 1 if it existed.
/// `KEYS = [srv]`, `ARGV = [epoch, ws, tcp, conns, cap, now-ms, ttl-s]`.
pub const REGISTER: &str = include_str!("lua/register.lua");

/// Deletes a server's registry hash if it still names `epoch`
/// (compare-and-delete): `KEYS = [srv]`, `ARGV = [epoch]`; returns 1 if deleted.
pub const UNREGISTER: &str = include_str!("lua/unregister.lua");

/// Stores a batch of direct messages (whole messages on one Redis, one
/// user's halves per call in a cluster), idempotent by message id when
/// asked, and reads the sessions of every user it touched; see the
/// script's header.
pub const STORE_DMS: &str = include_str!("lua/store_dms.lua");

/// Advances a device cursor, never backwards: `KEYS = [cursor]`, `ARGV = [seq, ttl-s]`.
pub const ACK: &str = include_str!("lua/ack.lua");

#[cfg(test)]
mod tests {
    use super::*;

    /// The hash tag Redis Cluster hashes: the part between the first `{`
    /// and the next `}`.
    fn tag(key: &str) -> &str {
        let open = key.find('{').expect("has a tag");
        let close = key[open..].find('}').expect("closed") + open;
        &key[open + 1..close]
    }

    #[test]
    fn every_key_of_a_user_shares_one_tag() {
        let keys = [
            user_sessions("alice"),
            user_servers("alice"),
            epoch("alice"),
            inbox("alice"),
            cursor("alice", "phone"),
            stored_half("alice", "m-1"),
            kept("alice"),
        ];
        assert!(keys.iter().all(|k| tag(k) == "u:alice"), "{keys:?}");
        assert!(keys.iter().all(|k| k.starts_with(PREFIX)));
        assert_eq!(tag(&server("a")), tag(&server_sessions("a")));
        assert_eq!(tag(&room("lobby")), "r:lobby");
        assert_ne!(tag(&user_sessions("bob")), tag(&user_sessions("alice")));
    }

    #[test]
    fn inbox_ids_map_to_dense_seqs() {
        assert_eq!(inbox_entry_id("1700", 1), "1700-0");
        assert_eq!(parse_inbox_entry_id("1700-0"), Some(("1700", 1)));
        assert_eq!(parse_inbox_entry_id("1700-41"), Some(("1700", 42)));
        assert_eq!(parse_inbox_entry_id("1700"), None);
        assert_eq!(parse_inbox_entry_id("1700-x"), None);
    }
}
