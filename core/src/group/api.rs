//! What the group coordinator is asked and what it answers, independent of
//! the Kafka wire encoding. Field names follow Kafka's request schemas.

use bytes::Bytes;

use crate::ErrorCode;
use crate::broker::RequestId;

#[derive(Debug, Clone, PartialEq)]
pub enum GroupRequest {
    Join(JoinGroupRequest),
    Sync(SyncGroupRequest),
    Heartbeat(HeartbeatRequest),
    Leave(LeaveGroupRequest),
    OffsetCommit(OffsetCommitRequest),
    OffsetFetch(OffsetFetchRequest),
    ListGroups(ListGroupsRequest),
    DescribeGroups(DescribeGroupsRequest),
    DeleteGroups(DeleteGroupsRequest),
}

#[derive(Debug, Clone, PartialEq)]
pub enum GroupResponse {
    Join(JoinGroupResponse),
    Sync(SyncGroupResponse),
    Heartbeat(HeartbeatResponse),
    Leave(LeaveGroupResponse),
    OffsetCommit(OffsetCommitResponse),
    OffsetFetch(OffsetFetchResponse),
    ListGroups(ListGroupsResponse),
    DescribeGroups(DescribeGroupsResponse),
    DeleteGroups(DeleteGroupsResponse),
}

// ---- JoinGroup ----

