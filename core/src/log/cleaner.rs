//! The log cleaner: compaction by key, as an incremental job.
//!
//! The broker is one single-threaded machine, so a cleaner that read a
//! whole log in one go would stall every produce and fetch behind it. A
//! [`Cleaner`] instead does a bounded amount of reading and writing per
//! [`Cleaner::step`], and the broker runs one step per timer tick:
//!
//! 1. **Map**: read the dirty closed segments (offsets from `first_dirty`
//!    up to the first segment that may not be compacted yet) and build a
//!    map from each key to the offset of its latest record.
//! 2. **Rewrite**: read every closed segment of that range, oldest first,
//!    and write what survives into a side file `<segment>.log.cleaned`.
//! 3. **Swap**: sync the side file and put it in the segment's place with
//!    one atomic replace, then rebuild that segment's in-memory index.
//!
//! What survives: a record whose key has a later record is dropped; a
//! tombstone (null value) that is the latest of its key is dropped once its
//! timestamp is `delete.retention.ms` older than `now`. Kept records keep
//! their bytes, so their offsets never change. Each batch keeps its base
//! offset and offset range, so offsets stay dense batch after batch: a
//! batch that lost every record becomes an empty batch (header only), and a
//! run of such batches is merged into one empty batch spanning the run.
//!
//! Between steps the log may change: appends (only the active segment,
//! which is never cleaned), retention deleting old segments (skipped), a
//! truncation or a segment that changed under us (the pass is abandoned and
//! its side file removed). A crash at any point leaves the old segment or
//! the new one, never a mix; a leftover side file is removed at open.

use std::collections::BTreeMap;

use super::partition_log::{LogError, PartitionLog};
use super::segment::Segment;
use crate::Millis;
use crate::records::{self, BatchHeader, BatchRecords, HEADER_LEN, RawRecord, RecordError};
use crate::storage::Storage;

const SIDE_SUFFIX: &str = ".cleaned";

/// The name of the side file a segment is rewritten into.
pub fn side_file(segment_file: &str) -> String {
    format!("{segment_file}{SIDE_SUFFIX}")
}

pub(super) fn is_side_file(name: &str) -> bool {
    name.ends_with(SIDE_SUFFIX) && super::parse_segment_file(&name[..name.len() - SIDE_SUFFIX.len()]).is_some()
}

/// Memory bounds of the key map (Kafka's `log.cleaner.dedupe.buffer.size`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CleanerLimits {
    pub max_keys: usize,
    /// Key bytes plus a per-entry overhead.
    pub max_map_bytes: usize,
}

impl Default for CleanerLimits {
    fn default() -> Self {
        Self { max_keys: 1_000_000, max_map_bytes: 128 << 20 }
    }
}

/// Approximate bytes a map entry costs beyond its key (tree node, Vec, offset).
const ENTRY_OVERHEAD: usize = 64;

/// What a finished pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CleanSummary {
    /// Offsets below this are compacted now: the next pass maps from here.
    pub cleaned_up_to: i64,
    pub segments_rewritten: usize,
    pub records_removed: u64,
    pub tombstones_removed: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// When the earliest tombstone this pass kept may go: a pass must run
    /// again then even if nothing new was written.
    pub next_tombstone_expiry: Option<Millis>,
    /// The key map filled up inside the first dirty segment, so the pass
    /// could not move on (raise the cleaner limits or lower segment.bytes).
    pub stalled: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CleanProgress {
    /// More steps are needed.
    Working,
    Done(CleanSummary),
    /// The log changed under the pass; nothing is damaged, the pass is
    /// dropped and may start afresh.
    Aborted(String),
}

/// The first offset compaction may not touch: the active segment's base,
/// or earlier the first segment holding records younger than
/// `min.compaction.lag.ms`.
pub fn cleanable_end(log: &PartitionLog, now: Millis) -> i64 {
    let lag = log.config().min_compaction_lag_ms;
    let active = log.active_segment().map_or(log.log_end_offset(), |s| s.base_offset);
    log.segments()
        .take_while(|s| s.base_offset < active)
        .find(|s| lag > 0 && s.max_timestamp > now.saturating_sub(lag))
        .map_or(active, |s| s.base_offset)
}

/// (dirty bytes, cleanable bytes) of a log compacted below `first_dirty`:
/// what `min.cleanable.dirty.ratio` compares.
pub fn dirty_bytes(log: &PartitionLog, first_dirty: i64, now: Millis) -> (u64, u64) {
    let end = cleanable_end(log, now);
    let mut dirty = 0;
    let mut total = 0;
    for s in log.segments().take_while(|s| s.base_offset < end) {
        total += s.size;
        if s.base_offset >= first_dirty {
            dirty += s.size;
        }
    }
    (dirty, total)
}

/// Key → offset of its latest record, bounded in memory.
#[derive(Debug, Default)]
struct KeyMap {
    latest: BTreeMap<Vec<u8>, i64>,
    bytes: usize,
}

impl KeyMap {
    /// Records `offset` as the latest for `key`; false if the key is new
    /// and the map is full.
    fn offer(&mut self, key: &[u8], offset: i64, limits: &CleanerLimits) -> bool {
        if let Some(o) = self.latest.get_mut(key) {
            *o = (*o).max(offset);
            return true;
        }
        let cost = key.len() + ENTRY_OVERHEAD;
        if self.latest.len() >= limits.max_keys || self.bytes + cost > limits.max_map_bytes {
            return false;
        }
        self.latest.insert(key.to_vec(), offset);
        self.bytes += cost;
        true
    }
}

