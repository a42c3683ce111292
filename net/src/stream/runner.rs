//! The task that runs one stream query: it steps the core's
//! [`StreamQuery`] with wall-clock time and executes its effects, one at a
//! time, against the cluster — logs in internal topics ([`QueryLogs`]),
//! listings with ListOffsets, batches computed by the engine, output
//! through the exactly-once writer. What the coordinator decides is never
//! second-guessed here: a failure is reported back as the input it expects
//! (`IoFailed`, `BatchFailed`) and it chooses what happens next.

use crate::batch::service::Jobs;
use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use millrace_core::stream::{Appended, BatchId, BatchResult, OffsetEntry, PartitionEnd, QueryEffect, QueryInput, QueryStatus, StreamQuery};
use millrace_engine::stream::{StreamPlan, StreamState};
use tokio::sync::Notify;

use super::def::QueryDef;
use super::logs::{Logs, QueryLogs, STREAMS_TOPIC, timed};
use super::progress::Recent;
use super::sink::{self, SinkTarget};
use super::wall_ms;
use crate::client::ClientError;

/// What the service (and `describe`) sees of a running query.
#[derive(Debug, Clone)]
pub struct Shared {
    pub status: QueryStatus,
    pub recent: Recent,
    /// The last failed log read, append or listing, until one succeeds.
    pub retrying: Option<String>,
}

/// A running query, as the service holds it.
pub struct RunnerHandle {
    pub shared: Arc<Mutex<Shared>>,
    stop: Arc<AtomicBool>,
    wake: Arc<Notify>,
    pub task: tokio::task::JoinHandle<()>,
}

impl RunnerHandle {
    /// Asks the query to stop; it stops between two effects.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        self.wake.notify_one();
    }

    pub fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    pub fn snapshot(&self) -> Shared {
        self.shared.lock().map(|s| s.clone()).unwrap_or_else(|e| e.into_inner().clone())
    }
}

struct Runner {
    def: QueryDef,
    plan: StreamPlan,
    query: StreamQuery,
    logs: QueryLogs,
    /// Runs each batch as a job of this node's driver.
    jobs: Jobs,
    shared: Arc<Mutex<Shared>>,
    stop: Arc<AtomicBool>,
    wake: Arc<Notify>,
    timers: BTreeSet<i64>,
    /// No offsets logged by this runner yet: a batch run now is one that an
    /// earlier runner logged and did not commit.
    fresh: bool,
}

/// Starts the query's task on the current runtime.
pub fn spawn(def: QueryDef, plan: StreamPlan, bootstrap: &str, jobs: Jobs) -> RunnerHandle {
    let shared = Arc::new(Mutex::new(Shared { status: QueryStatus::Recovering, recent: Recent::default(), retrying: None }));
    let stop = Arc::new(AtomicBool::new(false));
    let wake = Arc::new(Notify::new());
    let runner = Runner {
        query: StreamQuery::new(def.config(&plan)),
        // The writer's name makes the keys of this runner's log appends
        // differ from any other runner's, on this node or another.
        logs: QueryLogs::new(&def.spec.name, bootstrap, &format!("{}.{}", def.owner, wall_ms()), def.retain_batches()),
        def,
        plan,
        jobs,
        shared: Arc::clone(&shared),
        stop: Arc::clone(&stop),
        wake: Arc::clone(&wake),
        timers: BTreeSet::new(),
        fresh: true,
    };
    let task = tokio::spawn(runner.run());
    RunnerHandle { shared, stop, wake, task }
}

fn io(what: &str, e: ClientError) -> QueryInput {
    QueryInput::IoFailed { reason: format!("{what}: {e}") }
}

