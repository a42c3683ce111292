//! AlterConfigs and IncrementalAlterConfigs: change a topic's overrides,
//! durably, and apply them to its partition logs at once.

use std::collections::BTreeMap;

use super::config::{TopicConfig, check_topic_config_key, validate_topic_config};
use super::{
    AlterConfigsRequest, AlterConfigsResource, AlterConfigsResponse, AlterConfigsResult, AlterOp, Broker, RESOURCE_BROKER,
    RESOURCE_TOPIC,
};
use crate::ErrorCode;
use crate::log::CleanupPolicy;
use crate::storage::Storage;

type Failure = (ErrorCode, String);

impl<S: Storage> Broker<S> {
    /// `incremental` picks IncrementalAlterConfigs' semantics (apply each
    /// operation) over AlterConfigs' (the entries replace every override).
    pub(super) fn alter_configs(&mut self, req: AlterConfigsRequest, incremental: bool) -> AlterConfigsResponse {
        let mut seen = BTreeMap::new();
        for r in &req.resources {
            *seen.entry((r.resource_type, r.resource_name.clone())).or_insert(0) += 1;
        }
        let results = req
            .resources
            .iter()
            .map(|r| {
                let outcome = if seen[&(r.resource_type, r.resource_name.clone())] > 1 {
                    Err((ErrorCode::InvalidRequest, "resource named more than once in the request".to_string()))
                } else {
                    match r.resource_type {
                        RESOURCE_TOPIC => self.alter_topic(r, incremental, req.validate_only),
                        RESOURCE_BROKER => Err((
                            ErrorCode::InvalidRequest,
                            "broker configs are static on Millrace; set them in the server's config file".to_string(),
                        )),
                        other => Err((ErrorCode::InvalidRequest, format!("unsupported config resource type {other}"))),
                    }
                };
                let (error, error_message) = match outcome {
                    Ok(()) => (ErrorCode::None, None),
                    Err((code, message)) => (code, Some(message)),
                };
                AlterConfigsResult {
                    resource_type: r.resource_type,
                    resource_name: r.resource_name.clone(),
                    error,
                    error_message,
                }
            })
            .collect();
        AlterConfigsResponse { results }
    }

    fn alter_topic(&mut self, r: &AlterConfigsResource, incremental: bool, validate_only: bool) -> Result<(), Failure> {
        let name = &r.resource_name;
        if super::groups::is_internal_topic(name) {
            // Its compaction is what keeps committed offsets: not negotiable.
            return Err((ErrorCode::InvalidRequest, format!("the configs of internal topic {name} cannot be changed")));
        }
        let Some(topic) = self.topics.get(name) else {
            return Err((ErrorCode::UnknownTopicOrPartition, format!("unknown topic {name}")));
        };
        let current = &topic.meta.config.overrides;
        let mut overrides = if incremental { current.clone() } else { BTreeMap::new() };
        let effective = topic.meta.config.log_config(&self.config).cleanup_policy;
        for (key, op, value) in &r.configs {
            let op = op.ok_or_else(|| (ErrorCode::InvalidRequest, format!("unknown operation for config {key}")))?;
            apply(&mut overrides, key, op, value.as_deref(), effective).map_err(|m| (ErrorCode::InvalidConfig, m))?;
        }
        if validate_only {
            return Ok(());
        }
        let topic = self.topics.get_mut(name).expect("looked up above");
        let previous = std::mem::replace(&mut topic.meta.config, TopicConfig { overrides });
        if let Err(e) = topic.meta.save(&mut self.storage) {
            topic.meta.config = previous;
            return Err((ErrorCode::KafkaStorageError, e.to_string()));
        }
        let log_config = topic.meta.config.log_config(&self.config);
        for p in &mut topic.partitions {
            p.log.set_config(log_config.clone());
        }
        Ok(())
    }
}

/// Applies one operation to a topic's overrides.
fn apply(
    overrides: &mut BTreeMap<String, String>,
    key: &str,
    op: AlterOp,
    value: Option<&str>,
    effective_policy: CleanupPolicy,
) -> Result<(), String> {
    match op {
        AlterOp::Delete => {
            check_topic_config_key(key)?;
            overrides.remove(key);
        }
        AlterOp::Set => {
            let value = value.ok_or_else(|| format!("config {key} has no value"))?;
            overrides.insert(key.to_string(), validate_topic_config(key, value)?);
        }
        AlterOp::Append | AlterOp::Subtract => {
            // cleanup.policy is Kafka's one list-valued topic config here.
            if key != "cleanup.policy" {
                return Err(format!("config {key} is not a list; APPEND and SUBTRACT apply only to cleanup.policy"));
            }
            let value = value.ok_or_else(|| format!("config {key} has no value"))?;
            let current = overrides.get(key).and_then(|v| CleanupPolicy::parse(v)).unwrap_or(effective_policy);
            let mut items: Vec<&str> = current.name().split(',').collect();
            for item in value.split(',').map(str::trim) {
                if CleanupPolicy::parse(item).is_none() {
                    return Err(format!("invalid value {item:?} for config {key}: must be delete or compact"));
                }
                if op == AlterOp::Append && !items.contains(&item) {
                    items.push(item);
                }
                if op == AlterOp::Subtract {
                    items.retain(|i| *i != item);
                }
            }
            let joined = items.join(",");
            overrides.insert(key.to_string(), validate_topic_config(key, &joined)?);
        }
    }
    Ok(())
}
