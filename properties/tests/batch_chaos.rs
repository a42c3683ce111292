//! The batch chaos suite's own checks (its seeds run through `scripts/chaos
//! --suite batch`): seeds pass and replay to the same digest, and over a
//! few hundred seeds every fault and recovery path happens.

use millrace_properties::batch::chaos::run_seed;
use millrace_properties::batch::sim::Stats;

#[test]
fn seeds_pass_and_replay_to_the_same_digest() {
    for seed in 0..10 {
        let a = run_seed(seed, false);
        assert_eq!(a.failure, None, "seed {seed}\n{}", a.scenario);
        let b = run_seed(seed, true);
        assert_eq!(a.digest, b.digest, "seed {seed}: same seed, different effects");
        assert!(!b.history.is_empty());
    }
}

/// The faults do happen and the recovery paths run: over a few hundred
/// seeds there are crashes, fetch failures (some across a split), injected
/// task failures, speculative copies, kills, messages lost with broken
/// connections; and in some seeds tasks spill.
#[test]
fn the_faults_exercise_every_recovery_path() {
    let mut total = Stats::default();
    let mut seeds_with_fetch_failures = 0;
    let mut seeds_spilling = 0;
    for seed in 0..300 {
        let r = run_seed(seed, false);
        assert_eq!(r.failure, None, "seed {seed}\n{}", r.scenario);
        seeds_with_fetch_failures += u64::from(r.stats.fetch_failures > 0);
        seeds_spilling += u64::from(r.spilled_bytes > 0);
        total.add(&r.stats);
    }
    eprintln!("{total:?}; {seeds_with_fetch_failures} seeds with fetch failures; {seeds_spilling} with tasks that spilled");
    assert!(seeds_spilling > 30, "only {seeds_spilling} seeds spilled");
    assert!(
        total.crashes > 20
            && total.fetch_failures > 20
            && total.split_fetches > 5
            && total.injected_failures > 20
            && total.speculative > 10
            && total.kills > 20
            && total.dropped > 20,
        "{total:?}"
    );
}
