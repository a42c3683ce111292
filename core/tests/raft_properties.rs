//! The Raft core under a seeded in-memory network (raft-rs's and
//! quinn-proto's test style): 3 or 5 nodes, messages delayed, dropped and
//! cut by partitions, nodes crashing and restarting from what they made
//! durable, proposals arriving all along. Checked at every step:
//!
//! - election safety: at most one leader per term;
//! - state machine safety: no two nodes apply different entries at an index;
//! - leader completeness: a new leader holds every entry applied so far;
//! - log matching: two logs with the same (index, term) agree up to there;
//! - the effects describe the node: its durable log equals its memory log;
//! - liveness: once faults stop, a leader emerges and a proposal commits
//!   on every node within a bound.

use std::collections::{BTreeMap, BTreeSet};

use millrace_core::Millis;
use millrace_core::raft::*;
use millrace_core::rng::Rng;
use proptest::prelude::*;

struct Node {
    raft: Option<RaftNode>,
    hard: HardState,
    log: Vec<Entry>,
    timer: Option<Millis>,
    incarnation: u64,
}

struct Sim {
    config: RaftConfig,
    nodes: BTreeMap<NodeId, Node>,
    now: Millis,
    queue: BTreeMap<(Millis, u64), Envelope>,
    seq: u64,
    rng: Rng,
    /// Nodes cut off from everyone.
    isolated: BTreeSet<NodeId>,
    drop_per_mille: u64,
    leaders: BTreeMap<Term, NodeId>,
    /// What was applied, by index (the one true sequence).
    applied: Vec<Entry>,
    next_value: u64,
}

impl Sim {
    fn new(seed: u64, n: u64) -> Self {
        let voters: Vec<NodeId> = (1..=n).collect();
        let config = RaftConfig {
            voters: voters.clone(),
            election_timeout_min_ms: 300,
            election_timeout_max_ms: 600,
            heartbeat_interval_ms: 50,
            // One entry per message makes followers lag entry by entry,
            // which the subtle commit rules need to be tested.
            max_entries_per_message: 1 + (seed % 4) as usize,
            ..RaftConfig::default()
        };
        let mut sim = Self {
            config,
            nodes: BTreeMap::new(),
            now: 0,
            queue: BTreeMap::new(),
            seq: 0,
            rng: Rng::new(seed),
            isolated: BTreeSet::new(),
            drop_per_mille: 0,
            leaders: BTreeMap::new(),
            applied: Vec::new(),
            next_value: 0,
        };
        for id in voters {
            sim.nodes.insert(id, Node { raft: None, hard: HardState::default(), log: Vec::new(), timer: None, incarnation: 0 });
            sim.start(id);
        }
        sim
    }

    fn start(&mut self, id: NodeId) {
        let seed = self.rng.next_u64();
        let config = RaftConfig { id, ..self.config.clone() };
        let node = self.nodes.get_mut(&id).unwrap();
        let log = RaftLog::from_entries(node.log.clone()).expect("durable log is consecutive");
        node.raft = Some(RaftNode::new(config, node.hard, log, self.now, seed));
        node.incarnation += 1;
        node.timer = Some(self.now);
    }

