//! Hash aggregation in three modes. `Partial` folds a task's rows into one
//! state row per group; the states are shuffled by group key; `Final`
//! merges them. `Complete` does both in one place (used for COUNT
//! DISTINCT, whose state is a set and not worth shipping).
//!
//! Groups are numbered in the order they are first seen, so the output
//! order depends only on the input order, never on a hash seed.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray,
    TimestampMillisecondArray,
};
use arrow::compute::cast;
use arrow::datatypes::{DataType as ArrowType, Float64Type, Int64Type, TimestampMillisecondType};
use arrow::row::{RowConverter, Rows};
use hashbrown::HashTable;
use serde::{Deserialize, Serialize};

use super::keys;
use crate::error::Result;
use crate::eval::evaluate;
use crate::exec_err;
use crate::expr::{AggExpr, AggFunc, Expr};
use crate::types::{DataType, Field, Schema};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AggMode {
    Partial,
    Final,
    Complete,
}

/// Whether every aggregate can be split into partial and final halves.
pub fn decomposable(aggs: &[(AggExpr, String)]) -> bool {
    aggs.iter().all(|(a, _)| a.func != AggFunc::CountDistinct)
}

/// The columns a partial aggregate emits: the group keys, then each
/// aggregate's state (AVG has two: sum and count).
pub fn partial_schema(
    input: &Schema,
    group: &[(Expr, String)],
    aggs: &[(AggExpr, String)],
) -> Result<Schema> {
    let mut fields = Vec::new();
    for (e, n) in group {
        fields.push(Field::new(n, e.data_type(input)?));
    }
    for (a, n) in aggs {
        for (i, t) in state_types(a, input)?.into_iter().enumerate() {
            fields.push(Field::new(format!("{n}#state{i}"), t));
        }
    }
    Ok(Schema::new(fields))
}

fn state_types(a: &AggExpr, input: &Schema) -> Result<Vec<DataType>> {
    Ok(match a.func {
        AggFunc::Avg => vec![DataType::Float64, DataType::Int64],
        AggFunc::CountDistinct => return Err(exec_err!("count(DISTINCT ..) has no partial state")),
        _ => vec![a.data_type(input)?],
    })
}

/// Aggregates `batches` (whose columns are `input`) in `mode`. In `Final`
/// mode the input is a partial schema and `group`/`aggs` are the original
/// expressions, used for names and types only.
pub fn aggregate(
    batches: &[RecordBatch],
    input: &Schema,
    mode: AggMode,
    group: &[(Expr, String)],
    aggs: &[(AggExpr, String)],
    original_input: &Schema,
) -> Result<RecordBatch> {
    let mut table = GroupTable::default();
    let mut accs: Vec<Box<dyn Accumulator>> = aggs
        .iter()
        .map(|(a, _)| new_acc(a, original_input))
        .collect::<Result<_>>()?;
    let g = group.len();
    for batch in batches {
        let key_cols: Vec<ArrayRef> = match mode {
            AggMode::Final => (0..g).map(|i| batch.column(i).clone()).collect(),
            _ => group
                .iter()
                .map(|(e, _)| evaluate(e, batch, input))
                .collect::<Result<_>>()?,
        };
        let ids = table.intern(&key_cols, batch.num_rows())?;
        let groups = table.len();
        let mut state_col = g;
        for ((a, _), acc) in aggs.iter().zip(accs.iter_mut()) {
            acc.resize(groups);
            match mode {
                AggMode::Final => {
                    let k = acc.state_width();
                    let states: Vec<ArrayRef> = (state_col..state_col + k)
                        .map(|i| batch.column(i).clone())
                        .collect();
                    state_col += k;
                    acc.merge(&ids, &states)?;
                }
                _ => {
                    let arg = match &a.arg {
                        Some(e) if a.func != AggFunc::CountStar => Some(evaluate(e, batch, input)?),
                        _ => None,
                    };
                    acc.update(&ids, arg.as_ref(), batch.num_rows())?;
                }
            }
        }
    }
    // A global aggregate has one row even over no input.
    if g == 0 && table.len() == 0 {
        table.single_empty_group();
    }
    let groups = table.len();
    let mut columns = table.finish(g, group, original_input)?;
    let mut fields: Vec<Field> = Vec::new();
    for (e, n) in group {
        fields.push(Field::new(n, e.data_type(original_input)?));
    }
    for ((a, n), acc) in aggs.iter().zip(accs.iter_mut()) {
        acc.resize(groups);
        match mode {
            AggMode::Partial => {
                let states = acc.state()?;
                for (i, s) in states.into_iter().enumerate() {
                    fields.push(Field::new(
                        format!("{n}#state{i}"),
                        DataType::from_arrow(s.data_type()).unwrap_or(DataType::Null),
                    ));
                    columns.push(s);
                }
            }
            _ => {
                let t = a.data_type(original_input)?;
                columns.push(cast(&acc.finish()?, &t.to_arrow())?);
                fields.push(Field::new(n, t));
            }
        }
    }
    let schema = Schema::new(fields).to_arrow();
    if columns.is_empty() {
        return Ok(RecordBatch::new_empty(schema));
    }
    Ok(RecordBatch::try_new(schema, columns)?)
}

