//! A Raft node as a sans-IO machine: the consensus core of the controller
//! quorum (DESIGN.md §3). Like raft-rs's `RawNode`, it never does IO: it
//! takes time, messages and proposals, and returns effects — persist the
//! term and vote, append or truncate log entries, send messages, apply
//! committed entries, arm a timer.
//!
//! **The caller's contract:** execute effects in order, and make every
//! `PersistState`, `Append`, `Truncate` and `SaveSnapshot` durable before
//! sending any `Send` that follows it. A vote or an acknowledgement then
//! never leaves the node before what it promises survives a crash.
//!
//! Leader election uses pre-vote (a node asks "would you vote for me?"
//! before raising its term, so a node cut off and back does not depose a
//! healthy leader) and a check-quorum lease (a node that heard from a
//! leader within the minimum election timeout refuses pre-votes). A new
//! leader appends a no-op entry in its term, so entries of earlier terms
//! commit through it (§5.4.2). Membership is fixed by configuration.
//!
//! Log compaction (Raft §7): the application hands the node its state as of
//! an applied index (`Input::Compact`); the node drops the entries up to it
//! and keeps the snapshot, whose bytes it never looks into. A follower that
//! needs entries the leader no longer holds gets the snapshot whole
//! (`Message::InstallSnapshot`), then the entries after it.

pub mod log;
pub mod message;
pub mod store;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use log::RaftLog;
pub use message::{Entry, Envelope, Index, Message, NodeId, Term};
pub use store::{RaftStore, RaftStoreError, StoreRecovery};

use crate::Millis;
use crate::rng::Rng;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RaftConfig {
    pub id: NodeId,
    /// Every voter, this node included.
    pub voters: Vec<NodeId>,
    /// A follower that hears nothing from a leader for a random time in
    /// [min, max) starts an election.
    pub election_timeout_min_ms: i64,
    pub election_timeout_max_ms: i64,
    pub heartbeat_interval_ms: i64,
    /// Entries per AppendEntries message (bounded work per message).
    pub max_entries_per_message: usize,
}

impl Default for RaftConfig {
    fn default() -> Self {
        Self {
            id: 1,
            voters: vec![1],
            election_timeout_min_ms: 1_000,
            election_timeout_max_ms: 2_000,
            heartbeat_interval_ms: 150,
            max_entries_per_message: 256,
        }
    }
}

/// What must survive a crash besides the log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardState {
    pub term: Term,
    pub voted_for: Option<NodeId>,
}

/// The application's state as of the entry (`index`, `term`): it stands for
/// every entry up to there. `data` is opaque to Raft.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub index: Index,
    pub term: Term,
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Follower,
    /// Collecting pre-votes for `term` (its own term is still `term - 1`).
    PreCandidate,
    Candidate,
    Leader,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Tick,
    Receive(Envelope),
    /// Append `data` to the log if this node leads.
    Propose(Vec<u8>),
    /// The application's state as of applied index `index` is `data`: the
    /// entries up to there may go. Ignored unless `index` is applied and
    /// past the current snapshot.
    Compact { index: Index, data: Vec<u8> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Make this durable before any later `Send`.
    PersistState(HardState),
    /// Append these entries to the durable log (after any `Truncate`).
    Append(Vec<Entry>),
    /// Remove every durable entry from this index on.
    Truncate(Index),
    Send(Envelope),
    /// These entries are committed: apply them, in order.
    Apply(Vec<Entry>),
    /// Feed `Input::Tick` at or after this time.
    Timer { at: Millis },
    /// A proposal was refused: this node does not lead (`leader` is its
    /// best guess of who does).
    NotLeader { leader: Option<NodeId> },
    /// A proposal was appended at this index in this term; it is committed
    /// when an `Apply` covers it (and lost if another entry takes the index).
    Proposed { index: Index, term: Term },
    /// Store this snapshot durably (before any later `Send`) and drop the
    /// durable entries up to `index`; later entries stay.
    SaveSnapshot { index: Index, term: Term, data: Vec<u8> },
    /// The application's state becomes `data`, as of `index`: it replaces
    /// whatever was applied. `Apply` continues after `index`.
    RestoreSnapshot { index: Index, term: Term, data: Vec<u8> },
}

/// What the leader knows about a follower.
#[derive(Debug, Clone, Copy)]
struct Progress {
    /// Next index to send.
    next: Index,
    /// Highest index known to match.
    matched: Index,
    /// When it last answered (for check-quorum).
    last_heard: Millis,
}

