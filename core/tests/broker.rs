//! The broker machine driven directly through `step`, over in-memory storage.

use bytes::Bytes;
use millrace_core::ErrorCode;
use millrace_core::broker::*;
use millrace_core::records::{self, BatchBuilder, Compression, Record};
use millrace_core::storage::MemStorage;

struct Harness {
    broker: Broker<MemStorage>,
    now: i64,
    seq: u64,
    out: Vec<Effect>,
}

fn record(i: usize) -> Record {
    Record {
        offset: 0,
        timestamp: 1_000 + i as i64,
        key: Some(format!("k{i}").into_bytes()),
        value: Some(format!("value-{i}").into_bytes()),
        headers: vec![records::Header { key: b"h".to_vec(), value: Some(b"v".to_vec()) }],
    }
}

fn batch(range: std::ops::Range<usize>, compression: Compression) -> BatchBuilder {
    let mut b = BatchBuilder::new(compression);
    for i in range {
        b.push(record(i));
    }
    b
}

impl Harness {
    fn new(config: BrokerConfig) -> Self {
        Self::reopen(config, MemStorage::new())
    }

    fn reopen(config: BrokerConfig, storage: MemStorage) -> Self {
        let (broker, _) = Broker::open(config, storage, 7).unwrap();
        Self { broker, now: 0, seq: 0, out: Vec::new() }
    }

    fn restart(self) -> Self {
        let config = self.broker.config().clone();
        let mut broker = self.broker;
        let storage = std::mem::take(broker.storage_mut());
        Self::reopen(config, storage)
    }

    /// Sends a request; feeds Sync when asked; returns the replies in order.
    fn call(&mut self, request: Request) -> Vec<(RequestId, Response)> {
        self.seq += 1;
        let id = RequestId { conn: 1, seq: self.seq };
        self.broker.step(self.now, Input::Request { id, request }, &mut self.out);
        self.drain()
    }

    fn drain(&mut self) -> Vec<(RequestId, Response)> {
        let mut replies = Vec::new();
        loop {
            let effects = std::mem::take(&mut self.out);
            if effects.is_empty() {
                return replies;
            }
            for e in effects {
                match e {
                    Effect::Reply { id, response } => replies.push((id, response)),
                    Effect::SyncNeeded => self.broker.step(self.now, Input::Sync, &mut self.out),
                    Effect::Timer { .. } => {}
                    Effect::Fatal { reason } => panic!("fatal: {reason}"),
                    Effect::Send { .. } => panic!("a single node sends nothing to peers"),
                    Effect::SyncFiles { .. } => panic!("syncs run in the step here (Input::Sync)"),
                }
            }
        }
    }

    fn create(&mut self, name: &str, partitions: i32) -> CreateTopicResult {
        let r = self.call(Request::CreateTopics(CreateTopicsRequest {
            topics: vec![NewTopic {
                name: name.into(),
                num_partitions: partitions,
                replication_factor: -1,
                has_assignments: false,
                configs: vec![],
            }],
            validate_only: false,
        }));
        match r.into_iter().next() {
            Some((_, Response::CreateTopics(mut c))) => c.topics.remove(0),
            other => panic!("unexpected {other:?}"),
        }
    }

    fn produce(&mut self, topic: &str, partition: i32, batch: Vec<u8>, acks: i16) -> ProducePartitionResponse {
        let r = self.call(Request::Produce(ProduceRequest {
            acks,
            timeout_ms: 1000,
            transactional_id: None,
            topics: vec![(topic.into(), vec![(partition, Some(Bytes::from(batch)))])],
        }));
        match r.into_iter().next() {
            Some((_, Response::Produce(mut p))) => p.topics.remove(0).1.remove(0),
            other => panic!("unexpected {other:?}"),
        }
    }

    fn fetch_req(&self, topic: &str, partition: i32, offset: i64, max_wait_ms: i32) -> Request {
        Request::Fetch(FetchRequest {
            max_wait_ms,
            min_bytes: 1,
            max_bytes: 1 << 20,
            isolation_level: 1,
            partitions: vec![FetchPartition { topic: topic.into(), partition, fetch_offset: offset, partition_max_bytes: 1 << 20 }],
        })
    }

