//! The wire protocol for mask consumers such as a microcontroller or a logger.
//!
//! Each message is serialised with postcard, followed by a CRC-32C of those
//! bytes, COBS-encoded, and terminated by a zero byte, so a reader can join a
//! stream at any point, resynchronise at the next zero, and reject corrupt
//! messages. A frame is sent as [`Message::Frame`], [`Message::Summary`], the
//! run-length mask in [`Message::MaskChunk`]s, then [`Message::End`].
//!
//! Encoding and decoding need no allocator: buffers are fixed-size
//! (`heapless`) and sized by [`MAX_ENCODED`].

use heapless::Vec;
use serde::{Deserialize, Serialize};

use crate::post::Run;

/// Classes a summary can describe.
pub const MAX_CLASSES: usize = 32;
/// Runs in one mask chunk.
pub const RUNS_PER_CHUNK: usize = 48;
/// Largest encoded message, COBS overhead and terminator included.
pub const MAX_ENCODED: usize = 512;
/// Largest message before COBS: what [`MAX_ENCODED`] leaves after COBS's
/// worst-case overhead of one byte per 254 and the terminator.
const MAX_RAW: usize = MAX_ENCODED - MAX_ENCODED / 254 - 2;

const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// What is known about a frame before its mask.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrameHeader {
    /// Frame number, counting from 0 at start-up.
    pub seq: u32,
    /// Capture time in microseconds since start-up.
    pub timestamp_us: u64,
    /// Mask width.
    pub width: u16,
    /// Mask height.
    pub height: u16,
    /// Classes of the model.
    pub classes: u8,
    /// Capture-to-mask latency in microseconds.
    pub latency_us: u32,
}

/// One message of the protocol.
// Messages live on the stack of a `no_std` encoder without an allocator, so
// the chunk variant is not boxed; a few hundred bytes is what a chunk needs.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// A new frame starts.
    Frame(FrameHeader),
    /// Share of pixels of each class, in 1/65535 units.
    Summary {
        /// Frame number.
        seq: u32,
        /// One value per class.
        fractions: Vec<u16, MAX_CLASSES>,
    },
    /// Consecutive runs of the mask in row-major order.
    MaskChunk {
        /// Frame number.
        seq: u32,
        /// Index of the first pixel the first run covers.
        first_pixel: u32,
        /// The runs.
        runs: Vec<Run, RUNS_PER_CHUNK>,
    },
    /// The frame's mask is complete.
    End {
        /// Frame number.
        seq: u32,
        /// Mask chunks sent for it.
        chunks: u32,
    },
}

/// Why a message could not be encoded or decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtocolError {
    /// The output buffer, or the decoder's, is too small for the message.
    TooLong,
    /// The bytes between two zeros are not valid COBS.
    Cobs,
    /// The CRC does not match: the message was corrupted.
    Crc,
    /// The bytes are not a message of this protocol.
    Malformed,
}

impl core::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            ProtocolError::TooLong => "message longer than the buffer",
            ProtocolError::Cobs => "invalid COBS framing",
            ProtocolError::Crc => "CRC mismatch: the message is corrupt",
            ProtocolError::Malformed => "not a message of the edgeseg protocol",
        })
    }
}

impl core::error::Error for ProtocolError {}

/// Encodes `message` into `out` (postcard, CRC-32C, COBS, zero terminator) and
/// returns the bytes written.
pub fn encode(message: &Message, out: &mut [u8]) -> Result<usize, ProtocolError> {
    let mut raw = [0u8; MAX_RAW];
    let used = postcard::to_slice_crc32(message, &mut raw, CRC.digest())
        .map_err(|_| ProtocolError::TooLong)?
        .len();
    let needed = cobs::max_encoding_length(used) + 1;
    if out.len() < needed {
        return Err(ProtocolError::TooLong);
    }
    let n = cobs::encode(&raw[..used], out);
    out[n] = 0;
    Ok(n + 1)
}

/// Decodes one message from the COBS bytes of `frame` (without the zero
/// terminator), in place.
pub fn decode(frame: &mut [u8]) -> Result<Message, ProtocolError> {
    let n = cobs::decode_in_place(frame).map_err(|_| ProtocolError::Cobs)?;
    postcard::from_bytes_crc32(&frame[..n], CRC.digest()).map_err(|e| match e {
        postcard::Error::DeserializeBadCrc => ProtocolError::Crc,
        _ => ProtocolError::Malformed,
    })
}

/// Splits a byte stream into messages. Feed it bytes as they arrive; it never
/// panics, whatever the bytes.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8, MAX_ENCODED>,
    overflow: bool,
}

