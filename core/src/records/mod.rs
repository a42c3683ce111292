//! Kafka record batches, format v2 (magic 2): what producers send, what the
//! log stores byte for byte, and what consumers receive.

mod batch;
mod builder;
mod compression;
mod raw;
mod record;
pub mod varint;

pub use batch::{
    BatchHeader, HEADER_LEN, LOG_OVERHEAD, MAGIC_V2, set_base_offset, set_partition_leader_epoch,
    split_batches, validate_batch,
};
pub use builder::{BatchBuilder, ProducerStamp};
pub use compression::Compression;
pub use raw::{BatchRecords, RawIter, RawRecord, empty_batch, encode_batch, rebuild_batch};
pub use record::{Header, Record, check_records, check_records_keyed, decode_records};

/// Why bytes are not a valid record batch. Every decoder in this module
/// returns one of these rather than panicking on hostile input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("record data is truncated")]
    Truncated,
    #[error("varint is longer than its type allows")]
    VarintTooLong,
    #[error("negative length {0}")]
    NegativeLength(i32),
    #[error("unsupported record batch magic {0} (only v2 is accepted)")]
    UnsupportedMagic(i8),
    #[error("batch length {0} is smaller than a batch header")]
    BadLength(i32),
    #[error("CRC-32C mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },
    #[error("unknown compression codec {0}")]
    UnknownCodec(i16),
    #[error("batch base offset {found} where {expected} was expected")]
    BadBaseOffset { found: i64, expected: i64 },
    #[error("record count {0} does not match the batch's offsets")]
    BadRecordCount(i32),
    #[error("record {index} is malformed: {reason}")]
    BadRecord { index: usize, reason: &'static str },
    #[error("{codec} decompression failed: {reason}")]
    Decompression { codec: &'static str, reason: String },
    #[error("decompressed batch exceeds {limit} bytes")]
    DecompressedTooLarge { limit: usize },
    #[error("record {index} has no key; a compacted topic keeps records by key")]
    MissingKey { index: usize },
}
