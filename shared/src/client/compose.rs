//! Composing commands on the client's side: a [`Command`] rendered as the
//! text line or JSON object that [`super::parse`] reads back.
//!
//! Text has no `cid` and no device name (JSON has both), and a text body is
//! one line: a newline in it is written as the two characters `\n`, the way
//! pushes show one. A program that needs retried sends stored once speaks
//! JSON.

use serde::Serialize;

use super::Encoding;
use super::command::Command;

#[derive(Serialize, Default)]
struct JsonCommand<'a> {
    op: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    cid: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    device: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    to: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    room: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    after: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    epoch: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    count: Option<u64>,
}

fn one_line(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains(['\n', '\r']) {
        text.replace('\n', "\\n").replace('\r', "\\r").into()
    } else {
        text.into()
    }
}

impl Command {
    /// This command as a client writes it; `cid` goes into JSON only.
    pub fn render(&self, enc: Encoding, cid: Option<&str>) -> String {
        match enc {
            Encoding::Text => self.render_text(),
            Encoding::Json => self.render_json(cid),
        }
    }

    fn render_text(&self) -> String {
        match self {
            Command::Login {
                user,
                token: Some(t),
                ..
            } => format!("LOGIN {user} {t}"),
            Command::Login { user, .. } => format!("LOGIN {user}"),
            Command::Send { to, text } => format!("SEND {to} {}", one_line(text)),
            Command::Tell { to, text } => format!("TELL {to} {}", one_line(text)),
            Command::Say { room, text } => format!("SAY {room} {}", one_line(text)),
            Command::Join { room } => format!("JOIN {room}"),
            Command::Leave { room } => format!("LEAVE {room}"),
            Command::Pub { room, text } => format!("PUB {room} {}", one_line(text)),
            Command::All { text } => format!("ALL {}", one_line(text)),
            Command::Ack { seq } => format!("ACK {seq}"),
            Command::Sync {
                after,
                epoch: Some(e),
            } => format!("SYNC {after} {e}"),
            Command::Sync { after, .. } => format!("SYNC {after}"),
            Command::History {
                room,
                count: Some(n),
            } => format!("HISTORY {room} {n}"),
            Command::History { room, .. } => format!("HISTORY {room}"),
            Command::Who { user } => format!("WHO {user}"),
            Command::Ping => "PING".to_owned(),
            Command::Help => "HELP".to_owned(),
            Command::Quit => "QUIT".to_owned(),
        }
    }

    fn render_json(&self, cid: Option<&str>) -> String {
        let mut j = JsonCommand {
            cid,
            ..JsonCommand::default()
        };
        j.op = match self {
            Command::Login {
                user,
                token,
                device,
            } => {
                j.user = Some(user);
                j.token = token.as_deref();
                j.device = device.as_deref();
                "login"
            }
            Command::Send { to, text } => {
                j.to = Some(to);
                j.text = Some(text);
                "send"
            }
            Command::Tell { to, text } => {
                j.to = Some(to);
                j.text = Some(text);
                "tell"
            }
            Command::Say { room, text } => {
                j.room = Some(room);
                j.text = Some(text);
                "say"
            }
            Command::Join { room } => {
                j.room = Some(room);
                "join"
            }
            Command::Leave { room } => {
                j.room = Some(room);
                "leave"
            }
            Command::Pub { room, text } => {
                j.room = Some(room);
                j.text = Some(text);
                "pub"
            }
            Command::All { text } => {
                j.text = Some(text);
                "all"
            }
            Command::Ack { seq } => {
                j.seq = Some(*seq);
                "ack"
            }
            Command::Sync { after, epoch } => {
                j.after = Some(*after);
                j.epoch = epoch.as_deref();
                "sync"
            }
            Command::History { room, count } => {
                j.room = Some(room);
                j.count = *count;
                "history"
            }
            Command::Who { user } => {
                j.user = Some(user);
                "who"
            }
            Command::Ping => "ping",
            Command::Help => "help",
            Command::Quit => "quit",
        };
        // Plain strings and numbers: serializing cannot fail.
        serde_json::to_string(&j).unwrap_or_else(|_| String::from("{}"))
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Request, parse};
    use super::*;

    fn commands() -> Vec<Command> {
        vec![
            Command::Login {
                user: "al".into(),
                token: None,
                device: None,
            },
            Command::Login {
                user: "al".into(),
                token: Some("t.k.n".into()),
                device: None,
            },
            Command::Send {
                to: "bob".into(),
                text: "hi  \"there\" \\ é".into(),
            },
            Command::Tell {
                to: "bob".into(),
                text: "typing".into(),
            },
            Command::Say {
                room: "r".into(),
                text: "here".into(),
            },
            Command::Join { room: "r".into() },
            Command::Leave { room: "r".into() },
            Command::Pub {
                room: "r".into(),
                text: "yo".into(),
            },
            Command::All { text: "all".into() },
            Command::Ack { seq: 5 },
            Command::Sync {
                after: 3,
                epoch: None,
            },
            Command::Sync {
                after: 3,
                epoch: Some("e1".into()),
            },
            Command::History {
                room: "r".into(),
                count: None,
            },
            Command::History {
                room: "r".into(),
                count: Some(4),
            },
            Command::Who { user: "bob".into() },
            Command::Ping,
            Command::Help,
            Command::Quit,
        ]
    }

    #[test]
    fn every_command_parses_back_in_both_encodings() {
        for cmd in commands() {
            assert_eq!(
                parse(&cmd.render(Encoding::Text, None)),
                Ok(Request {
                    cmd: cmd.clone(),
                    enc: Encoding::Text,
                    cid: None
                })
            );
            assert_eq!(
                parse(&cmd.render(Encoding::Json, Some("c-1"))),
                Ok(Request {
                    cmd: cmd.clone(),
                    enc: Encoding::Json,
                    cid: Some("c-1".into())
                })
            );
        }
    }

    #[test]
    fn json_keeps_the_device_and_newlines() {
        let login = Command::Login {
            user: "al".into(),
            token: None,
            device: Some("phone".into()),
        };
        assert_eq!(
            parse(&login.render(Encoding::Json, None)).map(|r| r.cmd),
            Ok(login)
        );
        let send = Command::Send {
            to: "bob".into(),
            text: "a\nb".into(),
        };
        assert_eq!(
            parse(&send.render(Encoding::Json, None)).map(|r| r.cmd),
            Ok(send.clone())
        );
        assert_eq!(send.render(Encoding::Text, None), "SEND bob a\\nb");
    }
}
