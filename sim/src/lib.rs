//! # millrace-sim
//!
//! The deterministic simulator: a cluster of `millrace-net` nodes running
//! under madsim, a simulated disk implementing `millrace_core::storage::Storage`
//! that can lose unsynced writes, tear writes and corrupt reads, workload
//! clients built on Millrace's own Kafka client, and history recording with
//! seed replay. Filled in by the simulator issue.
