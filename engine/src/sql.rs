//! SQL to logical plan, on `sqlparser`'s AST. A SELECT is planned in
//! Spark's order: FROM and JOIN, WHERE, explode, GROUP BY with the
//! aggregates found in SELECT/HAVING/ORDER BY, HAVING, ORDER BY (on the
//! rows before the final projection, so it may use columns and aggregates
//! the SELECT list drops), the projection, DISTINCT, LIMIT/OFFSET.

use std::collections::BTreeMap;

use sqlparser::ast::{
    self, BinaryOperator, DuplicateTreatment, FunctionArg, FunctionArgExpr, FunctionArguments,
    GroupByExpr, JoinConstraint, JoinOperator, LimitClause, ObjectName, OrderByKind, Query, Select,
    SelectItem, SetExpr, SetOperator, SetQuantifier, Statement, TableFactor, TableWithJoins,
    UnaryOperator,
};
use sqlparser::dialect::GenericDialect;
use sqlparser::parser::Parser;

use crate::error::{EngineError, Result};
use crate::expr::{AggExpr, AggFunc, BinaryOp, Expr, ScalarFunc, col};
use crate::plan::{JoinKind, LogicalPlan, SortKey};
use crate::plan_err;
use crate::source::{Source, TopicRange, default_partitions};
use crate::topic_format::TopicFormat;
use crate::types::{DataType, Schema, Value};

/// Finds a topic's offset ranges by name.
pub type TopicResolver = Box<dyn Fn(&str) -> Result<Vec<TopicRange>> + Send + Sync>;

/// Tables a query can name, and how to find a topic's offset ranges.
#[derive(Default)]
pub struct Catalog {
    tables: BTreeMap<String, LogicalPlan>,
    /// Resolves `topic('name')` to one range per partition (log start to
    /// high watermark); set by the node that plans the query.
    pub topics: Option<TopicResolver>,
}

impl Catalog {
    pub fn register(&mut self, name: &str, plan: LogicalPlan) {
        self.tables.insert(name.to_ascii_lowercase(), plan);
    }

    pub fn table(&self, name: &str) -> Option<&LogicalPlan> {
        self.tables.get(&name.to_ascii_lowercase())
    }
}

/// Plans one SELECT statement.
pub fn plan_sql(sql: &str, catalog: &Catalog) -> Result<LogicalPlan> {
    let statements = Parser::parse_sql(&GenericDialect {}, sql)
        .map_err(|e| EngineError::Syntax(e.to_string()))?;
    let [statement] = statements.as_slice() else {
        return Err(plan_err!(
            "expected one statement, got {}",
            statements.len()
        ));
    };
    let Statement::Query(q) = statement else {
        return Err(plan_err!(
            "only SELECT queries are supported, not: {}",
            first_words(&statement.to_string())
        ));
    };
    Planner {
        catalog,
        ctes: Vec::new(),
    }
    .query(q)
}

/// Plans `INSERT INTO sink SELECT ...` (a stream query's form): the sink's
/// name and the SELECT's plan.
pub fn plan_insert(sql: &str, catalog: &Catalog) -> Result<(String, LogicalPlan)> {
    let statements = Parser::parse_sql(&GenericDialect {}, sql)
        .map_err(|e| EngineError::Syntax(e.to_string()))?;
    let not_insert = |what: String| {
        plan_err!(
            "a stream query is INSERT INTO <sink topic> SELECT ... FROM topic(...), not: {what}"
        )
    };
    let [statement] = statements.as_slice() else {
        return Err(plan_err!(
            "expected one statement, got {}",
            statements.len()
        ));
    };
    let Statement::Insert(insert) = statement else {
        return Err(not_insert(first_words(&statement.to_string())));
    };
    let ast::TableObject::TableName(name) = &insert.table else {
        return Err(not_insert(first_words(&statement.to_string())));
    };
    if !insert.columns.is_empty() || insert.overwrite || insert.partitioned.is_some() {
        return Err(plan_err!(
            "INSERT INTO {}: column lists, OVERWRITE and PARTITION are not supported; the SELECT's columns are written",
            object_name(name)
        ));
    }
    let Some(q) = &insert.source else {
        return Err(not_insert(first_words(&statement.to_string())));
    };
    if matches!(q.body.as_ref(), SetExpr::Values(_)) {
        return Err(not_insert("INSERT ... VALUES".to_string()));
    }
    let plan = Planner {
        catalog,
        ctes: Vec::new(),
    }
    .query(q)?;
    Ok((object_name(name), plan))
}

fn first_words(s: &str) -> String {
    s.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

struct Planner<'a> {
    catalog: &'a Catalog,
    /// WITH tables in scope, innermost last.
    ctes: Vec<(String, LogicalPlan)>,
}

/// Aggregates found while converting expressions of an aggregate query.
struct Aggs {
    list: Vec<(AggExpr, String)>,
}

impl Aggs {
    /// The column an aggregate call becomes (the same call shares one).
    fn add(&mut self, a: AggExpr) -> Expr {
        if let Some((_, n)) = self.list.iter().find(|(x, _)| *x == a) {
            return col(n.clone());
        }
        let name = format!("__agg{}", self.list.len());
        self.list.push((a, name.clone()));
        col(name)
    }
}

/// The SELECT list after converting: each item's expression and name, and
/// the one `explode(split(..))` if there is one.
struct Item {
    expr: Expr,
    name: String,
}

