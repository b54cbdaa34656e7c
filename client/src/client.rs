//! The high-level client: one task owns the connection; [`Client`] handles
//! talk to it over a bounded queue, and what the server pushes comes out of
//! a bounded [`Event`] queue.
//!
//! The task speaks JSON, so every command carries a `cid` and every answer
//! finds its caller; a send's `cid` is also what makes a send re-sent after
//! a reconnect be stored once. Direct messages go through [`Inbox`]: in
//! order, each once, with `SYNC` on a gap. When the connection breaks the
//! task reconnects (the configured servers in turn, a full server's
//! alternatives first) with [`shared::backoff::Backoff`] and jitter, logs in
//! again, syncs from the last seq it delivered, joins its rooms again and
//! re-sends what was not answered.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use rand::Rng;
use shared::backoff::Backoff;
use shared::client::{ClientError, Command, Encoding, ErrCode, Reply, ServerLine};
use shared::ids::SessionId;
use shared::link::{DirectMsg, RoomMsg};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::conn::{Conn, ConnectError, Incoming, Tls, telnet_alternative};
use crate::endpoint::Endpoint;
use crate::error::Error;
use crate::inbox::{Inbox, Position, Step};

/// How a [`Client`] connects and behaves.
#[derive(Debug, Clone)]
pub struct Config {
    /// Servers to use, tried in turn; a full server's alternatives go first.
    pub servers: Vec<Endpoint>,
    /// Who logs in.
    pub user: String,
    /// A signed token, when the servers require one.
    pub token: Option<String>,
    /// TLS for every connection (`wss://`, TLS lines), when set.
    pub tls: Option<Tls>,
    /// This device's name (its ACK cursor); `None` is the device `default`.
    pub device: Option<String>,
    /// Where this device is in its inbox. `None` (a new device) replays
    /// what the inbox holds, from its first message.
    pub resume: Option<Position>,
    /// Acknowledge each direct message once it is in the event queue, so
    /// that a later login does not replay it. Default on.
    pub auto_ack: bool,
    /// First reconnect delay (then doubling, with jitter). Default 100 ms.
    pub backoff_first: Duration,
    /// Longest reconnect delay. Default 5 s.
    pub backoff_max: Duration,
    /// How long a call waits for its answer, reconnects included. Default 30 s.
    pub request_timeout: Duration,
    /// How long one connect and login may take. Default 10 s.
    pub login_timeout: Duration,
    /// After this long without a line from the server, send `PING`; after
    /// twice this long, give the connection up. Default 20 s.
    pub ping_interval: Duration,
    /// Capacity of the event queue; a full queue stops reading the server
    /// (which, past its own limit, closes a slow client). Default 1024.
    pub event_queue: usize,
}

impl Config {
    /// Defaults for `user` on `servers`.
    pub fn new(user: impl Into<String>, servers: Vec<Endpoint>) -> Config {
        Config {
            servers,
            user: user.into(),
            token: None,
            tls: None,
            device: None,
            resume: None,
            auto_ack: true,
            backoff_first: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            login_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(20),
            event_queue: 1024,
        }
    }
}

/// `OK SENT`: the message is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// The cluster-wide message id.
    pub msg_id: String,
    /// Its seq in the recipient's inbox.
    pub seq: u64,
}

/// What the client reports, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A direct message. `seq` is its place in this user's inbox (each
    /// delivered once, in order); `None` for a transient `TELL`.
    Message {
        /// Inbox seq, `None` when transient.
        seq: Option<u64>,
        /// The message.
        msg: DirectMsg,
    },
    /// A room message or broadcast (live, at most once).
    Room(RoomMsg),
    /// Inbox messages `from..=to` can no longer be replayed (trimmed by the
    /// inbox bound, or the inbox was lost).
    Lost {
        /// First missing seq.
        from: u64,
        /// Last missing seq.
        to: u64,
    },
    /// Logged in on a server.
    Connected {
        /// Which.
        endpoint: Endpoint,
        /// The new session.
        session: SessionId,
    },
    /// The connection ended; the client reconnects.
    Disconnected {
        /// Why, in words.
        reason: String,
    },
    /// Waiting before the next connection attempt.
    Reconnecting {
        /// How long.
        delay: Duration,
    },
    /// A refusal that answers no call of this client (a rate limit, ...).
    Refused(ClientError),
    /// The client stopped for good: closed, or its login was refused.
    Stopped {
        /// Why, when it was not asked to.
        error: Option<String>,
    },
}

