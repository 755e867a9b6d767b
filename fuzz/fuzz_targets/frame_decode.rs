//! The frame decoder on arbitrary bytes, fed in arbitrary chunk sizes: never
//! panics, never yields a frame above the limit, never buffers more than one
//! frame's worth plus one chunk.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use qim_proto::frame::{FrameDecoder, MAX_HEADER};

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else { return };
    let max = 1 + usize::from(split) * 16;
    let chunk = 1 + usize::from(split % 64);
    let decoder = FrameDecoder::new(max);
    let mut buf = BytesMut::new();
    for piece in rest.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => assert!(frame.len() <= max),
                Ok(None) => break,
                Err(_) => return,
            }
        }
        assert!(buf.len() <= max + MAX_HEADER + chunk);
    }
});
