//! One micro-batch. The job ([`StreamPlan::batch_plan`]) reads the batch's
//! offsets and, for an aggregation, ends in one row of partial aggregates
//! per group; [`StreamPlan::finish_batch`] merges those rows into the
//! state and says what to write. The merge happens on the caller's side of
//! the job, not in a task, because the state is the query's, not a
//! task's: the job stays an ordinary batch job (retried, recomputed from
//! lineage like any other), and the state changes in exactly one place,
//! once per batch, from a result that is the same whichever tasks ran.

use std::collections::{BTreeMap, BTreeSet};

use arrow::array::RecordBatch;
use serde::{Deserialize, Serialize};

use super::analyze::{PostStep, Stateful, StreamPlan};
use super::memory::MemoryTopic;
use super::options::OutputMode;
use super::output::{OutputRecord, record};
use super::partial::{finish, merge, partial_aggs, width};
use super::state::{GroupKey, StreamState};
use crate::error::Result;
use crate::exec_err;
use crate::expr::{AggExpr, AggFunc, col, count_star, lit};
use crate::plan::LogicalPlan;
use crate::reference::{Row, cast, eval_row, evaluate};
use crate::source::{Source, TopicRange, TopicRecord};
use crate::types::Value;
use crate::value::batches_to_rows;

/// What a batch writes and the state after it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchOutput {
    /// In key order, then value order.
    pub records: Vec<OutputRecord>,
    pub state: StreamState,
    /// The largest event time (watermark column) the batch aggregated.
    pub max_event_time: Option<i64>,
    /// Rows that reached the aggregation (after WHERE and late-row
    /// dropping; a sliding window counts a row once per window); for a
    /// stateless query, the rows it produced.
    pub input_rows: u64,
}

/// The snapshot of each table a batch joins: per topic read with
/// `topic_table()`, the ranges (log start to the high watermark when the
/// batch was planned) of each partition.
pub type TableSnapshot = BTreeMap<String, Vec<TopicRange>>;

/// Sets each stream scan's ranges to `ranges(topic)`, and each table
/// scan's to its topic's in `tables` (none if `tables` does not name it).
fn set_ranges(plan: &mut LogicalPlan, ranges: &dyn Fn(&str) -> Vec<TopicRange>, tables: &TableSnapshot) {
    if let LogicalPlan::Scan {
        source:
            Source::Topic {
                topic,
                ranges: r,
                table,
                ..
            },
        ..
    } = plan
    {
        *r = if *table {
            tables.get(topic.as_str()).cloned().unwrap_or_default()
        } else {
            ranges(topic)
        };
    }
    for c in plan.children_mut() {
        set_ranges(c, ranges, tables);
    }
}

impl StreamPlan {
    /// The batch job for one micro-batch: scan exactly `ranges` of the
    /// input topic; for an aggregation, drop rows whose event time is below
    /// `watermark` or NULL (when the query has a watermark) and end in a
    /// partial aggregate
    /// per group: the group keys, each aggregate's partial columns, the
    /// rows aggregated (`__rows`) and, with a watermark, the group's
    /// largest event time (`__event_time`).
    pub fn batch_plan(&self, ranges: &[TopicRange], watermark: Option<i64>) -> Result<LogicalPlan> {
        self.batch_plan_with_tables(ranges, &TableSnapshot::new(), watermark)
    }

    /// [`StreamPlan::batch_plan`] for a query that joins tables: each
    /// table scan reads its topic's ranges in `tables` (the snapshot the
    /// batch's offset log entry fixed) and folds them to the latest
    /// record per key. A table `tables` does not name is empty.
    pub fn batch_plan_with_tables(
        &self,
        ranges: &[TopicRange],
        tables: &TableSnapshot,
        watermark: Option<i64>,
    ) -> Result<LogicalPlan> {
        self.batch_plan_by_topic(&|_| ranges.to_vec(), tables, watermark)
    }

