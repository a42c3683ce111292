//! SyncGroup (the leader hands out assignments), Heartbeat and LeaveGroup.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::state::GroupState;
use super::store::StoredKey;
use super::{
    GroupCoordinator, GroupEffect, GroupResponse, HeartbeatRequest, HeartbeatResponse, LeaveGroupRequest, LeaveGroupResponse,
    PendingWrite, SyncGroupRequest, SyncGroupResponse, reply,
};
use crate::broker::RequestId;
use crate::{ErrorCode, Millis};

impl GroupCoordinator {
    pub(super) fn sync(&mut self, now: Millis, id: RequestId, r: SyncGroupRequest, out: &mut Vec<GroupEffect>) {
        let fail = |out: &mut Vec<GroupEffect>, e: ErrorCode| reply(out, id, GroupResponse::Sync(SyncGroupResponse::error(e)));
        let Some(group) = self.groups.get_mut(&r.group_id) else {
            return fail(out, ErrorCode::UnknownMemberId);
        };
        if let Err(e) = group.check_member(&r.member_id, r.group_instance_id.as_deref()) {
            return fail(out, e);
        }
        if r.generation_id != group.generation {
            return fail(out, ErrorCode::IllegalGeneration);
        }
        let is_leader = group.leader.as_deref() == Some(r.member_id.as_str());
        let member = group.members.get_mut(&r.member_id).expect("checked");
        member.touch(now);
        match group.state {
            GroupState::Empty => fail(out, ErrorCode::UnknownMemberId),
            GroupState::PreparingRebalance => fail(out, ErrorCode::RebalanceInProgress),
            GroupState::Stable => {
                let response = SyncGroupResponse {
                    error: ErrorCode::None,
                    protocol_type: Some(group.protocol_type.clone()),
                    protocol_name: group.protocol.clone(),
                    assignment: member.assignment.clone(),
                };
                reply(out, id, GroupResponse::Sync(response));
            }
            GroupState::CompletingRebalance => {
                if let Some(old) = member.awaiting_sync.replace(id) {
                    reply(out, old, GroupResponse::Sync(SyncGroupResponse::error(ErrorCode::RebalanceInProgress)));
                }
                if is_leader && group.assignment_write.is_none() {
                    // Assignments for ids that are not members are dropped;
                    // members the leader left out get an empty assignment.
                    let assignments: BTreeMap<String, Bytes> = r
                        .assignments
                        .into_iter()
                        .filter(|(m, _)| group.members.contains_key(m))
                        .collect();
                    let stored = group.to_stored(&assignments);
                    let generation = group.generation;
                    let key = StoredKey::Group { group: r.group_id.clone() }.encode();
                    let write = self.next_write;
                    self.groups.get_mut(&r.group_id).expect("exists").assignment_write = Some(write);
                    let then = PendingWrite::Assignment { group: r.group_id.clone(), generation, assignments };
                    self.append(vec![(key, Some(stored.encode()))], then, out);
                }
            }
        }
    }

    /// The leader's assignment is durable (or could not be written): hand it
    /// out, or make everybody rejoin.
    pub(super) fn assignment_done(
        &mut self,
        now: Millis,
        group_id: &str,
        generation: i32,
        assignments: BTreeMap<String, Bytes>,
        result: Result<(), ErrorCode>,
        out: &mut Vec<GroupEffect>,
    ) {
        let Some(group) = self.groups.get_mut(group_id) else { return };
        if group.generation != generation || group.state != GroupState::CompletingRebalance || group.assignment_write.is_none() {
            return;
        }
        group.assignment_write = None;
        if let Err(code) = result {
            for m in group.members.values_mut() {
                if let Some(waiting) = m.awaiting_sync.take() {
                    reply(out, waiting, GroupResponse::Sync(SyncGroupResponse::error(code)));
                }
            }
            return self.prepare_rebalance(now, group_id, out);
        }
        group.state = GroupState::Stable;
        group.rebalance_deadline = None;
        for m in group.members.values_mut() {
            m.assignment = assignments.get(&m.id).cloned().unwrap_or_default();
            if let Some(waiting) = m.awaiting_sync.take() {
                m.touch(now);
                let response = SyncGroupResponse {
                    error: ErrorCode::None,
                    protocol_type: Some(group.protocol_type.clone()),
                    protocol_name: group.protocol.clone(),
                    assignment: m.assignment.clone(),
                };
                reply(out, waiting, GroupResponse::Sync(response));
            }
        }
    }

