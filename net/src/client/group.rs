//! The group APIs from the client side: membership calls (join, sync,
//! heartbeat, leave), offset commits and fetches, and group administration.
//! Subscriptions and assignments use Kafka's consumer protocol encoding, so
//! Millrace's own consumers can share a group with librdkafka or Java ones.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition as AssignedTopic;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::offset_commit_request::{OffsetCommitRequestPartition, OffsetCommitRequestTopic};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    ConsumerProtocolAssignment, ConsumerProtocolSubscription, DeleteGroupsRequest, DescribeGroupsRequest, FindCoordinatorRequest,
    GroupId, HeartbeatRequest, JoinGroupRequest, LeaveGroupRequest, ListGroupsRequest, OffsetCommitRequest, OffsetFetchRequest,
    SyncGroupRequest,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use super::{Client, ClientError, topic_name};

const FIND_COORDINATOR_V: i16 = 3;
const JOIN_GROUP_V: i16 = 7;
const SYNC_GROUP_V: i16 = 5;
const HEARTBEAT_V: i16 = 4;
const LEAVE_GROUP_V: i16 = 4;
const OFFSET_COMMIT_V: i16 = 8;
const OFFSET_FETCH_V: i16 = 7;
const LIST_GROUPS_V: i16 = 4;
const DESCRIBE_GROUPS_V: i16 = 5;
const DELETE_GROUPS_V: i16 = 2;
/// Version of the embedded consumer protocol we write.
const CONSUMER_PROTOCOL_V: i16 = 1;

/// Kafka's error codes the membership loop reacts to.
pub const REBALANCE_IN_PROGRESS: i16 = 27;
pub const ILLEGAL_GENERATION: i16 = 22;
pub const UNKNOWN_MEMBER_ID: i16 = 25;
pub const MEMBER_ID_REQUIRED: i16 = 79;
pub const FENCED_INSTANCE_ID: i16 = 82;

fn sb(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

fn group_id(s: &str) -> GroupId {
    GroupId(sb(s))
}

/// A member's identity within a generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    pub group: String,
    pub member_id: String,
    pub instance_id: Option<String>,
    pub generation: i32,
    pub leader: String,
    pub protocol: String,
}

/// What JoinGroup gave back: the membership, and for the leader every
/// member's subscribed topics.
#[derive(Debug, Clone)]
pub struct Joined {
    pub membership: Membership,
    pub members: Vec<(String, Vec<String>)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMemberInfo {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    /// Decoded from the consumer protocol (empty if it is another protocol).
    pub assignment: Vec<(String, i32)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDescription {
    pub group: String,
    pub state: String,
    pub protocol_type: String,
    pub protocol: String,
    pub members: Vec<GroupMemberInfo>,
}

/// Encodes a consumer-protocol subscription (version prefix + body).
pub fn encode_subscription(topics: &[String]) -> Bytes {
    let sub = ConsumerProtocolSubscription::default().with_topics(topics.iter().map(|t| sb(t)).collect());
    let mut buf = BytesMut::new();
    buf.put_i16(CONSUMER_PROTOCOL_V);
    sub.encode(&mut buf, CONSUMER_PROTOCOL_V).expect("subscription encodes");
    buf.freeze()
}

pub fn decode_subscription(mut bytes: Bytes) -> Result<Vec<String>, ClientError> {
    if bytes.len() < 2 {
        return Err(ClientError::Protocol("subscription shorter than its version".into()));
    }
    let v = bytes.get_i16().clamp(0, 3);
    let sub = ConsumerProtocolSubscription::decode(&mut bytes, v).map_err(|e| ClientError::Protocol(format!("subscription: {e}")))?;
    Ok(sub.topics.into_iter().map(|t| t.to_string()).collect())
}

pub fn encode_assignment(partitions: &[(String, i32)]) -> Bytes {
    let mut topics: Vec<AssignedTopic> = Vec::new();
    for (t, p) in partitions {
        match topics.iter_mut().find(|x| x.topic.0.as_str() == t) {
            Some(x) => x.partitions.push(*p),
            None => topics.push(AssignedTopic::default().with_topic(topic_name(t)).with_partitions(vec![*p])),
        }
    }
    let a = ConsumerProtocolAssignment::default().with_assigned_partitions(topics);
    let mut buf = BytesMut::new();
    buf.put_i16(CONSUMER_PROTOCOL_V);
    a.encode(&mut buf, CONSUMER_PROTOCOL_V).expect("assignment encodes");
    buf.freeze()
}

pub fn decode_assignment(mut bytes: Bytes) -> Result<Vec<(String, i32)>, ClientError> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    if bytes.len() < 2 {
        return Err(ClientError::Protocol("assignment shorter than its version".into()));
    }
    let v = bytes.get_i16().clamp(0, 3);
    let a = ConsumerProtocolAssignment::decode(&mut bytes, v).map_err(|e| ClientError::Protocol(format!("assignment: {e}")))?;
    Ok(a.assigned_partitions.into_iter().flat_map(|t| t.partitions.into_iter().map(move |p| (t.topic.0.to_string(), p))).collect())
}

/// The range assignor (Kafka's default): per topic, consecutive partition
/// ranges over the members subscribed to it, sorted by member id.
pub fn range_assign(members: &[(String, Vec<String>)], partitions_of: &dyn Fn(&str) -> Vec<i32>) -> Vec<(String, Vec<(String, i32)>)> {
    let mut out: Vec<(String, Vec<(String, i32)>)> = members.iter().map(|(m, _)| (m.clone(), Vec::new())).collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    let mut topics: Vec<&String> = members.iter().flat_map(|(_, ts)| ts).collect();
    topics.sort();
    topics.dedup();
    for topic in topics {
        let subscribed: Vec<usize> = out
            .iter()
            .enumerate()
            .filter(|(_, (m, _))| members.iter().any(|(id, ts)| id == m && ts.contains(topic)))
            .map(|(i, _)| i)
            .collect();
        let parts = partitions_of(topic);
        let n = subscribed.len();
        if n == 0 {
            continue;
        }
        let (each, extra) = (parts.len() / n, parts.len() % n);
        let mut next = 0;
        for (k, &i) in subscribed.iter().enumerate() {
            let take = each + usize::from(k < extra);
            for &p in &parts[next..next + take] {
                out[i].1.push((topic.clone(), p));
            }
            next += take;
        }
    }
    out
}

impl Client {
    /// Asks which broker coordinates `group` (always this one on a single node).
    pub async fn find_coordinator(&mut self, group: &str) -> Result<(i32, String, i32), ClientError> {
        let req = FindCoordinatorRequest::default().with_key(sb(group)).with_key_type(0);
        let resp = self.conn.call(&req, FIND_COORDINATOR_V).await?;
        if resp.error_code != 0 {
            return Err(ClientError::kafka(format!("finding the coordinator of {group}"), resp.error_code, resp.error_message.map(|m| m.to_string())));
        }
        Ok((resp.node_id.0, resp.host.to_string(), resp.port))
    }

