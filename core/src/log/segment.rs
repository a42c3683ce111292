//! One segment file of a partition log and its sparse in-memory index.

use crate::records::BatchHeader;

/// A segment: batches with offsets from `base_offset` up to `next_offset - 1`,
/// stored back to back in one file.
#[derive(Debug, Clone)]
pub struct Segment {
    pub base_offset: i64,
    pub file: String,
    /// Bytes of valid batches in the file.
    pub size: u64,
    /// One past the last offset stored here (== base_offset when empty).
    pub next_offset: i64,
    /// Largest batch max-timestamp seen, for lookups by time and retention.
    pub max_timestamp: i64,
    /// The first batch's max-timestamp, -1 while empty: `segment.ms` rolls
    /// count from it, as Kafka's do.
    pub first_timestamp: i64,
    /// Sparse (first offset of a batch, file position) pairs, ascending.
    index: Vec<(i64, u64)>,
    bytes_since_index: u64,
}

impl Segment {
    pub fn new(dir: &str, base_offset: i64) -> Self {
        Self {
            base_offset,
            file: segment_file(dir, base_offset),
            size: 0,
            next_offset: base_offset,
            max_timestamp: -1,
            first_timestamp: -1,
            index: Vec::new(),
            bytes_since_index: 0,
        }
    }

    /// Records a batch appended at `position`; indexes it every
    /// `index_interval` bytes (and always the first batch).
    pub fn track(&mut self, h: &BatchHeader, position: u64, index_interval: u64) {
        if self.size == 0 {
            self.first_timestamp = h.max_timestamp;
        }
        if self.index.is_empty() || self.bytes_since_index >= index_interval {
            self.index.push((h.base_offset, position));
            self.bytes_since_index = 0;
        }
        let len = h.total_len() as u64;
        self.bytes_since_index += len;
        self.size = position + len;
        self.next_offset = h.last_offset() + 1;
        self.max_timestamp = self.max_timestamp.max(h.max_timestamp);
    }

    /// Where to scan from for `offset`: the base offset and file position of
    /// the last indexed batch starting at or before it.
    pub fn scan_start(&self, offset: i64) -> (i64, u64) {
        match self.index.partition_point(|&(o, _)| o <= offset) {
            0 => (self.base_offset, 0),
            i => self.index[i - 1],
        }
    }

    /// Forgets index entries at or past `position` (after a truncation).
    pub fn truncate_index(&mut self, position: u64) {
        self.index.retain(|&(_, p)| p < position);
        self.bytes_since_index = 0;
    }

    pub fn index_entries(&self) -> usize {
        self.index.len()
    }
}

pub fn segment_file(dir: &str, base_offset: i64) -> String {
    format!("{dir}/{base_offset:020}.log")
}

/// Parses a base offset back out of a segment file name.
pub fn parse_segment_file(name: &str) -> Option<i64> {
    let stem = name.rsplit('/').next()?.strip_suffix(".log")?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}
