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
    let mut logs = (0, 0, 0);
    for seed in 0..SEEDS {
        let run = run_seed(seed, &logic, false);
        totals.0 += run.stats.crashes + run.stats.zombies;
        totals.1 += run.stats.skipped_chunks;
        totals.2 += run.stats.batches;
        totals.3 += run.stats.output_records;
        logs.0 += run.stats.purged;
        logs.1 += run.stats.compacted;
        logs.2 += run.stats.outruns;
        if let Some(f) = run.failure {
            failures.push(format!("seed {seed}: {f}\n{}", run.scenario.describe()));
        }
    }
    assert!(failures.is_empty(), "{} of {SEEDS} seeds failed; first:\n{}", failures.len(), failures.iter().take(4).cloned().collect::<Vec<_>>().join("\n"));
    // The faults must have bitten: re-runs whose duplicate chunks the sink dropped.
    assert!(totals.0 > SEEDS / 2 && totals.1 > 0 && totals.2 > SEEDS * 10 && totals.3 > SEEDS * 10, "{totals:?}");
    // And the logs were purged and compacted under the runners, and
    // zombies met batches purged under them.
    assert!(logs.0 > SEEDS * 10 && logs.1 > SEEDS * 10 && logs.2 > 0, "purged, compacted, outrun: {logs:?}");
    eprintln!("purged, compacted, outrun: {logs:?}");
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

/// The engine's joins with a `topic_table()` under the same faults: the
/// stateless left join and the windowed count through an inner join, each
/// over 40 seeds, checked against the reference evaluator batch by batch.
#[test]
fn joins_with_a_table_write_exactly_once() {
    use millrace_properties::stream::engine_logic::EngineLogic;
    use millrace_properties::stream::logic::{InputRecord, StreamLogic};
    let mut batches = 0;
    for seed in 0..80u64 {
        // pick(n) with n % 6 == 4 is the left join, 5 the windowed count.
        let n = 4 + seed % 2 + 6 * (seed / 2);
        let logic = EngineLogic::pick(n, (seed % 3) as i64 * 700);
        assert!(logic.sql.contains("topic_table('pages'"), "{}", logic.sql);
        let run = run_seed(1_000 + seed, &logic, false);
        assert_eq!(run.failure, None, "seed {}: {}\n{}", 1_000 + seed, logic.describe(), run.scenario.describe());
        batches += run.stats.batches;
    }
    assert!(batches > 400, "{batches} batches");
    // What the join reads from the table: the latest category per page,
    // nothing for a deleted page (k4) or one never there (k3).
    let logic = EngineLogic::pick(4, 0);
    let input: Vec<InputRecord> = (0..5)
        .map(|i| InputRecord { partition: 0, offset: i, timestamp: i, key: None, value: format!("{{\"id\":{i},\"page\":\"k{i}\",\"ts\":{i}}}") })
        .collect();
    let out = logic.run(&Default::default(), &input, None).unwrap();
    assert_eq!(out, logic.reference(&Default::default(), &input, None));
    let values: Vec<&str> = out.records.iter().map(|(_, v)| v.as_str()).collect();
    let unmatched = |page: &str| values.iter().any(|v| v.contains(&format!("\"page\":\"{page}\"")) && v.contains("\"category\":null"));
    assert!(values.iter().any(|v| v.contains("\"page\":\"k0\"") && v.contains("\"category\":\"start\"")), "{values:?}");
    assert!(values.iter().any(|v| v.contains("\"page\":\"k2\"") && v.contains("\"category\":\"shop\"")), "{values:?}");
    assert!(unmatched("k3") && unmatched("k4"), "{values:?}");
    assert_eq!(values.len(), 5, "a left join keeps every event: {values:?}");
}
