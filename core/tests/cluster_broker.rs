//! Brokers in cluster mode, driven through `step` by an in-memory network:
//! the controller quorum, replication, acks=all and leader failover,
//! without the adapter. Seeded and single-threaded, so every run is the
//! same.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use millrace_core::ErrorCode;
use millrace_core::broker::*;
use millrace_core::records::{BatchBuilder, Compression, Record};
use millrace_core::storage::{MemStorage, Storage};

const TICK: i64 = 10;

struct Node {
    broker: Broker<MemStorage>,
    timers: BTreeSet<i64>,
    up: bool,
}

struct Net {
    nodes: BTreeMap<i32, Node>,
    now: i64,
    /// (deliver at, from, to, message)
    wire: VecDeque<(i64, i32, i32, PeerMessage)>,
    replies: BTreeMap<RequestId, Response>,
    cut: BTreeSet<(i32, i32)>,
    seq: u64,
    /// Nodes whose syncs wait until the test releases them (a slow disk).
    hold_syncs: BTreeSet<i32>,
    /// Syncs started and held: (node, ticket).
    held: Vec<(i32, u64)>,
}

fn config(id: i32, voters: &[i32]) -> BrokerConfig {
    BrokerConfig {
        node_id: id,
        advertised_host: format!("node{id}"),
        advertised_port: 9092,
        cluster: Some(ClusterConfig { voters: voters.to_vec(), ..ClusterConfig::default() }),
        ..BrokerConfig::default()
    }
}

impl Net {
    fn new(n: i32) -> Self {
        let voters: Vec<i32> = (1..=n).collect();
        let nodes = voters
            .iter()
            .map(|id| {
                let (broker, _) = Broker::open(config(*id, &voters), MemStorage::new(), 100 + *id as u64).unwrap();
                (*id, Node { broker, timers: BTreeSet::new(), up: true })
            })
            .collect();
        let mut net = Self {
            nodes,
            now: 1_000,
            wire: VecDeque::new(),
            replies: BTreeMap::new(),
            cut: BTreeSet::new(),
            seq: 0,
            hold_syncs: BTreeSet::new(),
            held: Vec::new(),
        };
        for id in 1..=n {
            net.step(id, Input::Tick);
        }
        net
    }

    fn step(&mut self, id: i32, input: Input) {
        let mut out = Vec::new();
        let now = self.now;
        let node = self.nodes.get_mut(&id).unwrap();
        if !node.up {
            return;
        }
        node.broker.step(now, input, &mut out);
        let mut sync = false;
        for e in out {
            match e {
                Effect::Reply { id, response } => {
                    self.replies.insert(id, response);
                }
                Effect::Timer { at } => {
                    self.nodes.get_mut(&id).unwrap().timers.insert(at);
                }
                Effect::SyncNeeded => sync = true,
                Effect::Fatal { reason } => panic!("node {id} failed: {reason}"),
                Effect::Send { to, message } => self.wire.push_back((now + 1, id, to, message)),
                // Syncs run by "the adapter", as the real one does in a
                // cluster: finished at once, or held back.
                Effect::SyncFiles { ticket, .. } if self.hold_syncs.contains(&id) => self.held.push((id, ticket)),
                Effect::SyncFiles { ticket, .. } => self.step(id, Input::Synced { ticket }),
            }
        }
        if sync {
            self.step(id, Input::SyncStart);
        }
    }

    /// Lets `id` sync again, and finishes its held syncs.
    fn release_syncs(&mut self, id: i32) {
        self.hold_syncs.remove(&id);
        let (mine, others): (Vec<_>, Vec<_>) = std::mem::take(&mut self.held).into_iter().partition(|(n, _)| *n == id);
        self.held = others;
        for (_, ticket) in mine {
            self.step(id, Input::Synced { ticket });
        }
    }

