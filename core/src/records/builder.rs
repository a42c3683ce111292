//! Building v2 batches: what Millrace's own client and the tests produce.

use super::record::encode_one;
use super::{Compression, HEADER_LEN, LOG_OVERHEAD, MAGIC_V2, Record};

/// Identity of an idempotent producer stamped on a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerStamp {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
}

impl ProducerStamp {
    pub const NONE: ProducerStamp = ProducerStamp { producer_id: -1, producer_epoch: -1, base_sequence: -1 };
}

#[derive(Debug, Clone)]
pub struct BatchBuilder {
    pub compression: Compression,
    pub producer: ProducerStamp,
    records: Vec<Record>,
}

impl BatchBuilder {
    pub fn new(compression: Compression) -> Self {
        Self { compression, producer: ProducerStamp::NONE, records: Vec::new() }
    }

    pub fn idempotent(mut self, producer_id: i64, producer_epoch: i16, base_sequence: i32) -> Self {
        self.producer = ProducerStamp { producer_id, producer_epoch, base_sequence };
        self
    }

    /// Adds a record; its `offset` field is ignored (offsets are dense).
    pub fn push(&mut self, record: Record) {
        self.records.push(record);
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Encodes the batch with base offset 0; the broker assigns the real one.
    pub fn build(&self) -> Vec<u8> {
        let base_timestamp = self.records.iter().map(|r| r.timestamp).min().unwrap_or(0);
        let max_timestamp = self.records.iter().map(|r| r.timestamp).max().unwrap_or(0);
        let mut plain = Vec::new();
        for (i, r) in self.records.iter().enumerate() {
            encode_one(&mut plain, i as i32, r.timestamp - base_timestamp, r);
        }
        let body = self.compression.compress(&plain);
        let mut out = Vec::with_capacity(HEADER_LEN + body.len());
        out.extend_from_slice(&0i64.to_be_bytes());
        let batch_length = (HEADER_LEN - LOG_OVERHEAD + body.len()) as i32;
        out.extend_from_slice(&batch_length.to_be_bytes());
        out.extend_from_slice(&(-1i32).to_be_bytes()); // partition leader epoch
        out.push(MAGIC_V2 as u8);
        out.extend_from_slice(&[0; 4]); // CRC, filled below
        out.extend_from_slice(&self.compression.attribute_bits().to_be_bytes());
        let last_delta = self.records.len().saturating_sub(1) as i32;
        out.extend_from_slice(&last_delta.to_be_bytes());
        out.extend_from_slice(&base_timestamp.to_be_bytes());
        out.extend_from_slice(&max_timestamp.to_be_bytes());
        out.extend_from_slice(&self.producer.producer_id.to_be_bytes());
        out.extend_from_slice(&self.producer.producer_epoch.to_be_bytes());
        out.extend_from_slice(&self.producer.base_sequence.to_be_bytes());
        out.extend_from_slice(&(self.records.len() as i32).to_be_bytes());
        out.extend_from_slice(&body);
        let crc = crc32c::crc32c(&out[21..]);
        out[17..21].copy_from_slice(&crc.to_be_bytes());
        out
    }
}
