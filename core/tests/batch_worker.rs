//! The batch worker machine, by calling `step` directly.

use millrace_core::batch::*;

fn task(job: JobId, stage: StageId, partition: u32, attempt: AttemptId, output: StageOutput) -> TaskDesc {
    TaskDesc { job, stage, stage_attempt: 0, partition, attempt, payload: vec![1, 2], inputs: Vec::new(), output }
}

fn map_task(job: JobId, partition: u32, attempt: AttemptId) -> TaskDesc {
    task(job, 0, partition, attempt, StageOutput::ShuffleMap { partitions: 2 })
}

fn worker(slots: u32) -> (Worker, Vec<WorkerEffect>) {
    let mut w = Worker::new(WorkerConfig { id: 3, slots, heartbeat_ms: 100 }, 7);
    let mut out = Vec::new();
    w.step(0, WorkerInput::Start, &mut out);
    (w, out)
}

fn step(w: &mut Worker, now: i64, input: WorkerInput) -> Vec<WorkerEffect> {
    let mut out = Vec::new();
    w.step(now, input, &mut out);
    out
}

fn runs(out: &[WorkerEffect]) -> Vec<AttemptId> {
    out.iter()
        .filter_map(|e| match e {
            WorkerEffect::Run(t) => Some(t.attempt),
            _ => None,
        })
        .collect()
}

