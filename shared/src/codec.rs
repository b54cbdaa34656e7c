//! The link codec: [`Frame`]s as `postcard` bytes inside length-delimited
//! frames (4-byte big-endian length, then the body).
//!
//! Bounded by a maximum frame length ([`DEFAULT_MAX_FRAME`] unless told
//! otherwise): a longer length prefix is an error before any body is read,
//! so a peer cannot make us buffer more than that.

use bytes::{BufMut, BytesMut};
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

use crate::link::Frame;

/// Default maximum link frame body, in bytes (1 MiB): far above the largest
/// client message, far below anything that hurts.
pub const DEFAULT_MAX_FRAME: usize = 1 << 20;

/// What can go wrong on a link at the framing level. Every variant closes
/// that link and only that link.
#[derive(Debug, thiserror::Error)]
pub enum LinkCodecError {
    /// The socket failed, or a length prefix was over the maximum.
    #[error("link i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The body is not a frame this version knows.
    #[error("malformed link frame: {0}")]
    Malformed(#[from] postcard::Error),
}

/// Encodes and decodes [`Frame`]s.
#[derive(Debug)]
pub struct LinkCodec {
    inner: LengthDelimitedCodec,
    /// The largest body written (the decoder has its own copy).
    max_frame: usize,
}

/// Bytes of the length prefix.
const PREFIX: usize = 4;

impl LinkCodec {
    /// A codec refusing frames over `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        let inner = LengthDelimitedCodec::builder()
            .max_frame_length(max_frame)
            .new_codec();
        LinkCodec { inner, max_frame }
    }
}

impl Default for LinkCodec {
    fn default() -> Self {
        LinkCodec::new(DEFAULT_MAX_FRAME)
    }
}

impl Decoder for LinkCodec {
    type Item = Frame;
    type Error = LinkCodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, LinkCodecError> {
        match self.inner.decode(src)? {
            Some(body) => Ok(Some(postcard::from_bytes(&body)?)),
            None => Ok(None),
        }
    }
}

impl Encoder<&Frame> for LinkCodec {
    type Error = LinkCodecError;

    /// Serializes straight into `dst` behind a length prefix patched in
    /// afterwards: no body buffer of its own, no copy.
    fn encode(&mut self, frame: &Frame, dst: &mut BytesMut) -> Result<(), LinkCodecError> {
        let start = dst.len();
        dst.put_u32(0);
        if let Err(e) = postcard::to_io(frame, (&mut *dst).writer()) {
            dst.truncate(start);
            return Err(e.into());
        }
        let len = dst.len() - start - PREFIX;
        let Some(prefix) = u32::try_from(len).ok().filter(|_| len <= self.max_frame) else {
            dst.truncate(start);
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "link frame of {len} bytes is over the limit of {}",
                    self.max_frame
                ),
            )
            .into());
        };
        dst[start..start + PREFIX].copy_from_slice(&prefix.to_be_bytes());
        Ok(())
    }
}

