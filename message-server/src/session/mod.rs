//! One client connection's whole life, in one task: log in, read commands,
//! write answers and pushes, keep alive, and clean up once at the end.
//!
//! This module is the lifecycle only; what each command does is in
//! `commands`, and the inbox replay (login and `SYNC`) in [`replay`].
//!
//! The loop `select!`s over shutdown, the session's [`Outbox`] (a
//! slow-consumer kick, a catch-up wake-up, or queued output, fed in a batch
//! and flushed once), the next input, and one timer for both the keep-alive
//! ping and the idle deadline. A command that needs Redis is awaited in
//! place (this session waits, no other does); a `SEND` is handed to the
//! router and answered from there once stored.
//!
//! This future lives as long as the connection, so it is kept small: the
//! shutdown wait is made once, not per turn of the loop; everything that
//! is not waiting on the socket or the outbox (commands, batches of writes,
//! catch-ups, the close) is boxed, so an idle session carries only the
//! space of its wait.
//!
//! The session remembers the last inbox seq it wrote (`pushed_upto`, with
//! the few written past a hole in `ahead`): a push at or below it is a
//! duplicate and skipped, a push that would leave a hole makes the session
//! read the hole from the inbox first, and a wake-up after a fault
//! ([`crate::hub::Hub::catch_up_all`]) makes it read everything up to the
//! head. So a stored message reaches a live session without the client
//! asking, whatever push was lost.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use shared::client::{ClientError, Command, Encoding, ErrCode, Event, Reply, Request};
use shared::link::Frame;
use tokio::time::Instant;
use tracing::Instrument;

mod commands;
pub mod replay;

use crate::conn::{Close, Conn, Input, code};
use crate::hub::{Out, SessionHandle};
use crate::limits::{RateLimiter, Verdict};
use crate::outbox::{Next, Outbox};
use crate::state::{Admission, State};

/// Queued outputs written per flush.
const WRITE_BATCH: usize = 256;

/// A login asked for at the WebSocket handshake (`/ws?user=..&token=..`).
#[derive(Debug, Clone, Default)]
pub struct HandshakeLogin {
    pub user: String,
    pub token: Option<String>,
    pub device: Option<String>,
}

struct Session {
    state: Arc<State>,
    handle: SessionHandle,
    user: Option<String>,
    device: String,
    admin: bool,
    enc: Encoding,
    rooms: Vec<String>,
    /// Every inbox seq up to this one was written to this session (pushed,
    /// replayed, or its own send); a push at or below it is skipped.
    pushed_upto: u64,
    /// Seqs past `pushed_upto + 1` written already (a push that came early,
    /// this session's own sends).
    ahead: BTreeSet<u64>,
    /// The inbox epoch as last read (empty: not known).
    epoch: String,
    /// The seq and id of the last inbox message written to this session:
    /// while the epoch is not known, a catch-up checks it is still there
    /// (if not, the inbox started over under this session).
    last_written: Option<(u64, Box<str>)>,
    /// The last catch-up could not read the inbox: leave holes alone until
    /// the next wake-up (Redis back) instead of asking on every push.
    catch_up_failed: bool,
    last_heard: Instant,
    rate: RateLimiter,
    /// Jobs handed to the router and not answered yet.
    pending: usize,
}

/// What handling one input decided.
enum Flow {
    Continue,
    Close(Close),
    /// `QUIT`: answer what is still being stored, say `BYE`, close.
    Quit(Encoding, Option<String>),
}

