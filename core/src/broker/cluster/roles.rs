//! Committed metadata, applied to this broker: topics get local logs (or
//! lose them), and each partition becomes leader, follower or idle here.
//!
//! Nothing is acted on until the local image holds this incarnation's own
//! registration: only then is it known to be at least as new as anything
//! decided before this broker started, so a log is never deleted or
//! replaced on the word of a stale image.

use super::super::config::TopicConfig;
use super::super::topic::TopicMeta;
use super::super::{Broker, Effect};
use super::{FollowerState, LeaderState, Role};
use crate::Millis;
use crate::controller::{MetadataRecord, PartitionImage};
use crate::replication::LeaderPartition;
use crate::storage::Storage;
use crate::ErrorCode;
use super::super::groups::is_offsets_partition;

impl<S: Storage> Broker<S> {
    /// Acts on records the controller applied since the last call. When
    /// they are not all known any more (the controller restored a snapshot
    /// or moved on too far), everything is reconciled with the image, as
    /// at the first catch-up.
    pub(in crate::broker) fn metadata_changed(&mut self, now: Millis, out: &mut Vec<Effect>) {
        let c = self.cluster_mut();
        let (cursor, fresh) = c.controller.recent_records(c.seen_records);
        c.seen_records = cursor;
        let was_caught_up = c.caught_up && fresh.is_some();
        let fresh: Vec<MetadataRecord> = fresh.unwrap_or_default();
        let me = c.me;
        c.caught_up = c.broker_epoch.is_some_and(|e| c.controller.image().brokers.get(&me).is_some_and(|b| b.epoch == e));
        if !c.caught_up {
            return;
        }
        if was_caught_up {
            for record in &fresh {
                if let MetadataRecord::DeleteTopic { name, topic_id } = record {
                    self.drop_local_topic(now, name, Some(*topic_id), out);
                }
            }
        } else {
            // First time current (or resyncing): local topics the metadata
            // no longer has were deleted while this node was away.
            let gone: Vec<String> = {
                let image = self.cluster_ref().controller.image();
                self.topics.keys().filter(|t| !image.topics.contains_key(*t)).cloned().collect()
            };
            for name in gone {
                self.drop_local_topic(now, &name, None, out);
            }
        }
        if was_caught_up && fresh.is_empty() {
            return;
        }
        self.reconcile(now, out);
    }

    /// Brings every local topic and partition role in line with the image.
    fn reconcile(&mut self, now: Millis, out: &mut Vec<Effect>) {
        let topics: Vec<(String, crate::controller::image::TopicImage)> =
            self.cluster_ref().controller.image().topics.iter().map(|(name, t)| (name.clone(), t.clone())).collect();
        for (name, t) in topics {
            let (topic_id, configs, partitions) = (t.topic_id, t.configs, t.partitions);
            if self.topics.get(&name).is_none_or(|t| t.meta.topic_id != topic_id || t.meta.partitions != partitions.len() as i32) {
                if self.topics.contains_key(&name) {
                    self.drop_local_topic(now, &name, None, out);
                }
                let pairs: Vec<(String, Option<String>)> = configs.iter().map(|(k, v)| (k.clone(), Some(v.clone()))).collect();
                let config = TopicConfig::from_pairs(&pairs).unwrap_or_default();
                let meta = TopicMeta { name: name.clone(), topic_id, partitions: partitions.len() as i32, config };
                if let Err(e) = self.materialize_topic(&meta) {
                    return self.fail(format!("cannot create the log of {name}: {e}"), out);
                }
            }
            for (i, p) in partitions.iter().enumerate() {
                self.set_role(now, &name, i as i32, p, out);
            }
        }
    }

