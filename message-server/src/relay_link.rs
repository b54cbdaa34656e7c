//! The links from this server to the relay(s).
//!
//! One task per relay address keeps one link up: connect, run the shared
//! handshake core ([`shared::link::handshake::Joiner`]), then read and write
//! side by side, as the relay does: a writer drains the link's queue (fed in
//! batches, flushed once) while the reader handles frames from the relay,
//! so a relay that is slow to read never stops this server reading it. The
//! shared [`Liveness`] ends a link that is silent, or that takes nothing we
//! write, for `dead_after`. A dead link reconnects with
//! [`shared::backoff::Backoff`]; while no link is up the server keeps serving
//! local traffic and reports `degraded`.
//!
//! [`Links`] is what the rest of the server sends through: it picks the
//! first live link (sticky, so frames keep their order) and never waits. A
//! frame that finds that link's queue full is dropped and counted
//! (`dropped_link_full`); room messages are at most once anyway. Direct
//! messages are stored before they are routed, so a dropped `Deliver` loses
//! only a push: the slot writes down whose ([`shared::link::missed`]), and
//! once its queue is at most half full again the link's writer sends the
//! relay a [`Frame::CatchUp`] per destination server, which wakes those
//! users' sessions there to read their inboxes (`catch_ups_sent`). A
//! `Deliver` that finds no link up at all is written down in every slot, and
//! the first link up sends its catch-ups.
//!
//! A direct message goes out on every live link ([`Links::send_all`]), not
//! only the first: with several relays, the one this server writes to first
//! may have lost its link to the recipient's server while another has not
//! (a partition between two machines, not a dead server). The recipient's
//! sessions skip the copies by seq. With one relay it is one frame as before.
//!
//! Every link that comes up wakes every local session to catch up with its
//! inbox ([`Hub::catch_up_all`]): while no link (or another link) was up,
//! pushes to them may have been lost. A `CatchUp` from the relay wakes the
//! sessions it names ([`Hub::catch_up_users`]). A link that comes up also
//! empties the presence cache ([`crate::presence`]) and tells the other
//! servers to empty theirs (`Presence` for [`EVERY_USER`]): logins announced
//! while it was down were lost in either direction. A `Presence` from the
//! relay (a user's first session on another server) drops that user's cache
//! entry.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use futures_util::{Sink, SinkExt, StreamExt};
use prometheus_client::metrics::counter::Counter;
use shared::backoff::Backoff;
use shared::client::Event;
use shared::codec::{LinkCodec, LinkCodecError};
use shared::link::handshake::{JoinError, Joiner, Step};
use shared::link::liveness::{Death, Liveness};
use shared::link::missed::{self, MissedCell};
use shared::link::{BROADCAST_ROOM, EVERY_USER, Frame, ServerAddrs};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::directory::Directory;
use crate::hub::Hub;
use crate::metrics::Metrics;

/// Frames fed per write before one flush.
const MAX_BATCH: usize = 1024;

/// Times the writer yields, finding its queue empty, before it flushes what
/// it fed: one write then carries the frames of many sessions.
const MAX_YIELDS: usize = 3;

/// Pings and pongs waiting to be written; beyond this they are dropped (a
/// link that far behind is about to be declared dead anyway).
const CONTROL_CAP: usize = 64;

/// Time the relay has for each handshake step.
const HANDSHAKE_STEP: Duration = Duration::from_secs(5);

/// One configured relay: its live link's queue, and what that queue
/// dropped.
struct Slot {
    tx: ArcSwapOption<mpsc::Sender<Frame>>,
    /// Pushes of stored messages this slot's queue dropped (or that no link
    /// could take), sent as [`Frame::CatchUp`] once the queue has drained.
    missed: MissedCell,
}

/// The outbound queues of the live links, one slot per configured relay.
pub struct Links {
    slots: Vec<Slot>,
    metrics: Metrics,
}

/// `n` copies of `value`, one per frame that carries it: clones for all but
/// the last, which takes `value` itself.
pub(crate) fn copies<T: Clone>(value: T, n: usize) -> impl Iterator<Item = T> {
    let mut value = Some(value);
    (0..n).filter_map(move |i| {
        if i + 1 == n {
            value.take()
        } else {
            value.clone()
        }
    })
}