/// Runs one connection to its end. `admission` is its place under the cap.
///
/// A plain function returning the connection's future: the session is
/// built here, before the future exists, and the future owns each part
/// once (an `async fn` would keep its arguments beside the parts made from
/// them for the connection's whole life).
pub fn run<C: Conn>(
    mut conn: C,
    state: Arc<State>,
    peer: SocketAddr,
    login: Option<Box<HandshakeLogin>>,
    admission: Admission,
) -> impl Future<Output = ()> + Send {
    let id = state.ids.session();
    // A debug span: free at the default info level (an info span costs about
    // 600 bytes per idle connection); the warnings below name the session.
    let span = tracing::debug_span!("session", server = %state.identity.server_id, session = %id, %peer, user = tracing::field::Empty);
    let handle = SessionHandle::new(id, state.limits.session_queue);
    let rate = RateLimiter::new(state.limits.rate_limit, state.limits.rate_burst);
    let mut session = Session {
        state,
        handle,
        user: None,
        device: "default".to_owned(),
        admin: false,
        enc: Encoding::Text,
        rooms: Vec::new(),
        pushed_upto: 0,
        ahead: BTreeSet::new(),
        epoch: String::new(),
        last_written: None,
        catch_up_failed: false,
        last_heard: Instant::now(),
        rate,
        pending: 0,
    };
    async move {
        session.state.metrics.connections.inc();
        let close = match login {
            Some(l) => Box::pin(session.login_at_handshake(&mut conn, *l)).await,
            None => None,
        };
        let close = match close {
            Some(close) => close,
            None => session.serve(&mut conn).await,
        };
        if let Some(close) = close {
            tracing::debug!(code = close.code, reason = %close.reason, "closing");
            let _ = Box::pin(tokio::time::timeout(
                Duration::from_secs(2),
                conn.close(&close),
            ))
            .await;
        }
        session.handle.outbox.close();
        Box::pin(session.cleanup()).await;
        session.state.metrics.connections.dec();
        drop(admission);
    }
    .instrument(span)
}

impl Session {
    /// The session's loop, until it ends; `Some(close)`: close it this way.
    async fn serve<C: Conn>(&mut self, conn: &mut C) -> Option<Close> {
        // The state, not a copy of the limits: this future lives as long as
        // the connection, so every byte in it counts.
        let state = Arc::clone(&self.state);
        let limits = &state.limits;
        let max_pending = (limits.session_queue / 2).max(1);
        let outbox = Arc::clone(&self.handle.outbox);
        let shutdown = state.shutdown.cancelled();
        tokio::pin!(shutdown);
        // One timer for the ping and the idle deadline: it fires at the
        // earlier of the two and is set again from what is due then. Input
        // only moves `last_heard`; the timer is not touched per line.
        let mut ping_due = Instant::now() + limits.ping_interval;
        let timer = tokio::time::sleep_until(self.wake_at(conn.has_ping(), ping_due));
        tokio::pin!(timer);
        loop {
            tokio::select! {
                biased;
                () = &mut shutdown => {
                    return Some(Close::new(code::GOING_AWAY, None, "server shutting down"));
                }
                next = outbox.next(self.user.is_some()) => match next {
                    Next::Kicked => {
                        return Some(Close::new(code::POLICY, Some(ErrCode::Limit), "too slow: pushes were not read in time"));
                    }
                    Next::CatchUp => {
                        if let Err(e) = Box::pin(self.catch_up(conn)).await {
                            tracing::debug!(error = %e, "write failed");
                            return None;
                        }
                    }
                    Next::Item(out) => {
                        if let Err(e) = Box::pin(self.write_batch(conn, out, &outbox)).await {
                            tracing::debug!(error = %e, "write failed");
                            return None;
                        }
                    }
                },
                // A client with many sends in flight is not read until their
                // answers are written: its own replies can never overflow its
                // queue, and the backpressure reaches its socket.
                input = conn.recv(), if self.pending < max_pending => {
                    self.last_heard = Instant::now();
                    if let Some(end) = Box::pin(self.on_input(conn, input, &outbox)).await {
                        return end;
                    }
                }
                () = &mut timer => {
                    let now = Instant::now();
                    if now >= self.last_heard + self.idle_limit() {
                        let reason = if self.user.is_some() { "idle timeout" } else { "no login in time" };
                        return Some(Close::new(code::GOING_AWAY, Some(ErrCode::Limit), reason));
                    }
                    if conn.has_ping() && now >= ping_due {
                        if Box::pin(conn.ping()).await.is_err() {
                            return None;
                        }
                        ping_due = Instant::now() + limits.ping_interval;
                    }
                    timer.as_mut().reset(self.wake_at(conn.has_ping(), ping_due));
                }
            }
        }
    }

