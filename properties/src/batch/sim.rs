//! A batch driver and 3–5 workers under a seeded in-memory network
//! (raft-rs's test style), generic over what the tasks compute.
//!
//! Every message takes a random delay (so messages overtake each other),
//! tasks run for a random time on an [`Executor`], and faults strike: a
//! worker crashes (losing its shuffle outputs and running tasks) and
//! restarts with a new epoch, pauses (stops answering, past the driver's
//! timeout or not, then resumes with the same epoch), runs slowly
//! (speculation), loses one shuffle file, sits behind a congested link; the
//! connection between the driver and a worker is cut (messages wait, or the
//! connection breaks: messages in flight are lost, the driver's adapter
//! reports `WorkerLost`, the worker reconnects when it heals); two workers
//! cannot reach each other (their fetches fail); tasks fail at random (at
//! most once per partition, below `task_max_failures`).
//!
//! Reducers really fetch: a task reads each block from the worker
//! incarnation its `TaskDesc::inputs` name, when it finishes (so an output
//! lost while it ran is a fetch failure), and the fetch fails if that
//! incarnation is gone, paused, unreachable from the reducer's worker, or no
//! longer holds the output.
//!
//! Checked as it runs and at the end:
//! - every launch's inputs name, for each parent, every map partition in
//!   order, each at a worker incarnation that reported that output and that
//!   the driver has neither seen replaced nor given up on since (the
//!   checker mirrors the driver's view of live workers and checks the
//!   mirror against `Driver::live_workers` at every step);
//! - every job that is not cancelled succeeds once, with one result per
//!   result partition, each the result some task of that very partition
//!   reported, and the job's own check (the reference answer) passes;
//! - liveness: once faults stop, every job ends within [`LIVENESS_MS`];
//! - afterwards no worker holds a finished job's shuffle output or runs a
//!   task (a `CleanJob` lost with a broken connection is sent again when
//!   the worker re-registers);
//! - the digest of the driver's effects identifies the run (same seed,
//!   same digest).
//!
//! `properties/tests/batch_sim.rs` drives it with a fake executor whose
//! answers are known; the batch chaos suite ([`super::chaos`]) with the
//! engine's real tasks.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use millrace_core::Millis;
use millrace_core::batch::{
    AttemptId, Driver, DriverConfig, DriverEffect, DriverInput, JobId, JobSpec, MapLocation, StageId, StageOutput, TaskDesc, TaskOutcome, Worker,
    WorkerConfig, WorkerEffect, WorkerId, WorkerInput,
};
use millrace_core::rng::Rng;
use millrace_engine::job::Executed;

pub const HEARTBEAT_MS: Millis = 100;
pub const WORKER_TIMEOUT_MS: Millis = 1_000;
/// After the last fault ends, every job must end within this.
pub const LIVENESS_MS: Millis = 30_000;
const MAX_EVENTS: usize = 2_000_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultKind {
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
    /// The connection between the driver and the worker is cut for
    /// `for_ms`. With `broken` false the messages wait and arrive when it
    /// heals (TCP retransmitting); with `broken` true the connection
    /// drops: messages in flight and sent meanwhile are lost, the driver's
    /// adapter reports `WorkerLost`, and the worker gets `Reconnect` when
    /// the cut heals.
    Cut { for_ms: Millis, broken: bool },
    /// The worker and worker `other` cannot reach each other: fetches
    /// between them fail.
    Split { other: usize, for_ms: Millis },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    pub at: Millis,
    /// An index (taken modulo the number of workers): worker id `worker + 1`.
    pub worker: usize,
    pub kind: FaultKind,
}

