//! The last purges this relay ran, for the dashboard and `GET /purges`: a
//! bounded ring (the oldest record goes when a new one comes), newest first
//! when read.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

/// Purges kept.
pub(crate) const KEPT: usize = 32;

/// One purge of a dead server's Redis entries.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct PurgeRecord {
    /// The server purged.
    pub(crate) server: String,
    /// Its epoch, when the purge was for one epoch.
    pub(crate) epoch: Option<u64>,
    /// Sessions removed.
    pub(crate) sessions: u64,
    /// Unix time in ms when the purge finished.
    pub(crate) at_ms: u64,
    /// Time from the server's last frame to the end of the purge; `None`
    /// for a purge by the registry sweep (nobody watched it die).
    pub(crate) time_to_purge_ms: Option<u64>,
    /// `death` (its link died here) or `sweep`.
    pub(crate) cause: &'static str,
}

/// The ring.
#[derive(Debug, Default)]
pub(crate) struct PurgeLog {
    records: Mutex<VecDeque<PurgeRecord>>,
}

impl PurgeLog {
    /// Records a purge that just finished.
    pub(crate) fn record(
        &self,
        server: &str,
        epoch: Option<u64>,
        sessions: u64,
        time_to_purge: Option<Duration>,
    ) {
        let record = PurgeRecord {
            server: server.to_owned(),
            epoch,
            sessions,
            at_ms: entry::now_ms(),
            time_to_purge_ms: time_to_purge
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            cause: if time_to_purge.is_some() {
                "death"
            } else {
                "sweep"
            },
        };
        // A poisoned lock only means a panic elsewhere mid-push; the deque is still valid.
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        if records.len() == KEPT {
            records.pop_front();
        }
        records.push_back(record);
    }

    /// The records, newest first.
    pub(crate) fn recent(&self) -> Vec<PurgeRecord> {
        let records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        records.iter().rev().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_and_reads_them_newest_first() {
        let log = PurgeLog::default();
        for i in 0..(KEPT + 3) {
            log.record(
                &format!("s{i}"),
                Some(1),
                2,
                Some(Duration::from_millis(1500)),
            );
        }
        let recent = log.recent();
        assert_eq!(recent.len(), KEPT);
        assert_eq!(recent[0].server, format!("s{}", KEPT + 2));
        assert_eq!(recent[KEPT - 1].server, "s3");
        assert_eq!(recent[0].time_to_purge_ms, Some(1500));
        assert_eq!(recent[0].cause, "death");
        log.record("x", None, 0, None);
        assert_eq!(log.recent()[0].cause, "sweep");
    }
}
