//! Workload clients: idempotent producers and tailing readers built on
//! Millrace's own Kafka client, recording what they do in the history.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use millrace_core::records::{self, BatchBuilder, Compression, Record};
use millrace_net::client::{Client, ClientError};
use tokio::time::error::Elapsed;
use tokio::time::{Instant, timeout};

use crate::history::{EventKind, History, OpId};

pub const TOPIC: &str = "chaos";
/// A request that takes longer than this on a connection that has answered
/// before is treated as a broken connection (madsim's TCP does not report a
/// peer that went away, so a timeout is how a client finds out).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest wait for the first answer on a fresh connection (see
/// [`Links`]).
const SETUP_TIMEOUT_MAX: Duration = Duration::from_secs(16);
const BACKOFF: Duration = Duration::from_millis(100);

#[derive(Clone)]
pub struct Ctx {
    pub history: History,
    pub start: Instant,
    pub broker_addr: String,
    /// Replicated cluster: every broker, and requests go to each
    /// partition's leader as Metadata says. Empty: one single-node broker.
    pub cluster: Vec<String>,
    /// Replicated cluster: every second producer writes with acks=1.
    pub acks1: bool,
    pub node: usize,
    pub partitions: i32,
    /// Producers start no new operation after this instant.
    pub stop_at: Instant,
    pub seed: u64,
}

impl Ctx {
    pub fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn record(&self, kind: EventKind) {
        self.history.record(self.now_ms(), kind);
    }
}

/// Longest a connection attempt may take (madsim's TCP gives up by itself
/// after about 10 s on a dead or cut link).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// One connection, and whether it has answered anything yet.
struct Link {
    client: Client,
    answered: bool,
}

/// What a request through [`Links`] came to: the client's own result, or
/// `Err` when it took longer than the connection's timeout.
type Attempt<T> = Result<Result<T, ClientError>, Elapsed>;

/// A client's connections, one per broker, replaced but never dropped.
///
/// madsim hands a freed client port out again at once; a late message of
/// a dropped connection then lands on the new connection with the same
/// addresses (the real world's TIME_WAIT prevents this). Keeping replaced
/// connections open until the client ends keeps every port unique.
///
/// A fresh connection's first answer also waits for the broker to accept
/// it, and a broker accepts one connection at a time: madsim's TCP
/// completes a connect at once, while `accept` stalls 1-4 s on a tenth of
/// its calls when buggify is on. A client that gave up on a fresh
/// connection after `REQUEST_TIMEOUT` and connected again only queued
/// behind its own abandoned connection; with every client doing so, the
/// leader's accept queue grew faster than it drained and no request was
/// answered again (replication suite, seeds 31859 and 400111). So, as
/// Kafka's clients do for connection setup (KIP-601), the wait for a
/// fresh connection's first answer doubles, per broker, after each fresh
/// connection that never answered, up to `SETUP_TIMEOUT_MAX`, and is back
/// to `REQUEST_TIMEOUT` once one answers. A connection that has answered
/// keeps the short timeout, which detects a dead peer.
#[derive(Default)]
struct Links {
    conns: BTreeMap<String, Link>,
    retired: Vec<Client>,
    setup_timeout: BTreeMap<String, Duration>,
}

impl Links {
    fn has(&self, addr: &str) -> bool {
        self.conns.contains_key(addr)
    }

    /// One connection attempt to `addr`, within `limit`.
    async fn connect(&mut self, addr: &str, limit: Duration) -> bool {
        if self.has(addr) {
            return true;
        }
        match timeout(limit, Client::connect(addr)).await {
            Ok(Ok(client)) => {
                self.conns.insert(addr.to_string(), Link { client, answered: false });
                true
            }
            _ => false,
        }
    }

    /// Connects to `addr`, retrying until it works.
    async fn connect_until(&mut self, addr: &str) {
        while !self.connect(addr, CONNECT_TIMEOUT).await {
            tokio::time::sleep(BACKOFF).await;
        }
    }

