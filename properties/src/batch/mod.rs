//! The batch suites: the driver and worker machines of
//! `millrace_core::batch` under a seeded in-memory network with faults
//! ([`sim`]), running either a fake executor whose answers are known
//! (`tests/batch_sim.rs`) or the engine's real tasks ([`chaos`], the
//! chaos runner's `--suite batch`).

pub mod chaos;
pub mod sim;
