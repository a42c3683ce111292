//! Records of a batch as borrowed slices, and batches rebuilt from a subset
//! of them: what the log cleaner needs to drop records without touching the
//! ones it keeps.
//!
//! A kept record is copied byte for byte: its offset delta and timestamp
//! delta stay relative to the unchanged base offset and base timestamp, so
//! its offset and timestamp never change. Offset deltas therefore only have
//! to increase inside a batch; on produce they must also be dense, which
//! the producer path checks through `recordCount == lastOffsetDelta + 1`.

use std::borrow::Cow;

use super::varint::Cursor;
use super::{BatchHeader, Compression, HEADER_LEN, LOG_OVERHEAD, MAGIC_V2, RecordError};
use super::record::MAX_DECOMPRESSED_BATCH;

/// The attribute bits of the codec; everything else (timestamp type,
/// transactional, control) is kept when a batch is rewritten.
const CODEC_BITS: i16 = 0x07;
/// Timestamp type bit: set for LogAppendTime.
const LOG_APPEND_TIME: i16 = 0x08;

/// One record, borrowed from the (decompressed) records of its batch.
#[derive(Debug, Clone, Copy)]
pub struct RawRecord<'a> {
    /// The whole record, its length prefix included: what a rewrite copies.
    pub bytes: &'a [u8],
    pub timestamp_delta: i64,
    pub offset_delta: i32,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    /// The header section after its count, already validated.
    pub headers: &'a [u8],
    pub header_count: i32,
}

impl RawRecord<'_> {
    pub fn offset(&self, h: &BatchHeader) -> i64 {
        h.base_offset + i64::from(self.offset_delta)
    }

    /// The record's timestamp (the batch's for LogAppendTime batches).
    pub fn timestamp(&self, h: &BatchHeader) -> i64 {
        if h.attributes & LOG_APPEND_TIME != 0 { h.max_timestamp } else { h.base_timestamp.wrapping_add(self.timestamp_delta) }
    }
}

/// The record bytes of one validated batch, decompressed if need be.
pub struct BatchRecords<'a> {
    header: BatchHeader,
    plain: Cow<'a, [u8]>,
}

impl<'a> BatchRecords<'a> {
    /// `batch` must have passed [`super::validate_batch`] giving `h`.
    pub fn new(batch: &'a [u8], h: &BatchHeader) -> Result<Self, RecordError> {
        let body = batch.get(HEADER_LEN..h.total_len()).ok_or(RecordError::Truncated)?;
        let compression = h.compression()?;
        // An empty batch (what compaction leaves) has no body to decompress.
        let plain = if compression == Compression::None || (h.record_count == 0 && body.is_empty()) {
            Cow::Borrowed(body)
        } else {
            Cow::Owned(compression.decompress(body, MAX_DECOMPRESSED_BATCH)?)
        };
        Ok(Self { header: *h, plain })
    }

    pub fn header(&self) -> &BatchHeader {
        &self.header
    }

    /// Bytes of the (decompressed) records section.
    pub fn plain_len(&self) -> usize {
        self.plain.len()
    }

    /// Every record in order; the last item is an error if anything is
    /// malformed, including bytes left over after the last record.
    pub fn iter(&self) -> RawIter<'_> {
        RawIter {
            cur: Cursor::new(&self.plain),
            index: 0,
            count: self.header.record_count.max(0) as usize,
            last_delta: self.header.last_offset_delta,
            prev_delta: -1,
            done: false,
        }
    }
}

pub struct RawIter<'a> {
    cur: Cursor<'a>,
    index: usize,
    count: usize,
    last_delta: i32,
    prev_delta: i32,
    done: bool,
}

impl<'a> Iterator for RawIter<'a> {
    type Item = Result<RawRecord<'a>, RecordError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        if self.index == self.count {
            self.done = true;
            if self.cur.remaining() != 0 {
                return Some(Err(RecordError::BadRecord { index: self.index, reason: "trailing bytes after the last record" }));
            }
            return None;
        }
        let item = parse_one(&mut self.cur, self.index, self.prev_delta, self.last_delta);
        match &item {
            Ok(r) => {
                self.prev_delta = r.offset_delta;
                self.index += 1;
            }
            Err(_) => self.done = true,
        }
        Some(item)
    }
}

fn parse_one<'a>(cur: &mut Cursor<'a>, index: usize, prev_delta: i32, last_delta: i32) -> Result<RawRecord<'a>, RecordError> {
    let bad = |reason| RecordError::BadRecord { index, reason };
    let start = cur.position();
    let len = cur.varint()?;
    if len < 0 {
        return Err(bad("negative record length"));
    }
    let body_bytes = cur.take(len as usize)?;
    let mut body = Cursor::new(body_bytes);
    body.u8()?; // attributes: unused in v2
    let timestamp_delta = body.varlong()?;
    let offset_delta = body.varint()?;
    // Increasing, within the batch's range: dense as produced, or with gaps
    // where compaction removed records.
    if offset_delta <= prev_delta || offset_delta > last_delta {
        return Err(bad("offset delta out of sequence"));
    }
    let key = body.nullable_bytes()?;
    let value = body.nullable_bytes()?;
    let header_count = body.varint()?;
    if header_count < 0 {
        return Err(bad("negative header count"));
    }
    let headers_at = body.position();
    for _ in 0..header_count {
        body.nullable_bytes()?.ok_or(bad("null header key"))?;
        body.nullable_bytes()?;
    }
    if body.remaining() != 0 {
        return Err(bad("record length does not match its fields"));
    }
    let headers = &body_bytes[headers_at..];
    let bytes = cur.since(start);
    Ok(RawRecord { bytes, timestamp_delta, offset_delta, key, value, headers, header_count })
}

