//! Cluster mode: this broker is one node of a replicated cluster
//! (DESIGN.md §3). Every node runs a controller quorum member (the Raft
//! metadata log) and a broker that follows the metadata it commits:
//! partitions it leads take produce requests and serve consumers below the
//! high watermark; partitions it follows are copied from their leader.
//!
//! - [`quorum`]: drives the controller, keeps its Raft log durable, and
//!   routes calls to whichever node is the active controller.
//! - [`roles`]: applies committed metadata — creates and deletes local
//!   logs, and moves each partition between leader and follower.
//! - [`leader`]: serves followers' fetches, tracks the ISR and the high
//!   watermark, answers `acks=all` once the ISR holds a batch.
//! - [`follower`]: fetches from the leader, cuts a diverged log, appends.
//!
//! Everything here is part of the broker machine: no IO besides the
//! broker's `Storage`, time passed in, messages to peers as effects.

mod admin;
mod follower;
mod leader;
pub mod peer;
mod quorum;
mod roles;

use std::collections::BTreeMap;

pub use peer::{FetchOutcome, PeerMessage, ReplicaFetch, ReplicaFetchReply};

use super::config::ClusterConfig;
use super::{ProduceResponse, RequestId};
use crate::Millis;
use crate::controller::{BrokerId, Controller};
use crate::raft::store::RaftStore;
use crate::replication::LeaderPartition;

/// How often the cluster's periodic work runs (heartbeats, lag checks,
/// timeouts of lost messages).
pub(super) const PERIOD_MS: Millis = 50;

/// A partition's role on this node, as the metadata last said.
#[derive(Debug)]
pub(super) enum Role {
    /// Not a replica here, the partition has no leader, or this node has
    /// not caught up with the metadata yet: it neither serves nor copies.
    Idle { high_watermark: i64 },
    Leader(LeaderState),
    Follower(FollowerState),
}

impl Role {
    pub(super) fn high_watermark(&self) -> i64 {
        match self {
            Role::Idle { high_watermark } => *high_watermark,
            Role::Leader(l) => l.isr.high_watermark(),
            Role::Follower(f) => f.high_watermark,
        }
    }
}

#[derive(Debug)]
pub(super) struct LeaderState {
    pub epoch: i32,
    /// The partition epoch of the image this leader's ISR came from, for
    /// AlterPartition.
    pub partition_epoch: i32,
    pub isr: LeaderPartition,
}

#[derive(Debug)]
pub(super) struct FollowerState {
    pub leader: BrokerId,
    pub epoch: i32,
    pub high_watermark: i64,
    /// The fetch sent and not answered yet: its sequence number and when.
    pub in_flight: Option<(u64, Millis)>,
    pub retry_at: Millis,
}

/// Why a call to the controller was made: what to do with its answer.
#[derive(Debug, Clone)]
pub(super) enum CallPurpose {
    Register,
    Heartbeat,
    AlterPartition { topic: String, partition: i32, leader_epoch: i32 },
    /// One topic of a CreateTopics or DeleteTopics request.
    Admin { id: RequestId, index: usize },
    /// A topic created on a Metadata request; nobody waits for it.
    AutoCreate,
}

#[derive(Debug)]
pub(super) struct Call {
    pub purpose: CallPurpose,
    pub deadline: Millis,
}

/// An `acks=all` produce response waiting for the high watermarks.
#[derive(Debug)]
pub(super) struct AckWait {
    pub id: RequestId,
    pub response: ProduceResponse,
    /// (topic, partition, offset the high watermark must pass).
    pub needs: Vec<(String, i32, i64)>,
    pub deadline: Millis,
}

/// A follower's fetch the leader holds until it has more to send.
#[derive(Debug)]
pub(super) struct ParkedReplicaFetch {
    pub from: BrokerId,
    pub fetch: ReplicaFetch,
    pub deadline: Millis,
}

/// A CreateTopics or DeleteTopics request whose topics went to the
/// controller; answered when every one of them is.
#[derive(Debug)]
pub(super) struct PendingAdmin {
    pub kind: AdminKind,
    pub remaining: usize,
}

#[derive(Debug)]
pub(super) enum AdminKind {
    Create(Vec<super::CreateTopicResult>),
    Delete(Vec<(String, crate::ErrorCode, Option<String>)>),
}

pub(super) struct Cluster {
    pub config: ClusterConfig,
    pub me: BrokerId,
    pub controller: Controller,
    pub raft_store: RaftStore,
    /// The controller's `applied_count` when the broker last acted on its
    /// records (a cursor for `recent_records`).
    pub seen_records: u64,
    /// This incarnation's registration, once the controller answered.
    pub broker_epoch: Option<u64>,
    /// The local metadata includes this incarnation's registration: the
    /// image is current enough to act on.
    pub caught_up: bool,
    pub next_heartbeat_at: Millis,
    pub calls: BTreeMap<u64, Call>,
    pub next_call: u64,
    pub roles: BTreeMap<(String, i32), Role>,
    pub ack_waits: Vec<AckWait>,
    pub replica_parked: BTreeMap<(String, i32), Vec<ParkedReplicaFetch>>,
    pub next_fetch_seq: u64,
    pub admin: BTreeMap<RequestId, PendingAdmin>,
    pub next_period_at: Option<Millis>,
}

