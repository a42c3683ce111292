//! The batch driver, rule by rule, by calling `step` directly.

use millrace_core::Millis;
use millrace_core::batch::*;

fn map(id: StageId, partitions: u32, parents: &[StageId], buckets: u32) -> StageSpec {
    StageSpec {
        id,
        partitions,
        parents: parents.to_vec(),
        output: StageOutput::ShuffleMap { partitions: buckets },
        payload: vec![id as u8],
        preferred: Vec::new(),
    }
}

fn result(id: StageId, partitions: u32, parents: &[StageId]) -> StageSpec {
    StageSpec { id, partitions, parents: parents.to_vec(), output: StageOutput::Result, payload: vec![id as u8], preferred: Vec::new() }
}

/// Stage 0 maps `maps` partitions into `reduces` buckets; stage 1 reduces.
fn two_stage(maps: u32, reduces: u32) -> JobSpec {
    JobSpec { stages: vec![map(0, maps, &[], reduces), result(1, reduces, &[0])] }
}

fn no_speculation() -> DriverConfig {
    DriverConfig { speculation: false, ..DriverConfig::default() }
}

struct H {
    d: Driver,
    now: Millis,
    /// Worker epochs as registered by the test.
    epochs: std::collections::BTreeMap<WorkerId, u64>,
}

impl H {
    fn new(config: DriverConfig) -> Self {
        Self { d: Driver::new(config), now: 0, epochs: Default::default() }
    }

    fn step(&mut self, input: DriverInput) -> Vec<DriverEffect> {
        let mut out = Vec::new();
        self.d.step(self.now, input, &mut out);
        out
    }

    fn at(&mut self, now: Millis, input: DriverInput) -> Vec<DriverEffect> {
        self.now = now;
        self.step(input)
    }

    fn register(&mut self, worker: WorkerId, epoch: u64, slots: u32) -> Vec<DriverEffect> {
        self.epochs.insert(worker, epoch);
        self.step(DriverInput::RegisterWorker { worker, epoch, slots })
    }

    fn submit(&mut self, job: JobId, spec: JobSpec) -> Vec<DriverEffect> {
        self.step(DriverInput::SubmitJob { job, spec })
    }

    /// Reports `outcome` for `task` from the worker it ran on.
    fn report(&mut self, worker: WorkerId, task: &TaskDesc, outcome: TaskOutcome) -> Vec<DriverEffect> {
        let epoch = self.epochs[&worker];
        self.step(DriverInput::TaskStatus { worker, epoch, attempt: task.attempt, outcome })
    }

    fn ok(&mut self, worker: WorkerId, task: &TaskDesc) -> Vec<DriverEffect> {
        let result = matches!(task.output, StageOutput::Result).then(|| format!("r{}", task.partition).into_bytes());
        self.report(worker, task, TaskOutcome::Success { result })
    }

    /// Heartbeats from every registered worker, at the current time.
    fn heartbeat_all(&mut self) -> Vec<DriverEffect> {
        let mut out = Vec::new();
        for (worker, epoch) in self.epochs.clone() {
            out.extend(self.step(DriverInput::Heartbeat { worker, epoch }));
        }
        out
    }
}

fn launches(effects: &[DriverEffect]) -> Vec<(WorkerId, TaskDesc)> {
    effects
        .iter()
        .filter_map(|e| match e {
            DriverEffect::Launch { worker, task } => Some((*worker, task.clone())),
            _ => None,
        })
        .collect()
}

fn kills(effects: &[DriverEffect]) -> Vec<(WorkerId, AttemptId)> {
    effects
        .iter()
        .filter_map(|e| match e {
            DriverEffect::Kill { worker, attempt } => Some((*worker, *attempt)),
            _ => None,
        })
        .collect()
}

fn cleans(effects: &[DriverEffect]) -> Vec<(WorkerId, JobId)> {
    effects
        .iter()
        .filter_map(|e| match e {
            DriverEffect::CleanJob { worker, job } => Some((*worker, *job)),
            _ => None,
        })
        .collect()
}

fn job_end(effects: &[DriverEffect]) -> Option<&DriverEffect> {
    effects.iter().find(|e| matches!(e, DriverEffect::JobSucceeded { .. } | DriverEffect::JobFailed { .. }))
}

fn timers(effects: &[DriverEffect]) -> Vec<Millis> {
    effects
        .iter()
        .filter_map(|e| match e {
            DriverEffect::Timer { at } => Some(*at),
            _ => None,
        })
        .collect()
}

/// (stage, partition) of each launch.
fn shape(l: &[(WorkerId, TaskDesc)]) -> Vec<(StageId, u32)> {
    l.iter().map(|(_, t)| (t.stage, t.partition)).collect()
}

/// Runs every launched task to success, and whatever those launch, until
/// the job ends; returns all effects.
fn run_to_end(h: &mut H, mut pending: Vec<(WorkerId, TaskDesc)>) -> Vec<DriverEffect> {
    let mut all = Vec::new();
    while let Some((w, t)) = pending.first().cloned() {
        pending.remove(0);
        let out = h.ok(w, &t);
        pending.extend(launches(&out));
        all.extend(out);
    }
    all
}

