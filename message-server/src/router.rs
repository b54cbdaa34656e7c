//! The store-then-route pipeline: every direct message, room message and
//! broadcast of this server passes through one task, in order.
//!
//! Sessions submit [`Job`]s into a bounded queue (a full queue makes them
//! wait: backpressure reaches the client's socket). The router sends
//! whatever is queued as one batch to the store ([`Store::store_batch`]:
//! every write at once, pipelined on the wire, many commands per fsync),
//! starts batches at most every `--store-commit-interval` (group commit:
//! under load a batch carries every message that arrived meanwhile; an idle
//! store, or a lone sender, is never held back), keeps a few batches in
//! flight, and finishes them strictly in the order they were sent
//! ([`FuturesOrdered`]): since Redis ran them in that order too, every
//! recipient is pushed its messages in the order their `seq`s were given.
//! Only after the store does anything get pushed, and only after that does
//! the sender get `OK SENT`.
//!
//! Routing a stored message: every local session of the recipient, every
//! other local session of the sender, and one `Deliver` frame per other
//! server that holds sessions of either (one per user and server, however
//! many sessions there).
//!
//! The router never waits on a relay link: [`Links::send_all`] queues without
//! waiting and drops (and counts) a frame whose link queue is full, so one
//! slow relay cannot stall storing for every session. The message is
//! already stored; its recipient gets it by replay.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use shared::client::{ClientError, Encoding, ErrCode, Event, Reply};
use shared::link::{DirectMsg, Frame, RoomMsg};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::db::DbError;
use crate::hub::{Hub, Out, SessionHandle};
use crate::metrics::Metrics;
use crate::relay_link::{Links, copies};
use crate::store::{Outcome, Store, Stored, Write};

/// Who asked, and how to answer them.
#[derive(Debug, Clone)]
pub struct Origin {
    pub session: SessionHandle,
    pub enc: Encoding,
    pub cid: Option<String>,
}

impl Origin {
    fn answer(&self, reply: Reply, metrics: &Metrics) {
        let line = reply.render(self.enc, self.cid.as_deref());
        self.session.push(Out::Reply(Box::new(line)), metrics);
    }
}

/// Work for the router.
#[derive(Debug)]
pub enum Job {
    /// Store a direct message, push it, answer `OK SENT`.
    Send { msg: DirectMsg, origin: Origin },
    /// Append to room history, push to members here and on other servers.
    Publish { msg: RoomMsg, origin: Origin },
    /// Push to everyone everywhere (nothing stored).
    Broadcast { msg: RoomMsg, origin: Origin },
}

type Pending = Pin<Box<dyn Future<Output = Vec<(Job, Result<Outcome, DbError>)>> + Send>>;

/// Jobs sent to Redis as one pipeline.
const MAX_BATCH: usize = 512;

/// The router task's state.
pub struct Router {
    pub server_id: String,
    pub store: Store,
    pub hub: Arc<Hub>,
    pub links: Arc<Links>,
    pub metrics: Metrics,
    /// Pipelines in flight at once.
    pub max_inflight: usize,
    /// Least time between the starts of two store calls (group commit).
    pub commit_interval: Duration,
}

impl Router {
    /// Runs until every job sender is gone and every job is finished.
    ///
    /// Whatever jobs are queued when Redis can take more go out together as
    /// one pipeline (one write, one read, one fsync group); several
    /// pipelines may be in flight, finished in the order they were sent.
    /// Group commit: a batch starts no sooner than `commit_interval` after
    /// the previous one when that one carried several jobs, so under load
    /// each carries what arrived meanwhile; after a batch of one (a lone
    /// sender waiting for each `OK SENT`) the next goes at once.
    pub async fn run(self, mut jobs: mpsc::Receiver<Job>) {
        let mut inflight: FuturesOrdered<Pending> = FuturesOrdered::new();
        let mut open = true;
        let mut next_start = Instant::now();
        loop {
            let due = Instant::now() >= next_start;
            tokio::select! {
                biased;
                Some(done) = inflight.next(), if !inflight.is_empty() => {
                    for (job, result) in done {
                        self.finish(job, result);
                    }
                }
                () = tokio::time::sleep_until(next_start), if !due => {}
                job = jobs.recv(), if due && open && inflight.len() < self.max_inflight => match job {
                    Some(job) => {
                        let mut batch = vec![job];
                        while batch.len() < MAX_BATCH {
                            match jobs.try_recv() {
                                Ok(job) => batch.push(job),
                                Err(_) => break,
                            }
                        }
                        // Concurrent senders: hold the next batch back so
                        // it gathers more. A lone sender (a batch of one)
                        // is never held back.
                        next_start = Instant::now();
                        if batch.len() > 1 {
                            next_start += self.commit_interval;
                        }
                        inflight.push_back(self.start(batch));
                    }
                    None => open = false,
                },
                else => break,
            }
        }
    }

