//! The harness: brokers running the production server on simulated disks,
//! workload clients, and a nemesis that applies a fault plan — all inside
//! one madsim runtime seeded by the run's seed.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use madsim::net::NetSim;
use madsim::runtime::{Handle, NodeHandle, Runtime};
use millrace_core::broker::{BrokerConfig, ClusterConfig, FlushPolicy};
use millrace_fault::{CrashMode, Fault, FaultPlan, Suite, Swarm};
use millrace_net::config::ServeConfig;
use millrace_net::server::Server;
use tokio::time::Instant;

use crate::disk::{DiskStats, SimDisk};
use crate::history::{EventKind, History};
use crate::groups;
use crate::workload::{self, Ctx};

const PORT: u16 = 9092;
/// Where cluster nodes listen for each other.
const PEER_PORT: u16 = 9093;
/// Replicated cluster: after the final read, this long for followers to
/// finish copying before each replica's log is compared.
const SETTLE: Duration = Duration::from_secs(5);
/// Controller suite: how often the metadata churner creates a topic.
const CHURN_EVERY: Duration = Duration::from_millis(700);
/// After the heal, producers keep going this long: the liveness bound. A
/// write must be acknowledged within it. It covers a client's reconnect
/// (madsim's TCP gives up on a dead peer after ~10 s) plus recovery.
const HEAL_MS: u64 = 15_000;
/// The final read must finish within this bound after the producers stop.
const FINAL_READ_BOUND: Duration = Duration::from_secs(15);
/// In the groups suite, consumers keep going this long after the producers
/// stop: the bound within which the group must consume and commit
/// everything (a rebalance or two plus reading the backlog).
const GROUP_DRAIN: Duration = Duration::from_secs(25);

#[derive(Debug, Clone)]
pub struct Scenario {
    pub seed: u64,
    pub suite: Suite,
    /// Independent single-node brokers, each with its own clients.
    pub nodes: usize,
    /// Faults happen during this many simulated milliseconds.
    pub fault_window_ms: u64,
    pub partitions: i32,
    pub producers_per_node: u32,
    /// Members of one consumer group per node (the groups suite).
    pub group_consumers: u32,
    pub flush: FlushPolicy,
    /// Fault points inside the adapter fire (slow fsyncs).
    pub buggify: bool,
    /// Replicated suites: mix acks=1 producers in (`CHAOS_ACKS1=1`).
    pub acks1: bool,
}

impl Scenario {
    /// The scenario for `seed`: a quarter of the seeds run a relaxed flush
    /// policy (where acknowledged data may legitimately be lost on a crash,
    /// but logs must still recover to a valid prefix), half run with buggify.
    pub fn new(seed: u64, suite: Suite, nodes: usize, fault_window_ms: u64) -> Self {
        let mut rng = millrace_fault::Rng::new(seed ^ 0x5ce7_a210);
        let flush = match rng.below(8) {
            0 => FlushPolicy::Messages(rng.range(1, 200)),
            1 => FlushPolicy::IntervalMs(rng.range(5, 500)),
            _ => FlushPolicy::EveryBatch,
        };
        let buggify = rng.chance(500);
        // Group checks need durable acknowledgements: with a relaxed policy
        // a crash may shorten the log under a committed offset.
        let flush = if suite == Suite::Groups || suite.replicated() { FlushPolicy::EveryBatch } else { flush };
        let group_consumers = if suite == Suite::Groups { 3 } else { 0 };
        let acks1 = std::env::var("CHAOS_ACKS1").is_ok_and(|v| v == "1");
        Self { seed, suite, nodes, fault_window_ms, partitions: 3, producers_per_node: 2, group_consumers, flush, buggify, acks1 }
    }

    /// Whether acknowledgements promise durability (the flush-every-batch
    /// policy); only then must no acknowledged record be lost.
    pub fn durable_acks(&self) -> bool {
        self.flush.acks_wait_for_sync()
    }

