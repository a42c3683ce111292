//! The leader's ISR and high-watermark bookkeeping under random appends,
//! fresh and stale follower fetches, lag checks and ISR changes committed
//! late: the high watermark never goes back, never passes the leader's log
//! end, and never passes what any member of the ISR really holds — so a
//! record consumers can see survives the loss of any in-sync replica.

use millrace_core::replication::{IsrChange, LeaderPartition};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Append(i64),
    /// Follower (2 or 3) really gets this many more records.
    Replicate(u8, i64),
    /// Follower fetches: reports its true end, or an older one (a late request).
    Fetch(u8, bool),
    Advance(i64),
    CheckLag,
    /// The controller commits the oldest pending ISR change.
    CommitIsr,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (1..20i64).prop_map(Op::Append),
        (2..4u8, 1..20i64).prop_map(|(f, n)| Op::Replicate(f, n)),
        (2..4u8, any::<bool>()).prop_map(|(f, stale)| Op::Fetch(f, stale)),
        (1..800i64).prop_map(Op::Advance),
        Just(Op::CheckLag),
        Just(Op::CommitIsr),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn the_high_watermark_is_safe(ops in prop::collection::vec(op(), 1..120)) {
        let mut now = 0;
        let mut leader_end = 0i64;
        // The true log ends of followers 2 and 3, and what they last reported.
        let mut truth = [0i64; 4];
        let mut reported = [0i64; 4];
        let mut l = LeaderPartition::new(1, &[1, 2, 3], &[1, 2, 3], 0, 0, 2, 1_000, now);
        let mut pending: Vec<IsrChange> = Vec::new();
        let mut last_hw = 0;
        for op in ops {
            match op {
                Op::Append(n) => {
                    leader_end += n;
                    l.appended(leader_end);
                }
                Op::Replicate(f, n) => truth[f as usize] = (truth[f as usize] + n).min(leader_end),
                Op::Fetch(f, stale) => {
                    let f = f as usize;
                    let at = if stale { reported[f] } else { truth[f] };
                    reported[f] = reported[f].max(at);
                    if let Some(change) = l.fetched(f as i32, at, now) {
                        pending.push(change);
                    }
                }
                Op::Advance(ms) => now += ms,
                Op::CheckLag => pending.extend(l.check_lag(now)),
                Op::CommitIsr => {
                    if !pending.is_empty() {
                        // The controller commits what the leader proposed,
                        // however late: the leader must have made it safe.
                        let (IsrChange::Shrink(isr) | IsrChange::Expand(isr)) = pending.remove(0);
                        l.isr_changed(&isr);
                    }
                }
            }
            let hw = l.high_watermark();
            prop_assert!(hw >= last_hw, "high watermark went back from {last_hw} to {hw}");
            prop_assert!(hw <= leader_end, "high watermark {hw} past the leader's end {leader_end}");
            for r in l.isr() {
                if r != 1 {
                    prop_assert!(truth[r as usize] >= hw, "ISR member {r} holds {} below the high watermark {hw}", truth[r as usize]);
                }
            }
            last_hw = hw;
        }
    }
}