impl Fault {
    pub fn end(&self) -> Millis {
        self.at
            + match self.kind {
                FaultKind::Crash { down } => down,
                FaultKind::Pause { for_ms }
                | FaultKind::Slow { for_ms }
                | FaultKind::Lag { for_ms, .. }
                | FaultKind::Cut { for_ms, .. }
                | FaultKind::Split { for_ms, .. } => for_ms,
                FaultKind::LoseOutput => 0,
            }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let w = self.worker + 1;
        write!(f, "at {} ms: ", self.at)?;
        match self.kind {
            FaultKind::Crash { down } => write!(f, "worker {w} crashes, restarts {down} ms later"),
            FaultKind::Pause { for_ms } => write!(f, "worker {w} pauses for {for_ms} ms"),
            FaultKind::Slow { for_ms } => write!(f, "worker {w} runs tasks 30x slower for {for_ms} ms"),
            FaultKind::LoseOutput => write!(f, "worker {w} loses a shuffle file"),
            FaultKind::Lag { for_ms, extra } => write!(f, "worker {w}'s link lags up to {extra} ms more for {for_ms} ms"),
            FaultKind::Cut { for_ms, broken: false } => write!(f, "driver-worker {w} cut for {for_ms} ms (messages wait)"),
            FaultKind::Cut { for_ms, broken: true } => write!(f, "driver-worker {w} connection broken for {for_ms} ms"),
            FaultKind::Split { other, for_ms } => write!(f, "workers {w} and {} cannot reach each other for {for_ms} ms", other + 1),
        }
    }
}

/// What runs a task. `fetch(shuffle, location, reduce)` reads the block of
/// reduce partition `reduce` of one map output the way the worker running
/// the task would, or `None` if it cannot (a fetch failure).
pub trait Executor {
    fn execute(&mut self, task: &TaskDesc, fetch: &dyn Fn(StageId, &MapLocation, u32) -> Option<Vec<u8>>) -> Executed;
}

/// A job's own check of its results (one per result partition, in order).
pub type Check = Box<dyn Fn(&[Vec<u8>]) -> Result<(), String>>;

#[derive(Debug)]
enum Ev {
    /// A message to the driver; `from`: the worker whose connection it
    /// travels on, and that connection's generation when it was sent.
    Driver {
        input: DriverInput,
        from: Option<(usize, u64)>,
    },
    DriverTick,
    /// A message from the driver, on the connection of generation `link`.
    Worker {
        w: usize,
        epoch: u64,
        link: u64,
        input: WorkerInput,
    },
    /// Something the worker process itself notices (a reconnection).
    Local {
        w: usize,
        epoch: u64,
        input: WorkerInput,
    },
    WorkerTick {
        w: usize,
        epoch: u64,
    },
    ExecDone {
        w: usize,
        epoch: u64,
        attempt: AttemptId,
    },
    /// A cancelled task stops (unless it finished first).
    CancelDone {
        w: usize,
        epoch: u64,
        attempt: AttemptId,
    },
    Fault(Fault),
    Heal {
        w: usize,
    },
    Restart {
        w: usize,
    },
    Submit(JobId),
    Cancel(JobId),
}

struct SimWorker {
    machine: Option<Worker>,
    epoch: u64,
    slots: u32,
    /// This incarnation's shuffle files: (job, stage, map partition) ->
    /// one block per reduce partition.
    disk: BTreeMap<(JobId, StageId, u32), Vec<Vec<u8>>>,
    /// The executor pool: tasks running, and whether a cancel is under way.
    executing: BTreeMap<AttemptId, (TaskDesc, bool)>,
    paused_until: Millis,
    slow_until: Millis,
    lag_until: Millis,
    lag: Millis,
    /// The driver connection: messages wait until `hold_until`; it is
    /// broken until `broken_until`; `link` counts connections, so a message
    /// sent on a broken one is not delivered on the next.
    hold_until: Millis,
    broken_until: Millis,
    link: u64,
    ticks: BTreeSet<Millis>,
}

