//! Property: for random tables and random plans, the vectorised,
//! stage-cut execution returns the same rows as the row-at-a-time
//! reference evaluator (invariant 6 without faults; the batch chaos suite,
//! `scripts/chaos --suite batch`, runs the same plans on the driver and
//! workers under faults). The plans come from `millrace_engine::testing`.

use millrace_engine::local::run_local;
use millrace_engine::physical::PlannerConfig;
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
