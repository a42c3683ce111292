//! InitProducerId: hands out producer ids that are never reused, even across
//! restarts, by reserving them durably in blocks (as Kafka's
//! ProducerIdManager does) before giving any out.

use super::{Broker, InitProducerIdRequest, InitProducerIdResponse};
use crate::ErrorCode;
use crate::storage::{Storage, StorageError};

const BLOCK_FILE: &str = "meta/producer-id-block";
const BLOCK_SIZE: i64 = 1000;

#[derive(Debug, Clone)]
pub(super) struct ProducerIdAllocator {
    next: i64,
    /// First id not covered by the durable reservation.
    reserved_end: i64,
}

impl ProducerIdAllocator {
    /// `floor` is one past the largest producer id found in any log.
    pub(super) fn open<S: Storage + ?Sized>(storage: &mut S, floor: i64, config: &super::BrokerConfig) -> Result<Self, super::OpenError> {
        let stored = match crate::storage::read_checked(storage, BLOCK_FILE)? {
            None => 0,
            Some(b) => i64::from_be_bytes(<[u8; 8]>::try_from(b.as_slice()).map_err(|_| super::OpenError::DamagedMetadata {
                file: BLOCK_FILE.into(),
                reason: format!("{} bytes where 8 were expected", b.len()),
            })?),
        };
        let start = stored.max(floor).max(space(config).0);
        Ok(Self { next: start, reserved_end: start })
    }

    fn allocate<S: Storage + ?Sized>(&mut self, storage: &mut S) -> Result<i64, StorageError> {
        if self.next >= self.reserved_end {
            let end = self.next + BLOCK_SIZE;
            crate::storage::write_checked(storage, BLOCK_FILE, &end.to_be_bytes())?;
            self.reserved_end = end;
        }
        let id = self.next;
        self.next += 1;
        Ok(id)
    }
}

/// The ids this node hands out: all of them on a single node; in a
/// cluster, a range of 2^40 per node id, so two nodes never give the same
/// id to two producers (a shared id would mix their sequence numbers).
fn space(config: &super::BrokerConfig) -> (i64, i64) {
    match &config.cluster {
        None => (0, i64::MAX),
        Some(_) => {
            let base = (i64::from(config.node_id.max(0)) + 1) << 40;
            (base, base + (1 << 40))
        }
    }
}

/// Whether `id` comes from this node's range (recovery's floor counts only those).
pub(super) fn own_id(config: &super::BrokerConfig, id: i64) -> bool {
    let (lo, hi) = space(config);
    (lo..hi).contains(&id)
}

impl<S: Storage> Broker<S> {
    pub(super) fn init_producer_id(&mut self, req: InitProducerIdRequest) -> InitProducerIdResponse {
        let fail = |error| InitProducerIdResponse { error, producer_id: -1, producer_epoch: -1 };
        if req.transactional_id.is_some() {
            return fail(ErrorCode::InvalidRequest);
        }
        // KIP-360: a producer that knows its id asks for a bumped epoch.
        if req.producer_id >= 0 && req.producer_epoch >= 0 && req.producer_epoch < i16::MAX - 1 {
            if own_id(&self.config, req.producer_id) && req.producer_id >= self.producer_ids.next {
                return fail(ErrorCode::UnknownProducerId);
            }
            return InitProducerIdResponse {
                error: ErrorCode::None,
                producer_id: req.producer_id,
                producer_epoch: req.producer_epoch + 1,
            };
        }
        // A failed reservation changed nothing on disk (the replace is
        // atomic), so it is an error for this request only.
        match self.producer_ids.allocate(&mut self.storage) {
            Ok(id) => InitProducerIdResponse { error: ErrorCode::None, producer_id: id, producer_epoch: 0 },
            Err(_) => fail(ErrorCode::KafkaStorageError),
        }
    }
}
