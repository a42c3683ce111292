//! Query runners against modelled brokers, under a seeded schedule of
//! faults, in simulated time (raft-rs's test style: no threads, no clock).
//!
//! A runner is what a node running the query does: it steps a
//! [`StreamQuery`], executes its effects against the [`World`], computes
//! batches with a [`StreamLogic`] and writes their output through a
//! [`SinkWriter`]. Faults: the runner crashes (everything in memory is
//! lost; a new incarnation starts from the logs after a while); the runner
//! stalls and a second runner takes over while the first, a zombie, later
//! resumes where it was; the brokers go down (listings and appends fail,
//! some appends land although the answer says they failed, produce
//! requests time out after being stored); batches fail (a lost worker).
//! Producers keep writing, some records late. Runners purge the offset and
//! commit logs (keeping the seed's few batches, sometimes stopping between
//! the two logs), and the cleaner compacts them at random times, so
//! zombies meet purged logs and are outrun.
//!
//! Checked at the end ([`Sim::check`]):
//! - the logs recover from what is left after purging and compaction, the
//!   winner of every batch they still hold is the first entry ever
//!   appended for it, and the committed batches read every partition from
//!   offset 0 to its end with no gap and no overlap (liveness: within
//!   [`LIVENESS_MS`] of the last fault and the last write, all input is in
//!   a committed batch);
//! - the output topic holds, partition by partition, exactly the records
//!   of the reference run over the same batches (same ranges, same
//!   watermarks) from an empty state: nothing lost, nothing twice;
//! - every commit's largest event time and sink sequences are the
//!   reference run's; every stored state version equals the reference's;
//!   a version stored twice was stored the same;
//! - no runner stopped with an error;
//! - same seed, same history (the digest).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use millrace_core::Millis;
use millrace_core::rng::Rng;
use millrace_core::stream::{
    Appended, BatchId, BatchResult, CommitEntry, LogView, OffsetEntry, ProduceOutcome, QueryConfig, QueryEffect, QueryInput, SinkEffect, SinkInput,
    SinkWriter, StartAt, StreamQuery, Trigger, entry_key, plan_chunks, purge_point, recover,
};

use super::logic::{InputRecord, OutputRecord, StreamLogic};
use super::world::{INPUT, World};

/// After the last fault and the last write, all input must be committed
/// within this.
pub const LIVENESS_MS: Millis = 30_000;
const CHUNK_RECORDS: usize = 3;
/// The query's name, in its log keys.
const QUERY: &str = "q";
/// The cleaner keeps a tombstone this long (Kafka's `delete.retention.ms`,
/// a day in the adapter): longer than any stall, as the adapter's day is
/// longer than the seconds a node's ownership check lets a zombie live.
const TOMBSTONE_RETENTION_MS: Millis = 10_000;
const MAX_EVENTS: usize = 1_000_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The runner's process dies at `at`; a new one starts `down_ms` later.
    Crash { at: Millis, down_ms: Millis },
    /// The runner stalls for `ms`; a second runner starts `takeover_ms`
    /// after the stall began. The first resumes as a zombie.
    Zombie { at: Millis, ms: Millis, takeover_ms: Millis },
    /// Every broker request fails for `ms` (some appends land anyway).
    BrokersDown { at: Millis, ms: Millis },
    /// Batches finishing in this window fail (a worker was lost).
    BatchFailures { at: Millis, ms: Millis },
}

