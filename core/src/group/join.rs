//! JoinGroup and the rebalance it starts: members rejoin, the coordinator
//! forms the next generation, picks a protocol and a leader, and hands the
//! leader every member's subscription (assignment is the client's job).

use std::collections::BTreeMap;

use bytes::Bytes;

use super::state::{Group, GroupState};
use super::member::Member;
use super::store::StoredKey;
use super::{GroupCoordinator, GroupEffect, GroupResponse, JoinGroupRequest, JoinGroupResponse, JoinedMember, PendingWrite, reply};
use crate::broker::RequestId;
use crate::{ErrorCode, Millis};

impl GroupCoordinator {
    pub(super) fn join(&mut self, now: Millis, id: RequestId, r: JoinGroupRequest, out: &mut Vec<GroupEffect>) {
        let fail = |out: &mut Vec<GroupEffect>, e: ErrorCode| reply(out, id, GroupResponse::Join(JoinGroupResponse::error(e, &r.member_id)));
        if r.group_id.is_empty() {
            return fail(out, ErrorCode::InvalidGroupId);
        }
        if r.session_timeout_ms < self.config.min_session_timeout_ms || r.session_timeout_ms > self.config.max_session_timeout_ms {
            return fail(out, ErrorCode::InvalidSessionTimeout);
        }
        let group = self.groups.entry(r.group_id.clone()).or_insert_with(|| Group::new(&r.group_id, now));
        let except = (!r.member_id.is_empty()).then_some(r.member_id.as_str());
        if !group.accepts_protocols(&r.protocol_type, &r.protocols, except) {
            if group.members.is_empty() && group.offsets.is_empty() && group.generation == 0 {
                // Created by this request only: leave no trace of it.
                self.groups.remove(&r.group_id);
            }
            return fail(out, ErrorCode::InconsistentGroupProtocol);
        }
        if r.member_id.is_empty() {
            self.join_new_member(now, id, r, out);
        } else {
            self.join_known_member(now, id, r, out);
        }
    }

    fn join_new_member(&mut self, now: Millis, id: RequestId, r: JoinGroupRequest, out: &mut Vec<GroupEffect>) {
        let max_size = self.config.max_size;
        let prefix = r.group_instance_id.clone().unwrap_or_else(|| r.client_id.clone());
        let new_id = self.new_member_id(&prefix);
        let group = self.groups.get_mut(&r.group_id).expect("created by join");
        if let Some(instance) = &r.group_instance_id
            && let Some(old_id) = group.static_members.get(instance).cloned()
        {
            return self.replace_static_member(now, id, r, old_id, new_id, out);
        }
        if group.members.len() >= max_size {
            return reply(out, id, GroupResponse::Join(JoinGroupResponse::error(ErrorCode::GroupMaxSizeReached, "")));
        }
        if r.group_instance_id.is_none() && r.require_known_member_id {
            // KIP-394: the client must come back with this id, so a client
            // that retries a lost response does not leave a ghost member.
            let deadline = now.saturating_add(i64::from(r.session_timeout_ms));
            group.pending_members.insert(new_id.clone(), deadline);
            return reply(out, id, GroupResponse::Join(JoinGroupResponse::error(ErrorCode::MemberIdRequired, &new_id)));
        }
        self.add_member(now, id, &r, new_id, out);
    }

    fn join_known_member(&mut self, now: Millis, id: RequestId, r: JoinGroupRequest, out: &mut Vec<GroupEffect>) {
        let group = self.groups.get_mut(&r.group_id).expect("created by join");
        if group.pending_members.remove(&r.member_id).is_some() {
            let member_id = r.member_id.clone();
            return self.add_member(now, id, &r, member_id, out);
        }
        if let Err(e) = group.check_member(&r.member_id, r.group_instance_id.as_deref()) {
            return reply(out, id, GroupResponse::Join(JoinGroupResponse::error(e, &r.member_id)));
        }
        let protocol = group.protocol.clone().unwrap_or_default();
        let is_leader = group.leader.as_deref() == Some(r.member_id.as_str());
        let member = group.members.get_mut(&r.member_id).expect("checked");
        let unchanged = member.protocols == r.protocols;
        member.touch(now);
        match group.state {
            GroupState::PreparingRebalance => {
                update_member(member, &r);
                if let Some(old) = member.awaiting_join.replace(id) {
                    reply(out, old, GroupResponse::Join(JoinGroupResponse::error(ErrorCode::RebalanceInProgress, &r.member_id)));
                }
                self.maybe_complete_join(now, &r.group_id, out);
            }
            GroupState::CompletingRebalance | GroupState::Stable
                if unchanged && !(group.state == GroupState::Stable && is_leader) =>
            {
                // A repeated join (say, after a lost response): answer with
                // the current generation instead of rebalancing again.
                let response = current_generation(group, &r.member_id, &protocol);
                reply(out, id, GroupResponse::Join(response));
            }
            GroupState::CompletingRebalance | GroupState::Stable => {
                update_member(member, &r);
                member.awaiting_join = Some(id);
                self.prepare_rebalance(now, &r.group_id, out);
            }
            GroupState::Empty => {
                reply(out, id, GroupResponse::Join(JoinGroupResponse::error(ErrorCode::UnknownMemberId, &r.member_id)));
            }
        }
    }

