//! Golden bytes of Millrace's Kafka responses (insta snapshots), so an
//! upgrade of `kafka-protocol` that changes what goes on the wire shows up
//! as a diff; and every response encodes at every version we serve.

use bytes::Bytes;
use kafka_protocol::messages::ApiKey;
use millrace_core::ErrorCode;
use millrace_core::broker::*;
use millrace_core::group::*;
use millrace_net::kafka::response;
use millrace_net::kafka::versions::SUPPORTED;
use millrace_net::kafka::{self, Decoded, RequestMeta};

fn hex(b: &[u8]) -> String {
    b.chunks(32).map(|c| c.iter().map(|x| format!("{x:02x}")).collect::<String>()).collect::<Vec<_>>().join("\n")
}

fn meta(api_key: ApiKey, version: i16) -> RequestMeta {
    RequestMeta { api_key, version, correlation_id: 7 }
}

fn sample(key: ApiKey) -> Response {
    match key {
        ApiKey::Metadata => Response::Metadata(MetadataResponse {
            brokers: vec![BrokerInfo { node_id: 0, host: "127.0.0.1".into(), port: 9092 }],
            cluster_id: "millrace".into(),
            controller_id: 0,
            topics: vec![TopicMetadata {
                name: "events".into(),
                error: ErrorCode::None,
                topic_id: [1; 16],
                is_internal: false,
                partitions: vec![PartitionMetadata {
                    partition: 0,
                    error: ErrorCode::None,
                    leader: 0,
                    leader_epoch: 0,
                    replicas: vec![0],
                    isr: vec![0],
                }],
            }],
        }),
        ApiKey::Produce => Response::Produce(ProduceResponse {
            topics: vec![(
                "events".into(),
                vec![ProducePartitionResponse {
                    partition: 0,
                    error: ErrorCode::None,
                    base_offset: 42,
                    log_start_offset: 0,
                    error_message: None,
                }],
            )],
        }),
        ApiKey::Fetch => Response::Fetch(FetchResponse {
            partitions: vec![FetchPartitionResponse {
                topic: "events".into(),
                partition: 0,
                error: ErrorCode::None,
                high_watermark: 10,
                last_stable_offset: 10,
                log_start_offset: 0,
                records: Bytes::from_static(b"RAW"),
            }],
        }),
        ApiKey::ListOffsets => Response::ListOffsets(ListOffsetsResponse {
            partitions: vec![ListOffsetsPartitionResponse {
                topic: "events".into(),
                partition: 0,
                error: ErrorCode::None,
                timestamp: -1,
                offset: 10,
                leader_epoch: 0,
            }],
        }),
        ApiKey::CreateTopics => Response::CreateTopics(CreateTopicsResponse {
            topics: vec![CreateTopicResult {
                name: "events".into(),
                error: ErrorCode::None,
                error_message: None,
                topic_id: [2; 16],
                num_partitions: 3,
                replication_factor: 1,
                configs: vec![ConfigEntry { name: "segment.bytes".into(), value: Some("1024".into()), read_only: false, is_default: false }],
            }],
        }),
        ApiKey::DeleteTopics => {
            Response::DeleteTopics(DeleteTopicsResponse { topics: vec![("events".into(), ErrorCode::UnknownTopicOrPartition, Some("unknown".into()))] })
        }
        ApiKey::InitProducerId => {
            Response::InitProducerId(InitProducerIdResponse { error: ErrorCode::None, producer_id: 1000, producer_epoch: 0 })
        }
        ApiKey::DescribeConfigs => Response::DescribeConfigs(DescribeConfigsResponse {
            results: vec![DescribeConfigsResult {
                resource_type: RESOURCE_TOPIC,
                resource_name: "events".into(),
                error: ErrorCode::None,
                error_message: None,
                configs: vec![ConfigEntry { name: "max.message.bytes".into(), value: Some("1048588".into()), read_only: false, is_default: true }],
            }],
        }),
        ApiKey::FindCoordinator => Response::FindCoordinator(FindCoordinatorResponse {
            coordinators: vec![Coordinator {
                key: "group".into(),
                error: ErrorCode::CoordinatorNotAvailable,
                error_message: Some("not yet".into()),
                node_id: -1,
                host: String::new(),
                port: -1,
            }],
        }),
        ApiKey::OffsetForLeaderEpoch => Response::OffsetForLeaderEpoch(OffsetForLeaderEpochResponse {
            partitions: vec![EpochEndOffset { topic: "events".into(), partition: 1, error: ErrorCode::None, leader_epoch: 0, end_offset: 42 }],
        }),
        ApiKey::JoinGroup => Response::Group(GroupResponse::Join(JoinGroupResponse {
            error: ErrorCode::None,
            generation_id: 3,
            protocol_type: Some("consumer".into()),
            protocol_name: Some("range".into()),
            leader: "m-1".into(),
            member_id: "m-1".into(),
            members: vec![JoinedMember { member_id: "m-1".into(), group_instance_id: Some("i-1".into()), metadata: Bytes::from_static(b"sub") }],
        })),
        ApiKey::SyncGroup => Response::Group(GroupResponse::Sync(SyncGroupResponse {
            error: ErrorCode::None,
            protocol_type: Some("consumer".into()),
            protocol_name: Some("range".into()),
            assignment: Bytes::from_static(b"assigned"),
        })),
        ApiKey::Heartbeat => Response::Group(GroupResponse::Heartbeat(HeartbeatResponse { error: ErrorCode::RebalanceInProgress })),
        ApiKey::LeaveGroup => Response::Group(GroupResponse::Leave(LeaveGroupResponse {
            error: ErrorCode::None,
            members: vec![("m-1".into(), Some("i-1".into()), ErrorCode::None)],
        })),
        ApiKey::OffsetCommit => Response::Group(GroupResponse::OffsetCommit(OffsetCommitResponse {
            partitions: vec![("events".into(), 0, ErrorCode::None), ("events".into(), 1, ErrorCode::IllegalGeneration)],
        })),
        ApiKey::OffsetFetch => Response::Group(GroupResponse::OffsetFetch(OffsetFetchResponse {
            groups: vec![OffsetFetchGroupResponse {
                group_id: "g".into(),
                error: ErrorCode::None,
                partitions: vec![FetchedOffset {
                    topic: "events".into(),
                    partition: 0,
                    offset: 17,
                    leader_epoch: 0,
                    metadata: Some("meta".into()),
                    error: ErrorCode::None,
                }],
            }],
        })),
        ApiKey::ListGroups => Response::Group(GroupResponse::ListGroups(ListGroupsResponse {
            error: ErrorCode::None,
            groups: vec![ListedGroup { group_id: "g".into(), protocol_type: "consumer".into(), state: "Stable".into() }],
        })),
        ApiKey::DescribeGroups => Response::Group(GroupResponse::DescribeGroups(DescribeGroupsResponse {
            groups: vec![DescribedGroup {
                error: ErrorCode::None,
                group_id: "g".into(),
                state: "Stable".into(),
                protocol_type: "consumer".into(),
                protocol: "range".into(),
                members: vec![DescribedMember {
                    member_id: "m-1".into(),
                    group_instance_id: Some("i-1".into()),
                    client_id: "c".into(),
                    client_host: "/127.0.0.1".into(),
                    metadata: Bytes::from_static(b"sub"),
                    assignment: Bytes::from_static(b"assigned"),
                }],
            }],
        })),
        ApiKey::DeleteGroups => Response::Group(GroupResponse::DeleteGroups(DeleteGroupsResponse {
            results: vec![("g".into(), ErrorCode::NonEmptyGroup)],
        })),
        ApiKey::AlterConfigs | ApiKey::IncrementalAlterConfigs => {
            let r = AlterConfigsResponse {
                results: vec![
                    AlterConfigsResult { resource_type: RESOURCE_TOPIC, resource_name: "events".into(), error: ErrorCode::None, error_message: None },
                    AlterConfigsResult {
                        resource_type: RESOURCE_TOPIC,
                        resource_name: "gone".into(),
                        error: ErrorCode::UnknownTopicOrPartition,
                        error_message: Some("unknown topic gone".into()),
                    },
                ],
            };
            if key == ApiKey::AlterConfigs { Response::AlterConfigs(r) } else { Response::IncrementalAlterConfigs(r) }
        }
        other => panic!("no sample for {other:?}"),
    }
}