#[test]
fn a_stage_waits_for_its_parent_and_reads_every_map_output_in_order() {
    let mut h = H::new(no_speculation());
    h.register(1, 1, 2);
    h.register(2, 1, 2);
    let l = launches(&h.submit(7, two_stage(3, 2)));
    assert_eq!(shape(&l), vec![(0, 0), (0, 1), (0, 2)], "only the map stage runs");
    // Most free slots first, lowest id among equals.
    assert_eq!(l.iter().map(|(w, _)| *w).collect::<Vec<_>>(), vec![1, 2, 1]);
    assert!(l.iter().all(|(_, t)| t.inputs.is_empty() && t.payload == vec![0] && t.stage_attempt == 0 && t.job == 7));
    assert!(launches(&h.ok(l[0].0, &l[0].1)).is_empty());
    assert!(launches(&h.ok(l[1].0, &l[1].1)).is_empty(), "one map output is still missing");
    let reduces = launches(&h.ok(l[2].0, &l[2].1));
    assert_eq!(shape(&reduces), vec![(1, 0), (1, 1)]);
    let expected = ShuffleInput {
        shuffle: 0,
        maps: vec![
            MapLocation { map_partition: 0, worker: 1, worker_epoch: 1 },
            MapLocation { map_partition: 1, worker: 2, worker_epoch: 1 },
            MapLocation { map_partition: 2, worker: 1, worker_epoch: 1 },
        ],
    };
    assert!(reduces.iter().all(|(_, t)| t.inputs == vec![expected.clone()] && t.output == StageOutput::Result));
    // Results come back out of order; the job reports them in partition order.
    let out = h.ok(reduces[1].0, &reduces[1].1);
    assert!(job_end(&out).is_none());
    let out = h.ok(reduces[0].0, &reduces[0].1);
    assert_eq!(job_end(&out), Some(&DriverEffect::JobSucceeded { job: 7, results: vec![b"r0".to_vec(), b"r1".to_vec()] }));
    assert_eq!(cleans(&out), vec![(1, 7), (2, 7)], "every worker that ran a task cleans up");
    assert_eq!(h.d.job_state(7), Some(JobState::Succeeded));
}

#[test]
fn missing_parents_are_submitted_first_through_chains_and_joins() {
    let mut h = H::new(no_speculation());
    h.register(1, 1, 8);
    // 0 -> 2, 1 -> 2 (a join), 2 -> 3 (result).
    let spec = JobSpec { stages: vec![map(0, 2, &[], 1), map(1, 1, &[], 1), map(2, 1, &[0, 1], 2), result(3, 2, &[2])] };
    let l = launches(&h.submit(1, spec));
    assert_eq!(shape(&l), vec![(0, 0), (0, 1), (1, 0)], "both roots at once");
    assert!(launches(&h.ok(1, &l[0].1)).is_empty());
    assert!(launches(&h.ok(1, &l[2].1)).is_empty(), "stage 2 needs all of stage 0");
    let l2 = launches(&h.ok(1, &l[1].1));
    assert_eq!(shape(&l2), vec![(2, 0)]);
    assert_eq!(l2[0].1.inputs.iter().map(|i| (i.shuffle, i.maps.len())).collect::<Vec<_>>(), vec![(0, 2), (1, 1)]);
    let l3 = launches(&h.ok(1, &l2[0].1));
    assert_eq!(shape(&l3), vec![(3, 0), (3, 1)]);
    let out = run_to_end(&mut h, l3);
    assert!(matches!(job_end(&out), Some(DriverEffect::JobSucceeded { .. })));
}

#[test]
fn without_workers_tasks_wait_and_launch_once_one_registers() {
    let mut h = H::new(no_speculation());
    let out = h.submit(1, two_stage(2, 1));
    assert!(launches(&out).is_empty());
    assert_eq!(h.d.job_state(1), Some(JobState::Running));
    h.now = 60_000;
    assert!(h.step(DriverInput::Tick).is_empty(), "nothing to time out, nothing to do");
    let l = launches(&h.register(4, 1, 1));
    assert_eq!(shape(&l), vec![(0, 0)], "one slot");
    let l = launches(&h.ok(4, &l[0].1));
    assert_eq!(shape(&l), vec![(0, 1)]);
}

#[test]
fn a_preferred_worker_is_used_when_it_has_a_free_slot_else_any() {
    let mut h = H::new(no_speculation());
    h.register(1, 1, 1);
    h.register(2, 1, 1);
    h.register(3, 1, 1);
    let mut spec = two_stage(3, 1);
    spec.stages[0].preferred = vec![vec![3], vec![3, 2], vec![9]];
    let l = launches(&h.submit(1, spec));
    // p0 on 3; p1 prefers 3 (full) then 2; p2 prefers an unknown worker: any (1).
    assert_eq!(l.iter().map(|(w, t)| (t.partition, *w)).collect::<Vec<_>>(), vec![(0, 3), (1, 2), (2, 1)]);
}

