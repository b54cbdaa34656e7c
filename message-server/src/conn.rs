//! One client connection as a session sees it, whatever the transport:
//! text in, text out, pings, and a close that tells the client why.
//!
//! [`WsConn`] is a WebSocket (RFC 6455 close codes), [`LineConn`] a plain
//! TCP line stream (telnet: the reason is an `ERR` or `BYE` line). Reads are
//! cancel-safe, so a session can `select!` over them.

use std::future::Future;

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use shared::client::ErrCode;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::codec::{Decoder, LinesCodec, LinesCodecError};

use crate::coalesce::Coalesce;

/// After our close (frame or line) is written, how long we keep reading and
/// discarding what the client still sends, until it closes too. Closing a
/// socket with unread input makes the kernel answer with a reset, and a
/// reset can destroy our close before the client reads it: a client that
/// was sending at the moment would see a broken connection instead of the
/// close code (e.g. 1001 at shutdown).
const CLOSE_LINGER: std::time::Duration = std::time::Duration::from_secs(1);

/// RFC 6455 close codes we send.
pub mod code {
    /// Normal closure (QUIT).
    pub const NORMAL: u16 = 1000;
    /// Going away: server shutdown, idle timeout.
    pub const GOING_AWAY: u16 = 1001;
    /// Protocol error.
    pub const PROTOCOL: u16 = 1002;
    /// Unsupported data (binary frames on the chat endpoint).
    pub const UNSUPPORTED: u16 = 1003;
    /// Invalid payload data (invalid UTF-8 in a text frame).
    pub const INVALID_DATA: u16 = 1007;
    /// Policy violation: auth, rate, slow consumer.
    pub const POLICY: u16 = 1008;
    /// Message too big.
    pub const TOO_BIG: u16 = 1009;
    /// Internal error.
    pub const INTERNAL: u16 = 1011;
    /// Try again later: at capacity.
    pub const TRY_LATER: u16 = 1013;
}

/// Why and how a connection is closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Close {
    /// RFC 6455 code (WebSocket).
    pub code: u16,
    /// The `ERR` code a line client gets (`None`: a `BYE` line).
    pub err: Option<ErrCode>,
    /// A short reason, also the WebSocket close reason (kept under 123 bytes).
    pub reason: String,
}

impl Close {
    pub fn new(code: u16, err: Option<ErrCode>, reason: impl Into<String>) -> Close {
        Close {
            code,
            err,
            reason: reason.into(),
        }
    }
}

/// What a read gave.
#[derive(Debug)]
pub enum Input {
    /// A command (a text frame or a line).
    Text(String),
    /// A line over the limit (TCP; it was skipped, the session lives on).
    TooLong,
    /// A line that is not UTF-8 (TCP; skipped, the session lives on).
    BadUtf8,
    /// A frame that only shows the client is alive (ping, pong).
    Activity,
    /// The client closed, or the connection broke.
    Closed,
    /// The client broke the protocol: close this way.
    Fatal(Close),
}

/// Why a write failed: the connection is finished.
#[derive(Debug, thiserror::Error)]
#[error("connection write failed: {0}")]
pub struct WriteError(String);

impl WriteError {
    /// The client did not take our bytes within the write timeout.
    pub fn timeout() -> WriteError {
        WriteError("write timed out".to_owned())
    }

    /// A write that failed for `reason`.
    pub fn new(reason: impl Into<String>) -> WriteError {
        WriteError(reason.into())
    }
}

/// A client connection carrying text commands.
pub trait Conn: Send + 'static {
    /// The next input; cancel-safe.
    fn recv(&mut self) -> impl Future<Output = Input> + Send;
    /// Queues one outbound line or text frame (not yet flushed).
    fn feed(&mut self, text: String) -> impl Future<Output = Result<(), WriteError>> + Send;
    /// Sends what was fed.
    fn flush(&mut self) -> impl Future<Output = Result<(), WriteError>> + Send;
    /// Sends a keep-alive ping, where the transport has one.
    fn ping(&mut self) -> impl Future<Output = Result<(), WriteError>> + Send;
    /// Tells the client why, then closes.
    fn close(&mut self, close: &Close) -> impl Future<Output = ()> + Send;
    /// Whether [`Conn::ping`] does anything.
    fn has_ping(&self) -> bool;
}

/// A WebSocket connection.
pub struct WsConn<S> {
    ws: WebSocketStream<S>,
}

impl<S> WsConn<S> {
    pub fn new(ws: WebSocketStream<S>) -> Self {
        WsConn { ws }
    }
}

