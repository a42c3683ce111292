//! Individual records inside a v2 batch.

use super::raw::{BatchRecords, RawRecord};
use super::varint::{Cursor, put_nullable_bytes, put_varint, put_varlong};
use super::{BatchHeader, RecordError, validate_batch};

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Header {
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

/// One record with its position resolved against the batch header.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Record {
    pub offset: i64,
    pub timestamp: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<Header>,
}

/// Decoded records may not expand beyond this many bytes per batch.
pub const MAX_DECOMPRESSED_BATCH: usize = 256 * 1024 * 1024;

/// Validates a whole batch and decodes its records, decompressing if needed.
/// Accepts what compaction leaves: offset deltas with gaps, and empty
/// batches.
pub fn decode_records(batch: &[u8]) -> Result<(BatchHeader, Vec<Record>), RecordError> {
    let h = validate_batch(batch)?;
    let recs = BatchRecords::new(batch, &h)?;
    // Each record takes at least 7 bytes, so a huge count cannot allocate much.
    let mut records = Vec::with_capacity((h.record_count as usize).min(batch.len() / 7 + 1));
    for (index, raw) in recs.iter().enumerate() {
        records.push(to_record(&raw?, &h, index)?);
    }
    Ok((h, records))
}

/// Checks every record of a validated batch without copying any of them:
/// the produce path's deep validation (decompressing if needed).
pub fn check_records(batch: &[u8], h: &BatchHeader) -> Result<(), RecordError> {
    check_records_keyed(batch, h, false)
}

/// [`check_records`], and with `require_keys` also that every record has a
/// key (a compacted topic cannot place a record without one). Returns the
/// index of the first record without a key as an error.
pub fn check_records_keyed(batch: &[u8], h: &BatchHeader, require_keys: bool) -> Result<(), RecordError> {
    let recs = BatchRecords::new(batch, h)?;
    for (index, raw) in recs.iter().enumerate() {
        let raw = raw?;
        if require_keys && raw.key.is_none() {
            return Err(RecordError::MissingKey { index });
        }
    }
    Ok(())
}

fn to_record(raw: &RawRecord<'_>, h: &BatchHeader, index: usize) -> Result<Record, RecordError> {
    let bad = |reason| RecordError::BadRecord { index, reason };
    let mut cur = Cursor::new(raw.headers);
    let mut headers = Vec::with_capacity((raw.header_count as usize).min(raw.headers.len() / 2 + 1));
    for _ in 0..raw.header_count {
        let key = cur.nullable_bytes()?.ok_or(bad("null header key"))?.to_vec();
        let value = cur.nullable_bytes()?.map(<[u8]>::to_vec);
        headers.push(Header { key, value });
    }
    Ok(Record {
        offset: raw.offset(h),
        timestamp: h.base_timestamp.wrapping_add(raw.timestamp_delta),
        key: raw.key.map(<[u8]>::to_vec),
        value: raw.value.map(<[u8]>::to_vec),
        headers,
    })
}

/// Encodes one record body (with its length prefix) into `out`.
pub(super) fn encode_one(out: &mut Vec<u8>, offset_delta: i32, timestamp_delta: i64, r: &Record) {
    let mut body = Vec::with_capacity(16 + r.key.as_ref().map_or(0, Vec::len) + r.value.as_ref().map_or(0, Vec::len));
    body.push(0); // attributes: unused in v2
    put_varlong(&mut body, timestamp_delta);
    put_varint(&mut body, offset_delta);
    put_nullable_bytes(&mut body, r.key.as_deref());
    put_nullable_bytes(&mut body, r.value.as_deref());
    put_varint(&mut body, r.headers.len() as i32);
    for hdr in &r.headers {
        put_nullable_bytes(&mut body, Some(&hdr.key));
        put_nullable_bytes(&mut body, hdr.value.as_deref());
    }
    put_varint(out, body.len() as i32);
    out.extend_from_slice(&body);
}
