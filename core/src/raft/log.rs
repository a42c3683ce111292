//! The replicated log as one node holds it: a snapshot base (the prefix up
//! to `snapshot_index`, compacted away, Raft §7) and the entries after it,
//! in memory; the caller persists what the node's effects ask for.

use super::message::{Entry, Index, Term};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RaftLog {
    /// Last index covered by the snapshot (0: no snapshot).
    snapshot_index: Index,
    snapshot_term: Term,
    /// Entries from `snapshot_index + 1` on.
    entries: Vec<Entry>,
}

impl RaftLog {
    /// A log recovered from storage; entries must be consecutive from 1.
    pub fn from_entries(entries: Vec<Entry>) -> Result<Self, String> {
        Self::with_snapshot(0, 0, entries)
    }

    /// A log recovered from a snapshot ending at (`index`, `term`) and the
    /// entries after it, which must be consecutive from `index + 1` with
    /// terms that never go down.
    pub fn with_snapshot(index: Index, term: Term, entries: Vec<Entry>) -> Result<Self, String> {
        let (mut prev_index, mut prev_term) = (index, term);
        for e in &entries {
            if e.index != prev_index + 1 {
                return Err(format!("entry {} found where {} was expected", e.index, prev_index + 1));
            }
            if e.term < prev_term {
                return Err(format!("entry {} has term {} after term {prev_term}", e.index, e.term));
            }
            (prev_index, prev_term) = (e.index, e.term);
        }
        Ok(Self { snapshot_index: index, snapshot_term: term, entries })
    }

    pub fn snapshot_index(&self) -> Index {
        self.snapshot_index
    }

    pub fn snapshot_term(&self) -> Term {
        self.snapshot_term
    }

    /// The first index still held as an entry.
    pub fn first_index(&self) -> Index {
        self.snapshot_index + 1
    }

    pub fn last_index(&self) -> Index {
        self.snapshot_index + self.entries.len() as Index
    }

    pub fn last_term(&self) -> Term {
        self.entries.last().map_or(self.snapshot_term, |e| e.term)
    }

    /// The term of the entry at `index`: known from the snapshot base on
    /// (0 for index 0, the empty prefix), `None` before it or past the end.
    pub fn term_at(&self, index: Index) -> Option<Term> {
        if index == self.snapshot_index {
            return Some(self.snapshot_term);
        }
        let offset = index.checked_sub(self.first_index())?;
        self.entries.get(usize::try_from(offset).ok()?).map(|e| e.term)
    }

    /// Entries in [`from`, `to`] that are still held (none at or below the
    /// snapshot index).
    pub fn entries(&self, from: Index, to: Index) -> &[Entry] {
        let start = from.max(self.first_index()) - self.first_index();
        let end = to.saturating_sub(self.snapshot_index).min(self.entries.len() as Index);
        if start >= end { &[] } else { &self.entries[start as usize..end as usize] }
    }

    /// Every entry held, from `first_index()` on.
    pub fn all(&self) -> &[Entry] {
        &self.entries
    }

    pub fn push(&mut self, term: Term, data: Vec<u8>) -> Entry {
        let e = Entry { term, index: self.last_index() + 1, data };
        self.entries.push(e.clone());
        e
    }

    /// Removes every entry from `index` on (never the snapshot base).
    pub fn truncate_from(&mut self, index: Index) {
        self.entries.truncate(index.saturating_sub(self.first_index()) as usize);
    }

    /// Drops the entries up to `index`, which becomes the snapshot base.
    /// The caller guarantees `index` is committed; an index at or below the
    /// base or past the end changes nothing. Returns whether it compacted.
    pub fn compact_to(&mut self, index: Index) -> bool {
        if index <= self.snapshot_index || index > self.last_index() {
            return false;
        }
        let Some(term) = self.term_at(index) else { return false };
        self.entries.drain(..(index - self.snapshot_index) as usize);
        (self.snapshot_index, self.snapshot_term) = (index, term);
        true
    }

