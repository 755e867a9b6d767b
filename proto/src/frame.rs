//! Length-delimited frames: a varint length (at most 5 bytes, so at most
//! `u32::MAX`) followed by that many bytes of one protobuf message.
//!
//! The decoder is sans-IO: callers append received bytes to a [`BytesMut`] and
//! call [`FrameDecoder::decode`] until it returns `Ok(None)` (need more bytes).
//! A declared length above the limit is refused as soon as the length is
//! readable, before the caller would buffer the body, so a peer cannot make a
//! receiver allocate more than `max + 5` bytes plus one read chunk.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;
use thiserror::Error;

use crate::v1::ErrorCode;

/// Longest varint length prefix (a `u32`).
pub const MAX_HEADER: usize = 5;

/// Why a frame could not be encoded or decoded.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The declared (or encoded) length is above the limit.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Declared length.
        len: u64,
        /// Limit in force.
        max: usize,
    },
    /// The length prefix is not a valid varint of at most 5 bytes.
    #[error("malformed frame length")]
    BadLength,
    /// The frame body is not a valid message of the expected type.
    #[error("malformed frame: {0}")]
    Malformed(#[from] prost::DecodeError),
}

impl FrameError {
    /// The wire code a peer is told.
    pub fn code(&self) -> ErrorCode {
        match self {
            FrameError::TooLarge { .. } => ErrorCode::FrameTooLarge,
            FrameError::BadLength | FrameError::Malformed(_) => ErrorCode::MalformedFrame,
        }
    }
}

/// Splits a byte stream into frames no larger than `max`.
#[derive(Debug, Clone, Copy)]
pub struct FrameDecoder {
    max: usize,
}

impl FrameDecoder {
    /// A decoder that refuses frames above `max` bytes.
    pub fn new(max: usize) -> Self {
        Self { max }
    }

    /// The limit in force.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Takes the next complete frame body out of `buf`.
    ///
    /// Returns `Ok(None)` when `buf` holds no complete frame yet; the bytes
    /// stay in `buf` for the next call. An error means the stream is broken
    /// and must be closed.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        let Some((len, header)) = read_len(buf)? else {
            return Ok(None);
        };
        if len > self.max as u64 {
            return Err(FrameError::TooLarge { len, max: self.max });
        }
        // `len <= max <= usize::MAX` after the check above.
        let len = len as usize;
        if buf.len() < header + len {
            // Make room for the rest of this frame only, never more.
            buf.reserve(header + len - buf.len());
            return Ok(None);
        }
        buf.advance(header);
        Ok(Some(buf.split_to(len).freeze()))
    }

    /// Decodes the next complete frame as a message of type `M`.
    pub fn decode_message<M: Message + Default>(
        &self,
        buf: &mut BytesMut,
    ) -> Result<Option<M>, FrameError> {
        match self.decode(buf)? {
            Some(body) => Ok(Some(M::decode(body)?)),
            None => Ok(None),
        }
    }
}

/// Reads the varint length prefix: `Ok(None)` if incomplete, otherwise the
/// length and the prefix size.
fn read_len(buf: &[u8]) -> Result<Option<(u64, usize)>, FrameError> {
    let mut value: u64 = 0;
    for (i, byte) in buf.iter().take(MAX_HEADER).enumerate() {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            if value > u64::from(u32::MAX) {
                return Err(FrameError::BadLength);
            }
            return Ok(Some((value, i + 1)));
        }
    }
    if buf.len() >= MAX_HEADER {
        return Err(FrameError::BadLength);
    }
    Ok(None)
}

/// Appends `msg` as one frame to `out`, refusing it if it exceeds `max`.
pub fn encode<M: Message>(msg: &M, max: usize, out: &mut BytesMut) -> Result<(), FrameError> {
    let len = msg.encoded_len();
    if len > max {
        return Err(FrameError::TooLarge {
            len: len as u64,
            max,
        });
    }
    out.reserve(MAX_HEADER + len);
    prost::encoding::encode_varint(len as u64, out);
    // Cannot fail: capacity was reserved above.
    msg.encode(out).map_err(|_| FrameError::BadLength)?;
    Ok(())
}

