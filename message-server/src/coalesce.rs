//! The byte stream under a client connection, shaped for many idle
//! connections: [`Coalesce`] holds no buffer while nothing is moving, and
//! gathers a batch of writes into one `write` when something is.
//!
//! - **Writes** are appended to a buffer that starts empty, grows only while
//!   there is unwritten data, and is given back once a flush has written it
//!   all. A write is passed to the socket only when the buffer holds
//!   [`WRITE_COALESCE`] bytes or at the flush that ends each batch of
//!   pushes and answers: one `write` per batch instead of one per frame.
//!   tungstenite runs on top with a write buffer of 0, so each frame comes
//!   straight down here.
//! - **Reads** go through a chunk on the stack of the poll that reads
//!   ([`READ_CHUNK`]), never through a buffer kept in the connection: a
//!   connection waiting for input holds nothing. Bytes the caller had no
//!   room for are kept on the heap until taken, then given back.
//!
//! A session's task is the only user of its stream (one task per
//! connection), so there is no locking here.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Unwritten output at which a write goes to the socket before the flush.
pub const WRITE_COALESCE: usize = 16 * 1024;

/// Bytes one read asks the socket for (on the stack of that poll).
pub const READ_CHUNK: usize = 4096;

/// A stream that buffers writes until a flush and reads through the stack.
#[derive(Debug)]
pub struct Coalesce<S> {
    io: S,
    /// Read from the socket, not yet taken by the reader (empty: no storage).
    read_over: BytesMut,
    /// Written by the caller, not yet by the socket (empty: no storage).
    out: Vec<u8>,
    /// How much of `out` the socket has taken.
    out_done: usize,
}

impl<S> Coalesce<S> {
    /// Wraps `io`; `already_read` are bytes read past a handshake, handed
    /// out before anything else is read.
    pub fn new(io: S, already_read: &[u8]) -> Coalesce<S> {
        Coalesce {
            io,
            read_over: BytesMut::from(already_read),
            out: Vec::new(),
            out_done: 0,
        }
    }

    /// The stream underneath.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.io
    }

    /// Bytes buffered, either way (for tests and metrics).
    pub fn buffered(&self) -> (usize, usize) {
        (self.read_over.capacity(), self.out.capacity())
    }
}

impl<S: AsyncRead + Unpin> Coalesce<S> {
    /// Reads what the socket has (at most [`READ_CHUNK`]) and appends it to
    /// `dst`, which grows only when bytes came. `Ok(0)`: end of stream.
    /// Cancel-safe: nothing is taken unless it is returned.
    pub fn poll_read_into(
        &mut self,
        cx: &mut Context<'_>,
        dst: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        if !self.read_over.is_empty() {
            let n = self.read_over.len();
            dst.extend_from_slice(&self.read_over);
            self.read_over = BytesMut::new();
            return Poll::Ready(Ok(n));
        }
        let mut stack = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
        let mut chunk = ReadBuf::uninit(&mut stack);
        ready!(Pin::new(&mut self.io).poll_read(cx, &mut chunk))?;
        dst.extend_from_slice(chunk.filled());
        Poll::Ready(Ok(chunk.filled().len()))
    }

    /// [`Coalesce::poll_read_into`] as a future.
    pub async fn read_into(&mut self, dst: &mut BytesMut) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_read_into(cx, dst)).await
    }
}

impl<S: AsyncWrite + Unpin> Coalesce<S> {
    /// Writes out everything buffered, then gives the buffer back.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_done < self.out.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.out[self.out_done..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_done += n;
        }
        self.out = Vec::new();
        self.out_done = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Coalesce<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if !this.read_over.is_empty() {
            let n = this.read_over.len().min(buf.remaining());
            buf.put_slice(&this.read_over[..n]);
            this.read_over.advance(n);
            if this.read_over.is_empty() {
                this.read_over = BytesMut::new();
            }
            return Poll::Ready(Ok(()));
        }
        if buf.remaining() >= READ_CHUNK {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        let mut stack = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
        let mut chunk = ReadBuf::uninit(&mut stack);
        ready!(Pin::new(&mut this.io).poll_read(cx, &mut chunk))?;
        let got = chunk.filled();
        let n = got.len().min(buf.remaining());
        buf.put_slice(&got[..n]);
        if n < got.len() {
            this.read_over.extend_from_slice(&got[n..]);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Coalesce<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.out.len() - this.out_done >= WRITE_COALESCE {
            ready!(this.poll_drain(cx))?;
        }
        if this.out.is_empty() && data.len() >= WRITE_COALESCE {
            // Nothing to gather it with: straight to the socket.
            return Pin::new(&mut this.io).poll_write(cx, data);
        }
        this.out.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    #[tokio::test]
    async fn writes_wait_for_the_flush_and_the_buffer_goes_away() {
        let (a, mut b) = duplex(1 << 20);
        let mut c = Coalesce::new(a, b"");
        c.write_all(b"one ").await.expect("buffered");
        c.write_all(b"two").await.expect("buffered");
        let mut got = [0u8; 16];
        let early =
            tokio::time::timeout(std::time::Duration::from_millis(20), b.read(&mut got)).await;
        assert!(
            early.is_err(),
            "nothing reaches the socket before the flush"
        );
        assert!(c.buffered().1 > 0);
        c.flush().await.expect("flushed");
        assert_eq!(c.buffered(), (0, 0), "an idle stream holds no buffer");
        let n = b.read(&mut got).await.expect("read");
        assert_eq!(&got[..n], b"one two");
    }

    #[tokio::test]
    async fn a_large_batch_goes_out_before_the_flush() {
        let (a, mut b) = duplex(1 << 20);
        let mut c = Coalesce::new(a, b"");
        let block = vec![7u8; WRITE_COALESCE / 2 + 1];
        c.write_all(&block).await.expect("buffered");
        c.write_all(&block).await.expect("buffered");
        c.write_all(b"x")
            .await
            .expect("the full buffer was written first");
        let mut got = vec![0u8; block.len() * 2];
        b.read_exact(&mut got)
            .await
            .expect("written before any flush");
        c.flush().await.expect("flushed");
        let mut last = [0u8; 1];
        b.read_exact(&mut last)
            .await
            .expect("the rest at the flush");
        assert_eq!(&last, b"x");
    }

    #[tokio::test]
    async fn small_reads_keep_what_they_had_no_room_for_then_give_it_back() {
        let (a, mut b) = duplex(1 << 16);
        let mut c = Coalesce::new(a, b"hand");
        b.write_all(b"shake and more").await.expect("written");
        let mut got = Vec::new();
        let mut small = [0u8; 3];
        while got.len() < 18 {
            let n = c.read(&mut small).await.expect("read");
            got.extend_from_slice(&small[..n]);
        }
        assert_eq!(got, b"handshake and more");
        assert_eq!(c.buffered(), (0, 0));
        let mut dst = BytesMut::new();
        b.write_all(b"line\n").await.expect("written");
        assert_eq!(c.read_into(&mut dst).await.expect("read"), 5);
        assert_eq!(&dst[..], b"line\n");
        drop(b);
        assert_eq!(c.read_into(&mut dst).await.expect("end"), 0);
    }
}
