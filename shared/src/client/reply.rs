//! Rendering what a server says to a client: [`Reply`] answers a command,
//! [`Event`] is pushed unasked. Text renders one line without its newline;
//! JSON renders one object.
//!
//! In text, a message body is one line: a newline inside it is shown as the
//! two characters `\n` (and `\r` as `\r`), so a telnet client never sees
//! half a message as a command-looking line.

use std::fmt::Write as _;

use serde::Serialize;

use super::Encoding;
use crate::ids::SessionId;
use crate::link::{BROADCAST_ROOM, DirectMsg, RoomMsg};

/// The `<code>` in `ERR <code> <sentence>`: what a client program switches on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrCode {
    /// The command is malformed (arity, names, numbers).
    Syntax,
    /// The verb or op is not known.
    Unknown,
    /// The JSON is not valid, or has unknown fields.
    Json,
    /// The command needs a login first, or comes after one.
    Login,
    /// The token is missing, forged, expired or for someone else.
    Auth,
    /// The session may not do this (e.g. broadcast without the admin role).
    Forbidden,
    /// A line or message is over the size limit.
    TooLong,
    /// The server is at its connection cap.
    Full,
    /// A dependency (Redis) is unreachable; try again.
    Unavailable,
    /// The session is over its rate limit.
    Rate,
    /// A limit other than size or rate (sessions per user, ...).
    Limit,
    /// `SYNC` found messages missing (trimmed or lost inbox).
    Gap,
    /// A bug or unexpected state on the server.
    Internal,
}

impl ErrCode {
    /// The wire word.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrCode::Syntax => "syntax",
            ErrCode::Unknown => "unknown",
            ErrCode::Json => "json",
            ErrCode::Login => "login",
            ErrCode::Auth => "auth",
            ErrCode::Forbidden => "forbidden",
            ErrCode::TooLong => "toolong",
            ErrCode::Full => "full",
            ErrCode::Unavailable => "unavailable",
            ErrCode::Rate => "rate",
            ErrCode::Limit => "limit",
            ErrCode::Gap => "gap",
            ErrCode::Internal => "internal",
        }
    }
}

/// A refused command: its code and a human sentence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} {message}", code.as_str())]
pub struct ClientError {
    /// What a program switches on.
    pub code: ErrCode,
    /// What a person reads.
    pub message: String,
}

impl ClientError {
    /// A refusal with this code and sentence.
    pub fn new(code: ErrCode, message: impl Into<String>) -> Self {
        ClientError {
            code,
            message: message.into(),
        }
    }
}

/// An answer to one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `OK LOGIN <user> <session-id>`.
    LoggedIn {
        /// The user.
        user: String,
        /// The new session.
        session: SessionId,
    },
    /// `OK SENT <msg-id> <seq>`: stored durably; `seq` is in the recipient's inbox.
    Sent {
        /// Message id.
        id: String,
        /// Sequence number in the recipient's inbox.
        seq: u64,
    },
    /// `OK JOIN <room>`.
    Joined {
        /// Room.
        room: String,
    },
    /// `OK LEAVE <room>`.
    Left {
        /// Room.
        room: String,
    },
    /// `OK PUB <room> <msg-id>` (also `OK ALL <msg-id>` for a broadcast).
    Published {
        /// Room, [`BROADCAST_ROOM`] for a broadcast.
        room: String,
        /// Message id.
        id: String,
    },
    /// `OK HISTORY <room> <n>`: `n` room messages were replayed before it.
    History {
        /// Room.
        room: String,
        /// How many were replayed.
        count: u64,
    },
    /// `OK SYNC <last-seq> <epoch>`: the replay is complete up to `last`.
    Synced {
        /// Highest sequence number replayed (or the `after` asked for when
        /// there was nothing newer).
        last: u64,
        /// The inbox epoch to quote in the next `SYNC`.
        epoch: String,
    },
    /// `ONLINE <user> <n-sessions>`.
    Online {
        /// Whom.
        user: String,
        /// Live sessions across the cluster.
        sessions: u64,
    },
    /// `OFFLINE <user>`.
    Offline {
        /// Whom.
        user: String,
    },
    /// `PONG`.
    Pong,
    /// The [`super::HELP`] lines.
    Help,
    /// `BYE`: the server closes the session (after `QUIT`, or shutting down).
    Bye,
    /// `ERR gap <from> <to> <reason>`: in a `SYNC`, messages `from..=to`
    /// cannot be replayed (trimmed by the inbox bound, or the inbox was lost).
    Gap {
        /// First missing sequence number.
        from: u64,
        /// Last missing sequence number.
        to: u64,
        /// Why, in a sentence.
        reason: String,
    },
    /// `ERR <code> <sentence>`.
    Error(ClientError),
}

