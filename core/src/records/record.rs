//! Individual records inside a v2 batch.

use super::varint::{Cursor, put_nullable_bytes, put_varint, put_varlong};
use super::{BatchHeader, HEADER_LEN, RecordError, validate_batch};

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
pub fn decode_records(batch: &[u8]) -> Result<(BatchHeader, Vec<Record>), RecordError> {
    let h = validate_batch(batch)?;
    let body = &batch[HEADER_LEN..h.total_len()];
    let plain = h.compression()?.decompress(body, MAX_DECOMPRESSED_BATCH)?;
    let mut cur = Cursor::new(&plain);
    // Each record takes at least 7 bytes, so a huge count cannot allocate much.
    let mut records = Vec::with_capacity((h.record_count as usize).min(plain.len() / 7 + 1));
    for index in 0..h.record_count as usize {
        records.push(decode_one(&mut cur, &h, index)?);
    }
    if cur.remaining() != 0 {
        return Err(RecordError::BadRecord { index: records.len(), reason: "trailing bytes after the last record" });
    }
    Ok((h, records))
}

/// Checks every record of a validated batch without copying any of them:
/// the produce path's deep validation (decompressing if needed).
pub fn check_records(batch: &[u8], h: &BatchHeader) -> Result<(), RecordError> {
    let body = &batch[HEADER_LEN..h.total_len()];
    let compression = h.compression()?;
    let plain;
    let bytes = if compression == super::Compression::None {
        body
    } else {
        plain = compression.decompress(body, MAX_DECOMPRESSED_BATCH)?;
        &plain[..]
    };
    let mut cur = Cursor::new(bytes);
    for index in 0..h.record_count as usize {
        skip_one(&mut cur, index)?;
    }
    if cur.remaining() != 0 {
        return Err(RecordError::BadRecord { index: h.record_count as usize, reason: "trailing bytes after the last record" });
    }
    Ok(())
}

fn skip_one(cur: &mut Cursor<'_>, index: usize) -> Result<(), RecordError> {
    let bad = |reason| RecordError::BadRecord { index, reason };
    let len = cur.varint()?;
    if len < 0 {
        return Err(bad("negative record length"));
    }
    let mut body = Cursor::new(cur.take(len as usize)?);
    body.u8()?;
    body.varlong()?;
    if body.varint()? as i64 != index as i64 {
        return Err(bad("offset delta out of sequence"));
    }
    body.nullable_bytes()?;
    body.nullable_bytes()?;
    let header_count = body.varint()?;
    if header_count < 0 {
        return Err(bad("negative header count"));
    }
    for _ in 0..header_count {
        body.nullable_bytes()?.ok_or(bad("null header key"))?;
        body.nullable_bytes()?;
    }
    if body.remaining() != 0 {
        return Err(bad("record length does not match its fields"));
    }
    Ok(())
}

fn decode_one(cur: &mut Cursor<'_>, h: &BatchHeader, index: usize) -> Result<Record, RecordError> {
    let bad = |reason| RecordError::BadRecord { index, reason };
    let len = cur.varint()?;
    if len < 0 {
        return Err(bad("negative record length"));
    }
    let start = cur.position();
    let mut body = Cursor::new(cur.take(len as usize)?);
    let _attributes = body.u8()?;
    let timestamp_delta = body.varlong()?;
    let offset_delta = body.varint()?;
    if offset_delta as i64 != index as i64 {
        return Err(bad("offset delta out of sequence"));
    }
    let key = body.nullable_bytes()?.map(<[u8]>::to_vec);
    let value = body.nullable_bytes()?.map(<[u8]>::to_vec);
    let header_count = body.varint()?;
    if header_count < 0 {
        return Err(bad("negative header count"));
    }
    let mut headers = Vec::with_capacity((header_count as usize).min(body.remaining() / 2 + 1));
    for _ in 0..header_count {
        let key = body.nullable_bytes()?.ok_or(bad("null header key"))?.to_vec();
        let value = body.nullable_bytes()?.map(<[u8]>::to_vec);
        headers.push(Header { key, value });
    }
    if body.remaining() != 0 {
        return Err(bad("record length does not match its fields"));
    }
    debug_assert_eq!(cur.position(), start + len as usize);
    Ok(Record {
        offset: h.base_offset + offset_delta as i64,
        timestamp: h.base_timestamp.wrapping_add(timestamp_delta),
        key,
        value,
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
