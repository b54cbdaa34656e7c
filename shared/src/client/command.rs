//! Parsing client input (a text line or a JSON object) into a [`Request`].
//!
//! Parsing checks shape only (arity, names, numbers); whether the session may
//! do it (logged in, rate, permissions) is the server's business. Every
//! failure is a [`ClientError`] the session answers with `ERR` and survives.

use serde::Deserialize;

use super::Encoding;
use super::reply::{ClientError, ErrCode};
use crate::ids::check_name;

/// What a client asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `LOGIN <user> [<token>]`; JSON may add a `device` name.
    Login {
        /// Who.
        user: String,
        /// A signed token, when the server requires one.
        token: Option<String>,
        /// Which of the user's devices this is (its ACK cursor); `None` is
        /// the device named `default`.
        device: Option<String>,
    },
    /// `SEND <user> <text...>`.
    Send {
        /// Recipient.
        to: String,
        /// Body.
        text: String,
    },
    /// `TELL <user> <text...>`: a transient direct message (at most once,
    /// never stored, no answer on success).
    Tell {
        /// Recipient.
        to: String,
        /// Body.
        text: String,
    },
    /// `SAY <room> <text...>`: a transient room message (not in the room's
    /// history, no answer on success).
    Say {
        /// Room.
        room: String,
        /// Body.
        text: String,
    },
    /// `JOIN <room>`.
    Join {
        /// Room.
        room: String,
    },
    /// `LEAVE <room>`.
    Leave {
        /// Room.
        room: String,
    },
    /// `PUB <room> <text...>`.
    Pub {
        /// Room.
        room: String,
        /// Body.
        text: String,
    },
    /// `ALL <text...>`: broadcast to every connected user.
    All {
        /// Body.
        text: String,
    },
    /// `ACK <seq>`.
    Ack {
        /// Highest sequence number this device has.
        seq: u64,
    },
    /// `SYNC <after-seq> [<epoch>]`.
    Sync {
        /// Replay what comes after this.
        after: u64,
        /// The inbox epoch the client's `after` belongs to; when it is not
        /// the current one the inbox was lost and the replay starts over.
        epoch: Option<String>,
    },
    /// `HISTORY <room> [<count>]`: the room's latest messages, oldest first.
    History {
        /// Room.
        room: String,
        /// How many at most (the server caps it at the room's bound).
        count: Option<u64>,
    },
    /// `WHO <user>`.
    Who {
        /// Whom.
        user: String,
    },
    /// `PING`.
    Ping,
    /// `HELP`.
    Help,
    /// `QUIT`.
    Quit,
}

/// A parsed command with what is needed to answer it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The command.
    pub cmd: Command,
    /// How to answer.
    pub enc: Encoding,
    /// The client's id for this request (JSON `cid`): echoed in the answer,
    /// and for `send` the key that makes a retried send be stored once.
    pub cid: Option<String>,
}

/// Parses one line or frame. A leading `{` means JSON, anything else text.
///
/// On failure the error carries the encoding (and, for JSON, the `cid` when
/// one could be read) so the `ERR` reaches the client in its own words.
pub fn parse(input: &str) -> Result<Request, (ClientError, Encoding, Option<String>)> {
    let input = input.trim_end_matches(['\r', '\n']);
    if input.trim_start().starts_with('{') {
        parse_json(input)
    } else {
        parse_text(input)
            .map(|cmd| Request {
                cmd,
                enc: Encoding::Text,
                cid: None,
            })
            .map_err(|e| (e, Encoding::Text, None))
    }
}

fn syntax(msg: impl Into<String>) -> ClientError {
    ClientError::new(ErrCode::Syntax, msg)
}

fn name_arg(what: &str, value: &str) -> Result<String, ClientError> {
    check_name(value).map_err(|e| syntax(format!("{what} {e}")))?;
    Ok(value.to_owned())
}

fn number_arg(what: &str, value: &str) -> Result<u64, ClientError> {
    value
        .parse()
        .map_err(|_| syntax(format!("{what} must be a whole number, not {value:?}")))
}

fn text_arg(verb: &str, text: Option<&str>) -> Result<String, ClientError> {
    match text {
        Some(t) if !t.trim().is_empty() => Ok(t.to_owned()),
        _ => Err(syntax(format!("{verb} needs some text"))),
    }
}

