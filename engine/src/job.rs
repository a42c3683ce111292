//! Between the engine and the batch driver: a plan's stages become the
//! driver's [`JobSpec`], and a worker turns the [`TaskDesc`] it is given
//! back into something [`run_task`] executes.
//!
//! The driver (`millrace_core::batch`) never sees Arrow or a plan. It
//! schedules stage ids, partition counts, parents and where each shuffle
//! output lives; a stage's plan travels as opaque bytes
//! ([`StagePlan::to_bytes`]) in `StageSpec::payload` and comes back in every
//! `TaskDesc::payload`. Stage ids are kept as they are, so the shuffle an
//! engine `ShuffleRead { shuffle }` names is the driver's parent stage id
//! and a `TaskDesc`'s `inputs` are looked up by it.
//!
//! Driver side:
//!
//! ```ignore
//! let stages = physical::cut(&plan, PlannerConfig::default())?;
//! let spec = job::job_spec(&stages);            // DriverInput::SubmitJob { job, spec }
//! // ... DriverEffect::JobSucceeded { results, .. }
//! let batches = job::decode_results(&results)?;
//! ```
//!
//! Worker side, on `WorkerEffect::Run(task)`:
//!
//! ```ignore
//! let inputs = job::FetchFrom::new(&task, |shuffle, map: &MapLocation, reduce| {
//!     // ask worker `map.worker` (incarnation `map.worker_epoch`) for the
//!     // block of reduce partition `reduce` of (task.job, shuffle, map.map_partition)
//! });
//! let done = job::execute(&task, &inputs);
//! // keep done.blocks (if any) as the map output, then report
//! // WorkerInput::Finished { attempt: task.attempt, outcome: done.outcome }
//! ```

use arrow::array::RecordBatch;
use millrace_core::batch::{
    JobSpec, MapLocation, StageOutput as CoreOutput, StageSpec, TaskDesc, TaskOutcome,
};

use crate::error::Result;
use crate::exec::{FetchFailed, TaskError, TaskInputs, TaskOutput, run_task};
use crate::exec_err;
use crate::spill::Spill;
use crate::physical::{Stage, StageOutput, StagePlan};
use crate::shuffle;
use crate::source::TopicReader;

/// The driver's job for `stages` (as [`crate::physical::cut`] returns
/// them: parents first, the result stage last). Each stage keeps its id,
/// partition count and parents; a shuffle stage becomes
/// `ShuffleMap { partitions }` with its reduce partition count, the last
/// one `Result`; the payload is the stage's [`StagePlan`] as bytes. No
/// locality preferences (in-memory and file sources can run anywhere).
pub fn job_spec(stages: &[Stage]) -> JobSpec {
    JobSpec {
        stages: stages
            .iter()
            .map(|s| StageSpec {
                id: s.id,
                partitions: s.partitions,
                parents: s.parents.clone(),
                output: core_output(&s.plan.output),
                payload: s.plan.to_bytes(),
                preferred: Vec::new(),
            })
            .collect(),
    }
}

fn core_output(output: &StageOutput) -> CoreOutput {
    match output {
        StageOutput::Shuffle { partitions, .. } => CoreOutput::ShuffleMap {
            partitions: *partitions,
        },
        StageOutput::Result => CoreOutput::Result,
    }
}

/// The stage plan a task carries, checked against what the driver says
/// the task outputs (a payload of another stage, or bytes that are not a
/// plan, are an error, not a panic).
pub fn stage_plan(task: &TaskDesc) -> Result<StagePlan> {
    let plan = StagePlan::from_bytes(&task.payload)?;
    if core_output(&plan.output) != task.output {
        return Err(exec_err!(
            "task {} of stage {}: the driver expects {:?}, the plan writes {:?}",
            task.attempt,
            task.stage,
            task.output,
            core_output(&plan.output)
        ));
    }
    Ok(plan)
}

/// What running a task came to.
#[derive(Debug, Clone, PartialEq)]
pub struct Executed {
    /// What the worker reports (`WorkerInput::Finished`): a result stage's
    /// success carries its rows as one Arrow IPC block; a shuffle-map
    /// task's success carries nothing (its output stays on the worker).
    pub outcome: TaskOutcome,
    /// A shuffle-map task's output: one IPC block per reduce partition, to
    /// keep under (job, stage, partition) and serve to reducers. `None`
    /// unless the outcome is a shuffle-map success.
    pub blocks: Option<Vec<Vec<u8>>>,
}

