//! # millrace-properties
//!
//! Property tests of the core machines live in `tests/` (proptest). The
//! chaos suites and their history checkers (DESIGN.md §5) join them with
//! the simulator issue.