/// Maps group keys to dense group ids in first-seen order.
///
/// A single BIGINT key or a single STRING key has a table of its own that
/// holds the key itself (a string of up to 16 bytes inside the entry), so
/// a lookup touches one entry and no encoded row; any other key list is
/// encoded in Arrow's row format. NULL is a group of its own in every
/// form (NULL keys group together).
#[derive(Default)]
struct GroupTable {
    keys: Keys,
    count: usize,
}

#[derive(Default)]
enum Keys {
    #[default]
    Unset,
    I64(I64Keys),
    Str(StrKeys),
    Rows(RowKeys),
}

#[derive(Default)]
struct I64Keys {
    index: HashTable<(i64, usize)>,
    keys: Vec<i64>,
    null_id: Option<usize>,
}

/// A string key's table entry: the hash, the group, the length and, for
/// short keys, the bytes themselves.
struct StrEntry {
    hash: u64,
    id: usize,
    len: usize,
    inline: [u64; 2],
}

#[derive(Default)]
struct StrKeys {
    index: HashTable<StrEntry>,
    /// Group `id`'s key is `data[offsets[id]..offsets[id + 1]]`.
    data: Vec<u8>,
    offsets: Vec<usize>,
    null_id: Option<usize>,
}

struct RowKeys {
    conv: RowConverter,
    rows: Rows,
    index: HashTable<(u64, usize)>,
}

impl GroupTable {
    fn len(&self) -> usize {
        self.count
    }

    fn single_empty_group(&mut self) {
        self.count = 1;
    }

