//! The runner of any source, as a pure machine: it decides what to read,
//! logs each chunk before producing it, and re-sends the last logged chunk
//! after a restart, so every record reaches the topic exactly once.
//!
//! The argument is the stream sink's (see `stream::sink` and the book's
//! "Exactly once"): a chunk is one record batch under the connector's
//! idempotent producer id, with sequence numbers that continue the
//! partition's, and only one chunk is ever in flight. After a crash the
//! last logged chunk is read again from its logged `from` (the source is
//! replayable) and sent with its logged sequences: the broker stores it if
//! it did not before, and answers "duplicate" or "out of order" if it did.
//! Only then is the next chunk read and logged.
//!
//! A re-read that does not give the logged chunk back (its records'
//! count or CRC differ: the file was truncated or rewritten while the
//! connector was down) cannot be re-sent under the logged sequences. The
//! connector then takes a new producer id (sequences from 0), warns, and
//! reads on from the chunk's start: that one chunk is delivered at least
//! once instead of exactly once.
//!
//! Positions are opaque JSON here: the source's own type, serialized.

use std::collections::BTreeMap;

use serde_json::Value;

use super::api::SourceRecord;
use super::source_log::ChunkEntry;
use crate::Millis;
use crate::stream::{ProduceOutcome, advance_sequence};

/// The CRC-32C of a chunk's records (each key's and value's length and
/// bytes), logged with the chunk to recognise it when it is read again.
pub fn records_crc(records: &[SourceRecord]) -> u32 {
    let mut crc = 0u32;
    for r in records {
        let key = r.key.as_deref();
        crc = crc32c::crc32c_append(crc, &key.map_or(-1i64, |k| k.len() as i64).to_be_bytes());
        crc = crc32c::crc32c_append(crc, key.unwrap_or_default());
        crc = crc32c::crc32c_append(crc, &(r.value.len() as u64).to_be_bytes());
        crc = crc32c::crc32c_append(crc, &r.value);
    }
    crc
}