#[test]
fn slots_bound_the_tasks_on_a_worker() {
    let mut h = H::new(no_speculation());
    h.register(1, 1, 2);
    let l = launches(&h.submit(1, two_stage(5, 1)));
    assert_eq!(shape(&l), vec![(0, 0), (0, 1)]);
    let l2 = launches(&h.ok(1, &l[0].1));
    assert_eq!(shape(&l2), vec![(0, 2)], "one slot freed, one launch");
    let p = h.d.progress(1).unwrap();
    assert_eq!(p.stages[0], StageProgress { id: 0, total: 5, done: 1, running: 2, attempt: 0 });
    assert_eq!(p.stages[1], StageProgress { id: 1, total: 1, done: 0, running: 0, attempt: 0 });
}

#[test]
fn a_failing_task_is_retried_then_fails_the_job_naming_stage_partition_and_error() {
    let mut h = H::new(no_speculation());
    h.register(1, 1, 4);
    let l = launches(&h.submit(3, two_stage(2, 1)));
    let mut task = l[1].1.clone();
    for i in 1..4 {
        let out = h.report(1, &task, TaskOutcome::Failed { reason: format!("disk full #{i}") });
        assert!(job_end(&out).is_none(), "failure {i} of 4");
        let retry = launches(&out);
        assert_eq!(shape(&retry), vec![(0, 1)]);
        assert_eq!(retry[0].1.stage_attempt, 0, "a retry is a new attempt of the task, not of the stage");
        assert!(retry[0].1.attempt > task.attempt);
        task = retry[0].1.clone();
    }
    let out = h.report(1, &task, TaskOutcome::Failed { reason: "disk full #4".into() });
    let Some(DriverEffect::JobFailed { job: 3, reason }) = job_end(&out) else { panic!("{out:?}") };
    assert!(reason.contains("stage 0") && reason.contains("partition 1") && reason.contains("disk full #4"), "{reason}");
    assert_eq!(kills(&out), vec![(1, l[0].1.attempt)], "the job's other task is stopped");
    assert_eq!(cleans(&out), vec![(1, 3)]);
    assert!(matches!(h.d.job_state(3), Some(JobState::Failed { .. })));
    // Later reports change nothing.
    assert!(h.ok(1, &l[0].1).is_empty());
}

#[test]
fn kills_and_lost_workers_are_not_task_failures() {
    let config = DriverConfig { task_max_failures: 1, worker_timeout_ms: 1_000, ..no_speculation() };
    let mut h = H::new(config);
    h.register(1, 1, 1);
    h.register(2, 1, 1);
    let l = launches(&h.submit(1, two_stage(2, 1)));
    // The worker killed it on its own (say, it is shutting down): run again.
    let out = h.report(1, &l[0].1, TaskOutcome::Killed);
    assert!(job_end(&out).is_none());
    assert_eq!(shape(&launches(&out)), vec![(0, 0)]);
    // Worker 2 goes silent; its task runs again on worker 1 once 1 is free.
    h.now = 900;
    h.step(DriverInput::Heartbeat { worker: 1, epoch: 1 });
    let out = h.at(1_000, DriverInput::Tick);
    assert_eq!(kills(&out), vec![(2, l[1].1.attempt)], "told to stop, in case it comes back");
    assert!(job_end(&out).is_none());
    assert_eq!(h.d.live_workers(), vec![(1, 1)]);
}

#[test]
fn a_fetch_failure_resubmits_the_lost_map_partition_then_the_stage_once() {
    let mut h = H::new(no_speculation());
    h.register(1, 1, 4);
    h.register(2, 1, 4);
    let maps = launches(&h.submit(1, two_stage(4, 3)));
    let on = |w: WorkerId| maps.iter().filter(|(x, _)| *x == w).map(|(_, t)| t.partition).collect::<Vec<_>>();
    assert_eq!((on(1), on(2)), (vec![0, 2], vec![1, 3]));
    let mut reduces = Vec::new();
    for (w, t) in &maps {
        reduces.extend(launches(&h.ok(*w, t)));
    }
    assert_eq!(shape(&reduces), vec![(1, 0), (1, 1), (1, 2)]);
    // Reduce 2 finishes; then every other reducer fails to fetch map 1 from worker 2.
    let out = h.ok(reduces[2].0, &reduces[2].1);
    assert!(launches(&out).is_empty());
    h.now = 50;
    let fetch = TaskOutcome::FetchFailed { shuffle: 0, map_partition: 1, worker: 2 };
    let out = h.report(reduces[0].0, &reduces[0].1, fetch.clone());
    assert_eq!(timers(&out), vec![250], "one resubmission, resubmit_delay_ms later");
    assert_eq!(kills(&out), vec![(reduces[1].0, reduces[1].1.attempt)], "the failed attempt's other task stops");
    assert!(launches(&out).is_empty(), "nothing runs before the resubmission");
    let out = h.report(reduces[1].0, &reduces[1].1, fetch.clone());
    assert!(out.is_empty(), "a report from the failed attempt changes nothing: {out:?}");
    let p = h.d.progress(1).unwrap();
    assert_eq!((p.stages[0].done, p.stages[1].done), (2, 1), "worker 2's outputs (maps 1 and 3) are unregistered");
    // The resubmission: the map stage's missing partitions only, then the
    // reduce stage's missing partitions only, as new stage attempts.
    let again = launches(&h.at(250, DriverInput::Tick));
    assert_eq!(shape(&again), vec![(0, 1), (0, 3)]);
    assert!(again.iter().all(|(_, t)| t.stage_attempt == 1));
    let mut reduces2 = Vec::new();
    for (w, t) in &again {
        reduces2.extend(launches(&h.ok(*w, t)));
    }
    assert_eq!(shape(&reduces2), vec![(1, 0), (1, 1)], "reduce 2 kept its committed result");
    assert!(reduces2.iter().all(|(_, t)| t.stage_attempt == 1));
    let out = run_to_end(&mut h, reduces2);
    assert!(matches!(job_end(&out), Some(DriverEffect::JobSucceeded { results, .. }) if results.len() == 3));
}