    /// The batch job of a query that reads several topics: each stream
    /// scan reads its own topic's ranges in `inputs` (by topic name).
    pub fn batch_plan_for(
        &self,
        inputs: &BTreeMap<String, Vec<TopicRange>>,
        tables: &TableSnapshot,
        watermark: Option<i64>,
    ) -> Result<LogicalPlan> {
        self.batch_plan_by_topic(&|t| inputs.get(t).cloned().unwrap_or_default(), tables, watermark)
    }

    fn batch_plan_by_topic(
        &self,
        ranges: &dyn Fn(&str) -> Vec<TopicRange>,
        tables: &TableSnapshot,
        watermark: Option<i64>,
    ) -> Result<LogicalPlan> {
        let Some(s) = &self.stateful else {
            let mut q = self.query.clone();
            set_ranges(&mut q, ranges, tables);
            return Ok(q);
        };
        let mut input = s.input.clone();
        set_ranges(&mut input, ranges, tables);
        let mut aggs = partial_aggs(&s.aggs);
        aggs.push((count_star(), "__rows".to_string()));
        if let Some(w) = &self.options.watermark {
            // Rows without an event time are never counted, so a query
            // drops them in its first batch as in every later one.
            let t = col(w.column.clone());
            input = input.filter(match watermark {
                Some(wm) => t.gt_eq(lit(Value::Timestamp(wm))),
                None => t.is_not_null(),
            })?;
            aggs.push((
                AggExpr {
                    func: AggFunc::Max,
                    arg: Some(col(w.column.clone())),
                },
                "__event_time".to_string(),
            ));
        }
        input.aggregate(s.group.clone(), aggs)
    }

    /// Folds the batch job's result into `state` and says what to write:
    /// Complete, every group; Update, the groups this batch changed;
    /// Append, the windows that end at or before `watermark` (then
    /// evicted). Update also evicts windows that ended at or before the
    /// watermark; Complete never evicts (as in Spark). A stateless query
    /// writes its rows as they are. `watermark` must be the one given to
    /// [`StreamPlan::batch_plan`].
    pub fn finish_batch(
        &self,
        state: &StreamState,
        result: &[RecordBatch],
        watermark: Option<i64>,
    ) -> Result<BatchOutput> {
        self.finish_rows(state, batches_to_rows(result), watermark)
    }

    /// The same batch computed by the reference evaluator from the input
    /// records (per partition: its number and its records), for checkers.
    pub fn reference_batch(
        &self,
        state: &StreamState,
        input: &[(i32, Vec<TopicRecord>)],
        watermark: Option<i64>,
    ) -> Result<BatchOutput> {
        let topic = MemoryTopic::new(input);
        let ranges: Vec<TopicRange> = topic
            .partitions
            .iter()
            .filter_map(|(p, rs)| {
                Some(TopicRange {
                    partition: *p,
                    start: rs.first()?.offset,
                    end: rs.last()?.offset + 1,
                })
            })
            .collect();
        let plan = self.batch_plan(&ranges, watermark)?;
        self.finish_rows(state, evaluate(&plan, Some(&topic))?, watermark)
    }

    /// [`StreamPlan::reference_batch`] for a query that joins tables, each
    /// read whole (`tables`: by topic name).
    pub fn reference_batch_with_tables(
        &self,
        state: &StreamState,
        input: &[(i32, Vec<TopicRecord>)],
        tables: &BTreeMap<String, MemoryTopic>,
        watermark: Option<i64>,
    ) -> Result<BatchOutput> {
        let topic = MemoryTopic::new(input);
        let snapshot: TableSnapshot = tables.iter().map(|(name, t)| (name.clone(), t.whole())).collect();
        let plan = self.batch_plan_with_tables(&topic.whole(), &snapshot, watermark)?;
        let reader = super::memory::WithTables { stream: &topic, tables };
        self.finish_rows(state, evaluate(&plan, Some(&reader))?, watermark)
    }

