//! FoundationDB-style fault points ("buggify") for the simulator.
//!
//! In a simulator build with buggify enabled, a fault point fires on a
//! quarter of its visits (madsim's switch) and makes the adapter misbehave
//! in a way the real world allows — here, a slow fsync. In every other
//! build the points compile to nothing.

use std::time::Duration;

/// A delay to insert before making appended data durable: a slow disk.
/// It widens the window in which a crash finds unsynced data, so crash
/// modes (lost, kept, torn) get exercised, and lets more requests join a
/// group commit.
#[cfg(madsim)]
pub fn slow_fsync() -> Option<Duration> {
    use madsim::rand::Rng;
    if madsim::buggify::buggify() {
        Some(Duration::from_millis(madsim::rand::thread_rng().gen_range(1..20)))
    } else {
        None
    }
}

#[cfg(not(madsim))]
pub fn slow_fsync() -> Option<Duration> {
    None
}