/// The rewrite of one segment in progress.
#[derive(Debug)]
struct Output {
    side: String,
    seg: Segment,
    /// Emptied batches waiting to be merged into one.
    run: Option<BatchHeader>,
    /// The next batch must start here (offsets are dense).
    expected: i64,
    removed: bool,
}

#[derive(Debug)]
enum State {
    Plan,
    Map { i: usize, pos: u64 },
    Rewrite { i: usize, pos: u64, out: Option<Box<Output>> },
    Done,
}

/// One compaction pass over one partition log; see the module docs.
#[derive(Debug)]
pub struct Cleaner {
    limits: CleanerLimits,
    first_dirty: i64,
    /// Closed segments of the pass: (base offset, size when planned).
    plan: Vec<(i64, u64)>,
    /// First offset not covered (the end of the last planned segment).
    end: i64,
    /// Index in `plan` of the first dirty segment (where mapping starts).
    first_mapped: usize,
    map: KeyMap,
    state: State,
    summary: CleanSummary,
}

/// Whether a planned segment is still as planned.
enum Check {
    Same,
    /// Deleted by retention: skip it.
    Gone,
}

impl Cleaner {
    /// A pass over a log whose offsets below `first_dirty` are already
    /// compacted (the log start offset if nothing is known).
    pub fn new(first_dirty: i64, limits: CleanerLimits) -> Self {
        Self {
            limits,
            first_dirty,
            plan: Vec::new(),
            end: first_dirty,
            first_mapped: 0,
            map: KeyMap::default(),
            state: State::Plan,
            summary: CleanSummary::default(),
        }
    }

    /// Does at most about `budget_bytes` of reading and writing (always at
    /// least one batch). `keep_stamp` says whether an emptied batch must
    /// keep its producer identity because the partition's idempotence state
    /// still refers to it (recovery rebuilds that state from headers).
    ///
    /// On an error or an abort the side file is removed and the pass is over.
    pub fn step<S: Storage + ?Sized>(
        &mut self,
        log: &mut PartitionLog,
        storage: &mut S,
        now: Millis,
        budget_bytes: u64,
        keep_stamp: &dyn Fn(&BatchHeader) -> bool,
    ) -> Result<CleanProgress, LogError> {
        let budget = budget_bytes.max(1);
        let mut spent = 0u64;
        let result = loop {
            let next = match std::mem::replace(&mut self.state, State::Done) {
                State::Plan => {
                    self.plan(log, now);
                    continue;
                }
                State::Done => break Ok(CleanProgress::Done(self.summary.clone())),
                State::Map { i, .. } if i >= self.plan.len() => State::Rewrite { i: 0, pos: 0, out: None },
                State::Rewrite { i, .. } if i >= self.plan.len() => {
                    self.summary.cleaned_up_to = self.end.max(self.first_dirty);
                    break Ok(CleanProgress::Done(self.summary.clone()));
                }
                state if spent >= budget => {
                    self.state = state;
                    break Ok(CleanProgress::Working);
                }
                State::Map { i, pos } => match self.map_step(log, storage, i, pos, budget - spent, &mut spent) {
                    Ok(state) => state,
                    Err(Abort::Log(e)) => break Err(e),
                    Err(Abort::Changed(why)) => break Ok(CleanProgress::Aborted(why)),
                },
                State::Rewrite { i, pos, out } => {
                    let side = side_file(&super::segment_file(log.dir(), self.plan[i].0));
                    match self.rewrite_step(log, storage, now, (i, pos, out), budget - spent, &mut spent, keep_stamp) {
                        Ok(state) => state,
                        Err(abort) => {
                            // Best effort: a leftover is removed at the next open.
                            let _ = storage.remove(&side);
                            match abort {
                                Abort::Log(e) => break Err(e),
                                Abort::Changed(why) => break Ok(CleanProgress::Aborted(why)),
                            }
                        }
                    }
                }
            };
            self.state = next;
        };
        if !matches!(result, Ok(CleanProgress::Working)) {
            self.discard(storage);
        }
        result
    }

    /// Drops the pass, removing its side file (e.g. its topic was deleted).
    pub fn discard<S: Storage + ?Sized>(&mut self, storage: &mut S) {
        if let State::Rewrite { out: Some(out), .. } = std::mem::replace(&mut self.state, State::Done) {
            // Best effort: a leftover side file is removed at the next open.
            let _ = storage.remove(&out.side);
        }
    }

    fn plan(&mut self, log: &PartitionLog, now: Millis) {
        let end = cleanable_end(log, now);
        self.first_dirty = self.first_dirty.max(log.log_start_offset());
        let closed: Vec<&Segment> = log.segments().take_while(|s| s.base_offset < end).collect();
        self.plan = closed.iter().map(|s| (s.base_offset, s.size)).collect();
        self.end = closed.last().map_or(self.first_dirty, |s| s.next_offset);
        self.summary.cleaned_up_to = self.first_dirty;
        // With nothing dirty the map stays empty and the pass only drops
        // tombstones that have expired since the last one.
        self.first_mapped = self.plan.iter().position(|&(base, _)| base >= self.first_dirty).unwrap_or(self.plan.len());
        self.state = State::Map { i: self.first_mapped, pos: 0 };
    }

