//! Fuzz target: the relay link's frame decoder (`shared::codec::LinkCodec`),
//! the first code that sees a peer's bytes on the link port.
//!
//! The input is fed in chunks (sizes taken from its first byte) and decoded
//! in a loop as a link task does: frames until `Ok(None)` or an error. It
//! must never panic, never loop without consuming, and every frame it yields
//! must re-encode and decode to itself.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use shared::codec::LinkCodec;
use tokio_util::codec::{Decoder, Encoder};

/// Small, so length prefixes over the limit are common.
const MAX_FRAME: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, rest)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let mut codec = LinkCodec::new(MAX_FRAME);
    let mut buf = BytesMut::new();
    for piece in rest.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            let before = buf.len();
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => {
                    assert!(buf.len() < before, "a frame was yielded from no bytes");
                    let mut again = BytesMut::new();
                    LinkCodec::new(usize::MAX >> 1)
                        .encode(&frame, &mut again)
                        .expect("a decoded frame encodes");
                    let back = LinkCodec::new(usize::MAX >> 1)
                        .decode(&mut again)
                        .expect("a re-encoded frame decodes");
                    assert_eq!(back.as_ref(), Some(&frame));
                }
                Ok(None) => break,
                // The link is closed on any error: nothing more to feed.
                Err(_) => return,
            }
        }
    }
    let _ = codec.decode_eof(&mut buf);
});