/// Maps a tungstenite read error to the close the client should get
/// (`None`: the connection is simply gone). tungstenite reports these but
/// does not send the close frame itself.
pub fn close_for_ws_error(e: &WsError) -> Option<Close> {
    use tokio_tungstenite::tungstenite::error::CapacityError;
    match e {
        WsError::Capacity(CapacityError::MessageTooLong { size, max_size }) => Some(Close::new(
            code::TOO_BIG,
            Some(ErrCode::TooLong),
            format!("message of {size} bytes is over the limit of {max_size}"),
        )),
        WsError::Capacity(_) => Some(Close::new(
            code::TOO_BIG,
            Some(ErrCode::TooLong),
            "message too big",
        )),
        WsError::Utf8(_) => Some(Close::new(
            code::INVALID_DATA,
            Some(ErrCode::Syntax),
            "text frame is not valid UTF-8",
        )),
        WsError::Protocol(p) => Some(Close::new(
            code::PROTOCOL,
            Some(ErrCode::Syntax),
            truncate_reason(&p.to_string()),
        )),
        WsError::ConnectionClosed | WsError::AlreadyClosed | WsError::Io(_) => None,
        other => Some(Close::new(
            code::PROTOCOL,
            Some(ErrCode::Syntax),
            truncate_reason(&other.to_string()),
        )),
    }
}

