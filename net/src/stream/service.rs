//! The stream queries of one `millrace serve` node. A query runs on the
//! node that started it (its owner, in the definition); when the node
//! starts, it resumes every query of `__millrace_streams` that it owns (on
//! a single node: every query). Queries run in this process, each as a
//! [`runner`](super::runner) task; their batches are computed here, not yet
//! as jobs on the cluster's workers.
//!
//! In a cluster every node watches the definitions against the brokers
//! Metadata names live: a query whose owner stayed fenced for
//! [`TAKEOVER_AFTER_CHECKS`] checks is taken over by the live node with
//! the smallest id (it writes the definition with itself as owner and
//! resumes the query from its logs), and a node that finds a query it runs
//! owned by another node stops it. Two runners at once — views of the
//! cluster that differ for a moment, an owner cut off but not dead — cost
//! work, not correctness: the offset log's first entry for a batch wins
//! and the sink's sequences make a second writer's chunks duplicates
//! (the book's "Exactly once").

use crate::batch::service::Jobs;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use millrace_core::stream::QueryStatus;

use super::def::{QueryDef, check_name, mode_text, trigger_text};
use super::logs::{EMPTY_RETRIES, Logs, STREAMS_TOPIC, read_definitions, timed};
use super::runner::{self, RunnerHandle};
use crate::batch::proto::{StreamInfo, StreamSpec};

/// How often a cluster node checks who owns each query.
const WATCH_EVERY: Duration = Duration::from_secs(1);
/// Checks in a row that must find a query's owner fenced before another
/// node takes the query over (the controller fences a node 1.5 s after
/// its last heartbeat; this rides out a node that restarts at once).
const TAKEOVER_AFTER_CHECKS: u32 = 3;
/// How long `stop` waits for the query's task to end.
const STOP_WAIT: Duration = Duration::from_secs(10);
const UNKNOWN_TOPIC: i16 = 3;

struct Query {
    def: QueryDef,
    runner: RunnerHandle,
}

struct Inner {
    node: u32,
    /// Every node resumes every query (no cluster peers).
    single: bool,
    kafka: String,
    /// Runs each micro-batch as a job on the cluster's workers.
    jobs: Jobs,
    queries: Mutex<BTreeMap<String, Query>>,
    /// Starts and stops one at a time (a name is checked, then taken).
    changing: tokio::sync::Mutex<()>,
    resume: Mutex<Option<tokio::task::JoinHandle<()>>>,
    watch: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

#[derive(Clone)]
pub struct StreamService {
    inner: Arc<Inner>,
}

impl StreamService {
    /// Starts the service of node `node`, whose brokers are at `kafka`, and
    /// resumes its queries in the background (the broker may not serve yet).
    pub fn start(node: u32, single: bool, kafka: &str, jobs: Jobs) -> StreamService {
        let inner = Arc::new(Inner {
            node,
            single,
            kafka: kafka.to_string(),
            jobs,
            queries: Mutex::default(),
            changing: tokio::sync::Mutex::new(()),
            resume: Mutex::new(None),
            watch: Mutex::new(None),
        });
        let s = StreamService { inner };
        let bg = s.clone();
        let task = tokio::spawn(async move { bg.resume().await });
        *lock(&s.inner.resume) = Some(task);
        if !single {
            let bg = s.clone();
            *lock(&s.inner.watch) = Some(tokio::spawn(async move { bg.watch().await }));
        }
        s
    }

    /// Stops every query task of this node (the node is shutting down;
    /// their definitions stay, so they resume when it starts again).
    pub fn shutdown(&self) {
        for slot in [&self.inner.resume, &self.inner.watch] {
            if let Some(t) = lock(slot).take() {
                t.abort();
            }
        }
        for q in lock(&self.inner.queries).values() {
            q.runner.task.abort();
        }
    }

    fn queries(&self) -> MutexGuard<'_, BTreeMap<String, Query>> {
        lock(&self.inner.queries)
    }