    fn intern(&mut self, key_cols: &[ArrayRef], n: usize) -> Result<Vec<usize>> {
        if key_cols.is_empty() {
            self.count = 1;
            return Ok(vec![0; n]);
        }
        if matches!(self.keys, Keys::Unset) {
            self.keys = match (key_cols.len(), key_cols[0].data_type()) {
                (1, ArrowType::Int64) => Keys::I64(I64Keys::default()),
                (1, ArrowType::Utf8) => Keys::Str(StrKeys {
                    offsets: vec![0],
                    ..StrKeys::default()
                }),
                _ => {
                    let conv = keys::converter(key_cols)?;
                    Keys::Rows(RowKeys {
                        rows: conv.empty_rows(1024, 1024 * 16),
                        conv,
                        index: HashTable::new(),
                    })
                }
            };
        }
        let mut ids = Vec::with_capacity(n);
        let count = &mut self.count;
        match &mut self.keys {
            Keys::Unset => return Err(exec_err!("group table without keys")),
            Keys::I64(t) => {
                let col = cast(&key_cols[0], &ArrowType::Int64)?;
                let a = col.as_primitive::<Int64Type>();
                let values = a.values();
                for i in 0..n {
                    if a.is_null(i) {
                        let id = *t.null_id.get_or_insert_with(|| {
                            t.keys.push(0);
                            *count += 1;
                            *count - 1
                        });
                        ids.push(id);
                        continue;
                    }
                    let k = values[i];
                    let h = keys::hash_i64(k);
                    let id = match t.index.find(h, |&(kk, _)| kk == k) {
                        Some(&(_, id)) => id,
                        None => {
                            let id = *count;
                            t.index
                                .insert_unique(h, (k, id), |&(kk, _)| keys::hash_i64(kk));
                            t.keys.push(k);
                            *count += 1;
                            id
                        }
                    };
                    ids.push(id);
                }
            }
            Keys::Str(t) => {
                let col = cast(&key_cols[0], &ArrowType::Utf8)?;
                let a = col.as_string::<i32>();
                for i in 0..n {
                    if a.is_null(i) {
                        let id = *t.null_id.get_or_insert_with(|| {
                            t.offsets.push(t.data.len());
                            *count += 1;
                            *count - 1
                        });
                        ids.push(id);
                        continue;
                    }
                    let bytes = a.value(i).as_bytes();
                    let len = bytes.len();
                    let inline = keys::inline_key(bytes);
                    let h = keys::hash_str(bytes, inline);
                    let (data, offsets) = (&t.data, &t.offsets);
                    let found = t.index.find(h, |e| {
                        e.hash == h
                            && e.len == len
                            && e.inline == inline
                            && (len <= keys::INLINE
                                || &data[offsets[e.id]..offsets[e.id + 1]] == bytes)
                    });
                    let id = match found {
                        Some(e) => e.id,
                        None => {
                            let id = *count;
                            t.data.extend_from_slice(bytes);
                            t.offsets.push(t.data.len());
                            t.index.insert_unique(
                                h,
                                StrEntry {
                                    hash: h,
                                    id,
                                    len,
                                    inline,
                                },
                                |e| e.hash,
                            );
                            *count += 1;
                            id
                        }
                    };
                    ids.push(id);
                }
            }
            Keys::Rows(t) => {
                let batch_rows = keys::encode(&t.conv, key_cols)?;
                for i in 0..n {
                    let row = batch_rows.row(i);
                    let bytes = row.as_ref();
                    let h = keys::hash_bytes(bytes);
                    let stored = &t.rows;
                    let found = t
                        .index
                        .find(h, |&(hh, id)| hh == h && stored.row(id).as_ref() == bytes);
                    let id = match found {
                        Some(&(_, id)) => id,
                        None => {
                            let id = *count;
                            t.rows.push(row);
                            t.index.insert_unique(h, (h, id), |&(hh, _)| hh);
                            *count += 1;
                            id
                        }
                    };
                    ids.push(id);
                }
            }
        }
        Ok(ids)
    }

    /// The key columns, one row per group in id order.
    fn finish(
        &mut self,
        g: usize,
        group: &[(Expr, String)],
        input: &Schema,
    ) -> Result<Vec<ArrayRef>> {
        if g == 0 {
            return Ok(Vec::new());
        }
        match std::mem::take(&mut self.keys) {
            Keys::I64(t) => {
                let keys = t.keys;
                Ok(vec![match t.null_id {
                    None => Arc::new(Int64Array::from(keys)) as ArrayRef,
                    Some(n) => Arc::new(
                        keys.iter()
                            .enumerate()
                            .map(|(i, k)| (i != n).then_some(*k))
                            .collect::<Int64Array>(),
                    ),
                }])
            }
            Keys::Str(t) => {
                let mut b = arrow::array::StringBuilder::with_capacity(
                    t.offsets.len().saturating_sub(1),
                    t.data.len(),
                );
                for id in 0..t.offsets.len() - 1 {
                    if Some(id) == t.null_id {
                        b.append_null();
                    } else {
                        let s = std::str::from_utf8(&t.data[t.offsets[id]..t.offsets[id + 1]])
                            .map_err(|e| exec_err!("a group key is not UTF-8: {e}"))?;
                        b.append_value(s);
                    }
                }
                Ok(vec![Arc::new(b.finish())])
            }
            Keys::Rows(t) => Ok(t.conv.convert_rows(t.rows.iter())?),
            Keys::Unset => group
                .iter()
                .map(|(e, _)| {
                    Ok(arrow::array::new_empty_array(
                        &e.data_type(input)?.to_arrow(),
                    ))
                })
                .collect(),
        }
    }
}

/// One aggregate's per-group state.
trait Accumulator {
    fn resize(&mut self, groups: usize);
    /// Folds raw input values (`None` for count(*)).
    fn update(&mut self, ids: &[usize], arg: Option<&ArrayRef>, rows: usize) -> Result<()>;
    fn state_width(&self) -> usize {
        1
    }
    /// Folds partial states.
    fn merge(&mut self, ids: &[usize], states: &[ArrayRef]) -> Result<()>;
    fn state(&mut self) -> Result<Vec<ArrayRef>>;
    fn finish(&mut self) -> Result<ArrayRef>;
}

