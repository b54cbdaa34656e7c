//! Identifiers: what a valid user, room, server, device or client id looks
//! like, and the session id type.
//!
//! Names travel inside space-separated text lines and Redis key names, so
//! they are restricted to a safe alphabet: ASCII letters, digits and
//! `_ . @ -`, at most [`MAX_NAME_LEN`] bytes. Checking them in one place
//! keeps `sb:user:{user}` unambiguous and a text line parseable.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest user, room, server or device name, in bytes.
pub const MAX_NAME_LEN: usize = 64;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is empty.
    #[error("name is empty")]
    Empty,
    /// The name is longer than [`MAX_NAME_LEN`].
    #[error("name is longer than {MAX_NAME_LEN} bytes")]
    TooLong,
    /// The name has a character outside `A-Z a-z 0-9 _ . @ -`.
    #[error("name may only hold letters, digits and _ . @ -")]
    BadChar,
}

/// Checks a user, room, server, device or client-message id name.
pub fn check_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong);
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'@' | b'-'))
    {
        return Err(NameError::BadChar);
    }
    Ok(())
}

/// One connection of one user (a device), unique across the cluster.
///
/// Made by the message server from its epoch and a counter; shown to
/// clients as 16 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SessionId(pub u64);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl std::str::FromStr for SessionId {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        u64::from_str_radix(s, 16).map(SessionId)
    }
}

/// Where a session lives, as stored in `sb:user:{user}`: `server-id:epoch`.
///
/// Comparing the whole string (not just the server id) is what makes the
/// removal of a session compare-and-delete: a late clean-up by an old epoch
/// never removes an entry written by a newer one.
pub fn session_location(server_id: &str, epoch: u64) -> String {
    format!("{server_id}:{epoch}")
}

/// Splits a `server-id:epoch` location; `None` when it is not one.
pub fn parse_location(loc: &str) -> Option<(&str, u64)> {
    let (server, epoch) = loc.rsplit_once(':')?;
    check_name(server).ok()?;
    Some((server, epoch.parse().ok()?))
}

/// The message id of a direct message sent with a client id: the same for
/// every retry of that send, whichever server takes it, so that both halves
/// of the message (the recipient's and the sender's inbox) can be stored at
/// the same time and each recognises a retry by this id alone. `c` and 24
/// hex digits of SHA-256 over sender and cid.
pub fn cid_message_id(from: &str, cid: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(from.as_bytes())
        .chain_update(b" ")
        .chain_update(cid.as_bytes())
        .finalize();
    let mut id = String::with_capacity(25);
    id.push('c');
    for b in &digest[..12] {
        id.push_str(&format!("{b:02x}"));
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cid_gives_one_message_id_per_sender() {
        let id = cid_message_id("alice", "c-17");
        assert_eq!(id, cid_message_id("alice", "c-17"));
        assert_eq!(id.len(), 25);
        assert!(check_name(&id).is_ok());
        assert_ne!(id, cid_message_id("bob", "c-17"));
        assert_ne!(id, cid_message_id("alice", "c-18"));
    }

    #[test]
    fn names_are_checked() {
        assert_eq!(check_name("alice"), Ok(()));
        assert_eq!(check_name("a.b-c_d@e"), Ok(()));
        assert_eq!(check_name(""), Err(NameError::Empty));
        assert_eq!(check_name("a b"), Err(NameError::BadChar));
        assert_eq!(check_name("a:b"), Err(NameError::BadChar));
        assert_eq!(check_name(&"x".repeat(65)), Err(NameError::TooLong));
    }

    #[test]
    fn session_ids_round_trip_as_hex() {
        let id = SessionId(0xdead_beef);
        assert_eq!(id.to_string(), "00000000deadbeef");
        assert_eq!("00000000deadbeef".parse::<SessionId>(), Ok(id));
    }

    #[test]
    fn locations_round_trip() {
        let loc = session_location("srv-a", 17);
        assert_eq!(parse_location(&loc), Some(("srv-a", 17)));
        assert_eq!(parse_location("nope"), None);
        assert_eq!(parse_location("a:b"), None);
    }
}
