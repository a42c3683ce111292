//! Kafka request frames in, broker requests out.

use bytes::Bytes;
use kafka_protocol::messages::{
    AlterConfigsRequest, ApiKey, CreateTopicsRequest, DeleteTopicsRequest, DescribeConfigsRequest, FetchRequest,
    FindCoordinatorRequest, IncrementalAlterConfigsRequest, InitProducerIdRequest, ListOffsetsRequest, MetadataRequest,
    ProduceRequest, RequestHeader,
};
use kafka_protocol::protocol::Decodable;
use millrace_core::broker::{self as core, Request};

use super::versions;

/// What the response needs to know about its request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestMeta {
    pub api_key: ApiKey,
    pub version: i16,
    pub correlation_id: i32,
}

#[derive(Debug)]
pub enum Decoded {
    /// ApiVersions is answered by the connection itself. `supported` is
    /// false for a version we cannot decode (answered in v0 with an error).
    ApiVersions { meta: RequestMeta, supported: bool },
    Broker { meta: RequestMeta, request: Request, expects_reply: bool },
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {0} bytes is too short for a request header")]
    TooShort(usize),
    #[error("unknown API key {0}")]
    UnknownApiKey(i16),
    #[error("{key:?} version {version} is not supported")]
    UnsupportedVersion { key: ApiKey, version: i16 },
    #[error("malformed {key:?} v{version} request: {reason}")]
    Malformed { key: ApiKey, version: i16, reason: String },
}

/// Decodes one request frame (without its length prefix).
pub fn decode(mut frame: Bytes) -> Result<Decoded, FrameError> {
    // The crate's own header helper panics below 4 bytes; read key and
    // version by hand first.
    if frame.len() < 8 {
        return Err(FrameError::TooShort(frame.len()));
    }
    let key_raw = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let key = ApiKey::try_from(key_raw).map_err(|()| FrameError::UnknownApiKey(key_raw))?;
    let malformed = |e: anyhow::Error| FrameError::Malformed { key, version, reason: e.to_string() };
    let header = RequestHeader::decode(&mut frame, key.request_header_version(version)).map_err(malformed)?;
    let meta = RequestMeta { api_key: key, version, correlation_id: header.correlation_id };
    if key == ApiKey::ApiVersions {
        return Ok(Decoded::ApiVersions { meta, supported: versions::serves(key, version) });
    }
    if !versions::serves(key, version) {
        return Err(FrameError::UnsupportedVersion { key, version });
    }
    let mut expects_reply = true;
    let request = match key {
        ApiKey::Metadata => Request::Metadata(metadata(MetadataRequest::decode(&mut frame, version).map_err(malformed)?, version)),
        ApiKey::Produce => {
            let r = produce(ProduceRequest::decode(&mut frame, version).map_err(malformed)?);
            expects_reply = r.acks != 0;
            Request::Produce(r)
        }
        ApiKey::Fetch => Request::Fetch(fetch(FetchRequest::decode(&mut frame, version).map_err(malformed)?)),
        ApiKey::ListOffsets => Request::ListOffsets(list_offsets(ListOffsetsRequest::decode(&mut frame, version).map_err(malformed)?)),
        ApiKey::CreateTopics => Request::CreateTopics(create_topics(CreateTopicsRequest::decode(&mut frame, version).map_err(malformed)?)),
        ApiKey::DeleteTopics => Request::DeleteTopics(delete_topics(DeleteTopicsRequest::decode(&mut frame, version).map_err(malformed)?)),
        ApiKey::InitProducerId => {
            Request::InitProducerId(init_producer_id(InitProducerIdRequest::decode(&mut frame, version).map_err(malformed)?))
        }
        ApiKey::DescribeConfigs => {
            Request::DescribeConfigs(describe_configs(DescribeConfigsRequest::decode(&mut frame, version).map_err(malformed)?))
        }
        ApiKey::FindCoordinator => {
            let r = FindCoordinatorRequest::decode(&mut frame, version).map_err(malformed)?;
            // v0-3 carry one key, v4+ a list.
            let keys = if version >= 4 { r.coordinator_keys.iter().map(|k| k.to_string()).collect() } else { vec![r.key.to_string()] };
            Request::FindCoordinator(core::FindCoordinatorRequest { key_type: r.key_type, keys })
        }
        ApiKey::OffsetForLeaderEpoch => {
            let r = kafka_protocol::messages::OffsetForLeaderEpochRequest::decode(&mut frame, version).map_err(malformed)?;
            let partitions = r
                .topics
                .into_iter()
                .flat_map(|t| {
                    let topic = t.topic.0.to_string();
                    t.partitions.into_iter().map(move |p| (topic.clone(), p.partition, p.current_leader_epoch, p.leader_epoch))
                })
                .collect();
            Request::OffsetForLeaderEpoch(core::OffsetForLeaderEpochRequest { partitions })
        }
        ApiKey::JoinGroup
        | ApiKey::SyncGroup
        | ApiKey::Heartbeat
        | ApiKey::LeaveGroup
        | ApiKey::OffsetCommit
        | ApiKey::OffsetFetch
        | ApiKey::ListGroups
        | ApiKey::DescribeGroups
        | ApiKey::DeleteGroups => {
            let client_id = header.client_id.as_deref().map(|s| s.to_string()).unwrap_or_default();
            Request::Group(super::group::decode(key, &mut frame, version, &client_id).map_err(malformed)?)
        }
        ApiKey::AlterConfigs => {
            Request::AlterConfigs(alter_configs(AlterConfigsRequest::decode(&mut frame, version).map_err(malformed)?))
        }
        ApiKey::IncrementalAlterConfigs => Request::IncrementalAlterConfigs(incremental_alter_configs(
            IncrementalAlterConfigsRequest::decode(&mut frame, version).map_err(malformed)?,
        )),
        _ => return Err(FrameError::UnsupportedVersion { key, version }),
    };
    Ok(Decoded::Broker { meta, request, expects_reply })
}

