//! The client APIs that change or describe the cluster's metadata, in
//! cluster mode: Metadata answers from the committed image (routing
//! clients to partition leaders), CreateTopics and DeleteTopics become
//! calls to the active controller.

use super::super::config::TopicConfig;
use super::super::topic::validate_topic_name;
use super::super::{
    Broker, BrokerInfo, Coordinator, CreateTopicResult, FindCoordinatorRequest, FindCoordinatorResponse, CreateTopicsRequest, CreateTopicsResponse, DeleteTopicsRequest, DeleteTopicsResponse,
    Effect, MetadataRequest, MetadataResponse, NewTopic, PartitionMetadata, RequestId, Response, TopicMetadata,
};
use super::super::groups::OFFSETS_TOPIC;
use super::{AdminKind, CallPurpose, PendingAdmin};
use crate::controller::{ControllerReply, ControllerRequest};
use crate::storage::Storage;
use crate::{ErrorCode, Millis};

impl<S: Storage> Broker<S> {
    pub(in crate::broker) fn cluster_metadata(&mut self, now: Millis, req: MetadataRequest, out: &mut Vec<Effect>) -> MetadataResponse {
        let c = self.cluster_ref();
        let image = c.controller.image();
        let names: Vec<String> = req.topics.clone().unwrap_or_else(|| image.topics.keys().cloned().collect());
        let mut brokers: Vec<BrokerInfo> = image
            .brokers
            .iter()
            .filter(|(_, b)| !b.fenced)
            .map(|(id, b)| BrokerInfo { node_id: *id, host: b.host.clone(), port: b.port })
            .collect();
        let me = c.me;
        if !brokers.iter().any(|b| b.node_id == me) {
            // A client must always be able to reach the node it asked.
            brokers.push(BrokerInfo { node_id: me, host: self.config.advertised_host.clone(), port: self.config.advertised_port });
        }
        // As KRaft brokers do, name this node as the controller: it
        // forwards admin requests to the active one. Naming a node a client
        // has not seen in the broker list (it may not have registered yet)
        // makes librdkafka hold admin requests forever.
        let controller_id = me;
        let mut topics = Vec::with_capacity(names.len());
        let mut create = Vec::new();
        for name in names {
            let Some(t) = c.controller.image().topics.get(&name) else {
                let valid = validate_topic_name(&name).is_ok();
                let auto = valid && req.allow_auto_topic_creation && self.config.auto_create_topics;
                let error = match (valid, auto) {
                    (false, _) => ErrorCode::InvalidTopicException,
                    // Kafka's answer while an auto-created topic is on its way.
                    (true, true) => ErrorCode::LeaderNotAvailable,
                    (true, false) => ErrorCode::UnknownTopicOrPartition,
                };
                if auto {
                    create.push(name.clone());
                }
                topics.push(TopicMetadata { name, error, topic_id: [0; 16], is_internal: false, partitions: Vec::new() });
                continue;
            };
            let partitions = t
                .partitions
                .iter()
                .enumerate()
                .map(|(i, p)| PartitionMetadata {
                    partition: i as i32,
                    error: if p.leader.is_some() { ErrorCode::None } else { ErrorCode::LeaderNotAvailable },
                    leader: p.leader.unwrap_or(-1),
                    leader_epoch: p.leader_epoch,
                    replicas: p.replicas.clone(),
                    isr: p.isr.clone(),
                })
                .collect();
            let is_internal = super::super::groups::is_internal_topic(&name);
            topics.push(TopicMetadata { name, error: ErrorCode::None, topic_id: t.topic_id, is_internal, partitions });
        }
        let cluster_id = self.config.cluster_id.clone();
        for name in create {
            let topic = if super::super::groups::is_internal_topic(&name) {
                super::super::groups::offsets_topic(&self.config)
            } else {
                NewTopic { name, num_partitions: -1, replication_factor: -1, has_assignments: false, configs: Vec::new() }
            };
            if let Ok(request) = self.create_request(&topic) {
                self.call_controller(now, CallPurpose::AutoCreate, request, out);
            }
        }
        MetadataResponse { brokers, cluster_id, controller_id, topics }
    }

