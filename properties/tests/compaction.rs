//! Properties of log compaction: over random keyed records with tombstones,
//! random batch and segment sizes, random step budgets and appends between
//! passes, the cleaner keeps the latest record of every key at its original
//! offset, removes every superseded record from the segments it cleaned,
//! removes tombstones exactly when they are old enough, never moves an
//! offset, and leaves a log that recovery reopens to the same content —
//! also when the process dies between any two steps.

use std::collections::BTreeMap;

use millrace_core::log::{CleanProgress, CleanSummary, Cleaner, CleanerLimits, CleanupPolicy, LogConfig, PartitionLog};
use millrace_core::records::{self, BatchBuilder, BatchHeader, Compression, Record};
use millrace_core::storage::MemStorage;
use proptest::prelude::*;

const DIR: &str = "c-0";
const DELETE_RETENTION_MS: i64 = 50;

/// One produced record: key index, value (None = tombstone).
type Op = (u8, Option<u16>);

#[derive(Debug, Clone)]
struct Batch {
    ops: Vec<Op>,
    timestamp: i64,
    compression: Compression,
}

fn arb_batch() -> impl Strategy<Value = Batch> {
    (
        prop::collection::vec((0u8..12, prop::option::weighted(0.85, any::<u16>())), 1..6),
        0i64..100,
        prop::sample::select(vec![Compression::None, Compression::None, Compression::Lz4, Compression::Gzip]),
    )
        .prop_map(|(ops, timestamp, compression)| Batch { ops, timestamp, compression })
}

fn config(segment_bytes: u64) -> LogConfig {
    LogConfig {
        segment_bytes,
        index_interval_bytes: 128,
        cleanup_policy: CleanupPolicy::Compact,
        delete_retention_ms: DELETE_RETENTION_MS,
        ..LogConfig::default()
    }
}

fn key(k: u8) -> Vec<u8> {
    format!("key-{k}").into_bytes()
}

/// What was produced at each offset: (key, value, timestamp).
type Produced = BTreeMap<i64, (Vec<u8>, Option<Vec<u8>>, i64)>;
/// Per key, its latest record: (offset, value, timestamp).
type Latest = BTreeMap<Vec<u8>, (i64, Option<Vec<u8>>, i64)>;

fn append(log: &mut PartitionLog, s: &mut MemStorage, batches: &[Batch], produced: &mut Produced) {
    for b in batches {
        let mut builder = BatchBuilder::new(b.compression);
        for (k, v) in &b.ops {
            builder.push(Record {
                timestamp: b.timestamp,
                key: Some(key(*k)),
                value: v.map(|v| format!("value-{v}").into_bytes()),
                ..Record::default()
            });
        }
        let h = log.append(s, &mut builder.build()).unwrap();
        for (i, (k, v)) in b.ops.iter().enumerate() {
            produced.insert(h.base_offset + i as i64, (key(*k), v.map(|v| format!("value-{v}").into_bytes()), b.timestamp));
        }
    }
}

/// Every record the log serves and every batch header, checking that batch
/// offsets are dense from the log start to the log end.
fn contents(log: &PartitionLog, s: &mut MemStorage) -> (Vec<Record>, Vec<BatchHeader>) {
    let mut recs = Vec::new();
    let mut headers = Vec::new();
    let mut offset = log.log_start_offset();
    while offset < log.log_end_offset() {
        let bytes = log.read(s, offset, 1 << 16).unwrap();
        assert!(!bytes.is_empty());
        for b in records::split_batches(&bytes) {
            let (h, b) = b.unwrap();
            assert_eq!(h.base_offset, offset, "batch offsets are dense");
            offset = h.last_offset() + 1;
            recs.extend(records::decode_records(b).unwrap().1);
            headers.push(h);
        }
    }
    (recs, headers)
}

/// Key -> (offset, value) of its latest record among `offsets < below`.
fn latest(produced: &Produced, below: i64) -> Latest {
    produced.range(..below).map(|(&o, (k, v, ts))| (k.clone(), (o, v.clone(), *ts))).collect()
}

/// What a reader concludes per key: its live value and offset; a deleted
/// key (tombstone or nothing) is absent.
fn view(recs: &[Record]) -> BTreeMap<Vec<u8>, (i64, Vec<u8>)> {
    let mut last: BTreeMap<Vec<u8>, (i64, Option<Vec<u8>>)> = BTreeMap::new();
    for r in recs {
        last.insert(r.key.clone().unwrap(), (r.offset, r.value.clone()));
    }
    last.into_iter().filter_map(|(k, (o, v))| Some((k, (o, v?)))).collect()
}

fn expected_view(produced: &Produced) -> BTreeMap<Vec<u8>, (i64, Vec<u8>)> {
    latest(produced, i64::MAX).into_iter().filter_map(|(k, (o, v, _))| Some((k, (o, v?)))).collect()
}

