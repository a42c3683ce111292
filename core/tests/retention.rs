//! Retention, compaction and config changes through the broker machine,
//! with its timers driven by a simulated clock.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use millrace_core::ErrorCode;
use millrace_core::broker::*;
use millrace_core::records::{self, BatchBuilder, Compression, Record};
use millrace_core::storage::MemStorage;

const CHECK_MS: i64 = 1000;

/// A broker whose timers fire when the clock passes them.
struct Node {
    broker: Broker<MemStorage>,
    now: i64,
    seq: u64,
    timers: BTreeSet<i64>,
    /// Ticks handled since the clock last moved (one per cleaner step).
    ticks: u64,
}

fn config() -> BrokerConfig {
    let mut c = BrokerConfig { log_retention_check_interval_ms: CHECK_MS, log_cleaner_step_bytes: 512, ..BrokerConfig::default() };
    c.group.offsets_topic_segment_bytes = 1024;
    c
}

impl Node {
    fn new() -> Self {
        Self::open(MemStorage::new())
    }

    fn open(storage: MemStorage) -> Self {
        let (broker, _) = Broker::open(config(), storage, 3).unwrap();
        Self { broker, now: 0, seq: 0, timers: BTreeSet::new(), ticks: 0 }
    }

    fn restart(mut self) -> Self {
        let storage = std::mem::take(self.broker.storage_mut());
        Self::open(storage)
    }

    fn effects(&mut self, mut out: Vec<Effect>) -> Vec<Response> {
        let mut replies = Vec::new();
        while !out.is_empty() {
            for e in std::mem::take(&mut out) {
                match e {
                    Effect::Reply { response, .. } => replies.push(response),
                    Effect::SyncNeeded => self.broker.step(self.now, Input::Sync, &mut out),
                    Effect::Timer { at } => {
                        self.timers.insert(at);
                    }
                    Effect::Fatal { reason } => panic!("fatal: {reason}"),
                    Effect::Send { .. } => panic!("a single node sends nothing to peers"),
                    Effect::SyncFiles { .. } => panic!("syncs run in the step here (Input::Sync)"),
                }
            }
        }
        replies
    }

    fn call(&mut self, request: Request) -> Response {
        self.seq += 1;
        let mut out = Vec::new();
        let id = RequestId { conn: 1, seq: self.seq };
        self.broker.step(self.now, Input::Request { id, request }, &mut out);
        self.effects(out).pop().expect("a reply")
    }

    /// Moves the clock to `to`, firing every timer due on the way (timers
    /// armed for "now" fire again at once, as the adapter does).
    fn advance(&mut self, to: i64) {
        self.ticks = 0;
        while let Some(&at) = self.timers.first() {
            if at > to {
                break;
            }
            self.timers.pop_first();
            self.now = self.now.max(at);
            let mut out = Vec::new();
            self.broker.step(self.now, Input::Tick, &mut out);
            self.ticks += 1;
            assert!(self.ticks < 1_000_000, "timers never settle");
            self.effects(out);
        }
        self.now = to;
    }

    /// One tick at the current time, whatever timers say.
    fn tick_once(&mut self) {
        while self.timers.first().is_some_and(|&at| at <= self.now) {
            self.timers.pop_first();
        }
        let mut out = Vec::new();
        self.broker.step(self.now, Input::Tick, &mut out);
        self.effects(out);
    }

    fn create(&mut self, name: &str, configs: &[(&str, &str)]) -> CreateTopicResult {
        let configs = configs.iter().map(|(k, v)| (k.to_string(), Some(v.to_string()))).collect();
        let topic = NewTopic { name: name.into(), num_partitions: 1, replication_factor: -1, has_assignments: false, configs };
        match self.call(Request::CreateTopics(CreateTopicsRequest { topics: vec![topic], validate_only: false })) {
            Response::CreateTopics(mut c) => c.topics.remove(0),
            other => panic!("{other:?}"),
        }
    }

