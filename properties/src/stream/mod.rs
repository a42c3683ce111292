//! The stream suites: the micro-batch coordinator of
//! `millrace_core::stream` and its exactly-once sink writer, run by query
//! runners that crash, pause and come back as zombies, against modelled
//! brokers that go down and lose answers, while producers keep writing
//! ([`sim`]). What a batch computes is a [`logic::StreamLogic`]: a small
//! built-in windowed count (`tests/stream_sim.rs`) or the engine's stream
//! plans ([`engine_logic`]; [`chaos`] is the chaos runner's `--suite
//! stream`).

pub mod chaos;
pub mod engine_logic;
pub mod logic;
pub mod sim;
mod world;
