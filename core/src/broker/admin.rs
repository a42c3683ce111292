//! CreateTopics, DeleteTopics and DescribeConfigs.

use std::collections::BTreeMap;

use super::config::TopicConfig;
use super::topic::{Partition, Topic, TopicMeta, partition_dir, validate_topic_name};
use super::{
    Broker, ConfigEntry, CreateTopicResult, CreateTopicsRequest, CreateTopicsResponse, DeleteTopicsRequest,
    DeleteTopicsResponse, DescribeConfigsRequest, DescribeConfigsResponse, DescribeConfigsResult, Effect, NewTopic,
    RESOURCE_BROKER, RESOURCE_TOPIC,
};
use crate::storage::Storage;
use crate::{ErrorCode, Millis};

impl<S: Storage> Broker<S> {
    pub(super) fn create_topics(&mut self, req: CreateTopicsRequest) -> CreateTopicsResponse {
        let mut seen = BTreeMap::new();
        for t in &req.topics {
            *seen.entry(t.name.clone()).or_insert(0) += 1;
        }
        let topics = req
            .topics
            .iter()
            .map(|t| {
                if seen[&t.name] > 1 {
                    return CreateTopicResult::error(t, ErrorCode::InvalidRequest, "topic named more than once in the request");
                }
                if super::groups::is_internal_topic(&t.name) {
                    return CreateTopicResult::error(t, ErrorCode::InvalidTopicException, "the name is reserved for an internal topic");
                }
                self.create_topic(t, req.validate_only)
            })
            .collect();
        CreateTopicsResponse { topics }
    }

    /// Validates and (unless `validate_only`) creates one topic durably.
    pub(super) fn create_topic(&mut self, t: &NewTopic, validate_only: bool) -> CreateTopicResult {
        if let Err(msg) = validate_topic_name(&t.name) {
            return CreateTopicResult::error(t, ErrorCode::InvalidTopicException, msg);
        }
        if self.topics.contains_key(&t.name) {
            return CreateTopicResult::error(t, ErrorCode::TopicAlreadyExists, format!("topic {} already exists", t.name));
        }
        if t.has_assignments {
            return CreateTopicResult::error(
                t,
                ErrorCode::InvalidReplicaAssignment,
                "explicit replica assignments are not supported on a single node",
            );
        }
        let partitions = if t.num_partitions == -1 { self.config.num_partitions } else { t.num_partitions };
        if partitions < 1 || partitions > self.config.max_partitions_per_topic {
            return CreateTopicResult::error(
                t,
                ErrorCode::InvalidPartitions,
                format!("number of partitions must be 1..={}, got {partitions}", self.config.max_partitions_per_topic),
            );
        }
        if !matches!(t.replication_factor, -1 | 1) {
            return CreateTopicResult::error(
                t,
                ErrorCode::InvalidReplicationFactor,
                format!("replication factor {} is larger than the 1 available broker", t.replication_factor),
            );
        }
        let config = match TopicConfig::from_pairs(&t.configs) {
            Ok(c) => c,
            Err(msg) => return CreateTopicResult::error(t, ErrorCode::InvalidConfig, msg),
        };
        let meta = TopicMeta { name: t.name.clone(), topic_id: self.rng.bytes16(), partitions, config };
        let configs = self.config_entries(&meta.config);
        if !validate_only
            && let Err(e) = self.materialize_topic(&meta) {
                return CreateTopicResult::error(t, ErrorCode::KafkaStorageError, e.to_string());
            }
        CreateTopicResult {
            name: t.name.clone(),
            error: ErrorCode::None,
            error_message: None,
            topic_id: meta.topic_id,
            num_partitions: partitions,
            replication_factor: 1,
            configs,
        }
    }

    /// Clears leftovers of an earlier topic of the same name, writes the
    /// description durably, and opens empty partition logs.
    pub(super) fn materialize_topic(&mut self, meta: &TopicMeta) -> Result<(), crate::storage::StorageError> {
        for p in 0..meta.partitions {
            for file in self.storage.list(&format!("{}/", partition_dir(&meta.name, p)))? {
                self.storage.remove(&file)?;
            }
        }
        meta.save(&mut self.storage)?;
        let mut partitions = Vec::with_capacity(meta.partitions as usize);
        for p in 0..meta.partitions {
            let (partition, _) =
                Partition::open(&mut self.storage, &partition_dir(&meta.name, p), meta.config.log_config(&self.config), &mut |_| {})?;
            partitions.push(partition);
        }
        self.topics.insert(meta.name.clone(), Topic { meta: meta.clone(), partitions });
        Ok(())
    }

