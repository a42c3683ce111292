//! The Kafka wire protocol, through the `kafka-protocol` crate: frames in,
//! broker requests out; broker responses in, frames out. Everything
//! version-specific stays in this module.

pub mod group;
pub mod request;
pub mod response;
pub mod versions;

pub use request::{Decoded, FrameError, RequestMeta, decode};

/// Kafka's `socket.request.max.bytes` default: larger frames close the
/// connection without being read.
pub const MAX_FRAME_BYTES: usize = 100 * 1024 * 1024;
