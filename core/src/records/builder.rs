//! Building v2 batches: what Millrace's own client and the tests produce.

use super::raw::encode_batch;
use super::record::encode_one;
use super::{BatchHeader, Compression, MAGIC_V2, Record};

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
        let count = self.records.len() as i32;
        let header = BatchHeader {
            base_offset: 0,
            batch_length: 0,
            partition_leader_epoch: -1,
            magic: MAGIC_V2,
            crc: 0,
            attributes: self.compression.attribute_bits(),
            last_offset_delta: self.records.len().saturating_sub(1) as i32,
            base_timestamp,
            max_timestamp,
            producer_id: self.producer.producer_id,
            producer_epoch: self.producer.producer_epoch,
            base_sequence: self.producer.base_sequence,
            record_count: count,
        };
        encode_batch(&header, count, &body)
    }
}