struct SimJob {
    spec: JobSpec,
    cancel_at: Option<Millis>,
    check: Check,
    outcome: Option<Result<Vec<Vec<u8>>, String>>,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub launches: u64,
    pub fetch_failures: u64,
    pub injected_failures: u64,
    pub speculative: u64,
    pub kills: u64,
    pub crashes: u64,
    /// Second successes of a result partition reaching the driver while
    /// its job runs (the commit coordinator must refuse them).
    pub duplicate_results: u64,
    /// Messages lost with a broken connection.
    pub dropped: u64,
    /// Fetches refused between workers that could not reach each other.
    pub split_fetches: u64,
    /// `CleanJob`s lost with a broken connection (the driver sends them
    /// again when the worker re-registers).
    pub lost_cleanups: u64,
}

impl Stats {
    pub fn add(&mut self, o: &Stats) {
        self.launches += o.launches;
        self.fetch_failures += o.fetch_failures;
        self.injected_failures += o.injected_failures;
        self.speculative += o.speculative;
        self.kills += o.kills;
        self.crashes += o.crashes;
        self.duplicate_results += o.duplicate_results;
        self.dropped += o.dropped;
        self.split_fetches += o.split_fetches;
        self.lost_cleanups += o.lost_cleanups;
    }
}

pub struct Sim<E> {
    now: Millis,
    rng: Rng,
    seq: u64,
    queue: BTreeMap<(Millis, u64), Ev>,
    driver: Driver,
    driver_ticks: BTreeSet<Millis>,
    workers: Vec<SimWorker>,
    executor: E,
    jobs: BTreeMap<JobId, SimJob>,
    last_submit: Millis,
    fail_pct: u64,
    failed_once: BTreeSet<(JobId, StageId, u32)>,
    /// Pairs of worker indices (lower first) that cannot reach each other
    /// until then.
    splits: BTreeMap<(usize, usize), Millis>,
    /// (worker index, job) whose `CleanJob` a broken connection lost.
    lost_cleanups: BTreeSet<(usize, JobId)>,
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
    /// Every result a task reported to the driver, by (job, partition).
    result_bytes: BTreeMap<(JobId, u32), Vec<Vec<u8>>>,
    given_up: BTreeMap<(WorkerId, u64), Vec<Millis>>,
    quiet_at: Millis,
    trace: u64,
    history: Option<Vec<String>>,
    stats: Stats,
}

fn index(worker: WorkerId) -> usize {
    worker as usize - 1
}

impl<E: Executor> Sim<E> {
    /// A driver and `workers` workers (1–3 slots each, started within the
    /// first 50 ms), speculation as Spark's defaults or more eager, a
    /// random rate of injected task failures. Add jobs and faults, then
    /// [`Sim::run`].
    pub fn executor(&self) -> &E {
        &self.executor
    }

