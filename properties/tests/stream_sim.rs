//! Stream query runners under crashes, zombies, broker outages and batch
//! failures, with a windowed count whose answers the checker recomputes
//! (the chaos runner's `--suite stream` runs the engine's plans the same way).

use millrace_properties::stream::logic::WindowedCount;
use millrace_properties::stream::sim::run_seed;

const SEEDS: u64 = 300;

#[test]
fn every_seed_writes_exactly_once() {
    let logic = WindowedCount { window_ms: 1_000, delay_ms: 1_500 };
    let mut failures = Vec::new();
    let mut totals = (0, 0, 0, 0);
    for seed in 0..SEEDS {
        let run = run_seed(seed, &logic, false);
        totals.0 += run.stats.crashes + run.stats.zombies;
        totals.1 += run.stats.skipped_chunks;
        totals.2 += run.stats.batches;
        totals.3 += run.stats.output_records;
        if let Some(f) = run.failure {
            failures.push(format!("seed {seed}: {f}\n{}", run.scenario.describe()));
        }
    }
    assert!(failures.is_empty(), "{} of {SEEDS} seeds failed; first:\n{}", failures.len(), failures.iter().take(4).cloned().collect::<Vec<_>>().join("\n"));
    // The faults must have bitten: re-runs whose duplicate chunks the sink dropped.
    assert!(totals.0 > SEEDS / 2 && totals.1 > 0 && totals.2 > SEEDS * 10 && totals.3 > SEEDS * 10, "{totals:?}");
}

#[test]
fn same_seed_same_history() {
    let logic = WindowedCount { window_ms: 500, delay_ms: 700 };
    for seed in 0..20 {
        let a = run_seed(seed, &logic, false);
        let b = run_seed(seed, &logic, false);
        assert_eq!(a.digest, b.digest, "seed {seed}");
    }
}
