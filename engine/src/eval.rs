//! Vectorised evaluation of [`Expr`] over a record batch with Arrow's
//! kernels. The semantics (NULL handling, coercions, division by zero)
//! match `reference::eval_row` exactly; the property tests hold them
//! together.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float64Array, Int64Array, RecordBatch, Scalar,
    StringArray, UInt32Array, new_null_array,
};
use arrow::compute::kernels::boolean::{and_kleene, is_not_null, is_null, not, or_kleene};
use arrow::compute::kernels::cmp;
use arrow::compute::kernels::comparison::{ilike, like, nilike, nlike};
use arrow::compute::kernels::numeric;
use arrow::compute::kernels::zip::zip;
use arrow::compute::{cast, nullif, take};
use arrow::datatypes::{Float64Type, Int64Type};

use crate::error::Result;
use crate::exec_err;
use crate::expr::{BinaryOp, Expr, ScalarFunc};
use crate::types::{DataType, Schema, Value};
use crate::value::values_to_array;

/// The value of `expr` for every row of `batch`, whose columns are `schema`.
pub fn evaluate(expr: &Expr, batch: &RecordBatch, schema: &Schema) -> Result<ArrayRef> {
    let v = eval(expr, batch, schema)?;
    expand(v, batch.num_rows())
}

/// A column, or one value standing for every row (kept small so a
/// comparison with a literal does not build a column of copies).
enum Col {
    Array(ArrayRef),
    Scalar(ArrayRef),
}

impl Col {
    fn array(&self) -> &ArrayRef {
        match self {
            Col::Array(a) | Col::Scalar(a) => a,
        }
    }
    fn map(self, f: impl FnOnce(&ArrayRef) -> Result<ArrayRef>) -> Result<Col> {
        Ok(match self {
            Col::Array(a) => Col::Array(f(&a)?),
            Col::Scalar(a) => Col::Scalar(f(&a)?),
        })
    }
}

fn expand(c: Col, rows: usize) -> Result<ArrayRef> {
    match c {
        Col::Array(a) => Ok(a),
        Col::Scalar(a) => {
            if a.is_null(0) {
                return Ok(new_null_array(a.data_type(), rows));
            }
            Ok(take(
                a.as_ref(),
                &UInt32Array::from(vec![0u32; rows]),
                None,
            )?)
        }
    }
}

fn datum(c: &Col) -> Box<dyn arrow::array::Datum + '_> {
    match c {
        Col::Array(a) => Box::new(a.as_ref() as &dyn Array),
        Col::Scalar(a) => Box::new(Scalar::new(a.clone())),
    }
}

/// Applies a two-operand kernel, broadcasting scalars; the result is a
/// scalar only when both sides are.
fn binary(
    l: &Col,
    r: &Col,
    f: impl Fn(&dyn arrow::array::Datum, &dyn arrow::array::Datum) -> Result<ArrayRef>,
) -> Result<Col> {
    let out = f(datum(l).as_ref(), datum(r).as_ref())?;
    Ok(match (l, r) {
        (Col::Scalar(_), Col::Scalar(_)) => Col::Scalar(out),
        _ => Col::Array(out),
    })
}

fn to_type(c: Col, t: DataType) -> Result<Col> {
    let target = t.to_arrow();
    if c.array().data_type() == &target {
        return Ok(c);
    }
    c.map(|a| Ok(cast(a, &target)?))
}

