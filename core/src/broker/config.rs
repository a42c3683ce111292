//! Broker and topic settings. Names follow Kafka's where a Kafka user would
//! look for them; defaults are documented in the book ("Running Millrace").

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::log::LogConfig;

/// When appended data is made durable, and so when `acks=1/all` are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FlushPolicy {
    /// fsync before acknowledging every produce (group-committed across the
    /// requests handled together). Nothing acknowledged is lost on a crash.
    EveryBatch,
    /// fsync once this many records were appended since the last one
    /// (Kafka's `flush.messages`). A crash may lose up to that many
    /// acknowledged records.
    Messages(u64),
    /// fsync every this many milliseconds (Kafka's `flush.ms`). A crash may
    /// lose what was acknowledged in the last interval.
    IntervalMs(u64),
}

impl FlushPolicy {
    /// Whether acknowledgements wait for the data to be durable.
    pub fn acks_wait_for_sync(self) -> bool {
        matches!(self, FlushPolicy::EveryBatch)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    pub node_id: i32,
    /// Host and port given to clients in Metadata responses.
    pub advertised_host: String,
    pub advertised_port: i32,
    pub cluster_id: String,
    /// Kafka's `auto.create.topics.enable`: Metadata and Produce for an
    /// unknown topic create it with `num_partitions` partitions.
    pub auto_create_topics: bool,
    /// Kafka's `num.partitions`: partitions of auto-created topics and of
    /// CreateTopics requests that ask for the default (-1).
    pub num_partitions: i32,
    pub flush: FlushPolicy,
    /// Kafka's `message.max.bytes`: the largest batch a topic accepts unless
    /// the topic overrides it with `max.message.bytes`.
    pub message_max_bytes: i32,
    /// Kafka's `log.segment.bytes` and `log.index.interval.bytes`.
    pub log: LogConfig,
    /// Decode every record of every produced batch (decompressing it) to
    /// reject malformed records before they are stored, as Kafka does.
    pub validate_records: bool,
    /// Upper bound on partitions per topic, against typos like 100000.
    pub max_partitions_per_topic: i32,
    /// The group coordinator's settings (`[broker.group]` in TOML).
    pub group: crate::group::GroupConfig,
    /// Kafka's `log.retention.check.interval.ms`: how often retention runs
    /// and compaction looks for dirty logs.
    pub log_retention_check_interval_ms: i64,
    /// Work per log-cleaner step: bytes read and written, plus the records
    /// of compressed batches. One step runs per timer tick, between
    /// requests, so this bounds the pause it causes (Kafka's
    /// `log.cleaner.io.buffer.size` default, 512 KiB).
    pub log_cleaner_step_bytes: u64,
    /// Bounds of the cleaner's key map (Kafka's `log.cleaner.dedupe.buffer.size`).
    pub log_cleaner: crate::log::CleanerLimits,
    /// Kafka's `min.insync.replicas` default for topics.
    pub min_insync_replicas: i32,
    /// Set: this node is one of a replicated cluster (`[broker.cluster]`).
    /// Unset: a single node that leads every partition.
    pub cluster: Option<ClusterConfig>,
}

/// A cluster node's settings. Every node is a controller voter and a
/// broker (KRaft's combined mode). Defaults aim at leader failover within
/// two seconds: a broker heard from for 1.5 s is fenced, a controller
/// silent for 0.3–0.6 s is replaced (a split vote costs one more such
/// wait), and a new controller gives live brokers 0.5 s (two heartbeats)
/// to find it before it fences the silent ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// Every node of the controller quorum by id, this node included.
    pub voters: Vec<i32>,
    pub election_timeout_min_ms: i64,
    pub election_timeout_max_ms: i64,
    pub raft_heartbeat_interval_ms: i64,
    /// Kafka's `broker.session.timeout.ms` and `broker.heartbeat.interval.ms`.
    pub broker_session_timeout_ms: i64,
    pub broker_heartbeat_interval_ms: i64,
    pub new_controller_grace_ms: i64,
    /// Kafka's `replica.lag.time.max.ms`.
    pub replica_lag_time_max_ms: i64,
    /// Kafka's `replica.fetch.wait.max.ms` and `replica.fetch.max.bytes`.
    pub replica_fetch_wait_max_ms: i64,
    pub replica_fetch_max_bytes: i32,
    /// How long a call to the controller or a replica fetch may go
    /// unanswered before it is given up (a lost message) and retried.
    pub request_timeout_ms: i64,
    /// Kafka's `default.replication.factor` (capped at the live brokers).
    pub default_replication_factor: i16,
    /// Kafka's `unclean.leader.election.enable` for topics that do not set
    /// it: off, so an out-of-sync replica never leads (no acknowledged
    /// record lost) and a partition whose in-sync replicas are all down
    /// stays offline until one returns.
    pub unclean_leader_election: bool,
    /// Applied metadata records between two snapshots of the metadata
    /// image (the Raft log is compacted to it; 0: never).
    pub metadata_snapshot_every: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            voters: Vec::new(),
            election_timeout_min_ms: 300,
            election_timeout_max_ms: 600,
            raft_heartbeat_interval_ms: 100,
            broker_session_timeout_ms: 1_500,
            broker_heartbeat_interval_ms: 250,
            new_controller_grace_ms: 500,
            replica_lag_time_max_ms: 10_000,
            replica_fetch_wait_max_ms: 500,
            replica_fetch_max_bytes: 1 << 20,
            request_timeout_ms: 3_000,
            default_replication_factor: 3,
            unclean_leader_election: false,
            metadata_snapshot_every: 1_000,
        }
    }
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            node_id: 0,
            advertised_host: "127.0.0.1".into(),
            advertised_port: 9092,
            cluster_id: "millrace".into(),
            auto_create_topics: true,
            num_partitions: 1,
            flush: FlushPolicy::EveryBatch,
            message_max_bytes: 1_048_588,
            log: LogConfig::default(),
            validate_records: true,
            max_partitions_per_topic: 10_000,
            group: crate::group::GroupConfig::default(),
            log_retention_check_interval_ms: 300_000,
            log_cleaner_step_bytes: 512 << 10,
            log_cleaner: crate::log::CleanerLimits::default(),
            min_insync_replicas: 1,
            cluster: None,
        }
    }
}

