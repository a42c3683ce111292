//! What a connector stores in `__millrace_connect_offsets` (key: the
//! connector's name), and reading it back after a restart.
//!
//! A source logs each chunk *before* producing it; a chunk's entry is the
//! whole state of the source after it (its position and every partition's
//! next producer sequence), so the last entry alone says where to resume,
//! and says which chunk may or may not have reached the topic: that one is
//! re-sent. A sink logs each durable position after its output is durable.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Millis;

/// One chunk of a source: records `from..to` of the source, produced as one
/// batch to `partition` with sequences from `base_sequence`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkEntry {
    /// From 0, dense within one producer id's run.
    pub chunk: u64,
    pub from: serde_json::Value,
    pub to: serde_json::Value,
    pub count: u32,
    /// CRC-32C of the records (keys and values): a re-read that differs
    /// is not the same chunk.
    pub crc: u32,
    pub partition: i32,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    /// Every partition's next sequence after this chunk.
    pub next_sequences: Vec<(i32, i32)>,
    /// The chunk's time: its records' timestamps.
    pub timestamp: Millis,
    /// Records this connector has delivered, this chunk included.
    pub records_total: u64,
}

/// A record of `__millrace_connect_offsets`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OffsetRecord {
    Chunk(ChunkEntry),
    /// Everything of `partition` below `next_offset` is in the sink's
    /// output, durably.
    SinkPosition {
        partition: i32,
        next_offset: i64,
    },
}

/// Where a source resumes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SourceRecovery {
    /// The last chunk logged: maybe produced, maybe not.
    pub last: Option<ChunkEntry>,
}

/// The last chunk of a source's entries, in log order. An entry repeated
/// for a chunk id (an append retried after a lost answer) is the same
/// entry; the first one per id is taken all the same.
pub fn recover_source(entries: impl IntoIterator<Item = ChunkEntry>) -> SourceRecovery {
    let mut last: Option<ChunkEntry> = None;
    for e in entries {
        let newer = match &last {
            None => true,
            Some(l) => (e.producer_id, e.chunk) != (l.producer_id, l.chunk),
        };
        if newer {
            last = Some(e);
        }
    }
    SourceRecovery { last }
}

/// A sink's stored positions: the last per partition, in log order.
pub fn recover_sink(entries: impl IntoIterator<Item = (i32, i64)>) -> BTreeMap<i32, i64> {
    entries.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(producer_id: i64, chunk: u64, count: u32) -> ChunkEntry {
        ChunkEntry {
            chunk,
            from: serde_json::json!(0),
            to: serde_json::json!(count),
            count,
            crc: 0,
            partition: 0,
            producer_id,
            producer_epoch: 0,
            base_sequence: 0,
            next_sequences: vec![],
            timestamp: 0,
            records_total: 0,
        }
    }

    #[test]
    fn the_last_chunk_wins_and_a_repeated_entry_is_not_newer() {
        assert_eq!(recover_source(vec![]).last, None);
        let r = recover_source(vec![entry(1, 0, 5), entry(1, 1, 6), entry(1, 1, 7)]);
        assert_eq!(r.last.unwrap().count, 6);
        // A new producer (a chunk that could not be re-read) starts anew.
        let r = recover_source(vec![entry(1, 0, 5), entry(1, 1, 6), entry(2, 0, 9)]);
        assert_eq!(r.last.unwrap().count, 9);
    }

    #[test]
    fn sink_positions_are_the_last_per_partition() {
        assert_eq!(recover_sink(vec![(0, 10), (1, 5), (0, 20)]), BTreeMap::from([(0, 20), (1, 5)]));
    }

    #[test]
    fn records_round_trip_as_json() {
        let r = OffsetRecord::Chunk(entry(3, 4, 5));
        let back: OffsetRecord = serde_json::from_slice(&serde_json::to_vec(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }
}
