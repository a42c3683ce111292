//! The stream chaos suite (`scripts/chaos --suite stream`): each seed runs
//! one query through [`super::sim`] — for now the windowed count of
//! [`super::logic::WindowedCount`] with a window and watermark delay drawn
//! from the seed.

use millrace_core::rng::Rng;

use super::logic::WindowedCount;
use super::sim::{self, SeedRun};

pub fn run_seed(seed: u64, record: bool) -> SeedRun {
    let mut rng = Rng::new(seed ^ 0x57ea_3c4a_05ee_d001);
    let window_ms = [250, 1_000, 2_000][(rng.next_u64() % 3) as usize];
    let delay_ms = (rng.next_u64() % 3_000) as i64;
    let logic = WindowedCount { window_ms, delay_ms };
    sim::run_seed(seed, &logic, record)
}