    fn check(&self, log: &PartitionLog, i: usize) -> Result<Check, Abort> {
        let (base, size) = self.plan[i];
        if log.log_end_offset() < self.end {
            return Err(Abort::Changed(format!("the log was truncated below offset {}", self.end)));
        }
        match log.segment(base) {
            Some(s) if s.size == size => Ok(Check::Same),
            Some(s) => Err(Abort::Changed(format!("segment {base} changed size ({size} -> {})", s.size))),
            None if base < log.log_start_offset() => Ok(Check::Gone),
            None => Err(Abort::Changed(format!("segment {base} disappeared"))),
        }
    }

    /// Maps keys of one chunk of segment `i`; returns the next state.
    fn map_step<S: Storage + ?Sized>(
        &mut self,
        log: &PartitionLog,
        storage: &mut S,
        i: usize,
        pos: u64,
        want: u64,
        spent: &mut u64,
    ) -> Result<State, Abort> {
        let (base, size) = self.plan[i];
        if let Check::Gone = self.check(log, i)? {
            return Ok(State::Map { i: i + 1, pos: 0 });
        }
        let file = super::segment_file(log.dir(), base);
        let (buf, headers) = read_batches(storage, &file, pos, size, want)?;
        let mut at = 0;
        let mut work = 0;
        for h in &headers {
            if work >= want {
                break; // the rest of the chunk is read again next step
            }
            let batch = &buf[at..at + h.total_len()];
            at += h.total_len();
            let recs = BatchRecords::new(batch, h).map_err(LogError::from)?;
            work += cost(h, &recs);
            for r in recs.iter() {
                let r = r.map_err(LogError::from)?;
                let Some(key) = r.key else { continue };
                if self.map.offer(key, r.offset(h), &self.limits) {
                    continue;
                }
                // The map is full: clean only the segments it covers whole.
                // Keys it took from this segment point at records that stay,
                // so they are still right about what is superseded. If it
                // did not cover even the first dirty segment, the pass still
                // cleans the part earlier passes compacted (superseded
                // records and expired tombstones there) but cannot advance.
                self.summary.stalled = i == self.first_mapped;
                self.plan.truncate(i);
                self.end = base;
                return Ok(State::Map { i, pos: 0 });
            }
        }
        *spent += work;
        let pos = pos + at as u64;
        Ok(if pos >= size { State::Map { i: i + 1, pos: 0 } } else { State::Map { i, pos } })
    }

    /// Rewrites one chunk of segment `i`; at its end, swaps the rewrite in.
    /// On an error the caller removes the side file.
    #[allow(clippy::too_many_arguments)]
    fn rewrite_step<S: Storage + ?Sized>(
        &mut self,
        log: &mut PartitionLog,
        storage: &mut S,
        now: Millis,
        (i, pos, out): (usize, u64, Option<Box<Output>>),
        want: u64,
        spent: &mut u64,
        keep_stamp: &dyn Fn(&BatchHeader) -> bool,
    ) -> Result<State, Abort> {
        let (base, size) = self.plan[i];
        if let Check::Gone = self.check(log, i)? {
            if let Some(out) = out {
                storage.remove(&out.side).map_err(LogError::from)?;
            }
            return Ok(State::Rewrite { i: i + 1, pos: 0, out: None });
        }
        let mut out = match out {
            Some(out) => out,
            None => {
                let seg = Segment::new(log.dir(), base);
                let side = side_file(&seg.file);
                // A side file from an abandoned pass: start it afresh.
                storage.remove(&side).map_err(LogError::from)?;
                Box::new(Output { side, seg, run: None, expected: base, removed: false })
            }
        };
        let (buf, headers) = read_batches(storage, &out.seg.file, pos, size, want)?;
        let mut chunk = Chunk::default();
        let mut at = 0;
        let mut work = 0;
        for h in &headers {
            if work + chunk.bytes.len() as u64 >= want {
                break; // the rest of the chunk is read again next step
            }
            let batch = &buf[at..at + h.total_len()];
            at += h.total_len();
            // Base offsets are outside the CRC: a misread one must not be
            // copied into the rewrite.
            if h.base_offset != out.expected {
                return Err(Abort::Log(RecordError::BadBaseOffset { found: h.base_offset, expected: out.expected }.into()));
            }
            out.expected = h.last_offset() + 1;
            let (verdict, batch_work) = decide(batch, h, &self.map, now, log.config().delete_retention_ms, &mut self.summary)?;
            work += batch_work;
            match verdict {
                Verdict::Keep => {
                    flush_run(&mut out, &mut chunk);
                    chunk.push(batch);
                }
                Verdict::Smaller(bytes) => {
                    flush_run(&mut out, &mut chunk);
                    out.removed = true;
                    chunk.push(&bytes);
                }
                Verdict::Empty => {
                    out.removed |= h.record_count > 0;
                    if keep_stamp(h) {
                        // The partition's idempotence state still refers to
                        // this batch: keep it alone, with its identity.
                        flush_run(&mut out, &mut chunk);
                        match h.record_count {
                            0 => chunk.push(batch),
                            _ => chunk.push(&records::empty_batch(h)),
                        }
                    } else {
                        extend_run(&mut out, h, &mut chunk);
                    }
                }
            }
        }
        let pos = pos + at as u64;
        let finished = pos >= size;
        if finished {
            flush_run(&mut out, &mut chunk);
        }
        append_output(storage, &mut out, &chunk, log.config().index_interval_bytes)?;
        *spent += work + chunk.bytes.len() as u64;
        if !finished {
            return Ok(State::Rewrite { i, pos, out: Some(out) });
        }
        let next = State::Rewrite { i: i + 1, pos: 0, out: None };
        if !out.removed && out.seg.size == size {
            // Nothing changed: keep the segment as it is.
            storage.remove(&out.side).map_err(LogError::from)?;
            return Ok(next);
        }
        if out.expected != log.segment(base).map_or(-1, |s| s.next_offset) {
            return Err(Abort::Changed(format!("segment {base}: the rewrite does not end where the segment does")));
        }
        self.summary.segments_rewritten += 1;
        self.summary.bytes_before += size;
        self.summary.bytes_after += out.seg.size;
        log.install_cleaned(storage, out.seg, &out.side)?;
        Ok(next)
    }
}

