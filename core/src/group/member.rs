//! One member of a consumer group, as the coordinator tracks it.

use bytes::Bytes;

use crate::Millis;
use crate::broker::RequestId;

#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    /// (assignor name, subscription), in the member's preference order.
    pub protocols: Vec<(String, Bytes)>,
    /// What the leader assigned it in the current generation.
    pub assignment: Bytes,
    /// A JoinGroup that waits for the rebalance to complete.
    pub awaiting_join: Option<RequestId>,
    /// A SyncGroup that waits for the leader's assignment.
    pub awaiting_sync: Option<RequestId>,
    /// The member is removed if no heartbeat (or join/sync) comes by then.
    pub session_deadline: Millis,
}

impl Member {
    pub fn supports(&self, protocol: &str) -> bool {
        self.protocols.iter().any(|(name, _)| name == protocol)
    }

    pub fn metadata(&self, protocol: &str) -> Bytes {
        self.protocols.iter().find(|(name, _)| name == protocol).map(|(_, m)| m.clone()).unwrap_or_default()
    }

    /// Pushes the session deadline out: the member showed it is alive.
    pub fn touch(&mut self, now: Millis) {
        self.session_deadline = now.saturating_add(i64::from(self.session_timeout_ms));
    }

    /// Whether it is waiting on a reply from us (its session is then not
    /// expired: the rebalance timeout governs it instead).
    pub fn is_waiting(&self) -> bool {
        self.awaiting_join.is_some() || self.awaiting_sync.is_some()
    }
}