/// Whether a link queue has room again after dropping: at most half full.
fn drained(tx: &mpsc::Sender<Frame>) -> bool {
    tx.capacity() >= tx.max_capacity() / 2
}

impl Links {
    /// `n` empty slots.
    pub fn new(n: usize, metrics: Metrics) -> Links {
        Links {
            slots: (0..n)
                .map(|_| Slot {
                    tx: ArcSwapOption::empty(),
                    missed: MissedCell::new(missed::DEFAULT_CAP),
                })
                .collect(),
            metrics,
        }
    }

    /// Queues `frame` on the first live link without waiting. Returns false,
    /// counting why, when no link is up or that link's queue is full (the
    /// frame is dropped: see the module docs).
    pub fn send(&self, mut frame: Frame) -> bool {
        for slot in &self.slots {
            let Some(tx) = slot.tx.load_full() else {
                continue;
            };
            match tx.try_send(frame) {
                Ok(()) => {
                    self.metrics.frames_to_relay.inc();
                    return true;
                }
                Err(mpsc::error::TrySendError::Full(f)) => {
                    self.dropped_full(slot, &tx, &f);
                    return false;
                }
                // That link just died: take the frame back, try the next one.
                Err(mpsc::error::TrySendError::Closed(f)) => frame = f,
            }
        }
        self.dropped_no_link(&frame);
        false
    }

