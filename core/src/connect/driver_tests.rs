//! The source driver against a modelled broker, offsets log and source,
//! with crashes at any point, lost answers and retriable failures: every
//! input record reaches the topic exactly once, each partition in order.

use std::collections::{BTreeMap, VecDeque};

use proptest::prelude::*;
use serde_json::json;

use super::api::{Source, SourceRecord};
use super::config::GeneratorKind;
use super::driver::{DriverConfig, DriverEffect, DriverInput, SourceDriver, records_crc};
use super::generator::Generator;
use super::source_log::{ChunkEntry, recover_source};
use crate::rng::Rng;
use crate::stream::ProduceOutcome;

/// One partition of an idempotent broker: per producer id, the last
/// sequence stored and the last five batches (Kafka's window).
#[derive(Default)]
struct Partition {
    records: Vec<Vec<u8>>,
    producers: BTreeMap<i64, (i32, VecDeque<(i32, i32)>)>,
}

impl Partition {
    fn produce(&mut self, pid: i64, base: i32, records: &[SourceRecord]) -> ProduceOutcome {
        let last = base + records.len() as i32 - 1;
        let (seq, window) = self.producers.entry(pid).or_insert((-1, VecDeque::new()));
        if window.contains(&(base, last)) {
            return ProduceOutcome::Duplicate;
        }
        if base != *seq + 1 {
            return ProduceOutcome::OutOfOrderSequence;
        }
        *seq = last;
        window.push_back((base, last));
        if window.len() > 5 {
            window.pop_front();
        }
        self.records.extend(records.iter().map(|r| r.value.clone()));
        ProduceOutcome::Written
    }
}

/// What happens to one effect.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fate {
    Ok,
    /// Fails before doing anything (retriable).
    Fail,
    /// Done, but the answer is lost (retriable failure seen).
    Lost,
    /// The node dies before it.
    CrashBefore,
    /// The node dies after it was done, before the answer.
    CrashAfter,
}

struct World {
    topic: Vec<Partition>,
    log: Vec<ChunkEntry>,
    next_pid: i64,
    source: Generator,
    /// Records the source has so far (it grows).
    available: u64,
}

fn config(partitions: u32, max_records: usize) -> DriverConfig {
    DriverConfig { partitions, max_records, rate: None, poll_ms: 100, initial: json!(0) }
}

/// Runs a driver until it is waiting with nothing to do or `fate` says it
/// crashed (answers false then).
fn run(world: &mut World, driver: &mut SourceDriver, now: &mut i64, mut fate: impl FnMut(&DriverEffect) -> Fate, steps: usize) -> bool {
    let mut queue: VecDeque<DriverEffect> = VecDeque::new();
    let mut out = Vec::new();
    driver.start(&mut out);
    queue.extend(out.drain(..));
    let mut held: Vec<SourceRecord> = Vec::new();
    let mut timers: Vec<i64> = Vec::new();
    for _ in 0..steps {
        let Some(effect) = queue.pop_front() else {
            let Some(at) = timers.iter().copied().min() else {
                return true;
            };
            timers.retain(|t| *t != at);
            *now = (*now).max(at);
            driver.step(*now, DriverInput::Tick, &mut out);
            queue.extend(out.drain(..));
            continue;
        };
        *now += 1;
        let f = match effect {
            DriverEffect::Timer { .. } | DriverEffect::Warn(_) | DriverEffect::Stopped { .. } => Fate::Ok,
            ref e => fate(e),
        };
        if f == Fate::CrashBefore {
            return false;
        }
        if f == Fate::Fail {
            driver.step(*now, DriverInput::Failed { reason: "down".into(), retriable: true }, &mut out);
            queue.extend(out.drain(..));
            continue;
        }
        let answer = match effect {
            DriverEffect::ReadLog => DriverInput::Recovered { last: recover_source(world.log.clone()).last },
            DriverEffect::NewProducer => {
                world.next_pid += 1;
                DriverInput::ProducerAllocated { producer_id: world.next_pid, producer_epoch: 0 }
            }
            DriverEffect::Read { at, from, max } => {
                let from = from.as_u64().unwrap();
                let max = max.min((world.available.saturating_sub(from)) as usize);
                let r = world.source.read(at, &from, max).unwrap();
                held = r.records;
                DriverInput::ReadDone { count: held.len(), crc: records_crc(&held), to: json!(r.to), partition: None }
            }
            DriverEffect::Reread { at, from, to, count } => {
                let r = world.source.reread(at, &from.as_u64().unwrap(), &to.as_u64().unwrap(), count).unwrap();
                held = r.records;
                DriverInput::ReadDone { count: held.len(), crc: records_crc(&held), to: json!(r.to), partition: None }
            }
            DriverEffect::LogChunk { entry } => {
                world.log.push(entry);
                DriverInput::ChunkLogged
            }
            DriverEffect::Produce { entry } => {
                assert_eq!(held.len(), entry.count as usize, "the records held are the chunk's");
                let outcome = world.topic[entry.partition as usize].produce(entry.producer_id, entry.base_sequence, &held);
                DriverInput::Produced { outcome }
            }
            DriverEffect::Timer { at } => {
                timers.push(at);
                continue;
            }
            DriverEffect::Warn(w) => panic!("no re-read should differ here: {w}"),
            DriverEffect::Stopped { error } => panic!("stopped: {error:?}"),
        };
        match f {
            Fate::CrashAfter => return false,
            Fate::Lost => driver.step(*now, DriverInput::Failed { reason: "lost".into(), retriable: true }, &mut out),
            _ => driver.step(*now, answer, &mut out),
        }
        queue.extend(out.drain(..));
    }
    true
}

