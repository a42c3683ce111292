//! The file sink's decisions: a partition's records cut into files
//! ("segments") by record count, by size, and by age.
//!
//! A segment is named by its topic, partition and start — the position
//! the sink stood at when the segment began, zero-padded so that names
//! sort in offset order: `clicks-0-00000000000000001200.jsonl`. It is
//! written whole under a temporary name and renamed (the adapter's work),
//! and only then is its end stored as the partition's durable position.
//!
//! Why a crash leaves no duplicate: at most one segment is renamed but not
//! yet stored, and it starts at the stored position. After a restart the
//! records are delivered again from that position, so the first segment
//! cut again starts there too, has the same name, and replaces that file
//! — even if it now ends elsewhere (an age roll is not repeatable), since
//! the segments after it did not exist yet. Count and size rolls are
//! repeatable, so a write that completed several segments before the
//! crash rewrites the same files with the same contents.

use serde_json::json;

use super::api::SinkRecord;
use super::config::SinkFormat;
use crate::Millis;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmenterConfig {
    pub topic: String,
    pub format: SinkFormat,
    pub roll_records: u64,
    pub roll_bytes: u64,
    pub roll_ms: Millis,
}

/// A complete file to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub name: String,
    pub partition: i32,
    pub start: i64,
    /// The position after it: its last record's offset + 1.
    pub end: i64,
    pub records: u64,
    pub bytes: Vec<u8>,
}

/// The file name of the segment of `partition` starting at `start`.
pub fn segment_name(topic: &str, partition: i32, start: i64, format: SinkFormat) -> String {
    format!("{topic}-{partition}-{start:020}.{}", format.extension())
}

/// (topic, partition, start) of a segment's file name.
pub fn parse_segment_name(name: &str) -> Option<(String, i32, i64)> {
    let stem = name.rsplit_once('.')?.0;
    let (rest, start) = stem.rsplit_once('-')?;
    let (topic, partition) = rest.rsplit_once('-')?;
    Some((topic.to_string(), partition.parse().ok()?, start.parse().ok()?))
}

/// One partition's current segment.
#[derive(Debug, Clone)]
pub struct Segmenter {
    config: SegmenterConfig,
    partition: i32,
    start: i64,
    next: i64,
    buf: Vec<u8>,
    count: u64,
    /// When the current segment got its first record.
    opened_at: Option<Millis>,
}

impl Segmenter {
    /// A partition resuming at `next_offset`.
    pub fn new(config: SegmenterConfig, partition: i32, next_offset: i64) -> Segmenter {
        Segmenter { config, partition, start: next_offset, next: next_offset, buf: Vec::new(), count: 0, opened_at: None }
    }

    /// One record as it is written.
    fn encode(&self, r: &SinkRecord, out: &mut Vec<u8>) {
        let text = |b: &Option<Vec<u8>>| b.as_ref().map(|b| String::from_utf8_lossy(b).into_owned());
        match self.config.format {
            SinkFormat::Json => {
                let v = json!({
                    "topic": self.config.topic,
                    "partition": r.partition,
                    "offset": r.offset,
                    "timestamp": r.timestamp,
                    "key": text(&r.key),
                    "value": text(&r.value),
                });
                out.extend_from_slice(v.to_string().as_bytes());
            }
            SinkFormat::Lines => out.extend_from_slice(r.value.as_deref().unwrap_or_default()),
        }
        out.push(b'\n');
    }

    /// Adds records (in offset order, from where the partition stands);
    /// answers the segments completed by count or size, in order.
    pub fn push(&mut self, now: Millis, records: &[SinkRecord]) -> Vec<Segment> {
        let mut done = Vec::new();
        for r in records {
            if r.offset < self.next {
                continue; // delivered again within one run: already in a segment
            }
            let mut line = Vec::new();
            self.encode(r, &mut line);
            self.buf.extend_from_slice(&line);
            self.count += 1;
            self.next = r.offset + 1;
            self.opened_at.get_or_insert(now);
            if self.count >= self.config.roll_records.max(1) || self.buf.len() as u64 >= self.config.roll_bytes.max(1) {
                done.push(self.roll());
            }
        }
        done
    }

    /// The current segment, if it has records and is `roll_ms` old.
    pub fn idle(&mut self, now: Millis) -> Option<Segment> {
        let opened = self.opened_at?;
        (now - opened >= self.config.roll_ms).then(|| self.roll())
    }

    /// The position up to which segments were handed out.
    pub fn position(&self) -> i64 {
        self.start
    }

