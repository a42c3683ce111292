//! The replicated log as one node holds it: entries from index 1 on, in
//! memory; the caller persists what the node's effects ask for.

use super::message::{Entry, Index, Term};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RaftLog {
    entries: Vec<Entry>,
}

impl RaftLog {
    /// A log recovered from storage; entries must be consecutive from 1.
    pub fn from_entries(entries: Vec<Entry>) -> Result<Self, String> {
        for (i, e) in entries.iter().enumerate() {
            if e.index != i as Index + 1 {
                return Err(format!("entry {} found at position {}", e.index, i + 1));
            }
            if i > 0 && e.term < entries[i - 1].term {
                return Err(format!("entry {} has term {} after term {}", e.index, e.term, entries[i - 1].term));
            }
        }
        Ok(Self { entries })
    }

    pub fn last_index(&self) -> Index {
        self.entries.len() as Index
    }

    pub fn last_term(&self) -> Term {
        self.entries.last().map_or(0, |e| e.term)
    }

    /// The term of the entry at `index` (0 for index 0, the empty prefix).
    pub fn term_at(&self, index: Index) -> Option<Term> {
        if index == 0 {
            return Some(0);
        }
        self.entries.get(index as usize - 1).map(|e| e.term)
    }

    pub fn entries(&self, from: Index, to: Index) -> &[Entry] {
        let from = from.max(1) as usize - 1;
        let to = (to as usize).min(self.entries.len());
        if from >= to { &[] } else { &self.entries[from..to] }
    }

    pub fn all(&self) -> &[Entry] {
        &self.entries
    }

    pub fn push(&mut self, term: Term, data: Vec<u8>) -> Entry {
        let e = Entry { term, index: self.last_index() + 1, data };
        self.entries.push(e.clone());
        e
    }

    /// Removes every entry from `index` on.
    pub fn truncate_from(&mut self, index: Index) {
        self.entries.truncate(index.saturating_sub(1) as usize);
    }

    /// Whether a log ending at (`last_index`, `last_term`) is at least as
    /// up to date as this one (Raft §5.4.1): votes go only to such logs.
    pub fn up_to_date(&self, last_index: Index, last_term: Term) -> bool {
        (last_term, last_index) >= (self.last_term(), self.last_index())
    }
}
