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
use std::hash::BuildHasher;

use hashbrown::HashTable;
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
///
/// Most words are short, so a piece of up to 16 bytes is also kept packed
/// in two `u64`s: it is hashed with a multiply or two and compared as two
/// integers.
/// (With a `HashMap<&str, _>` a third of the time went to `memcmp` calls
/// on 5-byte strings and another third to hashing.)
#[derive(Default)]
struct Groups<'a> {
    table: HashTable<Slot>,
    /// The distinct pieces, in the order first seen (`Slot::group`).
    words: Vec<&'a str>,
}

/// One group, all a lookup reads kept together: a probe touches one
/// slot, not three vectors (which cost more than the `memcmp`s saved).
struct Slot {
    hash: u64,
    packed: [u64; 2],
    count: i64,
    group: u32,
    len: u32,
}

/// Pieces up to this long are compared as two integers. A longer one is
/// compared with the first copy's bytes, which lie somewhere in the input
/// text: a cache miss (with 8 bytes inline, the 3 % of words of 9–12
/// bytes cost 8 % of the CPU in `memcmp`).
const INLINE: usize = 16;

/// Up to 16 bytes as two little-endian integers, zero-padded.
#[inline(always)]
fn pack(b: &[u8]) -> [u64; 2] {
    let mut buf = [0u8; INLINE];
    buf[..b.len()].copy_from_slice(b);
    let (lo, hi) = buf.split_at(8);
    [u64::from_le_bytes(lo.try_into().unwrap_or([0; 8])), u64::from_le_bytes(hi.try_into().unwrap_or([0; 8]))]
}

/// A fixed (seedless) hash: deterministic across runs and machines. A
/// folded multiply (the high and low halves of a 128-bit product xored)
/// spreads every input bit over the bits hashbrown uses.
#[inline(always)]
fn hash(b: &[u8], packed: [u64; 2]) -> u64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let fold = |x: u64| {
        let m = u128::from(x ^ 0x2545_F491_4F6C_DD1D) * u128::from(K);
        (m as u64) ^ ((m >> 64) as u64)
    };
    if b.len() <= 8 {
        fold(packed[0] ^ ((b.len() as u64) << 59))
    } else if b.len() <= INLINE {
        fold(packed[0] ^ fold(packed[1] ^ ((b.len() as u64) << 59)))
    } else {
        fold(FxBuildHasher.hash_one(b) ^ b.len() as u64)
    }
}

impl<'a> Groups<'a> {
    #[inline(always)]
    fn add(&mut self, piece: &'a str) {
        let b = piece.as_bytes();
        if b.is_empty() {
            return;
        }
        let short = b.len() <= INLINE;
        let packed = if short { pack(b) } else { [0, 0] };
        let h = hash(b, packed);
        let words = &self.words;
        let eq = |s: &Slot| {
            s.hash == h
                && s.len as usize == b.len()
                && if short { s.packed == packed } else { words[s.group as usize].as_bytes() == b }
        };
        if let Some(slot) = self.table.find_mut(h, eq) {
            slot.count += 1;
            return;
        }
        let group = self.words.len() as u32;
        let slot = Slot { hash: h, packed, count: 1, group, len: b.len() as u32 };
        self.table.insert_unique(h, slot, |s| s.hash);
        self.words.push(piece);
    }

    /// The pieces in first-seen order with their counts.
    fn finish(self) -> (Vec<&'a str>, Vec<i64>) {
        let mut counts = vec![0; self.words.len()];
        for s in &self.table {
            counts[s.group as usize] = s.count;
        }
        (self.words, counts)
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
                // An explicit memchr loop rather than `str::split`: the
                // latter's `next` was left out of line in some builds,
                // which cost a fifth of the word count's CPU.
                for line in lines.iter().flatten() {
                    let mut start = 0;
                    for i in memchr::memchr_iter(b, line.as_bytes()) {
                        // Next to an ASCII byte: always a char boundary.
                        groups.add(&line[start..i]);
                        start = i + 1;
                    }
                    groups.add(&line[start..]);
                }
            }
            _ => {
                for line in lines.iter().flatten() {
                    line.split(separator).for_each(|p| groups.add(p));
                }
            }
        }
    }
    let (words, counts) = groups.finish();
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

    /// Distinct short and long words get distinct hashes (a constant hash
    /// still gives right answers, quadratically slowly).
    #[test]
    fn hashes_spread() {
        let words: Vec<String> = (0..10_000).map(|i| format!("w{i}")).chain((0..10_000).map(|i| format!("a-longer-word-{i}"))).collect();
        let mut hashes: Vec<u64> = words.iter().map(|w| hash(w.as_bytes(), if w.len() <= INLINE { pack(w.as_bytes()) } else { [0, 0] })).collect();
        hashes.sort_unstable();
        hashes.dedup();
        assert_eq!(hashes.len(), words.len());
        // hashbrown picks buckets with the low bits and tags with the top 7.
        let low: std::collections::BTreeSet<u64> = hashes.iter().map(|h| h & 0xFFF).collect();
        let top: std::collections::BTreeSet<u64> = hashes.iter().map(|h| h >> 57).collect();
        assert!(low.len() > 3_000 && top.len() == 128, "low {} top {}", low.len(), top.len());
    }

    /// The fused operator gives the same batch as explode + partial count.
    #[test]
    fn equals_explode_then_partial_count() {
        let schema = Schema::new(vec![Field::new("value", DataType::Utf8)]);
        let lines: Vec<Vec<Option<&str>>> = vec![
            vec![Some("a b  a"), None, Some(""), Some(" b c "), Some("héllo wörld héllo")],
            vec![Some("c c c"), Some("a"), None, Some("abcdefgh abcdefghi extraordinarily abcdefgh extraordinarily")],
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