fn metadata(r: MetadataRequest, version: i16) -> core::MetadataRequest {
    core::MetadataRequest {
        topics: r.topics.map(|ts| ts.into_iter().filter_map(|t| t.name.map(|n| n.0.to_string())).collect()),
        // Before v4 the field did not exist and brokers auto-created.
        allow_auto_topic_creation: version < 4 || r.allow_auto_topic_creation,
    }
}

fn produce(r: ProduceRequest) -> core::ProduceRequest {
    core::ProduceRequest {
        acks: r.acks,
        timeout_ms: r.timeout_ms,
        transactional_id: r.transactional_id.map(|t| t.0.to_string()),
        topics: r
            .topic_data
            .into_iter()
            .map(|t| (t.name.0.to_string(), t.partition_data.into_iter().map(|p| (p.index, p.records)).collect()))
            .collect(),
    }
}

fn fetch(r: FetchRequest) -> core::FetchRequest {
    core::FetchRequest {
        max_wait_ms: r.max_wait_ms,
        min_bytes: r.min_bytes,
        max_bytes: r.max_bytes,
        isolation_level: r.isolation_level,
        partitions: r
            .topics
            .into_iter()
            .flat_map(|t| {
                let topic = t.topic.0.to_string();
                t.partitions.into_iter().map(move |p| core::FetchPartition {
                    topic: topic.clone(),
                    partition: p.partition,
                    fetch_offset: p.fetch_offset,
                    partition_max_bytes: p.partition_max_bytes,
                })
            })
            .collect(),
    }
}

fn list_offsets(r: ListOffsetsRequest) -> core::ListOffsetsRequest {
    core::ListOffsetsRequest {
        isolation_level: r.isolation_level,
        partitions: r
            .topics
            .into_iter()
            .flat_map(|t| {
                let topic = t.name.0.to_string();
                t.partitions.into_iter().map(move |p| (topic.clone(), p.partition_index, p.timestamp))
            })
            .collect(),
    }
}

fn create_topics(r: CreateTopicsRequest) -> core::CreateTopicsRequest {
    core::CreateTopicsRequest {
        validate_only: r.validate_only,
        topics: r
            .topics
            .into_iter()
            .map(|t| core::NewTopic {
                name: t.name.0.to_string(),
                num_partitions: t.num_partitions,
                replication_factor: t.replication_factor,
                has_assignments: !t.assignments.is_empty(),
                configs: t.configs.into_iter().map(|c| (c.name.to_string(), c.value.map(|v| v.to_string()))).collect(),
            })
            .collect(),
    }
}

fn delete_topics(r: DeleteTopicsRequest) -> core::DeleteTopicsRequest {
    // v1-5 name topics in `topic_names`, v6 in `topics` (by name or id;
    // Millrace resolves names only).
    let mut names: Vec<String> = r.topic_names.into_iter().map(|n| n.0.to_string()).collect();
    names.extend(r.topics.into_iter().filter_map(|t| t.name.map(|n| n.0.to_string())));
    core::DeleteTopicsRequest { names }
}

fn init_producer_id(r: InitProducerIdRequest) -> core::InitProducerIdRequest {
    core::InitProducerIdRequest {
        transactional_id: r.transactional_id.map(|t| t.0.to_string()),
        producer_id: r.producer_id.0,
        producer_epoch: r.producer_epoch,
    }
}

fn describe_configs(r: DescribeConfigsRequest) -> core::DescribeConfigsRequest {
    core::DescribeConfigsRequest {
        resources: r
            .resources
            .into_iter()
            .map(|res| {
                (
                    res.resource_type,
                    res.resource_name.to_string(),
                    res.configuration_keys.map(|ks| ks.into_iter().map(|k| k.to_string()).collect()),
                )
            })
            .collect(),
    }
}

/// The two alter-configs requests carry the same resources in two
/// generated types; `$entry` maps one config entry (`$c`) to the broker's
/// `(name, operation, value)`, or `None` to leave it out.
macro_rules! alter_configs_request {
    ($r:expr, |$c:ident| $entry:expr) => {
        core::AlterConfigsRequest {
            validate_only: $r.validate_only,
            resources: $r
                .resources
                .into_iter()
                .map(|res| core::AlterConfigsResource {
                    resource_type: res.resource_type,
                    resource_name: res.resource_name.to_string(),
                    configs: res.configs.into_iter().filter_map(|$c| $entry).collect(),
                })
                .collect(),
        }
    };
}

/// AlterConfigs sets every entry given (a null value counts as unset).
fn alter_configs(r: AlterConfigsRequest) -> core::AlterConfigsRequest {
    alter_configs_request!(r, |c| Some((c.name.to_string(), Some(core::AlterOp::Set), Some(c.value?.to_string()))))
}

fn incremental_alter_configs(r: IncrementalAlterConfigsRequest) -> core::AlterConfigsRequest {
    alter_configs_request!(r, |c| {
        Some((c.name.to_string(), core::AlterOp::from_code(c.config_operation), c.value.map(|v| v.to_string())))
    })
}
