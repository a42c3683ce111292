//! Produce: validate each partition's batch, deduplicate idempotent retries,
//! append, and acknowledge once the flush policy allows.

use bytes::Bytes;

use super::producer_state::SequenceCheck;
use super::{Broker, Effect, FlushPolicy, ProducePartitionResponse, ProduceRequest, ProduceResponse, RequestId, Response};
use crate::records::{self, RecordError};
use crate::storage::Storage;
use crate::{ErrorCode, Millis};

/// The outcome of appending one partition's data.
struct Appended {
    error: ErrorCode,
    base_offset: i64,
    message: Option<String>,
    /// The acknowledgement must wait for a sync to be true.
    needs_sync: bool,
    /// The batch as stored (offsets and leader epoch set), if one was.
    stored: Option<Bytes>,
}

impl Appended {
    fn error(error: ErrorCode, message: impl Into<String>) -> Self {
        Self { error, base_offset: -1, message: Some(message.into()), needs_sync: false, stored: None }
    }
}

fn record_error_code(e: &RecordError) -> ErrorCode {
    match e {
        RecordError::CrcMismatch { .. } | RecordError::Truncated | RecordError::BadLength(_) => ErrorCode::CorruptMessage,
        RecordError::UnsupportedMagic(_) => ErrorCode::UnsupportedForMessageFormat,
        RecordError::UnknownCodec(_) => ErrorCode::UnsupportedCompressionType,
        _ => ErrorCode::InvalidRecord,
    }
}

impl<S: Storage> Broker<S> {
    pub(super) fn produce(&mut self, now: Millis, id: RequestId, req: ProduceRequest, out: &mut Vec<Effect>) {
        if !matches!(req.acks, -1..=1) {
            let topics = req
                .topics
                .iter()
                .map(|(t, parts)| {
                    let parts = parts
                        .iter()
                        .map(|(p, _)| ProducePartitionResponse {
                            partition: *p,
                            error: ErrorCode::InvalidRequiredAcks,
                            base_offset: -1,
                            log_start_offset: -1,
                            error_message: Some(format!("acks must be -1, 0 or 1, not {}", req.acks)),
                        })
                        .collect();
                    (t.clone(), parts)
                })
                .collect();
            out.push(Effect::Reply { id, response: Response::Produce(ProduceResponse { topics }) });
            return;
        }
        let mut wait_for_sync = false;
        // Partitions this request wrote to: what the flush policy and the
        // parked fetches need to look at (never a scan of every partition).
        let mut touched: Vec<(String, i32)> = Vec::new();
        // Batches appended, for the followers waiting on them (cluster).
        let mut stored = Vec::new();
        let mut topics = Vec::with_capacity(req.topics.len());
        for (topic, parts) in &req.topics {
            let mut results = Vec::with_capacity(parts.len());
            for (partition, data) in parts {
                let a = match req.transactional_id {
                    Some(_) => Appended::error(ErrorCode::InvalidRequest, "transactions are not supported"),
                    None => self.append_partition(topic, *partition, data.as_deref(), req.acks),
                };
                wait_for_sync |= a.needs_sync;
                if a.error.is_ok() {
                    touched.push((topic.clone(), *partition));
                }
                if let Some(batch) = a.stored {
                    stored.push((topic.clone(), *partition, a.base_offset, batch));
                }
                let log_start_offset =
                    self.partition(topic, *partition).map_or(-1, |p| p.log.log_start_offset());
                results.push(ProducePartitionResponse {
                    partition: *partition,
                    error: a.error,
                    base_offset: a.base_offset,
                    log_start_offset,
                    error_message: a.message,
                });
            }
            topics.push((topic.clone(), results));
        }
        let response = ProduceResponse { topics };
        if self.cluster.is_some() {
            for (topic, partition, base, batch) in stored {
                self.replicate_appended(now, &topic, partition, base, &batch, out);
            }
        }
        self.after_append(now, &touched, out);
        if self.cluster.is_some() && req.acks == -1 {
            // The leader's own copy counts once synced (under every-batch);
            // the answer waits for the ISR's.
            return self.wait_for_replicas(now, id, response, req.timeout_ms, out);
        }
        if wait_for_sync && req.acks != 0 {
            self.wait_for_sync(id, response);
        } else {
            out.push(Effect::Reply { id, response: Response::Produce(response) });
        }
    }

    /// Triggers what the flush policy asks for after appends, and wakes
    /// fetches when acknowledgements do not wait for a sync.
    pub(super) fn after_append(&mut self, now: Millis, touched: &[(String, i32)], out: &mut Vec<Effect>) {
        if touched.is_empty() {
            return;
        }
        match self.config.flush {
            FlushPolicy::EveryBatch => self.request_sync(out),
            FlushPolicy::Messages(n) => {
                let due = touched.iter().any(|(t, p)| self.partition(t, *p).is_some_and(|p| p.unflushed_records >= n));
                if due {
                    self.request_sync(out);
                }
            }
            FlushPolicy::IntervalMs(ms) => {
                if self.next_flush_at.is_none() {
                    let at = now.saturating_add(ms as i64);
                    self.next_flush_at = Some(at);
                    out.push(Effect::Timer { at });
                }
            }
        }
        if !self.config.flush.acks_wait_for_sync() {
            if self.cluster.is_some() {
                for (t, p) in touched {
                    let end = self.partition(t, *p).map_or(0, |p| p.log.log_end_offset());
                    self.leader_appended(now, t, *p, end, out);
                }
            } else {
                self.wake_parked(now, touched, out);
            }
        }
    }

