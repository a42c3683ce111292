//! The fault events and the plan that orders them in time.

use std::fmt;

use crate::rng::Rng;
use crate::swarm::{FaultKind, Swarm};

/// What a crash does to data written but not yet synced, per file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CrashMode {
    /// Unsynced bytes are gone (the page cache was lost).
    LoseUnsynced,
    /// Unsynced bytes happened to reach the disk.
    KeepUnsynced,
    /// Some sectors of the unsynced tail reached the disk, others read as
    /// zeros or garbage (a torn write: the size was journaled, the data
    /// blocks were not).
    TearUnsynced,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// Kill a node's process; its disk applies `mode` to unsynced data.
    Crash { node: usize, mode: CrashMode },
    /// Start a crashed node again (its disk keeps what survived).
    Restart { node: usize },
    /// Freeze a node (a long GC pause, a stopped VM): no progress, no loss.
    Pause { node: usize },
    Resume { node: usize },
    /// Cut every link to and from the node.
    Isolate { node: usize },
    /// Cut only what the node sends (it hears, nobody hears it).
    MuteOutbound { node: usize },
    /// Every message takes `latency_ms` to `2 × latency_ms` (a congested or
    /// far-away network), until the next `HealNetwork`.
    SlowNetwork { latency_ms: u32 },
    /// Restore every cut link and the normal latency.
    HealNetwork,
    /// Each read returns a flipped bit with this probability (transient:
    /// the data at rest is fine), until `DiskHealthy`.
    ReadCorruption { node: usize, per_million: u32 },
    /// The node's next fsync fails (the kernel dropped dirty pages).
    FsyncFailure { node: usize },
    /// Appends fail with "no space left on device" until `DiskHealthy`.
    DiskFull { node: usize },
    /// End read corruption and disk-full on the node.
    DiskHealthy { node: usize },
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Crash { node, mode } => write!(f, "crash node {node} ({mode:?})"),
            Fault::Restart { node } => write!(f, "restart node {node}"),
            Fault::Pause { node } => write!(f, "pause node {node}"),
            Fault::Resume { node } => write!(f, "resume node {node}"),
            Fault::Isolate { node } => write!(f, "isolate node {node}"),
            Fault::MuteOutbound { node } => write!(f, "mute outbound of node {node}"),
            Fault::SlowNetwork { latency_ms } => write!(f, "slow network ({latency_ms}-{} ms per message)", latency_ms * 2),
            Fault::HealNetwork => write!(f, "heal network"),
            Fault::ReadCorruption { node, per_million } => {
                write!(f, "corrupt reads on node {node} ({per_million} per million)")
            }
            Fault::FsyncFailure { node } => write!(f, "fail next fsync on node {node}"),
            Fault::DiskFull { node } => write!(f, "disk full on node {node}"),
            Fault::DiskHealthy { node } => write!(f, "disk healthy on node {node}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimedFault {
    pub at_ms: u64,
    pub fault: Fault,
}

/// A whole plan: the swarm parameters drawn for the seed and the events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultPlan {
    pub seed: u64,
    pub nodes: usize,
    /// Faults happen in `[0, fault_window_ms)`; at its end everything heals.
    pub fault_window_ms: u64,
    pub swarm: Swarm,
    pub events: Vec<TimedFault>,
}

impl FaultPlan {
    /// The plan for `seed`: same seed, same plan, on any machine.
    pub fn generate(seed: u64, nodes: usize, fault_window_ms: u64, swarm: Swarm) -> Self {
        let mut rng = Rng::new(seed);
        let mut events = Vec::new();
        for node in 0..nodes {
            generate_node(&mut rng, &swarm, node, fault_window_ms, &mut events);
        }
        // The heal: every node back up, resumed, connected, with a healthy disk.
        for node in 0..nodes {
            events.push(TimedFault { at_ms: fault_window_ms, fault: Fault::Resume { node } });
            events.push(TimedFault { at_ms: fault_window_ms, fault: Fault::DiskHealthy { node } });
            events.push(TimedFault { at_ms: fault_window_ms, fault: Fault::Restart { node } });
        }
        events.push(TimedFault { at_ms: fault_window_ms, fault: Fault::HealNetwork });
        events.sort_by_key(|a| a.at_ms);
        Self { seed, nodes, fault_window_ms, swarm, events }
    }

