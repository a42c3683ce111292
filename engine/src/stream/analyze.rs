//! A stream query, analysed once when it is defined: its one input topic,
//! the tables it joins (compacted topics read with `topic_table()`), the
//! stateless part, and for an aggregation the aggregate and what is
//! computed above it. Queries a micro-batch engine cannot answer
//! incrementally are refused here, with Spark's reasons.

use serde::{Deserialize, Serialize};

use super::options::{OutputMode, StreamOptions};
use crate::error::Result;
use crate::expr::{AggExpr, AggFunc, Expr};
use crate::plan::{JoinKind, LogicalPlan};
use crate::plan_err;
use crate::source::Source;
use crate::sql::{Catalog, plan_insert};
use crate::types::{DataType, Field, Schema};

/// One step above the aggregate, applied to a group's final row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum PostStep {
    /// `input`: the columns the step reads; `types`: each output's type.
    Project {
        input: Schema,
        exprs: Vec<(Expr, String)>,
        types: Vec<DataType>,
    },
    Filter {
        input: Schema,
        predicate: Expr,
    },
}

/// The aggregation of a stateful query.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Stateful {
    /// Everything below the aggregate; its topic scan has no ranges.
    pub input: LogicalPlan,
    pub group: Vec<(Expr, String)>,
    pub aggs: Vec<(AggExpr, String)>,
    /// The group column that is a window's end, if grouped by a window.
    pub window_end: Option<usize>,
    /// The aggregate's own output columns (group keys, then aggregates).
    pub agg_schema: Schema,
    /// Steps above the aggregate, bottom first.
    pub post: Vec<PostStep>,
}

/// An analysed stream query: serde data, so it can be stored in a log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamPlan {
    /// The topics read as streams (`topic()`), sorted, each once: one, or
    /// several under a UNION ALL.
    pub(crate) inputs: Vec<String>,
    /// The topics read as tables (`topic_table()`), sorted, each once:
    /// every batch joins a snapshot of each, fixed when it is planned.
    #[serde(default)]
    pub(crate) tables: Vec<String>,
    pub(crate) sink_topic: String,
    pub(crate) options: StreamOptions,
    /// The whole query; its topic scan has no ranges.
    pub(crate) query: LogicalPlan,
    /// The query's output columns.
    pub(crate) output: Schema,
    pub(crate) stateful: Option<Stateful>,
}

impl StreamPlan {
    /// `INSERT INTO out_topic SELECT ... FROM topic('in', 'json', '...') ...`
    pub fn from_sql(sql: &str, opts: StreamOptions) -> Result<StreamPlan> {
        // Ranges are fixed per micro-batch, so planning resolves none.
        let mut catalog = Catalog::default();
        catalog.topics = Some(Box::new(|_| Ok(Vec::new())));
        let (sink, plan) = plan_insert(sql, &catalog)?;
        StreamPlan::from_plan(plan, &sink, opts)
    }

    /// The Dataset API path: a plan whose one stream scan is a
    /// `Source::Topic`, and whose other scans are topics read as tables
    /// (their ranges are ignored).
    pub fn from_plan(
        plan: LogicalPlan,
        sink_topic: &str,
        opts: StreamOptions,
    ) -> Result<StreamPlan> {
        let mut query = plan;
        let mut topics = Vec::new();
        let mut tables = Vec::new();
        clear_ranges(&mut query, &mut topics, &mut tables);
        tables.sort();
        tables.dedup();
        // The shape first: a join's error says more than "two scans".
        let stateful = split_aggregate(&query)?;
        match &stateful {
            Some(s) => check_stateless(&s.input)?,
            None => check_stateless(&query)?,
        }
        let mut inputs = topics.clone();
        inputs.sort();
        inputs.dedup();
        match topics.as_slice() {
            ts if !ts.is_empty() && ts.iter().all(|t| !t.ends_with("(not a topic)")) => {}
            [] if !tables.is_empty() => {
                return Err(plan_err!(
                    "a stream query must read a stream: FROM topic('name', ...); topic_table('{}', ...) is a table, which a stream can only be joined with",
                    tables[0]
                ));
            }
            _ => {
                return Err(plan_err!(
                    "a stream query must read topics: FROM topic('name', ...), not {}",
                    topics.join(", ")
                ));
            }
        };
        if let Some(t) = inputs.iter().find(|t| tables.contains(t)) {
            return Err(plan_err!(
                "topic '{t}' is read both as the stream and as a table: a stream-table join reads the table from another topic"
            ));
        }
        if sink_topic.is_empty() {
            return Err(plan_err!("a stream query needs a sink topic"));
        }
        let output = query.schema()?;
        let p = StreamPlan {
            inputs,
            tables,
            sink_topic: sink_topic.to_string(),
            options: opts,
            query,
            output,
            stateful,
        };
        p.check_options()?;
        Ok(p)
    }

