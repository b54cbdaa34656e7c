//! What can go wrong, typed: a caller switches on the variant, a person
//! reads the message.

use std::time::Duration;

use shared::client::ClientError;

use crate::conn::ConnectError;

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server refused the login (`ERR auth ...`, `ERR login ...`): a
    /// bad, expired or missing token. Retrying will not help.
    #[error("login refused: {0}")]
    Auth(ClientError),
    /// Every server tried is at its cap, and none named one with room.
    #[error("no server has room: {0}")]
    Full(String),
    /// No server could be reached.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The client is closed (after [`crate::Client::close`], or it gave up).
    #[error("client is closed")]
    Closed,
    /// The server said something this client does not understand.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// No answer in time. For a send, it may still have been stored: a
    /// retry with a new call is a new message.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The server refused the command: `ERR <code> <sentence>`.
    #[error("refused: {0}")]
    Server(ClientError),
}
