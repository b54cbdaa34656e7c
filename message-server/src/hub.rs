//! The sessions on this server, by user and by room, and the pushes to them.
//!
//! Each session owns a bounded [`Outbox`] of [`Out`]s; the hub only ever
//! pushes into it without waiting. A session whose queue is full is too slow to keep
//! up: it is kicked (closed with 1008) rather than allowed to grow memory
//! or stall everyone else. Its messages are safe in its inbox; it gets them
//! back with `SYNC` when it reconnects.
//!
//! After a fault that may have cost a live session a push (a relay link
//! lost or made again, the session map written again, Redis back after a
//! failure), [`Hub::catch_up_all`] wakes every session, which then reads its
//! inbox from the last seq it wrote to the head and writes what it missed
//! (see `session::catch_up`); [`Hub::catch_up_users`] wakes only the
//! sessions of the users a full link queue dropped pushes for (a `CatchUp`
//! frame from the relay). The wake-up is a flag in the outbox, not a
//! queue item: it never fills a queue and several collapse into one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::metrics::Metrics;
pub use crate::outbox::Out;
use crate::outbox::Outbox;
use shared::client::Event;
use shared::ids::SessionId;

/// A handle on one local session: its id and its outbox (one allocation).
#[derive(Debug, Clone)]
pub struct SessionHandle {
    /// The session.
    pub id: SessionId,
    /// Its outbound queue, kick and catch-up signals.
    pub outbox: Arc<Outbox>,
}

impl SessionHandle {
    /// A handle on a new session whose queue holds `queue_len` items.
    pub fn new(id: SessionId, queue_len: usize) -> SessionHandle {
        SessionHandle {
            id,
            outbox: Arc::new(Outbox::new(queue_len)),
        }
    }

    /// Queues `out`; kicks the session (counted once) if its queue is full.
    /// Returns whether it was queued.
    pub fn push(&self, out: Out, metrics: &Metrics) -> bool {
        if self.outbox.push(out) {
            return true;
        }
        if self.outbox.kick() {
            metrics.slow_consumers.inc();
        }
        false
    }
}

#[derive(Default)]
struct Inner {
    users: HashMap<String, Vec<SessionHandle>>,
    rooms: HashMap<String, Vec<SessionHandle>>,
}

/// Local sessions and rooms.
pub struct Hub {
    inner: Mutex<Inner>,
    metrics: Metrics,
}

