//! Workload clients: idempotent producers and tailing readers built on
//! Millrace's own Kafka client, recording what they do in the history.

use std::time::Duration;

use bytes::Bytes;
use millrace_core::records::{self, BatchBuilder, Compression, Record};
use millrace_net::client::{Client, ClientError};
use tokio::time::{Instant, timeout};

use crate::history::{EventKind, History, OpId};

pub const TOPIC: &str = "chaos";
/// A request that takes longer than this is treated as a broken connection.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
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

async fn connect(ctx: &Ctx) -> Client {
    loop {
        if let Ok(Ok(c)) = timeout(CONNECT_TIMEOUT, Client::connect(&ctx.broker_addr)).await {
            return c;
        }
        tokio::time::sleep(BACKOFF).await;
    }
}

/// A client connection that is replaced, never dropped, when it fails.
///
/// madsim hands a freed client port out again at once; a late message of
/// a dropped connection then lands on the new connection with the same
/// addresses (the real world's TIME_WAIT prevents this). Keeping replaced
/// connections open until the client ends keeps every port unique.
struct Conn {
    client: Client,
    retired: Vec<Client>,
}

impl Conn {
    async fn open(ctx: &Ctx) -> Self {
        Self { client: connect(ctx).await, retired: Vec::new() }
    }

    async fn replace(&mut self, ctx: &Ctx) {
        tokio::time::sleep(BACKOFF).await;
        let fresh = connect(ctx).await;
        self.retired.push(std::mem::replace(&mut self.client, fresh));
    }
}

/// Finds each partition's leader and keeps a connection per broker
/// (replaced, never dropped, as [`Conn`] explains). For a single node it
/// always answers that node.
struct Router {
    conns: std::collections::BTreeMap<String, Client>,
    retired: Vec<Client>,
    leaders: std::collections::BTreeMap<i32, String>,
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
        Self { conns: Default::default(), retired: Vec::new(), leaders: Default::default(), next_bootstrap: 0 }
    }

    async fn client(&mut self, ctx: &Ctx, partition: i32) -> &mut Client {
        let addr = loop {
            if ctx.cluster.is_empty() {
                break ctx.broker_addr.clone();
            }
            if let Some(a) = self.leaders.get(&partition) {
                break a.clone();
            }
            self.refresh(ctx).await;
        };
        if !self.conns.contains_key(&addr) {
            let c = loop {
                if let Ok(Ok(c)) = timeout(CONNECT_TIMEOUT, Client::connect(&addr)).await {
                    break c;
                }
                tokio::time::sleep(BACKOFF).await;
                if !ctx.cluster.is_empty() {
                    // The leader may have moved while it was unreachable.
                    self.refresh(ctx).await;
                }
            };
            self.conns.insert(addr.clone(), c);
        }
        self.conns.get_mut(&addr).expect("inserted")
    }

    /// Asks the brokers in turn for the topic's leaders, until one answers.
    async fn refresh(&mut self, ctx: &Ctx) {
        loop {
            let addr = ctx.cluster[self.next_bootstrap % ctx.cluster.len()].clone();
            self.next_bootstrap += 1;
            if let Ok(Ok(mut c)) = timeout(REQUEST_TIMEOUT, Client::connect(&addr)).await {
                let answer = timeout(REQUEST_TIMEOUT, c.leaders(TOPIC)).await;
                self.retired.push(c);
                if let Ok(Ok(leaders)) = answer {
                    self.leaders = leaders;
                    return;
                }
            }
            tokio::time::sleep(BACKOFF).await;
        }
    }

    /// The request to `partition`'s broker failed: drop what we believe.
    async fn failed(&mut self, ctx: &Ctx, partition: i32) {
        tokio::time::sleep(BACKOFF).await;
        let addr = if ctx.cluster.is_empty() { Some(ctx.broker_addr.clone()) } else { self.leaders.remove(&partition) };
        if let Some(c) = addr.and_then(|a| self.conns.remove(&a)) {
            self.retired.push(c);
        }
    }
}

/// Creates the topic, retrying until the broker answers. In a cluster the
/// topic has replication factor 3 and min.insync.replicas 2 (refused until
/// three brokers are up).
pub async fn create_topic(ctx: &Ctx) {
    let mut c = Conn::open(ctx).await;
    let (rf, configs) = if ctx.cluster.is_empty() {
        (-1, Vec::new())
    } else {
        (3, vec![("min.insync.replicas".to_string(), "2".to_string())])
    };
    loop {
        match timeout(REQUEST_TIMEOUT, c.client.create_topic_with_rf(TOPIC, ctx.partitions, rf, &configs)).await {
            Ok(Ok(())) => return,
            Ok(Err(e)) if e.code() == Some(36) => return, // TOPIC_ALREADY_EXISTS
            _ => c.replace(ctx).await,
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
    // Off unless CHAOS_ACKS1=1: with it, about one seed in a thousand fails
    // (readers-agree, liveness) and those findings are open — see the
    // book's "Invariants and checkers". CI runs without it.
    let acks: i16 = if !ctx.cluster.is_empty() && client_id % 2 == 1 && ctx.acks1 { 1 } else { -1 };
    let mut identity: Option<(i64, i16)> = None;
    let mut next_seq = vec![0i32; ctx.partitions as usize];
    let mut op_seq = 0u64;
    let mut value_seq = 0u64;
    while Instant::now() < ctx.stop_at {
        let partition = draw.next(ctx.partitions as u64) as i32;
        while identity.is_none() {
            match timeout(REQUEST_TIMEOUT, router.client(&ctx, partition).await.init_producer_id()).await {
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
            match timeout(REQUEST_TIMEOUT, router.client(&ctx, partition).await.produce(TOPIC, partition, batch.clone(), acks)).await {
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
async fn read_once(client: &mut Client, ctx: &Ctx, partition: i32, offset: i64) -> Result<(Vec<(i64, String)>, i64), String> {
    let f = match timeout(REQUEST_TIMEOUT, client.fetch(TOPIC, partition, offset, 200, 64 * 1024)).await {
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
            let client = router.client(&ctx, p).await;
            match read_once(client, &ctx, p, next[p as usize]).await {
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
            let Ok(client) = timeout(left, router.client(&ctx, p)).await else { continue };
            match read_once(client, &ctx, p, offset).await {
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
    let mut conn = Conn::open(&ctx).await;
    let mut k = 0u32;
    while Instant::now() < ctx.stop_at {
        k += 1;
        let name = format!("churn-{k}");
        match timeout(REQUEST_TIMEOUT, conn.client.create_topic_with_rf(&name, 1 + (k % 3) as i32, -1, &[])).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) if e.code().is_some() => tracing::debug!(%name, %e, "churn: create refused"),
            _ => conn.replace(&ctx).await,
        }
        if k > 1 {
            let old = format!("churn-{}", k - 1);
            match timeout(REQUEST_TIMEOUT, conn.client.delete_topic(&old)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) if e.code().is_some() => tracing::debug!(%old, %e, "churn: delete refused"),
                _ => conn.replace(&ctx).await,
            }
        }
        tokio::time::sleep(every).await;
    }
}
