//! The routing table: which server is linked here, through which queue, and
//! which servers have members in which room.
//!
//! It holds only what this relay saw on its own links, so several relays can
//! run side by side (each server links to every relay): nothing here claims
//! to know the whole cluster, and a frame for a server not linked here is
//! simply not routable by this relay.
//!
//! Each link gets a unique number when it registers. Removal and room
//! interest are checked against that number, so a link that was replaced by
//! a newer one for the same server (a reconnect, or a restart) can never
//! remove or change the newer link's entries.
//!
//! A frame that finds a route's queue full is dropped; if it carried a push
//! of a stored message (`Deliver`, `CatchUp`), the route writes down whose
//! ([`Route::missed`]), and once the queue has drained the link's writer
//! sends that server a `CatchUp` (see [`crate::link`]).
//!
//! The table sits behind a `std` lock held only for map operations and
//! `try_send`s, never across an `.await`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use shared::link::missed::MissedCell;
use shared::link::{BROADCAST_ROOM, Frame, ServerAddrs};
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio_util::sync::CancellationToken;

/// Most rooms one server may declare interest in; further `Interest`
/// frames are ignored (and logged once) so one server cannot grow the table
/// without bound.
pub const MAX_ROOMS_PER_SERVER: usize = 1 << 16;

/// One linked server, as the table holds it.
#[derive(Debug, Clone)]
pub struct Route {
    /// This link's number, unique within this relay's life.
    pub link: u64,
    /// The server's epoch, from its `Hello`.
    pub epoch: u64,
    /// The addresses the server reported.
    pub addrs: ServerAddrs,
    /// The link's outbound queue (bounded, `--link-queue`).
    pub tx: mpsc::Sender<Frame>,
    /// Cancelled to close the link (when a newer one replaces it).
    pub close: CancellationToken,
    /// Pushes of stored messages dropped at this link's full queue; the
    /// link's writer sends them as `CatchUp` once the queue has drained.
    pub missed: Arc<MissedCell>,
}

/// What became of a frame given to the table.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Queued towards a target.
    pub forwarded: u64,
    /// Target not linked here.
    pub no_route: u64,
    /// Target's queue full.
    pub queue_full: u64,
    /// `CatchUp` frames the relay queued itself, for pushes dropped at a
    /// full queue that had drained by the time they were written down.
    pub catch_ups_sent: u64,
}

/// What `set_interest` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interest {
    /// Recorded (or nothing to change).
    Done,
    /// The link is no longer the server's current one; ignored.
    Stale,
    /// The server is at [`MAX_ROOMS_PER_SERVER`]; ignored.
    TooMany,
}

#[derive(Debug, Default)]
struct Table {
    links: HashMap<String, Route>,
    /// room -> servers with members there.
    rooms: HashMap<String, HashSet<String>>,
    /// server -> rooms it declared, to clean `rooms` when its link goes.
    interests: HashMap<String, HashSet<String>>,
}

impl Table {
    fn drop_interests(&mut self, server: &str) {
        let Some(rooms) = self.interests.remove(server) else {
            return;
        };
        for room in rooms {
            if let Some(servers) = self.rooms.get_mut(&room) {
                servers.remove(server);
                if servers.is_empty() {
                    self.rooms.remove(&room);
                }
            }
        }
    }
}

/// The routing table of one relay.
#[derive(Debug, Default)]
pub struct Routes {
    table: RwLock<Table>,
    next_link: AtomicU64,
}

/// Whether a route's queue has room again after dropping: at most half full.
pub(crate) fn drained(tx: &mpsc::Sender<Frame>) -> bool {
    tx.capacity() >= tx.max_capacity() / 2
}