    fn produce(&mut self, topic: &str, recs: &[(Option<&str>, Option<&str>)], ts: i64) -> ProducePartitionResponse {
        let mut b = BatchBuilder::new(Compression::None);
        for (k, v) in recs {
            b.push(Record {
                timestamp: ts,
                key: k.map(|k| k.as_bytes().to_vec()),
                value: v.map(|v| v.as_bytes().to_vec()),
                ..Record::default()
            });
        }
        let req = ProduceRequest {
            acks: -1,
            timeout_ms: 1000,
            transactional_id: None,
            topics: vec![(topic.into(), vec![(0, Some(Bytes::from(b.build())))])],
        };
        match self.call(Request::Produce(req)) {
            Response::Produce(mut p) => p.topics.remove(0).1.remove(0),
            other => panic!("{other:?}"),
        }
    }

    fn fetch(&mut self, topic: &str, offset: i64) -> FetchPartitionResponse {
        let fp = FetchPartition { topic: topic.into(), partition: 0, fetch_offset: offset, partition_max_bytes: 1 << 20 };
        let req = FetchRequest { max_wait_ms: 0, min_bytes: 1, max_bytes: 1 << 20, isolation_level: 1, partitions: vec![fp] };
        match self.call(Request::Fetch(req)) {
            Response::Fetch(mut f) => f.partitions.remove(0),
            other => panic!("{other:?}"),
        }
    }

    /// Every record from the log start on, the way a consumer reads: it
    /// moves past each batch, records or not.
    fn read_all(&mut self, topic: &str) -> Vec<Record> {
        let mut offset = self.list_offset(topic, EARLIEST_TIMESTAMP);
        let end = self.list_offset(topic, LATEST_TIMESTAMP);
        let mut out = Vec::new();
        while offset < end {
            let f = self.fetch(topic, offset);
            assert_eq!(f.error, ErrorCode::None);
            for b in records::split_batches(&f.records) {
                let (h, bytes) = b.unwrap();
                out.extend(records::decode_records(bytes).unwrap().1.into_iter().filter(|r| r.offset >= offset));
                offset = h.last_offset() + 1;
            }
        }
        out
    }

    fn list_offset(&mut self, topic: &str, ts: i64) -> i64 {
        let req = ListOffsetsRequest { isolation_level: 0, partitions: vec![(topic.into(), 0, ts)] };
        match self.call(Request::ListOffsets(req)) {
            Response::ListOffsets(l) => l.partitions[0].offset,
            other => panic!("{other:?}"),
        }
    }

    fn describe(&mut self, topic: &str) -> BTreeMap<String, (String, bool)> {
        let req = DescribeConfigsRequest { resources: vec![(RESOURCE_TOPIC, topic.into(), None)] };
        match self.call(Request::DescribeConfigs(req)) {
            Response::DescribeConfigs(d) => {
                d.results[0].configs.iter().map(|e| (e.name.clone(), (e.value.clone().unwrap(), e.is_default))).collect()
            }
            other => panic!("{other:?}"),
        }
    }

    fn alter(&mut self, incremental: bool, topic: &str, ops: &[(&str, AlterOp, Option<&str>)], validate_only: bool) -> AlterConfigsResult {
        let resource = AlterConfigsResource {
            resource_type: RESOURCE_TOPIC,
            resource_name: topic.into(),
            configs: ops.iter().map(|(k, op, v)| (k.to_string(), Some(*op), v.map(str::to_string))).collect(),
        };
        let req = AlterConfigsRequest { resources: vec![resource], validate_only };
        let request = if incremental { Request::IncrementalAlterConfigs(req) } else { Request::AlterConfigs(req) };
        match self.call(request) {
            Response::AlterConfigs(mut r) | Response::IncrementalAlterConfigs(mut r) => r.results.remove(0),
            other => panic!("{other:?}"),
        }
    }
}

fn latest(recs: &[Record]) -> BTreeMap<Vec<u8>, (i64, Option<Vec<u8>>)> {
    recs.iter().map(|r| (r.key.clone().unwrap(), (r.offset, r.value.clone()))).collect()
}

