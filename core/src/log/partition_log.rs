//! The log of one partition: an ordered run of segments holding v2 batches
//! with dense, increasing offsets.
//!
//! Recovery on open validates every batch (length, CRC-32C, dense offsets)
//! and cuts the log at the first invalid byte: everything before it is kept,
//! everything after it (the rest of that file and all later segments) is
//! removed. Recovery never panics; it reports what it cut.

use std::collections::BTreeMap;

use super::reader::ChunkReader;
use super::retention::{CleanupPolicy, Ratio};
use super::segment::{Segment, parse_segment_file};
use crate::records::{self, BatchHeader, HEADER_LEN, RecordError};
use crate::storage::{Storage, StorageError};

/// A log's settings. As broker defaults they sit under `[broker.log]` in
/// the server's TOML file, named like Kafka's `log.*` settings; a topic's
/// overrides replace them per topic (see the book's "Retention and
/// compaction" chapter for the table).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// Roll to a new segment when the active one would pass this size.
    pub segment_bytes: u64,
    /// Add a sparse index entry after this many bytes of batches.
    pub index_interval_bytes: u64,
    /// Kafka's `segment.ms` (`log.roll.ms`): roll the active segment once
    /// its first batch is this old, so retention and compaction can reach
    /// its records on a quiet topic.
    pub segment_ms: i64,
    /// Kafka's `cleanup.policy`: delete old segments, compact by key, or both.
    pub cleanup_policy: CleanupPolicy,
    /// Kafka's `retention.ms`: delete a segment once its newest record is
    /// older than this; -1 keeps segments forever.
    pub retention_ms: i64,
    /// Kafka's `retention.bytes`: delete the oldest segments while the log
    /// is larger than this; -1 means no limit.
    pub retention_bytes: i64,
    /// Kafka's `delete.retention.ms`: how long compaction keeps a tombstone
    /// (a record with a null value), so consumers see the deletion.
    pub delete_retention_ms: i64,
    /// Kafka's `min.compaction.lag.ms`: segments with records younger than
    /// this are not compacted yet.
    pub min_compaction_lag_ms: i64,
    /// Kafka's `min.cleanable.dirty.ratio`: compact once this share of the
    /// closed segments was written since the last compaction.
    pub min_cleanable_dirty_ratio: Ratio,
}

impl Default for LogConfig {
    fn default() -> Self {
        // Kafka's defaults.
        const DAY_MS: i64 = 24 * 60 * 60 * 1000;
        Self {
            segment_bytes: 1 << 30,
            index_interval_bytes: 4096,
            segment_ms: 7 * DAY_MS,
            cleanup_policy: CleanupPolicy::Delete,
            retention_ms: 7 * DAY_MS,
            retention_bytes: -1,
            delete_retention_ms: DAY_MS,
            min_compaction_lag_ms: 0,
            min_cleanable_dirty_ratio: Ratio::HALF,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("offset {offset} is out of range [{start}, {end}]")]
    OffsetOutOfRange { offset: i64, start: i64, end: i64 },
    #[error("invalid batch: {0}")]
    Record(#[from] RecordError),
    #[error("a batch at offset {base_offset} does not continue the log ending at {log_end}")]
    NotAtEnd { base_offset: i64, log_end: i64 },
}

/// What recovery found while opening a log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    pub batches: u64,
    pub segments: usize,
    /// Bytes cut from the end (torn or corrupt data and everything after it).
    pub truncated_bytes: u64,
    pub removed_segments: usize,
    /// Half-written compaction outputs (`*.cleaned`) left by a crash and
    /// removed; the segments they were meant to replace are intact.
    pub removed_side_files: usize,
    /// Why the log was cut, if it was.
    pub reason: Option<String>,
}

#[derive(Debug, Clone)]
pub struct PartitionLog {
    pub(super) dir: String,
    pub(super) config: LogConfig,
    pub(super) segments: BTreeMap<i64, Segment>,
    /// The base offset of the first segment: recovery derives it from the
    /// first segment file, so retention moves it by deleting files.
    pub(super) log_start_offset: i64,
    /// Segments written since their last sync, by base offset.
    pub(super) unsynced: BTreeMap<i64, ()>,
}

impl PartitionLog {
    /// Opens (or creates) the log in `dir`, validating all stored batches.
    /// `on_batch` sees every valid batch header in offset order, so callers
    /// can rebuild state derived from the log (e.g. producer sequences).
    pub fn open<S: Storage + ?Sized>(
        storage: &mut S,
        dir: &str,
        config: LogConfig,
        on_batch: &mut dyn FnMut(&BatchHeader),
    ) -> Result<(Self, Recovery), StorageError> {
        let listed = storage.list(&format!("{dir}/"))?;
        let mut report = Recovery::default();
        // A crash during compaction leaves its output half-written; the
        // segment it was to replace is still whole (the swap is atomic).
        for side in listed.iter().filter(|f| super::cleaner::is_side_file(f)) {
            storage.remove(side)?;
            report.removed_side_files += 1;
        }
        let mut files: Vec<(i64, String)> =
            listed.into_iter().filter_map(|f| parse_segment_file(&f).map(|base| (base, f))).collect();
        files.sort();
        let mut log = Self {
            dir: dir.to_string(),
            config,
            segments: BTreeMap::new(),
            log_start_offset: files.first().map_or(0, |(base, _)| *base),
            unsynced: BTreeMap::new(),
        };
        let mut expected = log.log_start_offset;
        let mut cut = false;
        for (base, file) in files {
            if cut {
                report.truncated_bytes += storage.len(&file)?;
                storage.remove(&file)?;
                report.removed_segments += 1;
                continue;
            }
            if base != expected {
                report.reason = Some(format!("{file}: segment starts at {base}, expected {expected}"));
                report.truncated_bytes += storage.len(&file)?;
                storage.remove(&file)?;
                report.removed_segments += 1;
                cut = true;
                continue;
            }
            let mut seg = Segment::new(dir, base);
            let file_len = storage.len(&file)?;
            let stop = scan_segment(storage, &mut seg, file_len, log.config.index_interval_bytes, on_batch, &mut report)?;
            if let Some(reason) = stop {
                report.reason = Some(format!("{file} at byte {}: {reason}", seg.size));
                report.truncated_bytes += file_len - seg.size;
                storage.truncate(&file, seg.size)?;
                cut = true;
            }
            expected = seg.next_offset;
            report.segments += 1;
            log.segments.insert(base, seg);
        }
        // What recovery read may still be only in the page cache (the
        // process died, the machine did not): make it durable before
        // anything is acknowledged on top of it, as PostgreSQL syncs its
        // data directory after a crash.
        for seg in log.segments.values() {
            storage.sync(&seg.file)?;
        }
        Ok((log, report))
    }

