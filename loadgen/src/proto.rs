//! The two wire protocols the tool speaks, and the text it puts in every
//! message.
//!
//! - Switchboard: JSON over WebSocket at `/ws`: `{"op":"login"}`,
//!   `{"op":"send",...,"cid"}` answered by `{"type":"sent","cid","seq"}`,
//!   pushed `{"type":"msg","seq",...,"text"}`, and `{"op":"sync"}` replayed
//!   as `msg` objects closed by `{"type":"synced"}`.
//! - Socket.IO 4 over its WebSocket transport, spoken by hand (Engine.IO
//!   v4 packets): `0{...}` open, `40` connect to the main namespace,
//!   `42["dm",{...}]` an event in either direction, `2`/`3` ping and pong.
//!
//! The message text is `N INTENDED ACTUAL PAD`: the sender's counter, the
//! intended and the actual send time in [`crate::Clock`] microseconds, and
//! padding up to the configured size.
//!
//! Switchboard frames are rendered and parsed by `shared`'s client grammar
//! ([`shared::client::Command::render`],
//! [`shared::client::parse_server_line`]), the same code the servers and
//! the client crate use; measured on this machine it costs about 0.1-0.2 µs
//! more per frame than the hand-written JSON it replaced, well under 1% of
//! a core at 20k messages per second. Socket.IO frames are written by hand.

use std::borrow::Cow;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use shared::client::{Command, Encoding, Reply, ServerLine, parse_server_line};

/// Which system a run drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum System {
    /// Switchboard message servers (JSON client protocol).
    Switchboard,
    /// Switchboard with transient `tell`s instead of stored sends: nothing
    /// is acknowledged or replayable, so a missing message is lost.
    SwitchboardTell,
    /// The Socket.IO peer (`bench/server.js`).
    Socketio,
}

impl System {
    /// The name used in tables and plots.
    pub fn label(self) -> &'static str {
        match self {
            System::Switchboard => "Switchboard",
            System::SwitchboardTell => "Switchboard TELL",
            System::Socketio => "Socket.IO",
        }
    }

    /// Whether the system acknowledges and stores each message (and so can
    /// replay what a receiver missed).
    pub fn durable(self) -> bool {
        matches!(self, System::Switchboard)
    }

    /// Whether it speaks the Switchboard client protocol.
    pub fn is_switchboard(self) -> bool {
        matches!(self, System::Switchboard | System::SwitchboardTell)
    }

    /// The request path of the WebSocket handshake for `user`.
    pub fn path(self, user: &str) -> String {
        match self {
            System::Switchboard | System::SwitchboardTell => "/ws".to_owned(),
            System::Socketio => format!("/socket.io/?EIO=4&transport=websocket&user={user}"),
        }
    }

    /// Appends the frame that sends `text` to `to` as this sender's `n`th
    /// message.
    pub fn write_send(self, out: &mut String, to: &str, n: u64, text: &str) {
        match self {
            System::Switchboard => {
                let send = Command::Send {
                    to: to.to_owned(),
                    text: text.to_owned(),
                };
                out.push_str(&send.render(Encoding::Json, Some(&format!("c{n}"))));
            }
            // The cid only labels a refusal (`ERR`): a tell is never stored.
            System::SwitchboardTell => {
                let tell = Command::Tell {
                    to: to.to_owned(),
                    text: text.to_owned(),
                };
                out.push_str(&tell.render(Encoding::Json, Some(&format!("c{n}"))));
            }
            System::Socketio => {
                let _ = write!(out, r#"42["dm",{{"to":"{to}","text":"{text}"}}]"#);
            }
        }
    }
}

/// The Switchboard JSON login command.
pub fn login_frame(user: &str) -> String {
    Command::Login {
        user: user.to_owned(),
        token: None,
        device: None,
    }
    .render(Encoding::Json, None)
}

/// The Switchboard JSON sync command.
pub fn sync_frame(after: u64) -> String {
    Command::Sync { after, epoch: None }.render(Encoding::Json, None)
}

/// Engine.IO: join the main namespace.
pub const SIO_CONNECT: &str = "40";
/// Engine.IO: answer to a ping.
pub const SIO_PONG: &str = "3";