/// Topic-level overrides a user may set at creation or alter later. Only
/// settings that take effect are accepted; anything else is rejected with
/// INVALID_CONFIG.
pub const TOPIC_CONFIG_KEYS: [&str; 11] = [
    "cleanup.policy",
    "delete.retention.ms",
    "max.message.bytes",
    "min.cleanable.dirty.ratio",
    "min.compaction.lag.ms",
    "min.insync.replicas",
    "retention.bytes",
    "retention.ms",
    "segment.bytes",
    "segment.ms",
    "unclean.leader.election.enable",
];

/// Validated topic-level overrides (stored as given, normalised).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicConfig {
    pub overrides: BTreeMap<String, String>,
}

/// Checks that `key` is a topic config Millrace applies.
pub fn check_topic_config_key(key: &str) -> Result<(), String> {
    if TOPIC_CONFIG_KEYS.contains(&key) {
        return Ok(());
    }
    Err(format!("unknown or unsupported topic config {key}; supported: {}", TOPIC_CONFIG_KEYS.join(", ")))
}

/// Checks one topic config value; returns it normalised.
pub fn validate_topic_config(key: &str, value: &str) -> Result<String, String> {
    check_topic_config_key(key)?;
    let int_at_least = |min: i64| value.trim().parse::<i64>().ok().filter(|v| *v >= min).map(|v| v.to_string());
    let (normal, rule) = match key {
        "max.message.bytes" => (value.parse::<i32>().ok().filter(|v| *v > 0).map(|v| v.to_string()), "an integer > 0"),
        "segment.bytes" => (value.parse::<u64>().ok().filter(|v| *v >= 14).map(|v| v.to_string()), "an integer >= 14"),
        "cleanup.policy" => (
            crate::log::CleanupPolicy::parse(value).map(|p| p.name().to_string()),
            "delete, compact or \"compact,delete\"",
        ),
        "retention.ms" | "retention.bytes" => (int_at_least(-1), "an integer >= -1 (-1: no limit)"),
        "delete.retention.ms" | "min.compaction.lag.ms" => (int_at_least(0), "an integer >= 0"),
        "segment.ms" | "min.insync.replicas" => (int_at_least(1), "an integer >= 1"),
        "unclean.leader.election.enable" => {
            (matches!(value.trim(), "true" | "false").then(|| value.trim().to_string()), "true or false")
        }
        "min.cleanable.dirty.ratio" => (
            value.trim().parse::<f64>().ok().and_then(crate::log::Ratio::new).map(|r| r.get().to_string()),
            "a number between 0 and 1",
        ),
        _ => (Some(value.to_string()), ""),
    };
    normal.ok_or_else(|| format!("invalid value {value:?} for config {key}: must be {rule}"))
}

