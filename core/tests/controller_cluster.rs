//! Three controllers (a Raft quorum over the metadata log) and four brokers
//! on a seeded in-memory network. Brokers register, heartbeat, die and come
//! back; controllers crash, restart from what they made durable, and the
//! active one is cut off from everyone while it keeps running. Every
//! controller snapshots its image every few entries, so restarted and
//! lagging controllers start from snapshots (their own or the leader's).
//! Checked throughout: controllers at the same applied index hold the same
//! image; every (partition, leader epoch) has one leader, in the images and
//! in the records each controller reports as newly applied; and once
//! faults stop, every broker is registered and unfenced and every
//! partition has a leader within a bound.

use std::collections::BTreeMap;

use millrace_core::Millis;
use millrace_core::controller::*;
use millrace_core::raft::{self, Entry, HardState, Index, RaftConfig, RaftLog, Snapshot};
use millrace_core::rng::Rng;

const SESSION_MS: i64 = 1_000;

struct ControllerNode {
    machine: Option<Controller>,
    hard: HardState,
    /// Durable: the snapshot and the entries after it.
    snapshot: Option<Snapshot>,
    log: Vec<Entry>,
    timer: Option<Millis>,
    /// The machine's `applied_count` when its records were last read.
    cursor: u64,
    /// Times `recent_records` said to resync from the image (a snapshot
    /// from the leader was restored).
    resyncs: u64,
}

impl ControllerNode {
    fn base(&self) -> (Index, u64) {
        self.snapshot.as_ref().map_or((0, 0), |s| (s.index, s.term))
    }

    /// What `RaftStore::save_snapshot` does.
    fn save_snapshot(&mut self, index: Index, term: u64, data: Vec<u8>) {
        let (base, _) = self.base();
        assert!(index > base, "snapshot at {index} after one at {base}");
        let at = (index - base) as usize;
        let continues = at >= 1 && self.log.get(at - 1).is_some_and(|e| e.term == term);
        self.log = if continues { self.log.split_off(at) } else { Vec::new() };
        self.snapshot = Some(Snapshot { index, term, data });
    }
}

struct Broker {
    alive: bool,
    epoch: Option<u64>,
    next_heartbeat: Millis,
    /// Since when it waits for an answer (it gives up after a while, as a
    /// request timeout would: requests and answers can be lost).
    waiting: Option<Millis>,
}

enum Msg {
    Raft(raft::Envelope),
    Request { broker: BrokerId, controller: u64, request: ControllerRequest },
    Reply { broker: BrokerId, reply: ControllerReply },
}

struct Cluster {
    controllers: BTreeMap<u64, ControllerNode>,
    brokers: BTreeMap<BrokerId, Broker>,
    queue: BTreeMap<(Millis, u64), Msg>,
    seq: u64,
    now: Millis,
    rng: Rng,
    /// Controllers cut off from everyone (brokers included).
    isolated: Vec<u64>,
    leaders: BTreeMap<(String, i32, i32), BrokerId>,
    /// The image at each applied index, as the first controller there had it.
    images: BTreeMap<Index, MetadataImage>,
}

fn config(id: u64) -> ControllerConfig {
    ControllerConfig {
        raft: RaftConfig {
            id,
            voters: vec![1, 2, 3],
            election_timeout_min_ms: 300,
            election_timeout_max_ms: 600,
            heartbeat_interval_ms: 50,
            max_entries_per_message: 16,
        },
        broker_session_timeout_ms: SESSION_MS,
        new_controller_grace_ms: SESSION_MS,
        unclean_leader_election: false,
        // Often, so that snapshots are taken, sent and restored.
        snapshot_every: 5,
    }
}

impl Cluster {
    fn new(seed: u64) -> Self {
        let mut c = Self {
            controllers: BTreeMap::new(),
            brokers: (0..4).map(|b| (b, Broker { alive: true, epoch: None, next_heartbeat: 0, waiting: None })).collect(),
            queue: BTreeMap::new(),
            seq: 0,
            now: 0,
            rng: Rng::new(seed),
            isolated: Vec::new(),
            leaders: BTreeMap::new(),
            images: BTreeMap::new(),
        };
        for id in 1..=3 {
            let node = ControllerNode {
                machine: None,
                hard: HardState::default(),
                snapshot: None,
                log: Vec::new(),
                timer: None,
                cursor: 0,
                resyncs: 0,
            };
            c.controllers.insert(id, node);
            c.start_controller(id);
        }
        c
    }