    pub(super) fn heartbeat(&mut self, now: Millis, r: HeartbeatRequest, _out: &mut Vec<GroupEffect>) -> HeartbeatResponse {
        let error = (|| {
            let group = self.groups.get_mut(&r.group_id).ok_or(ErrorCode::UnknownMemberId)?;
            group.check_member(&r.member_id, r.group_instance_id.as_deref())?;
            if r.generation_id != group.generation {
                return Err(ErrorCode::IllegalGeneration);
            }
            group.members.get_mut(&r.member_id).expect("checked").touch(now);
            match group.state {
                GroupState::PreparingRebalance => Err(ErrorCode::RebalanceInProgress),
                GroupState::Empty => Err(ErrorCode::UnknownMemberId),
                GroupState::CompletingRebalance | GroupState::Stable => Ok(()),
            }
        })()
        .err()
        .unwrap_or(ErrorCode::None);
        HeartbeatResponse { error }
    }

    pub(super) fn leave(&mut self, now: Millis, r: LeaveGroupRequest, out: &mut Vec<GroupEffect>) -> LeaveGroupResponse {
        let mut members = Vec::new();
        let mut removed = false;
        for (member_id, instance_id) in r.members {
            let error = match self.groups.get_mut(&r.group_id) {
                None => ErrorCode::UnknownMemberId,
                Some(group) => {
                    let target = match &instance_id {
                        Some(instance) => match group.static_members.get(instance) {
                            None => Err(ErrorCode::UnknownMemberId),
                            Some(current) if !member_id.is_empty() && *current != member_id => Err(ErrorCode::FencedInstanceId),
                            Some(current) => Ok(current.clone()),
                        },
                        None if group.pending_members.remove(&member_id).is_some() => {
                            // A rebalance may have been waiting for it.
                            removed = true;
                            Err(ErrorCode::None)
                        }
                        None if group.members.contains_key(&member_id) => Ok(member_id.clone()),
                        None => Err(ErrorCode::UnknownMemberId),
                    };
                    match target {
                        Ok(id) => {
                            remove_and_answer(group, &id, out);
                            removed = true;
                            ErrorCode::None
                        }
                        Err(e) => e,
                    }
                }
            };
            members.push((member_id, instance_id, error));
        }
        if removed {
            self.members_left(now, &r.group_id, out);
        }
        let error = if members.len() == 1 { members[0].2 } else { ErrorCode::None };
        LeaveGroupResponse { error, members }
    }

    /// Members left or were expired: the rest must rebalance.
    pub(super) fn members_left(&mut self, now: Millis, group_id: &str, out: &mut Vec<GroupEffect>) {
        let Some(group) = self.groups.get(group_id) else { return };
        match group.state {
            GroupState::Stable | GroupState::CompletingRebalance => self.prepare_rebalance(now, group_id, out),
            GroupState::PreparingRebalance => self.maybe_complete_join(now, group_id, out),
            GroupState::Empty => {}
        }
    }
}

/// Removes a member, answering any request of its that still waits.
pub(super) fn remove_and_answer(group: &mut super::Group, member_id: &str, out: &mut Vec<GroupEffect>) {
    if let Some(m) = group.remove_member(member_id) {
        if let Some(waiting) = m.awaiting_join {
            reply(out, waiting, GroupResponse::Join(super::JoinGroupResponse::error(ErrorCode::UnknownMemberId, member_id)));
        }
        if let Some(waiting) = m.awaiting_sync {
            reply(out, waiting, GroupResponse::Sync(SyncGroupResponse::error(ErrorCode::UnknownMemberId)));
        }
    }
}
