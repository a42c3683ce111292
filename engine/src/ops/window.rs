//! Time windows: each row once per event-time window that contains it,
//! with `window_start` and `window_end` appended. Tumbling windows (slide
//! = size) keep the row count; sliding ones multiply it by up to
//! size / slide.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, TimestampMillisecondArray, UInt32Array};
use arrow::compute::{cast, take};
use arrow::datatypes::TimestampMillisecondType;

use crate::error::Result;
use crate::eval::evaluate;
use crate::expr::Expr;
use crate::types::{DataType, Field, Schema};

/// The starts of the windows containing `ts`, ascending: every multiple
/// `k * slide` with `k * slide <= ts < k * slide + size`.
pub fn window_starts(ts: i64, size: i64, slide: i64) -> impl Iterator<Item = i64> {
    // The last window starting at or before ts (floor, also for ts < 0).
    let last = ts.div_euclid(slide).saturating_mul(slide);
    // Windows back from it while they still reach past ts.
    let back = (size - 1) / slide;
    (0..=back)
        .rev()
        .map(move |k| last.saturating_sub(k * slide))
        .filter(move |s| s.saturating_add(size) > ts)
}

pub fn time_window(
    batch: &RecordBatch,
    schema: &Schema,
    time: &Expr,
    size: i64,
    slide: i64,
) -> Result<RecordBatch> {
    let t = cast(
        &evaluate(time, batch, schema)?,
        &DataType::Timestamp.to_arrow(),
    )?;
    let t = t.as_primitive::<TimestampMillisecondType>();
    let mut idx: Vec<u32> = Vec::with_capacity(batch.num_rows());
    let mut starts: Vec<i64> = Vec::with_capacity(batch.num_rows());
    for i in 0..t.len() {
        if t.is_null(i) {
            continue;
        }
        for s in window_starts(t.value(i), size, slide) {
            idx.push(i as u32);
            starts.push(s);
        }
    }
    let idx = UInt32Array::from(idx);
    let mut columns: Vec<ArrayRef> = batch
        .columns()
        .iter()
        .map(|c| take(c.as_ref(), &idx, None))
        .collect::<Result<_, _>>()?;
    let ends: Vec<i64> = starts.iter().map(|s| s.saturating_add(size)).collect();
    columns.push(Arc::new(TimestampMillisecondArray::from(starts)));
    columns.push(Arc::new(TimestampMillisecondArray::from(ends)));
    let mut fields = schema.fields.clone();
    fields.push(Field::new("window_start", DataType::Timestamp));
    fields.push(Field::new("window_end", DataType::Timestamp));
    Ok(RecordBatch::try_new(
        Schema::new(fields).to_arrow(),
        columns,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn starts(ts: i64, size: i64, slide: i64) -> Vec<i64> {
        window_starts(ts, size, slide).collect()
    }

    #[test]
    fn tumbling_windows_hold_their_start_not_their_end() {
        assert_eq!(starts(0, 60, 60), vec![0]);
        assert_eq!(starts(59, 60, 60), vec![0]);
        assert_eq!(starts(60, 60, 60), vec![60]);
        assert_eq!(starts(-1, 60, 60), vec![-60]);
        assert_eq!(starts(-60, 60, 60), vec![-60]);
    }

    #[test]
    fn sliding_windows_are_every_window_containing_the_row() {
        // 10-minute windows every 5 minutes (in minutes here).
        assert_eq!(starts(7, 10, 5), vec![0, 5]);
        assert_eq!(starts(5, 10, 5), vec![0, 5]);
        assert_eq!(starts(4, 10, 5), vec![-5, 0]);
        assert_eq!(starts(10, 10, 5), vec![5, 10]);
        // A size that is not a multiple of the slide.
        assert_eq!(starts(6, 7, 3), vec![0, 3, 6]);
        assert_eq!(starts(7, 7, 3), vec![3, 6]);
        assert_eq!(starts(-1, 7, 3), vec![-6, -3]);
    }
}
