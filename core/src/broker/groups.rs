//! The broker's side of the group coordinator: it routes group requests to
//! the [`GroupCoordinator`], stores what the coordinator asks to persist in
//! the internal offsets topic, and reports back once that is durable.

use super::{Broker, Effect, NewTopic, OpenError, Response};
use crate::group::{GroupCoordinator, GroupEffect, GroupInput, GroupRequest};
use crate::records::{BatchBuilder, Compression, Record};
use crate::storage::Storage;
use crate::{ErrorCode, Millis};

/// Kafka's name for the internal topic that holds committed offsets and
/// group metadata. Clients may read it but never write or delete it.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

pub fn is_internal_topic(name: &str) -> bool {
    name == OFFSETS_TOPIC
}

/// The partition whose leader coordinates every group (one partition).
pub fn is_offsets_partition(topic: &str, partition: i32) -> bool {
    topic == OFFSETS_TOPIC && partition == 0
}

impl<S: Storage> Broker<S> {
    pub(super) fn group_step(&mut self, now: Millis, input: GroupInput, out: &mut Vec<Effect>) {
        let mut effects = Vec::new();
        self.coordinator.step(now, input, &mut effects);
        let mut queue: std::collections::VecDeque<GroupEffect> = effects.into();
        while let Some(effect) = queue.pop_front() {
            match effect {
                GroupEffect::Reply { id, response } => out.push(Effect::Reply { id, response: Response::Group(response) }),
                GroupEffect::Timer { at } => out.push(Effect::Timer { at }),
                GroupEffect::Append { write, records } => match self.append_group_records(now, records) {
                    Ok(end) => {
                        self.group_writes.push((write, end));
                        self.request_sync(out);
                    }
                    Err(code) => {
                        let mut more = Vec::new();
                        self.coordinator.step(now, GroupInput::WriteDone { write, result: Err(code) }, &mut more);
                        queue.extend(more);
                    }
                },
            }
        }
    }

    pub(super) fn group_request(&mut self, now: Millis, id: super::RequestId, request: GroupRequest, out: &mut Vec<Effect>) {
        // In a cluster the leader of the offsets partition coordinates;
        // clients that asked elsewhere look it up again.
        if let Some(c) = &self.cluster
            && c.leader_state(OFFSETS_TOPIC, 0).is_none()
        {
            let response = request.refused(ErrorCode::NotCoordinator);
            return out.push(Effect::Reply { id, response: Response::Group(response) });
        }
        let input = match request {
            // Offsets only for partitions that exist, as Kafka checks (or a
            // commit racing a topic's deletion would bring its offsets back).
            GroupRequest::OffsetCommit(request) => {
                let exists = |topic: &str, partition: i32| {
                    self.topics.get(topic).is_some_and(|t| usize::try_from(partition).is_ok_and(|i| i < t.partitions.len()))
                };
                let unknown = request
                    .partitions
                    .iter()
                    .filter(|p| !exists(&p.topic, p.partition))
                    .map(|p| (p.topic.clone(), p.partition))
                    .collect();
                GroupInput::CheckedCommit { id, request, unknown }
            }
            request => GroupInput::Request { id, request },
        };
        self.group_step(now, input, out);
    }

