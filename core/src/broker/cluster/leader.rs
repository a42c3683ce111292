//! The leader's side of replication: serving followers' fetches, the ISR
//! and high watermark bookkeeping of [`LeaderPartition`], ISR changes
//! through the controller, and `acks=all` answers once the high watermark
//! passes a batch.
//!
//! [`LeaderPartition`]: crate::replication::LeaderPartition

use super::super::{Broker, Effect, ProduceResponse, RequestId, Response};
use super::{AckWait, CallPurpose, FetchOutcome, ParkedReplicaFetch, PeerMessage, ReplicaFetch, ReplicaFetchReply, Role};
use bytes::Bytes;

use crate::controller::ControllerRequest;
use crate::replication::IsrChange;
use crate::storage::Storage;
use crate::{ErrorCode, Millis};

impl<S: Storage> Broker<S> {
    /// A follower's fetch. `may_park`: hold it until there is data (false
    /// when a parked fetch is being answered). `fresh`: a batch just
    /// appended at the given offset, still in memory; a fetch from there
    /// is answered with it instead of a read of the file.
    pub(in crate::broker) fn serve_replica_fetch(
        &mut self,
        now: Millis,
        from: i32,
        f: ReplicaFetch,
        may_park: bool,
        fresh: Option<(i64, &Bytes)>,
        out: &mut Vec<Effect>,
    ) {
        let key = (f.topic.clone(), f.partition);
        let reply = |outcome| ReplicaFetchReply { seq: f.seq, topic: f.topic.clone(), partition: f.partition, leader_epoch: f.leader_epoch, outcome };
        let leading = matches!(self.cluster_mut().roles.get(&key), Some(Role::Leader(l)) if l.epoch == f.leader_epoch);
        let Some(p) = self.topics.get(&f.topic).and_then(|t| t.partitions.get(f.partition as usize)).filter(|_| leading) else {
            out.push(Effect::Send { to: from, message: PeerMessage::FetchReply(reply(FetchOutcome::NotLeader)) });
            return;
        };
        let leo = p.log.log_end_offset();
        // Does our log agree with the follower's up to its fetch offset?
        let diverging = if f.last_fetched_epoch >= 0 {
            match p.epochs.end_offset_for(f.last_fetched_epoch, leo) {
                Some((e, end)) if e == f.last_fetched_epoch && end >= f.fetch_offset => None,
                Some((e, end)) => Some((e, end)),
                // We know no epoch that old: the follower keeps nothing
                // past where our own history starts.
                None => Some((-1, p.epochs.first_start().unwrap_or(leo))),
            }
        } else {
            None
        };
        let outcome = if let Some((epoch, end_offset)) = diverging {
            Some(FetchOutcome::Diverging { epoch, end_offset })
        } else if f.fetch_offset > leo {
            Some(FetchOutcome::Diverging { epoch: -1, end_offset: leo })
        } else if f.fetch_offset < p.log.log_start_offset() {
            Some(FetchOutcome::StartAt { log_start: p.log.log_start_offset() })
        } else {
            None
        };
        if let Some(outcome) = outcome {
            out.push(Effect::Send { to: from, message: PeerMessage::FetchReply(reply(outcome)) });
            return;
        }
        // The fetch offset is the follower's progress.
        let Some(Role::Leader(l)) = self.cluster_mut().roles.get_mut(&key) else { unreachable!("checked above") };
        let before = l.isr.high_watermark();
        let change = l.isr.fetched(from, f.fetch_offset, now);
        let advanced = l.isr.high_watermark() > before;
        if let Some(change) = change {
            self.propose_isr(now, &f.topic, f.partition, change, out);
        }
        if advanced {
            self.high_watermark_advanced(now, &f.topic, f.partition, out);
        }
        let p = &self.topics[&f.topic].partitions[f.partition as usize];
        if f.fetch_offset >= p.log.log_end_offset() && may_park {
            let deadline = now + self.cluster_mut().config.replica_fetch_wait_max_ms;
            self.cluster_mut().replica_parked.entry(key).or_default().push(ParkedReplicaFetch { from, fetch: f, deadline });
            return;
        }
        let max = self.cluster_mut().config.replica_fetch_max_bytes.max(1) as usize;
        let hw = self.cluster_mut().leader_state(&f.topic, f.partition).map_or(0, |l| l.isr.high_watermark());
        let p = &self.topics[&f.topic].partitions[f.partition as usize];
        let log_start = p.log.log_start_offset();
        let records = match fresh {
            // The batch just appended starts where the follower stands and
            // ends at the log end: exactly what a read would return.
            Some((base, batch)) if base == f.fetch_offset && base + batch_offsets(batch) == p.log.log_end_offset() => batch.clone(),
            // A damaged read: the follower asks again, and the leader's own
            // readers see the damage.
            _ if f.fetch_offset < p.log.log_end_offset() => {
                p.log.read(&mut self.storage, f.fetch_offset, max).map(Bytes::from).unwrap_or_default()
            }
            _ => Bytes::new(),
        };
        let outcome = FetchOutcome::Data { high_watermark: hw, log_start, records };
        out.push(Effect::Send { to: from, message: PeerMessage::FetchReply(reply(outcome)) });
    }

