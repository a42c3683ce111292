//! # millrace-net
//!
//! The thin real-IO adapter around `millrace-core` (DESIGN.md §2): TCP and
//! the Kafka wire protocol, file-backed storage, timers, the broker loop
//! that executes the core's effects, and the Kafka client that the CLI (and
//! later the simulator's workloads) use.

pub mod alloc_guard;
#[cfg(feature = "batch")]
pub mod batch;
pub mod broker_loop;
pub mod buggify;
pub mod client;
pub mod cluster_watch;
pub mod clock;
pub mod config;
#[cfg(all(feature = "batch", not(madsim)))]
pub mod connect;
pub mod connection;
#[cfg(not(madsim))]
pub mod dev_cluster;
pub mod file_storage;
pub mod kafka;
pub mod peer;
pub mod server;
#[cfg(all(feature = "batch", not(madsim)))]
pub mod stream;
