//! One session's outbound mailbox: what the hub, the router and the relay
//! links hand to a session, and the two signals they can give it.
//!
//! An [`Outbox`] is a small mutex-guarded queue with a bound, a *kicked*
//! flag (slow consumer: close it), a *catch-up wanted* flag (a push may have
//! been lost: read the inbox) and one waker slot, the session task's. It
//! replaces a channel, a cancellation token and a `Notify` per session: a
//! session costs one `Arc` allocation here, and an idle one holds a few
//! queue slots at most (a queue that grew in a burst is given back once it
//! empties).
//!
//! Producers never wait: [`Outbox::push`] refuses when the queue is full
//! (the caller applies the slow-consumer rule, see
//! [`crate::hub::SessionHandle::push`]) or when the session has ended. The
//! catch-up flag is not a queue item: it never fills the queue and several
//! wake-ups collapse into one.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use shared::client::Event;

/// What is queued for one session's writer.
#[derive(Debug)]
pub enum Out {
    /// A push, rendered by the session in its own encoding.
    Event(Arc<Event>),
    /// An answer already rendered for this session (e.g. `OK SENT`, which
    /// comes back from the store pipeline). Boxed so that an `Out` is two
    /// words, which keeps a queue of them small.
    Reply(Box<String>),
    /// `OK SENT`, already rendered, with the seq the message took in the
    /// sender's own inbox (which is not pushed back to this session: it
    /// must not look like a gap).
    Sent(Box<(String, u64)>),
}

/// A queue that grew past this many items is given back once it empties.
const KEEP_CAPACITY: usize = 8;

/// What a session's wait on its outbox gave.
#[derive(Debug)]
pub enum Next {
    /// Kicked as a slow consumer: close it.
    Kicked,
    /// A push may have been lost: catch up with the inbox.
    CatchUp,
    /// The next queued output.
    Item(Out),
}

#[derive(Debug, Default)]
struct Inner {
    queue: VecDeque<Out>,
    kicked: bool,
    catch_up: bool,
    /// The session ended: pushes are refused, nothing is kept.
    closed: bool,
    /// The session task, while it waits.
    waker: Option<Waker>,
}

/// One session's bounded outbound queue and signals.
#[derive(Debug)]
pub struct Outbox {
    inner: Mutex<Inner>,
    /// Items queued at most (`--session-queue`).
    bound: usize,
}

