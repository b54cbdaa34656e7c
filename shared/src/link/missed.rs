//! What a full link queue dropped, so that its destination can catch up.
//!
//! Direct messages are stored before they are routed, so a `Deliver` frame
//! dropped at a full queue (a server's queue towards a relay, or a relay's
//! queue towards a server) loses no message, only the push: the recipient's
//! live session would not see it until its next push or a `SYNC`. So the
//! side that dropped writes down whose push was lost, per destination
//! server, in a [`Missed`] book, and once that queue has drained it sends
//! the destination a [`Frame::CatchUp`] naming those users; the destination
//! server then brings their sessions up to their inbox heads.
//!
//! The book is bounded: at most `cap` users per destination (beyond that,
//! "every session on that server") and at most `cap` destinations (beyond
//! that, "every session on every server", [`ALL_SERVERS`]). A catch-up for
//! more sessions than were hit costs Redis reads, never a message.
//!
//! Frames that carry nothing stored (`Tell`, `Room`, heartbeats) are not
//! recorded: a catch-up reads inboxes, and those frames have none.
//!
//! [`MissedCell`] is the book behind a lock, with a flag that lets a writer
//! ask "anything to send?" per frame without taking the lock.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use super::Frame;

/// The `to_server` of a [`Frame::CatchUp`] meant for every server but the
/// sender (the relay forwards it to each of them).
pub const ALL_SERVERS: &str = "*";

/// Users (and destinations) a [`Missed`] book holds before it degrades to
/// "all": about 16 KiB of names in one frame at most, far below the link's
/// frame limit.
pub const DEFAULT_CAP: usize = 256;

/// Whose sessions on one destination must catch up.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Users {
    /// Every live session there.
    All,
    /// The sessions of these users.
    Some(BTreeSet<String>),
}

/// A bounded book of lost pushes, per destination server.
#[derive(Debug, Clone)]
pub struct Missed {
    cap: usize,
    by_server: BTreeMap<String, Users>,
}

impl Default for Missed {
    fn default() -> Self {
        Missed::new(DEFAULT_CAP)
    }
}

impl Missed {
    /// An empty book holding at most `cap` users per destination and `cap`
    /// destinations (at least 1 of each).
    pub fn new(cap: usize) -> Missed {
        Missed {
            cap: cap.max(1),
            by_server: BTreeMap::new(),
        }
    }

    /// Whether nothing is waiting to be sent.
    pub fn is_empty(&self) -> bool {
        self.by_server.is_empty()
    }

    /// Records what `frame`, dropped on its way to server `to`, would have
    /// brought; returns whether it carried anything stored (a `Deliver`: its
    /// user; a `CatchUp`: its users, or all). Other frames are ignored.
    pub fn record(&mut self, to: &str, frame: &Frame) -> bool {
        match frame {
            Frame::Deliver { user, .. } => self.user(to, user),
            Frame::CatchUp { users, .. } if users.is_empty() => self.all(to),
            Frame::CatchUp { users, .. } => {
                for user in users {
                    self.user(to, user);
                }
            }
            _ => return false,
        }
        true
    }

    /// `user`'s sessions on server `to` missed a push.
    pub fn user(&mut self, to: &str, user: &str) {
        if self.covered(to) {
            return;
        }
        if !self.by_server.contains_key(to) {
            if self.by_server.len() >= self.cap {
                self.all(ALL_SERVERS);
                return;
            }
            self.by_server
                .insert(to.to_owned(), Users::Some(BTreeSet::new()));
        }
        if let Some(users) = self.by_server.get_mut(to)
            && let Users::Some(set) = users
        {
            set.insert(user.to_owned());
            if set.len() > self.cap {
                *users = Users::All;
            }
        }
    }

    /// Every session on server `to` (on every server for [`ALL_SERVERS`])
    /// may have missed a push.
    pub fn all(&mut self, to: &str) {
        if to == ALL_SERVERS {
            self.by_server.clear();
        } else if self.covered(to) {
            return;
        }
        self.by_server.insert(to.to_owned(), Users::All);
    }

    /// Whether "all" is already recorded for `to` (or for every server).
    fn covered(&self, to: &str) -> bool {
        [to, ALL_SERVERS]
            .iter()
            .any(|s| self.by_server.get(*s) == Some(&Users::All))
    }

    /// Empties the book into one [`Frame::CatchUp`] per destination (empty
    /// `users`: every session there), destinations in name order.
    pub fn take(&mut self) -> Vec<Frame> {
        std::mem::take(&mut self.by_server)
            .into_iter()
            .map(|(to_server, users)| Frame::CatchUp {
                to_server,
                users: match users {
                    Users::All => Vec::new(),
                    Users::Some(set) => set.into_iter().collect(),
                },
            })
            .collect()
    }
}

/// A [`Missed`] book shared between the code that drops frames and the
/// writer that sends the catch-ups once its queue has drained.
#[derive(Debug, Default)]
pub struct MissedCell {
    book: Mutex<Missed>,
    /// Set while the book is not empty, so a writer can look per frame
    /// without taking the lock.
    pending: AtomicBool,
}

impl MissedCell {
    /// An empty cell whose book holds `cap` (see [`Missed::new`]).
    pub fn new(cap: usize) -> MissedCell {
        MissedCell {
            book: Mutex::new(Missed::new(cap)),
            pending: AtomicBool::new(false),
        }
    }

    // A poisoned lock only means a panic mid-insert into plain maps; the
    // book is still usable, and losing it would lose catch-ups.
    fn lock(&self) -> MutexGuard<'_, Missed> {
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// [`Missed::record`] under the lock.
    pub fn record(&self, to: &str, frame: &Frame) -> bool {
        let mut book = self.lock();
        let recorded = book.record(to, frame);
        if recorded {
            self.pending.store(true, Ordering::Release);
        }
        recorded
    }

