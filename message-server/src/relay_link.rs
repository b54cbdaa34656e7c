//! The links from this server to the relay(s).
//!
//! One task per relay address keeps one link up: connect, answer the
//! challenge, then one `select!` over frames from the relay, frames queued
//! for it (fed in batches, flushed once), the heartbeat and shutdown. When
//! the link dies it reconnects with exponential backoff and jitter; while no
//! link is up the server keeps serving local traffic and reports
//! `degraded`.
//!
//! [`Links`] is what the rest of the server sends through: it picks the
//! first live link (sticky, so frames keep their order) and knows how many
//! are up.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use shared::client::Event;
use shared::codec::LinkCodec;
use shared::link::{BROADCAST_ROOM, Frame, LINK_VERSION, ServerAddrs, auth_tag};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::hub::Hub;
use crate::metrics::Metrics;

/// The outbound queues of the live links, one slot per configured relay.
pub struct Links {
    slots: Vec<ArcSwapOption<mpsc::Sender<Frame>>>,
    metrics: Metrics,
}

impl Links {
    /// `n` empty slots.
    pub fn new(n: usize, metrics: Metrics) -> Links {
        Links {
            slots: (0..n).map(|_| ArcSwapOption::empty()).collect(),
            metrics,
        }
    }

    /// Sends through the first live link, waiting while its queue is full
    /// (backpressure). Returns false, counting it, when no link is up.
    pub async fn send(&self, mut frame: Frame) -> bool {
        for slot in &self.slots {
            let Some(tx) = slot.load_full() else { continue };
            match tx.send(frame).await {
                Ok(()) => {
                    self.metrics.frames_to_relay.inc();
                    return true;
                }
                // That link just died: take the frame back, try the next one.
                Err(mpsc::error::SendError(f)) => frame = f,
            }
        }
        self.metrics.dropped_no_link.inc();
        false
    }

    /// Queues `frame` on every live link without waiting (room interest:
    /// every relay must know). A full queue drops it; the next relink
    /// re-sends every interest anyway.
    pub fn tell_all(&self, frame: Frame) {
        for slot in &self.slots {
            if let Some(tx) = slot.load_full() {
                let _ = tx.try_send(frame.clone());
            }
        }
    }

