//! The batch driver machine: jobs in, task launches and kills out (Spark's
//! DAGScheduler and TaskScheduler as one sans-IO event loop).
//!
//! Everything the driver believes about a task comes from the statuses of
//! the attempt it launched. A status counts only if it names an attempt
//! still outstanding, from the worker incarnation (epoch) it was launched
//! on, of the stage attempt still running — anything else is a late report
//! of something already superseded and is ignored (attempt fencing).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use super::dag::{Job, Output};
use super::speculation::mark_stragglers;
use super::{
    AttemptId, DriverConfig, DriverEffect, DriverInput, JobId, JobProgress, JobSpec, JobState, StageId, TaskDesc, TaskOutcome,
    WorkerId,
};
use crate::Millis;

/// A registered worker incarnation, as the driver sees it.
#[derive(Debug, Clone)]
struct WorkerEntry {
    epoch: u64,
    slots: u32,
    /// Attempts outstanding on it (killed ones count until they report).
    busy: u32,
    last_heard: Millis,
    /// False once lost by timeout; a heartbeat of the same epoch revives it
    /// (with no tasks and no outputs: those were given up).
    alive: bool,
}

impl WorkerEntry {
    fn free(&self) -> u32 {
        if self.alive { self.slots.saturating_sub(self.busy) } else { 0 }
    }
}

/// A launched task attempt, until its worker reports it or is lost.
#[derive(Debug, Clone)]
struct Attempt {
    job: JobId,
    stage: StageId,
    stage_attempt: u32,
    partition: u32,
    worker: WorkerId,
    epoch: u64,
    /// The driver asked for it to stop; its failure, if it reports one,
    /// is the kill's doing and is not counted.
    killed: bool,
}

pub struct Driver {
    config: DriverConfig,
    workers: BTreeMap<WorkerId, WorkerEntry>,
    jobs: BTreeMap<JobId, Job>,
    attempts: BTreeMap<AttemptId, Attempt>,
    next_attempt: AttemptId,
    /// When the stages failed by fetch failures are submitted again.
    resubmit_at: Option<Millis>,
    next_speculation: Option<Millis>,
    /// The earliest Tick asked for and not yet due.
    armed: Option<Millis>,
}

impl Driver {
    pub fn new(config: DriverConfig) -> Self {
        Self {
            config,
            workers: BTreeMap::new(),
            jobs: BTreeMap::new(),
            attempts: BTreeMap::new(),
            next_attempt: 1,
            resubmit_at: None,
            next_speculation: None,
            armed: None,
        }
    }

    pub fn config(&self) -> &DriverConfig {
        &self.config
    }

    pub fn job_state(&self, job: JobId) -> Option<JobState> {
        self.jobs.get(&job).map(|j| j.state.clone())
    }

    pub fn progress(&self, job: JobId) -> Option<JobProgress> {
        self.jobs.get(&job).map(Job::progress)
    }

    /// Forgets an ended job (its state and progress); a running one stays.
    pub fn forget(&mut self, job: JobId) {
        if self.jobs.get(&job).is_some_and(|j| j.state != JobState::Running) {
            self.jobs.remove(&job);
        }
    }

    /// The live workers with their epochs, in id order.
    pub fn live_workers(&self) -> Vec<(WorkerId, u64)> {
        self.workers.iter().filter(|(_, w)| w.alive).map(|(id, w)| (*id, w.epoch)).collect()
    }

    pub fn step(&mut self, now: Millis, input: DriverInput, out: &mut Vec<DriverEffect>) {
        match input {
            DriverInput::SubmitJob { job, spec } => self.submit_job(job, spec, out),
            DriverInput::CancelJob { job } => self.end_job(job, JobState::Cancelled, out),
            DriverInput::RegisterWorker { worker, epoch, slots } => self.register(now, worker, epoch, slots, out),
            DriverInput::Heartbeat { worker, epoch } => self.heard(now, worker, epoch),
            DriverInput::TaskStatus { worker, epoch, attempt, outcome } => self.status(now, worker, epoch, attempt, outcome, out),
            DriverInput::WorkerLost { worker, epoch } => {
                if self.workers.get(&worker).is_some_and(|w| w.epoch == epoch && w.alive) {
                    self.worker_lost(worker, epoch, false, out);
                }
            }
            DriverInput::Tick => {}
        }
        self.expire_workers(now, out);
        if self.resubmit_at.is_some_and(|t| t <= now) {
            self.resubmit();
        }
        self.speculate(now);
        self.schedule(now, out);
        self.arm_timer(now, out);
    }