#[derive(Debug, Clone, PartialEq)]
pub struct DriverConfig {
    /// The topic's partition count, fixed when the connector was defined.
    pub partitions: u32,
    /// Records per chunk (one produce request).
    pub max_records: usize,
    /// At most this many records per second; none: as fast as it goes.
    pub rate: Option<u64>,
    /// How long to wait before reading again when nothing was new.
    pub poll_ms: Millis,
    /// The source's initial position (its `Position::default()`).
    pub initial: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub enum DriverInput {
    /// The last chunk of `__millrace_connect_offsets` for this connector.
    Recovered {
        last: Option<ChunkEntry>,
    },
    ProducerAllocated {
        producer_id: i64,
        producer_epoch: i16,
    },
    /// The answer to `Read` or `Reread`: how many records the adapter now
    /// holds, their CRC, the position after them, and the partition their
    /// route picks (none: the driver spreads chunks round-robin).
    ReadDone {
        count: usize,
        crc: u32,
        to: Value,
        partition: Option<i32>,
    },
    ChunkLogged,
    Produced {
        outcome: ProduceOutcome,
    },
    /// The effect awaited failed: retried after a backoff when retriable,
    /// else the connector stops with `reason`.
    Failed {
        reason: String,
        retriable: bool,
    },
    Tick,
    Stop,
}

#[derive(Debug, Clone, PartialEq)]
pub enum DriverEffect {
    /// Read this connector's entries of the offsets topic.
    ReadLog,
    /// Allocate an idempotent producer id (InitProducerId).
    NewProducer,
    /// Read up to `max` records after `from`, at time `at`.
    Read {
        at: Millis,
        from: Value,
        max: usize,
    },
    /// Read the logged chunk `from..to` (`count` records) again.
    Reread {
        at: Millis,
        from: Value,
        to: Value,
        count: usize,
    },
    /// Append the entry to the offsets topic (acks=all).
    LogChunk {
        entry: ChunkEntry,
    },
    /// Produce the records last read as this chunk.
    Produce {
        entry: ChunkEntry,
    },
    Timer {
        at: Millis,
    },
    /// Something an operator should see in the log.
    Warn(String),
    Stopped {
        error: Option<String>,
    },
}

/// What the driver is doing, for `millrace connect describe`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverStatus {
    pub state: &'static str,
    pub records_total: u64,
    /// Chunks delivered under the current producer id.
    pub chunks: u64,
    pub position: String,
    pub retrying: Option<String>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
enum State {
    Recovering,
    /// Waiting for a producer id; then reading on from `from`.
    Allocating {
        from: Value,
    },
    Rereading {
        entry: ChunkEntry,
    },
    Waiting {
        until: Millis,
    },
    Reading {
        at: Millis,
        max: usize,
    },
    Logging {
        entry: ChunkEntry,
        full: bool,
    },
    Producing {
        entry: ChunkEntry,
        full: bool,
    },
    Stopped {
        error: Option<String>,
    },
}

const FIRST_BACKOFF_MS: Millis = 100;
const MAX_BACKOFF_MS: Millis = 5_000;

#[derive(Debug, Clone)]
pub struct SourceDriver {
    config: DriverConfig,
    state: State,
    position: Value,
    producer: Option<(i64, i16)>,
    next_chunk: u64,
    sequences: BTreeMap<i32, i32>,
    records_total: u64,
    /// The effect to send again after a failure, and when.
    retry: Option<(Millis, Millis, DriverEffect)>,
    retrying: Option<String>,
    /// The rate window: since when, and records sent in it.
    rate_since: Option<Millis>,
    rate_sent: u64,
}

impl SourceDriver {
    pub fn new(config: DriverConfig) -> SourceDriver {
        let position = config.initial.clone();
        SourceDriver {
            config,
            state: State::Recovering,
            position,
            producer: None,
            next_chunk: 0,
            sequences: BTreeMap::new(),
            records_total: 0,
            retry: None,
            retrying: None,
            rate_since: None,
            rate_sent: 0,
        }
    }

    pub fn start(&mut self, out: &mut Vec<DriverEffect>) {
        self.state = State::Recovering;
        out.push(DriverEffect::ReadLog);
    }

    pub fn is_stopped(&self) -> bool {
        matches!(self.state, State::Stopped { .. })
    }

    pub fn status(&self) -> DriverStatus {
        let state = match &self.state {
            State::Recovering => "recovering",
            State::Allocating { .. } => "starting",
            State::Rereading { .. } => "re-sending",
            State::Waiting { .. } => "waiting",
            State::Reading { .. } => "reading",
            State::Logging { .. } => "logging",
            State::Producing { .. } => "producing",
            State::Stopped { error: Some(_) } => "failed",
            State::Stopped { error: None } => "stopped",
        };
        DriverStatus {
            state,
            records_total: self.records_total,
            chunks: self.next_chunk,
            position: self.position.to_string(),
            retrying: self.retrying.clone(),
            error: match &self.state {
                State::Stopped { error } => error.clone(),
                _ => None,
            },
        }
    }

    pub fn step(&mut self, now: Millis, input: DriverInput, out: &mut Vec<DriverEffect>) {
        if self.is_stopped() {
            return;
        }
        match input {
            DriverInput::Stop => self.stop(None, out),
            DriverInput::Tick => self.tick(now, out),
            DriverInput::Failed { reason, retriable } => self.failed(now, reason, retriable, out),
            input => {
                self.retry = None;
                self.retrying = None;
                self.answer(now, input, out);
            }
        }
    }

