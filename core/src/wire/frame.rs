//! Frames: a 2-byte big-endian body length followed by a postcard body.
//!
//! ```text
//! +--------+--------+---------------------------------+
//! | len (u16, BE)   | body: postcard(Message), len B  |
//! +--------+--------+---------------------------------+
//! 1 <= len <= MAX_BODY_LEN (4094); a whole frame is at most MAX_FRAME_LEN (4096)
//! ```
//!
//! Why a `u16` prefix: the largest frame is 4 KiB (the edge node's receive
//! buffers are ~4.5 KiB), so two bytes cover every legal length while
//! costing half of a `u32` on every small `StreamData`/`WindowUpdate`; a
//! protocol version that needed bigger frames would change the format
//! anyway. The prefix is checked against [`MAX_BODY_LEN`] (and the caller's
//! buffer) before a single body byte is read.
//!
//! Decoding contract (smoltcp style): [`parse_frame`] and [`FrameDecoder`]
//! never panic and never allocate, whatever the input. A body must decode
//! to exactly one [`Message`] using every byte (no trailing bytes), in its
//! canonical encoding (no over-long varints, so a decoded frame re-encodes
//! to the same bytes), and pass [`Message::validate`].

use core::fmt;

use super::PROTOCOL_VERSION;
use super::message::{HELLO_TAG, Invalid, Message};

/// Bytes of the length prefix.
pub const HEADER_LEN: usize = 2;
/// Largest frame, header included.
pub const MAX_FRAME_LEN: usize = 4096;
/// Largest body (the value of the length prefix).
pub const MAX_BODY_LEN: usize = MAX_FRAME_LEN - HEADER_LEN;

/// Why bytes did not decode to a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum DecodeError {
    /// The length prefix exceeds [`MAX_BODY_LEN`] or the decoder's buffer.
    FrameTooLarge {
        /// The announced body length.
        len: usize,
    },
    /// The length prefix is zero.
    EmptyFrame,
    /// The body ended in the middle of a message.
    Truncated,
    /// The body holds bytes after the message.
    TrailingBytes,
    /// The body is not a valid encoding (bad variant, varint, UTF-8, bool,
    /// option tag, or a list longer than its capacity).
    Malformed,
    /// The body decodes but not in its canonical (shortest) encoding.
    NonCanonical,
    /// A `Hello` announces a protocol version this code does not speak.
    UnsupportedVersion(u16),
    /// The message breaks a protocol limit.
    Invalid(Invalid),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::FrameTooLarge { len } => {
                write!(f, "frame body of {len} bytes exceeds the limit")
            }
            DecodeError::EmptyFrame => f.write_str("empty frame"),
            DecodeError::Truncated => f.write_str("frame body ends inside a message"),
            DecodeError::TrailingBytes => f.write_str("trailing bytes after the message"),
            DecodeError::Malformed => f.write_str("malformed message encoding"),
            DecodeError::NonCanonical => f.write_str("non-canonical message encoding"),
            DecodeError::UnsupportedVersion(v) => {
                write!(
                    f,
                    "unsupported protocol version {v} (this side speaks {PROTOCOL_VERSION})"
                )
            }
            DecodeError::Invalid(i) => write!(f, "invalid message: {i}"),
        }
    }
}

impl From<Invalid> for DecodeError {
    fn from(i: Invalid) -> Self {
        DecodeError::Invalid(i)
    }
}

/// Why a message could not be encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum EncodeError {
    /// The output buffer cannot hold the frame.
    BufferTooSmall {
        /// Bytes the frame needs.
        needed: usize,
    },
    /// The body would exceed [`MAX_BODY_LEN`].
    FrameTooLarge {
        /// The body length it would have.
        len: usize,
    },
    /// The message breaks a protocol limit; the peer would reject it.
    Invalid(Invalid),
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::BufferTooSmall { needed } => {
                write!(f, "output buffer too small: frame needs {needed} bytes")
            }
            EncodeError::FrameTooLarge { len } => {
                write!(f, "message body of {len} bytes exceeds MAX_BODY_LEN")
            }
            EncodeError::Invalid(i) => write!(f, "refusing to encode invalid message: {i}"),
        }
    }
}

/// The number of bytes `msg`'s body takes (without the header).
pub fn body_len(msg: &Message<'_>) -> usize {
    // The size flavour only counts bytes; it cannot fail for our types,
    // and a failure would be reported as oversized by the callers.
    postcard::serialize_with_flavor(msg, postcard::ser_flavors::Size::default())
        .unwrap_or(usize::MAX)
}

/// Encodes `msg` as one frame at the start of `out`; returns its length.
pub fn encode_frame(msg: &Message<'_>, out: &mut [u8]) -> Result<usize, EncodeError> {
    msg.validate().map_err(EncodeError::Invalid)?;
    let len = body_len(msg);
    if len > MAX_BODY_LEN {
        return Err(EncodeError::FrameTooLarge { len });
    }
    let needed = HEADER_LEN + len;
    let (header, body) = match out.get_mut(..needed) {
        Some(frame) => frame.split_at_mut(HEADER_LEN),
        None => return Err(EncodeError::BufferTooSmall { needed }),
    };
    // `len <= MAX_BODY_LEN < u16::MAX`, so the conversion cannot fail.
    let prefix = u16::try_from(len).map_err(|_| EncodeError::FrameTooLarge { len })?;
    header.copy_from_slice(&prefix.to_be_bytes());
    postcard::to_slice(msg, body).map_err(|_| EncodeError::BufferTooSmall { needed })?;
    Ok(needed)
}

