//! The single-node broker machine: topics, partitions and the Kafka APIs
//! that read and write them, as a sans-IO state machine.
//!
//! The adapter feeds [`Input`]s to [`Broker::step`] and executes the
//! [`Effect`]s it returns. Storage calls go through the [`Storage`] the
//! broker owns; everything else that leaves the machine is an effect.

pub mod api;
pub mod cluster;
pub mod config;
mod admin;
mod alter_configs;
mod fetch;
pub mod groups;
mod housekeeping;
mod metadata;
mod offsets;
mod produce;
mod producer_ids;
pub mod producer_state;
pub mod topic;

use std::collections::BTreeMap;

pub use api::*;
pub use cluster::{PeerMessage, ReplicaStatus};
pub use config::{BrokerConfig, ClusterConfig, FlushPolicy, TopicConfig};
pub use housekeeping::HousekeepingStats;
use fetch::ParkedFetch;
use producer_ids::ProducerIdAllocator;
use topic::{Partition, Topic, TopicMeta};

use crate::Millis;
use crate::group::{GroupConfig, GroupCoordinator, GroupInput, WriteId};
use crate::log::Recovery;
use crate::rng::Rng;
use crate::storage::{Storage, StorageError};

/// Why the broker's state could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A topic description is damaged. Starting without it would make the
    /// topic unknown, and auto-creation would then wipe its data; so the
    /// broker refuses to start until an operator restores or removes it.
    #[error("{file}: {reason}; restore it, or move it away to drop the topic")]
    DamagedMetadata { file: String, reason: String },
    /// The controller's Raft state cannot be trusted (a lost vote could
    /// elect two leaders in one term).
    #[error("metadata log: {0}")]
    RaftState(String),
    #[error("cluster configuration: {0}")]
    BadClusterConfig(String),
}

impl From<crate::storage::CheckedError> for OpenError {
    fn from(e: crate::storage::CheckedError) -> Self {
        match e {
            crate::storage::CheckedError::Storage(e) => OpenError::Storage(e),
            crate::storage::CheckedError::Corrupt { file } => {
                OpenError::DamagedMetadata { file, reason: "checksum mismatch".into() }
            }
        }
    }
}

/// What opening the broker found on disk.
#[derive(Debug, Clone, Default)]
pub struct OpenReport {
    pub topics: usize,
    /// Per partition directory, what log recovery found.
    pub recoveries: Vec<(String, Recovery)>,
    /// Files that belong to no known topic (left in place for an operator;
    /// creating a topic of that name clears them).
    pub orphan_files: Vec<String>,
    /// Groups rebuilt from the offsets topic, and records there that did
    /// not decode (skipped: no acknowledged commit can be among them).
    pub groups: usize,
    pub group_records_skipped: usize,
    /// Cluster mode: why recovery cut the metadata (Raft) log, if it did.
    /// A cut inside synced entries means the disk lost acknowledged data.
    pub metadata_log_cut: Option<String>,
}

/// A produce response waiting until every partition it wrote to is
/// durable past what it wrote: (topic, partition, offset the durable end
/// must reach).
#[derive(Debug)]
struct PendingAck {
    id: RequestId,
    response: ProduceResponse,
    needs: Vec<(String, i32, i64)>,
}

pub struct Broker<S: Storage> {
    config: BrokerConfig,
    storage: S,
    topics: BTreeMap<String, Topic>,
    rng: Rng,
    producer_ids: ProducerIdAllocator,
    /// Produce responses that wait for their data to be durable.
    pending_acks: Vec<PendingAck>,
    sync_requested: bool,
    /// Syncs the adapter runs ([`Input::SyncStart`]) and has not finished:
    /// per ticket, the log end each partition's sync makes durable. A
    /// partition cut or deleted meanwhile is taken out of them.
    syncs: BTreeMap<u64, Vec<(String, i32, i64)>>,
    next_sync: u64,
    /// Fetches waiting for data (long polling), by request.
    parked: BTreeMap<RequestId, ParkedFetch>,
    /// Next interval flush, under `FlushPolicy::IntervalMs`.
    next_flush_at: Option<Millis>,
    /// Set once a fatal storage failure happened; the machine then ignores
    /// every input.
    failed: Option<String>,
    coordinator: GroupCoordinator,
    /// Coordinator appends waiting for the next sync (single node) or for
    /// the offsets partition's high watermark to pass their end (cluster).
    group_writes: Vec<(WriteId, i64)>,
    /// Retention and the log cleaner (see housekeeping.rs).
    housekeeping: housekeeping::Housekeeping,
    /// Cluster mode: the controller quorum member and replication state.
    cluster: Option<cluster::Cluster>,
    /// The first step has run (cluster timers start from its time).
    started: bool,
}