    fn start_controller(&mut self, id: u64) {
        let seed = self.rng.next_u64();
        let node = self.controllers.get_mut(&id).unwrap();
        let (index, term) = node.base();
        let log = RaftLog::with_snapshot(index, term, node.log.clone()).unwrap();
        let machine = Controller::new(config(id), node.hard, log, node.snapshot.clone(), self.now, seed).unwrap();
        // It starts from its snapshot's image.
        assert_eq!(machine.applied_index(), index);
        if let Some(image) = self.images.get(&index) {
            assert_eq!(machine.image(), image, "controller {id} restarted from a snapshot unlike the image at {index}");
        }
        node.cursor = machine.applied_count();
        node.machine = Some(machine);
        node.timer = Some(self.now);
    }

    fn send(&mut self, msg: Msg) {
        let cut = match &msg {
            Msg::Raft(env) => self.isolated.contains(&env.from) || self.isolated.contains(&env.to),
            Msg::Request { controller, .. } => self.isolated.contains(controller),
            Msg::Reply { .. } => false,
        };
        if cut {
            return;
        }
        let delay = 1 + (self.rng.next_u64() % 10) as Millis;
        self.seq += 1;
        self.queue.insert((self.now + delay, self.seq), msg);
    }

    fn step_controller(&mut self, id: u64, input: ControllerInput) {
        let node = self.controllers.get_mut(&id).unwrap();
        let Some(m) = node.machine.as_mut() else { return };
        let mut out = Vec::new();
        m.step(self.now, input, &mut out);
        for e in out {
            let node = self.controllers.get_mut(&id).unwrap();
            match e {
                ControllerEffect::Raft(raft::Effect::PersistState(h)) => node.hard = h,
                ControllerEffect::Raft(raft::Effect::Append(es)) => {
                    assert!(es.first().is_none_or(|e| e.index == node.base().0 + node.log.len() as Index + 1));
                    node.log.extend(es);
                }
                ControllerEffect::Raft(raft::Effect::Truncate(i)) => {
                    assert!(i > node.base().0, "controller {id} truncates its snapshot");
                    node.log.truncate((i - node.base().0 - 1) as usize);
                }
                ControllerEffect::Raft(raft::Effect::SaveSnapshot { index, term, data }) => node.save_snapshot(index, term, data),
                ControllerEffect::Fatal { reason } => panic!("controller {id}: {reason}"),
                ControllerEffect::Raft(raft::Effect::Timer { at }) => node.timer = Some(at),
                ControllerEffect::Raft(raft::Effect::Send(env)) => self.send(Msg::Raft(env)),
                ControllerEffect::Raft(_) => {}
                // Cut off, the answer is lost: the broker times out and asks again.
            ControllerEffect::Reply { to, reply } => {
                if !self.isolated.contains(&id) {
                    self.send(Msg::Reply { broker: to as BrokerId, reply });
                }
            }
            }
        }
        self.check();
    }

    fn active(&self) -> Option<u64> {
        self.controllers
            .iter()
            .filter_map(|(id, n)| n.machine.as_ref().filter(|m| m.is_active()).map(|m| (m.raft().term(), *id)))
            .max()
            .map(|(_, id)| id)
    }

    fn broker_turn(&mut self, b: BrokerId) {
        let Some(active) = self.active() else { return };
        let broker = self.brokers.get_mut(&b).unwrap();
        if broker.waiting.is_some_and(|since| self.now - since > 500) {
            broker.waiting = None;
        }
        if !broker.alive || broker.waiting.is_some() || self.now < broker.next_heartbeat {
            return;
        }
        broker.next_heartbeat = self.now + 200;
        broker.waiting = Some(self.now);
        let request = match broker.epoch {
            None => ControllerRequest::Register { broker: b, host: format!("b{b}"), port: 9092 },
            Some(epoch) => ControllerRequest::Heartbeat { broker: b, epoch, caught_up: true },
        };
        self.send(Msg::Request { broker: b, controller: active, request });
    }

    fn deliver(&mut self, msg: Msg) {
        match msg {
            Msg::Raft(env) => {
                let to = env.to;
                self.step_controller(to, ControllerInput::Raft(env));
            }
            Msg::Request { broker, controller, request } => {
                if self.controllers[&controller].machine.is_none() {
                    self.brokers.get_mut(&broker).unwrap().waiting = None;
                    return;
                }
                self.step_controller(controller, ControllerInput::Request { from: broker as u64, request });
            }
            Msg::Reply { broker, reply } => {
                // (Replies to the test's own admin requests go nowhere.)
                let Some(b) = self.brokers.get_mut(&broker) else { return };
                b.waiting = None;
                if !b.alive {
                    return;
                }
                match reply {
                    ControllerReply::Registered { epoch } => b.epoch = Some(epoch),
                    ControllerReply::StaleEpoch => b.epoch = None,
                    _ => {}
                }
            }
        }
    }

