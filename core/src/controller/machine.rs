//! The controller machine: a Raft node over the metadata log, the image its
//! committed records build, and — on the active controller, the Raft
//! leader — broker sessions and the decisions they trigger.
//!
//! Brokers register (and get an epoch for this incarnation) and then
//! heartbeat. The active controller fences a broker whose heartbeats stop
//! for `broker_session_timeout_ms` and unfences one that heartbeats as
//! caught up. One metadata proposal is in flight at a time, so each
//! decision is computed on the image that the previous one produced.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::decide;
use super::image::MetadataImage;
use super::records::{BrokerId, MetadataRecord};
use crate::Millis;
use crate::raft::{self, Envelope, HardState, Index, RaftConfig, RaftLog, RaftNode, Role, Term};

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
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self { raft: RaftConfig::default(), broker_session_timeout_ms: 9_000, new_controller_grace_ms: 9_000, unclean_leader_election: false }
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
    /// The Raft node's effects, except `Apply` (consumed here): persist,
    /// append, truncate, send, timer — under Raft's ordering contract.
    Raft(raft::Effect),
    Reply { to: ReplyTo, reply: ControllerReply },
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
    /// Records applied so far (the metadata log's committed prefix).
    applied: Vec<MetadataRecord>,
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
    pub fn new(config: ControllerConfig, hard: HardState, log: RaftLog, now: Millis, seed: u64) -> Self {
        let raft = RaftNode::new(config.raft.clone(), hard, log, now, seed);
        Self {
            config,
            raft,
            image: MetadataImage::default(),
            applied: Vec::new(),
            in_flight: None,
            queued: VecDeque::new(),
            last_heard: BTreeMap::new(),
            caught_up: BTreeMap::new(),
            was_leader: false,
            next_epoch_seq: 0,
            topics_created: 0,
        }
    }

    pub fn image(&self) -> &MetadataImage {
        &self.image
    }

    pub fn applied(&self) -> &[MetadataRecord] {
        &self.applied
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
            match e {
                raft::Effect::Apply(entries) => {
                    for entry in entries {
                        self.apply_entry(&entry, out);
                    }
                }
                other => out.push(ControllerEffect::Raft(other)),
            }
        }
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

    fn apply_entry(&mut self, entry: &raft::Entry, out: &mut Vec<ControllerEffect>) {
        if !entry.data.is_empty() {
            // An entry that is not a metadata batch is skipped everywhere alike.
            if let Ok((records, _)) =
                bincode::serde::decode_from_slice::<Vec<MetadataRecord>, _>(&entry.data, bincode::config::standard())
            {
                for r in records {
                    // Every node refuses the same records the same way.
                    if self.image.apply(&r).is_ok() {
                        self.applied.push(r);
                    }
                }
            }
        }
        if let Some(f) = &self.in_flight
            && entry.index >= f.index
        {
            let f = self.in_flight.take().expect("checked");
            if let Some((to, reply)) = f.reply {
                let reply = if entry.index == f.index && entry.term == f.term {
                    reply
                } else {
                    // Another leader's entry took the index: ours was lost.
                    ControllerReply::NotController { leader: self.raft.leader() }
                };
                out.push(ControllerEffect::Reply { to, reply });
            }
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
                raft::Effect::Apply(entries) => {
                    for entry in entries {
                        self.apply_entry(&entry, out);
                    }
                }
                other => out.push(ControllerEffect::Raft(other)),
            }
        }
    }
}
