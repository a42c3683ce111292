//! Running batch jobs for real: the core's driver and worker machines
//! driven by wall-clock time, with tasks executed by the engine on a pool
//! of OS threads — in this process (`local`, `millrace sql --local`) or on
//! the cluster's `millrace serve` nodes (`service`, reached with `client`).

#[cfg(not(madsim))]
pub mod client;
#[cfg(not(madsim))]
pub mod local;
pub mod output;
pub mod proto;
#[cfg(not(madsim))]
pub mod service;