impl Fault {
    fn end(&self) -> Millis {
        match self {
            Fault::Crash { at, down_ms } => at + down_ms,
            Fault::Zombie { at, ms, .. } => at + ms,
            Fault::BrokersDown { at, ms } | Fault::BatchFailures { at, ms } => at + ms,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Scenario {
    pub seed: u64,
    pub partitions: usize,
    pub out_partitions: usize,
    pub interval_ms: Millis,
    pub max_records_per_batch: Option<u64>,
    /// Producers write until then.
    pub produce_until: Millis,
    pub faults: Vec<Fault>,
    /// Batches the logs keep behind the last commit.
    pub retain: u64,
    /// A purge waits for this many batches to delete.
    pub purge_every: usize,
}

impl Scenario {
    pub fn new(seed: u64) -> Scenario {
        let mut rng = Rng::new(seed ^ 0x5eed_57ea_0000_0007);
        let mut pick = |n: u64| rng.next_u64() % n;
        let partitions = 1 + pick(4) as usize;
        let out_partitions = 1 + pick(3) as usize;
        let interval_ms = [0, 100, 250, 1_000][pick(4) as usize];
        let max_records_per_batch = if pick(3) == 0 { Some(20 + pick(40)) } else { None };
        let produce_until = 5_000 + pick(10_000) as Millis;
        let mut faults = Vec::new();
        let mut at = pick(1_000) as Millis;
        for _ in 0..pick(6) {
            at += 200 + pick(3_000) as Millis;
            let fault = match pick(4) {
                0 => Fault::Crash { at, down_ms: 100 + pick(3_000) as Millis },
                1 => Fault::Zombie { at, ms: 500 + pick(5_000) as Millis, takeover_ms: 100 + pick(1_000) as Millis },
                2 => Fault::BrokersDown { at, ms: 100 + pick(2_000) as Millis },
                _ => Fault::BatchFailures { at, ms: 100 + pick(1_000) as Millis },
            };
            faults.push(fault);
        }
        let retain = 1 + pick(4);
        let purge_every = 1 + pick(3) as usize;
        Scenario { seed, partitions, out_partitions, interval_ms, max_records_per_batch, produce_until, faults, retain, purge_every }
    }

    pub fn describe(&self) -> String {
        let mut s = format!(
            "  seed {}: {} input partitions, {} output partitions, trigger every {} ms, {} per batch, writes until {} ms, logs keep {} batches (purged {} at a time)\n",
            self.seed,
            self.partitions,
            self.out_partitions,
            self.interval_ms,
            self.max_records_per_batch.map_or("no limit".to_string(), |n| format!("at most {n} records")),
            self.produce_until,
            self.retain,
            self.purge_every
        );
        for f in &self.faults {
            let _ = writeln!(s, "    {f:?}");
        }
        s
    }

    fn last_event(&self) -> Millis {
        self.faults.iter().map(Fault::end).max().unwrap_or(0).max(self.produce_until)
    }
}

/// What a finished run reports.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub batches: u64,
    pub crashes: u64,
    pub zombies: u64,
    pub batch_failures: u64,
    pub ambiguous_appends: u64,
    pub skipped_chunks: u64,
    /// Log entries tombstoned by purges, and records the cleaner removed.
    pub purged: u64,
    pub compacted: u64,
    /// Appends that found their batch purged by runners that went on.
    pub outruns: u64,
    pub input_records: u64,
    pub output_records: u64,
}

pub struct SeedRun {
    pub scenario: Scenario,
    /// What the query computes.
    pub query: String,
    pub failure: Option<String>,
    pub simulated_ms: Millis,
    pub digest: u64,
    pub history: Vec<String>,
    pub stats: Stats,
}

#[derive(Debug, Clone)]
enum Msg {
    Query(QueryInput),
    Computed { batch: BatchId, outcome: Result<Computed, String> },
    Sink { batch: BatchId, input: SinkInput },
}

#[derive(Debug, Clone)]
struct Computed {
    records: Vec<OutputRecord>,
    max_event_time: Option<i64>,
    input_rows: u64,
    state_version: BatchId,
    sink_base: Vec<(i32, i32)>,
}

#[derive(Debug, Clone)]
enum Event {
    Produce,
    Deliver { runner: usize, incarnation: u64, msg: Msg },
    Tick { runner: usize, incarnation: u64 },
    SinkTick { runner: usize, incarnation: u64, batch: BatchId },
    Fault(Fault),
    Restart { runner: usize },
    Compact,
}

struct ActiveBatch {
    batch: BatchId,
    writer: SinkWriter,
    /// Each chunk's records.
    chunk_records: Vec<Vec<OutputRecord>>,
    result: BatchResult,
}

struct Runner {
    incarnation: u64,
    alive: bool,
    paused_until: Millis,
    query: StreamQuery,
    active: Option<ActiveBatch>,
    /// What this incarnation has read of the logs (lost in a crash).
    logs: RunnerLogs,
}

/// A runner's views of the two logs, read incrementally as the adapter's
/// `QueryLogs` reads them.
struct RunnerLogs {
    offsets: LogView<OffsetEntry>,
    commits: LogView<CommitEntry>,
    /// The next offset to read, per log.
    cursors: (u64, u64),
    appends: u64,
}

impl RunnerLogs {
    fn new() -> RunnerLogs {
        RunnerLogs { offsets: LogView::new(QUERY), commits: LogView::new(QUERY), cursors: (0, 0), appends: 0 }
    }
}

pub struct Sim<'a, L: StreamLogic> {
    logic: &'a L,
    scenario: Scenario,
    rng: Rng,
    now: Millis,
    seq: u64,
    events: BTreeMap<(Millis, u64), Event>,
    world: World<L::State>,
    runners: Vec<Runner>,
    brokers_down_until: Millis,
    failing_until: Millis,
    violations: Vec<String>,
    history: Vec<String>,
    record: bool,
    digest: u64,
    stats: Stats,
    produced: u64,
}

fn fnv(h: u64, bytes: &[u8]) -> u64 {
    let mut h = h;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// The output partition of a record: its key's hash, as a keyed producer's.
pub fn output_partition(key: &Option<String>, index: usize, partitions: usize) -> i32 {
    let h = match key {
        Some(k) => fnv(0xcbf2_9ce4_8422_2325, k.as_bytes()),
        None => index as u64,
    };
    (h % partitions as u64) as i32
}

impl<'a, L: StreamLogic> Sim<'a, L> {
    pub fn new(scenario: Scenario, logic: &'a L, record: bool) -> Self {
        let world = World::new(scenario.partitions, scenario.out_partitions);
        let mut sim = Sim {
            logic,
            rng: Rng::new(scenario.seed),
            now: 0,
            seq: 0,
            events: BTreeMap::new(),
            world,
            runners: Vec::new(),
            brokers_down_until: 0,
            failing_until: 0,
            violations: Vec::new(),
            history: Vec::new(),
            record,
            digest: 0xcbf2_9ce4_8422_2325,
            stats: Stats::default(),
            produced: 0,
            scenario,
        };
        sim.at(0, Event::Produce);
        sim.at(100, Event::Compact);
        for f in sim.scenario.faults.clone() {
            let at = match &f {
                Fault::Crash { at, .. } | Fault::Zombie { at, .. } | Fault::BrokersDown { at, .. } | Fault::BatchFailures { at, .. } => *at,
            };
            sim.at(at, Event::Fault(f));
        }
        sim.start_runner();
        sim
    }

    fn config(&self) -> QueryConfig {
        QueryConfig {
            inputs: vec![INPUT.into()],
            tables: Vec::new(),
            trigger: Trigger::Interval { interval_ms: self.scenario.interval_ms },
            start_at: StartAt::Earliest,
            watermark_delay_ms: self.logic.watermark_delay_ms(),
            stateful: self.logic.stateful(),
            max_records_per_batch: self.scenario.max_records_per_batch,
            // Faults fail batches in a window; the query must ride them out.
            max_batch_failures: u32::MAX,
            retry_backoff_ms: 200,
        }
    }

    fn note(&mut self, line: String) {
        self.digest = fnv(self.digest, line.as_bytes());
        self.digest = fnv(self.digest, b"\n");
        if self.record {
            self.history.push(format!("{:>7} {line}", self.now));
        }
    }

    fn at(&mut self, at: Millis, e: Event) {
        self.seq += 1;
        self.events.insert((at.max(self.now), self.seq), e);
    }

    fn latency(&mut self) -> Millis {
        1 + (self.rng.next_u64() % 20) as Millis
    }

    fn chance(&mut self, one_in: u64) -> bool {
        self.rng.next_u64() % one_in == 0
    }

    fn start_runner(&mut self) {
        let id = self.runners.len();
        self.runners.push(Runner {
            incarnation: 0,
            alive: true,
            paused_until: 0,
            query: StreamQuery::new(self.config()),
            active: None,
            logs: RunnerLogs::new(),
        });
        self.note(format!("runner {id} starts"));
        let mut out = Vec::new();
        self.runners[id].query.start(&mut out);
        self.query_effects(id, out);
    }

    fn deliver(&mut self, runner: usize, delay: Millis, msg: Msg) {
        let incarnation = self.runners[runner].incarnation;
        let at = self.now + delay;
        self.at(at, Event::Deliver { runner, incarnation, msg });
    }

    fn brokers_down(&self) -> bool {
        self.now < self.brokers_down_until
    }

    /// Runner `r` reads both logs from where it stopped.
    fn refresh(&mut self, r: usize) {
        let logs = &mut self.runners[r].logs;
        logs.cursors.0 = self.world.offset_log.read_into(&mut logs.offsets, logs.cursors.0);
        logs.cursors.1 = self.world.commit_log.read_into(&mut logs.commits, logs.cursors.1);
    }

    /// A key no other append uses: runner, incarnation, append.
    fn next_key(&mut self, r: usize, batch: BatchId) -> String {
        let runner = &mut self.runners[r];
        runner.logs.appends += 1;
        entry_key(QUERY, batch, &format!("{r}.{}.{}", runner.incarnation, runner.logs.appends))
    }

    /// After runner `r` committed `committed`: the adapter's purge
    /// (`QueryLogs::purge`), sometimes cut short between the two logs.
    fn purge(&mut self, r: usize, committed: BatchId) {
        self.refresh(r);
        let point = purge_point(committed, self.scenario.retain);
        if self.runners[r].logs.offsets.purgeable_batches(point) < self.scenario.purge_every {
            return;
        }
        let commits = self.runners[r].logs.commits.purgeable(point);
        let offsets = self.runners[r].logs.offsets.purgeable(point);
        let cut = self.chance(5);
        self.note(format!("runner {r} purges below batch {point}{}", if cut { ", commits only" } else { "" }));
        self.stats.purged += commits.len() as u64;
        for k in commits {
            self.world.commit_log.append(k, None, self.now);
        }
        if cut {
            return;
        }
        self.stats.purged += offsets.len() as u64;
        for k in offsets {
            self.world.offset_log.append(k, None, self.now);
        }
        self.refresh(r);
        let logs = &mut self.runners[r].logs;
        if let Some(floor) = logs.offsets.floor() {
            logs.offsets.forget_below(floor);
            logs.commits.forget_below(floor);
        }
    }

    /// The cleaner: each log compacted up to a point short of its end.
    fn compact(&mut self) {
        let (o, c) = (self.world.offset_log.end(), self.world.commit_log.end());
        let (ot, ct) = (self.rng.next_u64() % 8, self.rng.next_u64() % 8);
        let removed = self.world.offset_log.compact(o.saturating_sub(ot), self.now, TOMBSTONE_RETENTION_MS)
            + self.world.commit_log.compact(c.saturating_sub(ct), self.now, TOMBSTONE_RETENTION_MS);
        if removed > 0 {
            self.stats.compacted += removed as u64;
            self.note(format!("cleaner removes {removed} records"));
        }
        let next = self.now + 100 + (self.rng.next_u64() % 1_000) as Millis;
        self.at(next, Event::Compact);
    }

    fn query_effects(&mut self, r: usize, effects: Vec<QueryEffect>) {
        for e in effects {
            let lat = self.latency();
            match e {
                QueryEffect::ReadLogs => {
                    let wait = (self.brokers_down_until - self.now).max(0);
                    self.refresh(r);
                    let logs = &self.runners[r].logs;
                    let input = QueryInput::Recovered { offsets: logs.offsets.live(), commits: logs.commits.live() };
                    self.deliver(r, wait + lat, Msg::Query(input));
                }
                QueryEffect::List { .. } => {
                    let input = if self.brokers_down() {
                        QueryInput::IoFailed { reason: "brokers down".into() }
                    } else {
                        QueryInput::Listed { ends: self.world.ends() }
                    };
                    self.deliver(r, lat, Msg::Query(input));
                }
                QueryEffect::LogOffsets { entry } => {
                    self.note(format!("runner {r} logs batch {} {:?} watermark {:?}", entry.batch, ranges(&entry), entry.watermark));
                    let (batch, key) = (entry.batch, self.next_key(r, entry.batch));
                    let input = if self.brokers_down() {
                        if self.chance(3) {
                            self.stats.ambiguous_appends += 1;
                            self.world.offset_log.append(key, Some(entry), self.now);
                        }
                        QueryInput::IoFailed { reason: "brokers down".into() }
                    } else {
                        self.world.offset_log.append(key, Some(entry), self.now);
                        self.refresh(r);
                        match self.runners[r].logs.offsets.appended(batch) {
                            Some(Appended::Winner(winner)) => QueryInput::OffsetsLogged { winner },
                            Some(Appended::Outrun { floor }) => {
                                self.stats.outruns += 1;
                                self.note(format!("runner {r} is outrun: batch {batch} is below the floor {floor}"));
                                QueryInput::Outrun { batch, floor }
                            }
                            None => {
                                self.violations.push(format!("runner {r} appended batch {batch} and did not read it back"));
                                QueryInput::IoFailed { reason: "append not read back".into() }
                            }
                        }
                    };
                    self.deliver(r, lat, Msg::Query(input));
                }
                QueryEffect::RunBatch { entry, state_version, sink_base } => self.run_batch(r, entry, state_version, sink_base),
                QueryEffect::LogCommit { entry } => {
                    self.note(format!("runner {r} commits batch {}", entry.batch));
                    let (batch, key) = (entry.batch, self.next_key(r, entry.batch));
                    let input = if self.brokers_down() {
                        if self.chance(3) {
                            self.stats.ambiguous_appends += 1;
                            self.world.commit_log.append(key, Some(entry), self.now);
                        }
                        QueryInput::IoFailed { reason: "brokers down".into() }
                    } else {
                        self.world.commit_log.append(key, Some(entry), self.now);
                        self.purge(r, batch);
                        QueryInput::CommitLogged { batch }
                    };
                    self.deliver(r, lat, Msg::Query(input));
                }
                QueryEffect::Progress(p) => {
                    self.stats.batches += 1;
                    self.note(format!("runner {r} batch {} done: {} rows in, {} out", p.batch, p.input_rows, p.output_records));
                }
                QueryEffect::Timer { at } => {
                    let incarnation = self.runners[r].incarnation;
                    self.at(at, Event::Tick { runner: r, incarnation });
                }
                QueryEffect::Stopped { error } => {
                    self.note(format!("runner {r} stopped: {error:?}"));
                    self.violations.push(format!("runner {r} stopped at {} ms: {}", self.now, error.map_or("no error".into(), |e| e.to_string())));
                }
            }
        }
    }

    fn run_batch(&mut self, r: usize, entry: OffsetEntry, state_version: Option<BatchId>, sink_base: Vec<(i32, i32)>) {
        let duration = 10 + (self.rng.next_u64() % 300) as Millis;
        let state = match state_version {
            None => Some(L::State::default()),
            Some(v) => self.world.states.get(&v).cloned(),
        };
        let input = self.world.read(&entry.ranges);
        let outcome = match state {
            None => Err(format!("state version {state_version:?} is not stored")),
            Some(state) => self.logic.run(&state, &input, entry.watermark).map(|out| {
                // The new state is stored when the batch's job ends.
                self.world.states.entry(entry.batch).or_insert_with(|| out.state.clone());
                if self.world.states[&entry.batch] != out.state {
                    self.violations.push(format!("batch {} stored a state different from the one stored before", entry.batch));
                }
                Computed {
                    records: out.records,
                    max_event_time: out.max_event_time,
                    input_rows: input.len() as u64,
                    state_version: entry.batch,
                    sink_base,
                }
            }),
        };
        let batch = entry.batch;
        self.deliver(r, duration, Msg::Computed { batch, outcome });
    }

    fn computed(&mut self, r: usize, batch: BatchId, outcome: Result<Computed, String>) {
        let outcome = if self.now < self.failing_until { Err("a worker was lost".to_string()) } else { outcome };
        let c = match outcome {
            Ok(c) => c,
            Err(reason) => {
                self.stats.batch_failures += 1;
                self.note(format!("runner {r} batch {batch} failed: {reason}"));
                let mut out = Vec::new();
                self.runners[r].query.step(self.now, QueryInput::BatchFailed { batch, reason }, &mut out);
                return self.query_effects(r, out);
            }
        };
        let _ = c.state_version;
        let partitions = self.scenario.out_partitions;
        let mut by_partition: BTreeMap<i32, Vec<OutputRecord>> = BTreeMap::new();
        for (i, rec) in c.records.iter().enumerate() {
            by_partition.entry(output_partition(&rec.0, i, partitions)).or_default().push(rec.clone());
        }
        let counts: Vec<(i32, usize)> = by_partition.iter().map(|(p, v)| (*p, v.len())).collect();
        let (chunks, sink_next) = plan_chunks(&counts, &c.sink_base, CHUNK_RECORDS);
        let chunk_records = chunks.iter().map(|ch| by_partition[&ch.partition][ch.first..ch.first + ch.count].to_vec()).collect();
        let result = BatchResult { max_event_time: c.max_event_time, sink_next, input_rows: c.input_rows, output_records: c.records.len() as u64 };
        let mut writer = SinkWriter::new(chunks);
        let mut out = Vec::new();
        writer.start(&mut out);
        self.runners[r].active = Some(ActiveBatch { batch, writer, chunk_records, result });
        self.sink_effects(r, batch, out);
    }

    fn sink_effects(&mut self, r: usize, batch: BatchId, effects: Vec<SinkEffect>) {
        for e in effects {
            match e {
                SinkEffect::Produce { chunk } => {
                    let active = self.runners[r].active.as_ref().expect("a batch is writing");
                    let ch = active.writer.chunks()[chunk];
                    let records = active.chunk_records[chunk].clone();
                    let outcome = if self.brokers_down() {
                        ProduceOutcome::Retriable("brokers down".into())
                    } else {
                        let o = self.world.produce(ch.partition, ch.base_sequence, &records);
                        if o == ProduceOutcome::Written && self.chance(8) {
                            // Stored, but the answer timed out.
                            self.stats.ambiguous_appends += 1;
                            ProduceOutcome::Retriable("request timed out".into())
                        } else {
                            o
                        }
                    };
                    let lat = self.latency();
                    self.deliver(r, lat, Msg::Sink { batch, input: SinkInput::Produced { chunk, outcome } });
                }
                SinkEffect::Timer { at } => {
                    let incarnation = self.runners[r].incarnation;
                    self.at(at, Event::SinkTick { runner: r, incarnation, batch });
                }
                SinkEffect::Done => {
                    let active = self.runners[r].active.take().expect("a batch is writing");
                    self.stats.skipped_chunks += active.writer.skipped;
                    let mut out = Vec::new();
                    self.runners[r].query.step(self.now, QueryInput::BatchDone { batch, result: active.result }, &mut out);
                    self.query_effects(r, out);
                }
                SinkEffect::Failed { reason } => {
                    self.runners[r].active = None;
                    let mut out = Vec::new();
                    self.runners[r].query.step(self.now, QueryInput::BatchFailed { batch, reason }, &mut out);
                    self.query_effects(r, out);
                }
            }
        }
    }

    fn produce(&mut self) {
        if self.now >= self.scenario.produce_until {
            return;
        }
        let p = (self.rng.next_u64() % self.scenario.partitions as u64) as usize;
        for _ in 0..1 + self.rng.next_u64() % 4 {
            // Event times trail the clock, some by more than the delay (late).
            let lag = (self.rng.next_u64() % 3_000) as i64;
            let key = format!("k{}", self.rng.next_u64() % 5);
            let offset = self.world.input[p].len() as i64;
            self.produced += 1;
            let ts = self.now - lag;
            let value = format!("{{\"id\":{},\"page\":\"{key}\",\"ts\":{ts}}}", self.produced);
            self.world.input[p].push(InputRecord { partition: p as i32, offset, timestamp: ts, key: Some(key), value });
        }
        let next = self.now + 20 + (self.rng.next_u64() % 100) as Millis;
        self.at(next, Event::Produce);
    }

    fn fault(&mut self, f: Fault) {
        self.note(format!("fault {f:?}"));
        match f {
            Fault::Crash { down_ms, .. } => {
                // The newest live runner dies.
                if let Some(r) = (0..self.runners.len()).rev().find(|&r| self.runners[r].alive) {
                    self.stats.crashes += 1;
                    let runner = &mut self.runners[r];
                    runner.alive = false;
                    runner.incarnation += 1;
                    runner.active = None;
                    self.at(self.now + down_ms, Event::Restart { runner: r });
                }
            }
            Fault::Zombie { ms, takeover_ms, .. } => {
                if let Some(r) = (0..self.runners.len()).rev().find(|&r| self.runners[r].alive) {
                    if self.runners.len() < 4 {
                        self.stats.zombies += 1;
                        self.runners[r].paused_until = self.now + ms;
                        let at = self.now + takeover_ms.min(ms);
                        self.at(at, Event::Restart { runner: usize::MAX });
                    }
                }
            }
            Fault::BrokersDown { ms, .. } => self.brokers_down_until = self.brokers_down_until.max(self.now + ms),
            Fault::BatchFailures { ms, .. } => self.failing_until = self.failing_until.max(self.now + ms),
        }
    }

    fn restart(&mut self, r: usize) {
        if r == usize::MAX {
            return self.start_runner();
        }
        let config = self.config();
        let runner = &mut self.runners[r];
        runner.alive = true;
        runner.paused_until = 0;
        runner.query = StreamQuery::new(config);
        runner.logs = RunnerLogs::new();
        let incarnation = runner.incarnation;
        self.note(format!("runner {r} restarts (incarnation {incarnation})"));
        let mut out = Vec::new();
        self.runners[r].query.start(&mut out);
        self.query_effects(r, out);
    }

    /// The logs as a reader starting now recovers them.
    fn recover_now(&self) -> Result<millrace_core::stream::Recovery, millrace_core::stream::StreamError> {
        recover(self.world.offset_log.view(QUERY).live(), self.world.commit_log.view(QUERY).live())
    }

    /// Whether every partition's input is in a committed batch.
    fn caught_up(&self) -> bool {
        let Ok(rec) = self.recover_now() else { return false };
        let Some((entry, _)) = rec.committed else { return false };
        rec.pending.is_none()
            && self.world.input.iter().enumerate().all(|(p, recs)| entry.ranges.iter().any(|r| r.partition == p as i32 && r.end == recs.len() as i64))
    }

    pub fn run(mut self) -> SeedRun {
        let quiet_from = self.scenario.last_event();
        let deadline = quiet_from + LIVENESS_MS;
        let mut steps = 0;
        while let Some(((at, _), event)) = self.events.pop_first() {
            steps += 1;
            if at > deadline || steps > MAX_EVENTS {
                break;
            }
            self.now = at;
            if self.now > quiet_from && self.caught_up() {
                break;
            }
            match event {
                Event::Produce => self.produce(),
                Event::Fault(f) => self.fault(f),
                Event::Restart { runner } => self.restart(runner),
                Event::Compact => self.compact(),
                Event::Deliver { runner, incarnation, msg } => {
                    let rn = &self.runners[runner];
                    if !rn.alive || rn.incarnation != incarnation {
                        continue;
                    }
                    if rn.paused_until > self.now {
                        let until = rn.paused_until;
                        self.at(until, Event::Deliver { runner, incarnation, msg });
                        continue;
                    }
                    match msg {
                        Msg::Query(input) => {
                            let mut out = Vec::new();
                            self.runners[runner].query.step(self.now, input, &mut out);
                            self.query_effects(runner, out);
                        }
                        Msg::Computed { batch, outcome } => self.computed(runner, batch, outcome),
                        Msg::Sink { batch, input } => {
                            let Some(active) = self.runners[runner].active.as_mut() else { continue };
                            if active.batch != batch {
                                continue;
                            }
                            let mut out = Vec::new();
                            active.writer.step(self.now, input, &mut out);
                            self.sink_effects(runner, batch, out);
                        }
                    }
                }
                Event::Tick { runner, incarnation } | Event::SinkTick { runner, incarnation, .. } => {
                    let rn = &self.runners[runner];
                    if !rn.alive || rn.incarnation != incarnation {
                        continue;
                    }
                    if rn.paused_until > self.now {
                        let until = rn.paused_until;
                        self.at(until, event);
                        continue;
                    }
                    match event {
                        Event::Tick { .. } => {
                            let mut out = Vec::new();
                            self.runners[runner].query.step(self.now, QueryInput::Tick, &mut out);
                            self.query_effects(runner, out);
                        }
                        Event::SinkTick { batch, .. } => {
                            let Some(active) = self.runners[runner].active.as_mut() else { continue };
                            if active.batch != batch {
                                continue;
                            }
                            let mut out = Vec::new();
                            active.writer.step(self.now, SinkInput::Tick, &mut out);
                            self.sink_effects(runner, batch, out);
                        }
                        _ => unreachable!(),
                    }
                }
            }
        }
        let failure = self.check();
        self.stats.input_records = self.produced;
        self.stats.output_records = self.world.output.iter().map(|o| o.len() as u64).sum();
        SeedRun { scenario: self.scenario.clone(), query: self.logic.describe(), failure, simulated_ms: self.now, digest: self.digest, history: self.history, stats: self.stats }
    }

    /// The end-of-run checks (see the module comment); the first failure.
    fn check(&mut self) -> Option<String> {
        if let Some(v) = self.violations.first() {
            return Some(format!("[safety] {v}"));
        }
        let rec = match self.recover_now() {
            Ok(r) => r,
            Err(e) => return Some(format!("[safety] the logs do not recover: {e}")),
        };
        if !self.caught_up() {
            let last = rec.committed.as_ref().map(|(e, _)| ranges(e));
            return Some(format!(
                "[liveness] {} ms after the last fault and write, the input is not all committed: last committed {last:?}, pending {:?}, input ends {:?}",
                LIVENESS_MS,
                rec.pending.as_ref().map(|e| e.batch),
                self.world.input.iter().map(Vec::len).collect::<Vec<_>>()
            ));
        }
        let (last, _) = rec.committed.expect("caught up");
        // The winning entries, in batch order: the first ever appended.
        let mut entries: BTreeMap<BatchId, OffsetEntry> = BTreeMap::new();
        for e in &self.world.offset_log.appended {
            entries.entry(e.batch).or_insert_with(|| e.clone());
        }
        let mut commits = BTreeMap::new();
        for c in &self.world.commit_log.appended {
            commits.entry(c.batch).or_insert_with(|| c.clone());
        }
        // What is left of the logs names the same winners.
        let left = self.world.offset_log.view(QUERY).live();
        let floor = left.first().map_or(0, |e| e.batch);
        let mut seen = std::collections::BTreeSet::new();
        for e in left.iter().filter(|e| e.batch >= floor) {
            if seen.insert(e.batch) && entries.get(&e.batch) != Some(e) {
                return Some(format!("[safety] after purging, batch {}'s first entry is {e:?}, not the first appended {:?}", e.batch, entries.get(&e.batch)));
            }
        }
        if last.batch != entries.keys().next_back().copied().unwrap_or(0) && rec.pending.is_none() {
            return Some(format!("[safety] the logs recover batch {} as the last, but batch {} was logged", last.batch, entries.keys().next_back().copied().unwrap_or(0)));
        }
        let mut state = L::State::default();
        let mut expected: Vec<Vec<OutputRecord>> = vec![Vec::new(); self.scenario.out_partitions];
        let mut max_event_time = None;
        let mut read_to: Vec<i64> = vec![0; self.scenario.partitions];
        for (id, entry) in entries.range(..=last.batch) {
            for r in &entry.ranges {
                if r.start != read_to[r.partition as usize] {
                    return Some(format!("[safety] batch {id} reads partition {} from {}, not from {}", r.partition, r.start, read_to[r.partition as usize]));
                }
                read_to[r.partition as usize] = r.end;
            }
            let input = self.world.read(&entry.ranges);
            let commit = &commits[id];
            let ran = if self.logic.stateful() { commit.state_version == Some(*id) } else { !input.is_empty() };
            if ran {
                let out = self.logic.reference(&state, &input, entry.watermark);
                if self.world.states.get(id) != Some(&out.state) {
                    return Some(format!("[safety] batch {id}: stored state {:?}, reference {:?}", self.world.states.get(id), out.state));
                }
                for (i, rec) in out.records.iter().enumerate() {
                    expected[output_partition(&rec.0, i, self.scenario.out_partitions) as usize].push(rec.clone());
                }
                max_event_time = max_event_time.max(out.max_event_time);
                state = out.state;
            } else if !input.is_empty() {
                return Some(format!("[safety] batch {id} has input but was committed without running"));
            }
            if commit.max_event_time != max_event_time {
                return Some(format!("[safety] batch {id} commits max event time {:?}, the reference {max_event_time:?}", commit.max_event_time));
            }
            let written: Vec<(i32, i32)> = expected.iter().enumerate().filter(|(_, v)| !v.is_empty()).map(|(p, v)| (p as i32, v.len() as i32)).collect();
            let next: Vec<(i32, i32)> = commit.sink_next.iter().copied().filter(|(_, n)| *n != 0).collect();
            if next != written {
                return Some(format!("[safety] batch {id} commits sink sequences {next:?}, the reference {written:?}"));
            }
        }
        for (p, (want, got)) in expected.iter().zip(&self.world.output).enumerate() {
            if want != got {
                let at = want.iter().zip(got).position(|(a, b)| a != b).unwrap_or(want.len().min(got.len()));
                return Some(format!(
                    "[exactly-once] output partition {p}: {} records, the reference {}; first difference at {at}: {:?} vs reference {:?}",
                    got.len(),
                    want.len(),
                    got.get(at),
                    want.get(at)
                ));
            }
        }
        None
    }
}

fn ranges(e: &OffsetEntry) -> Vec<(i32, i64, i64)> {
    e.ranges.iter().map(|r| (r.partition, r.start, r.end)).collect()
}

/// Runs one seed with `logic`.
pub fn run_seed<L: StreamLogic>(seed: u64, logic: &L, record: bool) -> SeedRun {
    Sim::new(Scenario::new(seed), logic, record).run()
}
