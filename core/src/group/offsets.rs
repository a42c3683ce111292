//! OffsetCommit and OffsetFetch. A commit is checked against the group's
//! generation when it arrives (a member fenced by a newer generation cannot
//! commit), written to the offsets topic, and applied and acknowledged only
//! once durable.

use super::state::{CommittedOffset, Group, GroupState};
use super::store::{StoredKey, StoredOffset};
use super::{
    FetchedOffset, GroupCoordinator, GroupEffect, GroupResponse, OffsetCommitRequest, OffsetCommitResponse, OffsetFetchGroupResponse,
    OffsetFetchRequest, OffsetFetchResponse, PendingWrite, reply,
};
use crate::broker::RequestId;
use crate::{ErrorCode, Millis};

impl GroupCoordinator {
    pub(super) fn commit(
        &mut self,
        now: Millis,
        id: RequestId,
        r: OffsetCommitRequest,
        unknown: &[(String, i32)],
        out: &mut Vec<GroupEffect>,
    ) {
        let group_error = self.check_commit(now, &r);
        let mut response = OffsetCommitResponse { partitions: Vec::with_capacity(r.partitions.len()) };
        let mut records = Vec::new();
        let mut offsets = Vec::new();
        for p in r.partitions {
            let error = if unknown.iter().any(|(t, n)| *t == p.topic && *n == p.partition) {
                ErrorCode::UnknownTopicOrPartition
            } else if !group_error.is_ok() {
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

    /// Drops every committed offset of a deleted topic, with tombstones; an
    /// empty group left with no offsets goes too (Kafka's cleanup of deleted
    /// partitions).
    pub(super) fn topic_deleted(&mut self, topic: &str, out: &mut Vec<GroupEffect>) {
        // A commit still being written was appended before the tombstones
        // below, so replay drops it: it must not come back in memory either.
        for pending in self.pending.values_mut() {
            if let PendingWrite::Commit { offsets, .. } = pending {
                offsets.retain(|((t, _), _)| t != topic);
            }
        }
        self.delete_offsets(
            |_, (t, _), _| t == topic,
            |g, removed| removed && g.state == GroupState::Empty && g.commits_in_flight == 0,
            out,
        );
    }

    /// Deletes, with tombstones, the committed offsets `doomed` picks, then
    /// every group left without offsets that `goes` says should go (it is
    /// told whether the group lost any offsets just now).
    pub(super) fn delete_offsets(
        &mut self,
        doomed: impl Fn(&Group, &(String, i32), &CommittedOffset) -> bool,
        goes: impl Fn(&Group, bool) -> bool,
        out: &mut Vec<GroupEffect>,
    ) {
        let mut records = Vec::new();
        let mut dead = Vec::new();
        for g in self.groups.values_mut() {
            let gone: Vec<(String, i32)> = g.offsets.iter().filter(|(k, c)| doomed(g, k, c)).map(|(k, _)| k.clone()).collect();
            for (topic, partition) in &gone {
                g.offsets.remove(&(topic.clone(), *partition));
                records.push((StoredKey::Offset { group: g.id.clone(), topic: topic.clone(), partition: *partition }.encode(), None));
            }
            if g.offsets.is_empty() && goes(g, !gone.is_empty()) {
                records.push((StoredKey::Group { group: g.id.clone() }.encode(), None));
                dead.push(g.id.clone());
            }
        }
        for id in dead {
            self.groups.remove(&id);
        }
        if !records.is_empty() {
            self.append(records, PendingWrite::Background, out);
        }
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

#[cfg(test)]
mod tests {
    use super::super::{
        CommitPartition, GroupConfig, GroupCoordinator, GroupEffect, GroupInput, GroupRequest, GroupResponse,
        OffsetCommitRequest, OffsetFetchGroup, OffsetFetchRequest, StoredRecord,
    };
    use crate::broker::RequestId;

    /// Steps the coordinator, completing every append at once; returns the
    /// replies and every record it asked to persist.
    fn step(c: &mut GroupCoordinator, now: i64, input: GroupInput, log: &mut Vec<StoredRecord>) -> Vec<GroupResponse> {
        let mut replies = Vec::new();
        let mut queue = vec![input];
        while let Some(input) = queue.pop() {
            let mut out = Vec::new();
            c.step(now, input, &mut out);
            for e in out {
                match e {
                    GroupEffect::Reply { response, .. } => replies.push(response),
                    GroupEffect::Append { write, records } => {
                        log.extend(records);
                        queue.push(GroupInput::WriteDone { write, result: Ok(()) });
                    }
                    GroupEffect::Timer { .. } => {}
                }
            }
        }
        replies
    }

    fn commit(c: &mut GroupCoordinator, group: &str, offsets: &[(&str, i32, i64)], log: &mut Vec<StoredRecord>) {
        let partitions = offsets
            .iter()
            .map(|&(t, p, o)| CommitPartition { topic: t.into(), partition: p, offset: o, leader_epoch: -1, metadata: None })
            .collect();
        let request = OffsetCommitRequest {
            group_id: group.into(),
            generation_id: -1,
            member_id: String::new(),
            group_instance_id: None,
            partitions,
        };
        let id = RequestId { conn: 1, seq: log.len() as u64 };
        let replies = step(c, 0, GroupInput::Request { id, request: GroupRequest::OffsetCommit(request) }, log);
        assert!(matches!(&replies[..], [GroupResponse::OffsetCommit(r)] if r.partitions.iter().all(|p| p.2.is_ok())));
    }

    fn offsets(c: &mut GroupCoordinator, group: &str) -> Vec<(String, i32, i64)> {
        let request = OffsetFetchRequest {
            groups: vec![OffsetFetchGroup { group_id: group.into(), partitions: None }],
            require_stable: false,
        };
        let id = RequestId { conn: 2, seq: 0 };
        match &step(c, 0, GroupInput::Request { id, request: GroupRequest::OffsetFetch(request) }, &mut Vec::new())[..] {
            [GroupResponse::OffsetFetch(r)] => r.groups[0].partitions.iter().map(|p| (p.topic.clone(), p.partition, p.offset)).collect(),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn partitions_the_broker_does_not_know_are_refused_first() {
        let mut c = GroupCoordinator::new(GroupConfig::default(), 1);
        let mut log = Vec::new();
        let partitions = vec![
            CommitPartition { topic: "a".into(), partition: 0, offset: 5, leader_epoch: -1, metadata: None },
            CommitPartition { topic: "a".into(), partition: 9, offset: 5, leader_epoch: -1, metadata: None },
            CommitPartition { topic: "gone".into(), partition: 0, offset: 5, leader_epoch: -1, metadata: None },
        ];
        let unknown = vec![("a".to_string(), 9), ("gone".to_string(), 0)];
        let errors = |c: &mut GroupCoordinator, generation: i32, log: &mut Vec<StoredRecord>| {
            let request = OffsetCommitRequest {
                group_id: "g".into(),
                generation_id: generation,
                member_id: String::new(),
                group_instance_id: None,
                partitions: partitions.clone(),
            };
            let id = RequestId { conn: 1, seq: 1 };
            match &step(c, 0, GroupInput::CheckedCommit { id, request, unknown: unknown.clone() }, log)[..] {
                [GroupResponse::OffsetCommit(r)] => r.partitions.iter().map(|p| p.2).collect::<Vec<_>>(),
                other => panic!("unexpected {other:?}"),
            }
        };
        use crate::ErrorCode::{IllegalGeneration, None as Ok, UnknownTopicOrPartition as Unknown};
        // Unknown partitions get their own error even when the group refuses
        // the commit for another reason.
        assert_eq!(errors(&mut c, 7, &mut log), vec![IllegalGeneration, Unknown, Unknown]);
        assert!(log.is_empty());
        assert_eq!(errors(&mut c, -1, &mut log), vec![Ok, Unknown, Unknown]);
        assert_eq!(offsets(&mut c, "g"), vec![("a".into(), 0, 5)]);
        assert_eq!(log.len(), 1, "only the known partition was written");
    }

    #[test]
    fn deleting_a_topic_deletes_its_offsets_durably() {
        let mut c = GroupCoordinator::new(GroupConfig::default(), 1);
        let mut log = Vec::new();
        commit(&mut c, "both", &[("a", 0, 5), ("a", 1, 6), ("b", 0, 7)], &mut log);
        commit(&mut c, "only-a", &[("a", 0, 9)], &mut log);
        commit(&mut c, "only-b", &[("b", 0, 3)], &mut log);
        step(&mut c, 0, GroupInput::TopicDeleted { topic: "a".into() }, &mut log);
        assert_eq!(offsets(&mut c, "both"), vec![("b".into(), 0, 7)]);
        assert_eq!(offsets(&mut c, "only-a"), vec![]);
        assert_eq!(offsets(&mut c, "only-b"), vec![("b".into(), 0, 3)]);
        // An empty group left with no offsets is gone, as in Kafka.
        assert!(c.group("only-a").is_none() && c.group("both").is_some());
        // A commit in flight when its topic goes is not applied afterwards.
        let mut out = Vec::new();
        let request = OffsetCommitRequest {
            group_id: "both".into(),
            generation_id: -1,
            member_id: String::new(),
            group_instance_id: None,
            partitions: vec![CommitPartition { topic: "b".into(), partition: 0, offset: 8, leader_epoch: -1, metadata: None }],
        };
        let id = RequestId { conn: 3, seq: 0 };
        c.step(0, GroupInput::Request { id, request: GroupRequest::OffsetCommit(request) }, &mut out);
        let write = out.iter().find_map(|e| match e {
            GroupEffect::Append { write, records } => {
                log.extend(records.clone());
                Some(*write)
            }
            _ => None,
        });
        step(&mut c, 0, GroupInput::TopicDeleted { topic: "b".into() }, &mut log);
        step(&mut c, 0, GroupInput::WriteDone { write: write.expect("the commit is written"), result: Ok(()) }, &mut log);
        assert_eq!(offsets(&mut c, "both"), vec![]);
        assert!(c.group("only-b").is_none());
        commit(&mut c, "both", &[("b", 0, 7)], &mut log);
        // A topic nobody committed to changes nothing and writes nothing.
        let before = log.len();
        step(&mut c, 0, GroupInput::TopicDeleted { topic: "zzz".into() }, &mut log);
        assert_eq!(log.len(), before);

        // What was persisted replays to the same state.
        let mut replayed = GroupCoordinator::new(GroupConfig::default(), 2);
        for (key, value) in &log {
            replayed.replay(key, value.as_deref()).unwrap();
        }
        assert_eq!(offsets(&mut replayed, "both"), vec![("b".into(), 0, 7)], "(after its topic came back)");
        assert_eq!(offsets(&mut replayed, "only-a"), vec![]);
        assert!(replayed.group("only-a").is_none() && replayed.group("only-b").is_none());
    }
}
