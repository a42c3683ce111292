//! The batch driver and 3–5 workers under a seeded in-memory network
//! (raft-rs's test style): every message takes a random delay (so messages
//! overtake each other), tasks run on a fake executor for a random time,
//! and faults strike: a worker crashes (losing its shuffle outputs and
//! running tasks) and restarts with a new epoch, pauses (stops answering,
//! past the driver's timeout or not, then resumes with the same epoch),
//! runs slowly (speculation), loses one shuffle file; tasks fail at random
//! (at most once per partition, below `task_max_failures`); the driver's
//! adapter may notice a crashed worker's connection drop (`WorkerLost`).
//!
//! The fake executor computes something whose answer is known: a source
//! stage's partition emits numbers derived from (job, stage, partition), a
//! map stage with parents transforms the numbers it reads, a shuffle-map
//! task splits its numbers into buckets by value mod the bucket count, and
//! a result task returns "partition:sum". Reducers really fetch from the
//! worker incarnation their input names and fail with FetchFailed when it
//! is gone. The reference is the same plan evaluated directly.
//!
//! Checked:
//! - every launch's inputs name, for each parent, every map partition in
//!   order, each at a worker incarnation that reported that output and
//!   that the driver has not been told was replaced (no stage runs before
//!   its parents' outputs are all available);
//! - every job that is not cancelled succeeds once, with the reference
//!   answer: one result per partition, each partition exactly once;
//! - liveness: once faults stop, every job ends within a bounded time;
//! - when everything is over, no worker keeps a finished job's shuffle
//!   output;
//! - the same scenario gives the same effects, byte for byte.
//!
//! `PROPTEST_CASES` sets the number of cases (default 256);
//! `BATCH_SIM_SEEDS=N cargo test -p millrace-core --test batch_sim sweep
//! -- --ignored --nocapture` runs seeds 0..N with faults drawn from the
//! seed and prints the failing ones.

use std::collections::{BTreeMap, BTreeSet};

use millrace_core::Millis;
use millrace_core::batch::*;
use millrace_core::rng::Rng;
use proptest::prelude::*;

const HEARTBEAT_MS: Millis = 100;
const WORKER_TIMEOUT_MS: Millis = 1_000;
/// After the last fault ends, every job must end within this.
const LIVENESS_MS: Millis = 30_000;
const MAX_EVENTS: usize = 2_000_000;

#[derive(Debug, Clone)]
enum FaultKind {
    /// Crash, restart `down` ms later with a new epoch and nothing kept.
    Crash { down: Millis },
    /// Process nothing (no heartbeats, no fetches served) for a while.
    Pause { for_ms: Millis },
    /// Tasks started meanwhile run 30 times slower.
    Slow { for_ms: Millis },
    /// One shuffle output file is gone.
    LoseOutput,
    /// Messages to and from the worker take up to `extra` ms longer (a
    /// congested link: kills arrive late, so losing copies finish).
    Lag { for_ms: Millis, extra: Millis },
}

#[derive(Debug, Clone)]
struct Fault {
    at: Millis,
    worker: usize,
    kind: FaultKind,
}

impl Fault {
    fn end(&self) -> Millis {
        self.at
            + match self.kind {
                FaultKind::Crash { down } => down,
                FaultKind::Pause { for_ms } | FaultKind::Slow { for_ms } | FaultKind::Lag { for_ms, .. } => for_ms,
                FaultKind::LoseOutput => 0,
            }
    }
}

#[derive(Debug)]
enum Ev {
    Driver(DriverInput),
    DriverTick,
    Worker { w: usize, epoch: u64, input: WorkerInput },
    WorkerTick { w: usize, epoch: u64 },
    ExecDone { w: usize, epoch: u64, attempt: AttemptId },
    /// A cancelled task stops (unless it finished first).
    CancelDone { w: usize, epoch: u64, attempt: AttemptId },
    Fault(Fault),
    Restart { w: usize },
    Submit(JobId),
    Cancel(JobId),
}

struct SimWorker {
    machine: Option<Worker>,
    epoch: u64,
    slots: u32,
    /// This incarnation's shuffle files: (job, stage, map partition) ->
    /// buckets.
    disk: BTreeMap<(JobId, StageId, u32), Vec<Vec<u64>>>,
    /// The executor pool: tasks running, and whether a cancel is under way.
    executing: BTreeMap<AttemptId, (TaskDesc, bool)>,
    paused_until: Millis,
    slow_until: Millis,
    lag_until: Millis,
    lag: Millis,
    ticks: BTreeSet<Millis>,
}

