//! The reference evaluator: a plan evaluated row by row, single-threaded,
//! with nested loops and linear searches — slow and obviously right. The
//! chaos suites and property tests check every distributed result against
//! it (DESIGN.md §5, invariant 6). It shares nothing with the vectorised
//! operators but the source readers.

use std::cmp::Ordering;

use crate::error::Result;
use crate::eval::{round, substring};
use crate::expr::{AggExpr, AggFunc, BinaryOp, Expr, ScalarFunc};
use crate::plan::{JoinKind, LogicalPlan, SortKey};
use crate::source::{Source, TopicReader};
use crate::types::{DataType, Schema, Value};
use crate::value::batches_to_rows;

pub type Row = Vec<Value>;

/// Evaluates `plan` to its rows.
pub fn evaluate(plan: &LogicalPlan, topics: Option<&dyn TopicReader>) -> Result<Vec<Row>> {
    Ok(match plan {
        LogicalPlan::Scan { source, schema } => {
            let mut rows = Vec::new();
            match source {
                // Reading the whole file as one split checks the splitting too.
                Source::Csv { .. }
                | Source::Json { .. }
                | Source::Text { .. }
                | Source::Parquet { .. } => {
                    let mut one = source.clone();
                    set_partitions(&mut one, 1);
                    rows.extend(batches_to_rows(&one.read(0, schema, topics)?));
                }
                Source::Memory { rows: r, .. } => rows.extend(r.iter().cloned()),
                Source::Topic { .. } => {
                    for p in 0..source.partitions() {
                        rows.extend(batches_to_rows(&source.read(p, schema, topics)?));
                    }
                }
            }
            rows
        }
        LogicalPlan::Alias { input, .. } | LogicalPlan::Repartition { input, .. } => {
            evaluate(input, topics)?
        }
        LogicalPlan::Project { input, exprs } => {
            let s = input.schema()?;
            let out_types: Vec<DataType> = exprs
                .iter()
                .map(|(e, _)| e.data_type(&s))
                .collect::<Result<_>>()?;
            evaluate(input, topics)?
                .iter()
                .map(|r| {
                    exprs
                        .iter()
                        .zip(&out_types)
                        .map(|((e, _), t)| coerce(eval_row(e, r, &s), *t))
                        .collect()
                })
                .collect()
        }
        LogicalPlan::Filter { input, predicate } => {
            let s = input.schema()?;
            evaluate(input, topics)?
                .into_iter()
                .filter(|r| eval_row(predicate, r, &s) == Value::Bool(true))
                .collect()
        }
        LogicalPlan::Explode {
            input,
            expr,
            separator,
            ..
        } => {
            let s = input.schema()?;
            let mut out = Vec::new();
            for r in evaluate(input, topics)? {
                if let Value::Str(text) = cast(eval_row(expr, &r, &s), DataType::Utf8) {
                    for piece in text.split(separator.as_str()).filter(|p| !p.is_empty()) {
                        let mut row = r.clone();
                        row.push(Value::Str(piece.to_string()));
                        out.push(row);
                    }
                }
            }
            out
        }
        LogicalPlan::Aggregate { input, group, aggs } => {
            let s = input.schema()?;
            aggregate(&evaluate(input, topics)?, &s, group, aggs)?
        }
        LogicalPlan::Distinct { input } => {
            let mut out: Vec<Row> = Vec::new();
            for r in evaluate(input, topics)? {
                if !out.iter().any(|o| same_key(o, &r)) {
                    out.push(r);
                }
            }
            out
        }
        LogicalPlan::Join {
            left,
            right,
            kind,
            on,
            filter,
        } => {
            let (ls, rs) = (left.schema()?, right.schema()?);
            let joined = Schema::new(ls.fields.iter().chain(&rs.fields).cloned().collect());
            let (lrows, rrows) = (evaluate(left, topics)?, evaluate(right, topics)?);
            let mut out = Vec::new();
            let mut right_matched = vec![false; rrows.len()];
            for l in &lrows {
                let mut matched = false;
                for (j, r) in rrows.iter().enumerate() {
                    let keys_equal = on.iter().all(|(le, re)| {
                        let (a, b) = (eval_row(le, l, &ls), eval_row(re, r, &rs));
                        !a.is_null() && !b.is_null() && compare(&a, &b) == Some(Ordering::Equal)
                    });
                    if !keys_equal {
                        continue;
                    }
                    let row: Row = l.iter().chain(r.iter()).cloned().collect();
                    if filter
                        .as_ref()
                        .is_some_and(|f| eval_row(f, &row, &joined) != Value::Bool(true))
                    {
                        continue;
                    }
                    matched = true;
                    right_matched[j] = true;
                    out.push(row);
                }
                if !matched && matches!(kind, JoinKind::Left | JoinKind::Full) {
                    out.push(
                        l.iter()
                            .cloned()
                            .chain(std::iter::repeat_n(Value::Null, rs.len()))
                            .collect(),
                    );
                }
            }
            if matches!(kind, JoinKind::Right | JoinKind::Full) {
                for (j, r) in rrows.iter().enumerate() {
                    if !right_matched[j] {
                        out.push(
                            std::iter::repeat_n(Value::Null, ls.len())
                                .chain(r.iter().cloned())
                                .collect(),
                        );
                    }
                }
            }
            out
        }
        LogicalPlan::Sort { input, keys } => {
            let s = input.schema()?;
            let mut rows = evaluate(input, topics)?;
            rows.sort_by(|a, b| compare_by_keys(a, b, keys, &s));
            rows
        }
        LogicalPlan::Limit { input, skip, fetch } => evaluate(input, topics)?
            .into_iter()
            .skip(*skip)
            .take(fetch.unwrap_or(usize::MAX))
            .collect(),
        LogicalPlan::Union { inputs } => {
            let mut out = Vec::new();
            for i in inputs {
                out.extend(evaluate(i, topics)?);
            }
            out
        }
    })
}