impl Runner {
    fn shared(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish(&self) {
        let status = self.query.status();
        self.shared().status = status;
    }

    async fn run(mut self) {
        let name = self.def.spec.name.clone();
        tracing::info!(query = %name, sql = %self.def.spec.sql, "stream query starting");
        let mut queue: VecDeque<QueryEffect> = VecDeque::new();
        let mut out = Vec::new();
        self.query.start(&mut out);
        queue.extend(out);
        loop {
            while let Some(effect) = queue.pop_front() {
                if let Some(input) = self.execute(effect).await {
                    let mut out = Vec::new();
                    self.query.step(wall_ms(), input, &mut out);
                    queue.extend(out);
                }
                if self.stop.load(Ordering::Relaxed) && !self.query.is_stopped() {
                    let mut out = Vec::new();
                    self.query.step(wall_ms(), QueryInput::Stop, &mut out);
                    queue.extend(out);
                }
                self.publish();
            }
            if self.query.is_stopped() {
                break;
            }
            let now = wall_ms();
            let next = self.timers.first().copied().unwrap_or(now + 60_000);
            let wait = Duration::from_millis((next - now).max(0) as u64);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.wake.notified() => {}
            }
            let now = wall_ms();
            let input = if self.stop.load(Ordering::Relaxed) {
                QueryInput::Stop
            } else {
                let due = self.timers.first().is_some_and(|&at| at <= now);
                self.timers.retain(|&at| at > now);
                if !due {
                    continue;
                }
                QueryInput::Tick
            };
            let mut out = Vec::new();
            self.query.step(now, input, &mut out);
            queue.extend(out);
        }
        tracing::info!(query = %name, status = ?self.query.status(), "stream query ended");
    }

    /// Executes one effect; the coordinator's answer to it, if any.
    async fn execute(&mut self, effect: QueryEffect) -> Option<QueryInput> {
        let input = match effect {
            QueryEffect::ReadLogs => match self.logs.read().await {
                Ok((offsets, commits)) => QueryInput::Recovered { offsets, commits },
                Err(e) => io("reading the logs", e),
            },
            QueryEffect::List { topics } => match list(&mut self.logs.logs, &topics).await {
                Ok(ends) => QueryInput::Listed { ends },
                Err(e) => io("listing the input partitions", e),
            },
            QueryEffect::LogOffsets { entry } => {
                self.fresh = false;
                match self.logs.log_offsets(&entry).await {
                    Ok(Appended::Winner(winner)) => QueryInput::OffsetsLogged { winner },
                    Ok(Appended::Outrun { floor }) => {
                        tracing::warn!(query = %self.def.spec.name, batch = entry.batch, floor, "another runner of this query went on and purged this batch: reading the logs again");
                        QueryInput::Outrun { batch: entry.batch, floor }
                    }
                    Err(e) => io("writing the offset log", e),
                }
            }
            QueryEffect::RunBatch { entry, state_version, sink_base } => {
                let batch = entry.batch;
                if std::mem::take(&mut self.fresh) {
                    tracing::info!(query = %self.def.spec.name, batch, "re-running a batch logged before the restart, with its logged ranges");
                }
                match self.run_batch(entry, state_version, sink_base).await {
                    Ok(result) => QueryInput::BatchDone { batch, result },
                    Err(reason) => {
                        tracing::warn!(query = %self.def.spec.name, batch, %reason, "stream batch failed");
                        QueryInput::BatchFailed { batch, reason }
                    }
                }
            }
            QueryEffect::LogCommit { entry } => match self.logs.log_commit(&entry).await {
                Ok(()) => {
                    if self.plan.is_stateful()
                        && let Some(old) = entry.batch.checked_sub(2)
                        && let Err(e) = self.logs.drop_state(old).await
                    {
                        // Only space is lost: the next commit drops the next one.
                        tracing::warn!(query = %self.def.spec.name, version = old, "could not delete an old state version: {e}");
                    }
                    match self.logs.purge(entry.batch).await {
                        Ok(0) => {}
                        Ok(n) => tracing::debug!(query = %self.def.spec.name, entries = n, held = self.logs.entries_held(), "purged old offset and commit entries"),
                        // Only space is lost: a later commit purges them.
                        Err(e) => tracing::warn!(query = %self.def.spec.name, "could not purge old offset and commit entries: {e}"),
                    }
                    QueryInput::CommitLogged { batch: entry.batch }
                }
                Err(e) => io("writing the commit log", e),
            },
            QueryEffect::Progress(p) => {
                tracing::debug!(query = %self.def.spec.name, batch = p.batch, rows = p.input_rows, out = p.output_records, "stream batch committed");
                self.shared().recent.push(p);
                return None;
            }
            QueryEffect::Timer { at } => {
                self.timers.insert(at);
                return None;
            }
            QueryEffect::Stopped { error } => {
                if let Some(e) = &error {
                    tracing::error!(query = %self.def.spec.name, error = %e, "stream query failed");
                } else if !self.stop.load(Ordering::Relaxed) {
                    // Its trigger ran out (once, available-now): it is done,
                    // and is not resumed when the node restarts.
                    if let Err(e) = self.logs.logs.append(STREAMS_TOPIC, &self.def.spec.name, None).await {
                        tracing::warn!(query = %self.def.spec.name, %e, "could not remove the finished query's definition");
                    }
                }
                return None;
            }
        };
        if let QueryInput::IoFailed { reason } = &input {
            tracing::warn!(query = %self.def.spec.name, %reason, "stream query retrying");
            self.shared().retrying = Some(reason.clone());
        } else {
            self.shared().retrying = None;
        }
        Some(input)
    }

