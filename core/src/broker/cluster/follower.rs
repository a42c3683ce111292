//! The follower's side of replication: one fetch in flight per partition
//! to its leader; append what comes back (offsets and leader epochs as the
//! leader wrote them); cut the log where it stops agreeing with the
//! leader's.
//!
//! Under the every-batch flush policy the next fetch goes out only after
//! the appended data is synced (the durable end reached the log end), so
//! the offset it reports — which the leader's high watermark and so
//! `acks=all` count on — is durable here.

use super::super::{Broker, Effect, FlushPolicy};
use super::{FetchOutcome, PeerMessage, ReplicaFetch, ReplicaFetchReply, Role};
use crate::records;
use crate::storage::Storage;
use crate::Millis;

/// Wait after a refused fetch (the metadata has to catch up first).
const REFUSED_BACKOFF_MS: Millis = 100;
/// Wait after a fetch that could not be used (a damaged batch, a cut that
/// made no progress), so a persistent problem does not spin.
const TROUBLE_BACKOFF_MS: Millis = 1_000;

impl<S: Storage> Broker<S> {
    /// Sends a fetch for every followed partition that has none in flight
    /// (and gives up on fetches unanswered for too long).
    pub(in crate::broker) fn send_replica_fetches(&mut self, now: Millis, out: &mut Vec<Effect>) {
        let wait_for_sync = self.config.flush.acks_wait_for_sync();
        let Broker { cluster, topics, .. } = self;
        let Some(c) = cluster.as_mut() else { return };
        let timeout = c.config.request_timeout_ms;
        for ((topic, partition), role) in c.roles.iter_mut() {
            let Role::Follower(f) = role else { continue };
            if let Some((_, sent)) = f.in_flight {
                if now - sent < timeout {
                    continue;
                }
                f.in_flight = None;
            }
            if now < f.retry_at {
                continue;
            }
            let Some(p) = topics.get(topic).and_then(|t| t.partitions.get(*partition as usize)) else { continue };
            // Everything appended must be durable first (a sync may still
            // be running for it).
            if wait_for_sync && p.durable_end < p.log.log_end_offset() {
                continue;
            }
            let seq = c.next_fetch_seq;
            c.next_fetch_seq += 1;
            f.in_flight = Some((seq, now));
            let fetch = ReplicaFetch {
                seq,
                topic: topic.clone(),
                partition: *partition,
                leader_epoch: f.epoch,
                fetch_offset: p.log.log_end_offset(),
                last_fetched_epoch: p.epochs.latest().map_or(-1, |(e, _)| e),
            };
            out.push(Effect::Send { to: f.leader, message: PeerMessage::Fetch(fetch) });
        }
    }