fn eval(expr: &Expr, batch: &RecordBatch, schema: &Schema) -> Result<Col> {
    let rows = batch.num_rows();
    Ok(match expr {
        Expr::Column(name) => Col::Array(batch.column(schema.index_of(name)?).clone()),
        Expr::Literal(v) => Col::Scalar(values_to_array(v.data_type(), std::iter::once(v))?),
        Expr::Binary { op, left, right } => {
            let (lt, rt) = (left.data_type(schema)?, right.data_type(schema)?);
            let (l, r) = (eval(left, batch, schema)?, eval(right, batch, schema)?);
            binary_op(*op, l, lt, r, rt, rows)?
        }
        Expr::Not(e) => {
            let c = to_type(eval(e, batch, schema)?, DataType::Boolean)?;
            c.map(|a| Ok(Arc::new(not(a.as_boolean())?)))?
        }
        Expr::Negate(e) => {
            let t = expr.data_type(schema)?;
            let c = to_type(eval(e, batch, schema)?, t)?;
            c.map(|a| Ok(numeric::neg_wrapping(a)?))?
        }
        Expr::IsNull(e) => eval(e, batch, schema)?.map(|a| Ok(Arc::new(is_null(a)?)))?,
        Expr::IsNotNull(e) => eval(e, batch, schema)?.map(|a| Ok(Arc::new(is_not_null(a)?)))?,
        Expr::Cast { expr: e, to } => to_type(eval(e, batch, schema)?, *to)?,
        Expr::Like {
            expr: e,
            pattern,
            negated,
            case_insensitive,
        } => {
            let c = to_type(eval(e, batch, schema)?, DataType::Utf8)?;
            let p = Col::Scalar(Arc::new(StringArray::from(vec![pattern.as_str()])));
            binary(&c, &p, |l, r| {
                Ok(Arc::new(match (negated, case_insensitive) {
                    (false, false) => like(l, r)?,
                    (true, false) => nlike(l, r)?,
                    (false, true) => ilike(l, r)?,
                    (true, true) => nilike(l, r)?,
                }))
            })?
        }
        Expr::InList {
            expr: e,
            list,
            negated,
        } => {
            let t = e.data_type(schema)?;
            let mut acc: Option<ArrayRef> = None;
            for item in list {
                let it = item.data_type(schema)?;
                let c = DataType::common(t, it).unwrap_or(t);
                let l = to_type(eval(e, batch, schema)?, c)?;
                let r = to_type(eval(item, batch, schema)?, c)?;
                let eq = expand(binary(&l, &r, |a, b| Ok(Arc::new(cmp::eq(a, b)?)))?, rows)?;
                acc = Some(match acc {
                    None => eq,
                    Some(a) => Arc::new(or_kleene(a.as_boolean(), eq.as_boolean())?),
                });
            }
            let a = acc.unwrap_or_else(|| Arc::new(BooleanArray::from(vec![false; rows])));
            Col::Array(if *negated {
                Arc::new(not(a.as_boolean())?)
            } else {
                a
            })
        }
        Expr::Case {
            operand,
            branches,
            otherwise,
        } => {
            let t = expr.data_type(schema)?;
            let mut result = match otherwise {
                Some(o) => expand(to_type(eval(o, batch, schema)?, t)?, rows)?,
                None => new_null_array(&t.to_arrow(), rows),
            };
            for (when, then) in branches.iter().rev() {
                let cond = match operand {
                    Some(o) => {
                        let c = DataType::common(o.data_type(schema)?, when.data_type(schema)?)
                            .unwrap_or(DataType::Null);
                        let l = to_type(eval(o, batch, schema)?, c)?;
                        let r = to_type(eval(when, batch, schema)?, c)?;
                        expand(binary(&l, &r, |a, b| Ok(Arc::new(cmp::eq(a, b)?)))?, rows)?
                    }
                    None => expand(
                        to_type(eval(when, batch, schema)?, DataType::Boolean)?,
                        rows,
                    )?,
                };
                let cond = true_only(cond.as_boolean());
                let then = expand(to_type(eval(then, batch, schema)?, t)?, rows)?;
                result = zip(&cond, &then, &result)?;
            }
            Col::Array(result)
        }
        Expr::Function { func, args } => {
            let t = expr.data_type(schema)?;
            let cols = args
                .iter()
                .map(|a| evaluate(a, batch, schema))
                .collect::<Result<Vec<_>>>()?;
            Col::Array(function(*func, &cols, t, rows)?)
        }
    })
}

/// NULL conditions count as false (CASE, filters).
pub fn true_only(b: &BooleanArray) -> BooleanArray {
    if b.null_count() == 0 {
        return b.clone();
    }
    b.iter().map(|v| Some(v == Some(true))).collect()
}

