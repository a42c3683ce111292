//! `millrace serve` settings: embedded defaults, then a TOML file, then
//! command-line flags, each overriding the one before.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use millrace_core::batch::DriverConfig;
use millrace_core::broker::BrokerConfig;
use serde::Deserialize;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:9092";
pub const DEFAULT_DATA_DIR: &str = "./millrace-data";
/// A single node's batch port, when not configured: its Kafka port + 2
/// (9094 next to 9092).
pub const BATCH_PORT_AFTER_LISTEN: u16 = 2;
/// A cluster node's batch port, when not configured: its peer (voter) port
/// plus 100, on the voter address's IP (9193 next to a voter at 9093; the
/// dev-cluster's nodes 19192.. get 19292..).
pub const BATCH_PORT_AFTER_PEER: u16 = 100;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// Host:port given to clients; defaults to the listen address.
    pub advertised: Option<String>,
    /// Cluster mode: every controller voter as `id@ip:port` (its peer
    /// address), this node included — Kafka's `controller.quorum.voters`.
    /// Empty: a single node.
    pub voters: Vec<String>,
    /// Where this node listens for its peers; defaults to its own entry in
    /// `voters` (use 0.0.0.0 here to listen on every interface).
    pub peer_listen: Option<SocketAddr>,
    /// Where the batch service listens: drivers, workers and `millrace sql
    /// --server` clients. Default: see [`ServeConfig::batch_addresses`].
    pub batch_listen: Option<SocketAddr>,
    pub batch: BatchConfig,
    pub broker: BrokerConfig,
}

/// A task's memory limit (Spark gives a task about this much of a 1 GB
/// executor's unified memory).
pub const DEFAULT_TASK_MEMORY_MB: u64 = 256;

/// The batch service's settings (`[batch]` in the TOML file).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatchConfig {
    /// Task slots of this node's worker (tasks run at once); 0: the number
    /// of cores.
    pub slots: u32,
    /// Reduce partitions per shuffle when the client does not say; 0: twice
    /// the task slots of the live workers.
    pub shuffle_partitions: u32,
    /// Between two heartbeats of a worker to each driver (and between two
    /// hellos of a driver to the nodes not registered with it).
    pub heartbeat_ms: i64,
    /// The other nodes' batch addresses as `id@ip:port`, for nodes that do
    /// not follow the default rule (voter port + 100).
    pub peers: Vec<String>,
    /// Ended jobs kept for `millrace job status`.
    pub retained_jobs: usize,
    /// Megabytes of rows an aggregate or a join in one task may hold
    /// before it spills them to `<data dir>/spill`; 0: never spill.
    pub task_memory_mb: u64,
    /// Megabytes of map outputs (shuffle blocks) this node holds in memory;
    /// past it a new map output is written to `<data dir>/spill` (0: all).
    pub shuffle_memory_mb: u64,
    /// For tests: every task sleeps this long before it runs (so a test
    /// can kill a node while a job is under way).
    pub task_delay_ms: u64,
    /// The driver's scheduling settings (`[batch.driver]`).
    pub driver: DriverConfig,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            slots: 0,
            shuffle_partitions: 0,
            heartbeat_ms: 1_000,
            peers: Vec::new(),
            retained_jobs: 100,
            task_memory_mb: DEFAULT_TASK_MEMORY_MB,
            shuffle_memory_mb: 1024,
            task_delay_ms: 0,
            driver: DriverConfig::default(),
        }
    }
}

/// Where a node's batch service listens, and where the others' are.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchAddresses {
    pub listen: SocketAddr,
    /// True if `listen` comes from the default rule rather than the
    /// configuration (then a busy port only disables the batch service).
    pub derived: bool,
    /// Every other node's batch address (empty on a single node).
    pub peers: BTreeMap<i32, SocketAddr>,
}

fn port_plus(addr: SocketAddr, plus: u16, what: &str) -> anyhow::Result<SocketAddr> {
    if addr.port() == 0 {
        return Ok(addr); // any free port (tests)
    }
    let port = addr.port().checked_add(plus).ok_or_else(|| anyhow::anyhow!("{what} {addr}: port + {plus} is past 65535; set batch_listen"))?;
    Ok(SocketAddr::new(addr.ip(), port))
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.parse().expect("valid default address"),
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            advertised: None,
            voters: Vec::new(),
            peer_listen: None,
            batch_listen: None,
            batch: BatchConfig::default(),
            broker: BrokerConfig::default(),
        }
    }
}

