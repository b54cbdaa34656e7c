//! Switchboard's shared vocabulary, used by both binaries and by the tests.
//!
//! This crate does no I/O: no sockets, no clocks, no randomness. It holds
//! the words the processes speak to each other and to Redis:
//!
//! - [`backoff`]: the one retry schedule (exponential, jittered);
//! - [`ids`]: names of users, rooms and servers, and how they are checked;
//! - [`link`]: the frames on the message-server <-> relay link and how a link
//!   authenticates ([`link::auth_tag`]);
//! - [`codec`]: length-delimited `postcard` framing of those frames;
//! - [`client`]: the client grammar (text lines and JSON), parsed into
//!   [`client::Request`]s and rendered from [`client::Reply`] / [`client::Event`];
//! - [`keys`]: Redis key names and the Lua scripts that update them;
//! - [`record`]: a direct message as one inbox entry;
//! - [`registry`]: a server's registry entry, parsed once for both binaries;
//! - [`config`]: how durations are written in flags.

pub mod backoff;
pub mod client;
pub mod codec;
pub mod config;
pub mod ids;
pub mod keys;
pub mod link;
pub mod record;
pub mod registry;