struct SimJob {
    spec: JobSpec,
    reference: Vec<Vec<u8>>,
    submit_at: Millis,
    cancel_at: Option<Millis>,
    outcome: Option<Result<Vec<Vec<u8>>, String>>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    launches: u64,
    fetch_failures: u64,
    injected_failures: u64,
    speculative: u64,
    kills: u64,
    crashes: u64,
    /// Second successes of a result partition reaching the driver while
    /// its job runs (the commit coordinator must refuse them).
    duplicate_results: u64,
}

struct Sim {
    now: Millis,
    rng: Rng,
    seq: u64,
    queue: BTreeMap<(Millis, u64), Ev>,
    driver: Driver,
    driver_ticks: BTreeSet<Millis>,
    workers: Vec<SimWorker>,
    jobs: BTreeMap<JobId, SimJob>,
    fail_pct: u64,
    failed_once: BTreeSet<(JobId, StageId, u32)>,
    /// Observer: every launched task; the map outputs reported to the
    /// driver, as (job, stage, partition, worker, epoch); the newest epoch
    /// each worker registered with.
    tasks: BTreeMap<AttemptId, TaskDesc>,
    reported: BTreeMap<(JobId, StageId, u32, WorkerId, u64), Millis>,
    told_epoch: BTreeMap<WorkerId, u64>,
    /// The driver's view of each worker's current incarnation, mirrored
    /// from what it was told: (epoch, last heard, alive); and the times it
    /// gave up on an incarnation for silence.
    heard: BTreeMap<WorkerId, (u64, Millis, bool)>,
    results_reported: BTreeSet<(JobId, u32)>,
    given_up: BTreeMap<(WorkerId, u64), Vec<Millis>>,
    quiet_at: Millis,
    trace: u64,
    stats: Stats,
}

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The fake plan: the payload is the job's salt.
fn salt(payload: &[u8]) -> u64 {
    u64::from_le_bytes(payload[..8].try_into().expect("8 bytes of salt"))
}

fn source(salt: u64, stage: StageId, partition: u32) -> Vec<u64> {
    (0..5u64).map(|j| mix(salt ^ (u64::from(stage) << 40) ^ (u64::from(partition) << 20) ^ j) % 1_000).collect()
}

fn transform(salt: u64, stage: StageId, xs: Vec<u64>) -> Vec<u64> {
    xs.into_iter().map(|x| (x * 31 + u64::from(stage) + salt % 7) % 1_000).collect()
}

/// What a task of `stage` computes from its input numbers (None: a
/// source).
fn compute(salt: u64, stage: &StageSpec, partition: u32, input: Option<Vec<u64>>) -> (Option<Vec<Vec<u64>>>, Option<Vec<u8>>) {
    let numbers = match input {
        None => source(salt, stage.id, partition),
        Some(xs) if matches!(stage.output, StageOutput::ShuffleMap { .. }) => transform(salt, stage.id, xs),
        Some(xs) => xs,
    };
    match stage.output {
        StageOutput::ShuffleMap { partitions } => {
            let mut buckets = vec![Vec::new(); partitions as usize];
            for x in numbers {
                buckets[(x % u64::from(partitions)) as usize].push(x);
            }
            (Some(buckets), None)
        }
        StageOutput::Result => (None, Some(format!("{partition}:{}", numbers.iter().sum::<u64>()).into_bytes())),
    }
}

/// The job evaluated directly, one partition after another.
fn reference(spec: &JobSpec) -> Vec<Vec<u8>> {
    let s = salt(&spec.stages[0].payload);
    let mut outputs: BTreeMap<StageId, Vec<Vec<Vec<u64>>>> = BTreeMap::new();
    let mut results = Vec::new();
    for stage in &spec.stages {
        let mut buckets_of = Vec::new();
        for p in 0..stage.partitions {
            let input = (!stage.parents.is_empty()).then(|| {
                stage.parents.iter().flat_map(|parent| outputs[parent].iter().flat_map(|m| m.get(p as usize).cloned().unwrap_or_default())).collect()
            });
            let (buckets, result) = compute(s, stage, p, input);
            buckets_of.extend(buckets);
            results.extend(result);
        }
        outputs.insert(stage.id, buckets_of);
    }
    results
}

