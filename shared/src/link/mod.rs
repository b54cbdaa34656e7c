//! Frames on the persistent link between a message server and a relay.
//!
//! A link opens with a handshake:
//!
//! ```text
//! relay  -> server   Challenge { version, nonce }
//! server -> relay    Hello { version, server_id, epoch, addrs, auth }
//! relay  -> server   Welcome { relay_id }   or   Refused { reason } and close
//! ```
//!
//! `auth` is `HMAC-SHA256(secret, nonce | server_id | epoch)` ([`auth_tag`]),
//! so the shared secret never crosses the wire and a recorded `Hello` cannot
//! be replayed against another challenge. Without a configured secret both
//! sides use the empty key, which only a relay without a secret accepts.
//!
//! After the handshake either side may send any frame; both send [`Frame::Ping`]
//! every heartbeat interval and answer with [`Frame::Pong`]. [`Frame::Bye`]
//! says "I am leaving on purpose": the relay then purges nothing more for that
//! server (the server cleaned up itself). [`Frame::Presence`] says "this user
//! just logged in here": every other server drops its cached idea of where
//! that user is.
//!
//! Both ends drive the same I/O-free core: [`handshake`] (the relay's
//! [`handshake::Challenger`], the server's [`handshake::Joiner`]) and
//! [`liveness`] (heartbeats, silence and stalled writes). [`missed`] is
//! the book of pushes a full queue dropped, from which either end sends
//! [`Frame::CatchUp`].

pub mod handshake;
pub mod liveness;
pub mod missed;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::ids::SessionId;

/// The link protocol version this build speaks. A peer with another version
/// is refused with a logged reason, so relays and servers are upgraded
/// together.
///
/// 2: [`Frame::CatchUp`] (catch-up after pushes dropped at a full queue) and
/// [`Frame::Presence`] (presence-cache invalidation) were added.
pub const LINK_VERSION: u16 = 2;

/// Bytes in a challenge nonce.
pub const NONCE_LEN: usize = 32;

/// A direct message as stored in an inbox and pushed to devices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectMsg {
    /// Cluster-unique message id, made by the sender's server.
    pub id: String,
    /// Sending user.
    pub from: String,
    /// Receiving user.
    pub to: String,
    /// Unix time of storing, in milliseconds.
    pub ts: u64,
    /// The message text (UTF-8; may hold any character but NUL).
    pub text: String,
}

/// A message published to a room, or broadcast to everyone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomMsg {
    /// Room name; [`BROADCAST_ROOM`] for a broadcast to everyone.
    pub room: String,
    /// Publishing user.
    pub from: String,
    /// Cluster-unique message id.
    pub id: String,
    /// Unix time of publishing, in milliseconds.
    pub ts: u64,
    /// The message text.
    pub text: String,
}

/// The room name a broadcast to everyone uses (not a valid room name, so no
/// client can `JOIN` it).
pub const BROADCAST_ROOM: &str = "*";

/// The user name a [`Frame::Presence`] carries to mean "every user" (not a
/// valid user name): sent by a server whose relay link just came up, since
/// its users' logins while it was cut off announced nothing.
pub const EVERY_USER: &str = "*";

/// The addresses a server serves clients on, as it reports them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerAddrs {
    /// WebSocket/HTTP listener, e.g. `127.0.0.1:9001`.
    pub ws: String,
    /// Plain-TCP line listener, e.g. `127.0.0.1:9101`.
    pub tcp: String,
}

