//! Fixing the next batch's offset ranges from a listing of the input
//! partitions (Spark's `latestOffset` + `maxOffsetsPerTrigger`).

use serde::{Deserialize, Serialize};

use super::query::StartAt;
use super::{OffsetEntry, SourceRange, StreamError};

/// One input partition as the brokers report it when a batch is planned.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PartitionEnd {
    pub topic: String,
    pub partition: i32,
    pub log_start: i64,
    pub high_watermark: i64,
}

/// The ranges of the batch after `prev` (or of the first batch): each
/// partition from where `prev` ended it to its high watermark, at most
/// `max_records` in all (shared in proportion to what each has waiting).
/// A partition new since `prev` starts at its log start, as in Spark.
pub fn plan_ranges(
    prev: Option<&OffsetEntry>,
    listing: &[PartitionEnd],
    start_at: StartAt,
    max_records: Option<u64>,
) -> Result<Vec<SourceRange>, StreamError> {
    let mut listing = listing.to_vec();
    listing.sort();
    if let Some(p) = prev {
        for r in &p.ranges {
            if !listing.iter().any(|l| l.topic == r.topic && l.partition == r.partition) {
                return Err(StreamError::PartitionGone { topic: r.topic.clone(), partition: r.partition });
            }
        }
    }
    let mut ranges = Vec::with_capacity(listing.len());
    for l in &listing {
        let before = prev.and_then(|p| p.ranges.iter().find(|r| r.topic == l.topic && r.partition == l.partition));
        let start = match (before, prev) {
            (Some(r), _) => {
                if l.high_watermark < r.end {
                    return Err(StreamError::OffsetsWentBack {
                        topic: l.topic.clone(),
                        partition: l.partition,
                        end: r.end,
                        high_watermark: l.high_watermark,
                    });
                }
                if l.log_start > r.end {
                    return Err(StreamError::DataLost {
                        topic: l.topic.clone(),
                        partition: l.partition,
                        end: r.end,
                        log_start: l.log_start,
                    });
                }
                r.end
            }
            (None, Some(_)) => l.log_start,
            (None, None) => match start_at {
                StartAt::Earliest => l.log_start,
                StartAt::Latest => l.high_watermark,
            },
        };
        ranges.push(SourceRange { topic: l.topic.clone(), partition: l.partition, start, end: l.high_watermark.max(start) });
    }
    if let Some(max) = max_records {
        cap(&mut ranges, max);
    }
    Ok(ranges)
}

/// Shrinks the ranges' ends so they hold at most `max` records: each gets
/// its proportional share rounded down, and the records left over go one by
/// one to partitions in order that still have some waiting.
fn cap(ranges: &mut [SourceRange], max: u64) {
    let total: u64 = ranges.iter().map(SourceRange::len).sum();
    if total <= max {
        return;
    }
    let mut shares: Vec<u64> =
        ranges.iter().map(|r| ((r.len() as u128 * max as u128) / total as u128) as u64).collect();
    let mut left = max - shares.iter().sum::<u64>();
    while left > 0 {
        for (share, r) in shares.iter_mut().zip(ranges.iter()) {
            if left > 0 && *share < r.len() {
                *share += 1;
                left -= 1;
            }
        }
    }
    for (r, share) in ranges.iter_mut().zip(shares) {
        r.end = r.start + share as i64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end(partition: i32, log_start: i64, high_watermark: i64) -> PartitionEnd {
        PartitionEnd { topic: "in".into(), partition, log_start, high_watermark }
    }
    fn prev(ends: &[(i32, i64)]) -> OffsetEntry {
        OffsetEntry {
            batch: 0,
            ranges: ends.iter().map(|&(partition, end)| SourceRange { topic: "in".into(), partition, start: 0, end }).collect(),
            tables: Vec::new(),
            watermark: None,
            planned_at: 0,
        }
    }

    #[test]
    fn the_first_batch_starts_where_asked() {
        let l = [end(1, 3, 10), end(0, 2, 4)];
        let early = plan_ranges(None, &l, StartAt::Earliest, None).unwrap();
        assert_eq!((early[0].partition, early[0].start, early[0].end), (0, 2, 4));
        assert_eq!((early[1].partition, early[1].start, early[1].end), (1, 3, 10));
        let late = plan_ranges(None, &l, StartAt::Latest, None).unwrap();
        assert!(late.iter().all(SourceRange::is_empty));
    }

    #[test]
    fn later_batches_continue_and_new_partitions_start_at_their_log_start() {
        let r = plan_ranges(Some(&prev(&[(0, 4)])), &[end(0, 0, 9), end(1, 2, 5)], StartAt::Latest, None).unwrap();
        assert_eq!(r.iter().map(|r| (r.start, r.end)).collect::<Vec<_>>(), vec![(4, 9), (2, 5)]);
    }

    #[test]
    fn the_cap_is_shared_and_exact() {
        let r = plan_ranges(Some(&prev(&[(0, 0), (1, 0), (2, 0)])), &[end(0, 0, 100), end(1, 0, 1), end(2, 0, 50)], StartAt::Latest, Some(10))
            .unwrap();
        assert_eq!(r.iter().map(SourceRange::len).sum::<u64>(), 10);
        assert!(r[0].len() > r[2].len() && r[2].len() > 0);
    }

    #[test]
    fn lost_or_rewound_input_is_an_error() {
        assert!(matches!(
            plan_ranges(Some(&prev(&[(0, 4)])), &[end(0, 6, 9)], StartAt::Latest, None),
            Err(StreamError::DataLost { end: 4, log_start: 6, .. })
        ));
        assert!(matches!(
            plan_ranges(Some(&prev(&[(0, 4)])), &[end(0, 0, 3)], StartAt::Latest, None),
            Err(StreamError::OffsetsWentBack { .. })
        ));
        assert!(matches!(
            plan_ranges(Some(&prev(&[(0, 4), (1, 0)])), &[end(0, 0, 4)], StartAt::Latest, None),
            Err(StreamError::PartitionGone { partition: 1, .. })
        ));
    }
}