/// Parses `id@ip:port` voter entries into a map of peer addresses.
pub fn parse_voters(voters: &[String]) -> anyhow::Result<BTreeMap<i32, SocketAddr>> {
    let mut map = BTreeMap::new();
    for v in voters {
        let (id, addr) = v.split_once('@').ok_or_else(|| anyhow::anyhow!("voter {v:?} is not id@ip:port"))?;
        let id: i32 = id.trim().parse().map_err(|_| anyhow::anyhow!("voter {v:?}: {id:?} is not a node id"))?;
        let addr: SocketAddr = addr.trim().parse().map_err(|_| anyhow::anyhow!("voter {v:?}: {addr:?} is not ip:port"))?;
        if map.insert(id, addr).is_some() {
            anyhow::bail!("voter {id} is listed twice");
        }
    }
    Ok(map)
}

impl ServeConfig {
    pub fn from_toml_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        Self::from_toml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    pub fn from_toml(text: &str) -> anyhow::Result<Self> {
        Ok(toml::from_str(text)?)
    }

    /// The batch service's addresses. This node listens on `batch_listen`;
    /// if that is not set, on a single node at the Kafka listener's IP with
    /// its port + 2 (`listen_port` is the port the listener got, for a
    /// configured port 0), and in a cluster at its entry in `batch.peers`,
    /// else at its peer listener's IP (`peer_listen`, else its voter
    /// address) with the port + 100. Every other node is at its entry in
    /// `batch.peers`, else at its voter address with the port + 100.
    pub fn batch_addresses(&self, listen_port: u16) -> anyhow::Result<BatchAddresses> {
        let explicit = parse_voters(&self.batch.peers).map_err(|e| anyhow::anyhow!("batch.peers: {e}"))?;
        if self.voters.is_empty() {
            let listen = match self.batch_listen {
                Some(a) => a,
                None => port_plus(SocketAddr::new(self.listen.ip(), listen_port), BATCH_PORT_AFTER_LISTEN, "listen")?,
            };
            return Ok(BatchAddresses { listen, derived: self.batch_listen.is_none(), peers: BTreeMap::new() });
        }
        let voters = parse_voters(&self.voters)?;
        let me = self.broker.node_id;
        let own = *voters.get(&me).ok_or_else(|| anyhow::anyhow!("node id {me} is not among the voters {:?}", self.voters))?;
        let listen = match (self.batch_listen, explicit.get(&me)) {
            (Some(a), _) => a,
            (None, Some(a)) => *a,
            (None, None) => port_plus(self.peer_listen.unwrap_or(own), BATCH_PORT_AFTER_PEER, "peer address")?,
        };
        let mut peers = BTreeMap::new();
        for (id, addr) in voters {
            if id != me {
                let a = match explicit.get(&id) {
                    Some(a) => *a,
                    None => port_plus(addr, BATCH_PORT_AFTER_PEER, "voter")?,
                };
                peers.insert(id, a);
            }
        }
        Ok(BatchAddresses { listen, derived: self.batch_listen.is_none() && !explicit.contains_key(&me), peers })
    }