    fn submit_job(&mut self, id: JobId, spec: JobSpec, out: &mut Vec<DriverEffect>) {
        if self.jobs.contains_key(&id) {
            // A repeated submission (a retried request): the job is known.
            return;
        }
        match Job::new(id, spec) {
            Ok(mut job) => {
                job.submit(job.result);
                let done = job.is_done();
                self.jobs.insert(id, job);
                if done {
                    // A result stage of no partitions.
                    self.end_job(id, JobState::Succeeded, out);
                }
            }
            Err(reason) => {
                let reason = format!("invalid job: {reason}");
                self.jobs.insert(id, Job::ended(id, JobState::Failed { reason: reason.clone() }));
                out.push(DriverEffect::JobFailed { job: id, reason });
            }
        }
    }

    fn register(&mut self, now: Millis, worker: WorkerId, epoch: u64, slots: u32, out: &mut Vec<DriverEffect>) {
        match self.workers.get_mut(&worker) {
            // A late registration of an incarnation already replaced.
            Some(w) if epoch < w.epoch => {}
            Some(w) if epoch == w.epoch => {
                w.slots = slots;
                w.last_heard = now;
                w.alive = true;
                // The same incarnation registering again reconnected: a
                // CleanJob sent while its connection was broken was lost,
                // and it would keep that job's shuffle outputs until it
                // restarts. Every ended job the driver still knows is
                // cleaned again (the worker takes a repeat as a no-op).
                for (id, job) in &self.jobs {
                    if job.state != JobState::Running {
                        out.push(DriverEffect::CleanJob { worker, job: *id });
                    }
                }
            }
            previous => {
                // A new incarnation: the previous one is gone, with its
                // tasks and outputs (it cannot be told to kill anything).
                if let Some(old) = previous.map(|w| w.epoch) {
                    self.worker_lost(worker, old, false, out);
                }
                self.workers.insert(worker, WorkerEntry { epoch, slots, busy: 0, last_heard: now, alive: true });
            }
        }
    }

    /// Any message of the current incarnation shows it is alive (and
    /// revives it if it was given up on: it comes back empty).
    fn heard(&mut self, now: Millis, worker: WorkerId, epoch: u64) {
        if let Some(w) = self.workers.get_mut(&worker).filter(|w| w.epoch == epoch) {
            w.last_heard = now;
            w.alive = true;
        }
    }

    /// Workers not heard from for `worker_timeout_ms` are lost.
    fn expire_workers(&mut self, now: Millis, out: &mut Vec<DriverEffect>) {
        let timeout = self.config.worker_timeout_ms;
        let expired: Vec<(WorkerId, u64)> =
            self.workers.iter().filter(|(_, w)| w.alive && now - w.last_heard >= timeout).map(|(id, w)| (*id, w.epoch)).collect();
        for (worker, epoch) in expired {
            self.worker_lost(worker, epoch, true, out);
        }
    }

    /// Gives up on a worker incarnation: its running tasks go back to their
    /// queues (a loss is not the task's failure), its map outputs are
    /// unregistered, and stages that needed them recompute them.
    /// `reachable`: it may still be alive (a timeout), so its tasks are
    /// told to stop in case it comes back.
    fn worker_lost(&mut self, worker: WorkerId, epoch: u64, reachable: bool, out: &mut Vec<DriverEffect>) {
        if let Some(w) = self.workers.get_mut(&worker).filter(|w| w.epoch == epoch) {
            w.alive = false;
            w.busy = 0;
        }
        let lost: Vec<AttemptId> =
            self.attempts.iter().filter(|(_, a)| a.worker == worker && a.epoch == epoch).map(|(id, _)| *id).collect();
        for id in lost {
            let a = self.attempts.remove(&id).expect("listed");
            if reachable && !a.killed {
                out.push(DriverEffect::Kill { worker, attempt: id });
            }
            if let Some(set) = self.current_set(&a) {
                set.copy_ended(a.partition, id);
                set.requeue(a.partition);
            }
        }
        self.lose_outputs(worker, epoch, out);
    }

    /// Unregisters the map outputs of a worker incarnation in every job,
    /// and ends the attempts of running stages that needed them.
    fn lose_outputs(&mut self, worker: WorkerId, epoch: u64, out: &mut Vec<DriverEffect>) {
        let mut kills = Vec::new();
        for job in self.jobs.values_mut().filter(|j| j.state == JobState::Running) {
            if job.lose_outputs(worker, epoch) {
                kills.extend(job.recheck_running());
            }
        }
        for id in kills {
            self.kill(id, out);
        }
    }

