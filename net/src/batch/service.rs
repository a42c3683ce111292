//! The batch service of every `millrace serve` process: a worker for every
//! driver of the cluster, a driver for the jobs submitted to this node, and
//! the command-line clients' sessions — all on one port (`batch_listen`).
//!
//! # Topology
//!
//! Every node runs the core's [`Driver`] for the jobs clients submit to it,
//! with every live node of the cluster as a worker, itself included. Every
//! node runs one core [`Worker`] machine per driver it serves (each node of
//! the cluster), all sharing one pool of task threads (`batch.slots`, the
//! number of cores by default) and one store of shuffle blocks (in memory,
//! on disk past `batch.shuffle_memory_mb`: `blocks.rs`), keyed by (job,
//! shuffle, map partition). Job ids carry their driver's
//! node id in the high 32 bits, so they are unique across drivers and a
//! worker knows whose job a block belongs to.
//!
//! # Messages
//!
//! Between nodes, [`BatchMsg`]s over a [`PeerTransport`] on the batch port
//! (separate from the replication traffic): a worker's `RegisterWorker`,
//! `Heartbeat` and `TaskStatus` go to its driver; a driver's `Launch`,
//! `Kill` and `CleanJob` go to the worker on the node it names; a task's
//! shuffle reads go to the node its `TaskDesc::inputs` name, one `Fetch`
//! per block, answered with the block (or `Missing`). What a node sends to
//! itself is delivered in-process. Every message carries its sender's
//! incarnation (start time, µs), which is also its workers' epoch.
//!
//! # Failures
//!
//! A node that dies closes its sockets: the transport reports the ended
//! connection ([`LinkEvent::Down`]) or a failed connection to it
//! ([`LinkEvent::Broken`]), and the driver is told `WorkerLost`; otherwise
//! it notices the silence after `worker_timeout_ms`. Either way the core
//! driver requeues the node's tasks, forgets its map outputs and recomputes
//! them from lineage. Pending fetches from that node fail at once (the
//! reducer reports `FetchFailed`). A driver greets every node it does not
//! count as a live worker each heartbeat interval (`Hello`); a worker
//! answers by registering again, so a worker lost by mistake, or a driver
//! that restarted, gets its workers back. A worker that hears from a new
//! incarnation of a driver drops everything of the old one (tasks, blocks)
//! and serves the new one with a fresh machine.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use millrace_core::Millis;
use millrace_core::batch::{
    AttemptId, Driver, DriverEffect, DriverInput, JobId, JobProgress, JobSpec, JobState, MapLocation, StageId, TaskDesc, TaskOutcome,
    Worker, WorkerConfig, WorkerEffect, WorkerId, WorkerInput,
};
use millrace_engine::job::{Executed, FetchFrom, execute, job_spec};
use millrace_engine::physical::{PlannerConfig, cut};
use millrace_engine::plan::LogicalPlan;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::proto::{BatchMsg, Body, CLIENT_MAGIC, CLIENT_VERSION, Fetched, JobInfo, MAX_CLIENT_FRAME, Reply, Request, Status, decode, encode_frame};
use crate::clock::Clock;
use crate::config::{BatchConfig, ServeConfig};
use crate::peer::{Extras, Foreign, LinkEvent, MAX_FRAME_BYTES, PeerTransport};

/// A fetch not answered within this fails (a lost message; a dead node is
/// noticed sooner through its connection).
const FETCH_TIMEOUT: Duration = Duration::from_secs(60);
/// Room for the rest of a message beside a block or a result.
const FRAME_MARGIN: usize = 64 << 10;
/// A client must send its hello and request within this.
const CLIENT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

use super::proto::{job_name, job_node};
use super::blocks::BlockStore;
use super::spill::DiskSpace;
use super::topics::KafkaTopics;
use crate::connect::service::ConnectService;
use crate::stream::service::StreamService;

/// What a node's batch service needs.
pub struct BatchSetup {
    pub node: u32,
    pub listen: SocketAddr,
    /// Every other node's batch address.
    pub peers: BTreeMap<u32, SocketAddr>,
    pub config: BatchConfig,
    /// This node's Kafka listener, where `topic('name')` scans read (the
    /// client routes each partition to its leader); none: topics are refused.
    pub kafka: Option<String>,
    /// Where tasks spill (`<data dir>/spill`).
    pub spill_dir: std::path::PathBuf,
}

/// A running batch service; dropping it stops it.
pub struct BatchService {
    transport: PeerTransport<BatchMsg>,
    tasks: Vec<JoinHandle<()>>,
    local_addr: SocketAddr,
    /// The node's stream queries (stopped with the service).
    streams: Option<StreamService>,
    /// The node's connectors (stopped with the service).
    connectors: Option<ConnectService>,
}