fn new_acc(a: &AggExpr, input: &Schema) -> Result<Box<dyn Accumulator>> {
    let arg_type = match &a.arg {
        Some(e) => e.data_type(input)?,
        None => DataType::Null,
    };
    Ok(match a.func {
        AggFunc::CountStar => Box::new(Count {
            counts: Vec::new(),
            star: true,
        }),
        AggFunc::Count => Box::new(Count {
            counts: Vec::new(),
            star: false,
        }),
        AggFunc::CountDistinct => Box::new(Distinct { sets: Vec::new() }),
        AggFunc::Sum if arg_type == DataType::Float64 => Box::new(SumF {
            sums: Vec::new(),
            seen: Vec::new(),
        }),
        AggFunc::Sum => Box::new(SumI {
            sums: Vec::new(),
            seen: Vec::new(),
        }),
        AggFunc::Avg => Box::new(Avg {
            sums: Vec::new(),
            counts: Vec::new(),
        }),
        AggFunc::Min | AggFunc::Max => Box::new(MinMax {
            max: a.func == AggFunc::Max,
            t: arg_type,
            vals: Vec::new(),
        }),
    })
}

struct Count {
    counts: Vec<i64>,
    star: bool,
}

impl Accumulator for Count {
    fn resize(&mut self, groups: usize) {
        self.counts.resize(groups, 0);
    }
    fn update(&mut self, ids: &[usize], arg: Option<&ArrayRef>, _rows: usize) -> Result<()> {
        match (self.star, arg) {
            (false, Some(a)) if a.null_count() > 0 => {
                for (i, &id) in ids.iter().enumerate() {
                    if a.is_valid(i) {
                        self.counts[id] += 1;
                    }
                }
            }
            _ => {
                for &id in ids {
                    self.counts[id] += 1;
                }
            }
        }
        Ok(())
    }
    fn merge(&mut self, ids: &[usize], states: &[ArrayRef]) -> Result<()> {
        let s = states[0].as_primitive::<Int64Type>();
        for (i, &id) in ids.iter().enumerate() {
            self.counts[id] += s.value(i);
        }
        Ok(())
    }
    fn state(&mut self) -> Result<Vec<ArrayRef>> {
        Ok(vec![self.finish()?])
    }
    fn finish(&mut self) -> Result<ArrayRef> {
        Ok(Arc::new(Int64Array::from(std::mem::take(&mut self.counts))))
    }
}

struct SumI {
    sums: Vec<i64>,
    seen: Vec<bool>,
}

impl SumI {
    fn add(&mut self, ids: &[usize], a: &ArrayRef) -> Result<()> {
        let a = cast(a, &ArrowType::Int64)?;
        let a = a.as_primitive::<Int64Type>();
        for (i, &id) in ids.iter().enumerate() {
            if a.is_valid(i) {
                self.sums[id] = self.sums[id].wrapping_add(a.value(i));
                self.seen[id] = true;
            }
        }
        Ok(())
    }
}

impl Accumulator for SumI {
    fn resize(&mut self, groups: usize) {
        self.sums.resize(groups, 0);
        self.seen.resize(groups, false);
    }
    fn update(&mut self, ids: &[usize], arg: Option<&ArrayRef>, _rows: usize) -> Result<()> {
        arg.map_or(Ok(()), |a| self.add(ids, a))
    }
    fn merge(&mut self, ids: &[usize], states: &[ArrayRef]) -> Result<()> {
        self.add(ids, &states[0])
    }
    fn state(&mut self) -> Result<Vec<ArrayRef>> {
        Ok(vec![self.finish()?])
    }
    fn finish(&mut self) -> Result<ArrayRef> {
        Ok(Arc::new(
            self.sums
                .iter()
                .zip(&self.seen)
                .map(|(s, &seen)| seen.then_some(*s))
                .collect::<Int64Array>(),
        ))
    }
}

struct SumF {
    sums: Vec<f64>,
    seen: Vec<bool>,
}

