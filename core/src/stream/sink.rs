//! Writing a batch's output to a topic exactly once.
//!
//! A batch's output is deterministic: the same input ranges and the same
//! previous state give the same records in the same order. The writer cuts
//! each output partition's records into chunks of fixed size, and numbers
//! them with the idempotent producer's sequence numbers, continuing from
//! where the previous batch's commit entry left each partition. A re-run of
//! the batch (after a crash, or by a second runner) therefore sends the very
//! same chunks with the very same sequence numbers, and the broker answers
//! each one already stored as a duplicate (it is one of the producer's last
//! five batches) or as out of order (older than that) instead of storing it
//! twice.
//!
//! Reading "out of order" as "already stored" is sound because this writer
//! has at most one chunk in flight per partition and sends a partition's
//! chunks in order, waiting for each to be acknowledged with acks=all: a
//! chunk can only be refused for being out of order because a later or
//! equal sequence is already in the log, never because an earlier chunk is
//! missing.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Millis;

/// One record batch of the output: records `first..first + count` of the
/// partition's records, with sequence numbers from `base_sequence`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkChunk {
    pub partition: i32,
    pub base_sequence: i32,
    pub first: usize,
    pub count: usize,
}

/// The sequence number `n` records after `seq` (Kafka wraps at i32::MAX).
pub fn advance_sequence(seq: i32, n: usize) -> i32 {
    ((i64::from(seq) + n as i64) % (i64::from(i32::MAX) + 1)) as i32
}

/// Cuts each partition's `count` records into chunks of at most
/// `max_records`, numbered from the partition's entry in `base` (0 for a
/// partition never written). Returns the chunks, in partition order, and
/// every partition's next sequence number after them (the partitions of
/// `base` included, unchanged when not written to).
pub fn plan_chunks(counts: &[(i32, usize)], base: &[(i32, i32)], max_records: usize) -> (Vec<SinkChunk>, Vec<(i32, i32)>) {
    let max_records = max_records.max(1);
    let mut next: BTreeMap<i32, i32> = base.iter().copied().collect();
    let mut chunks = Vec::new();
    let mut counts = counts.to_vec();
    counts.sort();
    for (partition, count) in counts {
        let seq = next.entry(partition).or_insert(0);
        let mut first = 0;
        while first < count {
            let n = max_records.min(count - first);
            chunks.push(SinkChunk { partition, base_sequence: *seq, first, count: n });
            *seq = advance_sequence(*seq, n);
            first += n;
        }
    }
    (chunks, next.into_iter().collect())
}