    fn run(&mut self, until: Millis) {
        while self.now < until {
            let next_msg = self.queue.keys().next().map(|k| k.0);
            let next_timer = self.controllers.values().filter_map(|n| n.timer).min();
            let tick = self.now + 10;
            let t = [next_msg, next_timer, Some(tick)].into_iter().flatten().min().unwrap().min(until);
            self.now = t;
            while let Some((&k, _)) = self.queue.first_key_value() {
                if k.0 > t {
                    break;
                }
                let msg = self.queue.remove(&k).unwrap();
                self.deliver(msg);
            }
            let due: Vec<u64> = self.controllers.iter().filter(|(_, n)| n.timer.is_some_and(|at| at <= t)).map(|(id, _)| *id).collect();
            for id in due {
                self.controllers.get_mut(&id).unwrap().timer = None;
                self.step_controller(id, ControllerInput::Tick);
            }
            for b in 0..4 {
                self.broker_turn(b);
            }
        }
    }

    fn check(&mut self) {
        for (id, node) in self.controllers.iter_mut() {
            let Some(m) = node.machine.as_ref() else { continue };
            // State machine safety, compared on the state reached.
            let image = self.images.entry(m.applied_index()).or_insert_with(|| m.image().clone());
            assert_eq!(m.image(), image, "controller {id} has another image at index {}", m.applied_index());
            for (name, t) in &image.topics {
                for (p, part) in t.partitions.iter().enumerate() {
                    if let Some(l) = part.leader {
                        let prev = self.leaders.insert((name.clone(), p as i32, part.leader_epoch), l);
                        assert!(prev.is_none_or(|x| x == l), "{name}-{p} epoch {}: leaders {prev:?} and {l}", part.leader_epoch);
                    }
                }
            }
            // The records reported as new tell the same story.
            let (cursor, records) = m.recent_records(node.cursor);
            node.cursor = cursor;
            let Some(records) = records else {
                node.resyncs += 1;
                continue;
            };
            for r in records {
                if let MetadataRecord::PartitionChange { topic, partition, leader: Some(l), leader_epoch, .. } = r {
                    let prev = self.leaders.insert((topic.clone(), partition, leader_epoch), l);
                    assert!(prev.is_none_or(|p| p == l), "{topic}-{partition} epoch {leader_epoch}: leaders {prev:?} and {l}");
                }
            }
        }
    }

    fn image(&self) -> MetadataImage {
        let a = self.active().expect("an active controller");
        self.controllers[&a].machine.as_ref().unwrap().image().clone()
    }

    fn create_topic(&mut self, name: &str) {
        let a = self.active().expect("an active controller");
        let request = ControllerRequest::CreateTopic { name: name.into(), partitions: 4, replication_factor: 3, configs: vec![] };
        self.step_controller(a, ControllerInput::Request { from: 99, request });
    }
}

#[test]
fn brokers_register_and_a_dead_leader_is_replaced_from_the_isr() {
    let mut c = Cluster::new(3);
    c.run(3_000);
    let image = c.image();
    assert_eq!(image.live_brokers(), vec![0, 1, 2, 3], "{image:?}");
    c.create_topic("t");
    c.run(4_000);
    let image = c.image();
    let t = &image.topics["t"];
    assert!(t.partitions.iter().all(|p| p.leader.is_some() && p.replicas.len() == 3));
    // Broker 0 dies: after its session, it is fenced and leads nothing.
    let led: Vec<usize> = t.partitions.iter().enumerate().filter(|(_, p)| p.leader == Some(0)).map(|(i, _)| i).collect();
    assert!(!led.is_empty());
    c.brokers.get_mut(&0).unwrap().alive = false;
    c.run(c.now + SESSION_MS + 1_000);
    let image = c.image();
    assert!(image.brokers[&0].fenced);
    for i in led {
        let p = &image.topics["t"].partitions[i];
        assert!(p.leader.is_some_and(|l| l != 0), "t-{i}: {p:?}");
        assert_eq!(p.leader_epoch, 1);
    }
    // It comes back (a new incarnation): registered, caught up, unfenced.
    let b = c.brokers.get_mut(&0).unwrap();
    b.alive = true;
    b.epoch = None;
    c.run(c.now + 2_000);
    assert!(!c.image().brokers[&0].fenced);
}