    fn finish_rows(
        &self,
        state: &StreamState,
        rows: Vec<Row>,
        watermark: Option<i64>,
    ) -> Result<BatchOutput> {
        let Some(s) = &self.stateful else {
            let mut records: Vec<OutputRecord> =
                rows.iter().map(|r| record(&self.output, r, None)).collect();
            records.sort();
            return Ok(BatchOutput {
                records,
                state: state.clone(),
                max_event_time: None,
                input_rows: rows.len() as u64,
            });
        };
        let g = s.group.len();
        let widths: Vec<usize> = s.aggs.iter().map(|(a, _)| width(a.func)).collect();
        let partial_end = g + widths.iter().sum::<usize>();
        let has_event_time = self.options.watermark.is_some();
        let expected = partial_end + 1 + usize::from(has_event_time);
        let mut next = state.clone();
        let mut changed: BTreeSet<GroupKey> = BTreeSet::new();
        let mut max_event_time: Option<i64> = None;
        let mut input_rows = 0u64;
        // Key order, so the merge does not depend on the result's order.
        let mut keyed: Vec<(GroupKey, Row)> = rows
            .into_iter()
            .map(|r| (GroupKey(r[..g.min(r.len())].to_vec()), r))
            .collect();
        keyed.sort_by(|a, b| a.0.cmp(&b.0));
        for (key, row) in keyed {
            if row.len() != expected {
                return Err(exec_err!(
                    "a stream batch result row has {} columns, expected {expected}",
                    row.len()
                ));
            }
            if let Value::Int(n) = row[partial_end] {
                input_rows += n.max(0) as u64;
            }
            if has_event_time
                && let Value::Timestamp(t) = cast(
                    row[partial_end + 1].clone(),
                    crate::types::DataType::Timestamp,
                )
            {
                max_event_time = Some(max_event_time.map_or(t, |m| m.max(t)));
            }
            let partial = &row[g..partial_end];
            match next.groups.get_mut(&key) {
                None => {
                    next.groups.insert(key.clone(), partial.to_vec());
                }
                Some(into) => {
                    let mut at = 0;
                    for ((a, _), w) in s.aggs.iter().zip(&widths) {
                        merge(a.func, &mut into[at..at + w], &partial[at..at + w]);
                        at += w;
                    }
                }
            }
            changed.insert(key);
        }
        let ended = |k: &GroupKey| match (s.window_end, watermark) {
            (Some(i), Some(wm)) => matches!(k.0[i], Value::Timestamp(end) if end <= wm),
            _ => false,
        };
        let emit: Vec<&GroupKey> = match self.options.output_mode {
            OutputMode::Complete => next.groups.keys().collect(),
            OutputMode::Update => changed.iter().collect(),
            OutputMode::Append => next.groups.keys().filter(|k| ended(k)).collect(),
        };
        let mut records = Vec::new();
        for k in emit {
            let Some(partials) = next.groups.get(k) else {
                continue;
            };
            if let Some(row) = final_row(s, k, partials) {
                records.push(record(&self.output, &row, Some(&k.0)));
            }
        }
        records.sort();
        if self.options.output_mode != OutputMode::Complete {
            next.groups.retain(|k, _| !ended(k));
        }
        Ok(BatchOutput {
            records,
            state: next,
            max_event_time,
            input_rows,
        })
    }
}

/// A group's output row: its key and final aggregate values, through the
/// steps above the aggregate; `None` if a HAVING filter drops it.
fn final_row(s: &Stateful, key: &GroupKey, partials: &[crate::types::Value]) -> Option<Row> {
    let mut row: Row = key.0.clone();
    let mut at = 0;
    for ((a, _), f) in s.aggs.iter().zip(&s.agg_schema.fields[s.group.len()..]) {
        let w = width(a.func);
        row.push(coerce(finish(a.func, &partials[at..at + w]), f.data_type));
        at += w;
    }
    for step in &s.post {
        match step {
            PostStep::Filter { input, predicate } => {
                if eval_row(predicate, &row, input) != Value::Bool(true) {
                    return None;
                }
            }
            PostStep::Project {
                input,
                exprs,
                types,
            } => {
                row = exprs
                    .iter()
                    .zip(types)
                    .map(|((e, _), t)| coerce(eval_row(e, &row, input), *t))
                    .collect();
            }
        }
    }
    Some(row)
}

fn coerce(v: Value, t: crate::types::DataType) -> Value {
    if v.is_null() || v.data_type() == t {
        v
    } else {
        cast(v, t)
    }
}
