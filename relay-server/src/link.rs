//! One task per link, from `Welcome` to clean-up.
//!
//! After the handshake ([`crate::accept`]) the task registers the server in
//! the routing table and runs one `select!` over:
//!
//! - frames from the server: `Deliver`, `Tell`, `CatchUp` and `Room` are
//!   forwarded (a `CatchUp` for `*` to every other server), `Presence` goes
//!   to every other linked server, `Interest` updates the table, `Ping` is
//!   answered, `Bye` ends the link;
//! - the link's bounded outbound queue, written by a pump that feeds every
//!   frame available and then flushes once (batching), and that runs beside
//!   reading, so a server that is slow to read never stops us reading it
//!   (one that takes nothing for `--dead-after` is cut off, and frames
//!   for it beyond its queue are dropped meanwhile);
//! - the `CatchUp` this relay owes the server: when frames carrying pushes
//!   of stored messages were dropped at the full queue ([`Route::missed`]),
//!   the pump writes one `CatchUp` naming their users as soon as the queue
//!   is at most half full again, so the server's sessions read what they
//!   missed without waiting for their next push;
//! - the heartbeat interval (`Ping`) and the liveness deadline
//!   ([`shared::link::liveness`], the same core the servers use);
//! - the relay's shutdown (we send `Bye`) and this link's own close signal
//!   (a newer link of the same server replaced it).
//!
//! When the loop ends, the route is removed (if it is still this link's) and
//! a link that ended without `Bye` is handed to [`crate::purge`].

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use shared::codec::{LinkCodec, LinkCodecError};
use shared::link::Frame;
use shared::link::handshake::Accepted;
use shared::link::liveness::{Death, Liveness};
use shared::link::missed::{self, ALL_SERVERS, MissedCell};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::Ctx;
use crate::metrics::{DropReason, Metrics};
use crate::routes::{Interest, Outcome, Route};

/// A byte stream a link runs on: plain TCP or TLS over it.
pub(crate) trait LinkIo: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> LinkIo for T {}

/// A link's framed socket.
pub(crate) type LinkFramed = Framed<Box<dyn LinkIo>, LinkCodec>;

type Sink = SplitSink<LinkFramed, Frame>;

/// Frames fed per pump turn before it flushes and yields to the other arms.
const MAX_BATCH: usize = 256;

/// Turns the pump gives up, finding its queue empty with frames fed, before
/// it flushes them: one write then carries the frames of many links.
const MAX_YIELDS: usize = 3;

/// Pings and pongs waiting to be written. Pongs beyond this are dropped: a
/// peer pinging faster than we can answer learns it from the missing pongs.
const CONTROL_CAP: usize = 64;

