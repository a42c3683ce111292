//! The API versions Millrace advertises, and which of them it can serve.
//!
//! librdkafka enables features only when an advertised range contains one
//! exact version (see the book's wire-protocol chapter): Produce must include
//! 0 for librdkafka 2.0.2 to compress at all, though it then sends v3+.
//! Versions advertised for that reason but older than `kafka-protocol` can
//! decode are answered by closing the connection, as Kafka 4 does for the
//! message formats it dropped.

use kafka_protocol::messages::{
    AlterConfigsRequest, ApiKey, ApiVersionsRequest, CreateTopicsRequest, DeleteGroupsRequest, DeleteTopicsRequest,
    DescribeConfigsRequest, DescribeGroupsRequest, FetchRequest, FindCoordinatorRequest, HeartbeatRequest,
    IncrementalAlterConfigsRequest, InitProducerIdRequest, JoinGroupRequest, LeaveGroupRequest, ListGroupsRequest,
    ListOffsetsRequest, MetadataRequest, OffsetCommitRequest, OffsetFetchRequest, OffsetForLeaderEpochRequest, ProduceRequest,
    SyncGroupRequest,
};
use kafka_protocol::protocol::Message;

/// (API, advertised min, advertised max, lowest version we decode).
pub const SUPPORTED: [(ApiKey, i16, i16, i16); 22] = [
    (ApiKey::Produce, 0, 11, ProduceRequest::VERSIONS.min),
    (ApiKey::Fetch, 4, 12, FetchRequest::VERSIONS.min),
    (ApiKey::ListOffsets, 1, 7, ListOffsetsRequest::VERSIONS.min),
    (ApiKey::Metadata, 0, 12, MetadataRequest::VERSIONS.min),
    (ApiKey::ApiVersions, 0, 4, ApiVersionsRequest::VERSIONS.min),
    (ApiKey::CreateTopics, 2, 7, CreateTopicsRequest::VERSIONS.min),
    (ApiKey::DeleteTopics, 1, 6, DeleteTopicsRequest::VERSIONS.min),
    (ApiKey::InitProducerId, 0, 4, InitProducerIdRequest::VERSIONS.min),
    (ApiKey::DescribeConfigs, 1, 4, DescribeConfigsRequest::VERSIONS.min),
    // librdkafka enables LZ4 only if FindCoordinator v0 is advertised, and
    // consumer groups only if the group APIs' ranges hold v0 (OffsetCommit
    // 1 or 2, OffsetFetch 1).
    (ApiKey::FindCoordinator, 0, 4, FindCoordinatorRequest::VERSIONS.min),
    (ApiKey::JoinGroup, 0, 9, JoinGroupRequest::VERSIONS.min),
    (ApiKey::SyncGroup, 0, 5, SyncGroupRequest::VERSIONS.min),
    (ApiKey::Heartbeat, 0, 4, HeartbeatRequest::VERSIONS.min),
    (ApiKey::LeaveGroup, 0, 5, LeaveGroupRequest::VERSIONS.min),
    (ApiKey::OffsetCommit, 2, 9, OffsetCommitRequest::VERSIONS.min),
    (ApiKey::OffsetFetch, 1, 9, OffsetFetchRequest::VERSIONS.min),
    (ApiKey::ListGroups, 0, 5, ListGroupsRequest::VERSIONS.min),
    (ApiKey::DescribeGroups, 0, 5, DescribeGroupsRequest::VERSIONS.min),
    (ApiKey::DeleteGroups, 0, 2, DeleteGroupsRequest::VERSIONS.min),
    (ApiKey::OffsetForLeaderEpoch, 2, 4, OffsetForLeaderEpochRequest::VERSIONS.min),
    (ApiKey::AlterConfigs, 0, 2, AlterConfigsRequest::VERSIONS.min),
    (ApiKey::IncrementalAlterConfigs, 0, 1, IncrementalAlterConfigsRequest::VERSIONS.min),
];

/// Whether Millrace can decode and answer `key` at `version`.
pub fn serves(key: ApiKey, version: i16) -> bool {
    SUPPORTED.iter().any(|&(k, _, max, decodable_min)| k == key && version >= decodable_min && version <= max)
}

pub fn advertised(key: ApiKey) -> Option<(i16, i16)> {
    SUPPORTED.iter().find(|(k, ..)| *k == key).map(|&(_, min, max, _)| (min, max))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertised_ranges_are_within_what_the_crate_decodes_at_the_top() {
        for (key, min, max, decodable_min) in SUPPORTED {
            assert!(min <= max, "{key:?}");
            assert!(decodable_min <= max, "{key:?} cannot be served at all");
        }
        // librdkafka's feature windows (see kafka-clients reference notes).
        for (key, v) in [
            (ApiKey::Produce, 0),
            (ApiKey::Produce, 3),
            (ApiKey::Produce, 7),
            (ApiKey::Fetch, 4),
            (ApiKey::Fetch, 10),
            (ApiKey::ListOffsets, 1),
            (ApiKey::InitProducerId, 0),
            (ApiKey::Metadata, 4),
            (ApiKey::FindCoordinator, 0),
            (ApiKey::JoinGroup, 0),
            (ApiKey::SyncGroup, 0),
            (ApiKey::Heartbeat, 0),
            (ApiKey::LeaveGroup, 0),
            (ApiKey::OffsetCommit, 2),
            (ApiKey::OffsetFetch, 1),
        ] {
            let (min, max) = advertised(key).unwrap();
            assert!(min <= v && v <= max, "{key:?} must advertise v{v}");
        }
    }
}