    /// Advances time by `ms`, delivering messages and firing timers.
    fn run(&mut self, ms: i64) {
        let end = self.now + ms;
        while self.now < end {
            self.now += 1;
            while self.wire.front().is_some_and(|(at, ..)| *at <= self.now) {
                let (_, from, to, message) = self.wire.pop_front().unwrap();
                if self.cut.contains(&(from, to)) || !self.nodes[&from].up || !self.nodes[&to].up {
                    continue;
                }
                self.step(to, Input::Peer { from, message });
            }
            if self.now % TICK == 0 {
                let ids: Vec<i32> = self.nodes.keys().copied().collect();
                for id in ids {
                    let due = self.nodes[&id].timers.first().is_some_and(|t| *t <= self.now);
                    if due {
                        let node = self.nodes.get_mut(&id).unwrap();
                        while node.timers.first().is_some_and(|t| *t <= self.now) {
                            node.timers.pop_first();
                        }
                        self.step(id, Input::Tick);
                    }
                }
            }
        }
    }

    fn request(&mut self, node: i32, request: Request) -> RequestId {
        self.seq += 1;
        let id = RequestId { conn: node as u64, seq: self.seq };
        self.step(node, Input::Request { id, request });
        id
    }

    /// Sends a request and runs until it is answered (or `limit_ms`).
    fn call(&mut self, node: i32, request: Request, limit_ms: i64) -> Option<Response> {
        let id = self.request(node, request);
        for _ in 0..limit_ms {
            if let Some(r) = self.replies.remove(&id) {
                return Some(r);
            }
            self.run(1);
        }
        self.replies.remove(&id)
    }

    fn isolate(&mut self, id: i32) {
        for other in self.nodes.keys().copied().collect::<Vec<_>>() {
            if other != id {
                self.cut.insert((id, other));
                self.cut.insert((other, id));
            }
        }
    }

    fn heal(&mut self) {
        self.cut.clear();
    }

    fn leader_of(&self, topic: &str, partition: i32) -> Option<i32> {
        let leaders: Vec<i32> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.up)
            .filter(|(_, n)| n.broker.replica_status(topic, partition).is_some_and(|s| s.leader))
            .map(|(id, _)| *id)
            .collect();
        leaders.last().copied()
    }

    fn leader_epoch_of(&self, node: i32, topic: &str) -> i32 {
        self.nodes[&node].broker.replica_status(topic, 0).map_or(-1, |s| s.leader_epoch)
    }

    fn create_topic(&mut self, name: &str, partitions: i32, min_insync: i32) {
        let request = Request::CreateTopics(CreateTopicsRequest {
            topics: vec![NewTopic {
                name: name.into(),
                num_partitions: partitions,
                replication_factor: 3,
                has_assignments: false,
                configs: vec![("min.insync.replicas".into(), Some(min_insync.to_string()))],
            }],
            validate_only: false,
        });
        let node = *self.nodes.keys().next().unwrap();
        let Some(Response::CreateTopics(r)) = self.call(node, request, 3_000) else { panic!("no answer to CreateTopics") };
        assert_eq!(r.topics[0].error, ErrorCode::None, "{:?}", r.topics[0].error_message);
        self.run(500);
    }

    fn produce(&mut self, node: i32, topic: &str, values: std::ops::Range<usize>, acks: i16) -> Option<ProducePartitionResponse> {
        match self.call(node, produce_request(topic, values, acks), 6_000)? {
            Response::Produce(r) => Some(r.topics[0].1[0].clone()),
            other => panic!("unexpected {other:?}"),
        }
    }

    /// Every live replica's log end and status of partition 0.
    fn statuses(&self, topic: &str) -> Vec<(i32, ReplicaStatus)> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.up)
            .filter_map(|(id, n)| Some((*id, n.broker.replica_status(topic, 0)?)))
            .collect()
    }
}

fn produce_request(topic: &str, values: std::ops::Range<usize>, acks: i16) -> Request {
    let mut b = BatchBuilder::new(Compression::None);
    for i in values {
        b.push(Record { offset: 0, timestamp: 1, key: None, value: Some(format!("v{i}").into_bytes()), headers: vec![] });
    }
    Request::Produce(ProduceRequest {
        acks,
        timeout_ms: 5_000,
        transactional_id: None,
        topics: vec![(topic.into(), vec![(0, Some(b.build().into()))])],
    })
}

