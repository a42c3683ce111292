//! Running stream queries for real (DESIGN.md §4, micro-batch streaming):
//! the core's [`StreamQuery`] coordinator and [`SinkWriter`], driven by
//! wall-clock time, with their durable logs in internal topics of the
//! cluster, batches computed by the engine in this process, and output
//! written with the idempotent producer. `properties/src/stream/sim.rs`
//! runs the same machines against modelled brokers; this is the adapter
//! that does what that simulation models.
//!
//! - `def.rs`: a query's definition, as stored in `__millrace_streams`.
//! - `logs.rs`: the internal topics (offset log, commit log, state, definitions).
//! - `batch.rs`: one micro-batch computed by the engine.
//! - `sink.rs`: a batch's output records written exactly once.
//! - `progress.rs`: Spark-like rates from committed batches.
//! - `runner.rs`: the task that steps one query and executes its effects.
//! - `service.rs`: the queries of one `millrace serve` node.
//! - `client.rs`: `millrace stream` on the command line.
//!
//! [`StreamQuery`]: millrace_core::stream::StreamQuery
//! [`SinkWriter`]: millrace_core::stream::SinkWriter

mod batch;
pub mod client;
pub mod def;
pub mod logs;
pub mod progress;
pub mod runner;
pub mod service;
pub(crate) mod sink;

/// Wall-clock milliseconds since the epoch: the coordinator's `now`. Times
/// in the logs (when a batch was planned) outlive a process, so they are
/// wall-clock, not a process's monotonic clock.
pub fn wall_ms() -> millrace_core::Millis {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as millrace_core::Millis).unwrap_or(0)
}