    fn fetch(&mut self, topic: &str, partition: i32, offset: i64) -> FetchPartitionResponse {
        let req = self.fetch_req(topic, partition, offset, 0);
        match self.call(req).into_iter().next() {
            Some((_, Response::Fetch(mut f))) => f.partitions.remove(0),
            other => panic!("unexpected {other:?}"),
        }
    }

    fn read_all(&mut self, topic: &str, partition: i32) -> Vec<Record> {
        let mut out = Vec::new();
        let mut offset = 0;
        loop {
            let f = self.fetch(topic, partition, offset);
            assert_eq!(f.error, ErrorCode::None);
            if f.records.is_empty() {
                return out;
            }
            for b in records::split_batches(&f.records) {
                let (_, bytes) = b.unwrap();
                let (_, recs) = records::decode_records(bytes).unwrap();
                out.extend(recs.into_iter().filter(|r| r.offset >= offset));
            }
            offset = out.last().unwrap().offset + 1;
        }
    }
}

#[test]
fn produce_then_fetch_every_codec_with_dense_offsets() {
    let mut h = Harness::new(BrokerConfig::default());
    assert_eq!(h.create("t", 2).error, ErrorCode::None);
    let mut expected = 0;
    for (i, c) in Compression::ALL.into_iter().enumerate() {
        let r = h.produce("t", 1, batch(i * 10..i * 10 + 10, c).build(), -1);
        assert_eq!(r.error, ErrorCode::None, "{c:?}: {:?}", r.error_message);
        assert_eq!(r.base_offset, expected);
        expected += 10;
    }
    let recs = h.read_all("t", 1);
    assert_eq!(recs.len(), 50);
    for (i, r) in recs.iter().enumerate() {
        assert_eq!(r.offset, i as i64);
        assert_eq!(r.value.as_deref(), Some(format!("value-{i}").as_bytes()));
        assert_eq!(r.headers.len(), 1);
    }
    assert!(h.read_all("t", 0).is_empty());
}

#[test]
fn errors_use_kafka_codes() {
    let mut h = Harness::new(BrokerConfig { auto_create_topics: false, ..BrokerConfig::default() });
    assert_eq!(h.create("t", 1).error, ErrorCode::None);
    assert_eq!(h.create("t", 1).error, ErrorCode::TopicAlreadyExists);
    assert_eq!(h.create("bad/name", 1).error, ErrorCode::InvalidTopicException);
    assert_eq!(h.create("zero", 0).error, ErrorCode::InvalidPartitions);
    let good = batch(0..3, Compression::None).build();
    assert_eq!(h.produce("nope", 0, good.clone(), 1).error, ErrorCode::UnknownTopicOrPartition);
    assert_eq!(h.produce("t", 5, good.clone(), 1).error, ErrorCode::UnknownTopicOrPartition);
    assert_eq!(h.produce("t", 0, good.clone(), 7).error, ErrorCode::InvalidRequiredAcks);
    let mut corrupt = good.clone();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0xff;
    assert_eq!(h.produce("t", 0, corrupt, 1).error, ErrorCode::CorruptMessage);
    assert_eq!(h.produce("t", 0, good[..30].to_vec(), 1).error, ErrorCode::CorruptMessage);
    let mut big = BatchBuilder::new(Compression::None);
    big.push(Record { value: Some(vec![7; 2 << 20]), ..Record::default() });
    assert_eq!(h.produce("t", 0, big.build(), 1).error, ErrorCode::MessageTooLarge);
    // Nothing above was stored.
    assert_eq!(h.fetch("t", 0, 0).high_watermark, 0);
    assert_eq!(h.fetch("t", 0, 5).error, ErrorCode::OffsetOutOfRange);
    assert_eq!(h.fetch("t", 0, -1).error, ErrorCode::OffsetOutOfRange);
}