fn delivered(world: &World) -> Vec<u64> {
    let mut all = Vec::new();
    for p in &world.topic {
        let seqs: Vec<u64> = p.records.iter().map(|v| String::from_utf8_lossy(v).parse().unwrap()).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "a partition out of order: {seqs:?}");
        all.extend(seqs);
    }
    all.sort();
    all
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Crashes anywhere (before or after any log append, produce or read),
    /// lost answers, failures, a source that grows between runs: after a
    /// last run without faults the topic holds records 0..n exactly once.
    #[test]
    fn any_crash_point_then_resume_delivers_each_record_once(
        seed in any::<u64>(),
        partitions in 1u32..4,
        max_records in 1usize..7,
        runs in 1usize..8,
        fault_per_mille in 0u64..400,
    ) {
        let mut world = World {
            topic: (0..partitions).map(|_| Partition::default()).collect(),
            log: Vec::new(),
            next_pid: 0,
            source: Generator { seed, kind: GeneratorKind::Sequence, count: None },
            available: 0,
        };
        let mut rng = Rng::new(seed);
        let mut now = 0;
        for _ in 0..runs {
            world.available += rng.next_u64() % 25;
            let mut driver = SourceDriver::new(config(partitions, max_records));
            let mut fate = |_: &DriverEffect| {
                if rng.next_u64() % 1000 >= fault_per_mille {
                    return Fate::Ok;
                }
                [Fate::Fail, Fate::Lost, Fate::CrashBefore, Fate::CrashAfter][(rng.next_u64() % 4) as usize]
            };
            run(&mut world, &mut driver, &mut now, &mut fate, 400);
        }
        let mut driver = SourceDriver::new(config(partitions, max_records));
        prop_assert!(run(&mut world, &mut driver, &mut now, |_| Fate::Ok, 100_000));
        prop_assert_eq!(delivered(&world), (0..world.available).collect::<Vec<_>>());
        prop_assert_eq!(driver.status().records_total, world.available);
    }
}

