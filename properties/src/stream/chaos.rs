//! The stream chaos suite (`scripts/chaos --suite stream`): each seed runs
//! one query through [`super::sim`]: four seeds in five one of the engine's
//! stream plans ([`EngineLogic::pick`]: windowed counts in append and
//! update mode, a complete-mode aggregate, a stateless filter, joins with
//! a `topic_table()`), the fifth
//! the small windowed count of [`WindowedCount`]; windows and watermark
//! delays drawn from the seed.

use millrace_core::rng::Rng;

use super::engine_logic::EngineLogic;
use super::logic::WindowedCount;
use super::sim::{self, SeedRun};

pub fn run_seed(seed: u64, record: bool) -> SeedRun {
    let mut rng = Rng::new(seed ^ 0x57ea_3c4a_05ee_d001);
    let window_ms = [250, 1_000, 2_000][(rng.next_u64() % 3) as usize];
    let delay_ms = (rng.next_u64() % 3_000) as i64;
    if seed % 5 == 4 {
        sim::run_seed(seed, &WindowedCount { window_ms, delay_ms }, record)
    } else {
        sim::run_seed(seed, &EngineLogic::pick(rng.next_u64(), delay_ms), record)
    }
}