impl Cluster {
    pub fn role(&self, topic: &str, partition: i32) -> Option<&Role> {
        self.roles.get(&(topic.to_string(), partition))
    }

    pub fn leader_state(&self, topic: &str, partition: i32) -> Option<&LeaderState> {
        match self.role(topic, partition)? {
            Role::Leader(l) => Some(l),
            _ => None,
        }
    }
}

/// What the outside may know of a partition's replication state (for
/// tests, the simulator's checkers and `millrace` tooling).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaStatus {
    pub leader: bool,
    pub leader_epoch: i32,
    pub high_watermark: i64,
    pub log_end: i64,
    pub isr: Vec<BrokerId>,
}

/// Encodes who a controller reply goes to: the node and its call number.
fn reply_to(node: BrokerId, call: u64) -> u64 {
    (u64::from(node as u32) << 40) | (call & ((1 << 40) - 1))
}

fn reply_target(to: u64) -> (BrokerId, u64) {
    ((to >> 40) as u32 as BrokerId, to & ((1 << 40) - 1))
}

/// Topic configs live in the metadata log in a cluster, and changing them
/// there is not built yet: refused, by name, rather than changed on one node.
pub(super) fn alter_configs_refused(r: super::AlterConfigsRequest) -> super::AlterConfigsResponse {
    let results = r
        .resources
        .into_iter()
        .map(|res| super::AlterConfigsResult {
            resource_type: res.resource_type,
            resource_name: res.resource_name,
            error: crate::ErrorCode::PolicyViolation,
            error_message: Some("altering configs is not supported in cluster mode yet; set them at topic creation".into()),
        })
        .collect();
    super::AlterConfigsResponse { results }
}

impl Cluster {
    /// Opens this node's quorum state (the Raft hard state and log) from
    /// `storage`, under `meta/raft`.
    pub(super) fn open<S: crate::storage::Storage + ?Sized>(
        broker: &super::BrokerConfig,
        config: &ClusterConfig,
        storage: &mut S,
        seed: u64,
    ) -> Result<(Self, Option<String>), super::OpenError> {
        let me = broker.node_id;
        if me < 0 {
            return Err(super::OpenError::BadClusterConfig(format!("node id must be >= 0, got {me}")));
        }
        if !config.voters.contains(&me) {
            return Err(super::OpenError::BadClusterConfig(format!("node {me} is not among the voters {:?}", config.voters)));
        }
        if config.voters.iter().any(|v| *v < 0) {
            return Err(super::OpenError::BadClusterConfig(format!("voter ids must be >= 0: {:?}", config.voters)));
        }
        if config.election_timeout_min_ms >= config.election_timeout_max_ms
            || config.raft_heartbeat_interval_ms >= config.election_timeout_min_ms
        {
            return Err(super::OpenError::BadClusterConfig(
                "need raft_heartbeat_interval_ms < election_timeout_min_ms < election_timeout_max_ms".into(),
            ));
        }
        let (raft_store, hard, log, snapshot, recovery) =
            RaftStore::open(storage, "meta/raft").map_err(|e| super::OpenError::RaftState(e.to_string()))?;
        let mut voters: Vec<u64> = config.voters.iter().map(|v| *v as u64).collect();
        voters.sort_unstable();
        voters.dedup();
        let controller_config = crate::controller::ControllerConfig {
            raft: crate::raft::RaftConfig {
                id: me as u64,
                voters,
                election_timeout_min_ms: config.election_timeout_min_ms,
                election_timeout_max_ms: config.election_timeout_max_ms,
                heartbeat_interval_ms: config.raft_heartbeat_interval_ms,
                max_entries_per_message: 256,
            },
            broker_session_timeout_ms: config.broker_session_timeout_ms,
            new_controller_grace_ms: config.new_controller_grace_ms,
            unclean_leader_election: config.unclean_leader_election,
            snapshot_every: config.metadata_snapshot_every,
        };
        let incarnation = crate::rng::Rng::new(seed ^ 0x696e_6361_726e).next_u64() >> 2;
        let controller = Controller::new(controller_config, hard, log, snapshot, 0, seed ^ 0x7261_6674)
            .map_err(|e| super::OpenError::RaftState(e.to_string()))?;
        let cut = recovery.reason.map(|r| format!("{r} ({} entries kept, {} bytes cut)", recovery.entries, recovery.truncated_bytes));
        let cluster = Self {
            config: config.clone(),
            me,
            controller,
            raft_store,
            seen_records: 0,
            broker_epoch: None,
            caught_up: false,
            next_heartbeat_at: 0,
            calls: BTreeMap::new(),
            // Numbered from a random start per incarnation: a late answer to
            // a call or fetch of the previous incarnation (same node, same
            // peers) must not match one of this incarnation's.
            next_call: incarnation & ((1 << 40) - 1),
            roles: BTreeMap::new(),
            ack_waits: Vec::new(),
            replica_parked: BTreeMap::new(),
            next_fetch_seq: incarnation,
            admin: BTreeMap::new(),
            next_period_at: None,
        };
        Ok((cluster, cut))
    }
}