/// Runs one pass to the end; after every step, what a crash would leave
/// must reopen to the same view of every key.
struct Pass {
    first_dirty: i64,
    now: i64,
    budget: u64,
    limits: CleanerLimits,
}

fn clean(log: &mut PartitionLog, s: &mut MemStorage, pass: &Pass, produced: &Produced, config: &LogConfig) -> CleanSummary {
    let want = expected_view(produced);
    let (now, budget) = (pass.now, pass.budget);
    let mut cleaner = Cleaner::new(pass.first_dirty, pass.limits);
    for _ in 0..100_000 {
        let progress = cleaner.step(log, s, now, budget, &|_| false).unwrap();
        let mut crashed = s.clone();
        let (reopened, report) = PartitionLog::open(&mut crashed, DIR, config.clone(), &mut |_| {}).unwrap();
        assert_eq!(report.truncated_bytes, 0);
        assert_eq!(view(&contents(&reopened, &mut crashed).0), want, "a crash here would change what readers see");
        match progress {
            CleanProgress::Working => {}
            CleanProgress::Done(summary) => return summary,
            CleanProgress::Aborted(why) => panic!("aborted: {why}"),
        }
    }
    panic!("the cleaner never finished");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn compaction_keeps_the_latest_record_of_every_key_at_its_offset(
        rounds in prop::collection::vec(prop::collection::vec(arb_batch(), 1..25), 1..4),
        segment_bytes in prop::sample::select(vec![150u64, 300, 600, 2000]),
        budget in prop::sample::select(vec![1u64, 100, 700, 1 << 20]),
        clock in 0i64..200,
        // Small key maps clean a prefix of the dirty segments per pass (or
        // nothing, when one segment has more keys than fit).
        max_keys in prop::sample::select(vec![4usize, 8, 1 << 20]),
    ) {
        let limits = CleanerLimits { max_keys, ..CleanerLimits::default() };
        let config = config(segment_bytes);
        let mut s = MemStorage::new();
        let (mut log, _) = PartitionLog::open(&mut s, DIR, config.clone(), &mut |_| {}).unwrap();
        let mut produced = Produced::new();
        let mut first_dirty = 0;
        let mut now = clock;
        for (round, batches) in rounds.iter().enumerate() {
            append(&mut log, &mut s, batches, &mut produced);
            let end = log.log_end_offset();
            let pass = Pass { first_dirty, now, budget, limits };
            let summary = clean(&mut log, &mut s, &pass, &produced, &config);
            let cleaned = summary.cleaned_up_to;
            prop_assert!(cleaned >= first_dirty);
            prop_assert!(summary.stalled || max_keys < 12 || cleaned == log.segments().last().unwrap().base_offset, "a big enough map cleans every closed segment");
            prop_assert!(cleaned <= log.segments().last().unwrap().base_offset, "the active segment is never cleaned");
            prop_assert_eq!(log.log_end_offset(), end, "the log end never moves");
            let (recs, _) = contents(&log, &mut s);
            // Offsets of kept records are unchanged and strictly increasing.
            prop_assert!(recs.windows(2).all(|w| w[0].offset < w[1].offset));
            for r in &recs {
                let (k, v, _) = &produced[&r.offset];
                prop_assert_eq!((r.key.as_ref().unwrap(), &r.value), (k, v), "record at {} changed", r.offset);
            }
            let kept: BTreeMap<i64, &Record> = recs.iter().map(|r| (r.offset, r)).collect();
            // The latest value of every key is readable at its offset; a
            // tombstone stays while it is young.
            for (k, (o, v, ts)) in latest(&produced, i64::MAX) {
                let expired_tombstone = v.is_none() && o < cleaned && ts + DELETE_RETENTION_MS <= now;
                prop_assert_eq!(kept.contains_key(&o), !expired_tombstone, "latest of {:?} at {}", k, o);
            }
            // In the cleaned range: only the latest record of each key there,
            // and no tombstone that is old enough.
            let latest_cleaned = latest(&produced, cleaned);
            for r in recs.iter().filter(|r| r.offset < cleaned) {
                let (o, _, ts) = &latest_cleaned[r.key.as_ref().unwrap()];
                prop_assert_eq!(r.offset, *o, "superseded record {} survived in a cleaned segment", r.offset);
                if r.value.is_none() {
                    prop_assert!(ts + DELETE_RETENTION_MS > now, "expired tombstone at {} kept", r.offset);
                }
            }
            // Above the cleaned range nothing changed.
            for (o, _) in produced.range(cleaned..) {
                prop_assert!(kept.contains_key(o), "record {} above the cleaned range removed (round {})", o, round);
            }
            // Recovery reopens the log to the same content.
            let (reopened, report) = PartitionLog::open(&mut s, DIR, config.clone(), &mut |_| {}).unwrap();
            prop_assert_eq!(report.truncated_bytes, 0);
            prop_assert_eq!(contents(&reopened, &mut s).0, recs);
            log = reopened;
            first_dirty = cleaned;
            now += 40;
        }
    }
}