fn set_partitions(source: &mut Source, n: u32) {
    match source {
        Source::Csv { partitions, .. }
        | Source::Json { partitions, .. }
        | Source::Parquet { partitions, .. }
        | Source::Text { partitions, .. } => *partitions = n,
        Source::Memory { .. } | Source::Topic { .. } => {}
    }
}

/// The order `keys` put two rows in (Spark's NULL placement per key).
pub fn compare_by_keys(a: &Row, b: &Row, keys: &[SortKey], schema: &Schema) -> Ordering {
    for k in keys {
        let (x, y) = (eval_row(&k.expr, a, schema), eval_row(&k.expr, b, schema));
        let o = match (x.is_null(), y.is_null()) {
            (true, true) => Ordering::Equal,
            (true, false) => {
                if k.nulls_first {
                    Ordering::Less
                } else {
                    Ordering::Greater
                }
            }
            (false, true) => {
                if k.nulls_first {
                    Ordering::Greater
                } else {
                    Ordering::Less
                }
            }
            (false, false) => {
                let o = compare(&x, &y).unwrap_or(Ordering::Equal);
                if k.descending { o.reverse() } else { o }
            }
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    Ordering::Equal
}

/// Group keys are equal when every value is, NULL matching NULL.
fn same_key(a: &[Value], b: &[Value]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| (x.is_null() && y.is_null()) || compare(x, y) == Some(Ordering::Equal))
}

fn aggregate(
    rows: &[Row],
    s: &Schema,
    group: &[(Expr, String)],
    aggs: &[(AggExpr, String)],
) -> Result<Vec<Row>> {
    let group_types: Vec<DataType> = group
        .iter()
        .map(|(e, _)| e.data_type(s))
        .collect::<Result<_>>()?;
    let mut groups: Vec<(Row, Vec<&Row>)> = Vec::new();
    for r in rows {
        let key: Row = group
            .iter()
            .zip(&group_types)
            .map(|((e, _), t)| coerce(eval_row(e, r, s), *t))
            .collect();
        match groups.iter_mut().find(|(k, _)| same_key(k, &key)) {
            Some((_, members)) => members.push(r),
            None => groups.push((key, vec![r])),
        }
    }
    if group.is_empty() && groups.is_empty() {
        groups.push((Vec::new(), Vec::new()));
    }
    let mut out = Vec::new();
    for (key, members) in groups {
        let mut row = key;
        for (a, _) in aggs {
            let t = a.data_type(s)?;
            row.push(coerce(fold(a, &members, s), t));
        }
        out.push(row);
    }
    Ok(out)
}

fn fold(a: &AggExpr, members: &[&Row], s: &Schema) -> Value {
    let values: Vec<Value> = match &a.arg {
        Some(e) => members
            .iter()
            .map(|r| eval_row(e, r, s))
            .filter(|v| !v.is_null())
            .collect(),
        None => Vec::new(),
    };
    match a.func {
        AggFunc::CountStar => Value::Int(members.len() as i64),
        AggFunc::Count => Value::Int(values.len() as i64),
        AggFunc::CountDistinct => {
            let mut seen: Vec<Value> = Vec::new();
            for v in values {
                if !seen.iter().any(|x| compare(x, &v) == Some(Ordering::Equal)) {
                    seen.push(v);
                }
            }
            Value::Int(seen.len() as i64)
        }
        AggFunc::Sum => {
            if values.is_empty() {
                Value::Null
            } else if values.iter().any(|v| matches!(v, Value::Float(_))) {
                Value::Float(values.iter().map(as_f64).sum())
            } else {
                Value::Int(values.iter().fold(0i64, |acc, v| {
                    acc.wrapping_add(if let Value::Int(i) = v { *i } else { 0 })
                }))
            }
        }
        AggFunc::Avg => {
            if values.is_empty() {
                Value::Null
            } else {
                Value::Float(values.iter().map(as_f64).sum::<f64>() / values.len() as f64)
            }
        }
        AggFunc::Min | AggFunc::Max => {
            let mut best: Option<Value> = None;
            for v in values {
                let better = match &best {
                    None => true,
                    Some(b) => {
                        let o = compare(&v, b).unwrap_or(Ordering::Equal);
                        if a.func == AggFunc::Max {
                            o == Ordering::Greater
                        } else {
                            o == Ordering::Less
                        }
                    }
                };
                if better {
                    best = Some(v);
                }
            }
            best.unwrap_or(Value::Null)
        }
    }
}

fn as_f64(v: &Value) -> f64 {
    match v {
        Value::Int(i) | Value::Timestamp(i) => *i as f64,
        Value::Float(x) => *x,
        _ => 0.0,
    }
}

/// Orders two non-NULL values of comparable types (floats by total order,
/// strings by bytes, as Arrow's kernels do); `None` if they do not compare.
pub fn compare(a: &Value, b: &Value) -> Option<Ordering> {
    use Value::*;
    Some(match (a, b) {
        (Bool(x), Bool(y)) => x.cmp(y),
        (Int(x), Int(y))
        | (Timestamp(x), Timestamp(y))
        | (Int(x), Timestamp(y))
        | (Timestamp(x), Int(y)) => x.cmp(y),
        (Float(x), Float(y)) => x.total_cmp(y),
        (Int(x), Float(y)) => (*x as f64).total_cmp(y),
        (Float(x), Int(y)) => x.total_cmp(&(*y as f64)),
        (Str(x), Str(y)) => x.as_bytes().cmp(y.as_bytes()),
        _ => return None,
    })
}

/// A value converted to the column type it lands in.
fn coerce(v: Value, t: DataType) -> Value {
    if v.data_type() == t || v.is_null() {
        v
    } else {
        cast(v, t)
    }
}

/// `CAST` on one value; what does not convert is NULL.
pub fn cast(v: Value, t: DataType) -> Value {
    use Value::*;
    match (v, t) {
        (Null, _) | (_, DataType::Null) => Null,
        (v, t) if v.data_type() == t => v,
        (Int(i), DataType::Float64) => Float(i as f64),
        (Int(i), DataType::Boolean) => Bool(i != 0),
        (Int(i), DataType::Utf8) => Str(i.to_string()),
        (Int(i), DataType::Timestamp) => Timestamp(i),
        (Timestamp(i), DataType::Int64) => Int(i),
        (Float(x), DataType::Int64) => {
            if x.is_finite() && x >= i64::MIN as f64 && x < i64::MAX as f64 {
                Int(x.trunc() as i64)
            } else {
                Null
            }
        }
        (Float(x), DataType::Boolean) => Bool(x != 0.0),
        (Bool(b), DataType::Int64) => Int(b as i64),
        (Bool(b), DataType::Float64) => Float(if b { 1.0 } else { 0.0 }),
        (Bool(b), DataType::Utf8) => Str(b.to_string()),
        (Str(s), DataType::Int64) => s.parse::<i64>().map(Int).unwrap_or(Null),
        (Str(s), DataType::Float64) => s.parse::<f64>().map(Float).unwrap_or(Null),
        (Str(s), DataType::Boolean) => match s.to_ascii_lowercase().as_str() {
            "true" | "t" | "yes" | "y" | "1" | "on" => Bool(true),
            "false" | "f" | "no" | "n" | "0" | "off" => Bool(false),
            _ => Null,
        },
        _ => Null,
    }
}

fn truth(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        _ => None,
    }
}

