//! Refusing a Redis that may evict keys.
//!
//! With a `maxmemory` limit and any `maxmemory-policy` but `noeviction`,
//! Redis deletes keys when it fills up: inboxes (they carry a TTL, so even
//! the `volatile-*` policies take them), idempotency records, session and
//! registry entries. Acknowledged messages would vanish without an error.
//! So every new connection reads `INFO memory` from every node it reaches
//! (each master and replica of a cluster) and refuses one that may evict,
//! unless `--redis-allow-eviction` says the operator wants that. Without a
//! limit (`maxmemory 0`) Redis never evicts, whatever the policy. A node
//! whose `INFO` cannot be read (renamed or forbidden) is let through with a
//! warning: nothing says it evicts.

use redis::Value;

/// What `INFO memory` says about eviction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Memory {
    /// `maxmemory` in bytes; 0: no limit.
    pub max_bytes: u64,
    /// `maxmemory_policy`.
    pub policy: String,
}

impl Memory {
    /// Reads the two fields from an `INFO` reply's text; `None` when it
    /// does not hold them.
    pub fn from_info(info: &str) -> Option<Memory> {
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.trim_end().strip_prefix(name)?.strip_prefix(':'))
        };
        Some(Memory {
            max_bytes: field("maxmemory")?.parse().ok()?,
            policy: field("maxmemory_policy")?.to_owned(),
        })
    }

    /// Whether Redis may delete keys to make room.
    pub fn may_evict(&self) -> bool {
        self.max_bytes > 0 && self.policy != "noeviction"
    }
}

/// The nodes of an `INFO memory` reply that may evict, each as
/// `"<node> (maxmemory <bytes>, maxmemory-policy <policy>)"`, and the nodes
/// whose reply could not be read. A single Redis answers with text (named
/// `single` here), a cluster with a map from node address to text.
pub fn evicting_nodes(reply: &Value, single: &str) -> (Vec<String>, Vec<String>) {
    let mut evicting = Vec::new();
    let mut unread = Vec::new();
    let mut one =
        |node: String, v: &Value| match crate::text(v).as_deref().and_then(Memory::from_info) {
            Some(m) if m.may_evict() => evicting.push(format!(
                "{node} (maxmemory {}, maxmemory-policy {})",
                m.max_bytes, m.policy
            )),
            Some(_) => {}
            None => unread.push(node),
        };
    match reply {
        Value::Map(nodes) => {
            for (node, v) in nodes {
                one(crate::text(node).unwrap_or_else(|| "?".to_owned()), v);
            }
        }
        v => one(single.to_owned(), v),
    }
    (evicting, unread)
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "# Memory\r\nused_memory:1041896\r\nmaxmemory:67108864\r\n\
                        maxmemory_human:64.00M\r\nmaxmemory_policy:allkeys-lru\r\n";

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn a_limit_with_a_policy_other_than_noeviction_may_evict() {
        let m = Memory::from_info(INFO).expect("parsed");
        assert_eq!(m.max_bytes, 64 << 20);
        assert_eq!(m.policy, "allkeys-lru");
        assert!(m.may_evict());
        let no_limit = INFO.replace("maxmemory:67108864", "maxmemory:0");
        assert!(!Memory::from_info(&no_limit).expect("parsed").may_evict());
        let noeviction = INFO.replace("allkeys-lru", "noeviction");
        assert!(!Memory::from_info(&noeviction).expect("parsed").may_evict());
        assert_eq!(Memory::from_info("# Memory\r\nused_memory:1\r\n"), None);
    }

    #[test]
    fn every_node_of_a_cluster_reply_is_checked() {
        let ok = INFO.replace("allkeys-lru", "noeviction");
        let reply = Value::Map(vec![
            (bulk("10.0.0.1:7000"), bulk(&ok)),
            (bulk("10.0.0.2:7000"), bulk(INFO)),
            (bulk("10.0.0.3:7000"), Value::Nil),
        ]);
        let (evicting, unread) = evicting_nodes(&reply, "redis");
        assert_eq!(
            evicting,
            ["10.0.0.2:7000 (maxmemory 67108864, maxmemory-policy allkeys-lru)"]
        );
        assert_eq!(unread, ["10.0.0.3:7000"]);
        assert_eq!(evicting_nodes(&bulk(&ok), "redis"), (vec![], vec![]));
        assert_eq!(
            evicting_nodes(&bulk(INFO), "redis://r:6379/").0,
            ["redis://r:6379/ (maxmemory 67108864, maxmemory-policy allkeys-lru)"]
        );
    }
}