    /// The task set an attempt belongs to, if it is still the current one
    /// of a running job.
    fn current_set(&mut self, a: &Attempt) -> Option<&mut super::tasks::TaskSet> {
        let job = self.jobs.get_mut(&a.job).filter(|j| j.state == JobState::Running)?;
        job.stage_mut(a.stage).tasks.as_mut().filter(|t| t.attempt == a.stage_attempt)
    }

    fn kill(&mut self, id: AttemptId, out: &mut Vec<DriverEffect>) {
        if let Some(a) = self.attempts.get_mut(&id).filter(|a| !a.killed) {
            a.killed = true;
            out.push(DriverEffect::Kill { worker: a.worker, attempt: id });
        }
    }

    fn status(&mut self, now: Millis, worker: WorkerId, epoch: u64, id: AttemptId, outcome: TaskOutcome, out: &mut Vec<DriverEffect>) {
        self.heard(now, worker, epoch);
        // Fencing: only the incarnation the attempt was launched on speaks
        // for it, and only while the attempt is outstanding.
        if !self.attempts.get(&id).is_some_and(|a| a.worker == worker && a.epoch == epoch) {
            return;
        }
        let a = self.attempts.remove(&id).expect("checked");
        if let Some(w) = self.workers.get_mut(&worker).filter(|w| w.epoch == epoch) {
            w.busy = w.busy.saturating_sub(1);
        }
        // A stage attempt that ended (or a job that did) ignores its tasks.
        let Some(set) = self.current_set(&a) else { return };
        let started = set.copy_ended(a.partition, id);
        match outcome {
            TaskOutcome::Success { result } => self.succeeded(&a, now - started.unwrap_or(now), result, out),
            TaskOutcome::Failed { reason } if !a.killed => self.failed(&a, &reason, out),
            TaskOutcome::FetchFailed { shuffle, map_partition, worker } if !a.killed => {
                self.fetch_failed(now, &a, id, shuffle, map_partition, worker, out)
            }
            // A kill (ours or the worker's) is nobody's failure; nor is what
            // a killed attempt saw after its kill (a fetch cut short by it,
            // or an output the stage no longer needs): live reducers report
            // a map output that is really gone.
            TaskOutcome::Failed { .. } | TaskOutcome::FetchFailed { .. } | TaskOutcome::Killed => set.requeue(a.partition),
        }
    }

    fn succeeded(&mut self, a: &Attempt, duration: Millis, result: Option<Vec<u8>>, out: &mut Vec<DriverEffect>) {
        let since = self.next_attempt;
        let job = self.jobs.get_mut(&a.job).expect("current");
        let p = a.partition;
        if job.stage(a.stage).is_map() {
            let stage = job.stage_mut(a.stage);
            let set = stage.tasks.as_mut().expect("current");
            if set.done.contains(&p) {
                // Another copy won (this one's kill came too late).
                return;
            }
            stage.outputs[p as usize] = Some(Output { worker: a.worker, epoch: a.epoch, since });
        } else {
            // The commit coordinator: a result partition's first success is
            // its result; any later one (a speculative copy, a retry whose
            // first copy was only slow) is refused.
            if job.results[p as usize].is_some() {
                return;
            }
            job.results[p as usize] = Some(result.unwrap_or_default());
            job.finished += 1;
        }
        let set = job.stage_mut(a.stage).tasks.as_mut().expect("current");
        let losers = set.succeed(p, duration);
        let complete = set.is_complete();
        if complete {
            job.task_set_complete(a.stage);
        }
        let done = job.is_done();
        for loser in losers {
            self.kill(loser, out);
        }
        if done {
            self.end_job(a.job, JobState::Succeeded, out);
        }
    }

    fn failed(&mut self, a: &Attempt, reason: &str, out: &mut Vec<DriverEffect>) {
        let max = self.config.task_max_failures;
        let set = self.current_set(a).expect("current");
        if set.done.contains(&a.partition) {
            return;
        }
        let n = set.fail(a.partition);
        if n >= max {
            let reason = format!(
                "stage {} partition {} failed {n} times (task_max_failures {max}); last error: {reason}",
                a.stage, a.partition
            );
            self.end_job(a.job, JobState::Failed { reason }, out);
        }
    }