    /// Cluster mode: the peer addresses by node id, with the broker's
    /// cluster settings made consistent with them. `None` on a single node.
    pub fn cluster_peers(&mut self) -> anyhow::Result<Option<(SocketAddr, BTreeMap<i32, SocketAddr>)>> {
        if self.voters.is_empty() {
            if self.broker.cluster.is_some() {
                anyhow::bail!("[broker.cluster] is set but no voters are given");
            }
            return Ok(None);
        }
        let peers = parse_voters(&self.voters)?;
        let me = self.broker.node_id;
        let own = *peers.get(&me).ok_or_else(|| anyhow::anyhow!("node id {me} is not among the voters {:?}", self.voters))?;
        let cluster = self.broker.cluster.get_or_insert_with(Default::default);
        cluster.voters = peers.keys().copied().collect();
        Ok(Some((self.peer_listen.unwrap_or(own), peers)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use millrace_core::broker::FlushPolicy;
    use millrace_core::log::CleanupPolicy;

    #[test]
    fn toml_overrides_defaults_and_rejects_typos() {
        let c = ServeConfig::from_toml(
            r#"
            listen = "127.0.0.1:19092"
            [broker]
            num_partitions = 3
            flush = { messages = 1000 }
            "#,
        )
        .unwrap();
        assert_eq!(c.listen.port(), 19092);
        assert_eq!(c.broker.num_partitions, 3);
        assert_eq!(c.broker.flush, FlushPolicy::Messages(1000));
        assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        let err = ServeConfig::from_toml("[broker]\nnum_partitionz = 3").unwrap_err().to_string();
        assert!(err.contains("num_partitionz"), "{err}");
        let every = ServeConfig::from_toml("[broker]\nflush = \"every-batch\"").unwrap();
        assert_eq!(every.broker.flush, FlushPolicy::EveryBatch);
    }

    #[test]
    fn batch_addresses_follow_the_documented_rule() {
        let single = ServeConfig::default();
        let a = single.batch_addresses(9092).unwrap();
        assert_eq!((a.listen, a.derived, a.peers.len()), ("127.0.0.1:9094".parse().unwrap(), true, 0));
        let mut cluster = ServeConfig::from_toml(
            r#"
            listen = "10.0.0.1:9092"
            voters = ["1@10.0.0.1:9093", "2@10.0.0.2:9093", "3@10.0.0.3:9093"]
            [broker]
            node_id = 1
            [batch]
            slots = 4
            peers = ["3@10.0.0.3:7000"]
            [batch.driver]
            worker_timeout_ms = 3000
            "#,
        )
        .unwrap();
        assert_eq!((cluster.batch.slots, cluster.batch.driver.worker_timeout_ms), (4, 3000));
        let a = cluster.batch_addresses(9092).unwrap();
        assert_eq!(a.listen, "10.0.0.1:9193".parse().unwrap());
        assert_eq!(a.peers[&2], "10.0.0.2:9193".parse().unwrap());
        assert_eq!(a.peers[&3], "10.0.0.3:7000".parse().unwrap());
        cluster.peer_listen = Some("0.0.0.0:9093".parse().unwrap());
        assert_eq!(cluster.batch_addresses(9092).unwrap().listen, "0.0.0.0:9193".parse().unwrap());
        cluster.batch_listen = Some("0.0.0.0:7000".parse().unwrap());
        let a = cluster.batch_addresses(9092).unwrap();
        assert_eq!((a.listen, a.derived), ("0.0.0.0:7000".parse().unwrap(), false));
        assert!(ServeConfig::from_toml("[batch]
slotz = 1").is_err());
    }

    #[test]
    fn retention_and_cleaner_settings() {
        let c = ServeConfig::from_toml(
            r#"
            [broker]
            log_retention_check_interval_ms = 500
            log_cleaner_step_bytes = 65536
            log_cleaner = { max_keys = 1000 }
            [broker.log]
            cleanup_policy = "compact,delete"
            retention_ms = 3600000
            retention_bytes = 1073741824
            delete_retention_ms = 0
            min_cleanable_dirty_ratio = 0.1
            "#,
        )
        .unwrap();
        let b = &c.broker;
        assert_eq!(b.log_retention_check_interval_ms, 500);
        assert_eq!(b.log.cleanup_policy, CleanupPolicy::CompactDelete);
        assert_eq!((b.log.retention_ms, b.log.retention_bytes, b.log.delete_retention_ms), (3_600_000, 1 << 30, 0));
        assert_eq!(b.log.min_cleanable_dirty_ratio.get(), 0.1);
        assert_eq!(b.log.segment_ms, 7 * 24 * 3600 * 1000, "unset keys keep Kafka's defaults");
        assert_eq!((b.log_cleaner.max_keys, b.log_cleaner.max_map_bytes), (1000, 128 << 20));
        for bad in [
            "[broker.log]\ncleanup_policy = \"compacted\"",
            "[broker.log]\nmin_cleanable_dirty_ratio = 2.0",
            "[broker.log]\nretention_hours = 1",
            "[broker]\nlog_cleaner = { max_kees = 1 }",
        ] {
            assert!(ServeConfig::from_toml(bad).is_err(), "{bad}");
        }
    }
}