#[test]
fn metadata_auto_creates_only_when_enabled() {
    let mut h = Harness::new(BrokerConfig { num_partitions: 3, ..BrokerConfig::default() });
    let req = |name: &str| Request::Metadata(MetadataRequest { topics: Some(vec![name.into()]), allow_auto_topic_creation: true });
    match &h.call(req("auto"))[0].1 {
        Response::Metadata(m) => {
            assert_eq!(m.topics[0].error, ErrorCode::None);
            assert_eq!(m.topics[0].partitions.len(), 3);
        }
        other => panic!("{other:?}"),
    }
    let mut off = Harness::new(BrokerConfig { auto_create_topics: false, ..BrokerConfig::default() });
    match &off.call(req("auto"))[0].1 {
        Response::Metadata(m) => assert_eq!(m.topics[0].error, ErrorCode::UnknownTopicOrPartition),
        other => panic!("{other:?}"),
    }
}

#[test]
fn idempotent_retries_are_not_stored_twice_even_after_restart() {
    let mut h = Harness::new(BrokerConfig::default());
    h.create("t", 1);
    let (pid, epoch) = match &h.call(Request::InitProducerId(InitProducerIdRequest {
        transactional_id: None,
        producer_id: -1,
        producer_epoch: -1,
    }))[0]
        .1
    {
        Response::InitProducerId(r) => (r.producer_id, r.producer_epoch),
        other => panic!("{other:?}"),
    };
    let b0 = batch(0..5, Compression::Lz4).idempotent(pid, epoch, 0).build();
    let b1 = batch(5..10, Compression::Lz4).idempotent(pid, epoch, 5).build();
    assert_eq!(h.produce("t", 0, b0.clone(), -1).base_offset, 0);
    assert_eq!(h.produce("t", 0, b1.clone(), -1).base_offset, 5);
    // A retry of either batch is answered with its original offset.
    let dup = h.produce("t", 0, b0.clone(), -1);
    assert_eq!((dup.error, dup.base_offset), (ErrorCode::None, 0));
    // A gap in sequences is refused.
    let gap = batch(10..12, Compression::None).idempotent(pid, epoch, 20).build();
    assert_eq!(h.produce("t", 0, gap, -1).error, ErrorCode::OutOfOrderSequenceNumber);
    let mut h = h.restart();
    let dup = h.produce("t", 0, b1, -1);
    assert_eq!((dup.error, dup.base_offset), (ErrorCode::None, 5));
    assert_eq!(h.read_all("t", 0).len(), 10);
    // An old epoch is fenced once a newer one wrote.
    let bumped = batch(10..11, Compression::None).idempotent(pid, epoch + 1, 0).build();
    assert_eq!(h.produce("t", 0, bumped, -1).base_offset, 10);
    let stale = batch(11..12, Compression::None).idempotent(pid, epoch, 10).build();
    assert_eq!(h.produce("t", 0, stale, -1).error, ErrorCode::InvalidProducerEpoch);
    // Producer ids are never handed out twice across a restart.
    let next = match &h.call(Request::InitProducerId(InitProducerIdRequest {
        transactional_id: None,
        producer_id: -1,
        producer_epoch: -1,
    }))[0]
        .1
    {
        Response::InitProducerId(r) => r.producer_id,
        other => panic!("{other:?}"),
    };
    assert!(next > pid);
}

#[test]
fn acks_wait_for_sync_under_every_batch_and_hw_follows_durability() {
    let mut h = Harness::new(BrokerConfig::default());
    h.create("t", 1);
    h.seq += 1;
    let id = RequestId { conn: 1, seq: h.seq };
    let request = Request::Produce(ProduceRequest {
        acks: 1,
        timeout_ms: 1000,
        transactional_id: None,
        topics: vec![("t".into(), vec![(0, Some(Bytes::from(batch(0..3, Compression::None).build())))])],
    });
    h.broker.step(0, Input::Request { id, request }, &mut h.out);
    // No reply yet: only a request to sync.
    assert_eq!(h.out, vec![Effect::SyncNeeded]);
    assert_eq!(h.broker.high_watermark("t", 0), Some(0));
    h.out.clear();
    h.broker.step(0, Input::Sync, &mut h.out);
    assert!(matches!(&h.out[..], [Effect::Reply { id: got, .. }] if *got == id));
    assert_eq!(h.broker.high_watermark("t", 0), Some(3));
}

