//! What the broker machine is asked and what it answers, independent of the
//! Kafka wire encoding (which lives in `millrace-net`). Field names follow
//! Kafka's request schemas so the mapping stays obvious.

use bytes::Bytes;

use crate::{ErrorCode, Millis};

/// Identifies a request until its reply: the connection and a sequence
/// number the adapter chose. The broker only hands it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId {
    pub conn: u64,
    pub seq: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Metadata(MetadataRequest),
    Produce(ProduceRequest),
    Fetch(FetchRequest),
    ListOffsets(ListOffsetsRequest),
    CreateTopics(CreateTopicsRequest),
    DeleteTopics(DeleteTopicsRequest),
    InitProducerId(InitProducerIdRequest),
    DescribeConfigs(DescribeConfigsRequest),
    FindCoordinator(FindCoordinatorRequest),
    OffsetForLeaderEpoch(OffsetForLeaderEpochRequest),
    /// The consumer-group APIs, served by the group coordinator.
    Group(crate::group::GroupRequest),
    AlterConfigs(AlterConfigsRequest),
    IncrementalAlterConfigs(AlterConfigsRequest),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Response {
    Metadata(MetadataResponse),
    Produce(ProduceResponse),
    Fetch(FetchResponse),
    ListOffsets(ListOffsetsResponse),
    CreateTopics(CreateTopicsResponse),
    DeleteTopics(DeleteTopicsResponse),
    InitProducerId(InitProducerIdResponse),
    DescribeConfigs(DescribeConfigsResponse),
    FindCoordinator(FindCoordinatorResponse),
    OffsetForLeaderEpoch(OffsetForLeaderEpochResponse),
    Group(crate::group::GroupResponse),
    AlterConfigs(AlterConfigsResponse),
    IncrementalAlterConfigs(AlterConfigsResponse),
}

// ---- Metadata ----