fn settled(n: i32) -> Net {
    let mut net = Net::new(n);
    net.run(5_000);
    let active: Vec<i32> = net.nodes.iter().filter(|(_, n)| n.broker.is_active_controller()).map(|(id, _)| *id).collect();
    assert_eq!(active.len(), 1, "one active controller after 5 s, got {active:?}");
    net
}

#[test]
fn acks_all_is_answered_once_every_in_sync_replica_has_the_batch() {
    let mut net = settled(3);
    net.create_topic("t", 1, 2);
    let leader = net.leader_of("t", 0).expect("a leader");
    let r = net.produce(leader, "t", 0..5, -1).expect("answered");
    assert_eq!(r.error, ErrorCode::None, "{:?}", r.error_message);
    assert_eq!(r.base_offset, 0);
    net.run(1_000);
    for (id, s) in net.statuses("t") {
        assert_eq!(s.log_end, 5, "node {id} holds the batch");
    }
    let s = net.nodes[&leader].broker.replica_status("t", 0).unwrap();
    assert_eq!(s.high_watermark, 5);
    assert_eq!(s.isr.len(), 3);
    // A follower refuses writes.
    let follower = (1..=3).find(|n| *n != leader).unwrap();
    let r = net.produce(follower, "t", 5..6, -1).unwrap();
    assert_eq!(r.error, ErrorCode::NotLeaderOrFollower);
}

#[test]
fn followers_copy_a_batch_before_the_leader_syncs_it_but_acks_all_waits_for_that_sync() {
    let mut net = settled(3);
    net.create_topic("t", 1, 2);
    let leader = net.leader_of("t", 0).expect("a leader");
    net.run(500);
    // The leader's disk is slow: its sync of the batch has not happened.
    net.hold_syncs.insert(leader);
    let id = net.request(leader, produce_request("t", 0..5, -1));
    net.run(300);
    for (n, s) in net.statuses("t") {
        if n != leader {
            assert_eq!(s.log_end, 5, "follower {n} copied (and synced) the batch while the leader's sync was pending");
        }
    }
    let s = net.nodes[&leader].broker.replica_status("t", 0).unwrap();
    assert_eq!(s.high_watermark, 0, "the high watermark counts the leader's own copy only once synced");
    assert!(!net.replies.contains_key(&id), "acks=all answered before the leader synced the batch");
    net.release_syncs(leader);
    net.run(50);
    let Some(Response::Produce(r)) = net.replies.remove(&id) else { panic!("acks=all not answered after the leader's sync") };
    let r = &r.topics[0].1[0];
    assert_eq!((r.error, r.base_offset), (ErrorCode::None, 0), "{:?}", r.error_message);
    assert_eq!(net.nodes[&leader].broker.replica_status("t", 0).unwrap().high_watermark, 5);
}

#[test]
fn without_enough_in_sync_replicas_acks_all_is_refused() {
    let mut net = settled(3);
    net.create_topic("t", 1, 2);
    let leader = net.leader_of("t", 0).unwrap();
    for n in 1..=3 {
        if n != leader {
            net.nodes.get_mut(&n).unwrap().up = false;
        }
    }
    // The followers are gone: the leader cannot get acks=all through. It
    // either waits (the ISR still names them) or refuses; never says yes.
    let r = net.produce(leader, "t", 0..1, -1);
    assert!(r.as_ref().is_none_or(|r| r.error != ErrorCode::None), "acks=all acknowledged without replicas: {r:?}");
}

