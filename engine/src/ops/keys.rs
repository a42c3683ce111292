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

/// Whether row `i` has a NULL in any key column (such keys never join).
pub fn any_null(columns: &[ArrayRef], i: usize) -> bool {
    columns.iter().any(|c| c.is_null(i))
}