impl Planner<'_> {
    fn query(&mut self, q: &Query) -> Result<LogicalPlan> {
        let depth = self.ctes.len();
        if let Some(with) = &q.with {
            if with.recursive {
                return Err(plan_err!("WITH RECURSIVE is not supported"));
            }
            for cte in &with.cte_tables {
                let plan = self.query(&cte.query)?;
                let name = cte.alias.name.value.clone();
                let plan = plan.alias(name.clone());
                self.ctes.push((name.to_ascii_lowercase(), plan));
            }
        }
        let order: Vec<ast::OrderByExpr> = match &q.order_by {
            None => Vec::new(),
            Some(o) => match &o.kind {
                OrderByKind::Expressions(e) => e.clone(),
                OrderByKind::All(_) => return Err(plan_err!("ORDER BY ALL is not supported")),
            },
        };
        let mut plan = match q.body.as_ref() {
            SetExpr::Select(s) => self.select(s, &order)?,
            other => {
                let p = self.set_expr(other)?;
                if order.is_empty() {
                    p
                } else {
                    let s = p.schema()?;
                    let keys = order
                        .iter()
                        .map(|o| self.sort_key(o, &s, None, &[]))
                        .collect::<Result<Vec<_>>>()?;
                    p.sort(keys)?
                }
            }
        };
        if let Some(limit) = &q.limit_clause {
            let (fetch, skip) = match limit {
                LimitClause::LimitOffset {
                    limit,
                    offset,
                    limit_by,
                } => {
                    if !limit_by.is_empty() {
                        return Err(plan_err!("LIMIT BY is not supported"));
                    }
                    (
                        limit.as_ref().map(count_literal).transpose()?,
                        offset
                            .as_ref()
                            .map(|o| count_literal(&o.value))
                            .transpose()?
                            .unwrap_or(0),
                    )
                }
                LimitClause::OffsetCommaLimit { offset, limit } => {
                    (Some(count_literal(limit)?), count_literal(offset)?)
                }
            };
            plan = plan.limit(skip, fetch);
        }
        if q.fetch.is_some() {
            return Err(plan_err!("FETCH is not supported; use LIMIT"));
        }
        self.ctes.truncate(depth);
        Ok(plan)
    }

    fn set_expr(&mut self, e: &SetExpr) -> Result<LogicalPlan> {
        match e {
            SetExpr::Select(s) => self.select(s, &[]),
            SetExpr::Query(q) => self.query(q),
            SetExpr::SetOperation {
                op: SetOperator::Union,
                set_quantifier,
                left,
                right,
            } => {
                let (l, r) = (self.set_expr(left)?, self.set_expr(right)?);
                let u = LogicalPlan::union(vec![l, r])?;
                Ok(match set_quantifier {
                    SetQuantifier::All => u,
                    SetQuantifier::None | SetQuantifier::Distinct => u.distinct(),
                    q => return Err(plan_err!("UNION {q} is not supported")),
                })
            }
            SetExpr::SetOperation { op, .. } => Err(plan_err!(
                "{op} is not supported (only UNION and UNION ALL)"
            )),
            other => Err(plan_err!(
                "unsupported query form: {}",
                first_words(&other.to_string())
            )),
        }
    }

    fn select(&mut self, s: &Select, order: &[ast::OrderByExpr]) -> Result<LogicalPlan> {
        if s.from.is_empty() {
            return Err(plan_err!("a SELECT needs a FROM clause"));
        }
        if s.from.len() > 1 {
            return Err(plan_err!(
                "cross joins (FROM a, b) are not supported: use JOIN .. ON"
            ));
        }
        if s.having.is_some()
            && matches!(&s.group_by, GroupByExpr::Expressions(g, _) if g.is_empty())
            && !has_aggregate_items(s)
        {
            return Err(plan_err!("HAVING needs GROUP BY or an aggregate"));
        }
        let mut plan = self.from(&s.from[0])?;
        if let Some(w) = &s.selection {
            let schema = plan.schema()?;
            let pred = self.expr(w, &schema, None, "WHERE")?;
            plan = plan.filter(pred)?;
        }

        // explode(split(x, 'sep')) in the SELECT list: a flat-map before
        // everything else the list computes.
        let mut explode_name: Option<String> = None;
        for item in &s.projection {
            let (e, alias) = match item {
                SelectItem::UnnamedExpr(e) => (e, None),
                SelectItem::ExprWithAlias { expr, alias } => (expr, Some(alias.value.clone())),
                _ => continue,
            };
            if let Some((inner, sep)) = explode_call(e)? {
                if explode_name.is_some() {
                    return Err(plan_err!("only one explode() per SELECT"));
                }
                let schema = plan.schema()?;
                let inner = self.expr(inner, &schema, None, "explode()")?;
                let name = alias.unwrap_or_else(|| "col".to_string());
                plan = plan.explode(inner, sep, name.clone())?;
                explode_name = Some(name);
            }
        }

        let group_exprs: Vec<ast::Expr> = match &s.group_by {
            GroupByExpr::Expressions(g, mods) => {
                if !mods.is_empty() {
                    return Err(plan_err!(
                        "GROUP BY modifiers (ROLLUP, CUBE) are not supported"
                    ));
                }
                g.clone()
            }
            GroupByExpr::All(_) => return Err(plan_err!("GROUP BY ALL is not supported")),
        };
        // GROUP BY window(ts, size [, slide]): a TimeWindow node below the
        // aggregate, grouped by the two columns it adds.
        let mut group_exprs = group_exprs;
        let mut windowed = false;
        let mut i = 0;
        while i < group_exprs.len() {
            if let Some((time, size, slide)) = window_call(&group_exprs[i])? {
                if windowed {
                    return Err(plan_err!("only one window() per GROUP BY"));
                }
                windowed = true;
                let schema = plan.schema()?;
                let time = self.expr(time, &schema, None, "window()")?;
                let size_ms = crate::time::parse_interval(&size)
                    .map_err(|e| plan_err!("window() size: {}", strip_kind(e)))?;
                let slide_ms = match &slide {
                    None => size_ms,
                    Some(t) => crate::time::parse_interval(t)
                        .map_err(|e| plan_err!("window() slide: {}", strip_kind(e)))?,
                };
                if slide_ms > size_ms {
                    return Err(plan_err!(
                        "window(): the slide '{}' is longer than the window size '{size}'; a sliding window needs slide <= size",
                        slide.unwrap_or_default()
                    ));
                }
                plan = plan.time_window(time, size_ms, slide_ms)?;
                let ident = |n: &str| ast::Expr::Identifier(ast::Ident::new(n));
                group_exprs[i] = ident("window_start");
                group_exprs.insert(i + 1, ident("window_end"));
                i += 2;
            } else {
                i += 1;
            }
        }
        let aggregate = !group_exprs.is_empty() || has_aggregate_items(s) || s.having.is_some();
        if aggregate && explode_name.is_some() {
            return Err(plan_err!(
                "explode() cannot be combined with GROUP BY in one SELECT: explode in a subquery, then group"
            ));
        }

        let input_schema = plan.schema()?;
        let mut aggs = Aggs { list: Vec::new() };
        // Convert the SELECT list against the input rows.
        let mut items: Vec<Item> = Vec::new();
        for (i, item) in s.projection.iter().enumerate() {
            match item {
                SelectItem::Wildcard(_) => {
                    if aggregate {
                        return Err(plan_err!("SELECT * cannot be used with GROUP BY"));
                    }
                    for f in &input_schema.fields {
                        items.push(Item {
                            expr: col(f.qualified_name()),
                            name: f.name.clone(),
                        });
                    }
                }
                SelectItem::QualifiedWildcard(kind, _) => {
                    let q = kind.to_string();
                    let mut any = false;
                    for f in &input_schema.fields {
                        if f.qualifier
                            .as_deref()
                            .is_some_and(|x| x.eq_ignore_ascii_case(&q))
                        {
                            items.push(Item {
                                expr: col(f.qualified_name()),
                                name: f.name.clone(),
                            });
                            any = true;
                        }
                    }
                    if !any {
                        return Err(plan_err!("{q}.* names no table in FROM"));
                    }
                }
                SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => {
                    let alias = match item {
                        SelectItem::ExprWithAlias { alias, .. } => Some(alias.value.clone()),
                        _ => None,
                    };
                    if explode_call(e)?.is_some() {
                        let n = explode_name.clone().unwrap_or_default();
                        items.push(Item {
                            expr: col(n.clone()),
                            name: n,
                        });
                        continue;
                    }
                    let expr = self.expr(
                        e,
                        &input_schema,
                        if aggregate { Some(&mut aggs) } else { None },
                        "SELECT",
                    )?;
                    let name = alias.unwrap_or_else(|| match e {
                        ast::Expr::Identifier(id) => id.value.clone(),
                        ast::Expr::CompoundIdentifier(ids) => {
                            ids.last().map(|i| i.value.clone()).unwrap_or_default()
                        }
                        other => {
                            let t = other.to_string();
                            if t.len() > 64 { format!("_c{i}") } else { t }
                        }
                    });
                    items.push(Item { expr, name });
                }
                other => return Err(plan_err!("unsupported SELECT item: {other}")),
            }
        }

        let mut distinct = match &s.distinct {
            None | Some(ast::Distinct::All) => false,
            Some(ast::Distinct::Distinct) => true,
            Some(ast::Distinct::On(_)) => return Err(plan_err!("DISTINCT ON is not supported")),
        };
        let sort_after = distinct;

        if aggregate {
            // GROUP BY may name SELECT aliases or positions.
            let mut group: Vec<(Expr, String)> = Vec::new();
            for g in &group_exprs {
                let e = match g {
                    ast::Expr::Value(v) if matches!(v.value, ast::Value::Number(..)) => {
                        let k = count_literal(g)?;
                        items
                            .get(k.wrapping_sub(1))
                            .map(|it| it.expr.clone())
                            .ok_or_else(|| {
                                plan_err!("GROUP BY {k}: the SELECT list has {} items", items.len())
                            })?
                    }
                    ast::Expr::Identifier(id) if input_schema.index_of(&id.value).is_err() => {
                        match items
                            .iter()
                            .find(|it| it.name.eq_ignore_ascii_case(&id.value))
                        {
                            Some(it) => it.expr.clone(),
                            None => self.expr(g, &input_schema, None, "GROUP BY")?,
                        }
                    }
                    _ => self.expr(g, &input_schema, None, "GROUP BY")?,
                };
                if contains_agg_column(&e) {
                    return Err(plan_err!("GROUP BY cannot contain an aggregate: {g}"));
                }
                let name = match &e {
                    Expr::Column(c) => c.rsplit('.').next().unwrap_or(c).to_string(),
                    _ => format!("__group{}", group.len()),
                };
                let name = if group.iter().any(|(_, n)| n.eq_ignore_ascii_case(&name)) {
                    format!("__group{}", group.len())
                } else {
                    name
                };
                group.push((e, name));
            }
            let having = s
                .having
                .as_ref()
                .map(|h| self.expr(h, &input_schema, Some(&mut aggs), "HAVING"))
                .transpose()?;
            let keys = order
                .iter()
                .map(|o| {
                    if sort_after {
                        Ok(None)
                    } else {
                        self.sort_key(o, &input_schema, Some(&mut aggs), &items)
                            .map(Some)
                    }
                })
                .collect::<Result<Vec<_>>>()?;
            plan = plan.aggregate(group.clone(), aggs.list.clone())?;
            // Above the aggregate, group expressions and aggregate calls are columns.
            let post =
                |e: &Expr, clause: &str| -> Result<Expr> { to_post_aggregate(e, &group, clause) };
            if let Some(h) = having {
                plan = plan.filter(post(&h, "HAVING")?)?;
            }
            let keys: Vec<SortKey> = keys
                .into_iter()
                .flatten()
                .map(|k| {
                    Ok(SortKey {
                        expr: post(&k.expr, "ORDER BY")?,
                        ..k
                    })
                })
                .collect::<Result<_>>()?;
            if !keys.is_empty() {
                plan = plan.sort(keys)?;
            }
            let exprs = items
                .iter()
                .map(|it| Ok((post(&it.expr, "SELECT")?, it.name.clone())))
                .collect::<Result<Vec<_>>>()?;
            plan = plan.project(exprs)?;
        } else {
            if !sort_after && !order.is_empty() {
                let keys = order
                    .iter()
                    .map(|o| self.sort_key(o, &input_schema, None, &items))
                    .collect::<Result<Vec<_>>>()?;
                plan = plan.sort(keys)?;
            }
            plan = plan.project(
                items
                    .iter()
                    .map(|it| (it.expr.clone(), it.name.clone()))
                    .collect(),
            )?;
        }
        if distinct {
            plan = plan.distinct();
            distinct = false;
        }
        let _ = distinct;
        if sort_after && !order.is_empty() {
            let out = plan.schema()?;
            let keys = order
                .iter()
                .map(|o| self.sort_key(o, &out, None, &[]))
                .collect::<Result<Vec<_>>>()?;
            plan = plan.sort(keys)?;
        }
        Ok(plan)
    }

    /// A sort key: an ordinal or a SELECT alias means that item, anything
    /// else is an expression over `schema`.
    fn sort_key(
        &self,
        o: &ast::OrderByExpr,
        schema: &Schema,
        aggs: Option<&mut Aggs>,
        items: &[Item],
    ) -> Result<SortKey> {
        let expr = match &o.expr {
            ast::Expr::Value(v) if matches!(v.value, ast::Value::Number(..)) => {
                let k = count_literal(&o.expr)?;
                if items.is_empty() {
                    let f = schema.fields.get(k.wrapping_sub(1)).ok_or_else(|| {
                        plan_err!("ORDER BY {k}: there are {} columns", schema.len())
                    })?;
                    col(f.qualified_name())
                } else {
                    items
                        .get(k.wrapping_sub(1))
                        .map(|it| it.expr.clone())
                        .ok_or_else(|| {
                            plan_err!("ORDER BY {k}: the SELECT list has {} items", items.len())
                        })?
                }
            }
            ast::Expr::Identifier(id)
                if items
                    .iter()
                    .any(|it| it.name.eq_ignore_ascii_case(&id.value))
                    && schema.index_of(&id.value).is_err() =>
            {
                items
                    .iter()
                    .find(|it| it.name.eq_ignore_ascii_case(&id.value))
                    .map(|it| it.expr.clone())
                    .unwrap_or_else(|| col(id.value.clone()))
            }
            e => self.expr(e, schema, aggs, "ORDER BY")?,
        };
        let descending = matches!(o.options.sort, Some(ast::OrderBySort::Desc));
        if matches!(o.options.sort, Some(ast::OrderBySort::Using(_))) {
            return Err(plan_err!("ORDER BY .. USING is not supported"));
        }
        Ok(SortKey {
            expr,
            descending,
            nulls_first: o.options.nulls_first.unwrap_or(!descending),
        })
    }

    fn from(&mut self, t: &TableWithJoins) -> Result<LogicalPlan> {
        let mut plan = self.relation(&t.relation)?;
        for j in &t.joins {
            let right = self.relation(&j.relation)?;
            let (kind, constraint) = match &j.join_operator {
                JoinOperator::Join(c) | JoinOperator::Inner(c) => (JoinKind::Inner, c),
                JoinOperator::Left(c) | JoinOperator::LeftOuter(c) => (JoinKind::Left, c),
                JoinOperator::Right(c) | JoinOperator::RightOuter(c) => (JoinKind::Right, c),
                JoinOperator::FullOuter(c) => (JoinKind::Full, c),
                other => {
                    return Err(plan_err!(
                        "unsupported join: {}",
                        first_words(&format!("{other:?}"))
                    ));
                }
            };
            let (ls, rs) = (plan.schema()?, right.schema()?);
            let joined = Schema::new(ls.fields.iter().chain(&rs.fields).cloned().collect());
            let (on, filter) = match constraint {
                JoinConstraint::On(e) => {
                    let cond = self.expr(e, &joined, None, "JOIN ON")?;
                    split_join_condition(cond, &ls, &rs)
                }
                JoinConstraint::Using(cols) => {
                    let mut on = Vec::new();
                    for c in cols {
                        let name = c.to_string();
                        ls.index_of(&name)?;
                        rs.index_of(&name)?;
                        on.push((qualified_in(&ls, &name), qualified_in(&rs, &name)));
                    }
                    (on, None)
                }
                _ => return Err(plan_err!("a join needs ON or USING")),
            };
            plan = plan.join(right, kind, on, filter)?;
        }
        Ok(plan)
    }

    fn relation(&mut self, t: &TableFactor) -> Result<LogicalPlan> {
        match t {
            TableFactor::Table {
                name, alias, args, ..
            } => {
                let n = object_name(name);
                let plan = match args {
                    Some(a) => self.table_function(&n, &a.args)?,
                    None => {
                        let lower = n.to_ascii_lowercase();
                        match self.ctes.iter().rev().find(|(c, _)| *c == lower) {
                            Some((_, p)) => p.clone(),
                            None => self
                                .catalog
                                .table(&n)
                                .cloned()
                                .ok_or_else(|| plan_err!("unknown table '{n}' (read files with read_csv('path'), read_json, read_parquet, read_text, or topic('name'))"))?
                                .alias(n.clone()),
                        }
                    }
                };
                Ok(match alias {
                    Some(a) => {
                        if !a.columns.is_empty() {
                            return Err(plan_err!(
                                "column aliases on a table ({}) are not supported",
                                a.name.value
                            ));
                        }
                        plan.alias(a.name.value.clone())
                    }
                    None => plan,
                })
            }
            TableFactor::Derived {
                subquery,
                alias,
                lateral,
                ..
            } => {
                if *lateral {
                    return Err(plan_err!("LATERAL subqueries are not supported"));
                }
                let plan = self.query(subquery)?;
                Ok(match alias {
                    Some(a) => plan.alias(a.name.value.clone()),
                    None => plan,
                })
            }
            TableFactor::NestedJoin {
                table_with_joins,
                alias,
            } => {
                let plan = self.from(table_with_joins)?;
                Ok(match alias {
                    Some(a) => plan.alias(a.name.value.clone()),
                    None => plan,
                })
            }
            other => Err(plan_err!(
                "unsupported FROM item: {}",
                first_words(&other.to_string())
            )),
        }
    }

    fn table_function(&self, name: &str, args: &[FunctionArg]) -> Result<LogicalPlan> {
        let mut positional: Vec<Value> = Vec::new();
        for a in args {
            match a {
                FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => positional.push(literal(e)?),
                other => return Err(plan_err!("{name}(): unsupported argument {other}")),
            }
        }
        let text = |i: usize, what: &str| -> Result<String> {
            match positional.get(i) {
                Some(Value::Str(s)) => Ok(s.clone()),
                _ => Err(plan_err!(
                    "{name}() needs the {what} as a string as argument {}",
                    i + 1
                )),
            }
        };
        let parts = |path: &str| -> Result<u32> {
            match positional.get(1) {
                None => default_partitions(path),
                Some(Value::Int(n)) if *n >= 1 && *n <= 10_000 => Ok(*n as u32),
                Some(v) => Err(plan_err!(
                    "{name}(): the partition count must be an integer from 1 to 10000, not {v}"
                )),
            }
        };
        let source = match name.to_ascii_lowercase().as_str() {
            "read_csv" => {
                let path = text(0, "path")?;
                let delimiter = match positional.get(2) {
                    None => b',',
                    Some(Value::Str(d)) if d.len() == 1 => d.as_bytes()[0],
                    Some(v) => {
                        return Err(plan_err!(
                            "read_csv(): the delimiter must be one character, not {v}"
                        ));
                    }
                };
                Source::Csv {
                    partitions: parts(&path)?,
                    path,
                    delimiter,
                }
            }
            "read_json" => {
                let path = text(0, "path")?;
                Source::Json {
                    partitions: parts(&path)?,
                    path,
                }
            }
            "read_parquet" => {
                let path = text(0, "path")?;
                Source::Parquet {
                    partitions: parts(&path)?,
                    path,
                }
            }
            "read_text" => {
                let path = text(0, "path")?;
                Source::Text {
                    partitions: parts(&path)?,
                    path,
                }
            }
            "topic" | "topic_table" => {
                let table = name.eq_ignore_ascii_case("topic_table");
                let func = if table { "topic_table" } else { "topic" };
                let topic = text(0, "topic name")?;
                let resolve = self.catalog.topics.as_ref().ok_or_else(|| {
                    plan_err!(
                        "{func}('{topic}'): this context reads no topics (run against a server)"
                    )
                })?;
                let format = match (positional.get(1), positional.get(2), positional.get(3)) {
                    (None, None, None) => None,
                    (Some(Value::Str(f)), Some(Value::Str(s)), None) => {
                        Some(TopicFormat::parse(f, s)?)
                    }
                    _ => {
                        return Err(plan_err!(
                            "{func}() takes a name, or a name, a value format and a schema: {func}('{topic}', 'json', 'user STRING, ts TIMESTAMP')"
                        ));
                    }
                };
                Source::Topic {
                    ranges: resolve(&topic)?,
                    topic,
                    format,
                    table,
                }
            }
            other => {
                return Err(plan_err!(
                    "unknown table function {other}() (known: read_csv, read_json, read_parquet, read_text, topic, topic_table)"
                ));
            }
        };
        LogicalPlan::scan(source)
    }

    /// Converts a SQL expression over `schema`. With `aggs`, aggregate calls
    /// become columns registered there; without, they are an error naming
    /// the clause.
    fn expr(
        &self,
        e: &ast::Expr,
        schema: &Schema,
        mut aggs: Option<&mut Aggs>,
        clause: &str,
    ) -> Result<Expr> {
        let out = match e {
            ast::Expr::Identifier(id) => {
                let n = id.value.clone();
                schema.index_of(&n)?;
                col(n)
            }
            ast::Expr::CompoundIdentifier(ids) => {
                let n = ids
                    .iter()
                    .map(|i| i.value.as_str())
                    .collect::<Vec<_>>()
                    .join(".");
                schema.index_of(&n)?;
                col(n)
            }
            ast::Expr::Value(_) => Expr::Literal(literal(e)?),
            ast::Expr::Nested(inner) => self.expr(inner, schema, aggs, clause)?,
            ast::Expr::UnaryOp { op, expr } => match op {
                UnaryOperator::Not => self.expr(expr, schema, aggs, clause)?.not(),
                UnaryOperator::Plus => self.expr(expr, schema, aggs, clause)?,
                UnaryOperator::Minus => match self.expr(expr, schema, aggs, clause)? {
                    Expr::Literal(Value::Int(i)) => Expr::Literal(Value::Int(i.wrapping_neg())),
                    Expr::Literal(Value::Float(x)) => Expr::Literal(Value::Float(-x)),
                    other => Expr::Negate(Box::new(other)),
                },
                other => return Err(plan_err!("unsupported operator {other} in {clause}")),
            },
            ast::Expr::BinaryOp { left, op, right } => {
                let op = match op {
                    BinaryOperator::Plus => BinaryOp::Plus,
                    BinaryOperator::Minus => BinaryOp::Minus,
                    BinaryOperator::Multiply => BinaryOp::Multiply,
                    BinaryOperator::Divide => BinaryOp::Divide,
                    BinaryOperator::Modulo => BinaryOp::Modulo,
                    BinaryOperator::Eq => BinaryOp::Eq,
                    BinaryOperator::NotEq => BinaryOp::NotEq,
                    BinaryOperator::Lt => BinaryOp::Lt,
                    BinaryOperator::LtEq => BinaryOp::LtEq,
                    BinaryOperator::Gt => BinaryOp::Gt,
                    BinaryOperator::GtEq => BinaryOp::GtEq,
                    BinaryOperator::And => BinaryOp::And,
                    BinaryOperator::Or => BinaryOp::Or,
                    BinaryOperator::StringConcat => BinaryOp::Concat,
                    other => return Err(plan_err!("unsupported operator {other} in {clause}")),
                };
                let l = self.expr(left, schema, aggs.as_deref_mut(), clause)?;
                let r = self.expr(right, schema, aggs, clause)?;
                Expr::Binary {
                    op,
                    left: Box::new(l),
                    right: Box::new(r),
                }
            }
            ast::Expr::IsNull(x) => self.expr(x, schema, aggs, clause)?.is_null(),
            ast::Expr::IsNotNull(x) => self.expr(x, schema, aggs, clause)?.is_not_null(),
            ast::Expr::Between {
                expr,
                negated,
                low,
                high,
            } => {
                let x = self.expr(expr, schema, aggs.as_deref_mut(), clause)?;
                let lo = self.expr(low, schema, aggs.as_deref_mut(), clause)?;
                let hi = self.expr(high, schema, aggs, clause)?;
                let b = x.clone().gt_eq(lo).and(x.lt_eq(hi));
                if *negated { b.not() } else { b }
            }
            ast::Expr::Like {
                negated,
                expr,
                pattern,
                escape_char,
                any,
            }
            | ast::Expr::ILike {
                negated,
                expr,
                pattern,
                escape_char,
                any,
            } => {
                if *any || escape_char.is_some() {
                    return Err(plan_err!(
                        "LIKE ANY and ESCAPE are not supported (\\ escapes)"
                    ));
                }
                let pattern = match literal(pattern)? {
                    Value::Str(s) => s,
                    v => {
                        return Err(plan_err!(
                            "a LIKE pattern must be a string literal, not {v}"
                        ));
                    }
                };
                let x = self.expr(expr, schema, aggs, clause)?;
                Expr::Like {
                    expr: Box::new(x),
                    pattern,
                    negated: *negated,
                    case_insensitive: matches!(e, ast::Expr::ILike { .. }),
                }
            }
            ast::Expr::In {
                expr,
                target,
                negated,
                ..
            } => {
                let ast::InTarget::List(list) = target else {
                    return Err(plan_err!(
                        "IN supports a list of values only, not a subquery"
                    ));
                };
                let x = self.expr(expr, schema, aggs.as_deref_mut(), clause)?;
                let list = list
                    .iter()
                    .map(|i| self.expr(i, schema, aggs.as_deref_mut(), clause))
                    .collect::<Result<_>>()?;
                Expr::InList {
                    expr: Box::new(x),
                    list,
                    negated: *negated,
                }
            }
            ast::Expr::Cast {
                expr,
                data_type,
                format,
                ..
            } => {
                if format.is_some() {
                    return Err(plan_err!("CAST .. FORMAT is not supported"));
                }
                let to = sql_type(data_type)?;
                self.expr(expr, schema, aggs, clause)?.cast(to)
            }
            ast::Expr::Case {
                operand,
                conditions,
                else_result,
                ..
            } => {
                let operand = operand
                    .as_ref()
                    .map(|o| {
                        self.expr(o, schema, aggs.as_deref_mut(), clause)
                            .map(Box::new)
                    })
                    .transpose()?;
                let mut branches = Vec::new();
                for c in conditions {
                    let w = self.expr(&c.condition, schema, aggs.as_deref_mut(), clause)?;
                    let t = self.expr(&c.result, schema, aggs.as_deref_mut(), clause)?;
                    branches.push((w, t));
                }
                let otherwise = else_result
                    .as_ref()
                    .map(|o| self.expr(o, schema, aggs, clause).map(Box::new))
                    .transpose()?;
                Expr::Case {
                    operand,
                    branches,
                    otherwise,
                }
            }
            ast::Expr::Function(f) => return self.function(f, schema, aggs, clause),
            ast::Expr::Substring {
                expr,
                substring_from,
                substring_for,
                ..
            } => {
                let mut args = vec![self.expr(expr, schema, aggs.as_deref_mut(), clause)?];
                args.push(match substring_from {
                    Some(f) => self.expr(f, schema, aggs.as_deref_mut(), clause)?,
                    None => Expr::Literal(Value::Int(1)),
                });
                if let Some(l) = substring_for {
                    args.push(self.expr(l, schema, aggs, clause)?);
                }
                Expr::call(ScalarFunc::Substring, args)
            }
            ast::Expr::Trim {
                expr,
                trim_where,
                trim_what,
                ..
            } => {
                if trim_where.is_some() || trim_what.is_some() {
                    return Err(plan_err!(
                        "TRIM(LEADING/TRAILING/.. FROM ..) is not supported; trim(x) trims spaces"
                    ));
                }
                Expr::call(
                    ScalarFunc::Trim,
                    vec![self.expr(expr, schema, aggs, clause)?],
                )
            }
            other => return Err(plan_err!("unsupported expression in {clause}: {other}")),
        };
        if contains_agg_column(&out) {
            // Typed once the aggregate's columns exist.
            return Ok(out);
        }
        out.data_type(schema).map_err(|err| match err {
            EngineError::Plan(m) => plan_err!("{m} (in {clause})"),
            other => other,
        })?;
        Ok(out)
    }

    fn function(
        &self,
        f: &ast::Function,
        schema: &Schema,
        aggs: Option<&mut Aggs>,
        clause: &str,
    ) -> Result<Expr> {
        // Keywords the parser reads as niladic functions (`user`,
        // `current_date`) name a column when one has that name.
        if matches!(f.args, FunctionArguments::None) {
            let n = object_name(&f.name);
            if schema.index_of(&n).is_ok() {
                return Ok(col(n));
            }
        }
        let name = object_name(&f.name).to_ascii_lowercase();
        let (args, distinct): (Vec<&FunctionArgExpr>, bool) = match &f.args {
            FunctionArguments::None => (Vec::new(), false),
            FunctionArguments::List(l) => {
                if !l.clauses.is_empty() {
                    return Err(plan_err!("{name}(): argument clauses are not supported"));
                }
                let mut out = Vec::new();
                for a in &l.args {
                    match a {
                        FunctionArg::Unnamed(x) => out.push(x),
                        other => {
                            return Err(plan_err!(
                                "{name}(): named argument {other} is not supported"
                            ));
                        }
                    }
                }
                (
                    out,
                    matches!(l.duplicate_treatment, Some(DuplicateTreatment::Distinct)),
                )
            }
            FunctionArguments::Subquery(_) => {
                return Err(plan_err!("{name}(): subquery arguments are not supported"));
            }
        };
        if f.over.is_some() {
            return Err(plan_err!(
                "window functions ({name}() OVER ..) are not supported"
            ));
        }
        if f.filter.is_some() {
            return Err(plan_err!("{name}() FILTER (WHERE ..) is not supported"));
        }
        let agg = match name.as_str() {
            "count" => Some(if distinct {
                AggFunc::CountDistinct
            } else {
                AggFunc::Count
            }),
            "sum" => Some(AggFunc::Sum),
            "min" => Some(AggFunc::Min),
            "max" => Some(AggFunc::Max),
            "avg" | "mean" => Some(AggFunc::Avg),
            _ => None,
        };
        if let Some(func) = agg {
            let Some(aggs) = aggs else {
                return Err(plan_err!(
                    "aggregate function {name}() is not allowed in {clause}"
                ));
            };
            if distinct && func != AggFunc::CountDistinct {
                return Err(plan_err!(
                    "{name}(DISTINCT ..) is not supported; only count(DISTINCT ..)"
                ));
            }
            let a = match (func, args.as_slice()) {
                (AggFunc::Count, [FunctionArgExpr::Wildcard]) => AggExpr {
                    func: AggFunc::CountStar,
                    arg: None,
                },
                (_, [FunctionArgExpr::Expr(x)]) => {
                    let arg =
                        self.expr(x, schema, None, &format!("{name}()"))
                            .map_err(|e| match e {
                                EngineError::Plan(m) if m.contains("aggregate function") => {
                                    plan_err!("aggregate calls cannot be nested: {f}")
                                }
                                other => other,
                            })?;
                    // count(1) counts rows, as count(*) does.
                    if func == AggFunc::Count && matches!(arg, Expr::Literal(ref v) if !v.is_null())
                    {
                        AggExpr {
                            func: AggFunc::CountStar,
                            arg: None,
                        }
                    } else {
                        AggExpr {
                            func,
                            arg: Some(arg),
                        }
                    }
                }
                _ => return Err(plan_err!("{name}() takes one argument")),
            };
            a.data_type(schema)?;
            return Ok(aggs.add(a));
        }
        if name == "window" {
            return Err(plan_err!(
                "window() is only supported in GROUP BY (GROUP BY window(ts, '1 minute')); select its columns window_start and window_end"
            ));
        }
        if name == "explode" || name == "split" {
            return Err(plan_err!(
                "{name}() is only supported as explode(split(x, 'sep')) directly in the SELECT list"
            ));
        }
        let func =
            ScalarFunc::from_name(&name).ok_or_else(|| plan_err!("unknown function {name}()"))?;
        let mut converted = Vec::new();
        let mut aggs = aggs;
        for a in args {
            match a {
                FunctionArgExpr::Expr(x) => {
                    converted.push(self.expr(x, schema, aggs.as_deref_mut(), clause)?)
                }
                _ => return Err(plan_err!("{name}(*) is not valid")),
            }
        }
        let e = Expr::call(func, converted);
        e.data_type(schema)?;
        Ok(e)
    }
}