#[test]
fn invalid_topic_configs_name_the_key() {
    let mut n = Node::new();
    for (key, value) in [
        ("cleanup.policy", "compacted"),
        ("retention.ms", "-2"),
        ("retention.bytes", "lots"),
        ("delete.retention.ms", "-1"),
        ("min.compaction.lag.ms", "x"),
        ("min.cleanable.dirty.ratio", "1.5"),
        ("segment.ms", "0"),
        ("retention.hours", "1"),
    ] {
        let r = n.create("t", &[(key, value)]);
        assert_eq!(r.error, ErrorCode::InvalidConfig, "{key}={value}");
        assert!(r.error_message.as_deref().unwrap().contains(key), "{key}: {:?}", r.error_message);
    }
    let ok = n.create("t", &[("cleanup.policy", "delete, compact"), ("retention.ms", "-1")]);
    assert_eq!(ok.error, ErrorCode::None);
    let d = n.describe("t");
    assert_eq!(d["cleanup.policy"], ("compact,delete".to_string(), false));
    assert_eq!(d["retention.ms"], ("-1".to_string(), false));
    assert_eq!(d["retention.bytes"], ("-1".to_string(), true));
    assert_eq!(d["delete.retention.ms"], ("86400000".to_string(), true));
}

#[test]
fn a_compacted_topic_refuses_records_without_a_key() {
    let mut n = Node::new();
    n.create("c", &[("cleanup.policy", "compact")]);
    let r = n.produce("c", &[(Some("k"), Some("v")), (None, Some("v"))], 1);
    assert_eq!(r.error, ErrorCode::InvalidRecord);
    assert!(r.error_message.unwrap().contains("no key"));
    assert_eq!(n.produce("c", &[(Some("k"), None)], 1).error, ErrorCode::None, "a tombstone has a key");
    n.create("d", &[]);
    assert_eq!(n.produce("d", &[(None, Some("v"))], 1).error, ErrorCode::None);
}

#[test]
fn retention_deletes_old_segments_and_fetches_below_the_start_are_out_of_range() {
    let mut n = Node::new();
    n.create("r", &[("retention.ms", "5000"), ("segment.bytes", "300")]);
    for i in 0..20 {
        n.produce("r", &[(Some("k"), Some(&format!("old-{i:030}")))], 1_000);
    }
    for i in 0..5 {
        n.produce("r", &[(Some("k"), Some(&format!("new-{i:030}")))], 9_000);
    }
    let end = n.list_offset("r", LATEST_TIMESTAMP);
    n.advance(CHECK_MS);
    assert_eq!(n.list_offset("r", EARLIEST_TIMESTAMP), 0, "nothing expired yet at 1000");
    n.advance(10 * CHECK_MS);
    let start = n.list_offset("r", EARLIEST_TIMESTAMP);
    assert!(start > 0 && start <= 20, "old segments went: start {start}");
    assert!(n.broker.housekeeping_stats().segments_deleted > 0);
    assert_eq!(n.list_offset("r", LATEST_TIMESTAMP), end);
    let f = n.fetch("r", 0);
    assert_eq!(f.error, ErrorCode::OffsetOutOfRange);
    assert_eq!(f.log_start_offset, start);
    let kept = n.read_all("r");
    assert!(kept.iter().all(|r| r.offset >= start));
    assert_eq!(kept.iter().filter(|r| r.value.as_ref().unwrap().starts_with(b"new")).count(), 5);
    // Recovery derives the same start from the files.
    let mut n = n.restart();
    assert_eq!(n.list_offset("r", EARLIEST_TIMESTAMP), start);
    assert_eq!(n.list_offset("r", LATEST_TIMESTAMP), end);
}