    /// A routed client whose own connection goes to `group`'s coordinator
    /// (asked through the first reachable address of `bootstrap`; retried
    /// while the cluster has none yet, e.g. the offsets topic is new).
    pub async fn connect_to_coordinator(bootstrap: &str, group: &str) -> Result<Client, ClientError> {
        let mut client = Client::connect_routed(bootstrap).await?;
        let mut attempt = 0;
        let (_, host, port) = loop {
            match client.find_coordinator(group).await {
                Err(e) if e.code() == Some(15) && attempt < 20 => {
                    attempt += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                }
                other => break other?,
            }
        };
        let addr = format!("{host}:{port}");
        if client.routing.as_ref().is_some_and(|r| r.bootstrap == addr) {
            return Ok(client);
        }
        Client::connect_routed(&addr).await
    }

    /// JoinGroup, including the MEMBER_ID_REQUIRED round trip. Blocks until
    /// the rebalance completes (the broker answers when the generation forms).
    pub async fn join_group(
        &mut self,
        group: &str,
        member_id: &str,
        instance_id: Option<&str>,
        topics: &[String],
        session_timeout_ms: i32,
        rebalance_timeout_ms: i32,
    ) -> Result<Joined, ClientError> {
        let mut member_id = member_id.to_string();
        for _ in 0..2 {
            let req = JoinGroupRequest::default()
                .with_group_id(group_id(group))
                .with_session_timeout_ms(session_timeout_ms)
                .with_rebalance_timeout_ms(rebalance_timeout_ms)
                .with_member_id(sb(&member_id))
                .with_group_instance_id(instance_id.map(sb))
                .with_protocol_type(sb("consumer"))
                .with_protocols(vec![JoinGroupRequestProtocol::default().with_name(sb("range")).with_metadata(encode_subscription(topics))]);
            let resp = self.conn.call(&req, JOIN_GROUP_V).await?;
            if resp.error_code == MEMBER_ID_REQUIRED {
                member_id = resp.member_id.to_string();
                continue;
            }
            if resp.error_code != 0 {
                return Err(ClientError::kafka(format!("joining group {group}"), resp.error_code, None));
            }
            let members = resp
                .members
                .into_iter()
                .map(|m| Ok((m.member_id.to_string(), decode_subscription(m.metadata)?)))
                .collect::<Result<Vec<_>, ClientError>>()?;
            return Ok(Joined {
                membership: Membership {
                    group: group.to_string(),
                    member_id: resp.member_id.to_string(),
                    instance_id: instance_id.map(str::to_string),
                    generation: resp.generation_id,
                    leader: resp.leader.to_string(),
                    protocol: resp.protocol_name.map(|p| p.to_string()).unwrap_or_default(),
                },
                members,
            });
        }
        Err(ClientError::Protocol("the broker asked for a member id twice".into()))
    }