/// What the tool reads from a message's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// The sender's counter for this message (0, 1, ...).
    pub n: u64,
    /// When it was meant to be sent (open-loop schedule), clock µs.
    pub intended_us: u64,
    /// When it was written, clock µs.
    pub actual_us: u64,
}

/// Writes the text for `stamp`, padded with `x` to at least `size` bytes.
pub fn write_text(out: &mut String, stamp: Stamp, size: usize) {
    let start = out.len();
    let _ = write!(
        out,
        "{} {} {} ",
        stamp.n, stamp.intended_us, stamp.actual_us
    );
    let used = out.len() - start;
    out.extend(std::iter::repeat_n('x', size.saturating_sub(used).max(1)));
}

/// Reads a text written by [`write_text`].
pub fn parse_text(text: &str) -> Option<Stamp> {
    let mut it = text.split(' ');
    Some(Stamp {
        n: it.next()?.parse().ok()?,
        intended_us: it.next()?.parse().ok()?,
        actual_us: it.next()?.parse().ok()?,
    })
}

/// One frame from a server, as far as the tool cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming<'a> {
    /// Switchboard: the login succeeded.
    LoggedIn,
    /// Switchboard: message `n` of this sender is stored as `seq` in the
    /// recipient's inbox.
    Sent {
        /// The sender's counter, from the cid.
        n: u64,
        /// Recipient inbox sequence number.
        seq: u64,
    },
    /// A direct message (Switchboard `msg`, Socket.IO `dm`).
    Msg {
        /// Inbox sequence number (Switchboard only).
        seq: Option<u64>,
        /// The text.
        text: Cow<'a, str>,
    },
    /// Switchboard: a sync replay is complete up to `last`.
    Synced {
        /// Highest sequence number replayed.
        last: u64,
    },
    /// Switchboard: a sync found messages that cannot be replayed.
    Gap,
    /// Switchboard: a command was refused.
    Error {
        /// The sender's counter, when the refused command was a send.
        n: Option<u64>,
        /// The server's words.
        message: String,
    },
    /// Engine.IO open packet `0{...}`.
    SioOpen,
    /// Socket.IO connected to the main namespace `40{...}`.
    SioConnected,
    /// Engine.IO ping `2`: answer with [`SIO_PONG`].
    SioPing,
    /// Anything else (ignored).
    Other,
}

#[derive(Deserialize)]
struct SioDm<'a> {
    #[serde(borrow)]
    text: Cow<'a, str>,
}

fn cid_counter(cid: Option<&str>) -> Option<u64> {
    cid?.strip_prefix('c')?.parse().ok()
}

/// Reads one text frame of `system`.
pub fn parse(system: System, frame: &str) -> Incoming<'_> {
    match system {
        System::Switchboard | System::SwitchboardTell => parse_switchboard(frame),
        System::Socketio => parse_socketio(frame),
    }
}

fn parse_switchboard(frame: &str) -> Incoming<'_> {
    let Ok(line) = parse_server_line(frame) else {
        return Incoming::Other;
    };
    match line {
        ServerLine::Direct { seq, msg } => Incoming::Msg {
            seq,
            text: Cow::Owned(msg.text),
        },
        ServerLine::Room(_) => Incoming::Other,
        ServerLine::Reply { reply, cid } => match reply {
            Reply::Sent { seq, .. } => match cid_counter(cid.as_deref()) {
                Some(n) => Incoming::Sent { n, seq },
                None => Incoming::Other,
            },
            Reply::LoggedIn { .. } => Incoming::LoggedIn,
            Reply::Synced { last, .. } => Incoming::Synced { last },
            Reply::Gap { .. } => Incoming::Gap,
            Reply::Error(e) => Incoming::Error {
                n: cid_counter(cid.as_deref()),
                message: e.to_string(),
            },
            _ => Incoming::Other,
        },
    }
}

