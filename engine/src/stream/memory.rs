//! A topic held in memory: the reference path reads a batch's records
//! through it, and tests use it in place of a broker.

use std::collections::BTreeMap;

use crate::error::Result;
use crate::source::{TopicReader, TopicRecord};

#[derive(Debug, Clone, Default)]
pub struct MemoryTopic {
    /// Records per partition, in offset order.
    pub partitions: BTreeMap<i32, Vec<TopicRecord>>,
}

impl MemoryTopic {
    pub fn new(input: &[(i32, Vec<TopicRecord>)]) -> MemoryTopic {
        let mut partitions: BTreeMap<i32, Vec<TopicRecord>> = BTreeMap::new();
        for (p, records) in input {
            partitions
                .entry(*p)
                .or_default()
                .extend(records.iter().cloned());
        }
        for records in partitions.values_mut() {
            records.sort_by_key(|r| r.offset);
        }
        MemoryTopic { partitions }
    }
}

impl TopicReader for MemoryTopic {
    /// Any topic name reads the same records: one input topic per query.
    fn read(&self, _topic: &str, partition: i32, start: i64, end: i64) -> Result<Vec<TopicRecord>> {
        Ok(self
            .partitions
            .get(&partition)
            .map(|rs| {
                rs.iter()
                    .filter(|r| r.offset >= start && r.offset < end)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default())
    }
}

/// A stream's records plus tables by topic name, for a query that joins
/// `topic_table()`s: a table's name reads its own records, any other name
/// the stream's.
pub struct WithTables<'a> {
    pub stream: &'a MemoryTopic,
    pub tables: &'a BTreeMap<String, MemoryTopic>,
}

impl TopicReader for WithTables<'_> {
    fn read(&self, topic: &str, partition: i32, start: i64, end: i64) -> Result<Vec<TopicRecord>> {
        self.tables.get(topic).unwrap_or(self.stream).read(topic, partition, start, end)
    }
}

impl MemoryTopic {
    /// The ranges that read all of it (a table's snapshot).
    pub fn whole(&self) -> Vec<crate::source::TopicRange> {
        self.partitions
            .iter()
            .filter_map(|(p, rs)| Some(crate::source::TopicRange { partition: *p, start: rs.first()?.offset, end: rs.last()?.offset + 1 }))
            .collect()
    }
}
