//! A topic: its persisted description and the live state of its partitions.

use serde::{Deserialize, Serialize};

use super::config::TopicConfig;
use super::producer_state::ProducerStates;
use crate::log::PartitionLog;
use crate::storage::{Storage, StorageError};

/// Kafka's limit on topic name length (so `name-partition` fits a file name).
pub const MAX_TOPIC_NAME_LEN: usize = 249;

/// Checks a topic name the way Kafka does: 1..=249 of `[a-zA-Z0-9._-]`, not
/// `.` or `..`.
pub fn validate_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("topic name is empty".into());
    }
    if name == "." || name == ".." {
        return Err(format!("topic name {name:?} is not allowed"));
    }
    if name.len() > MAX_TOPIC_NAME_LEN {
        return Err(format!("topic name is {} characters long; the limit is {MAX_TOPIC_NAME_LEN}", name.len()));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        return Err(format!("topic name {name:?} contains {c:?}; only ASCII letters, digits, '.', '_' and '-' are allowed"));
    }
    Ok(())
}

/// What is persisted about a topic, in `topics/<name>.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicMeta {
    pub name: String,
    pub topic_id: [u8; 16],
    pub partitions: i32,
    pub config: TopicConfig,
}

impl TopicMeta {
    pub fn file(name: &str) -> String {
        format!("topics/{name}.json")
    }

    /// Writes the description durably, behind a checksum.
    pub fn save<S: Storage + ?Sized>(&self, storage: &mut S) -> Result<(), StorageError> {
        let json = serde_json::to_vec_pretty(self).expect("topic metadata serializes");
        crate::storage::write_checked(storage, &Self::file(&self.name), &json)
    }
}

pub fn partition_dir(topic: &str, partition: i32) -> String {
    format!("{topic}-{partition}")
}

/// One partition's log and the state derived from it.
#[derive(Debug, Clone)]
pub struct Partition {
    pub log: PartitionLog,
    pub producers: ProducerStates,
    /// Log end offset at the last sync: what a crash cannot take away.
    pub durable_end: i64,
    /// Records appended since the last sync (for `FlushPolicy::Messages`).
    pub unflushed_records: u64,
}

#[derive(Debug, Clone)]
pub struct Topic {
    pub meta: TopicMeta,
    pub partitions: Vec<Partition>,
}