impl BatchService {
    /// Starts the service of a `millrace serve` process whose Kafka listener
    /// got port `listen_port`. `Ok(None)`: the default batch address was
    /// busy, so this node runs without one (warned); a configured address
    /// that cannot be bound is an error.
    pub async fn start_for(config: &ServeConfig, listen_port: u16) -> anyhow::Result<Option<BatchService>> {
        let addrs = config.batch_addresses(listen_port)?;
        let node = u32::try_from(config.broker.node_id).map_err(|_| anyhow::anyhow!("node id {} is negative", config.broker.node_id))?;
        let peers = addrs.peers.iter().map(|(id, a)| (*id as u32, *a)).collect();
        let ip = if config.listen.ip().is_unspecified() { std::net::IpAddr::from([127, 0, 0, 1]) } else { config.listen.ip() };
        let kafka = Some(SocketAddr::new(ip, listen_port).to_string());
        match Self::start(BatchSetup { node, listen: addrs.listen, peers, config: config.batch.clone(), kafka, spill_dir: config.data_dir.join("spill") }).await {
            Ok(s) => Ok(Some(s)),
            Err(e) if addrs.derived => {
                tracing::warn!("batch service disabled: {e:#} (set batch_listen to choose its address)");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    pub async fn start(setup: BatchSetup) -> anyhow::Result<BatchService> {
        let incarnation = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(1);
        let (links_tx, links) = mpsc::unbounded_channel();
        let (foreign_tx, foreign) = mpsc::unbounded_channel();
        let peers = setup.peers.iter().map(|(id, a)| (u64::from(*id), *a)).collect();
        let extras = Extras { foreign: Some(foreign_tx), links: Some(links_tx) };
        let (transport, inbox) = PeerTransport::<BatchMsg>::bind_with(u64::from(setup.node), incarnation, setup.listen, peers, extras)
            .await
            .map_err(|e| anyhow::anyhow!("batch service: {e}"))?;
        let local_addr = transport.local_addr();
        let cores = std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(2);
        let slots = if setup.config.slots == 0 { cores } else { setup.config.slots };
        let exec = Arc::new(Exec {
            me: setup.node,
            incarnation,
            store: Mutex::new(BlockStore::new(setup.config.shuffle_memory_mb, setup.spill_dir.clone())),
            fetches: Mutex::default(),
            next_fetch: AtomicU64::new(1),
            transport: transport.clone(),
            task_delay: Duration::from_millis(setup.config.task_delay_ms),
            topics: setup.kafka.as_deref().map(KafkaTopics::new),
            spill_dir: setup.spill_dir.clone(),
            task_memory_mb: setup.config.task_memory_mb,
        });
        let (done_tx, done) = mpsc::unbounded_channel();
        let pool = start_pool(slots, &exec, done_tx)?;
        let (commands_tx, commands) = mpsc::unbounded_channel();
        let mut nodes: BTreeSet<u32> = setup.peers.keys().copied().collect();
        nodes.insert(setup.node);
        let clock = Clock::new();
        let node = Node {
            me: setup.node,
            incarnation,
            clock,
            driver: Driver::new(setup.config.driver.clone()),
            config: setup.config,
            slots,
            nodes,
            transport: transport.clone(),
            exec,
            pool,
            commands: commands_tx.clone(),
            next_job: 1,
            jobs: BTreeMap::new(),
            worker_slots: BTreeMap::new(),
            served: BTreeMap::new(),
            running: BTreeMap::new(),
            timers: BTreeSet::new(),
            local: VecDeque::new(),
            next_hello: 0,
            last_tick: 0,
            strangers: BTreeSet::new(),
        };
        tracing::info!(node = setup.node, batch_listen = %local_addr, slots, peers = ?setup.peers, "batch service listening");
        let jobs = Jobs { commands: commands_tx.clone() };
        let streams = setup.kafka.as_deref().map(|k| StreamService::start(setup.node, setup.peers.is_empty(), k, jobs));
        let connectors = setup.kafka.as_deref().map(|k| ConnectService::start(setup.node, setup.peers.is_empty(), k));
        let services = Services { streams: streams.clone(), connectors: connectors.clone() };
        let tasks = vec![tokio::spawn(node.run(inbox, links, commands, done)), tokio::spawn(accept_clients(foreign, commands_tx, services))];
        Ok(BatchService { transport, tasks, local_addr, streams, connectors })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl Drop for BatchService {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        if let Some(s) = &self.streams {
            s.shutdown();
        }
        if let Some(c) = &self.connectors {
            c.shutdown();
        }
        self.transport.shutdown();
    }
}

// ---------------------------------------------------------------------------
// Tasks: a pool of threads, shuffle blocks in memory, fetches
// ---------------------------------------------------------------------------

/// What the task threads share with the service loop.
struct Exec {
    me: u32,
    incarnation: u64,
    /// Map outputs held: one block per reduce partition.
    store: Mutex<BlockStore>,
    /// Fetches waiting for a `Block`: id -> (node asked, where to answer).
    fetches: Mutex<BTreeMap<u64, (u32, std::sync::mpsc::Sender<Fetched>)>>,
    next_fetch: AtomicU64,
    transport: PeerTransport<BatchMsg>,
    task_delay: Duration,
    /// Reads `topic('name')` scans through this node's broker.
    topics: Option<KafkaTopics>,
    spill_dir: std::path::PathBuf,
    task_memory_mb: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Exec {
    fn store(&self) -> MutexGuard<'_, BlockStore> {
        lock(&self.store)
    }

    /// The block of reduce partition `reduce` of map output (`task.job`,
    /// `shuffle`, `loc.map_partition`), from wherever `loc` says it is.
    fn fetch(&self, task: &TaskDesc, cancel: &AtomicBool, shuffle: StageId, loc: &MapLocation, reduce: u32, too_large: &Mutex<Option<String>>) -> Option<Vec<u8>> {
        if cancel.load(Ordering::Relaxed) {
            return None;
        }
        if loc.worker == self.me {
            if loc.worker_epoch != self.incarnation {
                return None;
            }
            let found = self.store().locate(&(task.job, shuffle, loc.map_partition), reduce);
            return found?.read();
        }
        let peer = u64::from(loc.worker);
        if !self.transport.peers().contains_key(&peer) {
            return None;
        }
        let id = self.next_fetch.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = std::sync::mpsc::channel();
        lock(&self.fetches).insert(id, (loc.worker, tx));
        let body = Body::Fetch { id, job: task.job, shuffle, map_partition: loc.map_partition, reduce, epoch: loc.worker_epoch };
        self.transport.send(peer, BatchMsg { incarnation: self.incarnation, body });
        let deadline = Instant::now() + FETCH_TIMEOUT;
        let got = loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(f) => break Some(f),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    if cancel.load(Ordering::Relaxed) || Instant::now() >= deadline {
                        break None;
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break None,
            }
        };
        lock(&self.fetches).remove(&id);
        match got {
            Some(Fetched::Block(b)) => Some(b),
            Some(Fetched::TooLarge(n)) => {
                *lock(too_large) = Some(format!(
                    "shuffle {shuffle} map partition {} reduce partition {reduce} is {n} bytes, over the {} MB limit of a message between nodes; use more shuffle partitions",
                    loc.map_partition,
                    MAX_FRAME_BYTES >> 20
                ));
                None
            }
            _ => None,
        }
    }

    /// Answers every fetch waiting on `node` with `Missing` (its
    /// connection ended: the answer may never come).
    fn fail_fetches(&self, node: u32) {
        lock(&self.fetches).retain(|_, (n, tx)| {
            if *n == node {
                let _ = tx.send(Fetched::Missing);
                false
            } else {
                true
            }
        });
    }

    fn run(&self, t: &PoolTask) -> Executed {
        let killed = || Executed { outcome: TaskOutcome::Killed, blocks: None };
        if !self.task_delay.is_zero() {
            let until = Instant::now() + self.task_delay;
            while Instant::now() < until && !t.cancel.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(10).min(until.saturating_duration_since(Instant::now())));
            }
        }
        if t.cancel.load(Ordering::Relaxed) {
            return killed();
        }
        let too_large = Mutex::new(None);
        let task = &t.task;
        let fetch = |shuffle: StageId, loc: &MapLocation, reduce: u32| self.fetch(task, &t.cancel, shuffle, loc, reduce, &too_large);
        let space = DiskSpace::new(self.spill_dir.clone());
        let ran = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let inputs = FetchFrom::new(task, fetch).with_spill(space.limit(self.task_memory_mb));
            match &self.topics {
                Some(topics) => execute(task, &inputs.with_topics(topics)),
                None => execute(task, &inputs),
            }
        }));
        if space.written() > 0 {
            tracing::info!(
                "task {}.{}.{} spilled {:.1} MB in {} runs (over batch.task_memory_mb = {})",
                task.job, task.stage, task.partition, space.written() as f64 / 1e6, space.runs(), self.task_memory_mb
            );
        }
        let mut executed = ran.unwrap_or_else(|panic| {
            let msg = panic.downcast_ref::<String>().cloned().or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
            Executed { outcome: TaskOutcome::Failed { reason: format!("the task panicked: {msg}") }, blocks: None }
        });
        if matches!(executed.outcome, TaskOutcome::FetchFailed { .. })
            && let Some(reason) = lock(&too_large).take()
        {
            executed.outcome = TaskOutcome::Failed { reason };
        }
        executed
    }
}