impl From<ClientError> for Reply {
    fn from(e: ClientError) -> Self {
        Reply::Error(e)
    }
}

/// Something pushed to a session unasked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `MSG <seq> <from> <to> <msg-id> <unix-ms> <text...>`: a direct message,
    /// `seq` being its place in the receiving user's inbox.
    Direct {
        /// Sequence number in the inbox of the user whose session gets it.
        seq: u64,
        /// The message.
        msg: DirectMsg,
    },
    /// `MSG - <from> <to> <msg-id> <unix-ms> <text...>`: a transient direct
    /// message (`TELL`); the seq `-` says it was not stored (in JSON,
    /// `"seq":null`), so clients parse one form.
    Tell(DirectMsg),
    /// `ROOM <room> <from> <msg-id> <unix-ms> <text...>`; a broadcast is
    /// `ALL <from> <msg-id> <unix-ms> <text...>`.
    Room(RoomMsg),
}

/// Writes a message body on one line (see the module docs).
fn push_body(out: &mut String, text: &str) {
    if !text.contains(['\n', '\r']) {
        out.push_str(text);
        return;
    }
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
}

fn json<T: Serialize>(value: &T) -> String {
    // Serializing these plain structs cannot fail: no maps with non-string keys.
    serde_json::to_string(value).unwrap_or_else(|_| String::from("{}"))
}

#[derive(Serialize)]
struct JsonReply<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    cid: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    session: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    room: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    epoch: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sessions: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    online: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    from: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    to: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    recovered: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lines: Option<&'a [&'a str]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    count: Option<u64>,
}

impl<'a> JsonReply<'a> {
    fn new(kind: &'a str, cid: Option<&'a str>) -> Self {
        JsonReply {
            kind,
            cid,
            user: None,
            session: None,
            id: None,
            seq: None,
            room: None,
            last: None,
            epoch: None,
            sessions: None,
            online: None,
            code: None,
            message: None,
            from: None,
            to: None,
            recovered: None,
            lines: None,
            count: None,
        }
    }
}

impl Reply {
    /// Renders this answer; `cid` is echoed in JSON.
    pub fn render(&self, enc: Encoding, cid: Option<&str>) -> String {
        match enc {
            Encoding::Text => self.render_text(),
            Encoding::Json => self.render_json(cid),
        }
    }

    fn render_text(&self) -> String {
        match self {
            Reply::LoggedIn { user, session } => format!("OK LOGIN {user} {session}"),
            Reply::Sent { id, seq } => format!("OK SENT {id} {seq}"),
            Reply::Joined { room } => format!("OK JOIN {room}"),
            Reply::Left { room } => format!("OK LEAVE {room}"),
            Reply::Published { room, id } if room == BROADCAST_ROOM => format!("OK ALL {id}"),
            Reply::Published { room, id } => format!("OK PUB {room} {id}"),
            Reply::Synced { last, epoch } => format!("OK SYNC {last} {epoch}"),
            Reply::History { room, count } => format!("OK HISTORY {room} {count}"),
            Reply::Online { user, sessions } => format!("ONLINE {user} {sessions}"),
            Reply::Offline { user } => format!("OFFLINE {user}"),
            Reply::Pong => "PONG".to_owned(),
            Reply::Help => super::HELP.join("\n"),
            Reply::Bye => "BYE".to_owned(),
            Reply::Gap { from, to, reason } => format!("ERR gap {from} {to} {reason}"),
            Reply::Error(e) => format!("ERR {} {}", e.code.as_str(), e.message),
        }
    }