    fn answer(&mut self, now: Millis, input: DriverInput, out: &mut Vec<DriverEffect>) {
        let state = std::mem::replace(&mut self.state, State::Recovering);
        match (state, input) {
            (State::Recovering, DriverInput::Recovered { last: None }) => {
                let from = self.config.initial.clone();
                self.allocate(from, out);
            }
            (State::Recovering, DriverInput::Recovered { last: Some(entry) }) => {
                self.producer = Some((entry.producer_id, entry.producer_epoch));
                self.position = entry.from.clone();
                self.records_total = entry.records_total - u64::from(entry.count);
                self.next_chunk = entry.chunk;
                out.push(DriverEffect::Reread { at: entry.timestamp, from: entry.from.clone(), to: entry.to.clone(), count: entry.count as usize });
                self.state = State::Rereading { entry };
            }
            (State::Allocating { from }, DriverInput::ProducerAllocated { producer_id, producer_epoch }) => {
                self.producer = Some((producer_id, producer_epoch));
                self.sequences.clear();
                self.next_chunk = 0;
                self.position = from;
                self.poll(now, out);
            }
            (State::Rereading { entry }, DriverInput::ReadDone { count, crc, .. }) => {
                if count == entry.count as usize && crc == entry.crc {
                    out.push(DriverEffect::Produce { entry: entry.clone() });
                    self.state = State::Producing { entry, full: true };
                } else {
                    out.push(DriverEffect::Warn(format!(
                        "chunk {} ({} records from {}, CRC {:08x}) reads back as {count} records with CRC {crc:08x}: the source changed while the connector was down; \
                         reading on from the chunk's start under a new producer id, so these records may reach the topic twice",
                        entry.chunk, entry.count, entry.from, entry.crc
                    )));
                    self.allocate(entry.from, out);
                }
            }
            (State::Reading { at, max }, DriverInput::ReadDone { count, crc, to, partition }) => {
                if count == 0 {
                    self.position = to;
                    self.rate_since = None;
                    self.wait(now, out);
                    return;
                }
                let (producer_id, producer_epoch) = self.producer.unwrap_or((-1, -1));
                let partitions = self.config.partitions.max(1);
                let partition = partition.filter(|p| (0..partitions as i32).contains(p)).unwrap_or((self.next_chunk % u64::from(partitions)) as i32);
                let base_sequence = self.sequences.get(&partition).copied().unwrap_or(0);
                let mut next = self.sequences.clone();
                next.insert(partition, advance_sequence(base_sequence, count));
                let entry = ChunkEntry {
                    chunk: self.next_chunk,
                    from: self.position.clone(),
                    to,
                    count: count as u32,
                    crc,
                    partition,
                    producer_id,
                    producer_epoch,
                    base_sequence,
                    next_sequences: next.into_iter().collect(),
                    timestamp: at,
                    records_total: self.records_total + count as u64,
                };
                out.push(DriverEffect::LogChunk { entry: entry.clone() });
                self.state = State::Logging { entry, full: count >= max };
            }
            (State::Logging { entry, full }, DriverInput::ChunkLogged) => {
                out.push(DriverEffect::Produce { entry: entry.clone() });
                self.state = State::Producing { entry, full };
            }
            (State::Producing { entry, full }, DriverInput::Produced { outcome }) => match outcome {
                ProduceOutcome::Written | ProduceOutcome::Duplicate | ProduceOutcome::OutOfOrderSequence => {
                    self.position = entry.to.clone();
                    self.sequences = entry.next_sequences.iter().copied().collect();
                    self.next_chunk = entry.chunk + 1;
                    self.records_total = entry.records_total;
                    self.rate_sent += u64::from(entry.count);
                    if full {
                        self.poll(now, out);
                    } else {
                        self.rate_since = None;
                        self.wait(now, out);
                    }
                }
                ProduceOutcome::Retriable(reason) => {
                    self.state = State::Producing { entry: entry.clone(), full };
                    self.backoff(now, reason, DriverEffect::Produce { entry }, out);
                }
                ProduceOutcome::Fatal(reason) => self.stop(Some(format!("producing chunk {} to partition {}: {reason}", entry.chunk, entry.partition)), out),
            },
            // An answer to nothing asked (a late one): keep the state.
            (state, _) => self.state = state,
        }
    }