    /// Live links.
    pub fn up(&self) -> usize {
        self.slots.iter().filter(|s| s.load().is_some()).count()
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
    #[error("handshake: {0}")]
    Handshake(String),
    #[error("refused by relay: {0}")]
    Refused(String),
    #[error("link: {0}")]
    Codec(#[from] shared::codec::LinkCodecError),
    #[error("relay silent for {0:?}")]
    Silent(Duration),
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
        let mut backoff = Duration::from_millis(100);
        loop {
            let result = run_once(&addr, slot, &ctx, &shutdown, &mut backoff).await;
            if let Some(s) = ctx.links.slots.get(slot)
                && s.swap(None).is_some()
            {
                ctx.metrics.links_up.dec();
                let reason = result.as_ref().err().map(ToString::to_string).unwrap_or_default();
                tracing::warn!(%reason, "relay link down; serving local traffic only until it is back");
            }
            match result {
                Err(LinkEnd::Shutdown) | Ok(()) => return,
                Err(e) => tracing::debug!(error = %e, retry_in = ?backoff, "relay link attempt failed"),
            }
            // Exponential backoff with full jitter, capped at 5 s.
            let wait = rand::rng().random_range(backoff / 2..=backoff);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
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
    backoff: &mut Duration,
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

/// The link over an established (plain or TLS) stream: handshake, then serve.
async fn linked<S: AsyncRead + AsyncWrite + Unpin>(
    mut framed: Framed<S, LinkCodec>,
    slot: usize,
    ctx: &LinkContext,
    shutdown: &CancellationToken,
    backoff: &mut Duration,
) -> Result<(), LinkEnd> {
    // Handshake: Challenge -> Hello -> Welcome.
    let first = tokio::time::timeout(Duration::from_secs(5), framed.next())
        .await
        .map_err(|_| LinkEnd::Handshake("no challenge within 5 s".into()))?;
    let nonce = match first {
        Some(Ok(Frame::Challenge { version, nonce })) if version == LINK_VERSION => nonce,
        Some(Ok(Frame::Challenge { version, .. })) => {
            return Err(LinkEnd::Handshake(format!(
                "relay speaks link version {version}, we speak {LINK_VERSION}"
            )));
        }
        Some(Ok(other)) => {
            return Err(LinkEnd::Handshake(format!(
                "expected challenge, got {}",
                other.kind()
            )));
        }
        Some(Err(e)) => return Err(e.into()),
        None => return Err(LinkEnd::Closed),
    };
    framed
        .send(Frame::Hello {
            version: LINK_VERSION,
            server_id: ctx.server_id.clone(),
            epoch: ctx.epoch,
            addrs: ctx.addrs.clone(),
            auth: auth_tag(&ctx.secret, &nonce, &ctx.server_id, ctx.epoch),
        })
        .await?;
    let answer = tokio::time::timeout(Duration::from_secs(5), framed.next())
        .await
        .map_err(|_| LinkEnd::Handshake("no welcome within 5 s".into()))?;
    let relay_id = match answer {
        Some(Ok(Frame::Welcome { relay_id })) => relay_id,
        Some(Ok(Frame::Refused { reason })) => {
            tracing::error!(%reason, "relay refused this server's link; check --link-secret-file and versions");
            return Err(LinkEnd::Refused(reason));
        }
        Some(Ok(other)) => {
            return Err(LinkEnd::Handshake(format!(
                "expected welcome, got {}",
                other.kind()
            )));
        }
        Some(Err(e)) => return Err(e.into()),
        None => return Err(LinkEnd::Closed),
    };

    let (tx, mut rx) = mpsc::channel(ctx.queue.max(1));
    if let Some(s) = ctx.links.slots.get(slot) {
        s.store(Some(Arc::new(tx)));
        ctx.metrics.links_up.inc();
    }
    *backoff = Duration::from_millis(100);
    tracing::info!(%relay_id, "relay link up");

    // The relay keeps no state across links: tell it our rooms again.
    for room in ctx.hub.rooms() {
        framed.feed(Frame::Interest { room, on: true }).await?;
    }
    SinkExt::<Frame>::flush(&mut framed).await?;

    let mut heartbeat = tokio::time::interval(ctx.heartbeat);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ping_seq = AtomicU64::new(0);
    let mut last_heard = Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                let _ = tokio::time::timeout(Duration::from_secs(1), framed.send(Frame::Bye)).await;
                return Err(LinkEnd::Shutdown);
            }
            input = framed.next() => {
                last_heard = Instant::now();
                match input {
                    Some(Ok(frame)) => {
                        if let Some(reply) = handle_inbound(frame, ctx)? {
                            framed.send(reply).await?;
                        }
                    }
                    Some(Err(e)) => return Err(e.into()),
                    None => return Err(LinkEnd::Closed),
                }
            }
            out = rx.recv() => {
                let Some(frame) = out else { return Err(LinkEnd::Closed) };
                framed.feed(frame).await?;
                // Batch: everything already queued goes out with one flush.
                let mut n = 0;
                while n < 1024 {
                    match rx.try_recv() {
                        Ok(f) => { framed.feed(f).await?; n += 1; }
                        Err(_) => break,
                    }
                }
                SinkExt::<Frame>::flush(&mut framed).await?;
            }
            _ = heartbeat.tick() => {
                if last_heard.elapsed() > ctx.dead_after {
                    return Err(LinkEnd::Silent(ctx.dead_after));
                }
                framed.send(Frame::Ping(ping_seq.fetch_add(1, Ordering::Relaxed))).await?;
            }
        }
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
        Frame::Ping(n) => return Ok(Some(Frame::Pong(n))),
        Frame::Pong(_) => {}
        Frame::Bye => return Err(LinkEnd::Bye),
        other => tracing::debug!(kind = other.kind(), "ignoring unexpected frame from relay"),
    }
    Ok(None)
}