/// A close reason must fit in a control frame (123 bytes).
pub fn truncate_reason(s: &str) -> String {
    let mut end = s.len().min(120);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// Sends a close frame with `close`'s code and reason, then flushes.
pub async fn send_ws_close<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    close: &Close,
) {
    let frame = CloseFrame {
        code: CloseCode::from(close.code),
        reason: truncate_reason(&close.reason).into(),
    };
    let _ = ws.close(Some(frame)).await;
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Conn for WsConn<S> {
    async fn recv(&mut self) -> Input {
        match self.ws.next().await {
            None => Input::Closed,
            Some(Ok(Message::Text(t))) => Input::Text(t.as_str().to_owned()),
            Some(Ok(Message::Binary(_))) => Input::Fatal(Close::new(
                code::UNSUPPORTED,
                Some(ErrCode::Syntax),
                "binary frames are not supported; send text",
            )),
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => Input::Activity,
            Some(Ok(Message::Close(_))) => Input::Closed,
            Some(Err(e)) => match close_for_ws_error(&e) {
                Some(close) => Input::Fatal(close),
                None => Input::Closed,
            },
        }
    }

    async fn feed(&mut self, text: String) -> Result<(), WriteError> {
        self.ws
            .feed(Message::text(text))
            .await
            .map_err(|e| WriteError(e.to_string()))
    }

    async fn flush(&mut self) -> Result<(), WriteError> {
        let frames = self.ws.flush().await.map_err(|e| WriteError(e.to_string()));
        // Once the peer's close is answered, tungstenite reports the
        // connection closed and stops short of flushing the stream: its
        // answer waits in the buffer below (see `coalesce`). Flushing an
        // empty buffer costs nothing.
        let stream = self
            .ws
            .get_mut()
            .flush()
            .await
            .map_err(|e| WriteError(e.to_string()));
        frames.and(stream)
    }

    async fn ping(&mut self) -> Result<(), WriteError> {
        self.ws
            .send(Message::Ping(Default::default()))
            .await
            .map_err(|e| WriteError(e.to_string()))
    }

    async fn close(&mut self, close: &Close) {
        send_ws_close(&mut self.ws, close).await;
        // The closing handshake: read until the client's close or the end.
        let drain = async { while let Some(Ok(_)) = self.ws.next().await {} };
        let _ = tokio::time::timeout(CLOSE_LINGER, drain).await;
    }

    fn has_ping(&self) -> bool {
        true
    }
}

/// One item of the line codec: a line, or a line we could not take.
#[derive(Debug)]
pub enum Line {
    Text(String),
    TooLong,
    BadUtf8,
}

/// [`LinesCodec`] with a length limit, where an over-long or non-UTF-8 line
/// is an item, not a stream-ending error: the session answers `ERR` and
/// reads on.
#[derive(Debug)]
pub struct BoundedLines(LinesCodec);

impl BoundedLines {
    pub fn new(max: usize) -> Self {
        BoundedLines(LinesCodec::new_with_max_length(max))
    }

    fn map(r: Result<Option<String>, LinesCodecError>) -> Result<Option<Line>, std::io::Error> {
        match r {
            Ok(Some(s)) => Ok(Some(Line::Text(s))),
            Ok(None) => Ok(None),
            Err(LinesCodecError::MaxLineLengthExceeded) => Ok(Some(Line::TooLong)),
            Err(LinesCodecError::Io(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
                Ok(Some(Line::BadUtf8))
            }
            Err(LinesCodecError::Io(e)) => Err(e),
        }
    }
}

impl Decoder for BoundedLines {
    type Item = Line;
    type Error = std::io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Line>, std::io::Error> {
        Self::map(self.0.decode(src))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Line>, std::io::Error> {
        Self::map(self.0.decode_eof(src))
    }
}

/// A telnet-style line connection: lines cut by [`BoundedLines`] from
/// bytes read through [`Coalesce`], lines written through it.
///
/// Not `Framed`: it keeps 8 KiB buffers each way (even when given smaller
/// ones), most of an idle session's memory. Here an idle line connection
/// holds no buffer: the read buffer exists only while part of a line is
/// waiting for the rest, the write buffer only until the flush.
pub struct LineConn<S> {
    io: Coalesce<S>,
    /// Bytes of a line not yet complete (empty: no storage).
    partial: BytesMut,
    codec: BoundedLines,
    /// The client closed its side: what is left is decoded, then `Closed`.
    eof: bool,
}

impl<S: AsyncRead + AsyncWrite> LineConn<S> {
    pub fn new(stream: S, max_line: usize) -> Self {
        LineConn {
            io: Coalesce::new(stream, b""),
            partial: BytesMut::new(),
            codec: BoundedLines::new(max_line),
            eof: false,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Conn for LineConn<S> {
    async fn recv(&mut self) -> Input {
        loop {
            let item = if self.eof {
                self.codec.decode_eof(&mut self.partial)
            } else {
                self.codec.decode(&mut self.partial)
            };
            match item {
                Ok(Some(line)) => {
                    if self.partial.is_empty() {
                        // The burst is read: give its buffer back.
                        self.partial = BytesMut::new();
                    }
                    return match line {
                        Line::Text(s) => Input::Text(s),
                        Line::TooLong => Input::TooLong,
                        Line::BadUtf8 => Input::BadUtf8,
                    };
                }
                Ok(None) if self.eof => return Input::Closed,
                Ok(None) => {}
                Err(_) => return Input::Closed,
            }
            match self.io.read_into(&mut self.partial).await {
                Ok(0) => self.eof = true,
                Ok(_) => {}
                Err(_) => return Input::Closed,
            }
        }
    }

    async fn feed(&mut self, text: String) -> Result<(), WriteError> {
        let written = async {
            self.io.write_all(text.as_bytes()).await?;
            self.io.write_all(b"\r\n").await
        };
        written.await.map_err(|e| WriteError(e.to_string()))
    }

    async fn flush(&mut self) -> Result<(), WriteError> {
        // No read is in progress while a session writes (one task, one
        // select!), so the stream is ours to write to.
        self.io.flush().await.map_err(|e| WriteError(e.to_string()))
    }

    async fn ping(&mut self) -> Result<(), WriteError> {
        Ok(())
    }

    async fn close(&mut self, close: &Close) {
        // A normal close follows a `BYE` the session already wrote (QUIT).
        let line = match close.err {
            Some(err) => Some(format!("ERR {} {}", err.as_str(), close.reason)),
            None if close.code != code::NORMAL => Some("BYE".to_owned()),
            None => None,
        };
        if let Some(line) = line {
            let _ = self.feed(line).await;
            let _ = self.flush().await;
        }
        let _ = self.io.shutdown().await;
        // Read until the client closes too (see CLOSE_LINGER).
        let drain = async { while !matches!(self.recv().await, Input::Closed) {} };
        let _ = tokio::time::timeout(CLOSE_LINGER, drain).await;
    }

    fn has_ping(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn over_long_and_non_utf8_lines_are_items_and_reading_goes_on() {
        let mut codec = BoundedLines::new(8);
        let mut buf = BytesMut::from(&b"0123456789abc\nok\n\xff\xfe\nlast\n"[..]);
        let mut seen = Vec::new();
        while let Some(item) = codec.decode(&mut buf).expect("no fatal error") {
            seen.push(format!("{item:?}"));
        }
        assert_eq!(
            seen,
            ["TooLong", "Text(\"ok\")", "BadUtf8", "Text(\"last\")"]
        );
    }

    #[tokio::test]
    async fn an_idle_line_connection_holds_no_buffer() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (ours, mut client) = tokio::io::duplex(1 << 16);
        let mut conn = LineConn::new(ours, 64);
        client.write_all(b"PING\r\nHE").await.expect("written");
        assert!(matches!(conn.recv().await, Input::Text(t) if t == "PING"));
        assert!(
            conn.partial.capacity() > 0,
            "half a line waits for the rest"
        );
        client.write_all(b"LP\n").await.expect("written");
        assert!(matches!(conn.recv().await, Input::Text(t) if t == "HELP"));
        assert_eq!(
            conn.partial.capacity(),
            0,
            "the burst's buffer is given back"
        );
        conn.feed("PONG".to_owned()).await.expect("fed");
        conn.flush().await.expect("flushed");
        assert_eq!(conn.io.buffered(), (0, 0));
        let mut got = [0u8; 6];
        client.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"PONG\r\n");
        drop(client);
        assert!(matches!(conn.recv().await, Input::Closed));
    }

    #[test]
    fn close_reasons_fit_a_control_frame() {
        let long = "é".repeat(100);
        let r = truncate_reason(&long);
        assert!(r.len() <= 120);
        assert!(long.starts_with(&r));
    }
}
