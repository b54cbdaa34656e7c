//! This device's place in its user's inbox: the seq-ordered, de-duplicated
//! stream of direct messages, and when to ask for a `SYNC`. Pure state, no
//! I/O; the client's task feeds it what arrives and does what it says.
//!
//! A user's inbox numbers every direct message (received and sent) 1, 2, 3,
//! ...; each push carries its number. This device delivers them in order,
//! each once:
//!
//! - a number at or below the last delivered is a duplicate (a replay after
//!   a reconnect, a login replay) and is dropped;
//! - the next number is delivered, with any held ones that now follow;
//! - a number further on means some went missing (a push lost while a link
//!   was down, or a copy of this session's own send, which the server does
//!   not push back to it): the message is held and a `SYNC <last> <epoch>`
//!   is asked for, once; its replay fills the hole.
//!
//! A number already delivered but with another message id means the inbox
//! started over under this device (Redis lost it, and live pushes count
//! from 1 again, which the push does not say): that too asks for a `SYNC`,
//! whose epoch check answers `ERR gap` and replays the new inbox.
//!
//! When `SYNC` ends (`OK SYNC <last> <epoch>`), whatever is still missing up
//! to `last` can no longer be replayed and is reported as lost, never
//! skipped silently; `ERR gap` (trimmed, or an inbox that started over)
//! says the same up front.

use std::collections::{BTreeMap, VecDeque};

use shared::link::DirectMsg;

/// Most out-of-order messages held while a `SYNC` is under way; past it the
/// newest are dropped (the replay brings them again).
pub const MAX_HELD: usize = 4096;

/// How many delivered `(seq, message id)` pairs are remembered to tell a
/// duplicate from a message of an inbox that started over.
pub const RECENT: usize = 256;

/// Where a device is in its inbox, to resume from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Position {
    /// The last seq delivered.
    pub seq: u64,
    /// The inbox epoch that seq belongs to (from `OK SYNC`), when known.
    pub epoch: Option<String>,
}

/// What the caller must do after feeding the inbox.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Step {
    /// Messages to hand to the application, in order.
    pub deliver: Vec<(u64, DirectMsg)>,
    /// Seq ranges that cannot be recovered, to report.
    pub lost: Vec<(u64, u64)>,
    /// Send `SYNC <seq> <epoch>` from this position.
    pub sync: Option<Position>,
}

/// The inbox tracker.
#[derive(Debug, Default)]
pub struct Inbox {
    pos: Position,
    held: BTreeMap<u64, DirectMsg>,
    syncing: bool,
    recent: VecDeque<(u64, String)>,
}

impl Inbox {
    /// Starts at `pos` (seq 0: before the first message).
    pub fn new(pos: Position) -> Inbox {
        Inbox {
            pos,
            held: BTreeMap::new(),
            syncing: false,
            recent: VecDeque::new(),
        }
    }

    /// Where this device is.
    pub fn position(&self) -> &Position {
        &self.pos
    }

    /// Whether a `SYNC` is under way.
    pub fn syncing(&self) -> bool {
        self.syncing
    }

    /// A `SYNC` is being sent (after a reconnect): no other is asked for
    /// until it ends. Returns the position to sync from.
    pub fn start_sync(&mut self) -> Position {
        self.syncing = true;
        self.pos.clone()
    }

    /// The connection broke: a `SYNC` in flight will never end.
    pub fn disconnected(&mut self) {
        self.syncing = false;
    }

    /// A pushed or replayed direct message numbered `seq`.
    pub fn message(&mut self, seq: u64, msg: DirectMsg) -> Step {
        let mut step = Step::default();
        if seq <= self.pos.seq {
            let duplicate = self.recent.iter().any(|(s, id)| *s == seq && *id == msg.id);
            if !duplicate && !self.syncing {
                step.sync = Some(self.start_sync());
            }
            return step;
        }
        if self.held.contains_key(&seq) {
            return step;
        }
        if seq == self.pos.seq + 1 {
            self.deliver(&mut step, seq, msg);
            self.drain(&mut step);
            return step;
        }
        if self.held.len() < MAX_HELD {
            self.held.insert(seq, msg);
        }
        if !self.syncing {
            step.sync = Some(self.start_sync());
        }
        step
    }

    /// `OK SYNC <last> <epoch>`: the inbox has been replayed up to `last`.
    pub fn synced(&mut self, last: u64, epoch: String) -> Step {
        let mut step = Step::default();
        self.syncing = false;
        // A user with no inbox yet has no epoch either.
        self.pos.epoch = (!epoch.is_empty()).then_some(epoch);
        // Held messages up to `last` that still do not follow: the ones
        // between were not replayed, so they are gone.
        while let Some(entry) = self.held.first_entry() {
            let seq = *entry.key();
            if seq > last {
                break;
            }
            let msg = entry.remove();
            if seq > self.pos.seq + 1 {
                step.lost.push((self.pos.seq + 1, seq - 1));
            }
            if seq > self.pos.seq {
                self.deliver(&mut step, seq, msg);
            }
        }
        if last > self.pos.seq {
            step.lost.push((self.pos.seq + 1, last));
            self.pos.seq = last;
        }
        self.drain(&mut step);
        if !self.held.is_empty() {
            // Newer pushes wait behind a hole made after the replay was read.
            step.sync = Some(self.start_sync());
        }
        step
    }

