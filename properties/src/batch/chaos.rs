//! The batch chaos suite (`scripts/chaos --suite batch`): real engine
//! plans run by the real driver and worker machines under faults, and
//! every job's result must equal the reference evaluator's (DESIGN.md §5,
//! invariants 6 and 8).
//!
//! A seed draws 3–5 workers, two to five jobs submitted over the first two
//! seconds (so they overlap), sometimes one more that is cancelled, and up
//! to four faults (see [`sim::FaultKind`]), half at any time in the first
//! 2.5 s and half within 600 ms of a job's submission. A job is (half the
//! time) a random plan from `millrace_engine::testing` (filters,
//! projections, aggregates, joins of every kind, sorts, limits, distinct,
//! union, explode, repartition over random tables with NULLs), with 1–7
//! reduce partitions, or one of four SQL-shaped ones over random in-memory
//! tables, with 1–8: a word count, a group-by, a filter-and-project whose
//! only stage is a 4–16 partition scan (many result tasks, so copies race
//! the commit coordinator), a join of customers and orders (inner, left or
//! full) with an aggregate.
//! The plan is cut into stages, turned into the driver's `JobSpec` by
//! `millrace_engine::job::job_spec`, and each task a worker runs executes
//! `millrace_engine::job::execute` on the decoded stage plan, fetching its
//! shuffle blocks from the workers the driver placed them on.
//!
//! Checks ([`sim`]'s, plus): every job succeeds (faults heal before the
//! end) and its rows equal `reference::evaluate` of its plan — in order
//! when the plan ends with a total sort; for a random plan whose limit is
//! followed by more steps (which rows it keeps is not defined) the row
//! count equals the reference's and the rows equal the engine's own
//! fault-free local run.

use std::fmt::Write as _;

use millrace_core::Millis;
use millrace_core::batch::{JobId, MapLocation, StageId, TaskDesc};
use millrace_core::rng::Rng;
use millrace_engine::dataset::Context;
use millrace_engine::job::{Executed, FetchFrom, decode_results, execute, job_spec};
use millrace_engine::local::run_stages_spilling;
use millrace_engine::spill::{MemorySpace, Spill};
use millrace_engine::physical::{PlannerConfig, cut};
use millrace_engine::plan::LogicalPlan;
use millrace_engine::reference::{Row, evaluate, same_rows};
use millrace_engine::testing::{RandomPlan, random_plan, sample};
use millrace_engine::types::{DataType, Field, Schema, Value};
use millrace_engine::value::batches_to_rows;

use super::sim::{self, Fault, FaultKind, Sim, Stats};

/// Runs tasks with the engine: decode the stage plan, fetch blocks
/// through the harness, execute. With a memory limit, aggregates and
/// joins past it spill (into memory: the simulator touches no disk).
pub struct EngineExecutor {
    pub task_memory: Option<usize>,
    pub space: MemorySpace,
}

impl sim::Executor for EngineExecutor {
    fn execute(&mut self, task: &TaskDesc, fetch: &dyn Fn(StageId, &MapLocation, u32) -> Option<Vec<u8>>) -> Executed {
        let spill = self.task_memory.map(|limit_bytes| Spill { limit_bytes, space: &self.space });
        execute(task, &FetchFrom::new(task, fetch).with_spill(spill))
    }
}

/// How a job's rows are judged against the reference.
#[derive(Clone)]
enum Expect {
    /// The reference's rows, in order or as a multiset.
    Rows { rows: Vec<Row>, ordered: bool },
    /// A limit with more steps after it: as many rows as the reference,
    /// and the same rows as the engine's fault-free local run.
    CountAndLocal { count: usize, local: Vec<Row> },
}