impl<S: Storage> Broker<S> {
    /// Opens the broker's state from `storage`, recovering every log.
    /// `seed` drives the machine's random choices (topic ids).
    pub fn open(config: BrokerConfig, mut storage: S, seed: u64) -> Result<(Self, OpenReport), OpenError> {
        let mut report = OpenReport::default();
        let mut topics = BTreeMap::new();
        let mut max_producer_id = -1i64;
        for file in storage.list("topics/")? {
            let Some(bytes) = crate::storage::read_checked(&mut storage, &file)? else { continue };
            let mut meta: TopicMeta = serde_json::from_slice(&bytes)
                .map_err(|e| OpenError::DamagedMetadata { file: file.clone(), reason: e.to_string() })?;
            if groups::upgrade_offsets_topic(&mut meta) {
                meta.save(&mut storage)?;
            }
            let mut partitions = Vec::new();
            for p in 0..meta.partitions {
                let dir = topic::partition_dir(&meta.name, p);
                let (partition, recovery) = Partition::open(&mut storage, &dir, meta.config.log_config(&config), &mut |h| {
                    if producer_ids::own_id(&config, h.producer_id) {
                        max_producer_id = max_producer_id.max(h.producer_id);
                    }
                })?;
                report.recoveries.push((dir, recovery));
                partitions.push(partition);
            }
            topics.insert(meta.name.clone(), Topic { meta, partitions });
        }
        report.topics = topics.len();
        for file in storage.list("")? {
            let known = file.starts_with("topics/")
                || file.starts_with("meta/")
                || topics.values().any(|t| {
                    (0..t.meta.partitions).any(|p| file.starts_with(&format!("{}/", topic::partition_dir(&t.meta.name, p))))
                });
            if !known {
                report.orphan_files.push(file);
            }
        }
        let producer_ids = ProducerIdAllocator::open(&mut storage, max_producer_id + 1, &config)?;
        let cluster = match &config.cluster {
            Some(c) => {
                let (cluster, cut) = cluster::Cluster::open(&config, c, &mut storage, seed)?;
                report.metadata_log_cut = cut;
                Some(cluster)
            }
            None => None,
        };
        let group_config: GroupConfig = config.group.clone();
        let mut broker = Self {
            config,
            storage,
            topics,
            rng: Rng::new(seed),
            producer_ids,
            pending_acks: Vec::new(),
            sync_requested: false,
            syncs: BTreeMap::new(),
            next_sync: 0,
            parked: BTreeMap::new(),
            next_flush_at: None,
            failed: None,
            // Its own stream of random choices (member ids), from the same seed.
            coordinator: GroupCoordinator::new(group_config, seed ^ 0x6772_6f75_7073),
            group_writes: Vec::new(),
            housekeeping: Default::default(),
            cluster,
            started: false,
        };
        // In a cluster the coordinator loads when its node starts leading
        // the offsets partition.
        if broker.cluster.is_none() {
            report.group_records_skipped = broker.replay_groups()?;
        }
        report.groups = broker.coordinator.groups().count();
        Ok((broker, report))
    }

    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    pub fn storage_mut(&mut self) -> &mut S {
        &mut self.storage
    }