impl Decoder {
    /// A decoder waiting for the first message.
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// Takes one byte; returns a message (or why the bytes since the last zero
    /// were not one) when `byte` ends a frame.
    pub fn push(&mut self, byte: u8) -> Option<Result<Message, ProtocolError>> {
        if byte != 0 {
            if self.buf.push(byte).is_err() {
                self.overflow = true;
            }
            return None;
        }
        if self.buf.is_empty() && !self.overflow {
            // Consecutive zeros (or a stream that starts with one) carry nothing.
            return None;
        }
        let result = if self.overflow {
            Err(ProtocolError::TooLong)
        } else {
            decode(&mut self.buf)
        };
        self.buf.clear();
        self.overflow = false;
        Some(result)
    }
}

/// The messages of one frame: header, summary, mask chunks and end.
pub fn frame_messages<'a>(
    header: FrameHeader,
    mask: &'a [u8],
) -> impl Iterator<Item = Message> + 'a {
    let mut counts = [0u32; MAX_CLASSES];
    for &m in mask {
        if let Some(c) = counts.get_mut(m as usize) {
            *c += 1;
        }
    }
    let total = mask.len().max(1) as u64;
    let fractions = counts
        .iter()
        .take((header.classes as usize).min(MAX_CLASSES))
        .map(|&c| ((c as u64 * 65_535 + total / 2) / total) as u16)
        .collect();
    let seq = header.seq;
    let mut runs = crate::post::runs(mask).peekable();
    let mut pixel = 0u32;
    let chunk_iter = core::iter::from_fn(move || {
        runs.peek()?;
        let first_pixel = pixel;
        let mut chunk = Vec::new();
        while chunk.len() < RUNS_PER_CHUNK {
            let Some(run) = runs.next() else { break };
            pixel += run.len;
            let _ = chunk.push(run);
        }
        Some(Message::MaskChunk {
            seq,
            first_pixel,
            runs: chunk,
        })
    });
    let chunk_count = crate::post::runs(mask).count().div_ceil(RUNS_PER_CHUNK) as u32;
    [Message::Frame(header), Message::Summary { seq, fractions }]
        .into_iter()
        .chain(chunk_iter)
        .chain(core::iter::once(Message::End {
            seq,
            chunks: chunk_count,
        }))
}

/// Rebuilds masks from messages, checking that they arrive complete and in order.
#[derive(Debug)]
pub struct MaskAssembler<'m> {
    mask: &'m mut [u8],
    header: Option<FrameHeader>,
    filled: usize,
    chunks: u32,
}

/// Why [`MaskAssembler::push`] rejected a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AssemblyError {
    /// A message of another frame, or before any header.
    WrongFrame,
    /// A chunk that does not continue where the last one ended, or overflows the mask.
    Gap,
    /// The header's size does not fit the assembler's buffer.
    Size,
}