#[test]
fn fetch_failures_are_not_task_failures_but_a_stage_aborts_after_max_consecutive_attempts() {
    let config = DriverConfig { task_max_failures: 1, stage_max_attempts: 3, ..no_speculation() };
    let mut h = H::new(config);
    h.register(1, 1, 4);
    let maps = launches(&h.submit(1, two_stage(1, 1)));
    let mut reduces = launches(&h.ok(1, &maps[0].1));
    for attempt in 0..3 {
        assert_eq!(reduces[0].1.stage_attempt, attempt);
        let out = h.report(1, &reduces[0].1, TaskOutcome::FetchFailed { shuffle: 0, map_partition: 0, worker: 1 });
        if attempt == 2 {
            let Some(DriverEffect::JobFailed { reason, .. }) = job_end(&out) else { panic!("{out:?}") };
            assert!(reason.contains("stage 1") && reason.contains("3 consecutive") && reason.contains("worker 1"), "{reason}");
            return;
        }
        assert!(job_end(&out).is_none(), "task_max_failures is 1, yet the job goes on");
        h.now += 200;
        let map_again = launches(&h.step(DriverInput::Tick));
        assert_eq!(shape(&map_again), vec![(0, 0)]);
        reduces = launches(&h.ok(1, &map_again[0].1));
    }
    unreachable!();
}

#[test]
fn stale_statuses_are_ignored() {
    let mut h = H::new(no_speculation());
    h.register(1, 1, 4);
    let maps = launches(&h.submit(1, two_stage(2, 1)));
    let t = &maps[0].1;
    // Unknown attempt, wrong worker, wrong epoch.
    let success = TaskOutcome::Success { result: None };
    assert!(h.step(DriverInput::TaskStatus { worker: 1, epoch: 1, attempt: 999, outcome: success.clone() }).is_empty());
    assert!(h.step(DriverInput::TaskStatus { worker: 2, epoch: 1, attempt: t.attempt, outcome: success.clone() }).is_empty());
    assert!(h.step(DriverInput::TaskStatus { worker: 1, epoch: 0, attempt: t.attempt, outcome: success.clone() }).is_empty());
    assert_eq!(h.d.progress(1).unwrap().stages[0].done, 0);
    // A reducer of an old stage attempt.
    h.ok(1, &maps[0].1);
    let reduces = launches(&h.ok(1, &maps[1].1));
    h.report(1, &reduces[0].1, TaskOutcome::FetchFailed { shuffle: 0, map_partition: 0, worker: 1 });
    // The killed reducer's late success (it had its data after all) does not count.
    assert!(h.ok(1, &reduces[0].1).is_empty());
    assert_eq!(h.d.progress(1).unwrap().stages[1].done, 0);
    // Twice the same report: the second is unknown.
    let again = launches(&h.at(200, DriverInput::Tick));
    assert_eq!(shape(&again), vec![(0, 0), (0, 1)], "worker 1's outputs are all gone");
    h.ok(1, &again[0].1);
    assert!(h.ok(1, &again[0].1).is_empty());
}

#[test]
fn a_silent_worker_is_lost_and_only_its_missing_partitions_are_recomputed() {
    let config = DriverConfig { worker_timeout_ms: 1_000, ..no_speculation() };
    let mut h = H::new(config);
    h.register(1, 1, 2);
    h.register(2, 1, 2);
    let maps = launches(&h.submit(1, two_stage(4, 2)));
    let mut reduces = Vec::new();
    for (w, t) in &maps {
        reduces.extend(launches(&h.ok(*w, t)));
    }
    assert_eq!(shape(&reduces), vec![(1, 0), (1, 1)]);
    assert_eq!(reduces.iter().map(|(w, _)| *w).collect::<Vec<_>>(), vec![1, 2]);
    // Reduce 0 commits; worker 2 (maps 1 and 3, reduce 1) goes silent.
    h.ok(1, &reduces[0].1);
    h.now = 500;
    h.step(DriverInput::Heartbeat { worker: 1, epoch: 1 });
    let out = h.at(1_000, DriverInput::Tick);
    assert_eq!(kills(&out), vec![(2, reduces[1].1.attempt)]);
    // The finished map stage runs again, for the lost partitions only, and
    // no reducer launches before it is complete.
    let l = launches(&out);
    assert_eq!(shape(&l), vec![(0, 1), (0, 3)]);
    assert!(l.iter().all(|(w, t)| *w == 1 && t.stage_attempt == 1));
    assert!(launches(&h.ok(1, &l[0].1)).is_empty());
    let r = launches(&h.ok(1, &l[1].1));
    assert_eq!(shape(&r), vec![(1, 1)], "reduce 0 was committed already");
    assert_eq!(r[0].1.stage_attempt, 1);
    assert!(r[0].1.inputs[0].maps.iter().all(|m| m.worker == 1));
    // Worker 2's late report of its reduce is fenced.
    let late = DriverInput::TaskStatus { worker: 2, epoch: 1, attempt: reduces[1].1.attempt, outcome: TaskOutcome::Success { result: Some(b"late".to_vec()) } };
    assert!(job_end(&h.step(late)).is_none());
    let out = h.ok(1, &r[0].1);
    assert_eq!(job_end(&out), Some(&DriverEffect::JobSucceeded { job: 1, results: vec![b"r0".to_vec(), b"r1".to_vec()] }));
    assert_eq!(cleans(&out), vec![(1, 1), (2, 1)]);
}

