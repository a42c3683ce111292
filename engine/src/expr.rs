//! Scalar and aggregate expressions: what a projection computes, a filter
//! tests, a join matches on and an aggregate folds. Plain serde data; the
//! Arrow evaluation is in `eval`, the row-at-a-time one in `reference`.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::plan_err;
use crate::types::{DataType, Schema, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BinaryOp {
    Plus,
    Minus,
    Multiply,
    /// Always DOUBLE; a division by zero is NULL (Spark's non-ANSI mode).
    Divide,
    /// Same sign as the dividend; by zero is NULL.
    Modulo,
    Eq,
    NotEq,
    Lt,
    LtEq,
    Gt,
    GtEq,
    And,
    Or,
    /// `||`: both sides as strings.
    Concat,
}

impl BinaryOp {
    pub fn is_comparison(self) -> bool {
        matches!(
            self,
            BinaryOp::Eq
                | BinaryOp::NotEq
                | BinaryOp::Lt
                | BinaryOp::LtEq
                | BinaryOp::Gt
                | BinaryOp::GtEq
        )
    }

    pub fn is_arithmetic(self) -> bool {
        matches!(
            self,
            BinaryOp::Plus
                | BinaryOp::Minus
                | BinaryOp::Multiply
                | BinaryOp::Divide
                | BinaryOp::Modulo
        )
    }

    fn symbol(self) -> &'static str {
        match self {
            BinaryOp::Plus => "+",
            BinaryOp::Minus => "-",
            BinaryOp::Multiply => "*",
            BinaryOp::Divide => "/",
            BinaryOp::Modulo => "%",
            BinaryOp::Eq => "=",
            BinaryOp::NotEq => "<>",
            BinaryOp::Lt => "<",
            BinaryOp::LtEq => "<=",
            BinaryOp::Gt => ">",
            BinaryOp::GtEq => ">=",
            BinaryOp::And => "AND",
            BinaryOp::Or => "OR",
            BinaryOp::Concat => "||",
        }
    }
}

/// Built-in scalar functions. Strings count characters, not bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ScalarFunc {
    Lower,
    Upper,
    /// Characters in the string.
    Length,
    /// `substring(s, pos [, len])`, 1-based; a `pos` below 1 counts as 1.
    Substring,
    Trim,
    /// Concatenation of any number of arguments; NULL if any is NULL.
    Concat,
    /// The first non-NULL argument.
    Coalesce,
    Abs,
    /// `round(x [, digits])`, half away from zero; DOUBLE.
    Round,
}