/// Decodes one frame body (without its header).
pub fn decode_body(body: &[u8]) -> Result<Message<'_>, DecodeError> {
    if body.is_empty() {
        return Err(DecodeError::EmptyFrame);
    }
    // A hello from another protocol version may not decode at all, so its
    // version (the varint after the variant tag) is read on its own first.
    if body.first() == Some(&HELLO_TAG)
        && let Ok((version, _)) = postcard::take_from_bytes::<u16>(body.get(1..).unwrap_or(&[]))
        && version != PROTOCOL_VERSION
    {
        return Err(DecodeError::UnsupportedVersion(version));
    }
    let (msg, rest) = postcard::take_from_bytes::<Message<'_>>(body).map_err(map_postcard)?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes);
    }
    // Every postcard value has one shortest encoding and the only other
    // encodings accepted are longer (over-long varints), so equal length
    // means the bytes are exactly the canonical encoding.
    if body_len(&msg) != body.len() {
        return Err(DecodeError::NonCanonical);
    }
    msg.validate()?;
    Ok(msg)
}

fn map_postcard(e: postcard::Error) -> DecodeError {
    match e {
        postcard::Error::DeserializeUnexpectedEnd => DecodeError::Truncated,
        _ => DecodeError::Malformed,
    }
}

/// Reads the length prefix at the start of `input`, if complete, and checks
/// it against `limit` (at most [`MAX_BODY_LEN`]).
fn read_header(input: &[u8], limit: usize) -> Result<Option<usize>, DecodeError> {
    let Some(&[hi, lo]) = input.first_chunk::<HEADER_LEN>() else {
        return Ok(None);
    };
    let len = usize::from(u16::from_be_bytes([hi, lo]));
    if len == 0 {
        return Err(DecodeError::EmptyFrame);
    }
    if len > limit.min(MAX_BODY_LEN) {
        return Err(DecodeError::FrameTooLarge { len });
    }
    Ok(Some(len))
}

/// Decodes the frame at the start of `input`.
///
/// Returns `Ok(None)` when `input` holds only part of a frame (read more),
/// otherwise the message and the number of bytes the frame used. An
/// oversized or zero length prefix is an error as soon as the two header
/// bytes are present.
pub fn parse_frame(input: &[u8]) -> Result<Option<(Message<'_>, usize)>, DecodeError> {
    let Some(len) = read_header(input, MAX_BODY_LEN)? else {
        return Ok(None);
    };
    let Some(body) = input.get(HEADER_LEN..HEADER_LEN + len) else {
        return Ok(None);
    };
    Ok(Some((decode_body(body)?, HEADER_LEN + len)))
}

/// Incremental frame decoder over a caller-owned buffer.
///
/// Feed bytes in with [`feed`](Self::feed) (or read straight into
/// [`spare`](Self::spare) and [`commit`](Self::commit)), then take frames
/// out with [`next_frame`](Self::next_frame) until it returns `Ok(None)`.
/// A buffer of [`MAX_FRAME_LEN`] bytes accepts every legal frame; a smaller
/// one rejects frames that do not fit with [`DecodeError::FrameTooLarge`].
///
/// Any error is fatal: the byte stream can no longer be trusted to be in
/// sync, so the decoder keeps returning the same error (fail closed).
#[derive(Debug)]
pub struct FrameDecoder<'b> {
    buf: &'b mut [u8],
    /// Start of unconsumed bytes.
    start: usize,
    /// End of received bytes.
    end: usize,
    failed: Option<DecodeError>,
}

impl<'b> FrameDecoder<'b> {
    /// A decoder that keeps partial frames in `buf`.
    pub fn new(buf: &'b mut [u8]) -> Self {
        FrameDecoder {
            buf,
            start: 0,
            end: 0,
            failed: None,
        }
    }

    /// Moves unconsumed bytes to the front so `spare` is as large as it can be.
    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
    }

    /// Free space to read into; follow with [`commit`](Self::commit).
    pub fn spare(&mut self) -> &mut [u8] {
        self.compact();
        self.buf.get_mut(self.end..).unwrap_or(&mut [])
    }

    /// Marks `n` bytes written into [`spare`](Self::spare) as received
    /// (clamped to the spare space).
    pub fn commit(&mut self, n: usize) {
        self.end = self.end.saturating_add(n).min(self.buf.len());
    }

    /// Copies as much of `data` as fits; returns how many bytes were taken.
    /// Take frames out and feed the rest again when it returns less than
    /// `data.len()`.
    pub fn feed(&mut self, data: &[u8]) -> usize {
        let spare = self.spare();
        let n = spare.len().min(data.len());
        if let (Some(dst), Some(src)) = (spare.get_mut(..n), data.get(..n)) {
            dst.copy_from_slice(src);
        }
        self.commit(n);
        n
    }

    /// Bytes received but not yet taken out as frames.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Message<'_>>, DecodeError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let pending = self.buf.get(self.start..self.end).unwrap_or(&[]);
        let limit = self.buf.len().saturating_sub(HEADER_LEN);
        let len = match read_header(pending, limit) {
            Ok(Some(len)) => len,
            Ok(None) => return Ok(None),
            Err(e) => {
                self.failed = Some(e);
                return Err(e);
            }
        };
        if pending.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let body_start = self.start + HEADER_LEN;
        self.start = body_start + len;
        let body = self.buf.get(body_start..self.start).unwrap_or(&[]);
        match decode_body(body) {
            Ok(msg) => Ok(Some(msg)),
            Err(e) => {
                self.failed = Some(e);
                Err(e)
            }
        }
    }
}
