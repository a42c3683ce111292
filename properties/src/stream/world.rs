//! The brokers as the query sees them: the input topic, the query's offset
//! and commit logs, its state store, and the output topic with the
//! idempotent producer's sequence check (the rule of
//! `millrace_core::broker::producer_state`: a batch next in sequence is
//! stored, one of the last five is a duplicate, anything else is out of
//! order; a producer the partition has not seen may start anywhere).
//!
//! The offset and commit logs are compacted topics, as in the adapter:
//! records keyed per append, tombstones from purges, and a cleaner that
//! removes tombstoned records (and, after a retention, the tombstones)
//! from a prefix of the log at times the seed picks.

use std::collections::{BTreeMap, VecDeque};

use millrace_core::Millis;
use millrace_core::stream::{BatchId, Batched, CommitEntry, LogView, OffsetEntry, PartitionEnd, ProduceOutcome, SourceRange};

use super::logic::{InputRecord, OutputRecord};

pub(crate) const INPUT: &str = "events";

/// One record of a compacted log.
#[derive(Debug, Clone)]
pub(crate) struct Keyed<T> {
    pub offset: u64,
    pub key: String,
    /// `None`: a tombstone.
    pub value: Option<T>,
    /// When it was appended (tombstones are kept a retention after).
    pub at: Millis,
}

/// A compacted log of one partition, and every entry ever appended to it
/// (which the checker compares with what readers saw).
#[derive(Debug, Clone)]
pub(crate) struct KeyedLog<T> {
    pub records: Vec<Keyed<T>>,
    end: u64,
    pub appended: Vec<T>,
}

impl<T: Batched> KeyedLog<T> {
    fn new() -> KeyedLog<T> {
        KeyedLog { records: Vec::new(), end: 0, appended: Vec::new() }
    }

    pub fn append(&mut self, key: String, value: Option<T>, now: Millis) {
        if let Some(v) = &value {
            self.appended.push(v.clone());
        }
        self.records.push(Keyed { offset: self.end, key, value, at: now });
        self.end += 1;
    }

    pub fn end(&self) -> u64 {
        self.end
    }

    /// Feeds `view` the records from `cursor` to the end; the new cursor.
    pub fn read_into(&self, view: &mut LogView<T>, cursor: u64) -> u64 {
        for r in self.records.iter().filter(|r| r.offset >= cursor) {
            view.push(&r.key, r.value.clone());
        }
        self.end
    }

    /// A reader's view from the log start.
    pub fn view(&self, name: &str) -> LogView<T> {
        let mut v = LogView::new(name);
        self.read_into(&mut v, 0);
        v
    }

    /// The cleaner over offsets below `upto`, as Kafka's: per key, only
    /// the last record there is kept, and a tombstone only until it is
    /// older than `retention_ms`. (Keys unique per append leave nothing to
    /// remove but what tombstones delete.) Answers how many records it
    /// removed.
    pub fn compact(&mut self, upto: u64, now: Millis, retention_ms: Millis) -> usize {
        let mut last: BTreeMap<String, u64> = BTreeMap::new();
        for r in self.records.iter().filter(|r| r.offset < upto) {
            last.insert(r.key.clone(), r.offset);
        }
        let before = self.records.len();
        self.records.retain(|r| {
            r.offset >= upto || (last.get(&r.key) == Some(&r.offset) && (r.value.is_some() || r.at + retention_ms > now))
        });
        before - self.records.len()
    }
}

#[derive(Debug, Default)]
struct Sequences {
    next: Option<i32>,
    recent: VecDeque<(i32, usize)>,
}

#[derive(Debug)]
pub(crate) struct World<S> {
    pub input: Vec<Vec<InputRecord>>,
    pub offset_log: KeyedLog<OffsetEntry>,
    pub commit_log: KeyedLog<CommitEntry>,
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
            offset_log: KeyedLog::new(),
            commit_log: KeyedLog::new(),
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
