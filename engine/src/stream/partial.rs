//! Aggregates as partial states that merge across micro-batches. A batch's
//! job computes, per group, values that are themselves mergeable (count,
//! sum, min, max; avg as sum and count); the state merges them batch after
//! batch, and the final value is computed only when a group is emitted.
//! That is the executor's own partial/final split (`ops/aggregate.rs`),
//! with the micro-batch boundary in place of the shuffle.

use std::cmp::Ordering;

use crate::expr::{AggExpr, AggFunc, Expr, col};
use crate::reference::compare;
use crate::types::{DataType, Value};

/// How many partial columns an aggregate has.
pub fn width(func: AggFunc) -> usize {
    if func == AggFunc::Avg { 2 } else { 1 }
}

/// The batch job's aggregates for `aggs`: each one's partial columns,
/// named `__p{i}_{j}`.
pub fn partial_aggs(aggs: &[(AggExpr, String)]) -> Vec<(AggExpr, String)> {
    let mut out = Vec::new();
    for (i, (a, _)) in aggs.iter().enumerate() {
        let arg = a.arg.clone();
        let one = |func: AggFunc, arg: Option<Expr>| AggExpr { func, arg };
        match a.func {
            AggFunc::Avg => {
                let x = arg.unwrap_or_else(|| col("__missing"));
                out.push((
                    one(AggFunc::Sum, Some(x.clone().cast(DataType::Float64))),
                    format!("__p{i}_0"),
                ));
                out.push((one(AggFunc::Count, Some(x)), format!("__p{i}_1")));
            }
            f => out.push((one(f, arg), format!("__p{i}_0"))),
        }
    }
    out
}

/// Adds two sums: NULL is "no values yet"; integers wrap, as SUM does.
fn add(a: &Value, b: &Value) -> Value {
    match (a, b) {
        (Value::Null, x) | (x, Value::Null) => x.clone(),
        (Value::Int(x), Value::Int(y)) => Value::Int(x.wrapping_add(*y)),
        (Value::Float(x), Value::Float(y)) => Value::Float(x + y),
        (Value::Int(x), Value::Float(y)) | (Value::Float(y), Value::Int(x)) => {
            Value::Float(*x as f64 + y)
        }
        (x, _) => x.clone(),
    }
}

fn pick(a: &Value, b: &Value, want: Ordering) -> Value {
    match (a, b) {
        (Value::Null, x) | (x, Value::Null) => x.clone(),
        (x, y) => {
            if compare(y, x) == Some(want) {
                y.clone()
            } else {
                x.clone()
            }
        }
    }
}

/// Merges partial columns `more` into `into` (both this aggregate's).
pub fn merge(func: AggFunc, into: &mut [Value], more: &[Value]) {
    match func {
        AggFunc::CountStar | AggFunc::Count | AggFunc::CountDistinct | AggFunc::Sum => {
            into[0] = add(&into[0], &more[0])
        }
        AggFunc::Min => into[0] = pick(&into[0], &more[0], Ordering::Less),
        AggFunc::Max => into[0] = pick(&into[0], &more[0], Ordering::Greater),
        AggFunc::Avg => {
            into[0] = add(&into[0], &more[0]);
            into[1] = add(&into[1], &more[1]);
        }
    }
}

/// The aggregate's value from its merged partial columns.
pub fn finish(func: AggFunc, state: &[Value]) -> Value {
    match func {
        AggFunc::Avg => match (&state[0], &state[1]) {
            (Value::Float(s), Value::Int(n)) if *n > 0 => Value::Float(s / *n as f64),
            _ => Value::Null,
        },
        _ => state[0].clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partials_merge_like_the_whole() {
        let mut s = vec![Value::Null];
        merge(AggFunc::Min, &mut s, &[Value::Int(3)]);
        merge(AggFunc::Min, &mut s, &[Value::Null]);
        merge(AggFunc::Min, &mut s, &[Value::Int(-1)]);
        assert_eq!(s, vec![Value::Int(-1)]);
        let mut a = vec![Value::Float(1.0), Value::Int(1)];
        merge(AggFunc::Avg, &mut a, &[Value::Float(5.0), Value::Int(3)]);
        assert_eq!(finish(AggFunc::Avg, &a), Value::Float(1.5));
        assert_eq!(
            finish(AggFunc::Avg, &[Value::Null, Value::Int(0)]),
            Value::Null
        );
        let mut c = vec![Value::Int(i64::MAX)];
        merge(AggFunc::Sum, &mut c, &[Value::Int(1)]);
        assert_eq!(c, vec![Value::Int(i64::MIN)]);
    }
}
