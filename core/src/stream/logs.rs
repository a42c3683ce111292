//! Reading a query's offset and commit logs back after a restart.
//!
//! Two runners of one query may both append an entry for the same batch
//! (a zombie that has not noticed it was replaced, or a retry whose first
//! append did land): the first entry for a batch id in log order wins and
//! later ones are ignored, by every reader alike. Purged logs start at any
//! batch: the first entry in log order is the floor, and entries below it
//! (a zombie's late append for a purged batch) are ignored too
//! (`log_view.rs` has the argument).

use std::collections::BTreeMap;

use super::{BatchId, CommitEntry, OffsetEntry, StreamError};

/// Where a query stands according to its logs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Recovery {
    /// The last committed batch, if any.
    pub committed: Option<(OffsetEntry, CommitEntry)>,
    /// A batch logged but not committed: it must run again, as logged.
    pub pending: Option<OffsetEntry>,
}

/// Keeps the first entry per batch id, in log order.
fn first_wins<T, F: Fn(&T) -> BatchId>(entries: impl IntoIterator<Item = T>, id: F) -> BTreeMap<BatchId, T> {
    let mut out = BTreeMap::new();
    for e in entries {
        out.entry(id(&e)).or_insert(e);
    }
    out
}

/// Checks the logs and says where to resume. Errors mean the logs were
/// damaged or edited: resuming would lose or repeat input.
pub fn recover(offsets: Vec<OffsetEntry>, commits: Vec<CommitEntry>) -> Result<Recovery, StreamError> {
    let floor = offsets.first().map_or(0, |e| e.batch);
    let offsets = first_wins(offsets.into_iter().filter(|e| e.batch >= floor), |e| e.batch);
    let commits = first_wins(commits.into_iter().filter(|e| e.batch >= floor), |e| e.batch);
    // Dense batch ids (old entries may have been purged, so from any start).
    let mut prev: Option<&OffsetEntry> = None;
    for (id, entry) in &offsets {
        if let Some(p) = prev {
            if *id != p.batch + 1 {
                return Err(StreamError::OffsetGap { missing: p.batch + 1, next: *id });
            }
            contiguous(p, entry)?;
        }
        prev = Some(entry);
    }
    for id in commits.keys() {
        if !offsets.contains_key(id) {
            return Err(StreamError::CommitWithoutOffsets { batch: *id });
        }
    }
    let Some((&last, _)) = offsets.last_key_value() else {
        return Ok(Recovery::default());
    };
    let last_commit = commits.keys().next_back().copied();
    let committed = last_commit.map(|c| (offsets[&c].clone(), commits[&c].clone()));
    let pending = match last_commit {
        Some(c) if c == last => None,
        Some(c) if c + 1 == last => Some(offsets[&last].clone()),
        Some(c) => return Err(StreamError::TooManyPending { from: c + 1, to: last }),
        None if offsets.len() == 1 => Some(offsets[&last].clone()),
        None => {
            let first = *offsets.keys().next().expect("not empty");
            return Err(StreamError::TooManyPending { from: first, to: last });
        }
    };
    Ok(Recovery { committed, pending })
}

/// Batch `next` must start every partition where `prev` ended it (a
/// partition new in `next` starts anywhere).
pub(crate) fn contiguous(prev: &OffsetEntry, next: &OffsetEntry) -> Result<(), StreamError> {
    for r in &next.ranges {
        if let Some(p) = prev.ranges.iter().find(|p| p.topic == r.topic && p.partition == r.partition) {
            if p.end != r.start {
                return Err(StreamError::RangesNotContiguous {
                    batch: next.batch,
                    prev: prev.batch,
                    topic: r.topic.clone(),
                    partition: r.partition,
                    start: r.start,
                    end: p.end,
                });
            }
        }
    }
    for p in &prev.ranges {
        if !next.ranges.iter().any(|r| r.topic == p.topic && r.partition == p.partition) {
            return Err(StreamError::PartitionGone { topic: p.topic.clone(), partition: p.partition });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::SourceRange;

    fn entry(batch: BatchId, start: i64, end: i64) -> OffsetEntry {
        OffsetEntry {
            batch,
            ranges: vec![SourceRange { topic: "in".into(), partition: 0, start, end }],
            tables: Vec::new(),
            watermark: None,
            planned_at: 0,
        }
    }
    fn commit(batch: BatchId) -> CommitEntry {
        CommitEntry { batch, max_event_time: None, sink_next: vec![], input_rows: 0, output_records: 0, state_version: None }
    }

    #[test]
    fn empty_logs_start_fresh() {
        assert_eq!(recover(vec![], vec![]).unwrap(), Recovery::default());
    }

    #[test]
    fn an_uncommitted_last_batch_is_pending_as_logged() {
        let r = recover(vec![entry(0, 0, 5), entry(1, 5, 9)], vec![commit(0)]).unwrap();
        assert_eq!(r.pending, Some(entry(1, 5, 9)));
        assert_eq!(r.committed.unwrap().0, entry(0, 0, 5));
    }

    #[test]
    fn the_first_entry_for_a_batch_wins() {
        let r = recover(vec![entry(0, 0, 5), entry(0, 0, 7), entry(1, 5, 9)], vec![commit(0), commit(1), commit(0)]).unwrap();
        assert_eq!(r.committed.unwrap().0, entry(1, 5, 9));
        assert_eq!(r.pending, None);
    }

    #[test]
    fn a_purged_log_starts_at_its_first_entry_and_ignores_late_ones_below() {
        // Batches 0..=2 purged; a zombie appended batch 1 (and committed it)
        // after the purge.
        let offsets = vec![entry(3, 9, 12), entry(4, 12, 15), entry(1, 5, 40)];
        let commits = vec![commit(3), commit(1), commit(4)];
        let r = recover(offsets, commits).unwrap();
        assert_eq!(r.committed.unwrap().0, entry(4, 12, 15));
        assert_eq!(r.pending, None);
    }

    #[test]
    fn damaged_logs_are_named() {
        assert_eq!(
            recover(vec![entry(0, 0, 5), entry(2, 5, 9)], vec![]).unwrap_err(),
            StreamError::OffsetGap { missing: 1, next: 2 }
        );
        assert!(matches!(
            recover(vec![entry(0, 0, 5), entry(1, 6, 9)], vec![]).unwrap_err(),
            StreamError::RangesNotContiguous { batch: 1, start: 6, end: 5, .. }
        ));
        assert_eq!(
            recover(vec![entry(0, 0, 5)], vec![commit(3)]).unwrap_err(),
            StreamError::CommitWithoutOffsets { batch: 3 }
        );
        assert_eq!(
            recover(vec![entry(0, 0, 5), entry(1, 5, 6), entry(2, 6, 7)], vec![commit(0)]).unwrap_err(),
            StreamError::TooManyPending { from: 1, to: 2 }
        );
    }
}