    /// A sync finished. On a single node that completes the coordinator's
    /// writes it made durable; in a cluster they wait for the offsets
    /// partition's high watermark (`group_writes_replicated`).
    pub(super) fn group_writes_synced(&mut self, now: Millis, out: &mut Vec<Effect>) {
        if self.cluster.is_some() {
            return;
        }
        let durable = self.topics.get(OFFSETS_TOPIC).and_then(|t| t.partitions.first()).map_or(i64::MAX, |p| p.durable_end);
        let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.group_writes).into_iter().partition(|(_, end)| *end <= durable);
        self.group_writes = waiting;
        for (write, _) in done {
            self.group_step(now, GroupInput::WriteDone { write, result: Ok(()) }, out);
        }
    }

    /// Cluster mode: the high watermark of `topic-partition` advanced; the
    /// coordinator's writes below it are on every in-sync replica.
    pub(super) fn group_writes_replicated(&mut self, now: Millis, topic: &str, partition: i32, out: &mut Vec<Effect>) {
        if !is_offsets_partition(topic, partition) {
            return;
        }
        let Some(hw) = self.high_watermark(topic, partition) else { return };
        let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.group_writes).into_iter().partition(|(_, end)| *end <= hw);
        self.group_writes = waiting;
        for (write, _) in done {
            self.group_step(now, GroupInput::WriteDone { write, result: Ok(()) }, out);
        }
    }

    /// Cluster mode: this node starts (or stops) leading the offsets
    /// partition, so coordinating the groups. Either way the coordinator
    /// starts over: a new one replays the log it now leads; writes the old
    /// one waited for fail, and their clients retry with the new one.
    pub(super) fn coordinator_moved(&mut self, now: Millis, leading: bool, out: &mut Vec<Effect>) {
        for (write, _) in std::mem::take(&mut self.group_writes) {
            self.group_step(now, GroupInput::WriteDone { write, result: Err(ErrorCode::NotCoordinator) }, out);
        }
        let seed = self.rng.next_u64();
        self.coordinator = GroupCoordinator::new(self.config.group.clone(), seed);
        if leading && let Err(e) = self.replay_groups() {
            // A damaged offsets log on the new leader: the groups start
            // empty rather than the node stopping; consumers fall back to
            // their reset policy for what is lost.
            let _ = e;
        }
        self.group_step(now, GroupInput::Tick, out);
    }

    /// Appends the coordinator's records; returns the log end after them.
    fn append_group_records(&mut self, now: Millis, records: Vec<crate::group::StoredRecord>) -> Result<i64, ErrorCode> {
        let leader_epoch = match &self.cluster {
            None => 0,
            Some(c) => c.leader_state(OFFSETS_TOPIC, 0).map(|l| l.epoch).ok_or(ErrorCode::NotCoordinator)?,
        };
        if !self.topics.contains_key(OFFSETS_TOPIC) {
            if self.cluster.is_some() {
                return Err(ErrorCode::CoordinatorNotAvailable);
            }
            let created = self.create_topic(&offsets_topic(&self.config), false);
            if !created.error.is_ok() {
                return Err(ErrorCode::CoordinatorNotAvailable);
            }
        }
        let mut builder = BatchBuilder::new(Compression::None);
        for (key, value) in records {
            builder.push(Record { offset: 0, timestamp: now, key: Some(key), value, headers: Vec::new() });
        }
        let mut batch = builder.build();
        crate::records::set_partition_leader_epoch(&mut batch, leader_epoch);
        let p = &mut self.topics.get_mut(OFFSETS_TOPIC).expect("created above").partitions[0];
        match p.log.append(&mut self.storage, &mut batch) {
            Ok(h) => {
                p.unflushed_records += h.record_count as u64;
                let _ = p.epochs.assign(leader_epoch, h.base_offset);
                Ok(h.last_offset() + 1)
            }
            // Retriable for the client: it retries the commit or the join.
            Err(_) => Err(ErrorCode::CoordinatorNotAvailable),
        }
    }

    /// Rebuilds the coordinator from the offsets topic (on open).
    pub(super) fn replay_groups(&mut self) -> Result<usize, OpenError> {
        let Some(topic) = self.topics.get(OFFSETS_TOPIC) else { return Ok(0) };
        let log = &topic.partitions[0].log;
        let damaged = |reason: String| OpenError::DamagedMetadata { file: log.dir().to_string(), reason };
        let mut offset = log.log_start_offset();
        let end = log.log_end_offset();
        let mut skipped = 0;
        while offset < end {
            let bytes = log.read(&mut self.storage, offset, 1 << 20).map_err(|e| damaged(e.to_string()))?;
            if bytes.is_empty() {
                break;
            }
            for batch in crate::records::split_batches(&bytes) {
                let (h, batch) = batch.map_err(|e| damaged(e.to_string()))?;
                let (_, records) = crate::records::decode_records(batch).map_err(|e| damaged(e.to_string()))?;
                for r in records.into_iter().filter(|r| r.offset >= offset) {
                    let Some(key) = r.key else { continue };
                    if self.coordinator.replay(&key, r.value.as_deref()).is_err() {
                        skipped += 1;
                    }
                }
                offset = h.last_offset() + 1;
            }
        }
        Ok(skipped)
    }
}

/// How the offsets topic is created: one partition (one coordinator), and
/// compacted so only the latest commit of each partition is kept.
pub(super) fn offsets_topic(config: &super::BrokerConfig) -> NewTopic {
    NewTopic {
        name: OFFSETS_TOPIC.to_string(),
        num_partitions: 1,
        replication_factor: -1,
        has_assignments: false,
        configs: vec![
            ("cleanup.policy".to_string(), Some("compact".to_string())),
            ("segment.bytes".to_string(), Some(config.group.offsets_topic_segment_bytes.to_string())),
        ],
    }
}

/// Makes an offsets topic created before it was compacted (or altered by
/// hand) compacted again; true if `meta` changed and must be saved.
pub(super) fn upgrade_offsets_topic(meta: &mut super::topic::TopicMeta) -> bool {
    if !is_internal_topic(&meta.name) || meta.config.overrides.get("cleanup.policy").is_some_and(|p| p == "compact") {
        return false;
    }
    meta.config.overrides.insert("cleanup.policy".to_string(), "compact".to_string());
    true
}
