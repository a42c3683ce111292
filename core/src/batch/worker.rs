//! The batch worker machine: one incarnation of a worker process. It
//! announces itself to the driver, heartbeats, runs at most `slots` tasks
//! at a time on the executor pool (the rest wait in a queue, in arrival
//! order), reports every task's end, and tracks which shuffle outputs it
//! holds so it can serve reducers.
//!
//! The executor pool answers every `Run` with exactly one `Finished`. A
//! kill is a request (`Cancel`): the task keeps its slot until the pool
//! answers — `Killed`, or whatever the task achieved if it finished first,
//! which is reported as it is (the driver decides what a late success of
//! a killed copy is worth). So `slots` really bounds what runs.
//!
//! Launches beyond `slots` are queued rather than refused: the driver
//! counts a killed task's slot as busy until the worker reports it, and
//! reports cross launches on the wire, so an overflow is a short race, and
//! refusing would turn that race into a task failure.
//!
//! A restart is a new `Worker` with a new, larger epoch and nothing held:
//! shuffle outputs and running tasks die with the incarnation.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use super::{AttemptId, DriverInput, JobId, StageId, StageOutput, TaskDesc, TaskOutcome, WorkerId};
use crate::Millis;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerConfig {
    pub id: WorkerId,
    /// Tasks run at once.
    pub slots: u32,
    /// Between two heartbeats (well under the driver's `worker_timeout_ms`).
    pub heartbeat_ms: i64,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self { id: 0, slots: 2, heartbeat_ms: 1_000 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WorkerInput {
    /// The process is up: register with the driver.
    Start,
    Tick,
    Launch(TaskDesc),
    Kill(AttemptId),
    /// The executor pool's answer to `Run` (one per task, cancelled or
    /// not; a shuffle-map task's output is written by then).
    Finished { attempt: AttemptId, outcome: TaskOutcome },
    /// The driver's job is over: its shuffle outputs may go.
    CleanJob(JobId),
    /// A shuffle output this worker held is gone (a lost or damaged file):
    /// reducers asking for it will be refused.
    ShuffleLost { job: JobId, shuffle: StageId, map_partition: u32 },
    /// The connection to the driver was re-established: announce this
    /// incarnation again (same epoch: nothing was lost here).
    Reconnect,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WorkerEffect {
    /// Send to the driver.
    ToDriver(DriverInput),
    /// Hand to the executor pool; it answers with `Finished`.
    Run(TaskDesc),
    /// Stop that task early if it still runs; the pool answers with
    /// `Finished` either way (`Killed`, or the outcome it reached first).
    Cancel(AttemptId),
    /// Delete every shuffle output of the job.
    DeleteShuffle(JobId),
    /// Deliver a `Tick` at `at` (or later).
    Timer { at: Millis },
}

/// What the worker remembers of a running task.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Running {
    job: JobId,
    stage: StageId,
    partition: u32,
    map: bool,
    /// Cancel asked, answer awaited.
    killing: bool,
}

pub struct Worker {
    config: WorkerConfig,
    epoch: u64,
    started: bool,
    running: BTreeMap<AttemptId, Running>,
    queued: VecDeque<TaskDesc>,
    /// (job, shuffle, map partition) of every output held.
    shuffles: BTreeSet<(JobId, StageId, u32)>,
    /// Jobs cleaned up: a late launch of one is refused (killed), a late
    /// output of one is not kept.
    cleaned: BTreeSet<JobId>,
    next_heartbeat: Millis,
}

impl Worker {
    /// `epoch` names this incarnation; each restart must use a larger one
    /// (a persisted counter, or the start time).
    pub fn new(config: WorkerConfig, epoch: u64) -> Self {
        Self {
            config,
            epoch,
            started: false,
            running: BTreeMap::new(),
            queued: VecDeque::new(),
            shuffles: BTreeSet::new(),
            cleaned: BTreeSet::new(),
            next_heartbeat: 0,
        }
    }

    pub fn id(&self) -> WorkerId {
        self.config.id
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Whether this worker holds that map output (to serve a reducer).
    pub fn has_shuffle(&self, job: JobId, shuffle: StageId, map_partition: u32) -> bool {
        self.shuffles.contains(&(job, shuffle, map_partition))
    }

    /// The attempts on the executor pool (cancelled ones until the pool
    /// answers), in id order.
    pub fn running(&self) -> Vec<AttemptId> {
        self.running.keys().copied().collect()
    }

    /// The attempts waiting for a slot, in arrival order.
    pub fn queued(&self) -> Vec<AttemptId> {
        self.queued.iter().map(|t| t.attempt).collect()
    }

    pub fn step(&mut self, now: Millis, input: WorkerInput, out: &mut Vec<WorkerEffect>) {
        if !self.started && input != WorkerInput::Start {
            return;
        }
        match input {
            WorkerInput::Start => {
                self.started = true;
                self.register(out);
                self.next_heartbeat = now + self.config.heartbeat_ms;
                out.push(WorkerEffect::Timer { at: self.next_heartbeat });
            }
            WorkerInput::Reconnect => self.register(out),
            WorkerInput::Tick => {
                if now >= self.next_heartbeat {
                    out.push(WorkerEffect::ToDriver(DriverInput::Heartbeat { worker: self.config.id, epoch: self.epoch }));
                    self.next_heartbeat = now + self.config.heartbeat_ms;
                    out.push(WorkerEffect::Timer { at: self.next_heartbeat });
                }
            }
            WorkerInput::Launch(task) => self.launch(task, out),
            WorkerInput::Kill(attempt) => {
                if self.running.contains_key(&attempt) {
                    self.cancel(attempt, out);
                } else if let Some(i) = self.queued.iter().position(|t| t.attempt == attempt) {
                    self.queued.remove(i);
                    self.report(attempt, TaskOutcome::Killed, out);
                }
            }
            WorkerInput::Finished { attempt, outcome } => {
                let Some(task) = self.running.remove(&attempt) else { return self.fill(out) };
                if task.map && matches!(outcome, TaskOutcome::Success { .. }) {
                    if self.cleaned.contains(&task.job) {
                        // Written after the clean-up: delete it too.
                        out.push(WorkerEffect::DeleteShuffle(task.job));
                    } else {
                        self.shuffles.insert((task.job, task.stage, task.partition));
                    }
                }
                self.report(attempt, outcome, out);
            }
            WorkerInput::CleanJob(job) => {
                self.cleaned.insert(job);
                self.shuffles.retain(|(j, _, _)| *j != job);
                out.push(WorkerEffect::DeleteShuffle(job));
                let stop: Vec<AttemptId> = self.running.iter().filter(|(_, t)| t.job == job).map(|(a, _)| *a).collect();
                for attempt in stop {
                    self.cancel(attempt, out);
                }
                let (drop, keep): (Vec<TaskDesc>, Vec<TaskDesc>) = self.queued.drain(..).partition(|t| t.job == job);
                self.queued = keep.into();
                for t in drop {
                    self.report(t.attempt, TaskOutcome::Killed, out);
                }
            }
            WorkerInput::ShuffleLost { job, shuffle, map_partition } => {
                self.shuffles.remove(&(job, shuffle, map_partition));
            }
        }
        self.fill(out);
    }

    fn cancel(&mut self, attempt: AttemptId, out: &mut Vec<WorkerEffect>) {
        if let Some(t) = self.running.get_mut(&attempt).filter(|t| !t.killing) {
            t.killing = true;
            out.push(WorkerEffect::Cancel(attempt));
        }
    }

    fn register(&self, out: &mut Vec<WorkerEffect>) {
        let (worker, epoch, slots) = (self.config.id, self.epoch, self.config.slots);
        out.push(WorkerEffect::ToDriver(DriverInput::RegisterWorker { worker, epoch, slots }));
    }

    fn launch(&mut self, task: TaskDesc, out: &mut Vec<WorkerEffect>) {
        if self.running.contains_key(&task.attempt) || self.queued.iter().any(|t| t.attempt == task.attempt) {
            return; // a duplicate delivery
        }
        if self.cleaned.contains(&task.job) {
            // The job is over; answer so the driver frees the slot.
            return self.report(task.attempt, TaskOutcome::Killed, out);
        }
        self.queued.push_back(task);
    }

    /// Starts queued tasks while slots are free.
    fn fill(&mut self, out: &mut Vec<WorkerEffect>) {
        while (self.running.len() as u32) < self.config.slots {
            let Some(task) = self.queued.pop_front() else { break };
            let map = matches!(task.output, StageOutput::ShuffleMap { .. });
            self.running.insert(task.attempt, Running { job: task.job, stage: task.stage, partition: task.partition, map, killing: false });
            out.push(WorkerEffect::Run(task));
        }
    }

    fn report(&self, attempt: AttemptId, outcome: TaskOutcome, out: &mut Vec<WorkerEffect>) {
        let (worker, epoch) = (self.config.id, self.epoch);
        out.push(WorkerEffect::ToDriver(DriverInput::TaskStatus { worker, epoch, attempt, outcome }));
    }
}