fn has_aggregate_items(s: &Select) -> bool {
    let text = s
        .projection
        .iter()
        .map(|p| p.to_string().to_ascii_lowercase())
        .collect::<Vec<_>>()
        .join(" ");
    // A cheap pre-check; the real check happens while converting.
    ["count(", "sum(", "min(", "max(", "avg(", "mean("]
        .iter()
        .any(|f| text.contains(f))
}

fn contains_agg_column(e: &Expr) -> bool {
    let mut cols = Vec::new();
    e.columns(&mut cols);
    cols.iter().any(|c| c.starts_with("__agg"))
}

/// Rewrites an expression over the input rows into one over the
/// aggregate's output: group expressions become their columns, and any
/// other column left is an error.
fn to_post_aggregate(e: &Expr, group: &[(Expr, String)], clause: &str) -> Result<Expr> {
    if let Some((_, n)) = group.iter().find(|(g, _)| g == e) {
        return Ok(col(n.clone()));
    }
    let rec = |x: &Expr| to_post_aggregate(x, group, clause);
    Ok(match e {
        Expr::Column(c) if c.starts_with("__agg") => e.clone(),
        Expr::Column(c) => {
            return Err(plan_err!(
                "column '{c}' in {clause} must appear in GROUP BY or be used in an aggregate function"
            ));
        }
        Expr::Literal(_) => e.clone(),
        Expr::Binary { op, left, right } => Expr::Binary {
            op: *op,
            left: Box::new(rec(left)?),
            right: Box::new(rec(right)?),
        },
        Expr::Not(x) => Expr::Not(Box::new(rec(x)?)),
        Expr::Negate(x) => Expr::Negate(Box::new(rec(x)?)),
        Expr::IsNull(x) => Expr::IsNull(Box::new(rec(x)?)),
        Expr::IsNotNull(x) => Expr::IsNotNull(Box::new(rec(x)?)),
        Expr::Case {
            operand,
            branches,
            otherwise,
        } => Expr::Case {
            operand: operand.as_ref().map(|o| rec(o).map(Box::new)).transpose()?,
            branches: branches
                .iter()
                .map(|(w, t)| Ok((rec(w)?, rec(t)?)))
                .collect::<Result<_>>()?,
            otherwise: otherwise
                .as_ref()
                .map(|o| rec(o).map(Box::new))
                .transpose()?,
        },
        Expr::Cast { expr, to } => Expr::Cast {
            expr: Box::new(rec(expr)?),
            to: *to,
        },
        Expr::Like {
            expr,
            pattern,
            negated,
            case_insensitive,
        } => Expr::Like {
            expr: Box::new(rec(expr)?),
            pattern: pattern.clone(),
            negated: *negated,
            case_insensitive: *case_insensitive,
        },
        Expr::InList {
            expr,
            list,
            negated,
        } => Expr::InList {
            expr: Box::new(rec(expr)?),
            list: list.iter().map(rec).collect::<Result<_>>()?,
            negated: *negated,
        },
        Expr::Function { func, args } => Expr::Function {
            func: *func,
            args: args.iter().map(rec).collect::<Result<_>>()?,
        },
    })
}

