//! ListOffsets: earliest, latest, largest timestamp, or by timestamp.

use super::{
    Broker, EARLIEST_TIMESTAMP, LATEST_TIMESTAMP, ListOffsetsPartitionResponse, ListOffsetsRequest,
    ListOffsetsResponse, MAX_TIMESTAMP,
};
use crate::ErrorCode;
use crate::storage::Storage;

impl<S: Storage> Broker<S> {
    pub(super) fn list_offsets(&mut self, req: ListOffsetsRequest) -> ListOffsetsResponse {
        let partitions = req
            .partitions
            .iter()
            .map(|(topic, partition, timestamp)| {
                let mut resp = ListOffsetsPartitionResponse {
                    topic: topic.clone(),
                    partition: *partition,
                    error: ErrorCode::None,
                    timestamp: -1,
                    offset: -1,
                    leader_epoch: 0,
                };
                let Some(hw) = self.high_watermark(topic, *partition) else {
                    resp.error = ErrorCode::UnknownTopicOrPartition;
                    resp.leader_epoch = -1;
                    return resp;
                };
                let p = &self.topics[topic].partitions[*partition as usize];
                match *timestamp {
                    EARLIEST_TIMESTAMP => resp.offset = p.log.log_start_offset(),
                    LATEST_TIMESTAMP => resp.offset = hw,
                    t if t == MAX_TIMESTAMP || t >= 0 => {
                        let log = &p.log;
                        let target = if t == MAX_TIMESTAMP {
                            log.segments().map(|s| s.max_timestamp).max().unwrap_or(-1)
                        } else {
                            t
                        };
                        match log.offset_for_timestamp(&mut self.storage, target) {
                            Ok(Some((offset, ts))) if offset < hw => {
                                resp.offset = offset;
                                resp.timestamp = ts;
                            }
                            Ok(_) => {}
                            Err(_) => resp.error = ErrorCode::KafkaStorageError,
                        }
                    }
                    _ => resp.error = ErrorCode::InvalidRequest,
                }
                resp
            })
            .collect();
        ListOffsetsResponse { partitions }
    }
}

impl<S: Storage> Broker<S> {
    /// OffsetForLeaderEpoch: a single node has one leader epoch (0) for
    /// every partition, so the end of epoch 0 is the log's visible end.
    /// Consumers ask this to check their position after a leader change.
    pub(super) fn offset_for_leader_epoch(&self, req: super::OffsetForLeaderEpochRequest) -> super::OffsetForLeaderEpochResponse {
        let partitions = req
            .partitions
            .into_iter()
            .map(|(topic, partition, current_epoch, epoch)| {
                let (error, leader_epoch, end_offset) = match self.high_watermark(&topic, partition) {
                    None => (ErrorCode::UnknownTopicOrPartition, -1, -1),
                    Some(_) if current_epoch > 0 => (ErrorCode::UnknownLeaderEpoch, -1, -1),
                    Some(_) if epoch < 0 => (ErrorCode::None, -1, -1),
                    Some(hw) => (ErrorCode::None, 0, hw),
                };
                super::EpochEndOffset { topic, partition, error, leader_epoch, end_offset }
            })
            .collect();
        super::OffsetForLeaderEpochResponse { partitions }
    }
}
