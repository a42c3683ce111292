//! `chaos`: runs seeds through the deterministic simulator and checks each
//! history. The cluster suites (crash, disk, network, mixed, groups,
//! replication, controller) need a simulator build: run them through
//! `scripts/chaos`, which compiles with `--cfg madsim` into its own target
//! folder. The batch suite (`--suite batch`: the batch driver and workers
//! running engine plans under faults, `millrace_properties::batch::chaos`)
//! simulates no nodes and runs in either build.

fn main() {
    std::process::exit(runner::main());
}

mod runner {
    use std::io::Write;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    use clap::Parser;
    #[cfg(madsim)]
    use millrace_fault::Suite;
    use millrace_properties::{batch, stream};

    #[derive(Parser, Clone)]
    #[command(about = "Run chaos seeds through the Millrace simulator")]
    pub(crate) struct Args {
        /// How many seeds to run.
        #[arg(long, default_value_t = 100)]
        pub seeds: u64,
        /// First seed.
        #[arg(long, default_value_t = 0)]
        pub start: u64,
        /// crash, disk, network, mixed, groups, replication, controller, batch, or all (seed s runs one of the
        /// first four, s mod 4).
        #[arg(long, default_value = "all")]
        pub suite: String,
        /// Run one seed, print its fault plan, history path and verdict.
        #[arg(long)]
        pub replay: Option<u64>,
        /// Brokers per run (cluster suites).
        #[arg(long, default_value_t = 1)]
        pub nodes: usize,
        /// Simulated seconds of faults per run, a heal phase follows (cluster suites).
        #[arg(long, default_value_t = 10)]
        pub duration: u64,
        /// Seeds run in parallel (each on its own OS thread and runtime).
        #[arg(long, default_value_t = std::thread::available_parallelism().map_or(1, |n| n.get()))]
        pub jobs: usize,
        /// Run each seed twice and fail unless the histories are identical.
        #[arg(long)]
        pub check_determinism: bool,
        /// Where failing seeds' histories are written.
        #[arg(long, default_value = "target/chaos")]
        pub out: PathBuf,
    }

    /// The harness a seed runs in.
    #[derive(Clone, Copy)]
    pub(crate) enum Which {
        /// The batch driver and workers with engine plans, no nodes.
        Batch,
        /// Stream query runners against modelled brokers, no nodes.
        Stream,
        /// A simulated cluster of nodes.
        #[cfg(madsim)]
        Cluster(Suite),
    }

