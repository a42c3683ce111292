//! Running one task: evaluate a stage's operator tree for one partition,
//! then either split the output into shuffle blocks or return it as the
//! result. A missing or unreadable shuffle block is a fetch failure, which
//! the driver answers by recomputing the map output from lineage.

use arrow::array::{ArrayRef, RecordBatch};

use crate::error::{EngineError, Result};
use crate::eval::{evaluate, filter_batch};
use crate::exec_err;
use crate::ops::aggregate::{AggMode, aggregate};
use crate::ops::split_count;
use crate::ops::window::time_window;
use crate::ops::explode::explode;
use crate::ops::join::{JoinSpec, hash_join};
use crate::ops::sort::{limit, sort};
use crate::physical::{Op, StageOutput, StagePlan};
use crate::shuffle;
use crate::source::TopicReader;
use crate::spill::{self, Buffered, Run, Spill};
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
    /// The task's memory limit and scratch space (none: hold everything
    /// in memory, as a node without a spill directory must).
    fn spill(&self) -> Option<Spill<'_>> {
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

/// A task's rows as they are produced, batch by batch, so that a wide
/// operator can spill what it holds instead of its whole input being in
/// memory first.
pub type Stream<'a> = Box<dyn Iterator<Item = Result<RecordBatch, TaskError>> + 'a>;

/// A row-by-row step over `input`. The first output batch is kept even
/// when empty (it carries the schema); later empty ones are dropped.
fn narrow<'a>(
    input: Stream<'a>,
    f: impl Fn(&RecordBatch) -> Result<RecordBatch> + 'a,
) -> Stream<'a> {
    let mut first = true;
    Box::new(input.filter_map(move |b| {
        let r = b.and_then(|b| Ok(f(&b)?));
        if matches!(&r, Ok(r) if r.num_rows() == 0) && !first {
            return None;
        }
        first = false;
        Some(r)
    }))
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

/// Evaluates `op` for partition `p`, all at once.
pub fn run(op: &Op, p: u32, inputs: &dyn TaskInputs) -> Result<Vec<RecordBatch>, TaskError> {
    stream(op, p, inputs)?.collect()
}

fn one(b: Result<RecordBatch, TaskError>) -> Stream<'static> {
    Box::new(std::iter::once(b))
}