/// An answer a call waits for, with the room lines a `HISTORY` collected.
struct Answer {
    reply: Reply,
    rooms: Vec<RoomMsg>,
}

type Responder = oneshot::Sender<Result<Answer, Error>>;

enum Op {
    Request {
        cmd: Command,
        reply: Responder,
    },
    Tell {
        line: String,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    Ack(u64),
    Position(oneshot::Sender<Position>),
    Close,
}

/// A handle on a running client; clones share it. Dropping every handle
/// closes the connection.
#[derive(Clone)]
pub struct Client {
    ops: mpsc::Sender<Op>,
    timeout: Duration,
}

impl Client {
    /// Connects and logs in (the configured servers in turn), then keeps the
    /// connection up in a task of its own. Fails when no server takes the
    /// login: [`Error::Auth`] when one refused it.
    pub async fn connect(config: Config) -> Result<(Client, mpsc::Receiver<Event>), Error> {
        let (ops_tx, ops) = mpsc::channel(256);
        let (events_tx, events) = mpsc::channel(config.event_queue.max(1));
        let timeout = config.request_timeout;
        let mut task = Task::new(config, ops, events_tx);
        let first = task.connect_round().await?;
        tokio::spawn(task.run(first));
        Ok((
            Client {
                ops: ops_tx,
                timeout,
            },
            events,
        ))
    }

    async fn call(&self, cmd: Command) -> Result<Answer, Error> {
        let (reply, rx) = oneshot::channel();
        // The whole call is under the timeout, the wait for room in the
        // queue (the task may be busy reconnecting) included.
        let call = async {
            self.ops
                .send(Op::Request { cmd, reply })
                .await
                .map_err(|_| Error::Closed)?;
            rx.await.map_err(|_| Error::Closed)?
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout(self.timeout)),
        }
    }

    async fn reply(&self, cmd: Command) -> Result<Reply, Error> {
        Ok(self.call(cmd).await?.reply)
    }

    /// Sends a direct message; resolves once it is stored (`OK SENT`).
    pub async fn send(&self, to: &str, text: &str) -> Result<Sent, Error> {
        let cmd = Command::Send {
            to: to.to_owned(),
            text: text.to_owned(),
        };
        match self.reply(cmd).await? {
            Reply::Sent { id, seq } => Ok(Sent { msg_id: id, seq }),
            other => Err(unexpected(&other)),
        }
    }