fn parse_text(line: &str) -> Result<Command, ClientError> {
    let line = line.trim_start();
    let (verb, rest) = match line.split_once(' ') {
        Some((v, r)) => (v, Some(r.trim_start())),
        None => (line, None),
    };
    let rest = rest.filter(|r| !r.is_empty());
    // Arguments before the text, then the text untouched (inner spaces kept).
    let split = |r: Option<&str>| -> (Option<String>, Option<String>) {
        match r {
            None => (None, None),
            Some(r) => match r.split_once(' ') {
                Some((a, t)) => (Some(a.to_owned()), Some(t.trim_start().to_owned())),
                None => (Some(r.to_owned()), None),
            },
        }
    };
    let verb_upper = verb.to_ascii_uppercase();
    match verb_upper.as_str() {
        "LOGIN" => match words(rest).as_slice() {
            [user] => Ok(Command::Login {
                user: name_arg("user", user)?,
                token: None,
                device: None,
            }),
            [user, token] => Ok(Command::Login {
                user: name_arg("user", user)?,
                token: Some((*token).to_owned()),
                device: None,
            }),
            _ => Err(syntax("usage: LOGIN <user> [<token>]")),
        },
        "SEND" | "PUB" | "TELL" | "SAY" => {
            let (first, text) = split(rest);
            let what = if matches!(verb_upper.as_str(), "SEND" | "TELL") {
                "user"
            } else {
                "room"
            };
            let Some(first) = first else {
                return Err(syntax(format!("usage: {verb_upper} <{what}> <text...>")));
            };
            let first = name_arg(what, &first)?;
            let text = text_arg(&verb_upper, text.as_deref())?;
            Ok(match verb_upper.as_str() {
                "SEND" => Command::Send { to: first, text },
                "TELL" => Command::Tell { to: first, text },
                "PUB" => Command::Pub { room: first, text },
                _ => Command::Say { room: first, text },
            })
        }
        "ALL" => Ok(Command::All {
            text: text_arg("ALL", rest)?,
        }),
        "JOIN" | "LEAVE" | "WHO" => {
            let [arg] = words(rest)[..] else {
                let what = if verb_upper == "WHO" { "user" } else { "room" };
                return Err(syntax(format!("usage: {verb_upper} <{what}>")));
            };
            Ok(match verb_upper.as_str() {
                "JOIN" => Command::Join {
                    room: name_arg("room", arg)?,
                },
                "LEAVE" => Command::Leave {
                    room: name_arg("room", arg)?,
                },
                _ => Command::Who {
                    user: name_arg("user", arg)?,
                },
            })
        }
        "HISTORY" => match words(rest).as_slice() {
            [room] => Ok(Command::History {
                room: name_arg("room", room)?,
                count: None,
            }),
            [room, count] => Ok(Command::History {
                room: name_arg("room", room)?,
                count: Some(number_arg("count", count)?),
            }),
            _ => Err(syntax("usage: HISTORY <room> [<count>]")),
        },
        "ACK" => match words(rest).as_slice() {
            [seq] => Ok(Command::Ack {
                seq: number_arg("seq", seq)?,
            }),
            _ => Err(syntax("usage: ACK <seq>")),
        },
        "SYNC" => match words(rest).as_slice() {
            [after] => Ok(Command::Sync {
                after: number_arg("after-seq", after)?,
                epoch: None,
            }),
            [after, epoch] => Ok(Command::Sync {
                after: number_arg("after-seq", after)?,
                epoch: Some(name_arg("epoch", epoch)?),
            }),
            _ => Err(syntax("usage: SYNC <after-seq> [<epoch>]")),
        },
        "PING" | "HELP" | "QUIT" if rest.is_none() => Ok(match verb_upper.as_str() {
            "PING" => Command::Ping,
            "HELP" => Command::Help,
            _ => Command::Quit,
        }),
        "PING" | "HELP" | "QUIT" => Err(syntax(format!("{verb_upper} takes no arguments"))),
        "" => Err(syntax("empty command; try HELP")),
        _ => Err(ClientError::new(
            ErrCode::Unknown,
            format!("unknown command {:?}; try HELP", truncate(verb, 32)),
        )),
    }
}

fn words(r: Option<&str>) -> Vec<&str> {
    r.map(|r| r.split_whitespace().collect())
        .unwrap_or_default()
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// The JSON form: every field optional at this level, checked per `op`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonCommand {
    op: String,
    cid: Option<String>,
    user: Option<String>,
    token: Option<String>,
    device: Option<String>,
    to: Option<String>,
    room: Option<String>,
    text: Option<String>,
    seq: Option<u64>,
    after: Option<u64>,
    epoch: Option<String>,
    count: Option<u64>,
}