/// A random job: one of five shapes, 1–8 partitions per map stage, 1–16
/// in the result stage, stage ids
/// out of order.
fn random_job(rng: &mut Rng, job: JobId, workers: usize) -> JobSpec {
    let id = |i: u32| (i * 7 + 2) % 11;
    let mut n = |max: u64| 1 + (rng.next_u64() % max) as u32;
    let payload = (job.wrapping_mul(0x1000_0001) ^ 0xabcd).to_le_bytes().to_vec();
    let shape = n(5);
    // The result stage (c) is the widest: it runs in waves, so copies race
    // while other partitions still run.
    let (a, b, c) = (n(8), n(8), n(16));
    let mk = |i: u32, partitions: u32, parents: &[u32], output: StageOutput| StageSpec {
        id: id(i),
        partitions,
        parents: parents.iter().map(|p| id(*p)).collect(),
        output,
        payload: payload.clone(),
        preferred: Vec::new(),
    };
    let map = |buckets: u32| StageOutput::ShuffleMap { partitions: buckets };
    let mut stages = match shape {
        1 => vec![mk(0, c, &[], StageOutput::Result)],
        2 => vec![mk(0, a, &[], map(c)), mk(1, c, &[0], StageOutput::Result)],
        3 => vec![mk(0, a, &[], map(b)), mk(1, b, &[0], map(c)), mk(2, c, &[1], StageOutput::Result)],
        4 => vec![mk(0, a, &[], map(c)), mk(1, b, &[], map(c)), mk(2, c, &[0, 1], StageOutput::Result)],
        _ => vec![mk(0, a, &[], map(b)), mk(1, b, &[0], map(c)), mk(2, b, &[0], map(c)), mk(3, c, &[1, 2], StageOutput::Result)],
    };
    // Some locality hints, some naming workers that do not exist.
    if rng.next_u64() % 2 == 0 {
        let first = &mut stages[0];
        first.preferred = (0..first.partitions).map(|p| vec![1 + (mix(u64::from(p) ^ job) % (workers as u64 + 1)) as WorkerId]).collect();
    }
    JobSpec { stages }
}

impl Sim {
    fn new(seed: u64, workers: usize, faults: &[Fault]) -> Self {
        let mut rng = Rng::new(seed);
        // Speculation as configured by default, or more eager (so several
        // copies race within one stage, not only the last task's).
        let (speculation_quantile, speculation_multiplier) = [(0.9, 3.0), (0.75, 2.0), (0.5, 1.5)][(rng.next_u64() % 3) as usize];
        let config = DriverConfig { worker_timeout_ms: WORKER_TIMEOUT_MS, speculation_quantile, speculation_multiplier, ..DriverConfig::default() };
        let mut sim = Sim {
            now: 0,
            seq: 0,
            queue: BTreeMap::new(),
            driver: Driver::new(config),
            driver_ticks: BTreeSet::new(),
            workers: Vec::new(),
            jobs: BTreeMap::new(),
            fail_pct: rng.next_u64() % 8,
            failed_once: BTreeSet::new(),
            tasks: BTreeMap::new(),
            reported: BTreeMap::new(),
            told_epoch: BTreeMap::new(),
            heard: BTreeMap::new(),
            results_reported: BTreeSet::new(),
            given_up: BTreeMap::new(),
            quiet_at: 0,
            trace: 0xcbf2_9ce4_8422_2325,
            stats: Stats::default(),
            rng,
        };
        for w in 0..workers {
            let slots = 1 + (sim.rng.next_u64() % 3) as u32;
            sim.workers.push(SimWorker {
                machine: None,
                epoch: 0,
                slots,
                disk: BTreeMap::new(),
                executing: BTreeMap::new(),
                paused_until: 0,
                slow_until: 0,
                lag_until: 0,
                lag: 0,
                ticks: BTreeSet::new(),
            });
            let at = (sim.rng.next_u64() % 50) as Millis;
            sim.push(at, Ev::Restart { w });
        }
        let jobs = 1 + sim.rng.next_u64() % 3;
        for job in 1..=jobs {
            let spec = random_job(&mut sim.rng, job, workers);
            let submit_at = (sim.rng.next_u64() % 1_000) as Millis;
            let reference = reference(&spec);
            sim.jobs.insert(job, SimJob { spec, reference, submit_at, cancel_at: None, outcome: None });
            sim.push(submit_at, Ev::Submit(job));
        }
        if sim.rng.next_u64() % 4 == 0 {
            // One more job, cancelled at some point (maybe after it ended).
            let job = jobs + 1;
            let spec = random_job(&mut sim.rng, job, workers);
            let submit_at = (sim.rng.next_u64() % 1_000) as Millis;
            let cancel_at = submit_at + (sim.rng.next_u64() % 300) as Millis;
            let reference = reference(&spec);
            sim.jobs.insert(job, SimJob { spec, reference, submit_at, cancel_at: Some(cancel_at), outcome: None });
            sim.push(submit_at, Ev::Submit(job));
            sim.push(cancel_at, Ev::Cancel(job));
        }
        for f in faults {
            let mut f = f.clone();
            f.worker %= workers;
            sim.quiet_at = sim.quiet_at.max(f.end());
            sim.push(f.at, Ev::Fault(f));
        }
        sim
    }

    fn push(&mut self, at: Millis, ev: Ev) {
        self.seq += 1;
        self.queue.insert((at, self.seq), ev);
    }

    /// A message's delay to or from worker `w`.
    fn delay(&mut self, w: usize) -> Millis {
        let sw = &self.workers[w];
        let extra = if self.now < sw.lag_until { sw.lag } else { 0 };
        1 + (self.rng.next_u64() % (15 + extra as u64)) as Millis
    }

