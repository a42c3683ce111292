//! The micro-batch coordinator of one stream query (Spark's
//! MicroBatchExecution): plan, log the offsets, run, log the commit.

use serde::{Deserialize, Serialize};

use super::logs::{contiguous, recover};
use super::planner::{PartitionEnd, plan_ranges};
use super::{BatchId, BatchResult, CommitEntry, OffsetEntry, SourceRange, StreamError, Trigger};
use crate::Millis;

/// Where a query with no offset log starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum StartAt {
    Earliest,
    /// Spark's default for Kafka sources. The starting point is fixed by
    /// batch 0, which is logged (and committed without running) at the
    /// first trigger even when there is nothing to read yet.
    #[default]
    Latest,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueryConfig {
    /// Input topics; every partition of each is read.
    pub inputs: Vec<String>,
    /// Topics the query joins as tables: each batch's offset entry fixes a
    /// snapshot of every partition of each (log start to high watermark
    /// when planned). New records in a table alone do not start a batch.
    pub tables: Vec<String>,
    pub trigger: Trigger,
    pub start_at: StartAt,
    /// With a watermark: batch N's is the largest event time seen before
    /// it minus this delay (never going back).
    pub watermark_delay_ms: Option<Millis>,
    /// A stateful query keeps state between batches; when its watermark
    /// moves it runs a batch even with no new input, so windows that just
    /// closed are emitted and evicted (Spark's no-data batch).
    pub stateful: bool,
    /// Spark's `maxOffsetsPerTrigger`.
    pub max_records_per_batch: Option<u64>,
    /// Consecutive failures of one batch before the query stops.
    pub max_batch_failures: u32,
    /// Wait before retrying a failed batch, listing or log append.
    pub retry_backoff_ms: Millis,
}