    fn allocate(&mut self, from: Value, out: &mut Vec<DriverEffect>) {
        self.state = State::Allocating { from };
        out.push(DriverEffect::NewProducer);
    }

    /// Reads next, as much as the rate allows now.
    fn poll(&mut self, now: Millis, out: &mut Vec<DriverEffect>) {
        let mut max = self.config.max_records.max(1);
        if let Some(rate) = self.config.rate.filter(|r| *r > 0) {
            let since = *self.rate_since.get_or_insert_with(|| {
                self.rate_sent = 0;
                now
            });
            let allowed = (rate as i128 * i128::from((now - since).max(0)) / 1000) as u64;
            // The first read of a window may take one record at once;
            // after that, reads wait for a tenth of a second's worth (a
            // chunk costs two round trips: not one per record).
            let allowed = allowed.max(1).saturating_sub(self.rate_sent);
            let least = if self.rate_sent == 0 { 1 } else { (rate / 10).clamp(1, max as u64) };
            if allowed < least {
                let due = since + ((self.rate_sent + least) * 1000).div_ceil(rate) as Millis;
                self.state = State::Waiting { until: due };
                out.push(DriverEffect::Timer { at: due });
                return;
            }
            max = max.min(allowed.min(usize::MAX as u64) as usize);
        }
        self.state = State::Reading { at: now, max };
        out.push(DriverEffect::Read { at: now, from: self.position.clone(), max });
    }

    fn wait(&mut self, now: Millis, out: &mut Vec<DriverEffect>) {
        let until = now + self.config.poll_ms;
        self.state = State::Waiting { until };
        out.push(DriverEffect::Timer { at: until });
    }

    fn tick(&mut self, now: Millis, out: &mut Vec<DriverEffect>) {
        if let Some((at, _, effect)) = &self.retry {
            if *at <= now {
                out.push(effect.clone());
                let (_, backoff, effect) = self.retry.take().expect("checked");
                // Kept, so the next failure backs off longer.
                self.retry = Some((Millis::MAX, backoff, effect));
            }
            return;
        }
        if let State::Waiting { until } = self.state
            && until <= now
        {
            self.poll(now, out);
        }
    }

    fn failed(&mut self, now: Millis, reason: String, retriable: bool, out: &mut Vec<DriverEffect>) {
        if !retriable {
            self.stop(Some(reason), out);
            return;
        }
        let effect = match &self.state {
            State::Recovering => DriverEffect::ReadLog,
            State::Allocating { .. } => DriverEffect::NewProducer,
            State::Rereading { entry } => {
                DriverEffect::Reread { at: entry.timestamp, from: entry.from.clone(), to: entry.to.clone(), count: entry.count as usize }
            }
            State::Reading { max, .. } => DriverEffect::Read { at: now, from: self.position.clone(), max: *max },
            State::Logging { entry, .. } => DriverEffect::LogChunk { entry: entry.clone() },
            State::Producing { entry, .. } => DriverEffect::Produce { entry: entry.clone() },
            State::Waiting { .. } | State::Stopped { .. } => return,
        };
        if let State::Reading { max, .. } = self.state {
            self.state = State::Reading { at: now, max };
        }
        self.backoff(now, reason, effect, out);
    }

    fn backoff(&mut self, now: Millis, reason: String, effect: DriverEffect, out: &mut Vec<DriverEffect>) {
        let backoff = self.retry.as_ref().map_or(FIRST_BACKOFF_MS, |(_, b, _)| (b * 2).min(MAX_BACKOFF_MS));
        self.retry = Some((now + backoff, backoff, effect));
        self.retrying = Some(reason);
        out.push(DriverEffect::Timer { at: now + backoff });
    }

    fn stop(&mut self, error: Option<String>, out: &mut Vec<DriverEffect>) {
        self.state = State::Stopped { error: error.clone() };
        out.push(DriverEffect::Stopped { error });
    }
}
