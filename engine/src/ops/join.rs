//! Hash join: the right side is built into a table keyed by its join keys,
//! the left side probes it in order. Rows with a NULL key never match. An
//! extra ON condition is applied to candidate pairs before a row counts as
//! matched, so outer joins pad exactly the rows it rejected everywhere.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, UInt32Array};
use arrow::datatypes::{DataType as ArrowType, Int64Type};
use arrow::compute::{cast, concat_batches, take};
use hashbrown::HashTable;

use super::keys;
use crate::error::Result;
use crate::eval::{evaluate, true_only};
use crate::expr::Expr;
use crate::plan::JoinKind;
use crate::types::Schema;

const NONE: u32 = u32::MAX;

pub struct JoinSpec<'a> {
    pub kind: JoinKind,
    pub on: &'a [(Expr, Expr)],
    pub filter: Option<&'a Expr>,
    pub left_schema: &'a Schema,
    pub right_schema: &'a Schema,
}

pub fn hash_join(
    left: &[RecordBatch],
    right: &[RecordBatch],
    spec: &JoinSpec,
) -> Result<RecordBatch> {
    let l = concat_batches(&spec.left_schema.to_arrow(), left)?;
    let r = concat_batches(&spec.right_schema.to_arrow(), right)?;
    let joined_schema = Schema::new(
        spec.left_schema
            .fields
            .iter()
            .chain(&spec.right_schema.fields)
            .cloned()
            .collect(),
    );
    let lkeys: Vec<ArrayRef> = spec
        .on
        .iter()
        .map(|(e, _)| evaluate(e, &l, spec.left_schema))
        .collect::<Result<_>>()?;
    let rkeys: Vec<ArrayRef> = spec
        .on
        .iter()
        .map(|(_, e)| evaluate(e, &r, spec.right_schema))
        .collect::<Result<_>>()?;
    // Both sides must encode keys identically; the planner cast them to one
    // type, and a NULL literal side is cast here.
    let rkeys: Vec<ArrayRef> = rkeys
        .iter()
        .zip(&lkeys)
        .map(|(rk, lk)| {
            Ok(if rk.data_type() == lk.data_type() {
                rk.clone()
            } else {
                cast(rk, lk.data_type())?
            })
        })
        .collect::<Result<_>>()?;

    let mut li: Vec<u32> = Vec::new();
    let mut ri: Vec<u32> = Vec::new();
    if l.num_rows() > 0 && r.num_rows() > 0 {
        if lkeys.len() == 1
            && lkeys[0].data_type() == &ArrowType::Int64
            && rkeys[0].data_type() == &ArrowType::Int64
        {
            match_i64(&lkeys[0], &rkeys[0], &mut li, &mut ri);
        } else {
            match_rows(&lkeys, &rkeys, &mut li, &mut ri)?;
        }
    }

    let (li, ri) = match spec.filter {
        Some(f) if !li.is_empty() => {
            let cand = gather(
                &l,
                &r,
                &li.iter().map(|&x| Some(x)).collect::<Vec<_>>(),
                &ri.iter().map(|&x| Some(x)).collect::<Vec<_>>(),
                &joined_schema,
            )?;
            let keep = true_only(evaluate(f, &cand, &joined_schema)?.as_boolean());
            let pairs: Vec<(u32, u32)> = li
                .iter()
                .zip(&ri)
                .zip(keep.values().iter())
                .filter(|(_, k)| *k)
                .map(|((a, b), _)| (*a, *b))
                .collect();
            pairs.into_iter().unzip()
        }
        _ => (li, ri),
    };

    let mut lo: Vec<Option<u32>> = li.iter().map(|&x| Some(x)).collect();
    let mut ro: Vec<Option<u32>> = ri.iter().map(|&x| Some(x)).collect();
    if matches!(spec.kind, JoinKind::Left | JoinKind::Full) {
        // Left rows without a match, in place: rebuild in left order.
        let mut matched = vec![false; l.num_rows()];
        for &x in &li {
            matched[x as usize] = true;
        }
        let (mut nl, mut nr) = (Vec::with_capacity(lo.len()), Vec::with_capacity(ro.len()));
        let mut k = 0;
        for (i, m) in matched.iter().enumerate() {
            if *m {
                while k < li.len() && li[k] as usize == i {
                    nl.push(Some(li[k]));
                    nr.push(Some(ri[k]));
                    k += 1;
                }
            } else {
                nl.push(Some(i as u32));
                nr.push(None);
            }
        }
        lo = nl;
        ro = nr;
    }
    if matches!(spec.kind, JoinKind::Right | JoinKind::Full) {
        let mut matched = vec![false; r.num_rows()];
        for &x in &ri {
            matched[x as usize] = true;
        }
        for (j, m) in matched.iter().enumerate() {
            if !m {
                lo.push(None);
                ro.push(Some(j as u32));
            }
        }
    }
    gather(&l, &r, &lo, &ro, &joined_schema)
}