impl Outbox {
    /// An empty outbox holding at most `bound` items (at least one).
    pub fn new(bound: usize) -> Outbox {
        Outbox {
            inner: Mutex::new(Inner::default()),
            bound: bound.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Plain data behind the lock: a panic elsewhere leaves it usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `out` and wakes the session. Returns false, queueing nothing,
    /// when the queue is full, the session was kicked, or it has ended.
    pub fn push(&self, out: Out) -> bool {
        let mut inner = self.lock();
        if inner.closed || inner.kicked || inner.queue.len() >= self.bound {
            return false;
        }
        inner.queue.push_back(out);
        let waker = inner.waker.take();
        drop(inner);
        if let Some(w) = waker {
            w.wake();
        }
        true
    }

    /// Asks the session to catch up with its inbox (a push may have been
    /// lost). Several asks before it looks collapse into one.
    pub fn catch_up(&self) {
        let mut inner = self.lock();
        if inner.closed {
            return;
        }
        inner.catch_up = true;
        let waker = inner.waker.take();
        drop(inner);
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Marks the session to be closed as a slow consumer. Returns true only
    /// the first time, and not for a session that has ended (so the caller
    /// counts each slow consumer once).
    pub fn kick(&self) -> bool {
        let mut inner = self.lock();
        if inner.closed || inner.kicked {
            return false;
        }
        inner.kicked = true;
        inner.queue = VecDeque::new();
        let waker = inner.waker.take();
        drop(inner);
        if let Some(w) = waker {
            w.wake();
        }
        true
    }

    /// Whether [`Outbox::kick`] was called.
    pub fn is_kicked(&self) -> bool {
        self.lock().kicked
    }

    /// The session ended: refuse pushes from now on and drop what is queued.
    pub fn close(&self) {
        let mut inner = self.lock();
        inner.closed = true;
        inner.queue = VecDeque::new();
        inner.waker = None;
    }

    /// The next queued item, without waiting.
    pub fn try_pop(&self) -> Option<Out> {
        let mut inner = self.lock();
        if inner.kicked {
            return None;
        }
        Self::pop_locked(&mut inner)
    }

    fn pop_locked(inner: &mut Inner) -> Option<Out> {
        let out = inner.queue.pop_front();
        if inner.queue.is_empty() && inner.queue.capacity() > KEEP_CAPACITY {
            inner.queue = VecDeque::new();
        }
        out
    }

    /// Polls for what the session should do next: a kick first, then a
    /// catch-up (only when `catch_up` allows it: not before login), then the
    /// next item. Pending registers the task's waker in the one slot.
    pub fn poll_next(&self, cx: &mut Context<'_>, catch_up: bool) -> Poll<Next> {
        let mut inner = self.lock();
        if inner.kicked {
            return Poll::Ready(Next::Kicked);
        }
        if catch_up && inner.catch_up {
            inner.catch_up = false;
            return Poll::Ready(Next::CatchUp);
        }
        if let Some(out) = Self::pop_locked(&mut inner) {
            return Poll::Ready(Next::Item(out));
        }
        match &mut inner.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Waits for what the session should do next (see [`Outbox::poll_next`]);
    /// cancel-safe: nothing is taken unless it is returned.
    pub fn next(&self, catch_up: bool) -> impl Future<Output = Next> + '_ {
        std::future::poll_fn(move |cx| self.poll_next(cx, catch_up))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(s: &str) -> Out {
        Out::Reply(Box::new(s.to_owned()))
    }

    fn ready(o: &Outbox, catch_up: bool) -> Option<Next> {
        let mut cx = Context::from_waker(Waker::noop());
        match o.poll_next(&mut cx, catch_up) {
            Poll::Ready(n) => Some(n),
            Poll::Pending => None,
        }
    }

    #[test]
    fn items_come_out_in_order_and_the_bound_holds() {
        let o = Outbox::new(2);
        assert!(o.push(reply("a")));
        assert!(o.push(reply("b")));
        assert!(!o.push(reply("c")), "a full outbox refuses");
        assert!(matches!(ready(&o, true), Some(Next::Item(Out::Reply(s))) if *s == "a"));
        assert!(matches!(o.try_pop(), Some(Out::Reply(s)) if *s == "b"));
        assert!(ready(&o, true).is_none());
    }

    #[test]
    fn a_kick_comes_first_once_and_drops_the_queue() {
        let o = Outbox::new(4);
        assert!(o.push(reply("a")));
        assert!(o.kick());
        assert!(!o.kick(), "counted once");
        assert!(o.is_kicked());
        assert!(!o.push(reply("b")));
        assert!(matches!(ready(&o, true), Some(Next::Kicked)));
        assert!(o.try_pop().is_none());
    }

    #[test]
    fn catch_ups_collapse_and_wait_for_login() {
        let o = Outbox::new(4);
        o.catch_up();
        o.catch_up();
        assert!(ready(&o, false).is_none(), "not before login");
        assert!(matches!(ready(&o, true), Some(Next::CatchUp)));
        assert!(ready(&o, true).is_none(), "several asks are one");
    }

    #[test]
    fn an_ended_session_takes_nothing_and_is_not_counted_as_slow() {
        let o = Outbox::new(4);
        o.close();
        assert!(!o.push(reply("a")));
        assert!(!o.kick());
        o.catch_up();
        assert!(ready(&o, true).is_none());
    }

    #[test]
    fn a_push_wakes_the_waiting_session() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::task::Wake;
        struct Count(AtomicUsize);
        impl Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&count));
        let o = Outbox::new(4);
        assert!(
            o.poll_next(&mut Context::from_waker(&waker), true)
                .is_pending()
        );
        assert!(o.push(reply("a")));
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        o.catch_up();
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "the slot was taken");
    }

    #[test]
    fn a_drained_burst_gives_its_storage_back() {
        let o = Outbox::new(256);
        for _ in 0..100 {
            assert!(o.push(reply("x")));
        }
        while o.try_pop().is_some() {}
        assert_eq!(o.lock().queue.capacity(), 0);
    }
}
