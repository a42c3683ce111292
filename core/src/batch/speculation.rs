//! Stragglers (Spark's `checkSpeculatableTasks`): once enough of a task
//! set succeeded to know what a normal duration is, a task running far
//! longer than that gets one extra copy elsewhere.

use super::DriverConfig;
use super::tasks::TaskSet;
use crate::Millis;

/// Marks the partitions of `set` that deserve a speculative copy (they
/// join `set.speculatable` until a slot is found). Returns how many were
/// marked.
pub(crate) fn mark_stragglers(set: &mut TaskSet, now: Millis, config: &DriverConfig) -> usize {
    // Spark: max(floor(quantile × tasks), 1) successes before judging.
    let min_finished = ((config.speculation_quantile * f64::from(set.size)).floor() as u32).max(1);
    if (set.done.len() as u32) < min_finished || set.durations.is_empty() {
        return 0;
    }
    let threshold = (config.speculation_multiplier * median(&set.durations) as f64).max(config.speculation_min_ms as f64);
    let mut marked = 0;
    for (partition, copies) in &set.running {
        // One copy running, none tried before: a second copy is one more
        // chance, not a fan-out.
        if copies.len() != 1 || set.speculated.contains(partition) {
            continue;
        }
        let started = *copies.values().next().expect("one copy");
        if (now - started) as f64 > threshold && set.speculatable.insert(*partition) {
            marked += 1;
        }
    }
    marked
}

/// The median of the successful durations (the upper middle one of an
/// even count).
fn median(values: &[Millis]) -> Millis {
    let mut v = values.to_vec();
    v.sort_unstable();
    v[v.len() / 2]
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn set_with(done: &[(u32, Millis)], running: &[(u32, Millis)]) -> TaskSet {
        let all: BTreeSet<u32> = done.iter().chain(running).map(|(p, _)| *p).collect();
        let mut set = TaskSet::new(0, all);
        for (i, (p, started)) in running.iter().enumerate() {
            set.launched(*p, 100 + i as u64, *started);
        }
        for (p, duration) in done {
            set.launched(*p, 1 + u64::from(*p), 0);
            set.succeed(*p, *duration);
        }
        set
    }

    #[test]
    fn a_task_past_three_medians_is_marked_once_the_quantile_succeeded() {
        let config = DriverConfig::default();
        let done: Vec<(u32, Millis)> = (0..9).map(|p| (p, 200)).collect();
        let mut set = set_with(&done, &[(9, 0)]);
        assert_eq!(mark_stragglers(&mut set, 600, &config), 0, "exactly 3 × median is not longer");
        assert_eq!(mark_stragglers(&mut set, 601, &config), 1);
        assert_eq!(set.speculatable, BTreeSet::from([9]));
        assert_eq!(mark_stragglers(&mut set, 700, &config), 0, "marked already");
    }

    #[test]
    fn nothing_is_marked_before_the_quantile() {
        let config = DriverConfig::default();
        let done: Vec<(u32, Millis)> = (0..8).map(|p| (p, 10)).collect();
        let mut set = set_with(&done, &[(8, 0), (9, 0)]);
        assert_eq!(mark_stragglers(&mut set, 100_000, &config), 0, "8 of 10 < 90%");
    }

    #[test]
    fn the_minimum_runtime_bounds_short_medians() {
        let config = DriverConfig::default();
        let mut set = set_with(&[(0, 1)], &[(1, 0)]);
        assert_eq!(mark_stragglers(&mut set, 100, &config), 0, "100 ms is the floor");
        assert_eq!(mark_stragglers(&mut set, 101, &config), 1);
    }
}