#[test]
fn a_new_epoch_is_the_loss_of_the_previous_incarnation() {
    let mut h = H::new(no_speculation());
    h.register(1, 1, 2);
    h.register(2, 1, 2);
    let maps = launches(&h.submit(1, two_stage(2, 1)));
    h.ok(maps[0].0, &maps[0].1);
    // Worker 2 restarts before finishing map 1; worker 1 restarts after map 0.
    let out = h.register(2, 2, 2);
    assert!(kills(&out).is_empty(), "the old incarnation is gone: nothing to tell it");
    let l = launches(&out);
    assert_eq!(l.iter().map(|(w, t)| (*w, t.partition)).collect::<Vec<_>>(), vec![(1, 1)], "rescheduled");
    let out = h.register(1, 5, 2);
    let l2 = launches(&out);
    assert_eq!(shape(&l2), vec![(0, 0), (0, 1)], "map 0's output and map 1's new attempt died with worker 1's first incarnation");
    // Its report is fenced; so is a late registration of an older incarnation.
    let old = DriverInput::TaskStatus { worker: 1, epoch: 1, attempt: l[0].1.attempt, outcome: TaskOutcome::Success { result: None } };
    assert!(h.step(old).is_empty());
    assert!(h.step(DriverInput::RegisterWorker { worker: 1, epoch: 4, slots: 9 }).is_empty());
    let out = run_to_end(&mut h, l2);
    assert!(matches!(job_end(&out), Some(DriverEffect::JobSucceeded { .. })));
}

#[test]
fn a_lost_worker_that_heartbeats_again_comes_back_empty() {
    let config = DriverConfig { worker_timeout_ms: 1_000, ..no_speculation() };
    let mut h = H::new(config);
    h.register(1, 1, 1);
    let maps = launches(&h.submit(1, two_stage(2, 1)));
    h.at(1_000, DriverInput::Tick);
    assert!(h.d.live_workers().is_empty());
    // It was only paused; its report of the old attempt is fenced.
    let out = h.at(1_500, DriverInput::Heartbeat { worker: 1, epoch: 1 });
    let l = launches(&out);
    assert_eq!(shape(&l), vec![(0, 0)], "a slot again, the task again");
    assert!(l[0].1.attempt != maps[0].1.attempt);
    assert!(h.ok(1, &maps[0].1).is_empty());
}

#[test]
fn a_straggler_gets_one_speculative_copy_and_the_first_success_wins() {
    let mut h = H::new(DriverConfig::default());
    h.register(1, 1, 10);
    h.register(2, 1, 10);
    let l = launches(&h.submit(1, two_stage(10, 1)));
    assert_eq!(l.len(), 10);
    let slow = l.iter().find(|(_, t)| t.partition == 9).unwrap().clone();
    // 9 of 10 (the quantile) succeed after 100 ms: median 100, threshold 300.
    h.now = 100;
    for (w, t) in l.iter().filter(|(_, t)| t.partition != 9) {
        assert!(launches(&h.ok(*w, t)).is_empty());
    }
    h.heartbeat_all();
    let out = h.at(300, DriverInput::Tick);
    assert!(launches(&out).is_empty(), "300 ms is not longer than 3 × median");
    let out = h.at(400, DriverInput::Tick);
    let copy = launches(&out);
    assert_eq!(shape(&copy), vec![(0, 9)]);
    assert_ne!(copy[0].0, slow.0, "on another worker");
    assert_eq!(h.d.progress(1).unwrap().stages[0].running, 2);
    assert!(launches(&h.at(10_000, DriverInput::Heartbeat { worker: 1, epoch: 1 })).is_empty(), "only one extra copy");
    // The copy wins; the original is killed.
    let out = h.ok(copy[0].0, &copy[0].1);
    assert_eq!(kills(&out), vec![(slow.0, slow.1.attempt)]);
    let reduce = launches(&out);
    assert_eq!(shape(&reduce), vec![(1, 0)]);
    assert_eq!(reduce[0].1.inputs[0].maps[9].worker, copy[0].0, "the winner's output is read");
    // The loser's success crosses the kill: it changes nothing.
    assert!(launches(&h.ok(slow.0, &slow.1)).is_empty());
    assert_eq!(reduce[0].1.inputs[0].maps[9].worker, copy[0].0);
}