fn parse_socketio(frame: &str) -> Incoming<'_> {
    if let Some(event) = frame.strip_prefix("42") {
        return match serde_json::from_str::<(Cow<'_, str>, SioDm<'_>)>(event) {
            Ok((name, dm)) if name == "dm" => Incoming::Msg {
                seq: None,
                text: dm.text,
            },
            _ => Incoming::Other,
        };
    }
    if frame == "2" {
        Incoming::SioPing
    } else if frame.starts_with("40") {
        Incoming::SioConnected
    } else if frame.starts_with('0') {
        Incoming::SioOpen
    } else if frame.starts_with("44") {
        Incoming::Error {
            n: None,
            message: frame.to_owned(),
        }
    } else {
        Incoming::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_round_trip_and_pad_to_size() {
        let stamp = Stamp {
            n: 17,
            intended_us: 1_000_000,
            actual_us: 1_000_250,
        };
        let mut t = String::new();
        write_text(&mut t, stamp, 64);
        assert_eq!(t.len(), 64);
        assert_eq!(parse_text(&t), Some(stamp));
        let mut short = String::new();
        write_text(&mut short, stamp, 0);
        assert_eq!(parse_text(&short), Some(stamp));
    }

    #[test]
    fn switchboard_send_frames_are_valid_json() {
        let mut f = String::new();
        System::Switchboard.write_send(&mut f, "bob", 3, "3 10 11 xx");
        let v: serde_json::Value = serde_json::from_str(&f).expect("json");
        assert_eq!(v["op"], "send");
        assert_eq!(v["to"], "bob");
        assert_eq!(v["cid"], "c3");
        let v: serde_json::Value = serde_json::from_str(&login_frame("al")).expect("json");
        assert_eq!(v["user"], "al");
        let v: serde_json::Value = serde_json::from_str(&sync_frame(9)).expect("json");
        assert_eq!(v["after"], 9);
    }

    #[test]
    fn switchboard_frames_parse() {
        assert_eq!(
            parse(
                System::Switchboard,
                r#"{"type":"sent","cid":"c42","id":"m","seq":7}"#
            ),
            Incoming::Sent { n: 42, seq: 7 }
        );
        assert_eq!(
            parse(
                System::Switchboard,
                r#"{"type":"msg","seq":3,"from":"a","to":"b","id":"m","ts":1,"text":"1 2 3 x"}"#
            ),
            Incoming::Msg {
                seq: Some(3),
                text: Cow::Borrowed("1 2 3 x")
            }
        );
        assert_eq!(
            parse(
                System::Switchboard,
                r#"{"type":"synced","last":9,"epoch":"e"}"#
            ),
            Incoming::Synced { last: 9 }
        );
        assert_eq!(
            parse(
                System::Switchboard,
                r#"{"type":"login","user":"a","session":"01"}"#
            ),
            Incoming::LoggedIn
        );
        assert!(matches!(
            parse(
                System::Switchboard,
                r#"{"type":"error","cid":"c5","code":"rate","message":"slow down"}"#
            ),
            Incoming::Error { n: Some(5), .. }
        ));
        // Text answers parse too (the grammar is shared); chatter does not.
        assert_eq!(
            parse(System::Switchboard, "OK LOGIN a 01"),
            Incoming::LoggedIn
        );
        assert_eq!(parse(System::Switchboard, "hello"), Incoming::Other);
    }

    #[test]
    fn socketio_packets_parse() {
        let mut f = String::new();
        System::Socketio.write_send(&mut f, "bob", 0, "0 1 2 x");
        assert_eq!(f, r#"42["dm",{"to":"bob","text":"0 1 2 x"}]"#);
        assert_eq!(
            parse(
                System::Socketio,
                r#"42["dm",{"from":"a","to":"bob","text":"0 1 2 x"}]"#
            ),
            Incoming::Msg {
                seq: None,
                text: Cow::Borrowed("0 1 2 x")
            }
        );
        assert_eq!(parse(System::Socketio, "2"), Incoming::SioPing);
        assert_eq!(
            parse(System::Socketio, r#"0{"sid":"x","pingInterval":25000}"#),
            Incoming::SioOpen
        );
        assert_eq!(
            parse(System::Socketio, r#"40{"sid":"y"}"#),
            Incoming::SioConnected
        );
        assert_eq!(
            parse(System::Socketio, r#"42["other",{"text":"x"}]"#),
            Incoming::Other
        );
    }
}