    fn render_json(&self, cid: Option<&str>) -> String {
        let mut r;
        match self {
            Reply::LoggedIn { user, session } => {
                r = JsonReply::new("login", cid);
                r.user = Some(user);
                r.session = Some(session.to_string());
            }
            Reply::Sent { id, seq } => {
                r = JsonReply::new("sent", cid);
                r.id = Some(id);
                r.seq = Some(*seq);
            }
            Reply::Joined { room } => {
                r = JsonReply::new("joined", cid);
                r.room = Some(room);
            }
            Reply::Left { room } => {
                r = JsonReply::new("left", cid);
                r.room = Some(room);
            }
            Reply::Published { room, id } => {
                r = JsonReply::new("published", cid);
                r.room = Some(room);
                r.id = Some(id);
            }
            Reply::History { room, count } => {
                r = JsonReply::new("history", cid);
                r.room = Some(room);
                r.count = Some(*count);
            }
            Reply::Synced { last, epoch } => {
                r = JsonReply::new("synced", cid);
                r.last = Some(*last);
                r.epoch = Some(epoch);
            }
            Reply::Online { user, sessions } => {
                r = JsonReply::new("who", cid);
                r.user = Some(user);
                r.online = Some(true);
                r.sessions = Some(*sessions);
            }
            Reply::Offline { user } => {
                r = JsonReply::new("who", cid);
                r.user = Some(user);
                r.online = Some(false);
                r.sessions = Some(0);
            }
            Reply::Pong => r = JsonReply::new("pong", cid),
            Reply::Help => {
                r = JsonReply::new("help", cid);
                r.lines = Some(super::HELP);
            }
            Reply::Bye => r = JsonReply::new("bye", cid),
            Reply::Gap { from, to, reason } => {
                r = JsonReply::new("gap", cid);
                r.from = Some(*from);
                r.to = Some(*to);
                r.recovered = Some(false);
                r.message = Some(reason);
            }
            Reply::Error(e) => {
                r = JsonReply::new("error", cid);
                r.code = Some(e.code.as_str());
                r.message = Some(&e.message);
            }
        }
        json(&r)
    }
}

#[derive(Serialize)]
struct JsonDirect<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    /// `None` (JSON `null`) for a transient message.
    seq: Option<u64>,
    from: &'a str,
    to: &'a str,
    id: &'a str,
    ts: u64,
    text: &'a str,
}

#[derive(Serialize)]
struct JsonRoom<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    room: Option<&'a str>,
    from: &'a str,
    id: &'a str,
    ts: u64,
    text: &'a str,
}