    fn start(&self, batch: Vec<Job>) -> Pending {
        let store = self.store.clone();
        Box::pin(async move {
            let writes: Vec<Write<'_>> = batch
                .iter()
                .filter_map(|job| match job {
                    Job::Send { msg, origin } => Some(Write::Direct {
                        msg,
                        cid: origin.cid.as_deref(),
                    }),
                    Job::Publish { msg, .. } => Some(Write::Room(msg)),
                    Job::Broadcast { .. } => None,
                })
                .collect();
            let results = if writes.is_empty() {
                Vec::new()
            } else {
                store.store_batch(&writes).await
            };
            drop(writes);
            let mut results = results.into_iter();
            batch
                .into_iter()
                .map(|job| {
                    let result = match job {
                        Job::Broadcast { .. } => Ok(Outcome::Room),
                        _ => results
                            .next()
                            .unwrap_or(Err(DbError::Internal("missing store outcome"))),
                    };
                    (job, result)
                })
                .collect()
        })
    }

    fn finish(&self, job: Job, result: Result<Outcome, DbError>) {
        match (job, result) {
            (Job::Send { origin, .. }, Ok(Outcome::Direct(stored))) => {
                self.route_direct(stored, origin)
            }
            (Job::Send { origin, .. }, Ok(Outcome::Room)) => {
                self.not_stored(&DbError::Internal("room outcome for a send"), &origin)
            }
            (Job::Send { origin, .. }, Err(e)) => self.not_stored(&e, &origin),
            (Job::Publish { msg, origin }, Ok(_)) => {
                let event = Arc::new(Event::Room(msg.clone()));
                self.hub
                    .push_room(&msg.room, &event, Some(origin.session.id));
                let (room, id) = (msg.room.clone(), msg.id.clone());
                self.links.send(Frame::Room { msg });
                origin.answer(Reply::Published { room, id }, &self.metrics);
            }
            (Job::Publish { origin, .. }, Err(e)) => {
                self.metrics.not_stored.inc();
                crate::warn_limited!(error = %e, "room message not stored");
                origin.answer(
                    unavailable("room message not sent: storage is unavailable"),
                    &self.metrics,
                );
            }
            (Job::Broadcast { msg, origin }, _) => {
                let event = Arc::new(Event::Room(msg.clone()));
                self.hub.push_everyone(&event, Some(origin.session.id));
                let (room, id) = (msg.room.clone(), msg.id.clone());
                self.links.send(Frame::Room { msg });
                origin.answer(Reply::Published { room, id }, &self.metrics);
            }
        }
    }

    fn not_stored(&self, e: &DbError, origin: &Origin) {
        self.metrics.not_stored.inc();
        crate::warn_limited!(error = %e, "message not stored");
        origin.answer(
            unavailable(
                "message not stored: storage is unavailable; send it again with the same cid",
            ),
            &self.metrics,
        );
    }

    fn route_direct(&self, stored: Stored, origin: Origin) {
        let duplicate = stored.duplicate();
        let Stored {
            msg,
            seq_to,
            seq_from,
            to_servers,
            from_servers,
            ..
        } = stored;
        let reply = Reply::Sent {
            id: msg.id.clone(),
            seq: seq_to,
        };
        // A retry of a stored send is pushed again: its first attempt may
        // have stored it without pushing (a crash, or replicas too slow).
        // Devices drop a seq they hold already.
        if duplicate {
            self.metrics.deduplicated.inc();
        } else {
            self.metrics.stored.inc();
        }
        let me = origin.session.id;
        let note_to_self = msg.from == msg.to;
        let to_except = note_to_self.then_some(me);
        // Local sessions first: the recipient's devices (for a note to self:
        // every other device), then the sender's other devices, with the seq
        // of the sender's inbox. Each event is made only when a session
        // here gets it.
        let direct = |seq| {
            let msg = &msg;
            move || {
                Arc::new(Event::Direct {
                    seq,
                    msg: msg.clone(),
                })
            }
        };
        self.hub.push_user_with(&msg.to, to_except, direct(seq_to));
        if !note_to_self {
            self.hub
                .push_user_with(&msg.from, Some(me), direct(seq_from));
        }
        // Then one frame per other server holding sessions of either; the
        // message is moved into the last one rather than cloned.
        let to = to_servers
            .iter()
            .filter(|s| **s != self.server_id)
            .map(|s| (s, &msg.to, seq_to, to_except));
        let from = from_servers
            .iter()
            .filter(|s| !note_to_self && **s != self.server_id)
            .map(|s| (s, &msg.from, seq_from, Some(me)));
        let targets: Vec<_> = to
            .chain(from)
            .map(|(s, user, seq, except)| (s.clone(), user.clone(), seq, except))
            .collect();
        let n = targets.len();
        for ((to_server, user, seq, except), msg) in targets.into_iter().zip(copies(msg, n)) {
            self.links.send_all(Frame::Deliver {
                to_server,
                user,
                seq,
                except,
                msg,
            });
        }
        let line = reply.render(origin.enc, origin.cid.as_deref());
        // Tells the session which seq of its own inbox this send took.
        let own_seq = if note_to_self { seq_to } else { seq_from };
        origin
            .session
            .push(Out::Sent(Box::new((line, own_seq))), &self.metrics);
    }
}

fn unavailable(message: &str) -> Reply {
    Reply::Error(ClientError::new(ErrCode::Unavailable, message))
}
