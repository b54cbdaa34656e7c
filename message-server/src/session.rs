//! One client connection's whole life, in one task: log in, read commands,
//! write answers and pushes, keep alive, and clean up once at the end.
//!
//! The loop `select!`s over shutdown, a slow-consumer kick, the outbound
//! queue (fed in a batch, flushed once), the next input, the keep-alive ping
//! and the idle deadline. A command that needs Redis is awaited in place
//! (this session waits, no other does); a `SEND` is handed to the router and
//! answered from there once stored.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use shared::client::{ClientError, Command, Encoding, ErrCode, Event, Reply, Request};
use shared::link::{BROADCAST_ROOM, DirectMsg, Frame, RoomMsg};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::conn::{Close, Conn, Input, code};
use crate::directory::now_ms;
use crate::hub::{Out, SessionHandle};
use crate::limits::{RateLimiter, Verdict};
use crate::router::{Job, Origin};
use crate::state::{Admission, Login, State};

/// Messages read from an inbox per Redis round trip during a replay.
const REPLAY_PAGE: usize = 500;
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
    /// Pushes of inbox messages up to this seq were already written by a
    /// replay (login or `SYNC`); skip them when they arrive live.
    replayed_upto: u64,
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

/// Runs one connection to its end. `permit` is its place under the cap.
pub async fn run<C: Conn>(
    mut conn: C,
    state: Arc<State>,
    peer: SocketAddr,
    login: Option<HandshakeLogin>,
    admission: Admission,
) {
    let (tx, rx) = mpsc::channel(state.limits.session_queue.max(1));
    let id = state.ids.session();
    // A debug span: free at the default info level (an info span costs about
    // 600 bytes per idle connection); the warnings below name the session.
    let span = tracing::debug_span!("session", server = %state.server_id, session = %id, %peer, user = tracing::field::Empty);
    let handle = SessionHandle {
        id,
        tx,
        kick: CancellationToken::new(),
    };
    let mut session = Session {
        state: Arc::clone(&state),
        handle,
        user: None,
        device: "default".to_owned(),
        admin: false,
        enc: Encoding::Text,
        rooms: Vec::new(),
        replayed_upto: 0,
        last_heard: Instant::now(),
        rate: RateLimiter::new(state.limits.rate_limit, state.limits.rate_burst),
        pending: 0,
    };
    state.metrics.connections.inc();
    async {
        let close = session.serve(&mut conn, rx, login).await;
        if let Some(close) = close {
            tracing::debug!(code = close.code, reason = %close.reason, "closing");
            let _ = Box::pin(tokio::time::timeout(
                Duration::from_secs(2),
                conn.close(&close),
            ))
            .await;
        }
        Box::pin(session.cleanup()).await;
    }
    .instrument(span)
    .await;
    state.metrics.connections.dec();
    drop(admission);
}

