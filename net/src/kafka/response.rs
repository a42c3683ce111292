//! Broker responses out, Kafka response frames in the request's version.
//!
//! Fields that do not exist in the requested version are left at their
//! defaults: `kafka-protocol` refuses to encode a non-default value a
//! version lacks. The unit tests encode every response at every served
//! version to keep that true.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::create_topics_response::{CreatableTopicConfigs, CreatableTopicResult};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::describe_configs_response::{DescribeConfigsResourceResult, DescribeConfigsResult};
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::list_offsets_response::{ListOffsetsPartitionResponse, ListOffsetsTopicResponse};
use kafka_protocol::messages::metadata_response::{MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{
    AlterConfigsResponse, ApiKey, ApiVersionsResponse, IncrementalAlterConfigsResponse, BrokerId, CreateTopicsResponse, DeleteTopicsResponse, DescribeConfigsResponse,
    FetchResponse, FindCoordinatorResponse, InitProducerIdResponse, ListOffsetsResponse, MetadataResponse, ProduceResponse, ProducerId,
    ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Encodable, StrBytes};
use millrace_core::ErrorCode;
use millrace_core::broker::{self as core, Response};

use super::request::RequestMeta;
use super::versions::SUPPORTED;

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

fn sb(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

/// Frames `body` with the length prefix and the response header.
pub(super) fn frame<R: Encodable>(meta: &RequestMeta, header_version: i16, body_version: i16, body: &R) -> anyhow::Result<Bytes> {
    let header = ResponseHeader::default().with_correlation_id(meta.correlation_id);
    let size = header.compute_size(header_version)? + body.compute_size(body_version)?;
    let mut out = BytesMut::with_capacity(4 + size);
    out.put_i32(i32::try_from(size)?);
    header.encode(&mut out, header_version)?;
    body.encode(&mut out, body_version)?;
    Ok(out.freeze())
}

/// The ApiVersions answer. An unsupported version is answered in v0 with
/// UNSUPPORTED_VERSION and the full list, so the client can retry lower.
pub fn api_versions(meta: &RequestMeta, supported: bool) -> anyhow::Result<Bytes> {
    let keys = SUPPORTED
        .iter()
        .map(|&(k, min, max, _)| ApiVersion::default().with_api_key(k as i16).with_min_version(min).with_max_version(max))
        .collect();
    let mut body = ApiVersionsResponse::default().with_api_keys(keys);
    let version = if supported { meta.version } else { 0 };
    if !supported {
        body = body.with_error_code(ErrorCode::UnsupportedVersion.code());
    }
    // ApiVersions responses always use header v0 (KIP-511).
    frame(meta, 0, version, &body)
}

pub fn encode(meta: &RequestMeta, response: Response) -> anyhow::Result<Bytes> {
    let v = meta.version;
    let hv = meta.api_key.response_header_version(v);
    match response {
        Response::Metadata(r) => frame(meta, hv, v, &metadata(r, v)),
        Response::Produce(r) => frame(meta, hv, v, &produce(r, v)),
        Response::Fetch(r) => frame(meta, hv, v, &fetch(r, v)),
        Response::ListOffsets(r) => frame(meta, hv, v, &list_offsets(r, v)),
        Response::CreateTopics(r) => frame(meta, hv, v, &create_topics(r, v)),
        Response::DeleteTopics(r) => frame(meta, hv, v, &delete_topics(r, v)),
        Response::InitProducerId(r) => frame(meta, hv, v, &init_producer_id(r)),
        Response::DescribeConfigs(r) => frame(meta, hv, v, &describe_configs(r)),
        Response::FindCoordinator(r) => frame(meta, hv, v, &find_coordinator(r, v)),
        Response::Group(r) => super::group::frame(meta, hv, r),
        Response::OffsetForLeaderEpoch(r) => frame(meta, hv, v, &offset_for_leader_epoch(r)),
        Response::AlterConfigs(r) => frame(meta, hv, v, &alter_configs(r)),
        Response::IncrementalAlterConfigs(r) => frame(meta, hv, v, &incremental_alter_configs(r)),
    }
}

fn offset_for_leader_epoch(r: core::OffsetForLeaderEpochResponse) -> kafka_protocol::messages::OffsetForLeaderEpochResponse {
    use kafka_protocol::messages::offset_for_leader_epoch_response::{EpochEndOffset, OffsetForLeaderTopicResult};
    let mut topics: Vec<OffsetForLeaderTopicResult> = Vec::new();
    for p in r.partitions {
        let row = EpochEndOffset::default()
            .with_error_code(p.error.code())
            .with_partition(p.partition)
            .with_leader_epoch(p.leader_epoch)
            .with_end_offset(p.end_offset);
        match topics.iter_mut().find(|t| t.topic.0.as_str() == p.topic) {
            Some(t) => t.partitions.push(row),
            None => topics.push(OffsetForLeaderTopicResult::default().with_topic(name(&p.topic)).with_partitions(vec![row])),
        }
    }
    kafka_protocol::messages::OffsetForLeaderEpochResponse::default().with_topics(topics)
}

fn metadata(r: core::MetadataResponse, v: i16) -> MetadataResponse {
    let brokers = r
        .brokers
        .iter()
        .map(|b| MetadataResponseBroker::default().with_node_id(BrokerId(b.node_id)).with_host(sb(&b.host)).with_port(b.port))
        .collect();
    let topics = r
        .topics
        .iter()
        .map(|t| {
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let mut mp = MetadataResponsePartition::default()
                        .with_error_code(p.error.code())
                        .with_partition_index(p.partition)
                        .with_leader_id(BrokerId(p.leader))
                        .with_replica_nodes(p.replicas.iter().copied().map(BrokerId).collect())
                        .with_isr_nodes(p.isr.iter().copied().map(BrokerId).collect());
                    if v >= 7 {
                        mp = mp.with_leader_epoch(p.leader_epoch);
                    }
                    mp
                })
                .collect();
            let mut mt = MetadataResponseTopic::default()
                .with_error_code(t.error.code())
                .with_name(Some(name(&t.name)))
                .with_is_internal(t.is_internal)
                .with_partitions(partitions);
            if v >= 10 {
                mt = mt.with_topic_id(uuid::Uuid::from_bytes(t.topic_id));
            }
            mt
        })
        .collect();
    let mut m = MetadataResponse::default().with_brokers(brokers).with_topics(topics);
    if v >= 1 {
        m = m.with_controller_id(BrokerId(r.controller_id));
    }
    if v >= 2 {
        m = m.with_cluster_id(Some(sb(&r.cluster_id)));
    }
    m
}

