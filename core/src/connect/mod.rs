//! Connectors (DESIGN.md §4): sources and sinks that move data between the
//! log and the outside — the extract and load steps of a pipeline whose
//! transformations run as stream queries.
//!
//! A connector is written against one of two small traits ([`Source`],
//! [`Sink`]); the runner in `millrace-net` stores its positions durably in
//! an internal topic and gives them back after a restart. What each side
//! promises:
//!
//! - a [`Source`] is *replayable*: reading again from a position it
//!   returned, with the same time and count, yields the same records. The
//!   [`SourceDriver`] uses that for exactly-once delivery into the topic:
//!   it logs each chunk (from, to, partition, producer sequence) before
//!   producing it, and a restart re-reads and re-sends the logged chunk,
//!   which the broker drops if it was stored before the crash.
//! - a [`Sink`] reports how far its output is durable; after a restart it
//!   gets the records from there again and must write them idempotently
//!   (at-least-once delivery, no duplicates in the output).
//!
//! Built-ins, each a pure machine here with a thin IO adapter in
//! `millrace-net`: [`FileTail`] (a file or a folder of files, lines or
//! JSON), [`Segmenter`] (a partition's records into rolling files named by
//! their first offset) and [`Generator`] (deterministic records from a
//! seed).

mod api;
mod config;
mod driver;
#[cfg(test)]
mod driver_tests;
mod file_sink;
mod file_source;
mod generator;
mod lines;
mod source_log;

pub use api::{ConnectError, DynSource, Sink, SinkRecord, Skipped, Source, SourceRead, SourceRecord};
pub use config::{ConnectorConfig, ConnectorKind, GeneratorKind, LineFormat, SinkFormat};
pub use driver::{DriverConfig, DriverEffect, DriverInput, DriverStatus, SourceDriver, records_crc};
pub use file_sink::{Segment, Segmenter, SegmenterConfig, parse_segment_name, segment_name};
pub use file_source::{FileEntry, FilePosition, FileState, FileSystem, FileTail, WINDOW};
pub use generator::Generator;
pub use lines::{LineCut, cut_lines};
pub use source_log::{ChunkEntry, OffsetRecord, SourceRecovery, recover_sink, recover_source};
