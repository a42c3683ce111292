//! Background work driven by timer ticks: retention and time-based rolls
//! every `log_retention_check_interval_ms`, and the log cleaner.
//!
//! The machine is single-threaded, so the cleaner runs as an incremental
//! job: each tick does one step of at most `log_cleaner_step_bytes`, and
//! while work remains the machine asks for another tick right away. The
//! adapter handles queued requests between ticks, so produce and fetch
//! wait for at most one step, never for a whole compaction.

use std::collections::{BTreeMap, VecDeque};

use super::topic::Partition;
use super::{Broker, Effect};
use crate::Millis;
use crate::log::{CleanProgress, Cleaner, dirty_bytes};
use crate::storage::Storage;

/// Counters of what housekeeping did, for tests and operators.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HousekeepingStats {
    pub checks: u64,
    pub segments_deleted: u64,
    pub bytes_deleted: u64,
    pub segments_rolled: u64,
    pub cleaner_passes: u64,
    pub cleaner_steps: u64,
    pub cleaner_aborts: u64,
    pub segments_compacted: u64,
    pub records_compacted: u64,
    pub errors: u64,
    pub last_error: Option<String>,
}

/// What compaction knows about one partition (in memory: after a restart
/// the first pass compacts from the log start again).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Compacted {
    /// Tells a recreated topic of the same name apart.
    topic_id: [u8; 16],
    /// Offsets below this were compacted by a finished pass.
    first_dirty: i64,
    /// When a tombstone kept by the last pass may be removed.
    tombstone_due: Option<Millis>,
}

#[derive(Debug)]
struct Job {
    topic: String,
    topic_id: [u8; 16],
    partition: i32,
    cleaner: Cleaner,
}

#[derive(Debug, Default)]
pub(super) struct Housekeeping {
    /// The next retention check (armed as a timer).
    next_check: Option<Millis>,
    compacted: BTreeMap<(String, i32), Compacted>,
    /// Partitions waiting for the cleaner, dirtiest first.
    queue: VecDeque<(String, i32)>,
    job: Option<Job>,
    stats: HousekeepingStats,
}

impl Housekeeping {
    fn note_error(&mut self, context: String) {
        self.stats.errors += 1;
        self.stats.last_error = Some(context);
    }
}

impl<S: Storage> Broker<S> {
    pub fn housekeeping_stats(&self) -> &HousekeepingStats {
        &self.housekeeping.stats
    }

    fn check_interval(&self) -> Millis {
        self.config.log_retention_check_interval_ms.max(1)
    }

    /// Arms the first retention check (called on every input).
    pub(super) fn arm_housekeeping(&mut self, now: Millis, out: &mut Vec<Effect>) {
        if self.housekeeping.next_check.is_none() {
            let at = now.saturating_add(self.check_interval());
            self.housekeeping.next_check = Some(at);
            out.push(Effect::Timer { at });
        }
    }

    /// Runs a due retention check, then one cleaner step.
    pub(super) fn housekeeping_tick(&mut self, now: Millis, out: &mut Vec<Effect>) {
        if self.housekeeping.next_check.is_some_and(|at| at <= now) {
            let at = now.saturating_add(self.check_interval());
            self.housekeeping.next_check = Some(at);
            out.push(Effect::Timer { at });
            self.housekeeping.stats.checks += 1;
            self.retention_check(now, out);
            self.queue_dirty_logs(now);
        }
        if self.clean_step(now) {
            // More to do: come back at once, after queued requests.
            out.push(Effect::Timer { at: now });
        }
    }

    /// Rolls segments older than `segment.ms` and deletes segments past
    /// retention, in every partition.
    fn retention_check(&mut self, now: Millis, out: &mut Vec<Effect>) {
        let acks_wait = self.config.flush.acks_wait_for_sync();
        let hk = &mut self.housekeeping;
        let mut rolled = false;
        for (name, topic) in self.topics.iter_mut() {
            for (i, p) in topic.partitions.iter_mut().enumerate() {
                match p.log.roll_if_due(&mut self.storage, now) {
                    Ok(r) => {
                        rolled |= r;
                        hk.stats.segments_rolled += u64::from(r);
                    }
                    Err(e) => hk.note_error(format!("rolling {name}-{i}: {e}")),
                }
                // Nothing a consumer cannot see yet is deleted.
                let hw = if acks_wait { p.durable_end } else { p.log.log_end_offset() };
                match p.log.apply_retention(&mut self.storage, now, hw) {
                    Ok(o) => {
                        rolled |= o.rolled;
                        hk.stats.segments_deleted += o.deleted_segments as u64;
                        hk.stats.bytes_deleted += o.deleted_bytes;
                    }
                    Err(e) => hk.note_error(format!("retention of {name}-{i}: {e}")),
                }
            }
        }
        if rolled {
            // The new active segments' files become durable with the next sync.
            self.request_sync(out);
        }
    }

