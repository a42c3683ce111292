//! # millrace-properties
//!
//! Property tests of the core machines live in `tests/` (proptest). This
//! library holds the history checkers for DESIGN.md §5's invariants, and
//! the `chaos` binary (`scripts/chaos`) runs seeds through the simulator
//! and judges each history with them. [`batch`] is the batch driver and
//! workers' harness and the batch chaos suite (`--suite batch`), which needs
//! no simulated nodes.

pub mod batch;
pub mod checkers;
mod group_checkers;
mod replication_checkers;