    /// FindCoordinator: the leader of the offsets partition coordinates
    /// every group. Until that topic exists (it is created on first ask)
    /// or has a leader, COORDINATOR_NOT_AVAILABLE makes clients retry.
    pub(in crate::broker) fn cluster_find_coordinator(&mut self, now: Millis, r: FindCoordinatorRequest, out: &mut Vec<Effect>) -> FindCoordinatorResponse {
        let image = self.cluster_ref().controller.image();
        let exists = image.topics.contains_key(OFFSETS_TOPIC);
        let leader = image
            .partition(OFFSETS_TOPIC, 0)
            .and_then(|p| p.leader)
            .and_then(|l| image.brokers.get(&l).map(|b| (l, b.host.clone(), b.port)));
        let coordinators = r
            .keys
            .into_iter()
            .map(|key| {
                let refused = |error: ErrorCode, message: &str| Coordinator {
                    key: key.clone(),
                    error,
                    error_message: Some(message.to_string()),
                    node_id: -1,
                    host: String::new(),
                    port: -1,
                };
                match (r.key_type, &leader) {
                    (0, _) if key.is_empty() => refused(ErrorCode::InvalidGroupId, "empty group id"),
                    (0, Some((node, host, port))) => {
                        Coordinator { key: key.clone(), error: ErrorCode::None, error_message: None, node_id: *node, host: host.clone(), port: *port }
                    }
                    (0, None) => refused(ErrorCode::CoordinatorNotAvailable, "the offsets topic has no leader yet"),
                    (1, _) => refused(ErrorCode::CoordinatorNotAvailable, "transactions are not supported"),
                    (t, _) => refused(ErrorCode::InvalidRequest, &format!("unknown coordinator key type {t}")),
                }
            })
            .collect();
        if !exists
            && let Ok(request) = self.create_request(&super::super::groups::offsets_topic(&self.config))
        {
            self.call_controller(now, CallPurpose::AutoCreate, request, out);
        }
        FindCoordinatorResponse { coordinators }
    }

    /// Checks a new topic here and turns it into the controller's request.
    pub(in crate::broker) fn create_request(&mut self, t: &NewTopic) -> Result<ControllerRequest, (ErrorCode, String)> {
        validate_topic_name(&t.name).map_err(|m| (ErrorCode::InvalidTopicException, m))?;
        if t.has_assignments {
            return Err((ErrorCode::InvalidReplicaAssignment, "explicit replica assignments are not supported".into()));
        }
        let partitions = if t.num_partitions == -1 { self.config.num_partitions } else { t.num_partitions };
        if partitions < 1 || partitions > self.config.max_partitions_per_topic {
            let max = self.config.max_partitions_per_topic;
            return Err((ErrorCode::InvalidPartitions, format!("number of partitions must be 1..={max}, got {partitions}")));
        }
        let config = TopicConfig::from_pairs(&t.configs).map_err(|m| (ErrorCode::InvalidConfig, m))?;
        let c = self.cluster_mut();
        let live = c.controller.image().live_brokers().len().max(1);
        let rf = match t.replication_factor {
            -1 => (c.config.default_replication_factor.max(1) as usize).min(live),
            n if n >= 1 => n as usize,
            n => return Err((ErrorCode::InvalidReplicationFactor, format!("replication factor must be at least 1, got {n}"))),
        };
        Ok(ControllerRequest::CreateTopic { name: t.name.clone(), partitions, replication_factor: rf, configs: config.overrides.into_iter().collect() })
    }

    pub(in crate::broker) fn cluster_create_topics(&mut self, now: Millis, id: RequestId, req: CreateTopicsRequest, out: &mut Vec<Effect>) {
        let mut results = Vec::with_capacity(req.topics.len());
        let mut calls = Vec::new();
        for (index, t) in req.topics.iter().enumerate() {
            let twice = req.topics.iter().filter(|o| o.name == t.name).count() > 1;
            let checked = if twice {
                Err((ErrorCode::InvalidRequest, "topic named more than once in the request".to_string()))
            } else if super::super::groups::is_internal_topic(&t.name) {
                Err((ErrorCode::InvalidTopicException, "the name is reserved for an internal topic".to_string()))
            } else {
                self.create_request(t)
            };
            match checked {
                Ok(request) => {
                    let (partitions, rf) = match &request {
                        ControllerRequest::CreateTopic { partitions, replication_factor, .. } => (*partitions, *replication_factor as i16),
                        _ => (-1, -1),
                    };
                    results.push(CreateTopicResult {
                        name: t.name.clone(),
                        error: ErrorCode::None,
                        error_message: None,
                        topic_id: [0; 16],
                        num_partitions: partitions,
                        replication_factor: rf,
                        configs: Vec::new(),
                    });
                    if !req.validate_only {
                        calls.push((index, request));
                    }
                }
                Err((error, message)) => results.push(CreateTopicResult::error(t, error, message)),
            }
        }
        self.start_admin(now, id, AdminKind::Create(results), calls, out);
    }