#[test]
fn every_response_encodes_at_every_served_version() {
    for (key, _, max, decodable_min) in SUPPORTED {
        for v in decodable_min..=max {
            if key == ApiKey::ApiVersions {
                response::api_versions(&meta(key, v), true).unwrap();
                continue;
            }
            let bytes = response::encode(&meta(key, v), sample(key)).unwrap_or_else(|e| panic!("{key:?} v{v}: {e}"));
            let len = i32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
            assert_eq!(len + 4, bytes.len(), "{key:?} v{v} length prefix");
            assert_eq!(&bytes[4..8], &7i32.to_be_bytes(), "{key:?} v{v} correlation id");
        }
    }
}

#[test]
fn golden_api_versions() {
    insta::assert_snapshot!("api_versions_v0", hex(&response::api_versions(&meta(ApiKey::ApiVersions, 0), true).unwrap()));
    insta::assert_snapshot!("api_versions_v3", hex(&response::api_versions(&meta(ApiKey::ApiVersions, 3), true).unwrap()));
    insta::assert_snapshot!(
        "api_versions_unsupported",
        hex(&response::api_versions(&meta(ApiKey::ApiVersions, 9), false).unwrap())
    );
}

#[test]
fn golden_responses() {
    for (key, versions) in [
        (ApiKey::Metadata, [1, 12]),
        (ApiKey::Produce, [3, 9]),
        (ApiKey::Fetch, [4, 12]),
        (ApiKey::ListOffsets, [1, 7]),
        (ApiKey::CreateTopics, [2, 7]),
        (ApiKey::DeleteTopics, [1, 6]),
        (ApiKey::InitProducerId, [0, 4]),
        (ApiKey::DescribeConfigs, [1, 4]),
        (ApiKey::FindCoordinator, [0, 4]),
        (ApiKey::JoinGroup, [0, 9]),
        (ApiKey::SyncGroup, [0, 5]),
        (ApiKey::Heartbeat, [0, 4]),
        (ApiKey::LeaveGroup, [0, 5]),
        (ApiKey::OffsetCommit, [2, 9]),
        (ApiKey::OffsetFetch, [1, 9]),
        (ApiKey::ListGroups, [0, 5]),
        (ApiKey::DescribeGroups, [0, 5]),
        (ApiKey::DeleteGroups, [0, 2]),
        (ApiKey::OffsetForLeaderEpoch, [2, 4]),
        (ApiKey::AlterConfigs, [0, 2]),
        (ApiKey::IncrementalAlterConfigs, [0, 1]),
    ] {
        for v in versions {
            let bytes = response::encode(&meta(key, v), sample(key)).unwrap();
            insta::assert_snapshot!(format!("{key:?}_v{v}"), hex(&bytes));
        }
    }
}

