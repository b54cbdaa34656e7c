//! Parsing what a server says (a text line or a JSON object) back into a
//! [`ServerLine`]: the client's side of [`Reply`] and [`Event`] rendering.
//!
//! A client reads one of three things: an answer to a command (a [`Reply`],
//! with the `cid` it echoes in JSON), a pushed direct message, or a pushed
//! room message or broadcast. A direct message's `seq` is optional here:
//! a transient message (`TELL`) is pushed as `MSG - <from> ...`, with no
//! place in any inbox.
//!
//! Text bodies come back as rendered: the two characters `\n` (and `\r`)
//! that [`Event::render`] writes for a newline are turned back into one.
//! That is lossy for a body that held a literal backslash before an `n`;
//! JSON, which a program should speak, is exact.
//!
//! [`Event`]: super::Event
//! [`Event::render`]: super::Event::render

use serde::Deserialize;

use super::reply::{ClientError, ErrCode, Reply};
use crate::ids::SessionId;
use crate::link::{BROADCAST_ROOM, DirectMsg, RoomMsg};

/// One line (or frame) a server sent to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerLine {
    /// The answer to a command; `cid` is the command's JSON `cid`, echoed.
    Reply {
        /// The answer.
        reply: Reply,
        /// The client's id for the command answered, when it gave one (JSON).
        cid: Option<String>,
    },
    /// `MSG <seq> <from> <to> <msg-id> <unix-ms> <text...>`.
    Direct {
        /// The message's place in the receiving user's inbox; `None` for a
        /// transient message (`MSG - ...`), which is stored nowhere.
        seq: Option<u64>,
        /// The message.
        msg: DirectMsg,
    },
    /// `ROOM <room> ...`, or `ALL ...` (room [`BROADCAST_ROOM`]).
    Room(RoomMsg),
}

/// A line that is not something a server says.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unrecognized server line: {why}: {line:?}")]
pub struct ServerLineError {
    /// What did not fit.
    pub why: &'static str,
    /// The start of the line (at most 80 characters).
    pub line: String,
}

impl ErrCode {
    /// The code for a wire word (`"syntax"`, `"auth"`, ...); `None` when
    /// the word is not one this grammar knows.
    pub fn from_wire(word: &str) -> Option<ErrCode> {
        Some(match word {
            "syntax" => ErrCode::Syntax,
            "unknown" => ErrCode::Unknown,
            "json" => ErrCode::Json,
            "login" => ErrCode::Login,
            "auth" => ErrCode::Auth,
            "forbidden" => ErrCode::Forbidden,
            "toolong" => ErrCode::TooLong,
            "full" => ErrCode::Full,
            "unavailable" => ErrCode::Unavailable,
            "rate" => ErrCode::Rate,
            "limit" => ErrCode::Limit,
            "gap" => ErrCode::Gap,
            "internal" => ErrCode::Internal,
            _ => return None,
        })
    }
}

/// Parses one line or frame from a server. A leading `{` means JSON.
pub fn parse_server_line(input: &str) -> Result<ServerLine, ServerLineError> {
    let input = input.trim_end_matches(['\r', '\n']);
    let result = if input.trim_start().starts_with('{') {
        parse_json(input)
    } else {
        parse_text(input)
    };
    result.map_err(|why| ServerLineError {
        why,
        line: input.chars().take(80).collect(),
    })
}

type Parsed = Result<ServerLine, &'static str>;

fn reply(reply: Reply) -> Parsed {
    Ok(ServerLine::Reply { reply, cid: None })
}

fn num(s: &str) -> Result<u64, &'static str> {
    s.parse().map_err(|_| "a number expected")
}

fn session(s: &str) -> Result<SessionId, &'static str> {
    s.parse().map_err(|_| "a hex session id expected")
}

fn unescape(text: &str) -> String {
    if !text.contains('\\') {
        return text.to_owned();
    }
    text.replace("\\n", "\n").replace("\\r", "\r")
}

fn error(code: &str, message: &str) -> Reply {
    match ErrCode::from_wire(code) {
        Some(code) => Reply::Error(ClientError::new(code, message)),
        // A code from a newer server: keep the word in the sentence.
        None => Reply::Error(ClientError::new(
            ErrCode::Internal,
            format!("{code} {message}"),
        )),
    }
}

