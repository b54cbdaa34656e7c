//! The relay against real Redis and real sockets, driven by small fake
//! message servers that speak the link protocol (real handshake, real
//! `auth_tag`) through the shared codec.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use redis::Commands;
use relay_server::{Config, Metrics, RelayError};
use serde_json::Value;
use shared::codec::LinkCodec;
use shared::ids::{SessionId, session_location};
use shared::keys;
use shared::link::missed::ALL_SERVERS;
use shared::link::{
    BROADCAST_ROOM, DirectMsg, Frame, LINK_VERSION, NONCE_LEN, RoomMsg, ServerAddrs, auth_tag,
};
use switchboard_tests::{RedisServer, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

/// How long a fake waits for a frame it expects.
const FRAME_WAIT: Duration = Duration::from_secs(3);

// ---------------------------------------------------------------- relay ---

struct Relay {
    link: SocketAddr,
    admin: SocketAddr,
    metrics: Metrics,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), RelayError>>,
}

async fn start_relay(redis: &RedisServer, tweak: impl FnOnce(&mut Config)) -> Relay {
    let mut config = Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        admin: "127.0.0.1:0".parse().expect("addr"),
        redis: redis_store::RedisArgs::single(&redis.url()),
        ..Config::default()
    };
    tweak(&mut config);
    let bound = relay_server::bind(config).await.expect("relay binds");
    let shutdown = CancellationToken::new();
    Relay {
        link: bound.link_addr(),
        admin: bound.admin_addr(),
        metrics: bound.metrics(),
        shutdown: shutdown.clone(),
        task: tokio::spawn(bound.run(shutdown)),
    }
}

impl Relay {
    /// The value of `series` once it reads `want` (counters move just
    /// after the work they count: a purge is counted once its last step,
    /// the registry entry, is done), or its last value after 10 s.
    async fn metric_reaches(&self, series: &str, want: f64) -> f64 {
        let reached = eventually(Duration::from_secs(10), || async {
            (self.metric(series).await == want).then_some(want)
        })
        .await;
        match reached {
            Some(v) => v,
            None => self.metric(series).await,
        }
    }

    async fn metric(&self, series: &str) -> f64 {
        let (status, text) = http_get(self.admin, "/metrics").await;
        assert_eq!(status, 200);
        metric(&text, series).unwrap_or_else(|| panic!("{series} not in /metrics:\n{text}"))
    }

    async fn servers(&self) -> Vec<Value> {
        let (status, body) = http_get(self.admin, "/servers").await;
        assert_eq!(status, 200, "{body}");
        match serde_json::from_str(&body).expect("/servers is JSON") {
            Value::Array(rows) => rows,
            other => panic!("/servers is not an array: {other}"),
        }
    }
}

fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

/// A minimal HTTP/1.1 GET; returns the status and body.
async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.expect("admin connect");
        let request = format!("GET {path} HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.expect("read");
        raw
    };
    let raw = tokio::time::timeout(FRAME_WAIT, exchange)
        .await
        .expect("admin answers in time");
    let text = String::from_utf8(raw).expect("utf-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("a full response");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    (status, body.to_string())
}

// ---------------------------------------------------------------- redis ---

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64
}

/// Writes a registry entry as a message server does.
fn register(redis: &RedisServer, id: &str, epoch: u64, seen_ms: u64) {
    let _: i64 = redis::Script::new(keys::REGISTER)
        .key(keys::server(id))
        .arg(epoch)
        .arg(format!("127.0.0.1:19{epoch:03}"))
        .arg(format!("127.0.0.1:29{epoch:03}"))
        .arg(3)
        .arg(500)
        .arg(seen_ms)
        .arg(60)
        .invoke(&mut redis.conn())
        .expect("REGISTER");
    let _: i64 = redis.conn().sadd(keys::SERVERS, id).expect("SADD");
}

/// Adds a session as a message server does: the server's index first,
/// then the user's hash.
fn add_session(redis: &RedisServer, user: &str, session: u64, server: &str, epoch: u64) {
    let _: i64 = redis
        .conn()
        .hset(
            keys::server_sessions(server),
            SessionId(session).to_string(),
            format!("{epoch} {user}"),
        )
        .expect("HSET");
    let _: i64 = redis::Script::new(keys::SESSION_ADD)
        .key(keys::user_sessions(user))
        .key(keys::user_servers(user))
        .arg(SessionId(session).to_string())
        .arg(session_location(server, epoch))
        .arg(0)
        .invoke(&mut redis.conn())
        .expect("SESSION_ADD");
}

fn sessions_of(redis: &RedisServer, user: &str) -> Vec<String> {
    let mut fields: Vec<String> = redis
        .conn()
        .hkeys(keys::user_sessions(user))
        .expect("HKEYS");
    fields.sort();
    fields
}

fn exists(redis: &RedisServer, key: &str) -> bool {
    redis.conn().exists(key).expect("EXISTS")
}

fn registered(redis: &RedisServer, id: &str) -> bool {
    redis
        .conn()
        .sismember(keys::SERVERS, id)
        .expect("SISMEMBER")
}