#[test]
fn an_isolated_leader_is_replaced_and_its_unreplicated_writes_are_cut() {
    let mut net = settled(3);
    net.create_topic("t", 1, 2);
    let old = net.leader_of("t", 0).unwrap();
    let r = net.produce(old, "t", 0..3, -1).unwrap();
    assert_eq!(r.error, ErrorCode::None);
    net.run(500);
    net.isolate(old);
    // acks=1 on the isolated leader: taken, never replicated.
    let r = net.produce(old, "t", 3..5, 1).unwrap();
    assert_eq!(r.error, ErrorCode::None);
    net.run(4_000);
    let new = (1..=3).filter(|n| *n != old).find(|n| net.nodes[n].broker.replica_status("t", 0).is_some_and(|s| s.leader));
    let new = new.expect("a new leader among the connected nodes within 4 s");
    assert!(net.leader_epoch_of(new, "t") > net.leader_epoch_of(old, "t"), "the new leader has a newer epoch");
    let r = net.produce(new, "t", 10..12, -1).unwrap();
    assert_eq!(r.error, ErrorCode::None, "{:?}", r.error_message);
    assert_eq!(r.base_offset, 3, "the new leader continues after the replicated records");
    net.heal();
    net.run(6_000);
    let statuses = net.statuses("t");
    for (id, s) in &statuses {
        assert_eq!(s.log_end, 5, "node {id}: the old leader cut its two unreplicated records and copied the new ones");
    }
    let leaders: Vec<_> = statuses.iter().filter(|(_, s)| s.leader).collect();
    assert_eq!(leaders.len(), 1);
    assert_eq!(leaders[0].1.isr.len(), 3, "the old leader rejoined the ISR");
}

#[test]
fn topics_are_created_and_deleted_through_the_controller_from_any_node() {
    let mut net = settled(3);
    for k in 1..=4 {
        let node = 1 + (k % 3);
        let request = Request::CreateTopics(CreateTopicsRequest {
            topics: vec![NewTopic { name: format!("c{k}"), num_partitions: 2, replication_factor: -1, has_assignments: false, configs: vec![] }],
            validate_only: false,
        });
        let Some(Response::CreateTopics(r)) = net.call(node, request, 3_000) else { panic!("no answer") };
        assert_eq!(r.topics[0].error, ErrorCode::None, "c{k} via node {node}: {:?}", r.topics[0].error_message);
        assert_eq!(r.topics[0].replication_factor, 3);
        if k > 1 {
            let request = Request::DeleteTopics(DeleteTopicsRequest { names: vec![format!("c{}", k - 1)] });
            let Some(Response::DeleteTopics(r)) = net.call(node, request, 3_000) else { panic!("no answer") };
            assert_eq!(r.topics[0].1, ErrorCode::None, "deleting c{}: {:?}", k - 1, r.topics[0].2);
        }
        net.run(300);
    }
    for (id, n) in &net.nodes {
        let names: Vec<&str> = n.broker.topic_names().collect();
        assert_eq!(names, vec!["c4"], "node {id} holds only the last topic");
    }
    let request = Request::CreateTopics(CreateTopicsRequest {
        topics: vec![NewTopic { name: "c4".into(), num_partitions: 1, replication_factor: 4, has_assignments: false, configs: vec![] }],
        validate_only: false,
    });
    let Some(Response::CreateTopics(r)) = net.call(1, request, 3_000) else { panic!("no answer") };
    assert_eq!(r.topics[0].error, ErrorCode::TopicAlreadyExists);
    let request = Request::CreateTopics(CreateTopicsRequest {
        topics: vec![NewTopic { name: "c5".into(), num_partitions: 1, replication_factor: 4, has_assignments: false, configs: vec![] }],
        validate_only: false,
    });
    let Some(Response::CreateTopics(r)) = net.call(2, request, 3_000) else { panic!("no answer") };
    assert_eq!(r.topics[0].error, ErrorCode::InvalidReplicationFactor, "{:?}", r.topics[0].error_message);
}

