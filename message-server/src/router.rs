//! The store-then-route pipeline: every direct message, room message and
//! broadcast of this server passes through one task, in order.
//!
//! Sessions submit [`Job`]s into a bounded queue (a full queue makes them
//! wait: backpressure reaches the client's socket). The router starts each
//! job's Redis script at once, keeping up to `store_inflight` in flight on
//! the one multiplexed connection (so Redis groups their fsyncs), and
//! finishes them strictly in submission order ([`FuturesOrdered`]): since
//! Redis ran them in that order too, every recipient is pushed its messages
//! in the order their `seq`s were given. Only after the store does anything
//! get pushed, and only after that does the sender get `OK SENT`.
//!
//! Routing a stored message: every local session of the recipient, every
//! other local session of the sender, and one `Deliver` frame per other
//! server that holds sessions of either (one per user and server, however
//! many sessions there).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use shared::client::{ClientError, Encoding, ErrCode, Event, Reply};
use shared::link::{DirectMsg, Frame, RoomMsg};
use tokio::sync::mpsc;

use crate::db::DbError;
use crate::hub::{Hub, Out, SessionHandle};
use crate::metrics::Metrics;
use crate::relay_link::Links;
use crate::store::{Store, Stored};

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
        self.session.push(Out::Reply(line), metrics);
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

enum Done {
    Sent(Result<Stored, DbError>, Origin),
    Published(Result<(), DbError>, RoomMsg, Origin),
    Broadcast(RoomMsg, Origin),
}

type Pending = Pin<Box<dyn Future<Output = Done> + Send>>;

/// The router task's state.
pub struct Router {
    pub server_id: String,
    pub store: Store,
    pub hub: Arc<Hub>,
    pub links: Arc<Links>,
    pub metrics: Metrics,
    pub max_inflight: usize,
}

impl Router {
    /// Runs until every job sender is gone and every job is finished.
    pub async fn run(self, mut jobs: mpsc::Receiver<Job>) {
        let mut inflight: FuturesOrdered<Pending> = FuturesOrdered::new();
        let mut open = true;
        loop {
            tokio::select! {
                biased;
                Some(done) = inflight.next(), if !inflight.is_empty() => self.finish(done).await,
                job = jobs.recv(), if open && inflight.len() < self.max_inflight => match job {
                    Some(job) => inflight.push_back(self.start(job)),
                    None => open = false,
                },
                else => break,
            }
        }
    }

    fn start(&self, job: Job) -> Pending {
        let store = self.store.clone();
        match job {
            Job::Send { msg, origin } => Box::pin(async move {
                let result = store.send(msg, origin.cid.as_deref()).await;
                Done::Sent(result, origin)
            }),
            Job::Publish { msg, origin } => Box::pin(async move {
                let result = store.room_append(&msg).await;
                Done::Published(result, msg, origin)
            }),
            Job::Broadcast { msg, origin } => Box::pin(async move { Done::Broadcast(msg, origin) }),
        }
    }

    async fn finish(&self, done: Done) {
        match done {
            Done::Sent(Ok(stored), origin) => self.route_direct(stored, origin).await,
            Done::Sent(Err(e), origin) => {
                tracing::warn!(error = %e, "message not stored");
                origin.answer(unavailable("message not stored: storage is unavailable; send it again with the same cid"), &self.metrics);
            }
            Done::Published(Ok(()), msg, origin) => {
                let event = Arc::new(Event::Room(msg.clone()));
                self.hub
                    .push_room(&msg.room, &event, Some(origin.session.id));
                let (room, id) = (msg.room.clone(), msg.id.clone());
                self.links.send(Frame::Room { msg }).await;
                origin.answer(Reply::Published { room, id }, &self.metrics);
            }
            Done::Published(Err(e), _, origin) => {
                tracing::warn!(error = %e, "room message not stored");
                origin.answer(
                    unavailable("room message not sent: storage is unavailable"),
                    &self.metrics,
                );
            }
            Done::Broadcast(msg, origin) => {
                let event = Arc::new(Event::Room(msg.clone()));
                self.hub.push_everyone(&event, Some(origin.session.id));
                let (room, id) = (msg.room.clone(), msg.id.clone());
                self.links.send(Frame::Room { msg }).await;
                origin.answer(Reply::Published { room, id }, &self.metrics);
            }
        }
    }

    async fn route_direct(&self, stored: Stored, origin: Origin) {
        let Stored {
            msg,
            seq_to,
            seq_from,
            to_servers,
            from_servers,
            duplicate,
        } = stored;
        let reply = Reply::Sent {
            id: msg.id.clone(),
            seq: seq_to,
        };
        if duplicate {
            // Stored (and pushed) the first time; the retry only needs its answer.
            self.metrics.deduplicated.inc();
            origin.answer(reply, &self.metrics);
            return;
        }
        self.metrics.stored.inc();
        let me = origin.session.id;
        let note_to_self = msg.from == msg.to;
        // The recipient's devices (for a note to self: every other device).
        let to_except = note_to_self.then_some(me);
        let to_event = Arc::new(Event::Direct {
            seq: seq_to,
            msg: msg.clone(),
        });
        self.hub.push_user(&msg.to, &to_event, to_except);
        for server in to_servers.iter().filter(|s| **s != self.server_id) {
            self.links
                .send(Frame::Deliver {
                    to_server: server.clone(),
                    user: msg.to.clone(),
                    seq: seq_to,
                    except: to_except,
                    msg: msg.clone(),
                })
                .await;
        }
        // The sender's other devices get their copy, with its seq in the sender's inbox.
        if !note_to_self {
            let from_event = Arc::new(Event::Direct {
                seq: seq_from,
                msg: msg.clone(),
            });
            self.hub.push_user(&msg.from, &from_event, Some(me));
            for server in from_servers.iter().filter(|s| **s != self.server_id) {
                self.links
                    .send(Frame::Deliver {
                        to_server: server.clone(),
                        user: msg.from.clone(),
                        seq: seq_from,
                        except: Some(me),
                        msg: msg.clone(),
                    })
                    .await;
            }
        }
        origin.answer(reply, &self.metrics);
    }
}

fn unavailable(message: &str) -> Reply {
    Reply::Error(ClientError::new(ErrCode::Unavailable, message))
}