fn produce(r: core::ProduceResponse, v: i16) -> ProduceResponse {
    let responses = r
        .topics
        .into_iter()
        .map(|(topic, parts)| {
            let parts = parts
                .into_iter()
                .map(|p| {
                    let mut pr = PartitionProduceResponse::default()
                        .with_index(p.partition)
                        .with_error_code(p.error.code())
                        .with_base_offset(p.base_offset);
                    if v >= 5 {
                        pr = pr.with_log_start_offset(p.log_start_offset);
                    }
                    if v >= 8 {
                        pr = pr.with_error_message(p.error_message.map(|m| sb(&m)));
                    }
                    pr
                })
                .collect();
            TopicProduceResponse::default().with_name(name(&topic)).with_partition_responses(parts)
        })
        .collect();
    ProduceResponse::default().with_responses(responses)
}

fn fetch(r: core::FetchResponse, v: i16) -> FetchResponse {
    // Group partitions by topic, keeping the request's order.
    let mut responses: Vec<FetchableTopicResponse> = Vec::new();
    for p in r.partitions {
        let mut pd = PartitionData::default()
            .with_partition_index(p.partition)
            .with_error_code(p.error.code())
            .with_high_watermark(p.high_watermark)
            .with_last_stable_offset(p.last_stable_offset)
            .with_aborted_transactions(Some(Vec::new()))
            // Never null: librdkafka hangs or crashes on null records.
            .with_records(Some(p.records));
        if v >= 5 {
            pd = pd.with_log_start_offset(p.log_start_offset);
        }
        match responses.last_mut() {
            Some(t) if t.topic.0.as_str() == p.topic => t.partitions.push(pd),
            _ => responses.push(FetchableTopicResponse::default().with_topic(name(&p.topic)).with_partitions(vec![pd])),
        }
    }
    FetchResponse::default().with_responses(responses)
}