    /// Sends one request on the connection to `addr` (which must exist)
    /// and waits as long as that connection deserves. A timed-out
    /// connection must be retired: its answer may still come.
    async fn request<T>(&mut self, addr: &str, f: impl AsyncFnOnce(&mut Client) -> Result<T, ClientError>) -> Attempt<T> {
        let setup = self.setup_timeout.get(addr).copied().unwrap_or(REQUEST_TIMEOUT);
        let link = self.conns.get_mut(addr).expect("request on a connection that was opened");
        let limit = if link.answered { REQUEST_TIMEOUT } else { setup };
        let result = timeout(limit, f(&mut link.client)).await;
        match &result {
            // The broker answered (a Kafka error is an answer too).
            Ok(Ok(_) | Err(ClientError::Kafka { .. })) => {
                link.answered = true;
                self.setup_timeout.remove(addr);
            }
            Err(_) if !link.answered => {
                self.setup_timeout.insert(addr.to_string(), (setup * 2).min(SETUP_TIMEOUT_MAX));
            }
            _ => {}
        }
        result
    }

    /// Stops using the connection to `addr` (it stays open; see above).
    fn retire(&mut self, addr: &str) {
        if let Some(link) = self.conns.remove(addr) {
            self.retired.push(link.client);
        }
    }
}

/// Finds each partition's leader and keeps a connection per broker
/// ([`Links`]). For a single node it always answers that node.
struct Router {
    links: Links,
    leaders: BTreeMap<i32, String>,
    /// Which broker to ask for metadata next (rotates past dead ones).
    next_bootstrap: usize,
}

/// Kafka errors after which the same batch is retried on the leader the
/// metadata names next: not written (5, 6, 19) or written but not
/// confirmed (7, 20) — the idempotent sequence makes a retry safe.
fn retriable(code: Option<i16>) -> bool {
    matches!(code, Some(5 | 6 | 7 | 19 | 20))
}

impl Router {
    fn new() -> Self {
        Self { links: Links::default(), leaders: Default::default(), next_bootstrap: 0 }
    }

    /// The broker for `partition`, connected.
    async fn broker(&mut self, ctx: &Ctx, partition: i32) -> String {
        let addr = loop {
            if ctx.cluster.is_empty() {
                break ctx.broker_addr.clone();
            }
            if let Some(a) = self.leaders.get(&partition) {
                break a.clone();
            }
            self.refresh(ctx).await;
        };
        while !self.links.connect(&addr, CONNECT_TIMEOUT).await {
            tokio::time::sleep(BACKOFF).await;
            if !ctx.cluster.is_empty() {
                // The leader may have moved while it was unreachable.
                self.refresh(ctx).await;
            }
        }
        addr
    }

    /// One request to `partition`'s broker.
    async fn call<T>(&mut self, ctx: &Ctx, partition: i32, f: impl AsyncFnOnce(&mut Client) -> Result<T, ClientError>) -> Attempt<T> {
        let addr = self.broker(ctx, partition).await;
        self.links.request(&addr, f).await
    }

    /// Asks the brokers in turn for the topic's leaders, until one answers.
    async fn refresh(&mut self, ctx: &Ctx) {
        loop {
            let addr = ctx.cluster[self.next_bootstrap % ctx.cluster.len()].clone();
            self.next_bootstrap += 1;
            if self.links.connect(&addr, REQUEST_TIMEOUT).await {
                match self.links.request(&addr, async |c| c.leaders(TOPIC).await).await {
                    Ok(Ok(leaders)) => {
                        self.leaders = leaders;
                        return;
                    }
                    Ok(Err(ClientError::Kafka { .. })) => {}
                    _ => self.links.retire(&addr),
                }
            }
            tokio::time::sleep(BACKOFF).await;
        }
    }

    /// The request to `partition`'s broker failed: drop what we believe.
    async fn failed(&mut self, ctx: &Ctx, partition: i32) {
        tokio::time::sleep(BACKOFF).await;
        let addr = if ctx.cluster.is_empty() { Some(ctx.broker_addr.clone()) } else { self.leaders.remove(&partition) };
        if let Some(a) = addr {
            self.links.retire(&a);
        }
    }
}