/// The value of `expr` for one row.
pub fn eval_row(expr: &Expr, row: &Row, s: &Schema) -> Value {
    match expr {
        Expr::Column(c) => s.index_of(c).map(|i| row[i].clone()).unwrap_or(Value::Null),
        Expr::Literal(v) => v.clone(),
        Expr::Binary { op, left, right } => {
            let (a, b) = (eval_row(left, row, s), eval_row(right, row, s));
            binary(*op, a, b)
        }
        Expr::Not(e) => match truth(&cast(eval_row(e, row, s), DataType::Boolean)) {
            Some(b) => Value::Bool(!b),
            None => Value::Null,
        },
        Expr::Negate(e) => match eval_row(e, row, s) {
            Value::Int(i) => Value::Int(i.wrapping_neg()),
            Value::Float(x) => Value::Float(-x),
            _ => Value::Null,
        },
        Expr::IsNull(e) => Value::Bool(eval_row(e, row, s).is_null()),
        Expr::IsNotNull(e) => Value::Bool(!eval_row(e, row, s).is_null()),
        Expr::Cast { expr, to } => cast(eval_row(expr, row, s), *to),
        Expr::Like {
            expr,
            pattern,
            negated,
            case_insensitive,
        } => match eval_row(expr, row, s) {
            Value::Str(text) => {
                let m = if *case_insensitive {
                    like(&text.to_lowercase(), &pattern.to_lowercase())
                } else {
                    like(&text, pattern)
                };
                Value::Bool(m != *negated)
            }
            _ => Value::Null,
        },
        Expr::InList {
            expr,
            list,
            negated,
        } => {
            let v = eval_row(expr, row, s);
            let mut saw_null = v.is_null();
            let mut found = false;
            for item in list {
                let x = eval_row(item, row, s);
                if x.is_null() || v.is_null() {
                    saw_null = true;
                } else if compare(&v, &x) == Some(Ordering::Equal) {
                    found = true;
                }
            }
            if found {
                Value::Bool(!negated)
            } else if saw_null {
                Value::Null
            } else {
                Value::Bool(*negated)
            }
        }
        Expr::Case {
            operand,
            branches,
            otherwise,
        } => {
            let t = expr.data_type(s).unwrap_or(DataType::Null);
            let op = operand.as_ref().map(|o| eval_row(o, row, s));
            for (w, then) in branches {
                let hit = match &op {
                    Some(o) => {
                        let x = eval_row(w, row, s);
                        !o.is_null() && !x.is_null() && compare(o, &x) == Some(Ordering::Equal)
                    }
                    None => eval_row(w, row, s) == Value::Bool(true),
                };
                if hit {
                    return coerce(eval_row(then, row, s), t);
                }
            }
            otherwise
                .as_ref()
                .map(|o| coerce(eval_row(o, row, s), t))
                .unwrap_or(Value::Null)
        }
        Expr::Function { func, args } => {
            let t = expr.data_type(s).unwrap_or(DataType::Null);
            let vals: Vec<Value> = args.iter().map(|a| eval_row(a, row, s)).collect();
            function(*func, vals, t)
        }
    }
}