fn list_offsets(r: core::ListOffsetsResponse, v: i16) -> ListOffsetsResponse {
    let mut topics: Vec<ListOffsetsTopicResponse> = Vec::new();
    for p in r.partitions {
        let mut lp = ListOffsetsPartitionResponse::default()
            .with_partition_index(p.partition)
            .with_error_code(p.error.code())
            .with_timestamp(p.timestamp)
            .with_offset(p.offset);
        if v >= 4 {
            lp = lp.with_leader_epoch(p.leader_epoch);
        }
        match topics.last_mut() {
            Some(t) if t.name.0.as_str() == p.topic => t.partitions.push(lp),
            _ => topics.push(ListOffsetsTopicResponse::default().with_name(name(&p.topic)).with_partitions(vec![lp])),
        }
    }
    ListOffsetsResponse::default().with_topics(topics)
}

fn create_topics(r: core::CreateTopicsResponse, v: i16) -> CreateTopicsResponse {
    let topics = r
        .topics
        .into_iter()
        .map(|t| {
            let mut ct = CreatableTopicResult::default()
                .with_name(name(&t.name))
                .with_error_code(t.error.code())
                .with_error_message(t.error_message.map(|m| sb(&m)));
            if v >= 5 {
                let configs = t
                    .configs
                    .iter()
                    .map(|c| {
                        CreatableTopicConfigs::default()
                            .with_name(sb(&c.name))
                            .with_value(c.value.as_deref().map(sb))
                            .with_read_only(c.read_only)
                            .with_config_source(if c.is_default { 5 } else { 1 })
                    })
                    .collect();
                ct = ct
                    .with_num_partitions(t.num_partitions)
                    .with_replication_factor(t.replication_factor)
                    .with_configs(Some(configs));
            }
            if v >= 7 {
                ct = ct.with_topic_id(uuid::Uuid::from_bytes(t.topic_id));
            }
            ct
        })
        .collect();
    CreateTopicsResponse::default().with_topics(topics)
}

fn delete_topics(r: core::DeleteTopicsResponse, v: i16) -> DeleteTopicsResponse {
    let responses = r
        .topics
        .into_iter()
        .map(|(topic, error, message)| {
            let mut d = DeletableTopicResult::default().with_name(Some(name(&topic))).with_error_code(error.code());
            if v >= 5 {
                d = d.with_error_message(message.map(|m| sb(&m)));
            }
            d
        })
        .collect();
    DeleteTopicsResponse::default().with_responses(responses)
}

fn init_producer_id(r: core::InitProducerIdResponse) -> InitProducerIdResponse {
    InitProducerIdResponse::default()
        .with_error_code(r.error.code())
        .with_producer_id(ProducerId(r.producer_id))
        .with_producer_epoch(r.producer_epoch)
}

fn describe_configs(r: core::DescribeConfigsResponse) -> DescribeConfigsResponse {
    let results = r
        .results
        .into_iter()
        .map(|res| {
            let configs = res
                .configs
                .iter()
                .map(|c| {
                    // Config sources: 1 dynamic topic, 4 static broker, 5 default.
                    let source = if c.is_default { 5 } else if c.read_only { 4 } else { 1 };
                    DescribeConfigsResourceResult::default()
                        .with_name(sb(&c.name))
                        .with_value(c.value.as_deref().map(sb))
                        .with_read_only(c.read_only)
                        .with_config_source(source)
                })
                .collect();
            DescribeConfigsResult::default()
                .with_error_code(res.error.code())
                .with_error_message(res.error_message.map(|m| sb(&m)))
                .with_resource_type(res.resource_type)
                .with_resource_name(sb(&res.resource_name))
                .with_configs(configs)
        })
        .collect();
    DescribeConfigsResponse::default().with_results(results)
}