struct PoolTask {
    driver: u32,
    generation: u64,
    task: TaskDesc,
    cancel: Arc<AtomicBool>,
}

struct Done {
    driver: u32,
    generation: u64,
    job: JobId,
    stage: StageId,
    partition: u32,
    attempt: AttemptId,
    executed: Executed,
}

/// `slots` threads running tasks in arrival order (shared by the worker
/// machines of every driver).
fn start_pool(slots: u32, exec: &Arc<Exec>, done: mpsc::UnboundedSender<Done>) -> anyhow::Result<std::sync::mpsc::Sender<PoolTask>> {
    let (tx, rx) = std::sync::mpsc::channel::<PoolTask>();
    let rx = Arc::new(Mutex::new(rx));
    for i in 0..slots.max(1) {
        let (rx, exec, done) = (Arc::clone(&rx), Arc::clone(exec), done.clone());
        std::thread::Builder::new().name(format!("batch-task-{i}")).spawn(move || {
            loop {
                let next = lock(&rx).recv();
                let Ok(t) = next else { return };
                let executed = exec.run(&t);
                let d = Done {
                    driver: t.driver,
                    generation: t.generation,
                    job: t.task.job,
                    stage: t.task.stage,
                    partition: t.task.partition,
                    attempt: t.task.attempt,
                    executed,
                };
                if done.send(d).is_err() {
                    return;
                }
            }
        })?;
    }
    Ok(tx)
}

/// Plans `sql` into the driver's job (blocking: the planner reads the
/// files' schemas).
fn plan(sql: &str, shuffle_partitions: u32, topics: Option<&KafkaTopics>) -> Result<JobSpec, String> {
    let planned = std::panic::catch_unwind(|| {
        let plan = millrace_engine::sql::plan_sql(sql, &super::catalog(topics)).map_err(|e| e.to_string())?;
        stage(&plan, shuffle_partitions, topics)
    });
    let planned = planned.unwrap_or_else(|_| Err("the planner panicked (a bug: please report the query)".into()));
    planned.map_err(|e: String| {
        if e.contains("No such file") {
            let cwd = std::env::current_dir().map(|d| d.display().to_string()).unwrap_or_default();
            format!("{e} (files are opened by the cluster's nodes: a relative path is resolved in the node's working directory, {cwd}; use absolute paths)")
        } else {
            e
        }
    })
}

/// Cuts a logical plan into the driver's job, topic scans preferring the
/// nodes that lead their partitions.
fn stage(plan: &LogicalPlan, shuffle_partitions: u32, topics: Option<&KafkaTopics>) -> Result<JobSpec, String> {
    let stages = cut(plan, PlannerConfig { shuffle_partitions }).map_err(|e| e.to_string())?;
    let mut spec = job_spec(&stages);
    if let Some(topics) = topics {
        prefer_leaders(&mut spec, &stages, topics);
    }
    Ok(spec)
}

/// Sends a topic scan's task for a partition to the node leading it (the
/// driver's workers are the nodes, by the same ids as the brokers): the
/// stages whose partitions are topic ranges (through unions of scans) get
/// one preferred node per partition; any other stage is left as it is.
fn prefer_leaders(spec: &mut JobSpec, stages: &[millrace_engine::physical::Stage], topics: &KafkaTopics) {
    use millrace_engine::physical::Op;
    use millrace_engine::source::Source;
    fn walk(op: &Op, topics: &KafkaTopics) -> Option<Vec<Vec<u32>>> {
        match op {
            Op::Scan { source: Source::Topic { topic, ranges, table: false, .. }, .. } => {
                let leaders = topics.leaders(topic);
                Some(ranges.iter().map(|r| leaders.get(&r.partition).and_then(|l| u32::try_from(*l).ok()).into_iter().collect()).collect())
            }
            Op::Scan { source, .. } => Some(vec![Vec::new(); source.partitions() as usize]),
            Op::Union { inputs } => {
                let mut out = Vec::new();
                for (child, n) in inputs {
                    let c = walk(child, topics)?;
                    if c.len() != *n as usize {
                        return None;
                    }
                    out.extend(c);
                }
                Some(out)
            }
            Op::Project { input, .. } | Op::Filter { input, .. } | Op::Explode { input, .. } | Op::TimeWindow { input, .. } | Op::Aggregate { input, .. } | Op::Sort { input, .. } | Op::Limit { input, .. } => {
                walk(input, topics)
            }
            Op::ShuffleRead { .. } | Op::HashJoin { .. } => None,
        }
    }
    for (spec, stage) in spec.stages.iter_mut().zip(stages) {
        if let Some(preferred) = walk(&stage.plan.op, topics)
            && preferred.len() == spec.partitions as usize
            && preferred.iter().any(|p| !p.is_empty())
        {
            spec.preferred = preferred;
        }
    }
}

// ---------------------------------------------------------------------------
// The service loop
// ---------------------------------------------------------------------------

enum Command {
    Submit { session: u64, sql: String, shuffle_partitions: Option<u32>, replies: mpsc::UnboundedSender<Reply> },
    /// A plan built in this process (a stream query's micro-batch), shown
    /// in `millrace job status` as `label`; its session is 0.
    SubmitPlan { label: String, plan: Box<LogicalPlan>, shuffle_partitions: Option<u32>, replies: mpsc::UnboundedSender<Reply> },
    Planned { session: u64, sql: String, shuffle_partitions: u32, replies: mpsc::UnboundedSender<Reply>, planned: Result<JobSpec, String> },
    /// A submitting client's connection ended.
    Gone { session: u64 },
    Status { job: Option<JobId>, reply: oneshot::Sender<Reply> },
    /// `note`: why, as `millrace job status` shows it.
    Cancel { job: JobId, note: String, reply: oneshot::Sender<Reply> },
}

