//! Word count's partial aggregate fused with its explode: `count(*)`
//! grouped by the pieces of a split string, each piece hashed where it
//! lies in its line. The exploded column — one string per word, 100
//! million of them for 500 MB of text — is never built, and no piece is
//! copied but the first of each distinct word.
//!
//! It answers exactly what `Aggregate(Partial, [piece], [count(*)..])`
//! over `Explode` answers (the same partial schema; groups in the order
//! first seen), so the final aggregate after the shuffle cannot tell.

use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, Int64Array, RecordBatch, StringArray};
use arrow::compute::cast;
use hashbrown::HashMap;
use hashbrown::hash_map::Entry;
use rustc_hash::FxBuildHasher;

use crate::error::Result;
use crate::eval::evaluate;
use crate::expr::{AggExpr, AggFunc, Expr};
use crate::ops::aggregate::partial_schema;
use crate::physical::Op;
use crate::types::{DataType, Schema};

/// The explode under a partial `count(*)` grouped by the exploded
/// column, if `op`'s aggregate is one: `(explode's input, its schema, the
/// split expression, the separator)`. The plan shapes: the explode
/// directly, or a projection of just the exploded column (as SQL plans a
/// subquery `SELECT explode(split(..)) AS word`).
pub fn fusable<'a>(
    input: &'a Op,
    group: &[(Expr, String)],
    aggs: &[(AggExpr, String)],
) -> Option<(&'a Op, &'a Schema, &'a Expr, &'a str)> {
    let [(Expr::Column(key), _)] = group else { return None };
    if aggs.is_empty() || aggs.iter().any(|(a, _)| a.func != AggFunc::CountStar) {
        return None;
    }
    let (explode, column) = match input {
        Op::Project { input, exprs, .. } => match exprs.as_slice() {
            [(Expr::Column(c), alias)] if alias.eq_ignore_ascii_case(key) => (input.as_ref(), c.as_str()),
            _ => return None,
        },
        other => (other, key.as_str()),
    };
    match explode {
        Op::Explode { input, schema, expr, separator, name, keep }
            if keep.is_empty() && name.eq_ignore_ascii_case(column) =>
        {
            Some((input.as_ref(), schema, expr, separator.as_str()))
        }
        _ => None,
    }
}

/// Distinct pieces in the order first seen, with their counts; a piece is
/// a slice of its line until the output copies it.
#[derive(Default)]
struct Groups<'a> {
    index: HashMap<&'a str, u32, FxBuildHasher>,
    words: Vec<&'a str>,
    counts: Vec<i64>,
}

impl<'a> Groups<'a> {
    fn add(&mut self, piece: &'a str) {
        if piece.is_empty() {
            return;
        }
        match self.index.entry(piece) {
            Entry::Occupied(e) => self.counts[*e.get() as usize] += 1,
            Entry::Vacant(e) => {
                e.insert(self.words.len() as u32);
                self.words.push(piece);
                self.counts.push(1);
            }
        }
    }
}

/// The partial aggregate's batch: the distinct non-empty pieces of `expr`
/// split on `separator` over `batches` (NULLs give none), each with its
/// count once per aggregate in `aggs`.
pub fn split_count(
    batches: &[RecordBatch],
    schema: &Schema,
    expr: &Expr,
    separator: &str,
    group: &[(Expr, String)],
    aggs: &[(AggExpr, String)],
    original: &Schema,
) -> Result<RecordBatch> {
    let utf8 = DataType::Utf8.to_arrow();
    let columns: Vec<ArrayRef> = batches
        .iter()
        .map(|b| Ok(cast(&evaluate(expr, b, schema)?, &utf8)?))
        .collect::<Result<_>>()?;
    let mut groups = Groups::default();
    for column in &columns {
        let lines = column.as_string::<i32>();
        match separator.as_bytes() {
            // One ASCII byte: a char pattern searches with memchr (see
            // explode.rs); the pieces are the same.
            &[b] if b.is_ascii() => {
                for line in lines.iter().flatten() {
                    line.split(b as char).for_each(|p| groups.add(p));
                }
            }
            _ => {
                for line in lines.iter().flatten() {
                    line.split(separator).for_each(|p| groups.add(p));
                }
            }
        }
    }
    let Groups { words, counts, .. } = groups;
    let out = partial_schema(original, group, aggs)?.to_arrow();
    let counts: ArrayRef = Arc::new(Int64Array::from(counts));
    let mut cols: Vec<ArrayRef> = vec![Arc::new(StringArray::from(words))];
    cols.extend(std::iter::repeat_n(counts, aggs.len()));
    Ok(RecordBatch::try_new(out, cols)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expr::{col, count_star};
    use crate::ops::aggregate::{AggMode, aggregate};
    use crate::ops::explode::explode;
    use crate::types::Field;

    /// The fused operator gives the same batch as explode + partial count.
    #[test]
    fn equals_explode_then_partial_count() {
        let schema = Schema::new(vec![Field::new("value", DataType::Utf8)]);
        let lines: Vec<Vec<Option<&str>>> = vec![
            vec![Some("a b  a"), None, Some(""), Some(" b c "), Some("héllo wörld héllo")],
            vec![Some("c c c"), Some("a"), None],
            vec![],
        ];
        let batches: Vec<RecordBatch> = lines
            .into_iter()
            .map(|l| {
                RecordBatch::try_new(schema.to_arrow(), vec![Arc::new(StringArray::from(l)) as ArrayRef]).unwrap()
            })
            .collect();
        let exploded_schema = Schema::new(vec![Field::new("word", DataType::Utf8)]);
        for sep in [" ", "  ", "ö"] {
            let group = vec![(col("word"), "word".to_string())];
            let aggs = vec![(count_star(), "n".to_string()), (count_star(), "m".to_string())];
            let exploded: Vec<RecordBatch> =
                batches.iter().map(|b| explode(b, &schema, &col("value"), sep, "word", &[]).unwrap()).collect();
            let expected =
                aggregate(&exploded, &exploded_schema, AggMode::Partial, &group, &aggs, &exploded_schema).unwrap();
            let fused = split_count(&batches, &schema, &col("value"), sep, &group, &aggs, &exploded_schema).unwrap();
            assert_eq!(fused, expected, "separator {sep:?}");
            assert!(fused.num_rows() > 0);
        }
    }
}