#[test]
fn size_retention_and_a_fully_expired_log_keep_the_end_offset() {
    let mut n = Node::new();
    n.create("s", &[("retention.bytes", "600"), ("segment.bytes", "300")]);
    for i in 0..30 {
        n.produce("s", &[(None, Some(&format!("{i:040}")))], 1);
    }
    n.advance(CHECK_MS);
    let size: u64 = n.broker.storage_mut().files().filter(|(f, _)| f.starts_with("s-0/")).map(|(_, d)| d.len() as u64).sum();
    assert!((600..900).contains(&size), "{size}");
    // Everything expires: the active segment is rolled, the end kept.
    let end = n.list_offset("s", LATEST_TIMESTAMP);
    let r = n.alter(true, "s", &[("retention.ms", AlterOp::Set, Some("10"))], false);
    assert_eq!(r.error, ErrorCode::None);
    n.advance(3 * CHECK_MS);
    assert_eq!(n.list_offset("s", EARLIEST_TIMESTAMP), end);
    assert_eq!(n.list_offset("s", LATEST_TIMESTAMP), end);
    assert_eq!(n.produce("s", &[(None, Some("after"))], 5000).base_offset, end);
}

#[test]
fn compaction_runs_in_steps_between_requests_and_keeps_offsets() {
    let mut n = Node::new();
    n.create("c", &[("cleanup.policy", "compact"), ("segment.bytes", "400"), ("delete.retention.ms", "0")]);
    let mut produced = Vec::new();
    for round in 0..10 {
        for k in 0..6 {
            let value = format!("r{round}");
            let tombstone = round == 9 && k == 0;
            let r = n.produce("c", &[(Some(&format!("key{k}")), (!tombstone).then_some(value.as_str()))], 100);
            produced.push((r.base_offset, k, round));
        }
    }
    let before = n.read_all("c");
    let end = n.list_offset("c", LATEST_TIMESTAMP);
    n.advance(CHECK_MS);
    let stats = n.broker.housekeeping_stats().clone();
    assert_eq!(stats.cleaner_passes, 1, "{stats:?}");
    assert!(stats.cleaner_steps > 3, "small steps: {stats:?}");
    assert!(n.ticks > 3, "one tick per step");
    assert!(stats.records_compacted > 0);
    let after = n.read_all("c");
    assert!(after.len() < before.len());
    assert_eq!(n.list_offset("c", LATEST_TIMESTAMP), end);
    // The latest record of each key is where it was; the tombstone
    // (delete.retention.ms=0) went with every earlier record of its key,
    // unless it sits in the active segment, which is never compacted.
    let (mut want, got) = (latest(&before), latest(&after));
    let tombstone = want.remove(b"key0".as_slice()).unwrap();
    assert_eq!(tombstone.1, None);
    match got.get(b"key0".as_slice()) {
        None => assert!(stats.records_compacted >= 10),
        Some(kept) => assert_eq!(kept, &tombstone),
    }
    assert!(after.iter().filter(|r| r.key.as_deref() == Some(b"key0")).count() <= 1);
    for (k, v) in &want {
        assert_eq!(got.get(k), Some(v));
    }
    // Requests in between steps work: produce more while a pass runs.
    for round in 10..20 {
        for k in 0..6 {
            n.produce("c", &[(Some(&format!("key{k}")), Some(&format!("r{round}")))], 200);
        }
    }
    // The next check starts a second pass; alternate one tick (one step)
    // and one produce, as the adapter interleaves them.
    n.advance(2 * CHECK_MS - 1);
    n.now = 2 * CHECK_MS;
    let mut steps = 0;
    while n.broker.housekeeping_stats().cleaner_passes < 2 {
        n.tick_once();
        n.produce("c", &[(Some("key1"), Some(&format!("during{steps}")))], 300);
        steps += 1;
        assert!(steps < 1000);
    }
    assert!(steps > 3, "the pass took {steps} ticks with produces in between");
    let all = n.read_all("c");
    let l = latest(&all);
    assert_eq!(l[&b"key1".to_vec()].1.as_deref(), Some(format!("during{}", steps - 1).as_bytes()));
    let mut n = n.restart();
    assert_eq!(n.read_all("c"), all, "the compacted log recovers as it is");
}