/// The worker machine serving one driver.
struct Served {
    /// The driver's incarnation, once heard from.
    driver_incarnation: Option<u64>,
    /// Bumped when the machine is replaced: answers of the old one's tasks
    /// are dropped.
    generation: u64,
    machine: Worker,
}

/// A job of this node's driver.
struct JobMeta {
    query: String,
    submitted: Millis,
    ended: Option<Millis>,
    session: u64,
    replies: Option<mpsc::UnboundedSender<Reply>>,
    last_progress: Option<JobProgress>,
    note: Option<String>,
}

struct Node {
    me: u32,
    incarnation: u64,
    clock: Clock,
    config: BatchConfig,
    slots: u32,
    /// Every node of the cluster, this one included.
    nodes: BTreeSet<u32>,
    transport: PeerTransport<BatchMsg>,
    exec: Arc<Exec>,
    pool: std::sync::mpsc::Sender<PoolTask>,
    commands: mpsc::UnboundedSender<Command>,
    driver: Driver,
    next_job: u64,
    jobs: BTreeMap<JobId, JobMeta>,
    /// Slots of each worker, as registered with this driver.
    worker_slots: BTreeMap<WorkerId, u32>,
    /// By driver node.
    served: BTreeMap<u32, Served>,
    /// Tasks on the pool: (driver, attempt) -> cancel flag.
    running: BTreeMap<(u32, AttemptId), Arc<AtomicBool>>,
    timers: BTreeSet<Millis>,
    /// Messages this node sent itself: (sender incarnation, body).
    local: VecDeque<(u64, Body)>,
    next_hello: Millis,
    last_tick: Millis,
    /// Nodes outside the cluster that sent something (warned once).
    strangers: BTreeSet<u32>,
}

impl Node {
    async fn run(
        mut self,
        mut inbox: mpsc::Receiver<(u64, BatchMsg)>,
        mut links: mpsc::UnboundedReceiver<LinkEvent>,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut done: mpsc::UnboundedReceiver<Done>,
    ) {
        let nodes: Vec<u32> = self.nodes.iter().copied().collect();
        for n in nodes {
            // This node's own driver is known; the others announce
            // themselves with their first message.
            let known = (n == self.me).then_some(self.incarnation);
            self.reset_served(n, known);
        }
        self.settle();
        loop {
            let wake = self.timers.first().copied().unwrap_or(Millis::MAX).min(self.next_hello).max(self.last_tick + 1);
            tokio::select! {
                biased;
                _ = tokio::time::sleep_until(self.clock.instant_at(wake)) => self.tick(),
                m = inbox.recv() => match m {
                    Some((from, msg)) => self.handle(from as u32, msg.incarnation, msg.body),
                    None => break,
                },
                Some(ev) = links.recv() => self.link(ev),
                Some(d) = done.recv() => self.task_done(d),
                Some(c) = commands.recv() => self.command(c),
            }
            self.settle();
        }
    }

    fn now(&self) -> Millis {
        self.clock.now()
    }

    fn send(&mut self, to: u32, body: Body) {
        if to == self.me {
            self.local.push_back((self.incarnation, body));
        } else {
            self.transport.send(u64::from(to), BatchMsg { incarnation: self.incarnation, body });
        }
    }

    /// Delivers what this node sent itself, then tells clients how their
    /// jobs progress.
    fn settle(&mut self) {
        while let Some((incarnation, body)) = self.local.pop_front() {
            self.handle(self.me, incarnation, body);
        }
        for (job, meta) in &mut self.jobs {
            let Some(replies) = &meta.replies else { continue };
            let p = self.driver.progress(*job);
            if p.is_some() && p != meta.last_progress {
                let _ = replies.send(Reply::Progress(p.clone().expect("checked")));
                meta.last_progress = p;
            }
        }
    }

    fn tick(&mut self) {
        let now = self.now();
        self.last_tick = now;
        while self.timers.first().is_some_and(|t| *t <= now) {
            self.timers.pop_first();
        }
        self.driver_step(DriverInput::Tick);
        let drivers: Vec<u32> = self.served.keys().copied().collect();
        for d in drivers {
            self.worker_step(d, WorkerInput::Tick);
        }
        if now >= self.next_hello {
            self.next_hello = now + self.config.heartbeat_ms.max(10);
            let live: BTreeSet<WorkerId> = self.driver.live_workers().into_iter().map(|(w, _)| w).collect();
            let missing: Vec<u32> = self.nodes.iter().copied().filter(|n| !live.contains(n)).collect();
            for n in missing {
                self.send(n, Body::Hello);
            }
        }
    }

    fn handle(&mut self, from: u32, incarnation: u64, body: Body) {
        if !self.nodes.contains(&from) {
            // Not in this node's voter list: it could not be answered.
            if self.strangers.insert(from) {
                tracing::warn!(from, "ignoring batch messages from a node not in this cluster's voter list (do all nodes have the same voters?)");
            }
            return;
        }
        match body {
            Body::ToDriver(input) => {
                let worker = match &input {
                    DriverInput::RegisterWorker { worker, .. }
                    | DriverInput::Heartbeat { worker, .. }
                    | DriverInput::TaskStatus { worker, .. }
                    | DriverInput::WorkerLost { worker, .. } => Some(*worker),
                    _ => None,
                };
                if worker == Some(from) {
                    self.driver_step(input);
                } else {
                    tracing::warn!(from, ?worker, "ignoring a driver input that is not about its sender");
                }
            }
            Body::ToWorker(input) => {
                if self.served_for(from, incarnation).is_some() {
                    self.worker_step(from, input);
                }
            }
            Body::Hello => {
                if self.served_for(from, incarnation) == Some(false) {
                    self.worker_step(from, WorkerInput::Reconnect);
                }
            }
            Body::Fetch { id, job, shuffle, map_partition, reduce, epoch } => {
                let fetched = if epoch != self.incarnation {
                    Fetched::Missing
                } else {
                    let found = self.exec.store().locate(&(job, shuffle, map_partition), reduce);
                    match found.and_then(|f| f.read()) {
                        Some(b) if b.len() > MAX_FRAME_BYTES - FRAME_MARGIN => Fetched::TooLarge(b.len() as u64),
                        Some(b) => Fetched::Block(b),
                        None => Fetched::Missing,
                    }
                };
                self.send(from, Body::Block { id, fetched });
            }
            Body::Block { id, fetched } => {
                if let Some((_, tx)) = lock(&self.exec.fetches).remove(&id) {
                    let _ = tx.send(fetched);
                }
            }
            Body::Cancel { job } => {
                if job_node(job) == self.me && self.driver.job_state(job) == Some(JobState::Running) {
                    if let Some(m) = self.jobs.get_mut(&job) {
                        m.note = Some(format!("cancelled through node {from}"));
                    }
                    self.driver_step(DriverInput::CancelJob { job });
                }
            }
        }
    }

