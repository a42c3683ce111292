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

use arrow::array::{Array, ArrayRef, AsArray, Int64Array, RecordBatch, StringArray};
use arrow::compute::cast;
use std::hash::BuildHasher;

use rustc_hash::FxBuildHasher;

use crate::error::Result;
use crate::exec_err;
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
///
/// The table is open addressing with linear probing, one 32-byte slot per
/// group, and probes in rounds: the pieces of a round are found and hashed
/// first, each one's first slot prefetched, then probed. A word count's
/// 100,000 distinct words fill 262,144 slots (8 MB) per task; with
/// `hashbrown` half the samples sat on the first read of a slot, a cache
/// miss each time a rare word came. Prefetched a round ahead, the misses
/// overlap.
struct Groups<'a> {
    slots: Vec<Slot>,
    /// Slots in use; the table doubles past half full.
    used: usize,
    /// The distinct pieces, in the order first seen (`Slot::group`).
    words: Vec<&'a str>,
    /// Counts past `u32::MAX` carried out of a slot: (group, amount).
    carried: Vec<(u32, u64)>,
    /// The round being gathered.
    round: Vec<Piece<'a>>,
}

/// One group, all a lookup reads in one 32-byte line: a probe touches one
/// slot, not three vectors (which cost more than the `memcmp`s saved).
#[derive(Clone, Copy, Default)]
#[repr(align(32))]
struct Slot {
    packed: [u64; 2],
    /// The hash's top half: most mismatches end here.
    tag: u32,
    /// 0: the slot is empty (pieces are never empty).
    len: u32,
    count: u32,
    group: u32,
}

/// A piece found and hashed, waiting for its round's probes.
struct Piece<'a> {
    text: &'a str,
    packed: [u64; 2],
    hash: u64,
}

/// Pieces per round: enough to overlap a dozen misses, few enough that
/// the prefetched slots are still in L1 when probed.
const ROUND: usize = 16;

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

/// [`pack`] of the `len` bytes at `start` in `buf`, read as two whole
/// integers and masked when 16 bytes are there to read. (`pack`'s
/// variable-length copy to the stack and the loads right after it stalled
/// on store forwarding: 30 % of the word count's samples.)
#[inline(always)]
fn pack_at(buf: &[u8], start: usize, len: usize) -> [u64; 2] {
    match buf.get(start..start + INLINE) {
        Some(w) if len <= INLINE => {
            let lo = u64::from_le_bytes(w[..8].try_into().unwrap_or([0; 8]));
            let hi = u64::from_le_bytes(w[8..].try_into().unwrap_or([0; 8]));
            let keep = |n: usize| u64::MAX.checked_shr(64 - 8 * n as u32).unwrap_or(0);
            [lo & keep(len.min(8)), hi & keep(len.saturating_sub(8))]
        }
        _ if len <= INLINE => pack(&buf[start..start + len]),
        _ => [0, 0],
    }
}

/// A fixed (seedless) hash: deterministic across runs and machines. A
/// folded multiply (the high and low halves of a 128-bit product xored)
/// spreads every input bit over both halves: the low bits pick the slot,
/// the high half is the tag.
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