/// Plays an adapter that runs syncs off the machine: `SyncStart` on
/// `SyncNeeded`, the ticket of the `SyncFiles` it gets back.
fn start_sync(h: &mut Harness) -> u64 {
    assert_eq!(std::mem::take(&mut h.out), vec![Effect::SyncNeeded]);
    h.broker.step(0, Input::SyncStart, &mut h.out);
    match &std::mem::take(&mut h.out)[..] {
        [Effect::SyncFiles { ticket, files }] => {
            assert!(files.iter().all(|f| f.starts_with("t-0/")), "{files:?}");
            *ticket
        }
        other => panic!("expected one SyncFiles, got {other:?}"),
    }
}

fn produce_step(h: &mut Harness, range: std::ops::Range<usize>) -> RequestId {
    h.seq += 1;
    let id = RequestId { conn: 1, seq: h.seq };
    let request = Request::Produce(ProduceRequest {
        acks: 1,
        timeout_ms: 1000,
        transactional_id: None,
        topics: vec![("t".into(), vec![(0, Some(Bytes::from(batch(range, Compression::None).build())))])],
    });
    h.broker.step(0, Input::Request { id, request }, &mut h.out);
    id
}

fn replied(out: &[Effect]) -> Vec<RequestId> {
    out.iter().filter_map(|e| if let Effect::Reply { id, .. } = e { Some(*id) } else { None }).collect()
}

#[test]
fn a_sync_run_by_the_adapter_acknowledges_what_it_covers_in_whatever_order_syncs_finish() {
    let mut h = Harness::new(BrokerConfig::default());
    h.create("t", 1);
    // A sync starts; a second batch comes while it runs, and its own sync.
    let a = produce_step(&mut h, 0..3);
    let first = start_sync(&mut h);
    let b = produce_step(&mut h, 3..5);
    let second = start_sync(&mut h);
    assert_ne!(first, second);
    assert_eq!(h.broker.high_watermark("t", 0), Some(0));
    // The first sync covers the first batch only.
    h.broker.step(0, Input::Synced { ticket: first }, &mut h.out);
    assert_eq!(replied(&std::mem::take(&mut h.out)), vec![a]);
    assert_eq!(h.broker.high_watermark("t", 0), Some(3));
    h.broker.step(0, Input::Synced { ticket: second }, &mut h.out);
    assert_eq!(replied(&std::mem::take(&mut h.out)), vec![b]);
    assert_eq!(h.broker.high_watermark("t", 0), Some(5));

    // The later sync finishes first: it covers both (it synced the same
    // file after both appends); the earlier one then changes nothing.
    let c = produce_step(&mut h, 5..6);
    let first = start_sync(&mut h);
    let d = produce_step(&mut h, 6..8);
    let second = start_sync(&mut h);
    h.broker.step(0, Input::Synced { ticket: second }, &mut h.out);
    assert_eq!(replied(&std::mem::take(&mut h.out)), vec![c, d]);
    assert_eq!(h.broker.high_watermark("t", 0), Some(8));
    h.broker.step(0, Input::Synced { ticket: first }, &mut h.out);
    assert!(h.out.is_empty(), "{:?}", h.out);

    // Nothing new to sync: no ticket. A failed sync stops the machine.
    let _ = produce_step(&mut h, 8..9);
    let third = start_sync(&mut h);
    h.broker.step(0, Input::SyncStart, &mut h.out);
    assert!(h.out.is_empty(), "{:?}", h.out);
    h.broker.step(0, Input::SyncFailed { reason: "EIO".into() }, &mut h.out);
    assert!(matches!(&h.out[..], [Effect::Fatal { .. }]), "{:?}", h.out);
    h.out.clear();
    h.broker.step(0, Input::Synced { ticket: third }, &mut h.out);
    assert!(h.out.is_empty(), "a failed machine acknowledges nothing more");
    assert_eq!(h.broker.high_watermark("t", 0), Some(8));
}

