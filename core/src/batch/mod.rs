//! The batch engine's scheduling: a driver machine that turns jobs into
//! stage attempts and task attempts (Spark's DAGScheduler and
//! TaskSetManager), and a worker machine that runs the tasks it is given.
//!
//! Both are generic over the work. A stage's plan fragment is opaque bytes
//! (`payload`) that the engine crate serializes and its executor
//! interprets; the driver only knows the shape of the job — how many
//! partitions each stage has and which shuffles it reads — and where each
//! shuffle output lives. See the book chapter "The batch driver and
//! workers" for the rules and an example.

mod dag;
mod driver;
mod speculation;
mod tasks;
mod worker;

use serde::{Deserialize, Serialize};

use crate::Millis;

pub use driver::Driver;
pub use worker::{Worker, WorkerConfig, WorkerEffect, WorkerInput};

pub type JobId = u64;
/// A stage's id within its job (shuffles are named by the id of the
/// shuffle-map stage that writes them).
pub type StageId = u32;
pub type WorkerId = u32;
/// A task attempt's id, unique per driver: statuses name the attempt, so a
/// late report of a superseded attempt cannot be mistaken for a new one.
pub type AttemptId = u64;

/// A job: its stages in topological order (every parent before its
/// children); the last one is the result stage. Stage ids are the job's
/// own; shuffles are not shared between jobs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    pub stages: Vec<StageSpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageSpec {
    pub id: StageId,
    /// The number of tasks.
    pub partitions: u32,
    /// The shuffle-map stages whose outputs this stage reads.
    pub parents: Vec<StageId>,
    pub output: StageOutput,
    /// The plan fragment, opaque to the driver.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    /// Workers preferred for each partition (empty, or one list per
    /// partition; an empty list means anywhere).
    pub preferred: Vec<Vec<WorkerId>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StageOutput {
    /// Each task writes its output split into `partitions` buckets, kept on
    /// its worker for the next stage to fetch.
    ShuffleMap { partitions: u32 },
    /// Each task returns a result to the driver.
    Result,
}

/// One task attempt, as a worker receives it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskDesc {
    pub job: JobId,
    pub stage: StageId,
    pub stage_attempt: u32,
    pub partition: u32,
    pub attempt: AttemptId,
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    /// Where every map output this task reads lives, one entry per parent.
    pub inputs: Vec<ShuffleInput>,
    pub output: StageOutput,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShuffleInput {
    pub shuffle: StageId,
    /// One entry per map partition, in partition order.
    pub maps: Vec<MapLocation>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapLocation {
    pub map_partition: u32,
    pub worker: WorkerId,
    /// The incarnation of the worker that wrote it; a worker that restarted
    /// (new epoch) no longer has it.
    pub worker_epoch: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskOutcome {
    /// `result` is the result stage's answer for the partition (`None` for
    /// a shuffle-map task, whose output stays on the worker).
    Success {
        #[serde(with = "serde_bytes")]
        result: Option<Vec<u8>>,
    },
    Failed { reason: String },
    /// A map output this task needed could not be fetched from `worker`.
    FetchFailed { shuffle: StageId, map_partition: u32, worker: WorkerId },
    Killed,
}

/// The driver's settings (Spark's names and defaults in the comments).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DriverConfig {
    /// `spark.task.maxFailures`: failures of one partition within a stage
    /// attempt before the job fails.
    pub task_max_failures: u32,
    /// `spark.stage.maxConsecutiveAttempts`: consecutive failed attempts of
    /// a stage (fetch failures) before the job fails.
    pub stage_max_attempts: u32,
    /// A worker not heard from for this long is lost.
    pub worker_timeout_ms: i64,
    /// `spark.speculation` (off in Spark, on here).
    pub speculation: bool,
    /// `spark.speculation.quantile`
    pub speculation_quantile: f64,
    /// `spark.speculation.multiplier`
    pub speculation_multiplier: f64,
    /// `spark.speculation.minTaskRuntime`
    pub speculation_min_ms: i64,
    /// `spark.speculation.interval`
    pub speculation_interval_ms: i64,
    /// The DAGScheduler's `RESUBMIT_TIMEOUT`: how long after a fetch
    /// failure the failed stages are resubmitted, so the reports of one
    /// loss lead to one resubmission.
    pub resubmit_delay_ms: i64,
}

impl Default for DriverConfig {
    fn default() -> Self {
        Self {
            task_max_failures: 4,
            stage_max_attempts: 4,
            worker_timeout_ms: 10_000,
            speculation: true,
            speculation_quantile: 0.9,
            speculation_multiplier: 3.0,
            speculation_min_ms: 100,
            speculation_interval_ms: 100,
            resubmit_delay_ms: 200,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum DriverInput {
    SubmitJob { job: JobId, spec: JobSpec },
    CancelJob { job: JobId },
    /// A worker incarnation announces itself; a new `epoch` means the
    /// previous incarnation is gone, with its tasks and shuffle outputs.
    RegisterWorker { worker: WorkerId, epoch: u64, slots: u32 },
    /// Every `heartbeat_ms`; `worker_timeout_ms` without any message of
    /// the incarnation and it is lost.
    Heartbeat { worker: WorkerId, epoch: u64 },
    TaskStatus { worker: WorkerId, epoch: u64, attempt: AttemptId, outcome: TaskOutcome },
    /// The adapter saw the connection to that incarnation drop (messages
    /// may have been lost): treat it as lost now rather than after
    /// `worker_timeout_ms`. If it reconnects with the same epoch it comes
    /// back empty.
    WorkerLost { worker: WorkerId, epoch: u64 },
    Tick,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum DriverEffect {
    Launch { worker: WorkerId, task: TaskDesc },
    Kill { worker: WorkerId, attempt: AttemptId },
    /// One result per result partition, in partition order.
    JobSucceeded { job: JobId, results: Vec<Vec<u8>> },
    /// Also the answer to a cancellation, with reason `"cancelled"`.
    JobFailed { job: JobId, reason: String },
    /// The job is over: the worker may delete its shuffle outputs.
    CleanJob { worker: WorkerId, job: JobId },
    /// Deliver a `Tick` at `at` (or later).
    Timer { at: Millis },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobState {
    Running,
    Succeeded,
    Failed { reason: String },
    Cancelled,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobProgress {
    pub job: JobId,
    pub state: JobState,
    /// In the job's stage order.
    pub stages: Vec<StageProgress>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageProgress {
    pub id: StageId,
    /// Partitions (tasks) of the stage.
    pub total: u32,
    /// Partitions whose output is available (a registered map output, a
    /// committed result).
    pub done: u32,
    /// Task attempts running for the current stage attempt (speculative
    /// copies included).
    pub running: u32,
    /// The current (latest) stage attempt, from 0.
    pub attempt: u32,
}