/// Rewritten batches of one step, before they are appended.
#[derive(Default)]
struct Chunk {
    bytes: Vec<u8>,
    /// Where each batch starts in `bytes`.
    starts: Vec<usize>,
}

impl Chunk {
    fn push(&mut self, batch: &[u8]) {
        self.starts.push(self.bytes.len());
        self.bytes.extend_from_slice(batch);
    }
}

/// Why a step stopped short.
enum Abort {
    Log(LogError),
    Changed(String),
}

impl From<LogError> for Abort {
    fn from(e: LogError) -> Self {
        Abort::Log(e)
    }
}

enum Verdict {
    /// Every record stays: copy the batch as it is.
    Keep,
    /// Some records stay: the rebuilt batch.
    Smaller(Vec<u8>),
    /// No record stays (or there were none).
    Empty,
}

/// What stays of one batch, and the work it took (see [`cost`]).
fn decide(
    batch: &[u8],
    h: &BatchHeader,
    map: &KeyMap,
    now: Millis,
    delete_retention_ms: i64,
    summary: &mut CleanSummary,
) -> Result<(Verdict, u64), LogError> {
    if h.record_count == 0 {
        return Ok((Verdict::Empty, batch.len() as u64));
    }
    let recs = BatchRecords::new(batch, h)?;
    let work = cost(h, &recs);
    let mut kept: Vec<RawRecord<'_>> = Vec::with_capacity(h.record_count as usize);
    for r in recs.iter() {
        let r = r?;
        if keep(&r, h, map, now, delete_retention_ms, summary) {
            kept.push(r);
        }
    }
    let removed = h.record_count as usize - kept.len();
    summary.records_removed += removed as u64;
    let verdict = match kept.len() {
        0 => Verdict::Empty,
        _ if removed == 0 => Verdict::Keep,
        _ => Verdict::Smaller(records::rebuild_batch(h, &kept)?),
    };
    Ok((verdict, work))
}

/// The work of handling one batch, counted against a step's budget: its
/// stored bytes, plus its records' bytes when it was compressed (a small
/// zstd batch can hide ten times its size in records to decode and
/// compress again).
fn cost(h: &BatchHeader, recs: &BatchRecords<'_>) -> u64 {
    let stored = h.total_len() as u64;
    if h.compression().is_ok_and(|c| c != records::Compression::None) { stored + recs.plain_len() as u64 } else { stored }
}

/// Whether one record survives compaction.
fn keep(
    r: &RawRecord<'_>,
    h: &BatchHeader,
    map: &KeyMap,
    now: Millis,
    delete_retention_ms: i64,
    summary: &mut CleanSummary,
) -> bool {
    // A record without a key cannot be superseded; keep it (Kafka drops
    // them, but dropping data the policy does not describe is worse).
    let Some(key) = r.key else { return true };
    let offset = r.offset(h);
    let latest = map.latest.get(key).copied();
    if latest.is_some_and(|l| offset < l) {
        return false;
    }
    if r.value.is_some() {
        return true;
    }
    // A tombstone that is the latest of its key goes once it is old enough:
    // no earlier record of the key can survive it. Its key is in the map if
    // it sits in the dirty range (the plan stops before any key the map
    // could not take), so every earlier record of it goes in this pass;
    // otherwise it sits in the part earlier passes compacted, which removed
    // what preceded it.
    let expires = r.timestamp(h).saturating_add(delete_retention_ms);
    if expires <= now {
        summary.tombstones_removed += 1;
        return false;
    }
    summary.next_tombstone_expiry = Some(summary.next_tombstone_expiry.map_or(expires, |t| t.min(expires)));
    true
}

