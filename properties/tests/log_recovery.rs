//! Properties of the partition log: dense increasing offsets, and recovery
//! after a crash that tears or corrupts the log at any byte keeps exactly
//! the longest valid prefix.

use millrace_core::log::{LogConfig, PartitionLog};
use millrace_core::records::{self, BatchBuilder, Compression, Record};
use millrace_core::storage::MemStorage;
use proptest::prelude::*;

const DIR: &str = "t-0";

/// Builds a log from batches of the given sizes; returns the storage and
/// each stored batch's bytes, in offset order.
fn build_log(sizes: &[usize], segment_bytes: u64) -> (MemStorage, Vec<Vec<u8>>) {
    let mut storage = MemStorage::new();
    let config = LogConfig { segment_bytes, index_interval_bytes: 256, ..LogConfig::default() };
    let (mut log, _) = PartitionLog::open(&mut storage, DIR, config, &mut |_| {}).unwrap();
    let mut stored = Vec::new();
    let mut n = 0u64;
    for (i, &size) in sizes.iter().enumerate() {
        let mut b = BatchBuilder::new(if i % 3 == 0 { Compression::Lz4 } else { Compression::None });
        for _ in 0..size {
            b.push(Record { timestamp: n as i64, value: Some(format!("record-{n}").into_bytes()), ..Record::default() });
            n += 1;
        }
        let mut bytes = b.build();
        let h = log.append(&mut storage, &mut bytes).unwrap();
        assert_eq!(h.base_offset as u64, n - size as u64, "offsets are dense");
        stored.push(bytes);
    }
    log.sync(&mut storage).unwrap();
    (storage, stored)
}

/// Every batch the log serves, from offset 0 on.
fn read_back(storage: &mut MemStorage, log: &PartitionLog) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut offset = log.log_start_offset();
    while offset < log.log_end_offset() {
        let bytes = log.read(storage, offset, 1 << 20).unwrap();
        assert!(!bytes.is_empty(), "a read below the log end returns data");
        for b in records::split_batches(&bytes) {
            let (h, b) = b.unwrap();
            assert_eq!(h.base_offset, offset, "offsets are dense and increasing");
            offset = h.last_offset() + 1;
            out.push(b.to_vec());
        }
    }
    out
}

/// Masks the partition leader epoch, which no checksum covers.
fn masked(b: &[u8]) -> Vec<u8> {
    let mut b = b.to_vec();
    b[12..16].fill(0);
    b
}

/// Where each batch lives: (file index, start, end).
fn layout(storage: &MemStorage, stored: &[Vec<u8>]) -> Vec<(usize, usize, usize)> {
    let files: Vec<Vec<u8>> = storage.files().map(|(_, d)| d.clone()).collect();
    let mut out = Vec::new();
    let (mut file, mut pos) = (0, 0);
    for b in stored {
        if pos + b.len() > files[file].len() {
            file += 1;
            pos = 0;
        }
        out.push((file, pos, pos + b.len()));
        pos += b.len();
    }
    out
}

#[derive(Debug, Clone)]
enum Damage {
    /// Cut a file at this fraction of its length (a torn or lost write).
    Truncate { file: prop::sample::Index, at: prop::sample::Index },
    /// Flip bits of one byte (a corrupt sector).
    Corrupt { file: prop::sample::Index, at: prop::sample::Index, mask: u8 },
}

fn arb_damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        (any::<prop::sample::Index>(), any::<prop::sample::Index>()).prop_map(|(file, at)| Damage::Truncate { file, at }),
        (any::<prop::sample::Index>(), any::<prop::sample::Index>(), 1u8..=255)
            .prop_map(|(file, at, mask)| Damage::Corrupt { file, at, mask }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn recovery_keeps_exactly_the_longest_valid_prefix(
        sizes in prop::collection::vec(1usize..8, 1..40),
        segment_bytes in prop::sample::select(vec![300u64, 1000, 1 << 20]),
        damage in arb_damage(),
    ) {
        let (mut storage, stored) = build_log(&sizes, segment_bytes);
        let where_ = layout(&storage, &stored);
        let names: Vec<String> = storage.files().map(|(n, _)| n.clone()).collect();
        // The first batch (in log order) that the damage touches, if any.
        let (file, first_bad) = match damage {
            Damage::Truncate { file, at } => {
                let f = file.index(names.len());
                let data = storage.file_mut(&names[f]).unwrap();
                let cut = at.index(data.len() + 1);
                data.truncate(cut);
                (f, where_.iter().position(|&(wf, _, end)| wf == f && end > cut))
            }
            Damage::Corrupt { file, at, mask } => {
                let f = file.index(names.len());
                let data = storage.file_mut(&names[f]).unwrap();
                if data.is_empty() {
                    return Ok(());
                }
                let i = at.index(data.len());
                data[i] ^= mask;
                let hit = where_.iter().position(|&(wf, start, end)| wf == f && start <= i && i < end).unwrap();
                let in_epoch = (12..16).contains(&(i - where_[hit].1));
                (f, if in_epoch { None } else { Some(hit) })
            }
        };
        let _ = file;
        let keep = first_bad.unwrap_or(stored.len());
        let config = LogConfig { segment_bytes, index_interval_bytes: 256, ..LogConfig::default() };
        let (log, report) = PartitionLog::open(&mut storage, DIR, config.clone(), &mut |_| {}).unwrap();
        let got = read_back(&mut storage, &log);
        prop_assert_eq!(got.len(), keep, "recovery report: {:?}", report);
        for (g, s) in got.iter().zip(&stored) {
            prop_assert_eq!(masked(g), masked(s));
        }
        // After recovery the next offset continues the kept prefix: no
        // offset is handed out twice.
        let expected_end: usize = sizes[..keep].iter().sum();
        prop_assert_eq!(log.log_end_offset(), expected_end as i64);
        // And recovery is idempotent: a second open changes nothing.
        let (again, second) = PartitionLog::open(&mut storage, DIR, config, &mut |_| {}).unwrap();
        prop_assert_eq!(second.truncated_bytes, 0);
        prop_assert_eq!(again.log_end_offset(), log.log_end_offset());
    }

    #[test]
    fn reads_return_whole_batches_from_any_offset(
        sizes in prop::collection::vec(1usize..8, 1..30),
        max_bytes in 1usize..3000,
        pick in any::<prop::sample::Index>(),
    ) {
        let (mut storage, _) = build_log(&sizes, 700);
        let (log, _) = PartitionLog::open(&mut storage, DIR, LogConfig { segment_bytes: 700, index_interval_bytes: 256, ..LogConfig::default() }, &mut |_| {}).unwrap();
        let total: usize = sizes.iter().sum();
        let offset = pick.index(total) as i64;
        let bytes = log.read(&mut storage, offset, max_bytes).unwrap();
        let batches: Vec<_> = records::split_batches(&bytes).collect::<Result<_, _>>().unwrap();
        prop_assert!(!batches.is_empty());
        // The first batch holds the offset; more batches only within the limit.
        let (first, _) = batches[0];
        prop_assert!(first.base_offset <= offset && offset <= first.last_offset());
        if batches.len() > 1 {
            prop_assert!(bytes.len() <= max_bytes);
        }
        prop_assert_eq!(log.read(&mut storage, total as i64, max_bytes).unwrap().len(), 0);
        prop_assert!(log.read(&mut storage, total as i64 + 1, max_bytes).is_err());
    }
}