fn parse_json(input: &str) -> Result<Request, (ClientError, Encoding, Option<String>)> {
    let json_err = |e: ClientError, cid: Option<String>| (e, Encoding::Json, cid);
    let cmd: JsonCommand = match serde_json::from_str(input) {
        Ok(c) => c,
        Err(e) => {
            // Echo the cid when the object at least has one, so the client
            // can match the error to its request.
            let cid = serde_json::from_str::<serde_json::Value>(input)
                .ok()
                .and_then(|v| v.get("cid")?.as_str().map(str::to_owned));
            return Err(json_err(
                ClientError::new(ErrCode::Json, format!("invalid JSON command: {e}")),
                cid,
            ));
        }
    };
    let cid = cmd.cid.clone();
    if let Some(c) = &cid
        && let Err(e) = check_name(c)
    {
        return Err(json_err(syntax(format!("cid {e}")), None));
    }
    json_command(cmd)
        .map(|c| Request {
            cmd: c,
            enc: Encoding::Json,
            cid: cid.clone(),
        })
        .map_err(|e| json_err(e, cid))
}

fn required(op: &str, field: &str, v: Option<String>) -> Result<String, ClientError> {
    v.ok_or_else(|| syntax(format!("op {op:?} needs field {field:?}")))
}

fn json_command(c: JsonCommand) -> Result<Command, ClientError> {
    let op = c.op.to_ascii_lowercase();
    let op = op.as_str();
    Ok(match op {
        "login" => Command::Login {
            user: name_arg("user", &required(op, "user", c.user)?)?,
            token: c.token,
            device: c.device.map(|d| name_arg("device", &d)).transpose()?,
        },
        "send" => Command::Send {
            to: name_arg("user", &required(op, "to", c.to)?)?,
            text: text_arg("send", c.text.as_deref())?,
        },
        "tell" => Command::Tell {
            to: name_arg("user", &required(op, "to", c.to)?)?,
            text: text_arg("tell", c.text.as_deref())?,
        },
        "say" => Command::Say {
            room: name_arg("room", &required(op, "room", c.room)?)?,
            text: text_arg("say", c.text.as_deref())?,
        },
        "join" => Command::Join {
            room: name_arg("room", &required(op, "room", c.room)?)?,
        },
        "leave" => Command::Leave {
            room: name_arg("room", &required(op, "room", c.room)?)?,
        },
        "pub" => Command::Pub {
            room: name_arg("room", &required(op, "room", c.room)?)?,
            text: text_arg("pub", c.text.as_deref())?,
        },
        "all" => Command::All {
            text: text_arg("all", c.text.as_deref())?,
        },
        "ack" => Command::Ack {
            seq: c
                .seq
                .ok_or_else(|| syntax("op \"ack\" needs field \"seq\""))?,
        },
        "sync" => Command::Sync {
            after: c.after.unwrap_or(0),
            epoch: c.epoch.map(|e| name_arg("epoch", &e)).transpose()?,
        },
        "history" => Command::History {
            room: name_arg("room", &required(op, "room", c.room)?)?,
            count: c.count,
        },
        "who" => Command::Who {
            user: name_arg("user", &required(op, "user", c.user)?)?,
        },
        "ping" => Command::Ping,
        "help" => Command::Help,
        "quit" => Command::Quit,
        _ => {
            return Err(ClientError::new(
                ErrCode::Unknown,
                format!("unknown op {:?}", truncate(&c.op, 32)),
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(line: &str) -> Command {
        parse(line).expect("parses").cmd
    }

    fn err(line: &str) -> ErrCode {
        parse(line).expect_err("fails").0.code
    }

    #[test]
    fn text_commands_parse() {
        assert_eq!(
            text("LOGIN alice"),
            Command::Login {
                user: "alice".into(),
                token: None,
                device: None
            }
        );
        assert_eq!(
            text("send bob  hello   there\r"),
            Command::Send {
                to: "bob".into(),
                text: "hello   there".into()
            }
        );
        assert_eq!(
            text("PUB lobby hi all"),
            Command::Pub {
                room: "lobby".into(),
                text: "hi all".into()
            }
        );
        assert_eq!(
            text("TELL bob is typing"),
            Command::Tell {
                to: "bob".into(),
                text: "is typing".into()
            }
        );
        assert_eq!(
            text("say lobby  cursor 3 4"),
            Command::Say {
                room: "lobby".into(),
                text: "cursor 3 4".into()
            }
        );
        assert_eq!(err("TELL bob"), ErrCode::Syntax);
        assert_eq!(err("TELL"), ErrCode::Syntax);
        assert_eq!(err("TELL no/such hi"), ErrCode::Syntax);
        assert_eq!(err("SAY lobby   "), ErrCode::Syntax);
        assert_eq!(
            parse(r#"{"op":"tell","to":"bob","text":"typing"}"#)
                .expect("parses")
                .cmd,
            Command::Tell {
                to: "bob".into(),
                text: "typing".into()
            }
        );
        assert_eq!(
            parse(r#"{"op":"say","room":"lobby","text":"here"}"#)
                .expect("parses")
                .cmd,
            Command::Say {
                room: "lobby".into(),
                text: "here".into()
            }
        );
        assert_eq!(err(r#"{"op":"tell","text":"typing"}"#), ErrCode::Syntax);
        assert_eq!(text("ACK 42"), Command::Ack { seq: 42 });
        assert_eq!(
            text("SYNC 0 e1"),
            Command::Sync {
                after: 0,
                epoch: Some("e1".into())
            }
        );
        assert_eq!(text("WHO bob"), Command::Who { user: "bob".into() });
        assert_eq!(
            text("HISTORY lobby 5"),
            Command::History {
                room: "lobby".into(),
                count: Some(5)
            }
        );
        assert_eq!(text("ping"), Command::Ping);
        assert_eq!(text("QUIT"), Command::Quit);
    }

    #[test]
    fn malformed_text_is_an_error_with_a_code() {
        assert_eq!(err("SEND bob"), ErrCode::Syntax);
        assert_eq!(err("SEND bob    "), ErrCode::Syntax);
        assert_eq!(err("SEND"), ErrCode::Syntax);
        assert_eq!(err("FROB x"), ErrCode::Unknown);
        assert_eq!(err(""), ErrCode::Syntax);
        assert_eq!(err("ACK x"), ErrCode::Syntax);
        assert_eq!(err("LOGIN a:b"), ErrCode::Syntax);
        assert_eq!(err("LOGIN"), ErrCode::Syntax);
        assert_eq!(err("PING now"), ErrCode::Syntax);
        assert_eq!(err("WHO"), ErrCode::Syntax);
    }

    #[test]
    fn json_commands_parse_and_keep_the_cid() {
        let r = parse(r#"{"op":"send","to":"bob","text":"hi","cid":"c-17"}"#).expect("parses");
        assert_eq!(r.enc, Encoding::Json);
        assert_eq!(r.cid.as_deref(), Some("c-17"));
        assert_eq!(
            r.cmd,
            Command::Send {
                to: "bob".into(),
                text: "hi".into()
            }
        );
        let r = parse(r#"{"op":"login","user":"al","device":"phone"}"#).expect("parses");
        assert_eq!(
            r.cmd,
            Command::Login {
                user: "al".into(),
                token: None,
                device: Some("phone".into())
            }
        );
    }

    #[test]
    fn malformed_json_is_an_error_and_echoes_the_cid() {
        let (e, enc, cid) = parse(r#"{"op":"send","to":"bob","cid":"x1"}"#).expect_err("no text");
        assert_eq!(
            (e.code, enc, cid.as_deref()),
            (ErrCode::Syntax, Encoding::Json, Some("x1"))
        );
        assert_eq!(err("{not json"), ErrCode::Json);
        assert_eq!(err(r#"{"op":"frob"}"#), ErrCode::Unknown);
        assert_eq!(
            err(r#"{"op":"send","to":"bob","text":"x","bogus":1}"#),
            ErrCode::Json
        );
        assert_eq!(err(r#"{"op":"ack","seq":-1}"#), ErrCode::Json);
    }

    proptest::proptest! {
        #[test]
        fn any_input_parses_or_errs_without_panicking(s in ".{0,200}") {
            let _ = parse(&s);
        }

        #[test]
        fn any_json_ish_input_parses_or_errs(s in r#"\{"op":"[a-z]{0,6}"(,"[a-z]{1,6}":("[^"]{0,8}"|[0-9]{1,4}|null))*\}"#) {
            let _ = parse(&s);
        }

        #[test]
        fn send_text_survives_parsing(to in "[a-z]{1,10}", body in "[^\r\n]{0,80}[^\r\n ]") {
            let body = body.trim_start().to_owned();
            proptest::prop_assume!(!body.is_empty());
            let cmd = parse(&format!("SEND {to} {body}")).expect("parses").cmd;
            proptest::prop_assert_eq!(cmd, Command::Send { to, text: body });
        }
    }
}