impl Expect {
    fn check(&self, actual: &[Row]) -> Result<(), String> {
        match self {
            Expect::Rows { rows, ordered } => same_rows(actual, rows, *ordered).map_err(|e| format!("the reference disagrees: {e}")),
            Expect::CountAndLocal { count, local } => {
                if actual.len() != *count {
                    return Err(format!("{} rows, the reference has {count}", actual.len()));
                }
                same_rows(actual, local, false).map_err(|e| format!("the fault-free local run disagrees: {e}"))
            }
        }
    }
}

/// One job of a scenario.
pub struct JobPlan {
    pub id: JobId,
    /// What kind of job, for the scenario's description.
    pub what: String,
    pub plan: LogicalPlan,
    pub config: PlannerConfig,
    pub submit_at: Millis,
    pub cancel_at: Option<Millis>,
    expect: Expect,
}

/// What a seed runs.
pub struct Scenario {
    pub seed: u64,
    pub workers: usize,
    pub jobs: Vec<JobPlan>,
    pub faults: Vec<Fault>,
    /// Bytes a task's aggregate or join may hold before it spills (one seed
    /// in three; a few kB or less, so spilling happens).
    pub task_memory: Option<usize>,
}

const WORDS: [&str; 12] = ["the", "cat", "dog", "a", "sat", "on", "mat", "ran", "far", "and", "then", "slept"];

fn word_count(rng: &mut Rng) -> (String, LogicalPlan, bool) {
    let lines = 5 + rng.next_u64() % 50;
    let rows = (0..lines)
        .map(|_| {
            let n = rng.next_u64() % 9;
            let words: Vec<&str> = (0..n).map(|_| WORDS[(rng.next_u64() % WORDS.len() as u64) as usize]).collect();
            vec![Value::Str(words.join(" "))]
        })
        .collect();
    let mut ctx = Context::new();
    let parts = 1 + (rng.next_u64() % 5) as u32;
    let lines_ds = ctx.from_rows(Schema::new(vec![Field::new("value", DataType::Utf8)]), rows, parts).expect("a table");
    ctx.register("lines", &lines_ds);
    let sql = "SELECT word, count(*) AS n FROM (SELECT explode(split(value, ' ')) AS word FROM lines) GROUP BY word ORDER BY n DESC, word";
    (format!("word count over {lines} lines in {parts} partitions: {sql}"), ctx.sql(sql).expect("word count plans").plan, true)
}

fn maybe<T>(rng: &mut Rng, v: T) -> Value
where
    Value: From<T>,
{
    if rng.next_u64() % 8 == 0 { Value::Null } else { Value::from(v) }
}

fn group_by(rng: &mut Rng) -> (String, LogicalPlan, bool) {
    let regions = ["north", "south", "east", "west", "x"];
    let products = ["apple", "pear", "fig", "plum"];
    let n = rng.next_u64() % 60;
    let rows = (0..n)
        .map(|_| {
            let region = regions[(rng.next_u64() % regions.len() as u64) as usize].to_string();
            let product = products[(rng.next_u64() % products.len() as u64) as usize].to_string();
            let amount = (rng.next_u64() % 400) as f64 / 4.0;
            let qty = (rng.next_u64() % 10) as i64 - 2;
            vec![maybe(rng, region), maybe(rng, product), maybe(rng, amount), maybe(rng, qty)]
        })
        .collect();
    let schema = Schema::new(vec![
        Field::new("region", DataType::Utf8),
        Field::new("product", DataType::Utf8),
        Field::new("amount", DataType::Float64),
        Field::new("qty", DataType::Int64),
    ]);
    let mut ctx = Context::new();
    let parts = 1 + (rng.next_u64() % 5) as u32;
    let sales = ctx.from_rows(schema, rows, parts).expect("a table");
    ctx.register("sales", &sales);
    let sql = "SELECT region, count(*) AS n, sum(amount) AS total, max(qty) AS most, avg(qty) AS mean, count(DISTINCT product) AS products \
               FROM sales WHERE qty > 0 OR amount IS NULL GROUP BY region HAVING count(*) > 1";
    (format!("group-by over {n} sales rows in {parts} partitions: {sql}"), ctx.sql(sql).expect("group-by plans").plan, false)
}

