//! Running batch jobs for real: the core's driver and worker machines
//! driven by wall-clock time, with tasks executed by the engine on a pool
//! of OS threads.

#[cfg(not(madsim))]
pub mod local;
pub mod output;
