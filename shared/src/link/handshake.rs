//! The link handshake as two small state machines, one per end, with no I/O:
//! the relay's [`Challenger`] and the server's [`Joiner`]. Each end's task
//! only moves their frames between the socket and these.
//!
//! ```text
//! relay  -> server   Challenge { version, nonce }      Challenger::new
//! server -> relay    Hello { .., auth }                Joiner::on_frame
//! relay  -> server   Welcome | Refused { reason }      Challenger::on_hello
//! server             linked | refused                  Joiner::on_frame
//! ```
//!
//! The nonce is fresh per link (the caller draws it: no randomness here),
//! and `auth` signs it with the secret ([`super::auth_tag`]), so a `Hello`
//! recorded from one link is refused on any other.

use super::{Frame, LINK_VERSION, NONCE_LEN, ServerAddrs, auth_tag, verify_auth};

/// Longest address a server may report (they end up in logs and `/servers`).
pub const MAX_ADDR_LEN: usize = 256;

/// Why the relay refused a `Hello`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    /// Another link protocol version.
    Version,
    /// The server id is not a valid name.
    Name,
    /// Not a `Hello`, or a `Hello` out of bounds.
    Protocol,
    /// The `auth` tag did not verify: wrong secret, or a replayed `Hello`.
    Auth,
}

/// A refused `Hello`: the kind (for metrics) and a sentence (for the log and
/// the [`Frame::Refused`] the peer gets).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct Refusal {
    /// What went wrong.
    pub kind: RefusalKind,
    /// Why, in a sentence.
    pub detail: String,
}

impl Refusal {
    fn new(kind: RefusalKind, detail: impl Into<String>) -> Refusal {
        Refusal {
            kind,
            detail: detail.into(),
        }
    }
}

/// A server that passed the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// Its id.
    pub server_id: String,
    /// Its epoch.
    pub epoch: u64,
    /// Where it serves clients.
    pub addrs: ServerAddrs,
}

/// The relay's end: challenge sent, waiting for `Hello`.
#[derive(Debug)]
pub struct Challenger {
    nonce: [u8; NONCE_LEN],
}

impl Challenger {
    /// A handshake with a fresh `nonce`; returns it and the challenge to send.
    pub fn new(nonce: [u8; NONCE_LEN]) -> (Challenger, Frame) {
        let frame = Frame::Challenge {
            version: LINK_VERSION,
            nonce,
        };
        (Challenger { nonce }, frame)
    }

    /// Judges the peer's answer. On success the relay sends
    /// [`Frame::Welcome`]; on a refusal, [`Frame::Refused`] with its detail.
    pub fn on_hello(self, frame: Frame, secret: &[u8]) -> Result<Accepted, Refusal> {
        let Frame::Hello {
            version,
            server_id,
            epoch,
            addrs,
            auth,
        } = frame
        else {
            return Err(Refusal::new(
                RefusalKind::Protocol,
                format!("expected hello, got {}", frame.kind()),
            ));
        };
        if version != LINK_VERSION {
            return Err(Refusal::new(
                RefusalKind::Version,
                format!(
                    "link version {version} is not supported; this relay speaks {LINK_VERSION}"
                ),
            ));
        }
        if let Err(error) = crate::ids::check_name(&server_id) {
            return Err(Refusal::new(
                RefusalKind::Name,
                format!("invalid server id: {error}"),
            ));
        }
        if addrs.ws.len() > MAX_ADDR_LEN || addrs.tcp.len() > MAX_ADDR_LEN {
            return Err(Refusal::new(
                RefusalKind::Protocol,
                format!("server addresses longer than {MAX_ADDR_LEN} bytes"),
            ));
        }
        if !verify_auth(secret, &self.nonce, &server_id, epoch, &auth) {
            return Err(Refusal::new(
                RefusalKind::Auth,
                "authentication failed (link secret mismatch)",
            ));
        }
        Ok(Accepted {
            server_id,
            epoch,
            addrs,
        })
    }
}

/// Why the server's end of a handshake failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    /// The relay speaks another version.
    #[error("relay speaks link version {0}, we speak {LINK_VERSION}")]
    Version(u16),
    /// The relay refused us (secret, version, name).
    #[error("refused by relay: {0}")]
    Refused(String),
    /// A frame that does not belong at this point.
    #[error("expected {expected}, got {got}")]
    Unexpected {
        /// What the handshake waited for.
        expected: &'static str,
        /// What came.
        got: &'static str,
    },
}

/// What the server does after a handshake frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Send this frame and wait for the next one.
    Send(Frame),
    /// The link is up; the relay calls itself `relay_id`.
    Linked {
        /// The relay's name, for logs.
        relay_id: String,
    },
}

/// The server's end of a handshake.
#[derive(Debug)]
pub struct Joiner {
    server_id: String,
    epoch: u64,
    addrs: ServerAddrs,
    secret: Vec<u8>,
    phase: Phase,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitChallenge,
    AwaitWelcome,
    Done,
}

impl Joiner {
    /// A server about to be challenged.
    pub fn new(server_id: &str, epoch: u64, addrs: ServerAddrs, secret: &[u8]) -> Joiner {
        Joiner {
            server_id: server_id.to_owned(),
            epoch,
            addrs,
            secret: secret.to_vec(),
            phase: Phase::AwaitChallenge,
        }
    }