fn parse_text(line: &str) -> Parsed {
    let (verb, rest) = line.split_once(' ').unwrap_or((line, ""));
    let words: Vec<&str> = rest.split(' ').filter(|w| !w.is_empty()).collect();
    match (verb, words.as_slice()) {
        ("OK", ["LOGIN", user, s]) => reply(Reply::LoggedIn {
            user: (*user).to_owned(),
            session: session(s)?,
        }),
        ("OK", ["SENT", id, seq]) => reply(Reply::Sent {
            id: (*id).to_owned(),
            seq: num(seq)?,
        }),
        ("OK", ["JOIN", room]) => reply(Reply::Joined {
            room: (*room).to_owned(),
        }),
        ("OK", ["LEAVE", room]) => reply(Reply::Left {
            room: (*room).to_owned(),
        }),
        ("OK", ["PUB", room, id]) => reply(Reply::Published {
            room: (*room).to_owned(),
            id: (*id).to_owned(),
        }),
        ("OK", ["ALL", id]) => reply(Reply::Published {
            room: BROADCAST_ROOM.to_owned(),
            id: (*id).to_owned(),
        }),
        ("OK", ["HISTORY", room, n]) => reply(Reply::History {
            room: (*room).to_owned(),
            count: num(n)?,
        }),
        ("OK", ["SYNC", last, epoch]) => reply(Reply::Synced {
            last: num(last)?,
            epoch: (*epoch).to_owned(),
        }),
        // A user without an inbox yet: no epoch.
        ("OK", ["SYNC", last]) => reply(Reply::Synced {
            last: num(last)?,
            epoch: String::new(),
        }),
        ("ONLINE", [user, n]) => reply(Reply::Online {
            user: (*user).to_owned(),
            sessions: num(n)?,
        }),
        ("OFFLINE", [user]) => reply(Reply::Offline {
            user: (*user).to_owned(),
        }),
        ("PONG", []) => reply(Reply::Pong),
        ("BYE", []) => reply(Reply::Bye),
        ("ERR", [code, ..]) => {
            let message = rest.trim_start()[code.len()..].trim_start();
            if *code == "gap"
                && let [from, to, ..] = words[1..]
                && let (Ok(from), Ok(to)) = (num(from), num(to))
            {
                let reason = message.splitn(3, ' ').nth(2).unwrap_or("").trim_start();
                return reply(Reply::Gap {
                    from,
                    to,
                    reason: reason.to_owned(),
                });
            }
            reply(error(code, message))
        }
        ("MSG", _) => {
            let mut it = rest.splitn(6, ' ');
            let (Some(seq), Some(from), Some(to), Some(id), Some(ts), Some(text)) = (
                it.next(),
                it.next(),
                it.next(),
                it.next(),
                it.next(),
                it.next(),
            ) else {
                return Err("MSG needs seq, from, to, id, time and text");
            };
            let seq = if seq == "-" { None } else { Some(num(seq)?) };
            Ok(ServerLine::Direct {
                seq,
                msg: DirectMsg {
                    id: id.to_owned(),
                    from: from.to_owned(),
                    to: to.to_owned(),
                    ts: num(ts)?,
                    text: unescape(text),
                },
            })
        }
        ("ROOM" | "ALL", _) => {
            let mut it = rest.splitn(if verb == "ROOM" { 5 } else { 4 }, ' ');
            let room = if verb == "ROOM" {
                it.next()
            } else {
                Some(BROADCAST_ROOM)
            };
            let (Some(room), Some(from), Some(id), Some(ts), Some(text)) =
                (room, it.next(), it.next(), it.next(), it.next())
            else {
                return Err("ROOM needs room, from, id, time and text");
            };
            Ok(ServerLine::Room(RoomMsg {
                room: room.to_owned(),
                from: from.to_owned(),
                id: id.to_owned(),
                ts: num(ts)?,
                text: unescape(text),
            }))
        }
        _ => Err("not a reply or a push"),
    }
}