    pub fn dir(&self) -> &str {
        &self.dir
    }

    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    /// New settings (a topic's config was altered); they apply from the
    /// next append, retention check or compaction.
    pub fn set_config(&mut self, config: LogConfig) {
        self.config = config;
    }

    /// The segment starting at `base`, if there is one.
    pub fn segment(&self, base: i64) -> Option<&Segment> {
        self.segments.get(&base)
    }

    /// The segment appends go to (the last one).
    pub fn active_segment(&self) -> Option<&Segment> {
        self.segments.values().next_back()
    }

    pub fn log_start_offset(&self) -> i64 {
        self.log_start_offset
    }

    /// The offset the next appended record will get.
    pub fn log_end_offset(&self) -> i64 {
        self.segments.values().next_back().map_or(self.log_start_offset, |s| s.next_offset)
    }

    pub fn size_bytes(&self) -> u64 {
        self.segments.values().map(|s| s.size).sum()
    }

    pub fn segments(&self) -> impl Iterator<Item = &Segment> {
        self.segments.values()
    }

    /// Appends one validated batch, assigning its base offset in place.
    /// Returns the batch header with the assigned offsets.
    pub fn append<S: Storage + ?Sized>(&mut self, storage: &mut S, batch: &mut [u8]) -> Result<BatchHeader, LogError> {
        records::set_base_offset(batch, self.log_end_offset());
        self.append_at_end(storage, batch)
    }

    /// Appends one validated batch that already carries its offsets (a
    /// follower copying its leader's log): it must start at the log end.
    pub fn append_replica<S: Storage + ?Sized>(&mut self, storage: &mut S, batch: &[u8]) -> Result<BatchHeader, LogError> {
        let h = BatchHeader::parse(batch)?;
        let leo = self.log_end_offset();
        if h.base_offset != leo {
            return Err(LogError::NotAtEnd { base_offset: h.base_offset, log_end: leo });
        }
        self.append_at_end(storage, batch)
    }

    /// Throws the whole log away and starts it empty at `offset` (a
    /// follower whose log ends before its leader's log start).
    pub fn restart_at<S: Storage + ?Sized>(&mut self, storage: &mut S, offset: i64) -> Result<(), LogError> {
        for (_, seg) in std::mem::take(&mut self.segments) {
            storage.remove(&seg.file)?;
        }
        self.unsynced.clear();
        self.log_start_offset = offset;
        self.roll(storage, offset)?;
        self.sync(storage)?;
        Ok(())
    }

