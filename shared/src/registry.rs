//! The server registry entry (`sb:{s:<id>}:srv`) as both binaries read it:
//! servers write it, the relay sweeps it and shows it, servers read each
//! other's to name alternatives at the cap. Parsed here, once.

use std::collections::HashMap;

/// One registry entry, parsed leniently: a field that is missing or not a
/// number is `None`, never an error.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entry {
    /// `epoch`, the server's current life.
    pub epoch: Option<u64>,
    /// `ws`, WebSocket/HTTP address.
    pub ws: Option<String>,
    /// `tcp`, line-protocol address.
    pub tcp: Option<String>,
    /// `conns`, client connections now.
    pub conns: Option<u64>,
    /// `cap`, most client connections.
    pub cap: Option<u64>,
    /// `seen`, unix ms of the server's last refresh.
    pub seen: Option<u64>,
}

impl Entry {
    /// Parses an `HGETALL` answer; `None` for an empty one (no such key).
    pub fn parse(fields: &HashMap<String, String>) -> Option<Entry> {
        if fields.is_empty() {
            return None;
        }
        let num = |k: &str| fields.get(k).and_then(|v| v.trim().parse::<u64>().ok());
        let text = |k: &str| fields.get(k).filter(|v| !v.is_empty()).cloned();
        Some(Entry {
            epoch: num("epoch"),
            ws: text("ws"),
            tcp: text("tcp"),
            conns: num("conns"),
            cap: num("cap"),
            seen: num("seen"),
        })
    }

    /// Milliseconds since `seen`, by this host's clock (0 if `seen` is in
    /// the future).
    pub fn seen_ms_ago(&self, now_ms: u64) -> Option<u64> {
        self.seen.map(|s| now_ms.saturating_sub(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_parse_leniently() {
        let mut h = HashMap::new();
        assert_eq!(Entry::parse(&h), None);
        h.insert("epoch".to_string(), "17".to_string());
        h.insert("ws".to_string(), "127.0.0.1:9001".to_string());
        h.insert("conns".to_string(), "nope".to_string());
        h.insert("seen".to_string(), "1000".to_string());
        let e = Entry::parse(&h).expect("entry");
        assert_eq!(e.epoch, Some(17));
        assert_eq!(e.ws.as_deref(), Some("127.0.0.1:9001"));
        assert_eq!(e.tcp, None);
        assert_eq!(e.conns, None);
        assert_eq!(e.seen_ms_ago(1500), Some(500));
        assert_eq!(e.seen_ms_ago(500), Some(0));
    }
}
