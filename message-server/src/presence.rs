//! The presence cache: for each user recently sent a `TELL`, the *other*
//! servers holding sessions of that user, so that a stream of transient
//! messages costs no Redis round trip per message.
//!
//! It is filled from the Redis lookup ([`crate::directory::Directory::servers_of`])
//! and holds no local sessions (those come from the hub, always current).
//! An entry is trusted for at most `--presence-max-age` (10 s by default);
//! within that bound it may be stale in two ways:
//!
//! - the user logged in on a server the entry does not list: that server
//!   sends [`shared::link::Frame::Presence`] at the user's first session
//!   there, the relay passes it to every other server, and each drops its
//!   entry for the user ([`Presence::forget`]). A link that comes up again
//!   clears the whole cache ([`Presence::clear`]): Presence frames may have
//!   been lost while it was down. So the stale window is the time a Presence
//!   frame takes through the relay, or `max-age` when a frame was lost
//!   without its link dying (a full queue);
//! - the user left a server the entry lists: `TELL`s to that server are
//!   dropped there (nobody to push to) until the entry ages out. Harmless.
//!
//! A lookup that was in flight while an invalidation arrived may carry what
//! Redis said before the login: [`Presence::fill`] refuses it (a generation
//! counter, bumped by every invalidation), so the next `TELL` reads again.
//!
//! The cache holds at most [`MAX_USERS`] users; when it is full, entries
//! past their age are swept (at most once per tenth of `max-age`), and if
//! none are, new users are simply not cached (their `TELL`s read Redis). Time is passed in, so the rules are
//! tested without a clock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Most users held at once (an entry is about 100 bytes: about 13 MiB at
/// most).
pub const MAX_USERS: usize = 1 << 17;

/// The other servers holding sessions of one user, as last read.
pub type Servers = Arc<[Box<str>]>;

struct Entry {
    servers: Servers,
    read_at: Instant,
}

struct Inner {
    users: HashMap<Box<str>, Entry>,
    /// Bumped by every [`Presence::forget`] and [`Presence::clear`]: a
    /// lookup that started under an older generation is not cached.
    generation: u64,
    /// When a full cache was last swept: at most one sweep per tenth of
    /// `max_age`, so a cache full of fresh entries costs no sweep per miss.
    swept_at: Option<Instant>,
}

/// The cache of one server (see the module docs).
pub struct Presence {
    inner: Mutex<Inner>,
    max_age: Duration,
    max_users: usize,
    /// Shared by every entry of a user with no session elsewhere.
    nowhere: Servers,
}

impl Presence {
    /// A cache trusting entries for `max_age` (zero: nothing is cached).
    pub fn new(max_age: Duration) -> Presence {
        Presence::with_capacity(max_age, MAX_USERS)
    }