    fn roll(&mut self) -> Segment {
        let segment = Segment {
            name: segment_name(&self.config.topic, self.partition, self.start, self.config.format),
            partition: self.partition,
            start: self.start,
            end: self.next,
            records: self.count,
            bytes: std::mem::take(&mut self.buf),
        };
        self.start = self.next;
        self.count = 0;
        self.opened_at = None;
        segment
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    fn config(roll_records: u64, roll_bytes: u64) -> SegmenterConfig {
        SegmenterConfig { topic: "t".into(), format: SinkFormat::Lines, roll_records, roll_bytes, roll_ms: 1_000 }
    }

    fn rec(offset: i64) -> SinkRecord {
        SinkRecord { partition: 0, offset, timestamp: 0, key: None, value: Some(offset.to_string().into_bytes()) }
    }

    #[test]
    fn names_sort_in_offset_order_and_parse_back() {
        let a = segment_name("my-topic", 3, 99, SinkFormat::Json);
        let b = segment_name("my-topic", 3, 1_000, SinkFormat::Json);
        assert!(a < b);
        assert_eq!(parse_segment_name(&a), Some(("my-topic".into(), 3, 99)));
        assert_eq!(parse_segment_name("junk"), None);
    }

    #[test]
    fn rolls_by_count_by_size_and_by_age() {
        let mut s = Segmenter::new(config(3, 1 << 20), 0, 10);
        let segs = s.push(0, &(10..17).map(rec).collect::<Vec<_>>());
        assert_eq!(segs.iter().map(|s| (s.start, s.end, s.records)).collect::<Vec<_>>(), vec![(10, 13, 3), (13, 16, 3)]);
        assert_eq!(segs[0].bytes, b"10\n11\n12\n");
        assert_eq!(s.idle(999), None, "not yet a second old");
        let last = s.idle(1_000).unwrap();
        assert_eq!((last.start, last.end, last.name.as_str()), (16, 17, "t-0-00000000000000000016.txt"));
        assert_eq!(s.idle(5_000), None, "nothing buffered");
        let mut by_size = Segmenter::new(config(100, 5), 0, 0);
        assert_eq!(by_size.push(0, &(0..4).map(rec).collect::<Vec<_>>()).iter().map(|s| s.end).collect::<Vec<_>>(), vec![3]);
    }

    #[test]
    fn json_records_carry_their_coordinates() {
        let mut s = Segmenter::new(SegmenterConfig { format: SinkFormat::Json, ..config(1, 1 << 20) }, 0, 0);
        let seg = &s.push(0, &[SinkRecord { partition: 0, offset: 0, timestamp: 5, key: Some(b"k".to_vec()), value: Some(b"v".to_vec()) }])[0];
        let v: serde_json::Value = serde_json::from_slice(&seg.bytes).unwrap();
        assert_eq!(v, json!({"topic":"t","partition":0,"offset":0,"timestamp":5,"key":"k","value":"v"}));
    }

    proptest! {
        /// Any crash point (after a write's segments are renamed, before
        /// their end is stored), records delivered again from the stored position,
        /// in any batching, with age rolls at any time: the folder holds
        /// every record exactly once.
        #[test]
        fn a_crash_anywhere_leaves_every_record_once(
            total in 1i64..120,
            roll in 1u64..20,
            steps in proptest::collection::vec((1usize..15, any::<bool>(), any::<bool>(), any::<bool>()), 1..60),
        ) {
            let mut folder: BTreeMap<String, Vec<u8>> = BTreeMap::new();
            let mut stored = 0i64;
            let mut s = Segmenter::new(config(roll, 1 << 20), 0, stored);
            let mut now = 0;
            let mut read = stored;
            let mut steps = steps.into_iter().cycle();
            let mut guard = 0;
            while stored < total {
                guard += 1;
                prop_assert!(guard < 10_000, "no progress");
                let (n, age, crash_before_store, crash) = steps.next().unwrap_or((1, true, false, false));
                // Crashes stop after a while: the run must end.
                let crash = crash && guard < 200;
                now += 400;
                let batch: Vec<SinkRecord> = (read..(read + n as i64).min(total)).map(rec).collect();
                read += batch.len() as i64;
                let mut segs = s.push(now, &batch);
                if age && let Some(seg) = s.idle(now) {
                    segs.push(seg);
                }
                // The runner stores the end of a write's last segment after
                // renaming them all: a crash may come between.
                for seg in &segs {
                    folder.insert(seg.name.clone(), seg.bytes.clone());
                }
                if !(crash_before_store && crash) && let Some(last) = segs.last() {
                    stored = last.end;
                }
                if crash {
                    s = Segmenter::new(config(roll, 1 << 20), 0, stored);
                    read = stored;
                }
                if read >= total && !crash {
                    // The end of the input: age rolls finish the last one.
                    now += 1_000;
                    if let Some(seg) = s.idle(now) {
                        folder.insert(seg.name.clone(), seg.bytes.clone());
                        stored = seg.end;
                    }
                }
            }
            let all: Vec<i64> = folder.values().flat_map(|b| String::from_utf8_lossy(b).lines().map(|l| l.parse::<i64>().unwrap()).collect::<Vec<_>>()).collect();
            prop_assert_eq!(all, (0..total).collect::<Vec<_>>());
        }
    }
}