impl SumF {
    fn add(&mut self, ids: &[usize], a: &ArrayRef) -> Result<()> {
        let a = cast(a, &ArrowType::Float64)?;
        let a = a.as_primitive::<Float64Type>();
        for (i, &id) in ids.iter().enumerate() {
            if a.is_valid(i) {
                self.sums[id] += a.value(i);
                self.seen[id] = true;
            }
        }
        Ok(())
    }
}

impl Accumulator for SumF {
    fn resize(&mut self, groups: usize) {
        self.sums.resize(groups, 0.0);
        self.seen.resize(groups, false);
    }
    fn update(&mut self, ids: &[usize], arg: Option<&ArrayRef>, _rows: usize) -> Result<()> {
        arg.map_or(Ok(()), |a| self.add(ids, a))
    }
    fn merge(&mut self, ids: &[usize], states: &[ArrayRef]) -> Result<()> {
        self.add(ids, &states[0])
    }
    fn state(&mut self) -> Result<Vec<ArrayRef>> {
        Ok(vec![self.finish()?])
    }
    fn finish(&mut self) -> Result<ArrayRef> {
        Ok(Arc::new(
            self.sums
                .iter()
                .zip(&self.seen)
                .map(|(s, &seen)| seen.then_some(*s))
                .collect::<Float64Array>(),
        ))
    }
}

struct Avg {
    sums: Vec<f64>,
    counts: Vec<i64>,
}

impl Accumulator for Avg {
    fn resize(&mut self, groups: usize) {
        self.sums.resize(groups, 0.0);
        self.counts.resize(groups, 0);
    }
    fn update(&mut self, ids: &[usize], arg: Option<&ArrayRef>, _rows: usize) -> Result<()> {
        let Some(a) = arg else { return Ok(()) };
        let a = cast(a, &ArrowType::Float64)?;
        let a = a.as_primitive::<Float64Type>();
        for (i, &id) in ids.iter().enumerate() {
            if a.is_valid(i) {
                self.sums[id] += a.value(i);
                self.counts[id] += 1;
            }
        }
        Ok(())
    }
    fn state_width(&self) -> usize {
        2
    }
    fn merge(&mut self, ids: &[usize], states: &[ArrayRef]) -> Result<()> {
        let (s, c) = (
            states[0].as_primitive::<Float64Type>(),
            states[1].as_primitive::<Int64Type>(),
        );
        for (i, &id) in ids.iter().enumerate() {
            if s.is_valid(i) {
                self.sums[id] += s.value(i);
            }
            self.counts[id] += c.value(i);
        }
        Ok(())
    }
    fn state(&mut self) -> Result<Vec<ArrayRef>> {
        Ok(vec![
            Arc::new(Float64Array::from(std::mem::take(&mut self.sums))),
            Arc::new(Int64Array::from(std::mem::take(&mut self.counts))),
        ])
    }
    fn finish(&mut self) -> Result<ArrayRef> {
        Ok(Arc::new(
            self.sums
                .iter()
                .zip(&self.counts)
                .map(|(s, &n)| (n > 0).then(|| s / n as f64))
                .collect::<Float64Array>(),
        ))
    }
}

/// MIN/MAX over any engine type; floats compare by `total_cmp` (NaN above
/// every number, as Spark orders it).
struct MinMax {
    max: bool,
    t: DataType,
    vals: Vec<Option<Scalar>>,
}

#[derive(Clone, PartialEq, PartialOrd)]
enum Scalar {
    B(bool),
    I(i64),
    F(TotalF64),
    S(String),
}

#[derive(Clone, Copy, PartialEq)]
struct TotalF64(f64);
impl PartialOrd for TotalF64 {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.0.total_cmp(&other.0))
    }
}

impl MinMax {
    fn fold(&mut self, ids: &[usize], a: &ArrayRef) -> Result<()> {
        let a = cast(a, &self.t.to_arrow())?;
        for (i, &id) in ids.iter().enumerate() {
            if a.is_null(i) {
                continue;
            }
            let v = match self.t {
                DataType::Boolean => Scalar::B(a.as_boolean().value(i)),
                DataType::Int64 => Scalar::I(a.as_primitive::<Int64Type>().value(i)),
                DataType::Timestamp => {
                    Scalar::I(a.as_primitive::<TimestampMillisecondType>().value(i))
                }
                DataType::Float64 => Scalar::F(TotalF64(a.as_primitive::<Float64Type>().value(i))),
                DataType::Utf8 => {
                    let s = a.as_string::<i32>().value(i);
                    // Avoid an allocation when the value does not win.
                    if let Some(Scalar::S(cur)) = &self.vals[id]
                        && ((self.max && s <= cur.as_str()) || (!self.max && s >= cur.as_str()))
                    {
                        continue;
                    }
                    Scalar::S(s.to_string())
                }
                DataType::Null => continue,
            };
            let better = match &self.vals[id] {
                None => true,
                Some(cur) => {
                    if self.max {
                        v > *cur
                    } else {
                        v < *cur
                    }
                }
            };
            if better {
                self.vals[id] = Some(v);
            }
        }
        Ok(())
    }
}