    /// Queues the compacted partitions whose dirty share reached
    /// `min.cleanable.dirty.ratio`, or that hold a tombstone now due.
    fn queue_dirty_logs(&mut self, now: Millis) {
        let hk = &mut self.housekeeping;
        hk.compacted.retain(|(t, _), c| self.topics.get(t).is_some_and(|topic| topic.meta.topic_id == c.topic_id));
        let mut due: Vec<(f64, (String, i32))> = Vec::new();
        for (name, topic) in &self.topics {
            for (i, p) in topic.partitions.iter().enumerate() {
                let key = (name.clone(), i as i32);
                let config = p.log.config();
                let busy = hk.job.as_ref().is_some_and(|j| j.topic == key.0 && j.partition == key.1);
                if !config.cleanup_policy.compacts() || busy || hk.queue.contains(&key) {
                    continue;
                }
                let known = hk.compacted.get(&key);
                let first_dirty = known.map_or(0, |c| c.first_dirty).max(p.log.log_start_offset());
                let (dirty, total) = dirty_bytes(&p.log, first_dirty, now);
                let ratio = if total == 0 { 0.0 } else { dirty as f64 / total as f64 };
                let tombstones = known.and_then(|c| c.tombstone_due).is_some_and(|t| t <= now);
                if (dirty > 0 && ratio >= config.min_cleanable_dirty_ratio.get()) || tombstones {
                    due.push((ratio, key));
                }
            }
        }
        due.sort_by(|a, b| b.0.total_cmp(&a.0));
        hk.queue.extend(due.into_iter().map(|(_, key)| key));
    }

    /// One bounded step of the cleaner, starting the next queued pass if
    /// none runs. Returns whether cleaning work remains.
    fn clean_step(&mut self, now: Millis) -> bool {
        let hk = &mut self.housekeeping;
        while hk.job.is_none() {
            let Some((topic, partition)) = hk.queue.pop_front() else { return false };
            let Some(t) = self.topics.get(&topic) else { continue };
            let Some(p) = t.partitions.get(partition as usize) else { continue };
            if !p.log.config().cleanup_policy.compacts() {
                continue;
            }
            let first_dirty = hk
                .compacted
                .get(&(topic.clone(), partition))
                .filter(|c| c.topic_id == t.meta.topic_id)
                .map_or(0, |c| c.first_dirty);
            let cleaner = Cleaner::new(first_dirty, self.config.log_cleaner);
            hk.job = Some(Job { topic, topic_id: t.meta.topic_id, partition, cleaner });
        }
        let Some(mut job) = hk.job.take() else { return false };
        // The topic may have been deleted or recreated, or stopped
        // compacting, since the last step.
        let partition = self
            .topics
            .get_mut(&job.topic)
            .filter(|t| t.meta.topic_id == job.topic_id)
            .and_then(|t| t.partitions.get_mut(job.partition as usize))
            .filter(|p| p.log.config().cleanup_policy.compacts());
        let Some(Partition { log, producers, .. }) = partition else {
            job.cleaner.discard(&mut self.storage);
            hk.stats.cleaner_aborts += 1;
            return !hk.queue.is_empty();
        };
        let budget = self.config.log_cleaner_step_bytes;
        let result = job.cleaner.step(log, &mut self.storage, now, budget, &|h| producers.remembers(h));
        hk.stats.cleaner_steps += 1;
        let name = format!("{}-{}", job.topic, job.partition);
        match result {
            Ok(CleanProgress::Working) => {
                hk.job = Some(job);
                return true;
            }
            Ok(CleanProgress::Done(summary)) => {
                hk.stats.cleaner_passes += 1;
                hk.stats.segments_compacted += summary.segments_rewritten as u64;
                hk.stats.records_compacted += summary.records_removed;
                if summary.stalled {
                    hk.note_error(format!("compacting {name}: the key map filled up inside one segment"));
                }
                let state = Compacted {
                    topic_id: job.topic_id,
                    first_dirty: summary.cleaned_up_to,
                    tombstone_due: summary.next_tombstone_expiry,
                };
                hk.compacted.insert((job.topic, job.partition), state);
            }
            Ok(CleanProgress::Aborted(why)) => {
                hk.stats.cleaner_aborts += 1;
                hk.stats.last_error = Some(format!("compacting {name}: {why}"));
            }
            Err(e) => hk.note_error(format!("compacting {name}: {e}")),
        }
        !hk.queue.is_empty()
    }
}
