//! A job's stage bookkeeping (Spark's DAGScheduler, per job): which stages
//! wait for parents, run, or failed and wait to be resubmitted; where each
//! map output lives; which result partitions are committed.
//!
//! Nothing here talks to workers: methods return the task attempts that
//! must be killed and the driver sends the kills.

use std::collections::{BTreeMap, BTreeSet};

use super::tasks::TaskSet;
use super::{AttemptId, JobId, JobProgress, JobSpec, JobState, MapLocation, ShuffleInput, StageId, StageOutput, StageProgress, StageSpec, WorkerId};

/// More partitions than this in one stage is a mistake, not a job (the
/// driver keeps a slot per partition).
pub(crate) const MAX_PARTITIONS: u32 = 1 << 20;

/// Where a map output lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Output {
    pub worker: WorkerId,
    pub epoch: u64,
    /// The driver's next attempt id when it was registered: attempts from
    /// here on were launched knowing this location.
    pub since: AttemptId,
}

#[derive(Debug, Clone)]
pub(crate) struct Stage {
    pub spec: StageSpec,
    /// Shuffle-map stages: each map partition's output, if available.
    pub outputs: Vec<Option<Output>>,
    /// Stage attempts started so far; the current one is `attempts - 1`.
    pub attempts: u32,
    /// The current attempt's task set, while it runs.
    pub tasks: Option<TaskSet>,
    /// Attempts failed (by fetch failures) since the stage last completed.
    pub failed_attempts: u32,
}

impl Stage {
    pub fn is_map(&self) -> bool {
        matches!(self.spec.output, StageOutput::ShuffleMap { .. })
    }

