//! The Kafka v2 record batch header: parsing, validation and the two fields
//! a broker rewrites (base offset and partition leader epoch).
//!
//! Layout (big-endian), offsets in bytes:
//! ```text
//!  0 baseOffset i64        8 batchLength i32      12 partitionLeaderEpoch i32
//! 16 magic i8             17 crc u32             21 attributes i16
//! 23 lastOffsetDelta i32  27 baseTimestamp i64   35 maxTimestamp i64
//! 43 producerId i64       51 producerEpoch i16   53 baseSequence i32
//! 57 recordCount i32      61 records...
//! ```
//! The CRC-32C covers bytes 21.. (attributes to the end), so the broker may
//! rewrite the base offset and the leader epoch without recomputing it.

use super::{Compression, RecordError};

pub const HEADER_LEN: usize = 61;
/// Bytes before `batchLength` counts: baseOffset and batchLength itself.
pub const LOG_OVERHEAD: usize = 12;
pub const MAGIC_V2: i8 = 2;
const CRC_START: usize = 21;

/// The fixed-size header of a v2 batch, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    /// Length of the batch after the `batchLength` field.
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub record_count: i32,
}

fn be_i64(b: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}
fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes(b[at..at + 2].try_into().expect("2 bytes"))
}

impl BatchHeader {
    /// Total size of the batch in bytes, header included.
    pub fn total_len(&self) -> usize {
        LOG_OVERHEAD + self.batch_length as usize
    }

    pub fn last_offset(&self) -> i64 {
        self.base_offset + i64::from(self.last_offset_delta)
    }

    pub fn compression(&self) -> Result<Compression, RecordError> {
        Compression::from_attributes(self.attributes)
    }

    pub fn is_transactional(&self) -> bool {
        self.attributes & 0x10 != 0
    }

    pub fn is_control(&self) -> bool {
        self.attributes & 0x20 != 0
    }

    /// Whether every offset of the batch holds a record, as producers send
    /// them (compaction may leave gaps, or no records at all).
    pub fn is_dense(&self) -> bool {
        i64::from(self.record_count) == i64::from(self.last_offset_delta) + 1
    }

    /// Whether the batch carries an idempotent producer's identity.
    pub fn has_producer_id(&self) -> bool {
        self.producer_id >= 0
    }

    /// Sequence number of the last record, wrapping as Kafka does.
    pub fn last_sequence(&self) -> i32 {
        if self.base_sequence < 0 {
            return -1;
        }
        let last = i64::from(self.base_sequence) + i64::from(self.last_offset_delta);
        (last % (i64::from(i32::MAX) + 1)) as i32
    }

    /// Reads the header at the start of `bytes`. Checks only that enough
    /// bytes exist for the header and that the declared length is sane;
    /// [`validate_batch`] checks the rest.
    pub fn parse(bytes: &[u8]) -> Result<Self, RecordError> {
        if bytes.len() < HEADER_LEN {
            return Err(RecordError::Truncated);
        }
        let h = BatchHeader {
            base_offset: be_i64(bytes, 0),
            batch_length: be_i32(bytes, 8),
            partition_leader_epoch: be_i32(bytes, 12),
            magic: bytes[16] as i8,
            crc: u32::from_be_bytes(bytes[17..21].try_into().expect("4 bytes")),
            attributes: be_i16(bytes, 21),
            last_offset_delta: be_i32(bytes, 23),
            base_timestamp: be_i64(bytes, 27),
            max_timestamp: be_i64(bytes, 35),
            producer_id: be_i64(bytes, 43),
            producer_epoch: be_i16(bytes, 51),
            base_sequence: be_i32(bytes, 53),
            record_count: be_i32(bytes, 57),
        };
        if h.magic != MAGIC_V2 {
            return Err(RecordError::UnsupportedMagic(h.magic));
        }
        if (h.batch_length as i64) < (HEADER_LEN - LOG_OVERHEAD) as i64 {
            return Err(RecordError::BadLength(h.batch_length));
        }
        Ok(h)
    }
}

/// Parses and validates one whole batch: header, length, CRC-32C, and the
/// record count against the offset delta. Does not look inside compressed
/// records (see [`super::decode_records`] for that).
pub fn validate_batch(bytes: &[u8]) -> Result<BatchHeader, RecordError> {
    let h = BatchHeader::parse(bytes)?;
    if bytes.len() < h.total_len() {
        return Err(RecordError::Truncated);
    }
    let computed = crc32c::crc32c(&bytes[CRC_START..h.total_len()]);
    if computed != h.crc {
        return Err(RecordError::CrcMismatch { stored: h.crc, computed });
    }
    h.compression()?;
    if h.record_count < 0 || h.last_offset_delta < 0 {
        return Err(RecordError::BadRecordCount(h.record_count));
    }
    // Producers number records densely from delta 0 (the produce path
    // checks `is_dense`); compaction may leave fewer records than offsets,
    // down to none, but never more.
    if i64::from(h.record_count) > i64::from(h.last_offset_delta) + 1 {
        return Err(RecordError::BadRecordCount(h.record_count));
    }
    Ok(h)
}

/// Rewrites the base offset of a batch in place (not covered by the CRC).
pub fn set_base_offset(bytes: &mut [u8], base_offset: i64) {
    bytes[0..8].copy_from_slice(&base_offset.to_be_bytes());
}

/// Rewrites the partition leader epoch in place (not covered by the CRC).
pub fn set_partition_leader_epoch(bytes: &mut [u8], epoch: i32) {
    bytes[12..16].copy_from_slice(&epoch.to_be_bytes());
}

/// Splits a buffer of concatenated batches, validating each. Stops with an
/// error at the first invalid batch; `Ok` items before it are whole batches.
pub fn split_batches(bytes: &[u8]) -> impl Iterator<Item = Result<(BatchHeader, &[u8]), RecordError>> {
    let mut rest = bytes;
    let mut failed = false;
    std::iter::from_fn(move || {
        if rest.is_empty() || failed {
            return None;
        }
        match validate_batch(rest) {
            Ok(h) => {
                let (batch, tail) = rest.split_at(h.total_len());
                rest = tail;
                Some(Ok((h, batch)))
            }
            Err(e) => {
                failed = true;
                Some(Err(e))
            }
        }
    })
}