fn statuses(out: &[WorkerEffect]) -> Vec<(AttemptId, TaskOutcome)> {
    out.iter()
        .filter_map(|e| match e {
            WorkerEffect::ToDriver(DriverInput::TaskStatus { worker: 3, epoch: 7, attempt, outcome }) => Some((*attempt, outcome.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn it_registers_on_start_and_heartbeats_on_its_timer() {
    let mut w = Worker::new(WorkerConfig { id: 3, slots: 2, heartbeat_ms: 100 }, 7);
    assert!(step(&mut w, 0, WorkerInput::Launch(map_task(1, 0, 1))).is_empty(), "nothing before Start");
    let out = step(&mut w, 0, WorkerInput::Start);
    assert_eq!(
        out,
        vec![
            WorkerEffect::ToDriver(DriverInput::RegisterWorker { worker: 3, epoch: 7, slots: 2 }),
            WorkerEffect::Timer { at: 100 }
        ]
    );
    assert!(step(&mut w, 50, WorkerInput::Tick).is_empty());
    assert_eq!(
        step(&mut w, 100, WorkerInput::Tick),
        vec![WorkerEffect::ToDriver(DriverInput::Heartbeat { worker: 3, epoch: 7 }), WorkerEffect::Timer { at: 200 }]
    );
    assert_eq!(step(&mut w, 120, WorkerInput::Reconnect), vec![WorkerEffect::ToDriver(DriverInput::RegisterWorker { worker: 3, epoch: 7, slots: 2 })]);
}

#[test]
fn at_most_slots_tasks_run_and_the_rest_wait_in_order() {
    let (mut w, _) = worker(2);
    assert_eq!(runs(&step(&mut w, 1, WorkerInput::Launch(map_task(1, 0, 10)))), vec![10]);
    assert_eq!(runs(&step(&mut w, 1, WorkerInput::Launch(map_task(1, 1, 11)))), vec![11]);
    assert!(runs(&step(&mut w, 1, WorkerInput::Launch(map_task(1, 2, 12)))).is_empty());
    assert!(runs(&step(&mut w, 1, WorkerInput::Launch(map_task(1, 3, 13)))).is_empty());
    assert!(step(&mut w, 1, WorkerInput::Launch(map_task(1, 3, 13))).is_empty(), "a duplicate delivery");
    assert_eq!((w.running(), w.queued()), (vec![10, 11], vec![12, 13]));
    let out = step(&mut w, 2, WorkerInput::Finished { attempt: 11, outcome: TaskOutcome::Success { result: None } });
    assert_eq!(statuses(&out), vec![(11, TaskOutcome::Success { result: None })]);
    assert_eq!(runs(&out), vec![12], "the freed slot takes the oldest waiting task");
    assert!(w.has_shuffle(1, 0, 1));
    assert!(!w.has_shuffle(1, 0, 0));
}

#[test]
fn a_killed_task_keeps_its_slot_until_the_pool_answers() {
    let (mut w, _) = worker(1);
    step(&mut w, 1, WorkerInput::Launch(map_task(1, 0, 10)));
    step(&mut w, 1, WorkerInput::Launch(map_task(1, 1, 11)));
    step(&mut w, 1, WorkerInput::Launch(map_task(1, 2, 12)));
    // A queued task never ran: answered at once.
    let out = step(&mut w, 2, WorkerInput::Kill(11));
    assert_eq!(statuses(&out), vec![(11, TaskOutcome::Killed)]);
    assert!(runs(&out).is_empty());
    // A running one is asked to stop; it holds its slot meanwhile.
    let out = step(&mut w, 2, WorkerInput::Kill(10));
    assert_eq!(out, vec![WorkerEffect::Cancel(10)]);
    assert!(step(&mut w, 2, WorkerInput::Kill(10)).is_empty(), "asked once");
    assert_eq!((w.running(), w.queued()), (vec![10], vec![12]));
    let out = step(&mut w, 3, WorkerInput::Finished { attempt: 10, outcome: TaskOutcome::Killed });
    assert_eq!(statuses(&out), vec![(10, TaskOutcome::Killed)]);
    assert_eq!(runs(&out), vec![12]);
    // One that finished before the cancel took effect reports what it did.
    step(&mut w, 4, WorkerInput::Kill(12));
    let out = step(&mut w, 5, WorkerInput::Finished { attempt: 12, outcome: TaskOutcome::Success { result: None } });
    assert_eq!(statuses(&out), vec![(12, TaskOutcome::Success { result: None })]);
    assert!(w.has_shuffle(1, 0, 2), "its output exists");
    // Unknown or repeated answers change nothing.
    assert!(step(&mut w, 6, WorkerInput::Finished { attempt: 12, outcome: TaskOutcome::Killed }).is_empty());
    assert!(step(&mut w, 6, WorkerInput::Kill(99)).is_empty());
}

#[test]
fn failures_and_results_are_reported_as_they_are_and_keep_no_output() {
    let (mut w, _) = worker(2);
    step(&mut w, 1, WorkerInput::Launch(map_task(1, 0, 10)));
    step(&mut w, 1, WorkerInput::Launch(task(1, 1, 0, 11, StageOutput::Result)));
    let failed = TaskOutcome::FetchFailed { shuffle: 0, map_partition: 2, worker: 4 };
    assert_eq!(statuses(&step(&mut w, 2, WorkerInput::Finished { attempt: 10, outcome: failed.clone() })), vec![(10, failed)]);
    assert!(!w.has_shuffle(1, 0, 0));
    let done = TaskOutcome::Success { result: Some(b"42".to_vec()) };
    assert_eq!(statuses(&step(&mut w, 2, WorkerInput::Finished { attempt: 11, outcome: done.clone() })), vec![(11, done)]);
    assert!(!w.has_shuffle(1, 1, 0), "a result is not a shuffle output");
}

#[test]
fn cleaning_a_job_deletes_its_outputs_stops_its_tasks_and_refuses_late_launches() {
    let (mut w, _) = worker(1);
    step(&mut w, 1, WorkerInput::Launch(map_task(1, 0, 10)));
    step(&mut w, 1, WorkerInput::Finished { attempt: 10, outcome: TaskOutcome::Success { result: None } });
    step(&mut w, 1, WorkerInput::Launch(map_task(2, 0, 20)));
    step(&mut w, 1, WorkerInput::Launch(map_task(2, 1, 21)));
    step(&mut w, 1, WorkerInput::Launch(map_task(1, 1, 11)));
    assert_eq!((w.running(), w.queued()), (vec![20], vec![21, 11]));
    step(&mut w, 1, WorkerInput::Launch(map_task(2, 5, 25)));
    let out = step(&mut w, 2, WorkerInput::CleanJob(2));
    assert!(out.contains(&WorkerEffect::DeleteShuffle(2)));
    assert!(out.contains(&WorkerEffect::Cancel(20)));
    assert_eq!(statuses(&out), vec![(21, TaskOutcome::Killed), (25, TaskOutcome::Killed)], "queued: dropped");
    assert!(runs(&out).is_empty(), "20 holds the slot until it stops");
    assert!(w.has_shuffle(1, 0, 0), "another job's output stays");
    // 20 finished writing before it could stop: the file goes too.
    let out = step(&mut w, 2, WorkerInput::Finished { attempt: 20, outcome: TaskOutcome::Success { result: None } });
    assert!(out.contains(&WorkerEffect::DeleteShuffle(2)));
    assert!(!w.has_shuffle(2, 0, 0));
    assert_eq!(statuses(&out), vec![(20, TaskOutcome::Success { result: None })]);
    assert_eq!(runs(&out), vec![11]);
    let out = step(&mut w, 3, WorkerInput::Launch(map_task(2, 2, 22)));
    assert_eq!(statuses(&out), vec![(22, TaskOutcome::Killed)], "answered, so the driver frees the slot");
    step(&mut w, 3, WorkerInput::CleanJob(1));
    assert!(!w.has_shuffle(1, 0, 0));
    assert!(!w.has_shuffle(1, 0, 1));
}

#[test]
fn a_lost_shuffle_file_is_no_longer_served() {
    let (mut w, _) = worker(1);
    step(&mut w, 1, WorkerInput::Launch(map_task(1, 4, 10)));
    step(&mut w, 1, WorkerInput::Finished { attempt: 10, outcome: TaskOutcome::Success { result: None } });
    assert!(w.has_shuffle(1, 0, 4));
    step(&mut w, 2, WorkerInput::ShuffleLost { job: 1, shuffle: 0, map_partition: 4 });
    assert!(!w.has_shuffle(1, 0, 4));
}