    fn check_options(&self) -> Result<()> {
        let o = &self.options;
        if let Some(w) = &o.watermark {
            if w.delay_ms < 0 {
                return Err(plan_err!("the watermark delay must not be negative"));
            }
            // Late rows are dropped where the aggregate reads them; a
            // stateless query checks the column where it is read.
            let schema = match &self.stateful {
                Some(s) => s.input.schema()?,
                None => scan_schema(&self.query)?,
            };
            let i = schema.index_of(&w.column).map_err(|_| {
                plan_err!(
                    "the watermark column '{}' is not a column of the stream (columns: {})",
                    w.column,
                    schema.names().join(", ")
                )
            })?;
            let t = schema.fields[i].data_type;
            if t != DataType::Timestamp {
                return Err(plan_err!(
                    "the watermark column '{}' is {t}; a watermark needs a TIMESTAMP column (declare it TIMESTAMP in topic(), or CAST it)",
                    w.column
                ));
            }
        }
        match (o.output_mode, &self.stateful) {
            (OutputMode::Complete, None) => Err(plan_err!(
                "complete output mode needs an aggregation: without one there is no result table to rewrite each batch (use append or update)"
            )),
            (OutputMode::Append, Some(s)) => {
                let on_window_time = match (&o.watermark, window_time(&s.input)) {
                    (Some(w), Some(Expr::Column(c))) => {
                        let name = c.rsplit('.').next().unwrap_or(c);
                        name.eq_ignore_ascii_case(&w.column) && s.window_end.is_some()
                    }
                    _ => false,
                };
                if on_window_time {
                    Ok(())
                } else {
                    Err(plan_err!(
                        "append mode needs a watermark on the window's time column for an aggregation: a group is final, and written once, only when the watermark passes its window's end (GROUP BY window(ts, ...) with a watermark on ts, or use update or complete mode)"
                    ))
                }
            }
            _ => Ok(()),
        }
    }

    /// The first (or only) input topic.
    pub fn input_topic(&self) -> &str {
        &self.inputs[0]
    }

    /// Every topic the query reads as a stream, sorted.
    pub fn input_topics(&self) -> &[String] {
        &self.inputs
    }

    /// The topics the query joins as tables (`topic_table()`), sorted.
    pub fn table_topics(&self) -> &[String] {
        &self.tables
    }

    pub fn sink_topic(&self) -> &str {
        &self.sink_topic
    }

    pub fn options(&self) -> &StreamOptions {
        &self.options
    }

    /// The whole query (its topic scan without ranges), for EXPLAIN.
    pub fn query(&self) -> &LogicalPlan {
        &self.query
    }

    /// The query's output columns.
    pub fn output_schema(&self) -> &Schema {
        &self.output
    }

    /// Whether batches carry state (an aggregation) from one to the next.
    pub fn is_stateful(&self) -> bool {
        self.stateful.is_some()
    }

    pub fn watermark_delay_ms(&self) -> Option<i64> {
        self.options.watermark.as_ref().map(|w| w.delay_ms)
    }

    /// The watermark after a batch: the largest event time seen minus the
    /// delay, never moving back (Spark's rule). `None` without a watermark.
    pub fn advance_watermark(
        &self,
        current: Option<i64>,
        max_event_time: Option<i64>,
    ) -> Option<i64> {
        let delay = self.watermark_delay_ms()?;
        let proposed = max_event_time.map(|m| m.saturating_sub(delay));
        match (current, proposed) {
            (Some(c), Some(p)) => Some(c.max(p)),
            (c, p) => c.or(p),
        }
    }
}

