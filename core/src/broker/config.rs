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
        }
    }
}

/// Topic-level overrides a user may set at creation. Only settings that take
/// effect are accepted; anything else is rejected with INVALID_CONFIG.
pub const TOPIC_CONFIG_KEYS: [&str; 2] = ["max.message.bytes", "segment.bytes"];

/// Validated topic-level overrides.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicConfig {
    pub overrides: BTreeMap<String, String>,
}

impl TopicConfig {
    pub fn from_pairs(pairs: &[(String, Option<String>)]) -> Result<Self, String> {
        let mut overrides = BTreeMap::new();
        for (key, value) in pairs {
            let Some(value) = value else {
                return Err(format!("config {key} has no value"));
            };
            if !TOPIC_CONFIG_KEYS.contains(&key.as_str()) {
                return Err(format!(
                    "unknown or unsupported topic config {key}; supported: {}",
                    TOPIC_CONFIG_KEYS.join(", ")
                ));
            }
            let ok = match key.as_str() {
                "max.message.bytes" => value.parse::<i32>().is_ok_and(|v| v > 0),
                "segment.bytes" => value.parse::<u64>().is_ok_and(|v| v >= 14),
                _ => true,
            };
            if !ok {
                return Err(format!("invalid value {value:?} for config {key}"));
            }
            overrides.insert(key.clone(), value.clone());
        }
        Ok(Self { overrides })
    }

    pub fn max_message_bytes(&self, broker: &BrokerConfig) -> i32 {
        self.overrides.get("max.message.bytes").and_then(|v| v.parse().ok()).unwrap_or(broker.message_max_bytes)
    }

    pub fn log_config(&self, broker: &BrokerConfig) -> crate::log::LogConfig {
        let mut log = broker.log.clone();
        if let Some(v) = self.overrides.get("segment.bytes").and_then(|v| v.parse().ok()) {
            log.segment_bytes = v;
        }
        log
    }

    /// Every supported key with its effective value and whether it is the default.
    pub fn effective(&self, broker: &BrokerConfig) -> Vec<(String, String, bool)> {
        let log = self.log_config(broker);
        [
            ("max.message.bytes", self.max_message_bytes(broker).to_string()),
            ("segment.bytes", log.segment_bytes.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v, !self.overrides.contains_key(k)))
        .collect()
    }
}
