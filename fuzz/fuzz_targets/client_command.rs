//! Fuzz target: the client command parser (`shared::client::parse`), text
//! lines and JSON objects, the first code that sees a client's words.
//!
//! Each input is parsed as it comes (valid UTF-8 only, as a WebSocket text
//! frame or a telnet line would be), then forced down the JSON path with a
//! leading `{`. Parsing must never panic; a refusal must render as exactly
//! one line; an accepted message body must render as exactly one line when
//! pushed to a telnet client (no forged `MSG` lines by embedded newlines).

#![no_main]

use libfuzzer_sys::fuzz_target;
use shared::client::{Command, Encoding, Event, Reply, parse};
use shared::link::DirectMsg;

fn check(input: &str) {
    match parse(input) {
        Ok(req) => {
            let text = match req.cmd {
                Command::Send { text, .. } | Command::Pub { text, .. } | Command::All { text } => {
                    text
                }
                _ => return,
            };
            let event = Event::Direct {
                seq: 1,
                msg: DirectMsg {
                    id: "m1".into(),
                    from: "alice".into(),
                    to: "bob".into(),
                    ts: 0,
                    text,
                },
            };
            for enc in [Encoding::Text, Encoding::Json] {
                let line = event.render(enc);
                assert!(!line.contains(['\n', '\r']), "a push spans lines: {line:?}");
            }
        }
        Err((err, enc, cid)) => {
            let line = Reply::from(err).render(enc, cid.as_deref());
            assert!(!line.contains(['\n', '\r']), "an ERR spans lines: {line:?}");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    check(input);
    check(&format!("{{{input}"));
});
