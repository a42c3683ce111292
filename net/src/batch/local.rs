//! An in-process cluster for `millrace sql --local`: one driver and one
//! worker machine (Spark's `local[N]`: one executor with N task slots),
//! tasks on N OS threads, shuffle blocks in memory. The machines are the
//! same ones a cluster runs; only the transport is a function call.

use std::collections::{BTreeMap, VecDeque};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use arrow::array::RecordBatch;
use millrace_core::Millis;
use millrace_core::batch::{
    AttemptId, Driver, DriverConfig, DriverEffect, DriverInput, JobId, JobProgress, StageId, TaskDesc, TaskOutcome, Worker, WorkerConfig,
    WorkerEffect, WorkerInput,
};
use millrace_engine::exec::{FetchFailed, TaskError, TaskInputs, TaskOutput, run_task};
use millrace_engine::job::job_spec;
use millrace_engine::physical::{PlannerConfig, StagePlan, cut};
use millrace_engine::plan::LogicalPlan;
use millrace_engine::shuffle;
use millrace_engine::source::TopicReader;
use millrace_engine::spill::Spill;

use super::spill::DiskSpace;

/// Shuffle blocks by (job, shuffle, map partition), one per reduce partition.
type Blocks = Arc<Mutex<BTreeMap<(JobId, StageId, u32), Arc<Vec<Vec<u8>>>>>>;

pub struct LocalConfig {
    /// Task slots (threads); defaults to the machine's cores.
    pub slots: u32,
    pub planner: PlannerConfig,
    pub driver: DriverConfig,
    /// Where `topic('name')` scans read from (none: they fail).
    pub topics: Option<Arc<dyn TopicReader + Send + Sync>>,
    /// Megabytes an aggregate or join of one task may hold before it
    /// spills to `spill_dir`; 0: never spill.
    pub task_memory_mb: u64,
    pub spill_dir: std::path::PathBuf,
}

impl Default for LocalConfig {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(2);
        LocalConfig { slots: cores, planner: PlannerConfig { shuffle_partitions: cores.max(2) * 2 }, driver: DriverConfig::default(), topics: None, task_memory_mb: crate::config::DEFAULT_TASK_MEMORY_MB, spill_dir: std::env::temp_dir() }
    }
}

struct Done {
    attempt: AttemptId,
    outcome: TaskOutcome,
}

struct Inputs<'a> {
    blocks: &'a Blocks,
    job: JobId,
    topics: Option<&'a (dyn TopicReader + Send + Sync)>,
    spill: Option<Spill<'a>>,
}

impl TaskInputs for Inputs<'_> {
    fn shuffle_blocks(&self, shuffle: u32, reduce: u32) -> Result<Vec<Vec<u8>>, FetchFailed> {
        // Map outputs are found by the locations the driver sent; locally
        // every location is this process, so the store is enough.
        let store = self.blocks.lock().map_err(|_| FetchFailed { shuffle, map_partition: 0 })?;
        let mut out = Vec::new();
        for ((job, s, m), blocks) in store.range((self.job, shuffle, 0)..=(self.job, shuffle, u32::MAX)) {
            debug_assert!(*job == self.job && *s == shuffle);
            out.push(blocks.get(reduce as usize).cloned().ok_or(FetchFailed { shuffle, map_partition: *m })?);
        }
        Ok(out)
    }

    fn topics(&self) -> Option<&dyn TopicReader> {
        self.topics.map(|t| t as &dyn TopicReader)
    }

    fn spill(&self) -> Option<Spill<'_>> {
        self.spill
    }
}

/// What the tasks of a local run spilled, for the summary line.
#[derive(Default)]
pub struct Spilled {
    pub bytes: AtomicU64,
    pub runs: AtomicU64,
}

fn execute(task: &TaskDesc, blocks: &Blocks, topics: Option<&(dyn TopicReader + Send + Sync)>, memory: (u64, &std::path::Path), spilled: &Spilled) -> TaskOutcome {
    let plan = match StagePlan::from_bytes(&task.payload) {
        Ok(p) => p,
        Err(e) => return TaskOutcome::Failed { reason: e.to_string() },
    };
    // Check every map output is there before running, so a missing one is
    // a fetch failure naming it rather than a half-run task.
    if let Ok(store) = blocks.lock() {
        for input in &task.inputs {
            for m in &input.maps {
                if !store.contains_key(&(task.job, input.shuffle, m.map_partition)) {
                    return TaskOutcome::FetchFailed { shuffle: input.shuffle, map_partition: m.map_partition, worker: m.worker };
                }
            }
        }
    }
    let space = DiskSpace::new(memory.1.to_path_buf());
    let ran = run_task(&plan, task.partition, &Inputs { blocks, job: task.job, topics, spill: space.limit(memory.0) });
    spilled.bytes.fetch_add(space.written(), Ordering::Relaxed);
    spilled.runs.fetch_add(space.runs(), Ordering::Relaxed);
    match ran {
        Ok(TaskOutput::Shuffle(parts)) => {
            if let Ok(mut store) = blocks.lock() {
                store.insert((task.job, task.stage, task.partition), Arc::new(parts));
            }
            TaskOutcome::Success { result: None }
        }
        Ok(TaskOutput::Result(block)) => TaskOutcome::Success { result: Some(block) },
        Err(TaskError::Fetch(f)) => TaskOutcome::FetchFailed { shuffle: f.shuffle, map_partition: f.map_partition, worker: 0 },
        Err(TaskError::Failed(e)) => TaskOutcome::Failed { reason: e.to_string() },
    }
}

