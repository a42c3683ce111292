//! # millrace-core
//!
//! The pure state machines of Millrace (see DESIGN.md §2). Nothing here does
//! IO, reads a clock, spawns a thread or draws OS randomness: time arrives as
//! a [`Millis`] argument, durable bytes go through the [`storage::Storage`]
//! trait, and every outward action is returned as data for the caller to
//! execute. The same code therefore runs under the real adapter in
//! `millrace-net` and under the deterministic simulator in `millrace-sim`.

pub mod batch;
pub mod broker;
pub mod connect;
pub mod controller;
pub mod error;
pub mod group;
pub mod log;
pub mod raft;
pub mod records;
pub mod replication;
pub mod rng;
pub mod storage;
pub mod stream;

/// Milliseconds of time, as passed in by the caller (wall clock in
/// production, simulated clock in the simulator). Kafka timestamps are i64
/// milliseconds, so Millrace's are too.
pub type Millis = i64;

pub use error::ErrorCode;