    pub fn new(seed: u64, workers: usize, executor: E) -> Self {
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
            executor,
            jobs: BTreeMap::new(),
            last_submit: 0,
            fail_pct: rng.next_u64() % 8,
            failed_once: BTreeSet::new(),
            splits: BTreeMap::new(),
            lost_cleanups: BTreeSet::new(),
            tasks: BTreeMap::new(),
            reported: BTreeMap::new(),
            told_epoch: BTreeMap::new(),
            heard: BTreeMap::new(),
            results_reported: BTreeSet::new(),
            result_bytes: BTreeMap::new(),
            given_up: BTreeMap::new(),
            quiet_at: 0,
            trace: 0xcbf2_9ce4_8422_2325,
            history: None,
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
                hold_until: 0,
                broken_until: 0,
                link: 0,
                ticks: BTreeSet::new(),
            });
            let at = (sim.rng.next_u64() % 50) as Millis;
            sim.push(at, Ev::Restart { w });
        }
        sim
    }

    /// The scenario's generator, for drawing jobs and their times in turn.
    pub fn rng(&mut self) -> &mut Rng {
        &mut self.rng
    }

    /// Slots of each worker, in order.
    pub fn slots(&self) -> Vec<u32> {
        self.workers.iter().map(|w| w.slots).collect()
    }

    /// The driver's settings.
    pub fn config(&self) -> &DriverConfig {
        self.driver.config()
    }

    /// The percentage of task runs that fail (once per partition at most).
    pub fn fail_pct(&self) -> u64 {
        self.fail_pct
    }

    /// Submits `spec` at `submit_at` (and cancels it at `cancel_at`);
    /// `check` judges its results when it succeeds.
    pub fn add_job(&mut self, job: JobId, spec: JobSpec, submit_at: Millis, cancel_at: Option<Millis>, check: Check) {
        self.jobs.insert(job, SimJob { spec, cancel_at, check, outcome: None });
        self.last_submit = self.last_submit.max(submit_at);
        self.push(submit_at, Ev::Submit(job));
        if let Some(at) = cancel_at {
            self.push(at, Ev::Cancel(job));
        }
    }

    pub fn add_faults(&mut self, faults: &[Fault]) {
        let n = self.workers.len();
        for f in faults {
            let mut f = f.clone();
            f.worker %= n;
            if let FaultKind::Split { other, .. } = &mut f.kind {
                *other %= n;
            }
            self.quiet_at = self.quiet_at.max(f.end());
            self.push(f.at, Ev::Fault(f));
        }
    }

    /// Keeps a readable line per event ([`Sim::history`]).
    pub fn record(&mut self) {
        self.history = Some(Vec::new());
    }

    pub fn history(&self) -> &[String] {
        self.history.as_deref().unwrap_or_default()
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// A digest of every driver effect with its time.
    pub fn digest(&self) -> u64 {
        self.trace
    }

    /// Simulated time reached.
    pub fn now(&self) -> Millis {
        self.now
    }

    fn push(&mut self, at: Millis, ev: Ev) {
        self.seq += 1;
        self.queue.insert((at, self.seq), ev);
    }

    fn log(&mut self, line: impl FnOnce() -> String) {
        if let Some(h) = &mut self.history {
            h.push(format!("{:>7} {}", self.now, line()));
        }
    }

    /// A message's delay to or from worker `w`.
    fn delay(&mut self, w: usize) -> Millis {
        let sw = &self.workers[w];
        let extra = if self.now < sw.lag_until { sw.lag } else { 0 };
        1 + (self.rng.next_u64() % (15 + extra as u64)) as Millis
    }

    /// Runs until every job ended and things settled; Err names the first
    /// violation.
    pub fn run(&mut self) -> Result<(), String> {
        let deadline = self.quiet_at.max(self.last_submit) + LIVENESS_MS;
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
            Ev::Driver { input, from } => {
                if let Some((w, link)) = from {
                    let sw = &self.workers[w];
                    if link != sw.link || self.now < sw.broken_until {
                        self.stats.dropped += 1;
                        return Ok(());
                    }
                    if self.now < sw.hold_until {
                        let until = sw.hold_until;
                        self.push(until, Ev::Driver { input, from });
                        return Ok(());
                    }
                }
                self.deliver_to_driver(input)?
            }
            Ev::DriverTick => {
                self.driver_ticks.remove(&self.now);
                self.deliver_to_driver(DriverInput::Tick)?;
            }
            Ev::Submit(job) => {
                let spec = self.jobs[&job].spec.clone();
                self.deliver_to_driver(DriverInput::SubmitJob { job, spec })?;
            }
            Ev::Cancel(job) => self.deliver_to_driver(DriverInput::CancelJob { job })?,
            Ev::Worker { w, epoch, link, input } => {
                let sw = &self.workers[w];
                if link != sw.link || self.now < sw.broken_until {
                    self.stats.dropped += 1;
                    if let WorkerInput::CleanJob(job) = input {
                        self.lost_cleanups.insert((w, job));
                    }
                    return Ok(());
                }
                if self.now < sw.hold_until {
                    let until = sw.hold_until;
                    self.push(until, Ev::Worker { w, epoch, link, input });
                    return Ok(());
                }
                if self.postpone(w, Ev::Worker { w, epoch, link, input: input.clone() }) {
                    return Ok(());
                }
                self.deliver_to_worker(w, epoch, input);
            }
            Ev::Local { w, epoch, input } => {
                if self.postpone(w, Ev::Local { w, epoch, input: input.clone() }) {
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
                self.log(|| format!("worker {} starts, epoch {epoch}", w + 1));
                self.deliver_to_worker(w, epoch, WorkerInput::Start);
            }
            Ev::Heal { w } => {
                // A broken connection is re-established: the worker
                // announces itself again (same epoch: nothing lost there).
                let sw = &self.workers[w];
                if self.now >= sw.broken_until && sw.machine.is_some() {
                    let epoch = sw.epoch;
                    self.log(|| format!("worker {} reconnects", w + 1));
                    self.push(self.now, Ev::Local { w, epoch, input: WorkerInput::Reconnect });
                }
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
        self.log(|| format!("fault: {f}"));
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
                        self.push(at, Ev::Driver { input: DriverInput::WorkerLost { worker: w as WorkerId + 1, epoch }, from: None });
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
            FaultKind::Cut { for_ms, broken: false } => {
                let sw = &mut self.workers[w];
                sw.hold_until = sw.hold_until.max(self.now + for_ms);
            }
            FaultKind::Cut { for_ms, broken: true } => {
                let sw = &mut self.workers[w];
                let was_up = self.now >= sw.broken_until;
                sw.broken_until = sw.broken_until.max(self.now + for_ms);
                let until = sw.broken_until;
                if was_up {
                    sw.link += 1;
                    let epoch = sw.epoch;
                    if sw.machine.is_some() {
                        // The driver's adapter sees the connection drop.
                        let at = self.now + self.delay(w);
                        self.push(at, Ev::Driver { input: DriverInput::WorkerLost { worker: w as WorkerId + 1, epoch }, from: None });
                    }
                }
                self.push(until, Ev::Heal { w });
            }
            FaultKind::Split { other, for_ms } => {
                if other != w {
                    let key = (w.min(other), w.max(other));
                    let until = self.splits.get(&key).copied().unwrap_or(0).max(self.now + for_ms);
                    self.splits.insert(key, until);
                }
            }
        }
    }

    fn deliver_to_driver(&mut self, input: DriverInput) -> Result<(), String> {
        self.observe(&input);
        if self.history.is_some() {
            let line = format!("driver <- {}", show_input(&input));
            self.log(|| line);
        }
        let mut out = Vec::new();
        self.driver.step(self.now, input, &mut out);
        let mirrored: Vec<(WorkerId, u64)> = self.heard.iter().filter(|(_, h)| h.2).map(|(w, h)| (*w, h.0)).collect();
        if mirrored != self.driver.live_workers() {
            return Err(format!("the checker's view of live workers {mirrored:?} is not the driver's {:?}", self.driver.live_workers()));
        }
        for e in out {
            self.hash(&format!("{}:{e:?}", self.now));
            if self.history.is_some() && !matches!(e, DriverEffect::Timer { .. }) {
                let line = format!("driver -> {}", show_effect(&e));
                self.log(|| line);
            }
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
            DriverInput::TaskStatus { worker, epoch, attempt, outcome: TaskOutcome::Success { result } } => {
                let t = &self.tasks[attempt];
                if matches!(t.output, StageOutput::ShuffleMap { .. }) {
                    self.reported.insert((t.job, t.stage, t.partition, *worker, *epoch), now);
                } else {
                    self.result_bytes.entry((t.job, t.partition)).or_default().push(result.clone().unwrap_or_default());
                    if !self.results_reported.insert((t.job, t.partition)) && self.jobs[&t.job].outcome.is_none() {
                        self.stats.duplicate_results += 1;
                    }
                }
            }
            _ => {}
        }
        if let DriverInput::RegisterWorker { worker, epoch, .. }
        | DriverInput::Heartbeat { worker, epoch }
        | DriverInput::TaskStatus { worker, epoch, .. } = input
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
                    task.job,
                    task.stage,
                    task.partition,
                    task.attempt,
                    input.maps.len(),
                    parent.partitions,
                    parent.id,
                    input.maps
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
        let j = self.jobs.get(&job).ok_or("an unknown job ended")?;
        if let Some(before) = &j.outcome {
            let show = |o: &Result<Vec<Vec<u8>>, String>| match o {
                Ok(r) => format!("success with {} results", r.len()),
                Err(e) => format!("failure: {e}"),
            };
            return Err(format!("job {job} ended twice: {} then {}", show(before), show(&outcome)));
        }
        let cancelled = j.cancel_at.is_some_and(|t| t <= self.now);
        match &outcome {
            Err(reason) if cancelled && reason == "cancelled" => {}
            Err(reason) => return Err(format!("job {job} failed: {reason}")),
            Ok(results) => {
                let partitions = j.spec.stages.last().map_or(0, |s| s.partitions) as usize;
                if results.len() != partitions {
                    return Err(format!("job {job}: {} results for {partitions} result partitions", results.len()));
                }
                // Each partition's result is one a task of that partition
                // reported (a partition never committed would be empty).
                for (p, r) in results.iter().enumerate() {
                    let reported = self.result_bytes.get(&(job, p as u32)).is_some_and(|all| all.contains(r));
                    if !reported {
                        return Err(format!("job {job}: the result of partition {p} is not one any task of partition {p} reported"));
                    }
                }
                (j.check)(results).map_err(|e| format!("job {job}: {e}"))?;
            }
        }
        self.jobs.get_mut(&job).expect("known").outcome = Some(outcome);
        Ok(())
    }

    /// Sends to the worker's current incarnation; lost if it is down or
    /// restarts before delivery, or with a broken connection.
    fn send(&mut self, worker: WorkerId, input: WorkerInput) {
        let w = index(worker);
        if self.workers[w].machine.is_none() {
            return;
        }
        if self.now < self.workers[w].broken_until {
            self.stats.dropped += 1;
            if let WorkerInput::CleanJob(job) = input {
                self.lost_cleanups.insert((w, job));
            }
            return;
        }
        let (epoch, link, at) = (self.workers[w].epoch, self.workers[w].link, self.now + self.delay(w));
        self.push(at, Ev::Worker { w, epoch, link, input });
    }

    fn deliver_to_worker(&mut self, w: usize, epoch: u64, input: WorkerInput) {
        let sw = &mut self.workers[w];
        let Some(machine) = sw.machine.as_mut().filter(|_| sw.epoch == epoch) else { return };
        let mut out = Vec::new();
        machine.step(self.now, input, &mut out);
        for e in out {
            match e {
                WorkerEffect::ToDriver(input) => {
                    if self.now < self.workers[w].broken_until {
                        self.stats.dropped += 1;
                        continue;
                    }
                    let at = self.now + self.delay(w);
                    let link = self.workers[w].link;
                    self.push(at, Ev::Driver { input, from: Some((w, link)) });
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
        let refused = std::cell::Cell::new(0u64);
        let executed = {
            let (workers, now) = (&self.workers, self.now);
            let splits = &self.splits;
            let fetch = |shuffle: StageId, loc: &MapLocation, reduce: u32| -> Option<Vec<u8>> {
                let holder = index(loc.worker);
                let sw = workers.get(holder)?;
                let reachable = holder == w || splits.get(&(w.min(holder), w.max(holder))).is_none_or(|until| now >= *until);
                if !reachable {
                    refused.set(refused.get() + 1);
                    return None;
                }
                let serves = sw.epoch == loc.worker_epoch
                    && now >= sw.paused_until
                    && sw.machine.as_ref().is_some_and(|m| m.has_shuffle(task.job, shuffle, loc.map_partition));
                let blocks = sw.disk.get(&(task.job, shuffle, loc.map_partition)).filter(|_| serves)?;
                blocks.get(reduce as usize).cloned()
            };
            self.executor.execute(&task, &fetch)
        };
        self.stats.split_fetches += refused.get();
        let Executed { outcome, blocks } = executed;
        let outcome = match outcome {
            TaskOutcome::FetchFailed { .. } => {
                self.stats.fetch_failures += 1;
                outcome
            }
            TaskOutcome::Success { .. }
                if self.rng.next_u64() % 100 < self.fail_pct && self.failed_once.insert((task.job, task.stage, task.partition)) =>
            {
                self.stats.injected_failures += 1;
                TaskOutcome::Failed { reason: format!("injected failure of attempt {attempt}") }
            }
            TaskOutcome::Success { .. } => {
                if let Some(b) = blocks {
                    self.workers[w].disk.insert((task.job, task.stage, task.partition), b);
                }
                outcome
            }
            other => other,
        };
        if self.history.is_some() {
            let line = format!("worker {} finished attempt {attempt}: {}", w + 1, show_outcome(&outcome));
            self.log(|| line);
        }
        let epoch = self.workers[w].epoch;
        self.deliver_to_worker(w, epoch, WorkerInput::Finished { attempt, outcome });
    }

    fn final_checks(&mut self) -> Result<(), String> {
        for (id, j) in &self.jobs {
            if j.outcome.is_none() {
                return Err(format!("job {id} never ended: {:?}", self.driver.progress(*id)));
            }
        }
        for (w, sw) in self.workers.iter().enumerate() {
            if let Some((key, _)) = sw.disk.iter().next() {
                return Err(format!("worker {} still holds shuffle output {key:?} of an ended job", w + 1));
            }
            if let Some((a, _)) = sw.executing.iter().next() {
                return Err(format!("worker {} still runs attempt {a} after every job ended", w + 1));
            }
        }
        self.stats.lost_cleanups = self.lost_cleanups.len() as u64;
        Ok(())
    }
}

fn show_input(input: &DriverInput) -> String {
    match input {
        DriverInput::SubmitJob { job, spec } => {
            let stages: Vec<String> = spec.stages.iter().map(|s| format!("{}x{}<-{:?}", s.id, s.partitions, s.parents)).collect();
            format!("submit job {job}: stages {}", stages.join(" "))
        }
        DriverInput::TaskStatus { worker, epoch, attempt, outcome } => {
            format!("status of attempt {attempt} from worker {worker}/{epoch}: {}", show_outcome(outcome))
        }
        other => format!("{other:?}"),
    }
}

fn show_outcome(outcome: &TaskOutcome) -> String {
    match outcome {
        TaskOutcome::Success { result: Some(r) } => format!("success ({} result bytes, fnv {:016x})", r.len(), fnv(r)),
        other => format!("{other:?}"),
    }
}

fn show_effect(e: &DriverEffect) -> String {
    match e {
        DriverEffect::Launch { worker, task } => {
            let inputs: Vec<String> = task
                .inputs
                .iter()
                .map(|i| {
                    let maps: Vec<String> = i.maps.iter().map(|m| format!("{}/{}", m.worker, m.worker_epoch)).collect();
                    format!("s{}@[{}]", i.shuffle, maps.join(","))
                })
                .collect();
            format!(
                "launch attempt {} on worker {worker}: job {} stage {}.{} partition {} reading {}",
                task.attempt,
                task.job,
                task.stage,
                task.stage_attempt,
                task.partition,
                if inputs.is_empty() { "its source".to_string() } else { inputs.join(" ") }
            )
        }
        DriverEffect::JobSucceeded { job, results } => {
            let sizes: Vec<usize> = results.iter().map(Vec::len).collect();
            format!("job {job} succeeded, result bytes {sizes:?}")
        }
        other => format!("{other:?}"),
    }
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}
