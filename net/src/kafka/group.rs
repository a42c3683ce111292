//! The consumer-group APIs on the wire: Kafka frames to coordinator
//! requests and back, version by version. As elsewhere, a field a version
//! lacks stays at its default (`kafka-protocol` refuses to encode it).

use bytes::Bytes;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{OffsetCommitResponsePartition, OffsetCommitResponseTopic};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions, OffsetFetchResponseTopic,
    OffsetFetchResponseTopics,
};
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::{
    ApiKey, DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest, DescribeGroupsResponse, GroupId, HeartbeatRequest,
    HeartbeatResponse, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse, ListGroupsRequest,
    ListGroupsResponse, OffsetCommitRequest, OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse, SyncGroupRequest,
    SyncGroupResponse, TopicName,
};
use kafka_protocol::protocol::{Decodable, StrBytes};
use millrace_core::group::{self as core, GroupRequest, GroupResponse};

use super::request::RequestMeta;

fn sb(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

fn opt(s: &Option<String>) -> Option<StrBytes> {
    s.as_deref().map(sb)
}

fn st(s: Option<StrBytes>) -> Option<String> {
    s.map(|s| s.to_string())
}

/// Decodes one group request body at `version`. `client_id` comes from the
/// request header (JoinGroup records it for DescribeGroups).
pub fn decode(key: ApiKey, buf: &mut Bytes, version: i16, client_id: &str) -> anyhow::Result<GroupRequest> {
    Ok(match key {
        ApiKey::JoinGroup => {
            let r = JoinGroupRequest::decode(buf, version)?;
            GroupRequest::Join(core::JoinGroupRequest {
                group_id: r.group_id.0.to_string(),
                session_timeout_ms: r.session_timeout_ms,
                // v0 has no rebalance timeout: Kafka uses the session timeout.
                rebalance_timeout_ms: if version >= 1 { r.rebalance_timeout_ms } else { r.session_timeout_ms },
                member_id: r.member_id.to_string(),
                group_instance_id: st(r.group_instance_id),
                protocol_type: r.protocol_type.to_string(),
                protocols: r.protocols.into_iter().map(|p| (p.name.to_string(), p.metadata)).collect(),
                require_known_member_id: version >= 4,
                client_id: client_id.to_string(),
                client_host: String::new(),
            })
        }
        ApiKey::SyncGroup => {
            let r = SyncGroupRequest::decode(buf, version)?;
            GroupRequest::Sync(core::SyncGroupRequest {
                group_id: r.group_id.0.to_string(),
                generation_id: r.generation_id,
                member_id: r.member_id.to_string(),
                group_instance_id: st(r.group_instance_id),
                assignments: r.assignments.into_iter().map(|a| (a.member_id.to_string(), a.assignment)).collect(),
            })
        }
        ApiKey::Heartbeat => {
            let r = HeartbeatRequest::decode(buf, version)?;
            GroupRequest::Heartbeat(core::HeartbeatRequest {
                group_id: r.group_id.0.to_string(),
                generation_id: r.generation_id,
                member_id: r.member_id.to_string(),
                group_instance_id: st(r.group_instance_id),
            })
        }
        ApiKey::LeaveGroup => {
            let r = LeaveGroupRequest::decode(buf, version)?;
            let members = if version >= 3 {
                r.members.into_iter().map(|m| (m.member_id.to_string(), st(m.group_instance_id))).collect()
            } else {
                vec![(r.member_id.to_string(), None)]
            };
            GroupRequest::Leave(core::LeaveGroupRequest { group_id: r.group_id.0.to_string(), members })
        }
        ApiKey::OffsetCommit => {
            let r = OffsetCommitRequest::decode(buf, version)?;
            let partitions = r
                .topics
                .into_iter()
                .flat_map(|t| {
                    let topic = t.name.0.to_string();
                    t.partitions.into_iter().map(move |p| core::CommitPartition {
                        topic: topic.clone(),
                        partition: p.partition_index,
                        offset: p.committed_offset,
                        leader_epoch: if version >= 6 { p.committed_leader_epoch } else { -1 },
                        metadata: st(p.committed_metadata),
                    })
                })
                .collect();
            GroupRequest::OffsetCommit(core::OffsetCommitRequest {
                group_id: r.group_id.0.to_string(),
                generation_id: r.generation_id_or_member_epoch,
                member_id: r.member_id.to_string(),
                group_instance_id: st(r.group_instance_id),
                partitions,
            })
        }
        ApiKey::OffsetFetch => {
            let r = OffsetFetchRequest::decode(buf, version)?;
            // v8+ asks for several groups; before, one (with the same shape).
            let groups = if version >= 8 {
                r.groups
                    .into_iter()
                    .map(|g| core::OffsetFetchGroup {
                        group_id: g.group_id.0.to_string(),
                        partitions: g.topics.map(|ts| flatten(ts.into_iter().map(|t| (t.name, t.partition_indexes)))),
                    })
                    .collect()
            } else {
                vec![core::OffsetFetchGroup {
                    group_id: r.group_id.0.to_string(),
                    partitions: r.topics.map(|ts| flatten(ts.into_iter().map(|t| (t.name, t.partition_indexes)))),
                }]
            };
            GroupRequest::OffsetFetch(core::OffsetFetchRequest { groups, require_stable: r.require_stable })
        }
        ApiKey::ListGroups => {
            let r = ListGroupsRequest::decode(buf, version)?;
            GroupRequest::ListGroups(core::ListGroupsRequest {
                states_filter: r.states_filter.into_iter().map(|s| s.to_string()).collect(),
                types_filter: r.types_filter.into_iter().map(|s| s.to_string()).collect(),
            })
        }
        ApiKey::DescribeGroups => {
            let r = DescribeGroupsRequest::decode(buf, version)?;
            GroupRequest::DescribeGroups(core::DescribeGroupsRequest { groups: r.groups.into_iter().map(|g| g.0.to_string()).collect() })
        }
        ApiKey::DeleteGroups => {
            let r = DeleteGroupsRequest::decode(buf, version)?;
            GroupRequest::DeleteGroups(core::DeleteGroupsRequest { groups: r.groups_names.into_iter().map(|g| g.0.to_string()).collect() })
        }
        other => anyhow::bail!("{other:?} is not a group API"),
    })
}

/// (topic, partitions) rows as (topic, partition) pairs.
fn flatten(topics: impl Iterator<Item = (TopicName, Vec<i32>)>) -> Vec<(String, i32)> {
    topics.flat_map(|(name, ps)| ps.into_iter().map(move |p| (name.0.to_string(), p))).collect()
}

/// Encodes a coordinator response as the frame for its request.
pub fn frame(meta: &RequestMeta, hv: i16, response: GroupResponse) -> anyhow::Result<Bytes> {
    let v = meta.version;
    match response {
        GroupResponse::Join(r) => super::response::frame(meta, hv, v, &join(r, v)),
        GroupResponse::Sync(r) => super::response::frame(meta, hv, v, &sync(r, v)),
        GroupResponse::Heartbeat(r) => super::response::frame(meta, hv, v, &HeartbeatResponse::default().with_error_code(r.error.code())),
        GroupResponse::Leave(r) => super::response::frame(meta, hv, v, &leave(r, v)),
        GroupResponse::OffsetCommit(r) => super::response::frame(meta, hv, v, &offset_commit(r)),
        GroupResponse::OffsetFetch(r) => super::response::frame(meta, hv, v, &offset_fetch(r, v)),
        GroupResponse::ListGroups(r) => super::response::frame(meta, hv, v, &list_groups(r, v)),
        GroupResponse::DescribeGroups(r) => super::response::frame(meta, hv, v, &describe_groups(r, v)),
        GroupResponse::DeleteGroups(r) => super::response::frame(meta, hv, v, &delete_groups(r)),
    }
}

fn join(r: core::JoinGroupResponse, v: i16) -> JoinGroupResponse {
    let members = r
        .members
        .into_iter()
        .map(|m| {
            let mut jm = JoinGroupResponseMember::default().with_member_id(sb(&m.member_id)).with_metadata(m.metadata);
            if v >= 5 {
                jm = jm.with_group_instance_id(opt(&m.group_instance_id));
            }
            jm
        })
        .collect();
    let mut out = JoinGroupResponse::default()
        .with_error_code(r.error.code())
        .with_generation_id(r.generation_id)
        .with_protocol_name(opt(&r.protocol_name))
        .with_leader(sb(&r.leader))
        .with_member_id(sb(&r.member_id))
        .with_members(members);
    if v >= 7 {
        out = out.with_protocol_type(opt(&r.protocol_type));
    } else if out.protocol_name.is_none() {
        // Before v7 the protocol name is not nullable.
        out = out.with_protocol_name(Some(sb("")));
    }
    out
}

fn sync(r: core::SyncGroupResponse, v: i16) -> SyncGroupResponse {
    let mut out = SyncGroupResponse::default().with_error_code(r.error.code()).with_assignment(r.assignment);
    if v >= 5 {
        out = out.with_protocol_type(opt(&r.protocol_type)).with_protocol_name(opt(&r.protocol_name));
    }
    out
}

fn leave(r: core::LeaveGroupResponse, v: i16) -> LeaveGroupResponse {
    let mut out = LeaveGroupResponse::default().with_error_code(r.error.code());
    if v >= 3 {
        out = out.with_error_code(0).with_members(
            r.members
                .into_iter()
                .map(|(m, i, e)| MemberResponse::default().with_member_id(sb(&m)).with_group_instance_id(opt(&i)).with_error_code(e.code()))
                .collect(),
        );
    }
    out
}

/// Groups (topic, partition, value) rows by topic, keeping first-seen order.
fn by_topic<T>(rows: impl IntoIterator<Item = (String, T)>) -> Vec<(String, Vec<T>)> {
    let mut out: Vec<(String, Vec<T>)> = Vec::new();
    for (topic, row) in rows {
        match out.iter_mut().find(|(t, _)| *t == topic) {
            Some((_, rows)) => rows.push(row),
            None => out.push((topic, vec![row])),
        }
    }
    out
}

fn offset_commit(r: core::OffsetCommitResponse) -> OffsetCommitResponse {
    let topics = by_topic(r.partitions.into_iter().map(|(t, p, e)| (t, (p, e))))
        .into_iter()
        .map(|(t, ps)| {
            OffsetCommitResponseTopic::default().with_name(TopicName(sb(&t))).with_partitions(
                ps.into_iter()
                    .map(|(p, e)| OffsetCommitResponsePartition::default().with_partition_index(p).with_error_code(e.code()))
                    .collect(),
            )
        })
        .collect();
    OffsetCommitResponse::default().with_topics(topics)
}

fn offset_fetch(r: core::OffsetFetchResponse, v: i16) -> OffsetFetchResponse {
    if v >= 8 {
        let groups = r
            .groups
            .into_iter()
            .map(|g| {
                let topics = by_topic(g.partitions.into_iter().map(|p| (p.topic.clone(), p)))
                    .into_iter()
                    .map(|(t, ps)| {
                        OffsetFetchResponseTopics::default().with_name(TopicName(sb(&t))).with_partitions(
                            ps.into_iter()
                                .map(|p| {
                                    OffsetFetchResponsePartitions::default()
                                        .with_partition_index(p.partition)
                                        .with_committed_offset(p.offset)
                                        .with_committed_leader_epoch(p.leader_epoch)
                                        .with_metadata(opt(&p.metadata))
                                        .with_error_code(p.error.code())
                                })
                                .collect(),
                        )
                    })
                    .collect();
                OffsetFetchResponseGroup::default().with_group_id(GroupId(sb(&g.group_id))).with_topics(topics).with_error_code(g.error.code())
            })
            .collect();
        return OffsetFetchResponse::default().with_groups(groups);
    }
    let g = r.groups.into_iter().next().expect("one group before v8");
    let topics = by_topic(g.partitions.into_iter().map(|p| (p.topic.clone(), p)))
        .into_iter()
        .map(|(t, ps)| {
            OffsetFetchResponseTopic::default().with_name(TopicName(sb(&t))).with_partitions(
                ps.into_iter()
                    .map(|p| {
                        let mut out = OffsetFetchResponsePartition::default()
                            .with_partition_index(p.partition)
                            .with_committed_offset(p.offset)
                            .with_metadata(opt(&p.metadata))
                            .with_error_code(p.error.code());
                        if v >= 5 {
                            out = out.with_committed_leader_epoch(p.leader_epoch);
                        }
                        out
                    })
                    .collect(),
            )
        })
        .collect();
    let mut out = OffsetFetchResponse::default().with_topics(topics);
    if v >= 2 {
        out = out.with_error_code(g.error.code());
    }
    out
}

fn list_groups(r: core::ListGroupsResponse, v: i16) -> ListGroupsResponse {
    let groups = r
        .groups
        .into_iter()
        .map(|g| {
            let mut out = ListedGroup::default().with_group_id(GroupId(sb(&g.group_id))).with_protocol_type(sb(&g.protocol_type));
            if v >= 4 {
                out = out.with_group_state(sb(&g.state));
            }
            if v >= 5 {
                out = out.with_group_type(sb("classic"));
            }
            out
        })
        .collect();
    ListGroupsResponse::default().with_error_code(r.error.code()).with_groups(groups)
}

fn describe_groups(r: core::DescribeGroupsResponse, v: i16) -> DescribeGroupsResponse {
    let groups = r
        .groups
        .into_iter()
        .map(|g| {
            let members = g
                .members
                .into_iter()
                .map(|m| {
                    let mut out = DescribedGroupMember::default()
                        .with_member_id(sb(&m.member_id))
                        .with_client_id(sb(&m.client_id))
                        .with_client_host(sb(&m.client_host))
                        .with_member_metadata(m.metadata)
                        .with_member_assignment(m.assignment);
                    if v >= 4 {
                        out = out.with_group_instance_id(opt(&m.group_instance_id));
                    }
                    out
                })
                .collect();
            let mut out = DescribedGroup::default()
                .with_error_code(g.error.code())
                .with_group_id(GroupId(sb(&g.group_id)))
                .with_group_state(sb(&g.state))
                .with_protocol_type(sb(&g.protocol_type))
                .with_protocol_data(sb(&g.protocol))
                .with_members(members);
            if v >= 3 {
                // Not computed: Kafka's "unknown" marker.
                out = out.with_authorized_operations(i32::MIN);
            }
            out
        })
        .collect();
    DescribeGroupsResponse::default().with_groups(groups)
}

fn delete_groups(r: core::DeleteGroupsResponse) -> DeleteGroupsResponse {
    DeleteGroupsResponse::default().with_results(
        r.results
            .into_iter()
            .map(|(g, e)| DeletableGroupResult::default().with_group_id(GroupId(sb(&g))).with_error_code(e.code()))
            .collect(),
    )
}