    fn worker_index(worker: WorkerId) -> usize {
        worker as usize - 1
    }

    /// Runs until every job ended and things settled; Err names the first
    /// violation.
    fn run(&mut self) -> Result<(), String> {
        let deadline = self.quiet_at.max(self.jobs.values().map(|j| j.submit_at).max().unwrap_or(0)) + LIVENESS_MS;
        let mut events = 0;
        let mut settled_at = None;
        while let Some(((at, _), ev)) = self.queue.pop_first() {
            events += 1;
            if events > MAX_EVENTS {
                return Err(format!("more than {MAX_EVENTS} events by {at} ms"));
            }
            if at > deadline {
                let open: Vec<_> = self.jobs.iter().filter(|(_, j)| j.outcome.is_none()).map(|(id, _)| self.driver.progress(*id)).collect();
                return Err(format!("liveness: jobs still open {LIVENESS_MS} ms after the faults stopped (at {deadline} ms): {open:?}"));
            }
            self.now = at;
            self.handle(ev)?;
            if self.jobs.values().all(|j| j.outcome.is_some()) && self.now >= self.quiet_at {
                // Let kills and clean-ups land, then stop.
                let settle = *settled_at.get_or_insert(self.now + 2_000);
                if self.now >= settle {
                    break;
                }
            }
        }
        self.final_checks()
    }

    fn handle(&mut self, ev: Ev) -> Result<(), String> {
        match ev {
            Ev::Driver(input) => self.deliver_to_driver(input)?,
            Ev::DriverTick => {
                self.driver_ticks.remove(&self.now);
                self.deliver_to_driver(DriverInput::Tick)?;
            }
            Ev::Submit(job) => {
                let spec = self.jobs[&job].spec.clone();
                self.deliver_to_driver(DriverInput::SubmitJob { job, spec })?;
            }
            Ev::Cancel(job) => self.deliver_to_driver(DriverInput::CancelJob { job })?,
            Ev::Worker { w, epoch, input } => {
                if self.postpone(w, Ev::Worker { w, epoch, input: input.clone() }) {
                    return Ok(());
                }
                self.deliver_to_worker(w, epoch, input);
            }
            Ev::WorkerTick { w, epoch } => {
                if self.postpone(w, Ev::WorkerTick { w, epoch }) {
                    return Ok(());
                }
                self.workers[w].ticks.remove(&self.now);
                self.deliver_to_worker(w, epoch, WorkerInput::Tick);
            }
            Ev::ExecDone { w, epoch, attempt } => {
                if self.postpone(w, Ev::ExecDone { w, epoch, attempt }) {
                    return Ok(());
                }
                if self.workers[w].epoch == epoch {
                    self.exec_done(w, attempt);
                }
            }
            Ev::CancelDone { w, epoch, attempt } => {
                if self.postpone(w, Ev::CancelDone { w, epoch, attempt }) {
                    return Ok(());
                }
                if self.workers[w].epoch == epoch && self.workers[w].executing.remove(&attempt).is_some() {
                    self.deliver_to_worker(w, epoch, WorkerInput::Finished { attempt, outcome: TaskOutcome::Killed });
                }
            }
            Ev::Restart { w } => {
                let sw = &mut self.workers[w];
                sw.epoch += 1;
                sw.disk.clear();
                sw.executing.clear();
                sw.ticks.clear();
                let config = WorkerConfig { id: w as WorkerId + 1, slots: sw.slots, heartbeat_ms: HEARTBEAT_MS };
                sw.machine = Some(Worker::new(config, sw.epoch));
                let epoch = sw.epoch;
                self.deliver_to_worker(w, epoch, WorkerInput::Start);
            }
            Ev::Fault(f) => self.fault(f),
        }
        Ok(())
    }

    /// A paused worker handles nothing until its pause ends.
    fn postpone(&mut self, w: usize, ev: Ev) -> bool {
        let until = self.workers[w].paused_until;
        if self.now < until {
            self.push(until, ev);
            return true;
        }
        false
    }