#[test]
fn a_killed_copy_s_fetch_failure_changes_nothing() {
    // Stage 0 (1 map) -> stage 1 (20 maps) -> stage 2 (result). Two of
    // stage 1's tasks straggle and get copies; a copy wins, and the killed
    // original then reports a fetch failure (its kill interrupted the
    // fetch). It must not end stage 1's attempt or unregister outputs.
    let mut h = H::new(DriverConfig::default());
    h.register(1, 1, 30);
    h.register(2, 1, 30);
    let spec = JobSpec { stages: vec![map(0, 1, &[], 20), map(1, 20, &[0], 1), result(2, 1, &[1])] };
    let m0 = launches(&h.submit(1, spec));
    let l = launches(&h.ok(m0[0].0, &m0[0].1));
    assert_eq!(l.len(), 20);
    h.now = 100;
    for (w, t) in l.iter().filter(|(_, t)| t.partition < 18) {
        h.ok(*w, t);
    }
    h.heartbeat_all();
    let copies = launches(&h.at(400, DriverInput::Tick));
    assert_eq!(shape(&copies), vec![(1, 18), (1, 19)]);
    let original = l.iter().find(|(_, t)| t.partition == 18).unwrap().clone();
    let out = h.ok(copies[0].0, &copies[0].1);
    assert_eq!(kills(&out), vec![(original.0, original.1.attempt)]);
    let before = h.d.progress(1).unwrap();
    let out = h.report(original.0, &original.1, TaskOutcome::FetchFailed { shuffle: 0, map_partition: 0, worker: m0[0].0 });
    assert!(out.is_empty(), "a killed attempt's fetch failure acted on: {out:?}");
    assert_eq!(h.d.progress(1).unwrap(), before);
    // Partition 19's copies still run; the first to finish completes stage 1.
    let out = h.ok(copies[1].0, &copies[1].1);
    assert_eq!(shape(&launches(&out)), vec![(2, 0)]);
}

#[test]
fn a_result_partition_is_committed_exactly_once() {
    let mut h = H::new(DriverConfig::default());
    h.register(1, 1, 4);
    h.register(2, 1, 4);
    let maps = launches(&h.submit(1, two_stage(1, 2)));
    let reduces = launches(&h.ok(maps[0].0, &maps[0].1));
    h.now = 100;
    h.ok(reduces[0].0, &reduces[0].1);
    h.heartbeat_all();
    // Median 100 ms (quantile: 1 of 2), so reduce 1 is copied after 300 ms.
    let copy = launches(&h.at(500, DriverInput::Tick));
    assert_eq!(shape(&copy), vec![(1, 1)]);
    let first = h.report(copy[0].0, &copy[0].1, TaskOutcome::Success { result: Some(b"copy".to_vec()) });
    // The original's success arrives after the job ended: refused.
    let second = h.report(reduces[1].0, &reduces[1].1, TaskOutcome::Success { result: Some(b"orig".to_vec()) });
    assert_eq!(job_end(&first), Some(&DriverEffect::JobSucceeded { job: 1, results: vec![b"r0".to_vec(), b"copy".to_vec()] }));
    assert!(second.is_empty());
}

#[test]
fn cancelling_kills_the_tasks_reports_and_cleans() {
    let mut h = H::new(no_speculation());
    h.register(1, 1, 1);
    h.register(2, 1, 1);
    let l = launches(&h.submit(1, two_stage(3, 1)));
    let out = h.step(DriverInput::CancelJob { job: 1 });
    let mut k = kills(&out);
    k.sort();
    assert_eq!(k, vec![(1, l[0].1.attempt), (2, l[1].1.attempt)]);
    assert_eq!(job_end(&out), Some(&DriverEffect::JobFailed { job: 1, reason: "cancelled".into() }));
    assert_eq!(cleans(&out), vec![(1, 1), (2, 1)]);
    assert_eq!(h.d.job_state(1), Some(JobState::Cancelled));
    // The killed tasks report; the freed slots stay free; cancelling again does nothing.
    assert!(launches(&h.report(1, &l[0].1, TaskOutcome::Killed)).is_empty());
    assert!(h.step(DriverInput::CancelJob { job: 1 }).is_empty());
    assert!(h.step(DriverInput::CancelJob { job: 99 }).is_empty());
}

#[test]
fn a_worker_registering_again_is_told_to_clean_every_ended_job() {
    // Its connection broke while jobs ended, so their CleanJobs were lost.
    let mut h = H::new(no_speculation());
    h.register(1, 1, 2);
    let l = launches(&h.submit(1, two_stage(2, 1)));
    let end = run_to_end(&mut h, l);
    assert!(matches!(job_end(&end), Some(DriverEffect::JobSucceeded { job: 1, .. })));
    let l = launches(&h.submit(2, two_stage(1, 1)));
    assert_eq!(l.len(), 1);
    // The same incarnation registers again (a reconnection): job 1 ended,
    // job 2 still runs and keeps its outputs.
    assert_eq!(cleans(&h.register(1, 1, 2)), vec![(1, 1)]);
    // A new incarnation is a different case: it starts empty.
    assert!(cleans(&h.register(1, 2, 2)).is_empty());
    // Forgotten jobs are not cleaned again.
    h.d.forget(1);
    assert!(cleans(&h.register(1, 2, 2)).is_empty());
}