    /// Data was appended (and, if acknowledgements wait for it, synced) up
    /// to `end`: the leader's own progress; held fetches can be answered.
    pub(in crate::broker) fn leader_appended(&mut self, now: Millis, topic: &str, partition: i32, end: i64, out: &mut Vec<Effect>) {
        let key = (topic.to_string(), partition);
        let Some(Role::Leader(l)) = self.cluster_mut().roles.get_mut(&key) else { return };
        let before = l.isr.high_watermark();
        l.isr.appended(end);
        if l.isr.high_watermark() > before {
            self.high_watermark_advanced(now, topic, partition, out);
        }
        self.answer_parked_replica_fetches(now, topic, partition, out);
    }

    /// Answers the followers' fetches held for this partition.
    pub(in crate::broker) fn answer_parked_replica_fetches(&mut self, now: Millis, topic: &str, partition: i32, out: &mut Vec<Effect>) {
        let parked = self.cluster_mut().replica_parked.remove(&(topic.to_string(), partition)).unwrap_or_default();
        for p in parked {
            self.serve_replica_fetch(now, p.from, p.fetch, false, None, out);
        }
    }

    /// The leader just appended `batch` at `base` (not synced yet): the
    /// followers' held fetches get it now, from memory. The leader does not
    /// wait for its own sync first — the high watermark does: the leader's
    /// own log end counts only once synced ([`Self::leader_appended`]), so
    /// `acks=all` still means on disk on every in-sync replica, while the
    /// followers' copy and sync overlap the leader's.
    pub(in crate::broker) fn replicate_appended(&mut self, now: Millis, topic: &str, partition: i32, base: i64, batch: &Bytes, out: &mut Vec<Effect>) {
        let Some(parked) = self.cluster_mut().replica_parked.remove(&(topic.to_string(), partition)) else { return };
        for p in parked {
            self.serve_replica_fetch(now, p.from, p.fetch, false, Some((base, batch)), out);
        }
    }

    pub(in crate::broker) fn high_watermark_advanced(&mut self, now: Millis, topic: &str, partition: i32, out: &mut Vec<Effect>) {
        self.check_ack_waits(out);
        self.wake_parked(now, &[(topic.to_string(), partition)], out);
        self.group_writes_replicated(now, topic, partition, out);
    }

    /// Sends an ISR change to the controller.
    fn propose_isr(&mut self, now: Millis, topic: &str, partition: i32, change: IsrChange, out: &mut Vec<Effect>) {
        let c = self.cluster_mut();
        let me = c.me;
        let Some(l) = c.leader_state(topic, partition) else { return };
        let (leader_epoch, partition_epoch) = (l.epoch, l.partition_epoch);
        let Some(broker_epoch) = c.broker_epoch else {
            return self.isr_change_refused(now, topic, partition, leader_epoch, out);
        };
        let isr = match change {
            IsrChange::Shrink(isr) | IsrChange::Expand(isr) => isr,
        };
        let request = ControllerRequest::AlterPartition {
            broker: me,
            broker_epoch,
            topic: topic.to_string(),
            partition,
            leader_epoch,
            partition_epoch,
            isr,
        };
        let purpose = CallPurpose::AlterPartition { topic: topic.to_string(), partition, leader_epoch };
        self.call_controller(now, purpose, request, out);
    }

    pub(in crate::broker) fn isr_change_refused(&mut self, now: Millis, topic: &str, partition: i32, leader_epoch: i32, out: &mut Vec<Effect>) {
        if let Some(Role::Leader(l)) = self.cluster_mut().roles.get_mut(&(topic.to_string(), partition))
            && l.epoch == leader_epoch
        {
            let before = l.isr.high_watermark();
            l.isr.isr_change_refused();
            if l.isr.high_watermark() > before {
                self.high_watermark_advanced(now, topic, partition, out);
            }
        }
    }

    /// The periodic part of leading: followers lagging too long leave the
    /// ISR; held fetches and `acks=all` waits past their deadline are
    /// answered.
    pub(in crate::broker) fn leader_tick(&mut self, now: Millis, out: &mut Vec<Effect>) {
        let mut shrinks = Vec::new();
        for ((topic, partition), role) in self.cluster_mut().roles.iter_mut() {
            if let Role::Leader(l) = role
                && let Some(change) = l.isr.check_lag(now)
            {
                shrinks.push((topic.clone(), *partition, change));
            }
        }
        for (topic, partition, change) in shrinks {
            self.propose_isr(now, &topic, partition, change, out);
        }
        let due: Vec<(String, i32)> = self
            .cluster_mut()
            .replica_parked
            .iter()
            .filter(|(_, v)| v.iter().any(|p| p.deadline <= now))
            .map(|(k, _)| k.clone())
            .collect();
        for (topic, partition) in due {
            self.answer_parked_replica_fetches(now, &topic, partition, out);
        }
        let c = self.cluster_mut();
        let (late, waiting): (Vec<AckWait>, Vec<AckWait>) = std::mem::take(&mut c.ack_waits).into_iter().partition(|w| w.deadline <= now);
        c.ack_waits = waiting;
        for w in late {
            let response = with_errors(w.response, &w.needs, |_, _| Some(ErrorCode::RequestTimedOut));
            out.push(Effect::Reply { id: w.id, response: Response::Produce(response) });
        }
    }

