//! Reading one partition from an offset, record by record.

use std::collections::VecDeque;

use millrace_core::records::{self, Record};

use super::{Client, ClientError};

/// Where to start reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    Earliest,
    Latest,
    Offset(i64),
}

pub struct PartitionReader {
    pub topic: String,
    pub partition: i32,
    pub next_offset: i64,
    pub high_watermark: i64,
    buffered: VecDeque<Record>,
    /// One past the last offset of the batches fetched last: where to go
    /// once their records are used up. Compaction leaves batches whose
    /// last records (or all of them) are gone, so the last record read is
    /// not always the end of its batch.
    fetched_end: i64,
}

impl PartitionReader {
    pub async fn open(client: &mut Client, topic: &str, partition: i32, start: StartAt) -> Result<Self, ClientError> {
        let next_offset = match start {
            StartAt::Earliest => client.list_offset(topic, partition, -2).await?,
            StartAt::Latest => client.list_offset(topic, partition, -1).await?,
            StartAt::Offset(o) => o,
        };
        Ok(Self {
            topic: topic.to_string(),
            partition,
            next_offset,
            high_watermark: -1,
            buffered: VecDeque::new(),
            fetched_end: next_offset,
        })
    }

    /// The next record, waiting up to `max_wait_ms` for one; `None` if none came.
    pub async fn next(&mut self, client: &mut Client, max_wait_ms: i32) -> Result<Option<Record>, ClientError> {
        // A fetch can hold only batches emptied by compaction: move past
        // them and fetch again (a bounded number of times per call).
        const EMPTY_FETCHES: usize = 100;
        for _ in 0..EMPTY_FETCHES {
            if !self.buffered.is_empty() {
                break;
            }
            let fetched = client.fetch(&self.topic, self.partition, self.next_offset, max_wait_ms, 1 << 20).await?;
            self.high_watermark = fetched.high_watermark;
            let mut end = self.next_offset;
            for batch in records::split_batches(&fetched.records) {
                let (h, batch) = batch.map_err(|e| ClientError::Protocol(format!("bad batch from broker: {e}")))?;
                let (_, recs) =
                    records::decode_records(batch).map_err(|e| ClientError::Protocol(format!("bad records from broker: {e}")))?;
                // A fetch may start mid-batch: skip what precedes our offset.
                self.buffered.extend(recs.into_iter().filter(|r| r.offset >= self.next_offset));
                end = end.max(h.last_offset() + 1);
            }
            self.fetched_end = end;
            if !self.buffered.is_empty() || end == self.next_offset {
                break;
            }
            // Only batches without records at or after our offset: skip them.
            self.next_offset = end;
        }
        let Some(r) = self.buffered.pop_front() else { return Ok(None) };
        self.next_offset = r.offset + 1;
        if self.buffered.is_empty() {
            self.next_offset = self.next_offset.max(self.fetched_end);
        }
        Ok(Some(r))
    }

    /// Whether everything below the last seen high watermark was read.
    pub fn at_end(&self) -> bool {
        self.buffered.is_empty() && self.high_watermark >= 0 && self.next_offset >= self.high_watermark
    }
}