    fn append_at_end<S: Storage + ?Sized>(&mut self, storage: &mut S, batch: &[u8]) -> Result<BatchHeader, LogError> {
        let leo = self.log_end_offset();
        let h = BatchHeader::parse(batch)?;
        debug_assert_eq!(h.total_len(), batch.len(), "caller passes exactly one validated batch");
        let needs_roll = match self.segments.values().next_back() {
            None => true,
            Some(active) => active.size > 0 && active.size + batch.len() as u64 > self.config.segment_bytes,
        };
        if needs_roll {
            self.roll(storage, leo)?;
        }
        let active = self.segments.values_mut().next_back().expect("a segment after roll");
        let pos = storage.append(&active.file, batch)?;
        if pos != active.size {
            // The file holds bytes we do not account for: never interleave.
            storage.truncate(&active.file, active.size)?;
            return Err(LogError::Storage(StorageError::io(&active.file, "append", "unexpected file length")));
        }
        active.track(&h, pos, self.config.index_interval_bytes);
        self.unsynced.insert(active.base_offset, ());
        Ok(h)
    }

    /// Starts a new active segment at `base`, syncing the old one first so
    /// only the active segment can ever hold unsynced bytes.
    pub(super) fn roll<S: Storage + ?Sized>(&mut self, storage: &mut S, base: i64) -> Result<(), LogError> {
        // The old active segment is synced here even if a sync the adapter
        // runs ([`Self::unsynced_files`], already marked synced) covers it:
        // a sync covers one file, so a later sync of the new segment must
        // find everything before it durable already.
        if let Some(active) = self.segments.values().next_back()
            && !self.unsynced.contains_key(&active.base_offset)
        {
            storage.sync(&active.file)?;
        }
        self.sync(storage)?;
        let seg = Segment::new(&self.dir, base);
        storage.append(&seg.file, &[])?;
        self.unsynced.insert(base, ());
        self.segments.insert(base, seg);
        Ok(())
    }

    /// Whether any appended data is not yet durable.
    pub fn needs_sync(&self) -> bool {
        !self.unsynced.is_empty()
    }

    /// The files whose writes are not yet durable: syncing each of them
    /// (then [`Self::mark_synced`]) is what [`Self::sync`] does. A broker
    /// syncing many partitions at once collects them to sync them together.
    pub fn unsynced_files(&self) -> impl Iterator<Item = &str> {
        self.unsynced.keys().filter_map(|base| self.segments.get(base)).map(|seg| seg.file.as_str())
    }

    /// Records that every file of [`Self::unsynced_files`] was synced.
    pub fn mark_synced(&mut self) {
        self.unsynced.clear();
    }

    pub fn sync<S: Storage + ?Sized>(&mut self, storage: &mut S) -> Result<(), StorageError> {
        while let Some((&base, ())) = self.unsynced.first_key_value() {
            if let Some(seg) = self.segments.get(&base) {
                storage.sync(&seg.file)?;
            }
            self.unsynced.remove(&base);
        }
        Ok(())
    }