impl Accumulator for MinMax {
    fn resize(&mut self, groups: usize) {
        self.vals.resize(groups, None);
    }
    fn update(&mut self, ids: &[usize], arg: Option<&ArrayRef>, _rows: usize) -> Result<()> {
        arg.map_or(Ok(()), |a| self.fold(ids, a))
    }
    fn merge(&mut self, ids: &[usize], states: &[ArrayRef]) -> Result<()> {
        self.fold(ids, &states[0])
    }
    fn state(&mut self) -> Result<Vec<ArrayRef>> {
        Ok(vec![self.finish()?])
    }
    fn finish(&mut self) -> Result<ArrayRef> {
        let vals = std::mem::take(&mut self.vals);
        Ok(match self.t {
            DataType::Boolean => Arc::new(
                vals.iter()
                    .map(|v| {
                        if let Some(Scalar::B(b)) = v {
                            Some(*b)
                        } else {
                            None
                        }
                    })
                    .collect::<BooleanArray>(),
            ),
            DataType::Int64 => Arc::new(
                vals.iter()
                    .map(|v| {
                        if let Some(Scalar::I(x)) = v {
                            Some(*x)
                        } else {
                            None
                        }
                    })
                    .collect::<Int64Array>(),
            ),
            DataType::Timestamp => Arc::new(
                vals.iter()
                    .map(|v| {
                        if let Some(Scalar::I(x)) = v {
                            Some(*x)
                        } else {
                            None
                        }
                    })
                    .collect::<TimestampMillisecondArray>(),
            ),
            DataType::Float64 => Arc::new(
                vals.iter()
                    .map(|v| {
                        if let Some(Scalar::F(x)) = v {
                            Some(x.0)
                        } else {
                            None
                        }
                    })
                    .collect::<Float64Array>(),
            ),
            DataType::Utf8 => Arc::new(
                vals.iter()
                    .map(|v| {
                        if let Some(Scalar::S(s)) = v {
                            Some(s.as_str())
                        } else {
                            None
                        }
                    })
                    .collect::<StringArray>(),
            ),
            DataType::Null => arrow::array::new_null_array(&ArrowType::Null, vals.len()),
        })
    }
}

/// COUNT(DISTINCT x): the set of row-encoded values per group.
struct Distinct {
    sets: Vec<hashbrown::HashSet<Vec<u8>, std::hash::BuildHasherDefault<rustc_hash::FxHasher>>>,
}

impl Accumulator for Distinct {
    fn resize(&mut self, groups: usize) {
        self.sets.resize_with(groups, Default::default);
    }
    fn update(&mut self, ids: &[usize], arg: Option<&ArrayRef>, _rows: usize) -> Result<()> {
        let Some(a) = arg else { return Ok(()) };
        let conv = keys::converter(std::slice::from_ref(a))?;
        let rows = keys::encode(&conv, std::slice::from_ref(a))?;
        for (i, &id) in ids.iter().enumerate() {
            if a.is_valid(i) {
                self.sets[id].insert(rows.row(i).as_ref().to_vec());
            }
        }
        Ok(())
    }
    fn merge(&mut self, _ids: &[usize], _states: &[ArrayRef]) -> Result<()> {
        Err(exec_err!("count(DISTINCT ..) cannot merge partial states"))
    }
    fn state(&mut self) -> Result<Vec<ArrayRef>> {
        Err(exec_err!("count(DISTINCT ..) has no partial state"))
    }
    fn finish(&mut self) -> Result<ArrayRef> {
        Ok(Arc::new(
            self.sets
                .iter()
                .map(|s| s.len() as i64)
                .collect::<Int64Array>(),
        ))
    }
}