#[test]
fn alter_configs_sets_deletes_validates_and_persists() {
    let mut n = Node::new();
    n.create("a", &[("segment.bytes", "1000")]);
    // Incremental: set, and append to the list-valued cleanup.policy.
    let r = n.alter(true, "a", &[("retention.ms", AlterOp::Set, Some("60000")), ("cleanup.policy", AlterOp::Append, Some("compact"))], false);
    assert_eq!(r.error, ErrorCode::None, "{r:?}");
    let d = n.describe("a");
    assert_eq!(d["retention.ms"], ("60000".into(), false));
    assert_eq!(d["cleanup.policy"], ("compact,delete".into(), false));
    assert_eq!(d["segment.bytes"], ("1000".into(), false));
    // validate_only changes nothing; bad values and ops are refused.
    let r = n.alter(true, "a", &[("retention.ms", AlterOp::Set, Some("1"))], true);
    assert_eq!(r.error, ErrorCode::None);
    assert_eq!(n.describe("a")["retention.ms"].0, "60000");
    let r = n.alter(true, "a", &[("retention.ms", AlterOp::Set, Some("soon"))], false);
    assert_eq!(r.error, ErrorCode::InvalidConfig);
    assert!(r.error_message.unwrap().contains("retention.ms"));
    let r = n.alter(true, "a", &[("retention.ms", AlterOp::Append, Some("1"))], false);
    assert_eq!(r.error, ErrorCode::InvalidConfig);
    assert_eq!(n.alter(true, "nope", &[("retention.ms", AlterOp::Set, Some("1"))], false).error, ErrorCode::UnknownTopicOrPartition);
    // Delete goes back to the default; subtract from the list.
    n.alter(true, "a", &[("retention.ms", AlterOp::Delete, None), ("cleanup.policy", AlterOp::Subtract, Some("delete"))], false);
    let d = n.describe("a");
    assert_eq!(d["retention.ms"], ("604800000".into(), true));
    assert_eq!(d["cleanup.policy"], ("compact".into(), false));
    // AlterConfigs (not incremental) replaces the whole set of overrides.
    let r = n.alter(false, "a", &[("retention.bytes", AlterOp::Set, Some("12345"))], false);
    assert_eq!(r.error, ErrorCode::None);
    let d = n.describe("a");
    assert_eq!(d["retention.bytes"], ("12345".into(), false));
    assert!(d["segment.bytes"].1 && d["cleanup.policy"].1, "other overrides are gone: {d:?}");
    // Durable: a restart reads the new description.
    let mut n = n.restart();
    assert_eq!(n.describe("a")["retention.bytes"], ("12345".into(), false));
}

#[test]
fn a_topic_deleted_mid_compaction_leaves_no_files() {
    let mut n = Node::new();
    n.create("c", &[("cleanup.policy", "compact"), ("segment.bytes", "300")]);
    for i in 0..40 {
        n.produce("c", &[(Some(&format!("k{}", i % 3)), Some(&format!("{i:030}")))], 100);
    }
    // Run the check, then stop after the first cleaner steps.
    let due = *n.timers.first().unwrap();
    n.timers.clear();
    n.now = due;
    let mut out = Vec::new();
    for _ in 0..5 {
        n.broker.step(n.now, Input::Tick, &mut out);
        out.clear();
    }
    assert!(n.broker.housekeeping_stats().cleaner_steps > 0);
    assert_eq!(n.broker.housekeeping_stats().cleaner_passes, 0, "still mid-pass");
    match n.call(Request::DeleteTopics(DeleteTopicsRequest { names: vec!["c".into()] })) {
        Response::DeleteTopics(d) => assert_eq!(d.topics[0].1, ErrorCode::None),
        other => panic!("{other:?}"),
    }
    n.broker.step(n.now, Input::Tick, &mut out);
    assert!(n.broker.storage_mut().files().all(|(f, _)| !f.starts_with("c-0/")), "no segment or side file left");
    assert_eq!(n.broker.housekeeping_stats().cleaner_aborts, 1);
}

