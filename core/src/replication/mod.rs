//! Partition replication, the parts that are pure bookkeeping: the leader's
//! view of its followers (ISR and high watermark, [`isr`]) and the
//! leader-epoch cache with the truncation rule for returning followers
//! ([`epochs`]). The broker machine that fetches, appends and serves with
//! them is the next step of the replication issue.

pub mod epochs;
pub mod isr;

pub use epochs::{EpochCache, truncation_point};
pub use isr::{IsrChange, LeaderPartition};