impl Event {
    /// Renders this push.
    pub fn render(&self, enc: Encoding) -> String {
        match (enc, self) {
            (Encoding::Text, Event::Direct { seq, msg }) => {
                let mut out = String::with_capacity(48 + msg.text.len());
                let _ = write!(
                    out,
                    "MSG {seq} {} {} {} {} ",
                    msg.from, msg.to, msg.id, msg.ts
                );
                push_body(&mut out, &msg.text);
                out
            }
            (Encoding::Text, Event::Tell(msg)) => {
                let mut out = String::with_capacity(48 + msg.text.len());
                let _ = write!(out, "MSG - {} {} {} {} ", msg.from, msg.to, msg.id, msg.ts);
                push_body(&mut out, &msg.text);
                out
            }
            (Encoding::Text, Event::Room(m)) => {
                let mut out = String::with_capacity(48 + m.text.len());
                if m.room == BROADCAST_ROOM {
                    let _ = write!(out, "ALL {} {} {} ", m.from, m.id, m.ts);
                } else {
                    let _ = write!(out, "ROOM {} {} {} {} ", m.room, m.from, m.id, m.ts);
                }
                push_body(&mut out, &m.text);
                out
            }
            (Encoding::Json, Event::Tell(msg)) => json(&JsonDirect {
                kind: "msg",
                seq: None,
                from: &msg.from,
                to: &msg.to,
                id: &msg.id,
                ts: msg.ts,
                text: &msg.text,
            }),
            (Encoding::Json, Event::Direct { seq, msg }) => json(&JsonDirect {
                kind: "msg",
                seq: Some(*seq),
                from: &msg.from,
                to: &msg.to,
                id: &msg.id,
                ts: msg.ts,
                text: &msg.text,
            }),
            (Encoding::Json, Event::Room(m)) => {
                let broadcast = m.room == BROADCAST_ROOM;
                json(&JsonRoom {
                    kind: if broadcast { "all" } else { "room" },
                    room: (!broadcast).then_some(m.room.as_str()),
                    from: &m.from,
                    id: &m.id,
                    ts: m.ts,
                    text: &m.text,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(text: &str) -> DirectMsg {
        DirectMsg {
            id: "m1".into(),
            from: "alice".into(),
            to: "bob".into(),
            ts: 1700,
            text: text.into(),
        }
    }

    #[test]
    fn text_replies_follow_the_grammar() {
        let sent = Reply::Sent {
            id: "m1".into(),
            seq: 4,
        };
        assert_eq!(sent.render(Encoding::Text, None), "OK SENT m1 4");
        assert_eq!(
            Reply::Online {
                user: "bob".into(),
                sessions: 2
            }
            .render(Encoding::Text, None),
            "ONLINE bob 2"
        );
        let e = Reply::from(ClientError::new(ErrCode::Syntax, "SEND needs some text"));
        assert_eq!(
            e.render(Encoding::Text, None),
            "ERR syntax SEND needs some text"
        );
    }

    #[test]
    fn json_replies_echo_the_cid() {
        let sent = Reply::Sent {
            id: "m1".into(),
            seq: 4,
        };
        let v: serde_json::Value =
            serde_json::from_str(&sent.render(Encoding::Json, Some("c-1"))).expect("json");
        assert_eq!(v["type"], "sent");
        assert_eq!(v["cid"], "c-1");
        assert_eq!(v["seq"], 4);
    }

    #[test]
    fn a_transient_message_has_seq_dash_in_text_and_null_in_json() {
        let ev = Event::Tell(msg("is typing"));
        assert_eq!(
            ev.render(Encoding::Text),
            "MSG - alice bob m1 1700 is typing"
        );
        let v: serde_json::Value = serde_json::from_str(&ev.render(Encoding::Json)).expect("json");
        assert_eq!(v["type"], "msg");
        assert!(v["seq"].is_null(), "{v}");
        assert_eq!(v["from"], "alice");
        assert_eq!(v["text"], "is typing");
        // A stored one keeps its number.
        let stored = Event::Direct {
            seq: 3,
            msg: msg("x"),
        };
        let v: serde_json::Value =
            serde_json::from_str(&stored.render(Encoding::Json)).expect("json");
        assert_eq!(v["seq"], 3);
    }

    #[test]
    fn pushed_messages_render_in_both_encodings() {
        let ev = Event::Direct {
            seq: 9,
            msg: msg("hi there"),
        };
        assert_eq!(
            ev.render(Encoding::Text),
            "MSG 9 alice bob m1 1700 hi there"
        );
        let v: serde_json::Value = serde_json::from_str(&ev.render(Encoding::Json)).expect("json");
        assert_eq!(v["text"], "hi there");
        assert_eq!(v["seq"], 9);
    }

    #[test]
    fn newlines_stay_inside_one_text_line() {
        let ev = Event::Direct {
            seq: 1,
            msg: msg("a\nb\r"),
        };
        assert_eq!(
            ev.render(Encoding::Text),
            "MSG 1 alice bob m1 1700 a\\nb\\r"
        );
    }

    #[test]
    fn rooms_and_broadcasts_render() {
        let mut m = RoomMsg {
            room: "lobby".into(),
            from: "al".into(),
            id: "r1".into(),
            ts: 5,
            text: "yo".into(),
        };
        assert_eq!(
            Event::Room(m.clone()).render(Encoding::Text),
            "ROOM lobby al r1 5 yo"
        );
        m.room = BROADCAST_ROOM.into();
        assert_eq!(Event::Room(m).render(Encoding::Text), "ALL al r1 5 yo");
    }
}