/// Splits an ON condition into equalities between the two sides (hash
/// keys) and the rest (a filter on joined rows).
fn split_join_condition(cond: Expr, ls: &Schema, rs: &Schema) -> (Vec<(Expr, Expr)>, Option<Expr>) {
    let mut conjuncts = Vec::new();
    flatten_and(cond, &mut conjuncts);
    let mut on = Vec::new();
    let mut rest: Option<Expr> = None;
    let only = |e: &Expr, s: &Schema| {
        let mut cols = Vec::new();
        e.columns(&mut cols);
        !cols.is_empty() && cols.iter().all(|c| s.index_of(c).is_ok())
    };
    for c in conjuncts {
        if let Expr::Binary {
            op: BinaryOp::Eq,
            left,
            right,
        } = &c
        {
            if only(left, ls) && only(right, rs) {
                on.push((*left.clone(), *right.clone()));
                continue;
            }
            if only(left, rs) && only(right, ls) {
                on.push((*right.clone(), *left.clone()));
                continue;
            }
        }
        rest = Some(match rest {
            None => c,
            Some(r) => r.and(c),
        });
    }
    (on, rest)
}

fn flatten_and(e: Expr, out: &mut Vec<Expr>) {
    match e {
        Expr::Binary {
            op: BinaryOp::And,
            left,
            right,
        } => {
            flatten_and(*left, out);
            flatten_and(*right, out);
        }
        other => out.push(other),
    }
}