    fn crash(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).unwrap();
        node.raft = None;
        node.timer = None;
    }

    fn step(&mut self, id: NodeId, input: Input) {
        let Some(raft) = self.nodes.get_mut(&id).unwrap().raft.as_mut() else { return };
        let mut out = Vec::new();
        let was_leader = raft.role() == Role::Leader;
        raft.step(self.now, input, &mut out);
        let (role, term) = (raft.role(), raft.term());
        let memory_log = raft.log().all().to_vec();
        for e in out {
            self.execute(id, e);
        }
        let node = &self.nodes[&id];
        assert_eq!(node.log, memory_log, "node {id}: the effects must describe the log it holds");
        if role == Role::Leader && !was_leader {
            if let Some(other) = self.leaders.insert(term, id) {
                assert_eq!(other, id, "two leaders in term {term}");
            }
            for e in &self.applied {
                assert_eq!(
                    memory_log.get(e.index as usize - 1).map(|x| x.term),
                    Some(e.term),
                    "new leader {id} of term {term} misses applied entry {}",
                    e.index
                );
            }
        }
    }

    fn execute(&mut self, id: NodeId, effect: Effect) {
        let node = self.nodes.get_mut(&id).unwrap();
        match effect {
            Effect::PersistState(h) => {
                assert!(h.term >= node.hard.term, "term went back");
                node.hard = h;
            }
            Effect::Append(entries) => {
                for e in entries {
                    assert_eq!(e.index, node.log.len() as Index + 1, "append must continue the durable log");
                    node.log.push(e);
                }
            }
            Effect::Truncate(from) => {
                let applied = self.applied.len() as Index;
                assert!(from > applied || self.applied[from as usize - 1..].iter().all(|e| {
                    node.log.get(e.index as usize - 1) != Some(e)
                }), "node {id} truncates applied entries from {from}");
                node.log.truncate(from as usize - 1);
            }
            Effect::Send(env) => {
                let dropped = self.isolated.contains(&env.from)
                    || self.isolated.contains(&env.to)
                    || self.rng.next_u64() % 1000 < self.drop_per_mille;
                if !dropped {
                    let delay = 1 + (self.rng.next_u64() % 20) as Millis;
                    self.seq += 1;
                    self.queue.insert((self.now + delay, self.seq), env);
                }
            }
            Effect::Apply(entries) => {
                for e in entries {
                    match self.applied.get(e.index as usize - 1) {
                        Some(known) => assert_eq!(known, &e, "node {id} applies a different entry at {}", e.index),
                        None => {
                            assert_eq!(e.index, self.applied.len() as Index + 1, "applied out of order");
                            self.applied.push(e);
                        }
                    }
                }
            }
            Effect::Timer { at } => node.timer = Some(at),
            Effect::NotLeader { .. } | Effect::Proposed { .. } => {}
        }
    }

    /// Runs until `until`, delivering messages and firing timers in time
    /// order; `propose_every` ms a value is proposed to whoever leads.
    fn run(&mut self, until: Millis, propose_every: Millis) {
        let mut next_proposal = self.now + propose_every;
        loop {
            let next_msg = self.queue.keys().next().map(|k| k.0);
            let next_timer = self.nodes.values().filter_map(|n| n.timer).min();
            let t = [next_msg, next_timer, Some(next_proposal)].into_iter().flatten().min().unwrap();
            if t > until {
                self.now = until;
                return;
            }
            self.now = t;
            if next_proposal == t {
                next_proposal += propose_every;
                if let Some(leader) = self.leader() {
                    self.next_value += 1;
                    let value = self.next_value.to_be_bytes().to_vec();
                    self.step(leader, Input::Propose(value));
                }
            }
            while let Some((&key, _)) = self.queue.first_key_value() {
                if key.0 > t {
                    break;
                }
                let env = self.queue.remove(&key).unwrap();
                self.step(env.to, Input::Receive(env));
            }
            let due: Vec<NodeId> = self.nodes.iter().filter(|(_, n)| n.timer.is_some_and(|at| at <= t)).map(|(id, _)| *id).collect();
            for id in due {
                self.nodes.get_mut(&id).unwrap().timer = None;
                self.step(id, Input::Tick);
            }
        }
    }

    fn leader(&self) -> Option<NodeId> {
        // The live leader of the highest term.
        self.nodes
            .iter()
            .filter_map(|(id, n)| n.raft.as_ref().filter(|r| r.role() == Role::Leader).map(|r| (r.term(), *id)))
            .max()
            .map(|(_, id)| id)
    }

    fn check_log_matching(&self) {
        let logs: Vec<&Vec<Entry>> = self.nodes.values().map(|n| &n.log).collect();
        for a in &logs {
            for b in &logs {
                let common = a.len().min(b.len());
                if let Some(last_same) = (0..common).rev().find(|&i| a[i].term == b[i].term) {
                    assert_eq!(a[..=last_same], b[..=last_same], "log matching violated below index {}", last_same + 1);
                }
            }
        }
    }
}