    impl Which {
        fn name(self) -> &'static str {
            match self {
                Which::Batch => "batch",
                Which::Stream => "stream",
                #[cfg(madsim)]
                Which::Cluster(s) => s.name(),
            }
        }
    }

    pub(crate) struct SeedResult {
        pub seed: u64,
        pub which: Which,
        pub simulated_ms: u64,
        pub failure: Option<String>,
        pub plan: String,
        pub history: String,
        pub digest: u64,
    }

    fn suite_for(args: &Args, seed: u64) -> Result<Which, String> {
        if args.suite == "batch" {
            return Ok(Which::Batch);
        }
        if args.suite == "stream" {
            return Ok(Which::Stream);
        }
        #[cfg(madsim)]
        {
            if args.suite == "all" {
                return Ok(Which::Cluster(Suite::ALL[(seed % Suite::ALL.len() as u64) as usize]));
            }
            Suite::from_name(&args.suite).map(Which::Cluster).ok_or_else(|| {
                format!("unknown suite {:?}: use crash, disk, network, mixed, groups, replication, controller, batch, stream or all", args.suite)
            })
        }
        #[cfg(not(madsim))]
        {
            let _ = seed;
            Err(format!(
                "suite {:?} runs only in a simulator build: use scripts/chaos (it builds with RUSTFLAGS=\"--cfg madsim\"); only --suite batch and --suite stream run in this build",
                args.suite
            ))
        }
    }

    fn replay_command(args: &Args, seed: u64, which: Which) -> String {
        #[cfg(not(madsim))]
        let _ = args;
        match which {
            Which::Batch => format!("scripts/chaos --replay {seed} --suite batch"),
            Which::Stream => format!("scripts/chaos --replay {seed} --suite stream"),
            #[cfg(madsim)]
            Which::Cluster(suite) => {
                format!("scripts/chaos --replay {seed} --suite {} --nodes {} --duration {}", suite.name(), args.nodes, args.duration)
            }
        }
    }

    /// Wall-clock bound of one seed: a hung run is reported as a failure
    /// with its seed instead of stalling the whole runner.
    pub(crate) const SEED_WALL_LIMIT: std::time::Duration = std::time::Duration::from_secs(300);

    /// Runs `f` on its own thread; `Err(None)` if it did not finish within
    /// [`SEED_WALL_LIMIT`] (the thread is abandoned), `Err(Some(panic))` if
    /// it panicked.
    pub(crate) fn run_bounded<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Option<Box<dyn std::any::Any + Send>>> {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
        });
        match rx.recv_timeout(SEED_WALL_LIMIT) {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(panic)) => Err(Some(panic)),
            Err(_) => Err(None),
        }
    }

    /// Why a bounded run gave no result.
    pub(crate) fn no_result(e: Option<Box<dyn std::any::Any + Send>>) -> String {
        match e {
            None => format!(
                "the simulation hung: no result after {} s of wall time (a loop that never lets simulated time pass, or a runaway run)",
                SEED_WALL_LIMIT.as_secs()
            ),
            Some(panic) => {
                let msg = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "panic".into());
                format!("the simulation panicked: {msg}")
            }
        }
    }

    fn run_seed(args: &Args, seed: u64, which: Which) -> SeedResult {
        match which {
            Which::Batch => batch_seed(args, seed),
            Which::Stream => stream_seed(args, seed),
            #[cfg(madsim)]
            Which::Cluster(suite) => super::cluster::run_seed(args, seed, suite),
        }
    }

    /// One run of an in-process suite (batch, stream), reduced to what the
    /// runner reports.
    struct InProcess {
        failure: Option<String>,
        digest: u64,
        simulated_ms: u64,
        /// The scenario and what happened in it.
        plan: String,
        history: Vec<String>,
    }

    /// One seed of an in-process suite. Its history is kept when
    /// replaying, and for a failing seed by running it once more (it is
    /// deterministic); with `--check-determinism` it runs twice.
    fn in_process_seed(args: &Args, seed: u64, which: Which, describe: impl Fn() -> String, run: impl Fn(bool) -> InProcess + Copy + Send + 'static) -> SeedResult {
        let record = args.replay.is_some();
        let attempt = |record: bool| run_bounded(move || run(record));
        let mut r = match attempt(record) {
            Ok(r) => r,
            Err(e) => {
                let failure = Some(format!("    {}", no_result(e)));
                return SeedResult { seed, which, simulated_ms: 0, failure, plan: describe(), history: String::new(), digest: 0 };
            }
        };
        let mut failure = r.failure.take().map(|f| format!("    {f}"));
        if args.check_determinism && failure.is_none() {
            match attempt(false) {
                Ok(again) if again.digest == r.digest && again.failure.is_none() => {}
                Ok(again) => failure = Some(format!("    [determinism] same seed, different history: {:016x} then {:016x}", r.digest, again.digest)),
                Err(e) => failure = Some(format!("    [determinism] the second run gave no result: {}", no_result(e))),
            }
        }
        if failure.is_some() && !record {
            if let Ok(again) = attempt(true) {
                r.history = again.history;
            }
        }
        let mut history = r.history.join("\n");
        history.push('\n');
        SeedResult { seed, which, simulated_ms: r.simulated_ms, failure, plan: r.plan, history, digest: r.digest }
    }

    fn batch_seed(args: &Args, seed: u64) -> SeedResult {
        let describe = || batch::chaos::Scenario::new(seed).describe("");
        in_process_seed(args, seed, Which::Batch, describe, move |record| {
            let r = batch::chaos::run_seed(seed, record);
            let s = r.stats;
            let plan = format!(
                "{}  ran: {} launches, {} fetch failures ({} across a split), {} injected task failures, {} speculative copies, {} kills, {} crashes, {} messages lost with broken connections, {} CleanJobs lost with a broken connection (sent again on re-registration)\n",
                r.scenario, s.launches, s.fetch_failures, s.split_fetches, s.injected_failures, s.speculative, s.kills, s.crashes, s.dropped, s.lost_cleanups
            );
            InProcess { failure: r.failure, digest: r.digest, simulated_ms: r.simulated_ms, plan, history: r.history }
        })
    }

    fn stream_seed(args: &Args, seed: u64) -> SeedResult {
        let describe = || stream::sim::Scenario::new(seed).describe();
        in_process_seed(args, seed, Which::Stream, describe, move |record| {
            let r = stream::chaos::run_seed(seed, record);
            let s = &r.stats;
            let plan = format!(
                "{}  query: {}\n  ran: {} batches, {} crashes, {} zombies, {} batch failures, {} ambiguous appends, {} duplicate chunks dropped, {} records in, {} out\n  logs: {} entries purged, {} records compacted away, {} appends outrun\n",
                r.scenario.describe(), r.query, s.batches, s.crashes, s.zombies, s.batch_failures, s.ambiguous_appends, s.skipped_chunks, s.input_records, s.output_records,
                s.purged, s.compacted, s.outruns
            );
            InProcess { failure: r.failure, digest: r.digest, simulated_ms: r.simulated_ms as u64, plan, history: r.history }
        })
    }

    fn report_failure(args: &Args, r: &SeedResult) {
        let _ = std::fs::create_dir_all(&args.out);
        let path = args.out.join(format!("seed-{}-{}.history.txt", r.seed, r.which.name()));
        let _ = std::fs::write(&path, &r.history);
        println!("\nFAILED seed {} (suite {}):", r.seed, r.which.name());
        println!("{}", r.failure.as_deref().unwrap_or(""));
        print!("{}", r.plan);
        println!("  history: {}", path.display());
        println!("  replay:  {}", replay_command(args, r.seed, r.which));
    }

    pub fn main() -> i32 {
        let args = Args::parse();
        // CHAOS_LOG=debug (an env-filter expression) shows the nodes' logs,
        // stamped with simulated time: useful with --replay.
        if let Ok(filter) = std::env::var("CHAOS_LOG") {
            tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::new(filter)).with_writer(std::io::stderr).init();
        }
        if let Some(seed) = args.replay {
            let which = match suite_for(&args, seed) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("{e}");
                    return 2;
                }
            };
            let r = run_seed(&args, seed, which);
            print!("{}", r.plan);
            let _ = std::fs::create_dir_all(&args.out);
            let path = args.out.join(format!("seed-{seed}-{}.history.txt", which.name()));
            let _ = std::fs::write(&path, &r.history);
            println!("history: {} ({} events, digest {:016x})", path.display(), r.history.lines().count(), r.digest);
            return match &r.failure {
                None => {
                    println!("1 passed, 0 failed");
                    0
                }
                Some(f) => {
                    println!("{f}\n0 passed, 1 failed");
                    1
                }
            };
        }
        let seeds: Vec<u64> = (args.start..args.start + args.seeds).collect();
        for &seed in &seeds {
            if let Err(e) = suite_for(&args, seed) {
                eprintln!("{e}");
                return 2;
            }
        }
        let twice = if args.check_determinism { ", each run twice" } else { "" };
        if args.suite == "batch" {
            println!(
                "chaos: {} seeds from {} (suite batch: a driver and 3-5 workers running engine plans, {} jobs{twice})",
                args.seeds, args.start, args.jobs
            );
        } else if args.suite == "stream" {
            println!(
                "chaos: {} seeds from {} (suite stream: query runners that crash and come back as zombies, brokers that fail, {} jobs{twice})",
                args.seeds, args.start, args.jobs
            );
        } else {
            println!(
                "chaos: {} seeds from {} (suite {}, {} node(s), {} s of faults each, {} jobs{twice})",
                args.seeds, args.start, args.suite, args.nodes, args.duration, args.jobs
            );
        }
        let next = Arc::new(AtomicU64::new(0));
        let results = Arc::new(Mutex::new(Vec::new()));
        let started = Instant::now();
        let mut workers = Vec::new();
        for _ in 0..args.jobs.max(1) {
            let (args, next, results, seeds) = (args.clone(), next.clone(), results.clone(), seeds.clone());
            workers.push(std::thread::spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst) as usize;
                    let Some(&seed) = seeds.get(i) else { return };
                    let which = suite_for(&args, seed).expect("checked above");
                    let r = run_seed(&args, seed, which);
                    let mut all = results.lock().unwrap();
                    if r.failure.is_some() {
                        report_failure(&args, &r);
                    }
                    all.push((r.seed, r.simulated_ms, r.failure.is_some()));
                    let done = all.len();
                    if done % 10 == 0 || done == seeds.len() {
                        let failed = all.iter().filter(|x| x.2).count();
                        let sim_s: f64 = all.iter().map(|x| x.1 as f64 / 1000.0).sum();
                        let wall = started.elapsed().as_secs_f64();
                        println!(
                            "[{done:>5}/{}] {} passed, {failed} failed  ({:.0} simulated s per wall s, {:.1} s elapsed)",
                            seeds.len(),
                            done - failed,
                            sim_s / wall,
                            wall
                        );
                        let _ = std::io::stdout().flush();
                    }
                }
            }));
        }
        for w in workers {
            let _ = w.join();
        }
        let all = results.lock().unwrap();
        let failed: Vec<u64> = all.iter().filter(|x| x.2).map(|x| x.0).collect();
        let wall = started.elapsed().as_secs_f64();
        let sim_s: f64 = all.iter().map(|x| x.1 as f64 / 1000.0).sum();
        let nodes = if args.suite == "batch" || args.suite == "stream" { String::new() } else { format!(", {} node(s)", args.nodes) };
        println!(
            "speed: {:.0} simulated seconds per wall second ({:.0} per job), {:.1} seeds per minute{nodes}",
            sim_s / wall,
            sim_s / wall / args.jobs.max(1) as f64,
            all.len() as f64 / wall * 60.0,
        );
        if !failed.is_empty() {
            println!("failing seeds: {failed:?}");
        }
        println!("{} passed, {} failed", all.len() - failed.len(), failed.len());
        i32::from(!failed.is_empty())
    }
}