/// Empties every topic scan's ranges and collects the names: of the
/// topics read as streams (and of other sources, marked "(not a topic)")
/// in `topics`, of the topics read as tables in `tables`.
fn clear_ranges(plan: &mut LogicalPlan, topics: &mut Vec<String>, tables: &mut Vec<String>) {
    if let LogicalPlan::Scan { source, .. } = plan {
        match source {
            Source::Topic {
                topic,
                ranges,
                table,
                ..
            } => {
                ranges.clear();
                if *table {
                    tables.push(topic.clone());
                } else {
                    topics.push(topic.clone());
                }
            }
            other => topics.push(format!("{other} (not a topic)")),
        }
        return;
    }
    for c in plan.children_mut() {
        clear_ranges(c, topics, tables);
    }
}

/// The scans under `plan`: (streams and other sources, tables), as
/// [`clear_ranges`] names them.
fn scans(plan: &LogicalPlan) -> (Vec<String>, Vec<String>) {
    let (mut topics, mut tables) = (Vec::new(), Vec::new());
    clear_ranges(&mut plan.clone(), &mut topics, &mut tables);
    (topics, tables)
}

/// The schema of the plan's (one) scan.
fn scan_schema(plan: &LogicalPlan) -> Result<Schema> {
    match plan {
        LogicalPlan::Scan { schema, .. } => Ok(schema.clone()),
        other => match other.children().first() {
            Some(c) => scan_schema(c),
            None => Err(plan_err!("a stream query has no scan")),
        },
    }
}

/// The time expression of the window below, if any.
fn window_time(plan: &LogicalPlan) -> Option<&Expr> {
    match plan {
        LogicalPlan::TimeWindow { time, .. } => Some(time),
        other => other.children().into_iter().find_map(window_time),
    }
}

/// Refuses what a stream cannot compute batch by batch.
fn check_stateless(plan: &LogicalPlan) -> Result<()> {
    if matches!(plan, LogicalPlan::Aggregate { .. }) {
        return Err(plan_err!(
            "more than one aggregation is not supported in a stream query: only one GROUP BY per stream query (its state is one table)"
        ));
    }
    refuse_node(plan)?;
    for c in plan.children() {
        check_stateless(c)?;
    }
    Ok(())
}

/// Refuses a node kind a stream query cannot have (aggregates aside).
fn refuse_node(plan: &LogicalPlan) -> Result<()> {
    let refuse = |what: &str, why: &str| {
        Err(plan_err!(
            "{what} is not supported in a stream query: {why}"
        ))
    };
    match plan {
        LogicalPlan::Scan { .. }
        | LogicalPlan::Project { .. }
        | LogicalPlan::Filter { .. }
        | LogicalPlan::Explode { .. }
        | LogicalPlan::TimeWindow { .. }
        | LogicalPlan::Repartition { .. }
        | LogicalPlan::Alias { .. }
        | LogicalPlan::Aggregate { .. } => Ok(()),
        LogicalPlan::Sort { .. } => refuse(
            "ORDER BY",
            "a stream has no end to sort to; sort the sink's data when reading it",
        ),
        LogicalPlan::Limit { .. } => refuse(
            "LIMIT",
            "which rows are first is not defined on an unbounded stream",
        ),
        LogicalPlan::Distinct { .. } => refuse("DISTINCT", "write it as a GROUP BY of the columns"),
        LogicalPlan::Join {
            left, right, kind, ..
        } => {
            let (ls, _) = scans(left);
            let (rs, _) = scans(right);
            let stream = |v: &[String]| v.iter().any(|n| !n.ends_with("(not a topic)"));
            let other = ls.iter().chain(&rs).find(|n| n.ends_with("(not a topic)"));
            if stream(&ls) && stream(&rs) {
                refuse(
                    "a join of two streams",
                    "stream-stream joins need join state and are not implemented; to join a stream with the latest value per key of a compacted topic, read that side with topic_table('name', ...)",
                )
            } else if let Some(o) = other {
                let o = o.trim_end_matches(" (not a topic)");
                refuse(
                    &format!("a join with {o}"),
                    "the table a stream joins must be a compacted topic read with topic_table('name', ...): its snapshot is fixed per batch by offsets, so a re-run batch joins the same rows; a file may change between a batch and its re-run",
                )
            } else if stream(&rs) {
                refuse(
                    "a join with the stream on the right",
                    "write the stream first: FROM topic(...) [LEFT] JOIN topic_table(...) ON ...",
                )
            } else if stream(&ls) && matches!(kind, JoinKind::Right | JoinKind::Full) {
                refuse(
                    "a RIGHT or FULL OUTER join of a stream with a table",
                    "it would have to emit the table rows no stream row matched, and no batch knows that none ever will; use an inner or LEFT join, stream on the left",
                )
            } else {
                Ok(())
            }
        }
        // Streams of several topics, one after another in each batch.
        LogicalPlan::Union { .. } if plan.children().iter().any(|c| reads_table(c)) => {
            refuse("a UNION with topic_table()", "a table can only be joined with a stream")
        }
        LogicalPlan::Union { .. } => Ok(()),
    }
}