    /// KIP-345: a static member that restarts gets a new member id and the
    /// old one is fenced; if nothing else changed, the group keeps its
    /// generation and the member gets its old assignment back on SyncGroup.
    fn replace_static_member(
        &mut self,
        now: Millis,
        id: RequestId,
        r: JoinGroupRequest,
        old_id: String,
        new_id: String,
        out: &mut Vec<GroupEffect>,
    ) {
        let group = self.groups.get_mut(&r.group_id).expect("created by join");
        let instance = r.group_instance_id.clone().expect("static");
        let mut member = group.members.remove(&old_id).expect("static map points at a member");
        if let Some(old) = member.awaiting_join.take() {
            reply(out, old, GroupResponse::Join(JoinGroupResponse::error(ErrorCode::FencedInstanceId, &old_id)));
        }
        if let Some(old) = member.awaiting_sync.take() {
            reply(out, old, GroupResponse::Sync(super::SyncGroupResponse::error(ErrorCode::FencedInstanceId)));
        }
        let unchanged = member.protocols == r.protocols;
        member.id = new_id.clone();
        update_member(&mut member, &r);
        member.touch(now);
        group.static_members.insert(instance, new_id.clone());
        let was_leader = group.leader.as_deref() == Some(old_id.as_str());
        if was_leader {
            group.leader = Some(new_id.clone());
        }
        group.members.insert(new_id.clone(), member);
        match group.state {
            GroupState::Stable if unchanged && !was_leader => {
                let protocol = group.protocol.clone().unwrap_or_default();
                let response = current_generation(group, &new_id, &protocol);
                // Persist the new id and answer only once it is durable (as
                // Kafka does): a restart that lost it would bring back the
                // old id, fencing this member and letting the process it
                // replaced commit again.
                let assignments: BTreeMap<String, Bytes> =
                    group.members.values().map(|m| (m.id.clone(), m.assignment.clone())).collect();
                let stored = group.to_stored(&assignments);
                let key = StoredKey::Group { group: r.group_id.clone() }.encode();
                self.append(vec![(key, Some(stored.encode()))], PendingWrite::StaticJoin { id, response }, out);
            }
            GroupState::PreparingRebalance => {
                group.members.get_mut(&new_id).expect("inserted").awaiting_join = Some(id);
                self.maybe_complete_join(now, &r.group_id, out);
            }
            _ => {
                group.members.get_mut(&new_id).expect("inserted").awaiting_join = Some(id);
                self.prepare_rebalance(now, &r.group_id, out);
            }
        }
    }

    fn add_member(&mut self, now: Millis, id: RequestId, r: &JoinGroupRequest, member_id: String, out: &mut Vec<GroupEffect>) {
        let delay = i64::from(self.config.initial_rebalance_delay_ms);
        let group = self.groups.get_mut(&r.group_id).expect("created by join");
        let mut member = Member {
            id: member_id.clone(),
            instance_id: r.group_instance_id.clone(),
            client_id: r.client_id.clone(),
            client_host: r.client_host.clone(),
            session_timeout_ms: r.session_timeout_ms,
            rebalance_timeout_ms: r.rebalance_timeout_ms,
            protocols: r.protocols.clone(),
            assignment: Bytes::new(),
            awaiting_join: Some(id),
            awaiting_sync: None,
            session_deadline: 0,
        };
        member.touch(now);
        if group.members.is_empty() {
            group.protocol_type = r.protocol_type.clone();
        }
        if let Some(instance) = &r.group_instance_id {
            group.static_members.insert(instance.clone(), member_id.clone());
        }
        if group.leader.is_none() {
            group.leader = Some(member_id.clone());
        }
        group.members.insert(member_id, member);
        if group.state == GroupState::PreparingRebalance {
            // A group still forming from empty waits a little longer for
            // more members, within the rebalance timeout.
            if let (Some(not_before), Some(deadline)) = (group.join_not_before, group.rebalance_deadline) {
                group.join_not_before = Some(not_before.max(now.saturating_add(delay)).min(deadline));
            }
            self.maybe_complete_join(now, &r.group_id, out);
        } else {
            self.prepare_rebalance(now, &r.group_id, out);
        }
    }