#[test]
fn concurrent_jobs_share_the_workers_first_submitted_first() {
    let mut h = H::new(no_speculation());
    h.register(1, 1, 2);
    let a = launches(&h.submit(1, two_stage(3, 1)));
    let b = launches(&h.submit(2, two_stage(1, 1)));
    assert_eq!(a.len(), 2);
    assert!(b.is_empty(), "no free slot");
    let next = launches(&h.ok(1, &a[0].1));
    assert_eq!(next.iter().map(|(_, t)| (t.job, t.partition)).collect::<Vec<_>>(), vec![(1, 2)], "job 1 first");
    let next2 = launches(&h.ok(1, &a[1].1));
    assert_eq!(next2.iter().map(|(_, t)| t.job).collect::<Vec<_>>(), vec![2]);
    let mut pending = next;
    pending.extend(next2);
    let out = run_to_end(&mut h, pending);
    let ended: Vec<JobId> = out
        .iter()
        .filter_map(|e| match e {
            DriverEffect::JobSucceeded { job, .. } => Some(*job),
            _ => None,
        })
        .collect();
    assert_eq!(ended.len(), 2);
    assert_eq!((h.d.job_state(1), h.d.job_state(2)), (Some(JobState::Succeeded), Some(JobState::Succeeded)));
}

#[test]
fn invalid_specs_fail_at_submission() {
    let mut h = H::new(no_speculation());
    h.register(1, 1, 2);
    let cases = [
        (JobSpec { stages: vec![] }, "at least one stage"),
        (JobSpec { stages: vec![map(0, 1, &[], 1)] }, "must be the result stage"),
        (JobSpec { stages: vec![result(0, 1, &[]), result(1, 1, &[0])] }, "not the last"),
        (JobSpec { stages: vec![result(1, 1, &[0]), map(0, 1, &[], 1)] }, "not the last"),
        (JobSpec { stages: vec![map(0, 1, &[], 1), result(1, 1, &[2])] }, "reads stage 2"),
        (JobSpec { stages: vec![map(0, 1, &[], 1), map(0, 1, &[], 1), result(1, 1, &[0])] }, "twice"),
        (JobSpec { stages: vec![result(0, u32::MAX, &[])] }, "at most"),
    ];
    for (i, (spec, why)) in cases.into_iter().enumerate() {
        let job = 10 + i as JobId;
        let out = h.submit(job, spec);
        let Some(DriverEffect::JobFailed { reason, .. }) = job_end(&out) else { panic!("{out:?}") };
        assert!(reason.starts_with("invalid job") && reason.contains(why), "{reason}");
        assert!(launches(&out).is_empty());
    }
    let mut spec = two_stage(2, 1);
    spec.stages[0].preferred = vec![vec![1]];
    assert!(matches!(job_end(&h.submit(20, spec)), Some(DriverEffect::JobFailed { .. })));
    // A result stage of no partitions succeeds at once.
    let out = h.submit(21, JobSpec { stages: vec![result(0, 0, &[])] });
    assert_eq!(job_end(&out), Some(&DriverEffect::JobSucceeded { job: 21, results: vec![] }));
    // Submitting a known id again is a retry: ignored.
    assert!(h.submit(21, two_stage(1, 1)).is_empty());
}

#[test]
fn timers_cover_worker_deadlines_and_the_resubmission() {
    let config = DriverConfig { worker_timeout_ms: 1_000, ..no_speculation() };
    let mut h = H::new(config);
    let out = h.register(1, 1, 1);
    assert_eq!(timers(&out), vec![1_000]);
    assert!(timers(&h.at(10, DriverInput::Heartbeat { worker: 1, epoch: 1 })).is_empty(), "the armed timer stands");
    // At the deadline the worker is not lost yet: it heartbeat at 10.
    assert_eq!(timers(&h.at(1_000, DriverInput::Tick)), vec![1_010]);
    let out = h.at(1_010, DriverInput::Tick);
    assert!(h.d.live_workers().is_empty());
    assert!(timers(&out).is_empty(), "nothing left to wait for");
}

#[test]
fn a_running_map_stage_reruns_a_lost_partition_within_its_attempt() {
    let config = DriverConfig { worker_timeout_ms: 1_000, ..no_speculation() };
    let mut h = H::new(config);
    h.register(1, 1, 1);
    h.register(2, 1, 1);
    let l = launches(&h.submit(1, two_stage(3, 1)));
    assert_eq!(l.iter().map(|(w, t)| (*w, t.partition)).collect::<Vec<_>>(), vec![(1, 0), (2, 1)]);
    let l2 = launches(&h.ok(2, &l[1].1));
    assert_eq!(l2.iter().map(|(w, t)| (*w, t.partition)).collect::<Vec<_>>(), vec![(2, 2)]);
    // Worker 2 dies holding map 1 and running map 2.
    let out = h.register(2, 2, 1);
    let l3 = launches(&out);
    assert_eq!(shape(&l3), vec![(0, 1)], "map 1 again; map 2 waits for a slot");
    assert!(l3.iter().all(|(_, t)| t.stage_attempt == 0), "the same stage attempt");
    let out = run_to_end(&mut h, vec![l[0].clone(), l3[0].clone()]);
    assert!(matches!(job_end(&out), Some(DriverEffect::JobSucceeded { .. })));
    assert_eq!(h.d.progress(1).unwrap().stages[0].attempt, 0);
}