#[test]
fn interval_flush_acks_at_once_and_syncs_on_the_timer() {
    let mut h = Harness::new(BrokerConfig { flush: FlushPolicy::IntervalMs(100), ..BrokerConfig::default() });
    h.create("t", 1);
    h.seq += 1;
    let request = Request::Produce(ProduceRequest {
        acks: -1,
        timeout_ms: 1000,
        transactional_id: None,
        topics: vec![("t".into(), vec![(0, Some(Bytes::from(batch(0..3, Compression::None).build())))])],
    });
    h.broker.step(0, Input::Request { id: RequestId { conn: 1, seq: 1 }, request }, &mut h.out);
    assert!(h.out.iter().any(|e| matches!(e, Effect::Reply { .. })));
    assert!(h.out.contains(&Effect::Timer { at: 100 }));
    assert!(!h.out.contains(&Effect::SyncNeeded));
    assert_eq!(h.broker.high_watermark("t", 0), Some(3));
}

#[test]
fn long_poll_waits_for_data_or_deadline() {
    let mut h = Harness::new(BrokerConfig::default());
    h.create("t", 1);
    let req = h.fetch_req("t", 0, 0, 500);
    let poll_id = RequestId { conn: 9, seq: 1 };
    h.broker.step(0, Input::Request { id: poll_id, request: req.clone() }, &mut h.out);
    assert_eq!(h.out, vec![Effect::Timer { at: 500 }]);
    h.out.clear();
    // Data arrives: the parked fetch is answered with it after the sync.
    let replies = {
        h.seq += 1;
        let id = RequestId { conn: 1, seq: h.seq };
        let b = batch(0..2, Compression::Zstd).build();
        h.broker.step(
            10,
            Input::Request {
                id,
                request: Request::Produce(ProduceRequest {
                    acks: -1,
                    timeout_ms: 1000,
                    transactional_id: None,
                    topics: vec![("t".into(), vec![(0, Some(Bytes::from(b)))])],
                }),
            },
            &mut h.out,
        );
        h.drain()
    };
    let fetched = replies.iter().find(|(id, _)| *id == poll_id).expect("parked fetch answered");
    match &fetched.1 {
        Response::Fetch(f) => assert!(!f.partitions[0].records.is_empty()),
        other => panic!("{other:?}"),
    }
    // With no data, the deadline answers it empty.
    let id = RequestId { conn: 9, seq: 2 };
    h.broker.step(20, Input::Request { id, request: h.fetch_req("t", 0, 2, 300) }, &mut h.out);
    h.out.clear();
    // (Ticks may also arm the group coordinator's timers; only replies count.)
    h.broker.step(319, Input::Tick, &mut h.out);
    h.out.retain(|e| !matches!(e, Effect::Timer { .. }));
    assert!(h.out.is_empty());
    h.broker.step(320, Input::Tick, &mut h.out);
    h.out.retain(|e| !matches!(e, Effect::Timer { .. }));
    assert!(matches!(&h.out[..], [Effect::Reply { id: got, response: Response::Fetch(f) }]
        if *got == id && f.partitions[0].records.is_empty()));
}

#[test]
fn list_offsets_earliest_latest_and_by_time() {
    let mut h = Harness::new(BrokerConfig::default());
    h.create("t", 1);
    h.produce("t", 0, batch(0..10, Compression::Gzip).build(), -1);
    h.produce("t", 0, batch(10..20, Compression::None).build(), -1);
    let r = h.call(Request::ListOffsets(ListOffsetsRequest {
        isolation_level: 0,
        partitions: vec![
            ("t".into(), 0, EARLIEST_TIMESTAMP),
            ("t".into(), 0, LATEST_TIMESTAMP),
            ("t".into(), 0, 1_013),
            ("t".into(), 0, 5_000),
            ("t".into(), 0, MAX_TIMESTAMP),
            ("x".into(), 0, LATEST_TIMESTAMP),
        ],
    }));
    let Response::ListOffsets(l) = &r[0].1 else { panic!() };
    let offsets: Vec<(ErrorCode, i64)> = l.partitions.iter().map(|p| (p.error, p.offset)).collect();
    assert_eq!(
        offsets,
        vec![
            (ErrorCode::None, 0),
            (ErrorCode::None, 20),
            (ErrorCode::None, 13),
            (ErrorCode::None, -1),
            (ErrorCode::None, 19),
            (ErrorCode::UnknownTopicOrPartition, -1)
        ]
    );
}