impl Encoder<Frame> for LinkCodec {
    type Error = LinkCodecError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), LinkCodecError> {
        self.encode(&frame, dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::SessionId;
    use crate::link::{DirectMsg, LINK_VERSION, NONCE_LEN, RoomMsg, ServerAddrs};
    use bytes::Bytes;
    use proptest::prelude::*;

    fn name() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9_.@-]{1,20}"
    }

    fn direct() -> impl Strategy<Value = DirectMsg> {
        (name(), name(), name(), any::<u64>(), any::<String>()).prop_map(
            |(id, from, to, ts, text)| DirectMsg {
                id,
                from,
                to,
                ts,
                text,
            },
        )
    }

    fn frame() -> impl Strategy<Value = Frame> {
        prop_oneof![
            (any::<u16>(), any::<[u8; NONCE_LEN]>())
                .prop_map(|(version, nonce)| Frame::Challenge { version, nonce }),
            (
                any::<u16>(),
                name(),
                any::<u64>(),
                name(),
                name(),
                proptest::collection::vec(any::<u8>(), 0..40)
            )
                .prop_map(|(version, server_id, epoch, ws, tcp, auth)| {
                    Frame::Hello {
                        version,
                        server_id,
                        epoch,
                        addrs: ServerAddrs { ws, tcp },
                        auth,
                    }
                }),
            name().prop_map(|relay_id| Frame::Welcome { relay_id }),
            any::<String>().prop_map(|reason| Frame::Refused { reason }),
            (name(), name(), any::<u64>(), any::<Option<u64>>(), direct()).prop_map(
                |(to_server, user, seq, except, msg)| Frame::Deliver {
                    to_server,
                    user,
                    seq,
                    except: except.map(SessionId),
                    msg,
                }
            ),
            (name(), any::<bool>()).prop_map(|(room, on)| Frame::Interest { room, on }),
            (name(), name(), name(), any::<u64>(), any::<String>()).prop_map(
                |(room, from, id, ts, text)| Frame::Room {
                    msg: RoomMsg {
                        room,
                        from,
                        id,
                        ts,
                        text
                    }
                }
            ),
            any::<u64>().prop_map(Frame::Ping),
            any::<u64>().prop_map(Frame::Pong),
            Just(Frame::Bye),
            (name(), proptest::collection::vec(name(), 0..8))
                .prop_map(|(to_server, users)| Frame::CatchUp { to_server, users }),
            (name(), name(), any::<Option<u64>>(), direct()).prop_map(
                |(to_server, user, except, msg)| Frame::Tell {
                    to_server,
                    user,
                    except: except.map(SessionId),
                    msg,
                }
            ),
            name().prop_map(|user| Frame::Presence { user }),
        ]
    }

    fn encode_all(frames: &[Frame]) -> BytesMut {
        let mut codec = LinkCodec::default();
        let mut buf = BytesMut::new();
        for f in frames {
            codec.encode(f, &mut buf).expect("encodable");
        }
        buf
    }

    proptest! {
        #[test]
        fn frames_round_trip_whatever_the_split(
            frames in proptest::collection::vec(frame(), 1..8),
            cut in any::<proptest::sample::Index>(),
        ) {
            let bytes = encode_all(&frames);
            let cut = cut.index(bytes.len() + 1);
            let mut codec = LinkCodec::default();
            let mut buf = BytesMut::new();
            let mut out = Vec::new();
            // First part, then the rest: the decoder must wait, not fail.
            buf.extend_from_slice(&bytes[..cut]);
            while let Some(f) = codec.decode(&mut buf).expect("valid prefix") {
                out.push(f);
            }
            buf.extend_from_slice(&bytes[cut..]);
            while let Some(f) = codec.decode(&mut buf).expect("valid frames") {
                out.push(f);
            }
            prop_assert_eq!(out, frames);
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn frames_round_trip_byte_by_byte(frames in proptest::collection::vec(frame(), 1..4)) {
            let bytes = encode_all(&frames);
            let mut codec = LinkCodec::default();
            let mut buf = BytesMut::new();
            let mut out = Vec::new();
            for b in bytes.iter() {
                buf.extend_from_slice(&[*b]);
                while let Some(f) = codec.decode(&mut buf).expect("valid frames") {
                    out.push(f);
                }
            }
            prop_assert_eq!(out, frames);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let mut codec = LinkCodec::new(4096);
            let mut buf = BytesMut::from(&bytes[..]);
            // Errors are fine; panics and endless loops are not.
            for _ in 0..bytes.len() + 1 {
                match codec.decode(&mut buf) {
                    Ok(Some(_)) => continue,
                    Ok(None) | Err(_) => break,
                }
            }
        }

        #[test]
        fn garbage_bodies_are_errors_not_panics(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut buf = BytesMut::new();
            LengthDelimitedCodec::new().encode(Bytes::from(body), &mut buf).expect("encodable");
            let _ = LinkCodec::default().decode(&mut buf);
        }
    }

    #[test]
    fn oversized_length_prefix_is_refused_before_the_body() {
        let mut codec = LinkCodec::new(1024);
        let mut buf = BytesMut::from(&(1_000_000u32).to_be_bytes()[..]);
        assert!(matches!(codec.decode(&mut buf), Err(LinkCodecError::Io(_))));
    }

    #[test]
    fn hello_carries_the_version_first() {
        let frame = Frame::Hello {
            version: LINK_VERSION,
            server_id: "a".into(),
            epoch: 1,
            addrs: ServerAddrs::default(),
            auth: vec![],
        };
        let mut buf = encode_all(std::slice::from_ref(&frame));
        assert_eq!(
            LinkCodec::default().decode(&mut buf).expect("ok"),
            Some(frame)
        );
    }

    #[test]
    fn the_wire_format_is_a_big_endian_length_then_the_postcard_body() {
        let frame = Frame::Deliver {
            to_server: "b".into(),
            user: "bob".into(),
            seq: 7,
            except: None,
            msg: DirectMsg {
                id: "m1".into(),
                from: "alice".into(),
                to: "bob".into(),
                ts: 1,
                text: "hello".into(),
            },
        };
        let body = postcard::to_stdvec(&frame).expect("serializable");
        let mut buf = BytesMut::from(&b"earlier"[..]);
        LinkCodec::default()
            .encode(&frame, &mut buf)
            .expect("encodable");
        let mut want = b"earlier".to_vec();
        want.extend_from_slice(&(body.len() as u32).to_be_bytes());
        want.extend_from_slice(&body);
        assert_eq!(&buf[..], &want[..]);
    }

    #[test]
    fn a_frame_over_the_limit_is_refused_and_nothing_of_it_is_written() {
        let frame = Frame::Room {
            msg: RoomMsg {
                id: "m".into(),
                room: "r".into(),
                from: "a".into(),
                ts: 1,
                text: "x".repeat(200),
            },
        };
        let mut codec = LinkCodec::new(100);
        let mut buf = BytesMut::from(&b"kept"[..]);
        assert!(matches!(
            codec.encode(&frame, &mut buf),
            Err(LinkCodecError::Io(_))
        ));
        assert_eq!(&buf[..], b"kept");
    }
}