    /// One replicated cluster (rather than independent single nodes).
    pub fn replicated(&self) -> bool {
        self.suite.replicated()
    }

    pub fn describe(&self) -> String {
        let acks1 = if self.acks1 { ", acks=1 producers (CHAOS_ACKS1=1)" } else { "" };
        format!("flush {:?}, buggify {}{acks1}", self.flush, if self.buggify { "on" } else { "off" })
    }

    pub fn plan(&self) -> FaultPlan {
        FaultPlan::generate(self.seed, self.nodes, self.fault_window_ms, Swarm::draw(self.seed, self.suite))
    }

}

pub struct Outcome {
    pub history: History,
    pub plan: FaultPlan,
    pub simulated_ms: u64,
    pub disks: Vec<DiskStats>,
}

fn broker_ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, i as u8 + 1))
}

fn client_ip(node: usize, k: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 1 + node as u8, k as u8 + 1))
}

/// Runs one scenario to completion on the current thread. Same scenario,
/// same history.
pub fn run(scenario: &Scenario) -> Outcome {
    let rt = Runtime::with_seed_and_config(scenario.seed, madsim::Config::default());
    let scenario = scenario.clone();
    rt.block_on(async move { simulate(scenario).await })
}

struct BrokerNode {
    handle: NodeHandle,
    disk: SimDisk,
    up: bool,
}