    /// The machine serving `driver`, replaced if the message comes from a
    /// new incarnation of it. `None`: drop the message (an unknown node, or
    /// an incarnation already replaced); `Some(true)`: the machine was just
    /// (re)started and has registered.
    fn served_for(&mut self, driver: u32, incarnation: u64) -> Option<bool> {
        let s = self.served.get_mut(&driver)?;
        match s.driver_incarnation {
            Some(known) if incarnation < known => None,
            Some(known) if incarnation == known => Some(false),
            None => {
                s.driver_incarnation = Some(incarnation);
                Some(false)
            }
            Some(_) => {
                tracing::info!(driver, "the driver restarted; dropping its old tasks and shuffle blocks");
                self.reset_served(driver, Some(incarnation));
                Some(true)
            }
        }
    }

    /// A fresh worker machine for `driver` (nothing of its predecessor
    /// kept), started: it registers.
    fn reset_served(&mut self, driver: u32, driver_incarnation: Option<u64>) {
        let generation = self.served.get(&driver).map_or(0, |s| s.generation + 1);
        for ((d, _), cancel) in &self.running {
            if *d == driver {
                cancel.store(true, Ordering::Relaxed);
            }
        }
        self.running.retain(|(d, _), _| *d != driver);
        self.exec.store().retain(|(job, _, _)| job_node(*job) != driver);
        let config = WorkerConfig { id: self.me, slots: self.slots, heartbeat_ms: self.config.heartbeat_ms.max(10) };
        self.served.insert(driver, Served { driver_incarnation, generation, machine: Worker::new(config, self.incarnation) });
        self.worker_step(driver, WorkerInput::Start);
    }

    fn worker_step(&mut self, driver: u32, input: WorkerInput) {
        let now = self.now();
        let Some(s) = self.served.get_mut(&driver) else { return };
        let generation = s.generation;
        let mut out = Vec::new();
        s.machine.step(now, input, &mut out);
        for e in out {
            match e {
                WorkerEffect::ToDriver(mut input) => {
                    if driver != self.me {
                        limit_result(&mut input);
                    }
                    self.send(driver, Body::ToDriver(input));
                }
                WorkerEffect::Run(task) => {
                    let cancel = Arc::new(AtomicBool::new(false));
                    self.running.insert((driver, task.attempt), cancel.clone());
                    let attempt = task.attempt;
                    if self.pool.send(PoolTask { driver, generation, task, cancel }).is_err() {
                        // The pool is gone (shutting down): report it.
                        self.running.remove(&(driver, attempt));
                        let outcome = TaskOutcome::Failed { reason: "the node's task threads stopped".into() };
                        self.local_finished(driver, attempt, outcome);
                    }
                }
                WorkerEffect::Cancel(attempt) => {
                    if let Some(c) = self.running.get(&(driver, attempt)) {
                        c.store(true, Ordering::Relaxed);
                    }
                }
                WorkerEffect::DeleteShuffle(job) => self.exec.store().retain(|(j, _, _)| *j != job),
                WorkerEffect::Timer { at } => {
                    self.timers.insert(at);
                }
            }
        }
    }

    fn local_finished(&mut self, driver: u32, attempt: AttemptId, outcome: TaskOutcome) {
        self.worker_step(driver, WorkerInput::Finished { attempt, outcome });
    }

    fn task_done(&mut self, d: Done) {
        if self.served.get(&d.driver).is_none_or(|s| s.generation != d.generation) {
            return; // a task of a replaced machine
        }
        let cancelled = self.running.remove(&(d.driver, d.attempt)).is_some_and(|c| c.load(Ordering::Relaxed));
        let Executed { mut outcome, blocks } = d.executed;
        if cancelled && !matches!(outcome, TaskOutcome::Success { .. }) {
            outcome = TaskOutcome::Killed;
        }
        if let (TaskOutcome::Success { .. }, Some(blocks)) = (&outcome, blocks) {
            let mut store = self.exec.store();
            let before = store.spilled_outputs;
            if let Err(e) = store.insert((d.job, d.stage, d.partition), blocks) {
                tracing::warn!("{e}");
            }
            if store.spilled_outputs > before {
                tracing::info!(
                    "map output {}.{}.{} written to disk (over batch.shuffle_memory_mb = {}; {:.1} MB of map outputs on disk so far)",
                    d.job, d.stage, d.partition, self.config.shuffle_memory_mb, store.spilled_bytes as f64 / 1e6
                );
            }
        }
        self.local_finished(d.driver, d.attempt, outcome);
    }

    fn driver_step(&mut self, input: DriverInput) {
        if let DriverInput::RegisterWorker { worker, slots, .. } = &input {
            self.worker_slots.insert(*worker, *slots);
        }
        let mut out = Vec::new();
        self.driver.step(self.now(), input, &mut out);
        for e in out {
            match e {
                DriverEffect::Launch { worker, task } => self.send(worker, Body::ToWorker(WorkerInput::Launch(task))),
                DriverEffect::Kill { worker, attempt } => self.send(worker, Body::ToWorker(WorkerInput::Kill(attempt))),
                DriverEffect::CleanJob { worker, job } => self.send(worker, Body::ToWorker(WorkerInput::CleanJob(job))),
                DriverEffect::JobSucceeded { job, results } => self.job_ended(job, Ok(results)),
                DriverEffect::JobFailed { job, reason } => self.job_ended(job, Err(reason)),
                DriverEffect::Timer { at } => {
                    self.timers.insert(at);
                }
            }
        }
    }