/// Runs `plan` to completion and returns its rows in partition order.
/// `progress` is called whenever a task starts or ends.
pub fn run(plan: &LogicalPlan, config: &LocalConfig, progress: impl FnMut(&JobProgress)) -> anyhow::Result<Vec<RecordBatch>> {
    run_counting(plan, config, &Arc::default(), progress)
}

/// [`run`], adding what the tasks spilled to `spilled`.
pub fn run_counting(plan: &LogicalPlan, config: &LocalConfig, spilled: &Arc<Spilled>, mut progress: impl FnMut(&JobProgress)) -> anyhow::Result<Vec<RecordBatch>> {
    let stages = cut(plan, config.planner)?;
    let spec = job_spec(&stages);
    let start = Instant::now();
    let now = || start.elapsed().as_millis() as Millis;

    let blocks: Blocks = Arc::default();
    let (task_tx, task_rx) = channel::<TaskDesc>();
    let task_rx = Arc::new(Mutex::new(task_rx));
    let (done_tx, done_rx): (Sender<Done>, Receiver<Done>) = channel();
    let mut threads = Vec::new();
    for i in 0..config.slots.max(1) {
        let (rx, tx, blocks, topics) = (Arc::clone(&task_rx), done_tx.clone(), Arc::clone(&blocks), config.topics.clone());
        let (memory, dir, spilled) = (config.task_memory_mb, config.spill_dir.clone(), Arc::clone(spilled));
        threads.push(std::thread::Builder::new().name(format!("task-{i}")).spawn(move || {
            loop {
                let task = match rx.lock() {
                    Ok(rx) => match rx.recv() {
                        Ok(t) => t,
                        Err(_) => return,
                    },
                    Err(_) => return,
                };
                let outcome = execute(&task, &blocks, topics.as_deref(), (memory, &dir), &spilled);
                if tx.send(Done { attempt: task.attempt, outcome }).is_err() {
                    return;
                }
            }
        })?);
    }
    drop(done_tx);

    let mut driver = Driver::new(config.driver.clone());
    let mut worker = Worker::new(WorkerConfig { id: 0, slots: config.slots.max(1), heartbeat_ms: 1_000 }, 1);
    let job: JobId = 1;
    let mut to_driver: VecDeque<DriverInput> = VecDeque::new();
    let mut to_worker: VecDeque<WorkerInput> = VecDeque::new();
    let mut timers: Vec<Millis> = Vec::new();
    let mut result: Option<anyhow::Result<Vec<Vec<u8>>>> = None;

    to_worker.push_back(WorkerInput::Start);
    to_driver.push_back(DriverInput::SubmitJob { job, spec });
    let mut effects_d = Vec::new();
    let mut effects_w = Vec::new();
    while result.is_none() {
        // Deliver everything queued, machine to machine.
        while !to_driver.is_empty() || !to_worker.is_empty() {
            while let Some(input) = to_worker.pop_front() {
                worker.step(now(), input, &mut effects_w);
                for e in effects_w.drain(..) {
                    match e {
                        WorkerEffect::ToDriver(m) => to_driver.push_back(m),
                        WorkerEffect::Run(task) => task_tx.send(task).context("the task threads stopped")?,
                        // A running task cannot be interrupted; its answer is
                        // ignored by the driver once the attempt is killed.
                        WorkerEffect::Cancel(_) => {}
                        WorkerEffect::DeleteShuffle(j) => {
                            if let Ok(mut store) = blocks.lock() {
                                store.retain(|(jj, _, _), _| *jj != j);
                            }
                        }
                        WorkerEffect::Timer { at } => timers.push(at),
                    }
                }
            }
            while let Some(input) = to_driver.pop_front() {
                driver.step(now(), input, &mut effects_d);
                for e in effects_d.drain(..) {
                    match e {
                        DriverEffect::Launch { task, .. } => to_worker.push_back(WorkerInput::Launch(task)),
                        DriverEffect::Kill { attempt, .. } => to_worker.push_back(WorkerInput::Kill(attempt)),
                        DriverEffect::CleanJob { job, .. } => to_worker.push_back(WorkerInput::CleanJob(job)),
                        DriverEffect::JobSucceeded { results, .. } => result = Some(Ok(results)),
                        DriverEffect::JobFailed { reason, .. } => result = Some(Err(anyhow::anyhow!("job failed: {reason}"))),
                        DriverEffect::Timer { at } => timers.push(at),
                    }
                }
            }
            if let Some(p) = driver.progress(job) {
                progress(&p);
            }
        }
        if result.is_some() {
            break;
        }
        // Wait for a task to finish or the next timer.
        timers.sort_unstable();
        timers.dedup();
        let t = now();
        let next = timers.first().copied().unwrap_or(t + 1_000);
        let wait = Duration::from_millis((next - t).clamp(0, 1_000) as u64);
        match done_rx.recv_timeout(wait) {
            Ok(d) => to_worker.push_back(WorkerInput::Finished { attempt: d.attempt, outcome: d.outcome }),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => bail!("the task threads stopped"),
        }
        let t = now();
        if timers.first().is_some_and(|&at| at <= t) {
            timers.retain(|&at| at > t);
            to_worker.push_back(WorkerInput::Tick);
            to_driver.push_back(DriverInput::Tick);
        }
    }
    drop(task_tx);
    for t in threads {
        let _ = t.join();
    }
    let mut out = Vec::new();
    for block in result.unwrap_or_else(|| Ok(Vec::new()))? {
        out.extend(shuffle::decode(&block)?);
    }
    Ok(out)
}
