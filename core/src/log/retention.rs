//! Retention: deleting whole old segments by time and by size, which moves
//! the log start offset forward; and rolling the active segment by age.
//!
//! Only a prefix of segments is ever deleted, oldest first, each removal
//! durable before the next: a crash part-way leaves a contiguous suffix of
//! segments, and recovery takes the log start offset from the first file.

use super::partition_log::{LogError, PartitionLog};
use crate::Millis;
use crate::storage::Storage;

/// Kafka's `cleanup.policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum CleanupPolicy {
    /// Delete old segments (retention.ms, retention.bytes).
    Delete,
    /// Keep the latest record per key (the log cleaner).
    Compact,
    /// Both: compact, and delete segments past retention.
    CompactDelete,
}

impl CleanupPolicy {
    pub fn parse(value: &str) -> Option<Self> {
        let mut compact = false;
        let mut delete = false;
        for part in value.split(',').map(str::trim) {
            match part {
                "compact" => compact = true,
                "delete" => delete = true,
                _ => return None,
            }
        }
        match (compact, delete) {
            (true, true) => Some(Self::CompactDelete),
            (true, false) => Some(Self::Compact),
            (false, true) => Some(Self::Delete),
            (false, false) => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Delete => "delete",
            Self::Compact => "compact",
            Self::CompactDelete => "compact,delete",
        }
    }

    pub fn deletes(self) -> bool {
        matches!(self, Self::Delete | Self::CompactDelete)
    }

    pub fn compacts(self) -> bool {
        matches!(self, Self::Compact | Self::CompactDelete)
    }
}

impl TryFrom<String> for CleanupPolicy {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Self::parse(&s).ok_or_else(|| format!("cleanup policy {s:?} is not delete, compact or \"compact,delete\""))
    }
}

impl From<CleanupPolicy> for String {
    fn from(p: CleanupPolicy) -> String {
        p.name().to_string()
    }
}

/// A fraction in [0, 1] (`min.cleanable.dirty.ratio`). Never NaN, so it can
/// be `Eq` like the rest of the config.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "f64", into = "f64")]
pub struct Ratio(f64);

impl Eq for Ratio {}

impl Ratio {
    pub const HALF: Ratio = Ratio(0.5);

    pub fn new(v: f64) -> Option<Self> {
        (0.0..=1.0).contains(&v).then_some(Ratio(v))
    }

    pub fn get(self) -> f64 {
        self.0
    }
}

impl TryFrom<f64> for Ratio {
    type Error = String;
    fn try_from(v: f64) -> Result<Self, String> {
        Ratio::new(v).ok_or_else(|| format!("{v} is not a ratio between 0 and 1"))
    }
}

impl From<Ratio> for f64 {
    fn from(r: Ratio) -> f64 {
        r.0
    }
}

/// What one retention pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionOutcome {
    pub deleted_segments: usize,
    pub deleted_bytes: u64,
    /// The active segment was rolled because all of it had expired.
    pub rolled: bool,
}

impl PartitionLog {
    /// Deletes the oldest segments that retention no longer keeps: those
    /// whose newest record is older than `retention.ms` (by `now`), and
    /// those that keep the log above `retention.bytes`. Does nothing unless
    /// the cleanup policy includes `delete`. Only segments wholly below
    /// `high_watermark` go, so nothing a consumer could not yet read (or a
    /// producer was not yet told is stored) disappears.
    ///
    /// When every segment has expired, the active one included, a new empty
    /// active segment is rolled at the log end first, so the log end offset
    /// survives (Kafka does the same).
    pub fn apply_retention<S: Storage + ?Sized>(
        &mut self,
        storage: &mut S,
        now: Millis,
        high_watermark: i64,
    ) -> Result<RetentionOutcome, LogError> {
        let mut outcome = RetentionOutcome::default();
        if !self.config.cleanup_policy.deletes() {
            return Ok(outcome);
        }
        let doomed = self.expired_prefix(now, high_watermark);
        if doomed.is_empty() {
            return Ok(outcome);
        }
        if doomed.len() == self.segments.len() {
            let leo = self.log_end_offset();
            self.roll(storage, leo)?;
            // The new segment's name must be durable before the last old
            // one goes: it is what tells recovery where the log starts.
            self.sync(storage)?;
            outcome.rolled = true;
        }
        for base in doomed {
            let Some(seg) = self.segments.get(&base) else { continue };
            storage.remove(&seg.file)?;
            outcome.deleted_bytes += seg.size;
            outcome.deleted_segments += 1;
            self.segments.remove(&base);
            self.unsynced.remove(&base);
            self.log_start_offset = self.segments.keys().next().copied().unwrap_or(self.log_start_offset);
        }
        Ok(outcome)
    }