fn binary(op: BinaryOp, a: Value, b: Value) -> Value {
    use BinaryOp::*;
    match op {
        And => match (truth(&a), truth(&b)) {
            (Some(false), _) | (_, Some(false)) => Value::Bool(false),
            (Some(true), Some(true)) => Value::Bool(true),
            _ => Value::Null,
        },
        Or => match (truth(&a), truth(&b)) {
            (Some(true), _) | (_, Some(true)) => Value::Bool(true),
            (Some(false), Some(false)) => Value::Bool(false),
            _ => Value::Null,
        },
        _ if a.is_null() || b.is_null() => Value::Null,
        Concat => match (cast(a, DataType::Utf8), cast(b, DataType::Utf8)) {
            (Value::Str(x), Value::Str(y)) => Value::Str(x + &y),
            _ => Value::Null,
        },
        Eq | NotEq | Lt | LtEq | Gt | GtEq => match compare(&a, &b) {
            Some(o) => Value::Bool(match op {
                Eq => o == Ordering::Equal,
                NotEq => o != Ordering::Equal,
                Lt => o == Ordering::Less,
                LtEq => o != Ordering::Greater,
                Gt => o == Ordering::Greater,
                _ => o != Ordering::Less,
            }),
            None => Value::Null,
        },
        Divide => {
            let (x, y) = (as_f64(&a), as_f64(&b));
            if y == 0.0 {
                Value::Null
            } else {
                Value::Float(x / y)
            }
        }
        Plus | Minus | Multiply | Modulo => match (a, b) {
            (Value::Int(x), Value::Int(y)) => match op {
                Plus => Value::Int(x.wrapping_add(y)),
                Minus => Value::Int(x.wrapping_sub(y)),
                Multiply => Value::Int(x.wrapping_mul(y)),
                _ if y == 0 => Value::Null,
                _ => Value::Int(x.wrapping_rem(y)),
            },
            (Value::Timestamp(x), Value::Int(y)) | (Value::Int(x), Value::Timestamp(y))
                if op == Plus =>
            {
                Value::Timestamp(x.wrapping_add(y))
            }
            (Value::Timestamp(x), Value::Int(y)) if op == Minus => {
                Value::Timestamp(x.wrapping_sub(y))
            }
            (a, b) => {
                let (x, y) = (as_f64(&a), as_f64(&b));
                match op {
                    Plus => Value::Float(x + y),
                    Minus => Value::Float(x - y),
                    Multiply => Value::Float(x * y),
                    _ if y == 0.0 => Value::Null,
                    _ => Value::Float(x % y),
                }
            }
        },
    }
}