    /// When the session's one timer should fire next: the idle deadline, or
    /// the next ping if that comes first.
    fn wake_at(&self, pings: bool, ping_due: Instant) -> Instant {
        let idle = self.last_heard + self.idle_limit();
        if pings { idle.min(ping_due) } else { idle }
    }

    /// The login asked for at the WebSocket handshake. `Some(end)`: the
    /// session ends (`end` is its close).
    async fn login_at_handshake<C: Conn>(
        &mut self,
        conn: &mut C,
        l: HandshakeLogin,
    ) -> Option<Option<Close>> {
        {
            let req = Request {
                cmd: Command::Login {
                    user: l.user,
                    token: l.token,
                    device: l.device,
                },
                enc: Encoding::Text,
                cid: None,
            };
            if let Flow::Close(c) = Box::pin(self.apply(conn, req)).await {
                return Some(Some(c));
            }
            if self.user.is_none() {
                let _ = conn.flush().await;
                return Some(Some(Close::new(
                    code::POLICY,
                    Some(ErrCode::Auth),
                    "login at handshake failed",
                )));
            }
            if conn.flush().await.is_err() {
                return Some(None);
            }
        }
        None
    }

    /// One input from the client: rate-limited, handled, answers flushed.
    /// `Some(end)`: the session ends (`end` is its close).
    async fn on_input<C: Conn>(
        &mut self,
        conn: &mut C,
        input: Input,
        outbox: &Outbox,
    ) -> Option<Option<Close>> {
        let state = Arc::clone(&self.state);
        let limits = &state.limits;
        if matches!(input, Input::Text(_) | Input::TooLong | Input::BadUtf8) {
            match self.rate.check() {
                Verdict::Allow => {}
                Verdict::Refuse => {
                    let err = ClientError::new(
                        ErrCode::Rate,
                        format!(
                            "slow down: over {} commands per second; command dropped",
                            limits.rate_limit,
                        ),
                    );
                    let enc = match &input {
                        Input::Text(t) if t.trim_start().starts_with('{') => Encoding::Json,
                        _ => Encoding::Text,
                    };
                    if let Flow::Close(c) = self.answer(conn, enc, None, err.into()).await {
                        return Some(Some(c));
                    }
                    if conn.flush().await.is_err() {
                        return Some(None);
                    }
                    return None;
                }
                Verdict::Close => {
                    return Some(Some(Close::new(
                        code::POLICY,
                        Some(ErrCode::Rate),
                        "rate limit exceeded again and again",
                    )));
                }
            }
        }
        let flow = match input {
            Input::Text(text) => self.input(conn, &text).await,
            Input::TooLong => {
                self.answer(
                    conn,
                    Encoding::Text,
                    None,
                    ClientError::new(
                        ErrCode::TooLong,
                        format!(
                            "line is over the limit of {} bytes and was skipped",
                            limits.max_message
                        ),
                    )
                    .into(),
                )
                .await
            }
            Input::BadUtf8 => {
                self.answer(
                    conn,
                    Encoding::Text,
                    None,
                    ClientError::new(ErrCode::Syntax, "line is not valid UTF-8 and was skipped")
                        .into(),
                )
                .await
            }
            Input::Activity => Flow::Continue,
            Input::Closed => {
                // Sends the close reply tungstenite queued, if any.
                let _ = tokio::time::timeout(Duration::from_secs(1), conn.flush()).await;
                return Some(None);
            }
            Input::Fatal(close) => return Some(Some(close)),
        };
        match flow {
            Flow::Continue => {}
            Flow::Close(c) => return Some(Some(c)),
            Flow::Quit(enc, cid) => return Some(Some(self.quit(conn, outbox, enc, cid).await)),
        }
        if conn.flush().await.is_err() {
            return Some(None);
        }
        None
    }

