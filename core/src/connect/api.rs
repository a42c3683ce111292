//! The two traits a connector implements, and the records they move.
//!
//! Both are synchronous and step-like: the runner calls them (off its
//! async executor), stores what they report durably, and hands the stored
//! position back after a restart. A built-in connector keeps its decisions
//! in a pure machine of this module and does its IO in the trait's
//! implementation in `millrace-net`; a user's connector may do its IO
//! directly in the trait methods.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Millis;

/// One record a source produces. All records of one read go to one
/// partition of the topic (see [`SourceRead::route`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceRecord {
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
}

/// Input a source left out (a malformed JSON line), and where it was, so
/// an operator can find it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// e.g. `/var/log/app/a.json at byte 1024`.
    pub location: String,
    pub reason: String,
}

/// What one [`Source::read`] returns.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceRead<P> {
    /// In order; at most the `max` asked for; empty when nothing is new.
    pub records: Vec<SourceRecord>,
    /// The position after these records (and after anything skipped).
    pub to: P,
    pub skipped: Vec<Skipped>,
    /// Things an operator should know (a file truncated and re-read).
    pub warnings: Vec<String>,
    /// Picks the partition these records go to: the same route always
    /// picks the same partition (a file name keeps one file's lines in
    /// order); `None` spreads reads round-robin.
    pub route: Option<Vec<u8>>,
}

impl<P> SourceRead<P> {
    pub fn nothing(at: P) -> SourceRead<P> {
        SourceRead { records: Vec::new(), to: at, skipped: Vec::new(), warnings: Vec::new(), route: None }
    }
}

/// Why a connector cannot go on right now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    /// A file or service that may come back: the runner retries with a
    /// backoff and shows the reason in `millrace connect describe`.
    #[error("{path}: {reason}")]
    Io { path: String, reason: String },
    /// A record the topic cannot take: the connector stops.
    #[error("{file}: the line at byte {offset} is longer than {limit} bytes (records are limited to {limit} bytes)")]
    LineTooLong { file: String, offset: u64, limit: usize },
    /// Anything else that needs a person: the connector stops.
    #[error("{0}")]
    Fatal(String),
}

impl ConnectError {
    pub fn is_retriable(&self) -> bool {
        matches!(self, ConnectError::Io { .. })
    }
}

/// Data coming in from outside into a topic.
///
/// The contract that makes delivery exactly-once: `read` is a function of
/// its arguments and of the outside data *before* the position it returns.
/// Reading again from `from` at the same `at` with `max` = the number of
/// records it returned yields the same records and the same `to`, as long
/// as that data did not change (appending after it is fine). The runner
/// relies on it to re-send a chunk after a crash; when a re-read comes out
/// different it falls back to at-least-once for that one chunk.
pub trait Source: Send {
    /// Where the source stands: stored (as JSON) after every chunk, and
    /// handed back after a restart. `Default` is the very beginning.
    type Position: Clone + std::fmt::Debug + PartialEq + Default + Serialize + DeserializeOwned + Send;

    /// Up to `max` records after `from`, and the position after them. `at`
    /// is the chunk's time (the record timestamps): a source may use it in
    /// the records, never a clock of its own.
    fn read(&mut self, at: Millis, from: &Self::Position, max: usize) -> Result<SourceRead<Self::Position>, ConnectError>;

    /// The `count` records of a chunk read before as `from..to` at `at`,
    /// to re-send it after a crash. The default reads again from `from`;
    /// a source whose next read can depend on more than its position (the
    /// file source picks among files) narrows the read to `to` here.
    fn reread(&mut self, at: Millis, from: &Self::Position, to: &Self::Position, count: usize) -> Result<SourceRead<Self::Position>, ConnectError> {
        let _ = to;
        self.read(at, from, count)
    }
}

/// One record of a topic partition, as a sink gets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkRecord {
    pub partition: i32,
    pub offset: i64,
    pub timestamp: Millis,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
}

/// Data going out from a topic's partitions to the outside.
///
/// The contract that makes delivery at-least-once without duplicates: the
/// runner stores the offsets `write` and `idle` report as durable, and
/// after a restart delivers again every record from the last stored one.
/// A sink must write those idempotently (the file sink names each file by
/// its first offset, so a rewrite replaces the same file).
pub trait Sink: Send {
    /// Partition `partition` resumes at `next_offset` (the last stored
    /// durable offset, or where the sink was told to start).
    fn open(&mut self, partition: i32, next_offset: i64) -> Result<(), ConnectError>;

    /// The next records of `partition`, in offset order. Answers the
    /// offset below which everything given so far is durable, when that
    /// moved.
    fn write(&mut self, now: Millis, partition: i32, records: &[SinkRecord]) -> Result<Option<i64>, ConnectError>;

    /// No new records for `partition` lately: a chance to flush what is
    /// buffered. Same answer as `write`.
    fn idle(&mut self, now: Millis, partition: i32) -> Result<Option<i64>, ConnectError>;
}

/// A [`Source`] with its position as JSON: what the runner holds, so one
/// runner serves every source type.
pub trait DynSource: Send {
    fn read_json(&mut self, at: Millis, from: &serde_json::Value, max: usize) -> Result<SourceRead<serde_json::Value>, ConnectError>;
    fn reread_json(
        &mut self,
        at: Millis,
        from: &serde_json::Value,
        to: &serde_json::Value,
        count: usize,
    ) -> Result<SourceRead<serde_json::Value>, ConnectError>;
    /// The JSON of `Position::default()`.
    fn initial(&self) -> serde_json::Value;
}

fn position<P: DeserializeOwned>(v: &serde_json::Value) -> Result<P, ConnectError> {
    serde_json::from_value(v.clone()).map_err(|e| ConnectError::Fatal(format!("the stored position {v} does not decode for this source: {e}")))
}

fn to_json<P: Serialize>(r: SourceRead<P>) -> SourceRead<serde_json::Value> {
    SourceRead { records: r.records, to: serde_json::to_value(&r.to).unwrap_or_default(), skipped: r.skipped, warnings: r.warnings, route: r.route }
}

impl<S: Source> DynSource for S {
    fn read_json(&mut self, at: Millis, from: &serde_json::Value, max: usize) -> Result<SourceRead<serde_json::Value>, ConnectError> {
        let from: S::Position = position(from)?;
        self.read(at, &from, max).map(to_json)
    }

    fn reread_json(
        &mut self,
        at: Millis,
        from: &serde_json::Value,
        to: &serde_json::Value,
        count: usize,
    ) -> Result<SourceRead<serde_json::Value>, ConnectError> {
        let (from, to): (S::Position, S::Position) = (position(from)?, position(to)?);
        self.reread(at, &from, &to, count).map(to_json)
    }

    fn initial(&self) -> serde_json::Value {
        serde_json::to_value(S::Position::default()).unwrap_or_default()
    }
}
