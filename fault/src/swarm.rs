//! Swarm testing: which fault kinds a seed uses and how hard they hit.

use std::fmt;

use crate::rng::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FaultKind {
    Crash,
    Pause,
    Partition,
    SlowNetwork,
    ReadCorruption,
    FsyncFailure,
    DiskFull,
}

/// Named groups of fault kinds, selected with `scripts/chaos --suite`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suite {
    /// Crashes and restarts, with lost, kept or torn unsynced data.
    Crash,
    /// Disk faults: corrupt reads, failed fsyncs, a full disk (and the
    /// crashes they cause).
    Disk,
    /// Partitions, one-way cuts, slow links and paused nodes.
    Network,
    /// Everything, swarm-style.
    Mixed,
    /// Consumer groups at work (members join, leave, crash and stall)
    /// while the node crashes, stalls and is cut off.
    Groups,
    /// One replicated cluster (replication factor 3, min.insync.replicas
    /// 2) under every fault kind: producers with acks=all follow the
    /// partition leaders while nodes crash, lose unsynced data, are cut
    /// off (an isolated leader keeps taking acks=1 writes) and their disks
    /// fail.
    Replication,
    /// The same cluster with its metadata churning (topics created and
    /// deleted throughout) under crashes, pauses and partitions: the
    /// controller quorum's elections and the metadata log are the target.
    Controller,
}

impl Suite {
    /// The suites `--suite all` rotates through (seed s runs ALL[s mod 4]).
    pub const ALL: [Suite; 4] = [Suite::Crash, Suite::Disk, Suite::Network, Suite::Mixed];
    /// Every suite, for lookup by name.
    pub const NAMED: [Suite; 7] =
        [Suite::Crash, Suite::Disk, Suite::Network, Suite::Mixed, Suite::Groups, Suite::Replication, Suite::Controller];

    pub fn name(self) -> &'static str {
        match self {
            Suite::Crash => "crash",
            Suite::Disk => "disk",
            Suite::Network => "network",
            Suite::Mixed => "mixed",
            Suite::Groups => "groups",
            Suite::Replication => "replication",
            Suite::Controller => "controller",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::NAMED.into_iter().find(|s| s.name() == name)
    }

    fn kinds(self) -> &'static [FaultKind] {
        use FaultKind::*;
        match self {
            Suite::Crash => &[Crash],
            Suite::Disk => &[ReadCorruption, FsyncFailure, DiskFull, Crash],
            Suite::Network => &[Partition, SlowNetwork, Pause],
            Suite::Mixed => &[Crash, Pause, Partition, SlowNetwork, ReadCorruption, FsyncFailure, DiskFull],
            Suite::Groups => &[Crash, Pause, Partition, SlowNetwork],
            Suite::Replication => &[Crash, Pause, Partition, SlowNetwork, ReadCorruption, FsyncFailure, DiskFull],
            Suite::Controller => &[Crash, Pause, Partition, SlowNetwork],
        }
    }

    /// Whether the suite runs one replicated cluster (rather than
    /// independent single nodes).
    pub fn replicated(self) -> bool {
        matches!(self, Suite::Replication | Suite::Controller)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Swarm {
    pub suite: Suite,
    pub enabled: Vec<FaultKind>,
    /// Typical quiet time between two faults on a node.
    pub mean_gap_ms: u64,
    /// Longest a fault lasts before its end event.
    pub max_fault_ms: u64,
    pub read_corruption_per_million_max: u64,
}

impl Swarm {
    /// The swarm parameters for `seed`: each kind of the suite is on with
    /// probability 1/2 (at least one always is), intensities vary widely.
    pub fn draw(seed: u64, suite: Suite) -> Self {
        let mut rng = Rng::new(seed.rotate_left(17) ^ 0x5eed);
        let kinds = suite.kinds();
        let mut enabled: Vec<FaultKind> = kinds.iter().copied().filter(|_| rng.chance(500)).collect();
        if enabled.is_empty() {
            enabled.push(*rng.pick(kinds));
        }
        Self {
            suite,
            enabled,
            mean_gap_ms: *rng.pick(&[100, 300, 1000, 3000]),
            max_fault_ms: *rng.pick(&[200, 1000, 3000]),
            read_corruption_per_million_max: *rng.pick(&[1_000, 20_000, 200_000]),
        }
    }
}

impl fmt::Display for Swarm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "suite {}, faults {:?}, gap ~{} ms, faults up to {} ms",
            self.suite.name(),
            self.enabled,
            self.mean_gap_ms,
            self.max_fault_ms
        )
    }
}