    /// A transient message (`TELL`): at most once, stored nowhere, to the
    /// recipient's live sessions only. Resolves once written; fails with
    /// [`Error::Closed`] while disconnected (it is not queued).
    pub async fn tell(&self, to: &str, text: &str) -> Result<(), Error> {
        let tell = Command::Tell {
            to: to.to_owned(),
            text: text.to_owned(),
        };
        let line = tell.render(Encoding::Json, None);
        let (reply, rx) = oneshot::channel();
        self.ops
            .send(Op::Tell { line, reply })
            .await
            .map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// Joins a room (again after every reconnect).
    pub async fn join(&self, room: &str) -> Result<(), Error> {
        match self
            .reply(Command::Join {
                room: room.to_owned(),
            })
            .await?
        {
            Reply::Joined { .. } => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// Leaves a room.
    pub async fn leave(&self, room: &str) -> Result<(), Error> {
        match self
            .reply(Command::Leave {
                room: room.to_owned(),
            })
            .await?
        {
            Reply::Left { .. } => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// Publishes to a room; returns the message id.
    pub async fn publish(&self, room: &str, text: &str) -> Result<String, Error> {
        let cmd = Command::Pub {
            room: room.to_owned(),
            text: text.to_owned(),
        };
        match self.reply(cmd).await? {
            Reply::Published { id, .. } => Ok(id),
            other => Err(unexpected(&other)),
        }
    }

    /// A room's latest messages (at most `count`), oldest first.
    pub async fn history(&self, room: &str, count: Option<u64>) -> Result<Vec<RoomMsg>, Error> {
        let answer = self
            .call(Command::History {
                room: room.to_owned(),
                count,
            })
            .await?;
        match answer.reply {
            Reply::History { .. } => Ok(answer.rooms),
            other => Err(unexpected(&other)),
        }
    }

    /// How many live sessions `user` has across the cluster (0: offline).
    pub async fn who(&self, user: &str) -> Result<u64, Error> {
        match self
            .reply(Command::Who {
                user: user.to_owned(),
            })
            .await?
        {
            Reply::Online { sessions, .. } => Ok(sessions),
            Reply::Offline { .. } => Ok(0),
            other => Err(unexpected(&other)),
        }
    }

    /// A round trip to the server.
    pub async fn ping(&self) -> Result<(), Error> {
        match self.reply(Command::Ping).await? {
            Reply::Pong => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// Marks this device's inbox read up to `seq` (no answer is awaited).
    pub async fn ack(&self, seq: u64) -> Result<(), Error> {
        self.ops.send(Op::Ack(seq)).await.map_err(|_| Error::Closed)
    }

    /// Where this device is in its inbox: keep it to resume a later client
    /// ([`Config::resume`]).
    pub async fn position(&self) -> Result<Position, Error> {
        let (tx, rx) = oneshot::channel();
        self.ops
            .send(Op::Position(tx))
            .await
            .map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)
    }

    /// Closes the connection and stops the task; pending calls fail with
    /// [`Error::Closed`].
    pub async fn close(&self) {
        let _ = self.ops.send(Op::Close).await;
    }
}

fn unexpected(reply: &Reply) -> Error {
    match reply {
        Reply::Error(e) => Error::Server(e.clone()),
        other => Error::Protocol(format!("unexpected answer {other:?}")),
    }
}

/// A call waiting for its answer.
struct Pending {
    cid: String,
    cmd: Command,
    reply: Responder,
    /// Room lines a `HISTORY` has collected so far.
    rooms: Vec<RoomMsg>,
}

/// Why a connection's loop ended.
enum End {
    /// Reconnect.
    Lost(String),
    /// Stop the client.
    Stop(Option<String>),
}

/// Most recent own message ids remembered: a `SYNC` replays this session's
/// own sends (the server does not push them back), and they are not news.
const OWN_IDS: usize = 1024;

struct Task {
    cfg: Config,
    ops: mpsc::Receiver<Op>,
    events: mpsc::Sender<Event>,
    inbox: Inbox,
    /// Calls by request number: answered by cid, re-sent in order.
    pending: BTreeMap<u64, Pending>,
    next_req: u64,
    /// Makes this client's cids unique across clients and runs.
    cid_prefix: String,
    rooms: BTreeSet<String>,
    own_ids: VecDeque<String>,
    ack_due: u64,
    acked: u64,
    /// A `SYNC` was refused (storage unavailable): ask again shortly.
    resync: bool,
    /// Servers to try next, before the configured ones (alternatives).
    preferred: VecDeque<Endpoint>,
    next_server: usize,
    shutdown: CancellationToken,
}

impl Task {
    fn new(cfg: Config, ops: mpsc::Receiver<Op>, events: mpsc::Sender<Event>) -> Task {
        let prefix: u64 = rand::rng().random();
        Task {
            inbox: Inbox::new(cfg.resume.clone().unwrap_or_default()),
            cfg,
            ops,
            events,
            pending: BTreeMap::new(),
            next_req: 0,
            cid_prefix: format!("{prefix:016x}"),
            rooms: BTreeSet::new(),
            own_ids: VecDeque::new(),
            ack_due: 0,
            acked: 0,
            resync: false,
            preferred: VecDeque::new(),
            next_server: 0,
            shutdown: CancellationToken::new(),
        }
    }

    async fn emit(&self, ev: Event) {
        // A dropped receiver only means nobody listens.
        let _ = self.events.send(ev).await;
    }

    /// Tries each server once (alternatives first, a few of them at most);
    /// the first login wins.
    async fn connect_round(&mut self) -> Result<Conn, Error> {
        let servers = self.cfg.servers.len();
        if servers == 0 && self.preferred.is_empty() {
            return Err(Error::Protocol("no servers configured".to_owned()));
        }
        let mut last = Error::Closed;
        // Each configured server once, plus alternatives full servers name
        // (bounded: two full servers naming each other must not loop).
        let (mut configured, mut alternatives) = (servers, 4 + self.preferred.len());
        loop {
            let (endpoint, from_list) = match self.preferred.pop_front() {
                Some(e) if alternatives > 0 => {
                    alternatives -= 1;
                    (e, false)
                }
                _ if configured > 0 => {
                    configured -= 1;
                    let e = self.cfg.servers[self.next_server % servers].clone();
                    self.next_server = (self.next_server + 1) % servers;
                    (e, true)
                }
                _ => {
                    self.preferred.clear();
                    return Err(last);
                }
            };
            let attempt = tokio::time::timeout(self.cfg.login_timeout, self.login(&endpoint));
            match attempt.await {
                Ok(Ok((conn, session))) => {
                    if from_list {
                        // The server that worked is tried first next time.
                        self.next_server = (self.next_server + servers - 1) % servers;
                    }
                    self.emit(Event::Connected { endpoint, session }).await;
                    return Ok(conn);
                }
                Ok(Err(e @ Error::Auth(_))) => return Err(e),
                Ok(Err(e)) => {
                    tracing::debug!(%endpoint, error = %e, "connect failed");
                    last = e;
                }
                Err(_) => last = Error::Timeout(self.cfg.login_timeout),
            }
        }
    }

    /// Opens `endpoint` and logs in; a full server's alternatives are queued.
    async fn login(&mut self, endpoint: &Endpoint) -> Result<(Conn, SessionId), Error> {
        let mut conn = match Conn::connect_with(endpoint, self.cfg.tls.as_ref()).await {
            Ok(c) => c,
            Err(ConnectError::Full { full, .. }) => {
                for (ws, tcp) in &full.alternatives {
                    self.preferred.push_back(endpoint.moved_to(ws, tcp));
                }
                return Err(Error::Full(full.message));
            }
            Err(e) => return Err(e.into()),
        };
        let login = Command::Login {
            user: self.cfg.user.clone(),
            token: self.cfg.token.clone(),
            device: self.cfg.device.clone(),
        };
        conn.send_command(&login, Encoding::Json, Some("login"))
            .await
            .map_err(|_| Error::Closed)?;
        loop {
            let line = match conn.next().await {
                Incoming::Line(l) => l,
                Incoming::Closed(_) => return Err(Error::Closed),
            };
            match shared::client::parse_server_line(&line) {
                Ok(ServerLine::Reply {
                    reply: Reply::LoggedIn { session, .. },
                    ..
                }) => return Ok((conn, session)),
                Ok(ServerLine::Reply {
                    reply: Reply::Error(e),
                    ..
                }) => {
                    return Err(match e.code {
                        ErrCode::Auth | ErrCode::Login => Error::Auth(e),
                        ErrCode::Full => {
                            if let Some(tcp) = telnet_alternative(&e.message) {
                                self.preferred.push_back(endpoint.moved_to(&tcp, &tcp));
                            }
                            Error::Full(e.message)
                        }
                        _ => Error::Server(e),
                    });
                }
                _ => tracing::debug!(%line, "before login, ignored"),
            }
        }
    }

    async fn run(mut self, first: Conn) {
        let mut backoff = Backoff::new(self.cfg.backoff_first, self.cfg.backoff_max);
        let mut conn = Some(first);
        let error = loop {
            let c = match conn.take() {
                Some(c) => c,
                None => {
                    let delay = backoff.next_delay(rand::rng().random());
                    self.emit(Event::Reconnecting { delay }).await;
                    if let Some(stop) = self.wait(delay).await {
                        break stop;
                    }
                    match self.connect_round().await {
                        Ok(c) => c,
                        Err(e @ Error::Auth(_)) => break Some(e.to_string()),
                        Err(e) => {
                            tracing::debug!(error = %e, "reconnect failed");
                            continue;
                        }
                    }
                }
            };
            backoff.reset();
            match self.session(c).await {
                End::Lost(reason) => {
                    self.inbox.disconnected();
                    self.emit(Event::Disconnected { reason }).await;
                }
                End::Stop(error) => break error,
            }
        };
        for (_, p) in std::mem::take(&mut self.pending) {
            let _ = p.reply.send(Err(Error::Closed));
        }
        self.emit(Event::Stopped { error }).await;
    }

    /// Sleeps `delay` while taking calls (queued until connected). `Some`
    /// when the client is to stop.
    async fn wait(&mut self, delay: Duration) -> Option<Option<String>> {
        let until = Instant::now() + delay;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(until) => return None,
                () = self.shutdown.cancelled() => return Some(None),
                op = self.ops.recv() => match op {
                    None | Some(Op::Close) => return Some(None),
                    Some(op) => self.queue(op),
                },
            }
        }
    }

    /// Takes a call while disconnected.
    fn queue(&mut self, op: Op) {
        match op {
            Op::Request { cmd, reply } => {
                self.add_pending(cmd, reply);
            }
            Op::Tell { reply, .. } => {
                let _ = reply.send(Err(Error::Closed));
            }
            Op::Ack(seq) => self.ack_due = self.ack_due.max(seq),
            Op::Position(tx) => {
                let _ = tx.send(self.inbox.position().clone());
            }
            Op::Close => self.shutdown.cancel(),
        }
    }

    fn add_pending(&mut self, cmd: Command, reply: Responder) -> u64 {
        let n = self.next_req;
        self.next_req += 1;
        let cid = format!("{}-{n}", self.cid_prefix);
        match &cmd {
            Command::Join { room } => {
                self.rooms.insert(room.clone());
            }
            Command::Leave { room } => {
                self.rooms.remove(room);
            }
            _ => {}
        }
        self.pending.insert(
            n,
            Pending {
                cid,
                cmd,
                reply,
                rooms: Vec::new(),
            },
        );
        n
    }

    async fn write(&self, conn: &mut Conn, cmd: &Command, cid: &str) -> Result<(), End> {
        conn.send_command(cmd, Encoding::Json, Some(cid))
            .await
            .map_err(|e| End::Lost(e.to_string()))
    }

    /// After a login: sync from the last seq, join the rooms again, re-send
    /// what was not answered.
    async fn resume(&mut self, conn: &mut Conn) -> Result<(), End> {
        let pos = self.inbox.start_sync();
        let sync = Command::Sync {
            after: pos.seq,
            epoch: pos.epoch,
        };
        self.write(conn, &sync, "sync").await?;
        for room in self.rooms.clone() {
            let join = Command::Join { room };
            self.write(conn, &join, "rejoin").await?;
        }
        self.resync = false;
        self.pending.retain(|_, p| !p.reply.is_closed());
        for p in self.pending.values() {
            conn.send_command(&p.cmd, Encoding::Json, Some(&p.cid))
                .await
                .map_err(|e| End::Lost(e.to_string()))?;
        }
        Ok(())
    }

    async fn session(&mut self, mut conn: Conn) -> End {
        let end = self.serve(&mut conn).await;
        if matches!(end, End::Stop(_)) {
            conn.close().await;
        }
        end
    }

    async fn serve(&mut self, conn: &mut Conn) -> End {
        if let Err(end) = self.resume(conn).await {
            return end;
        }
        let interval = self.cfg.ping_interval;
        let mut last_heard = Instant::now();
        let mut pinged = false;
        let mut ack_tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            let deadline = last_heard + if pinged { interval * 2 } else { interval };
            tokio::select! {
                () = self.shutdown.cancelled() => return End::Stop(None),
                op = self.ops.recv() => {
                    let Some(op) = op else { return End::Stop(None) };
                    if let Err(end) = self.op(conn, op).await {
                        return end;
                    }
                }
                incoming = conn.next() => match incoming {
                    Incoming::Line(line) => {
                        last_heard = Instant::now();
                        pinged = false;
                        if let Err(end) = self.line(conn, &line).await {
                            return end;
                        }
                    }
                    Incoming::Closed(code) => {
                        return End::Lost(match code {
                            Some(c) => format!("server closed with {c}"),
                            None => "connection closed".to_owned(),
                        });
                    }
                },
                _ = ack_tick.tick() => {
                    // Calls whose callers gave up are not answered.
                    self.pending.retain(|_, p| !p.reply.is_closed());
                    if std::mem::take(&mut self.resync) && !self.inbox.syncing() {
                        let pos = self.inbox.start_sync();
                        let sync = Command::Sync { after: pos.seq, epoch: pos.epoch };
                        if let Err(end) = self.write(conn, &sync, "sync").await {
                            return end;
                        }
                    }
                    if self.ack_due > self.acked {
                        let ack = Command::Ack { seq: self.ack_due };
                        if let Err(end) = self.write(conn, &ack, "ack").await {
                            return end;
                        }
                        self.acked = self.ack_due;
                    }
                }
                () = tokio::time::sleep_until(deadline) => {
                    if pinged {
                        return End::Lost(format!("server silent for {:?}", interval * 2));
                    }
                    if let Err(end) = self.write(conn, &Command::Ping, "keepalive").await {
                        return end;
                    }
                    pinged = true;
                }
            }
        }
    }

    async fn op(&mut self, conn: &mut Conn, op: Op) -> Result<(), End> {
        match op {
            Op::Request { cmd, reply } => {
                let n = self.add_pending(cmd, reply);
                if let Some(p) = self.pending.get(&n) {
                    conn.send_command(&p.cmd, Encoding::Json, Some(&p.cid))
                        .await
                        .map_err(|e| End::Lost(e.to_string()))?;
                }
            }
            Op::Tell { line, reply } => {
                let r = conn.send_line(&line).await;
                let failed = r.is_err();
                let _ = reply.send(r.map_err(|_| Error::Closed));
                if failed {
                    return Err(End::Lost("write failed".to_owned()));
                }
            }
            Op::Close => return Err(End::Stop(None)),
            other => self.queue(other),
        }
        Ok(())
    }

    async fn line(&mut self, conn: &mut Conn, line: &str) -> Result<(), End> {
        let parsed = match shared::client::parse_server_line(line) {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(error = %e, "server line not understood; skipped");
                return Ok(());
            }
        };
        match parsed {
            ServerLine::Direct { seq: None, msg } => {
                self.emit(Event::Message { seq: None, msg }).await;
            }
            ServerLine::Direct {
                seq: Some(seq),
                msg,
            } => {
                let step = self.inbox.message(seq, msg);
                self.apply(conn, step).await?;
            }
            ServerLine::Room(m) => {
                let collecting = self
                    .pending
                    .values_mut()
                    .find(|p| matches!(&p.cmd, Command::History { room, .. } if *room == m.room));
                match collecting {
                    Some(p) => p.rooms.push(m),
                    None => self.emit(Event::Room(m)).await,
                }
            }
            ServerLine::Reply { reply, cid } => self.reply(conn, reply, cid).await?,
        }
        Ok(())
    }

    async fn reply(
        &mut self,
        conn: &mut Conn,
        reply: Reply,
        cid: Option<String>,
    ) -> Result<(), End> {
        match (&reply, cid.as_deref()) {
            (Reply::Synced { last, epoch }, _) => {
                let step = self.inbox.synced(*last, epoch.clone());
                return self.apply(conn, step).await;
            }
            (Reply::Gap { from, to, .. }, _) => {
                let step = self.inbox.gap(*from, *to);
                return self.apply(conn, step).await;
            }
            (Reply::Bye, _) => return Err(End::Lost("server said BYE".to_owned())),
            (Reply::Error(e), Some("sync")) => {
                // The sync was refused (storage unavailable): ask again.
                self.inbox.disconnected();
                self.resync = true;
                self.emit(Event::Refused(e.clone())).await;
                return Ok(());
            }
            (Reply::Error(e), Some("login" | "rejoin" | "ack" | "keepalive") | None) => {
                self.emit(Event::Refused(e.clone())).await;
                return Ok(());
            }
            _ => {}
        }
        let Some(cid) = cid else { return Ok(()) };
        let Some(n) = self
            .pending
            .iter()
            .find(|(_, p)| p.cid == cid)
            .map(|(n, _)| *n)
        else {
            return Ok(());
        };
        let Some(mut p) = self.pending.remove(&n) else {
            return Ok(());
        };
        match &reply {
            Reply::Sent { id, .. } => {
                if self.own_ids.len() == OWN_IDS {
                    self.own_ids.pop_front();
                }
                self.own_ids.push_back(id.clone());
            }
            Reply::History { count, .. } => {
                // Lines before the last `count` were live pushes.
                let extra = p.rooms.len().saturating_sub(*count as usize);
                for m in p.rooms.drain(..extra) {
                    self.emit(Event::Room(m)).await;
                }
            }
            _ => {}
        }
        let answer = match reply {
            Reply::Error(e) => Err(Error::Server(e)),
            reply => Ok(Answer {
                reply,
                rooms: p.rooms,
            }),
        };
        let _ = p.reply.send(answer);
        Ok(())
    }

    /// Whether a message of this user's inbox was sent by this client: its
    /// id came back in an `OK SENT`, or it is a send still waiting for its
    /// answer (stored before a connection broke, replayed by the `SYNC`
    /// before the re-sent command is answered).
    fn is_own(&self, msg: &DirectMsg) -> bool {
        self.own_ids.contains(&msg.id)
            || self.pending.values().any(|p| {
                matches!(&p.cmd, Command::Send { to, text } if *to == msg.to && *text == msg.text)
            })
    }

    async fn apply(&mut self, conn: &mut Conn, step: Step) -> Result<(), End> {
        for (from, to) in step.lost {
            self.emit(Event::Lost { from, to }).await;
        }
        for (seq, msg) in step.deliver {
            let own = msg.from == self.cfg.user && self.is_own(&msg);
            if !own {
                self.emit(Event::Message {
                    seq: Some(seq),
                    msg,
                })
                .await;
            }
            if self.cfg.auto_ack {
                self.ack_due = self.ack_due.max(seq);
            }
        }
        if let Some(pos) = step.sync {
            let sync = Command::Sync {
                after: pos.seq,
                epoch: pos.epoch,
            };
            self.write(conn, &sync, "sync").await?;
        }
        Ok(())
    }
}
