//! The records of the metadata log: every change to the cluster's metadata
//! is one of these, proposed by the active controller through Raft and
//! applied, in log order, by every controller and broker (KRaft's design).

use serde::{Deserialize, Serialize};

pub type BrokerId = i32;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetadataRecord {
    /// A broker (re)started: `epoch` tells its incarnations apart, so a
    /// heartbeat of an old incarnation is never mistaken for the new one.
    RegisterBroker { broker: BrokerId, epoch: u64, host: String, port: i32 },
    /// A broker stopped heartbeating: it leads nothing and is in no ISR.
    FenceBroker { broker: BrokerId, epoch: u64 },
    /// A registered broker caught up and heartbeats: it may lead again.
    UnfenceBroker { broker: BrokerId, epoch: u64 },
    /// `configs`: the topic-level overrides it was created with (validated
    /// by the broker that asked, before the proposal).
    CreateTopic { name: String, topic_id: [u8; 16], replicas: Vec<Vec<BrokerId>>, configs: Vec<(String, String)> },
    /// The id tells a replayed delete from a later topic of the same name.
    DeleteTopic { name: String, topic_id: [u8; 16] },
    /// A partition's leader (None: offline), leader epoch and ISR change.
    PartitionChange { topic: String, partition: i32, leader: Option<BrokerId>, leader_epoch: i32, isr: Vec<BrokerId> },
}