/// Asks the CPU to bring `slot`'s line into L1 without waiting for it.
#[inline(always)]
fn prefetch(slot: &Slot) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint that reads nothing and cannot fault;
    // the intrinsic is unsafe only for its `sse` target feature, which
    // every x86_64 CPU has.
    #[allow(unsafe_code)]
    unsafe {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        _mm_prefetch::<_MM_HINT_T0>((slot as *const Slot).cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = slot;
}

impl<'a> Groups<'a> {
    fn new() -> Self {
        Groups { slots: vec![Slot::default(); 1024], used: 0, words: Vec::new(), carried: Vec::new(), round: Vec::with_capacity(ROUND) }
    }

    #[inline(always)]
    fn add(&mut self, piece: &'a str) {
        let packed = if piece.len() <= INLINE { pack(piece.as_bytes()) } else { [0, 0] };
        self.add_packed(piece, packed);
    }

    /// [`Groups::add`] of a piece already packed (`pack_at`).
    #[inline(always)]
    fn add_packed(&mut self, piece: &'a str, packed: [u64; 2]) {
        let b = piece.as_bytes();
        if b.is_empty() {
            return;
        }
        let hash = hash(b, packed);
        prefetch(&self.slots[hash as usize & (self.slots.len() - 1)]);
        self.round.push(Piece { text: piece, packed, hash });
        if self.round.len() == ROUND {
            self.probe_round();
        }
    }

    /// Counts every piece of the round.
    fn probe_round(&mut self) {
        let mut round = std::mem::take(&mut self.round);
        for p in &round {
            self.count(p);
        }
        round.clear();
        self.round = round;
    }

    #[inline(always)]
    fn count(&mut self, p: &Piece<'a>) {
        let b = p.text.as_bytes();
        let tag = (p.hash >> 32) as u32;
        let mask = self.slots.len() - 1;
        let mut i = p.hash as usize & mask;
        loop {
            let s = &mut self.slots[i];
            if s.len == 0 {
                break;
            }
            if s.tag == tag
                && s.len as usize == b.len()
                && if b.len() <= INLINE { s.packed == p.packed } else { self.words[s.group as usize].as_bytes() == b }
            {
                if s.count == u32::MAX {
                    self.carried.push((s.group, u64::from(u32::MAX)));
                    s.count = 0;
                }
                s.count += 1;
                return;
            }
            i = (i + 1) & mask;
        }
        let group = self.words.len() as u32;
        self.slots[i] = Slot { packed: p.packed, tag, len: b.len() as u32, count: 1, group };
        self.words.push(p.text);
        self.used += 1;
        if self.used * 2 > self.slots.len() {
            self.grow();
        }
    }

    /// Doubles the table, moving each slot to its place in the new one.
    fn grow(&mut self) {
        let bigger = vec![Slot::default(); self.slots.len() * 2];
        let old = std::mem::replace(&mut self.slots, bigger);
        let mask = self.slots.len() - 1;
        for s in old.into_iter().filter(|s| s.len != 0) {
            let b = self.words[s.group as usize].as_bytes();
            let mut i = hash(b, s.packed) as usize & mask;
            while self.slots[i].len != 0 {
                i = (i + 1) & mask;
            }
            self.slots[i] = s;
        }
    }

    /// The pieces in first-seen order with their counts.
    fn finish(mut self) -> Result<(Vec<&'a str>, Vec<i64>)> {
        self.probe_round();
        let mut counts = vec![0u64; self.words.len()];
        for s in self.slots.iter().filter(|s| s.len != 0) {
            counts[s.group as usize] = u64::from(s.count);
        }
        for (group, n) in &self.carried {
            counts[*group as usize] += n;
        }
        let counts = counts
            .into_iter()
            .map(|n| i64::try_from(n).map_err(|_| exec_err!("a word count of {n} does not fit a BIGINT")))
            .collect::<Result<_>>()?;
        Ok((self.words, counts))
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
    let mut groups = Groups::new();
    for column in &columns {
        let lines = column.as_string::<i32>();
        match separator.as_bytes() {
            // One ASCII byte: a char pattern searches with memchr (see
            // explode.rs); the pieces are the same.
            &[b] if b.is_ascii() => {
                // An explicit memchr loop rather than `str::split`: the
                // latter's `next` was left out of line in some builds,
                // which cost a fifth of the word count's CPU.
                // Pieces are packed straight from the array's value
                // buffer: `pack_at` may read past the end of a piece,
                // never past the end of the buffer.
                let values = lines.values().as_slice();
                let offsets = lines.value_offsets();
                for row in (0..lines.len()).filter(|r| lines.is_valid(*r)) {
                    let line = lines.value(row);
                    let base = offsets[row] as usize;
                    let mut start = 0;
                    for i in memchr::memchr_iter(b, line.as_bytes()) {
                        // Next to an ASCII byte: always a char boundary.
                        groups.add_packed(&line[start..i], pack_at(values, base + start, i - start));
                        start = i + 1;
                    }
                    groups.add_packed(&line[start..], pack_at(values, base + start, line.len() - start));
                }
            }
            _ => {
                for line in lines.iter().flatten() {
                    line.split(separator).for_each(|p| groups.add(p));
                }
            }
        }
    }
    let (words, counts) = groups.finish()?;
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
        // The low bits pick the slot, the top half is the tag.
        let low: std::collections::BTreeSet<u64> = hashes.iter().map(|h| h & 0xFFF).collect();
        let tags: std::collections::BTreeSet<u64> = hashes.iter().map(|h| h >> 32).collect();
        assert!(low.len() > 3_000 && tags.len() > 19_900, "low {} tags {}", low.len(), tags.len());
    }

    /// Packing in place equals packing a copy, for every length and for
    /// pieces near the buffer's end (where 16 bytes are not there to read).
    #[test]
    fn pack_at_equals_pack() {
        let buf: Vec<u8> = (0..40u8).map(|i| i.wrapping_mul(37).wrapping_add(1)).collect();
        for start in 0..buf.len() {
            for len in 1..=(buf.len() - start).min(INLINE) {
                assert_eq!(pack_at(&buf, start, len), pack(&buf[start..start + len]), "start {start} len {len}");
            }
        }
    }

    /// Tens of thousands of distinct words of every length up to 40 bytes
    /// (the table doubles many times; short, 16-byte and long words; a
    /// round cut at every place): the same counts, in the same order, as
    /// explode + partial count.
    #[test]
    fn many_distinct_words_count_as_exploded() {
        let schema = Schema::new(vec![Field::new("value", DataType::Utf8)]);
        let mut x: u64 = 7;
        let mut next = || {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            x >> 33
        };
        let words: Vec<String> = (0..40_000).map(|i| format!("{}{i}", "x".repeat((i * 7) % 37))).collect();
        let batches: Vec<RecordBatch> = (0..4)
            .map(|_| {
                let lines: Vec<String> =
                    (0..3_000).map(|_| (0..(next() % 40)).map(|_| words[(next() % 40_000) as usize].as_str()).collect::<Vec<_>>().join(" ")).collect();
                RecordBatch::try_new(schema.to_arrow(), vec![Arc::new(StringArray::from(lines)) as ArrayRef]).unwrap()
            })
            .collect();
        let exploded_schema = Schema::new(vec![Field::new("word", DataType::Utf8)]);
        let group = vec![(col("word"), "word".to_string())];
        let aggs = vec![(count_star(), "n".to_string())];
        let exploded: Vec<RecordBatch> = batches.iter().map(|b| explode(b, &schema, &col("value"), " ", "word", &[]).unwrap()).collect();
        let expected = aggregate(&exploded, &exploded_schema, AggMode::Partial, &group, &aggs, &exploded_schema).unwrap();
        let fused = split_count(&batches, &schema, &col("value"), " ", &group, &aggs, &exploded_schema).unwrap();
        assert!(fused.num_rows() > 30_000, "{} distinct words", fused.num_rows());
        assert_eq!(fused, expected);
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