    fn job_ended(&mut self, job: JobId, outcome: Result<Vec<Vec<u8>>, String>) {
        let now = self.now();
        let progress = self.driver.progress(job);
        let Some(meta) = self.jobs.get_mut(&job) else { return };
        meta.ended = Some(now);
        let secs = (now - meta.submitted) as f64 / 1000.0;
        match &outcome {
            Ok(results) if meta.session == 0 => tracing::debug!(job = %job_name(job), results = results.len(), "job succeeded in {secs:.2} s"),
            Ok(results) => tracing::info!(job = %job_name(job), results = results.len(), "job succeeded in {secs:.2} s"),
            Err(reason) if reason == "cancelled" => {
                let why = meta.note.as_deref().unwrap_or("cancelled");
                tracing::info!(job = %job_name(job), "job {why} after {secs:.2} s");
            }
            Err(reason) => tracing::info!(job = %job_name(job), %reason, "job failed after {secs:.2} s"),
        }
        if let Some(replies) = meta.replies.take() {
            if let Some(p) = progress.filter(|p| Some(p) != meta.last_progress.as_ref()) {
                let _ = replies.send(Reply::Progress(p));
            }
            let _ = match outcome {
                Ok(results) => {
                    for part in results {
                        let _ = replies.send(Reply::ResultPart(part));
                    }
                    replies.send(Reply::Succeeded { job })
                }
                Err(reason) => {
                    let reason = match &meta.note {
                        Some(note) if reason == "cancelled" => note.clone(),
                        _ => reason,
                    };
                    replies.send(Reply::Failed { job: Some(job), reason })
                }
            };
        }
        self.forget_old_jobs();
    }

    /// Keeps the newest `retained_jobs` ended jobs submitted by clients
    /// and the newest `retained_jobs` ended stream batches, counted apart
    /// so a query's batches, one a second, do not push the clients' jobs
    /// out of `millrace job status`.
    fn forget_old_jobs(&mut self) {
        for stream in [false, true] {
            let ended: Vec<JobId> =
                self.jobs.iter().filter(|(_, m)| m.ended.is_some() && (m.session == 0) == stream).map(|(j, _)| *j).collect();
            let excess = ended.len().saturating_sub(self.config.retained_jobs);
            for job in ended.into_iter().take(excess) {
                self.jobs.remove(&job);
                self.driver.forget(job);
            }
        }
    }

    fn link(&mut self, ev: LinkEvent) {
        match ev {
            LinkEvent::Up { .. } => {}
            LinkEvent::Down { peer, incarnation } => {
                let worker = peer as u32;
                tracing::debug!(worker, incarnation, "batch connection from a node ended");
                self.exec.fail_fetches(worker);
                self.driver_step(DriverInput::WorkerLost { worker, epoch: incarnation });
            }
            LinkEvent::Broken { peer } => {
                let worker = peer as u32;
                self.exec.fail_fetches(worker);
                let epoch = self.driver.live_workers().into_iter().find(|(w, _)| *w == worker).map(|(_, e)| e);
                if let Some(epoch) = epoch {
                    tracing::info!(worker, "lost the batch connection to a worker; its tasks and shuffle outputs are given up");
                    self.driver_step(DriverInput::WorkerLost { worker, epoch });
                }
            }
        }
    }

    /// Twice the live workers' slots, at least 2.
    fn default_shuffle_partitions(&self) -> u32 {
        if self.config.shuffle_partitions > 0 {
            return self.config.shuffle_partitions;
        }
        let slots: u32 = self.driver.live_workers().iter().map(|(w, _)| self.worker_slots.get(w).copied().unwrap_or(1)).sum();
        (slots * 2).max(2)
    }

    fn command(&mut self, c: Command) {
        match c {
            Command::Submit { session, sql, shuffle_partitions, replies } => {
                let partitions = shuffle_partitions.filter(|p| *p > 0).unwrap_or_else(|| self.default_shuffle_partitions());
                let commands = self.commands.clone();
                let topics = self.exec.topics.clone();
                tokio::task::spawn_blocking(move || {
                    let planned = plan(&sql, partitions, topics.as_ref());
                    let _ = commands.send(Command::Planned { session, sql, shuffle_partitions: partitions, replies, planned });
                });
            }
            Command::SubmitPlan { label, plan, shuffle_partitions, replies } => {
                let partitions = shuffle_partitions.filter(|p| *p > 0).unwrap_or_else(|| self.default_shuffle_partitions());
                let commands = self.commands.clone();
                let topics = self.exec.topics.clone();
                tokio::task::spawn_blocking(move || {
                    let planned = std::panic::catch_unwind(AssertUnwindSafe(|| stage(&plan, partitions, topics.as_ref())))
                        .unwrap_or_else(|_| Err(format!("the planner panicked on {label} (a bug: please report the query)")));
                    let _ = commands.send(Command::Planned { session: 0, sql: label, shuffle_partitions: partitions, replies, planned });
                });
            }
            Command::Planned { session, sql, shuffle_partitions, replies, planned } => {
                if replies.is_closed() {
                    return; // the client left while the query was planned
                }
                let spec = match planned {
                    Ok(spec) => spec,
                    Err(reason) => {
                        let _ = replies.send(Reply::Failed { job: None, reason });
                        return;
                    }
                };
                let job = (u64::from(self.me) << 32) | self.next_job;
                self.next_job += 1;
                if session == 0 {
                    // A stream query's batch: one a second or more, which
                    // the query's own progress reports.
                    tracing::debug!(job = %job_name(job), stages = spec.stages.len(), shuffle_partitions, query = %sql, "job submitted");
                } else {
                    tracing::info!(job = %job_name(job), stages = spec.stages.len(), shuffle_partitions, query = %sql, "job submitted");
                }
                let _ = replies.send(Reply::Accepted { job, node: self.me, shuffle_partitions });
                let meta = JobMeta { query: sql, submitted: self.now(), ended: None, session, replies: Some(replies), last_progress: None, note: None };
                self.jobs.insert(job, meta);
                self.driver_step(DriverInput::SubmitJob { job, spec });
            }
            Command::Gone { session } => {
                let running: Vec<JobId> = self
                    .jobs
                    .iter()
                    .filter(|(j, m)| m.session == session && m.ended.is_none() && self.driver.job_state(**j) == Some(JobState::Running))
                    .map(|(j, _)| *j)
                    .collect();
                for job in running {
                    if let Some(m) = self.jobs.get_mut(&job) {
                        m.note = Some("cancelled: the client disconnected".into());
                        m.replies = None;
                    }
                    tracing::info!(job = %job_name(job), "the client disconnected; cancelling its job");
                    self.driver_step(DriverInput::CancelJob { job });
                }
            }
            Command::Status { job, reply } => {
                let now = self.now();
                let infos = self
                    .jobs
                    .iter()
                    .filter(|(j, _)| job.is_none_or(|want| want == **j))
                    .map(|(j, m)| JobInfo {
                        job: *j,
                        query: m.query.clone(),
                        state: self.driver.job_state(*j).unwrap_or(JobState::Running),
                        submitted: m.submitted,
                        elapsed_ms: m.ended.unwrap_or(now) - m.submitted,
                        progress: self.driver.progress(*j),
                        note: m.note.clone(),
                    })
                    .collect::<Vec<_>>();
                let answer = match job {
                    Some(j) if infos.is_empty() => Reply::Error(self.not_here(j)),
                    _ => {
                        let workers = self
                            .driver
                            .live_workers()
                            .into_iter()
                            .map(|(w, _)| (w, self.worker_slots.get(&w).copied().unwrap_or(0)))
                            .collect();
                        Reply::Status(Status { node: self.me, workers, jobs: infos })
                    }
                };
                let _ = reply.send(answer);
            }
            Command::Cancel { job, note, reply } => {
                let owner = job_node(job);
                let answer = if owner != self.me {
                    if self.nodes.contains(&owner) {
                        self.send(owner, Body::Cancel { job });
                        Reply::Done(format!("cancellation of job {} sent to node {owner}, its driver", job_name(job)))
                    } else {
                        Reply::Error(format!("job {} would run on node {owner}, which is not in this cluster", job_name(job)))
                    }
                } else {
                    match self.driver.job_state(job) {
                        Some(JobState::Running) => {
                            if let Some(m) = self.jobs.get_mut(&job) {
                                m.note = Some(note);
                            }
                            self.driver_step(DriverInput::CancelJob { job });
                            Reply::Done(format!("job {} cancelled", job_name(job)))
                        }
                        Some(state) => Reply::Error(format!("job {} has already ended: {}", job_name(job), state_name(&state))),
                        None => Reply::Error(self.not_here(job)),
                    }
                };
                let _ = reply.send(answer);
            }
        }
    }

