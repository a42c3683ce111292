//! Running connectors for real (DESIGN.md §4, connectors): the core's
//! [`SourceDriver`] and the built-in sources and sinks of
//! `millrace_core::connect`, with their IO — files read and written here,
//! records produced and fetched with the Kafka client, positions and
//! definitions in internal topics. Like stream queries, a connector runs
//! in-process on the `millrace serve` node that started it and is resumed
//! when that node starts again.
//!
//! - `def.rs`: a connector's definition, as stored in `__millrace_connectors`.
//! - `logs.rs`: the internal topics (positions, definitions).
//! - `files.rs`: the file source's folder, on the real file system.
//! - `file_sink.rs`: the file sink's files, written whole and renamed.
//! - `handle.rs`: what the service sees of a running connector.
//! - `source_runner.rs`: the task that steps a source's driver.
//! - `sink_runner.rs`: the task that feeds a sink from the topic.
//! - `service.rs`: the connectors of one node.
//! - `client.rs`: `millrace connect` on the command line.
//!
//! [`SourceDriver`]: millrace_core::connect::SourceDriver

pub mod client;
pub mod def;
pub mod file_sink;
pub mod files;
pub mod handle;
pub mod logs;
pub mod service;
pub mod sink_runner;
pub mod source_runner;
