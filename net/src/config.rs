//! `millrace serve` settings: embedded defaults, then a TOML file, then
//! command-line flags, each overriding the one before.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use millrace_core::broker::BrokerConfig;
use serde::Deserialize;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:9092";
pub const DEFAULT_DATA_DIR: &str = "./millrace-data";

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
    pub broker: BrokerConfig,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.parse().expect("valid default address"),
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            advertised: None,
            voters: Vec::new(),
            peer_listen: None,
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
