//! InstallSnapshot and compaction, message by message: the cases the
//! random schedules of `raft_properties` reach only rarely (a follower
//! whose log conflicts with the leader's snapshot, a snapshot older than
//! the follower's commit, a stale leader's snapshot).

use millrace_core::raft::*;

fn config(id: NodeId) -> RaftConfig {
    RaftConfig {
        id,
        voters: vec![1, 2, 3],
        election_timeout_min_ms: 300,
        election_timeout_max_ms: 600,
        heartbeat_interval_ms: 50,
        max_entries_per_message: 8,
    }
}

fn entry(index: Index, term: Term) -> Entry {
    Entry { term, index, data: vec![index as u8] }
}

/// Node 2, a follower in `term` holding `terms[i]` at index `i + 1`.
fn follower(term: Term, terms: &[Term]) -> RaftNode {
    let entries = terms.iter().enumerate().map(|(i, t)| entry(i as Index + 1, *t)).collect();
    let hard = HardState { term, voted_for: None };
    RaftNode::new(config(2), hard, RaftLog::from_entries(entries).unwrap(), None, 0, 7)
}

fn receive(node: &mut RaftNode, from: NodeId, message: Message) -> Vec<Effect> {
    let mut out = Vec::new();
    node.step(10, Input::Receive(Envelope { from, to: node.id(), message }), &mut out);
    out.retain(|e| !matches!(e, Effect::Timer { .. }));
    out
}

fn install(term: Term, last_index: Index, last_term: Term) -> Message {
    Message::InstallSnapshot { term, last_index, last_term, data: b"state".to_vec() }
}

fn ack(term: Term, match_index: Index) -> Effect {
    Effect::Send(Envelope { from: 2, to: 1, message: Message::AppendEntriesResponse { term, success: true, match_index } })
}

fn save(index: Index, term: Term) -> Effect {
    Effect::SaveSnapshot { index, term, data: b"state".to_vec() }
}

fn restore(index: Index, term: Term) -> Effect {
    Effect::RestoreSnapshot { index, term, data: b"state".to_vec() }
}

#[test]
fn a_conflicting_suffix_goes_durably_before_the_snapshot_is_saved() {
    // Entries 3 and 4 are from a deposed leader of term 2; the snapshot
    // says entry 3 is of term 3.
    let mut node = follower(3, &[1, 1, 2, 2]);
    let out = receive(&mut node, 1, install(3, 3, 3));
    assert_eq!(out, vec![Effect::Truncate(4), save(3, 3), restore(3, 3), ack(3, 3)]);
    let log = node.log();
    assert_eq!((log.snapshot_index(), log.snapshot_term(), log.last_index(), log.all().len()), (3, 3, 3, 0));
    assert_eq!((node.commit_index(), node.applied_index(), node.leader()), (3, 3, Some(1)));
    assert_eq!(node.snapshot().map(|s| s.index), Some(3));
}

#[test]
fn a_matching_suffix_is_kept_and_a_snapshot_past_the_log_replaces_it() {
    let mut node = follower(2, &[1, 1, 2, 2]);
    let out = receive(&mut node, 1, install(2, 3, 2));
    assert_eq!(out, vec![save(3, 2), restore(3, 2), ack(2, 3)]);
    assert_eq!((node.log().snapshot_index(), node.log().last_index(), node.log().last_term()), (3, 4, 2));
    // Past the end: nothing to truncate, the log is the snapshot alone.
    let mut node = follower(2, &[1]);
    let out = receive(&mut node, 1, install(2, 9, 2));
    assert_eq!(out, vec![save(9, 2), restore(9, 2), ack(2, 9)]);
    assert_eq!((node.log().last_index(), node.commit_index()), (9, 9));
}

#[test]
fn a_snapshot_at_or_below_the_commit_is_acknowledged_without_change() {
    let mut node = follower(2, &[1, 1, 2, 2]);
    // The leader's heartbeat commits up to 4.
    let heartbeat = Message::AppendEntries { term: 2, prev_index: 4, prev_term: 2, entries: vec![], commit: 4 };
    receive(&mut node, 1, heartbeat);
    let before = node.log().clone();
    let out = receive(&mut node, 1, install(2, 3, 1));
    assert_eq!(out, vec![ack(2, 3)]);
    assert_eq!(node.log(), &before);
    assert_eq!(node.snapshot(), None);
}

#[test]
fn a_stale_leaders_snapshot_is_refused_and_a_newer_term_is_followed() {
    let mut node = follower(5, &[1, 1]);
    let out = receive(&mut node, 1, install(4, 9, 4));
    let refused = Message::AppendEntriesResponse { term: 5, success: false, match_index: 0 };
    assert_eq!(out, vec![Effect::Send(Envelope { from: 2, to: 1, message: refused })]);
    assert_eq!(node.log().last_index(), 2);
    // A newer term: persisted first, its sender is the leader.
    let out = receive(&mut node, 3, install(6, 9, 6));
    assert_eq!(out[0], Effect::PersistState(HardState { term: 6, voted_for: None }));
    assert_eq!(node.leader(), Some(3));
    assert_eq!(node.log().snapshot_index(), 9);
}

