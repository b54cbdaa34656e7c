//! Accepting links: the accept loop and the handshake.
//!
//! The loop only accepts, applies the `--max-links` cap and spawns; a
//! failing `accept` (out of file descriptors, say) backs off and retries
//! ([`entry::accept::Acceptor`], the one accept step of both binaries), and
//! nothing a peer sends can reach it. Each connection's task then runs the
//! handshake under `--handshake-timeout`:
//!
//! ```text
//! relay -> Challenge { LINK_VERSION, fresh nonce }
//! peer  -> Hello { version, server_id, epoch, addrs, auth }
//! relay -> Welcome (then crate::link)  or  Refused { reason } and close
//! ```
//!
//! Refusals are logged at warn with the peer and the reason and counted in
//! `relay_links_refused_total{reason}`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use shared::codec::LinkCodec;
use shared::link::handshake::{Accepted, Challenger, RefusalKind};
use shared::link::{Frame, NONCE_LEN};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::codec::Framed;
use tracing::{Instrument, Span, debug, info_span, warn};

use crate::Ctx;
use crate::link::{LinkFramed, LinkIo};
use crate::metrics::RefuseReason;

/// Time to tell a refused peer why, before closing anyway.
const REFUSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Accepts connections until shutdown.
pub(crate) async fn accept_loop(ctx: Arc<Ctx>, listener: TcpListener) {
    let slots = Arc::new(Semaphore::new(ctx.config.max_links));
    let mut acceptor = entry::accept::Acceptor::new(listener, "link");
    while let Some((stream, peer)) = acceptor.next(&ctx.shutdown).await {
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            ctx.metrics.refused(RefuseReason::Full);
            warn!(%peer, limit = ctx.config.max_links, "connection refused: relay at --max-links");
            drop(stream);
            continue;
        };
        let span = info_span!(
            "link",
            %peer,
            server = tracing::field::Empty,
            epoch = tracing::field::Empty
        );
        ctx.tracker
            .spawn(connection(ctx.clone(), stream, peer, slot).instrument(span));
    }
}

/// One connection: handshake, then the link.
async fn connection(
    ctx: Arc<Ctx>,
    stream: TcpStream,
    peer: SocketAddr,
    _slot: OwnedSemaphorePermit,
) {
    if let Err(error) = stream.set_nodelay(true) {
        debug!(%error, "set_nodelay failed");
    }
    let io: Box<dyn LinkIo> = match &ctx.tls {
        None => Box::new(stream),
        Some(acceptor) => {
            let handshake = tokio::select! {
                _ = ctx.shutdown.cancelled() => return,
                r = tokio::time::timeout(ctx.config.handshake_timeout, acceptor.accept(stream)) => r,
            };
            match handshake {
                Ok(Ok(tls)) => Box::new(tls),
                Ok(Err(error)) => {
                    ctx.metrics.refused(RefuseReason::Protocol);
                    warn!(%error, "link refused: TLS handshake failed");
                    return;
                }
                Err(_) => {
                    ctx.metrics.refused(RefuseReason::Timeout);
                    warn!("link refused: no TLS handshake in time");
                    return;
                }
            }
        }
    };
    let mut framed = Framed::new(io, LinkCodec::new(ctx.config.max_frame));
    let result = tokio::select! {
        _ = ctx.shutdown.cancelled() => return,
        r = tokio::time::timeout(ctx.config.handshake_timeout, handshake(&ctx, &mut framed)) => r,
    };
    let refusal = match result {
        Ok(Ok(hello)) => return crate::link::run(ctx, framed, hello).await,
        Ok(Err(refusal)) => refusal,
        Err(_) => Refusal::new(RefuseReason::Timeout, "no hello in time"),
    };
    let Some(reason) = refusal.reason else {
        debug!(%peer, "connection closed before hello");
        return;
    };
    ctx.metrics.refused(reason);
    warn!(reason = reason.label(), detail = %refusal.detail, "link refused");
    // Tell the peer why (not for garbage: it would not understand), then
    // close the socket.
    let told = async {
        if reason != RefuseReason::Malformed {
            framed
                .send(Frame::Refused {
                    reason: refusal.detail.clone(),
                })
                .await
                .ok();
        }
        framed.get_mut().shutdown().await.ok();
    };
    let _ = tokio::time::timeout(REFUSE_TIMEOUT, told).await;
}

/// Why a handshake failed. `reason` is `None` when the peer just left.
#[derive(Debug)]
struct Refusal {
    reason: Option<RefuseReason>,
    /// A sentence for the log and the `Refused` frame.
    detail: String,
}

impl Refusal {
    fn new(reason: RefuseReason, detail: impl Into<String>) -> Refusal {
        Refusal {
            reason: Some(reason),
            detail: detail.into(),
        }
    }
}

/// Sends the challenge and judges the answer ([`Challenger`], the shared
/// handshake core); this end only moves the frames.
async fn handshake(ctx: &Ctx, framed: &mut LinkFramed) -> Result<Accepted, Refusal> {
    let (challenger, challenge) = Challenger::new(rand::random::<[u8; NONCE_LEN]>());
    framed.send(challenge).await.map_err(|_| Refusal {
        reason: None,
        detail: "closed".into(),
    })?;
    let frame = match framed.next().await {
        Some(Ok(frame)) => frame,
        Some(Err(error)) => {
            return Err(Refusal::new(
                RefuseReason::Malformed,
                format!("bad handshake frame: {error}"),
            ));
        }
        None => {
            return Err(Refusal {
                reason: None,
                detail: "closed".into(),
            });
        }
    };
    if let Frame::Hello {
        server_id, epoch, ..
    } = &frame
        && shared::ids::check_name(server_id).is_ok()
    {
        // A valid name is short and safe to log.
        let span = Span::current();
        span.record("server", server_id.as_str());
        span.record("epoch", *epoch);
    }
    challenger.on_hello(frame, &ctx.secret).map_err(|r| {
        let reason = match r.kind {
            RefusalKind::Version => RefuseReason::Version,
            RefusalKind::Name => RefuseReason::Name,
            RefusalKind::Protocol => RefuseReason::Protocol,
            RefusalKind::Auth => RefuseReason::Auth,
        };
        Refusal::new(reason, r.detail)
    })
}