#[test]
fn produce_refuses_batches_with_fewer_records_than_offsets() {
    // Only compaction may leave gaps; a producer's batch must be dense.
    let mut n = Node::new();
    n.create("t", &[]);
    let mut b = BatchBuilder::new(Compression::None);
    b.push(Record { timestamp: 1, key: Some(b"k".to_vec()), value: Some(b"v".to_vec()), ..Record::default() });
    let dense = b.build();
    let h = records::validate_batch(&dense).unwrap();
    let gappy = records::encode_batch(&records::BatchHeader { last_offset_delta: 3, ..h }, 1, &dense[records::HEADER_LEN..]);
    let req = ProduceRequest {
        acks: -1,
        timeout_ms: 1000,
        transactional_id: None,
        topics: vec![("t".into(), vec![(0, Some(Bytes::from(gappy)))])],
    };
    let Response::Produce(p) = n.call(Request::Produce(req)) else { panic!() };
    assert_eq!(p.topics[0].1[0].error, ErrorCode::InvalidRecord);
    assert!(p.topics[0].1[0].error_message.as_deref().unwrap().contains("lastOffsetDelta"));
}

/// Commits through the group coordinator land in the compacted offsets
/// topic; the cleaner shrinks it and a restart still finds the latest
/// commit of every partition.
#[test]
fn the_offsets_topic_is_compacted_and_replays_the_latest_commits() {
    use millrace_core::group::*;
    let mut node = Node::new();
    // Commits are only for partitions that exist.
    let topic = NewTopic { name: "t".into(), num_partitions: 3, replication_factor: -1, has_assignments: false, configs: Vec::new() };
    match node.call(Request::CreateTopics(CreateTopicsRequest { topics: vec![topic], validate_only: false })) {
        Response::CreateTopics(c) => assert_eq!(c.topics[0].error, ErrorCode::None),
        other => panic!("{other:?}"),
    }
    let commit = |node: &mut Node, round: i64| {
        let partitions =
            (0..3).map(|p| CommitPartition { topic: "t".into(), partition: p, offset: round * 10 + i64::from(p), leader_epoch: -1, metadata: None }).collect();
        let req = OffsetCommitRequest { group_id: "g".into(), generation_id: -1, member_id: String::new(), group_instance_id: None, partitions };
        match node.call(Request::Group(GroupRequest::OffsetCommit(req))) {
            Response::Group(GroupResponse::OffsetCommit(r)) => assert!(r.partitions.iter().all(|p| p.2 == ErrorCode::None), "{r:?}"),
            other => panic!("{other:?}"),
        }
    };
    for round in 0..200 {
        commit(&mut node, round);
    }
    let before = node.read_all("__consumer_offsets").len();
    assert_eq!(before, 600);
    let described = node.describe("__consumer_offsets");
    assert_eq!(described["cleanup.policy"].0, "compact");
    node.advance(20 * CHECK_MS);
    let after = node.read_all("__consumer_offsets").len();
    assert!(after < before / 4, "compaction kept {after} of {before} records");
    let mut node = node.restart();
    let req = OffsetFetchRequest { groups: vec![OffsetFetchGroup { group_id: "g".into(), partitions: None }], require_stable: false };
    match node.call(Request::Group(GroupRequest::OffsetFetch(req))) {
        Response::Group(GroupResponse::OffsetFetch(r)) => {
            let got: Vec<(i32, i64)> = r.groups[0].partitions.iter().map(|p| (p.partition, p.offset)).collect();
            assert_eq!(got, vec![(0, 1990), (1, 1991), (2, 1992)]);
        }
        other => panic!("{other:?}"),
    }
    // Its configs are not the client's to change.
    let r = node.alter(true, "__consumer_offsets", &[("cleanup.policy", AlterOp::Set, Some("delete"))], false);
    assert_eq!(r.error, ErrorCode::InvalidRequest);
}
