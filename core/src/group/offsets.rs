//! OffsetCommit and OffsetFetch. A commit is checked against the group's
//! generation when it arrives (a member fenced by a newer generation cannot
//! commit), written to the offsets topic, and applied and acknowledged only
//! once durable.

use super::group::{CommittedOffset, Group, GroupState};
use super::store::{StoredKey, StoredOffset};
use super::{
    FetchedOffset, GroupCoordinator, GroupEffect, GroupResponse, OffsetCommitRequest, OffsetCommitResponse, OffsetFetchGroupResponse,
    OffsetFetchRequest, OffsetFetchResponse, PendingWrite, reply,
};
use crate::broker::RequestId;
use crate::{ErrorCode, Millis};

impl GroupCoordinator {
    pub(super) fn commit(&mut self, now: Millis, id: RequestId, r: OffsetCommitRequest, out: &mut Vec<GroupEffect>) {
        let group_error = self.check_commit(now, &r);
        let mut response = OffsetCommitResponse { partitions: Vec::with_capacity(r.partitions.len()) };
        let mut records = Vec::new();
        let mut offsets = Vec::new();
        for p in r.partitions {
            let error = if !group_error.is_ok() {
                group_error
            } else if p.metadata.as_ref().is_some_and(|m| m.len() > self.config.offset_metadata_max_bytes) {
                ErrorCode::OffsetMetadataTooLarge
            } else if p.partition < 0 || p.topic.is_empty() {
                ErrorCode::UnknownTopicOrPartition
            } else {
                let key = StoredKey::Offset { group: r.group_id.clone(), topic: p.topic.clone(), partition: p.partition };
                let value =
                    StoredOffset { offset: p.offset, leader_epoch: p.leader_epoch, metadata: p.metadata.clone(), commit_timestamp: now };
                records.push((key.encode(), Some(value.encode())));
                let committed =
                    CommittedOffset { offset: p.offset, leader_epoch: p.leader_epoch, metadata: p.metadata, commit_timestamp: now };
                offsets.push(((p.topic.clone(), p.partition), committed));
                ErrorCode::None
            };
            response.partitions.push((p.topic, p.partition, error));
        }
        if records.is_empty() {
            return reply(out, id, GroupResponse::OffsetCommit(response));
        }
        let group = self.groups.entry(r.group_id.clone()).or_insert_with(|| Group::new(&r.group_id, now));
        group.commits_in_flight += 1;
        self.append(records, PendingWrite::Commit { id, group: r.group_id, offsets, response }, out);
    }

    /// Whether this member may commit now (Kafka's order of checks).
    fn check_commit(&mut self, now: Millis, r: &OffsetCommitRequest) -> ErrorCode {
        if r.group_id.is_empty() {
            return ErrorCode::InvalidGroupId;
        }
        let Some(group) = self.groups.get_mut(&r.group_id) else {
            // A group nobody joined: only commits from outside the group
            // protocol (generation -1) may create it.
            return if r.generation_id < 0 { ErrorCode::None } else { ErrorCode::IllegalGeneration };
        };
        if r.generation_id < 0 && group.state == GroupState::Empty {
            return ErrorCode::None;
        }
        if let Err(e) = group.check_member(&r.member_id, r.group_instance_id.as_deref()) {
            return e;
        }
        if group.state == GroupState::CompletingRebalance {
            return ErrorCode::RebalanceInProgress;
        }
        if r.generation_id != group.generation {
            return ErrorCode::IllegalGeneration;
        }
        // A commit also proves the member is alive.
        group.members.get_mut(&r.member_id).expect("checked").touch(now);
        ErrorCode::None
    }

    pub(super) fn fetch_offsets(&self, r: OffsetFetchRequest) -> OffsetFetchResponse {
        let groups = r
            .groups
            .into_iter()
            .map(|req| {
                let group = self.groups.get(&req.group_id);
                let unstable = r.require_stable && group.is_some_and(|g| g.commits_in_flight > 0);
                let error = if req.group_id.is_empty() {
                    ErrorCode::InvalidGroupId
                } else if unstable {
                    ErrorCode::UnstableOffsetCommit
                } else {
                    ErrorCode::None
                };
                let lookup = |topic: &str, partition: i32| {
                    let committed = group.and_then(|g| g.offsets.get(&(topic.to_string(), partition)));
                    FetchedOffset {
                        topic: topic.to_string(),
                        partition,
                        offset: committed.map_or(-1, |c| c.offset),
                        leader_epoch: committed.map_or(-1, |c| c.leader_epoch),
                        metadata: committed.and_then(|c| c.metadata.clone()),
                        error,
                    }
                };
                let partitions = match req.partitions {
                    Some(ps) => ps.iter().map(|(t, p)| lookup(t, *p)).collect(),
                    None => group.map(|g| g.offsets.keys().map(|(t, p)| lookup(t, *p)).collect()).unwrap_or_default(),
                };
                OffsetFetchGroupResponse { group_id: req.group_id, error, partitions }
            })
            .collect();
        OffsetFetchResponse { groups }
    }
}
