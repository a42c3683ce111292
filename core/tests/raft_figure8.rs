//! Figure 8 of the Raft paper, played step by step with five nodes and a
//! hand-routed network: an entry of an old term, replicated to a majority
//! by a later leader, must not count as committed until an entry of the
//! leader's own term does — or a newer leader may overwrite it after it was
//! applied. Random schedules rarely open this window (a new leader's no-op
//! closes it within milliseconds), so it gets a scripted test.

use std::collections::BTreeMap;

use millrace_core::Millis;
use millrace_core::raft::*;

struct Net {
    nodes: BTreeMap<NodeId, RaftNode>,
    durable: BTreeMap<NodeId, (HardState, Vec<Entry>)>,
    inbox: Vec<Envelope>,
    now: Millis,
    /// Entries applied anywhere, by index.
    applied: Vec<Entry>,
}

fn config(id: NodeId) -> RaftConfig {
    RaftConfig {
        id,
        voters: vec![1, 2, 3, 4, 5],
        election_timeout_min_ms: 300,
        election_timeout_max_ms: 600,
        heartbeat_interval_ms: 50,
        max_entries_per_message: 1,
    }
}

impl Net {
    fn new() -> Self {
        let mut net = Self { nodes: BTreeMap::new(), durable: BTreeMap::new(), inbox: Vec::new(), now: 0, applied: Vec::new() };
        for id in 1..=5 {
            net.durable.insert(id, (HardState::default(), Vec::new()));
            net.start(id);
        }
        net
    }

    fn start(&mut self, id: NodeId) {
        let (hard, log) = self.durable[&id].clone();
        self.nodes.insert(id, RaftNode::new(config(id), hard, RaftLog::from_entries(log).unwrap(), None, self.now, id));
    }

    fn crash(&mut self, id: NodeId) {
        self.nodes.remove(&id);
        self.inbox.retain(|m| m.from != id && m.to != id);
    }

    fn step(&mut self, id: NodeId, input: Input) {
        let Some(node) = self.nodes.get_mut(&id) else { return };
        let mut out = Vec::new();
        node.step(self.now, input, &mut out);
        for e in out {
            let durable = self.durable.get_mut(&id).unwrap();
            match e {
                Effect::PersistState(h) => durable.0 = h,
                Effect::Append(es) => durable.1.extend(es),
                Effect::Truncate(i) => durable.1.truncate(i as usize - 1),
                Effect::Send(env) => self.inbox.push(env),
                Effect::Apply(es) => {
                    for e in es {
                        match self.applied.get(e.index as usize - 1) {
                            Some(known) => assert_eq!(known, &e, "node {id} applied a different entry at {}", e.index),
                            None => self.applied.push(e),
                        }
                    }
                }
                _ => {}
            }
        }
    }

    /// Delivers messages one at a time while `allowed` lets them through
    /// (others are lost), until none is left.
    fn pump(&mut self, allowed: &dyn Fn(&Envelope) -> bool) {
        self.route(&|m| allowed(&m).then_some(m));
    }

    /// Like `pump`, but `route` may also change a message on its way. At
    /// most 500 deliveries: a leader re-sends an entry the network keeps
    /// losing as long as it is asked.
    fn route(&mut self, route: &dyn Fn(Envelope) -> Option<Envelope>) {
        for _ in 0..500 {
            if self.inbox.is_empty() {
                return;
            }
            let m = self.inbox.remove(0);
            if let Some(m) = route(m).filter(|m| self.nodes.contains_key(&m.to)) {
                let to = m.to;
                self.step(to, Input::Receive(m));
            }
        }
        self.inbox.clear();
    }