/// Adds an emptied batch to the run of empty batches being merged.
fn extend_run(out: &mut Output, h: &BatchHeader, chunk: &mut Chunk) {
    if out.run.as_ref().is_some_and(|run| h.last_offset() - run.base_offset > i64::from(i32::MAX)) {
        flush_run(out, chunk);
    }
    match &mut out.run {
        Some(run) => {
            run.last_offset_delta = (h.last_offset() - run.base_offset) as i32;
            run.base_timestamp = run.base_timestamp.min(h.base_timestamp);
            run.max_timestamp = run.max_timestamp.max(h.max_timestamp);
            run.partition_leader_epoch = h.partition_leader_epoch;
        }
        None => {
            out.run = Some(BatchHeader {
                attributes: 0,
                producer_id: -1,
                producer_epoch: -1,
                base_sequence: -1,
                ..*h
            })
        }
    }
}

fn flush_run(out: &mut Output, chunk: &mut Chunk) {
    if let Some(run) = out.run.take() {
        chunk.push(&records::empty_batch(&run));
    }
}

/// Appends a chunk of rewritten batches to the side file and indexes them.
fn append_output<S: Storage + ?Sized>(storage: &mut S, out: &mut Output, chunk: &Chunk, index_interval: u64) -> Result<(), LogError> {
    if chunk.bytes.is_empty() {
        return Ok(());
    }
    let pos = storage.append(&out.side, &chunk.bytes)?;
    if pos != out.seg.size {
        return Err(LogError::Storage(crate::storage::StorageError::io(&out.side, "append", "unexpected file length")));
    }
    for &at in &chunk.starts {
        let h = BatchHeader::parse(&chunk.bytes[at..])?;
        out.seg.track(&h, pos + at as u64, index_interval);
    }
    Ok(())
}

/// Whole, valid batches of a closed segment from `pos`: about `want`
/// bytes, but at least one batch.
fn read_batches<S: Storage + ?Sized>(
    storage: &mut S,
    file: &str,
    pos: u64,
    size: u64,
    want: u64,
) -> Result<(Vec<u8>, Vec<BatchHeader>), LogError> {
    let len = want.max(HEADER_LEN as u64).min(size.saturating_sub(pos));
    let mut buf = storage.read(file, pos, len as usize)?;
    let first = BatchHeader::parse(&buf)?;
    if pos + first.total_len() as u64 > size {
        return Err(RecordError::Truncated.into());
    }
    if first.total_len() > buf.len() {
        buf = storage.read(file, pos, first.total_len())?;
    }
    let mut headers = Vec::new();
    let mut at = 0;
    while let Some(rest) = buf.get(at..).filter(|r| r.len() >= HEADER_LEN) {
        let h = BatchHeader::parse(rest)?;
        if h.total_len() > rest.len() {
            break;
        }
        records::validate_batch(&rest[..h.total_len()])?;
        at += h.total_len();
        headers.push(h);
    }
    buf.truncate(at);
    Ok((buf, headers))
}

