//! Redis key names and the Lua scripts that change them.
//!
//! Every key lives under [`PREFIX`]. The layout (DESIGN.md, "Redis data model"):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `sb:servers` | set | ids of registered servers |
//! | `sb:srv:{id}` | hash, TTL | `epoch ws tcp conns cap seen` of one server |
//! | `sb:user:{user}` | hash | `session-id -> server-id:epoch`, every live device |
//! | `sb:srvsess:{id}` | hash | `session-id -> "epoch user"`, so a purge is one script |
//! | `sb:seq:{user}` | hash | `n` (last inbox seq) and `ep` (inbox epoch) |
//! | `sb:inbox:{user}` | stream, TTL | messages, stream id `<seq>-0` |
//! | `sb:cur:{user}:{device}` | string, TTL | the device's ACK cursor |
//! | `sb:cid:{user}:{cid}` | string, TTL | `"msg-id seq-to seq-from ts"` of a stored send |
//! | `sb:room:{room}` | stream | bounded room history |
//!
//! Scripts take their keys in `KEYS` except where they must find them in
//! data ([`PURGE_SERVER`] walks `sb:srvsess:{id}` to the user hashes), which
//! is fine on one Redis and would need hash tags on a cluster.

/// The prefix of every key.
pub const PREFIX: &str = "sb:";

/// Set of registered server ids.
pub const SERVERS: &str = "sb:servers";

/// Registry hash of one server.
pub fn server(id: &str) -> String {
    format!("sb:srv:{id}")
}

/// Sessions of one user: `session-id -> server-id:epoch`.
pub fn user(user: &str) -> String {
    format!("sb:user:{user}")
}

/// Sessions held by one server: `session-id -> "epoch user"`.
pub fn server_sessions(id: &str) -> String {
    format!("sb:srvsess:{id}")
}

/// Inbox sequence counter and epoch of one user.
pub fn seq(user: &str) -> String {
    format!("sb:seq:{user}")
}

/// Inbox stream of one user.
pub fn inbox(user: &str) -> String {
    format!("sb:inbox:{user}")
}

/// ACK cursor of one device of one user.
pub fn cursor(user: &str, device: &str) -> String {
    format!("sb:cur:{user}:{device}")
}

/// De-duplication record of one client message id of one sender.
pub fn cid(user: &str, cid: &str) -> String {
    format!("sb:cid:{user}:{cid}")
}

/// History stream of one room.
pub fn room(room: &str) -> String {
    format!("sb:room:{room}")
}

/// Adds a session: `KEYS = [user, srvsess]`, `ARGV = [session, location, epoch, user]`.
pub const SESSION_ADD: &str = include_str!("lua/session_add.lua");

/// Removes a session if it is still the one this server/epoch wrote
/// (compare-and-delete): `KEYS = [user, srvsess]`, `ARGV = [session, location]`.
pub const SESSION_DEL: &str = include_str!("lua/session_del.lua");

/// Removes what a server left: every session of one epoch (`mode = "epoch"`,
/// the relay purging a dead server), of every epoch but one (`mode =
/// "others"`, a server starting with a new epoch), or of every epoch once its
/// registry entry has expired (`mode = "gone"`, the relay's sweep; -1 when
/// the entry exists after all).
/// `KEYS = [srvsess, srv, servers]`, `ARGV = [server-id, epoch, mode]`.
/// Returns the number of sessions removed. Idempotent.
pub const PURGE_SERVER: &str = include_str!("lua/purge_server.lua");

/// Refreshes a server's registry entry. Returns 0 when the entry was missing
/// (first start, or Redis lost it), which tells the server to write its live
/// sessions again. `KEYS = [srv, servers]`,
/// `ARGV = [id, epoch, ws, tcp, conns, cap, now-ms, ttl-s]`.
pub const REGISTER: &str = include_str!("lua/register.lua");

/// Stores a direct message in both inboxes and returns where to push it.
/// See the script's header for its keys and arguments.
pub const SEND: &str = include_str!("lua/send.lua");

/// Advances a device cursor, never backwards: `KEYS = [cursor]`, `ARGV = [seq, ttl-s]`.
pub const ACK: &str = include_str!("lua/ack.lua");
