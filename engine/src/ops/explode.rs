//! Explode: one output row per non-empty piece of a string split on a
//! literal separator, the other columns repeated. Word count is built on it.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringBuilder, UInt32Array};
use arrow::compute::{cast, take};

use crate::error::Result;
use crate::eval::evaluate;
use crate::expr::Expr;
use crate::types::{DataType, Field, Schema};

/// `keep`: which input columns to carry (by index); pruning the rest here
/// saves copying a whole line once per word.
pub fn explode(
    batch: &RecordBatch,
    schema: &Schema,
    expr: &Expr,
    separator: &str,
    name: &str,
    keep: &[usize],
) -> Result<RecordBatch> {
    let src = cast(&evaluate(expr, batch, schema)?, &DataType::Utf8.to_arrow())?;
    let src = src.as_string::<i32>();
    // Row numbers are needed only to repeat kept columns.
    let track = !keep.is_empty();
    let mut idx: Vec<u32> = Vec::new();
    let mut pieces = StringBuilder::with_capacity(batch.num_rows() * 8, src.value_data().len());
    let mut push = |piece: &str, i: usize| {
        if !piece.is_empty() {
            pieces.append_value(piece);
            if track {
                idx.push(i as u32);
            }
        }
    };
    match separator.as_bytes() {
        // One ASCII byte (a space, a comma): split with a char pattern,
        // which searches with memchr; `str::split` with a `&str` pattern
        // runs the general two-way substring search for every piece. An
        // ASCII byte never occurs inside a multi-byte character, so the
        // pieces are the same.
        &[b] if b.is_ascii() => {
            let c = b as char;
            for i in 0..src.len() {
                if src.is_valid(i) {
                    src.value(i).split(c).for_each(|p| push(p, i));
                }
            }
        }
        _ => {
            for i in 0..src.len() {
                if src.is_valid(i) {
                    src.value(i).split(separator).for_each(|p| push(p, i));
                }
            }
        }
    }
    let mut fields = Vec::with_capacity(keep.len() + 1);
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(keep.len() + 1);
    if !keep.is_empty() {
        let idx = UInt32Array::from(idx);
        for &k in keep {
            columns.push(take(batch.column(k).as_ref(), &idx, None)?);
            fields.push(schema.fields[k].clone());
        }
    }
    columns.push(Arc::new(pieces.finish()));
    fields.push(Field::new(name, DataType::Utf8));
    Ok(RecordBatch::try_new(
        Schema::new(fields).to_arrow(),
        columns,
    )?)
}