fn function(func: ScalarFunc, vals: Vec<Value>, t: DataType) -> Value {
    let s0 = || match &vals[0] {
        Value::Str(s) => Some(s.clone()),
        _ => None,
    };
    match func {
        ScalarFunc::Lower => s0()
            .map(|s| Value::Str(s.to_lowercase()))
            .unwrap_or(Value::Null),
        ScalarFunc::Upper => s0()
            .map(|s| Value::Str(s.to_uppercase()))
            .unwrap_or(Value::Null),
        ScalarFunc::Trim => s0()
            .map(|s| Value::Str(s.trim_matches(' ').to_string()))
            .unwrap_or(Value::Null),
        ScalarFunc::Length => s0()
            .map(|s| Value::Int(s.chars().count() as i64))
            .unwrap_or(Value::Null),
        ScalarFunc::Substring => match (s0(), &vals[1], vals.get(2)) {
            (Some(s), Value::Int(p), None) => Value::Str(substring(&s, *p, None)),
            (Some(s), Value::Int(p), Some(Value::Int(l))) => {
                Value::Str(substring(&s, *p, Some(*l)))
            }
            _ => Value::Null,
        },
        ScalarFunc::Concat => {
            let mut out = String::new();
            for v in vals {
                match cast(v, DataType::Utf8) {
                    Value::Str(s) => out.push_str(&s),
                    _ => return Value::Null,
                }
            }
            Value::Str(out)
        }
        ScalarFunc::Coalesce => vals
            .into_iter()
            .find(|v| !v.is_null())
            .map(|v| coerce(v, t))
            .unwrap_or(Value::Null),
        ScalarFunc::Abs => match &vals[0] {
            Value::Int(i) => Value::Int(i.wrapping_abs()),
            Value::Float(x) => Value::Float(x.abs()),
            _ => Value::Null,
        },
        ScalarFunc::Round => {
            let d = match vals.get(1) {
                None => 0,
                Some(Value::Int(d)) => *d,
                Some(_) => return Value::Null,
            };
            match &vals[0] {
                Value::Int(_) | Value::Float(_) => Value::Float(round(as_f64(&vals[0]), d)),
                _ => Value::Null,
            }
        }
    }
}