    fn set_role(&mut self, now: Millis, topic: &str, partition: i32, p: &PartitionImage, out: &mut Vec<Effect>) {
        let me = self.cluster_mut().me;
        let key = (topic.to_string(), partition);
        let current = self.cluster_mut().roles.remove(&key);
        let hw = current.as_ref().map_or(0, Role::high_watermark);
        let role = match (current, p.leader) {
            (Some(Role::Leader(mut l)), Some(leader)) if leader == me && l.epoch == p.leader_epoch => {
                if l.partition_epoch != p.partition_epoch {
                    l.partition_epoch = p.partition_epoch;
                    let before = l.isr.high_watermark();
                    l.isr.isr_changed(&p.isr);
                    // A smaller ISR can move the high watermark at once:
                    // whatever waits on it must hear so now, not at the
                    // next append (found by the produce benchmark: an
                    // acks=all write waited out its 30 s timeout).
                    if l.isr.high_watermark() > before {
                        self.cluster_mut().roles.insert(key.clone(), Role::Leader(l));
                        self.high_watermark_advanced(now, topic, partition, out);
                        return;
                    }
                }
                Role::Leader(l)
            }
            (Some(Role::Follower(f)), Some(leader)) if leader == f.leader && f.epoch == p.leader_epoch => Role::Follower(f),
            (current, leader) => {
                if matches!(current, Some(Role::Leader(_))) {
                    self.stop_leading(now, topic, partition, out);
                }
                match leader {
                    _ if !p.replicas.contains(&me) => Role::Idle { high_watermark: hw },
                    Some(l) if l == me => self.start_leading(now, topic, partition, p, hw, out),
                    Some(l) => Role::Follower(FollowerState {
                        leader: l,
                        epoch: p.leader_epoch,
                        high_watermark: hw,
                        in_flight: None,
                        retry_at: now,
                    }),
                    None => Role::Idle { high_watermark: hw },
                }
            }
        };
        self.cluster_mut().roles.insert(key, role);
    }

    fn start_leading(&mut self, now: Millis, topic: &str, partition: i32, p: &PartitionImage, hw: i64, out: &mut Vec<Effect>) -> Role {
        let me = self.cluster_mut().me;
        let lag = self.cluster_mut().config.replica_lag_time_max_ms;
        let t = &self.topics[topic];
        let min_insync = t.meta.config.min_insync_replicas(&self.config);
        let part = &t.partitions[partition as usize];
        // What the leader counts as its own: what it holds durably when
        // acknowledgements wait for fsync.
        let end = if self.config.flush.acks_wait_for_sync() { part.durable_end } else { part.log.log_end_offset() };
        let isr = LeaderPartition::new(me, &p.replicas, &p.isr, end, hw, min_insync, lag, now);
        if is_offsets_partition(topic, partition) {
            self.coordinator_moved(now, true, out);
        }
        Role::Leader(LeaderState { epoch: p.leader_epoch, partition_epoch: p.partition_epoch, isr })
    }

    /// This node no longer leads: whatever waited on it as leader is told so.
    fn stop_leading(&mut self, now: Millis, topic: &str, partition: i32, out: &mut Vec<Effect>) {
        self.fail_ack_waits(|t, p| t == topic && p == partition, ErrorCode::NotLeaderOrFollower, out);
        self.fail_pending_acks(|t, p| t == topic && p == partition, ErrorCode::NotLeaderOrFollower, out);
        self.answer_parked_replica_fetches(now, topic, partition, out);
        self.wake_parked(now, &[(topic.to_string(), partition)], out);
        if is_offsets_partition(topic, partition) {
            self.coordinator_moved(now, false, out);
        }
    }

    /// Deletes a local topic (if `topic_id` is given, only that incarnation).
    fn drop_local_topic(&mut self, now: Millis, name: &str, topic_id: Option<[u8; 16]>, out: &mut Vec<Effect>) {
        let Some(t) = self.topics.get(name) else { return };
        if topic_id.is_some_and(|id| id != t.meta.topic_id) {
            return;
        }
        for p in 0..t.meta.partitions {
            if let Some(Role::Leader(_)) = self.cluster_mut().roles.remove(&(name.to_string(), p)) {
                self.stop_leading(now, name, p, out);
            }
        }
        let result = self.remove_topic(now, name, out);
        if let Err(e) = result {
            self.fail(format!("cannot delete the log of {name}: {e}"), out);
        }
    }
}
