//! The gateway ↔ edge-node protocol.
//!
//! This module owns the wire format of the tunnel between the meshgate
//! gateway and an edge node, and the bookkeeping both ends share:
//!
//! - [`message`]: the versioned message set ([`Message`]) as borrowed,
//!   zero-copy types, and their protocol limits ([`Message::validate`]).
//! - [`frame`]: length-prefixed frames (`u16` big-endian length, postcard
//!   body, at most [`MAX_FRAME_LEN`] bytes), [`encode_frame`],
//!   [`parse_frame`] and the incremental [`FrameDecoder`].
//! - [`session`]: a sans-IO state machine for one tunnel: hello exchange,
//!   multiplexed streams with credit-based flow control, stream-id rules,
//!   concurrency limits, heartbeats and idle timeouts.
//! - [`list`]: [`BoundedList`], the fixed-capacity list used by repeated
//!   fields.
//!
//! # Contract
//! Decoding any byte sequence returns a message or a [`DecodeError`]; it
//! never panics and never allocates (there is no allocator in this module).
//! The session never panics on anything a peer sends; a peer that breaks a
//! rule gets an `Error` frame and the tunnel closes. Wire types are not
//! domain types: convert with the `TryFrom` impls (for example a
//! [`Certificate`] into a [`crate::rotation::Validity`]).

pub mod frame;
pub mod list;
pub mod message;
pub mod session;

pub use frame::{
    DecodeError, EncodeError, FrameDecoder, HEADER_LEN, MAX_BODY_LEN, MAX_FRAME_LEN, body_len,
    decode_body, encode_frame, parse_frame,
};
pub use list::{BoundedList, CapacityError};
pub use message::*;
pub use session::{Event, Instant, Sent, Session, SessionConfig, SessionError, StreamError};

/// The protocol version this code speaks (sent in [`Hello::version`]).
pub const PROTOCOL_VERSION: u16 = 1;