    fn not_here(&self, job: JobId) -> String {
        let owner = job_node(job);
        if owner == self.me {
            format!("no job {} on node {} (unknown, or ended long ago)", job_name(job), self.me)
        } else {
            format!("job {} was submitted to node {owner}, not to this node ({}): ask that node's batch port", job_name(job), self.me)
        }
    }
}

/// A result over the message limit becomes a task failure that says so
/// (the transport would drop it, and the driver would wait forever).
fn limit_result(input: &mut DriverInput) {
    if let DriverInput::TaskStatus { outcome, .. } = input
        && let TaskOutcome::Success { result: Some(r) } = outcome
        && r.len() > MAX_FRAME_BYTES - FRAME_MARGIN
    {
        let reason = format!(
            "a result partition of {} bytes is over the {} MB limit of a message between nodes; use LIMIT, or write fewer columns",
            r.len(),
            MAX_FRAME_BYTES >> 20
        );
        *outcome = TaskOutcome::Failed { reason };
    }
}

/// A job state in a word or two.
pub fn state_name(state: &JobState) -> String {
    match state {
        JobState::Running => "running".into(),
        JobState::Succeeded => "succeeded".into(),
        JobState::Failed { reason } => format!("failed: {reason}"),
        JobState::Cancelled => "cancelled".into(),
    }
}

// ---------------------------------------------------------------------------
// Client sessions
// ---------------------------------------------------------------------------

/// The node's services that answer clients beside the batch driver.
#[derive(Clone)]
struct Services {
    streams: Option<StreamService>,
    connectors: Option<ConnectService>,
}

/// Runs plans built in this process as jobs of this node's driver, on
/// every live node of the cluster: a stream query's micro-batches.
#[derive(Clone)]
pub struct Jobs {
    commands: mpsc::UnboundedSender<Command>,
}

impl Jobs {
    /// Runs `plan` as a job (named `label` in `millrace job status`) and
    /// returns its result. Dropping the future before the job ends cancels
    /// the job.
    pub async fn run(&self, label: &str, plan: LogicalPlan, shuffle_partitions: Option<u32>) -> Result<Vec<arrow::array::RecordBatch>, String> {
        let (tx, mut replies) = mpsc::unbounded_channel();
        let stopped = || "the node's batch service stopped".to_string();
        self.commands
            .send(Command::SubmitPlan { label: label.to_string(), plan: Box::new(plan), shuffle_partitions, replies: tx })
            .map_err(|_| stopped())?;
        let mut guard = CancelOnDrop { commands: self.commands.clone(), job: None };
        let mut parts = Vec::new();
        loop {
            match replies.recv().await.ok_or_else(stopped)? {
                Reply::Accepted { job, .. } => guard.job = Some(job),
                Reply::ResultPart(bytes) => parts.push(bytes),
                Reply::Succeeded { .. } => break,
                Reply::Failed { job: Some(job), reason } => return Err(format!("job {} failed: {reason}", job_name(job))),
                Reply::Failed { job: None, reason } | Reply::Error(reason) => return Err(reason),
                _ => {}
            }
        }
        guard.job = None;
        millrace_engine::job::decode_results(&parts).map_err(|e| format!("decoding the job's result: {e}"))
    }
}

/// Cancels a job whose submitter went away (a stream query runner
/// dropped mid-batch).
struct CancelOnDrop {
    commands: mpsc::UnboundedSender<Command>,
    job: Option<JobId>,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(job) = self.job {
            let (reply, _) = oneshot::channel();
            let _ = self.commands.send(Command::Cancel { job, note: "cancelled: its stream query runner went away".into(), reply });
        }
    }
}

async fn accept_clients(mut foreign: mpsc::UnboundedReceiver<Foreign>, commands: mpsc::UnboundedSender<Command>, services: Services) {
    let mut next = 0u64;
    while let Some(f) = foreign.recv().await {
        next += 1;
        let (session, commands, services) = (next, commands.clone(), services.clone());
        tokio::spawn(async move {
            let remote = f.remote;
            if let Err(e) = serve_client(f, session, &commands, &services).await {
                tracing::debug!(%remote, "batch client session ended: {e:#}");
            }
            let _ = commands.send(Command::Gone { session });
        });
    }
}

async fn read_some(stream: &mut tokio::net::TcpStream, buf: &mut Vec<u8>, n: usize) -> anyhow::Result<()> {
    let mut chunk = [0u8; 8192];
    while buf.len() < n {
        let got = stream.read(&mut chunk[..(n - buf.len()).min(8192)]).await?;
        if got == 0 {
            anyhow::bail!("the client closed the connection");
        }
        buf.extend_from_slice(&chunk[..got]);
    }
    Ok(())
}

