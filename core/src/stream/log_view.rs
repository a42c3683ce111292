//! What one reader has seen of a query's offset or commit log, and how old
//! entries are purged from those logs without breaking "the first entry per
//! batch wins".
//!
//! **Keys.** Every append has a key of its own, `name/batch/writer`, where
//! `writer` names the runner and the attempt ([`entry_key`]). Both logs are
//! compacted topics. Compaction keeps the last record per key, so with keys
//! that are never reused it removes only what a tombstone deletes: the
//! entries left keep their order, and the first entry for a batch stays the
//! first. (A key per query, or per batch, would let a zombie's later entry
//! replace the winner.)
//!
//! **Purging.** Once batch C is committed, a runner tombstones every entry
//! of batches below `C + 1 - retain` ([`purge_point`]; Spark's
//! `minBatchesToRetain`), commits first, then offsets.
//!
//! **The floor.** The first live entry of the offset log (in log order) is
//! the lowest batch the log still holds. A zombie may append an entry for a
//! purged batch after that; it lands after the floor's entry, and every
//! reader ignores entries below the floor (see `recover`).
//!
//! **Why a reader can trust what it sees at or above the floor.** A record
//! is removed only after its tombstone is appended, and tombstones are
//! written only for batches below the floor. So for a batch at or above
//! the floor, a reader that read the log up to its high watermark has seen
//! every entry for that batch, in log order. A reader whose own batch is
//! below the floor has been outrun: it must read the logs again
//! ([`Appended::Outrun`]). A reader that lags by more than the topic's
//! `delete.retention.ms` (tombstones gone too) could miss this; the runners
//! read every trigger, far more often.

use super::{BatchId, CommitEntry, OffsetEntry};

/// An entry of one of the two logs.
pub trait Batched: Clone {
    fn batch(&self) -> BatchId;
}

impl Batched for OffsetEntry {
    fn batch(&self) -> BatchId {
        self.batch
    }
}

impl Batched for CommitEntry {
    fn batch(&self) -> BatchId {
        self.batch
    }
}

/// The key of one append to query `name`'s offset or commit log. `writer`
/// must differ between appends (runner and attempt), and must not hold '/'.
pub fn entry_key(name: &str, batch: BatchId, writer: &str) -> String {
    format!("{name}/{batch}/{writer}")
}

/// Whether `key` is one of query `name`'s: `name/batch/writer`, or `name`
/// alone (entries written before keys were per append; never purged).
pub fn is_query_key(key: &str, name: &str) -> bool {
    if key == name {
        return true;
    }
    let Some(rest) = key.strip_prefix(name).and_then(|r| r.strip_prefix('/')) else { return false };
    let mut parts = rest.splitn(2, '/');
    let batch_ok = parts.next().is_some_and(|b| !b.is_empty() && b.bytes().all(|c| c.is_ascii_digit()));
    batch_ok && parts.next().is_some_and(|w| !w.is_empty() && !w.contains('/'))
}

/// Entries of batches below this are purged once `last_committed` is
/// committed, keeping the last `retain` batches (at least one).
pub fn purge_point(last_committed: BatchId, retain: u64) -> BatchId {
    (last_committed + 1).saturating_sub(retain.max(1))
}

/// What an append to the offset log came to, read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Appended {
    /// The entry the log holds first for the batch (another runner's, if it
    /// got there first).
    Winner(OffsetEntry),
    /// The batch is below the log's floor: other runners committed past it
    /// and purged it. This runner must read the logs again.
    Outrun { floor: BatchId },
}

#[derive(Debug, Clone)]
struct Seen<T> {
    key: String,
    value: T,
    /// A tombstone for its key came later.
    deleted: bool,
}

/// One reader's copy of a log, fed record by record in log order.
#[derive(Debug, Clone)]
pub struct LogView<T> {
    name: String,
    seen: Vec<Seen<T>>,
}

impl<T: Batched> LogView<T> {
    /// A view of query `name`'s entries.
    pub fn new(name: &str) -> LogView<T> {
        LogView { name: name.to_string(), seen: Vec::new() }
    }

    /// The next record of the log: an entry, or (`None`) a tombstone for
    /// `key`.
    pub fn push(&mut self, key: &str, value: Option<T>) {
        match value {
            Some(value) => self.seen.push(Seen { key: key.to_string(), value, deleted: false }),
            None => {
                for s in self.seen.iter_mut().filter(|s| s.key == key) {
                    s.deleted = true;
                }
            }
        }
    }

    /// The entries not deleted, in log order (duplicates and entries below
    /// the floor included: `recover` sorts them out).
    pub fn live(&self) -> Vec<T> {
        self.seen.iter().filter(|s| !s.deleted).map(|s| s.value.clone()).collect()
    }