    /// Whether anything is waiting (a cheap check, no lock).
    pub fn is_pending(&self) -> bool {
        self.pending.load(Ordering::Acquire)
    }

    /// `frame` was dropped at a full queue on its way to server `to`:
    /// records whose push was lost, then, if that queue has `drained` again
    /// by now, sends the catch-ups from here with `try_send` (the queue's
    /// writer may have looked at the book just before this record, and would
    /// not look again until the next frame); `try_send` gives back a frame
    /// the queue refused, which is put back. Returns the catch-ups sent.
    pub fn dropped(
        &self,
        to: &str,
        frame: &Frame,
        drained: impl FnOnce() -> bool,
        mut try_send: impl FnMut(Frame) -> Option<Frame>,
    ) -> u64 {
        if !(self.record(to, frame) && drained()) {
            return 0;
        }
        let mut sent = 0;
        for catch_up in self.take() {
            match try_send(catch_up) {
                None => sent += 1,
                Some(refused) => self.put_back([refused]),
            }
        }
        sent
    }

    /// Records again catch-ups taken from the book that could not be sent
    /// (each for its own `to_server`).
    pub fn put_back(&self, frames: impl IntoIterator<Item = Frame>) {
        for frame in frames {
            if let Some(to) = frame.to_server() {
                self.record(to, &frame);
            }
        }
    }

    /// [`Missed::take`] under the lock; nothing (and no lock) when empty.
    pub fn take(&self) -> Vec<Frame> {
        if !self.is_pending() {
            return Vec::new();
        }
        let mut book = self.lock();
        self.pending.store(false, Ordering::Release);
        book.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::DirectMsg;

    fn deliver(to: &str, user: &str) -> Frame {
        Frame::Deliver {
            to_server: to.into(),
            user: user.into(),
            seq: 1,
            except: None,
            msg: DirectMsg {
                id: "m".into(),
                from: "x".into(),
                to: user.into(),
                ts: 1,
                text: "hi".into(),
            },
        }
    }

    fn catch_up(to: &str, users: &[&str]) -> Frame {
        Frame::CatchUp {
            to_server: to.into(),
            users: users.iter().map(|u| u.to_string()).collect(),
        }
    }

    #[test]
    fn dropped_delivers_become_one_catch_up_per_server() {
        let mut m = Missed::new(8);
        assert!(m.is_empty());
        assert!(m.record("b", &deliver("b", "bob")));
        assert!(m.record("b", &deliver("b", "bob")));
        assert!(m.record("b", &deliver("b", "ann")));
        assert!(m.record("c", &deliver("c", "cy")));
        assert!(!m.is_empty());
        assert_eq!(
            m.take(),
            vec![catch_up("b", &["ann", "bob"]), catch_up("c", &["cy"])]
        );
        assert!(m.is_empty());
        assert_eq!(m.take(), vec![]);
    }

    #[test]
    fn frames_without_stored_messages_are_not_recorded() {
        let mut m = Missed::new(8);
        assert!(!m.record("b", &Frame::Ping(1)));
        assert!(!m.record(
            "b",
            &Frame::Interest {
                room: "r".into(),
                on: true
            }
        ));
        assert!(m.is_empty());
    }

    #[test]
    fn a_dropped_catch_up_is_recorded_again() {
        let mut m = Missed::new(8);
        // A relay records under the route's own server, whatever the frame says.
        assert!(m.record("b", &catch_up(ALL_SERVERS, &["bob", "ann"])));
        assert!(m.record("c", &catch_up("c", &[])));
        assert!(m.record("c", &deliver("c", "cy")));
        assert_eq!(
            m.take(),
            vec![catch_up("b", &["ann", "bob"]), catch_up("c", &[])]
        );
    }

    #[test]
    fn too_many_users_for_one_server_become_all_of_it() {
        let mut m = Missed::new(2);
        m.user("b", "u1");
        m.user("b", "u2");
        m.user("c", "u1");
        assert_eq!(m.clone().take().len(), 2);
        m.user("b", "u3");
        m.user("b", "u4");
        assert_eq!(m.take(), vec![catch_up("b", &[]), catch_up("c", &["u1"])]);
    }

    #[test]
    fn too_many_servers_become_every_server() {
        let mut m = Missed::new(2);
        m.user("a", "u");
        m.user("b", "u");
        m.user("c", "u");
        assert_eq!(m.clone().take(), vec![catch_up(ALL_SERVERS, &[])]);
        // Everything after is already covered.
        m.user("d", "v");
        m.all("e");
        assert_eq!(m.take(), vec![catch_up(ALL_SERVERS, &[])]);
    }

    #[test]
    fn all_covers_later_users_of_that_server() {
        let mut m = Missed::new(8);
        m.user("b", "bob");
        m.all("b");
        m.user("b", "ann");
        assert_eq!(m.take(), vec![catch_up("b", &[])]);
        m.all(ALL_SERVERS);
        m.user("b", "ann");
        assert_eq!(m.take(), vec![catch_up(ALL_SERVERS, &[])]);
    }

    #[test]
    fn the_cell_flags_pending_work_until_taken() {
        let cell = MissedCell::new(8);
        assert!(!cell.is_pending());
        assert_eq!(cell.take(), vec![]);
        assert!(!cell.record("b", &Frame::Ping(1)));
        assert!(!cell.is_pending());
        assert!(cell.record("b", &deliver("b", "bob")));
        assert!(cell.is_pending());
        assert_eq!(cell.take(), vec![catch_up("b", &["bob"])]);
        assert!(!cell.is_pending());
        assert!(cell.record("c", &catch_up("c", &[])));
        assert_eq!(cell.take(), vec![catch_up("c", &[])]);
    }
}