fn send(server: &str, route: &Route, frame: Frame, outcome: &mut Outcome) {
    match route.tx.try_send(frame) {
        Ok(()) => outcome.forwarded += 1,
        Err(TrySendError::Full(frame)) => {
            outcome.queue_full += 1;
            dropped(server, route, &frame, outcome);
        }
        // The link task is ending; to the sender that is the same as no route.
        // (The server's next link wakes all its sessions anyway.)
        Err(TrySendError::Closed(_)) => outcome.no_route += 1,
    }
}

/// `frame` found the queue to `server` full: write down whose push was
/// lost (see [`shared::link::missed::MissedCell::dropped`]).
fn dropped(server: &str, route: &Route, frame: &Frame, outcome: &mut Outcome) {
    outcome.catch_ups_sent += route.missed.dropped(
        server,
        frame,
        || drained(&route.tx),
        |f| route.tx.try_send(f).err().map(TrySendError::into_inner),
    );
}

impl Routes {
    /// An empty table.
    pub fn new() -> Routes {
        Routes::default()
    }

    // A poisoned lock only means another thread panicked mid-update of
    // plain maps; the maps are still usable, and refusing to route would
    // turn one bug into an outage.
    fn read(&self) -> RwLockReadGuard<'_, Table> {
        self.table.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Table> {
        self.table.write().unwrap_or_else(|e| e.into_inner())
    }