fn sid(n: u64) -> String {
    SessionId(n).to_string()
}

// ----------------------------------------------------------- fake server ---

type Link = Framed<TcpStream, LinkCodec>;

/// One end of a link, as a message server would hold it.
struct Fake {
    framed: Link,
    sync_no: u64,
}

/// Connects and reads the relay's challenge.
async fn challenge(addr: SocketAddr) -> (Link, [u8; NONCE_LEN]) {
    challenge_on(TcpStream::connect(addr).await.expect("link connect")).await
}

async fn challenge_on(stream: TcpStream) -> (Link, [u8; NONCE_LEN]) {
    let mut framed = Framed::new(stream, LinkCodec::default());
    match next_frame(&mut framed).await {
        Some(Frame::Challenge { version, nonce }) => {
            assert_eq!(version, LINK_VERSION);
            (framed, nonce)
        }
        other => panic!("expected a challenge, got {other:?}"),
    }
}

async fn next_frame(framed: &mut Link) -> Option<Frame> {
    match tokio::time::timeout(FRAME_WAIT, framed.next()).await {
        Ok(Some(Ok(frame))) => Some(frame),
        Ok(Some(Err(_)) | None) => None,
        Err(_) => panic!("no frame within {FRAME_WAIT:?}"),
    }
}

/// Says hello and returns the relay's answer (`Welcome` or `Refused`).
async fn hello(
    addr: SocketAddr,
    id: &str,
    epoch: u64,
    secret: &[u8],
    version: u16,
) -> (Link, Option<Frame>) {
    let (framed, nonce) = challenge(addr).await;
    hello_on(framed, nonce, id, epoch, secret, version).await
}

async fn hello_on(
    mut framed: Link,
    nonce: [u8; NONCE_LEN],
    id: &str,
    epoch: u64,
    secret: &[u8],
    version: u16,
) -> (Link, Option<Frame>) {
    framed
        .send(Frame::Hello {
            version,
            server_id: id.into(),
            epoch,
            addrs: ServerAddrs {
                ws: format!("127.0.0.1:1{epoch:04}"),
                tcp: format!("127.0.0.1:2{epoch:04}"),
            },
            auth: auth_tag(secret, &nonce, id, epoch),
        })
        .await
        .expect("send hello");
    let answer = next_frame(&mut framed).await;
    (framed, answer)
}

impl Fake {
    /// Links as `id` with `epoch` and no secret; panics unless welcomed.
    async fn link(addr: SocketAddr, id: &str, epoch: u64) -> Fake {
        Fake::link_with(addr, id, epoch, b"").await
    }

    async fn link_with(addr: SocketAddr, id: &str, epoch: u64, secret: &[u8]) -> Fake {
        let (framed, answer) = hello(addr, id, epoch, secret, LINK_VERSION).await;
        Fake::welcomed(framed, answer, id)
    }

    /// Links as `id` over a socket with a fixed 64 KiB receive buffer (no
    /// autotuning up to `tcp_rmem`'s tens of MB), so that when this fake
    /// stops reading the relay's queue to it fills after a few MB.
    async fn link_small(addr: SocketAddr, id: &str, epoch: u64) -> Fake {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(64 * 1024).expect("SO_RCVBUF");
        let stream = socket.connect(addr).await.expect("link connect");
        let (framed, nonce) = challenge_on(stream).await;
        let (framed, answer) = hello_on(framed, nonce, id, epoch, b"", LINK_VERSION).await;
        Fake::welcomed(framed, answer, id)
    }

    fn welcomed(framed: Link, answer: Option<Frame>, id: &str) -> Fake {
        match answer {
            Some(Frame::Welcome { relay_id }) => assert_eq!(relay_id, "relay"),
            other => panic!("expected welcome for {id}, got {other:?}"),
        }
        Fake { framed, sync_no: 0 }
    }

    async fn send(&mut self, frame: Frame) {
        self.framed.send(frame).await.expect("fake send");
    }

    /// The next frame that is not the relay's heartbeat (answered on the
    /// way, as a server would); `None` when the relay closed the link.
    async fn recv(&mut self) -> Option<Frame> {
        let deadline = tokio::time::Instant::now() + FRAME_WAIT;
        loop {
            let next = tokio::time::timeout_at(deadline, self.framed.next())
                .await
                .unwrap_or_else(|_| panic!("no frame but heartbeats within {FRAME_WAIT:?}"));
            match next {
                Some(Ok(Frame::Ping(n))) => self.send(Frame::Pong(n)).await,
                Some(Ok(frame)) => return Some(frame),
                Some(Err(_)) | None => return None,
            }
        }
    }

    /// A barrier: every frame this fake sent before has been handled by
    /// the relay, and nothing but heartbeats was queued to us meanwhile.
    async fn sync(&mut self) {
        self.sync_no += 1;
        let n = u64::MAX - self.sync_no;
        self.send(Frame::Ping(n)).await;
        match self.recv().await {
            Some(Frame::Pong(m)) if m == n => {}
            other => panic!("expected pong {n}, got {other:?}"),
        }
    }