async fn simulate(scenario: Scenario) -> Outcome {
    if scenario.buggify {
        madsim::buggify::enable();
    }
    let handle = Handle::current();
    let history = History::new();
    let start = Instant::now();
    let plan = scenario.plan();
    let mut brokers = Vec::new();
    for i in 0..scenario.nodes {
        let disk = SimDisk::new(scenario.seed ^ (0xd15c << 8) ^ i as u64);
        let node_disk = disk.clone();
        let ip = broker_ip(i);
        let flush = scenario.flush;
        let seed = scenario.seed;
        let voters = if scenario.replicated() { voters(scenario.nodes) } else { Vec::new() };
        // The controller suite snapshots its metadata often, so snapshots
        // are taken, sent and restored under faults; the replication suite
        // keeps whole metadata logs for the log-matching check.
        let cluster = scenario.replicated().then(|| ClusterConfig {
            metadata_snapshot_every: if scenario.suite == Suite::Controller { 25 } else { 1_000 },
            ..ClusterConfig::default()
        });
        let node = handle
            .create_node()
            .name(format!("broker-{i}"))
            .ip(ip)
            .init(move || {
                let disk = node_disk.clone();
                let voters = voters.clone();
                let cluster = cluster.clone();
                async move { run_broker(ip, disk, flush, seed, i, voters, cluster).await }
            })
            .build();
        brokers.push(BrokerNode { handle: node, disk, up: true });
    }
    // Setup first, on every broker at once: the topic exists before any
    // fault or workload starts, and the plan's clock starts after it.
    let replicated = scenario.replicated();
    let cluster: Vec<String> =
        if replicated { (0..scenario.nodes).map(|i| SocketAddr::new(broker_ip(i), PORT).to_string()).collect() } else { Vec::new() };
    // A replicated cluster is one log: every client works on "node 0".
    let log_nodes = if replicated { 1 } else { brokers.len() };
    let mut setups = Vec::new();
    for i in 0..log_nodes {
        let c = Ctx {
            history: history.clone(),
            start,
            broker_addr: SocketAddr::new(broker_ip(i), PORT).to_string(),
            cluster: cluster.clone(),
            acks1: scenario.acks1,
            node: i,
            partitions: scenario.partitions,
            stop_at: start,
            seed: scenario.seed,
        };
        let setup = handle.create_node().name(format!("setup-{i}")).ip(client_ip(i, 0)).build();
        setups.push(setup.spawn(async move { workload::create_topic(&c).await }));
    }
    for s in setups {
        s.await.expect("setup task");
    }
    let t0 = Instant::now();
    let stop_at = t0 + Duration::from_millis(scenario.fault_window_ms + HEAL_MS);
    let ctx_for = |i: usize| Ctx {
        history: history.clone(),
        start,
        broker_addr: SocketAddr::new(broker_ip(i), PORT).to_string(),
        cluster: cluster.clone(),
        acks1: scenario.acks1,
        node: if replicated { 0 } else { i },
        partitions: scenario.partitions,
        stop_at,
        seed: scenario.seed.wrapping_add(i as u64 * 7919),
    };
    let mut client_tasks = Vec::new();
    for i in 0..brokers.len() {
        let ctx = ctx_for(i);
        for k in 0..scenario.producers_per_node {
            let node = handle.create_node().name(format!("producer-{i}-{k}")).ip(client_ip(i, 1 + k)).build();
            let c = ctx.clone();
            // Client ids are unique across the cluster (ops are keyed by them).
            let client_id = i as u32 * 1000 + k;
            client_tasks.push(node.spawn(async move { workload::producer(c, client_id).await }));
        }
        let node = handle.create_node().name(format!("reader-{i}")).ip(client_ip(i, 100)).build();
        let c = ctx.clone();
        client_tasks.push(node.spawn(async move { workload::reader(c, i as u32).await }));
        for k in 0..scenario.group_consumers {
            let node = handle.create_node().name(format!("consumer-{i}-{k}")).ip(client_ip(i, 50 + k)).build();
            let c = ctx.clone();
            let drain_until = stop_at + GROUP_DRAIN;
            client_tasks.push(node.spawn(async move { groups::group_consumer(c, k, drain_until).await }));
        }
        if scenario.group_consumers > 0 {
            let node = handle.create_node().name(format!("group-observer-{i}")).ip(client_ip(i, 60)).build();
            let c = ctx.clone();
            let until = stop_at + GROUP_DRAIN;
            client_tasks.push(node.spawn(async move { groups::observer(c, until).await }));
        }
    }
    if scenario.suite == Suite::Controller {
        let node = handle.create_node().name("churn").ip(client_ip(0, 150)).build();
        let c = ctx_for(0);
        client_tasks.push(node.spawn(async move { workload::metadata_churn(c, CHURN_EVERY).await }));
    }
    // The nemesis: apply each event at its time on the plan's clock.
    let net = NetSim::current();
    for e in &plan.events {
        tokio::time::sleep_until(t0 + Duration::from_millis(e.at_ms)).await;
        let now_ms = start.elapsed().as_millis() as u64;
        let applied = apply(&handle, &net, &mut brokers, &e.fault);
        if applied {
            history.record(now_ms, EventKind::Fault { description: e.fault.to_string() });
        }
    }
    history.record(start.elapsed().as_millis() as u64, EventKind::Healed);
    for t in client_tasks {
        let _ = t.await;
    }
    // Final reads, one per broker (one per cluster), after every producer stopped.
    for i in 0..log_nodes {
        let ctx = ctx_for(i);
        let node = handle.create_node().name(format!("final-{i}")).ip(client_ip(i, 200)).build();
        let _ = node.spawn(async move { workload::final_read(ctx, FINAL_READ_BOUND).await }).await;
        if scenario.group_consumers > 0 {
            let ctx = ctx_for(i);
            let node = handle.create_node().name(format!("final-group-{i}")).ip(client_ip(i, 201)).build();
            let _ = node.spawn(async move { groups::final_offsets(ctx, FINAL_READ_BOUND).await }).await;
        }
    }
    if replicated {
        // Let followers finish copying, then stop every node and read what
        // each replica and each metadata log holds.
        tokio::time::sleep(SETTLE).await;
        for b in brokers.iter_mut() {
            if b.up {
                handle.kill(b.handle.id());
                b.up = false;
            }
        }
        let at = start.elapsed().as_millis() as u64;
        for (i, b) in brokers.iter().enumerate() {
            let mut disk = b.disk.clone();
            for p in 0..scenario.partitions {
                let records = crate::replicas::replica_records(&mut disk, workload::TOPIC, p);
                history.record(at, EventKind::ReplicaLog { node: i, partition: p, records });
            }
            let entries = crate::replicas::metadata_entries(&mut disk);
            history.record(at, EventKind::MetadataLog { node: i, entries });
        }
    }
    Outcome {
        history,
        plan,
        simulated_ms: start.elapsed().as_millis() as u64,
        disks: brokers.iter().map(|b| b.disk.stats()).collect(),
    }
}