pub struct RaftNode {
    config: RaftConfig,
    hard: HardState,
    log: RaftLog,
    /// The latest snapshot, kept whole to send to followers that need it.
    snapshot: Option<Snapshot>,
    role: Role,
    leader: Option<NodeId>,
    commit: Index,
    applied: Index,
    /// When the current election timeout expires (followers, candidates).
    election_deadline: Millis,
    /// When the leader heard from its current leader (pre-vote lease).
    last_leader_contact: Option<Millis>,
    votes: BTreeMap<NodeId, bool>,
    progress: BTreeMap<NodeId, Progress>,
    next_heartbeat: Millis,
    rng: Rng,
    armed: Option<Millis>,
}

impl RaftNode {
    /// A node recovered from its durable state (a fresh node: defaults):
    /// the snapshot, if any, and the log after it. The application starts
    /// from the snapshot itself; the node applies what follows once it is
    /// known to be committed. `now` starts its election timer; `seed`
    /// randomises the timeouts.
    pub fn new(config: RaftConfig, hard: HardState, mut log: RaftLog, snapshot: Option<Snapshot>, now: Millis, seed: u64) -> Self {
        if let Some(s) = &snapshot {
            // The store hands both over consistent; this makes sure.
            log.restore(s.index, s.term);
        }
        // Only committed, applied entries are ever compacted.
        let base = log.snapshot_index();
        // The id is mixed in so voters handed the same seed still draw
        // different timeouts: with equal draws two followers time out
        // together every round, split the vote and elect no one (the
        // failover test, seed 45: 18 split terms, 12 s without a
        // controller).
        let rng = Rng::new(seed ^ config.id.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mut node = Self {
            config,
            hard,
            log,
            snapshot,
            role: Role::Follower,
            leader: None,
            commit: base,
            applied: base,
            election_deadline: 0,
            last_leader_contact: None,
            votes: BTreeMap::new(),
            progress: BTreeMap::new(),
            next_heartbeat: 0,
            rng,
            armed: None,
        };
        node.reset_election_timer(now);
        node
    }

    pub fn id(&self) -> NodeId {
        self.config.id
    }

    /// Restarts the election timer from `now` (a node built before the
    /// clock was known, as a broker opening its storage is).
    pub fn start_at(&mut self, now: Millis) {
        self.reset_election_timer(now);
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn term(&self) -> Term {
        self.hard.term
    }

    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }

    pub fn commit_index(&self) -> Index {
        self.commit
    }

    pub fn log(&self) -> &RaftLog {
        &self.log
    }

    /// The latest snapshot (taken here or installed from a leader).
    pub fn snapshot(&self) -> Option<&Snapshot> {
        self.snapshot.as_ref()
    }

    /// The last index handed to the application (by `Apply` or
    /// `RestoreSnapshot`).
    pub fn applied_index(&self) -> Index {
        self.applied
    }

    pub fn hard_state(&self) -> HardState {
        self.hard
    }

    pub fn step(&mut self, now: Millis, input: Input, out: &mut Vec<Effect>) {
        match input {
            Input::Tick => self.tick(now, out),
            Input::Receive(env) => {
                if env.to == self.config.id && self.config.voters.contains(&env.from) {
                    self.receive(now, env.from, env.message, out);
                }
            }
            Input::Propose(data) => self.propose(now, data, out),
            Input::Compact { index, data } => self.compact(index, data, out),
        }
        self.apply_committed(out);
        self.arm_timer(now, out);
    }

    fn quorum(&self) -> usize {
        self.config.voters.len() / 2 + 1
    }

    fn peers(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.config.voters.iter().copied().filter(move |&v| v != self.config.id)
    }

    fn reset_election_timer(&mut self, now: Millis) {
        let span = (self.config.election_timeout_max_ms - self.config.election_timeout_min_ms).max(1) as u64;
        let jitter = (self.rng.next_u64() % span) as Millis;
        self.election_deadline = now + self.config.election_timeout_min_ms + jitter;
    }

    fn send(&self, to: NodeId, message: Message, out: &mut Vec<Effect>) {
        out.push(Effect::Send(Envelope { from: self.config.id, to, message }));
    }

    fn persist(&mut self, term: Term, voted_for: Option<NodeId>, out: &mut Vec<Effect>) {
        if self.hard.term != term || self.hard.voted_for != voted_for {
            self.hard = HardState { term, voted_for };
            out.push(Effect::PersistState(self.hard));
        }
    }

    fn tick(&mut self, now: Millis, out: &mut Vec<Effect>) {
        match self.role {
            Role::Leader => {
                // Check quorum: a leader that has not heard from a majority
                // within an election timeout steps down, so a partitioned
                // leader stops claiming the lead.
                let heard = 1 + self
                    .progress
                    .values()
                    .filter(|p| now - p.last_heard < self.config.election_timeout_max_ms)
                    .count();
                if heard < self.quorum() {
                    self.become_follower(now, self.hard.term, None);
                    return;
                }
                if now >= self.next_heartbeat {
                    self.broadcast_append(now, out);
                }
            }
            _ if now >= self.election_deadline => self.start_pre_vote(now, out),
            _ => {}
        }
    }

    fn become_follower(&mut self, now: Millis, term: Term, leader: Option<NodeId>) {
        self.role = Role::Follower;
        self.leader = leader;
        self.votes.clear();
        self.progress.clear();
        debug_assert!(term >= self.hard.term);
        self.reset_election_timer(now);
    }

    fn start_pre_vote(&mut self, now: Millis, out: &mut Vec<Effect>) {
        self.role = Role::PreCandidate;
        self.leader = None;
        self.votes.clear();
        self.votes.insert(self.config.id, true);
        self.reset_election_timer(now);
        if self.votes.len() >= self.quorum() {
            return self.start_election(now, out);
        }
        let (term, last_index, last_term) = (self.hard.term + 1, self.log.last_index(), self.log.last_term());
        for peer in self.peers().collect::<Vec<_>>() {
            self.send(peer, Message::PreVote { term, last_index, last_term }, out);
        }
    }

    fn start_election(&mut self, now: Millis, out: &mut Vec<Effect>) {
        self.role = Role::Candidate;
        let term = self.hard.term + 1;
        self.persist(term, Some(self.config.id), out);
        self.votes.clear();
        self.votes.insert(self.config.id, true);
        self.reset_election_timer(now);
        if self.votes.len() >= self.quorum() {
            return self.become_leader(now, out);
        }
        let (last_index, last_term) = (self.log.last_index(), self.log.last_term());
        for peer in self.peers().collect::<Vec<_>>() {
            self.send(peer, Message::RequestVote { term, last_index, last_term }, out);
        }
    }

    fn become_leader(&mut self, now: Millis, out: &mut Vec<Effect>) {
        self.role = Role::Leader;
        self.leader = Some(self.config.id);
        self.votes.clear();
        let next = self.log.last_index() + 1;
        self.progress = self.peers().map(|p| (p, Progress { next, matched: 0, last_heard: now })).collect();
        // The no-op of this term: entries of earlier terms commit with it.
        let noop = self.log.push(self.hard.term, Vec::new());
        out.push(Effect::Append(vec![noop]));
        self.maybe_commit();
        self.broadcast_append(now, out);
    }

    fn propose(&mut self, now: Millis, data: Vec<u8>, out: &mut Vec<Effect>) {
        if self.role != Role::Leader {
            out.push(Effect::NotLeader { leader: self.leader });
            return;
        }
        let entry = self.log.push(self.hard.term, data);
        out.push(Effect::Proposed { index: entry.index, term: entry.term });
        out.push(Effect::Append(vec![entry]));
        self.maybe_commit();
        self.broadcast_append(now, out);
    }

    fn broadcast_append(&mut self, now: Millis, out: &mut Vec<Effect>) {
        self.next_heartbeat = now + self.config.heartbeat_interval_ms;
        for peer in self.peers().collect::<Vec<_>>() {
            self.send_append(peer, out);
        }
    }

    fn send_append(&mut self, peer: NodeId, out: &mut Vec<Effect>) {
        let Some(p) = self.progress.get(&peer).copied() else { return };
        let prev_index = p.next - 1;
        if prev_index < self.log.snapshot_index() {
            // Compacted away here: only the snapshot brings it up.
            return self.send_snapshot(peer, out);
        }
        let prev_term = self.log.term_at(prev_index).expect("next index never passes the log end + 1");
        let to = prev_index + self.config.max_entries_per_message as Index;
        let entries = self.log.entries(p.next, to).to_vec();
        let message = Message::AppendEntries { term: self.hard.term, prev_index, prev_term, entries, commit: self.commit };
        self.send(peer, message, out);
    }

    /// Sent again with every heartbeat until the follower acknowledges it
    /// (metadata snapshots are small; no chunking).
    fn send_snapshot(&self, peer: NodeId, out: &mut Vec<Effect>) {
        // A log compacted without its snapshot (a caller's mistake) cannot
        // serve this follower: better silent than a wrong message.
        let Some(s) = &self.snapshot else { return };
        let message = Message::InstallSnapshot { term: self.hard.term, last_index: s.index, last_term: s.term, data: s.data.clone() };
        self.send(peer, message, out);
    }

    /// The application's snapshot as of applied `index` (§7).
    fn compact(&mut self, index: Index, data: Vec<u8>, out: &mut Vec<Effect>) {
        if index > self.applied || index <= self.log.snapshot_index() {
            return;
        }
        let Some(term) = self.log.term_at(index) else { return };
        self.log.compact_to(index);
        out.push(Effect::SaveSnapshot { index, term, data: data.clone() });
        self.snapshot = Some(Snapshot { index, term, data });
    }

    fn receive(&mut self, now: Millis, from: NodeId, message: Message, out: &mut Vec<Effect>) {
        let term = message.term();
        // Pre-votes neither raise our term nor depose anybody.
        if let Message::PreVote { last_index, last_term, .. } = message {
            let leased = self.role == Role::Leader
                || self.last_leader_contact.is_some_and(|t| now - t < self.config.election_timeout_min_ms);
            let granted = term > self.hard.term && !leased && self.log.up_to_date(last_index, last_term);
            let current = self.hard.term;
            return self.send(from, Message::PreVoteResponse { term, granted, current }, out);
        }
        if let Message::PreVoteResponse { term: asked, granted, current } = message {
            if current > self.hard.term {
                // We are behind: without this, a node with the most
                // up-to-date log but an old term could never win a
                // pre-vote, and nobody else could win its vote (etcd's
                // raft does the same).
                self.persist(current, None, out);
                self.become_follower(now, current, None);
                return;
            }
            if self.role == Role::PreCandidate && asked == self.hard.term + 1 {
                self.votes.insert(from, granted);
                if self.votes.values().filter(|g| **g).count() >= self.quorum() {
                    self.start_election(now, out);
                }
            }
            return;
        }
        if term > self.hard.term {
            // A newer term: follow it (a vote request may still be refused).
            let leader = matches!(message, Message::AppendEntries { .. } | Message::InstallSnapshot { .. }).then_some(from);
            self.persist(term, None, out);
            self.become_follower(now, term, leader);
        }
        match message {
            Message::RequestVote { term, last_index, last_term } => {
                let granted = term == self.hard.term
                    && self.hard.voted_for.is_none_or(|v| v == from)
                    && self.log.up_to_date(last_index, last_term);
                if granted {
                    self.persist(term, Some(from), out);
                    self.reset_election_timer(now);
                }
                self.send(from, Message::RequestVoteResponse { term: self.hard.term, granted }, out);
            }
            Message::RequestVoteResponse { term, granted } => {
                if self.role == Role::Candidate && term == self.hard.term {
                    self.votes.insert(from, granted);
                    if self.votes.values().filter(|g| **g).count() >= self.quorum() {
                        self.become_leader(now, out);
                    }
                }
            }
            Message::AppendEntries { term, prev_index, prev_term, entries, commit } => {
                if self.heard_from_leader(now, from, term, out) {
                    self.append_entries(from, prev_index, prev_term, entries, commit, out);
                }
            }
            Message::InstallSnapshot { term, last_index, last_term, data } => {
                if self.heard_from_leader(now, from, term, out) {
                    self.install_snapshot(from, Snapshot { index: last_index, term: last_term, data }, out);
                }
            }
            Message::AppendEntriesResponse { term, success, match_index } => {
                if self.role == Role::Leader && term == self.hard.term {
                    self.append_response(now, from, success, match_index, out);
                }
            }
            Message::PreVote { .. } | Message::PreVoteResponse { .. } => unreachable!("handled above"),
        }
    }

    /// A message that only a leader sends (AppendEntries, InstallSnapshot):
    /// refused if its term is old, otherwise its sender is the current
    /// term's leader, which this node follows. Returns whether to handle it.
    fn heard_from_leader(&mut self, now: Millis, from: NodeId, term: Term, out: &mut Vec<Effect>) -> bool {
        if term < self.hard.term {
            let reply = Message::AppendEntriesResponse { term: self.hard.term, success: false, match_index: 0 };
            self.send(from, reply, out);
            return false;
        }
        if self.role != Role::Follower || self.leader != Some(from) {
            self.become_follower(now, term, Some(from));
        }
        self.last_leader_contact = Some(now);
        self.reset_election_timer(now);
        true
    }

    /// A follower's side of InstallSnapshot (§7).
    fn install_snapshot(&mut self, from: NodeId, snapshot: Snapshot, out: &mut Vec<Effect>) {
        let (index, term) = (snapshot.index, snapshot.term);
        // At or below our commit, we hold all of it already (committed
        // entries are the same everywhere): nothing to change.
        if index > self.commit {
            if self.log.term_at(index) != Some(term) && self.log.last_index() > index {
                // What follows may be another history: gone durably before
                // the snapshot says the log continues after `index`.
                out.push(Effect::Truncate(index + 1));
            }
            self.log.restore(index, term);
            out.push(Effect::SaveSnapshot { index, term, data: snapshot.data.clone() });
            out.push(Effect::RestoreSnapshot { index, term, data: snapshot.data.clone() });
            self.snapshot = Some(snapshot);
            self.commit = index;
            self.applied = index;
        }
        self.send(from, Message::AppendEntriesResponse { term: self.hard.term, success: true, match_index: index }, out);
    }

    /// A follower's side of AppendEntries (§5.3).
    fn append_entries(&mut self, from: NodeId, prev_index: Index, prev_term: Term, mut entries: Vec<Entry>, commit: Index, out: &mut Vec<Effect>) {
        let term = self.hard.term;
        let (mut prev_index, mut prev_term) = (prev_index, prev_term);
        let base = self.log.snapshot_index();
        if prev_index < base {
            // Compacted here, so committed, so the leader holds the same
            // entries: check from the snapshot's end on.
            entries.retain(|e| e.index > base);
            if entries.first().is_some_and(|e| e.index != base + 1) {
                return;
            }
            (prev_index, prev_term) = (base, self.log.snapshot_term());
        }
        if self.log.term_at(prev_index) != Some(prev_term) {
            // Not matching there: tell the leader how far back to go.
            let hint = prev_index.saturating_sub(1).min(self.log.last_index());
            return self.send(from, Message::AppendEntriesResponse { term, success: false, match_index: hint }, out);
        }
        // Every entry of the message matches once it is handled.
        let matched = prev_index + entries.len() as Index;
        let mut new = Vec::new();
        for e in entries {
            match self.log.term_at(e.index) {
                Some(t) if t == e.term => continue,
                Some(_) => {
                    // A conflict: everything from here on was never
                    // committed (the leader has it differently).
                    debug_assert!(e.index > self.commit, "a committed entry is never overwritten");
                    self.log.truncate_from(e.index);
                    out.push(Effect::Truncate(e.index));
                }
                None => {}
            }
            self.log.push(e.term, e.data.clone());
            new.push(e);
        }
        if !new.is_empty() {
            out.push(Effect::Append(new));
        }
        // Commit only what is known to match the leader's log.
        self.commit = self.commit.max(commit.min(matched));
        self.send(from, Message::AppendEntriesResponse { term, success: true, match_index: matched }, out);
    }

    fn append_response(&mut self, now: Millis, from: NodeId, success: bool, match_index: Index, out: &mut Vec<Effect>) {
        let last = self.log.last_index();
        let Some(p) = self.progress.get_mut(&from) else { return };
        p.last_heard = now;
        if success {
            if match_index > p.matched {
                p.matched = match_index.min(last);
            }
            p.next = p.next.max(p.matched + 1);
            self.maybe_commit();
            if self.progress[&from].next <= last {
                self.send_append(from, out);
            }
        } else {
            // Go back, but never below what is known to match.
            p.next = (match_index + 1).min(p.next.saturating_sub(1)).max(p.matched + 1).max(1);
            self.send_append(from, out);
        }
    }

    /// The leader commits the highest index a majority holds, if it is of
    /// the current term (§5.4.2).
    fn maybe_commit(&mut self) {
        let mut matched: Vec<Index> = self.progress.values().map(|p| p.matched).collect();
        matched.push(self.log.last_index());
        matched.sort_unstable_by(|a, b| b.cmp(a));
        let candidate = matched[self.quorum() - 1];
        if candidate > self.commit && self.log.term_at(candidate) == Some(self.hard.term) {
            self.commit = candidate;
        }
    }

    fn apply_committed(&mut self, out: &mut Vec<Effect>) {
        let commit = self.commit.min(self.log.last_index());
        if commit > self.applied {
            out.push(Effect::Apply(self.log.entries(self.applied + 1, commit).to_vec()));
            self.applied = commit;
        }
    }

    fn arm_timer(&mut self, now: Millis, out: &mut Vec<Effect>) {
        let at = if self.role == Role::Leader { self.next_heartbeat } else { self.election_deadline };
        let at = at.max(now + 1);
        if self.armed != Some(at) {
            self.armed = Some(at);
            out.push(Effect::Timer { at });
        }
    }
}
