//! The batch driver and worker machines of `millrace_core::batch` under a
//! seeded in-memory network with faults ([`sim`]), generic over what the
//! tasks compute (`tests/batch_sim.rs` runs a fake executor whose answers
//! are known).

pub mod sim;