fn qualified_in(s: &Schema, name: &str) -> Expr {
    match s.index_of(name) {
        Ok(i) => col(s.fields[i].qualified_name()),
        Err(_) => col(name.to_string()),
    }
}

fn object_name(n: &ObjectName) -> String {
    n.0.iter()
        .map(|p| match p {
            ast::ObjectNamePart::Identifier(i) => i.value.clone(),
            other => other.to_string(),
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// A planning error's message without its "planning error: " prefix.
fn strip_kind(e: EngineError) -> String {
    match e {
        EngineError::Plan(m) => m,
        other => other.to_string(),
    }
}

/// `window(time, 'size' [, 'slide'])`: the time expression and the
/// interval texts.
fn window_call(e: &ast::Expr) -> Result<Option<(&ast::Expr, String, Option<String>)>> {
    let ast::Expr::Function(f) = e else {
        return Ok(None);
    };
    if !object_name(&f.name).eq_ignore_ascii_case("window") {
        return Ok(None);
    }
    let bad = || {
        plan_err!(
            "window() takes a TIMESTAMP column and one or two interval strings: window(ts, '10 minutes' [, '5 minutes'])"
        )
    };
    let FunctionArguments::List(l) = &f.args else {
        return Err(bad());
    };
    let mut args = Vec::new();
    for a in &l.args {
        match a {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(x)) => args.push(x),
            _ => return Err(bad()),
        }
    }
    let text = |x: &ast::Expr| match literal(x) {
        Ok(Value::Str(s)) => Ok(s),
        _ => Err(bad()),
    };
    match args.as_slice() {
        [t, size] => Ok(Some((t, text(size)?, None))),
        [t, size, slide] => Ok(Some((t, text(size)?, Some(text(slide)?)))),
        _ => Err(bad()),
    }
}

/// `explode(split(x, 'sep'))`: the inner expression and the separator.
fn explode_call(e: &ast::Expr) -> Result<Option<(&ast::Expr, String)>> {
    let ast::Expr::Function(f) = e else {
        return Ok(None);
    };
    if !object_name(&f.name).eq_ignore_ascii_case("explode") {
        return Ok(None);
    }
    let bad = || plan_err!("explode() supports explode(split(expr, 'separator')) only");
    let FunctionArguments::List(l) = &f.args else {
        return Err(bad());
    };
    let [FunctionArg::Unnamed(FunctionArgExpr::Expr(ast::Expr::Function(split)))] =
        l.args.as_slice()
    else {
        return Err(bad());
    };
    if !object_name(&split.name).eq_ignore_ascii_case("split") {
        return Err(bad());
    }
    let FunctionArguments::List(sl) = &split.args else {
        return Err(bad());
    };
    let [
        FunctionArg::Unnamed(FunctionArgExpr::Expr(inner)),
        FunctionArg::Unnamed(FunctionArgExpr::Expr(sep)),
    ] = sl.args.as_slice()
    else {
        return Err(bad());
    };
    match literal(sep)? {
        Value::Str(s) if !s.is_empty() => Ok(Some((inner, s))),
        _ => Err(plan_err!(
            "split(): the separator must be a non-empty string literal (it is matched literally, not as a regex)"
        )),
    }
}

fn literal(e: &ast::Expr) -> Result<Value> {
    match e {
        ast::Expr::Value(v) => Ok(match &v.value {
            ast::Value::Number(n, _) => match n.parse::<i64>() {
                Ok(i) => Value::Int(i),
                Err(_) => Value::Float(n.parse::<f64>().map_err(|_| plan_err!("bad number {n}"))?),
            },
            ast::Value::SingleQuotedString(s) | ast::Value::DoubleQuotedString(s) => {
                Value::Str(s.clone())
            }
            ast::Value::Boolean(b) => Value::Bool(*b),
            ast::Value::Null => Value::Null,
            other => return Err(plan_err!("unsupported literal {other}")),
        }),
        ast::Expr::UnaryOp {
            op: UnaryOperator::Minus,
            expr,
        } => match literal(expr)? {
            Value::Int(i) => Ok(Value::Int(i.wrapping_neg())),
            Value::Float(x) => Ok(Value::Float(-x)),
            v => Err(plan_err!("cannot negate {v}")),
        },
        other => Err(plan_err!("expected a literal, got {other}")),
    }
}

fn count_literal(e: &ast::Expr) -> Result<usize> {
    match literal(e)? {
        Value::Int(i) if i >= 0 => Ok(i as usize),
        v => Err(plan_err!("expected a non-negative integer, got {v}")),
    }
}

fn sql_type(t: &ast::DataType) -> Result<DataType> {
    use ast::DataType as T;
    Ok(match t {
        T::Int(_)
        | T::Integer(_)
        | T::BigInt(_)
        | T::SmallInt(_)
        | T::TinyInt(_)
        | T::Int64
        | T::Int32 => DataType::Int64,
        T::Double(_)
        | T::DoublePrecision
        | T::Float(_)
        | T::Real
        | T::Float64
        | T::Decimal(_)
        | T::Numeric(_) => DataType::Float64,
        T::Varchar(_) | T::Text | T::String(_) | T::Char(_) | T::CharacterVarying(_) => {
            DataType::Utf8
        }
        T::Boolean | T::Bool => DataType::Boolean,
        T::Timestamp(..) => DataType::Timestamp,
        other => {
            return Err(plan_err!(
                "unsupported type {other} (use BIGINT, DOUBLE, STRING, BOOLEAN or TIMESTAMP)"
            ));
        }
    })
}