    /// A reducer could not read a map output: the output is gone (and, as
    /// in Spark, every output of that worker incarnation is presumed gone
    /// with it — otherwise each stage attempt would discover one more loss
    /// and the stage would soon exhaust its attempts); the reducer's stage
    /// attempt failed; the map stage and then the reducer's stage are
    /// resubmitted once, by one delayed resubmission however many reducers
    /// report the same loss (their reports come from the ended attempt and
    /// are ignored).
    #[allow(clippy::too_many_arguments)]
    fn fetch_failed(
        &mut self,
        now: Millis,
        a: &Attempt,
        id: AttemptId,
        shuffle: StageId,
        map_partition: u32,
        worker: WorkerId,
        out: &mut Vec<DriverEffect>,
    ) {
        let job = self.jobs.get_mut(&a.job).expect("current");
        let reads = job.stage(a.stage).spec.parents.contains(&shuffle)
            && map_partition < job.stage(shuffle).spec.partitions;
        if !reads {
            let reason = format!("fetch failure naming shuffle {shuffle} map partition {map_partition}, which this task does not read");
            return self.failed(a, &reason, out);
        }
        let lost = job.stage(shuffle).outputs[map_partition as usize].filter(|o| o.worker == worker && o.since <= id);
        let kills = job.end_attempt(a.stage);
        let stage = job.stage_mut(a.stage);
        stage.failed_attempts += 1;
        let failures = stage.failed_attempts;
        let max = self.config.stage_max_attempts;
        let abort = failures >= max;
        if !abort {
            job.failed.insert(a.stage);
            job.failed.insert(shuffle);
            self.resubmit_at.get_or_insert(now + self.config.resubmit_delay_ms);
        }
        for k in kills {
            self.kill(k, out);
        }
        if abort {
            let reason = format!(
                "stage {} failed {failures} consecutive attempts (stage_max_attempts {max}); last: partition {} could not fetch shuffle {shuffle} map partition {map_partition} from worker {worker}",
                a.stage, a.partition
            );
            self.end_job(a.job, JobState::Failed { reason }, out);
        }
        if let Some(o) = lost {
            self.lose_outputs(o.worker, o.epoch, out);
        }
    }

    /// Spark's `resubmitFailedStages`: every stage failed by a fetch failure
    /// is submitted again (parents first), which runs their missing
    /// partitions.
    fn resubmit(&mut self) {
        self.resubmit_at = None;
        for job in self.jobs.values_mut().filter(|j| j.state == JobState::Running) {
            let failed = std::mem::take(&mut job.failed);
            let order: Vec<StageId> = job.order.iter().copied().filter(|s| failed.contains(s)).collect();
            for s in order {
                job.submit(s);
            }
        }
    }

    /// Every `speculation_interval_ms` while tasks run, marks stragglers.
    fn speculate(&mut self, now: Millis) {
        if !self.config.speculation || self.next_speculation.is_none_or(|t| t > now) {
            return;
        }
        self.next_speculation = None;
        for job in self.jobs.values_mut().filter(|j| j.state == JobState::Running) {
            let running: Vec<StageId> = job.running.iter().copied().collect();
            for s in running {
                if let Some(set) = job.stage_mut(s).tasks.as_mut() {
                    mark_stragglers(set, now, &self.config);
                }
            }
        }
    }

    /// Places waiting tasks on live workers with free slots: jobs in
    /// submission order (ids), stages in id order, partitions in order; a
    /// preferred worker with a free slot if there is one, else the worker
    /// with the most free slots (the lowest id among equals). Speculative
    /// copies go after a task set's own tasks, never next to another copy.
    /// With no worker registered, tasks simply wait.
    fn schedule(&mut self, now: Millis, out: &mut Vec<DriverEffect>) {
        let jobs: Vec<JobId> = self.jobs.iter().filter(|(_, j)| j.state == JobState::Running).map(|(id, _)| *id).collect();
        for job_id in jobs {
            let stages: Vec<StageId> = self.jobs[&job_id].running.iter().copied().collect();
            for s in stages {
                if !self.workers.values().any(|w| w.free() > 0) {
                    return;
                }
                let (pending, speculatable) = {
                    let set = self.jobs[&job_id].stage(s).tasks.as_ref().expect("running");
                    (set.pending.iter().copied().collect::<Vec<_>>(), set.speculatable.iter().copied().collect::<Vec<_>>())
                };
                for p in pending {
                    let preferred = self.jobs[&job_id].stage(s).spec.preferred.get(p as usize).cloned().unwrap_or_default();
                    let Some(w) = self.pick(&preferred, &BTreeSet::new()) else { return };
                    self.launch(now, job_id, s, p, w, false, out);
                }
                for p in speculatable {
                    let beside: BTreeSet<WorkerId> = {
                        let set = self.jobs[&job_id].stage(s).tasks.as_ref().expect("running");
                        let copies = set.running.get(&p).map(|c| c.keys().copied().collect::<Vec<_>>()).unwrap_or_default();
                        copies.iter().filter_map(|a| self.attempts.get(a)).map(|a| a.worker).collect()
                    };
                    if let Some(w) = self.pick(&[], &beside) {
                        self.launch(now, job_id, s, p, w, true, out);
                    }
                }
            }
        }
    }

