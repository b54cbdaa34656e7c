//! The client protocol: one grammar, two encodings.
//!
//! A text session speaks one command per line (telnet) or per text frame
//! (WebSocket): `SEND bob hello there`. A JSON session speaks one object per
//! line or frame: `{"op":"send","to":"bob","text":"hello there","cid":"c-17"}`.
//! A session answers each command in the encoding it came in, and pushes
//! events in the encoding of its last command.
//!
//! - [`command`]: parsing input into a [`Request`];
//! - [`reply`]: rendering [`Reply`]s (answers) and [`Event`]s (pushes).
//!
//! The client's side of the same grammar: [`compose`] renders a
//! [`Command`], [`server_line`] parses what a server says.

pub mod command;
pub mod compose;
pub mod reply;
pub mod server_line;

pub use command::{Command, Request, parse};
pub use reply::{ClientError, ErrCode, Event, Reply};
pub use server_line::{ServerLine, ServerLineError, parse_server_line};

/// How a command was spoken, and so how it is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// `VERB args...` lines.
    Text,
    /// One JSON object per line or frame.
    Json,
}

/// The `HELP` text: one line per command, as the grammar in DESIGN.md.
pub const HELP: &[&str] = &[
    "LOGIN <user> [<token>]      log in (first)",
    "SEND <user> <text...>       send a direct message; OK SENT <msg-id> <seq> once stored",
    "JOIN <room> | LEAVE <room>  enter or leave a room",
    "PUB <room> <text...>        publish to a room (kept in its history)",
    "TELL <user> <text...>       transient direct message: not stored, no answer, may be lost",
    "SAY <room> <text...>        transient room message: not in history, no answer, may be lost",
    "  use TELL/SAY for typing indicators, presence, live cursors;",
    "  use SEND/PUB for chat messages that must arrive",
    "ALL <text...>               broadcast to everyone (admin)",
    "ACK <seq>                   mark your inbox read up to <seq> on this device",
    "SYNC <after-seq> [<epoch>]  replay your inbox after <after-seq>",
    "HISTORY <room> [<count>]    replay a room's latest messages",
    "WHO <user>                  ONLINE <user> <n> or OFFLINE <user>",
    "PING | HELP | QUIT",
];
