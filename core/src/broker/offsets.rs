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