/// Writes a raw length prefix; for tests and fuzzers that forge frames.
pub fn put_len(len: u64, out: &mut impl BufMut) {
    prost::encoding::encode_varint(len, out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{Deliver, Message as ChatMessage, Peer, Send, peer::Target};
    use proptest::prelude::*;

    fn send(id: &str, body: Vec<u8>) -> Send {
        Send {
            client_msg_id: id.to_owned(),
            to: Some(Peer {
                target: Some(Target::User("bob".into())),
            }),
            body: body.into(),
            kind: "text".into(),
            ..Default::default()
        }
    }

    #[test]
    fn incomplete_input_is_not_an_error() {
        let mut out = BytesMut::new();
        encode(&send("1", vec![7; 300]), 1024, &mut out).expect("encode");
        let dec = FrameDecoder::new(1024);
        let full = out.clone();
        for cut in 0..full.len() {
            let mut part = BytesMut::from(&full[..cut]);
            assert!(dec.decode(&mut part).expect("prefix is fine").is_none());
            assert_eq!(part.len(), cut, "nothing consumed from a partial frame");
        }
    }

    #[test]
    fn oversized_declared_length_is_refused_before_buffering() {
        let mut buf = BytesMut::new();
        put_len(10 * 1024 * 1024, &mut buf);
        let err = FrameDecoder::new(64 * 1024)
            .decode(&mut buf)
            .expect_err("too large");
        assert_eq!(err.code(), ErrorCode::FrameTooLarge);
        assert!(buf.capacity() < 1024, "no room was made for the body");
    }

    #[test]
    fn encoder_refuses_oversized_messages() {
        let mut out = BytesMut::new();
        let err = encode(&send("1", vec![0; 2000]), 1000, &mut out).expect_err("too large");
        assert!(matches!(err, FrameError::TooLarge { max: 1000, .. }));
        assert!(out.is_empty());
    }

    #[test]
    fn overlong_varint_is_malformed() {
        let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff, 0xff, 0x01][..]);
        let err = FrameDecoder::new(1024).decode(&mut buf).expect_err("bad");
        assert_eq!(err.code(), ErrorCode::MalformedFrame);
    }

    proptest! {
        #[test]
        fn frames_round_trip(
            msgs in proptest::collection::vec(
                ("[a-z0-9]{0,40}", proptest::collection::vec(any::<u8>(), 0..2000), 1u64..u64::MAX),
                1..20),
            chunk in 1usize..700,
        ) {
            let mut wire = BytesMut::new();
            let sent: Vec<Deliver> = msgs.iter().map(|(id, body, seq)| Deliver {
                seq: *seq,
                message: Some(ChatMessage {
                    msg_id: id.clone(),
                    body: body.clone().into(),
                    ..Default::default()
                }),
                attempt: 0,
                ..Default::default()
            }).collect();
            for m in &sent {
                encode(m, 4096, &mut wire).expect("fits");
            }
            // Feed the wire bytes in arbitrary chunks.
            let dec = FrameDecoder::new(4096);
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            for piece in wire.chunks(chunk) {
                buf.extend_from_slice(piece);
                while let Some(m) = dec.decode_message::<Deliver>(&mut buf).expect("valid") {
                    got.push(m);
                }
            }
            prop_assert_eq!(got, sent);
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn arbitrary_bytes_never_panic_and_stay_bounded(
            bytes in proptest::collection::vec(any::<u8>(), 0..5000),
            max in 1usize..2048,
        ) {
            let dec = FrameDecoder::new(max);
            let mut buf = BytesMut::from(&bytes[..]);
            loop {
                match dec.decode(&mut buf) {
                    Ok(Some(frame)) => {
                        prop_assert!(frame.len() <= max);
                        // Every stream's message type must survive garbage too.
                        let _ = crate::v1::ClientControl::decode(frame.clone());
                        let _ = crate::v1::ServerControl::decode(frame.clone());
                        let _ = crate::v1::Send::decode(frame.clone());
                        let _ = crate::v1::Deliver::decode(frame.clone());
                        let _ = crate::v1::ServerAck::decode(frame.clone());
                        let _ = crate::v1::DeliveryAck::decode(frame.clone());
                        let _ = crate::v1::RpcRequest::decode(frame.clone());
                        let _ = crate::v1::RpcResponse::decode(frame);
                    }
                    Ok(None) => break,
                    Err(_) => break,
                }
            }
            // Never sized by a declared length: at most what arrived plus
            // room for one frame at the limit (`BytesMut::reserve` may keep
            // the buffer's original capacity when it reallocates).
            prop_assert!(buf.capacity() <= bytes.len() + max + MAX_HEADER + 64);
        }
    }
}
