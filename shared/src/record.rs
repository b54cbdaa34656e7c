//! A direct message as one inbox stream entry holds it: one field, encoded
//! once by the server (`<id> <from> <to> <ts> <text>`), so that Redis stores
//! and replays a single string and no script formats or splits fields.
//!
//! Ids and names never hold spaces ([`crate::ids::check_name`]), so the first
//! four spaces separate the fields and the text is the rest, spaces and all.

use crate::link::DirectMsg;

/// The stream entry's field name.
pub const FIELD: &str = "m";

/// Encodes `msg` as one inbox record.
pub fn encode(msg: &DirectMsg) -> String {
    format!("{} {} {} {} {}", msg.id, msg.from, msg.to, msg.ts, msg.text)
}

/// Decodes an inbox record; `None` when it is not one.
pub fn decode(record: &str) -> Option<DirectMsg> {
    let mut parts = record.splitn(5, ' ');
    let id = parts.next().filter(|s| !s.is_empty())?;
    let from = parts.next().filter(|s| !s.is_empty())?;
    let to = parts.next().filter(|s| !s.is_empty())?;
    let ts = parts.next()?.parse().ok()?;
    let text = parts.next()?;
    Some(DirectMsg {
        id: id.to_owned(),
        from: from.to_owned(),
        to: to.to_owned(),
        ts,
        text: text.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(text: &str) -> DirectMsg {
        DirectMsg {
            id: "m-1".into(),
            from: "alice".into(),
            to: "bob".into(),
            ts: 1_700_000_000_123,
            text: text.into(),
        }
    }

    #[test]
    fn records_round_trip_with_spaces_in_the_text() {
        for text in ["hi", "two  spaces and a trailing one ", "", "ünïcode ✓"] {
            assert_eq!(decode(&encode(&msg(text))), Some(msg(text)));
        }
        assert_eq!(
            encode(&msg("hi there")),
            "m-1 alice bob 1700000000123 hi there"
        );
    }

    #[test]
    fn broken_records_are_refused() {
        assert_eq!(decode(""), None);
        assert_eq!(decode("m-1 alice bob"), None);
        assert_eq!(decode("m-1 alice bob notanumber hi"), None);
        assert_eq!(decode("m-1 alice bob 12"), None);
        assert_eq!(decode(" alice bob 12 hi"), None);
    }
}