fn find_coordinator(r: core::FindCoordinatorResponse, v: i16) -> FindCoordinatorResponse {
    use kafka_protocol::messages::find_coordinator_response::Coordinator;
    if v >= 4 {
        let coordinators = r
            .coordinators
            .iter()
            .map(|c| {
                Coordinator::default()
                    .with_key(sb(&c.key))
                    .with_node_id(BrokerId(c.node_id))
                    .with_host(sb(&c.host))
                    .with_port(c.port)
                    .with_error_code(c.error.code())
                    .with_error_message(c.error_message.as_deref().map(sb))
            })
            .collect();
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    let Some(c) = r.coordinators.first() else { return FindCoordinatorResponse::default() };
    let mut resp = FindCoordinatorResponse::default()
        .with_error_code(c.error.code())
        .with_node_id(BrokerId(c.node_id))
        .with_host(sb(&c.host))
        .with_port(c.port);
    if v >= 1 {
        resp = resp.with_error_message(c.error_message.as_deref().map(sb));
    }
    resp
}

/// AlterConfigs and IncrementalAlterConfigs answer with the same fields,
/// in two generated types.
macro_rules! alter_configs_response {
    ($name:ident, $response:ty, $entry:ty) => {
        fn $name(r: core::AlterConfigsResponse) -> $response {
            let responses = r
                .results
                .iter()
                .map(|res| {
                    <$entry>::default()
                        .with_error_code(res.error.code())
                        .with_error_message(res.error_message.as_deref().map(sb))
                        .with_resource_type(res.resource_type)
                        .with_resource_name(sb(&res.resource_name))
                })
                .collect();
            <$response>::default().with_responses(responses)
        }
    };
}

alter_configs_response!(
    alter_configs,
    AlterConfigsResponse,
    kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse
);
alter_configs_response!(
    incremental_alter_configs,
    IncrementalAlterConfigsResponse,
    kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse
);

/// The API key a broker response belongs to (for sanity checks).
pub fn api_key_of(response: &Response) -> ApiKey {
    match response {
        Response::Metadata(_) => ApiKey::Metadata,
        Response::Produce(_) => ApiKey::Produce,
        Response::Fetch(_) => ApiKey::Fetch,
        Response::ListOffsets(_) => ApiKey::ListOffsets,
        Response::CreateTopics(_) => ApiKey::CreateTopics,
        Response::DeleteTopics(_) => ApiKey::DeleteTopics,
        Response::InitProducerId(_) => ApiKey::InitProducerId,
        Response::DescribeConfigs(_) => ApiKey::DescribeConfigs,
        Response::FindCoordinator(_) => ApiKey::FindCoordinator,
        Response::OffsetForLeaderEpoch(_) => ApiKey::OffsetForLeaderEpoch,
        Response::Group(g) => {
            use millrace_core::group::GroupResponse as G;
            match g {
                G::Join(_) => ApiKey::JoinGroup,
                G::Sync(_) => ApiKey::SyncGroup,
                G::Heartbeat(_) => ApiKey::Heartbeat,
                G::Leave(_) => ApiKey::LeaveGroup,
                G::OffsetCommit(_) => ApiKey::OffsetCommit,
                G::OffsetFetch(_) => ApiKey::OffsetFetch,
                G::ListGroups(_) => ApiKey::ListGroups,
                G::DescribeGroups(_) => ApiKey::DescribeGroups,
                G::DeleteGroups(_) => ApiKey::DeleteGroups,
            }
        }
        Response::AlterConfigs(_) => ApiKey::AlterConfigs,
        Response::IncrementalAlterConfigs(_) => ApiKey::IncrementalAlterConfigs,
    }
}
