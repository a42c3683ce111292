//! `chaos`: runs seeds through the deterministic simulator and checks each
//! history. Build and run it through `scripts/chaos`, which compiles with
//! `--cfg madsim` into its own target folder.

#[cfg(not(madsim))]
fn main() {
    eprintln!("chaos runs only in a simulator build: use scripts/chaos (it builds with RUSTFLAGS=\"--cfg madsim\")");
    std::process::exit(2);
}

#[cfg(madsim)]
fn main() {
    std::process::exit(sim_main::main());
}

#[cfg(madsim)]
mod sim_main {
    use std::io::Write;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    use clap::Parser;
    use millrace_fault::Suite;
    use millrace_properties::checkers;
    use millrace_sim::cluster::{self, Scenario};

    #[derive(Parser, Clone)]
    #[command(about = "Run chaos seeds through the Millrace simulator")]
    struct Args {
        /// How many seeds to run.
        #[arg(long, default_value_t = 100)]
        seeds: u64,
        /// First seed.
        #[arg(long, default_value_t = 0)]
        start: u64,
        /// crash, disk, network, mixed, groups, replication, controller, or all (seed s runs one of the
        /// first four, s mod 4).
        #[arg(long, default_value = "all")]
        suite: String,
        /// Run one seed, print its fault plan, history path and verdict.
        #[arg(long)]
        replay: Option<u64>,
        /// Brokers per run.
        #[arg(long, default_value_t = 1)]
        nodes: usize,
        /// Simulated seconds of faults per run (a heal phase follows).
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Seeds run in parallel (each on its own OS thread and runtime).
        #[arg(long, default_value_t = std::thread::available_parallelism().map_or(1, |n| n.get()))]
        jobs: usize,
        /// Run each seed twice and fail unless the histories are identical.
        #[arg(long)]
        check_determinism: bool,
        /// Where failing seeds' histories are written.
        #[arg(long, default_value = "target/chaos")]
        out: PathBuf,
    }

    struct SeedResult {
        seed: u64,
        suite: Suite,
        simulated_ms: u64,
        failure: Option<String>,
        plan: String,
        history: String,
        digest: u64,
    }

    fn suite_for(args: &Args, seed: u64) -> Result<Suite, String> {
        if args.suite == "all" {
            return Ok(Suite::ALL[(seed % Suite::ALL.len() as u64) as usize]);
        }
        Suite::from_name(&args.suite).ok_or_else(|| format!("unknown suite {:?}: use crash, disk, network, mixed, groups, replication, controller or all", args.suite))
    }

    fn replay_command(args: &Args, seed: u64, suite: Suite) -> String {
        format!("scripts/chaos --replay {seed} --suite {} --nodes {} --duration {}", suite.name(), args.nodes, args.duration)
    }

    /// Wall-clock bound of one seed: a hung run is reported as a failure
    /// with its seed instead of stalling the whole runner.
    const SEED_WALL_LIMIT: std::time::Duration = std::time::Duration::from_secs(300);

    /// Runs `f` on its own thread; `Err(None)` if it did not finish within
    /// [`SEED_WALL_LIMIT`] (the thread is abandoned), `Err(Some(panic))` if
    /// it panicked.
    fn run_bounded<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Option<Box<dyn std::any::Any + Send>>> {
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

    fn run_seed(args: &Args, seed: u64, suite: Suite) -> SeedResult {
        let scenario = Scenario::new(seed, suite, args.nodes, args.duration * 1000);
        let durable = scenario.durable_acks();
        let plan = format!("{}  scenario: {}\n", scenario.plan(), scenario.describe());
        let s = scenario.clone();
        // A fresh OS thread per run: madsim and std's per-thread state must
        // not carry over between seeds.
        let ran = run_bounded(move || cluster::run(&s));
        let outcome = match ran {
            Ok(o) => o,
            Err(None) => {
                let failure = format!("the simulation hung: no result after {} s of wall time (a loop that never lets simulated time pass, or a runaway run)", SEED_WALL_LIMIT.as_secs());
                return SeedResult { seed, suite, simulated_ms: 0, failure: Some(failure), plan, history: String::new(), digest: 0 };
            }
            Err(Some(panic)) => {
                let msg = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "panic".into());
                return SeedResult { seed, suite, simulated_ms: 0, failure: Some(format!("the simulation panicked: {msg}")), plan, history: String::new(), digest: 0 };
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
        SeedResult { seed, suite, simulated_ms: outcome.simulated_ms, failure, plan, history: outcome.history.to_text(), digest }
    }

    fn report_failure(args: &Args, r: &SeedResult) {
        let _ = std::fs::create_dir_all(&args.out);
        let path = args.out.join(format!("seed-{}-{}.history.txt", r.seed, r.suite.name()));
        let _ = std::fs::write(&path, &r.history);
        println!("\nFAILED seed {} (suite {}):", r.seed, r.suite.name());
        println!("{}", r.failure.as_deref().unwrap_or(""));
        print!("{}", r.plan);
        println!("  history: {}", path.display());
        println!("  replay:  {}", replay_command(args, r.seed, r.suite));
    }

    pub fn main() -> i32 {
        let args = Args::parse();
        // CHAOS_LOG=debug (an env-filter expression) shows the nodes' logs,
        // stamped with simulated time: useful with --replay.
        if let Ok(filter) = std::env::var("CHAOS_LOG") {
            tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::new(filter)).with_writer(std::io::stderr).init();
        }
        if let Some(seed) = args.replay {
            let suite = match suite_for(&args, seed) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("{e}");
                    return 2;
                }
            };
            let r = run_seed(&args, seed, suite);
            print!("{}", r.plan);
            let _ = std::fs::create_dir_all(&args.out);
            let path = args.out.join(format!("seed-{seed}-{}.history.txt", suite.name()));
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
        println!(
            "chaos: {} seeds from {} (suite {}, {} node(s), {} s of faults each, {} jobs{})",
            args.seeds,
            args.start,
            args.suite,
            args.nodes,
            args.duration,
            args.jobs,
            if args.check_determinism { ", each run twice" } else { "" }
        );
        let next = Arc::new(AtomicU64::new(0));
        let results = Arc::new(Mutex::new(Vec::new()));
        let started = Instant::now();
        let mut workers = Vec::new();
        for _ in 0..args.jobs.max(1) {
            let (args, next, results, seeds) = (args.clone(), next.clone(), results.clone(), seeds.clone());
            workers.push(std::thread::spawn(move || loop {
                let i = next.fetch_add(1, Ordering::SeqCst) as usize;
                let Some(&seed) = seeds.get(i) else { return };
                let suite = suite_for(&args, seed).expect("checked above");
                let r = run_seed(&args, seed, suite);
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
            }));
        }
        for w in workers {
            let _ = w.join();
        }
        let all = results.lock().unwrap();
        let failed: Vec<u64> = all.iter().filter(|x| x.2).map(|x| x.0).collect();
        let wall = started.elapsed().as_secs_f64();
        let sim_s: f64 = all.iter().map(|x| x.1 as f64 / 1000.0).sum();
        println!(
            "speed: {:.0} simulated seconds per wall second ({:.0} per job), {:.1} seeds per minute, {} node(s)",
            sim_s / wall,
            sim_s / wall / args.jobs.max(1) as f64,
            all.len() as f64 / wall * 60.0,
            args.nodes
        );
        if !failed.is_empty() {
            println!("failing seeds: {failed:?}");
        }
        println!("{} passed, {} failed", all.len() - failed.len(), failed.len());
        i32::from(!failed.is_empty())
    }
}
