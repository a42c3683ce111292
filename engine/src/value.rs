//! Conversions between Arrow columns and [`Value`]s: building in-memory
//! tables, reading results row by row, and feeding the reference evaluator.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, Float64Array, Int64Array, NullArray, RecordBatch, StringArray,
    TimestampMillisecondArray,
};
use arrow::datatypes::{DataType as ArrowType, TimeUnit};

use crate::error::Result;
use crate::exec_err;
use crate::types::{DataType, Value};

/// A column of `t` from values; a value of another type is an error
/// (integers widen to DOUBLE and TIMESTAMP, NULL fits anywhere).
pub fn values_to_array<'a>(
    t: DataType,
    values: impl Iterator<Item = &'a Value>,
) -> Result<ArrayRef> {
    let bad = |v: &Value| exec_err!("value {v} does not fit a {t} column");
    Ok(match t {
        DataType::Null => Arc::new(NullArray::new(values.count())),
        DataType::Boolean => Arc::new(
            values
                .map(|v| match v {
                    Value::Null => Ok(None),
                    Value::Bool(b) => Ok(Some(*b)),
                    v => Err(bad(v)),
                })
                .collect::<Result<BooleanArray>>()?,
        ),
        DataType::Int64 => Arc::new(
            values
                .map(|v| match v {
                    Value::Null => Ok(None),
                    Value::Int(i) => Ok(Some(*i)),
                    v => Err(bad(v)),
                })
                .collect::<Result<Int64Array>>()?,
        ),
        DataType::Float64 => Arc::new(
            values
                .map(|v| match v {
                    Value::Null => Ok(None),
                    Value::Int(i) => Ok(Some(*i as f64)),
                    Value::Float(x) => Ok(Some(*x)),
                    v => Err(bad(v)),
                })
                .collect::<Result<Float64Array>>()?,
        ),
        DataType::Utf8 => Arc::new(
            values
                .map(|v| match v {
                    Value::Null => Ok(None),
                    Value::Str(s) => Ok(Some(s.as_str())),
                    v => Err(bad(v)),
                })
                .collect::<Result<StringArray>>()?,
        ),
        DataType::Timestamp => Arc::new(
            values
                .map(|v| match v {
                    Value::Null => Ok(None),
                    Value::Int(i) | Value::Timestamp(i) => Ok(Some(*i)),
                    v => Err(bad(v)),
                })
                .collect::<Result<TimestampMillisecondArray>>()?,
        ),
    })
}

/// The value at `row` of an engine-typed column.
pub fn array_value(array: &dyn Array, row: usize) -> Value {
    if array.is_null(row) {
        return Value::Null;
    }
    let any = array.as_any();
    match array.data_type() {
        ArrowType::Boolean => Value::Bool(
            any.downcast_ref::<BooleanArray>()
                .map(|a| a.value(row))
                .unwrap_or_default(),
        ),
        ArrowType::Int64 => Value::Int(
            any.downcast_ref::<Int64Array>()
                .map(|a| a.value(row))
                .unwrap_or_default(),
        ),
        ArrowType::Float64 => Value::Float(
            any.downcast_ref::<Float64Array>()
                .map(|a| a.value(row))
                .unwrap_or_default(),
        ),
        ArrowType::Utf8 => Value::Str(
            any.downcast_ref::<StringArray>()
                .map(|a| a.value(row).to_string())
                .unwrap_or_default(),
        ),
        ArrowType::Timestamp(TimeUnit::Millisecond, _) => Value::Timestamp(
            any.downcast_ref::<TimestampMillisecondArray>()
                .map(|a| a.value(row))
                .unwrap_or_default(),
        ),
        _ => Value::Null,
    }
}

/// All rows of some batches as values.
pub fn batches_to_rows(batches: &[RecordBatch]) -> Vec<Vec<Value>> {
    let mut rows = Vec::new();
    for b in batches {
        for r in 0..b.num_rows() {
            rows.push(
                b.columns()
                    .iter()
                    .map(|c| array_value(c.as_ref(), r))
                    .collect(),
            );
        }
    }
    rows
}