/// Evaluates `op` for partition `p` as a stream of batches. Narrow steps
/// pass batches along; wide ones consume their input first (spilling past
/// the task's memory limit, see [`crate::spill`]).
pub fn stream<'a>(op: &'a Op, p: u32, inputs: &'a dyn TaskInputs) -> Result<Stream<'a>, TaskError> {
    Ok(match op {
        Op::Scan { source, schema } => Box::new(source.read(p, schema, inputs.topics())?.into_iter().map(Ok)),
        Op::ShuffleRead { shuffle, schema } => {
            let blocks = inputs.shuffle_blocks(*shuffle, p).map_err(TaskError::Fetch)?;
            let shuffle = *shuffle;
            // Decoded one block at a time; each block's bytes are freed
            // once decoded.
            let decoded = blocks.into_iter().enumerate().flat_map(move |(m, b)| {
                // An unreadable block is as good as a missing one.
                let out: Vec<Result<RecordBatch, TaskError>> = match shuffle::decode(&b) {
                    Ok(batches) => batches.into_iter().filter(|b| b.num_rows() > 0).map(Ok).collect(),
                    Err(_) => vec![Err(TaskError::Fetch(FetchFailed { shuffle, map_partition: m as u32 }))],
                };
                out
            });
            // No rows at all: one empty batch, which carries the schema.
            let mut decoded = decoded.peekable();
            let nothing = decoded.peek().is_none();
            let empty = std::iter::once(Ok(RecordBatch::new_empty(schema.to_arrow()))).filter(move |_| nothing);
            Box::new(decoded.chain(empty))
        }
        Op::Union { inputs: children } => {
            let mut rest = p;
            for (child, n) in children {
                if rest < *n {
                    return stream(child, rest, inputs);
                }
                rest -= n;
            }
            return Err(TaskError::Failed(exec_err!("union has no partition {p}")));
        }
        Op::Project { input, schema, exprs } => {
            let out_schema = Schema::new(
                exprs
                    .iter()
                    .map(|(e, n)| Ok(crate::types::Field::new(n, e.data_type(schema)?)))
                    .collect::<Result<Vec<_>>>()?,
            );
            narrow(stream(input, p, inputs)?, move |b| project(b, schema, exprs, &out_schema))
        }
        Op::Filter { input, schema, predicate } => narrow(stream(input, p, inputs)?, move |b| filter_batch(b, predicate, schema)),
        Op::Explode { input, schema, expr, separator, name, keep } => {
            narrow(stream(input, p, inputs)?, move |b| explode(b, schema, expr, separator, name, keep))
        }
        Op::TimeWindow { input, schema, time, size_ms, slide_ms } => {
            narrow(stream(input, p, inputs)?, move |b| time_window(b, schema, time, *size_ms, *slide_ms))
        }
        Op::Aggregate { input, schema, mode, group, aggs, original } => {
            if *mode == AggMode::Partial
                && let Some((inner, in_schema, expr, sep)) = split_count::fusable(input, group, aggs)
            {
                let batches = run(inner, p, inputs)?;
                return Ok(one(Ok(split_count::split_count(&batches, in_schema, expr, sep, group, aggs, original)?)));
            }
            let g = group.len();
            let keys_of = move |b: &RecordBatch| -> Result<Vec<ArrayRef>> {
                match mode {
                    AggMode::Final => Ok((0..g).map(|i| b.column(i).clone()).collect()),
                    _ => group.iter().map(|(e, _)| evaluate(e, b, schema)).collect(),
                }
            };
            // Without group keys the state is one row: nothing to split.
            let spill = if group.is_empty() { None } else { inputs.spill() };
            let buffered = spill::buffer(stream(input, p, inputs)?, schema.to_arrow(), &keys_of, spill, 0, false)?;
            let mut out = Vec::new();
            each_part(buffered, schema, &keys_of, spill, 0, &mut |batches| {
                out.push(aggregate(&batches, schema, *mode, group, aggs, original)?);
                Ok(())
            })?;
            if out.is_empty() {
                out.push(aggregate(&[], schema, *mode, group, aggs, original)?);
            }
            Box::new(out.into_iter().map(Ok))
        }
        Op::HashJoin { left, right, left_schema, right_schema, kind, on, filter } => {
            let spec = JoinSpec { kind: *kind, on, filter: filter.as_ref(), left_schema, right_schema };
            let out = join(&spec, stream(left, p, inputs)?, stream(right, p, inputs)?, inputs.spill())?;
            Box::new(out.into_iter().map(Ok))
        }
        Op::Sort { input, schema, keys, limit: top } => {
            let batches = run(input, p, inputs)?;
            one(Ok(sort(&batches, schema, keys, *top)?))
        }
        Op::Limit { input, skip, fetch } => {
            // Stops pulling its input once it has its rows.
            let want = fetch.map(|f| f.saturating_add(*skip)).unwrap_or(usize::MAX);
            let mut got = 0usize;
            let mut batches = Vec::new();
            for b in stream(input, p, inputs)? {
                let b = b?;
                got += b.num_rows();
                batches.push(b);
                if got >= want {
                    break;
                }
            }
            Box::new(limit(batches, *skip, *fetch).into_iter().map(Ok))
        }
    })
}

/// Calls `f` with the whole of `buffered` if it stayed in memory, else
/// with each run in turn, splitting again a run still over the limit.
fn each_part(
    buffered: Buffered,
    schema: &Schema,
    keys_of: &dyn Fn(&RecordBatch) -> Result<Vec<ArrayRef>>,
    spill: Option<Spill<'_>>,
    level: u32,
    f: &mut dyn FnMut(Vec<RecordBatch>) -> Result<(), TaskError>,
) -> Result<(), TaskError> {
    match buffered {
        Buffered::Memory(batches) => f(batches),
        Buffered::Runs(runs) => {
            for run in runs {
                let over = spill.is_some_and(|s| run.bytes > s.limit_bytes);
                let batches = run.read()?;
                if over && level + 1 < spill::MAX_LEVEL {
                    match spill::buffer(batches.into_iter().map(Ok::<_, TaskError>), schema.to_arrow(), keys_of, spill, level + 1, true)? {
                        // One key (or keys that hash alike at every
                        // level): splitting again gains nothing.
                        Buffered::Runs(mut one) if one.len() == 1 => f(one.remove(0).read()?)?,
                        again => each_part(again, schema, keys_of, spill, level + 1, f)?,
                    }
                } else {
                    f(batches)?;
                }
            }
            Ok(())
        }
    }
}

