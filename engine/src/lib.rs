//! # millrace-engine
//!
//! The batch engine's data half (DESIGN.md §4): logical plans, expressions
//! and operators over Apache Arrow record batches, the SQL planner, the
//! Dataset API, stage cutting, task execution and the reference evaluator.
//! Scheduling — which task runs where, retries, lineage recompute — is the
//! driver's job in `millrace_core::batch`; this crate only says what a
//! task computes. Nothing here spawns a thread or reads a clock, so the
//! same tasks run under the simulator; the only IO is reading the files a
//! query names.

pub mod dataset;
pub mod error;
pub mod eval;
pub mod exec;
pub mod expr;
pub mod job;
pub mod local;
pub mod ops;
pub mod physical;
pub mod plan;
pub mod reference;
pub mod shuffle;
pub mod source;
pub mod spill;
pub mod sql;
pub mod stream;
#[cfg(feature = "testing")]
pub mod testing;
pub mod time;
pub mod topic_format;
pub mod types;
pub mod value;

pub use error::{EngineError, Result};
