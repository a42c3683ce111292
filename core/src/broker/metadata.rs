//! Metadata: the brokers, and each topic's partitions with their leader.
//! On one node every partition is led by this node at epoch 0.

use super::{Broker, BrokerInfo, MetadataRequest, MetadataResponse, NewTopic, PartitionMetadata, TopicMetadata};
use crate::ErrorCode;
use crate::storage::Storage;

impl<S: Storage> Broker<S> {
    pub(super) fn metadata(&mut self, req: MetadataRequest) -> MetadataResponse {
        let names: Vec<String> = match req.topics {
            None => self.topics.keys().cloned().collect(),
            Some(names) => names,
        };
        let mut topics = Vec::with_capacity(names.len());
        for name in names {
            if !self.topics.contains_key(&name) && req.allow_auto_topic_creation && self.config.auto_create_topics {
                let new = if super::groups::is_internal_topic(&name) {
                    super::groups::offsets_topic(&self.config)
                } else {
                    NewTopic {
                        name: name.clone(),
                        num_partitions: -1,
                        replication_factor: -1,
                        has_assignments: false,
                        configs: Vec::new(),
                    }
                };
                let created = self.create_topic(&new, false);
                if created.error != ErrorCode::None && created.error != ErrorCode::TopicAlreadyExists {
                    topics.push(TopicMetadata { name, error: created.error, topic_id: [0; 16], is_internal: false, partitions: Vec::new() });
                    continue;
                }
            }
            topics.push(self.topic_metadata(&name));
        }
        let node = self.config.node_id;
        MetadataResponse {
            brokers: vec![BrokerInfo {
                node_id: node,
                host: self.config.advertised_host.clone(),
                port: self.config.advertised_port,
            }],
            cluster_id: self.config.cluster_id.clone(),
            controller_id: node,
            topics,
        }
    }

    fn topic_metadata(&self, name: &str) -> TopicMetadata {
        let Some(t) = self.topics.get(name) else {
            let error = if super::topic::validate_topic_name(name).is_ok() {
                ErrorCode::UnknownTopicOrPartition
            } else {
                ErrorCode::InvalidTopicException
            };
            return TopicMetadata { name: name.to_string(), error, topic_id: [0; 16], is_internal: false, partitions: Vec::new() };
        };
        let node = self.config.node_id;
        let partitions = (0..t.meta.partitions)
            .map(|p| PartitionMetadata {
                partition: p,
                error: ErrorCode::None,
                leader: node,
                leader_epoch: 0,
                replicas: vec![node],
                isr: vec![node],
            })
            .collect();
        TopicMetadata {
            name: name.to_string(),
            error: ErrorCode::None,
            topic_id: t.meta.topic_id,
            is_internal: super::groups::is_internal_topic(name),
            partitions,
        }
    }
}