#[derive(Debug, Clone, PartialEq)]
pub struct JoinGroupRequest {
    pub group_id: String,
    pub session_timeout_ms: i32,
    /// `max.poll.interval.ms` of the client (v1+; v0 uses the session timeout).
    pub rebalance_timeout_ms: i32,
    /// Empty for a member that has no id yet.
    pub member_id: String,
    /// Static membership (`group.instance.id`), v5+.
    pub group_instance_id: Option<String>,
    pub protocol_type: String,
    /// (assignor name, subscription metadata), in the member's preference order.
    pub protocols: Vec<(String, Bytes)>,
    /// v4+ clients accept MEMBER_ID_REQUIRED and rejoin with the given id.
    pub require_known_member_id: bool,
    pub client_id: String,
    pub client_host: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct JoinedMember {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub metadata: Bytes,
}

#[derive(Debug, Clone, PartialEq)]
pub struct JoinGroupResponse {
    pub error: ErrorCode,
    pub generation_id: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// Filled for the leader only: every member with its subscription.
    pub members: Vec<JoinedMember>,
}

impl JoinGroupResponse {
    pub fn error(error: ErrorCode, member_id: &str) -> Self {
        Self {
            error,
            generation_id: -1,
            protocol_type: None,
            protocol_name: None,
            leader: String::new(),
            member_id: member_id.to_string(),
            members: Vec::new(),
        }
    }
}

// ---- SyncGroup ----

#[derive(Debug, Clone, PartialEq)]
pub struct SyncGroupRequest {
    pub group_id: String,
    pub generation_id: i32,
    pub member_id: String,
    pub group_instance_id: Option<String>,
    /// The leader's assignment: (member id, assignment bytes).
    pub assignments: Vec<(String, Bytes)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SyncGroupResponse {
    pub error: ErrorCode,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub assignment: Bytes,
}

impl SyncGroupResponse {
    pub fn error(error: ErrorCode) -> Self {
        Self { error, protocol_type: None, protocol_name: None, assignment: Bytes::new() }
    }
}

// ---- Heartbeat ----

#[derive(Debug, Clone, PartialEq)]
pub struct HeartbeatRequest {
    pub group_id: String,
    pub generation_id: i32,
    pub member_id: String,
    pub group_instance_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HeartbeatResponse {
    pub error: ErrorCode,
}

// ---- LeaveGroup ----

#[derive(Debug, Clone, PartialEq)]
pub struct LeaveGroupRequest {
    pub group_id: String,
    /// (member id, group instance id): one entry before v3, a batch after.
    pub members: Vec<(String, Option<String>)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LeaveGroupResponse {
    pub error: ErrorCode,
    /// Per member (v3+): (member id, instance id, error).
    pub members: Vec<(String, Option<String>, ErrorCode)>,
}

// ---- OffsetCommit ----

#[derive(Debug, Clone, PartialEq)]
pub struct CommitPartition {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OffsetCommitRequest {
    pub group_id: String,
    /// -1 for a commit from outside the group protocol (`assign()` users).
    pub generation_id: i32,
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub partitions: Vec<CommitPartition>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OffsetCommitResponse {
    /// (topic, partition, error), in request order.
    pub partitions: Vec<(String, i32, ErrorCode)>,
}

// ---- OffsetFetch ----

#[derive(Debug, Clone, PartialEq)]
pub struct OffsetFetchGroup {
    pub group_id: String,
    /// `None` asks for every partition the group committed.
    pub partitions: Option<Vec<(String, i32)>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OffsetFetchRequest {
    pub groups: Vec<OffsetFetchGroup>,
    /// v7+: answer UNSTABLE_OFFSET_COMMIT while a commit is being written.
    pub require_stable: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FetchedOffset {
    pub topic: String,
    pub partition: i32,
    /// -1 when nothing is committed.
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
    pub error: ErrorCode,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OffsetFetchGroupResponse {
    pub group_id: String,
    pub error: ErrorCode,
    pub partitions: Vec<FetchedOffset>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OffsetFetchResponse {
    pub groups: Vec<OffsetFetchGroupResponse>,
}

// ---- ListGroups / DescribeGroups / DeleteGroups ----

#[derive(Debug, Clone, PartialEq, Default)]
pub struct ListGroupsRequest {
    /// Kafka's state names ("Stable", "Empty", …); empty means all.
    pub states_filter: Vec<String>,
    pub types_filter: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ListedGroup {
    pub group_id: String,
    pub protocol_type: String,
    pub state: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ListGroupsResponse {
    pub error: ErrorCode,
    pub groups: Vec<ListedGroup>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DescribeGroupsRequest {
    pub groups: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DescribedMember {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub metadata: Bytes,
    pub assignment: Bytes,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DescribedGroup {
    pub error: ErrorCode,
    pub group_id: String,
    pub state: String,
    pub protocol_type: String,
    pub protocol: String,
    pub members: Vec<DescribedMember>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DescribeGroupsResponse {
    pub groups: Vec<DescribedGroup>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DeleteGroupsRequest {
    pub groups: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DeleteGroupsResponse {
    pub results: Vec<(String, ErrorCode)>,
}

// ---- the step contract ----

/// Names one append the coordinator asked for, so its outcome can be fed back.
pub type WriteId = u64;

#[derive(Debug, Clone, PartialEq)]
pub enum GroupInput {
    Request { id: RequestId, request: GroupRequest },
    /// Time has passed: expire sessions, finish rebalances, expire offsets.
    Tick,
    /// An [`GroupEffect::Append`] is durable (`Ok`) or could not be written.
    WriteDone { write: WriteId, result: Result<(), ErrorCode> },
    /// A topic was deleted: every group's committed offsets for it go too
    /// (as in Kafka), or a topic recreated under that name would be resumed
    /// at the old offsets and its first records skipped.
    TopicDeleted { topic: String },
    /// An OffsetCommit whose partitions the broker checked against its
    /// topics: those in `unknown` do not exist and are refused with
    /// UNKNOWN_TOPIC_OR_PARTITION whatever the group's state (as Kafka
    /// does), so no offset is ever stored for a partition that is not there.
    CheckedCommit { id: RequestId, request: OffsetCommitRequest, unknown: Vec<(String, i32)> },
}

/// One record for the offsets topic: key and value (`None` = tombstone).
pub type StoredRecord = (Vec<u8>, Option<Vec<u8>>);

#[derive(Debug, Clone, PartialEq)]
pub enum GroupEffect {
    Reply { id: RequestId, response: GroupResponse },
    /// Append these records to the offsets topic, make them durable and
    /// answer with [`GroupInput::WriteDone`].
    Append { write: WriteId, records: Vec<StoredRecord> },
    /// Feed [`GroupInput::Tick`] at or after this time.
    Timer { at: crate::Millis },
}

impl GroupRequest {
    /// The answer to this request when it cannot be served at all (this
    /// node is not the coordinator, or is still loading): `error`
    /// everywhere the response has a place for it.
    pub fn refused(&self, error: ErrorCode) -> GroupResponse {
        match self {
            GroupRequest::Join(r) => GroupResponse::Join(JoinGroupResponse::error(error, &r.member_id)),
            GroupRequest::Sync(_) => GroupResponse::Sync(SyncGroupResponse::error(error)),
            GroupRequest::Heartbeat(_) => GroupResponse::Heartbeat(HeartbeatResponse { error }),
            GroupRequest::Leave(r) => GroupResponse::Leave(LeaveGroupResponse {
                error,
                members: r.members.iter().map(|(m, i)| (m.clone(), i.clone(), error)).collect(),
            }),
            GroupRequest::OffsetCommit(r) => GroupResponse::OffsetCommit(OffsetCommitResponse {
                partitions: r.partitions.iter().map(|p| (p.topic.clone(), p.partition, error)).collect(),
            }),
            GroupRequest::OffsetFetch(r) => GroupResponse::OffsetFetch(OffsetFetchResponse {
                groups: r
                    .groups
                    .iter()
                    .map(|g| OffsetFetchGroupResponse { group_id: g.group_id.clone(), error, partitions: Vec::new() })
                    .collect(),
            }),
            GroupRequest::ListGroups(_) => GroupResponse::ListGroups(ListGroupsResponse { error, groups: Vec::new() }),
            GroupRequest::DescribeGroups(r) => GroupResponse::DescribeGroups(DescribeGroupsResponse {
                groups: r
                    .groups
                    .iter()
                    .map(|g| DescribedGroup {
                        error,
                        group_id: g.clone(),
                        state: String::new(),
                        protocol_type: String::new(),
                        protocol: String::new(),
                        members: Vec::new(),
                    })
                    .collect(),
            }),
            GroupRequest::DeleteGroups(r) => {
                GroupResponse::DeleteGroups(DeleteGroupsResponse { results: r.groups.iter().map(|g| (g.clone(), error)).collect() })
            }
        }
    }
}
