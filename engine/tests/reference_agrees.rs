//! Property: for random tables and random plans, the vectorised,
//! stage-cut execution returns the same rows as the row-at-a-time
//! reference evaluator (invariant 6 without faults; the batch chaos suite,
//! `scripts/chaos --suite batch`, runs the same plans on the driver and
//! workers under faults). The plans come from `millrace_engine::testing`.

use millrace_engine::local::{run_local, run_stages_spilling};
use millrace_engine::physical::{PlannerConfig, cut};
use millrace_engine::spill::{MemorySpace, Spill};
use millrace_engine::reference::evaluate;
use millrace_engine::testing::random_plan;
use millrace_engine::value::batches_to_rows;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]
    #[test]
    fn engine_equals_reference(p in random_plan()) {
        let expected = evaluate(&p.plan, None).unwrap();
        let config = PlannerConfig { shuffle_partitions: p.shuffle_partitions };
        let actual = batches_to_rows(&run_local(&p.plan, config, None).unwrap());
        if let Err(e) = p.compare(&actual, &expected) {
            prop_assert!(false, "{}\nplan:\n{}", e, p.plan.display_indent());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]
    /// The same with every aggregate and join spilling: a memory limit of
    /// a few hundred bytes splits their inputs into runs (some split again)
    /// and the answer must not change.
    #[test]
    fn spilling_engine_equals_reference(p in random_plan(), limit_bytes in prop::sample::select(vec![0usize, 300, 3_000])) {
        let expected = evaluate(&p.plan, None).unwrap();
        let stages = cut(&p.plan, PlannerConfig { shuffle_partitions: p.shuffle_partitions }).unwrap();
        let space = MemorySpace::default();
        let spill = Spill { limit_bytes, space: &space };
        let actual = batches_to_rows(&run_stages_spilling(&stages, None, Some(spill)).unwrap());
        if let Err(e) = p.compare(&actual, &expected) {
            prop_assert!(false, "{}\nplan:\n{}", e, p.plan.display_indent());
        }
    }
}

/// The spilling path is taken: a group-by and a join over a few thousand
/// rows with a 1 kB limit write runs, and give the unspilled answer.
#[test]
fn a_group_by_and_a_join_over_the_limit_spill_and_agree() {
    use millrace_engine::dataset::Context;
    let ctx = Context::default();
    let dir = std::env::temp_dir().join(format!("millrace-spill-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let facts = dir.join("facts.csv");
    let dims = dir.join("dims.csv");
    let mut f = String::from("k,v\n");
    for i in 0..5_000 {
        f.push_str(&format!("key{},{}\n", (i * 7919) % 613, i));
    }
    std::fs::write(&facts, f).unwrap();
    let mut d = String::from("k,name\n");
    for i in 0..700 {
        d.push_str(&format!("key{i},name{}\n", i % 11));
    }
    std::fs::write(&dims, d).unwrap();
    let sql = format!(
        "SELECT d.name, count(*) AS n, sum(f.v) AS s FROM read_csv('{}') f JOIN read_csv('{}') d ON f.k = d.k GROUP BY d.name",
        facts.display(),
        dims.display()
    );
    let plan = ctx.sql(&sql).unwrap().plan;
    let stages = cut(&plan, PlannerConfig { shuffle_partitions: 3 }).unwrap();
    let plain = run_stages_spilling(&stages, None, None).unwrap();
    let space = MemorySpace::default();
    let spilled = run_stages_spilling(&stages, None, Some(Spill { limit_bytes: 1_000, space: &space })).unwrap();
    assert!(space.written() > 10_000, "only {} bytes spilled", space.written());
    let mut a = batches_to_rows(&plain);
    let mut b = batches_to_rows(&spilled);
    assert_eq!(a.len(), 11);
    a.sort_by(|x, y| format!("{x:?}").cmp(&format!("{y:?}")));
    b.sort_by(|x, y| format!("{x:?}").cmp(&format!("{y:?}")));
    assert_eq!(a, b);
    let _ = std::fs::remove_dir_all(&dir);
}
