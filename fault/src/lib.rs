//! # millrace-fault
//!
//! Fault plans: seeded, printable, replayable descriptions of what goes
//! wrong and when (node crashes and restarts, pauses, network partitions,
//! clogged or lossy links, disk faults). A plan is a value; this crate
//! describes faults and never executes IO. The simulator in `millrace-sim`
//! applies them. Filled in by the simulator issue.