    /// Time passes beyond every timeout and lease; `id` alone notices and
    /// runs for election, heard only by `with` (ticking until it leads).
    fn elect(&mut self, id: NodeId, with: &[NodeId]) {
        for _ in 0..5 {
            self.now += 2_000;
            self.step(id, Input::Tick);
            let group: Vec<NodeId> = std::iter::once(id).chain(with.iter().copied()).collect();
            // Only election traffic: the new leader's appends are routed
            // by the caller.
            self.pump(&|m| {
                group.contains(&m.from)
                    && group.contains(&m.to)
                    && !matches!(m.message, Message::AppendEntries { .. } | Message::AppendEntriesResponse { .. })
            });
            if self.nodes[&id].role() == Role::Leader {
                self.inbox.clear();
                return;
            }
        }
        panic!("node {id} did not win an election with {with:?}");
    }

    fn log_of(&self, id: NodeId) -> Vec<(Index, Term)> {
        self.durable[&id].1.iter().map(|e| (e.index, e.term)).collect()
    }
}

#[test]
fn an_old_term_entry_on_a_majority_is_not_committed_by_counting() {
    let mut net = Net::new();
    // S1 leads term 1; its no-op (index 1) reaches everybody.
    net.elect(1, &[2, 3, 4, 5]);
    let t1 = net.nodes[&1].term();
    net.step(1, Input::Tick);
    net.now += 100;
    net.step(1, Input::Tick);
    net.pump(&|_| true);
    // It takes X at index 2, which reaches only S2, then crashes.
    net.step(1, Input::Propose(b"X".to_vec()));
    net.pump(&|m| [1, 2].contains(&m.from) && [1, 2].contains(&m.to));
    assert_eq!(net.log_of(2), vec![(1, t1), (2, t1)]);
    net.crash(1);
    // S5 leads the next term with S3 and S4, writes its no-op and Y at
    // indexes 2 and 3 that reach nobody, and crashes.
    net.elect(5, &[3, 4]);
    net.step(5, Input::Propose(b"Y".to_vec()));
    net.inbox.clear();
    let t5 = net.nodes[&5].term();
    assert_eq!(net.log_of(5), vec![(1, t1), (2, t5), (3, t5)]);
    net.crash(5);
    // S1 returns and leads a later term with S2 and S3; it brings X to S3
    // and S4 — a majority holds index 2 — but its own no-op (index 3)
    // reaches nobody.
    net.start(1);
    net.elect(1, &[2, 3, 4]);
    let t1b = net.nodes[&1].term();
    assert!(t1b > t5);
    net.now += 100;
    net.step(1, Input::Tick);
    // The network loses every copy of index 3 (S1's own-term no-op).
    let without_own_term = |mut m: Envelope| {
        if !([1, 3, 4].contains(&m.from) && [1, 3, 4].contains(&m.to)) {
            return None;
        }
        if let Message::AppendEntries { entries, .. } = &mut m.message {
            entries.retain(|e| e.index < 3);
        }
        Some(m)
    };
    for _ in 0..4 {
        net.route(&without_own_term);
        net.now += 60;
        net.step(1, Input::Tick);
    }
    net.inbox.clear();
    assert_eq!(net.log_of(3), vec![(1, t1), (2, t1)]);
    assert_eq!(net.log_of(4), vec![(1, t1), (2, t1)]);
    assert!(net.nodes[&1].commit_index() < 2, "X (term {t1}) on a majority must not be committed by term {t1b}'s leader");
    assert!(net.applied.len() < 2);
    // S1 crashes; S5 returns and wins with S2, S3, S4 (its last term is
    // newer than theirs) and overwrites index 2. Nothing applied changes.
    net.crash(1);
    net.start(5);
    net.elect(5, &[2, 3, 4]);
    for _ in 0..6 {
        net.now += 60;
        net.step(5, Input::Tick);
        net.pump(&|m| m.from != 1 && m.to != 1);
    }
    assert!(net.applied.len() >= 3, "S5's term commits");
    assert_eq!(net.applied[1].data, Vec::<u8>::new(), "index 2 is S5's no-op; X was never committed");
}