    /// Whether the plan contains a fault of this kind.
    pub fn has(&self, kind: FaultKind) -> bool {
        self.swarm.enabled.contains(&kind)
    }
}

/// Draws one node's faults as a sequence of episodes: wait, then one fault
/// with its own end (restart, resume, heal), never overlapping on a node.
fn generate_node(rng: &mut Rng, swarm: &Swarm, node: usize, window_ms: u64, out: &mut Vec<TimedFault>) {
    if swarm.enabled.is_empty() {
        return;
    }
    let mut t = rng.range(0, swarm.mean_gap_ms);
    while t < window_ms {
        let kind = *rng.pick(&swarm.enabled);
        let dur = rng.range(50, swarm.max_fault_ms);
        let end = (t + dur).min(window_ms);
        let (start, stop) = match kind {
            FaultKind::Crash => {
                let mode = *rng.pick(&[CrashMode::LoseUnsynced, CrashMode::KeepUnsynced, CrashMode::TearUnsynced]);
                (Fault::Crash { node, mode }, Some(Fault::Restart { node }))
            }
            FaultKind::Pause => (Fault::Pause { node }, Some(Fault::Resume { node })),
            FaultKind::Partition => {
                let f = if rng.chance(300) { Fault::MuteOutbound { node } } else { Fault::Isolate { node } };
                (f, Some(Fault::HealNetwork))
            }
            FaultKind::SlowNetwork => {
                (Fault::SlowNetwork { latency_ms: *rng.pick(&[20, 100, 500]) }, Some(Fault::HealNetwork))
            }
            FaultKind::ReadCorruption => (
                Fault::ReadCorruption { node, per_million: rng.range(100, swarm.read_corruption_per_million_max) as u32 },
                Some(Fault::DiskHealthy { node }),
            ),
            FaultKind::FsyncFailure => (Fault::FsyncFailure { node }, None),
            FaultKind::DiskFull => (Fault::DiskFull { node }, Some(Fault::DiskHealthy { node })),
        };
        out.push(TimedFault { at_ms: t, fault: start });
        if let Some(stop) = stop {
            out.push(TimedFault { at_ms: end, fault: stop });
        }
        t = end + rng.range(swarm.mean_gap_ms / 2, swarm.mean_gap_ms * 3 / 2);
    }
}

impl fmt::Display for FaultPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "fault plan for seed {} ({} node(s), faults in the first {} ms): {}",
            self.seed, self.nodes, self.fault_window_ms, self.swarm
        )?;
        for e in &self.events {
            writeln!(f, "  {:>7} ms  {}", e.at_ms, e.fault)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::swarm::Suite;

    #[test]
    fn same_seed_same_plan_and_seeds_differ() {
        let a = FaultPlan::generate(42, 3, 10_000, Swarm::draw(42, Suite::Mixed));
        let b = FaultPlan::generate(42, 3, 10_000, Swarm::draw(42, Suite::Mixed));
        assert_eq!(a, b);
        assert_eq!(a.to_string(), b.to_string());
        let distinct: std::collections::BTreeSet<String> =
            (0..20).map(|s| FaultPlan::generate(s, 1, 10_000, Swarm::draw(s, Suite::Mixed)).to_string()).collect();
        assert!(distinct.len() > 15);
    }

    #[test]
    fn every_fault_ends_by_the_heal() {
        for seed in 0..200 {
            let p = FaultPlan::generate(seed, 2, 5_000, Swarm::draw(seed, Suite::Mixed));
            assert!(p.events.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
            assert!(p.events.iter().all(|e| e.at_ms <= 5_000));
            for node in 0..2 {
                let last_crash = p.events.iter().rposition(|e| matches!(e.fault, Fault::Crash { node: n, .. } if n == node));
                let last_restart = p.events.iter().rposition(|e| e.fault == Fault::Restart { node });
                assert!(last_crash < last_restart, "seed {seed}: node {node} restarts after its last crash");
            }
        }
    }
}