    /// Base offsets of the oldest segments retention deletes, in order.
    fn expired_prefix(&self, now: Millis, high_watermark: i64) -> Vec<i64> {
        let c = &self.config;
        let mut size = self.size_bytes();
        let mut doomed = Vec::new();
        for seg in self.segments.values() {
            // An empty segment is the active one: nothing to delete.
            if seg.size == 0 || seg.next_offset > high_watermark {
                break;
            }
            // A segment without timestamps (-1) never expires by time.
            let by_time = c.retention_ms >= 0 && seg.max_timestamp >= 0 && now.saturating_sub(seg.max_timestamp) > c.retention_ms;
            let by_size = c.retention_bytes >= 0 && size - seg.size >= c.retention_bytes as u64;
            if !(by_time || by_size) {
                break;
            }
            size -= seg.size;
            doomed.push(seg.base_offset);
        }
        doomed
    }

    /// Rolls the active segment if its first batch is older than
    /// `segment.ms`, so its records become eligible for retention and
    /// compaction on a topic that receives little data. Returns whether it
    /// rolled.
    pub fn roll_if_due<S: Storage + ?Sized>(&mut self, storage: &mut S, now: Millis) -> Result<bool, LogError> {
        let Some(active) = self.active_segment() else { return Ok(false) };
        let due = self.config.segment_ms >= 0
            && active.size > 0
            && active.first_timestamp >= 0
            && now.saturating_sub(active.first_timestamp) > self.config.segment_ms;
        if due {
            let leo = self.log_end_offset();
            self.roll(storage, leo)?;
        }
        Ok(due)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::LogConfig;
    use crate::records::{BatchBuilder, Compression, Record};
    use crate::storage::MemStorage;

    const DIR: &str = "t-0";

    fn config(retention_ms: i64, retention_bytes: i64) -> LogConfig {
        LogConfig { segment_bytes: 200, index_interval_bytes: 64, retention_ms, retention_bytes, ..LogConfig::default() }
    }

    /// Appends one batch of `n` records stamped `ts`; returns its base offset.
    fn append(log: &mut PartitionLog, s: &mut MemStorage, n: usize, ts: i64) -> i64 {
        let mut b = BatchBuilder::new(Compression::None);
        for i in 0..n {
            b.push(Record { timestamp: ts, key: Some(vec![i as u8]), value: Some(vec![7; 40]), ..Record::default() });
        }
        let mut bytes = b.build();
        log.append(s, &mut bytes).unwrap().base_offset
    }

    fn open(s: &mut MemStorage, c: LogConfig) -> PartitionLog {
        PartitionLog::open(s, DIR, c, &mut |_| {}).unwrap().0
    }

    #[test]
    fn time_retention_deletes_old_segments_and_moves_the_start() {
        let mut s = MemStorage::new();
        let mut log = open(&mut s, config(1000, -1));
        for i in 0..6 {
            append(&mut log, &mut s, 2, 100 * i);
        }
        append(&mut log, &mut s, 2, 5000);
        let segs: Vec<(i64, i64)> = log.segments().map(|g| (g.base_offset, g.max_timestamp)).collect();
        assert!(segs.len() >= 3, "{segs:?}");
        let leo = log.log_end_offset();
        // At 1200 only segments whose newest record is before 200 expire.
        let out = log.apply_retention(&mut s, 1200, leo).unwrap();
        assert!(out.deleted_segments >= 1);
        let first = log.segments().next().unwrap();
        assert!(first.max_timestamp >= 200, "{segs:?}");
        assert_eq!(log.log_start_offset(), first.base_offset);
        assert_eq!(log.log_end_offset(), leo);
        // Reading below the new start is out of range; at it, fine.
        let start = log.log_start_offset();
        assert!(matches!(log.read(&mut s, start - 1, 1000), Err(LogError::OffsetOutOfRange { .. })));
        assert!(!log.read(&mut s, start, 1000).unwrap().is_empty());
        // Recovery derives the same start from the files.
        let again = open(&mut s, config(1000, -1));
        assert_eq!((again.log_start_offset(), again.log_end_offset()), (start, leo));
    }

    #[test]
    fn when_everything_expired_the_active_segment_is_rolled_and_the_end_kept() {
        let mut s = MemStorage::new();
        let mut log = open(&mut s, config(1000, -1));
        for i in 0..5 {
            append(&mut log, &mut s, 2, i);
        }
        let leo = log.log_end_offset();
        let out = log.apply_retention(&mut s, 10_000, leo).unwrap();
        assert!(out.rolled);
        assert_eq!(log.segments().count(), 1);
        assert_eq!((log.log_start_offset(), log.log_end_offset()), (leo, leo));
        assert_eq!(s.files().count(), 1, "only the new empty segment remains");
        assert!(log.read(&mut s, leo, 100).unwrap().is_empty());
        let again = open(&mut s, config(1000, -1));
        assert_eq!((again.log_start_offset(), again.log_end_offset()), (leo, leo));
        // Appends continue at the old end.
        let mut log = again;
        assert_eq!(append(&mut log, &mut s, 1, 20_000), leo);
    }

    #[test]
    fn nothing_at_or_above_the_high_watermark_is_deleted() {
        let mut s = MemStorage::new();
        let mut log = open(&mut s, config(1000, -1));
        for i in 0..5 {
            append(&mut log, &mut s, 2, i);
        }
        let out = log.apply_retention(&mut s, 10_000, 0).unwrap();
        assert_eq!(out, RetentionOutcome::default());
        let second = log.segments().nth(1).unwrap().base_offset;
        log.apply_retention(&mut s, 10_000, second).unwrap();
        assert_eq!(log.log_start_offset(), second);
    }

    #[test]
    fn size_retention_keeps_the_newest_segments_under_the_limit() {
        let mut s = MemStorage::new();
        let mut log = open(&mut s, config(-1, 300));
        for i in 0..10 {
            append(&mut log, &mut s, 1, i);
        }
        let before = log.size_bytes();
        let leo = log.log_end_offset();
        let out = log.apply_retention(&mut s, 0, leo).unwrap();
        assert!(out.deleted_segments > 0 && !out.rolled);
        assert!(log.size_bytes() < before);
        // As Kafka: a segment goes only if the rest still holds the limit,
        // so the log stays at or above it by less than one segment.
        let first = log.segments().next().unwrap().size;
        assert!(log.size_bytes() >= 300, "{}", log.size_bytes());
        assert!(log.size_bytes() - first < 300);
        assert_eq!(log.log_end_offset(), leo);
    }

    #[test]
    fn compact_only_topics_and_infinite_retention_keep_everything() {
        let mut s = MemStorage::new();
        let mut log = open(&mut s, LogConfig { cleanup_policy: CleanupPolicy::Compact, ..config(1, 1) });
        for i in 0..5 {
            append(&mut log, &mut s, 2, i);
        }
        let leo = log.log_end_offset();
        assert_eq!(log.apply_retention(&mut s, 1 << 40, leo).unwrap(), RetentionOutcome::default());
        log.set_config(config(-1, -1));
        assert_eq!(log.apply_retention(&mut s, 1 << 40, leo).unwrap(), RetentionOutcome::default());
        assert_eq!(log.log_start_offset(), 0);
    }

    #[test]
    fn segment_ms_rolls_an_old_active_segment() {
        let mut s = MemStorage::new();
        let mut log = open(&mut s, LogConfig { segment_ms: 100, segment_bytes: 1 << 20, ..LogConfig::default() });
        assert!(!log.roll_if_due(&mut s, 1000).unwrap(), "nothing to roll while empty");
        append(&mut log, &mut s, 1, 1000);
        assert!(!log.roll_if_due(&mut s, 1100).unwrap());
        assert!(log.roll_if_due(&mut s, 1101).unwrap());
        assert_eq!(log.segments().count(), 2);
        assert!(!log.roll_if_due(&mut s, 5000).unwrap(), "the new active segment is empty");
    }

    #[test]
    fn policies_parse_like_kafka() {
        assert_eq!(CleanupPolicy::parse("compact,delete"), Some(CleanupPolicy::CompactDelete));
        assert_eq!(CleanupPolicy::parse("delete, compact"), Some(CleanupPolicy::CompactDelete));
        assert_eq!(CleanupPolicy::parse("compact"), Some(CleanupPolicy::Compact));
        assert_eq!(CleanupPolicy::parse("delete"), Some(CleanupPolicy::Delete));
        assert_eq!(CleanupPolicy::parse(""), None);
        assert_eq!(CleanupPolicy::parse("compacted"), None);
        assert!(Ratio::new(1.5).is_none() && Ratio::new(f64::NAN).is_none());
    }
}
