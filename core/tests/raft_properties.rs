//! The Raft core under a seeded in-memory network (raft-rs's and
//! quinn-proto's test style): 3 or 5 nodes, messages delayed, dropped and
//! cut by partitions, nodes crashing and restarting from what they made
//! durable, proposals arriving all along. Checked at every step:
//!
//! Nodes also compact their logs at random applied indexes (Raft §7), so
//! followers that lagged or were cut off catch up by InstallSnapshot.
//! The application is the list of entries applied; its snapshot is that
//! list, encoded. Checked at every step:
//!
//! - election safety: at most one leader per term;
//! - state machine safety: no two nodes apply different entries at an
//!   index, and every snapshot saved or restored holds exactly the entries
//!   applied up to its index (so every node reaches the same state);
//! - leader completeness: a new leader holds every entry applied so far
//!   (as an entry, or inside its snapshot);
//! - log matching: two logs with the same (index, term) agree up to there
//!   (over the entries both still hold);
//! - the effects describe the node: its durable snapshot and log equal its
//!   memory log;
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
    /// Durable: the snapshot and the entries after it.
    snapshot: Option<Snapshot>,
    log: Vec<Entry>,
    /// The log file as it was before the last snapshot's rewrite, until the
    /// log changes again: a crash now may find it so (the store writes the
    /// snapshot first, then rewrites the log).
    unrewritten: Option<Vec<Entry>>,
    timer: Option<Millis>,
    incarnation: u64,
    /// The application's state: every entry applied, from index 1.
    state: Vec<Entry>,
}

impl Node {
    fn base(&self) -> (Index, Term) {
        self.snapshot.as_ref().map_or((0, 0), |s| (s.index, s.term))
    }

    /// The durable entry at `index`, if still held.
    fn entry(&self, index: Index) -> Option<&Entry> {
        let offset = index.checked_sub(self.base().0 + 1)?;
        self.log.get(offset as usize)
    }

    /// The durable term at `index`: of an entry, or of the snapshot's end.
    fn term_at(&self, index: Index) -> Option<Term> {
        if index == self.base().0 { Some(self.base().1) } else { self.entry(index).map(|e| e.term) }
    }
}

/// What `RaftStore::open` makes of a log file that still holds entries the
/// snapshot ending at `base` covers: those are skipped, and the rest kept
/// as long as it continues the snapshot.
fn recover(file: Vec<Entry>, base: (Index, Term)) -> Vec<Entry> {
    let mut kept: Vec<Entry> = Vec::new();
    let mut prev: Option<(Index, Term)> = None;
    for e in file {
        let fits = match prev {
            None => e.index >= 1 && e.index <= base.0 + 1,
            Some((i, t)) => e.index == i + 1 && e.term >= t,
        } && (e.index <= base.0 || e.term >= base.1);
        if !fits {
            break;
        }
        prev = Some((e.index, e.term));
        if e.index > base.0 {
            kept.push(e);
        }
    }
    kept
}

fn encode(entries: &[Entry]) -> Vec<u8> {
    bincode::serde::encode_to_vec(entries, bincode::config::standard()).unwrap()
}