    fn fault(&mut self, f: Fault) {
        let w = f.worker;
        match f.kind {
            FaultKind::Crash { down } => {
                if self.workers[w].machine.take().is_some() {
                    self.stats.crashes += 1;
                    let sw = &mut self.workers[w];
                    sw.disk.clear();
                    sw.executing.clear();
                    sw.paused_until = 0;
                    let epoch = sw.epoch;
                    self.push(self.now + down, Ev::Restart { w });
                    if self.rng.next_u64() % 2 == 0 {
                        // The driver's adapter sees the connection drop.
                        let at = self.now + self.delay(w);
                        self.push(at, Ev::Driver(DriverInput::WorkerLost { worker: w as WorkerId + 1, epoch }));
                    }
                }
            }
            FaultKind::Pause { for_ms } => {
                let sw = &mut self.workers[w];
                sw.paused_until = sw.paused_until.max(self.now + for_ms);
            }
            FaultKind::Slow { for_ms } => self.workers[w].slow_until = self.now + for_ms,
            FaultKind::Lag { for_ms, extra } => {
                self.workers[w].lag_until = self.now + for_ms;
                self.workers[w].lag = extra;
            }
            FaultKind::LoseOutput => {
                let keys: Vec<_> = self.workers[w].disk.keys().copied().collect();
                if keys.is_empty() || self.workers[w].machine.is_none() {
                    return;
                }
                let (job, shuffle, map_partition) = keys[(self.rng.next_u64() % keys.len() as u64) as usize];
                self.workers[w].disk.remove(&(job, shuffle, map_partition));
                let epoch = self.workers[w].epoch;
                self.deliver_to_worker(w, epoch, WorkerInput::ShuffleLost { job, shuffle, map_partition });
            }
        }
    }

    fn deliver_to_driver(&mut self, input: DriverInput) -> Result<(), String> {
        self.observe(&input);
        let mut out = Vec::new();
        self.driver.step(self.now, input, &mut out);
        let mirrored: Vec<(WorkerId, u64)> = self.heard.iter().filter(|(_, h)| h.2).map(|(w, h)| (*w, h.0)).collect();
        if mirrored != self.driver.live_workers() {
            return Err(format!("the checker's view of live workers {mirrored:?} is not the driver's {:?}", self.driver.live_workers()));
        }
        for e in out {
            self.hash(&format!("{}:{e:?}", self.now));
            self.driver_effect(e)?;
        }
        Ok(())
    }

    /// Mirrors what the driver was told: map outputs reported, worker
    /// incarnations registered, heard from, and (after `worker_timeout_ms`
    /// of silence at one of its steps) given up on.
    fn observe(&mut self, input: &DriverInput) {
        let now = self.now;
        match input {
            DriverInput::RegisterWorker { worker, epoch, .. } => {
                let e = self.told_epoch.entry(*worker).or_default();
                *e = (*e).max(*epoch);
            }
            DriverInput::TaskStatus { worker, epoch, attempt, outcome: TaskOutcome::Success { .. } } => {
                let t = &self.tasks[attempt];
                if matches!(t.output, StageOutput::ShuffleMap { .. }) {
                    self.reported.insert((t.job, t.stage, t.partition, *worker, *epoch), now);
                } else if !self.results_reported.insert((t.job, t.partition)) && self.jobs[&t.job].outcome.is_none() {
                    self.stats.duplicate_results += 1;
                }
            }
            _ => {}
        }
        if let DriverInput::RegisterWorker { worker, epoch, .. } | DriverInput::Heartbeat { worker, epoch } | DriverInput::TaskStatus { worker, epoch, .. } =
            input
        {
            let registers = matches!(input, DriverInput::RegisterWorker { .. });
            match self.heard.get_mut(worker) {
                Some(h) if h.0 == *epoch => *h = (*epoch, now, true),
                Some(h) if registers && h.0 < *epoch => *h = (*epoch, now, true),
                None if registers => {
                    self.heard.insert(*worker, (*epoch, now, true));
                }
                _ => {}
            }
        }
        if let DriverInput::WorkerLost { worker, epoch } = input {
            let alive = self.heard.get_mut(worker).filter(|h| h.0 == *epoch && h.2);
            if let Some(h) = alive {
                h.2 = false;
                self.given_up.entry((*worker, *epoch)).or_default().push(now);
            }
        }
        for (worker, h) in &mut self.heard {
            if h.2 && now - h.1 >= WORKER_TIMEOUT_MS {
                h.2 = false;
                self.given_up.entry((*worker, h.0)).or_default().push(now);
            }
        }
    }

