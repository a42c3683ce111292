//! # millrace-sim
//!
//! The deterministic simulator. The production adapter of `millrace-net`,
//! compiled with `--cfg madsim`, runs on madsim's simulated runtime and
//! network; each node's durable bytes live on a [`disk::SimDisk`] that loses,
//! tears and corrupts data as a fault plan says. Workload clients use
//! Millrace's own Kafka client and record a [`history::History`] that the
//! checkers in `millrace-properties` judge.
//!
//! The disk and the history are plain code, tested in normal builds; the
//! cluster harness exists only in madsim builds (`scripts/chaos`).

pub mod disk;
pub mod history;
pub mod replicas;

#[cfg(madsim)]
pub mod cluster;
#[cfg(madsim)]
mod groups;
#[cfg(madsim)]
mod workload;
