//! Criterion benchmarks of the log's hot paths: validating produced
//! batches, appending them, and serving fetches.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use millrace_core::log::{LogConfig, PartitionLog};
use millrace_core::records::{self, BatchBuilder, Compression, Record};
use millrace_core::storage::{MemStorage, Storage};
use millrace_net::file_storage::FileStorage;

/// A batch of `n` records with 1 KB values, as a producer would send it.
fn batch(n: usize, compression: Compression) -> Vec<u8> {
    let mut b = BatchBuilder::new(compression);
    for i in 0..n {
        let value: Vec<u8> = (0..1024).map(|j| ((i * 31 + j * 7) % 251) as u8).collect();
        b.push(Record { timestamp: i as i64, key: Some(i.to_be_bytes().to_vec()), value: Some(value), ..Record::default() });
    }
    b.idempotent(1, 0, 0).build()
}

fn validate(c: &mut Criterion) {
    let mut g = c.benchmark_group("batch");
    for compression in [Compression::None, Compression::Lz4, Compression::Zstd] {
        let b = batch(100, compression);
        g.throughput(Throughput::Bytes(b.len() as u64));
        g.bench_function(format!("validate_header_crc/{}", compression.name()), |bench| {
            bench.iter(|| records::validate_batch(black_box(&b)).unwrap())
        });
        g.bench_function(format!("decode_records/{}", compression.name()), |bench| {
            bench.iter(|| records::decode_records(black_box(&b)).unwrap())
        });
    }
    g.finish();
}

fn append(c: &mut Criterion) {
    let b = batch(100, Compression::None);
    let mut g = c.benchmark_group("log_append");
    g.throughput(Throughput::Bytes(b.len() as u64 * 100));
    g.bench_function("memory/100_batches_of_100KB", |bench| {
        bench.iter_batched(|| open_log(MemStorage::new()), |(s, log)| append_100(s, log, &b), BatchSize::LargeInput)
    });
    let dir = std::env::temp_dir().join(format!("millrace-bench-{}", std::process::id()));
    g.bench_function("file_unsynced/100_batches_of_100KB", |bench| {
        bench.iter_batched(
            || {
                let _ = std::fs::remove_dir_all(&dir);
                open_log(FileStorage::open(&dir).unwrap())
            },
            |(s, log)| append_100(s, log, &b),
            BatchSize::PerIteration,
        )
    });
    g.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

fn open_log<S: Storage>(mut s: S) -> (S, PartitionLog) {
    let (log, _) = PartitionLog::open(&mut s, "t-0", LogConfig::default(), &mut |_| {}).unwrap();
    (s, log)
}

fn append_100<S: Storage>(mut s: S, mut log: PartitionLog, b: &[u8]) {
    for _ in 0..100 {
        let mut copy = b.to_vec();
        log.append(&mut s, &mut copy).unwrap();
    }
}

fn fetch(c: &mut Criterion) {
    let b = batch(100, Compression::None);
    let mut s = MemStorage::new();
    let (mut log, _) = PartitionLog::open(&mut s, "t-0", LogConfig::default(), &mut |_| {}).unwrap();
    for _ in 0..200 {
        let mut copy = b.clone();
        log.append(&mut s, &mut copy).unwrap();
    }
    let end = log.log_end_offset();
    let mut g = c.benchmark_group("log_fetch");
    g.throughput(Throughput::Bytes(1 << 20));
    let mut offset = 0;
    g.bench_function("memory/1MB_at_spread_offsets", |bench| {
        bench.iter(|| {
            offset = (offset + 7919) % end;
            black_box(log.read(&mut s, offset, 1 << 20).unwrap())
        })
    });
    g.finish();
}

criterion_group!(benches, validate, append, fetch);
criterion_main!(benches);