    /// Installs a snapshot ending at (`index`, `term`) from the leader. The
    /// entries after it are kept if this log holds that very entry (log
    /// matching: then everything up to it is the same); otherwise they may
    /// belong to another history, and all go. A snapshot at or below the
    /// current base changes nothing.
    pub fn restore(&mut self, index: Index, term: Term) {
        if index <= self.snapshot_index {
            return;
        }
        if self.term_at(index) == Some(term) {
            self.entries.drain(..(index - self.snapshot_index) as usize);
        } else {
            self.entries.clear();
        }
        (self.snapshot_index, self.snapshot_term) = (index, term);
    }

    /// Whether a log ending at (`last_index`, `last_term`) is at least as
    /// up to date as this one (Raft §5.4.1): votes go only to such logs.
    pub fn up_to_date(&self, last_index: Index, last_term: Term) -> bool {
        (last_term, last_index) >= (self.last_term(), self.last_index())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(terms: &[Term]) -> RaftLog {
        let mut l = RaftLog::default();
        for t in terms {
            l.push(*t, vec![*t as u8]);
        }
        l
    }

    #[test]
    fn compact_keeps_the_base_term_and_the_suffix() {
        let mut l = log(&[1, 1, 2, 3, 3]);
        assert!(l.compact_to(3));
        assert_eq!((l.snapshot_index(), l.snapshot_term(), l.first_index(), l.last_index()), (3, 2, 4, 5));
        assert_eq!(l.term_at(3), Some(2));
        assert_eq!(l.term_at(2), None);
        assert_eq!(l.term_at(0), None);
        assert_eq!(l.term_at(4), Some(3));
        assert_eq!(l.entries(1, 9).iter().map(|e| e.index).collect::<Vec<_>>(), vec![4, 5]);
        assert_eq!(l.entries(5, 5).len(), 1);
        assert!(l.entries(1, 3).is_empty());
        // Never backwards, never past the end.
        assert!(!l.compact_to(2));
        assert!(!l.compact_to(6));
        assert!(l.compact_to(5));
        assert_eq!((l.last_index(), l.last_term(), l.all().len()), (5, 3, 0));
        assert_eq!(l.push(4, vec![]).index, 6);
    }

    #[test]
    fn restore_keeps_a_matching_suffix_and_drops_a_conflicting_one() {
        let mut l = log(&[1, 1, 2, 2]);
        l.restore(2, 1);
        assert_eq!((l.snapshot_index(), l.last_index(), l.last_term()), (2, 4, 2));
        let mut l = log(&[1, 1, 2, 2]);
        l.restore(3, 3);
        assert_eq!((l.snapshot_index(), l.snapshot_term(), l.last_index(), l.all().len()), (3, 3, 3, 0));
        // Beyond the end: the log is the snapshot alone.
        let mut l = log(&[1]);
        l.restore(7, 2);
        assert_eq!((l.last_index(), l.last_term()), (7, 2));
        // Older than the base: nothing changes.
        let before = l.clone();
        l.restore(5, 2);
        assert_eq!(l, before);
    }

    #[test]
    fn truncate_never_reaches_the_base() {
        let mut l = log(&[1, 1, 1]);
        l.compact_to(2);
        l.truncate_from(1);
        assert_eq!((l.last_index(), l.term_at(2)), (2, Some(1)));
    }

    #[test]
    fn with_snapshot_checks_continuity() {
        let e = |index, term| Entry { term, index, data: vec![] };
        assert!(RaftLog::with_snapshot(4, 2, vec![e(5, 2), e(6, 3)]).is_ok());
        assert!(RaftLog::with_snapshot(4, 2, vec![e(6, 2)]).is_err());
        assert!(RaftLog::with_snapshot(4, 2, vec![e(5, 1)]).is_err());
    }
}