impl Default for QueryConfig {
    fn default() -> Self {
        QueryConfig {
            inputs: Vec::new(),
            tables: Vec::new(),
            trigger: Trigger::Interval { interval_ms: 1_000 },
            start_at: StartAt::Latest,
            watermark_delay_ms: None,
            stateful: false,
            max_records_per_batch: None,
            max_batch_failures: 4,
            retry_backoff_ms: 500,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueryInput {
    /// Both logs as read from the start, in log order (duplicates kept).
    Recovered { offsets: Vec<OffsetEntry>, commits: Vec<CommitEntry> },
    /// The answer to `List`.
    Listed { ends: Vec<PartitionEnd> },
    /// The append of `LogOffsets` landed, and this is the entry for that
    /// batch the log holds first (another runner's, if it got there first).
    OffsetsLogged { winner: OffsetEntry },
    /// The answer to `LogOffsets` when the batch is below the log's floor:
    /// other runners committed past it and purged it. The query reads the
    /// logs again and resumes from them.
    Outrun { batch: BatchId, floor: BatchId },
    BatchDone { batch: BatchId, result: BatchResult },
    BatchFailed { batch: BatchId, reason: String },
    CommitLogged { batch: BatchId },
    /// Reading the logs, a listing or a log append failed (broker
    /// unreachable, timeout): it is retried after `retry_backoff_ms`,
    /// without limit.
    IoFailed { reason: String },
    Tick,
    Stop,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueryEffect {
    /// Read the offset and commit logs and answer `Recovered`.
    ReadLogs,
    /// List every partition of these topics and answer `Listed`.
    List { topics: Vec<String> },
    /// Append to the offset log, read back, answer `OffsetsLogged`.
    LogOffsets { entry: OffsetEntry },
    /// Compute the batch from exactly `entry.ranges` and the state stored
    /// as version `state_version`, store the new state as version
    /// `entry.batch`, write the output with sequences continuing from
    /// `sink_base`, then answer `BatchDone` (or `BatchFailed`).
    RunBatch { entry: OffsetEntry, state_version: Option<BatchId>, sink_base: Vec<(i32, i32)> },
    LogCommit { entry: CommitEntry },
    Progress(BatchProgress),
    Timer { at: Millis },
    /// The query is over: `None` when its trigger ran out (once,
    /// available-now) or it was stopped, else why it failed.
    Stopped { error: Option<StreamError> },
}

/// One committed batch, as Spark's StreamingQueryProgress reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchProgress {
    pub batch: BatchId,
    pub planned_at: Millis,
    pub committed_at: Millis,
    pub input_rows: u64,
    pub output_records: u64,
    pub watermark: Option<i64>,
    /// Per input partition: records waiting beyond this batch's end when it
    /// was planned.
    pub lag: Vec<(String, i32, i64)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueryStatus {
    Recovering,
    Waiting { due: Millis },
    Listing,
    LoggingOffsets { batch: BatchId },
    Running { batch: BatchId },
    Committing { batch: BatchId },
    Stopped { error: Option<String> },
}

#[derive(Debug, Clone)]
enum Phase {
    Recovering { retry_at: Option<Millis> },
    Waiting { due: Millis },
    Listing,
    Logging { entry: OffsetEntry, retry_at: Option<Millis> },
    Running { entry: OffsetEntry, retry_at: Option<Millis> },
    Committing { entry: OffsetEntry, commit: CommitEntry, retry_at: Option<Millis> },
    Stopped { error: Option<StreamError> },
}

#[derive(Debug, Clone)]
pub struct StreamQuery {
    config: QueryConfig,
    phase: Phase,
    /// The last committed batch.
    last: Option<(OffsetEntry, CommitEntry)>,
    /// Available-now: the ends to reach, fixed by the first listing.
    target: Option<Vec<PartitionEnd>>,
    /// Once: a batch was planned by this run.
    planned_once: bool,
    failures: u32,
    last_listing: Vec<PartitionEnd>,
    last_progress: Option<BatchProgress>,
}

impl StreamQuery {
    pub fn new(config: QueryConfig) -> StreamQuery {
        StreamQuery {
            config,
            phase: Phase::Recovering { retry_at: None },
            last: None,
            target: None,
            planned_once: false,
            failures: 0,
            last_listing: Vec::new(),
            last_progress: None,
        }
    }

    /// The first effect: read the logs.
    pub fn start(&mut self, out: &mut Vec<QueryEffect>) {
        out.push(QueryEffect::ReadLogs);
    }

    pub fn config(&self) -> &QueryConfig {
        &self.config
    }

    pub fn last_committed(&self) -> Option<&(OffsetEntry, CommitEntry)> {
        self.last.as_ref()
    }

    pub fn last_progress(&self) -> Option<&BatchProgress> {
        self.last_progress.as_ref()
    }

    pub fn status(&self) -> QueryStatus {
        match &self.phase {
            Phase::Recovering { .. } => QueryStatus::Recovering,
            Phase::Waiting { due } => QueryStatus::Waiting { due: *due },
            Phase::Listing => QueryStatus::Listing,
            Phase::Logging { entry, .. } => QueryStatus::LoggingOffsets { batch: entry.batch },
            Phase::Running { entry, .. } => QueryStatus::Running { batch: entry.batch },
            Phase::Committing { entry, .. } => QueryStatus::Committing { batch: entry.batch },
            Phase::Stopped { error } => QueryStatus::Stopped { error: error.as_ref().map(ToString::to_string) },
        }
    }

    pub fn is_stopped(&self) -> bool {
        matches!(self.phase, Phase::Stopped { .. })
    }

    pub fn step(&mut self, now: Millis, input: QueryInput, out: &mut Vec<QueryEffect>) {
        if self.is_stopped() {
            return;
        }
        match input {
            QueryInput::Stop => self.stop(None, out),
            QueryInput::Recovered { offsets, commits } => {
                if !matches!(self.phase, Phase::Recovering { .. }) {
                    return;
                }
                match recover(offsets, commits) {
                    Err(e) => self.stop(Some(e), out),
                    Ok(r) => {
                        self.last = r.committed;
                        match r.pending {
                            Some(entry) => self.run_or_commit(now, entry, out),
                            None => self.wait_until(now, now, out),
                        }
                    }
                }
            }
            QueryInput::Tick => self.tick(now, out),
            QueryInput::Listed { ends } => {
                if matches!(self.phase, Phase::Listing) {
                    self.plan(now, ends, out);
                }
            }
            QueryInput::OffsetsLogged { winner } => {
                let Phase::Logging { entry, .. } = &self.phase else { return };
                if winner.batch != entry.batch {
                    let e = StreamError::WrongBatch { want: entry.batch, got: winner.batch };
                    return self.stop(Some(e), out);
                }
                // Another runner's entry may have won: it must still follow
                // the last committed batch.
                if let Some((prev, _)) = &self.last {
                    if let Err(e) = contiguous(prev, &winner) {
                        return self.stop(Some(e), out);
                    }
                }
                self.run_or_commit(now, winner, out);
            }
            QueryInput::Outrun { batch, .. } => {
                let Phase::Logging { entry, .. } = &self.phase else { return };
                if entry.batch != batch {
                    return;
                }
                self.phase = Phase::Recovering { retry_at: None };
                out.push(QueryEffect::ReadLogs);
            }
            QueryInput::BatchDone { batch, result } => {
                let Phase::Running { entry, .. } = &self.phase else { return };
                if entry.batch != batch {
                    return;
                }
                let entry = entry.clone();
                self.failures = 0;
                let prev_max = self.last.as_ref().and_then(|(_, c)| c.max_event_time);
                let commit = CommitEntry {
                    batch,
                    max_event_time: prev_max.max(result.max_event_time),
                    sink_next: result.sink_next,
                    input_rows: result.input_rows,
                    output_records: result.output_records,
                    state_version: self.config.stateful.then_some(batch),
                };
                out.push(QueryEffect::LogCommit { entry: commit.clone() });
                self.phase = Phase::Committing { entry, commit, retry_at: None };
            }
            QueryInput::BatchFailed { batch, reason } => {
                let Phase::Running { entry, retry_at: None } = &self.phase else { return };
                if entry.batch != batch {
                    return;
                }
                self.failures += 1;
                if self.failures >= self.config.max_batch_failures {
                    let e = StreamError::BatchFailed { batch, attempts: self.failures, reason };
                    return self.stop(Some(e), out);
                }
                let at = now + self.config.retry_backoff_ms;
                self.phase = Phase::Running { entry: entry.clone(), retry_at: Some(at) };
                out.push(QueryEffect::Timer { at });
            }
            QueryInput::CommitLogged { batch } => {
                let Phase::Committing { entry, commit, .. } = &self.phase else { return };
                if entry.batch != batch {
                    return;
                }
                let (entry, commit) = (entry.clone(), commit.clone());
                let progress = BatchProgress {
                    batch,
                    planned_at: entry.planned_at,
                    committed_at: now,
                    input_rows: commit.input_rows,
                    output_records: commit.output_records,
                    watermark: entry.watermark,
                    lag: entry
                        .ranges
                        .iter()
                        .map(|r| {
                            let hw = self
                                .last_listing
                                .iter()
                                .find(|l| l.topic == r.topic && l.partition == r.partition)
                                .map_or(r.end, |l| l.high_watermark);
                            (r.topic.clone(), r.partition, (hw - r.end).max(0))
                        })
                        .collect(),
                };
                self.last_progress = Some(progress.clone());
                out.push(QueryEffect::Progress(progress));
                self.last = Some((entry.clone(), commit));
                match self.config.trigger {
                    Trigger::Once if self.planned_once => self.stop(None, out),
                    trigger => {
                        let due = trigger.next_due(entry.planned_at, now);
                        self.wait_until(now, due, out);
                    }
                }
            }
            QueryInput::IoFailed { .. } => {
                let at = now + self.config.retry_backoff_ms;
                match &mut self.phase {
                    Phase::Listing => {
                        self.phase = Phase::Waiting { due: at };
                    }
                    Phase::Recovering { retry_at } | Phase::Logging { retry_at, .. } | Phase::Committing { retry_at, .. } => {
                        *retry_at = Some(at)
                    }
                    _ => return,
                }
                out.push(QueryEffect::Timer { at });
            }
        }
    }

    fn tick(&mut self, now: Millis, out: &mut Vec<QueryEffect>) {
        match &mut self.phase {
            Phase::Waiting { due } if *due <= now => {
                if self.config.trigger == Trigger::Once && self.planned_once {
                    return self.stop(None, out);
                }
                self.phase = Phase::Listing;
                let mut topics = self.config.inputs.clone();
                topics.extend(self.config.tables.iter().filter(|t| !self.config.inputs.contains(t)).cloned());
                out.push(QueryEffect::List { topics });
            }
            Phase::Recovering { retry_at } if retry_at.is_some_and(|at| at <= now) => {
                *retry_at = None;
                out.push(QueryEffect::ReadLogs);
            }
            Phase::Logging { entry, retry_at } if retry_at.is_some_and(|at| at <= now) => {
                *retry_at = None;
                out.push(QueryEffect::LogOffsets { entry: entry.clone() });
            }
            Phase::Running { entry, retry_at } if retry_at.is_some_and(|at| at <= now) => {
                *retry_at = None;
                let entry = entry.clone();
                self.emit_run(entry, out);
            }
            Phase::Committing { commit, retry_at, .. } if retry_at.is_some_and(|at| at <= now) => {
                *retry_at = None;
                out.push(QueryEffect::LogCommit { entry: commit.clone() });
            }
            _ => {}
        }
    }

    fn wait_until(&mut self, now: Millis, due: Millis, out: &mut Vec<QueryEffect>) {
        self.phase = Phase::Waiting { due };
        if due <= now {
            self.tick(now, out);
        } else {
            out.push(QueryEffect::Timer { at: due });
        }
    }

    /// The watermark of the batch after the last committed one.
    fn next_watermark(&self) -> Option<i64> {
        let (entry, commit) = self.last.as_ref()?;
        let candidate = match (self.config.watermark_delay_ms, commit.max_event_time) {
            (Some(delay), Some(max)) => Some(max.saturating_sub(delay)),
            _ => None,
        };
        entry.watermark.max(candidate)
    }

    fn plan(&mut self, now: Millis, ends: Vec<PartitionEnd>, out: &mut Vec<QueryEffect>) {
        let (table_ends, ends): (Vec<PartitionEnd>, Vec<PartitionEnd>) =
            ends.into_iter().partition(|l| self.config.tables.contains(&l.topic) && !self.config.inputs.contains(&l.topic));
        let tables = match table_snapshot(&self.config.tables, table_ends) {
            Ok(t) => t,
            Err(e) => return self.stop(Some(e), out),
        };
        self.last_listing = ends.clone();
        let listing = match self.config.trigger {
            Trigger::AvailableNow => {
                let target = self.target.get_or_insert_with(|| ends.clone());
                ends.into_iter()
                    .map(|mut l| {
                        let cap = target
                            .iter()
                            .find(|t| t.topic == l.topic && t.partition == l.partition)
                            .map_or(l.log_start, |t| t.high_watermark);
                        l.high_watermark = l.high_watermark.min(cap).max(l.log_start);
                        l
                    })
                    .collect()
            }
            _ => ends,
        };
        let prev = self.last.as_ref().map(|(e, _)| e);
        let ranges = match plan_ranges(prev, &listing, self.config.start_at, self.config.max_records_per_batch) {
            Ok(r) => r,
            Err(e) => return self.stop(Some(e), out),
        };
        let watermark = self.next_watermark();
        let has_data = ranges.iter().any(|r| !r.is_empty());
        let moved = self.config.stateful && prev.is_some_and(|p| p.watermark != watermark);
        if !has_data && !moved && prev.is_some() {
            return match self.config.trigger {
                Trigger::Interval { .. } => {
                    let due = self.config.trigger.next_due(now, now);
                    self.wait_until(now, due, out)
                }
                Trigger::Once | Trigger::AvailableNow => self.stop(None, out),
            };
        }
        let entry = OffsetEntry {
            batch: prev.map_or(0, |p| p.batch + 1),
            ranges,
            tables,
            watermark,
            planned_at: now,
        };
        self.planned_once = true;
        out.push(QueryEffect::LogOffsets { entry: entry.clone() });
        self.phase = Phase::Logging { entry, retry_at: None };
    }

    /// Runs a logged batch, or commits it at once when there is nothing to
    /// compute (no input, and the watermark did not move).
    fn run_or_commit(&mut self, _now: Millis, entry: OffsetEntry, out: &mut Vec<QueryEffect>) {
        let last_commit = self.last.as_ref().map(|(e, c)| (e, c));
        let moved = self.config.stateful && last_commit.is_some_and(|(e, _)| e.watermark != entry.watermark);
        if entry.input_records() == 0 && !moved {
            let commit = CommitEntry {
                batch: entry.batch,
                max_event_time: last_commit.and_then(|(_, c)| c.max_event_time),
                sink_next: last_commit.map(|(_, c)| c.sink_next.clone()).unwrap_or_default(),
                input_rows: 0,
                output_records: 0,
                state_version: last_commit.and_then(|(_, c)| c.state_version),
            };
            out.push(QueryEffect::LogCommit { entry: commit.clone() });
            self.phase = Phase::Committing { entry, commit, retry_at: None };
            return;
        }
        self.emit_run(entry.clone(), out);
        self.phase = Phase::Running { entry, retry_at: None };
    }

    fn emit_run(&self, entry: OffsetEntry, out: &mut Vec<QueryEffect>) {
        let (state_version, sink_base) = match &self.last {
            Some((_, c)) => (c.state_version, c.sink_next.clone()),
            None => (None, Vec::new()),
        };
        out.push(QueryEffect::RunBatch { entry, state_version, sink_base });
    }

    fn stop(&mut self, error: Option<StreamError>, out: &mut Vec<QueryEffect>) {
        out.push(QueryEffect::Stopped { error: error.clone() });
        self.phase = Phase::Stopped { error };
    }
}

/// Each table partition from its log start to its high watermark, ordered
/// by (topic, partition); an error if a table topic has no partitions.
fn table_snapshot(tables: &[String], mut ends: Vec<PartitionEnd>) -> Result<Vec<SourceRange>, StreamError> {
    if let Some(t) = tables.iter().find(|t| !ends.iter().any(|l| &l.topic == *t)) {
        return Err(StreamError::TableGone { topic: t.clone() });
    }
    ends.sort();
    Ok(ends
        .into_iter()
        .map(|l| SourceRange { topic: l.topic, partition: l.partition, start: l.log_start, end: l.high_watermark.max(l.log_start) })
        .collect())
}

#[cfg(test)]
#[path = "query_tests.rs"]
mod tests;