impl TopicConfig {
    pub fn from_pairs(pairs: &[(String, Option<String>)]) -> Result<Self, String> {
        let mut overrides = BTreeMap::new();
        for (key, value) in pairs {
            let Some(value) = value else {
                return Err(format!("config {key} has no value"));
            };
            overrides.insert(key.clone(), validate_topic_config(key, value)?);
        }
        Ok(Self { overrides })
    }

    /// Kafka's `min.insync.replicas`: the ISR size below which `acks=all`
    /// writes are refused.
    pub fn min_insync_replicas(&self, broker: &BrokerConfig) -> usize {
        let v = self.overrides.get("min.insync.replicas").and_then(|v| v.parse::<i64>().ok());
        v.unwrap_or(i64::from(broker.min_insync_replicas)).max(1) as usize
    }

    pub fn max_message_bytes(&self, broker: &BrokerConfig) -> i32 {
        self.overrides.get("max.message.bytes").and_then(|v| v.parse().ok()).unwrap_or(broker.message_max_bytes)
    }

    /// The broker's log defaults with this topic's overrides applied.
    pub fn log_config(&self, broker: &BrokerConfig) -> crate::log::LogConfig {
        let mut log = broker.log.clone();
        let get = |k: &str| self.overrides.get(k);
        let int = |k: &str| get(k).and_then(|v| v.parse::<i64>().ok());
        if let Some(v) = get("segment.bytes").and_then(|v| v.parse().ok()) {
            log.segment_bytes = v;
        }
        if let Some(v) = get("cleanup.policy").and_then(|v| crate::log::CleanupPolicy::parse(v)) {
            log.cleanup_policy = v;
        }
        if let Some(v) = get("min.cleanable.dirty.ratio").and_then(|v| v.parse().ok()).and_then(crate::log::Ratio::new) {
            log.min_cleanable_dirty_ratio = v;
        }
        for (key, field) in [
            ("retention.ms", &mut log.retention_ms),
            ("retention.bytes", &mut log.retention_bytes),
            ("delete.retention.ms", &mut log.delete_retention_ms),
            ("min.compaction.lag.ms", &mut log.min_compaction_lag_ms),
            ("segment.ms", &mut log.segment_ms),
        ] {
            if let Some(v) = int(key) {
                *field = v;
            }
        }
        log
    }

    /// Every supported key with its effective value and whether it is the default.
    pub fn effective(&self, broker: &BrokerConfig) -> Vec<(String, String, bool)> {
        let log = self.log_config(broker);
        [
            ("cleanup.policy", log.cleanup_policy.name().to_string()),
            ("delete.retention.ms", log.delete_retention_ms.to_string()),
            ("max.message.bytes", self.max_message_bytes(broker).to_string()),
            ("min.cleanable.dirty.ratio", log.min_cleanable_dirty_ratio.get().to_string()),
            ("min.compaction.lag.ms", log.min_compaction_lag_ms.to_string()),
            ("min.insync.replicas", self.min_insync_replicas(broker).to_string()),
            ("retention.bytes", log.retention_bytes.to_string()),
            ("retention.ms", log.retention_ms.to_string()),
            ("segment.bytes", log.segment_bytes.to_string()),
            ("segment.ms", log.segment_ms.to_string()),
            (
                "unclean.leader.election.enable",
                self.overrides
                    .get("unclean.leader.election.enable")
                    .cloned()
                    .unwrap_or_else(|| broker.cluster.as_ref().is_some_and(|c| c.unclean_leader_election).to_string()),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v, !self.overrides.contains_key(k)))
        .collect()
    }
}