    pub(in crate::broker) fn cluster_delete_topics(&mut self, now: Millis, id: RequestId, req: DeleteTopicsRequest, out: &mut Vec<Effect>) {
        let mut results = Vec::with_capacity(req.names.len());
        let mut calls = Vec::new();
        for (index, name) in req.names.into_iter().enumerate() {
            if super::super::groups::is_internal_topic(&name) {
                results.push((name, ErrorCode::InvalidTopicException, Some("internal topics cannot be deleted".to_string())));
                continue;
            }
            calls.push((index, ControllerRequest::DeleteTopic { name: name.clone() }));
            results.push((name, ErrorCode::None, None));
        }
        self.start_admin(now, id, AdminKind::Delete(results), calls, out);
    }

    fn start_admin(&mut self, now: Millis, id: RequestId, kind: AdminKind, calls: Vec<(usize, ControllerRequest)>, out: &mut Vec<Effect>) {
        if calls.is_empty() {
            return out.push(Effect::Reply { id, response: admin_response(kind) });
        }
        self.cluster_mut().admin.insert(id, PendingAdmin { kind, remaining: calls.len() });
        for (index, request) in calls {
            self.call_controller(now, CallPurpose::Admin { id, index }, request, out);
        }
    }

    pub(in crate::broker) fn admin_answered(&mut self, _now: Millis, id: RequestId, index: usize, reply: Option<ControllerReply>, out: &mut Vec<Effect>) {
        let c = self.cluster_mut();
        let Some(pending) = c.admin.get_mut(&id) else { return };
        let (error, message) = match reply {
            Some(ControllerReply::TopicCreated | ControllerReply::TopicDeleted) => (ErrorCode::None, None),
            Some(ControllerReply::TopicExists) => (ErrorCode::TopicAlreadyExists, Some("topic already exists".to_string())),
            Some(ControllerReply::UnknownTopic) => (ErrorCode::UnknownTopicOrPartition, None),
            Some(ControllerReply::Refused { reason }) => (ErrorCode::InvalidReplicationFactor, Some(reason)),
            Some(ControllerReply::NotController { .. }) => (ErrorCode::NotController, Some("the controller moved; retry".to_string())),
            None => (ErrorCode::RequestTimedOut, Some("no answer from the controller in time".to_string())),
            Some(other) => (ErrorCode::UnknownServerError, Some(format!("unexpected controller answer {other:?}"))),
        };
        match &mut pending.kind {
            AdminKind::Create(results) => {
                if let Some(r) = results.get_mut(index) {
                    r.error = error;
                    r.error_message = message;
                    if let Some(t) = c.controller.image().topics.get(&r.name) {
                        r.topic_id = t.topic_id;
                    }
                    if !error.is_ok() {
                        r.num_partitions = -1;
                        r.replication_factor = -1;
                    }
                }
            }
            AdminKind::Delete(results) => {
                if let Some(r) = results.get_mut(index) {
                    r.1 = error;
                    r.2 = message;
                }
            }
        }
        pending.remaining -= 1;
        if pending.remaining == 0 {
            let pending = c.admin.remove(&id).expect("present");
            out.push(Effect::Reply { id, response: admin_response(pending.kind) });
        }
    }
}

fn admin_response(kind: AdminKind) -> Response {
    match kind {
        AdminKind::Create(topics) => Response::CreateTopics(CreateTopicsResponse { topics }),
        AdminKind::Delete(topics) => Response::DeleteTopics(DeleteTopicsResponse { topics }),
    }
}
