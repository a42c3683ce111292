//! One stage attempt's task set (Spark's TaskSetManager, minus placement):
//! which of its partitions wait, run (with the copies running them) or are
//! done, and how often each failed.

use std::collections::{BTreeMap, BTreeSet};

use super::AttemptId;
use crate::Millis;

#[derive(Debug, Clone)]
pub(crate) struct TaskSet {
    /// The stage attempt this set is.
    pub attempt: u32,
    /// The partitions it runs: those missing when it was created.
    pub size: u32,
    /// Waiting for a slot, in partition order.
    pub pending: BTreeSet<u32>,
    /// The copies running each partition, with their launch times.
    pub running: BTreeMap<u32, BTreeMap<AttemptId, Millis>>,
    pub done: BTreeSet<u32>,
    /// Counted failures per partition (not kills, losses or fetch failures).
    pub failures: BTreeMap<u32, u32>,
    /// How long each successful task ran, for speculation's median.
    pub durations: Vec<Millis>,
    /// Partitions that were given their one speculative copy.
    pub speculated: BTreeSet<u32>,
    /// Partitions chosen for a speculative copy, waiting for a slot.
    pub speculatable: BTreeSet<u32>,
}

impl TaskSet {
    pub fn new(attempt: u32, partitions: BTreeSet<u32>) -> Self {
        Self {
            attempt,
            size: partitions.len() as u32,
            pending: partitions,
            running: BTreeMap::new(),
            done: BTreeSet::new(),
            failures: BTreeMap::new(),
            durations: Vec::new(),
            speculated: BTreeSet::new(),
            speculatable: BTreeSet::new(),
        }
    }

    pub fn launched(&mut self, partition: u32, attempt: AttemptId, now: Millis) {
        self.pending.remove(&partition);
        self.speculatable.remove(&partition);
        self.running.entry(partition).or_default().insert(attempt, now);
    }

    /// Forgets a copy that ended (any outcome); returns when it started.
    pub fn copy_ended(&mut self, partition: u32, attempt: AttemptId) -> Option<Millis> {
        let copies = self.running.get_mut(&partition)?;
        let started = copies.remove(&attempt);
        if copies.is_empty() {
            self.running.remove(&partition);
            self.speculatable.remove(&partition);
        }
        started
    }

    /// Puts a partition back in the queue if nothing runs or finished it.
    pub fn requeue(&mut self, partition: u32) {
        if !self.done.contains(&partition) && !self.running.contains_key(&partition) {
            self.pending.insert(partition);
        }
    }

    /// Records a success; the other copies still running are returned (to
    /// be killed: the first success wins).
    pub fn succeed(&mut self, partition: u32, duration: Millis) -> Vec<AttemptId> {
        self.done.insert(partition);
        self.pending.remove(&partition);
        self.speculatable.remove(&partition);
        self.durations.push(duration.max(0));
        self.running.remove(&partition).map(|c| c.into_keys().collect()).unwrap_or_default()
    }

    /// Counts a failure; returns how many this partition had.
    pub fn fail(&mut self, partition: u32) -> u32 {
        let n = self.failures.entry(partition).or_default();
        *n += 1;
        let n = *n;
        self.requeue(partition);
        n
    }

    /// A done partition's output was lost: it must run again.
    pub fn undo(&mut self, partition: u32) {
        if self.done.remove(&partition) {
            self.requeue(partition);
        }
    }

    pub fn is_complete(&self) -> bool {
        self.done.len() as u32 == self.size
    }

    /// Every copy running, as (partition, attempt).
    pub fn copies(&self) -> Vec<(u32, AttemptId)> {
        self.running.iter().flat_map(|(p, c)| c.keys().map(move |a| (*p, *a))).collect()
    }

    pub fn running_count(&self) -> u32 {
        self.running.values().map(|c| c.len() as u32).sum()
    }
}
