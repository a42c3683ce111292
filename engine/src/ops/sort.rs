//! Sort (optionally only the first `limit` rows: top-k) and limit.

use arrow::array::{ArrayRef, RecordBatch};
use arrow::compute::{
    SortColumn, SortOptions, concat_batches, lexsort_to_indices, take_record_batch,
};

use crate::error::Result;
use crate::eval::evaluate;
use crate::plan::SortKey;
use crate::types::Schema;

pub fn sort(
    batches: &[RecordBatch],
    schema: &Schema,
    keys: &[SortKey],
    limit: Option<usize>,
) -> Result<RecordBatch> {
    let all = concat_batches(&schema.to_arrow(), batches)?;
    if all.num_rows() == 0 || keys.is_empty() {
        let n = limit.unwrap_or(all.num_rows()).min(all.num_rows());
        return Ok(all.slice(0, n));
    }
    let mut columns = Vec::with_capacity(keys.len());
    for k in keys {
        let values: ArrayRef = evaluate(&k.expr, &all, schema)?;
        columns.push(SortColumn {
            values,
            options: Some(SortOptions {
                descending: k.descending,
                nulls_first: k.nulls_first,
            }),
        });
    }
    let idx = lexsort_to_indices(&columns, limit)?;
    Ok(take_record_batch(&all, &idx)?)
}

/// Skips `skip` rows and keeps `fetch` (all when `None`), across batches.
pub fn limit(batches: Vec<RecordBatch>, skip: usize, fetch: Option<usize>) -> Vec<RecordBatch> {
    let mut to_skip = skip;
    let mut left = fetch.unwrap_or(usize::MAX);
    let mut out = Vec::new();
    for b in batches {
        if left == 0 {
            break;
        }
        let n = b.num_rows();
        if to_skip >= n {
            to_skip -= n;
            continue;
        }
        let take = (n - to_skip).min(left);
        out.push(b.slice(to_skip, take));
        left -= take;
        to_skip = 0;
    }
    out
}
