//! What happened in a simulation run, in simulated time: client operations
//! with their outcomes, what readers saw, and the faults applied. Checkers
//! judge it; its digest proves that a seed replays byte for byte.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

/// Identifies a produce operation: (client, sequence of the client's ops).
pub type OpId = (u32, u64);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// A producer starts writing `values` (unique strings) to a partition.
    Invoke { node: usize, op: OpId, partition: i32, values: Vec<String> },
    /// Acknowledged at `base_offset` (values at consecutive offsets).
    Ok { op: OpId, base_offset: i64 },
    /// Acknowledged with acks=1 by a replicated cluster's leader: written
    /// there, promised nowhere else, so a leader change may take it back.
    WeakOk { op: OpId, base_offset: i64 },
    /// Definitely not written (the broker refused it).
    Fail { op: OpId, error: String },
    /// Outcome unknown at the end of the run.
    Unknown { op: OpId },
    /// A reader saw these (offset, value) records on a partition.
    Read { node: usize, reader: u32, partition: i32, records: Vec<(i64, String)> },
    /// A fetch returned a batch that failed its checksum on the client.
    CorruptFetch { node: usize, partition: i32, offset: i64, error: String },
    /// The final read after healing: everything below the high watermark.
    Final { node: usize, partition: i32, high_watermark: i64, records: Vec<(i64, String)> },
    /// The final read did not succeed within its time bound.
    FinalFailed { node: usize, partition: i32, error: String },
    /// A group consumer joined generation `generation` and owns these
    /// partitions, resuming at these positions (committed, or reset).
    /// `join_started_ms`: when it began joining.
    GroupAssigned {
        node: usize,
        consumer: u32,
        member: String,
        /// `group.instance.id` of a static member.
        instance: Option<String>,
        generation: i32,
        partitions: Vec<i32>,
        positions: Vec<(i32, i64)>,
        join_started_ms: u64,
    },
    /// An offset commit sent at `invoked_ms` was acknowledged.
    GroupCommitted { node: usize, invoked_ms: u64, consumer: u32, member: String, generation: i32, offsets: Vec<(i32, i64)> },
    /// An observer's OffsetFetch, sent at `invoked_ms`, saw these offsets.
    GroupObserved { node: usize, invoked_ms: u64, committed: Vec<(i32, i64)> },
    /// The group's committed offsets after every consumer stopped.
    GroupFinal { node: usize, committed: Vec<(i32, i64)> },
    GroupFinalFailed { node: usize, error: String },
    Fault { description: String },
    /// The faults are over; from here the cluster must converge.
    Healed,
    /// Replicated cluster, after the run: what node `node`'s replica of a
    /// partition holds, record by record, with each batch's leader epoch.
    ReplicaLog { node: usize, partition: i32, records: Vec<(i64, i32, String)> },
    /// Replicated cluster, after the run: node `node`'s metadata (Raft)
    /// log, entry by entry from index 1: (term, records).
    MetadataLog { node: usize, entries: Vec<(u64, Vec<millrace_core::controller::MetadataRecord>)> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub at_ms: u64,
    pub kind: EventKind,
}

/// A shared, append-only history.
#[derive(Debug, Clone, Default)]
pub struct History(Arc<Mutex<Vec<Event>>>);

impl History {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn record(&self, at_ms: u64, kind: EventKind) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(Event { at_ms, kind });
    }

    pub fn events(&self) -> Vec<Event> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// One line per event, stable across runs and machines.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for e in self.events() {
            let _ = writeln!(out, "{:>8} {:?}", e.at_ms, e.kind);
        }
        out
    }

    /// FNV-1a of the text form: equal digests, equal histories.
    pub fn digest(&self) -> u64 {
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        for b in self.to_text().bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h
    }
}