/// Time to send `Bye` and close at shutdown.
const BYE_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a link ended.
#[derive(Debug)]
enum End {
    /// The server said `Bye`.
    Bye,
    /// The relay is shutting down; we said `Bye`.
    Shutdown,
    /// A newer link of the same server took over.
    Replaced,
    /// The server closed the socket without `Bye`.
    Eof,
    /// Socket error, malformed or oversized frame.
    Broken(LinkCodecError),
    /// A handshake frame after the handshake.
    Protocol(&'static str),
    /// The health check declared it dead.
    Dead(Death),
}

impl End {
    /// Whether the server went away without saying so: then its Redis
    /// entries are purged unless it links again in time.
    fn is_death(&self) -> bool {
        !matches!(self, End::Bye | End::Shutdown | End::Replaced)
    }
}

/// Runs a link from `Welcome` to its end. Called inside the link's span.
pub(crate) async fn run(ctx: Arc<Ctx>, framed: LinkFramed, hello: Accepted) {
    let Accepted {
        server_id,
        epoch,
        addrs,
    } = hello;

    // The route exists before the server can see `Welcome`, so everything
    // sent to it once it believes it is linked reaches it; `Welcome` is the
    // first frame the pump writes, ahead of anything queued meanwhile.
    let (tx, rx) = mpsc::channel(ctx.config.link_queue);
    let close = CancellationToken::new();
    let link = ctx.routes.next_link();
    let missed = Arc::new(MissedCell::new(missed::DEFAULT_CAP));
    let route = Route {
        link,
        epoch,
        addrs: addrs.clone(),
        tx,
        close: close.clone(),
        missed: Arc::clone(&missed),
    };
    match ctx.routes.insert(&server_id, route) {
        Some(old) => {
            old.close.cancel();
            info!(
                old_epoch = old.epoch,
                "link replaces an older link of this server"
            );
        }
        None => ctx.metrics.link_up(),
    }
    info!(ws = %addrs.ws, tcp = %addrs.tcp, "link up");

    let mut live = Liveness::new(ctx.config.dead_after, Instant::now());
    let end = serve(
        &ctx,
        &server_id,
        link,
        framed,
        Queue {
            rx,
            missed,
            metrics: ctx.metrics.clone(),
        },
        &close,
        &mut live,
    )
    .await;

    if ctx.routes.remove(&server_id, link) {
        ctx.metrics.link_down();
        if !matches!(end, End::Shutdown) {
            crate::holders::release(&ctx, &server_id).await;
        }
    }
    match &end {
        End::Bye => info!("link down: server said bye"),
        End::Shutdown => info!("link closed: relay shutting down"),
        End::Replaced => info!("link closed: replaced by a newer link"),
        End::Eof => info!("link down: closed without bye"),
        End::Broken(error) => warn!(%error, "link down: broken"),
        End::Protocol(kind) => warn!(frame = kind, "link down: handshake frame after handshake"),
        End::Dead(Death::Silent) => warn!(
            silent_ms = live.last_heard().elapsed().as_millis() as u64,
            "link down: heartbeat lost"
        ),
        End::Dead(Death::Stalled) => warn!("link down: server stopped reading"),
    }
    if end.is_death() {
        crate::purge::schedule(&ctx, server_id, epoch, live.last_heard());
    }
}

/// A link's outbound queue and what it dropped.
struct Queue {
    rx: mpsc::Receiver<Frame>,
    missed: Arc<MissedCell>,
    metrics: Metrics,
}

/// The link's loop, from writing `Welcome`; returns why it ended.
async fn serve(
    ctx: &Ctx,
    server_id: &str,
    link: u64,
    framed: LinkFramed,
    mut queue: Queue,
    close: &CancellationToken,
    live: &mut Liveness<Instant>,
) -> End {
    let (mut sink, mut stream) = framed.split::<Frame>();
    let mut control: VecDeque<Frame> = VecDeque::with_capacity(CONTROL_CAP);
    control.push_back(Frame::Welcome {
        relay_id: ctx.config.relay_id.clone(),
    });
    let mut writer = WriteState::default();
    let mut warned_rooms = false;

    let period = ctx.config.heartbeat;
    let mut heartbeat = tokio::time::interval_at(Instant::now() + period, period);
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let dead = tokio::time::sleep_until(live.deadline());
    tokio::pin!(dead);
    // Made once, not per frame: each new one registers with its token.
    let shutdown = ctx.shutdown.cancelled();
    let replaced = close.cancelled();
    tokio::pin!(shutdown, replaced);

    let end = loop {
        tokio::select! {
            () = &mut shutdown => break End::Shutdown,
            () = &mut replaced => break End::Replaced,
            input = stream.next() => match input {
                Some(Ok(frame)) => {
                    live.heard(Instant::now());
                    let mut input = Input {
                        ctx,
                        server_id,
                        link,
                        control: &mut control,
                        warned_rooms: &mut warned_rooms,
                    };
                    if let Some(end) = input.handle(frame) {
                        break end;
                    }
                }
                Some(Err(error)) => break End::Broken(error),
                None => break End::Eof,
            },
            pumped = std::future::poll_fn(|cx| pump(cx, &mut sink, &mut queue, &mut control, &mut writer, live)) => {
                match pumped {
                    // Every sender is gone: the table dropped this route.
                    Ok(()) => break End::Replaced,
                    Err(error) => break End::Broken(error),
                }
            }
            _ = heartbeat.tick() => push_control(&mut control, live.next_ping()),
            () = &mut dead => {
                if let Some(death) = live.verdict(Instant::now()) {
                    break End::Dead(death);
                }
                dead.as_mut().reset(live.deadline());
            }
        }
    };

    if matches!(end, End::Shutdown) {
        // Whatever is already buffered goes first, then Bye, then FIN.
        let bye = async {
            sink.send(Frame::Bye).await?;
            sink.close().await
        };
        match tokio::time::timeout(BYE_TIMEOUT, bye).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => debug!(%error, "bye not delivered"),
            Err(_) => debug!("bye not taken in time"),
        }
    }
    end
}

fn push_control(control: &mut VecDeque<Frame>, frame: Frame) {
    if control.len() < CONTROL_CAP {
        control.push_back(frame);
    }
}

/// The write side of a link between pump turns.
#[derive(Debug, Default)]
struct WriteState {
    /// Frames were fed since the last completed flush.
    dirty: bool,
    /// `poll_ready` said Pending: its buffer was over the sink's
    /// backpressure mark and the socket full. Its next Ready means the
    /// socket took bytes since (progress); a Ready from a buffer that was
    /// under the mark all along proves nothing, so only this counts.
    ready_blocked: bool,
    /// Turns given up, queue empty, since frames were fed and not flushed.
    yields: usize,
}

