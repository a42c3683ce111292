//! # millrace-fault
//!
//! Fault plans — the "nemesis": seeded, printable, replayable descriptions
//! of what goes wrong and when. A plan is a value; this crate never executes
//! IO. The simulator (`millrace-sim`) applies a plan's events at their
//! simulated times.
//!
//! Plans follow swarm testing (TigerBeetle's VOPR): each seed first draws
//! which fault kinds are on and how hard they hit, so some seeds hammer one
//! fault while others mix them, then draws events over the fault window.
//! After the window everything heals, and the cluster must converge.

mod plan;
mod rng;
mod swarm;

pub use plan::{CrashMode, Fault, FaultPlan, TimedFault};
pub use rng::Rng;
pub use swarm::{FaultKind, Suite, Swarm};