/// Creates the topic, retrying until the broker answers. In a cluster the
/// topic has replication factor 3 and min.insync.replicas 2 (refused until
/// three brokers are up).
pub async fn create_topic(ctx: &Ctx) {
    let mut links = Links::default();
    let addr = &ctx.broker_addr;
    let (rf, configs) = if ctx.cluster.is_empty() {
        (-1, Vec::new())
    } else {
        (3, vec![("min.insync.replicas".to_string(), "2".to_string())])
    };
    loop {
        links.connect_until(addr).await;
        match links.request(addr, async |c| c.create_topic_with_rf(TOPIC, ctx.partitions, rf, &configs).await).await {
            Ok(Ok(())) => return,
            Ok(Err(e)) if e.code() == Some(36) => return, // TOPIC_ALREADY_EXISTS
            Ok(Err(ClientError::Kafka { .. })) => tokio::time::sleep(BACKOFF).await,
            _ => {
                links.retire(addr);
                tokio::time::sleep(BACKOFF).await;
            }
        }
    }
}

/// A small deterministic generator for the client's own choices.
struct Draw(u64);

impl Draw {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// An idempotent producer: one batch in flight, retried with the same
/// sequence numbers until it is acknowledged or definitely refused.
pub async fn producer(ctx: Ctx, client_id: u32) {
    let mut draw = Draw(ctx.seed ^ (u64::from(client_id) << 32));
    let mut router = Router::new();
    // In a replicated cluster every second producer writes with acks=1:
    // the leader answers alone, so an isolated leader keeps taking its
    // writes (and a leader change may take them back); the others use
    // acks=all, which must never lose a record.
    //
    // Off unless CHAOS_ACKS1=1; CI runs without it. The readers-agree and
    // liveness failures it exposed are fixed: bugs 10 and 11 in the book's
    // "Invariants and checkers".
    let acks: i16 = if !ctx.cluster.is_empty() && client_id % 2 == 1 && ctx.acks1 { 1 } else { -1 };
    let mut identity: Option<(i64, i16)> = None;
    let mut next_seq = vec![0i32; ctx.partitions as usize];
    let mut op_seq = 0u64;
    let mut value_seq = 0u64;
    while Instant::now() < ctx.stop_at {
        let partition = draw.next(ctx.partitions as u64) as i32;
        while identity.is_none() {
            match router.call(&ctx, partition, async |c| c.init_producer_id().await).await {
                Ok(Ok(id)) => identity = Some(id),
                _ => router.failed(&ctx, partition).await,
            }
        }
        let (pid, epoch) = identity.expect("set above");
        let count = 1 + draw.next(5) as usize;
        let values: Vec<String> = (0..count)
            .map(|_| {
                value_seq += 1;
                format!("n{}c{}v{}", ctx.node, client_id, value_seq)
            })
            .collect();
        op_seq += 1;
        let op: OpId = (client_id, op_seq);
        let seq = next_seq[partition as usize];
        let mut b = BatchBuilder::new(if draw.next(2) == 0 { Compression::None } else { Compression::Lz4 });
        for v in &values {
            b.push(Record { timestamp: ctx.now_ms() as i64, value: Some(v.as_bytes().to_vec()), ..Record::default() });
        }
        let batch = Bytes::from(b.idempotent(pid, epoch, seq).build());
        ctx.record(EventKind::Invoke { node: ctx.node, op, partition, values: values.clone() });
        let mut attempts = 0;
        loop {
            attempts += 1;
            match router.call(&ctx, partition, async |c| c.produce(TOPIC, partition, batch.clone(), acks).await).await {
                Ok(Ok(base_offset)) => {
                    ctx.record(if acks == 1 { EventKind::WeakOk { op, base_offset } } else { EventKind::Ok { op, base_offset } });
                    next_seq[partition as usize] = seq.wrapping_add(count as i32) & i32::MAX;
                    break;
                }
                Ok(Err(e @ ClientError::Kafka { .. })) if !ctx.cluster.is_empty() && retriable(e.code()) => {
                    if Instant::now() >= ctx.stop_at + Duration::from_secs(30) {
                        ctx.record(EventKind::Unknown { op });
                        return;
                    }
                    router.failed(&ctx, partition).await;
                }
                Ok(Err(ClientError::Kafka { name, .. })) => {
                    // A refusal is definite only if no earlier attempt of
                    // this batch may still be in flight (a late one can
                    // still land); otherwise the outcome is unknown.
                    if attempts == 1 {
                        ctx.record(EventKind::Fail { op, error: name });
                    } else {
                        ctx.record(EventKind::Unknown { op });
                    }
                    // Its sequence numbers must never carry other data, so
                    // the producer starts a new session (as Kafka's bumps
                    // its epoch after a failed batch).
                    identity = None;
                    next_seq.iter_mut().for_each(|s| *s = 0);
                    break;
                }
                other => {
                    tracing::debug!(client_id, ?op, outcome = ?other.map(|r| r.map(|_| ())), "produce outcome unknown; retrying");
                    // Unknown outcome: retry the same batch (same sequence)
                    // on a new connection, as Kafka's producer does.
                    if Instant::now() >= ctx.stop_at + Duration::from_secs(30) {
                        ctx.record(EventKind::Unknown { op });
                        return;
                    }
                    router.failed(&ctx, partition).await;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(5 + draw.next(40))).await;
    }
}

/// Reads one partition from `offset` up to the high watermark once.
/// Returns the records and the high watermark seen.
async fn read_once(links: &mut Links, addr: &str, ctx: &Ctx, partition: i32, offset: i64) -> Result<(Vec<(i64, String)>, i64), String> {
    let f = match links.request(addr, async |c| c.fetch(TOPIC, partition, offset, 200, 64 * 1024).await).await {
        Ok(Ok(f)) => f,
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err("timeout".into()),
    };
    let mut out = Vec::new();
    for batch in records::split_batches(&f.records) {
        let decoded = batch.map_err(|e| e.to_string()).and_then(|(_, b)| records::decode_records(b).map_err(|e| e.to_string()));
        match decoded {
            Ok((_, recs)) => {
                for r in recs.into_iter().filter(|r| r.offset >= offset) {
                    let v = String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned();
                    out.push((r.offset, v));
                }
            }
            Err(e) => {
                ctx.record(EventKind::CorruptFetch { node: ctx.node, partition, offset, error: e.clone() });
                return Err(format!("corrupt batch: {e}"));
            }
        }
    }
    Ok((out, f.high_watermark))
}

/// Tails every partition, recording what it reads.
pub async fn reader(ctx: Ctx, reader_id: u32) {
    let mut router = Router::new();
    let mut next = vec![0i64; ctx.partitions as usize];
    while Instant::now() < ctx.stop_at {
        for p in 0..ctx.partitions {
            let addr = router.broker(&ctx, p).await;
            match read_once(&mut router.links, &addr, &ctx, p, next[p as usize]).await {
                Ok((recs, _)) if !recs.is_empty() => {
                    next[p as usize] = recs.last().expect("non-empty").0 + 1;
                    ctx.record(EventKind::Read { node: ctx.node, reader: reader_id, partition: p, records: recs });
                }
                Ok(_) => {}
                Err(_) => router.failed(&ctx, p).await,
            }
        }
    }
}

/// After healing: reads every partition up to its high watermark, within
/// `bound`. Records `Final` or `FinalFailed` per partition.
pub async fn final_read(ctx: Ctx, bound: Duration) {
    let deadline = Instant::now() + bound;
    let mut router = Router::new();
    for p in 0..ctx.partitions {
        let mut records = Vec::new();
        let mut offset = 0;
        let mut last_error = String::from("no answer");
        let done = loop {
            if Instant::now() >= deadline {
                break None;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(addr) = timeout(left, router.broker(&ctx, p)).await else { continue };
            match read_once(&mut router.links, &addr, &ctx, p, offset).await {
                Ok((recs, hw)) => {
                    if let Some(last) = recs.last() {
                        offset = last.0 + 1;
                    }
                    records.extend(recs);
                    if offset >= hw {
                        break Some(hw);
                    }
                }
                Err(e) => {
                    last_error = e;
                    router.failed(&ctx, p).await;
                }
            }
        };
        match done {
            Some(high_watermark) => ctx.record(EventKind::Final { node: ctx.node, partition: p, high_watermark, records }),
            None => ctx.record(EventKind::FinalFailed { node: ctx.node, partition: p, error: last_error }),
        }
    }
}

/// Controller suite: keeps the metadata log busy — creates a topic every
/// `every`, deletes the one before — through whichever broker answers.
pub async fn metadata_churn(ctx: Ctx, every: Duration) {
    let mut links = Links::default();
    let addr = &ctx.broker_addr;
    let mut k = 0u32;
    while Instant::now() < ctx.stop_at {
        k += 1;
        let name = format!("churn-{k}");
        links.connect_until(addr).await;
        match links.request(addr, async |c| c.create_topic_with_rf(&name, 1 + (k % 3) as i32, -1, &[]).await).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) if e.code().is_some() => tracing::debug!(%name, %e, "churn: create refused"),
            _ => {
                links.retire(addr);
                tokio::time::sleep(BACKOFF).await;
            }
        }
        if k > 1 {
            let old = format!("churn-{}", k - 1);
            links.connect_until(addr).await;
            match links.request(addr, async |c| c.delete_topic(&old).await).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) if e.code().is_some() => tracing::debug!(%old, %e, "churn: delete refused"),
                _ => {
                    links.retire(addr);
                    tokio::time::sleep(BACKOFF).await;
                }
            }
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    //! The accept-queue storm of replication seeds 31859 and 400111 on its
    //! own: with buggify on, a broker stalls a tenth of its accepts for
    //! 1-4 s; after a pause, every producer has abandoned connections in
    //! its accept queue. Writes must resume soon after the pause ends.
    //! With a fixed 2 s timeout on fresh connections (`SETUP_TIMEOUT_MAX`
    //! = `REQUEST_TIMEOUT`), 5 of the 16 seeds acknowledged no write in the
    //! bound; with buggify off, none failed.

    use std::net::{IpAddr, Ipv4Addr, SocketAddr};

    use madsim::runtime::{Handle, Runtime};
    use millrace_net::config::ServeConfig;
    use millrace_net::server::Server;

    use super::*;
    use crate::disk::SimDisk;

    const PRODUCERS: u32 = 9;
    const PAUSE: Duration = Duration::from_secs(6);
    /// Within this long after the pause ends, a write must be acknowledged.
    const BOUND_MS: u64 = 15_000;

    /// Writes acknowledged within `BOUND_MS` after a pause of the broker.
    fn acks_after_pause(seed: u64) -> usize {
        let rt = Runtime::with_seed_and_config(seed, madsim::Config::default());
        rt.block_on(async move {
            madsim::buggify::enable();
            let handle = Handle::current();
            let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
            let disk = SimDisk::new(seed);
            let broker = handle
                .create_node()
                .name("broker")
                .ip(ip)
                .init(move || {
                    let disk = disk.clone();
                    async move {
                        let config = ServeConfig { listen: SocketAddr::new(ip, 9092), ..ServeConfig::default() };
                        let server = Server::bind_with(config, disk, seed).await.expect("bind");
                        let _ = server.run(std::future::pending()).await;
                    }
                })
                .build();
            let history = History::new();
            let start = Instant::now();
            let ctx = Ctx {
                history: history.clone(),
                start,
                broker_addr: SocketAddr::new(ip, 9092).to_string(),
                cluster: Vec::new(),
                acks1: false,
                node: 0,
                partitions: 3,
                stop_at: start,
                seed,
            };
            let setup = handle.create_node().name("setup").ip(IpAddr::V4(Ipv4Addr::new(10, 0, 1, 1))).build();
            let c = ctx.clone();
            setup.spawn(async move { create_topic(&c).await }).await.expect("setup");
            let stop_at = Instant::now() + Duration::from_secs(30);
            let mut tasks = Vec::new();
            for k in 0..PRODUCERS {
                let node = handle.create_node().name(format!("producer-{k}")).ip(IpAddr::V4(Ipv4Addr::new(10, 0, 2, k as u8 + 1))).build();
                let c = Ctx { stop_at, ..ctx.clone() };
                tasks.push(node.spawn(async move { producer(c, k).await }));
            }
            tokio::time::sleep(Duration::from_secs(3)).await;
            handle.pause(broker.id());
            tokio::time::sleep(PAUSE).await;
            handle.resume(broker.id());
            let resumed = start.elapsed().as_millis() as u64;
            for t in tasks {
                let _ = t.await;
            }
            history
                .events()
                .iter()
                .filter(|e| matches!(e.kind, EventKind::Ok { .. }) && (resumed..resumed + BOUND_MS).contains(&e.at_ms))
                .count()
        })
    }

    #[test]
    fn writes_resume_after_a_pause_while_accepts_stall() {
        let acks: Vec<usize> = (1..=16).map(acks_after_pause).collect();
        println!("writes acknowledged within {BOUND_MS} ms after the pause, per seed: {acks:?}");
        assert!(acks.iter().all(|n| *n > 0), "no write acknowledged after the pause for some seed: {acks:?}");
    }
}