fn decode(data: &[u8]) -> Vec<Entry> {
    bincode::serde::decode_from_slice(data, bincode::config::standard()).unwrap().0
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
    /// The term before each entry (index, term) where its leader made it:
    /// in any log, that entry must follow that term (log matching, as an
    /// invariant of each log on its own).
    origins: BTreeMap<(Index, Term), Term>,
    /// What was applied, by index (the one true sequence).
    applied: Vec<Entry>,
    next_value: u64,
    /// Snapshots saved, and restored by followers from a leader's.
    saved: u64,
    restored: u64,
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
            origins: BTreeMap::new(),
            applied: Vec::new(),
            next_value: 0,
            saved: 0,
            restored: 0,
        };
        for id in voters {
            let node = Node {
                raft: None,
                hard: HardState::default(),
                snapshot: None,
                log: Vec::new(),
                unrewritten: None,
                timer: None,
                incarnation: 0,
                state: Vec::new(),
            };
            sim.nodes.insert(id, node);
            sim.start(id);
        }
        sim
    }

    fn start(&mut self, id: NodeId) {
        let seed = self.rng.next_u64();
        let config = RaftConfig { id, ..self.config.clone() };
        let node = self.nodes.get_mut(&id).unwrap();
        let (index, term) = node.base();
        let log = RaftLog::with_snapshot(index, term, node.log.clone()).expect("durable log is consecutive");
        // The application starts from the snapshot; Raft re-applies the rest.
        node.state = node.snapshot.as_ref().map_or_else(Vec::new, |s| decode(&s.data));
        node.raft = Some(RaftNode::new(config, node.hard, log, node.snapshot.clone(), self.now, seed));
        node.incarnation += 1;
        node.timer = Some(self.now);
    }

    /// A crash; if the last snapshot's log rewrite may not have happened,
    /// it did not (the harder case for recovery).
    fn crash(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).unwrap();
        node.raft = None;
        node.timer = None;
        if let Some(file) = node.unrewritten.take() {
            node.log = recover(file, node.base());
        }
    }

    fn step(&mut self, id: NodeId, input: Input) {
        let Some(raft) = self.nodes.get_mut(&id).unwrap().raft.as_mut() else { return };
        let mut out = Vec::new();
        let was_leader = raft.role() == Role::Leader;
        raft.step(self.now, input, &mut out);
        let (role, term) = (raft.role(), raft.term());
        let memory = raft.log().clone();
        let applied_index = raft.applied_index();
        for e in out {
            self.execute(id, e);
        }
        let node = &self.nodes[&id];
        assert_eq!(node.log, memory.all(), "node {id}: the effects must describe the log it holds");
        assert_eq!(node.base(), (memory.snapshot_index(), memory.snapshot_term()), "node {id}: the durable snapshot is not the log's base");
        assert_eq!(node.state.len() as Index, applied_index, "node {id}: the application is not where Raft applied to");
        if role == Role::Leader && !was_leader {
            if let Some(other) = self.leaders.insert(term, id) {
                assert_eq!(other, id, "two leaders in term {term}");
            }
            for e in self.applied.iter().filter(|e| e.index > memory.snapshot_index()) {
                assert_eq!(memory.term_at(e.index), Some(e.term), "new leader {id} of term {term} misses applied entry {}", e.index);
            }
        }
    }

    /// Node `id`'s application snapshots its state as of applied `index`.
    fn compact(&mut self, id: NodeId, index: Index) {
        let Some(node) = self.nodes.get(&id).filter(|n| n.raft.is_some()) else { return };
        let index = index.min(node.state.len() as Index);
        let data = encode(&node.state[..index as usize]);
        self.step(id, Input::Compact { index, data });
    }

    /// A snapshot must hold exactly the entries applied up to its index.
    fn check_snapshot(&self, id: NodeId, index: Index, term: Term, data: &[u8]) -> Vec<Entry> {
        let entries = decode(data);
        assert_eq!(entries.len() as Index, index, "node {id}: snapshot at {index} holds {} entries", entries.len());
        assert_eq!(entries[..], self.applied[..index as usize], "node {id}: snapshot at {index} differs from what was applied");
        assert_eq!(entries.last().map_or(0, |e| e.term), term, "node {id}: snapshot at {index} has the wrong term");
        entries
    }

    fn execute(&mut self, id: NodeId, effect: Effect) {
        let node = self.nodes.get_mut(&id).unwrap();
        match effect {
            Effect::PersistState(h) => {
                assert!(h.term >= node.hard.term, "term went back");
                node.hard = h;
            }
            Effect::Append(entries) => {
                node.unrewritten = None;
                for e in entries {
                    assert_eq!(e.index, node.base().0 + node.log.len() as Index + 1, "append must continue the durable log");
                    let before = node.term_at(e.index - 1).expect("appended after an entry it holds");
                    let origin = *self.origins.entry((e.index, e.term)).or_insert(before);
                    assert_eq!(before, origin, "node {id} appends entry {} of term {} after another history", e.index, e.term);
                    node.log.push(e);
                }
            }
            Effect::Truncate(from) => {
                let applied = self.applied.len() as Index;
                assert!(from > node.base().0, "node {id} truncates into its snapshot from {from}");
                assert!(from > applied || self.applied[from as usize - 1..].iter().all(|e| {
                    node.entry(e.index) != Some(e)
                }), "node {id} truncates applied entries from {from}");
                node.log.truncate((from - node.base().0 - 1) as usize);
                node.unrewritten = None;
            }
            Effect::SaveSnapshot { index, term, data } => {
                assert!(index > node.base().0, "node {id}: snapshot at {index} does not follow the one at {}", node.base().0);
                self.check_snapshot(id, index, term, &data);
                let node = self.nodes.get_mut(&id).unwrap();
                // What the store does: the entries after it stay if they
                // continue it (a conflicting suffix was truncated before).
                let file = node.log.clone();
                let keep = if node.entry(index).is_some_and(|e| e.term == term) { node.log.split_off((index - node.base().0) as usize) } else { Vec::new() };
                node.log = keep;
                node.unrewritten = Some(file);
                node.snapshot = Some(Snapshot { index, term, data });
                self.saved += 1;
            }
            Effect::RestoreSnapshot { index, term, data } => {
                let state = self.check_snapshot(id, index, term, &data);
                let node = self.nodes.get_mut(&id).unwrap();
                assert!(index > node.state.len() as Index, "node {id} restores a snapshot at {index} behind its state");
                node.state = state;
                self.restored += 1;
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
                    assert_eq!(e.index, node.state.len() as Index + 1, "node {id} applies {} out of order", e.index);
                    node.state.push(e.clone());
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

    /// Over the indexes two durable logs both still hold; and each entry of
    /// each log follows the term its leader put it after.
    fn check_log_matching(&self) {
        let nodes: Vec<&Node> = self.nodes.values().collect();
        for (id, n) in &self.nodes {
            for e in &n.log {
                let before = n.term_at(e.index - 1);
                assert_eq!(before, self.origins.get(&(e.index, e.term)).copied(), "node {id}: entry {} of term {} follows another history", e.index, e.term);
            }
        }
        for a in &nodes {
            for b in &nodes {
                let from = a.base().0.max(b.base().0) + 1;
                let to = (a.base().0 + a.log.len() as Index).min(b.base().0 + b.log.len() as Index);
                let Some(last_same) = (from..=to).rev().find(|&i| a.entry(i).map(|e| e.term) == b.entry(i).map(|e| e.term)) else { continue };
                for i in from..=last_same {
                    assert_eq!(a.entry(i), b.entry(i), "log matching violated at {i}, below index {last_same}");
                }
            }
        }
    }
}

/// Runs a random schedule of faults and compactions, heals, and checks
/// liveness; returns the simulation for its counters.
fn chaos(seed: u64, n: u64, faults: u32) -> Sim {
    let mut sim = Sim::new(seed, n);
    let mut rng = Rng::new(seed ^ 0xfa17);
    for _ in 0..faults {
        let at = sim.now + 100 + (rng.next_u64() % 700) as Millis;
        sim.run(at, 40);
        sim.check_log_matching();
        let id = 1 + rng.next_u64() % n;
        match rng.next_u64() % 8 {
            // A node compacts a random part of what it applied.
            6 => {
                let applied = sim.nodes[&id].state.len() as u64;
                sim.compact(id, rng.next_u64() % (applied + 1));
            }
            // The leader compacts everything it applied: whoever lags or
            // is cut off now needs its snapshot.
            7 => {
                if let Some(l) = sim.leader() {
                    sim.compact(l, Index::MAX);
                }
            }
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
    sim
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

#[test]
fn an_isolated_follower_catches_up_from_the_leaders_snapshot() {
    let mut sim = Sim::new(13, 3);
    sim.run(2_000, 50);
    let leader = sim.leader().expect("a leader");
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    sim.isolated.insert(follower);
    sim.run(sim.now + 2_000, 50);
    // Everyone who can compacts everything it applied: the follower's next
    // entries exist nowhere but inside snapshots.
    for id in 1..=3 {
        sim.compact(id, Index::MAX);
    }
    let leader_base = sim.nodes[&leader].raft.as_ref().unwrap().log().snapshot_index();
    assert!(leader_base > sim.nodes[&follower].raft.as_ref().unwrap().commit_index() + 10);
    sim.isolated.clear();
    sim.run(sim.now + 2_000, 50);
    assert!(sim.restored >= 1, "the follower never installed the snapshot");
    let f = sim.nodes[&follower].raft.as_ref().unwrap();
    assert!(f.log().snapshot_index() >= leader_base);
    assert!(f.commit_index() + 5 >= sim.applied.len() as Index, "the follower is still behind");
    assert_eq!(sim.nodes[&follower].state[..], sim.applied[..sim.nodes[&follower].state.len()]);
    // It restarts from its own durable snapshot and log.
    sim.crash(follower);
    sim.start(follower);
    sim.run(sim.now + 2_000, 50);
    assert_eq!(sim.nodes[&follower].state[..], sim.applied[..sim.nodes[&follower].state.len()]);
    assert!(sim.nodes[&follower].raft.as_ref().unwrap().commit_index() + 5 >= sim.applied.len() as Index);
    sim.check_log_matching();
}

#[test]
fn the_random_schedules_install_snapshots() {
    // The property below must exercise InstallSnapshot, not only local
    // compaction: over a fixed set of seeds, followers restore some.
    let (mut saved, mut restored) = (0, 0);
    for seed in 0..12 {
        let sim = chaos(seed, if seed % 2 == 0 { 3 } else { 5 }, 30);
        saved += sim.saved;
        restored += sim.restored;
    }
    assert!(saved > 20 && restored > 5, "{saved} snapshots saved, {restored} restored");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn raft_is_safe_and_live_under_faults(seed in any::<u64>(), five in any::<bool>(), faults in 5u32..40) {
        chaos(seed, if five { 5 } else { 3 }, faults);
    }
}
