//! An async Rust client for Switchboard.
//!
//! Two layers:
//!
//! - [`Conn`], the raw connection: WebSocket (`ws://host:port/ws`) or the
//!   line protocol (`tcp://host:port`), write a line or a
//!   [`shared::client::Command`], read the next line, parse it with
//!   `shared`'s grammar ([`shared::client::parse_server_line`]), over TLS
//!   when asked ([`Tls`]). Nothing more: tests use it to say exactly what
//!   they send.
//! - [`Client`], a task that owns a connection and keeps it up: login (a
//!   token, or a bare user name on a server in dev mode), [`Client::send`]
//!   resolved at `OK SENT` with the message id and seq, rooms, `WHO`,
//!   `ACK`, and an [`Event`] stream of pushed messages, each direct message
//!   once and in order ([`inbox`]: de-duplicated by seq, `SYNC` on a gap),
//!   plus the connection's ups and downs. When the connection breaks it
//!   reconnects with backoff and jitter, resumes from the last seq, and
//!   re-sends unanswered sends with the same `cid`, so each is stored once.
//!   A full server's alternatives are tried first.
//!
//! # What it promises
//!
//! - [`Client::send`] resolves once the message is stored. A send cut off
//!   by a broken connection is written again after the reconnect with the
//!   same `cid`, and the server stores it once. A call that times out
//!   ([`Error::Timeout`]) may still have been stored.
//! - Each direct message comes out of the event queue once, in inbox order.
//!   A hole that cannot be filled any more (trimmed, or an inbox Redis
//!   lost) is reported as [`Event::Lost`], never skipped silently. This
//!   client's own sends, which a `SYNC` replays, are not reported as news.
//! - Room messages, broadcasts and transient messages ([`Client::tell`],
//!   which needs a server that knows `TELL`) are at most once.
//! - A new device ([`Config::resume`] `None`) starts with what its inbox
//!   holds; keep [`Client::position`] to resume after it instead.
//! - A full event queue stops the client reading from the server, which in
//!   the end closes a client that does not keep up: read the events.
//!
//! The parts: [`endpoint`] (where), [`conn`] (the raw layer), [`inbox`]
//! (seq order and gaps, no I/O), [`client`] (the task and its handle),
//! [`error`] (what fails, typed).
//!
//! # Example
//!
//! With a local cluster (`scripts/cluster up`: servers on 9001 and 9002, in
//! dev mode), `cargo run -p switchboard-client --example chat -- alice bob`
//! is a small chat; in code:
//!
//! ```no_run
//! use switchboard_client::{Client, Config, Endpoint, Event};
//!
//! # async fn demo() -> Result<(), switchboard_client::Error> {
//! let servers = vec!["ws://127.0.0.1:9001/ws".parse().expect("endpoint")];
//! let (alice, mut events) = Client::connect(Config::new("alice", servers)).await?;
//! let sent = alice.send("bob", "hello").await?;
//! println!("stored as {} (seq {} in bob's inbox)", sent.msg_id, sent.seq);
//! while let Some(event) = events.recv().await {
//!     if let Event::Message { msg, .. } = event {
//!         println!("{}: {}", msg.from, msg.text);
//!     }
//! }
//! # Ok(()) }
//! ```

pub mod client;
pub mod conn;
pub mod endpoint;
pub mod error;
pub mod inbox;

pub use client::{Client, Config, Event, Sent};
pub use conn::{Conn, ConnectError, Incoming, Tls};
pub use endpoint::Endpoint;
pub use error::Error;
pub use inbox::Position;
pub use shared::link::{DirectMsg, RoomMsg};