#[test]
fn topics_survive_restart_and_delete_removes_them() {
    let mut h = Harness::new(BrokerConfig::default());
    h.create("keep", 2);
    h.create("gone", 1);
    h.produce("keep", 1, batch(0..4, Compression::Snappy).build(), -1);
    h.produce("gone", 0, batch(0..4, Compression::None).build(), -1);
    let r = h.call(Request::DeleteTopics(DeleteTopicsRequest { names: vec!["gone".into(), "never".into()] }));
    let Response::DeleteTopics(d) = &r[0].1 else { panic!() };
    assert_eq!(d.topics[0].1, ErrorCode::None);
    assert_eq!(d.topics[1].1, ErrorCode::UnknownTopicOrPartition);
    let mut h = h.restart();
    assert_eq!(h.broker.topic_names().collect::<Vec<_>>(), vec!["keep"]);
    assert_eq!(h.read_all("keep", 1).len(), 4);
    assert!(h.broker.storage_mut().files().all(|(f, _)| !f.starts_with("gone")));
    // Re-creating a deleted name starts empty.
    h.create("gone", 1);
    assert!(h.read_all("gone", 0).is_empty());
}

#[test]
fn describe_configs_reports_overrides() {
    let mut h = Harness::new(BrokerConfig::default());
    let r = h.call(Request::CreateTopics(CreateTopicsRequest {
        topics: vec![NewTopic {
            name: "c".into(),
            num_partitions: 1,
            replication_factor: 1,
            has_assignments: false,
            configs: vec![("segment.bytes".into(), Some("4096".into()))],
        }],
        validate_only: false,
    }));
    let Response::CreateTopics(c) = &r[0].1 else { panic!() };
    assert_eq!(c.topics[0].error, ErrorCode::None);
    let r = h.call(Request::CreateTopics(CreateTopicsRequest {
        topics: vec![NewTopic {
            name: "d".into(),
            num_partitions: 1,
            replication_factor: 3,
            has_assignments: false,
            configs: vec![],
        }],
        validate_only: false,
    }));
    let Response::CreateTopics(c) = &r[0].1 else { panic!() };
    assert_eq!(c.topics[0].error, ErrorCode::InvalidReplicationFactor);
    let r = h.call(Request::DescribeConfigs(DescribeConfigsRequest { resources: vec![(RESOURCE_TOPIC, "c".into(), None)] }));
    let Response::DescribeConfigs(d) = &r[0].1 else { panic!() };
    let seg = d.results[0].configs.iter().find(|e| e.name == "segment.bytes").unwrap();
    assert_eq!((seg.value.as_deref(), seg.is_default), (Some("4096"), false));
    // Small segments roll: many batches land in several files.
    for i in 0..20 {
        h.produce("c", 0, batch(i * 10..i * 10 + 10, Compression::None).build(), -1);
    }
    assert!(h.broker.storage_mut().files().filter(|(f, _)| f.starts_with("c-0/")).count() >= 2);
    assert_eq!(h.read_all("c", 0).len(), 200);
}

#[test]
fn a_damaged_topic_description_stops_the_open_instead_of_dropping_the_topic() {
    let mut h = Harness::new(BrokerConfig::default());
    h.create("t", 1);
    h.produce("t", 0, batch(0..3, Compression::None).build(), -1);
    let mut broker = h.broker;
    let mut storage = std::mem::take(broker.storage_mut());
    storage.file_mut("topics/t.json").unwrap()[10] ^= 0x20;
    match Broker::open(BrokerConfig::default(), storage, 1) {
        Err(OpenError::DamagedMetadata { file, .. }) => assert_eq!(file, "topics/t.json"),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a damaged description must not open as if the topic did not exist"),
    }
}