/// A single-stage job: its result stage is the scan itself, as wide as
/// the table's partitions (so many result tasks race, and copies of them).
fn filter_project(rng: &mut Rng) -> (String, LogicalPlan, bool) {
    let n = rng.next_u64() % 80;
    let rows = (0..n)
        .map(|i| {
            let word = WORDS[(rng.next_u64() % WORDS.len() as u64) as usize].to_string();
            let v = (rng.next_u64() % 100) as i64 - 30;
            vec![Value::Int(i as i64), maybe(rng, v), maybe(rng, word)]
        })
        .collect();
    let schema = Schema::new(vec![Field::new("id", DataType::Int64), Field::new("v", DataType::Int64), Field::new("s", DataType::Utf8)]);
    let mut ctx = Context::new();
    let parts = 4 + (rng.next_u64() % 13) as u32;
    let t = ctx.from_rows(schema, rows, parts).expect("a table");
    ctx.register("t", &t);
    let sql = "SELECT id, v * 2 + 1 AS w, upper(s) AS u, CASE WHEN v > 10 THEN 'big' ELSE 'small' END AS size FROM t WHERE v IS NULL OR v % 3 <> 0";
    (format!("filter and project over {n} rows in {parts} partitions: {sql}"), ctx.sql(sql).expect("filter-project plans").plan, false)
}

fn join_aggregate(rng: &mut Rng) -> (String, LogicalPlan, bool) {
    let tiers = ["gold", "silver", "bronze"];
    let customers = 1 + rng.next_u64() % 15;
    let crows = (0..customers)
        .map(|id| {
            let tier = tiers[(rng.next_u64() % tiers.len() as u64) as usize].to_string();
            vec![Value::Int(id as i64), Value::Str(format!("c{id}")), maybe(rng, tier)]
        })
        .collect();
    let orders = rng.next_u64() % 50;
    let orows = (0..orders)
        .map(|oid| {
            // Some orders name customers that do not exist.
            let cust = (rng.next_u64() % (customers + 3)) as i64;
            vec![Value::Int(oid as i64), maybe(rng, cust), Value::Float((rng.next_u64() % 1000) as f64 / 8.0)]
        })
        .collect();
    let mut ctx = Context::new();
    let cparts = 1 + (rng.next_u64() % 3) as u32;
    let oparts = 1 + (rng.next_u64() % 5) as u32;
    let c = ctx
        .from_rows(
            Schema::new(vec![Field::new("id", DataType::Int64), Field::new("name", DataType::Utf8), Field::new("tier", DataType::Utf8)]),
            crows,
            cparts,
        )
        .expect("a table");
    let o = ctx
        .from_rows(
            Schema::new(vec![Field::new("oid", DataType::Int64), Field::new("cust", DataType::Int64), Field::new("amount", DataType::Float64)]),
            orows,
            oparts,
        )
        .expect("a table");
    ctx.register("customers", &c);
    ctx.register("orders", &o);
    let kind = ["JOIN", "LEFT JOIN", "FULL JOIN"][(rng.next_u64() % 3) as usize];
    let sql = format!(
        "SELECT c.tier, count(o.oid) AS orders, count(*) AS n, sum(o.amount) AS spent, min(c.name) AS first \
         FROM customers c {kind} orders o ON c.id = o.cust GROUP BY c.tier ORDER BY c.tier"
    );
    let plan = ctx.sql(&sql).expect("join plans").plan;
    (format!("join of {customers} customers ({cparts} partitions) and {orders} orders ({oparts} partitions): {sql}"), plan, true)
}

