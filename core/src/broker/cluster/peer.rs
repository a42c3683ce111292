//! What cluster nodes say to each other: Raft, calls to the active
//! controller, and replica fetches. Plain serde data; the real cluster
//! frames it with bincode over TCP, the simulator does the same over its
//! simulated network.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::controller::{ControllerReply, ControllerRequest};
use crate::raft::Envelope;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerMessage {
    Raft(Envelope),
    /// A call to the active controller; `call` comes back in the reply.
    ControllerRequest { call: u64, request: ControllerRequest },
    ControllerReply { call: u64, reply: ControllerReply },
    Fetch(ReplicaFetch),
    FetchReply(ReplicaFetchReply),
}

/// A follower asks its leader for the log from `fetch_offset` on. It
/// holds everything below it (durably, under the every-batch flush
/// policy), which is what the leader's high watermark counts on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaFetch {
    /// Echoed in the reply, so a late reply to an older fetch is ignored.
    pub seq: u64,
    pub topic: String,
    pub partition: i32,
    /// The leader epoch the follower follows: a leader at another epoch
    /// refuses, so nobody copies from a deposed leader.
    pub leader_epoch: i32,
    pub fetch_offset: i64,
    /// The epoch of the follower's last batch (-1: empty log); the leader
    /// checks that its own log agrees up to `fetch_offset` in that epoch
    /// (KIP-320, OffsetsForLeaderEpoch folded into Fetch).
    pub last_fetched_epoch: i32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaFetchReply {
    pub seq: u64,
    pub topic: String,
    pub partition: i32,
    pub leader_epoch: i32,
    pub outcome: FetchOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FetchOutcome {
    /// Whole batches starting at the fetch offset (maybe none). Encoded as
    /// one byte string (as `serde_bytes` does): serde's default encodes a
    /// byte sequence byte by byte, which cost most of a follower's CPU.
    /// Shared bytes, so a leader hands the batch it just appended to every
    /// follower without a copy per follower.
    Data {
        high_watermark: i64,
        log_start: i64,
        #[serde(with = "shared_bytes")]
        records: Bytes,
    },
    /// The logs part ways: the leader's `epoch` (the largest ≤ the
    /// follower's last epoch it knows; -1 none) ends at `end_offset`.
    Diverging { epoch: i32, end_offset: i64 },
    /// The fetch offset is below the leader's log start: start over there.
    StartAt { log_start: i64 },
    /// The receiver does not lead the partition at that epoch.
    NotLeader,
}

/// `Bytes` as one byte string, the encoding `serde_bytes` gives a `Vec<u8>`
/// (so the wire format does not depend on which of the two a side holds).
mod shared_bytes {
    use bytes::Bytes;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &Bytes, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(bytes)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Bytes, D::Error> {
        serde_bytes::ByteBuf::deserialize(deserializer).map(|b| Bytes::from(b.into_vec()))
    }
}