    /// Starts a rebalance: every member must rejoin within the rebalance
    /// timeout. Members waiting on SyncGroup learn it at once.
    pub(super) fn prepare_rebalance(&mut self, now: Millis, group_id: &str, out: &mut Vec<GroupEffect>) {
        let delay = i64::from(self.config.initial_rebalance_delay_ms);
        let Some(group) = self.groups.get_mut(group_id) else { return };
        for m in group.members.values_mut() {
            if let Some(waiting) = m.awaiting_sync.take() {
                reply(out, waiting, GroupResponse::Sync(super::SyncGroupResponse::error(ErrorCode::RebalanceInProgress)));
            }
        }
        group.assignment_write = None;
        let timeout = group.members.values().map(|m| i64::from(m.rebalance_timeout_ms)).max().unwrap_or(0);
        let deadline = now.saturating_add(timeout);
        group.join_not_before = (group.state == GroupState::Empty && delay > 0).then(|| now.saturating_add(delay).min(deadline));
        group.rebalance_deadline = Some(deadline);
        group.state = GroupState::PreparingRebalance;
        self.maybe_complete_join(now, group_id, out);
    }

    /// Completes the rebalance if every member rejoined (after the initial
    /// delay) or the rebalance timeout passed.
    pub(super) fn maybe_complete_join(&mut self, now: Millis, group_id: &str, out: &mut Vec<GroupEffect>) {
        let Some(group) = self.groups.get(group_id) else { return };
        if group.state != GroupState::PreparingRebalance {
            return;
        }
        let timed_out = group.rebalance_deadline.is_some_and(|d| now >= d);
        let delay_over = group.join_not_before.is_none_or(|t| now >= t);
        if timed_out || (group.all_members_joined() && delay_over) {
            self.complete_join(now, group_id, out);
        }
    }

    fn complete_join(&mut self, now: Millis, group_id: &str, out: &mut Vec<GroupEffect>) {
        let group = self.groups.get_mut(group_id).expect("checked by caller");
        // Members that did not rejoin in time are out of the group.
        let gone: Vec<String> = group.members.values().filter(|m| m.awaiting_join.is_none()).map(|m| m.id.clone()).collect();
        for id in gone {
            group.remove_member(&id);
        }
        group.pending_members.clear();
        group.generation += 1;
        group.join_not_before = None;
        if group.members.is_empty() {
            group.state = GroupState::Empty;
            group.rebalance_deadline = None;
            group.protocol = None;
            group.leader = None;
            group.empty_since = now;
            let stored = group.to_stored(&BTreeMap::new());
            let key = StoredKey::Group { group: group_id.to_string() }.encode();
            self.append(vec![(key, Some(stored.encode()))], PendingWrite::Background, out);
            return;
        }
        let protocol = group.select_protocol().expect("join admits only members that share a protocol");
        group.protocol = Some(protocol.clone());
        if group.leader.as_ref().is_none_or(|l| !group.members.contains_key(l)) {
            group.leader = group.members.keys().next().cloned();
        }
        group.state = GroupState::CompletingRebalance;
        // The leader's SyncGroup is due within the rebalance timeout too.
        let timeout = group.members.values().map(|m| i64::from(m.rebalance_timeout_ms)).max().unwrap_or(0);
        group.rebalance_deadline = Some(now.saturating_add(timeout));
        let leader = group.leader.clone().expect("set above");
        let everyone: Vec<JoinedMember> = group
            .members
            .values()
            .map(|m| JoinedMember { member_id: m.id.clone(), group_instance_id: m.instance_id.clone(), metadata: m.metadata(&protocol) })
            .collect();
        for m in group.members.values_mut() {
            m.assignment = Bytes::new();
            m.touch(now);
            let waiting = m.awaiting_join.take().expect("only joined members remain");
            let response = JoinGroupResponse {
                error: ErrorCode::None,
                generation_id: group.generation,
                protocol_type: Some(group.protocol_type.clone()),
                protocol_name: Some(protocol.clone()),
                leader: leader.clone(),
                member_id: m.id.clone(),
                members: if m.id == leader { everyone.clone() } else { Vec::new() },
            };
            reply(out, waiting, GroupResponse::Join(response));
        }
    }
}

/// The join answer for a member of the current generation (no rebalance).
fn current_generation(group: &Group, member_id: &str, protocol: &str) -> JoinGroupResponse {
    let leader = group.leader.clone().unwrap_or_default();
    let members = if leader == member_id {
        group
            .members
            .values()
            .map(|m| JoinedMember { member_id: m.id.clone(), group_instance_id: m.instance_id.clone(), metadata: m.metadata(protocol) })
            .collect()
    } else {
        Vec::new()
    };
    JoinGroupResponse {
        error: ErrorCode::None,
        generation_id: group.generation,
        protocol_type: Some(group.protocol_type.clone()),
        protocol_name: group.protocol.clone(),
        leader,
        member_id: member_id.to_string(),
        members,
    }
}

fn update_member(member: &mut Member, r: &JoinGroupRequest) {
    member.protocols = r.protocols.clone();
    member.session_timeout_ms = r.session_timeout_ms;
    member.rebalance_timeout_ms = r.rebalance_timeout_ms;
    member.client_id = r.client_id.clone();
    member.client_host = r.client_host.clone();
}
