//! One consumer group: its state, generation, members and committed offsets.
//!
//! ```text
//!            join                      all joined / rebalance timeout
//!   Empty ──────────▶ PreparingRebalance ───────────────────▶ CompletingRebalance
//!     ▲                 ▲        ▲                                   │
//!     │ last member     │ join,  │ join, leave, session expiry       │ leader's SyncGroup
//!     │ gone            │ leave  │                                   ▼ (made durable)
//!     └─────────────────┴────────┴───────────────────────────────  Stable
//! ```

use std::collections::BTreeMap;

use bytes::Bytes;

use super::member::Member;
use super::store::{StoredGroup, StoredMember};
use crate::Millis;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    /// No members; offsets may still be committed (by `assign()` users).
    Empty,
    /// Waiting for every known member to rejoin.
    PreparingRebalance,
    /// The generation is formed; waiting for the leader's assignment.
    CompletingRebalance,
    Stable,
}

impl GroupState {
    /// Kafka's name, as DescribeGroups and ListGroups report it.
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedOffset {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
    pub commit_timestamp: Millis,
}

#[derive(Debug, Clone)]
pub struct Group {
    pub id: String,
    pub state: GroupState,
    pub generation: i32,
    /// "consumer" for consumer groups; empty for a group that only commits.
    pub protocol_type: String,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    pub members: BTreeMap<String, Member>,
    /// group.instance.id → member id, for static members.
    pub static_members: BTreeMap<String, String>,
    /// Ids handed out with MEMBER_ID_REQUIRED, valid until the deadline.
    pub pending_members: BTreeMap<String, Millis>,
    /// While preparing: when to complete even if some members did not rejoin.
    pub rebalance_deadline: Option<Millis>,
    /// While preparing from empty: do not complete before this (Kafka's
    /// `group.initial.rebalance.delay.ms`, so a starting group forms once).
    pub join_not_before: Option<Millis>,
    /// The append of the leader's assignment, while it is being made durable.
    pub assignment_write: Option<super::WriteId>,
    pub offsets: BTreeMap<(String, i32), CommittedOffset>,
    /// Commits being made durable (OffsetFetch with require_stable waits).
    pub commits_in_flight: usize,
    /// When the group last became empty (for offset retention).
    pub empty_since: Millis,
}

impl Group {
    pub fn new(id: &str, now: Millis) -> Self {
        Self {
            id: id.to_string(),
            state: GroupState::Empty,
            generation: 0,
            protocol_type: String::new(),
            protocol: None,
            leader: None,
            members: BTreeMap::new(),
            static_members: BTreeMap::new(),
            pending_members: BTreeMap::new(),
            rebalance_deadline: None,
            join_not_before: None,
            assignment_write: None,
            offsets: BTreeMap::new(),
            commits_in_flight: 0,
            empty_since: now,
        }
    }

    /// The protocol every member supports that most members prefer; ties go
    /// to the one listed first by the first member (deterministic).
    pub fn select_protocol(&self) -> Option<String> {
        let first = self.members.values().next()?;
        let candidates: Vec<&str> = first
            .protocols
            .iter()
            .map(|(n, _)| n.as_str())
            .filter(|p| self.members.values().all(|m| m.supports(p)))
            .collect();
        let mut votes: BTreeMap<&str, usize> = BTreeMap::new();
        for m in self.members.values() {
            if let Some((name, _)) = m.protocols.iter().find(|(n, _)| candidates.contains(&n.as_str())) {
                *votes.entry(name.as_str()).or_default() += 1;
            }
        }
        let best = votes.values().copied().max()?;
        candidates.into_iter().find(|c| votes.get(c) == Some(&best)).map(str::to_string)
    }

    /// Whether a member with these protocols could join without breaking
    /// the group: some protocol must stay common to everybody.
    pub fn accepts_protocols(&self, protocol_type: &str, protocols: &[(String, Bytes)], except: Option<&str>) -> bool {
        if protocols.is_empty() || protocol_type.is_empty() {
            return false;
        }
        let others: Vec<&Member> = self.members.values().filter(|m| Some(m.id.as_str()) != except).collect();
        if others.is_empty() {
            return true;
        }
        if self.protocol_type != protocol_type {
            return false;
        }
        protocols.iter().any(|(p, _)| others.iter().all(|m| m.supports(p)))
    }

    /// Resolves a member, checking static identity first: a member id that
    /// is not the one registered for its instance id is a fenced zombie.
    pub fn check_member(&self, member_id: &str, instance_id: Option<&str>) -> Result<(), crate::ErrorCode> {
        if let Some(instance) = instance_id
            && let Some(current) = self.static_members.get(instance)
            && current != member_id
        {
            return Err(crate::ErrorCode::FencedInstanceId);
        }
        if self.members.contains_key(member_id) { Ok(()) } else { Err(crate::ErrorCode::UnknownMemberId) }
    }

    pub fn remove_member(&mut self, member_id: &str) -> Option<Member> {
        let m = self.members.remove(member_id)?;
        if let Some(instance) = &m.instance_id
            && self.static_members.get(instance).is_some_and(|id| id == member_id)
        {
            self.static_members.remove(instance);
        }
        if self.leader.as_deref() == Some(member_id) {
            self.leader = self.members.keys().next().cloned();
        }
        Some(m)
    }

    pub fn all_members_joined(&self) -> bool {
        self.pending_members.is_empty() && self.members.values().all(|m| m.awaiting_join.is_some())
    }

    /// The group as persisted after a completed rebalance.
    pub fn to_stored(&self, assignments: &BTreeMap<String, Bytes>) -> StoredGroup {
        let protocol = self.protocol.clone().unwrap_or_default();
        StoredGroup {
            protocol_type: self.protocol_type.clone(),
            generation: self.generation,
            protocol: self.protocol.clone(),
            leader: self.leader.clone(),
            members: self
                .members
                .values()
                .map(|m| StoredMember {
                    member_id: m.id.clone(),
                    group_instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    session_timeout_ms: m.session_timeout_ms,
                    rebalance_timeout_ms: m.rebalance_timeout_ms,
                    subscription: m.metadata(&protocol).to_vec(),
                    assignment: assignments.get(&m.id).map(|a| a.to_vec()).unwrap_or_default(),
                })
                .collect(),
        }
    }

    /// Restores the group from its last persisted generation. Members get a
    /// fresh session from `now`: the restart is not their fault.
    pub fn restore(&mut self, stored: StoredGroup, now: Millis) {
        self.protocol_type = stored.protocol_type;
        self.generation = stored.generation;
        self.protocol = stored.protocol;
        self.leader = stored.leader;
        self.members.clear();
        self.static_members.clear();
        let protocol = self.protocol.clone().unwrap_or_default();
        for m in stored.members {
            if let Some(instance) = &m.group_instance_id {
                self.static_members.insert(instance.clone(), m.member_id.clone());
            }
            let mut member = Member {
                id: m.member_id.clone(),
                instance_id: m.group_instance_id,
                client_id: m.client_id,
                client_host: m.client_host,
                session_timeout_ms: m.session_timeout_ms,
                rebalance_timeout_ms: m.rebalance_timeout_ms,
                protocols: vec![(protocol.clone(), Bytes::from(m.subscription))],
                assignment: Bytes::from(m.assignment),
                awaiting_join: None,
                awaiting_sync: None,
                session_deadline: 0,
            };
            member.touch(now);
            self.members.insert(m.member_id, member);
        }
        self.state = if self.members.is_empty() { GroupState::Empty } else { GroupState::Stable };
        self.empty_since = now;
    }
}