/// A `millrace stream` request, answered by the node's stream service.
async fn stream_request(s: &StreamService, request: Request) -> Reply {
    let answer = match request {
        Request::StreamStart(spec) => s.start_query(spec).await.map(Reply::Done),
        Request::StreamStop { name } => s.stop_query(&name).await.map(Reply::Done),
        Request::StreamList => Ok(Reply::Streams(s.list().await)),
        Request::StreamDescribe { name } => s.describe(&name).await.map(|i| Reply::Streams(vec![i])),
        _ => Err("not a stream request".to_string()),
    };
    answer.unwrap_or_else(Reply::Error)
}

/// A `millrace connect` request, answered by the node's connect service.
async fn connect_request(s: &ConnectService, request: Request) -> Reply {
    let answer = match request {
        Request::ConnectStart(spec) => s.start_connector(spec).await.map(Reply::Done),
        Request::ConnectStop { name } => s.stop_connector(&name).await.map(Reply::Done),
        Request::ConnectList => Ok(Reply::Connectors(s.list())),
        Request::ConnectDescribe { name } => s.describe(&name).map(|i| Reply::Connectors(vec![i])),
        _ => Err("not a connect request".to_string()),
    };
    answer.unwrap_or_else(Reply::Error)
}

async fn serve_client(f: Foreign, session: u64, commands: &mpsc::UnboundedSender<Command>, services: &Services) -> anyhow::Result<()> {
    let Foreign { mut stream, remote, prefix } = f;
    let mut buf = prefix;
    let request: Request = match tokio::time::timeout(CLIENT_REQUEST_TIMEOUT, async {
        read_some(&mut stream, &mut buf, 6).await?;
        if buf[..4] != CLIENT_MAGIC {
            anyhow::bail!("neither a node nor a millrace client (first bytes {:02x?})", &buf[..4]);
        }
        let version = u16::from_be_bytes([buf[4], buf[5]]);
        if version != CLIENT_VERSION {
            let msg = format!("client protocol version {version}; this node speaks {CLIENT_VERSION} (use the same millrace version)");
            let _ = stream.write_all(&encode_frame(&Reply::Error(msg.clone()))?).await;
            anyhow::bail!(msg);
        }
        buf.drain(..6);
        read_some(&mut stream, &mut buf, 4).await?;
        let len = u32::from_be_bytes(buf[..4].try_into().expect("4 bytes")) as usize;
        if len > MAX_CLIENT_FRAME {
            anyhow::bail!("a {len}-byte request");
        }
        read_some(&mut stream, &mut buf, 4 + len).await?;
        decode::<Request>(&buf[4..4 + len])
    })
    .await
    {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::warn!(%remote, "closing a connection on the batch port: {e:#}");
            return Ok(());
        }
        Err(_) => {
            tracing::warn!(%remote, "closing a connection on the batch port: no request within {CLIENT_REQUEST_TIMEOUT:?}");
            return Ok(());
        }
    };
    let _ = stream.set_nodelay(true);
    match request {
        Request::Submit { sql, shuffle_partitions } => {
            let (tx, mut replies) = mpsc::unbounded_channel();
            commands.send(Command::Submit { session, sql, shuffle_partitions, replies: tx })?;
            let (mut rd, mut wr) = stream.into_split();
            let mut probe = [0u8; 64];
            loop {
                tokio::select! {
                    biased;
                    r = replies.recv() => {
                        let Some(r) = r else { return Ok(()) };
                        let last = matches!(r, Reply::Succeeded { .. } | Reply::Failed { .. } | Reply::Error(_));
                        wr.write_all(&encode_frame(&r)?).await?;
                        if last {
                            wr.flush().await?;
                            return Ok(());
                        }
                    }
                    r = rd.read(&mut probe) => {
                        // The client sends nothing more: this is its end.
                        r?;
                        anyhow::bail!("the client closed the connection");
                    }
                }
            }
        }
        Request::Status { job } => {
            let (tx, rx) = oneshot::channel();
            commands.send(Command::Status { job, reply: tx })?;
            let answer = rx.await?;
            stream.write_all(&encode_frame(&answer)?).await?;
        }
        Request::Cancel { job } => {
            let (tx, rx) = oneshot::channel();
            commands.send(Command::Cancel { job, note: "cancelled by `millrace job cancel`".into(), reply: tx })?;
            let answer = rx.await?;
            stream.write_all(&encode_frame(&answer)?).await?;
        }
        Request::StreamStart(_) | Request::StreamList | Request::StreamDescribe { .. } | Request::StreamStop { .. } => {
            let answer = match &services.streams {
                None => Reply::Error("this node runs no stream queries: it knows no Kafka listener".into()),
                Some(s) => stream_request(s, request).await,
            };
            stream.write_all(&encode_frame(&answer)?).await?;
        }
        Request::ConnectStart(_) | Request::ConnectList | Request::ConnectDescribe { .. } | Request::ConnectStop { .. } => {
            let answer = match &services.connectors {
                None => Reply::Error("this node runs no connectors: it knows no Kafka listener".into()),
                Some(c) => connect_request(c, request).await,
            };
            stream.write_all(&encode_frame(&answer)?).await?;
        }
    }
    stream.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use millrace_engine::source::TopicRange;

    /// A topic scan's stage prefers each partition's leader; the stages
    /// after the shuffle prefer nothing.
    #[test]
    fn topic_scans_prefer_the_partition_leaders() {
        let topics = KafkaTopics::with_leaders("127.0.0.1:1", "orders", BTreeMap::from([(0, 2), (1, 3), (2, 1)]));
        let mut catalog = millrace_engine::sql::Catalog::default();
        catalog.topics = Some(Box::new(|_: &str| Ok((0..3).map(|partition| TopicRange { partition, start: 0, end: 10 }).collect())));
        let plan = millrace_engine::sql::plan_sql("SELECT key, count(*) FROM topic('orders') GROUP BY key", &catalog).unwrap();
        let stages = cut(&plan, PlannerConfig { shuffle_partitions: 4 }).unwrap();
        let mut spec = job_spec(&stages);
        prefer_leaders(&mut spec, &stages, &topics);
        assert_eq!(spec.stages[0].preferred, vec![vec![2], vec![3], vec![1]]);
        assert!(spec.stages[1..].iter().all(|s| s.preferred.is_empty()), "{:?}", spec.stages.iter().map(|s| &s.preferred).collect::<Vec<_>>());
    }
}