    async fn run_batch(&mut self, entry: OffsetEntry, state_version: Option<BatchId>, sink_base: Vec<(i32, i32)>) -> Result<BatchResult, String> {
        let name = self.def.spec.name.clone();
        let state = match (self.plan.is_stateful(), state_version) {
            (true, Some(v)) => {
                let bytes = self
                    .logs
                    .load_state(v)
                    .await
                    .map_err(|e| format!("reading state version {v} from __millrace_stream_state: {e}"))?
                    .ok_or_else(|| format!("state version {v} of query {name} is not stored in __millrace_stream_state (was it deleted?)"))?;
                StreamState::from_bytes(&bytes).map_err(|e| format!("state version {v} of query {name}: {e}"))?
            }
            _ => StreamState::default(),
        };
        let out = super::batch::compute(&self.jobs, &name, &self.plan, entry.clone(), state).await?;
        if self.plan.is_stateful() {
            self.logs
                .store_state(entry.batch, &out.state.to_bytes())
                .await
                .map_err(|e| format!("storing state version {} in __millrace_stream_state: {e}", entry.batch))?;
        }
        let target = SinkTarget {
            topic: &self.def.sink_topic,
            partitions: self.def.sink_partitions,
            producer_id: self.def.producer_id,
            producer_epoch: self.def.producer_epoch,
            timestamp: entry.planned_at,
        };
        let sink_next = sink::write(&mut self.logs.logs, &target, &out.records, &sink_base, &self.stop).await?;
        Ok(BatchResult { max_event_time: out.max_event_time, sink_next, input_rows: entry.input_records(), output_records: out.records.len() as u64 })
    }
}

/// Every partition of `topics` with its log start and high watermark. A
/// topic that does not exist lists no partitions (the coordinator says
/// which partition it lost).
pub async fn list(logs: &mut Logs, topics: &[String]) -> Result<Vec<PartitionEnd>, ClientError> {
    let mut ends = Vec::new();
    for topic in topics {
        let client = logs.client().await?;
        let meta = match timed(client.metadata(Some(&[topic.as_str()]), false)).await {
            Ok(m) => m,
            Err(e) if e.code() == Some(3) => continue,
            Err(e) => {
                logs.reconnect();
                return Err(e);
            }
        };
        for p in meta.iter().filter(|t| &t.name == topic).flat_map(|t| t.partitions.clone()) {
            let client = logs.client().await?;
            let r = async {
                let log_start = timed(client.list_offset(topic, p, -2)).await?;
                let high_watermark = timed(client.list_offset(topic, p, -1)).await?;
                Ok::<_, ClientError>(PartitionEnd { topic: topic.clone(), partition: p, log_start, high_watermark })
            }
            .await;
            match r {
                Ok(end) => ends.push(end),
                Err(e) => {
                    logs.reconnect();
                    return Err(e);
                }
            }
        }
    }
    Ok(ends)
}