impl Session {
    async fn serve<C: Conn>(
        &mut self,
        conn: &mut C,
        mut rx: mpsc::Receiver<Out>,
        login: Option<HandshakeLogin>,
    ) -> Option<Close> {
        if let Some(l) = login {
            let req = Request {
                cmd: Command::Login {
                    user: l.user,
                    token: l.token,
                    device: l.device,
                },
                enc: Encoding::Text,
                cid: None,
            };
            if let Flow::Close(c) = Box::pin(self.handle(conn, req)).await {
                return Some(c);
            }
            if self.user.is_none() {
                let _ = conn.flush().await;
                return Some(Close::new(
                    code::POLICY,
                    Some(ErrCode::Auth),
                    "login at handshake failed",
                ));
            }
            if conn.flush().await.is_err() {
                return None;
            }
        }
        // The state, not a copy of the limits: this future lives as long as
        // the connection, so every byte in it counts.
        let state = Arc::clone(&self.state);
        let limits = &state.limits;
        let max_pending = (limits.session_queue / 2).max(1);
        let kick = self.handle.kick.clone();
        let shutdown = self.state.shutdown.clone();
        let idle = tokio::time::sleep(self.idle_limit());
        tokio::pin!(idle);
        let ping = tokio::time::sleep(limits.ping_interval);
        tokio::pin!(ping);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    return Some(Close::new(code::GOING_AWAY, None, "server shutting down"));
                }
                _ = kick.cancelled() => {
                    return Some(Close::new(code::POLICY, Some(ErrCode::Limit), "too slow: pushes were not read in time"));
                }
                out = rx.recv() => {
                    let out = out?;
                    if let Err(e) = Box::pin(self.write_batch(conn, out, &mut rx)).await {
                        tracing::debug!(error = %e, "write failed");
                        return None;
                    }
                }
                // A client with many sends in flight is not read until their
                // answers are written: its own replies can never overflow its
                // queue, and the backpressure reaches its socket.
                input = conn.recv(), if self.pending < max_pending => {
                    self.last_heard = Instant::now();
                    if matches!(input, Input::Text(_) | Input::TooLong | Input::BadUtf8) {
                        match self.rate.check() {
                            Verdict::Allow => {}
                            Verdict::Refuse => {
                                let err = ClientError::new(ErrCode::Rate, format!(
                                    "slow down: over {} commands per second; command dropped",
                                    limits.rate_limit,
                                ));
                                let enc = match &input { Input::Text(t) if t.trim_start().starts_with('{') => Encoding::Json, _ => Encoding::Text };
                                if let Flow::Close(c) = self.answer(conn, enc, None, err.into()).await {
                                    return Some(c);
                                }
                                if conn.flush().await.is_err() {
                                    return None;
                                }
                                continue;
                            }
                            Verdict::Close => {
                                return Some(Close::new(code::POLICY, Some(ErrCode::Rate), "rate limit exceeded again and again"));
                            }
                        }
                    }
                    let flow = match input {
                        // Boxed: command handling is the deepest future here, and an
                        // idle session should not carry its space.
                        Input::Text(text) => Box::pin(self.input(conn, &text)).await,
                        Input::TooLong => self.answer(conn, Encoding::Text, None, ClientError::new(
                            ErrCode::TooLong,
                            format!("line is over the limit of {} bytes and was skipped", limits.max_message),
                        ).into()).await,
                        Input::BadUtf8 => self.answer(conn, Encoding::Text, None, ClientError::new(
                            ErrCode::Syntax, "line is not valid UTF-8 and was skipped",
                        ).into()).await,
                        Input::Activity => Flow::Continue,
                        Input::Closed => {
                            // Sends the close reply tungstenite queued, if any.
                            let _ = tokio::time::timeout(Duration::from_secs(1), conn.flush()).await;
                            return None;
                        }
                        Input::Fatal(close) => return Some(close),
                    };
                    match flow {
                        Flow::Continue => {}
                        Flow::Close(c) => return Some(c),
                        Flow::Quit(enc, cid) => return Some(Box::pin(self.quit(conn, &mut rx, enc, cid)).await),
                    }
                    if conn.flush().await.is_err() {
                        return None;
                    }
                }
                () = &mut ping, if conn.has_ping() => {
                    if conn.ping().await.is_err() {
                        return None;
                    }
                    ping.as_mut().reset(Instant::now() + limits.ping_interval);
                }
                () = &mut idle => {
                    let deadline = self.last_heard + self.idle_limit();
                    if Instant::now() >= deadline {
                        let reason = if self.user.is_some() { "idle timeout" } else { "no login in time" };
                        return Some(Close::new(code::GOING_AWAY, Some(ErrCode::Limit), reason));
                    }
                    idle.as_mut().reset(deadline);
                }
            }
        }
    }

    /// `QUIT`: the answers to sends still being stored come first (for at
    /// most the write timeout), then `BYE`, then a normal close.
    async fn quit<C: Conn>(
        &mut self,
        conn: &mut C,
        rx: &mut mpsc::Receiver<Out>,
        enc: Encoding,
        cid: Option<String>,
    ) -> Close {
        let deadline = Instant::now() + self.state.limits.write_timeout;
        while self.pending > 0 {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(out)) => {
                    if self.write_out(conn, out).await.is_err() {
                        break;
                    }
                }
                Ok(None) | Err(_) => break,
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
        rx: &mut mpsc::Receiver<Out>,
    ) -> Result<(), crate::conn::WriteError> {
        let write_timeout = self.state.limits.write_timeout;
        let work = async {
            self.write_out(conn, first).await?;
            for _ in 0..WRITE_BATCH {
                match rx.try_recv() {
                    Ok(out) => self.write_out(conn, out).await?,
                    Err(_) => break,
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
            Out::Event(ev) => {
                if let Event::Direct { seq, .. } = &*ev
                    && *seq <= self.replayed_upto
                {
                    return Ok(());
                }
                conn.feed(ev.render(self.enc)).await
            }
        }
    }

    async fn input<C: Conn>(&mut self, conn: &mut C, text: &str) -> Flow {
        match shared::client::parse(text) {
            Ok(req) => {
                self.enc = req.enc;
                self.handle(conn, req).await
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

    async fn handle<C: Conn>(&mut self, conn: &mut C, req: Request) -> Flow {
        let Request { cmd, enc, cid } = req;
        let cid = cid.as_deref();
        let reply: Reply = match cmd {
            Command::Ping => Reply::Pong,
            Command::Help => Reply::Help,
            Command::Quit => return Flow::Quit(enc, cid.map(str::to_owned)),
            Command::Login {
                user,
                token,
                device,
            } => match self.login(user, token, device).await {
                Ok(reply) => {
                    let flow = self.answer(conn, enc, cid, reply).await;
                    if let Flow::Close(c) = flow {
                        return Flow::Close(c);
                    }
                    // What arrived while this device was away.
                    return self.replay_unacked(conn).await;
                }
                Err(e) if e.code == ErrCode::Limit => {
                    // Past --max-sessions-per-user: told why, then closed.
                    if let Flow::Close(c) = self.answer(conn, enc, cid, e.into()).await {
                        return Flow::Close(c);
                    }
                    return Flow::Close(Close::new(
                        code::POLICY,
                        Some(ErrCode::Limit),
                        "too many sessions for this user",
                    ));
                }
                Err(e) => e.into(),
            },
            _ if self.user.is_none() => {
                ClientError::new(ErrCode::Login, "log in first: LOGIN <user> [<token>]").into()
            }
            Command::Send { to, text } => return self.send(conn, enc, cid, to, text).await,
            Command::Pub { room, text } => {
                let msg = self.room_msg(room, text);
                return self
                    .submit(conn, enc, cid, |origin| Job::Publish { msg, origin })
                    .await;
            }
            Command::All { text } => {
                if !self.admin {
                    ClientError::new(
                        ErrCode::Forbidden,
                        "broadcast to everyone needs the admin role",
                    )
                    .into()
                } else {
                    let msg = self.room_msg(BROADCAST_ROOM.to_owned(), text);
                    return self
                        .submit(conn, enc, cid, |origin| Job::Broadcast { msg, origin })
                        .await;
                }
            }
            Command::Join { room } => {
                if !self.rooms.contains(&room) {
                    if self.state.hub.join(&room, self.handle.clone()) {
                        self.state.links.tell_all(Frame::Interest {
                            room: room.clone(),
                            on: true,
                        });
                    }
                    self.rooms.push(room.clone());
                }
                Reply::Joined { room }
            }
            Command::Leave { room } => {
                if let Some(i) = self.rooms.iter().position(|r| *r == room) {
                    self.rooms.swap_remove(i);
                    if self.state.hub.leave(&room, self.handle.id) {
                        self.state.links.tell_all(Frame::Interest {
                            room: room.clone(),
                            on: false,
                        });
                    }
                }
                Reply::Left { room }
            }
            Command::Ack { seq } => {
                let (user, device) = (self.user_name(), self.device.clone());
                match self.state.store.ack(&user, &device, seq).await {
                    Ok(()) => return Flow::Continue,
                    Err(e) => {
                        tracing::warn!(session = %self.handle.id, user = self.user.as_deref().unwrap_or("-"), error = %e, "ack not stored");
                        ClientError::new(
                            ErrCode::Unavailable,
                            "ack not stored: storage is unavailable",
                        )
                        .into()
                    }
                }
            }
            Command::Sync { after, epoch } => return self.sync(conn, enc, cid, after, epoch).await,
            Command::History { room, count } => {
                let bound = self.state.limits.room_history;
                let count = count.unwrap_or(bound).min(bound);
                match self.state.store.room_history(&room, count).await {
                    Ok(messages) => {
                        let n = messages.len() as u64;
                        for msg in messages {
                            if conn.feed(Event::Room(msg).render(enc)).await.is_err() {
                                return Flow::Close(Close::new(
                                    code::GOING_AWAY,
                                    None,
                                    "write failed",
                                ));
                            }
                        }
                        Reply::History { room, count: n }
                    }
                    Err(e) => {
                        tracing::warn!(session = %self.handle.id, error = %e, "room history not read");
                        ClientError::new(
                            ErrCode::Unavailable,
                            "room history is unavailable right now",
                        )
                        .into()
                    }
                }
            }
            Command::Who { user } => match self.state.directory.who(&user).await {
                Ok(0) => Reply::Offline { user },
                Ok(n) => Reply::Online { user, sessions: n },
                Err(e) => {
                    tracing::warn!(session = %self.handle.id, user = self.user.as_deref().unwrap_or("-"), error = %e, "who failed");
                    ClientError::new(ErrCode::Unavailable, "presence is unavailable right now")
                        .into()
                }
            },
        };
        self.answer(conn, enc, cid, reply).await
    }

    fn user_name(&self) -> String {
        self.user.clone().unwrap_or_default()
    }

    fn room_msg(&self, room: String, text: String) -> RoomMsg {
        RoomMsg {
            room,
            from: self.user_name(),
            id: self.state.ids.message(),
            ts: now_ms(),
            text,
        }
    }

    async fn login(
        &mut self,
        user: String,
        token: Option<String>,
        device: Option<String>,
    ) -> Result<Reply, ClientError> {
        if let Some(current) = &self.user {
            return Err(ClientError::new(
                ErrCode::Login,
                format!("already logged in as {current}"),
            ));
        }
        self.admin = match &self.state.login {
            Login::Insecure => true,
            Login::Token(auth) => {
                let Some(token) = token else {
                    return Err(ClientError::new(
                        ErrCode::Auth,
                        "a token is required: LOGIN <user> <token>",
                    ));
                };
                let claims = auth
                    .verify_user(&token, &user)
                    .map_err(|e| ClientError::new(ErrCode::Auth, e.to_string()))?;
                claims.admin
            }
        };
        match self
            .state
            .directory
            .add_session(&user, self.handle.id)
            .await
        {
            Ok(Ok(())) => {}
            Ok(Err(crate::directory::TooManySessions)) => {
                return Err(ClientError::new(
                    ErrCode::Limit,
                    format!("too many sessions for {user}"),
                ));
            }
            Err(e) => {
                tracing::warn!(session = %self.handle.id, user = self.user.as_deref().unwrap_or("-"), error = %e, "session not recorded");
                return Err(ClientError::new(
                    ErrCode::Unavailable,
                    "cannot log in: the directory is unavailable; try again",
                ));
            }
        }
        self.state.hub.add(&user, self.handle.clone());
        tracing::Span::current().record("user", user.as_str());
        tracing::debug!("logged in");
        self.device = device.unwrap_or_else(|| "default".to_owned());
        self.user = Some(user.clone());
        Ok(Reply::LoggedIn {
            user,
            session: self.handle.id,
        })
    }

    async fn submit<C: Conn>(
        &mut self,
        conn: &mut C,
        enc: Encoding,
        cid: Option<&str>,
        job: impl FnOnce(Origin) -> Job,
    ) -> Flow {
        let origin = Origin {
            session: self.handle.clone(),
            enc,
            cid: cid.map(str::to_owned),
        };
        // A full router queue makes this session wait: backpressure.
        self.pending += 1;
        if self.state.router.send(job(origin)).await.is_err() {
            self.pending -= 1;
            let err = ClientError::new(ErrCode::Unavailable, "server is shutting down");
            return self.answer(conn, enc, cid, err.into()).await;
        }
        Flow::Continue
    }

    async fn send<C: Conn>(
        &mut self,
        conn: &mut C,
        enc: Encoding,
        cid: Option<&str>,
        to: String,
        text: String,
    ) -> Flow {
        let msg = DirectMsg {
            id: self.state.ids.message(),
            from: self.user_name(),
            to,
            ts: now_ms(),
            text,
        };
        self.submit(conn, enc, cid, |origin| Job::Send { msg, origin })
            .await
    }

    /// Login replay: what this device has not acknowledged.
    async fn replay_unacked<C: Conn>(&mut self, conn: &mut C) -> Flow {
        let user = self.user_name();
        match self.state.store.cursor(&user, &self.device).await {
            Ok(cursor) => match self.replay(conn, cursor, None).await {
                Ok(_) => Flow::Continue,
                Err(flow) => flow,
            },
            Err(e) => {
                tracing::warn!(session = %self.handle.id, user = self.user.as_deref().unwrap_or("-"), error = %e, "cursor not read; skipping login replay");
                Flow::Continue
            }
        }
    }

    async fn sync<C: Conn>(
        &mut self,
        conn: &mut C,
        enc: Encoding,
        cid: Option<&str>,
        after: u64,
        epoch: Option<String>,
    ) -> Flow {
        let saved = self.enc;
        self.enc = enc;
        let result = self.replay(conn, after, epoch).await;
        self.enc = saved;
        match result {
            Ok((last, epoch)) => {
                self.answer(conn, enc, cid, Reply::Synced { last, epoch })
                    .await
            }
            Err(flow) => flow,
        }
    }

    /// Writes `user`'s inbox after `after`, saying so first when part of it
    /// cannot be replayed. Returns the last seq written (or `after`) and the
    /// inbox epoch.
    async fn replay<C: Conn>(
        &mut self,
        conn: &mut C,
        after: u64,
        epoch: Option<String>,
    ) -> Result<(u64, String), Flow> {
        let user = self.user_name();
        let store = self.state.store.clone();
        let session = self.handle.id;
        let unavailable = |e: crate::db::DbError| {
            tracing::warn!(%session, user = %user, error = %e, "inbox not read");
            ClientError::new(
                ErrCode::Unavailable,
                "inbox is unavailable right now; SYNC again",
            )
        };
        let mut page = match store.read_inbox(&user, after, REPLAY_PAGE).await {
            Ok(p) => p,
            Err(e) => {
                return Err(self
                    .answer(conn, self.enc, None, unavailable(e).into())
                    .await);
            }
        };
        let mut from = after;
        // The inbox the client knows is gone (flushed, lost): start over, and say so.
        let lost = after > page.head || epoch.as_ref().is_some_and(|e| *e != page.epoch);
        if lost && after > 0 {
            let gap = Reply::Gap {
                from: 1,
                to: after,
                reason: "inbox was reset; replaying it from the start".to_owned(),
            };
            if let Flow::Close(c) = self.answer(conn, self.enc, None, gap).await {
                return Err(Flow::Close(c));
            }
            from = 0;
            page = match store.read_inbox(&user, 0, REPLAY_PAGE).await {
                Ok(p) => p,
                Err(e) => {
                    return Err(self
                        .answer(conn, self.enc, None, unavailable(e).into())
                        .await);
                }
            };
        }
        // Trimmed by the bound (count or age): the first message held is past `from + 1`.
        let first_held = page
            .messages
            .first()
            .map(|(s, _)| *s)
            .unwrap_or(page.head + 1);
        if first_held > from + 1 && page.head > from {
            let gap = Reply::Gap {
                from: from + 1,
                to: first_held - 1,
                reason: "trimmed by the inbox bound".to_owned(),
            };
            if let Flow::Close(c) = self.answer(conn, self.enc, None, gap).await {
                return Err(Flow::Close(c));
            }
        }
        let mut last = from;
        loop {
            let full = page.messages.len() == REPLAY_PAGE;
            for (seq, msg) in page.messages.drain(..) {
                last = seq;
                let line = Event::Direct { seq, msg }.render(self.enc);
                if conn.feed(line).await.is_err() {
                    return Err(Flow::Close(Close::new(
                        code::GOING_AWAY,
                        None,
                        "write failed",
                    )));
                }
            }
            if conn.flush().await.is_err() {
                return Err(Flow::Close(Close::new(
                    code::GOING_AWAY,
                    None,
                    "write failed",
                )));
            }
            if !full {
                break;
            }
            page = match store.read_inbox(&user, last, REPLAY_PAGE).await {
                Ok(p) => p,
                Err(e) => {
                    return Err(self
                        .answer(conn, self.enc, None, unavailable(e).into())
                        .await);
                }
            };
        }
        self.replayed_upto = self.replayed_upto.max(last);
        Ok((last, page.epoch))
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
                tracing::warn!(session = %self.handle.id, user = self.user.as_deref().unwrap_or("-"), error = %e, "session entry not removed; the server purge will")
            }
            Err(_) => {
                tracing::warn!(session = %self.handle.id, "session entry removal timed out; the server purge will")
            }
        }
        tracing::debug!("session ended");
    }
}
