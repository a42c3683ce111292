//! The batch driver and 3–5 workers in the shared in-memory harness
//! (`millrace_properties::batch::sim`: random message delays, crashes,
//! pauses, slow workers, lost shuffle files, congested links, injected task
//! failures, the driver's adapter noticing dropped connections) with a
//! fake executor whose answers are known.
//!
//! The fake executor: a source stage's partition emits numbers derived
//! from (job, stage, partition), a map stage with parents transforms the
//! numbers it reads, a shuffle-map task splits its numbers into buckets by
//! value mod the bucket count, and a result task returns "partition:sum".
//! The reference is the same plan evaluated directly. What the harness
//! checks is in its module documentation; here each job's results must
//! equal the reference, one per partition, each partition exactly once.
//! The batch chaos suite (`scripts/chaos --suite batch`) runs the same
//! harness with the engine's real tasks and more fault kinds.
//!
//! `PROPTEST_CASES` sets the number of cases (default 256);
//! `BATCH_SIM_SEEDS=N cargo test -p millrace-properties --test batch_sim
//! sweep -- --ignored --nocapture` runs seeds 0..N with faults drawn from
//! the seed and prints the failing ones.

use std::collections::BTreeMap;

use millrace_core::Millis;
use millrace_core::batch::*;
use millrace_core::rng::Rng;
use millrace_engine::job::Executed;
use millrace_properties::batch::sim::{Executor, Fault, FaultKind, Sim, Stats};
use proptest::prelude::*;

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
fn compute(salt: u64, stage: StageId, output: &StageOutput, partition: u32, input: Option<Vec<u64>>) -> (Option<Vec<Vec<u64>>>, Option<Vec<u8>>) {
    let numbers = match input {
        None => source(salt, stage, partition),
        Some(xs) if matches!(output, StageOutput::ShuffleMap { .. }) => transform(salt, stage, xs),
        Some(xs) => xs,
    };
    match *output {
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
            let (buckets, result) = compute(s, stage.id, &stage.output, p, input);
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

/// A bucket of numbers as a shuffle block.
fn encode(xs: &[u64]) -> Vec<u8> {
    xs.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn decode(block: &[u8]) -> Vec<u64> {
    block.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))).collect()
}

/// Runs the fake plan: a task with parents reads its bucket of every map
/// output it names, in order, and fails with `FetchFailed` at the first
/// it cannot fetch.
struct Fake;

impl Executor for Fake {
    fn execute(&mut self, task: &TaskDesc, fetch: &dyn Fn(StageId, &MapLocation, u32) -> Option<Vec<u8>>) -> Executed {
        let mut input = None;
        if !task.inputs.is_empty() {
            let mut numbers = Vec::new();
            for i in &task.inputs {
                for loc in &i.maps {
                    let Some(block) = fetch(i.shuffle, loc, task.partition) else {
                        let outcome = TaskOutcome::FetchFailed { shuffle: i.shuffle, map_partition: loc.map_partition, worker: loc.worker };
                        return Executed { outcome, blocks: None };
                    };
                    numbers.extend(decode(&block));
                }
            }
            input = Some(numbers);
        }
        let (buckets, result) = compute(salt(&task.payload), task.stage, &task.output, task.partition, input);
        Executed { outcome: TaskOutcome::Success { result }, blocks: buckets.map(|b| b.iter().map(|x| encode(x)).collect()) }
    }
}

/// The job's results must be the reference's: "p:sum" for each partition
/// p, once.
fn check(reference: Vec<Vec<u8>>) -> Box<dyn Fn(&[Vec<u8>]) -> Result<(), String>> {
    Box::new(move |results: &[Vec<u8>]| {
        let partitions: Vec<String> = results.iter().map(|r| String::from_utf8_lossy(r).split(':').next().unwrap_or("").to_string()).collect();
        let expected: Vec<String> = (0..reference.len()).map(|p| p.to_string()).collect();
        if partitions != expected {
            return Err(format!("result partitions {partitions:?}, expected each of 0..{} once", reference.len()));
        }
        if results != reference.as_slice() {
            let show = |v: &[Vec<u8>]| v.iter().map(|r| String::from_utf8_lossy(r).into_owned()).collect::<Vec<_>>();
            return Err(format!("results {:?}, reference {:?}", show(results), show(&reference)));
        }
        Ok(())
    })
}

/// Runs one scenario: one to three jobs submitted over the first second,
/// sometimes one more that is cancelled; Err describes the first
/// violation.
fn simulate(seed: u64, workers: usize, faults: &[Fault]) -> Result<(Stats, u64), String> {
    let mut sim = Sim::new(seed, workers, Fake);
    let jobs = 1 + sim.rng().next_u64() % 3;
    for job in 1..=jobs {
        let spec = random_job(sim.rng(), job, workers);
        let submit_at = (sim.rng().next_u64() % 1_000) as Millis;
        let reference = reference(&spec);
        sim.add_job(job, spec, submit_at, None, check(reference));
    }
    if sim.rng().next_u64() % 4 == 0 {
        // One more job, cancelled at some point (maybe after it ended).
        let job = jobs + 1;
        let spec = random_job(sim.rng(), job, workers);
        let submit_at = (sim.rng().next_u64() % 1_000) as Millis;
        let cancel_at = submit_at + (sim.rng().next_u64() % 300) as Millis;
        let reference = reference(&spec);
        sim.add_job(job, spec, submit_at, Some(cancel_at), check(reference));
    }
    sim.add_faults(faults);
    sim.run().map_err(|e| format!("seed {seed}, {workers} workers, faults {faults:?}: {e}"))?;
    Ok((sim.stats(), sim.digest()))
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
        total.add(&s);
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