/// Matching pairs (left row, right row) for any key columns, encoded in
/// Arrow's row format: left rows in order, each one's matches in right
/// order.
fn match_rows(
    lkeys: &[ArrayRef],
    rkeys: &[ArrayRef],
    li: &mut Vec<u32>,
    ri: &mut Vec<u32>,
) -> Result<()> {
    let rows = rkeys.first().map_or(0, |k| k.len());
    let lrows_n = lkeys.first().map_or(0, |k| k.len());
    let conv = keys::converter(lkeys)?;
    let lrows = keys::encode(&conv, lkeys)?;
    let rrows = keys::encode(&conv, rkeys)?;
    // Build: heads of chains of equal keys; `next` links the rest in
    // row order so matches come out in the build side's order.
    let mut table: HashTable<(u64, u32, u32)> = HashTable::new(); // (hash, first, last)
    let mut next = vec![NONE; rows];
    for i in 0..rows {
        if keys::any_null(rkeys, i) {
            continue;
        }
        let bytes = rrows.row(i);
        let h = keys::hash_bytes(bytes.as_ref());
        match table.find_mut(h, |&(hh, first, _)| {
            hh == h && rrows.row(first as usize) == bytes
        }) {
            Some(entry) => {
                next[entry.2 as usize] = i as u32;
                entry.2 = i as u32;
            }
            None => {
                table.insert_unique(h, (h, i as u32, i as u32), |&(hh, _, _)| hh);
            }
        }
    }
    for i in 0..lrows_n {
        if keys::any_null(lkeys, i) {
            continue;
        }
        let bytes = lrows.row(i);
        let h = keys::hash_bytes(bytes.as_ref());
        if let Some(&(_, first, _)) = table.find(h, |&(hh, first, _)| {
            hh == h && rrows.row(first as usize) == bytes
        }) {
            let mut j = first;
            while j != NONE {
                li.push(i as u32);
                ri.push(j);
                j = next[j as usize];
            }
        }
    }
    Ok(())
}

/// [`match_rows`] for one BIGINT key on both sides: the table holds the
/// key itself, so a probe reads one entry and no encoded row.
fn match_i64(lkey: &ArrayRef, rkey: &ArrayRef, li: &mut Vec<u32>, ri: &mut Vec<u32>) {
    let (lk, rk) = (lkey.as_primitive::<Int64Type>(), rkey.as_primitive::<Int64Type>());
    let mut table: HashTable<(i64, u32, u32)> = HashTable::with_capacity(rk.len()); // (key, first, last)
    let mut next = vec![NONE; rk.len()];
    for i in 0..rk.len() {
        if rk.is_null(i) {
            continue;
        }
        let k = rk.value(i);
        let h = keys::hash_i64(k);
        match table.find_mut(h, |e| e.0 == k) {
            Some(entry) => {
                next[entry.2 as usize] = i as u32;
                entry.2 = i as u32;
            }
            None => {
                table.insert_unique(h, (k, i as u32, i as u32), |e| keys::hash_i64(e.0));
            }
        }
    }
    for i in 0..lk.len() {
        if lk.is_null(i) {
            continue;
        }
        let k = lk.value(i);
        if let Some(&(_, first, _)) = table.find(keys::hash_i64(k), |e| e.0 == k) {
            let mut j = first;
            while j != NONE {
                li.push(i as u32);
                ri.push(j);
                j = next[j as usize];
            }
        }
    }
}

fn gather(
    l: &RecordBatch,
    r: &RecordBatch,
    li: &[Option<u32>],
    ri: &[Option<u32>],
    schema: &Schema,
) -> Result<RecordBatch> {
    let li = UInt32Array::from(li.to_vec());
    let ri = UInt32Array::from(ri.to_vec());
    let mut cols: Vec<ArrayRef> = Vec::with_capacity(l.num_columns() + r.num_columns());
    for c in l.columns() {
        cols.push(take(c.as_ref(), &li, None)?);
    }
    for c in r.columns() {
        cols.push(take(c.as_ref(), &ri, None)?);
    }
    let schema = schema.to_arrow();
    if cols.is_empty() {
        return Ok(RecordBatch::new_empty(schema));
    }
    Ok(RecordBatch::try_new(Arc::clone(&schema), cols)?)
}