    /// A fresh link number.
    pub fn next_link(&self) -> u64 {
        self.next_link.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Makes `route` the server's link. Returns the link it replaced, whose
    /// owner should close it; the old link's room interests are dropped (the
    /// server announces its rooms again on every new link).
    pub fn insert(&self, server: &str, route: Route) -> Option<Route> {
        let mut t = self.write();
        let old = t.links.insert(server.to_owned(), route);
        if old.is_some() {
            t.drop_interests(server);
        }
        old
    }

    /// Removes the server's route and room interests if `link` is still its
    /// current link. Returns whether it was.
    pub fn remove(&self, server: &str, link: u64) -> bool {
        let mut t = self.write();
        if t.links.get(server).is_none_or(|r| r.link != link) {
            return false;
        }
        t.links.remove(server);
        t.drop_interests(server);
        true
    }

    /// Number of linked servers.
    pub fn len(&self) -> usize {
        self.read().links.len()
    }

    /// Whether `server` is linked here (any epoch).
    pub fn is_up(&self, server: &str) -> bool {
        self.read().links.contains_key(server)
    }

    /// Whether `server` is linked here with exactly `epoch`.
    pub fn has_epoch(&self, server: &str, epoch: u64) -> bool {
        self.read()
            .links
            .get(server)
            .is_some_and(|r| r.epoch == epoch)
    }

    /// A copy of every route, sorted by server id.
    pub fn snapshot(&self) -> Vec<(String, Route)> {
        let mut all: Vec<_> = self
            .read()
            .links
            .iter()
            .map(|(id, r)| (id.clone(), r.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Queues `frame` towards `to`.
    pub fn forward(&self, to: &str, frame: Frame) -> Outcome {
        let mut outcome = Outcome::default();
        match self.read().links.get(to) {
            Some(route) => send(to, route, frame, &mut outcome),
            None => outcome.no_route += 1,
        }
        outcome
    }

    /// Queues `frame` towards every linked server but `origin` (a `CatchUp`
    /// for [`shared::link::missed::ALL_SERVERS`], a broadcast, a
    /// [`Frame::Presence`]).
    pub fn forward_all(&self, origin: &str, frame: &Frame) -> Outcome {
        let mut outcome = Outcome::default();
        for (id, route) in &self.read().links {
            if id != origin {
                send(id, route, frame.clone(), &mut outcome);
            }
        }
        outcome
    }

    /// Records that `server` (on link `link`) has, or no longer has, members
    /// of `room`.
    pub fn set_interest(&self, server: &str, link: u64, room: &str, on: bool) -> Interest {
        let mut t = self.write();
        if t.links.get(server).is_none_or(|r| r.link != link) {
            return Interest::Stale;
        }
        if on {
            let rooms = t.interests.entry(server.to_owned()).or_default();
            if rooms.contains(room) {
                return Interest::Done;
            }
            if rooms.len() >= MAX_ROOMS_PER_SERVER {
                return Interest::TooMany;
            }
            rooms.insert(room.to_owned());
            t.rooms
                .entry(room.to_owned())
                .or_default()
                .insert(server.to_owned());
        } else {
            let had = t
                .interests
                .get_mut(server)
                .is_some_and(|rooms| rooms.remove(room));
            if had && let Some(servers) = t.rooms.get_mut(room) {
                servers.remove(server);
                if servers.is_empty() {
                    t.rooms.remove(room);
                }
            }
        }
        Interest::Done
    }

    /// Queues a room message from `origin` towards every other server with
    /// members of `room`, or every other linked server for
    /// [`BROADCAST_ROOM`]. The origin never gets its own message back.
    pub fn fan_out(&self, origin: &str, room: &str, frame: &Frame) -> Outcome {
        if room == BROADCAST_ROOM {
            return self.forward_all(origin, frame);
        }
        let mut outcome = Outcome::default();
        let t = self.read();
        if let Some(servers) = t.rooms.get(room) {
            for id in servers {
                if id == origin {
                    continue;
                }
                // Interests are removed with their link, so a server listed
                // here is linked; a miss would only mean a race with removal.
                match t.links.get(id) {
                    Some(route) => send(id, route, frame.clone(), &mut outcome),
                    None => outcome.no_route += 1,
                }
            }
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::link::RoomMsg;

    fn route(routes: &Routes, epoch: u64, cap: usize) -> (Route, mpsc::Receiver<Frame>) {
        let (tx, rx) = mpsc::channel(cap);
        let r = Route {
            link: routes.next_link(),
            epoch,
            addrs: ServerAddrs::default(),
            tx,
            close: CancellationToken::new(),
            missed: Arc::default(),
        };
        (r, rx)
    }

    fn room_frame(room: &str) -> Frame {
        Frame::Room {
            msg: RoomMsg {
                room: room.into(),
                from: "u".into(),
                id: "m1".into(),
                ts: 1,
                text: "hi".into(),
            },
        }
    }

    #[test]
    fn forward_counts_no_route_and_full_queues() {
        let routes = Routes::new();
        let (b, mut rx) = route(&routes, 1, 1);
        assert!(routes.insert("b", b).is_none());
        let f = Frame::Ping(1);
        assert_eq!(routes.forward("b", f.clone()).forwarded, 1);
        assert_eq!(routes.forward("b", f.clone()).queue_full, 1);
        assert_eq!(routes.forward("zz", f.clone()).no_route, 1);
        assert_eq!(rx.try_recv().ok(), Some(f));
    }

    fn deliver(user: &str) -> Frame {
        Frame::Deliver {
            to_server: "b".into(),
            user: user.into(),
            seq: 1,
            except: None,
            msg: shared::link::DirectMsg {
                id: "m".into(),
                from: "a".into(),
                to: user.into(),
                ts: 1,
                text: "hi".into(),
            },
        }
    }

    #[test]
    fn a_push_dropped_at_a_full_queue_is_written_down_for_a_catch_up() {
        let routes = Routes::new();
        let (b, mut rx) = route(&routes, 1, 2);
        let missed = Arc::clone(&b.missed);
        routes.insert("b", b);
        assert_eq!(routes.forward("b", deliver("ann")).forwarded, 1);
        assert_eq!(routes.forward("b", deliver("ann")).forwarded, 1);
        let full = routes.forward("b", deliver("bob"));
        assert_eq!((full.queue_full, full.catch_ups_sent), (1, 0));
        // A room message stores nothing: not written down.
        assert_eq!(routes.forward("b", room_frame("r")).queue_full, 1);
        assert!(missed.is_pending());
        assert!(rx.try_recv().is_ok() && rx.try_recv().is_ok());
        assert_eq!(
            missed.take(),
            vec![Frame::CatchUp {
                to_server: "b".into(),
                users: vec!["bob".into()]
            }]
        );
    }

    #[test]
    fn forward_all_reaches_every_server_but_the_origin_whatever_its_rooms() {
        let routes = Routes::new();
        let (a, mut ra) = route(&routes, 1, 8);
        let (b, mut rb) = route(&routes, 1, 8);
        let (c, mut rc) = route(&routes, 1, 8);
        routes.insert("a", a);
        routes.insert("b", b);
        routes.insert("c", c);
        let catch_up = Frame::CatchUp {
            to_server: "*".into(),
            users: vec![],
        };
        assert_eq!(routes.forward_all("a", &catch_up).forwarded, 2);
        assert!(ra.try_recv().is_err(), "the origin gets nothing back");
        assert_eq!(rb.try_recv().ok(), Some(catch_up.clone()));
        assert_eq!(rc.try_recv().ok(), Some(catch_up));
        let presence = Frame::Presence { user: "bob".into() };
        assert_eq!(routes.forward_all("b", &presence).forwarded, 2);
        assert_eq!(ra.try_recv().ok(), Some(presence.clone()));
        assert_eq!(rc.try_recv().ok(), Some(presence));
        assert!(rb.try_recv().is_err(), "the origin gets nothing back");
    }

    #[test]
    fn rooms_reach_interested_servers_but_not_the_origin() {
        let routes = Routes::new();
        let (a, mut ra) = route(&routes, 1, 8);
        let (b, mut rb) = route(&routes, 1, 8);
        let (c, mut rc) = route(&routes, 1, 8);
        let (la, lb) = (a.link, b.link);
        routes.insert("a", a);
        routes.insert("b", b);
        routes.insert("c", c);
        assert_eq!(routes.set_interest("a", la, "r", true), Interest::Done);
        assert_eq!(routes.set_interest("b", lb, "r", true), Interest::Done);
        assert_eq!(routes.fan_out("a", "r", &room_frame("r")).forwarded, 1);
        assert!(rb.try_recv().is_ok());
        assert!(ra.try_recv().is_err() && rc.try_recv().is_err());

        assert_eq!(
            routes
                .fan_out("a", BROADCAST_ROOM, &room_frame("*"))
                .forwarded,
            2
        );
        assert!(ra.try_recv().is_err());

        routes.set_interest("b", lb, "r", false);
        assert_eq!(
            routes.fan_out("a", "r", &room_frame("r")),
            Outcome::default()
        );
    }

    #[test]
    fn a_replaced_link_cannot_touch_the_new_one() {
        let routes = Routes::new();
        let (old, _r1) = route(&routes, 1, 8);
        let (new, _r2) = route(&routes, 2, 8);
        let (lo, ln) = (old.link, new.link);
        routes.insert("a", old);
        routes.set_interest("a", lo, "r", true);
        let replaced = routes.insert("a", new).expect("old link returned");
        assert_eq!(replaced.link, lo);
        // The old link's interests went with it.
        assert_eq!(
            routes.fan_out("x", "r", &room_frame("r")),
            Outcome::default()
        );
        assert_eq!(routes.set_interest("a", lo, "r", true), Interest::Stale);
        assert!(!routes.remove("a", lo));
        assert!(routes.has_epoch("a", 2) && !routes.has_epoch("a", 1));
        assert!(routes.remove("a", ln));
        assert!(!routes.is_up("a"));
    }

    #[test]
    fn removal_drops_room_interests() {
        let routes = Routes::new();
        let (a, _ra) = route(&routes, 1, 8);
        let la = a.link;
        routes.insert("a", a);
        routes.set_interest("a", la, "r", true);
        assert!(routes.remove("a", la));
        assert!(routes.read().rooms.is_empty());
        assert!(routes.read().interests.is_empty());
    }
}