/// How the broker answered one chunk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProduceOutcome {
    Written,
    /// A retry of a batch the partition already holds.
    Duplicate,
    /// OUT_OF_ORDER_SEQUENCE_NUMBER: here, a chunk stored before and no
    /// longer among the five the broker remembers (see the module comment).
    OutOfOrderSequence,
    /// Not leader, timeout, broker unreachable, not enough replicas: try
    /// again after a backoff.
    Retriable(String),
    /// Unknown topic, fenced producer, record too large: the batch fails.
    Fatal(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkInput {
    Produced { chunk: usize, outcome: ProduceOutcome },
    Tick,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkEffect {
    /// Send chunk number `chunk` (an index into the planned chunks).
    Produce { chunk: usize },
    Timer { at: Millis },
    Done,
    Failed { reason: String },
}

const FIRST_BACKOFF_MS: Millis = 50;
const MAX_BACKOFF_MS: Millis = 2_000;

/// Sends a batch's chunks: each partition's in order, one in flight per
/// partition, partitions in parallel; retriable failures back off and
/// retry without limit (the batch is not done until its output is).
#[derive(Debug, Clone)]
pub struct SinkWriter {
    chunks: Vec<SinkChunk>,
    /// Per partition: its chunk indices, and how many are acknowledged.
    queues: BTreeMap<i32, (Vec<usize>, usize)>,
    in_flight: BTreeMap<i32, usize>,
    /// Partitions waiting to retry, with when and the backoff used.
    retry_at: BTreeMap<i32, (Millis, Millis)>,
    finished: bool,
    pub written: u64,
    pub skipped: u64,
}

impl SinkWriter {
    pub fn new(chunks: Vec<SinkChunk>) -> SinkWriter {
        let mut queues: BTreeMap<i32, (Vec<usize>, usize)> = BTreeMap::new();
        for (i, c) in chunks.iter().enumerate() {
            queues.entry(c.partition).or_default().0.push(i);
        }
        SinkWriter { chunks, queues, in_flight: BTreeMap::new(), retry_at: BTreeMap::new(), finished: false, written: 0, skipped: 0 }
    }

    pub fn chunks(&self) -> &[SinkChunk] {
        &self.chunks
    }

    pub fn is_finished(&self) -> bool {
        self.finished
    }

    pub fn start(&mut self, out: &mut Vec<SinkEffect>) {
        let partitions: Vec<i32> = self.queues.keys().copied().collect();
        for p in partitions {
            self.send_next(p, out);
        }
        self.check_done(out);
    }

    pub fn step(&mut self, now: Millis, input: SinkInput, out: &mut Vec<SinkEffect>) {
        if self.finished {
            return;
        }
        match input {
            SinkInput::Produced { chunk, outcome } => {
                let Some(c) = self.chunks.get(chunk) else { return };
                let p = c.partition;
                if self.in_flight.get(&p) != Some(&chunk) {
                    return; // a late answer to a chunk already settled
                }
                self.in_flight.remove(&p);
                match outcome {
                    ProduceOutcome::Written | ProduceOutcome::Duplicate | ProduceOutcome::OutOfOrderSequence => {
                        if outcome == ProduceOutcome::Written {
                            self.written += 1;
                        } else {
                            self.skipped += 1;
                        }
                        self.retry_at.remove(&p);
                        self.queues.get_mut(&p).expect("queued").1 += 1;
                        self.send_next(p, out);
                        self.check_done(out);
                    }
                    ProduceOutcome::Retriable(_) => {
                        let backoff = self.retry_at.get(&p).map_or(FIRST_BACKOFF_MS, |&(_, b)| (b * 2).min(MAX_BACKOFF_MS));
                        self.retry_at.insert(p, (now + backoff, backoff));
                        out.push(SinkEffect::Timer { at: now + backoff });
                    }
                    ProduceOutcome::Fatal(reason) => {
                        self.finished = true;
                        out.push(SinkEffect::Failed { reason: format!("writing to partition {p}: {reason}") });
                    }
                }
            }
            SinkInput::Tick => {
                let due: Vec<i32> = self
                    .retry_at
                    .iter()
                    .filter(|(p, (at, _))| *at <= now && !self.in_flight.contains_key(p))
                    .map(|(p, _)| *p)
                    .collect();
                for p in due {
                    self.send_next(p, out);
                }
            }
        }
    }

    fn send_next(&mut self, p: i32, out: &mut Vec<SinkEffect>) {
        let (queue, acked) = &self.queues[&p];
        if let Some(&chunk) = queue.get(*acked) {
            self.in_flight.insert(p, chunk);
            out.push(SinkEffect::Produce { chunk });
        }
    }

    fn check_done(&mut self, out: &mut Vec<SinkEffect>) {
        if !self.finished && self.queues.values().all(|(q, acked)| *acked == q.len()) {
            self.finished = true;
            out.push(SinkEffect::Done);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_continue_each_partition_s_sequence() {
        let (chunks, next) = plan_chunks(&[(1, 5), (0, 2)], &[(1, 10), (3, 7)], 2);
        assert_eq!(
            chunks.iter().map(|c| (c.partition, c.base_sequence, c.first, c.count)).collect::<Vec<_>>(),
            vec![(0, 0, 0, 2), (1, 10, 0, 2), (1, 12, 2, 2), (1, 14, 4, 1)]
        );
        assert_eq!(next, vec![(0, 2), (1, 15), (3, 7)]);
    }

    #[test]
    fn sequences_wrap_like_kafka_s() {
        assert_eq!(advance_sequence(i32::MAX, 1), 0);
        assert_eq!(advance_sequence(i32::MAX - 1, 3), 1);
    }

    #[test]
    fn in_order_one_in_flight_per_partition_and_retries_back_off() {
        let (chunks, _) = plan_chunks(&[(0, 4), (1, 1)], &[], 2);
        let mut w = SinkWriter::new(chunks);
        let mut out = vec![];
        w.start(&mut out);
        assert_eq!(out, vec![SinkEffect::Produce { chunk: 0 }, SinkEffect::Produce { chunk: 2 }]);
        out.clear();
        w.step(0, SinkInput::Produced { chunk: 0, outcome: ProduceOutcome::Retriable("not leader".into()) }, &mut out);
        assert_eq!(out, vec![SinkEffect::Timer { at: FIRST_BACKOFF_MS }]);
        out.clear();
        w.step(10, SinkInput::Tick, &mut out);
        assert!(out.is_empty(), "not before the backoff");
        w.step(FIRST_BACKOFF_MS, SinkInput::Tick, &mut out);
        assert_eq!(out, vec![SinkEffect::Produce { chunk: 0 }]);
        out.clear();
        w.step(60, SinkInput::Produced { chunk: 0, outcome: ProduceOutcome::OutOfOrderSequence }, &mut out);
        assert_eq!(out, vec![SinkEffect::Produce { chunk: 1 }]);
        out.clear();
        w.step(61, SinkInput::Produced { chunk: 2, outcome: ProduceOutcome::Written }, &mut out);
        w.step(62, SinkInput::Produced { chunk: 1, outcome: ProduceOutcome::Duplicate }, &mut out);
        assert_eq!(out, vec![SinkEffect::Done]);
        assert_eq!((w.written, w.skipped), (1, 2));
    }

    #[test]
    fn a_fatal_answer_fails_the_batch_and_nothing_is_output_is_done_at_once() {
        let (chunks, _) = plan_chunks(&[(0, 1)], &[], 2);
        let mut w = SinkWriter::new(chunks);
        let mut out = vec![];
        w.start(&mut out);
        out.clear();
        w.step(0, SinkInput::Produced { chunk: 0, outcome: ProduceOutcome::Fatal("unknown topic".into()) }, &mut out);
        assert!(matches!(&out[..], [SinkEffect::Failed { reason }] if reason.contains("unknown topic")));
        let mut empty = SinkWriter::new(vec![]);
        let mut out = vec![];
        empty.start(&mut out);
        assert_eq!(out, vec![SinkEffect::Done]);
    }
}
