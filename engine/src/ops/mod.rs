//! The operators: synchronous functions from record batches to record
//! batches, deterministic for the same input. Narrow ones (project,
//! filter, explode) work batch by batch; wide ones see a task's whole input.

pub mod aggregate;
pub mod explode;
pub mod join;
pub mod keys;
pub mod sort;
pub mod split_count;