#[test]
fn append_entries_below_the_snapshot_match_from_its_end() {
    let mut node = follower(2, &[1, 1, 2, 2]);
    receive(&mut node, 1, install(2, 3, 2));
    // The leader went back to index 1 (it did not know): entries 2..=5.
    let entries = vec![entry(2, 1), entry(3, 2), entry(4, 2), entry(5, 2)];
    let out = receive(&mut node, 1, Message::AppendEntries { term: 2, prev_index: 1, prev_term: 1, entries, commit: 5 });
    assert_eq!(out[0], Effect::Append(vec![entry(5, 2)]));
    assert_eq!(out[1], ack(2, 5));
    assert_eq!(out[2], Effect::Apply(vec![entry(4, 2), entry(5, 2)]));
    // Entirely below it: still a success, matching up to the snapshot.
    let out = receive(&mut node, 1, Message::AppendEntries { term: 2, prev_index: 0, prev_term: 0, entries: vec![entry(1, 1)], commit: 5 });
    assert_eq!(out, vec![ack(2, 3)]);
}

/// A single node: leads itself, so everything it proposes commits.
fn single() -> RaftNode {
    let config = RaftConfig { id: 1, voters: vec![1], ..config(1) };
    let mut node = RaftNode::new(config, HardState::default(), RaftLog::default(), None, 0, 1);
    let mut out = Vec::new();
    node.step(1_000, Input::Tick, &mut out);
    for i in 0..4u8 {
        node.step(1_000, Input::Propose(vec![i]), &mut out);
    }
    assert_eq!(node.applied_index(), 5);
    node
}

#[test]
fn compact_takes_only_applied_prefixes_past_the_last_snapshot() {
    let mut node = single();
    let mut out = Vec::new();
    node.step(1_001, Input::Compact { index: 6, data: b"future".to_vec() }, &mut out);
    assert!(!out.iter().any(|e| matches!(e, Effect::SaveSnapshot { .. })), "not applied yet");
    node.step(1_001, Input::Compact { index: 3, data: b"three".to_vec() }, &mut out);
    assert!(out.contains(&Effect::SaveSnapshot { index: 3, term: 1, data: b"three".to_vec() }));
    assert_eq!((node.log().snapshot_index(), node.log().first_index(), node.log().last_index()), (3, 4, 5));
    out.clear();
    node.step(1_001, Input::Compact { index: 2, data: b"older".to_vec() }, &mut out);
    assert!(!out.iter().any(|e| matches!(e, Effect::SaveSnapshot { .. })), "not past the last snapshot");
    assert_eq!(node.snapshot().map(|s| s.data.as_slice()), Some(&b"three"[..]));
}

#[test]
fn a_leader_sends_its_snapshot_to_a_follower_behind_it() {
    // Node 1 leads 3 voters; node 2 has all but never answered.
    let mut leader = RaftNode::new(config(1), HardState::default(), RaftLog::default(), None, 0, 1);
    let mut out = Vec::new();
    leader.step(1_000, Input::Tick, &mut out);
    for (from, message) in [(2, Message::PreVoteResponse { term: 1, granted: true, current: 0 }), (2, Message::RequestVoteResponse { term: 1, granted: true })] {
        leader.step(1_000, Input::Receive(Envelope { from, to: 1, message }), &mut out);
    }
    assert_eq!(leader.role(), Role::Leader);
    leader.step(1_000, Input::Propose(b"x".to_vec()), &mut out);
    // Node 2 acknowledges everything: entries 1 (no-op) and 2 commit.
    let acked = Message::AppendEntriesResponse { term: 1, success: true, match_index: 2 };
    leader.step(1_000, Input::Receive(Envelope { from: 2, to: 1, message: acked }), &mut out);
    assert_eq!(leader.applied_index(), 2);
    leader.step(1_000, Input::Compact { index: 2, data: b"two".to_vec() }, &mut out);
    // Node 3 says it holds nothing: only the snapshot can bring it up.
    out.clear();
    let behind = Message::AppendEntriesResponse { term: 1, success: false, match_index: 0 };
    leader.step(1_001, Input::Receive(Envelope { from: 3, to: 1, message: behind }), &mut out);
    let sent: Vec<&Message> = out.iter().filter_map(|e| if let Effect::Send(env) = e { Some(&env.message) } else { None }).collect();
    assert_eq!(sent, vec![&Message::InstallSnapshot { term: 1, last_index: 2, last_term: 1, data: b"two".to_vec() }]);
    // Its acknowledgement moves it past the snapshot: entries from 3 on.
    out.clear();
    leader.step(1_002, Input::Propose(b"y".to_vec()), &mut out);
    // Entry 3 is not committed yet, so no snapshot may cover it.
    leader.step(1_002, Input::Compact { index: 3, data: b"three".to_vec() }, &mut out);
    assert!(!out.iter().any(|e| matches!(e, Effect::SaveSnapshot { .. })), "a snapshot of an unapplied entry");
    assert_eq!(leader.log().snapshot_index(), 2);
    out.clear();
    let caught_up = Message::AppendEntriesResponse { term: 1, success: true, match_index: 2 };
    leader.step(1_003, Input::Receive(Envelope { from: 3, to: 1, message: caught_up }), &mut out);
    let sent: Vec<&Message> = out.iter().filter_map(|e| if let Effect::Send(env) = e { Some(&env.message) } else { None }).collect();
    assert!(matches!(sent[..], [Message::AppendEntries { prev_index: 2, prev_term: 1, entries, .. }] if entries.len() == 1), "{sent:?}");
}
