//! The logical plan: what a job computes, as serde data. SQL and the
//! Dataset API both build it through the checked constructors here, so a
//! plan that exists has resolved columns and consistent types.

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::expr::{AggExpr, AggFunc, Expr};
use crate::plan_err;
use crate::source::Source;
use crate::types::{DataType, Field, Schema};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JoinKind {
    Inner,
    Left,
    Right,
    Full,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SortKey {
    pub expr: Expr,
    pub descending: bool,
    /// Spark's default: NULLs first ascending, last descending.
    pub nulls_first: bool,
}

impl SortKey {
    pub fn asc(expr: Expr) -> SortKey {
        SortKey {
            expr,
            descending: false,
            nulls_first: true,
        }
    }
    pub fn desc(expr: Expr) -> SortKey {
        SortKey {
            expr,
            descending: true,
            nulls_first: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum LogicalPlan {
    Scan {
        source: Source,
        schema: Schema,
    },
    Project {
        input: Box<LogicalPlan>,
        exprs: Vec<(Expr, String)>,
    },
    Filter {
        input: Box<LogicalPlan>,
        predicate: Expr,
    },
    /// A flat-map: each row once per piece of `expr` split on `separator`
    /// (empty pieces dropped), with the piece as a new last column `name`.
    /// SQL: `explode(split(expr, sep)) AS name`.
    Explode {
        input: Box<LogicalPlan>,
        expr: Expr,
        separator: String,
        name: String,
    },
    Aggregate {
        input: Box<LogicalPlan>,
        group: Vec<(Expr, String)>,
        aggs: Vec<(AggExpr, String)>,
    },
    /// Equi-join on `on` pairs (left expr, right expr), with an optional
    /// extra condition on the joined row. Output: left columns, then right.
    Join {
        left: Box<LogicalPlan>,
        right: Box<LogicalPlan>,
        kind: JoinKind,
        on: Vec<(Expr, Expr)>,
        filter: Option<Expr>,
    },
    Sort {
        input: Box<LogicalPlan>,
        keys: Vec<SortKey>,
    },
    Limit {
        input: Box<LogicalPlan>,
        skip: usize,
        fetch: Option<usize>,
    },
    Distinct {
        input: Box<LogicalPlan>,
    },
    /// UNION ALL of inputs with the same column types.
    Union {
        inputs: Vec<LogicalPlan>,
    },
    /// Hash-partition by `keys` (round-robin when empty) into `partitions`.
    Repartition {
        input: Box<LogicalPlan>,
        partitions: u32,
        keys: Vec<Expr>,
    },
    /// Give every column the same table qualifier (`FROM t AS x`).
    Alias {
        input: Box<LogicalPlan>,
        name: String,
    },
}

impl LogicalPlan {
    pub fn scan(source: Source) -> Result<LogicalPlan> {
        let schema = source.schema()?;
        Ok(LogicalPlan::Scan { source, schema })
    }

    pub fn schema(&self) -> Result<Schema> {
        Ok(match self {
            LogicalPlan::Scan { schema, .. } => schema.clone(),
            LogicalPlan::Project { input, exprs } => {
                let s = input.schema()?;
                Schema::new(
                    exprs
                        .iter()
                        .map(|(e, n)| Ok(Field::new(n, e.data_type(&s)?)))
                        .collect::<Result<_>>()?,
                )
            }
            LogicalPlan::Filter { input, .. }
            | LogicalPlan::Sort { input, .. }
            | LogicalPlan::Limit { input, .. }
            | LogicalPlan::Distinct { input }
            | LogicalPlan::Repartition { input, .. } => input.schema()?,
            LogicalPlan::Explode { input, name, .. } => {
                let mut s = input.schema()?;
                s.fields.push(Field::new(name, DataType::Utf8));
                s
            }
            LogicalPlan::Aggregate { input, group, aggs } => {
                let s = input.schema()?;
                let mut fields = Vec::new();
                for (e, n) in group {
                    fields.push(Field::new(n, e.data_type(&s)?));
                }
                for (a, n) in aggs {
                    fields.push(Field::new(n, a.data_type(&s)?));
                }
                Schema::new(fields)
            }
            LogicalPlan::Join { left, right, .. } => {
                let mut s = left.schema()?;
                s.fields.extend(right.schema()?.fields);
                s
            }
            LogicalPlan::Union { inputs } => inputs[0].schema()?,
            LogicalPlan::Alias { input, name } => input.schema()?.qualified(name),
        })
    }

    pub fn project(self, exprs: Vec<(Expr, String)>) -> Result<LogicalPlan> {
        let s = self.schema()?;
        for (e, _) in &exprs {
            e.data_type(&s)?;
        }
        let mut seen: Vec<&str> = Vec::new();
        for (_, n) in &exprs {
            if seen.iter().any(|o| o.eq_ignore_ascii_case(n)) {
                return Err(plan_err!(
                    "the output has two columns named '{n}': give one an alias"
                ));
            }
            seen.push(n);
        }
        Ok(LogicalPlan::Project {
            input: Box::new(self),
            exprs,
        })
    }

    pub fn filter(self, predicate: Expr) -> Result<LogicalPlan> {
        let t = predicate.data_type(&self.schema()?)?;
        if !matches!(t, DataType::Boolean | DataType::Null) {
            return Err(plan_err!(
                "a filter must be BOOLEAN, but {predicate} is {t}"
            ));
        }
        Ok(LogicalPlan::Filter {
            input: Box::new(self),
            predicate,
        })
    }

    pub fn explode(
        self,
        expr: Expr,
        separator: impl Into<String>,
        name: impl Into<String>,
    ) -> Result<LogicalPlan> {
        let t = expr.data_type(&self.schema()?)?;
        if !matches!(t, DataType::Utf8 | DataType::Null) {
            return Err(plan_err!(
                "explode(split(..)) needs a STRING, but {expr} is {t}"
            ));
        }
        let separator = separator.into();
        if separator.is_empty() {
            return Err(plan_err!("split() needs a non-empty separator"));
        }
        Ok(LogicalPlan::Explode {
            input: Box::new(self),
            expr,
            separator,
            name: name.into(),
        })
    }

    pub fn aggregate(
        self,
        group: Vec<(Expr, String)>,
        aggs: Vec<(AggExpr, String)>,
    ) -> Result<LogicalPlan> {
        let s = self.schema()?;
        for (e, _) in &group {
            e.data_type(&s)?;
        }
        for (a, _) in &aggs {
            a.data_type(&s)?;
            if a.func != AggFunc::CountStar && a.arg.is_none() {
                return Err(plan_err!("{}() needs an argument", a.func.name()));
            }
        }
        Ok(LogicalPlan::Aggregate {
            input: Box::new(self),
            group,
            aggs,
        })
    }

    pub fn join(
        self,
        right: LogicalPlan,
        kind: JoinKind,
        on: Vec<(Expr, Expr)>,
        filter: Option<Expr>,
    ) -> Result<LogicalPlan> {
        let (ls, rs) = (self.schema()?, right.schema()?);
        if on.is_empty() {
            return Err(plan_err!(
                "a join needs at least one equality between the two sides (ON a.k = b.k); cross joins are not supported"
            ));
        }
        let mut keyed = Vec::with_capacity(on.len());
        for (l, r) in on {
            let (lt, rt) = (l.data_type(&ls)?, r.data_type(&rs)?);
            let common = DataType::common(lt, rt).ok_or_else(|| {
                plan_err!("join keys {l} ({lt}) and {r} ({rt}) have types that do not compare")
            })?;
            // Both sides hash the same bytes only if they have the same type.
            let l = if lt == common { l } else { l.cast(common) };
            let r = if rt == common { r } else { r.cast(common) };
            keyed.push((l, r));
        }
        let joined = Schema::new(ls.fields.iter().chain(rs.fields.iter()).cloned().collect());
        if let Some(f) = &filter {
            let t = f.data_type(&joined)?;
            if !matches!(t, DataType::Boolean | DataType::Null) {
                return Err(plan_err!(
                    "a join condition must be BOOLEAN, but {f} is {t}"
                ));
            }
        }
        Ok(LogicalPlan::Join {
            left: Box::new(self),
            right: Box::new(right),
            kind,
            on: keyed,
            filter,
        })
    }

    pub fn sort(self, keys: Vec<SortKey>) -> Result<LogicalPlan> {
        let s = self.schema()?;
        for k in &keys {
            k.expr.data_type(&s)?;
        }
        Ok(LogicalPlan::Sort {
            input: Box::new(self),
            keys,
        })
    }

    pub fn limit(self, skip: usize, fetch: Option<usize>) -> LogicalPlan {
        LogicalPlan::Limit {
            input: Box::new(self),
            skip,
            fetch,
        }
    }

    pub fn distinct(self) -> LogicalPlan {
        LogicalPlan::Distinct {
            input: Box::new(self),
        }
    }

    pub fn union(inputs: Vec<LogicalPlan>) -> Result<LogicalPlan> {
        let Some(first) = inputs.first() else {
            return Err(plan_err!("UNION needs at least one input"));
        };
        let s0 = first.schema()?;
        for (i, p) in inputs.iter().enumerate().skip(1) {
            let s = p.schema()?;
            if s.len() != s0.len() {
                return Err(plan_err!(
                    "UNION input {} has {} columns, the first has {}",
                    i + 1,
                    s.len(),
                    s0.len()
                ));
            }
            for (a, b) in s0.fields.iter().zip(&s.fields) {
                if a.data_type != b.data_type
                    && a.data_type != DataType::Null
                    && b.data_type != DataType::Null
                {
                    return Err(plan_err!(
                        "UNION column '{}' is {} in the first input but {} in input {}",
                        a.name,
                        a.data_type,
                        b.data_type,
                        i + 1
                    ));
                }
            }
        }
        Ok(LogicalPlan::Union { inputs })
    }

    pub fn repartition(self, partitions: u32, keys: Vec<Expr>) -> Result<LogicalPlan> {
        if partitions == 0 {
            return Err(plan_err!("repartition needs at least one partition"));
        }
        let s = self.schema()?;
        for k in &keys {
            k.data_type(&s)?;
        }
        Ok(LogicalPlan::Repartition {
            input: Box::new(self),
            partitions,
            keys,
        })
    }

    pub fn alias(self, name: impl Into<String>) -> LogicalPlan {
        LogicalPlan::Alias {
            input: Box::new(self),
            name: name.into(),
        }
    }

    /// An indented tree, for `EXPLAIN` and error messages.
    pub fn display_indent(&self) -> String {
        let mut out = String::new();
        self.fmt_indent(0, &mut out);
        out
    }

    fn fmt_indent(&self, depth: usize, out: &mut String) {
        let pad = "  ".repeat(depth);
        let line = match self {
            LogicalPlan::Scan { source, .. } => format!("Scan {source}"),
            LogicalPlan::Project { exprs, .. } => format!(
                "Project {}",
                list(exprs.iter().map(|(e, n)| format!("{e} AS {n}")))
            ),
            LogicalPlan::Filter { predicate, .. } => format!("Filter {predicate}"),
            LogicalPlan::Explode {
                expr,
                separator,
                name,
                ..
            } => format!("Explode split({expr}, '{separator}') AS {name}"),
            LogicalPlan::Aggregate { group, aggs, .. } => format!(
                "Aggregate group=[{}] aggs=[{}]",
                list(group.iter().map(|(e, _)| e.to_string())),
                list(aggs.iter().map(|(a, n)| format!("{a} AS {n}")))
            ),
            LogicalPlan::Join {
                kind, on, filter, ..
            } => format!(
                "Join {kind:?} on [{}]{}",
                list(on.iter().map(|(l, r)| format!("{l} = {r}"))),
                filter
                    .as_ref()
                    .map(|f| format!(" filter {f}"))
                    .unwrap_or_default()
            ),
            LogicalPlan::Sort { keys, .. } => {
                format!(
                    "Sort {}",
                    list(keys.iter().map(|k| format!(
                        "{}{}",
                        k.expr,
                        if k.descending { " DESC" } else { "" }
                    )))
                )
            }
            LogicalPlan::Limit { skip, fetch, .. } => format!("Limit skip={skip} fetch={fetch:?}"),
            LogicalPlan::Distinct { .. } => "Distinct".to_string(),
            LogicalPlan::Union { .. } => "Union".to_string(),
            LogicalPlan::Repartition {
                partitions, keys, ..
            } => format!(
                "Repartition {partitions} by [{}]",
                list(keys.iter().map(|k| k.to_string()))
            ),
            LogicalPlan::Alias { name, .. } => format!("Alias {name}"),
        };
        out.push_str(&pad);
        out.push_str(&line);
        out.push('\n');
        for c in self.children() {
            c.fmt_indent(depth + 1, out);
        }
    }

    pub fn children(&self) -> Vec<&LogicalPlan> {
        match self {
            LogicalPlan::Scan { .. } => vec![],
            LogicalPlan::Project { input, .. }
            | LogicalPlan::Filter { input, .. }
            | LogicalPlan::Explode { input, .. }
            | LogicalPlan::Aggregate { input, .. }
            | LogicalPlan::Sort { input, .. }
            | LogicalPlan::Limit { input, .. }
            | LogicalPlan::Distinct { input }
            | LogicalPlan::Repartition { input, .. }
            | LogicalPlan::Alias { input, .. } => vec![input],
            LogicalPlan::Join { left, right, .. } => vec![left, right],
            LogicalPlan::Union { inputs } => inputs.iter().collect(),
        }
    }
}

fn list(items: impl Iterator<Item = String>) -> String {
    items.collect::<Vec<_>>().join(", ")
}