/// Runs `task` (decode, [`run_task`], encode) and maps the answer onto the
/// driver's vocabulary: an input block that cannot be fetched (or does not
/// decode) is `FetchFailed` naming the worker `task.inputs` placed it on,
/// so the driver recomputes that map output; any other error is `Failed`.
pub fn execute(task: &TaskDesc, inputs: &dyn TaskInputs) -> Executed {
    let failed = |reason: String| Executed {
        outcome: TaskOutcome::Failed { reason },
        blocks: None,
    };
    let plan = match stage_plan(task) {
        Ok(p) => p,
        Err(e) => return failed(e.to_string()),
    };
    match run_task(&plan, task.partition, inputs) {
        Ok(TaskOutput::Result(block)) => Executed {
            outcome: TaskOutcome::Success {
                result: Some(block),
            },
            blocks: None,
        },
        Ok(TaskOutput::Shuffle(blocks)) => {
            let expected = match task.output {
                CoreOutput::ShuffleMap { partitions } => partitions as usize,
                CoreOutput::Result => 0,
            };
            if blocks.len() != expected {
                return failed(format!(
                    "stage {} partition {} wrote {} shuffle blocks, {expected} expected",
                    task.stage,
                    task.partition,
                    blocks.len()
                ));
            }
            Executed {
                outcome: TaskOutcome::Success { result: None },
                blocks: Some(blocks),
            }
        }
        Err(TaskError::Fetch(f)) => match location(task, f.shuffle, f.map_partition) {
            Some(loc) => Executed {
                outcome: TaskOutcome::FetchFailed {
                    shuffle: f.shuffle,
                    map_partition: f.map_partition,
                    worker: loc.worker,
                },
                blocks: None,
            },
            None => failed(format!(
                "shuffle {} map partition {} is not among the task's inputs",
                f.shuffle, f.map_partition
            )),
        },
        Err(TaskError::Failed(e)) => failed(e.to_string()),
    }
}

/// Where `task.inputs` says map output `map_partition` of `shuffle` lives.
pub fn location(task: &TaskDesc, shuffle: u32, map_partition: u32) -> Option<MapLocation> {
    task.inputs
        .iter()
        .find(|i| i.shuffle == shuffle)?
        .maps
        .get(map_partition as usize)
        .copied()
        .filter(|m| m.map_partition == map_partition)
}

/// [`TaskInputs`] that fetch every block from the worker incarnation the
/// task's `inputs` name. `fetch(shuffle, location, reduce)` returns the
/// block of reduce partition `reduce` of that map output, or `None` if it
/// cannot (the worker is gone, restarted, unreachable, or no longer holds
/// it): that is a fetch failure.
///
/// `reduce` is the partition the operator asks for, which is not always
/// the task's own: a union's partition `p` reads its child's partition
/// `p - (partitions of the children before it)`.
pub struct FetchFrom<'a, F> {
    task: &'a TaskDesc,
    fetch: F,
    topics: Option<&'a dyn TopicReader>,
    spill: Option<Spill<'a>>,
}

impl<'a, F> FetchFrom<'a, F>
where
    F: Fn(u32, &MapLocation, u32) -> Option<Vec<u8>>,
{
    pub fn new(task: &'a TaskDesc, fetch: F) -> Self {
        FetchFrom {
            task,
            fetch,
            topics: None,
            spill: None,
        }
    }

    /// The task's memory limit and spill space (none: no limit).
    pub fn with_spill(mut self, spill: Option<Spill<'a>>) -> Self {
        self.spill = spill;
        self
    }

    /// Where topic scans read from (none: a topic source fails the task).
    pub fn with_topics(mut self, topics: &'a dyn TopicReader) -> Self {
        self.topics = Some(topics);
        self
    }
}

impl<F> TaskInputs for FetchFrom<'_, F>
where
    F: Fn(u32, &MapLocation, u32) -> Option<Vec<u8>>,
{
    fn shuffle_blocks(&self, shuffle: u32, reduce: u32) -> Result<Vec<Vec<u8>>, FetchFailed> {
        let Some(input) = self.task.inputs.iter().find(|i| i.shuffle == shuffle) else {
            // Not an input the driver placed: no map output to name.
            return Err(FetchFailed {
                shuffle,
                map_partition: u32::MAX,
            });
        };
        input
            .maps
            .iter()
            .map(|m| {
                (self.fetch)(shuffle, m, reduce).ok_or(FetchFailed {
                    shuffle,
                    map_partition: m.map_partition,
                })
            })
            .collect()
    }

    fn topics(&self) -> Option<&dyn TopicReader> {
        self.topics
    }

    fn spill(&self) -> Option<Spill<'_>> {
        self.spill
    }
}