    /// SyncGroup: the leader passes every member's assignment; everybody
    /// gets its own back.
    pub async fn sync_group(&mut self, m: &Membership, assignments: &[(String, Vec<(String, i32)>)]) -> Result<Vec<(String, i32)>, ClientError> {
        let req = SyncGroupRequest::default()
            .with_group_id(group_id(&m.group))
            .with_generation_id(m.generation)
            .with_member_id(sb(&m.member_id))
            .with_group_instance_id(m.instance_id.as_deref().map(sb))
            .with_protocol_type(Some(sb("consumer")))
            .with_protocol_name(Some(sb(&m.protocol)))
            .with_assignments(
                assignments
                    .iter()
                    .map(|(id, ps)| SyncGroupRequestAssignment::default().with_member_id(sb(id)).with_assignment(encode_assignment(ps)))
                    .collect(),
            );
        let resp = self.conn.call(&req, SYNC_GROUP_V).await?;
        if resp.error_code != 0 {
            return Err(ClientError::kafka(format!("syncing group {}", m.group), resp.error_code, None));
        }
        decode_assignment(resp.assignment)
    }

    pub async fn heartbeat(&mut self, m: &Membership) -> Result<(), ClientError> {
        let req = HeartbeatRequest::default()
            .with_group_id(group_id(&m.group))
            .with_generation_id(m.generation)
            .with_member_id(sb(&m.member_id))
            .with_group_instance_id(m.instance_id.as_deref().map(sb));
        let resp = self.conn.call(&req, HEARTBEAT_V).await?;
        if resp.error_code != 0 {
            return Err(ClientError::kafka(format!("heartbeat to group {}", m.group), resp.error_code, None));
        }
        Ok(())
    }

    pub async fn leave_group(&mut self, m: &Membership) -> Result<(), ClientError> {
        let req = LeaveGroupRequest::default().with_group_id(group_id(&m.group)).with_members(vec![MemberIdentity::default()
            .with_member_id(sb(&m.member_id))
            .with_group_instance_id(m.instance_id.as_deref().map(sb))]);
        let resp = self.conn.call(&req, LEAVE_GROUP_V).await?;
        let code = if resp.error_code != 0 { resp.error_code } else { resp.members.first().map_or(0, |r| r.error_code) };
        if code != 0 {
            return Err(ClientError::kafka(format!("leaving group {}", m.group), code, None));
        }
        Ok(())
    }

    /// Commits `offsets` (the next offset to read, per partition). A
    /// generation of -1 commits from outside the group protocol.
    pub async fn commit_offsets(
        &mut self,
        group: &str,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
        offsets: &[(String, i32, i64)],
    ) -> Result<(), ClientError> {
        let mut topics: Vec<OffsetCommitRequestTopic> = Vec::new();
        for (t, p, o) in offsets {
            let row = OffsetCommitRequestPartition::default().with_partition_index(*p).with_committed_offset(*o).with_committed_leader_epoch(-1);
            match topics.iter_mut().find(|x| x.name.0.as_str() == t) {
                Some(x) => x.partitions.push(row),
                None => topics.push(OffsetCommitRequestTopic::default().with_name(topic_name(t)).with_partitions(vec![row])),
            }
        }
        let req = OffsetCommitRequest::default()
            .with_group_id(group_id(group))
            .with_generation_id_or_member_epoch(generation)
            .with_member_id(sb(member_id))
            .with_group_instance_id(instance_id.map(sb))
            .with_topics(topics);
        let resp = self.conn.call(&req, OFFSET_COMMIT_V).await?;
        for t in resp.topics {
            for p in t.partitions {
                if p.error_code != 0 {
                    return Err(ClientError::kafka(format!("committing {}-{} for group {group}", t.name.0, p.partition_index), p.error_code, None));
                }
            }
        }
        Ok(())
    }