    /// Queues a direct message on every live link without waiting (see the
    /// module docs); a full queue drops and counts as [`Links::send`] does.
    /// Returns whether at least one link took it.
    pub fn send_all(&self, frame: Frame) -> bool {
        let live: Vec<_> = self
            .slots
            .iter()
            .filter_map(|s| s.tx.load_full().map(|tx| (s, tx)))
            .collect();
        if live.is_empty() {
            self.dropped_no_link(&frame);
            return false;
        }
        let mut sent = false;
        for ((slot, tx), one) in live.iter().zip(copies(frame, live.len())) {
            match tx.try_send(one) {
                Ok(()) => {
                    self.metrics.frames_to_relay.inc();
                    sent = true;
                }
                Err(mpsc::error::TrySendError::Full(f)) => self.dropped_full(slot, tx, &f),
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        sent
    }

    /// A frame found `slot`'s queue full: count it and record whose push
    /// was lost (see [`MissedCell::dropped`]).
    fn dropped_full(&self, slot: &Slot, tx: &mpsc::Sender<Frame>, frame: &Frame) {
        self.metrics.dropped_link_full.inc();
        if let Some(to) = frame.to_server() {
            let sent = slot.missed.dropped(
                to,
                frame,
                || drained(tx),
                |f| {
                    tx.try_send(f)
                        .err()
                        .map(mpsc::error::TrySendError::into_inner)
                },
            );
            self.metrics.catch_ups_sent.inc_by(sent);
        }
    }

    /// No link was up for `frame`: count it, and record whose push was lost
    /// in every slot; the first link to come up sends the catch-ups (the
    /// receiving server kept its own link, so its relink wakes nothing).
    fn dropped_no_link(&self, frame: &Frame) {
        self.metrics.dropped_no_link.inc();
        if let Some(to) = frame.to_server() {
            for slot in &self.slots {
                slot.missed.record(to, frame);
            }
        }
    }

    /// Queues `frame` on every live link without waiting (room interest:
    /// every relay must know). A full queue drops it; the next relink
    /// re-sends every interest anyway.
    pub fn tell_all(&self, frame: Frame) {
        for slot in &self.slots {
            if let Some(tx) = slot.tx.load_full() {
                let _ = tx.try_send(frame.clone());
            }
        }
    }

    /// Live links.
    pub fn up(&self) -> usize {
        self.slots.iter().filter(|s| s.tx.load().is_some()).count()
    }
}

/// What a link task needs.
#[derive(Clone)]
pub struct LinkContext {
    pub server_id: String,
    pub epoch: u64,
    pub addrs: ServerAddrs,
    pub secret: Arc<Vec<u8>>,
    pub hub: Arc<Hub>,
    /// Its presence cache is invalidated from here.
    pub directory: Directory,
    pub links: Arc<Links>,
    pub metrics: Metrics,
    pub heartbeat: Duration,
    pub dead_after: Duration,
    pub queue: usize,
    pub max_frame: usize,
    /// TLS towards the relays (`--relay-ca`), and the name their
    /// certificates must carry (`--relay-tls-name`, else the address's host).
    pub tls: Option<tls_config::TlsConnector>,
    pub tls_name: Option<String>,
}

/// Why one link attempt ended.
#[derive(Debug, thiserror::Error)]
enum LinkEnd {
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("tls: {0}")]
    Tls(String),
    #[error("handshake: no {0} within {HANDSHAKE_STEP:?}")]
    HandshakeTimeout(&'static str),
    #[error("handshake: {0}")]
    Handshake(#[from] JoinError),
    #[error("link: {0}")]
    Codec(#[from] LinkCodecError),
    #[error("relay silent for {0:?}")]
    Silent(Duration),
    #[error("relay took nothing we wrote for {0:?}")]
    Stalled(Duration),
    #[error("relay closed the link")]
    Closed,
    #[error("relay said bye")]
    Bye,
    #[error("shutting down")]
    Shutdown,
}

/// Keeps the link to relay `addr` (slot `slot` of [`Links`]) up until shutdown.
pub async fn link_task(addr: String, slot: usize, ctx: LinkContext, shutdown: CancellationToken) {
    let span = tracing::info_span!("relay_link", relay = %addr, server = %ctx.server_id);
    async move {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            let result = run_once(&addr, slot, &ctx, &shutdown, &mut backoff).await;
            if let Some(s) = ctx.links.slots.get(slot)
                && s.tx.swap(None).is_some()
            {
                ctx.metrics.links_up.dec();
                let reason = result.as_ref().err().map(ToString::to_string).unwrap_or_default();
                tracing::warn!(%reason, "relay link down; serving local traffic only until it is back");
            }
            match result {
                Err(LinkEnd::Shutdown) | Ok(()) => return,
                Err(LinkEnd::Handshake(JoinError::Refused(reason))) => {
                    tracing::error!(%reason, "relay refused this server's link; check --link-secret-file and versions");
                }
                Err(e) => tracing::debug!(error = %e, retry_in = ?backoff.step(), "relay link attempt failed"),
            }
            let wait = backoff.next_delay(rand::random());
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
    .instrument(span)
    .await
}

async fn run_once(
    addr: &str,
    slot: usize,
    ctx: &LinkContext,
    shutdown: &CancellationToken,
    backoff: &mut Backoff,
) -> Result<(), LinkEnd> {
    let stream = tokio::select! {
        _ = shutdown.cancelled() => return Err(LinkEnd::Shutdown),
        s = tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(addr)) => match s {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(LinkEnd::Connect(e)),
            Err(_) => return Err(LinkEnd::Connect(std::io::ErrorKind::TimedOut.into())),
        },
    };
    let _ = stream.set_nodelay(true);
    match &ctx.tls {
        None => {
            linked(
                Framed::new(stream, LinkCodec::new(ctx.max_frame)),
                slot,
                ctx,
                shutdown,
                backoff,
            )
            .await
        }
        Some(connector) => {
            let host = ctx
                .tls_name
                .clone()
                .unwrap_or_else(|| addr.rsplit_once(':').map_or(addr, |(h, _)| h).to_owned());
            let name = tls_config::server_name(&host).map_err(|e| LinkEnd::Tls(e.to_string()))?;
            let tls = tokio::time::timeout(Duration::from_secs(5), connector.connect(name, stream))
                .await
                .map_err(|_| LinkEnd::Tls("handshake timed out".into()))?
                .map_err(|e| LinkEnd::Tls(e.to_string()))?;
            linked(
                Framed::new(tls, LinkCodec::new(ctx.max_frame)),
                slot,
                ctx,
                shutdown,
                backoff,
            )
            .await
        }
    }
}

/// The handshake over an established stream, moving the [`Joiner`]'s frames.
async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    framed: &mut Framed<S, LinkCodec>,
    ctx: &LinkContext,
) -> Result<String, LinkEnd> {
    let mut joiner = Joiner::new(&ctx.server_id, ctx.epoch, ctx.addrs.clone(), &ctx.secret);
    loop {
        let frame = match tokio::time::timeout(HANDSHAKE_STEP, framed.next()).await {
            Err(_) => return Err(LinkEnd::HandshakeTimeout(joiner.waiting_for())),
            Ok(None) => return Err(LinkEnd::Closed),
            Ok(Some(frame)) => frame?,
        };
        match joiner.on_frame(frame)? {
            Step::Send(frame) => framed.send(frame).await?,
            Step::Linked { relay_id } => return Ok(relay_id),
        }
    }
}

/// The link over an established (plain or TLS) stream: handshake, then
/// read and write side by side until it ends.
async fn linked<S: AsyncRead + AsyncWrite + Unpin>(
    mut framed: Framed<S, LinkCodec>,
    slot: usize,
    ctx: &LinkContext,
    shutdown: &CancellationToken,
    backoff: &mut Backoff,
) -> Result<(), LinkEnd> {
    let relay_id = handshake(&mut framed, ctx).await?;

    let (tx, mut rx) = mpsc::channel(ctx.queue.max(1));
    let (control_tx, mut control) = mpsc::channel(CONTROL_CAP);
    // The relay keeps no state across links: tell it our rooms again, ahead
    // of anything queued once the slot is visible.
    // A relay that takes none of it within `dead_after` is as dead as one
    // that stops reading later.
    // Nor did the other servers hear of logins here while we were cut off:
    // they forget where our users are (the presence cache).
    let interests = async {
        for room in ctx.hub.rooms() {
            framed.feed(Frame::Interest { room, on: true }).await?;
        }
        let every = EVERY_USER.to_owned();
        framed.feed(Frame::Presence { user: every }).await?;
        SinkExt::<Frame>::flush(&mut framed).await
    };
    tokio::time::timeout(ctx.dead_after, interests)
        .await
        .map_err(|_| LinkEnd::Stalled(ctx.dead_after))??;
    // Logins elsewhere may have been announced while this link was down;
    // emptied before the link is visible, so no `TELL` through it uses
    // what was cached before.
    ctx.directory.clear_presence();
    if let Some(s) = ctx.links.slots.get(slot) {
        s.tx.store(Some(Arc::new(tx)));
        ctx.metrics.links_up.inc();
    }
    backoff.reset();
    let woken = ctx.hub.catch_up_all();
    tracing::info!(%relay_id, sessions_caught_up = woken, "relay link up");

    let (mut sink, mut stream) = framed.split::<Frame>();
    let live = Mutex::new(Liveness::new(ctx.dead_after, Instant::now()));
    let liveness = || live.lock().unwrap_or_else(PoisonError::into_inner);
    let missed = ctx.links.slots.get(slot).map(|s| &s.missed);
    let catch_ups = CatchUps {
        missed,
        sent: &ctx.metrics.catch_ups_sent,
    };
    let mut writer = Box::pin(write_side(
        &mut sink,
        &mut rx,
        &mut control,
        &live,
        catch_ups,
    ));
    let mut heartbeat = tokio::time::interval_at(Instant::now() + ctx.heartbeat, ctx.heartbeat);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let dead = tokio::time::sleep_until(liveness().deadline());
    tokio::pin!(dead);
    // Made once, not per frame: each new one registers with the token.
    let cancelled = shutdown.cancelled();
    tokio::pin!(cancelled);
    let end = loop {
        tokio::select! {
            () = &mut cancelled => break LinkEnd::Shutdown,
            input = stream.next() => match input {
                Some(Ok(frame)) => {
                    liveness().heard(Instant::now());
                    match handle_inbound(frame, ctx) {
                        Ok(Some(reply)) => { let _ = control_tx.try_send(reply); }
                        Ok(None) => {}
                        Err(end) => break end,
                    }
                }
                Some(Err(e)) => break e.into(),
                None => break LinkEnd::Closed,
            },
            written = &mut writer => break match written {
                Ok(()) => LinkEnd::Closed,
                Err(e) => e.into(),
            },
            _ = heartbeat.tick() => {
                let ping = liveness().next_ping();
                let _ = control_tx.try_send(ping);
            }
            () = &mut dead => {
                let verdict = liveness().verdict(Instant::now());
                match verdict {
                    Some(Death::Silent) => break LinkEnd::Silent(ctx.dead_after),
                    Some(Death::Stalled) => break LinkEnd::Stalled(ctx.dead_after),
                    None => dead.as_mut().reset(liveness().deadline()),
                }
            }
        }
    };
    if matches!(end, LinkEnd::Shutdown) {
        // The writer is dropped here; the sink is ours again.
        drop(writer);
        let bye = async {
            sink.send(Frame::Bye).await?;
            SinkExt::<Frame>::close(&mut sink).await
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), bye).await;
    }
    Err(end)
}

/// What a link's writer needs to send the catch-ups of its slot.
struct CatchUps<'a> {
    missed: Option<&'a MissedCell>,
    sent: &'a Counter,
}

/// The write side of a link: control frames (pings, pongs) first, then
/// everything queued, up to [`MAX_BATCH`] per flush, yielding up to
/// [`MAX_YIELDS`] times for more before it flushes. Tells `live` when
/// frames start waiting and when the socket took them. Before waiting for
/// more, and whenever the queue is at most half full, it writes the
/// [`Frame::CatchUp`]s of what its slot dropped. Ends when the queue closes
/// (`Ok`) or the socket fails.
async fn write_side<W>(
    sink: &mut W,
    rx: &mut mpsc::Receiver<Frame>,
    control: &mut mpsc::Receiver<Frame>,
    live: &Mutex<Liveness<Instant>>,
    catch_ups: CatchUps<'_>,
) -> Result<(), LinkCodecError>
where
    W: Sink<Frame, Error = LinkCodecError> + Unpin,
{
    let liveness = || live.lock().unwrap_or_else(PoisonError::into_inner);
    loop {
        if let Some(missed) = catch_ups.missed
            && missed.is_pending()
            && rx.len() <= rx.max_capacity() / 2
        {
            let frames = missed.take();
            liveness().writing(Instant::now());
            let written = async {
                for frame in &frames {
                    sink.feed(frame.clone()).await?;
                }
                sink.flush().await
            };
            if let Err(e) = written.await {
                // The link is broken: the next one sends them.
                missed.put_back(frames);
                return Err(e);
            }
            liveness().flushed();
            catch_ups.sent.inc_by(frames.len() as u64);
            tracing::debug!(frames = frames.len(), "catch-ups sent for dropped pushes");
        }
        let first = tokio::select! {
            biased;
            Some(frame) = control.recv() => frame,
            frame = rx.recv() => match frame {
                Some(frame) => frame,
                None => return Ok(()),
            },
        };
        liveness().writing(Instant::now());
        sink.feed(first).await?;
        let (mut fed, mut yields) = (1, 0);
        while fed < MAX_BATCH {
            let next = match control.try_recv() {
                Ok(frame) => frame,
                Err(_) => match rx.try_recv() {
                    Ok(frame) => frame,
                    // Under load more frames are a task switch away: let the
                    // sessions run a few times before paying for a write.
                    Err(_) if yields < MAX_YIELDS => {
                        yields += 1;
                        tokio::task::yield_now().await;
                        continue;
                    }
                    Err(_) => break,
                },
            };
            sink.feed(next).await?;
            fed += 1;
        }
        sink.flush().await?;
        liveness().flushed();
    }
}

/// Acts on one frame from the relay; returns a frame to answer with.
fn handle_inbound(frame: Frame, ctx: &LinkContext) -> Result<Option<Frame>, LinkEnd> {
    match frame {
        Frame::Deliver {
            user,
            seq,
            except,
            msg,
            ..
        } => {
            ctx.metrics.frames_from_relay.inc();
            ctx.hub
                .push_user(&user, &Arc::new(Event::Direct { seq, msg }), except);
        }
        Frame::Tell {
            user, except, msg, ..
        } => {
            ctx.metrics.frames_from_relay.inc();
            ctx.hub
                .push_user(&user, &Arc::new(Event::Tell(msg)), except);
        }
        Frame::Room { msg } => {
            ctx.metrics.frames_from_relay.inc();
            let room = msg.room.clone();
            let event = Arc::new(Event::Room(msg));
            if room == BROADCAST_ROOM {
                ctx.hub.push_everyone(&event, None);
            } else {
                ctx.hub.push_room(&room, &event, None);
            }
        }
        Frame::CatchUp { users, .. } => {
            ctx.metrics.frames_from_relay.inc();
            let woken = ctx.hub.catch_up_users(&users);
            tracing::debug!(
                users = users.len(),
                sessions = woken,
                "catch-up asked by the relay"
            );
        }
        Frame::Presence { user } => {
            if user == EVERY_USER {
                ctx.directory.clear_presence();
            } else {
                ctx.directory.forget_presence(&user);
            }
        }
        Frame::Ping(n) => return Ok(Some(Frame::Pong(n))),
        Frame::Pong(_) => {}
        Frame::Bye => return Err(LinkEnd::Bye),
        other => tracing::debug!(kind = other.kind(), "ignoring unexpected frame from relay"),
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_gives_one_value_per_frame() {
        let v: Vec<String> = copies("m".to_owned(), 3).collect();
        assert_eq!(v, ["m", "m", "m"]);
        assert_eq!(copies("m".to_owned(), 0).count(), 0);
    }

    #[test]
    fn a_full_link_queue_drops_and_counts_instead_of_waiting() {
        let metrics = Metrics::default();
        let links = Links::new(2, metrics.clone());
        assert!(!links.send(Frame::Ping(0)), "no link up");
        assert_eq!(metrics.dropped_no_link.get(), 1);

        let (tx, mut rx) = mpsc::channel(1);
        links.slots[0].tx.store(Some(Arc::new(tx)));
        assert!(links.send(Frame::Ping(1)));
        // Full: dropped at once, not queued on the second (ordered) link.
        assert!(!links.send(Frame::Ping(2)));
        assert_eq!(metrics.dropped_link_full.get(), 1);
        assert_eq!(rx.try_recv().ok(), Some(Frame::Ping(1)));
        assert!(rx.try_recv().is_err());

        // A link that died hands the frame to the next live one.
        drop(rx);
        let (tx2, mut rx2) = mpsc::channel(1);
        links.slots[1].tx.store(Some(Arc::new(tx2)));
        assert!(links.send(Frame::Ping(3)));
        assert_eq!(rx2.try_recv().ok(), Some(Frame::Ping(3)));
        assert_eq!(metrics.frames_to_relay.get(), 2);
    }

    fn deliver(to: &str, user: &str) -> Frame {
        Frame::Deliver {
            to_server: to.into(),
            user: user.into(),
            seq: 1,
            except: None,
            msg: shared::link::DirectMsg {
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
    fn a_deliver_dropped_at_a_full_queue_is_written_down_for_that_slot() {
        let links = Links::new(2, Metrics::default());
        let (tx, mut rx) = mpsc::channel(2);
        links.slots[0].tx.store(Some(Arc::new(tx)));
        assert!(links.send_all(deliver("b", "ann")));
        assert!(links.send_all(deliver("b", "ann")));
        assert!(!links.send_all(deliver("b", "bob")));
        // A transient TELL stores nothing: not written down.
        assert!(!links.send(Frame::Tell {
            to_server: "b".into(),
            user: "cy".into(),
            except: None,
            msg: shared::link::DirectMsg {
                id: "t".into(),
                from: "x".into(),
                to: "cy".into(),
                ts: 1,
                text: "psst".into(),
            },
        }));
        assert!(!links.slots[1].missed.is_pending());
        assert_eq!(links.slots[0].missed.take(), vec![catch_up("b", &["bob"])]);
        assert!(rx.try_recv().is_ok() && rx.try_recv().is_ok());
    }

    #[test]
    fn a_deliver_with_no_link_up_is_written_down_in_every_slot() {
        let metrics = Metrics::default();
        let links = Links::new(2, metrics.clone());
        assert!(!links.send_all(deliver("b", "bob")));
        assert_eq!(metrics.dropped_no_link.get(), 1);
        for slot in &links.slots {
            assert_eq!(slot.missed.take(), vec![catch_up("b", &["bob"])]);
        }
    }
}