/// Encodes a whole v2 batch with the header fields of `h` around an
/// already encoded (and, if the attributes say so, compressed) records
/// section. The length, magic, CRC and record count are not taken from `h`
/// but computed (the count is `record_count`).
pub fn encode_batch(h: &BatchHeader, record_count: i32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&h.base_offset.to_be_bytes());
    let batch_length = (HEADER_LEN - LOG_OVERHEAD + body.len()) as i32;
    out.extend_from_slice(&batch_length.to_be_bytes());
    out.extend_from_slice(&h.partition_leader_epoch.to_be_bytes());
    out.push(MAGIC_V2 as u8);
    out.extend_from_slice(&[0; 4]); // CRC, filled below
    out.extend_from_slice(&h.attributes.to_be_bytes());
    out.extend_from_slice(&h.last_offset_delta.to_be_bytes());
    out.extend_from_slice(&h.base_timestamp.to_be_bytes());
    out.extend_from_slice(&h.max_timestamp.to_be_bytes());
    out.extend_from_slice(&h.producer_id.to_be_bytes());
    out.extend_from_slice(&h.producer_epoch.to_be_bytes());
    out.extend_from_slice(&h.base_sequence.to_be_bytes());
    out.extend_from_slice(&record_count.to_be_bytes());
    out.extend_from_slice(body);
    let crc = crc32c::crc32c(&out[21..]);
    out[17..21].copy_from_slice(&crc.to_be_bytes());
    out
}

/// The batch `h` with only the records `kept` (raw records of that batch,
/// in order), recompressed with its codec. Base offset, last offset delta,
/// timestamps, producer identity and the other attributes stay as they
/// were, so every kept record keeps its offset and timestamp.
pub fn rebuild_batch(h: &BatchHeader, kept: &[RawRecord<'_>]) -> Result<Vec<u8>, RecordError> {
    let mut plain = Vec::with_capacity(kept.iter().map(|r| r.bytes.len()).sum());
    for r in kept {
        plain.extend_from_slice(r.bytes);
    }
    let body = h.compression()?.compress(&plain);
    Ok(encode_batch(h, kept.len() as i32, &body))
}

/// A batch with no records covering `h`'s offset range: what a batch whose
/// records were all removed becomes. It is never compressed (there is
/// nothing to compress, and a codec would need a non-empty frame).
pub fn empty_batch(h: &BatchHeader) -> Vec<u8> {
    encode_batch(&BatchHeader { attributes: h.attributes & !CODEC_BITS, ..*h }, 0, &[])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{BatchBuilder, Record, decode_records, validate_batch};

    fn batch(compression: Compression) -> Vec<u8> {
        let mut b = BatchBuilder::new(compression).idempotent(7, 1, 40);
        for i in 0..5 {
            b.push(Record {
                timestamp: 100 + i,
                key: Some(vec![b'k', i as u8]),
                value: (i != 3).then(|| vec![b'v'; i as usize]),
                ..Record::default()
            });
        }
        let mut bytes = b.build();
        crate::records::set_base_offset(&mut bytes, 1000);
        bytes
    }

    #[test]
    fn a_subset_keeps_offsets_timestamps_and_identity() {
        for c in Compression::ALL {
            let bytes = batch(c);
            let h = validate_batch(&bytes).unwrap();
            let recs = BatchRecords::new(&bytes, &h).unwrap();
            let all: Vec<RawRecord<'_>> = recs.iter().collect::<Result<_, _>>().unwrap();
            let kept = [all[1], all[3]];
            let out = rebuild_batch(&h, &kept).unwrap();
            let (h2, decoded) = decode_records(&out).unwrap();
            assert_eq!((h2.base_offset, h2.last_offset_delta, h2.record_count), (1000, 4, 2), "{}", c.name());
            assert_eq!((h2.producer_id, h2.producer_epoch, h2.base_sequence), (7, 1, 40));
            assert_eq!(h2.compression().unwrap(), c);
            assert_eq!(decoded.iter().map(|r| (r.offset, r.timestamp)).collect::<Vec<_>>(), [(1001, 101), (1003, 103)]);
            assert_eq!(decoded[1].value, None);
        }
    }

    #[test]
    fn empty_batches_validate_and_decode_to_nothing() {
        let bytes = batch(Compression::Zstd);
        let h = validate_batch(&bytes).unwrap();
        let empty = empty_batch(&h);
        let (h2, decoded) = decode_records(&empty).unwrap();
        assert!(decoded.is_empty());
        assert_eq!((h2.base_offset, h2.last_offset(), h2.record_count), (1000, 1004, 0));
        assert_eq!(h2.compression().unwrap(), Compression::None);
        crate::records::check_records(&empty, &h2).unwrap();
    }

    #[test]
    fn deltas_must_increase_and_stay_in_range() {
        let bytes = batch(Compression::None);
        let h = validate_batch(&bytes).unwrap();
        let recs = BatchRecords::new(&bytes, &h).unwrap();
        let all: Vec<RawRecord<'_>> = recs.iter().collect::<Result<_, _>>().unwrap();
        // Records out of order: rejected.
        let swapped = rebuild_batch(&h, &[all[2], all[1]]).unwrap();
        assert!(decode_records(&swapped).is_err());
        // A delta past lastOffsetDelta: rejected.
        let short = BatchHeader { last_offset_delta: 2, ..h };
        let mut plain = Vec::new();
        plain.extend_from_slice(all[4].bytes);
        let past = encode_batch(&short, 1, &plain);
        assert!(decode_records(&past).is_err());
        // More records than offsets: rejected by the header check.
        let over = BatchHeader { last_offset_delta: 0, ..h };
        assert!(validate_batch(&encode_batch(&over, 2, &[])).is_err());
    }
}