    /// Holds an `acks=all` response until every partition's high watermark
    /// passes what this request wrote.
    pub(in crate::broker) fn wait_for_replicas(&mut self, now: Millis, id: RequestId, response: ProduceResponse, timeout_ms: i32, out: &mut Vec<Effect>) {
        let needs: Vec<(String, i32, i64)> = response
            .topics
            .iter()
            .flat_map(|(t, parts)| parts.iter().filter(|p| p.error.is_ok()).map(move |p| (t.clone(), p.partition, p.base_offset + 1)))
            .collect();
        let deadline = now + i64::from(timeout_ms.max(0));
        self.cluster_mut().ack_waits.push(AckWait { id, response, needs, deadline });
        self.check_ack_waits(out);
    }

    /// Answers the `acks=all` waits whose partitions are all replicated.
    fn check_ack_waits(&mut self, out: &mut Vec<Effect>) {
        let c = self.cluster_mut();
        let mut still = Vec::new();
        for w in std::mem::take(&mut c.ack_waits) {
            let done = w.needs.iter().all(|(t, p, need)| c.leader_state(t, *p).is_some_and(|l| l.isr.high_watermark() >= *need));
            if !done {
                still.push(w);
                continue;
            }
            // Kafka's check at completion: replicated, but with fewer
            // in-sync replicas than promised.
            let response = with_errors(w.response, &w.needs, |t, p| {
                c.leader_state(t, p).filter(|l| !l.isr.enough_replicas()).map(|_| ErrorCode::NotEnoughReplicasAfterAppend)
            });
            out.push(Effect::Reply { id: w.id, response: Response::Produce(response) });
        }
        c.ack_waits = still;
    }

    /// Answers with `error` the `acks=1` responses still waiting for a sync
    /// of a partition matching `which` (leadership lost: as a follower the
    /// node may cut what they wrote before the sync finishes).
    pub(in crate::broker) fn fail_pending_acks(&mut self, which: impl Fn(&str, i32) -> bool, error: ErrorCode, out: &mut Vec<Effect>) {
        let (hit, rest): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.pending_acks).into_iter().partition(|a| a.needs.iter().any(|(t, p, _)| which(t, *p)));
        self.pending_acks = rest;
        for a in hit {
            let response = with_errors(a.response, &a.needs, |t, p| which(t, p).then_some(error));
            out.push(Effect::Reply { id: a.id, response: Response::Produce(response) });
        }
    }

    /// Answers with `error` the waits that involve a partition matching
    /// `which` (leadership lost).
    pub(in crate::broker) fn fail_ack_waits(&mut self, which: impl Fn(&str, i32) -> bool, error: ErrorCode, out: &mut Vec<Effect>) {
        let c = self.cluster_mut();
        let (hit, rest): (Vec<AckWait>, Vec<AckWait>) =
            std::mem::take(&mut c.ack_waits).into_iter().partition(|w| w.needs.iter().any(|(t, p, _)| which(t, *p)));
        c.ack_waits = rest;
        for w in hit {
            let response = with_errors(w.response, &w.needs, |t, p| which(t, p).then_some(error));
            out.push(Effect::Reply { id: w.id, response: Response::Produce(response) });
        }
    }
}

/// Sets the error `error_of` gives for each partition that waited.
fn with_errors(mut response: ProduceResponse, needs: &[(String, i32, i64)], error_of: impl Fn(&str, i32) -> Option<ErrorCode>) -> ProduceResponse {
    for (topic, parts) in &mut response.topics {
        for p in parts.iter_mut() {
            if p.error.is_ok()
                && needs.iter().any(|(t, q, _)| t == topic && *q == p.partition)
                && let Some(e) = error_of(topic, p.partition)
            {
                p.error = e;
                p.error_message = Some(match e {
                    ErrorCode::RequestTimedOut => "the in-sync replicas did not confirm the write in time".into(),
                    ErrorCode::NotLeaderOrFollower => "leadership moved before the write was replicated".into(),
                    _ => "the ISR shrank below min.insync.replicas".into(),
                });
            }
        }
    }
    response
}

/// How many offsets a whole, validated batch covers (0 if it is not one).
fn batch_offsets(batch: &[u8]) -> i64 {
    crate::records::BatchHeader::parse(batch).map_or(0, |h| h.last_offset() - h.base_offset + 1)
}