    /// The batch of the first live entry: the lowest the log still holds.
    pub fn floor(&self) -> Option<BatchId> {
        self.seen.iter().find(|s| !s.deleted).map(|s| s.value.batch())
    }

    /// The first entry seen for `batch`, deleted or not.
    pub fn first_for(&self, batch: BatchId) -> Option<&T> {
        self.seen.iter().find(|s| s.value.batch() == batch).map(|s| &s.value)
    }

    /// Keys of the live entries below `point` that a purge tombstones
    /// (shared old-style keys excepted).
    pub fn purgeable(&self, point: BatchId) -> Vec<String> {
        let mut keys: Vec<String> =
            self.seen.iter().filter(|s| !s.deleted && s.value.batch() < point && s.key != self.name).map(|s| s.key.clone()).collect();
        keys.dedup();
        keys
    }

    /// How many batches `purgeable(point)` would delete.
    pub fn purgeable_batches(&self, point: BatchId) -> usize {
        let mut batches: Vec<BatchId> =
            self.seen.iter().filter(|s| !s.deleted && s.value.batch() < point && s.key != self.name).map(|s| s.value.batch()).collect();
        batches.sort_unstable();
        batches.dedup();
        batches.len()
    }

    /// Forgets entries below `floor` (deleted, or a zombie's late ones):
    /// no reader asks for them again, and memory stays bounded.
    pub fn forget_below(&mut self, floor: BatchId) {
        self.seen.retain(|s| s.value.batch() >= floor);
    }

    /// Entries held in memory.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

impl LogView<OffsetEntry> {
    /// After appending an entry for `batch` and reading the log back to its
    /// high watermark: the winner, or that this reader was outrun. `None`
    /// if no entry for `batch` was read (the append is not in the log).
    pub fn appended(&self, batch: BatchId) -> Option<Appended> {
        if let Some(floor) = self.floor()
            && batch < floor
        {
            return Some(Appended::Outrun { floor });
        }
        self.first_for(batch).cloned().map(Appended::Winner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::SourceRange;

    fn entry(batch: BatchId, end: i64) -> OffsetEntry {
        OffsetEntry {
            batch,
            ranges: vec![SourceRange { topic: "in".into(), partition: 0, start: 0, end }],
            tables: Vec::new(),
            watermark: None,
            planned_at: 0,
        }
    }

    #[test]
    fn keys_are_per_query_and_per_append() {
        assert!(is_query_key(&entry_key("q", 7, "2.100.3"), "q"));
        assert!(is_query_key("q", "q"), "the old shared key");
        assert!(!is_query_key(&entry_key("q", 7, "w"), "q2"));
        assert!(!is_query_key(&entry_key("q.x", 7, "w"), "q"));
        assert!(!is_query_key("q/x/w", "q"), "batch must be a number");
        assert!(!is_query_key("q/7", "q"), "writer missing");
        assert!(!is_query_key("q/7/a/b", "q"), "writer with a slash");
        assert_eq!(purge_point(9, 3), 7);
        assert_eq!(purge_point(1, 3), 0);
        assert_eq!(purge_point(5, 0), 5, "the last committed batch is always kept");
    }

    #[test]
    fn the_first_append_wins_until_purged_then_late_appends_are_outrun() {
        let mut v = LogView::new("q");
        v.push("q/0/a.1", Some(entry(0, 5)));
        v.push("q/0/b.1", Some(entry(0, 9)));
        v.push("q/1/a.2", Some(entry(1, 12)));
        assert_eq!(v.appended(0), Some(Appended::Winner(entry(0, 5))));
        assert_eq!(v.purgeable(1), vec!["q/0/a.1".to_string(), "q/0/b.1".to_string()]);
        assert_eq!((v.purgeable_batches(1), v.purgeable_batches(2)), (1, 2));
        v.push("q/0/a.1", None);
        v.push("q/0/b.1", None);
        // A zombie appends batch 0 again after the purge.
        v.push("q/0/c.1", Some(entry(0, 20)));
        assert_eq!(v.floor(), Some(1));
        assert_eq!(v.appended(0), Some(Appended::Outrun { floor: 1 }));
        assert_eq!(v.appended(1), Some(Appended::Winner(entry(1, 12))));
        assert_eq!(v.appended(2), None);
        assert_eq!(v.live(), vec![entry(1, 12), entry(0, 20)]);
        v.forget_below(1);
        assert_eq!(v.len(), 1);
        assert!(v.purgeable(1).is_empty());
    }

    #[test]
    fn old_shared_keys_are_read_but_never_purged() {
        let mut v = LogView::new("q");
        v.push("q", Some(entry(0, 5)));
        v.push("q/1/a.1", Some(entry(1, 7)));
        assert_eq!(v.purgeable(2), vec!["q/1/a.1".to_string()]);
        assert_eq!(v.live().len(), 2);
    }
}
