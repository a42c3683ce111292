//! Stream queries, the engine half: what one micro-batch computes and how
//! its result folds into the query's state (DESIGN.md §4, micro-batch
//! streaming). The coordinator in `millrace_core` decides which offsets a
//! batch reads, logs them, runs [`StreamPlan::batch_plan`] as a job and
//! hands the result to [`StreamPlan::finish_batch`]; everything here is a
//! pure function of its arguments, so a re-run batch gives byte-identical
//! output and state.
//!
//! - `options.rs`: output modes and the watermark.
//! - `analyze.rs`: [`StreamPlan`], built from SQL or a plan, with the
//!   Spark-like checks of what a stream query may contain.
//! - `partial.rs`: aggregates as mergeable partial states.
//! - `state.rs`: [`StreamState`], the groups' states in key order.
//! - `output.rs`: rows as output records.
//! - `batch.rs`: one micro-batch, by the executor or the reference.
//! - `memory.rs`: a topic in memory, for the reference and tests.

mod analyze;
mod batch;
mod memory;
mod options;
mod output;
mod partial;
mod state;

pub use analyze::StreamPlan;
pub use batch::{BatchOutput, TableSnapshot};
pub use memory::{MemoryTopic, WithTables};
pub use options::{OutputMode, StreamOptions, Watermark};
pub use output::{OutputRecord, record as output_record};
pub use state::StreamState;