    /// Reads whole batches starting with the one that holds `offset`, up to
    /// `max_bytes` — but always at least one whole batch, so a consumer can
    /// make progress past a batch larger than its limit (Kafka's KIP-74).
    /// An offset equal to the log end offset yields no bytes.
    ///
    /// What is returned is verified before it leaves: every batch passes its
    /// CRC-32C, the first holds `offset`, and offsets run on without a gap.
    /// A read that fails this is retried (reads can be wrong once while the
    /// data at rest is fine); one that keeps failing is an error, never a
    /// silent skip past a record.
    pub fn read<S: Storage + ?Sized>(&self, storage: &mut S, offset: i64, max_bytes: usize) -> Result<Vec<u8>, LogError> {
        const ATTEMPTS: usize = 3;
        let mut last = None;
        for _ in 0..ATTEMPTS {
            match self.read_once(storage, offset, max_bytes) {
                Ok(bytes) => return Ok(bytes),
                Err(LogError::Record(e)) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(LogError::Record(last.expect("at least one attempt")))
    }

    fn read_once<S: Storage + ?Sized>(&self, storage: &mut S, offset: i64, max_bytes: usize) -> Result<Vec<u8>, LogError> {
        let (start, end) = (self.log_start_offset, self.log_end_offset());
        if offset < start || offset > end {
            return Err(LogError::OffsetOutOfRange { offset, start, end });
        }
        let Some((_, seg)) = self.segments.range(..=offset).next_back() else {
            return Ok(Vec::new());
        };
        if offset >= seg.next_offset {
            return Ok(Vec::new());
        }
        let mut reader = ChunkReader::new(storage, &seg.file, seg.size);
        // Find the first batch whose last offset reaches `offset`. Base
        // offsets are outside the CRC, so each header must continue the
        // chain from the index entry: a misread one is caught here.
        let (mut expected_base, mut pos) = seg.scan_start(offset);
        let first = loop {
            let Some(bytes) = reader.bytes_at(pos, HEADER_LEN)? else {
                return Err(LogError::Record(RecordError::Truncated));
            };
            let h = BatchHeader::parse(bytes)?;
            if h.base_offset != expected_base {
                return Err(LogError::Record(RecordError::BadBaseOffset { found: h.base_offset, expected: expected_base }));
            }
            if h.last_offset() >= offset {
                break h;
            }
            expected_base = h.last_offset() + 1;
            pos += h.total_len() as u64;
        };
        // Take whole batches while they fit in `max_bytes`, going on into
        // the next segments once this one is used up: compaction can leave
        // segments that hold little but empty batches, and a response
        // without a single record makes librdkafka take the batch for one
        // too large for its buffer (it doubles the buffer, then errors).
        let begin = pos;
        let first_end = pos + first.total_len() as u64;
        let mut end_pos = fit_batches(&mut reader, first_end, seg.size, max_bytes.saturating_sub(first.total_len()))?;
        drop(reader);
        let mut bytes = storage.read(&seg.file, begin, (end_pos - begin) as usize)?;
        let mut last = seg;
        while end_pos == last.size && bytes.len() < max_bytes {
            let Some(next) = self.segments.get(&last.next_offset) else { break };
            let mut reader = ChunkReader::new(&mut *storage, &next.file, next.size);
            end_pos = fit_batches(&mut reader, 0, next.size, max_bytes - bytes.len())?;
            drop(reader);
            if end_pos == 0 {
                break;
            }
            bytes.extend_from_slice(&storage.read(&next.file, 0, end_pos as usize)?);
            last = next;
        }
        verify_read(&bytes, first.base_offset)?;
        Ok(bytes)
    }

    /// The earliest offset whose record timestamp is at or after `timestamp`,
    /// with that record's timestamp; `None` if no record is that late.
    pub fn offset_for_timestamp<S: Storage + ?Sized>(
        &self,
        storage: &mut S,
        timestamp: i64,
    ) -> Result<Option<(i64, i64)>, LogError> {
        for seg in self.segments.values().filter(|s| s.max_timestamp >= timestamp) {
            // One chunked reader per segment: headers and the batch that
            // matches come from the same large reads.
            let mut reader = ChunkReader::new(&mut *storage, &seg.file, seg.size);
            let mut pos = 0;
            while pos < seg.size {
                let Some(bytes) = reader.bytes_at(pos, HEADER_LEN)? else { break };
                let h = BatchHeader::parse(bytes)?;
                if h.max_timestamp >= timestamp {
                    let Some(batch) = reader.bytes_at(pos, h.total_len())? else { break };
                    let (_, recs) = records::decode_records(batch)?;
                    if let Some(r) = recs.iter().find(|r| r.timestamp >= timestamp) {
                        return Ok(Some((r.offset, r.timestamp)));
                    }
                }
                pos += h.total_len() as u64;
            }
        }
        Ok(None)
    }

    /// Removes everything at or after `offset` (used when a follower's log
    /// diverged; see the replication chapter).
    pub fn truncate_to<S: Storage + ?Sized>(&mut self, storage: &mut S, offset: i64) -> Result<(), LogError> {
        let later: Vec<i64> = self.segments.range(offset + 1..).map(|(b, _)| *b).collect();
        for base in later {
            if let Some(seg) = self.segments.remove(&base) {
                storage.remove(&seg.file)?;
                self.unsynced.remove(&base);
            }
        }
        let Some((_, seg)) = self.segments.range_mut(..=offset).next_back() else {
            return Ok(());
        };
        if seg.next_offset <= offset {
            return Ok(());
        }
        // Find the first batch ending at or past `offset` and cut before it.
        let mut pos = 0;
        {
            let mut reader = ChunkReader::new(storage, &seg.file, seg.size);
            while let Some(bytes) = reader.bytes_at(pos, HEADER_LEN)? {
                let h = BatchHeader::parse(bytes)?;
                if h.last_offset() >= offset {
                    break;
                }
                pos += h.total_len() as u64;
            }
        }
        storage.truncate(&seg.file, pos)?;
        // Rebuild the segment's bookkeeping from what is left.
        let mut fresh = Segment::new(&self.dir, seg.base_offset);
        let mut report = Recovery::default();
        scan_segment(storage, &mut fresh, pos, self.config.index_interval_bytes, &mut |_| {}, &mut report)?;
        *seg = fresh;
        Ok(())
    }

    /// Removes every file of this log, a compaction's side file included.
    pub fn delete<S: Storage + ?Sized>(self, storage: &mut S) -> Result<(), StorageError> {
        for file in storage.list(&format!("{}/", self.dir))? {
            storage.remove(&file)?;
        }
        Ok(())
    }
}

/// The end of the whole batches from `from` that fit in `budget` bytes
/// (`from` itself if none does), within the first `limit` bytes.
fn fit_batches<S: Storage + ?Sized>(reader: &mut ChunkReader<'_, S>, from: u64, limit: u64, budget: usize) -> Result<u64, LogError> {
    let mut end = from;
    while end < limit {
        let Some(bytes) = reader.bytes_at(end, HEADER_LEN)? else { break };
        let next = end + BatchHeader::parse(bytes)?.total_len() as u64;
        if next - from > budget as u64 {
            break;
        }
        end = next;
    }
    Ok(end)
}

/// Validates the batches of one segment file up to `file_len`, tracking each
/// in `seg`. Returns why it stopped early, if it did.
pub(super) fn scan_segment<S: Storage + ?Sized>(
    storage: &mut S,
    seg: &mut Segment,
    file_len: u64,
    index_interval: u64,
    on_batch: &mut dyn FnMut(&BatchHeader),
    report: &mut Recovery,
) -> Result<Option<String>, StorageError> {
    let file = seg.file.clone();
    let mut pos = 0u64;
    let mut reader = ChunkReader::new(&mut *storage, &file, file_len);
    while pos < file_len {
        let expected = seg.next_offset;
        let checked = match reader.bytes_at(pos, HEADER_LEN)? {
            None => Err("torn batch header".to_string()),
            Some(bytes) => match BatchHeader::parse(bytes) {
                Err(e) => Err(e.to_string()),
                Ok(header) => match reader.bytes_at(pos, header.total_len())? {
                    None => Err("torn batch".to_string()),
                    Some(bytes) => check_batch(bytes, expected),
                },
            },
        };
        let h = match checked {
            Ok(h) => h,
            Err(reason) => {
                // A read can be wrong once (a flaky controller or cable)
                // while the data at rest is fine: re-read before cutting
                // the log, which would throw away good records.
                drop(reader);
                match reread_batch(storage, &file, pos, file_len, expected)? {
                    Some(h) => {
                        reader = ChunkReader::new(&mut *storage, &file, file_len);
                        h
                    }
                    None => return Ok(Some(reason)),
                }
            }
        };
        on_batch(&h);
        seg.track(&h, pos, index_interval);
        report.batches += 1;
        pos += h.total_len() as u64;
    }
    Ok(None)
}

/// A whole valid batch that continues the log at `expected`.
fn check_batch(bytes: &[u8], expected: i64) -> Result<BatchHeader, String> {
    let h = records::validate_batch(bytes).map_err(|e| e.to_string())?;
    if h.base_offset != expected {
        return Err(format!("batch at offset {} where {expected} was expected", h.base_offset));
    }
    Ok(h)
}

/// Fresh, uncached reads of the batch at `pos`; its header if one of them
/// is a valid batch continuing the log at `expected`.
fn reread_batch<S: Storage + ?Sized>(
    storage: &mut S,
    file: &str,
    pos: u64,
    file_len: u64,
    expected: i64,
) -> Result<Option<BatchHeader>, StorageError> {
    const ATTEMPTS: usize = 16;
    for _ in 0..ATTEMPTS {
        let header = storage.read(file, pos, HEADER_LEN)?;
        let Ok(h) = BatchHeader::parse(&header) else { continue };
        if pos + h.total_len() as u64 > file_len {
            continue;
        }
        let bytes = storage.read(file, pos, h.total_len())?;
        if let Ok(h) = check_batch(&bytes, expected) {
            return Ok(Some(h));
        }
    }
    Ok(None)
}

/// Checks bytes about to be served: whole batches that pass their CRC,
/// starting exactly at `first_base` (as the verified scan found it), with
/// dense offsets after it.
fn verify_read(bytes: &[u8], first_base: i64) -> Result<(), RecordError> {
    let mut expected = first_base;
    for batch in records::split_batches(bytes) {
        let (h, _) = batch?;
        if h.base_offset != expected {
            return Err(RecordError::BadBaseOffset { found: h.base_offset, expected });
        }
        expected = h.last_offset() + 1;
    }
    Ok(())
}