/// Every field a server object may carry (see `reply.rs`).
#[derive(Deserialize)]
struct JsonLine {
    #[serde(rename = "type")]
    kind: String,
    cid: Option<String>,
    user: Option<String>,
    session: Option<String>,
    id: Option<String>,
    seq: Option<u64>,
    room: Option<String>,
    last: Option<u64>,
    epoch: Option<String>,
    sessions: Option<u64>,
    online: Option<bool>,
    code: Option<String>,
    message: Option<String>,
    from: Option<serde_json::Value>,
    to: Option<serde_json::Value>,
    count: Option<u64>,
    ts: Option<u64>,
    text: Option<String>,
}

fn need<T>(v: Option<T>) -> Result<T, &'static str> {
    v.ok_or("a field is missing")
}

fn need_str(v: Option<serde_json::Value>) -> Result<String, &'static str> {
    match v {
        Some(serde_json::Value::String(s)) => Ok(s),
        _ => Err("a string field is missing"),
    }
}

fn need_u64(v: Option<serde_json::Value>) -> Result<u64, &'static str> {
    v.and_then(|v| v.as_u64())
        .ok_or("a number field is missing")
}

fn parse_json(input: &str) -> Parsed {
    let j: JsonLine = serde_json::from_str(input).map_err(|_| "not a server JSON object")?;
    let r = match j.kind.as_str() {
        "login" => Reply::LoggedIn {
            user: need(j.user)?,
            session: session(&need(j.session)?)?,
        },
        "sent" => Reply::Sent {
            id: need(j.id)?,
            seq: need(j.seq)?,
        },
        "joined" => Reply::Joined {
            room: need(j.room)?,
        },
        "left" => Reply::Left {
            room: need(j.room)?,
        },
        "published" => Reply::Published {
            room: need(j.room)?,
            id: need(j.id)?,
        },
        "history" => Reply::History {
            room: need(j.room)?,
            count: need(j.count)?,
        },
        "synced" => Reply::Synced {
            last: need(j.last)?,
            epoch: need(j.epoch)?,
        },
        "who" if j.online == Some(true) => Reply::Online {
            user: need(j.user)?,
            sessions: need(j.sessions)?,
        },
        "who" => Reply::Offline {
            user: need(j.user)?,
        },
        "pong" => Reply::Pong,
        "help" => Reply::Help,
        "bye" => Reply::Bye,
        "gap" => Reply::Gap {
            from: need_u64(j.from)?,
            to: need_u64(j.to)?,
            reason: j.message.unwrap_or_default(),
        },
        "error" => error(&need(j.code)?, &j.message.unwrap_or_default()),
        "msg" => {
            return Ok(ServerLine::Direct {
                seq: j.seq,
                msg: DirectMsg {
                    id: need(j.id)?,
                    from: need_str(j.from)?,
                    to: need_str(j.to)?,
                    ts: need(j.ts)?,
                    text: need(j.text)?,
                },
            });
        }
        "room" | "all" => {
            let room = if j.kind == "all" {
                BROADCAST_ROOM.to_owned()
            } else {
                need(j.room)?
            };
            return Ok(ServerLine::Room(RoomMsg {
                room,
                from: need_str(j.from)?,
                id: need(j.id)?,
                ts: need(j.ts)?,
                text: need(j.text)?,
            }));
        }
        _ => return Err("unknown type"),
    };
    Ok(ServerLine::Reply {
        reply: r,
        cid: j.cid,
    })
}

#[cfg(test)]
mod tests {
    use super::super::{Encoding, Event};
    use super::*;

    fn direct(seq: u64, text: &str) -> Event {
        Event::Direct {
            seq,
            msg: DirectMsg {
                id: "m1".into(),
                from: "alice".into(),
                to: "bob".into(),
                ts: 1700,
                text: text.into(),
            },
        }
    }

    fn replies() -> Vec<Reply> {
        vec![
            Reply::LoggedIn {
                user: "al".into(),
                session: SessionId(0xabc),
            },
            Reply::Sent {
                id: "m-1".into(),
                seq: 7,
            },
            Reply::Joined { room: "r".into() },
            Reply::Left { room: "r".into() },
            Reply::Published {
                room: "r".into(),
                id: "m2".into(),
            },
            Reply::Published {
                room: BROADCAST_ROOM.into(),
                id: "m3".into(),
            },
            Reply::History {
                room: "r".into(),
                count: 3,
            },
            Reply::Synced {
                last: 9,
                epoch: "e1".into(),
            },
            Reply::Online {
                user: "bob".into(),
                sessions: 2,
            },
            Reply::Offline { user: "bob".into() },
            Reply::Pong,
            Reply::Bye,
            Reply::Gap {
                from: 1,
                to: 4,
                reason: "trimmed by the inbox bound".into(),
            },
            Reply::Error(ClientError::new(ErrCode::Auth, "token expired")),
        ]
    }