    fn append_partition(&mut self, topic: &str, partition: i32, data: Option<&[u8]>, acks: i16) -> Appended {
        if super::groups::is_internal_topic(topic) {
            return Appended::error(ErrorCode::InvalidTopicException, format!("cannot produce to internal topic {topic}"));
        }
        // In a cluster only the leader takes writes, stamped with its epoch.
        let mut leader_epoch = 0;
        if let Some(c) = &self.cluster {
            let Some(l) = c.leader_state(topic, partition) else {
                return match self.partition(topic, partition) {
                    Some(_) => Appended::error(ErrorCode::NotLeaderOrFollower, format!("this node does not lead {topic}-{partition}")),
                    None => Appended::error(ErrorCode::UnknownTopicOrPartition, format!("unknown partition {topic}-{partition}")),
                };
            };
            if acks == -1 && !l.isr.enough_replicas() {
                let isr = l.isr.isr();
                return Appended::error(
                    ErrorCode::NotEnoughReplicas,
                    format!("{topic}-{partition}: ISR {isr:?} is smaller than min.insync.replicas"),
                );
            }
            leader_epoch = l.epoch;
        }
        let max_bytes = match self.topics.get(topic) {
            Some(t) => t.meta.config.max_message_bytes(&self.config),
            None => return Appended::error(ErrorCode::UnknownTopicOrPartition, format!("unknown topic {topic}")),
        };
        let acks_wait = self.config.flush.acks_wait_for_sync();
        let validate_records = self.config.validate_records;
        let Some(p) = self.topics.get_mut(topic).and_then(|t| t.partitions.get_mut(usize::try_from(partition).ok()?))
        else {
            return Appended::error(ErrorCode::UnknownTopicOrPartition, format!("{topic} has no partition {partition}"));
        };
        let data = match data {
            Some(d) if !d.is_empty() => d,
            _ => return Appended::error(ErrorCode::InvalidRecord, "produce request without a record batch"),
        };
        if data.len() > max_bytes as usize {
            return Appended::error(
                ErrorCode::MessageTooLarge,
                format!("batch of {} bytes exceeds max.message.bytes {max_bytes}", data.len()),
            );
        }
        let h = match records::validate_batch(data) {
            Ok(h) => h,
            Err(e) => return Appended::error(record_error_code(&e), e.to_string()),
        };
        if h.total_len() != data.len() {
            return Appended::error(ErrorCode::InvalidRecord, "a produce request must carry exactly one record batch");
        }
        if h.is_transactional() || h.is_control() {
            return Appended::error(ErrorCode::InvalidRecord, "transactional and control batches are not supported");
        }
        if h.record_count == 0 {
            return Appended::error(ErrorCode::InvalidRecord, "empty record batch");
        }
        // Only compaction may leave offsets without records.
        if !h.is_dense() {
            let message = format!("record count {} does not match lastOffsetDelta {}", h.record_count, h.last_offset_delta);
            return Appended::error(ErrorCode::InvalidRecord, message);
        }
        // A compacted topic keeps records by key: one without cannot be stored.
        let compacted = p.log.config().cleanup_policy.compacts();
        if (validate_records || compacted)
            && let Err(e) = records::check_records_keyed(data, &h, compacted)
        {
            return Appended::error(record_error_code(&e), format!("{topic}-{partition}: {e}"));
        }
        match p.producers.check(&h) {
            SequenceCheck::Reject(code) => {
                return Appended::error(
                    code,
                    format!("producer {} epoch {} sequence {}", h.producer_id, h.producer_epoch, h.base_sequence),
                );
            }
            SequenceCheck::Duplicate { base_offset } => {
                return Appended {
                    error: ErrorCode::None,
                    base_offset,
                    message: None,
                    needs_sync: acks_wait && base_offset >= p.durable_end,
                    stored: None,
                };
            }
            SequenceCheck::Append => {}
        }
        let mut batch = data.to_vec();
        records::set_partition_leader_epoch(&mut batch, leader_epoch);
        match p.log.append(&mut self.storage, &mut batch) {
            Ok(stored) => {
                p.producers.record(&stored);
                // The first batch of a new epoch starts it in the cache.
                let _ = p.epochs.assign(leader_epoch, stored.base_offset);
                p.unflushed_records += stored.record_count as u64;
                Appended {
                    error: ErrorCode::None,
                    base_offset: stored.base_offset,
                    message: None,
                    needs_sync: acks_wait,
                    stored: Some(Bytes::from(batch)),
                }
            }
            Err(e) => Appended::error(ErrorCode::KafkaStorageError, e.to_string()),
        }
    }
}