impl Hub {
    /// An empty hub counting into `metrics`.
    pub fn new(metrics: Metrics) -> Hub {
        Hub {
            inner: Mutex::new(Inner::default()),
            metrics,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain maps behind; keep going.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a logged-in session of `user`; returns whether it is the user's
    /// first session here.
    pub fn add(&self, user: &str, handle: SessionHandle) -> bool {
        let mut inner = self.lock();
        let list = inner.users.entry(user.to_owned()).or_default();
        list.push(handle);
        self.metrics.sessions.inc();
        list.len() == 1
    }

    /// Removes a session (and its room memberships); returns the rooms that
    /// have no local member any more.
    pub fn remove(&self, user: &str, id: SessionId, rooms: &[String]) -> Vec<String> {
        let mut inner = self.lock();
        if let Some(list) = inner.users.get_mut(user) {
            let before = list.len();
            list.retain(|h| h.id != id);
            if list.len() < before {
                self.metrics.sessions.dec();
            }
            if list.is_empty() {
                inner.users.remove(user);
            }
        }
        rooms
            .iter()
            .filter(|room| Self::leave_locked(&mut inner, room, id))
            .cloned()
            .collect()
    }

    /// Pushes a direct message to every local session of `user` but `except`.
    /// Returns how many sessions got it.
    pub fn push_user(&self, user: &str, event: &Arc<Event>, except: Option<SessionId>) -> usize {
        self.push_user_with(user, except, || Arc::clone(event))
    }

    /// [`Hub::push_user`] with the event made only when a session here is
    /// to get it: most messages have no other local session to go to (the
    /// recipient is on another server, the sender has no other device), and
    /// then no copy of the message is made at all.
    pub fn push_user_with(
        &self,
        user: &str,
        except: Option<SessionId>,
        event: impl FnOnce() -> Arc<Event>,
    ) -> usize {
        let inner = self.lock();
        let Some(list) = inner.users.get(user) else {
            return 0;
        };
        let mut to = list.iter().filter(|h| Some(h.id) != except).peekable();
        if to.peek().is_none() {
            return 0;
        }
        self.push_all(to, &event())
    }

    fn push_all<'a>(
        &self,
        to: impl Iterator<Item = &'a SessionHandle>,
        event: &Arc<Event>,
    ) -> usize {
        let mut n = 0;
        for h in to {
            if h.push(Out::Event(Arc::clone(event)), &self.metrics) {
                n += 1;
            }
        }
        self.metrics.pushed_local.inc_by(n as u64);
        n
    }

    /// Every local session (for re-writing them to Redis, and for broadcast).
    pub fn sessions(&self) -> Vec<(String, SessionId)> {
        self.lock()
            .users
            .iter()
            .flat_map(|(u, list)| list.iter().map(move |h| (u.clone(), h.id)))
            .collect()
    }

    /// Wakes every logged-in session to catch up with its inbox: a push may
    /// have been lost. Returns how many were woken.
    pub fn catch_up_all(&self) -> usize {
        let inner = self.lock();
        let mut n = 0;
        for h in inner.users.values().flatten() {
            h.outbox.catch_up();
            n += 1;
        }
        self.metrics.catch_ups.inc();
        n
    }

    /// Wakes the sessions of `users` to catch up with their inboxes (a
    /// [`shared::link::Frame::CatchUp`]: their pushes were dropped on the
    /// way); every session when `users` is empty. Returns how many were
    /// woken.
    pub fn catch_up_users(&self, users: &[String]) -> usize {
        if users.is_empty() {
            return self.catch_up_all();
        }
        let inner = self.lock();
        let mut n = 0;
        for h in users.iter().filter_map(|u| inner.users.get(u)).flatten() {
            h.outbox.catch_up();
            n += 1;
        }
        self.metrics.catch_ups.inc();
        n
    }

    /// Pushes a broadcast to every local session but `except`.
    pub fn push_everyone(&self, event: &Arc<Event>, except: Option<SessionId>) -> usize {
        let inner = self.lock();
        self.push_all(
            inner
                .users
                .values()
                .flatten()
                .filter(|h| Some(h.id) != except),
            event,
        )
    }

    /// Live local sessions of `user`.
    pub fn count(&self, user: &str) -> usize {
        self.lock().users.get(user).map_or(0, Vec::len)
    }

    /// Adds a session to a room; returns true if it is the room's first
    /// local member (so the relay must hear of it).
    pub fn join(&self, room: &str, handle: SessionHandle) -> bool {
        let mut inner = self.lock();
        let members = inner.rooms.entry(room.to_owned()).or_default();
        if members.iter().any(|h| h.id == handle.id) {
            return false;
        }
        members.push(handle);
        members.len() == 1
    }

    /// Removes a session from a room; returns true if the room has no local
    /// member left (so the relay must hear of it).
    pub fn leave(&self, room: &str, id: SessionId) -> bool {
        Self::leave_locked(&mut self.lock(), room, id)
    }

    fn leave_locked(inner: &mut Inner, room: &str, id: SessionId) -> bool {
        let Some(members) = inner.rooms.get_mut(room) else {
            return false;
        };
        let before = members.len();
        members.retain(|h| h.id != id);
        let emptied = members.is_empty() && before > 0;
        if members.is_empty() {
            inner.rooms.remove(room);
        }
        emptied
    }

    /// Pushes a room message to every local member but `except`.
    pub fn push_room(&self, room: &str, event: &Arc<Event>, except: Option<SessionId>) -> usize {
        let inner = self.lock();
        let Some(members) = inner.rooms.get(room) else {
            return 0;
        };
        self.push_all(members.iter().filter(|h| Some(h.id) != except), event)
    }

    /// Rooms with at least one local member (told to a relay on (re)link).
    pub fn rooms(&self) -> Vec<String> {
        self.lock().rooms.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::link::RoomMsg;

    fn handle(id: u64, cap: usize) -> (SessionHandle, Arc<Outbox>) {
        let h = SessionHandle::new(SessionId(id), cap);
        let outbox = Arc::clone(&h.outbox);
        (h, outbox)
    }

    fn event() -> Arc<Event> {
        Arc::new(Event::Room(RoomMsg {
            room: "r".into(),
            from: "a".into(),
            id: "m".into(),
            ts: 1,
            text: "t".into(),
        }))
    }

    #[test]
    fn pushes_reach_every_session_but_the_excepted_one() {
        let hub = Hub::new(Metrics::default());
        let (a1, r1) = handle(1, 4);
        let (a2, r2) = handle(2, 4);
        hub.add("alice", a1);
        hub.add("alice", a2);
        assert_eq!(hub.push_user("alice", &event(), Some(SessionId(1))), 1);
        assert!(r1.try_pop().is_none());
        assert!(r2.try_pop().is_some());
        assert_eq!(hub.count("alice"), 2);
        hub.remove("alice", SessionId(1), &[]);
        assert_eq!(hub.count("alice"), 1);
    }

    #[test]
    fn an_event_is_made_only_when_a_session_here_gets_it() {
        let hub = Hub::new(Metrics::default());
        let (a1, r1) = handle(1, 4);
        hub.add("alice", a1);
        let made = std::cell::Cell::new(0);
        let make = || {
            made.set(made.get() + 1);
            event()
        };
        assert_eq!(hub.push_user_with("bob", None, make), 0, "nobody here");
        assert_eq!(
            hub.push_user_with("alice", Some(SessionId(1)), make),
            0,
            "only the excepted session here"
        );
        assert_eq!(made.get(), 0, "no event made for nobody");
        assert_eq!(hub.push_user_with("alice", None, make), 1);
        assert_eq!(made.get(), 1);
        assert!(r1.try_pop().is_some());
    }

    #[test]
    fn queue_items_stay_two_words() {
        assert!(std::mem::size_of::<Out>() <= 16);
    }

    #[test]
    fn a_full_queue_kicks_the_session() {
        let metrics = Metrics::default();
        let hub = Hub::new(metrics.clone());
        let (h, outbox) = handle(1, 1);
        hub.add("bob", h);
        assert_eq!(hub.push_user("bob", &event(), None), 1);
        assert_eq!(hub.push_user("bob", &event(), None), 0);
        assert_eq!(hub.push_user("bob", &event(), None), 0);
        assert!(outbox.is_kicked());
        assert_eq!(metrics.slow_consumers.get(), 1, "counted once");
    }

    #[test]
    fn catch_up_all_wakes_every_session() {
        let hub = Hub::new(Metrics::default());
        let (a, oa) = handle(1, 4);
        let (b, ob) = handle(2, 4);
        hub.add("alice", a);
        hub.add("bob", b);
        assert_eq!(hub.catch_up_all(), 2);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        for o in [oa, ob] {
            assert!(matches!(
                o.poll_next(&mut cx, true),
                std::task::Poll::Ready(crate::outbox::Next::CatchUp)
            ));
        }
    }

    #[test]
    fn rooms_report_first_join_and_last_leave() {
        let hub = Hub::new(Metrics::default());
        let (a, _ra) = handle(1, 4);
        let (b, _rb) = handle(2, 4);
        assert!(hub.join("lobby", a.clone()));
        assert!(!hub.join("lobby", a));
        assert!(!hub.join("lobby", b));
        assert!(!hub.leave("lobby", SessionId(1)));
        assert_eq!(
            hub.remove("x", SessionId(2), &["lobby".to_owned()]),
            vec!["lobby".to_owned()]
        );
        assert!(hub.rooms().is_empty());
    }
}