/// Moves frames into the socket: control frames first, then every queued
/// frame available now (up to [`MAX_BATCH`]; when the queue runs dry, up to
/// [`MAX_YIELDS`] more turns), then one flush. The `CatchUp`s owed for
/// dropped pushes join the control frames whenever the queue is at most half
/// full. Pending while there is nothing to do; ready only when the queue
/// closed (`Ok`) or the socket failed (`Err`).
fn pump(
    cx: &mut Context<'_>,
    sink: &mut Sink,
    queue: &mut Queue,
    control: &mut VecDeque<Frame>,
    st: &mut WriteState,
    live: &mut Liveness<Instant>,
) -> Poll<Result<(), LinkCodecError>> {
    let rx = &mut queue.rx;
    let mut fed = 0;
    loop {
        if fed < MAX_BATCH {
            match sink.poll_ready_unpin(cx) {
                Poll::Ready(Ok(())) => {
                    if st.ready_blocked {
                        // Progress; whatever still waits gets a new clock
                        // (the flush below stops it if nothing does).
                        st.ready_blocked = false;
                        live.flushed();
                        live.writing(Instant::now());
                    }
                    if queue.missed.is_pending() && rx.len() <= rx.max_capacity() / 2 {
                        let owed = queue.missed.take();
                        queue.metrics.catch_ups_sent(owed.len() as u64);
                        control.extend(owed);
                    }
                    let next = match control.pop_front() {
                        Some(frame) => Some(frame),
                        None => match rx.poll_recv(cx) {
                            Poll::Ready(Some(frame)) => Some(frame),
                            Poll::Ready(None) => return Poll::Ready(Ok(())),
                            Poll::Pending => None,
                        },
                    };
                    if let Some(frame) = next {
                        sink.start_send_unpin(frame)?;
                        live.writing(Instant::now());
                        st.dirty = true;
                        fed += 1;
                        continue;
                    }
                }
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Pending => st.ready_blocked = true,
            }
        }
        if st.dirty && !st.ready_blocked && fed < MAX_BATCH && st.yields < MAX_YIELDS {
            // The queue ran dry: under load more frames are a task switch
            // away, so let the other links run before paying for a write.
            st.yields += 1;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        if st.dirty {
            st.yields = 0;
            match sink.poll_flush_unpin(cx) {
                Poll::Ready(Ok(())) => {
                    st.dirty = false;
                    st.ready_blocked = false;
                    live.flushed();
                    if fed < MAX_BATCH {
                        continue;
                    }
                }
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Pending => return Poll::Pending,
            }
        }
        if fed >= MAX_BATCH {
            // A full batch went out; let reading and the timers have a turn.
            cx.waker().wake_by_ref();
        }
        return Poll::Pending;
    }
}

/// Handles one frame from the server.
struct Input<'a> {
    ctx: &'a Ctx,
    server_id: &'a str,
    link: u64,
    control: &'a mut VecDeque<Frame>,
    warned_rooms: &'a mut bool,
}

impl Input<'_> {
    /// Returns `Some` when the frame ends the link.
    fn handle(&mut self, frame: Frame) -> Option<End> {
        match &frame {
            Frame::Ping(n) => push_control(self.control, Frame::Pong(*n)),
            Frame::Pong(_) => {}
            Frame::Deliver { to_server, .. } | Frame::Tell { to_server, .. } => {
                let to = to_server.clone();
                let outcome = self.ctx.routes.forward(&to, frame);
                self.count(outcome, &to);
            }
            Frame::CatchUp { to_server, .. } => {
                let to = to_server.clone();
                let outcome = if to == ALL_SERVERS {
                    self.ctx.routes.forward_all(self.server_id, &frame)
                } else {
                    self.ctx.routes.forward(&to, frame)
                };
                self.count(outcome, &to);
            }
            Frame::Room { msg } => {
                let outcome = self.ctx.routes.fan_out(self.server_id, &msg.room, &frame);
                self.count(outcome, &msg.room);
            }
            Frame::Presence { .. } => {
                let outcome = self.ctx.routes.forward_all(self.server_id, &frame);
                self.count(outcome, "presence");
            }
            Frame::Interest { room, on } => self.interest(room, *on),
            Frame::Bye => return Some(End::Bye),
            Frame::Challenge { .. }
            | Frame::Hello { .. }
            | Frame::Welcome { .. }
            | Frame::Refused { .. } => return Some(End::Protocol(frame.kind())),
        }
        None
    }

    fn interest(&mut self, room: &str, on: bool) {
        if shared::ids::check_name(room).is_err() {
            debug!(on, "ignoring interest in an invalid room name");
            return;
        }
        match self
            .ctx
            .routes
            .set_interest(self.server_id, self.link, room, on)
        {
            Interest::Done | Interest::Stale => {}
            Interest::TooMany => {
                if !*self.warned_rooms {
                    *self.warned_rooms = true;
                    warn!(
                        limit = crate::routes::MAX_ROOMS_PER_SERVER,
                        "server declared too many rooms; ignoring further interests"
                    );
                }
            }
        }
    }

    fn count(&self, outcome: Outcome, target: &str) {
        let m = &self.ctx.metrics;
        m.forwarded(outcome.forwarded);
        m.dropped(DropReason::NoRoute, outcome.no_route);
        m.dropped(DropReason::QueueFull, outcome.queue_full);
        m.catch_ups_sent(outcome.catch_ups_sent);
        if outcome.no_route + outcome.queue_full > 0 {
            debug!(
                target,
                no_route = outcome.no_route,
                queue_full = outcome.queue_full,
                "frame dropped"
            );
        }
    }
}