#[test]
fn a_chunk_that_reads_back_different_is_resent_under_a_new_producer() {
    let mut d = SourceDriver::new(config(1, 10));
    let mut out = vec![];
    d.start(&mut out);
    let entry = ChunkEntry {
        chunk: 4,
        from: json!(10),
        to: json!(13),
        count: 3,
        crc: 7,
        partition: 0,
        producer_id: 9,
        producer_epoch: 0,
        base_sequence: 30,
        next_sequences: vec![(0, 33)],
        timestamp: 5,
        records_total: 13,
    };
    out.clear();
    d.step(0, DriverInput::Recovered { last: Some(entry) }, &mut out);
    assert_eq!(out, vec![DriverEffect::Reread { at: 5, from: json!(10), to: json!(13), count: 3 }]);
    out.clear();
    d.step(1, DriverInput::ReadDone { count: 2, crc: 1, to: json!(12), partition: None }, &mut out);
    assert!(matches!(&out[..], [DriverEffect::Warn(w), DriverEffect::NewProducer] if w.contains("may reach the topic twice")), "{out:?}");
    out.clear();
    d.step(2, DriverInput::ProducerAllocated { producer_id: 10, producer_epoch: 0 }, &mut out);
    assert_eq!(out, vec![DriverEffect::Read { at: 2, from: json!(10), max: 10 }]);
    out.clear();
    d.step(3, DriverInput::ReadDone { count: 2, crc: 1, to: json!(12), partition: None }, &mut out);
    let [DriverEffect::LogChunk { entry }] = &out[..] else { panic!("{out:?}") };
    assert_eq!((entry.producer_id, entry.chunk, entry.base_sequence, entry.records_total), (10, 0, 0, 12));
}

#[test]
fn the_rate_spaces_reads_out() {
    let mut d = SourceDriver::new(DriverConfig { rate: Some(10), ..config(1, 100) });
    let mut out = vec![];
    d.start(&mut out);
    d.step(0, DriverInput::Recovered { last: None }, &mut out);
    d.step(0, DriverInput::ProducerAllocated { producer_id: 1, producer_epoch: 0 }, &mut out);
    assert_eq!(out.last(), Some(&DriverEffect::Read { at: 0, from: json!(0), max: 1 }), "one record at once");
    let send = |d: &mut SourceDriver, now: i64, count: usize, out: &mut Vec<DriverEffect>| {
        out.clear();
        d.step(now, DriverInput::ReadDone { count, crc: 0, to: json!(count), partition: None }, out);
        d.step(now, DriverInput::ChunkLogged, out);
        out.clear();
        d.step(now, DriverInput::Produced { outcome: ProduceOutcome::Written }, out);
    };
    send(&mut d, 0, 1, &mut out);
    assert_eq!(out, vec![DriverEffect::Timer { at: 200 }], "the second of 10/s is due at 200 ms");
    out.clear();
    d.step(1_000, DriverInput::Tick, &mut out);
    assert_eq!(out, vec![DriverEffect::Read { at: 1_000, from: json!(1), max: 9 }]);
    // At 1,000/s, reads take 100 records at a time, not one.
    let mut d = SourceDriver::new(DriverConfig { rate: Some(1_000), ..config(1, 500) });
    let mut out = vec![];
    d.start(&mut out);
    d.step(0, DriverInput::Recovered { last: None }, &mut out);
    d.step(0, DriverInput::ProducerAllocated { producer_id: 1, producer_epoch: 0 }, &mut out);
    send(&mut d, 0, 1, &mut out);
    assert_eq!(out, vec![DriverEffect::Timer { at: 101 }]);
    out.clear();
    d.step(101, DriverInput::Tick, &mut out);
    assert_eq!(out, vec![DriverEffect::Read { at: 101, from: json!(1), max: 100 }]);
}

#[test]
fn failures_back_off_and_retry_the_same_effect_and_fatal_ones_stop() {
    let mut d = SourceDriver::new(config(1, 10));
    let mut out = vec![];
    d.start(&mut out);
    out.clear();
    d.step(0, DriverInput::Failed { reason: "brokers down".into(), retriable: true }, &mut out);
    assert_eq!(out, vec![DriverEffect::Timer { at: 100 }]);
    assert_eq!(d.status().retrying.as_deref(), Some("brokers down"));
    out.clear();
    d.step(50, DriverInput::Tick, &mut out);
    assert!(out.is_empty());
    d.step(100, DriverInput::Tick, &mut out);
    assert_eq!(out, vec![DriverEffect::ReadLog]);
    out.clear();
    d.step(101, DriverInput::Failed { reason: "still down".into(), retriable: true }, &mut out);
    assert_eq!(out, vec![DriverEffect::Timer { at: 301 }], "the backoff doubles");
    out.clear();
    d.step(400, DriverInput::Failed { reason: "the path is a device".into(), retriable: false }, &mut out);
    assert_eq!(out, vec![DriverEffect::Stopped { error: Some("the path is a device".into()) }]);
    assert_eq!(d.status().state, "failed");
}
