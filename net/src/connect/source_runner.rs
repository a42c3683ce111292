//! The task that runs one source: it steps the core's [`SourceDriver`]
//! with wall-clock time and executes its effects one at a time — the
//! source's reads off the async executor, chunk entries appended to
//! `__millrace_connect_offsets`, each chunk produced as one idempotent
//! batch, acks=all. The driver decides; failures go back to it as inputs.

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use millrace_core::connect::{
    ConnectError, DriverConfig, DriverEffect, DriverInput, DynSource, OffsetRecord, SourceDriver, SourceRead, SourceRecord, records_crc, recover_source,
};
use millrace_core::records::{BatchBuilder, Compression, Record};
use millrace_core::stream::ProduceOutcome;
use serde_json::Value;
use tokio::sync::Notify;

use super::def::ConnectorDef;
use super::handle::{Handle, Shared, lock};
use super::logs::{append_offset, logs, read_offsets};
use crate::client::ClientError;
use crate::client::partitioner::partition_for_key;
use crate::stream::logs::{Logs, timed};
use crate::stream::sink::outcome;
use crate::stream::wall_ms;

/// Records per chunk (one produce request each).
pub const CHUNK_RECORDS: usize = 500;
/// How long a source that had nothing new waits before reading again.
const POLL_MS: i64 = 200;

/// A pause after each produce (`MILLRACE_CONNECT_PRODUCE_DELAY_MS`, tests
/// only): it widens the window in which a crash finds a chunk logged but
/// not yet acknowledged, so the re-send path runs on a real server.
fn produce_delay() -> Option<Duration> {
    static DELAY: std::sync::OnceLock<Option<Duration>> = std::sync::OnceLock::new();
    *DELAY.get_or_init(|| std::env::var("MILLRACE_CONNECT_PRODUCE_DELAY_MS").ok().and_then(|v| v.parse().ok()).map(Duration::from_millis))
}

struct Runner {
    def: ConnectorDef,
    driver: SourceDriver,
    /// Taken while a read runs on a blocking thread.
    source: Option<Box<dyn DynSource>>,
    logs: Logs,
    /// The records of the last read: the chunk to produce.
    held: Vec<SourceRecord>,
    timers: BTreeSet<i64>,
    shared: Arc<Mutex<Shared>>,
    stop: Arc<AtomicBool>,
    wake: Arc<Notify>,
}

/// Starts the source's task on the current runtime.
pub fn spawn(def: ConnectorDef, source: Box<dyn DynSource>, bootstrap: &str) -> Handle {
    let shared = Arc::new(Mutex::new(Shared { state: "recovering".into(), started_at: wall_ms(), ..Shared::default() }));
    let stop = Arc::new(AtomicBool::new(false));
    let wake = Arc::new(Notify::new());
    let config = DriverConfig {
        partitions: def.partitions,
        max_records: std::env::var("MILLRACE_CONNECT_CHUNK_RECORDS").ok().and_then(|v| v.parse().ok()).unwrap_or(CHUNK_RECORDS),
        rate: def.spec.rate,
        poll_ms: POLL_MS,
        initial: source.initial(),
    };
    let runner = Runner {
        driver: SourceDriver::new(config),
        source: Some(source),
        logs: logs(bootstrap),
        def,
        held: Vec::new(),
        timers: BTreeSet::new(),
        shared: Arc::clone(&shared),
        stop: Arc::clone(&stop),
        wake: Arc::clone(&wake),
    };
    let task = tokio::spawn(runner.run());
    Handle { shared, stop, wake, task }
}

fn failed(what: &str, e: ClientError) -> DriverInput {
    DriverInput::Failed { reason: format!("{what}: {e}"), retriable: true }
}

impl Runner {
    fn name(&self) -> &str {
        &self.def.spec.name
    }

    fn publish(&self, first: bool) {
        let status = self.driver.status();
        let mut s = lock(&self.shared);
        s.state = status.state.to_string();
        s.records = status.records_total;
        s.position = status.position;
        s.retrying = status.retrying;
        s.error = status.error;
        if first {
            s.records_at_start = status.records_total;
        }
    }