#[derive(Debug, Clone, PartialEq, Default)]
pub struct MetadataRequest {
    /// `None` asks for every topic.
    pub topics: Option<Vec<String>>,
    pub allow_auto_topic_creation: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BrokerInfo {
    pub node_id: i32,
    pub host: String,
    pub port: i32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TopicMetadata {
    pub name: String,
    pub error: ErrorCode,
    pub topic_id: [u8; 16],
    pub is_internal: bool,
    pub partitions: Vec<PartitionMetadata>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PartitionMetadata {
    pub partition: i32,
    pub error: ErrorCode,
    pub leader: i32,
    pub leader_epoch: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MetadataResponse {
    pub brokers: Vec<BrokerInfo>,
    pub cluster_id: String,
    pub controller_id: i32,
    pub topics: Vec<TopicMetadata>,
}

// ---- Produce ----

#[derive(Debug, Clone, PartialEq)]
pub struct ProduceRequest {
    /// 0, 1 or -1 (all).
    pub acks: i16,
    pub timeout_ms: i32,
    pub transactional_id: Option<String>,
    pub topics: Vec<(String, Vec<PartitionData>)>,
}

/// One partition's record batch in a produce request (absent when the
/// client sent null).
pub type PartitionData = (i32, Option<Bytes>);

#[derive(Debug, Clone, PartialEq)]
pub struct ProducePartitionResponse {
    pub partition: i32,
    pub error: ErrorCode,
    pub base_offset: i64,
    pub log_start_offset: i64,
    pub error_message: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProduceResponse {
    pub topics: Vec<(String, Vec<ProducePartitionResponse>)>,
}

// ---- Fetch ----

#[derive(Debug, Clone, PartialEq)]
pub struct FetchPartition {
    pub topic: String,
    pub partition: i32,
    pub fetch_offset: i64,
    pub partition_max_bytes: i32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FetchRequest {
    pub max_wait_ms: i32,
    pub min_bytes: i32,
    pub max_bytes: i32,
    pub isolation_level: i8,
    pub partitions: Vec<FetchPartition>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FetchPartitionResponse {
    pub topic: String,
    pub partition: i32,
    pub error: ErrorCode,
    pub high_watermark: i64,
    pub last_stable_offset: i64,
    pub log_start_offset: i64,
    /// Whole batches; never absent (an empty fetch is an empty buffer).
    pub records: Bytes,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FetchResponse {
    pub partitions: Vec<FetchPartitionResponse>,
}

// ---- ListOffsets ----

/// Special timestamps of ListOffsets.
pub const LATEST_TIMESTAMP: i64 = -1;
pub const EARLIEST_TIMESTAMP: i64 = -2;
pub const MAX_TIMESTAMP: i64 = -3;

#[derive(Debug, Clone, PartialEq)]
pub struct ListOffsetsRequest {
    pub isolation_level: i8,
    pub partitions: Vec<(String, i32, i64)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ListOffsetsPartitionResponse {
    pub topic: String,
    pub partition: i32,
    pub error: ErrorCode,
    pub timestamp: i64,
    pub offset: i64,
    pub leader_epoch: i32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ListOffsetsResponse {
    pub partitions: Vec<ListOffsetsPartitionResponse>,
}

// ---- CreateTopics / DeleteTopics ----

#[derive(Debug, Clone, PartialEq)]
pub struct NewTopic {
    pub name: String,
    /// -1 means the broker default.
    pub num_partitions: i32,
    /// -1 means the broker default.
    pub replication_factor: i16,
    /// Explicit replica assignments are not supported on a single node.
    pub has_assignments: bool,
    pub configs: Vec<(String, Option<String>)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CreateTopicsRequest {
    pub topics: Vec<NewTopic>,
    pub validate_only: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CreateTopicResult {
    pub name: String,
    pub error: ErrorCode,
    pub error_message: Option<String>,
    pub topic_id: [u8; 16],
    pub num_partitions: i32,
    pub replication_factor: i16,
    pub configs: Vec<ConfigEntry>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CreateTopicsResponse {
    pub topics: Vec<CreateTopicResult>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DeleteTopicsRequest {
    pub names: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DeleteTopicsResponse {
    pub topics: Vec<(String, ErrorCode, Option<String>)>,
}

// ---- InitProducerId ----

#[derive(Debug, Clone, PartialEq)]
pub struct InitProducerIdRequest {
    pub transactional_id: Option<String>,
    /// -1, or the current id when a producer asks to bump its epoch.
    pub producer_id: i64,
    pub producer_epoch: i16,
}

#[derive(Debug, Clone, PartialEq)]
pub struct InitProducerIdResponse {
    pub error: ErrorCode,
    pub producer_id: i64,
    pub producer_epoch: i16,
}

// ---- DescribeConfigs ----

/// Kafka's config resource types.
pub const RESOURCE_TOPIC: i8 = 2;
pub const RESOURCE_BROKER: i8 = 4;

#[derive(Debug, Clone, PartialEq)]
pub struct DescribeConfigsRequest {
    /// (resource type, name, keys or all).
    pub resources: Vec<(i8, String, Option<Vec<String>>)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigEntry {
    pub name: String,
    pub value: Option<String>,
    pub read_only: bool,
    pub is_default: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DescribeConfigsResult {
    pub resource_type: i8,
    pub resource_name: String,
    pub error: ErrorCode,
    pub error_message: Option<String>,
    pub configs: Vec<ConfigEntry>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DescribeConfigsResponse {
    pub results: Vec<DescribeConfigsResult>,
}

// ---- AlterConfigs / IncrementalAlterConfigs ----

/// IncrementalAlterConfigs' operations (AlterConfigs sets every entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlterOp {
    Set,
    /// Back to the default.
    Delete,
    /// Add to a list-valued config (`cleanup.policy`).
    Append,
    /// Remove from a list-valued config.
    Subtract,
}

impl AlterOp {
    /// Kafka's wire value.
    pub fn from_code(code: i8) -> Option<Self> {
        Some(match code {
            0 => Self::Set,
            1 => Self::Delete,
            2 => Self::Append,
            3 => Self::Subtract,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct AlterConfigsResource {
    pub resource_type: i8,
    pub resource_name: String,
    /// (name, operation or `None` for an unknown one, value).
    pub configs: Vec<(String, Option<AlterOp>, Option<String>)>,
}

/// Both APIs: AlterConfigs replaces a resource's whole set of overrides
/// with the entries given (all `Set`); IncrementalAlterConfigs applies each
/// operation to the current set.
#[derive(Debug, Clone, PartialEq)]
pub struct AlterConfigsRequest {
    pub resources: Vec<AlterConfigsResource>,
    pub validate_only: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AlterConfigsResult {
    pub resource_type: i8,
    pub resource_name: String,
    pub error: ErrorCode,
    pub error_message: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AlterConfigsResponse {
    pub results: Vec<AlterConfigsResult>,
}

// ---- FindCoordinator ----

#[derive(Debug, Clone, PartialEq)]
pub struct FindCoordinatorRequest {
    /// 0 = consumer group, 1 = transaction.
    pub key_type: i8,
    pub keys: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Coordinator {
    pub key: String,
    pub error: ErrorCode,
    pub error_message: Option<String>,
    pub node_id: i32,
    pub host: String,
    pub port: i32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FindCoordinatorResponse {
    pub coordinators: Vec<Coordinator>,
}

// ---- OffsetForLeaderEpoch ----

/// (topic, partition, current leader epoch or -1, epoch asked about).
#[derive(Debug, Clone, PartialEq)]
pub struct OffsetForLeaderEpochRequest {
    pub partitions: Vec<(String, i32, i32, i32)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EpochEndOffset {
    pub topic: String,
    pub partition: i32,
    pub error: ErrorCode,
    pub leader_epoch: i32,
    pub end_offset: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OffsetForLeaderEpochResponse {
    pub partitions: Vec<EpochEndOffset>,
}

// ---- the step contract ----

#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    Request { id: RequestId, request: Request },
    /// Time has passed: expire parked fetches, run interval flushes.
    Tick,
    /// The adapter's turn to make appended data durable (answers
    /// [`Effect::SyncNeeded`]); acknowledgements waiting on it go out.
    /// The machine syncs through its storage within the step.
    Sync,
    /// Answers [`Effect::SyncNeeded`] like [`Input::Sync`], but the adapter
    /// runs the sync itself, off the machine's turn: the machine says which
    /// files ([`Effect::SyncFiles`]) and goes on taking inputs meanwhile.
    SyncStart,
    /// The files of [`Effect::SyncFiles`] `ticket` are durable.
    Synced { ticket: u64 },
    /// Syncing the files of a ticket failed: the node must stop.
    SyncFailed { reason: String },
    /// A connection closed: forget its parked requests.
    Disconnected { conn: u64 },
    /// Cluster mode: a message from another node.
    Peer { from: i32, message: super::cluster::PeerMessage },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    Reply { id: RequestId, response: Response },
    /// Feed [`Input::Tick`] at or after this time.
    Timer { at: Millis },
    /// Feed [`Input::Sync`] (or [`Input::SyncStart`]) once the requests
    /// already received are handled; batching them behind one sync is the
    /// group commit.
    SyncNeeded,
    /// After [`Input::SyncStart`]: make `files` durable (every write to them
    /// so far), then feed [`Input::Synced`] with `ticket`, or
    /// [`Input::SyncFailed`]. Several tickets may be in flight at once, and
    /// they may finish in any order.
    SyncFiles { ticket: u64, files: Vec<String> },
    /// The node must stop: durable state can no longer be trusted (a failed
    /// fsync, as PostgreSQL learned, cannot simply be retried).
    Fatal { reason: String },
    /// Cluster mode: deliver `message` to node `to` (best effort: the
    /// machines treat a lost message like a late one, with timeouts).
    Send { to: i32, message: super::cluster::PeerMessage },
}
