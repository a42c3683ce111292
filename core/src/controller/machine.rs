//! The controller machine: a Raft node over the metadata log, the image its
//! committed records build, and — on the active controller, the Raft
//! leader — broker sessions and the decisions they trigger.
//!
//! Brokers register (and get an epoch for this incarnation) and then
//! heartbeat. The active controller fences a broker whose heartbeats stop
//! for `broker_session_timeout_ms` and unfences one that heartbeats as
//! caught up. One metadata proposal is in flight at a time, so each
//! decision is computed on the image that the previous one produced.
//!
//! Every `snapshot_every` applied entries the image becomes the Raft
//! snapshot, so the metadata log stays short; a controller that restarts,
//! or falls behind a leader's snapshot, starts again from an image.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::decide;
use super::image::{MetadataImage, SnapshotError};
use super::records::{BrokerId, MetadataRecord};
use crate::Millis;
use crate::raft::{self, Envelope, HardState, Index, RaftConfig, RaftLog, RaftNode, Role, Snapshot, Term};

/// How many applied records the controller keeps for
/// [`Controller::recent_records`]; a reader further behind resyncs from
/// the image.
const RECENT_RECORDS: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerConfig {
    pub raft: RaftConfig,
    /// Kafka's `broker.session.timeout.ms`.
    pub broker_session_timeout_ms: i64,
    /// How long a newly elected controller waits for a broker's first
    /// heartbeat before judging it. Live brokers heartbeat every few hundred
    /// milliseconds and turn to the new controller as soon as the old one
    /// refuses, so a fraction of the session is enough, and a broker that
    /// died with the old controller is fenced that much sooner.
    pub new_controller_grace_ms: i64,
    /// Kafka's `unclean.leader.election.enable` for topics that do not set it.
    pub unclean_leader_election: bool,
    /// Applied entries between two snapshots of the image (0: never).
    pub snapshot_every: u64,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            raft: RaftConfig::default(),
            broker_session_timeout_ms: 9_000,
            new_controller_grace_ms: 9_000,
            unclean_leader_election: false,
            snapshot_every: 1_000,
        }
    }
}