impl Scenario {
    /// The scenario of `seed`: everything is drawn from it.
    pub fn new(seed: u64) -> Scenario {
        let mut rng = Rng::new(seed ^ 0xba7c_4c4a_05ee_d000);
        let workers = 3 + (rng.next_u64() % 3) as usize;
        let n = 2 + rng.next_u64() % 4;
        let cancelled = rng.next_u64() % 5 == 0;
        let mut jobs = Vec::new();
        for id in 1..=n + u64::from(cancelled) {
            let submit_at = (rng.next_u64() % 2_000) as Millis;
            let cancel_at = (id > n).then(|| submit_at + (rng.next_u64() % 400) as Millis);
            let shuffle = 1 + (rng.next_u64() % 8) as u32;
            let (what, plan, expect, config) = match rng.next_u64() % 8 {
                0..=3 => {
                    let p: RandomPlan = sample(&random_plan(), rng.next_u64());
                    // Wider than the generator's 1-3, for more tasks to race.
                    let config = PlannerConfig { shuffle_partitions: p.shuffle_partitions + (rng.next_u64() % 5) as u32 };
                    let reference = evaluate(&p.plan, None).expect("the reference evaluates a random plan");
                    let expect = if p.limit_unordered() {
                        // The local rows are computed once the memory limit is drawn.
                        Expect::CountAndLocal { count: reference.len(), local: Vec::new() }
                    } else {
                        Expect::Rows { rows: reference, ordered: p.ordered() }
                    };
                    let what = format!("random plan ({} steps)", p.shapes.len());
                    (what, p.plan, expect, config)
                }
                k => {
                    let (what, plan, ordered) = match k {
                        4 => word_count(&mut rng),
                        5 => group_by(&mut rng),
                        6 => filter_project(&mut rng),
                        _ => join_aggregate(&mut rng),
                    };
                    let rows = evaluate(&plan, None).expect("the reference evaluates a fixed plan");
                    (what, plan, Expect::Rows { rows, ordered }, PlannerConfig { shuffle_partitions: shuffle })
                }
            };
            jobs.push(JobPlan { id, what, plan, config, submit_at, cancel_at, expect });
        }
        let starts: Vec<Millis> = jobs.iter().map(|j| j.submit_at).collect();
        let faults = (0..rng.next_u64() % 5)
            .map(|_| {
                // Half the faults strike while a job is likely running.
                let at = match rng.next_u64() % 2 {
                    0 => (rng.next_u64() % 2_500) as Millis,
                    _ => starts[(rng.next_u64() % starts.len() as u64) as usize] + (rng.next_u64() % 600) as Millis,
                };
                let worker = (rng.next_u64() % workers as u64) as usize;
                let d = 10 + (rng.next_u64() % 2_500) as Millis;
                let kind = match rng.next_u64() % 10 {
                    0 => FaultKind::Crash { down: d },
                    1 => FaultKind::Pause { for_ms: d.max(200) },
                    2 => FaultKind::Slow { for_ms: d.max(100) },
                    3 => FaultKind::Lag { for_ms: d.max(100), extra: (d * 7) % 1_500 },
                    4 => FaultKind::LoseOutput,
                    5 => FaultKind::Cut { for_ms: d, broken: false },
                    6 => FaultKind::Cut { for_ms: d, broken: true },
                    // A fetch failure costs the reducer's stage an attempt,
                    // and four in a row fail the job: a split shorter than
                    // four resubmission rounds heals in time.
                    7 => FaultKind::Split { other: (worker + 1 + (rng.next_u64() % (workers as u64 - 1)) as usize) % workers, for_ms: 10 + d % 600 },
                    _ => FaultKind::Crash { down: d % 500 },
                };
                Fault { at, worker, kind }
            })
            .collect();
        // Drawn last, so the rest of a seed's scenario is as it was before.
        let task_memory = (rng.next_u64() % 3 == 0).then(|| [0, 200, 2_000][(rng.next_u64() % 3) as usize]);
        // Which rows an unordered LIMIT keeps depends on the order rows
        // reach it, which spilling changes: the same engine run decides.
        let space = MemorySpace::default();
        let spill = task_memory.map(|limit_bytes| Spill { limit_bytes, space: &space });
        for j in &mut jobs {
            if let Expect::CountAndLocal { local, .. } = &mut j.expect {
                let stages = cut(&j.plan, j.config).expect("a random plan cuts");
                *local = batches_to_rows(&run_stages_spilling(&stages, None, spill).expect("a random plan runs locally"));
            }
        }
        Scenario { seed, workers, jobs, faults, task_memory }
    }