    pub(super) fn delete_topics(&mut self, now: Millis, req: DeleteTopicsRequest, out: &mut Vec<Effect>) -> DeleteTopicsResponse {
        let mut topics = Vec::with_capacity(req.names.len());
        for name in req.names {
            if super::groups::is_internal_topic(&name) {
                topics.push((name, ErrorCode::InvalidTopicException, Some("internal topics cannot be deleted".into())));
                continue;
            }
            if !self.topics.contains_key(&name) {
                topics.push((name, ErrorCode::UnknownTopicOrPartition, None));
                continue;
            }
            match self.remove_topic(now, &name, out) {
                Ok(()) => topics.push((name, ErrorCode::None, None)),
                Err(e) => topics.push((name, ErrorCode::KafkaStorageError, Some(e))),
            }
        }
        DeleteTopicsResponse { topics }
    }

    /// Deletes a local topic's description and logs; fetches waiting on it
    /// are answered and its committed offsets dropped.
    pub(super) fn remove_topic(&mut self, now: Millis, name: &str, out: &mut Vec<Effect>) -> Result<(), String> {
        let Some(topic) = self.topics.remove(name) else { return Ok(()) };
        self.forget_syncs(name, None);
        // The description goes first: a crash part-way leaves orphan
        // files (reported on open), never a topic with missing data.
        let mut result = self.storage.remove(&TopicMeta::file(name)).map_err(|e| e.to_string());
        let count = topic.partitions.len() as i32;
        for p in topic.partitions {
            if let Err(e) = p.log.delete(&mut self.storage) {
                result = Err(e.to_string());
            }
        }
        let touched: Vec<(String, i32)> = (0..count).map(|p| (name.to_string(), p)).collect();
        self.wake_parked(now, &touched, out);
        self.group_step(now, crate::group::GroupInput::TopicDeleted { topic: name.to_string() }, out);
        result
    }

    pub(super) fn describe_configs(&mut self, req: DescribeConfigsRequest) -> DescribeConfigsResponse {
        let results = req
            .resources
            .into_iter()
            .map(|(resource_type, name, keys)| {
                let mut result = DescribeConfigsResult {
                    resource_type,
                    resource_name: name.clone(),
                    error: ErrorCode::None,
                    error_message: None,
                    configs: Vec::new(),
                };
                let all = match resource_type {
                    RESOURCE_TOPIC => match self.topics.get(&name) {
                        Some(t) => self.config_entries(&t.meta.config),
                        None => {
                            result.error = ErrorCode::UnknownTopicOrPartition;
                            result.error_message = Some(format!("unknown topic {name}"));
                            return result;
                        }
                    },
                    RESOURCE_BROKER => self.broker_config_entries(),
                    other => {
                        result.error = ErrorCode::InvalidRequest;
                        result.error_message = Some(format!("unsupported config resource type {other}"));
                        return result;
                    }
                };
                result.configs = match keys {
                    None => all,
                    Some(keys) => all.into_iter().filter(|e| keys.contains(&e.name)).collect(),
                };
                result
            })
            .collect();
        DescribeConfigsResponse { results }
    }

    fn config_entries(&self, config: &TopicConfig) -> Vec<ConfigEntry> {
        config
            .effective(&self.config)
            .into_iter()
            .map(|(name, value, is_default)| ConfigEntry { name, value: Some(value), read_only: false, is_default })
            .collect()
    }

    fn broker_config_entries(&self) -> Vec<ConfigEntry> {
        let c = &self.config;
        let flush = match c.flush {
            super::FlushPolicy::EveryBatch => "every-batch".to_string(),
            super::FlushPolicy::Messages(n) => format!("messages:{n}"),
            super::FlushPolicy::IntervalMs(ms) => format!("interval-ms:{ms}"),
        };
        [
            ("auto.create.topics.enable", c.auto_create_topics.to_string()),
            ("num.partitions", c.num_partitions.to_string()),
            ("message.max.bytes", c.message_max_bytes.to_string()),
            ("log.segment.bytes", c.log.segment_bytes.to_string()),
            ("log.index.interval.bytes", c.log.index_interval_bytes.to_string()),
            ("log.roll.ms", c.log.segment_ms.to_string()),
            ("log.cleanup.policy", c.log.cleanup_policy.name().to_string()),
            ("log.retention.ms", c.log.retention_ms.to_string()),
            ("log.retention.bytes", c.log.retention_bytes.to_string()),
            ("log.retention.check.interval.ms", c.log_retention_check_interval_ms.to_string()),
            ("log.cleaner.delete.retention.ms", c.log.delete_retention_ms.to_string()),
            ("log.cleaner.min.compaction.lag.ms", c.log.min_compaction_lag_ms.to_string()),
            ("log.cleaner.min.cleanable.ratio", c.log.min_cleanable_dirty_ratio.get().to_string()),
            ("millrace.flush.policy", flush),
        ]
        .into_iter()
        .map(|(k, v)| ConfigEntry { name: k.into(), value: Some(v), read_only: true, is_default: false })
        .collect()
    }
}

impl CreateTopicResult {
    pub(super) fn error(t: &NewTopic, error: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            name: t.name.clone(),
            error,
            error_message: Some(message.into()),
            topic_id: [0; 16],
            num_partitions: -1,
            replication_factor: -1,
            configs: Vec::new(),
        }
    }
}