    /// The leader's answer to a fetch.
    pub(in crate::broker) fn replica_fetched(&mut self, now: Millis, from: i32, reply: ReplicaFetchReply, out: &mut Vec<Effect>) {
        let key = (reply.topic.clone(), reply.partition);
        let Some(Role::Follower(f)) = self.cluster_mut().roles.get_mut(&key) else { return };
        if f.leader != from || f.epoch != reply.leader_epoch || f.in_flight.map(|(s, _)| s) != Some(reply.seq) {
            return; // an answer to an older fetch, or from a former leader
        }
        f.in_flight = None;
        let following = f.epoch;
        let known_hw = f.high_watermark;
        let Some(p) = self.topics.get_mut(&reply.topic).and_then(|t| t.partitions.get_mut(reply.partition as usize)) else { return };
        let backoff = match reply.outcome {
            FetchOutcome::NotLeader => Some(REFUSED_BACKOFF_MS),
            FetchOutcome::StartAt { log_start } => {
                let r = p.log.restart_at(&mut self.storage, log_start).map_err(|e| e.to_string());
                let r = r.and_then(|()| p.rebuild(&mut self.storage).map_err(|e| e.to_string()));
                if let Err(e) = r {
                    return self.fail(format!("{}-{}: restarting the log at {log_start}: {e}", reply.topic, reply.partition), out);
                }
                self.forget_syncs(&reply.topic, Some(reply.partition));
                None
            }
            FetchOutcome::Diverging { epoch, end_offset } => {
                let leo = p.log.log_end_offset();
                // Keep no more than the leader has in that epoch, and no more
                // than we have in it ourselves: the next fetch then asks about
                // the epoch before, until the logs agree.
                let ours = if epoch >= 0 { p.epochs.end_offset_for(epoch, leo).map_or(p.log.log_start_offset(), |(_, end)| end) } else { leo };
                // Never below the high watermark: what lies below it is on
                // every in-sync replica and agrees (Kafka's rule); a request
                // to cut there can only come from a late or damaged answer.
                let floor = known_hw.min(leo).max(p.log.log_start_offset());
                let cut = leo.min(end_offset).min(ours).max(floor);
                if cut >= leo {
                    Some(TROUBLE_BACKOFF_MS)
                } else {
                    // Sync first: reopening the cut log takes its end as
                    // durable, and what lies below the cut may still be
                    // unsynced (appended, its sync in flight or not yet
                    // started). Counted as durable, the next fetch would
                    // report it and the leader would acknowledge records
                    // a crash can tear (chaos seed 11203: acks=all records
                    // lost).
                    let r = p.log.sync(&mut self.storage).map_err(|e| e.to_string());
                    let r = r.and_then(|()| p.log.truncate_to(&mut self.storage, cut).map_err(|e| e.to_string()));
                    let r = r.and_then(|()| p.rebuild(&mut self.storage).map_err(|e| e.to_string()));
                    if let Err(e) = r {
                        return self.fail(format!("{}-{}: truncating to {cut}: {e}", reply.topic, reply.partition), out);
                    }
                    self.forget_syncs(&reply.topic, Some(reply.partition));
                    None
                }
            }
            FetchOutcome::Data { high_watermark, log_start: _, records: data } => {
                let mut appended = 0u64;
                let mut trouble = false;
                // Each batch is validated (length, CRC) as it is split off: a
                // batch damaged on the way is refetched, never stored.
                for batch in records::split_batches(&data) {
                    let Ok((h, bytes)) = batch else {
                        trouble = true;
                        break;
                    };
                    // The leader epoch field is outside the CRC (Kafka's
                    // format: leaders stamp it after the fact), so a bit
                    // flipped on the leader's read goes unseen by it. An
                    // epoch older than our last or newer than the leader's
                    // own cannot be right: refetch.
                    let latest = p.epochs.latest().map_or(-1, |(e, _)| e);
                    if h.partition_leader_epoch < latest || h.partition_leader_epoch > following {
                        trouble = true;
                        break;
                    }
                    match p.log.append_replica(&mut self.storage, bytes) {
                        Ok(h) => {
                            p.producers.record(&h);
                            let _ = p.epochs.assign(h.partition_leader_epoch, h.base_offset);
                            p.unflushed_records += h.record_count.max(0) as u64;
                            appended += 1;
                        }
                        Err(crate::log::LogError::NotAtEnd { .. }) => {
                            trouble = true;
                            break;
                        }
                        Err(e) => {
                            let _ = h;
                            return self.fail(format!("{}-{}: appending a replicated batch: {e}", reply.topic, reply.partition), out);
                        }
                    }
                }
                let leo = p.log.log_end_offset();
                if let Some(Role::Follower(f)) = self.cluster_mut().roles.get_mut(&key) {
                    f.high_watermark = f.high_watermark.max(high_watermark.min(leo));
                }
                if appended > 0 {
                    match self.config.flush {
                        FlushPolicy::EveryBatch => self.request_sync(out),
                        _ => self.after_replica_append(now, &key, out),
                    }
                }
                trouble.then_some(TROUBLE_BACKOFF_MS)
            }
        };
        if let Some(Role::Follower(f)) = self.cluster_mut().roles.get_mut(&key) {
            f.retry_at = now + backoff.unwrap_or(0);
        }
    }

    /// Relaxed flush policies: flush as the policy says, like a leader's append.
    fn after_replica_append(&mut self, now: Millis, key: &(String, i32), out: &mut Vec<Effect>) {
        self.after_append(now, std::slice::from_ref(key), out);
    }
}