    /// A readable account: workers, jobs with their stages and plans,
    /// faults.
    pub fn describe(&self, sim_settings: &str) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "  seed {}: {} workers; {sim_settings}", self.seed, self.workers);
        for j in &self.jobs {
            let stages = cut(&j.plan, j.config)
                .map(|st| st.iter().map(|s| format!("{}x{}<-{:?}", s.id, s.partitions, s.parents)).collect::<Vec<_>>().join(" "));
            let cancel = j.cancel_at.map(|t| format!(", cancelled at {t} ms")).unwrap_or_default();
            let _ = writeln!(
                s,
                "  job {}: {}, submitted at {} ms{cancel}; shuffle partitions {}; stages {}",
                j.id,
                j.what,
                j.submit_at,
                j.config.shuffle_partitions,
                stages.unwrap_or_else(|e| format!("(does not cut: {e})"))
            );
            for line in j.plan.display_indent().lines() {
                let _ = writeln!(s, "      {line}");
            }
        }
        if self.faults.is_empty() {
            let _ = writeln!(s, "  no faults");
        }
        for f in &self.faults {
            let _ = writeln!(s, "  fault {f}");
        }
        s
    }
}

/// One seed's run.
pub struct SeedRun {
    pub simulated_ms: u64,
    pub failure: Option<String>,
    /// The scenario: workers, jobs, faults, settings.
    pub scenario: String,
    /// One line per event (only when asked for).
    pub history: Vec<String>,
    pub digest: u64,
    pub stats: Stats,
    /// Bytes the tasks wrote to runs.
    pub spilled_bytes: u64,
}

/// Runs the scenario of `seed`; `record` keeps its history.
pub fn run_seed(seed: u64, record: bool) -> SeedRun {
    let scenario = Scenario::new(seed);
    let mut sim = Sim::new(seed, scenario.workers, EngineExecutor { task_memory: scenario.task_memory, space: MemorySpace::default() });
    if record {
        sim.record();
    }
    let settings = format!(
        "slots {:?}; speculation quantile {} multiplier {}; {}% of task runs fail (once per partition); {}",
        sim.slots(),
        sim.config().speculation_quantile,
        sim.config().speculation_multiplier,
        sim.fail_pct(),
        match scenario.task_memory {
            Some(b) => format!("tasks spill past {b} bytes"),
            None => "no memory limit".to_string(),
        }
    );
    let mut failure = None;
    for j in &scenario.jobs {
        match cut(&j.plan, j.config) {
            Ok(stages) => {
                let expect = j.expect.clone();
                let check = Box::new(move |results: &[Vec<u8>]| {
                    let batches = decode_results(results).map_err(|e| format!("the results do not decode: {e}"))?;
                    expect.check(&batches_to_rows(&batches))
                });
                sim.add_job(j.id, job_spec(&stages), j.submit_at, j.cancel_at, check);
            }
            Err(e) => failure = Some(format!("job {} does not cut into stages: {e}", j.id)),
        }
    }
    sim.add_faults(&scenario.faults);
    if failure.is_none() {
        failure = sim.run().err();
    }
    SeedRun {
        simulated_ms: sim.now().max(0) as u64,
        failure,
        scenario: scenario.describe(&settings),
        history: sim.history().to_vec(),
        digest: sim.digest(),
        stats: sim.stats(),
        spilled_bytes: sim.executor().space.written(),
    }
}