#[test]
fn the_controller_quorum_survives_crashes_with_one_story() {
    let (mut snapshots, mut restores) = (0, 0);
    for seed in 0..24u64 {
        let mut c = Cluster::new(seed);
        let mut rng = Rng::new(seed ^ 0xc0);
        c.run(2_000);
        c.create_topic("t");
        for _ in 0..15 {
            let until = c.now + 200 + (rng.next_u64() % 800) as Millis;
            c.run(until);
            match rng.next_u64() % 7 {
                5 => {
                    // The active controller is cut off (it keeps running).
                    if let Some(a) = c.active() {
                        c.isolated.push(a);
                    }
                }
                6 => c.isolated.clear(),
                0 => {
                    if let Some(a) = c.active() {
                        c.controllers.get_mut(&a).unwrap().machine = None;
                    }
                }
                1 => {
                    let id = 1 + rng.next_u64() % 3;
                    if c.controllers[&id].machine.is_none() {
                        c.start_controller(id);
                    }
                }
                2 => {
                    let b = (rng.next_u64() % 4) as BrokerId;
                    c.brokers.get_mut(&b).unwrap().alive = false;
                }
                _ => {
                    let b = (rng.next_u64() % 4) as BrokerId;
                    let broker = c.brokers.get_mut(&b).unwrap();
                    if !broker.alive {
                        broker.alive = true;
                        broker.epoch = None;
                    }
                }
            }
        }
        // Heal: every controller and broker up, the network whole.
        c.isolated.clear();
        for id in 1..=3 {
            if c.controllers[&id].machine.is_none() {
                c.start_controller(id);
            }
        }
        for b in c.brokers.values_mut() {
            if !b.alive {
                b.alive = true;
                b.epoch = None;
            }
        }
        c.run(c.now + 6_000);
        let image = c.image();
        assert_eq!(image.live_brokers(), vec![0, 1, 2, 3], "seed {seed}: {:?}", image.brokers);
        if let Some(t) = image.topics.get("t") {
            for (i, p) in t.partitions.iter().enumerate() {
                assert!(p.leader.is_some(), "seed {seed}: t-{i} has no leader after the heal: {p:?}");
            }
        }
        snapshots += c.controllers.values().filter(|n| n.snapshot.is_some()).count();
        restores += c.controllers.values().map(|n| n.resyncs).sum::<u64>();
    }
    // Snapshots were taken, and some reached a controller by InstallSnapshot.
    assert!(snapshots >= 24 && restores >= 3, "{snapshots} controllers with snapshots, {restores} restores");
}

#[test]
fn a_restarted_controller_starts_from_its_snapshot_and_catches_up_from_the_leaders() {
    let mut c = Cluster::new(5);
    c.run(3_000);
    c.create_topic("t");
    c.run(4_000);
    let active = c.active().expect("an active controller");
    let f = (1..=3).find(|&id| id != active).unwrap();
    let own = c.controllers[&f].base().0;
    assert!(own >= 5, "controller {f} took no snapshot of its own");
    c.controllers.get_mut(&f).unwrap().machine = None;
    // While it is down: more metadata, and snapshots past its log's end.
    for (i, name) in ["u", "v", "w", "x", "y", "z"].iter().enumerate() {
        c.create_topic(name);
        c.run(c.now + 300);
        let b = (i % 4) as BrokerId;
        c.brokers.get_mut(&b).unwrap().alive = i % 2 == 0;
        c.run(c.now + 300);
    }
    for b in c.brokers.values_mut() {
        if !b.alive {
            b.alive = true;
            b.epoch = None;
        }
    }
    c.run(c.now + 3_000);
    let active = c.active().expect("an active controller");
    let leader_base = c.controllers[&active].base().0;
    let f_end = own + c.controllers[&f].log.len() as Index;
    assert!(leader_base > f_end, "the leader's snapshot ({leader_base}) must be past the follower's log ({f_end})");
    // The restart begins at its own snapshot (checked in start_controller),
    // then the leader's snapshot replaces it.
    c.start_controller(f);
    c.run(c.now + 2_000);
    let node = &c.controllers[&f];
    assert!(node.resyncs >= 1, "controller {f} never restored the leader's snapshot");
    assert!(node.base().0 >= leader_base);
    let m = node.machine.as_ref().unwrap();
    let leader = c.controllers[&active].machine.as_ref().unwrap();
    assert_eq!(m.applied_index(), leader.applied_index());
    assert_eq!(m.image(), leader.image());
    assert_eq!(c.image().live_brokers(), vec![0, 1, 2, 3]);
}