/// Requests encoded by the crate's client side decode into the broker's
/// request types with nothing lost.
#[test]
fn requests_decode_into_broker_requests() {
    use bytes::BytesMut;
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{ProduceRequest as KProduce, RequestHeader, TopicName};
    use kafka_protocol::protocol::{Encodable, StrBytes};

    for v in [3i16, 7, 9, 11] {
        let req = KProduce::default().with_acks(-1).with_timeout_ms(500).with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_static_str("events")))
            .with_partition_data(vec![PartitionProduceData::default().with_index(2).with_records(Some(Bytes::from_static(b"batch")))])]);
        let mut buf = BytesMut::new();
        RequestHeader::default()
            .with_request_api_key(0)
            .with_request_api_version(v)
            .with_correlation_id(5)
            .encode(&mut buf, ApiKey::Produce.request_header_version(v))
            .unwrap();
        req.encode(&mut buf, v).unwrap();
        match kafka::decode(buf.freeze()).unwrap() {
            Decoded::Broker { meta, request: Request::Produce(p), expects_reply } => {
                assert_eq!((meta.version, meta.correlation_id), (v, 5));
                assert!(expects_reply);
                assert_eq!(p.acks, -1);
                assert_eq!(p.topics, vec![("events".to_string(), vec![(2, Some(Bytes::from_static(b"batch")))])]);
            }
            other => panic!("v{v}: {other:?}"),
        }
    }
}