fn binary_op(op: BinaryOp, l: Col, lt: DataType, r: Col, rt: DataType, rows: usize) -> Result<Col> {
    use BinaryOp::*;
    match op {
        And | Or => {
            let l = expand(to_type(l, DataType::Boolean)?, rows)?;
            let r = expand(to_type(r, DataType::Boolean)?, rows)?;
            let out = if op == And {
                and_kleene(l.as_boolean(), r.as_boolean())?
            } else {
                or_kleene(l.as_boolean(), r.as_boolean())?
            };
            Ok(Col::Array(Arc::new(out)))
        }
        Concat => {
            let l = expand(to_type(l, DataType::Utf8)?, rows)?;
            let r = expand(to_type(r, DataType::Utf8)?, rows)?;
            Ok(Col::Array(Arc::new(
                arrow::compute::kernels::concat_elements::concat_elements_utf8(
                    l.as_string::<i32>(),
                    r.as_string::<i32>(),
                )?,
            )))
        }
        Eq | NotEq | Lt | LtEq | Gt | GtEq => {
            let c = DataType::common(lt, rt).unwrap_or(DataType::Null);
            let c = if c == DataType::Null {
                DataType::Int64
            } else {
                c
            };
            let (l, r) = (to_type(l, c)?, to_type(r, c)?);
            binary(&l, &r, |a, b| {
                Ok(Arc::new(match op {
                    Eq => cmp::eq(a, b)?,
                    NotEq => cmp::neq(a, b)?,
                    Lt => cmp::lt(a, b)?,
                    LtEq => cmp::lt_eq(a, b)?,
                    Gt => cmp::gt(a, b)?,
                    _ => cmp::gt_eq(a, b)?,
                }))
            })
        }
        Divide => {
            let (l, r) = (
                to_type(l, DataType::Float64)?,
                to_type(r, DataType::Float64)?,
            );
            let r = r.map(zero_to_null)?;
            binary(&l, &r, |a, b| Ok(numeric::div(a, b)?))
        }
        Plus | Minus | Multiply | Modulo => {
            let c = match DataType::common(lt, rt) {
                Some(DataType::Null) | None => DataType::Int64,
                Some(t) => t,
            };
            if c == DataType::Timestamp {
                // Timestamp ± milliseconds: add as integers, keep the type.
                let (l, r) = (to_type(l, DataType::Int64)?, to_type(r, DataType::Int64)?);
                let out = binary(&l, &r, |a, b| {
                    Ok(if op == Plus {
                        numeric::add_wrapping(a, b)?
                    } else {
                        numeric::sub_wrapping(a, b)?
                    })
                })?;
                return to_type(out, DataType::Timestamp);
            }
            let (l, r) = (to_type(l, c)?, to_type(r, c)?);
            let r = if op == Modulo {
                r.map(zero_to_null)?
            } else {
                r
            };
            binary(&l, &r, |a, b| {
                Ok(match op {
                    Plus => numeric::add_wrapping(a, b)?,
                    Minus => numeric::sub_wrapping(a, b)?,
                    Multiply => numeric::mul_wrapping(a, b)?,
                    _ => numeric::rem(a, b)?,
                })
            })
        }
    }
}

/// A divisor with its zeros made NULL (x / 0 and x % 0 are NULL). A float
/// zero is either sign: Arrow's comparison kernels order floats totally,
/// where -0.0 is not 0.0, so the test is `==` on the values instead.
fn zero_to_null(a: &ArrayRef) -> Result<ArrayRef> {
    let is_zero = match a.data_type() {
        arrow::datatypes::DataType::Float64 => {
            BooleanArray::from_unary(a.as_primitive::<Float64Type>(), |x| x == 0.0)
        }
        _ => cmp::eq(a, &Scalar::new(Int64Array::from(vec![0])))?,
    };
    Ok(nullif(a, &is_zero)?)
}

fn map_str(a: &ArrayRef, f: impl Fn(&str) -> String) -> ArrayRef {
    Arc::new(
        a.as_string::<i32>()
            .iter()
            .map(|v| v.map(&f))
            .collect::<StringArray>(),
    )
}