impl ScalarFunc {
    pub fn from_name(name: &str) -> Option<ScalarFunc> {
        Some(match name.to_ascii_lowercase().as_str() {
            "lower" | "lcase" => ScalarFunc::Lower,
            "upper" | "ucase" => ScalarFunc::Upper,
            "length" | "char_length" | "character_length" | "len" => ScalarFunc::Length,
            "substring" | "substr" => ScalarFunc::Substring,
            "trim" => ScalarFunc::Trim,
            "concat" => ScalarFunc::Concat,
            "coalesce" => ScalarFunc::Coalesce,
            "abs" => ScalarFunc::Abs,
            "round" => ScalarFunc::Round,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            ScalarFunc::Lower => "lower",
            ScalarFunc::Upper => "upper",
            ScalarFunc::Length => "length",
            ScalarFunc::Substring => "substring",
            ScalarFunc::Trim => "trim",
            ScalarFunc::Concat => "concat",
            ScalarFunc::Coalesce => "coalesce",
            ScalarFunc::Abs => "abs",
            ScalarFunc::Round => "round",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Expr {
    Column(String),
    Literal(Value),
    Binary {
        op: BinaryOp,
        left: Box<Expr>,
        right: Box<Expr>,
    },
    Not(Box<Expr>),
    Negate(Box<Expr>),
    IsNull(Box<Expr>),
    IsNotNull(Box<Expr>),
    /// `CASE [operand] WHEN .. THEN .. [ELSE ..] END`; with an operand each
    /// WHEN is compared to it for equality.
    Case {
        operand: Option<Box<Expr>>,
        branches: Vec<(Expr, Expr)>,
        otherwise: Option<Box<Expr>>,
    },
    /// A failed conversion gives NULL (Spark's non-ANSI `CAST`).
    Cast {
        expr: Box<Expr>,
        to: DataType,
    },
    /// SQL LIKE with `%` and `_`, `\` escapes.
    Like {
        expr: Box<Expr>,
        pattern: String,
        negated: bool,
        case_insensitive: bool,
    },
    InList {
        expr: Box<Expr>,
        list: Vec<Expr>,
        negated: bool,
    },
    Function {
        func: ScalarFunc,
        args: Vec<Expr>,
    },
}

/// A column reference.
pub fn col(name: impl Into<String>) -> Expr {
    Expr::Column(name.into())
}

/// A literal.
pub fn lit(v: impl Into<Value>) -> Expr {
    Expr::Literal(v.into())
}

impl From<i64> for Value {
    fn from(v: i64) -> Value {
        Value::Int(v)
    }
}
impl From<i32> for Value {
    fn from(v: i32) -> Value {
        Value::Int(v as i64)
    }
}
impl From<f64> for Value {
    fn from(v: f64) -> Value {
        Value::Float(v)
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Value {
        Value::Bool(v)
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Value {
        Value::Str(v.to_string())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Value {
        Value::Str(v)
    }
}

macro_rules! binary_builders {
    ($($name:ident => $op:ident),* $(,)?) => {
        impl Expr {
            $(pub fn $name(self, other: Expr) -> Expr {
                Expr::Binary { op: BinaryOp::$op, left: Box::new(self), right: Box::new(other) }
            })*
        }
    };
}

binary_builders! {
    modulo => Modulo,
    eq => Eq, not_eq => NotEq, lt => Lt, lt_eq => LtEq, gt => Gt, gt_eq => GtEq,
    and => And, or => Or,
}

macro_rules! operator_traits {
    ($($trait:ident :: $method:ident => $op:ident),* $(,)?) => {
        $(impl std::ops::$trait for Expr {
            type Output = Expr;
            fn $method(self, other: Expr) -> Expr {
                Expr::Binary { op: BinaryOp::$op, left: Box::new(self), right: Box::new(other) }
            }
        })*
    };
}

// `col("a") + lit(1)` builds the expression.
operator_traits! { Add::add => Plus, Sub::sub => Minus, Mul::mul => Multiply, Div::div => Divide }

impl Expr {
    #[allow(clippy::should_implement_trait)]
    pub fn not(self) -> Expr {
        Expr::Not(Box::new(self))
    }

    pub fn is_null(self) -> Expr {
        Expr::IsNull(Box::new(self))
    }

    pub fn is_not_null(self) -> Expr {
        Expr::IsNotNull(Box::new(self))
    }

    pub fn cast(self, to: DataType) -> Expr {
        Expr::Cast {
            expr: Box::new(self),
            to,
        }
    }

    pub fn like(self, pattern: impl Into<String>) -> Expr {
        Expr::Like {
            expr: Box::new(self),
            pattern: pattern.into(),
            negated: false,
            case_insensitive: false,
        }
    }

    pub fn call(func: ScalarFunc, args: Vec<Expr>) -> Expr {
        Expr::Function { func, args }
    }

    /// Every column this expression reads, in first-use order.
    pub fn columns(&self, out: &mut Vec<String>) {
        self.visit(&mut |e| {
            if let Expr::Column(c) = e
                && !out.iter().any(|o| o.eq_ignore_ascii_case(c))
            {
                out.push(c.clone());
            }
        });
    }

    fn visit(&self, f: &mut impl FnMut(&Expr)) {
        f(self);
        match self {
            Expr::Column(_) | Expr::Literal(_) => {}
            Expr::Binary { left, right, .. } => {
                left.visit(f);
                right.visit(f);
            }
            Expr::Not(e) | Expr::Negate(e) | Expr::IsNull(e) | Expr::IsNotNull(e) => e.visit(f),
            Expr::Cast { expr, .. } | Expr::Like { expr, .. } => expr.visit(f),
            Expr::Case {
                operand,
                branches,
                otherwise,
            } => {
                if let Some(o) = operand {
                    o.visit(f);
                }
                for (w, t) in branches {
                    w.visit(f);
                    t.visit(f);
                }
                if let Some(o) = otherwise {
                    o.visit(f);
                }
            }
            Expr::InList { expr, list, .. } => {
                expr.visit(f);
                for e in list {
                    e.visit(f);
                }
            }
            Expr::Function { args, .. } => {
                for a in args {
                    a.visit(f);
                }
            }
        }
    }

    /// The result type over `schema`, or an error naming what does not fit.
    pub fn data_type(&self, schema: &Schema) -> Result<DataType> {
        use DataType::*;
        Ok(match self {
            Expr::Column(c) => schema.fields[schema.index_of(c)?].data_type,
            Expr::Literal(v) => v.data_type(),
            Expr::Binary { op, left, right } => {
                let (l, r) = (left.data_type(schema)?, right.data_type(schema)?);
                match op {
                    BinaryOp::And | BinaryOp::Or => {
                        for (t, e) in [(l, left), (r, right)] {
                            if !matches!(t, Boolean | Null) {
                                return Err(plan_err!(
                                    "{op:?} needs BOOLEAN operands, but {e} is {t}"
                                ));
                            }
                        }
                        Boolean
                    }
                    BinaryOp::Concat => Utf8,
                    op if op.is_comparison() => {
                        DataType::common(l, r).ok_or_else(|| {
                            plan_err!("cannot compare {left} ({l}) with {right} ({r})")
                        })?;
                        Boolean
                    }
                    BinaryOp::Divide => {
                        numeric_operands(*op, left, l, right, r)?;
                        Float64
                    }
                    _ => {
                        numeric_operands(*op, left, l, right, r)?;
                        match DataType::common(l, r) {
                            Some(Null) => Int64,
                            Some(t) => t,
                            None => Float64,
                        }
                    }
                }
            }
            Expr::Not(e) => {
                let t = e.data_type(schema)?;
                if !matches!(t, Boolean | Null) {
                    return Err(plan_err!("NOT needs a BOOLEAN, but {e} is {t}"));
                }
                Boolean
            }
            Expr::Negate(e) => {
                let t = e.data_type(schema)?;
                if !t.is_numeric() {
                    return Err(plan_err!("cannot negate {e} of type {t}"));
                }
                if t == Null { Int64 } else { t }
            }
            Expr::IsNull(e) | Expr::IsNotNull(e) => {
                e.data_type(schema)?;
                Boolean
            }
            Expr::Case {
                operand,
                branches,
                otherwise,
            } => {
                if branches.is_empty() {
                    return Err(plan_err!("CASE needs at least one WHEN"));
                }
                let op_type = operand.as_ref().map(|o| o.data_type(schema)).transpose()?;
                let mut out = Null;
                for (w, t) in branches {
                    let wt = w.data_type(schema)?;
                    match op_type {
                        Some(ot) => {
                            DataType::common(ot, wt).ok_or_else(|| {
                                plan_err!("CASE compares {ot} with WHEN {w} of type {wt}")
                            })?;
                        }
                        None if !matches!(wt, Boolean | Null) => {
                            return Err(plan_err!("WHEN {w} must be BOOLEAN, not {wt}"));
                        }
                        None => {}
                    }
                    let tt = t.data_type(schema)?;
                    out = DataType::common(out, tt)
                        .ok_or_else(|| plan_err!("CASE branches mix {out} and {tt} (THEN {t})"))?;
                }
                if let Some(o) = otherwise {
                    let ot = o.data_type(schema)?;
                    out = DataType::common(out, ot)
                        .ok_or_else(|| plan_err!("CASE branches mix {out} and {ot} (ELSE {o})"))?;
                }
                out
            }
            Expr::Cast { expr, to } => {
                expr.data_type(schema)?;
                *to
            }
            Expr::Like { expr, .. } => {
                let t = expr.data_type(schema)?;
                if !matches!(t, Utf8 | Null) {
                    return Err(plan_err!("LIKE needs a STRING, but {expr} is {t}"));
                }
                Boolean
            }
            Expr::InList { expr, list, .. } => {
                let t = expr.data_type(schema)?;
                for e in list {
                    let et = e.data_type(schema)?;
                    DataType::common(t, et).ok_or_else(|| {
                        plan_err!("IN list value {e} ({et}) does not compare with {expr} ({t})")
                    })?;
                }
                Boolean
            }
            Expr::Function { func, args } => function_type(*func, args, schema)?,
        })
    }
}

fn numeric_operands(
    op: BinaryOp,
    left: &Expr,
    l: DataType,
    right: &Expr,
    r: DataType,
) -> Result<()> {
    for (t, e) in [(l, left), (r, right)] {
        let timestamp_shift =
            t == DataType::Timestamp && matches!(op, BinaryOp::Plus | BinaryOp::Minus);
        if !t.is_numeric() && !timestamp_shift {
            return Err(plan_err!("'{}' needs numbers, but {e} is {t}", op.symbol()));
        }
    }
    Ok(())
}

fn function_type(func: ScalarFunc, args: &[Expr], schema: &Schema) -> Result<DataType> {
    use DataType::*;
    let types: Vec<DataType> = args
        .iter()
        .map(|a| a.data_type(schema))
        .collect::<Result<_>>()?;
    let arity = |lo: usize, hi: usize| -> Result<()> {
        if args.len() < lo || args.len() > hi {
            Err(plan_err!(
                "{}() takes {} argument(s), got {}",
                func.name(),
                if lo == hi {
                    lo.to_string()
                } else {
                    format!("{lo} to {hi}")
                },
                args.len()
            ))
        } else {
            Ok(())
        }
    };
    let want = |i: usize, ok: &[DataType]| -> Result<()> {
        if types[i] == Null || ok.contains(&types[i]) {
            Ok(())
        } else {
            Err(plan_err!(
                "{}() argument {} ({}) is {}, expected {}",
                func.name(),
                i + 1,
                args[i],
                types[i],
                ok.iter()
                    .map(|t| t.to_string())
                    .collect::<Vec<_>>()
                    .join(" or ")
            ))
        }
    };
    Ok(match func {
        ScalarFunc::Lower | ScalarFunc::Upper | ScalarFunc::Trim => {
            arity(1, 1)?;
            want(0, &[Utf8])?;
            Utf8
        }
        ScalarFunc::Length => {
            arity(1, 1)?;
            want(0, &[Utf8])?;
            Int64
        }
        ScalarFunc::Substring => {
            arity(2, 3)?;
            want(0, &[Utf8])?;
            for i in 1..args.len() {
                want(i, &[Int64])?;
            }
            Utf8
        }
        ScalarFunc::Concat => {
            arity(1, usize::MAX)?;
            Utf8
        }
        ScalarFunc::Coalesce => {
            arity(1, usize::MAX)?;
            let mut out = Null;
            for (i, t) in types.iter().enumerate() {
                out = DataType::common(out, *t).ok_or_else(|| {
                    plan_err!("coalesce() mixes {out} and {t} (argument {})", i + 1)
                })?;
            }
            out
        }
        ScalarFunc::Abs => {
            arity(1, 1)?;
            want(0, &[Int64, Float64])?;
            if types[0] == Null { Int64 } else { types[0] }
        }
        ScalarFunc::Round => {
            arity(1, 2)?;
            want(0, &[Int64, Float64])?;
            if args.len() == 2 {
                want(1, &[Int64])?;
            }
            Float64
        }
    })
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Column(c) => f.write_str(c),
            Expr::Literal(v) => write!(f, "{v}"),
            Expr::Binary { op, left, right } => write!(f, "({left} {} {right})", op.symbol()),
            Expr::Not(e) => write!(f, "NOT {e}"),
            Expr::Negate(e) => write!(f, "-{e}"),
            Expr::IsNull(e) => write!(f, "{e} IS NULL"),
            Expr::IsNotNull(e) => write!(f, "{e} IS NOT NULL"),
            Expr::Case {
                operand,
                branches,
                otherwise,
            } => {
                f.write_str("CASE")?;
                if let Some(o) = operand {
                    write!(f, " {o}")?;
                }
                for (w, t) in branches {
                    write!(f, " WHEN {w} THEN {t}")?;
                }
                if let Some(o) = otherwise {
                    write!(f, " ELSE {o}")?;
                }
                f.write_str(" END")
            }
            Expr::Cast { expr, to } => write!(f, "CAST({expr} AS {to})"),
            Expr::Like {
                expr,
                pattern,
                negated,
                case_insensitive,
            } => {
                write!(
                    f,
                    "{expr} {}{} '{pattern}'",
                    if *negated { "NOT " } else { "" },
                    if *case_insensitive { "ILIKE" } else { "LIKE" }
                )
            }
            Expr::InList {
                expr,
                list,
                negated,
            } => {
                let items: Vec<String> = list.iter().map(|e| e.to_string()).collect();
                write!(
                    f,
                    "{expr} {}IN ({})",
                    if *negated { "NOT " } else { "" },
                    items.join(", ")
                )
            }
            Expr::Function { func, args } => {
                let items: Vec<String> = args.iter().map(|e| e.to_string()).collect();
                write!(f, "{}({})", func.name(), items.join(", "))
            }
        }
    }
}

/// Aggregate functions. NULL inputs are skipped; over no rows COUNT is 0
/// and the others NULL, as in SQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AggFunc {
    /// `count(*)`: rows, NULLs included.
    CountStar,
    Count,
    CountDistinct,
    Sum,
    Min,
    Max,
    Avg,
}

impl AggFunc {
    pub fn name(self) -> &'static str {
        match self {
            AggFunc::CountStar | AggFunc::Count => "count",
            AggFunc::CountDistinct => "count_distinct",
            AggFunc::Sum => "sum",
            AggFunc::Min => "min",
            AggFunc::Max => "max",
            AggFunc::Avg => "avg",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AggExpr {
    pub func: AggFunc,
    /// `None` only for `count(*)`.
    pub arg: Option<Expr>,
}

impl AggExpr {
    pub fn data_type(&self, schema: &Schema) -> Result<DataType> {
        use DataType::*;
        let t = match &self.arg {
            Some(a) => a.data_type(schema)?,
            None => Null,
        };
        Ok(match self.func {
            AggFunc::CountStar | AggFunc::Count | AggFunc::CountDistinct => Int64,
            AggFunc::Sum => match t {
                Int64 | Null => Int64,
                Float64 => Float64,
                _ => {
                    return Err(plan_err!(
                        "sum() needs numbers, but {} is {t}",
                        self.arg.as_ref().map(|a| a.to_string()).unwrap_or_default()
                    ));
                }
            },
            AggFunc::Avg => {
                if !t.is_numeric() {
                    return Err(plan_err!(
                        "avg() needs numbers, but {} is {t}",
                        self.arg.as_ref().map(|a| a.to_string()).unwrap_or_default()
                    ));
                }
                Float64
            }
            AggFunc::Min | AggFunc::Max => t,
        })
    }
}

impl fmt::Display for AggExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.func, &self.arg) {
            (AggFunc::CountStar, _) => f.write_str("count(*)"),
            (AggFunc::CountDistinct, Some(a)) => write!(f, "count(DISTINCT {a})"),
            (func, Some(a)) => write!(f, "{}({a})", func.name()),
            (func, None) => write!(f, "{}()", func.name()),
        }
    }
}

/// Aggregate builders for the Dataset API.
pub fn count_star() -> AggExpr {
    AggExpr {
        func: AggFunc::CountStar,
        arg: None,
    }
}
pub fn count(e: Expr) -> AggExpr {
    AggExpr {
        func: AggFunc::Count,
        arg: Some(e),
    }
}
pub fn count_distinct(e: Expr) -> AggExpr {
    AggExpr {
        func: AggFunc::CountDistinct,
        arg: Some(e),
    }
}
pub fn sum(e: Expr) -> AggExpr {
    AggExpr {
        func: AggFunc::Sum,
        arg: Some(e),
    }
}
pub fn min(e: Expr) -> AggExpr {
    AggExpr {
        func: AggFunc::Min,
        arg: Some(e),
    }
}
pub fn max(e: Expr) -> AggExpr {
    AggExpr {
        func: AggFunc::Max,
        arg: Some(e),
    }
}
pub fn avg(e: Expr) -> AggExpr {
    AggExpr {
        func: AggFunc::Avg,
        arg: Some(e),
    }
}