    fn with_capacity(max_age: Duration, max_users: usize) -> Presence {
        Presence {
            inner: Mutex::new(Inner {
                users: HashMap::new(),
                generation: 0,
                swept_at: None,
            }),
            max_age,
            max_users,
            nowhere: Arc::from(Vec::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves a plain map behind; keep going.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The servers cached for `user`, if read less than `max_age` before `now`.
    pub fn get(&self, user: &str, now: Instant) -> Option<Servers> {
        let inner = self.lock();
        let entry = inner.users.get(user)?;
        (now.saturating_duration_since(entry.read_at) < self.max_age)
            .then(|| Arc::clone(&entry.servers))
    }

    /// The generation to hand to [`Presence::fill`]; take it before the
    /// Redis lookup starts.
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Makes the list of other servers from a Redis answer (`server ids`,
    /// this server's own id left out) and caches it for `user`, unless an
    /// invalidation came since `generation` was taken. Returns the list.
    pub fn fill(
        &self,
        user: &str,
        servers: Vec<String>,
        own_id: &str,
        generation: u64,
        now: Instant,
    ) -> Servers {
        let list: Servers = if servers.iter().all(|s| s == own_id) {
            Arc::clone(&self.nowhere)
        } else {
            servers
                .into_iter()
                .filter(|s| s != own_id)
                .map(String::into_boxed_str)
                .collect()
        };
        if self.max_age.is_zero() {
            return list;
        }
        let mut inner = self.lock();
        if inner.generation != generation {
            return list;
        }
        if inner.users.len() >= self.max_users && !inner.users.contains_key(user) {
            let max_age = self.max_age;
            let due = inner
                .swept_at
                .is_none_or(|at| now.saturating_duration_since(at) >= max_age / 10);
            if due {
                inner.swept_at = Some(now);
                inner
                    .users
                    .retain(|_, e| now.saturating_duration_since(e.read_at) < max_age);
            }
            if inner.users.len() >= self.max_users {
                return list;
            }
        }
        let entry = Entry {
            servers: Arc::clone(&list),
            read_at: now,
        };
        match inner.users.get_mut(user) {
            Some(old) => *old = entry,
            None => {
                inner.users.insert(Box::from(user), entry);
            }
        }
        list
    }

    /// Drops what is cached for `user` (they just logged in somewhere).
    pub fn forget(&self, user: &str) {
        let mut inner = self.lock();
        inner.generation += 1;
        inner.users.remove(user);
    }

    /// Drops everything (a relay link came up: invalidations may have been
    /// lost while it was down).
    pub fn clear(&self) {
        let mut inner = self.lock();
        inner.generation += 1;
        inner.users.clear();
    }

    /// Users cached now (fresh or not).
    pub fn len(&self) -> usize {
        self.lock().users.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AGE: Duration = Duration::from_secs(10);

    fn names(s: &Servers) -> Vec<&str> {
        s.iter().map(|b| &**b).collect()
    }

    #[test]
    fn a_fill_is_served_until_it_is_max_age_old() {
        let p = Presence::new(AGE);
        let t0 = Instant::now();
        let g = p.generation();
        let got = p.fill("bob", vec!["a".into(), "b".into()], "a", g, t0);
        assert_eq!(names(&got), ["b"], "own server left out");
        let cached = p.get("bob", t0 + AGE / 2).expect("fresh");
        assert_eq!(names(&cached), ["b"]);
        assert!(p.get("bob", t0 + AGE).is_none(), "too old");
        assert!(p.get("carol", t0).is_none());
    }

    #[test]
    fn nowhere_is_cached_too() {
        let p = Presence::new(AGE);
        let t0 = Instant::now();
        let g = p.generation();
        assert!(p.fill("bob", vec![], "a", g, t0).is_empty());
        assert!(p.fill("al", vec!["a".into()], "a", g, t0).is_empty());
        assert!(p.get("bob", t0).expect("cached").is_empty());
        assert!(p.get("al", t0).expect("cached").is_empty());
    }

    #[test]
    fn forget_and_clear_drop_entries_and_refuse_lookups_in_flight() {
        let p = Presence::new(AGE);
        let t0 = Instant::now();
        let g = p.generation();
        p.fill("bob", vec![], "a", g, t0);
        p.fill("carol", vec![], "a", g, t0);
        // A lookup starts, then bob logs in elsewhere.
        let in_flight = p.generation();
        p.forget("bob");
        assert!(p.get("bob", t0).is_none());
        assert!(p.get("carol", t0).is_some(), "only bob forgotten");
        // What Redis said before the login is not cached.
        let answered = p.fill("bob", vec![], "a", in_flight, t0);
        assert!(answered.is_empty(), "the answer itself is still used once");
        assert!(p.get("bob", t0).is_none(), "but not cached");
        // A lookup after the invalidation is.
        let g = p.generation();
        p.fill("bob", vec!["b".into()], "a", g, t0);
        assert_eq!(names(&p.get("bob", t0).expect("cached")), ["b"]);

        p.clear();
        assert!(p.is_empty());
        assert!(p.get("carol", t0).is_none());
    }

    #[test]
    fn zero_max_age_caches_nothing() {
        let p = Presence::new(Duration::ZERO);
        let t0 = Instant::now();
        let g = p.generation();
        assert_eq!(names(&p.fill("bob", vec!["b".into()], "a", g, t0)), ["b"]);
        assert!(p.get("bob", t0).is_none());
        assert!(p.is_empty());
    }

    #[test]
    fn a_full_cache_sweeps_old_entries_and_otherwise_caches_no_more() {
        let p = Presence::with_capacity(AGE, 2);
        let t0 = Instant::now();
        let g = p.generation();
        p.fill("u1", vec![], "a", g, t0);
        p.fill("u2", vec![], "a", g, t0 + AGE / 2);
        // Full, nothing old enough: u3 is answered but not cached.
        p.fill("u3", vec![], "a", g, t0 + AGE / 2);
        assert!(p.get("u3", t0 + AGE / 2).is_none());
        assert_eq!(p.len(), 2);
        // A refresh of a cached user still works when full.
        p.fill("u2", vec!["b".into()], "a", g, t0 + AGE / 2);
        assert_eq!(names(&p.get("u2", t0 + AGE / 2).expect("cached")), ["b"]);
        // Once u1 is past its age, it is swept to make room.
        p.fill("u3", vec![], "a", g, t0 + AGE);
        assert!(p.get("u3", t0 + AGE).is_some());
        assert_eq!(p.len(), 2);
    }
}