/// Finds the aggregate under the row-by-row steps at the top of `plan`.
fn split_aggregate(plan: &LogicalPlan) -> Result<Option<Stateful>> {
    let mut post = Vec::new();
    let mut node = plan;
    loop {
        match node {
            LogicalPlan::Project { input, exprs } => {
                let s = input.schema()?;
                let types = exprs
                    .iter()
                    .map(|(e, _)| e.data_type(&s))
                    .collect::<Result<_>>()?;
                post.push(PostStep::Project {
                    input: s,
                    exprs: exprs.clone(),
                    types,
                });
                node = input;
            }
            LogicalPlan::Filter { input, predicate } => {
                post.push(PostStep::Filter {
                    input: input.schema()?,
                    predicate: predicate.clone(),
                });
                node = input;
            }
            // Qualifiers only: the steps above carry their own schemas.
            LogicalPlan::Alias { input, .. } | LogicalPlan::Repartition { input, .. } => {
                node = input
            }
            LogicalPlan::Aggregate { input, group, aggs } => {
                for (a, _) in aggs {
                    if a.func == AggFunc::CountDistinct {
                        return Err(plan_err!(
                            "{a} is not supported in a stream query: its state would be a set per group; stream aggregates are count, sum, min, max and avg"
                        ));
                    }
                }
                post.reverse();
                let window_end = window_time(input).and_then(|_| {
                    group.iter().position(|(e, _)| {
                        matches!(e, Expr::Column(c) if c.rsplit('.').next().is_some_and(|n| n.eq_ignore_ascii_case("window_end")))
                    })
                });
                let agg_schema = node.schema()?;
                return Ok(Some(Stateful {
                    input: (**input).clone(),
                    group: group.clone(),
                    aggs: aggs.clone(),
                    window_end,
                    agg_schema: Schema::new(
                        agg_schema
                            .fields
                            .into_iter()
                            .map(|f| Field::new(f.name, f.data_type))
                            .collect(),
                    ),
                    post,
                }));
            }
            _ => {
                // No aggregate at the top: a stateless query (checked by
                // the caller), unless an aggregate hides lower down.
                refuse_node(node)?;
                if contains_aggregate(node) {
                    return Err(plan_err!(
                        "an aggregation in a stream query must be the last wide step: only projections and filters (HAVING) may follow it"
                    ));
                }
                return Ok(None);
            }
        }
    }
}

fn contains_aggregate(plan: &LogicalPlan) -> bool {
    matches!(plan, LogicalPlan::Aggregate { .. })
        || plan.children().into_iter().any(contains_aggregate)
}

/// Whether `plan` scans a topic as a table.
fn reads_table(plan: &LogicalPlan) -> bool {
    matches!(plan, LogicalPlan::Scan { source: Source::Topic { table: true, .. }, .. }) || plan.children().iter().any(|c| reads_table(c))
}