    /// The reason the machine stopped, if a fatal failure happened.
    pub fn failure(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    pub fn topic_names(&self) -> impl Iterator<Item = &str> {
        self.topics.keys().map(String::as_str)
    }

    /// Offsets below this are visible to consumers: the durable end under
    /// `EveryBatch`, else the log end.
    /// In cluster mode, only on the leader: the high watermark the ISR
    /// yields (`None` elsewhere).
    pub fn high_watermark(&self, topic: &str, partition: i32) -> Option<i64> {
        let p = self.partition(topic, partition)?;
        match &self.cluster {
            None => Some(if self.config.flush.acks_wait_for_sync() { p.durable_end } else { p.log.log_end_offset() }),
            Some(c) => c.leader_state(topic, partition).map(|l| l.isr.high_watermark()),
        }
    }

    fn partition(&self, topic: &str, partition: i32) -> Option<&Partition> {
        self.topics.get(topic)?.partitions.get(usize::try_from(partition).ok()?)
    }

    /// Advances the machine by one input.
    pub fn step(&mut self, now: Millis, input: Input, out: &mut Vec<Effect>) {
        if self.failed.is_some() {
            return;
        }
        if !self.started {
            self.started = true;
            if let Some(c) = self.cluster.as_mut() {
                c.controller.start_at(now);
            }
        }
        match input {
            Input::Request { id, request } => self.handle_request(now, id, request, out),
            Input::Peer { from, message } => {
                if self.cluster.is_some() {
                    self.peer_message(now, from, message, out);
                }
            }
            Input::Tick => {
                self.cluster_tick(now, out);
                self.expire_parked(now, out);
                self.group_step(now, GroupInput::Tick, out);
                if self.next_flush_at.is_some_and(|at| at <= now) {
                    self.next_flush_at = None;
                    self.sync_all(now, out);
                }
                self.housekeeping_tick(now, out);
            }
            Input::Sync => {
                self.sync_requested = false;
                self.sync_all(now, out);
            }
            Input::SyncStart => {
                self.sync_requested = false;
                match self.begin_sync() {
                    Some((ticket, files)) => out.push(Effect::SyncFiles { ticket, files }),
                    None => self.answer_durable_acks(out),
                }
            }
            Input::Synced { ticket } => {
                if let Some(ends) = self.syncs.remove(&ticket) {
                    self.became_durable(now, ends, out);
                }
            }
            Input::SyncFailed { reason } => self.fail(format!("fsync failed: {reason}"), out),
            Input::Disconnected { conn } => {
                self.parked.retain(|id, _| id.conn != conn);
                self.pending_acks.retain(|a| a.id.conn != conn);
            }
        }
        if self.failed.is_none() {
            self.arm_housekeeping(now, out);
            self.send_replica_fetches(now, out);
        }
    }

    /// Cluster mode: the periodic work, every [`cluster::PERIOD_MS`].
    fn cluster_tick(&mut self, now: Millis, out: &mut Vec<Effect>) {
        if self.cluster.is_none() {
            return;
        }
        // The quorum member's own timers (election deadline, leader
        // heartbeats) are honoured to the millisecond, not on the period's
        // grid: nodes started together share that grid, and deadlines
        // rounded up to it made two followers run for election in the same
        // instant (a split vote: 0.5-1 s more failover, sim seed 34).
        self.controller_step(now, crate::controller::ControllerInput::Tick, out);
        let Some(c) = self.cluster.as_mut() else { return };
        if c.next_period_at.is_some_and(|at| at > now) {
            return;
        }
        let at = now + cluster::PERIOD_MS;
        c.next_period_at = Some(at);
        out.push(Effect::Timer { at });
        self.quorum_tick(now, out);
        self.leader_tick(now, out);
    }

    /// Cluster mode: this partition's replication state here.
    pub fn replica_status(&self, topic: &str, partition: i32) -> Option<ReplicaStatus> {
        let c = self.cluster.as_ref()?;
        let p = self.partition(topic, partition)?;
        let role = c.role(topic, partition)?;
        let (leader, leader_epoch, isr) = match role {
            cluster::Role::Leader(l) => (true, l.epoch, l.isr.isr()),
            cluster::Role::Follower(f) => (false, f.epoch, Vec::new()),
            cluster::Role::Idle { .. } => (false, -1, Vec::new()),
        };
        Some(ReplicaStatus { leader, leader_epoch, high_watermark: role.high_watermark(), log_end: p.log.log_end_offset(), isr })
    }

    /// Cluster mode: the committed metadata image this node holds, and the
    /// Raft leader it knows with its term.
    pub fn metadata_image(&self) -> Option<(&crate::controller::MetadataImage, Option<u64>, u64)> {
        let c = self.cluster.as_ref()?;
        Some((c.controller.image(), c.controller.raft().leader(), c.controller.raft().term()))
    }

    /// Cluster mode: whether this node is the active controller.
    pub fn is_active_controller(&self) -> bool {
        self.cluster.as_ref().is_some_and(|c| c.controller.is_active())
    }

    fn handle_request(&mut self, now: Millis, id: RequestId, request: Request, out: &mut Vec<Effect>) {
        if self.cluster.is_some() {
            match request {
                Request::Metadata(r) => {
                    let response = Response::Metadata(self.cluster_metadata(now, r, out));
                    return out.push(Effect::Reply { id, response });
                }
                Request::CreateTopics(r) => return self.cluster_create_topics(now, id, r, out),
                Request::FindCoordinator(r) => {
                    let response = Response::FindCoordinator(self.cluster_find_coordinator(now, r, out));
                    return out.push(Effect::Reply { id, response });
                }
                Request::DeleteTopics(r) => return self.cluster_delete_topics(now, id, r, out),
                Request::AlterConfigs(r) => {
                    return out.push(Effect::Reply { id, response: Response::AlterConfigs(cluster::alter_configs_refused(r)) });
                }
                Request::IncrementalAlterConfigs(r) => {
                    let response = Response::IncrementalAlterConfigs(cluster::alter_configs_refused(r));
                    return out.push(Effect::Reply { id, response });
                }
                request => return self.handle_local_request(now, id, request, out),
            }
        }
        self.handle_local_request(now, id, request, out)
    }

    fn handle_local_request(&mut self, now: Millis, id: RequestId, request: Request, out: &mut Vec<Effect>) {
        let response = match request {
            Request::Metadata(r) => Response::Metadata(self.metadata(r)),
            Request::Produce(r) => {
                self.produce(now, id, r, out);
                return;
            }
            Request::Fetch(r) => {
                self.fetch(now, id, r, out);
                return;
            }
            Request::ListOffsets(r) => Response::ListOffsets(self.list_offsets(r)),
            Request::CreateTopics(r) => Response::CreateTopics(self.create_topics(r)),
            Request::DeleteTopics(r) => Response::DeleteTopics(self.delete_topics(now, r, out)),
            Request::InitProducerId(r) => Response::InitProducerId(self.init_producer_id(r)),
            Request::DescribeConfigs(r) => Response::DescribeConfigs(self.describe_configs(r)),
            Request::FindCoordinator(r) => Response::FindCoordinator(self.find_coordinator(r)),
            Request::OffsetForLeaderEpoch(r) => Response::OffsetForLeaderEpoch(self.offset_for_leader_epoch(r)),
            Request::Group(r) => {
                self.group_request(now, id, r, out);
                return;
            }
            Request::AlterConfigs(r) => Response::AlterConfigs(self.alter_configs(r, false)),
            Request::IncrementalAlterConfigs(r) => Response::IncrementalAlterConfigs(self.alter_configs(r, true)),
        };
        out.push(Effect::Reply { id, response });
    }

    fn request_sync(&mut self, out: &mut Vec<Effect>) {
        if !self.sync_requested {
            self.sync_requested = true;
            out.push(Effect::SyncNeeded);
        }
    }

    /// Makes every partition durable, then sends the acknowledgements that
    /// waited for it and wakes fetches that can now see more data.
    fn sync_all(&mut self, now: Millis, out: &mut Vec<Effect>) {
        let Some((ticket, files)) = self.begin_sync() else {
            // Nothing new to sync (what is not durable yet is in a sync in
            // flight): whatever is covered already goes out.
            return self.answer_durable_acks(out);
        };
        // Every dirty file in one call: the storage may sync them together
        // (a node following several partitions has several dirty files after
        // a round of fetches, and one fsync after the other added up).
        let files: Vec<&str> = files.iter().map(String::as_str).collect();
        if let Err(e) = self.storage.sync_many(&files) {
            let reason = format!("fsync failed: {e}");
            self.fail(reason, out);
            return;
        }
        let ends = self.syncs.remove(&ticket).unwrap_or_default();
        self.became_durable(now, ends, out);
    }

    /// Starts a sync of everything appended and not yet covered by one:
    /// the ticket and the files to sync. Each partition's log end is noted:
    /// once the files are synced, everything below it is durable (a sync of
    /// a file covers every write to it before the sync; the segments before
    /// the active one were synced when it was rolled).
    fn begin_sync(&mut self) -> Option<(u64, Vec<String>)> {
        let mut files = Vec::new();
        let mut ends = Vec::new();
        for (name, topic) in self.topics.iter_mut() {
            for (i, p) in topic.partitions.iter_mut().enumerate() {
                if !p.log.needs_sync() {
                    continue;
                }
                files.extend(p.log.unsynced_files().map(str::to_string));
                p.log.mark_synced();
                p.unflushed_records = 0;
                ends.push((name.clone(), i as i32, p.log.log_end_offset()));
            }
        }
        if ends.is_empty() {
            return None;
        }
        let ticket = self.next_sync;
        self.next_sync += 1;
        self.syncs.insert(ticket, ends);
        Some((ticket, files))
    }

    /// A sync finished: each partition is durable up to the end noted for it.
    /// Sends the acknowledgements that waited for that and wakes what can
    /// now see more data.
    fn became_durable(&mut self, now: Millis, ends: Vec<(String, i32, i64)>, out: &mut Vec<Effect>) {
        let mut advanced = Vec::new();
        for (name, i, end) in ends {
            let Some(p) = self.topics.get_mut(&name).and_then(|t| t.partitions.get_mut(i as usize)) else { continue };
            // Syncs may finish in any order: one that started earlier and
            // finishes later says nothing new.
            let end = end.min(p.log.log_end_offset());
            if end > p.durable_end {
                p.durable_end = end;
                advanced.push((name, i));
            }
        }
        self.answer_durable_acks(out);
        if self.cluster.is_some() && self.config.flush.acks_wait_for_sync() {
            for (topic, partition) in &advanced {
                let end = self.topics[topic].partitions[*partition as usize].durable_end;
                self.leader_appended(now, topic, *partition, end, out);
            }
        }
        self.group_writes_synced(now, out);
        if self.config.flush.acks_wait_for_sync() && !advanced.is_empty() {
            self.wake_parked(now, &advanced, out);
        }
    }

    /// Holds a produce response until every partition it wrote to is
    /// durable past what it wrote.
    fn wait_for_sync(&mut self, id: RequestId, response: ProduceResponse) {
        let needs = response
            .topics
            .iter()
            .flat_map(|(t, parts)| parts.iter().filter(|p| p.error.is_ok()).map(move |p| (t.clone(), p.partition, p.base_offset + 1)))
            .collect();
        self.pending_acks.push(PendingAck { id, response, needs });
    }

    /// Answers the produce responses whose data is durable now (a partition
    /// deleted meanwhile holds nothing to wait for).
    fn answer_durable_acks(&mut self, out: &mut Vec<Effect>) {
        let topics = &self.topics;
        let durable = |t: &str, p: i32, need: i64| {
            topics.get(t).and_then(|t| t.partitions.get(p as usize)).is_none_or(|p| p.durable_end >= need)
        };
        let (done, waiting): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.pending_acks).into_iter().partition(|a| a.needs.iter().all(|(t, p, need)| durable(t, *p, *need)));
        self.pending_acks = waiting;
        for a in done {
            out.push(Effect::Reply { id: a.id, response: Response::Produce(a.response) });
        }
    }

