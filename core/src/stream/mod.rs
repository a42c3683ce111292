//! Stream queries (DESIGN.md §4, invariant 7): the micro-batch coordinator
//! of a query, and the exactly-once writer of its output to a topic.
//!
//! Like the batch driver, this is generic over the work. The coordinator
//! ([`StreamQuery`]) knows offsets, batch ids, watermarks and two durable
//! logs; what a batch computes (the plan, the state it folds, the records it
//! writes) belongs to the engine and the adapter that runs it. One batch's
//! life:
//!
//! 1. plan: list the input partitions' high watermarks, fix each
//!    partition's range `[end of the previous batch, high watermark)` and
//!    the batch's event-time watermark; for a query that joins tables
//!    (compacted topics read as the latest record per key), fix each table
//!    partition's snapshot `[log start, high watermark)`;
//! 2. append that [`OffsetEntry`] to the query's offset log (the first entry
//!    for a batch id in the log wins, so two runners of one query agree);
//! 3. run the batch: the adapter computes its output from exactly those
//!    ranges and the state left by the previous batch, stores the new state
//!    as version `batch`, and writes the output records through a
//!    [`SinkWriter`] with sequence numbers that continue the previous
//!    batch's, so a re-run writes byte-identical chunks that the broker's
//!    idempotent-producer check drops;
//! 4. append the [`CommitEntry`] to the commit log.
//!
//! A restarted query reads both logs: a batch logged but not committed is
//! run again with its logged ranges and watermark (never re-planned), so
//! every input record is in exactly one batch and affects the output once.
//! The book chapter "Stream queries" has the diagram and "Exactly once" the
//! argument.

mod log_view;
mod logs;
mod planner;
mod query;
mod sink;
mod trigger;

use serde::{Deserialize, Serialize};

use crate::Millis;

pub use log_view::{Appended, Batched, LogView, entry_key, is_query_key, purge_point};
pub use logs::{Recovery, recover};
pub use planner::{PartitionEnd, plan_ranges};
pub use query::{BatchProgress, QueryConfig, QueryEffect, QueryInput, QueryStatus, StartAt, StreamQuery};
pub use sink::{ProduceOutcome, SinkChunk, SinkEffect, SinkInput, SinkWriter, advance_sequence, plan_chunks};
pub use trigger::Trigger;

/// A micro-batch's number, from 0, dense.
pub type BatchId = u64;

/// One input partition's records in a batch: offsets `start..end`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SourceRange {
    pub topic: String,
    pub partition: i32,
    pub start: i64,
    pub end: i64,
}

impl SourceRange {
    pub fn len(&self) -> u64 {
        (self.end - self.start).max(0) as u64
    }
    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }
}

/// What the offset log holds for a batch, written before it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetEntry {
    pub batch: BatchId,
    /// Every input partition, ordered by (topic, partition).
    pub ranges: Vec<SourceRange>,
    /// The snapshot of the tables the batch joins: every partition of each
    /// table topic, ordered by (topic, partition), from its log start to
    /// its high watermark when the batch was planned. A re-run reads the
    /// same records, so it joins the same table. Empty for a query without
    /// tables (and in entries written before tables existed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tables: Vec<SourceRange>,
    /// Rows with an event time below this are late and dropped; windows
    /// that end at or before it are final. `None` before any event time.
    pub watermark: Option<i64>,
    /// When the batch was planned (for progress reports only).
    pub planned_at: Millis,
}

impl OffsetEntry {
    pub fn input_records(&self) -> u64 {
        self.ranges.iter().map(SourceRange::len).sum()
    }
}

/// What the commit log holds for a batch, written after its output and
/// state are durable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitEntry {
    pub batch: BatchId,
    /// The largest event time seen in this batch or any before it.
    pub max_event_time: Option<i64>,
    /// The next sequence number per output partition after this batch's
    /// records (the next batch's writes continue from here).
    pub sink_next: Vec<(i32, i32)>,
    pub input_rows: u64,
    pub output_records: u64,
    /// The batch whose stored state is current after this one (a batch
    /// with nothing to read is committed without running, keeping its
    /// predecessor's state); `None` for a stateless query.
    pub state_version: Option<BatchId>,
}

/// What running a batch reports back to the coordinator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchResult {
    /// The largest event time among this batch's rows.
    pub max_event_time: Option<i64>,
    pub sink_next: Vec<(i32, i32)>,
    pub input_rows: u64,
    pub output_records: u64,
}

/// Why a query cannot go on. Each names what is wrong so an operator can
/// act on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum StreamError {
    #[error("the offset log is not dense: batch {missing} is missing before batch {next}")]
    OffsetGap { missing: BatchId, next: BatchId },
    #[error("the commit log names batch {batch}, which the offset log does not have")]
    CommitWithoutOffsets { batch: BatchId },
    #[error("batches {from} to {to} are logged but not committed; at most one batch may be pending")]
    TooManyPending { from: BatchId, to: BatchId },
    #[error("batch {batch} starts {topic}[{partition}] at {start}, but batch {prev} ended it at {end}")]
    RangesNotContiguous { batch: BatchId, prev: BatchId, topic: String, partition: i32, start: i64, end: i64 },
    #[error("{topic}[{partition}] was read up to offset {end}, but its log now starts at {log_start}: records {end}..{log_start} were deleted before the query read them")]
    DataLost { topic: String, partition: i32, end: i64, log_start: i64 },
    #[error("{topic}[{partition}] was read up to offset {end}, but its high watermark is now {high_watermark}: the topic was recreated or its log truncated")]
    OffsetsWentBack { topic: String, partition: i32, end: i64, high_watermark: i64 },
    #[error("input partition {topic}[{partition}] disappeared")]
    PartitionGone { topic: String, partition: i32 },
    #[error("the table topic {topic} the query joins does not exist (it was deleted, or never created)")]
    TableGone { topic: String },
    #[error("batch {batch} failed {attempts} times in a row; last: {reason}")]
    BatchFailed { batch: BatchId, attempts: u32, reason: String },
    #[error("the offset log answered batch {got} for batch {want}")]
    WrongBatch { want: BatchId, got: BatchId },
}
