//! The group coordinator: Kafka's classic consumer-group protocol (join,
//! sync, heartbeat, leave) and committed offsets, as a sans-IO machine.
//!
//! The coordinator never writes anything itself. Whatever must survive a
//! restart (committed offsets, each group's last generation with its
//! assignment) leaves as [`GroupEffect::Append`]; the broker appends it to
//! the internal offsets topic, makes it durable and answers with
//! [`GroupInput::WriteDone`]. Only then does a commit count (and its reply
//! go out), so an acknowledged commit is never lost and the offsets a
//! reader sees never go backwards. On open, [`GroupCoordinator::replay`]
//! rebuilds every group from that topic.

pub mod api;
mod admin;
mod expiry;
mod state;
mod join;
pub mod member;
mod offsets;
pub mod store;
mod sync;

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub use api::*;
pub use state::{CommittedOffset, Group, GroupState};

use crate::Millis;
use crate::broker::RequestId;
use crate::rng::Rng;
use store::{StoredGroup, StoredKey, StoredOffset};

/// The coordinator's settings (Kafka's names in the comments).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GroupConfig {
    /// `group.min.session.timeout.ms`
    pub min_session_timeout_ms: i32,
    /// `group.max.session.timeout.ms`
    pub max_session_timeout_ms: i32,
    /// `group.initial.rebalance.delay.ms`: how long a group forming from
    /// empty waits for more members before its first generation.
    pub initial_rebalance_delay_ms: i32,
    /// `group.max.size`
    pub max_size: usize,
    /// `offsets.retention.minutes`, in ms: offsets of a group that stayed
    /// empty this long are deleted.
    pub offsets_retention_ms: i64,
    /// `offsets.retention.check.interval.ms`
    pub offsets_retention_check_interval_ms: i64,
    /// `offset.metadata.max.bytes`
    pub offset_metadata_max_bytes: usize,
    /// `offsets.topic.segment.bytes`: smaller than other topics' segments
    /// so the cleaner (which never touches the active segment) keeps the
    /// offsets topic short.
    pub offsets_topic_segment_bytes: u64,
}

impl Default for GroupConfig {
    fn default() -> Self {
        Self {
            min_session_timeout_ms: 6_000,
            max_session_timeout_ms: 1_800_000,
            initial_rebalance_delay_ms: 3_000,
            max_size: usize::MAX,
            offsets_retention_ms: 7 * 24 * 3_600_000,
            offsets_retention_check_interval_ms: 600_000,
            offset_metadata_max_bytes: 4096,
            offsets_topic_segment_bytes: 100 << 20,
        }
    }
}

/// What an append was for, so its outcome can finish the job.
#[derive(Debug, Clone)]
enum PendingWrite {
    Commit { id: RequestId, group: String, offsets: Vec<((String, i32), CommittedOffset)>, response: OffsetCommitResponse },
    Assignment { group: String, generation: i32, assignments: BTreeMap<String, Bytes> },
    /// With the groups as they were, to put back if the tombstones fail.
    Delete { id: RequestId, response: DeleteGroupsResponse, deleted: Vec<Group> },
    /// A restarted static member's new id (it keeps the generation).
    StaticJoin { id: RequestId, response: JoinGroupResponse },
    /// Bookkeeping with nobody waiting (an empty generation, expired offsets).
    Background,
}

pub struct GroupCoordinator {
    config: GroupConfig,
    groups: BTreeMap<String, Group>,
    rng: Rng,
    pending: BTreeMap<WriteId, PendingWrite>,
    next_write: WriteId,
    next_retention_check: Option<Millis>,
    /// Groups restored by replay still need a clock for their sessions.
    restored_clock_pending: bool,
    /// The earliest deadline a timer was last armed for (no duplicates).
    armed: Option<Millis>,
}

impl GroupCoordinator {
    pub fn new(config: GroupConfig, seed: u64) -> Self {
        Self {
            config,
            groups: BTreeMap::new(),
            rng: Rng::new(seed),
            pending: BTreeMap::new(),
            next_write: 1,
            next_retention_check: None,
            restored_clock_pending: false,
            armed: None,
        }
    }