/// The cluster suites: a simulated cluster per seed, its history judged by
/// the checkers.
#[cfg(madsim)]
mod cluster {
    use millrace_fault::Suite;
    use millrace_properties::checkers;
    use millrace_sim::cluster::{self, Scenario};

    use super::runner::{Args, SeedResult, Which, no_result, run_bounded};

    pub(crate) fn run_seed(args: &Args, seed: u64, suite: Suite) -> SeedResult {
        let which = Which::Cluster(suite);
        let scenario = Scenario::new(seed, suite, args.nodes, args.duration * 1000);
        let durable = scenario.durable_acks();
        let plan = format!("{}  scenario: {}\n", scenario.plan(), scenario.describe());
        let s = scenario.clone();
        // A fresh OS thread per run: madsim and std's per-thread state must
        // not carry over between seeds.
        let ran = run_bounded(move || cluster::run(&s));
        let outcome = match ran {
            Ok(o) => o,
            Err(e) => {
                return SeedResult { seed, which, simulated_ms: 0, failure: Some(no_result(e)), plan, history: String::new(), digest: 0 };
            }
        };
        let mut failure = None;
        let events = outcome.history.events();
        let heal = checkers::heal_time(&events).unwrap_or(outcome.simulated_ms);
        let violations = checkers::check(&events, heal, durable);
        if !violations.is_empty() {
            failure = Some(violations.iter().map(|v| format!("    {v}")).collect::<Vec<_>>().join("\n"));
        }
        let digest = outcome.history.digest();
        if args.check_determinism && failure.is_none() {
            let again = run_bounded(move || cluster::run(&scenario));
            match again {
                Ok(o) if o.history.digest() == digest => {}
                Ok(o) => failure = Some(format!("    [determinism] same seed, different history: {digest:016x} then {:016x}", o.history.digest())),
                Err(_) => failure = Some("    [determinism] the second run panicked or hung".into()),
            }
        }
        SeedResult { seed, which, simulated_ms: outcome.simulated_ms, failure, plan, history: outcome.history.to_text(), digest }
    }
}
