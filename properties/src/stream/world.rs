//! The brokers as the query sees them: the input topic, the query's offset
//! and commit logs, its state store, and the output topic with the
//! idempotent producer's sequence check (the rule of
//! `millrace_core::broker::producer_state`: a batch next in sequence is
//! stored, one of the last five is a duplicate, anything else is out of
//! order; a producer the partition has not seen may start anywhere).

use std::collections::{BTreeMap, VecDeque};

use millrace_core::stream::{BatchId, CommitEntry, OffsetEntry, PartitionEnd, ProduceOutcome, SourceRange};

use super::logic::{InputRecord, OutputRecord};

pub(crate) const INPUT: &str = "events";

#[derive(Debug, Default)]
struct Sequences {
    next: Option<i32>,
    recent: VecDeque<(i32, usize)>,
}

#[derive(Debug)]
pub(crate) struct World<S> {
    pub input: Vec<Vec<InputRecord>>,
    pub offset_log: Vec<OffsetEntry>,
    pub commit_log: Vec<CommitEntry>,
    /// State versions as stored (the first store of a version is kept;
    /// later stores of it must be identical).
    pub states: BTreeMap<BatchId, S>,
    pub output: Vec<Vec<OutputRecord>>,
    sequences: Vec<Sequences>,
}

impl<S> World<S> {
    pub fn new(partitions: usize, out_partitions: usize) -> World<S> {
        World {
            input: vec![Vec::new(); partitions],
            offset_log: Vec::new(),
            commit_log: Vec::new(),
            states: BTreeMap::new(),
            output: vec![Vec::new(); out_partitions],
            sequences: (0..out_partitions).map(|_| Sequences::default()).collect(),
        }
    }

    pub fn ends(&self) -> Vec<PartitionEnd> {
        self.input
            .iter()
            .enumerate()
            .map(|(p, recs)| PartitionEnd { topic: INPUT.into(), partition: p as i32, log_start: 0, high_watermark: recs.len() as i64 })
            .collect()
    }

    /// The records of `ranges`, partition by partition in offset order.
    pub fn read(&self, ranges: &[SourceRange]) -> Vec<InputRecord> {
        let mut out = Vec::new();
        for r in ranges {
            let recs = &self.input[r.partition as usize];
            out.extend_from_slice(&recs[r.start as usize..(r.end as usize).min(recs.len())]);
        }
        out
    }

    /// Appends and returns the entry the log holds first for that batch.
    pub fn log_offsets(&mut self, entry: OffsetEntry) -> OffsetEntry {
        let batch = entry.batch;
        self.offset_log.push(entry);
        self.offset_log.iter().find(|e| e.batch == batch).expect("just appended").clone()
    }

    pub fn produce(&mut self, partition: i32, base_sequence: i32, records: &[OutputRecord]) -> ProduceOutcome {
        let seqs = &mut self.sequences[partition as usize];
        if seqs.recent.contains(&(base_sequence, records.len())) {
            return ProduceOutcome::Duplicate;
        }
        if seqs.next.is_some_and(|n| n != base_sequence) {
            return ProduceOutcome::OutOfOrderSequence;
        }
        self.output[partition as usize].extend_from_slice(records);
        seqs.next = Some(millrace_core::stream::advance_sequence(base_sequence, records.len()));
        seqs.recent.push_back((base_sequence, records.len()));
        if seqs.recent.len() > 5 {
            seqs.recent.pop_front();
        }
        ProduceOutcome::Written
    }
}
