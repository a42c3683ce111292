//! A batch's output written to the sink topic exactly once: records are
//! placed by a stable hash of their key, cut into chunks continuing each
//! partition's idempotent-producer sequence ([`plan_chunks`]), and sent by
//! the core's [`SinkWriter`], one Kafka v2 batch per chunk under the
//! query's producer id, acks=all. A re-run sends the same chunks with the
//! same sequences, and the broker drops those it holds (see the book's
//! "Exactly once").

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use millrace_core::records::{BatchBuilder, Compression, Record};
use millrace_core::stream::{ProduceOutcome, SinkEffect, SinkInput, SinkWriter, plan_chunks};
use millrace_engine::stream::OutputRecord;

use super::logs::Logs;
use crate::client::ClientError;
use crate::client::partitioner::partition_for_key;

/// Records per chunk (one produce request each).
pub const CHUNK_RECORDS: usize = 500;

/// A pause after each chunk (`MILLRACE_STREAM_WRITE_DELAY_MS`, tests
/// only): it widens the window in which a crash finds a batch half written,
/// so the re-run path is exercised on a real server.
fn write_delay() -> Option<Duration> {
    static DELAY: std::sync::OnceLock<Option<Duration>> = std::sync::OnceLock::new();
    *DELAY.get_or_init(|| std::env::var("MILLRACE_STREAM_WRITE_DELAY_MS").ok().and_then(|v| v.parse().ok()).map(Duration::from_millis))
}

/// Where one batch's output goes.
pub struct SinkTarget<'a> {
    pub topic: &'a str,
    pub partitions: u32,
    pub producer_id: i64,
    pub producer_epoch: i16,
    /// The records' timestamp: the batch's planning time, from the offset
    /// log, so a re-run builds the same bytes.
    pub timestamp: i64,
}

/// The output partition of record `index` of a batch: Kafka's default
/// partitioner (murmur2) for a key, round-robin by index without one —
/// both the same on every run of the batch.
pub fn output_partition(key: Option<&str>, index: usize, partitions: u32) -> i32 {
    match key {
        Some(k) => partition_for_key(k.as_bytes(), partitions as usize),
        None => (index % partitions.max(1) as usize) as i32,
    }
}

/// How a produce answer counts for the writer.
pub fn outcome(r: Result<i64, ClientError>) -> ProduceOutcome {
    match r {
        Ok(_) => ProduceOutcome::Written,
        Err(e) => match e.code() {
            Some(46) => ProduceOutcome::Duplicate,
            Some(45) => ProduceOutcome::OutOfOrderSequence,
            // Not leader, leader not available, timeout, network, not
            // enough replicas (before or after the append), storage error.
            Some(5 | 6 | 7 | 13 | 19 | 20 | 56) | None => ProduceOutcome::Retriable(e.to_string()),
            Some(_) => ProduceOutcome::Fatal(e.to_string()),
        },
    }
}

/// Writes `records` with sequences continuing `sink_base`; answers each
/// partition's next sequence afterwards. Retriable failures are retried
/// until `stop` is set.
pub async fn write(
    logs: &mut Logs,
    target: &SinkTarget<'_>,
    records: &[OutputRecord],
    sink_base: &[(i32, i32)],
    stop: &Arc<AtomicBool>,
) -> Result<Vec<(i32, i32)>, String> {
    let mut by_partition: BTreeMap<i32, Vec<&OutputRecord>> = BTreeMap::new();
    for (i, r) in records.iter().enumerate() {
        by_partition.entry(output_partition(r.key.as_deref(), i, target.partitions)).or_default().push(r);
    }
    let counts: Vec<(i32, usize)> = by_partition.iter().map(|(p, v)| (*p, v.len())).collect();
    let (chunks, next) = plan_chunks(&counts, sink_base, CHUNK_RECORDS);
    let mut writer = SinkWriter::new(chunks.clone());
    let mut effects = Vec::new();
    writer.start(&mut effects);
    let mut queue: VecDeque<SinkEffect> = effects.into();
    let mut timers: BTreeSet<i64> = BTreeSet::new();
    loop {
        while let Some(e) = queue.pop_front() {
            match e {
                SinkEffect::Produce { chunk } => {
                    let c = chunks[chunk];
                    let mut b = BatchBuilder::new(Compression::None).idempotent(target.producer_id, target.producer_epoch, c.base_sequence);
                    for r in &by_partition[&c.partition][c.first..c.first + c.count] {
                        b.push(Record {
                            offset: 0,
                            timestamp: target.timestamp,
                            key: r.key.as_ref().map(|k| k.as_bytes().to_vec()),
                            value: Some(r.value.as_bytes().to_vec()),
                            headers: Vec::new(),
                        });
                    }
                    let bytes = Bytes::from(b.build());
                    let result = match logs.client().await {
                        Ok(client) => super::logs::timed(client.produce(target.topic, c.partition, bytes, -1)).await,
                        Err(e) => Err(e),
                    };
                    if matches!(result, Err(ClientError::Io(_) | ClientError::Protocol(_))) {
                        logs.reconnect();
                    }
                    let outcome = outcome(result);
                    if matches!(outcome, ProduceOutcome::Duplicate | ProduceOutcome::OutOfOrderSequence) {
                        tracing::info!(topic = target.topic, partition = c.partition, base_sequence = c.base_sequence, ?outcome, "output chunk already written by an earlier attempt of this batch; skipped");
                    }
                    if let Some(d) = write_delay() {
                        tokio::time::sleep(d).await;
                    }
                    let mut out = Vec::new();
                    writer.step(super::wall_ms(), SinkInput::Produced { chunk, outcome }, &mut out);
                    queue.extend(out);
                }
                SinkEffect::Timer { at } => {
                    timers.insert(at);
                }
                SinkEffect::Done => return Ok(next),
                SinkEffect::Failed { reason } => return Err(format!("writing to {}: {reason}", target.topic)),
            }
        }
        if stop.load(Ordering::Relaxed) {
            return Err("the query was stopped while writing its output".into());
        }
        let Some(at) = timers.pop_first() else {
            return Err("the output writer has nothing to send and is not done (a bug)".into());
        };
        let wait = (at - super::wall_ms()).max(0) as u64;
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let mut out = Vec::new();
        writer.step(super::wall_ms(), SinkInput::Tick, &mut out);
        queue.extend(out);
    }
}