    /// `ERR gap <from> <to>`: those cannot be replayed. A range starting at
    /// or below this device's position means the inbox started over (it
    /// was lost): the replay that follows counts from 1 again.
    pub fn gap(&mut self, from: u64, to: u64) -> Step {
        let mut step = Step::default();
        step.lost.push((from, to));
        if from <= self.pos.seq {
            self.pos.seq = 0;
            self.held.clear();
            self.recent.clear();
        } else {
            self.pos.seq = self.pos.seq.max(to);
            self.held.retain(|seq, _| *seq > to);
            self.drain(&mut step);
        }
        step
    }

    fn deliver(&mut self, step: &mut Step, seq: u64, msg: DirectMsg) {
        self.pos.seq = seq;
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back((seq, msg.id.clone()));
        step.deliver.push((seq, msg));
    }

    fn drain(&mut self, step: &mut Step) {
        while let Some(entry) = self.held.first_entry() {
            let seq = *entry.key();
            if seq <= self.pos.seq {
                entry.remove();
            } else if seq == self.pos.seq + 1 {
                let msg = entry.remove();
                self.deliver(step, seq, msg);
            } else {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(n: u64) -> DirectMsg {
        DirectMsg {
            id: format!("m{n}"),
            from: "a".into(),
            to: "b".into(),
            ts: n,
            text: format!("t{n}"),
        }
    }

    fn seqs(step: &Step) -> Vec<u64> {
        step.deliver.iter().map(|(s, _)| *s).collect()
    }

    #[test]
    fn in_order_messages_pass_and_duplicates_drop() {
        let mut inbox = Inbox::default();
        assert_eq!(seqs(&inbox.message(1, m(1))), [1]);
        assert_eq!(seqs(&inbox.message(2, m(2))), [2]);
        assert_eq!(inbox.message(2, m(2)), Step::default());
        assert_eq!(inbox.message(1, m(1)), Step::default());
        assert_eq!(inbox.position().seq, 2);
    }

    #[test]
    fn a_gap_asks_for_one_sync_whose_replay_fills_it() {
        let mut inbox = Inbox::new(Position {
            seq: 4,
            epoch: Some("e".into()),
        });
        let step = inbox.message(7, m(7));
        assert!(step.deliver.is_empty());
        assert_eq!(
            step.sync,
            Some(Position {
                seq: 4,
                epoch: Some("e".into())
            })
        );
        // A second hole while the first sync runs: no second sync.
        assert_eq!(inbox.message(9, m(9)).sync, None);
        // The replay: 5, 6, 7 (a duplicate of the held one), 8, 9.
        assert_eq!(seqs(&inbox.message(5, m(5))), [5]);
        assert_eq!(seqs(&inbox.message(6, m(6))), [6, 7]);
        assert_eq!(inbox.message(7, m(7)), Step::default());
        assert_eq!(seqs(&inbox.message(8, m(8))), [8, 9]);
        let end = inbox.synced(9, "e".into());
        assert_eq!(end, Step::default());
        assert!(!inbox.syncing());
    }

    #[test]
    fn what_a_sync_could_not_replay_is_reported_lost() {
        let mut inbox = Inbox::new(Position {
            seq: 2,
            epoch: None,
        });
        inbox.message(6, m(6));
        inbox.message(4, m(4));
        let step = inbox.synced(6, "e2".into());
        assert_eq!(seqs(&step), [4, 6]);
        assert_eq!(step.lost, [(3, 3), (5, 5)]);
        assert_eq!(inbox.position().epoch.as_deref(), Some("e2"));
    }

    #[test]
    fn a_push_newer_than_the_replay_syncs_again() {
        let mut inbox = Inbox::default();
        inbox.message(3, m(3));
        let step = inbox.synced(2, "e".into());
        assert_eq!(step.lost, [(1, 2)]);
        assert_eq!(seqs(&step), [3]);
        assert_eq!(step.sync, None);
        inbox.message(6, m(6));
        let step = inbox.synced(4, "e".into());
        assert_eq!(step.lost, [(4, 4)]);
        assert!(step.sync.is_some(), "6 still waits behind 5");
    }

    #[test]
    fn an_old_seq_with_a_new_id_means_the_inbox_started_over() {
        let mut inbox = Inbox::default();
        inbox.message(1, m(1));
        inbox.message(2, m(2));
        // The same seq and id again: a duplicate, nothing to do.
        assert_eq!(inbox.message(1, m(1)), Step::default());
        // Seq 1 with another id: the inbox was lost; sync to find out.
        let mut other = m(1);
        other.id = "new-1".into();
        assert!(inbox.message(1, other).sync.is_some());
    }

    #[test]
    fn an_inbox_that_started_over_counts_from_one() {
        let mut inbox = Inbox::new(Position {
            seq: 40,
            epoch: Some("old".into()),
        });
        let step = inbox.gap(1, 40);
        assert_eq!(step.lost, [(1, 40)]);
        assert_eq!(seqs(&inbox.message(1, m(1))), [1]);
        let mut trimmed = Inbox::new(Position {
            seq: 3,
            epoch: None,
        });
        trimmed.gap(4, 9);
        assert_eq!(seqs(&trimmed.message(10, m(10))), [10]);
    }
}