    /// Waits for the relay to close the link (frames before that are skipped).
    async fn expect_closed(&mut self) {
        expect_closed(&mut self.framed).await;
    }
}

async fn expect_closed(framed: &mut Link) {
    let deadline = tokio::time::Instant::now() + FRAME_WAIT;
    loop {
        match tokio::time::timeout_at(deadline, framed.next()).await {
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(_)) | None) => return,
            Err(_) => panic!("the relay did not close the link"),
        }
    }
}

fn deliver(to: &str, text: &str) -> Frame {
    Frame::Deliver {
        to_server: to.into(),
        user: "bob".into(),
        seq: 7,
        except: Some(SessionId(42)),
        msg: DirectMsg {
            id: format!("m-{text}"),
            from: "alice".into(),
            to: "bob".into(),
            ts: 1_700_000_000_000,
            text: text.into(),
        },
    }
}

fn room(room: &str, text: &str) -> Frame {
    Frame::Room {
        msg: RoomMsg {
            room: room.into(),
            from: "alice".into(),
            id: format!("r-{text}"),
            ts: 1_700_000_000_000,
            text: text.into(),
        },
    }
}

fn interest(room: &str, on: bool) -> Frame {
    Frame::Interest {
        room: room.into(),
        on,
    }
}

// ---------------------------------------------------------------- tests ---

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_right_secret_is_welcomed_and_a_wrong_one_refused() {
    let redis = RedisServer::start();
    let secret = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(secret.path(), "s3cret\n").expect("write secret");
    let path = secret.path().to_owned();
    let relay = start_relay(&redis, |c| c.link_secret_file = Some(path)).await;

    let mut a = Fake::link_with(relay.link, "a", 1, b"s3cret").await;
    a.sync().await;

    for (id, wrong) in [("b", &b"wrong"[..]), ("c", &b""[..])] {
        let (mut framed, answer) = hello(relay.link, id, 1, wrong, LINK_VERSION).await;
        match answer {
            Some(Frame::Refused { reason }) => assert!(reason.contains("auth"), "{reason}"),
            other => panic!("expected refused, got {other:?}"),
        }
        expect_closed(&mut framed).await;
    }

    assert_eq!(
        relay
            .metric("relay_links_refused_total{reason=\"auth\"}")
            .await,
        2.0
    );
    assert_eq!(relay.metric("relay_links").await, 1.0);
    // The linked server did not notice.
    a.sync().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_link_version_is_refused() {
    let redis = RedisServer::start();
    let relay = start_relay(&redis, |_| {}).await;

    let (mut framed, answer) = hello(relay.link, "a", 1, b"", LINK_VERSION + 1).await;
    match answer {
        Some(Frame::Refused { reason }) => assert!(reason.contains("version"), "{reason}"),
        other => panic!("expected refused, got {other:?}"),
    }
    expect_closed(&mut framed).await;
    assert_eq!(
        relay
            .metric("relay_links_refused_total{reason=\"version\"}")
            .await,
        1.0
    );

    // An invalid server id is refused too.
    let (mut framed, answer) = hello(relay.link, "not a name", 1, b"", LINK_VERSION).await;
    assert!(matches!(answer, Some(Frame::Refused { .. })), "{answer:?}");
    expect_closed(&mut framed).await;
    assert_eq!(
        relay
            .metric("relay_links_refused_total{reason=\"name\"}")
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_handshake_times_out() {
    let redis = RedisServer::start();
    let relay = start_relay(&redis, |c| c.handshake_timeout = Duration::from_millis(300)).await;

    let (mut framed, _nonce) = challenge(relay.link).await;
    let started = Instant::now();
    match next_frame(&mut framed).await {
        Some(Frame::Refused { reason }) => assert!(reason.contains("hello"), "{reason}"),
        other => panic!("expected refused, got {other:?}"),
    }
    expect_closed(&mut framed).await;
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(
        relay
            .metric("relay_links_refused_total{reason=\"timeout\"}")
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_oversized_frames_close_only_that_link() {
    let redis = RedisServer::start();
    let relay = start_relay(&redis, |c| c.max_frame = 4096).await;
    let mut a = Fake::link(relay.link, "a", 1).await;
    let mut b = Fake::link(relay.link, "b", 1).await;

    // Before the handshake: a well-framed body that is no frame at all...
    let (mut raw, _) = challenge(relay.link).await;
    raw.get_mut()
        .write_all(&[0, 0, 0, 8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff])
        .await
        .expect("write garbage");
    expect_closed(&mut raw).await;
    // ...and a length prefix far over the maximum.
    let (mut raw, _) = challenge(relay.link).await;
    raw.get_mut()
        .write_all(&0x7fff_fff0u32.to_be_bytes())
        .await
        .expect("write prefix");
    expect_closed(&mut raw).await;

    // After the handshake, the same from linked servers.
    let mut c = Fake::link(relay.link, "c", 1).await;
    c.framed
        .get_mut()
        .write_all(&[0, 0, 0, 3, 0xfe, 0xfe, 0xfe])
        .await
        .expect("write garbage");
    c.expect_closed().await;
    let mut d = Fake::link(relay.link, "d", 1).await;
    d.framed
        .get_mut()
        .write_all(&5000u32.to_be_bytes())
        .await
        .expect("write prefix");
    d.expect_closed().await;

    assert_eq!(
        relay
            .metric("relay_links_refused_total{reason=\"malformed\"}")
            .await,
        2.0
    );
    // The others never noticed.
    a.send(deliver("b", "still here")).await;
    assert_eq!(b.recv().await, Some(deliver("b", "still here")));
    a.sync().await;
    assert_eq!(relay.metric("relay_links").await, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliver_reaches_the_target_server_only() {
    let redis = RedisServer::start();
    let relay = start_relay(&redis, |_| {}).await;
    let mut a = Fake::link(relay.link, "a", 1).await;
    let mut b = Fake::link(relay.link, "b", 1).await;
    let mut c = Fake::link(relay.link, "c", 1).await;

    a.send(deliver("b", "hello bob")).await;
    assert_eq!(b.recv().await, Some(deliver("b", "hello bob")));
    // A server not linked here: dropped and counted (the inbox keeps it).
    a.send(deliver("nobody", "lost")).await;
    a.sync().await;
    c.sync().await;
    b.sync().await;

    assert_eq!(relay.metric("relay_frames_forwarded_total").await, 1.0);
    assert_eq!(relay.metrics.frames_forwarded(), 1);
    assert_eq!(
        relay
            .metric("relay_frames_dropped_total{reason=\"no_route\"}")
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_messages_reach_interested_servers_but_never_the_origin() {
    let redis = RedisServer::start();
    let relay = start_relay(&redis, |_| {}).await;
    let mut a = Fake::link(relay.link, "a", 1).await;
    let mut b = Fake::link(relay.link, "b", 1).await;
    let mut c = Fake::link(relay.link, "c", 1).await;

    // a and b have members in "lobby", c has none.
    a.send(interest("lobby", true)).await;
    b.send(interest("lobby", true)).await;
    a.sync().await;
    b.sync().await;

    a.send(room("lobby", "one")).await;
    // A broadcast after it is a marker: it reaches everyone but a, in order.
    a.send(room(BROADCAST_ROOM, "marker-1")).await;
    assert_eq!(b.recv().await, Some(room("lobby", "one")));
    assert_eq!(b.recv().await, Some(room(BROADCAST_ROOM, "marker-1")));
    assert_eq!(c.recv().await, Some(room(BROADCAST_ROOM, "marker-1")));
    // The origin got neither its room message nor its broadcast back.
    a.sync().await;

    // b's last member left: nothing more for b.
    b.send(interest("lobby", false)).await;
    b.sync().await;
    a.send(room("lobby", "two")).await;
    a.send(room(BROADCAST_ROOM, "marker-2")).await;
    assert_eq!(b.recv().await, Some(room(BROADCAST_ROOM, "marker-2")));
    assert_eq!(c.recv().await, Some(room(BROADCAST_ROOM, "marker-2")));
    a.sync().await;

    assert_eq!(relay.metric("relay_frames_forwarded_total").await, 5.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_reaches_every_other_server() {
    let redis = RedisServer::start();
    let relay = start_relay(&redis, |_| {}).await;
    let mut fakes = Vec::new();
    for id in ["a", "b", "c", "d"] {
        fakes.push(Fake::link(relay.link, id, 1).await);
    }
    fakes[2].send(room(BROADCAST_ROOM, "to all")).await;
    for (i, fake) in fakes.iter_mut().enumerate() {
        if i == 2 {
            fake.sync().await;
        } else {
            assert_eq!(fake.recv().await, Some(room(BROADCAST_ROOM, "to all")));
        }
    }
    assert_eq!(relay.metric("relay_frames_forwarded_total").await, 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_drops_its_link_is_purged() {
    let redis = RedisServer::start();
    register(&redis, "b", 7, now_ms());
    add_session(&redis, "u1", 1, "b", 7);
    add_session(&redis, "u2", 2, "b", 7);
    // u1's other device is on server c: it must survive.
    register(&redis, "c", 3, now_ms());
    add_session(&redis, "u1", 3, "c", 3);

    let relay = start_relay(&redis, |_| {}).await;
    let mut a = Fake::link(relay.link, "a", 1).await;
    let b = Fake::link(relay.link, "b", 7).await;
    let ids: Vec<Value> = relay
        .servers()
        .await
        .into_iter()
        .map(|s| s["id"].clone())
        .collect();
    assert_eq!(ids, ["a", "b", "c"]);

    drop(b);
    let dropped = Instant::now();
    let purged = eventually(Duration::from_secs(5), || async {
        (!exists(&redis, &keys::server_sessions("b"))
            && !exists(&redis, &keys::server("b"))
            && !registered(&redis, "b"))
        .then_some(())
    })
    .await;
    assert!(purged.is_some(), "b was not purged within 5 s");
    let took = dropped.elapsed();
    assert!(took < Duration::from_secs(5), "purge took {took:?}");

    assert_eq!(sessions_of(&redis, "u1"), [sid(3)]);
    assert!(sessions_of(&redis, "u2").is_empty());
    assert!(exists(&redis, &keys::server_sessions("c")));
    let ids: Vec<Value> = relay
        .servers()
        .await
        .into_iter()
        .map(|s| s["id"].clone())
        .collect();
    assert_eq!(ids, ["a", "c"]);

    assert_eq!(relay.metric_reaches("relay_purges_total", 1.0).await, 1.0);
    assert_eq!(relay.metric("relay_sessions_purged_total").await, 2.0);
    assert_eq!(relay.metric("relay_purge_seconds_count").await, 1.0);
    assert_eq!(relay.metrics.purges(), 1);
    // Frames for b are now dropped, not queued.
    a.send(deliver("b", "too late")).await;
    a.sync().await;
    assert_eq!(
        relay
            .metric("relay_frames_dropped_total{reason=\"no_route\"}")
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_server_is_declared_dead_and_purged() {
    let redis = RedisServer::start();
    register(&redis, "b", 9, now_ms());
    add_session(&redis, "u1", 1, "b", 9);
    let relay = start_relay(&redis, |c| {
        c.heartbeat = Duration::from_millis(100);
        c.dead_after = Duration::from_millis(400);
        c.purge_grace = Duration::from_millis(200);
    })
    .await;

    // b links, then never answers or sends anything: the socket stays open.
    let mut b = Fake::link(relay.link, "b", 9).await;
    let linked = Instant::now();
    let closed = async {
        loop {
            match b.framed.next().await {
                Some(Ok(Frame::Ping(_))) => continue,
                _ => return,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(3), closed)
        .await
        .expect("the relay closes a silent link");
    let silent_for = linked.elapsed();
    assert!(
        silent_for >= Duration::from_millis(350),
        "closed after {silent_for:?}"
    );

    // The purge goes user by user and removes the registry entry last.
    let purged = eventually(Duration::from_secs(3), || async {
        (sessions_of(&redis, "u1").is_empty() && !registered(&redis, "b")).then_some(())
    })
    .await;
    assert!(purged.is_some(), "silent b was not purged");
    // Counted once the purge call returns, just after its last step.
    let counted = eventually(Duration::from_secs(3), || async {
        (relay.metric("relay_purge_seconds_count").await == 1.0).then_some(())
    })
    .await;
    assert!(counted.is_some(), "the purge was not counted once");
}

/// A witness server `w` (epoch 9) with one session of user `w-user`, linked;
/// dropping the returned link without `Bye` gets it purged after the grace.
async fn witness(redis: &RedisServer, relay: &Relay) -> Fake {
    register(redis, "w", 9, now_ms());
    add_session(redis, "w-user", 90, "w", 9);
    Fake::link(relay.link, "w", 9).await
}

/// Waits until the witness's session is purged: the relay's purge for a
/// link that dropped at the same moment has run by then.
async fn witness_purged(redis: &RedisServer) {
    let purged = eventually(Duration::from_secs(10), || async {
        sessions_of(redis, "w-user").is_empty().then_some(())
    })
    .await;
    assert!(purged.is_some(), "the witness was never purged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_says_bye_is_not_purged() {
    let redis = RedisServer::start();
    register(&redis, "b", 7, now_ms());
    add_session(&redis, "u1", 1, "b", 7);
    let relay = start_relay(&redis, |c| c.purge_grace = Duration::from_millis(300)).await;

    let mut b = Fake::link(relay.link, "b", 7).await;
    let w = witness(&redis, &relay).await;
    b.send(Frame::Bye).await;
    b.expect_closed().await;
    drop(b);
    drop(w);

    // Past the grace (the witness, gone without Bye, was purged): the relay
    // purged nothing of b (b cleans up itself).
    witness_purged(&redis).await;
    assert_eq!(sessions_of(&redis, "u1"), [sid(1)]);
    assert!(registered(&redis, "b"));
    assert_eq!(relay.metric_reaches("relay_purges_total", 1.0).await, 1.0);
    let servers = relay.servers().await;
    assert_eq!(servers.len(), 1);
    assert_eq!(servers[0]["id"], "b");
    assert_eq!(servers[0]["link"], "down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_links_again_in_time_is_not_purged() {
    let redis = RedisServer::start();
    register(&redis, "b", 7, now_ms());
    add_session(&redis, "u1", 1, "b", 7);
    let relay = start_relay(&redis, |c| c.purge_grace = Duration::from_millis(500)).await;

    // A network blip: the link drops and comes back with the same epoch;
    // the witness's link drops at the same time and stays away.
    let w = witness(&redis, &relay).await;
    drop(Fake::link(relay.link, "b", 7).await);
    drop(w);
    let mut b = Fake::link(relay.link, "b", 7).await;
    witness_purged(&redis).await;
    b.sync().await;
    assert_eq!(sessions_of(&redis, "u1"), [sid(1)]);
    assert_eq!(relay.metric_reaches("relay_purges_total", 1.0).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_link_replaces_the_older_one() {
    let redis = RedisServer::start();
    let relay = start_relay(&redis, |c| c.purge_grace = Duration::from_millis(200)).await;
    let mut a = Fake::link(relay.link, "a", 1).await;
    let w = witness(&redis, &relay).await;
    let mut old = Fake::link(relay.link, "b", 1).await;
    let mut new = Fake::link(relay.link, "b", 2).await;
    drop(w);

    old.expect_closed().await;
    a.send(deliver("b", "for the new one")).await;
    assert_eq!(new.recv().await, Some(deliver("b", "for the new one")));
    // Past the grace of a link that ended when the old one did: the
    // replaced link is not a death, only the witness was purged.
    witness_purged(&redis).await;
    assert_eq!(relay.metric("relay_links").await, 2.0);
    assert_eq!(relay.metric_reaches("relay_purges_total", 1.0).await, 1.0);
    let servers = relay.servers().await;
    assert_eq!(servers[1]["id"], "b");
    assert_eq!(servers[1]["epoch"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_startup_sweep_purges_servers_that_died_unwatched() {
    let redis = RedisServer::start();
    // "old" stopped refreshing a minute ago.
    register(&redis, "old", 4, now_ms() - 60_000);
    add_session(&redis, "u1", 1, "old", 4);
    // "ghost"'s entry expired; its sessions and its id remain.
    add_session(&redis, "u1", 2, "ghost", 5);
    add_session(&redis, "u2", 3, "ghost", 6);
    let _: i64 = redis.conn().sadd(keys::SERVERS, "ghost").expect("SADD");
    // "fresh" is alive (linked to another relay, say).
    register(&redis, "fresh", 8, now_ms());
    add_session(&redis, "u1", 4, "fresh", 8);

    let relay = start_relay(&redis, |_| {}).await;
    let swept = eventually(Duration::from_secs(3), || async {
        (sessions_of(&redis, "u1") == [sid(4)]).then_some(())
    })
    .await;
    assert!(
        swept.is_some(),
        "u1 sessions: {:?}",
        sessions_of(&redis, "u1")
    );
    assert!(sessions_of(&redis, "u2").is_empty());
    assert!(!registered(&redis, "old") && !exists(&redis, &keys::server("old")));
    assert!(!registered(&redis, "ghost") && !exists(&redis, &keys::server_sessions("ghost")));
    assert!(registered(&redis, "fresh"));
    assert_eq!(relay.metric_reaches("relay_purges_total", 2.0).await, 2.0);
    assert_eq!(relay.metric("relay_sessions_purged_total").await, 3.0);
    let ids: Vec<Value> = relay
        .servers()
        .await
        .into_iter()
        .map(|s| s["id"].clone())
        .collect();
    assert_eq!(ids, ["fresh"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_leaves_servers_linked_here_alone() {
    let redis = RedisServer::start();
    register(&redis, "b", 7, now_ms());
    add_session(&redis, "u1", 1, "b", 7);
    let relay = start_relay(&redis, |c| c.sweep_interval = Duration::from_millis(100)).await;
    let mut b = Fake::link(relay.link, "b", 7).await;
    // Its registry refreshes stall, but its link is alive. "x", as stale and
    // linked nowhere, is the witness that sweeps ran (its session is written
    // first, so a sweep between the two writes cannot miss it).
    register(&redis, "b", 7, now_ms() - 60_000);
    add_session(&redis, "u2", 2, "x", 3);
    register(&redis, "x", 3, now_ms() - 60_000);
    let swept = eventually(Duration::from_secs(10), || async {
        sessions_of(&redis, "u2").is_empty().then_some(())
    })
    .await;
    assert!(swept.is_some(), "the sweep never purged stale x");
    b.sync().await;
    assert_eq!(sessions_of(&redis, "u1"), [sid(1)]);
    assert_eq!(relay.metric_reaches("relay_purges_total", 1.0).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_answer_json() {
    let mut redis = RedisServer::start();
    register(&redis, "b", 7, now_ms() - 1500);
    register(&redis, "d", 9, now_ms());
    let relay = start_relay(&redis, |_| {}).await;
    let _b = Fake::link(relay.link, "b", 7).await;
    let _c = Fake::link(relay.link, "c", 3).await;

    let (status, body) = http_get(relay.admin, "/healthz").await;
    assert_eq!(status, 200);
    let health: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        health,
        serde_json::json!({"status": "ok", "links": 2, "redis": "up"})
    );

    let servers = relay.servers().await;
    assert_eq!(servers.len(), 3, "{servers:?}");
    let b = &servers[0];
    assert_eq!(b["id"], "b");
    assert_eq!(b["epoch"], 7);
    assert_eq!(b["ws"], "127.0.0.1:19007");
    assert_eq!(b["tcp"], "127.0.0.1:29007");
    assert_eq!(b["connections"], 3);
    assert_eq!(b["cap"], 500);
    assert_eq!(b["link"], "up");
    let seen = b["seen_ms_ago"].as_u64().expect("seen_ms_ago is a number");
    assert!((1500..60_000).contains(&seen), "{seen}");
    // Linked, not registered: what the link said, registry fields null.
    let c = &servers[1];
    assert_eq!(c["id"], "c");
    assert_eq!(c["epoch"], 3);
    assert_eq!(c["ws"], "127.0.0.1:10003");
    assert_eq!(c["link"], "up");
    assert!(c["connections"].is_null() && c["seen_ms_ago"].is_null());
    // Registered, not linked here.
    assert_eq!(servers[2]["id"], "d");
    assert_eq!(servers[2]["link"], "down");
    for row in &servers {
        let mut keys: Vec<&str> = row
            .as_object()
            .expect("object")
            .keys()
            .map(|k| k.as_str())
            .collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "cap",
                "connections",
                "epoch",
                "id",
                "link",
                "seen_ms_ago",
                "tcp",
                "ws"
            ]
        );
    }

    let (status, text) = http_get(relay.admin, "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(metric(&text, "relay_links"), Some(2.0));
    for name in [
        "relay_frames_forwarded_total",
        "relay_frames_dropped_total{reason=\"queue_full\"}",
        "relay_purges_total",
        "relay_sessions_purged_total",
        "relay_purge_seconds_count",
        "relay_redis_errors_total",
    ] {
        assert!(metric(&text, name).is_some(), "{name} missing:\n{text}");
    }
    assert_eq!(http_get(relay.admin, "/nope").await.0, 404);

    // Redis goes away: degraded, but the links are still served.
    redis.kill();
    let (status, body) = http_get(relay.admin, "/healthz").await;
    assert_eq!(status, 503);
    let health: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        health,
        serde_json::json!({"status": "degraded", "links": 2, "redis": "down"})
    );
    let servers = relay.servers().await;
    assert_eq!(
        servers.len(),
        2,
        "only the links are known now: {servers:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_says_bye_and_returns_promptly() {
    let redis = RedisServer::start();
    let relay = start_relay(&redis, |_| {}).await;
    let mut a = Fake::link(relay.link, "a", 1).await;
    let mut b = Fake::link(relay.link, "b", 1).await;
    a.sync().await;
    b.sync().await;

    let asked = Instant::now();
    relay.shutdown.cancel();
    assert_eq!(a.recv().await, Some(Frame::Bye));
    assert_eq!(b.recv().await, Some(Frame::Bye));
    a.expect_closed().await;
    let result = tokio::time::timeout(Duration::from_secs(3), relay.task)
        .await
        .expect("run returns within 3 s")
        .expect("the relay task did not panic");
    assert!(result.is_ok(), "{result:?}");
    let took = asked.elapsed();
    assert!(took < Duration::from_secs(2), "shutdown took {took:?}");

    // Nothing listens any more.
    assert!(TcpStream::connect(relay.admin).await.is_err());
    assert!(TcpStream::connect(relay.link).await.is_err());
    // And a server that said nothing was purged by no one.
    assert_eq!(relay.metrics.purges(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_stops_reading_slows_no_one_and_is_cut_off() {
    let redis = RedisServer::start();
    let relay = start_relay(&redis, |c| {
        c.link_queue = 64;
        c.heartbeat = Duration::from_millis(100);
        c.dead_after = Duration::from_millis(500);
        c.purge_grace = Duration::from_millis(100);
    })
    .await;
    let mut a = Fake::link(relay.link, "a", 1).await;
    // b keeps sending heartbeats but never reads again.
    let b = Fake::link(relay.link, "b", 1).await;
    let (_unread, write) = b.framed.into_inner().into_split();
    let mut b_out = tokio_util::codec::FramedWrite::new(write, LinkCodec::default());
    let heartbeats = tokio::spawn(async move {
        for n in 0.. {
            if b_out.send(Frame::Ping(n)).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });

    // a sends to b until the relay gives up on b: the socket buffers fill
    // (b reads nothing), then b's queue, then frames are dropped, and once
    // nothing was taken for dead-after, b is cut off. a is served throughout.
    let text = "x".repeat(2000);
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        for _ in 0..256 {
            a.framed.feed(deliver("b", &text)).await.expect("feed");
        }
        SinkExt::<Frame>::flush(&mut a.framed).await.expect("flush");
        tokio::time::timeout(Duration::from_secs(2), a.sync())
            .await
            .expect("a is served while b is stuck");
        let ids: Vec<Value> = relay
            .servers()
            .await
            .into_iter()
            .map(|s| s["id"].clone())
            .collect();
        if ids == ["a"] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the stuck link is still up: {ids:?}"
        );
    }
    assert_eq!(relay.metrics.links(), 1);
    assert!(
        relay
            .metric("relay_frames_dropped_total{reason=\"queue_full\"}")
            .await
            > 0.0
    );
    heartbeats.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_max_links_are_closed_and_counted() {
    let redis = RedisServer::start();
    let relay = start_relay(&redis, |c| c.max_links = 1).await;
    let mut a = Fake::link(relay.link, "a", 1).await;
    // The second connection gets no challenge: closed at once.
    let stream = TcpStream::connect(relay.link).await.expect("connect");
    let mut second: Link = Framed::new(stream, LinkCodec::default());
    expect_closed(&mut second).await;
    assert_eq!(
        relay
            .metric("relay_links_refused_total{reason=\"full\"}")
            .await,
        1.0
    );
    // The linked server is not affected; once it goes, its slot is free.
    a.sync().await;
    a.send(Frame::Bye).await;
    a.expect_closed().await;
    let back = eventually(Duration::from_secs(10), || async {
        let stream = TcpStream::connect(relay.link).await.ok()?;
        let mut framed: Link = Framed::new(stream, LinkCodec::default());
        match next_frame(&mut framed).await {
            Some(Frame::Challenge { .. }) => Some(()),
            _ => None,
        }
    })
    .await;
    assert!(back.is_some(), "the slot was never given back");
}

fn catch_up(to: &str, users: &[&str]) -> Frame {
    Frame::CatchUp {
        to_server: to.into(),
        users: users.iter().map(|u| u.to_string()).collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catch_up_reaches_its_server_and_one_for_every_server_all_but_the_sender() {
    let redis = RedisServer::start();
    let relay = start_relay(&redis, |_| {}).await;
    let mut a = Fake::link(relay.link, "a", 1).await;
    let mut b = Fake::link(relay.link, "b", 1).await;
    let mut c = Fake::link(relay.link, "c", 1).await;

    a.send(catch_up("b", &["bob", "ann"])).await;
    assert_eq!(b.recv().await, Some(catch_up("b", &["bob", "ann"])));
    // Nothing for c, nothing back to a.
    a.sync().await;
    c.sync().await;

    a.send(catch_up(ALL_SERVERS, &[])).await;
    assert_eq!(b.recv().await, Some(catch_up(ALL_SERVERS, &[])));
    assert_eq!(c.recv().await, Some(catch_up(ALL_SERVERS, &[])));
    a.sync().await;
    b.sync().await;
    assert_eq!(relay.metric("relay_frames_forwarded_total").await, 3.0);
    // Forwarded, not the relay's own.
    assert_eq!(relay.metric("relay_catch_ups_sent_total").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_dropped_at_a_full_queue_are_followed_by_a_catch_up_once_it_drained() {
    let redis = RedisServer::start();
    let relay = start_relay(&redis, |c| {
        c.link_queue = 4;
        // b stops reading for a while; it must not be cut off meanwhile.
        c.dead_after = Duration::from_secs(60);
    })
    .await;
    let mut a = Fake::link(relay.link, "a", 1).await;
    let mut b = Fake::link_small(relay.link, "b", 1).await;

    // b reads nothing: the socket buffers fill (small on b's side, so this
    // takes a few MB, not the tens that autotuning allows), then b's queue,
    // then the relay drops.
    let text = "x".repeat(60_000);
    let numbered = |n: usize| match deliver("b", &text) {
        Frame::Deliver {
            to_server,
            user,
            seq,
            except,
            mut msg,
        } => {
            msg.id = format!("m{n}");
            Frame::Deliver {
                to_server,
                user,
                seq,
                except,
                msg,
            }
        }
        other => other,
    };
    let dropped = "relay_frames_dropped_total{reason=\"queue_full\"}";
    let mut sent = 0;
    while relay.metric(dropped).await == 0.0 {
        assert!(sent < 2000, "no drop after {sent} frames");
        for _ in 0..8 {
            a.framed.feed(numbered(sent)).await.expect("feed");
            sent += 1;
        }
        SinkExt::<Frame>::flush(&mut a.framed).await.expect("flush");
        a.sync().await;
    }

    // b reads again: what was queued, and a catch-up for bob (it may come
    // ahead of frames still queued: it makes bob's sessions read the inbox
    // to its head, which already holds everything sent).
    let mut order = Vec::new(); // Some(n): deliver m<n>; None: catch-up
    // Until a second passes without a deliver or catch-up (the relay's
    // heartbeats, every second, do not count: they would keep it going).
    let mut quiet = tokio::time::Instant::now() + Duration::from_secs(1);
    loop {
        let next = tokio::time::timeout_at(quiet, b.framed.next()).await;
        if matches!(
            next,
            Ok(Some(Ok(Frame::Deliver { .. } | Frame::CatchUp { .. })))
        ) {
            quiet = tokio::time::Instant::now() + Duration::from_secs(1);
        }
        let frame = match next {
            Err(_) => break,
            Ok(Some(Ok(frame))) => frame,
            Ok(_) => panic!("b's link ended"),
        };
        match frame {
            Frame::Ping(n) => b.send(Frame::Pong(n)).await,
            Frame::Deliver { msg, .. } => {
                let n: usize = msg.id[1..].parse().expect("numbered");
                order.push(Some(n));
            }
            Frame::CatchUp { to_server, users } => {
                assert_eq!(
                    (to_server.as_str(), &users[..]),
                    ("b", &["bob".to_owned()][..])
                );
                order.push(None);
            }
            other => panic!("unexpected {}", other.kind()),
        }
    }
    let received: std::collections::HashSet<usize> = order.iter().flatten().copied().collect();
    assert!(received.len() < sent, "all {sent} arrived: none dropped?");
    let catch_ups = order.iter().filter(|n| n.is_none()).count();
    assert!(catch_ups >= 1, "no catch-up after the drops: {order:?}");
    assert_eq!(
        relay.metric("relay_catch_ups_sent_total").await,
        catch_ups as f64
    );
}