/// Everything that crosses a link. Encoded with `postcard` inside a
/// length-delimited frame ([`crate::codec::LinkCodec`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame {
    /// relay -> server, the first frame of every link.
    Challenge {
        /// The relay's [`LINK_VERSION`].
        version: u16,
        /// Fresh random bytes the server must sign.
        nonce: [u8; NONCE_LEN],
    },
    /// server -> relay, the answer to [`Frame::Challenge`].
    Hello {
        /// The server's [`LINK_VERSION`].
        version: u16,
        /// The server's id (`--id`).
        server_id: String,
        /// The server's epoch: new at every start, so a restarted server is
        /// told apart from its previous life.
        epoch: u64,
        /// Where the server listens for clients.
        addrs: ServerAddrs,
        /// [`auth_tag`] over the challenge.
        auth: Vec<u8>,
    },
    /// relay -> server: the link is up.
    Welcome {
        /// The relay's name, for logs.
        relay_id: String,
    },
    /// relay -> server: the handshake failed; the relay closes the link.
    Refused {
        /// Why, in a sentence.
        reason: String,
    },
    /// A direct message for the sessions of `user` on `to_server`.
    ///
    /// One frame per target server and user, however many sessions the user
    /// has there.
    Deliver {
        /// The server that holds the sessions.
        to_server: String,
        /// Whose sessions get it (the recipient, or the sender's other devices).
        user: String,
        /// The message's sequence number in `user`'s inbox.
        seq: u64,
        /// A session that must not get it (the sending device).
        except: Option<SessionId>,
        /// The message.
        msg: DirectMsg,
    },
    /// server -> relay: this server has (`on`) or no longer has members of `room`.
    Interest {
        /// The room.
        room: String,
        /// Whether the server has members now.
        on: bool,
    },
    /// A room message (or a broadcast, room [`BROADCAST_ROOM`]). From a server
    /// to the relay, then from the relay to every other server with members.
    Room {
        /// The message.
        msg: RoomMsg,
    },
    /// Heartbeat; the peer answers [`Frame::Pong`] with the same value.
    Ping(u64),
    /// Heartbeat answer.
    Pong(u64),
    /// The sender is shutting down on purpose.
    Bye,
    /// A transient direct message (`TELL`) for the sessions of `user` on
    /// `to_server`: never stored, forwarded like [`Frame::Deliver`], dropped
    /// wherever it cannot go. Last, so the frames before it keep their
    /// encoding.
    Tell {
        /// The server that holds the sessions.
        to_server: String,
        /// Whose sessions get it (the recipient, or the sender's other devices).
        user: String,
        /// A session that must not get it (the sending device).
        except: Option<SessionId>,
        /// The message (`id` and `ts` as made by the sender's server).
        msg: DirectMsg,
    },
    /// Pushes of stored messages to `users` on `to_server` were dropped at a
    /// full queue (see [`missed`]): that server brings those users' live
    /// sessions up to their inbox heads. Sent by a server (through a relay,
    /// which routes it like [`Frame::Deliver`]) or by a relay itself, once
    /// the queue that dropped has drained. After the frames of version 1,
    /// so those keep their encoding (link version 2).
    CatchUp {
        /// The server that holds the sessions; [`missed::ALL_SERVERS`]
        /// (`*`): every server linked to the relay but the sender.
        to_server: String,
        /// Whose sessions catch up; empty: every live session there.
        users: Vec<String>,
    },
    /// `user` just got their first session on the sending server. From that
    /// server to the relay, then from the relay to every other linked
    /// server, which forgets what its presence cache held for `user` (the
    /// cache would otherwise keep sending that user's `TELL`s only where
    /// they were before). Last, so the frames before it keep their encoding
    /// (link version 2).
    Presence {
        /// The user who logged in, or [`EVERY_USER`].
        user: String,
    },
}

impl Frame {
    /// A short name for logs and metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Frame::Challenge { .. } => "challenge",
            Frame::Hello { .. } => "hello",
            Frame::Welcome { .. } => "welcome",
            Frame::Refused { .. } => "refused",
            Frame::Deliver { .. } => "deliver",
            Frame::Tell { .. } => "tell",
            Frame::Interest { .. } => "interest",
            Frame::Room { .. } => "room",
            Frame::Ping(_) => "ping",
            Frame::Pong(_) => "pong",
            Frame::Bye => "bye",
            Frame::CatchUp { .. } => "catch_up",
            Frame::Presence { .. } => "presence",
        }
    }

    /// The server a routed frame is for (`Deliver`, `Tell`, `CatchUp`).
    pub fn to_server(&self) -> Option<&str> {
        match self {
            Frame::Deliver { to_server, .. }
            | Frame::Tell { to_server, .. }
            | Frame::CatchUp { to_server, .. } => Some(to_server),
            _ => None,
        }
    }
}

type HmacSha256 = Hmac<Sha256>;

fn auth_mac(secret: &[u8], nonce: &[u8; NONCE_LEN], server_id: &str, epoch: u64) -> HmacSha256 {
    // `new_from_slice` accepts keys of any length for HMAC, the empty one too.
    let mut mac = match HmacSha256::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    };
    mac.update(b"switchboard-link-v1\0");
    mac.update(nonce);
    mac.update(server_id.as_bytes());
    mac.update(b"\0");
    mac.update(&epoch.to_be_bytes());
    mac
}

/// The `auth` a server puts in its [`Frame::Hello`].
pub fn auth_tag(secret: &[u8], nonce: &[u8; NONCE_LEN], server_id: &str, epoch: u64) -> Vec<u8> {
    auth_mac(secret, nonce, server_id, epoch)
        .finalize()
        .into_bytes()
        .to_vec()
}

/// Checks a [`Frame::Hello`]'s `auth` in constant time.
pub fn verify_auth(
    secret: &[u8],
    nonce: &[u8; NONCE_LEN],
    server_id: &str,
    epoch: u64,
    tag: &[u8],
) -> bool {
    auth_mac(secret, nonce, server_id, epoch)
        .verify_slice(tag)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_tags_verify_only_with_the_same_inputs() {
        let nonce = [7u8; NONCE_LEN];
        let tag = auth_tag(b"s3cret", &nonce, "a", 5);
        assert!(verify_auth(b"s3cret", &nonce, "a", 5, &tag));
        assert!(!verify_auth(b"other", &nonce, "a", 5, &tag));
        assert!(!verify_auth(b"s3cret", &[8u8; NONCE_LEN], "a", 5, &tag));
        assert!(!verify_auth(b"s3cret", &nonce, "b", 5, &tag));
        assert!(!verify_auth(b"s3cret", &nonce, "a", 6, &tag));
        assert!(!verify_auth(b"s3cret", &nonce, "a", 5, &tag[..31]));
    }
}