    /// `QUIT`: the answers to sends still being stored come first (for at
    /// most the write timeout), then `BYE`, then a normal close.
    async fn quit<C: Conn>(
        &mut self,
        conn: &mut C,
        outbox: &Outbox,
        enc: Encoding,
        cid: Option<String>,
    ) -> Close {
        let deadline = Instant::now() + self.state.limits.write_timeout;
        while self.pending > 0 {
            match tokio::time::timeout_at(deadline, outbox.next(false)).await {
                Ok(Next::Item(out)) => {
                    if self.write_out(conn, out).await.is_err() {
                        break;
                    }
                }
                Ok(Next::Kicked | Next::CatchUp) | Err(_) => break,
            }
        }
        let _ = self.answer(conn, enc, cid.as_deref(), Reply::Bye).await;
        let _ = conn.flush().await;
        Close::new(code::NORMAL, None, "bye")
    }

    fn idle_limit(&self) -> Duration {
        if self.user.is_some() {
            self.state.limits.idle_timeout
        } else {
            self.state
                .limits
                .login_timeout
                .min(self.state.limits.idle_timeout)
        }
    }

    /// Writes `first` and whatever else is queued (up to a batch), one flush.
    async fn write_batch<C: Conn>(
        &mut self,
        conn: &mut C,
        first: Out,
        outbox: &Outbox,
    ) -> Result<(), crate::conn::WriteError> {
        let write_timeout = self.state.limits.write_timeout;
        let work = async {
            self.write_out(conn, first).await?;
            for _ in 0..WRITE_BATCH {
                match outbox.try_pop() {
                    Some(out) => self.write_out(conn, out).await?,
                    None => break,
                }
            }
            conn.flush().await
        };
        match tokio::time::timeout(write_timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(crate::conn::WriteError::timeout()),
        }
    }

    async fn write_out<C: Conn>(
        &mut self,
        conn: &mut C,
        out: Out,
    ) -> Result<(), crate::conn::WriteError> {
        match out {
            Out::Reply(line) => {
                self.pending = self.pending.saturating_sub(1);
                conn.feed(*line).await
            }
            Out::Sent(sent) => {
                self.pending = self.pending.saturating_sub(1);
                let (line, own_seq) = *sent;
                self.mark(own_seq);
                conn.feed(line).await
            }
            Out::Event(ev) => {
                if let Event::Direct { seq, .. } = &*ev {
                    let seq = *seq;
                    if self.written(seq) {
                        return Ok(());
                    }
                    if seq > self.pushed_upto + 1 && !self.catch_up_failed {
                        // A hole before this push: read it from the inbox
                        // first (which brings this one too, normally).
                        Box::pin(self.catch_up(conn)).await?;
                        if self.written(seq) {
                            return Ok(());
                        }
                    }
                    self.mark(seq);
                    if let Event::Direct { msg, .. } = &*ev {
                        self.last_written = Some((seq, msg.id.as_str().into()));
                    }
                }
                conn.feed(ev.render(self.enc)).await
            }
        }
    }

    async fn input<C: Conn>(&mut self, conn: &mut C, text: &str) -> Flow {
        match shared::client::parse(text) {
            Ok(req) => {
                self.enc = req.enc;
                self.apply(conn, req).await
            }
            Err((err, enc, cid)) => self.answer(conn, enc, cid.as_deref(), err.into()).await,
        }
    }

    async fn answer<C: Conn>(
        &mut self,
        conn: &mut C,
        enc: Encoding,
        cid: Option<&str>,
        reply: Reply,
    ) -> Flow {
        match conn.feed(reply.render(enc, cid)).await {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Close(Close::new(code::GOING_AWAY, None, "write failed")),
        }
    }

    fn user_name(&self) -> String {
        self.user.clone().unwrap_or_default()
    }

    /// Once, after the loop: out of the hub and rooms, out of Redis.
    async fn cleanup(&mut self) {
        let Some(user) = self.user.take() else { return };
        let emptied = self.state.hub.remove(&user, self.handle.id, &self.rooms);
        for room in emptied {
            self.state
                .links
                .tell_all(Frame::Interest { room, on: false });
        }
        let removal = self.state.directory.remove_session(&user, self.handle.id);
        match tokio::time::timeout(Duration::from_secs(3), removal).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                crate::warn_limited!(session = %self.handle.id, %user, error = %e, "session entry not removed; the server purge will")
            }
            Err(_) => {
                crate::warn_limited!(session = %self.handle.id, %user, "session entry removal timed out; the server purge will")
            }
        }
        tracing::debug!("session ended");
    }
}