    /// A partition was cut or deleted: syncs in flight no longer say
    /// anything about its log (the offsets they noted may be rewritten).
    fn forget_syncs(&mut self, topic: &str, partition: Option<i32>) {
        for ends in self.syncs.values_mut() {
            ends.retain(|(t, p, _)| t != topic || partition.is_some_and(|q| q != *p));
        }
    }

    fn fail(&mut self, reason: String, out: &mut Vec<Effect>) {
        self.failed = Some(reason.clone());
        self.pending_acks.clear();
        self.parked.clear();
        self.group_writes.clear();
        out.push(Effect::Fatal { reason });
    }
}

impl<S: Storage> Broker<S> {
    /// This node coordinates every group. Transactions are not supported,
    /// so their coordinator is never available.
    fn find_coordinator(&self, r: FindCoordinatorRequest) -> FindCoordinatorResponse {
        let coordinators = r
            .keys
            .into_iter()
            .map(|key| {
                let (error, message) = match r.key_type {
                    0 if key.is_empty() => (crate::ErrorCode::InvalidGroupId, Some("empty group id".to_string())),
                    0 => (crate::ErrorCode::None, None),
                    1 => (crate::ErrorCode::CoordinatorNotAvailable, Some("transactions are not supported".to_string())),
                    t => (crate::ErrorCode::InvalidRequest, Some(format!("unknown coordinator key type {t}"))),
                };
                let ok = error.is_ok();
                Coordinator {
                    key,
                    error,
                    error_message: message,
                    node_id: if ok { self.config.node_id } else { -1 },
                    host: if ok { self.config.advertised_host.clone() } else { String::new() },
                    port: if ok { self.config.advertised_port } else { -1 },
                }
            })
            .collect();
        FindCoordinatorResponse { coordinators }
    }
}