    fn pick(&self, preferred: &[WorkerId], exclude: &BTreeSet<WorkerId>) -> Option<WorkerId> {
        let usable = |id: &WorkerId| !exclude.contains(id) && self.workers.get(id).is_some_and(|w| w.free() > 0);
        preferred.iter().copied().find(|id| usable(id)).or_else(|| {
            self.workers
                .iter()
                .filter(|(id, _)| usable(id))
                .max_by_key(|(id, w)| (w.free(), Reverse(**id)))
                .map(|(id, _)| *id)
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn launch(&mut self, now: Millis, job_id: JobId, s: StageId, p: u32, worker: WorkerId, speculative: bool, out: &mut Vec<DriverEffect>) {
        let id = self.next_attempt;
        self.next_attempt += 1;
        let w = self.workers.get_mut(&worker).expect("picked");
        w.busy += 1;
        let epoch = w.epoch;
        let job = self.jobs.get_mut(&job_id).expect("running");
        job.workers.insert(worker);
        let inputs = job.inputs(s);
        let stage = job.stage_mut(s);
        let set = stage.tasks.as_mut().expect("running");
        set.launched(p, id, now);
        if speculative {
            set.speculated.insert(p);
        }
        let stage_attempt = set.attempt;
        let task = TaskDesc {
            job: job_id,
            stage: s,
            stage_attempt,
            partition: p,
            attempt: id,
            payload: stage.spec.payload.clone(),
            inputs,
            output: stage.spec.output.clone(),
        };
        self.attempts.insert(id, Attempt { job: job_id, stage: s, stage_attempt, partition: p, worker, epoch, killed: false });
        out.push(DriverEffect::Launch { worker, task });
    }

    /// Ends a job: its outstanding attempts are killed, the outcome is
    /// reported, and every worker that ran its tasks may clean up.
    fn end_job(&mut self, id: JobId, state: JobState, out: &mut Vec<DriverEffect>) {
        let Some(job) = self.jobs.get_mut(&id).filter(|j| j.state == JobState::Running) else { return };
        job.state = state.clone();
        let effect = match state {
            JobState::Succeeded => DriverEffect::JobSucceeded {
                job: id,
                results: job.results.iter().map(|r| r.clone().unwrap_or_default()).collect(),
            },
            JobState::Failed { reason } => DriverEffect::JobFailed { job: id, reason },
            JobState::Cancelled => DriverEffect::JobFailed { job: id, reason: "cancelled".into() },
            JobState::Running => unreachable!("ending"),
        };
        let workers = std::mem::take(&mut job.workers);
        job.release();
        let outstanding: Vec<AttemptId> = self.attempts.iter().filter(|(_, a)| a.job == id).map(|(a, _)| *a).collect();
        for a in outstanding {
            self.kill(a, out);
        }
        out.push(effect);
        for worker in workers {
            out.push(DriverEffect::CleanJob { worker, job: id });
        }
    }

    /// Asks for a Tick at the earliest deadline: a worker's timeout, the
    /// resubmission, the next speculation check.
    fn arm_timer(&mut self, now: Millis, out: &mut Vec<DriverEffect>) {
        let tasks_running = self
            .jobs
            .values()
            .filter(|j| j.state == JobState::Running)
            .any(|j| j.running.iter().any(|s| j.stage(*s).tasks.as_ref().is_some_and(|t| !t.running.is_empty())));
        if self.config.speculation && tasks_running && self.next_speculation.is_none() {
            self.next_speculation = Some(now + self.config.speculation_interval_ms.max(1));
        }
        if !tasks_running {
            self.next_speculation = None;
        }
        let timeout = self.config.worker_timeout_ms;
        let next = self
            .workers
            .values()
            .filter(|w| w.alive)
            .map(|w| w.last_heard + timeout)
            .chain(self.resubmit_at)
            .chain(self.next_speculation)
            .min();
        if let Some(at) = next {
            let at = at.max(now);
            if self.armed.is_none_or(|a| a <= now || at < a) {
                self.armed = Some(at);
                out.push(DriverEffect::Timer { at });
            }
        }
    }
}