/// Applies one fault; returns false when it changed nothing (e.g. restart
/// of a node that is up).
fn apply(handle: &Handle, net: &NetSim, brokers: &mut [BrokerNode], fault: &Fault) -> bool {
    match *fault {
        Fault::Crash { node, mode } => {
            let b = &mut brokers[node];
            if !b.up {
                return false;
            }
            handle.kill(b.handle.id());
            b.disk.crash(mode);
            b.up = false;
        }
        Fault::Restart { node } => {
            let b = &mut brokers[node];
            if b.up {
                return false;
            }
            handle.restart(b.handle.id());
            b.up = true;
        }
        Fault::Pause { node } => handle.pause(brokers[node].handle.id()),
        Fault::Resume { node } => handle.resume(brokers[node].handle.id()),
        Fault::Isolate { node } => net.clog_node(brokers[node].handle.id()),
        Fault::MuteOutbound { node } => net.clog_node_out(brokers[node].handle.id()),
        Fault::SlowNetwork { latency_ms } => {
            let l = Duration::from_millis(u64::from(latency_ms));
            net.update_config(|c| c.send_latency = l..l * 2);
        }
        Fault::HealNetwork => {
            for b in brokers.iter() {
                net.unclog_node(b.handle.id());
            }
            net.update_config(|c| c.send_latency = madsim::net::Config::default().send_latency);
        }
        Fault::ReadCorruption { node, per_million } => brokers[node].disk.set_read_corruption(per_million),
        Fault::FsyncFailure { node } => brokers[node].disk.fail_next_fsync(),
        Fault::DiskFull { node } => brokers[node].disk.set_full(true),
        Fault::DiskHealthy { node } => brokers[node].disk.healthy(),
    }
    true
}

/// One broker process. A fatal storage failure stops the server; like a
/// supervisor, the node then loses its page cache and starts again.
async fn run_broker(
    ip: IpAddr,
    disk: SimDisk,
    flush: FlushPolicy,
    seed: u64,
    index: usize,
    voters: Vec<String>,
    cluster: Option<ClusterConfig>,
) {
    loop {
        let config = ServeConfig {
            listen: SocketAddr::new(ip, PORT),
            data_dir: "/sim".into(),
            advertised: Some(format!("{ip}:{PORT}")),
            voters: voters.clone(),
            peer_listen: None,
            broker: BrokerConfig { flush, num_partitions: 3, node_id: index as i32 + 1, cluster: cluster.clone(), ..BrokerConfig::default() },
            ..ServeConfig::default()
        };
        // Each start draws its own seed (from the run's deterministic
        // randomness): nodes and incarnations must not share election
        // timeouts or request numbering.
        let start_seed = seed ^ madsim::rand::random::<u64>();
        let server = match Server::bind_with(config, disk.clone(), start_seed).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("broker failed to start: {e:#}");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        if let Err(e) = server.run(std::future::pending()).await {
            tracing::warn!("broker stopped: {e:#}; restarting it without its page cache");
            disk.crash(CrashMode::LoseUnsynced);
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

/// The quorum of a replicated scenario: node i (0-based) is voter i + 1.
fn voters(nodes: usize) -> Vec<String> {
    (0..nodes).map(|i| format!("{}@{}", i + 1, SocketAddr::new(broker_ip(i), PEER_PORT))).collect()
}
