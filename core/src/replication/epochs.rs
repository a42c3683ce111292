//! The leader-epoch cache of one replica: at which offset each leader epoch
//! began. It answers OffsetsForLeaderEpoch ("where does epoch e end in your
//! log?") and tells a returning follower where its log stops agreeing with
//! the leader's, so it truncates exactly there — never past the high
//! watermark, and never keeping an entry a newer leader does not have.

use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EpochCache {
    /// leader epoch → first offset written in it, ascending in both.
    starts: BTreeMap<i32, i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EpochError {
    #[error("epoch {epoch} starting at {start} goes back from epoch {last} starting at {last_start}")]
    GoesBack { epoch: i32, start: i64, last: i32, last_start: i64 },
}

impl EpochCache {
    /// Records that `epoch` wrote its first batch at `start`. Repeating the
    /// latest epoch is a no-op; an older epoch or an earlier start is an
    /// error (a bug or damaged state, never silently accepted).
    pub fn assign(&mut self, epoch: i32, start: i64) -> Result<(), EpochError> {
        if let Some((&last, &last_start)) = self.starts.last_key_value() {
            if epoch == last {
                return Ok(());
            }
            if epoch < last || start < last_start {
                return Err(EpochError::GoesBack { epoch, start, last, last_start });
            }
        }
        self.starts.insert(epoch, start);
        Ok(())
    }

    /// Where the oldest known epoch begins.
    pub fn first_start(&self) -> Option<i64> {
        self.starts.first_key_value().map(|(_, s)| *s)
    }

    pub fn latest(&self) -> Option<(i32, i64)> {
        self.starts.last_key_value().map(|(e, s)| (*e, *s))
    }

    /// OffsetsForLeaderEpoch: the largest epoch ≤ `epoch` this log knows and
    /// the offset where it ends (the start of the next epoch, or the log
    /// end for the latest). `None` if the log knows no epoch that old.
    pub fn end_offset_for(&self, epoch: i32, log_end: i64) -> Option<(i32, i64)> {
        let (&found, _) = self.starts.range(..=epoch).next_back()?;
        let end = self.starts.range(found + 1..).next().map_or(log_end, |(_, &s)| s);
        Some((found, end))
    }

    /// Forgets epochs that begin at or after `offset` (after a truncation).
    pub fn truncate_from(&mut self, offset: i64) {
        self.starts.retain(|_, s| *s < offset);
    }
}

/// Where a follower must cut its log before fetching from a new leader:
/// it asks the leader where the follower's latest epoch ends there
/// (`leader_answer`, from OffsetsForLeaderEpoch) and keeps no more than
/// that; with no answer it keeps what it has up to the high watermark,
/// which every in-sync replica holds.
pub fn truncation_point(follower_log_end: i64, high_watermark: i64, leader_answer: Option<(i32, i64)>, follower_epoch: Option<i32>) -> i64 {
    match (leader_answer, follower_epoch) {
        // The leader knows our epoch (or an older one): cut where it ends there.
        (Some((epoch, end)), Some(ours)) if epoch <= ours => follower_log_end.min(end),
        _ => follower_log_end.min(high_watermark),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_answer_where_they_end_and_refuse_to_go_back() {
        let mut c = EpochCache::default();
        c.assign(0, 0).unwrap();
        c.assign(0, 5).unwrap();
        c.assign(2, 10).unwrap();
        c.assign(5, 30).unwrap();
        assert_eq!(c.end_offset_for(0, 40), Some((0, 10)));
        assert_eq!(c.end_offset_for(1, 40), Some((0, 10)));
        assert_eq!(c.end_offset_for(2, 40), Some((2, 30)));
        assert_eq!(c.end_offset_for(9, 40), Some((5, 40)));
        assert!(c.assign(4, 50).is_err());
        assert!(c.assign(6, 20).is_err());
        c.truncate_from(30);
        assert_eq!(c.latest(), Some((2, 10)));
        let mut empty = EpochCache::default();
        assert_eq!(empty.end_offset_for(3, 0), None);
        empty.assign(3, 7).unwrap();
        assert_eq!(empty.end_offset_for(2, 9), None);
    }

    #[test]
    fn a_returning_follower_cuts_where_the_leaders_history_diverges() {
        // The follower wrote epoch 1 up to 20; the new leader's epoch 1
        // ended at 15 (it led epoch 2 from 15): cut at 15.
        assert_eq!(truncation_point(20, 12, Some((1, 15)), Some(1)), 15);
        // The leader's history agrees beyond our end: keep everything.
        assert_eq!(truncation_point(20, 12, Some((1, 25)), Some(1)), 20);
        // No usable answer: keep only what is surely committed.
        assert_eq!(truncation_point(20, 12, None, Some(1)), 12);
    }
}
