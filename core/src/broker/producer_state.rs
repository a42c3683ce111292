//! Idempotent-producer bookkeeping for one partition (Kafka's
//! ProducerStateManager, reduced to what idempotence needs).
//!
//! Per producer id it keeps the epoch and the last few batches' sequence
//! ranges with their offsets, so a retried batch is recognised and answered
//! with its original offset instead of being stored twice. The state is
//! rebuilt from the log's batch headers on open, so it survives restarts.

use std::collections::{BTreeMap, VecDeque};

use crate::ErrorCode;
use crate::records::BatchHeader;

/// How many recent batches per producer are remembered for deduplication:
/// Kafka allows 5 in-flight requests per idempotent connection.
pub const CACHED_BATCHES: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BatchSeq {
    first_seq: i32,
    last_seq: i32,
    base_offset: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ProducerEntry {
    epoch: i16,
    batches: VecDeque<BatchSeq>,
}

/// The verdict on an incoming batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SequenceCheck {
    /// Not idempotent, or next in sequence: append it.
    Append,
    /// A retry of a batch already stored at this base offset.
    Duplicate { base_offset: i64 },
    Reject(ErrorCode),
}

#[derive(Debug, Clone, Default)]
pub struct ProducerStates {
    producers: BTreeMap<i64, ProducerEntry>,
}

fn next_seq(seq: i32) -> i32 {
    if seq == i32::MAX { 0 } else { seq + 1 }
}

impl ProducerStates {
    pub fn check(&self, h: &BatchHeader) -> SequenceCheck {
        if !h.has_producer_id() {
            return SequenceCheck::Append;
        }
        let Some(entry) = self.producers.get(&h.producer_id) else {
            // Unknown producer (first write, or state older than the log):
            // Kafka accepts any starting sequence here.
            return SequenceCheck::Append;
        };
        if h.producer_epoch < entry.epoch {
            return SequenceCheck::Reject(ErrorCode::InvalidProducerEpoch);
        }
        if h.producer_epoch > entry.epoch {
            // A bumped epoch restarts its sequences at 0.
            return if h.base_sequence == 0 {
                SequenceCheck::Append
            } else {
                SequenceCheck::Reject(ErrorCode::OutOfOrderSequenceNumber)
            };
        }
        if let Some(dup) =
            entry.batches.iter().find(|b| b.first_seq == h.base_sequence && b.last_seq == h.last_sequence())
        {
            return SequenceCheck::Duplicate { base_offset: dup.base_offset };
        }
        match entry.batches.back() {
            Some(last) if h.base_sequence != next_seq(last.last_seq) => {
                SequenceCheck::Reject(ErrorCode::OutOfOrderSequenceNumber)
            }
            _ => SequenceCheck::Append,
        }
    }

    /// Records a batch that was appended (or found in the log on recovery);
    /// `h` carries its assigned base offset.
    pub fn record(&mut self, h: &BatchHeader) {
        if !h.has_producer_id() {
            return;
        }
        let entry = self
            .producers
            .entry(h.producer_id)
            .or_insert_with(|| ProducerEntry { epoch: h.producer_epoch, batches: VecDeque::new() });
        if h.producer_epoch != entry.epoch {
            entry.epoch = h.producer_epoch;
            entry.batches.clear();
        }
        entry.batches.push_back(BatchSeq {
            first_seq: h.base_sequence,
            last_seq: h.last_sequence(),
            base_offset: h.base_offset,
        });
        while entry.batches.len() > CACHED_BATCHES {
            entry.batches.pop_front();
        }
    }

    /// Whether `h` is one of the batches remembered for its producer. The
    /// log cleaner keeps such a batch's identity even when it removes all
    /// its records, so a restart rebuilds the same state from the log.
    pub fn remembers(&self, h: &BatchHeader) -> bool {
        h.has_producer_id()
            && self.producers.get(&h.producer_id).is_some_and(|e| {
                e.epoch == h.producer_epoch && e.batches.iter().any(|b| b.base_offset == h.base_offset)
            })
    }

    pub fn len(&self) -> usize {
        self.producers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }
}