impl PartitionLog {
    /// Puts a compacted rewrite of a segment in its place: the side file
    /// replaces the segment file atomically, then the in-memory segment.
    pub(super) fn install_cleaned<S: Storage + ?Sized>(
        &mut self,
        storage: &mut S,
        seg: Segment,
        side: &str,
    ) -> Result<(), LogError> {
        storage.sync(side)?;
        storage.replace_with_file(&seg.file, side)?;
        self.segments.insert(seg.base_offset, seg);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::log::{CleanupPolicy, LogConfig};
    use crate::records::{BatchBuilder, Compression, Record};
    use crate::storage::MemStorage;

    const DIR: &str = "t-0";
    const NO_STAMPS: &dyn Fn(&BatchHeader) -> bool = &|_| false;

    fn config() -> LogConfig {
        LogConfig {
            segment_bytes: 400,
            index_interval_bytes: 100,
            cleanup_policy: CleanupPolicy::Compact,
            delete_retention_ms: 1000,
            ..LogConfig::default()
        }
    }

    fn open(s: &mut MemStorage) -> PartitionLog {
        PartitionLog::open(s, DIR, config(), &mut |_| {}).unwrap().0
    }

    /// Appends one batch of (key, value) records stamped `ts`.
    fn append(log: &mut PartitionLog, s: &mut MemStorage, recs: &[(&str, Option<&str>)], ts: i64, c: Compression) {
        let mut b = BatchBuilder::new(c);
        for (k, v) in recs {
            b.push(Record {
                timestamp: ts,
                key: Some(k.as_bytes().to_vec()),
                value: v.map(|v| v.as_bytes().to_vec()),
                ..Record::default()
            });
        }
        let mut bytes = b.build();
        log.append(s, &mut bytes).unwrap();
    }

    /// Every record the log serves, checking offsets are dense batch to batch.
    fn contents(log: &PartitionLog, s: &mut MemStorage) -> Vec<Record> {
        let mut out = Vec::new();
        let mut offset = log.log_start_offset();
        while offset < log.log_end_offset() {
            let bytes = log.read(s, offset, 1 << 20).unwrap();
            assert!(!bytes.is_empty());
            for b in records::split_batches(&bytes) {
                let (h, b) = b.unwrap();
                assert_eq!(h.base_offset, offset, "dense offsets");
                offset = h.last_offset() + 1;
                out.extend(records::decode_records(b).unwrap().1);
            }
        }
        out
    }

    /// Latest (offset, value) per key.
    fn latest(recs: &[Record]) -> BTreeMap<Vec<u8>, (i64, Option<Vec<u8>>)> {
        recs.iter().map(|r| (r.key.clone().unwrap(), (r.offset, r.value.clone()))).collect()
    }

    fn run_to_end(c: &mut Cleaner, log: &mut PartitionLog, s: &mut MemStorage, now: Millis, budget: u64) -> CleanSummary {
        for _ in 0..10_000 {
            match c.step(log, s, now, budget, NO_STAMPS).unwrap() {
                CleanProgress::Working => {}
                CleanProgress::Done(summary) => return summary,
                CleanProgress::Aborted(why) => panic!("aborted: {why}"),
            }
        }
        panic!("the cleaner never finished");
    }

    /// A log with three keys overwritten many times, in several segments.
    fn busy_log(s: &mut MemStorage) -> PartitionLog {
        let mut log = open(s);
        for i in 0..30 {
            let v = format!("v{i}");
            let c = if i % 4 == 0 { Compression::Lz4 } else { Compression::None };
            append(&mut log, s, &[("a", Some(&v)), ("b", Some(&v))], 100, c);
            append(&mut log, s, &[("c", Some(&v))], 100, c);
        }
        append(&mut log, s, &[("a", None)], 100, Compression::None);
        log
    }

    #[test]
    fn keeps_the_latest_record_of_each_key_at_its_offset() {
        let mut s = MemStorage::new();
        let mut log = busy_log(&mut s);
        let before = contents(&log, &mut s);
        let closed_end = log.active_segment().unwrap().base_offset;
        let summary = run_to_end(&mut Cleaner::new(0, CleanerLimits::default()), &mut log, &mut s, 200, 300);
        assert!(summary.segments_rewritten > 0 && summary.records_removed > 0, "{summary:?}");
        assert_eq!(summary.cleaned_up_to, closed_end);
        assert!(summary.bytes_after < summary.bytes_before);
        let after = contents(&log, &mut s);
        assert_eq!(latest(&after), latest(&before), "latest value of every key at its original offset");
        // In the cleaned segments every key appears once.
        let cleaned: Vec<&Record> = after.iter().filter(|r| r.offset < closed_end).collect();
        let mut seen = BTreeMap::new();
        for r in &cleaned {
            assert!(seen.insert(r.key.clone(), r.offset).is_none(), "duplicate key in a cleaned segment");
        }
        assert!(after.windows(2).all(|w| w[0].offset < w[1].offset));
        // The tombstone is young (now 200 < 100 + 1000): kept.
        assert_eq!(summary.next_tombstone_expiry, None, "the tombstone is in the active segment");
        // Recovery accepts the compacted segments and sees the same records.
        let again = open(&mut s);
        assert_eq!(contents(&again, &mut s), after);
        assert_eq!(again.log_end_offset(), log.log_end_offset());
    }

    #[test]
    fn tombstones_stay_until_delete_retention_passes() {
        let mut s = MemStorage::new();
        let mut log = open(&mut s);
        append(&mut log, &mut s, &[("a", Some("1")), ("b", Some("1"))], 100, Compression::None);
        append(&mut log, &mut s, &[("a", None)], 500, Compression::Gzip);
        // Fill up so the tombstone's segment closes.
        for i in 0..10 {
            append(&mut log, &mut s, &[("z", Some(&format!("{i:040}")))], 600, Compression::None);
        }
        assert!(log.segments().count() > 2);
        // At 1000 the tombstone (500 + 1000) is too young: it stays and
        // hides the earlier "a".
        let summary = run_to_end(&mut Cleaner::new(0, CleanerLimits::default()), &mut log, &mut s, 1000, 1 << 20);
        let recs = contents(&log, &mut s);
        let a: Vec<&Record> = recs.iter().filter(|r| r.key.as_deref() == Some(b"a")).collect();
        assert_eq!(a.len(), 1);
        assert_eq!((a[0].offset, a[0].value.clone()), (2, None));
        assert_eq!(summary.next_tombstone_expiry, Some(1500));
        // A later pass with nothing new still removes it once it expired.
        let first_dirty = summary.cleaned_up_to;
        let summary = run_to_end(&mut Cleaner::new(first_dirty, CleanerLimits::default()), &mut log, &mut s, 1500, 1 << 20);
        assert_eq!(summary.tombstones_removed, 1);
        let recs = contents(&log, &mut s);
        assert!(recs.iter().all(|r| r.key.as_deref() != Some(b"a")), "{recs:?}");
        assert_eq!(recs.iter().find(|r| r.key.as_deref() == Some(b"b")).unwrap().offset, 1);
    }

    #[test]
    fn emptied_batches_keep_offsets_dense_and_runs_merge() {
        let mut s = MemStorage::new();
        let mut log = open(&mut s);
        for i in 0..8 {
            append(&mut log, &mut s, &[("k", Some(&format!("{i}")))], 100, Compression::None);
        }
        for i in 0..20 {
            append(&mut log, &mut s, &[("other", Some(&format!("{i:030}")))], 100, Compression::None);
        }
        run_to_end(&mut Cleaner::new(0, CleanerLimits::default()), &mut log, &mut s, 200, 1 << 20);
        let first = log.segments().next().unwrap().clone();
        let bytes = log.read(&mut s, 0, 1 << 20).unwrap();
        let headers: Vec<BatchHeader> = records::split_batches(&bytes).map(|b| b.unwrap().0).collect();
        // The first segment's superseded batches became one empty batch.
        assert_eq!(headers[0].record_count, 0);
        assert_eq!(headers[0].base_offset, 0);
        assert!(headers[0].last_offset() > 0, "{:?}", headers[0]);
        assert_eq!(headers[0].producer_id, -1);
        assert!(first.size < 400);
        // Reading from inside the empty run returns the run (it covers the
        // offset), and goes on into the next segments until there are
        // records: a response of empty batches alone trips librdkafka.
        let inside = log.read(&mut s, 1, 1 << 20).unwrap();
        let batches: Vec<_> = records::split_batches(&inside).map(|b| b.unwrap()).collect();
        assert_eq!(batches[0].0.base_offset, 0);
        assert!(batches.iter().any(|(h, _)| h.record_count > 0), "{:?}", batches.iter().map(|b| b.0).collect::<Vec<_>>());
        assert!(batches.last().unwrap().0.last_offset() >= first.next_offset, "crossed into the next segment");
        // Lookup by time skips the empty batches to the first record left.
        let first_left = contents(&log, &mut s)[0].offset;
        assert_eq!(log.offset_for_timestamp(&mut s, 100).unwrap(), Some((first_left, 100)));
    }

    #[test]
    fn a_crash_after_any_step_leaves_a_log_that_reopens_with_the_same_records() {
        let mut s = MemStorage::new();
        let mut log = busy_log(&mut s);
        let before = latest(&contents(&log, &mut s));
        let mut cleaner = Cleaner::new(0, CleanerLimits::default());
        let mut steps = 0;
        loop {
            // The disk as it is between two steps is what a crash leaves.
            let mut crashed = s.clone();
            let (reopened, report) = PartitionLog::open(&mut crashed, DIR, config(), &mut |_| {}).unwrap();
            assert_eq!(report.truncated_bytes, 0, "step {steps}: {report:?}");
            assert!(crashed.files().all(|(f, _)| !f.ends_with(".cleaned")));
            assert_eq!(latest(&contents(&reopened, &mut crashed)), before, "step {steps}");
            assert_eq!(reopened.log_end_offset(), log.log_end_offset());
            steps += 1;
            match cleaner.step(&mut log, &mut s, 200, 150, NO_STAMPS).unwrap() {
                CleanProgress::Working => {}
                CleanProgress::Done(_) => break,
                CleanProgress::Aborted(why) => panic!("{why}"),
            }
        }
        assert!(steps > 5, "small budgets take many steps ({steps})");
        // A side file present at a crash is removed at open.
        s.append("t-0/00000000000000000000.log.cleaned", b"half").unwrap();
        let (_, report) = PartitionLog::open(&mut s, DIR, config(), &mut |_| {}).unwrap();
        assert_eq!(report.removed_side_files, 1);
    }

    #[test]
    fn appends_between_steps_are_left_alone() {
        let mut s = MemStorage::new();
        let mut log = busy_log(&mut s);
        let mut cleaner = Cleaner::new(0, CleanerLimits::default());
        let mut n = 0;
        loop {
            // New records for old keys and new keys, rolling segments.
            append(&mut log, &mut s, &[("a", Some(&format!("late{n}"))), (&format!("new{n}"), Some("x"))], 300, Compression::None);
            n += 1;
            match cleaner.step(&mut log, &mut s, 200, 120, NO_STAMPS).unwrap() {
                CleanProgress::Working => {}
                CleanProgress::Done(summary) => {
                    assert!(summary.segments_rewritten > 0);
                    break;
                }
                CleanProgress::Aborted(why) => panic!("{why}"),
            }
        }
        let recs = contents(&log, &mut s);
        let a = latest(&recs)[&b"a".to_vec()].clone();
        assert_eq!(a.1, Some(format!("late{}", n - 1).into_bytes()), "the newest append wins");
        for i in 0..n {
            assert!(recs.iter().any(|r| r.key == Some(format!("new{i}").into_bytes())));
        }
        let again = open(&mut s);
        assert_eq!(contents(&again, &mut s), recs);
    }

    #[test]
    fn retention_between_steps_is_skipped_and_truncation_aborts() {
        let mut s = MemStorage::new();
        let mut log = busy_log(&mut s);
        let before = latest(&contents(&log, &mut s));
        let mut cleaner = Cleaner::new(0, CleanerLimits::default());
        assert_eq!(cleaner.step(&mut log, &mut s, 200, 100, NO_STAMPS).unwrap(), CleanProgress::Working);
        // Retention removes the first two segments under the cleaner.
        let third = log.segments().nth(2).unwrap().base_offset;
        log.set_config(LogConfig { cleanup_policy: CleanupPolicy::CompactDelete, retention_ms: 10, ..config() });
        log.apply_retention(&mut s, 1000, third).unwrap();
        assert_eq!(log.log_start_offset(), third);
        run_to_end(&mut cleaner, &mut log, &mut s, 200, 100);
        let after = latest(&contents(&log, &mut s));
        for (k, v) in &before {
            if v.0 >= third {
                assert_eq!(after.get(k), Some(v));
            }
        }
        // A truncation below the planned range makes the pass give up cleanly.
        let mut s2 = MemStorage::new();
        let mut log = busy_log(&mut s2);
        let mut cleaner = Cleaner::new(0, CleanerLimits::default());
        let mut aborted = None;
        for step in 0.. {
            if step == 40 {
                log.truncate_to(&mut s2, 5).unwrap();
            }
            match cleaner.step(&mut log, &mut s2, 200, 100, NO_STAMPS).unwrap() {
                CleanProgress::Working => {}
                CleanProgress::Done(_) => break,
                CleanProgress::Aborted(why) => {
                    aborted = Some(why);
                    break;
                }
            }
        }
        assert!(aborted.is_some(), "the truncation was noticed");
        assert!(s2.files().all(|(f, _)| !f.ends_with(".cleaned")), "the side file is gone");
        let again = PartitionLog::open(&mut s2, DIR, config(), &mut |_| {}).unwrap();
        assert_eq!(again.1.truncated_bytes, 0);
        // Truncation cuts whole batches, and a compacted empty batch may
        // span offset 5: the end is at or below it, the same on disk.
        assert!(log.log_end_offset() <= 5);
        assert_eq!(again.0.log_end_offset(), log.log_end_offset());
    }

    #[test]
    fn a_full_key_map_cleans_the_prefix_it_covers_or_nothing() {
        let mut s = MemStorage::new();
        let mut log = open(&mut s);
        for round in 0..4 {
            for k in 0..12 {
                append(&mut log, &mut s, &[(&format!("key{k:02}"), Some(&format!("r{round}")))], 100, Compression::None);
            }
        }
        let before = contents(&log, &mut s);
        // Room for a few keys: the first segment alone has more, so the pass
        // stalls (with nothing compacted before it, it changes nothing).
        let tiny = CleanerLimits { max_keys: 2, ..CleanerLimits::default() };
        let summary = run_to_end(&mut Cleaner::new(0, tiny), &mut log, &mut s, 200, 1 << 20);
        assert!(summary.stalled);
        assert_eq!(summary.cleaned_up_to, 0);
        assert_eq!(contents(&log, &mut s), before);
        // Room for the keys of the first segments only: those are cleaned,
        // the rest waits for the next pass.
        let per_segment = log.segments().next().unwrap().next_offset as usize;
        let some = CleanerLimits { max_keys: per_segment + 1, ..CleanerLimits::default() };
        let summary = run_to_end(&mut Cleaner::new(0, some), &mut log, &mut s, 200, 1 << 20);
        assert!(!summary.stalled);
        let active = log.active_segment().unwrap().base_offset;
        assert!(summary.cleaned_up_to > 0 && summary.cleaned_up_to < active, "{summary:?}");
        assert_eq!(latest(&contents(&log, &mut s)), latest(&before));
        // Passes continue from there and finish the job.
        let summary = run_to_end(&mut Cleaner::new(summary.cleaned_up_to, some), &mut log, &mut s, 200, 1 << 20);
        assert!(summary.cleaned_up_to > 0);
        assert_eq!(latest(&contents(&log, &mut s)), latest(&before));
    }

    #[test]
    fn min_compaction_lag_holds_young_segments_back() {
        let mut s = MemStorage::new();
        let mut log = open(&mut s);
        log.set_config(LogConfig { min_compaction_lag_ms: 1000, ..config() });
        for i in 0..40 {
            append(&mut log, &mut s, &[("k", Some(&format!("{i:020}")))], if i < 20 { 100 } else { 5000 }, Compression::None);
        }
        let end = cleanable_end(&log, 2000);
        assert!(end > 0 && end < log.active_segment().unwrap().base_offset);
        let summary = run_to_end(&mut Cleaner::new(0, CleanerLimits::default()), &mut log, &mut s, 2000, 1 << 20);
        assert_eq!(summary.cleaned_up_to, end);
        let recs = contents(&log, &mut s);
        assert!(recs.iter().filter(|r| r.offset >= end).count() >= 20, "young records untouched");
    }

    #[test]
    fn batches_the_idempotence_state_refers_to_keep_their_identity() {
        let mut s = MemStorage::new();
        let mut log = open(&mut s);
        for i in 0..10 {
            let mut b = BatchBuilder::new(Compression::None).idempotent(42, 0, i);
            b.push(Record { timestamp: 100, key: Some(b"k".to_vec()), value: Some(vec![1; 30]), ..Record::default() });
            log.append(&mut s, &mut b.build()).unwrap();
        }
        for i in 0..10 {
            append(&mut log, &mut s, &[("k", Some(&format!("{i:030}")))], 100, Compression::None);
        }
        let last_stamped = 9;
        let keep: &dyn Fn(&BatchHeader) -> bool = &|h| h.producer_id == 42 && h.base_offset == last_stamped;
        let mut c = Cleaner::new(0, CleanerLimits::default());
        while let CleanProgress::Working = c.step(&mut log, &mut s, 200, 1 << 20, keep).unwrap() {}
        let mut producers = Vec::new();
        let again = PartitionLog::open(&mut s, DIR, config(), &mut |h| producers.push((h.producer_id, h.base_offset, h.record_count)));
        again.unwrap();
        assert!(producers.contains(&(42, 9, 0)), "{producers:?}");
        assert!(!producers.iter().any(|&(pid, base, _)| pid == 42 && base < 9));
    }
}
