//! Fetch with long polling: answer at once when `min_bytes` are available
//! (or on error), otherwise park the request until data arrives below the
//! high watermark or `max_wait_ms` passes.

use bytes::Bytes;

use super::{Broker, Effect, FetchPartitionResponse, FetchRequest, FetchResponse, RequestId, Response};
use crate::log::LogError;
use crate::records::{BatchHeader, HEADER_LEN};
use crate::storage::Storage;
use crate::{ErrorCode, Millis};

/// Longest wait a client may ask for; longer requests are clamped.
const MAX_WAIT_MS_LIMIT: i64 = 5 * 60 * 1000;

#[derive(Debug, Clone)]
pub(super) struct ParkedFetch {
    request: FetchRequest,
    deadline: Millis,
}

/// Keeps the whole batches of `bytes` that end below `hw`.
fn cut_at_high_watermark(bytes: Vec<u8>, hw: i64) -> Vec<u8> {
    let mut pos = 0;
    while let Some(header) = bytes.get(pos..pos + HEADER_LEN) {
        let Ok(h) = BatchHeader::parse(header) else { break };
        if h.last_offset() >= hw || pos + h.total_len() > bytes.len() {
            break;
        }
        pos += h.total_len();
    }
    let mut bytes = bytes;
    bytes.truncate(pos);
    bytes
}

impl<S: Storage> Broker<S> {
    pub(super) fn fetch(&mut self, now: Millis, id: RequestId, req: FetchRequest, out: &mut Vec<Effect>) {
        let (response, bytes, any_error) = self.read_fetch(&req);
        let wait = i64::from(req.max_wait_ms.max(0)).min(MAX_WAIT_MS_LIMIT);
        if any_error || bytes >= req.min_bytes.max(0) as usize || wait == 0 {
            out.push(Effect::Reply { id, response: Response::Fetch(response) });
            return;
        }
        let deadline = now.saturating_add(wait);
        self.parked.insert(id, ParkedFetch { request: req, deadline });
        out.push(Effect::Timer { at: deadline });
    }

    /// Reads every requested partition. Returns the response, the bytes it
    /// holds, and whether any partition failed.
    fn read_fetch(&mut self, req: &FetchRequest) -> (FetchResponse, usize, bool) {
        let mut budget = req.max_bytes.max(0) as usize;
        let mut total = 0usize;
        let mut any_error = false;
        let mut partitions = Vec::with_capacity(req.partitions.len());
        for fp in &req.partitions {
            let mut resp = FetchPartitionResponse {
                topic: fp.topic.clone(),
                partition: fp.partition,
                error: ErrorCode::None,
                high_watermark: -1,
                last_stable_offset: -1,
                log_start_offset: -1,
                records: Bytes::new(),
            };
            let exists = self.partition(&fp.topic, fp.partition).is_some();
            let hw = self.high_watermark(&fp.topic, fp.partition);
            if exists && hw.is_none() {
                // Cluster mode: consumers read from the leader only.
                resp.error = ErrorCode::NotLeaderOrFollower;
                any_error = true;
                partitions.push(resp);
                continue;
            }
            let Some(p) = self
                .topics
                .get(&fp.topic)
                .and_then(|t| t.partitions.get(usize::try_from(fp.partition).ok()?))
            else {
                resp.error = ErrorCode::UnknownTopicOrPartition;
                any_error = true;
                partitions.push(resp);
                continue;
            };
            let hw = hw.expect("partition exists");
            resp.high_watermark = hw;
            resp.last_stable_offset = hw;
            resp.log_start_offset = p.log.log_start_offset();
            if fp.partition_max_bytes < 0 {
                resp.error = ErrorCode::InvalidFetchSize;
                any_error = true;
                partitions.push(resp);
                continue;
            }
            // KIP-74: the first partition with data may exceed the limits by
            // one batch, so a consumer is never stuck behind a large batch.
            let limit = if total == 0 { fp.partition_max_bytes as usize } else { (fp.partition_max_bytes as usize).min(budget) };
            if fp.fetch_offset < hw && (limit > 0 || total == 0) {
                match p.log.read(&mut self.storage, fp.fetch_offset, limit.max(1)) {
                    Ok(bytes) => {
                        let bytes = cut_at_high_watermark(bytes, hw);
                        total += bytes.len();
                        budget = budget.saturating_sub(bytes.len());
                        resp.records = Bytes::from(bytes);
                    }
                    Err(LogError::OffsetOutOfRange { .. }) => {
                        resp.error = ErrorCode::OffsetOutOfRange;
                        any_error = true;
                    }
                    Err(_) => {
                        resp.error = ErrorCode::KafkaStorageError;
                        any_error = true;
                    }
                }
            } else if fp.fetch_offset < p.log.log_start_offset() || fp.fetch_offset > p.log.log_end_offset() {
                resp.error = ErrorCode::OffsetOutOfRange;
                any_error = true;
            }
            partitions.push(resp);
        }
        (FetchResponse { partitions }, total, any_error)
    }

    /// Re-checks parked fetches that read one of `partitions`.
    pub(super) fn wake_parked(&mut self, _now: Millis, partitions: &[(String, i32)], out: &mut Vec<Effect>) {
        let candidates: Vec<RequestId> = self
            .parked
            .iter()
            .filter(|(_, f)| {
                f.request.partitions.iter().any(|fp| partitions.iter().any(|(t, p)| *t == fp.topic && *p == fp.partition))
            })
            .map(|(id, _)| *id)
            .collect();
        for id in candidates {
            let Some(parked) = self.parked.get(&id) else { continue };
            let req = parked.request.clone();
            let (response, bytes, any_error) = self.read_fetch(&req);
            if any_error || bytes >= req.min_bytes.max(0) as usize {
                self.parked.remove(&id);
                out.push(Effect::Reply { id, response: Response::Fetch(response) });
            }
        }
    }

    /// Answers parked fetches whose wait is over with whatever they have.
    pub(super) fn expire_parked(&mut self, now: Millis, out: &mut Vec<Effect>) {
        let due: Vec<RequestId> = self.parked.iter().filter(|(_, f)| f.deadline <= now).map(|(id, _)| *id).collect();
        for id in due {
            let parked = self.parked.remove(&id).expect("listed above");
            let (response, _, _) = self.read_fetch(&parked.request);
            out.push(Effect::Reply { id, response: Response::Fetch(response) });
        }
    }
}