impl<'m> MaskAssembler<'m> {
    /// An assembler writing into `mask`.
    pub fn new(mask: &'m mut [u8]) -> MaskAssembler<'m> {
        MaskAssembler {
            mask,
            header: None,
            filled: 0,
            chunks: 0,
        }
    }

    /// The mask as assembled so far.
    pub fn mask(&self) -> &[u8] {
        self.mask
    }

    /// Takes the next message; returns the frame's header once its mask is complete.
    pub fn push(&mut self, message: &Message) -> Result<Option<FrameHeader>, AssemblyError> {
        match message {
            Message::Frame(h) => {
                if h.width as usize * h.height as usize != self.mask.len() {
                    return Err(AssemblyError::Size);
                }
                self.header = Some(*h);
                self.filled = 0;
                self.chunks = 0;
                Ok(None)
            }
            Message::Summary { seq, .. } => self.check(*seq).map(|_| None),
            Message::MaskChunk {
                seq,
                first_pixel,
                runs,
            } => {
                self.check(*seq)?;
                if *first_pixel as usize != self.filled {
                    return Err(AssemblyError::Gap);
                }
                for run in runs {
                    let end = self.filled + run.len as usize;
                    if run.len == 0 || end > self.mask.len() {
                        return Err(AssemblyError::Gap);
                    }
                    self.mask[self.filled..end].fill(run.value);
                    self.filled = end;
                }
                self.chunks += 1;
                Ok(None)
            }
            Message::End { seq, chunks } => {
                self.check(*seq)?;
                if *chunks != self.chunks || self.filled != self.mask.len() {
                    return Err(AssemblyError::Gap);
                }
                Ok(self.header.take())
            }
        }
    }

    fn check(&self, seq: u32) -> Result<(), AssemblyError> {
        match self.header {
            Some(h) if h.seq == seq => Ok(()),
            _ => Err(AssemblyError::WrongFrame),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    extern crate std;
    use std::vec;
    use std::vec::Vec as StdVec;

    fn header(seq: u32, w: u16, h: u16) -> FrameHeader {
        FrameHeader {
            seq,
            timestamp_us: 1_234_567 * seq as u64,
            width: w,
            height: h,
            classes: 11,
            latency_us: 40_000,
        }
    }

    fn stream(header: FrameHeader, mask: &[u8]) -> StdVec<u8> {
        let mut bytes = StdVec::new();
        let mut buf = [0u8; MAX_ENCODED];
        for m in frame_messages(header, mask) {
            let n = encode(&m, &mut buf).unwrap();
            bytes.extend_from_slice(&buf[..n]);
        }
        bytes
    }

    proptest! {
        /// Masks survive encoding, framing and reassembly exactly.
        #[test]
        fn masks_round_trip(w in 1u16..60, h in 1u16..40, seed: u64, blobs in 1usize..30) {
            let mut rng = crate::rng::Rng::new(seed);
            let mut mask = vec![0u8; w as usize * h as usize];
            for _ in 0..blobs {
                let v = rng.below(12) as u8;
                let start = rng.below(mask.len() as u32) as usize;
                let len = rng.below(80) as usize;
                let end = (start + len).min(mask.len());
                mask[start..end].fill(v);
            }
            let bytes = stream(header(7, w, h), &mask);
            let mut decoder = Decoder::new();
            let mut out = vec![255u8; mask.len()];
            let mut assembler = MaskAssembler::new(&mut out);
            let mut done = None;
            for &b in &bytes {
                if let Some(m) = decoder.push(b)
                    && let Some(h) = assembler.push(&m.unwrap()).unwrap()
                {
                    done = Some(h);
                }
            }
            prop_assert_eq!(done, Some(header(7, w, h)));
            prop_assert_eq!(out, mask);
        }

        /// Any byte string decodes to messages or errors, never a panic.
        #[test]
        fn decoder_survives_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let mut decoder = Decoder::new();
            for b in bytes {
                let _ = decoder.push(b);
            }
        }

        /// A flipped bit in a message is caught, and the next message still decodes.
        #[test]
        fn corruption_is_detected(at in 0usize..1000, bit in 0u8..8) {
            let mask: StdVec<u8> = (0..600u32).map(|i| (i / 37 % 11) as u8).collect();
            let mut bytes = stream(header(3, 30, 20), &mask);
            let at = at % bytes.len();
            if bytes[at] == 0 || bytes[at] ^ (1 << bit) == 0 {
                return Ok(()); // flipping a terminator changes framing, not content
            }
            bytes[at] ^= 1 << bit;
            let mut decoder = Decoder::new();
            let (mut ok, mut bad) = (0, 0);
            for &b in &bytes {
                match decoder.push(b) {
                    Some(Ok(_)) => ok += 1,
                    Some(Err(_)) => bad += 1,
                    None => {}
                }
            }
            let total = frame_messages(header(3, 30, 20), &mask).count();
            prop_assert_eq!((ok, bad), (total - 1, 1));
        }
    }

    #[test]
    fn summary_fractions_add_up() {
        let mask: StdVec<u8> = (0..100).map(|i| if i < 25 { 3 } else { 0 }).collect();
        let messages: StdVec<Message> = frame_messages(header(1, 10, 10), &mask).collect();
        let Message::Summary { fractions, .. } = &messages[1] else {
            panic!("summary second")
        };
        assert_eq!(fractions.len(), 11);
        assert_eq!((fractions[0], fractions[3]), (49_151, 16_384));
        assert!(matches!(
            messages.last(),
            Some(Message::End { chunks: 1, .. })
        ));
    }

    #[test]
    fn out_of_order_chunks_are_rejected() {
        let mask = [1u8; 100];
        let messages: StdVec<Message> = frame_messages(header(1, 10, 10), &mask).collect();
        let mut out = [0u8; 100];
        let mut a = MaskAssembler::new(&mut out);
        assert_eq!(a.push(&messages[2]), Err(AssemblyError::WrongFrame));
        a.push(&messages[0]).unwrap();
        assert_eq!(
            a.push(&Message::End { seq: 1, chunks: 0 }),
            Err(AssemblyError::Gap)
        );
        let mut small = [0u8; 10];
        assert_eq!(
            MaskAssembler::new(&mut small).push(&messages[0]),
            Err(AssemblyError::Size)
        );
        let mut buf = [0u8; 4];
        assert_eq!(encode(&messages[0], &mut buf), Err(ProtocolError::TooLong));
    }
}
