//! Election timeouts are drawn per voter: nodes started with the same seed
//! (a simulator handing every node one seed, two processes started in the
//! same nanosecond) must still time out at different moments, or they
//! become candidates together in every term, split the vote and never
//! elect a leader.

use millrace_core::raft::*;

fn first_candidacies(seed: u64) -> Vec<i64> {
    let mut times = Vec::new();
    for id in 1..=3 {
        let config = RaftConfig {
            id,
            voters: vec![1, 2, 3],
            election_timeout_min_ms: 500,
            election_timeout_max_ms: 1_000,
            heartbeat_interval_ms: 100,
            max_entries_per_message: 16,
        };
        let mut node = RaftNode::new(config, HardState::default(), RaftLog::default(), None, 0, seed);
        let started = (0..=1_000).find(|&now| {
            let mut out = Vec::new();
            node.step(now, Input::Tick, &mut out);
            out.iter().any(|e| matches!(e, Effect::Send(env) if matches!(env.message, Message::PreVote { .. })))
        });
        times.push(started.expect("a follower that hears no leader runs within the maximum timeout"));
    }
    times
}

#[test]
fn voters_with_one_seed_time_out_at_different_moments() {
    // Independent draws from 500 values meet by chance (about one pair in
    // 170); draws that ignore the voter's id meet every time.
    let together: Vec<(u64, Vec<i64>)> = (0..200)
        .map(|seed| (seed, first_candidacies(seed)))
        .filter(|(_, t)| t[0] == t[1] || t[1] == t[2] || t[0] == t[2])
        .collect();
    assert!(together.len() <= 10, "{} of 200 seeds had two voters run in the same millisecond: {together:?}", together.len());
}