    async fn run(mut self) {
        tracing::info!(connector = %self.name(), topic = %self.def.spec.topic, "source connector starting");
        let mut queue: VecDeque<DriverEffect> = VecDeque::new();
        let mut out = Vec::new();
        self.driver.start(&mut out);
        queue.extend(out);
        let mut recovered = false;
        loop {
            while let Some(effect) = queue.pop_front() {
                let was_recovery = matches!(effect, DriverEffect::ReadLog);
                if let Some(input) = self.execute(effect).await {
                    let ok = !matches!(input, DriverInput::Failed { .. });
                    let mut out = Vec::new();
                    self.driver.step(wall_ms(), input, &mut out);
                    queue.extend(out);
                    if was_recovery && ok && !recovered {
                        recovered = true;
                        self.publish(true);
                    }
                }
                if self.stop.load(Ordering::Relaxed) && !self.driver.is_stopped() {
                    let mut out = Vec::new();
                    self.driver.step(wall_ms(), DriverInput::Stop, &mut out);
                    queue.extend(out);
                }
                self.publish(false);
            }
            if self.driver.is_stopped() {
                break;
            }
            let now = wall_ms();
            let next = self.timers.first().copied().unwrap_or(now + 60_000);
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis((next - now).max(0) as u64)) => {}
                _ = self.wake.notified() => {}
            }
            let now = wall_ms();
            let input = if self.stop.load(Ordering::Relaxed) {
                DriverInput::Stop
            } else {
                let due = self.timers.first().is_some_and(|&at| at <= now);
                self.timers.retain(|&at| at > now);
                if !due {
                    continue;
                }
                DriverInput::Tick
            };
            let mut out = Vec::new();
            self.driver.step(now, input, &mut out);
            queue.extend(out);
        }
        tracing::info!(connector = %self.name(), state = %self.driver.status().state, "source connector ended");
    }

    /// Runs a read of the source on a blocking thread (files, or a user's
    /// source that blocks).
    async fn read(&mut self, f: impl FnOnce(&mut dyn DynSource) -> Result<SourceRead<Value>, ConnectError> + Send + 'static) -> DriverInput {
        let Some(mut source) = self.source.take() else {
            return DriverInput::Failed { reason: "the source is gone (a read panicked)".into(), retriable: false };
        };
        let joined = tokio::task::spawn_blocking(move || {
            let r = f(source.as_mut());
            (source, r)
        })
        .await;
        let (source, result) = match joined {
            Ok(x) => x,
            Err(e) => return DriverInput::Failed { reason: format!("the source's read failed: {e}"), retriable: false },
        };
        self.source = Some(source);
        match result {
            Err(e) => DriverInput::Failed { reason: e.to_string(), retriable: e.is_retriable() },
            Ok(r) => {
                for s in &r.skipped {
                    tracing::warn!(connector = %self.name(), location = %s.location, reason = %s.reason, "skipped a malformed record");
                }
                for w in &r.warnings {
                    tracing::warn!(connector = %self.name(), "{w}");
                }
                {
                    let mut sh = lock(&self.shared);
                    sh.skipped += r.skipped.len() as u64;
                    if let Some(s) = r.skipped.last() {
                        sh.last_warning = Some(format!("skipped {}: {}", s.location, s.reason));
                    }
                    if let Some(w) = r.warnings.last() {
                        sh.last_warning = Some(w.clone());
                    }
                }
                let partition = r.route.as_ref().map(|k| partition_for_key(k, self.def.partitions.max(1) as usize));
                self.held = r.records;
                tracing::debug!(connector = %self.name(), count = self.held.len(), crc = records_crc(&self.held), first = ?self.held.first().map(|r| String::from_utf8_lossy(&r.value).into_owned()), "read");
                DriverInput::ReadDone { count: self.held.len(), crc: records_crc(&self.held), to: r.to, partition }
            }
        }
    }

    async fn execute(&mut self, effect: DriverEffect) -> Option<DriverInput> {
        let name = self.name().to_string();
        let input = match effect {
            DriverEffect::ReadLog => match read_offsets(&mut self.logs, &name).await {
                Ok(records) => {
                    let chunks = records.into_iter().filter_map(|r| match r {
                        OffsetRecord::Chunk(c) => Some(c),
                        OffsetRecord::SinkPosition { .. } => None,
                    });
                    DriverInput::Recovered { last: recover_source(chunks).last }
                }
                Err(e) => failed("reading __millrace_connect_offsets", e),
            },
            DriverEffect::NewProducer => {
                let r = match self.logs.client().await {
                    Ok(c) => timed(c.init_producer_id()).await,
                    Err(e) => Err(e),
                };
                match r {
                    Ok((producer_id, producer_epoch)) => DriverInput::ProducerAllocated { producer_id, producer_epoch },
                    Err(e) => {
                        self.logs.reconnect();
                        failed("allocating a producer id", e)
                    }
                }
            }
            DriverEffect::Read { at, from, max } => self.read(move |s| s.read_json(at, &from, max)).await,
            DriverEffect::Reread { at, from, to, count } => {
                tracing::info!(connector = %name, "re-sending the chunk logged before the restart");
                self.read(move |s| s.reread_json(at, &from, &to, count)).await
            }
            DriverEffect::LogChunk { entry } => match append_offset(&mut self.logs, &name, &OffsetRecord::Chunk(entry)).await {
                Ok(()) => DriverInput::ChunkLogged,
                Err(e) => failed("appending to __millrace_connect_offsets", e),
            },
            DriverEffect::Produce { entry } => {
                if self.held.len() != entry.count as usize {
                    return Some(DriverInput::Failed {
                        reason: format!("chunk {} has {} records, {} were read (a bug)", entry.chunk, entry.count, self.held.len()),
                        retriable: false,
                    });
                }
                let mut b = BatchBuilder::new(Compression::None).idempotent(entry.producer_id, entry.producer_epoch, entry.base_sequence);
                for r in &self.held {
                    b.push(Record { offset: 0, timestamp: entry.timestamp, key: r.key.clone(), value: Some(r.value.clone()), headers: Vec::new() });
                }
                let bytes = Bytes::from(b.build());
                let result = match self.logs.client().await {
                    Ok(client) => timed(client.produce(&self.def.spec.topic, entry.partition, bytes, -1)).await,
                    Err(e) => Err(e),
                };
                if matches!(result, Err(ClientError::Io(_) | ClientError::Protocol(_))) {
                    self.logs.reconnect();
                }
                let outcome = outcome(result);
                tracing::debug!(connector = %name, chunk = entry.chunk, partition = entry.partition, base_sequence = entry.base_sequence, ?outcome, "chunk produced");
                if matches!(outcome, ProduceOutcome::Duplicate | ProduceOutcome::OutOfOrderSequence) {
                    // (A duplicate among the last five batches is answered
                    // as written, with its first offset, as Kafka does.)
                    tracing::info!(connector = %name, chunk = entry.chunk, ?outcome, "chunk already in the topic from before the restart; not written again");
                }
                if let Some(d) = produce_delay() {
                    tokio::time::sleep(d).await;
                }
                DriverInput::Produced { outcome }
            }
            DriverEffect::Timer { at } => {
                self.timers.insert(at);
                return None;
            }
            DriverEffect::Warn(w) => {
                tracing::warn!(connector = %name, "{w}");
                lock(&self.shared).last_warning = Some(w);
                return None;
            }
            DriverEffect::Stopped { error } => {
                if let Some(e) = error {
                    tracing::error!(connector = %name, error = %e, "source connector failed");
                }
                return None;
            }
        };
        if let DriverInput::Failed { reason, retriable: true } = &input {
            tracing::warn!(connector = %name, %reason, "source connector retrying");
        }
        Some(input)
    }
}