/// The rows of a job's results (`JobSucceeded::results`, one IPC block per
/// result partition, in partition order) as record batches, in order.
pub fn decode_results(results: &[Vec<u8>]) -> Result<Vec<RecordBatch>> {
    let mut out = Vec::new();
    for block in results {
        out.extend(shuffle::decode(block)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use millrace_core::batch::ShuffleInput;

    use super::*;
    use crate::expr::{col, count_star, sum};
    use crate::physical::{PlannerConfig, cut};
    use crate::plan::LogicalPlan;
    use crate::reference::{evaluate, same_rows};
    use crate::source::Source;
    use crate::types::{DataType, Field, Schema, Value};
    use crate::value::batches_to_rows;

    fn plan() -> LogicalPlan {
        let schema = Schema::new(vec![
            Field::new("k", DataType::Utf8),
            Field::new("v", DataType::Int64),
        ]);
        let rows = (0..40)
            .map(|i| vec![Value::Str(format!("key{}", i % 7)), Value::Int(i)])
            .collect();
        LogicalPlan::scan(Source::Memory {
            schema,
            rows,
            partitions: 3,
        })
        .unwrap()
        .aggregate(
            vec![(col("k"), "k".into())],
            vec![(count_star(), "n".into()), (sum(col("v")), "s".into())],
        )
        .unwrap()
    }

    /// Every map output at worker 7 epoch 1, as the driver would place it.
    fn task(spec: &JobSpec, stage: usize, partition: u32) -> TaskDesc {
        let s = &spec.stages[stage];
        let inputs = s
            .parents
            .iter()
            .map(|parent| {
                let n = spec
                    .stages
                    .iter()
                    .find(|x| x.id == *parent)
                    .unwrap()
                    .partitions;
                ShuffleInput {
                    shuffle: *parent,
                    maps: (0..n)
                        .map(|m| MapLocation {
                            map_partition: m,
                            worker: 7,
                            worker_epoch: 1,
                        })
                        .collect(),
                }
            })
            .collect();
        TaskDesc {
            job: 1,
            stage: s.id,
            stage_attempt: 0,
            partition,
            attempt: 100 + u64::from(partition),
            payload: s.payload.clone(),
            inputs,
            output: s.output.clone(),
        }
    }

    type Disk = BTreeMap<(u32, u32), Vec<Vec<u8>>>;

    fn run(task: &TaskDesc, disk: &Disk) -> Executed {
        let inputs = FetchFrom::new(task, |shuffle, m: &MapLocation, reduce| {
            assert_eq!((m.worker, m.worker_epoch), (7, 1));
            disk.get(&(shuffle, m.map_partition))?
                .get(reduce as usize)
                .cloned()
        });
        execute(task, &inputs)
    }

    #[test]
    fn a_job_spec_runs_task_by_task_to_the_reference_answer() {
        let plan = plan();
        let stages = cut(
            &plan,
            PlannerConfig {
                shuffle_partitions: 2,
            },
        )
        .unwrap();
        let spec = job_spec(&stages);
        assert_eq!(spec.stages.len(), 2);
        assert_eq!(
            spec.stages[0].output,
            CoreOutput::ShuffleMap { partitions: 2 }
        );
        assert_eq!(spec.stages[1].output, CoreOutput::Result);
        assert_eq!(spec.stages[1].parents, vec![spec.stages[0].id]);
        let mut disk = Disk::new();
        let mut results = Vec::new();
        for (i, s) in spec.stages.iter().enumerate() {
            for p in 0..s.partitions {
                let t = task(&spec, i, p);
                assert_eq!(stage_plan(&t).unwrap(), stages[i].plan);
                let done = run(&t, &disk);
                match done.outcome {
                    TaskOutcome::Success { result: Some(r) } => results.push(r),
                    TaskOutcome::Success { result: None } => {
                        disk.insert((s.id, p), done.blocks.unwrap());
                    }
                    other => panic!("{other:?}"),
                }
            }
        }
        let rows = batches_to_rows(&decode_results(&results).unwrap());
        same_rows(&rows, &evaluate(&plan, None).unwrap(), false).unwrap();
    }

    #[test]
    fn a_missing_block_is_a_fetch_failure_naming_its_worker() {
        let stages = cut(
            &plan(),
            PlannerConfig {
                shuffle_partitions: 2,
            },
        )
        .unwrap();
        let spec = job_spec(&stages);
        let mut disk = Disk::new();
        for p in 0..spec.stages[0].partitions {
            let done = run(&task(&spec, 0, p), &disk);
            disk.insert((spec.stages[0].id, p), done.blocks.unwrap());
        }
        disk.remove(&(spec.stages[0].id, 1));
        let done = run(&task(&spec, 1, 0), &disk);
        assert_eq!(
            done.outcome,
            TaskOutcome::FetchFailed {
                shuffle: spec.stages[0].id,
                map_partition: 1,
                worker: 7
            }
        );
        // A block that does not decode is as good as a missing one.
        disk.insert((spec.stages[0].id, 1), vec![b"garbage".to_vec(); 2]);
        let done = run(&task(&spec, 1, 0), &disk);
        assert!(
            matches!(
                done.outcome,
                TaskOutcome::FetchFailed {
                    map_partition: 1,
                    ..
                }
            ),
            "{done:?}"
        );
    }

    #[test]
    fn a_payload_that_is_not_the_stage_s_plan_fails_the_task() {
        let stages = cut(&plan(), PlannerConfig::default()).unwrap();
        let spec = job_spec(&stages);
        let mut t = task(&spec, 0, 0);
        t.output = CoreOutput::Result;
        assert!(matches!(
            run(&t, &Disk::new()).outcome,
            TaskOutcome::Failed { .. }
        ));
        t.payload = b"not a plan".to_vec();
        assert!(matches!(
            run(&t, &Disk::new()).outcome,
            TaskOutcome::Failed { .. }
        ));
    }
}