fn function(func: ScalarFunc, args: &[ArrayRef], t: DataType, rows: usize) -> Result<ArrayRef> {
    let as_t = |a: &ArrayRef, t: DataType| -> Result<ArrayRef> { Ok(cast(a, &t.to_arrow())?) };
    Ok(match func {
        ScalarFunc::Lower => map_str(&as_t(&args[0], DataType::Utf8)?, |s| s.to_lowercase()),
        ScalarFunc::Upper => map_str(&as_t(&args[0], DataType::Utf8)?, |s| s.to_uppercase()),
        ScalarFunc::Trim => map_str(&as_t(&args[0], DataType::Utf8)?, |s| {
            s.trim_matches(' ').to_string()
        }),
        ScalarFunc::Length => {
            let s = as_t(&args[0], DataType::Utf8)?;
            Arc::new(
                s.as_string::<i32>()
                    .iter()
                    .map(|v| v.map(|s| s.chars().count() as i64))
                    .collect::<Int64Array>(),
            )
        }
        ScalarFunc::Substring => {
            let s = as_t(&args[0], DataType::Utf8)?;
            let pos = as_t(&args[1], DataType::Int64)?;
            let len = args.get(2).map(|a| as_t(a, DataType::Int64)).transpose()?;
            let (s, pos) = (s.as_string::<i32>(), pos.as_primitive::<Int64Type>());
            let len = len.as_ref().map(|l| l.as_primitive::<Int64Type>());
            let mut out = arrow::array::StringBuilder::with_capacity(rows, 0);
            for i in 0..rows {
                if s.is_null(i) || pos.is_null(i) || len.is_some_and(|l| l.is_null(i)) {
                    out.append_null();
                    continue;
                }
                out.append_value(substring(s.value(i), pos.value(i), len.map(|l| l.value(i))));
            }
            Arc::new(out.finish())
        }
        ScalarFunc::Concat => {
            let cols = args
                .iter()
                .map(|a| as_t(a, DataType::Utf8))
                .collect::<Result<Vec<_>>>()?;
            let mut out = arrow::array::StringBuilder::with_capacity(rows, 0);
            for i in 0..rows {
                if cols.iter().any(|c| c.is_null(i)) {
                    out.append_null();
                } else {
                    let s: String = cols.iter().map(|c| c.as_string::<i32>().value(i)).collect();
                    out.append_value(s);
                }
            }
            Arc::new(out.finish())
        }
        ScalarFunc::Coalesce => {
            let mut result = new_null_array(&t.to_arrow(), rows);
            for a in args.iter().rev() {
                let a = as_t(a, t)?;
                result = zip(&is_not_null(&a)?, &a, &result)?;
            }
            result
        }
        ScalarFunc::Abs => {
            let a = as_t(&args[0], t)?;
            match t {
                DataType::Float64 => Arc::new(
                    a.as_primitive::<Float64Type>()
                        .unary::<_, Float64Type>(|x| x.abs()),
                ),
                _ => Arc::new(
                    a.as_primitive::<Int64Type>()
                        .unary::<_, Int64Type>(|x| x.wrapping_abs()),
                ),
            }
        }
        ScalarFunc::Round => {
            let x = as_t(&args[0], DataType::Float64)?;
            let d = args.get(1).map(|a| as_t(a, DataType::Int64)).transpose()?;
            let x = x.as_primitive::<Float64Type>();
            let d = d.as_ref().map(|d| d.as_primitive::<Int64Type>());
            Arc::new(
                (0..rows)
                    .map(|i| {
                        if x.is_null(i) || d.is_some_and(|d| d.is_null(i)) {
                            None
                        } else {
                            Some(round(x.value(i), d.map(|d| d.value(i)).unwrap_or(0)))
                        }
                    })
                    .collect::<Float64Array>(),
            )
        }
    })
}

/// `substring` on characters, 1-based; a start below 1 counts as 1 and a
/// negative length as 0.
pub fn substring(s: &str, pos: i64, len: Option<i64>) -> String {
    let start = (pos.max(1) - 1) as usize;
    let it = s.chars().skip(start);
    match len {
        Some(l) => it.take(l.max(0) as usize).collect(),
        None => it.collect(),
    }
}

/// Round half away from zero to `digits` decimals (negative: tens, hundreds).
pub fn round(x: f64, digits: i64) -> f64 {
    let digits = digits.clamp(-300, 300) as i32;
    let m = 10f64.powi(digits);
    (x * m).round() / m
}

/// A literal's value as a one-row column, for callers outside this module.
pub fn scalar_array(v: &Value) -> Result<ArrayRef> {
    values_to_array(v.data_type(), std::iter::once(v))
}

/// Evaluates a predicate and keeps the rows where it is true.
pub fn filter_batch(batch: &RecordBatch, predicate: &Expr, schema: &Schema) -> Result<RecordBatch> {
    let mask = evaluate(predicate, batch, schema)?;
    let mask = cast(&mask, &arrow::datatypes::DataType::Boolean)?;
    let mask = true_only(mask.as_boolean());
    Ok(arrow::compute::filter_record_batch(batch, &mask)?)
}

/// Refuses an expression this module cannot evaluate before any data moves.
pub fn check(expr: &Expr, schema: &Schema) -> Result<()> {
    expr.data_type(schema)
        .map(|_| ())
        .map_err(|e| exec_err!("{e}"))
}
