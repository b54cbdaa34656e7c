//! sb-load: the load tool for Switchboard and its Socket.IO peer.
//!
//! It opens many WebSocket connections spread over servers and over
//! 127.0.0.x source addresses, logs users in, and runs scenarios, measuring
//! the CPU and memory of every process of the system under test from
//! `/proc`. The same code drives both systems, so their figures compare.
//!
//! The parts:
//! - [`target`]: what a run drives (system, servers, sources, processes).
//! - [`proto`]: the two wire protocols (Switchboard JSON through `shared`'s
//!   client grammar, Socket.IO's WebSocket transport by hand) and the
//!   stamped message text.
//! - [`conn`]: one connection (WebSocket, or lines over Switchboard's
//!   telnet port): bind a source address, handshake (Switchboard through
//!   the client crate's raw connection), log in.
//! - [`traffic`]: one open-loop run of user pairs at a fixed rate, and the
//!   account of every message (delivered, recovered by `sync`, lost).
//! - [`idle`]: many idle connections, memory per connection.
//! - [`scenario`]: the throughput ladder, the latency run, the smoke run.
//! - [`stats`], [`progress`], [`procs`], [`clock`]: histograms and
//!   counters, the per-second line, `/proc` readings, the tool's clock.
//! - [`report`], [`compare`], [`svg`]: results files, the side-by-side
//!   table, and the plots.
//!
//! `main.rs` (binary `sb-load`) parses flags and calls these; tests call
//! [`scenario::smoke`] against servers started in-process.

pub mod clock;
pub mod compare;
pub mod conn;
pub mod idle;
pub mod procs;
pub mod progress;
pub mod proto;
pub mod report;
pub mod scenario;
pub mod stats;
pub mod svg;
pub mod target;
pub mod traffic;

pub use clock::Clock;
pub use proto::System;
pub use target::{ServerSpec, Target};
pub use traffic::{RunError, TrafficConfig, TrafficResult};