/// Who asked, so the answer can find its way back.
pub type ReplyTo = u64;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControllerRequest {
    Register { broker: BrokerId, host: String, port: i32 },
    Heartbeat { broker: BrokerId, epoch: u64, caught_up: bool },
    CreateTopic { name: String, partitions: i32, replication_factor: usize, configs: Vec<(String, String)> },
    DeleteTopic { name: String },
    /// A partition leader asks for a new ISR (Kafka's AlterPartition). Stale
    /// requests — another leader epoch or partition epoch, a leader that is
    /// not the current one — are refused, so a late answer can never undo a
    /// newer decision.
    AlterPartition { broker: BrokerId, broker_epoch: u64, topic: String, partition: i32, leader_epoch: i32, partition_epoch: i32, isr: Vec<BrokerId> },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControllerReply {
    Registered { epoch: u64 },
    /// `fenced`: the broker may not lead or serve yet (or any more).
    HeartbeatAck { fenced: bool },
    /// The sender's epoch is not the broker's current one: re-register.
    StaleEpoch,
    TopicCreated,
    TopicExists,
    TopicDeleted,
    UnknownTopic,
    /// The new ISR is committed.
    IsrChanged,
    /// Refused, with a message naming the problem.
    Refused { reason: String },
    /// This node is not the active controller; try `leader`.
    NotController { leader: Option<u64> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControllerInput {
    Tick,
    Raft(Envelope),
    Request { from: ReplyTo, request: ControllerRequest },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControllerEffect {
    /// The Raft node's effects, except `Apply` and `RestoreSnapshot`
    /// (consumed here): persist, append, truncate, save a snapshot, send,
    /// timer — under Raft's ordering contract.
    Raft(raft::Effect),
    Reply { to: ReplyTo, reply: ControllerReply },
    /// The controller cannot go on (a snapshot from the leader it cannot
    /// read): it ignores every input from now on, and the node must stop.
    Fatal { reason: String },
}

/// A proposal waiting to commit, and whom to answer then.
#[derive(Debug, Clone)]
struct InFlight {
    index: Index,
    term: Term,
    reply: Option<(ReplyTo, ControllerReply)>,
}

pub struct Controller {
    config: ControllerConfig,
    raft: RaftNode,
    image: MetadataImage,
    /// The Raft index the image is at, and that of the last snapshot.
    applied_index: Index,
    snapshot_index: Index,
    /// Records applied since start; a restored snapshot counts as one.
    applied_count: u64,
    /// The last applied records (at most [`RECENT_RECORDS`]); the first is
    /// record number `recent_start` of `applied_count`.
    recent: VecDeque<MetadataRecord>,
    recent_start: u64,
    failed: bool,
    in_flight: Option<InFlight>,
    /// Requests waiting for the in-flight proposal to commit.
    queued: VecDeque<(ReplyTo, ControllerRequest)>,
    /// Active controller only: when each broker last heartbeat.
    last_heard: BTreeMap<BrokerId, Millis>,
    /// Brokers whose last heartbeat said they caught up on metadata.
    caught_up: BTreeMap<BrokerId, bool>,
    was_leader: bool,
    next_epoch_seq: u64,
    topics_created: usize,
}

impl Controller {
    /// A controller recovered from its durable Raft state: the image starts
    /// as the snapshot's (refused if it cannot be read), the log after it
    /// is applied again once known to be committed.
    pub fn new(
        config: ControllerConfig,
        hard: HardState,
        log: RaftLog,
        snapshot: Option<Snapshot>,
        now: Millis,
        seed: u64,
    ) -> Result<Self, SnapshotError> {
        let image = snapshot.as_ref().map_or(Ok(MetadataImage::default()), |s| MetadataImage::from_snapshot(&s.data))?;
        let base = snapshot.as_ref().map_or(0, |s| s.index);
        let applied_count = u64::from(snapshot.is_some());
        let raft = RaftNode::new(config.raft.clone(), hard, log, snapshot, now, seed);
        Ok(Self {
            config,
            raft,
            image,
            applied_index: base,
            snapshot_index: base,
            applied_count,
            recent: VecDeque::new(),
            recent_start: applied_count,
            failed: false,
            in_flight: None,
            queued: VecDeque::new(),
            last_heard: BTreeMap::new(),
            caught_up: BTreeMap::new(),
            was_leader: false,
            next_epoch_seq: 0,
            topics_created: 0,
        })
    }

    pub fn image(&self) -> &MetadataImage {
        &self.image
    }

    /// The Raft index of the last entry the image includes.
    pub fn applied_index(&self) -> Index {
        self.applied_index
    }

    /// How many records were applied since start, a restored snapshot
    /// counting as one: a cursor for [`Controller::recent_records`].
    pub fn applied_count(&self) -> u64 {
        self.applied_count
    }

    /// The records applied after cursor `since` (an earlier
    /// `applied_count`), with the new cursor. `None` when they are not all
    /// known any more — a snapshot was restored since, or too many were
    /// applied — and the reader must resync from [`Controller::image`].
    pub fn recent_records(&self, since: u64) -> (u64, Option<Vec<MetadataRecord>>) {
        if since < self.recent_start || since > self.applied_count {
            return (self.applied_count, None);
        }
        let skip = usize::try_from(since - self.recent_start).unwrap_or(usize::MAX);
        (self.applied_count, Some(self.recent.iter().skip(skip).cloned().collect()))
    }

    pub fn raft(&self) -> &RaftNode {
        &self.raft
    }

    /// Starts the election timer at `now` (see [`RaftNode::start_at`]).
    pub fn start_at(&mut self, now: Millis) {
        self.raft.start_at(now);
    }

    pub fn is_active(&self) -> bool {
        self.raft.role() == Role::Leader
    }

    pub fn step(&mut self, now: Millis, input: ControllerInput, out: &mut Vec<ControllerEffect>) {
        if self.failed {
            return;
        }
        match input {
            ControllerInput::Tick => self.raft_step(now, raft::Input::Tick, out),
            ControllerInput::Raft(env) => self.raft_step(now, raft::Input::Receive(env), out),
            ControllerInput::Request { from, request } => self.request(now, from, request, out),
        }
        if self.is_active() {
            self.decide(now, out);
        }
    }

    fn raft_step(&mut self, now: Millis, input: raft::Input, out: &mut Vec<ControllerEffect>) {
        let mut effects = Vec::new();
        self.raft.step(now, input, &mut effects);
        for e in effects {
            self.raft_effect(e, out);
        }
        self.maybe_snapshot(now, out);
        let leader = self.is_active();
        if leader && !self.was_leader {
            // A new active controller gives every broker a full session
            // before judging it: it never heard from them before.
            let since = now - (self.config.broker_session_timeout_ms - self.config.new_controller_grace_ms).max(0);
            self.last_heard = self.image.brokers.keys().map(|b| (*b, since)).collect();
        }
        if !leader && self.was_leader {
            for (to, _) in std::mem::take(&mut self.queued) {
                out.push(ControllerEffect::Reply { to, reply: ControllerReply::NotController { leader: self.raft.leader() } });
            }
            if let Some(InFlight { reply: Some((to, _)), .. }) = self.in_flight.take() {
                out.push(ControllerEffect::Reply { to, reply: ControllerReply::NotController { leader: self.raft.leader() } });
            }
        }
        self.was_leader = leader;
    }

    /// Carries out what the application must of a Raft effect, and passes
    /// the rest on.
    fn raft_effect(&mut self, effect: raft::Effect, out: &mut Vec<ControllerEffect>) {
        if self.failed {
            return;
        }
        match effect {
            raft::Effect::Apply(entries) => {
                for entry in entries {
                    self.apply_entry(&entry, out);
                }
            }
            raft::Effect::RestoreSnapshot { index, data, .. } => self.restore(index, &data, out),
            other => out.push(ControllerEffect::Raft(other)),
        }
    }

    fn apply_entry(&mut self, entry: &raft::Entry, out: &mut Vec<ControllerEffect>) {
        if !entry.data.is_empty() {
            // An entry that is not a metadata batch is skipped everywhere alike.
            if let Ok((records, _)) =
                bincode::serde::decode_from_slice::<Vec<MetadataRecord>, _>(&entry.data, bincode::config::standard())
            {
                for r in records {
                    // Every node refuses the same records the same way.
                    if self.image.apply(&r).is_ok() {
                        self.remember(r);
                    }
                }
            }
        }
        self.applied_index = entry.index;
        self.settle_in_flight(entry.index, Some(entry.term), out);
    }

    fn remember(&mut self, record: MetadataRecord) {
        self.applied_count += 1;
        self.recent.push_back(record);
        if self.recent.len() > RECENT_RECORDS {
            self.recent.pop_front();
            self.recent_start += 1;
        }
    }

    /// Answers the in-flight proposal once the log reached its index:
    /// `term` is that of the entry at `index` if known (a snapshot does not
    /// tell, so the proposal counts as lost and the caller asks again).
    fn settle_in_flight(&mut self, index: Index, term: Option<Term>, out: &mut Vec<ControllerEffect>) {
        let Some(f) = self.in_flight.take_if(|f| index >= f.index) else { return };
        if let Some((to, reply)) = f.reply {
            let reply = if index == f.index && term == Some(f.term) {
                reply
            } else {
                // Another leader's entry took the index: ours was lost.
                ControllerReply::NotController { leader: self.raft.leader() }
            };
            out.push(ControllerEffect::Reply { to, reply });
        }
    }

    /// The leader's snapshot replaces the image (this node was too far
    /// behind for entries).
    fn restore(&mut self, index: Index, data: &[u8], out: &mut Vec<ControllerEffect>) {
        match MetadataImage::from_snapshot(data) {
            Ok(image) => self.image = image,
            Err(e) => {
                // Applying later entries to a stale image would build a
                // metadata nobody else has: stop instead.
                self.failed = true;
                return out.push(ControllerEffect::Fatal { reason: format!("metadata snapshot at index {index}: {e}") });
            }
        }
        self.applied_index = index;
        self.snapshot_index = index;
        // One jump; readers holding an older cursor resync from the image.
        self.applied_count += 1;
        self.recent.clear();
        self.recent_start = self.applied_count;
        self.settle_in_flight(index, None, out);
    }

    /// Hands Raft the image as a snapshot every `snapshot_every` entries.
    fn maybe_snapshot(&mut self, now: Millis, out: &mut Vec<ControllerEffect>) {
        let every = self.config.snapshot_every;
        if self.failed || every == 0 || self.applied_index < self.snapshot_index + every {
            return;
        }
        let index = self.applied_index;
        let mut effects = Vec::new();
        self.raft.step(now, raft::Input::Compact { index, data: self.image.to_snapshot() }, &mut effects);
        self.snapshot_index = index;
        for e in effects {
            self.raft_effect(e, out);
        }
    }

    fn request(&mut self, now: Millis, from: ReplyTo, request: ControllerRequest, out: &mut Vec<ControllerEffect>) {
        if !self.is_active() {
            out.push(ControllerEffect::Reply { to: from, reply: ControllerReply::NotController { leader: self.raft.leader() } });
            return;
        }
        if let ControllerRequest::Heartbeat { broker, epoch, caught_up } = request {
            // Heartbeats are answered from the image, never queued.
            let reply = match self.image.brokers.get(&broker) {
                Some(b) if b.epoch == epoch => {
                    self.last_heard.insert(broker, now);
                    self.caught_up.insert(broker, caught_up);
                    ControllerReply::HeartbeatAck { fenced: b.fenced }
                }
                _ => ControllerReply::StaleEpoch,
            };
            out.push(ControllerEffect::Reply { to: from, reply });
            return;
        }
        self.queued.push_back((from, request));
    }

    /// The active controller's turn: answer one queued request or act on
    /// broker sessions, if no proposal is in flight.
    fn decide(&mut self, now: Millis, out: &mut Vec<ControllerEffect>) {
        if self.in_flight.is_some() {
            return;
        }
        // A new leader's log can hold entries of earlier terms that are not
        // committed yet, so not in the image. A decision taken on that
        // image can contradict them once they commit (found by the
        // replication suite, seed 30405: a stale image still had a fenced
        // follower in the ISR and made it leader — an unclean election).
        // Decide only on an image that includes the whole log.
        if self.applied_index() < self.raft.log().last_index() {
            return;
        }
        // Sessions first: a dead broker's partitions need new leaders.
        let timeout = self.config.broker_session_timeout_ms;
        let expired = self
            .image
            .brokers
            .iter()
            .find(|(id, b)| !b.fenced && self.last_heard.get(id).is_none_or(|t| now - t >= timeout))
            .map(|(id, _)| *id);
        if let Some(broker) = expired {
            let records = decide::fence(&self.image, broker);
            return self.propose(now, records, None, out);
        }
        let revived = self
            .image
            .brokers
            .iter()
            .find(|(id, b)| {
                b.fenced && self.caught_up.get(id) == Some(&true) && self.last_heard.get(id).is_some_and(|t| now - t < timeout)
            })
            .map(|(id, _)| *id);
        if let Some(broker) = revived {
            let records = decide::unfence(&self.image, broker);
            return self.propose(now, records, None, out);
        }
        let unclean = decide::unclean_elections(&self.image, self.config.unclean_leader_election);
        if !unclean.is_empty() {
            return self.propose(now, unclean, None, out);
        }
        let Some((from, request)) = self.queued.pop_front() else { return };
        match request {
            ControllerRequest::Register { broker, host, port } => {
                // Epochs only grow: the term orders leaders, the sequence
                // orders this leader's registrations.
                self.next_epoch_seq += 1;
                let epoch = (self.raft.term() << 32) | self.next_epoch_seq;
                let mut records = decide::fence(&self.image, broker);
                records.push(MetadataRecord::RegisterBroker { broker, epoch, host, port });
                self.last_heard.insert(broker, now);
                self.caught_up.insert(broker, false);
                self.propose(now, records, Some((from, ControllerReply::Registered { epoch })), out);
            }
            ControllerRequest::CreateTopic { name, partitions, replication_factor, configs } => {
                if self.image.topics.contains_key(&name) {
                    return out.push(ControllerEffect::Reply { to: from, reply: ControllerReply::TopicExists });
                }
                match decide::assign_replicas(&self.image.live_brokers(), partitions, replication_factor, self.topics_created) {
                    Ok(replicas) => {
                        self.topics_created += 1;
                        let mut topic_id = [0u8; 16];
                        topic_id[..8].copy_from_slice(&self.raft.term().to_be_bytes());
                        topic_id[8..].copy_from_slice(&(self.topics_created as u64).to_be_bytes());
                        let records = vec![MetadataRecord::CreateTopic { name, topic_id, replicas, configs }];
                        self.propose(now, records, Some((from, ControllerReply::TopicCreated)), out);
                    }
                    Err(reason) => out.push(ControllerEffect::Reply { to: from, reply: ControllerReply::Refused { reason } }),
                }
            }
            ControllerRequest::DeleteTopic { name } => match self.image.topics.get(&name) {
                Some(t) => {
                    let records = vec![MetadataRecord::DeleteTopic { name, topic_id: t.topic_id }];
                    self.propose(now, records, Some((from, ControllerReply::TopicDeleted)), out);
                }
                None => out.push(ControllerEffect::Reply { to: from, reply: ControllerReply::UnknownTopic }),
            },
            ControllerRequest::AlterPartition { broker, broker_epoch, topic, partition, leader_epoch, partition_epoch, isr } => {
                match decide::alter_partition(&self.image, broker, broker_epoch, &topic, partition, leader_epoch, partition_epoch, &isr) {
                    Ok(record) => self.propose(now, vec![record], Some((from, ControllerReply::IsrChanged)), out),
                    Err(reason) => out.push(ControllerEffect::Reply { to: from, reply: ControllerReply::Refused { reason } }),
                }
            }
            ControllerRequest::Heartbeat { .. } => unreachable!("answered at once"),
        }
    }

    fn propose(&mut self, now: Millis, records: Vec<MetadataRecord>, reply: Option<(ReplyTo, ControllerReply)>, out: &mut Vec<ControllerEffect>) {
        if records.is_empty() {
            if let Some((to, reply)) = reply {
                out.push(ControllerEffect::Reply { to, reply });
            }
            return;
        }
        let data = bincode::serde::encode_to_vec(&records, bincode::config::standard()).expect("records encode");
        let mut effects = Vec::new();
        self.raft.step(now, raft::Input::Propose(data), &mut effects);
        for e in effects {
            match e {
                raft::Effect::Proposed { index, term } => self.in_flight = Some(InFlight { index, term, reply: reply.clone() }),
                raft::Effect::NotLeader { leader } => {
                    if let Some((to, _)) = &reply {
                        out.push(ControllerEffect::Reply { to: *to, reply: ControllerReply::NotController { leader } });
                    }
                }
                other => self.raft_effect(other, out),
            }
        }
        self.maybe_snapshot(now, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::Message;

    fn config(id: u64, voters: Vec<u64>, snapshot_every: u64) -> ControllerConfig {
        let raft = RaftConfig { id, voters, ..RaftConfig::default() };
        ControllerConfig { raft, snapshot_every, ..ControllerConfig::default() }
    }

    /// A one-voter quorum: it leads itself, and each proposal commits at once.
    fn single(snapshot_every: u64) -> Controller {
        let mut c = Controller::new(config(1, vec![1], snapshot_every), HardState::default(), RaftLog::default(), None, 0, 1).unwrap();
        c.step(5_000, ControllerInput::Tick, &mut Vec::new());
        assert!(c.is_active());
        c
    }

    fn register(c: &mut Controller, out: &mut Vec<ControllerEffect>) {
        let request = ControllerRequest::Register { broker: 1, host: "h".into(), port: 9 };
        c.step(5_000, ControllerInput::Request { from: 1, request }, out);
    }

    #[test]
    fn recent_records_keep_a_bounded_window_then_ask_for_a_resync() {
        let mut c = single(0);
        let start = c.applied_count();
        for _ in 0..=RECENT_RECORDS {
            register(&mut c, &mut Vec::new());
        }
        let (cursor, records) = c.recent_records(start);
        assert!(cursor - start > RECENT_RECORDS as u64);
        assert_eq!(records, None, "the first records are not held any more");
        let (_, records) = c.recent_records(cursor - 3);
        assert!(matches!(records.as_deref(), Some([_, _, MetadataRecord::RegisterBroker { .. }])), "{records:?}");
        assert_eq!(c.recent_records(cursor).1, Some(Vec::new()));
        assert_eq!(c.recent_records(cursor + 1).1, None, "a cursor from the future");
    }

    #[test]
    fn every_n_entries_the_image_becomes_the_snapshot_and_a_restart_starts_from_it() {
        let mut c = single(3);
        let mut out = Vec::new();
        for _ in 0..4 {
            register(&mut c, &mut out);
        }
        let saved: Vec<(Index, Term, Vec<u8>)> = out
            .iter()
            .filter_map(|e| match e {
                ControllerEffect::Raft(raft::Effect::SaveSnapshot { index, term, data }) => Some((*index, *term, data.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(saved.iter().map(|s| s.0).collect::<Vec<_>>(), vec![3], "entries: the no-op and 4 registrations");
        assert_eq!(c.raft().log().snapshot_index(), 3);
        let (index, term, data) = saved[0].clone();
        let image = MetadataImage::from_snapshot(&data).unwrap();
        assert_eq!(image.brokers[&1].epoch & 0xffff_ffff, 2, "the image as of entry 3: the second registration");
        // A restart from it holds that image at once, counting it as one.
        let snapshot = Some(Snapshot { index, term, data });
        let log = RaftLog::with_snapshot(index, term, Vec::new()).unwrap();
        let r = Controller::new(config(1, vec![1], 3), HardState { term, voted_for: Some(1) }, log, snapshot, 0, 2).unwrap();
        assert_eq!((r.image(), r.applied_index(), r.applied_count()), (&image, 3, 1));
        assert_eq!(r.recent_records(0).1, None);
        assert_eq!(r.recent_records(1).1, Some(Vec::new()));
    }

    #[test]
    fn an_unreadable_snapshot_is_refused_at_start_and_stops_a_running_controller() {
        let bad = Snapshot { index: 3, term: 1, data: vec![9] };
        let log = RaftLog::with_snapshot(3, 1, Vec::new()).unwrap();
        let refused = Controller::new(config(2, vec![1, 2, 3], 5), HardState::default(), log, Some(bad.clone()), 0, 1);
        assert!(matches!(refused, Err(SnapshotError::UnknownFormat(9))));
        let mut c = Controller::new(config(2, vec![1, 2, 3], 5), HardState::default(), RaftLog::default(), None, 0, 1).unwrap();
        let mut out = Vec::new();
        let message = Message::InstallSnapshot { term: 1, last_index: bad.index, last_term: bad.term, data: bad.data };
        c.step(10, ControllerInput::Raft(Envelope { from: 1, to: 2, message }), &mut out);
        assert!(out.iter().any(|e| matches!(e, ControllerEffect::Fatal { .. })), "{out:?}");
        assert!(!out.iter().any(|e| matches!(e, ControllerEffect::Raft(raft::Effect::Send(_)))), "no acknowledgement after the failure");
        out.clear();
        c.step(20_000, ControllerInput::Tick, &mut out);
        assert!(out.is_empty(), "a failed controller does nothing");
    }
}