    #[test]
    fn every_text_reply_parses_back() {
        for r in replies() {
            let line = r.render(Encoding::Text, None);
            assert_eq!(
                parse_server_line(&line),
                Ok(ServerLine::Reply {
                    reply: r.clone(),
                    cid: None
                }),
                "{line}"
            );
        }
    }

    #[test]
    fn every_json_reply_parses_back_with_its_cid() {
        for r in replies().into_iter().chain([Reply::Help]) {
            let line = r.render(Encoding::Json, Some("c-9"));
            assert_eq!(
                parse_server_line(&line),
                Ok(ServerLine::Reply {
                    reply: r.clone(),
                    cid: Some("c-9".into())
                }),
                "{line}"
            );
        }
    }

    #[test]
    fn pushes_parse_back_in_both_encodings() {
        for ev in [
            direct(3, "hi  there"),
            direct(4, "two\nlines"),
            Event::Room(RoomMsg {
                room: "lobby".into(),
                from: "al".into(),
                id: "r1".into(),
                ts: 5,
                text: "yo yo".into(),
            }),
            Event::Room(RoomMsg {
                room: BROADCAST_ROOM.into(),
                from: "al".into(),
                id: "r2".into(),
                ts: 6,
                text: "all of you".into(),
            }),
            Event::Tell(DirectMsg {
                from: "al".into(),
                to: "bo".into(),
                id: "t1".into(),
                ts: 7,
                text: "typing".into(),
            }),
        ] {
            let expected = match ev.clone() {
                Event::Direct { seq, msg } => ServerLine::Direct {
                    seq: Some(seq),
                    msg,
                },
                Event::Tell(msg) => ServerLine::Direct { seq: None, msg },
                Event::Room(m) => ServerLine::Room(m),
            };
            for enc in [Encoding::Text, Encoding::Json] {
                assert_eq!(parse_server_line(&ev.render(enc)), Ok(expected.clone()));
            }
        }
    }

    #[test]
    fn a_transient_message_has_no_seq() {
        let line = "MSG - alice bob m9 1700 just passing";
        let Ok(ServerLine::Direct { seq, msg }) = parse_server_line(line) else {
            panic!("parses");
        };
        assert_eq!((seq, msg.text.as_str()), (None, "just passing"));
        let json = r#"{"type":"msg","seq":null,"from":"a","to":"b","id":"m","ts":1,"text":"x"}"#;
        assert!(matches!(
            parse_server_line(json),
            Ok(ServerLine::Direct { seq: None, .. })
        ));
    }

    #[test]
    fn full_names_another_server() {
        let Ok(ServerLine::Reply {
            reply: Reply::Error(e),
            ..
        }) = parse_server_line("ERR full try 127.0.0.1:9102\r\n")
        else {
            panic!("parses");
        };
        assert_eq!(
            (e.code, e.message.as_str()),
            (ErrCode::Full, "try 127.0.0.1:9102")
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [
            "",
            "OK",
            "OK SENT x",
            "OK SENT x y",
            "MSG 1 a b",
            "MSG x a b m 1 t",
            "{",
            r#"{"type":"sent"}"#,
            r#"{"type":"frob"}"#,
            "hello",
        ] {
            assert!(parse_server_line(bad).is_err(), "{bad}");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_input_parses_or_errs_without_panicking(s in ".{0,120}") {
            let _ = parse_server_line(&s);
        }

        #[test]
        fn text_bodies_survive(body in "[a-z][a-z ]{0,40}[a-z]") {
            let line = direct(1, &body).render(Encoding::Text);
            let Ok(ServerLine::Direct { msg, .. }) = parse_server_line(&line) else {
                panic!("parses");
            };
            proptest::prop_assert_eq!(msg.text, body);
        }
    }
}