/// Creates (or deletes) `name` with one replica through `node`; the answer.
fn churn(net: &mut Net, node: i32, name: &str, create: bool) -> ErrorCode {
    let request = if create {
        let topic = NewTopic { name: name.into(), num_partitions: 1, replication_factor: 1, has_assignments: false, configs: vec![] };
        Request::CreateTopics(CreateTopicsRequest { topics: vec![topic], validate_only: false })
    } else {
        Request::DeleteTopics(DeleteTopicsRequest { names: vec![name.into()] })
    };
    match net.call(node, request, 3_000) {
        Some(Response::CreateTopics(r)) => r.topics[0].error,
        Some(Response::DeleteTopics(r)) => r.topics[0].1,
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn a_node_behind_the_metadata_snapshot_resyncs_its_topics_from_it() {
    let mut net = settled(3);
    assert_eq!(churn(&mut net, 1, "gone", true), ErrorCode::None);
    net.run(1_000);
    let active = (1..=3).find(|n| net.nodes[n].broker.is_active_controller()).unwrap();
    let away = (1..=3).find(|n| *n != active).unwrap();
    assert!(net.nodes[&away].broker.topic_names().any(|t| t == "gone"));
    net.isolate(away);
    // While it is away: "gone" is deleted, and over a thousand more
    // entries commit, so the others snapshot past everything it holds.
    assert_eq!(churn(&mut net, active, "gone", false), ErrorCode::None);
    for i in 0..520 {
        assert_eq!(churn(&mut net, active, "churn", true), ErrorCode::None, "create {i}");
        assert_eq!(churn(&mut net, active, "churn", false), ErrorCode::None, "delete {i}");
    }
    let snapshot = "meta/raft/snapshot";
    assert!(net.nodes.get_mut(&active).unwrap().broker.storage_mut().read_all(snapshot).unwrap().is_some());
    assert!(net.nodes.get_mut(&away).unwrap().broker.storage_mut().read_all(snapshot).unwrap().is_none());
    net.heal();
    net.run(5_000);
    // It got the leader's snapshot, stored it, and acted on the image: the
    // topic deleted while it was away is gone here too.
    assert!(net.nodes.get_mut(&away).unwrap().broker.storage_mut().read_all(snapshot).unwrap().is_some());
    let image = |n: &Node| n.broker.metadata_image().unwrap().0.clone();
    assert_eq!(image(&net.nodes[&away]), image(&net.nodes[&active]));
    let names: Vec<&str> = net.nodes[&away].broker.topic_names().collect();
    assert!(!names.contains(&"gone"), "node {away} still has the deleted topic: {names:?}");
    // Restarted, it starts from its stored snapshot and catches up again.
    let storage = std::mem::take(net.nodes.get_mut(&away).unwrap().broker.storage_mut());
    let (broker, report) = Broker::open(config(away, &[1, 2, 3]), storage, 7).unwrap();
    assert_eq!(report.metadata_log_cut, None);
    assert_eq!(broker.metadata_image().unwrap().0.brokers.len(), 3, "the image comes from the stored snapshot");
    net.nodes.get_mut(&away).unwrap().broker = broker;
    net.nodes.get_mut(&away).unwrap().timers.clear();
    net.step(away, Input::Tick);
    net.run(3_000);
    assert_eq!(image(&net.nodes[&away]), image(&net.nodes[&active]));
    assert!(!net.nodes[&away].broker.topic_names().any(|t| t == "gone"));
}

#[test]
fn an_acks_all_write_is_answered_when_the_isr_drops_a_dead_follower() {
    let mut net = settled(3);
    net.create_topic("t", 1, 2);
    let leader = net.leader_of("t", 0).unwrap();
    let dead = (1..=3).find(|n| *n != leader).unwrap();
    net.nodes.get_mut(&dead).unwrap().up = false;
    let mut b = BatchBuilder::new(Compression::None);
    b.push(Record { offset: 0, timestamp: 1, key: None, value: Some(b"x".to_vec()), headers: vec![] });
    let request = Request::Produce(ProduceRequest {
        acks: -1,
        timeout_ms: 30_000,
        transactional_id: None,
        topics: vec![("t".into(), vec![(0, Some(b.build().into()))])],
    });
    let id = net.request(leader, request);
    // The session of the dead follower expires (1.5 s), the controller
    // drops it from the ISR; nothing else is appended. The write must be
    // answered then, not at its 30 s timeout.
    net.run(3_000);
    let Some(Response::Produce(r)) = net.replies.remove(&id) else { panic!("acks=all still waiting 3 s after the follower died") };
    assert_eq!(r.topics[0].1[0].error, ErrorCode::None);
    assert_eq!(net.nodes[&leader].broker.replica_status("t", 0).unwrap().isr.len(), 2);
}
