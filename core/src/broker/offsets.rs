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
                    resp.error = if self.partition(topic, *partition).is_some() {
                        ErrorCode::NotLeaderOrFollower
                    } else {
                        ErrorCode::UnknownTopicOrPartition
                    };
                    resp.leader_epoch = -1;
                    return resp;
                };
                resp.leader_epoch = self.leader_epoch(topic, *partition);
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
    /// The leader epoch this node leads `topic-partition` at (0 on a single node).
    fn leader_epoch(&self, topic: &str, partition: i32) -> i32 {
        self.cluster.as_ref().and_then(|c| c.leader_state(topic, partition)).map_or(0, |l| l.epoch)
    }

    /// OffsetForLeaderEpoch: where the asked epoch ends in this leader's
    /// log (the largest epoch it knows at or below it, and the start of the
    /// next one; the visible end for the current one). Consumers ask this
    /// after a leader change to see whether their position was truncated.
    pub(super) fn offset_for_leader_epoch(&self, req: super::OffsetForLeaderEpochRequest) -> super::OffsetForLeaderEpochResponse {
        let partitions = req
            .partitions
            .into_iter()
            .map(|(topic, partition, current_epoch, epoch)| {
                let exists = self.partition(&topic, partition).is_some();
                let ours = self.leader_epoch(&topic, partition);
                let (error, leader_epoch, end_offset) = match self.high_watermark(&topic, partition) {
                    None if exists => (ErrorCode::NotLeaderOrFollower, -1, -1),
                    None => (ErrorCode::UnknownTopicOrPartition, -1, -1),
                    Some(_) if current_epoch > ours => (ErrorCode::UnknownLeaderEpoch, -1, -1),
                    Some(_) if epoch < 0 => (ErrorCode::None, -1, -1),
                    Some(hw) if self.cluster.is_none() => (ErrorCode::None, 0, hw),
                    Some(hw) => {
                        let p = self.partition(&topic, partition).expect("exists");
                        match p.epochs.end_offset_for(epoch, hw) {
                            Some((e, end)) => (ErrorCode::None, e, end.min(hw)),
                            None => (ErrorCode::None, -1, -1),
                        }
                    }
                };
                super::EpochEndOffset { topic, partition, error, leader_epoch, end_offset }
            })
            .collect();
        super::OffsetForLeaderEpochResponse { partitions }
    }
}