/// SQL LIKE: `%` any run, `_` one character, `\` escapes the next.
pub fn like(text: &str, pattern: &str) -> bool {
    let t: Vec<char> = text.chars().collect();
    let mut p: Vec<(char, bool)> = Vec::new(); // (char, is_literal)
    let mut it = pattern.chars();
    while let Some(c) = it.next() {
        if c == '\\' {
            match it.next() {
                Some(n) => p.push((n, true)),
                None => p.push(('\\', true)),
            }
        } else {
            p.push((c, false));
        }
    }
    // dp[j]: pattern[..i] matches text[..j].
    let mut dp = vec![false; t.len() + 1];
    dp[0] = true;
    for &(c, literal) in &p {
        let mut next = vec![false; t.len() + 1];
        if c == '%' && !literal {
            let mut any = false;
            for j in 0..=t.len() {
                any |= dp[j];
                next[j] = any;
            }
        } else {
            for j in 1..=t.len() {
                next[j] = dp[j - 1] && ((c == '_' && !literal) || t[j - 1] == c);
            }
        }
        dp = next;
    }
    dp[t.len()]
}

/// Whether two results hold the same rows: in order when `ordered`, else
/// as multisets. Floats compare with a relative tolerance, since partial
/// sums add in a different order than one loop does.
pub fn same_rows(
    actual: &[Row],
    expected: &[Row],
    ordered: bool,
) -> std::result::Result<(), String> {
    if actual.len() != expected.len() {
        return Err(format!(
            "{} rows, expected {}",
            actual.len(),
            expected.len()
        ));
    }
    let (mut a, mut e) = (actual.to_vec(), expected.to_vec());
    if !ordered {
        a.sort_by(canonical);
        e.sort_by(canonical);
    }
    for (i, (x, y)) in a.iter().zip(&e).enumerate() {
        if x.len() != y.len() || !x.iter().zip(y).all(|(p, q)| close(p, q)) {
            return Err(format!("row {i}: {} , expected {}", show(x), show(y)));
        }
    }
    Ok(())
}

fn show(r: &Row) -> String {
    format!(
        "({})",
        r.iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

fn close(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Float(x), Value::Float(y)) => {
            (x.is_nan() && y.is_nan())
                || x == y
                || (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0)
        }
        _ => a == b,
    }
}

/// A total order on rows for comparing multisets (floats rounded so that
/// nearly equal sums sort together).
fn canonical(a: &Row, b: &Row) -> Ordering {
    for (x, y) in a.iter().zip(b) {
        let o = match (x, y) {
            (Value::Null, Value::Null) => Ordering::Equal,
            (Value::Null, _) => Ordering::Less,
            (_, Value::Null) => Ordering::Greater,
            (Value::Float(p), Value::Float(q)) => {
                let r = |v: f64| if v.is_finite() { (v * 1e6).round() } else { v };
                r(*p).total_cmp(&r(*q))
            }
            _ => compare(x, y).unwrap_or_else(|| format!("{x:?}").cmp(&format!("{y:?}"))),
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    a.len().cmp(&b.len())
}