/// A hash join of two streams. The right (build) side is buffered first;
/// if either side passes half the limit, both are split into runs by join
/// key and the runs with the same number are joined pairwise (a run
/// missing on one side joins against nothing, which outer joins pad).
fn join(spec: &JoinSpec, left: Stream<'_>, right: Stream<'_>, spill: Option<Spill<'_>>) -> Result<Vec<RecordBatch>, TaskError> {
    join_at(spec, left, right, spill.map(|s| Spill { limit_bytes: s.limit_bytes / 2, ..s }), 0)
}

fn join_at(spec: &JoinSpec, left: Stream<'_>, right: Stream<'_>, spill: Option<Spill<'_>>, level: u32) -> Result<Vec<RecordBatch>, TaskError> {
    // Both sides must hash equal keys alike: the right's keys are cast to
    // the left's types, as `hash_join` does.
    let ltypes = spec.on.iter().map(|(e, _)| Ok(e.data_type(spec.left_schema)?.to_arrow())).collect::<Result<Vec<_>>>()?;
    let lkeys = |b: &RecordBatch| -> Result<Vec<ArrayRef>> { spec.on.iter().map(|(e, _)| evaluate(e, b, spec.left_schema)).collect() };
    let rkeys = |b: &RecordBatch| -> Result<Vec<ArrayRef>> {
        spec.on
            .iter()
            .zip(&ltypes)
            .map(|((_, e), t)| {
                let k = evaluate(e, b, spec.right_schema)?;
                Ok(if k.data_type() == t { k } else { arrow::compute::cast(&k, t)? })
            })
            .collect()
    };
    let (ls, rs) = (spec.left_schema.to_arrow(), spec.right_schema.to_arrow());
    let r = spill::buffer(right, rs.clone(), &rkeys, spill, level, false)?;
    let l = spill::buffer(left, ls.clone(), &lkeys, spill, level, matches!(r, Buffered::Runs(_)))?;
    let (l, r) = match (l, r) {
        (Buffered::Memory(l), Buffered::Memory(r)) => return Ok(vec![hash_join(&l, &r, spec)?]),
        (l @ Buffered::Runs(_), Buffered::Memory(r)) => (l, spill::buffer(r.into_iter().map(Ok::<_, TaskError>), rs.clone(), &rkeys, spill, level, true)?),
        (l, r) => (l, r),
    };
    let (Buffered::Runs(l), Buffered::Runs(r)) = (l, r) else {
        return Err(TaskError::Failed(exec_err!("a spilled join has one side in memory")));
    };
    let mut l: Vec<Option<Run>> = by_index(l);
    let mut r: Vec<Option<Run>> = by_index(r);
    // A split into one run (one join key) would only repeat itself.
    let split = (0..spill::FANOUT).filter(|&k| l[k].is_some() || r[k].is_some()).count() > 1;
    let mut out = Vec::new();
    for k in 0..spill::FANOUT {
        let (lr, rr) = (l[k].take(), r[k].take());
        if lr.is_none() && rr.is_none() {
            continue;
        }
        let bytes = lr.as_ref().map_or(0, |x| x.bytes) + rr.as_ref().map_or(0, |x| x.bytes);
        let lb = lr.map(Run::read).transpose()?.unwrap_or_default();
        let rb = rr.map(Run::read).transpose()?.unwrap_or_default();
        if split && spill.is_some_and(|s| bytes > 2 * s.limit_bytes) && level + 1 < spill::MAX_LEVEL {
            out.extend(join_at(spec, Box::new(lb.into_iter().map(Ok)), Box::new(rb.into_iter().map(Ok)), spill, level + 1)?);
        } else {
            out.push(hash_join(&lb, &rb, spec)?);
        }
    }
    if out.is_empty() {
        out.push(hash_join(&[], &[], spec)?);
    }
    Ok(out)
}

fn by_index(runs: Vec<Run>) -> Vec<Option<Run>> {
    let mut out: Vec<Option<Run>> = (0..spill::FANOUT).map(|_| None).collect();
    for r in runs {
        let i = r.index;
        out[i] = Some(r);
    }
    out
}