    async fn resume(&self) {
        let mut attempt = 0u32;
        let defs = loop {
            let mut logs = Logs::for_topics(&self.inner.kafka, &[STREAMS_TOPIC]).without_creating();
            match read_definitions(&mut logs).await {
                // Nothing defined, or a restarted cluster node whose
                // metadata has not caught up yet: look again for a while.
                Ok((current, _)) if current.is_empty() && attempt < EMPTY_RETRIES => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Ok((current, _)) => break current,
                Err(e) => {
                    attempt += 1;
                    if attempt.is_multiple_of(20) {
                        tracing::warn!(%e, "cannot read the stream query definitions yet; retrying");
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        };
        let _guard = self.inner.changing.lock().await;
        for (name, bytes) in defs {
            let def = match QueryDef::from_json(&bytes) {
                Ok(d) => d,
                Err(e) => {
                    tracing::error!(query = %name, %e, "not resuming a stream query");
                    continue;
                }
            };
            if !(self.inner.single || def.owner == self.inner.node) || self.queries().contains_key(&name) {
                continue;
            }
            match def.plan() {
                Ok(plan) => {
                    tracing::info!(query = %name, "resuming stream query");
                    let runner = runner::spawn(def.clone(), plan, &self.inner.kafka, self.inner.jobs.clone());
                    self.queries().insert(name, Query { def, runner });
                }
                Err(e) => tracing::error!(query = %name, %e, "not resuming a stream query: its SQL no longer plans"),
            }
        }
    }

    /// Cluster mode: the ownership checks, for as long as the node runs.
    async fn watch(&self) {
        let mut missing: BTreeMap<String, u32> = BTreeMap::new();
        let mut failures = 0u32;
        loop {
            tokio::time::sleep(WATCH_EVERY).await;
            match self.check_owners(&mut missing).await {
                Ok(()) => failures = 0,
                Err(e) => {
                    failures += 1;
                    // A fresh cluster has no definitions topic yet: say so
                    // only when it lasts.
                    if failures.is_multiple_of(10) {
                        tracing::warn!(%e, failures, "stream query ownership checks keep failing; trying again");
                    } else {
                        tracing::debug!(%e, "stream query ownership check failed; trying again");
                    }
                }
            }
        }
    }

    /// One check: stop the queries another node took over, take over the
    /// queries whose owner is gone if this node is the successor.
    /// `missing` counts, per query, the checks in a row that found its
    /// owner fenced.
    async fn check_owners(&self, missing: &mut BTreeMap<String, u32>) -> Result<(), crate::client::ClientError> {
        // The definitions only: another query log may be offline with the
        // dead node (one not replicated yet), and must not stop the check.
        let mut logs = Logs::for_topics(&self.inner.kafka, &[STREAMS_TOPIC]).without_creating();
        let (current, _) = read_definitions(&mut logs).await?;
        let live = timed(logs.client().await?.live_brokers()).await?;
        let me = self.inner.node;
        let _guard = self.inner.changing.lock().await;
        let defs: BTreeMap<String, QueryDef> =
            current.iter().filter_map(|(name, bytes)| QueryDef::from_json(bytes).ok().map(|d| (name.clone(), d))).collect();
        let running = |q: &Query| !q.runner.task.is_finished();
        let taken: Vec<(String, u32)> = self
            .queries()
            .iter()
            .filter(|(_, q)| running(q))
            .filter_map(|(name, _)| defs.get(name).filter(|d| d.owner != me).map(|d| (name.clone(), d.owner)))
            .collect();
        for (name, owner) in taken {
            tracing::warn!(query = %name, owner, "stream query taken over by another node; stopping it here");
            if let Some(q) = self.queries().remove(&name) {
                q.runner.stop();
            }
        }
        missing.retain(|name, _| defs.contains_key(name));
        let successor = live.first().copied();
        for (name, def) in defs {
            if live.contains(&(def.owner as i32)) {
                missing.remove(&name);
                continue;
            }
            let checks = missing.entry(name.clone()).or_default();
            *checks += 1;
            if *checks < TAKEOVER_AFTER_CHECKS || successor != Some(me as i32) || self.queries().get(&name).is_some_and(running) {
                continue;
            }
            let plan = match def.plan() {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(query = %name, %e, "not taking over a stream query: its SQL no longer plans");
                    continue;
                }
            };
            let gone = def.owner;
            let def = QueryDef { owner: me, ..def };
            logs.append(STREAMS_TOPIC, &name, Some(&def.to_json())).await?;
            tracing::warn!(query = %name, from = gone, "taking over a stream query: its node is gone; resuming it from its logs");
            let runner = runner::spawn(def.clone(), plan, &self.inner.kafka, self.inner.jobs.clone());
            self.queries().insert(name.clone(), Query { def, runner });
            missing.remove(&name);
        }
        Ok(())
    }

    /// Defines and starts a query; the answer to print, or why not.
    pub async fn start_query(&self, spec: StreamSpec) -> Result<String, String> {
        check_name(&spec.name)?;
        let _guard = self.inner.changing.lock().await;
        let name = spec.name.clone();
        if let Some(q) = self.queries().get(&name)
            && !q.runner.task.is_finished()
        {
            return Err(format!("a stream query named {name} is already running on node {} (stop it first, or choose another name)", self.inner.node));
        }
        let draft = QueryDef {
            spec: spec.clone(),
            owner: self.inner.node,
            producer_id: -1,
            producer_epoch: -1,
            input_topic: String::new(),
            sink_topic: String::new(),
            sink_partitions: 0,
            created_at: super::wall_ms(),
        };
        let plan = draft.plan().map_err(|e| format!("bad stream query: {e}"))?;
        let mut logs = Logs::new(&self.inner.kafka);
        let unreachable = |e: crate::client::ClientError| format!("cannot reach the brokers at {}: {e}", self.inner.kafka);
        let (current, last) = read_definitions(&mut logs).await.map_err(unreachable)?;
        if let Some(bytes) = current.get(&name) {
            let owner = QueryDef::from_json(bytes).map(|d| d.owner.to_string()).unwrap_or_else(|_| "?".into());
            return Err(format!("a stream query named {name} already exists (owned by node {owner}); stop it first, or choose another name"));
        }
        let input = plan.input_topics().join(", ");
        let sink = plan.sink_topic().to_string();
        for t in plan.input_topics() {
            if partitions_soon(&mut logs, t).await.map_err(unreachable)? == 0 {
                return Err(format!("unknown topic '{t}': the query reads topic('{t}', ...), which does not exist on the cluster"));
            }
        }
        for t in plan.table_topics() {
            if partitions_soon(&mut logs, t).await.map_err(unreachable)? == 0 {
                return Err(format!("unknown topic '{t}': the query joins topic_table('{t}', ...), which does not exist on the cluster; create it first (compacted: millrace topic create {t} -c cleanup.policy=compact)"));
            }
        }
        let sink_partitions = partitions_soon(&mut logs, &sink).await.map_err(unreachable)?;
        if sink_partitions == 0 {
            return Err(format!("unknown topic '{sink}': the query writes INSERT INTO {sink}, which does not exist; create it first (millrace topic create {sink})"));
        }
        let mut def = QueryDef { input_topic: input.clone(), sink_topic: sink.clone(), sink_partitions, ..draft };
        let mut resumed = false;
        match last.get(&name).map(|b| QueryDef::from_json(b)) {
            Some(Ok(prev)) if prev.same_query(&spec) => {
                // The same query again: it resumes its logs, so it must
                // write as the same producer, with the same partitioning.
                def.producer_id = prev.producer_id;
                def.producer_epoch = prev.producer_epoch;
                def.sink_partitions = prev.sink_partitions;
                resumed = true;
            }
            Some(_) => {
                return Err(format!(
                    "the name {name} was used before for a different query, whose logs remain in the __millrace_stream_* topics (resuming them with other SQL would mix two queries' results); choose another name"
                ));
            }
            None => {
                let client = logs.client().await.map_err(unreachable)?;
                let (pid, epoch) = timed(client.init_producer_id()).await.map_err(|e| format!("allocating the query's producer id: {e}"))?;
                def.producer_id = pid;
                def.producer_epoch = epoch;
            }
        }
        logs.append(STREAMS_TOPIC, &name, Some(&def.to_json())).await.map_err(|e| format!("storing the query's definition in {STREAMS_TOPIC}: {e}"))?;
        let runner = runner::spawn(def.clone(), plan, &self.inner.kafka, self.inner.jobs.clone());
        self.queries().insert(name.clone(), Query { def, runner });
        Ok(format!(
            "stream query {name} {} on node {}: {input} -> {sink}, {} mode, trigger {}",
            if resumed { "resumed from its logs" } else { "started" },
            self.inner.node,
            mode_text(spec.output_mode),
            trigger_text(spec.trigger)
        ))
    }

    /// Stops a query of this node and removes its definition.
    pub async fn stop_query(&self, name: &str) -> Result<String, String> {
        let _guard = self.inner.changing.lock().await;
        let task = {
            let mut queries = self.queries();
            let Some(q) = queries.get_mut(name) else {
                return Err(format!("no stream query named {name} on node {}", self.inner.node));
            };
            q.runner.stop();
            std::mem::replace(&mut q.runner.task, tokio::spawn(async {}))
        };
        let ended = tokio::time::timeout(STOP_WAIT, task).await.is_ok();
        let mut logs = Logs::new(&self.inner.kafka);
        logs.append(STREAMS_TOPIC, name, None).await.map_err(|e| format!("removing the definition of {name} from {STREAMS_TOPIC}: {e}"))?;
        Ok(if ended { format!("stream query {name} stopped") } else { format!("stream query {name} stopped (its last batch was still running after {} s)", STOP_WAIT.as_secs()) })
    }

    /// This node's queries, then (in a cluster) those defined to run on
    /// other nodes, with the node as their state.
    pub async fn list(&self) -> Vec<StreamInfo> {
        let mut out: Vec<StreamInfo> = self.queries().values().map(|q| info(q, self.inner.node)).collect();
        for (name, def) in self.elsewhere().await {
            if !out.iter().any(|q| q.name == name) {
                out.push(StreamInfo {
                    name,
                    sql: def.spec.sql.clone(),
                    owner: def.owner,
                    state: format!("on node {}", def.owner),
                    trigger: trigger_text(def.spec.trigger),
                    output_mode: mode_text(def.spec.output_mode),
                    ..StreamInfo::default()
                });
            }
        }
        out
    }

    pub async fn describe(&self, name: &str) -> Result<StreamInfo, String> {
        if let Some(q) = self.queries().get(name) {
            return Ok(info(q, self.inner.node));
        }
        match self.elsewhere().await.get(name) {
            Some(def) => Err(format!("stream query {name} runs on node {}, not on node {}: ask that node (its --server address)", def.owner, self.inner.node)),
            None => Err(format!("no stream query named {name} on node {}", self.inner.node)),
        }
    }

    /// The queries defined to run on other nodes (none on a single node,
    /// or when the definitions cannot be read now).
    async fn elsewhere(&self) -> BTreeMap<String, QueryDef> {
        if self.inner.single {
            return BTreeMap::new();
        }
        let mut logs = Logs::for_topics(&self.inner.kafka, &[STREAMS_TOPIC]).without_creating();
        let Ok((current, _)) = read_definitions(&mut logs).await else { return BTreeMap::new() };
        current
            .into_iter()
            .filter_map(|(name, bytes)| QueryDef::from_json(&bytes).ok().map(|d| (name, d)))
            .filter(|(_, d)| d.owner != self.inner.node)
            .collect()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The topic's partition count, waiting up to two seconds for one that is
/// not known yet: in a cluster a topic created a moment ago reaches this
/// node's metadata shortly after the controller committed it (Kafka
/// clients wait for it the same way). 0 when it does not exist.
async fn partitions_soon(logs: &mut Logs, topic: &str) -> Result<u32, crate::client::ClientError> {
    for _ in 0..20 {
        let n = partitions(logs, topic).await?;
        if n > 0 {
            return Ok(n);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    partitions(logs, topic).await
}

/// The topic's partition count; 0 when it does not exist.
async fn partitions(logs: &mut Logs, topic: &str) -> Result<u32, crate::client::ClientError> {
    let client = logs.client().await?;
    match timed(client.metadata(Some(&[topic]), false)).await {
        Ok(m) => Ok(m.iter().filter(|t| t.name == topic).map(|t| t.partitions.len() as u32).sum()),
        Err(e) if e.code() == Some(UNKNOWN_TOPIC) => Ok(0),
        Err(e) => Err(e),
    }
}

fn info(q: &Query, node: u32) -> StreamInfo {
    let s = q.runner.snapshot();
    let (state, error) = match &s.status {
        QueryStatus::Recovering => ("recovering".to_string(), None),
        QueryStatus::Waiting { .. } => ("waiting".into(), None),
        QueryStatus::Listing => ("planning".into(), None),
        QueryStatus::LoggingOffsets { batch } => (format!("logging batch {batch}"), None),
        QueryStatus::Running { batch } => (format!("running batch {batch}"), None),
        QueryStatus::Committing { batch } => (format!("committing batch {batch}"), None),
        QueryStatus::Stopped { error: Some(e) } => ("failed".into(), Some(e.clone())),
        QueryStatus::Stopped { error: None } if q.runner.stop_requested() => ("stopped".into(), None),
        QueryStatus::Stopped { error: None } => ("finished".into(), None),
    };
    let last = s.recent.last();
    StreamInfo {
        name: q.def.spec.name.clone(),
        sql: q.def.spec.sql.clone(),
        owner: node,
        state,
        error,
        trigger: trigger_text(q.def.spec.trigger),
        output_mode: mode_text(q.def.spec.output_mode),
        batch: last.map(|p| p.batch),
        input_rows_per_sec: s.recent.input_rows_per_sec(),
        processed_rows_per_sec: s.recent.processed_rows_per_sec(),
        processing_ms: s.recent.processing_ms(),
        watermark: last.and_then(|p| p.watermark),
        lag: last.map(|p| p.lag.clone()).unwrap_or_default(),
        recent: s.recent.batches.iter().map(|p| (p.batch, p.input_rows, p.output_records, p.committed_at - p.planned_at)).collect(),
        retrying: s.retrying,
    }
}