#[test]
fn a_dropped_connection_is_a_loss_at_once() {
    let mut h = H::new(no_speculation());
    h.register(1, 1, 1);
    h.register(2, 1, 1);
    let l = launches(&h.submit(1, two_stage(2, 1)));
    let out = h.step(DriverInput::WorkerLost { worker: 2, epoch: 1 });
    assert!(kills(&out).is_empty(), "unreachable: nothing to tell it");
    assert_eq!(h.d.live_workers(), vec![(1, 1)]);
    // Map 1 waits for worker 1's slot; a stale epoch's report changes nothing.
    assert!(h.step(DriverInput::WorkerLost { worker: 1, epoch: 0 }).is_empty());
    let next = launches(&h.ok(1, &l[0].1));
    assert_eq!(next.iter().map(|(w, t)| (*w, t.partition)).collect::<Vec<_>>(), vec![(1, 1)]);
    // It reconnects (same epoch): back, empty; its old task's report is fenced.
    let out = h.register(2, 1, 1);
    assert!(launches(&out).is_empty(), "nothing left to place");
    assert!(h.ok(2, &l[1].1).is_empty());
    assert_eq!(h.d.live_workers(), vec![(1, 1), (2, 1)]);
}

/// The example in the book ("The batch driver and workers"), step by step.
#[test]
fn the_books_example_a_worker_dies_mid_shuffle() {
    let mut h = H::new(no_speculation());
    h.register(1, 1, 2); // worker A
    h.register(2, 1, 2); // worker B
    let mut spec = two_stage(4, 2);
    spec.stages[1].preferred = vec![vec![1], vec![1]];
    // 1. Stage 1 needs stage 0: the maps run first, spread over A and B.
    let maps = launches(&h.submit(1, spec));
    let placed = |l: &[(WorkerId, TaskDesc)]| l.iter().map(|(w, t)| (t.stage, t.partition, *w, t.attempt)).collect::<Vec<_>>();
    assert_eq!(placed(&maps), vec![(0, 0, 1, 1), (0, 1, 2, 2), (0, 2, 1, 3), (0, 3, 2, 4)]);
    // 2. All four succeed: the reduces run on A (preferred), reading A, B, A, B.
    let mut reduces = Vec::new();
    for (w, t) in &maps {
        reduces.extend(launches(&h.ok(*w, t)));
    }
    assert_eq!(placed(&reduces), vec![(1, 0, 1, 5), (1, 1, 1, 6)]);
    assert_eq!(reduces[1].1.inputs[0].maps.iter().map(|m| m.worker).collect::<Vec<_>>(), vec![1, 2, 1, 2]);
    // 3. Reduce 0 commits. B crashes; reduce 1 cannot fetch map 1 from it.
    h.ok(1, &reduces[0].1);
    h.now = 50;
    let out = h.report(1, &reduces[1].1, TaskOutcome::FetchFailed { shuffle: 0, map_partition: 1, worker: 2 });
    assert_eq!(out, vec![DriverEffect::Timer { at: 250 }]);
    let p = h.d.progress(1).unwrap();
    assert_eq!((p.stages[0].done, p.stages[1].done), (2, 1), "maps 1 and 3 (both on B) unregistered; reduce 0 kept");
    // 4. The resubmission: stage 0 attempt 1 over maps 1 and 3. The driver
    // does not know B is dead: map 3 goes there, and hangs.
    let again = launches(&h.at(250, DriverInput::Tick));
    assert_eq!(placed(&again), vec![(0, 1, 1, 7), (0, 3, 2, 8)]);
    assert!(again.iter().all(|(_, t)| t.stage_attempt == 1));
    // 5. B restarts with epoch 2: its first incarnation is lost, map 3
    // (attempt 8) is placed again — not counted as a failure.
    let out = h.at(300, DriverInput::RegisterWorker { worker: 2, epoch: 2, slots: 2 });
    h.epochs.insert(2, 2);
    let m3 = launches(&out);
    assert_eq!(placed(&m3), vec![(0, 3, 2, 9)]);
    // 6. Maps 1 and 3 succeed: stage 1 attempt 1 runs reduce 1 only.
    assert!(launches(&h.ok(1, &again[0].1)).is_empty());
    let r1 = launches(&h.ok(2, &m3[0].1));
    assert_eq!(placed(&r1), vec![(1, 1, 1, 10)]);
    assert_eq!(r1[0].1.stage_attempt, 1);
    let locations: Vec<(WorkerId, u64)> = r1[0].1.inputs[0].maps.iter().map(|m| (m.worker, m.worker_epoch)).collect();
    assert_eq!(locations, vec![(1, 1), (1, 1), (1, 1), (2, 2)]);
    // 7. It commits: the job succeeds, both workers clean up.
    let out = h.ok(1, &r1[0].1);
    assert_eq!(
        out,
        vec![
            DriverEffect::JobSucceeded { job: 1, results: vec![b"r0".to_vec(), b"r1".to_vec()] },
            DriverEffect::CleanJob { worker: 1, job: 1 },
            DriverEffect::CleanJob { worker: 2, job: 1 },
        ]
    );
}