    fn hash(&mut self, s: &str) {
        for b in s.bytes() {
            self.trace = (self.trace ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn driver_effect(&mut self, e: DriverEffect) -> Result<(), String> {
        match e {
            DriverEffect::Launch { worker, task } => {
                self.check_launch(&task)?;
                self.stats.launches += 1;
                let key = (task.job, task.stage, task.stage_attempt, task.partition);
                if self.workers.iter().flat_map(|w| w.executing.values()).any(|(t, _)| (t.job, t.stage, t.stage_attempt, t.partition) == key) {
                    self.stats.speculative += 1;
                }
                self.tasks.insert(task.attempt, task.clone());
                self.send(worker, WorkerInput::Launch(task));
            }
            DriverEffect::Kill { worker, attempt } => {
                self.stats.kills += 1;
                self.send(worker, WorkerInput::Kill(attempt));
            }
            DriverEffect::CleanJob { worker, job } => self.send(worker, WorkerInput::CleanJob(job)),
            DriverEffect::JobSucceeded { job, results } => self.job_ended(job, Ok(results))?,
            DriverEffect::JobFailed { job, reason } => self.job_ended(job, Err(reason))?,
            DriverEffect::Timer { at } => {
                if self.driver_ticks.insert(at) {
                    self.push(at, Ev::DriverTick);
                }
            }
        }
        Ok(())
    }

    /// No task runs before every map output it reads was reported by the
    /// worker incarnation named, which the driver has not heard replaced.
    fn check_launch(&self, task: &TaskDesc) -> Result<(), String> {
        let job = &self.jobs[&task.job];
        if job.outcome.is_some() {
            return Err(format!("attempt {} of job {} launched after the job ended", task.attempt, task.job));
        }
        let spec = job.spec.stages.iter().find(|s| s.id == task.stage).ok_or("unknown stage")?;
        let shuffles: Vec<StageId> = task.inputs.iter().map(|i| i.shuffle).collect();
        if shuffles != spec.parents {
            return Err(format!("stage {} of job {} launched reading {shuffles:?}, its parents are {:?}", task.stage, task.job, spec.parents));
        }
        for input in &task.inputs {
            let parent = job.spec.stages.iter().find(|s| s.id == input.shuffle).expect("a parent");
            if input.maps.len() != parent.partitions as usize {
                return Err(format!(
                    "job {} stage {} partition {} (attempt {}) launched with {} of the {} map outputs of stage {}: {:?}",
                    task.job, task.stage, task.partition, task.attempt, input.maps.len(), parent.partitions, parent.id, input.maps
                ));
            }
            for (m, loc) in input.maps.iter().enumerate() {
                if loc.map_partition != m as u32 {
                    return Err(format!("job {} stage {}: map outputs out of order: {:?}", task.job, task.stage, input.maps));
                }
                let Some(reported) = self.reported.get(&(task.job, input.shuffle, m as u32, loc.worker, loc.worker_epoch)) else {
                    return Err(format!(
                        "job {} stage {} partition {} reads map {m} of stage {} at worker {} epoch {}, which never reported it",
                        task.job, task.stage, task.partition, input.shuffle, loc.worker, loc.worker_epoch
                    ));
                };
                let gave_up = self.given_up.get(&(loc.worker, loc.worker_epoch)).and_then(|t| t.iter().find(|t| *t >= reported));
                if let Some(t) = gave_up {
                    return Err(format!(
                        "job {} stage {} partition {} (attempt {}) reads map {m} of stage {} at worker {} epoch {}, reported at {reported} ms, but the driver gave up on that worker at {t} ms",
                        task.job, task.stage, task.partition, task.attempt, input.shuffle, loc.worker, loc.worker_epoch
                    ));
                }
                let told = self.told_epoch.get(&loc.worker).copied().unwrap_or(0);
                if told != loc.worker_epoch {
                    return Err(format!(
                        "job {} stage {} partition {} (attempt {}) reads map {m} of stage {} at worker {} epoch {}, but the driver knew epoch {told}",
                        task.job, task.stage, task.partition, task.attempt, input.shuffle, loc.worker, loc.worker_epoch
                    ));
                }
            }
        }
        Ok(())
    }

    fn job_ended(&mut self, job: JobId, outcome: Result<Vec<Vec<u8>>, String>) -> Result<(), String> {
        let j = self.jobs.get_mut(&job).ok_or("an unknown job ended")?;
        if j.outcome.is_some() {
            return Err(format!("job {job} ended twice: {:?} then {outcome:?}", j.outcome));
        }
        let cancelled = j.cancel_at.is_some_and(|t| t <= self.now);
        match &outcome {
            Err(reason) if cancelled && reason == "cancelled" => {}
            Err(reason) => return Err(format!("job {job} failed: {reason}")),
            Ok(results) => {
                let partitions: Vec<String> =
                    results.iter().map(|r| String::from_utf8_lossy(r).split(':').next().unwrap_or("").to_string()).collect();
                let expected: Vec<String> = (0..j.reference.len()).map(|p| p.to_string()).collect();
                if partitions != expected {
                    return Err(format!("job {job}: result partitions {partitions:?}, expected each of 0..{} once", j.reference.len()));
                }
                if *results != j.reference {
                    let show = |v: &Vec<Vec<u8>>| v.iter().map(|r| String::from_utf8_lossy(r).into_owned()).collect::<Vec<_>>();
                    return Err(format!("job {job}: results {:?}, reference {:?}", show(results), show(&j.reference)));
                }
            }
        }
        j.outcome = Some(outcome);
        Ok(())
    }

    /// Sends to the worker's current incarnation; lost if it is down or
    /// restarts before delivery.
    fn send(&mut self, worker: WorkerId, input: WorkerInput) {
        let w = Self::worker_index(worker);
        if self.workers[w].machine.is_none() {
            return;
        }
        let (epoch, at) = (self.workers[w].epoch, self.now + self.delay(w));
        self.push(at, Ev::Worker { w, epoch, input });
    }

    fn deliver_to_worker(&mut self, w: usize, epoch: u64, input: WorkerInput) {
        let sw = &mut self.workers[w];
        let Some(machine) = sw.machine.as_mut().filter(|_| sw.epoch == epoch) else { return };
        let mut out = Vec::new();
        machine.step(self.now, input, &mut out);
        for e in out {
            match e {
                WorkerEffect::ToDriver(input) => {
                    let at = self.now + self.delay(w);
                    self.push(at, Ev::Driver(input));
                }
                WorkerEffect::Run(task) => {
                    // Durations with a tail: one task in ten is a straggler.
                    let straggler = if self.rng.next_u64() % 10 == 0 { 2 + (self.rng.next_u64() % 8) as Millis } else { 1 };
                    let slow = if self.now < self.workers[w].slow_until { 30 } else { straggler };
                    let at = self.now + (20 + (self.rng.next_u64() % 100) as Millis) * slow;
                    self.workers[w].executing.insert(task.attempt, (task.clone(), false));
                    self.push(at, Ev::ExecDone { w, epoch, attempt: task.attempt });
                }
                WorkerEffect::Cancel(attempt) => {
                    // Cancellation is cooperative: the task stops a little
                    // later, or finishes first.
                    if let Some((_, cancelling)) = self.workers[w].executing.get_mut(&attempt) {
                        *cancelling = true;
                        let at = self.now + (self.rng.next_u64() % 100) as Millis;
                        self.push(at, Ev::CancelDone { w, epoch, attempt });
                    }
                }
                WorkerEffect::DeleteShuffle(job) => self.workers[w].disk.retain(|(j, _, _), _| *j != job),
                WorkerEffect::Timer { at } => {
                    if self.workers[w].ticks.insert(at) {
                        self.push(at, Ev::WorkerTick { w, epoch });
                    }
                }
            }
        }
    }

    /// The executor finishes a task: it fetches its inputs now (so a map
    /// output lost while it ran is a fetch failure), maybe fails, else
    /// writes its output and reports.
    fn exec_done(&mut self, w: usize, attempt: AttemptId) {
        let Some((task, _)) = self.workers[w].executing.remove(&attempt) else { return };
        let spec = self.jobs[&task.job].spec.stages.iter().find(|s| s.id == task.stage).expect("a stage").clone();
        let outcome = match self.fetch(&task) {
            Err((shuffle, map_partition, worker)) => {
                self.stats.fetch_failures += 1;
                TaskOutcome::FetchFailed { shuffle, map_partition, worker }
            }
            Ok(_) if self.rng.next_u64() % 100 < self.fail_pct && self.failed_once.insert((task.job, task.stage, task.partition)) => {
                self.stats.injected_failures += 1;
                TaskOutcome::Failed { reason: format!("injected failure of attempt {attempt}") }
            }
            Ok(input) => {
                let (buckets, result) = compute(salt(&task.payload), &spec, task.partition, input);
                if let Some(b) = buckets {
                    self.workers[w].disk.insert((task.job, task.stage, task.partition), b);
                }
                TaskOutcome::Success { result }
            }
        };
        let epoch = self.workers[w].epoch;
        self.deliver_to_worker(w, epoch, WorkerInput::Finished { attempt, outcome });
    }

    /// Reads the task's bucket of every map output it names, from the
    /// worker incarnation named, if that one is up, not paused, and still
    /// holds it.
    #[allow(clippy::type_complexity)]
    fn fetch(&self, task: &TaskDesc) -> Result<Option<Vec<u64>>, (StageId, u32, WorkerId)> {
        if task.inputs.is_empty() {
            return Ok(None);
        }
        let mut numbers = Vec::new();
        for input in &task.inputs {
            for loc in &input.maps {
                let sw = &self.workers[Self::worker_index(loc.worker)];
                let serves = sw.epoch == loc.worker_epoch
                    && self.now >= sw.paused_until
                    && sw.machine.as_ref().is_some_and(|m| m.has_shuffle(task.job, input.shuffle, loc.map_partition));
                let data = sw.disk.get(&(task.job, input.shuffle, loc.map_partition)).filter(|_| serves);
                let Some(buckets) = data else { return Err((input.shuffle, loc.map_partition, loc.worker)) };
                numbers.extend(buckets.get(task.partition as usize).cloned().unwrap_or_default());
            }
        }
        Ok(Some(numbers))
    }

    fn final_checks(&self) -> Result<(), String> {
        for (id, j) in &self.jobs {
            if j.outcome.is_none() {
                return Err(format!("job {id} never ended: {:?}", self.driver.progress(*id)));
            }
        }
        for (w, sw) in self.workers.iter().enumerate() {
            if let Some((key, _)) = sw.disk.iter().next() {
                return Err(format!("worker {} still holds shuffle output {key:?} of an ended job", w + 1));
            }
            if !sw.executing.is_empty() {
                return Err(format!("worker {} still runs {:?} after every job ended", w + 1, sw.executing.keys()));
            }
        }
        Ok(())
    }
}

/// Runs one scenario; Err describes the first violation.
fn simulate(seed: u64, workers: usize, faults: &[Fault]) -> Result<(Stats, u64), String> {
    let mut sim = Sim::new(seed, workers, faults);
    sim.run().map_err(|e| format!("seed {seed}, {workers} workers, faults {faults:?}: {e}"))?;
    Ok((sim.stats, sim.trace))
}

/// Faults drawn from the seed, for the seed sweep.
fn faults_from(seed: u64) -> (usize, Vec<Fault>) {
    let mut rng = Rng::new(seed ^ 0x5eed);
    let workers = 3 + (rng.next_u64() % 3) as usize;
    let n = rng.next_u64() % 4;
    let faults = (0..n)
        .map(|_| {
            let at = (rng.next_u64() % 2_500) as Millis;
            let worker = (rng.next_u64() % workers as u64) as usize;
            let d = 10 + (rng.next_u64() % 2_500) as Millis;
            let kind = match rng.next_u64() % 6 {
                0 => FaultKind::Crash { down: d },
                1 => FaultKind::Pause { for_ms: d.max(200) },
                2 => FaultKind::Slow { for_ms: d.max(100) },
                3 | 4 => FaultKind::Lag { for_ms: d.max(100), extra: (d * 7) % 1_500 },
                _ => FaultKind::LoseOutput,
            };
            Fault { at, worker, kind }
        })
        .collect();
    (workers, faults)
}

fn fault_strategy() -> impl Strategy<Value = Fault> {
    let kind = prop_oneof![
        2 => (10..2_500i64).prop_map(|down| FaultKind::Crash { down }),
        2 => (200..2_500i64).prop_map(|for_ms| FaultKind::Pause { for_ms }),
        1 => (100..3_000i64).prop_map(|for_ms| FaultKind::Slow { for_ms }),
        1 => Just(FaultKind::LoseOutput),
        2 => (100..2_500i64, 0..1_500i64).prop_map(|(for_ms, extra)| FaultKind::Lag { for_ms, extra }),
    ];
    (0..2_500i64, 0..5usize, kind).prop_map(|(at, worker, kind)| Fault { at, worker, kind })
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256)
}

static CASE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn jobs_finish_with_the_reference_answer_whatever_the_faults(
        seed in any::<u64>(),
        workers in 3..=5usize,
        faults in proptest::collection::vec(fault_strategy(), 0..=3),
    ) {
        let case = CASE.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        if let Err(e) = simulate(seed, workers, &faults) {
            // The first failure's case number shows how soon a bug is found.
            eprintln!("case {case} failed: {e}");
            prop_assert!(false, "{}", e);
        }
    }
}

#[test]
fn a_seed_replays_to_the_same_effects() {
    for seed in 0..20 {
        let (workers, faults) = faults_from(seed);
        let a = simulate(seed, workers, &faults).unwrap();
        let b = simulate(seed, workers, &faults).unwrap();
        assert_eq!(a.1, b.1, "seed {seed}");
    }
}

/// The faults do happen: over a few seeds the sim sees crashes, fetch
/// failures, injected failures and speculative copies.
#[test]
fn the_faults_exercise_every_recovery_path() {
    let mut total = Stats::default();
    for seed in 0..200 {
        let (workers, faults) = faults_from(seed);
        let (s, _) = simulate(seed, workers, &faults).unwrap();
        total.launches += s.launches;
        total.fetch_failures += s.fetch_failures;
        total.injected_failures += s.injected_failures;
        total.speculative += s.speculative;
        total.kills += s.kills;
        total.crashes += s.crashes;
        total.duplicate_results += s.duplicate_results;
    }
    eprintln!("{total:?}");
    assert!(total.crashes > 10 && total.fetch_failures > 10 && total.injected_failures > 10 && total.kills > 10, "{total:?}");
}

#[test]
#[ignore = "a seed sweep: BATCH_SIM_SEEDS=N"]
fn sweep() {
    let n: u64 = std::env::var("BATCH_SIM_SEEDS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000);
    let mut failed = 0;
    for seed in 0..n {
        let (workers, faults) = faults_from(seed);
        if let Err(e) = simulate(seed, workers, &faults) {
            failed += 1;
            println!("FAIL {e}");
        }
    }
    println!("{failed} of {n} seeds failed");
    assert_eq!(failed, 0);
}