    /// What the server waits for now (for "no ... within N s" messages).
    pub fn waiting_for(&self) -> &'static str {
        match self.phase {
            Phase::AwaitChallenge => "challenge",
            Phase::AwaitWelcome => "welcome",
            Phase::Done => "nothing",
        }
    }

    /// Takes one frame from the relay.
    pub fn on_frame(&mut self, frame: Frame) -> Result<Step, JoinError> {
        match (self.phase, frame) {
            (Phase::AwaitChallenge, Frame::Challenge { version, nonce }) => {
                if version != LINK_VERSION {
                    return Err(JoinError::Version(version));
                }
                self.phase = Phase::AwaitWelcome;
                Ok(Step::Send(Frame::Hello {
                    version: LINK_VERSION,
                    server_id: self.server_id.clone(),
                    epoch: self.epoch,
                    addrs: self.addrs.clone(),
                    auth: auth_tag(&self.secret, &nonce, &self.server_id, self.epoch),
                }))
            }
            (Phase::AwaitWelcome, Frame::Welcome { relay_id }) => {
                self.phase = Phase::Done;
                Ok(Step::Linked { relay_id })
            }
            (Phase::AwaitWelcome, Frame::Refused { reason }) => Err(JoinError::Refused(reason)),
            (_, other) => Err(JoinError::Unexpected {
                expected: self.waiting_for(),
                got: other.kind(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"a secret ending in a space ";

    fn joiner(secret: &[u8]) -> Joiner {
        Joiner::new(
            "alpha",
            7,
            ServerAddrs {
                ws: "127.0.0.1:1".into(),
                tcp: "127.0.0.1:2".into(),
            },
            secret,
        )
    }

    /// Runs the server's side up to its `Hello`.
    fn hello(j: &mut Joiner, challenge: Frame) -> Frame {
        match j.on_frame(challenge) {
            Ok(Step::Send(hello)) => hello,
            other => panic!("expected a hello, got {other:?}"),
        }
    }

    #[test]
    fn the_same_secret_links() {
        let (relay, challenge) = Challenger::new([1; NONCE_LEN]);
        let mut j = joiner(SECRET);
        let accepted = relay
            .on_hello(hello(&mut j, challenge), SECRET)
            .expect("accepted");
        assert_eq!(accepted.server_id, "alpha");
        assert_eq!(accepted.epoch, 7);
        assert_eq!(
            j.on_frame(Frame::Welcome {
                relay_id: "r1".into()
            }),
            Ok(Step::Linked {
                relay_id: "r1".into()
            })
        );
    }

    #[test]
    fn a_wrong_secret_is_refused() {
        let (relay, challenge) = Challenger::new([1; NONCE_LEN]);
        let mut j = joiner(b"a secret ending in a space");
        let refusal = relay
            .on_hello(hello(&mut j, challenge), SECRET)
            .expect_err("refused");
        assert_eq!(refusal.kind, RefusalKind::Auth);
        // The server learns why and gives up this attempt.
        assert_eq!(
            j.on_frame(Frame::Refused {
                reason: refusal.detail.clone()
            }),
            Err(JoinError::Refused(refusal.detail))
        );
    }

    #[test]
    fn a_replayed_hello_is_refused() {
        let (_, first) = Challenger::new([1; NONCE_LEN]);
        let recorded = hello(&mut joiner(SECRET), first);
        // A later link gets a fresh nonce; the recorded answer does not fit it.
        let (relay, _) = Challenger::new([2; NONCE_LEN]);
        let refusal = relay.on_hello(recorded, SECRET).expect_err("refused");
        assert_eq!(refusal.kind, RefusalKind::Auth);
    }

    #[test]
    fn a_wrong_version_is_refused_by_either_end() {
        let mut j = joiner(SECRET);
        assert_eq!(
            j.on_frame(Frame::Challenge {
                version: LINK_VERSION + 1,
                nonce: [0; NONCE_LEN]
            }),
            Err(JoinError::Version(LINK_VERSION + 1))
        );
        let (relay, challenge) = Challenger::new([3; NONCE_LEN]);
        let Frame::Hello {
            server_id,
            epoch,
            addrs,
            auth,
            ..
        } = hello(&mut joiner(SECRET), challenge)
        else {
            unreachable!()
        };
        let old = Frame::Hello {
            version: LINK_VERSION + 1,
            server_id,
            epoch,
            addrs,
            auth,
        };
        let refusal = relay.on_hello(old, SECRET).expect_err("refused");
        assert_eq!(refusal.kind, RefusalKind::Version);
    }

    #[test]
    fn frames_out_of_order_are_errors() {
        let mut j = joiner(SECRET);
        assert_eq!(
            j.on_frame(Frame::Welcome {
                relay_id: "r".into()
            }),
            Err(JoinError::Unexpected {
                expected: "challenge",
                got: "welcome"
            })
        );
        let (relay, _) = Challenger::new([4; NONCE_LEN]);
        assert_eq!(
            relay.on_hello(Frame::Ping(1), SECRET).map_err(|r| r.kind),
            Err(RefusalKind::Protocol)
        );
        let (relay, _) = Challenger::new([4; NONCE_LEN]);
        let bad_name = Frame::Hello {
            version: LINK_VERSION,
            server_id: "no spaces".into(),
            epoch: 1,
            addrs: ServerAddrs::default(),
            auth: Vec::new(),
        };
        assert_eq!(
            relay.on_hello(bad_name, SECRET).map_err(|r| r.kind),
            Err(RefusalKind::Name)
        );
    }
}
