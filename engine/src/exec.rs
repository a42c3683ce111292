//! Running one task: evaluate a stage's operator tree for one partition,
//! then either split the output into shuffle blocks or return it as the
//! result. A missing or unreadable shuffle block is a fetch failure, which
//! the driver answers by recomputing the map output from lineage.

use arrow::array::RecordBatch;

use crate::error::{EngineError, Result};
use crate::eval::{evaluate, filter_batch};
use crate::exec_err;
use crate::ops::aggregate::{AggMode, aggregate};
use crate::ops::split_count;
use crate::ops::explode::explode;
use crate::ops::join::{JoinSpec, hash_join};
use crate::ops::sort::{limit, sort};
use crate::physical::{Op, StageOutput, StagePlan};
use crate::shuffle;
use crate::source::TopicReader;
use crate::types::Schema;

/// Why a reducer could not read its input: the driver re-runs the map
/// task named here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchFailed {
    pub shuffle: u32,
    pub map_partition: u32,
}

/// Where a task gets its inputs from; the node running it provides this.
pub trait TaskInputs {
    /// The blocks of `shuffle` for reduce partition `reduce`, one per map
    /// partition, in map order.
    fn shuffle_blocks(&self, shuffle: u32, reduce: u32) -> Result<Vec<Vec<u8>>, FetchFailed>;
    fn topics(&self) -> Option<&dyn TopicReader> {
        None
    }
}

#[derive(Debug)]
pub enum TaskError {
    Fetch(FetchFailed),
    Failed(EngineError),
}

impl From<EngineError> for TaskError {
    fn from(e: EngineError) -> Self {
        TaskError::Failed(e)
    }
}

impl std::fmt::Display for TaskError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TaskError::Fetch(x) => write!(
                f,
                "fetch failed: shuffle {} map partition {}",
                x.shuffle, x.map_partition
            ),
            TaskError::Failed(e) => write!(f, "{e}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum TaskOutput {
    /// One IPC block per reduce partition.
    Shuffle(Vec<Vec<u8>>),
    /// The partition's result rows as one IPC block.
    Result(Vec<u8>),
}

pub fn run_task(
    plan: &StagePlan,
    partition: u32,
    inputs: &dyn TaskInputs,
) -> Result<TaskOutput, TaskError> {
    let batches = run(&plan.op, partition, inputs)?;
    Ok(match &plan.output {
        StageOutput::Shuffle { keys, partitions } => {
            let parts = shuffle::partition(&batches, &plan.schema, keys, *partitions, partition)?;
            TaskOutput::Shuffle(
                parts
                    .iter()
                    .map(|p| shuffle::encode(p, &plan.schema))
                    .collect::<Result<_>>()?,
            )
        }
        StageOutput::Result => TaskOutput::Result(shuffle::encode(&batches, &plan.schema)?),
    })
}

fn narrow(
    batches: Vec<RecordBatch>,
    f: impl Fn(&RecordBatch) -> Result<RecordBatch>,
) -> Result<Vec<RecordBatch>, TaskError> {
    let mut out = Vec::with_capacity(batches.len());
    for b in &batches {
        let r = f(b)?;
        if r.num_rows() > 0 || out.is_empty() {
            out.push(r);
        }
    }
    Ok(out)
}

fn project(
    b: &RecordBatch,
    schema: &Schema,
    exprs: &[(crate::expr::Expr, String)],
    out: &Schema,
) -> Result<RecordBatch> {
    let cols = exprs
        .iter()
        .map(|(e, _)| evaluate(e, b, schema))
        .collect::<Result<Vec<_>>>()?;
    let target = out.to_arrow();
    let cols = cols
        .iter()
        .zip(target.fields())
        .map(|(c, f)| {
            Ok(if c.data_type() == f.data_type() {
                c.clone()
            } else {
                arrow::compute::cast(c, f.data_type())?
            })
        })
        .collect::<Result<Vec<_>>>()?;
    if cols.is_empty() {
        return Ok(RecordBatch::try_new_with_options(
            target,
            cols,
            &arrow::array::RecordBatchOptions::new().with_row_count(Some(b.num_rows())),
        )?);
    }
    Ok(RecordBatch::try_new(target, cols)?)
}

/// Evaluates `op` for partition `p`.
pub fn run(op: &Op, p: u32, inputs: &dyn TaskInputs) -> Result<Vec<RecordBatch>, TaskError> {
    Ok(match op {
        Op::Scan { source, schema } => source.read(p, schema, inputs.topics())?,
        Op::ShuffleRead { shuffle, schema } => {
            let blocks = inputs
                .shuffle_blocks(*shuffle, p)
                .map_err(TaskError::Fetch)?;
            let mut out = Vec::new();
            for (m, b) in blocks.iter().enumerate() {
                // An unreadable block is as good as a missing one.
                let batches = shuffle::decode(b).map_err(|_| {
                    TaskError::Fetch(FetchFailed {
                        shuffle: *shuffle,
                        map_partition: m as u32,
                    })
                })?;
                out.extend(batches.into_iter().filter(|b| b.num_rows() > 0));
            }
            if out.is_empty() {
                out.push(RecordBatch::new_empty(schema.to_arrow()));
            }
            out
        }
        Op::Union { inputs: children } => {
            let mut rest = p;
            for (child, n) in children {
                if rest < *n {
                    return run(child, rest, inputs);
                }
                rest -= n;
            }
            return Err(TaskError::Failed(exec_err!("union has no partition {p}")));
        }
        Op::Project {
            input,
            schema,
            exprs,
        } => {
            let out_schema = Schema::new(
                exprs
                    .iter()
                    .map(|(e, n)| Ok(crate::types::Field::new(n, e.data_type(schema)?)))
                    .collect::<Result<Vec<_>>>()?,
            );
            narrow(run(input, p, inputs)?, |b| {
                project(b, schema, exprs, &out_schema)
            })?
        }
        Op::Filter {
            input,
            schema,
            predicate,
        } => narrow(run(input, p, inputs)?, |b| {
            filter_batch(b, predicate, schema)
        })?,
        Op::Explode {
            input,
            schema,
            expr,
            separator,
            name,
            keep,
        } => narrow(run(input, p, inputs)?, |b| {
            explode(b, schema, expr, separator, name, keep)
        })?,
        Op::Aggregate {
            input,
            schema,
            mode,
            group,
            aggs,
            original,
        } => {
            if *mode == AggMode::Partial
                && let Some((inner, in_schema, expr, sep)) = split_count::fusable(input, group, aggs)
            {
                let batches = run(inner, p, inputs)?;
                return Ok(vec![split_count::split_count(&batches, in_schema, expr, sep, group, aggs, original)?]);
            }
            let batches = run(input, p, inputs)?;
            vec![aggregate(&batches, schema, *mode, group, aggs, original)?]
        }
        Op::HashJoin {
            left,
            right,
            left_schema,
            right_schema,
            kind,
            on,
            filter,
        } => {
            let l = run(left, p, inputs)?;
            let r = run(right, p, inputs)?;
            let spec = JoinSpec {
                kind: *kind,
                on,
                filter: filter.as_ref(),
                left_schema,
                right_schema,
            };
            vec![hash_join(&l, &r, &spec)?]
        }
        Op::Sort {
            input,
            schema,
            keys,
            limit: top,
        } => {
            let batches = run(input, p, inputs)?;
            vec![sort(&batches, schema, keys, *top)?]
        }
        Op::Limit { input, skip, fetch } => limit(run(input, p, inputs)?, *skip, *fetch),
    })
}
