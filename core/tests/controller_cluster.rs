//! Three controllers (a Raft quorum over the metadata log) and four brokers
//! on a seeded in-memory network. Brokers register, heartbeat, die and come
//! back; controllers crash, restart from what they made durable, and the
//! active one is cut off from everyone while it keeps running. Checked
//! throughout: the controllers' applied metadata records agree (each is a
//! prefix of the longest); every (partition, leader epoch) has one leader;
//! and once faults stop, every broker is registered and unfenced and every
//! partition has a leader within a bound.

use std::collections::BTreeMap;

use millrace_core::Millis;
use millrace_core::controller::*;
use millrace_core::raft::{self, Entry, HardState, RaftConfig, RaftLog};
use millrace_core::rng::Rng;

const SESSION_MS: i64 = 1_000;

struct ControllerNode {
    machine: Option<Controller>,
    hard: HardState,
    log: Vec<Entry>,
    timer: Option<Millis>,
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
        };
        for id in 1..=3 {
            c.controllers.insert(id, ControllerNode { machine: None, hard: HardState::default(), log: Vec::new(), timer: None });
            c.start_controller(id);
        }
        c
    }

    fn start_controller(&mut self, id: u64) {
        let seed = self.rng.next_u64();
        let node = self.controllers.get_mut(&id).unwrap();
        let log = RaftLog::from_entries(node.log.clone()).unwrap();
        node.machine = Some(Controller::new(config(id), node.hard, log, self.now, seed));
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
                ControllerEffect::Raft(raft::Effect::Append(es)) => node.log.extend(es),
                ControllerEffect::Raft(raft::Effect::Truncate(i)) => node.log.truncate(i as usize - 1),
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
        let logs: Vec<&[MetadataRecord]> = self.controllers.values().filter_map(|n| n.machine.as_ref()).map(|m| m.applied()).collect();
        let longest = logs.iter().max_by_key(|l| l.len()).copied().unwrap_or(&[]);
        for l in &logs {
            assert_eq!(*l, &longest[..l.len()], "controllers applied different metadata records");
        }
        for r in longest {
            if let MetadataRecord::PartitionChange { topic, partition, leader: Some(l), leader_epoch, .. } = r {
                let prev = self.leaders.insert((topic.clone(), *partition, *leader_epoch), *l);
                assert!(prev.is_none_or(|p| p == *l), "{topic}-{partition} epoch {leader_epoch}: leaders {prev:?} and {l}");
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
    }
}
