//! A topic: its persisted description and the live state of its partitions.

use serde::{Deserialize, Serialize};

use super::config::TopicConfig;
use super::producer_state::ProducerStates;
use crate::log::PartitionLog;
use crate::replication::EpochCache;
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
    /// Where each leader epoch begins, read back from the batch headers
    /// (each batch carries the epoch of the leader that wrote it).
    pub epochs: EpochCache,
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

impl Partition {
    /// Opens (recovering) the log in `dir` and rebuilds the state derived
    /// from it; `on_batch` also sees every batch header.
    pub fn open<S: Storage + ?Sized>(
        storage: &mut S,
        dir: &str,
        config: crate::log::LogConfig,
        on_batch: &mut dyn FnMut(&crate::records::BatchHeader),
    ) -> Result<(Self, crate::log::Recovery), StorageError> {
        let mut producers = ProducerStates::default();
        let mut epochs = EpochCache::default();
        let (log, recovery) = PartitionLog::open(storage, dir, config, &mut |h| {
            producers.record(h);
            // A batch of an older epoch after a newer one cannot come from
            // a correct leader; the cache keeps the first claim.
            let _ = epochs.assign(h.partition_leader_epoch, h.base_offset);
            on_batch(h);
        })?;
        let durable_end = log.log_end_offset();
        Ok((Self { log, producers, epochs, durable_end, unflushed_records: 0 }, recovery))
    }

    /// Rebuilds the producer state and epoch cache from the log as it is
    /// now (after a follower cut its log, both may name removed batches).
    pub fn rebuild<S: Storage + ?Sized>(&mut self, storage: &mut S) -> Result<(), StorageError> {
        let config = self.log.config().clone();
        let dir = self.log.dir().to_string();
        let (fresh, _) = Self::open(storage, &dir, config, &mut |_| {})?;
        let unflushed = self.unflushed_records;
        *self = fresh;
        self.unflushed_records = unflushed;
        Ok(())
    }
}
