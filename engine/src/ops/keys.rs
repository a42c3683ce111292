//! Row keys: group-by and join keys encoded with Arrow's row format (one
//! comparable byte string per row, whatever the column types), hashed with
//! a fixed hasher so every process sends a key to the same shuffle
//! partition and no hash seed reaches an output.

use std::hash::Hasher;

use arrow::array::{Array, ArrayRef};
use arrow::row::{RowConverter, Rows, SortField};
use rustc_hash::FxHasher;

use crate::error::Result;

pub fn converter(columns: &[ArrayRef]) -> Result<RowConverter> {
    Ok(RowConverter::new(
        columns
            .iter()
            .map(|c| SortField::new(c.data_type().clone()))
            .collect(),
    )?)
}

/// The rows of `columns` as byte keys.
pub fn encode(conv: &RowConverter, columns: &[ArrayRef]) -> Result<Rows> {
    Ok(conv.convert_columns(columns)?)
}

pub fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h = FxHasher::default();
    h.write(bytes);
    // Fx mixes poorly into the low bits that `% partitions` and the hash
    // table use; one multiply-xorshift round spreads them.
    let x = h.finish();
    let x = (x ^ (x >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^ (x >> 33)
}

/// A 64-bit integer key's hash for in-memory tables (murmur3's finaliser:
/// every input bit reaches the high bits hashbrown tags with and the low
/// bits it indexes with). Not used to route shuffles.
pub fn hash_i64(k: i64) -> u64 {
    let mut x = k as u64;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// Bytes of a short string key kept inside a hash-table entry.
pub const INLINE: usize = 16;

/// A string of at most [`INLINE`] bytes as two zero-padded little-endian
/// words, so that comparing two is two integer compares (the length is
/// kept beside it: "a" and "a\0" pad alike). Longer strings give zeros.
pub fn inline_key(bytes: &[u8]) -> [u64; 2] {
    if bytes.len() > INLINE {
        return [0, 0];
    }
    let mut buf = [0u8; INLINE];
    buf[..bytes.len()].copy_from_slice(bytes);
    let (lo, hi) = buf.split_at(8);
    [
        u64::from_le_bytes(<[u8; 8]>::try_from(lo).unwrap_or([0; 8])),
        u64::from_le_bytes(<[u8; 8]>::try_from(hi).unwrap_or([0; 8])),
    ]
}

/// The in-memory hash of a string key: a short key from its padded words
/// and length, a longer one through [`hash_bytes`].
pub fn hash_str(bytes: &[u8], inline: [u64; 2]) -> u64 {
    if bytes.len() <= INLINE {
        hash_i64((hash_i64((inline[0] ^ bytes.len() as u64) as i64) ^ inline[1]) as i64)
    } else {
        hash_bytes(bytes)
    }
}

/// Whether row `i` has a NULL in any key column (such keys never join).
pub fn any_null(columns: &[ArrayRef], i: usize) -> bool {
    columns.iter().any(|c| c.is_null(i))
}