    pub fn config(&self) -> &GroupConfig {
        &self.config
    }

    pub fn group(&self, id: &str) -> Option<&Group> {
        self.groups.get(id)
    }

    pub fn groups(&self) -> impl Iterator<Item = &Group> {
        self.groups.values()
    }

    /// Applies one record of the offsets topic, in log order. A record that
    /// does not decode is skipped and reported: it cannot be a commit that
    /// this code acknowledged.
    pub fn replay(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<(), store::StoreError> {
        match StoredKey::decode(key)? {
            StoredKey::Offset { group, topic, partition } => match value {
                Some(v) => {
                    let v = StoredOffset::decode(v)?;
                    let g = self.groups.entry(group.clone()).or_insert_with(|| Group::new(&group, 0));
                    g.offsets.insert(
                        (topic, partition),
                        CommittedOffset {
                            offset: v.offset,
                            leader_epoch: v.leader_epoch,
                            metadata: v.metadata,
                            commit_timestamp: v.commit_timestamp,
                        },
                    );
                }
                None => {
                    if let Some(g) = self.groups.get_mut(&group) {
                        g.offsets.remove(&(topic, partition));
                    }
                }
            },
            StoredKey::Group { group } => match value {
                Some(v) => {
                    let stored = StoredGroup::decode(v)?;
                    let g = self.groups.entry(group.clone()).or_insert_with(|| Group::new(&group, 0));
                    g.restore(stored, 0);
                    self.restored_clock_pending = true;
                }
                None => {
                    self.groups.remove(&group);
                }
            },
        }
        Ok(())
    }

    /// Advances the machine by one input.
    pub fn step(&mut self, now: Millis, input: GroupInput, out: &mut Vec<GroupEffect>) {
        if self.restored_clock_pending {
            // Replayed groups got no clock; their members' sessions and the
            // emptiness of empty groups count from the first step.
            self.restored_clock_pending = false;
            for g in self.groups.values_mut() {
                g.empty_since = now;
                for m in g.members.values_mut() {
                    m.touch(now);
                }
            }
        }
        match input {
            GroupInput::Request { id, request } => self.handle(now, id, request, out),
            GroupInput::Tick => self.tick(now, out),
            GroupInput::WriteDone { write, result } => self.write_done(now, write, result, out),
            GroupInput::TopicDeleted { topic } => self.topic_deleted(&topic, out),
            GroupInput::CheckedCommit { id, request, unknown } => self.commit(now, id, request, &unknown, out),
        }
        self.arm_timer(now, out);
    }

    fn handle(&mut self, now: Millis, id: RequestId, request: GroupRequest, out: &mut Vec<GroupEffect>) {
        match request {
            GroupRequest::Join(r) => self.join(now, id, r, out),
            GroupRequest::Sync(r) => self.sync(now, id, r, out),
            GroupRequest::Heartbeat(r) => {
                let response = self.heartbeat(now, r, out);
                reply(out, id, GroupResponse::Heartbeat(response));
            }
            GroupRequest::Leave(r) => {
                let response = self.leave(now, r, out);
                reply(out, id, GroupResponse::Leave(response));
            }
            GroupRequest::OffsetCommit(r) => self.commit(now, id, r, &[], out),
            GroupRequest::OffsetFetch(r) => {
                let response = self.fetch_offsets(r);
                reply(out, id, GroupResponse::OffsetFetch(response));
            }
            GroupRequest::ListGroups(r) => reply(out, id, GroupResponse::ListGroups(self.list(r))),
            GroupRequest::DescribeGroups(r) => reply(out, id, GroupResponse::DescribeGroups(self.describe(r))),
            GroupRequest::DeleteGroups(r) => self.delete(id, r, out),
        }
    }

    /// Asks the broker to persist `records`; `then` finishes when it is done.
    fn append(&mut self, records: Vec<StoredRecord>, then: PendingWrite, out: &mut Vec<GroupEffect>) {
        let write = self.next_write;
        self.next_write += 1;
        self.pending.insert(write, then);
        out.push(GroupEffect::Append { write, records });
    }

    fn write_done(&mut self, now: Millis, write: WriteId, result: Result<(), crate::ErrorCode>, out: &mut Vec<GroupEffect>) {
        let Some(pending) = self.pending.remove(&write) else { return };
        match pending {
            PendingWrite::Commit { id, group, offsets, mut response } => {
                let g = self.groups.entry(group.clone()).or_insert_with(|| Group::new(&group, now));
                g.commits_in_flight = g.commits_in_flight.saturating_sub(1);
                match result {
                    Ok(()) => {
                        for (tp, committed) in offsets {
                            g.offsets.insert(tp, committed);
                        }
                    }
                    Err(code) => {
                        for p in response.partitions.iter_mut().filter(|p| p.2.is_ok()) {
                            p.2 = code;
                        }
                    }
                }
                reply(out, id, GroupResponse::OffsetCommit(response));
            }
            PendingWrite::Assignment { group, generation, assignments } => {
                self.assignment_done(now, &group, generation, assignments, result, out)
            }
            PendingWrite::Delete { id, mut response, deleted } => {
                if let Err(code) = result {
                    // Not deleted after all: the log still has the groups
                    // (a restart would bring them back), so they stay, and
                    // a retry finds them. (A group of the same name created
                    // meanwhile is left alone.)
                    for g in deleted {
                        self.groups.entry(g.id.clone()).or_insert(g);
                    }
                    for r in response.results.iter_mut().filter(|r| r.1.is_ok()) {
                        r.1 = code;
                    }
                }
                reply(out, id, GroupResponse::DeleteGroups(response));
            }
            PendingWrite::StaticJoin { id, response } => {
                // If the new id could not be written, the join fails and the
                // client retries (replacing this id in turn). The old id
                // stays fenced: its process was told so and must not get a
                // second life.
                let response = match result {
                    Ok(()) => response,
                    Err(code) => JoinGroupResponse::error(code, ""),
                };
                reply(out, id, GroupResponse::Join(response));
            }
            PendingWrite::Background => {}
        }
    }

    /// Arms a timer for the earliest deadline of any group.
    fn arm_timer(&mut self, now: Millis, out: &mut Vec<GroupEffect>) {
        let mut next = self.next_retention_check;
        let mut consider = |t: Millis| next = Some(next.map_or(t, |n: Millis| n.min(t)));
        for g in self.groups.values() {
            for m in g.members.values().filter(|m| !m.is_waiting()) {
                consider(m.session_deadline);
            }
            for &d in g.pending_members.values() {
                consider(d);
            }
            if matches!(g.state, GroupState::PreparingRebalance | GroupState::CompletingRebalance) {
                // (A deadline already past while the assignment is being
                // written waits for that write, not for a timer.)
                if let Some(d) = g.rebalance_deadline.filter(|&d| d > now) {
                    consider(d);
                }
            }
            if g.state == GroupState::PreparingRebalance {
                // Once the initial delay is over it wakes nobody: what the
                // rebalance still waits for (a join, a pending member's or
                // the rebalance deadline) has its own event or deadline. A
                // past deadline here would ask for a Tick at once, forever.
                if let Some(d) = g.join_not_before.filter(|&d| d > now) {
                    consider(d);
                }
            }
        }
        if let Some(at) = next {
            let at = at.max(now);
            if self.armed.is_none_or(|a| a <= now || at < a) {
                self.armed = Some(at);
                out.push(GroupEffect::Timer { at });
            }
        }
    }

    /// A member id: the client id (as Kafka does, so logs are readable) and
    /// a seeded random suffix.
    fn new_member_id(&mut self, prefix: &str) -> String {
        let prefix = if prefix.is_empty() { "member" } else { prefix };
        format!("{prefix}-{:016x}", self.rng.next_u64())
    }
}

fn reply(out: &mut Vec<GroupEffect>, id: RequestId, response: GroupResponse) {
    out.push(GroupEffect::Reply { id, response });
}