    pub fn current_attempt(&self) -> u32 {
        self.attempts.saturating_sub(1)
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Job {
    pub id: JobId,
    pub state: JobState,
    pub stages: BTreeMap<StageId, Stage>,
    /// Stage ids in the spec's (topological) order.
    pub order: Vec<StageId>,
    pub result: StageId,
    /// The commit coordinator's record: the one accepted result of each
    /// result partition, and how many are accepted.
    pub results: Vec<Option<Vec<u8>>>,
    pub finished: u32,
    /// Submitted, waiting for parents.
    pub waiting: BTreeSet<StageId>,
    /// With a task set.
    pub running: BTreeSet<StageId>,
    /// Failed by a fetch failure, waiting for the resubmission.
    pub failed: BTreeSet<StageId>,
    /// Every worker a task of this job was launched on (to clean up).
    pub workers: BTreeSet<WorkerId>,
}

impl Job {
    /// A job from its spec, or why the spec is not one.
    pub fn new(id: JobId, spec: JobSpec) -> Result<Self, String> {
        let Some(last) = spec.stages.last() else { return Err("a job needs at least one stage".into()) };
        let result = last.id;
        let result_partitions = last.partitions;
        let mut stages: BTreeMap<StageId, Stage> = BTreeMap::new();
        let mut order = Vec::new();
        let count = spec.stages.len();
        for (i, s) in spec.stages.into_iter().enumerate() {
            let is_last = i + 1 == count;
            match (&s.output, is_last) {
                (StageOutput::Result, false) => return Err(format!("stage {} is a result stage but not the last one", s.id)),
                (StageOutput::ShuffleMap { .. }, true) => return Err(format!("the last stage ({}) must be the result stage", s.id)),
                _ => {}
            }
            if stages.contains_key(&s.id) {
                return Err(format!("stage id {} appears twice", s.id));
            }
            for p in &s.parents {
                match stages.get(p) {
                    Some(parent) if parent.is_map() => {}
                    _ => return Err(format!("stage {} reads stage {p}, which is not an earlier shuffle-map stage", s.id)),
                }
            }
            if s.partitions > MAX_PARTITIONS {
                return Err(format!("stage {} has {} partitions (at most {MAX_PARTITIONS})", s.id, s.partitions));
            }
            if !s.preferred.is_empty() && s.preferred.len() != s.partitions as usize {
                return Err(format!("stage {}: {} preferred lists for {} partitions", s.id, s.preferred.len(), s.partitions));
            }
            let outputs = if matches!(s.output, StageOutput::ShuffleMap { .. }) { vec![None; s.partitions as usize] } else { Vec::new() };
            order.push(s.id);
            stages.insert(s.id, Stage { spec: s, outputs, attempts: 0, tasks: None, failed_attempts: 0 });
        }
        Ok(Self {
            id,
            state: JobState::Running,
            stages,
            order,
            result,
            results: vec![None; result_partitions as usize],
            finished: 0,
            waiting: BTreeSet::new(),
            running: BTreeSet::new(),
            failed: BTreeSet::new(),
            workers: BTreeSet::new(),
        })
    }

    /// A job that ended before it started (an invalid spec).
    pub fn ended(id: JobId, state: JobState) -> Self {
        Self {
            id,
            state,
            stages: BTreeMap::new(),
            order: Vec::new(),
            result: 0,
            results: Vec::new(),
            finished: 0,
            waiting: BTreeSet::new(),
            running: BTreeSet::new(),
            failed: BTreeSet::new(),
            workers: BTreeSet::new(),
        }
    }

    /// Drops what an ended job no longer needs (task sets, plan fragments,
    /// result bytes), keeping what its progress reports.
    pub fn release(&mut self) {
        self.waiting.clear();
        self.running.clear();
        self.failed.clear();
        for stage in self.stages.values_mut() {
            stage.tasks = None;
            stage.spec.payload = Vec::new();
        }
        for r in self.results.iter_mut().flatten() {
            *r = Vec::new();
        }
    }

    pub fn stage(&self, s: StageId) -> &Stage {
        &self.stages[&s]
    }

    pub fn stage_mut(&mut self, s: StageId) -> &mut Stage {
        self.stages.get_mut(&s).expect("a stage of the job")
    }

    pub fn is_done(&self) -> bool {
        self.finished as usize == self.results.len()
    }

    /// The partitions of `s` whose output is not available.
    pub fn missing_partitions(&self, s: StageId) -> BTreeSet<u32> {
        let stage = self.stage(s);
        if stage.is_map() {
            stage.outputs.iter().enumerate().filter(|(_, o)| o.is_none()).map(|(p, _)| p as u32).collect()
        } else {
            self.results.iter().enumerate().filter(|(_, r)| r.is_none()).map(|(p, _)| p as u32).collect()
        }
    }

    pub fn is_available(&self, s: StageId) -> bool {
        let stage = self.stage(s);
        if stage.is_map() { stage.outputs.iter().all(Option::is_some) } else { self.is_done() }
    }

    pub fn missing_parents(&self, s: StageId) -> Vec<StageId> {
        self.stage(s).spec.parents.iter().copied().filter(|p| !self.is_available(*p)).collect()
    }

    /// Spark's `submitStage`: a stage whose parents are all available runs
    /// its missing partitions; otherwise its missing parents are submitted
    /// first and it waits for them.
    pub fn submit(&mut self, s: StageId) {
        if self.waiting.contains(&s) || self.running.contains(&s) || self.failed.contains(&s) {
            return;
        }
        let missing = self.missing_parents(s);
        if missing.is_empty() {
            self.start(s);
        } else {
            for p in missing {
                self.submit(p);
            }
            self.waiting.insert(s);
        }
    }

    /// Starts a new attempt of `s` over its missing partitions.
    fn start(&mut self, s: StageId) {
        let missing = self.missing_partitions(s);
        if missing.is_empty() {
            // Nothing to run (outputs came back since, or none to make).
            return self.wake_children(s);
        }
        let stage = self.stage_mut(s);
        stage.attempts += 1;
        stage.tasks = Some(TaskSet::new(stage.attempts - 1, missing));
        self.running.insert(s);
    }

    /// The current attempt of `s` finished all its tasks.
    pub fn task_set_complete(&mut self, s: StageId) {
        self.running.remove(&s);
        self.stage_mut(s).tasks = None;
        if !self.is_available(s) {
            // Outputs made by an earlier attempt were lost meanwhile.
            return self.submit(s);
        }
        self.stage_mut(s).failed_attempts = 0;
        self.wake_children(s);
    }

    /// Spark's `submitWaitingChildStages`.
    fn wake_children(&mut self, s: StageId) {
        let children: Vec<StageId> = self.waiting.iter().copied().filter(|c| self.stage(*c).spec.parents.contains(&s)).collect();
        for c in children {
            self.waiting.remove(&c);
            self.submit(c);
        }
    }

    /// Ends the current attempt of `s` (its task set stops); returns the
    /// copies still running, to kill.
    pub fn end_attempt(&mut self, s: StageId) -> Vec<AttemptId> {
        self.running.remove(&s);
        match self.stage_mut(s).tasks.take() {
            Some(set) => set.copies().into_iter().map(|(_, a)| a).collect(),
            None => Vec::new(),
        }
    }

    /// Unregisters every map output held by that worker incarnation; done
    /// partitions of running map stages go back to their queue. Returns
    /// whether anything was lost.
    pub fn lose_outputs(&mut self, worker: WorkerId, epoch: u64) -> bool {
        let mut lost = false;
        for stage in self.stages.values_mut() {
            for (p, o) in stage.outputs.iter_mut().enumerate() {
                if o.is_some_and(|o| o.worker == worker && o.epoch == epoch) {
                    *o = None;
                    lost = true;
                    if let Some(set) = &mut stage.tasks {
                        set.undo(p as u32);
                    }
                }
            }
        }
        lost
    }

    /// After outputs were lost: a running stage whose parents are not all
    /// available any more cannot launch its remaining tasks, so its
    /// attempt ends (not counted as a failure: nothing it did was wrong)
    /// and it is submitted again, which recomputes the lost parent
    /// partitions first. Returns the copies to kill.
    pub fn recheck_running(&mut self) -> Vec<AttemptId> {
        let mut kills = Vec::new();
        let running: Vec<StageId> = self.running.iter().copied().collect();
        for s in running {
            if self.running.contains(&s) && !self.missing_parents(s).is_empty() {
                kills.extend(self.end_attempt(s));
                self.submit(s);
            }
        }
        kills
    }

    /// Where the map outputs `s` reads live, one entry per parent.
    pub fn inputs(&self, s: StageId) -> Vec<ShuffleInput> {
        self.stage(s)
            .spec
            .parents
            .iter()
            .map(|p| ShuffleInput {
                shuffle: *p,
                maps: self
                    .stage(*p)
                    .outputs
                    .iter()
                    .enumerate()
                    // Never a hole: a stage runs only while its parents
                    // are available (`submit`, `recheck_running`).
                    .filter_map(|(i, o)| o.map(|o| MapLocation { map_partition: i as u32, worker: o.worker, worker_epoch: o.epoch }))
                    .collect(),
            })
            .collect()
    }

    pub fn progress(&self) -> JobProgress {
        let stages = self
            .order
            .iter()
            .map(|s| {
                let stage = self.stage(*s);
                let total = stage.spec.partitions;
                StageProgress {
                    id: *s,
                    total,
                    done: total - self.missing_partitions(*s).len() as u32,
                    running: stage.tasks.as_ref().map_or(0, TaskSet::running_count),
                    attempt: stage.current_attempt(),
                }
            })
            .collect();
        JobProgress { job: self.id, state: self.state.clone(), stages }
    }
}