fn chaos(seed: u64, n: u64, faults: u32) {
    let mut sim = Sim::new(seed, n);
    let mut rng = Rng::new(seed ^ 0xfa17);
    for _ in 0..faults {
        let at = sim.now + 100 + (rng.next_u64() % 700) as Millis;
        sim.run(at, 40);
        sim.check_log_matching();
        let id = 1 + rng.next_u64() % n;
        match rng.next_u64() % 6 {
            0 => sim.crash(id),
            1 => {
                if sim.nodes[&id].raft.is_none() {
                    sim.start(id);
                }
            }
            2 => {
                sim.isolated.insert(id);
            }
            3 => sim.isolated.clear(),
            4 => sim.drop_per_mille = rng.next_u64() % 300,
            _ => {
                // The leader, if any, crashes: the hardest moment.
                if let Some(l) = sim.leader() {
                    sim.crash(l);
                }
            }
        }
    }
    // Heal: everyone up, links whole, no loss. A leader must emerge and a
    // new proposal commit everywhere within a bound.
    sim.isolated.clear();
    sim.drop_per_mille = 0;
    for id in 1..=n {
        if sim.nodes[&id].raft.is_none() {
            sim.start(id);
        }
    }
    let healed_at = sim.now;
    sim.run(healed_at + 5_000, 100);
    let leader = sim.leader().unwrap_or_else(|| panic!("seed {seed}: no leader 5 s after the heal"));
    sim.next_value += 1;
    let marker = sim.next_value.to_be_bytes().to_vec();
    sim.step(leader, Input::Propose(marker.clone()));
    sim.run(sim.now + 3_000, 1_000_000);
    assert!(sim.applied.iter().any(|e| e.data == marker), "seed {seed}: a proposal after the heal was not committed");
    for (id, node) in &sim.nodes {
        let raft = node.raft.as_ref().unwrap();
        assert!(raft.commit_index() >= sim.applied.len() as Index, "seed {seed}: node {id} is behind after the heal");
    }
    sim.check_log_matching();
}

#[test]
fn a_single_node_leads_itself_and_commits() {
    let mut sim = Sim::new(1, 1);
    sim.run(2_000, 100);
    assert_eq!(sim.leader(), Some(1));
    assert!(sim.applied.iter().filter(|e| !e.data.is_empty()).count() >= 10);
}

#[test]
fn three_nodes_elect_one_leader_and_replicate() {
    let mut sim = Sim::new(7, 3);
    sim.run(5_000, 50);
    let leader = sim.leader().expect("a leader");
    let values = sim.applied.iter().filter(|e| !e.data.is_empty()).count();
    assert!(values >= 50, "only {values} values committed");
    // Every node holds the applied prefix.
    for node in sim.nodes.values() {
        assert!(node.log.len() >= sim.applied.len() - 1);
    }
    // The leader crashes: another takes over and commits in a later term.
    let old_term = sim.nodes[&leader].raft.as_ref().unwrap().term();
    sim.crash(leader);
    sim.run(sim.now + 3_000, 50);
    let next = sim.leader().expect("a new leader");
    assert_ne!(next, leader);
    assert!(sim.nodes[&next].raft.as_ref().unwrap().term() > old_term);
    assert!(sim.applied.iter().filter(|e| !e.data.is_empty()).count() > values);
}

#[test]
fn an_isolated_node_does_not_disrupt_the_leader_when_it_returns() {
    let mut sim = Sim::new(11, 3);
    sim.run(2_000, 50);
    let leader = sim.leader().expect("a leader");
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    let term = sim.nodes[&leader].raft.as_ref().unwrap().term();
    sim.isolated.insert(follower);
    sim.run(sim.now + 5_000, 50);
    sim.isolated.clear();
    sim.run(sim.now + 3_000, 50);
    // Pre-vote: the returning node never raised its term, so the leader
    // kept leading in the same term.
    assert_eq!(sim.leader(), Some(leader));
    assert_eq!(sim.nodes[&leader].raft.as_ref().unwrap().term(), term);
}

#[test]
fn a_partitioned_leader_steps_down() {
    let mut sim = Sim::new(5, 3);
    sim.run(2_000, 50);
    let leader = sim.leader().expect("a leader");
    sim.isolated.insert(leader);
    sim.run(sim.now + 3_000, 50);
    assert_ne!(sim.nodes[&leader].raft.as_ref().unwrap().role(), Role::Leader, "check-quorum: it must step down");
    let next = sim.leader().expect("the majority elects a leader");
    assert_ne!(next, leader);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn raft_is_safe_and_live_under_faults(seed in any::<u64>(), five in any::<bool>(), faults in 5u32..40) {
        chaos(seed, if five { 5 } else { 3 }, faults);
    }
}
