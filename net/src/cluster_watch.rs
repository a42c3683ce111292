//! Log lines for the cluster events an operator asks about first after a
//! failover: who the active controller is, and which brokers are fenced.
//! Read from the node's machine after each turn of the broker loop; the
//! machine itself never logs (it is pure).

use millrace_core::broker::Broker;
use millrace_core::storage::Storage;

#[derive(Default)]
pub struct ClusterWatch {
    controller: Option<(Option<u64>, u64)>,
    fenced: Vec<i32>,
}

impl ClusterWatch {
    pub fn observe<S: Storage>(&mut self, broker: &Broker<S>) {
        let Some((image, leader, term)) = broker.metadata_image() else { return };
        let me = broker.config().node_id;
        if self.controller != Some((leader, term)) {
            match leader {
                Some(l) => tracing::info!(node = me, controller = l, term, "controller known"),
                None => tracing::info!(node = me, term, "no controller (election)"),
            }
            self.controller = Some((leader, term));
        }
        // Compared without allocating: this runs every turn of the loop.
        let now = image.brokers.iter().filter(|(_, b)| b.fenced).map(|(id, _)| *id);
        if !now.clone().eq(self.fenced.iter().copied()) {
            self.fenced = now.collect();
            tracing::info!(node = me, fenced = ?self.fenced, "fenced brokers changed");
        }
    }
}