/// AlterConfigs and IncrementalAlterConfigs requests as clients encode
/// them decode into the broker's request: operations, values, validate_only.
#[test]
fn alter_configs_requests_decode() {
    use bytes::BytesMut;
    use kafka_protocol::messages::{AlterConfigsRequest as KAlter, IncrementalAlterConfigsRequest as KIncr, RequestHeader};
    use kafka_protocol::protocol::{Encodable, StrBytes};

    fn frame<R: Encodable>(key: ApiKey, v: i16, req: &R) -> bytes::Bytes {
        let mut buf = BytesMut::new();
        RequestHeader::default()
            .with_request_api_key(key as i16)
            .with_request_api_version(v)
            .with_correlation_id(9)
            .encode(&mut buf, key.request_header_version(v))
            .unwrap();
        req.encode(&mut buf, v).unwrap();
        buf.freeze()
    }
    let s = |x: &str| StrBytes::from_string(x.to_string());
    for v in 0..=1 {
        use kafka_protocol::messages::incremental_alter_configs_request::{AlterConfigsResource, AlterableConfig};
        let req = KIncr::default().with_validate_only(true).with_resources(vec![AlterConfigsResource::default()
            .with_resource_type(2)
            .with_resource_name(s("events"))
            .with_configs(vec![
                AlterableConfig::default().with_name(s("retention.ms")).with_config_operation(0).with_value(Some(s("1000"))),
                AlterableConfig::default().with_name(s("segment.ms")).with_config_operation(1).with_value(None),
                AlterableConfig::default().with_name(s("cleanup.policy")).with_config_operation(9).with_value(Some(s("x"))),
            ])]);
        match kafka::decode(frame(ApiKey::IncrementalAlterConfigs, v, &req)).unwrap() {
            Decoded::Broker { request: Request::IncrementalAlterConfigs(r), .. } => {
                assert!(r.validate_only);
                assert_eq!(r.resources[0].resource_name, "events");
                assert_eq!(
                    r.resources[0].configs,
                    vec![
                        ("retention.ms".into(), Some(AlterOp::Set), Some("1000".into())),
                        ("segment.ms".into(), Some(AlterOp::Delete), None),
                        ("cleanup.policy".into(), None, Some("x".into())),
                    ]
                );
            }
            other => panic!("v{v}: {other:?}"),
        }
    }
    for v in 0..=2 {
        use kafka_protocol::messages::alter_configs_request::{AlterConfigsResource, AlterableConfig};
        let req = KAlter::default().with_resources(vec![AlterConfigsResource::default()
            .with_resource_type(2)
            .with_resource_name(s("events"))
            .with_configs(vec![AlterableConfig::default().with_name(s("retention.bytes")).with_value(Some(s("10")))])]);
        match kafka::decode(frame(ApiKey::AlterConfigs, v, &req)).unwrap() {
            Decoded::Broker { request: Request::AlterConfigs(r), .. } => {
                assert!(!r.validate_only);
                assert_eq!(r.resources[0].configs, vec![("retention.bytes".into(), Some(AlterOp::Set), Some("10".into()))]);
            }
            other => panic!("v{v}: {other:?}"),
        }
    }
}