    /// Committed offsets of `group` (-1 where none): for `partitions`, or
    /// every partition the group committed when `None`.
    pub async fn fetch_offsets(&mut self, group: &str, partitions: Option<&[(String, i32)]>) -> Result<Vec<(String, i32, i64)>, ClientError> {
        let topics = partitions.map(|ps| {
            let mut topics: Vec<OffsetFetchRequestTopic> = Vec::new();
            for (t, p) in ps {
                match topics.iter_mut().find(|x| x.name.0.as_str() == t) {
                    Some(x) => x.partition_indexes.push(*p),
                    None => topics.push(OffsetFetchRequestTopic::default().with_name(topic_name(t)).with_partition_indexes(vec![*p])),
                }
            }
            topics
        });
        let req = OffsetFetchRequest::default().with_group_id(group_id(group)).with_topics(topics).with_require_stable(true);
        let resp = self.conn.call(&req, OFFSET_FETCH_V).await?;
        if resp.error_code != 0 {
            return Err(ClientError::kafka(format!("fetching offsets of group {group}"), resp.error_code, None));
        }
        let mut out = Vec::new();
        for t in resp.topics {
            for p in t.partitions {
                if p.error_code != 0 {
                    return Err(ClientError::kafka(format!("fetching offsets of group {group}"), p.error_code, None));
                }
                out.push((t.name.0.to_string(), p.partition_index, p.committed_offset));
            }
        }
        Ok(out)
    }

    /// (group id, protocol type, state) of every group.
    pub async fn list_groups(&mut self) -> Result<Vec<(String, String, String)>, ClientError> {
        let resp = self.conn.call(&ListGroupsRequest::default(), LIST_GROUPS_V).await?;
        if resp.error_code != 0 {
            return Err(ClientError::kafka("listing groups", resp.error_code, None));
        }
        let mut out: Vec<_> =
            resp.groups.into_iter().map(|g| (g.group_id.0.to_string(), g.protocol_type.to_string(), g.group_state.to_string())).collect();
        out.sort();
        Ok(out)
    }

    pub async fn describe_group(&mut self, group: &str) -> Result<GroupDescription, ClientError> {
        let req = DescribeGroupsRequest::default().with_groups(vec![group_id(group)]);
        let resp = self.conn.call(&req, DESCRIBE_GROUPS_V).await?;
        let g = resp.groups.into_iter().next().ok_or_else(|| ClientError::Protocol("empty describe-groups response".into()))?;
        if g.error_code != 0 {
            return Err(ClientError::kafka(format!("describing group {group}"), g.error_code, None));
        }
        let consumer = g.protocol_type.as_str() == "consumer";
        let members = g
            .members
            .into_iter()
            .map(|m| GroupMemberInfo {
                member_id: m.member_id.to_string(),
                instance_id: m.group_instance_id.map(|i| i.to_string()),
                client_id: m.client_id.to_string(),
                client_host: m.client_host.to_string(),
                assignment: if consumer { decode_assignment(m.member_assignment).unwrap_or_default() } else { Vec::new() },
            })
            .collect();
        Ok(GroupDescription {
            group: g.group_id.0.to_string(),
            state: g.group_state.to_string(),
            protocol_type: g.protocol_type.to_string(),
            protocol: g.protocol_data.to_string(),
            members,
        })
    }

    pub async fn delete_group(&mut self, group: &str) -> Result<(), ClientError> {
        let req = DeleteGroupsRequest::default().with_groups_names(vec![group_id(group)]);
        let resp = self.conn.call(&req, DELETE_GROUPS_V).await?;
        for r in resp.results {
            if r.error_code != 0 {
                return Err(ClientError::kafka(format!("deleting group {group}"), r.error_code, None));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumer_protocol_round_trips() {
        let topics = vec!["a".to_string(), "b".to_string()];
        assert_eq!(decode_subscription(encode_subscription(&topics)).unwrap(), topics);
        let parts = vec![("a".to_string(), 0), ("a".to_string(), 2), ("b".to_string(), 1)];
        assert_eq!(decode_assignment(encode_assignment(&parts)).unwrap(), parts);
        assert!(decode_assignment(Bytes::from_static(b"\x00")).is_err());
        assert_eq!(decode_assignment(Bytes::new()).unwrap(), vec![]);
    }

    #[test]
    fn range_assignor_splits_evenly_and_disjointly() {
        let members: Vec<(String, Vec<String>)> =
            ["m2", "m1", "m3"].iter().map(|m| (m.to_string(), vec!["t".to_string()])).collect();
        let got = range_assign(&members, &|_| (0..7).collect());
        let sizes: Vec<usize> = got.iter().map(|(_, ps)| ps.len()).collect();
        assert_eq!(sizes, vec![3, 2, 2]);
        assert_eq!(got[0].0, "m1");
        let mut all: Vec<i32> = got.iter().flat_map(|(_, ps)| ps.iter().map(|(_, p)| *p)).collect();
        all.sort();
        assert_eq!(all, (0..7).collect::<Vec<_>>());
    }
}
